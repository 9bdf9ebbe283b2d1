//! The durable outbox's sender: hands what waits in the `outbox` table to the peer, oldest
//! first, and tracks it until the server's verdict. It owns its timing: it runs when woken
//! (wake-ups coalesce, nothing queues up) and, after a transient failure while connected,
//! again after [`OUTBOX_RETRY`]; a reconnect wakes it sooner.
//!
//! What it learns goes up as [`SessionEvent::Status`] (and a notice for a message refused for
//! good); it writes nothing itself — the messenger's applier does.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lattice_peer::{ConnectionState, Content, MessagingPeer, PeerError};
use lattice_protocol::{ClientId, MessageId};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::contract::{DeliveryStatus, ErrorKind};
use crate::describe::{self, describe};
use crate::events::{EventSink, SessionEvent};
use crate::storage::Db;
use crate::views::Notice;

/// After a transient failure while still connected (a timeout, a full queue), the outbox is
/// tried again after this long.
pub const OUTBOX_RETRY: Duration = Duration::from_secs(5);

/// Acks that arrived before their send returned (so before we knew their wire id); tiny and
/// bounded because that race needs a round trip to lose.
const EARLY_ACKS: usize = 64;

/// What the outbox needs of a peer.
pub trait Transport: Send + Sync + 'static {
    /// Registered on the server right now.
    fn connected(&self) -> bool;

    /// Hands `content` to the server for `to`, always with `wire_id`; resolves to the wire id
    /// the verdict will carry.
    fn send(
        &self,
        to: &ClientId,
        content: &Content,
        wire_id: MessageId,
    ) -> impl Future<Output = Result<MessageId, PeerError>> + Send;
}

impl Transport for MessagingPeer {
    fn connected(&self) -> bool {
        self.connection_state() == ConnectionState::Connected
    }

    async fn send(
        &self,
        to: &ClientId,
        content: &Content,
        wire_id: MessageId,
    ) -> Result<MessageId, PeerError> {
        self.send_content_with_id(to, content, wire_id)
            .await
            .map(|sent| sent.message_id)
    }
}

/// What a failed send means for the message.
#[derive(Debug, PartialEq, Eq)]
enum Failure {
    /// A later connection may not have it: pause, try again later.
    Retry,
    /// Waits for the person (a changed key to accept); the banner says so.
    Blocked,
    /// Refused for good: the message fails.
    Fail,
}

/// The one place that decides what a send error means for a queued message: a changed key blocks
/// the conversation until the user decides; what the library calls transient
/// ([`PeerError::is_transient`]) is retried; everything else fails.
fn classify(e: &PeerError) -> Failure {
    if matches!(e, PeerError::KeyChanged { .. }) {
        Failure::Blocked
    } else if e.is_transient() {
        Failure::Retry
    } else {
        Failure::Fail
    }
}

/// Outgoing messages in flight.
#[derive(Debug, Default)]
struct Flow {
    /// Local ids handed to the peer by this session (the peer queues and resends them itself);
    /// anything else in the outbox still has to be handed over.
    handed: HashSet<String>,
    /// Wire message id → local id, until the server's verdict.
    wire_to_local: HashMap<MessageId, String>,
    /// Verdicts that arrived before the wire id was known.
    early: HashMap<MessageId, DeliveryStatus>,
}

/// The outbox sender of one session.
pub struct Outbox<T> {
    transport: T,
    db: Arc<Db>,
    events: EventSink,
    wake: Notify,
    // std Mutex: small maps touched by the peer's event handler and the send loop, never
    // across an `.await`.
    flow: Mutex<Flow>,
}

impl<T> std::fmt::Debug for Outbox<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section leaves the maps consistent, so a poisoned lock is still usable.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl<T: Transport> Outbox<T> {
    /// An outbox sending through `transport` what waits in `db`, reporting to `events`.
    pub fn new(transport: T, db: Arc<Db>, events: EventSink) -> Self {
        Self {
            transport,
            db,
            events,
            wake: Notify::new(),
            flow: Mutex::new(Flow::default()),
        }
    }

    /// Asks for a pass over the outbox (a new message, a reconnect, an accepted key).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// After a reconnect: what was handed over without a verdict may have died with the old
    /// connection (or with the server), and the peer does not resend it, so the next pass hands
    /// it over again, with the same wire id (a copy that did arrive is dropped as a duplicate).
    pub fn reconnected(&self) {
        lock(&self.flow).handed.clear();
    }

