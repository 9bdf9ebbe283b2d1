//! The admin API's brake on guessing: failed authentications per source address, with a backoff
//! that doubles. Held in the server state and consulted by the admin API.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::limits::{
    ADMIN_BACKOFF_BASE, ADMIN_BACKOFF_MAX, ADMIN_FREE_FAILURES, ADMIN_TRACKED_SOURCES,
};

/// Failed admin authentications per source address. After [`ADMIN_FREE_FAILURES`] failures a
/// source is refused (429, without looking at its token) for a delay that doubles with every
/// further failure, up to [`ADMIN_BACKOFF_MAX`]; a success forgets its failures.
#[derive(Debug, Default)]
pub struct AdminGuard {
    // std Mutex: one map lookup per admin request; never held across an await.
    sources: Mutex<HashMap<IpAddr, Failures>>,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    blocked_until: Option<Instant>,
}

impl AdminGuard {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Failures>> {
        self.sources
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How long `ip` must still wait, if it is blocked.
    pub fn blocked(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let until = self.lock().get(&ip)?.blocked_until?;
        (until > now).then(|| until - now)
    }

    /// Records a failure of `ip`; returns the delay it now has to wait, if any.
    pub fn failed(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let mut sources = self.lock();
        if sources.len() >= ADMIN_TRACKED_SOURCES && !sources.contains_key(&ip) {
            sources.retain(|_, f| f.blocked_until.is_some_and(|u| u > now));
            if sources.len() >= ADMIN_TRACKED_SOURCES {
                // Still full of blocked sources: keep them, do not track a new one.
                return None;
            }
        }
        let f = sources.entry(ip).or_insert(Failures {
            count: 0,
            blocked_until: None,
        });
        f.count = f.count.saturating_add(1);
        let over = f.count.checked_sub(ADMIN_FREE_FAILURES + 1)?;
        let delay = ADMIN_BACKOFF_BASE
            .checked_mul(2u32.saturating_pow(over.min(31)))
            .unwrap_or(ADMIN_BACKOFF_MAX)
            .min(ADMIN_BACKOFF_MAX);
        f.blocked_until = Some(now + delay);
        Some(delay)
    }

    /// Forgets `ip`'s failures.
    pub fn succeeded(&self, ip: IpAddr) {
        self.lock().remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_backoff_starts_after_the_free_failures_and_grows() {
        let guard = AdminGuard::default();
        let ip = IpAddr::from([192, 0, 2, 1]);
        let now = Instant::now();
        for _ in 0..ADMIN_FREE_FAILURES {
            assert_eq!(guard.failed(ip, now), None);
        }
        assert_eq!(guard.blocked(ip, now), None);
        let first = guard.failed(ip, now).unwrap();
        let second = guard.failed(ip, now).unwrap();
        assert!(second > first);
        assert!(guard.blocked(ip, now).is_some());
        assert_eq!(guard.blocked(ip, now + ADMIN_BACKOFF_MAX), None);
        for _ in 0..100 {
            assert!(guard.failed(ip, now).unwrap() <= ADMIN_BACKOFF_MAX);
        }
        assert_eq!(guard.blocked(IpAddr::from([192, 0, 2, 2]), now), None);
        guard.succeeded(ip);
        assert_eq!(guard.blocked(ip, now), None);
    }
}
