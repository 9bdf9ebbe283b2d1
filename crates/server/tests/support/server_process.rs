//! A real `lattice-server` process on a data dir, for the crash tests of every crate that has
//! them (the server's, `lattice-chat`'s and the desktop app's include this file with `#[path]`):
//! started on a port, killed with SIGKILL, started again on the same dir and port.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The `lattice-server` binary: Cargo's own for the server's tests; for another crate's, the one
/// in the test binary's target directory, built first if this test run did not build it.
pub fn server_bin() -> PathBuf {
    if let Some(bin) = option_env!("CARGO_BIN_EXE_lattice-server") {
        return bin.into();
    }
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let bin = dir.join("lattice-server");
    // Built (or found up to date) once per test process: a binary left by an older build
    // would not know the frames this tree's tests send.
    static BUILT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        Command::new(cargo)
            .args(["build", "-p", "lattice-server", "--bin", "lattice-server"])
            .status()
            .is_ok_and(|s| s.success())
    });
    assert!(ok, "lattice-server builds");
    bin
}

/// A port that was free a moment ago (bound, read, released: the server binds it right after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `lattice-server` child process on `dir`, killed (SIGKILL) when dropped. Its log goes to
/// `dir` with the extension `log` ([`log_tail`]).
pub struct ServerProcess {
    child: Child,
    pub url: String,
}

impl ServerProcess {
    /// Starts the server on `dir` and a free port, with `extra` flags.
    pub async fn start(dir: &Path, extra: &[&str]) -> ServerProcess {
        Self::start_on(dir, free_port(), extra).await
    }

    /// Starts the server on `dir` and `port` (the port of an earlier run, so clients reconnect
    /// to the same URL), and waits until it listens.
    pub async fn start_on(dir: &Path, port: u16, extra: &[&str]) -> ServerProcess {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.with_extension("log"))
            .unwrap();
        let mut child = Command::new(server_bin())
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .arg("--data-dir")
            .arg(dir)
            .args(["--rate-limit", "0", "--mailbox-sender-quota", "1000"])
            .args(extra)
            .env("LATTICE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("lattice-server starts");
        // Up to 30 s: a debug build on a loaded 2-core machine can take seconds to open its
        // database; a server that exits (a port taken meanwhile, a bad flag) fails at once.
        for _ in 0..600 {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "lattice-server exited ({status}) before listening on {port}:\n{}",
                    log_tail(dir)
                );
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return ServerProcess {
                    child,
                    url: format!("ws://127.0.0.1:{port}"),
                };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "lattice-server did not listen on {port} within 30 s:\n{}",
            log_tail(dir)
        );
    }

    /// SIGKILL: no shutdown, no checkpoint, no close frames.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The end of a server process's log (for failure messages).
pub fn log_tail(dir: &Path) -> String {
    let log = std::fs::read_to_string(dir.with_extension("log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
