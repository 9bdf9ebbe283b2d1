//! # lattice-server
//!
//! The Lattice signaling server: a WebSocket hub where peers register an id with a public key,
//! discover each other, fetch keys, exchange sealed messages the server cannot read, and answer
//! questions the server asks. It speaks the protocol of `docs/protocol.md` (crate
//! [`lattice_protocol`]), a superset of the original MessagingPeer protocol.
//!
//! ```no_run
//! # async fn demo() -> Result<(), lattice_server::ServerError> {
//! let server = lattice_server::spawn(lattice_server::Config::for_tests()).await?;
//! println!("clients connect to {}", server.url());
//! server.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! ## Modules
//! - [`config`]: [`Config`], from flags/env or code; [`limits`]: every bound with its reason.
//! - [`http`]: one port for the WebSocket upgrade (any path), `/healthz`, `/metrics`, `/admin`;
//!   [`admin_guard`]: the backoff on failed admin logins.
//! - [`ws`]: the WebSocket upgrade and frame codec, over buffers a connection lets go when idle.
//! - [`session`]: one task per connection: the socket loop, over a socket-free core with one handler
//!   per frame (`session::handlers`); the slow-consumer and no-loss policies are written there.
//! - [`hub`]: who is online where, routing and presence ([`hub::Hub`], in-process [`hub::LocalHub`]).
//! - [`inflight`]: messages sent live to a verified recipient and held until its `ack` (the
//!   end-to-end `delivered`), bounded per connection and in total.
//! - [`store`]: durable [`store::Directory`] of identity bindings and [`store::Mailbox`] (SQLite),
//!   and the MLS delivery service's KeyPackages and groups on the same [`store::SqliteStore`].
//! - [`questions`]: server-initiated multi-round conversations (demo and admin API).
//! - [`blobs`]: the encrypted, chunked blob store (files) under `DATA_DIR/blobs/`; `blob_http`:
//!   its HTTP endpoints.
//! - [`cluster`]: the shared state of several nodes on Redis (presence claims, node channels,
//!   mailbox streams, directory); [`node`]: this server as one of those nodes (`--redis`), the
//!   messages nodes send each other and the loops that hand them to local sessions
//!   (`docs/scaling.md`).
//! - [`metrics`]: counters for `/metrics`.
//! - [`tls`]: native TLS from `--tls-cert`/`--tls-key`, reloaded on `SIGHUP`.
//! - `sweeper`: housekeeping every few seconds: heartbeat pings, idle and registration timeouts,
//!   expiry of questions, mail and unused bindings; and the in-flight reaper, which spills held
//!   messages whose ack wait ran out to the mailbox.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

// The unit tests include the integration tests' `redis-server` harness, which names the crate.
#[cfg(test)]
extern crate self as lattice_server;

pub mod admin_guard;
mod blob_http;
pub mod blobs;
pub mod cluster;
pub mod config;
pub mod http;
pub mod hub;
pub mod inflight;
pub mod limits;
pub mod metrics;
pub mod node;
pub mod questions;
pub mod session;
pub mod state;
pub mod store;
mod sweeper;
pub mod tls;
pub mod writer;
pub mod ws;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::Arc;

pub use config::{Config, ConfigError};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::hub::LocalHub;
use crate::questions::Questions;
use crate::state::ServerState;
use crate::store::SqliteStore;