    /// The server's verdict on the message sent as `wire_id`: the local id it concerns, or
    /// `None` when the send has not returned yet (the verdict is then applied when it does).
    pub fn verdict(&self, wire_id: &MessageId, status: DeliveryStatus) -> Option<String> {
        let mut flow = lock(&self.flow);
        match flow.wire_to_local.remove(wire_id) {
            // Still `handed` until its outbox row is gone (the status is applied to the database
            // by another task): a pass in between must not send it again.
            Some(local) => Some(local),
            None => {
                if flow.early.len() < EARLY_ACKS {
                    flow.early.insert(wire_id.clone(), status);
                }
                None
            }
        }
    }

    /// Sends whenever woken, and again [`OUTBOX_RETRY`] after a transient failure, until
    /// `cancel`.
    pub async fn run(&self, cancel: CancellationToken) {
        let mut retry_at: Option<tokio::time::Instant> = None;
        loop {
            let retry = async {
                match retry_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                () = cancel.cancelled() => return,
                () = self.wake.notified() => {}
                () = retry => {}
            }
            retry_at = None;
            if !self.transport.connected() {
                continue;
            }
            let paused = tokio::select! {
                biased;
                () = cancel.cancelled() => return,
                paused = self.flush() => paused,
            };
            if paused {
                retry_at = Some(tokio::time::Instant::now() + OUTBOX_RETRY);
            }
        }
    }

    async fn status(&self, local_id: &str, status: DeliveryStatus) {
        self.events
            .send(SessionEvent::Status {
                local_id: local_id.to_owned(),
                status,
            })
            .await;
    }

    /// Hands every entry not yet handed to the peer, oldest first. Stops at the first transient
    /// failure and returns `true` (paused: try again later); a permanent failure fails that
    /// message and goes on.
    async fn flush(&self) -> bool {
        let entries = match self.db.outbox() {
            Ok(entries) => entries,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the outbox");
                return true;
            }
        };
        {
            // What left the outbox (its verdict is in the database) needs no tracking.
            let listed: HashSet<&str> = entries.iter().map(|e| e.message_id.as_str()).collect();
            lock(&self.flow)
                .handed
                .retain(|id| listed.contains(id.as_str()));
        }
        for entry in entries {
            if lock(&self.flow).handed.contains(&entry.message_id) {
                continue;
            }
            // Always the id stored when the message was queued: if a previous run handed it to
            // the server but died before the ack, the recipient drops this copy as a duplicate.
            // A text, or the stored wire form of a reply, an edit, a delete or a reaction (written
            // by this app, so a row that no longer decodes fails rather than blocks the queue).
            let result = match entry.kind.as_deref() {
                None => Ok(Content::Text(entry.body.clone())),
                Some(kind) => Content::decode(kind, &entry.body).map_err(PeerError::InvalidContent),
            };
            // A read receipt refused for good (an original client gets none) is dropped
            // quietly: nobody asked for it, so nobody is told.
            let receipt = matches!(result, Ok(Content::Receipt { .. }));
            let result = match result {
                Ok(content) => {
                    self.transport
                        .send(&entry.peer_id, &content, entry.wire_id.clone())
                        .await
                }
                Err(e) => Err(e),
            };
            let e = match result {
                Ok(wire_id) => {
                    let early = {
                        let mut flow = lock(&self.flow);
                        flow.handed.insert(entry.message_id.clone());
                        match flow.early.remove(&wire_id) {
                            Some(status) => Some(status),
                            None => {
                                flow.wire_to_local.insert(wire_id, entry.message_id.clone());
                                None
                            }
                        }
                    };
                    if self.transport.connected() {
                        self.status(&entry.message_id, DeliveryStatus::Sent).await;
                    }
                    if let Some(status) = early {
                        self.status(&entry.message_id, status).await;
                    }
                    continue;
                }
                Err(e) => e,
            };
            match classify(&e) {
                Failure::Blocked => {}
                Failure::Retry => {
                    tracing::info!(message = %entry.message_id, error = %e, "outbox paused");
                    return true;
                }
                Failure::Fail => {
                    lock(&self.flow).handed.insert(entry.message_id.clone());
                    self.status(&entry.message_id, DeliveryStatus::Failed).await;
                    if receipt {
                        tracing::debug!(peer = %entry.peer_id, error = %e, "read receipt not sent");
                        continue;
                    }
                    self.events
                        .send(SessionEvent::Notice(Notice {
                            kind: ErrorKind::MessageFailed,
                            code: Some(describe::code(&e)),
                            message: format!(
                                "A message to {} could not be sent: {}",
                                entry.peer_id,
                                describe(&e)
                            ),
                        }))
                        .await;
                }
            }
        }
        false
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::collections::VecDeque;

    use tokio::sync::mpsc;

    use lattice_protocol::ErrorType;

    use super::*;
    use crate::contract::PeerErrorCode;

