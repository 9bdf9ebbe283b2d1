//! Every frame type of the protocol and its error paths, against a real server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use base64::Engine as _;
use serde_json::json;
use support::*;

#[tokio::test]
async fn register_discover_presence_and_keys() {
    let server = spawn_server().await;
    let url = server.url();
    let (mut alice, alice_id) = register_unverified(&url, "alice").await;
    let d = alice
        .request(json!({"type":"discover","payload":{}}), "discover")
        .await;
    assert_eq!(d["payload"]["peers"], json!(["alice"]));

    // bob registers: alice (subscribed by discover) hears of it
    let bob_identity = new_identity();
    let mut bob = register_verified(&url, "bob", &bob_identity).await;
    let c = alice.recv().await;
    assert_eq!(
        c,
        json!({"type":"peer_connected","payload":{"peerId":"bob"}})
    );

    // bob never sent discover: he gets no presence. His discover lists both.
    let d = bob
        .request(json!({"type":"discover","payload":{}}), "discover")
        .await;
    assert_eq!(d["payload"]["peers"], json!(["alice", "bob"]));

    // key of an unverified peer: no identity fields; of a verified one: both.
    let k = bob
        .request(
            json!({"type":"request_public_key","payload":{"targetId":"alice"}}),
            "public_key_response",
        )
        .await;
    assert_eq!(k["payload"]["peerId"], "alice");
    assert_eq!(k["payload"]["publicKey"], json!(kem_key(&alice_id)));
    assert!(k["payload"].get("identityKey").is_none());
    let k = alice
        .request(
            json!({"type":"request_public_key","payload":{"targetId":"bob"}}),
            "public_key_response",
        )
        .await;
    assert_eq!(k["payload"]["publicKey"], json!(kem_key(&bob_identity)));
    assert_eq!(
        k["payload"]["identityKey"],
        B64.encode(bob_identity.identity_public_key().as_bytes())
    );
    assert_eq!(
        k["payload"]["keySignature"],
        B64.encode(bob_identity.key_signature())
    );

    // bob leaves: alice hears it
    drop(bob);
    let d = alice.recv().await;
    assert_eq!(
        d,
        json!({"type":"peer_disconnected","payload":{"peerId":"bob"}})
    );
    // bob is verified, so his key is still available offline
    let k = alice
        .request(
            json!({"type":"request_public_key","payload":{"targetId":"bob"}}),
            "public_key_response",
        )
        .await;
    assert_eq!(
        k["payload"]["identityKey"],
        B64.encode(bob_identity.identity_public_key().as_bytes())
    );
    server.shutdown().await;
}

#[tokio::test]
async fn messages_carry_the_server_set_sender_and_acks() {
    let server = spawn_server().await;
    let url = server.url();
    let (mut alice, _) = register_unverified(&url, "alice").await;
    let (mut bob, _) = register_unverified(&url, "bob").await;

    // alice lies about who she is: the server sets fromId from the registration.
    alice
        .send(json!({"type":"message","payload":{"targetId":"bob","message":envelope("1"),"fromId":"carol","messageId":"m-1"},"requestId":"r1"}))
        .await;
    let m = bob.recv_type("message").await;
    assert_eq!(m["payload"]["fromId"], "alice");
    assert_eq!(
        m["payload"]["message"],
        envelope("1"),
        "envelope forwarded verbatim"
    );
    assert_eq!(m["payload"]["messageId"], "m-1");
    assert!(m["payload"]["timestamp"].as_u64().unwrap() > 1_600_000_000_000);
    let ack = alice.recv_type("message_ack").await;
    assert_eq!(
        ack["payload"],
        json!({"messageId":"m-1","targetId":"bob","status":"delivered"})
    );
    assert_eq!(ack["requestId"], "r1");

    // original shape: no messageId, no ack frame, nothing extra in the delivered payload
    alice
        .send(json!({"type":"message","payload":{"targetId":"bob","message":envelope("2")}}))
        .await;
    let m = bob.recv_type("message").await;
    let keys: Vec<_> = m["payload"].as_object().unwrap().keys().cloned().collect();
    assert_eq!(keys, ["fromId", "message", "timestamp"]);

    // unknown target
    alice.send(json!({"type":"message","payload":{"targetId":"nobody","message":envelope("3")},"requestId":"r2"})).await;
    let e = alice.recv_error().await;
    assert_eq!(e["errorType"], "PEER_NOT_FOUND");
    assert_eq!(e["details"], "Target peer nobody not found");
    assert_eq!(e["requestId"], "r2");
    // a non-object envelope
    alice
        .send(json!({"type":"message","payload":{"targetId":"bob","message":"plaintext!"}}))
        .await;
    assert_eq!(alice.recv_error().await["errorType"], "INVALID_MESSAGE");
    server.shutdown().await;
}

