//! Trust in peers' keys: fetching a peer's keys, checking its `keySignature`, pinning its identity
//! key on first use and holding back a changed key until the caller accepts it.

use base64::Engine as _;
use lattice_crypto::{verify_kem_key_signature, Fingerprint, IdentityPublicKey, KemPublicKey};
use lattice_protocol::{
    ClientFrame, ClientId, ErrorType, PublicKeyResponse, RequestPublicKey, ServerFrame,
};
use tokio::time::Instant;

use crate::events::PeerEvent;
use crate::keys::{tofu, PeerKey, Trust};
use crate::peer::{unexpected, Inner, Lane, B64};
use crate::{PeerError, WaitOptions};

impl Inner {
    pub(crate) fn forget_key(&self, peer: &ClientId) {
        if let Ok(mut k) = self.keys.lock() {
            k.remove(peer);
        }
        if let Ok(mut k) = self.keyless.lock() {
            k.remove(peer);
        }
    }

    pub(crate) fn cached_key(&self, peer: &ClientId) -> Option<PeerKey> {
        self.keys.lock().ok().and_then(|k| k.get(peer).cloned())
    }

    pub(crate) fn pending_key_change(&self, peer: &ClientId) -> Option<IdentityPublicKey> {
        self.key_changes
            .lock()
            .ok()
            .and_then(|c| c.get(peer).copied())
    }

    /// `request_public_key`, then [`Inner::check_key`].
    pub(crate) async fn fetch_key(&self, target: &ClientId) -> Result<PeerKey, PeerError> {
        let resp = self.fetch_key_response(target).await?;
        self.check_key(resp)
    }

    /// `request_public_key`: the server's answer for `target`, not checked yet.
    async fn fetch_key_response(&self, target: &ClientId) -> Result<PublicKeyResponse, PeerError> {
        let t = target.clone();
        let options = WaitOptions::default()
            .filter(move |f| matches!(f, ServerFrame::PublicKey(k) if k.peer_id == t));
        let frame = ClientFrame::RequestPublicKey(RequestPublicKey {
            target_id: target.clone(),
        });
        let answer = self
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
    pub(crate) fn check_key(&self, resp: PublicKeyResponse) -> Result<PeerKey, PeerError> {
        let key = validate_key(resp)?;
        let peer = &key.peer_id;
        match &key.identity {
            Some(ik) => match tofu(self.config.key_store.as_ref(), peer, ik)? {
                Trust::FirstUse | Trust::Pinned => {}
                Trust::Changed { old } => return Err(self.key_changed(peer, old, *ik)),
            },
            None => {
                if self.config.key_store.pinned(peer)?.is_some() {
                    return Err(PeerError::KeyDowngrade { peer: peer.clone() });
                }
            }
        }
        if let Ok(mut k) = self.keys.lock() {
            k.insert(key.clone());
        }
        Ok(key)
    }

    /// Pins the identity key the server presents for `peer` now, if and only if its fingerprint is
    /// `expected` (the one the user compared); then lets the messages held back for a key change
    /// of `peer` open. Anything else pins nothing.
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
            if let Some(old) = self.config.key_store.pinned(peer)? {
                if old != ik {
                    let _ = self.key_changed(peer, old, ik);
                }
            }
            tracing::warn!(peer = %self.config.client_id, changed = %peer, "key change not accepted: the server presents another key than the one compared");
            return Err(PeerError::KeyMismatch {
                peer: peer.clone(),
                expected: Box::new(expected.clone()),
                actual: Box::new(actual),
            });
        }
        self.config.key_store.pin(peer, &ik)?;
        // Compared and accepted by the user: a contact, never evicted from a bounded store.
        self.config.key_store.mark_contact(peer)?;
        if let Ok(mut c) = self.key_changes.lock() {
            c.remove(peer);
        }
        if let Ok(mut k) = self.keys.lock() {
            k.remove(peer);
            k.insert(key);
        }
        tracing::info!(peer = %self.config.client_id, changed = %peer, "key change accepted");
        self.release_held(peer);
        Ok(())
    }

    /// Records a key change (raising the event once per new key) and returns the error.
    pub(crate) fn key_changed(
        &self,
        peer: &ClientId,
        old: IdentityPublicKey,
        new: IdentityPublicKey,
    ) -> PeerError {
        let first_time = self
            .key_changes
            .lock()
            .map(|mut c| c.insert(peer.clone(), new) != Some(new))
            .unwrap_or(false);
        self.forget_key(peer);
        if first_time {
            tracing::warn!(peer = %self.config.client_id, changed = %peer, "identity key changed");
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
    /// errors of [`Inner::fetch_key`] (`PEER_NOT_FOUND` among them).
    pub(crate) async fn sender_identity(
        &self,
        peer: &ClientId,
    ) -> Result<IdentityPublicKey, PeerError> {
        if let Some(k) = self.config.key_store.pinned(peer)? {
            return Ok(k);
        }
        let keyless = || PeerError::NoIdentityKey { peer: peer.clone() };
        if self
            .keyless
            .lock()
            .is_ok_and(|k| k.contains(peer, Instant::now()))
        {
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
            if let Ok(mut k) = self.keyless.lock() {
                k.insert(peer, Instant::now());
            }
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

/// What [`Inner::recheck_key`] found.
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
