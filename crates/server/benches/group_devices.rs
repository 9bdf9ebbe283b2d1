//! What one MLS group message costs on the Redis path when the group's leaves include linked
//! devices, side by side with groups of primary devices only, in one run on one machine (`cargo
//! bench -p lattice-server --bench group_devices`; needs `redis-server`): real servers
//! (127.0.0.1:0, in this process), real WebSocket clients, real Redis, ~2 KB MLS-shaped
//! messages (the server reads only their clear header).
//!
//! Closed loop, one message in flight: bob sends a `group_message`, and it counts once bob has
//! its answer and **every** recipient leaf has received its copy and sent its `ack`. Rows, each
//! with four recipient leaves or one: bob and alice's primary (1 leaf); bob and alice with her
//! primary and 3 linked devices (4 leaves of one id); bob and four other ids' primaries (4
//! leaves of 4 ids). Each row on one node (SQLite WAL on a temp dir: the reference) and on two
//! `--redis` nodes, bob on one and the recipients on the other (a fresh `redis-server` per row).
//! Prints p50/p99 per message, messages/s, and on Redis the nodes' Redis round trips and the
//! commands Redis executed (`INFO stats`, script bodies' commands included) per message.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[path = "../tests/support/redis_process.rs"]
mod redis_process;
#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Instant;

use base64::Engine as _;
use hdrhistogram::Histogram;
use lattice_crypto::{Identity, IdentityKeyPair};
use serde_json::{json, Value};
use support::{challenge, kem_key, new_identity, register_verified, Client, B64};

const MESSAGES: u64 = 300;
const BODY_BYTES: usize = 1_500;
const GROUP: &str = "00b0b0";

/// An MLS `PrivateMessage` as far as the server reads it.
fn mls(epoch: u64, content_type: u8, tag: &str) -> String {
    let group = [0x00, 0xb0, 0xb0];
    let mut b = vec![0, 1, 0, 2, 3];
    b.extend_from_slice(&group);
    b.extend_from_slice(&epoch.to_be_bytes());
    b.push(content_type);
    b.extend_from_slice(tag.as_bytes());
    B64.encode(b)
}

fn welcome() -> String {
    B64.encode([0, 1, 0, 3, b'w'])
}

fn signed_list(identity: &Identity, devices: &[(String, IdentityKeyPair)]) -> Value {
    let entries: Vec<(&str, [u8; 32])> = devices
        .iter()
        .map(|(n, k)| (n.as_str(), *k.public_key().as_bytes()))
        .collect();
    let message = lattice_crypto::device_list_message("alice", 1, &entries).unwrap();
    json!({
        "counter": 1,
        "devices": devices.iter().map(|(n, k)| json!({"deviceId": n, "deviceKey": B64.encode(k.public_key().as_bytes())})).collect::<Vec<_>>(),
        "signature": B64.encode(identity.identity_key().sign(&message)),
    })
}

async fn register_device(
    url: &str,
    identity: &Identity,
    name: &str,
    key: &IdentityKeyPair,
) -> Client {
    let mut c = Client::connect(url).await;
    let nonce = challenge(&mut c).await;
    let kem = kem_key(identity);
    let cert =
        lattice_crypto::device_certificate_message("alice", name, key.public_key().as_bytes())
            .unwrap();
    let statement =
        lattice_crypto::device_registration_statement(&nonce, "alice", name, &kem).unwrap();
    c.send(json!({"type":"register","payload":{
        "clientId": "alice", "publicKey": kem,
        "keySignature": B64.encode(identity.key_signature()),
        "device": {"deviceId": name, "deviceKey": B64.encode(key.public_key().as_bytes()),
                   "certificate": B64.encode(identity.identity_key().sign(&cert))},
        "verification": {"algorithm": "ed25519",
            "serializedPublicKey": B64.encode(identity.identity_public_key().as_bytes()),
            "serializedMessage": B64.encode(&statement),
            "serializedSignedData": B64.encode(key.sign(&statement))}}}))
        .await;
    let v = c.recv_type("register").await;
    assert_eq!(v["payload"]["deviceId"], name, "{v}");
    c
}

/// The group's recipients besides bob.
#[derive(Clone, Copy)]
enum Shape {
    /// alice's primary.
    OnePrimary,
    /// alice's primary and 3 linked devices.
    OneIdFourDevices,
    /// Four ids' primaries.
    FourPrimaries,
}

