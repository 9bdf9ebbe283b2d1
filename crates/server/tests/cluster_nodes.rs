//! Several real `lattice-server` processes (`--redis`) on one real `redis-server`, with raw
//! WebSocket clients spread over them: messages both ways across nodes, discover, presence and
//! key requests across nodes, one live holder per id (a verified owner reclaims it from another
//! node, which closes the old connection with 4000), a registration race across nodes with
//! exactly one winner, mail for an offline verified peer delivered when it comes back on another
//! node, a node killed mid-stream with every accepted message delivered, Redis going away
//! (clear `INTERNAL_ERROR`, `/healthz` 503, sessions survive) and coming back, and an admin
//! question asked on one node answered by a peer on another.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/redis_process.rs"]
mod redis_process;
#[path = "support/server_process.rs"]
mod server_process;
mod support;

use std::collections::HashSet;
use std::time::Duration;

use base64::Engine as _;
use redis_process::{RedisCluster, RedisProcess};
use serde_json::{json, Value};
use server_process::ServerProcess;
use support::*;

/// `n` nodes on `redis`, each on its own data dir under `dir`.
async fn nodes(redis: &RedisProcess, dir: &tempfile::TempDir, n: usize) -> Vec<ServerProcess> {
    nodes_on(&redis.url(), dir, n).await
}

/// `n` nodes on the Redis (or Redis Cluster) at `url`, each on its own data dir under `dir`.
async fn nodes_on(url: &str, dir: &tempfile::TempDir, n: usize) -> Vec<ServerProcess> {
    let mut out = Vec::new();
    for i in 0..n {
        let data = dir.path().join(format!("node{i}"));
        std::fs::create_dir_all(&data).unwrap();
        out.push(ServerProcess::start(&data, &["--redis", url]).await);
    }
    out
}

fn message(to: &str, mid: &str, rid: &str, tag: &str) -> Value {
    json!({"type":"message","requestId":rid,"payload":{"targetId":to,"messageId":mid,"message":envelope(tag)}})
}

fn ack(mid: &str, from: &str) -> Value {
    json!({"type":"ack","payload":{"messageId":mid,"fromId":from}})
}

/// The next `message_ack` or `error` answering `rid` (skipping messages and presence).
async fn answer(c: &mut Client, rid: &str) -> Value {
    loop {
        let v = c.recv_any(&["message_ack", "error"]).await;
        if v["requestId"] == rid {
            return v;
        }
    }
}

fn http(ws_url: &str) -> String {
    ws_url.replacen("ws://", "http://", 1)
}