    /// A peer that answers each send from a script and counts the attempts.
    #[derive(Default)]
    struct Scripted {
        answers: Mutex<VecDeque<Result<(), PeerError>>>,
        attempts: Mutex<Vec<String>>,
    }

    impl Transport for Arc<Scripted> {
        fn connected(&self) -> bool {
            true
        }

        async fn send(
            &self,
            _to: &ClientId,
            content: &Content,
            wire_id: MessageId,
        ) -> Result<MessageId, PeerError> {
            lock(&self.attempts).push(content.plain_text().unwrap_or_default());
            let answer = lock(&self.answers).pop_front().unwrap_or(Ok(()));
            answer.map(|()| wire_id)
        }
    }

    struct Fixture {
        db: Arc<Db>,
        script: Arc<Scripted>,
        outbox: Arc<Outbox<Arc<Scripted>>>,
        events: mpsc::Receiver<SessionEvent>,
        cancel: CancellationToken,
    }

    fn fixture(texts: &[&str], answers: Vec<Result<(), PeerError>>) -> Fixture {
        let db = Arc::new(Db::open_in_memory().unwrap());
        let bob = ClientId::new("bob").unwrap();
        for (n, text) in texts.iter().enumerate() {
            let wire = MessageId::new(format!("w{n}")).unwrap();
            db.enqueue_outgoing(&format!("m{n}"), &wire, &bob, text, 1)
                .unwrap();
        }
        let script = Arc::new(Scripted {
            answers: Mutex::new(answers.into()),
            ..Scripted::default()
        });
        let (sink, events) = EventSink::channel();
        let outbox = Arc::new(Outbox::new(Arc::clone(&script), Arc::clone(&db), sink));
        let cancel = CancellationToken::new();
        {
            let outbox = Arc::clone(&outbox);
            let cancel = cancel.clone();
            tokio::spawn(async move { outbox.run(cancel).await });
        }
        Fixture {
            db,
            script,
            outbox,
            events,
            cancel,
        }
    }

