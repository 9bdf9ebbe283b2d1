//! [`MessagingPeer`]: the public handle, and `Inner`, the state its tasks share.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use lattice_crypto::{registration_statement, Fingerprint, IdentityPublicKey};
use lattice_protocol::limits::MAX_FRAME_BYTES;
use lattice_protocol::{
    decode_server, encode, ClientFrame, ClientId, Delivered, Empty, ErrorPayload, Frame,
    FrameBody as _, MessageId, PeerResponse, PublicKeyField, QuestionId, Register, Registered,
    RequestId, SendMessage, ServerFrame, Verification,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::sleep_until;
use tokio_util::sync::CancellationToken;

use crate::events::{
    ConnectionState, Dispatcher, HandlerHandle, IncomingMessage, IncomingQuestion, PeerEvent,
};
use crate::held::{Held, Refusals, RetryPolicy};
use crate::keys::{KeyCache, Keyless, PeerKey};
use crate::pending::{ErrorAction, Pending, Reply, Routed, WaitOptions};
use crate::replay::{MemoryReplayStore, ReplayGuard, ReplayStore};
use crate::sanitize::Sanitized;
use crate::transport::Dialer;
use crate::{defaults, Algorithm, EventStream, PeerConfig, PeerError};

pub(crate) const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Which queue a frame goes out through.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Lane {
    /// The registration handshake of connection `epoch`: written at once.
    Control(u64),
    /// Everything else: written once registered; queued while disconnected.
    Normal,
}

/// The current connection, as far as senders need to know.
#[derive(Debug, Default)]
struct Link {
    epoch: u64,
    control: Option<mpsc::Sender<String>>,
    registered: bool,
}

/// A message we sent and whose fate (ack or error) is not known yet.
#[derive(Debug, Default)]
struct Outstanding {
    order: VecDeque<RequestId>,
    map: HashMap<RequestId, (MessageId, ClientId)>,
}

/// Request ids sent recently (at most [`defaults::ISSUED_REQUESTS`], the oldest forgotten first).
#[derive(Debug, Default)]
struct Issued {
    order: VecDeque<RequestId>,
    set: std::collections::HashSet<RequestId>,
}

/// The supervisor task and its cancel token.
#[derive(Debug)]
struct Running {
    cancel: CancellationToken,
    handle: JoinHandle<()>,
}

/// State shared by the handle and the tasks.
#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) config: PeerConfig,
    pub(crate) dialer: Dialer,
    pub(crate) dispatcher: Arc<Dispatcher>,
    pending: Pending,
    state: watch::Sender<ConnectionState>,
    outbound_tx: mpsc::Sender<String>,
    // std Mutexes below: each guards a short section (take/put, map lookups), never an await.
    outbound_rx: Mutex<Option<mpsc::Receiver<String>>>,
    link: Mutex<Link>,
    pub(crate) keys: Mutex<KeyCache>,
    /// Senders recently found to have no identity key.
    pub(crate) keyless: Mutex<Keyless>,
    pub(crate) key_changes: Mutex<HashMap<ClientId, IdentityPublicKey>>,
    pub(crate) replay: Mutex<ReplayGuard>,
    /// Durable high-water marks behind `replay`.
    pub(crate) replay_store: Arc<dyn ReplayStore>,
    pub(crate) held: Mutex<Held>,
    /// How often each held message was refused, to give up in the end.
    pub(crate) refusals: Mutex<Refusals>,
    /// Woken when held messages become ready to be opened again.
    pub(crate) held_ready: tokio::sync::Notify,
    outstanding: Mutex<Outstanding>,
    /// Request ids this client sent recently, so that an `error` naming one it never sent is not
    /// shown as if it were about us.
    issued: Mutex<Issued>,
    cancel: Mutex<Option<CancellationToken>>,
    // tokio Mutex: `connect`/`disconnect` hold it across the wait for the supervisor.
    running: tokio::sync::Mutex<Option<Running>>,
    discovered: AtomicBool,
    verified: AtomicBool,
}

/// Cancels the supervisor of a `connect` call dropped before the first registration.
#[derive(Debug)]
struct AbandonOnDrop(Option<CancellationToken>);

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            c.cancel();
        }
    }
}

/// Cancels the tasks when the last user handle is dropped (tasks hold `Inner`, never this).
#[derive(Debug)]
struct Owner(Arc<Inner>);

impl Drop for Owner {
    fn drop(&mut self) {
        if let Ok(c) = self.0.cancel.lock() {
            if let Some(c) = c.as_ref() {
                c.cancel();
            }
        }
    }
}

/// A Lattice client: connects to a signaling server, registers with a proven identity, discovers
/// peers and exchanges end-to-end encrypted messages with them.
///
/// Cheap to clone: clones share one connection. The tasks stop when [`MessagingPeer::disconnect`]
/// is called or the last clone is dropped (a handler that captures a clone keeps the peer alive
/// until `disconnect`).
///
/// ```no_run
/// use lattice_crypto::Identity;
/// use lattice_peer::{MessagingPeer, PeerConfig};
/// use lattice_protocol::ClientId;
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let identity = Identity::generate(&mut rand_core::OsRng);
/// let peer = MessagingPeer::new(PeerConfig::new("ws://127.0.0.1:3005", ClientId::new("alice")?, identity))?;
/// peer.on_message(|m| println!("{} says {}", m.from, m.text));
/// peer.connect().await?;
/// for bob in peer.discover_peers().await? {
///     peer.send_message(&bob, "hello").await?;
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct MessagingPeer {
    inner: Arc<Inner>,
    _owner: Arc<Owner>,
}

