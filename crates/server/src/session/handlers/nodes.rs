//! The handlers' paths on a server that is one node of several (`--redis`, [`crate::node`]):
//! where a single node asks its in-process hub and its SQLite store, these ask Redis.
//!
//! - `message`: a verified recipient, online on any node or offline, gets the message through
//!   its mailbox stream: stored (within the same quotas, deduplicated by (sender, `messageId`)
//!   across nodes) *before* the sender hears `queued`, then its node is told to drain; a
//!   recipient with linked devices gets it in every device's stream (all or nothing), and every
//!   node holding one of its devices is told. An unverified (original) recipient has no mailbox:
//!   its frame goes to its node's channel, at most once, as a full queue drops it on one node.
//! - the drain, per device: first everything an earlier connection of the device was handed and
//!   did not acknowledge (its node may have died), then what nobody was handed; `ack` removes
//!   the device's own copy.
//! - `discover`, `request_public_key`: the ids and keys of every node.

use std::collections::{HashMap, VecDeque};

use lattice_protocol::{
    AckStatus, ClientId, DeviceId, MessageId, PeerResponse, RequestId, ServerFrame,
};
use tracing::{debug, warn};

use super::relay::{refusal, server_message_id};
use super::Core;
use crate::cluster::mailbox::{RedisEnqueueAllError, RedisEnqueueError};
use crate::cluster::presence::{Holder, PeerKeys};
use crate::hub::{Out, PeerEntry};
use crate::inflight::{Answer, AwaitKey};
use crate::limits::{IN_FLIGHT_PER_CONNECTION, MAILBOX_BATCH};
use crate::metrics::Metrics;
use crate::node::{Node, NodeMsg};
use crate::questions::{normalise, Answer as QuestionAnswer};
use crate::session::error::HandlerError;
use crate::state::unix_ms;
use crate::store::{Accepted, EnqueueError, MailItem};

/// Where a message's recipient is.
enum Whereabouts {
    /// On this node.
    Here(std::sync::Arc<PeerEntry>),
    /// On other nodes: every online device with its holder (the primary first if online), and
    /// the keys the id registered with (verified if it has an identity key).
    There(Vec<(DeviceId, Holder)>, PeerKeys),
    /// Nowhere.
    Offline,
}

