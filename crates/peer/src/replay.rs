//! Replay detection: a bounded memory of the message ids seen from each sender.

use std::collections::{HashMap, HashSet, VecDeque};

use lattice_protocol::{ClientId, MessageId};

/// Remembers the last `per_peer` message ids of up to `max_peers` senders. When a sender exceeds
/// its window its oldest id is forgotten; when there are too many senders, the one seen least
/// recently is forgotten. A replay older than the window would pass this check, which is why the
/// window is large and why the desktop app also deduplicates against its stored history.
#[derive(Debug)]
pub(crate) struct ReplayGuard {
    per_peer: usize,
    max_peers: usize,
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
    pub(crate) fn new(per_peer: usize, max_peers: usize) -> Self {
        Self {
            per_peer: per_peer.max(1),
            max_peers: max_peers.max(1),
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
                self.peers.remove(&oldest);
            }
        }
        let window = self.peers.entry(from.clone()).or_default();
        window.last_seen = self.tick;
        if !window.ids.insert(id.clone()) {
            return false;
        }
        window.order.push_back(id.clone());
        if window.order.len() > self.per_peer {
            if let Some(old) = window.order.pop_front() {
                window.ids.remove(&old);
            }
        }
        true
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
        let mut g = ReplayGuard::new(2, 2);
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
    }
}
