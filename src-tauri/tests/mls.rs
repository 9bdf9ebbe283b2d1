//! MLS in the desktop app, against a real `lattice-server` (port 0): a 1:1 chat with a headless
//! MLS-capable peer moves to MLS by itself, the peer list says so (also to the page when a
//! typing notice alone set the chat up, no message), the state lives in the data
//! directory (owner-only, narrowed again on every start), and a stopped app resumes the conversation without losing an epoch (a message
//! that waited in the mailbox while it was down, then messages both ways). A peer without MLS
//! keeps `lattice-v1`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use lattice_desktop::storage::MLS_STATE_FILE;
use lattice_peer::{Algorithm, EventStream, IncomingMessage, MessagingPeer, PeerEvent};
use lattice_protocol::ClientId;
use serde_json::{json, Value};
use support::{eventually, until_online, TestApp, WAIT};
use tauri::{Listener as _, Manager as _};

/// The next decrypted message a headless peer receives.
async fn next_message(events: &mut EventStream) -> IncomingMessage {
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some(PeerEvent::Message(m)) = events.next().await {
                break m;
            }
        }
    })
    .await
    .expect("a message arrives")
}

/// A headless peer with MLS state in `dir`, connected, its KeyPackages at the server.
async fn mls_peer(url: &str, name: &str, dir: &std::path::Path) -> MessagingPeer {
    let mut config = lattice_peer::PeerConfig::new(
        url.to_owned(),
        ClientId::new(name).unwrap(),
        lattice_crypto::Identity::generate(&mut rand_core::OsRng),
    );
    config.mls_state = Some(dir.join("mls.sqlite3"));
    let peer = MessagingPeer::new(config).unwrap();
    peer.connect().await.unwrap();
    assert!(peer.publish_key_packages().await.unwrap() > 0);
    peer
}

fn peer_row(app: &TestApp, id: &str) -> Value {
    let boot = app.invoke("bootstrap", json!({})).unwrap();
    boot["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == json!(id))
        .cloned()
        .unwrap_or(Value::Null)
}

/// Waits until alice's conversation with `peer` holds an incoming message `text`.
fn until_received(app: &TestApp, peer: &str, text: &str) -> Value {
    let page = eventually(
        text,
        || {
            app.invoke("load_messages", json!({"peerId": peer}))
                .unwrap()
        },
        |page| {
            page["messages"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["body"] == json!(text) && m["outgoing"] == json!(false))
        },
    );
    page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["body"] == json!(text))
        .cloned()
        .unwrap()
}

#[test]
fn a_chat_with_an_mls_peer_moves_to_mls_and_survives_a_restart() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt
        .block_on(lattice_server::spawn(lattice_server::Config::for_tests()))
        .unwrap();
    let url = server.url();
    let bob_dir = tempfile::tempdir().unwrap();
    let bob = rt.block_on(mls_peer(&url, "bob", bob_dir.path()));
    let mut bob_events = bob.events();
    // carol runs a Lattice client without MLS.
    let carol = rt.block_on(support::connect_peer(&url, "carol"));
    let mut carol_events = carol.events();
    let alice_id = ClientId::new("alice").unwrap();

    let app = TestApp::set_up("alice", &url);
    until_online(&app, &["bob", "carol"]);
    assert_eq!(peer_row(&app, "bob")["mls"], json!(false));

    // The first message to bob sets up the two-member MLS group by itself.
    app.invoke(
        "send_message",
        json!({"peerId": "bob", "text": "first over mls"}),
    )
    .unwrap();
    let got = rt.block_on(next_message(&mut bob_events));
    assert_eq!(got.text, "first over mls");
    assert_eq!(got.algorithm, Algorithm::Mls);
    assert_eq!(got.from, alice_id);
    eventually(
        "bob shown as MLS",
        || peer_row(&app, "bob"),
        |row| row["mls"] == json!(true),
    );

    // carol has no MLS: lattice-v1, and no MLS mark.
    app.invoke(
        "send_message",
        json!({"peerId": "carol", "text": "hi carol"}),
    )
    .unwrap();
    let got = rt.block_on(next_message(&mut carol_events));
    assert_eq!(got.text, "hi carol");
    assert_eq!(got.algorithm, Algorithm::LatticeV1);
    assert_eq!(peer_row(&app, "carol")["mls"], json!(false));

    rt.block_on(bob.send_message(&alice_id, "reply over mls"))
        .unwrap();
    let reply = until_received(&app, "bob", "reply over mls");
    assert_eq!(reply["authenticated"], json!(true));

    // The MLS state is its own owner-only file in the data directory.
    let state = app.dir().join(MLS_STATE_FILE);
    assert!(state.is_file(), "{state:?}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&state).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o077,
            0,
            "group secrets readable by others: {mode:o}"
        );
    }

    // The app stops; bob writes meanwhile (into alice's mailbox, in the group's current epoch).
    let dir = app.into_dir();
    rt.block_on(bob.send_message(&alice_id, "while you were away"))
        .unwrap();

    // A file widened while the app was down is narrowed again on the next start.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let state = dir.path().join(MLS_STATE_FILE);
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o644)).unwrap();
    }

    let app = TestApp::in_dir(dir);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let state = app.dir().join(MLS_STATE_FILE);
        let mode = std::fs::metadata(&state).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "narrowed on start: {mode:o}");
    }
    until_online(&app, &["bob"]);
    let waited = until_received(&app, "bob", "while you were away");
    assert_eq!(waited["authenticated"], json!(true));
    assert_eq!(peer_row(&app, "bob")["mls"], json!(true));

    // Both ways again, still MLS: no epoch was lost across the restart.
    app.invoke(
        "send_message",
        json!({"peerId": "bob", "text": "back again"}),
    )
    .unwrap();
    let got = rt.block_on(next_message(&mut bob_events));
    assert_eq!(got.text, "back again");
    assert_eq!(got.algorithm, Algorithm::Mls);
    rt.block_on(bob.send_message(&alice_id, "welcome back"))
        .unwrap();
    until_received(&app, "bob", "welcome back");

    drop(app.into_dir());
    rt.block_on(async {
        bob.disconnect().await;
        carol.disconnect().await;
        server.shutdown().await;
    });
}

