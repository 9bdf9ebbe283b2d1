//! End-to-end `delivered` (docs/protocol.md, "the delivery contract"): a message to an online
//! verified recipient is answered `delivered` only after the recipient's `ack`; without an ack in
//! time, when the recipient leaves, or past the in-flight bound, it is committed to the mailbox
//! and its sender hears `queued` (or the durable path's answer) exactly once. Real servers on
//! port 0, real WebSocket clients, real SQLite.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/server_process.rs"]
mod server_process;
mod support;

use std::collections::HashSet;
use std::time::Duration;

use lattice_server::limits::IN_FLIGHT_PER_CONNECTION;
use lattice_server::Config;
use serde_json::{json, Value};
use server_process::{log_tail, ServerProcess};
use support::*;

/// A short ack wait, so the spill of unacknowledged messages is quick to reach.
fn short_wait() -> Config {
    Config {
        ack_wait: Duration::from_millis(300),
        ..Config::for_tests()
    }
}

fn message(to: &str, mid: &str, rid: &str, tag: &str) -> Value {
    json!({"type":"message","requestId":rid,"payload":{"targetId":to,"messageId":mid,"message":envelope(tag)}})
}

fn ack(mid: &str, from: Option<&str>) -> Value {
    match from {
        Some(from) => json!({"type":"ack","payload":{"messageId":mid,"fromId":from}}),
        None => json!({"type":"ack","payload":{"messageId":mid}}),
    }
}

/// A round trip: every frame the server wrote to `c` before it answered this is read first
/// (`recv_type` fails on anything but presence in between).
async fn round_trip(c: &mut Client, rid: &str) {
    let d = c
        .request(
            json!({"type":"discover","requestId":rid,"payload":{}}),
            "discover",
        )
        .await;
    assert_eq!(d["requestId"], rid);
}

/// The next `message_ack` or `error` answering `rid`.
async fn answer(c: &mut Client, rid: &str) -> Value {
    let v = c.recv_any(&["message_ack", "error"]).await;
    assert_eq!(v["requestId"], rid, "{v}");
    v
}

#[tokio::test]
async fn delivered_arrives_only_after_the_recipients_ack() {
    let server = spawn_server().await;
    let url = server.url();
    let bob_id = new_identity();
    let mut bob = register_verified(&url, "bob", &bob_id).await;
    let (mut alice, _) = register_unverified(&url, "alice").await;
    alice.send(message("bob", "m1", "r1", "hello")).await;
    let m = bob.recv_type("message").await;
    assert_eq!(m["payload"]["messageId"], "m1");
    // bob has the message but has not acked: alice has no answer yet
    round_trip(&mut alice, "before-ack").await;
    bob.send(ack("m1", Some("alice"))).await;
    let a = answer(&mut alice, "r1").await;
    assert_eq!(a["type"], "message_ack");
    assert_eq!(a["payload"]["status"], "delivered");
    assert_eq!(a["payload"]["messageId"], "m1");
    // answered once: nothing more for alice
    round_trip(&mut alice, "after-ack").await;
    // and nothing waits in bob's mailbox
    drop(bob);
    let mut bob = reconnect_verified(&url, "bob", &bob_id).await;
    round_trip(&mut bob, "empty").await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_recipient_that_never_acks_is_answered_queued_and_its_message_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = ServerProcess::start(&data, &["--ack-wait", "1"]).await;
    let bob_id = new_identity();
    let mut bob = register_verified(&server.url, "bob", &bob_id).await;
    let (mut alice, _) = register_unverified(&server.url, "alice").await;
    alice.send(message("bob", "kept", "r1", "keep me")).await;
    let m = bob.recv_type("message").await;
    assert_eq!(m["payload"]["messageId"], "kept");
    // bob reads but never acks: after the ack wait alice hears `queued`, within the wait bound
    let a = answer(&mut alice, "r1").await;
    assert_eq!(a["payload"]["status"], "queued", "{}", log_tail(&data));
    // kill -9 and restart on the same data dir: the message is delivered to bob's next
    // connection
    server.kill9();
    drop(bob);
    let server = ServerProcess::start(&data, &["--ack-wait", "1"]).await;
    let mut bob = reconnect_verified(&server.url, "bob", &bob_id).await;
    let m = bob.recv_type("message").await;
    assert_eq!(m["payload"]["messageId"], "kept", "{}", log_tail(&data));
    assert_eq!(m["payload"]["fromId"], "alice");
    server.kill9();
}

