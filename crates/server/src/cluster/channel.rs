//! Pub/sub between nodes: each node subscribes to its own channel `lattice:node:{node}` (frames
//! routed to a peer it holds, "check mail" notices, "close this connection" when a verified owner
//! reclaimed its id on another node, admin questions and their answers) and to
//! `lattice:presence` (join/leave notices every node forwards to its own subscribers).
//!
//! Pub/sub is at-most-once: a message published while a node is disconnected from Redis is not
//! delivered to it. So what must not be lost never travels only here: a message for a verified
//! recipient is in its mailbox stream before the notice is published ([`super::mailbox`]), and a
//! node that was disconnected hears [`Inbound::Reconnected`] and checks its sessions' mail.
//!
//! The subscription is on a RESP3 connection that reconnects by itself and subscribes again; the
//! inbound queue is bounded ([`INBOUND_QUEUE`]): when the node cannot keep up, further publishes
//! are dropped and counted ([`RedisStats::dropped`]), never buffered without bound.
//!
//! **On a Redis Cluster** the channels are sharded (`SSUBSCRIBE`/`SPUBLISH`, Redis 7): each
//! channel lives on the shard that owns its name's slot, so a publish to a node's channel goes to
//! that one shard instead of being broadcast over the cluster bus to every shard. The subscription
//! follows its slot: after a failover, a lost shard connection or a resharding (the shard then
//! unsubscribes us with a `sunsubscribe` push) the node hears [`Inbound::Disconnected`],
//! subscribes again where the slot lives now (retrying with backoff), then hears
//! [`Inbound::Reconnected`]. On one Redis the plain `SUBSCRIBE`/`PUBLISH` are used (any Redis
//! version).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use redis::{ProtocolVersion, PushInfo, PushKind};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::stats::{RedisStats, Timed as _};
use super::{manager_config, ClusterError, NodeId, RedisConn, RedisUrl, KEY_PREFIX};

/// Publishes waiting for this node's session tasks; more are dropped (and counted).
pub const INBOUND_QUEUE: usize = 4096;
/// The first pause between reconnection attempts after Redis went away; doubled up to
/// [`RECONNECT_MAX_DELAY`].
pub const RECONNECT_MIN_DELAY: Duration = Duration::from_millis(100);
/// The longest pause between reconnection attempts.
pub const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(2);

/// Something that arrived for this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// A payload published to this node's channel.
    Node(Vec<u8>),
    /// A presence notice published by any node (this one included).
    Presence(Vec<u8>),
    /// The subscription was lost (Redis went away): publishes in between are gone.
    Disconnected,
    /// Subscribed again after [`Inbound::Disconnected`]: whatever may have been missed should be
    /// looked up again (mail of the local sessions).
    Reconnected,
}

/// The name of `node`'s channel.
pub fn node_channel(node: &NodeId) -> String {
    format!("{KEY_PREFIX}:node:{node}")
}

/// The presence channel.
pub fn presence_channel() -> String {
    format!("{KEY_PREFIX}:presence")
}

/// This node's subscriptions and its publishing side.
#[derive(Clone)]
pub struct Channels {
    conn: RedisConn,
    node: NodeId,
    stats: Arc<RedisStats>,
}

