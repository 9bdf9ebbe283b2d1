//! The link: what senders need to know about the current connection, and the queues frames go
//! out through.
//!
//! Each socket gets an *epoch*; the registration handshake of epoch `n` goes out on its control
//! lane at once ([`Lane::Control`]), everything else on the normal lane ([`Lane::Normal`]), a
//! bounded queue that outlives connections: frames queued while disconnected go out after the
//! next registration. The link also publishes the [`ConnectionState`] (a `watch` plus the event),
//! and [`Keepalive`] decides when a connection pings and when a silent one is dead.
//!
//! It imports no other component: the requests, the outbox, the inbox and the connection use it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lattice_protocol::limits::max_client_frame_bytes;
use lattice_protocol::{encode, Ack, ClientFrame, ClientId, Frame, FrameBody as _, MessageId};
use tokio::sync::{mpsc, watch};
use tokio::time::{interval_at, Instant, Interval, MissedTickBehavior};

use crate::events::{ConnectionState, Dispatcher, PeerEvent};
use crate::sanitize::Sanitized;
use crate::sync::lock;
use crate::{defaults, PeerError};

/// Which queue a frame goes out through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lane {
    /// The registration handshake of connection `epoch`: written at once.
    Control(u64),
    /// Everything else: written once registered; queued while disconnected.
    Normal,
}

/// The current socket, as far as senders need to know.
#[derive(Debug, Default)]
struct Socket {
    epoch: u64,
    control: Option<mpsc::Sender<String>>,
    registered: bool,
}

/// The connection as senders see it. Shared (`Arc`) by the handle and the tasks.
#[derive(Debug)]
pub(crate) struct Link {
    client_id: ClientId,
    // std Mutex: a few field reads or writes per section, never held across an await.
    socket: Mutex<Socket>,
    outbound_tx: mpsc::Sender<String>,
    outbound_capacity: usize,
    /// The receiving end of the normal lane while no connection holds it (std Mutex: take/put).
    parked: Mutex<Option<mpsc::Receiver<String>>>,
    state: watch::Sender<ConnectionState>,
    dispatcher: Arc<Dispatcher>,
    /// Whether the server verified our identity at the last registration.
    verified: AtomicBool,
}

impl Link {
    /// A link with a normal lane of `outbound_capacity` frames (at least one).
    pub(crate) fn new(
        client_id: ClientId,
        outbound_capacity: usize,
        dispatcher: Arc<Dispatcher>,
    ) -> Self {
        let (outbound_tx, outbound_rx) = mpsc::channel(outbound_capacity.max(1));
        let (state, _) = watch::channel(ConnectionState::Disconnected);
        Self {
            client_id,
            socket: Mutex::new(Socket::default()),
            outbound_tx,
            outbound_capacity,
            parked: Mutex::new(Some(outbound_rx)),
            state,
            dispatcher,
            verified: AtomicBool::new(false),
        }
    }

    /// The current state.
    pub(crate) fn state(&self) -> ConnectionState {
        *self.state.borrow()
    }

    /// A receiver of the state.
    pub(crate) fn watch_state(&self) -> watch::Receiver<ConnectionState> {
        self.state.subscribe()
    }

    /// Publishes `state` (and raises the event) if it changed.
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

    /// Takes the receiving end of the normal lane (for a supervisor); `None` if one holds it.
    pub(crate) fn take_outbound(&self) -> Option<mpsc::Receiver<String>> {
        lock(&self.parked).take()
    }

    /// Puts the receiving end back, with whatever is still queued in it.
    pub(crate) fn return_outbound(&self, rx: mpsc::Receiver<String>) {
        *lock(&self.parked) = Some(rx);
    }

    /// A new socket is open: returns its epoch.
    pub(crate) fn opened(&self, control: mpsc::Sender<String>) -> u64 {
        let mut s = lock(&self.socket);
        s.epoch += 1;
        s.control = Some(control);
        s.registered = false;
        s.epoch
    }

    /// The socket of `epoch` registered (`verified` as the server says).
    pub(crate) fn registered(&self, epoch: u64, verified: bool) {
        let mut s = lock(&self.socket);
        if s.epoch == epoch {
            s.registered = true;
            self.verified.store(verified, Ordering::Relaxed);
        }
    }

    /// The socket of `epoch` closed.
    pub(crate) fn closed(&self, epoch: u64) {
        let mut s = lock(&self.socket);
        if s.epoch == epoch {
            s.control = None;
            s.registered = false;
        }
    }

    /// The epoch of the registered socket, if one is.
    pub(crate) fn registered_epoch(&self) -> Option<u64> {
        let s = lock(&self.socket);
        s.registered.then_some(s.epoch)
    }

