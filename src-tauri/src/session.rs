//! One session: a [`MessagingPeer`] connected to the chosen server (and, in host mode, the
//! embedded server it connects to), from start to stop.
//!
//! Calls come down from the messenger; what happens goes up as [`SessionEvent`]s on the
//! [`EventSink`] it was started with. The session holds no reference to the messenger.
//!
//! Tasks, all owned by the session's [`TaskTracker`] and stopped through its
//! [`CancellationToken`] (the first, `biased` arm of every `select!`):
//! - **connect**: awaits the first registration; the peer itself keeps dialling meanwhile
//!   (`PeerConfig::retry_first_connect`, the same backoff it uses after a loss, shown through
//!   its own `Reconnecting` states), and a permanent refusal (name taken, bad URL) ends it with
//!   a readable reason. There is no other reconnect loop: the indicator follows the peer's
//!   states only.
//! - **presence**: after each (re)registration, asks who is online and fetches the keys of the
//!   first few not pinned yet.
//! - **outbox**: [`Outbox::run`], which owns its own timing.
//!
//! Peer events arrive through one handler registered with [`MessagingPeer::on_event`]: handlers
//! never lose events (an event *stream* may lag). It translates them and queues them, with one
//! write: an incoming message is stored first ([`store_incoming`]), since the peer acknowledges
//! it to the server as soon as the handler returns.

mod devices;
mod files;
mod groups;

pub use devices::{Devices, NOT_A_CODE};
pub use files::{download_path, thumbnail_for_offer, AutoDownload, FILES_DIR, TRANSFERS_DIR};
pub use groups::{group_key, parse_key, Groups};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lattice_crypto::{Fingerprint, Identity};
use lattice_peer::{
    Backoff, Change, ConnectionState as PeerState, Content, ContentUpdate, HandlerHandle,
    MessagingPeer, PeerConfig, PeerError, PeerEvent, ReactionAction,
};
use lattice_protocol::{AckStatus, ClientId, QuestionId, QuestionKind as WireQuestionKind};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::now_ms;
use crate::contract::{ConnectionState, DeliveryStatus, ErrorKind, QuestionKind};
use crate::describe::{self, describe, describe_event};
use crate::events::{EventSink, SessionEvent};
use crate::hosting::{Hosted, HostingError};
use crate::outbox::Outbox;
use crate::storage::content::{DbHistory, Received, ReplyRef, Target};
use crate::storage::keystore::{DbKeyStore, DbReplayStore};
use crate::storage::settings::{ServerMode, Settings};
use crate::storage::Db;
use crate::views::{ConnectionView, Notice, QuestionView};

/// How long stopping waits for the peer to close before giving up on a clean close.
const STOP_TIMEOUT: Duration = Duration::from_secs(3);

/// Keys fetched in the background after a (re)connect, at most: enough for a LAN or a team,
/// without asking a big server for every key it knows.
const PREFETCH_KEYS: usize = 32;

/// Why a session could not start or a request through it failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The embedded server could not start.
    #[error(transparent)]
    Hosting(#[from] HostingError),
    /// The peer refused the configuration (an unusable server URL).
    #[error("{}", describe(.0))]
    InvalidServer(Box<PeerError>),
    /// The peer or the server refused the request.
    #[error("{}", describe(.0))]
    Peer(Box<PeerError>),
    /// The request needs a connection and there is none.
    #[error("{}", describe::NOT_CONNECTED)]
    NotConnected,
    /// The identity could not be handed to the peer.
    #[error("identity: {0}")]
    Identity(String),
    /// A folder the session needs (the transfers' journals, received files) cannot be made.
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    /// A linking request the person can fix (the text says how).
    #[error("{0}")]
    Linking(&'static str),
}

impl From<PeerError> for SessionError {
    fn from(e: PeerError) -> Self {
        Self::Peer(Box::new(e))
    }
}

/// What the handler and the tasks share.
struct Ctx {
    peer: MessagingPeer,
    /// Our client id (a reaction to our message names us as its sender).
    me: ClientId,
    /// Where incoming messages are stored before they are acknowledged.
    db: Arc<Db>,
    backoff: Backoff,
    server_url: String,
    hosting: Option<String>,
    events: EventSink,
    outbox: Arc<Outbox<MessagingPeer>>,
    /// Woken on each (re)registration: the presence task then asks who is online.
    refresh: Notify,
    /// The data directory (received files go to its [`FILES_DIR`]).
    data_dir: std::path::PathBuf,
    /// Incoming files up to this size are downloaded at once.
    auto_download: AutoDownload,
    // std Mutex: a map lookup on the event path.
    refusal_notices: Mutex<NoticeLimiter>,
    // std Mutex: a set lookup on the event path.
    leaving: Mutex<groups::Leaving>,
    /// Wakes the group outbox.
    group_wake: Arc<Notify>,
    // std Mutex: a small set touched on the event path and by a command, never across `.await`.
    link_codes: Mutex<devices::CodesSent>,
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

/// Which envelope messages to each peer go in, asked without the session's lock (a cheap
/// handle on the peer; see [`Session::envelopes`]).
#[derive(Clone)]
pub struct Envelopes(MessagingPeer);

impl std::fmt::Debug for Envelopes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Envelopes").finish_non_exhaustive()
    }
}

