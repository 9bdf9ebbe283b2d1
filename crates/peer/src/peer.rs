//! [`MessagingPeer`]: the public handle. It composes the components (see the crate docs for the
//! flow) and calls down into them; it holds no protocol state of its own, only the supervisor task
//! it started.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lattice_crypto::Fingerprint;
use lattice_protocol::{
    ClientFrame, ClientId, Empty, FrameBody as _, MessageId, PeerResponse, QuestionId, ServerFrame,
};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::sleep_until;
use tokio_util::sync::CancellationToken;

use crate::connection::{self, Policy, Session};
use crate::content::Content;
use crate::content::FileOffer;
use crate::events::{
    Algorithm, ConnectionState, Dispatcher, HandlerHandle, IncomingMessage, IncomingQuestion,
    PeerEvent, TransferId, TransferProgress,
};
use crate::files::{FileMeta, Files};
use crate::groups::{GroupInfo, Groups};
use crate::history::History;
use crate::inbox::Inbox;
use crate::keys::PeerKey;
use crate::link::{Lane, Link};
use crate::linking::{LinkedDevice, Linking};
use crate::outbox::{Outbox, Sender, SentMessage};
use crate::pending::WaitOptions;
use crate::replay::{MemoryReplayStore, ReplayStore};
use crate::requests::Requests;
use crate::router::Router;
use crate::sanitize::Sanitized;
use crate::sync::lock;
use crate::transport::Dialer;
use crate::trust::Trust;
use crate::wire::{new_message_id, unexpected};
use crate::{defaults, EventStream, PeerConfig, PeerError};

/// The supervisor task and its cancel token.
#[derive(Debug)]
struct Running {
    cancel: CancellationToken,
    handle: JoinHandle<()>,
}