/// What [`MessagingPeer::send_message`] sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentMessage {
    /// The message id; the matching [`PeerEvent::MessageAck`] or [`PeerEvent::MessageFailed`]
    /// carries it.
    pub message_id: MessageId,
    /// `LatticeV1` to a Lattice peer, `MlKemAes` (unauthenticated) to an original client.
    pub algorithm: Algorithm,
}

impl MessagingPeer {
    /// Builds a peer. Nothing is dialled until [`MessagingPeer::connect`].
    ///
    /// # Errors
    /// [`PeerError::InvalidUrl`] for a URL that is not `ws://` or `wss://`, [`PeerError::Tls`] if
    /// the TLS configuration cannot be built.
    pub fn new(config: PeerConfig) -> Result<Self, PeerError> {
        Self::with_replay_store(config, Arc::new(MemoryReplayStore::default()))
    }

    /// [`MessagingPeer::new`] with a durable [`ReplayStore`]: the high-water marks of signed
    /// senders then survive restarts, so a message accepted before a restart cannot be replayed
    /// after it. [`MessagingPeer::new`] keeps them in memory ([`MemoryReplayStore`]).
    ///
    /// # Errors
    /// As [`MessagingPeer::new`].
    pub fn with_replay_store(
        config: PeerConfig,
        replay_store: Arc<dyn ReplayStore>,
    ) -> Result<Self, PeerError> {
        let dialer = Dialer::new(&config.server_url, &config.tls)?;
        let (outbound_tx, outbound_rx) = mpsc::channel(config.outbound_queue.max(1));
        let (state, _) = watch::channel(ConnectionState::Disconnected);
        let inner = Arc::new(Inner {
            dialer,
            dispatcher: Dispatcher::new(defaults::EVENT_CAPACITY),
            pending: Pending::default(),
            state,
            outbound_tx,
            outbound_rx: Mutex::new(Some(outbound_rx)),
            link: Mutex::new(Link::default()),
            keys: Mutex::new(KeyCache::new(defaults::KEY_CACHE)),
            keyless: Mutex::new(Keyless::new(
                defaults::NO_IDENTITY_KEY_TTL,
                defaults::NO_IDENTITY_KEY_CACHE,
            )),
            key_changes: Mutex::new(HashMap::new()),
            replay: Mutex::new(ReplayGuard::new(
                defaults::REPLAY_WINDOW_PER_PEER,
                (defaults::REPLAY_MAX_PEERS, defaults::REPLAY_MAX_IDS),
                (
                    defaults::REPLAY_MAX_UNSIGNED_PEERS,
                    defaults::REPLAY_MAX_UNSIGNED_IDS,
                ),
            )),
            replay_store,
            held: Mutex::new(Held::new(defaults::HELD_MESSAGES)),
            refusals: Mutex::new(Refusals::new(
                RetryPolicy::from_defaults(),
                defaults::TRANSIENT_REFUSALS_TRACKED,
            )),
            held_ready: tokio::sync::Notify::new(),
            outstanding: Mutex::new(Outstanding::default()),
            issued: Mutex::new(Issued::default()),
            cancel: Mutex::new(None),
            running: tokio::sync::Mutex::new(None),
            discovered: AtomicBool::new(false),
            verified: AtomicBool::new(false),
            config,
        });
        Ok(Self {
            _owner: Arc::new(Owner(Arc::clone(&inner))),
            inner,
        })
    }

    /// Our id.
    pub fn client_id(&self) -> &ClientId {
        &self.inner.config.client_id
    }

    /// The fingerprint of our identity key, to read out to peers.
    pub fn fingerprint(&self) -> Fingerprint {
        self.inner
            .config
            .identity
            .identity_public_key()
            .fingerprint()
    }

    /// Whether the server verified our identity at the last registration.
    pub fn is_verified(&self) -> bool {
        self.inner.verified.load(Ordering::Relaxed)
    }