impl Core {
    /// `message` on a node of several.
    pub(super) async fn on_message_cluster(
        &mut self,
        node: &Node,
        peer: &PeerEntry,
        target: ClientId,
        envelope: &str,
        sender_mid: Option<MessageId>,
        rid: Option<&RequestId>,
    ) -> Result<(), HandlerError> {
        if !envelope.starts_with('{') {
            return Err(HandlerError::NotAnEnvelope);
        }
        let timestamp = unix_ms();
        // The primary device: an id without linked devices has only that one (and a linked
        // device still closing here must not take its notice).
        let whereabouts = match self.state.hub.device(&target, &DeviceId::primary()) {
            Some(e) => Whereabouts::Here(e),
            None => match node.presence.live(&target).await {
                Ok(Some((holders, keys))) => Whereabouts::There(holders, keys),
                Ok(None) => Whereabouts::Offline,
                Err(e) => {
                    warn!(error = %e, %target, "presence lookup failed");
                    return Err(HandlerError::ClusterUnavailable);
                }
            },
        };
        let verified = match &whereabouts {
            Whereabouts::Here(e) => e.verified,
            Whereabouts::There(_, keys) => keys.identity_key.is_some(),
            Whereabouts::Offline => match node.directory.get(&target).await {
                Ok(Some(_)) => true,
                Ok(None) => return Err(HandlerError::PeerNotFound(target)),
                Err(e) => {
                    warn!(error = %e, %target, "directory lookup failed");
                    return Err(HandlerError::ClusterUnavailable);
                }
            },
        };
        if !verified {
            let frame = lattice_protocol::fast::encode_delivered(
                envelope,
                &peer.id,
                timestamp,
                sender_mid.as_ref(),
            );
            self.relay_unverified(node, whereabouts, &target, frame)
                .await?;
            Metrics::inc(&self.state.metrics.messages_delivered);
            self.ack(&target, sender_mid.as_ref(), rid, AckStatus::Delivered);
            return Ok(());
        }
        let mid = sender_mid.clone().unwrap_or_else(server_message_id);
        let frame =
            lattice_protocol::fast::encode_delivered(envelope, &peer.id, timestamp, Some(&mid));
        let item = MailItem {
            message_id: mid,
            sender: peer.id.clone(),
            frame,
        };
        let devices = node.devices.devices_of(&target).await.map_err(|e| {
            warn!(error = %e, %target, "device list read failed");
            HandlerError::ClusterUnavailable
        })?;
        if devices.len() > 1 {
            return self
                .relay_to_devices_cluster(node, whereabouts, &target, &devices, &item)
                .await
                .map(|()| self.ack(&target, sender_mid.as_ref(), rid, AckStatus::Queued));
        }
        let quota = self.state.config.mailbox_quota();
        let accepted = match node.mailbox.enqueue(&target, &item, &quota).await {
            Ok((accepted, _)) => {
                if accepted == Accepted::Duplicate {
                    debug!(%target, message_id = %item.message_id, "resend of a stored message");
                }
                Metrics::inc(&self.state.metrics.messages_queued);
                accepted
            }
            Err(RedisEnqueueError::Full(limit)) => {
                return Err(refusal(
                    &self.state,
                    &target,
                    EnqueueError::Full {
                        recipient: target.clone(),
                        limit,
                    },
                ))
            }
            Err(RedisEnqueueError::Redis(e)) => {
                warn!(error = %e, %target, "mailbox write failed");
                return Err(HandlerError::ClusterUnavailable);
            }
        };
        // Stored: the sender may hear `queued` whatever happens to the notice. For an online
        // recipient it hears `delivered` instead if the recipient acknowledges within the ack
        // wait (listed before the recipient is told, so its ack finds the entry).
        let owed = match (&whereabouts, sender_mid.as_ref()) {
            (Whereabouts::Here(_) | Whereabouts::There(..), Some(smid))
                if accepted == Accepted::Stored =>
            {
                self.owe_answer(node, peer, &target, smid, rid)
            }
            _ => None,
        };
        let told = match whereabouts {
            Whereabouts::Here(e) => {
                e.session.notify_mail();
                true
            }
            Whereabouts::There(holders, _) => node.mail_to_nodes(&target, &holders).await,
            Whereabouts::Offline => false,
        };
        let answer_now = match owed {
            None => true,
            Some(_) if told => false,
            // Its node is gone (its presence not expired yet): no ack will come soon, so the
            // sender hears `queued` now, unless the answer was given meanwhile.
            Some(key) => match node.awaiting.take(&key) {
                Some(unsent) => {
                    drop(unsent);
                    self.shared.answers.release();
                    true
                }
                None => false,
            },
        };
        if answer_now {
            self.ack(&target, sender_mid.as_ref(), rid, AckStatus::Queued);
        }
        Ok(())
    }

