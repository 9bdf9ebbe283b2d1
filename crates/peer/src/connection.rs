//! One connection, and the supervisor that keeps replacing it.
//!
//! [`run`] owns a socket from dial to close and never retries: it hands every text frame to the
//! [`Router`], writes the registration handshake (control lane) at once and the normal lane only
//! once registered, keeps the connection alive ([`Keepalive`]), and returns why it ended.
//! [`supervise`] sits above it: dial → register → run → back off → again ([`keep_connected`], the
//! loop itself, knows no socket: it drives an *attempt* and is unit-tested with scripted ones). The
//! backoff is reset only after a registered connection stayed up for
//! [`defaults::BACKOFF_RESET_AFTER`] (a server that closes right after each registration still
//! backs off and runs into the attempt limit), and the [`ConnectionState`] is published on the
//! [`Link`]. Whether a failed *first* connection is retried is the supervisor's [`Policy`]. One
//! ending is final: a connection the server closed because the same identity registered
//! elsewhere ([`close_code::REPLACED`]) is not replaced, or two instances of one identity would take the
//! id from each other forever; nor is a linked device the server cut off because its id removed it
//! ([`close_code::DEVICE_REMOVED`]).
//!
//! A linked device registers with the device part of `register` (docs/protocol.md, *Devices*):
//! its device id, device key and certificate, the challenge signed by the **device key**
//! ([`lattice_crypto::device_registration_statement`]), the id's bound ML-KEM key and
//! `keySignature` from the bundle, and its signed device list until one registration carried it
//! (the server keeps only a newer list: an older one, after the primary signed another, is
//! `STALE_DEVICE_LIST`, and the registration is made again without it).
//!
//! This module never imports the handle: the handle builds a [`Session`] of components and
//! spawns [`supervise`]; events go up through the dispatcher and the link's state.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use base64::Engine as _;
use futures_util::{SinkExt as _, StreamExt as _};
use std::sync::atomic::{AtomicBool, Ordering};

use lattice_crypto::{device_registration_statement, registration_statement};
use lattice_protocol::close_code;
use lattice_protocol::{
    ClientFrame, ClientId, Delivered, DevicePart, Empty, ErrorType, PublicKeyField, Register,
    Registered, ServerFrame, Verification,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep, timeout, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::config::{Backoff, Credentials, Timeouts};
use crate::events::{ConnectionState, Dispatcher, PeerEvent};
use crate::groups::Groups;
use crate::inbox::{self, Inbox};
use crate::link::{Beat, Keepalive, Lane, Link};
use crate::requests::Requests;
use crate::router::Router;
use crate::sanitize::Sanitized;
use crate::transport::{Dialer, WsStream};
use crate::wire::{unexpected, B64};
use crate::{defaults, PeerError, WaitOptions};

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EndReason {
    /// `disconnect` (or the last handle dropped).
    Cancelled,
    /// The server closed the connection.
    Closed(String),
    /// The server closed the connection because another connection registered with our identity
    /// (close code [`close_code::REPLACED`]). Final: not reconnected.
    Replaced,
    /// The server closed this linked device's connection because its id removed it from the
    /// device list (close code [`close_code::DEVICE_REMOVED`]). Final: not reconnected.
    DeviceRemoved,
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
            Self::DeviceRemoved => f.write_str("this device was removed from its id"),
            Self::PongTimeout => f.write_str("no answer to a keepalive ping"),
            Self::Read(e) => write!(f, "read failed: {e}"),
            Self::Write(e) => write!(f, "write failed: {e}"),
        }
    }
}

/// The supervisor's reconnect policy.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    /// Delays between attempts and when to give up.
    pub(crate) backoff: Backoff,
    /// Whether a failed *first* connection is retried (with `backoff`) instead of reported.
    pub(crate) retry_first_connect: bool,
}

/// What a connection needs: our identity and the components it drives.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) client_id: ClientId,
    pub(crate) credentials: Credentials,
    /// A linked device's signed device list went with a registration the server accepted (or
    /// it had a newer one): later registrations leave it out.
    pub(crate) device_list_sent: AtomicBool,
    /// Registers as a link relay ([`crate::PeerConfig::for_linking`]).
    pub(crate) link_relay: bool,
    pub(crate) timeouts: Timeouts,
    pub(crate) policy: Policy,
    pub(crate) dialer: Dialer,
    pub(crate) dispatcher: Arc<Dispatcher>,
    pub(crate) link: Arc<Link>,
    pub(crate) requests: Arc<Requests>,
    pub(crate) router: Router,
    pub(crate) inbox: Arc<Inbox>,
    /// Groups, when on: their worker runs beside the inbox's, and KeyPackages are topped up
    /// after every verified registration.
    pub(crate) groups: Option<Arc<Groups>>,
}

