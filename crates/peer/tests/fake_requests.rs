//! The client against a scripted fake server: request matching by id and by type and filter,
//! retries that reuse the request id, late answers, the error handler, register retries, paging.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use lattice_peer::{ErrorAction, MessagingPeer, PeerError, PeerEvent, WaitOptions};
use lattice_protocol::{ClientFrame, ErrorType, RequestPublicKey, ServerFrame};
use serde_json::json;
use support::fake::{error_frame, key_payload, FakeServer, B64};
use support::scripted::*;
use support::*;

#[tokio::test]
async fn answers_match_by_request_id_amid_unrelated_frames() {
    let mut fake = FakeServer::start().await;
    let cfg = test_config(&fake.url, "alice", new_identity());
    let (peer, mut conn) = connected(&mut fake, cfg).await;
    let mut events = peer.events();
    let waiting = discover(&peer, WaitOptions::default());
    let req = conn.expect("discover").await;
    let rid = req["requestId"].clone();
    assert!(rid.is_string());
    // Unrelated traffic: presence, a question, a discover answer for another request.
    conn.send(json!({"type": "peer_connected", "payload": {"peerId": "zed"}}))
        .await;
    conn.send(json!({"type": "server_question", "payload": {"questionId": "q1", "question": {"text": "hi?"}}})).await;
    conn.send(
        json!({"type": "discover", "payload": {"peers": ["wrong"]}, "requestId": "someone-else"}),
    )
    .await;
    conn.send(
        json!({"type": "public_key_response", "payload": key_payload("zed", &new_identity())}),
    )
    .await;
    conn.send(
        json!({"type": "discover", "payload": {"peers": ["alice", "bob"]}, "requestId": rid}),
    )
    .await;
    let answer = waiting.await.unwrap().unwrap();
    assert_eq!(peers_of(&answer), ["alice", "bob"]);
    // The unrelated frames surfaced as events, not as answers.
    wait_for(&mut events, |e| {
        matches!(e, PeerEvent::PeerConnected(p) if p.as_str() == "zed").then_some(())
    })
    .await;
    wait_for(&mut events, |e| {
        matches!(e, PeerEvent::ServerQuestion(q) if q.question.text == "hi?").then_some(())
    })
    .await;
}

#[tokio::test]
async fn retries_reuse_the_request_id_and_time_out_in_the_end() {
    let mut fake = FakeServer::start().await;
    let cfg = test_config(&fake.url, "alice", new_identity());
    let (peer, mut conn) = connected(&mut fake, cfg).await;
    let opts = WaitOptions::default()
        .timeout(Duration::from_millis(150))
        .retries(2);
    let waiting = discover(&peer, opts);
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(conn.expect("discover").await["requestId"].clone());
    }
    assert!(
        ids.iter().all(|i| *i == ids[0]),
        "every attempt reuses the request id: {ids:?}"
    );
    match waiting.await.unwrap() {
        Err(PeerError::Timeout {
            attempts: 3,
            expected,
            ..
        }) => assert_eq!(expected, "discover"),
        other => panic!("expected a timeout after 3 attempts, got {other:?}"),
    }
}

#[tokio::test]
async fn a_late_answer_to_the_first_attempt_resolves_the_retried_request() {
    let mut fake = FakeServer::start().await;
    let cfg = test_config(&fake.url, "alice", new_identity());
    let (peer, mut conn) = connected(&mut fake, cfg).await;
    let opts = WaitOptions::default()
        .timeout(Duration::from_millis(150))
        .retries(3);
    let waiting = discover(&peer, opts);
    let first = conn.expect("discover").await;
    let _retry = conn.expect("discover").await;
    conn.send(json!({"type": "discover", "payload": {"peers": ["late"]}, "requestId": first["requestId"]})).await;
    assert_eq!(peers_of(&waiting.await.unwrap().unwrap()), ["late"]);
}

