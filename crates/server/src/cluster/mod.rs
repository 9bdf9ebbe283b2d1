//! The shared state of several server nodes, on Redis (issue 10; the design is in
//! `docs/scaling.md`, "Several nodes sharing state in Redis").
//!
//! Each part is a component that owns its keys and scripts, and answers through typed results:
//!
//! - [`presence`]: who holds which id's devices, on which node and connection: keys with a TTL
//!   and an atomic Lua claim (one live holder per (id, device) across every node, the devices of
//!   one id only for its identity), the sorted set `discover` pages.
//! - [`channel`]: a pub/sub channel per node (routed frames, "check mail", closes) and one for
//!   presence notices, resubscribed after Redis comes back.
//! - [`directory`]: the bindings of verified ids, with the binding rules and the `--max-bindings`
//!   cap applied by one script, so two nodes binding one id at once cannot both win.
//! - [`mailbox`]: a Redis stream per verified recipient, with deduplication by
//!   (sender, `messageId`) and the same quotas as the SQLite mailbox, written atomically by one
//!   script; a consumer group makes each entry owned by the connection it was handed to until
//!   its `ack`, and lets the recipient's next connection, on any node, take over what a closed or
//!   killed one never acknowledged.
//! - [`devices`]: the signed device list of each id, kept only for a strictly higher counter
//!   (a compare-and-set script), deleting a removed device's mailbox stream and KeyPackages in
//!   the same script; [`mailbox`] and [`key_packages`] key a linked device's stream and stock by
//!   (id, device) under the id's hash tag.
//! - [`groups`]: the MLS delivery service's epoch check (one Commit per epoch across nodes) and
//!   ordered fan-out of Commits into the members' mailboxes.
//! - [`key_packages`]: the MLS KeyPackage directory (a stock per id, fetched one at a time).
//! - [`questions`]: the shared records of pending server questions (asked on one node, answered
//!   on the peer's), with the per-peer cap.
//! - [`blobs`]: the blob store's shared records (transfers, chunks present, quotas, `clientRef`s,
//!   expiry, deletions claimed by one node, blob tokens); the bytes stay on a directory every
//!   node mounts, never in Redis.
//! - [`stats`]: the cross-node counters for `/metrics` (round-trip latency histogram, errors,
//!   channel traffic), shared by a node's components.
//!
//! The server uses them with `--redis` ([`crate::node`] holds one of each per node; the session
//! handlers call them where a single node calls the in-process hub and SQLite; see
//! `docs/scaling.md`, "Several nodes on Redis").
//!
//!
//! **One Redis or a Redis Cluster** ([`RedisUrl`]: `redis://` or `redis+cluster://seed,seed`;
//! [`RedisConn`]): every id's keys carry a hash tag (`{alice}`), so one id's keys live in one
//! Cluster slot, as do one group's; the global sets (`lattice:{online}` with its `:exp`,
//! `lattice:bindings`) are each one key, and no script touches keys of two slots: what spans
//! two (an id's key and an index) is two steps, ordered so that the id's key is the truth (each
//! component's documentation says how). Node channels are sharded pub/sub on a cluster.

pub mod blobs;
pub mod channel;
mod conn;
pub mod devices;
pub mod directory;
pub mod groups;
pub mod key_packages;
pub mod mailbox;
pub mod presence;
pub mod questions;
pub mod stats;

use std::time::Duration;

use lattice_protocol::ClientId;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

pub use conn::RedisConn;

/// How long one Redis command may take before it fails (and the caller answers `INTERNAL_ERROR`)
/// instead of holding a session.
pub const REDIS_RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long connecting to Redis may take.
pub const REDIS_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Reconnection attempts the connection manager makes per failed command before the command fails
/// (it keeps trying again on the next command).
pub const REDIS_RECONNECT_RETRIES: usize = 2;
/// Retries a Redis Cluster connection makes for one command (after `MOVED`/`ASK` redirections,
/// a lost node, or a failover in progress, each after refreshing its slot map) before the
/// command fails.
pub const CLUSTER_RETRIES: u32 = 4;
/// The key prefix of everything Lattice stores in Redis.
pub const KEY_PREFIX: &str = "lattice";

/// Why a Redis operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The Redis URL is not one we accept.
    #[error("invalid Redis URL: {0}")]
    Url(String),
    /// Redis could not be reached or refused the command.
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A script answered something it never returns (a different script under the same key?).
    #[error("unexpected reply from Redis: {0}")]
    Reply(&'static str),
}

