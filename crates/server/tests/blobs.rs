//! The blob store through its public interfaces: a real server on 127.0.0.1:0 with a real data
//! directory, real WebSocket clients for the `blob_token` frame and a real HTTP client (reqwest;
//! raw TCP where a request must be cut off). Each test performs what a client or an attacker
//! would and asserts what they see and what is on disk.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::time::Duration;

use lattice_protocol::ClientId;
use lattice_server::blobs::{BlobError, BlobLimits, BlobStore, CreateRequest};
use lattice_server::{Config, ServerHandle};
use serde_json::{json, Value};
use support::*;
use tokio::io::AsyncWriteExt as _;

const KIB: u64 = 1024;

fn persistent(dir: &Path) -> Config {
    Config {
        data_dir: Some(dir.to_path_buf()),
        ..Config::for_tests()
    }
}

/// Bytes that differ at every offset and between files.
fn pattern(len: u64, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ ((i >> 8) as u8))
        .collect()
}

struct Http {
    base: String,
    client: reqwest::Client,
}

impl Http {
    fn new(server: &ServerHandle) -> Self {
        Self {
            base: server.admin_url(),
            client: reqwest::Client::new(),
        }
    }

    async fn create(&self, token: &str, body: Value) -> (u16, Value) {
        let r = self
            .client
            .post(format!("{}/blobs", self.base))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .expect("request");
        (r.status().as_u16(), r.json().await.expect("json body"))
    }

    async fn put(&self, id: &str, cap: &str, index: &str, bytes: Vec<u8>) -> (u16, Value) {
        let r = self
            .client
            .put(format!("{}/blobs/{id}/chunks/{index}", self.base))
            .bearer_auth(cap)
            .body(bytes)
            .send()
            .await
            .expect("request");
        (r.status().as_u16(), r.json().await.expect("json body"))
    }

    async fn get(&self, id: &str, cap: &str, index: u64) -> (u16, Vec<u8>) {
        let r = self
            .client
            .get(format!("{}/blobs/{id}/chunks/{index}", self.base))
            .bearer_auth(cap)
            .send()
            .await
            .expect("request");
        (r.status().as_u16(), r.bytes().await.expect("body").to_vec())
    }

    async fn status(&self, id: &str, cap: &str) -> (u16, Value) {
        let r = self
            .client
            .get(format!("{}/blobs/{id}", self.base))
            .bearer_auth(cap)
            .send()
            .await
            .expect("request");
        (r.status().as_u16(), r.json().await.expect("json body"))
    }

    async fn delete(&self, id: &str, cap: &str) -> u16 {
        self.client
            .delete(format!("{}/blobs/{id}", self.base))
            .bearer_auth(cap)
            .send()
            .await
            .expect("request")
            .status()
            .as_u16()
    }

    async fn metric(&self, name: &str) -> u64 {
        let text = self
            .client
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("request")
            .text()
            .await
            .expect("text");
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no metric {name} in {text}"))
    }
}

/// A verified peer's connection and its blob token.
async fn token_for(url: &str, id: &str) -> (Client, String) {
    let identity = new_identity();
    let mut c = register_verified(url, id, &identity).await;
    let v = c
        .request(
            json!({"type":"blob_token","requestId":"bt","payload":{}}),
            "blob_token",
        )
        .await;
    assert_eq!(v["requestId"], "bt", "{v}");
    let token = v["payload"]["token"].as_str().expect("token").to_owned();
    (c, token)
}

fn create_body(sender: &str, size: u64, chunk: u64) -> Value {
    json!({"senderId": sender, "size": size, "chunkSize": chunk,
           "chunkCount": size.div_ceil(chunk).max(1)})
}

struct Transfer {
    id: String,
    up: String,
    down: String,
}

async fn create_ok(http: &Http, token: &str, sender: &str, size: u64, chunk: u64) -> Transfer {
    let (status, v) = http.create(token, create_body(sender, size, chunk)).await;
    assert_eq!(status, 201, "{v}");
    Transfer {
        id: v["transferId"].as_str().unwrap().to_owned(),
        up: v["uploadCapability"].as_str().unwrap().to_owned(),
        down: v["downloadCapability"].as_str().unwrap().to_owned(),
    }
}

