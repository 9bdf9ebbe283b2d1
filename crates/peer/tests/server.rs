//! The client against a real `lattice-server` on loopback: messaging between two and three peers,
//! discovery, keys, presence, server questions (handlers, multi-round, debug_question and the admin
//! API), reconnection with a queued message, wss through a TLS proxy and with the server's native
//! TLS (its certificate reloaded on SIGHUP), and the echo bot.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

#[allow(dead_code)]
#[path = "../examples/echo_bot.rs"]
mod echo_bot;

use std::collections::HashSet;
use std::time::Duration;

use lattice_crypto::{lattice_v1, message_signature_payload, KemPublicKey};
use lattice_peer::{Algorithm, ConnectionState, MessagingPeer, PeerError, PeerEvent, TlsOptions};
use lattice_protocol::{AckStatus, ErrorType, MessageId, QuestionKind};
use serde_json::json;
use support::raw::RawClient;
use support::server::*;
use support::*;
use tokio::sync::mpsc;

async fn online(url: &str, name: &str) -> MessagingPeer {
    let p = peer(url, name);
    p.connect().await.unwrap();
    p
}

async fn next_message(events: &mut lattice_peer::EventStream) -> lattice_peer::IncomingMessage {
    wait_for(events, |e| match e {
        PeerEvent::Message(m) => Some(m),
        _ => None,
    })
    .await
}

