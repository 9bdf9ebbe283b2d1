//! End-to-end `delivered`: messages sent live to an online verified recipient and held in memory,
//! not on disk, until the recipient's `ack` (docs/protocol.md, "the delivery contract").
//!
//! A held message is in exactly one [`InFlight`] table, the recipient connection's, keyed by
//! (sender, `messageId`). Whoever takes it out of the table answers its sender, once:
//! - the recipient's `ack` ([`InFlight::take`], [`InFlight::take_by_id`]): `delivered`;
//! - the ack wait running out ([`InFlight::take_expired`], the in-flight reaper), or the recipient's
//!   connection ending ([`InFlight::close`]): the message is committed to the mailbox and the
//!   sender hears `queued` (or the mailbox's refusal);
//! - the sender itself, when the recipient's queue refused the frame: it takes the durable path.
//!
//! On a node of several the message itself is in Redis before it is sent, so only its answer
//! waits: [`Awaiting`], one table per node, answered `delivered` when the recipient's node tells
//! this one of the `ack`, `queued` when the wait runs out.
//!
//! Memory is bounded three ways: held messages per recipient connection and answers owed per
//! sender connection ([`crate::limits::IN_FLIGHT_PER_CONNECTION`]), and the bytes of all held
//! frames in the process ([`Budget`], [`crate::limits::IN_FLIGHT_BYTES`]). A message that finds
//! any of them used up takes the durable path instead, as before this table existed.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::ws::Utf8Bytes;
use lattice_protocol::{AckStatus, ClientId, MessageId, RequestId};
use tokio::time::Instant;

/// A held message's name: (sender, `messageId`), as the recipient's `ack` names it.
pub type HeldKey = (ClientId, MessageId);

/// A connection's answer lane: `message_ack`s and errors for messages it sent that another task
/// answers (a recipient's `ack`, a spill to the mailbox). Like presence, never on the bounded
/// outbound queue, so an answer can never be refused; bounded instead by the answers the
/// connection may be owed at once ([`AnswerLane::reserve`]).
#[derive(Debug, Default)]
pub struct AnswerLane {
    // std Mutex: a push per answer, a take per write; never held across an await.
    frames: Mutex<Vec<Utf8Bytes>>,
    /// Wakes the connection's task when the lane has something.
    pub ready: tokio::sync::Notify,
    /// Answers owed or not written yet: held messages this connection sent, plus the lane.
    awaiting: AtomicUsize,
}

impl AnswerLane {
    /// Reserves one answer the connection will be owed; false when it is owed `cap` already.
    pub fn reserve(&self, cap: usize) -> bool {
        self.awaiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < cap).then_some(n + 1)
            })
            .is_ok()
    }

    /// Gives back a reservation that will not be answered through the lane.
    pub fn release(&self) {
        let _ = self
            .awaiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// Puts an answer on the lane.
    pub fn push(&self, frame: Utf8Bytes) {
        self.frames
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(frame);
        self.ready.notify_one();
    }

    /// Takes the answers waiting to be written; they are no longer owed.
    pub fn take(&self) -> Vec<Utf8Bytes> {
        let frames = std::mem::take(
            &mut *self
                .frames
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for _ in 0..frames.len() {
            self.release();
        }
        frames
    }

    /// Answers owed now.
    pub fn awaiting(&self) -> usize {
        self.awaiting.load(Ordering::Acquire)
    }
}

/// The sender waiting for a held message's answer.
#[derive(Debug)]
pub struct Answer {
    /// The sender connection's answer lane.
    pub to: Arc<AnswerLane>,
    /// The recipient, as the sender named it.
    pub target: ClientId,
    /// The sender's `messageId`.
    pub message_id: MessageId,
    /// The `requestId` of the sender's `message` frame.
    pub rid: Option<RequestId>,
}

impl Answer {
    /// Answers the sender with a `message_ack` of `status`.
    pub fn ack(self, status: AckStatus) {
        let frame = lattice_protocol::fast::encode_message_ack(
            &self.message_id,
            &self.target,
            status,
            self.rid.as_ref(),
        );
        self.to.push(frame.into());
    }

    /// Answers the sender with `frame` (an `error`).
    pub fn send(self, frame: String) {
        self.to.push(frame.into());
    }
}

/// A message sent live and not acknowledged yet.
#[derive(Debug)]
pub struct HeldMessage {
    /// The `message` frame as sent (shared with the recipient's queue, not copied).
    pub frame: Utf8Bytes,
    /// Who waits for the answer.
    pub answer: Answer,
    /// Its share of the process-wide [`Budget`], given back when the message is dropped.
    pub reservation: Reservation,
}

/// The bytes all held frames may take in the process.
#[derive(Debug)]
pub struct Budget {
    used: AtomicUsize,
    limit: usize,
}

impl Budget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            used: AtomicUsize::new(0),
            limit,
        }
    }

    /// Takes `bytes` of the budget, or `None` when that would pass the limit.
    pub fn reserve(self: &Arc<Self>, bytes: usize) -> Option<Reservation> {
        let before = self.used.fetch_add(bytes, Ordering::AcqRel);
        if before.saturating_add(bytes) > self.limit {
            self.used.fetch_sub(bytes, Ordering::AcqRel);
            return None;
        }
        Some(Reservation {
            budget: Arc::clone(self),
            bytes,
        })
    }

    /// Bytes reserved now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