fn chunk_of(data: &[u8], chunk: u64, i: u64) -> Vec<u8> {
    let start = (i * chunk) as usize;
    let end = ((i + 1) * chunk).min(data.len() as u64) as usize;
    data[start..end].to_vec()
}

/// A sender uploads chunks out of order, is cut off, resumes from the status (re-sending a chunk
/// already there writes nothing), and the receiver downloads exactly the bytes; the metrics count
/// them.
#[tokio::test]
async fn chunks_upload_out_of_order_resume_from_status_and_download_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let server = spawn_with(persistent(dir.path())).await;
    let http = Http::new(&server);
    let (_alice, token) = token_for(&server.url(), "alice").await;
    let chunk = 64 * KIB;
    let size = 4 * chunk + 123;
    let data = pattern(size, 7);
    let t = create_ok(&http, &token, "alice", size, chunk).await;

    for i in [3, 0, 4] {
        let (s, v) = http
            .put(&t.id, &t.up, &i.to_string(), chunk_of(&data, chunk, i))
            .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["alreadyPresent"], false);
    }
    // "cut": the sender restarts and asks what is there
    let (s, st) = http.status(&t.id, &t.down).await;
    assert_eq!(s, 200);
    assert_eq!(st["present"], json!([0, 3, 4]));
    assert_eq!(st["complete"], false);
    let (_, v) = http.put(&t.id, &t.up, "3", chunk_of(&data, chunk, 3)).await;
    assert_eq!(
        v["alreadyPresent"], true,
        "an acknowledged chunk is not written twice"
    );
    let in_before = http.metric("lattice_blob_bytes_in_total").await;
    for i in [2, 1] {
        let (s, v) = http
            .put(&t.id, &t.up, &i.to_string(), chunk_of(&data, chunk, i))
            .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["complete"], i == 1);
    }
    assert_eq!(
        http.metric("lattice_blob_bytes_in_total").await - in_before,
        2 * chunk
    );
    let mut got = Vec::new();
    for i in 0..5 {
        let (s, bytes) = http.get(&t.id, &t.down, i).await;
        assert_eq!(s, 200);
        got.extend_from_slice(&bytes);
    }
    assert_eq!(got, data);
    assert_eq!(http.metric("lattice_blob_bytes_out_total").await, size);
    assert_eq!(http.metric("lattice_blob_stored_bytes").await, size);
    assert_eq!(http.metric("lattice_blob_transfers").await, 1);

    assert_eq!(http.delete(&t.id, &t.up).await, 204);
    assert!(
        !dir.path().join("blobs").join(&t.id).exists(),
        "delete removes the bytes"
    );
    assert_eq!(http.metric("lattice_blob_stored_bytes").await, 0);
    let (s, _) = http.get(&t.id, &t.down, 0).await;
    assert_eq!(s, 404);
}

