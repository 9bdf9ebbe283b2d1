//! [`PeerConfig`] and its parts: the reconnect [`Backoff`], the [`Timeouts`] and [`TlsOptions`].

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lattice_crypto::{Identity, IdentityPublicKey};
use lattice_protocol::ClientId;
use rand::Rng as _;

use crate::defaults;
use crate::history::{MessageLookup, NoHistory};
use crate::keys::{KeyStore, MemoryKeyStore};
use crate::linking::LinkedDevice;

/// What this peer proves who it is with: the id's [`Identity`] (its primary device, or a
/// throwaway id while linking), or a [`LinkedDevice`] of the id (docs/mls.md, *Multi-device*).
///
/// A linked device holds its own device key, the certificate the identity key signed over it and
/// the id's signed device list, never the identity key nor the long-term ML-KEM key. So it
/// registers as a device of the id, speaks MLS only (its MLS credential is chained identity key
/// → device key → MLS key) and cannot link or remove devices
/// ([`crate::PeerError::MlsOnlyDevice`], [`crate::PeerError::PrimaryOnly`]).
#[derive(Clone, Debug)]
pub enum Credentials {
    /// The identity itself: the Ed25519 identity key and the ML-KEM key it signs.
    Primary(Arc<Identity>),
    /// A linked device of the id (from the linking bundle, or [`crate::device_file::load`]).
    Device(Arc<LinkedDevice>),
}

impl Credentials {
    /// The id's identity key (for a linked device, the one its certificate chains to).
    pub fn identity_public_key(&self) -> IdentityPublicKey {
        match self {
            Self::Primary(i) => i.identity_public_key(),
            Self::Device(d) => d.identity_key,
        }
    }

    /// The identity, when this peer holds it.
    pub fn identity(&self) -> Option<&Arc<Identity>> {
        match self {
            Self::Primary(i) => Some(i),
            Self::Device(_) => None,
        }
    }

    /// The linked device, when this peer is one.
    pub fn device(&self) -> Option<&Arc<LinkedDevice>> {
        match self {
            Self::Primary(_) => None,
            Self::Device(d) => Some(d),
        }
    }
}

