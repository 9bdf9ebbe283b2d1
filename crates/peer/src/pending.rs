//! Request/response matching: [`WaitOptions`] and the table of waiters.
//!
//! A waiter is found by the answer's `requestId` first (our server copies it into every direct
//! answer, `error` included); a frame without one (an original server) goes to the oldest waiter
//! expecting that type whose filter accepts it. An `error` frame answers only the request whose
//! `requestId` it carries; an `error` without one cannot be attributed and disturbs no waiter.
//! Every waiter is removed when its future ends, whatever the path (answer, error, timeout,
//! connection loss, or the caller dropping the future).

use std::collections::VecDeque;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lattice_protocol::{ErrorPayload, Frame, RequestId, ServerFrame};
use tokio::sync::mpsc;

use lattice_protocol::FrameBody as _;

use crate::sync::lock;

/// Accepts or refuses a candidate answer (for frames matched by type).
pub type Filter = Arc<dyn Fn(&ServerFrame) -> bool + Send + Sync>;
/// Decides what an `error` answer means for a request.
pub type ErrorHandler = Arc<dyn Fn(&ErrorPayload) -> ErrorAction + Send + Sync>;

/// What to do with an `error` answer, as decided by [`WaitOptions::error_handler`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorAction {
    /// Fail the request with [`crate::PeerError::Server`] (the default without a handler).
    Fail,
    /// Send the request again now, if retries are left (otherwise fail).
    Retry,
    /// Ignore this error and keep waiting for the answer.
    Ignore,
}

/// Options of [`crate::MessagingPeer::send_to_server_and_wait`].
///
/// ```
/// use std::time::Duration;
/// use lattice_peer::{ErrorAction, WaitOptions};
/// use lattice_protocol::{ErrorType, ServerFrame};
///
/// let opts = WaitOptions::default()
///     .timeout(Duration::from_secs(2))
///     .retries(3)
///     .filter(|f| matches!(f, ServerFrame::PublicKey(k) if k.peer_id.as_str() == "bob"))
///     .error_handler(|e| if e.error_type == ErrorType::RateLimited { ErrorAction::Retry } else { ErrorAction::Fail });
/// assert_eq!(opts.retry_count, 3);
/// ```
#[derive(Clone, Default)]
pub struct WaitOptions {
    /// Per-attempt timeout; `None` uses the peer's configured request timeout.
    pub timeout: Option<Duration>,
    /// How many times to send again after a timeout (or an error the handler wants retried).
    /// Every attempt reuses the same `requestId`, so a late answer to an earlier attempt
    /// resolves the request and an answer is never mistaken for another request's.
    pub retry_count: u32,
    /// Decides what an `error` answer means; without one, an error fails the request.
    pub error_handler: Option<ErrorHandler>,
    /// Accepts or refuses candidate answers of the expected type. It runs on the connection's task
    /// with the request table locked: keep it a quick check of the frame, and do not call into the
    /// peer from it. A filter that panics refuses the frame.
    pub filter: Option<Filter>,
}

impl fmt::Debug for WaitOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WaitOptions")
            .field("timeout", &self.timeout)
            .field("retry_count", &self.retry_count)
            .field("error_handler", &self.error_handler.is_some())
            .field("filter", &self.filter.is_some())
            .finish()
    }
}

impl WaitOptions {
    /// Sets the per-attempt timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
    /// Sets the number of retries.
    pub fn retries(mut self, retry_count: u32) -> Self {
        self.retry_count = retry_count;
        self
    }
    /// Sets the filter.
    pub fn filter(mut self, f: impl Fn(&ServerFrame) -> bool + Send + Sync + 'static) -> Self {
        self.filter = Some(Arc::new(f));
        self
    }
    /// Sets the error handler.
    pub fn error_handler(
        mut self,
        f: impl Fn(&ErrorPayload) -> ErrorAction + Send + Sync + 'static,
    ) -> Self {
        self.error_handler = Some(Arc::new(f));
        self
    }
}