    /// Connects, registers (verified, with a fresh `challenge`) and resolves once registered. From
    /// then on a supervisor task reconnects and re-registers after every loss, per
    /// [`PeerConfig::reconnect`], until [`MessagingPeer::disconnect`] — or until another
    /// connection of this identity replaces ours: then it raises [`PeerError::Replaced`] as an
    /// event and stops, so that two instances do not take the id from each other forever. Call
    /// `connect` again to take the id back (as soon as the state is
    /// [`ConnectionState::Disconnected`]).
    ///
    /// # Errors
    /// [`PeerError::AlreadyConnected`]; [`PeerError::Connect`] if the server cannot be reached;
    /// [`PeerError::Server`] if it refuses the registration (e.g. `CLIENT_ID_TAKEN`);
    /// [`PeerError::Replaced`] if another connection of this identity replaced ours while it
    /// registered; [`PeerError::Timeout`]. A failed first connection is not retried, unless
    /// [`crate::PeerConfig::retry_first_connect`] is set: then `connect` keeps dialling with the
    /// reconnect backoff until it registers, the failure is permanent
    /// ([`PeerError::is_permanent`]) or the backoff gives up (the last error is returned).
    ///
    /// Cancel-safe: dropping the future before it resolves (e.g. under `tokio::time::timeout`)
    /// abandons the attempt, and a later `connect` starts afresh.
    pub async fn connect(&self) -> Result<(), PeerError> {
        let mut running = self.inner.running.lock().await;
        // A supervisor that was cancelled (an abandoned `connect`) or published `Disconnected` (it
        // gave up, or was replaced) is only returning: wait for it rather than refuse.
        let live = running
            .as_ref()
            .is_some_and(|r| !r.handle.is_finished() && !r.cancel.is_cancelled())
            && self.connection_state() != ConnectionState::Disconnected;
        if live {
            return Err(PeerError::AlreadyConnected);
        }
        if let Some(old) = running.as_mut() {
            // Left in place until it has returned the outbound queue, in case we are dropped here.
            let _ = (&mut old.handle).await;
        }
        *running = None;
        let outbound = self
            .inner
            .outbound_rx
            .lock()
            .ok()
            .and_then(|mut o| o.take())
            .ok_or(PeerError::AlreadyConnected)?;
        let cancel = CancellationToken::new();
        if let Ok(mut c) = self.inner.cancel.lock() {
            *c = Some(cancel.clone());
        }
        // Published before the task runs, so a concurrent `connect` sees a live supervisor.
        self.inner.set_state(ConnectionState::Connecting);
        let (first_tx, first_rx) = oneshot::channel();
        let handle = tokio::spawn(crate::connection::supervise(
            Arc::clone(&self.inner),
            outbound,
            cancel.clone(),
            first_tx,
        ));
        *running = Some(Running {
            cancel: cancel.clone(),
            handle,
        });
        drop(running);
        // Dropped before the first registration (the caller gave up, e.g. a timeout): abandon the
        // attempt rather than leave it connecting behind the caller's back.
        let mut abandon = AbandonOnDrop(Some(cancel));
        match first_rx.await {
            Ok(Ok(())) => {
                abandon.0 = None;
                Ok(())
            }
            Ok(Err(e)) => {
                self.stop().await;
                Err(e)
            }
            Err(_) => {
                self.stop().await;
                Err(PeerError::NotConnected)
            }
        }
    }

    /// Closes the connection and stops reconnecting; waits until the tasks have ended. Frames
    /// still queued stay queued for a later [`MessagingPeer::connect`].
    pub async fn disconnect(&self) {
        self.stop().await;
    }

    async fn stop(&self) {
        let mut running = self.inner.running.lock().await;
        if let Some(r) = running.take() {
            r.cancel.cancel();
            if let Err(e) = r.handle.await {
                tracing::error!(peer = %self.inner.config.client_id, error = %Sanitized(&e), "supervisor task failed");
            }
        }
    }

    /// The current connection state.
    pub fn connection_state(&self) -> ConnectionState {
        *self.inner.state.borrow()
    }

    /// A receiver of the connection state, for code that awaits changes.
    pub fn watch_connection_state(&self) -> watch::Receiver<ConnectionState> {
        self.inner.state.subscribe()
    }

    /// Waits until the peer is registered on a live connection (at once if it is).
    ///
    /// # Errors
    /// [`PeerError::NotConnected`] if the peer is disconnected (never connected, disconnected, or
    /// the reconnect policy gave up); [`PeerError::Timeout`] if registration does not happen
    /// within `timeout`.
    pub async fn register_and_wait(&self, timeout: Duration) -> Result<(), PeerError> {
        let mut rx = self.inner.state.subscribe();
        let deadline = defaults::deadline_after(timeout);
        loop {
            match *rx.borrow_and_update() {
                ConnectionState::Connected => return Ok(()),
                ConnectionState::Disconnected => return Err(PeerError::NotConnected),
                ConnectionState::Connecting | ConnectionState::Reconnecting { .. } => {}
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { return Err(PeerError::NotConnected) },
                () = sleep_until(deadline) => return Err(PeerError::Timeout {
                    request: "register".into(),
                    expected: "register".into(),
                    after: timeout,
                    attempts: 1,
                }),
            }
        }
    }

    /// Lists the other online peers (we are filtered out) and subscribes to presence events
    /// ([`PeerEvent::PeerConnected`], [`PeerEvent::PeerDisconnected`]), renewed after every
    /// reconnect.
    ///
    /// # Errors
    /// As [`MessagingPeer::send_to_server_and_wait`].
    ///
    /// A server answers in pages of at most [`lattice_protocol::limits::MAX_DISCOVER_PEERS`] ids;
    /// this asks for the next page until the last one (at most
    /// [`defaults::DISCOVER_MAX_PAGES`] pages).
    pub async fn discover_peers(&self) -> Result<Vec<ClientId>, PeerError> {
        self.inner.discovered.store(true, Ordering::Relaxed);
        let mut peers = Vec::new();
        let mut cursor = None;
        for _ in 0..defaults::DISCOVER_MAX_PAGES {
            let frame = self
                .inner
                .request(
                    Lane::Normal,
                    ClientFrame::Discover(lattice_protocol::Discover {
                        cursor: cursor.take(),
                    }),
                    "discover",
                    WaitOptions::default(),
                )
                .await?;
            let page = match frame {
                ServerFrame::Peers(p) => p,
                other => return Err(unexpected("discover", &other)),
            };
            peers.extend(
                page.peers
                    .into_iter()
                    .filter(|p| p != &self.inner.config.client_id),
            );
            match (page.more, page.cursor) {
                (true, Some(next)) => cursor = Some(next),
                _ => break,
            }
        }
        Ok(peers)
    }

