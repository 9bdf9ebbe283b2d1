//! The client against a scripted fake server: the connection's life. Keepalive on a real
//! socket, the bounded queue and backoff while disconnected, replaced connections (close 4000), an
//! abandoned `connect`, extreme timeouts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use lattice_peer::{ConnectionState, MessagingPeer, PeerError, PeerEvent, WaitOptions};
use serde_json::json;
use support::fake::FakeServer;
use support::scripted::*;
use support::*;

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
