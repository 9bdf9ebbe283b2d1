//! Requests to the server: fresh request ids (and the memory of those sent), sending with
//! per-attempt timeouts and retries, and matching the answers through the pending table
//! ([`crate::pending`]).
//!
//! Uses the [`Link`] to send; the router offers it every incoming frame ([`Requests::route`]); the
//! connection tells it when a socket registered or closed, so that requests queued during an
//! outage go out with the next connection and those of a lost one fail at once.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lattice_protocol::{
    encode, ClientFrame, ClientId, Frame, FrameBody as _, RequestId, ServerFrame,
};
use tokio::time::sleep_until;

use crate::events::ConnectionState;
use crate::link::{check_size, Lane, Link};
use crate::pending::{ErrorAction, Pending, Reply, Routed, WaitOptions};
use crate::sanitize::Sanitized;
use crate::sync::lock;
use crate::wire::{new_request_id, server_error, unexpected};
use crate::{defaults, PeerError};

/// Request ids sent recently (at most [`defaults::ISSUED_REQUESTS`], the oldest forgotten first).
#[derive(Debug, Default)]
struct Issued {
    order: VecDeque<RequestId>,
    set: HashSet<RequestId>,
}

/// The request side of one peer. Shared (`Arc`) by the handle and the tasks.
#[derive(Debug)]
pub(crate) struct Requests {
    client_id: ClientId,
    /// The per-attempt timeout of a request without its own.
    timeout: Duration,
    link: Arc<Link>,
    pending: Pending,
    /// Request ids this client sent recently, so that an `error` naming one it never sent is not
    /// shown as if it were about us. std Mutex: an insert or a lookup, never across an await.
    issued: Mutex<Issued>,
    /// Whether the caller subscribed to presence (`discover`): renewed after every registration.
    presence: AtomicBool,
}

impl Requests {
    pub(crate) fn new(client_id: ClientId, timeout: Duration, link: Arc<Link>) -> Self {
        Self {
            client_id,
            timeout,
            link,
            pending: Pending::default(),
            issued: Mutex::new(Issued::default()),
            presence: AtomicBool::new(false),
        }
    }

    /// A new request id, remembered as sent.
    pub(crate) fn issue(&self) -> RequestId {
        let rid = new_request_id();
        self.record_issued(rid.clone());
        rid
    }

    /// Remembers `rid` as sent by us.
    pub(crate) fn record_issued(&self, rid: RequestId) {
        let mut i = lock(&self.issued);
        if i.set.insert(rid.clone()) {
            i.order.push_back(rid);
        }
        while i.order.len() > defaults::ISSUED_REQUESTS {
            if let Some(old) = i.order.pop_front() {
                i.set.remove(&old);
            }
        }
    }

    /// Whether we sent `rid` recently.
    pub(crate) fn was_issued(&self, rid: &RequestId) -> bool {
        lock(&self.issued).set.contains(rid)
    }

    /// Offers an incoming frame to the waiters.
    pub(crate) fn route(&self, frame: &Frame<ServerFrame>) -> Routed {
        self.pending.route(frame)
    }

    /// The socket of `epoch` registered: requests queued during the outage go out on it.
    pub(crate) fn adopt_queued(&self, epoch: u64) {
        self.pending.adopt_queued(epoch);
    }

    /// The socket of `epoch` closed: its requests' answers will never come.
    pub(crate) fn connection_lost(&self, epoch: u64) {
        self.pending.connection_lost(epoch);
    }

    /// Marks the caller as subscribed to presence events.
    pub(crate) fn subscribe_presence(&self) {
        self.presence.store(true, Ordering::Relaxed);
    }

    /// After each registration: renews the presence subscription if the caller had discovered.
    pub(crate) fn renew_presence(&self) {
        if self.presence.load(Ordering::Relaxed) {
            let frame = Frame::with_request_id(
                ClientFrame::Discover(Default::default()),
                Some(self.issue()),
            );
            if let Err(e) = self.link.send_frame(Lane::Normal, frame) {
                tracing::warn!(peer = %self.client_id, error = %Sanitized(&e), "cannot renew the presence subscription");
            }
        }
    }

