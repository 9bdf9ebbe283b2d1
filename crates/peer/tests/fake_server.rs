//! The client against a scripted fake server: request matching, retries, keepalive, and messages a
//! real server would never relay (forged, replayed, tampered, downgraded).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lattice_crypto::{
    lattice_v1, message_signature_payload, ml_kem_aes, Fingerprint, Identity, KemPublicKey,
};
use lattice_peer::{
    ConnectionState, ErrorAction, MemoryReplayStore, MessagingPeer, PeerConfig, PeerError,
    PeerEvent, RejectReason, ReplayStore as _, WaitOptions,
};
use lattice_protocol::{ClientFrame, ErrorType, RequestPublicKey, ServerFrame};
use serde_json::{json, Value};
use support::fake::{error_frame, key_payload, FakeConn, FakeServer, B64};
use support::*;

use base64::Engine as _;

async fn connected(fake: &mut FakeServer, cfg: PeerConfig) -> (MessagingPeer, FakeConn) {
    let peer = MessagingPeer::new(cfg).unwrap();
    let p = peer.clone();
    let task = tokio::spawn(async move { p.connect().await });
    let mut conn = fake.next_conn().await;
    conn.accept_registration().await;
    task.await.unwrap().unwrap();
    (peer, conn)
}

/// Alice connected to a fresh fake server: the server (keep it alive), the peer, its connection
/// as the server sees it, her event stream, and her KEM key (to seal messages to her).
async fn alice() -> (
    FakeServer,
    MessagingPeer,
    FakeConn,
    lattice_peer::EventStream,
    KemPublicKey,
) {
    let mut fake = FakeServer::start().await;
    let cfg = test_config(&fake.url, "alice", new_identity());
    let kem = cfg.identity.kem_public_key().clone();
    let (peer, conn) = connected(&mut fake, cfg).await;
    let events = peer.events();
    (fake, peer, conn, events, kem)
}

/// `peer` asks for `name`'s key while the fake server answers with `identity`'s.
async fn fetch_key(
    peer: &MessagingPeer,
    conn: &mut FakeConn,
    name: &str,
    identity: &Identity,
) -> Result<lattice_peer::keys::PeerKey, PeerError> {
    let p = peer.clone();
    let target = id(name);
    let fetch = tokio::spawn(async move { p.request_public_key(&target).await });
    conn.serve_key(name, identity).await;
    fetch.await.unwrap()
}

/// `peer` accepts `name`'s key change with fingerprint `compared` while the fake server answers
/// the key request with `serving`'s keys.
async fn accept(
    peer: &MessagingPeer,
    conn: &mut FakeConn,
    name: &str,
    compared: &Fingerprint,
    serving: &Identity,
) -> Result<(), PeerError> {
    let p = peer.clone();
    let target = id(name);
    let fp = compared.clone();
    let task = tokio::spawn(async move { p.accept_key_change(&target, &fp).await });
    conn.serve_key(name, serving).await;
    task.await.unwrap()
}

fn fp(identity: &Identity) -> Fingerprint {
    identity.identity_public_key().fingerprint()
}

fn discover(
    peer: &MessagingPeer,
    opts: WaitOptions,
) -> tokio::task::JoinHandle<Result<ServerFrame, PeerError>> {
    let p = peer.clone();
    tokio::spawn(async move {
        p.send_to_server_and_wait(ClientFrame::Discover(Default::default()), "discover", opts)
            .await
    })
}

fn peers_of(f: &ServerFrame) -> Vec<String> {
    match f {
        ServerFrame::Peers(p) => p.peers.iter().map(|p| p.to_string()).collect(),
        other => panic!("not a discover answer: {other:?}"),
    }
}

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
async fn keepalive_detects_a_dead_connection_and_reconnects() {
    let mut fake = FakeServer::start().await;
    let mut cfg = test_config(&fake.url, "alice", new_identity());
    cfg.timeouts.ping_interval = Duration::from_millis(100);
    cfg.timeouts.pong_timeout = Duration::from_millis(150);
    let (peer, conn) = connected(&mut fake, cfg).await;
    let mut events = peer.events();
    // The server stops reading: pings go unanswered.
    let _silent = conn.into_silent();
    wait_for(&mut events, |e| {
        matches!(
            e,
            PeerEvent::ConnectionState(ConnectionState::Reconnecting { .. })
        )
        .then_some(())
    })
    .await;
    let mut conn2 = fake.next_conn().await;
    conn2.accept_registration().await;
    wait_for(&mut events, |e| {
        matches!(e, PeerEvent::ConnectionState(ConnectionState::Connected)).then_some(())
    })
    .await;
    peer.disconnect().await;
    assert_eq!(peer.connection_state(), ConnectionState::Disconnected);
}

// ---- incoming message checks ----

struct Sender<'a> {
    id: &'a str,
    signer: &'a Identity,
}

fn v1_payload(
    from: &Sender<'_>,
    to: &str,
    to_kem: &KemPublicKey,
    mid: &str,
    inner_mid: &str,
    body: &str,
) -> Value {
    v1_payload_at(from, to, to_kem, mid, inner_mid, body, now_ms())
}