/// A validated Redis URL: one Redis, or the seeds of a Redis Cluster.
///
/// - `redis://` or `rediss://` (TLS through rustls): one Redis (or a primary with replicas
///   behind one address), with optional user, password and database (`redis://:pw@host:6379/0`).
/// - `redis+cluster://` or `rediss+cluster://`: a Redis Cluster, given by one or more seed nodes
///   separated by commas (`redis+cluster://:pw@10.0.0.1:7000,10.0.0.2:7000`); the client learns
///   every other node, and each slot's owner, from them. The user and password apply to every
///   node; a cluster has only database 0, so no other database may be named.
///
/// A `rediss` server's certificate is checked against the system's roots, or only against the CA
/// given with [`RedisUrl::with_root_ca`] (a private CA, as Redis deployments often use). Every
/// component works unchanged on either kind ([`RedisConn`]).
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl {
    text: String,
    /// One URL for one Redis; the seeds' URLs (`redis://…` each) for a cluster.
    seeds: Vec<String>,
    cluster: bool,
    root_ca: Option<Vec<u8>>,
}

impl RedisUrl {
    /// Checks `s`.
    ///
    /// # Errors
    /// [`ClusterError::Url`] for another scheme, a cluster URL without seeds or with a database,
    /// or a URL the client cannot parse.
    pub fn parse(s: &str) -> Result<Self, ClusterError> {
        let (scheme, rest) = s.split_once("://").ok_or_else(bad_scheme)?;
        let (base, cluster) = match scheme {
            "redis" | "rediss" => (scheme, false),
            "redis+cluster" => ("redis", true),
            "rediss+cluster" => ("rediss", true),
            _ => return Err(bad_scheme()),
        };
        let seeds = if cluster {
            let (auth, hosts) = match rest.rsplit_once('@') {
                Some((auth, hosts)) => (format!("{auth}@"), hosts),
                None => (String::new(), rest),
            };
            let hosts = hosts.strip_suffix('/').unwrap_or(hosts);
            let hosts = hosts.strip_suffix("/0").unwrap_or(hosts);
            if hosts.contains(['/', '?', '#']) {
                return Err(ClusterError::Url(
                    "a Redis Cluster has only database 0: give host:port,host:port".into(),
                ));
            }
            let seeds: Vec<String> = hosts
                .split(',')
                .map(|h| format!("{base}://{auth}{}", h.trim()))
                .collect();
            if hosts.split(',').any(|h| h.trim().is_empty()) {
                return Err(ClusterError::Url(
                    "a cluster URL names one or more seed nodes, separated by commas".into(),
                ));
            }
            seeds
        } else {
            vec![s.to_owned()]
        };
        for seed in &seeds {
            redis::Client::open(seed.as_str()).map_err(|e| ClusterError::Url(e.to_string()))?;
        }
        Ok(Self {
            text: s.to_owned(),
            seeds,
            cluster,
            root_ca: None,
        })
    }

    /// Trusts only the CA certificate(s) in `pem` for `rediss://`.
    #[must_use]
    pub fn with_root_ca(mut self, pem: Vec<u8>) -> Self {
        self.root_ca = Some(pem);
        self
    }

    /// A client for this URL with `settings` (the connection info parsed from it, adjusted).
    /// One Redis only.
    fn client(
        &self,
        adjust: impl FnOnce(redis::ConnectionInfo) -> redis::ConnectionInfo,
    ) -> Result<redis::Client, ClusterError> {
        use redis::IntoConnectionInfo as _;
        if self.cluster {
            return Err(ClusterError::Url(
                "a Redis Cluster URL where one Redis is expected (use RedisConn::open)".into(),
            ));
        }
        self.install_tls_provider();
        let info = adjust(self.text.as_str().into_connection_info()?);
        Ok(match &self.root_ca {
            Some(pem) => redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.clone()),
                },
            )?,
            None => redis::Client::open(info)?,
        })
    }

    /// A Redis Cluster client for this URL's seeds, with the timeouts of one Redis; `adjust`
    /// adds to its builder (RESP3 and a push sender for the channels).
    fn cluster_client(
        &self,
        adjust: impl FnOnce(
            redis::cluster::ClusterClientBuilder,
        ) -> redis::cluster::ClusterClientBuilder,
    ) -> Result<redis::cluster::ClusterClient, ClusterError> {
        self.install_tls_provider();
        let mut builder = redis::cluster::ClusterClientBuilder::new(self.seeds.clone())
            .connection_timeout(REDIS_CONNECT_TIMEOUT)
            .response_timeout(REDIS_RESPONSE_TIMEOUT)
            .retries(CLUSTER_RETRIES);
        if let Some(pem) = &self.root_ca {
            builder = builder.certs(redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.clone()),
            });
        }
        Ok(adjust(builder).build()?)
    }

    fn install_tls_provider(&self) {
        if self.tls() {
            // redis-rs builds its rustls configuration on the process's default provider, and
            // the dependency graph enables more than one, so none is chosen by itself. Ring, as
            // everywhere else in Lattice; an error only means one is installed already.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
    }

    /// Whether the connection uses TLS.
    pub fn tls(&self) -> bool {
        self.text.starts_with("rediss")
    }

    /// Whether this names a Redis Cluster (`redis+cluster://`).
    pub fn is_cluster(&self) -> bool {
        self.cluster
    }
}