/// What the handle's clones share: the components, and the supervisor it started.
#[derive(Debug)]
struct Shared {
    config: PeerConfig,
    dispatcher: Arc<Dispatcher>,
    link: Arc<Link>,
    requests: Arc<Requests>,
    trust: Arc<Trust>,
    outbox: Arc<Outbox>,
    inbox: Arc<Inbox>,
    groups: Option<Arc<Groups>>,
    files: Arc<Files>,
    linking: Arc<Linking>,
    session: Arc<Session>,
    /// The running supervisor's token, for [`Owner`] (std Mutex: set or read, never an await).
    cancel: Mutex<Option<CancellationToken>>,
    // tokio Mutex: `connect`/`disconnect` hold it across the wait for the supervisor.
    running: tokio::sync::Mutex<Option<Running>>,
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

/// Cancels the tasks when the last user handle is dropped (tasks hold components, never this).
#[derive(Debug)]
struct Owner(Arc<Shared>);

impl Drop for Owner {
    fn drop(&mut self) {
        if let Some(c) = lock(&self.0.cancel).as_ref() {
            c.cancel();
        }
        self.0.files.shut_down();
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
    inner: Arc<Shared>,
    _owner: Arc<Owner>,
}

impl MessagingPeer {
    /// Builds a peer. Nothing is dialled until [`MessagingPeer::connect`].
    ///
    /// # Errors
    /// [`PeerError::InvalidUrl`] for a URL that is not `ws://` or `wss://`, [`PeerError::Tls`] if
    /// the TLS configuration cannot be built, [`PeerError::InvalidArgument`] for a
    /// [`PeerConfig::file_chunk_bytes`] or [`PeerConfig::file_chunks_in_flight`] out of bounds.
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
        let me = config.client_id.clone();
        let dispatcher = Dispatcher::new(defaults::EVENT_CAPACITY);
        let link = Arc::new(Link::new(
            me.clone(),
            config.outbound_queue,
            Arc::clone(&dispatcher),
        ));
        let requests = Arc::new(Requests::new(
            me.clone(),
            config.timeouts.request,
            Arc::clone(&link),
        ));
        let trust = Arc::new(Trust::new(
            me.clone(),
            Arc::clone(&config.key_store),
            Arc::clone(&requests),
            Arc::clone(&dispatcher),
        ));
        let history = Arc::new(History::new(me.clone(), Arc::clone(&config.history)));
        if let Some(device) = config.credentials.device() {
            if config.mls_state.is_none() {
                return Err(PeerError::InvalidArgument(
                    "a linked device speaks MLS only: set PeerConfig::mls_state".into(),
                ));
            }
            // Its own id's identity key is pinned from the bundle, and its own device list is
            // known, so it validates the leaves of its id's other devices.
            let own = config.key_store.pinned(&me)?;
            if own.is_some_and(|k| k != device.identity_key) {
                return Err(PeerError::KeyChanged {
                    peer: me.clone(),
                    old: own.map_or_else(|| device.identity_key.fingerprint(), |k| k.fingerprint()),
                    new: device.identity_key.fingerprint(),
                });
            }
            config.key_store.pin(&me, &device.identity_key)?;
            trust.record_devices(&me, &device.identity_key, &device.device_list)?;
        } else if let Some(list) = config.key_store.own_device_list()? {
            // The primary's own list as it last signed it (a list that does not verify under
            // our key is ignored: it is not ours).
            let _ = trust.record_devices(&me, &config.credentials.identity_public_key(), &list);
        }
        let outbox = Arc::new(Outbox::new(
            Sender {
                client_id: me.clone(),
                identity: config.credentials.identity().cloned(),
            },
            Arc::clone(&trust),
            Arc::clone(&requests),
            Arc::clone(&link),
            Arc::clone(&history),
        ));
        let inbox = Arc::new(Inbox::new(
            me.clone(),
            config.credentials.identity().cloned(),
            Arc::clone(&trust),
            Arc::clone(&link),
            Arc::clone(&dispatcher),
            replay_store,
            Arc::clone(&history),
        ));
        let groups = match &config.mls_state {
            Some(path) => Some(
                Groups::open(
                    path,
                    &config.credentials,
                    me.clone(),
                    config.group_self_update,
                    (
                        Arc::clone(&trust),
                        Arc::clone(&requests),
                        Arc::clone(&link),
                        Arc::clone(&dispatcher),
                        Arc::clone(&history),
                    ),
                )?
                .into_arc(),
            ),
            None => None,
        };
        let files = Files::new(
            me.clone(),
            config.transfers_dir.as_deref(),
            &config.server_url,
            dialer.tls(),
            (
                Arc::clone(&requests),
                Arc::clone(&trust),
                Arc::clone(&outbox),
                Arc::clone(&dispatcher),
            ),
            groups.clone(),
            (config.file_chunk_bytes, config.file_chunks_in_flight),
        )?;
        let linking = Arc::new(Linking::new(
            me.clone(),
            config.credentials.identity().cloned(),
            config.credentials.identity_public_key(),
            Arc::clone(&link),
            Arc::clone(&requests),
            Arc::clone(&dispatcher),
            Arc::clone(&trust),
        ));
        let router = Router::new(
            me.clone(),
            Arc::clone(&dispatcher),
            Arc::clone(&requests),
            Arc::clone(&outbox),
            Arc::clone(&trust),
            groups.clone(),
            Arc::clone(&linking),
        );
        let session = Arc::new(Session {
            client_id: me,
            credentials: config.credentials.clone(),
            device_list_sent: std::sync::atomic::AtomicBool::new(false),
            link_relay: config.link_relay,
            timeouts: config.timeouts.clone(),
            policy: Policy {
                backoff: config.reconnect.clone(),
                retry_first_connect: config.retry_first_connect,
            },
            dialer,
            dispatcher: Arc::clone(&dispatcher),
            link: Arc::clone(&link),
            requests: Arc::clone(&requests),
            router,
            inbox: Arc::clone(&inbox),
            groups: groups.clone(),
        });
        let inner = Arc::new(Shared {
            config,
            dispatcher,
            link,
            requests,
            trust,
            outbox,
            inbox,
            groups,
            files,
            linking,
            session,
            cancel: Mutex::new(None),
            running: tokio::sync::Mutex::new(None),
        });
        Ok(Self {
            _owner: Arc::new(Owner(Arc::clone(&inner))),
            inner,
        })
    }

