//! State shared by every task of one server.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::hub::{Hub, Sessions};
use crate::metrics::Metrics;
use crate::questions::Questions;
use crate::store::{Directory, Mailbox, SqliteStore};

/// Everything a session, the HTTP handlers and the sweeper share.
#[derive(Debug)]
pub struct ServerState {
    /// Validated configuration.
    pub config: Config,
    /// Routing and presence.
    pub hub: Arc<dyn Hub>,
    /// Id bindings.
    pub directory: Arc<dyn Directory>,
    /// Offline messages.
    pub mailbox: Arc<dyn Mailbox>,
    /// The SQLite store behind both (for checkpoints).
    pub store: Arc<SqliteStore>,
    /// The group commit of every session's durable path.
    pub writer: Arc<crate::writer::Writer>,
    /// Server questions.
    pub questions: Questions,
    /// Counters.
    pub metrics: Metrics,
    /// Every open connection.
    pub sessions: Sessions,
    /// Connections admitted and not yet closed (the cap counts these).
    pub open_connections: AtomicUsize,
    /// Connection id source.
    pub next_conn: AtomicU64,
    /// Time base for `last_seen` (tokio's clock, so timeouts can be tested on paused time).
    pub started: tokio::time::Instant,
    /// Cancelled once, at shutdown.
    pub shutdown: CancellationToken,
    /// Owns every session task, so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// Registrations held per source address.
    pub addresses: AddressSlots,
    /// Failed admin authentications per source address.
    pub admin_guard: crate::admin_guard::AdminGuard,
    /// New verified ids minted per source address (`--new-ids-per-ip`).
    pub new_ids: NewIdLimiter,
    /// The bytes of every message held for an `ack` ([`crate::inflight`]).
    pub in_flight_budget: Arc<crate::inflight::Budget>,
    /// Large messages (a big group's `group_commit`) being read at once ([`crate::ws`]).
    pub large_messages: crate::ws::LargeMessages,
    /// The blob store (`None` without `--data-dir`: blobs are off).
    pub blobs: Option<Arc<crate::blobs::Blobs>>,
    /// Live blob tokens (`blob_token` frames).
    pub blob_tokens: crate::blobs::Tokens,
    /// This server as a node of several on Redis (`--redis`); `None` for a single node.
    pub node: Option<Arc<crate::node::Node>>,
}

/// The allowance of new verified ids per source address (IPv6 grouped by its /64): a bucket of
/// `per_window` that refills evenly over [`crate::limits::NEW_ID_WINDOW`]. Time is passed in, so
/// tests run on a synthetic clock.
#[derive(Debug, Default)]
pub struct NewIdLimiter {
    // std Mutex: one map update per new id; never held across an await.
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl NewIdLimiter {
    /// Takes one new id's allowance for `ip` at `now`; false when none is left. `per_window` 0
    /// means no limit.
    pub fn allow(&self, ip: IpAddr, per_window: u32, now: Instant) -> bool {
        use crate::limits::{NEW_ID_TRACKED_SOURCES, NEW_ID_WINDOW};
        if per_window == 0 {
            return true;
        }
        let cap = f64::from(per_window);
        let rate = cap / NEW_ID_WINDOW.as_secs_f64();
        let refilled = |tokens: f64, last: Instant| {
            (tokens + now.saturating_duration_since(last).as_secs_f64() * rate).min(cap)
        };
        let key = address_group(ip);
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !buckets.contains_key(&key) && buckets.len() >= NEW_ID_TRACKED_SOURCES {
            buckets.retain(|_, (tokens, last)| refilled(*tokens, *last) < cap);
            if buckets.len() >= NEW_ID_TRACKED_SOURCES {
                // Memory bound reached with every entry still limited: let this one through
                // (the directory cap still bounds the disk).
                return true;
            }
        }
        let (tokens, last) = buckets.entry(key).or_insert((cap, now));
        *tokens = refilled(*tokens, *last);
        *last = (*last).max(now);
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Registrations held per source address (IPv6 grouped by its /64), for
/// `--max-registrations-per-ip`.
#[derive(Debug, Default)]
pub struct AddressSlots {
    // std Mutex: one map update per registration and per disconnect; never held across an await.
    held: Mutex<HashMap<IpAddr, usize>>,
}

/// The key an address is counted under: IPv4 as is (IPv4-mapped IPv6 too), IPv6 by its prefix.
pub fn address_group(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6);
                let mask = u128::MAX
                    .checked_shl(128 - crate::limits::IPV6_GROUP_PREFIX)
                    .unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(bits & mask))
            }
        },
    }
}

impl AddressSlots {
    /// Takes a slot for `ip` if it holds fewer than `max`; false otherwise.
    pub fn acquire(&self, ip: IpAddr, max: usize) -> bool {
        let mut held = self.lock();
        let n = held.entry(address_group(ip)).or_insert(0);
        if *n >= max {
            return false;
        }
        *n += 1;
        true
    }

    /// Gives a slot back.
    pub fn release(&self, ip: IpAddr) {
        let mut held = self.lock();
        let key = address_group(ip);
        if let Some(n) = held.get_mut(&key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(&key);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl ServerState {
    /// Milliseconds since the server started (monotonic).
    pub fn uptime_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// Wall-clock unix milliseconds, for `timestamp` fields.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The allowance on a synthetic clock (no sleeping, no timing assertions).
    #[test]
    fn new_ids_are_limited_per_address_and_refill_over_the_window() {
        let l = NewIdLimiter::default();
        let t0 = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "2001:db8::1".parse().unwrap();
        let b_same_64: IpAddr = "2001:db8::ffff".parse().unwrap();
        for _ in 0..3 {
            assert!(l.allow(a, 3, t0));
        }
        assert!(
            !l.allow(a, 3, t0),
            "the fourth new id within the hour is refused"
        );
        assert!(l.allow(b, 3, t0), "another address has its own allowance");
        assert!(l.allow(b_same_64, 3, t0));
        assert!(l.allow(b, 3, t0));
        assert!(!l.allow(b_same_64, 3, t0), "one /64 is one address");
        // a third of the window gives one back, and never more than the allowance
        assert!(l.allow(a, 3, t0 + Duration::from_secs(1200)));
        assert!(!l.allow(a, 3, t0 + Duration::from_secs(1200)));
        let later = t0 + Duration::from_secs(100 * 3600);
        for _ in 0..3 {
            assert!(l.allow(a, 3, later));
        }
        assert!(!l.allow(a, 3, later));
        assert!(l.allow(a, 0, later), "0 turns the limit off");
    }
}
