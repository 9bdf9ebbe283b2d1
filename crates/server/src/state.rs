//! State shared by every task of one server.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::hub::{Hub, Sessions};
use crate::metrics::Metrics;
use crate::questions::Questions;
use crate::store::{Directory, Mailbox, SqliteStore};
use crate::Config;

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
    /// Time base for `last_seen`.
    pub started: Instant,
    /// Cancelled once, at shutdown.
    pub shutdown: CancellationToken,
    /// Owns every session task, so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// Registrations held per source address.
    pub addresses: AddressSlots,
    /// Failed admin authentications per source address.
    pub admin_guard: crate::http::AdminGuard,
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
