//! Pacing: the per-connection token bucket behind `--rate-limit`. A connection with no token left
//! is not read until one refills (the socket loop sleeps until [`TokenBucket::ready_at`]); nothing
//! it sent is dropped. Time is tokio's, so tests run it on a paused clock.

use std::time::Duration;

use tokio::time::Instant;

/// The per-connection rate limit: `rate` tokens per second, at most `2 × rate` saved up. A frame
/// costs one token; without one, the session stops reading until [`TokenBucket::ready_at`].
#[derive(Debug)]
pub(crate) struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub(crate) fn new(rate: u32, now: Instant) -> Option<Self> {
        (rate > 0).then(|| Self {
            rate: f64::from(rate),
            tokens: f64::from(rate) * 2.0,
            last: now,
        })
    }
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate * 2.0);
    }
    /// True if a frame may be read now.
    pub(crate) fn available(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= 1.0
    }
    /// Pays for one frame that was read (the balance may go below zero only if reading did not
    /// ask [`Self::available`] first; it is then paid back by waiting longer).
    pub(crate) fn take(&mut self, now: Instant) {
        self.refill(now);
        self.tokens -= 1.0;
    }
    /// When the next token is there (`now` if it already is).
    pub(crate) fn ready_at(&mut self, now: Instant) -> Instant {
        self.refill(now);
        if self.tokens >= 1.0 {
            return now;
        }
        now + Duration::from_secs_f64((1.0 - self.tokens) / self.rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pacing arithmetic, on a synthetic clock (no sleeping, no timing assertions).
    #[test]
    fn the_token_bucket_paces_instead_of_refusing() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, t0).unwrap();
        // the burst: twice the rate
        for _ in 0..20 {
            assert!(b.available(t0));
            b.take(t0);
        }
        assert!(!b.available(t0));
        // the next token is due a tenth of a second later, and is there then
        let due = b.ready_at(t0);
        assert!(due > t0 + Duration::from_millis(99) && due <= t0 + Duration::from_millis(101));
        assert!(b.available(due));
        b.take(due);
        // a long pause refills the burst, never more
        let later = due + Duration::from_secs(3600);
        for _ in 0..20 {
            assert!(b.available(later));
            b.take(later);
        }
        assert!(!b.available(later));
        // a clock that does not move forward never adds tokens
        assert!(!b.available(t0));
        assert!(TokenBucket::new(0, t0).is_none(), "0 turns the limit off");
    }

    /// The socket loop's wait, on tokio's paused clock: sleeping until `ready_at` is exactly
    /// long enough for one more frame, and no sooner.
    #[tokio::test(start_paused = true)]
    async fn a_paced_connection_is_read_again_when_its_next_token_is_due() {
        let mut b = TokenBucket::new(5, Instant::now()).unwrap();
        for _ in 0..10 {
            b.take(Instant::now());
        }
        assert!(
            !b.available(Instant::now()),
            "the burst of 2 × rate is spent"
        );
        let due = b.ready_at(Instant::now());
        tokio::time::sleep_until(due - Duration::from_millis(1)).await;
        assert!(!b.available(Instant::now()), "not before its time");
        tokio::time::sleep_until(due).await;
        assert!(b.available(Instant::now()));
        b.take(Instant::now());
        assert!(!b.available(Instant::now()), "one token, not a burst");
    }
}