    /// A message for a verified id with linked devices (docs/protocol.md, "Devices"): stored in
    /// the mailbox stream of every device of the id in one script (all or nothing), then each
    /// online device's node is told to drain (one notice per node); the sender hears `queued`
    /// (end-to-end `delivered` comes from the receipt inside the MLS conversation, as on one
    /// node).
    async fn relay_to_devices_cluster(
        &mut self,
        node: &Node,
        whereabouts: Whereabouts,
        target: &ClientId,
        devices: &[DeviceId],
        item: &MailItem,
    ) -> Result<(), HandlerError> {
        let quota = self.state.config.mailbox_quota();
        match node
            .mailbox
            .enqueue_all(target, devices, item, &quota)
            .await
        {
            Ok(accepted) => {
                if accepted == Accepted::Duplicate {
                    debug!(%target, message_id = %item.message_id, "resend of a stored message");
                }
            }
            Err(RedisEnqueueAllError::Full { device, limit }) => {
                debug!(%target, %device, "a device's mailbox is full: refused for every device");
                return Err(refusal(
                    &self.state,
                    target,
                    EnqueueError::Full {
                        recipient: target.clone(),
                        limit,
                    },
                ));
            }
            Err(e) => {
                warn!(error = %e, %target, "mailbox write failed");
                return Err(HandlerError::ClusterUnavailable);
            }
        }
        Metrics::inc(&self.state.metrics.messages_queued);
        // Stored: from here on the sender hears `queued` whatever happens to the notices.
        for local in self.state.hub.devices(target) {
            local.session.notify_mail();
        }
        let holders = match whereabouts {
            Whereabouts::There(holders, _) => Some(holders),
            // Some devices here; others may be on other nodes.
            Whereabouts::Here(_) => match node.presence.live(target).await {
                Ok(found) => found.map(|(h, _)| h),
                Err(e) => {
                    warn!(error = %e, %target, "presence lookup failed: devices drain when they return");
                    None
                }
            },
            Whereabouts::Offline => None,
        };
        if let Some(holders) = holders {
            node.mail_to_nodes(target, &holders).await;
        }
        debug!(%target, devices = devices.len(), "queued for every device");
        Ok(())
    }

    /// Lists the answer to `peer`'s stored message `mid` for `target` as owed until `target`'s
    /// ack or the ack wait's end ([`crate::inflight::Awaiting`]), under the returned key; `None`
    /// when it is to be answered `queued` now (`--ack-wait 0`, this connection is owed its cap of
    /// answers, the node its cap, or the same message waits already).
    fn owe_answer(
        &mut self,
        node: &Node,
        peer: &PeerEntry,
        target: &ClientId,
        mid: &MessageId,
        rid: Option<&RequestId>,
    ) -> Option<AwaitKey> {
        let wait = self.state.config.ack_wait;
        if wait.is_zero() || !self.shared.answers.reserve(IN_FLIGHT_PER_CONNECTION) {
            return None;
        }
        let answer = Answer {
            to: std::sync::Arc::clone(&self.shared.answers),
            target: target.clone(),
            message_id: mid.clone(),
            rid: rid.cloned(),
        };
        let key = (peer.id.clone(), target.clone(), mid.clone());
        match node
            .awaiting
            .wait(key.clone(), answer, tokio::time::Instant::now() + wait)
        {
            Ok(()) => Some(key),
            Err(_) => {
                self.shared.answers.release();
                None
            }
        }
    }

