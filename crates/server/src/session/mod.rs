//! One WebSocket connection.
//!
//! A single task owns the socket (this module, the *socket loop*): it reads frames, hands each to
//! the socket-free `handlers::Core`, and writes both the core's replies and what other sessions
//! route to it through its bounded queue. Writes are batched (feed, then one flush) and bounded by
//! [`WRITE_TIMEOUT`]; a peer that stops reading is closed instead of buffered.
//!
//! ```text
//!  socket ──read batch (≤ READ_BATCH, paced)──▶ Core::on_ws_message ──▶ one handler per frame
//!                                                     │ replies, pending messages/acks
//!  socket ◀──feed…flush (WRITE_TIMEOUT)── take_replies ◀── Core::take_commit → mailbox writer
//!                                                           (group commit) → Core::finish_commit
//!  queue (Out) / presence lane / mailbox drain ──▶ Core::push / drain_batch ──▶ same flush
//! ```
//!
//! ## Modules
//! - `handlers`: `handlers::Core`, the connection's protocol state, and one handler per
//!   client frame (register, discover, keys, relay, questions); no socket.
//! - `error`: `error::HandlerError`, every refusal, mapped to its wire `errorType` once.
//! - `pacing`: `pacing::TokenBucket`, the `--rate-limit` pacing.
//!
//! ## Slow consumers (the written policy)
//! Senders never wait on a recipient: routing uses `try_send` on the recipient's queue
//! (`--outbound-queue`, 256 frames by default). When it is full:
//! - a **verified** recipient's message is committed to its durable mailbox and left there (the
//!   sender's `message_ack` says `queued`); the recipient drains its mailbox once its queue
//!   empties;
//! - an **unverified** recipient (an original client, which has no mailbox) is not sent the message
//!   and the sender gets `MAILBOX_FULL`; nothing is buffered beyond the queue.
//!
//! Presence notices never use that queue: they have their own lane, coalesced to the latest state
//! per peer ([`crate::hub::SessionShared::send_presence`]), so they can never take a message's place.
//! Nor do the answers other sessions write for this connection's messages (a recipient's `ack`, a
//! spill to the mailbox): they have the answer lane ([`crate::inflight::AnswerLane`]), bounded by
//! the answers the connection may be owed.
//!
//! ## Fast senders are paced, not refused
//! With `--rate-limit`, each connection has a token bucket (rate per second, burst twice that). A
//! connection with no token left is simply not read until one refills: the frames wait in the
//! sender's socket, its TCP window closes, and its own writes slow down. Every frame read is
//! handled; none is dropped, none counts as invalid, and a connection is never closed for being
//! fast. Other connections are not affected (each session is its own task).
//!
//! ## Nothing acknowledged is lost, and nothing is accepted without room
//! A message with a `messageId` for an online verified recipient is sent at once and *held* in the
//! recipient connection's in-flight table ([`crate::inflight`]) until the recipient's `ack`, which
//! answers the sender `delivered` through the sender's answer lane: end to end, no disk. When the
//! ack does not come within `--ack-wait`, the recipient's connection ends, or a bound is reached
//! (held messages per connection, answers owed per sender, bytes in total), the message takes the
//! durable path: it is committed to the SQLite mailbox *before* the sender hears its
//! `message_ack`, and counted against the recipient's quota (count, bytes, and this sender's
//! share) in the same transaction. The commit is grouped: the messages of one read batch, with
//! other sessions' batches, share one transaction of the mailbox writer ([`crate::writer`]), run
//! before the batch's replies are written (`handlers::Core::take_commit`,
//! `handlers::Core::finish_commit`). When there is no room the sender gets `MAILBOX_FULL` with
//! its `requestId` and no `message_ack`, so it knows the message was not taken.
//!
//! A committed row for an online recipient is *owned* by its connection
//! ([`crate::store::Mailbox::accept_live`]): the frame went (or goes) out through the
//! connection's queue, so no drain sends it twice. The recipient's `ack` deletes the row. When
//! the connection ends for any reason (drop, stall, idle, replacement, shutdown) what it holds is
//! committed and its rows are given back to the mailbox
//! ([`crate::store::Mailbox::disown_all`]), and when the process dies, the next start gives back
//! all of them. So a recipient that never acks holds at most its quota (plus its in-flight
//! table), and its senders then get `MAILBOX_FULL`: no window, nothing forgotten that a sender
//! was told about. Delivery is at least once; clients deduplicate by (sender, `messageId`). The
//! contract is written in docs/protocol.md.

