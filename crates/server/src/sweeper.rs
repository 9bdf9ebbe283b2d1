//! Housekeeping, one task per server: heartbeat pings, idle and registration timeouts, expiry of
//! questions and mail and unused bindings (in SQLite, or in Redis on a node of several), WAL
//! checkpoints. Its clock is tokio's (the server's
//! uptime is a `tokio::time::Instant`), so the timeouts are unit-tested on paused time.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use lattice_protocol::close_code;
use tracing::{info, warn};

use crate::hub::Out;
use crate::limits;
use crate::metrics::Metrics;
use crate::node::Node;
use crate::state::{self, ServerState};

/// Once a minute: expired mail and unused bindings go, and the WAL is checkpointed and truncated
/// so it stays small under constant load.
fn store_maintenance(state: &ServerState) {
    match crate::store::Mailbox::purge_expired(state.mailbox.as_ref()) {
        Ok(0) => {}
        Ok(n) => info!(expired = n, "expired mailbox entries removed"),
        Err(e) => warn!(error = %e, "mailbox purge failed"),
    }
    // On a node of several the bindings are in Redis ([`expire_bindings_on_redis`]).
    if let (Some(cutoff), None) = (binding_cutoff(state), &state.node) {
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

/// Bindings last used before this (unix ms) expire; `None` with `--binding-ttl 0` (never).
fn binding_cutoff(state: &ServerState) -> Option<i64> {
    let ttl = state.config.binding_ttl;
    if ttl.is_zero() {
        return None;
    }
    let now = i64::try_from(state::unix_ms()).unwrap_or(i64::MAX);
    Some(now.saturating_sub(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)))
}

/// On a node of several: up to [`limits::BINDING_EXPIRY_BATCH`] bindings unused for
/// `--binding-ttl` go from Redis (with their mailboxes and KeyPackages; an id online on any node
/// is in use and stays), and each expired id leaves its groups, so a later owner of the id
/// starts with none (as on one node). Any node may run it, at the same time as others: each
/// binding is deleted by one script that checks its last use and presence again. How many went.
pub(crate) async fn expire_bindings_on_redis(state: &ServerState, node: &Node) -> usize {
    let Some(cutoff) = binding_cutoff(state) else {
        return 0;
    };
    let online = |id: &lattice_protocol::ClientId| state.hub.get(id).is_some();
    let expired = match node
        .directory
        .expire_unused_ids(cutoff, limits::BINDING_EXPIRY_BATCH, &online)
        .await
    {
        Ok(ids) => ids,
        Err(e) => {
            warn!(error = %e, "binding expiry failed");
            return 0;
        }
    };
    for id in &expired {
        if let Err(e) = node.groups.forget_member(id).await {
            // The id's next registration by a new owner forgets them (register.rs).
            warn!(error = %e, peer = %id, "expired id's groups not forgotten");
        }
        if let Err(e) = node.devices.forget(id).await {
            // The id's next registration by a new owner forgets it (register.rs).
            warn!(error = %e, peer = %id, "expired id's device list not forgotten");
        }
    }
    if !expired.is_empty() {
        state
            .metrics
            .bindings_expired
            .fetch_add(expired.len() as u64, Ordering::Relaxed);
        info!(expired = expired.len(), "unused bindings removed");
    }
    expired.len()
}

/// Blob transfers past `--blob-ttl` lose their bytes; expired blob tokens go. On a node of
/// several every node's sweeper claims expired transfers in Redis, each one by one node.
async fn expire_blobs(state: &ServerState) {
    let now = state::unix_ms();
    state.blob_tokens.purge(now);
    if let Some(blobs) = &state.blobs {
        let n = blobs.purge_expired(now).await;
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
        expire_blobs(&state).await;
        let every =
            (limits::STORE_MAINTENANCE_EVERY.as_secs() / limits::SWEEP_INTERVAL.as_secs()).max(1);
        if rounds.is_multiple_of(every) {
            store_maintenance(&state);
            if let Some(node) = &state.node {
                // Bounded: a batch, each command within the Redis response timeout.
                expire_bindings_on_redis(&state, node).await;
            }
        }
    }
}

// The integration tests' `redis-server` harness (a real process on a free port, killed on drop).
#[cfg(test)]
#[path = "../tests/support/redis_process.rs"]
mod redis_process;

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

    /// A node of several on a real `redis-server`: unused bindings expire from Redis with their
    /// group memberships; one online on a node (its presence key lives) and one used since the
    /// cutoff stay (a short `--binding-ttl` stands in for months; real time, not paused, since
    /// the node talks to a real process).
    #[tokio::test]
    async fn on_redis_unused_bindings_expire_and_their_ids_leave_their_groups_and_forget_their_devices(
    ) {
        use std::collections::BTreeSet;
        use std::time::Duration;

        use lattice_protocol::{ClientId, GroupId, MessageId};

        use crate::cluster::presence::{Claim, PeerKeys};
        use crate::store::{Binding, CommitOp, Quota};

        let redis = super::redis_process::RedisProcess::start().await;
        let shutdown = CancellationToken::new();
        let config = Config {
            redis: Some(crate::cluster::RedisUrl::parse(&redis.url()).expect("url")),
            binding_ttl: Duration::from_millis(300),
            ..Config::for_tests()
        };
        let state = crate::start_state(config, shutdown.clone())
            .await
            .expect("node");
        let node = state.node.clone().expect("a node");
        let id = |s: &str| ClientId::new(s).expect("id");
        let binding = |n: u8| Binding {
            identity_key: [n; 32],
            kem_public_key: vec![n; 8],
            key_signature: vec![n; 4],
        };
        let now = || i64::try_from(crate::state::unix_ms()).expect("ms");
        for (n, who) in ["alice", "bob", "carol"].iter().enumerate() {
            let n = u8::try_from(n).expect("small");
            node.directory
                .bind(&id(who), &binding(n), 0, now())
                .await
                .expect("bound");
        }
        // alice and bob are in a group; carol is online on some node
        let members: BTreeSet<ClientId> = [id("alice"), id("bob")].into();
        let group = GroupId::new("0c0c").expect("group id");
        let mid = MessageId::new("create").expect("mid");
        let op = CommitOp {
            group: &group,
            sender: &id("alice"),
            sender_device: &lattice_protocol::DeviceId::primary(),
            epoch: 0,
            message_id: &mid,
            members: &members,
            leaves: None,
            commit_frame: "{}",
            welcome_frame: Some("{}"),
            max_groups_per_id: 10,
        };
        node.groups
            .commit(&op, &Quota::UNLIMITED)
            .await
            .expect("group made");
        assert_eq!(node.groups.group_count(&id("bob")).await.expect("count"), 1);
        // alice and bob have a linked device with mail waiting for it
        let laptop = lattice_protocol::DeviceId::new("laptop").expect("device id");
        for who in ["alice", "bob"] {
            let list = lattice_protocol::SignedDeviceList {
                counter: 1,
                devices: vec![lattice_protocol::DeviceEntry {
                    device_id: laptop.clone(),
                    device_key: "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=".into(),
                }],
                signature: String::new(),
            };
            node.devices
                .put_list(&id(who), &list)
                .await
                .expect("list stored");
            let mail = crate::store::MailItem {
                message_id: MessageId::new("m-1").expect("mid"),
                sender: id("carol"),
                frame: "{}".into(),
            };
            node.mailbox
                .enqueue_all(
                    &id(who),
                    &[lattice_protocol::DeviceId::primary(), laptop.clone()],
                    &mail,
                    &Quota::UNLIMITED,
                )
                .await
                .expect("mail stored");
        }
        let keys = PeerKeys {
            public_key: vec![2; 8],
            identity_key: Some([2; 32]),
            key_signature: Some(vec![2; 4]),
            link_relay: false,
        };
        assert!(matches!(
            node.presence.claim(&id("carol"), 7, &keys).await,
            Ok(Claim::Won { .. })
        ));

        // nothing is old enough yet
        assert_eq!(super::expire_bindings_on_redis(&state, &node).await, 0);
        tokio::time::sleep(Duration::from_millis(400)).await;
        // alice registers again: used since the cutoff
        node.directory
            .touch(&id("alice"), now())
            .await
            .expect("touch");
        assert_eq!(super::expire_bindings_on_redis(&state, &node).await, 1);
        assert!(node.directory.get(&id("bob")).await.expect("get").is_none());
        assert!(node
            .directory
            .get(&id("alice"))
            .await
            .expect("get")
            .is_some());
        assert!(node
            .directory
            .get(&id("carol"))
            .await
            .expect("get")
            .is_some());
        // bob left the group, alice is still in it
        assert_eq!(node.groups.group_count(&id("bob")).await.expect("count"), 0);
        assert_eq!(
            node.groups
                .state(&group)
                .await
                .expect("state")
                .map(|(_, m)| m),
            Some([id("alice")].into())
        );
        // bob's device list and his laptop's mail are gone with him; alice keeps hers
        assert!(node.devices.list(&id("bob")).await.expect("list").is_none());
        assert_eq!(
            node.mailbox
                .device_count(&id("bob"), &laptop)
                .await
                .expect("count"),
            0
        );
        assert!(node
            .devices
            .list(&id("alice"))
            .await
            .expect("list")
            .is_some());
        assert_eq!(
            node.mailbox
                .device_count(&id("alice"), &laptop)
                .await
                .expect("count"),
            1
        );
        assert_eq!(state.metrics.bindings_expired.load(Ordering::Relaxed), 1);
        // carol, once offline, expires at the next pass after her last use
        assert!(node
            .presence
            .release(&id("carol"), 7)
            .await
            .expect("release"));
        assert_eq!(
            super::expire_bindings_on_redis(&state, &node).await,
            0,
            "she was in use just now"
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(super::expire_bindings_on_redis(&state, &node).await, 2);
        assert!(node
            .directory
            .get(&id("carol"))
            .await
            .expect("get")
            .is_none());

        shutdown.cancel();
    }
}