    /// **New device**: starts linking this device to `target` as device `device_id`, and returns
    /// the one-time code to show the user (8 characters, valid
    /// [`defaults::LINK_CODE_TTL`], one attempt). This peer runs as a throwaway id while linking;
    /// progress comes as [`PeerEvent::Link`], ending in [`crate::LinkEvent::Linked`] (then
    /// [`MessagingPeer::take_linked_device`]) or [`crate::LinkEvent::Failed`]. Show
    /// [`MessagingPeer::linking_fingerprint`] too: the first device asks its user to compare it.
    ///
    /// # Errors
    /// [`PeerError::InvalidArgument`] for the reserved device id `primary`; the errors of
    /// sending a message.
    pub fn start_linking(
        &self,
        target: &ClientId,
        device_id: lattice_protocol::DeviceId,
    ) -> Result<String, PeerError> {
        let code = self.inner.linking.start(target, device_id)?;
        Ok(code.display()?.to_string())
    }

    /// **New device**: the fingerprint of the device key of the linking under way.
    pub fn linking_fingerprint(&self) -> Option<Fingerprint> {
        self.inner.linking.own_device_fingerprint()
    }

    /// **New device**: what the first device handed over, once [`crate::LinkEvent::Linked`] was
    /// raised (taken: a second call returns `None`).
    pub fn take_linked_device(&self) -> Option<LinkedDevice> {
        self.inner.linking.take_linked()
    }

    /// **First device**: the code the user typed, for the newest new device that asked
    /// ([`crate::LinkEvent::Request`]). Returns that device's relay id. Key confirmation follows
    /// by itself and ends in [`crate::LinkEvent::AwaitingApproval`] (the code was right) or
    /// [`crate::LinkEvent::Failed`] (it was not; the code is spent).
    ///
    /// # Errors
    /// [`PeerError::Crypto`] for text that is not a code; [`PeerError::InvalidArgument`] when no
    /// new device waits for one.
    pub fn enter_link_code(&self, code: &str) -> Result<ClientId, PeerError> {
        self.inner.linking.enter_code(code)
    }

    /// **First device**: the user compared the new device's fingerprint
    /// ([`crate::LinkEvent::AwaitingApproval`]) and approves it (or refuses: `approve` false).
    /// Approving signs the device's certificate and a device list naming it, publishes the list
    /// and sends the sealed bundle. This approval is required: the PAKE alone never links.
    ///
    /// # Errors
    /// [`PeerError::InvalidArgument`] if `relay` awaits no approval, the run expired, or the id
    /// already has the most devices; the errors of the requests to the server.
    pub async fn approve_link(&self, relay: &ClientId, approve: bool) -> Result<(), PeerError> {
        self.inner.linking.approve(relay, approve).await
    }

    /// The linked devices of this id, as its signed device list names them (checked against our
    /// identity key; the primary device is implicit).
    ///
    /// # Errors
    /// Those of `request_public_key`; [`PeerError::Protocol`] for a list not signed by our key.
    pub async fn devices(&self) -> Result<Vec<lattice_protocol::DeviceEntry>, PeerError> {
        self.inner.linking.devices().await
    }

    /// **First device**: removes `device` from this id's device list: the server closes its
    /// connection and deletes its mailbox. (Its MLS leaves are removed by a Commit of a device
    /// of the id; see docs/mls.md.)
    ///
    /// # Errors
    /// [`PeerError::InvalidArgument`] if it is not on the list; the errors of the requests.
    pub async fn remove_device(
        &self,
        device: &lattice_protocol::DeviceId,
    ) -> Result<(), PeerError> {
        self.inner.linking.remove_device(device).await
    }

    /// Our id.
    pub fn client_id(&self) -> &ClientId {
        &self.inner.config.client_id
    }

    /// The fingerprint of our identity key, to read out to peers.
    pub fn fingerprint(&self) -> Fingerprint {
        self.inner
            .config
            .credentials
            .identity_public_key()
            .fingerprint()
    }

