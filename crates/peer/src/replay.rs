//! Replay detection: a bounded memory of the message ids seen from each sender, a per-sender
//! high-water mark of signed `sentAt`s behind it ([`ReplayStore`]), and the freshness window on
//! `sentAt`.
//!
//! Three rules together refuse replays of signed (`lattice-v1`) messages:
//! - a `sentAt` outside [`crate::defaults::MAX_MESSAGE_AGE`] / [`crate::defaults::MAX_CLOCK_SKEW`]
//!   is refused (`freshness`), so nothing older than the window needs remembering;
//! - an id still in the sender's window is a duplicate;
//! - once ids of a sender were forgotten (its window was trimmed or evicted, or the app restarted),
//!   a `sentAt` not newer than the newest forgotten one (at worst the sender's high-water mark
//!   from the [`ReplayStore`]) is treated as a duplicate too. This can refuse a genuine message
//!   that arrives very late, after newer ones and after its sender's window was forgotten; it is
//!   dropped as a duplicate (and logged).
//!
//! Signed and unsigned senders live in separate pools with separate bounds: anyone can be a
//! thousand unsigned (`ml-kem-aes`) senders, and they only ever push each other out. What is left:
//! the [`MemoryReplayStore`] forgets the mark of the sender raised least recently once it holds
//! [`crate::defaults::REPLAY_STORE_MAX_SENDERS`] marks, so a sender whose window *and* mark were
//! both pushed out by that many other verified senders (each a registration with its own
//! identity) could have a message of the last 8 days replayed; a durable store with room for
//! every contact closes that too.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use lattice_protocol::{ClientId, MessageId};

use crate::{defaults, PeerError, RejectReason};

/// Durable per-sender replay state: the high-water mark, the newest signed `sentAt` (unix ms)
/// accepted from each sender of `lattice-v1` messages.
///
/// The peer keeps the message ids it has seen in memory, bounded; when a sender's ids are
/// forgotten (many other senders, or a restart) its mark still refuses replays of anything it
/// accepted before: a message not newer than the mark is dropped as a duplicate. The default,
/// [`MemoryReplayStore`], lasts as long as the process; an app with storage (one row per sender)
/// makes the protection survive restarts. Pass it with
/// [`crate::MessagingPeer::with_replay_store`]. Methods are synchronous and expected to be quick,
/// like [`crate::KeyStore`]'s.
pub trait ReplayStore: Send + Sync + fmt::Debug {
    /// The high-water mark of `sender`, if any message of it was accepted.
    ///
    /// # Errors
    /// [`PeerError::KeyStore`] (or any error) if the storage fails; the message is then held
    /// back as [`RejectReason::ReplayStoreUnavailable`] and retried.
    fn high_water_mark(&self, sender: &ClientId) -> Result<Option<u64>, PeerError>;

    /// Raises the mark of `sender` to `sent_at` if that is higher (never lowers it). Called
    /// before a message is delivered.
    ///
    /// # Errors
    /// As [`ReplayStore::high_water_mark`]; the message is then not delivered (yet).
    fn raise_high_water_mark(&self, sender: &ClientId, sent_at: u64) -> Result<(), PeerError>;
}

/// A [`ReplayStore`] in memory: marks last as long as the process, for up to
/// [`defaults::REPLAY_STORE_MAX_SENDERS`] senders (the least recently raised is forgotten first).
#[derive(Debug)]
pub struct MemoryReplayStore {
    capacity: usize,
    // std Mutex: held for a map lookup or update, never across an await.
    state: Mutex<Marks>,
}

#[derive(Debug, Default)]
struct Marks {
    tick: u64,
    marks: HashMap<ClientId, (u64, u64)>,
    by_tick: BTreeMap<u64, ClientId>,
}

impl Default for MemoryReplayStore {
    fn default() -> Self {
        Self::with_capacity(defaults::REPLAY_STORE_MAX_SENDERS)
    }
}

impl MemoryReplayStore {
    /// A store that keeps the marks of at most `capacity` senders (at least one).
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            state: Mutex::new(Marks::default()),
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Marks>, PeerError> {
        Ok(crate::sync::lock(&self.state))
    }
}

