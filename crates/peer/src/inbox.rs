//! The inbox: opening, checking and delivering incoming messages (sealing outgoing ones is the
//! outbox's). It owns the messages held back, the refusal tally and the replay guard; it asks
//! [`Trust`] for senders' keys, acknowledges through the [`Link`] and raises events upwards.
//!
//! Incoming `message` frames go from the socket reader to [`worker`] through a bounded queue, so
//! that looking up a sender's key (a request to the server) never stalls reading. The worker opens
//! each sender's messages in order, one at a time, and different senders' concurrently (bounded,
//! round-robin: [`Fair`]), so a sender whose key is slow or never comes delays no one else. Each
//! message is checked and either delivered ([`PeerEvent::Message`]), dropped silently as a
//! duplicate, or reported ([`PeerError::Rejected`]).
//!
//! What is acknowledged (`ack`, after which the server deletes its copy): delivered messages,
//! duplicates (an id already delivered: the server redelivers what was not acknowledged when a
//! connection ends, and a copy means the first one arrived), and messages refused for good (they
//! can never be opened, including a `lattice-v1` message whose claimed sender has no identity key
//! at all, and one whose signed `sentAt` is outside the freshness window). A message refused for a
//! reason that may pass ([`RejectReason::is_transient`]: the sender's key could not be fetched, or
//! a key change waits for the user) is *not* acknowledged, so the server keeps it and delivers it
//! again; a local copy is kept too ([`crate::held`]) and opened again on this connection as soon as
//! the reason passes (the key change is accepted, a later message from the same sender opens, or
//! its retry time comes). A message refused for a transient reason other than a key change is
//! given up after [`crate::defaults::MAX_TRANSIENT_REFUSALS`] refusals over
//! [`crate::defaults::TRANSIENT_GIVE_UP_AFTER`]: acknowledged and reported as
//! [`RejectReason::GaveUp`], so that no message stays unacknowledged forever.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use lattice_crypto::{
    content_signature_payload, lattice_v1, message_signature_payload, ml_kem_aes, ContentStatement,
    Identity, SealedEnvelope,
};
use lattice_protocol::{ClientId, Delivered, Envelope, ErrorType, InnerMessage, MessageId};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::content::{Content, CONTENT_VERSION, KIND_TEXT};
use crate::events::{Algorithm, Change, ContentUpdate, Dispatcher, IncomingMessage, PeerEvent};
use crate::held::{Held, Refusals, RetryPolicy, Verdict};
use crate::history::History;
use crate::link::Link;
use crate::replay::{freshness, Fresh, ReplayGuard, ReplayStore};
use crate::sanitize::Sanitized;
use crate::sync::lock;
use crate::trust::{Recheck, Trust};
use crate::wire::{now_ms, B64, INNER_VERSION_1};
use crate::{defaults, PeerError, RejectReason};

/// Messages refused for a reason that may pass, and how often each was refused.
#[derive(Debug)]
struct Backlog {
    held: Held,
    /// How often each held message was refused, to give up in the end.
    refusals: Refusals,
}

/// The receiving side of messages. Shared (`Arc`) by the handle, the connection and the worker.
#[derive(Debug)]
pub(crate) struct Inbox {
    client_id: ClientId,
    /// `None` on a linked device: it has no long-term ML-KEM key, so `lattice-v1` and
    /// `ml-kem-aes` mail is refused ([`RejectReason::MlsOnlyDevice`]).
    identity: Option<Arc<Identity>>,
    trust: Arc<Trust>,
    link: Arc<Link>,
    dispatcher: Arc<Dispatcher>,
    /// Messages held back and their refusal tally. std Mutex: short updates, never an await.
    backlog: Mutex<Backlog>,
    /// Woken when held messages become ready to be opened again.
    held_ready: Notify,
    /// std Mutex, apart from `backlog` because its section writes through to the (possibly
    /// durable) [`ReplayStore`]: held-message bookkeeping never waits for that write.
    replay: Mutex<ReplayGuard>,
    /// Durable high-water marks behind `replay`.
    replay_store: Arc<dyn ReplayStore>,
    /// What edits, deletes, reactions and receipts are checked against.
    history: Arc<History>,
}

/// A message that passed every check: a message to show, or an update to an earlier one.
#[derive(Debug)]
pub(crate) enum Opened {
    /// Boxed: a message (a file offer in it) is much larger than an update.
    Message(Box<IncomingMessage>),
    Update(ContentUpdate),
}

impl Opened {
    pub(crate) fn into_event(self) -> PeerEvent {
        match self {
            Self::Message(m) => PeerEvent::Message(*m),
            Self::Update(u) => PeerEvent::Update(u),
        }
    }

    fn verified(&self) -> bool {
        match self {
            Self::Message(m) => m.verified,
            Self::Update(_) => true,
        }
    }

    /// The message, if it is one.
    #[cfg(any(test, feature = "bench"))]
    pub(crate) fn into_message(self) -> Option<IncomingMessage> {
        match self {
            Self::Message(m) => Some(*m),
            Self::Update(_) => None,
        }
    }
}

impl Inbox {
    pub(crate) fn new(
        client_id: ClientId,
        identity: Option<Arc<Identity>>,
        trust: Arc<Trust>,
        link: Arc<Link>,
        dispatcher: Arc<Dispatcher>,
        replay_store: Arc<dyn ReplayStore>,
        history: Arc<History>,
    ) -> Self {
        Self::with_policy(
            client_id,
            identity,
            trust,
            link,
            dispatcher,
            (replay_store, history),
            RetryPolicy::from_defaults(),
        )
    }

