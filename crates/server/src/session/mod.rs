//! One WebSocket connection.
//!
//! A single task owns the socket: it reads frames, dispatches each to a small handler, and writes
//! both its own replies and what other sessions route to it through its bounded queue. Writes are
//! batched (feed, then one flush) and bounded by [`WRITE_TIMEOUT`]; a peer that stops reading is
//! closed instead of buffered.
//!
//! ## Slow consumers (the written policy)
//! Senders never wait on a recipient: routing uses `try_send` on the recipient's queue
//! (`--outbound-queue`, 256 frames by default). When it is full:
//! - a **verified** recipient's message, already committed to its durable mailbox, is left there
//!   (the sender's `message_ack` says `queued`) and the recipient drains its mailbox once its queue
//!   empties;
//! - an **unverified** recipient (an original client, which has no mailbox) is not sent the message
//!   and the sender gets `MAILBOX_FULL`; nothing is buffered beyond the queue.
//!
//! Presence notices never use that queue: they have their own lane, coalesced to the latest state
//! per peer ([`crate::hub::SessionShared::send_presence`]), so they can never take a message's place.
//!
//! ## Fast senders are paced, not refused
//! With `--rate-limit`, each connection has a token bucket (rate per second, burst twice that). A
//! connection with no token left is simply not read until one refills: the frames wait in the
//! sender's socket, its TCP window closes, and its own writes slow down. Every frame read is
//! handled; none is dropped, none counts as invalid, and a connection is never closed for being
//! fast. Other connections are not affected (each session is its own task).
//!
//! ## Nothing acknowledged is lost, and nothing is accepted without room
//! A message for a verified recipient is committed to the SQLite mailbox *before* the sender hears
//! its `message_ack`, online recipient or not, and counted against the recipient's quota (count,
//! bytes, and this sender's share) in the same transaction. For online recipients the commit is
//! grouped: the messages of one read batch share one transaction, run just before the batch's
//! replies are written (`Session::commit_pending`). When there is no room the sender gets
//! `MAILBOX_FULL` with its `requestId` and no `message_ack`, so it knows the message was not taken.
//!
//! For an online recipient the row is *owned* by its connection ([`crate::store::Mailbox::accept_live`])
//! and the frame goes out through the connection's queue at once (`delivered`); with the queue full
//! it is left to the mailbox drain (`queued`). The recipient's `ack` deletes the row. When the
//! connection ends for any reason (drop, stall, idle, replacement, shutdown) its rows are given
//! back to the mailbox ([`crate::store::Mailbox::disown_all`]), and when the process dies, the
//! next start gives back all of them. So a recipient that never acks holds at most its quota, and
//! its senders then get `MAILBOX_FULL`: no window, nothing forgotten. Delivery is at least once;
//! clients deduplicate by (sender, `messageId`). The contract is written in docs/protocol.md.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use base64::Engine as _;
use futures_util::{FutureExt as _, SinkExt as _, StreamExt as _};
use lattice_crypto::{IdentityPublicKey, KemPublicKey};
use lattice_protocol::limits::{
    CHALLENGE_NONCE_LEN, CHALLENGE_TTL_SECS, KEM_PUBLIC_KEY_LEN, MAX_DISCOVER_PEERS,
};
use lattice_protocol::{
    decode_client, encode, Ack, AckStatus, ClientFrame, ClientId, Discover, ErrorType, Frame,
    FrameBody as _, MessageId, PeerPresence, PeerResponse, Peers, PublicKeyField,
    PublicKeyResponse, Register, Registered, RequestId, RequestPublicKey, ServerFrame,
    Verification,
};
use tokio::sync::mpsc;
use tracing::{debug, info, warn, Instrument as _};

use crate::hub::{ClaimError, Out, PeerEntry, SessionShared};
use crate::limits::{INVALID_WINDOW, MAILBOX_BATCH, MAX_INVALID_FRAMES, WRITE_TIMEOUT};
use crate::metrics::Metrics;
use crate::state::{unix_ms, ServerState};
use crate::store::{Accepted, Binding, EnqueueError, Limit, LiveItem, MailItem};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Close codes the server uses.
pub mod close_code {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// Server shutting down, or idle.
    pub const GOING_AWAY: u16 = 1001;
    /// Too many invalid frames or rate-limit violations.
    pub const POLICY: u16 = 1008;
    /// A frame beyond the transport limit.
    pub const TOO_BIG: u16 = 1009;
    /// The peer did not read its frames in time.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// The same identity registered on a newer connection.
    pub const REPLACED: u16 = 4000;
    /// The connection did not register in time.
    pub const REGISTER_TIMEOUT: u16 = 4008;
}

/// Frames read and handled before the replies are flushed.
const READ_BATCH: usize = 32;
/// Queued frames written before one flush.
const WRITE_BATCH: usize = 64;
/// How long a closing connection waits for the peer's Close.
const CLOSE_HANDSHAKE: Duration = Duration::from_secs(2);

