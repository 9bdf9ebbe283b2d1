//! A real `redis-server` for the tests of the Redis-backed parts (`scripts/install-deps.sh`
//! installs it from apt): started on a free port in its own temp dir, with no RDB snapshots and
//! AOF `everysec` (as docs/deployment.md recommends), and killed (SIGKILL) when dropped, also
//! when the test panics. Include it with `#[path = "support/redis_process.rs"]`. [`RedisCluster`]
//! does the same for a Redis Cluster.

#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

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

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
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

/// A Redis Cluster of `redis-server` children on free ports, each in its own temp dir (with
/// the same options as [`RedisProcess`], plus `--cluster-enabled yes` and a node timeout of
/// [`CLUSTER_NODE_TIMEOUT_MS`], so a failover takes seconds), joined with
/// `redis-cli --cluster create`. Every node is killed when dropped.
pub struct RedisCluster {
    /// Masters first (`0..masters`), then the replicas.
    pub nodes: Vec<RedisProcess>,
}

/// How long a cluster node may be unreachable before it counts as failed (and a replica of a
/// failed master takes over).
pub const CLUSTER_NODE_TIMEOUT_MS: u32 = 1000;

impl RedisCluster {
    /// `masters` masters with `replicas` replicas each; returns once every slot is served
    /// (`cluster_state:ok` on every node).
    pub async fn start(masters: usize, replicas: usize) -> RedisCluster {
        Self::start_with(masters, replicas, &[]).await
    }

    /// The same with more `redis-server` options for every node.
    pub async fn start_with(masters: usize, replicas: usize, extra: &[&str]) -> RedisCluster {
        let timeout = CLUSTER_NODE_TIMEOUT_MS.to_string();
        let mut nodes = Vec::new();
        for _ in 0..masters * (1 + replicas) {
            let mut args = vec![
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                &timeout,
                // Masters keep answering for the slots they still own when another master
                // is down (the tests kill one at a time).
                "--cluster-require-full-coverage",
                "no",
            ];
            args.extend_from_slice(extra);
            nodes.push(RedisProcess::start_with(&args).await);
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for n in &nodes {
            create.arg(format!("127.0.0.1:{}", n.port));
        }
        create
            .args(["--cluster-replicas", &replicas.to_string()])
            .arg("--cluster-yes");
        let out = tokio::task::spawn_blocking(move || create.output())
            .await
            .expect("redis-cli task")
            .expect("redis-cli runs (scripts/install-deps.sh installs it)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = RedisCluster { nodes };
        for i in 0..cluster.nodes.len() {
            cluster.wait_ok(i).await;
        }
        cluster
    }

    /// `redis+cluster://` with every master as a seed.
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", seeds.join(","))
    }

    /// The port of node `i`.
    pub fn port(&self, i: usize) -> u16 {
        self.nodes[i].port
    }

    /// The index of the master that serves `key`'s slot now.
    pub async fn master_of(&self, key: &str) -> usize {
        let slot = self.slot_of(key).await;
        let shards = self.ask(&["CLUSTER", "SLOTS"]).await;
        // Lines: start, end, ip, port, id, (replica ip, port, id)...
        let lines: Vec<&str> = shards.lines().map(str::trim).collect();
        let mut i = 0;
        while i + 3 < lines.len() {
            if let (Ok(start), Ok(end), Ok(port)) = (
                lines[i].parse::<u16>(),
                lines[i + 1].parse::<u16>(),
                lines[i + 3].parse::<u16>(),
            ) {
                if (start..=end).contains(&slot) {
                    if let Some(n) = self.nodes.iter().position(|n| n.port == port) {
                        return n;
                    }
                }
                i += 4;
            } else {
                i += 1;
            }
        }
        panic!("no master serves slot {slot}:\n{shards}");
    }

    /// The slot of `key`.
    pub async fn slot_of(&self, key: &str) -> u16 {
        self.ask(&["CLUSTER", "KEYSLOT", key])
            .await
            .trim()
            .parse()
            .expect("a slot number")
    }

    /// The answer of the first node that answers (some may be killed).
    async fn ask(&self, args: &[&str]) -> String {
        for n in &self.nodes {
            let out = cli(n.port, args).await;
            if !out.trim().is_empty() {
                return out;
            }
        }
        panic!("no cluster node answers {args:?}");
    }

    /// Node `i`'s cluster node id.
    pub async fn node_id(&self, i: usize) -> String {
        cli(self.port(i), &["CLUSTER", "MYID"])
            .await
            .trim()
            .to_owned()
    }

    /// The index of a replica of master `i`.
    pub async fn replica_of(&self, i: usize) -> usize {
        let master = self.node_id(i).await;
        for (j, n) in self.nodes.iter().enumerate() {
            let info = cli(n.port, &["INFO", "replication"]).await;
            let me = cli(n.port, &["CLUSTER", "NODES"]).await;
            let mine = me.lines().find(|l| l.contains("myself")).unwrap_or("");
            if info.contains("role:slave") && mine.contains(&master) {
                return j;
            }
        }
        panic!("master {i} has no replica");
    }

    /// Waits (bounded) until the replicas of master `i` have everything it wrote so far.
    pub async fn wait_replicated(&self, i: usize) {
        let offset = |info: String, field: &str| -> u64 {
            info.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        let r = self.replica_of(i).await;
        let want = offset(
            cli(self.port(i), &["INFO", "replication"]).await,
            "master_repl_offset:",
        );
        for _ in 0..400 {
            let have = offset(
                cli(self.port(r), &["INFO", "replication"]).await,
                "slave_repl_offset:",
            );
            if have >= want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the replica of master {i} never caught up");
    }

    /// Moves the slot of `key`, with its keys, to master `to`: what `redis-cli --cluster
    /// reshard` does, for one slot (`SETSLOT IMPORTING/MIGRATING`, `MIGRATE`, `SETSLOT NODE`).
    pub async fn move_slot_of(&self, key: &str, to: usize) {
        let from = self.master_of(key).await;
        assert_ne!(from, to, "the slot is on master {to} already");
        let slot = self.slot_of(key).await.to_string();
        let (from_id, to_id) = (self.node_id(from).await, self.node_id(to).await);
        let ok = |out: String, what: &str| assert!(out.contains("OK"), "{what}: {out}");
        ok(
            cli(
                self.port(to),
                &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id],
            )
            .await,
            "importing",
        );
        ok(
            cli(
                self.port(from),
                &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to_id],
            )
            .await,
            "migrating",
        );
        let to_port = self.port(to).to_string();
        for _ in 0..100 {
            let keys = cli(self.port(from), &["CLUSTER", "GETKEYSINSLOT", &slot, "100"]).await;
            let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            let mut args = vec!["MIGRATE", "127.0.0.1", &to_port, "", "0", "5000", "KEYS"];
            args.extend(keys);
            ok(cli(self.port(from), &args).await, "migrate");
        }
        for i in 0..self.nodes.len() {
            // Replicas answer that they cannot; masters take it.
            let _ = cli(self.port(i), &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]).await;
        }
        assert_eq!(self.master_of(key).await, to, "the slot moved");
    }