impl ReplayStore for MemoryReplayStore {
    fn high_water_mark(&self, sender: &ClientId) -> Result<Option<u64>, PeerError> {
        Ok(self.lock()?.marks.get(sender).map(|(mark, _)| *mark))
    }

    fn raise_high_water_mark(&self, sender: &ClientId, sent_at: u64) -> Result<(), PeerError> {
        let mut s = self.lock()?;
        s.tick += 1;
        let tick = s.tick;
        let mark = match s.marks.get(sender) {
            Some(&(mark, old_tick)) => {
                s.by_tick.remove(&old_tick);
                mark.max(sent_at)
            }
            None => sent_at,
        };
        s.marks.insert(sender.clone(), (mark, tick));
        s.by_tick.insert(tick, sender.clone());
        while s.marks.len() > self.capacity {
            let Some((_, oldest)) = s.by_tick.pop_first() else {
                break;
            };
            s.marks.remove(&oldest);
        }
        Ok(())
    }
}

/// Checks a signed `sent_at` (unix ms) against our clock `now` (unix ms): refused if older than
/// [`defaults::MAX_MESSAGE_AGE`] or more than [`defaults::MAX_CLOCK_SKEW`] ahead.
pub(crate) fn freshness(sent_at: u64, now: u64) -> Result<(), RejectReason> {
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    if sent_at.saturating_add(ms(defaults::MAX_MESSAGE_AGE)) < now {
        return Err(RejectReason::TooOld { sent_at });
    }
    if sent_at > now.saturating_add(ms(defaults::MAX_CLOCK_SKEW)) {
        return Err(RejectReason::FromTheFuture { sent_at });
    }
    Ok(())
}

/// What [`ReplayGuard::record_signed`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fresh {
    /// Never seen: recorded.
    New,
    /// The id is in the sender's window: a duplicate.
    Duplicate,
    /// Not in the window, but not newer than what was forgotten of this sender: possibly a
    /// replay of a forgotten message, treated as a duplicate.
    BelowMark,
}

/// The two pools: signed senders (their signature verified with a pinned key) and unsigned ones.
#[derive(Debug)]
pub(crate) struct ReplayGuard {
    signed: Pool,
    unsigned: Pool,
}

impl ReplayGuard {
    pub(crate) fn new(per_peer: usize, signed: (usize, usize), unsigned: (usize, usize)) -> Self {
        Self {
            signed: Pool::new(per_peer, signed.0, signed.1),
            unsigned: Pool::new(per_peer, unsigned.0, unsigned.1),
        }
    }

    /// Whether the signed message `id` was already seen from `from` (without recording it).
    pub(crate) fn seen_signed(&self, from: &ClientId, id: &MessageId) -> bool {
        self.signed.seen(from, id)
    }

    /// Records a signed message. A sender seen for the first time in this pool starts from its
    /// high-water mark in `store`; the mark is raised before the id is recorded, so a store that
    /// fails leaves nothing recorded (the message can be retried).
    pub(crate) fn record_signed(
        &mut self,
        store: &dyn ReplayStore,
        from: &ClientId,
        id: &MessageId,
        sent_at: u64,
    ) -> Result<Fresh, PeerError> {
        if self.signed.seen(from, id) {
            self.signed.touch(from);
            return Ok(Fresh::Duplicate);
        }
        let floor = match self.signed.floor(from) {
            Some(f) => f,
            None => store.high_water_mark(from)?.unwrap_or(0),
        };
        if sent_at <= floor && floor > 0 {
            return Ok(Fresh::BelowMark);
        }
        store.raise_high_water_mark(from, sent_at)?;
        self.signed.insert(from, id, sent_at, floor);
        Ok(Fresh::New)
    }

    /// Records an unsigned message; `false` if it was already recorded (a duplicate).
    pub(crate) fn record_unsigned(&mut self, from: &ClientId, id: &MessageId) -> bool {
        if self.unsigned.seen(from, id) {
            self.unsigned.touch(from);
            return false;
        }
        self.unsigned.insert(from, id, 0, 0);
        true
    }
}