/// The per-connection rate limit: `rate` tokens per second, at most `2 × rate` saved up. A frame
/// costs one token; without one, the session stops reading until [`TokenBucket::ready_at`].
#[derive(Debug)]
pub(crate) struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub(crate) fn new(rate: u32, now: Instant) -> Option<Self> {
        (rate > 0).then(|| Self {
            rate: f64::from(rate),
            tokens: f64::from(rate) * 2.0,
            last: now,
        })
    }
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate * 2.0);
    }
    /// True if a frame may be read now.
    pub(crate) fn available(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= 1.0
    }
    /// Pays for one frame that was read (the balance may go below zero only if reading did not
    /// ask [`Self::available`] first; it is then paid back by waiting longer).
    pub(crate) fn take(&mut self, now: Instant) {
        self.refill(now);
        self.tokens -= 1.0;
    }
    /// When the next token is there (`now` if it already is).
    pub(crate) fn ready_at(&mut self, now: Instant) -> Instant {
        self.refill(now);
        if self.tokens >= 1.0 {
            return now;
        }
        now + Duration::from_secs_f64((1.0 - self.tokens) / self.rate)
    }
}

struct Session {
    state: Arc<ServerState>,
    shared: Arc<SessionShared>,
    rx: mpsc::Receiver<Out>,
    peer: Option<Arc<PeerEntry>>,
    challenge: Option<([u8; CHALLENGE_NONCE_LEN], Instant)>,
    bucket: Option<TokenBucket>,
    /// The peer's address (for the per-address registration limit) and whether this session
    /// holds one of its slots.
    remote_ip: IpAddr,
    ip_slot: bool,
    invalid_count: u32,
    invalid_since: Instant,
    /// Whether a mailbox drain is in progress.
    draining: bool,
    /// Messages for online verified peers read in this batch: committed together (one
    /// transaction, a group commit) before the batch's replies are written.
    pending: Vec<PendingLive>,
    /// Acknowledgements read in this batch, deleted together the same way.
    pending_acks: Vec<(Option<ClientId>, MessageId)>,
    replies: Vec<Message>,
}

/// Runs one connection to its end.
pub async fn run(state: Arc<ServerState>, socket: WebSocket, remote: SocketAddr) {
    let conn_id = state.next_conn.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = mpsc::channel(state.config.outbound_queue);
    let now_ms = state.uptime_ms();
    let shared = Arc::new(SessionShared {
        conn_id,
        tx,
        last_seen: AtomicU64::new(now_ms),
        kill: state.shutdown.child_token(),
        close_reason: OnceLock::new(),
        mail_waiting: AtomicBool::new(false),
        registered: AtomicBool::new(false),
        opened_ms: now_ms,
        presence_backlog: std::sync::Mutex::default(),
        presence_ready: tokio::sync::Notify::new(),
    });
    state.sessions.insert(Arc::clone(&shared));
    let now = Instant::now();
    let mut session = Session {
        bucket: TokenBucket::new(state.config.rate_limit, now),
        remote_ip: remote.ip(),
        ip_slot: false,
        state: Arc::clone(&state),
        shared,
        rx,
        peer: None,
        challenge: None,
        invalid_count: 0,
        invalid_since: now,
        draining: false,
        pending: Vec::new(),
        pending_acks: Vec::new(),
        replies: Vec::new(),
    };
    let span =
        tracing::info_span!("session", conn = conn_id, %remote, peer = tracing::field::Empty);
    async move {
        debug!("connected");
        session.serve(socket).await;
        session.finish().await;
    }
    .instrument(span)
    .await;
    state.sessions.remove(conn_id);
    state.open_connections.fetch_sub(1, Ordering::AcqRel);
}

/// A message for an online verified peer waiting for the batch's group commit.
struct PendingLive {
    entry: Arc<PeerEntry>,
    target: ClientId,
    item: MailItem,
    sender_mid: Option<MessageId>,
    rid: Option<RequestId>,
}

enum Flow {
    Continue,
    /// Close with this code and reason.
    Close(u16, &'static str),
    /// The transport is gone; no close frame can be sent.
    Gone,
}

impl Session {
    async fn serve(&mut self, mut ws: WebSocket) {
        let flow = loop {
            // Pacing: with no token left, the socket is not read until one refills.
            let now = Instant::now();
            let paused_until = self
                .bucket
                .as_mut()
                .map(|b| b.ready_at(now))
                .filter(|t| *t > now);
            if paused_until.is_some() {
                Metrics::inc(&self.state.metrics.rate_limited);
            }
            // The timer exists only while paused: select! builds every branch's future on every
            // turn, and an unpaused connection (nearly all of them) should not pay for a Sleep.
            let resume = async move {
                if let Some(t) = paused_until {
                    Box::pin(tokio::time::sleep_until(t.into())).await;
                }
            };
            let flow = tokio::select! {
                biased;
                () = self.shared.kill.cancelled() => {
                    let (code, reason) = self
                        .shared
                        .close_reason
                        .get()
                        .copied()
                        .unwrap_or((close_code::GOING_AWAY, "server shutting down"));
                    Flow::Close(code, reason)
                }
                // The handlers are boxed so that an idle connection's task holds only this small
                // select state, not the largest handler's: memory per idle connection is a target.
                Some(out) = self.rx.recv() => Box::pin(self.write_queued(&mut ws, out)).await,
                () = self.shared.presence_ready.notified() => Box::pin(self.write_presence(&mut ws)).await,
                msg = ws.next(), if paused_until.is_none() => Box::pin(self.read(&mut ws, msg)).await,
                () = resume, if paused_until.is_some() => Flow::Continue,
                () = std::future::ready(()), if self.draining => Box::pin(self.drain_mailbox(&mut ws)).await,
            };
            match flow {
                Flow::Continue => {}
                other => break other,
            }
        };
        if let Flow::Close(code, reason) = flow {
            if code != close_code::NORMAL {
                info!(code, reason, "closing connection");
            }
            let frame = CloseFrame {
                code,
                reason: Utf8Bytes::from_static(reason),
            };
            // Finish the closing handshake: send Close, then read (and discard) until the peer's
            // Close or a short bound. Closing the socket with unread input would make the kernel
            // send a reset, and the peer would never see the close frame and its reason.
            let handshake = async {
                if ws.send(Message::Close(Some(frame))).await.is_ok() {
                    while let Some(Ok(m)) = ws.next().await {
                        if matches!(m, Message::Close(_)) {
                            break;
                        }
                    }
                }
            };
            let _ = tokio::time::timeout(CLOSE_HANDSHAKE, handshake).await;
        }
    }

