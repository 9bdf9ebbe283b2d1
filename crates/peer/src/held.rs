//! Messages refused for a reason that may pass ([`crate::RejectReason::is_transient`]), kept so
//! that they can be opened again on this connection as soon as the reason is gone, without waiting
//! for the server's redelivery after a reconnect.
//!
//! A held message is also *not acknowledged*, so the server keeps its copy: this store is only a
//! shortcut. It is bounded ([`crate::defaults::HELD_MESSAGES`]; the oldest is dropped first, the
//! server still has it) and emptied when a connection ends, because the server then puts every
//! unacknowledged message back into the mailbox and delivers it again after re-registration.

use std::collections::VecDeque;

use lattice_protocol::{ClientId, Delivered, MessageId};

#[derive(Debug)]
pub(crate) struct Held {
    waiting: VecDeque<Delivered>,
    ready: VecDeque<Delivered>,
    capacity: usize,
}

impl Held {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            waiting: VecDeque::new(),
            ready: VecDeque::new(),
            capacity,
        }
    }

    /// Keeps `d` until [`Held::release`] names its sender. A copy of a message already held (the
    /// same sender and message id) replaces nothing and is not kept twice.
    pub(crate) fn hold(&mut self, d: Delivered) {
        if self.capacity == 0 {
            return;
        }
        let same = |h: &Delivered| h.from_id == d.from_id && h.message_id == d.message_id;
        if d.message_id.is_some() && (self.waiting.iter().any(same) || self.ready.iter().any(same))
        {
            return;
        }
        if self.waiting.len() >= self.capacity {
            self.waiting.pop_front();
        }
        self.waiting.push_back(d);
    }

    /// Moves every message held from `from` to the ready queue, oldest first; returns how many.
    pub(crate) fn release(&mut self, from: &ClientId) -> usize {
        let mut moved = 0;
        let mut keep = VecDeque::with_capacity(self.waiting.len());
        for d in self.waiting.drain(..) {
            if &d.from_id == from {
                self.ready.push_back(d);
                moved += 1;
            } else {
                keep.push_back(d);
            }
        }
        self.waiting = keep;
        moved
    }

    /// Forgets any copy of the message `id` from `from`: it has just been delivered.
    pub(crate) fn settle(&mut self, from: &ClientId, id: Option<&MessageId>) {
        if id.is_none() {
            return;
        }
        let other = |h: &Delivered| &h.from_id != from || h.message_id.as_ref() != id;
        self.waiting.retain(other);
        self.ready.retain(other);
    }

    /// The next released message to open again.
    pub(crate) fn next_ready(&mut self) -> Option<Delivered> {
        self.ready.pop_front()
    }

    /// Forgets everything: the connection these messages came on has ended.
    pub(crate) fn clear(&mut self) {
        self.waiting.clear();
        self.ready.clear();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn delivered(from: &str, id: &str) -> Delivered {
        serde_json::from_value(serde_json::json!({
            "message": {"algorithm": "lattice-v1", "cipherText": "", "encryptedData": ""},
            "fromId": from,
            "messageId": id,
            "timestamp": 1,
        }))
        .unwrap()
    }

    fn ids(h: &mut Held) -> Vec<String> {
        std::iter::from_fn(|| h.next_ready())
            .map(|d| d.message_id.unwrap().as_str().to_owned())
            .collect()
    }

    #[test]
    fn release_is_per_sender_in_arrival_order() {
        let mut h = Held::new(8);
        h.hold(delivered("bob", "b1"));
        h.hold(delivered("carol", "c1"));
        h.hold(delivered("bob", "b2"));
        assert_eq!(h.release(&"bob".parse().unwrap()), 2);
        assert_eq!(ids(&mut h), ["b1", "b2"]);
        assert_eq!(h.release(&"bob".parse().unwrap()), 0);
        assert_eq!(h.release(&"carol".parse().unwrap()), 1);
        assert_eq!(ids(&mut h), ["c1"]);
    }

    #[test]
    fn bounded_and_deduplicated() {
        let mut h = Held::new(2);
        h.hold(delivered("bob", "1"));
        h.hold(delivered("bob", "1"));
        h.hold(delivered("bob", "2"));
        h.hold(delivered("bob", "3"));
        h.release(&"bob".parse().unwrap());
        assert_eq!(ids(&mut h), ["2", "3"], "the oldest goes first when full");
    }

    #[test]
    fn a_delivered_copy_is_settled() {
        let mut h = Held::new(4);
        h.hold(delivered("bob", "1"));
        h.hold(delivered("bob", "2"));
        h.settle(&"bob".parse().unwrap(), Some(&"1".parse().unwrap()));
        h.settle(&"carol".parse().unwrap(), Some(&"2".parse().unwrap()));
        h.release(&"bob".parse().unwrap());
        assert_eq!(ids(&mut h), ["2"]);
    }

    #[test]
    fn clear_forgets_both_queues() {
        let mut h = Held::new(4);
        h.hold(delivered("bob", "1"));
        h.hold(delivered("bob", "2"));
        h.release(&"bob".parse().unwrap());
        h.hold(delivered("bob", "3"));
        h.clear();
        assert_eq!(h.release(&"bob".parse().unwrap()), 0);
        assert!(h.next_ready().is_none());
    }
}
