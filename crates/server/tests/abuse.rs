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

/// Attack: a client bursts far over its rate limit (frames with request ids, and messages).
/// Asserts: it is paced, not refused: every frame gets its own answer (matching `requestId`),
/// every message is delivered, no `RATE_LIMITED`, and the connection stays open.
#[tokio::test]
async fn a_client_bursting_over_the_rate_is_paced_and_loses_nothing() {
    let server = spawn_with(Config {
        rate_limit: 25,
        ..Config::for_tests()
    })
    .await;
    let url = server.url();
    let (mut fast, _) = register_unverified(&url, "fast").await;
    let (mut bob, _) = register_unverified(&url, "bob").await;
    // 4x the burst allowance (50), sent as fast as the socket takes them
    let total = 200;
    for i in 0..total {
        if i % 2 == 0 {
            fast.send(json!({"type":"message","requestId":format!("r{i}"),
                "payload":{"targetId":"bob","messageId":format!("m{i}"),"message":envelope(&i.to_string())}}))
                .await;
        } else {
            fast.send(
                json!({"type":"request_public_key","requestId":format!("r{i}"),
                "payload":{"targetId":"bob"}}),
            )
            .await;
        }
    }
    let mut answered = std::collections::HashSet::new();
    while answered.len() < total {
        let v = fast.recv().await;
        let t = v["type"].as_str().unwrap_or_default();
        assert!(
            t == "message_ack" || t == "public_key_response",
            "only answers, no refusals: {v}"
        );
        answered.insert(v["requestId"].as_str().unwrap().to_owned());
    }
    assert!((0..total).all(|i| answered.contains(&format!("r{i}"))));
    let mut delivered = std::collections::HashSet::new();
    while delivered.len() < total / 2 {
        let m = bob.recv_type("message").await;
        delivered.insert(m["payload"]["messageId"].as_str().unwrap().to_owned());
    }
    // still open and served
    let d = fast
        .request(
            json!({"type":"discover","payload":{},"requestId":"last"}),
            "discover",
        )
        .await;
    assert_eq!(d["requestId"], "last");
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

/// Seeded mutations of valid frames: every one gets an answer or a policy close, no session task
/// panics, and the server keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_frames_never_panic_the_server() {
    use rand::{Rng as _, SeedableRng as _};
    static PANICKED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICKED.store(true, std::sync::atomic::Ordering::SeqCst);
        previous(info);
    }));

    let server = spawn_server().await;
    let url = server.url();
    let key = kem_key(&new_identity());
    let seeds: Vec<String> = vec![
        json!({"type":"discover","payload":{},"requestId":"r"}).to_string(),
        json!({"type":"request_public_key","payload":{"targetId":"someone"}}).to_string(),
        format!(
            r#"{{"type":"message","payload":{{"targetId":"fuzz","message":{},"messageId":"m1"}}}}"#,
            envelope("x")
        ),
        json!({"type":"peer_response","payload":{"questionId":"q","response":"a"}}).to_string(),
        json!({"type":"ack","payload":{"messageId":"m1"}}).to_string(),
        json!({"type":"challenge","payload":{}}).to_string(),
        json!({"type":"register","payload":{"clientId":"other","publicKey":key.clone()}})
            .to_string(),
        json!({"type":"debug_question","payload":{}}).to_string(),
    ];
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x01a7_71ce);
    let mut c = register_unverified(&url, "fuzz").await.0;
    let mut closes = 0;
    for i in 0..3000 {
        let seed = &seeds[rng.gen_range(0..seeds.len())];
        let mut bytes = seed.as_bytes().to_vec();
        match rng.gen_range(0..6) {
            0 => {
                let n = rng.gen_range(1..8);
                for _ in 0..n {
                    let at = rng.gen_range(0..bytes.len());
                    bytes[at] = rng.gen();
                }
            }
            1 => bytes.truncate(rng.gen_range(0..bytes.len())),
            2 => {
                let at = rng.gen_range(0..bytes.len());
                let junk: Vec<u8> = (0..rng.gen_range(1..40))
                    .map(|_| rng.gen_range(0x20..0x7f))
                    .collect();
                bytes.splice(at..at, junk);
            }
            3 => {
                let depth = rng.gen_range(100..5000);
                bytes = format!(
                    r#"{{"type":"discover","payload":{{"x":{}{}}}}}"#,
                    "[".repeat(depth),
                    "]".repeat(depth)
                )
                .into_bytes();
            }
            4 => {
                bytes = format!(
                    r#"{{"type":"message","payload":{{"targetId":"fuzz","message":{{"n":{}}}}}}}"#,
                    "9".repeat(rng.gen_range(1..400))
                )
                .into_bytes()
            }
            _ => bytes = seed.replace("\"type\"", "\"type\",\"type\"").into_bytes(),
        }
        let text = String::from_utf8_lossy(&bytes).into_owned();
        if futures_util::SinkExt::send(&mut c.ws, Message::Text(text.into()))
            .await
            .is_err()
        {
            c = register_unverified(&url, &format!("fuzz{i}")).await.0;
            closes += 1;
            continue;
        }
        // After every frame the connection is still in order: a sentinel request is answered,
        // unless the invalid-frame policy closed it. Read raw: a message to ourselves carries the
        // sender's envelope verbatim (forwarded opaque), which a strict JSON parser may refuse.
        let sentinel = format!("s{i}");
        let _ = futures_util::SinkExt::send(
            &mut c.ws,
            Message::Text(
                json!({"type":"discover","payload":{},"requestId":sentinel})
                    .to_string()
                    .into(),
            ),
        )
        .await;
        loop {
            let answer = tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut c.ws))
                .await
                .expect("an answer within the wait bound");
            match answer {
                Some(Ok(Message::Text(t))) => {
                    assert!(t.starts_with(r#"{"type":""#), "{t}");
                    if t.contains(&format!(r#""requestId":"{sentinel}""#)) {
                        break;
                    }
                }
                Some(Ok(Message::Close(close))) => {
                    if let Some(f) = close {
                        assert_eq!(
                            u16::from(f.code),
                            1008,
                            "only the invalid-frame policy closes"
                        );
                    }
                    c = register_unverified(&url, &format!("fuzz{i}")).await.0;
                    closes += 1;
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    c = register_unverified(&url, &format!("fuzz{i}")).await.0;
                    closes += 1;
                    break;
                }
            }
        }
    }
    assert!(
        !PANICKED.load(std::sync::atomic::Ordering::SeqCst),
        "a server task panicked"
    );
    // still serving
    let (mut fresh, _) = register_unverified(&url, "after-fuzz").await;
    let d = fresh
        .request(json!({"type":"discover","payload":{}}), "discover")
        .await;
    assert!(d["payload"]["peers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p == "after-fuzz"));
    println!("3000 mutated frames, {closes} policy closes");
    server.shutdown().await;
}