/// Remembers the last `per_peer` message ids of up to `max_peers` senders, and at most `max_ids`
/// ids in all. When a sender exceeds its window its oldest id is forgotten; when there are too many
/// senders, the one seen least recently is forgotten; when there are too many ids, the oldest id
/// of the sender seen least recently goes. Each window keeps the newest `sentAt` it forgot (its
/// floor).
#[derive(Debug)]
struct Pool {
    per_peer: usize,
    max_peers: usize,
    max_ids: usize,
    total: usize,
    tick: u64,
    peers: HashMap<ClientId, Window>,
}

#[derive(Debug, Default)]
struct Window {
    last_seen: u64,
    /// Newest `sentAt` among the ids this window forgot (or the store's mark it started from).
    floor: u64,
    order: VecDeque<(MessageId, u64)>,
    ids: HashSet<MessageId>,
}

impl Pool {
    fn new(per_peer: usize, max_peers: usize, max_ids: usize) -> Self {
        Self {
            per_peer: per_peer.max(1),
            max_peers: max_peers.max(1),
            max_ids: max_ids.max(1),
            total: 0,
            tick: 0,
            peers: HashMap::new(),
        }
    }

    fn seen(&self, from: &ClientId, id: &MessageId) -> bool {
        self.peers.get(from).is_some_and(|w| w.ids.contains(id))
    }

    fn floor(&self, from: &ClientId) -> Option<u64> {
        self.peers.get(from).map(|w| w.floor)
    }

    fn touch(&mut self, from: &ClientId) {
        self.tick += 1;
        if let Some(w) = self.peers.get_mut(from) {
            w.last_seen = self.tick;
        }
    }

    /// Records `id` (not yet seen) from `from`; `floor` is the window's floor if it is new.
    fn insert(&mut self, from: &ClientId, id: &MessageId, sent_at: u64, floor: u64) {
        self.tick += 1;
        if !self.peers.contains_key(from) && self.peers.len() >= self.max_peers {
            if let Some(oldest) = self
                .peers
                .iter()
                .min_by_key(|(_, w)| w.last_seen)
                .map(|(k, _)| k.clone())
            {
                if let Some(w) = self.peers.remove(&oldest) {
                    self.total -= w.order.len();
                }
            }
        }
        let window = self.peers.entry(from.clone()).or_insert_with(|| Window {
            floor,
            ..Window::default()
        });
        window.last_seen = self.tick;
        if !window.ids.insert(id.clone()) {
            return;
        }
        window.order.push_back((id.clone(), sent_at));
        self.total += 1;
        if window.order.len() > self.per_peer {
            if let Some((old, old_sent)) = window.order.pop_front() {
                window.ids.remove(&old);
                window.floor = window.floor.max(old_sent);
                self.total -= 1;
            }
        }
        while self.total > self.max_ids {
            self.forget_oldest_id(from);
        }
    }

    /// Forgets the oldest id of the sender seen least recently, other than `keep` if there is any
    /// other; a sender left without ids is forgotten.
    fn forget_oldest_id(&mut self, keep: &ClientId) {
        let victim = self
            .peers
            .iter()
            .filter(|(k, _)| *k != keep)
            .min_by_key(|(_, w)| w.last_seen)
            .map(|(k, _)| k.clone())
            .unwrap_or_else(|| keep.clone());
        let Some(window) = self.peers.get_mut(&victim) else {
            // Unreachable while `total` counts ids that exist; never loop on it.
            self.total = 0;
            return;
        };
        if let Some((old, old_sent)) = window.order.pop_front() {
            window.ids.remove(&old);
            window.floor = window.floor.max(old_sent);
            self.total -= 1;
        }
        if window.order.is_empty() {
            self.peers.remove(&victim);
        }
    }

