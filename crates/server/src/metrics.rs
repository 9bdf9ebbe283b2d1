//! Counters for `/metrics` (Prometheus text format). A handful of relaxed atomics: cheap enough for
//! the hot path, and not worth a metrics framework.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Server counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Connections accepted since start.
    pub connections_total: AtomicU64,
    /// Upgrades refused for the connection cap or a browser origin that is not allowed.
    pub connections_refused: AtomicU64,
    /// Frames received.
    pub frames_in: AtomicU64,
    /// Frames written.
    pub frames_out: AtomicU64,
    /// `message` frames answered `delivered`: acknowledged by their (verified) recipient, or
    /// handed to a live session (unverified recipients, the durable fallback).
    pub messages_delivered: AtomicU64,
    /// `message` frames stored in a mailbox.
    pub messages_queued: AtomicU64,
    /// `error` frames sent.
    pub errors_sent: AtomicU64,
    /// Times a connection's reading was paused by the rate limit (frames are never refused).
    pub rate_limited: AtomicU64,
    /// Connections closed by the server for policy (garbage, slow, idle).
    pub policy_closes: AtomicU64,
    /// Successful registrations.
    pub registrations: AtomicU64,
    /// Registrations of new verified ids refused (per-address rate, or the directory cap).
    pub new_ids_refused: AtomicU64,
    /// Bindings deleted after `--binding-ttl` without a registration.
    pub bindings_expired: AtomicU64,
}

impl Metrics {
    /// Adds one to `counter`.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Renders all counters and the given gauges as Prometheus text.
    pub fn render(&self, connections: usize, registered: usize) -> String {
        let mut out = String::with_capacity(1024);
        let counters: [(&str, &str, &AtomicU64); 12] = [
            (
                "lattice_connections_total",
                "Connections accepted.",
                &self.connections_total,
            ),
            (
                "lattice_connections_refused_total",
                "Upgrades refused at the connection cap or for a browser origin not allowed.",
                &self.connections_refused,
            ),
            (
                "lattice_frames_in_total",
                "Frames received.",
                &self.frames_in,
            ),
            (
                "lattice_frames_out_total",
                "Frames written.",
                &self.frames_out,
            ),
            (
                "lattice_messages_delivered_total",
                "Messages answered delivered (acknowledged by a verified recipient, or handed to a live session).",
                &self.messages_delivered,
            ),
            (
                "lattice_messages_queued_total",
                "Messages stored for offline peers.",
                &self.messages_queued,
            ),
            (
                "lattice_errors_sent_total",
                "Error frames sent.",
                &self.errors_sent,
            ),
            (
                "lattice_rate_limited_total",
                "Times a connection's reading was paused by the rate limit.",
                &self.rate_limited,
            ),
            (
                "lattice_policy_closes_total",
                "Connections closed for policy.",
                &self.policy_closes,
            ),
            (
                "lattice_registrations_total",
                "Successful registrations.",
                &self.registrations,
            ),
            (
                "lattice_new_ids_refused_total",
                "New verified ids refused (per-address rate or directory cap).",
                &self.new_ids_refused,
            ),
            (
                "lattice_bindings_expired_total",
                "Bindings deleted after --binding-ttl unused.",
                &self.bindings_expired,
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(out, "# HELP lattice_connections Open connections.\n# TYPE lattice_connections gauge\nlattice_connections {connections}");
        let _ = writeln!(out, "# HELP lattice_registered_peers Registered peers.\n# TYPE lattice_registered_peers gauge\nlattice_registered_peers {registered}");
        out
    }
}

/// The blob store's counters and gauges (nothing without a store).
pub fn render_blobs(blobs: Option<&crate::blobs::Blobs>) -> String {
    let Some(b) = blobs else {
        return String::new();
    };
    let mut out = String::with_capacity(1024);
    let counters: [(&str, &str, &AtomicU64); 4] = [
        (
            "lattice_blob_bytes_in_total",
            "Blob chunk bytes accepted.",
            &b.stats().bytes_in,
        ),
        (
            "lattice_blob_bytes_out_total",
            "Blob chunk bytes served.",
            &b.stats().bytes_out,
        ),
        (
            "lattice_blob_transfers_created_total",
            "Blob transfers created.",
            &b.stats().transfers_created,
        ),
        (
            "lattice_blob_transfers_expired_total",
            "Blob transfers deleted by expiry.",
            &b.stats().transfers_expired,
        ),
    ];
    for (name, help, v) in counters {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
            v.load(Ordering::Relaxed)
        );
    }
    let _ = writeln!(out, "# HELP lattice_blob_stored_bytes Blob chunk bytes on disk.\n# TYPE lattice_blob_stored_bytes gauge\nlattice_blob_stored_bytes {}", b.stored_bytes());
    let _ = writeln!(out, "# HELP lattice_blob_transfers Live blob transfers.\n# TYPE lattice_blob_transfers gauge\nlattice_blob_transfers {}", b.transfer_count());
    out
}
