//! Messages refused for a reason that may pass ([`crate::RejectReason::is_transient`]), kept so
//! that they can be opened again on this connection as soon as the reason is gone, without waiting
//! for the server's redelivery after a reconnect; and [`Refusals`], which counts how often each
//! such message was refused, so that none is held back forever.
//!
//! A held message is also *not acknowledged*, so the server keeps its copy: this store is only a
//! shortcut. It is bounded ([`crate::defaults::HELD_MESSAGES`]; the oldest is dropped first, the
//! server still has it) and emptied when a connection ends, because the server then puts every
//! unacknowledged message back into the mailbox and delivers it again after re-registration.
//!
//! A message is released when its sender's next message opens, when a key change is accepted,
//! or, if it was held with a retry time, when that time comes.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use lattice_protocol::{ClientId, Delivered, MessageId};
use tokio::time::Instant;

#[derive(Debug)]
pub(crate) struct Held {
    waiting: VecDeque<(Delivered, Option<Instant>)>,
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

    /// Keeps `d` until [`Held::release`] names its sender or, with `retry_at`, until
    /// [`Held::release_due`] reaches that time. A copy of a message already held (the same sender
    /// and message id) replaces nothing and is not kept twice.
    pub(crate) fn hold(&mut self, d: Delivered, retry_at: Option<Instant>) {
        if self.capacity == 0 {
            return;
        }
        let same = |h: &Delivered| h.from_id == d.from_id && h.message_id == d.message_id;
        if d.message_id.is_some()
            && (self.waiting.iter().any(|(h, _)| same(h)) || self.ready.iter().any(same))
        {
            return;
        }
        if self.waiting.len() >= self.capacity {
            self.waiting.pop_front();
        }
        self.waiting.push_back((d, retry_at));
    }

    /// Moves every message held from `from` to the ready queue, oldest first; returns how many.
    pub(crate) fn release(&mut self, from: &ClientId) -> usize {
        self.release_where(|d, _| &d.from_id == from)
    }

    /// Moves every message whose retry time is `now` or earlier to the ready queue; returns how
    /// many.
    pub(crate) fn release_due(&mut self, now: Instant) -> usize {
        self.release_where(|_, at| at.is_some_and(|at| at <= now))
    }

    /// The earliest retry time of a held message, if any has one.
    pub(crate) fn next_retry(&self) -> Option<Instant> {
        self.waiting.iter().filter_map(|(_, at)| *at).min()
    }

