//! One session: a [`MessagingPeer`] connected to the chosen server (and, in host mode, the
//! embedded server it connects to), from start to stop.
//!
//! Tasks, all owned by the session's [`TaskTracker`] and stopped through its
//! [`CancellationToken`] (the first, `biased` arm of every `select!`):
//! - **connect**: awaits the first registration; the peer itself keeps dialling meanwhile
//!   (`PeerConfig::retry_first_connect`, the same backoff it uses after a loss), and a permanent
//!   refusal (name taken, bad URL) ends it with a readable reason.
//! - **worker**: woken through a [`Notify`] (wake-ups coalesce, nothing queues up): refreshes
//!   presence after each (re)registration, then sends what waits in the durable outbox, in order.
//!
//! Peer events arrive through one handler registered with [`MessagingPeer::on_event`]: handlers
//! never lose events (an event *stream* may lag), and it is short — a SQLite write and a message
//! to the page — so it can run on the peer's tasks. Its slow follow-ups go to the worker.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use lattice_crypto::{Fingerprint, Identity};
use lattice_peer::{
    Backoff, ConnectionState, HandlerHandle, MessagingPeer, PeerConfig, PeerError, PeerEvent,
    RejectReason,
};
use lattice_protocol::{AckStatus, ClientId, ErrorType, MessageId, QuestionId, QuestionKind};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::CommandError;
use crate::hosting::Hosted;
use crate::messenger::{now_ms, Messenger};
use crate::storage::keystore::{DbKeyStore, DbReplayStore};
use crate::storage::settings::{ServerMode, Settings};
use crate::storage::MessageStatus;
use crate::views::{ConnectionView, QuestionView};

/// How long stopping waits for the peer to close before giving up on a clean close.
const STOP_TIMEOUT: Duration = Duration::from_secs(3);

/// Keys fetched in the background after a (re)connect, at most: enough for a LAN or a team,
/// without asking a big server for every key it knows.
const PREFETCH_KEYS: usize = 32;

/// After a transient failure while still connected (a timeout, a full queue), the outbox is
/// tried again after this long; a reconnect wakes it sooner.
const OUTBOX_RETRY: Duration = Duration::from_secs(5);

/// Acks that arrived before their send returned (so before we knew their wire id); tiny and
/// bounded because that race needs a round trip to lose.
const EARLY_ACKS: usize = 64;

/// What the handler, the worker and the session share.
struct Ctx {
    messenger: Weak<Messenger>,
    peer: MessagingPeer,
    backoff: Backoff,
    server_url: String,
    hosting: Option<String>,
    /// True until the first registration: the connect task owns the indicator meanwhile.
    connecting: AtomicBool,
    /// Set on each (re)registration: the worker then refreshes presence.
    refresh: AtomicBool,
    wake: Notify,
    // std Mutex: small maps touched by the handler and the worker, never across an `.await`.
    flow: Mutex<Flow>,
    // std Mutex: a map lookup on the event path.
    refusal_notices: Mutex<NoticeLimiter>,
}

/// A refused message is worth telling the person about, but a flood of them (any registered
/// client can send thousands) must not become a flood of notices: at most one per sender per
/// [`REFUSAL_NOTICE_INTERVAL`], for at most [`REFUSAL_NOTICE_SENDERS`] senders at a time.
#[derive(Debug, Default)]
struct NoticeLimiter {
    last: HashMap<String, tokio::time::Instant>,
}

/// Refusals of one sender told at most once in this long.
const REFUSAL_NOTICE_INTERVAL: Duration = Duration::from_secs(60);
/// Senders whose last notice is remembered; beyond this, notices wait until some expire.
const REFUSAL_NOTICE_SENDERS: usize = 256;

impl NoticeLimiter {
    /// Whether a refusal from `sender` at `now` is told.
    fn allow(&mut self, sender: &str, now: tokio::time::Instant) -> bool {
        let fresh = |at: &tokio::time::Instant| now.duration_since(*at) < REFUSAL_NOTICE_INTERVAL;
        if self.last.get(sender).is_some_and(fresh) {
            return false;
        }
        if self.last.len() >= REFUSAL_NOTICE_SENDERS {
            self.last.retain(|_, at| fresh(at));
            if self.last.len() >= REFUSAL_NOTICE_SENDERS {
                return false;
            }
        }
        self.last.insert(sender.to_owned(), now);
        true
    }
}

