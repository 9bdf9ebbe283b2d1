//! `message` and `ack`: the relay and the delivery contract's server side (docs/protocol.md, "the
//! delivery contract"). A message for an online verified peer is held in [`Core::pending`] and
//! committed with the rest of its read batch, in one transaction with other sessions' batches
//! (the mailbox writer, [`crate::writer`]), before any reply of the batch is written, so no
//! `message_ack` ever precedes its message's commit.

use std::sync::Arc;

use axum::extract::ws::Message;
use lattice_protocol::{Ack, AckStatus, ClientId, MessageId, RequestId};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::Core;
use crate::hub::{Out, PeerEntry};
use crate::metrics::Metrics;
use crate::session::error::HandlerError;
use crate::state::unix_ms;
use crate::store::{
    Accepted, CommitRequest, CommitResults, EnqueueError, Limit, MailItem, StoreError,
};

/// A message for an online verified peer waiting for the batch's group commit.
pub(super) struct PendingLive {
    entry: Arc<PeerEntry>,
    target: ClientId,
    item: MailItem,
    sender_mid: Option<MessageId>,
    rid: Option<RequestId>,
}

impl Core {
    /// Relays one `message`. The answer (`message_ack` when the sender gave a `messageId`) is
    /// pushed now, or, for an online verified recipient, after the group commit; in that case the
    /// `requestId` is taken from `rid` and travels with the pending message.
    pub(super) fn on_message(
        &mut self,
        peer: &PeerEntry,
        target: ClientId,
        envelope: &str,
        sender_mid: Option<MessageId>,
        rid: &mut Option<RequestId>,
    ) -> Result<(), HandlerError> {
        if !envelope.starts_with('{') {
            return Err(HandlerError::NotAnEnvelope);
        }
        let timestamp = unix_ms();
        let live = self.state.hub.get(&target);
        // Messages that may end up in a mailbox need an id for the recipient's ack.
        let mid = sender_mid.clone().or_else(|| {
            let durable = live.as_ref().is_none_or(|e| e.verified);
            durable.then(server_message_id)
        });
        let frame =
            lattice_protocol::fast::encode_delivered(envelope, &peer.id, timestamp, mid.as_ref());
        let status = match (live, mid) {
            (Some(entry), Some(mid)) if entry.verified => {
                // Answered after the group commit at the end of this read batch.
                self.pending.push(PendingLive {
                    entry,
                    target,
                    item: MailItem {
                        message_id: mid,
                        sender: peer.id.clone(),
                        frame,
                    },
                    sender_mid,
                    rid: rid.take(),
                });
                return Ok(());
            }
            (Some(entry), mid) => match entry
                .session
                .tx
                .try_send(Out::Deliver(Box::new(frame.into())))
            {
                Ok(()) => {
                    Metrics::inc(&self.state.metrics.messages_delivered);
                    AckStatus::Delivered
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    return Err(HandlerError::RecipientBusy(target))
                }
                Err(mpsc::error::TrySendError::Closed(out)) => {
                    self.offline(&target, &peer.id, mid, out_frame(out))?
                }
            },
            (None, mid) => self.offline(&target, &peer.id, mid, frame)?,
        };
        self.ack(&target, sender_mid.as_ref(), rid.as_ref(), status);
        Ok(())
    }

    /// The sender's `message_ack`, if it gave a `messageId` (original clients do not).
    fn ack(
        &mut self,
        target: &ClientId,
        sender_mid: Option<&MessageId>,
        rid: Option<&RequestId>,
        status: AckStatus,
    ) {
        if let Some(message_id) = sender_mid {
            let ack = lattice_protocol::fast::encode_message_ack(message_id, target, status, rid);
            self.replies.push(Message::Text(ack.into()));
        }
    }

    /// This read batch's acknowledgements and messages for online verified peers, for the group
    /// commit ([`crate::writer::Writer::commit`]); `None` if there are none. The messages stay
    /// pending until [`Self::finish_commit`] routes them and answers their senders.
    pub(crate) fn take_commit(&mut self) -> Option<CommitRequest> {
        if self.pending.is_empty() && self.pending_acks.is_empty() {
            return None;
        }
        let acks = std::mem::take(&mut self.pending_acks);
        let acks = match &self.peer {
            Some(peer) if !acks.is_empty() => Some((peer.id.clone(), acks)),
            _ => None,
        };
        let live = self
            .pending
            .iter()
            .map(|p| (p.target.clone(), p.item.clone(), p.entry.session.conn_id))
            .collect();
        Some(CommitRequest { acks, live })
    }

    /// After the group commit: routes the committed messages and answers their senders (a
    /// missing result counts as a storage failure).
    pub(crate) fn finish_commit(&mut self, results: CommitResults) {
        let pending = std::mem::take(&mut self.pending);
        let mut results = results.into_iter();
        for p in pending {
            let r = results.next().unwrap_or_else(|| {
                Err(EnqueueError::Store(StoreError::Commit(
                    "no result from the group commit".into(),
                )))
            });
            let status = match r {
                Ok(Accepted::Stored) => self.route_stored(&p.entry, &p.target, &p.item),
                Ok(Accepted::Duplicate) => {
                    // A resend of a stored message: on its way already (or waiting); not twice.
                    debug!(target = %p.target, message_id = %p.item.message_id, "resend of a stored message");
                    AckStatus::Queued
                }
                Err(e) => {
                    let refused = self.refusal(&p.target, e);
                    // A refusal of a well-formed message never closes the connection.
                    let _ = self.refuse(refused, p.rid);
                    continue;
                }
            };
            self.ack(&p.target, p.sender_mid.as_ref(), p.rid.as_ref(), status);
        }
    }

