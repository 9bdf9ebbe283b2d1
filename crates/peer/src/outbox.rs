//! The outbox: sealing outgoing messages and remembering them until the server's verdict.
//!
//! [`Outbox::send`] looks the recipient's key up through [`Trust`] (refusing while a key change
//! waits for the user), seals the text ([`seal`]: `lattice-v1`, signed, to a Lattice peer;
//! `ml-kem-aes` to an original client), queues the frame on the [`Link`] and keeps the message as
//! *outstanding* until the router reports its `message_ack` or `error` ([`Outbox::take`]). The
//! table is bounded ([`defaults::OUTSTANDING_MESSAGES`]): past it the oldest is given up (its
//! verdict, if it ever comes, is then reported as an error not tied to a message).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use lattice_crypto::{
    content_signature_payload, lattice_v1, ml_kem_aes, ContentStatement, Identity,
};
use lattice_protocol::{
    ClientFrame, ClientId, Envelope, Frame, InnerMessage, MessageId, RequestId, SendMessage,
};

use crate::content::{Content, CONTENT_VERSION};
use crate::events::Algorithm;
use crate::history::History;
use crate::keys::PeerKey;
use crate::link::{Lane, Link};
use crate::requests::Requests;
use crate::sanitize::Sanitized;
use crate::sync::lock;
use crate::trust::Trust;
use crate::wire::{now_ms, B64};
use crate::{defaults, PeerError};

/// What [`crate::MessagingPeer::send_message`] sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentMessage {
    /// The message id; the matching [`crate::PeerEvent::MessageAck`] or
    /// [`crate::PeerEvent::MessageFailed`] carries it.
    pub message_id: MessageId,
    /// `LatticeV1` to a Lattice peer, `MlKemAes` (unauthenticated) to an original client.
    pub algorithm: Algorithm,
}

/// Who seals: our id and identity (`None` on a linked device, which speaks MLS only).
#[derive(Debug, Clone)]
pub(crate) struct Sender {
    pub(crate) client_id: ClientId,
    pub(crate) identity: Option<Arc<Identity>>,
}

/// A message we sent and whose fate (ack or error) is not known yet.
#[derive(Debug, Default)]
struct Outstanding {
    order: VecDeque<RequestId>,
    map: HashMap<RequestId, (MessageId, ClientId)>,
}

/// The sending side of messages. Shared (`Arc`) by the handle and the router.
#[derive(Debug)]
pub(crate) struct Outbox {
    sender: Sender,
    trust: Arc<Trust>,
    requests: Arc<Requests>,
    link: Arc<Link>,
    history: Arc<History>,
    /// std Mutex: an insert or a removal, never held across an await.
    outstanding: Mutex<Outstanding>,
}

impl Outbox {
    pub(crate) fn new(
        sender: Sender,
        trust: Arc<Trust>,
        requests: Arc<Requests>,
        link: Arc<Link>,
        history: Arc<History>,
    ) -> Self {
        Self {
            sender,
            trust,
            requests,
            link,
            history,
            outstanding: Mutex::new(Outstanding::default()),
        }
    }

    /// The message sent with request id `rid`, if it is still outstanding; forgotten now.
    pub(crate) fn take(&self, rid: &RequestId) -> Option<(MessageId, ClientId)> {
        let mut o = lock(&self.outstanding);
        let v = o.map.remove(rid)?;
        o.order.retain(|r| r != rid);
        Some(v)
    }

    fn add(&self, rid: RequestId, message_id: MessageId, target: ClientId) {
        let mut o = lock(&self.outstanding);
        if o.order.len() >= defaults::OUTSTANDING_MESSAGES {
            if let Some(old) = o.order.pop_front() {
                o.map.remove(&old);
            }
        }
        o.order.push_back(rid.clone());
        o.map.insert(rid, (message_id, target));
    }

