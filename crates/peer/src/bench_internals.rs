//! Hooks for the criterion bench only (feature `bench`): not a public API.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use lattice_crypto::Identity;
use lattice_protocol::{ClientId, Delivered};

use crate::content::Content;
use crate::events::Dispatcher;
use crate::history::{History, NoHistory};
use crate::inbox::Inbox;
use crate::keys::PeerKey;
use crate::link::Link;
use crate::outbox::{seal_at, Sender};
use crate::requests::Requests;
use crate::trust::Trust;
use crate::wire::{new_message_id, now_ms};
use crate::{defaults, KeyStore as _, MemoryKeyStore, MemoryReplayStore};

/// Alice's outbox seals to bob; bob's inbox opens and checks (alice's key pinned: no network).
#[derive(Debug)]
pub struct SealOpen {
    alice: Sender,
    bob_key: PeerKey,
    bob: Inbox,
}

impl Default for SealOpen {
    fn default() -> Self {
        Self::new()
    }
}

impl SealOpen {
    pub fn new() -> Self {
        let alice_identity = Arc::new(Identity::generate(&mut rand_core::OsRng));
        let bob_identity = Arc::new(Identity::generate(&mut rand_core::OsRng));
        let alice_id = ClientId::new("alice").unwrap();
        let bob_id = ClientId::new("bob").unwrap();
        let store = Arc::new(MemoryKeyStore::default());
        store
            .pin(&alice_id, &alice_identity.identity_public_key())
            .unwrap();
        let bob_key = PeerKey {
            peer_id: bob_id.clone(),
            kem: bob_identity.kem_public_key().clone(),
            identity: Some(bob_identity.identity_public_key()),
        };
        let dispatcher = Dispatcher::new(defaults::EVENT_CAPACITY);
        let link = Arc::new(Link::new(bob_id.clone(), 1, Arc::clone(&dispatcher)));
        let requests = Arc::new(Requests::new(
            bob_id.clone(),
            defaults::REQUEST_TIMEOUT,
            Arc::clone(&link),
        ));
        let trust = Arc::new(Trust::new(
            bob_id.clone(),
            store,
            requests,
            Arc::clone(&dispatcher),
        ));
        let bob = Inbox::new(
            bob_id.clone(),
            Some(bob_identity),
            trust,
            link,
            dispatcher,
            Arc::new(MemoryReplayStore::default()),
            Arc::new(History::new(bob_id.clone(), Arc::new(NoHistory))),
        );
        Self {
            alice: Sender {
                client_id: alice_id,
                identity: Some(alice_identity),
            },
            bob_key,
            bob,
        }
    }

    /// Seals `text` as alice (inner version 2) and opens it as bob; returns the opened text.
    pub async fn seal_open(&self, text: &str) -> Result<String, String> {
        let id = new_message_id();
        let (envelope, _) = seal_at(
            &self.alice,
            &self.bob_key,
            &id,
            &Content::Text(text.to_owned()),
            now_ms(),
        )
        .map_err(|e| e.to_string())?;
        self.open(envelope, id).await
    }

    /// The reference for [`SealOpen::seal_open`]: the same text as an inner version 1 message
    /// (what Lattice peers sent before the content layer), sealed and opened the same way.
    pub async fn seal_open_v1(&self, text: &str) -> Result<String, String> {
        use base64::Engine as _;
        let id = new_message_id();
        let sent_at = now_ms();
        let payload = lattice_crypto::message_signature_payload(
            self.alice.client_id.as_str(),
            self.bob_key.peer_id.as_str(),
            id.as_str(),
            sent_at,
            text.as_bytes(),
        )
        .map_err(|e| e.to_string())?;
        let inner = lattice_protocol::InnerMessage {
            v: crate::wire::INNER_VERSION_1,
            kind: crate::content::KIND_TEXT.to_owned(),
            message_id: id.clone(),
            body: text.to_owned(),
            sent_at,
            sig: crate::wire::B64.encode(self.alice.identity.identity_key().sign(&payload)),
        };
        let (envelope, _) = crate::outbox::seal_inner(&self.alice, &self.bob_key, &inner)
            .map_err(|e| e.to_string())?;
        self.open(envelope, id).await
    }

    async fn open(
        &self,
        envelope: lattice_protocol::Envelope,
        id: lattice_protocol::MessageId,
    ) -> Result<String, String> {
        let d = Delivered {
            message: serde_json::value::to_raw_value(&envelope).map_err(|e| e.to_string())?,
            from_id: self.alice.client_id.clone(),
            timestamp: 0,
            message_id: Some(id),
        };
        self.bob
            .open_one(&d)
            .await
            .map(|m| m.into_message().map(|m| m.text).unwrap_or_default())
            .map_err(|e| e.to_string())
    }
}