impl Envelopes {
    /// Whether messages to `peer` go over MLS (forward secret, post-compromise secure): it is
    /// pinned as speaking MLS, and nothing older is sent to or accepted from it.
    pub fn speaks_mls(&self, peer: &ClientId) -> bool {
        matches!(
            self.0.conversation_envelope(peer),
            Some(lattice_peer::Algorithm::Mls)
        )
    }
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

/// What a session is started with.
#[derive(Debug)]
pub struct SessionConfig<'a> {
    /// Which server, and whether to host it.
    pub settings: &'a Settings,
    /// Where the hosted server keeps its data.
    pub data_dir: &'a std::path::Path,
    /// Pins and replay marks live here; the outbox is read from here.
    pub db: Arc<Db>,
    /// Our name.
    pub client_id: ClientId,
    /// Which device of the id this app is: the primary (the identity) or a linked device.
    pub role: Role,
    /// The auto-download limit (the messenger changes it with the settings).
    pub auto_download: AutoDownload,
}

/// Which device of its id the app runs as.
pub enum Role {
    /// The id's primary device: it holds the identity.
    Primary(Arc<Identity>),
    /// A linked device, from its device file ([`crate::storage::DEVICE_FILE`]): MLS only, no
    /// identity key (docs/mls.md, *A linked device as a peer*).
    Device(Box<lattice_peer::LinkedDevice>),
}

impl std::fmt::Debug for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Primary(_) => f.write_str("Primary"),
            Self::Device(d) => f.debug_tuple("Device").field(&d.device_id).finish(),
        }
    }
}

