//! The clock: wall time for what is stored and shown, and the time since start-up for the
//! start-up log. A leaf: everything may use it, it uses nothing of the app.

use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// When the process started (as far as we can tell: when [`mark_start`] was first called), for
/// the start-up time logged when the page first asks for its state.
static STARTED: OnceLock<Instant> = OnceLock::new();

/// Milliseconds since the Unix epoch (0 for a clock before 1970, `i64::MAX` far after).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Records now as the start of the process; later calls change nothing.
pub fn mark_start() {
    let _ = STARTED.set(Instant::now());
}

/// Time since [`mark_start`], if it was called.
pub fn since_start() -> Option<Duration> {
    STARTED.get().map(Instant::elapsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wall_time_is_after_2020_and_start_time_is_recorded_once() {
        // 2020-01-01 in ms: a clock this far back would stamp history wrongly.
        assert!(now_ms() > 1_577_836_800_000);
        mark_start();
        let first = since_start();
        assert!(first.is_some());
        mark_start();
        assert!(since_start() >= first);
    }
}
