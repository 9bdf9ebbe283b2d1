//! `message` and `ack`: the relay and the delivery contract's server side (docs/protocol.md, "the
//! delivery contract").
//!
//! A message with a `messageId` for an online verified peer is sent at once and held in memory
//! ([`crate::inflight`]) until the recipient's `ack`, which answers the sender `delivered` (end to
//! end); no disk is touched. When the ack does not come within `--ack-wait`
//! ([`reap_in_flight`]), the recipient's connection ends ([`Core::finish`]), or a bound on held
//! messages is reached, the message takes the durable path: it is committed to the mailbox with
//! the rest of its batch (the mailbox writer's group commit, [`crate::writer`]) and its sender
//! hears `queued` only then, so no `message_ack` ever precedes its message's commit or its
//! recipient's `ack`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, Utf8Bytes};
use lattice_protocol::{
    encode, Ack, AckStatus, ClientId, DeviceId, Frame, MessageId, RequestId, ServerFrame,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::Core;
use crate::hub::{Out, PeerEntry, SessionShared};
use crate::inflight::{Answer, HeldKey, HeldMessage, Matched};
use crate::limits::{IN_FLIGHT_PER_CONNECTION, IN_FLIGHT_REAP_DIVISOR};
use crate::metrics::Metrics;
use crate::session::error::HandlerError;
use crate::state::{unix_ms, ServerState};
use crate::store::{
    Accepted, CommitRequest, CommitResults, EnqueueError, Limit, MailItem, MailboxKey, StoreError,
};
use lattice_protocol::limits::MAX_LINK_RELAY_MESSAGES;

/// A message for an online verified peer waiting for the batch's group commit.
pub(super) struct PendingLive {
    entry: Arc<PeerEntry>,
    target: ClientId,
    item: MailItem,
    sender_mid: Option<MessageId>,
    rid: Option<RequestId>,
}

impl Core {
    /// A link relay's `message`: a `lattice-link` envelope (its `algorithm` is all the server
    /// can read), to the one id its first message went to, at most
    /// [`MAX_LINK_RELAY_MESSAGES`] in its life. Counted when it passes.
    fn check_link_relay(&mut self, target: &ClientId, envelope: &str) -> Result<(), HandlerError> {
        #[derive(serde::Deserialize)]
        struct Algorithm<'a> {
            #[serde(borrow)]
            algorithm: std::borrow::Cow<'a, str>,
        }
        let algorithm = serde_json::from_str::<Algorithm<'_>>(envelope)
            .map_err(|_| HandlerError::LinkRelayAlgorithm)?;
        if algorithm.algorithm != lattice_protocol::LINK_ALGORITHM {
            return Err(HandlerError::LinkRelayAlgorithm);
        }
        match &self.relay_target {
            Some(first) if first != target => {
                return Err(HandlerError::LinkRelayTarget {
                    first: first.clone(),
                    got: target.clone(),
                })
            }
            Some(_) => {}
            None => self.relay_target = Some(target.clone()),
        }
        if self.relay_sent >= MAX_LINK_RELAY_MESSAGES {
            return Err(HandlerError::LinkRelayExhausted(MAX_LINK_RELAY_MESSAGES));
        }
        self.relay_sent += 1;
        Ok(())
    }

    /// Relays one `message`. The answer (`message_ack` when the sender gave a `messageId`) is
    /// pushed now, or, for an online verified recipient, after the group commit; in that case the
    /// `requestId` is taken from `rid` and travels with the pending message.
    pub(super) async fn on_message(
        &mut self,
        peer: &PeerEntry,
        target: ClientId,
        envelope: &str,
        sender_mid: Option<MessageId>,
        rid: &mut Option<RequestId>,
    ) -> Result<(), HandlerError> {
        if peer.link_relay {
            self.check_link_relay(&target, envelope)?;
        }
        if let Some(node) = self.state.node.clone() {
            // Boxed: the single-node path's future stays as small as it was.
            return Box::pin(self.on_message_cluster(
                &node,
                peer,
                target,
                envelope,
                sender_mid,
                rid.as_ref(),
            ))
            .await;
        }
        if !envelope.starts_with('{') {
            return Err(HandlerError::NotAnEnvelope);
        }
        if let Some(devices) = self.state.store.linked_devices(&target) {
            // Boxed like the offline path: the rarer one.
            return Box::pin(
                self.relay_to_devices(peer, &target, envelope, sender_mid, rid, devices),
            )
            .await;
        }
        let timestamp = unix_ms();
        // An id without linked devices has only its primary device.
        let live = self.state.hub.device(&target, &DeviceId::primary());
        // Messages that may end up in a mailbox need an id for the recipient's ack.
        let mid = sender_mid.clone().or_else(|| {
            let durable = live.as_ref().is_none_or(|e| e.verified);
            durable.then(server_message_id)
        });
        let frame =
            lattice_protocol::fast::encode_delivered(envelope, &peer.id, timestamp, mid.as_ref());
        let status = match (live, mid) {
            (Some(entry), Some(mid)) if entry.verified => {
                // End to end: sent now, answered at the recipient's ack (or after a spill).
                let frame = match sender_mid.as_ref() {
                    Some(smid) if !self.state.config.ack_wait.is_zero() => {
                        match self.send_held(peer, &entry, &target, smid, frame, rid.as_ref()) {
                            Ok(()) => return Ok(()),
                            Err(frame) => frame,
                        }
                    }
                    _ => frame,
                };
                // The durable path: answered after the group commit at the end of this read
                // batch.
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
                    Box::pin(self.offline(&target, &peer.id, mid, out_frame(out))).await?
                }
            },
            // Boxed (the recipient is offline: the rarer path), so the live path's future, made
            // for every read batch, stays small.
            (None, mid) => Box::pin(self.offline(&target, &peer.id, mid, frame)).await?,
        };
        self.ack(&target, sender_mid.as_ref(), rid.as_ref(), status);
        Ok(())
    }

    /// A message for an id with linked devices (docs/protocol.md, "Devices"): committed to the
    /// mailbox of every device of the id in one transaction (all or nothing), then each online
    /// device is told to drain; the sender hears `queued`. End-to-end `delivered` comes from the
    /// receipt inside the MLS conversation.
    async fn relay_to_devices(
        &mut self,
        peer: &PeerEntry,
        target: &ClientId,
        envelope: &str,
        sender_mid: Option<MessageId>,
        rid: &mut Option<RequestId>,
        devices: Vec<DeviceId>,
    ) -> Result<(), HandlerError> {
        let mid = sender_mid.clone().unwrap_or_else(server_message_id);
        let frame =
            lattice_protocol::fast::encode_delivered(envelope, &peer.id, unix_ms(), Some(&mid));
        let keys: Vec<MailboxKey> = devices.iter().map(|d| MailboxKey::new(target, d)).collect();
        let item = MailItem {
            message_id: mid,
            sender: peer.id.clone(),
            frame,
        };
        let cfg = &self.state.config;
        self.state
            .store
            .enqueue_all(&keys, &item, &cfg.mailbox_quota(), cfg.mailbox_ttl)
            .map_err(|e| self.refusal(target, e))?;
        Metrics::inc(&self.state.metrics.messages_queued);
        for device in &devices {
            if let Some(entry) = self.state.hub.device(target, device) {
                entry.session.notify_mail();
            }
        }
        debug!(%target, devices = devices.len(), "queued for every device");
        self.ack(target, sender_mid.as_ref(), rid.as_ref(), AckStatus::Queued);
        Ok(())
    }

    /// Sends `frame` to the online verified `entry` and holds it in its connection's in-flight
    /// table until the recipient's `ack`. `Err` gives the frame back when it is not held (a bound
    /// is reached, the same message is held already, the queue is full or the connection ended):
    /// the caller then takes the durable path.
    fn send_held(
        &mut self,
        peer: &PeerEntry,
        entry: &PeerEntry,
        target: &ClientId,
        sender_mid: &MessageId,
        frame: String,
        rid: Option<&RequestId>,
    ) -> Result<(), String> {
        if !self.shared.answers.reserve(IN_FLIGHT_PER_CONNECTION) {
            return Err(frame);
        }
        let Some(reservation) = self.state.in_flight_budget.reserve(frame.len()) else {
            self.shared.answers.release();
            return Err(frame);
        };
        let frame = Utf8Bytes::from(frame);
        let key: HeldKey = (peer.id.clone(), sender_mid.clone());
        let held = HeldMessage {
            frame: frame.clone(),
            answer: Answer {
                to: Arc::clone(&self.shared.answers),
                target: target.clone(),
                message_id: sender_mid.clone(),
                rid: rid.cloned(),
            },
            reservation,
        };
        let deadline = Instant::now() + self.state.config.ack_wait;
        let sessions = &entry.session;
        if sessions
            .in_flight
            .hold(key.clone(), held, IN_FLIGHT_PER_CONNECTION, deadline)
            .is_err()
        {
            self.shared.answers.release();
            return Err(frame.as_str().to_owned());
        }
        match sessions.tx.try_send(Out::Deliver(Box::new(frame))) {
            Ok(()) => Ok(()),
            Err(e) => {
                let frame = out_frame(e.into_inner());
                match sessions.in_flight.take(&key) {
                    Some(held) => {
                        drop(held);
                        self.shared.answers.release();
                        Err(frame)
                    }
                    // The connection ended meanwhile and spilled it: its sender is answered.
                    None => Ok(()),
                }
            }
        }
    }

    /// The sender's `message_ack`, if it gave a `messageId` (original clients do not).
    pub(super) fn ack(
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
            Some(peer) if !acks.is_empty() => Some((peer.mailbox_key(), acks)),
            _ => None,
        };
        let live = self
            .pending
            .iter()
            .map(|p| {
                (
                    p.entry.mailbox_key(),
                    p.item.clone(),
                    p.entry.session.conn_id,
                )
            })
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
        let results = commit_now(&self.state, &request);
        self.finish_commit(results);
    }

    /// The connection ended: everything held for its peer's `ack` is committed to the mailbox
    /// (owned by this connection, so the caller's `disown_all` gives it back for the next one)
    /// and its senders hear `queued`. From now on nothing more is held for this connection.
    pub(super) fn spill_all_held(&mut self) {
        let held = self.shared.in_flight.close();
        if held.is_empty() {
            return;
        }
        debug!(
            count = held.len(),
            "connection ended: held messages go to the mailbox"
        );
        let request = spill_request(self.shared.conn_id, &held);
        let results = commit_now(&self.state, &request);
        answer_spilled(&self.state, held, results);
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
                if let Err(e) = self.state.mailbox.disown(&entry.mailbox_key(), item, conn) {
                    warn!(error = %e, %target, "could not return a message to the mailbox");
                }
                if let Some(current) = self.state.hub.device(target, &entry.device) {
                    current.session.notify_mail();
                }
                debug!(%target, "recipient busy: left in the mailbox");
                Metrics::inc(&self.state.metrics.messages_queued);
                AckStatus::Queued
            }
        }
    }

    /// Queues for a peer that is not online, if it is a known verified identity.
    async fn offline(
        &mut self,
        target: &ClientId,
        sender: &ClientId,
        mid: Option<MessageId>,
        frame: String,
    ) -> Result<AckStatus, HandlerError> {
        match self.binding_of(target).await? {
            Some(_) => self.enqueue(target, sender, mid, frame).await,
            None => Err(HandlerError::PeerNotFound(target.clone())),
        }
    }

    async fn enqueue(
        &mut self,
        target: &ClientId,
        sender: &ClientId,
        mid: Option<MessageId>,
        frame: String,
    ) -> Result<AckStatus, HandlerError> {
        let message_id = mid.unwrap_or_else(server_message_id);
        let cfg = &self.state.config;
        match self.state.mailbox.enqueue(
            &MailboxKey::primary(target),
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
                if let Some(current) = self.state.hub.device(target, &DeviceId::primary()) {
                    current.session.notify_mail();
                }
                Ok(AckStatus::Queued)
            }
            Err(e) => Err(self.refusal(target, e)),
        }
    }

    /// The sender's error for a message the mailbox cannot take.
    fn refusal(&self, target: &ClientId, e: EnqueueError) -> HandlerError {
        refusal(&self.state, target, e)
    }

    /// The recipient processed a message. Message ids are the senders' choice, so the message
    /// is named by (sender, id): `fromId` when the ack carries it; without it, only an id that no
    /// other sender used (an ambiguous ack completes and deletes nothing: at least once).
    ///
    /// A message held on this connection is completed: its sender hears `delivered`, and nothing
    /// touches the disk. Only this connection's own table is searched, so an `ack` can complete
    /// only a message sent to the acking peer. Otherwise the ack deletes the mailbox row, with
    /// the rest of this read batch's acks (`commit_pending`).
    pub(super) fn on_ack(&mut self, peer: &PeerEntry, a: Ack) {
        if !peer.verified {
            return;
        }
        let matched = match &a.from_id {
            Some(from) => self
                .shared
                .in_flight
                .take(&(from.clone(), a.message_id.clone()))
                .map_or(Matched::Nothing, Matched::One),
            None => self.shared.in_flight.take_by_id(&a.message_id),
        };
        match matched {
            Matched::One(held) => {
                Metrics::inc(&self.state.metrics.messages_delivered);
                held.answer.ack(AckStatus::Delivered);
            }
            Matched::Ambiguous => {
                debug!(message_id = %a.message_id, "ack without fromId matches several senders: ignored");
            }
            Matched::Nothing => self.pending_acks.push((a.from_id, a.message_id)),
        }
    }
}

