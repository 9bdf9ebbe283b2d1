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

    /// Directory for the SQLite database (directory of identities and the offline mailbox).
    /// Without it, and with `--in-memory`, nothing survives a restart.
    #[arg(long, env = "LATTICE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Bearer token for the /admin API; the API is off without one.
    #[arg(long, env = "LATTICE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

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
          default_value = "604800")]
    pub mailbox_ttl: Duration,

    /// Seconds a server question waits for its answer.
    #[arg(long = "question-timeout", env = "LATTICE_QUESTION_TIMEOUT", value_parser = parse_secs,
          default_value = "300")]
    pub question_timeout: Duration,

    /// Seconds between pings to each connection.
    #[arg(long = "ping-interval", env = "LATTICE_PING_INTERVAL", value_parser = parse_secs,
          default_value = "20")]
    pub ping_interval: Duration,

    /// Seconds of silence after which a connection is closed.
    #[arg(long = "idle-timeout", env = "LATTICE_IDLE_TIMEOUT", value_parser = parse_secs,
          default_value = "60")]
    pub idle_timeout: Duration,

    /// Frames that may wait to be written to one connection.
    #[arg(long, env = "LATTICE_OUTBOUND_QUEUE", default_value_t = limits::OUTBOUND_QUEUE)]
    pub outbound_queue: usize,
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
            rate_limit: limits::RATE_LIMIT,
            max_connections: limits::MAX_CONNECTIONS,
            mailbox_quota: limits::MAILBOX_QUOTA,
            mailbox_bytes: limits::MAILBOX_BYTES,
            mailbox_sender_quota: limits::MAILBOX_SENDER_QUOTA,
            max_registrations_per_ip: limits::MAX_REGISTRATIONS_PER_IP,
            limit_loopback: false,
            mailbox_ttl: limits::MAILBOX_TTL,
            question_timeout: limits::QUESTION_TIMEOUT,
            ping_interval: limits::PING_INTERVAL,
            idle_timeout: limits::IDLE_TIMEOUT,
            outbound_queue: limits::OUTBOUND_QUEUE,
        }
    }
}

/// A configuration value that cannot work.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

impl Config {
    /// Loopback, a free port, in-memory storage, admin token `test-token`, no rate limit.
    pub fn for_tests() -> Self {
        Self {
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 0,
            admin_token: Some("test-token".into()),
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
            if t.len() < 8 {
                return Err(ConfigError(
                    "--admin-token must be at least 8 characters".into(),
                ));
            }
        }
        if self.mailbox_quota == 0 {
            return Err(ConfigError("--mailbox-quota must be at least 1".into()));
        }
        if self.mailbox_sender_quota == 0 {
            return Err(ConfigError(
                "--mailbox-sender-quota must be at least 1".into(),
            ));
        }
        let largest = lattice_protocol::limits::MAX_SERVER_FRAME_BYTES as u64;
        if self.mailbox_quota().sender_bytes < largest {
            return Err(ConfigError(format!(
                "--mailbox-bytes must leave each sender room for one largest message ({largest} bytes)"
            )));
        }
        Ok(())
    }
}
