//! `challenge` and `register`: the ML-KEM key, the Ed25519 proof, the directory, the claim on the
//! hub, the binding, the presence broadcast.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use lattice_crypto::{IdentityPublicKey, KemPublicKey};
use lattice_protocol::close_code;
use lattice_protocol::limits::{CHALLENGE_NONCE_LEN, CHALLENGE_TTL_SECS, KEM_PUBLIC_KEY_LEN};
use lattice_protocol::{
    encode, Challenge, DeviceId, Frame, PeerPresence, PublicKeyField, Register, Registered,
    ServerFrame, Verification,
};
use tokio::time::Instant;
use tracing::{info, warn};

use super::{devices, Core};
use crate::cluster::directory::Bound;
use crate::cluster::presence::Claim;
use crate::hub::{ClaimError, PeerEntry};
use crate::metrics::Metrics;
use crate::node::NodeMsg;
use crate::session::error::{HandlerError, ProofError};
use crate::state::unix_ms;
use crate::store::Binding;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// What a verified registration proved: the identity key and its signature over the KEM key.
type Proof = ([u8; 32], Vec<u8>);

impl Core {
    /// On a node of several: claims the (id, device) in Redis, where one script decides among
    /// every node's registrations (one live holder per device, devices of one id only for its
    /// verified identity). A connection of the same identity and device on another node is told
    /// to close (4000). True when no other device of the id was online anywhere (the id comes
    /// online); false on a single node.
    async fn claim_cluster(&self, entry: &PeerEntry) -> Result<bool, HandlerError> {
        let Some(node) = &self.state.node else {
            return Ok(false);
        };
        let keys = crate::node::peer_keys(entry);
        match node
            .presence
            .claim_device(&entry.id, &entry.device, self.shared.conn_id, &keys)
            .await
        {
            Ok((Claim::Won { replaced }, first)) => {
                if let Some(old) = replaced.filter(|old| old.node != node.id) {
                    let close = NodeMsg::Close {
                        to: entry.id.clone(),
                        conn: old.conn,
                    };
                    match node.publish(&old.node, &close).await {
                        Ok(_) => {}
                        // Its node then sees the device taken at its next refresh.
                        Err(e) => warn!(error = %e, "close notice not published"),
                    }
                }
                Ok(first)
            }
            Ok((Claim::Taken(_), _)) => Err(HandlerError::IdTaken(entry.id.clone())),
            Err(e) => {
                warn!(error = %e, "presence claim failed");
                Err(HandlerError::ClusterUnavailable)
            }
        }
    }

    /// Undoes [`Self::claim_cluster`] after a later step failed.
    async fn release_cluster(&self, id: &lattice_protocol::ClientId, device: &DeviceId) {
        if let Some(node) = &self.state.node {
            if let Err(e) = node
                .presence
                .release_device(id, device, self.shared.conn_id)
                .await
            {
                warn!(error = %e, "presence release failed: it expires");
            }
        }
    }

    /// On a node of several: binds (or updates, or marks in use) the verified id in Redis, where
    /// one script applies the binding rules and `--max-bindings` for every node at once.
    async fn bind_cluster(
        &self,
        id: &lattice_protocol::ClientId,
        binding: &Binding,
    ) -> Result<(), HandlerError> {
        let Some(node) = &self.state.node else {
            return Ok(());
        };
        let cfg = &self.state.config;
        let now = i64::try_from(unix_ms()).unwrap_or(i64::MAX);
        match node
            .directory
            .bind(id, binding, cfg.max_bindings, now)
            .await
        {
            Ok(Bound::Created) => {
                // A new owner starts in no group. The sweeper made an expired id leave its groups
                // already; this covers a sweeper that failed halfway (Redis went away).
                if let Err(e) = node.groups.forget_member(id).await {
                    warn!(error = %e, "stale group memberships not checked");
                }
                if let Err(e) = node.devices.forget(id).await {
                    warn!(error = %e, "stale device list not checked");
                }
                Ok(())
            }
            Ok(Bound::Updated) => Ok(()),
            // Another identity bound it between our lookup and now (on another node).
            Ok(Bound::Taken) => Err(HandlerError::IdTaken(id.clone())),
            Ok(Bound::Full) => Err(HandlerError::DirectoryFull(cfg.max_bindings)),
            Err(e) => {
                warn!(error = %e, "directory write failed");
                Err(HandlerError::RegistrationNotStored)
            }
        }
    }

