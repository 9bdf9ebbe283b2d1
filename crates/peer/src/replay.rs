//! Replay detection: a bounded memory of the message ids seen from each sender.

use std::collections::{HashMap, HashSet, VecDeque};

use lattice_protocol::{ClientId, MessageId};

/// Remembers the last `per_peer` message ids of up to `max_peers` senders, and at most `max_ids`
/// ids in all. When a sender exceeds its window its oldest id is forgotten; when there are too many
/// senders, the one seen least recently is forgotten; when there are too many ids, the oldest id
/// of the sender seen least recently goes. (Senders of unsigned `ml-kem-aes` messages need no
/// identity, so without the total bound they could make this hold millions of ids.) A replay
/// older than the window would pass this check, which is why the window is large and why the
/// desktop app also deduplicates against its stored history.
#[derive(Debug)]
pub(crate) struct ReplayGuard {
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
    order: VecDeque<MessageId>,
    ids: HashSet<MessageId>,
}

impl ReplayGuard {
    pub(crate) fn new(per_peer: usize, max_peers: usize, max_ids: usize) -> Self {
        Self {
            per_peer: per_peer.max(1),
            max_peers: max_peers.max(1),
            max_ids: max_ids.max(1),
            total: 0,
            tick: 0,
            peers: HashMap::new(),
        }
    }

    /// Whether `id` was already seen from `from` (without recording it).
    pub(crate) fn seen(&self, from: &ClientId, id: &MessageId) -> bool {
        self.peers.get(from).is_some_and(|w| w.ids.contains(id))
    }

    /// Records `id` from `from`. Returns `false` if it was already recorded (a replay).
    pub(crate) fn record(&mut self, from: &ClientId, id: &MessageId) -> bool {
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
        let window = self.peers.entry(from.clone()).or_default();
        window.last_seen = self.tick;
        if !window.ids.insert(id.clone()) {
            return false;
        }
        window.order.push_back(id.clone());
        self.total += 1;
        if window.order.len() > self.per_peer {
            if let Some(old) = window.order.pop_front() {
                window.ids.remove(&old);
                self.total -= 1;
            }
        }
        while self.total > self.max_ids {
            self.forget_oldest_id(from);
        }
        true
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
        if let Some(old) = window.order.pop_front() {
            window.ids.remove(&old);
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
    use super::*;

    fn c(s: &str) -> ClientId {
        ClientId::new(s).unwrap()
    }
    fn m(s: &str) -> MessageId {
        MessageId::new(s).unwrap()
    }

    #[test]
    fn detects_replays_per_sender() {
        let mut g = ReplayGuard::new(2, 2, 100);
        assert!(g.record(&c("a"), &m("1")));
        assert!(!g.record(&c("a"), &m("1")));
        assert!(g.seen(&c("a"), &m("1")));
        // Same id from another sender is not a replay.
        assert!(g.record(&c("b"), &m("1")));
        // Window of 2: the oldest id falls out.
        assert!(g.record(&c("a"), &m("2")));
        assert!(g.record(&c("a"), &m("3")));
        assert!(!g.seen(&c("a"), &m("1")));
        // Third sender evicts the least recently seen (b).
        assert!(g.record(&c("z"), &m("9")));
        assert!(!g.seen(&c("b"), &m("1")));
        assert!(g.seen(&c("a"), &m("3")));
        assert_eq!(g.total(), 3);
    }

    #[test]
    fn holds_at_most_max_ids_in_all() {
        let mut g = ReplayGuard::new(100, 100, 5);
        for i in 0..4 {
            assert!(g.record(&c("old"), &m(&format!("o{i}"))));
        }
        for i in 0..50 {
            assert!(g.record(&c(&format!("s{i}")), &m("x")));
            assert!(g.total() <= 5);
        }
        // The sender seen least recently lost its ids first; the newest are remembered.
        assert!(!g.seen(&c("old"), &m("o3")));
        assert!(g.seen(&c("s49"), &m("x")));
        assert!(!g.record(&c("s49"), &m("x")));
        // One busy sender alone keeps its newest ids.
        let mut g = ReplayGuard::new(100, 100, 3);
        for i in 0..10 {
            assert!(g.record(&c("a"), &m(&format!("{i}"))));
        }
        assert_eq!(g.total(), 3);
        assert!(g.seen(&c("a"), &m("9")) && !g.seen(&c("a"), &m("6")));
    }
}