pub(crate) mod error;
pub(crate) mod handlers;
pub(crate) mod pacing;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use futures_util::{FutureExt as _, SinkExt as _, StreamExt as _};
use lattice_protocol::close_code;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, Instrument as _};

use crate::hub::{Out, SessionShared};
use crate::limits::WRITE_TIMEOUT;
use crate::metrics::Metrics;
use crate::state::ServerState;
use crate::ws::{Socket as WebSocket, WsError};
pub(crate) use handlers::reap_in_flight;
use handlers::{Close, Core};
use pacing::TokenBucket;

/// Frames read and handled before the replies are flushed.
const READ_BATCH: usize = 32;
/// Queued frames written before one flush.
const WRITE_BATCH: usize = 64;
/// How long a closing connection waits for the peer's Close.
const CLOSE_HANDSHAKE: Duration = Duration::from_secs(2);

/// The socket loop's own state; everything about the protocol is in `core`.
struct Session {
    core: Core,
    /// The core's shared part, held here too so `select!` can borrow it beside `&mut self`.
    shared: Arc<SessionShared>,
    rx: mpsc::Receiver<Out>,
    bucket: Option<TokenBucket>,
}

/// Runs one connection to its end.
pub async fn run(state: Arc<ServerState>, socket: WebSocket, remote: SocketAddr) {
    let conn_id = state.next_conn.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = mpsc::channel(state.config.outbound_queue);
    let shared = Arc::new(SessionShared::new(
        conn_id,
        tx,
        state.shutdown.child_token(),
        state.uptime_ms(),
    ));
    state.sessions.insert(Arc::clone(&shared));
    let mut session = Session {
        bucket: TokenBucket::new(state.config.rate_limit, Instant::now()),
        core: Core::new(Arc::clone(&state), Arc::clone(&shared), remote.ip()),
        shared,
        rx,
    };
    let span =
        tracing::info_span!("session", conn = conn_id, %remote, peer = tracing::field::Empty);
    async move {
        debug!("connected");
        session.serve(socket).await;
        session.rx.close();
        // Boxed: the connection's task would otherwise be as large as this future for its whole
        // life (memory per idle connection).
        Box::pin(session.core.finish()).await;
    }
    .instrument(span)
    .await;
    state.sessions.remove(conn_id);
    state.open_connections.fetch_sub(1, Ordering::AcqRel);
}

