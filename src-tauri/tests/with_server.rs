//! Command-level tests against a real `lattice-server` (port 0) and a headless peer *bob*:
//! presence, sending and receiving through the app's commands and its peer bridge.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use lattice_desktop::storage::db::Db;
use lattice_peer::{Change, PeerEvent};
use lattice_protocol::ClientId;
use serde_json::json;
use support::{eventually, TestApp, WAIT};

/// Bob's next decrypted message.
async fn next_message(events: &mut lattice_peer::EventStream) -> lattice_peer::IncomingMessage {
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some(PeerEvent::Message(m)) = events.next().await {
                break m;
            }
        }
    })
    .await
    .expect("bob receives a message")
}

/// Waits until alice's message `id` to bob shows as delivered.
fn until_delivered(app: &TestApp, id: &serde_json::Value) {
    eventually(
        "the message delivered",
        || {
            app.invoke("load_messages", json!({"peerId": "bob"}))
                .unwrap()
        },
        |page| {
            page["messages"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["id"] == *id && m["status"] == json!("delivered"))
        },
    );
}

#[test]
fn alice_sees_bob_sends_and_receives() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("info")
        .with_test_writer()
        .try_init();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt
        .block_on(lattice_server::spawn(lattice_server::Config::for_tests()))
        .unwrap();
    let url = server.url();

    let bob = rt.block_on(support::connect_peer(&url, "bob"));
    let mut bob_events = bob.events();

    let app = TestApp::set_up("alice", &url);
    eventually(
        "bob online",
        || app.invoke("bootstrap", json!({})).unwrap(),
        |b| {
            b["connection"]["state"] == json!("connected")
                && b["peers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| p["id"] == json!("bob") && p["online"] == json!(true))
        },
    );

    let sent = app
        .invoke(
            "send_message",
            json!({"peerId": "bob", "text": "hello bob"}),
        )
        .unwrap();
    let got = rt.block_on(next_message(&mut bob_events));
    assert_eq!(got.text, "hello bob");
    assert!(got.verified);
    let id = sent["id"].clone();
    until_delivered(&app, &id);

    rt.block_on(bob.send_message(&ClientId::new("alice").unwrap(), "hi alice"))
        .unwrap();
    let page = eventually(
        "bob's reply",
        || {
            app.invoke("load_messages", json!({"peerId": "bob"}))
                .unwrap()
        },
        |page| page["messages"].as_array().unwrap().len() == 2,
    );
    let reply = &page["messages"][1];
    assert_eq!(reply["body"], json!("hi alice"));
    assert_eq!(reply["outgoing"], json!(false));
    assert_eq!(reply["authenticated"], json!(true));
    let boot = app.invoke("bootstrap", json!({})).unwrap();
    let bob_row = boot["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == json!("bob"))
        .unwrap()
        .clone();
    assert_eq!(bob_row["unread"], json!(1));
    assert_eq!(bob_row["authenticated"], json!(true));
    assert_eq!(
        bob_row["fingerprint"].as_str().unwrap().split(' ').count(),
        12
    );

    app.invoke("mark_read", json!({"peerId": "bob"})).unwrap();
    drop(app.into_dir());
    rt.block_on(async {
        bob.disconnect().await;
        server.shutdown().await;
    });
}

#[test]
fn a_message_written_offline_goes_out_when_the_server_comes_up_even_after_a_restart() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Find a free port, then leave it closed: the server is "down".
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let url = format!("ws://127.0.0.1:{port}");

    let app = TestApp::set_up("alice", &url);
    let sent = app
        .invoke(
            "send_message",
            json!({"peerId": "bob", "text": "typed while offline"}),
        )
        .unwrap();
    assert_eq!(sent["status"], json!("pending"));
    // The app is closed (or killed) before it ever connected.
    let dir = app.into_dir();
    // The id the message goes out with was stored when it was queued.
    let wire_id = {
        let db = Db::open(&dir.path().join(lattice_desktop::storage::DB_FILE)).unwrap();
        let outbox = db.outbox().unwrap();
        assert_eq!(outbox.len(), 1);
        outbox[0].wire_id.clone()
    };

    // The server comes up on that port, with bob online.
    let server = rt
        .block_on(lattice_server::spawn(lattice_server::Config {
            port,
            ..lattice_server::Config::for_tests()
        }))
        .unwrap();
    let bob = rt.block_on(support::connect_peer(&url, "bob"));
    let mut bob_events = bob.events();

    // The app starts again and delivers what waited in its outbox.
    let app = TestApp::in_dir(dir);
    let got = rt.block_on(next_message(&mut bob_events));
    assert_eq!(got.text, "typed while offline");
    // Sent with the stored id: had an earlier run handed it to the server before being killed,
    // bob would drop this copy as a duplicate.
    assert_eq!(
        got.message_id.as_ref().map(|m| m.as_str()),
        Some(wire_id.as_str())
    );
    let id = sent["id"].clone();
    until_delivered(&app, &id);

    drop(app.into_dir());
    rt.block_on(async {
        bob.disconnect().await;
        server.shutdown().await;
    });
}

