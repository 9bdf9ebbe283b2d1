//! Files on several nodes: real `lattice-server --redis` processes on a real `redis-server` (and
//! on a 3-master Redis Cluster), each with its own data dir and one `--blob-dir` they share,
//! driven by real WebSocket clients (`blob_token`) and a real HTTP client. A transfer created on
//! one node is served by every other: chunks uploaded through A and B download through C byte
//! for byte; a token from A is accepted by B; a `clientRef` create repeated on another node
//! returns the same transfer; quotas hold over every node (a race has exactly the allowed
//! number of winners); a download through B waits for a chunk uploaded through A; one chunk
//! uploaded through two nodes at once is stored once; expiry deletes the bytes once, whichever
//! node's sweeper gets there; a node killed mid-upload leaves nothing half-written and the
//! upload resumes through another; a node whose blob directory is not the others' refuses to
//! start. No blob byte is in Redis.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/redis_process.rs"]
mod redis_process;
#[path = "support/server_process.rs"]
mod server_process;
mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use lattice_protocol::ClientId;
use lattice_server::blobs::{BlobLimits, CreateRequest, SharedStore};
use lattice_server::cluster::blobs::{DropClaim, RedisBlobs};
use lattice_server::cluster::{RedisConn, RedisUrl};
use redis_process::{Backend, RedisProcess};
use serde_json::{json, Value};
use server_process::ServerProcess;
use support::*;
use tokio::io::AsyncWriteExt as _;

const KIB: u64 = 1024;

/// `n` nodes on the Redis at `url`, each on its own data dir under `dir`, all on the blob
/// directory `dir/shared`, with `extra` flags.
async fn nodes(url: &str, dir: &Path, n: usize, extra: &[&str]) -> Vec<ServerProcess> {
    let shared = dir.join("shared");
    let mut out = Vec::new();
    for i in 0..n {
        let data = dir.join(format!("node{i}"));
        std::fs::create_dir_all(&data).unwrap();
        let mut args = vec!["--redis", url, "--blob-dir", shared.to_str().unwrap()];
        args.extend_from_slice(extra);
        out.push(ServerProcess::start(&data, &args).await);
    }
    out
}

fn base(node: &ServerProcess) -> String {
    node.url.replacen("ws://", "http://", 1)
}

/// Bytes that differ at every offset and between files.
fn pattern(len: u64, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ ((i >> 8) as u8))
        .collect()
}

fn chunk_of(data: &[u8], chunk: u64, i: u64) -> Vec<u8> {
    let start = (i * chunk) as usize;
    let end = ((i + 1) * chunk).min(data.len() as u64) as usize;
    data[start..end].to_vec()
}

/// A verified peer's connection on `url` and its blob token.
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
    (c, v["payload"]["token"].as_str().expect("token").to_owned())
}

fn create_body(sender: &str, size: u64, chunk: u64) -> Value {
    json!({"senderId": sender, "size": size, "chunkSize": chunk,
           "chunkCount": size.div_ceil(chunk).max(1)})
}

#[derive(Clone)]
struct Transfer {
    id: String,
    up: String,
    down: String,
}

impl Transfer {
    fn of(v: &Value) -> Self {
        Self {
            id: v["transferId"].as_str().unwrap().to_owned(),
            up: v["uploadCapability"].as_str().unwrap().to_owned(),
            down: v["downloadCapability"].as_str().unwrap().to_owned(),
        }
    }
}

async fn create(base: &str, token: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{base}/blobs"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("request");
    (r.status().as_u16(), r.json().await.expect("json body"))
}

async fn put(base: &str, t: &Transfer, index: u64, bytes: Vec<u8>) -> (u16, Value) {
    let r = reqwest::Client::new()
        .put(format!("{base}/blobs/{}/chunks/{index}", t.id))
        .bearer_auth(&t.up)
        .body(bytes)
        .send()
        .await
        .expect("request");
    (r.status().as_u16(), r.json().await.expect("json body"))
}

async fn get(base: &str, t: &Transfer, index: u64) -> (u16, Vec<u8>) {
    let r = reqwest::Client::new()
        .get(format!("{base}/blobs/{}/chunks/{index}", t.id))
        .bearer_auth(&t.down)
        .send()
        .await
        .expect("request");
    (r.status().as_u16(), r.bytes().await.expect("body").to_vec())
}

async fn status(base: &str, t: &Transfer) -> (u16, Value) {
    let r = reqwest::Client::new()
        .get(format!("{base}/blobs/{}", t.id))
        .bearer_auth(&t.down)
        .send()
        .await
        .expect("request");
    (r.status().as_u16(), r.json().await.expect("json body"))
}