    /// Fetches `target`'s keys from the server. For a Lattice peer the `keySignature` is checked
    /// and the identity key pinned on first use; the keys are cached for sending.
    ///
    /// # Errors
    /// [`PeerError::Server`] (`PEER_NOT_FOUND`), [`PeerError::InvalidPeerKey`],
    /// [`PeerError::InvalidKeySignature`], [`PeerError::KeyChanged`] (also raised as
    /// [`PeerEvent::KeyChanged`]), [`PeerError::KeyDowngrade`], and the errors of requests.
    pub async fn request_public_key(&self, target: &ClientId) -> Result<PeerKey, PeerError> {
        self.inner.fetch_key(target).await
    }

    /// The pinned identity fingerprint of `peer`, if one is pinned.
    ///
    /// # Errors
    /// [`PeerError::KeyStore`].
    pub fn peer_fingerprint(&self, peer: &ClientId) -> Result<Option<Fingerprint>, PeerError> {
        Ok(self
            .inner
            .config
            .key_store
            .pinned(peer)?
            .map(|k| k.fingerprint()))
    }

    /// Accepts the new identity key of `peer`, the one whose fingerprint the user compared out of
    /// band: `fingerprint`, as shown from [`PeerEvent::KeyChanged`]'s `new` (or stored from it).
    ///
    /// Asks the server for `peer`'s current key and pins it only if its fingerprint is exactly
    /// `fingerprint`; then messages flow again, and the messages held back meanwhile open at once
    /// (they arrive as [`PeerEvent::Message`]). If the server now presents any other key, nothing
    /// is pinned and [`PeerError::KeyMismatch`] names both fingerprints (a key that differs from
    /// the pinned one is also reported as a [`PeerEvent::KeyChanged`] of its own): a server cannot
    /// show one key for the comparison and slip in another at acceptance. Works without a
    /// pending change in this run too (after a restart, with the fingerprint the app stored).
    ///
    /// # Errors
    /// [`PeerError::KeyMismatch`]; [`PeerError::NoIdentityKey`] if the server presents `peer`
    /// without an identity key; [`PeerError::InvalidPeerKey`], [`PeerError::InvalidKeySignature`];
    /// [`PeerError::KeyStore`]; the errors of requests ([`PeerError::Server`] with
    /// `PEER_NOT_FOUND`, [`PeerError::Timeout`], [`PeerError::NotConnected`], ...).
    pub async fn accept_key_change(
        &self,
        peer: &ClientId,
        fingerprint: &Fingerprint,
    ) -> Result<(), PeerError> {
        self.inner.accept_key(peer, fingerprint).await
    }

    /// Encrypts `text` for `target` and sends it: `lattice-v1` (signed) to a Lattice peer,
    /// `ml-kem-aes` to an original client (which cannot authenticate anyone). While disconnected
    /// the sealed message is queued and sent after re-registration. The server's verdict arrives
    /// later as [`PeerEvent::MessageAck`] or [`PeerEvent::MessageFailed`].
    ///
    /// # Errors
    /// [`PeerError::KeyChanged`] while a key change of `target` is not accepted; the errors of
    /// [`MessagingPeer::request_public_key`] when the key is not cached;
    /// [`PeerError::MessageTooLarge`]; [`PeerError::QueueFull`].
    pub async fn send_message(
        &self,
        target: &ClientId,
        text: &str,
    ) -> Result<SentMessage, PeerError> {
        self.inner
            .send_message(target, text, new_message_id())
            .await
    }

    /// [`MessagingPeer::send_message`] with a message id chosen by the caller, for a caller that
    /// keeps its own durable outbox: store the id with the message when it is first queued and
    /// send every retry (after a crash or a restart) with that same id. The `lattice-v1`
    /// signature and AAD bind the id, so a resend is a replay of the same logical message and the
    /// recipient's dedup by `messageId` drops the duplicate. Use a fresh id (a UUID) for each
    /// new message: reusing one for a different text makes the recipient drop that text.
    ///
    /// # Errors
    /// As [`MessagingPeer::send_message`]; also [`PeerError::InvalidArgument`] if `message_id`
    /// cannot double as a request id.
    pub async fn send_message_with_id(
        &self,
        target: &ClientId,
        text: &str,
        message_id: MessageId,
    ) -> Result<SentMessage, PeerError> {
        self.inner.send_message(target, text, message_id).await
    }

    /// Answers a server question (`response` is usually a string; a boolean for `confirm`).
    /// The server's reaction (often the next round) arrives as another event; an error (such as
    /// `UNKNOWN_QUESTION`) arrives as [`PeerEvent::Error`].
    ///
    /// # Errors
    /// [`PeerError::QueueFull`], [`PeerError::MessageTooLarge`].
    pub fn respond_to_server(
        &self,
        question_id: &QuestionId,
        response: impl Into<serde_json::Value>,
    ) -> Result<(), PeerError> {
        let frame = ClientFrame::PeerResponse(PeerResponse {
            question_id: question_id.clone(),
            response: response.into(),
        });
        self.inner.send_frame(
            Lane::Normal,
            Frame::with_request_id(frame, Some(self.inner.issue())),
        )
    }