    /// The group commit of this read batch, here and now (the socket loop commits through the
    /// mailbox writer instead, [`Self::take_commit`]): the acknowledged rows are deleted and the
    /// messages for online verified peers inserted (each within its recipient's quota) in one
    /// transaction, then those messages are routed and their senders answered. Runs before
    /// every flush, so no `message_ack` is written before its message is committed.
    pub(crate) fn commit_pending(&mut self) {
        if let Some(request) = self.take_commit() {
            self.commit_here(request);
        }
    }

    /// Commits `request` on this thread and finishes it.
    pub(crate) fn commit_here(&mut self, request: CommitRequest) {
        let cfg = &self.state.config;
        let results = self
            .state
            .mailbox
            .commit_group(
                std::slice::from_ref(&request),
                &cfg.mailbox_quota(),
                cfg.mailbox_ttl,
            )
            .pop()
            .unwrap_or_default();
        self.finish_commit(results);
    }

    /// Sends a committed message (its row owned by `entry`'s connection) through the
    /// connection's queue: `delivered`; or, with the queue full or the connection ending, gives
    /// the row back to the mailbox drain: `queued`.
    fn route_stored(&self, entry: &PeerEntry, target: &ClientId, item: &MailItem) -> AckStatus {
        let conn = entry.session.conn_id;
        match entry
            .session
            .tx
            .try_send(Out::Deliver(Box::new(item.frame.clone().into())))
        {
            Ok(()) => {
                Metrics::inc(&self.state.metrics.messages_delivered);
                AckStatus::Delivered
            }
            Err(_) => {
                // Queue full, or the connection is ending: the row waits for a drain (this
                // connection's, or the next one's).
                if let Err(e) = self.state.mailbox.disown(target, item, conn) {
                    warn!(error = %e, %target, "could not return a message to the mailbox");
                }
                if let Some(current) = self.state.hub.get(target) {
                    current.session.notify_mail();
                }
                debug!(%target, "recipient busy: left in the mailbox");
                Metrics::inc(&self.state.metrics.messages_queued);
                AckStatus::Queued
            }
        }
    }

    /// Queues for a peer that is not online, if it is a known verified identity.
    fn offline(
        &mut self,
        target: &ClientId,
        sender: &ClientId,
        mid: Option<MessageId>,
        frame: String,
    ) -> Result<AckStatus, HandlerError> {
        match self.state.directory.get(target) {
            Ok(Some(_)) => self.enqueue(target, sender, mid, frame),
            Ok(None) => Err(HandlerError::PeerNotFound(target.clone())),
            Err(e) => {
                warn!(error = %e, "directory lookup failed");
                Err(HandlerError::DirectoryUnavailable)
            }
        }
    }

    fn enqueue(
        &mut self,
        target: &ClientId,
        sender: &ClientId,
        mid: Option<MessageId>,
        frame: String,
    ) -> Result<AckStatus, HandlerError> {
        let message_id = mid.unwrap_or_else(server_message_id);
        let cfg = &self.state.config;
        match self.state.mailbox.enqueue(
            target,
            &MailItem {
                message_id,
                sender: sender.clone(),
                frame,
            },
            &cfg.mailbox_quota(),
            cfg.mailbox_ttl,
        ) {
            Ok(()) => {
                debug!(%target, "queued in mailbox");
                Metrics::inc(&self.state.metrics.messages_queued);
                // The recipient may have registered since we found it offline, and its first
                // drain may have run before this row was committed: wake it to look again.
                if let Some(current) = self.state.hub.get(target) {
                    current.session.notify_mail();
                }
                Ok(AckStatus::Queued)
            }
            Err(e) => Err(self.refusal(target, e)),
        }
    }

    /// The sender's error for a message the mailbox cannot take.
    fn refusal(&self, target: &ClientId, e: EnqueueError) -> HandlerError {
        match e {
            EnqueueError::Full { limit, .. } => {
                debug!(%target, ?limit, "mailbox full: message refused");
                let quota = self.state.config.mailbox_quota();
                let bound = match limit {
                    Limit::Count => u64::from(quota.count),
                    Limit::Bytes => quota.bytes,
                    Limit::SenderCount => u64::from(quota.sender_count),
                    Limit::SenderBytes => quota.sender_bytes,
                };
                HandlerError::MailboxFull {
                    target: target.clone(),
                    limit,
                    bound,
                }
            }
            EnqueueError::Store(e) => {
                warn!(error = %e, %target, "mailbox write failed");
                HandlerError::MailboxUnavailable
            }
        }
    }

    /// Deletes an acknowledged message. Message ids are the senders' choice, so the message is
    /// named by (sender, id): `fromId` when the ack carries it; without it, only an id that no
    /// other sender used is deleted (an ambiguous ack deletes nothing: at least once).
    pub(super) fn on_ack(&mut self, peer: &PeerEntry, a: Ack) {
        if peer.verified {
            // Deleted with the rest of this read batch's acks (`commit_pending`).
            self.pending_acks.push((a.from_id, a.message_id));
        }
    }
}

fn out_frame(out: Out) -> String {
    match out {
        Out::Deliver(frame) | Out::Frame(frame) => frame.to_string(),
        Out::CheckMail | Out::Ping => String::new(),
    }
}

fn server_message_id() -> MessageId {
    let id = format!("srv-{}", uuid::Uuid::new_v4());
    MessageId::new(id).unwrap_or_else(|e| unreachable!("a UUID is a valid message id: {e}"))
}