    /// Handles one read result plus whatever else is already buffered, then flushes replies.
    async fn read(
        &mut self,
        ws: &mut WebSocket,
        first: Option<Result<Message, axum::Error>>,
    ) -> Flow {
        let mut next = first;
        let mut handled = 0;
        loop {
            if let Some(bucket) = &mut self.bucket {
                bucket.take(Instant::now());
            }
            match next {
                None => return Flow::Gone,
                Some(Err(e)) => return self.transport_error(e),
                Some(Ok(msg)) => {
                    if let Some(close) = self.on_ws_message(msg) {
                        let _ = self.flush_replies(ws).await;
                        return close;
                    }
                }
            }
            handled += 1;
            // Stop before taking another frame, not after: a frame taken from the socket must be
            // handled, never dropped at the end of a batch.
            if handled >= READ_BATCH {
                break;
            }
            // Nor when the rate limit says to wait: the frame stays in the socket.
            if let Some(bucket) = &mut self.bucket {
                if !bucket.available(Instant::now()) {
                    break;
                }
            }
            match ws.next().now_or_never() {
                Some(m) => next = m,
                None => break,
            }
        }
        self.flush_replies(ws).await
    }

    fn transport_error(&mut self, e: axum::Error) -> Flow {
        let inner = e.into_inner();
        match inner.downcast_ref::<tokio_tungstenite::tungstenite::Error>() {
            Some(tokio_tungstenite::tungstenite::Error::Capacity(_)) => {
                Metrics::inc(&self.state.metrics.policy_closes);
                Flow::Close(close_code::TOO_BIG, "frame exceeds the transport limit")
            }
            _ => {
                debug!(error = %inner, "transport error");
                Flow::Gone
            }
        }
    }

    /// Returns `Some(flow)` when the connection must end.
    fn on_ws_message(&mut self, msg: Message) -> Option<Flow> {
        self.shared
            .last_seen
            .store(self.state.uptime_ms(), Ordering::Relaxed);
        match msg {
            Message::Text(text) => {
                Metrics::inc(&self.state.metrics.frames_in);
                self.on_text(&text)
            }
            Message::Binary(_) => {
                Metrics::inc(&self.state.metrics.frames_in);
                self.error(
                    ErrorType::InvalidMessage,
                    "Binary frames are not part of the protocol; send JSON text",
                    None,
                );
                self.count_invalid()
            }
            // tungstenite answers pings itself; a pong only proves liveness (recorded above).
            Message::Ping(_) | Message::Pong(_) => None,
            Message::Close(_) => Some(Flow::Close(close_code::NORMAL, "")),
        }
    }

    fn count_invalid(&mut self) -> Option<Flow> {
        let now = Instant::now();
        if now.duration_since(self.invalid_since) > INVALID_WINDOW {
            self.invalid_since = now;
            self.invalid_count = 0;
        }
        self.invalid_count += 1;
        if self.invalid_count > MAX_INVALID_FRAMES {
            Metrics::inc(&self.state.metrics.policy_closes);
            warn!("closing: too many invalid frames");
            return Some(Flow::Close(close_code::POLICY, "too many invalid frames"));
        }
        None
    }

    fn on_text(&mut self, text: &str) -> Option<Flow> {
        // Hot path: a `message` frame from a registered peer, envelope borrowed from `text`.
        if let Some(peer) = &self.peer {
            if let Some(m) = lattice_protocol::fast::decode_message_ref(text) {
                let peer = Arc::clone(peer);
                self.on_message(
                    &peer,
                    m.target_id,
                    m.message.get(),
                    m.message_id,
                    m.request_id,
                );
                return None;
            }
        }
        let frame = match decode_client(text) {
            Ok(f) => f,
            Err(e) => {
                debug!(error_type = %e.error_type, frame_type = ?e.frame_type, "invalid frame");
                self.error(e.error_type, e.details, e.request_id);
                return self.count_invalid();
            }
        };
        let rid = frame.request_id;
        match frame.body {
            ClientFrame::Register(r) => self.on_register(r, rid),
            ClientFrame::Challenge(_) => self.on_challenge(rid),
            other => {
                let Some(peer) = self.peer.clone() else {
                    self.error(
                        ErrorType::RegistrationRequired,
                        format!("Register before sending {}", other.type_name()),
                        rid,
                    );
                    return None;
                };
                match other {
                    ClientFrame::Discover(d) => self.on_discover(&peer, d, rid),
                    ClientFrame::RequestPublicKey(r) => self.on_request_public_key(r, rid),
                    ClientFrame::Message(m) => {
                        self.on_message(&peer, m.target_id, m.message.get(), m.message_id, rid);
                    }
                    ClientFrame::PeerResponse(r) => self.on_peer_response(&peer, r, rid),
                    ClientFrame::DebugQuestion(_) => self.on_debug_question(&peer, rid),
                    ClientFrame::Ack(a) => self.on_ack(&peer, &a),
                    ClientFrame::Register(_) | ClientFrame::Challenge(_) => {}
                }
            }
        }
        None
    }

