//! `key_package_upload` and `key_package_fetch`: the MLS KeyPackage directory. Only verified
//! (identity-bound) ids take part. The server checks sizes, counts and ownership (an id uploads
//! only its own stock); it cannot check what a KeyPackage says (its credential, its signature):
//! the client that fetches one validates it against the identity key it pinned for the id.
//! On a node of several (`--redis`) the directory is [`crate::cluster::key_packages::RedisKeyPackages`]
//! (the same checks and answers, a stock per (id, device); the low-stock notice reaches the
//! device on any node).

use axum::extract::ws::Utf8Bytes;
use base64::Engine as _;
use lattice_protocol::limits::{
    MAX_KEY_PACKAGE_BYTES, MAX_KEY_PACKAGE_STOCK, MAX_KEY_PACKAGE_UPLOAD,
};
use lattice_protocol::{
    encode, ClientId, DeviceId, DeviceKeyPackage, Frame, KeyPackageFetch, KeyPackageFound,
    KeyPackageUpload, KeyPackagesLow, KeyPackagesStored, ServerFrame,
};
use tracing::{debug, warn};

use super::Core;
use crate::cluster::key_packages::RedisUploadError;
use crate::hub::{Out, PeerEntry};
use crate::session::error::HandlerError;
use crate::store::{Stock, UploadError};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Decodes one KeyPackage field and checks its size.
fn key_package(field: &'static str, b64: &str) -> Result<Vec<u8>, HandlerError> {
    let bytes = B64
        .decode(b64)
        .ok()
        .filter(|b| !b.is_empty())
        .ok_or(HandlerError::NotBase64(field))?;
    if bytes.len() > MAX_KEY_PACKAGE_BYTES {
        return Err(HandlerError::KeyPackageRefused(format!(
            "A KeyPackage is at most {MAX_KEY_PACKAGE_BYTES} bytes (got {})",
            bytes.len()
        )));
    }
    Ok(bytes)
}

impl Core {
    pub(super) async fn on_key_package_upload(
        &mut self,
        peer: &PeerEntry,
        u: KeyPackageUpload,
    ) -> Result<ServerFrame, HandlerError> {
        if !peer.verified {
            return Err(HandlerError::VerificationRequired("key_package_upload"));
        }
        if u.key_packages.len() > MAX_KEY_PACKAGE_UPLOAD {
            return Err(HandlerError::KeyPackageRefused(format!(
                "Upload at most {MAX_KEY_PACKAGE_UPLOAD} KeyPackages at once (got {})",
                u.key_packages.len()
            )));
        }
        let one_time = u
            .key_packages
            .iter()
            .map(|k| key_package("keyPackages", k))
            .collect::<Result<Vec<_>, _>>()?;
        let last_resort = u
            .last_resort
            .as_deref()
            .map(|k| key_package("lastResort", k))
            .transpose()?;
        let stock = match self.state.node.clone() {
            Some(node) => node
                .key_packages
                .upload_device(&peer.id, &peer.device, &one_time, last_resort.as_deref())
                .await
                .map_err(|e| match e {
                    RedisUploadError::StockFull { stock, adding } => {
                        HandlerError::KeyPackageStockFull {
                            stock,
                            adding,
                            max: MAX_KEY_PACKAGE_STOCK,
                        }
                    }
                    RedisUploadError::Redis(e) => {
                        warn!(error = %e, "key package upload failed");
                        HandlerError::ClusterUnavailable
                    }
                })?,
            None => self.upload_sqlite(peer, &one_time, last_resort.as_deref())?,
        };
        debug!(
            added = one_time.len(),
            stock = stock.one_time,
            "key packages stored"
        );
        Ok(ServerFrame::KeyPackagesStored(KeyPackagesStored {
            stock: stock.one_time,
            last_resort: stock.last_resort,
        }))
    }

