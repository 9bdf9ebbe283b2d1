//! The delivery contract seen in `lattice-chat`: a real `lattice-server` process is killed with
//! SIGKILL while messages to the chat's user are in flight, and started again on the same data
//! dir and port. The chat reconnects by itself; the sender (a `lattice-peer` peer that resends
//! what was not acknowledged with the same message ids, as a durable outbox does) sends the
//! rest. Every message is shown in the terminal exactly once: nothing acknowledged is lost, and
//! what the server delivered before the kill and again after it is dropped by (sender, id).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../peer/tests/support/sender_log.rs"]
mod sender_log;
#[allow(dead_code)] // Shared with the server's crash tests, which use all of it.
#[path = "../../server/tests/support/server_process.rs"]
mod server_process;

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lattice_peer::{MessagingPeer, PeerConfig};
use lattice_protocol::{ClientId, MessageId};
use sender_log::record_sender;
use server_process::{free_port, log_tail, ServerProcess};
use tokio::io::{AsyncBufReadExt as _, BufReader};

/// Bound on each wait of this test (a reconnect after the restart takes a few seconds).
const WAIT: Duration = Duration::from_secs(60);

/// Messages sent; fewer than one sender's share of the recipient's mailbox, so none is refused.
const N: usize = 200;

fn text(i: usize) -> String {
    format!("crash-{i:04}-end")
}

/// Polls `done` every 25 ms until it holds; false after [`WAIT`].
async fn until(mut done: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    done()
}

#[tokio::test]
async fn after_kill_9_the_chat_shows_every_message_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let port = free_port();
    let server = ServerProcess::start_on(&dir, port, &[]).await;
    let url = server.url.clone();

    // bob: lattice-chat, its terminal on a pipe; every line it prints is kept
    let mut chat = tokio::process::Command::new(env!("CARGO_BIN_EXE_lattice-chat"))
        .args(["--server", &url, "--id", "bob", "--identity-file"])
        .arg(tmp.path().join("bob.identity"))
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let _stdin = chat.stdin.take().unwrap(); // kept open: the chat runs until it closes
    let lines: Arc<Mutex<Vec<String>>> = Arc::default();
    {
        let lines = Arc::clone(&lines);
        let stdout = chat.stdout.take().unwrap();
        tokio::spawn(async move {
            let mut out = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = out.next_line().await {
                lines.lock().unwrap().push(line);
            }
        });
    }
    let connections = |lines: &Arc<Mutex<Vec<String>>>| {
        lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.as_str() == "-- connected")
            .count()
    };
    assert!(
        until(|| connections(&lines) >= 1).await,
        "the chat connected"
    );

    // alice: a lattice-peer sender; its acknowledgements and registrations are counted
    let alice = MessagingPeer::new(PeerConfig::new(
        url.clone(),
        ClientId::new("alice").unwrap(),
        lattice_crypto::Identity::generate(&mut rand_core::OsRng),
    ))
    .unwrap();
    let (acked, registrations, failed) = record_sender(&alice);
    alice.connect().await.unwrap();
    let bob = ClientId::new("bob").unwrap();
    alice.request_public_key(&bob).await.unwrap();

    // a quarter of the messages, acknowledged; another quarter, and kill -9 right after it
    // is written (so some of it is in flight)
    let ids: Vec<MessageId> = (0..N)
        .map(|i| MessageId::new(format!("chat-crash-{i}")).unwrap())
        .collect();
    for (i, mid) in ids.iter().enumerate().take(N / 2) {
        alice
            .send_message_with_id(&bob, &text(i), mid.clone())
            .await
            .unwrap();
        if i + 1 == N / 4 {
            until(|| acked.lock().unwrap().len() >= N / 4).await;
        }
    }
    let registered_before = *registrations.lock().unwrap();
    server.kill9();
    let acked_at_kill = acked.lock().unwrap().clone();
    assert!(!acked_at_kill.is_empty(), "some messages were acknowledged");
    eprintln!(
        "{} of {} sent acknowledged at kill -9",
        acked_at_kill.len(),
        N / 2
    );

    let _server = ServerProcess::start_on(&dir, port, &[]).await;
    assert!(
        until(|| *registrations.lock().unwrap() > registered_before).await,
        "alice registered again:\n{}",
        log_tail(&dir)
    );
    // the outbox's part: everything not acknowledged, with its first id, then the rest
    for (i, mid) in ids.iter().enumerate() {
        if !acked.lock().unwrap().contains(mid) {
            alice
                .send_message_with_id(&bob, &text(i), mid.clone())
                .await
                .unwrap();
        }
    }

    let shown = |lines: &Arc<Mutex<Vec<String>>>| -> HashMap<usize, usize> {
        let mut shown = HashMap::new();
        for line in lines.lock().unwrap().iter() {
            for i in 0..N {
                // `#n [alice ✓] text`: numbered as the chat's history has it.
                let shown_as = line.strip_prefix('#').and_then(|l| l.split_once(' '));
                if shown_as.is_some_and(|(_, l)| l == format!("[alice ✓] {}", text(i))) {
                    *shown.entry(i).or_default() += 1;
                }
            }
        }
        shown
    };
    let all_shown = until(|| shown(&lines).len() == N).await;
    assert!(connections(&lines) >= 2, "the chat reconnected");
    let shown = shown(&lines);
    let lost: Vec<_> = ids
        .iter()
        .enumerate()
        .filter(|(i, m)| acked_at_kill.contains(*m) && !shown.contains_key(i))
        .map(|(_, m)| m)
        .collect();
    assert!(
        lost.is_empty(),
        "acknowledged before the kill, never shown: {lost:?}"
    );
    let failed = failed.lock().unwrap().clone();
    assert!(failed.is_empty(), "refused by the server: {failed:?}");
    assert!(all_shown, "shown {} of {N}", shown.len());
    let twice: Vec<_> = shown.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "shown more than once: {twice:?}");
    alice.disconnect().await;
}
