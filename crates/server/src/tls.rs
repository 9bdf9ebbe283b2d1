//! Native TLS (`wss://` and `https://` on the one port), so a small deployment needs no proxy.
//!
//! `--tls-cert` (a PEM certificate chain, leaf first) and `--tls-key` (its PEM private key) are
//! read at start; a bad pair stops the start with an error naming the file. On `SIGHUP` both are
//! read again and, if they load and match, new handshakes use them; connections already open keep
//! the session they have (nothing is dropped). A pair that does not load is logged and the old one
//! stays in use.
//!
//! Handshakes run on their own tasks, at most [`MAX_TLS_HANDSHAKES`] at once and each within
//! [`TLS_HANDSHAKE_TIMEOUT`], so a client that opens a socket and sends nothing cannot hold up
//! the others; the finished streams are handed to axum through [`TlsListener`].

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_rustls::server::TlsStream;
use tracing::{debug, info, warn};

use crate::limits::{MAX_TLS_HANDSHAKES, TLS_HANDSHAKE_TIMEOUT};

/// Why the certificate or key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file cannot be read or holds no valid PEM of the kind needed.
    #[error("{}: {reason}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The key does not fit the certificate, or is of a kind rustls cannot sign with.
    #[error("TLS key {}: {reason}", path.display())]
    Key {
        /// The key file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Signal handling for the reload could not be set up.
    #[error("cannot listen for SIGHUP: {0}")]
    Signal(#[source] std::io::Error),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads and checks the pair.
fn load(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let file_error = |path: &Path, reason: String| TlsError::File {
        path: path.to_owned(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_error(cert, e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(file_error(cert, "no certificate in the file".into()));
    }
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| file_error(key, e.to_string()))?;
    let key_error = |reason: String| TlsError::Key {
        path: key.to_owned(),
        reason,
    };
    let signing = provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| key_error(e.to_string()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|e| key_error(format!("does not match the certificate: {e}")))?;
    Ok(Arc::new(certified))
}

/// The certificate in use, swapped on reload.
struct Certificate {
    cert: PathBuf,
    key: PathBuf,
    /// Read for every handshake, written on reload: a short critical section with no `.await`.
    current: RwLock<Arc<CertifiedKey>>,
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for Certificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| Arc::clone(&c))
    }
}

impl Certificate {
    fn reload(&self) -> Result<(), TlsError> {
        let fresh = load(&self.cert, &self.key)?;
        if let Ok(mut current) = self.current.write() {
            *current = fresh;
        }
        Ok(())
    }
}

/// Native TLS, loaded and ready to listen.
#[derive(Debug)]
pub struct Tls {
    certificate: Arc<Certificate>,
    config: Arc<rustls::ServerConfig>,
    #[cfg(unix)]
    hangup: tokio::signal::unix::Signal,
}

impl Tls {
    /// Loads `cert` and `key` and starts listening for `SIGHUP` (so a reload signal sent once
    /// this returns is never missed). Must run inside the Tokio runtime.
    ///
    /// # Errors
    /// A file cannot be read, holds no usable PEM, or the key does not match the certificate.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let certificate = Arc::new(Certificate {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: RwLock::new(load(cert, key)?),
        });
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Key {
                path: key.to_owned(),
                reason: e.to_string(),
            })?
            .with_no_client_auth()
            .with_cert_resolver(certificate.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            certificate,
            config: Arc::new(config),
            #[cfg(unix)]
            hangup: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .map_err(TlsError::Signal)?,
        })
    }

    /// Accepts TLS on `listener`: handshakes and reloads run on a task owned by the listener.
    pub fn listen(self, listener: TcpListener) -> std::io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let (tx, rx) = mpsc::channel(MAX_TLS_HANDSHAKES);
        let task = tokio::spawn(accept_loop(self, listener, tx));
        Ok(TlsListener {
            rx,
            local,
            task: task.abort_handle(),
        })
    }
}

/// Accepts TCP, runs handshakes (bounded), hands finished streams on, reloads on `SIGHUP`.
async fn accept_loop(
    mut tls: Tls,
    listener: TcpListener,
    tx: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&tls.config));
    let mut handshakes = JoinSet::new();
    loop {
        #[cfg(unix)]
        let hangup = tls.hangup.recv();
        #[cfg(not(unix))]
        let hangup = std::future::pending::<Option<()>>();
        tokio::select! {
            () = tx.closed() => break,
            accepted = listener.accept(), if handshakes.len() < MAX_TLS_HANDSHAKES => {
                let (tcp, remote) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of descriptors and the like: wait a moment rather than spin.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                handshakes.spawn(async move {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send((stream, remote)).await;
                        }
                        Ok(Err(e)) => debug!(%remote, error = %e, "TLS handshake failed"),
                        Err(_) => debug!(%remote, "TLS handshake timed out"),
                    }
                });
            }
            Some(_) = handshakes.join_next(), if !handshakes.is_empty() => {}
            Some(()) = hangup => match tls.certificate.reload() {
                Ok(()) => info!(cert = %tls.certificate.cert.display(), "reloaded the TLS certificate"),
                Err(e) => warn!(error = %e, "TLS certificate not reloaded; the old one stays in use"),
            },
        }
    }
}

/// A listener of finished TLS streams, for `axum::serve`. Dropping it stops accepting.
#[derive(Debug)]
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    task: tokio::task::AbortHandle,
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(accepted) => accepted,
            // The accept loop only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
