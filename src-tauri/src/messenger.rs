//! The app's services, without Tauri: identity, settings, storage, presence, open questions and
//! the running [`Session`]. Commands call into a [`Messenger`]; what changes is pushed to the
//! page through the [`Ui`] trait, which the Tauri side (`bridge`, above this module) implements. Tests can
//! drive a `Messenger` with a recording `Ui`.
//!
//! Calls go down, events come up: the messenger starts and calls the session; the session
//! reports [`SessionEvent`]s on a bounded channel, and one task per session, owned here
//! ([`Running`]), applies them to storage and the page ([`State::apply`]). The state that task
//! uses ([`State`]) does not own the session, so nothing points back up.

mod devices;
mod files;
mod groups;

pub use devices::validate_device_id;
pub use files::{Conversation, FileMessageView, TransferAction, MAX_INLINE_FILE_BYTES};
pub use groups::{parse_group_id, MAX_GROUP_INVITE};

use std::collections::{BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use lattice_crypto::{Fingerprint, Identity};
use lattice_protocol::{ClientId, QuestionId};
use tokio::sync::mpsc;

use crate::clock::now_ms;
use crate::contract::{DeliveryStatus, ErrorKind, EDIT_WINDOW};
use crate::events::{EventSink, SessionEvent};
use crate::session::{Envelopes, Role, Session, SessionConfig, SessionError};
use crate::storage::content::{ReplyRef, Target};
use crate::storage::settings::{ServerMode, Settings};
use crate::storage::{self, Db, MessageRecord, StorageError};
use crate::views::{
    preview, Bootstrap, ConnectionView, Me, MessagePage, MessageView, Notice, PeerView,
    QuestionView, RemovedView, TypingView, VersionView,
};
use lattice_peer::content::{MessageRef, ReactionAction, MAX_RECEIPT_IDS};
use lattice_peer::defaults::GROUP_TYPING_RESEND as TYPING_RESEND;
use lattice_peer::Content;

/// Largest message text accepted from the composer, in bytes. The sealed frame must stay under
/// the protocol's 256 KiB frame limit after base64 and the envelope (≈ 4/3 growth + headers).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// Questions kept open at once. A server (or a flood through it) cannot grow the app's memory
/// or the page's queue without bound: beyond this the oldest open question is closed (the
/// server lets an unanswered question expire anyway).
pub const MAX_OPEN_QUESTIONS: usize = 32;

/// Largest answer to a server question, in bytes.
pub const MAX_ANSWER_BYTES: usize = 4 * 1024;

/// A typing notice older than this (by the sender's signed clock) waited in a mailbox and is not
/// shown.
pub const TYPING_STALE: std::time::Duration = std::time::Duration::from_secs(10);

/// Peers whose last typing notice time is remembered; past this the memory starts over.
const TYPING_PEERS: usize = 256;

/// How long a stopped session's events may take to be applied before the applier is stopped.
const APPLIER_DRAIN: std::time::Duration = std::time::Duration::from_secs(3);

/// Why a service call failed. Converted to the page's `CommandError` at the IPC boundary (in
/// `error`, above this module).
#[derive(Debug, thiserror::Error)]
pub enum MessengerError {
    /// The input was not acceptable; the message says why.
    #[error("{0}")]
    InvalidInput(String),
    /// First run has not been completed.
    #[error("Choose a name and a server first.")]
    NotSetUp,
    /// Something on disk failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// There is no session; the text says what to do.
    #[error("{0}")]
    Offline(&'static str),
    /// The session could not start, or refused the request.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The question was already answered, expired or never existed.
    #[error("That question is no longer open.")]
    UnknownQuestion,
    /// The app itself failed.
    #[error("{0}")]
    Internal(String),
}

/// What the backend tells the page (and the tray, and the notification centre).
#[derive(Debug, Clone)]
pub enum Update {
    /// The peer list changed.
    Peers(Vec<PeerView>),
    /// A message was added or changed.
    Message(MessageView),
    /// A question from the server.
    Question(QuestionView),
    /// An open question was closed by the app (by id): the oldest, when more arrived than
    /// `MAX_OPEN_QUESTIONS`.
    QuestionClosed(String),
    /// The connection state changed.
    Connection(ConnectionView),
    /// Something to tell the person.
    Notice(Notice),
    /// A peer started or stopped typing.
    Typing(TypingView),
    /// A group member started or stopped typing.
    GroupTyping(crate::views::GroupTypingView),
    /// A message was deleted on this device only.
    Removed(RemovedView),
    /// A file transfer moved on.
    Transfer(crate::views::TransferView),
    /// Files are dragged over the window (`true`) or left it.
    DropHover(bool),
    /// Files were dropped on the window (how many); the page asks to send them.
    FilesDropped(usize),
    /// The list of group conversations changed.
    Groups(Vec<crate::views::GroupView>),
    /// A line of a group's history was added or changed.
    GroupMessage(crate::views::GroupMessageView),
    /// Linking a new device moved on (first device).
    Link(crate::views::LinkView),
    /// This linked device was removed from its id (the page shows its removed screen).
    DeviceRemoved(Me),
    /// The total unread count changed.
    Unread(i64),
    /// Show a desktop notification (already filtered: enabled and window not focused).
    Notify {
        /// Title: the sender.
        title: String,
        /// Body: the first line of the message.
        body: String,
    },
}

/// Where updates go. Implementations must not block: they run on the applier task.
pub trait Ui: Send + Sync + 'static {
    /// Delivers one update.
    fn send(&self, update: Update);
}

/// What changes while the app runs and is not on disk.
#[derive(Debug, Default)]
struct Live {
    /// Online peers (others), as the server reports them.
    online: BTreeSet<ClientId>,
    /// Questions asked and not yet answered or dismissed, oldest first; at most
    /// [`MAX_OPEN_QUESTIONS`].
    questions: VecDeque<QuestionView>,
    /// The connection indicator.
    connection: Option<ConnectionView>,
    /// When "started typing" was last sent to each peer (at most [`TYPING_PEERS`]).
    typing_sent: std::collections::HashMap<ClientId, tokio::time::Instant>,
    /// Which envelope messages to each peer go in, while a session runs.
    envelopes: Option<Envelopes>,
    /// The group calls of the running session.
    groups: Option<crate::session::Groups>,
    /// The device calls of the running session.
    devices: Option<crate::session::Devices>,
}

/// The app's state, shared by the messenger and the task applying session events.
pub struct State {
    data_dir: PathBuf,
    db: Arc<Db>,
    ui: Arc<dyn Ui>,
    // std Mutex: read or replaced whole, never held across an `.await`.
    settings: Mutex<Settings>,
    // std Mutex: a clone of the Arc is taken and the lock released at once.
    identity: Mutex<Option<Arc<Identity>>>,
    // std Mutex: small maps, never held across an `.await`.
    live: Mutex<Live>,
    focused: AtomicBool,
    /// The auto-download limit the session reads (kept equal to the settings').
    auto_download: crate::session::AutoDownload,
    // std Mutex: taken and replaced whole, never held across an `.await`.
    dropped: Mutex<files::Dropped>,
    // std Mutex: read or replaced whole, never held across an `.await`.
    device: Mutex<Option<devices::ThisDevice>>,
}

/// A session and the task applying its events.
struct Running {
    session: Session,
    applier: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops the session, then lets the applier drain what it reported (its channel closes
    /// once the session's last sender is gone), for at most [`APPLIER_DRAIN`].
    async fn stop(self) {
        self.session.stop().await;
        let mut applier = self.applier;
        match tokio::time::timeout(APPLIER_DRAIN, &mut applier).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "the session event applier failed"),
            Err(_) => {
                tracing::warn!("the session event applier did not drain in time; stopped");
                applier.abort();
            }
        }
    }
}

/// The app's state and services. Shared as `Arc<Messenger>`.
pub struct Messenger {
    state: Arc<State>,
    // tokio Mutex: held across the `.await`s of starting and stopping a session, so that two
    // restarts never interleave.
    session: tokio::sync::Mutex<Option<Running>>,
    // std Mutex: the run is put in or taken out, never held across an `.await`.
    linking: Mutex<Option<devices::LinkRun>>,
}

impl std::fmt::Debug for Messenger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Messenger")
            .field("data_dir", &self.state.data_dir)
            .finish_non_exhaustive()
    }
}

