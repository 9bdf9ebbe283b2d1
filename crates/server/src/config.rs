//! Server configuration: one [`Config`], from flags and `LATTICE_*` environment variables (the
//! binary) or built in code (embedding, tests). Defaults come from [`crate::limits`].

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::limits;

/// Everything the server can be told. Build it with [`Config::default`] (serves on 0.0.0.0:3005,
/// in-memory storage) or [`Config::for_tests`] and adjust fields.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "LATTICE_BIND", default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED))]
    pub bind: IpAddr,

    /// TCP port (0 picks a free one).
    #[arg(long, env = "LATTICE_PORT", default_value_t = lattice_protocol::limits::DEFAULT_PORT)]
    pub port: u16,

    /// Directory for the SQLite database (directory of identities and the offline mailbox) and
    /// the blob store (`blobs/`, unless `--blob-dir` names another).
    /// Without it, and with `--in-memory`, nothing survives a restart.
    #[arg(long, env = "LATTICE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Bearer token for the /admin API (at least 32 characters); the API is off without one.
    #[arg(long, env = "LATTICE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// File holding the admin token (first line). If it does not exist, a random token is
    /// generated and written there (mode 0600). Conflicts with --admin-token.
    #[arg(long, env = "LATTICE_ADMIN_TOKEN_FILE", conflicts_with = "admin_token")]
    pub admin_token_file: Option<PathBuf>,

    /// A browser origin allowed to open WebSockets (repeat the flag, or separate with commas in
    /// the env variable), e.g. `https://chat.example.org`. Upgrades carrying any other `Origin`
    /// header are refused with 403; native clients send none and are always accepted.
    #[arg(
        long = "allow-origin",
        env = "LATTICE_ALLOW_ORIGIN",
        value_delimiter = ','
    )]
    pub allow_origin: Vec<String>,

    /// Frames per second one connection may send (burst: twice as many); 0 turns the limit off.
    #[arg(long, env = "LATTICE_RATE_LIMIT", default_value_t = limits::RATE_LIMIT)]
    pub rate_limit: u32,

    /// Most simultaneous connections; more are refused with HTTP 503.
    #[arg(long, env = "LATTICE_MAX_CONNECTIONS", default_value_t = limits::MAX_CONNECTIONS)]
    pub max_connections: usize,

    /// Messages kept per peer (its mailbox plus live messages it has not acknowledged).
    #[arg(long, env = "LATTICE_MAILBOX_QUOTA", default_value_t = limits::MAILBOX_QUOTA)]
    pub mailbox_quota: u32,

    /// Bytes kept per peer, counted like --mailbox-quota.
    #[arg(long, env = "LATTICE_MAILBOX_BYTES", default_value_t = limits::MAILBOX_BYTES)]
    pub mailbox_bytes: u64,

    /// Messages one sender may have waiting for one peer (and the same share of
    /// --mailbox-bytes).
    #[arg(long, env = "LATTICE_MAILBOX_SENDER_QUOTA", default_value_t = limits::MAILBOX_SENDER_QUOTA)]
    pub mailbox_sender_quota: u32,

    /// Registrations one source address (IPv6: one /64) may hold at once; 0 turns the limit off.
    #[arg(long, env = "LATTICE_MAX_REGISTRATIONS_PER_IP",
          default_value_t = limits::MAX_REGISTRATIONS_PER_IP)]
    pub max_registrations_per_ip: usize,

    /// Apply --max-registrations-per-ip to loopback addresses too. Off by default: behind a
    /// reverse proxy on the same host every client arrives from 127.0.0.1.
    #[arg(long, env = "LATTICE_LIMIT_LOOPBACK")]
    pub limit_loopback: bool,

    /// Seconds an undelivered message is kept.
    #[arg(long = "mailbox-ttl", env = "LATTICE_MAILBOX_TTL", value_parser = parse_secs,
          default_value = secs(limits::MAILBOX_TTL))]
    pub mailbox_ttl: Duration,

    /// Seconds a server question waits for its answer.
    #[arg(long = "question-timeout", env = "LATTICE_QUESTION_TIMEOUT", value_parser = parse_secs,
          default_value = secs(limits::QUESTION_TIMEOUT))]
    pub question_timeout: Duration,

    /// Seconds after its registration a link relay (the throwaway id a new device links from)
    /// is closed; as long as a linking code is valid by default.
    #[arg(long = "link-relay-ttl", env = "LATTICE_LINK_RELAY_TTL", value_parser = parse_secs,
          default_value = secs(limits::LINK_RELAY_TTL))]
    pub link_relay_ttl: Duration,

    /// Seconds between pings to each connection.
    #[arg(long = "ping-interval", env = "LATTICE_PING_INTERVAL", value_parser = parse_secs,
          default_value = secs(limits::PING_INTERVAL))]
    pub ping_interval: Duration,

    /// Seconds of silence after which a connection is closed.
    #[arg(long = "idle-timeout", env = "LATTICE_IDLE_TIMEOUT", value_parser = parse_secs,
          default_value = secs(limits::IDLE_TIMEOUT))]
    pub idle_timeout: Duration,

    /// Seconds after which the binding of a verified id that has not registered since is deleted
    /// (the id becomes free); 0 keeps bindings forever. Default 180 days.
    #[arg(long = "binding-ttl", env = "LATTICE_BINDING_TTL", value_parser = parse_secs,
          default_value = secs(limits::BINDING_TTL))]
    pub binding_ttl: Duration,

    /// New verified ids one source address (IPv6: one /64) may create per hour (re-registering an
    /// existing id does not count); 0 turns the limit off. Loopback is exempt unless
    /// --limit-loopback.
    #[arg(long, env = "LATTICE_NEW_IDS_PER_IP", default_value_t = limits::NEW_IDS_PER_IP)]
    pub new_ids_per_ip: u32,

    /// Most bindings (verified ids) in the directory; new ids past it are refused. 0: no cap.
    #[arg(long, env = "LATTICE_MAX_BINDINGS", default_value_t = limits::MAX_BINDINGS)]
    pub max_bindings: u64,

    /// Seconds a message sent live to an online verified recipient waits in memory for the
    /// recipient's `ack` (the sender then hears `delivered`) before it is committed to the mailbox
    /// (the sender hears `queued`). 0: commit every message before answering (`delivered` then
    /// means "committed and handed to the connection"). At most 6.
    #[arg(long = "ack-wait", env = "LATTICE_ACK_WAIT", value_parser = parse_secs,
          default_value = secs(limits::ACK_WAIT))]
    pub ack_wait: Duration,

    /// Bytes the blob store may hold in total (declared sizes of live transfers).
    #[arg(long, env = "LATTICE_BLOB_QUOTA", default_value_t = limits::BLOB_QUOTA)]
    pub blob_quota: u64,

    /// Bytes one sender's live blob transfers may hold.
    #[arg(long, env = "LATTICE_BLOB_SENDER_QUOTA", default_value_t = limits::BLOB_SENDER_QUOTA)]
    pub blob_sender_quota: u64,

    /// Largest blob transfer (one file), in bytes.
    #[arg(long, env = "LATTICE_BLOB_MAX_FILE",
          default_value_t = lattice_protocol::limits::DEFAULT_MAX_BLOB_BYTES)]
    pub blob_max_file: u64,

    /// Directory of the blob store (files) instead of `DATA_DIR/blobs`. With `--redis`, files are
    /// served only with it, and every node must name the same directory on storage they all
    /// mount (NFS or a shared volume: docs/deployment.md); a node whose directory is not the
    /// others' refuses to start.
    #[arg(long, env = "LATTICE_BLOB_DIR")]
    pub blob_dir: Option<PathBuf>,

    /// Seconds a blob transfer is kept; then its bytes are deleted.
    #[arg(long = "blob-ttl", env = "LATTICE_BLOB_TTL", value_parser = parse_secs,
          default_value = secs(limits::BLOB_TTL))]
    pub blob_ttl: Duration,

    /// Frames that may wait to be written to one connection.
    #[arg(long, env = "LATTICE_OUTBOUND_QUEUE", default_value_t = limits::OUTBOUND_QUEUE)]
    pub outbound_queue: usize,

    /// Serve TLS (`wss://`, `https://`) with this PEM certificate chain, leaf first (with
    /// --tls-key). Both files are read again on SIGHUP; open connections are kept.
    #[arg(long, env = "LATTICE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The PEM private key of --tls-cert.
    #[arg(long, env = "LATTICE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Run as one node of several that share their state in Redis (`redis://host:6379` or
    /// `rediss://` for TLS, with optional `user:password@` and `/db`): who is online where, the
    /// routing between nodes, the directory of verified ids and the mailboxes live there, so any
    /// node serves any peer (docs/scaling.md). Without it the server is one node on SQLite.
    #[arg(long, env = "LATTICE_REDIS", hide_env_values = true, value_parser = parse_redis)]
    pub redis: Option<crate::cluster::RedisUrl>,

    /// With --redis: seconds an id stays held in Redis after its node's last refresh (three per
    /// TTL). When a node dies its peers' ids are free, and gone from `discover`, at most this
    /// long after; shorter means more refresh traffic. At least 3.
    #[arg(long = "presence-ttl", env = "LATTICE_PRESENCE_TTL", value_parser = parse_secs,
          default_value = secs(crate::cluster::presence::PRESENCE_TTL))]
    pub presence_ttl: Duration,
}