/// Commits `request` on the calling thread (the mailbox writer is gone, or the caller cannot
/// wait for it).
fn commit_now(state: &ServerState, request: &CommitRequest) -> CommitResults {
    let cfg = &state.config;
    state
        .mailbox
        .commit_group(
            std::slice::from_ref(request),
            &cfg.mailbox_quota(),
            cfg.mailbox_ttl,
        )
        .pop()
        .unwrap_or_default()
}

/// The commit of held messages taken from connection `conn`: stored owned by that connection,
/// which sent them already (its peer's `ack` deletes them; its end gives them back).
fn spill_request(conn: u64, held: &[(HeldKey, HeldMessage)]) -> CommitRequest {
    CommitRequest {
        acks: None,
        live: held
            .iter()
            .map(|((sender, mid), h)| {
                let item = MailItem {
                    message_id: mid.clone(),
                    sender: sender.clone(),
                    frame: h.frame.as_str().to_owned(),
                };
                // Held messages go to ids without linked devices: their primary device.
                (MailboxKey::primary(&h.answer.target), item, conn)
            })
            .collect(),
    }
}

/// Answers the senders of spilled messages from their commit's results: `queued` once stored
/// (or already stored), the mailbox's refusal otherwise. A missing result counts as a storage
/// failure.
fn answer_spilled(state: &ServerState, held: Vec<(HeldKey, HeldMessage)>, results: CommitResults) {
    let mut results = results.into_iter();
    for (_, h) in held {
        let r = results.next().unwrap_or_else(|| {
            Err(EnqueueError::Store(StoreError::Commit(
                "no result from the group commit".into(),
            )))
        });
        match r {
            Ok(Accepted::Stored | Accepted::Duplicate) => {
                Metrics::inc(&state.metrics.messages_queued);
                h.answer.ack(AckStatus::Queued);
            }
            Err(e) => {
                let refused = refusal(state, &h.answer.target, e);
                Metrics::inc(&state.metrics.errors_sent);
                let rid = h.answer.rid.clone();
                h.answer.send(error_frame(&refused, rid));
            }
        }
    }
}