/// Waits until the app shows the connection as `state`.
fn until_connection(app: &TestApp, state: &str) {
    eventually(
        &format!("the connection {state}"),
        || app.invoke("bootstrap", json!({})).unwrap(),
        |b| b["connection"]["state"] == json!(state),
    );
}

#[test]
fn a_read_receipt_owed_while_offline_goes_out_by_itself_after_the_reconnect() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    // On disk, like a real server: it remembers bob across the restart and keeps the receipt in
    // his mailbox if alice is back before him.
    let server_data = tempfile::tempdir().unwrap();
    let config = || lattice_server::Config {
        port,
        data_dir: Some(server_data.path().to_owned()),
        ..lattice_server::Config::for_tests()
    };
    let server = rt.block_on(lattice_server::spawn(config())).unwrap();
    let url = server.url();
    let bob = rt.block_on(support::connect_peer(&url, "bob"));
    let mut bob_events = bob.events();
    let app = TestApp::set_up("alice", &url);
    until_connection(&app, "connected");

    let sent = rt
        .block_on(bob.send_message(&ClientId::new("alice").unwrap(), "read me later"))
        .unwrap();
    eventually(
        "bob's message",
        || {
            app.invoke("load_messages", json!({"peerId": "bob"}))
                .unwrap()
        },
        |page| page["messages"].as_array().unwrap().len() == 1,
    );

    // The server goes down; alice reads the conversation while offline.
    rt.block_on(server.shutdown());
    eventually(
        "alice offline",
        || app.invoke("bootstrap", json!({})).unwrap(),
        |b| b["connection"]["state"] != json!("connected"),
    );
    app.invoke("mark_read", json!({"peerId": "bob"})).unwrap();

    // It comes back: nobody reads anything again, yet bob learns that alice read his message.
    let server = rt.block_on(lattice_server::spawn(config())).unwrap();
    let read = rt.block_on(async {
        tokio::time::timeout(WAIT, async {
            loop {
                if let Some(PeerEvent::Update(u)) = bob_events.next().await {
                    if let Change::Read { message_ids } = u.change {
                        break message_ids;
                    }
                }
            }
        })
        .await
        .expect("bob gets the receipt after the reconnect")
    });
    assert_eq!(read, [sent.message_id]);
    // The server answered, so the receipt left alice's outbox: it is not sent a second time.
    eventually(
        "the outbox empty",
        || {
            let db = Db::open(&app.dir().join(lattice_desktop::storage::DB_FILE)).unwrap();
            json!(db.outbox().unwrap().len())
        },
        |n| *n == json!(0),
    );
    // Seen again: nothing more is owed (queueing is part of the command).
    app.invoke("mark_read", json!({"peerId": "bob"})).unwrap();
    let db = Db::open(&app.dir().join(lattice_desktop::storage::DB_FILE)).unwrap();
    assert!(db.outbox().unwrap().is_empty(), "a receipt is queued once");
    drop(db);

    drop(app.into_dir());
    rt.block_on(async {
        bob.disconnect().await;
        server.shutdown().await;
    });
}