#[tokio::test]
async fn error_paths() {
    let server = spawn_server().await;
    let url = server.url();
    let mut c = Client::connect(&url).await;

    // before registration
    for ty in ["discover", "debug_question"] {
        c.send(json!({"type": ty, "payload": {}})).await;
        let e = c.recv_error().await;
        assert_eq!(e["errorType"], "REGISTRATION_REQUIRED", "{ty}");
    }
    c.send(json!({"type":"request_public_key","payload":{"targetId":"x"}}))
        .await;
    assert_eq!(c.recv_error().await["errorType"], "REGISTRATION_REQUIRED");

    // malformed
    c.send_text("{not json").await;
    let e = c.recv_error().await;
    assert_eq!(e["errorType"], "INVALID_MESSAGE");
    assert!(e["details"].as_str().unwrap().starts_with("Invalid JSON"));
    assert!(e["timestamp"].as_str().unwrap().ends_with('Z'));
    c.send(json!({"type":"teleport","payload":{},"requestId":"q"}))
        .await;
    let e = c.recv_error().await;
    assert_eq!(e["details"], "Unknown message type: teleport");
    assert_eq!(e["requestId"], "q");
    c.send(json!({"type":"register","payload":{"publicKey":[1]}}))
        .await;
    let e = c.recv_error().await;
    assert_eq!(e["errorType"], "INVALID_MESSAGE");
    assert!(e["details"].as_str().unwrap().contains("clientId"));
    c.send(json!({"type":"register","payload":{"clientId":"has space","publicKey":[1]}}))
        .await;
    assert_eq!(c.recv_error().await["errorType"], "INVALID_MESSAGE");

    // bad keys
    c.send(json!({"type":"register","payload":{"clientId":"a","publicKey":[1,2,3]}}))
        .await;
    let e = c.recv_error().await;
    assert_eq!(e["errorType"], "INVALID_PUBLIC_KEY");
    assert!(e["details"].as_str().unwrap().contains("3 bytes"));
    c.send(json!({"type":"register","payload":{"clientId":"a","publicKey":"!!"}}))
        .await;
    assert_eq!(c.recv_error().await["errorType"], "INVALID_PUBLIC_KEY");

    // the connection survived all of it
    let id = new_identity();
    c.send(
        json!({"type":"register","payload":{"clientId":"a","publicKey": B64.encode(kem_key(&id))}}),
    )
    .await;
    let r = c.recv_type("register").await;
    assert_eq!(r["payload"]["success"], true);

    // one socket, one id
    c.send(json!({"type":"register","payload":{"clientId":"b","publicKey":kem_key(&id)}}))
        .await;
    assert_eq!(c.recv_error().await["errorType"], "INVALID_MESSAGE");
    // re-registering the same id on the same socket is an idempotent retry
    c.send(json!({"type":"register","payload":{"clientId":"a","publicKey":kem_key(&id)},"requestId":"again"})).await;
    let r = c.recv_type("register").await;
    assert_eq!(r["requestId"], "again");

    // keys of unknown peers; unknown questions
    c.send(json!({"type":"request_public_key","payload":{"targetId":"ghost"}}))
        .await;
    let e = c.recv_error().await;
    assert_eq!(e["errorType"], "PEER_NOT_FOUND");
    c.send(json!({"type":"peer_response","payload":{"questionId":"nope","response":"x"}}))
        .await;
    assert_eq!(c.recv_error().await["errorType"], "UNKNOWN_QUESTION");
    server.shutdown().await;
}