    /// Waits (bounded) until node `i` reports `cluster_state:ok`.
    pub async fn wait_ok(&self, i: usize) {
        for _ in 0..400 {
            if cli(self.port(i), &["CLUSTER", "INFO"])
                .await
                .contains("cluster_state:ok")
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("cluster node {i} never reached cluster_state:ok");
    }
}

/// `redis-cli -p port args…`, its output (empty if it failed).
pub async fn cli(port: u16, args: &[&str]) -> String {
    let mut c = Command::new("redis-cli");
    c.args(["-p", &port.to_string()]).args(args);
    let out = tokio::task::spawn_blocking(move || c.output())
        .await
        .expect("redis-cli task");
    out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// One Redis or a 3-master cluster: the tests of a component run on both
/// ([`both!`](crate::both)).
pub enum Backend {
    /// One `redis-server`.
    Single(RedisProcess),
    /// Three masters, no replicas.
    Cluster(RedisCluster),
}

impl Backend {
    /// One Redis.
    pub async fn single() -> Backend {
        Backend::Single(RedisProcess::start().await)
    }

    /// A cluster of 3 masters.
    pub async fn cluster() -> Backend {
        Backend::Cluster(RedisCluster::start(3, 0).await)
    }

    /// Its URL (`redis://` or `redis+cluster://`).
    pub fn url(&self) -> lattice_server::cluster::RedisUrl {
        let url = match self {
            Backend::Single(r) => r.url(),
            Backend::Cluster(c) => c.url(),
        };
        lattice_server::cluster::RedisUrl::parse(&url).expect("a valid URL")
    }

    /// A new connection (as a new node would open).
    pub async fn conn(&self) -> lattice_server::cluster::RedisConn {
        lattice_server::cluster::RedisConn::open(&self.url())
            .await
            .expect("Redis answers")
    }
}

/// `both!(scenario);` for `async fn scenario(redis: &Backend)`: a module `scenario` with the
/// tests `single` and `cluster`, each on its own Redis.
#[macro_export]
macro_rules! both {
    ($name:ident) => {
        mod $name {
            #[tokio::test]
            async fn single() {
                super::$name(&super::Backend::single().await).await;
            }

            #[tokio::test]
            async fn cluster() {
                super::$name(&super::Backend::cluster().await).await;
            }
        }
    };
}