#[tokio::test]
async fn peers_on_different_nodes_discover_each_other_exchange_keys_and_messages() {
    let redis = RedisProcess::start().await;
    let dir = tempfile::tempdir().unwrap();
    let n = nodes(&redis, &dir, 3).await;
    let (alice_id, bob_id) = (new_identity(), new_identity());
    let mut alice = register_verified(&n[0].url, "alice", &alice_id).await;
    let mut bob = register_verified(&n[1].url, "bob", &bob_id).await;
    let (mut carol, _) = register_unverified(&n[2].url, "carol").await;

    // discover lists every node's peers, and subscribes to presence from every node
    let d = bob
        .request(
            json!({"type":"discover","requestId":"d1","payload":{}}),
            "discover",
        )
        .await;
    assert_eq!(
        d["payload"]["peers"],
        json!(["alice", "bob", "carol"]),
        "{d}"
    );
    let (_dave, _) = register_unverified(&n[0].url, "dave").await;
    // (a notice about an earlier registration may still be on its way from another node)
    while bob.recv_any(&["peer_connected"]).await["payload"]["peerId"] != "dave" {}

    // the key of a peer online on another node is the one it registered there
    let k = alice
        .request(
            json!({"type":"request_public_key","requestId":"k1","payload":{"targetId":"bob"}}),
            "public_key_response",
        )
        .await;
    assert_eq!(
        k["payload"]["identityKey"],
        B64.encode(bob_id.identity_public_key().as_bytes())
    );
    assert_eq!(k["payload"]["publicKey"], json!(kem_key(&bob_id)));

    // verified recipient on another node: stored, then handed over; its sender hears
    // `delivered` once the recipient acknowledged, end to end as on one node; both ways
    alice.send(message("bob", "m1", "r1", "hi bob")).await;
    let m = bob.recv_any(&["message"]).await;
    assert_eq!(m["payload"]["fromId"], "alice");
    assert_eq!(m["payload"]["messageId"], "m1");
    assert_eq!(m["payload"]["message"], envelope("hi bob"));
    bob.send(ack("m1", "alice")).await;
    let a = answer(&mut alice, "r1").await;
    assert_eq!(a["type"], "message_ack", "{a}");
    assert_eq!(a["payload"]["status"], "delivered", "{a}");
    assert_eq!(a["payload"]["messageId"], "m1", "{a}");
    bob.send(message("alice", "m2", "r2", "hi alice")).await;
    let m = alice.recv_any(&["message"]).await;
    assert_eq!(m["payload"]["fromId"], "bob");
    alice.send(ack("m2", "bob")).await;
    assert_eq!(
        answer(&mut bob, "r2").await["payload"]["status"],
        "delivered"
    );

    // an unverified (original) recipient on another node gets the frame over its node's channel
    alice.send(message("carol", "m3", "r3", "hi carol")).await;
    let a = answer(&mut alice, "r3").await;
    assert_eq!(a["payload"]["status"], "delivered", "{a}");
    let m = carol.recv_any(&["message"]).await;
    assert_eq!(m["payload"]["fromId"], "alice");
    // and writes back to a verified peer on another node
    carol.send(message("alice", "m4", "r4", "hi back")).await;
    assert_eq!(
        alice.recv_any(&["message"]).await["payload"]["fromId"],
        "carol"
    );
    alice.send(ack("m4", "carol")).await;
    assert_eq!(
        answer(&mut carol, "r4").await["payload"]["status"],
        "delivered"
    );

    // an unknown target is refused with the request's id, as on one node
    alice.send(message("nobody", "m5", "r5", "?")).await;
    let e = answer(&mut alice, "r5").await;
    assert_eq!(e["payload"]["errorType"], "PEER_NOT_FOUND", "{e}");

    // leaving is announced on every node
    drop(carol);
    loop {
        let p = bob.recv_any(&["peer_disconnected"]).await;
        if p["payload"]["peerId"] == "carol" {
            break;
        }
    }
}

#[tokio::test]
async fn one_live_holder_per_id_across_nodes() {
    let redis = RedisProcess::start().await;
    let dir = tempfile::tempdir().unwrap();
    let n = nodes(&redis, &dir, 3).await;
    let alice_id = new_identity();
    let mut first = register_verified(&n[0].url, "alice", &alice_id).await;
    // an unverified registration of the held id, on another node, is refused
    let mut c = Client::connect(&n[2].url).await;
    c.send(json!({"type":"register","requestId":"reg","payload":{"clientId":"alice","publicKey":kem_key(&new_identity())}}))
        .await;
    let e = c.recv_type("error").await;
    assert_eq!(e["payload"]["errorType"], "CLIENT_ID_TAKEN", "{e}");
    assert_eq!(e["requestId"], "reg");
    // a different identity cannot take the bound id either
    let (_, v) = try_register_verified(&n[1].url, "alice", &new_identity()).await;
    assert_eq!(v["payload"]["errorType"], "CLIENT_ID_TAKEN", "{v}");
    // the owner reclaims it on another node; the first node closes the old connection with 4000
    let mut second = register_verified(&n[1].url, "alice", &alice_id).await;
    let close = first.recv_close().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 4000);
    // the new holder is the one messages reach
    let (mut bob, _) = register_unverified(&n[2].url, "bob").await;
    bob.send(message("alice", "m1", "r1", "x")).await;
    assert_eq!(answer(&mut bob, "r1").await["type"], "message_ack");
    assert_eq!(
        second.recv_any(&["message"]).await["payload"]["messageId"],
        "m1"
    );
}

