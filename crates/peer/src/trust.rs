//! Trust in peers' keys: fetching a peer's keys, checking its `keySignature`, pinning its identity
//! key on first use and holding back a changed key until the caller accepts it.
//!
//! [`Trust`] owns the key cache, the memory of keyless senders and the pending key changes, and
//! reaches the [`KeyStore`] (the pins). It asks the server through [`Requests`] and raises
//! [`PeerEvent::KeyChanged`] upwards; it knows nothing of messages (the outbox and the inbox ask
//! it), so accepting a key change here does not release held messages: the handle tells the inbox.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use lattice_crypto::{
    device_list_message, verify_kem_key_signature, Fingerprint, IdentityPublicKey, KemPublicKey,
};
use lattice_protocol::{
    ClientFrame, ClientId, DeviceId, ErrorType, PublicKeyResponse, RequestPublicKey, ServerFrame,
    SignedDeviceList,
};
use tokio::time::Instant;

use crate::events::{Dispatcher, PeerEvent};
use crate::keys::{tofu, BoundedMap, KeyCache, KeyStore, Keyless, PeerKey, Trust as Tofu};
use crate::link::Lane;
use crate::requests::Requests;
use crate::sync::lock;
use crate::wire::{unexpected, B64};
use crate::{defaults, PeerError, WaitOptions};

/// What this peer knows and believes about other peers' keys. Shared (`Arc`).
#[derive(Debug)]
pub(crate) struct Trust {
    client_id: ClientId,
    key_store: Arc<dyn KeyStore>,
    requests: Arc<Requests>,
    dispatcher: Arc<Dispatcher>,
    /// std Mutex: each section is a map lookup or update, never held across an await (a key
    /// fetch happens with it released).
    known: Mutex<Known>,
}

/// What [`Trust`] remembers between calls.
#[derive(Debug)]
struct Known {
    /// Checked keys, for sending.
    keys: KeyCache,
    /// Senders recently found to have no identity key.
    keyless: Keyless,
    /// Changed identity keys waiting for the user's acceptance.
    changes: HashMap<ClientId, IdentityPublicKey>,
    /// Peers' signed device lists, verified under their pinned identity key: what every MLS
    /// leaf of a linked device is checked against. Only a higher counter replaces one.
    devices: BoundedMap<DeviceList>,
}

/// A peer's verified device list.
#[derive(Debug, Clone)]
pub(crate) struct DeviceList {
    pub(crate) counter: u64,
    pub(crate) devices: Vec<(DeviceId, IdentityPublicKey)>,
}

/// Checks a signed device list under `identity` (the id's identity key) and decodes it.
///
/// # Errors
/// [`PeerError::InvalidPeerKey`] for a malformed entry or a signature that does not verify.
pub(crate) fn verify_device_list(
    client_id: &ClientId,
    identity: &IdentityPublicKey,
    list: &SignedDeviceList,
) -> Result<DeviceList, PeerError> {
    let invalid = |reason: &str| PeerError::InvalidPeerKey {
        peer: client_id.clone(),
        reason: format!("device list: {reason}"),
    };
    if list.devices.len() >= lattice_protocol::limits::MAX_DEVICES_PER_ID {
        return Err(invalid("too many devices"));
    }
    let mut devices = Vec::with_capacity(list.devices.len());
    for d in &list.devices {
        let key = B64
            .decode(&d.device_key)
            .ok()
            .and_then(|k| IdentityPublicKey::from_bytes(&k).ok())
            .ok_or_else(|| invalid("a device key is not an Ed25519 key"))?;
        if d.device_id.is_primary() || devices.iter().any(|(id, _)| id == &d.device_id) {
            return Err(invalid("a reserved or repeated device id"));
        }
        devices.push((d.device_id.clone(), key));
    }
    let entries: Vec<(&str, [u8; 32])> = devices
        .iter()
        .map(|(id, k)| (id.as_str(), *k.as_bytes()))
        .collect();
    let sig = B64
        .decode(&list.signature)
        .map_err(|_| invalid("the signature is not base64"))?;
    identity
        .verify(
            &device_list_message(client_id.as_str(), list.counter, &entries)?,
            &sig,
        )
        .map_err(|_| invalid("not signed by the id's identity key"))?;
    Ok(DeviceList {
        counter: list.counter,
        devices,
    })
}