/// Attacks on the capabilities and the token: none of them reads, writes or deletes anything.
#[tokio::test]
async fn wrong_forged_or_missing_capabilities_and_tokens_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = spawn_with(persistent(dir.path())).await;
    let url = server.url();
    let http = Http::new(&server);
    let (mut alice, token) = token_for(&url, "alice").await;
    let (_bob, bob_token) = token_for(&url, "bob").await;

    // an unverified registration gets no token
    let (mut mallory, _) = register_unverified(&url, "mallory").await;
    let v = mallory
        .request(
            json!({"type":"blob_token","requestId":"m1","payload":{}}),
            "error",
        )
        .await;
    assert_eq!(v["payload"]["errorType"], "VERIFICATION_REQUIRED", "{v}");
    assert_eq!(v["payload"]["requestId"], "m1");

    // no token, a made-up one, and bob's token presented for alice
    for tok in ["", "forged-token", bob_token.as_str()] {
        let (s, v) = http.create(tok, create_body("alice", 10, 10)).await;
        assert_eq!(s, 401, "{v}");
        assert_eq!(v["errorType"], "UNAUTHORIZED");
    }
    // asking again replaces the token: the first one stops working
    let v = alice
        .request(
            json!({"type":"blob_token","requestId":"bt2","payload":{}}),
            "blob_token",
        )
        .await;
    let token2 = v["payload"]["token"].as_str().unwrap().to_owned();
    let (s, _) = http.create(&token, create_body("alice", 10, 10)).await;
    assert_eq!(s, 401, "a replaced token is refused");
    let token = token2;
    let t = create_ok(&http, &token, "alice", 100, 100).await;
    let data = pattern(100, 1);

    let forged = "A".repeat(t.up.len());
    for cap in [forged.as_str(), "", t.down.as_str()] {
        let (s, v) = http.put(&t.id, cap, "0", data.clone()).await;
        assert_eq!(s, 403, "upload with {cap:?}: {v}");
        assert_eq!(v["errorType"], "FORBIDDEN");
        assert_eq!(http.delete(&t.id, cap).await, 403);
    }
    let (s, _) = http.put(&t.id, &t.up, "0", data.clone()).await;
    assert_eq!(s, 200);
    for cap in [forged.as_str(), "x"] {
        let (s, bytes) = http.get(&t.id, cap, 0).await;
        assert_eq!(s, 403);
        assert!(
            !bytes.windows(16).any(|w| w == &data[..16]),
            "no bytes leak"
        );
        let (s, _) = http.status(&t.id, cap).await;
        assert_eq!(s, 403);
    }
    // another transfer's capability does not open this one
    let other = create_ok(&http, &bob_token, "bob", 5, 5).await;
    let (s, _) = http.get(&t.id, &other.down, 0).await;
    assert_eq!(s, 403);
    let (s, bytes) = http.get(&t.id, &t.down, 0).await;
    assert_eq!((s, bytes), (200, data));
}

/// Per-file, per-sender and total quotas, huge declared sizes and malformed requests: each gets
/// its typed error before anything is stored, and the server keeps serving.
#[tokio::test]
async fn quotas_limits_and_huge_declared_sizes_get_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let server = spawn_with(Config {
        blob_max_file: 1024 * KIB,
        blob_sender_quota: 1536 * KIB,
        blob_quota: 2048 * KIB,
        ..persistent(dir.path())
    })
    .await;
    let url = server.url();
    let http = Http::new(&server);
    let (_a, a) = token_for(&url, "alice").await;
    let (_b, b) = token_for(&url, "bob").await;
    let c64 = 64 * KIB;

    let (s, v) = http
        .create(&a, create_body("alice", 1024 * KIB + 1, c64))
        .await;
    assert_eq!(
        (s, v["errorType"].as_str()),
        (413, Some("FILE_TOO_LARGE")),
        "{v}"
    );
    let (s, v) = http
        .create(
            &a,
            json!({"senderId":"alice","size":u64::MAX,"chunkSize":c64,"chunkCount":u64::MAX}),
        )
        .await;
    assert_eq!(
        (s, v["errorType"].as_str()),
        (413, Some("FILE_TOO_LARGE")),
        "{v}"
    );
    for bad in [
        json!({"senderId":"alice","size":1000,"chunkSize":100,"chunkCount":3}),
        json!({"senderId":"alice","size":1000,"chunkSize":0,"chunkCount":1}),
        json!({"senderId":"alice","size":1000,"chunkSize":100,"chunkCount":10}),
        json!({"senderId":"alice","size":10,"chunkSize":(9u64 << 20),"chunkCount":1}),
        json!({"senderId":"alice","size":-1,"chunkSize":100,"chunkCount":1}),
        json!({"senderId":"alice","size":1,"chunkSize":1,"chunkCount":1,"extra":1}),
    ] {
        let (s, v) = http.create(&a, bad.clone()).await;
        assert_eq!(
            (s, v["errorType"].as_str()),
            (400, Some("INVALID_REQUEST")),
            "{bad}: {v}"
        );
    }

    let t1 = create_ok(&http, &a, "alice", 1024 * KIB, c64).await;
    let (s, v) = http.create(&a, create_body("alice", 1024 * KIB, c64)).await;
    assert_eq!(
        (s, v["errorType"].as_str()),
        (429, Some("SENDER_QUOTA_EXCEEDED")),
        "{v}"
    );
    let _t2 = create_ok(&http, &b, "bob", 1024 * KIB, c64).await;
    let (s, v) = http.create(&b, create_body("bob", 1, c64)).await;
    assert_eq!(
        (s, v["errorType"].as_str()),
        (507, Some("QUOTA_EXCEEDED")),
        "{v}"
    );

    // chunks of the wrong length, and indices that are not chunks
    let (s, v) = http
        .put(&t1.id, &t1.up, "0", vec![0; (c64 + 1) as usize])
        .await;
    assert_eq!(
        (s, v["errorType"].as_str()),
        (400, Some("CHUNK_SIZE")),
        "{v}"
    );
    let (s, v) = http.put(&t1.id, &t1.up, "0", vec![0; 10]).await;
    assert_eq!(
        (s, v["errorType"].as_str()),
        (400, Some("CHUNK_SIZE")),
        "{v}"
    );
    for index in [
        "16",
        "18446744073709551615",
        "-1",
        "abc",
        "99999999999999999999999",
    ] {
        let (s, v) = http.put(&t1.id, &t1.up, index, vec![0; c64 as usize]).await;
        assert_eq!(
            (s, v["errorType"].as_str()),
            (400, Some("INVALID_REQUEST")),
            "{index}: {v}"
        );
    }
    let (s, st) = http.status(&t1.id, &t1.up).await;
    assert_eq!((s, st["present"].clone()), (200, json!([])));

    // deleting frees the sender's quota
    assert_eq!(http.delete(&t1.id, &t1.up).await, 204);
    create_ok(&http, &a, "alice", 1024 * KIB, c64).await;
}