    fn with_policy(
        client_id: ClientId,
        identity: Option<Arc<Identity>>,
        trust: Arc<Trust>,
        link: Arc<Link>,
        dispatcher: Arc<Dispatcher>,
        (replay_store, history): (Arc<dyn ReplayStore>, Arc<History>),
        policy: RetryPolicy,
    ) -> Self {
        Self {
            client_id,
            identity,
            trust,
            link,
            dispatcher,
            backlog: Mutex::new(Backlog {
                held: Held::new(defaults::HELD_MESSAGES),
                refusals: Refusals::new(policy, defaults::TRANSIENT_REFUSALS_TRACKED),
            }),
            held_ready: Notify::new(),
            replay: Mutex::new(ReplayGuard::new(
                defaults::REPLAY_WINDOW_PER_PEER,
                (defaults::REPLAY_MAX_PEERS, defaults::REPLAY_MAX_IDS),
                (
                    defaults::REPLAY_MAX_UNSIGNED_PEERS,
                    defaults::REPLAY_MAX_UNSIGNED_IDS,
                ),
            )),
            replay_store,
            history,
        }
    }

    /// Queues the messages held back from `from` to be opened again.
    pub(crate) fn release_held(&self, from: &ClientId) {
        let released = lock(&self.backlog).held.release(from);
        if released > 0 {
            tracing::debug!(peer = %self.client_id, from = %from, released, "held messages released");
            self.held_ready.notify_one();
        }
    }

    /// A connection ended: the server puts every unacknowledged message back into the mailbox
    /// and delivers it again after re-registration, so the local copies are redundant.
    pub(crate) fn connection_ended(&self) {
        lock(&self.backlog).held.clear();
    }

    /// Opens and checks one message (the worker's step, without the delivery).
    #[cfg(any(test, feature = "bench"))]
    pub(crate) async fn open_one(&self, d: &Delivered) -> Result<Opened, RejectReason> {
        open(self, d).await
    }
}

/// Messages waiting to be opened, queued per sender: one sender's messages are opened one at a
/// time in arrival order (its replay window and high-water mark see them in order), while
/// different senders are served round-robin, up to [`defaults::RECEIVE_CONCURRENCY`] at once. A
/// sender whose key the server is slow to give (or never gives) thus holds up only its own
/// messages, and fills only its own queue ([`defaults::RECEIVE_QUEUE_PER_SENDER`]).
#[derive(Debug, Default)]
struct Fair {
    queues: HashMap<ClientId, VecDeque<Delivered>>,
    /// Senders with queued messages and none being opened, in turn order.
    ready: VecDeque<ClientId>,
    /// Senders with a message being opened.
    running: HashSet<ClientId>,
    /// Messages queued in all.
    queued: usize,
}

impl Fair {
    /// Queues `d` (at the front of its sender's queue if `first`: a released held message, older
    /// than anything queued). `Err(d)` if its sender's queue is full.
    fn push(&mut self, d: Delivered, first: bool) -> Result<(), Delivered> {
        let from = d.from_id.clone();
        let queue = self.queues.entry(from.clone()).or_default();
        if queue.len() >= defaults::RECEIVE_QUEUE_PER_SENDER && !first {
            return Err(d);
        }
        if first {
            queue.push_front(d);
        } else {
            queue.push_back(d);
        }
        self.queued += 1;
        if !self.running.contains(&from) && !self.ready.contains(&from) {
            self.ready.push_back(from);
        }
        Ok(())
    }

    /// The next message to open, if a slot is free and someone waits: from the sender whose turn
    /// it is.
    fn next(&mut self) -> Option<Delivered> {
        if self.running.len() >= defaults::RECEIVE_CONCURRENCY {
            return None;
        }
        let from = self.ready.pop_front()?;
        let d = self.queues.get_mut(&from).and_then(VecDeque::pop_front)?;
        self.queued = self.queued.saturating_sub(1);
        self.running.insert(from);
        Some(d)
    }

    /// `from`'s message was opened: its next one (if any) waits for its turn behind the others.
    fn done(&mut self, from: &ClientId) {
        self.running.remove(from);
        match self.queues.get(from) {
            Some(q) if !q.is_empty() => self.ready.push_back(from.clone()),
            _ => {
                self.queues.remove(from);
            }
        }
    }

    /// Whether more may be read from the receive queue.
    fn has_room(&self) -> bool {
        self.queued < defaults::RECEIVE_QUEUE
    }
}