/// Bytes of a [`Budget`], given back on drop: a held message can leave the table by any path and
/// its memory is always accounted for.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<Budget>,
    bytes: usize,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// What an `ack` without `fromId` matched.
#[derive(Debug)]
pub enum Matched {
    /// No held message has that id.
    Nothing,
    /// Exactly one did; it is taken.
    One(HeldMessage),
    /// Several senders' held messages have that id: none is taken (at least once).
    Ambiguous,
}

/// One recipient connection's held messages.
#[derive(Debug, Default)]
pub struct InFlight {
    // std Mutex: a map operation per message and per ack; never held across an await.
    inner: Mutex<Slot>,
}

/// The table exists only while something is held: an idle connection (most of them) pays for
/// the flag and an empty pointer, not for a map.
#[derive(Debug, Default)]
struct Slot {
    /// Set when the connection ended: nothing more is held.
    closed: bool,
    table: Option<Box<Table<HeldKey, HeldMessage>>>,
}

impl Slot {
    /// Frees the table once nothing is held.
    fn release_if_empty(&mut self) {
        if self.table.as_ref().is_some_and(|t| t.map.is_empty()) {
            self.table = None;
        }
    }
}

/// Entries with a deadline each, every deadline "now + one wait" so that insertion order is also
/// deadline order: [`InFlight`]'s held messages and [`Awaiting`]'s owed answers.
#[derive(Debug)]
struct Table<K, V> {
    /// Entries with the sequence number of their `order` entry.
    map: HashMap<K, (u64, V)>,
    /// Deadlines in the order they were given. Entries already taken are skipped lazily and
    /// compacted away when they outnumber the live ones.
    order: VecDeque<(Instant, u64, K)>,
    seq: u64,
}

impl<K, V> Default for Table<K, V> {
    fn default() -> Self {
        Self {
            map: HashMap::new(),
            order: VecDeque::new(),
            seq: 0,
        }
    }
}

impl<K: Eq + Hash + Clone, V> Table<K, V> {
    fn is_live(&self, seq: u64, key: &K) -> bool {
        self.map.get(key).is_some_and(|(s, _)| *s == seq)
    }

    /// Adds `value` under `key` until `deadline`; gives it back when `cap` entries are there or
    /// `key` is taken.
    fn insert(&mut self, key: K, value: V, cap: usize, deadline: Instant) -> Result<(), V> {
        if self.map.len() >= cap || self.map.contains_key(&key) {
            return Err(value);
        }
        self.seq += 1;
        let seq = self.seq;
        self.order.push_back((deadline, seq, key.clone()));
        self.map.insert(key, (seq, value));
        Ok(())
    }

    /// Takes the entry under `key`.
    fn remove(&mut self, key: &K) -> Option<V> {
        let (_, value) = self.map.remove(key)?;
        self.tidy();
        Some(value)
    }

    /// Takes every entry whose deadline is at or before `now`, oldest first.
    fn take_expired(&mut self, now: Instant) -> Vec<(K, V)> {
        let mut out = Vec::new();
        while let Some((deadline, seq, key)) = self.order.front() {
            if *deadline > now {
                break;
            }
            let (seq, key) = (*seq, key.clone());
            self.order.pop_front();
            if self.is_live(seq, &key) {
                if let Some((_, value)) = self.map.remove(&key) {
                    out.push((key, value));
                }
            }
        }
        out
    }

    /// Takes every entry, oldest first.
    fn take_all(&mut self) -> Vec<(K, V)> {
        let order = std::mem::take(&mut self.order);
        let mut out = Vec::with_capacity(self.map.len());
        for (_, seq, key) in order {
            if self.is_live(seq, &key) {
                if let Some((_, value)) = self.map.remove(&key) {
                    out.push((key, value));
                }
            }
        }
        out
    }

