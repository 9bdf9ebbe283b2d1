//! What the Redis side of several nodes costs per operation, side by side with the single-node
//! part it replaces, in one run on one machine (`cargo bench -p lattice-server --bench
//! cluster_costs`; needs `redis-server`, which it starts on a free port with AOF `everysec`):
//!
//! - a mailbox message stored then acknowledged: `SqliteStore` (`enqueue` + `remove`, WAL on a
//!   temp dir) against the Redis stream (`enqueue` + `remove`);
//! - a message to an id with its primary device only, and with 1 and 3 linked devices, stored
//!   in every device's mailbox then acknowledged by each device: `SqliteStore::enqueue_all` (one
//!   transaction) + one `remove` per device, against `RedisMailbox::enqueue_all` (one script) +
//!   one `remove_device` per device (the storage cost of linked devices; end to end through
//!   the handlers: `benches/devices_fanout.rs`);
//! - an id claimed then released: `LocalHub` against the Redis claim and release scripts;
//! - each Redis row twice: on one Redis and on a 3-master Redis Cluster started beside it
//!   (`redis-cli --cluster create`), side by side in the same run;
//! - a payload published to another node's channel until that node has it (Redis pub/sub);
//! - Redis commands per operation (`total_commands_processed` before and after: the commands a
//!   script runs count too, so this is Redis's work; the round trips per operation are fixed by
//!   the code and printed beside it).
//!
//! Latencies are per operation, sequential (p50/p99 from an HDR histogram); the concurrent rows
//! run `CONCURRENCY` callers on one connection and give throughput. Prints one table.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[path = "../tests/support/redis_process.rs"]
mod redis_process;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use lattice_protocol::{ClientId, DeviceId, MessageId};
use lattice_server::cluster::channel::{Channels, Inbound};
use lattice_server::cluster::mailbox::RedisMailbox;
use lattice_server::cluster::presence::{PeerKeys, Presence};
use lattice_server::cluster::{connect, NodeId, RedisConn, RedisUrl};
use lattice_server::hub::{Hub as _, LocalHub, PeerEntry, SessionShared};
use lattice_server::store::{MailItem, Mailbox as _, Quota, SqliteStore};
use redis::aio::ConnectionManager;
use tokio_util::sync::CancellationToken;

const OPS: u64 = 5_000;
const CONCURRENCY: u64 = 64;
/// A typical sealed 1:1 message frame (the loadgen's size).
const FRAME_BYTES: usize = 2_900;
/// The rows of a message to every device of an id: linked devices beside the primary.
const LINKED: [usize; 3] = [0, 1, 3];

/// The primary device and `linked` linked ones.
fn devices(linked: usize) -> Vec<DeviceId> {
    std::iter::once(DeviceId::primary())
        .chain((0..linked).map(|i| DeviceId::new(format!("d{i}")).unwrap()))
        .collect()
}

struct Row {
    name: String,
    hist: Histogram<u64>,
    per_s: f64,
    redis_cmds: Option<f64>,
    round_trips: u32,
}

fn print(rows: &[Row]) {
    println!(
        "{:<46} {:>10} {:>10} {:>12} {:>11} {:>10}",
        "operation", "p50 µs", "p99 µs", "ops/s", "round trips", "redis cmds"
    );
    for r in rows {
        let cmds = r.redis_cmds.map_or("-".into(), |c| format!("{c:.2}"));
        let trips = r
            .redis_cmds
            .map_or("-".into(), |_| r.round_trips.to_string());
        println!(
            "{:<46} {:>10.1} {:>10.1} {:>12.0} {:>11} {:>10}",
            r.name,
            r.hist.value_at_quantile(0.5) as f64 / 1000.0,
            r.hist.value_at_quantile(0.99) as f64 / 1000.0,
            r.per_s,
            trips,
            cmds
        );
    }
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).unwrap()
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1)
}

fn item(i: u64) -> MailItem {
    MailItem {
        message_id: MessageId::new(format!("m{i}")).unwrap(),
        sender: ClientId::new("alice").unwrap(),
        frame: format!(
            r#"{{"type":"message","fromId":"alice","message":"{}"}}"#,
            "x".repeat(FRAME_BYTES)
        ),
    }
}

/// Direct connections to every Redis server (each master of a cluster), to read the commands
/// they processed.
struct Servers(Vec<ConnectionManager>);

impl Servers {
    async fn open(ports: impl IntoIterator<Item = u16>) -> Self {
        let mut conns = Vec::new();
        for port in ports {
            let url = RedisUrl::parse(&format!("redis://127.0.0.1:{port}")).unwrap();
            conns.push(connect(&url).await.unwrap());
        }
        Self(conns)
    }
}

