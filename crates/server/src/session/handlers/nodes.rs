//! The handlers' paths on a server that is one node of several (`--redis`, [`crate::node`]):
//! where a single node asks its in-process hub and its SQLite store, these ask Redis.
//!
//! - `message`: a verified recipient, online on any node or offline, gets the message through
//!   its mailbox stream: stored (within the same quotas, deduplicated by (sender, `messageId`)
//!   across nodes) *before* the sender hears `queued`, then its node is told to drain. An
//!   unverified (original) recipient has no mailbox: its frame goes to its node's channel, at
//!   most once, as a full queue drops it on one node.
//! - the drain: first everything an earlier connection of the peer was handed and did not
//!   acknowledge (its node may have died), then what nobody was handed; `ack` removes.
//! - `discover`, `request_public_key`: the ids and keys of every node.

use lattice_protocol::{AckStatus, ClientId, MessageId, RequestId};
use tracing::{debug, warn};

use super::relay::{refusal, server_message_id};
use super::Core;
use crate::cluster::mailbox::RedisEnqueueError;
use crate::cluster::presence::PeerKeys;
use crate::hub::{Out, PeerEntry};
use crate::limits::MAILBOX_BATCH;
use crate::metrics::Metrics;
use crate::node::{Node, NodeMsg};
use crate::session::error::HandlerError;
use crate::state::unix_ms;
use crate::store::{Accepted, EnqueueError, MailItem};

/// Where a message's recipient is.
enum Whereabouts {
    /// On this node.
    Here(std::sync::Arc<PeerEntry>),
    /// On another node, with the keys it registered (verified if it has an identity key).
    There(crate::cluster::presence::Holder, PeerKeys),
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
        let whereabouts = match self.state.hub.get(&target) {
            Some(e) => Whereabouts::Here(e),
            None => match node.presence.keys(&target).await {
                Ok(Some((holder, keys))) => Whereabouts::There(holder, keys),
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
        let quota = self.state.config.mailbox_quota();
        match node.mailbox.enqueue(&target, &item, &quota).await {
            Ok((accepted, _)) => {
                if accepted == Accepted::Duplicate {
                    debug!(%target, message_id = %item.message_id, "resend of a stored message");
                }
                Metrics::inc(&self.state.metrics.messages_queued);
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
        }
        // Stored: the sender may hear `queued` whatever happens to the notice.
        match whereabouts {
            Whereabouts::Here(e) => e.session.notify_mail(),
            Whereabouts::There(holder, _) => {
                let msg = NodeMsg::Mail { to: target.clone() };
                if let Err(e) = node.publish(&holder.node, &msg).await {
                    warn!(error = %e, %target, "mail notice not published");
                }
            }
            Whereabouts::Offline => {}
        }
        self.ack(&target, sender_mid.as_ref(), rid, AckStatus::Queued);
        Ok(())
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
            Whereabouts::There(holder, _) => {
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

    /// `ack` on a node of several: removes the message from the recipient's stream. An ack
    /// without `fromId` cannot name the message there (ids are the senders' choice): the message
    /// stays and comes again on the next connection (at least once).
    pub(super) async fn on_ack_cluster(
        &mut self,
        node: &Node,
        peer: &PeerEntry,
        from: Option<ClientId>,
        message_id: MessageId,
    ) {
        let Some(from) = from else {
            debug!(%message_id, "ack without fromId on a node of several: kept");
            return;
        };
        match node.mailbox.remove(&peer.id, &from, &message_id).await {
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
                    .take_over(&peer.id, &consumer, start.as_deref(), MAILBOX_BATCH)
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
                .claim(&peer.id, &consumer, MAILBOX_BATCH)
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
                for (_, item) in items {
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
}