/// Text from the network as a notification body: control and bidi characters made visible (the
/// one sanitiser, `lattice_peer::sanitize`), and `& < >` escaped, since notification daemons
/// read the body as markup (links, images) where they support it.
fn notification_text(text: &str) -> String {
    let visible = lattice_peer::sanitize::for_terminal(text);
    let mut out = String::with_capacity(visible.len());
    for c in visible.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the data consistent, so a poisoned lock is still usable.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Said when a command needs the session and there is none.
const NO_SESSION: &str = "Not connected to a server. Check Settings → Server.";

impl Messenger {
    /// Opens the data directory (creating it), the database and, if present, the identity.
    ///
    /// # Errors
    /// [`StorageError`] when the directory, database or identity cannot be opened.
    pub fn open(
        data_dir: &Path,
        settings: Settings,
        ui: Arc<dyn Ui>,
    ) -> Result<Self, StorageError> {
        Ok(Self {
            state: Arc::new(State::open(data_dir, settings, ui)?),
            session: tokio::sync::Mutex::new(None),
            linking: Mutex::new(None),
        })
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.state.data_dir
    }

    /// The database.
    pub fn db(&self) -> &Arc<Db> {
        &self.state.db
    }

    /// Where updates go.
    pub fn ui(&self) -> &Arc<dyn Ui> {
        &self.state.ui
    }

    /// A copy of the current settings.
    pub fn settings(&self) -> Settings {
        self.state.settings()
    }

    /// Replaces the settings in memory (the caller persists them).
    pub fn set_settings(&self, settings: Settings) {
        self.state.auto_download.set(settings.auto_download_bytes);
        let read_receipts = settings.read_receipts;
        *lock(&self.state.settings) = settings;
        if let Some(groups) = &lock(&self.state.live).groups {
            groups.set_read_receipts(read_receipts);
        }
    }

    /// Records whether the main window has focus (notifications only when it has not).
    pub fn set_focused(&self, focused: bool) {
        self.state.focused.store(focused, Ordering::Relaxed);
    }

    /// Tells the person something.
    pub fn notice(&self, notice: Notice) {
        self.state.ui.send(Update::Notice(notice));
    }

    /// Everything the page needs to draw itself.
    ///
    /// # Errors
    /// [`MessengerError::Storage`].
    pub fn bootstrap(&self) -> Result<Bootstrap, MessengerError> {
        let state = &self.state;
        let settings = state.settings();
        let (connection, questions) = {
            let live = lock(&state.live);
            (
                live.connection
                    .clone()
                    .unwrap_or_else(|| ConnectionView::offline(None)),
                live.questions.iter().cloned().collect(),
            )
        };
        Ok(Bootstrap {
            needs_setup: !settings.is_set_up()
                || (state.identity().is_none() && lock(&state.device).is_none()),
            me: state.me(),
            settings,
            connection,
            peers: state.peer_views()?,
            groups: state.group_views()?,
            questions,
            data_dir: state.data_dir.display().to_string(),
        })
    }

    /// First run: takes the choices (checked by the caller), creates the identity (or keeps an
    /// existing one) and returns the new state. The caller persists the settings and starts
    /// the session.
    ///
    /// # Errors
    /// [`MessengerError::InvalidInput`] with a readable reason; [`MessengerError::Storage`].
    pub fn complete_setup(
        &self,
        client_id: ClientId,
        server_mode: ServerMode,
        server_url: Option<&str>,
    ) -> Result<Settings, MessengerError> {
        let mut settings = self.settings();
        settings.client_id = Some(client_id);
        settings.server_mode = server_mode;
        if server_mode == ServerMode::Connect {
            settings.server_url = validate_server_url(server_url.unwrap_or(""))?;
        }
        self.refuse_on_linked_device()?;
        let Some((identity, created)) = storage::load_identity(&self.state.data_dir, true)? else {
            return Err(MessengerError::Internal(
                "the identity was not created".into(),
            ));
        };
        if created {
            tracing::info!("created a new identity");
        }
        *lock(&self.state.identity) = Some(Arc::new(identity));
        self.set_settings(settings.clone());
        Ok(settings)
    }

    /// After a restore ([`storage::backup::restore`]) wrote the identity and the history: takes
    /// the restored identity and settings (the caller saved them) and shows the restored
    /// conversations. The caller starts the session.
    pub fn adopt_restored(&self, identity: Identity, settings: Settings) {
        *lock(&self.state.identity) = Some(Arc::new(identity));
        self.set_settings(settings);
        self.state.publish_peers();
        self.state.publish_groups();
        self.state.publish_unread();
    }

    /// Marks a conversation read.
    ///
    /// # Errors
    /// [`MessengerError::Storage`].
    pub fn mark_read(&self, peer: &ClientId) -> Result<(), MessengerError> {
        self.state.db.mark_read(peer)?;
        self.state.publish_peers();
        self.state.publish_unread();
        Ok(())
    }

    /// Keeps `text` as the draft of the conversation with `peer` (empty removes it); the peer
    /// list is sent again when the draft's preview there changes.
    ///
    /// # Errors
    /// [`MessengerError::InvalidInput`] for a text longer than a message may be;
    /// [`MessengerError::Storage`].
    pub fn save_draft(&self, peer: &ClientId, text: &str) -> Result<(), MessengerError> {
        if text.len() > MAX_MESSAGE_BYTES {
            return Err(MessengerError::InvalidInput(format!(
                "That draft is too long to keep ({} KiB); the limit is {} KiB.",
                text.len() / 1024,
                MAX_MESSAGE_BYTES / 1024
            )));
        }
        let db = &self.state.db;
        let shown =
            |draft: Option<String>| draft.filter(|d| !d.trim().is_empty()).map(|d| preview(&d));
        let before = shown(db.draft(peer)?);
        db.set_draft(peer, text, now_ms())?;
        if before != shown(Some(text.to_owned())) {
            self.state.publish_peers();
        }
        Ok(())
    }

    /// Marks a contact verified (fingerprints compared) or not.
    ///
    /// # Errors
    /// [`MessengerError::InvalidInput`] if no identity key is pinned for the peer.
    pub fn set_verified(&self, peer: &ClientId, verified: bool) -> Result<(), MessengerError> {
        if verified && self.state.db.pinned_key(peer)?.is_none() {
            return Err(MessengerError::InvalidInput(format!(
                "{peer} has no identity key to verify yet."
            )));
        }
        self.state.db.set_user_verified(peer, verified)?;
        self.state.publish_peers();
        Ok(())
    }

    /// A page of history, oldest first: the latest messages, those before `before`, or — with
    /// `after` — those after it. `has_more` tells whether more exist in that direction.
    /// Opening a conversation (neither given) also fetches the peer's key if none is pinned.
    ///
    /// # Errors
    /// [`MessengerError::Storage`].
    pub async fn load_messages(
        &self,
        peer: &ClientId,
        before: Option<i64>,
        after: Option<i64>,
        limit: u32,
    ) -> Result<MessagePage, MessengerError> {
        let db = &self.state.db;
        let limit = limit.clamp(1, storage::db::MAX_PAGE);
        // One extra row tells whether there is more.
        let (records, has_more) = match after {
            Some(after) => {
                let mut records = db.page_after(peer, after, limit + 1)?;
                let has_more = records.len() > limit as usize;
                records.truncate(limit as usize);
                (records, has_more)
            }
            None => {
                let mut records = db.page(peer, before, limit + 1)?;
                let has_more = records.len() > limit as usize;
                if has_more {
                    records.remove(0);
                }
                (records, has_more)
            }
        };
        if before.is_none() && after.is_none() && db.pinned_key(peer)?.is_none() {
            if let Some(running) = self.session.lock().await.as_ref() {
                running.session.prefetch_key(peer);
            }
        }
        Ok(MessagePage {
            messages: records.into_iter().map(|r| self.state.view(r)).collect(),
            has_more,
        })
    }

    /// Stores an outgoing message in history and the outbox (durable before this returns) and
    /// wakes the session to send it. With `reply_to` (a `seq` of the conversation) it answers
    /// that message, quoting it.
    ///
    /// # Errors
    /// [`MessengerError::InvalidInput`] for an empty or oversized text, or a message that cannot
    /// be replied to; [`MessengerError::NotSetUp`]; [`MessengerError::Storage`].
    pub async fn send_message(
        &self,
        peer: &ClientId,
        text: &str,
        reply_to: Option<i64>,
    ) -> Result<MessageView, MessengerError> {
        let me = self.me_id()?;
        self.refuse_removed()?;
        check_text(text)?;
        let reply = match reply_to {
            Some(seq) => {
                let target = self.target(peer, seq)?;
                Some(ReplyRef {
                    sender: if target.outgoing { me } else { peer.clone() },
                    message_id: wire_id_of(&target)?,
                    excerpt: lattice_peer::content::excerpt(&target.body),
                })
            }
            None => None,
        };
        let local_id = uuid::Uuid::new_v4().to_string();
        // The wire id is fixed now, so every resend (also after a restart) is the same message.
        let wire_id = new_wire_id()?;
        let record = self.state.db.enqueue_message(
            &local_id,
            &wire_id,
            peer,
            text,
            reply.as_ref(),
            now_ms(),
        )?;
        self.state.publish_peers();
        self.wake_outbox().await;
        Ok(record.into())
    }

    /// Replaces the text of one of our messages (within the edit window) here and, through the
    /// outbox, for the peer; the earlier text is kept as a version.
    ///
    /// # Errors
    /// [`MessengerError::InvalidInput`] for a message that is not ours, deleted, too old, or an
    /// empty or oversized text; [`MessengerError::Storage`].
    pub async fn edit_message(
        &self,
        peer: &ClientId,
        seq: i64,
        text: &str,
    ) -> Result<MessageView, MessengerError> {
        self.me_id()?;
        check_text(text)?;
        let target = self.own_changeable(peer, seq)?;
        if target.body == text {
            return Ok(target.into());
        }
        let wire = wire_id_of(&target)?;
        let now = now_ms().max(target.extra.edited_at.map_or(0, |t| t + 1));
        let content = Content::Edit {
            target: wire.clone(),
            text: text.to_owned(),
        };
        self.queue_change(peer, &content)?;
        let record = self
            .state
            .db
            .apply_edit(peer, true, wire.as_str(), text, now)?
            .ok_or_else(|| MessengerError::InvalidInput("That message cannot be edited.".into()))?;
        self.state.publish_peers();
        self.wake_outbox().await;
        Ok(record.into())
    }

    /// Deletes a message: for everyone (ours only, within the edit window: a tombstone stays on
    /// both sides) or for me (any message, this device only).
    ///
    /// # Errors
    /// [`MessengerError::InvalidInput`] for an unknown message, or one that cannot be deleted
    /// for everyone; [`MessengerError::Storage`].
    pub async fn delete_message(
        &self,
        peer: &ClientId,
        seq: i64,
        for_everyone: bool,
    ) -> Result<(), MessengerError> {
        if !for_everyone {
            let target = self.target(peer, seq)?;
            // A file goes with its message: its transfer stops, the app's copy is removed.
            self.forget_file(&target).await;
            if self.state.db.delete_for_me(peer, seq)? {
                self.state.ui.send(Update::Removed(RemovedView {
                    peer_id: peer.clone(),
                    id: target.message_id,
                }));
                self.state.publish_peers();
            }
            return Ok(());
        }
        self.me_id()?;
        let target = self.own_changeable(peer, seq)?;
        self.refuse_original(peer, "deleting for everyone")?;
        let wire = wire_id_of(&target)?;
        self.queue_change(
            peer,
            &Content::Delete {
                target: wire.clone(),
            },
        )?;
        if let Some(record) = self.state.db.apply_delete(peer, true, wire.as_str())? {
            self.state.ui.send(Update::Message(record.into()));
        }
        self.state.publish_peers();
        self.wake_outbox().await;
        Ok(())
    }

    /// Reacts to a message with `emoji`, or takes our reaction back when it is already that
    /// one (a toggle). One reaction per person per message: another emoji replaces ours.
    ///
    /// # Errors
    /// [`MessengerError::InvalidInput`] for an unknown or deleted message or an emoji that is not
    /// one; [`MessengerError::Storage`].
    pub async fn react(
        &self,
        peer: &ClientId,
        seq: i64,
        emoji: &str,
    ) -> Result<MessageView, MessengerError> {
        let me = self.me_id()?;
        let target = self.target(peer, seq)?;
        if target.extra.deleted {
            return Err(MessengerError::InvalidInput(
                "A deleted message takes no reactions.".into(),
            ));
        }
        self.refuse_original(peer, "reactions")?;
        let wire = wire_id_of(&target)?;
        let mine = target
            .extra
            .reactions
            .iter()
            .any(|r| r.reactor == me.as_str() && r.emoji == emoji);
        let action = if mine {
            ReactionAction::Remove
        } else {
            ReactionAction::Add
        };
        let content = Content::Reaction {
            target: MessageRef {
                sender: if target.outgoing {
                    me.clone()
                } else {
                    peer.clone()
                },
                message_id: wire.clone(),
            },
            emoji: emoji.to_owned(),
            action,
        };
        content
            .validate()
            .map_err(|e| MessengerError::InvalidInput(format!("That is not a reaction: {e}.")))?;
        self.queue_change(peer, &content)?;
        let record = self
            .state
            .db
            .set_reaction(
                Target {
                    peer,
                    outgoing: target.outgoing,
                    wire_id: wire.as_str(),
                },
                &me,
                emoji,
                !mine,
                now_ms(),
            )?
            .unwrap_or(target);
        self.wake_outbox().await;
        Ok(record.into())
    }

    /// The earlier versions of an edited message, oldest first.
    ///
    /// # Errors
    /// [`MessengerError::Storage`].
    pub fn message_versions(
        &self,
        peer: &ClientId,
        seq: i64,
    ) -> Result<Vec<VersionView>, MessengerError> {
        Ok(self
            .state
            .db
            .versions(peer, seq)?
            .into_iter()
            .map(VersionView::from)
            .collect())
    }

    /// The person is typing to `peer` (`started`) or stopped: sent when typing indicators are
    /// on, "started" at most once per [`TYPING_RESEND`], never to an original client.
    pub async fn typing(&self, peer: &ClientId, started: bool) {
        if !self.settings().typing_indicators {
            return;
        }
        let now = tokio::time::Instant::now();
        {
            let mut live = lock(&self.state.live);
            if started {
                if live
                    .typing_sent
                    .get(peer)
                    .is_some_and(|at| now.duration_since(*at) < TYPING_RESEND)
                {
                    return;
                }
                if live.typing_sent.len() >= TYPING_PEERS {
                    live.typing_sent.clear();
                }
                live.typing_sent.insert(peer.clone(), now);
            } else if live.typing_sent.remove(peer).is_none() {
                // "Stopped" only after a "started".
                return;
            }
        }
        if let Some(running) = self.session.lock().await.as_ref() {
            running
                .session
                .send_notice(peer, Content::Typing { started });
        }
    }

    /// The conversation with `peer` is shown: its messages are read. Queues read receipts for
    /// what arrived since in the outbox (when they are on; when they are off the debt is
    /// forgiven, so turning them on later does not send old ones). Queued, they are never lost:
    /// the outbox sends them when connected, again after a reconnect, until the server answers.
    ///
    /// # Errors
    /// [`MessengerError::Storage`].
    pub async fn conversation_seen(&self, peer: &ClientId) -> Result<(), MessengerError> {
        self.mark_read(peer)?;
        let db = &self.state.db;
        // An original (`ml-kem-aes`) client gets no receipts.
        if !self.settings().read_receipts || self.refuse_original(peer, "receipts").is_err() {
            db.forgo_receipts(peer)?;
            return Ok(());
        }
        let mut queued = false;
        loop {
            let local_id = uuid::Uuid::new_v4().to_string();
            let handled =
                db.queue_receipts_due(peer, MAX_RECEIPT_IDS, &local_id, &new_wire_id()?, now_ms())?;
            if handled == 0 {
                break;
            }
            queued = true;
        }
        if queued {
            self.wake_outbox().await;
        }
        Ok(())
    }

    /// An original (`ml-kem-aes`) client gets plain text only: `what` cannot reach it.
    fn refuse_original(&self, peer: &ClientId, what: &str) -> Result<(), MessengerError> {
        let original = self
            .state
            .db
            .peer(peer)?
            .is_some_and(|p| p.sent_unsigned && p.identity_key.is_none());
        if original {
            return Err(MessengerError::InvalidInput(format!(
                "{peer} uses an original client, which gets plain text only: {what} cannot reach them."
            )));
        }
        Ok(())
    }

    fn me_id(&self) -> Result<ClientId, MessengerError> {
        self.settings().client_id.ok_or(MessengerError::NotSetUp)
    }

    /// A message of the conversation with `peer`, by `seq`.
    fn target(&self, peer: &ClientId, seq: i64) -> Result<MessageRecord, MessengerError> {
        self.state
            .db
            .message(peer, seq)?
            .ok_or_else(|| MessengerError::InvalidInput("That message is gone.".into()))
    }

    /// One of our messages that may still be edited or deleted for everyone.
    fn own_changeable(&self, peer: &ClientId, seq: i64) -> Result<MessageRecord, MessengerError> {
        let target = self.target(peer, seq)?;
        if !target.outgoing {
            return Err(MessengerError::InvalidInput(
                "Only your own messages can be changed for everyone.".into(),
            ));
        }
        if target.extra.deleted {
            return Err(MessengerError::InvalidInput(
                "That message was deleted.".into(),
            ));
        }
        within_edit_window(target.at)?;
        Ok(target)
    }

    /// Queues `content` for `peer` in the outbox, durable before this returns.
    fn queue_change(&self, peer: &ClientId, content: &Content) -> Result<(), MessengerError> {
        let local_id = uuid::Uuid::new_v4().to_string();
        self.state
            .db
            .enqueue_change(&local_id, &new_wire_id()?, peer, content, now_ms())?;
        Ok(())
    }

    async fn wake_outbox(&self) {
        if let Some(running) = self.session.lock().await.as_ref() {
            running.session.wake_outbox();
        }
    }

    /// Removes a question from the open ones; false if it was not open.
    pub fn close_question(&self, question_id: &str) -> bool {
        self.state.close_question(question_id)
    }

    /// Starts (or restarts) the session with the current settings. Does nothing before first
    /// run is complete.
    ///
    /// # Errors
    /// [`MessengerError::Session`] when the embedded server cannot start or the server URL is
    /// unusable.
    pub async fn restart_session(&self) -> Result<(), MessengerError> {
        let mut slot = self.session.lock().await;
        if let Some(old) = slot.take() {
            old.stop().await;
        }
        {
            let mut live = lock(&self.state.live);
            live.envelopes = None;
            live.groups = None;
            live.devices = None;
        }
        self.state.clear_presence();
        let settings = self.settings();
        let Some(client_id) = settings.client_id.clone() else {
            return Ok(());
        };
        let role = match (self.state.identity(), self.device_role(&client_id)?) {
            (Some(identity), _) => Role::Primary(identity),
            (None, Some(role)) => role,
            // Not set up, or a removed device (it never dials again).
            (None, None) => return Ok(()),
        };
        let (events, rx) = EventSink::channel();
        let config = SessionConfig {
            settings: &settings,
            data_dir: &self.state.data_dir,
            db: Arc::clone(&self.state.db),
            client_id,
            role,
            auto_download: self.state.auto_download.clone(),
        };
        match Session::start(config, events).await {
            Ok(session) => {
                {
                    let mut live = lock(&self.state.live);
                    live.envelopes = Some(session.envelopes());
                    live.groups = Some(session.groups());
                    live.devices = Some(session.devices());
                }
                let applier = tokio::spawn(apply_events(Arc::clone(&self.state), rx));
                *slot = Some(Running { session, applier });
                Ok(())
            }
            Err(e) => {
                self.state
                    .set_connection(ConnectionView::offline(Some(e.to_string())));
                Err(e.into())
            }
        }
    }

    /// Stops the session (app exit).
    pub async fn stop_session(&self) {
        if let Some(running) = self.session.lock().await.take() {
            running.stop().await;
        }
        let mut live = lock(&self.state.live);
        live.envelopes = None;
        live.groups = None;
        live.devices = None;
    }

    /// Asks the server for its demo conversation.
    ///
    /// # Errors
    /// [`MessengerError::Offline`] without a session; [`MessengerError::Session`].
    pub async fn demo_question(&self) -> Result<(), MessengerError> {
        match self.session.lock().await.as_ref() {
            Some(running) => Ok(running.session.demo_question()?),
            None => Err(MessengerError::Offline(NO_SESSION)),
        }
    }

    /// Accepts a contact's changed identity key, the one with `fingerprint` (what the person
    /// compared), then lets blocked messages go.
    ///
    /// # Errors
    /// [`MessengerError::Offline`] without a session; [`MessengerError::Session`] when the
    /// change cannot be accepted.
    pub async fn accept_key_change(
        &self,
        peer: &ClientId,
        fingerprint: &Fingerprint,
    ) -> Result<(), MessengerError> {
        let session = self.session.lock().await;
        let Some(running) = session.as_ref() else {
            return Err(MessengerError::Offline(
                "Connect to the server to accept a new key.",
            ));
        };
        running.session.accept_key_change(peer, fingerprint).await?;
        self.state.publish_peers();
        Ok(())
    }

    /// Answers a server question.
    ///
    /// # Errors
    /// [`MessengerError::UnknownQuestion`], [`MessengerError::InvalidInput`],
    /// [`MessengerError::Offline`], [`MessengerError::Session`].
    pub async fn answer_question(
        &self,
        question_id: &str,
        response: serde_json::Value,
    ) -> Result<(), MessengerError> {
        let id = QuestionId::try_from(question_id).map_err(|_| MessengerError::UnknownQuestion)?;
        match &response {
            serde_json::Value::String(s) if s.len() <= MAX_ANSWER_BYTES => {}
            serde_json::Value::Bool(_) => {}
            serde_json::Value::String(_) => {
                return Err(MessengerError::InvalidInput(
                    "That answer is too long.".into(),
                ))
            }
            _ => {
                return Err(MessengerError::InvalidInput(
                    "An answer is text or yes/no.".into(),
                ))
            }
        }
        if !lock(&self.state.live)
            .questions
            .iter()
            .any(|q| q.question_id == question_id)
        {
            return Err(MessengerError::UnknownQuestion);
        }
        match self.session.lock().await.as_ref() {
            Some(running) => running.session.respond(&id, response)?,
            None => return Err(MessengerError::Offline(NO_SESSION)),
        }
        self.close_question(question_id);
        Ok(())
    }
}

/// Applies a session's events, in order, until the session is gone.
async fn apply_events(state: Arc<State>, mut rx: mpsc::Receiver<SessionEvent>) {
    while let Some(event) = rx.recv().await {
        state.apply(event);
    }
}

impl State {
    fn open(data_dir: &Path, settings: Settings, ui: Arc<dyn Ui>) -> Result<Self, StorageError> {
        // Private at creation and again on every start (docs/security.md: 0600 in 0700).
        storage::create_private_dir(data_dir)?;
        storage::create_private_file(&data_dir.join(storage::DB_FILE))?;
        let db = Db::open(&data_dir.join(storage::DB_FILE))?;
        let mut private = storage::db_files(data_dir);
        private.push(data_dir.join(storage::SETTINGS_FILE));
        private.extend(storage::mls_state_files(data_dir));
        storage::restrict_files(&private)?;
        let identity = storage::load_identity(data_dir, false)?.map(|(identity, _)| identity);
        let device = devices::open_device(data_dir, &settings, identity.is_some(), &db)?;
        let auto_download = crate::session::AutoDownload::new(settings.auto_download_bytes);
        Ok(Self {
            auto_download,
            dropped: Mutex::new(files::Dropped::default()),
            data_dir: data_dir.to_owned(),
            db: Arc::new(db),
            ui,
            settings: Mutex::new(settings),
            identity: Mutex::new(identity.map(Arc::new)),
            live: Mutex::new(Live::default()),
            focused: AtomicBool::new(true),
            device: Mutex::new(device),
        })
    }

    fn settings(&self) -> Settings {
        lock(&self.settings).clone()
    }

    fn identity(&self) -> Option<Arc<Identity>> {
        lock(&self.identity).clone()
    }

    fn me(&self) -> Option<Me> {
        let client_id = self.settings().client_id?;
        if let Some(identity) = self.identity() {
            return Some(Me {
                client_id,
                fingerprint: identity.identity_public_key().fingerprint().to_string(),
                device_id: None,
                removed_at: None,
            });
        }
        lock(&self.device).as_ref().map(|d| d.me(client_id))
    }

    /// Applies one session event: storage first, then the page.
    pub fn apply(&self, event: SessionEvent) {
        match event {
            SessionEvent::Connection(view) => self.set_connection(view),
            SessionEvent::PresenceCleared => self.clear_presence(),
            SessionEvent::Online(peers) => self.set_online(peers),
            SessionEvent::Presence { peer, online } => self.set_presence(peer, online),
            SessionEvent::Received(record) => self.received(record),
            SessionEvent::Changed(record) => {
                self.ui.send(Update::Message(self.view(record)));
                self.publish_peers();
            }
            SessionEvent::Typing {
                peer,
                started,
                sent_at,
            } => {
                let age = u64::try_from(now_ms()).unwrap_or(0).saturating_sub(sent_at);
                if self.settings().typing_indicators
                    && (!started || u128::from(age) < TYPING_STALE.as_millis())
                {
                    self.ui.send(Update::Typing(TypingView {
                        peer_id: peer,
                        typing: started,
                    }));
                }
            }
            SessionEvent::Question(q) => self.question(q),
            SessionEvent::Status { local_id, status } => self.advance(&local_id, status),
            SessionEvent::KeyChanged { peer, fingerprint } => {
                if let Err(e) = self.db.set_key_change(&peer, &fingerprint) {
                    tracing::warn!(peer = %peer, error = %e, "cannot record a key change");
                }
                self.publish_peers();
                self.ui.send(Update::Notice(Notice::new(
                    ErrorKind::KeyChanged,
                    format!(
                        "{peer}'s safety number changed. Nothing is sent to or accepted from the \
                         new key until you accept it."
                    ),
                )));
            }
            // The conversation header's MLS mark comes from the peer list.
            SessionEvent::KeysFetched | SessionEvent::MovedToMls(_) => self.publish_peers(),
            SessionEvent::Transfer(progress) => self.transfer(&progress),
            SessionEvent::GroupLine(line) => self.group_line(line),
            SessionEvent::GroupLineChanged(line) => self.group_line_changed(line),
            SessionEvent::GroupsChanged => self.publish_groups(),
            SessionEvent::GroupReadElsewhere => {
                self.publish_groups();
                self.publish_unread();
            }
            SessionEvent::GroupTyping {
                group,
                member,
                started,
            } => {
                if self.settings().typing_indicators {
                    self.ui
                        .send(Update::GroupTyping(crate::views::GroupTypingView {
                            group_id: group,
                            member_id: member,
                            typing: started,
                        }));
                }
            }
            SessionEvent::Notice(notice) => self.ui.send(Update::Notice(notice)),
            SessionEvent::Link(view) => self.link(view),
            SessionEvent::DeviceRemoved => self.device_removed(),
        }
    }

    /// A stored message as the page shows it: while read receipts are off, others' are not
    /// shown either (like Signal): a read message shows as delivered.
    fn view(&self, record: MessageRecord) -> MessageView {
        let from_device = if record.outgoing {
            self.db.sent_from(record.seq).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot read where a message was sent from");
                None
            })
        } else {
            None
        };
        let mut view = MessageView::from(record);
        view.from_device = from_device;
        if view.status == DeliveryStatus::Read && !self.settings().read_receipts {
            view.status = DeliveryStatus::Delivered;
        }
        view
    }

    /// The peer list: contacts from disk joined with presence.
    fn peer_views(&self) -> Result<Vec<PeerView>, StorageError> {
        let (online, envelopes) = {
            let live = lock(&self.live);
            (live.online.clone(), live.envelopes.clone())
        };
        let speaks_mls = |peer: &ClientId| envelopes.as_ref().is_some_and(|e| e.speaks_mls(peer));
        let me = self.settings().client_id;
        let mut views: Vec<PeerView> = self
            .db
            .peers()?
            .into_iter()
            .filter(|r| Some(&r.peer_id) != me.as_ref())
            .map(|r| {
                let is_online = online.contains(&r.peer_id);
                let mls = speaks_mls(&r.peer_id);
                PeerView::from_record(r, is_online, mls)
            })
            .collect();
        // Conversations first (most recent first, as stored), then online people, then the rest.
        views.sort_by_key(|p| (p.last_at.is_none(), !p.online && p.last_at.is_none()));
        Ok(views)
    }

    fn publish_peers(&self) {
        match self.peer_views() {
            Ok(peers) => self.ui.send(Update::Peers(peers)),
            Err(e) => tracing::warn!(error = %e, "cannot list peers"),
        }
    }

    fn publish_unread(&self) {
        match self.db.total_unread() {
            Ok(n) => self.ui.send(Update::Unread(n)),
            Err(e) => tracing::warn!(error = %e, "cannot count unread messages"),
        }
    }

    fn set_online(&self, peers: Vec<ClientId>) {
        let now = now_ms();
        for p in &peers {
            if let Err(e) = self.db.ensure_contact(p, now) {
                tracing::warn!(peer = %p, error = %e, "cannot store contact");
            }
        }
        lock(&self.live).online = peers.into_iter().collect();
        self.publish_peers();
    }

    fn set_presence(&self, peer: ClientId, online: bool) {
        if online {
            if let Err(e) = self.db.ensure_contact(&peer, now_ms()) {
                tracing::warn!(peer = %peer, error = %e, "cannot store contact");
            }
            lock(&self.live).online.insert(peer);
        } else {
            lock(&self.live).online.remove(&peer);
        }
        self.publish_peers();
    }

    fn clear_presence(&self) {
        lock(&self.live).online.clear();
        self.publish_peers();
    }

    /// Applies a delivery update to an outgoing message and tells the page what it is now.
    fn advance(&self, local_id: &str, status: DeliveryStatus) {
        match self.db.advance_status(local_id, status) {
            Ok(Some(record)) => self.ui.send(Update::Message(record.into())),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cannot update a message's status"),
        }
    }

    /// An incoming message was stored (by the session, before it was acknowledged): tells the
    /// page, the tray and, when the window is not focused, the notification centre.
    fn received(&self, record: MessageRecord) {
        // Whether to notify is decided as the message arrives, before the page hears of it: the
        // focus and the setting at that moment, not whatever they are by the time it is shown.
        let notify = self.settings().notifications && !self.focused.load(Ordering::Relaxed);
        let from = record.peer_id.clone();
        let authenticated = record.authenticated;
        let first_line: String = match &record.extra.attachment {
            // The file's name stays out of the notification centre, like a message's text
            // beyond its first line.
            Some(file) if file.is_image() => "sent you a photo".into(),
            Some(_) => "sent you a file".into(),
            None => record
                .body
                .lines()
                .next()
                .unwrap_or("")
                .chars()
                .take(120)
                .collect(),
        };
        self.ui.send(Update::Message(record.into()));
        self.publish_peers();
        self.publish_unread();
        if notify {
            let title = if authenticated {
                from.to_string()
            } else {
                format!("{from} (unverified sender)")
            };
            self.ui.send(Update::Notify {
                title,
                body: notification_text(&first_line),
            });
        }
    }

    /// A question arrived. Unless the window has focus, a notification points to it too (a
    /// question expires on the server if nobody answers).
    fn question(&self, q: QuestionView) {
        let evicted = {
            let mut live = lock(&self.live);
            live.questions
                .retain(|open| open.question_id != q.question_id);
            let evicted = if live.questions.len() >= MAX_OPEN_QUESTIONS {
                live.questions.pop_front()
            } else {
                None
            };
            live.questions.push_back(q.clone());
            evicted
        };
        if let Some(old) = evicted {
            tracing::warn!(question = %old.question_id, "too many open questions; closing the oldest");
            self.ui.send(Update::QuestionClosed(old.question_id));
        }
        if !self.focused.load(Ordering::Relaxed) {
            self.ui.send(Update::Notify {
                title: "Question from the server".into(),
                body: notification_text(&q.text),
            });
        }
        self.ui.send(Update::Question(q));
    }

    fn close_question(&self, question_id: &str) -> bool {
        let mut live = lock(&self.live);
        let before = live.questions.len();
        live.questions.retain(|q| q.question_id != question_id);
        live.questions.len() != before
    }

    fn set_connection(&self, view: ConnectionView) {
        // A removed device's indicator keeps saying so, whatever its stopped peer reports.
        let view = self.removed_connection().unwrap_or(view);
        let changed = {
            let mut live = lock(&self.live);
            let changed = live.connection.as_ref() != Some(&view);
            live.connection = Some(view.clone());
            changed
        };
        if changed {
            self.ui.send(Update::Connection(view));
        }
    }
}