enum Flow {
    Continue,
    /// Close with this code and reason.
    Close(Close),
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
                Metrics::inc(&self.core.state().metrics.rate_limited);
            }
            // The timer exists only while paused: select! builds every branch's future on every
            // turn, and an unpaused connection (nearly all of them) should not pay for a Sleep.
            let resume = async move {
                if let Some(t) = paused_until {
                    Box::pin(tokio::time::sleep_until(t)).await;
                }
            };
            // A link relay's end: its timer, like the pacing one, exists only for such a
            // connection.
            let relay_end = self.core.relay_deadline();
            let expire = async move {
                if let Some(t) = relay_end {
                    Box::pin(tokio::time::sleep_until(t)).await;
                }
            };
            let draining = self.core.draining();
            let flow = tokio::select! {
                biased;
                () = self.shared.kill.cancelled() => {
                    let (code, reason) = self
                        .shared
                        .close_reason
                        .get()
                        .copied()
                        .unwrap_or((close_code::GOING_AWAY, "server shutting down"));
                    Flow::Close(Close { code, reason })
                }
                // The handlers are boxed so that an idle connection's task holds only this small
                // select state, not the largest handler's: memory per idle connection is a target.
                () = expire, if relay_end.is_some() => Flow::Close(Close {
                    code: close_code::LINK_RELAY_EXPIRED,
                    reason: "link relay expired",
                }),
                Some(out) = self.rx.recv() => Box::pin(self.write_queued(&mut ws, out)).await,
                () = self.shared.answers.ready.notified() => Box::pin(self.write_answers(&mut ws)).await,
                () = self.shared.presence_ready.notified() => Box::pin(self.write_presence(&mut ws)).await,
                msg = ws.next(), if paused_until.is_none() => Box::pin(self.read(&mut ws, msg)).await,
                () = resume, if paused_until.is_some() => Flow::Continue,
                () = std::future::ready(()), if draining => Box::pin(self.drain_mailbox(&mut ws)).await,
            };
            match flow {
                Flow::Continue => {}
                other => break other,
            }
        };
        if let Flow::Close(Close { code, reason }) = flow {
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
    async fn read(&mut self, ws: &mut WebSocket, first: Option<Result<Message, WsError>>) -> Flow {
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
                    if let Some(close) = self.core.on_ws_message(msg).await {
                        let _ = self.flush_replies(ws).await;
                        return Flow::Close(close);
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

    fn transport_error(&mut self, e: WsError) -> Flow {
        let (code, reason) = match e {
            WsError::TooBig { .. } => (close_code::TOO_BIG, "frame exceeds the transport limit"),
            WsError::Protocol(what) => (close_code::PROTOCOL_ERROR, what),
            WsError::InvalidUtf8 => (close_code::INVALID_DATA, "text message is not valid UTF-8"),
            other => {
                debug!(error = %other, "transport error");
                return Flow::Gone;
            }
        };
        Metrics::inc(&self.core.state().metrics.policy_closes);
        Flow::Close(Close { code, reason })
    }

    /// The batch's group commit, then its replies and the answer lane's frames in one write
    /// (feed, one flush), bounded by [`WRITE_TIMEOUT`]. The commit comes first so that no
    /// `message_ack` is written before its message is stored.
    async fn flush_replies(&mut self, ws: &mut WebSocket) -> Flow {
        if let Some(request) = self.core.take_commit() {
            let writer = Arc::clone(&self.core.state().writer);
            match writer.commit(request).await {
                Ok(results) => self.core.finish_commit(results),
                Err(request) => self.core.commit_here(request),
            }
        }
        for frame in self.shared.answers.take() {
            self.core.push(Message::Text(frame));
        }
        let replies = self.core.take_replies();
        if replies.is_empty() {
            return Flow::Continue;
        }
        let n = replies.len() as u64;
        let write = async {
            for m in replies {
                ws.feed(m).await?;
            }
            ws.flush().await
        };
        match tokio::time::timeout(WRITE_TIMEOUT, write).await {
            Ok(Ok(())) => {
                self.core
                    .state()
                    .metrics
                    .frames_out
                    .fetch_add(n, Ordering::Relaxed);
                Flow::Continue
            }
            Ok(Err(_)) => Flow::Gone,
            Err(_) => {
                Metrics::inc(&self.core.state().metrics.policy_closes);
                Flow::Close(Close {
                    code: close_code::TRY_AGAIN_LATER,
                    reason: "not reading fast enough",
                })
            }
        }
    }

    /// Writes `first` and whatever else is queued, then flushes.
    async fn write_queued(&mut self, ws: &mut WebSocket, first: Out) -> Flow {
        let mut next = Some(first);
        let mut n = 0;
        while let Some(out) = next.take() {
            match out {
                Out::Frame(t) | Out::Deliver(t) => self.core.push(Message::Text(*t)),
                Out::CheckMail => self.core.set_draining(),
                Out::Ping => self.core.push(Message::Ping(Default::default())),
            }
            n += 1;
            if n < WRITE_BATCH {
                next = self.rx.try_recv().ok();
            }
        }
        if self.shared.mail_waiting.swap(false, Ordering::AcqRel) {
            self.core.set_draining();
        }
        self.flush_replies(ws).await
    }

    /// Writes the answer lane: `message_ack`s and errors for this connection's messages that
    /// other sessions answered (a recipient's `ack`, a spill to the mailbox). Every flush takes
    /// the lane too ([`Self::flush_replies`]), so a busy connection writes its answers with its
    /// other frames and the lane is never starved by the queue.
    async fn write_answers(&mut self, ws: &mut WebSocket) -> Flow {
        self.flush_replies(ws).await
    }

    /// Writes the presence lane.
    async fn write_presence(&mut self, ws: &mut WebSocket) -> Flow {
        for frame in self.shared.take_presence_backlog() {
            self.core.push(Message::Text(frame));
        }
        self.flush_replies(ws).await
    }

    /// Sends the next batch of mailbox entries, once the live queue is quiet.
    async fn drain_mailbox(&mut self, ws: &mut WebSocket) -> Flow {
        self.core.drain_batch().await;
        self.flush_replies(ws).await
    }
}