    /// Mail older than `--mailbox-ttl` goes before a verified peer's drain (on a node of several
    /// the streams expire when their owner comes back; the quota bounds them meanwhile).
    async fn expire_mail(
        &self,
        node: &crate::node::Node,
        id: &lattice_protocol::ClientId,
        device: &DeviceId,
    ) {
        let cfg = &self.state.config;
        let batch = usize::try_from(cfg.mailbox_quota).unwrap_or(usize::MAX);
        match node
            .mailbox
            .expire_device(id, device, cfg.mailbox_ttl, batch)
            .await
        {
            Ok(0) => {}
            Ok(n) => info!(expired = n, "expired mailbox entries removed"),
            Err(e) => warn!(error = %e, "mailbox expiry failed"),
        }
    }

    /// A fresh nonce for a verified registration; it replaces any earlier one.
    pub(super) fn on_challenge(&mut self) -> ServerFrame {
        let nonce: [u8; CHALLENGE_NONCE_LEN] = rand::random();
        self.challenge = Some((nonce, Instant::now()));
        ServerFrame::Challenge(Challenge {
            nonce: B64.encode(nonce),
        })
    }

    /// Checks a verified registration against this connection's challenge (which it uses up).
    fn check_proof(
        &mut self,
        v: &Verification,
        r: &Register,
        kem_key: &[u8],
    ) -> Result<Proof, ProofError> {
        let (nonce, issued) = self.challenge.take().ok_or(ProofError::NoChallenge)?;
        if issued.elapsed() > Duration::from_secs(CHALLENGE_TTL_SECS) {
            return Err(ProofError::ChallengeExpired);
        }
        let field = |f: &Option<String>, name: &'static str| -> Result<Vec<u8>, ProofError> {
            let s = f.as_deref().ok_or(ProofError::FieldMissing(name))?;
            B64.decode(s).map_err(|_| ProofError::FieldNotBase64(name))
        };
        let ik_bytes = field(&v.serialized_public_key, "serializedPublicKey")?;
        let ik = IdentityPublicKey::from_bytes(&ik_bytes).map_err(|_| ProofError::NotEd25519)?;
        let statement =
            lattice_crypto::registration_statement(&nonce, r.client_id.as_str(), kem_key)
                .map_err(ProofError::Statement)?;
        if field(&v.serialized_message, "serializedMessage")? != statement {
            return Err(ProofError::StatementMismatch);
        }
        let sig = field(&v.serialized_signed_data, "serializedSignedData")?;
        ik.verify(&statement, &sig)
            .map_err(|_| ProofError::BadSignature)?;
        let key_sig = B64
            .decode(
                r.key_signature
                    .as_deref()
                    .ok_or(ProofError::KeySignatureMissing)?,
            )
            .map_err(|_| ProofError::KeySignatureNotBase64)?;
        lattice_crypto::verify_kem_key_signature(&ik, kem_key, &key_sig)
            .map_err(|_| ProofError::KeySignatureInvalid)?;
        Ok((*ik.as_bytes(), key_sig))
    }

    /// Takes one of this address's registration slots (`--max-registrations-per-ip`); true if
    /// the limit allows this registration.
    fn acquire_ip_slot(&mut self) -> bool {
        let cfg = &self.state.config;
        let exempt = self.remote_ip.is_loopback() && !cfg.limit_loopback;
        if cfg.max_registrations_per_ip == 0 || exempt {
            return true;
        }
        self.ip_slot = self
            .state
            .addresses
            .acquire(self.remote_ip, cfg.max_registrations_per_ip);
        self.ip_slot
    }

    pub(super) fn release_ip_slot(&mut self) {
        if std::mem::take(&mut self.ip_slot) {
            self.state.addresses.release(self.remote_ip);
        }
    }

    /// Whether this connection may create a new binding (a verified id not in the directory):
    /// the directory's cap (`--max-bindings`), then this address's allowance
    /// (`--new-ids-per-ip`, loopback exempt unless `--limit-loopback`).
    async fn may_mint_id(&self) -> Result<(), HandlerError> {
        let cfg = &self.state.config;
        if cfg.max_bindings > 0 {
            let count = match &self.state.node {
                Some(node) => node
                    .directory
                    .binding_count()
                    .await
                    .map_err(|e| e.to_string()),
                None => self
                    .state
                    .directory
                    .binding_count()
                    .map_err(|e| e.to_string()),
            };
            match count {
                Ok(n) if n >= cfg.max_bindings => {
                    return Err(HandlerError::DirectoryFull(cfg.max_bindings));
                }
                Ok(_) => {}
                Err(e) => {
                    warn!(error = %e, "directory count failed");
                    return Err(HandlerError::DirectoryUnavailable);
                }
            }
        }
        let exempt = self.remote_ip.is_loopback() && !cfg.limit_loopback;
        // The limiter keeps std time; the address limit is not a session timer.
        let now = std::time::Instant::now();
        if !exempt
            && !self
                .state
                .new_ids
                .allow(self.remote_ip, cfg.new_ids_per_ip, now)
        {
            return Err(HandlerError::NewIdsExhausted(cfg.new_ids_per_ip));
        }
        Ok(())
    }

    /// The ML-KEM key of a `register`, checked as FIPS 203 requires.
    fn kem_key(r: &Register) -> Result<Vec<u8>, HandlerError> {
        match &r.public_key {
            PublicKeyField::Bytes(b) if b.len() != KEM_PUBLIC_KEY_LEN => {
                Err(HandlerError::KemKeyLength(b.len()))
            }
            PublicKeyField::Bytes(b) if KemPublicKey::from_bytes(b).is_err() => {
                Err(HandlerError::KemKeyOutOfRange)
            }
            PublicKeyField::Bytes(b) => Ok(b.clone()),
            PublicKeyField::Invalid(why) => Err(HandlerError::KemKeyUnreadable(why)),
        }
    }

    pub(super) async fn on_register(
        &mut self,
        r: Register,
    ) -> Result<Option<ServerFrame>, HandlerError> {
        if let Some(peer) = &self.peer {
            let device = r.device.as_ref().map(|d| &d.device_id);
            if peer.id != r.client_id || device.unwrap_or(&DeviceId::primary()) != &peer.device {
                return Err(HandlerError::AlreadyRegistered(peer.id.clone()));
            }
            // A retry of our own registration: answer it again rather than colliding with it.
            return Ok(Some(ServerFrame::Registered(Registered {
                success: true,
                client_id: peer.id.clone(),
                verified: peer.verified,
                device_id: device.cloned(),
            })));
        }
        let id = r.client_id.clone();
        let kem_key = Self::kem_key(&r)?;
        if r.link_relay {
            // A throwaway id: nothing is proved or bound, so it can never take a bound id (the
            // binding rules refuse an unproved registration of one), and it leaves no trace.
            if r.device.is_some() {
                return Err(HandlerError::LinkRelayDevice);
            }
            let binding = self.binding_of(&id).await?;
            return self
                .register_checked(r, kem_key, None, binding, DeviceId::primary())
                .await;
        }
        // Original clients send other algorithms (ml-dsa) or odd shapes: those register unverified.
        let verification = match r.verification() {
            Some(Ok(v)) if v.algorithm.eq_ignore_ascii_case("ed25519") => Some(v),
            _ => None,
        };
        if let Some(part) = &r.device {
            let device = part.device_id.clone();
            let binding = self.binding_of(&id).await?;
            let v = verification.ok_or(ProofError::DeviceUnverified)?;
            let proof = self
                .check_device_proof(&v, &r, &kem_key, binding.as_ref())
                .await?;
            return self
                .register_checked(r, kem_key, Some(proof), binding, device)
                .await;
        }
        let proof = match verification {
            Some(v) => Some(self.check_proof(&v, &r, &kem_key)?),
            None => None,
        };
        let binding = self.binding_of(&id).await?;
        self.register_checked(r, kem_key, proof, binding, DeviceId::primary())
            .await
    }

    /// The checks of a device `register` (docs/protocol.md, "Devices"), in the documented order:
    /// the challenge, the id's binding and identity key, the certificate, an attached device
    /// list, the device on the current list with this key, then the device key's signature over
    /// the device statement and `keySignature` over the bound KEM key.
    async fn check_device_proof(
        &mut self,
        v: &Verification,
        r: &Register,
        kem_key: &[u8],
        binding: Option<&Binding>,
    ) -> Result<Proof, HandlerError> {
        let Some(part) = &r.device else {
            return Err(ProofError::DeviceUnverified.into());
        };
        if part.device_id.is_primary() {
            return Err(HandlerError::BadDeviceList(format!(
                "deviceId {} is reserved for the implicit primary device (a register without a device part)",
                part.device_id
            )));
        }
        let (nonce, issued) = self.challenge.take().ok_or(ProofError::NoChallenge)?;
        if issued.elapsed() > Duration::from_secs(CHALLENGE_TTL_SECS) {
            return Err(ProofError::ChallengeExpired.into());
        }
        let field = |f: &Option<String>, name: &'static str| -> Result<Vec<u8>, ProofError> {
            let s = f.as_deref().ok_or(ProofError::FieldMissing(name))?;
            B64.decode(s).map_err(|_| ProofError::FieldNotBase64(name))
        };
        let id = &r.client_id;
        let Some(binding) = binding else {
            return Err(HandlerError::UnknownDevice(format!(
                "{id} has no device list: its primary device has not registered it"
            )));
        };
        let ik_bytes = field(&v.serialized_public_key, "serializedPublicKey")?;
        let ik = IdentityPublicKey::from_bytes(&ik_bytes).map_err(|_| ProofError::NotEd25519)?;
        if ik.as_bytes() != &binding.identity_key {
            return Err(HandlerError::IdTaken(id.clone()));
        }
        let dk = devices::device_key(&part.device_key)?;
        let cert_msg = lattice_crypto::device_certificate_message(
            id.as_str(),
            part.device_id.as_str(),
            dk.as_bytes(),
        )
        .map_err(ProofError::Statement)?;
        let cert = B64.decode(&part.certificate).map_err(|_| {
            HandlerError::BadDeviceCertificate("The device certificate is not valid base64")
        })?;
        ik.verify(&cert_msg, &cert).map_err(|_| {
            HandlerError::BadDeviceCertificate(
                "The device certificate does not verify under the id's identity key",
            )
        })?;
        let stored = self.device_list(id).await?;
        let current = match &part.device_list {
            // A copy of the stored list (a retried first registration) changes nothing.
            Some(list) if stored.as_ref() != Some(list) => {
                // Not registered yet: no device of this connection can be removed.
                self.store_device_list(id, &ik, list, None).await?;
                Some(list.clone())
            }
            _ => stored,
        };
        let listed = current
            .as_ref()
            .and_then(|l| crate::store::listed_key(l, &part.device_id));
        if listed != Some(*dk.as_bytes()) {
            return Err(HandlerError::UnknownDevice(format!(
                "Device {} of {id} is not on its device list with this key; the primary device must list it first",
                part.device_id
            )));
        }
        let statement = lattice_crypto::device_registration_statement(
            &nonce,
            id.as_str(),
            part.device_id.as_str(),
            kem_key,
        )
        .map_err(ProofError::Statement)?;
        if field(&v.serialized_message, "serializedMessage")? != statement {
            return Err(ProofError::StatementMismatch.into());
        }
        let sig = field(&v.serialized_signed_data, "serializedSignedData")?;
        dk.verify(&statement, &sig)
            .map_err(|_| ProofError::BadSignature)?;
        if kem_key != binding.kem_public_key.as_slice() {
            return Err(ProofError::DeviceKemKey.into());
        }
        let key_sig = B64
            .decode(
                r.key_signature
                    .as_deref()
                    .ok_or(ProofError::KeySignatureMissing)?,
            )
            .map_err(|_| ProofError::KeySignatureNotBase64)?;
        lattice_crypto::verify_kem_key_signature(&ik, kem_key, &key_sig)
            .map_err(|_| ProofError::KeySignatureInvalid)?;
        Ok((*ik.as_bytes(), key_sig))
    }

    /// A registration whose proof (if any) holds: the binding rules, the claim on the hub, the
    /// binding, presence.
    async fn register_checked(
        &mut self,
        r: Register,
        kem_key: Vec<u8>,
        proof: Option<Proof>,
        binding: Option<Binding>,
        device: DeviceId,
    ) -> Result<Option<ServerFrame>, HandlerError> {
        let id = r.client_id.clone();
        let is_device = !device.is_primary();
        match (&binding, &proof) {
            (Some(_), None) => return Err(HandlerError::IdTaken(id)),
            (Some(b), Some((ik, _))) if &b.identity_key != ik => {
                return Err(HandlerError::IdTaken(id))
            }
            _ => {}
        }
        let identity_key = proof.as_ref().map(|(ik, _)| *ik);
        let entry = Arc::new(PeerEntry {
            id: id.clone(),
            device: device.clone(),
            session: Arc::clone(&self.shared),
            verified: proof.is_some(),
            public_key: kem_key.clone().into(),
            identity_key,
            key_signature: proof.as_ref().map(|(_, s)| s.clone().into()),
            subscribed: AtomicBool::new(false),
            link_relay: r.link_relay,
        });
        // A verified registration of the same identity replaces a stale connection at once. On
        // a node of several, Redis decided already (below): a local holder it let go is stale.
        let authority = self.state.node.is_some();
        let replace = |existing: &PeerEntry| {
            authority || (identity_key.is_some() && existing.identity_key == identity_key)
        };
        if proof.is_some() && binding.is_none() {
            if let Err(e) = self.may_mint_id().await {
                Metrics::inc(&self.state.metrics.new_ids_refused);
                info!(ip = %self.remote_ip, %id, error_type = %e.error_type(), "new id refused");
                return Err(e);
            }
        }
        if !self.acquire_ip_slot() {
            let max = self.state.config.max_registrations_per_ip;
            info!(ip = %self.remote_ip, max, "registration refused: address limit");
            return Err(HandlerError::AddressFull(max));
        }
        let first_anywhere = match self.claim_cluster(&entry).await {
            Ok(first) => first,
            Err(e) => {
                self.release_ip_slot();
                return Err(e);
            }
        };
        let claimed = match self.state.hub.claim(Arc::clone(&entry), &replace) {
            Ok(claimed) => claimed,
            Err(ClaimError::Taken) => {
                self.release_cluster(&id, &device).await;
                self.release_ip_slot();
                return Err(HandlerError::IdTaken(id));
            }
        };
        // The replaced connection (same identity) is closed before anything can fail, so a
        // failure below never leaves it open but unreachable.
        if let Some(old) = claimed.replaced {
            if old.session.conn_id != self.shared.conn_id {
                old.session.close(
                    close_code::REPLACED,
                    "replaced by a newer connection of the same identity",
                );
            }
        }
        if let Some((ik, key_signature)) = proof {
            let new = Binding {
                identity_key: ik,
                kem_public_key: kem_key,
                key_signature,
            };
            if let Err(e) = self.bind_cluster(&id, &new).await {
                self.state.hub.release(&id, self.shared.conn_id);
                self.release_cluster(&id, &device).await;
                self.release_ip_slot();
                return Err(e);
            }
            if self.state.node.is_some() {
                // Bound in Redis above.
            } else if is_device || binding.as_ref() == Some(&new) {
                // (A device never changes its id's binding: it proved the bound keys.)
                // In use: its binding does not expire (`--binding-ttl`) while it keeps coming back.
                let now = i64::try_from(unix_ms()).unwrap_or(i64::MAX);
                if let Err(e) = self.state.directory.touch(&id, now) {
                    warn!(error = %e, "directory touch failed");
                }
            } else if let Err(e) = self.state.directory.put(&id, &new) {
                warn!(error = %e, "directory write failed");
                self.state.hub.release(&id, self.shared.conn_id);
                self.release_ip_slot();
                return Err(HandlerError::RegistrationNotStored);
            }
        }
        tracing::Span::current().record("peer", tracing::field::display(&id));
        info!(verified = entry.verified, %device, link_relay = entry.link_relay, "registered");
        Metrics::inc(&self.state.metrics.registrations);
        self.shared.registered.store(true, Ordering::Release);
        self.peer = Some(Arc::clone(&entry));
        if entry.link_relay {
            self.relay_deadline = Some(Instant::now() + self.state.config.link_relay_ttl);
        }
        match self.state.node.clone() {
            Some(node) => {
                if entry.verified {
                    self.expire_mail(&node, &id, &device).await;
                    // The drain starts with what earlier connections of this device were handed
                    // and did not acknowledge, on any node.
                    self.take_over = Some(None);
                }
                // Presence is per id: only its first online device anywhere makes it appear.
                // Every node (this one too) tells its subscribers. A link relay never appears.
                if first_anywhere && !entry.link_relay {
                    node.announce(&id, true).await;
                }
            }
            // Presence is per id: only its first online device makes it appear.
            None if claimed.first && !entry.link_relay => {
                let presence = encode(&Frame::new(ServerFrame::PeerConnected(PeerPresence {
                    peer_id: id.clone(),
                })));
                self.state.hub.broadcast_presence(&presence.into(), &id);
            }
            None => {}
        }
        self.set_draining();
        Ok(Some(ServerFrame::Registered(Registered {
            success: true,
            client_id: id,
            verified: entry.verified,
            device_id: is_device.then_some(device),
        })))
    }
}