    /// Whether the server verified our identity at the last registration.
    pub fn is_verified(&self) -> bool {
        self.inner.link.is_verified()
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
            .link
            .take_outbound()
            .ok_or(PeerError::AlreadyConnected)?;
        let cancel = CancellationToken::new();
        *lock(&self.inner.cancel) = Some(cancel.clone());
        // Published before the task runs, so a concurrent `connect` sees a live supervisor.
        self.inner.link.set_state(ConnectionState::Connecting);
        let (first_tx, first_rx) = oneshot::channel();
        let handle = tokio::spawn(connection::supervise(
            Arc::clone(&self.inner.session),
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
                self.inner.files.start_resumed();
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
        self.inner.link.state()
    }

    /// A receiver of the connection state, for code that awaits changes.
    pub fn watch_connection_state(&self) -> watch::Receiver<ConnectionState> {
        self.inner.link.watch_state()
    }

    /// Waits until the peer is registered on a live connection (at once if it is).
    ///
    /// # Errors
    /// [`PeerError::NotConnected`] if the peer is disconnected (never connected, disconnected, or
    /// the reconnect policy gave up); [`PeerError::Timeout`] if registration does not happen
    /// within `timeout`.
    pub async fn register_and_wait(&self, timeout: Duration) -> Result<(), PeerError> {
        let mut rx = self.inner.link.watch_state();
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
        self.inner.requests.subscribe_presence();
        let mut peers = Vec::new();
        let mut cursor = None;
        for _ in 0..defaults::DISCOVER_MAX_PAGES {
            let frame = self
                .inner
                .requests
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
        self.inner.trust.fetch_key(target).await
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
        self.inner.trust.accept_key(peer, fingerprint).await?;
        self.inner.inbox.release_held(peer);
        Ok(())
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
        self.send_content(target, &Content::Text(text.to_owned()))
            .await
    }

    /// Sends a [`Content`] (a text, a reply, an edit, a delete, a reaction, a read receipt, a
    /// typing notice) to `target`, like [`MessagingPeer::send_message`]. With groups on
    /// ([`PeerConfig::mls_state`]) and a peer that speaks MLS it goes in the 1:1 MLS
    /// conversation (set up on the first message, see [`MessagingPeer::conversation_envelope`]);
    /// it then returns once the server accepted it ([`crate::Algorithm::Mls`], no
    /// [`PeerEvent::MessageAck`] follows), and fails with [`PeerError::MlsRequired`] rather than
    /// fall back to an older envelope for a peer pinned as MLS-capable. To another Lattice peer it
    /// goes as a version 2 `lattice-v1` message signed over the whole content; an original
    /// (`ml-kem-aes`) client gets plain text only ([`Content::plain_text`]: a reply as quoted
    /// text, an edit as a new text) and nothing at all for the other kinds.
    ///
    /// ```no_run
    /// # async fn f(peer: lattice_peer::MessagingPeer, bob: lattice_protocol::ClientId) -> Result<(), lattice_peer::PeerError> {
    /// use lattice_peer::Content;
    /// let sent = peer.send_message(&bob, "helo").await?;
    /// peer.send_content(&bob, &Content::Edit { target: sent.message_id, text: "hello".into() }).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`MessagingPeer::send_message`]; also [`PeerError::InvalidContent`] for a content that
    /// breaks a bound (or [`Content::Unsupported`]), and [`PeerError::PlainTextOnly`] for a kind
    /// an original client does not get.
    pub async fn send_content(
        &self,
        target: &ClientId,
        content: &Content,
    ) -> Result<SentMessage, PeerError> {
        self.send_any(target, content, new_message_id()).await
    }

    /// Sends over MLS to a peer that speaks it (setting the 1:1 conversation up on first
    /// contact), in an older envelope to any other.
    async fn send_any(
        &self,
        target: &ClientId,
        content: &Content,
        message_id: MessageId,
    ) -> Result<SentMessage, PeerError> {
        if let Some(g) = &self.inner.groups {
            if let Some(sent) = g.send_direct(target, content, message_id.clone()).await? {
                return Ok(sent);
            }
        }
        self.inner.outbox.send(target, content, message_id).await
    }

    /// [`MessagingPeer::send_content`] with a message id chosen by the caller (see
    /// [`MessagingPeer::send_message_with_id`]).
    ///
    /// # Errors
    /// As [`MessagingPeer::send_content`] and [`MessagingPeer::send_message_with_id`].
    pub async fn send_content_with_id(
        &self,
        target: &ClientId,
        content: &Content,
        message_id: MessageId,
    ) -> Result<SentMessage, PeerError> {
        self.send_any(target, content, message_id).await
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
        self.send_any(target, &Content::Text(text.to_owned()), message_id)
            .await
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
        self.inner.requests.send(frame)
    }

    /// Asks the server to start its built-in multi-round demo conversation with us.
    ///
    /// # Errors
    /// [`PeerError::QueueFull`].
    pub fn debug_question(&self) -> Result<(), PeerError> {
        let frame = ClientFrame::DebugQuestion(Empty {});
        self.inner.requests.send(frame)
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
            .requests
            .request(Lane::Normal, frame, expected, options)
            .await
    }

    /// Sends the file at `path` to `to`: seals it chunk by chunk with a fresh key, uploads the
    /// chunks to the server's blob store (a few at a time; never the whole file in memory), and
    /// once every chunk is stored sends a [`Content::File`] message carrying the key, the
    /// digest and the download capability, end-to-end encrypted like any message. Returns at
    /// once with the transfer's id; progress comes as [`PeerEvent::Transfer`]. The transfer
    /// survives a network cut (bounded retries) and a restart (it resumes by itself from its
    /// journal in [`PeerConfig::transfers_dir`], sending no acknowledged chunk twice).
    ///
    /// `meta` overrides the name (default: the path's file name), the MIME type (default:
    /// guessed from the name) and adds a thumbnail.
    ///
    /// ```no_run
    /// # async fn f(peer: lattice_peer::MessagingPeer, bob: lattice_protocol::ClientId) -> Result<(), lattice_peer::PeerError> {
    /// use lattice_peer::{FileMeta, PeerEvent, TransferState};
    /// let mut events = peer.events();
    /// let id = peer.send_file(&bob, std::path::Path::new("photo.jpg"), FileMeta::default()).await?;
    /// while let Some(event) = events.next().await {
    ///     if let PeerEvent::Transfer(p) = event {
    ///         if p.id == id {
    ///             println!("{} / {} bytes", p.done, p.total);
    ///             if p.state == TransferState::Completed { break; }
    ///         }
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`PeerError::FilesDisabled`] without a transfers directory;
    /// [`PeerError::FilesUnsupported`] for an original (`ml-kem-aes`) client, before anything is
    /// uploaded; the errors of [`MessagingPeer::request_public_key`]; [`PeerError::Io`] if the
    /// file cannot be read; [`PeerError::InvalidContent`] for a name, type or thumbnail that
    /// breaks a bound; [`PeerError::TooManyTransfers`]. What goes wrong later (quota, too large,
    /// the network for good) ends the transfer as [`crate::TransferState::Failed`].
    pub async fn send_file(
        &self,
        to: &ClientId,
        path: &std::path::Path,
        meta: FileMeta,
    ) -> Result<TransferId, PeerError> {
        self.inner.files.send_file(to, path, meta).await
    }

    /// Sends the file at `path` into MLS group `group`: as [`MessagingPeer::send_file`], with the
    /// offer and the digest as group messages ([`PeerEvent::GroupMessage`] with
    /// [`Content::File`], then [`Content::FileDigest`]), so every member can download it with
    /// [`MessagingPeer::download_file`] (`from` the sender, the group message's id). The blob is
    /// not deleted when one member has it: it stays until the server's expiry.
    ///
    /// # Errors
    /// [`PeerError::FilesDisabled`]; [`PeerError::GroupsDisabled`];
    /// [`PeerError::UnknownGroup`]; otherwise as [`MessagingPeer::send_file`].
    pub async fn send_group_file(
        &self,
        group: &lattice_mls::GroupId,
        path: &std::path::Path,
        meta: FileMeta,
    ) -> Result<TransferId, PeerError> {
        self.inner.files.send_group_file(group, path, meta).await
    }

    /// Downloads the file of message `message_id` from `from` (its [`Content::File`] offer) to
    /// `dest`: chunks go to `DEST.part`, each checked to be that chunk of that file, then the
    /// digest of the whole file; only then is it renamed to `dest`. A file that fails a check
    /// leaves nothing at `dest` and ends as [`crate::TransferState::Failed`] (the reason is a
    /// [`crate::FileRejection`]). Asking again for a download in progress returns its id; asking
    /// again for a paused or failed one starts it over with the offer and `dest` given.
    ///
    /// # Errors
    /// [`PeerError::FilesDisabled`]; [`PeerError::InvalidContent`] for a malformed offer;
    /// [`PeerError::InvalidArgument`] if `dest` is not a path in an existing directory;
    /// [`PeerError::Io`]; [`PeerError::TooManyTransfers`].
    pub fn download_file(
        &self,
        from: &ClientId,
        message_id: &MessageId,
        offer: &FileOffer,
        dest: &std::path::Path,
    ) -> Result<TransferId, PeerError> {
        self.inner
            .files
            .download_file(from, message_id, offer, dest)
    }

    /// Pauses a transfer (it stays paused across restarts until resumed).
    ///
    /// # Errors
    /// [`PeerError::UnknownTransfer`] (also for a finished one); [`PeerError::Io`] if the pause
    /// cannot be recorded.
    pub fn pause_transfer(&self, id: &TransferId) -> Result<(), PeerError> {
        self.inner.files.pause(id)
    }

    /// Resumes a paused or failed transfer where it stopped.
    ///
    /// # Errors
    /// As [`MessagingPeer::pause_transfer`].
    pub fn resume_transfer(&self, id: &TransferId) -> Result<(), PeerError> {
        self.inner.files.resume(id)
    }

    /// Cancels a transfer: an upload's blob is deleted from the server, a download's partial
    /// file is removed, and the transfer ends as [`crate::TransferState::Cancelled`].
    ///
    /// # Errors
    /// [`PeerError::UnknownTransfer`] (also for a finished one).
    pub async fn cancel_transfer(&self, id: &TransferId) -> Result<(), PeerError> {
        self.inner.files.cancel(id).await
    }

    /// The unfinished transfers (also those resumed from a previous run), then the last
    /// finished ones ([`defaults::FINISHED_TRANSFERS_LISTED`]).
    pub fn transfers(&self) -> Vec<TransferProgress> {
        self.inner.files.list()
    }

    fn groups(&self) -> Result<&Arc<Groups>, PeerError> {
        self.inner.groups.as_ref().ok_or(PeerError::GroupsDisabled)
    }

    /// Whether groups are on ([`PeerConfig::mls_state`] is set).
    pub fn groups_enabled(&self) -> bool {
        self.inner.groups.is_some()
    }

    /// Makes sure our KeyPackage stock at the server is topped up (done after every verified
    /// registration and on a low-stock notice anyway; waits for a top-up in progress). Returns
    /// the stock.
    ///
    /// # Errors
    /// [`PeerError::GroupsDisabled`]; the errors of requests; [`PeerError::Group`] if the engine
    /// fails.
    pub async fn publish_key_packages(&self) -> Result<u32, PeerError> {
        self.groups()?.replenish().await
    }

    /// Creates a group named `name` with `members` (not counting us). For each member a
    /// KeyPackage is fetched from the server and checked against the identity key pinned for
    /// it (pinned on first use, with the `keySignature` check, like a 1:1 chat); a KeyPackage
    /// whose credential is not bound to that key is refused. The members join from the Welcome
    /// (online or on their next connection).
    ///
    /// # Errors
    /// [`PeerError::GroupsDisabled`], [`PeerError::InvalidArgument`] (no members, too many),
    /// [`PeerError::GroupIdentity`] (a credential not bound to the pinned key),
    /// [`PeerError::KeyChanged`], [`PeerError::Server`] (`NO_KEY_PACKAGE`, `PEER_NOT_FOUND`,
    /// quotas), [`PeerError::Group`].
    pub async fn create_group(
        &self,
        name: &str,
        members: &[ClientId],
    ) -> Result<lattice_mls::GroupId, PeerError> {
        self.groups()?.create(name, members).await
    }

    /// Adds `members` to `group` (as [`MessagingPeer::create_group`] does). If another member's
    /// Commit wins the epoch first, the change is made again after it (bounded).
    ///
    /// # Errors
    /// As [`MessagingPeer::create_group`]; [`PeerError::UnknownGroup`];
    /// [`PeerError::CommitConflict`].
    pub async fn invite_to_group(
        &self,
        group: &lattice_mls::GroupId,
        members: &[ClientId],
    ) -> Result<(), PeerError> {
        self.groups()?.invite(group, members).await
    }

    /// Removes `members` from `group`; the group's keys rotate with the Commit, so they cannot
    /// read anything sent after it.
    ///
    /// # Errors
    /// As [`MessagingPeer::invite_to_group`].
    pub async fn remove_from_group(
        &self,
        group: &lattice_mls::GroupId,
        members: &[ClientId],
    ) -> Result<(), PeerError> {
        self.groups()?.remove(group, members).await
    }

    /// Asks to leave `group`. Another member commits it; this device learns it is out from
    /// [`crate::GroupChange::Removed`].
    ///
    /// # Errors
    /// [`PeerError::GroupsDisabled`], [`PeerError::UnknownGroup`], the errors of requests.
    pub async fn leave_group(&self, group: &lattice_mls::GroupId) -> Result<(), PeerError> {
        self.groups()?.leave(group).await
    }

    /// Renames `group` (an authenticated Commit; every member sees
    /// [`crate::GroupChange::Renamed`]).
    ///
    /// # Errors
    /// As [`MessagingPeer::invite_to_group`]; [`PeerError::Group`] for a name over
    /// `lattice_mls::limits::MAX_GROUP_NAME_LEN` bytes.
    pub async fn rename_group(
        &self,
        group: &lattice_mls::GroupId,
        name: &str,
    ) -> Result<(), PeerError> {
        self.groups()?.rename(group, name).await
    }

    /// Rotates this device's keys in `group` now (a self-update Commit), e.g. after a suspected
    /// compromise: a copy of the state taken before cannot read what is sent after. Also done on
    /// schedule ([`PeerConfig::group_self_update`]).
    ///
    /// # Errors
    /// As [`MessagingPeer::invite_to_group`].
    pub async fn group_self_update(&self, group: &lattice_mls::GroupId) -> Result<(), PeerError> {
        self.groups()?.self_update(group).await
    }

    /// Rotates this device's keys in **every** group and 1:1 MLS conversation now (a
    /// self-update Commit in each, one after the other): what to do after a suspected compromise
    /// of the device (it was lost and found, malware was removed, its files were copied), since
    /// 1:1 conversations are not listed as groups. Returns how many rotated.
    ///
    /// # Errors
    /// [`PeerError::GroupsDisabled`]; [`PeerError::Group`] naming how many rotated when some
    /// could not (offline, lost races): those are tried again after
    /// [`crate::defaults::SELF_UPDATE_RETRY`].
    pub async fn heal_all_groups(&self) -> Result<usize, PeerError> {
        self.groups()?.heal_all().await
    }

    /// Sends `content` to every member of `group`: a [`Content::Text`] or a [`Content::Reply`]
    /// (others get it as [`PeerEvent::GroupMessage`]), or a [`Content::Edit`] or a
    /// [`Content::Delete`] of one of our messages of the group, or a [`Content::Reaction`] to
    /// any message of the group (others get it as [`PeerEvent::GroupUpdate`] once it passed the
    /// checks of the group's history, as 1:1). Returns the message id.
    ///
    /// # Errors
    /// [`PeerError::GroupsDisabled`], [`PeerError::InvalidArgument`] for another kind (read
    /// receipts and typing notices, which go with [`MessagingPeer::mark_group_read`] and
    /// [`MessagingPeer::group_typing`], and files, which go with
    /// [`MessagingPeer::send_group_file`]),
    /// [`PeerError::InvalidContent`], [`PeerError::UnknownGroup`], the errors of requests
    /// (`NOT_A_MEMBER`, `MAILBOX_FULL`).
    pub async fn send_group_content(
        &self,
        group: &lattice_mls::GroupId,
        content: &Content,
    ) -> Result<MessageId, PeerError> {
        self.groups()?.send(group, content).await
    }

    /// Tells the members of `group` that the user read it up to `up_to`, the newest message of
    /// the group the app shows as read (any member's, ours included): one receipt covers every
    /// earlier message, so call it once per burst of reading, with the newest. Others get
    /// [`PeerEvent::GroupRead`]; this id's other devices get [`PeerEvent::GroupReadElsewhere`].
    /// Returns whether a receipt was sent: none while read receipts are off
    /// ([`MessagingPeer::set_read_receipts`]), nor when `up_to` is not newer than what this id
    /// already said it read (from this device or another). While group messages are still
    /// waiting to be processed (a mailbox drain after a reconnect), the receipt is kept (the
    /// newest per group) and goes once they are: this device may be epochs behind until then,
    /// and a receipt sealed in an old epoch might not open for the others; `true` then means
    /// queued, and a failure then is logged, not returned.
    ///
    /// ```no_run
    /// # async fn f(peer: &lattice_peer::MessagingPeer, g: &lattice_peer::GroupId, m: &lattice_peer::GroupMessage) -> Result<(), lattice_peer::PeerError> {
    /// use lattice_peer::MessageRef;
    /// // The group is on screen and `m` is its newest message shown.
    /// peer.mark_group_read(g, &MessageRef { sender: m.from.clone(), message_id: m.message_id.clone() })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`PeerError::GroupsDisabled`], [`PeerError::UnknownGroup`], [`PeerError::InvalidArgument`]
    /// when `up_to` is not a message of the group's history (this run's, or the app's
    /// [`crate::MessageLookup::find_in_group`]) or the group is a 1:1 conversation, the error of
    /// the app's history, the errors of requests.
    pub async fn mark_group_read(
        &self,
        group: &lattice_mls::GroupId,
        up_to: &crate::MessageRef,
    ) -> Result<bool, PeerError> {
        self.groups()?.mark_read(group, up_to).await
    }

    /// Tells the members of `group` that the user started (`true`) or stopped typing: call it
    /// on each keystroke and when the input is left or sent; the library sends "started" at
    /// most every [`crate::defaults::GROUP_TYPING_RESEND`], "stopped" only after a "started",
    /// and nothing in a group of more than [`crate::defaults::GROUP_TYPING_MAX_MEMBERS`]
    /// members. Others get [`PeerEvent::GroupTyping`], which ends by itself. Returns whether a
    /// notice was sent. Whether the user shares typing at all is the app's setting: do not call
    /// it when off.
    ///
    /// # Errors
    /// [`PeerError::GroupsDisabled`], [`PeerError::UnknownGroup`], [`PeerError::InvalidArgument`]
    /// for a 1:1 conversation, the errors of requests.
    pub async fn group_typing(
        &self,
        group: &lattice_mls::GroupId,
        started: bool,
    ) -> Result<bool, PeerError> {
        self.groups()?.typing(group, started).await
    }

    /// Follows the app's read-receipt setting (on by default), the one its 1:1 receipts follow:
    /// off, [`MessagingPeer::mark_group_read`] sends no receipt and other members' are not
    /// raised ([`PeerEvent::GroupRead`]); reading on another device of ours is still raised
    /// ([`PeerEvent::GroupReadElsewhere`]). Without groups it does nothing.
    pub fn set_read_receipts(&self, on: bool) {
        if let Some(g) = self.inner.groups.as_ref() {
            g.set_read_receipts(on);
        }
    }

    /// The envelope messages to `peer` go in now: [`Algorithm::Mls`] when it is pinned as
    /// speaking MLS (a 1:1 MLS conversation exists or will be set up on the next message, and
    /// nothing older is accepted from it), otherwise `None`: the next message asks the server
    /// for its KeyPackage when groups are on, and falls back to `lattice-v1` (or `ml-kem-aes`
    /// for an original client) when it has none.
    pub fn conversation_envelope(&self, peer: &ClientId) -> Option<Algorithm> {
        self.inner
            .groups
            .as_ref()
            .filter(|g| g.speaks_mls(peer))
            .map(|_| Algorithm::Mls)
    }

    /// Reconciles the devices in every group and 1:1 conversation now (it also runs by itself
    /// after each registration, when a device list changes and every
    /// [`crate::defaults::DEVICE_AUDIT_INTERVAL`]): each device on this id's signed device list
    /// gets a leaf, and a leaf of a device that its id's current signed list no longer names is
    /// removed, whoever's it is (docs/mls.md, *Multi-device*). Returns how many Commits it made.
    ///
    /// # Errors
    /// [`PeerError::GroupsDisabled`]; the errors of the requests; the first error of a group
    /// (the others were still tried).
    pub async fn sync_devices(&self) -> Result<usize, PeerError> {
        self.groups()?.sync_devices().await
    }

    /// The groups this device is in (1:1 MLS conversations are not listed).
    ///
    /// # Errors
    /// [`PeerError::GroupsDisabled`].
    pub fn groups_list(&self) -> Result<Vec<lattice_mls::GroupId>, PeerError> {
        Ok(self.groups()?.groups())
    }

    /// A group's name, epoch and members with each one's safety number (fingerprint).
    ///
    /// # Errors
    /// [`PeerError::GroupsDisabled`], [`PeerError::UnknownGroup`].
    pub fn group_info(&self, group: &lattice_mls::GroupId) -> Result<GroupInfo, PeerError> {
        self.groups()?.info(group)
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