/// Transfer ids and chunk indices that try to leave the blob directory never reach a path.
#[tokio::test]
async fn path_traversal_in_ids_and_indices_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), b"top secret").unwrap();
    let server = spawn_with(persistent(dir.path())).await;
    let http = Http::new(&server);
    let (_a, a) = token_for(&server.url(), "alice").await;
    let t = create_ok(&http, &a, "alice", 10, 10).await;
    for path in [
        "/blobs/..%2F..%2Fsecret/chunks/0".to_owned(),
        format!("/blobs/{}%2F..%2F..%2F/chunks/0", t.id),
        format!("/blobs/{}/chunks/..%2Fmeta.json", t.id),
        format!("/blobs/{}/chunks/..%2F..%2F..%2Fsecret", t.id),
        format!("/blobs/{}/chunks/0%2F..%2F..%2Fmeta.json", t.id),
        "/blobs/../secret".to_owned(),
        format!("/blobs/{}/../../secret", t.id),
    ] {
        let r = http
            .client
            .get(format!("{}{path}", http.base))
            .bearer_auth(&t.up)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body = r.bytes().await.unwrap();
        assert!(
            status == 400 || status == 404 || status == 426,
            "{path}: {status}"
        );
        assert!(!body.windows(10).any(|w| w == b"top secret"), "{path}");
        assert!(
            !body
                .windows(10)
                .any(|w| w == t.down.as_bytes()[..10].as_ref()),
            "{path}"
        );
    }
}