#[tokio::test]
async fn a_registration_race_across_nodes_has_exactly_one_winner() {
    let redis = RedisProcess::start().await;
    let dir = tempfile::tempdir().unwrap();
    let n = nodes(&redis, &dir, 3).await;
    for round in 0..10 {
        let id = format!("contested-{round}");
        let mut racers = Vec::new();
        for i in 0..6 {
            let url = n[i % n.len()].url.clone();
            let id = id.clone();
            racers.push(tokio::spawn(async move {
                let mut c = Client::connect(&url).await;
                c.send(json!({"type":"register","requestId":"reg","payload":{"clientId":id,"publicKey":kem_key(&new_identity())}}))
                    .await;
                let v = c.recv_any(&["register", "error"]).await;
                (c, v)
            }));
        }
        let mut winners = 0;
        let mut held = Vec::new();
        for r in racers {
            let (c, v) = r.await.unwrap();
            if v["type"] == "register" {
                winners += 1;
            } else {
                assert_eq!(v["payload"]["errorType"], "CLIENT_ID_TAKEN", "{v}");
                assert_eq!(v["requestId"], "reg");
            }
            held.push(c);
        }
        assert_eq!(winners, 1, "round {round}: exactly one registration wins");
    }
}

#[tokio::test]
async fn mail_for_an_offline_verified_peer_waits_and_unacknowledged_mail_moves_with_it() {
    let redis = RedisProcess::start().await;
    let dir = tempfile::tempdir().unwrap();
    let n = nodes(&redis, &dir, 3).await;
    let bob_id = new_identity();
    drop(register_verified(&n[1].url, "bob", &bob_id).await);
    let (mut alice, _) = register_unverified(&n[0].url, "alice").await;
    for i in 0..5 {
        let rid = format!("r{i}");
        alice
            .send(message("bob", &format!("m{i}"), &rid, "offline"))
            .await;
        let a = answer(&mut alice, &rid).await;
        assert_eq!(a["payload"]["status"], "queued", "{a}");
    }
    // back on another node: everything arrives; bob acknowledges only the first three
    let mut bob = reconnect_verified(&n[2].url, "bob", &bob_id).await;
    let mut got = Vec::new();
    while got.len() < 5 {
        let m = bob.recv_any(&["message"]).await;
        got.push(m["payload"]["messageId"].as_str().unwrap().to_owned());
    }
    got.sort();
    assert_eq!(got, ["m0", "m1", "m2", "m3", "m4"]);
    for mid in ["m0", "m1", "m2"] {
        bob.send(ack(mid, "alice")).await;
    }
    // a round trip so the acks are applied before the connection goes
    bob.request(json!({"type":"discover","payload":{}}), "discover")
        .await;
    drop(bob);
    // on a third node the two unacknowledged ones come again, and only those
    let mut bob = reconnect_verified(&n[0].url, "bob", &bob_id).await;
    let mut again = Vec::new();
    while again.len() < 2 {
        let m = bob.recv_any(&["message"]).await;
        again.push(m["payload"]["messageId"].as_str().unwrap().to_owned());
    }
    again.sort();
    assert_eq!(again, ["m3", "m4"]);
    let d = bob
        .request(
            json!({"type":"discover","requestId":"end","payload":{}}),
            "discover",
        )
        .await;
    assert_eq!(d["requestId"], "end", "nothing else came before");
}

#[tokio::test]
async fn a_node_killed_mid_stream_loses_no_accepted_message() {
    let redis = RedisProcess::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut n = nodes(&redis, &dir, 3).await;
    let bob_id = new_identity();
    let mut bob = register_verified(&n[1].url, "bob", &bob_id).await;
    let (mut alice, _) = register_unverified(&n[0].url, "alice").await;
    const TOTAL: usize = 300;
    let sender = tokio::spawn(async move {
        let mut accepted = HashSet::new();
        for i in 0..TOTAL {
            alice
                .send(message("bob", &format!("m{i}"), &format!("r{i}"), "stream"))
                .await;
            let a = answer(&mut alice, &format!("r{i}")).await;
            if a["type"] == "message_ack" {
                accepted.insert(format!("m{i}"));
            }
        }
        accepted
    });
    // bob reads (and acks) part of the stream, then his node dies
    let mut received = HashSet::new();
    while received.len() < TOTAL / 3 {
        let m = bob.recv_any(&["message"]).await;
        let mid = m["payload"]["messageId"].as_str().unwrap().to_owned();
        bob.send(ack(&mid, "alice")).await;
        received.insert(mid);
    }
    n.remove(1).kill9();
    drop(bob);
    let accepted = sender.await.unwrap();
    assert_eq!(
        accepted.len(),
        TOTAL,
        "the sender's node stayed up: all accepted"
    );
    // bob comes back on a surviving node: every accepted message arrives (some maybe twice)
    let mut bob = reconnect_verified(&n[1].url, "bob", &bob_id).await;
    while !accepted.is_subset(&received) {
        let m = bob.recv_any(&["message"]).await;
        let mid = m["payload"]["messageId"].as_str().unwrap().to_owned();
        bob.send(ack(&mid, "alice")).await;
        received.insert(mid);
    }
    assert_eq!(received.len(), TOTAL);
}