#[tokio::test]
async fn a_recipient_that_leaves_with_held_messages_has_them_all_spilled() {
    // the default ack wait (3 s): the answers come from the disconnect, not the wait
    let server = spawn_server().await;
    let url = server.url();
    let bob_id = new_identity();
    let mut bob = register_verified(&url, "bob", &bob_id).await;
    let (mut alice, _) = register_unverified(&url, "alice").await;
    let (mut carol, _) = register_unverified(&url, "carol").await;
    for i in 0..5 {
        alice
            .send(message("bob", &format!("a{i}"), &format!("ra{i}"), "x"))
            .await;
        carol
            .send(message("bob", &format!("c{i}"), &format!("rc{i}"), "y"))
            .await;
    }
    let mut got = HashSet::new();
    while got.len() < 10 {
        let m = bob.recv_type("message").await;
        got.insert(m["payload"]["messageId"].as_str().unwrap().to_owned());
    }
    drop(bob);
    for (c, p) in [(&mut alice, "a"), (&mut carol, "c")] {
        for i in 0..5 {
            let a = answer(c, &format!("r{p}{i}")).await;
            assert_eq!(a["payload"]["status"], "queued", "{a}");
        }
        round_trip(c, "once").await;
    }
    let mut bob = reconnect_verified(&url, "bob", &bob_id).await;
    let mut again = HashSet::new();
    while again.len() < 10 {
        let m = bob.recv_type("message").await;
        again.insert(m["payload"]["messageId"].as_str().unwrap().to_owned());
    }
    assert_eq!(again, got, "every held message came back");
    server.shutdown().await;
}

#[tokio::test]
async fn a_sender_that_leaves_before_the_ack_breaks_nothing() {
    let server = spawn_server().await;
    let url = server.url();
    let bob_id = new_identity();
    let mut bob = register_verified(&url, "bob", &bob_id).await;
    let (mut alice, _) = register_unverified(&url, "alice").await;
    alice.send(message("bob", "m1", "r1", "bye")).await;
    let m = bob.recv_type("message").await;
    assert_eq!(m["payload"]["messageId"], "m1");
    drop(alice);
    bob.send(ack("m1", Some("alice"))).await;
    round_trip(&mut bob, "acked").await;
    // alice comes back and resends with the same id (she never heard an answer): it is sent
    // again and answered; bob got it once before and drops the copy by (sender, messageId)
    let (mut alice, _) = register_unverified(&url, "alice").await;
    alice.send(message("bob", "m1", "r1-again", "bye")).await;
    let m = bob.recv_type("message").await;
    assert_eq!(m["payload"]["messageId"], "m1");
    bob.send(ack("m1", Some("alice"))).await;
    let a = answer(&mut alice, "r1-again").await;
    assert_eq!(a["payload"]["status"], "delivered");
    // nothing was left in bob's mailbox: a new connection gets nothing
    drop(bob);
    let mut bob = reconnect_verified(&url, "bob", &bob_id).await;
    round_trip(&mut bob, "empty").await;
    server.shutdown().await;
}

