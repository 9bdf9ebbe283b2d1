//! Discovery and presence at scale: a `discover` answer stays under the frame limit and pages,
//! and a storm of presence notices never takes a message's place (an attack from the adversarial review, issue 8, through the public interfaces: a real
//! server on 127.0.0.1:0, real WebSocket clients, real HTTP; each test performs the attack and
//! asserts what the attacker and the victims see).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashSet;

use lattice_protocol::limits::{MAX_DISCOVER_ANSWER_BYTES, MAX_DISCOVER_PEERS, MAX_ID_LEN};
use lattice_server::Config;
use serde_json::{json, Value};
use support::*;
use tokio_tungstenite::tungstenite::Message;

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
