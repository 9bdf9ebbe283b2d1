//! `lattice-chat` as a linked device, end to end: a real `lattice-server` process, the chat binary
//! on pipes and two `lattice-peer` peers (alice's primary, bob). The chat, started under a
//! throwaway id, links itself to alice with `/link`, saves itself to its `--device-file`, and
//! started again with that file runs as alice's laptop: it reads bob's 1:1 message to alice and
//! answers it as alice, and lists alice's devices.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)] // Shared with the server's crash tests, which use all of it.
#[path = "../../server/tests/support/server_process.rs"]
mod server_process;
mod support;

use lattice_peer::{LinkEvent, MessagingPeer, PeerConfig, PeerEvent};
use lattice_protocol::ClientId;
use server_process::ServerProcess;
use support::chat::{next_event, Chat};

async fn online(url: &str, name: &str, dir: &std::path::Path) -> MessagingPeer {
    let mut config = PeerConfig::new(
        url.to_owned(),
        ClientId::new(name).unwrap(),
        lattice_crypto::Identity::generate(&mut rand_core::OsRng),
    );
    config.mls_state = Some(dir.join(format!("{name}.mls")));
    let p = MessagingPeer::new(config).unwrap();
    p.connect().await.unwrap();
    p.publish_key_packages().await.unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chat_links_itself_saves_its_device_file_and_runs_as_that_device() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&tmp.path().join("data"), &[]).await;
    let alice = online(&server.url, "alice", tmp.path()).await;
    let bob = online(&server.url, "bob", tmp.path()).await;
    let mut alice_events = alice.events();
    let device_file = tmp.path().join("alice.laptop.device");
    let file_flag = device_file.to_str().unwrap();

    // Under a throwaway id: /link shows the code; alice types it and approves.
    let mut chat = Chat::spawn(
        &server.url,
        tmp.path(),
        "link-chat",
        &["--device-file", file_flag],
    );
    chat.until("type /help for commands").await;
    chat.type_line("/link alice laptop").await;
    let line = chat.until("-- linking code: ").await;
    let code = line
        .trim_start_matches("-- linking code: ")
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    next_event(&mut alice_events, |e| match e {
        PeerEvent::Link(LinkEvent::Request { .. }) => Some(()),
        _ => None,
    })
    .await;
    alice.enter_link_code(&code).unwrap();
    let relay = next_event(&mut alice_events, |e| match e {
        PeerEvent::Link(LinkEvent::AwaitingApproval { relay_id, .. }) => Some(relay_id),
        _ => None,
    })
    .await;
    alice.approve_link(&relay, true).await.unwrap();
    chat.until("-- saved this device to").await;
    chat.until("--device-file").await;
    chat.quit().await;
    assert!(device_file.exists());

    // Started again with the file: alice's laptop.
    let mut laptop = Chat::spawn(
        &server.url,
        tmp.path(),
        "alice",
        &["--device-file", file_flag],
    );
    laptop.until("running as device \"laptop\" of alice").await;
    laptop.until("type /help for commands").await;
    laptop.type_line("/devices").await;
    laptop.until("   laptop").await;
    // It starts a 1:1 with bob (MLS, from bob's KeyPackages): bob reads alice, and his answer
    // reaches the laptop.
    let mut bob_events = bob.events();
    laptop.type_line("/to bob").await;
    laptop.until("-- talking to bob").await;
    laptop.type_line("hi from the laptop").await;
    let m = next_event(&mut bob_events, |e| match e {
        PeerEvent::Message(m) if m.text == "hi from the laptop" => Some(m),
        _ => None,
    })
    .await;
    assert_eq!(m.from.as_str(), "alice");
    bob.send_message(&ClientId::new("alice").unwrap(), "hello laptop")
        .await
        .unwrap();
    assert!(laptop.until("hello laptop").await.contains("[bob ✓]"));
    laptop.quit().await;
}
