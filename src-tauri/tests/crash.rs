//! The delivery contract seen in the desktop app: a real `lattice-server` process is killed with
//! SIGKILL while the app's durable outbox has messages in flight to bob (a `lattice-peer` peer)
//! and bob's messages to the app are in flight, then started again on the same data dir and
//! port. The app reconnects by itself and its outbox resends what the server did not
//! acknowledge, with the same ids; bob resends his the same way. Every message arrives once:
//! bob is shown each of the app's once, the app stores and shows each of bob's once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)] // Shared with the server's crash tests, which use all of it.
#[path = "../../crates/server/tests/support/server_process.rs"]
mod server_process;
mod support;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lattice_peer::PeerEvent;
use lattice_protocol::{ClientId, MessageId};
use serde_json::{json, Value};
use server_process::{free_port, log_tail, ServerProcess};
use support::TestApp;

/// Messages each way.
const N: usize = 30;

/// Bound on each wait of this test (reconnects after the restart take a few seconds).
const WAIT: Duration = Duration::from_secs(60);

/// Polls `done` every 50 ms until it holds; false after [`WAIT`].
fn until(mut done: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + WAIT;
    while std::time::Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    done()
}

/// The app's conversation with bob: every message, oldest first.
fn conversation(app: &TestApp) -> Vec<Value> {
    let page = app
        .invoke("load_messages", json!({"peerId": "bob", "limit": 500}))
        .unwrap();
    page["messages"].as_array().unwrap().clone()
}

fn from_app(i: usize) -> String {
    format!("from the app {i}")
}

fn from_bob(i: usize) -> String {
    format!("from bob {i}")
}

#[test]
fn after_kill_9_the_outbox_resends_and_every_message_is_shown_once() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let port = free_port();
    let server = rt.block_on(ServerProcess::start_on(&dir, port, &[]));
    let url = server.url.clone();

    // bob: every message shown to him, every acknowledgement of his own, counted by handlers
    let bob = rt.block_on(support::connect_peer(&url, "bob"));
    let shown_to_bob: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let bob_acked: Arc<Mutex<HashSet<MessageId>>> = Arc::default();
    let bob_registrations = Arc::new(Mutex::new(0_u32));
    let _handler = {
        let (shown, acked, registrations) = (
            Arc::clone(&shown_to_bob),
            Arc::clone(&bob_acked),
            Arc::clone(&bob_registrations),
        );
        bob.on_event(move |e| match e {
            PeerEvent::Message(m) => {
                *shown.lock().unwrap().entry(m.text.clone()).or_default() += 1;
            }
            PeerEvent::MessageAck(a) => {
                acked.lock().unwrap().insert(a.message_id.clone());
            }
            PeerEvent::Registered { .. } => *registrations.lock().unwrap() += 1,
            _ => {}
        })
    };

    let app = TestApp::set_up("alice", &url);
    assert!(
        until(|| {
            let b = app.invoke("bootstrap", json!({})).unwrap();
            b["connection"]["state"] == json!("connected")
        }),
        "the app connected"
    );
    let alice = ClientId::new("alice").unwrap();
    rt.block_on(bob.request_public_key(&alice)).unwrap();

    // Both send a third, acknowledged; then a burst of another third, and the server is killed
    // right after it (so part of it is in flight); the last third waits in the app's outbox, or
    // fails for bob (resent below).
    let bob_ids: Vec<MessageId> = (0..N)
        .map(|i| MessageId::new(format!("bob-{i}")).unwrap())
        .collect();
    let send_both = |i: usize| {
        app.invoke(
            "send_message",
            json!({"peerId": "bob", "text": from_app(i)}),
        )
        .unwrap();
        let (bob, alice, id) = (bob.clone(), alice.clone(), bob_ids[i].clone());
        // not awaited: the burst goes out as fast as the peer writes it
        rt.spawn(async move {
            let _ = bob.send_message_with_id(&alice, &from_bob(i), id).await;
        });
    };
    for i in 0..N / 3 {
        send_both(i);
    }
    until(|| bob_acked.lock().unwrap().len() >= N / 3);
    for i in N / 3..2 * N / 3 {
        send_both(i);
    }
    let registered_before = *bob_registrations.lock().unwrap();
    server.kill9();
    let app_settled = conversation(&app)
        .iter()
        .filter(|m| m["outgoing"] == json!(true))
        .filter(|m| m["status"] == json!("delivered") || m["status"] == json!("queued"))
        .count();
    eprintln!(
        "at kill -9: {app_settled} of the app's {} and {} of bob's acknowledged",
        2 * N / 3,
        bob_acked.lock().unwrap().len()
    );
    for i in 2 * N / 3..N {
        send_both(i);
    }

    let _server = rt.block_on(ServerProcess::start_on(&dir, port, &[]));
    assert!(
        until(|| *bob_registrations.lock().unwrap() > registered_before),
        "bob registered again:\n{}",
        log_tail(&dir)
    );
    // bob's outbox: what the server did not acknowledge, with its first id
    for (i, id) in bob_ids.iter().enumerate() {
        if !bob_acked.lock().unwrap().contains(id) {
            rt.block_on(bob.send_message_with_id(&alice, &from_bob(i), id.clone()))
                .unwrap();
        }
    }

    // The app's messages: each shown to bob once, each settled in the app.
    let all_to_bob = until(|| {
        let shown = shown_to_bob.lock().unwrap();
        (0..N).all(|i| shown.contains_key(&from_app(i)))
    });
    let settled = until(|| {
        conversation(&app)
            .iter()
            .filter(|m| m["outgoing"] == json!(true))
            .filter(|m| m["status"] == json!("delivered") || m["status"] == json!("queued"))
            .count()
            == N
    });
    // Bob's messages: each stored and shown in the app once.
    let all_to_app = until(|| {
        let incoming: Vec<String> = conversation(&app)
            .iter()
            .filter(|m| m["outgoing"] == json!(false))
            .map(|m| m["body"].as_str().unwrap().to_owned())
            .collect();
        (0..N).all(|i| incoming.contains(&from_bob(i)))
    });

    let shown = shown_to_bob.lock().unwrap().clone();
    let missing: Vec<_> = (0..N)
        .map(from_app)
        .filter(|t| !shown.contains_key(t))
        .collect();
    assert!(
        all_to_bob,
        "never shown to bob: {missing:?}; the app shows {:?}",
        conversation(&app)
            .iter()
            .filter(|m| m["outgoing"] == json!(true))
            .map(|m| (m["body"].clone(), m["status"].clone()))
            .collect::<Vec<_>>()
    );
    let twice: Vec<_> = shown.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "shown to bob more than once: {twice:?}");
    assert!(settled, "the outbox settled: {:?}", conversation(&app));

    assert!(
        all_to_app,
        "bob's messages in the app: {:?}",
        conversation(&app)
    );
    let mut in_app: HashMap<String, u32> = HashMap::new();
    for m in conversation(&app)
        .iter()
        .filter(|m| m["outgoing"] == json!(false))
    {
        *in_app
            .entry(m["body"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    let twice: Vec<_> = in_app.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "shown in the app more than once: {twice:?}"
    );
    assert_eq!(in_app.len(), N);

    drop(app.into_dir());
    rt.block_on(bob.disconnect());
}