/// Where `connect` learns how the first connection went.
pub(crate) type FirstTx = oneshot::Sender<Result<(), PeerError>>;

/// What the supervisor carries from one attempt to the next.
#[derive(Debug)]
pub(crate) struct Carry {
    /// `Some` until the first registration (or the first failure, reported).
    pub(crate) first: Option<FirstTx>,
    /// The normal lane's receiving end, kept across connections.
    pub(crate) outbound: mpsc::Receiver<String>,
}

/// How a registered connection ended.
#[derive(Debug)]
pub(crate) struct Ended {
    pub(crate) reason: EndReason,
    /// It stayed up long enough to prove the server healthy: the backoff starts over.
    pub(crate) healthy: bool,
}

/// One attempt: `Ok` once a registered connection ended, `Err` if it never registered.
pub(crate) type AttemptFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Ended, PeerError>> + Send + 'a>>;

/// The lanes a connection writes from.
struct Lanes<'a> {
    /// Registration handshake frames, written as soon as they come.
    control: mpsc::Receiver<String>,
    /// Everything else, written only once registered.
    outbound: &'a mut mpsc::Receiver<String>,
    /// Fires when the registration succeeded; dropped if it failed.
    registered: oneshot::Receiver<()>,
}

/// Runs one connection until it ends.
async fn run(
    ws: WsStream,
    session: &Session,
    mut lanes: Lanes<'_>,
    received: &mpsc::Sender<Delivered>,
    cancel: &CancellationToken,
) -> EndReason {
    let t = &session.timeouts;
    let (mut sink, mut stream) = ws.split();
    let mut is_registered = false;
    let mut registration_over = false;
    let mut keepalive = Keepalive::new(t.ping_interval, t.pong_timeout);

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
                keepalive.alive();
                match msg {
                    Some(Ok(Message::Text(text))) => session.router.handle(text.as_str(), received),
                    // tungstenite answers pings itself (flushed on the next read or write).
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                    Some(Ok(Message::Binary(_))) => {
                        tracing::warn!(peer = %session.client_id, "ignoring a binary frame from the server");
                    }
                    Some(Ok(Message::Close(frame))) => {
                        match frame.as_ref().map(|f| u16::from(f.code)) {
                            Some(close_code::REPLACED) => return EndReason::Replaced,
                            Some(close_code::DEVICE_REMOVED) => return EndReason::DeviceRemoved,
                            _ => {}
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
            beat = keepalive.next() => match beat {
                Beat::Ping => write!(Message::Ping(Default::default())),
                Beat::Dead => return EndReason::PongTimeout,
            },
        }
    }
}

/// Dials once, registers and runs the connection. `Ok` if the connection registered (and has
/// now ended), `Err` if it never got that far.
async fn connect_once(
    session: &Session,
    carry: &mut Carry,
    received: &mpsc::Sender<Delivered>,
    cancel: &CancellationToken,
) -> Result<Ended, PeerError> {
    let Carry { first, outbound } = carry;
    let ws = session.dialer.dial(session.timeouts.connect).await?;
    let (control_tx, control_rx) = mpsc::channel(defaults::CONTROL_QUEUE);
    let epoch = session.link.opened(control_tx);
    let (registered_tx, registered_rx) = oneshot::channel();
    let lanes = Lanes {
        control: control_rx,
        outbound,
        registered: registered_rx,
    };
    let conn = run(ws, session, lanes, received, cancel);
    tokio::pin!(conn);
    let registration = register(session, epoch);
    let result = tokio::select! {
        end = &mut conn => Err(match end {
            // Replaced while (re-)registering: another instance holds the id now.
            EndReason::Replaced => PeerError::Replaced,
            EndReason::DeviceRemoved => PeerError::DeviceRemoved,
            end => PeerError::Connect {
                url: session.dialer.url().to_owned(),
                reason: format!("connection ended during registration: {end}"),
            },
        }),
        r = registration => match r {
            Ok(registered) => {
                session.link.registered(epoch, registered.verified);
                session.requests.adopt_queued(epoch);
                let _ = registered_tx.send(());
                let registered_at = Instant::now();
                tracing::info!(peer = %session.client_id, epoch, verified = registered.verified, "registered");
                session.link.set_state(ConnectionState::Connected);
                session.dispatcher.emit(PeerEvent::Registered {
                    client_id: registered.client_id,
                    verified: registered.verified,
                });
                if let Some(tx) = first.take() {
                    let _ = tx.send(Ok(()));
                }
                session.requests.renew_presence();
                if let (Some(g), true) = (&session.groups, registered.verified) {
                    g.replenish_later();
                    // Our devices and our contacts' may have changed while we were away.
                    g.devices_changed();
                }
                let reason = conn.await;
                // Only a connection that stayed up for a while proves the server healthy: one
                // that is closed right after each registration keeps backing off and runs into
                // the attempt limit.
                let healthy = registered_at.elapsed() >= defaults::BACKOFF_RESET_AFTER;
                session.inbox.connection_ended();
                tracing::info!(peer = %session.client_id, epoch, reason = %Sanitized(&reason), "connection ended");
                Ok(Ended { reason, healthy })
            }
            Err(e) => Err(e),
        },
    };
    session.link.closed(epoch);
    session.requests.connection_lost(epoch);
    result
}

/// Keeps the peer connected until cancelled or the backoff gives up. Returns the outbound queue's
/// receiver to the link, so a later `connect` reuses what is still queued.
pub(crate) async fn supervise(
    session: Arc<Session>,
    outbound: mpsc::Receiver<String>,
    cancel: CancellationToken,
    first: FirstTx,
) {
    let (received_tx, received_rx) = mpsc::channel(defaults::RECEIVE_QUEUE);
    let worker_cancel = cancel.child_token();
    let worker = tokio::spawn(inbox::worker(
        Arc::clone(&session.inbox),
        received_rx,
        worker_cancel.clone(),
    ));
    let group_worker = session
        .groups
        .as_ref()
        .map(|g| tokio::spawn(Arc::clone(g).worker(worker_cancel.clone())));
    let mut carry = Carry {
        first: Some(first),
        outbound,
    };
    let attempt = {
        let session = Arc::clone(&session);
        let cancel = cancel.clone();
        attempt_fn(move |carry| {
            let session = Arc::clone(&session);
            let received = received_tx.clone();
            let cancel = cancel.clone();
            Box::pin(async move { connect_once(&session, carry, &received, &cancel).await })
        })
    };
    keep_connected(
        &session.policy,
        &session.link,
        &session.dispatcher,
        &session.client_id,
        &cancel,
        &mut carry,
        attempt,
    )
    .await;
    worker_cancel.cancel();
    let _ = worker.await;
    if let Some(w) = group_worker {
        let _ = w.await;
    }
    session.link.return_outbound(carry.outbound);
    // Last: once `Disconnected` is published the supervisor is done, so a `connect` called right
    // away (from an event handler or subscriber) waits for this task instead of refusing.
    session.link.set_state(ConnectionState::Disconnected);
}

/// Pins down the higher-ranked type of an attempt closure (inference cannot).
fn attempt_fn<A>(a: A) -> A
where
    A: for<'a> FnMut(&'a mut Carry) -> AttemptFuture<'a>,
{
    a
}