/// Processes incoming messages until cancelled: each sender's in arrival order, different
/// senders concurrently and fairly ([`Fair`]).
pub(crate) async fn worker(
    inbox: Arc<Inbox>,
    mut received: mpsc::Receiver<Delivered>,
    cancel: CancellationToken,
) {
    let mut fair = Fair::default();
    let mut running: JoinSet<()> = JoinSet::new();
    // Which sender each running task opens a message of.
    let mut senders: HashMap<tokio::task::Id, ClientId> = HashMap::new();
    let mut open_channel = true;
    // Bounded: every turn either ends the loop, or handles one event (a message read or opened,
    // a wake-up) of which there are finitely many per message.
    loop {
        // Released held messages first: they are older than anything still queued.
        let mut released = Vec::new();
        while let Some(d) = lock(&inbox.backlog).held.next_ready() {
            released.push(d);
        }
        // Each to the front of its sender's queue, so the last goes first: in reverse, to keep
        // their order. Never refused: `first` bypasses the per-sender bound (held messages are
        // bounded on their own).
        for d in released.into_iter().rev() {
            let _ = fair.push(d, true);
        }
        while let Some(d) = fair.next() {
            let inbox = Arc::clone(&inbox);
            let from = d.from_id.clone();
            let task = running.spawn(async move { process(&inbox, d).await });
            senders.insert(task.id(), from);
        }
        if !open_channel && running.is_empty() {
            break;
        }
        let retry = lock(&inbox.backlog).held.next_retry();
        tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            Some(done) = running.join_next_with_id(), if !running.is_empty() => {
                let id = match done {
                    Ok((id, ())) => id,
                    Err(e) => {
                        // A bug (a panic) while opening one message: that message is left
                        // unacknowledged (the server delivers it again); the sender goes on.
                        tracing::error!(peer = %inbox.client_id, error = %e, "message processing failed");
                        e.id()
                    }
                };
                if let Some(from) = senders.remove(&id) {
                    fair.done(&from);
                }
            }
            () = inbox.held_ready.notified() => {}
            () = sleep_until_some(retry) => {
                lock(&inbox.backlog).held.release_due(Instant::now());
            }
            d = received.recv(), if open_channel && fair.has_room() => match d {
                Some(d) => {
                    if let Err(d) = fair.push(d, false) {
                        // Only this sender's queue is full: drop it unacknowledged (the server
                        // keeps it and delivers it again after a reconnect).
                        tracing::warn!(peer = %inbox.client_id, from = %d.from_id, "sender's receive queue full, message dropped unacknowledged");
                        inbox.dispatcher.emit(PeerEvent::Error(PeerError::ReceiveQueueFull {
                            from: d.from_id,
                        }));
                    }
                }
                None => open_channel = false,
            },
            else => break,
        }
    }
    running.shutdown().await;
}