    /// Drops stale entries at the front, and compacts when stale ones dominate.
    fn tidy(&mut self) {
        while let Some((_, seq, key)) = self.order.front() {
            if self.is_live(*seq, key) {
                break;
            }
            self.order.pop_front();
        }
        if self.order.len() > 2 * self.map.len() + 64 {
            let map = &self.map;
            self.order
                .retain(|(_, seq, key)| map.get(key).is_some_and(|(s, _)| s == seq));
        }
    }
}

impl InFlight {
    fn lock(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Holds `msg` under `key` until `deadline`. Gives it back when the connection has ended,
    /// `cap` messages are held already, or the same (sender, id) is held (a resend while the first
    /// is in flight): the caller then takes the durable path.
    ///
    /// # Errors
    /// The message, when it is not held.
    pub fn hold(
        &self,
        key: HeldKey,
        msg: HeldMessage,
        cap: usize,
        deadline: Instant,
    ) -> Result<(), Box<HeldMessage>> {
        let mut s = self.lock();
        if s.closed {
            return Err(Box::new(msg));
        }
        let t = s.table.get_or_insert_with(Box::default);
        t.insert(key, msg, cap, deadline).map_err(Box::new)
    }

    /// Takes the message held under `key` (an `ack` with `fromId`).
    pub fn take(&self, key: &HeldKey) -> Option<HeldMessage> {
        let mut s = self.lock();
        let msg = s.table.as_mut()?.remove(key)?;
        s.release_if_empty();
        Some(msg)
    }

    /// Takes the one message held with id `mid`, whoever sent it (an `ack` without `fromId`);
    /// nothing when two senders' messages have that id.
    pub fn take_by_id(&self, mid: &MessageId) -> Matched {
        let mut s = self.lock();
        let Some(t) = s.table.as_mut() else {
            return Matched::Nothing;
        };
        let mut found = t.map.keys().filter(|(_, m)| m == mid);
        let Some(key) = found.next().cloned() else {
            return Matched::Nothing;
        };
        if found.next().is_some() {
            return Matched::Ambiguous;
        }
        let Some(msg) = t.remove(&key) else {
            return Matched::Nothing;
        };
        s.release_if_empty();
        Matched::One(msg)
    }

    /// Takes every message whose deadline is at or before `now`.
    pub fn take_expired(&self, now: Instant) -> Vec<(HeldKey, HeldMessage)> {
        let mut s = self.lock();
        let Some(t) = s.table.as_mut() else {
            return Vec::new();
        };
        let out = t.take_expired(now);
        s.release_if_empty();
        out
    }

    /// Marks the table closed (the connection ended) and takes everything held, oldest first:
    /// from now on [`Self::hold`] refuses.
    pub fn close(&self) -> Vec<(HeldKey, HeldMessage)> {
        let mut s = self.lock();
        s.closed = true;
        // In the order they were sent, so the mailbox gives them back in that order.
        s.table.take().map_or_else(Vec::new, |mut t| t.take_all())
    }

    /// Whether the connection ended.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Messages held now.
    pub fn len(&self) -> usize {
        self.lock().table.as_ref().map_or(0, |t| t.map.len())
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An owed answer's name on a node of several: (sender, recipient, `messageId`).
pub type AwaitKey = (ClientId, ClientId, MessageId);

/// Answers owed to this node's senders for messages stored in an online verified recipient's
/// mailbox stream on a node of several ([`crate::node`]): the message is in Redis before it is
/// listed here, and the sender hears `delivered` when the recipient's `ack` (on whichever node it
/// is connected to) reaches this node ([`Awaiting::take`]), or `queued` once the ack wait runs
/// out ([`Awaiting::take_expired`]): exactly one answer, as on one node. Bounded by `cap`
/// entries for the whole node; past it a sender hears `queued` at once.
#[derive(Debug)]
pub struct Awaiting {
    // std Mutex: a map operation per message and per ack; never held across an await.
    inner: Mutex<Table<AwaitKey, Answer>>,
    cap: usize,
}

impl Awaiting {
    /// An empty table of at most `cap` owed answers.
    pub fn new(cap: usize) -> Self {
        Self {
            inner: Mutex::new(Table::default()),
            cap,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table<AwaitKey, Answer>> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Owes `answer` under `key` until `deadline`.
    ///
    /// # Errors
    /// The answer, when the table is full or the same key is owed already (a resend while the
    /// first waits): the caller answers it now.
    pub fn wait(&self, key: AwaitKey, answer: Answer, deadline: Instant) -> Result<(), Answer> {
        self.lock().insert(key, answer, self.cap, deadline)
    }

    /// Takes the answer owed under `key` (the recipient acknowledged, or the caller gives up).
    pub fn take(&self, key: &AwaitKey) -> Option<Answer> {
        self.lock().remove(key)
    }

    /// Takes every answer whose deadline is at or before `now`.
    pub fn take_expired(&self, now: Instant) -> Vec<Answer> {
        self.lock()
            .take_expired(now)
            .into_iter()
            .map(|(_, a)| a)
            .collect()
    }

    /// Answers owed now.
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// True when no answer is owed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn key(sender: &str, mid: &str) -> HeldKey {
        (ClientId::new(sender).unwrap(), MessageId::new(mid).unwrap())
    }

    fn held(budget: &Arc<Budget>, to: &Arc<AnswerLane>, mid: &str) -> HeldMessage {
        HeldMessage {
            frame: Utf8Bytes::from_static("{\"type\":\"message\"}"),
            answer: Answer {
                to: Arc::clone(to),
                target: ClientId::new("bob").unwrap(),
                message_id: MessageId::new(mid).unwrap(),
                rid: None,
            },
            reservation: budget.reserve(100).expect("room"),
        }
    }

    fn sender() -> Arc<AnswerLane> {
        Arc::default()
    }

    /// The table on paused tokio time: deadlines expire in order, acked messages never expire,
    /// the per-connection cap and a duplicate key refuse, a closed table refuses and gives back
    /// everything, and the byte budget follows every exit.
    #[tokio::test(start_paused = true)]
    async fn held_messages_leave_by_ack_expiry_or_close_and_the_budget_follows() {
        let budget = Arc::new(Budget::new(350));
        let to = sender();
        let t = InFlight::default();
        let wait = Duration::from_secs(3);
        let t0 = Instant::now();
        t.hold(key("a", "1"), held(&budget, &to, "1"), 3, t0 + wait)
            .unwrap();
        tokio::time::advance(Duration::from_secs(1)).await;
        t.hold(
            key("a", "2"),
            held(&budget, &to, "2"),
            3,
            Instant::now() + wait,
        )
        .unwrap();
        assert!(
            t.hold(
                key("a", "2"),
                held(&budget, &to, "2"),
                3,
                Instant::now() + wait
            )
            .is_err(),
            "a resend of a held message is not held twice"
        );
        t.hold(
            key("c", "2"),
            held(&budget, &to, "2"),
            3,
            Instant::now() + wait,
        )
        .unwrap();
        assert!(budget.reserve(100).is_none(), "350 bytes hold three");
        assert!(
            t.hold(
                key("d", "9"),
                held(&Arc::new(Budget::new(100)), &to, "9"),
                3,
                Instant::now() + wait
            )
            .is_err(),
            "the per-connection cap"
        );

        // id 2 from two senders: an ack without fromId takes neither
        assert!(matches!(
            t.take_by_id(&MessageId::new("2").unwrap()),
            Matched::Ambiguous
        ));
        assert!(matches!(
            t.take_by_id(&MessageId::new("7").unwrap()),
            Matched::Nothing
        ));
        // the first is acked: it never expires, and its bytes are back
        assert!(t.take(&key("a", "1")).is_some());
        assert!(t.take(&key("a", "1")).is_none(), "taken once");
        assert_eq!(budget.used(), 200);
        assert!(
            t.take_expired(t0 + wait).is_empty(),
            "the acked message's deadline passes without effect"
        );

        tokio::time::advance(wait - Duration::from_millis(1)).await;
        assert!(t.take_expired(Instant::now()).is_empty(), "not yet");
        tokio::time::advance(Duration::from_millis(1)).await;
        let expired = t.take_expired(Instant::now());
        assert_eq!(expired.len(), 2, "both held a second later expire together");
        drop(expired);
        assert_eq!(budget.used(), 0);
        assert!(t.is_empty());

        t.hold(
            key("a", "3"),
            held(&budget, &to, "3"),
            3,
            Instant::now() + wait,
        )
        .unwrap();
        let all = t.close();
        assert_eq!(all.len(), 1);
        assert!(
            t.hold(
                key("a", "4"),
                held(&budget, &to, "4"),
                3,
                Instant::now() + wait
            )
            .is_err(),
            "a closed table holds nothing"
        );
        drop(all);
        assert_eq!(budget.used(), 0);
    }

    /// Stale order entries (acked messages) are compacted: a busy connection whose recipient acks
    /// at once keeps a small table however many messages pass.
    #[tokio::test(start_paused = true)]
    async fn a_busy_connection_keeps_a_small_table() {
        let budget = Arc::new(Budget::new(usize::MAX));
        let to = sender();
        let t = InFlight::default();
        let deadline = Instant::now() + Duration::from_secs(3);
        // acks arrive out of order: every second message is acked late
        for i in 0..10_000u32 {
            let k = key("a", &i.to_string());
            t.hold(k.clone(), held(&budget, &to, "x"), 256, deadline)
                .unwrap();
            if i % 2 == 1 {
                assert!(t.take(&k).is_some());
                assert!(t.take(&key("a", &(i - 1).to_string())).is_some());
            }
        }
        assert!(t.is_empty());
        assert!(t.lock().table.is_none(), "an empty table is freed");
        // one message is never acked, so the table lives on and its deadline stays at the
        // front; every other one is acked at once: the queue of deadlines is compacted instead of
        // growing with every message that passed
        t.hold(key("b", "stuck"), held(&budget, &to, "x"), 256, deadline)
            .unwrap();
        for i in 0..10_000u32 {
            let k = key("b", &i.to_string());
            t.hold(k.clone(), held(&budget, &to, "x"), 256, deadline)
                .unwrap();
            assert!(t.take(&k).is_some());
        }
        assert_eq!(t.len(), 1);
        let s = t.lock();
        let order = s.table.as_ref().map_or(0, |t| t.order.len());
        assert!(order <= 2 + 64 + 1, "the order queue is compacted: {order}");
    }

    fn await_key(sender: &str, recipient: &str, mid: &str) -> AwaitKey {
        (
            ClientId::new(sender).unwrap(),
            ClientId::new(recipient).unwrap(),
            MessageId::new(mid).unwrap(),
        )
    }

    fn answer_for(to: &Arc<AnswerLane>, mid: &str) -> Answer {
        assert!(to.reserve(IN_FLIGHT_CAP_FOR_TESTS));
        Answer {
            to: Arc::clone(to),
            target: ClientId::new("bob").unwrap(),
            message_id: MessageId::new(mid).unwrap(),
            rid: None,
        }
    }

    const IN_FLIGHT_CAP_FOR_TESTS: usize = 16;

    /// Owed answers on paused tokio time: the node-wide cap and a duplicate key refuse, an ack
    /// takes its answer once, the rest come out when their wait runs out and not before, and
    /// every answer pushed reaches the sender's lane.
    #[tokio::test(start_paused = true)]
    async fn owed_answers_leave_by_ack_or_expiry_within_the_cap() {
        let lane = sender();
        let t = Awaiting::new(2);
        let wait = Duration::from_secs(3);
        t.wait(
            await_key("a", "bob", "1"),
            answer_for(&lane, "1"),
            Instant::now() + wait,
        )
        .unwrap();
        assert!(
            t.wait(
                await_key("a", "bob", "1"),
                answer_for(&lane, "1"),
                Instant::now() + wait
            )
            .is_err(),
            "a resend while the first waits"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        t.wait(
            await_key("a", "carol", "1"),
            answer_for(&lane, "1"),
            Instant::now() + wait,
        )
        .unwrap();
        assert!(
            t.wait(
                await_key("c", "bob", "2"),
                answer_for(&lane, "2"),
                Instant::now() + wait
            )
            .is_err(),
            "the cap"
        );
        assert_eq!(t.len(), 2);

        // bob acks: delivered, once
        t.take(&await_key("a", "bob", "1"))
            .unwrap()
            .ack(AckStatus::Delivered);
        assert!(t.take(&await_key("a", "bob", "1")).is_none());
        let frames = lane.take();
        assert_eq!(frames.len(), 1);
        assert!(frames[0].as_str().contains("delivered"), "{}", frames[0]);

        // carol's was given a second after the start: it runs out `wait` after that
        tokio::time::advance(wait - Duration::from_millis(1)).await;
        assert!(t.take_expired(Instant::now()).is_empty(), "not yet");
        tokio::time::advance(Duration::from_millis(1)).await;
        let expired = t.take_expired(Instant::now());
        assert_eq!(expired.len(), 1);
        for a in expired {
            a.ack(AckStatus::Queued);
        }
        assert!(t.is_empty());
        let frames = lane.take();
        assert!(frames[0].as_str().contains("queued"), "{}", frames[0]);
    }
}