/// The supervisor loop: runs `attempt` until cancelled, replaced, refused for good, or the
/// backoff gives up; publishes the state on `link` and failures as events.
pub(crate) async fn keep_connected<A>(
    policy: &Policy,
    link: &Link,
    dispatcher: &Dispatcher,
    client_id: &ClientId,
    cancel: &CancellationToken,
    carry: &mut Carry,
    mut attempt: A,
) where
    A: for<'a> FnMut(&'a mut Carry) -> AttemptFuture<'a>,
{
    let mut failures: u32 = 0;
    link.set_state(ConnectionState::Connecting);
    loop {
        let outcome = tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            o = attempt(carry) => o,
        };
        if carry.first.is_some() {
            // The first connection never registered: report to `connect` and stop, unless the
            // caller asked to wait for the server and the reason may pass.
            let e = outcome.err().unwrap_or(PeerError::NotConnected);
            let retry = policy.retry_first_connect
                && !e.is_permanent()
                && !cancel.is_cancelled()
                && policy.backoff.allows(failures.saturating_add(1));
            if !retry {
                if let Some(tx) = carry.first.take() {
                    let _ = tx.send(Err(e));
                }
                break;
            }
            tracing::info!(peer = %client_id, error = %Sanitized(&e), "server not reachable yet");
        } else {
            match outcome {
                Ok(Ended {
                    reason: EndReason::Cancelled,
                    ..
                }) => break,
                Ok(Ended {
                    reason: EndReason::DeviceRemoved,
                    ..
                })
                | Err(PeerError::DeviceRemoved) => {
                    // The id removed this device: the server has dropped its mailbox and will
                    // refuse it from now on. Final, told to the app as for `Replaced`.
                    tracing::warn!(peer = %client_id, "this device was removed from its id; not reconnecting");
                    cancel.cancel();
                    dispatcher.emit(PeerEvent::Error(PeerError::DeviceRemoved));
                    break;
                }
                Ok(Ended {
                    reason: EndReason::Replaced,
                    ..
                })
                | Err(PeerError::Replaced) => {
                    // Reconnecting would take the id back from the other instance, which would
                    // then do the same: stop, tell the app, and wait for an explicit `connect`.
                    tracing::warn!(peer = %client_id, "replaced by another connection of this identity; not reconnecting");
                    // Cancelled before the app hears it, so a `connect` made in answer to the
                    // event waits for this supervisor to return instead of `AlreadyConnected`.
                    cancel.cancel();
                    dispatcher.emit(PeerEvent::Error(PeerError::Replaced));
                    break;
                }
                Ok(ended) => {
                    if ended.healthy {
                        failures = 0;
                    }
                }
                Err(e) => {
                    tracing::info!(peer = %client_id, error = %Sanitized(&e), "reconnect attempt failed");
                }
            }
        }
        if cancel.is_cancelled() {
            break;
        }
        failures += 1;
        let backoff = &policy.backoff;
        if !backoff.allows(failures) {
            // As for `Replaced`: a `connect` in answer to the event must not see a live supervisor.
            cancel.cancel();
            if backoff.enabled {
                dispatcher.emit(PeerEvent::Error(PeerError::ReconnectFailed {
                    attempts: failures - 1,
                }));
            }
            break;
        }
        link.set_state(ConnectionState::Reconnecting { attempt: failures });
        let delay = backoff.delay(failures);
        tracing::info!(peer = %client_id, attempt = failures, ?delay, "reconnecting");
        tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            () = sleep(delay) => {}
        }
    }
}