impl Session {
    /// Starts hosting (in host mode), builds the peer and starts connecting in the background.
    /// Everything that happens from then on is sent to `events`.
    ///
    /// # Errors
    /// [`SessionError::Hosting`] if the embedded server cannot start;
    /// [`SessionError::InvalidServer`] if the peer rejects the server URL.
    pub async fn start(config: SessionConfig<'_>, events: EventSink) -> Result<Self, SessionError> {
        let SessionConfig {
            settings,
            data_dir,
            db,
            client_id,
            role,
            auto_download,
        } = config;
        let (hosted, server_url, hosting) = match settings.server_mode {
            ServerMode::Host => {
                let hosted = Hosted::start(data_dir, settings.host_port).await?;
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
        let me = client_id.clone();
        let mut config = match role {
            Role::Primary(identity) => {
                // PeerConfig::new takes an owned identity; a copy made through the file format
                // is replaced at once by the shared one, so only one copy of the secret stays
                // alive.
                let copy = Identity::from_bytes(&identity.to_bytes())
                    .map_err(|e| SessionError::Identity(e.to_string()))?;
                let mut config = PeerConfig::new(server_url.clone(), client_id, copy);
                config.credentials = lattice_peer::Credentials::Primary(identity);
                config
            }
            Role::Device(linked) => PeerConfig::for_device(server_url.clone(), *linked),
        };
        // Edits, deletes, reactions and receipts of messages from earlier runs are checked
        // against the stored history.
        config.history = Arc::new(DbHistory::new(Arc::clone(&db), me.clone()));
        config.reconnect = backoff.clone();
        config.retry_first_connect = true;
        config.key_store = Arc::new(DbKeyStore::new(Arc::clone(&db)));
        // Transfers are journaled here and resume by themselves on the next start.
        let transfers = data_dir.join(TRANSFERS_DIR);
        let received = data_dir.join(FILES_DIR);
        for dir in [&transfers, &received] {
            crate::storage::create_private_dir(dir)?;
        }
        config.transfers_dir = Some(transfers);
        // MLS on: 1:1 chats with another MLS-capable client move to a two-member MLS group by
        // themselves, and groups work. The state is its own SQLite file next to the history
        // (docs/mls.md, *Desktop*): both are WAL, but the MLS store's read-then-write
        // transactions on a second connection to the history's file could fail with
        // SQLITE_BUSY_SNAPSHOT (which no busy timeout waits out) whenever the app writes a
        // message at the same moment, and the group secrets stay out of reach of anything that
        // reads the history (backups, exports, search).
        config.mls_state = Some(data_dir.join(crate::storage::MLS_STATE_FILE));
        let peer =
            // Replay marks on disk: a signed message accepted before a restart stays a replay.
            MessagingPeer::with_replay_store(config, Arc::new(DbReplayStore::new(Arc::clone(&db))))
                .map_err(|e| SessionError::InvalidServer(Box::new(e)))?;
        // Group read receipts follow the app's setting (1:1 receipts are sent by the app).
        peer.set_read_receipts(settings.read_receipts);

        let ctx = Arc::new(Ctx {
            outbox: Arc::new(Outbox::new(peer.clone(), Arc::clone(&db), events.clone())),
            db,
            peer: peer.clone(),
            me,
            backoff,
            server_url,
            hosting,
            events,
            refresh: Notify::new(),
            refusal_notices: Mutex::new(NoticeLimiter::default()),
            leaving: Mutex::new(groups::Leaving::default()),
            group_wake: Arc::new(Notify::new()),
            link_codes: Mutex::new(devices::CodesSent::default()),
            data_dir: data_dir.to_owned(),
            auto_download,
        });
        let handler = {
            let ctx = Arc::clone(&ctx);
            peer.on_event(move |ev| ctx.on_event(ev))
        };
        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();
        tasks.spawn(connect_task(Arc::clone(&ctx), cancel.clone()));
        tasks.spawn(presence_task(Arc::clone(&ctx), cancel.clone()));
        {
            let outbox = Arc::clone(&ctx.outbox);
            let cancel = cancel.clone();
            tasks.spawn(async move { outbox.run(cancel).await });
        }
        tasks.spawn(groups::group_outbox_task(
            Arc::clone(&ctx),
            Arc::clone(&ctx.group_wake),
            cancel.clone(),
        ));
        tasks.close();
        Ok(Self {
            ctx,
            cancel,
            tasks,
            handler,
            hosted,
        })
    }

    /// A handle that tells which envelope messages to each peer go in.
    pub fn envelopes(&self) -> Envelopes {
        Envelopes(self.ctx.peer.clone())
    }

    /// A handle on the group calls (create, invite, remove, rename, leave, members) and the
    /// group outbox.
    pub fn groups(&self) -> Groups {
        Groups::new(Arc::clone(&self.ctx))
    }

    /// A handle on the device calls (the device list, remove, linking a new device).
    pub fn devices(&self) -> Devices {
        Devices::new(Arc::clone(&self.ctx))
    }

    /// Wakes the outbox to send what waits in it.
    pub fn wake_outbox(&self) {
        self.ctx.outbox.wake();
    }

    /// Fetches `peer`'s key in the background if none is pinned (so its fingerprint shows and a
    /// key change is noticed before anything is sent).
    pub fn prefetch_key(&self, peer: &ClientId) {
        let ctx = Arc::clone(&self.ctx);
        let cancel = self.cancel.clone();
        let peer = peer.clone();
        if !self.cancel.is_cancelled() {
            // A closed tracker still takes tasks; `stop` awaits them with the others.
            self.tasks.spawn(async move {
                tokio::select! {
                    biased;
                    () = cancel.cancelled() => {}
                    r = ctx.peer.request_public_key(&peer) => match r {
                        // The open conversation shows the fingerprint now, not at the next
                        // presence refresh.
                        Ok(_) => ctx.events.send(SessionEvent::KeysFetched).await,
                        Err(e) => tracing::debug!(peer = %peer, error = %e, "key prefetch failed"),
                    },
                }
            });
        }
    }

    /// Sends a typing notice in the background: not queued in the outbox (one lost with the
    /// connection is stale by the time it could go again; read receipts go through the
    /// outbox), and to an original client, which
    /// gets plain text only, not at all (the library refuses it; that is not an error here).
    pub fn send_notice(&self, peer: &ClientId, content: Content) {
        if self.cancel.is_cancelled() || self.ctx.peer.connection_state() != PeerState::Connected {
            return;
        }
        let ctx = Arc::clone(&self.ctx);
        let cancel = self.cancel.clone();
        let peer = peer.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                biased;
                () = cancel.cancelled() => {}
                r = ctx.peer.send_content(&peer, &content) => match r {
                    Ok(_) => {}
                    Err(PeerError::PlainTextOnly { .. }) => {
                        tracing::debug!(peer = %peer, kind = content.kind(), "not sent to an original client");
                    }
                    Err(e) => tracing::debug!(peer = %peer, kind = content.kind(), error = %e, "notice not sent"),
                },
            }
        });
    }

    /// Answers a server question.
    ///
    /// # Errors
    /// [`SessionError::Peer`].
    pub fn respond(
        &self,
        id: &QuestionId,
        response: serde_json::Value,
    ) -> Result<(), SessionError> {
        Ok(self.ctx.peer.respond_to_server(id, response)?)
    }

    /// Asks the server for its demo conversation.
    ///
    /// # Errors
    /// [`SessionError::NotConnected`]; [`SessionError::Peer`].
    pub fn demo_question(&self) -> Result<(), SessionError> {
        if self.ctx.peer.connection_state() != PeerState::Connected {
            return Err(SessionError::NotConnected);
        }
        Ok(self.ctx.peer.debug_question()?)
    }

    /// Accepts a changed identity key of `peer`: pins the key the server presents now only if
    /// its fingerprint is `fingerprint`, the one the person compared (works after a restart
    /// too: the key is fetched). Then lets the messages it blocked go.
    ///
    /// # Errors
    /// [`SessionError::Peer`] (including a key other than the one compared: nothing is pinned
    /// then).
    pub async fn accept_key_change(
        &self,
        peer: &ClientId,
        fingerprint: &Fingerprint,
    ) -> Result<(), SessionError> {
        self.ctx.peer.accept_key_change(peer, fingerprint).await?;
        self.ctx.outbox.wake();
        Ok(())
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
        state: ConnectionState,
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

    fn up(&self, event: SessionEvent) {
        self.events.send_blocking(event);
    }

    /// Sends from a task, waiting for room.
    async fn up_async(&self, event: SessionEvent) {
        self.events.send(event).await;
    }

    /// The one peer event handler: translates and queues, nothing slow.
    fn on_event(&self, ev: &PeerEvent) {
        match ev {
            PeerEvent::ConnectionState(state) => self.on_state(*state),
            PeerEvent::Registered { .. } => {
                self.refresh.notify_one();
                self.outbox.wake();
            }
            PeerEvent::Message(msg) if matches!(msg.content, Content::File(_)) => {
                if let Content::File(offer) = &msg.content {
                    self.on_file_message(msg, offer);
                }
            }
            PeerEvent::Transfer(progress) => self.up(SessionEvent::Transfer(progress.clone())),
            PeerEvent::Message(msg) => {
                let message_id = msg
                    .message_id
                    .as_ref()
                    .map(|id| id.as_str().to_owned())
                    .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
                let at_ms = i64::try_from(msg.server_timestamp).unwrap_or_else(|_| now_ms());
                let reply = match &msg.content {
                    Content::Reply { to, excerpt, .. } => Some(ReplyRef {
                        sender: to.sender.clone(),
                        message_id: to.message_id.clone(),
                        excerpt: excerpt.clone(),
                    }),
                    _ => None,
                };
                let incoming = Incoming {
                    message_id: &message_id,
                    from: &msg.from,
                    text: &msg.text,
                    at_ms,
                    sent_at: msg.sent_at.and_then(|t| i64::try_from(t).ok()),
                    authenticated: msg.verified,
                    reply: reply.as_ref(),
                };
                if let Some(event) = store_incoming(&self.db, &incoming) {
                    self.up(event);
                }
            }
            PeerEvent::Update(u) => {
                for event in apply_update(&self.db, &self.me, u) {
                    self.up(event);
                }
            }
            PeerEvent::PeerConnected(id) => self.up(SessionEvent::Presence {
                peer: id.clone(),
                online: true,
            }),
            PeerEvent::PeerDisconnected(id) => self.up(SessionEvent::Presence {
                peer: id.clone(),
                online: false,
            }),
            PeerEvent::ServerQuestion(q) => self.up(SessionEvent::Question(QuestionView {
                question_id: q.question_id.as_str().to_owned(),
                conversation_id: q.conversation_id.as_ref().map(|c| c.as_str().to_owned()),
                round: q.round,
                text: q.question.text.clone(),
                kind: match q.question.kind {
                    Some(WireQuestionKind::Choice) => QuestionKind::Choice,
                    Some(WireQuestionKind::Confirm) => QuestionKind::Confirm,
                    _ => QuestionKind::Text,
                },
                options: q.question.options.clone().unwrap_or_default(),
            })),
            PeerEvent::MessageAck(ack) => {
                let status = match ack.status {
                    AckStatus::Delivered => DeliveryStatus::Delivered,
                    AckStatus::Queued => DeliveryStatus::Queued,
                };
                // A file message is sent by the library itself, not through the outbox.
                match self
                    .db
                    .outgoing_file_by_wire(&ack.target_id, ack.message_id.as_str())
                {
                    Ok(Some(local_id)) => self.up(SessionEvent::Status { local_id, status }),
                    Ok(None) => self.verdict(&ack.message_id, status),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot look up a file message");
                        self.verdict(&ack.message_id, status);
                    }
                }
            }
            PeerEvent::MessageFailed {
                message_id,
                target,
                error,
            } => {
                self.verdict(message_id, DeliveryStatus::Failed);
                self.up(SessionEvent::Notice(Notice {
                    kind: ErrorKind::MessageFailed,
                    code: Some(describe::code(error)),
                    message: format!(
                        "A message to {target} was not delivered: {}",
                        describe(error)
                    ),
                }));
            }
            PeerEvent::KeyChanged { peer, new, .. } => {
                self.up(SessionEvent::KeyChanged {
                    peer: peer.clone(),
                    fingerprint: new.to_string(),
                });
                self.group_key_changed(peer);
            }
            PeerEvent::GroupChanged { group, by, change } => {
                self.on_group_changed(group, by.as_ref(), change);
            }
            PeerEvent::GroupMessage(m) => self.on_group_message(m),
            PeerEvent::GroupUpdate { group, update } => self.on_group_update(group, update),
            PeerEvent::GroupReadElsewhere { group, .. } => self.on_group_read_elsewhere(group),
            PeerEvent::GroupTyping {
                group,
                member,
                started,
            } => self.up(SessionEvent::GroupTyping {
                group: groups::group_key(group),
                member: member.clone(),
                started: *started,
            }),
            PeerEvent::Link(link) => self.on_link(link),
            PeerEvent::OwnMessage(m) => self.on_own_message(m),
            PeerEvent::Error(PeerError::DeviceRemoved) => self.up(SessionEvent::DeviceRemoved),
            PeerEvent::MovedToMls { peer } => self.up(SessionEvent::MovedToMls(peer.clone())),
            PeerEvent::ConversationNotice { peer, notice } => {
                self.up(SessionEvent::Notice(Notice::new(
                    ErrorKind::ConversationRestarted,
                    conversation_notice_text(peer, notice),
                )));
            }
            PeerEvent::Error(e) => {
                if let PeerError::Rejected { from, .. } = e {
                    let allowed = self
                        .refusal_notices
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .allow(from.as_str(), tokio::time::Instant::now());
                    if !allowed {
                        tracing::debug!(from = %from, "refusal notice coalesced");
                        return;
                    }
                }
                if let Some(text) = describe_event(e) {
                    self.up(SessionEvent::Notice(Notice {
                        kind: ErrorKind::Peer,
                        code: Some(describe::code(e)),
                        message: text,
                    }));
                }
            }
            _ => {}
        }
    }

    /// The indicator follows the peer's own states: it is the only reconnect loop.
    fn on_state(&self, state: PeerState) {
        tracing::debug!(?state, "connection state");
        match state {
            PeerState::Connected => {
                self.up(SessionEvent::Connection(self.view(
                    ConnectionState::Connected,
                    None,
                    None,
                )));
                self.refresh.notify_one();
                self.outbox.reconnected();
                self.outbox.wake();
                self.group_wake.notify_one();
            }
            PeerState::Reconnecting { attempt } => {
                self.up(SessionEvent::PresenceCleared);
                self.up(SessionEvent::Connection(self.view(
                    ConnectionState::Reconnecting,
                    Some(self.backoff.nominal_delay(attempt)),
                    None,
                )));
            }
            PeerState::Connecting => {
                self.up(SessionEvent::Connection(self.view(
                    ConnectionState::Connecting,
                    None,
                    None,
                )));
            }
            PeerState::Disconnected => {
                self.up(SessionEvent::PresenceCleared);
                self.up(SessionEvent::Connection(self.view(
                    ConnectionState::Offline,
                    None,
                    Some("disconnected".into()),
                )));
            }
        }
    }

    /// Applies the server's verdict on a message we sent, by wire id.
    fn verdict(&self, wire_id: &lattice_protocol::MessageId, status: DeliveryStatus) {
        if let Some(local_id) = self.outbox.verdict(wire_id, status) {
            self.up(SessionEvent::Status { local_id, status });
        }
    }
}