    fn status(local: &str, status: DeliveryStatus) -> SessionEvent {
        SessionEvent::Status {
            local_id: local.into(),
            status,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_transient_failure_pauses_the_outbox_until_the_retry_interval() {
        let timeout = PeerError::Timeout {
            request: "message".into(),
            expected: "message_ack".into(),
            after: Duration::from_secs(10),
            attempts: 1,
        };
        let mut f = fixture(&["hello"], vec![Err(timeout)]);
        let start = tokio::time::Instant::now();
        f.outbox.wake();
        // Half the interval later, only the first attempt was made.
        tokio::time::sleep(OUTBOX_RETRY / 2).await;
        assert_eq!(lock(&f.script.attempts).len(), 1);
        assert!(f.events.try_recv().is_err());
        // The retry sends it.
        assert_eq!(
            f.events.recv().await,
            Some(status("m0", DeliveryStatus::Sent))
        );
        assert!(start.elapsed() >= OUTBOX_RETRY);
        assert_eq!(lock(&f.script.attempts).len(), 2);
        // Nothing more to do: no further attempts, however long we wait.
        tokio::time::sleep(OUTBOX_RETRY * 3).await;
        assert_eq!(lock(&f.script.attempts).len(), 2);
        f.cancel.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_message_fails_with_a_notice_and_the_next_one_still_goes() {
        let unknown = PeerError::Server {
            error_type: ErrorType::PeerNotFound,
            details: "no such client".into(),
            request_id: None,
        };
        let mut f = fixture(&["to nobody", "second"], vec![Err(unknown)]);
        f.outbox.wake();
        assert_eq!(
            f.events.recv().await,
            Some(status("m0", DeliveryStatus::Failed))
        );
        match f.events.recv().await {
            Some(SessionEvent::Notice(notice)) => {
                assert_eq!(notice.kind, ErrorKind::MessageFailed);
                assert_eq!(notice.code, Some(PeerErrorCode::PeerNotFound));
                assert!(notice.message.contains("bob"), "{}", notice.message);
            }
            other => panic!("expected a notice, got {other:?}"),
        }
        assert_eq!(
            f.events.recv().await,
            Some(status("m1", DeliveryStatus::Sent))
        );
        // A verdict by wire id finds the local message; a second one for it finds nothing.
        let wire = MessageId::new("w1").unwrap();
        assert_eq!(
            f.outbox
                .verdict(&wire, DeliveryStatus::Delivered)
                .as_deref(),
            Some("m1")
        );
        f.cancel.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn an_ack_that_overtakes_the_send_is_applied_when_the_send_returns() {
        let mut f = fixture(&["fast"], Vec::new());
        let wire = MessageId::new("w0").unwrap();
        assert_eq!(f.outbox.verdict(&wire, DeliveryStatus::Delivered), None);
        f.outbox.wake();
        assert_eq!(
            f.events.recv().await,
            Some(status("m0", DeliveryStatus::Sent))
        );
        assert_eq!(
            f.events.recv().await,
            Some(status("m0", DeliveryStatus::Delivered))
        );
        f.cancel.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_reconnect_what_has_no_verdict_is_handed_over_again_with_its_wire_id() {
        let mut f = fixture(&["in flight", "acked"], Vec::new());
        f.outbox.wake();
        for local in ["m0", "m1"] {
            assert_eq!(
                f.events.recv().await,
                Some(status(local, DeliveryStatus::Sent))
            );
        }
        // m1 is acknowledged; m0's verdict never comes (it died with the connection).
        let acked = MessageId::new("w1").unwrap();
        assert_eq!(
            f.outbox
                .verdict(&acked, DeliveryStatus::Delivered)
                .as_deref(),
            Some("m1")
        );
        // Woken before the messenger applied m1's verdict to the database, then after: nothing
        // is handed over twice.
        f.outbox.wake();
        tokio::time::sleep(OUTBOX_RETRY).await;
        assert_eq!(lock(&f.script.attempts).len(), 2);
        f.db.advance_status("m1", DeliveryStatus::Delivered)
            .unwrap();
        f.outbox.wake();
        tokio::time::sleep(OUTBOX_RETRY).await;
        assert_eq!(lock(&f.script.attempts).len(), 2);
        // After a reconnect only m0 goes again, and a late ack for its wire id still finds it.
        f.outbox.reconnected();
        f.outbox.wake();
        tokio::time::sleep(OUTBOX_RETRY).await;
        assert_eq!(
            *lock(&f.script.attempts),
            ["in flight", "acked", "in flight"]
        );
        let resent = MessageId::new("w0").unwrap();
        assert_eq!(
            f.outbox
                .verdict(&resent, DeliveryStatus::Delivered)
                .as_deref(),
            Some("m0")
        );
        f.cancel.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_receipt_without_a_verdict_goes_again_after_a_reconnect() {
        let mut f = fixture(&[], Vec::new());
        let bob = ClientId::new("bob").unwrap();
        f.db.insert_incoming("b1", &bob, "hello", 1, true, false)
            .unwrap();
        let wire = MessageId::new("wr").unwrap();
        assert_eq!(f.db.queue_receipts_due(&bob, 8, "r0", &wire, 2).unwrap(), 1);
        f.outbox.wake();
        assert_eq!(
            f.events.recv().await,
            Some(status("r0", DeliveryStatus::Sent))
        );
        // Its verdict died with the connection: the receipt is still in the outbox and goes
        // again, with the same wire id, after the reconnect.
        f.outbox.reconnected();
        f.outbox.wake();
        assert_eq!(
            f.events.recv().await,
            Some(status("r0", DeliveryStatus::Sent))
        );
        assert_eq!(lock(&f.script.attempts).len(), 2);
        assert_eq!(
            f.outbox
                .verdict(&wire, DeliveryStatus::Delivered)
                .as_deref(),
            Some("r0")
        );
        f.cancel.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_receipt_refused_for_good_is_dropped_without_a_notice() {
        let bob = ClientId::new("bob").unwrap();
        let original = PeerError::PlainTextOnly {
            peer: bob.clone(),
            kind: "receipt".into(),
        };
        let mut f = fixture(&[], vec![Err(original)]);
        f.db.insert_incoming("b1", &bob, "hello", 1, true, false)
            .unwrap();
        let wire = MessageId::new("wr").unwrap();
        f.db.queue_receipts_due(&bob, 8, "r0", &wire, 2).unwrap();
        f.db.enqueue_outgoing("m1", &MessageId::new("w1").unwrap(), &bob, "next", 3)
            .unwrap();
        f.outbox.wake();
        // The receipt fails (the applier then takes it out of the outbox) and no notice
        // follows: the next event is the message after it.
        assert_eq!(
            f.events.recv().await,
            Some(status("r0", DeliveryStatus::Failed))
        );
        assert_eq!(
            f.events.recv().await,
            Some(status("m1", DeliveryStatus::Sent))
        );
        f.cancel.cancel();
    }

    #[test]
    fn send_errors_are_classified_once() {
        assert_eq!(classify(&PeerError::NotConnected), Failure::Retry);
        assert_eq!(classify(&PeerError::Replaced), Failure::Fail);
        assert_eq!(
            classify(&PeerError::Server {
                error_type: ErrorType::RateLimited,
                details: String::new(),
                request_id: None,
            }),
            Failure::Retry
        );
    }
}
