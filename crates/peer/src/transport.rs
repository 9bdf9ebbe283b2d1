//! Dialling the server: URL checks, the rustls configuration for `wss://` (platform roots plus an
//! optional extra CA) and the WebSocket limits.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use crate::config::TlsOptions;
use crate::{defaults, PeerError};

/// The socket type of a connection.
pub(crate) type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How to reach the server, checked once when the peer is built.
#[derive(Debug, Clone)]
pub(crate) struct Dialer {
    url: String,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Dialer {
    /// Checks the URL and, for `wss://`, builds the TLS configuration.
    pub(crate) fn new(url: &str, tls: &TlsOptions) -> Result<Self, PeerError> {
        let bad = |reason: &str| PeerError::InvalidUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let secure = if url.starts_with("wss://") {
            true
        } else if url.starts_with("ws://") {
            false
        } else {
            return Err(bad("the scheme must be ws:// or wss://"));
        };
        url.into_client_request().map_err(|e| bad(&e.to_string()))?;
        let tls = if secure {
            Some(client_config(tls)?)
        } else {
            None
        };
        Ok(Self {
            url: url.to_owned(),
            tls,
        })
    }

    /// The TLS configuration for `wss://` (shared with the blob store's HTTPS client).
    pub(crate) fn tls(&self) -> Option<Arc<rustls::ClientConfig>> {
        self.tls.clone()
    }

    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// Dials: TCP, TLS for `wss://`, the WebSocket handshake; all within `timeout`.
    pub(crate) async fn dial(&self, timeout: Duration) -> Result<WsStream, PeerError> {
        let config = WebSocketConfig::default()
            .max_message_size(Some(defaults::MAX_INCOMING_MESSAGE))
            .max_frame_size(Some(defaults::MAX_INCOMING_MESSAGE));
        let connector = self.tls.as_ref().map(|c| Connector::Rustls(Arc::clone(c)));
        let fail = |reason: String| PeerError::Connect {
            url: self.url.clone(),
            reason,
        };
        let dial = tokio_tungstenite::connect_async_tls_with_config(
            self.url.as_str(),
            Some(config),
            true,
            connector,
        );
        match tokio::time::timeout(timeout, dial).await {
            Ok(Ok((ws, _response))) => Ok(ws),
            Ok(Err(e)) => Err(fail(e.to_string())),
            Err(_) => Err(fail(format!("timed out after {timeout:?}"))),
        }
    }
}

/// rustls with the ring provider chosen explicitly (so it never depends on which provider
/// features other crates switch on), the platform's roots and any extra CA.
fn client_config(opts: &TlsOptions) -> Result<Arc<rustls::ClientConfig>, PeerError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::debug!(error = %e, "skipping a platform root certificate source");
    }
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    tracing::debug!(added, ignored, "platform root certificates");
    if let Some(pem) = &opts.extra_ca_pem {
        let mut n = 0;
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            let cert = cert.map_err(|e| PeerError::Tls(format!("extra CA PEM: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| PeerError::Tls(format!("extra CA certificate: {e}")))?;
            n += 1;
        }
        if n == 0 {
            return Err(PeerError::Tls("extra CA PEM holds no certificate".into()));
        }
    }
    if roots.is_empty() {
        return Err(PeerError::Tls(
            "no root certificates: the platform store is empty and no extra CA was given".into(),
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PeerError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        let tls = TlsOptions::default();
        assert!(Dialer::new("ws://127.0.0.1:3005", &tls).is_ok());
        assert!(matches!(
            Dialer::new("http://127.0.0.1:3005", &tls),
            Err(PeerError::InvalidUrl { .. })
        ));
        assert!(matches!(
            Dialer::new("ws://", &tls),
            Err(PeerError::InvalidUrl { .. })
        ));
    }

    #[test]
    fn bad_extra_ca_is_refused() {
        let tls = TlsOptions {
            extra_ca_pem: Some("not a pem".into()),
        };
        assert!(matches!(
            Dialer::new("wss://localhost:1", &tls),
            Err(PeerError::Tls(_))
        ));
    }
}