/// The verified registration on connection `epoch`: `challenge`, then `register` with the
/// signed statement. Retries reuse the request id, so a slow success of an earlier attempt is
/// taken as the answer instead of colliding with the retry.
///
/// A linked device whose device list the server already holds a newer one of
/// (`STALE_DEVICE_LIST`) registers again without it; one the server does not know as a device
/// of its id (`UNKNOWN_DEVICE`: removed while it was offline) gets [`PeerError::DeviceRemoved`].
async fn register(session: &Session, epoch: u64) -> Result<Registered, PeerError> {
    match register_once(session, epoch).await {
        Err(PeerError::Server {
            error_type: ErrorType::StaleDeviceList,
            ..
        }) if session.credentials.device().is_some()
            && !session.device_list_sent.swap(true, Ordering::Relaxed) =>
        {
            register_once(session, epoch).await
        }
        other => other,
    }
    .map_err(|e| match e {
        PeerError::Server {
            error_type: ErrorType::UnknownDevice,
            ..
        } if session.credentials.device().is_some() => PeerError::DeviceRemoved,
        e => e,
    })
}

async fn register_once(session: &Session, epoch: u64) -> Result<Registered, PeerError> {
    let lane = Lane::Control(epoch);
    let challenge = session
        .requests
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
    let id = session.client_id.as_str();
    let (kem_pk, statement, signature, key_signature, device) = match &session.credentials {
        Credentials::Primary(identity) => {
            let kem_pk = identity.kem_public_key().as_bytes().to_vec();
            let statement = registration_statement(&nonce, id, &kem_pk)?;
            let signature = identity.identity_key().sign(&statement);
            (
                kem_pk,
                statement,
                signature,
                identity.key_signature().to_vec(),
                None,
            )
        }
        Credentials::Device(d) => {
            let kem_pk = d.kem_public_key.clone();
            let statement =
                device_registration_statement(&nonce, id, d.device_id.as_str(), &kem_pk)?;
            let signature = d.device_key.sign(&statement);
            let with_list = !session.device_list_sent.load(Ordering::Relaxed);
            let part = DevicePart {
                device_id: d.device_id.clone(),
                device_key: B64.encode(d.device_key.public_key().as_bytes()),
                certificate: B64.encode(d.certificate),
                device_list: with_list.then(|| d.device_list.clone()),
            };
            (
                kem_pk,
                statement,
                signature,
                d.key_signature.clone(),
                Some(part),
            )
        }
    };
    let verification = Verification {
        algorithm: "ed25519".into(),
        serialized_public_key: Some(
            B64.encode(session.credentials.identity_public_key().as_bytes()),
        ),
        serialized_message: Some(B64.encode(&statement)),
        serialized_signed_data: Some(B64.encode(signature)),
    };
    let verification = serde_json::value::to_raw_value(&verification)
        .map_err(|e| PeerError::Protocol(e.to_string()))?;
    let register = Register {
        client_id: session.client_id.clone(),
        public_key: PublicKeyField::Bytes(kem_pk),
        verification: Some(verification),
        key_signature: Some(B64.encode(key_signature)),
        device,
        link_relay: session.link_relay,
    };
    let answer = session
        .requests
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
    if r.client_id != session.client_id || !r.success {
        return Err(PeerError::Protocol(format!(
            "registration answered for {} (success: {})",
            r.client_id, r.success
        )));
    }
    session.device_list_sent.store(true, Ordering::Relaxed);
    Ok(r)
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;
    use std::time::Duration;

    use lattice_protocol::ErrorType;

    use super::*;
    use crate::events::record;
    use crate::sync::lock;

    /// What a scripted attempt does.
    #[derive(Debug)]
    enum Step {
        /// Never registers.
        Fail(PeerError),
        /// Registers (answering `connect`), then ends.
        Register { reason: EndReason, healthy: bool },
    }

    fn unreachable() -> PeerError {
        PeerError::Connect {
            url: "ws://test".into(),
            reason: "refused".into(),
        }
    }

    fn policy(retry_first_connect: bool) -> Policy {
        Policy {
            backoff: Backoff {
                base: Duration::from_secs(1),
                factor: 2.0,
                max: Duration::from_secs(8),
                max_attempts: 3,
                jitter: 0.0,
                enabled: true,
            },
            retry_first_connect,
        }
    }

    struct Run {
        first: Result<(), PeerError>,
        attempts: usize,
        states: Vec<ConnectionState>,
        errors: Vec<PeerError>,
        /// For each error event: whether the supervisor's token was cancelled when it was raised.
        cancelled_at_error: Vec<bool>,
        elapsed: Duration,
    }

    async fn drive(policy: Policy, steps: Vec<Step>) -> Run {
        let dispatcher = Dispatcher::new(defaults::EVENT_CAPACITY);
        let events = record(&dispatcher);
        let link = Link::new(ClientId::new("me").unwrap(), 4, Arc::clone(&dispatcher));
        let (first_tx, first_rx) = oneshot::channel();
        let mut carry = Carry {
            first: Some(first_tx),
            outbound: link.take_outbound().unwrap(),
        };
        let steps = Arc::new(Mutex::new(VecDeque::from(steps)));
        let attempts = Arc::new(Mutex::new(0));
        let attempt = {
            let (steps, attempts) = (Arc::clone(&steps), Arc::clone(&attempts));
            attempt_fn(move |carry| {
                *lock(&attempts) += 1;
                let step = lock(&steps).pop_front();
                Box::pin(async move {
                    match step {
                        Some(Step::Fail(e)) => Err(e),
                        Some(Step::Register { reason, healthy }) => {
                            if let Some(tx) = carry.first.take() {
                                let _ = tx.send(Ok(()));
                            }
                            Ok(Ended { reason, healthy })
                        }
                        None => Err(unreachable()),
                    }
                })
            })
        };
        let start = Instant::now();
        let cancel = CancellationToken::new();
        let cancelled_at_error = Arc::new(Mutex::new(Vec::new()));
        {
            let (seen, token) = (Arc::clone(&cancelled_at_error), cancel.clone());
            let _ = dispatcher.add(Arc::new(move |ev: &PeerEvent| {
                if matches!(ev, PeerEvent::Error(_)) {
                    lock(&seen).push(token.is_cancelled());
                }
            }));
        }
        keep_connected(
            &policy,
            &link,
            &dispatcher,
            &ClientId::new("me").unwrap(),
            &cancel,
            &mut carry,
            attempt,
        )
        .await;
        let elapsed = start.elapsed();
        let (mut states, mut errors) = (Vec::new(), Vec::new());
        for e in lock(&events).drain(..) {
            match e {
                PeerEvent::ConnectionState(s) => states.push(s),
                PeerEvent::Error(e) => errors.push(e),
                _ => {}
            }
        }
        let attempts = *lock(&attempts);
        let cancelled_at_error = lock(&cancelled_at_error).clone();
        Run {
            first: first_rx.await.unwrap_or(Err(PeerError::NotConnected)),
            attempts,
            states,
            errors,
            cancelled_at_error,
            elapsed,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_first_connection_is_reported_at_once_by_default() {
        let run = drive(policy(false), vec![Step::Fail(unreachable())]).await;
        assert!(matches!(run.first, Err(PeerError::Connect { .. })));
        assert_eq!(run.attempts, 1);
        assert_eq!(run.states, [ConnectionState::Connecting]);
        assert_eq!(run.elapsed, Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_connection_is_retried_with_backoff_when_the_policy_says_so() {
        let steps = vec![
            Step::Fail(unreachable()),
            Step::Fail(unreachable()),
            Step::Register {
                reason: EndReason::Cancelled,
                healthy: false,
            },
        ];
        let run = drive(policy(true), steps).await;
        assert!(run.first.is_ok());
        assert_eq!(run.attempts, 3);
        assert_eq!(
            run.states,
            [
                ConnectionState::Connecting,
                ConnectionState::Reconnecting { attempt: 1 },
                ConnectionState::Reconnecting { attempt: 2 },
            ]
        );
        assert_eq!(
            run.elapsed,
            Duration::from_secs(1 + 2),
            "base, then doubled"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_permanent_first_failure_is_not_retried_and_the_backoff_limit_holds() {
        let taken = PeerError::Server {
            error_type: ErrorType::ClientIdTaken,
            details: String::new(),
            request_id: None,
        };
        let run = drive(policy(true), vec![Step::Fail(taken)]).await;
        assert!(matches!(run.first, Err(PeerError::Server { .. })));
        assert_eq!(run.attempts, 1);
        // Never reachable: retried up to the attempt limit, then the last error is returned.
        let steps = (0..10).map(|_| Step::Fail(unreachable())).collect();
        let run = drive(policy(true), steps).await;
        assert!(matches!(run.first, Err(PeerError::Connect { .. })));
        assert_eq!(run.attempts, 4, "one try and max_attempts retries");
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_loss_it_reconnects_and_gives_up_at_the_limit_unless_the_link_was_healthy() {
        let lost = |healthy| Step::Register {
            reason: EndReason::Closed("bye".into()),
            healthy,
        };
        // Short-lived connections count as failures: 1 + 3 attempts, then ReconnectFailed.
        let steps = vec![lost(false), lost(false), lost(false), lost(false)];
        let run = drive(policy(false), steps).await;
        assert!(run.first.is_ok());
        assert_eq!(run.attempts, 4);
        assert!(matches!(
            run.errors.as_slice(),
            [PeerError::ReconnectFailed { attempts: 3 }]
        ));
        assert_eq!(run.cancelled_at_error, [true]);
        assert_eq!(run.elapsed, Duration::from_secs(1 + 2 + 4));
        // A connection that stayed up long enough resets the count.
        let steps = vec![
            lost(false),
            lost(false),
            lost(true),
            lost(false),
            lost(false),
            lost(false),
        ];
        let run = drive(policy(false), steps).await;
        assert_eq!(run.attempts, 6);
        assert!(matches!(
            run.errors.as_slice(),
            [PeerError::ReconnectFailed { attempts: 3 }]
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_replaced_connection_is_not_reconnected() {
        let steps = vec![Step::Register {
            reason: EndReason::Replaced,
            healthy: true,
        }];
        let run = drive(policy(false), steps).await;
        assert!(run.first.is_ok());
        assert_eq!(run.attempts, 1);
        assert!(matches!(run.errors.as_slice(), [PeerError::Replaced]));
        // The app may answer the event with `connect`: the supervisor must already count as
        // finishing then, not as live (`AlreadyConnected`).
        assert_eq!(run.cancelled_at_error, [true]);
    }
}
