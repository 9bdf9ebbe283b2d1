//! Store-and-forward: messages for offline verified peers are queued durably, survive a restart,
//! and are delivered until acknowledged; nothing accepted is lost when a connection or the server
//! goes away.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use lattice_server::Config;
use serde_json::json;
use support::*;

fn persistent(dir: &std::path::Path, port: u16) -> Config {
    Config {
        data_dir: Some(dir.to_path_buf()),
        port,
        ..Config::for_tests()
    }
}

/// Binds the same port again (the old listener may take a moment to be released).
async fn respawn(dir: &std::path::Path, port: u16) -> lattice_server::ServerHandle {
    for _ in 0..100 {
        if let Ok(s) = lattice_server::spawn(persistent(dir, port)).await {
            return s;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("could not bind port {port} again");
}

#[tokio::test]
async fn offline_messages_survive_a_restart_and_are_redelivered_until_acked() {
    let dir = tempfile::tempdir().unwrap();
    let server = spawn_with(persistent(dir.path(), 0)).await;
    let port = server.local_addr().port();
    let url = server.url();
    let bob_id = new_identity();
    // bob registers once (binding his id), then goes offline
    let bob = register_verified(&url, "bob", &bob_id).await;
    drop(bob);
    let (mut alice, _) = register_unverified(&url, "alice").await;
    // wait until the server has seen bob leave: a message is then queued, not delivered
    let mut queued = 0;
    for i in 0..100 {
        alice.send(json!({"type":"message","payload":{"targetId":"bob","message":envelope(&format!("p{i}")),"messageId":format!("probe-{i}")}})).await;
        let ack = alice.recv_type("message_ack").await;
        if ack["payload"]["status"] == "queued" {
            queued = i;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    for i in 0..3 {
        alice.send(json!({"type":"message","payload":{"targetId":"bob","message":envelope(&format!("m{i}")),"messageId":format!("m-{i}")}})).await;
        let ack = alice.recv_type("message_ack").await;
        assert_eq!(ack["payload"]["status"], "queued");
    }
    // an original client's message without an id is queued too (the server assigns one)
    alice
        .send(json!({"type":"message","payload":{"targetId":"bob","message":envelope("noid")}}))
        .await;
    // no ack for an id-less message: a round trip proves it was handled
    alice
        .request(json!({"type":"discover","payload":{}}), "discover")
        .await;
    drop(alice);
    server.shutdown().await;

    // restart on the same port with the same data
    let server = respawn(dir.path(), port).await;
    let mut bob = register_verified(&server.url(), "bob", &bob_id).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        let m = bob.recv_type("message").await;
        assert_eq!(m["payload"]["fromId"], "alice");
        ids.push(m["payload"]["messageId"].as_str().unwrap().to_owned());
    }
    assert_eq!(&ids[0], &format!("probe-{queued}"));
    assert_eq!(&ids[1..4], ["m-0", "m-1", "m-2"]);
    assert!(ids[4].starts_with("srv-"));
    // ack two of them, then reconnect: only the others come again
    for id in &ids[..2] {
        bob.send(json!({"type":"ack","payload":{"messageId":id}}))
            .await;
    }
    // a round trip proves the acks were processed
    bob.request(json!({"type":"discover","payload":{}}), "discover")
        .await;
    drop(bob);
    let mut bob = reconnect_verified(&server.url(), "bob", &bob_id).await;
    let mut again = Vec::new();
    for _ in 0..3 {
        again.push(
            bob.recv_type("message").await["payload"]["messageId"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(again, ids[2..].to_vec());
    server.shutdown().await;
}

#[tokio::test]
async fn unacked_live_messages_return_to_the_mailbox_when_the_connection_drops() {
    let server = spawn_server().await;
    let url = server.url();
    let bob_id = new_identity();
    let mut bob = register_verified(&url, "bob", &bob_id).await;
    let (mut alice, _) = register_unverified(&url, "alice").await;
    alice.send(json!({"type":"message","payload":{"targetId":"bob","message":envelope("live"),"messageId":"live-1"}})).await;
    let m = bob.recv_type("message").await;
    assert_eq!(m["payload"]["messageId"], "live-1");
    // bob crashes before acking: the message is committed to his mailbox, and only then does
    // alice hear `queued` (never `delivered`: bob did not ack)
    drop(bob);
    assert_eq!(
        alice.recv_type("message_ack").await["payload"]["status"],
        "queued"
    );
    let mut bob = reconnect_verified(&url, "bob", &bob_id).await;
    let m = bob.recv_type("message").await;
    assert_eq!(
        m["payload"]["messageId"], "live-1",
        "redelivered after the drop"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn graceful_shutdown_closes_with_a_reason_and_keeps_unacked_mail() {
    let dir = tempfile::tempdir().unwrap();
    let server = spawn_with(persistent(dir.path(), 0)).await;
    let port = server.local_addr().port();
    let bob_id = new_identity();
    let mut bob = register_verified(&server.url(), "bob", &bob_id).await;
    let (mut alice, _) = register_unverified(&server.url(), "alice").await;
    alice.send(json!({"type":"message","payload":{"targetId":"bob","message":envelope("x"),"messageId":"before-stop"}})).await;
    alice.recv_type("message_ack").await;
    bob.recv_type("message").await;
    server.shutdown().await;
    let close = bob.recv_close().await.expect("close frame");
    assert_eq!(u16::from(close.code), 1001);
    assert_eq!(close.reason.as_str(), "server shutting down");

    let server = respawn(dir.path(), port).await;
    let mut bob = register_verified(&server.url(), "bob", &bob_id).await;
    assert_eq!(
        bob.recv_type("message").await["payload"]["messageId"],
        "before-stop"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn mailbox_quota_is_enforced() {
    let server = spawn_with(Config {
        mailbox_quota: 2,
        ..Config::for_tests()
    })
    .await;
    let url = server.url();
    drop(register_verified(&url, "bob", &new_identity()).await);
    let (mut alice, _) = register_unverified(&url, "alice").await;
    let mut statuses = Vec::new();
    for i in 0..40 {
        alice.send(json!({"type":"message","payload":{"targetId":"bob","message":envelope("q"),"messageId":format!("q{i}")}})).await;
        let v = alice.recv().await;
        if v["type"] == "error" {
            assert_eq!(v["payload"]["errorType"], "MAILBOX_FULL");
            statuses.push("full".to_owned());
            break;
        }
        statuses.push(v["payload"]["status"].as_str().unwrap().to_owned());
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(statuses.iter().filter(|s| *s == "queued").count(), 2);
    assert_eq!(statuses.last().unwrap(), "full");
    server.shutdown().await;
}

#[tokio::test]
async fn a_peer_that_never_acks_loses_nothing_and_then_hits_its_quota() {
    // one sender may fill the whole quota here: this test is about the absence of a window (the
    // old server remembered only 512 unacknowledged live messages), not about fairness
    let server = spawn_with(Config {
        mailbox_quota: 2000,
        mailbox_sender_quota: 2000,
        mailbox_bytes: 64 * 1024 * 1024,
        ..Config::for_tests()
    })
    .await;
    let url = server.url();
    let bob_id = new_identity();
    let mut bob = register_verified(&url, "bob", &bob_id).await;
    let (mut alice, _) = register_unverified(&url, "alice").await;
    let total = std::env::var("T")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(700);
    for i in 0..total {
        alice.send(json!({"type":"message","payload":{"targetId":"bob","message":envelope("w"),"messageId":format!("w-{i}")}})).await;
    }
    for _ in 0..total {
        alice.recv_type("message_ack").await;
    }
    for _ in 0..total {
        bob.recv_type("message").await;
    }
    // bob read everything but acked nothing, then his connection drops
    drop(bob);
    let mut bob = reconnect_verified(&url, "bob", &bob_id).await;
    let mut seen = std::collections::HashSet::new();
    while seen.len() < total {
        let m = bob.recv_type("message").await;
        seen.insert(m["payload"]["messageId"].as_str().unwrap().to_owned());
    }
    assert!(
        (0..total).all(|i| seen.contains(&format!("w-{i}"))),
        "every unacknowledged message came back"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_live_recipient_that_never_acks_is_bounded_by_its_quota_with_mailbox_full() {
    // a short ack wait: each unacknowledged message is committed (or refused) soon
    let server = spawn_with(Config {
        mailbox_quota: 20,
        mailbox_sender_quota: 20,
        ack_wait: std::time::Duration::from_millis(200),
        ..Config::for_tests()
    })
    .await;
    let url = server.url();
    let bob_id = new_identity();
    let mut bob = register_verified(&url, "bob", &bob_id).await;
    let (mut alice, _) = register_unverified(&url, "alice").await;
    let mut delivered = 0;
    let mut refused = None;
    for i in 0..30 {
        alice.send(json!({"type":"message","payload":{"targetId":"bob","message":envelope("n"),"messageId":format!("n-{i}")},"requestId":format!("r-{i}")})).await;
        let v = alice.recv_any(&["message_ack", "error"]).await;
        if v["type"] == "error" {
            assert_eq!(v["payload"]["errorType"], "MAILBOX_FULL");
            assert_eq!(v["requestId"], format!("r-{i}"));
            refused = Some(i);
            break;
        }
        assert_eq!(
            v["payload"]["status"], "queued",
            "bob is online and reading but never acks: kept in his mailbox"
        );
        delivered += 1;
    }
    assert_eq!(delivered, 20, "accepted exactly up to the quota");
    assert_eq!(
        refused,
        Some(20),
        "then refused with a typed error, nothing silent"
    );
    // bob's ack frees room for one more
    let m = bob.recv_type("message").await;
    bob.send(
        json!({"type":"ack","payload":{"messageId":m["payload"]["messageId"],"fromId":"alice"}}),
    )
    .await;
    let mut accepted = false;
    for i in 0..50 {
        alice.send(json!({"type":"message","payload":{"targetId":"bob","message":envelope("n"),"messageId":format!("again-{i}")}})).await;
        let v = alice.recv_any(&["message_ack", "error"]).await;
        if v["type"] == "message_ack" {
            accepted = true;
            break;
        }
        // the ack may not be handled yet: bounded retries, no timing assumption
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(accepted, "an acknowledged message gives its room back");
    server.shutdown().await;
}