/// Outgoing messages in flight.
#[derive(Default)]
struct Flow {
    /// Local ids handed to the peer by this session (the peer queues and resends them itself);
    /// anything else in the outbox still has to be handed over.
    handed: HashSet<String>,
    /// Wire message id → local id, until the server's verdict.
    wire_to_local: HashMap<String, String>,
    /// Verdicts that arrived before the wire id was known.
    early: HashMap<String, MessageStatus>,
}

/// A running session. Stop it with [`Session::stop`].
pub struct Session {
    ctx: Arc<Ctx>,
    cancel: CancellationToken,
    tasks: TaskTracker,
    handler: HandlerHandle,
    hosted: Option<Hosted>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("server_url", &self.ctx.server_url)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Starts hosting (in host mode), builds the peer and starts connecting in the background.
    ///
    /// # Errors
    /// [`CommandError::Hosting`] if the embedded server cannot start; [`CommandError::InvalidInput`]
    /// if the peer rejects the server URL.
    pub async fn start(
        messenger: Arc<Messenger>,
        settings: &Settings,
        client_id: ClientId,
        identity: Arc<Identity>,
    ) -> Result<Self, CommandError> {
        let (hosted, server_url, hosting) = match settings.server_mode {
            ServerMode::Host => {
                let hosted = Hosted::start(messenger.data_dir(), settings.host_port).await?;
                let url = hosted.local_url();
                let shown = hosted.shown_address();
                (Some(hosted), url, Some(shown))
            }
            ServerMode::Connect => (None, settings.server_url.clone(), None),
        };

        // A desktop app never gives up: it keeps trying at the capped interval.
        let backoff = Backoff {
            max_attempts: 0,
            ..Backoff::default()
        };
        // PeerConfig::new takes an owned identity; a copy made through the file format is
        // replaced at once by the shared one, so only one copy of the secret stays alive.
        let copy = Identity::from_bytes(&identity.to_bytes())
            .map_err(|e| CommandError::Internal(format!("identity: {e}")))?;
        let mut config = PeerConfig::new(server_url.clone(), client_id, copy);
        config.identity = identity;
        config.reconnect = backoff.clone();
        config.retry_first_connect = true;
        config.key_store = Arc::new(DbKeyStore::new(Arc::clone(messenger.db())));
        let peer =
            // Replay marks on disk: a signed message accepted before a restart stays a replay.
            MessagingPeer::with_replay_store(
                config,
                Arc::new(DbReplayStore::new(Arc::clone(messenger.db()))),
            )
            .map_err(|e| CommandError::InvalidInput(describe(&e)))?;

        let ctx = Arc::new(Ctx {
            messenger: Arc::downgrade(&messenger),
            peer: peer.clone(),
            backoff,
            server_url,
            hosting,
            connecting: AtomicBool::new(true),
            refresh: AtomicBool::new(false),
            wake: Notify::new(),
            flow: Mutex::new(Flow::default()),
            refusal_notices: Mutex::new(NoticeLimiter::default()),
        });
        let handler = {
            let ctx = Arc::clone(&ctx);
            peer.on_event(move |ev| ctx.on_event(ev))
        };
        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();
        tasks.spawn(connect_task(Arc::clone(&ctx), cancel.clone()));
        tasks.spawn(worker_task(Arc::clone(&ctx), cancel.clone()));
        tasks.close();
        Ok(Self {
            ctx,
            cancel,
            tasks,
            handler,
            hosted,
        })
    }

    /// Wakes the worker to send what waits in the outbox.
    pub fn wake_outbox(&self) {
        self.ctx.wake.notify_one();
    }

    /// Fetches `peer`'s key in the background if none is pinned (so its fingerprint shows and a
    /// key change is noticed before anything is sent).
    pub fn prefetch_key(&self, peer: &str) {
        let Ok(id) = ClientId::try_from(peer) else {
            return;
        };
        let ctx = Arc::clone(&self.ctx);
        let cancel = self.cancel.clone();
        if !self.cancel.is_cancelled() {
            // A closed tracker still takes tasks; `stop` awaits them with the others.
            self.tasks.spawn(async move {
                tokio::select! {
                    biased;
                    () = cancel.cancelled() => {}
                    r = ctx.peer.request_public_key(&id) => if let Err(e) = r {
                        tracing::debug!(peer = %id, error = %e, "key prefetch failed");
                    },
                }
            });
        }
    }