#[tokio::test]
async fn an_ack_without_from_id_that_two_senders_match_completes_neither() {
    let server = spawn_with(short_wait()).await;
    let url = server.url();
    let bob_id = new_identity();
    let mut bob = register_verified(&url, "bob", &bob_id).await;
    let (mut alice, _) = register_unverified(&url, "alice").await;
    let (mut carol, _) = register_unverified(&url, "carol").await;
    alice.send(message("bob", "same", "ra", "from alice")).await;
    carol.send(message("bob", "same", "rc", "from carol")).await;
    for _ in 0..2 {
        bob.recv_type("message").await;
    }
    bob.send(ack("same", None)).await;
    // neither is completed: both are spilled after the wait and hear `queued`
    for (c, rid) in [(&mut alice, "ra"), (&mut carol, "rc")] {
        let a = answer(c, rid).await;
        assert_eq!(a["payload"]["status"], "queued", "{a}");
    }
    // an unambiguous ack without fromId still completes its message
    alice.send(message("bob", "unique", "ru", "only one")).await;
    let m = bob.recv_type("message").await;
    assert_eq!(m["payload"]["messageId"], "unique");
    bob.send(ack("unique", None)).await;
    assert_eq!(
        answer(&mut alice, "ru").await["payload"]["status"],
        "delivered"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_forged_ack_from_a_third_party_completes_nothing() {
    let server = spawn_with(short_wait()).await;
    let url = server.url();
    let bob_id = new_identity();
    let mut bob = register_verified(&url, "bob", &bob_id).await;
    let mut mallory = register_verified(&url, "mallory", &new_identity()).await;
    let (mut alice, _) = register_unverified(&url, "alice").await;
    alice.send(message("bob", "m1", "r1", "for bob")).await;
    bob.recv_type("message").await;
    // mallory acks bob's message, with and without alice's name
    mallory.send(ack("m1", Some("alice"))).await;
    mallory.send(ack("m1", None)).await;
    round_trip(&mut mallory, "forged").await;
    // alice is not told `delivered`: bob never acked, so the message is kept for him
    let a = answer(&mut alice, "r1").await;
    assert_eq!(a["payload"]["status"], "queued", "{a}");
    drop(bob);
    let mut bob = reconnect_verified(&url, "bob", &bob_id).await;
    let m = bob.recv_type("message").await;
    assert_eq!(m["payload"]["messageId"], "m1", "still there for bob");
    server.shutdown().await;
}

#[tokio::test]
async fn past_the_in_flight_bound_messages_take_the_durable_path() {
    // the default ack wait: the held messages are not answered during the test's first part
    let server = spawn_with(Config {
        outbound_queue: IN_FLIGHT_PER_CONNECTION * 2,
        mailbox_sender_quota: 1000,
        ..Config::for_tests()
    })
    .await;
    let url = server.url();
    let bob_id = new_identity();
    let mut bob = register_verified(&url, "bob", &bob_id).await;
    let (mut alice, _) = register_unverified(&url, "alice").await;
    let extra = 10;
    let total = IN_FLIGHT_PER_CONNECTION + extra;
    for i in 0..total {
        alice
            .send(message("bob", &format!("m{i}"), &format!("r{i}"), "z"))
            .await;
    }
    // bob reads everything and acks nothing; the messages past the bound were committed and
    // are answered at once, before any held one
    let mut got = HashSet::new();
    while got.len() < total {
        let m = bob.recv_type("message").await;
        got.insert(m["payload"]["messageId"].as_str().unwrap().to_owned());
    }
    let mut early = Vec::new();
    for _ in 0..extra {
        let a = alice.recv_any(&["message_ack", "error"]).await;
        assert_eq!(a["type"], "message_ack", "{a}");
        assert_eq!(
            a["payload"]["status"], "delivered",
            "committed and handed over"
        );
        early.push(a["payload"]["messageId"].as_str().unwrap().to_owned());
    }
    let expected: Vec<String> = (IN_FLIGHT_PER_CONNECTION..total)
        .map(|i| format!("m{i}"))
        .collect();
    assert_eq!(early, expected);
    // bob leaves: the held ones are spilled and answered `queued`; all come back
    drop(bob);
    for _ in 0..IN_FLIGHT_PER_CONNECTION {
        let a = alice.recv_any(&["message_ack", "error"]).await;
        assert_eq!(a["payload"]["status"], "queued", "{a}");
    }
    let mut bob = reconnect_verified(&url, "bob", &bob_id).await;
    let mut again = HashSet::new();
    while again.len() < total {
        let m = bob.recv_type("message").await;
        again.insert(m["payload"]["messageId"].as_str().unwrap().to_owned());
    }
    assert_eq!(again, got);
    server.shutdown().await;
}

#[tokio::test]
async fn a_graceful_shutdown_commits_what_is_held() {
    let dir = tempfile::tempdir().unwrap();
    let config = |port| Config {
        data_dir: Some(dir.path().to_path_buf()),
        port,
        ..Config::for_tests()
    };
    let server = spawn_with(config(0)).await;
    let port = server.local_addr().port();
    let bob_id = new_identity();
    let mut bob = register_verified(&server.url(), "bob", &bob_id).await;
    let (mut alice, _) = register_unverified(&server.url(), "alice").await;
    alice
        .send(message("bob", "held", "r1", "at shutdown"))
        .await;
    assert_eq!(
        bob.recv_type("message").await["payload"]["messageId"],
        "held"
    );
    // held for bob's ack (3 s) when the server stops: it is committed on the way down
    server.shutdown().await;
    let mut server = None;
    for _ in 0..100 {
        if let Ok(s) = lattice_server::spawn(config(port)).await {
            server = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let server = server.expect("the port binds again");
    let mut bob = register_verified(&server.url(), "bob", &bob_id).await;
    assert_eq!(
        bob.recv_type("message").await["payload"]["messageId"],
        "held"
    );
    server.shutdown().await;
}