    fn release_where(
        &mut self,
        mut pick: impl FnMut(&Delivered, Option<Instant>) -> bool,
    ) -> usize {
        let mut moved = 0;
        let mut keep = VecDeque::with_capacity(self.waiting.len());
        for (d, at) in self.waiting.drain(..) {
            if pick(&d, at) {
                self.ready.push_back(d);
                moved += 1;
            } else {
                keep.push_back((d, at));
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
        self.waiting.retain(|(h, _)| other(h));
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

/// When to give up on a message refused again and again, and how long to wait between retries.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RetryPolicy {
    /// First retry delay; doubles after each refusal.
    pub(crate) base: Duration,
    /// Longest retry delay.
    pub(crate) max: Duration,
    /// Give up after at least this many refusals...
    pub(crate) max_refusals: u32,
    /// ...spread over at least this long.
    pub(crate) give_up_after: Duration,
}

impl RetryPolicy {
    pub(crate) fn from_defaults() -> Self {
        use crate::defaults;
        Self {
            base: defaults::TRANSIENT_RETRY_BASE,
            max: defaults::TRANSIENT_RETRY_MAX,
            max_refusals: defaults::MAX_TRANSIENT_REFUSALS,
            give_up_after: defaults::TRANSIENT_GIVE_UP_AFTER,
        }
    }
}

/// What to do with a message just refused for a retried transient reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Hold it and open it again at this time; `first` if this was its first refusal.
    Retry { at: Instant, first: bool },
    /// Refused too often for too long: acknowledge it and report it as given up.
    GiveUp { attempts: u32 },
}

/// How often each message (sender, message id) was refused for a retried transient reason, and
/// since when; at most `capacity` messages (the oldest count is forgotten first). Survives
/// reconnects, so the server's redeliveries count too.
#[derive(Debug)]
pub(crate) struct Refusals {
    policy: RetryPolicy,
    capacity: usize,
    order: VecDeque<(ClientId, MessageId)>,
    map: HashMap<(ClientId, MessageId), (u32, Instant)>,
}

impl Refusals {
    pub(crate) fn new(policy: RetryPolicy, capacity: usize) -> Self {
        Self {
            policy,
            capacity: capacity.max(1),
            order: VecDeque::new(),
            map: HashMap::new(),
        }
    }

    /// Counts one more refusal of `id` from `from` at `now` and decides.
    pub(crate) fn refused(&mut self, from: &ClientId, id: &MessageId, now: Instant) -> Verdict {
        let key = (from.clone(), id.clone());
        let (count, first) = match self.map.get_mut(&key) {
            Some(entry) => {
                entry.0 = entry.0.saturating_add(1);
                *entry
            }
            None => {
                self.map.insert(key.clone(), (1, now));
                self.order.push_back(key.clone());
                while self.order.len() > self.capacity {
                    if let Some(old) = self.order.pop_front() {
                        self.map.remove(&old);
                    }
                }
                (1, now)
            }
        };
        if count >= self.policy.max_refusals
            && now.saturating_duration_since(first) >= self.policy.give_up_after
        {
            self.forget(from, id);
            return Verdict::GiveUp { attempts: count };
        }
        let doublings = count.saturating_sub(1).min(16);
        let delay = self
            .policy
            .base
            .saturating_mul(1u32 << doublings)
            .min(self.policy.max);
        Verdict::Retry {
            at: now + delay,
            first: count == 1,
        }
    }

    /// Forgets the count of `id` from `from`: it was delivered or given up.
    pub(crate) fn forget(&mut self, from: &ClientId, id: &MessageId) {
        let key = (from.clone(), id.clone());
        if self.map.remove(&key).is_some() {
            self.order.retain(|k| k != &key);
        }
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

    impl Held {
        fn hold_now(&mut self, d: Delivered) {
            self.hold(d, None);
        }
    }

    fn ids(h: &mut Held) -> Vec<String> {
        std::iter::from_fn(|| h.next_ready())
            .map(|d| d.message_id.unwrap().as_str().to_owned())
            .collect()
    }

    #[test]
    fn release_is_per_sender_in_arrival_order() {
        let mut h = Held::new(8);
        h.hold_now(delivered("bob", "b1"));
        h.hold_now(delivered("carol", "c1"));
        h.hold_now(delivered("bob", "b2"));
        assert_eq!(h.release(&"bob".parse().unwrap()), 2);
        assert_eq!(ids(&mut h), ["b1", "b2"]);
        assert_eq!(h.release(&"bob".parse().unwrap()), 0);
        assert_eq!(h.release(&"carol".parse().unwrap()), 1);
        assert_eq!(ids(&mut h), ["c1"]);
    }

    #[test]
    fn bounded_and_deduplicated() {
        let mut h = Held::new(2);
        h.hold_now(delivered("bob", "1"));
        h.hold_now(delivered("bob", "1"));
        h.hold_now(delivered("bob", "2"));
        h.hold_now(delivered("bob", "3"));
        h.release(&"bob".parse().unwrap());
        assert_eq!(ids(&mut h), ["2", "3"], "the oldest goes first when full");
    }

    #[test]
    fn a_delivered_copy_is_settled() {
        let mut h = Held::new(4);
        h.hold_now(delivered("bob", "1"));
        h.hold_now(delivered("bob", "2"));
        h.settle(&"bob".parse().unwrap(), Some(&"1".parse().unwrap()));
        h.settle(&"carol".parse().unwrap(), Some(&"2".parse().unwrap()));
        h.release(&"bob".parse().unwrap());
        assert_eq!(ids(&mut h), ["2"]);
    }

    #[test]
    fn clear_forgets_both_queues() {
        let mut h = Held::new(4);
        h.hold_now(delivered("bob", "1"));
        h.hold_now(delivered("bob", "2"));
        h.release(&"bob".parse().unwrap());
        h.hold_now(delivered("bob", "3"));
        h.clear();
        assert_eq!(h.release(&"bob".parse().unwrap()), 0);
        assert!(h.next_ready().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_message_with_a_retry_time_is_released_when_it_comes() {
        let mut h = Held::new(8);
        let now = Instant::now();
        h.hold(delivered("bob", "1"), Some(now + Duration::from_secs(5)));
        h.hold(delivered("bob", "2"), None);
        h.hold(delivered("carol", "3"), Some(now + Duration::from_secs(2)));
        assert_eq!(h.next_retry(), Some(now + Duration::from_secs(2)));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(h.release_due(Instant::now()), 1);
        assert_eq!(ids(&mut h), ["3"]);
        assert_eq!(h.next_retry(), Some(now + Duration::from_secs(5)));
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(h.release_due(Instant::now()), 1);
        assert_eq!(ids(&mut h), ["1"]);
        // No retry time: only its sender releases it.
        assert_eq!(h.next_retry(), None);
        assert_eq!(h.release_due(Instant::now() + Duration::from_secs(3600)), 0);
        assert_eq!(h.release(&"bob".parse().unwrap()), 1);
    }

    fn policy() -> RetryPolicy {
        RetryPolicy {
            base: Duration::from_secs(5),
            max: Duration::from_secs(60),
            max_refusals: 5,
            give_up_after: Duration::from_secs(600),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_message_is_retried_with_backoff_and_given_up_after_count_and_time() {
        let mut r = Refusals::new(policy(), 16);
        let (bob, m1): (ClientId, MessageId) = ("bob".parse().unwrap(), "1".parse().unwrap());
        let mut delays = Vec::new();
        loop {
            let now = Instant::now();
            match r.refused(&bob, &m1, now) {
                Verdict::Retry { at, first } => {
                    assert_eq!(first, delays.is_empty());
                    delays.push((at - now).as_secs());
                    tokio::time::advance(at - now).await;
                }
                Verdict::GiveUp { attempts } => {
                    assert!(attempts >= 5);
                    break;
                }
            }
            assert!(delays.len() < 100, "never given up");
        }
        // Doubling from 5 s, capped at 60 s; five refusals are not enough before ten minutes.
        assert_eq!(delays[..6], [5, 10, 20, 40, 60, 60]);
        let waited: u64 = delays.iter().sum();
        assert!(waited >= 600, "{waited}");
        // Given up: counting starts afresh.
        assert!(matches!(
            r.refused(&bob, &m1, Instant::now()),
            Verdict::Retry { first: true, .. }
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn many_quick_refusals_alone_do_not_give_up() {
        let mut r = Refusals::new(policy(), 16);
        let (bob, m1): (ClientId, MessageId) = ("bob".parse().unwrap(), "1".parse().unwrap());
        for _ in 0..50 {
            assert!(matches!(
                r.refused(&bob, &m1, Instant::now()),
                Verdict::Retry { .. }
            ));
        }
        tokio::time::advance(Duration::from_secs(600)).await;
        assert_eq!(
            r.refused(&bob, &m1, Instant::now()),
            Verdict::GiveUp { attempts: 51 }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_tally_is_bounded_and_forgets() {
        let mut r = Refusals::new(policy(), 2);
        let bob: ClientId = "bob".parse().unwrap();
        let now = Instant::now();
        for i in 0..10 {
            r.refused(&bob, &format!("{i}").parse().unwrap(), now);
        }
        assert_eq!(r.map.len(), 2);
        assert_eq!(r.order.len(), 2);
        r.forget(&bob, &"9".parse().unwrap());
        assert_eq!(r.map.len(), 1);
    }
}