    /// Answers a server question.
    ///
    /// # Errors
    /// [`CommandError::Peer`] with a readable reason.
    pub fn respond(
        &self,
        id: &QuestionId,
        response: serde_json::Value,
    ) -> Result<(), CommandError> {
        self.ctx
            .peer
            .respond_to_server(id, response)
            .map_err(|e| CommandError::Peer(describe(&e)))
    }

    /// Asks the server for its demo conversation.
    ///
    /// # Errors
    /// [`CommandError::Peer`] with a readable reason.
    pub fn demo_question(&self) -> Result<(), CommandError> {
        if self.ctx.peer.connection_state() != ConnectionState::Connected {
            return Err(CommandError::Peer(
                "Not connected to the server right now.".into(),
            ));
        }
        self.ctx
            .peer
            .debug_question()
            .map_err(|e| CommandError::Peer(describe(&e)))
    }

    /// Accepts a changed identity key of `peer`: pins the key the server presents now only if
    /// its fingerprint is `fingerprint`, the one the person compared (works after a restart
    /// too: the key is fetched).
    ///
    /// # Errors
    /// [`CommandError::InvalidInput`] for a malformed fingerprint; [`CommandError::Peer`] with a
    /// readable reason (including a key other than the one compared: nothing is pinned then).
    pub async fn accept_key_change(
        &self,
        peer: &str,
        fingerprint: &str,
    ) -> Result<(), CommandError> {
        let id = ClientId::try_from(peer)
            .map_err(|_| CommandError::InvalidInput(format!("{peer} is not a valid name.")))?;
        let fingerprint: Fingerprint = fingerprint.parse().map_err(|_| {
            CommandError::InvalidInput(format!("{fingerprint} is not a safety number."))
        })?;
        self.ctx
            .peer
            .accept_key_change(&id, &fingerprint)
            .await
            .map_err(|e| CommandError::Peer(describe(&e)))
    }

    /// Disconnects, stops the tasks and the embedded server, and waits for all of it.
    pub async fn stop(mut self) {
        self.cancel.cancel();
        self.handler.remove();
        if tokio::time::timeout(STOP_TIMEOUT, self.ctx.peer.disconnect())
            .await
            .is_err()
        {
            tracing::warn!("the peer did not close in time");
        }
        self.tasks.wait().await;
        if let Some(hosted) = self.hosted.take() {
            hosted.stop().await;
        }
    }
}

impl Drop for Session {
    /// A session dropped without [`Session::stop`] (the app torn down) still ends its tasks and
    /// breaks the handler → context → peer cycle, so the peer's own tasks end too. The embedded
    /// server's handle stops it on drop.
    fn drop(&mut self) {
        self.cancel.cancel();
        self.handler.remove();
    }
}

impl Ctx {
    fn view(
        &self,
        state: &'static str,
        retry_in: Option<Duration>,
        detail: Option<String>,
    ) -> ConnectionView {
        ConnectionView {
            state,
            retry_in_secs: retry_in.map(|d| d.as_secs().max(1)),
            server_url: Some(self.server_url.clone()),
            hosting: self.hosting.clone(),
            detail,
        }
    }