#[tokio::test]
async fn the_error_handler_decides_fail_retry_or_ignore() {
    let mut fake = FakeServer::start().await;
    let cfg = test_config(&fake.url, "alice", new_identity());
    let (peer, mut conn) = connected(&mut fake, cfg).await;
    let seen = Arc::new(AtomicUsize::new(0));
    let s = Arc::clone(&seen);
    let opts = WaitOptions::default().retries(1).error_handler(move |e| {
        s.fetch_add(1, Ordering::SeqCst);
        match e.error_type {
            ErrorType::RateLimited => ErrorAction::Retry,
            ErrorType::InternalError => ErrorAction::Ignore,
            _ => ErrorAction::Fail,
        }
    });
    let waiting = discover(&peer, opts.clone());
    let req = conn.expect("discover").await;
    conn.send(error_frame("RATE_LIMITED", Some(&req["requestId"])))
        .await;
    let again = conn.expect("discover").await;
    assert_eq!(again["requestId"], req["requestId"]);
    conn.send(error_frame("INTERNAL_ERROR", Some(&req["requestId"])))
        .await;
    conn.send(error_frame("PEER_NOT_FOUND", Some(&req["requestId"])))
        .await;
    match waiting.await.unwrap() {
        Err(PeerError::Server {
            error_type: ErrorType::PeerNotFound,
            ..
        }) => {}
        other => panic!("expected PEER_NOT_FOUND, got {other:?}"),
    }
    assert_eq!(seen.load(Ordering::SeqCst), 3);

    // Ignore, then the real answer.
    let waiting = discover(&peer, opts);
    let req = conn.expect("discover").await;
    conn.send(error_frame("INTERNAL_ERROR", Some(&req["requestId"])))
        .await;
    conn.send(
        json!({"type": "discover", "payload": {"peers": ["ok"]}, "requestId": req["requestId"]}),
    )
    .await;
    assert_eq!(peers_of(&waiting.await.unwrap().unwrap()), ["ok"]);

    // No handler: the error fails the request.
    let waiting = discover(&peer, WaitOptions::default());
    let req = conn.expect("discover").await;
    conn.send(error_frame("RATE_LIMITED", Some(&req["requestId"])))
        .await;
    assert_eq!(
        waiting.await.unwrap().unwrap_err().error_type(),
        Some(ErrorType::RateLimited)
    );
}

#[tokio::test]
async fn an_error_for_another_request_or_none_disturbs_no_waiter() {
    let mut fake = FakeServer::start().await;
    let cfg = test_config(&fake.url, "alice", new_identity());
    let (peer, mut conn) = connected(&mut fake, cfg).await;
    let mut events = peer.events();
    let waiting = discover(&peer, WaitOptions::default());
    let req = conn.expect("discover").await;
    let mut not_ours = error_frame("PEER_NOT_FOUND", Some(&json!("not-ours")));
    not_ours["payload"]["details"] = json!("not-ours");
    conn.send(not_ours).await;
    conn.send(error_frame("PEER_NOT_FOUND", None)).await;
    conn.send(
        json!({"type": "discover", "payload": {"peers": ["fine"]}, "requestId": req["requestId"]}),
    )
    .await;
    assert_eq!(peers_of(&waiting.await.unwrap().unwrap()), ["fine"]);
    // The error without a request id is reported; the one naming a request this client never
    // sent is not (it came first, so it would have been reported first).
    none_before(
        &mut events,
        |e| matches!(e, PeerEvent::Error(PeerError::Server { details, .. }) if details == "not-ours"),
        |e| match e {
            PeerEvent::Error(PeerError::Server {
                error_type: ErrorType::PeerNotFound,
                ..
            }) => Some(()),
            _ => None,
        },
    )
    .await;
    // An error naming a request this client did send (a fire-and-forget answer) is reported.
    peer.respond_to_server(&lattice_protocol::QuestionId::new("q").unwrap(), "x")
        .unwrap();
    let answer = conn.expect("peer_response").await;
    conn.send(error_frame("UNKNOWN_QUESTION", Some(&answer["requestId"])))
        .await;
    wait_for(&mut events, |e| match e {
        PeerEvent::Error(PeerError::Server {
            error_type: ErrorType::UnknownQuestion,
            ..
        }) => Some(()),
        _ => None,
    })
    .await;
}