/// Opens one message, then delivers, acknowledges, holds or reports it.
async fn process(inbox: &Inbox, delivered: Delivered) {
    let from = delivered.from_id.clone();
    let message_id = delivered.message_id.clone();
    let outcome = open(inbox, &delivered).await;
    let ack = match outcome {
        Ok(opened) => {
            tracing::debug!(peer = %inbox.client_id, from = %from, message_id = ?message_id, verified = opened.verified(), "message delivered");
            inbox.dispatcher.emit(opened.into_event());
            // A held copy of this message is redundant now; whatever else was held back from
            // this sender because its key could not be fetched can be opened now.
            lock(&inbox.backlog).held.settle(&from, message_id.as_ref());
            if let Some(id) = &message_id {
                lock(&inbox.backlog).refusals.forget(&from, id);
            }
            inbox.release_held(&from);
            true
        }
        Err(RejectReason::Replay) => {
            tracing::debug!(peer = %inbox.client_id, from = %from, message_id = ?message_id, "duplicate dropped");
            true
        }
        Err(reason) => {
            // Acknowledges (or holds) the message itself, before reporting it.
            refused(inbox, delivered, reason);
            false
        }
    };
    if let (true, Some(id)) = (ack, &message_id) {
        inbox.link.ack(&from, id);
    }
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Decides the fate of a refused message, then reports it.
///
/// A final refusal is acknowledged (before the event, so that whoever sees the event knows the
/// `ack` is queued). A key change is held (not acknowledged) until the user
/// accepts it. Any other transient refusal is held with a retry time, and given up (acknowledged,
/// reported as [`RejectReason::GaveUp`]) once [`crate::held::Refusals`] says it was refused often
/// enough for long enough.
fn refused(inbox: &Inbox, delivered: Delivered, reason: RejectReason) {
    let from = delivered.from_id.clone();
    let message_id = delivered.message_id.clone();
    let mut retry_at = None;
    let mut report = true;
    let reason = match (&message_id, reason.is_retried()) {
        (Some(id), true) => {
            let verdict = lock(&inbox.backlog)
                .refusals
                .refused(&from, id, Instant::now());
            match verdict {
                Verdict::Retry { at, first } => {
                    retry_at = Some(at);
                    report = first;
                    reason
                }
                Verdict::GiveUp { attempts } => RejectReason::GaveUp {
                    attempts,
                    last: reason.to_string(),
                },
            }
        }
        _ => reason,
    };
    let transient = reason.is_transient();
    if let (false, Some(id)) = (transient, &message_id) {
        inbox.link.ack(&from, id);
    }
    if report {
        tracing::warn!(peer = %inbox.client_id, from = %from, message_id = ?message_id, reason = %Sanitized(&reason), transient, "message refused");
        inbox.dispatcher.emit(PeerEvent::Error(PeerError::Rejected {
            from,
            message_id,
            reason,
        }));
    } else {
        tracing::debug!(peer = %inbox.client_id, from = %from, message_id = ?message_id, reason = %Sanitized(&reason), "message refused again, retried later");
    }
    // Held back, not lost: the server keeps an unacknowledged message, and a local copy is opened
    // again as soon as the reason passes (or its retry time comes).
    if transient {
        lock(&inbox.backlog).held.hold(delivered, retry_at);
    }
}

/// Opens and checks one message. `Err(RejectReason::Replay)` is a duplicate, dropped silently by
/// the caller.
async fn open(inbox: &Inbox, d: &Delivered) -> Result<Opened, RejectReason> {
    let envelope: Envelope =
        serde_json::from_str(d.message.get()).map_err(|_| RejectReason::MalformedEnvelope)?;
    let (cipher_text, encrypted_data) = envelope
        .to_bytes()
        .map_err(|_| RejectReason::MalformedEnvelope)?;
    let sealed = SealedEnvelope {
        cipher_text,
        encrypted_data,
    };
    let Some(identity) = &inbox.identity else {
        // A linked device: nothing but MLS reaches this far on it (MLS goes to the groups).
        return Err(RejectReason::MlsOnlyDevice(envelope.algorithm));
    };
    let kem = identity.kem();
    match envelope.algorithm.as_str() {
        lattice_v1::ALGORITHM => {
            let outer_id = d.message_id.clone().ok_or(RejectReason::MissingMessageId)?;
            let me = inbox.client_id.as_str();
            let ctx = lattice_v1::Context {
                sender_id: d.from_id.as_str(),
                recipient_id: me,
                message_id: outer_id.as_str(),
            };
            let plaintext =
                lattice_v1::open(kem, &ctx, &sealed).map_err(|_| RejectReason::Decrypt)?;
            let msg: InnerMessage =
                serde_json::from_slice(&plaintext).map_err(|_| RejectReason::MalformedPlaintext)?;
            if msg.v != INNER_VERSION_1 && msg.v != CONTENT_VERSION {
                return Err(RejectReason::MalformedPlaintext);
            }
            if msg.message_id != outer_id {
                return Err(RejectReason::MessageIdMismatch);
            }
            // Only authenticated ids are recorded, and this one decrypted bound to the sender and
            // message id: a copy of a message already delivered. Checked before the key gates so
            // that a redelivered message signed with a key since replaced is not refused.
            if already_seen(inbox, &d.from_id, &outer_id) {
                return Err(RejectReason::Replay);
            }
            if inbox.trust.pending_key_change(&d.from_id).is_some() {
                return Err(RejectReason::KeyChanged);
            }
            let sig = B64
                .decode(&msg.sig)
                .map_err(|_| RejectReason::BadSignature)?;
            // Version 1 signs the body only; version 2 the version, the kind and the body.
            let payload = if msg.v == INNER_VERSION_1 {
                message_signature_payload(
                    d.from_id.as_str(),
                    me,
                    outer_id.as_str(),
                    msg.sent_at,
                    msg.body.as_bytes(),
                )
            } else {
                content_signature_payload(&ContentStatement {
                    sender_id: d.from_id.as_str(),
                    recipient_id: me,
                    message_id: outer_id.as_str(),
                    sent_at_ms: msg.sent_at,
                    version: msg.v,
                    kind: &msg.kind,
                    body: msg.body.as_bytes(),
                })
            }
            .map_err(|_| RejectReason::BadSignature)?;
            let identity = inbox
                .trust
                .sender_identity(&d.from_id)
                .await
                .map_err(sender_key_refusal)?;
            if identity.verify(&payload, &sig).is_err() {
                // Perhaps the sender has a new key: ask, so a key change is reported as such. Only
                // a confirmed pinned key makes this a forgery (final); unconfirmed, it may pass.
                return Err(match inbox.trust.recheck_key(&d.from_id).await {
                    Recheck::Unchanged => RejectReason::BadSignature,
                    Recheck::Changed => RejectReason::KeyChanged,
                    Recheck::Failed(e) => match sender_key_refusal(e) {
                        // No key at all any more, or none that could ever verify it: final.
                        RejectReason::NoSenderKey | RejectReason::Downgrade => {
                            RejectReason::BadSignature
                        }
                        other => other,
                    },
                });
            }
            // The signed time, checked once the signature is: a replay older than the window, or
            // a message dated ahead to stay fresh for longer, is refused for good.
            freshness(msg.sent_at, now_ms())?;
            let content = if msg.v == INNER_VERSION_1 {
                // Version 1 carries text only (its kind is not signed).
                if msg.kind != KIND_TEXT {
                    return Err(RejectReason::UnsupportedKind(msg.kind));
                }
                Content::Text(msg.body)
            } else {
                Content::decode(&msg.kind, &msg.body).map_err(RejectReason::InvalidContent)?
            };
            // Checked before the replay guard records the id, and recorded after it: a message
            // held back for a transient reason is checked again from scratch.
            let record = inbox
                .history
                .check(&d.from_id, &outer_id, msg.sent_at, &content)?;
            check_signed_replay(inbox, &d.from_id, &outer_id, msg.sent_at)?;
            inbox.history.commit(record);
            Ok(opened(
                &d.from_id,
                d.timestamp,
                outer_id,
                msg.sent_at,
                content,
                Algorithm::LatticeV1,
            ))
        }
        ml_kem_aes::ALGORITHM => {
            // A peer with a pinned identity always signs; an unsigned message in its name is a
            // downgrade (a forging server), refused.
            let pinned = inbox
                .trust
                .key_store()
                .pinned(&d.from_id)
                .map_err(|e| RejectReason::SenderKeyUnavailable(e.to_string()))?;
            if pinned.is_some() {
                return Err(RejectReason::Downgrade);
            }
            let plaintext = ml_kem_aes::open(kem, &sealed).map_err(|_| RejectReason::Decrypt)?;
            let text = String::from_utf8(plaintext.to_vec()).map_err(|_| RejectReason::NotUtf8)?;
            if let Some(id) = &d.message_id {
                check_unsigned_replay(inbox, &d.from_id, id)?;
            }
            Ok(Opened::Message(Box::new(IncomingMessage {
                from: d.from_id.clone(),
                content: Content::Text(text.clone()),
                text,
                message_id: d.message_id.clone(),
                verified: false,
                algorithm: Algorithm::MlKemAes,
                sent_at: None,
                server_timestamp: d.timestamp,
            })))
        }
        other => Err(RejectReason::UnsupportedAlgorithm(
            other.chars().take(32).collect(),
        )),
    }
}

/// A verified message (`lattice-v1` version 1 or 2, or a 1:1 MLS message) that passed every
/// check, as what it is to the app.
pub(crate) fn opened(
    from: &ClientId,
    server_timestamp: u64,
    message_id: MessageId,
    sent_at: u64,
    content: Content,
    algorithm: Algorithm,
) -> Opened {
    let update = |change| {
        Opened::Update(ContentUpdate {
            from: from.clone(),
            message_id: message_id.clone(),
            sent_at,
            server_timestamp,
            change,
        })
    };
    match content {
        Content::Edit { target, text } => update(Change::Edited { target, text }),
        Content::Delete { target } => update(Change::Deleted { target }),
        Content::Reaction {
            target,
            emoji,
            action,
        } => update(Change::Reaction {
            target,
            emoji,
            action,
        }),
        Content::Receipt { read } => update(Change::Read { message_ids: read }),
        Content::Typing { started } => update(Change::Typing { started }),
        Content::FileDigest { target, digest } => update(Change::FileDigest { target, digest }),
        content => Opened::Message(Box::new(IncomingMessage {
            from: from.clone(),
            text: content.display_text().unwrap_or_default(),
            content,
            message_id: Some(message_id.clone()),
            verified: true,
            algorithm,
            sent_at: Some(sent_at),
            server_timestamp,
        })),
    }
}

/// Why a message is refused when its sender's identity key cannot be had: final when the key
/// cannot exist (the server does not know the sender, or it has no identity key), a key change
/// when the key changed, transient otherwise (a timeout, no connection, a server or store error).
fn sender_key_refusal(e: PeerError) -> RejectReason {
    match e {
        PeerError::KeyChanged { .. } => RejectReason::KeyChanged,
        PeerError::NoIdentityKey { .. }
        | PeerError::Server {
            error_type: ErrorType::PeerNotFound,
            ..
        } => RejectReason::NoSenderKey,
        PeerError::KeyDowngrade { .. } => RejectReason::Downgrade,
        other => RejectReason::SenderKeyUnavailable(other.to_string()),
    }
}

fn already_seen(inbox: &Inbox, from: &ClientId, id: &MessageId) -> bool {
    lock(&inbox.replay).seen_signed(from, id)
}

fn check_signed_replay(
    inbox: &Inbox,
    from: &ClientId,
    id: &MessageId,
    sent_at: u64,
) -> Result<(), RejectReason> {
    let store = inbox.replay_store.as_ref();
    let fresh = lock(&inbox.replay)
        .record_signed(store, from, id, sent_at)
        .map_err(|e| RejectReason::ReplayStoreUnavailable(e.to_string()))?;
    match fresh {
        Fresh::New => Ok(()),
        Fresh::Duplicate => Err(RejectReason::Replay),
        Fresh::BelowMark => {
            tracing::info!(peer = %inbox.client_id, from = %from, message_id = %id, "signed message not newer than the sender's high-water mark, dropped as a duplicate");
            Err(RejectReason::Replay)
        }
    }
}

fn check_unsigned_replay(
    inbox: &Inbox,
    from: &ClientId,
    id: &MessageId,
) -> Result<(), RejectReason> {
    let fresh = lock(&inbox.replay).record_unsigned(from, id);
    if fresh {
        Ok(())
    } else {
        Err(RejectReason::Replay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::{ContentError, MessageRef, ReactionAction};
    use crate::keys::PeerKey;
    use crate::outbox::{seal_at, Sender};
    use crate::testkit::{id, key_response, Kit};
    use crate::wire::new_message_id;
    use lattice_protocol::ClientFrame;
    use std::time::Duration;

    /// A message `from` seals to `to`, signed at `sent_at`.
    fn sealed(from: &Kit, to: &Kit, text: &str, sent_at: u64) -> Delivered {
        let key = PeerKey {
            peer_id: to.me.clone(),
            kem: to.identity.kem_public_key().clone(),
            identity: Some(to.identity.identity_public_key()),
        };
        let sender = Sender {
            client_id: from.me.clone(),
            identity: Some(Arc::clone(&from.identity)),
        };
        let message_id = new_message_id();
        let (envelope, _) = seal_at(
            &sender,
            &key,
            &message_id,
            &Content::Text(text.into()),
            sent_at,
        )
        .unwrap();
        Delivered {
            message: serde_json::value::to_raw_value(&envelope).unwrap(),
            from_id: from.me.clone(),
            timestamp: sent_at,
            message_id: Some(message_id),
        }
    }

    /// A message `from` seals to `to` with `content`, signed at `sent_at`.
    fn sealed_content(from: &Kit, to: &Kit, content: &Content, sent_at: u64) -> Delivered {
        let message_id = new_message_id();
        let (envelope, _) =
            seal_at(&sender(from), &key_of(to), &message_id, content, sent_at).unwrap();
        delivered(from, envelope, message_id, sent_at)
    }

    fn sender(kit: &Kit) -> Sender {
        Sender {
            client_id: kit.me.clone(),
            identity: Some(Arc::clone(&kit.identity)),
        }
    }

    fn key_of(kit: &Kit) -> PeerKey {
        PeerKey {
            peer_id: kit.me.clone(),
            kem: kit.identity.kem_public_key().clone(),
            identity: Some(kit.identity.identity_public_key()),
        }
    }

    fn delivered(from: &Kit, envelope: Envelope, message_id: MessageId, sent_at: u64) -> Delivered {
        Delivered {
            message: serde_json::value::to_raw_value(&envelope).unwrap(),
            from_id: from.me.clone(),
            timestamp: sent_at,
            message_id: Some(message_id),
        }
    }

    /// An inner message signed by `from` for `to` as version `signed_v` says, then given the
    /// fields `v` and `kind` (a forgery when they differ from what was signed), sealed.
    fn forged(
        from: &Kit,
        to: &Kit,
        signed: (u32, &str),
        shown: (u32, &str),
        body: &str,
    ) -> Delivered {
        let message_id = new_message_id();
        let sent_at = now_ms();
        let (me, them) = (from.me.as_str(), to.me.as_str());
        let payload = if signed.0 == INNER_VERSION_1 {
            message_signature_payload(me, them, message_id.as_str(), sent_at, body.as_bytes())
        } else {
            content_signature_payload(&ContentStatement {
                sender_id: me,
                recipient_id: them,
                message_id: message_id.as_str(),
                sent_at_ms: sent_at,
                version: signed.0,
                kind: signed.1,
                body: body.as_bytes(),
            })
        }
        .unwrap();
        let inner = InnerMessage {
            v: shown.0,
            kind: shown.1.into(),
            message_id: message_id.clone(),
            body: body.into(),
            sent_at,
            sig: B64.encode(from.identity.identity_key().sign(&payload)),
        };
        let (envelope, _) = crate::outbox::seal_inner(&sender(from), &key_of(to), &inner).unwrap();
        delivered(from, envelope, message_id, sent_at)
    }

    /// Opens `d` as `kit`, answering the one key request a failed signature makes.
    async fn open_answering(
        kit: &mut Kit,
        d: &Delivered,
        sender: &Kit,
    ) -> Result<Opened, RejectReason> {
        let inbox = Arc::clone(&kit.inbox);
        let resp = key_response(&sender.me, &sender.identity, true);
        let opening = inbox.open_one(d);
        tokio::pin!(opening);
        tokio::select! {
            r = &mut opening => r,
            () = kit.answer_key_request(resp) => opening.await,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_old_version_message_is_still_read_and_a_forged_kind_or_version_fails() {
        let (alice, mut bob) = (Kit::new("alice"), Kit::new("bob"));
        pin(&bob, &alice);
        // Version 1 (kind and v unsigned), as older Lattice peers send it: still read as text.
        let old = forged(
            &alice,
            &bob,
            (1, "text"),
            (1, "text"),
            "from an older client",
        );
        let m = bob
            .inbox
            .open_one(&old)
            .await
            .unwrap()
            .into_message()
            .unwrap();
        assert_eq!(m.content, Content::Text("from an older client".into()));
        assert!(m.verified);
        // Version 1 never carried other kinds: refused, not shown as text.
        let v1_kind = forged(&alice, &bob, (1, "text"), (1, "edit"), "x");
        assert!(matches!(
            bob.inbox.open_one(&v1_kind).await,
            Err(RejectReason::UnsupportedKind(_))
        ));
        // Version 2 signs v and kind: changing either breaks the signature.
        let body = r#"{"target":"m1"}"#;
        for shown in [(2, "edit"), (2, "poll"), (1, "delete"), (1, "text")] {
            let d = forged(&alice, &bob, (2, "delete"), shown, body);
            assert_eq!(
                open_answering(&mut bob, &d, &alice).await.unwrap_err(),
                RejectReason::BadSignature,
                "{shown:?}"
            );
        }
        // A version 1 signature passed off as version 2.
        let d = forged(&alice, &bob, (1, "text"), (2, "text"), "hi");
        assert_eq!(
            open_answering(&mut bob, &d, &alice).await.unwrap_err(),
            RejectReason::BadSignature
        );
        // An unknown version.
        let d = forged(&alice, &bob, (3, "text"), (3, "text"), "hi");
        assert_eq!(
            bob.inbox.open_one(&d).await.unwrap_err(),
            RejectReason::MalformedPlaintext
        );
        // A well-signed version 2 content that breaks a bound: a typed refusal.
        let d = forged(&alice, &bob, (2, "delete"), (2, "delete"), "{}");
        assert!(matches!(
            bob.inbox.open_one(&d).await,
            Err(RejectReason::InvalidContent(ContentError::Malformed {
                kind: "delete"
            }))
        ));
    }

    fn update(o: Opened) -> Change {
        match o {
            Opened::Update(u) => u.change,
            Opened::Message(m) => panic!("a message, not an update: {m:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn every_kind_opens_and_changes_are_checked_against_the_history() {
        let (alice, bob) = (Kit::new("alice"), Kit::new("bob"));
        pin(&bob, &alice);
        bob.trust
            .check_key(key_response(&alice.me, &alice.identity, true))
            .unwrap();
        // Bob's own message to alice, which she may react to, answer and acknowledge.
        let ours = bob
            .outbox
            .send(
                &alice.me,
                &Content::Text("hello alice".into()),
                new_message_id(),
            )
            .await
            .unwrap()
            .message_id;
        let ours_ref = MessageRef {
            sender: bob.me.clone(),
            message_id: ours.clone(),
        };
        let t0 = now_ms();
        let open = |c: Content, at: u64| {
            let d = sealed_content(&alice, &bob, &c, at);
            let inbox = Arc::clone(&bob.inbox);
            async move { inbox.open_one(&d).await }
        };
        let first = sealed_content(&alice, &bob, &Content::Text("hi bob".into()), t0);
        let theirs = first.message_id.clone().unwrap();
        let m = bob
            .inbox
            .open_one(&first)
            .await
            .unwrap()
            .into_message()
            .unwrap();
        assert_eq!(m.text, "hi bob");

        let reply = Content::Reply {
            to: ours_ref.clone(),
            excerpt: "hello alice".into(),
            text: "hi again".into(),
        };
        let m = open(reply.clone(), t0 + 1)
            .await
            .unwrap()
            .into_message()
            .unwrap();
        assert_eq!((m.text.as_str(), &m.content), ("hi again", &reply));

        let edit = |text: &str| Content::Edit {
            target: theirs.clone(),
            text: text.into(),
        };
        let d = sealed_content(&alice, &bob, &edit("hi Bob"), t0 + 2);
        assert_eq!(
            update(bob.inbox.open_one(&d).await.unwrap()),
            Change::Edited {
                target: theirs.clone(),
                text: "hi Bob".into()
            }
        );
        // The same edit again is a replay; an older edit sent later is ignored too.
        assert_eq!(
            bob.inbox.open_one(&d).await.unwrap_err(),
            RejectReason::Replay
        );
        assert_eq!(
            open(edit("stale"), t0 + 1).await.unwrap_err(),
            RejectReason::Replay
        );

        let react = |target: MessageRef| Content::Reaction {
            target,
            emoji: "👍".into(),
            action: ReactionAction::Add,
        };
        assert!(matches!(
            update(open(react(ours_ref.clone()), t0 + 3).await.unwrap()),
            Change::Reaction { .. }
        ));
        assert_eq!(
            update(
                open(
                    Content::Receipt {
                        read: vec![ours.clone()]
                    },
                    t0 + 4
                )
                .await
                .unwrap()
            ),
            Change::Read {
                message_ids: vec![ours.clone()]
            }
        );
        assert_eq!(
            update(
                open(Content::Typing { started: true }, t0 + 5)
                    .await
                    .unwrap()
            ),
            Change::Typing { started: true }
        );
        // A kind this version does not know (sent by a newer client): shown as unsupported.
        let newer = forged(&alice, &bob, (2, "poll"), (2, "poll"), "{}");
        let m = bob
            .inbox
            .open_one(&newer)
            .await
            .unwrap()
            .into_message()
            .unwrap();
        assert_eq!(
            m.content,
            Content::Unsupported {
                kind: "poll".into()
            }
        );
        assert_eq!(m.text, "[unsupported message: poll]");

        // Attacks: an edit or a delete of bob's message, a reaction to a message that does not
        // exist, a receipt for a message bob never sent. All final (acknowledged, reported).
        let not_hers = Content::Edit {
            target: ours.clone(),
            text: "forged".into(),
        };
        for (content, reason) in [
            (not_hers, RejectReason::NotOriginalSender),
            (
                Content::Delete {
                    target: ours.clone(),
                },
                RejectReason::NotOriginalSender,
            ),
            (
                react(MessageRef {
                    sender: bob.me.clone(),
                    message_id: new_message_id(),
                }),
                RejectReason::UnknownTarget,
            ),
            (
                Content::Receipt {
                    read: vec![theirs.clone()],
                },
                RejectReason::UnknownTarget,
            ),
            (
                Content::Receipt {
                    read: vec![new_message_id()],
                },
                RejectReason::UnknownTarget,
            ),
        ] {
            let got = open(content, t0 + 6).await.unwrap_err();
            assert_eq!(got, reason);
            assert!(!got.is_transient());
        }
        // Deleted, then neither edited nor deleted again.
        let delete = Content::Delete {
            target: theirs.clone(),
        };
        assert_eq!(
            update(open(delete.clone(), t0 + 7).await.unwrap()),
            Change::Deleted {
                target: theirs.clone()
            }
        );
        assert_eq!(
            open(delete, t0 + 8).await.unwrap_err(),
            RejectReason::Replay
        );
        assert_eq!(
            open(edit("late"), t0 + 9).await.unwrap_err(),
            RejectReason::Replay
        );
    }

    fn pin(kit: &Kit, other: &Kit) {
        use crate::KeyStore as _;
        kit.store
            .pin(&other.me, &other.identity.identity_public_key())
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_opens_once_and_its_copy_is_a_replay() {
        let (alice, bob) = (Kit::new("alice"), Kit::new("bob"));
        pin(&bob, &alice);
        let d = sealed(&alice, &bob, "hello", now_ms());
        let m = bob
            .inbox
            .open_one(&d)
            .await
            .unwrap()
            .into_message()
            .unwrap();
        assert_eq!((m.text.as_str(), m.verified), ("hello", true));
        assert!(matches!(
            bob.inbox.open_one(&d).await,
            Err(RejectReason::Replay)
        ));
        // Addressed to someone else: does not open for bob.
        let carol = Kit::new("carol");
        let other = sealed(&alice, &carol, "not yours", now_ms());
        assert!(matches!(
            bob.inbox.open_one(&other).await,
            Err(RejectReason::Decrypt)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn stale_or_future_dated_messages_are_refused_for_good() {
        let (alice, bob) = (Kit::new("alice"), Kit::new("bob"));
        pin(&bob, &alice);
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap();
        let old = now_ms() - ms(defaults::MAX_MESSAGE_AGE) - 60_000;
        let ahead = now_ms() + ms(defaults::MAX_CLOCK_SKEW) + 60_000;
        for sent_at in [old, ahead] {
            let reason = bob
                .inbox
                .open_one(&sealed(&alice, &bob, "x", sent_at))
                .await
                .unwrap_err();
            assert!(!reason.is_transient(), "{reason:?}");
            assert!(!matches!(reason, RejectReason::Replay), "{reason:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_whose_key_cannot_be_had_is_held_unacknowledged_then_opened() {
        let alice = Kit::new("alice");
        let mut bob = Kit::new("bob");
        let d = sealed(&alice, &bob, "late", now_ms());
        let message_id = d.message_id.clone().unwrap();
        let cancel = CancellationToken::new();
        let worker = tokio::spawn(worker(
            Arc::clone(&bob.inbox),
            bob.received_rx.take().unwrap(),
            cancel.clone(),
        ));
        bob.received_tx.send(d).await.unwrap();
        // The server never answers the first key request: refused (transient), held, not acked.
        let first = bob.sent().await;
        assert!(matches!(first.body, ClientFrame::RequestPublicKey(_)));
        // Its retry time comes: asked again, answered, delivered, acknowledged.
        bob.answer_key_request(key_response(&alice.me, &alice.identity, true))
            .await;
        let ack = bob.sent().await;
        assert!(
            matches!(&ack.body, ClientFrame::Ack(a) if a.message_id == message_id && a.from_id.as_ref() == Some(&alice.me)),
            "{:?}",
            ack.body
        );
        let events = bob.take_events();
        let refused: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                PeerEvent::Error(PeerError::Rejected { reason, .. }) => Some(reason.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert!(refused[0].is_transient());
        assert!(events
            .iter()
            .any(|e| matches!(e, PeerEvent::Message(m) if m.text == "late")));
        cancel.cancel();
        worker.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_refused_too_often_for_too_long_is_given_up_and_acknowledged() {
        let alice = Kit::new("alice");
        let mut bob = Kit::new("bob");
        let policy = RetryPolicy {
            base: Duration::from_secs(1),
            max: Duration::from_secs(1),
            max_refusals: 2,
            give_up_after: Duration::from_secs(5),
        };
        let inbox = Arc::new(Inbox::with_policy(
            bob.me.clone(),
            Some(Arc::clone(&bob.identity)),
            Arc::clone(&bob.trust),
            Arc::clone(&bob.link),
            Arc::clone(&bob.dispatcher),
            (
                Arc::new(crate::MemoryReplayStore::default()),
                Arc::new(History::new(bob.me.clone(), Arc::new(crate::NoHistory))),
            ),
            policy,
        ));
        let d = sealed(&alice, &bob, "never", now_ms());
        let message_id = d.message_id.clone().unwrap();
        let cancel = CancellationToken::new();
        let worker = tokio::spawn(worker(
            inbox,
            bob.received_rx.take().unwrap(),
            cancel.clone(),
        ));
        bob.received_tx.send(d).await.unwrap();
        // Two key requests time out (the server never answers); then it is given up and acked.
        for _ in 0..2 {
            assert!(matches!(
                bob.sent().await.body,
                ClientFrame::RequestPublicKey(_)
            ));
        }
        let ack = bob.sent().await;
        assert!(matches!(&ack.body, ClientFrame::Ack(a) if a.message_id == message_id));
        let gave_up = bob.take_events().into_iter().any(|e| {
            matches!(
                e,
                PeerEvent::Error(PeerError::Rejected {
                    reason: RejectReason::GaveUp { attempts: 2, .. },
                    ..
                })
            )
        });
        assert!(gave_up);
        cancel.cancel();
        worker.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn held_messages_are_dropped_when_the_connection_ends_and_released_per_sender() {
        let (alice, bob) = (Kit::new("alice"), Kit::new("bob"));
        let d = sealed(&alice, &bob, "x", now_ms());
        lock(&bob.inbox.backlog).held.hold(d.clone(), None);
        bob.inbox.release_held(&id("carol"));
        assert!(
            lock(&bob.inbox.backlog).held.next_ready().is_none(),
            "only the named sender's"
        );
        bob.inbox.release_held(&alice.me);
        assert!(lock(&bob.inbox.backlog).held.next_ready().is_some());
        lock(&bob.inbox.backlog).held.hold(d, None);
        bob.inbox.connection_ended();
        bob.inbox.release_held(&alice.me);
        assert!(
            lock(&bob.inbox.backlog).held.next_ready().is_none(),
            "the server redelivers instead"
        );
    }

    fn d(from: &str, n: u64) -> Delivered {
        Delivered {
            message: serde_json::value::to_raw_value(&n).unwrap(),
            from_id: ClientId::new(from).unwrap(),
            timestamp: n,
            message_id: None,
        }
    }

    #[test]
    fn senders_take_turns_and_each_keeps_its_order_and_bound() {
        let mut fair = Fair::default();
        for n in 0..3 {
            fair.push(d("slow", n), false).unwrap();
        }
        fair.push(d("bob", 10), false).unwrap();
        fair.push(d("carol", 20), false).unwrap();
        // One message per sender at a time; slow's second waits for its first, not bob's.
        let first: Vec<u64> = std::iter::from_fn(|| fair.next())
            .map(|m| m.timestamp)
            .collect();
        assert_eq!(first, [0, 10, 20]);
        fair.done(&ClientId::new("bob").unwrap());
        assert!(fair.next().is_none(), "slow is still busy with its first");
        fair.done(&ClientId::new("slow").unwrap());
        assert_eq!(fair.next().map(|m| m.timestamp), Some(1));
        // A released held message goes first in its sender's queue.
        fair.push(d("slow", 99), true).unwrap();
        fair.done(&ClientId::new("slow").unwrap());
        assert_eq!(fair.next().map(|m| m.timestamp), Some(99));
        // One sender's queue is bounded; another sender still gets in.
        let mut refused = 0;
        let flood = defaults::RECEIVE_QUEUE_PER_SENDER + 50;
        for n in 0..flood {
            if fair.push(d("flood", n as u64), false).is_err() {
                refused += 1;
            }
        }
        assert_eq!(refused, 50);
        assert!(fair.push(d("dave", 1), false).is_ok());
    }

    #[test]
    fn at_most_receive_concurrency_senders_are_opened_at_once() {
        let mut fair = Fair::default();
        for i in 0..defaults::RECEIVE_CONCURRENCY + 3 {
            fair.push(d(&format!("s{i}"), 0), false).unwrap();
        }
        let started = std::iter::from_fn(|| fair.next()).count();
        assert_eq!(started, defaults::RECEIVE_CONCURRENCY);
        fair.done(&ClientId::new("s0").unwrap());
        assert!(
            fair.next().is_some(),
            "a freed slot goes to the next sender"
        );
    }
}