impl Trust {
    pub(crate) fn new(
        client_id: ClientId,
        key_store: Arc<dyn KeyStore>,
        requests: Arc<Requests>,
        dispatcher: Arc<Dispatcher>,
    ) -> Self {
        Self {
            client_id,
            key_store,
            requests,
            dispatcher,
            known: Mutex::new(Known {
                keys: KeyCache::new(defaults::KEY_CACHE),
                keyless: Keyless::new(
                    defaults::NO_IDENTITY_KEY_TTL,
                    defaults::NO_IDENTITY_KEY_CACHE,
                ),
                changes: HashMap::new(),
                devices: BoundedMap::new(defaults::KEY_CACHE),
            }),
        }
    }

    /// The store of pinned identity keys.
    pub(crate) fn key_store(&self) -> &dyn KeyStore {
        self.key_store.as_ref()
    }

    pub(crate) fn forget_key(&self, peer: &ClientId) {
        let mut known = lock(&self.known);
        known.keys.remove(peer);
        known.keyless.remove(peer);
    }

    pub(crate) fn cached_key(&self, peer: &ClientId) -> Option<PeerKey> {
        lock(&self.known).keys.get(peer).cloned()
    }

    pub(crate) fn pending_key_change(&self, peer: &ClientId) -> Option<IdentityPublicKey> {
        lock(&self.known).changes.get(peer).copied()
    }

    /// `request_public_key`, then [`Trust::check_key`].
    pub(crate) async fn fetch_key(&self, target: &ClientId) -> Result<PeerKey, PeerError> {
        let resp = self.fetch_key_response(target).await?;
        self.check_key(resp)
    }

    /// `request_public_key`: the server's answer for `target`, not checked yet.
    pub(crate) async fn fetch_key_response(
        &self,
        target: &ClientId,
    ) -> Result<PublicKeyResponse, PeerError> {
        let t = target.clone();
        let options = WaitOptions::default()
            .filter(move |f| matches!(f, ServerFrame::PublicKey(k) if k.peer_id == t));
        let frame = ClientFrame::RequestPublicKey(RequestPublicKey {
            target_id: target.clone(),
        });
        let answer = self
            .requests
            .request(Lane::Normal, frame, "public_key_response", options)
            .await?;
        let ServerFrame::PublicKey(resp) = answer else {
            return Err(unexpected("request_public_key", &answer));
        };
        if &resp.peer_id != target {
            return Err(PeerError::Protocol(format!(
                "asked for the key of {target}, got the key of {}",
                resp.peer_id
            )));
        }
        Ok(resp)
    }

    /// Checks a `public_key_response`: the KEM key, the `keySignature`, TOFU. Caches the result.
    pub(crate) fn check_key(&self, mut resp: PublicKeyResponse) -> Result<PeerKey, PeerError> {
        let list = resp.device_list.take();
        let key = validate_key(resp)?;
        let peer = &key.peer_id;
        match &key.identity {
            Some(ik) => match tofu(self.key_store.as_ref(), peer, ik)? {
                Tofu::FirstUse | Tofu::Pinned => {}
                Tofu::Changed { old } => return Err(self.key_changed(peer, old, *ik)),
            },
            None => {
                if self.key_store.pinned(peer)?.is_some() {
                    return Err(PeerError::KeyDowngrade { peer: peer.clone() });
                }
            }
        }
        if let (Some(list), Some(ik)) = (list, &key.identity) {
            self.record_devices(&key.peer_id, ik, &list)?;
        }
        lock(&self.known).keys.insert(key.clone());
        Ok(key)
    }