/// An incoming message, as the handler has it.
#[derive(Debug)]
pub struct Incoming<'a> {
    /// Its id (the sender's `messageId`).
    pub message_id: &'a str,
    /// The sender.
    pub from: &'a ClientId,
    /// The text.
    pub text: &'a str,
    /// The server's timestamp, unix ms.
    pub at_ms: i64,
    /// The sender's signed clock, unix ms (signed messages only).
    pub sent_at: Option<i64>,
    /// Whether the sender was authenticated (signed).
    pub authenticated: bool,
    /// The message it answers, for a reply.
    pub reply: Option<&'a ReplyRef>,
}

/// The one write on the event path: an incoming message is stored before the handler returns,
/// because the peer acknowledges it to the server right after (and the server then forgets its
/// copy). Returns what to tell the messenger: the stored message, nothing for a redelivered
/// duplicate, or a notice when it could not be saved.
pub fn store_incoming(db: &Db, m: &Incoming<'_>) -> Option<SessionEvent> {
    match db.insert_received(&Received {
        message_id: m.message_id,
        peer_id: m.from,
        body: m.text,
        at_ms: m.at_ms,
        sent_at: m.sent_at,
        authenticated: m.authenticated,
        read: false,
        reply: m.reply,
    }) {
        Ok(Some(record)) => Some(SessionEvent::Received(record)),
        Ok(None) => None,
        Err(e) => {
            tracing::error!(from = %m.from, error = %e, "cannot store an incoming message");
            Some(SessionEvent::Notice(Notice::new(
                ErrorKind::Storage,
                format!("A message from {} could not be saved: {e}", m.from),
            )))
        }
    }
}