/// alice's app sets the chat with bob (headless, MLS) up by a typing notice: no message, so no
/// status of one moves, only the library's `MovedToMls` says it. The page is still told at once
/// that bob speaks MLS (its peer list, which draws the header's mark), and bob gets the notice
/// over MLS.
#[test]
fn the_page_learns_the_mls_mark_when_a_typing_notice_set_the_chat_up() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt
        .block_on(lattice_server::spawn(lattice_server::Config::for_tests()))
        .unwrap();
    let url = server.url();
    let bob_dir = tempfile::tempdir().unwrap();
    let bob = rt.block_on(mls_peer(&url, "bob", bob_dir.path()));
    let mut bob_events = bob.events();

    let app = TestApp::set_up("alice", &url);
    until_online(&app, &["bob"]);
    // The background key fetch of people online is done (its peer list is published).
    eventually(
        "bob's key fetched",
        || peer_row(&app, "bob"),
        |row| row["fingerprint"].is_string(),
    );
    assert_eq!(peer_row(&app, "bob")["mls"], json!(false));
    let (page_tx, page_rx) = std::sync::mpsc::channel::<String>();
    app.webview().app_handle().listen_any(
        lattice_desktop::contract::Event::PeerList.as_str(),
        move |event| {
            let _ = page_tx.send(event.payload().to_owned());
        },
    );

    app.invoke("typing", json!({"peerId": "bob", "typing": true}))
        .unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let payload = page_rx
            .recv_timeout(left)
            .expect("the page is told that bob speaks MLS");
        let peers: Value = serde_json::from_str(&payload).unwrap();
        let bob_row = peers
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] == json!("bob"))
            .cloned()
            .unwrap_or(Value::Null);
        if bob_row["mls"] == json!(true) {
            break;
        }
    }
    // bob got the notice, over MLS.
    let started = rt.block_on(async {
        tokio::time::timeout(WAIT, async {
            loop {
                if let Some(PeerEvent::Update(u)) = bob_events.next().await {
                    if matches!(u.change, lattice_peer::Change::Typing { started: true }) {
                        break u.from;
                    }
                }
            }
        })
        .await
    });
    assert_eq!(started.expect("bob sees alice typing").as_str(), "alice");
    assert_eq!(
        bob.conversation_envelope(&ClientId::new("alice").unwrap()),
        Some(Algorithm::Mls)
    );
    // No message was stored: the mark came from the conversation's set-up alone.
    let page = app
        .invoke("load_messages", json!({"peerId": "bob"}))
        .unwrap();
    assert_eq!(page["messages"], json!([]));

    drop(app.into_dir());
    rt.block_on(async {
        bob.disconnect().await;
        server.shutdown().await;
    });
}