#[tokio::test]
async fn without_redis_registrations_get_internal_error_and_healthz_503_then_it_recovers() {
    let mut redis = RedisProcess::start().await;
    let dir = tempfile::tempdir().unwrap();
    let n = nodes(&redis, &dir, 2).await;
    let bob_id = new_identity();
    let mut bob = register_verified(&n[0].url, "bob", &bob_id).await;
    let (mut alice, _) = register_unverified(&n[1].url, "alice").await;
    alice.send(message("bob", "m0", "r0", "before")).await;
    assert_eq!(
        bob.recv_any(&["message"]).await["payload"]["messageId"],
        "m0"
    );
    bob.send(ack("m0", "alice")).await;
    assert_eq!(
        answer(&mut alice, "r0").await["payload"]["status"],
        "delivered"
    );

    redis.kill9();
    let health = reqwest::get(format!("{}/healthz", http(&n[0].url)))
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 503);
    let mut c = Client::connect(&n[1].url).await;
    c.send(json!({"type":"register","requestId":"reg","payload":{"clientId":"carol","publicKey":kem_key(&new_identity())}}))
        .await;
    let e = c.recv_type("error").await;
    assert_eq!(e["payload"]["errorType"], "INTERNAL_ERROR", "{e}");
    assert_eq!(e["requestId"], "reg");
    // a message that cannot be stored is refused, not acknowledged; the connection stays
    alice.send(message("bob", "m1", "r1", "during")).await;
    let e = answer(&mut alice, "r1").await;
    assert_eq!(e["type"], "error", "{e}");
    assert_eq!(e["payload"]["errorType"], "INTERNAL_ERROR");

    // Redis comes back (its AOF replayed): the same sessions work again
    redis.restart().await;
    let mut ok = false;
    for i in 0..100 {
        let rid = format!("again{i}");
        alice.send(message("bob", "m2", &rid, "after")).await;
        if answer(&mut alice, &rid).await["type"] == "message_ack" {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "messages are accepted again once Redis is back");
    assert_eq!(
        bob.recv_any(&["message"]).await["payload"]["messageId"],
        "m2"
    );
    let health = reqwest::get(format!("{}/healthz", http(&n[0].url)))
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);
    let metrics = reqwest::get(format!("{}/metrics", http(&n[0].url)))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("lattice_redis_errors_total"), "{metrics}");
    assert!(metrics.contains("lattice_cluster_published_total"));
}

#[tokio::test]
async fn an_admin_question_reaches_a_peer_on_another_node_and_its_answer_comes_back() {
    let redis = RedisProcess::start().await;
    let dir = tempfile::tempdir().unwrap();
    let token = lattice_server::config::TEST_ADMIN_TOKEN;
    let mut n = Vec::new();
    for i in 0..2 {
        let data = dir.path().join(format!("node{i}"));
        std::fs::create_dir_all(&data).unwrap();
        n.push(
            ServerProcess::start(&data, &["--redis", &redis.url(), "--admin-token", token]).await,
        );
    }
    let (mut ops, _) = register_unverified(&n[1].url, "ops").await;
    let peer = tokio::spawn(async move {
        for answer in [json!("blue"), json!(true)] {
            let q = ops.recv_type("server_question").await;
            ops.send(json!({"type":"peer_response","payload":{"questionId":q["payload"]["questionId"],"response":answer}}))
                .await;
        }
        ops
    });
    // asked on node 0, answered by the peer on node 1, two rounds of one conversation
    let (s, a1) = admin_ask(
        &http(&n[0].url),
        token,
        "ops",
        json!({"question":{"text":"Colour?"}}),
    )
    .await;
    assert_eq!(s, 200, "{a1}");
    assert_eq!(a1["response"], "blue");
    let conv = a1["conversationId"].clone();
    let (s, a2) = admin_ask(
        &http(&n[0].url),
        token,
        "ops",
        json!({"question":{"text":"Sure?","kind":"confirm"},"conversationId":conv}),
    )
    .await;
    assert_eq!(s, 200, "{a2}");
    assert_eq!(a2["response"], true);
    assert_eq!(a2["round"], 2);
    // an invalid question is refused as on one node
    let (s, e) = admin_ask(
        &http(&n[0].url),
        token,
        "ops",
        json!({"question":{"text":"x","kind":"choice","options":["one"]}}),
    )
    .await;
    assert_eq!(s, 400, "{e}");
    // nobody online anywhere: 404
    let (s, _) = admin_ask(
        &http(&n[0].url),
        token,
        "ghost",
        json!({"question":{"text":"hi"}}),
    )
    .await;
    assert_eq!(s, 404);
    drop(peer.await.unwrap());
}