/// Applies a verified change from a peer to the stored history (on the event path, before the
/// peer acknowledges it, like [`store_incoming`]) and returns what to tell the messenger: the
/// changed messages, a typing notice, or a notice when it could not be saved. A change that
/// finds nothing to change (a message deleted here, a replay) changes nothing.
pub fn apply_update(db: &Db, me: &ClientId, u: &ContentUpdate) -> Vec<SessionEvent> {
    let from = &u.from;
    let at = i64::try_from(u.sent_at).unwrap_or(i64::MAX);
    let changed = match &u.change {
        Change::Edited { target, text } => db
            .apply_edit(from, false, target.as_str(), text, at)
            .map(|r| r.into_iter().collect()),
        Change::Deleted { target } => db
            .apply_delete(from, false, target.as_str())
            .map(|r| r.into_iter().collect()),
        Change::Reaction {
            target,
            emoji,
            action,
        } => db
            .set_reaction(
                Target {
                    peer: from,
                    outgoing: target.sender == *me,
                    wire_id: target.message_id.as_str(),
                },
                from,
                emoji,
                *action == ReactionAction::Add,
                at,
            )
            .map(|r| r.into_iter().collect()),
        Change::Read { message_ids } => db.mark_read_by_peer(from, message_ids),
        Change::Typing { started } => {
            return vec![SessionEvent::Typing {
                peer: from.clone(),
                started: *started,
                sent_at: u.sent_at,
            }]
        }
        // A change this version does not know yet: the library only reports the ones above.
        _ => Ok(Vec::new()),
    };
    match changed {
        Ok(records) => records.into_iter().map(SessionEvent::Changed).collect(),
        Err(e) => {
            tracing::error!(from = %from, kind = u.change.kind(), error = %e, "cannot store a change");
            vec![SessionEvent::Notice(Notice::new(
                ErrorKind::Storage,
                format!("A change from {from} could not be saved: {e}"),
            ))]
        }
    }
}