fn parse_redis(s: &str) -> Result<crate::cluster::RedisUrl, String> {
    crate::cluster::RedisUrl::parse(s).map_err(|e| e.to_string())
}

/// Creates `path` with `contents`, readable by the owner only (never overwrites).
fn write_private(path: &std::path::Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(contents.as_bytes())
}

/// A duration as the whole seconds its flag takes: clap's default for the duration flags comes
/// from the constant in [`crate::limits`], never a second copy of the number.
fn secs(d: Duration) -> String {
    d.as_secs().to_string()
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    s.parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|_| format!("`{s}` is not a number of seconds"))
}

impl Default for Config {
    fn default() -> Self {
        Self {
            bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port: lattice_protocol::limits::DEFAULT_PORT,
            data_dir: None,
            admin_token: None,
            admin_token_file: None,
            allow_origin: Vec::new(),
            rate_limit: limits::RATE_LIMIT,
            max_connections: limits::MAX_CONNECTIONS,
            mailbox_quota: limits::MAILBOX_QUOTA,
            mailbox_bytes: limits::MAILBOX_BYTES,
            mailbox_sender_quota: limits::MAILBOX_SENDER_QUOTA,
            max_registrations_per_ip: limits::MAX_REGISTRATIONS_PER_IP,
            limit_loopback: false,
            mailbox_ttl: limits::MAILBOX_TTL,
            question_timeout: limits::QUESTION_TIMEOUT,
            link_relay_ttl: limits::LINK_RELAY_TTL,
            ping_interval: limits::PING_INTERVAL,
            idle_timeout: limits::IDLE_TIMEOUT,
            outbound_queue: limits::OUTBOUND_QUEUE,
            ack_wait: limits::ACK_WAIT,
            binding_ttl: limits::BINDING_TTL,
            new_ids_per_ip: limits::NEW_IDS_PER_IP,
            max_bindings: limits::MAX_BINDINGS,
            blob_quota: limits::BLOB_QUOTA,
            blob_sender_quota: limits::BLOB_SENDER_QUOTA,
            blob_max_file: lattice_protocol::limits::DEFAULT_MAX_BLOB_BYTES,
            blob_ttl: limits::BLOB_TTL,
            blob_dir: None,
            tls_cert: None,
            tls_key: None,
            redis: None,
            presence_ttl: crate::cluster::presence::PRESENCE_TTL,
        }
    }
}