    fn reply(&mut self, body: ServerFrame, rid: Option<RequestId>) {
        self.replies.push(Message::Text(
            encode(&Frame::with_request_id(body, rid)).into(),
        ));
    }

    fn error(&mut self, error_type: ErrorType, details: impl Into<String>, rid: Option<RequestId>) {
        Metrics::inc(&self.state.metrics.errors_sent);
        let body = ServerFrame::error(
            error_type,
            details,
            std::time::SystemTime::now(),
            rid.clone(),
        );
        self.reply(body, rid);
    }

    fn directory_unavailable(&mut self, e: &crate::store::StoreError, rid: Option<RequestId>) {
        warn!(error = %e, "directory lookup failed");
        self.error(
            ErrorType::InternalError,
            "The server could not read its directory; try again",
            rid,
        );
    }

    fn on_challenge(&mut self, rid: Option<RequestId>) {
        let nonce: [u8; CHALLENGE_NONCE_LEN] = rand::random();
        self.challenge = Some((nonce, Instant::now()));
        self.reply(
            ServerFrame::Challenge(lattice_protocol::Challenge {
                nonce: B64.encode(nonce),
            }),
            rid,
        );
    }

    /// Checks a verified registration; returns the identity key and key signature.
    fn check_proof(
        &mut self,
        v: &Verification,
        r: &Register,
        kem_key: &[u8],
    ) -> Result<([u8; 32], Vec<u8>), String> {
        let (nonce, issued) = self
            .challenge
            .take()
            .ok_or("Request a challenge before a verified registration")?;
        if issued.elapsed() > Duration::from_secs(CHALLENGE_TTL_SECS) {
            return Err("The challenge has expired; request a new one".into());
        }
        let field = |f: &Option<String>, name: &str| -> Result<Vec<u8>, String> {
            let s = f
                .as_deref()
                .ok_or_else(|| format!("verification.{name} is missing"))?;
            B64.decode(s)
                .map_err(|_| format!("verification.{name} is not valid base64"))
        };
        let ik_bytes = field(&v.serialized_public_key, "serializedPublicKey")?;
        let ik = IdentityPublicKey::from_bytes(&ik_bytes)
            .map_err(|_| "verification.serializedPublicKey is not an Ed25519 key".to_owned())?;
        let statement =
            lattice_crypto::registration_statement(&nonce, r.client_id.as_str(), kem_key)
                .map_err(|e| e.to_string())?;
        if field(&v.serialized_message, "serializedMessage")? != statement {
            return Err(
                "The signed statement does not match this registration and challenge".into(),
            );
        }
        let sig = field(&v.serialized_signed_data, "serializedSignedData")?;
        ik.verify(&statement, &sig)
            .map_err(|_| "The registration signature does not verify".to_owned())?;
        let key_sig = B64
            .decode(
                r.key_signature
                    .as_deref()
                    .ok_or("keySignature is required with an ed25519 verification")?,
            )
            .map_err(|_| "keySignature is not valid base64".to_owned())?;
        lattice_crypto::verify_kem_key_signature(&ik, kem_key, &key_sig)
            .map_err(|_| "keySignature does not verify against the identity key".to_owned())?;
        Ok((*ik.as_bytes(), key_sig))
    }

    /// Takes one of this address's registration slots (`--max-registrations-per-ip`); true if
    /// the limit allows this registration.
    fn acquire_ip_slot(&mut self) -> bool {
        let cfg = &self.state.config;
        let exempt = self.remote_ip.is_loopback() && !cfg.limit_loopback;
        if cfg.max_registrations_per_ip == 0 || exempt {
            return true;
        }
        self.ip_slot = self
            .state
            .addresses
            .acquire(self.remote_ip, cfg.max_registrations_per_ip);
        self.ip_slot
    }

    /// Whether this connection may create a new binding (a verified id not in the directory):
    /// the directory's cap (`--max-bindings`), then this address's allowance
    /// (`--new-ids-per-ip`, loopback exempt unless `--limit-loopback`).
    fn may_mint_id(&self) -> Result<(), (ErrorType, String)> {
        let cfg = &self.state.config;
        if cfg.max_bindings > 0 {
            match self.state.directory.binding_count() {
                Ok(n) if n >= cfg.max_bindings => {
                    return Err((
                        ErrorType::TooManyRegistrations,
                        format!("The server's directory is full ({} ids); it accepts no new ids now, existing ids still register", cfg.max_bindings),
                    ));
                }
                Ok(_) => {}
                Err(e) => {
                    warn!(error = %e, "directory count failed");
                    return Err((
                        ErrorType::InternalError,
                        "The server could not read its directory; try again".into(),
                    ));
                }
            }
        }
        let exempt = self.remote_ip.is_loopback() && !cfg.limit_loopback;
        if !exempt
            && !self
                .state
                .new_ids
                .allow(self.remote_ip, cfg.new_ids_per_ip, Instant::now())
        {
            return Err((
                ErrorType::RateLimited,
                format!("This address created {} new ids in the last hour, the most the server allows; try again later (existing ids are not limited)", cfg.new_ids_per_ip),
            ));
        }
        Ok(())
    }