/// The `error` frame for `e`, answering the frame with `rid`.
pub(super) fn error_frame(e: &HandlerError, rid: Option<RequestId>) -> String {
    let mut body = ServerFrame::error(
        e.error_type(),
        e.to_string(),
        std::time::SystemTime::now(),
        rid.clone(),
    );
    if let ServerFrame::Error(p) = &mut body {
        p.current_epoch = e.current_epoch();
    }
    encode(&Frame::with_request_id(body, rid))
}

/// The sender's error for a message the mailbox cannot take.
pub(super) fn refusal(state: &ServerState, target: &ClientId, e: EnqueueError) -> HandlerError {
    match e {
        EnqueueError::Full { limit, .. } => {
            debug!(%target, ?limit, "mailbox full: message refused");
            let quota = state.config.mailbox_quota();
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

/// The in-flight reaper, one task per server: every `--ack-wait` / [`IN_FLIGHT_REAP_DIVISOR`] it
/// takes the held messages whose ack wait ran out from every connection, commits them to the
/// mailbox (the mailbox writer's group commit) and answers their senders `queued`. It runs apart
/// from the recipients' own tasks, so a recipient blocked in a stalled write (up to
/// `WRITE_TIMEOUT`) does not delay its senders' answers. Ends at shutdown, after which each
/// closing connection spills its own.
pub(crate) async fn reap_in_flight(state: Arc<ServerState>) {
    let wait = state.config.ack_wait;
    if wait.is_zero() {
        return;
    }
    let period = (wait / IN_FLIGHT_REAP_DIVISOR).max(Duration::from_millis(10));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = state.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        for conn in state.sessions.all() {
            let expired = conn.in_flight.take_expired(now);
            if !expired.is_empty() {
                spill_expired(&state, &conn, expired).await;
            }
        }
    }
}

/// Commits messages whose ack wait ran out on `conn` and answers their senders.
async fn spill_expired(
    state: &ServerState,
    conn: &SessionShared,
    held: Vec<(HeldKey, HeldMessage)>,
) {
    debug!(
        conn = conn.conn_id,
        count = held.len(),
        "no ack in time: held messages go to the mailbox"
    );
    let request = spill_request(conn.conn_id, &held);
    let results = match state.writer.commit(request).await {
        Ok(results) => results,
        Err(request) => commit_now(state, &request),
    };
    if conn.in_flight.is_closed() {
        // The connection ended while this commit ran, perhaps after it gave its rows back: give
        // these back too, so they wait for the next connection.
        if let Some((_, h)) = held.first() {
            let recipient = &h.answer.target;
            match state
                .mailbox
                .disown_all(&MailboxKey::primary(recipient), conn.conn_id)
            {
                Ok(_) => {
                    if let Some(current) = state.hub.device(recipient, &DeviceId::primary()) {
                        current.session.notify_mail();
                    }
                }
                Err(e) => warn!(error = %e, "could not return spilled messages"),
            }
        }
    }
    answer_spilled(state, held, results);
}

fn out_frame(out: Out) -> String {
    match out {
        Out::Deliver(frame) | Out::Frame(frame) => frame.to_string(),
        Out::CheckMail | Out::Ping => String::new(),
    }
}

pub(super) fn server_message_id() -> MessageId {
    let id = format!("srv-{}", uuid::Uuid::new_v4());
    MessageId::new(id).unwrap_or_else(|e| unreachable!("a UUID is a valid message id: {e}"))
}
