//! The cross-node counters for `/metrics`: Redis round trips (a latency histogram), Redis errors,
//! and the node channels' traffic. One [`RedisStats`] is shared by every component of a node
//! (`with_stats`); relaxed atomics, like [`crate::metrics::Metrics`].

use std::fmt::Write as _;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency histogram's buckets, in microseconds (then `+Inf`).
pub const LATENCY_BUCKETS_US: [u64; 10] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 50_000, 250_000, 1_000_000,
];

/// Counters of one node's Redis traffic.
#[derive(Debug, Default)]
pub struct RedisStats {
    /// Payloads published to node and presence channels.
    pub published: AtomicU64,
    /// Payloads received on this node's channels.
    pub received: AtomicU64,
    /// Payloads dropped because this node's inbound queue was full.
    pub dropped: AtomicU64,
    /// Redis commands and scripts that failed (unreachable, timeout, refused).
    pub errors: AtomicU64,
    buckets: [AtomicU64; LATENCY_BUCKETS_US.len()],
    over: AtomicU64,
    sum_us: AtomicU64,
}

impl RedisStats {
    /// Records one round trip of `took`.
    pub fn observe(&self, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        match LATENCY_BUCKETS_US.iter().position(|b| us <= *b) {
            Some(i) => {
                if let Some(b) = self.buckets.get(i) {
                    b.fetch_add(1, Ordering::Relaxed);
                }
            }
            None => {
                self.over.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Runs one Redis round trip, recording its latency, and its failure if it fails.
    pub async fn timed<T, E>(&self, call: impl Future<Output = Result<T, E>>) -> Result<T, E> {
        let start = tokio::time::Instant::now();
        let r = call.await;
        self.observe(start.elapsed());
        if r.is_err() {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    /// Appends the counters and the histogram as Prometheus text.
    pub fn render(&self, out: &mut String) {
        let counters = [
            (
                "lattice_cluster_published_total",
                "Payloads published to node and presence channels.",
                &self.published,
            ),
            (
                "lattice_cluster_received_total",
                "Payloads received on this node's channels.",
                &self.received,
            ),
            (
                "lattice_cluster_dropped_total",
                "Payloads dropped because the node's inbound queue was full.",
                &self.dropped,
            ),
            (
                "lattice_redis_errors_total",
                "Redis commands that failed (unreachable, timeout, refused).",
                &self.errors,
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
        let name = "lattice_redis_latency_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Redis round trips.\n# TYPE {name} histogram"
        );
        let mut cumulative = 0u64;
        for (bound, count) in LATENCY_BUCKETS_US.iter().zip(&self.buckets) {
            cumulative += count.load(Ordering::Relaxed);
            let le = Duration::from_micros(*bound).as_secs_f64();
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        cumulative += self.over.load(Ordering::Relaxed);
        let sum = Duration::from_micros(self.sum_us.load(Ordering::Relaxed)).as_secs_f64();
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

/// `.timed(&stats)` on a Redis call's future: [`RedisStats::timed`] at the call site.
pub trait Timed<T, E>: Future<Output = Result<T, E>> + Sized {
    /// Records this call's latency, and its failure if it fails, in `stats`.
    fn timed<'a>(self, stats: &'a RedisStats) -> impl Future<Output = Result<T, E>> + 'a
    where
        Self: 'a,
        T: 'a,
        E: 'a,
    {
        stats.timed(self)
    }
}

impl<T, E, F: Future<Output = Result<T, E>>> Timed<T, E> for F {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_histogram_is_cumulative_and_counts_every_round_trip() {
        let s = RedisStats::default();
        s.observe(Duration::from_micros(80));
        s.observe(Duration::from_micros(300));
        s.observe(Duration::from_millis(3));
        s.observe(Duration::from_secs(5));
        s.errors.fetch_add(1, Ordering::Relaxed);
        let mut out = String::new();
        s.render(&mut out);
        for line in [
            "lattice_redis_latency_seconds_bucket{le=\"0.0001\"} 1",
            "lattice_redis_latency_seconds_bucket{le=\"0.0005\"} 2",
            "lattice_redis_latency_seconds_bucket{le=\"0.005\"} 3",
            "lattice_redis_latency_seconds_bucket{le=\"1\"} 3",
            "lattice_redis_latency_seconds_bucket{le=\"+Inf\"} 4",
            "lattice_redis_latency_seconds_count 4",
            "lattice_redis_errors_total 1",
        ] {
            assert!(out.lines().any(|l| l == line), "{line} in\n{out}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_timed_call_records_its_latency_and_its_failure() {
        let s = RedisStats::default();
        let ok: Result<u8, ()> = s
            .timed(async {
                tokio::time::sleep(Duration::from_millis(2)).await;
                Ok(1)
            })
            .await;
        assert_eq!(ok, Ok(1));
        let failed: Result<u8, ()> = s.timed(async { Err(()) }).await;
        assert!(failed.is_err());
        let mut out = String::new();
        s.render(&mut out);
        assert!(out.contains("lattice_redis_errors_total 1\n"), "{out}");
        assert!(
            out.contains("lattice_redis_latency_seconds_bucket{le=\"0.0025\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("lattice_redis_latency_seconds_bucket{le=\"0.001\"} 1\n"),
            "{out}"
        );
    }
}
