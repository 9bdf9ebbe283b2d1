//! State shared by every task of one server.

use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::Arc;
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