/// The first connection: the peer dials until it registers (`retry_first_connect`), then its
/// own supervisor keeps it connected; the indicator follows its states meanwhile. Only a
/// permanent failure ends here, and its reason replaces the peer's last state on the indicator
/// (the peer reports `Disconnected` before `connect` returns, so this comes after it).
async fn connect_task(ctx: Arc<Ctx>, cancel: CancellationToken) {
    let result = tokio::select! {
        biased;
        () = cancel.cancelled() => return,
        r = ctx.peer.connect() => r,
    };
    tracing::debug!(ok = result.is_ok(), "first connection finished");
    if let Err(PeerError::DeviceRemoved) = result {
        ctx.events.send(SessionEvent::DeviceRemoved).await;
        return;
    }
    if let Err(e) = result {
        let text = describe(&e);
        ctx.events
            .send(SessionEvent::Connection(ctx.view(
                ConnectionState::Offline,
                None,
                Some(text.clone()),
            )))
            .await;
        ctx.events
            .send(SessionEvent::Notice(Notice {
                kind: ErrorKind::Connect,
                code: Some(describe::code(&e)),
                message: text,
            }))
            .await;
    }
}

/// After each (re)registration: who is online, then the keys of those not pinned yet.
async fn presence_task(ctx: Arc<Ctx>, cancel: CancellationToken) {
    loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            () = ctx.refresh.notified() => {}
        }
        if ctx.peer.connection_state() != PeerState::Connected {
            continue;
        }
        tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            () = refresh_presence(&ctx) => {}
        }
    }
}

async fn refresh_presence(ctx: &Ctx) {
    let peers = match ctx.peer.discover_peers().await {
        Ok(peers) => peers,
        Err(e) => {
            // The next (re)registration asks again.
            tracing::warn!(error = %e, "discover failed");
            return;
        }
    };
    ctx.events.send(SessionEvent::Online(peers.clone())).await;
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
        ctx.events.send(SessionEvent::KeysFetched).await;
    }
}