/// The question registry is in Redis: a multi-round admin conversation goes on after its peer
/// reconnects to another node (the round counts on, the conversation stays the peer's), and a
/// question sent before a move is answered after it, on the new node, reaching the caller on
/// the asking node; an answer that does not fit is refused with the question left open; an
/// answered question is gone on every node; another peer cannot take the conversation (409).
#[tokio::test]
async fn an_admin_conversation_survives_its_peer_moving_to_other_nodes() {
    let redis = RedisProcess::start().await;
    let dir = tempfile::tempdir().unwrap();
    let token = lattice_server::config::TEST_ADMIN_TOKEN;
    let mut n = Vec::new();
    for i in 0..3 {
        let data = dir.path().join(format!("node{i}"));
        std::fs::create_dir_all(&data).unwrap();
        n.push(
            ServerProcess::start(&data, &["--redis", &redis.url(), "--admin-token", token]).await,
        );
    }
    let ask = |body: Value| {
        let base = http(&n[0].url);
        tokio::spawn(async move { admin_ask(&base, token, "ops", body).await })
    };
    let respond = |q: &Value, response: Value| json!({"type":"peer_response","requestId":"pr","payload":{"questionId":q["payload"]["questionId"],"response":response}});
    let ops_id = new_identity();
    let mut ops = register_verified(&n[1].url, "ops", &ops_id).await;
    let asked = ask(json!({"question":{"text":"Colour?"}}));
    let q1 = ops.recv_type("server_question").await;
    assert_eq!(q1["payload"]["round"], 1, "{q1}");
    ops.send(respond(&q1, json!("blue"))).await;
    let (s, a1) = asked.await.unwrap();
    assert_eq!(s, 200, "{a1}");
    assert_eq!(
        (a1["response"].clone(), a1["round"].clone()),
        (json!("blue"), json!(1))
    );
    let conv = a1["conversationId"].clone();

    // ops moves to node 2 between rounds: round 2 of the same conversation reaches it there
    drop(ops);
    let mut ops = reconnect_verified(&n[2].url, "ops", &ops_id).await;
    let asked = ask(json!({"question":{"text":"Sure?","kind":"confirm"},"conversationId":conv}));
    let q2 = ops.recv_type("server_question").await;
    assert_eq!(q2["payload"]["round"], 2, "{q2}");
    assert_eq!(q2["payload"]["conversationId"], conv);
    // and moves again before answering: it answers on node 1
    drop(ops);
    let mut ops = reconnect_verified(&n[1].url, "ops", &ops_id).await;
    ops.send(respond(&q2, json!("perhaps"))).await;
    let e = ops.recv_type("error").await;
    assert_eq!(e["payload"]["errorType"], "INVALID_MESSAGE", "{e}");
    assert_eq!(e["requestId"], "pr");
    ops.send(respond(&q2, json!(true))).await;
    let (s, a2) = asked.await.unwrap();
    assert_eq!(s, 200, "{a2}");
    assert_eq!(
        (a2["response"].clone(), a2["round"].clone()),
        (json!(true), json!(2))
    );
    assert_eq!(a2["conversationId"], conv);
    // answered: gone everywhere
    ops.send(respond(&q2, json!(false))).await;
    let e = ops.recv_type("error").await;
    assert_eq!(e["payload"]["errorType"], "UNKNOWN_QUESTION", "{e}");

    // the conversation stays ops's
    let (_eve, _) = register_unverified(&n[2].url, "eve").await;
    let (s, e) = admin_ask(
        &http(&n[0].url),
        token,
        "eve",
        json!({"question":{"text":"Mine now?"},"conversationId":conv}),
    )
    .await;
    assert_eq!(s, 409, "{e}");
}

