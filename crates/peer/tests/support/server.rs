//! A real `lattice-server` on loopback, its admin API, and a TLS-terminating proxy for wss tests.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lattice_server::{Config, ServerHandle};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub const ADMIN_TOKEN: &str = lattice_server::config::TEST_ADMIN_TOKEN;

/// A test server on an ephemeral loopback port; stops when dropped.
pub async fn spawn_server() -> ServerHandle {
    lattice_server::spawn(Config::for_tests()).await.unwrap()
}

/// A test server on `port` (0 = ephemeral) keeping its data in `data_dir`. Retries the bind
/// briefly: the previous server on that port may still be releasing it.
pub async fn spawn_server_at(port: u16, data_dir: Option<PathBuf>) -> ServerHandle {
    let mut last = None;
    for _ in 0..50 {
        let config = Config {
            port,
            data_dir: data_dir.clone(),
            ..Config::for_tests()
        };
        match lattice_server::spawn(config).await {
            Ok(h) => return h,
            Err(e) => last = Some(e.to_string()),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("cannot bind port {port}: {last:?}");
}

/// A test node of several, on the Redis at `redis_url`, on an ephemeral loopback port.
pub async fn redis_node(redis_url: &str) -> ServerHandle {
    let config = Config {
        redis: Some(lattice_server::cluster::RedisUrl::parse(redis_url).unwrap()),
        ..Config::for_tests()
    };
    lattice_server::spawn(config).await.unwrap()
}

/// `POST path` with a JSON body and the admin bearer token, over plain HTTP/1.1.
/// Returns the status code and the JSON body (Null if empty or not JSON).
pub async fn admin_post(addr: SocketAddr, path: &str, body: &Value) -> (u16, Value) {
    let body = body.to_string();
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tcp.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response);
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad HTTP response: {text}"));
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A TLS-terminating proxy in front of a server, with a throwaway CA; test-only.
pub struct TlsProxy {
    /// `wss://localhost:PORT`.
    pub url: String,
    /// The CA certificate to trust, PEM.
    pub ca_pem: String,
    task: JoinHandle<()>,
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A throwaway CA and a `localhost` certificate it signed.
pub struct TestCertificates {
    /// The CA's certificate (PEM), for the peer's extra-CA option.
    pub ca_pem: String,
    /// The `localhost` certificate, PEM and DER.
    pub leaf_pem: String,
    pub leaf_der: Vec<u8>,
    /// Its private key (PKCS#8), PEM and DER.
    pub key_pem: String,
    pub key_der: Vec<u8>,
}

impl TestCertificates {
    pub fn new() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        Self {
            ca_pem: ca.pem(),
            leaf_pem: leaf.pem(),
            leaf_der: leaf.der().to_vec(),
            key_pem: leaf_key.serialize_pem(),
            key_der: leaf_key.serialize_der(),
        }
    }
}

impl TlsProxy {
    pub async fn start(backend: SocketAddr) -> Self {
        let certs = TestCertificates::new();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key: rustls::pki_types::PrivateKeyDer<'static> =
            rustls::pki_types::PrivatePkcs8KeyDer::from(certs.key_der).into();
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![certs.leaf_der.into()], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                conns.spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Ok(mut up) = TcpStream::connect(backend).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
                });
            }
        });
        Self {
            url: format!("wss://localhost:{port}"),
            ca_pem: certs.ca_pem,
            task,
        }
    }
}
