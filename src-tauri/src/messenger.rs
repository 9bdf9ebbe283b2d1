//! The app's services, without Tauri: identity, settings, storage, presence, open questions and
//! the running [`Session`]. Commands call into a [`Messenger`]; what changes is pushed to the
//! page through the [`Ui`] trait, which the Tauri side ([`crate::bridge`]) implements. Tests can
//! drive a `Messenger` with a recording `Ui`.

use std::collections::{BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use lattice_crypto::Identity;
use lattice_protocol::{ClientId, QuestionId};

use crate::error::CommandError;
use crate::session::Session;
use crate::storage::settings::{ServerMode, Settings};
use crate::storage::{self, Db, MessageStatus, StorageError};
use crate::views::{
    Bootstrap, ConnectionView, Me, MessagePage, MessageView, Notice, PeerView, QuestionView,
};

/// Largest message text accepted from the composer, in bytes. The sealed frame must stay under
/// the protocol's 256 KiB frame limit after base64 and the envelope (≈ 4/3 growth + headers).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// Questions kept open at once. A server (or a flood through it) cannot grow the app's memory
/// or the page's queue without bound: beyond this the oldest open question is closed (the
/// server lets an unanswered question expire anyway).
pub const MAX_OPEN_QUESTIONS: usize = 32;

/// Largest answer to a server question, in bytes.
pub const MAX_ANSWER_BYTES: usize = 4 * 1024;

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
    /// [`MAX_OPEN_QUESTIONS`].
    QuestionClosed(String),
    /// The connection state changed.
    Connection(ConnectionView),
    /// Something to tell the person.
    Notice(Notice),
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

/// Where updates go. Implementations must not block: they run on the peer's event path.
pub trait Ui: Send + Sync + 'static {
    /// Delivers one update.
    fn send(&self, update: Update);
}

/// What changes while the app runs and is not on disk.
#[derive(Debug, Default)]
struct Live {
    /// Online peers (others), as the server reports them.
    online: BTreeSet<String>,
    /// Questions asked and not yet answered or dismissed, oldest first; at most
    /// [`MAX_OPEN_QUESTIONS`].
    questions: VecDeque<QuestionView>,
    /// The connection indicator.
    connection: Option<ConnectionView>,
}

/// The app's state and services. Shared as `Arc<Messenger>`.
pub struct Messenger {
    data_dir: PathBuf,
    db: Arc<Db>,
    ui: Arc<dyn Ui>,
    // std Mutex: read or replaced whole, never held across an `.await`.
    settings: Mutex<Settings>,
    // std Mutex: a clone of the Arc is taken and the lock released at once.
    identity: Mutex<Option<Arc<Identity>>>,
    // std Mutex: small maps, updated from the peer's event handler, never across an `.await`.
    live: Mutex<Live>,
    // tokio Mutex: held across the `.await`s of starting and stopping a session, so that two
    // restarts never interleave.
    session: tokio::sync::Mutex<Option<Session>>,
    focused: AtomicBool,
}