async fn metric(base: &str, name: &str) -> u64 {
    let text = reqwest::get(format!("{base}/metrics"))
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

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// The Redis URL of a backend, as `--redis` takes it.
fn redis_url(redis: &Backend) -> String {
    match redis {
        Backend::Single(r) => r.url(),
        Backend::Cluster(c) => c.url(),
    }
}

/// The scenario on one Redis and on a 3-master cluster: create on A with A's token; the same
/// token creates on B too; a `clientRef` create repeated on C returns A's transfer; chunks
/// uploaded alternately through A and B (one re-sent through the other node is not written
/// again); the status on every node lists them; the download through C is byte for byte; each
/// node's `/metrics` counts the bytes it moved, and the totals agree.
async fn created_on_a_uploaded_through_a_and_b_downloaded_through_c(redis: &Backend) {
    let dir = tempfile::tempdir().unwrap();
    let n = nodes(&redis_url(redis), dir.path(), 3, &[]).await;
    let (a, b, c) = (base(&n[0]), base(&n[1]), base(&n[2]));
    let (_alice, token) = token_for(&n[0].url, "alice").await;

    let chunk = 64 * KIB;
    let data = pattern(5 * chunk + 123, 7);
    let mut body = create_body("alice", data.len() as u64, chunk);
    body["clientRef"] = json!("file-1");
    let (s, v) = create(&a, &token, body.clone()).await;
    assert_eq!(s, 201, "{v}");
    let t = Transfer::of(&v);
    // the same create again, through another node: the same transfer, nothing new reserved
    let (s, again) = create(&c, &token, body).await;
    assert_eq!(s, 200, "{again}");
    assert_eq!(Transfer::of(&again).id, t.id);
    assert_eq!(again["uploadCapability"], v["uploadCapability"]);
    // A's token is good on B
    let (s, other) = create(&b, &token, create_body("alice", 10, 10)).await;
    assert_eq!(s, 201, "{other}");
    // and a wrong one is refused there
    let (s, e) = create(&b, "not-the-token", create_body("alice", 10, 10)).await;
    assert_eq!((s, e["errorType"].as_str()), (401, Some("UNAUTHORIZED")));

    for i in 0..6 {
        let through = if i % 2 == 0 { &a } else { &b };
        let (s, v) = put(through, &t, i, chunk_of(&data, chunk, i)).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["alreadyPresent"], false);
        assert_eq!(v["complete"], i == 5);
    }
    // chunk 2 (landed through A) again through B: nothing written
    let (s, v) = put(&b, &t, 2, chunk_of(&data, chunk, 2)).await;
    assert_eq!((s, &v["alreadyPresent"]), (200, &json!(true)), "{v}");
    for node in [&a, &b, &c] {
        let (s, st) = status(node, &t).await;
        assert_eq!(s, 200);
        assert_eq!(st["present"], json!([0, 1, 2, 3, 4, 5]), "{st}");
        assert_eq!(st["complete"], true);
    }
    let mut got = Vec::new();
    for i in 0..6 {
        let (s, bytes) = get(&c, &t, i).await;
        assert_eq!(s, 200);
        got.extend_from_slice(&bytes);
    }
    assert_eq!(got, data, "byte for byte through C");

    // each node counts what it moved; the stored bytes are every node's
    let (in_a, in_b) = (
        metric(&a, "lattice_blob_bytes_in_total").await,
        metric(&b, "lattice_blob_bytes_in_total").await,
    );
    assert_eq!(in_a, 3 * chunk);
    assert_eq!(in_b, 2 * chunk + 123);
    assert_eq!(
        metric(&c, "lattice_blob_bytes_out_total").await,
        data.len() as u64
    );
    assert_eq!(metric(&a, "lattice_blob_bytes_out_total").await, 0);
    assert_eq!(metric(&a, "lattice_blob_transfers_created_total").await, 1);
    assert_eq!(metric(&b, "lattice_blob_transfers_created_total").await, 1);
    assert_eq!(metric(&c, "lattice_blob_transfers_created_total").await, 0);

    // one copy of each chunk on the shared directory, no temporary file left
    let chunks = files_under(&dir.path().join("shared").join(&t.id));
    assert_eq!(chunks.len(), 6, "{chunks:?}");

    // no blob byte in Redis: every value there is far smaller than a chunk
    if let Backend::Single(r) = redis {
        let keys = redis_process::cli(r.port(), &["--scan", "--pattern", "*"]).await;
        for key in keys.lines().filter(|k| !k.is_empty()) {
            let usage = redis_process::cli(r.port(), &["MEMORY", "USAGE", key]).await;
            let bytes: u64 = usage.trim().parse().unwrap_or(0);
            assert!(bytes < chunk / 4, "{key} holds {bytes} bytes");
        }
    }
}