    pub(crate) async fn send(
        &self,
        target: &ClientId,
        content: &Content,
        message_id: MessageId,
    ) -> Result<SentMessage, PeerError> {
        content.validate()?;
        if self.sender.identity.is_none() {
            return Err(PeerError::MlsOnlyDevice {
                peer: target.clone(),
            });
        }
        if let Some(new) = self.trust.pending_key_change(target) {
            let old = self.trust.key_store().pinned(target)?;
            return Err(PeerError::KeyChanged {
                peer: target.clone(),
                old: old.map_or_else(|| new.fingerprint(), |o| o.fingerprint()),
                new: new.fingerprint(),
            });
        }
        let key = match self.trust.cached_key(target) {
            Some(k) => k,
            None => self.trust.fetch_key(target).await?,
        };
        let sent_at = now_ms();
        let (envelope, algorithm) = seal_at(&self.sender, &key, &message_id, content, sent_at)?;
        let message = serde_json::value::to_raw_value(&envelope)
            .map_err(|e| PeerError::Protocol(e.to_string()))?;
        let frame = ClientFrame::Message(SendMessage {
            target_id: target.clone(),
            message,
            message_id: Some(message_id.clone()),
        });
        // The message id doubles as the request id, so an `error` names the message it refuses.
        let rid = RequestId::new(message_id.as_str())
            .map_err(|e| PeerError::InvalidArgument(e.to_string()))?;
        self.add(rid.clone(), message_id.clone(), target.clone());
        self.requests.record_issued(rid.clone());
        if let Err(e) = self.link.send_frame(
            Lane::Normal,
            Frame::with_request_id(frame, Some(rid.clone())),
        ) {
            self.take(&rid);
            return Err(e);
        }
        tracing::debug!(peer = %self.sender.client_id, to = %target, message_id = %message_id, algorithm = algorithm.as_str(), kind = content.kind(), "message queued");
        self.history.sent(target, &message_id, content, sent_at);
        // The user talked to this peer: a bounded key store never evicts its pin now. The
        // message is queued either way; a store that cannot record it is logged.
        if key.identity.is_some() {
            if let Err(e) = self.trust.key_store().mark_contact(target) {
                tracing::warn!(peer = %self.sender.client_id, to = %target, error = %Sanitized(&e), "cannot mark a contact in the key store");
            }
        }
        Ok(SentMessage {
            message_id,
            algorithm,
        })
    }
}

/// Seals `content` for `key` with the signed send time `sent_at` (unix ms): a version 2
/// `lattice-v1` inner message, signed over the whole content, if the peer has an identity key;
/// `ml-kem-aes` with the plain text of the content otherwise
/// ([`PeerError::PlainTextOnly`] for kinds an original client does not get).
pub(crate) fn seal_at(
    sender: &Sender,
    key: &PeerKey,
    message_id: &MessageId,
    content: &Content,
    sent_at: u64,
) -> Result<(Envelope, Algorithm), PeerError> {
    let mut rng = rand_core::OsRng;
    let Some(identity) = &sender.identity else {
        return Err(PeerError::MlsOnlyDevice {
            peer: key.peer_id.clone(),
        });
    };
    if key.identity.is_none() {
        let text = content
            .plain_text()
            .ok_or_else(|| PeerError::PlainTextOnly {
                peer: key.peer_id.clone(),
                kind: content.kind().to_owned(),
            })?;
        let text = zeroize::Zeroizing::new(text);
        let sealed = ml_kem_aes::seal(&mut rng, &key.kem, text.as_bytes())?;
        return Ok((
            Envelope::from_bytes(
                ml_kem_aes::ALGORITHM,
                &sealed.cipher_text,
                &sealed.encrypted_data,
            ),
            Algorithm::MlKemAes,
        ));
    }
    let me = sender.client_id.as_str();
    let them = key.peer_id.as_str();
    let (kind, body) = content.encode()?;
    let body = zeroize::Zeroizing::new(body);
    let payload = content_signature_payload(&ContentStatement {
        sender_id: me,
        recipient_id: them,
        message_id: message_id.as_str(),
        sent_at_ms: sent_at,
        version: CONTENT_VERSION,
        kind,
        body: body.as_bytes(),
    })?;
    let sig = identity.identity_key().sign(&payload);
    let inner = InnerMessage {
        v: CONTENT_VERSION,
        kind: kind.to_owned(),
        message_id: message_id.clone(),
        body: body.to_string(),
        sent_at,
        sig: B64.encode(sig),
    };
    seal_inner(sender, key, &inner)
}

/// Seals an inner message (any version) with `lattice-v1`.
pub(crate) fn seal_inner(
    sender: &Sender,
    key: &PeerKey,
    inner: &InnerMessage,
) -> Result<(Envelope, Algorithm), PeerError> {
    let plaintext = zeroize::Zeroizing::new(
        serde_json::to_vec(inner).map_err(|e| PeerError::Protocol(e.to_string()))?,
    );
    let ctx = lattice_v1::Context {
        sender_id: sender.client_id.as_str(),
        recipient_id: key.peer_id.as_str(),
        message_id: inner.message_id.as_str(),
    };
    let sealed = lattice_v1::seal(&mut rand_core::OsRng, &key.kem, &ctx, &plaintext)?;
    Ok((
        Envelope::from_bytes(
            lattice_v1::ALGORITHM,
            &sealed.cipher_text,
            &sealed.encrypted_data,
        ),
        Algorithm::LatticeV1,
    ))
}

