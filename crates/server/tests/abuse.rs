//! Hostile and broken clients: garbage floods, rate limits and the connection cap never disturb
//! another client's conversation.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use futures_util::SinkExt as _;
use lattice_server::Config;
use serde_json::json;
use support::*;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn a_garbage_flood_is_closed_while_others_keep_talking() {
    let server = spawn_server().await;
    let url = server.url();
    let (mut alice, _) = register_unverified(&url, "alice").await;
    let (mut bob, _) = register_unverified(&url, "bob").await;

    let flooder = tokio::spawn({
        let url = url.clone();
        async move {
            let mut c = Client::connect(&url).await;
            let mut sent = 0;
            for i in 0..10_000 {
                let junk = match i % 4 {
                    0 => "{{{".to_owned(),
                    1 => json!({"type":"nope","payload":{}}).to_string(),
                    2 => "\u{0}\u{1}binaryish".to_owned(),
                    _ => json!({"type":"message"}).to_string(),
                };
                if c.ws.send(Message::Text(junk.into())).await.is_err() {
                    break;
                }
                sent += 1;
            }
            // read until the server closes us; count the errors it answered with
            let mut errors = 0;
            let close = loop {
                match c.next().await {
                    Next::Frame(v) => {
                        assert_eq!(v["type"], "error");
                        errors += 1;
                    }
                    Next::Closed(close) => break close,
                }
            };
            (sent, errors, close)
        }
    });

    // meanwhile alice and bob chat
    for i in 0..50 {
        alice.send(json!({"type":"message","payload":{"targetId":"bob","message":envelope(&i.to_string())}})).await;
        let m = bob.recv_type("message").await;
        assert_eq!(m["payload"]["message"], envelope(&i.to_string()));
    }
    let (sent, errors, close) = flooder.await.unwrap();
    assert!(sent > 0);
    assert!(
        errors >= 1,
        "invalid frames were answered with errors first"
    );
    let close = close.expect("closed with a close frame");
    assert_eq!(u16::from(close.code), 1008);
    assert_eq!(close.reason.as_str(), "too many invalid frames");
    // and the conversation is still fine
    bob.send(json!({"type":"message","payload":{"targetId":"alice","message":envelope("after")}}))
        .await;
    assert_eq!(alice.recv_type("message").await["payload"]["fromId"], "bob");
    server.shutdown().await;
}

#[tokio::test]
async fn rate_limited_frames_get_typed_errors() {
    let server = spawn_with(Config {
        rate_limit: 5,
        ..Config::for_tests()
    })
    .await;
    let (mut c, _) = register_unverified(&server.url(), "fast").await;
    for _ in 0..30 {
        c.send(json!({"type":"discover","payload":{}})).await;
    }
    let mut limited = 0;
    let mut answered = 0;
    for _ in 0..30 {
        let v = c.recv().await;
        match v["type"].as_str().unwrap() {
            "discover" => answered += 1,
            "error" => {
                assert_eq!(v["payload"]["errorType"], "RATE_LIMITED");
                limited += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(limited > 0, "some frames were limited");
    assert!(answered > 0, "the burst allowance was served");
    server.shutdown().await;
}

#[tokio::test]
async fn the_connection_cap_refuses_with_503() {
    let server = spawn_with(Config {
        max_connections: 2,
        ..Config::for_tests()
    })
    .await;
    let url = server.url();
    let (_a, _) = register_unverified(&url, "a").await;
    let (_b, _) = register_unverified(&url, "b").await;
    let err = tokio_tungstenite::connect_async(&url).await.unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(r) => assert_eq!(r.status().as_u16(), 503),
        other => panic!("expected HTTP 503, got {other:?}"),
    }
    server.shutdown().await;
}

#[tokio::test]
async fn binary_frames_are_refused_politely() {
    let server = spawn_server().await;
    let mut c = Client::connect(&server.url()).await;
    c.ws.send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    let e = c.recv_error().await;
    assert_eq!(e["errorType"], "INVALID_MESSAGE");
    server.shutdown().await;
}