/// A chunk upload cut off mid-body stores nothing (no partial chunk), leaves no temporary file
/// behind, and the server keeps serving: the chunk is uploaded again afterwards.
#[tokio::test]
async fn a_truncated_upload_stores_nothing_and_the_chunk_can_be_sent_again() {
    let dir = tempfile::tempdir().unwrap();
    let server = spawn_with(persistent(dir.path())).await;
    let http = Http::new(&server);
    let (_a, a) = token_for(&server.url(), "alice").await;
    let chunk = 256 * KIB;
    let t = create_ok(&http, &a, "alice", chunk, chunk).await;
    let data = pattern(chunk, 3);

    let mut tcp = tokio::net::TcpStream::connect(server.local_addr())
        .await
        .unwrap();
    let head = format!(
        "PUT /blobs/{}/chunks/0 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: {chunk}\r\n\r\n",
        t.id, t.up
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(&data[..(chunk / 2) as usize]).await.unwrap();
    tcp.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await; // let the server start writing
    drop(tcp);

    let chunk_dir = dir.path().join("blobs").join(&t.id);
    let mut left = Vec::new();
    for _ in 0..100 {
        left = std::fs::read_dir(&chunk_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "meta.json")
            .collect();
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(left.is_empty(), "left behind: {left:?}");
    let (_, st) = http.status(&t.id, &t.down).await;
    assert_eq!(st["present"], json!([]));
    let (s, _) = http.put(&t.id, &t.up, "0", data.clone()).await;
    assert_eq!(s, 200);
    assert_eq!(http.get(&t.id, &t.down, 0).await, (200, data));
}

/// A client that starts an upload and then sends nothing is cut off after the idle bound
/// (`TRUNCATED`, on tokio's paused clock) instead of holding its upload slot; nothing is stored.
#[tokio::test]
async fn a_stalled_upload_is_cut_off_and_stores_nothing() {
    use tokio::io::AsyncReadExt as _;
    let dir = tempfile::tempdir().unwrap();
    let server = spawn_with(persistent(dir.path())).await;
    let http = Http::new(&server);
    let (_a, a) = token_for(&server.url(), "alice").await;
    let chunk = 128 * KIB;
    let t = create_ok(&http, &a, "alice", chunk, chunk).await;
    let mut tcp = tokio::net::TcpStream::connect(server.local_addr())
        .await
        .unwrap();
    let head = format!(
        "PUT /blobs/{}/chunks/0 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: {chunk}\r\n\r\n",
        t.id, t.up
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(&[7u8; 1000]).await.unwrap();
    tcp.flush().await.unwrap();
    // from here the clock only moves when everything waits: the server's idle bound fires
    tokio::time::pause();
    let read = async {
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&answer).contains('}') {
            let n = tcp.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
        }
        answer
    };
    // a bound well past the server's 30 s, so a server that waits forever fails the test
    let answer = tokio::time::timeout(Duration::from_secs(120), read)
        .await
        .expect("the server cut the stalled upload off");
    tokio::time::resume();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("\"TRUNCATED\""), "{answer}");
    let (_, st) = http.status(&t.id, &t.down).await;
    assert_eq!(st["present"], json!([]));
}

/// Eight clients upload the same chunk at once: every one succeeds, the chunk is stored (and
/// counted) once, and it reads back intact.
#[tokio::test]
async fn concurrent_uploads_of_one_chunk_store_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = spawn_with(persistent(dir.path())).await;
    let http = std::sync::Arc::new(Http::new(&server));
    let (_a, a) = token_for(&server.url(), "alice").await;
    let chunk = 512 * KIB;
    let t = std::sync::Arc::new(create_ok(&http, &a, "alice", chunk, chunk).await);
    let data = pattern(chunk, 9);
    let uploads: Vec<_> = (0..8)
        .map(|_| {
            let (http, t, data) = (http.clone(), t.clone(), data.clone());
            tokio::spawn(async move { http.put(&t.id, &t.up, "0", data).await })
        })
        .collect();
    let mut fresh = 0;
    for u in uploads {
        let (s, v) = u.await.unwrap();
        assert_eq!(s, 200, "{v}");
        if v["alreadyPresent"] == false {
            fresh += 1;
        }
    }
    assert!(fresh >= 1);
    assert_eq!(http.metric("lattice_blob_stored_bytes").await, chunk);
    assert_eq!(http.get(&t.id, &t.down, 0).await, (200, data));
    let files = std::fs::read_dir(dir.path().join("blobs").join(&t.id))
        .unwrap()
        .count();
    assert_eq!(files, 2, "meta.json and one chunk, no temporary files");
}