/// What the reader hands a waiter.
#[derive(Debug)]
pub(crate) enum Reply {
    /// The answer (its type is checked by the waiter).
    Frame(ServerFrame),
    /// An `error` carrying the waiter's request id.
    Error(ErrorPayload),
    /// The connection the request went out on closed.
    ConnectionLost,
}

struct Waiter {
    id: u64,
    request_id: RequestId,
    expected: &'static str,
    filter: Option<Filter>,
    /// The connection the request went (or will go) out on; `None` while queued during an outage.
    epoch: Option<u64>,
    tx: mpsc::Sender<Reply>,
}

/// Request ids answered recently: a second answer to a retried request (e.g. `CLIENT_ID_TAKEN` for
/// a retry of a `register` that already succeeded) is dropped quietly instead of being reported.
const RECENT_DONE: usize = 64;
/// Replies buffered per waiter: an answer plus a few errors. The last slot is kept for the final
/// reply (the answer or `ConnectionLost`): errors beyond the rest are dropped, so a burst of them
/// can never crowd out the answer of a waiter that is already off the table.
const REPLY_BUFFER: usize = 8;

#[derive(Default)]
struct Table {
    next_id: u64,
    waiters: Vec<Waiter>,
    recent_done: VecDeque<RequestId>,
}

/// The waiters of one peer.
#[derive(Default, Clone)]
pub(crate) struct Pending {
    // std Mutex: every section is a short scan of a small vector, never held across an await.
    table: Arc<Mutex<Table>>,
}

impl fmt::Debug for Pending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = lock(&self.table).waiters.len();
        f.debug_struct("Pending").field("waiters", &n).finish()
    }
}

/// Removes its waiter when dropped: the waiter is cleaned up on every path.
pub(crate) struct WaiterGuard {
    pending: Pending,
    id: u64,
    pub(crate) rx: mpsc::Receiver<Reply>,
}

impl Drop for WaiterGuard {
    fn drop(&mut self) {
        self.pending.remove(self.id, true);
    }
}

/// What [`Pending::route`] did with a frame.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Routed {
    /// A waiter took it.
    Taken,
    /// It carries a request id answered recently: drop it quietly.
    Stale,
    /// Nobody waits for it.
    Unclaimed,
}

impl Pending {
    /// Registers a waiter for an answer of type `expected`.
    pub(crate) fn register(
        &self,
        request_id: RequestId,
        expected: &'static str,
        filter: Option<Filter>,
        epoch: Option<u64>,
    ) -> WaiterGuard {
        let (tx, rx) = mpsc::channel(REPLY_BUFFER);
        let id = {
            let mut t = lock(&self.table);
            t.next_id += 1;
            let id = t.next_id;
            t.waiters.push(Waiter {
                id,
                request_id,
                expected,
                filter,
                epoch,
                tx,
            });
            id
        };
        WaiterGuard {
            pending: self.clone(),
            id,
            rx,
        }
    }

    fn remove(&self, id: u64, remember: bool) {
        let mut t = lock(&self.table);
        if let Some(pos) = t.waiters.iter().position(|w| w.id == id) {
            let w = t.waiters.remove(pos);
            if remember {
                t.recent_done.push_back(w.request_id);
                if t.recent_done.len() > RECENT_DONE {
                    t.recent_done.pop_front();
                }
            }
        }
    }

