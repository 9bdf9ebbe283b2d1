//! Housekeeping, one task per server: heartbeat pings, idle and registration timeouts, expiry of
//! questions and mail and unused bindings, WAL checkpoints. Its clock is tokio's (the server's
//! uptime is a `tokio::time::Instant`), so the timeouts are unit-tested on paused time.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use lattice_protocol::close_code;
use tracing::{info, warn};

use crate::hub::Out;
use crate::limits;
use crate::metrics::Metrics;
use crate::state::{self, ServerState};

/// Once a minute: expired mail and unused bindings go, and the WAL is checkpointed and truncated
/// so it stays small under constant load.
fn store_maintenance(state: &ServerState) {
    match crate::store::Mailbox::purge_expired(state.mailbox.as_ref()) {
        Ok(0) => {}
        Ok(n) => info!(expired = n, "expired mailbox entries removed"),
        Err(e) => warn!(error = %e, "mailbox purge failed"),
    }
    let ttl = state.config.binding_ttl;
    if !ttl.is_zero() {
        let now = i64::try_from(state::unix_ms()).unwrap_or(i64::MAX);
        let cutoff = now.saturating_sub(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
        // An id online now is in use, however long ago it registered.
        let online = |id: &lattice_protocol::ClientId| state.hub.get(id).is_some();
        match state
            .directory
            .expire_unused(cutoff, limits::BINDING_EXPIRY_BATCH, &online)
        {
            Ok(0) => {}
            Ok(n) => {
                state
                    .metrics
                    .bindings_expired
                    .fetch_add(n as u64, Ordering::Relaxed);
                info!(expired = n, "unused bindings removed");
            }
            Err(e) => warn!(error = %e, "binding expiry failed"),
        }
    }
    if let Err(e) = state.store.checkpoint() {
        warn!(error = %e, "WAL checkpoint failed");
    }
}

/// Blob transfers past `--blob-ttl` lose their bytes; expired blob tokens go.
fn expire_blobs(state: &ServerState) {
    let now = state::unix_ms();
    state.blob_tokens.purge(now);
    if let Some(blobs) = &state.blobs {
        let n = blobs.purge_expired(now);
        if n > 0 {
            info!(expired = n, "expired blob transfers removed");
        }
    }
}

/// Housekeeping: heartbeat pings, idle and registration timeouts, expiry of questions and mail.
pub(crate) async fn sweep(state: Arc<ServerState>) {
    let mut tick = tokio::time::interval(limits::SWEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rounds: u64 = 0;
    loop {
        tokio::select! {
            biased;
            () = state.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        rounds += 1;
        let now = state.uptime_ms();
        let ping_ms = u64::try_from(state.config.ping_interval.as_millis()).unwrap_or(u64::MAX);
        let idle_ms = u64::try_from(state.config.idle_timeout.as_millis()).unwrap_or(u64::MAX);
        let register_ms = u64::try_from(limits::REGISTER_TIMEOUT.as_millis()).unwrap_or(u64::MAX);
        for s in state.sessions.all() {
            let idle = now.saturating_sub(s.last_seen.load(Ordering::Relaxed));
            if idle >= idle_ms {
                Metrics::inc(&state.metrics.policy_closes);
                s.close(close_code::GOING_AWAY, "idle timeout");
            } else if !s.registered.load(Ordering::Acquire)
                && now.saturating_sub(s.opened_ms) >= register_ms
            {
                Metrics::inc(&state.metrics.policy_closes);
                s.close(close_code::REGISTER_TIMEOUT, "registration timeout");
            } else if idle >= ping_ms {
                let _ = s.tx.try_send(Out::Ping);
            }
        }
        state.questions.expire();
        expire_blobs(&state);
        let every =
            (limits::STORE_MAINTENANCE_EVERY.as_secs() / limits::SWEEP_INTERVAL.as_secs()).max(1);
        if rounds.is_multiple_of(every) {
            store_maintenance(&state);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    use lattice_protocol::close_code;
    use tokio::sync::mpsc;
    use tokio::time::{sleep_until, Instant};
    use tokio_util::sync::CancellationToken;

    use super::sweep;
    use crate::hub::{Out, SessionShared};
    use crate::limits::{REGISTER_TIMEOUT, SWEEP_INTERVAL};
    use crate::state::ServerState;
    use crate::Config;

    fn connection(
        state: &ServerState,
        conn_id: u64,
        registered: bool,
    ) -> (Arc<SessionShared>, mpsc::Receiver<Out>) {
        let (tx, rx) = mpsc::channel(8);
        let s = Arc::new(SessionShared::new(
            conn_id,
            tx,
            state.shutdown.child_token(),
            state.uptime_ms(),
        ));
        s.registered.store(registered, Ordering::Release);
        state.sessions.insert(Arc::clone(&s));
        (s, rx)
    }

    fn pings(rx: &mut mpsc::Receiver<Out>) -> usize {
        std::iter::from_fn(|| rx.try_recv().ok())
            .filter(|o| matches!(o, Out::Ping))
            .count()
    }

    /// The heartbeat and the two timeouts on tokio's paused clock: a silent connection is pinged
    /// after `--ping-interval` and closed (1001) after `--idle-timeout`; one that answers (its
    /// pongs move `last_seen`) stays; one that never registers is closed with 4008.
    #[tokio::test(start_paused = true)]
    async fn silent_connections_are_pinged_then_closed_and_unregistered_ones_time_out() {
        let config = Config::for_tests();
        let (ping, idle) = (config.ping_interval, config.idle_timeout);
        let state = crate::build_state(config, CancellationToken::new()).expect("state");
        let t0 = Instant::now();
        let (silent, mut silent_rx) = connection(&state, 1, true);
        let (alive, mut alive_rx) = connection(&state, 2, true);
        let (lurker, _lurker_rx) = connection(&state, 3, false);
        let sweeper = tokio::spawn(sweep(Arc::clone(&state)));
        let answer_pings = |alive: &SessionShared| {
            alive.last_seen.store(state.uptime_ms(), Ordering::Relaxed);
        };

        sleep_until(t0 + ping - SWEEP_INTERVAL).await;
        assert_eq!(pings(&mut silent_rx), 0, "no ping before the interval");
        sleep_until(t0 + ping + SWEEP_INTERVAL).await;
        assert!(
            pings(&mut silent_rx) >= 1,
            "pinged once silent for the interval"
        );
        assert!(pings(&mut alive_rx) >= 1);
        answer_pings(&alive);
        assert!(!silent.kill.is_cancelled());

        sleep_until(t0 + REGISTER_TIMEOUT + SWEEP_INTERVAL).await;
        assert_eq!(
            lurker.close_reason.get(),
            Some(&(close_code::REGISTER_TIMEOUT, "registration timeout"))
        );
        answer_pings(&alive);

        let mut t = t0 + REGISTER_TIMEOUT + SWEEP_INTERVAL;
        while t < t0 + idle + 2 * SWEEP_INTERVAL {
            t += SWEEP_INTERVAL;
            sleep_until(t).await;
            answer_pings(&alive);
        }
        assert_eq!(
            silent.close_reason.get(),
            Some(&(close_code::GOING_AWAY, "idle timeout"))
        );
        assert!(
            !alive.kill.is_cancelled(),
            "a connection that answers is never idle"
        );

        state.shutdown.cancel();
        sweeper.await.expect("the sweeper stops at shutdown");
    }
}