    fn release_ip_slot(&mut self) {
        if std::mem::take(&mut self.ip_slot) {
            self.state.addresses.release(self.remote_ip);
        }
    }

    fn on_register(&mut self, r: Register, rid: Option<RequestId>) {
        if let Some(peer) = &self.peer {
            if peer.id == r.client_id {
                // A retry of our own registration: answer it again rather than colliding with it.
                let body = ServerFrame::Registered(Registered {
                    success: true,
                    client_id: peer.id.clone(),
                    verified: peer.verified,
                });
                self.reply(body, rid);
            } else {
                let details = format!(
                    "This connection is already registered as {}; one connection registers one id",
                    peer.id
                );
                self.error(ErrorType::InvalidMessage, details, rid);
            }
            return;
        }
        let id = r.client_id.clone();
        let kem_key = match &r.public_key {
            PublicKeyField::Bytes(b)
                if b.len() == KEM_PUBLIC_KEY_LEN && KemPublicKey::from_bytes(b).is_ok() =>
            {
                b.clone()
            }
            PublicKeyField::Bytes(b) if b.len() == KEM_PUBLIC_KEY_LEN => {
                let details = "publicKey is not a valid ML-KEM-768 public key (a coefficient is out of range)";
                return self.error(ErrorType::InvalidPublicKey, details, rid);
            }
            PublicKeyField::Bytes(b) => {
                let details = format!("publicKey must be an ML-KEM-768 public key of {KEM_PUBLIC_KEY_LEN} bytes (got {} bytes)", b.len());
                return self.error(ErrorType::InvalidPublicKey, details, rid);
            }
            PublicKeyField::Invalid(why) => {
                return self.error(
                    ErrorType::InvalidPublicKey,
                    format!("Invalid publicKey: {why}"),
                    rid,
                );
            }
        };
        // Original clients send other algorithms (ml-dsa) or odd shapes: those register unverified.
        let verification = match r.verification() {
            Some(Ok(v)) if v.algorithm.eq_ignore_ascii_case("ed25519") => Some(v),
            _ => None,
        };
        let proof = match verification {
            Some(v) => match self.check_proof(&v, &r, &kem_key) {
                Ok(p) => Some(p),
                Err(details) => return self.error(ErrorType::InvalidProof, details, rid),
            },
            None => None,
        };
        let binding = match self.state.directory.get(&id) {
            Ok(b) => b,
            Err(e) => {
                return self.directory_unavailable(&e, rid);
            }
        };
        let taken = format!("Client ID {id} is already taken");
        match (&binding, &proof) {
            (Some(_), None) => return self.error(ErrorType::ClientIdTaken, taken, rid),
            (Some(b), Some((ik, _))) if &b.identity_key != ik => {
                return self.error(ErrorType::ClientIdTaken, taken, rid)
            }
            _ => {}
        }
        let identity_key = proof.as_ref().map(|(ik, _)| *ik);
        let entry = Arc::new(PeerEntry {
            id: id.clone(),
            session: Arc::clone(&self.shared),
            verified: proof.is_some(),
            public_key: kem_key.clone().into(),
            identity_key,
            key_signature: proof.as_ref().map(|(_, s)| s.clone().into()),
            subscribed: AtomicBool::new(false),
        });
        // A verified registration of the same identity replaces a stale connection at once.
        let replace =
            |existing: &PeerEntry| identity_key.is_some() && existing.identity_key == identity_key;
        if proof.is_some() && binding.is_none() {
            if let Err((error_type, details)) = self.may_mint_id() {
                Metrics::inc(&self.state.metrics.new_ids_refused);
                info!(ip = %self.remote_ip, %id, %error_type, "new id refused");
                return self.error(error_type, details, rid);
            }
        }
        if !self.acquire_ip_slot() {
            let max = self.state.config.max_registrations_per_ip;
            info!(ip = %self.remote_ip, max, "registration refused: address limit");
            return self.error(
                ErrorType::TooManyRegistrations,
                format!("This address already holds {max} registrations, the most the server allows; close one first"),
                rid,
            );
        }
        let replaced = match self.state.hub.claim(Arc::clone(&entry), &replace) {
            Ok(old) => old,
            Err(ClaimError::Taken) => {
                self.release_ip_slot();
                return self.error(ErrorType::ClientIdTaken, taken, rid);
            }
        };
        // The replaced connection (same identity) is closed before anything can fail, so a
        // failure below never leaves it open but unreachable.
        if let Some(old) = replaced {
            if old.session.conn_id != self.shared.conn_id {
                old.session.close(
                    close_code::REPLACED,
                    "replaced by a newer connection of the same identity",
                );
            }
        }
        if let Some((ik, key_signature)) = proof {
            let new = Binding {
                identity_key: ik,
                kem_public_key: kem_key,
                key_signature,
            };
            if binding.as_ref() == Some(&new) {
                // In use: its binding does not expire (`--binding-ttl`) while it keeps coming back.
                let now = i64::try_from(unix_ms()).unwrap_or(i64::MAX);
                if let Err(e) = self.state.directory.touch(&id, now) {
                    warn!(error = %e, "directory touch failed");
                }
            } else {
                if let Err(e) = self.state.directory.put(&id, &new) {
                    warn!(error = %e, "directory write failed");
                    self.state.hub.release(&id, self.shared.conn_id);
                    self.release_ip_slot();
                    return self.error(
                        ErrorType::InternalError,
                        "The server could not store the registration; try again",
                        rid,
                    );
                }
            }
        }
        tracing::Span::current().record("peer", tracing::field::display(&id));
        info!(verified = entry.verified, "registered");
        Metrics::inc(&self.state.metrics.registrations);
        self.shared.registered.store(true, Ordering::Release);
        self.peer = Some(Arc::clone(&entry));
        let body = ServerFrame::Registered(Registered {
            success: true,
            client_id: id.clone(),
            verified: entry.verified,
        });
        self.reply(body, rid);
        let presence = encode(&Frame::new(ServerFrame::PeerConnected(PeerPresence {
            peer_id: id.clone(),
        })));
        self.state.hub.broadcast_presence(&presence.into(), &id);
        if entry.verified {
            self.draining = true;
        }
    }