/// Everything a [`crate::MessagingPeer`] needs.
///
/// The id's own device (it holds the [`Identity`]):
///
/// ```
/// use lattice_crypto::Identity;
/// use lattice_peer::{Backoff, PeerConfig};
/// use lattice_protocol::ClientId;
///
/// let identity = Identity::generate(&mut rand_core::OsRng);
/// let mut config = PeerConfig::new("ws://127.0.0.1:3005", ClientId::new("alice")?, identity);
/// config.reconnect = Backoff { max_attempts: 3, ..Backoff::default() };
/// # Ok::<(), lattice_protocol::IdError>(())
/// ```
///
/// A linked device of the id, restarted from the file it saved after linking
/// ([`crate::device_file`]); it needs MLS state, since MLS is all it speaks:
///
/// ```no_run
/// use lattice_peer::{device_file, PeerConfig};
/// use lattice_protocol::ClientId;
///
/// let alice = ClientId::new("alice")?;
/// let linked = device_file::load("/tmp/alice-laptop.device".as_ref(), &alice)?;
/// let mut config = PeerConfig::for_device("ws://127.0.0.1:3005", linked);
/// config.mls_state = Some("/tmp/alice-laptop.mls".into());
/// assert!(config.credentials.device().is_some());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct PeerConfig {
    /// `ws://host:port[/path]` or `wss://...`.
    pub server_url: String,
    /// The id to register.
    pub client_id: ClientId,
    /// Who we are: the identity, or a linked device of the id ([`Credentials`]).
    pub credentials: Credentials,
    /// The reconnect policy.
    pub reconnect: Backoff,
    /// Whether [`crate::MessagingPeer::connect`] keeps dialling when the *first* connection fails
    /// for a reason that may pass (see [`crate::PeerError::is_permanent`]), with the same
    /// [`PeerConfig::reconnect`] backoff as after a loss, instead of returning the error at once.
    /// The state goes through [`crate::ConnectionState::Reconnecting`] meanwhile, and `connect`
    /// resolves once registered, or with the last error when the backoff gives up. For a program
    /// started next to its server (a bot, the desktop app hosting one) that should wait for it.
    /// Off by default: a caller that asks once learns at once that the server is not there.
    pub retry_first_connect: bool,
    /// Request, connect and keepalive timeouts.
    pub timeouts: Timeouts,
    /// Frames held while disconnected; see [`defaults::OUTBOUND_QUEUE`].
    pub outbound_queue: usize,
    /// TLS options for `wss://`.
    pub tls: TlsOptions,
    /// Where pinned identity keys live (TOFU). In memory by default; the desktop app persists it.
    pub key_store: Arc<dyn KeyStore>,
    /// The app's message history, asked when an edit, a delete, a reaction or a receipt refers to
    /// a message this run has not seen ([`crate::MessageLookup`]). Knows nothing by default
    /// ([`crate::NoHistory`]): only this run's messages can then be edited, deleted or reacted to.
    pub history: Arc<dyn MessageLookup>,
    /// Where this device's MLS state lives (a SQLite file, created owner-only (0600) on first
    /// use; it holds every group's secrets). `None` (the default): groups are off, and nothing
    /// else changes.
    pub mls_state: Option<PathBuf>,
    /// How long after this device's last self-update in a group it makes the next one (healing).
    /// Default [`defaults::SELF_UPDATE_INTERVAL`].
    pub group_self_update: Duration,
    /// Where file transfers keep their journals (one small file per unfinished transfer, created
    /// owner-only: it holds the file's key), so that they resume after a restart by themselves.
    /// `None` (the default): file transfers are off ([`crate::PeerError::FilesDisabled`]);
    /// receiving file messages works either way.
    pub transfers_dir: Option<PathBuf>,
    /// Plaintext bytes per chunk of the files this peer sends: from
    /// [`lattice_protocol::limits::MIN_BLOB_CHUNK_BYTES`] (64 KiB) to
    /// [`lattice_protocol::limits::MAX_BLOB_CHUNK_BYTES`] less the 28 bytes of a sealed chunk's
    /// nonce and tag (8 MiB − 28); [`crate::MessagingPeer::new`] refuses others. A transfer holds
    /// about twice this times [`PeerConfig::file_chunks_in_flight`] in memory. Default
    /// [`defaults::FILE_CHUNK_BYTES`] (docs/performance.md, *Files*, has the measurements).
    pub file_chunk_bytes: u64,
    /// Chunks of one transfer (upload or download) in flight at once, 1 to
    /// [`defaults::MAX_FILE_CHUNKS_IN_FLIGHT`]. The server runs at most 4 uploads of one sender
    /// at once: more wait there. Default [`defaults::FILE_CHUNKS_IN_FLIGHT`].
    pub file_chunks_in_flight: usize,
    /// Register as a *link relay* (docs/protocol.md, "Link relays"): the server never lists this
    /// id and lets it send only linking envelopes to one id, for
    /// [`lattice_protocol::limits::LINK_RELAY_TTL_SECS`]. Set by [`PeerConfig::for_linking`].
    pub link_relay: bool,
}

impl PeerConfig {
    /// A configuration with every default: in-memory key store, the default backoff and timeouts.
    pub fn new(server_url: impl Into<String>, client_id: ClientId, identity: Identity) -> Self {
        Self::with_credentials(
            server_url,
            client_id,
            Credentials::Primary(Arc::new(identity)),
        )
    }

