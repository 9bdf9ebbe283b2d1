//! Attack tests from the adversarial review (issue 8), each through the public interfaces: a real
//! server on 127.0.0.1:0, real WebSocket clients, real HTTP. Every test performs the attack and
//! asserts what the attacker and the victims see.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashSet;
use std::time::Duration;

use lattice_protocol::limits::{MAX_DISCOVER_ANSWER_BYTES, MAX_DISCOVER_PEERS, MAX_ID_LEN};
use lattice_server::config::TEST_ADMIN_TOKEN;
use lattice_server::Config;
use serde_json::{json, Value};
use support::*;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::Message;

/// A register frame for `id` with an already-encoded ML-KEM key (unverified, original style).
fn unverified_register(id: &str, key: &Value) -> Value {
    json!({"type":"register","payload":{"clientId":id,"publicKey":key,
        "verification":{"algorithm":"ml-dsa","serializedPublicKey":"AA==","serializedMessage":"AA==","serializedSignedData":"AA=="}}})
}

/// Reads until a `message_ack` or `error` answering `rid`, skipping presence.
async fn answer_to(c: &mut Client, rid: &str) -> Value {
    loop {
        let v = c.recv().await;
        if v["requestId"] == rid {
            return v;
        }
        let t = v["type"].as_str().unwrap_or_default();
        assert!(
            t == "peer_connected" || t == "peer_disconnected" || t == "message",
            "unexpected {v}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Mailbox exhaustion

/// Attack: an unverified sender floods a verified peer that is online but never acknowledges
/// (the review's 2,500 × 30 KB messages). Asserts: the sender gets `MAILBOX_FULL` with its
/// `requestId` once its share is used (never a `message_ack` for a message the server cannot
/// keep); an honest sender still gets through; and when the victim reconnects, every message
/// that was acknowledged to a sender comes back, and nothing beyond the quota was kept.
#[tokio::test]
async fn a_flood_at_a_peer_that_never_acks_is_refused_per_sender_and_nothing_acked_is_lost() {
    let server = spawn_with(Config {
        mailbox_quota: 40,
        mailbox_sender_quota: 10,
        ..Config::for_tests()
    })
    .await;
    let url = server.url();
    let bob_id = new_identity();
    let mut bob = register_verified(&url, "bob", &bob_id).await;
    let (mut mallory, _) = register_unverified(&url, "mallory").await;
    let (mut alice, _) = register_unverified(&url, "alice").await;

    let mut accepted = HashSet::new();
    let mut refused = 0;
    for i in 0..30 {
        let rid = format!("f{i}");
        mallory
            .send(
                json!({"type":"message","requestId":rid,"payload":{"targetId":"bob",
            "messageId":format!("flood-{i}"),"message":envelope("x")}}),
            )
            .await;
        let v = answer_to(&mut mallory, &rid).await;
        match v["type"].as_str().unwrap() {
            "message_ack" => {
                accepted.insert(format!("flood-{i}"));
            }
            "error" => {
                assert_eq!(v["payload"]["errorType"], "MAILBOX_FULL", "{v}");
                assert_eq!(v["payload"]["requestId"], rid.as_str());
                refused += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(accepted.len(), 10, "the sender's share, no more");
    assert_eq!(refused, 20);
    // an honest sender still has room
    for i in 0..5 {
        let rid = format!("a{i}");
        alice
            .send(
                json!({"type":"message","requestId":rid,"payload":{"targetId":"bob",
            "messageId":format!("honest-{i}"),"message":envelope("hi")}}),
            )
            .await;
        let v = answer_to(&mut alice, &rid).await;
        assert_eq!(v["type"], "message_ack", "{v}");
        accepted.insert(format!("honest-{i}"));
    }
    // bob read them all live but acked none; then his connection drops
    let mut live = HashSet::new();
    while live.len() < accepted.len() {
        let m = bob.recv_type("message").await;
        live.insert(m["payload"]["messageId"].as_str().unwrap().to_owned());
    }
    drop(bob);
    let mut bob = reconnect_verified(&url, "bob", &bob_id).await;
    let mut back = HashSet::new();
    while back.len() < accepted.len() {
        let m = bob.recv_type("message").await;
        back.insert(m["payload"]["messageId"].as_str().unwrap().to_owned());
    }
    assert_eq!(back, accepted, "every acknowledged message came back");
    // and nothing else is waiting: a round trip, then no further message
    let d = bob
        .request(
            json!({"type":"discover","payload":{},"requestId":"end"}),
            "discover",
        )
        .await;
    assert_eq!(d["requestId"], "end");
    server.shutdown().await;
}

/// Attack: large messages (30 KB each) to a peer that never acks, from one sender that may use
/// the whole count quota. Asserts: the byte quota refuses with `MAILBOX_FULL` before the disk
/// fills, and every acknowledged message survives a reconnect.
#[tokio::test]
async fn the_byte_quota_counts_live_unacknowledged_messages() {
    let server = spawn_with(Config {
        mailbox_quota: 1000,
        mailbox_sender_quota: 1000,
        mailbox_bytes: 300_000,
        ..Config::for_tests()
    })
    .await;
    let url = server.url();
    let bob_id = new_identity();
    let mut bob = register_verified(&url, "bob", &bob_id).await;
    let (mut mallory, _) = register_unverified(&url, "mallory").await;
    let big = "A".repeat(30_000);
    let mut accepted = HashSet::new();
    let mut refused = false;
    for i in 0..20 {
        let rid = format!("b{i}");
        mallory.send(json!({"type":"message","requestId":rid,"payload":{"targetId":"bob",
            "messageId":format!("big-{i}"),"message":{"algorithm":"lattice-v1","serializedCipherText":big,"serializedEncryptedData":"AA=="}}})).await;
        let v = answer_to(&mut mallory, &rid).await;
        if v["type"] == "error" {
            assert_eq!(v["payload"]["errorType"], "MAILBOX_FULL", "{v}");
            refused = true;
            break;
        }
        accepted.insert(format!("big-{i}"));
    }
    assert!(refused, "the byte quota refused");
    assert!(
        accepted.len() < 10,
        "about 300 KB, not {} messages",
        accepted.len()
    );
    for _ in 0..accepted.len() {
        bob.recv_type("message").await;
    }
    drop(bob);
    let mut bob = reconnect_verified(&url, "bob", &bob_id).await;
    let mut back = HashSet::new();
    while back.len() < accepted.len() {
        let m = bob.recv_type("message").await;
        back.insert(m["payload"]["messageId"].as_str().unwrap().to_owned());
    }
    assert_eq!(back, accepted);
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 2. discover and registrations per address

/// Attack: more registrations with the longest ids than one `discover` answer may list (the
/// review's 4,300 × 64-character ids made a 288 KB answer). Asserts: a plain `discover` (what an
/// original client sends) gets a valid answer of the original shape with the first
/// `MAX_DISCOVER_PEERS` ids, under `MAX_DISCOVER_ANSWER_BYTES`, plus `more`/`cursor`; paging with
/// the cursor lists every id exactly once.
#[tokio::test]
async fn discover_stays_under_the_frame_limit_with_many_long_ids_and_pages() {
    let server = spawn_server().await;
    let url = server.url();
    let key = json!(kem_key(&new_identity()));
    let total = MAX_DISCOVER_PEERS + 60;
    let mut clients = Vec::with_capacity(total);
    let mut ids = HashSet::new();
    for i in 0..total {
        let id = format!("{i:05}{}", "x".repeat(MAX_ID_LEN - 5));
        let mut c = Client::connect(&url).await;
        c.send(unverified_register(&id, &key)).await;
        let r = c.recv_type("register").await;
        assert_eq!(r["payload"]["success"], true, "{r}");
        ids.insert(id);
        clients.push(c);
    }
    let asker = clients.last_mut().unwrap();
    asker.send_text(r#"{"type":"discover","payload":{}}"#).await;
    let raw = loop {
        let msg = tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut asker.ws))
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Message::Text(t) = msg {
            if t.starts_with(r#"{"type":"discover""#) {
                break t.to_string();
            }
        }
    };
    assert!(
        raw.len() <= MAX_DISCOVER_ANSWER_BYTES,
        "{} bytes > {MAX_DISCOVER_ANSWER_BYTES}",
        raw.len()
    );
    let first: Value = serde_json::from_str(&raw).unwrap();
    let page = first["payload"]["peers"].as_array().unwrap();
    assert_eq!(page.len(), MAX_DISCOVER_PEERS);
    assert_eq!(first["payload"]["more"], true);
    let mut seen: Vec<String> = page
        .iter()
        .map(|p| p.as_str().unwrap().to_owned())
        .collect();
    let mut cursor = first["payload"]["cursor"].clone();
    assert_eq!(cursor.as_str(), seen.last().map(String::as_str));
    for _ in 0..10 {
        if cursor.is_null() {
            break;
        }
        let next = asker
            .request(
                json!({"type":"discover","payload":{"cursor":cursor},"requestId":"page"}),
                "discover",
            )
            .await;
        assert!(next.to_string().len() <= MAX_DISCOVER_ANSWER_BYTES);
        seen.extend(
            next["payload"]["peers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_str().unwrap().to_owned()),
        );
        cursor = next["payload"]["cursor"].clone();
    }
    assert!(cursor.is_null(), "the last page says there is no more");
    assert_eq!(seen.len(), total, "no id twice");
    assert_eq!(seen.into_iter().collect::<HashSet<_>>(), ids);
    drop(clients);
    server.shutdown().await;
}

/// Attack: one address registers more ids than allowed. Asserts: the extra registration gets
/// `TOO_MANY_REGISTRATIONS` with its `requestId`; once one of that address's connections closes,
/// a registration succeeds again.
#[tokio::test]
async fn registrations_per_address_are_limited() {
    let server = spawn_with(Config {
        max_registrations_per_ip: 3,
        limit_loopback: true,
        ..Config::for_tests()
    })
    .await;
    let url = server.url();
    let mut held = Vec::new();
    for i in 0..3 {
        held.push(register_unverified(&url, &format!("p{i}")).await.0);
    }
    let key = json!(kem_key(&new_identity()));
    let mut extra = Client::connect(&url).await;
    let mut frame = unverified_register("p3", &key);
    frame["requestId"] = json!("reg-3");
    extra.send(frame.clone()).await;
    let e = extra.recv_type("error").await;
    assert_eq!(e["payload"]["errorType"], "TOO_MANY_REGISTRATIONS", "{e}");
    assert_eq!(e["requestId"], "reg-3");
    // one slot freed (the server notices the close asynchronously: bounded retries)
    drop(held.pop());
    let mut ok = false;
    for _ in 0..100 {
        extra.send(frame.clone()).await;
        let v = extra.recv().await;
        if v["type"] == "register" {
            ok = true;
            break;
        }
        assert_eq!(v["payload"]["errorType"], "TOO_MANY_REGISTRATIONS");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok, "a freed slot can be used again");
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 3. Origin check

/// Attack: a web page (any site the user visits) opens a WebSocket to the server. Asserts: an
/// upgrade with a foreign `Origin` is refused with HTTP 403; one without `Origin` (native
/// clients) and one from an allow-listed origin are accepted and can register.
#[tokio::test]
async fn browser_origins_are_refused_unless_allow_listed() {
    let server = spawn_with(Config {
        allow_origin: vec!["https://chat.example.org".into()],
        ..Config::for_tests()
    })
    .await;
    let url = server.url();
    let with_origin = |origin: &str| {
        let mut req = url.as_str().into_client_request().unwrap();
        req.headers_mut().insert("Origin", origin.parse().unwrap());
        req
    };
    for evil in ["https://evil.example", "http://localhost:3005", "null"] {
        match tokio_tungstenite::connect_async(with_origin(evil)).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                assert_eq!(r.status().as_u16(), 403, "{evil}");
            }
            other => panic!("{evil}: expected HTTP 403, got {other:?}"),
        }
    }
    // native: no Origin
    let (mut native, _) = register_unverified(&url, "native").await;
    // allow-listed
    let (ws, _) = tokio_tungstenite::connect_async(with_origin("https://chat.example.org"))
        .await
        .expect("an allow-listed origin is accepted");
    let mut web = Client { ws };
    let key = json!(kem_key(&new_identity()));
    web.send(unverified_register("web", &key)).await;
    assert_eq!(web.recv_type("register").await["payload"]["success"], true);
    let d = native
        .request(json!({"type":"discover","payload":{}}), "discover")
        .await;
    assert_eq!(d["payload"]["peers"], json!(["native", "web"]));
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 4. File modes

#[cfg(unix)]
fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Attack: another local user reads the server's database (bindings and sealed mail). Asserts:
/// the data directory is created 0700 and the database, `-wal` and `-shm` 0600; a start after
/// someone loosened them puts them back.
#[cfg(unix)]
#[tokio::test]
async fn the_data_directory_and_database_are_private_and_fixed_on_start() {
    use std::os::unix::fs::PermissionsExt as _;
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("data");
    let config = || Config {
        data_dir: Some(dir.clone()),
        ..Config::for_tests()
    };
    let db = dir.join("lattice-server.sqlite3");
    let wal = dir.join("lattice-server.sqlite3-wal");
    let shm = dir.join("lattice-server.sqlite3-shm");
    let check = || {
        assert_eq!(mode(&dir), 0o700, "data directory");
        for f in [&db, &wal, &shm] {
            if f.exists() {
                assert_eq!(mode(f), 0o600, "{}", f.display());
            }
        }
        assert!(db.exists());
    };

    let server = spawn_with(config()).await;
    // write something (a binding) so the WAL exists
    let _bob = register_verified(&server.url(), "bob", &new_identity()).await;
    assert!(wal.exists() && shm.exists());
    check();
    server.shutdown().await;

    for f in [&db, &wal, &shm] {
        if f.exists() {
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let server = spawn_with(config()).await;
    check();
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 5. Acks name the sender

/// Attack: mallory reuses the message id of alice's waiting message, or bob acks an id that two
/// senders used. Asserts: an `ack` with `fromId` removes only that sender's message, and an ack
/// without `fromId` for an id two senders used removes nothing; the other message is still
/// delivered on the next registration.
#[tokio::test]
async fn an_ack_removes_only_the_named_senders_message() {
    let server = spawn_server().await;
    let url = server.url();
    let bob_id = new_identity();
    drop(register_verified(&url, "bob", &bob_id).await);
    let (mut alice, _) = register_unverified(&url, "alice").await;
    let (mut mallory, _) = register_unverified(&url, "mallory").await;
    // wait until the server noticed bob left: then messages are queued (bounded retries)
    for (c, tag) in [(&mut alice, "a"), (&mut mallory, "m")] {
        let mut queued = false;
        for i in 0..100 {
            let rid = format!("{tag}{i}");
            c.send(
                json!({"type":"message","requestId":rid,"payload":{"targetId":"bob",
                "messageId":"same-id","message":envelope(tag)}}),
            )
            .await;
            if answer_to(c, &rid).await["payload"]["status"] == "queued" {
                queued = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(queued);
    }
    let mut bob = reconnect_verified(&url, "bob", &bob_id).await;
    let mut from = HashSet::new();
    while !(from.contains("alice") && from.contains("mallory")) {
        let m = bob.recv_type("message").await;
        assert_eq!(m["payload"]["messageId"], "same-id");
        from.insert(m["payload"]["fromId"].as_str().unwrap().to_owned());
    }
    // ambiguous: removes nothing
    bob.send(json!({"type":"ack","payload":{"messageId":"same-id"}}))
        .await;
    // named: removes mallory's only
    bob.send(json!({"type":"ack","payload":{"messageId":"same-id","fromId":"mallory"}}))
        .await;
    bob.request(json!({"type":"discover","payload":{}}), "discover")
        .await;
    drop(bob);
    let mut bob = reconnect_verified(&url, "bob", &bob_id).await;
    let m = bob.recv_type("message").await;
    assert_eq!(m["payload"]["fromId"], "alice", "alice's message survived");
    bob.send(json!({"type":"ack","payload":{"messageId":"same-id","fromId":"alice"}}))
        .await;
    bob.request(json!({"type":"discover","payload":{}}), "discover")
        .await;
    drop(bob);
    let mut bob = reconnect_verified(&url, "bob", &bob_id).await;
    let d = bob
        .request(
            json!({"type":"discover","payload":{},"requestId":"d"}),
            "discover",
        )
        .await;
    assert_eq!(
        d["requestId"], "d",
        "nothing else was waiting before the answer"
    );
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 6b. Presence never takes a message's place

/// Attack: a storm of register/disconnect cycles with long ids (the review's 12,000) while a
/// subscribed peer is slow to read (a small socket buffer it does not drain, so its connection
/// backs up, as a phone on a bad link does). Asserts: a message from a quiet peer to it is still
/// accepted (`delivered`, never `MAILBOX_FULL`), and arrives once it reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_presence_storm_never_takes_a_messages_place() {
    let server = spawn_with(Config {
        outbound_queue: 8,
        ..Config::for_tests()
    })
    .await;
    let url = server.url();
    let (mut alice, _) = register_unverified(&url, "alice").await;
    // bob: a tiny receive buffer, so the server's writes to him block once he stops reading
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(2048).unwrap();
    let stream = socket.connect(server.local_addr()).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(
        url.as_str(),
        tokio_tungstenite::MaybeTlsStream::Plain(stream),
    )
    .await
    .unwrap();
    let mut bob = Client { ws };
    let key = json!(kem_key(&new_identity()));
    bob.send(unverified_register("bob", &key)).await;
    bob.recv_type("register").await;
    bob.request(json!({"type":"discover","payload":{}}), "discover")
        .await;
    // bob asks for more than the socket buffers hold (1500 keys of ~4.5 KB) and reads nothing:
    // his connection backs up and the server's writes to him wait
    for _ in 0..1500 {
        bob.send(json!({"type":"request_public_key","payload":{"targetId":"alice"}}))
            .await;
    }
    // the storm
    let storm: Vec<_> = (0..4)
        .map(|t| {
            let url = url.clone();
            let key = key.clone();
            tokio::spawn(async move {
                for i in 0..60 {
                    let id = format!("storm-{t}-{i:04}-{}", "s".repeat(40));
                    let mut c = Client::connect(&url).await;
                    c.send(unverified_register(&id, &key)).await;
                    c.recv_type("register").await;
                    let _ = c.ws.close(None).await;
                }
            })
        })
        .collect();
    for s in storm {
        s.await.unwrap();
    }
    // a quiet peer writes to bob while his connection is backed up with presence
    for i in 0..3 {
        let rid = format!("q{i}");
        alice
            .send(
                json!({"type":"message","requestId":rid,"payload":{"targetId":"bob",
            "messageId":format!("quiet-{i}"),"message":envelope("hello")}}),
            )
            .await;
        let v = answer_to(&mut alice, &rid).await;
        assert_eq!(
            v["type"], "message_ack",
            "presence took the message's place: {v}"
        );
        assert_eq!(v["payload"]["status"], "delivered");
    }
    let mut got = HashSet::new();
    for _ in 0..50_000 {
        if got.len() == 3 {
            break;
        }
        let v = bob.recv().await;
        if v["type"] == "message" {
            got.insert(v["payload"]["messageId"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(got.len(), 3, "every message arrived");
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 7. Admin token and demo conversations

/// Attack: an operator sets a guessable admin token. Asserts: the server refuses to start with a
/// clear error.
#[tokio::test]
async fn a_short_admin_token_is_refused_at_start() {
    let err = lattice_server::spawn(Config {
        admin_token: Some("hunter2-hunter2".into()),
        ..Config::for_tests()
    })
    .await
    .unwrap_err();
    assert!(err.to_string().contains("at least 32 characters"), "{err}");
}

/// `--admin-token-file`: generated once (0600), then read back; the API accepts that token.
#[tokio::test]
async fn an_admin_token_file_is_generated_privately_and_used() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("admin-token");
    let config = || Config {
        admin_token: None,
        admin_token_file: Some(file.clone()),
        ..Config::for_tests()
    };
    let server = spawn_with(config()).await;
    let token = std::fs::read_to_string(&file).unwrap().trim().to_owned();
    assert!(token.len() >= 32);
    #[cfg(unix)]
    assert_eq!(mode(&file), 0o600);
    let status = |server: &lattice_server::ServerHandle, token: String| {
        let url = format!("{}/admin/peers", server.admin_url());
        async move {
            reqwest::Client::new()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(status(&server, token.clone()).await, 200);
    server.shutdown().await;
    // a restart reads the same token
    let server = spawn_with(config()).await;
    assert_eq!(status(&server, token).await, 200);
    server.shutdown().await;
}

/// Attack: guessing the admin token online. Asserts: after the free failures, the source gets
/// 429 with `Retry-After`, even with the right token, instead of another guess.
#[tokio::test]
async fn failed_admin_logins_back_off_with_429() {
    let server = spawn_server().await;
    let url = format!("{}/admin/peers", server.admin_url());
    let http = reqwest::Client::new();
    let get = |token: &str| http.get(&url).bearer_auth(token).send();
    let mut statuses = Vec::new();
    for i in 0..(lattice_server::limits::ADMIN_FREE_FAILURES + 1) {
        statuses.push(get(&format!("guess-{i}")).await.unwrap().status().as_u16());
    }
    assert!(statuses.iter().all(|s| *s == 401), "{statuses:?}");
    let r = get(TEST_ADMIN_TOKEN).await.unwrap();
    assert_eq!(
        r.status().as_u16(),
        429,
        "backing off, even for the right token"
    );
    assert!(r.headers().contains_key("retry-after"));
    server.shutdown().await;
}

/// Attack: a client opens demo conversations as fast as it can. Asserts: beyond
/// `MAX_OPEN_DEMOS_PER_PEER` open at once it gets `RATE_LIMITED` with its `requestId`.
#[tokio::test]
async fn demo_conversations_are_bounded_per_peer() {
    let server = spawn_server().await;
    let (mut c, _) = register_unverified(&server.url(), "curious").await;
    for i in 0..lattice_server::limits::MAX_OPEN_DEMOS_PER_PEER {
        let q = c
            .request(
                json!({"type":"debug_question","payload":{},"requestId":format!("d{i}")}),
                "server_question",
            )
            .await;
        assert_eq!(q["requestId"], format!("d{i}"));
    }
    c.send(json!({"type":"debug_question","payload":{},"requestId":"one-too-many"}))
        .await;
    let e = c.recv_type("error").await;
    assert_eq!(e["payload"]["errorType"], "RATE_LIMITED", "{e}");
    assert_eq!(e["requestId"], "one-too-many");
    server.shutdown().await;
}