    /// One page of online ids, at most [`MAX_DISCOVER_PEERS`], so the answer stays within
    /// `MAX_DISCOVER_ANSWER_BYTES` however many peers are online. A plain `discover` (original
    /// clients) gets the first page; `more` and `cursor` say how to ask for the next.
    fn on_discover(&mut self, peer: &PeerEntry, d: Discover, rid: Option<RequestId>) {
        peer.subscribed.store(true, Ordering::Release);
        let (peers, more) = self
            .state
            .hub
            .online_page(d.cursor.as_ref(), MAX_DISCOVER_PEERS);
        let cursor = if more { peers.last().cloned() } else { None };
        self.reply(
            ServerFrame::Peers(Peers {
                peers,
                more,
                cursor,
            }),
            rid,
        );
    }

    fn on_request_public_key(&mut self, r: RequestPublicKey, rid: Option<RequestId>) {
        let body = if let Some(e) = self.state.hub.get(&r.target_id) {
            PublicKeyResponse {
                peer_id: r.target_id,
                public_key: e.public_key.to_vec().into(),
                identity_key: e.identity_key.map(|k| B64.encode(k)),
                key_signature: e.key_signature.as_ref().map(|s| B64.encode(s)),
            }
        } else {
            match self.state.directory.get(&r.target_id) {
                Ok(Some(b)) => PublicKeyResponse {
                    peer_id: r.target_id,
                    public_key: b.kem_public_key.into(),
                    identity_key: Some(B64.encode(b.identity_key)),
                    key_signature: Some(B64.encode(b.key_signature)),
                },
                Ok(None) => {
                    return self.error(
                        ErrorType::PeerNotFound,
                        format!("Target peer {} not found", r.target_id),
                        rid,
                    );
                }
                Err(e) => {
                    return self.directory_unavailable(&e, rid);
                }
            }
        };
        self.reply(ServerFrame::PublicKey(body), rid);
    }