impl std::fmt::Debug for Channels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channels")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl Channels {
    /// Subscribes `node` to its channel and the presence channel. Returns the publishing side
    /// and the queue of what arrives; the watcher that restores the subscription after Redis
    /// comes back runs until `stop` is cancelled.
    ///
    /// # Errors
    /// Redis unreachable.
    pub async fn open(
        url: &RedisUrl,
        node: NodeId,
        stop: CancellationToken,
    ) -> Result<(Self, mpsc::Receiver<Inbound>), ClusterError> {
        Self::open_with_stats(url, node, stop, Arc::default()).await
    }

    /// [`Self::open`], counting into `stats` (shared by a node's components).
    ///
    /// # Errors
    /// Redis unreachable.
    pub async fn open_with_stats(
        url: &RedisUrl,
        node: NodeId,
        stop: CancellationToken,
        stats: Arc<RedisStats>,
    ) -> Result<(Self, mpsc::Receiver<Inbound>), ClusterError> {
        let (tx, rx) = mpsc::channel(INBOUND_QUEUE);
        let lost = Arc::new(Notify::new());
        let my_channel = node_channel(&node);
        let presence = presence_channel();
        // Called by the client library for every push, without waiting: converted and offered
        // to the bounded queue here, so nothing queues up unbounded in between.
        let sender = {
            let (tx, stats, lost, node) = (tx.clone(), stats.clone(), lost.clone(), node.clone());
            move |push: PushInfo| -> Result<(), ()> {
                let inbound = match push.kind {
                    PushKind::Message | PushKind::SMessage => match message(&push).inspect(|_| {
                        stats.received.fetch_add(1, Ordering::Relaxed);
                    }) {
                        Some((channel, payload)) if channel == my_channel => Inbound::Node(payload),
                        Some((_, payload)) => Inbound::Presence(payload),
                        None => return Ok(()),
                    },
                    PushKind::Disconnection => {
                        lost.notify_one();
                        Inbound::Disconnected
                    }
                    // Only a shard unsubscribes us (its slot moved away): subscribe again.
                    PushKind::SUnsubscribe
                        if push.data.first().is_some_and(|c| {
                            redis::from_redis_value_ref::<String>(c)
                                .is_ok_and(|c| c == my_channel || c == presence)
                        }) =>
                    {
                        lost.notify_one();
                        Inbound::Disconnected
                    }
                    _ => return Ok(()),
                };
                if tx.try_send(inbound).is_err() {
                    let n = stats.dropped.fetch_add(1, Ordering::Relaxed);
                    if n.is_power_of_two() {
                        warn!(%node, dropped = n + 1, "inbound cluster queue full: publish dropped");
                    }
                    return Err(());
                }
                Ok(())
            }
        };
        let conn = if url.is_cluster() {
            let client =
                url.cluster_client(|b| b.use_protocol(ProtocolVersion::RESP3).push_sender(sender))?;
            let mut conn = client.get_async_connection().await?;
            // One channel per call: the two names are in different slots.
            for channel in [node_channel(&node), presence_channel()] {
                conn.ssubscribe(channel).await?;
            }
            RedisConn::Cluster(conn)
        } else {
            let client = url.client(|info| {
                let settings = info
                    .redis_settings()
                    .clone()
                    .set_protocol(ProtocolVersion::RESP3);
                info.set_redis_settings(settings)
            })?;
            let config = manager_config()
                .set_push_sender(sender)
                .set_automatic_resubscription();
            let mut conn = client.get_connection_manager_with_config(config).await?;
            conn.subscribe(&[node_channel(&node), presence_channel()])
                .await?;
            RedisConn::Single(conn)
        };
        let channels = Self { conn, node, stats };
        tokio::spawn(channels.clone().watch(lost, tx, stop));
        Ok((channels, rx))
    }

    /// Publishes `payload` to `node`'s channel; how many subscribers got it (0: that node is
    /// gone or not subscribed right now).
    ///
    /// # Errors
    /// Redis unreachable.
    pub async fn publish_to(&self, node: &NodeId, payload: &[u8]) -> Result<u64, ClusterError> {
        self.stats.published.fetch_add(1, Ordering::Relaxed);
        Ok(redis::cmd(self.publish_command())
            .arg(node_channel(node))
            .arg(payload)
            .query_async(&mut self.conn.clone())
            .timed(&self.stats)
            .await?)
    }

    /// Publishes a presence notice to every node.
    ///
    /// # Errors
    /// Redis unreachable.
    pub async fn publish_presence(&self, payload: &[u8]) -> Result<u64, ClusterError> {
        self.stats.published.fetch_add(1, Ordering::Relaxed);
        Ok(redis::cmd(self.publish_command())
            .arg(presence_channel())
            .arg(payload)
            .query_async(&mut self.conn.clone())
            .timed(&self.stats)
            .await?)
    }

    /// `SPUBLISH` on a cluster (to the channel's shard only), `PUBLISH` on one Redis.
    fn publish_command(&self) -> &'static str {
        if self.conn.is_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        }
    }

    /// This node.
    pub fn node(&self) -> &NodeId {
        &self.node
    }

    /// The counters this node's channels add to.
    pub fn stats(&self) -> &Arc<RedisStats> {
        &self.stats
    }

    /// After each disconnection, pings (with backoff) until the connection manager has
    /// reconnected and subscribed again, then says so ([`Inbound::Reconnected`], waiting for room:
    /// it must not be dropped, or the node would never look for what it missed).
    async fn watch(self, lost: Arc<Notify>, tx: mpsc::Sender<Inbound>, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = lost.notified() => {}
            }
            debug!(node = %self.node, "lost the Redis subscription");
            if !self.resubscribe(&stop).await {
                return;
            }
            debug!(node = %self.node, "subscribed again");
            tokio::select! {
                () = stop.cancelled() => return,
                sent = tx.send(Inbound::Reconnected) => if sent.is_err() { return },
            }
        }
    }

    /// Waits until the subscription is back, retrying with backoff: on one Redis, pings until the
    /// connection is back (the connection manager subscribes again as part of reconnecting); on a
    /// cluster, subscribes each channel again on the shard that owns its slot now (subscribing
    /// to a channel twice is harmless). False if stopped first.
    async fn resubscribe(&self, stop: &CancellationToken) -> bool {
        let mut delay = RECONNECT_MIN_DELAY;
        loop {
            let back = match &self.conn {
                RedisConn::Single(conn) => {
                    let ping: Result<String, _> = redis::cmd("PING")
                        .query_async(&mut conn.clone())
                        .timed(&self.stats)
                        .await;
                    ping.is_ok()
                }
                RedisConn::Cluster(conn) => {
                    let mut all = true;
                    for channel in [node_channel(&self.node), presence_channel()] {
                        let mut conn = conn.clone();
                        let done = self.stats.timed(conn.ssubscribe(channel)).await;
                        if let Err(e) = done {
                            debug!(node = %self.node, error = %e, "subscribing again failed");
                            all = false;
                            break;
                        }
                    }
                    all
                }
            };
            if back {
                return true;
            }
            tokio::select! {
                () = stop.cancelled() => return false,
                () = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(RECONNECT_MAX_DELAY);
        }
    }
}

/// (channel, payload) of a `message` push.
fn message(push: &PushInfo) -> Option<(String, Vec<u8>)> {
    let [channel, payload] = push.data.as_slice() else {
        return None;
    };
    let channel: String = redis::from_redis_value_ref(channel).ok()?;
    let payload: Vec<u8> = redis::from_redis_value_ref(payload).ok()?;
    Some((channel, payload))
}
