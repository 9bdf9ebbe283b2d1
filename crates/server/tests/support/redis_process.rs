//! A real `redis-server` for the tests of the Redis-backed parts (`scripts/install-deps.sh`
//! installs it from apt): started on a free port in its own temp dir, with no RDB snapshots and
//! AOF `everysec` (as docs/deployment.md recommends), and killed (SIGKILL) when dropped, also
//! when the test panics. Include it with `#[path = "support/redis_process.rs"]`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A `redis-server` child process, killed when dropped.
pub struct RedisProcess {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
    extra: Vec<String>,
}

impl RedisProcess {
    /// Starts `redis-server` on a free port and waits until it answers `PING`.
    pub async fn start() -> RedisProcess {
        Self::start_with(&[]).await
    }

    /// The same with more `redis-server` options (`["--appendfsync", "always"]`).
    pub async fn start_with(extra: &[&str]) -> RedisProcess {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let extra: Vec<String> = extra.iter().map(ToString::to_string).collect();
        let child = spawn(dir.path(), port, &extra);
        let mut r = RedisProcess {
            child: Some(child),
            dir,
            port,
            extra,
        };
        r.wait_ready().await;
        r
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL: no shutdown, no final fsync. What AOF `everysec` had written survives.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and dir (its AOF is replayed), after [`Self::kill9`].
    pub async fn restart(&mut self) {
        self.kill9();
        for _ in 0..100 {
            // The port may take a moment to be released.
            if std::net::TcpListener::bind(("127.0.0.1", self.port)).is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.child = Some(spawn(self.dir.path(), self.port, &self.extra));
        self.wait_ready().await;
    }

    async fn wait_ready(&mut self) {
        for _ in 0..200 {
            if ping(self.port).await {
                return;
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    panic!("redis-server exited ({status}); is it installed? (scripts/install-deps.sh)");
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("redis-server did not answer on port {}", self.port);
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn spawn(dir: &Path, port: u16, extra: &[String]) -> Child {
    Command::new("redis-server")
        .args(["--port", &port.to_string()])
        .args(["--bind", "127.0.0.1"])
        .arg("--dir")
        .arg(dir)
        .args(["--save", ""])
        .args(["--appendonly", "yes", "--appendfsync", "everysec"])
        .args(["--daemonize", "no", "--loglevel", "warning"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server starts (scripts/install-deps.sh installs it)")
}

/// A raw `PING` over TCP: true on `+PONG`.
async fn ping(port: u16) -> bool {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    if s.write_all(b"PING\r\n").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
        Ok(Ok(n)) => buf[..n].starts_with(b"+PONG"),
        _ => false,
    }
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}