fn now_ms() -> u64 {
    u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// [`v1_payload`] with a chosen signed `sentAt` (unix ms).
fn v1_payload_at(
    from: &Sender<'_>,
    to: &str,
    to_kem: &KemPublicKey,
    mid: &str,
    inner_mid: &str,
    body: &str,
    sent_at: u64,
) -> Value {
    let payload =
        message_signature_payload(from.id, to, inner_mid, sent_at, body.as_bytes()).unwrap();
    let sig = from.signer.identity_key().sign(&payload);
    let inner = json!({"v": 1, "kind": "text", "messageId": inner_mid, "body": body, "sentAt": sent_at, "sig": B64.encode(sig)});
    let ctx = lattice_v1::Context {
        sender_id: from.id,
        recipient_id: to,
        message_id: mid,
    };
    let sealed = lattice_v1::seal(
        &mut rand_core::OsRng,
        to_kem,
        &ctx,
        inner.to_string().as_bytes(),
    )
    .unwrap();
    json!({
        "message": {"algorithm": "lattice-v1", "serializedCipherText": B64.encode(&sealed.cipher_text), "serializedEncryptedData": B64.encode(&sealed.encrypted_data)},
        "fromId": from.id, "timestamp": 1, "messageId": mid,
    })
}

fn ml_kem_aes_payload(from: &str, to_kem: &KemPublicKey, mid: Option<&str>, text: &str) -> Value {
    let sealed = ml_kem_aes::seal(&mut rand_core::OsRng, to_kem, text.as_bytes()).unwrap();
    let mut v = json!({
        "message": {"algorithm": "ml-kem-aes", "serializedCipherText": B64.encode(&sealed.cipher_text), "serializedEncryptedData": B64.encode(&sealed.encrypted_data)},
        "fromId": from, "timestamp": 2,
    });
    if let Some(m) = mid {
        v["messageId"] = json!(m);
    }
    v
}

fn msg(payload: Value) -> Value {
    json!({"type": "message", "payload": payload})
}

async fn expect_rejected(events: &mut lattice_peer::EventStream, mid: &str) -> RejectReason {
    let mid = mid.to_owned();
    none_before(
        events,
        |e| matches!(e, PeerEvent::Message(m) if m.message_id.as_ref().is_some_and(|i| i.as_str() == mid)),
        |e| match e {
            PeerEvent::Error(PeerError::Rejected { message_id: Some(m), reason, .. }) if m.as_str() == mid => Some(reason.clone()),
            _ => None,
        },
    )
    .await
}

#[tokio::test]
async fn forged_replayed_tampered_and_downgraded_messages_never_reach_handlers() {
    let (_fake, peer, mut conn, mut events, alice_kem) = alice().await;
    let delivered = Arc::new(AtomicUsize::new(0));
    let d = Arc::clone(&delivered);
    peer.on_message(move |_| {
        d.fetch_add(1, Ordering::SeqCst);
    });
    let bob = new_identity();
    let mallory = new_identity();
    let b = Sender {
        id: "bob",
        signer: &bob,
    };

    // 1. A genuine message: alice fetches and pins bob's key, then delivers it verified.
    let good = v1_payload(&b, "alice", &alice_kem, "m-1", "m-1", "hello alice");
    conn.send(msg(good.clone())).await;
    conn.serve_key("bob", &bob).await;
    let m = wait_for(&mut events, |e| match e {
        PeerEvent::Message(m) => Some(m),
        _ => None,
    })
    .await;
    assert_eq!(
        (m.from.as_str(), m.text.as_str(), m.verified),
        ("bob", "hello alice", true)
    );
    let ack = conn.expect("ack").await;
    assert_eq!(ack["payload"]["messageId"], "m-1");
    // The ack names the sender: only (sender, messageId) names one message on the server.
    assert_eq!(ack["payload"]["fromId"], "bob");

    // 2. The same frame again (a replay, or the server redelivering): dropped silently and acked;
    //    never delivered twice (the count at the end).
    conn.send(msg(good)).await;
    assert_eq!(conn.expect("ack").await["payload"]["messageId"], "m-1");

    // 3. Tampered ciphertext.
    let mut tampered = v1_payload(&b, "alice", &alice_kem, "m-2", "m-2", "pay 10");
    let data = tampered["message"]["serializedEncryptedData"]
        .as_str()
        .unwrap();
    let mut bytes = B64.decode(data).unwrap();
    let last = bytes.len() - 20;
    bytes[last] ^= 1;
    tampered["message"]["serializedEncryptedData"] = json!(B64.encode(bytes));
    conn.send(msg(tampered)).await;
    assert_eq!(
        expect_rejected(&mut events, "m-2").await,
        RejectReason::Decrypt
    );

    // 4. Forged: claims to be bob, signed by mallory. Alice re-checks bob's key (unchanged).
    let forged = v1_payload(
        &Sender {
            id: "bob",
            signer: &mallory,
        },
        "alice",
        &alice_kem,
        "m-3",
        "m-3",
        "trust me",
    );
    conn.send(msg(forged)).await;
    conn.serve_key("bob", &bob).await;
    assert_eq!(
        expect_rejected(&mut events, "m-3").await,
        RejectReason::BadSignature
    );

    // 5. Sealed for another message id / relabelled by the server.
    let mut relabelled = v1_payload(&b, "alice", &alice_kem, "m-4", "m-4", "x");
    relabelled["messageId"] = json!("m-5");
    conn.send(msg(relabelled)).await;
    assert_eq!(
        expect_rejected(&mut events, "m-5").await,
        RejectReason::Decrypt
    );
    let mismatch = v1_payload(&b, "alice", &alice_kem, "m-6", "m-other", "x");
    conn.send(msg(mismatch)).await;
    assert_eq!(
        expect_rejected(&mut events, "m-6").await,
        RejectReason::MessageIdMismatch
    );

    // 6. Unsigned ml-kem-aes in the name of bob, whose identity is pinned: a downgrade.
    conn.send(msg(ml_kem_aes_payload(
        "bob",
        &alice_kem,
        Some("m-7"),
        "unsigned",
    )))
    .await;
    assert_eq!(
        expect_rejected(&mut events, "m-7").await,
        RejectReason::Downgrade
    );

    // 7. Unknown algorithm, and a lattice-v1 message without messageId.
    let mut odd = ml_kem_aes_payload("carol", &alice_kem, Some("m-8"), "x");
    odd["message"]["algorithm"] = json!("rot13");
    conn.send(msg(odd)).await;
    assert!(matches!(
        expect_rejected(&mut events, "m-8").await,
        RejectReason::UnsupportedAlgorithm(_)
    ));

    // 8. An original client (no pinned identity): delivered, flagged unverified.
    conn.send(msg(ml_kem_aes_payload(
        "orig",
        &alice_kem,
        None,
        "hi from js",
    )))
    .await;
    let m = wait_for(&mut events, |e| match e {
        PeerEvent::Message(m) => Some(m),
        _ => None,
    })
    .await;
    assert_eq!(
        (m.from.as_str(), m.text.as_str(), m.verified),
        ("orig", "hi from js", false)
    );
    assert_eq!(
        delivered.load(Ordering::SeqCst),
        2,
        "only the genuine and the original-client message were delivered"
    );
}

#[tokio::test]
async fn a_changed_identity_key_is_caught_and_must_be_accepted() {
    let (_fake, peer, mut conn, mut events, alice_kem) = alice().await;
    let bob_old = new_identity();
    let bob_new = new_identity();

    // First use pins bob's key.
    let key = fetch_key(&peer, &mut conn, "bob", &bob_old).await.unwrap();
    assert_eq!(
        key.fingerprint(),
        Some(bob_old.identity_public_key().fingerprint())
    );
    assert_eq!(
        peer.peer_fingerprint(&id("bob")).unwrap(),
        key.fingerprint()
    );

    // The server now presents another identity for bob.
    assert!(matches!(
        fetch_key(&peer, &mut conn, "bob", &bob_new).await,
        Err(PeerError::KeyChanged { .. })
    ));
    let (old, new) = wait_for(&mut events, |e| match e {
        PeerEvent::KeyChanged { peer, old, new } if peer.as_str() == "bob" => Some((old, new)),
        _ => None,
    })
    .await;
    assert_eq!(old, bob_old.identity_public_key().fingerprint());
    assert_eq!(new, bob_new.identity_public_key().fingerprint());

    // Nothing is sent to bob, nor accepted from the new key, until the change is accepted.
    assert!(matches!(
        peer.send_message(&id("bob"), "hi").await,
        Err(PeerError::KeyChanged { .. })
    ));
    let from_new = v1_payload(
        &Sender {
            id: "bob",
            signer: &bob_new,
        },
        "alice",
        &alice_kem,
        "k-1",
        "k-1",
        "it's me",
    );
    conn.send(msg(from_new)).await;
    assert_eq!(
        expect_rejected(&mut events, "k-1").await,
        RejectReason::KeyChanged
    );

    // A forged key signature is refused outright.
    let p = peer.clone();
    let fetch = tokio::spawn(async move { p.request_public_key(&id("eve")).await });
    let req = conn.expect("request_public_key").await;
    let mut bad = key_payload("eve", &new_identity());
    bad["keySignature"] = json!(B64.encode([0u8; 64]));
    conn.send(
        json!({"type": "public_key_response", "payload": bad, "requestId": req["requestId"]}),
    )
    .await;
    assert!(matches!(
        fetch.await.unwrap(),
        Err(PeerError::InvalidKeySignature { .. })
    ));

    // Accepting the compared fingerprint pins the new key; sending works again (lattice-v1 to
    // the new key).
    accept(&peer, &mut conn, "bob", &fp(&bob_new), &bob_new)
        .await
        .unwrap();
    assert_eq!(
        peer.peer_fingerprint(&id("bob")).unwrap(),
        Some(fp(&bob_new))
    );
    let p = peer.clone();
    // The key fetched at acceptance is the one used: no second fetch.
    let sent = p.send_message(&id("bob"), "welcome back").await.unwrap();
    assert_eq!(sent.algorithm, lattice_peer::Algorithm::LatticeV1);
    let frame = conn.expect("message").await;
    assert_eq!(frame["payload"]["targetId"], "bob");
    assert_eq!(frame["payload"]["messageId"], sent.message_id.as_str());
    assert_eq!(frame["requestId"], sent.message_id.as_str());
    // Bob can open it with the new key and the signature verifies with the new identity.
    let env = &frame["payload"]["message"];
    let sealed = lattice_crypto::SealedEnvelope {
        cipher_text: B64
            .decode(env["serializedCipherText"].as_str().unwrap())
            .unwrap(),
        encrypted_data: B64
            .decode(env["serializedEncryptedData"].as_str().unwrap())
            .unwrap(),
    };
    let ctx = lattice_v1::Context {
        sender_id: "alice",
        recipient_id: "bob",
        message_id: sent.message_id.as_str(),
    };
    let plain = lattice_v1::open(bob_new.kem(), &ctx, &sealed).unwrap();
    let inner: Value = serde_json::from_slice(&plain).unwrap();
    assert_eq!(inner["body"], "welcome back");
    // The server's verdict on the message comes back as an event naming it.
    conn.send(error_frame(
        "PEER_NOT_FOUND",
        Some(&json!(sent.message_id.as_str())),
    ))
    .await;
    let failed = wait_for(&mut events, |e| match e {
        PeerEvent::MessageFailed { message_id, .. } => Some(message_id),
        _ => None,
    })
    .await;
    assert_eq!(failed, sent.message_id);
}

/// Attack: the server shows key K1 as bob's new key (the user compares its fingerprint), then
/// answers the acceptance with its own K2. Accepting fp(K1) then pins nothing; only while the
/// server serves K1 does accepting fp(K1) pin it. A second change within the run is reported,
/// never slipped in silently.
#[tokio::test]
async fn a_key_change_after_a_restart_is_caught_with_a_file_key_store() {
    let dir = tempfile::tempdir().unwrap();
    let pins = dir.path().join("alice.pins");
    let alice = new_identity();
    let bob_old = new_identity();
    let bob_new = new_identity();
    let mut fake = FakeServer::start().await;
    let url = fake.url.clone();
    let config = |identity: Identity| {
        let mut c = test_config(&url, "alice", identity);
        c.key_store = Arc::new(lattice_peer::FileKeyStore::open(&pins).unwrap());
        c
    };
    let bytes = alice.to_bytes();

    // First run: bob's key is pinned on first use, and alice talks to him.
    let (peer, mut conn) = connected(&mut fake, config(alice)).await;
    fetch_key(&peer, &mut conn, "bob", &bob_old).await.unwrap();
    peer.send_message(&id("bob"), "hi").await.unwrap();
    peer.disconnect().await;
    drop(peer);
    let text = std::fs::read_to_string(&pins).unwrap();
    assert!(
        text.lines()
            .any(|l| l.starts_with("bob ") && l.ends_with(" contact")),
        "bob is kept as a contact: {text}"
    );

    // Restart: the server now hands out another key for bob.
    let alice = Identity::from_bytes(&bytes).unwrap();
    let (peer, mut conn) = connected(&mut fake, config(alice)).await;
    let mut events = peer.events();
    assert_eq!(
        peer.peer_fingerprint(&id("bob")).unwrap(),
        Some(fp(&bob_old)),
        "the pin survived the restart"
    );
    assert!(matches!(
        fetch_key(&peer, &mut conn, "bob", &bob_new).await,
        Err(PeerError::KeyChanged { .. })
    ));
    let (old, new) = wait_for(&mut events, |e| match e {
        PeerEvent::KeyChanged { peer, old, new } if peer.as_str() == "bob" => Some((old, new)),
        _ => None,
    })
    .await;
    assert_eq!((old, new), (fp(&bob_old), fp(&bob_new)));
    assert!(matches!(
        peer.send_message(&id("bob"), "secret").await,
        Err(PeerError::KeyChanged { .. })
    ));
    // Accepted only explicitly, and then kept across the next restart too.
    accept(&peer, &mut conn, "bob", &fp(&bob_new), &bob_new)
        .await
        .unwrap();
    drop(conn);
    peer.disconnect().await;
    let store = lattice_peer::FileKeyStore::open(&pins).unwrap();
    assert_eq!(
        lattice_peer::KeyStore::pinned(&store, &id("bob"))
            .unwrap()
            .map(|k| k.fingerprint()),
        Some(fp(&bob_new))
    );
}

#[tokio::test]
async fn a_key_change_is_accepted_only_for_the_compared_fingerprint() {
    let (_fake, peer, mut conn, mut events, alice_kem) = alice().await;
    let bob_old = new_identity();
    let k1 = new_identity();
    let k2 = new_identity();
    fetch_key(&peer, &mut conn, "bob", &bob_old).await.unwrap();

    // The server presents K1: the user is shown fp(K1).
    assert!(matches!(
        fetch_key(&peer, &mut conn, "bob", &k1).await,
        Err(PeerError::KeyChanged { .. })
    ));
    let shown = wait_for(&mut events, |e| match e {
        PeerEvent::KeyChanged { peer, new, .. } if peer.as_str() == "bob" => Some(new),
        _ => None,
    })
    .await;
    assert_eq!(shown, fp(&k1));
    // A message from the new key waits.
    let held = msg(v1_payload(
        &Sender {
            id: "bob",
            signer: &k1,
        },
        "alice",
        &alice_kem,
        "a-1",
        "a-1",
        "from K1",
    ));
    conn.send(held).await;
    assert_eq!(
        expect_rejected(&mut events, "a-1").await,
        RejectReason::KeyChanged
    );

    // At acceptance the server answers with K2: refused, nothing pinned, and K2 is reported as a
    // change of its own.
    match accept(&peer, &mut conn, "bob", &fp(&k1), &k2).await {
        Err(PeerError::KeyMismatch {
            peer: p,
            expected,
            actual,
        }) => {
            assert_eq!(p.as_str(), "bob");
            assert_eq!(*expected, fp(&k1));
            assert_eq!(*actual, fp(&k2));
        }
        other => panic!("expected KeyMismatch, got {other:?}"),
    }
    assert_eq!(
        peer.peer_fingerprint(&id("bob")).unwrap(),
        Some(fp(&bob_old)),
        "nothing was pinned"
    );
    let reported = wait_for(&mut events, |e| match e {
        PeerEvent::KeyChanged { peer, new, .. } if peer.as_str() == "bob" => Some(new),
        _ => None,
    })
    .await;
    assert_eq!(reported, fp(&k2));
    // Still nothing goes to bob.
    assert!(matches!(
        peer.send_message(&id("bob"), "hi").await,
        Err(PeerError::KeyChanged { .. })
    ));
    // Accepting the key the server serves without having compared it: the caller must pass the
    // fingerprint it compared, and fp(K1) does not fit K2 however often it is tried.
    assert!(matches!(
        accept(&peer, &mut conn, "bob", &fp(&k1), &k2).await,
        Err(PeerError::KeyMismatch { .. })
    ));

    // The server serves K1 again: accepting fp(K1) pins K1 and the held message opens.
    accept(&peer, &mut conn, "bob", &fp(&k1), &k1)
        .await
        .unwrap();
    assert_eq!(peer.peer_fingerprint(&id("bob")).unwrap(), Some(fp(&k1)));
    let m = wait_for(&mut events, |e| match e {
        PeerEvent::Message(m) => Some(m),
        _ => None,
    })
    .await;
    assert_eq!((m.text.as_str(), m.verified), ("from K1", true));
    assert_eq!(conn.expect("ack").await["payload"]["messageId"], "a-1");
}

#[tokio::test]
async fn while_disconnected_the_queue_is_bounded_and_the_backoff_gives_up() {
    let mut fake = FakeServer::start().await;
    let mut cfg = test_config(&fake.url, "alice", new_identity());
    cfg.outbound_queue = 2;
    cfg.reconnect.max_attempts = 3;
    let (peer, conn) = connected(&mut fake, cfg).await;
    let mut events = peer.events();
    // The server vanishes: the connection drops and nothing listens any more.
    drop(conn);
    drop(fake);
    let q = lattice_protocol::QuestionId::new("q").unwrap();
    let mut attempts = Vec::new();
    let mut queued = 0;
    let gave_up = wait_for(&mut events, |e| match e {
        PeerEvent::ConnectionState(ConnectionState::Reconnecting { attempt }) => {
            attempts.push(attempt);
            None
        }
        PeerEvent::Error(PeerError::ReconnectFailed { attempts }) => Some(attempts),
        _ => None,
    })
    .await;
    assert_eq!(gave_up, 3);
    assert_eq!(attempts, [1, 2, 3]);
    wait_for(&mut events, |e| {
        matches!(e, PeerEvent::ConnectionState(ConnectionState::Disconnected)).then_some(())
    })
    .await;
    // Two frames fit in the queue; the third is refused and the caller is told.
    for _ in 0..2 {
        peer.respond_to_server(&q, "x").unwrap();
        queued += 1;
    }
    assert_eq!(queued, 2);
    assert!(matches!(
        peer.respond_to_server(&q, "x"),
        Err(PeerError::QueueFull { capacity: 2 })
    ));
    assert!(matches!(
        peer.register_and_wait(Duration::from_millis(10)).await,
        Err(PeerError::NotConnected)
    ));
    // A request while permanently disconnected says so, instead of timing out as "no answer".
    assert!(matches!(
        peer.request_public_key(&id("bob")).await,
        Err(PeerError::NotConnected)
    ));
}

#[tokio::test]
async fn a_server_that_closes_right_after_each_registration_is_backed_off_and_given_up() {
    let mut fake = FakeServer::start().await;
    let mut cfg = test_config(&fake.url, "alice", new_identity());
    cfg.reconnect.max_attempts = 3;
    let (peer, mut conn) = connected(&mut fake, cfg).await;
    let mut events = peer.events();
    // Every connection registers fine and is closed at once: registration alone must not reset
    // the backoff, so the attempts count up and the limit applies.
    // (A frame queued while reconnecting is written only once the next connection registered:
    // the server closes after reading it, so the peer saw each registration succeed.)
    let q = lattice_protocol::QuestionId::new("q").unwrap();
    conn.close(1000, "bye").await;
    let server = tokio::spawn(async move {
        for _ in 0..3 {
            let mut c = fake.next_conn().await;
            c.accept_registration().await;
            c.expect("peer_response").await;
            c.close(1000, "bye").await;
        }
        fake
    });
    let mut attempts = Vec::new();
    let mut registered = 0;
    let gave_up = wait_for(&mut events, |e| match e {
        PeerEvent::ConnectionState(ConnectionState::Reconnecting { attempt }) => {
            attempts.push(attempt);
            peer.respond_to_server(&q, "x").unwrap();
            None
        }
        PeerEvent::Registered { .. } => {
            registered += 1;
            None
        }
        PeerEvent::Error(PeerError::ReconnectFailed { attempts }) => Some(attempts),
        _ => None,
    })
    .await;
    assert_eq!(attempts, [1, 2, 3], "the backoff grew with every attempt");
    assert_eq!(registered, 3, "each attempt did register");
    assert_eq!(gave_up, 3);
    wait_for(&mut events, |e| {
        matches!(e, PeerEvent::ConnectionState(ConnectionState::Disconnected)).then_some(())
    })
    .await;
    drop(server.await.unwrap());
}

// ---- replaced by another connection of the same identity (close 4000) ----

const REPLACED: u16 = 4000;
const REPLACED_REASON: &str = "replaced by a newer connection of the same identity";

fn is_retry(e: &PeerEvent) -> bool {
    matches!(
        e,
        PeerEvent::ConnectionState(ConnectionState::Reconnecting { .. })
    )
}

#[tokio::test]
async fn replaced_while_re_registering_stops_reconnecting() {
    let mut fake = FakeServer::start().await;
    let cfg = test_config(&fake.url, "alice", new_identity());
    let (peer, mut conn) = connected(&mut fake, cfg).await;
    let mut events = peer.events();
    // An ordinary close: the peer reconnects.
    conn.close(1001, "server shutting down").await;
    let mut conn2 = fake.next_conn().await;
    // Replaced before the re-registration finished: another instance holds the id now.
    conn2.expect("challenge").await;
    conn2.close(REPLACED, REPLACED_REASON).await;
    wait_for(&mut events, |e| {
        matches!(e, PeerEvent::Error(PeerError::Replaced)).then_some(())
    })
    .await;
    none_before(&mut events, is_retry, |e| {
        matches!(e, PeerEvent::ConnectionState(ConnectionState::Disconnected)).then_some(())
    })
    .await;
    assert_eq!(peer.connection_state(), ConnectionState::Disconnected);
}

#[tokio::test]
async fn a_first_connect_that_is_replaced_fails_with_replaced() {
    let mut fake = FakeServer::start().await;
    let peer = MessagingPeer::new(test_config(&fake.url, "alice", new_identity())).unwrap();
    let p = peer.clone();
    let task = tokio::spawn(async move { p.connect().await });
    let mut conn = fake.next_conn().await;
    conn.expect("challenge").await;
    conn.close(REPLACED, REPLACED_REASON).await;
    assert!(matches!(task.await.unwrap(), Err(PeerError::Replaced)));
    assert_eq!(peer.connection_state(), ConnectionState::Disconnected);
}

/// The app may call `connect` the moment the replaced peer reports `Disconnected`, while the
/// supervisor task is still returning: it must connect, not refuse with `AlreadyConnected`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_peer_can_connect_again_as_soon_as_it_is_disconnected() {
    let mut fake = FakeServer::start().await;
    let cfg = test_config(&fake.url, "alice", new_identity());
    let (peer, mut conn) = connected(&mut fake, cfg).await;
    let (tx, mut disconnected) = tokio::sync::mpsc::unbounded_channel();
    let once = std::sync::atomic::AtomicBool::new(false);
    let handle = peer.on_event(move |e| {
        if matches!(e, PeerEvent::ConnectionState(ConnectionState::Disconnected))
            && !once.swap(true, Ordering::SeqCst)
        {
            let _ = tx.send(());
            // Hold the supervisor inside its last event, so that the test's `connect` (on
            // another thread) runs while the supervisor task has not finished.
            std::thread::sleep(Duration::from_millis(300));
        }
    });
    conn.close(REPLACED, REPLACED_REASON).await;
    tokio::time::timeout(EVENT_WAIT, disconnected.recv())
        .await
        .unwrap()
        .unwrap();
    let p = peer.clone();
    let connecting = tokio::spawn(async move { p.connect().await });
    let mut conn2 = fake.next_conn().await;
    conn2.accept_registration().await;
    let reconnected = connecting.await.unwrap();
    assert!(reconnected.is_ok(), "{reconnected:?}");
    assert_eq!(peer.connection_state(), ConnectionState::Connected);
    assert!(handle.remove());
    peer.disconnect().await;
}