    fn on_message(
        &mut self,
        peer: &PeerEntry,
        target: ClientId,
        envelope: &str,
        sender_mid: Option<MessageId>,
        rid: Option<RequestId>,
    ) {
        if !envelope.starts_with('{') {
            return self.error(
                ErrorType::InvalidMessage,
                "message must be an envelope object",
                rid,
            );
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
                    rid,
                });
                return;
            }
            (Some(entry), mid) => match entry.session.tx.try_send(Out::Deliver(frame.into())) {
                Ok(()) => {
                    Metrics::inc(&self.state.metrics.messages_delivered);
                    Ok(AckStatus::Delivered)
                }
                Err(mpsc::error::TrySendError::Full(_)) => Err((
                    ErrorType::MailboxFull,
                    format!("Peer {target} is not reading its messages fast enough; the message was not delivered"),
                )),
                Err(mpsc::error::TrySendError::Closed(out)) => {
                    self.offline(&target, &peer.id, mid, out_frame(out))
                }
            },
            (None, mid) => self.offline(&target, &peer.id, mid, frame),
        };
        self.answer(&target, sender_mid.as_ref(), rid, status);
    }

    /// The sender's answer: `message_ack` (if it gave a `messageId`) or an `error`.
    fn answer(
        &mut self,
        target: &ClientId,
        sender_mid: Option<&MessageId>,
        rid: Option<RequestId>,
        status: Result<AckStatus, (ErrorType, String)>,
    ) {
        match status {
            Ok(status) => {
                if let Some(message_id) = sender_mid {
                    let ack = lattice_protocol::fast::encode_message_ack(
                        message_id,
                        target,
                        status,
                        rid.as_ref(),
                    );
                    self.replies.push(Message::Text(ack.into()));
                }
            }
            Err((t, details)) => self.error(t, details, rid),
        }
    }

    /// The group commit of this read batch: the acknowledged rows are deleted in one
    /// transaction, the messages for online verified peers inserted in another (each within its
    /// recipient's quota), then those messages are routed and their senders answered. Runs
    /// before every flush, so no `message_ack` is written before its message is committed.
    fn commit_pending(&mut self) {
        if !self.pending_acks.is_empty() {
            let acks = std::mem::take(&mut self.pending_acks);
            if let Some(peer) = &self.peer {
                if let Err(e) = self.state.mailbox.remove_batch(&peer.id, &acks) {
                    warn!(error = %e, count = acks.len(), "mailbox delete failed");
                }
            }
        }
        if self.pending.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut self.pending);
        let state = Arc::clone(&self.state);
        let items: Vec<LiveItem<'_>> = pending
            .iter()
            .map(|p| LiveItem {
                recipient: &p.target,
                item: &p.item,
                conn: p.entry.session.conn_id,
            })
            .collect();
        let results = state.mailbox.accept_live_batch(
            &items,
            &state.config.mailbox_quota(),
            state.config.mailbox_ttl,
        );
        drop(items);
        for (p, r) in pending.into_iter().zip(results) {
            let status = match r {
                Ok(Accepted::Stored) => self.route_stored(&p.entry, &p.target, &p.item),
                Ok(Accepted::Duplicate) => {
                    // A resend of a stored message: on its way already (or waiting); not twice.
                    debug!(target = %p.target, message_id = %p.item.message_id, "resend of a stored message");
                    Ok(AckStatus::Queued)
                }
                Err(e) => Err(self.refusal(&p.target, e)),
            };
            self.answer(&p.target, p.sender_mid.as_ref(), p.rid, status);
        }
    }

    /// Sends a committed message (its row owned by `entry`'s connection) through the
    /// connection's queue: `delivered`; or, with the queue full or the connection ending, gives
    /// the row back to the mailbox drain: `queued`.
    fn route_stored(
        &self,
        entry: &PeerEntry,
        target: &ClientId,
        item: &MailItem,
    ) -> Result<AckStatus, (ErrorType, String)> {
        let conn = entry.session.conn_id;
        match entry
            .session
            .tx
            .try_send(Out::Deliver(item.frame.clone().into()))
        {
            Ok(()) => {
                Metrics::inc(&self.state.metrics.messages_delivered);
                Ok(AckStatus::Delivered)
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
                Ok(AckStatus::Queued)
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
    ) -> Result<AckStatus, (ErrorType, String)> {
        match self.state.directory.get(target) {
            Ok(Some(_)) => self.enqueue(target, sender, mid, frame),
            Ok(None) => Err((
                ErrorType::PeerNotFound,
                format!("Target peer {target} not found"),
            )),
            Err(e) => {
                warn!(error = %e, "directory lookup failed");
                Err((
                    ErrorType::InternalError,
                    "The server could not read its directory; try again".into(),
                ))
            }
        }
    }

    fn enqueue(
        &mut self,
        target: &ClientId,
        sender: &ClientId,
        mid: Option<MessageId>,
        frame: String,
    ) -> Result<AckStatus, (ErrorType, String)> {
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
    fn refusal(&self, target: &ClientId, e: EnqueueError) -> (ErrorType, String) {
        let cfg = &self.state.config;
        let quota = cfg.mailbox_quota();
        match e {
            EnqueueError::Full { limit, .. } => {
                debug!(%target, ?limit, "mailbox full: message refused");
                let details = match limit {
                    Limit::Count => format!(
                        "The mailbox of {target} is full ({} messages waiting); the message was not accepted",
                        quota.count
                    ),
                    Limit::Bytes => format!(
                        "The mailbox of {target} is full ({} bytes waiting); the message was not accepted",
                        quota.bytes
                    ),
                    Limit::SenderCount => format!(
                        "You have {} messages waiting for {target}, the most one sender may; the message was not accepted",
                        quota.sender_count
                    ),
                    Limit::SenderBytes => format!(
                        "Your messages waiting for {target} take {} bytes, the most one sender may; the message was not accepted",
                        quota.sender_bytes
                    ),
                };
                (ErrorType::MailboxFull, details)
            }
            EnqueueError::Store(e) => {
                warn!(error = %e, %target, "mailbox write failed");
                (
                    ErrorType::InternalError,
                    "The server could not store the message; try again".into(),
                )
            }
        }
    }

    fn on_peer_response(&mut self, peer: &PeerEntry, r: PeerResponse, rid: Option<RequestId>) {
        match self
            .state
            .questions
            .answer(&peer.id, &r.question_id, &r.response)
        {
            Ok(Some(next)) => self.reply(ServerFrame::ServerQuestion(next), None),
            Ok(None) => {}
            Err(crate::questions::AnswerError::Unknown(q)) => {
                self.error(
                    ErrorType::UnknownQuestion,
                    format!("Question {q} is unknown or has expired"),
                    rid,
                );
            }
            Err(crate::questions::AnswerError::Invalid(details)) => {
                self.error(ErrorType::InvalidMessage, details, rid)
            }
        }
    }

    fn on_debug_question(&mut self, peer: &PeerEntry, rid: Option<RequestId>) {
        match self.state.questions.start_demo(&peer.id) {
            Ok(q) => self.reply(ServerFrame::ServerQuestion(q), rid),
            Err(e) => self.error(ErrorType::RateLimited, e.to_string(), rid),
        }
    }

    /// Deletes an acknowledged message. Message ids are the senders' choice, so the message is
    /// named by (sender, id): `fromId` when the ack carries it; without it, only an id that no
    /// other sender used is deleted (an ambiguous ack deletes nothing: at least once).
    fn on_ack(&mut self, peer: &PeerEntry, a: &Ack) {
        if peer.verified {
            // Deleted with the rest of this read batch's acks (`commit_pending`).
            self.pending_acks
                .push((a.from_id.clone(), a.message_id.clone()));
        }
    }

    async fn flush_replies(&mut self, ws: &mut WebSocket) -> Flow {
        self.commit_pending();
        if self.replies.is_empty() {
            return Flow::Continue;
        }
        let replies = std::mem::take(&mut self.replies);
        let n = replies.len() as u64;
        let write = async {
            for m in replies {
                ws.feed(m).await?;
            }
            ws.flush().await
        };
        match tokio::time::timeout(WRITE_TIMEOUT, write).await {
            Ok(Ok(())) => {
                self.state
                    .metrics
                    .frames_out
                    .fetch_add(n, Ordering::Relaxed);
                Flow::Continue
            }
            Ok(Err(_)) => Flow::Gone,
            Err(_) => {
                Metrics::inc(&self.state.metrics.policy_closes);
                Flow::Close(close_code::TRY_AGAIN_LATER, "not reading fast enough")
            }
        }
    }

    /// Writes `first` and whatever else is queued, then flushes.
    async fn write_queued(&mut self, ws: &mut WebSocket, first: Out) -> Flow {
        let verified = self.peer.as_ref().is_some_and(|p| p.verified);
        let mut next = Some(first);
        let mut n = 0;
        while let Some(out) = next.take() {
            match out {
                Out::Frame(t) => self.replies.push(Message::Text(t)),
                Out::Deliver(frame) => self.replies.push(Message::Text(frame)),
                Out::CheckMail => {
                    if verified {
                        self.draining = true;
                    }
                }
                Out::Ping => self.replies.push(Message::Ping(Default::default())),
            }
            n += 1;
            if n < WRITE_BATCH {
                next = self.rx.try_recv().ok();
            }
        }
        if self.shared.mail_waiting.swap(false, Ordering::AcqRel) && verified {
            self.draining = true;
        }
        self.flush_replies(ws).await
    }

    /// Writes the presence lane.
    async fn write_presence(&mut self, ws: &mut WebSocket) -> Flow {
        for frame in self.shared.take_presence_backlog() {
            self.replies.push(Message::Text(frame));
        }
        self.flush_replies(ws).await
    }

    /// Sends the next batch of mailbox entries, once the live queue is quiet.
    async fn drain_mailbox(&mut self, ws: &mut WebSocket) -> Flow {
        let Some(peer) = self.peer.clone() else {
            self.draining = false;
            return Flow::Continue;
        };
        match self
            .state
            .mailbox
            .claim(&peer.id, self.shared.conn_id, MAILBOX_BATCH)
        {
            Ok(items) => {
                debug!(count = items.len(), "mailbox batch");
                if items.len() < MAILBOX_BATCH {
                    self.draining = false;
                }
                for item in items {
                    self.replies.push(Message::Text(item.frame.into()));
                }
            }
            Err(e) => {
                warn!(error = %e, "mailbox read failed");
                self.draining = false;
            }
        }
        self.flush_replies(ws).await
    }

    /// After the socket is done: leave the hub, hand back undelivered mail, tell subscribers.
    async fn finish(&mut self) {
        self.rx.close();
        let Some(peer) = self.peer.clone() else {
            return;
        };
        self.release_ip_slot();
        let released = self.state.hub.release(&peer.id, self.shared.conn_id);
        if released {
            // Nobody holds the id any more: its demo conversations can never be answered. (A
            // connection replaced by the same identity keeps them for the new one.)
            self.state.questions.forget_demos(&peer.id);
        }
        // What this connection read last: its acks are applied, its messages committed and routed
        // (their senders' answers can no longer be written, which a sender treats as no answer).
        self.commit_pending();
        if peer.verified {
            // Everything sent on this connection and not acknowledged, and everything still in
            // its queue, waits in the mailbox for the next connection.
            match self.state.mailbox.disown_all(&peer.id, self.shared.conn_id) {
                Ok(0) => {}
                Ok(returned) => {
                    debug!(returned, "unacknowledged messages returned to the mailbox");
                    if let Some(current) = self.state.hub.get(&peer.id) {
                        current.session.notify_mail();
                    }
                }
                Err(e) => warn!(error = %e, "could not return unacknowledged messages"),
            }
        }
        if released {
            let frame = encode(&Frame::new(ServerFrame::PeerDisconnected(PeerPresence {
                peer_id: peer.id.clone(),
            })));
            self.state.hub.broadcast_presence(&frame.into(), &peer.id);
            info!("disconnected");
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The pacing arithmetic, on a synthetic clock (no sleeping, no timing assertions).
    #[test]
    fn the_token_bucket_paces_instead_of_refusing() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, t0).unwrap();
        // the burst: twice the rate
        for _ in 0..20 {
            assert!(b.available(t0));
            b.take(t0);
        }
        assert!(!b.available(t0));
        // the next token is due a tenth of a second later, and is there then
        let due = b.ready_at(t0);
        assert!(due > t0 + Duration::from_millis(99) && due <= t0 + Duration::from_millis(101));
        assert!(b.available(due));
        b.take(due);
        // a long pause refills the burst, never more
        let later = due + Duration::from_secs(3600);
        for _ in 0..20 {
            assert!(b.available(later));
            b.take(later);
        }
        assert!(!b.available(later));
        // a clock that does not move forward never adds tokens
        assert!(!b.available(t0));
        assert!(TokenBucket::new(0, t0).is_none(), "0 turns the limit off");
    }
}
