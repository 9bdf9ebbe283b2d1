//! The mailbox under a flood: per-sender and byte quotas count live unacknowledged messages,
//! a refusal is `MAILBOX_FULL` with the `requestId`, and an ack deletes only the named sender's
//! message (an attack from the adversarial review, issue 8, through the public interfaces: a real
//! server on 127.0.0.1:0, real WebSocket clients, real HTTP; each test performs the attack and
//! asserts what the attacker and the victims see).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashSet;
use std::time::Duration;

use lattice_server::Config;
use serde_json::json;
use support::*;

// ---------------------------------------------------------------------------------------------
// 1. Mailbox exhaustion

/// Attack: an unverified sender floods a verified peer that is online but never acknowledges
/// (the review's 2,500 × 30 KB messages). Asserts: the sender gets `MAILBOX_FULL` with its
/// `requestId` once its share is used (never a `message_ack` for a message the server cannot
/// keep); an honest sender still gets through; and when the victim reconnects, every message
/// that was acknowledged to a sender comes back, and nothing beyond the quota was kept.
#[tokio::test]
async fn a_flood_at_a_peer_that_never_acks_is_refused_per_sender_and_nothing_acked_is_lost() {
    // a short ack wait: bob never acks, so each message is committed (or refused) after it
    let server = spawn_with(Config {
        mailbox_quota: 40,
        mailbox_sender_quota: 10,
        ack_wait: std::time::Duration::from_millis(200),
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
