//! One connection, and the supervisor that keeps replacing it.
//!
//! [`run`] owns a socket from dial to close and never retries: it reads frames and hands them to
//! the peer, writes the registration handshake (control lane) at once and the outbound queue only
//! once registered, pings, and returns why it ended. [`supervise`] sits above it: dial → register →
//! run → back off → again, resetting the backoff only after a registered connection stayed up for
//! [`defaults::BACKOFF_RESET_AFTER`] (a server that closes right after each registration still
//! backs off and runs into the attempt limit), and
//! publishing the [`ConnectionState`]. One ending is final: a connection the server closed because
//! the same identity registered elsewhere ([`CLOSE_REPLACED`]) is not replaced, or two instances of
//! one identity would take the id from each other forever.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use lattice_protocol::Delivered;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{interval_at, sleep, sleep_until, timeout, Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::events::{ConnectionState, PeerEvent};
use crate::peer::Inner;
use crate::sanitize::Sanitized;
use crate::transport::WsStream;
use crate::{defaults, PeerError};

/// The close code of a connection replaced by a newer verified registration of the same identity
/// (the server's `close_code::REPLACED`, `docs/protocol.md`).
pub(crate) const CLOSE_REPLACED: u16 = 4000;

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EndReason {
    /// `disconnect` (or the last handle dropped).
    Cancelled,
    /// The server closed the connection.
    Closed(String),
    /// The server closed the connection because another connection registered with our identity
    /// (close code [`CLOSE_REPLACED`]). Final: not reconnected.
    Replaced,
    /// No frame arrived within the pong timeout after a ping.
    PongTimeout,
    /// Reading failed.
    Read(String),
    /// Writing failed or took longer than the write timeout.
    Write(String),
}

impl std::fmt::Display for EndReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cancelled => f.write_str("disconnected by the caller"),
            Self::Closed(r) => write!(f, "closed by the server ({r})"),
            Self::Replaced => f.write_str("replaced by another connection of this identity"),
            Self::PongTimeout => f.write_str("no answer to a keepalive ping"),
            Self::Read(e) => write!(f, "read failed: {e}"),
            Self::Write(e) => write!(f, "write failed: {e}"),
        }
    }
}

/// The lanes a connection writes from.
pub(crate) struct Lanes<'a> {
    /// Registration handshake frames, written as soon as they come.
    pub(crate) control: mpsc::Receiver<String>,
    /// Everything else, written only once registered.
    pub(crate) outbound: &'a mut mpsc::Receiver<String>,
    /// Fires when the registration succeeded; dropped if it failed.
    pub(crate) registered: oneshot::Receiver<()>,
}

/// Runs one connection until it ends.
pub(crate) async fn run(
    ws: WsStream,
    inner: &Arc<Inner>,
    mut lanes: Lanes<'_>,
    received: &mpsc::Sender<Delivered>,
    cancel: &CancellationToken,
) -> EndReason {
    let t = &inner.config.timeouts;
    let (mut sink, mut stream) = ws.split();
    let mut is_registered = false;
    let mut registration_over = false;
    // `interval_at` panics on a zero period.
    let ping_every = t.ping_interval.max(Duration::from_millis(1));
    let mut ping = interval_at(defaults::deadline_after(ping_every), ping_every);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut pong_deadline: Option<Instant> = None;

    macro_rules! write {
        ($msg:expr) => {
            match timeout(t.write, sink.send($msg)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return EndReason::Write(e.to_string()),
                Err(_) => return EndReason::Write(format!("timed out after {:?}", t.write)),
            }
        };
    }

    loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => {
                let close = CloseFrame { code: CloseCode::Normal, reason: "bye".into() };
                let _ = timeout(t.write, sink.send(Message::Close(Some(close)))).await;
                return EndReason::Cancelled;
            }
            msg = stream.next() => {
                // Any frame proves the connection alive.
                pong_deadline = None;
                match msg {
                    Some(Ok(Message::Text(text))) => inner.handle_incoming(text.as_str(), received),
                    // tungstenite answers pings itself (flushed on the next read or write).
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                    Some(Ok(Message::Binary(_))) => {
                        tracing::warn!(peer = %inner.config.client_id, "ignoring a binary frame from the server");
                    }
                    Some(Ok(Message::Close(frame))) => {
                        if frame.as_ref().is_some_and(|f| u16::from(f.code) == CLOSE_REPLACED) {
                            return EndReason::Replaced;
                        }
                        let reason = frame.map_or_else(|| "no reason".to_owned(), |f| format!("{}: {}", f.code, f.reason));
                        return EndReason::Closed(reason);
                    }
                    Some(Err(e)) => return EndReason::Read(e.to_string()),
                    None => return EndReason::Closed("stream ended".into()),
                }
            }
            Some(text) = lanes.control.recv() => write!(Message::text(text)),
            r = &mut lanes.registered, if !is_registered && !registration_over => {
                match r {
                    Ok(()) => is_registered = true,
                    Err(_) => registration_over = true,
                }
            }
            Some(text) = lanes.outbound.recv(), if is_registered => write!(Message::text(text)),
            _ = ping.tick() => {
                if pong_deadline.is_none() {
                    pong_deadline = Some(defaults::deadline_after(t.pong_timeout));
                    write!(Message::Ping(Default::default()));
                }
            }
            () = sleep_until(pong_deadline.unwrap_or_else(Instant::now)), if pong_deadline.is_some() => {
                return EndReason::PongTimeout;
            }
        }
    }
}

