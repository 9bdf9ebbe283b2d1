//! `device_list_upload` and the checks of a device `register` (docs/protocol.md, "Devices"): the
//! identity key's signature over a device list and over a device's certificate, the list's bounds
//! and counter, and what a new list removes (the removed devices' connections close with 4001).
//! On a node of several (`--redis`) the list is [`crate::cluster::devices::RedisDevices`]' record
//! (the same checks and answers), and a removed device is closed on whichever node holds it
//! ([`crate::node::Node::close_removed`]).

use base64::Engine as _;
use lattice_crypto::IdentityPublicKey;
use lattice_protocol::limits::MAX_DEVICES_PER_ID;
use lattice_protocol::{
    close_code, ClientId, DeviceId, DeviceListStored, DeviceListUpload, ServerFrame,
    SignedDeviceList,
};
use tracing::{info, warn};

use super::{Close, Core};
use crate::cluster::devices::RedisDeviceListError;
use crate::hub::{PeerEntry, DEVICE_REMOVED_REASON};
use crate::session::error::HandlerError;
use crate::store::DeviceListError;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// A base64 Ed25519 public key of a device, decoded and checked (a valid point, not small order).
pub(super) fn device_key(b64: &str) -> Result<IdentityPublicKey, HandlerError> {
    let bytes = B64
        .decode(b64)
        .map_err(|_| HandlerError::BadDeviceList("deviceKey is not valid base64".into()))?;
    IdentityPublicKey::from_bytes(&bytes).map_err(|_| {
        HandlerError::BadDeviceList("deviceKey is not a 32-byte Ed25519 public key".into())
    })
}

/// Checks `list` for `id`: at most `MAX_DEVICES_PER_ID - 1` linked devices with distinct ids,
/// none `primary`, every key an Ed25519 key, and the identity key's signature over it.
pub(super) fn check_device_list(
    id: &ClientId,
    identity: &IdentityPublicKey,
    list: &SignedDeviceList,
) -> Result<(), HandlerError> {
    let max = MAX_DEVICES_PER_ID - 1;
    if list.devices.len() > max {
        return Err(HandlerError::TooManyDevices {
            got: list.devices.len(),
            max,
            total: MAX_DEVICES_PER_ID,
        });
    }
    let mut entries: Vec<(&str, [u8; 32])> = Vec::with_capacity(list.devices.len());
    for d in &list.devices {
        if d.device_id.is_primary() {
            return Err(HandlerError::BadDeviceList(format!(
                "deviceId {} is reserved for the implicit primary device; do not list it",
                d.device_id
            )));
        }
        if entries
            .iter()
            .any(|(other, _)| *other == d.device_id.as_str())
        {
            return Err(HandlerError::BadDeviceList(format!(
                "deviceId {} is listed twice",
                d.device_id
            )));
        }
        entries.push((d.device_id.as_str(), *device_key(&d.device_key)?.as_bytes()));
    }
    let message = lattice_crypto::device_list_message(id.as_str(), list.counter, &entries)
        .map_err(|e| HandlerError::BadDeviceList(e.to_string()))?;
    let sig = B64.decode(&list.signature).map_err(|_| {
        HandlerError::BadDeviceCertificate("The device list signature is not valid base64")
    })?;
    identity.verify(&message, &sig).map_err(|_| {
        HandlerError::BadDeviceCertificate(
            "The device list signature does not verify under the id's identity key",
        )
    })
}

impl Core {
    /// The stored device list of `id`, from the store this server uses.
    pub(super) async fn device_list(
        &self,
        id: &ClientId,
    ) -> Result<Option<SignedDeviceList>, HandlerError> {
        match &self.state.node {
            Some(node) => node.devices.list(id).await.map_err(|e| {
                warn!(error = %e, "device list read failed");
                HandlerError::ClusterUnavailable
            }),
            None => self.state.store.device_list(id).map_err(|e| {
                warn!(error = %e, "device list read failed");
                HandlerError::StorageUnavailable
            }),
        }
    }

    /// Verifies and stores a new device list of `id` (bound to `identity`) and closes the
    /// connections of the devices it removes (on any node). The list must have a higher counter
    /// than the stored one; true if it removed the device `me`.
    pub(super) async fn store_device_list(
        &mut self,
        id: &ClientId,
        identity: &IdentityPublicKey,
        list: &SignedDeviceList,
        me: Option<&DeviceId>,
    ) -> Result<bool, HandlerError> {
        check_device_list(id, identity, list)?;
        let stale = |stored| HandlerError::StaleDeviceList {
            id: id.clone(),
            got: list.counter,
            stored,
        };
        let removed = match &self.state.node {
            Some(node) => node.devices.put_list(id, list).await.map_err(|e| match e {
                RedisDeviceListError::Stale { stored } => stale(stored),
                RedisDeviceListError::Contended | RedisDeviceListError::Redis(_) => {
                    warn!(error = %e, "device list write failed");
                    HandlerError::ClusterUnavailable
                }
            })?,
            None => self
                .state
                .store
                .put_device_list(id, list)
                .map_err(|e| match e {
                    DeviceListError::Stale { stored } => stale(stored),
                    DeviceListError::Store(e) => {
                        warn!(error = %e, "device list write failed");
                        HandlerError::StorageUnavailable
                    }
                })?,
        };
        info!(
            counter = list.counter,
            devices = list.devices.len(),
            removed = removed.len(),
            "device list stored"
        );
        let mut removed_me = false;
        for device in &removed {
            if Some(device) == me {
                removed_me = true;
                continue;
            }
            match &self.state.node {
                Some(node) => {
                    node.close_removed(self.state.hub.as_ref(), id, device)
                        .await;
                }
                None => {
                    if let Some(entry) = self.state.hub.device(id, device) {
                        entry
                            .session
                            .close(close_code::DEVICE_REMOVED, DEVICE_REMOVED_REASON);
                    }
                }
            }
        }
        Ok(removed_me)
    }

    pub(super) async fn on_device_list_upload(
        &mut self,
        peer: &PeerEntry,
        u: DeviceListUpload,
    ) -> Result<ServerFrame, HandlerError> {
        if !peer.verified {
            return Err(HandlerError::VerificationRequired("device_list_upload"));
        }
        let identity = peer
            .identity_key
            .as_ref()
            .and_then(|k| IdentityPublicKey::from_bytes(k).ok())
            .ok_or(HandlerError::VerificationRequired("device_list_upload"))?;
        let list = u.device_list;
        if self
            .store_device_list(&peer.id, &identity, &list, Some(&peer.device))
            .await?
        {
            // The answer goes out first; then this device leaves.
            self.close_after = Some(Close {
                code: close_code::DEVICE_REMOVED,
                reason: DEVICE_REMOVED_REASON,
            });
        }
        Ok(ServerFrame::DeviceListStored(DeviceListStored {
            counter: list.counter,
            devices: u32::try_from(list.devices.len()).unwrap_or(u32::MAX),
        }))
    }
}