fn bad_scheme() -> ClusterError {
    ClusterError::Url(
        "the URL must start with redis://, rediss://, redis+cluster:// or rediss+cluster://".into(),
    )
}

/// Never prints the password.
impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (scheme, rest) = self.text.split_once("://").unwrap_or(("?", ""));
        let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
        write!(f, "{scheme}://{host}")
    }
}

/// This node's name in Redis: the suffix of its channel and the `node` of the ids it holds. Fresh
/// for every process, so a restarted node never inherits a dead one's connections.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeId(String);

impl NodeId {
    /// A new random node id.
    pub fn random() -> Self {
        Self(uuid::Uuid::new_v4().simple().to_string())
    }

    /// The node id as Redis stores it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn from_redis(s: String) -> Self {
        Self(s)
    }
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<String> for NodeId {
    /// A node id as another node sent it (the reply address of a message on a node channel).
    fn from(s: String) -> Self {
        Self(s)
    }
}

/// A connection to one Redis that reconnects by itself (requests made while it is down fail
/// after [`REDIS_RESPONSE_TIMEOUT`] with [`ClusterError::Redis`]; the next one tries again).
/// [`RedisConn::open`] connects to one Redis or a cluster, whichever the URL names.
///
/// # Errors
/// A cluster URL ([`ClusterError::Url`]), or Redis unreachable.
pub async fn connect(url: &RedisUrl) -> Result<ConnectionManager, ClusterError> {
    let client = url.client(|info| info)?;
    Ok(client
        .get_connection_manager_with_config(manager_config())
        .await?)
}

fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_response_timeout(Some(REDIS_RESPONSE_TIMEOUT))
        .set_connection_timeout(Some(REDIS_CONNECT_TIMEOUT))
        .set_number_of_retries(REDIS_RECONNECT_RETRIES)
}

/// The hash-tagged key of one id's `part` (`lattice:peer:{alice}`).
fn id_key(part: &str, id: &ClientId) -> String {
    format!("{KEY_PREFIX}:{part}:{{{id}}}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_never_print_the_password() {
        assert!(RedisUrl::parse("redis://127.0.0.1:6379").is_ok());
        assert!(RedisUrl::parse("rediss://cache.example:6380/0").is_ok_and(|u| u.tls()));
        for bad in ["http://x", "127.0.0.1:6379", "redis//x", ""] {
            assert!(
                matches!(RedisUrl::parse(bad), Err(ClusterError::Url(_))),
                "{bad}"
            );
        }
        let u = RedisUrl::parse("redis://user:secret@10.0.0.1:6379/2").unwrap();
        let shown = format!("{u:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("10.0.0.1:6379/2"), "{shown}");
    }

    #[test]
    fn cluster_urls_name_their_seeds_and_never_print_the_password() {
        let u = RedisUrl::parse("redis+cluster://:secret@10.0.0.1:7000,10.0.0.2:7001").unwrap();
        assert!(u.is_cluster() && !u.tls());
        assert_eq!(
            u.seeds,
            [
                "redis://:secret@10.0.0.1:7000",
                "redis://:secret@10.0.0.2:7001"
            ]
        );
        let shown = format!("{u:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("10.0.0.2:7001"), "{shown}");
        let one = RedisUrl::parse("rediss+cluster://cache.example:6380/").unwrap();
        assert!(one.is_cluster() && one.tls());
        assert_eq!(one.seeds, ["rediss://cache.example:6380"]);
        assert!(!RedisUrl::parse("redis://127.0.0.1").unwrap().is_cluster());
        for bad in [
            "redis+cluster://",
            "redis+cluster://a:1,,b:2",
            "redis+cluster://a:1/2",
            "redis+cluster://a:1?x=1",
            "redis+sentinel://a:1",
        ] {
            assert!(
                matches!(RedisUrl::parse(bad), Err(ClusterError::Url(_))),
                "{bad}"
            );
        }
        // One Redis's constructor refuses a cluster URL instead of connecting to one seed.
        assert!(matches!(u.client(|i| i), Err(ClusterError::Url(_))));
    }

    #[test]
    fn keys_of_one_id_share_a_hash_tag() {
        let id = ClientId::new("alice@example").unwrap();
        assert_eq!(id_key("peer", &id), "lattice:peer:{alice@example}");
        assert_eq!(id_key("mbox", &id), "lattice:mbox:{alice@example}");
    }
}