/// A restart keeps every transfer (complete and partial) with its capabilities; after the TTL
/// (an injected clock) the bytes are deleted from disk.
#[tokio::test]
async fn a_restart_keeps_transfers_and_expiry_deletes_their_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let chunk = 64 * KIB;
    let data = pattern(2 * chunk + 5, 11);
    let (t, partial) = {
        let server = spawn_with(persistent(dir.path())).await;
        let http = Http::new(&server);
        let (_a, a) = token_for(&server.url(), "alice").await;
        let t = create_ok(&http, &a, "alice", data.len() as u64, chunk).await;
        for i in 0..3 {
            let (s, _) = http
                .put(&t.id, &t.up, &i.to_string(), chunk_of(&data, chunk, i))
                .await;
            assert_eq!(s, 200);
        }
        let partial = create_ok(&http, &a, "alice", 2 * chunk, chunk).await;
        let (s, _) = http
            .put(&partial.id, &partial.up, "1", vec![1; chunk as usize])
            .await;
        assert_eq!(s, 200);
        server.shutdown().await;
        (t, partial)
    };
    let server = spawn_with(persistent(dir.path())).await;
    let http = Http::new(&server);
    let mut got = Vec::new();
    for i in 0..3 {
        let (s, bytes) = http.get(&t.id, &t.down, i).await;
        assert_eq!(s, 200);
        got.extend_from_slice(&bytes);
    }
    assert_eq!(got, data);
    let (_, st) = http.status(&partial.id, &partial.up).await;
    assert_eq!(st["present"], json!([1]));
    let (s, _) = http
        .put(&partial.id, &partial.up, "0", vec![2; chunk as usize])
        .await;
    assert_eq!(s, 200, "the upload resumes after the restart");
    assert_eq!(
        http.metric("lattice_blob_stored_bytes").await,
        data.len() as u64 + 2 * chunk
    );
    let (_, st_t) = http.status(&t.id, &t.down).await;
    let first = st_t["expiresAtMs"].as_u64().unwrap();
    let last = st["expiresAtMs"].as_u64().unwrap();
    assert!(first <= last);
    server.shutdown().await;

    // the sweeper's expiry, on an injected clock
    let store = BlobStore::open(
        &dir.path().join("blobs"),
        BlobLimits {
            total: u64::MAX,
            per_sender: u64::MAX,
            max_file: u64::MAX,
            ttl: Duration::from_secs(7 * 24 * 3600),
        },
    )
    .unwrap();
    assert_eq!(store.transfer_count(), 2);
    assert_eq!(
        store.purge_expired(first - 1),
        0,
        "nothing goes before its time"
    );
    assert!(dir.path().join("blobs").join(&t.id).join("0").exists());
    assert_eq!(store.purge_expired(last), 2);
    assert!(!dir.path().join("blobs").join(&t.id).exists());
    assert!(!dir.path().join("blobs").join(&partial.id).exists());
    assert_eq!(store.stored_bytes(), 0);
}

/// A pipelined file's recipient asks for a chunk the sender is still uploading: the download
/// waits for it and gets exactly its bytes, instead of a `CHUNK_MISSING` the client must poll on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_of_a_chunk_being_uploaded_waits_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = spawn_with(persistent(dir.path())).await;
    let http = Http::new(&server);
    let (_a, a) = token_for(&server.url(), "alice").await;
    let chunk = 64 * KIB;
    let data = pattern(2 * chunk, 21);
    let t = create_ok(&http, &a, "alice", data.len() as u64, chunk).await;
    let waiting = {
        let (base, id, down) = (http.base.clone(), t.id.clone(), t.down.clone());
        tokio::spawn(async move {
            let http = Http {
                base,
                client: reqwest::Client::new(),
            };
            http.get(&id, &down, 1).await
        })
    };
    // Ordering only (the GET is sent first), no timing asserted.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (s, _) = http.put(&t.id, &t.up, "1", chunk_of(&data, chunk, 1)).await;
    assert_eq!(s, 200);
    let (s, bytes) = waiting.await.unwrap();
    assert_eq!(s, 200);
    assert_eq!(bytes, chunk_of(&data, chunk, 1));
    // An index past the end is refused at once, never waited for.
    let (s, _) = http.get(&t.id, &t.down, 2).await;
    assert_eq!(s, 404);
}

fn open_store(dir: &Path) -> BlobStore {
    BlobStore::open(
        dir,
        BlobLimits {
            total: u64::MAX,
            per_sender: u64::MAX,
            max_file: u64::MAX,
            ttl: Duration::from_secs(60),
        },
    )
    .unwrap()
}

fn request(sender: &str, size: u64, chunk: u64, client_ref: Option<&str>) -> CreateRequest {
    CreateRequest {
        sender_id: ClientId::new(sender).unwrap(),
        size,
        chunk_size: chunk,
        chunk_count: size.div_ceil(chunk).max(1),
        client_ref: client_ref.map(str::to_owned),
        one_recipient: false,
    }
}