    /// Keeps a peer's device list (verified under its pinned identity key) if it is newer than
    /// the one known, and tells the user about devices added and removed ("bob added a device").
    /// Also how this peer learns its own id's list (linking, a linked device's file).
    pub(crate) fn record_devices(
        &self,
        peer: &ClientId,
        identity: &IdentityPublicKey,
        list: &SignedDeviceList,
    ) -> Result<(), PeerError> {
        let list = verify_device_list(peer, identity, list)?;
        let previous = {
            let mut known = lock(&self.known);
            let previous = known.devices.get(peer).cloned();
            if previous.as_ref().is_some_and(|p| p.counter >= list.counter) {
                return Ok(());
            }
            known.devices.insert(peer.clone(), list.clone(), true);
            previous
        };
        let before = previous.map(|p| p.devices).unwrap_or_default();
        let added: Vec<DeviceId> = list
            .devices
            .iter()
            .filter(|d| !before.contains(d))
            .map(|(id, _)| id.clone())
            .collect();
        let removed: Vec<DeviceId> = before
            .iter()
            .filter(|d| !list.devices.contains(d))
            .map(|(id, _)| id.clone())
            .collect();
        if peer != &self.client_id && (!added.is_empty() || !removed.is_empty()) {
            tracing::info!(peer = %self.client_id, of = %peer, added = added.len(), removed = removed.len(), "a contact's devices changed");
            self.dispatcher.emit(PeerEvent::DevicesChanged {
                peer: peer.clone(),
                added,
                removed,
            });
        }
        Ok(())
    }

    /// Whether `device` with `key` is on `peer`'s verified device list as last seen.
    pub(crate) fn device_listed(
        &self,
        peer: &ClientId,
        device: &str,
        key: &IdentityPublicKey,
    ) -> bool {
        lock(&self.known).devices.get(peer).is_some_and(|l| {
            l.devices
                .iter()
                .any(|(id, k)| id.as_str() == device && k == key)
        })
    }

    /// Pins the identity key the server presents for `peer` now, if and only if its fingerprint is
    /// `expected` (the one the user compared); then lets the messages held back for a key change
    /// of `peer` open (the caller tells the inbox). Anything else pins nothing.
    pub(crate) async fn accept_key(
        &self,
        peer: &ClientId,
        expected: &Fingerprint,
    ) -> Result<(), PeerError> {
        let key = validate_key(self.fetch_key_response(peer).await?)?;
        let Some(ik) = key.identity else {
            return Err(PeerError::NoIdentityKey { peer: peer.clone() });
        };
        let actual = ik.fingerprint();
        if &actual != expected {
            // Not silent: a key other than the pinned one is reported as a key change of its own.
            if let Some(old) = self.key_store.pinned(peer)? {
                if old != ik {
                    let _ = self.key_changed(peer, old, ik);
                }
            }
            tracing::warn!(peer = %self.client_id, changed = %peer, "key change not accepted: the server presents another key than the one compared");
            return Err(PeerError::KeyMismatch {
                peer: peer.clone(),
                expected: Box::new(expected.clone()),
                actual: Box::new(actual),
            });
        }
        self.key_store.pin(peer, &ik)?;
        // Compared and accepted by the user: a contact, never evicted from a bounded store.
        self.key_store.mark_contact(peer)?;
        {
            let mut known = lock(&self.known);
            known.changes.remove(peer);
            known.keys.remove(peer);
            known.keys.insert(key);
        }
        tracing::info!(peer = %self.client_id, changed = %peer, "key change accepted");
        Ok(())
    }

    /// Records a key change (raising the event once per new key) and returns the error.
    pub(crate) fn key_changed(
        &self,
        peer: &ClientId,
        old: IdentityPublicKey,
        new: IdentityPublicKey,
    ) -> PeerError {
        let first_time = lock(&self.known).changes.insert(peer.clone(), new) != Some(new);
        self.forget_key(peer);
        if first_time {
            tracing::warn!(peer = %self.client_id, changed = %peer, "identity key changed");
            self.dispatcher.emit(PeerEvent::KeyChanged {
                peer: peer.clone(),
                old: old.fingerprint(),
                new: new.fingerprint(),
            });
        }
        PeerError::KeyChanged {
            peer: peer.clone(),
            old: old.fingerprint(),
            new: new.fingerprint(),
        }
    }