#[cfg(test)]
mod tests {
    use lattice_protocol::{AckStatus, ErrorType, MessageAck, ServerFrame};

    use super::*;
    use crate::events::PeerEvent;
    use crate::testkit::{id, identity, key_response, Kit};
    use crate::wire::new_message_id;
    use crate::KeyStore as _;

    fn text(t: &str) -> Content {
        Content::Text(t.into())
    }

    #[tokio::test(start_paused = true)]
    async fn a_sent_message_is_outstanding_until_its_ack_or_error() {
        let mut kit = Kit::new("alice");
        let bob = id("bob");
        kit.trust
            .check_key(key_response(&bob, &identity(), true))
            .unwrap();
        let sent = kit
            .outbox
            .send(&bob, &text("hi"), new_message_id())
            .await
            .unwrap();
        assert_eq!(sent.algorithm, Algorithm::LatticeV1);
        let frame = kit.try_sent().unwrap();
        let rid = frame.request_id.clone().unwrap();
        assert_eq!(
            rid.as_str(),
            sent.message_id.as_str(),
            "the message id names the request"
        );
        assert!(matches!(frame.body, ClientFrame::Message(ref m) if m.target_id == bob));
        assert!(kit.requests.was_issued(&rid));
        kit.serve(
            ServerFrame::MessageAck(MessageAck {
                message_id: sent.message_id.clone(),
                target_id: bob.clone(),
                status: AckStatus::Delivered,
            }),
            None,
        );
        assert!(kit.outbox.take(&rid).is_none(), "the ack settled it");

        let failed = kit
            .outbox
            .send(&bob, &text("again"), new_message_id())
            .await
            .unwrap();
        let rid = kit.try_sent().unwrap().request_id.unwrap();
        let err = ServerFrame::error(
            ErrorType::PeerNotFound,
            "gone",
            std::time::SystemTime::now(),
            Some(rid.clone()),
        );
        kit.serve(err, Some(rid));
        let events = kit.take_events();
        assert!(events
            .iter()
            .any(|e| matches!(e, PeerEvent::MessageAck(a) if a.message_id == sent.message_id)));
        assert!(events.iter().any(|e| matches!(e, PeerEvent::MessageFailed { message_id, target, .. } if *message_id == failed.message_id && *target == bob)));
    }

    #[tokio::test(start_paused = true)]
    async fn the_outstanding_table_gives_up_the_oldest_past_its_bound() {
        let kit = Kit::new("alice");
        let rid = |n: usize| RequestId::new(format!("m{n}")).unwrap();
        for n in 0..=defaults::OUTSTANDING_MESSAGES {
            kit.outbox
                .add(rid(n), MessageId::new(format!("m{n}")).unwrap(), id("bob"));
        }
        assert!(
            kit.outbox.take(&rid(0)).is_none(),
            "the oldest was given up"
        );
        assert!(kit.outbox.take(&rid(1)).is_some());
        assert!(kit
            .outbox
            .take(&rid(defaults::OUTSTANDING_MESSAGES))
            .is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_is_sent_while_a_key_change_waits_or_the_queue_is_full() {
        let mut kit = Kit::new("alice");
        let bob = id("bob");
        let (old, new) = (identity(), identity());
        kit.store.pin(&bob, &old.identity_public_key()).unwrap();
        let _ = kit
            .trust
            .key_changed(&bob, old.identity_public_key(), new.identity_public_key());
        assert!(matches!(
            kit.outbox.send(&bob, &text("hi"), new_message_id()).await,
            Err(PeerError::KeyChanged { .. })
        ));
        assert!(kit.try_sent().is_none());

        // An original client (no identity key): ml-kem-aes, until the lane is full.
        let carol = id("carol");
        kit.trust
            .check_key(key_response(&carol, &identity(), false))
            .unwrap();
        let mut last = Ok(());
        for _ in 0..=64 {
            match kit.outbox.send(&carol, &text("hi"), new_message_id()).await {
                Ok(sent) => assert_eq!(sent.algorithm, Algorithm::MlKemAes),
                Err(e) => {
                    last = Err(e);
                    break;
                }
            }
        }
        assert!(matches!(last, Err(PeerError::QueueFull { capacity: 64 })));
        assert_eq!(
            lock(&kit.outbox.outstanding).map.len(),
            64,
            "the refused one is not outstanding"
        );
    }
}