    /// The one peer event handler. Short: SQLite writes and updates to the page.
    fn on_event(&self, ev: &PeerEvent) {
        let Some(m) = self.messenger.upgrade() else {
            return;
        };
        match ev {
            PeerEvent::ConnectionState(state) => self.on_state(&m, *state),
            PeerEvent::Registered { .. } => {
                self.refresh.store(true, Ordering::Relaxed);
                self.wake.notify_one();
            }
            PeerEvent::Message(msg) => {
                let id = msg
                    .message_id
                    .as_ref()
                    .map(|id| id.as_str().to_owned())
                    .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
                let at = i64::try_from(msg.server_timestamp).unwrap_or_else(|_| now_ms());
                m.receive(&id, msg.from.as_str(), &msg.text, at, msg.verified);
            }
            PeerEvent::PeerConnected(id) => m.set_presence(id.as_str(), true),
            PeerEvent::PeerDisconnected(id) => m.set_presence(id.as_str(), false),
            PeerEvent::ServerQuestion(q) => m.question(QuestionView {
                question_id: q.question_id.as_str().to_owned(),
                conversation_id: q.conversation_id.as_ref().map(|c| c.as_str().to_owned()),
                round: q.round,
                text: q.question.text.clone(),
                kind: match q.question.kind {
                    Some(QuestionKind::Choice) => "choice",
                    Some(QuestionKind::Confirm) => "confirm",
                    _ => "text",
                },
                options: q.question.options.clone().unwrap_or_default(),
            }),
            PeerEvent::MessageAck(ack) => {
                let status = match ack.status {
                    AckStatus::Delivered => MessageStatus::Delivered,
                    AckStatus::Queued => MessageStatus::Queued,
                };
                self.verdict(&m, ack.message_id.as_str(), status);
            }
            PeerEvent::MessageFailed {
                message_id,
                target,
                error,
            } => {
                self.verdict(&m, message_id.as_str(), MessageStatus::Failed);
                m.notice(
                    "messageFailed",
                    format!(
                        "A message to {target} was not delivered: {}",
                        describe(error)
                    ),
                );
            }
            PeerEvent::KeyChanged { peer, new, .. } => {
                if let Err(e) = m.db().set_key_change(peer.as_str(), &new.to_string()) {
                    tracing::warn!(error = %e, "cannot record a key change");
                }
                m.publish_peers();
                m.notice(
                    "keyChanged",
                    format!(
                        "{peer}'s safety number changed. Nothing is sent to or accepted from the \
                         new key until you accept it."
                    ),
                );
            }
            PeerEvent::Error(e) => {
                if let PeerError::Rejected { from, .. } = e {
                    if !lock(&self.refusal_notices)
                        .allow(from.as_str(), tokio::time::Instant::now())
                    {
                        tracing::debug!(from = %from, "refusal notice coalesced");
                        return;
                    }
                }
                if let Some(text) = describe_event_error(e) {
                    m.notice("peer", text);
                }
            }
            PeerEvent::Lagged { .. } => {}
            _ => {}
        }
    }

    fn on_state(&self, m: &Messenger, state: ConnectionState) {
        tracing::debug!(?state, "connection state");
        match state {
            ConnectionState::Connected => {
                self.connecting.store(false, Ordering::Relaxed);
                m.set_connection(self.view("connected", None, None));
                self.refresh.store(true, Ordering::Relaxed);
                self.wake.notify_one();
            }
            ConnectionState::Reconnecting { attempt } => {
                m.clear_presence();
                m.set_connection(self.view(
                    "reconnecting",
                    Some(self.backoff.nominal_delay(attempt)),
                    None,
                ));
            }
            // While the connect task dials, it owns the indicator.
            ConnectionState::Connecting | ConnectionState::Disconnected
                if self.connecting.load(Ordering::Relaxed) => {}
            ConnectionState::Connecting => m.set_connection(self.view("connecting", None, None)),
            ConnectionState::Disconnected => {
                m.clear_presence();
                m.set_connection(self.view("offline", None, Some("disconnected".into())));
            }
        }
    }