    #[cfg(test)]
    fn total(&self) -> usize {
        debug_assert_eq!(
            self.total,
            self.peers.values().map(|w| w.order.len()).sum::<usize>()
        );
        self.total
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn c(s: &str) -> ClientId {
        ClientId::new(s).unwrap()
    }
    fn m(s: &str) -> MessageId {
        MessageId::new(s).unwrap()
    }

    #[test]
    fn detects_replays_per_sender() {
        let mut g = Pool::new(2, 2, 100);
        let rec = |g: &mut Pool, f: &str, i: &str| {
            if g.seen(&c(f), &m(i)) {
                return false;
            }
            g.insert(&c(f), &m(i), 0, 0);
            true
        };
        assert!(rec(&mut g, "a", "1"));
        assert!(!rec(&mut g, "a", "1"));
        assert!(g.seen(&c("a"), &m("1")));
        // Same id from another sender is not a replay.
        assert!(rec(&mut g, "b", "1"));
        // Window of 2: the oldest id falls out.
        assert!(rec(&mut g, "a", "2"));
        assert!(rec(&mut g, "a", "3"));
        assert!(!g.seen(&c("a"), &m("1")));
        // Third sender evicts the least recently seen (b).
        assert!(rec(&mut g, "z", "9"));
        assert!(!g.seen(&c("b"), &m("1")));
        assert!(g.seen(&c("a"), &m("3")));
        assert_eq!(g.total(), 3);
    }

    #[test]
    fn holds_at_most_max_ids_in_all() {
        let mut g = Pool::new(100, 100, 5);
        for i in 0..4 {
            g.insert(&c("old"), &m(&format!("o{i}")), 0, 0);
        }
        for i in 0..50 {
            g.insert(&c(&format!("s{i}")), &m("x"), 0, 0);
            assert!(g.total() <= 5);
        }
        // The sender seen least recently lost its ids first; the newest are remembered.
        assert!(!g.seen(&c("old"), &m("o3")));
        assert!(g.seen(&c("s49"), &m("x")));
        // One busy sender alone keeps its newest ids.
        let mut g = Pool::new(100, 100, 3);
        for i in 0..10 {
            g.insert(&c("a"), &m(&format!("{i}")), 0, 0);
        }
        assert_eq!(g.total(), 3);
        assert!(g.seen(&c("a"), &m("9")) && !g.seen(&c("a"), &m("6")));
    }

    #[test]
    fn unsigned_senders_never_push_out_a_signed_sender() {
        let store = MemoryReplayStore::default();
        let mut g = ReplayGuard::new(16, (4, 64), (4, 64));
        let bob = c("bob");
        assert_eq!(
            g.record_signed(&store, &bob, &m("b1"), 1_000).unwrap(),
            Fresh::New
        );
        for i in 0..1_100 {
            assert!(g.record_unsigned(&c(&format!("fresh{i}")), &m("x")));
        }
        assert!(g.seen_signed(&bob, &m("b1")));
        assert_eq!(
            g.record_signed(&store, &bob, &m("b1"), 1_000).unwrap(),
            Fresh::Duplicate
        );
        // Unsigned duplicates are still caught within their own pool.
        assert!(!g.record_unsigned(&c("fresh1099"), &m("x")));
    }

    #[test]
    fn a_forgotten_signed_sender_is_still_protected_by_its_mark() {
        let store = MemoryReplayStore::default();
        // Room for two signed senders only.
        let mut g = ReplayGuard::new(16, (2, 64), (2, 64));
        let bob = c("bob");
        assert_eq!(
            g.record_signed(&store, &bob, &m("b1"), 1_000).unwrap(),
            Fresh::New
        );
        assert_eq!(
            g.record_signed(&store, &bob, &m("b2"), 2_000).unwrap(),
            Fresh::New
        );
        // Other signed senders push bob's window out.
        for i in 0..10 {
            g.record_signed(&store, &c(&format!("s{i}")), &m("x"), 5_000)
                .unwrap();
        }
        assert!(!g.seen_signed(&bob, &m("b1")));
        // A replay of either old message is refused by the mark; a newer message passes.
        assert_eq!(
            g.record_signed(&store, &bob, &m("b1"), 1_000).unwrap(),
            Fresh::BelowMark
        );
        assert_eq!(
            g.record_signed(&store, &bob, &m("b2"), 2_000).unwrap(),
            Fresh::BelowMark
        );
        assert_eq!(
            g.record_signed(&store, &bob, &m("b3"), 2_001).unwrap(),
            Fresh::New
        );
        // A restart: a new guard, the same (durable) store.
        let mut g = ReplayGuard::new(16, (2, 64), (2, 64));
        assert_eq!(
            g.record_signed(&store, &bob, &m("b3"), 2_001).unwrap(),
            Fresh::BelowMark
        );
        // Out-of-order messages are fine while the window remembers: only what was forgotten
        // sets the floor.
        assert_eq!(
            g.record_signed(&store, &bob, &m("b5"), 9_000).unwrap(),
            Fresh::New
        );
        assert_eq!(
            g.record_signed(&store, &bob, &m("b4"), 8_000).unwrap(),
            Fresh::New
        );
    }

    #[test]
    fn a_window_trimmed_by_its_own_length_keeps_its_floor() {
        let store = MemoryReplayStore::default();
        let mut g = ReplayGuard::new(2, (8, 64), (8, 64));
        let bob = c("bob");
        for (i, t) in [(1, 100), (2, 300), (3, 200)] {
            assert_eq!(
                g.record_signed(&store, &bob, &m(&format!("{i}")), t)
                    .unwrap(),
                Fresh::New
            );
        }
        // "1" (sentAt 100) fell out: its replay is below the floor.
        assert_eq!(
            g.record_signed(&store, &bob, &m("1"), 100).unwrap(),
            Fresh::BelowMark
        );
        assert_eq!(
            g.record_signed(&store, &bob, &m("3"), 200).unwrap(),
            Fresh::Duplicate
        );
    }

    #[derive(Debug)]
    struct Broken;
    impl ReplayStore for Broken {
        fn high_water_mark(&self, _: &ClientId) -> Result<Option<u64>, PeerError> {
            Err(PeerError::KeyStore("disk gone".into()))
        }
        fn raise_high_water_mark(&self, _: &ClientId, _: u64) -> Result<(), PeerError> {
            Err(PeerError::KeyStore("disk gone".into()))
        }
    }

    #[test]
    fn a_failing_store_records_nothing() {
        let mut g = ReplayGuard::new(16, (4, 64), (4, 64));
        assert!(g.record_signed(&Broken, &c("bob"), &m("1"), 5).is_err());
        assert!(!g.seen_signed(&c("bob"), &m("1")));
        let store = MemoryReplayStore::default();
        assert_eq!(
            g.record_signed(&store, &c("bob"), &m("1"), 5).unwrap(),
            Fresh::New
        );
    }

    #[test]
    fn the_memory_store_only_raises_and_is_bounded() {
        let store = MemoryReplayStore::with_capacity(2);
        store.raise_high_water_mark(&c("a"), 10).unwrap();
        store.raise_high_water_mark(&c("a"), 5).unwrap();
        assert_eq!(store.high_water_mark(&c("a")).unwrap(), Some(10));
        store.raise_high_water_mark(&c("b"), 1).unwrap();
        store.raise_high_water_mark(&c("a"), 11).unwrap();
        store.raise_high_water_mark(&c("c"), 1).unwrap();
        // b was raised least recently.
        assert_eq!(store.high_water_mark(&c("b")).unwrap(), None);
        assert_eq!(store.high_water_mark(&c("a")).unwrap(), Some(11));
        assert_eq!(store.high_water_mark(&c("c")).unwrap(), Some(1));
    }

    #[test]
    fn freshness_window() {
        let day = 24 * 3600 * 1000;
        let now = 100 * day;
        assert!(freshness(now, now).is_ok());
        assert!(
            freshness(now - 7 * day, now).is_ok(),
            "a week in the mailbox"
        );
        assert!(freshness(now + 60_000, now).is_ok(), "a minute of skew");
        assert_eq!(
            freshness(now - 9 * day, now),
            Err(RejectReason::TooOld {
                sent_at: now - 9 * day
            })
        );
        assert_eq!(
            freshness(now + day, now),
            Err(RejectReason::FromTheFuture { sent_at: now + day })
        );
        assert!(freshness(0, u64::MAX).is_err());
        assert!(freshness(u64::MAX, 0).is_err());
    }
}