/// A message text from the composer: not empty, not longer than [`MAX_MESSAGE_BYTES`].
fn check_text(text: &str) -> Result<(), MessengerError> {
    if text.trim().is_empty() {
        return Err(MessengerError::InvalidInput("Type a message first.".into()));
    }
    if text.len() > MAX_MESSAGE_BYTES {
        return Err(MessengerError::InvalidInput(format!(
            "That message is too long ({} KiB); the limit is {} KiB.",
            text.len() / 1024,
            MAX_MESSAGE_BYTES / 1024
        )));
    }
    Ok(())
}

/// A message of ours written at `at` (unix ms) may still be changed for everyone.
fn within_edit_window(at: i64) -> Result<(), MessengerError> {
    let window = i64::try_from(EDIT_WINDOW.as_millis()).unwrap_or(i64::MAX);
    if now_ms().saturating_sub(at) > window {
        return Err(MessengerError::InvalidInput(format!(
            "Messages can be changed for {} hours after sending.",
            window / 3_600_000
        )));
    }
    Ok(())
}

/// A fresh `messageId`.
fn new_wire_id() -> Result<lattice_protocol::MessageId, MessengerError> {
    lattice_protocol::MessageId::new(uuid::Uuid::new_v4().to_string())
        .map_err(|e| MessengerError::Internal(format!("message id: {e}")))
}