    /// Asks the server to start its built-in multi-round demo conversation with us.
    ///
    /// # Errors
    /// [`PeerError::QueueFull`].
    pub fn debug_question(&self) -> Result<(), PeerError> {
        let frame = ClientFrame::DebugQuestion(Empty {});
        self.inner.send_frame(
            Lane::Normal,
            Frame::with_request_id(frame, Some(self.inner.issue())),
        )
    }

    /// Sends `frame` and waits for an answer of type `expected_type` (a server frame type such as
    /// `"discover"` or `"public_key_response"`).
    ///
    /// The frame gets a fresh `requestId` (kept across retries). An answer carrying it is taken
    /// first; a frame without one is taken if its type matches and `options.filter` accepts it.
    /// An `error` with our `requestId` goes to `options.error_handler` (default: fail).
    ///
    /// ```no_run
    /// # async fn f(peer: lattice_peer::MessagingPeer) -> Result<(), lattice_peer::PeerError> {
    /// use lattice_peer::WaitOptions;
    /// use lattice_protocol::{ClientFrame, Empty, ServerFrame};
    /// let answer = peer
    ///     .send_to_server_and_wait(ClientFrame::Discover(Default::default()), "discover", WaitOptions::default().retries(2))
    ///     .await?;
    /// assert!(matches!(answer, ServerFrame::Peers(_)));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`PeerError::InvalidArgument`] for an unknown `expected_type`; [`PeerError::Timeout`] after
    /// the last attempt; [`PeerError::Server`] for an error the handler fails;
    /// [`PeerError::ConnectionLost`]; [`PeerError::QueueFull`]; [`PeerError::Protocol`] for an
    /// answer of another type carrying our `requestId`.
    pub async fn send_to_server_and_wait(
        &self,
        frame: ClientFrame,
        expected_type: &str,
        options: WaitOptions,
    ) -> Result<ServerFrame, PeerError> {
        let expected = ServerFrame::TYPES
            .iter()
            .copied()
            .find(|t| *t == expected_type)
            .ok_or_else(|| {
                PeerError::InvalidArgument(format!("unknown server frame type {expected_type:?}"))
            })?;
        self.inner
            .request(Lane::Normal, frame, expected, options)
            .await
    }

    /// Subscribes to every event. See [`crate::events`] for the lag policy.
    pub fn events(&self) -> EventStream {
        self.inner.dispatcher.subscribe()
    }

    /// Calls `f` with every event. The handler runs on the peer's tasks: keep it short and never
    /// block (spawn a task for slow work).
    pub fn on_event(&self, f: impl Fn(&PeerEvent) + Send + Sync + 'static) -> HandlerHandle {
        self.inner.dispatcher.add(Arc::new(f))
    }

    /// Calls `f` with every message that decrypted and passed every check.
    pub fn on_message(
        &self,
        f: impl Fn(&IncomingMessage) + Send + Sync + 'static,
    ) -> HandlerHandle {
        self.on_event(move |ev| {
            if let PeerEvent::Message(m) = ev {
                f(m);
            }
        })
    }

    /// Calls `f` with every error reported outside a call (including refused messages).
    pub fn on_error(&self, f: impl Fn(&PeerError) + Send + Sync + 'static) -> HandlerHandle {
        self.on_event(move |ev| {
            if let PeerEvent::Error(e) = ev {
                f(e);
            }
        })
    }

    /// Calls `f` when a peer registers (after we discovered).
    pub fn on_peer_connected(
        &self,
        f: impl Fn(&ClientId) + Send + Sync + 'static,
    ) -> HandlerHandle {
        self.on_event(move |ev| {
            if let PeerEvent::PeerConnected(p) = ev {
                f(p);
            }
        })
    }

    /// Calls `f` when a peer's connection closes.
    pub fn on_peer_disconnected(
        &self,
        f: impl Fn(&ClientId) + Send + Sync + 'static,
    ) -> HandlerHandle {
        self.on_event(move |ev| {
            if let PeerEvent::PeerDisconnected(p) = ev {
                f(p);
            }
        })
    }

    /// Calls `f` on every connection state change.
    pub fn on_connection_state_change(
        &self,
        f: impl Fn(ConnectionState) + Send + Sync + 'static,
    ) -> HandlerHandle {
        self.on_event(move |ev| {
            if let PeerEvent::ConnectionState(s) = ev {
                f(*s);
            }
        })
    }

    /// Calls `f` with every server question; answer with [`MessagingPeer::respond_to_server`].
    pub fn on_server_question(
        &self,
        f: impl Fn(&IncomingQuestion) + Send + Sync + 'static,
    ) -> HandlerHandle {
        self.on_event(move |ev| {
            if let PeerEvent::ServerQuestion(q) = ev {
                f(q);
            }
        })
    }

    /// Calls `f` when a peer's identity key changed.
    pub fn on_key_changed(
        &self,
        f: impl Fn(&ClientId, &Fingerprint, &Fingerprint) + Send + Sync + 'static,
    ) -> HandlerHandle {
        self.on_event(move |ev| {
            if let PeerEvent::KeyChanged { peer, old, new } = ev {
                f(peer, old, new);
            }
        })
    }
}