    /// Offers an incoming frame to the waiters.
    pub(crate) fn route(&self, frame: &Frame<ServerFrame>) -> Routed {
        let mut t = lock(&self.table);
        let ty = frame.body.type_name();
        if let Some(rid) = &frame.request_id {
            let Some(pos) = t.waiters.iter().position(|w| &w.request_id == rid) else {
                return if t.recent_done.contains(rid) {
                    Routed::Stale
                } else {
                    Routed::Unclaimed
                };
            };
            if let ServerFrame::Error(e) = &frame.body {
                // The waiter decides (its error handler may ignore it or retry); it stays registered.
                let tx = &t.waiters[pos].tx;
                if tx.capacity() > 1 {
                    let _ = tx.try_send(Reply::Error(e.clone()));
                } else {
                    tracing::debug!(
                        "error reply dropped: the waiter has not read the earlier ones"
                    );
                }
            } else {
                let w = t.waiters.remove(pos);
                let _ = w.tx.try_send(Reply::Frame(frame.body.clone()));
                t.recent_done.push_back(w.request_id);
                if t.recent_done.len() > RECENT_DONE {
                    t.recent_done.pop_front();
                }
            }
            return Routed::Taken;
        }
        if matches!(frame.body, ServerFrame::Error(_)) {
            return Routed::Unclaimed;
        }
        let pos = t.waiters.iter().position(|w| {
            w.expected == ty && w.filter.as_ref().is_none_or(|f| accepts(f, &frame.body))
        });
        match pos {
            Some(pos) => {
                let w = t.waiters.remove(pos);
                let _ = w.tx.try_send(Reply::Frame(frame.body.clone()));
                Routed::Taken
            }
            None => Routed::Unclaimed,
        }
    }

    /// Fails the waiters of connection `epoch`: their answers will never come.
    pub(crate) fn connection_lost(&self, epoch: u64) {
        lock(&self.table).waiters.retain(|w| {
            if w.epoch == Some(epoch) {
                let _ = w.tx.try_send(Reply::ConnectionLost);
                false
            } else {
                true
            }
        });
    }

