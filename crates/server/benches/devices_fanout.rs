//! What a message to an id with linked devices costs, side by side with the same message to an
//! id whose primary device is its only one, in one run on one machine (`cargo bench -p
//! lattice-server --bench devices_fanout`; the Redis rows need `redis-server`): real servers
//! (127.0.0.1:0, in this process), real WebSocket clients, 1 KiB-class envelopes (~2.9 KB
//! frames).
//!
//! Closed loop, one message in flight: bob sends, and the message counts once **every** device of
//! alice has received it and sent its `ack`. Rows: alice with only her primary device, then with
//! 1 and 3 linked devices (stored once per device, each device drains and acks its copy); each
//! on one node (SQLite WAL on a temp dir: the reference), on two `--redis` nodes with bob and
//! alice's devices on the same node, and with bob on one node and alice's devices on the other
//! (a fresh `redis-server` per row, AOF `everysec`). Prints p50/p99 per message and messages/s.

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

const MESSAGES: u64 = 500;
const ENVELOPE_BYTES: usize = 2_000;

fn signed_list(identity: &Identity, counter: u64, devices: &[(String, IdentityKeyPair)]) -> Value {
    let entries: Vec<(&str, [u8; 32])> = devices
        .iter()
        .map(|(n, k)| (n.as_str(), *k.public_key().as_bytes()))
        .collect();
    let message = lattice_crypto::device_list_message("alice", counter, &entries).unwrap();
    json!({
        "counter": counter,
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

/// Where a row's servers run.
#[derive(Clone, Copy)]
enum Setup {
    /// One node on SQLite.
    Single,
    /// Two nodes on one Redis; bob and alice's devices on the same node.
    RedisSame,
    /// Two nodes on one Redis; bob on one, alice's devices on the other.
    RedisCross,
}

/// One row: alice with `linked` linked devices; per-message latencies until every device acked.
async fn row(setup: Setup, linked: usize) -> (Histogram<u64>, f64) {
    let dir = tempfile::tempdir().unwrap();
    let redis = match setup {
        Setup::Single => None,
        Setup::RedisSame | Setup::RedisCross => Some(redis_process::RedisProcess::start().await),
    };
    let mut servers = Vec::new();
    for i in 0..if redis.is_some() { 2 } else { 1 } {
        let mut config = lattice_server::Config::for_tests();
        let data = dir.path().join(format!("node{i}"));
        std::fs::create_dir_all(&data).unwrap();
        config.data_dir = Some(data);
        config.redis = redis
            .as_ref()
            .map(|r| lattice_server::cluster::RedisUrl::parse(&r.url()).unwrap());
        servers.push(lattice_server::spawn(config).await.unwrap());
    }
    let bob_url = servers[0].url();
    let url = match setup {
        Setup::Single | Setup::RedisSame => servers[0].url(),
        Setup::RedisCross => servers[1].url(),
    };
    let alice = new_identity();
    let mut devices = vec![register_verified(&url, "alice", &alice).await];
    if linked > 0 {
        let keys: Vec<(String, IdentityKeyPair)> = (0..linked)
            .map(|i| {
                (
                    format!("d{i}"),
                    IdentityKeyPair::generate(&mut rand::rngs::OsRng),
                )
            })
            .collect();
        devices[0]
            .request(
                json!({"type":"device_list_upload","payload":{"deviceList": signed_list(&alice, 1, &keys)}}),
                "device_list_upload",
            )
            .await;
        for (name, key) in &keys {
            devices.push(register_device(&url, &alice, name, key).await);
        }
    }
    let mut bob = register_verified(&bob_url, "bob", &new_identity()).await;
    let body = "x".repeat(ENVELOPE_BYTES);
    let mut hist = Histogram::<u64>::new(3).unwrap();
    let start = Instant::now();
    for i in 0..MESSAGES {
        let mid = format!("m{i}");
        let t = Instant::now();
        bob.send(json!({"type":"message","payload":{"targetId":"alice","messageId": mid,
            "message": {"algorithm":"lattice-v1","serializedCipherText": body,"serializedEncryptedData":"AA=="}}}))
            .await;
        for d in &mut devices {
            let m = d.recv_any(&["message"]).await;
            assert_eq!(m["payload"]["messageId"], mid.as_str());
            d.send(json!({"type":"ack","payload":{"messageId": mid,"fromId":"bob"}}))
                .await;
        }
        bob.recv_any(&["message_ack"]).await;
        hist.record(u64::try_from(t.elapsed().as_micros()).unwrap())
            .unwrap();
    }
    let per_s = MESSAGES as f64 / start.elapsed().as_secs_f64();
    (hist, per_s)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        println!(
            "{:<70} {:>10} {:>10} {:>10}",
            "message bob -> alice, until every device acked", "p50 µs", "p99 µs", "msgs/s"
        );
        for (place, setup) in [
            ("one node, SQLite (reference)", Setup::Single),
            ("2 Redis nodes, same node", Setup::RedisSame),
            ("2 Redis nodes, cross node", Setup::RedisCross),
        ] {
            for (name, linked) in [
                ("primary only", 0),
                ("primary + 1 linked device (stored x2)", 1),
                ("primary + 3 linked devices (stored x4)", 3),
            ] {
                let (h, per_s) = row(setup, linked).await;
                let name = format!("{place}: {name}");
                println!(
                    "{name:<70} {:>10} {:>10} {per_s:>10.0}",
                    h.value_at_quantile(0.5),
                    h.value_at_quantile(0.99)
                );
            }
        }
    });
}