// A UUID is 36 printable ASCII characters, so it always passes the id rules: the expects below
// cannot fire.
#[allow(clippy::expect_used)]
fn new_request_id() -> RequestId {
    RequestId::new(uuid::Uuid::new_v4().to_string()).expect("a UUID is a valid request id")
}

#[allow(clippy::expect_used)]
pub(crate) fn new_message_id() -> MessageId {
    MessageId::new(uuid::Uuid::new_v4().to_string()).expect("a UUID is a valid message id")
}

pub(crate) fn unexpected(request: &str, got: &ServerFrame) -> PeerError {
    PeerError::Protocol(format!(
        "expected an answer to {request}, got {}",
        got.type_name()
    ))
}

fn server_error(e: ErrorPayload) -> PeerError {
    PeerError::Server {
        error_type: e.error_type,
        details: e.details,
        request_id: e.request_id,
    }
}

impl Inner {
    pub(crate) fn set_state(&self, state: ConnectionState) {
        let changed = self.state.send_if_modified(|s| {
            if *s == state {
                false
            } else {
                *s = state;
                true
            }
        });
        if changed {
            self.dispatcher.emit(PeerEvent::ConnectionState(state));
        }
    }

    pub(crate) fn return_outbound(&self, rx: mpsc::Receiver<String>) {
        if let Ok(mut o) = self.outbound_rx.lock() {
            *o = Some(rx);
        }
    }

    /// A new socket is open: returns its epoch.
    pub(crate) fn link_opened(&self, control: mpsc::Sender<String>) -> u64 {
        match self.link.lock() {
            Ok(mut l) => {
                l.epoch += 1;
                l.control = Some(control);
                l.registered = false;
                l.epoch
            }
            Err(_) => 0,
        }
    }

    pub(crate) fn link_registered(&self, epoch: u64) {
        if let Ok(mut l) = self.link.lock() {
            if l.epoch == epoch {
                l.registered = true;
            }
        }
        self.pending.adopt_queued(epoch);
    }

    pub(crate) fn link_closed(&self, epoch: u64) {
        if let Ok(mut l) = self.link.lock() {
            if l.epoch == epoch {
                l.control = None;
                l.registered = false;
            }
        }
        self.pending.connection_lost(epoch);
    }

    fn registered_epoch(&self) -> Option<u64> {
        self.link
            .lock()
            .ok()
            .and_then(|l| l.registered.then_some(l.epoch))
    }

    /// After each registration: renew the presence subscription if the caller had discovered.
    pub(crate) fn after_registration(&self) {
        if self.discovered.load(Ordering::Relaxed) {
            let frame = Frame::with_request_id(
                ClientFrame::Discover(Default::default()),
                Some(self.issue()),
            );
            if let Err(e) = self.send_frame(Lane::Normal, frame) {
                tracing::warn!(peer = %self.config.client_id, error = %Sanitized(&e), "cannot renew the presence subscription");
            }
        }
    }

    /// Encodes and queues a frame.
    pub(crate) fn send_frame(
        &self,
        lane: Lane,
        frame: Frame<ClientFrame>,
    ) -> Result<(), PeerError> {
        let text = encode(&frame);
        if text.len() > MAX_FRAME_BYTES {
            return Err(PeerError::MessageTooLarge {
                size: text.len(),
                max: MAX_FRAME_BYTES,
            });
        }
        self.send_text(lane, text)
    }