impl Config {
    /// Where the blob store keeps its files: `--blob-dir`, else `DATA_DIR/blobs`; none (blobs
    /// off) without either.
    pub fn blob_root(&self) -> Option<PathBuf> {
        self.blob_dir
            .clone()
            .or_else(|| self.data_dir.as_ref().map(|d| d.join("blobs")))
    }
}

/// A configuration value that cannot work.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

/// The admin token [`Config::for_tests`] sets.
pub const TEST_ADMIN_TOKEN: &str = "test-token-0123456789abcdefghijklmnop";

impl Config {
    /// Loopback, a free port, in-memory storage, admin token [`TEST_ADMIN_TOKEN`], no rate limit.
    pub fn for_tests() -> Self {
        Self {
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 0,
            admin_token: Some(TEST_ADMIN_TOKEN.into()),
            rate_limit: 0,
            ..Self::default()
        }
    }

    /// The mailbox limits per recipient.
    pub fn mailbox_quota(&self) -> crate::store::Quota {
        // A sender quota above the total is the total (one sender may then fill it).
        let sender_count = self.mailbox_sender_quota.min(self.mailbox_quota);
        let share = |total: u64| {
            total.saturating_mul(u64::from(sender_count)) / u64::from(self.mailbox_quota.max(1))
        };
        crate::store::Quota {
            count: self.mailbox_quota,
            bytes: self.mailbox_bytes,
            sender_count,
            sender_bytes: share(self.mailbox_bytes),
        }
    }

