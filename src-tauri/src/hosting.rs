//! Hosting the signaling server inside the app (the default on first run): `lattice-server` as a
//! library, listening on all interfaces so others on the LAN can join, with its database in the
//! app's data directory (`server/`). The app's own peer connects to it over loopback.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

/// Why the embedded server could not start; the message is a sentence for people.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HostingError(pub String);

/// The embedded server while it runs.
#[derive(Debug)]
pub struct Hosted {
    handle: lattice_server::ServerHandle,
    port: u16,
}

impl Hosted {
    /// Starts the server on `port` (all interfaces), storing its data under `data_dir/server`.
    ///
    /// # Errors
    /// [`HostingError`] with a readable reason, e.g. when the port is taken.
    pub async fn start(data_dir: &Path, port: u16) -> Result<Self, HostingError> {
        let dir = data_dir.join("server");
        std::fs::create_dir_all(&dir)
            .map_err(|e| HostingError(format!("cannot create {}: {e}", dir.display())))?;
        let config = lattice_server::Config {
            bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port,
            data_dir: Some(dir),
            ..lattice_server::Config::default()
        };
        let handle = lattice_server::spawn(config).await.map_err(|e| match e {
            lattice_server::ServerError::Bind { source, .. }
                if source.kind() == std::io::ErrorKind::AddrInUse =>
            {
                HostingError(format!(
                    "port {port} is already in use (is another Lattice or lattice-server running?). \
                     Pick another port, or connect to that server, in Settings → Server."
                ))
            }
            other => HostingError(other.to_string()),
        })?;
        let port = handle.local_addr().port();
        tracing::info!(port, "hosting lattice-server");
        Ok(Self { handle, port })
    }

    /// The URL the app's own peer uses.
    pub fn local_url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    /// The address to give others: the first private IPv4 address of this machine and the
    /// port, or just the port when there is no LAN address.
    pub fn shown_address(&self) -> String {
        match lan_address() {
            Some(ip) => format!("ws://{ip}:{}", self.port),
            None => format!("port {}", self.port),
        }
    }

    /// Stops the server and waits for it to close every session and flush its storage.
    pub async fn stop(self) {
        self.handle.shutdown().await;
    }
}

/// The first non-loopback IPv4 address of an interface that is up, preferring private ranges.
fn lan_address() -> Option<Ipv4Addr> {
    let addrs = if_addrs::get_if_addrs().ok()?;
    let v4: Vec<Ipv4Addr> = addrs
        .iter()
        .filter(|i| !i.is_loopback())
        .filter_map(|i| match i.ip() {
            IpAddr::V4(ip) => Some(ip),
            IpAddr::V6(_) => None,
        })
        .collect();
    v4.iter()
        .copied()
        .find(Ipv4Addr::is_private)
        .or_else(|| v4.first().copied())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use lattice_crypto::Identity;
    use lattice_peer::{MessagingPeer, PeerConfig};
    use lattice_protocol::ClientId;

    #[tokio::test]
    async fn hosts_a_server_that_peers_join_and_keeps_its_data_in_the_profile() {
        let dir = tempfile::tempdir().unwrap();
        let hosted = Hosted::start(dir.path(), 0).await.unwrap();
        assert!(hosted.local_url().starts_with("ws://127.0.0.1:"));
        assert!(hosted.shown_address().contains(&hosted.port.to_string()));
        let config = PeerConfig::new(
            hosted.local_url(),
            ClientId::new("visitor").unwrap(),
            Identity::generate(&mut rand_core::OsRng),
        );
        let peer = MessagingPeer::new(config).unwrap();
        peer.connect()
            .await
            .expect("a peer joins the hosted server");
        peer.disconnect().await;
        hosted.stop().await;
        assert!(dir.path().join("server").is_dir());
    }

    #[tokio::test]
    async fn a_port_in_use_is_reported_readably() {
        let taken = std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        let port = taken.local_addr().unwrap().port();
        let dir = tempfile::tempdir().unwrap();
        match Hosted::start(dir.path(), port).await {
            Err(HostingError(message)) => {
                assert!(message.contains("already in use"), "{message}");
            }
            other => panic!("expected a hosting error, got {other:?}"),
        }
    }
}
