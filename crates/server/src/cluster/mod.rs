//! The shared state of several server nodes, on Redis (issue 10; the design is in
//! `docs/scaling.md`, "Several nodes sharing state in Redis").
//!
//! Each part is a component that owns its keys and scripts, and answers through typed results:
//!
//! - [`presence`]: who holds which id, on which node and connection: keys with a TTL and an atomic
//!   Lua claim (one live holder per id across every node), the sorted set `discover` pages.
//! - [`channel`]: a pub/sub channel per node (routed frames, "check mail", closes) and one for
//!   presence notices, resubscribed after Redis comes back.
//! - [`directory`]: the bindings of verified ids, with the binding rules and the `--max-bindings`
//!   cap applied by one script, so two nodes binding one id at once cannot both win.
//! - [`mailbox`]: a Redis stream per verified recipient, with deduplication by
//!   (sender, `messageId`) and the same quotas as the SQLite mailbox, written atomically by one
//!   script; a consumer group makes each entry owned by the connection it was handed to until
//!   its `ack`, and lets the recipient's next connection, on any node, take over what a closed or
//!   killed one never acknowledged.
//! - [`stats`]: the cross-node counters for `/metrics` (round-trip latency histogram, errors,
//!   channel traffic), shared by a node's components.
//!
//! The server uses them with `--redis` ([`crate::node`] holds one of each per node; the session
//! handlers call them where a single node calls the in-process hub and SQLite; see
//! `docs/scaling.md`, "Several nodes on Redis").
//!
//! Every id's keys carry a hash tag (`{alice}`), so one id's keys live in one Redis Cluster slot.
//! The global keys (`lattice:online`, `lattice:online:exp`, `lattice:bindings`) make the presence
//! and directory scripts single-instance for now (one Redis, or a primary with replicas).

pub mod channel;
pub mod directory;
pub mod mailbox;
pub mod presence;
pub mod stats;

use std::time::Duration;

use lattice_protocol::ClientId;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// How long one Redis command may take before it fails (and the caller answers `INTERNAL_ERROR`)
/// instead of holding a session.
pub const REDIS_RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long connecting to Redis may take.
pub const REDIS_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Reconnection attempts the connection manager makes per failed command before the command fails
/// (it keeps trying again on the next command).
pub const REDIS_RECONNECT_RETRIES: usize = 2;
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

/// A validated Redis URL: `redis://` or `rediss://` (TLS through rustls), with optional
/// user, password and database (`redis://:pw@host:6379/0`). A `rediss://` server's certificate
/// is checked against the system's roots, or only against the CA given with
/// [`RedisUrl::with_root_ca`] (a private CA, as Redis deployments often use).
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(String, Option<Vec<u8>>);

impl RedisUrl {
    /// Checks `s`.
    ///
    /// # Errors
    /// [`ClusterError::Url`] for another scheme or a URL the client cannot parse.
    pub fn parse(s: &str) -> Result<Self, ClusterError> {
        let scheme = s.split_once("://").map(|(scheme, _)| scheme);
        if !matches!(scheme, Some("redis" | "rediss")) {
            return Err(ClusterError::Url(
                "the URL must start with redis:// or rediss://".into(),
            ));
        }
        redis::Client::open(s).map_err(|e| ClusterError::Url(e.to_string()))?;
        Ok(Self(s.to_owned(), None))
    }

    /// Trusts only the CA certificate(s) in `pem` for `rediss://`.
    #[must_use]
    pub fn with_root_ca(mut self, pem: Vec<u8>) -> Self {
        self.1 = Some(pem);
        self
    }

    /// A client for this URL with `settings` (the connection info parsed from it, adjusted).
    fn client(
        &self,
        adjust: impl FnOnce(redis::ConnectionInfo) -> redis::ConnectionInfo,
    ) -> Result<redis::Client, ClusterError> {
        use redis::IntoConnectionInfo as _;
        if self.tls() {
            // redis-rs builds its rustls configuration on the process's default provider, and
            // the dependency graph enables more than one, so none is chosen by itself. Ring, as
            // everywhere else in Lattice; an error only means one is installed already.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let info = adjust(self.0.as_str().into_connection_info()?);
        Ok(match &self.1 {
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

    /// Whether the connection uses TLS.
    pub fn tls(&self) -> bool {
        self.0.starts_with("rediss://")
    }
}

/// Never prints the password.
impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (scheme, rest) = self.0.split_once("://").unwrap_or(("?", ""));
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

/// A connection to Redis that reconnects by itself (requests made while it is down fail after
/// [`REDIS_RESPONSE_TIMEOUT`] with [`ClusterError::Redis`]; the next one tries again).
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
    fn keys_of_one_id_share_a_hash_tag() {
        let id = ClientId::new("alice@example").unwrap();
        assert_eq!(id_key("peer", &id), "lattice:peer:{alice@example}");
        assert_eq!(id_key("mbox", &id), "lattice:mbox:{alice@example}");
    }
}