/// `GET /admin/peers` on any node lists every node's online peers (from the online index in
/// Redis), each with its node and whether it is verified, in id order, paged by `cursor` as
/// `discover` is; a bad query is a 400; a peer that left is gone from every node's list.
#[tokio::test]
async fn the_admin_peer_list_shows_every_nodes_peers() {
    let redis = RedisProcess::start().await;
    let dir = tempfile::tempdir().unwrap();
    let token = lattice_server::config::TEST_ADMIN_TOKEN;
    let mut n = Vec::new();
    for i in 0..2 {
        let data = dir.path().join(format!("node{i}"));
        std::fs::create_dir_all(&data).unwrap();
        n.push(
            ServerProcess::start(&data, &["--redis", &redis.url(), "--admin-token", token]).await,
        );
    }
    let _alice = register_verified(&n[0].url, "alice", &new_identity()).await;
    let (bob, _) = register_unverified(&n[1].url, "bob").await;
    let _carol = register_verified(&n[1].url, "carol", &new_identity()).await;
    let list = |base: String, query: &'static str| async move {
        let r = reqwest::Client::new()
            .get(format!("{base}/admin/peers{query}"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json::<Value>().await.unwrap())
    };
    let node_of = |base: String| async move {
        let h: Value = reqwest::get(format!("{base}/healthz"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        h["node"].clone()
    };
    let (n0, n1) = (
        node_of(http(&n[0].url)).await,
        node_of(http(&n[1].url)).await,
    );
    assert_ne!(n0, n1);
    for node in &n {
        let (s, l) = list(http(&node.url), "").await;
        assert_eq!(s, 200, "{l}");
        assert_eq!(
            l["peers"],
            json!([
                {"clientId":"alice","verified":true,"node":n0},
                {"clientId":"bob","verified":false,"node":n1},
                {"clientId":"carol","verified":true,"node":n1},
            ]),
            "{l}"
        );
        assert_eq!(l["more"], false);
        assert_eq!(l["cursor"], Value::Null);
    }
    let (s, l) = list(http(&n[0].url), "?cursor=alice").await;
    assert_eq!(s, 200, "{l}");
    let ids: Vec<&str> = l["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["clientId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["bob", "carol"]);
    let (s, e) = list(http(&n[0].url), "?cursor=not%20an%20id&x=1").await;
    assert_eq!(s, 400, "{e}");
    // bob leaves node 1: node 0's list no longer has him
    drop(bob);
    let mut tries = 0;
    loop {
        let (_, l) = list(http(&n[0].url), "").await;
        if l["peers"].as_array().unwrap().len() == 2 {
            break;
        }
        tries += 1;
        assert!(tries < 100, "bob still listed: {l}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn three_nodes_on_a_redis_cluster_relay_both_ways_and_deliver_mail_on_another_node() {
    let cluster = RedisCluster::start(3, 0).await;
    let dir = tempfile::tempdir().unwrap();
    let n = nodes_on(&cluster.url(), &dir, 3).await;
    let (alice_id, bob_id, carol_id) = (new_identity(), new_identity(), new_identity());
    let mut alice = register_verified(&n[0].url, "alice", &alice_id).await;
    let mut bob = register_verified(&n[1].url, "bob", &bob_id).await;
    // carol binds her id, then goes offline
    drop(register_verified(&n[2].url, "carol", &carol_id).await);

    let d = bob
        .request(
            json!({"type":"discover","requestId":"d1","payload":{}}),
            "discover",
        )
        .await;
    let peers = d["payload"]["peers"].as_array().unwrap();
    assert!(peers.contains(&json!("alice")), "{d}");

    // messages both ways across nodes
    alice.send(message("bob", "m1", "r1", "hi bob")).await;
    assert_eq!(answer(&mut alice, "r1").await["type"], "message_ack");
    let m = bob.recv_any(&["message"]).await;
    assert_eq!(m["payload"]["fromId"], "alice");
    assert_eq!(m["payload"]["message"], envelope("hi bob"));
    bob.send(ack("m1", "alice")).await;
    bob.send(message("alice", "m2", "r2", "hi alice")).await;
    assert_eq!(answer(&mut bob, "r2").await["type"], "message_ack");
    let m = alice.recv_any(&["message"]).await;
    assert_eq!(m["payload"]["fromId"], "bob");
    assert_eq!(m["payload"]["message"], envelope("hi alice"));
    alice.send(ack("m2", "bob")).await;

    // mail for offline carol waits in the cluster, and reaches her on another node
    for i in 0..3 {
        let rid = format!("c{i}");
        alice
            .send(message("carol", &format!("cm{i}"), &rid, "offline"))
            .await;
        let a = answer(&mut alice, &rid).await;
        assert_eq!(a["payload"]["status"], "queued", "{a}");
    }
    let mut carol = reconnect_verified(&n[1].url, "carol", &carol_id).await;
    let mut got = Vec::new();
    while got.len() < 3 {
        let m = carol.recv_any(&["message"]).await;
        assert_eq!(m["payload"]["fromId"], "alice");
        got.push(m["payload"]["messageId"].as_str().unwrap().to_owned());
    }
    got.sort();
    assert_eq!(got, ["cm0", "cm1", "cm2"]);
}

/// End-to-end `delivered` across nodes, its bounds and its failure cases: a recipient that does
/// not acknowledge within the ack wait leaves its sender with `queued` (the message is stored);
/// a sender that moved to another node before the recipient's `ack` gets no stray answer on its
/// new connection and its node stays well; a recipient whose node died (its presence not expired
/// yet) leaves its sender with `queued` at once.
#[tokio::test]
async fn delivered_across_nodes_falls_back_to_queued_when_no_ack_can_come() {
    let redis = RedisProcess::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut n = nodes(&redis, &dir, 3).await;
    let (alice_id, bob_id) = (new_identity(), new_identity());
    let mut alice = register_verified(&n[0].url, "alice", &alice_id).await;
    let mut bob = register_verified(&n[1].url, "bob", &bob_id).await;

    // bob reads and does not acknowledge: queued at the end of the ack wait
    alice.send(message("bob", "m1", "r1", "unacked")).await;
    assert_eq!(
        bob.recv_any(&["message"]).await["payload"]["messageId"],
        "m1"
    );
    let a = answer(&mut alice, "r1").await;
    assert_eq!(a["payload"]["status"], "queued", "{a}");
    // ... and a later ack of it answers nothing more
    bob.send(ack("m1", "alice")).await;

    // alice moves to node 2 before bob acknowledges m2: her new connection hears nothing of it
    alice.send(message("bob", "m2", "r2", "moving")).await;
    assert_eq!(
        bob.recv_any(&["message"]).await["payload"]["messageId"],
        "m2"
    );
    drop(alice);
    let mut alice = reconnect_verified(&n[2].url, "alice", &alice_id).await;
    bob.send(ack("m2", "alice")).await;
    alice
        .send(message("bob", "m3", "r3", "after the move"))
        .await;
    assert_eq!(
        bob.recv_any(&["message"]).await["payload"]["messageId"],
        "m3"
    );
    bob.send(ack("m3", "alice")).await;
    let a = alice.recv_any(&["message_ack", "error"]).await;
    assert_eq!(a["requestId"], "r3", "no answer for m2 came first: {a}");
    assert_eq!(a["payload"]["status"], "delivered", "{a}");

    // bob's node dies: until his presence expires a message for him is stored and answered
    // `queued` at once (no node listens for the notice)
    n.remove(1).kill9();
    drop(bob);
    alice
        .send(message("bob", "m4", "r4", "to a dead node"))
        .await;
    let a = answer(&mut alice, "r4").await;
    assert_eq!(a["payload"]["status"], "queued", "{a}");
    let mut bob = reconnect_verified(&n[0].url, "bob", &bob_id).await;
    let mut got = HashSet::new();
    while !got.contains("m4") {
        let m = bob.recv_any(&["message"]).await;
        got.insert(m["payload"]["messageId"].as_str().unwrap().to_owned());
    }
}

/// An `ack` without `fromId` on a node of several removes the one message of that id it was
/// handed, as on one node (and its sender hears `delivered`); an id two senders used removes
/// nothing (at least once): on the recipient's next connection, on another node, exactly the
/// ambiguous ones come again.
#[tokio::test]
async fn an_ack_without_from_id_removes_its_one_message_across_nodes() {
    let redis = RedisProcess::start().await;
    let dir = tempfile::tempdir().unwrap();
    let n = nodes(&redis, &dir, 3).await;
    let bob_id = new_identity();
    let mut bob = register_verified(&n[1].url, "bob", &bob_id).await;
    let (mut alice, _) = register_unverified(&n[0].url, "alice").await;
    let (mut carol, _) = register_unverified(&n[2].url, "carol").await;
    alice.send(message("bob", "x1", "a1", "from alice")).await;
    carol.send(message("bob", "x1", "c1", "from carol")).await;
    carol.send(message("bob", "x2", "c2", "only carol")).await;
    let mut got = Vec::new();
    while got.len() < 3 {
        let m = bob.recv_any(&["message"]).await;
        got.push(format!(
            "{}:{}",
            m["payload"]["fromId"].as_str().unwrap(),
            m["payload"]["messageId"].as_str().unwrap()
        ));
    }
    got.sort();
    assert_eq!(got, ["alice:x1", "carol:x1", "carol:x2"]);
    for mid in ["x2", "x1"] {
        bob.send(json!({"type":"ack","payload":{"messageId":mid}}))
            .await;
    }
    let a = answer(&mut carol, "c2").await;
    assert_eq!(a["payload"]["status"], "delivered", "{a}");
    // x1 names two senders' messages: neither is removed (queued once the wait ends)
    assert_eq!(
        answer(&mut alice, "a1").await["payload"]["status"],
        "queued"
    );
    assert_eq!(
        answer(&mut carol, "c1").await["payload"]["status"],
        "queued"
    );
    drop(bob);
    let mut bob = reconnect_verified(&n[0].url, "bob", &bob_id).await;
    let mut again = Vec::new();
    while again.len() < 2 {
        let m = bob.recv_any(&["message"]).await;
        again.push(m["payload"]["fromId"].as_str().unwrap().to_owned());
        assert_eq!(m["payload"]["messageId"], "x1", "{m}");
    }
    again.sort();
    assert_eq!(again, ["alice", "carol"]);
    let d = bob
        .request(
            json!({"type":"discover","requestId":"end","payload":{}}),
            "discover",
        )
        .await;
    assert_eq!(d["requestId"], "end", "x2 did not come again");
}

/// A node SIGKILLed stops refreshing its peers' presence: seen from another node they are gone
/// from `discover` and their ids free within one presence TTL (3 s here, `--presence-ttl`), so
/// an unverified peer of the dead node takes its id again on a surviving node.
#[tokio::test]
async fn a_killed_nodes_presence_expires_within_one_ttl() {
    const TTL: Duration = Duration::from_secs(3);
    let redis = RedisProcess::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut n = Vec::new();
    for i in 0..2 {
        let data = dir.path().join(format!("node{i}"));
        std::fs::create_dir_all(&data).unwrap();
        n.push(
            ServerProcess::start(&data, &["--redis", &redis.url(), "--presence-ttl", "3"]).await,
        );
    }
    let (_bob, _) = register_unverified(&n[1].url, "bob").await;
    let _carol = register_verified(&n[1].url, "carol", &new_identity()).await;
    let (mut alice, _) = register_unverified(&n[0].url, "alice").await;
    // live peers stay across several TTLs: the refreshes keep them
    tokio::time::sleep(TTL * 2).await;
    let discover = |c: &'static str| json!({"type":"discover","requestId":c,"payload":{}});
    let d = alice.request(discover("d0"), "discover").await;
    assert_eq!(
        d["payload"]["peers"],
        json!(["alice", "bob", "carol"]),
        "{d}"
    );

    n.remove(1).kill9();
    let killed = std::time::Instant::now();
    // gone within one TTL (polled; the bound allows the poll and a loaded machine)
    loop {
        let d = alice.request(discover("d"), "discover").await;
        if d["payload"]["peers"] == json!(["alice"]) {
            break;
        }
        assert!(
            killed.elapsed() < TTL * 3,
            "still listed {:?} after the kill: {d}",
            killed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // bob's id is free on the surviving node
    let (_bob, _) = register_unverified(&n[0].url, "bob").await;
}
