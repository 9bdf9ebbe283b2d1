//! The delivery contract seen by the application: `lattice-peer` peers against a real
//! `lattice-server` process that is killed with SIGKILL in the middle of a stream and restarted
//! on the same data dir. The sender resends what was not acknowledged, with the same message ids
//! (what an app's durable outbox does); every message is shown to the recipient exactly once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../server/tests/support/server_process.rs"]
#[allow(dead_code)] // shared by several crates' crash tests; each uses a part
mod server_process;
mod support;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lattice_peer::PeerEvent;
use lattice_protocol::MessageId;
use server_process::{free_port, ServerProcess};
use support::sender_log::record_sender;
use support::*;

#[tokio::test]
async fn after_kill_9_every_acknowledged_message_is_shown_once_and_resends_fill_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let port = free_port();
    let server = ServerProcess::start_on(&dir, port, &[]).await;
    let url = server.url.clone();

    let alice = peer(&url, "alice");
    let bob = peer(&url, "bob");
    // handlers, not the (lossy when lagging) event stream: every event is counted
    let shown: Arc<Mutex<HashMap<MessageId, u32>>> = Arc::default();
    let _h1 = {
        let shown = Arc::clone(&shown);
        bob.on_event(move |e| {
            if let PeerEvent::Message(m) = e {
                if let Some(id) = &m.message_id {
                    *shown.lock().unwrap().entry(id.clone()).or_default() += 1;
                }
            }
        })
    };
    let (acked, registrations, failed) = record_sender(&alice);
    bob.connect().await.unwrap();
    alice.connect().await.unwrap();
    alice.request_public_key(&id("bob")).await.unwrap();

    // Fewer than one sender's share of bob's mailbox (250: unacknowledged messages count), so the
    // server accepts every one even while bob is slow to acknowledge; past it the server refuses
    // with MAILBOX_FULL, which the assertion on `failed` below would name.
    let n = 200;
    let ids: Vec<MessageId> = (0..n)
        .map(|i| MessageId::new(format!("crash-{i}")).unwrap())
        .collect();
    for (i, mid) in ids.iter().enumerate() {
        alice
            .send_message_with_id(&id("bob"), &format!("message {i}"), mid.clone())
            .await
            .unwrap();
        if i == n / 2 {
            // wait (bounded) for some acknowledgements, then kill the server mid-stream
            for _ in 0..200 {
                if acked.lock().unwrap().len() >= n / 4 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            break;
        }
    }
    let registered_before = *registrations.lock().unwrap();
    server.kill9();
    let acked_at_kill: HashSet<MessageId> = acked.lock().unwrap().clone();
    assert!(
        !acked_at_kill.is_empty(),
        "some messages were acknowledged before the kill"
    );

    let _server = ServerProcess::start_on(&dir, port, &[]).await;
    // both peers reconnect by themselves; alice's "outbox" resends everything not acknowledged,
    // and sends the rest, all with their first ids
    for _ in 0..400 {
        if *registrations.lock().unwrap() > registered_before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        *registrations.lock().unwrap() > registered_before,
        "alice registered again"
    );
    for (i, mid) in ids.iter().enumerate() {
        if !acked.lock().unwrap().contains(mid) {
            alice
                .send_message_with_id(&id("bob"), &format!("message {i}"), mid.clone())
                .await
                .unwrap();
        }
    }
    // every message arrives (bounded wait), each shown once
    let all: HashSet<MessageId> = ids.iter().cloned().collect();
    for _ in 0..800 {
        let done = {
            let shown = shown.lock().unwrap();
            all.iter().all(|m| shown.contains_key(m))
        };
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let shown = shown.lock().unwrap().clone();
    let lost: Vec<_> = acked_at_kill
        .iter()
        .filter(|m| !shown.contains_key(*m))
        .collect();
    assert!(
        lost.is_empty(),
        "acknowledged before the kill, never shown: {lost:?}"
    );
    let failed = failed.lock().unwrap().clone();
    assert!(failed.is_empty(), "refused by the server: {failed:?}");
    let missing: Vec<_> = all.iter().filter(|m| !shown.contains_key(*m)).collect();
    assert!(
        missing.is_empty(),
        "resent and still not shown: {missing:?}"
    );
    let twice: Vec<_> = shown.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "shown more than once: {twice:?}");
    eprintln!(
        "{} acknowledged before kill -9, {} shown, each once",
        acked_at_kill.len(),
        shown.len()
    );
    alice.disconnect().await;
    bob.disconnect().await;
}