/// Why the server could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A configuration value is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Storage could not be opened.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The blob store could not be opened.
    #[error("cannot open the blob store: {0}")]
    Blobs(#[from] blobs::BlobError),
    /// The listener failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The TLS certificate or key cannot be used.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// Serving failed.
    #[error("server I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// `--redis` was given and Redis cannot be reached (a node needs it to start).
    #[error("cannot join the cluster on Redis: {0}")]
    Redis(#[from] cluster::ClusterError),
}

/// A server running in the background. Dropping it stops the server (without waiting);
/// [`ServerHandle::shutdown`] stops it and waits until every session closed and storage is flushed.
#[derive(Debug)]
pub struct ServerHandle {
    addr: SocketAddr,
    token: CancellationToken,
    task: Option<tokio::task::JoinHandle<Result<(), ServerError>>>,
}

impl ServerHandle {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
    /// `ws://ADDR` for clients.
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }
    /// `http://ADDR` for the admin API.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.addr)
    }
    /// Stops the server gracefully and waits for it.
    pub async fn shutdown(mut self) {
        self.token.cancel();
        if let Some(task) = self.task.take() {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!(error = %e, "server stopped with an error"),
                Err(e) => warn!(error = %e, "server task failed"),
            }
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// Binds per `config` and serves in a background task.
///
/// # Errors
/// Invalid configuration, storage that cannot be opened, or an address that cannot be bound.
pub async fn spawn(mut config: Config) -> Result<ServerHandle, ServerError> {
    config.load_admin_token()?;
    config.validate()?;
    let addr = config.socket_addr();
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })?;
    let addr = listener.local_addr()?;
    let token = CancellationToken::new();
    let tls = load_tls(&config)?;
    let state = start_state(config, token.clone()).await?;
    let shutdown = token.clone().cancelled_owned();
    let task = tokio::spawn(serve(listener, tls, state, shutdown));
    Ok(ServerHandle {
        addr,
        token,
        task: Some(task),
    })
}

/// Serves on `listener` until `shutdown` resolves, then closes every session (close frame 1001),
/// returns undelivered mail to the mailbox, and flushes storage.
///
/// # Errors
/// Invalid configuration, storage that cannot be opened, or a listener failure.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let mut config = config;
    config.load_admin_token()?;
    config.validate()?;
    let tls = load_tls(&config)?;
    let state = start_state(config, CancellationToken::new()).await?;
    serve(listener, tls, state, shutdown).await
}

/// Native TLS if the configuration asks for it (loaded before serving, so a bad certificate stops
/// the start).
fn load_tls(config: &Config) -> Result<Option<tls::Tls>, ServerError> {
    match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Ok(Some(tls::Tls::load(cert, key)?)),
        _ => Ok(None),
    }
}

/// The state, and with `--redis` this node joined to the cluster with its loops running (they
/// end with `shutdown`, and shutdown waits for them with the sessions).
async fn start_state(
    config: Config,
    shutdown: CancellationToken,
) -> Result<Arc<ServerState>, ServerError> {
    let Some(url) = config.redis.clone() else {
        return build_state(config, shutdown);
    };
    let (node, inbound) = node::Node::connect(&url, config.presence_ttl, shutdown.clone()).await?;
    let node = Arc::new(node);
    let blobs = shared_blobs(&config, &url, &node).await?;
    let state = build_state_with(config, shutdown.clone(), Some(Arc::clone(&node)), blobs)?;
    let hub = Arc::clone(&state.hub);
    state.tasks.spawn(node::run_inbound(
        Arc::clone(&node),
        Arc::clone(&hub),
        inbound,
        shutdown.clone(),
    ));
    state.tasks.spawn(node::run_awaiting(
        Arc::clone(&node),
        state.config.ack_wait,
        shutdown.clone(),
    ));
    state
        .tasks
        .spawn(node::run_refresh(node, hub, shutdown.clone()));
    Ok(state)
}

fn build_state(
    config: Config,
    shutdown: CancellationToken,
) -> Result<Arc<ServerState>, ServerError> {
    build_state_with(config, shutdown, None, None)
}

fn blob_limits(config: &Config) -> blobs::BlobLimits {
    blobs::BlobLimits {
        total: config.blob_quota,
        per_sender: config.blob_sender_quota,
        max_file: config.blob_max_file,
        ttl: config.blob_ttl,
    }
}

/// On a node of several: the blob store on the shared directory with its records in Redis, and
/// the blob tokens in Redis (on a connection of its own, so file traffic does not queue behind
/// messages); `None` (files off) without `--blob-dir`: `DATA_DIR/blobs` is this node's alone,
/// where the other nodes could not read what it stores.
async fn shared_blobs(
    config: &Config,
    url: &cluster::RedisUrl,
    node: &node::Node,
) -> Result<Option<(Arc<blobs::Blobs>, blobs::Tokens)>, ServerError> {
    let Some(root) = config.blob_dir.clone() else {
        return Ok(None);
    };
    let redis = cluster::blobs::RedisBlobs::new(cluster::RedisConn::open(url).await?)
        .with_stats(Arc::clone(&node.stats));
    let store = blobs::SharedStore::open(&root, blob_limits(config), redis.clone()).await?;
    Ok(Some((
        Arc::new(blobs::Blobs::Shared(Arc::new(store))),
        blobs::Tokens::shared(redis),
    )))
}