/// Commands processed by every server so far, less the `INFO`s that read them.
async fn commands(servers: &Servers) -> u64 {
    let mut total = 0;
    for conn in &servers.0 {
        let info: String = redis::cmd("INFO")
            .arg("stats")
            .query_async(&mut conn.clone())
            .await
            .unwrap();
        total += info
            .lines()
            .find_map(|l| l.strip_prefix("total_commands_processed:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap();
    }
    total
}

/// Runs `op` `OPS` times in sequence; the Redis commands it caused per operation (less the
/// `INFO`s that read the counters).
async fn sequential<F, Fut>(
    name: impl Into<String>,
    redis: Option<&Servers>,
    round_trips: u32,
    mut op: F,
) -> Row
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let before = match redis {
        Some(c) => commands(c).await,
        None => 0,
    };
    let mut h = hist();
    let start = Instant::now();
    for i in 0..OPS {
        let t = Instant::now();
        op(i).await;
        h.record(nanos(t.elapsed())).unwrap();
    }
    let per_s = OPS as f64 / start.elapsed().as_secs_f64();
    let redis_cmds = match redis {
        Some(c) => Some((commands(c).await - before - c.0.len() as u64) as f64 / OPS as f64),
        None => None,
    };
    Row {
        name: name.into(),
        hist: h,
        per_s,
        redis_cmds,
        round_trips,
    }
}

#[tokio::main]
async fn main() {
    let quota = Quota::UNLIMITED;
    let bob = ClientId::new("bob").unwrap();
    let mut rows = Vec::new();

    // The single-node parts the Redis ones replace.
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteStore::open(dir.path()).unwrap();
    let ttl = Duration::from_secs(3600);
    rows.push(
        sequential("mailbox store + ack: SQLite (single node)", None, 0, |i| {
            let m = item(i);
            let mailbox = lattice_server::store::MailboxKey::primary(&bob);
            sqlite.enqueue(&mailbox, &m, &quota, ttl).unwrap();
            assert!(sqlite
                .remove(&mailbox, Some(&m.sender), &m.message_id)
                .unwrap());
            std::future::ready(())
        })
        .await,
    );
    for linked in LINKED {
        let keys: Vec<_> = devices(linked)
            .iter()
            .map(|d| lattice_server::store::MailboxKey::new(&bob, d))
            .collect();
        rows.push(
            sequential(
                format!("to primary + {linked} linked, each acks: SQLite"),
                None,
                0,
                |i| {
                    let m = item(i);
                    sqlite.enqueue_all(&keys, &m, &quota, ttl).unwrap();
                    for key in &keys {
                        assert!(sqlite.remove(key, Some(&m.sender), &m.message_id).unwrap());
                    }
                    std::future::ready(())
                },
            )
            .await,
        );
    }
    let hub = LocalHub::default();
    let (tx, _rx) = tokio::sync::mpsc::channel(1);
    let session = Arc::new(SessionShared::new(1, tx, CancellationToken::new(), 0));
    let key: Arc<[u8]> = vec![0u8; 1184].into();
    rows.push(
        sequential("claim + release: LocalHub (single node)", None, 0, |i| {
            let id = ClientId::new(format!("p{i}")).unwrap();
            let entry = Arc::new(PeerEntry {
                id: id.clone(),
                device: lattice_protocol::DeviceId::primary(),
                session: Arc::clone(&session),
                verified: false,
                public_key: Arc::clone(&key),
                identity_key: None,
                key_signature: None,
                subscribed: AtomicBool::new(false),
                link_relay: false,
            });
            hub.claim(entry, &|_| false).unwrap();
            assert_eq!(hub.release(&id, 1), Some(true));
            std::future::ready(())
        })
        .await,
    );

    // The same Redis operations on one Redis and on a 3-master Redis Cluster, in this run.
    let single = redis_process::RedisProcess::start().await;
    let servers = Servers::open([single.port()]).await;
    let url = RedisUrl::parse(&single.url()).unwrap();
    redis_rows(&mut rows, "Redis", &url, &servers).await;
    let cluster = redis_process::RedisCluster::start(3, 0).await;
    let servers = Servers::open((0..3).map(|i| cluster.port(i))).await;
    let url = RedisUrl::parse(&cluster.url()).unwrap();
    redis_rows(&mut rows, "Cluster", &url, &servers).await;

    println!(
        "\n{OPS} operations each, {FRAME_BYTES}-byte frames, redis-server on 127.0.0.1 (AOF \
         everysec); Cluster: 3 masters, no replicas, on the same machine\n"
    );
    print(&rows);
}

/// The Redis rows, on the Redis `url` names (`label` starts each row's name).
async fn redis_rows(rows: &mut Vec<Row>, label: &str, url: &RedisUrl, servers: &Servers) {
    let conn = RedisConn::open(url).await.unwrap();
    let quota = Quota::UNLIMITED;
    let bob = ClientId::new("bob").unwrap();

    // The mailbox: stored, then acknowledged.
    let mbox = RedisMailbox::new(conn.clone());
    rows.push(
        sequential(
            format!("mailbox store + ack: {label} stream"),
            Some(servers),
            2,
            |i| {
                let mbox = mbox.clone();
                let bob = bob.clone();
                async move {
                    let m = item(i);
                    mbox.enqueue(&bob, &m, &quota).await.unwrap();
                    assert!(mbox.remove(&bob, &m.sender, &m.message_id).await.unwrap());
                }
            },
        )
        .await,
    );
    // A message to every device of an id, then each device's ack.
    for linked in LINKED {
        let devs = devices(linked);
        let trips = 1 + u32::try_from(devs.len()).unwrap();
        rows.push(
            sequential(
                format!("to primary + {linked} linked, each acks: {label}"),
                Some(servers),
                trips,
                |i| {
                    let (mbox, bob, devs) = (mbox.clone(), bob.clone(), devs.clone());
                    async move {
                        let m = item(i);
                        mbox.enqueue_all(&bob, &devs, &m, &quota).await.unwrap();
                        for d in &devs {
                            assert!(mbox
                                .remove_device(&bob, d, &m.sender, &m.message_id)
                                .await
                                .unwrap());
                        }
                    }
                },
            )
            .await,
        );
    }
    // Many callers on one connection: what one node gets out of Redis (recipients spread over
    // the cluster's slots).
    {
        let before = commands(servers).await;
        let start = Instant::now();
        let mut tasks = Vec::new();
        for t in 0..CONCURRENCY {
            let mbox = mbox.clone();
            tasks.push(tokio::spawn(async move {
                let mut h = hist();
                let who = ClientId::new(format!("r{t}")).unwrap();
                for i in 0..OPS / CONCURRENCY {
                    let m = item(i);
                    let s = Instant::now();
                    mbox.enqueue(&who, &m, &Quota::UNLIMITED).await.unwrap();
                    mbox.remove(&who, &m.sender, &m.message_id).await.unwrap();
                    h.record(nanos(s.elapsed())).unwrap();
                }
                h
            }));
        }
        let mut h = hist();
        for t in tasks {
            h.add(t.await.unwrap()).unwrap();
        }
        let n = (OPS / CONCURRENCY) * CONCURRENCY;
        rows.push(Row {
            name: format!("mailbox store + ack: {label}, 64 callers"),
            per_s: n as f64 / start.elapsed().as_secs_f64(),
            redis_cmds: Some(
                (commands(servers).await - before - servers.0.len() as u64) as f64 / n as f64,
            ),
            round_trips: 2,
            hist: h,
        });
    }

    // Presence: claimed, then released (each: the holder key, then the online index).
    let presence = Presence::new(conn.clone(), NodeId::random());
    let verified = PeerKeys {
        public_key: vec![0; 1184],
        identity_key: Some([1; 32]),
        key_signature: Some(vec![2; 64]),
        link_relay: false,
    };
    let verified = &verified;
    rows.push(
        sequential(
            format!("claim + release: {label} scripts"),
            Some(servers),
            4,
            |i| {
                let presence = presence.clone();
                async move {
                    let id = ClientId::new(format!("p{i}")).unwrap();
                    presence.claim(&id, i, verified).await.unwrap();
                    assert!(presence.release(&id, i).await.unwrap());
                }
            },
        )
        .await,
    );

    // A frame to another node, until that node has it (sharded pub/sub on the cluster).
    let stop = CancellationToken::new();
    let (a, _a_rx) = Channels::open(url, NodeId::random(), stop.clone())
        .await
        .unwrap();
    let nb = NodeId::random();
    let (_b, b_rx) = Channels::open(url, nb.clone(), stop.clone()).await.unwrap();
    let b_rx = tokio::sync::Mutex::new(b_rx);
    let payload = item(0).frame.into_bytes();
    rows.push(
        sequential(
            format!("publish to another node until received: {label}"),
            Some(servers),
            1,
            |_| {
                let (a, nb, payload, b_rx) = (&a, &nb, &payload, &b_rx);
                async move {
                    assert_eq!(a.publish_to(nb, payload).await.unwrap(), 1);
                    let got = b_rx.lock().await.recv().await.unwrap();
                    assert!(matches!(got, Inbound::Node(_)));
                }
            },
        )
        .await,
    );
    stop.cancel();
}