    fn upload_sqlite(
        &self,
        peer: &PeerEntry,
        one_time: &[Vec<u8>],
        last_resort: Option<&[u8]>,
    ) -> Result<Stock, HandlerError> {
        self.state
            .store
            .upload_key_packages(&peer.id, &peer.device, one_time, last_resort)
            .map_err(|e| match e {
                UploadError::StockFull { stock, adding } => HandlerError::KeyPackageStockFull {
                    stock,
                    adding,
                    max: MAX_KEY_PACKAGE_STOCK,
                },
                UploadError::Store(e) => {
                    warn!(error = %e, "key package upload failed");
                    HandlerError::StorageUnavailable
                }
            })
    }

    pub(super) async fn on_key_package_fetch(
        &mut self,
        peer: &PeerEntry,
        f: KeyPackageFetch,
    ) -> Result<ServerFrame, HandlerError> {
        if !peer.verified {
            return Err(HandlerError::VerificationRequired("key_package_fetch"));
        }
        let node = self.state.node.clone();
        // Older clients (no `allDevices`) get the primary device's, as before devices existed.
        let devices = match (&node, f.all_devices) {
            (_, false) => vec![DeviceId::primary()],
            (Some(node), true) => node.devices.devices_of(&f.client_id).await.map_err(|e| {
                warn!(error = %e, "device list read failed");
                HandlerError::ClusterUnavailable
            })?,
            (None, true) => self.state.store.devices_of(&f.client_id).map_err(|e| {
                warn!(error = %e, "device list read failed");
                HandlerError::StorageUnavailable
            })?,
        };
        let found = match &node {
            // One script takes one of every device's (a consistent cut across nodes); devices
            // with none are left out, as on one node.
            Some(node) => node
                .key_packages
                .fetch_all(&f.client_id, &devices)
                .await
                .map(|found| {
                    found
                        .into_iter()
                        .filter_map(|(device, k)| Some((device, k?)))
                        .collect::<Vec<_>>()
                })
                .map_err(|e| {
                    warn!(error = %e, "key package fetch failed");
                    HandlerError::ClusterUnavailable
                }),
            None => self
                .state
                .store
                .fetch_key_packages(&f.client_id, &devices)
                .map_err(|e| {
                    warn!(error = %e, "key package fetch failed");
                    HandlerError::StorageUnavailable
                }),
        };
        let fetched = found?;
        let Some((_, first)) = fetched.first() else {
            return Err(HandlerError::NoKeyPackage(f.client_id));
        };
        let (key_package, last_resort) = (B64.encode(&first.data), first.last_resort);
        for (device, k) in &fetched {
            debug!(owner = %f.client_id, %device, last_resort = k.last_resort, stock = k.stock_left, "key package fetched");
            if !k.low_stock() {
                continue;
            }
            let frame = encode(&Frame::new(ServerFrame::KeyPackagesLow(KeyPackagesLow {
                stock: k.stock_left,
            })));
            match &node {
                Some(node) => {
                    node.notify_device(self.state.hub.as_ref(), &f.client_id, device, frame.into())
                        .await;
                }
                None => self.notify_low_stock(&f.client_id, device, frame.into()),
            }
        }
        let devices = f.all_devices.then(|| {
            fetched
                .iter()
                .map(|(device, k)| DeviceKeyPackage {
                    device_id: device.clone(),
                    key_package: B64.encode(&k.data),
                    last_resort: k.last_resort,
                })
                .collect()
        });
        Ok(ServerFrame::KeyPackage(KeyPackageFound {
            client_id: f.client_id,
            key_package,
            last_resort,
            devices,
        }))
    }

    /// Tells an online owner its stock runs low. Best effort through its bounded queue: with the
    /// queue full the notice is dropped (the owner learns its stock from every upload answer).
    /// (On several nodes, [`crate::node::Node::notify_device`] reaches the device on any node.)
    fn notify_low_stock(&self, owner: &ClientId, device: &DeviceId, frame: Utf8Bytes) {
        let Some(entry) = self.state.hub.device(owner, device) else {
            return;
        };
        if entry
            .session
            .tx
            .try_send(Out::Frame(Box::new(frame)))
            .is_err()
        {
            debug!(%owner, "low-stock notice dropped: queue full");
        }
    }
}