impl std::fmt::Debug for Messenger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Messenger")
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
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
        // Private at creation and again on every start (docs/security.md: 0600 in 0700).
        storage::create_private_dir(data_dir)?;
        storage::create_private_file(&data_dir.join(storage::DB_FILE))?;
        let db = Db::open(&data_dir.join(storage::DB_FILE))?;
        let mut private = storage::db_files(data_dir);
        private.push(data_dir.join(storage::SETTINGS_FILE));
        storage::restrict_files(&private)?;
        let identity = storage::load_identity(data_dir, false)?.map(|(identity, _)| identity);
        Ok(Self {
            data_dir: data_dir.to_owned(),
            db: Arc::new(db),
            ui,
            settings: Mutex::new(settings),
            identity: Mutex::new(identity.map(Arc::new)),
            live: Mutex::new(Live::default()),
            session: tokio::sync::Mutex::new(None),
            focused: AtomicBool::new(true),
        })
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The database.
    pub fn db(&self) -> &Arc<Db> {
        &self.db
    }

    /// Where updates go.
    pub fn ui(&self) -> &Arc<dyn Ui> {
        &self.ui
    }

    /// A copy of the current settings.
    pub fn settings(&self) -> Settings {
        lock(&self.settings).clone()
    }

    /// Replaces the settings in memory (the caller persists them).
    pub fn set_settings(&self, settings: Settings) {
        *lock(&self.settings) = settings;
    }

    /// Our identity, once created.
    pub fn identity(&self) -> Option<Arc<Identity>> {
        lock(&self.identity).clone()
    }

    /// Records whether the main window has focus (notifications only when it has not).
    pub fn set_focused(&self, focused: bool) {
        self.focused.store(focused, Ordering::Relaxed);
    }

    fn me(&self) -> Option<Me> {
        let settings = self.settings();
        let identity = self.identity()?;
        Some(Me {
            client_id: settings.client_id?,
            fingerprint: identity.identity_public_key().fingerprint().to_string(),
        })
    }

    /// Everything the page needs to draw itself.
    ///
    /// # Errors
    /// [`CommandError::Storage`].
    pub fn bootstrap(&self) -> Result<Bootstrap, CommandError> {
        let settings = self.settings();
        let (connection, questions) = {
            let live = lock(&self.live);
            (
                live.connection
                    .clone()
                    .unwrap_or_else(|| ConnectionView::offline(None)),
                live.questions.iter().cloned().collect(),
            )
        };
        Ok(Bootstrap {
            needs_setup: !settings.is_set_up() || self.identity().is_none(),
            me: self.me(),
            settings,
            connection,
            peers: self.peer_views()?,
            questions,
            data_dir: self.data_dir.display().to_string(),
        })
    }

    /// First run: validates the choices, creates the identity (or keeps an existing one) and
    /// returns the new state. The caller persists the settings and starts the session.
    ///
    /// # Errors
    /// [`CommandError::InvalidInput`] with a readable reason; [`CommandError::Storage`].
    pub fn complete_setup(
        &self,
        client_id: &str,
        server_mode: ServerMode,
        server_url: Option<&str>,
    ) -> Result<Settings, CommandError> {
        let mut settings = self.settings();
        settings.client_id = Some(validate_client_id(client_id)?);
        settings.server_mode = server_mode;
        if server_mode == ServerMode::Connect {
            settings.server_url = validate_server_url(server_url.unwrap_or(""))?;
        }
        let Some((identity, created)) = storage::load_identity(&self.data_dir, true)? else {
            return Err(CommandError::Internal(
                "the identity was not created".into(),
            ));
        };
        if created {
            tracing::info!("created a new identity");
        }
        *lock(&self.identity) = Some(Arc::new(identity));
        self.set_settings(settings.clone());
        Ok(settings)
    }

    // ---------- peers ----------

    /// The peer list: contacts from disk joined with presence.
    ///
    /// # Errors
    /// [`CommandError::Storage`].
    pub fn peer_views(&self) -> Result<Vec<PeerView>, CommandError> {
        let online = lock(&self.live).online.clone();
        let me = self.settings().client_id;
        let mut views: Vec<PeerView> = self
            .db
            .peers()?
            .into_iter()
            .filter(|r| Some(&r.peer_id) != me.as_ref())
            .map(|r| {
                let is_online = online.contains(&r.peer_id);
                PeerView::from_record(r, is_online)
            })
            .collect();
        // Conversations first (most recent first, as stored), then online people, then the rest.
        views.sort_by_key(|p| (p.last_at.is_none(), !p.online && p.last_at.is_none()));
        Ok(views)
    }

    /// Sends the current peer list to the page.
    pub fn publish_peers(&self) {
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

    /// Replaces the set of online peers (after a discover).
    pub fn set_online(&self, peers: impl IntoIterator<Item = String>) {
        let now = now_ms();
        let peers: BTreeSet<String> = peers.into_iter().collect();
        for p in &peers {
            if let Err(e) = self.db.ensure_contact(p, now) {
                tracing::warn!(error = %e, "cannot store contact");
            }
        }
        lock(&self.live).online = peers;
        self.publish_peers();
    }

    /// One peer came online or went offline.
    pub fn set_presence(&self, peer: &str, online: bool) {
        if online {
            if let Err(e) = self.db.ensure_contact(peer, now_ms()) {
                tracing::warn!(error = %e, "cannot store contact");
            }
            lock(&self.live).online.insert(peer.to_owned());
        } else {
            lock(&self.live).online.remove(peer);
        }
        self.publish_peers();
    }

    /// Forgets presence (the connection is gone: nobody is known to be online).
    pub fn clear_presence(&self) {
        lock(&self.live).online.clear();
        self.publish_peers();
    }

    /// Marks a conversation read.
    ///
    /// # Errors
    /// [`CommandError::Storage`].
    pub fn mark_read(&self, peer: &str) -> Result<(), CommandError> {
        self.db.mark_read(peer)?;
        self.publish_peers();
        self.publish_unread();
        Ok(())
    }

    /// Marks a contact verified (fingerprints compared) or not.
    ///
    /// # Errors
    /// [`CommandError::InvalidInput`] if no identity key is pinned for the peer.
    pub fn set_verified(&self, peer: &str, verified: bool) -> Result<(), CommandError> {
        if verified && self.db.pinned_key(peer)?.is_none() {
            return Err(CommandError::InvalidInput(format!(
                "{peer} has no identity key to verify yet."
            )));
        }
        self.db.set_user_verified(peer, verified)?;
        self.publish_peers();
        Ok(())
    }

    // ---------- messages ----------

    /// A page of history, oldest first: the latest messages, those before `before`, or — with
    /// `after` — those after it. `has_more` tells whether more exist in that direction.
    ///
    /// # Errors
    /// [`CommandError::Storage`].
    pub fn load_messages(
        &self,
        peer: &str,
        before: Option<i64>,
        after: Option<i64>,
        limit: u32,
    ) -> Result<MessagePage, CommandError> {
        let limit = limit.clamp(1, storage::db::MAX_PAGE);
        // One extra row tells whether there is more.
        let (records, has_more) = match after {
            Some(after) => {
                let mut records = self.db.page_after(peer, after, limit + 1)?;
                let has_more = records.len() > limit as usize;
                records.truncate(limit as usize);
                (records, has_more)
            }
            None => {
                let mut records = self.db.page(peer, before, limit + 1)?;
                let has_more = records.len() > limit as usize;
                if has_more {
                    records.remove(0);
                }
                (records, has_more)
            }
        };
        Ok(MessagePage {
            messages: records.into_iter().map(MessageView::from).collect(),
            has_more,
        })
    }

    /// Stores an outgoing message in history and the outbox (durable before this returns) and
    /// wakes the session to send it.
    ///
    /// # Errors
    /// [`CommandError::InvalidInput`] for an empty or oversized text or a bad peer id;
    /// [`CommandError::NotSetUp`]; [`CommandError::Storage`].
    pub async fn send_message(&self, peer: &str, text: &str) -> Result<MessageView, CommandError> {
        if !self.settings().is_set_up() {
            return Err(CommandError::NotSetUp);
        }
        let peer = validate_client_id(peer)?;
        if text.trim().is_empty() {
            return Err(CommandError::InvalidInput("Type a message first.".into()));
        }
        if text.len() > MAX_MESSAGE_BYTES {
            return Err(CommandError::InvalidInput(format!(
                "That message is too long ({} KiB); the limit is {} KiB.",
                text.len() / 1024,
                MAX_MESSAGE_BYTES / 1024
            )));
        }
        let local_id = uuid::Uuid::new_v4().to_string();
        // The wire id is fixed now, so every resend (also after a restart) is the same message.
        let wire_id = uuid::Uuid::new_v4().to_string();
        let record = self
            .db
            .enqueue_outgoing(&local_id, &wire_id, &peer, text, now_ms())?;
        self.publish_peers();
        if let Some(session) = self.session.lock().await.as_ref() {
            session.wake_outbox();
        }
        Ok(record.into())
    }

    /// Applies a delivery update to an outgoing message and tells the page.
    pub fn advance(&self, local_id: &str, status: MessageStatus) {
        match self.db.advance_status(local_id, status) {
            Ok(Some(record)) => self.ui.send(Update::Message(record.into())),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cannot update a message's status"),
        }
    }

    /// Stores an incoming message (deduplicated by id) and tells the page, the tray and, when
    /// the window is not focused, the notification centre.
    pub fn receive(
        &self,
        message_id: &str,
        from: &str,
        text: &str,
        at_ms: i64,
        authenticated: bool,
    ) {
        let record =
            match self
                .db
                .insert_incoming(message_id, from, text, at_ms, authenticated, false)
            {
                Ok(Some(record)) => record,
                Ok(None) => return,
                Err(e) => {
                    tracing::error!(error = %e, "cannot store an incoming message");
                    self.notice(
                        "storage",
                        format!("A message from {from} could not be saved: {e}"),
                    );
                    return;
                }
            };
        self.ui.send(Update::Message(record.into()));
        self.publish_peers();
        self.publish_unread();
        if self.settings().notifications && !self.focused.load(Ordering::Relaxed) {
            let first_line: String = text
                .lines()
                .next()
                .unwrap_or("")
                .chars()
                .take(120)
                .collect();
            let title = if authenticated {
                from.to_owned()
            } else {
                format!("{from} (unverified sender)")
            };
            self.ui.send(Update::Notify {
                title,
                body: notification_text(&first_line),
            });
        }
    }

    // ---------- questions, connection, notices ----------

    /// A question arrived. Unless the window has focus, a notification points to it too (a
    /// question expires on the server if nobody answers).
    pub fn question(&self, q: QuestionView) {
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

    /// Removes a question from the open ones; false if it was not open.
    pub fn close_question(&self, question_id: &str) -> bool {
        let mut live = lock(&self.live);
        let before = live.questions.len();
        live.questions.retain(|q| q.question_id != question_id);
        live.questions.len() != before
    }

    /// The connection state changed.
    pub fn set_connection(&self, view: ConnectionView) {
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

    /// Tells the person something.
    pub fn notice(&self, kind: &str, message: String) {
        self.ui.send(Update::Notice(Notice {
            kind: kind.to_owned(),
            message,
        }));
    }

    // ---------- session ----------

    /// Starts (or restarts) the session with the current settings. Does nothing before first
    /// run is complete.
    ///
    /// # Errors
    /// [`CommandError::Hosting`] when the embedded server cannot start;
    /// [`CommandError::InvalidInput`] for an unusable server URL.
    pub async fn restart_session(self: &Arc<Self>) -> Result<(), CommandError> {
        let mut slot = self.session.lock().await;
        if let Some(old) = slot.take() {
            old.stop().await;
        }
        self.clear_presence();
        let settings = self.settings();
        let (Some(client_id), Some(identity)) = (settings.client_id.clone(), self.identity())
        else {
            return Ok(());
        };
        let client_id = ClientId::try_from(client_id.as_str())
            .map_err(|e| CommandError::InvalidInput(format!("Your name is not valid: {e}")))?;
        match Session::start(Arc::clone(self), &settings, client_id, identity).await {
            Ok(session) => {
                *slot = Some(session);
                Ok(())
            }
            Err(e) => {
                self.set_connection(ConnectionView::offline(Some(e.to_string())));
                Err(e)
            }
        }
    }

    /// Stops the session (app exit).
    pub async fn stop_session(&self) {
        if let Some(session) = self.session.lock().await.take() {
            session.stop().await;
        }
    }

    /// Runs `f` with the running session, or fails with a readable error.
    ///
    /// # Errors
    /// [`CommandError::Peer`] when there is no session.
    pub async fn with_session<T>(
        &self,
        f: impl FnOnce(&Session) -> Result<T, CommandError>,
    ) -> Result<T, CommandError> {
        match self.session.lock().await.as_ref() {
            Some(session) => f(session),
            None => Err(CommandError::Peer(
                "Not connected to a server. Check Settings → Server.".into(),
            )),
        }
    }

    /// Accepts a contact's changed identity key, the one with `fingerprint` (what the person
    /// compared), then lets blocked messages go.
    ///
    /// # Errors
    /// [`CommandError::Peer`] when there is no session or the change cannot be accepted.
    pub async fn accept_key_change(
        &self,
        peer: &str,
        fingerprint: &str,
    ) -> Result<(), CommandError> {
        let session = self.session.lock().await;
        let Some(session) = session.as_ref() else {
            return Err(CommandError::Peer(
                "Connect to the server to accept a new key.".into(),
            ));
        };
        session.accept_key_change(peer, fingerprint).await?;
        session.wake_outbox();
        self.publish_peers();
        Ok(())
    }

    /// Answers a server question.
    ///
    /// # Errors
    /// [`CommandError::UnknownQuestion`], [`CommandError::InvalidInput`], [`CommandError::Peer`].
    pub async fn answer_question(
        &self,
        question_id: &str,
        response: serde_json::Value,
    ) -> Result<(), CommandError> {
        let id = QuestionId::try_from(question_id).map_err(|_| CommandError::UnknownQuestion)?;
        match &response {
            serde_json::Value::String(s) if s.len() <= MAX_ANSWER_BYTES => {}
            serde_json::Value::Bool(_) => {}
            serde_json::Value::String(_) => {
                return Err(CommandError::InvalidInput(
                    "That answer is too long.".into(),
                ))
            }
            _ => {
                return Err(CommandError::InvalidInput(
                    "An answer is text or yes/no.".into(),
                ))
            }
        }
        if !lock(&self.live)
            .questions
            .iter()
            .any(|q| q.question_id == question_id)
        {
            return Err(CommandError::UnknownQuestion);
        }
        self.with_session(|s| s.respond(&id, response)).await?;
        self.close_question(question_id);
        Ok(())
    }
}

/// Checks a client id against the protocol's rule, with a sentence for people.
///
/// # Errors
/// [`CommandError::InvalidInput`].
pub fn validate_client_id(id: &str) -> Result<String, CommandError> {
    let id = id.trim();
    if id.is_empty() {
        return Err(CommandError::InvalidInput("Choose a name first.".into()));
    }
    ClientId::try_from(id)
        .map(|c| c.as_str().to_owned())
        .map_err(|_| {
            CommandError::InvalidInput(
                "A name is 1–64 characters: letters, digits and . _ - @ (no spaces).".into(),
            )
        })
}

/// Checks a server URL: `ws://` or `wss://` with a host.
///
/// # Errors
/// [`CommandError::InvalidInput`].
pub fn validate_server_url(url: &str) -> Result<String, CommandError> {
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
        _ => Err(CommandError::InvalidInput(
            "Enter a server address like ws://192.168.1.20:3005 or wss://chat.example.org.".into(),
        )),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

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

    #[test]
    fn notifies_only_when_unfocused_and_enabled_with_sender_and_first_line() {
        let dir = tempfile::tempdir().unwrap();
        let ui = Arc::new(Recorder::default());
        let m = Messenger::open(dir.path(), Settings::default(), ui.clone()).unwrap();

        m.receive("m1", "bob", "seen while focused", 1, true);
        assert!(ui.notifications().is_empty());

        m.set_focused(false);
        m.receive("m2", "bob", "first line\nsecond line", 2, true);
        m.receive("m3", "mallory", "hi", 3, false);
        m.receive(
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
        m.receive("m4", "bob", "quiet", 4, true);
        assert_eq!(ui.notifications().len(), 3);
        // A redelivered message is stored and announced once.
        m.receive("m2", "bob", "first line\nsecond line", 2, true);
        assert_eq!(m.db().total_unread().unwrap(), 5);
    }

    #[test]
    fn a_flood_of_questions_keeps_only_the_newest_open_and_closes_the_oldest_on_the_page() {
        let dir = tempfile::tempdir().unwrap();
        let ui = Arc::new(Recorder::default());
        let m = Messenger::open(dir.path(), Settings::default(), ui.clone()).unwrap();
        let q = |n: usize| QuestionView {
            question_id: format!("q{n}"),
            conversation_id: None,
            round: None,
            text: format!("question {n}"),
            kind: "text",
            options: Vec::new(),
        };
        let flood = MAX_OPEN_QUESTIONS + 10;
        for n in 0..flood {
            m.question(q(n));
        }
        // The same id again replaces, it does not add.
        m.question(q(flood - 1));
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

    #[test]
    fn names_and_urls_are_checked_with_readable_reasons() {
        assert_eq!(validate_client_id(" alice ").unwrap(), "alice");
        assert!(validate_client_id("").is_err());
        assert!(validate_client_id("two words").is_err());
        assert!(validate_server_url("ws://10.0.0.2:3005").is_ok());
        assert!(validate_server_url("wss://chat.example.org/ws").is_ok());
        assert!(validate_server_url("http://x").is_err());
        assert!(validate_server_url("ws://").is_err());
    }
}