#[tokio::test]
async fn oversized_frames_get_an_error_and_the_connection_lives() {
    let server = spawn_server().await;
    let (mut c, _) = register_unverified(&server.url(), "big").await;
    let pad = "x".repeat(300 * 1024);
    c.send(json!({"type":"discover","payload":{"pad": pad},"requestId":"too-big"}))
        .await;
    let e = c.recv_error().await;
    assert_eq!(e["errorType"], "MESSAGE_TOO_LARGE");
    assert_eq!(e["requestId"], "too-big", "the error names the request");
    let d = c
        .request(json!({"type":"discover","payload":{}}), "discover")
        .await;
    assert_eq!(d["payload"]["peers"], json!(["big"]));
    // beyond the transport limit the connection is closed with 1009 and a reason
    let huge = "y".repeat(2 * 1024 * 1024);
    let _ = futures_util::SinkExt::send(
        &mut c.ws,
        tokio_tungstenite::tungstenite::Message::Text(huge.into()),
    )
    .await;
    let close = c.recv_close().await.expect("a close frame with a reason");
    assert_eq!(u16::from(close.code), 1009);
    assert_eq!(close.reason.as_str(), "frame exceeds the transport limit");
    server.shutdown().await;
}

#[tokio::test]
async fn websocket_protocol_violations_close_with_their_code_and_the_server_lives_on() {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::Message;
    let server = spawn_server().await;
    let url = server.url();
    // a text message that is not UTF-8: 1007
    let (mut c, _) = register_unverified(&url, "utf8").await;
    let bad = Frame::message(vec![b'{', 0xC3, 0x28], OpCode::Data(Data::Text), true);
    let _ = futures_util::SinkExt::send(&mut c.ws, Message::Frame(bad)).await;
    let close = c.recv_close().await.expect("a close frame with a reason");
    assert_eq!(u16::from(close.code), 1007);
    assert_eq!(close.reason.as_str(), "text message is not valid UTF-8");
    // a fragmented control frame: 1002, with what was wrong
    let (mut c, _) = register_unverified(&url, "fragmented-ping").await;
    let mut ping = Frame::ping(vec![1, 2, 3]);
    ping.header_mut().is_final = false;
    let _ = futures_util::SinkExt::send(&mut c.ws, Message::Frame(ping)).await;
    let close = c.recv_close().await.expect("a close frame with a reason");
    assert_eq!(u16::from(close.code), 1002);
    assert_eq!(close.reason.as_str(), "fragmented control frame");
    // a message in fragments is reassembled and handled like any other
    let (mut c, _) = register_unverified(&url, "fragments").await;
    let text = br#"{"type":"discover","payload":{},"requestId":"in-parts"}"#;
    let (head, tail) = text.split_at(10);
    let first = Frame::message(head.to_vec(), OpCode::Data(Data::Text), false);
    let rest = Frame::message(tail.to_vec(), OpCode::Data(Data::Continue), true);
    futures_util::SinkExt::send(&mut c.ws, Message::Frame(first))
        .await
        .unwrap();
    futures_util::SinkExt::send(&mut c.ws, Message::Frame(rest))
        .await
        .unwrap();
    let d = c.recv_type("discover").await;
    assert_eq!(d["requestId"], "in-parts");
    // the server lives on
    let (mut after, _) = register_unverified(&url, "after").await;
    let d = after
        .request(json!({"type":"discover","payload":{}}), "discover")
        .await;
    assert!(d["payload"]["peers"]
        .as_array()
        .unwrap()
        .contains(&json!("after")));
    server.shutdown().await;
}

#[tokio::test]
async fn http_endpoints() {
    let server = spawn_server().await;
    let base = server.admin_url();
    let h: serde_json::Value = reqwest::get(format!("{base}/healthz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(h["status"], "ok");
    let m = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(m.contains("lattice_connections_total"));
    // a plain GET on the WebSocket path explains itself
    let r = reqwest::get(format!("{base}/")).await.unwrap();
    assert_eq!(r.status().as_u16(), 426);
    // the upgrade works on any path
    let (_c, _) = register_unverified(&format!("{}/ws", server.url()), "pathy").await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_pipelined_burst_is_answered_in_full_and_in_order() {
    // Regression: frames beyond one read batch must never be dropped.
    let server = spawn_server().await;
    let (mut c, _) = register_unverified(&server.url(), "burst").await;
    for i in 0..300 {
        c.send(json!({"type":"discover","payload":{},"requestId":format!("r{i}")}))
            .await;
    }
    for i in 0..300 {
        let d = c.recv_type("discover").await;
        assert_eq!(d["requestId"], format!("r{i}"));
    }
    server.shutdown().await;
}