    /// A configuration for a **new device about to link** ([`crate::MessagingPeer::start_linking`]):
    /// a throwaway id (`link-` and 16 random hex digits) with a fresh identity, registered as a
    /// *link relay*, so that it never shows up in anyone's `discover` or presence and the server
    /// closes it after [`lattice_protocol::limits::LINK_RELAY_TTL_SECS`]. It does not reconnect:
    /// a linking run does not outlive its connection's relay. A server that predates link relays
    /// registers it as an ordinary id, and linking works the same.
    ///
    /// ```
    /// use lattice_peer::{MessagingPeer, PeerConfig};
    ///
    /// let config = PeerConfig::for_linking("ws://127.0.0.1:3005");
    /// assert!(config.link_relay);
    /// assert!(config.client_id.as_str().starts_with("link-"));
    /// let peer = MessagingPeer::new(config)?;
    /// // peer.connect().await?; then peer.start_linking(&alice, laptop)? shows the code.
    /// # drop(peer);
    /// # Ok::<(), lattice_peer::PeerError>(())
    /// ```
    pub fn for_linking(server_url: impl Into<String>) -> Self {
        let suffix: [u8; 8] = rand::random();
        let client_id = ClientId::new(format!("link-{}", hex::encode(suffix)))
            // `link-` and 16 hex digits is always a valid id.
            .unwrap_or_else(|_| unreachable!("a valid id"));
        let identity = Identity::generate(&mut rand_core::OsRng);
        let mut config = Self::with_credentials(
            server_url,
            client_id,
            Credentials::Primary(Arc::new(identity)),
        );
        config.link_relay = true;
        config.reconnect.enabled = false;
        config
    }

    /// A configuration for linked device `linked` of its id, with every default (set
    /// [`PeerConfig::mls_state`]: a linked device speaks MLS only). Its id is `linked.client_id`.
    pub fn for_device(server_url: impl Into<String>, linked: LinkedDevice) -> Self {
        let client_id = linked.client_id.clone();
        Self::with_credentials(server_url, client_id, Credentials::Device(Arc::new(linked)))
    }

    fn with_credentials(
        server_url: impl Into<String>,
        client_id: ClientId,
        credentials: Credentials,
    ) -> Self {
        Self {
            server_url: server_url.into(),
            client_id,
            credentials,
            reconnect: Backoff::default(),
            retry_first_connect: false,
            timeouts: Timeouts::default(),
            outbound_queue: defaults::OUTBOUND_QUEUE,
            tls: TlsOptions::default(),
            key_store: Arc::new(MemoryKeyStore::default()),
            history: Arc::new(NoHistory),
            mls_state: None,
            group_self_update: defaults::SELF_UPDATE_INTERVAL,
            transfers_dir: None,
            file_chunk_bytes: defaults::FILE_CHUNK_BYTES,
            file_chunks_in_flight: defaults::FILE_CHUNKS_IN_FLIGHT,
            link_relay: false,
        }
    }
}

impl fmt::Debug for PeerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The identity is deliberately left out: it holds secrets.
        f.debug_struct("PeerConfig")
            .field("server_url", &self.server_url)
            .field("client_id", &self.client_id)
            .field(
                "device",
                &self.credentials.device().map(|d| d.device_id.clone()),
            )
            .field("reconnect", &self.reconnect)
            .field("retry_first_connect", &self.retry_first_connect)
            .field("timeouts", &self.timeouts)
            .field("outbound_queue", &self.outbound_queue)
            .field("tls", &self.tls)
            .field("mls_state", &self.mls_state)
            .field("group_self_update", &self.group_self_update)
            .field("transfers_dir", &self.transfers_dir)
            .field("file_chunk_bytes", &self.file_chunk_bytes)
            .field("file_chunks_in_flight", &self.file_chunks_in_flight)
            .field("link_relay", &self.link_relay)
            .finish_non_exhaustive()
    }
}

/// Reconnect policy: exponential backoff with a cap, a bounded number of attempts and jitter.
///
/// The delay before attempt `n` (1-based) is `min(base · factorⁿ⁻¹, max)`, then reduced by a random
/// fraction of up to `jitter`. The attempt counter resets only once a new connection has
/// re-registered, so a server that accepts sockets but refuses registration still backs off.
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    /// First delay.
    pub base: Duration,
    /// Growth factor per attempt (values below 1 are treated as 1).
    pub factor: f64,
    /// Largest delay.
    pub max: Duration,
    /// Consecutive failed attempts before giving up; 0 means never give up.
    pub max_attempts: u32,
    /// Fraction in `[0, 1]` of each delay that is randomised; 0 (or NaN) disables jitter.
    pub jitter: f64,
    /// Whether to reconnect at all after a connection is lost.
    pub enabled: bool,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: defaults::BACKOFF_BASE,
            factor: defaults::BACKOFF_FACTOR,
            max: defaults::BACKOFF_MAX,
            max_attempts: defaults::BACKOFF_MAX_ATTEMPTS,
            jitter: defaults::BACKOFF_JITTER,
            enabled: true,
        }
    }
}