#[tokio::test]
async fn frames_without_request_id_match_by_type_and_filter() {
    let mut fake = FakeServer::start().await;
    let cfg = test_config(&fake.url, "alice", new_identity());
    let (peer, mut conn) = connected(&mut fake, cfg).await;
    let p = peer.clone();
    let waiting = tokio::spawn(async move {
        let frame = ClientFrame::RequestPublicKey(RequestPublicKey {
            target_id: id("carol"),
        });
        let opts = WaitOptions::default()
            .filter(|f| matches!(f, ServerFrame::PublicKey(k) if k.peer_id.as_str() == "carol"));
        p.send_to_server_and_wait(frame, "public_key_response", opts)
            .await
    });
    conn.expect("request_public_key").await;
    // An original server: no request ids. Bob's key is filtered out, carol's is taken.
    conn.send(
        json!({"type": "public_key_response", "payload": key_payload("bob", &new_identity())}),
    )
    .await;
    conn.send(
        json!({"type": "public_key_response", "payload": key_payload("carol", &new_identity())}),
    )
    .await;
    match waiting.await.unwrap().unwrap() {
        ServerFrame::PublicKey(k) => assert_eq!(k.peer_id.as_str(), "carol"),
        other => panic!("{other:?}"),
    }
    // An unknown expected type is refused before sending.
    let err = peer
        .send_to_server_and_wait(
            ClientFrame::Discover(Default::default()),
            "no_such_type",
            WaitOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, PeerError::InvalidArgument(_)));
}

#[tokio::test]
async fn a_register_retry_never_collides_with_its_own_slow_success() {
    let mut fake = FakeServer::start().await;
    let mut cfg = test_config(&fake.url, "alice", new_identity());
    cfg.timeouts.request = Duration::from_millis(200);
    let peer = MessagingPeer::new(cfg).unwrap();
    let mut events = peer.events();
    let p = peer.clone();
    let task = tokio::spawn(async move { p.connect().await });
    let mut conn = fake.next_conn().await;
    let c = conn.expect("challenge").await;
    conn.send(json!({"type": "challenge", "payload": {"nonce": B64.encode([1u8; 32])}, "requestId": c["requestId"]})).await;
    let first = conn.expect("register").await;
    // Too slow: the client retries with the same request id.
    let retry = conn.expect("register").await;
    assert_eq!(first["requestId"], retry["requestId"]);
    assert_eq!(first["payload"], retry["payload"]);
    // The first attempt's success arrives, then the retry's CLIENT_ID_TAKEN.
    conn.send(json!({"type": "register", "payload": {"success": true, "clientId": "alice", "verified": true}, "requestId": first["requestId"]})).await;
    conn.send(error_frame("CLIENT_ID_TAKEN", Some(&first["requestId"])))
        .await;
    task.await.unwrap().unwrap();
    assert!(peer.is_verified());
    // The stale error is dropped quietly: the next event after it is the answer to a fresh request.
    let waiting = discover(&peer, WaitOptions::default());
    let req = conn.expect("discover").await;
    conn.send(json!({"type": "discover", "payload": {"peers": []}, "requestId": req["requestId"]}))
        .await;
    waiting.await.unwrap().unwrap();
    conn.send(json!({"type": "peer_connected", "payload": {"peerId": "marker"}}))
        .await;
    none_before(
        &mut events,
        |e| matches!(e, PeerEvent::Error(_)),
        |e| matches!(e, PeerEvent::PeerConnected(_)).then_some(()),
    )
    .await;
    // The registration carried a verifiable proof.
    let v = &first["payload"]["verification"];
    assert_eq!(v["algorithm"], "ed25519");
    assert!(first["payload"]["keySignature"].is_string());
    assert_eq!(
        first["payload"]["publicKey"].as_array().unwrap().len(),
        1184
    );
}

#[tokio::test]
async fn discover_reads_every_page_and_stops_at_the_last() {
    let mut fake = FakeServer::start().await;
    let cfg = test_config(&fake.url, "alice", new_identity());
    let (peer, mut conn) = connected(&mut fake, cfg).await;
    let p = peer.clone();
    let listing = tokio::spawn(async move { p.discover_peers().await });

    let first = conn.expect("discover").await;
    assert!(first["payload"].get("cursor").is_none(), "{first}");
    conn.send(json!({
        "type": "discover", "requestId": first["requestId"],
        "payload": {"peers": ["alice", "bob"], "more": true, "cursor": "bob"}
    }))
    .await;
    let second = conn.expect("discover").await;
    assert_eq!(second["payload"]["cursor"], "bob");
    // An answer of the original shape (no `more`) is the last page.
    conn.send(json!({
        "type": "discover", "requestId": second["requestId"],
        "payload": {"peers": ["carol"]}
    }))
    .await;
    let peers = listing.await.unwrap().unwrap();
    assert_eq!(
        peers.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
        ["bob", "carol"],
        "every page, without ourselves"
    );
    peer.disconnect().await;
}
