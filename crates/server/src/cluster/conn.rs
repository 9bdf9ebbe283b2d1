//! [`RedisConn`]: one connection type for one Redis and for a Redis Cluster, so every component
//! runs its commands and scripts the same way on both.

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::Slot;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use super::{manager_config, ClusterError, RedisUrl};

/// A connection to one Redis ([`ConnectionManager`]: reconnects by itself) or to a Redis
/// Cluster ([`ClusterConnection`]: routes each command to the owner of its key's slot, follows
/// `MOVED`/`ASK`, refreshes its slot map and reconnects after a failover or a resharding).
///
/// Cheap to clone; clones share the connection. Every component takes one (`new(conn)`; a
/// [`ConnectionManager`] converts into one), and every script a component runs touches keys
/// of one slot only, so the components work unchanged on either.
#[derive(Clone)]
pub enum RedisConn {
    /// One Redis.
    Single(ConnectionManager),
    /// A Redis Cluster.
    Cluster(ClusterConnection),
}

impl RedisConn {
    /// Connects to what `url` names: one Redis, or a cluster through its seeds.
    ///
    /// # Errors
    /// Redis (every seed, for a cluster) unreachable.
    pub async fn open(url: &RedisUrl) -> Result<Self, ClusterError> {
        if url.is_cluster() {
            let client = url.cluster_client(|b| b)?;
            Ok(Self::Cluster(client.get_async_connection().await?))
        } else {
            let client = url.client(|info| info)?;
            Ok(Self::Single(
                client
                    .get_connection_manager_with_config(manager_config())
                    .await?,
            ))
        }
    }

    /// Whether this is a cluster connection.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// The group of keys one script may touch together with `key`: its cluster slot, or `None`
    /// for every key on one Redis (where one script may touch any keys).
    pub(super) fn script_group(&self, key: &str) -> Option<Slot> {
        match self {
            Self::Single(_) => None,
            Self::Cluster(_) => Some(Slot::for_key(key)),
        }
    }
}

impl From<ConnectionManager> for RedisConn {
    fn from(c: ConnectionManager) -> Self {
        Self::Single(c)
    }
}

impl From<ClusterConnection> for RedisConn {
    fn from(c: ClusterConnection) -> Self {
        Self::Cluster(c)
    }
}

impl std::fmt::Debug for RedisConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Single(_) => "RedisConn::Single",
            Self::Cluster(_) => "RedisConn::Cluster",
        })
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(cmd, offset, count),
            Self::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}
