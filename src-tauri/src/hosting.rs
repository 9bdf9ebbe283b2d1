//! Hosting the signaling server inside the app (the default on first run): `lattice-server` as a
//! library, listening on all interfaces so others on the LAN can join, with its database in the
//! app's data directory (`server/`). The app's own peer connects to it over loopback.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use crate::error::CommandError;

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
    /// [`CommandError::Hosting`] with a readable reason, e.g. when the port is taken.
    pub async fn start(data_dir: &Path, port: u16) -> Result<Self, CommandError> {
        let dir = data_dir.join("server");
        std::fs::create_dir_all(&dir)
            .map_err(|e| CommandError::Hosting(format!("cannot create {}: {e}", dir.display())))?;
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
                CommandError::Hosting(format!(
                    "port {port} is already in use (is another Lattice or lattice-server running?). \
                     Pick another port, or connect to that server, in Settings → Server."
                ))
            }
            other => CommandError::Hosting(other.to_string()),
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