/// The wire id of a stored message, which replies, edits, deletes and reactions name.
fn wire_id_of(m: &MessageRecord) -> Result<lattice_protocol::MessageId, MessengerError> {
    m.extra
        .wire_id
        .as_deref()
        .and_then(|id| lattice_protocol::MessageId::new(id).ok())
        .ok_or_else(|| {
            MessengerError::InvalidInput(
                "That message was sent by an older version and cannot be referred to.".into(),
            )
        })
}

/// Checks a client id against the protocol's rule, with a sentence for people: the one place
/// a name from the page becomes a [`ClientId`].
///
/// # Errors
/// [`MessengerError::InvalidInput`].
pub fn validate_client_id(id: &str) -> Result<ClientId, MessengerError> {
    let id = id.trim();
    if id.is_empty() {
        return Err(MessengerError::InvalidInput("Choose a name first.".into()));
    }
    ClientId::try_from(id).map_err(|_| {
        MessengerError::InvalidInput(
            "A name is 1–64 characters: letters, digits and . _ - @ (no spaces).".into(),
        )
    })
}

/// Checks a safety number typed or compared by the person.
///
/// # Errors
/// [`MessengerError::InvalidInput`].
pub fn validate_fingerprint(fingerprint: &str) -> Result<Fingerprint, MessengerError> {
    fingerprint
        .parse()
        .map_err(|_| MessengerError::InvalidInput(format!("{fingerprint} is not a safety number.")))
}