    /// Reads `--admin-token-file` into `admin_token`, generating the file (mode 0600) with a random
    /// token when it does not exist yet. Does nothing without the flag (or once loaded: the file
    /// setting is consumed).
    ///
    /// # Errors
    /// Both flags given, or the file cannot be read or created.
    pub fn load_admin_token(&mut self) -> Result<(), ConfigError> {
        let Some(path) = self.admin_token_file.take() else {
            return Ok(());
        };
        if self.admin_token.is_some() {
            return Err(ConfigError(
                "give either --admin-token or --admin-token-file, not both".into(),
            ));
        }
        let shown = path.display();
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let token = text.lines().next().unwrap_or_default().trim().to_owned();
                self.admin_token = Some(token);
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                use base64::Engine as _;
                let bytes: [u8; limits::GENERATED_ADMIN_TOKEN_BYTES] = rand::random();
                let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
                write_private(&path, &format!("{token}\n"))
                    .map_err(|e| ConfigError(format!("cannot create {shown}: {e}")))?;
                tracing::info!(path = %shown, "generated a new admin token");
                self.admin_token = Some(token);
                Ok(())
            }
            Err(e) => Err(ConfigError(format!("cannot read {shown}: {e}"))),
        }
    }

    /// The socket address to bind.
    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::new(self.bind, self.port)
    }

    /// Checks values that clap cannot.
    ///
    /// # Errors
    /// [`ConfigError`] naming the bad value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_connections == 0 {
            return Err(ConfigError("--max-connections must be at least 1".into()));
        }
        if self.outbound_queue < 8 {
            return Err(ConfigError("--outbound-queue must be at least 8".into()));
        }
        if self.ping_interval.is_zero() || self.idle_timeout <= self.ping_interval {
            return Err(ConfigError(
                "--idle-timeout must be longer than --ping-interval, and both above 0".into(),
            ));
        }
        if let Some(t) = &self.admin_token {
            if t.chars().count() < limits::MIN_ADMIN_TOKEN_LEN {
                return Err(ConfigError(format!(
                    "--admin-token must be at least {} characters; generate one with \
                     `head -c 32 /dev/urandom | base64`, or use --admin-token-file to have the \
                     server generate and store one",
                    limits::MIN_ADMIN_TOKEN_LEN
                )));
            }
        }
        if self.ack_wait > limits::MAX_ACK_WAIT {
            return Err(ConfigError(format!(
                "--ack-wait must be at most {} s (below clients' request timeout)",
                limits::MAX_ACK_WAIT.as_secs()
            )));
        }
        if self.presence_ttl < crate::cluster::presence::MIN_PRESENCE_TTL {
            return Err(ConfigError(format!(
                "--presence-ttl must be at least {} s (a refresh a second)",
                crate::cluster::presence::MIN_PRESENCE_TTL.as_secs()
            )));
        }
        if self.mailbox_quota == 0 {
            return Err(ConfigError("--mailbox-quota must be at least 1".into()));
        }
        if self.mailbox_sender_quota == 0 {
            return Err(ConfigError(
                "--mailbox-sender-quota must be at least 1".into(),
            ));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(ConfigError("--tls-cert and --tls-key go together".into()));
        }
        if self.blob_ttl.is_zero() {
            return Err(ConfigError("--blob-ttl must be above 0".into()));
        }
        // One largest ordinary message. A Commit or Welcome of a big group may be larger (up to
        // `MAX_SERVER_FRAME_BYTES`); the default share (4 MiB) holds it, and a mailbox set below
        // it refuses that Commit with `MAILBOX_FULL` rather than the server refusing to start.
        let largest = lattice_protocol::limits::MAX_SERVER_FRAME_BYTES_NON_MLS as u64;
        if self.mailbox_quota().sender_bytes < largest {
            return Err(ConfigError(format!(
                "--mailbox-bytes must leave each sender room for one largest message ({largest} bytes)"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_redis_and_a_redis_cluster_url_are_both_accepted() {
        let with = |url: &str| Config {
            redis: Some(crate::cluster::RedisUrl::parse(url).unwrap()),
            ..Config::for_tests()
        };
        assert!(with("redis://127.0.0.1:6379").validate().is_ok());
        assert!(with("redis+cluster://127.0.0.1:7000,127.0.0.1:7001")
            .validate()
            .is_ok());
    }
}