both!(created_on_a_uploaded_through_a_and_b_downloaded_through_c);

/// Creates racing on three nodes: one sender's, against its quota of three files, and then
/// several senders' against the total: exactly the allowed number pass, the others get the
/// typed errors.
#[tokio::test]
async fn quota_races_across_nodes_let_exactly_the_allowed_number_pass() {
    let redis = RedisProcess::start().await;
    let dir = tempfile::tempdir().unwrap();
    let size = 100 * KIB;
    let per_sender = (3 * size).to_string();
    let total = (5 * size).to_string();
    let n = nodes(
        &redis.url(),
        dir.path(),
        3,
        &["--blob-sender-quota", &per_sender, "--blob-quota", &total],
    )
    .await;
    let bases: Vec<String> = n.iter().map(base).collect();
    let (_alice, token) = token_for(&n[0].url, "alice").await;

    let race = |sender: &'static str, token: String, count: usize| {
        let bases = bases.clone();
        async move {
            let tasks: Vec<_> = (0..count)
                .map(|i| {
                    let (b, token) = (bases[i % bases.len()].clone(), token.clone());
                    tokio::spawn(async move {
                        create(&b, &token, create_body(sender, size, size)).await
                    })
                })
                .collect();
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.unwrap());
            }
            out
        }
    };
    let answers = race("alice", token, 9).await;
    let passed = answers.iter().filter(|(s, _)| *s == 201).count();
    assert_eq!(passed, 3, "{answers:?}");
    for (s, v) in answers.iter().filter(|(s, _)| *s != 201) {
        assert_eq!(
            (*s, v["errorType"].as_str()),
            (429, Some("SENDER_QUOTA_EXCEEDED"))
        );
    }

    // the total: room for two more files of anyone
    let mut tokens: Vec<(&'static str, Client, String)> = Vec::new();
    for (i, who) in ["bob", "carol", "dave"].into_iter().enumerate() {
        let (conn, t) = token_for(&n[i].url, who).await;
        tokens.push((who, conn, t));
    }
    let mut tasks = Vec::new();
    for (who, _, t) in &tokens {
        tasks.push(tokio::spawn(race(who, t.clone(), 2)));
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.extend(t.await.unwrap());
    }
    let passed = answers.iter().filter(|(s, _)| *s == 201).count();
    assert_eq!(passed, 2, "{answers:?}");
    for (s, v) in answers.iter().filter(|(s, _)| *s != 201) {
        assert_eq!((*s, v["errorType"].as_str()), (507, Some("QUOTA_EXCEEDED")));
    }
    // each node's gauges show every node's transfers after its next sweep
    for b in &bases {
        let mut seen = 0;
        for _ in 0..150 {
            seen = metric(b, "lattice_blob_transfers").await;
            if seen == 5 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(seen, 5);
    }
}

/// A download through B asks for a chunk nobody uploaded yet; the chunk is uploaded through A;
/// the waiting download answers with exactly its bytes. One chunk uploaded through two nodes
/// at once is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_through_b_waits_for_a_chunk_uploaded_through_a() {
    let redis = RedisProcess::start().await;
    let dir = tempfile::tempdir().unwrap();
    let n = nodes(&redis.url(), dir.path(), 2, &[]).await;
    let (a, b) = (base(&n[0]), base(&n[1]));
    let (_alice, token) = token_for(&n[0].url, "alice").await;
    let chunk = 64 * KIB;
    let data = pattern(2 * chunk, 21);
    let (s, v) = create(&a, &token, create_body("alice", data.len() as u64, chunk)).await;
    assert_eq!(s, 201, "{v}");
    let t = Transfer::of(&v);

    let waiting = {
        let (b, t) = (b.clone(), t.clone());
        tokio::spawn(async move { get(&b, &t, 1).await })
    };
    // Ordering only (the GET is sent first), no timing asserted.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "the download waits for the chunk");
    let (s, _) = put(&a, &t, 1, chunk_of(&data, chunk, 1)).await;
    assert_eq!(s, 200);
    let (s, bytes) = waiting.await.unwrap();
    assert_eq!(s, 200);
    assert_eq!(bytes, chunk_of(&data, chunk, 1));

    // chunk 0 through both nodes at once, four times each
    let uploads: Vec<_> = (0..8)
        .map(|i| {
            let (node, t, bytes) = (
                if i % 2 == 0 { a.clone() } else { b.clone() },
                t.clone(),
                chunk_of(&data, chunk, 0),
            );
            tokio::spawn(async move { put(&node, &t, 0, bytes).await })
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
    assert_eq!(fresh, 1, "one upload landed it, the others found it there");
    let files = files_under(&dir.path().join("shared").join(&t.id));
    assert_eq!(
        files.len(),
        2,
        "one file per chunk, no temporary file: {files:?}"
    );
    assert_eq!(get(&b, &t, 0).await, (200, chunk_of(&data, chunk, 0)));
}

/// Transfers expire (`--blob-ttl 2`) with three nodes sweeping: every transfer's bytes are
/// deleted, by exactly one node (the nodes' expiry counters add up to the number of
/// transfers), and no deletion is left unfinished in Redis.
#[tokio::test]
async fn expiry_deletes_the_bytes_once_across_nodes() {
    let redis = RedisProcess::start().await;
    let dir = tempfile::tempdir().unwrap();
    let n = nodes(&redis.url(), dir.path(), 3, &["--blob-ttl", "2"]).await;
    let bases: Vec<String> = n.iter().map(base).collect();
    let (_alice, token) = token_for(&n[0].url, "alice").await;
    let chunk = 64 * KIB;
    let mut ids = Vec::new();
    for i in 0..6 {
        let b = &bases[i % 3];
        let (s, v) = create(b, &token, create_body("alice", 2 * chunk, chunk)).await;
        assert_eq!(s, 201, "{v}");
        let t = Transfer::of(&v);
        let (s, _) = put(b, &t, 0, pattern(chunk, i as u8)).await;
        assert_eq!(s, 200);
        ids.push(t.id);
    }
    let shared = dir.path().join("shared");
    let mut gone = false;
    for _ in 0..300 {
        if ids.iter().all(|id| !shared.join(id).exists()) {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "expired transfers' bytes are deleted");
    let mut expired = 0;
    for b in &bases {
        expired += metric(b, "lattice_blob_transfers_expired_total").await;
    }
    assert_eq!(expired, 6, "each transfer expired by exactly one node");
    let left = redis_process::cli(redis.port(), &["ZCARD", "lattice:{blobs}:gone"]).await;
    assert_eq!(left.trim(), "0", "no deletion left unfinished");
    let live = redis_process::cli(redis.port(), &["ZCARD", "lattice:{blobs}:exp"]).await;
    assert_eq!(live.trim(), "0");
}

/// Node A is SIGKILLed while a chunk's body is half sent through it: nothing of that chunk
/// counts, the upload resumes through B from the status (the chunks A stored are there), and
/// the file downloads through B byte for byte.
#[tokio::test]
async fn a_node_killed_mid_upload_the_upload_resumes_through_another_node() {
    let redis = RedisProcess::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut n = nodes(&redis.url(), dir.path(), 2, &[]).await;
    let (a, b) = (base(&n[0]), base(&n[1]));
    let (_alice, token) = token_for(&n[1].url, "alice").await;
    let chunk = 64 * KIB;
    let data = pattern(3 * chunk, 33);
    let (s, v) = create(&a, &token, create_body("alice", data.len() as u64, chunk)).await;
    assert_eq!(s, 201, "{v}");
    let t = Transfer::of(&v);
    let (s, _) = put(&a, &t, 0, chunk_of(&data, chunk, 0)).await;
    assert_eq!(s, 200);

    // chunk 1: headers and half the body through A, then A dies
    let addr = a.trim_start_matches("http://").to_owned();
    let mut raw = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "PUT /blobs/{}/chunks/1 HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Length: {chunk}\r\n\r\n",
        t.id, t.up
    );
    raw.write_all(head.as_bytes()).await.unwrap();
    raw.write_all(&chunk_of(&data, chunk, 1)[..(chunk / 2) as usize])
        .await
        .unwrap();
    raw.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    n.remove(0).kill9();
    drop(raw);

    let (s, st) = status(&b, &t).await;
    assert_eq!(s, 200);
    assert_eq!(
        st["present"],
        json!([0]),
        "the cut chunk does not count: {st}"
    );
    for i in [1, 2] {
        let (s, v) = put(&b, &t, i, chunk_of(&data, chunk, i)).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["alreadyPresent"], false);
    }
    let mut got = Vec::new();
    for i in 0..3 {
        let (s, bytes) = get(&b, &t, i).await;
        assert_eq!(s, 200);
        got.extend_from_slice(&bytes);
    }
    assert_eq!(got, data);
}

/// A node started on a blob directory other than the one the first node recorded (its
/// `volume-id` differs) exits with a clear error instead of serving transfers it cannot read.
#[tokio::test]
async fn a_node_whose_blob_dir_is_not_the_others_refuses_to_start() {
    let redis = RedisProcess::start().await;
    let dir = tempfile::tempdir().unwrap();
    let _first = nodes(&redis.url(), dir.path(), 1, &[]).await;
    let data = dir.path().join("elsewhere");
    std::fs::create_dir_all(&data).unwrap();
    let mut child = std::process::Command::new(server_process::server_bin())
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            "0",
            "--redis",
            &redis.url(),
        ])
        .arg("--data-dir")
        .arg(&data)
        .arg("--blob-dir")
        .arg(data.join("not-shared"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut exited = None;
    for _ in 0..300 {
        if let Some(s) = child.try_wait().unwrap() {
            exited = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let Some(status) = exited else {
        let _ = child.kill();
        panic!("the node kept running");
    };
    assert!(!status.success());
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(err.contains("not shared"), "{err}");
}

/// A node of several without `--blob-dir` keeps no files (its data dir is its own): blob
/// requests get the typed `BLOBS_DISABLED`, and the node serves everything else.
#[tokio::test]
async fn a_node_of_several_without_a_blob_dir_keeps_no_files() {
    let redis = RedisProcess::start().await;
    let dir = tempfile::tempdir().unwrap();
    let node = ServerProcess::start(dir.path(), &["--redis", &redis.url()]).await;
    let (_alice, token) = token_for(&node.url, "alice").await;
    let (s, v) = create(&base(&node), &token, create_body("alice", 10, 10)).await;
    assert_eq!(
        (s, v["errorType"].as_str()),
        (503, Some("BLOBS_DISABLED")),
        "{v}"
    );
    assert!(!dir.path().join("blobs").exists());
}

/// A node claimed a transfer's deletion and died before removing the bytes (its claim is made
/// here directly, with a short lease): a sweep while the lease runs leaves the bytes to the
/// claimer (nothing deleted twice); once it has ended, another node's sweep removes them and
/// finishes the deletion (nothing missed). The transfer's records went with the claim.
#[tokio::test]
async fn a_deletion_left_by_a_killed_node_is_finished_by_another_after_its_lease() {
    let redis = RedisProcess::start().await;
    let url = RedisUrl::parse(&redis.url()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let limits = BlobLimits {
        total: u64::MAX,
        per_sender: u64::MAX,
        max_file: u64::MAX,
        ttl: Duration::from_secs(3600),
    };
    let records = RedisBlobs::new(RedisConn::open(&url).await.unwrap());
    let survivor = SharedStore::open(dir.path(), limits, records.clone())
        .await
        .unwrap();
    let created = survivor
        .create(&CreateRequest {
            sender_id: ClientId::new("alice").unwrap(),
            size: 1,
            chunk_size: 1,
            chunk_count: 1,
            client_ref: None,
            one_recipient: false,
        })
        .await
        .unwrap();
    let id = created.transfer_id.clone();
    let bytes = dir.path().join(&id).join("0");
    std::fs::write(&bytes, b"x").unwrap();

    // the node that dies: it claims the deletion and never removes anything
    let lease = Duration::from_millis(300);
    assert_eq!(
        records.claim_drop(&id, lease).await.unwrap(),
        DropClaim::Dropped
    );
    assert!(matches!(
        survivor.status(&id, &created.upload_capability).await,
        Err(lattice_server::blobs::BlobError::NotFound)
    ));
    assert_eq!(survivor.purge_expired().await, 0);
    assert!(bytes.exists(), "the claimer's lease still runs");

    tokio::time::sleep(lease + Duration::from_millis(200)).await;
    assert_eq!(
        survivor.purge_expired().await,
        0,
        "not an expiry of its own"
    );
    assert!(
        !dir.path().join(&id).exists(),
        "the survivor removed the bytes"
    );
    assert!(
        records.due(16).await.unwrap().is_empty(),
        "nothing left to do"
    );
    assert_eq!(
        records.claim_drop(&id, lease).await.unwrap(),
        DropClaim::NotMine,
        "deleted once"
    );
}