    /// An unverified recipient's frame to its connection, here or on its node.
    async fn relay_unverified(
        &self,
        node: &Node,
        whereabouts: Whereabouts,
        target: &ClientId,
        frame: String,
    ) -> Result<(), HandlerError> {
        match whereabouts {
            Whereabouts::Here(e) => {
                match e.session.tx.try_send(Out::Deliver(Box::new(frame.into()))) {
                    Ok(()) => Ok(()),
                    Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                        Err(HandlerError::RecipientBusy(target.clone()))
                    }
                    Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => {
                        Err(HandlerError::PeerNotFound(target.clone()))
                    }
                }
            }
            Whereabouts::There(holders, _) => {
                let Some((_, holder)) = holders.into_iter().next() else {
                    return Err(HandlerError::PeerNotFound(target.clone()));
                };
                let msg = NodeMsg::Route {
                    to: target.clone(),
                    conn: holder.conn,
                    frame,
                };
                match node.publish(&holder.node, &msg).await {
                    Ok(true) => Ok(()),
                    // Its node is gone: so is the peer (its presence expires).
                    Ok(false) => Err(HandlerError::PeerNotFound(target.clone())),
                    Err(e) => {
                        warn!(error = %e, %target, "routing to another node failed");
                        Err(HandlerError::ClusterUnavailable)
                    }
                }
            }
            Whereabouts::Offline => Err(HandlerError::PeerNotFound(target.clone())),
        }
    }

    /// `ack` on a node of several: removes the message from the recipient's stream and tells its
    /// sender's node ([`Node::acked`]). Without `fromId` the message is named by what this
    /// connection's drain handed it ([`Handed`]), as on one node: an id that one sender used;
    /// an id of several senders' messages, or one handed too long ago, removes nothing (the
    /// message comes again on the next connection: at least once).
    pub(super) async fn on_ack_cluster(
        &mut self,
        node: &Node,
        peer: &PeerEntry,
        from: Option<ClientId>,
        message_id: MessageId,
    ) {
        let handed = self
            .handed
            .as_mut()
            .map(|h| h.acked(from.as_ref(), &message_id));
        let Some(from) = from.or(handed.flatten()) else {
            debug!(%message_id, "ack without fromId names no single handed message: kept");
            return;
        };
        match node
            .mailbox
            .remove_device(&peer.id, &peer.device, &from, &message_id)
            .await
        {
            // Each device acknowledges its own copy. Only a message to an id without linked
            // devices (its primary's) may have a sender waiting for `delivered`.
            Ok(true) if peer.device.is_primary() => {
                node.acked(&from, &peer.id, &message_id).await;
            }
            Ok(true) => {}
            Ok(false) => debug!(%message_id, "ack of a message not in the mailbox"),
            Err(e) => warn!(error = %e, %message_id, "mailbox removal failed: it comes again"),
        }
    }

    /// The next batch of the drain on a node of several: first what earlier connections of the
    /// peer were handed and did not acknowledge, then what nobody was handed.
    pub(super) async fn drain_cluster(&mut self, node: &Node, peer: &PeerEntry) {
        let consumer = node.consumer(self.shared.conn_id);
        let items = match self.take_over.take() {
            Some(start) => {
                match node
                    .mailbox
                    .take_over_device(
                        &peer.id,
                        &peer.device,
                        &consumer,
                        start.as_deref(),
                        MAILBOX_BATCH,
                    )
                    .await
                {
                    Ok((items, next)) => {
                        // More to take over, or on to what nobody was handed.
                        self.take_over = next.map(Some);
                        Ok(items)
                    }
                    Err(e) => Err(e),
                }
            }
            None => node
                .mailbox
                .claim_device(&peer.id, &peer.device, &consumer, MAILBOX_BATCH)
                .await
                .inspect(|items| {
                    if items.len() < MAILBOX_BATCH {
                        self.draining = false;
                    }
                }),
        };
        match items {
            Ok(items) => {
                debug!(count = items.len(), "mailbox batch");
                let handed = self.handed.get_or_insert_with(Box::default);
                for (_, item) in items {
                    handed.hand(&item.sender, &item.message_id);
                    self.replies
                        .push(axum::extract::ws::Message::Text(item.frame.into()));
                }
            }
            Err(e) => {
                warn!(error = %e, "mailbox read failed");
                self.draining = false;
            }
        }
    }

    /// `peer_response` to an admin question on a node of several: the record is in Redis,
    /// registered by the asking node, whichever node the peer was on then. An answer that does
    /// not fit is refused and the question stays open; a fitting one takes the record (of nodes
    /// racing, one) and goes to the asking node's waiting caller.
    pub(super) async fn on_peer_response_cluster(
        &mut self,
        node: &Node,
        peer: &PeerEntry,
        r: &PeerResponse,
    ) -> Result<Option<ServerFrame>, HandlerError> {
        let unknown = || HandlerError::UnknownQuestion(r.question_id.clone());
        let unavailable = |e: crate::cluster::ClusterError| {
            warn!(error = %e, question = %r.question_id, "question record not read");
            HandlerError::ClusterUnavailable
        };
        let record = node
            .questions
            .get(&peer.id, &r.question_id)
            .await
            .map_err(unavailable)?
            .ok_or_else(unknown)?;
        let response =
            normalise(&record.question, &r.response).map_err(HandlerError::InvalidAnswer)?;
        let taken = node
            .questions
            .take(&peer.id, &r.question_id)
            .await
            .map_err(unavailable)?
            .ok_or_else(unknown)?;
        let answer = QuestionAnswer {
            question_id: r.question_id.clone(),
            conversation_id: taken.conversation.clone(),
            round: taken.round,
            response,
        };
        let body = serde_json::to_value(&answer).map_err(|_| HandlerError::ClusterUnavailable)?;
        node.answered(&taken.asking_node(), r.question_id.clone(), body)
            .await;
        Ok(None)
    }
}