#[tokio::test]
async fn two_peers_talk_both_ways_and_see_each_other_come_and_go() {
    let server = spawn_server().await;
    let url = server.url();
    let alice = online(&url, "alice").await;
    let bob = online(&url, "bob").await;
    assert!(alice.is_verified() && bob.is_verified());
    let mut alice_events = alice.events();
    let mut bob_events = bob.events();

    let peers = alice.discover_peers().await.unwrap();
    assert!(peers.contains(&id("bob")));
    assert!(!peers.contains(&id("alice")), "discover filters us out");

    let sent = alice.send_message(&id("bob"), "hi bob").await.unwrap();
    assert_eq!(sent.algorithm, Algorithm::LatticeV1);
    let m = next_message(&mut bob_events).await;
    assert_eq!(
        (m.from.as_str(), m.text.as_str(), m.verified),
        ("alice", "hi bob", true)
    );
    assert_eq!(m.message_id.as_ref(), Some(&sent.message_id));
    let ack = wait_for(&mut alice_events, |e| match e {
        PeerEvent::MessageAck(a) => Some(a),
        _ => None,
    })
    .await;
    assert_eq!(
        (ack.message_id, ack.status),
        (sent.message_id, AckStatus::Delivered)
    );

    bob.send_message(&id("alice"), "hi alice").await.unwrap();
    let m = next_message(&mut alice_events).await;
    assert_eq!(
        (m.from.as_str(), m.text.as_str(), m.verified),
        ("bob", "hi alice", true)
    );

    // Presence: alice discovered, so she hears carol arrive and leave.
    let carol = online(&url, "carol").await;
    wait_for(&mut alice_events, |e| {
        matches!(e, PeerEvent::PeerConnected(p) if p.as_str() == "carol").then_some(())
    })
    .await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let handle = alice.on_peer_disconnected(move |p| {
        let _ = tx.send(p.clone());
    });
    carol.disconnect().await;
    let gone = tokio::time::timeout(EVENT_WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(gone.as_str(), "carol");
    assert!(handle.remove());

    // Keys: bob's fingerprint as alice pinned it is bob's own.
    let key = alice.request_public_key(&id("bob")).await.unwrap();
    assert_eq!(key.fingerprint(), Some(bob.fingerprint()));
    assert_eq!(
        alice.peer_fingerprint(&id("bob")).unwrap(),
        Some(bob.fingerprint())
    );
    let err = alice.request_public_key(&id("nobody")).await.unwrap_err();
    assert_eq!(err.error_type(), Some(ErrorType::PeerNotFound));

    alice.disconnect().await;
    bob.disconnect().await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_resend_with_the_same_message_id_is_delivered_once() {
    let server = spawn_server().await;
    let url = server.url();
    let alice = online(&url, "alice").await;
    let bob = online(&url, "bob").await;
    let mut bob_events = bob.events();

    let message_id = MessageId::new("0b8f0c7e-1d2a-4f7e-9a39-1a2b3c4d5e6f").unwrap();
    for _ in 0..2 {
        let sent = alice
            .send_message_with_id(&id("bob"), "only once", message_id.clone())
            .await
            .unwrap();
        assert_eq!(sent.message_id, message_id);
    }
    let marker = alice.send_message(&id("bob"), "marker").await.unwrap();
    assert_ne!(marker.message_id, message_id);

    let mut seen = Vec::new();
    loop {
        let m = next_message(&mut bob_events).await;
        if m.text == "marker" {
            break;
        }
        seen.push((m.text, m.message_id));
    }
    assert_eq!(seen, vec![("only once".to_owned(), Some(message_id))]);
}

#[tokio::test]
async fn three_peers_each_reach_the_other_two() {
    let server = spawn_server().await;
    let url = server.url();
    let names = ["ann", "ben", "cat"];
    let mut peers = Vec::new();
    for n in names {
        peers.push(online(&url, n).await);
    }
    let mut streams: Vec<_> = peers.iter().map(MessagingPeer::events).collect();
    for (i, p) in peers.iter().enumerate() {
        for (j, to) in names.iter().enumerate() {
            if i != j {
                p.send_message(&id(to), &format!("{} to {}", names[i], to))
                    .await
                    .unwrap();
            }
        }
    }
    for (j, events) in streams.iter_mut().enumerate() {
        let mut got = HashSet::new();
        while got.len() < 2 {
            let m = next_message(events).await;
            assert!(m.verified);
            assert_eq!(m.text, format!("{} to {}", m.from, names[j]));
            got.insert(m.from.to_string());
        }
    }
    for p in &peers {
        p.disconnect().await;
    }
}

fn answer_for(q: &lattice_peer::IncomingQuestion) -> serde_json::Value {
    match q.question.kind {
        Some(QuestionKind::Confirm) => json!(true),
        Some(QuestionKind::Choice) => json!(q.question.options.as_ref().unwrap()[0]),
        _ => json!("blue"),
    }
}

#[tokio::test]
async fn debug_question_runs_a_multi_round_conversation_through_handlers() {
    let server = spawn_server().await;
    let alice = online(&server.url(), "alice").await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let handle = alice.on_server_question(move |q| {
        let _ = tx.send(q.clone());
    });
    alice.debug_question().unwrap();
    let mut conversation = None;
    for round in 1..=3u32 {
        let q = tokio::time::timeout(EVENT_WAIT, rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(!q.question.text.is_empty());
        if let Some(r) = q.round {
            assert_eq!(r, round);
        }
        match &conversation {
            None => conversation = q.conversation_id.clone(),
            Some(c) => assert_eq!(q.conversation_id.as_ref(), Some(c)),
        }
        alice
            .respond_to_server(&q.question_id, answer_for(&q))
            .unwrap();
    }
    assert!(handle.remove());
    // Answering an unknown question is reported as an error event.
    let mut events = alice.events();
    alice
        .respond_to_server(
            &lattice_protocol::QuestionId::new("no-such-question").unwrap(),
            "x",
        )
        .unwrap();
    let e = wait_for(&mut events, |e| match e {
        PeerEvent::Error(e @ PeerError::Server { .. }) => Some(e),
        _ => None,
    })
    .await;
    assert_eq!(e.error_type(), Some(ErrorType::UnknownQuestion));
    alice.disconnect().await;
}

#[tokio::test]
async fn the_admin_api_asks_and_gets_the_answer_across_rounds() {
    let server = spawn_server().await;
    let alice = online(&server.url(), "alice").await;
    let responder = alice.clone();
    alice.on_server_question(move |q| {
        let answer = format!("answer to {}", q.question.text);
        responder.respond_to_server(&q.question_id, answer).unwrap();
    });
    let addr = server.local_addr();
    let (status, body) = admin_post(
        addr,
        "/admin/peers/alice/questions",
        &json!({"question": {"text": "favourite colour?"}, "timeoutMs": 10_000}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["response"], "answer to favourite colour?");
    let conversation = body["conversationId"].clone();
    assert!(conversation.is_string());
    let (status, body2) = admin_post(
        addr,
        "/admin/peers/alice/questions",
        &json!({"question": {"text": "why?", "kind": "text"}, "conversationId": conversation, "timeoutMs": 10_000}),
    )
    .await;
    assert_eq!(status, 200, "{body2}");
    assert_eq!(body2["response"], "answer to why?");
    assert_eq!(body2["conversationId"], conversation);
    assert_eq!(body2["round"], 2);
    let (status, _) = admin_post(
        addr,
        "/admin/peers/nobody/questions",
        &json!({"question": {"text": "there?"}}),
    )
    .await;
    assert_eq!(status, 404);
    alice.disconnect().await;
}

#[tokio::test]
async fn after_a_server_restart_the_peer_reconnects_re_registers_and_delivers_its_queue() {
    let data = tempfile::tempdir().unwrap();
    let server = spawn_server_at(0, Some(data.path().to_owned())).await;
    let port = server.local_addr().port();
    let url = server.url();
    let alice = online(&url, "alice").await;
    let bob = online(&url, "bob").await;
    let mut alice_events = alice.events();
    let mut bob_events = bob.events();
    alice.request_public_key(&id("bob")).await.unwrap();

    server.shutdown().await;
    wait_for(&mut alice_events, |e| {
        matches!(
            e,
            PeerEvent::ConnectionState(ConnectionState::Reconnecting { .. })
        )
        .then_some(())
    })
    .await;
    // Sealed now, queued until alice is registered again.
    let queued = alice
        .send_message(&id("bob"), "sent while the server was down")
        .await
        .unwrap();

    let server = spawn_server_at(port, Some(data.path().to_owned())).await;
    wait_for(&mut alice_events, |e| {
        matches!(e, PeerEvent::Registered { .. }).then_some(())
    })
    .await;
    assert_eq!(alice.connection_state(), ConnectionState::Connected);
    let m = next_message(&mut bob_events).await;
    assert_eq!(m.text, "sent while the server was down");
    assert_eq!(m.message_id, Some(queued.message_id));
    assert!(m.verified);
    alice
        .register_and_wait(Duration::from_secs(5))
        .await
        .unwrap();
    alice.disconnect().await;
    bob.disconnect().await;
    server.shutdown().await;
}

#[tokio::test]
async fn wss_through_a_tls_proxy_with_an_extra_ca() {
    let server = spawn_server().await;
    let proxy = TlsProxy::start(server.local_addr()).await;
    let mut config = test_config(&proxy.url, "secure", new_identity());
    config.tls = TlsOptions {
        extra_ca_pem: Some(proxy.ca_pem.clone()),
    };
    let secure = MessagingPeer::new(config).unwrap();
    secure.connect().await.unwrap();
    let plain = online(&server.url(), "plain").await;
    let mut events = plain.events();
    secure.send_message(&id("plain"), "over tls").await.unwrap();
    assert_eq!(next_message(&mut events).await.text, "over tls");

    // Without the CA the certificate is refused (or, on a machine without any platform root
    // certificate, the TLS configuration itself is).
    match MessagingPeer::new(test_config(&proxy.url, "untrusted", new_identity())) {
        Ok(untrusted) => assert!(matches!(
            untrusted.connect().await,
            Err(PeerError::Connect { .. })
        )),
        Err(e) => assert!(matches!(e, PeerError::Tls(_)), "{e}"),
    }
    secure.disconnect().await;
    plain.disconnect().await;
}

/// A CA and a `localhost` certificate it signed, as PEM: (CA, certificate, key).
fn ca_and_leaf() -> (String, String, String) {
    let c = TestCertificates::new();
    (c.ca_pem, c.leaf_pem, c.key_pem)
}

fn trusting(url: &str, name: &str, ca_pem: &str) -> MessagingPeer {
    let mut config = test_config(url, name, new_identity());
    config.tls = TlsOptions {
        extra_ca_pem: Some(ca_pem.to_owned()),
    };
    MessagingPeer::new(config).unwrap()
}

#[tokio::test]
async fn native_tls_with_an_extra_ca_and_a_reload_on_sighup_that_keeps_connections() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let (ca1, leaf1, key1) = ca_and_leaf();
    std::fs::write(&cert, &leaf1).unwrap();
    std::fs::write(&key, &key1).unwrap();
    let mut config = lattice_server::Config::for_tests();
    config.tls_cert = Some(cert.clone());
    config.tls_key = Some(key.clone());
    let server = lattice_server::spawn(config).await.unwrap();
    let url = format!("wss://localhost:{}", server.local_addr().port());

    let alice = trusting(&url, "alice", &ca1);
    alice.connect().await.unwrap();
    let bob = trusting(&url, "bob", &ca1);
    bob.connect().await.unwrap();
    let mut bob_events = bob.events();
    let mut alice_events = alice.events();
    alice
        .send_message(&id("bob"), "over native tls")
        .await
        .unwrap();
    assert_eq!(next_message(&mut bob_events).await.text, "over native tls");
    // plain WebSocket on the TLS port is refused, and so is an untrusted certificate
    assert!(online_result(
        &format!("ws://127.0.0.1:{}", server.local_addr().port()),
        "plain"
    )
    .await
    .is_err());
    let (ca2, leaf2, key2) = ca_and_leaf();
    assert!(matches!(
        trusting(&url, "carol", &ca2).connect().await,
        Err(PeerError::Connect { .. })
    ));

    // A broken pair on SIGHUP: logged, the old certificate stays.
    std::fs::write(&cert, "not a certificate").unwrap();
    hangup();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let dave = trusting(&url, "dave", &ca1);
    dave.connect().await.unwrap();
    dave.disconnect().await;

    // The new pair on SIGHUP: new connections get it, open ones are kept.
    std::fs::write(&cert, &leaf2).unwrap();
    std::fs::write(&key, &key2).unwrap();
    hangup();
    let carol = trusting(&url, "carol", &ca2);
    let mut reloaded = false;
    for _ in 0..50 {
        if carol.connect().await.is_ok() {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(reloaded, "the new certificate is served after SIGHUP");
    assert!(matches!(
        trusting(&url, "erin", &ca1).connect().await,
        Err(PeerError::Connect { .. })
    ));
    // alice and bob never lost their connections: no state change, and messages still flow
    bob.send_message(&id("alice"), "still here").await.unwrap();
    let got = none_before(
        &mut alice_events,
        |e| matches!(e, PeerEvent::ConnectionState(_)),
        |e| match e {
            PeerEvent::Message(m) => Some(m.text.clone()),
            _ => None,
        },
    )
    .await;
    assert_eq!(got, "still here");
    assert_eq!(alice.connection_state(), ConnectionState::Connected);
    carol
        .send_message(&id("bob"), "from the new cert")
        .await
        .unwrap();
    let got = none_before(
        &mut bob_events,
        |e| matches!(e, PeerEvent::ConnectionState(_)),
        |e| match e {
            PeerEvent::Message(m) => Some(m.text.clone()),
            _ => None,
        },
    )
    .await;
    assert_eq!(got, "from the new cert");
    for p in [alice, bob, carol] {
        p.disconnect().await;
    }
    server.shutdown().await;
}

/// Sends SIGHUP to this test process (the in-process server reloads its certificate).
fn hangup() {
    let status = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

async fn online_result(url: &str, name: &str) -> Result<(), PeerError> {
    peer(url, name).connect().await
}

#[tokio::test]
async fn the_echo_bot_quotes_what_it_is_sent() {
    let server = spawn_server().await;
    let url = server.url();
    let bot = online(&url, "echo").await;
    let bot_task = tokio::spawn(echo_bot::run(bot.clone()));
    let alice = online(&url, "alice").await;
    let mut events = alice.events();
    alice.send_message(&id("echo"), "ping\npong").await.unwrap();
    let m = next_message(&mut events).await;
    assert_eq!(
        (m.from.as_str(), m.text.as_str(), m.verified),
        ("echo", "> ping\n> pong", true)
    );
    bot.disconnect().await;
    alice.disconnect().await;
    bot_task.abort();
}

#[tokio::test]
async fn an_id_bound_to_another_identity_is_refused_and_not_retried() {
    let server = spawn_server().await;
    let alice = online(&server.url(), "alice").await;
    let impostor = peer(&server.url(), "alice");
    let err = impostor.connect().await.unwrap_err();
    assert_eq!(err.error_type(), Some(ErrorType::ClientIdTaken), "{err}");
    assert_eq!(impostor.connection_state(), ConnectionState::Disconnected);
    // The real alice is undisturbed.
    assert_eq!(alice.connection_state(), ConnectionState::Connected);
    assert!(alice.discover_peers().await.is_ok());
    alice.disconnect().await;
}

/// Any sign that a peer is (re)connecting.
fn reconnects(e: &PeerEvent) -> bool {
    matches!(
        e,
        PeerEvent::ConnectionState(
            ConnectionState::Reconnecting { .. } | ConnectionState::Connected
        ) | PeerEvent::Registered { .. }
    )
}

/// Two instances of one identity (same id, same keys): the second connect replaces the first, which
/// is closed with code 4000. The first must not reconnect (they would replace each other forever):
/// it reports the replacement and stays disconnected until `connect` is called again.
#[tokio::test]
async fn a_connection_replaced_by_the_same_identity_does_not_reconnect() {
    let server = spawn_server().await;
    let url = server.url();
    let carol = online(&url, "carol").await;
    let mut carol_events = carol.events();
    let identity = new_identity();
    let copy = || lattice_crypto::Identity::from_bytes(&identity.to_bytes()).unwrap();
    let first = MessagingPeer::new(test_config(&url, "alice", copy())).unwrap();
    first.connect().await.unwrap();
    let mut first_events = first.events();
    let second = MessagingPeer::new(test_config(&url, "alice", copy())).unwrap();
    let mut second_events = second.events();
    second.connect().await.unwrap();

    // The first instance is told why it lost the connection, then goes to Disconnected without
    // ever trying again.
    none_before(&mut first_events, reconnects, |e| {
        matches!(e, PeerEvent::Error(PeerError::Replaced)).then_some(())
    })
    .await;
    none_before(&mut first_events, reconnects, |e| {
        matches!(e, PeerEvent::ConnectionState(ConnectionState::Disconnected)).then_some(())
    })
    .await;
    // Disconnected is the supervisor's last word: nothing will reconnect it behind our back.
    assert_eq!(first.connection_state(), ConnectionState::Disconnected);
    assert!(matches!(
        first.register_and_wait(Duration::from_secs(1)).await,
        Err(PeerError::NotConnected)
    ));

    // The second instance stays connected and can send and receive.
    let sent = second
        .send_message(&id("carol"), "from the second")
        .await
        .unwrap();
    let m = next_message(&mut carol_events).await;
    assert_eq!(
        (m.from.as_str(), m.text.as_str()),
        ("alice", "from the second")
    );
    carol
        .send_message(&id("alice"), "back to you")
        .await
        .unwrap();
    let bad_for_second = |e: &PeerEvent| {
        matches!(
            e,
            PeerEvent::Error(PeerError::Replaced)
                | PeerEvent::ConnectionState(
                    ConnectionState::Reconnecting { .. } | ConnectionState::Disconnected
                )
        )
    };
    let ack = none_before(&mut second_events, bad_for_second, |e| match e {
        PeerEvent::MessageAck(a) => Some(a.clone()),
        _ => None,
    })
    .await;
    assert_eq!(ack.message_id, sent.message_id);
    let m = none_before(&mut second_events, bad_for_second, |e| match e {
        PeerEvent::Message(m) => Some(m.clone()),
        _ => None,
    })
    .await;
    assert_eq!(
        (m.from.as_str(), m.text.as_str(), m.verified),
        ("carol", "back to you", true)
    );
    assert_eq!(second.connection_state(), ConnectionState::Connected);
    assert_eq!(first.connection_state(), ConnectionState::Disconnected);

    // An explicit connect takes the id back; now the second instance is the replaced one.
    first.connect().await.unwrap();
    wait_for(&mut second_events, |e| {
        matches!(e, PeerEvent::Error(PeerError::Replaced)).then_some(())
    })
    .await;
    wait_for(&mut second_events, |e| {
        matches!(e, PeerEvent::ConnectionState(ConnectionState::Disconnected)).then_some(())
    })
    .await;
    assert_eq!(first.connection_state(), ConnectionState::Connected);
    first.disconnect().await;
    second.disconnect().await;
    carol.disconnect().await;
    server.shutdown().await;
}

/// A port nothing listens on right now (bound, read and released).
async fn free_port() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test]
async fn with_retry_first_connect_connect_waits_for_a_server_that_starts_later() {
    let port = free_port().await;
    let url = format!("ws://127.0.0.1:{port}");

    // Without the option the first failure is returned at once.
    let impatient = peer(&url, "impatient");
    assert!(matches!(
        impatient.connect().await,
        Err(PeerError::Connect { .. })
    ));
    assert_eq!(impatient.connection_state(), ConnectionState::Disconnected);

    let mut config = test_config(&url, "patient", new_identity());
    config.retry_first_connect = true;
    config.reconnect.max_attempts = 0;
    config.reconnect.base = Duration::from_millis(20);
    config.reconnect.max = Duration::from_millis(100);
    let patient = MessagingPeer::new(config).unwrap();
    let mut events = patient.events();
    let connecting = {
        let p = patient.clone();
        tokio::spawn(async move { p.connect().await })
    };
    // It keeps trying (and says so) while nothing listens.
    for n in 1..=3u32 {
        let attempt = wait_for(&mut events, |e| match e {
            PeerEvent::ConnectionState(ConnectionState::Reconnecting { attempt }) => Some(attempt),
            _ => None,
        })
        .await;
        assert_eq!(attempt, n);
    }
    assert!(!connecting.is_finished());

    let server = spawn_server_at(port, None).await;
    connecting.await.unwrap().unwrap();
    assert_eq!(patient.connection_state(), ConnectionState::Connected);
    // Registered for real: another peer reaches it.
    let other = online(&server.url(), "other").await;
    let mut patient_events = patient.events();
    other
        .send_message(&id("patient"), "you waited")
        .await
        .unwrap();
    assert_eq!(next_message(&mut patient_events).await.text, "you waited");
    patient.disconnect().await;
    other.disconnect().await;
}

#[tokio::test]
async fn retry_first_connect_gives_up_on_a_permanent_refusal_and_when_the_backoff_does() {
    let server = spawn_server().await;
    let url = server.url();
    let owner = online(&url, "taken").await;

    // The id belongs to another identity: retrying cannot help.
    let mut config = test_config(&url, "taken", new_identity());
    config.retry_first_connect = true;
    config.reconnect.max_attempts = 0;
    config.reconnect.base = Duration::from_millis(10);
    let impostor = MessagingPeer::new(config).unwrap();
    let err = impostor.connect().await.unwrap_err();
    assert!(err.is_permanent(), "{err:?}");
    assert_eq!(err.error_type(), Some(ErrorType::ClientIdTaken));
    assert_eq!(impostor.connection_state(), ConnectionState::Disconnected);

    // Nothing listens: a bounded backoff ends with the last connect error.
    let mut config = test_config(
        &format!("ws://127.0.0.1:{}", free_port().await),
        "nobody-home",
        new_identity(),
    );
    config.retry_first_connect = true;
    config.reconnect.max_attempts = 2;
    config.reconnect.base = Duration::from_millis(10);
    let lonely = MessagingPeer::new(config).unwrap();
    let mut events = lonely.events();
    assert!(matches!(
        lonely.connect().await,
        Err(PeerError::Connect { .. })
    ));
    let mut attempts = Vec::new();
    while let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(200), events.next()).await {
        if let PeerEvent::ConnectionState(ConnectionState::Reconnecting { attempt }) = e {
            attempts.push(attempt);
        }
    }
    assert_eq!(attempts, [1, 2]);
    assert_eq!(lonely.connection_state(), ConnectionState::Disconnected);
    owner.disconnect().await;
}

/// A raw client that registers unverified (no identity key), as an original client does, and
/// then sends whatever it likes.
struct Unverified {
    raw: RawClient,
}

impl Unverified {
    async fn register(url: &str, id: &str) -> Self {
        let kem = new_identity().kem_public_key().as_bytes().to_vec();
        Self {
            raw: RawClient::register_unverified(url, id, &kem).await,
        }
    }

    /// Sends a `lattice-v1` message to `to` claiming to be `from` (the server sets `fromId` to our
    /// id anyway), signed by a throwaway key; waits for the server's `message_ack`.
    async fn send_v1(&mut self, from: &str, to: &str, to_kem: &KemPublicKey, mid: &str) {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let signer = new_identity();
        let sent_at = u64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis(),
        )
        .unwrap();
        let body = "x".repeat(1024);
        let payload = message_signature_payload(from, to, mid, sent_at, body.as_bytes()).unwrap();
        let sig = signer.identity_key().sign(&payload);
        let inner = json!({"v": 1, "kind": "text", "messageId": mid, "body": body, "sentAt": sent_at, "sig": b64.encode(sig)});
        let ctx = lattice_v1::Context {
            sender_id: from,
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
        let frame = json!({"type": "message", "payload": {
            "targetId": to,
            "messageId": mid,
            "message": {"algorithm": "lattice-v1", "serializedCipherText": b64.encode(&sealed.cipher_text), "serializedEncryptedData": b64.encode(&sealed.encrypted_data)},
        }});
        self.raw.send(frame).await;
        let ack = self.raw.recv_type("message_ack").await;
        assert_eq!(ack["payload"]["messageId"], mid, "{ack}");
    }
}

/// Attack (issue 8, item 1): a sender registered without an identity key sends many `lattice-v1`
/// messages; no key can ever verify them. The victim refuses each for good and acknowledges it,
/// so the server forgets it: after a reconnect nothing of it comes back, and an honest message
/// queued behind them arrives.
#[tokio::test]
async fn messages_from_a_sender_without_an_identity_key_are_acked_and_gone() {
    const FLOOD: usize = 300;
    let server = spawn_server().await;
    let url = server.url();
    let alice_config = test_config(&url, "alice", new_identity());
    let alice_kem = alice_config
        .credentials
        .identity()
        .expect("a primary")
        .kem_public_key()
        .clone();
    let alice = MessagingPeer::new(alice_config.clone()).unwrap();
    let mut alice_events = alice.events();
    alice.connect().await.unwrap();
    let bob = online(&url, "bob").await;
    let mut bob_events = bob.events();

    let mut mallory = Unverified::register(&url, "mallory").await;
    for i in 0..FLOOD {
        mallory
            .send_v1("mallory", "alice", &alice_kem, &format!("x-{i}"))
            .await;
    }
    // Each is refused as coming from a sender without an identity key: final.
    let mut refused = HashSet::new();
    while refused.len() < FLOOD {
        let (mid, reason) = wait_for(&mut alice_events, |e| match e {
            PeerEvent::Message(m) => panic!("delivered: {m:?}"),
            PeerEvent::Error(PeerError::Rejected {
                from,
                message_id: Some(mid),
                reason,
            }) if from.as_str() == "mallory" => Some((mid, reason)),
            _ => None,
        })
        .await;
        assert_eq!(reason, lattice_peer::RejectReason::NoSenderKey);
        assert!(!reason.is_transient());
        refused.insert(mid);
    }
    // Every ack is written before this answer comes back (one ordered queue).
    alice.discover_peers().await.unwrap();
    alice.disconnect().await;
    drop(mallory);

    // An honest message, queued in alice's mailbox behind anything of mallory's left there.
    let sent = bob.send_message(&id("alice"), "honest").await.unwrap();
    let ack = wait_for(&mut bob_events, |e| match e {
        PeerEvent::MessageAck(a) if a.message_id == sent.message_id => Some(a),
        _ => None,
    })
    .await;
    assert_eq!(ack.status, AckStatus::Queued);

    // Alice comes back (a new instance of the same identity): the mailbox holds nothing of
    // mallory's, only the honest message.
    let alice = MessagingPeer::new(alice_config).unwrap();
    let mut alice_events = alice.events();
    alice.connect().await.unwrap();
    let m = none_before(
        &mut alice_events,
        |e| match e {
            PeerEvent::Message(m) => m.from.as_str() == "mallory",
            PeerEvent::Error(PeerError::Rejected { .. }) => true,
            _ => false,
        },
        |e| match e {
            PeerEvent::Message(m) => Some(m.clone()),
            _ => None,
        },
    )
    .await;
    assert_eq!(
        (m.from.as_str(), m.text.as_str(), m.verified),
        ("bob", "honest", true)
    );
    alice.disconnect().await;
    bob.disconnect().await;
    server.shutdown().await;
}
