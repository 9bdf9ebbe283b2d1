//! Link relays (`register` with `linkRelay`, docs/protocol.md "Link relays"): the throwaway id a
//! new device links from is never listed (`discover`, `peer_connected`/`peer_disconnected`,
//! `request_public_key` for others), sends only `lattice-link` envelopes to one id, at most
//! `MAX_LINK_RELAY_MESSAGES`, and is closed after `--link-relay-ttl`; on one node (an in-process
//! server on 127.0.0.1:0) and across two `lattice-server` processes on one real `redis-server`.
//! Each test does what a relay (or a curious third client) would and asserts what everyone sees.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/redis_process.rs"]
mod redis_process;
#[allow(dead_code)] // Shared with the crash tests, which use all of it.
#[path = "support/server_process.rs"]
mod server_process;
mod support;

use std::time::Duration;

use lattice_protocol::close_code;
use lattice_protocol::limits::MAX_LINK_RELAY_MESSAGES;
use lattice_server::Config;
use redis_process::RedisProcess;
use serde_json::{json, Value};
use server_process::ServerProcess;
use support::*;

/// The `register` of link relay `id`.
fn relay_register(id: &str) -> Value {
    let key = kem_key(&new_identity());
    json!({"type":"register","requestId":"reg","payload":{"clientId":id,"publicKey":key,"linkRelay":true}})
}

/// Registers link relay `id` on `url`.
async fn relay(url: &str, id: &str) -> Client {
    let mut c = Client::connect(url).await;
    c.send(relay_register(id)).await;
    let r = c.recv_type("register").await;
    assert_eq!(
        r["payload"],
        json!({"success": true, "clientId": id, "verified": false}),
        "{r}"
    );
    c
}

/// A linking envelope (the server reads only its `algorithm`).
fn link_envelope(step: &str) -> Value {
    json!({"algorithm":"lattice-link","run":"AAAAAAAAAAAAAAAAAAAAAA==","step":step})
}

fn message(to: &str, rid: &str, envelope: Value) -> Value {
    json!({"type":"message","requestId":rid,"payload":{"targetId":to,"messageId":rid,"message":envelope}})
}

/// The next frame that is not presence.
async fn next_non_presence(c: &mut Client) -> Value {
    loop {
        let v = c.recv().await;
        let t = v["type"].as_str().unwrap_or_default();
        if t != "peer_connected" && t != "peer_disconnected" {
            return v;
        }
    }
}

/// The next delivered `message` (skipping answers to what `c` sent, and presence).
async fn next_message(c: &mut Client) -> Value {
    loop {
        let v = c.recv_any(&["message", "message_ack"]).await;
        if v["type"] == "message" {
            return v;
        }
    }
}

/// The next presence notice (skipping everything else).
async fn next_presence(c: &mut Client) -> Value {
    c.recv_any(&["peer_connected", "peer_disconnected"]).await
}

fn assert_error(v: &Value, error_type: &str, rid: &str) {
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["payload"]["errorType"], error_type, "{v}");
    assert_eq!(v["requestId"], rid, "{v}");
}