    /// Sends `frame` with a fresh request id (remembered), not waiting for an answer.
    pub(crate) fn send(&self, frame: ClientFrame) -> Result<(), PeerError> {
        self.link.send_frame(
            Lane::Normal,
            Frame::with_request_id(frame, Some(self.issue())),
        )
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
        if lane == Lane::Normal && self.link.state() == ConnectionState::Disconnected {
            return Err(PeerError::NotConnected);
        }
        let request_id = self.issue();
        let epoch = match lane {
            Lane::Control(e) => Some(e),
            Lane::Normal => self.link.registered_epoch(),
        };
        let mut guard =
            self.pending
                .register(request_id.clone(), expected, options.filter.clone(), epoch);
        let frame_type = body.type_name();
        let text = encode(&Frame::with_request_id(body, Some(request_id.clone())));
        check_size(&text, frame_type)?;
        let per_attempt = options.timeout.unwrap_or(self.timeout);
        let max_attempts = options.retry_count.saturating_add(1);
        let mut attempts = 0;
        'send: loop {
            attempts += 1;
            tracing::debug!(peer = %self.client_id, request = request_type, request_id = %request_id, attempts, "request");
            self.link.send_text(lane, text.clone())?;
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Dispatcher;
    use lattice_protocol::{decode_client, Empty, ErrorType, Peers};
    use tokio::sync::mpsc;
    use tokio::time::Instant;

    fn setup() -> (Arc<Requests>, mpsc::Receiver<String>) {
        let me = ClientId::new("me").unwrap();
        let link = Arc::new(Link::new(
            me.clone(),
            16,
            Dispatcher::new(defaults::EVENT_CAPACITY),
        ));
        let rx = link.take_outbound().unwrap();
        link.set_state(ConnectionState::Connected);
        let requests = Arc::new(Requests::new(me, Duration::from_secs(10), link));
        (requests, rx)
    }

    /// The request id of the next frame sent.
    async fn sent_id(rx: &mut mpsc::Receiver<String>) -> RequestId {
        let text = rx.recv().await.unwrap();
        decode_client(&text).unwrap().request_id.unwrap()
    }

    fn answer(rid: Option<RequestId>) -> Frame<ServerFrame> {
        Frame::with_request_id(ServerFrame::Peers(Peers::default()), rid)
    }

    fn discover(
        r: &Arc<Requests>,
        options: WaitOptions,
    ) -> tokio::task::JoinHandle<Result<ServerFrame, PeerError>> {
        let r = Arc::clone(r);
        tokio::spawn(async move {
            r.request(
                Lane::Normal,
                ClientFrame::Discover(Default::default()),
                "discover",
                options,
            )
            .await
        })
    }

    #[tokio::test(start_paused = true)]
    async fn every_attempt_times_out_and_reuses_the_request_id() {
        let (r, mut rx) = setup();
        let start = Instant::now();
        let call = discover(
            &r,
            WaitOptions::default()
                .timeout(Duration::from_secs(2))
                .retries(2),
        );
        let first = sent_id(&mut rx).await;
        assert_eq!(sent_id(&mut rx).await, first);
        assert_eq!(sent_id(&mut rx).await, first);
        match call.await.unwrap() {
            Err(PeerError::Timeout {
                attempts, after, ..
            }) => {
                assert_eq!(attempts, 3);
                assert_eq!(after, Duration::from_secs(2));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(start.elapsed(), Duration::from_secs(6));
        assert!(r.was_issued(&first));
        assert_eq!(r.pending.len(), 0, "the waiter is gone");
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_answer_to_an_earlier_attempt_resolves_the_request() {
        let (r, mut rx) = setup();
        let call = discover(
            &r,
            WaitOptions::default()
                .timeout(Duration::from_secs(1))
                .retries(3),
        );
        let rid = sent_id(&mut rx).await;
        let _retry = sent_id(&mut rx).await;
        assert_eq!(r.route(&answer(Some(rid.clone()))), Routed::Taken);
        assert!(matches!(call.await.unwrap(), Ok(ServerFrame::Peers(_))));
        assert_eq!(
            r.route(&answer(Some(rid))),
            Routed::Stale,
            "a second answer is stale"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_error_handler_decides_retry_ignore_or_fail() {
        let (r, mut rx) = setup();
        let error = |rid: &RequestId, t: ErrorType| {
            let body = ServerFrame::error(t, "x", std::time::SystemTime::now(), Some(rid.clone()));
            Frame::with_request_id(body, Some(rid.clone()))
        };
        let options = WaitOptions::default()
            .retries(1)
            .error_handler(|e| match e.error_type {
                ErrorType::RateLimited => ErrorAction::Retry,
                ErrorType::PeerNotFound => ErrorAction::Ignore,
                _ => ErrorAction::Fail,
            });
        let call = discover(&r, options);
        let rid = sent_id(&mut rx).await;
        r.route(&error(&rid, ErrorType::PeerNotFound));
        r.route(&error(&rid, ErrorType::RateLimited));
        assert_eq!(
            sent_id(&mut rx).await,
            rid,
            "retried at once with the same id"
        );
        // No retries left: a second RateLimited fails the request.
        r.route(&error(&rid, ErrorType::RateLimited));
        match call.await.unwrap() {
            Err(PeerError::Server { error_type, .. }) => {
                assert_eq!(error_type, ErrorType::RateLimited)
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_connection_fails_its_requests_and_queued_ones_wait_for_the_next() {
        let (r, mut rx) = setup();
        let control = r.link.opened(mpsc::channel(1).0);
        r.link.registered(control, true);
        let on_live = discover(&r, WaitOptions::default());
        let _ = sent_id(&mut rx).await;
        r.link.closed(control);
        r.connection_lost(control);
        assert!(matches!(
            on_live.await.unwrap(),
            Err(PeerError::ConnectionLost { .. })
        ));
        // Queued while no socket is registered: survives the next loss, goes out with the next.
        let queued = discover(&r, WaitOptions::default());
        let rid = sent_id(&mut rx).await;
        r.connection_lost(control);
        r.adopt_queued(control + 1);
        r.route(&answer(Some(rid)));
        assert!(queued.await.unwrap().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn disconnected_fails_at_once_and_ids_are_bounded() {
        let (r, _rx) = setup();
        r.link.set_state(ConnectionState::Disconnected);
        let e = r
            .request(
                Lane::Normal,
                ClientFrame::Challenge(Empty {}),
                "challenge",
                WaitOptions::default(),
            )
            .await;
        assert!(matches!(e, Err(PeerError::NotConnected)));
        let first = r.issue();
        for _ in 0..defaults::ISSUED_REQUESTS {
            r.issue();
        }
        assert!(!r.was_issued(&first), "the oldest id is forgotten");
        assert!(!r.was_issued(&RequestId::new("never").unwrap()));
    }

    #[tokio::test(start_paused = true)]
    async fn presence_is_renewed_only_once_subscribed() {
        let (r, mut rx) = setup();
        r.renew_presence();
        assert!(rx.try_recv().is_err());
        r.subscribe_presence();
        r.renew_presence();
        let text = rx.try_recv().unwrap();
        let frame = decode_client(&text).unwrap();
        assert!(matches!(frame.body, ClientFrame::Discover(_)));
        assert!(r.was_issued(&frame.request_id.unwrap()));
    }
}