/// Dials once, registers and runs the connection. `Ok` if the connection registered (and has
/// now ended), `Err` if it never got that far. Resets `failures` if the registered connection
/// lasted at least [`defaults::BACKOFF_RESET_AFTER`].
async fn connect_once(
    inner: &Arc<Inner>,
    outbound: &mut mpsc::Receiver<String>,
    received: &mpsc::Sender<Delivered>,
    cancel: &CancellationToken,
    first: &mut Option<oneshot::Sender<Result<(), PeerError>>>,
    failures: &mut u32,
) -> Result<EndReason, PeerError> {
    let ws = inner.dialer.dial(inner.config.timeouts.connect).await?;
    let (control_tx, control_rx) = mpsc::channel(defaults::CONTROL_QUEUE);
    let epoch = inner.link_opened(control_tx);
    let (registered_tx, registered_rx) = oneshot::channel();
    let lanes = Lanes {
        control: control_rx,
        outbound,
        registered: registered_rx,
    };
    let conn = run(ws, inner, lanes, received, cancel);
    tokio::pin!(conn);
    let registration = inner.register(epoch);
    let result = tokio::select! {
        end = &mut conn => Err(match end {
            // Replaced while (re-)registering: another instance holds the id now.
            EndReason::Replaced => PeerError::Replaced,
            end => PeerError::Connect {
                url: inner.dialer.url().to_owned(),
                reason: format!("connection ended during registration: {end}"),
            },
        }),
        r = registration => match r {
            Ok(registered) => {
                inner.link_registered(epoch);
                let _ = registered_tx.send(());
                let registered_at = Instant::now();
                tracing::info!(peer = %inner.config.client_id, epoch, verified = registered.verified, "registered");
                inner.set_state(ConnectionState::Connected);
                inner.dispatcher.emit(PeerEvent::Registered {
                    client_id: registered.client_id,
                    verified: registered.verified,
                });
                if let Some(tx) = first.take() {
                    let _ = tx.send(Ok(()));
                }
                inner.after_registration();
                let end = conn.await;
                // Only a connection that stayed up for a while proves the server healthy: one
                // that is closed right after each registration keeps backing off and runs into
                // the attempt limit.
                if registered_at.elapsed() >= defaults::BACKOFF_RESET_AFTER {
                    *failures = 0;
                }
                // The server puts every unacknowledged message back into the mailbox now and
                // delivers it again after re-registration: the local copies are redundant.
                if let Ok(mut held) = inner.held.lock() {
                    held.clear();
                }
                tracing::info!(peer = %inner.config.client_id, epoch, reason = %Sanitized(&end), "connection ended");
                Ok(end)
            }
            Err(e) => Err(e),
        },
    };
    inner.link_closed(epoch);
    result
}

/// Keeps the peer connected until cancelled or the backoff gives up. Returns the outbound queue's
/// receiver so a later `connect` can reuse what is still queued.
pub(crate) async fn supervise(
    inner: Arc<Inner>,
    mut outbound: mpsc::Receiver<String>,
    cancel: CancellationToken,
    first: oneshot::Sender<Result<(), PeerError>>,
) {
    let (received_tx, received_rx) = mpsc::channel(defaults::RECEIVE_QUEUE);
    let worker_cancel = cancel.child_token();
    let worker = tokio::spawn(crate::receive::worker(
        Arc::clone(&inner),
        received_rx,
        worker_cancel.clone(),
    ));
    let mut first = Some(first);
    let mut failures: u32 = 0;
    inner.set_state(ConnectionState::Connecting);
    loop {
        let outcome = tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            o = connect_once(&inner, &mut outbound, &received_tx, &cancel, &mut first, &mut failures) => o,
        };
        if first.is_some() {
            // The first connection never registered: report to `connect` and stop, unless the
            // caller asked to wait for the server and the reason may pass.
            let e = outcome.err().unwrap_or(PeerError::NotConnected);
            let retry = inner.config.retry_first_connect
                && !e.is_permanent()
                && !cancel.is_cancelled()
                && inner.config.reconnect.allows(failures.saturating_add(1));
            if !retry {
                if let Some(tx) = first.take() {
                    let _ = tx.send(Err(e));
                }
                break;
            }
            tracing::info!(peer = %inner.config.client_id, error = %Sanitized(&e), "server not reachable yet");
        } else {
            match outcome {
                Ok(EndReason::Cancelled) => break,
                Ok(EndReason::Replaced) | Err(PeerError::Replaced) => {
                    // Reconnecting would take the id back from the other instance, which would then
                    // do the same: stop, tell the app, and wait for an explicit `connect`.
                    tracing::warn!(peer = %inner.config.client_id, "replaced by another connection of this identity; not reconnecting");
                    inner.dispatcher.emit(PeerEvent::Error(PeerError::Replaced));
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::info!(peer = %inner.config.client_id, error = %Sanitized(&e), "reconnect attempt failed");
                }
            }
        }
        if cancel.is_cancelled() {
            break;
        }
        failures += 1;
        let backoff = &inner.config.reconnect;
        if !backoff.allows(failures) {
            if backoff.enabled {
                inner
                    .dispatcher
                    .emit(PeerEvent::Error(PeerError::ReconnectFailed {
                        attempts: failures - 1,
                    }));
            }
            break;
        }
        inner.set_state(ConnectionState::Reconnecting { attempt: failures });
        let delay = backoff.delay(failures);
        tracing::info!(peer = %inner.config.client_id, attempt = failures, ?delay, "reconnecting");
        tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            () = sleep(delay) => {}
        }
    }
    worker_cancel.cancel();
    let _ = worker.await;
    inner.return_outbound(outbound);
    // Last: once `Disconnected` is published the supervisor is done, so a `connect` called right
    // away (from an event handler or subscriber) waits for this task instead of refusing.
    inner.set_state(ConnectionState::Disconnected);
}