/// Every id `c`'s `discover` lists.
async fn discovered(c: &mut Client, rid: &str) -> Vec<String> {
    let d = c
        .request(
            json!({"type":"discover","requestId":rid,"payload":{}}),
            "discover",
        )
        .await;
    d["payload"]["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_owned())
        .collect()
}

/// Alice (subscribed to presence on `alice_url`) and carol (on `carol_url`) never see relay
/// `link-r1` (registered on `relay_url`): not in `discover`, no presence notice when it comes or
/// goes (the notices about dave, registered after it and gone after it on the relay's node, are
/// the first alice gets), `PEER_NOT_FOUND` to `request_public_key`. Yet alice's link envelope
/// reaches it and its answer reaches her.
async fn never_listed(alice_url: &str, carol_url: &str, relay_url: &str) {
    let alice_identity = new_identity();
    let mut alice = register_verified(alice_url, "alice", &alice_identity).await;
    let (mut carol, _) = register_unverified(carol_url, "carol").await;
    assert!(discovered(&mut alice, "d0")
        .await
        .contains(&"carol".to_owned()));

    let mut relay = relay(relay_url, "link-r1").await;
    let (dave, _) = register_unverified(relay_url, "dave").await;
    let first = next_presence(&mut alice).await;
    assert_eq!(first["type"], "peer_connected", "{first}");
    assert_eq!(
        first["payload"]["peerId"], "dave",
        "the relay was announced: {first}"
    );

    for (c, rid) in [(&mut alice, "d1"), (&mut carol, "d2")] {
        let ids = discovered(c, rid).await;
        assert!(ids.contains(&"dave".to_owned()), "{ids:?}");
        assert!(!ids.contains(&"link-r1".to_owned()), "{ids:?}");
    }
    carol
        .send(
            json!({"type":"request_public_key","requestId":"k1","payload":{"targetId":"link-r1"}}),
        )
        .await;
    assert_error(&next_non_presence(&mut carol).await, "PEER_NOT_FOUND", "k1");

    // Messages still reach it both ways: that is what it is for.
    alice
        .send(message("link-r1", "a1", link_envelope("reply")))
        .await;
    let got = relay.recv_type("message").await;
    assert_eq!(got["payload"]["fromId"], "alice", "{got}");
    assert_eq!(
        got["payload"]["message"]["algorithm"], "lattice-link",
        "{got}"
    );
    relay
        .send(message("alice", "r1", link_envelope("confirm")))
        .await;
    let got = next_message(&mut alice).await;
    assert_eq!(got["payload"]["fromId"], "link-r1", "{got}");
    alice
        .send(json!({"type":"ack","payload":{"messageId":"r1","fromId":"link-r1"}}))
        .await;
    assert_eq!(relay.recv_type("message_ack").await["requestId"], "r1");

    // It leaves unannounced: the next notice alice gets is dave's.
    drop(relay);
    drop(dave);
    let next = next_presence(&mut alice).await;
    assert_eq!(next["type"], "peer_disconnected", "{next}");
    assert_eq!(
        next["payload"]["peerId"], "dave",
        "the relay was announced: {next}"
    );
    // And a relay id is free again once it is gone, like any unbound id.
    relay_again(relay_url).await;
}

/// `link-r1` registers again once its earlier connection is gone (bounded retries: the server
/// notices a dropped socket shortly after the drop).
async fn relay_again(url: &str) {
    for _ in 0..100 {
        let mut c = Client::connect(url).await;
        c.send(relay_register("link-r1")).await;
        if c.recv().await["type"] == "register" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("link-r1 could not register again");
}

#[tokio::test]
async fn a_link_relay_is_never_listed_in_discover_presence_or_public_keys() {
    let server = spawn_server().await;
    let url = server.url();
    never_listed(&url, &url, &url).await;
}

#[tokio::test]
async fn across_two_redis_nodes_a_link_relay_is_never_listed_either() {
    let redis = RedisProcess::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = Vec::new();
    for i in 0..2 {
        let data = dir.path().join(format!("node{i}"));
        std::fs::create_dir_all(&data).unwrap();
        nodes.push(ServerProcess::start(&data, &["--redis", &redis.url()]).await);
    }
    // Alice and carol on node 1, the relay (and dave) on node 0.
    never_listed(&nodes[1].url, &nodes[1].url, &nodes[0].url).await;
}

/// A relay that sends anything but a `lattice-link` envelope to its one id gets
/// `LINK_RELAY_ONLY` with the frame's `requestId`, and past `MAX_LINK_RELAY_MESSAGES`
/// `QUOTA_EXCEEDED`; its connection survives each refusal and nothing refused is delivered.
#[tokio::test]
async fn a_link_relay_sends_only_link_envelopes_to_one_id_and_a_bounded_count() {
    let server = spawn_server().await;
    let url = server.url();
    // Unverified: no mailbox, so each accepted message is answered at once (no ack wait).
    let (mut alice, _) = register_unverified(&url, "alice").await;
    let (mut bob, _) = register_unverified(&url, "bob").await;
    let mut relay = relay(&url, "link-r2").await;

    // A normal (sealed) message, even to its target.
    relay.send(message("alice", "m1", envelope("hi"))).await;
    assert_error(
        &next_non_presence(&mut relay).await,
        "LINK_RELAY_ONLY",
        "m1",
    );
    // A shape that is no envelope at all.
    relay.send(message("alice", "m2", json!("plain"))).await;
    assert_error(
        &next_non_presence(&mut relay).await,
        "LINK_RELAY_ONLY",
        "m2",
    );
    // Other frames: directory lookups and the presence list.
    relay
        .send(json!({"type":"discover","requestId":"d1","payload":{}}))
        .await;
    assert_error(
        &next_non_presence(&mut relay).await,
        "LINK_RELAY_ONLY",
        "d1",
    );
    relay
        .send(json!({"type":"request_public_key","requestId":"k1","payload":{"targetId":"alice"}}))
        .await;
    assert_error(
        &next_non_presence(&mut relay).await,
        "LINK_RELAY_ONLY",
        "k1",
    );

    // The first link envelope fixes its target; a second id is refused.
    relay
        .send(message("alice", "l1", link_envelope("hello")))
        .await;
    assert_eq!(next_non_presence(&mut relay).await["requestId"], "l1");
    let got = next_message(&mut alice).await;
    assert_eq!(
        got["payload"]["messageId"], "l1",
        "a refused message was delivered: {got}"
    );
    relay
        .send(message("bob", "l2", link_envelope("hello")))
        .await;
    assert_error(
        &next_non_presence(&mut relay).await,
        "LINK_RELAY_ONLY",
        "l2",
    );

    // Up to the bound, then QUOTA_EXCEEDED; the connection still answers.
    for i in 1..MAX_LINK_RELAY_MESSAGES {
        let rid = format!("n{i}");
        relay
            .send(message("alice", &rid, link_envelope("abort")))
            .await;
        let a = next_non_presence(&mut relay).await;
        assert_eq!(a["type"], "message_ack", "{a}");
        assert_eq!(a["requestId"], rid.as_str(), "{a}");
    }
    relay
        .send(message("alice", "over", link_envelope("abort")))
        .await;
    assert_error(
        &next_non_presence(&mut relay).await,
        "QUOTA_EXCEEDED",
        "over",
    );
    alice
        .send(message("link-r2", "back", link_envelope("reply")))
        .await;
    assert_eq!(
        relay.recv_type("message").await["payload"]["messageId"],
        "back"
    );

    // Bob got nothing from it; alice exactly the accepted ones.
    bob.send(message("alice", "b1", envelope("from bob"))).await;
    let mut from_relay = 1;
    loop {
        let m = next_message(&mut alice).await;
        if m["payload"]["fromId"] == "bob" {
            break;
        }
        from_relay += 1;
    }
    assert_eq!(from_relay, MAX_LINK_RELAY_MESSAGES);
    drop(bob);
}

/// A relay cannot take an id that is bound to an identity (it proves none), nor register as a
/// device.
#[tokio::test]
async fn a_link_relay_cannot_take_a_bound_id_or_be_a_device() {
    let server = spawn_server().await;
    let url = server.url();
    let alice = new_identity();
    drop(register_verified(&url, "alice", &alice).await);
    let mut c = Client::connect(&url).await;
    c.send(relay_register("alice")).await;
    assert_error(&c.recv().await, "CLIENT_ID_TAKEN", "reg");

    let mut frame = relay_register("link-r3");
    frame["payload"]["device"] =
        json!({"deviceId":"laptop","deviceKey":"AA==","certificate":"AA=="});
    c.send(frame).await;
    assert_error(&c.recv().await, "INVALID_MESSAGE", "reg");
    // The connection survives: it registers as a plain relay after.
    c.send(relay_register("link-r3")).await;
    assert_eq!(c.recv_type("register").await["payload"]["success"], true);
}

/// `--link-relay-ttl` after it registered, the relay is closed with `LINK_RELAY_EXPIRED`; an
/// ordinary peer on the same server is not.
#[tokio::test]
async fn a_link_relay_is_closed_after_its_ttl() {
    let config = Config {
        link_relay_ttl: Duration::from_secs(1),
        ..Config::for_tests()
    };
    let server = spawn_with(config).await;
    let url = server.url();
    let (mut carol, _) = register_unverified(&url, "carol").await;
    let mut relay = relay(&url, "link-r4").await;
    let close = relay.recv_close().await.expect("a close frame");
    assert_eq!(u16::from(close.code), close_code::LINK_RELAY_EXPIRED);
    // Carol, registered before it, is still served.
    let d = discovered(&mut carol, "d1").await;
    assert_eq!(d, vec!["carol".to_owned()]);
}