    /// The pinned identity key of `peer`, fetching (and pinning on first use) if none is pinned.
    ///
    /// # Errors
    /// [`PeerError::NoIdentityKey`] if the server presents `peer` without an identity key, and the
    /// errors of [`Trust::fetch_key`] (`PEER_NOT_FOUND` among them).
    pub(crate) async fn sender_identity(
        &self,
        peer: &ClientId,
    ) -> Result<IdentityPublicKey, PeerError> {
        if let Some(k) = self.key_store.pinned(peer)? {
            return Ok(k);
        }
        let keyless = || PeerError::NoIdentityKey { peer: peer.clone() };
        if lock(&self.known).keyless.contains(peer, Instant::now()) {
            return Err(keyless());
        }
        let found = match self.fetch_key(peer).await {
            Ok(key) => key.identity.ok_or_else(keyless),
            Err(e) => Err(e),
        };
        if let Err(
            PeerError::NoIdentityKey { .. }
            | PeerError::Server {
                error_type: ErrorType::PeerNotFound,
                ..
            },
        ) = &found
        {
            lock(&self.known).keyless.insert(peer, Instant::now());
        }
        found
    }

    /// After a signature failed with the pinned key: asks the server for the current key, so a key
    /// change is reported as such (it is then pending) rather than as a forgery.
    pub(crate) async fn recheck_key(&self, peer: &ClientId) -> Recheck {
        match self.fetch_key(peer).await {
            Ok(_) => Recheck::Unchanged,
            Err(PeerError::KeyChanged { .. }) => Recheck::Changed,
            Err(e) => Recheck::Failed(e),
        }
    }
}

/// What [`Trust::recheck_key`] found.
#[derive(Debug)]
pub(crate) enum Recheck {
    /// The server still publishes the pinned key.
    Unchanged,
    /// The key changed (now pending, reported once).
    Changed,
    /// The current key could not be fetched or checked.
    Failed(PeerError),
}