/// Checks a server URL: `ws://` or `wss://` with a host.
///
/// # Errors
/// [`MessengerError::InvalidInput`].
pub fn validate_server_url(url: &str) -> Result<String, MessengerError> {
    let url = url.trim();
    let rest = url
        .strip_prefix("ws://")
        .or_else(|| url.strip_prefix("wss://"));
    match rest {
        Some(rest)
            if !rest.is_empty() && !rest.starts_with('/') && !url.contains(char::is_whitespace) =>
        {
            Ok(url.to_owned())
        }
        _ => Err(MessengerError::InvalidInput(
            "Enter a server address like ws://192.168.1.20:3005 or wss://chat.example.org.".into(),
        )),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::contract::{ConnectionState, QuestionKind};

    /// A [`Ui`] that keeps what it is sent.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<Update>>);

    impl Ui for Recorder {
        fn send(&self, update: Update) {
            lock(&self.0).push(update);
        }
    }

    impl Recorder {
        fn notifications(&self) -> Vec<(String, String)> {
            lock(&self.0)
                .iter()
                .filter_map(|u| match u {
                    Update::Notify { title, body } => Some((title.clone(), body.clone())),
                    _ => None,
                })
                .collect()
        }
    }

    fn id(s: &str) -> ClientId {
        ClientId::new(s).unwrap()
    }

    /// A message arriving as the session handles it: stored, then (unless a duplicate)
    /// applied.
    fn deliver(
        m: &Messenger,
        message_id: &str,
        from: &str,
        text: &str,
        at_ms: i64,
        authenticated: bool,
    ) {
        let from = id(from);
        let incoming = crate::session::Incoming {
            message_id,
            from: &from,
            text,
            at_ms,
            sent_at: None,
            authenticated,
            reply: None,
        };
        if let Some(event) = crate::session::store_incoming(m.db(), &incoming) {
            m.state.apply(event);
        }
    }

    fn open(ui: &Arc<Recorder>) -> (tempfile::TempDir, Messenger) {
        let dir = tempfile::tempdir().unwrap();
        let m = Messenger::open(dir.path(), Settings::default(), ui.clone()).unwrap();
        (dir, m)
    }

    /// A file message arriving as the session stores it, then applied.
    fn deliver_file(m: &Messenger, message_id: &str, name: &str, mime: &str) -> i64 {
        let bob = id("bob");
        let record = m
            .db()
            .insert_received_file(
                &storage::message::Received {
                    message_id,
                    peer_id: &bob,
                    body: name,
                    at_ms: 1,
                    sent_at: Some(1),
                    authenticated: true,
                    read: false,
                    reply: None,
                },
                &storage::files::NewAttachment {
                    name: name.into(),
                    size: 10,
                    mime: mime.into(),
                    thumbnail: None,
                    offer: None,
                    local_path: None,
                    transfer_id: None,
                    state: storage::files::TransferState::Offered,
                },
            )
            .unwrap()
            .unwrap();
        let seq = record.seq;
        m.state.apply(SessionEvent::Received(record));
        seq
    }

    #[test]
    fn a_file_is_announced_as_a_photo_or_a_file_without_its_name() {
        let ui = Arc::new(Recorder::default());
        let (_dir, m) = open(&ui);
        m.set_focused(false);
        deliver_file(&m, "f1", "secret plans.jpg", "image/jpeg");
        deliver_file(&m, "f2", "secret plans.pdf", "application/pdf");
        assert_eq!(
            ui.notifications(),
            vec![
                ("bob".to_owned(), "sent you a photo".to_owned()),
                ("bob".to_owned(), "sent you a file".to_owned()),
            ]
        );
    }

    #[tokio::test]
    async fn a_group_with_an_original_client_or_nobody_is_refused_readably_and_lines_notify() {
        let ui = Arc::new(Recorder::default());
        let dir = tempfile::tempdir().unwrap();
        let settings = Settings {
            client_id: Some(id("alice")),
            ..Settings::default()
        };
        let m = Messenger::open(dir.path(), settings, ui.clone()).unwrap();
        // dave sent an unsigned (ml-kem-aes) message and has no pinned key.
        deliver(&m, "o1", "dave", "hello from an old client", 1, false);
        let err = m
            .create_group("Climbing", &[id("bob"), id("dave")])
            .await
            .unwrap_err();
        assert!(
            matches!(&err, MessengerError::InvalidInput(t) if t.contains("dave") && t.contains("original")),
            "{err}"
        );
        let err = m.create_group("Alone", &[id("alice")]).await.unwrap_err();
        assert!(matches!(err, MessengerError::InvalidInput(_)), "{err}");
        let err = m.create_group(" ", &[id("bob")]).await.unwrap_err();
        assert!(matches!(err, MessengerError::InvalidInput(_)), "{err}");
        // Fine input, but no session: said so, nothing stored.
        let err = m.create_group("Climbing", &[id("bob")]).await.unwrap_err();
        assert!(matches!(err, MessengerError::Offline(_)), "{err}");
        assert!(m.db().groups().unwrap().is_empty());

        // A group message from bob while the window is not focused: a notification with the
        // sender and the group, the first line only; a system line notifies nothing.
        m.db().ensure_group("ab01", "Climbing", 1).unwrap();
        m.set_focused(false);
        let bob = id("bob");
        for (kind, body) in [
            (
                crate::storage::groups::GroupLineKind::System,
                "bob renamed the group",
            ),
            (
                crate::storage::groups::GroupLineKind::Message,
                "first line\nsecond <b>line</b>",
            ),
        ] {
            let line = crate::storage::groups::NewGroupLine {
                group_id: "ab01",
                kind,
                sender: Some(&bob),
                message_id: body,
                outgoing: false,
                body,
                at: 2,
                status: DeliveryStatus::Received,
            };
            let stored = m.db().insert_group_line(&line).unwrap().unwrap();
            m.state.apply(SessionEvent::GroupLine(stored));
        }
        assert_eq!(
            ui.notifications(),
            vec![("bob in Climbing".to_owned(), "first line".to_owned())]
        );
        // A photo in the group: said as such, its name kept out of the notification centre.
        let photo = crate::storage::groups::NewGroupLine {
            group_id: "ab01",
            kind: crate::storage::groups::GroupLineKind::Message,
            sender: Some(&bob),
            message_id: "photo-1",
            outgoing: false,
            body: "secret plans.png",
            at: 3,
            status: DeliveryStatus::Received,
        };
        let file = crate::storage::files::NewAttachment {
            name: "secret plans.png".into(),
            size: 1_000,
            mime: "image/png".into(),
            thumbnail: None,
            offer: None,
            local_path: None,
            transfer_id: None,
            state: crate::storage::files::TransferState::Offered,
        };
        let stored = m.db().insert_group_file(&photo, &file).unwrap().unwrap();
        m.state.apply(SessionEvent::GroupLine(stored));
        assert_eq!(
            ui.notifications().last().cloned(),
            Some(("bob in Climbing".to_owned(), "sent a photo".to_owned()))
        );
        m.mark_group_read("ab01").await.unwrap();
        assert_eq!(m.db().total_unread().unwrap(), 1, "dave's");
        let second = crate::storage::groups::NewGroupLine {
            group_id: "ab01",
            kind: crate::storage::groups::GroupLineKind::Message,
            sender: Some(&bob),
            message_id: "again",
            outgoing: false,
            body: "again",
            at: 4,
            status: DeliveryStatus::Received,
        };
        let stored = m.db().insert_group_line(&second).unwrap().unwrap();
        m.state.apply(SessionEvent::GroupLine(stored));
        assert_eq!(m.db().total_unread().unwrap(), 2, "dave's and bob's");
        m.mark_group_read("ab01").await.unwrap();
        assert_eq!(m.db().total_unread().unwrap(), 1);
        // The page may name only a known group, in lowercase hex.
        assert!(m.send_group_message("AB01", "x", None).is_err());
        assert!(m.send_group_message("cd02", "x", None).is_err());
        let pending = m.send_group_message("ab01", "hello", None).unwrap();
        assert_eq!(pending.status, DeliveryStatus::Pending);
        assert_eq!(
            m.db().group_outbox(10).unwrap().len(),
            1,
            "waits for a connection"
        );
    }

    #[tokio::test]
    async fn files_to_an_original_client_are_refused_before_anything_is_sent() {
        let ui = Arc::new(Recorder::default());
        let dir = tempfile::tempdir().unwrap();
        let settings = Settings {
            client_id: Some(id("alice")),
            ..Settings::default()
        };
        let m = Messenger::open(dir.path(), settings, ui.clone()).unwrap();
        // dave sent an unsigned (ml-kem-aes) message and has no pinned key.
        deliver(&m, "o1", "dave", "hello from an old client", 1, false);
        let err = m
            .send_file_bytes(&Conversation::Peer(id("dave")), "photo.png", vec![1, 2, 3])
            .await
            .unwrap_err();
        assert!(
            matches!(&err, MessengerError::InvalidInput(text) if text.contains("original client")),
            "{err}"
        );
        assert!(!dir.path().join("outgoing").exists(), "nothing was kept");
        // Too large, or a name with a slash: refused before anything is written.
        let err = m
            .send_file_bytes(&Conversation::Peer(id("bob")), "a/b.png", vec![1])
            .await
            .unwrap_err();
        assert!(matches!(err, MessengerError::InvalidInput(_)));
        let err = m
            .send_file_bytes(
                &Conversation::Peer(id("bob")),
                "big.bin",
                vec![0; MAX_INLINE_FILE_BYTES + 1],
            )
            .await
            .unwrap_err();
        assert!(matches!(err, MessengerError::InvalidInput(_)));
    }

    #[test]
    fn transfer_reports_move_the_bar_and_a_finished_download_redraws_the_message() {
        let ui = Arc::new(Recorder::default());
        let (_dir, m) = open(&ui);
        let seq = deliver_file(&m, "f1", "report.pdf", "application/pdf");
        let transfer = "0123456789abcdef0123456789abcdef";
        m.db()
            .start_transfer(seq, transfer, "/tmp/report.pdf")
            .unwrap();
        let report = |state, done| lattice_peer::TransferProgress {
            id: lattice_peer::TransferId::parse(transfer).unwrap(),
            direction: lattice_peer::TransferDirection::Download,
            peer: id("bob"),
            message_id: None,
            name: "report.pdf".into(),
            done,
            total: 10,
            state,
        };
        lock(&ui.0).clear();
        m.state.apply(SessionEvent::Transfer(report(
            lattice_peer::TransferState::Running,
            4,
        )));
        m.state.apply(SessionEvent::Transfer(report(
            lattice_peer::TransferState::Completed,
            10,
        )));
        let updates = lock(&ui.0);
        let bars: Vec<(storage::files::TransferState, u64)> = updates
            .iter()
            .filter_map(|u| match u {
                Update::Transfer(t) => Some((t.state, t.done)),
                _ => None,
            })
            .collect();
        assert_eq!(
            bars,
            vec![
                (storage::files::TransferState::Running, 4),
                (storage::files::TransferState::Completed, 10)
            ]
        );
        assert!(updates.iter().any(|u| matches!(u,
            Update::Message(v) if v.file.as_ref().is_some_and(|f| f.state == storage::files::TransferState::Completed)
        )));
        drop(updates);
        // A report for a transfer this history does not know changes nothing and says nothing.
        lock(&ui.0).clear();
        let mut other = report(lattice_peer::TransferState::Running, 1);
        other.id = lattice_peer::TransferId::parse("ffffffffffffffffffffffffffffffff").unwrap();
        m.state.apply(SessionEvent::Transfer(other));
        assert!(lock(&ui.0).is_empty());
    }

    #[test]
    fn notifies_only_when_unfocused_and_enabled_with_sender_and_first_line() {
        let ui = Arc::new(Recorder::default());
        let (_dir, m) = open(&ui);

        deliver(&m, "m1", "bob", "seen while focused", 1, true);
        assert!(ui.notifications().is_empty());

        m.set_focused(false);
        deliver(&m, "m2", "bob", "first line\nsecond line", 2, true);
        deliver(&m, "m3", "mallory", "hi", 3, false);
        deliver(
            &m,
            "m5",
            "mallory",
            "<a href=\"x\">win</a> \u{1b}[2J\u{202e}gnp",
            5,
            false,
        );
        assert_eq!(
            ui.notifications(),
            vec![
                ("bob".to_owned(), "first line".to_owned()),
                ("mallory (unverified sender)".to_owned(), "hi".to_owned()),
                (
                    "mallory (unverified sender)".to_owned(),
                    "&lt;a href=\"x\"&gt;win&lt;/a&gt; \\x1b[2J\\u{202e}gnp".to_owned()
                ),
            ]
        );

        m.set_settings(Settings {
            notifications: false,
            ..Settings::default()
        });
        deliver(&m, "m4", "bob", "quiet", 4, true);
        assert_eq!(ui.notifications().len(), 3);
        // A redelivered message is stored and announced once.
        deliver(&m, "m2", "bob", "first line\nsecond line", 2, true);
        assert_eq!(m.db().total_unread().unwrap(), 5);
    }

    #[test]
    fn a_flood_of_questions_keeps_only_the_newest_open_and_closes_the_oldest_on_the_page() {
        let ui = Arc::new(Recorder::default());
        let (_dir, m) = open(&ui);
        let q = |n: usize| QuestionView {
            question_id: format!("q{n}"),
            conversation_id: None,
            round: None,
            text: format!("question {n}"),
            kind: QuestionKind::Text,
            options: Vec::new(),
        };
        let flood = MAX_OPEN_QUESTIONS + 10;
        for n in 0..flood {
            m.state.apply(SessionEvent::Question(q(n)));
        }
        // The same id again replaces, it does not add.
        m.state.apply(SessionEvent::Question(q(flood - 1)));
        let open: Vec<String> = m
            .bootstrap()
            .unwrap()
            .questions
            .into_iter()
            .map(|q| q.question_id)
            .collect();
        let newest: Vec<String> = (flood - MAX_OPEN_QUESTIONS..flood)
            .map(|n| format!("q{n}"))
            .collect();
        assert_eq!(open, newest);
        let closed: Vec<String> = lock(&ui.0)
            .iter()
            .filter_map(|u| match u {
                Update::QuestionClosed(id) => Some(id.clone()),
                _ => None,
            })
            .collect();
        let oldest: Vec<String> = (0..10).map(|n| format!("q{n}")).collect();
        assert_eq!(closed, oldest);
        assert!(m.close_question("q40"));
        assert!(!m.close_question("q0"));
    }

    #[tokio::test]
    async fn replies_edits_deletes_and_reactions_are_stored_queued_and_checked() {
        let ui = Arc::new(Recorder::default());
        let (_dir, m) = open(&ui);
        m.set_settings(Settings {
            client_id: Some(id("alice")),
            ..Settings::default()
        });
        let bob = id("bob");
        deliver(&m, "b1", "bob", "lunch?", 1, true);
        let theirs = m
            .load_messages(&bob, None, None, 10)
            .await
            .unwrap()
            .messages[0]
            .clone();
        // A reply quotes bob's message by its wire id.
        let reply = m.send_message(&bob, "yes", Some(theirs.seq)).await.unwrap();
        let quoted = reply.content.reply_to.clone().unwrap();
        assert_eq!(
            (quoted.sender.as_str(), quoted.message_id.as_str()),
            ("bob", "b1")
        );
        assert_eq!(quoted.excerpt, "lunch?");
        assert_eq!(quoted.seq, Some(theirs.seq));
        // Ours can be edited (earlier text kept); bob's cannot, nor deleted for everyone.
        let edited = m.edit_message(&bob, reply.seq, "yes!").await.unwrap();
        assert!(edited.content.edited);
        assert_eq!(edited.body, "yes!");
        let versions = m.message_versions(&bob, reply.seq).unwrap();
        assert_eq!(versions[0].body, "yes");
        assert!(matches!(
            m.edit_message(&bob, theirs.seq, "mine").await,
            Err(MessengerError::InvalidInput(_))
        ));
        assert!(matches!(
            m.delete_message(&bob, theirs.seq, true).await,
            Err(MessengerError::InvalidInput(_))
        ));
        assert!(matches!(
            m.react(&bob, theirs.seq, "not one").await,
            Err(MessengerError::InvalidInput(_))
        ));
        // A reaction toggles.
        let liked = m.react(&bob, theirs.seq, "👍").await.unwrap();
        assert_eq!(liked.content.reactions[0].reactors, ["alice"]);
        let unliked = m.react(&bob, theirs.seq, "👍").await.unwrap();
        assert!(unliked.content.reactions.is_empty());
        // Deleted for everyone: a tombstone, and no more edits.
        m.delete_message(&bob, reply.seq, true).await.unwrap();
        assert!(matches!(
            m.edit_message(&bob, reply.seq, "again").await,
            Err(MessengerError::InvalidInput(_))
        ));
        // Everything waits in the outbox, in order, with its kind.
        let kinds: Vec<Option<String>> = m
            .db()
            .outbox()
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        let kinds: Vec<Option<&str>> = kinds.iter().map(Option::as_deref).collect();
        assert_eq!(
            kinds,
            [
                Some("reply"),
                Some("edit"),
                Some("reaction"),
                Some("reaction"),
                Some("delete")
            ]
        );
        // An original client (unsigned, no pinned key) gets neither reactions nor deletes.
        deliver(&m, "o1", "olga", "hello from an old client", 2, false);
        let olga = id("olga");
        let old = m
            .load_messages(&olga, None, None, 10)
            .await
            .unwrap()
            .messages[0]
            .clone();
        assert!(matches!(
            m.react(&olga, old.seq, "👍").await,
            Err(MessengerError::InvalidInput(text)) if text.contains("original client")
        ));
        // Deleted for me: gone from this device, the page told.
        m.delete_message(&bob, theirs.seq, false).await.unwrap();
        assert!(m.db().message(&bob, theirs.seq).unwrap().is_none());
        assert!(lock(&ui.0)
            .iter()
            .any(|u| matches!(u, Update::Removed(r) if r.id == "b1")));
    }

    #[tokio::test]
    async fn with_read_receipts_off_others_are_not_shown_and_stale_typing_is_dropped() {
        let ui = Arc::new(Recorder::default());
        let (_dir, m) = open(&ui);
        m.set_settings(Settings {
            client_id: Some(id("alice")),
            read_receipts: false,
            ..Settings::default()
        });
        let bob = id("bob");
        let sent = m.send_message(&bob, "hello", None).await.unwrap();
        let read = m
            .db()
            .mark_read_by_peer(
                &bob,
                &[sent.content.wire_id.clone().unwrap().parse().unwrap()],
            )
            .unwrap();
        m.state.apply(SessionEvent::Changed(read[0].clone()));
        let page = m.load_messages(&bob, None, None, 10).await.unwrap();
        assert_eq!(page.messages[0].status, DeliveryStatus::Delivered);
        let shown: Vec<DeliveryStatus> = lock(&ui.0)
            .iter()
            .filter_map(|u| match u {
                Update::Message(v) => Some(v.status),
                _ => None,
            })
            .collect();
        assert_eq!(shown, [DeliveryStatus::Delivered]);

        let now = u64::try_from(now_ms()).unwrap();
        let stale = now - u64::try_from(TYPING_STALE.as_millis()).unwrap() - 1;
        for sent_at in [stale, now] {
            m.state.apply(SessionEvent::Typing {
                peer: bob.clone(),
                started: true,
                sent_at,
            });
        }
        let typing = lock(&ui.0)
            .iter()
            .filter(|u| matches!(u, Update::Typing(t) if t.typing))
            .count();
        assert_eq!(typing, 1, "only the fresh notice");
    }

    #[tokio::test]
    async fn applied_events_reach_storage_and_the_page_and_statuses_arrive_merged() {
        let ui = Arc::new(Recorder::default());
        let (_dir, m) = open(&ui);
        m.set_settings(Settings {
            client_id: Some(id("alice")),
            ..Settings::default()
        });
        let sent = m.send_message(&id("bob"), "hello", None).await.unwrap();
        assert_eq!(sent.status, DeliveryStatus::Pending);
        let status = |status| SessionEvent::Status {
            local_id: sent.id.clone(),
            status,
        };
        // A delivery, then a late failure and a late "sent": the page only ever hears of
        // statuses that moved the message forward, so it can keep the latest.
        for event in [
            status(DeliveryStatus::Delivered),
            status(DeliveryStatus::Failed),
            status(DeliveryStatus::Sent),
        ] {
            m.state.apply(event);
        }
        let statuses: Vec<DeliveryStatus> = lock(&ui.0)
            .iter()
            .filter_map(|u| match u {
                Update::Message(v) if v.id == sent.id => Some(v.status),
                _ => None,
            })
            .collect();
        assert_eq!(statuses, [DeliveryStatus::Delivered]);

        // Presence and the indicator.
        m.state
            .apply(SessionEvent::Online(vec![id("bob"), id("carol")]));
        m.state.apply(SessionEvent::Presence {
            peer: id("carol"),
            online: false,
        });
        let online: Vec<String> = m
            .bootstrap()
            .unwrap()
            .peers
            .into_iter()
            .filter(|p| p.online)
            .map(|p| p.id.to_string())
            .collect();
        assert_eq!(online, ["bob"]);
        let view = ConnectionView {
            state: ConnectionState::Connected,
            ..ConnectionView::offline(None)
        };
        m.state.apply(SessionEvent::Connection(view.clone()));
        m.state.apply(SessionEvent::Connection(view));
        let connections = lock(&ui.0)
            .iter()
            .filter(|u| matches!(u, Update::Connection(_)))
            .count();
        assert_eq!(connections, 1, "an unchanged indicator is not sent again");
        m.state.apply(SessionEvent::PresenceCleared);
        assert!(m.bootstrap().unwrap().peers.iter().all(|p| !p.online));
    }

    #[test]
    fn names_and_urls_are_checked_with_readable_reasons() {
        assert_eq!(validate_client_id(" alice ").unwrap().as_str(), "alice");
        assert!(validate_client_id("").is_err());
        assert!(validate_client_id("two words").is_err());
        assert!(validate_server_url("ws://10.0.0.2:3005").is_ok());
        assert!(validate_server_url("wss://chat.example.org/ws").is_ok());
        assert!(validate_server_url("http://x").is_err());
        assert!(validate_server_url("ws://").is_err());
        assert!(validate_fingerprint("not a number").is_err());
    }
}