    /// Whether the server verified our identity at the last registration.
    pub(crate) fn is_verified(&self) -> bool {
        self.verified.load(Ordering::Relaxed)
    }

    /// Encodes `frame` and queues it on `lane`.
    ///
    /// # Errors
    /// [`PeerError::MessageTooLarge`], and those of [`Link::send_text`].
    pub(crate) fn send_frame(
        &self,
        lane: Lane,
        frame: Frame<ClientFrame>,
    ) -> Result<(), PeerError> {
        let frame_type = frame.body.type_name();
        let text = encode(&frame);
        check_size(&text, frame_type)?;
        self.send_text(lane, text)
    }

    /// Queues an encoded frame on `lane`.
    ///
    /// # Errors
    /// [`PeerError::QueueFull`] when the normal lane is full; [`PeerError::NotConnected`] when the
    /// control lane's socket is gone.
    pub(crate) fn send_text(&self, lane: Lane, text: String) -> Result<(), PeerError> {
        match lane {
            Lane::Normal => self.outbound_tx.try_send(text).map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => PeerError::QueueFull {
                    capacity: self.outbound_capacity,
                },
                mpsc::error::TrySendError::Closed(_) => PeerError::NotConnected,
            }),
            Lane::Control(epoch) => {
                let control = {
                    let s = lock(&self.socket);
                    (s.epoch == epoch).then(|| s.control.clone()).flatten()
                }
                .ok_or(PeerError::NotConnected)?;
                control.try_send(text).map_err(|_| PeerError::NotConnected)
            }
        }
    }

    /// Queues an `ack` for a processed message, naming its sender: ids are chosen by senders,
    /// so only (sender, messageId) names one message in the server's mailbox.
    pub(crate) fn ack(&self, from: &ClientId, message_id: &MessageId) {
        let frame = Frame::new(ClientFrame::Ack(Ack {
            message_id: message_id.clone(),
            from_id: Some(from.clone()),
        }));
        if let Err(e) = self.send_frame(Lane::Normal, frame) {
            tracing::debug!(peer = %self.client_id, error = %Sanitized(&e), "ack not sent");
        }
    }
}

/// Refuses a frame the server would refuse for its size: the limit of its type
/// ([`max_client_frame_bytes`]: the ordinary cap, or the larger one of `group_commit`).
pub(crate) fn check_size(text: &str, frame_type: &str) -> Result<(), PeerError> {
    let max = max_client_frame_bytes(frame_type);
    if text.len() > max {
        return Err(PeerError::MessageTooLarge {
            size: text.len(),
            max,
        });
    }
    Ok(())
}

/// What [`Keepalive::next`] asks the connection to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Beat {
    /// Send a ping now.
    Ping,
    /// Nothing arrived within the pong timeout after a ping: the connection is dead.
    Dead,
}

/// Keepalive of one connection: a ping every `interval` while none is unanswered, and death when
/// no frame at all arrives within `pong_timeout` of a ping (any frame proves the link alive).
#[derive(Debug)]
pub(crate) struct Keepalive {
    ping: Interval,
    pong_timeout: Duration,
    pong_deadline: Option<Instant>,
}

impl Keepalive {
    pub(crate) fn new(interval: Duration, pong_timeout: Duration) -> Self {
        // `interval_at` panics on a zero period.
        let every = interval.max(Duration::from_millis(1));
        let mut ping = interval_at(defaults::deadline_after(every), every);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self {
            ping,
            pong_timeout,
            pong_deadline: None,
        }
    }

    /// A frame arrived: the connection is alive.
    pub(crate) fn alive(&mut self) {
        self.pong_deadline = None;
    }