fn build_state_with(
    config: Config,
    shutdown: CancellationToken,
    node: Option<Arc<node::Node>>,
    shared_blobs: Option<(Arc<blobs::Blobs>, blobs::Tokens)>,
) -> Result<Arc<ServerState>, ServerError> {
    let store = Arc::new(match &config.data_dir {
        Some(dir) => SqliteStore::open(dir)?,
        None => SqliteStore::in_memory()?,
    });
    let single = node.is_none();
    let (blobs, blob_tokens) = match (shared_blobs, config.blob_root()) {
        (Some((blobs, tokens)), _) => (Some(blobs), tokens),
        (None, Some(root)) if single => (
            Some(Arc::new(blobs::Blobs::Local(Arc::new(
                blobs::BlobStore::open(&root, blob_limits(&config))?,
            )))),
            blobs::Tokens::default(),
        ),
        (None, _) => (None, blobs::Tokens::default()),
    };
    let questions = Questions::new(config.question_timeout);
    let writer = writer::Writer::spawn(store.clone(), config.mailbox_quota(), config.mailbox_ttl)
        .map_err(ServerError::Io)?;
    Ok(Arc::new(ServerState {
        writer: Arc::new(writer),
        hub: Arc::new(LocalHub::default()),
        directory: store.clone(),
        mailbox: store.clone(),
        store,
        questions,
        metrics: metrics::Metrics::default(),
        sessions: hub::Sessions::default(),
        open_connections: AtomicUsize::new(0),
        next_conn: AtomicU64::new(1),
        started: tokio::time::Instant::now(),
        shutdown,
        tasks: TaskTracker::new(),
        addresses: state::AddressSlots::default(),
        admin_guard: admin_guard::AdminGuard::default(),
        new_ids: state::NewIdLimiter::default(),
        in_flight_budget: Arc::new(inflight::Budget::new(limits::IN_FLIGHT_BYTES)),
        large_messages: ws::LargeMessages::new(limits::LARGE_MESSAGES_IN_FLIGHT),
        blobs,
        blob_tokens,
        node,
        config,
    }))
}

async fn serve(
    listener: TcpListener,
    tls: Option<tls::Tls>,
    state: Arc<ServerState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let token = state.shutdown.clone();
    let addr = listener.local_addr()?;
    info!(%addr, persistent = state.config.data_dir.is_some(), tls = tls.is_some(),
        node = state.node.as_ref().map(|n| n.id.to_string()), "lattice-server listening");
    let sweeper = tokio::spawn(sweeper::sweep(Arc::clone(&state)));
    let reaper = tokio::spawn(session::reap_in_flight(Arc::clone(&state)));
    let app = http::router(Arc::clone(&state)).into_make_service_with_connect_info::<SocketAddr>();
    let stop = {
        let token = token.clone();
        async move {
            tokio::select! {
                () = shutdown => token.cancel(),
                () = token.cancelled() => {}
            }
        }
    };
    let served = match tls {
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await
        }
        Some(tls) => {
            // tap_io: axum gives the connection's address to `ConnectInfo` for a tapped listener
            let listener = axum::serve::ListenerExt::tap_io(tls.listen(listener)?, |_| {});
            axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await
        }
    };
    // axum does not wait for upgraded WebSockets: sessions are tracked here. Each sees the
    // cancelled token, sends its close frame and hands undelivered mail back to the mailbox.
    token.cancel();
    state.tasks.close();
    if tokio::time::timeout(limits::SHUTDOWN_GRACE, state.tasks.wait())
        .await
        .is_err()
    {
        warn!(
            left = state.tasks.len(),
            "sessions still open after the grace period"
        );
    }
    sweeper.abort();
    let _ = sweeper.await;
    // It saw the cancelled token; a spill it started finishes (each closing session spilled its
    // own held messages).
    if tokio::time::timeout(limits::SHUTDOWN_GRACE, reaper)
        .await
        .is_err()
    {
        warn!("the in-flight reaper did not stop within the grace period");
    }
    if let Err(e) = state.store.checkpoint() {
        warn!(error = %e, "checkpoint at shutdown failed");
    }
    info!("lattice-server stopped");
    served.map_err(ServerError::Io)
}