/// Checks a `public_key_response` on its own: the KEM key and, for a Lattice peer, that its
/// identity key signs it (`keySignature`). No trust decision.
fn validate_key(resp: PublicKeyResponse) -> Result<PeerKey, PeerError> {
    let peer = resp.peer_id;
    let invalid = |reason: String| PeerError::InvalidPeerKey {
        peer: peer.clone(),
        reason,
    };
    let kem_bytes = resp
        .public_key
        .bytes()
        .ok_or_else(|| invalid("publicKey is not a byte array".into()))?;
    let kem = KemPublicKey::from_bytes(kem_bytes).map_err(|e| invalid(e.to_string()))?;
    let identity = match (resp.identity_key, resp.key_signature) {
        (Some(ik), Some(sig)) => {
            let ik = B64
                .decode(ik)
                .map_err(|_| invalid("identityKey is not base64".into()))?;
            let ik = IdentityPublicKey::from_bytes(&ik).map_err(|e| invalid(e.to_string()))?;
            let sig = B64
                .decode(sig)
                .map_err(|_| PeerError::InvalidKeySignature { peer: peer.clone() })?;
            verify_kem_key_signature(&ik, kem_bytes, &sig)
                .map_err(|_| PeerError::InvalidKeySignature { peer: peer.clone() })?;
            Some(ik)
        }
        (Some(_), None) => return Err(PeerError::InvalidKeySignature { peer }),
        (None, _) => None,
    };
    Ok(PeerKey {
        peer_id: peer,
        kem,
        identity,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use lattice_protocol::ErrorType;

    use super::*;
    use crate::testkit::{id, identity, key_response, Kit};

    fn fetch(kit: &Kit, peer: &str) -> tokio::task::JoinHandle<Result<PeerKey, PeerError>> {
        let trust = Arc::clone(&kit.trust);
        let peer = id(peer);
        tokio::spawn(async move { trust.fetch_key(&peer).await })
    }

    #[tokio::test(start_paused = true)]
    async fn first_use_pins_and_caches_and_a_changed_key_is_held_back_and_reported_once() {
        let mut kit = Kit::new("alice");
        let bob = id("bob");
        let old = identity();
        let call = fetch(&kit, "bob");
        kit.answer_key_request(key_response(&bob, &old, true)).await;
        let key = call.await.unwrap().unwrap();
        assert_eq!(key.identity, Some(old.identity_public_key()));
        assert_eq!(
            kit.store.pinned(&bob).unwrap(),
            Some(old.identity_public_key())
        );
        assert!(kit.trust.cached_key(&bob).is_some());

        let new = identity();
        for round in 0..2 {
            let call = fetch(&kit, "bob");
            kit.answer_key_request(key_response(&bob, &new, true)).await;
            assert!(matches!(
                call.await.unwrap(),
                Err(PeerError::KeyChanged { .. })
            ));
            let changes = kit
                .take_events()
                .into_iter()
                .filter(|e| matches!(e, PeerEvent::KeyChanged { .. }))
                .count();
            assert_eq!(
                changes,
                usize::from(round == 0),
                "reported once per new key"
            );
        }
        assert_eq!(
            kit.trust.pending_key_change(&bob),
            Some(new.identity_public_key())
        );
        assert!(
            kit.trust.cached_key(&bob).is_none(),
            "a changed key is not used"
        );
        assert_eq!(
            kit.store.pinned(&bob).unwrap(),
            Some(old.identity_public_key())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_change_is_accepted_only_for_the_compared_fingerprint() {
        let mut kit = Kit::new("alice");
        let bob = id("bob");
        let (old, new, other) = (identity(), identity(), identity());
        kit.store.pin(&bob, &old.identity_public_key()).unwrap();
        let _ = kit
            .trust
            .key_changed(&bob, old.identity_public_key(), new.identity_public_key());
        let expected = new.identity_public_key().fingerprint();

        // The server now shows yet another key: nothing is pinned.
        let trust = Arc::clone(&kit.trust);
        let (b, f) = (bob.clone(), expected.clone());
        let call = tokio::spawn(async move { trust.accept_key(&b, &f).await });
        kit.answer_key_request(key_response(&bob, &other, true))
            .await;
        assert!(matches!(
            call.await.unwrap(),
            Err(PeerError::KeyMismatch { .. })
        ));
        assert_eq!(
            kit.store.pinned(&bob).unwrap(),
            Some(old.identity_public_key())
        );

        let trust = Arc::clone(&kit.trust);
        let (b, f) = (bob.clone(), expected);
        let call = tokio::spawn(async move { trust.accept_key(&b, &f).await });
        kit.answer_key_request(key_response(&bob, &new, true)).await;
        call.await.unwrap().unwrap();
        assert_eq!(
            kit.store.pinned(&bob).unwrap(),
            Some(new.identity_public_key())
        );
        assert_eq!(kit.trust.pending_key_change(&bob), None);
        assert!(kit.trust.cached_key(&bob).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_sender_without_identity_key_is_remembered_for_a_while() {
        let mut kit = Kit::new("alice");
        let carol = id("carol");
        let trust = Arc::clone(&kit.trust);
        let c = carol.clone();
        let call = tokio::spawn(async move { trust.sender_identity(&c).await });
        let frame = kit.sent().await;
        let err = ServerFrame::error(
            ErrorType::PeerNotFound,
            "no such peer",
            std::time::SystemTime::now(),
            frame.request_id.clone(),
        );
        kit.serve(err, frame.request_id);
        assert!(matches!(
            call.await.unwrap(),
            Err(PeerError::Server {
                error_type: ErrorType::PeerNotFound,
                ..
            })
        ));
        // Asked again at once: answered from memory, nothing sent.
        assert!(matches!(
            kit.trust.sender_identity(&carol).await,
            Err(PeerError::NoIdentityKey { .. })
        ));
        assert!(kit.try_sent().is_none());
        // Once the memory expires the server is asked again.
        tokio::time::advance(defaults::NO_IDENTITY_KEY_TTL + Duration::from_secs(1)).await;
        let trust = Arc::clone(&kit.trust);
        let c = carol.clone();
        let call = tokio::spawn(async move { trust.sender_identity(&c).await });
        kit.answer_key_request(key_response(&carol, &identity(), false))
            .await;
        assert!(matches!(
            call.await.unwrap(),
            Err(PeerError::NoIdentityKey { .. })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn forged_signatures_and_downgrades_are_refused() {
        let mut kit = Kit::new("alice");
        let bob = id("bob");
        let real = identity();
        let mut forged = key_response(&bob, &real, true);
        forged.key_signature = key_response(&bob, &identity(), true).key_signature;
        let call = fetch(&kit, "bob");
        kit.answer_key_request(forged).await;
        assert!(matches!(
            call.await.unwrap(),
            Err(PeerError::InvalidKeySignature { .. })
        ));

        kit.store.pin(&bob, &real.identity_public_key()).unwrap();
        let call = fetch(&kit, "bob");
        kit.answer_key_request(key_response(&bob, &real, false))
            .await;
        assert!(matches!(
            call.await.unwrap(),
            Err(PeerError::KeyDowngrade { .. })
        ));
    }

    fn signed_list(
        who: &ClientId,
        signer: &lattice_crypto::IdentityKeyPair,
        counter: u64,
        devices: &[(&str, &lattice_crypto::IdentityKeyPair)],
    ) -> SignedDeviceList {
        let entries: Vec<(&str, [u8; 32])> = devices
            .iter()
            .map(|(d, k)| (*d, *k.public_key().as_bytes()))
            .collect();
        let sig = signer.sign(&device_list_message(who.as_str(), counter, &entries).unwrap());
        SignedDeviceList {
            counter,
            devices: devices
                .iter()
                .map(|(d, k)| lattice_protocol::DeviceEntry {
                    device_id: DeviceId::new(*d).unwrap(),
                    device_key: B64.encode(k.public_key().as_bytes()),
                })
                .collect(),
            signature: B64.encode(sig),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn device_lists_are_kept_only_when_signed_by_the_pinned_key_and_newer() {
        let kit = Kit::new("alice");
        let bob = id("bob");
        let bob_identity = identity();
        let laptop = lattice_crypto::IdentityKeyPair::generate(&mut rand_core::OsRng);
        let phone = lattice_crypto::IdentityKeyPair::generate(&mut rand_core::OsRng);
        let with = |list: SignedDeviceList| PublicKeyResponse {
            device_list: Some(list),
            ..key_response(&bob, &bob_identity, true)
        };
        let ik = bob_identity.identity_key();
        kit.trust
            .check_key(with(signed_list(&bob, ik, 1, &[("laptop", &laptop)])))
            .unwrap();
        assert!(kit
            .trust
            .device_listed(&bob, "laptop", &laptop.public_key()));
        assert!(!kit.trust.device_listed(&bob, "laptop", &phone.public_key()));
        assert!(matches!(kit.take_events().as_slice(),
            [PeerEvent::DevicesChanged { peer, added, removed }]
                if *peer == bob && added.len() == 1 && removed.is_empty()));
        // A list the server made up (signed by another key) is refused and changes nothing.
        let mallory = lattice_crypto::IdentityKeyPair::generate(&mut rand_core::OsRng);
        let forged = signed_list(&bob, &mallory, 9, &[("laptop", &laptop), ("evil", &phone)]);
        assert!(matches!(
            kit.trust.check_key(with(forged)),
            Err(PeerError::InvalidPeerKey { .. })
        ));
        assert!(!kit.trust.device_listed(&bob, "evil", &phone.public_key()));
        // An older list (a replay) is ignored; a newer one replaces it and says what changed.
        kit.trust
            .check_key(with(signed_list(&bob, ik, 0, &[("evil", &phone)])))
            .unwrap();
        assert!(!kit.trust.device_listed(&bob, "evil", &phone.public_key()));
        assert!(kit.take_events().is_empty());
        kit.trust
            .check_key(with(signed_list(&bob, ik, 2, &[("phone", &phone)])))
            .unwrap();
        assert!(kit.trust.device_listed(&bob, "phone", &phone.public_key()));
        assert!(!kit
            .trust
            .device_listed(&bob, "laptop", &laptop.public_key()));
        assert!(matches!(kit.take_events().as_slice(),
            [PeerEvent::DevicesChanged { added, removed, .. }]
                if added[0].as_str() == "phone" && removed[0].as_str() == "laptop"));
    }
}