    /// Requests queued during an outage go out on connection `epoch` now.
    pub(crate) fn adopt_queued(&self, epoch: u64) {
        for w in lock(&self.table)
            .waiters
            .iter_mut()
            .filter(|w| w.epoch.is_none())
        {
            w.epoch = Some(epoch);
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        lock(&self.table).waiters.len()
    }
}

/// Runs a caller's filter on a frame from the network. A panicking filter refuses the frame: it
/// runs under the table's lock on the connection's task, which it must not poison or take down.
fn accepts(filter: &Filter, frame: &ServerFrame) -> bool {
    catch_unwind(AssertUnwindSafe(|| filter(frame))).unwrap_or_else(|_| {
        tracing::error!("a request filter panicked; the frame was not taken as its answer");
        false
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use lattice_protocol::{ClientId, ErrorType, PeerPresence, Peers};

    fn rid(s: &str) -> RequestId {
        RequestId::new(s).unwrap()
    }
    fn peers(req: Option<&str>) -> Frame<ServerFrame> {
        Frame::with_request_id(ServerFrame::Peers(Peers::default()), req.map(rid))
    }
    fn error(req: Option<&str>) -> Frame<ServerFrame> {
        let at = std::time::SystemTime::now();
        let body = ServerFrame::error(ErrorType::PeerNotFound, "x", at, req.map(rid));
        Frame::with_request_id(body, req.map(rid))
    }

    #[test]
    fn request_id_first_then_type_and_filter() {
        let p = Pending::default();
        let mut a = p.register(rid("a"), "discover", None, None);
        let mut b = p.register(rid("b"), "discover", None, None);
        // Answer to b by request id, even though a is older.
        assert_eq!(p.route(&peers(Some("b"))), Routed::Taken);
        assert!(matches!(b.rx.try_recv(), Ok(Reply::Frame(_))));
        assert!(a.rx.try_recv().is_err());
        // Unrelated frames do not disturb a.
        let presence = Frame::new(ServerFrame::PeerConnected(PeerPresence {
            peer_id: ClientId::new("z").unwrap(),
        }));
        assert_eq!(p.route(&presence), Routed::Unclaimed);
        assert!(a.rx.try_recv().is_err());
        // A frame without request id goes to the oldest matching waiter.
        assert_eq!(p.route(&peers(None)), Routed::Taken);
        assert!(matches!(a.rx.try_recv(), Ok(Reply::Frame(_))));
        drop(a);
        drop(b);
        assert_eq!(p.len(), 0);
    }

    #[test]
    fn errors_answer_only_their_request_and_late_answers_are_stale() {
        let p = Pending::default();
        let mut a = p.register(rid("a"), "discover", None, None);
        let mut b = p.register(rid("b"), "discover", None, None);
        assert_eq!(p.route(&error(None)), Routed::Unclaimed);
        assert_eq!(p.route(&error(Some("b"))), Routed::Taken);
        assert!(matches!(b.rx.try_recv(), Ok(Reply::Error(_))));
        assert!(a.rx.try_recv().is_err());
        drop(b);
        assert_eq!(p.route(&error(Some("b"))), Routed::Stale);
        assert_eq!(p.route(&error(Some("nobody"))), Routed::Unclaimed);
        assert_eq!(p.len(), 1);
        drop(a);
    }

    #[test]
    fn a_flood_of_errors_never_crowds_out_the_answer() {
        let p = Pending::default();
        let mut a = p.register(rid("a"), "discover", None, None);
        for _ in 0..3 * REPLY_BUFFER {
            assert_eq!(p.route(&error(Some("a"))), Routed::Taken);
        }
        assert_eq!(p.route(&peers(Some("a"))), Routed::Taken);
        let mut last = None;
        while let Ok(r) = a.rx.try_recv() {
            last = Some(r);
        }
        assert!(matches!(last, Some(Reply::Frame(_))), "{last:?}");
        // Same for a lost connection.
        let mut b = p.register(rid("b"), "discover", None, Some(7));
        for _ in 0..3 * REPLY_BUFFER {
            p.route(&error(Some("b")));
        }
        p.connection_lost(7);
        let mut last = None;
        while let Ok(r) = b.rx.try_recv() {
            last = Some(r);
        }
        assert!(matches!(last, Some(Reply::ConnectionLost)), "{last:?}");
    }

    #[test]
    fn a_panicking_filter_refuses_the_frame_and_breaks_nothing() {
        let p = Pending::default();
        let mut bad = p.register(
            rid("bad"),
            "discover",
            Some(Arc::new(|_| panic!("filter bug"))),
            None,
        );
        let mut good = p.register(rid("good"), "discover", None, None);
        assert_eq!(p.route(&peers(None)), Routed::Taken);
        assert!(bad.rx.try_recv().is_err());
        assert!(matches!(good.rx.try_recv(), Ok(Reply::Frame(_))));
        // The table still works.
        assert_eq!(p.route(&peers(Some("bad"))), Routed::Taken);
        assert!(matches!(bad.rx.try_recv(), Ok(Reply::Frame(_))));
        drop((bad, good));
        assert_eq!(p.len(), 0);
    }

    #[test]
    fn filters_and_connection_loss() {
        let p = Pending::default();
        let mut a = p.register(rid("a"), "discover", Some(Arc::new(|_| false)), Some(1));
        let mut q = p.register(rid("q"), "discover", None, None);
        assert_eq!(p.route(&peers(None)), Routed::Taken);
        assert!(a.rx.try_recv().is_err(), "filtered out");
        assert!(matches!(q.rx.try_recv(), Ok(Reply::Frame(_))));
        let mut q2 = p.register(rid("q2"), "discover", None, None);
        p.connection_lost(1);
        assert!(matches!(a.rx.try_recv(), Ok(Reply::ConnectionLost)));
        assert!(q2.rx.try_recv().is_err(), "queued request survives");
        p.adopt_queued(2);
        p.connection_lost(2);
        assert!(matches!(q2.rx.try_recv(), Ok(Reply::ConnectionLost)));
        assert_eq!(p.len(), 0);
    }
}