    /// Waits for the next thing to do. Cancel-safe (used in `select!`).
    pub(crate) async fn next(&mut self) -> Beat {
        match self.pong_deadline {
            Some(deadline) => {
                tokio::time::sleep_until(deadline).await;
                Beat::Dead
            }
            None => {
                self.ping.tick().await;
                self.pong_deadline = Some(defaults::deadline_after(self.pong_timeout));
                Beat::Ping
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lattice_protocol::limits::MAX_FRAME_BYTES;

    fn link(capacity: usize) -> Link {
        Link::new(
            ClientId::new("me").unwrap(),
            capacity,
            Dispatcher::new(defaults::EVENT_CAPACITY),
        )
    }

    #[test]
    fn epochs_grow_and_a_stale_epoch_changes_nothing() {
        let l = link(4);
        let (tx, mut rx) = mpsc::channel(4);
        let one = l.opened(tx.clone());
        assert_eq!(one, 1);
        assert_eq!(l.registered_epoch(), None);
        l.registered(one, true);
        assert_eq!(l.registered_epoch(), Some(1));
        assert!(l.is_verified());
        let two = l.opened(tx);
        assert_eq!(two, 2);
        assert_eq!(
            l.registered_epoch(),
            None,
            "a new socket starts unregistered"
        );
        // Epoch 1's registration or close comes late: it does not touch epoch 2.
        l.registered(one, false);
        l.closed(one);
        assert!(l.is_verified());
        l.send_text(Lane::Control(two), "hello".into()).unwrap();
        assert_eq!(rx.try_recv().unwrap(), "hello");
        assert!(matches!(
            l.send_text(Lane::Control(one), "stale".into()),
            Err(PeerError::NotConnected)
        ));
        l.closed(two);
        assert!(matches!(
            l.send_text(Lane::Control(two), "gone".into()),
            Err(PeerError::NotConnected)
        ));
    }

    #[test]
    fn the_normal_lane_is_bounded_and_outlives_connections() {
        let l = link(2);
        let mut rx = l.take_outbound().unwrap();
        assert!(l.take_outbound().is_none(), "one holder at a time");
        l.send_text(Lane::Normal, "a".into()).unwrap();
        l.send_text(Lane::Normal, "b".into()).unwrap();
        assert!(matches!(
            l.send_text(Lane::Normal, "c".into()),
            Err(PeerError::QueueFull { capacity: 2 })
        ));
        assert_eq!(rx.try_recv().unwrap(), "a");
        l.return_outbound(rx);
        let mut rx = l.take_outbound().unwrap();
        assert_eq!(rx.try_recv().unwrap(), "b", "what was queued stays queued");
    }

    #[test]
    fn an_ack_names_the_sender_and_oversized_frames_are_refused() {
        let l = link(4);
        let mut rx = l.take_outbound().unwrap();
        l.ack(
            &ClientId::new("bob").unwrap(),
            &MessageId::new("m1").unwrap(),
        );
        let text = rx.try_recv().unwrap();
        assert!(
            text.contains("\"ack\"") && text.contains("\"bob\"") && text.contains("\"m1\""),
            "{text}"
        );
        assert!(matches!(
            check_size(&"x".repeat(MAX_FRAME_BYTES + 1), "message"),
            Err(PeerError::MessageTooLarge { .. })
        ));
        // a group_commit (a big group's Commit + Welcome) has its own, larger cap
        let max = lattice_protocol::limits::MAX_GROUP_COMMIT_FRAME_BYTES;
        assert!(check_size(&"x".repeat(MAX_FRAME_BYTES + 1), "group_commit").is_ok());
        assert!(matches!(
            check_size(&"x".repeat(max + 1), "group_commit"),
            Err(PeerError::MessageTooLarge { max: m, .. }) if m == max
        ));
    }

    #[test]
    fn state_changes_are_published_once() {
        let l = link(1);
        let events = crate::events::record(&l.dispatcher);
        let watch = l.watch_state();
        l.set_state(ConnectionState::Connecting);
        l.set_state(ConnectionState::Connecting);
        l.set_state(ConnectionState::Connected);
        assert_eq!(*watch.borrow(), ConnectionState::Connected);
        let seen: Vec<_> = lock(&events)
            .iter()
            .filter_map(|e| match e {
                PeerEvent::ConnectionState(s) => Some(*s),
                _ => None,
            })
            .collect();
        assert_eq!(
            seen,
            [ConnectionState::Connecting, ConnectionState::Connected]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn keepalive_pings_each_interval_and_dies_without_an_answer() {
        let every = Duration::from_secs(20);
        let pong = Duration::from_secs(10);
        let start = Instant::now();
        let mut k = Keepalive::new(every, pong);
        assert_eq!(k.next().await, Beat::Ping);
        assert_eq!(start.elapsed(), every);
        // Answered: the next ping comes one interval after the first.
        k.alive();
        assert_eq!(k.next().await, Beat::Ping);
        assert_eq!(start.elapsed(), 2 * every);
        // Unanswered: dead after the pong timeout, with no ping in between.
        assert_eq!(k.next().await, Beat::Dead);
        assert_eq!(start.elapsed(), 2 * every + pong);
    }

    #[tokio::test(start_paused = true)]
    async fn any_frame_before_the_pong_timeout_keeps_the_connection() {
        let mut k = Keepalive::new(Duration::from_secs(1), Duration::from_secs(5));
        assert_eq!(k.next().await, Beat::Ping);
        let next = tokio::time::timeout(Duration::from_secs(3), k.next()).await;
        assert!(next.is_err(), "still waiting for the pong");
        k.alive();
        assert_eq!(k.next().await, Beat::Ping, "alive again: pinging, not dead");
    }
}