/// The senders of the messages a connection's drain handed it and it has not acknowledged, by
/// message id (ids are the senders' choice, so one id may name several senders' messages): the
/// Redis mailbox names an entry by (sender, id), and an `ack` without `fromId` gives only the id.
/// Bounded by [`IN_FLIGHT_PER_CONNECTION`] ids, oldest forgotten first (an ack for a forgotten
/// one removes nothing: the message comes again, at least once).
#[derive(Debug, Default)]
pub(crate) struct Handed {
    /// The one sender of an id, or `None` when several senders' messages have it.
    senders: HashMap<MessageId, Option<ClientId>>,
    /// Ids in the order they were handed (a re-handed id is listed again; stale ones are skipped).
    order: VecDeque<MessageId>,
}

impl Handed {
    /// Notes that `sender`'s message `mid` was handed.
    fn hand(&mut self, sender: &ClientId, mid: &MessageId) {
        match self.senders.get_mut(mid) {
            Some(known) => {
                if known.as_ref() != Some(sender) {
                    *known = None;
                }
            }
            None => {
                self.senders.insert(mid.clone(), Some(sender.clone()));
                self.order.push_back(mid.clone());
            }
        }
        while self.senders.len() > IN_FLIGHT_PER_CONNECTION {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            self.senders.remove(&oldest);
        }
        if self.order.len() > 2 * self.senders.len() + 64 {
            let senders = &self.senders;
            self.order.retain(|m| senders.contains_key(m));
        }
    }

    /// An ack of `mid` (from `from` if the ack named it): the one sender of `mid` when the ack
    /// did not name one and only one sender's message has that id. The id is forgotten unless
    /// it stays ambiguous.
    fn acked(&mut self, from: Option<&ClientId>, mid: &MessageId) -> Option<ClientId> {
        // unknown, or several senders' (those stay until forgotten)
        let one = self.senders.get(mid)?.as_ref()?;
        if from.is_some_and(|f| f != one) {
            return None;
        }
        self.senders.remove(mid).flatten()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn id(s: &str) -> ClientId {
        ClientId::new(s).unwrap()
    }

    fn mid(s: &str) -> MessageId {
        MessageId::new(s).unwrap()
    }

    /// An ack without `fromId` names the one sender of a handed id; an id two senders used names
    /// nobody; an acked id is forgotten; the table keeps at most its bound, oldest out first.
    #[test]
    fn handed_ids_name_their_one_sender_within_the_bound() {
        let mut h = Handed::default();
        h.hand(&id("alice"), &mid("1"));
        h.hand(&id("alice"), &mid("2"));
        h.hand(&id("carol"), &mid("2"));
        assert_eq!(h.acked(None, &mid("1")), Some(id("alice")));
        assert_eq!(h.acked(None, &mid("1")), None, "forgotten once acked");
        assert_eq!(h.acked(None, &mid("2")), None, "ambiguous");
        assert_eq!(h.acked(Some(&id("alice")), &mid("2")), None);
        assert_eq!(h.acked(None, &mid("9")), None, "never handed");

        let mut h = Handed::default();
        for i in 0..=IN_FLIGHT_PER_CONNECTION {
            h.hand(&id("alice"), &mid(&i.to_string()));
        }
        assert_eq!(h.acked(None, &mid("0")), None, "the oldest was forgotten");
        assert_eq!(h.acked(None, &mid("1")), Some(id("alice")));
        assert!(h.order.len() <= 2 * h.senders.len() + 65);
    }
}