/// The wait for a missing chunk is bounded (`CHUNK_MISSING` after it, on paused time), and a
/// transfer deleted meanwhile ends the wait at once with `TRANSFER_NOT_FOUND`.
#[tokio::test(start_paused = true)]
async fn the_wait_for_a_missing_chunk_is_bounded_and_ends_when_the_transfer_goes() {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(open_store(dir.path()));
    let t = store
        .create(&request("alice", 2 * 64 * KIB, 64 * KIB, None), 1)
        .unwrap();
    let wait = Duration::from_secs(15);
    let r = store
        .wait_for_chunk(&t.transfer_id, &t.download_capability, 0, wait)
        .await;
    assert!(matches!(r, Err(BlobError::ChunkMissing(0))), "{r:?}");
    let waiting = {
        let (store, t) = (std::sync::Arc::clone(&store), t.clone());
        tokio::spawn(async move {
            store
                .wait_for_chunk(&t.transfer_id, &t.download_capability, 1, wait)
                .await
        })
    };
    tokio::task::yield_now().await;
    store.delete(&t.transfer_id, &t.upload_capability).unwrap();
    let r = waiting.await.unwrap();
    assert!(matches!(r, Err(BlobError::NotFound)), "{r:?}");
}

/// A create repeated with its `clientRef` (the sender crashed before it journalled the answer)
/// gets the same transfer and reserves nothing twice; the same key with other sizes is refused;
/// another sender's key is its own.
#[tokio::test]
async fn a_create_repeated_with_its_client_ref_returns_the_same_transfer() {
    let dir = tempfile::tempdir().unwrap();
    let server = spawn_with(persistent(dir.path())).await;
    let http = Http::new(&server);
    let (_a, a) = token_for(&server.url(), "alice").await;
    let (_b, b) = token_for(&server.url(), "bob").await;
    let body = |sender: &str, size: u64| {
        let mut v = create_body(sender, size, 64 * KIB);
        v["clientRef"] = json!("ref-1_A");
        v
    };
    let (s1, first) = http.create(&a, body("alice", 100 * KIB)).await;
    assert_eq!(s1, 201, "{first}");
    let (s2, again) = http.create(&a, body("alice", 100 * KIB)).await;
    assert_eq!(s2, 200, "{again}");
    assert_eq!(first, again, "the same transfer and capabilities");
    assert_eq!(http.metric("lattice_blob_transfers").await, 1);
    let (s, v) = http.create(&a, body("alice", 200 * KIB)).await;
    assert_eq!((s, v["errorType"].as_str()), (400, Some("INVALID_REQUEST")));
    let (s, other) = http.create(&b, body("bob", 100 * KIB)).await;
    assert_eq!(s, 201);
    assert_ne!(other["transferId"], first["transferId"]);
    for bad in ["", "a/b", &"x".repeat(65)] {
        let mut v = create_body("alice", 10, 10);
        v["clientRef"] = json!(bad);
        let (s, _) = http.create(&a, v).await;
        assert_eq!(s, 400, "{bad:?}");
    }
    // After a delete the key is free again (a new transfer).
    let id = first["transferId"].as_str().unwrap();
    let up = first["uploadCapability"].as_str().unwrap();
    assert_eq!(http.delete(id, up).await, 204);
    let (s, _) = http.create(&a, body("alice", 100 * KIB)).await;
    assert_eq!(s, 201);
    server.shutdown().await;
    // The key survives a restart (it is in meta.json).
    let store = open_store(&dir.path().join("blobs"));
    let again = store
        .create(&request("alice", 100 * KIB, 64 * KIB, Some("ref-1_A")), 1)
        .unwrap();
    assert!(!again.new);
    assert_eq!(store.transfer_count(), 2);
}