    fn send_text(&self, lane: Lane, text: String) -> Result<(), PeerError> {
        match lane {
            Lane::Normal => self.outbound_tx.try_send(text).map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => PeerError::QueueFull {
                    capacity: self.config.outbound_queue,
                },
                mpsc::error::TrySendError::Closed(_) => PeerError::NotConnected,
            }),
            Lane::Control(epoch) => {
                let control = self
                    .link
                    .lock()
                    .ok()
                    .and_then(|l| (l.epoch == epoch).then(|| l.control.clone()).flatten())
                    .ok_or(PeerError::NotConnected)?;
                control.try_send(text).map_err(|_| PeerError::NotConnected)
            }
        }
    }

    /// Sends `body` and waits for its answer (see `send_to_server_and_wait`).
    pub(crate) async fn request(
        &self,
        lane: Lane,
        body: ClientFrame,
        expected: &'static str,
        options: WaitOptions,
    ) -> Result<ServerFrame, PeerError> {
        let request_type = body.type_name();
        // No connection and none coming (never connected, disconnected, replaced, or the backoff
        // gave up): say so at once instead of queueing and timing out as "no answer".
        if matches!(lane, Lane::Normal) && *self.state.borrow() == ConnectionState::Disconnected {
            return Err(PeerError::NotConnected);
        }
        let request_id = self.issue();
        let epoch = match lane {
            Lane::Control(e) => Some(e),
            Lane::Normal => self.registered_epoch(),
        };
        let mut guard =
            self.pending
                .register(request_id.clone(), expected, options.filter.clone(), epoch);
        let text = encode(&Frame::with_request_id(body, Some(request_id.clone())));
        if text.len() > MAX_FRAME_BYTES {
            return Err(PeerError::MessageTooLarge {
                size: text.len(),
                max: MAX_FRAME_BYTES,
            });
        }
        let per_attempt = options.timeout.unwrap_or(self.config.timeouts.request);
        let max_attempts = options.retry_count.saturating_add(1);
        let mut attempts = 0;
        'send: loop {
            attempts += 1;
            tracing::debug!(peer = %self.config.client_id, request = request_type, request_id = %request_id, attempts, "request");
            self.send_text(lane, text.clone())?;
            let deadline = defaults::deadline_after(per_attempt);
            loop {
                tokio::select! {
                    reply = guard.rx.recv() => match reply {
                        Some(Reply::Frame(f)) if f.type_name() == expected => return Ok(f),
                        Some(Reply::Frame(f)) => return Err(unexpected(request_type, &f)),
                        Some(Reply::Error(e)) => {
                            let action = options.error_handler.as_ref().map_or(ErrorAction::Fail, |h| h(&e));
                            match action {
                                ErrorAction::Ignore => continue,
                                ErrorAction::Retry if attempts < max_attempts => continue 'send,
                                ErrorAction::Retry | ErrorAction::Fail => return Err(server_error(e)),
                            }
                        }
                        Some(Reply::ConnectionLost) | None => {
                            return Err(PeerError::ConnectionLost { request: request_type.into() });
                        }
                    },
                    () = sleep_until(deadline) => {
                        if attempts < max_attempts {
                            continue 'send;
                        }
                        return Err(PeerError::Timeout {
                            request: request_type.into(),
                            expected: expected.into(),
                            after: per_attempt,
                            attempts,
                        });
                    }
                }
            }
        }
    }

    /// The verified registration on connection `epoch`: `challenge`, then `register` with the
    /// signed statement. Retries reuse the request id, so a slow success of an earlier attempt is
    /// taken as the answer instead of colliding with the retry.
    pub(crate) async fn register(&self, epoch: u64) -> Result<Registered, PeerError> {
        let lane = Lane::Control(epoch);
        let challenge = self
            .request(
                lane,
                ClientFrame::Challenge(Empty {}),
                "challenge",
                WaitOptions::default(),
            )
            .await?;
        let ServerFrame::Challenge(c) = challenge else {
            return Err(unexpected("challenge", &challenge));
        };
        let nonce = B64
            .decode(&c.nonce)
            .map_err(|_| PeerError::Protocol("challenge nonce is not base64".into()))?;
        let identity = &self.config.identity;
        let kem_pk = identity.kem_public_key().as_bytes().to_vec();
        let statement = registration_statement(&nonce, self.config.client_id.as_str(), &kem_pk)?;
        let signature = identity.identity_key().sign(&statement);
        let verification = Verification {
            algorithm: "ed25519".into(),
            serialized_public_key: Some(B64.encode(identity.identity_public_key().as_bytes())),
            serialized_message: Some(B64.encode(&statement)),
            serialized_signed_data: Some(B64.encode(signature)),
        };
        let verification = serde_json::value::to_raw_value(&verification)
            .map_err(|e| PeerError::Protocol(e.to_string()))?;
        let register = Register {
            client_id: self.config.client_id.clone(),
            public_key: PublicKeyField::Bytes(kem_pk),
            verification: Some(verification),
            key_signature: Some(B64.encode(identity.key_signature())),
        };
        let answer = self
            .request(
                lane,
                ClientFrame::Register(register),
                "register",
                WaitOptions::default().retries(1),
            )
            .await?;
        let ServerFrame::Registered(r) = answer else {
            return Err(unexpected("register", &answer));
        };
        if r.client_id != self.config.client_id || !r.success {
            return Err(PeerError::Protocol(format!(
                "registration answered for {} (success: {})",
                r.client_id, r.success
            )));
        }
        self.verified.store(r.verified, Ordering::Relaxed);
        Ok(r)
    }

    /// Decodes a frame from the server and routes it. Never fails: a bad frame is reported.
    pub(crate) fn handle_incoming(&self, text: &str, received: &mpsc::Sender<Delivered>) {
        let frame = match decode_server(text) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(peer = %self.config.client_id, error = %Sanitized(&e), "undecodable frame from the server");
                self.dispatcher
                    .emit(PeerEvent::Error(PeerError::Protocol(e.to_string())));
                return;
            }
        };
        let routed = self.pending.route(&frame);
        let request_id = frame.request_id;
        match frame.body {
            ServerFrame::Message(d) => {
                let from = d.from_id.clone();
                if received.try_send(d).is_err() {
                    tracing::warn!(peer = %self.config.client_id, from = %from, "receive queue full, message dropped unacknowledged");
                    self.dispatcher
                        .emit(PeerEvent::Error(PeerError::ReceiveQueueFull { from }));
                }
            }
            ServerFrame::MessageAck(a) => {
                if let Ok(rid) = RequestId::new(a.message_id.as_str()) {
                    self.take_outstanding(&rid);
                }
                self.dispatcher.emit(PeerEvent::MessageAck(a));
            }
            ServerFrame::PeerConnected(p) => {
                // A reconnecting original client comes back with a new KEM key.
                self.forget_key(&p.peer_id);
                self.dispatcher.emit(PeerEvent::PeerConnected(p.peer_id));
            }
            ServerFrame::PeerDisconnected(p) => {
                self.forget_key(&p.peer_id);
                self.dispatcher.emit(PeerEvent::PeerDisconnected(p.peer_id));
            }
            ServerFrame::ServerQuestion(q) => {
                self.dispatcher
                    .emit(PeerEvent::ServerQuestion(IncomingQuestion {
                        question_id: q.question_id,
                        question: q.question,
                        conversation_id: q.conversation_id,
                        round: q.round,
                    }));
            }
            ServerFrame::Error(e) if routed == Routed::Unclaimed => {
                let sent = request_id.as_ref().and_then(|r| self.take_outstanding(r));
                match sent {
                    Some((message_id, target)) => self.dispatcher.emit(PeerEvent::MessageFailed {
                        message_id,
                        target,
                        error: server_error(e),
                    }),
                    // An error naming a request this client never sent is not about us: a
                    // server must not pass it off as the answer to something the user did.
                    None if request_id.as_ref().is_some_and(|r| !self.was_issued(r)) => {
                        tracing::debug!(peer = %self.config.client_id, error_type = ?e.error_type, "error for a request this client never sent, ignored");
                    }
                    None => self.dispatcher.emit(PeerEvent::Error(server_error(e))),
                }
            }
            other => {
                if routed == Routed::Unclaimed {
                    tracing::debug!(peer = %self.config.client_id, frame = other.type_name(), "unclaimed answer ignored");
                }
            }
        }
    }

    /// A new request id, remembered as sent.
    fn issue(&self) -> RequestId {
        let rid = new_request_id();
        self.record_issued(rid.clone());
        rid
    }

    fn record_issued(&self, rid: RequestId) {
        if let Ok(mut i) = self.issued.lock() {
            if i.set.insert(rid.clone()) {
                i.order.push_back(rid);
            }
            while i.order.len() > defaults::ISSUED_REQUESTS {
                if let Some(old) = i.order.pop_front() {
                    i.set.remove(&old);
                }
            }
        }
    }

    fn was_issued(&self, rid: &RequestId) -> bool {
        // A poisoned lock: rather show an error than hide one.
        self.issued.lock().map_or(true, |i| i.set.contains(rid))
    }

    fn take_outstanding(&self, rid: &RequestId) -> Option<(MessageId, ClientId)> {
        let mut o = self.outstanding.lock().ok()?;
        let v = o.map.remove(rid)?;
        o.order.retain(|r| r != rid);
        Some(v)
    }

    fn add_outstanding(&self, rid: RequestId, message_id: MessageId, target: ClientId) {
        if let Ok(mut o) = self.outstanding.lock() {
            if o.order.len() >= defaults::OUTSTANDING_MESSAGES {
                if let Some(old) = o.order.pop_front() {
                    o.map.remove(&old);
                }
            }
            o.order.push_back(rid.clone());
            o.map.insert(rid, (message_id, target));
        }
    }

    async fn send_message(
        &self,
        target: &ClientId,
        text: &str,
        message_id: MessageId,
    ) -> Result<SentMessage, PeerError> {
        if let Some(new) = self.pending_key_change(target) {
            let old = self.config.key_store.pinned(target)?;
            return Err(PeerError::KeyChanged {
                peer: target.clone(),
                old: old.map_or_else(|| new.fingerprint(), |o| o.fingerprint()),
                new: new.fingerprint(),
            });
        }
        let key = match self.cached_key(target) {
            Some(k) => k,
            None => self.fetch_key(target).await?,
        };
        let (envelope, algorithm) = crate::receive::seal(&self.config, &key, &message_id, text)?;
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
        self.add_outstanding(rid.clone(), message_id.clone(), target.clone());
        self.record_issued(rid.clone());
        if let Err(e) = self.send_frame(
            Lane::Normal,
            Frame::with_request_id(frame, Some(rid.clone())),
        ) {
            self.take_outstanding(&rid);
            return Err(e);
        }
        tracing::debug!(peer = %self.config.client_id, to = %target, message_id = %message_id, algorithm = algorithm.as_str(), "message queued");
        // The user talked to this peer: a bounded key store never evicts its pin now. The
        // message is queued either way; a store that cannot record it is logged.
        if key.identity.is_some() {
            if let Err(e) = self.config.key_store.mark_contact(target) {
                tracing::warn!(peer = %self.config.client_id, to = %target, error = %Sanitized(&e), "cannot mark a contact in the key store");
            }
        }
        Ok(SentMessage {
            message_id,
            algorithm,
        })
    }

    /// Queues the messages held back from `from` to be opened again.
    pub(crate) fn release_held(&self, from: &ClientId) {
        let released = self.held.lock().map_or(0, |mut h| h.release(from));
        if released > 0 {
            tracing::debug!(peer = %self.config.client_id, from = %from, released, "held messages released");
            self.held_ready.notify_one();
        }
    }

    /// Queues an `ack` for a processed message, naming its sender: ids are chosen by senders,
    /// so only (sender, messageId) names one message in the server's mailbox.
    pub(crate) fn ack(&self, from: &ClientId, message_id: &MessageId) {
        let frame = Frame::new(ClientFrame::Ack(lattice_protocol::Ack {
            message_id: message_id.clone(),
            from_id: Some(from.clone()),
        }));
        if let Err(e) = self.send_frame(Lane::Normal, frame) {
            tracing::debug!(peer = %self.config.client_id, error = %Sanitized(&e), "ack not sent");
        }
    }
}