// ---- which refused messages are acknowledged ----

/// Sends an unsigned message from an original client (no pinned identity) and waits until it is
/// delivered. Returns the id of the next `ack` the peer sends, which must be the marker's if
/// nothing before it was acked. Senders are processed concurrently, so call it only once what was
/// sent before has been reported (delivered or refused): then any ack of it would come first.
async fn next_ack_after_marker(
    conn: &mut FakeConn,
    events: &mut lattice_peer::EventStream,
    alice_kem: &KemPublicKey,
    marker: &str,
) -> String {
    conn.send(msg(ml_kem_aes_payload(
        "orig",
        alice_kem,
        Some(marker),
        "marker",
    )))
    .await;
    let m = wait_for(events, |e| match e {
        PeerEvent::Message(m) => Some(m),
        _ => None,
    })
    .await;
    assert_eq!(m.message_id.as_ref().map(|i| i.as_str()), Some(marker));
    conn.expect("ack").await["payload"]["messageId"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn messages_refused_for_a_transient_reason_are_not_acked_and_can_be_redelivered() {
    let (_fake, peer, mut conn, mut events, alice_kem) = alice().await;
    let bob_old = new_identity();
    let bob_new = new_identity();
    let old = Sender {
        id: "bob",
        signer: &bob_old,
    };
    let new = Sender {
        id: "bob",
        signer: &bob_new,
    };

    // 1. The sender's key cannot be fetched: refused as unavailable, and not acked, so the server
    //    keeps it.
    let first = msg(v1_payload(&old, "alice", &alice_kem, "t-1", "t-1", "first"));
    conn.send(first.clone()).await;
    let req = conn.expect("request_public_key").await;
    conn.send(error_frame("INTERNAL_ERROR", Some(&req["requestId"])))
        .await;
    let reason = expect_rejected(&mut events, "t-1").await;
    assert!(
        matches!(reason, RejectReason::SenderKeyUnavailable(_)),
        "{reason:?}"
    );
    assert!(reason.is_transient());
    assert_eq!(
        next_ack_after_marker(&mut conn, &mut events, &alice_kem, "marker-1").await,
        "marker-1",
        "the message refused for an unavailable key was acked"
    );
    // Redelivered once the key can be fetched: delivered (it was not recorded as seen), and acked.
    conn.send(first).await;
    conn.serve_key("bob", &bob_old).await;
    let m = wait_for(&mut events, |e| match e {
        PeerEvent::Message(m) => Some(m),
        _ => None,
    })
    .await;
    assert_eq!((m.text.as_str(), m.verified), ("first", true));
    assert_eq!(conn.expect("ack").await["payload"]["messageId"], "t-1");

    // 2. Bob's identity changes: his new messages are held back until the change is accepted,
    //    and not acked meanwhile.
    let changed = msg(v1_payload(
        &new, "alice", &alice_kem, "t-2", "t-2", "new key",
    ));
    conn.send(changed.clone()).await;
    conn.serve_key("bob", &bob_new).await;
    assert_eq!(
        expect_rejected(&mut events, "t-2").await,
        RejectReason::KeyChanged
    );
    let pending = msg(v1_payload(
        &new,
        "alice",
        &alice_kem,
        "t-3",
        "t-3",
        "still new",
    ));
    conn.send(pending.clone()).await;
    assert_eq!(
        expect_rejected(&mut events, "t-3").await,
        RejectReason::KeyChanged
    );
    assert_eq!(
        next_ack_after_marker(&mut conn, &mut events, &alice_kem, "marker-2").await,
        "marker-2",
        "a message held back by a key change was acked"
    );
    // The user accepts the change: both held messages open at once, in order, without waiting
    // for the server to deliver them again, and are acked.
    accept(&peer, &mut conn, "bob", &fp(&bob_new), &bob_new)
        .await
        .unwrap();
    for (mid, text) in [("t-2", "new key"), ("t-3", "still new")] {
        let m = wait_for(&mut events, |e| match e {
            PeerEvent::Message(m) => Some(m),
            _ => None,
        })
        .await;
        assert_eq!(
            (m.message_id.unwrap().as_str(), m.text.as_str(), m.verified),
            (mid, text, true)
        );
        assert_eq!(conn.expect("ack").await["payload"]["messageId"], mid);
    }
    // The server's own copies, delivered again after a reconnect, are duplicates now: acked, not
    // shown twice.
    conn.send(changed).await;
    conn.send(pending).await;
    assert_eq!(conn.expect("ack").await["payload"]["messageId"], "t-2");
    assert_eq!(conn.expect("ack").await["payload"]["messageId"], "t-3");
    assert_eq!(
        next_ack_after_marker(&mut conn, &mut events, &alice_kem, "marker-3").await,
        "marker-3",
        "a duplicate was delivered or acked twice"
    );

    // 3. Messages that can never be opened are acked: the server may forget them.
    let mut tampered = v1_payload(&new, "alice", &alice_kem, "t-4", "t-4", "x");
    tampered["message"]["serializedEncryptedData"] = json!(B64.encode([0u8; 40]));
    conn.send(msg(tampered)).await;
    assert_eq!(
        expect_rejected(&mut events, "t-4").await,
        RejectReason::Decrypt
    );
    assert_eq!(conn.expect("ack").await["payload"]["messageId"], "t-4");
    let forged = v1_payload(
        &old,
        "alice",
        &alice_kem,
        "t-5",
        "t-5",
        "old key, now forged",
    );
    conn.send(msg(forged)).await;
    conn.serve_key("bob", &bob_new).await;
    let reason = expect_rejected(&mut events, "t-5").await;
    assert_eq!(reason, RejectReason::BadSignature);
    assert!(!reason.is_transient());
    assert_eq!(conn.expect("ack").await["payload"]["messageId"], "t-5");
}

/// Attack (issue 8, item 1): messages whose claimed sender has no identity key (the server does
/// not know it, or presents it without one) can never be verified: each is refused for good and
/// acknowledged, so the server forgets it; an honest message still arrives afterwards.
#[tokio::test]
async fn messages_from_a_sender_whose_key_cannot_exist_are_refused_for_good_and_acked() {
    let (_fake, _peer, mut conn, mut events, alice_kem) = alice().await;
    let ghost = new_identity();
    for i in 0..20 {
        let name = format!("ghost{i}");
        let g = Sender {
            id: &name,
            signer: &ghost,
        };
        let mid = format!("g-{i}");
        conn.send(msg(v1_payload(&g, "alice", &alice_kem, &mid, &mid, "boo")))
            .await;
        let req = conn.expect("request_public_key").await;
        if i % 2 == 0 {
            // Not known to the server at all.
            conn.send(error_frame("PEER_NOT_FOUND", Some(&req["requestId"])))
                .await;
        } else {
            // Registered unverified: a KEM key, no identity key.
            let mut payload = key_payload(&name, &ghost);
            payload.as_object_mut().unwrap().remove("identityKey");
            payload.as_object_mut().unwrap().remove("keySignature");
            conn.send(json!({"type": "public_key_response", "payload": payload, "requestId": req["requestId"]}))
                .await;
        }
        let reason = expect_rejected(&mut events, &mid).await;
        assert_eq!(reason, RejectReason::NoSenderKey);
        assert!(!reason.is_transient());
        assert_eq!(
            conn.expect("ack").await["payload"]["messageId"],
            mid.as_str()
        );
    }
    // More from the same senders: refused and acked without asking the server again each time
    // (a flood costs no flood of key requests).
    conn.skipped.clear();
    for (i, name) in ["ghost0", "ghost1", "ghost0"].into_iter().enumerate() {
        let mid = format!("again-{i}");
        let g = Sender {
            id: name,
            signer: &ghost,
        };
        conn.send(msg(v1_payload(&g, "alice", &alice_kem, &mid, &mid, "boo")))
            .await;
        assert_eq!(
            expect_rejected(&mut events, &mid).await,
            RejectReason::NoSenderKey
        );
        assert_eq!(
            conn.expect("ack").await["payload"]["messageId"],
            mid.as_str()
        );
    }
    assert!(
        !conn
            .skipped
            .iter()
            .any(|f| f["type"] == "request_public_key"),
        "{:?}",
        conn.skipped
    );
    // An honest sender is unaffected.
    let bob = new_identity();
    let b = Sender {
        id: "bob",
        signer: &bob,
    };
    conn.send(msg(v1_payload(&b, "alice", &alice_kem, "b-1", "b-1", "hi")))
        .await;
    conn.serve_key("bob", &bob).await;
    let m = wait_for(&mut events, |e| match e {
        PeerEvent::Message(m) => Some(m),
        _ => None,
    })
    .await;
    assert_eq!(
        (m.from.as_str(), m.text.as_str(), m.verified),
        ("bob", "hi", true)
    );
    assert_eq!(conn.expect("ack").await["payload"]["messageId"], "b-1");
}

/// Attack (issue 8, item 5): a flood of unsigned messages from 1,100 fresh ids does not flush
/// the replay window of a pinned sender, and a signed message outside the freshness window is
/// refused for good.
#[tokio::test]
async fn the_replay_window_of_a_pinned_sender_survives_a_flood_and_stale_messages_are_refused() {
    let (_fake, peer, mut conn, mut events, alice_kem) = alice().await;
    let delivered = Arc::new(AtomicUsize::new(0));
    let d = Arc::clone(&delivered);
    peer.on_message(move |_| {
        d.fetch_add(1, Ordering::SeqCst);
    });
    let bob = new_identity();
    let b = Sender {
        id: "bob",
        signer: &bob,
    };
    let signed = msg(v1_payload(&b, "alice", &alice_kem, "r-1", "r-1", "pay 10"));
    conn.send(signed.clone()).await;
    conn.serve_key("bob", &bob).await;
    assert_eq!(conn.expect("ack").await["payload"]["messageId"], "r-1");

    for i in 0..1_100 {
        let mid = format!("u-{i}");
        conn.send(msg(ml_kem_aes_payload(
            &format!("fresh{i}"),
            &alice_kem,
            Some(&mid),
            "spam",
        )))
        .await;
        assert_eq!(
            conn.expect("ack").await["payload"]["messageId"],
            mid.as_str()
        );
    }
    let before = delivered.load(Ordering::SeqCst);
    assert_eq!(before, 1 + 1_100);

    // The replay: acked (the server may forget it) but never delivered again.
    conn.send(signed).await;
    assert_eq!(conn.expect("ack").await["payload"]["messageId"], "r-1");

    // Signed long ago (older than any mailbox keeps), or far in the future: refused and acked.
    let day = 24 * 3600 * 1000;
    // `text` as `mid`, signed at `sent_at`.
    let signed_at = |mid: &str, text: &str, sent_at| {
        msg(v1_payload_at(
            &b, "alice", &alice_kem, mid, mid, text, sent_at,
        ))
    };
    for (mid, sent_at, too_old) in [
        ("r-2", now_ms() - 9 * day, true),
        ("r-3", now_ms() + day, false),
    ] {
        conn.send(signed_at(mid, "stale", sent_at)).await;
        let reason = expect_rejected(&mut events, mid).await;
        if too_old {
            assert!(matches!(reason, RejectReason::TooOld { .. }), "{reason:?}");
        } else {
            assert!(
                matches!(reason, RejectReason::FromTheFuture { .. }),
                "{reason:?}"
            );
        }
        assert_eq!(conn.expect("ack").await["payload"]["messageId"], mid);
    }
    // A week-old message (it waited in the mailbox) is fine.
    conn.send(signed_at("r-4", "late", now_ms() - 7 * day))
        .await;
    let m = wait_for(&mut events, |e| match e {
        PeerEvent::Message(m) => Some(m),
        _ => None,
    })
    .await;
    assert_eq!(m.text, "late");
    assert_eq!(conn.expect("ack").await["payload"]["messageId"], "r-4");
    assert_eq!(
        delivered.load(Ordering::SeqCst),
        before + 1,
        "the replay was delivered again"
    );
}

/// The durable high-water mark hook: an app that keeps its `ReplayStore` (here one shared by two
/// instances, as a database would be across a restart) refuses, after the restart, a replay of a
/// signed message the first instance accepted, while newer messages still arrive.
#[tokio::test]
async fn a_replay_store_refuses_replays_across_a_restart() {
    let mut fake = FakeServer::start().await;
    let cfg = test_config(&fake.url, "alice", new_identity());
    let alice_kem = cfg.identity.kem_public_key().clone();
    let store = Arc::new(MemoryReplayStore::default());
    let start = |cfg: PeerConfig| {
        let peer = MessagingPeer::with_replay_store(cfg, store.clone()).unwrap();
        let p = peer.clone();
        (peer, tokio::spawn(async move { p.connect().await }))
    };
    let bob = new_identity();
    let b = Sender {
        id: "bob",
        signer: &bob,
    };
    let signed = msg(v1_payload(&b, "alice", &alice_kem, "s-1", "s-1", "once"));

    let (first, connecting) = start(cfg.clone());
    let mut conn = fake.next_conn().await;
    conn.accept_registration().await;
    connecting.await.unwrap().unwrap();
    conn.send(signed.clone()).await;
    conn.serve_key("bob", &bob).await;
    assert_eq!(conn.expect("ack").await["payload"]["messageId"], "s-1");
    let mark = store.high_water_mark(&id("bob")).unwrap();
    assert!(mark.is_some());
    first.disconnect().await;

    // "Restart": a new instance, the same key store (cfg) and the same replay store.
    let (second, connecting) = start(cfg);
    let mut events = second.events();
    let mut conn = fake.next_conn().await;
    conn.accept_registration().await;
    connecting.await.unwrap().unwrap();
    conn.send(signed).await;
    assert_eq!(conn.expect("ack").await["payload"]["messageId"], "s-1");
    // (A millisecond ahead, so it is newer than the mark however fast this test runs.)
    let newer = v1_payload_at(&b, "alice", &alice_kem, "s-2", "s-2", "newer", now_ms() + 1);
    conn.send(msg(newer)).await;
    let m = none_before(
        &mut events,
        |e| matches!(e, PeerEvent::Message(m) if m.text == "once"),
        |e| match e {
            PeerEvent::Message(m) => Some(m.clone()),
            _ => None,
        },
    )
    .await;
    assert_eq!(m.text, "newer");
    assert_eq!(conn.expect("ack").await["payload"]["messageId"], "s-2");
    assert!(store.high_water_mark(&id("bob")).unwrap() >= mark);
    second.disconnect().await;
}

/// `from` sends `text` as `mid`; the key request it causes fails (`INTERNAL_ERROR`), so the
/// message is held as `SenderKeyUnavailable`.
async fn held_for_an_unavailable_key(
    conn: &mut FakeConn,
    events: &mut lattice_peer::EventStream,
    from: &Sender<'_>,
    alice_kem: &KemPublicKey,
    mid: &str,
    text: &str,
) {
    conn.send(msg(v1_payload(from, "alice", alice_kem, mid, mid, text)))
        .await;
    let req = conn.expect("request_public_key").await;
    conn.send(error_frame("INTERNAL_ERROR", Some(&req["requestId"])))
        .await;
    assert!(matches!(
        expect_rejected(events, mid).await,
        RejectReason::SenderKeyUnavailable(_)
    ));
}

#[tokio::test]
async fn a_message_held_for_an_unavailable_key_opens_with_the_senders_next_message() {
    let (_fake, peer, mut conn, mut events, alice_kem) = alice().await;
    let bob = new_identity();
    let b = Sender {
        id: "bob",
        signer: &bob,
    };
    held_for_an_unavailable_key(&mut conn, &mut events, &b, &alice_kem, "h-1", "first").await;
    // Bob's next message brings his key: it opens, and the held one right after it, without the
    // server sending it again. Each is acked once.
    conn.send(msg(v1_payload(
        &b, "alice", &alice_kem, "h-2", "h-2", "second",
    )))
    .await;
    conn.serve_key("bob", &bob).await;
    let mut texts = Vec::new();
    for _ in 0..2 {
        let m = wait_for(&mut events, |e| match e {
            PeerEvent::Message(m) => Some(m),
            _ => None,
        })
        .await;
        texts.push(m.text);
    }
    assert_eq!(texts, ["second", "first"]);
    assert_eq!(conn.expect("ack").await["payload"]["messageId"], "h-2");
    assert_eq!(conn.expect("ack").await["payload"]["messageId"], "h-1");
    assert_eq!(
        next_ack_after_marker(&mut conn, &mut events, &alice_kem, "marker").await,
        "marker"
    );
    peer.disconnect().await;
}

/// A message held for an unavailable key is not left waiting for a redelivery or another
/// message of its sender: after a delay (`defaults::TRANSIENT_RETRY_BASE`) the peer tries again
/// on its own, and it opens once the key can be had.
#[tokio::test]
async fn a_message_held_for_an_unavailable_key_is_retried_on_its_own() {
    let (_fake, peer, mut conn, mut events, alice_kem) = alice().await;
    let bob = new_identity();
    let b = Sender {
        id: "bob",
        signer: &bob,
    };
    held_for_an_unavailable_key(&mut conn, &mut events, &b, &alice_kem, "w-1", "patience").await;
    // No redelivery, no other message: the retry asks for the key by itself.
    conn.serve_key("bob", &bob).await;
    let m = wait_for(&mut events, |e| match e {
        PeerEvent::Message(m) => Some(m),
        _ => None,
    })
    .await;
    assert_eq!((m.text.as_str(), m.verified), ("patience", true));
    assert_eq!(conn.expect("ack").await["payload"]["messageId"], "w-1");
    peer.disconnect().await;
}

#[tokio::test]
async fn a_duplicate_is_acked_and_dropped_silently() {
    let (_fake, peer, mut conn, mut events, alice_kem) = alice().await;
    let delivered = Arc::new(AtomicUsize::new(0));
    let d = Arc::clone(&delivered);
    peer.on_message(move |_| {
        d.fetch_add(1, Ordering::SeqCst);
    });
    let bob = new_identity();
    let b = Sender {
        id: "bob",
        signer: &bob,
    };
    let frame = msg(v1_payload(&b, "alice", &alice_kem, "d-1", "d-1", "once"));
    conn.send(frame.clone()).await;
    conn.serve_key("bob", &bob).await;
    assert_eq!(conn.expect("ack").await["payload"]["messageId"], "d-1");
    // Redelivered (our ack was lost with the connection, say) or replayed: acked again, neither
    // delivered twice nor reported.
    conn.send(frame).await;
    assert_eq!(conn.expect("ack").await["payload"]["messageId"], "d-1");
    let unsigned = msg(ml_kem_aes_payload("orig", &alice_kem, Some("d-2"), "js"));
    conn.send(unsigned.clone()).await;
    assert_eq!(conn.expect("ack").await["payload"]["messageId"], "d-2");
    conn.send(unsigned).await;
    assert_eq!(conn.expect("ack").await["payload"]["messageId"], "d-2");
    // Everything above was processed before this marker: no error event, each message once.
    conn.send(msg(ml_kem_aes_payload(
        "orig",
        &alice_kem,
        Some("marker"),
        "marker",
    )))
    .await;
    let mut seen = Vec::new();
    none_before(
        &mut events,
        |e| matches!(e, PeerEvent::Error(_)),
        |e| {
            if let PeerEvent::Message(m) = e {
                seen.push(m.text.clone());
            }
            (seen.last().map(String::as_str) == Some("marker")).then_some(())
        },
    )
    .await;
    assert_eq!(seen, ["once", "js", "marker"]);
    assert_eq!(conn.expect("ack").await["payload"]["messageId"], "marker");
    assert_eq!(delivered.load(Ordering::SeqCst), 3);
}

/// A signature that fails with the pinned key is a forgery only if the server confirms the pinned
/// key; if that check cannot be made, the message may be from a changed key: held back, not acked.
#[tokio::test]
async fn a_bad_signature_is_final_only_once_the_key_was_rechecked() {
    let (_fake, peer, mut conn, mut events, alice_kem) = alice().await;
    let bob = new_identity();
    let mallory = new_identity();
    fetch_key(&peer, &mut conn, "bob", &bob).await.unwrap();

    let suspicious = msg(v1_payload(
        &Sender {
            id: "bob",
            signer: &mallory,
        },
        "alice",
        &alice_kem,
        "s-1",
        "s-1",
        "trust me",
    ));
    conn.send(suspicious.clone()).await;
    let req = conn.expect("request_public_key").await;
    conn.send(error_frame("INTERNAL_ERROR", Some(&req["requestId"])))
        .await;
    let reason = expect_rejected(&mut events, "s-1").await;
    assert!(
        matches!(reason, RejectReason::SenderKeyUnavailable(_)),
        "{reason:?}"
    );
    assert_eq!(
        next_ack_after_marker(&mut conn, &mut events, &alice_kem, "marker").await,
        "marker"
    );
    // Redelivered; this time the server confirms bob's pinned key: a forgery, refused and acked.
    conn.send(suspicious).await;
    conn.serve_key("bob", &bob).await;
    assert_eq!(
        expect_rejected(&mut events, "s-1").await,
        RejectReason::BadSignature
    );
    assert_eq!(conn.expect("ack").await["payload"]["messageId"], "s-1");
}

/// `connect` dropped by its caller (here by a timeout) before the registration finished abandons
/// that attempt: the socket is closed, nothing keeps trying behind the caller's back, and the next
/// `connect` starts afresh instead of failing with `AlreadyConnected`.
#[tokio::test]
async fn a_connect_dropped_by_its_caller_abandons_the_attempt() {
    let mut fake = FakeServer::start().await;
    let mut cfg = test_config(&fake.url, "alice", new_identity());
    // Longer than the fake server's step bound: the abandoned attempt must not merely time out.
    cfg.timeouts.request = Duration::from_secs(60);
    let peer = MessagingPeer::new(cfg).unwrap();
    let p = peer.clone();
    let attempt = tokio::spawn(async move { p.connect().await });
    let mut conn = fake.next_conn().await;
    conn.expect("challenge").await;
    // The server never answers; the caller gives up.
    attempt.abort();
    assert!(attempt.await.unwrap_err().is_cancelled());
    conn.closed().await;
    let p = peer.clone();
    let again = tokio::spawn(async move { p.connect().await });
    let mut conn2 = fake.next_conn().await;
    conn2.accept_registration().await;
    again.await.unwrap().unwrap();
    assert_eq!(peer.connection_state(), ConnectionState::Connected);
    peer.disconnect().await;
}

/// Odd but legal settings from the app never panic on the peer's tasks: an endless request
/// timeout, an endless wait for registration, a zero ping interval.
#[tokio::test]
async fn extreme_timeouts_do_not_panic() {
    let mut fake = FakeServer::start().await;
    let mut cfg = test_config(&fake.url, "alice", new_identity());
    cfg.timeouts.ping_interval = Duration::ZERO;
    let (peer, mut conn) = connected(&mut fake, cfg).await;
    peer.register_and_wait(Duration::MAX).await.unwrap();
    let waiting = discover(&peer, WaitOptions::default().timeout(Duration::MAX));
    let req = conn.expect("discover").await;
    conn.send(
        json!({"type": "discover", "payload": {"peers": ["x"]}, "requestId": req["requestId"]}),
    )
    .await;
    assert_eq!(peers_of(&waiting.await.unwrap().unwrap()), ["x"]);
    assert_eq!(peer.connection_state(), ConnectionState::Connected);
    peer.disconnect().await;
}

/// Whatever a hostile or broken server sends, the peer neither panics nor drops its connection:
/// bad frames are reported, bad messages refused, bad keys treated as unavailable.
#[tokio::test]
async fn hostile_frames_never_take_the_peer_down() {
    let (_fake, peer, mut conn, mut events, alice_kem) = alice().await;
    let long = "x".repeat(100_000);
    for raw in [
        "",
        "not json",
        "[]",
        "null",
        "{}",
        r#"{"type": 5, "payload": {}}"#,
        r#"{"type": "no_such_type", "payload": {}}"#,
        r#"{"type": "message"}"#,
        r#"{"type": "message", "payload": []}"#,
        r#"{"type": "message", "payload": {"message": 1, "fromId": "bob", "timestamp": -1}}"#,
        r#"{"type": "message", "payload": {"message": {}, "fromId": "", "timestamp": 1}}"#,
        r#"{"type": "message", "payload": {"message": {}, "fromId": "bob", "timestamp": 1.5}}"#,
        r#"{"type": "public_key_response", "payload": {"peerId": "bob", "publicKey": [300]}}"#,
        r#"{"type": "message_ack", "payload": {"messageId": "", "targetId": "bob", "status": "??"}}"#,
        r#"{"type": "server_question", "payload": {"questionId": "q", "question": {"text": 1}}}"#,
        r#"{"type": "server_question", "payload": {"questionId": "q", "question": {"text": "?", "kind": "choice", "options": "a"}}}"#,
        r#"{"type": "error", "payload": {"errorType": "NEW_KIND", "details": "?", "timestamp": "now"}}"#,
        r#"{"type": "error", "payload": {}, "requestId": 7}"#,
        r#"{"type": "peer_connected", "payload": {"peerId": "bad id with spaces"}}"#,
        r#"{"type": "register", "payload": {"success": true, "clientId": "mallory", "verified": true}}"#,
        r#"{"type": "challenge", "payload": {"nonce": "AAAA"}}"#,
        &format!(r#"{{"type": "discover", "payload": {{"peers": []}}, "requestId": "{long}"}}"#),
        &"[".repeat(10_000),
    ] {
        conn.send_raw(raw).await;
    }
    conn.send_binary(vec![0xff; 64]).await;

    // Messages that decode but cannot be opened: bad base64, wrong lengths, zero ciphertexts.
    let envelope = |alg: &str, ct: &str, data: &str| {
        msg(
            json!({"message": {"algorithm": alg, "serializedCipherText": ct, "serializedEncryptedData": data}, "fromId": "orig", "timestamp": 1, "messageId": format!("h-{alg}-{}-{}", ct.len(), data.len())}),
        )
    };
    let zeros = |n: usize| B64.encode(vec![0u8; n]);
    for alg in ["ml-kem-aes", "lattice-v1"] {
        for (ct, data) in [
            ("%%%".to_owned(), "%%%".to_owned()),
            (String::new(), String::new()),
            (zeros(10), zeros(5)),
            (zeros(1088), zeros(27)),
            (zeros(1088), zeros(28)),
            (zeros(5000), zeros(100)),
        ] {
            conn.send(envelope(alg, &ct, &data)).await;
        }
    }

    // A genuine lattice-v1 message whose sender's key comes back unusable, in every way.
    let bob = new_identity();
    let b = Sender {
        id: "bob",
        signer: &bob,
    };
    let good = key_payload("bob", &bob);
    let mut bad_keys = Vec::new();
    for (field, value) in [
        ("publicKey", json!([1, 2, 3])),
        ("publicKey", json!([])),
        ("publicKey", json!("%%%")),
        ("identityKey", json!(B64.encode([1u8; 5]))),
        ("identityKey", json!("%%%")),
        ("keySignature", json!(B64.encode([1u8; 3]))),
        ("keySignature", json!(null)),
        ("peerId", json!("carol")),
    ] {
        let mut k = good.clone();
        k[field] = value;
        bad_keys.push(k);
    }
    for (i, key) in bad_keys.into_iter().enumerate() {
        let mid = format!("k-{i}");
        conn.send(msg(v1_payload(&b, "alice", &alice_kem, &mid, &mid, "hi")))
            .await;
        let req = conn.expect("request_public_key").await;
        conn.send(
            json!({"type": "public_key_response", "payload": key, "requestId": req["requestId"]}),
        )
        .await;
        if i == 7 {
            // The answer names another peer: the request is still open; fail it.
            conn.send(error_frame("INTERNAL_ERROR", Some(&req["requestId"])))
                .await;
        }
        let reason = expect_rejected(&mut events, &mid).await;
        assert!(reason.is_transient(), "{mid}: {reason:?}");
    }

    // Still connected, on the same connection (the request goes out on `conn`), and answering.
    let waiting = discover(&peer, WaitOptions::default());
    let req = conn.expect("discover").await;
    conn.send(json!({"type": "discover", "payload": {"peers": ["still", "here"]}, "requestId": req["requestId"]}))
        .await;
    assert_eq!(
        peers_of(&waiting.await.unwrap().unwrap()),
        ["still", "here"]
    );
    conn.send(json!({"type": "peer_connected", "payload": {"peerId": "marker"}}))
        .await;
    none_before(
        &mut events,
        |e| {
            matches!(
                e,
                PeerEvent::ConnectionState(_) | PeerEvent::Registered { .. }
            )
        },
        |e| matches!(e, PeerEvent::PeerConnected(p) if p.as_str() == "marker").then_some(()),
    )
    .await;
    assert_eq!(peer.connection_state(), ConnectionState::Connected);
    peer.disconnect().await;
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

#[tokio::test]
async fn a_sender_whose_key_never_comes_does_not_hold_up_another_senders_messages() {
    let mut fake = FakeServer::start().await;
    let mut cfg = test_config(&fake.url, "alice", new_identity());
    // The slow sender's key request would otherwise time out and let the queue move on: with a
    // request timeout of an hour, only fair processing lets bob's message through meanwhile.
    cfg.timeouts.request = Duration::from_secs(3600);
    let alice_kem = cfg.identity.kem_public_key().clone();
    let (peer, mut conn) = connected(&mut fake, cfg).await;
    let mut events = peer.events();
    let slow = new_identity();
    let bob = new_identity();
    let seal = |id: &'static str, signer: &Identity, mid: &str, text: &str| {
        msg(v1_payload(
            &Sender { id, signer },
            "alice",
            &alice_kem,
            mid,
            mid,
            text,
        ))
    };

    // "slow" writes first; the server never answers its key request.
    conn.send(seal("slow", &slow, "s-1", "from slow")).await;
    let slow_request = conn.expect("request_public_key").await;
    assert_eq!(slow_request["payload"]["targetId"], "slow");
    // bob writes next, and his message arrives while slow's key request is still unanswered.
    conn.send(seal("bob", &bob, "b-1", "from bob")).await;
    conn.serve_key("bob", &bob).await;
    let text = wait_for(&mut events, |e| match e {
        PeerEvent::Message(m) => Some((m.from.to_string(), m.text)),
        _ => None,
    })
    .await;
    assert_eq!(text, ("bob".to_owned(), "from bob".to_owned()));

    // Answered at last, slow's message opens too.
    conn.send(json!({"type": "public_key_response", "payload": key_payload("slow", &slow), "requestId": slow_request["requestId"]}))
        .await;
    let text = wait_for(&mut events, |e| match e {
        PeerEvent::Message(m) => Some((m.from.to_string(), m.text)),
        _ => None,
    })
    .await;
    assert_eq!(text, ("slow".to_owned(), "from slow".to_owned()));
}