/// What the app says when the library set a 1:1 conversation up again.
fn conversation_notice_text(peer: &ClientId, notice: &lattice_peer::ConversationNotice) -> String {
    match notice {
        lattice_peer::ConversationNotice::Unreadable { .. } => format!(
            "A message from {peer} could not be read: this device no longer has the encrypted \
             conversation it was sent in (a restored backup or a reinstall). The conversation \
             was set up again; ask {peer} to send it once more."
        ),
        lattice_peer::ConversationNotice::PeerStartedOver => format!(
            "{peer} started over (a new install or a restored backup): the encrypted \
             conversation was set up again, and what you sent just before may not have been read."
        ),
        _ => format!("The encrypted conversation with {peer} was set up again."),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use lattice_peer::{GroupChange, RejectReason};
    use lattice_protocol::MessageId;
    use tokio::sync::mpsc;

    use super::*;

    /// A context around a peer that is never connected: what its handler reports.
    fn context() -> (Ctx, mpsc::Receiver<SessionEvent>) {
        let config = PeerConfig::new(
            "ws://127.0.0.1:9".to_owned(),
            ClientId::new("alice").unwrap(),
            Identity::generate(&mut rand_core::OsRng),
        );
        let peer = MessagingPeer::new(config).unwrap();
        let (events, rx) = EventSink::channel();
        let db = Arc::new(Db::open_in_memory().unwrap());
        let ctx = Ctx {
            outbox: Arc::new(Outbox::new(peer.clone(), Arc::clone(&db), events.clone())),
            db,
            peer,
            me: ClientId::new("alice").unwrap(),
            backoff: Backoff::default(),
            server_url: "ws://127.0.0.1:9".into(),
            hosting: None,
            events,
            refresh: Notify::new(),
            refusal_notices: Mutex::new(NoticeLimiter::default()),
            leaving: Mutex::new(groups::Leaving::default()),
            group_wake: Arc::new(Notify::new()),
            link_codes: Mutex::new(devices::CodesSent::default()),
            data_dir: std::env::temp_dir(),
            auto_download: AutoDownload::new(0),
        };
        (ctx, rx)
    }

    fn drain(rx: &mut mpsc::Receiver<SessionEvent>) -> Vec<SessionEvent> {
        std::iter::from_fn(|| rx.try_recv().ok()).collect()
    }

    #[tokio::test]
    async fn changes_from_the_peer_are_stored_and_go_up_and_typing_is_not_a_message() {
        use lattice_peer::content::MessageRef;
        let (ctx, mut rx) = context();
        let bob = ClientId::new("bob").unwrap();
        let update = |id: &str, sent_at, change| {
            PeerEvent::Update(ContentUpdate {
                from: bob.clone(),
                message_id: id.parse().unwrap(),
                sent_at,
                server_timestamp: sent_at,
                change,
            })
        };
        let hello = Incoming {
            message_id: "b1",
            from: &bob,
            text: "hello",
            at_ms: 10,
            sent_at: Some(10),
            authenticated: true,
            reply: None,
        };
        assert!(store_incoming(&ctx.db, &hello).is_some());
        ctx.db
            .enqueue_outgoing("a1", &"wa1".parse().unwrap(), &bob, "hi", 11)
            .unwrap();
        let edit = |target: &str, at| {
            update(
                "e1",
                at,
                Change::Edited {
                    target: target.parse().unwrap(),
                    text: "hello!".into(),
                },
            )
        };
        ctx.on_event(&edit("b1", 20));
        // Replayed (the library normally stops it first; the storage holds too).
        ctx.on_event(&edit("b1", 20));
        // Bob cannot edit our message: his id space is his own.
        ctx.on_event(&edit("wa1", 21));
        ctx.on_event(&update(
            "r1",
            22,
            Change::Reaction {
                target: MessageRef {
                    sender: ClientId::new("alice").unwrap(),
                    message_id: "wa1".parse().unwrap(),
                },
                emoji: "👍".into(),
                action: ReactionAction::Add,
            },
        ));
        ctx.on_event(&update(
            "x1",
            23,
            Change::Read {
                message_ids: vec!["wa1".parse().unwrap()],
            },
        ));
        ctx.on_event(&update("t1", 24, Change::Typing { started: true }));
        ctx.on_event(&update(
            "d1",
            25,
            Change::Deleted {
                target: "b1".parse().unwrap(),
            },
        ));
        let events = drain(&mut rx);
        let changed: Vec<&crate::storage::MessageRecord> = events
            .iter()
            .filter_map(|e| match e {
                SessionEvent::Changed(r) => Some(r),
                _ => None,
            })
            .collect();
        assert_eq!(changed.len(), 4, "{events:?}");
        assert_eq!(changed[0].body, "hello!");
        assert_eq!(changed[1].extra.reactions[0].reactor, "bob");
        assert_eq!(changed[2].status, DeliveryStatus::Read);
        assert!(changed[3].extra.deleted);
        assert!(events.iter().any(|e| matches!(
            e,
            SessionEvent::Typing {
                started: true,
                sent_at: 24,
                ..
            }
        )));
        // Our message kept its text.
        let ours = ctx.db.outgoing_message("a1").unwrap().unwrap();
        assert_eq!(ours.body, "hi");
        assert!(!events
            .iter()
            .any(|e| matches!(e, SessionEvent::Received(_))));
    }

    #[tokio::test]
    async fn a_conversation_set_up_again_is_a_notice_naming_the_contact() {
        let (ctx, mut rx) = context();
        let bob = ClientId::new("bob").unwrap();
        ctx.on_event(&PeerEvent::ConversationNotice {
            peer: bob.clone(),
            notice: lattice_peer::ConversationNotice::Unreadable { message_id: None },
        });
        ctx.on_event(&PeerEvent::ConversationNotice {
            peer: bob,
            notice: lattice_peer::ConversationNotice::PeerStartedOver,
        });
        let events = drain(&mut rx);
        assert_eq!(events.len(), 2, "{events:?}");
        for (event, words) in events.iter().zip(["could not be read", "started over"]) {
            match event {
                SessionEvent::Notice(n) => {
                    assert_eq!(n.kind, ErrorKind::ConversationRestarted);
                    assert!(n.message.contains("bob"), "{}", n.message);
                    assert!(n.message.contains(words), "{}", n.message);
                }
                other => panic!("expected a notice, got {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn peer_events_go_up_as_session_events_and_a_refusal_flood_as_one_notice() {
        let (ctx, mut rx) = context();
        let bob = ClientId::new("bob").unwrap();
        ctx.on_event(&PeerEvent::ConnectionState(PeerState::Reconnecting {
            attempt: 2,
        }));
        ctx.on_event(&PeerEvent::PeerConnected(bob.clone()));
        let events = drain(&mut rx);
        assert_eq!(events.len(), 3, "{events:?}");
        assert_eq!(events[0], SessionEvent::PresenceCleared);
        match &events[1] {
            SessionEvent::Connection(view) => {
                assert_eq!(view.state, ConnectionState::Reconnecting);
                let nominal = Backoff::default().nominal_delay(2).as_secs().max(1);
                assert_eq!(view.retry_in_secs, Some(nominal));
            }
            other => panic!("expected the indicator, got {other:?}"),
        }
        assert_eq!(
            events[2],
            SessionEvent::Presence {
                peer: bob,
                online: true
            }
        );

        let refused = |from: &str, reason: RejectReason| {
            PeerEvent::Error(PeerError::Rejected {
                from: ClientId::new(from).unwrap(),
                message_id: None,
                reason,
            })
        };
        for _ in 0..100 {
            ctx.on_event(&refused("mallory", RejectReason::BadSignature));
        }
        // A refusal for a key change is told by the key-change event instead.
        ctx.on_event(&refused("trent", RejectReason::KeyChanged));
        let events = drain(&mut rx);
        assert_eq!(events.len(), 1, "{events:?}");
        match &events[0] {
            SessionEvent::Notice(notice) => {
                assert_eq!(notice.kind, ErrorKind::Peer);
                assert_eq!(notice.code, Some(crate::contract::PeerErrorCode::Rejected));
                assert!(notice.message.contains("mallory"), "{}", notice.message);
            }
            other => panic!("expected a notice, got {other:?}"),
        }

        ctx.on_event(&PeerEvent::ConnectionState(PeerState::Disconnected));
        let events = drain(&mut rx);
        assert_eq!(events[0], SessionEvent::PresenceCleared);
        assert!(matches!(
            &events[1],
            SessionEvent::Connection(v) if v.state == ConnectionState::Offline
                && v.detail.as_deref() == Some("disconnected")
        ));
    }

    #[tokio::test]
    async fn group_events_are_stored_before_the_ack_with_system_lines_and_go_up() {
        use crate::storage::groups::GroupLineKind;
        let (ctx, mut rx) = context();
        let bob = ClientId::new("bob").unwrap();
        let carol = ClientId::new("carol").unwrap();
        let alice = ClientId::new("alice").unwrap();
        let group = lattice_peer::GroupId::from_bytes(&[7; 16]);
        let key = group_key(&group);
        let changed = |by: &ClientId, change| PeerEvent::GroupChanged {
            group: group.clone(),
            by: Some(by.clone()),
            change,
        };
        ctx.on_event(&changed(
            &bob,
            GroupChange::Joined {
                name: "Climbing".into(),
                members: vec![bob.clone(), alice.clone()],
            },
        ));
        let message = PeerEvent::GroupMessage(lattice_peer::GroupMessage {
            group: group.clone(),
            from: bob.clone(),
            message_id: MessageId::new("m-1").unwrap(),
            content: Content::Text("hi all".into()),
            sent_at: 5,
        });
        // Redelivered after a reconnect: stored once.
        ctx.on_event(&message);
        ctx.on_event(&message);
        ctx.on_event(&changed(
            &bob,
            GroupChange::MembersAdded(vec![carol.clone()]),
        ));
        ctx.on_event(&changed(&bob, GroupChange::Renamed("Crag".into())));
        ctx.on_event(&changed(&carol, GroupChange::LeaveRequested(carol.clone())));
        ctx.on_event(&changed(&bob, GroupChange::MemberRemoved(carol.clone())));
        ctx.on_event(&changed(&bob, GroupChange::MemberUpdated(bob.clone())));
        ctx.on_event(&changed(&bob, GroupChange::EpochChanged(4)));
        ctx.on_event(&changed(&bob, GroupChange::MemberRemoved(alice.clone())));
        ctx.on_event(&changed(&bob, GroupChange::Removed));

        let events = drain(&mut rx);
        let lines: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                SessionEvent::GroupLine(l) => Some((l.kind, l.sender.clone(), l.body.clone())),
                _ => None,
            })
            .collect();
        let sys = |who: &str, text: &str| (GroupLineKind::System, who.to_owned(), text.to_owned());
        assert_eq!(
            lines,
            vec![
                sys("bob", "bob added you to the group"),
                (GroupLineKind::Message, "bob".into(), "hi all".into()),
                sys("bob", "bob added carol"),
                sys("bob", "bob renamed the group to \u{201c}Crag\u{201d}"),
                sys("bob", "carol left the group"),
                sys("bob", "bob removed you from the group"),
            ]
        );
        assert!(events
            .iter()
            .any(|e| matches!(e, SessionEvent::GroupsChanged)));
        let stored = ctx.db.group(&key).unwrap().unwrap();
        assert_eq!(stored.name, "Crag");
        assert!(stored.left);
        assert_eq!(stored.unread, 1);
    }

    #[tokio::test]
    async fn own_messages_from_another_device_are_ours_never_unread_and_a_removal_goes_up() {
        use lattice_peer::Conversation;
        let (ctx, mut rx) = context();
        let bob = ClientId::new("bob").unwrap();
        let own = |conversation, id: &str, device: Option<&str>| {
            PeerEvent::OwnMessage(lattice_peer::OwnMessage {
                conversation,
                device: device.map(str::to_owned),
                message_id: MessageId::new(id).unwrap(),
                content: Content::Text("sent elsewhere".into()),
                sent_at: 5,
            })
        };
        ctx.on_event(&own(
            Conversation::Direct(bob.clone()),
            "o-1",
            Some("laptop"),
        ));
        // Redelivered after a reconnect: stored once.
        ctx.on_event(&own(
            Conversation::Direct(bob.clone()),
            "o-1",
            Some("laptop"),
        ));
        let group = lattice_peer::GroupId::from_bytes(&[7; 16]);
        let key = group_key(&group);
        ctx.db.ensure_group(&key, "Trip", 1).unwrap();
        ctx.on_event(&own(Conversation::Group(group), "g-1", None));
        ctx.on_event(&PeerEvent::Error(PeerError::DeviceRemoved));
        let events = drain(&mut rx);
        assert_eq!(events.len(), 3, "{events:?}");
        match &events[0] {
            SessionEvent::Changed(r) => {
                assert!(r.outgoing);
                assert_eq!(r.peer_id, bob);
                assert_eq!(ctx.db.sent_from(r.seq).unwrap().as_deref(), Some("laptop"));
            }
            other => panic!("expected our message, got {other:?}"),
        }
        match &events[1] {
            SessionEvent::GroupLine(l) => {
                assert!(l.outgoing);
                assert_eq!(l.sender, "alice");
                assert_eq!(
                    ctx.db.group_line_sent_from(l.seq).unwrap().as_deref(),
                    Some(crate::storage::devices::PRIMARY_DEVICE)
                );
            }
            other => panic!("expected our group line, got {other:?}"),
        }
        assert_eq!(events[2], SessionEvent::DeviceRemoved);
        assert_eq!(ctx.db.total_unread().unwrap(), 0);
        assert_eq!(ctx.db.group(&key).unwrap().unwrap().unread, 0);
    }

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