impl Backoff {
    /// The delay before attempt `attempt` (1-based) without jitter.
    ///
    /// ```
    /// use std::time::Duration;
    /// let b = lattice_peer::Backoff::default();
    /// assert_eq!(b.nominal_delay(1), Duration::from_secs(1));
    /// assert_eq!(b.nominal_delay(3), Duration::from_secs(4));
    /// assert_eq!(b.nominal_delay(9), Duration::from_secs(30));
    /// ```
    pub fn nominal_delay(&self, attempt: u32) -> Duration {
        let exp = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let secs = self.base.as_secs_f64() * self.factor.max(1.0).powi(exp);
        let max = self.max.as_secs_f64();
        Duration::try_from_secs_f64(secs.min(max)).unwrap_or(self.max)
    }

    /// The delay before attempt `attempt`, with jitter applied.
    pub fn delay(&self, attempt: u32) -> Duration {
        let nominal = self.nominal_delay(attempt);
        // NaN is treated as no jitter (clamp would keep it, and sampling an empty range panics).
        let jitter = if self.jitter.is_nan() {
            0.0
        } else {
            self.jitter.clamp(0.0, 1.0)
        };
        if jitter == 0.0 {
            return nominal;
        }
        let cut = rand::thread_rng().gen_range(0.0..=jitter);
        nominal.mul_f64(1.0 - cut)
    }

    /// Whether attempt `attempt` (1-based) is allowed.
    pub fn allows(&self, attempt: u32) -> bool {
        self.enabled && (self.max_attempts == 0 || attempt <= self.max_attempts)
    }
}

/// Timeouts of requests, dialling and keepalive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeouts {
    /// Per-attempt timeout of a request (register, discover, key lookup, ...).
    pub request: Duration,
    /// Dialling: TCP, TLS and the WebSocket handshake.
    pub connect: Duration,
    /// Interval between keepalive pings (at least 1 ms is used).
    pub ping_interval: Duration,
    /// How long after a ping some frame must arrive.
    pub pong_timeout: Duration,
    /// Longest single socket write.
    pub write: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            request: defaults::REQUEST_TIMEOUT,
            connect: defaults::CONNECT_TIMEOUT,
            ping_interval: defaults::PING_INTERVAL,
            pong_timeout: defaults::PONG_TIMEOUT,
            write: defaults::WRITE_TIMEOUT,
        }
    }
}

/// TLS options for `wss://` servers. The platform's root certificates are always trusted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// PEM text of extra CA certificates to trust (a private or test CA).
    pub extra_ca_pem: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_stops() {
        let b = Backoff::default();
        let secs: Vec<u64> = (1..=7).map(|n| b.nominal_delay(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 30, 30]);
        assert!(b.allows(10));
        assert!(!b.allows(11));
        let forever = Backoff {
            max_attempts: 0,
            ..Backoff::default()
        };
        assert!(forever.allows(1_000_000));
        assert_eq!(forever.nominal_delay(u32::MAX), Duration::from_secs(30));
        let off = Backoff {
            enabled: false,
            ..Backoff::default()
        };
        assert!(!off.allows(1));
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let b = Backoff {
            jitter: 0.5,
            ..Backoff::default()
        };
        for _ in 0..200 {
            let d = b.delay(3);
            assert!(
                d <= Duration::from_secs(4) && d >= Duration::from_secs(2),
                "{d:?}"
            );
        }
        let none = Backoff {
            jitter: 0.0,
            ..Backoff::default()
        };
        assert_eq!(none.delay(2), Duration::from_secs(2));
        for jitter in [f64::NAN, f64::INFINITY, -1.0] {
            let odd = Backoff {
                jitter,
                ..Backoff::default()
            };
            assert!(odd.delay(2) <= Duration::from_secs(2), "{jitter}");
        }
    }
}