    /// Applies the server's verdict on a message we sent, by wire id.
    fn verdict(&self, m: &Messenger, wire_id: &str, status: MessageStatus) {
        let local = {
            let mut flow = lock(&self.flow);
            match flow.wire_to_local.remove(wire_id) {
                Some(local) => {
                    flow.handed.remove(&local);
                    Some(local)
                }
                None => {
                    if flow.early.len() < EARLY_ACKS {
                        flow.early.insert(wire_id.to_owned(), status);
                    }
                    None
                }
            }
        };
        if let Some(local) = local {
            m.advance(&local, status);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section leaves the maps consistent, so a poisoned lock is still usable.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The first connection: the peer dials until it registers (`retry_first_connect`, with the
/// same backoff as after a loss, shown through its `Reconnecting` states), then its own
/// supervisor keeps it connected. Only a permanent failure ends here.
async fn connect_task(ctx: Arc<Ctx>, cancel: CancellationToken) {
    if let Some(m) = ctx.messenger.upgrade() {
        m.set_connection(ctx.view("connecting", None, None));
    }
    let result = tokio::select! {
        biased;
        () = cancel.cancelled() => return,
        r = ctx.peer.connect() => r,
    };
    let Some(m) = ctx.messenger.upgrade() else {
        return;
    };
    tracing::debug!(ok = result.is_ok(), "first connection finished");
    ctx.connecting.store(false, Ordering::Relaxed);
    match result {
        Ok(()) => {
            m.set_connection(ctx.view("connected", None, None));
            ctx.refresh.store(true, Ordering::Relaxed);
            ctx.wake.notify_one();
        }
        Err(e) => {
            let text = describe(&e);
            m.set_connection(ctx.view("offline", None, Some(text.clone())));
            m.notice("connect", text);
        }
    }
}

/// Refreshes presence after registrations and drains the outbox, whenever woken (and again
/// after [`OUTBOX_RETRY`] when a transient failure paused it).
async fn worker_task(ctx: Arc<Ctx>, cancel: CancellationToken) {
    let mut retry_at: Option<tokio::time::Instant> = None;
    loop {
        let retry = async {
            match retry_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            () = ctx.wake.notified() => {}
            () = retry => {}
        }
        retry_at = None;
        if ctx.peer.connection_state() != ConnectionState::Connected {
            continue;
        }
        if ctx.refresh.swap(false, Ordering::Relaxed) {
            tokio::select! {
                biased;
                () = cancel.cancelled() => return,
                () = refresh_presence(&ctx) => {}
            }
        }
        let paused = tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            paused = flush_outbox(&ctx) => paused,
        };
        if paused {
            retry_at = Some(tokio::time::Instant::now() + OUTBOX_RETRY);
        }
    }
}

async fn refresh_presence(ctx: &Ctx) {
    let peers = match ctx.peer.discover_peers().await {
        Ok(peers) => peers,
        Err(e) => {
            tracing::warn!(error = %e, "discover failed");
            ctx.refresh.store(true, Ordering::Relaxed);
            return;
        }
    };
    let Some(m) = ctx.messenger.upgrade() else {
        return;
    };
    m.set_online(peers.iter().map(|p| p.as_str().to_owned()));
    drop(m);
    // Fetch keys of the people online we have not pinned yet, so their fingerprints show.
    let mut fetched = 0;
    for p in peers {
        if fetched >= PREFETCH_KEYS {
            break;
        }
        if matches!(ctx.peer.peer_fingerprint(&p), Ok(None)) {
            fetched += 1;
            if let Err(e) = ctx.peer.request_public_key(&p).await {
                tracing::debug!(peer = %p, error = %e, "key prefetch failed");
            }
        }
    }
    if fetched > 0 {
        if let Some(m) = ctx.messenger.upgrade() {
            m.publish_peers();
        }
    }
}

/// Hands every outbox entry not yet handed to the peer, oldest first. Stops at the first
/// transient failure and returns `true` (paused: try again later); a permanent failure fails
/// that message and goes on.
async fn flush_outbox(ctx: &Ctx) -> bool {
    let Some(m) = ctx.messenger.upgrade() else {
        return false;
    };
    let entries = match m.db().outbox() {
        Ok(entries) => entries,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the outbox");
            return true;
        }
    };
    drop(m);
    for entry in entries {
        if lock(&ctx.flow).handed.contains(&entry.message_id) {
            continue;
        }
        let (Ok(target), Ok(wire_id)) = (
            ClientId::try_from(entry.peer_id.as_str()),
            MessageId::try_from(entry.wire_id.as_str()),
        ) else {
            if let Some(m) = ctx.messenger.upgrade() {
                m.advance(&entry.message_id, MessageStatus::Failed);
            }
            continue;
        };
        // Always the id stored when the message was queued: if a previous run handed it to the
        // server but died before the ack, the recipient drops this copy as a duplicate.
        let result = ctx
            .peer
            .send_message_with_id(&target, &entry.body, wire_id)
            .await;
        let Some(m) = ctx.messenger.upgrade() else {
            return false;
        };
        match result {
            Ok(sent) => {
                let early = {
                    let mut flow = lock(&ctx.flow);
                    flow.handed.insert(entry.message_id.clone());
                    match flow.early.remove(sent.message_id.as_str()) {
                        Some(status) => {
                            flow.handed.remove(&entry.message_id);
                            Some(status)
                        }
                        None => {
                            flow.wire_to_local.insert(
                                sent.message_id.as_str().to_owned(),
                                entry.message_id.clone(),
                            );
                            None
                        }
                    }
                };
                if ctx.peer.connection_state() == ConnectionState::Connected {
                    m.advance(&entry.message_id, MessageStatus::Sent);
                }
                if let Some(status) = early {
                    m.advance(&entry.message_id, status);
                }
            }
            Err(PeerError::KeyChanged { .. }) => {
                // Blocked until the person accepts the new key; the banner says so.
            }
            Err(e) if is_transient(&e) => {
                tracing::info!(error = %e, "outbox paused");
                return true;
            }
            Err(e) => {
                m.advance(&entry.message_id, MessageStatus::Failed);
                m.notice(
                    "messageFailed",
                    format!("A message to {target} could not be sent: {}", describe(&e)),
                );
            }
        }
    }
    false
}

/// Failures that a later connection may not have.
fn is_transient(e: &PeerError) -> bool {
    match e {
        PeerError::NotConnected
        | PeerError::ConnectionLost { .. }
        | PeerError::Timeout { .. }
        | PeerError::QueueFull { .. }
        | PeerError::Connect { .. } => true,
        PeerError::Server { error_type, .. } => matches!(
            error_type,
            ErrorType::InternalError | ErrorType::RateLimited | ErrorType::RegistrationRequired
        ),
        _ => false,
    }
}

/// A sentence for people about a peer error.
pub fn describe(e: &PeerError) -> String {
    match e {
        PeerError::Connect { url, .. } => format!("Cannot reach the server at {url}."),
        PeerError::InvalidUrl { url, .. } => format!("{url} is not a valid server address."),
        PeerError::NotConnected | PeerError::ConnectionLost { .. } => {
            "Not connected to the server right now.".into()
        }
        PeerError::Timeout { .. } => "The server did not answer in time.".into(),
        PeerError::QueueFull { .. } => {
            "Too many messages are waiting to be sent; try again once reconnected.".into()
        }
        PeerError::MessageTooLarge { .. } => "That message is too large to send.".into(),
        PeerError::KeyChanged { peer, .. } => format!(
            "{peer}'s safety number changed; accept the new key before writing to them."
        ),
        PeerError::KeyMismatch { peer, .. } => format!(
            "The server now presents another key for {peer} than the one you compared; nothing was \
             accepted. Compare the new safety number first."
        ),
        PeerError::KeyDowngrade { peer } => format!(
            "{peer} now appears without a signed identity; messages are refused to keep them authenticated."
        ),
        PeerError::Server {
            error_type,
            details,
            ..
        } => match error_type {
            ErrorType::ClientIdTaken => {
                "That name is already taken on this server. Choose another in Settings.".into()
            }
            ErrorType::PeerNotFound => "That person is not known to the server.".into(),
            ErrorType::UnknownQuestion => "That question has expired.".into(),
            ErrorType::RateLimited => "Too many requests like this one are open on the server; try again in a moment.".into(),
            ErrorType::MailboxFull => {
                "Their mailbox on the server is full; try again later.".into()
            }
            _ => details.clone(),
        },
        other => other.to_string(),
    }
}

/// What to tell the person about an error event, if anything.
fn describe_event_error(e: &PeerError) -> Option<String> {
    match e {
        // The key-change event already told the person, louder.
        PeerError::Rejected {
            reason: RejectReason::KeyChanged,
            ..
        } => None,
        PeerError::Rejected { from, reason, .. } => Some(format!(
            "A message from {from} was refused because it could not be verified ({reason})."
        )),
        PeerError::Server {
            error_type: ErrorType::UnknownQuestion,
            ..
        } => Some("That question has expired.".into()),
        PeerError::ReceiveQueueFull { .. } => None,
        other => Some(describe(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_notices_are_one_per_sender_per_interval_and_bounded() {
        let mut limiter = NoticeLimiter::default();
        let start = tokio::time::Instant::now();
        // A flood from one sender: told once.
        let told = (0..1_000)
            .filter(|_| limiter.allow("mallory", start))
            .count();
        assert_eq!(told, 1);
        // Another sender is told about separately.
        assert!(limiter.allow("trent", start));
        // After the interval, once more.
        let later = start + REFUSAL_NOTICE_INTERVAL;
        assert!(limiter.allow("mallory", later));
        assert!(!limiter.allow("mallory", later));
        // Many fresh senders fill the memory; then no more notices until some expire.
        let mut limiter = NoticeLimiter::default();
        let told = (0..REFUSAL_NOTICE_SENDERS * 2)
            .filter(|n| limiter.allow(&format!("id{n}"), start))
            .count();
        assert_eq!(told, REFUSAL_NOTICE_SENDERS);
        assert!(limiter.last.len() <= REFUSAL_NOTICE_SENDERS);
        assert!(limiter.allow("newcomer", start + REFUSAL_NOTICE_INTERVAL));
        assert!(limiter.last.len() <= REFUSAL_NOTICE_SENDERS);
    }
}