/// The nodes' Redis round trips so far (`/metrics`).
async fn round_trips(admin_urls: &[String]) -> u64 {
    let mut n = 0;
    for u in admin_urls {
        let text = reqwest::get(format!("{u}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        n += text
            .lines()
            .find_map(|l| l.strip_prefix("lattice_redis_latency_seconds_count "))
            .map_or(0, |v| v.trim().parse::<u64>().unwrap());
    }
    n
}

/// Commands Redis executed so far.
async fn commands(port: u16) -> u64 {
    let info = redis_process::cli(port, &["INFO", "stats"]).await;
    info.lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .map(|v| v.trim().parse::<u64>().unwrap())
        .unwrap()
}

struct Row {
    hist: Histogram<u64>,
    per_s: f64,
    /// (round trips, Redis commands) per message, on Redis.
    redis: Option<(f64, f64)>,
}

async fn row(redis: bool, shape: Shape) -> Row {
    let dir = tempfile::tempdir().unwrap();
    let rp = if redis {
        Some(redis_process::RedisProcess::start().await)
    } else {
        None
    };
    let mut servers = Vec::new();
    for i in 0..if redis { 2 } else { 1 } {
        let mut config = lattice_server::Config::for_tests();
        let data = dir.path().join(format!("node{i}"));
        std::fs::create_dir_all(&data).unwrap();
        config.data_dir = Some(data);
        config.redis = rp
            .as_ref()
            .map(|r| lattice_server::cluster::RedisUrl::parse(&r.url()).unwrap());
        servers.push(lattice_server::spawn(config).await.unwrap());
    }
    let bob_url = servers[0].url();
    let url = servers[servers.len() - 1].url();
    let admin: Vec<String> = servers.iter().map(|s| s.admin_url()).collect();
    let mut bob = register_verified(&bob_url, "bob", &new_identity()).await;
    let mut leaves = vec![json!({"clientId":"bob","deviceId":"primary"})];
    let mut members = vec!["bob".to_owned()];
    let mut recipients = Vec::new();
    match shape {
        Shape::OnePrimary | Shape::OneIdFourDevices => {
            let alice = new_identity();
            recipients.push(register_verified(&url, "alice", &alice).await);
            members.push("alice".into());
            leaves.push(json!({"clientId":"alice","deviceId":"primary"}));
            if matches!(shape, Shape::OneIdFourDevices) {
                let keys: Vec<(String, IdentityKeyPair)> = (0..3)
                    .map(|i| {
                        (
                            format!("d{i}"),
                            IdentityKeyPair::generate(&mut rand::rngs::OsRng),
                        )
                    })
                    .collect();
                recipients[0]
                    .request(
                        json!({"type":"device_list_upload","payload":{"deviceList": signed_list(&alice, &keys)}}),
                        "device_list_upload",
                    )
                    .await;
                for (name, key) in &keys {
                    recipients.push(register_device(&url, &alice, name, key).await);
                    leaves.push(json!({"clientId":"alice","deviceId": name}));
                }
            }
        }
        Shape::FourPrimaries => {
            for name in ["alice", "carol", "dave", "erin"] {
                recipients.push(register_verified(&url, name, &new_identity()).await);
                members.push(name.into());
                leaves.push(json!({"clientId": name,"deviceId":"primary"}));
            }
        }
    }
    let c = bob
        .request(
            json!({"type":"group_commit","payload":{"groupId": GROUP, "epoch": 0,
                "commit": mls(0, 3, "c0"), "welcome": welcome(), "members": members,
                "messageId": "c0", "leaves": leaves}}),
            "group_commit",
        )
        .await;
    assert_eq!(c["payload"]["epoch"], 1, "{c}");
    for r in &mut recipients {
        let m = r.recv_any(&["message"]).await;
        r.send(json!({"type":"ack","payload":{"messageId":"c0","fromId":"bob"}}))
            .await;
        assert_eq!(m["payload"]["messageId"], "c0");
    }
    let body = "x".repeat(BODY_BYTES);
    let before = match &rp {
        Some(r) => Some((round_trips(&admin).await, commands(r.port()).await)),
        None => None,
    };
    let mut hist = Histogram::<u64>::new(3).unwrap();
    let start = Instant::now();
    for i in 0..MESSAGES {
        let mid = format!("m{i}");
        let t = Instant::now();
        bob.send(json!({"type":"group_message","payload":{"groupId": GROUP,
            "message": mls(1, 1, &format!("{mid}{body}")), "messageId": mid}}))
            .await;
        for r in &mut recipients {
            let m = r.recv_any(&["message"]).await;
            assert_eq!(m["payload"]["messageId"], mid.as_str());
            r.send(json!({"type":"ack","payload":{"messageId": mid,"fromId":"bob"}}))
                .await;
        }
        let a = bob.recv_any(&["group_message", "error"]).await;
        assert_eq!(a["type"], "group_message", "{a}");
        hist.record(u64::try_from(t.elapsed().as_micros()).unwrap())
            .unwrap();
    }
    let per_s = MESSAGES as f64 / start.elapsed().as_secs_f64();
    let redis = match (&rp, before) {
        (Some(r), Some((trips, cmds))) => {
            // Let the last acks land before reading the counters.
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            let trips = round_trips(&admin).await - trips;
            let cmds = commands(r.port()).await - cmds;
            Some((
                trips as f64 / MESSAGES as f64,
                cmds as f64 / MESSAGES as f64,
            ))
        }
        _ => None,
    };
    Row { hist, per_s, redis }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        println!(
            "{:<74} {:>8} {:>8} {:>7} {:>10} {:>10}",
            "group_message from bob, until every leaf acked",
            "p50 µs",
            "p99 µs",
            "msgs/s",
            "trips/msg",
            "cmds/msg"
        );
        for (place, redis) in [
            ("one node, SQLite (reference)", false),
            ("2 Redis nodes, bob on the other", true),
        ] {
            for (name, shape) in [
                ("alice's primary (1 leaf)", Shape::OnePrimary),
                (
                    "alice, primary + 3 linked (4 leaves, 1 id)",
                    Shape::OneIdFourDevices,
                ),
                ("4 ids' primaries (4 leaves, 4 ids)", Shape::FourPrimaries),
            ] {
                let r = row(redis, shape).await;
                let (trips, cmds) = r.redis.map_or(("-".to_owned(), "-".to_owned()), |(t, c)| {
                    (format!("{t:.1}"), format!("{c:.1}"))
                });
                println!(
                    "{:<74} {:>8} {:>8} {:>7.0} {trips:>10} {cmds:>10}",
                    format!("{place}: {name}"),
                    r.hist.value_at_quantile(0.5),
                    r.hist.value_at_quantile(0.99),
                    r.per_s,
                );
            }
        }
    });
}