/// The download capability deletes a one-recipient transfer (the recipient, once its copy is
/// verified) and nothing else: not a group's transfer, where every member holds it.
#[tokio::test]
async fn only_a_one_recipient_transfer_is_deleted_by_its_download_capability() {
    let dir = tempfile::tempdir().unwrap();
    let server = spawn_with(persistent(dir.path())).await;
    let http = Http::new(&server);
    let (_a, a) = token_for(&server.url(), "alice").await;
    let group = create_ok(&http, &a, "alice", 10, 10).await;
    assert_eq!(http.delete(&group.id, &group.down).await, 403);
    let mut body = create_body("alice", 10, 10);
    body["oneRecipient"] = json!(true);
    let (s, v) = http.create(&a, body).await;
    assert_eq!(s, 201, "{v}");
    let id = v["transferId"].as_str().unwrap();
    let down = v["downloadCapability"].as_str().unwrap();
    let (s, _) = http
        .put(
            id,
            v["uploadCapability"].as_str().unwrap(),
            "0",
            vec![5; 10],
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(http.delete(id, "forged").await, 403);
    assert_eq!(http.delete(id, down).await, 204);
    assert!(
        !dir.path().join("blobs").join(id).exists(),
        "the bytes are gone"
    );
    assert_eq!(http.metric("lattice_blob_stored_bytes").await, 0);
    let (s, _) = http.status(&group.id, &group.down).await;
    assert_eq!(s, 200, "the group's transfer is still there");
}

/// A server without a data directory keeps no files and says so with a typed error.
#[tokio::test]
async fn an_in_memory_server_refuses_blobs_with_a_typed_error() {
    let server = spawn_server().await;
    let http = Http::new(&server);
    let (_a, a) = token_for(&server.url(), "alice").await;
    let (s, v) = http.create(&a, create_body("alice", 10, 10)).await;
    assert_eq!(
        (s, v["errorType"].as_str()),
        (503, Some("BLOBS_DISABLED")),
        "{v}"
    );
}

/// Measurement, not a test of speed: a 256 MiB transfer in 1 MiB chunks on loopback, up and
/// down (`cargo test -p lattice-server --release --test blobs -- --ignored --nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement"]
async fn measure_256_mib_in_1_mib_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let server = spawn_with(persistent(dir.path())).await;
    let http = Http::new(&server);
    let (_a, a) = token_for(&server.url(), "alice").await;
    let chunk = 1024 * KIB;
    let count = 256;
    let t = create_ok(&http, &a, "alice", count * chunk, chunk).await;
    let body = pattern(chunk, 5);
    let start = std::time::Instant::now();
    for i in 0..count {
        let (s, _) = http.put(&t.id, &t.up, &i.to_string(), body.clone()).await;
        assert_eq!(s, 200);
    }
    let up = start.elapsed();
    let start = std::time::Instant::now();
    for i in 0..count {
        let (s, bytes) = http.get(&t.id, &t.down, i).await;
        assert_eq!((s, bytes.len() as u64), (200, chunk));
    }
    let down = start.elapsed();
    let mib = count as f64;

    // References in the same run: the same bytes over one raw loopback TCP connection, and
    // written to the same disk as 1 MiB files each synced and renamed (what the store does).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sink = tokio::spawn(async move {
        use tokio::io::AsyncReadExt as _;
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 256 * 1024];
        let mut n = 0u64;
        loop {
            match s.read(&mut buf).await.unwrap() {
                0 => break n,
                k => n += k as u64,
            }
        }
    });
    let start = std::time::Instant::now();
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    for _ in 0..count {
        tcp.write_all(&body).await.unwrap();
    }
    drop(tcp);
    assert_eq!(sink.await.unwrap(), count * chunk);
    let raw_tcp = start.elapsed();
    let disk_dir = tempfile::tempdir_in(dir.path()).unwrap();
    let start = std::time::Instant::now();
    for i in 0..count {
        use std::io::Write as _;
        let tmp = disk_dir.path().join(format!("{i}.part"));
        let mut f = std::fs::File::create(&tmp).unwrap();
        f.write_all(&body).unwrap();
        f.sync_all().unwrap();
        std::fs::rename(&tmp, disk_dir.path().join(i.to_string())).unwrap();
    }
    let raw_disk = start.elapsed();
    println!(
        "references: raw loopback TCP {:.1} MiB/s, disk (1 MiB files synced + renamed) {:.1} MiB/s",
        mib / raw_tcp.as_secs_f64(),
        mib / raw_disk.as_secs_f64()
    );
    println!(
        "256 MiB in 1 MiB chunks, sequential: upload {:.1} MiB/s ({:.2} s), download {:.1} MiB/s ({:.2} s)",
        mib / up.as_secs_f64(),
        up.as_secs_f64(),
        mib / down.as_secs_f64(),
        down.as_secs_f64()
    );
}
