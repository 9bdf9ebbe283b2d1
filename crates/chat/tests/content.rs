//! `lattice-chat`'s content commands end to end: a real `lattice-server` process, the chat binary
//! (bob) on pipes, and a `lattice-peer` peer (alice). Bob's `/reply`, `/edit`, `/react`,
//! `/delete` reach alice as the right typed contents; alice's edit, reaction, receipt and typing
//! are shown to bob by number; bob's receipts for what he was shown reach alice (none with
//! `--no-read-receipts`, which also hides hers); `/search` finds messages in bob's SQLite
//! history, also after the chat is restarted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)] // Shared with the server's crash tests, which use all of it.
#[path = "../../server/tests/support/server_process.rs"]
mod server_process;
mod support;

use lattice_peer::{
    Change, Content, ContentUpdate, EventStream, MessageRef, MessagingPeer, PeerConfig, PeerEvent,
    ReactionAction,
};
use lattice_protocol::{ClientId, MessageId};
use server_process::ServerProcess;
use support::chat::{next_event, Chat};

async fn next_update(events: &mut EventStream) -> ContentUpdate {
    next_event(events, |e| match e {
        PeerEvent::Update(u) => Some(u),
        _ => None,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_edit_react_delete_and_search_from_the_terminal() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&tmp.path().join("data"), &[]).await;
    let mut chat = Chat::start(&server.url, tmp.path()).await;
    let (alice_id, bob) = (
        ClientId::new("alice").unwrap(),
        ClientId::new("bob").unwrap(),
    );
    let alice = MessagingPeer::new(PeerConfig::new(
        server.url.clone(),
        alice_id.clone(),
        lattice_crypto::Identity::generate(&mut rand_core::OsRng),
    ))
    .unwrap();
    let mut events = alice.events();
    alice.connect().await.unwrap();

    let first = alice
        .send_message(&bob, "the launch is on Friday")
        .await
        .unwrap()
        .message_id;
    let line = chat.until("the launch is on Friday").await;
    assert_eq!(line, "#1 [alice ✓] the launch is on Friday");
    // Printed, so read: alice gets bob's receipt for it.
    assert_eq!(
        next_update(&mut events).await.change,
        Change::Read {
            message_ids: vec![first.clone()]
        }
    );
    chat.type_line("/to alice").await;
    chat.until("-- talking to alice").await;

    // /reply 1: alice gets a reply quoting her message.
    chat.type_line("/reply 1 sounds good").await;
    assert_eq!(
        chat.until("sounds good").await,
        "#2 [you → alice] ↪ #1: sounds good"
    );
    let reply = next_event(&mut events, |e| match e {
        PeerEvent::Message(m) => Some(m),
        _ => None,
    })
    .await;
    let answer = reply.message_id.clone().unwrap();
    assert_eq!(
        reply.content,
        Content::Reply {
            to: MessageRef {
                sender: alice_id.clone(),
                message_id: first.clone()
            },
            excerpt: "the launch is on Friday".into(),
            text: "sounds good".into(),
        }
    );

    // Alice's receipt, typing, edit and reaction, shown by number.
    alice
        .send_content(
            &bob,
            &Content::Receipt {
                read: vec![answer.clone()],
            },
        )
        .await
        .unwrap();
    chat.until("-- alice read #2").await;
    alice
        .send_content(&bob, &Content::Typing { started: true })
        .await
        .unwrap();
    chat.until("-- alice is typing").await;
    alice
        .send_content(
            &bob,
            &Content::Edit {
                target: first.clone(),
                text: "the launch moved to Monday".into(),
            },
        )
        .await
        .unwrap();
    chat.until("-- alice edited #1: the launch moved to Monday")
        .await;

    // /edit: bob's last message; /react 1.
    chat.type_line("/edit sounds great").await;
    chat.until("-- you edited #2: sounds great").await;
    assert_eq!(
        next_update(&mut events).await.change,
        Change::Edited {
            target: answer.clone(),
            text: "sounds great".into()
        }
    );
    chat.type_line("/react 1 👍").await;
    chat.until("-- you reacted 👍 on #1 (👍 1)").await;
    assert_eq!(
        next_update(&mut events).await.change,
        Change::Reaction {
            target: MessageRef {
                sender: alice_id.clone(),
                message_id: first.clone()
            },
            emoji: "👍".into(),
            action: ReactionAction::Add,
        }
    );
    alice
        .send_content(
            &bob,
            &Content::Reaction {
                target: MessageRef {
                    sender: alice_id.clone(),
                    message_id: first.clone(),
                },
                emoji: "🔥".into(),
                action: ReactionAction::Add,
            },
        )
        .await
        .unwrap();
    chat.until("-- alice reacted 🔥 to #1 (").await;

    // /search over the local history: edits are found by their new text.
    chat.type_line("/search MONDAY launch").await;
    assert_eq!(
        chat.until("#1 [").await,
        "#1 [alice → you] the launch moved to Monday"
    );
    chat.type_line("/search friday").await;
    chat.until("-- no message contains that").await;

    // /delete: bob's last message, for everyone; then nothing of his is left to edit.
    chat.type_line("/delete").await;
    chat.until("-- you deleted #2 for everyone").await;
    assert_eq!(
        next_update(&mut events).await.change,
        Change::Deleted {
            target: answer.clone()
        }
    );
    chat.type_line("/edit again").await;
    chat.until("!! you have sent nothing to alice to edit")
        .await;
    chat.type_line("/reply 2 hello?").await;
    chat.until("!! #2 was deleted").await;
    chat.type_line("/react 99 👍").await;
    chat.until("!! no message #99 in the conversation with alice")
        .await;
    chat.type_line("/search great").await;
    chat.until("-- no message contains that").await;
    chat.quit().await;

    // The history survives a restart: the next run searches it, and numbers on from it.
    let mut chat = Chat::start(&server.url, tmp.path()).await;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(tmp.path().join("bob.history"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the history is the user's only");
    }
    chat.type_line("/search launch").await;
    assert_eq!(
        chat.until("#1 [").await,
        "#1 [alice → you] the launch moved to Monday"
    );
    let later: MessageId = alice
        .send_message(&bob, "see you then")
        .await
        .unwrap()
        .message_id;
    assert!(!later.as_str().is_empty());
    assert_eq!(
        chat.until("see you then").await,
        "#3 [alice ✓] see you then"
    );
    // An edit of a message of the earlier run is checked against the SQLite history (this run
    // of the chat never saw the message itself).
    alice
        .send_content(
            &bob,
            &Content::Edit {
                target: first.clone(),
                text: "the launch moved to Tuesday".into(),
            },
        )
        .await
        .unwrap();
    chat.until("-- alice edited #1: the launch moved to Tuesday")
        .await;
    chat.quit().await;
    alice.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_read_receipts_off_none_are_sent_and_none_are_shown() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&tmp.path().join("data"), &[]).await;
    let mut chat = Chat::start_with(&server.url, tmp.path(), &["--no-read-receipts"]).await;
    let bob = ClientId::new("bob").unwrap();
    let alice = MessagingPeer::new(PeerConfig::new(
        server.url.clone(),
        ClientId::new("alice").unwrap(),
        lattice_crypto::Identity::generate(&mut rand_core::OsRng),
    ))
    .unwrap();
    let mut events = alice.events();
    alice.connect().await.unwrap();

    alice.send_message(&bob, "are you there?").await.unwrap();
    assert_eq!(
        chat.until("are you there?").await,
        "#1 [alice ✓] are you there?"
    );
    // Bob answers after the message was printed: what alice gets from him is the answer, with
    // no receipt before it (a receipt is sent as the message is printed, before the answer).
    chat.type_line("/to alice").await;
    chat.until("-- talking to alice").await;
    chat.type_line("yes").await;
    let answer = next_event(&mut events, |e| match e {
        PeerEvent::Update(u) => panic!("bob sent {:?} with receipts off", u.change),
        PeerEvent::Message(m) => Some(m),
        _ => None,
    })
    .await;
    assert_eq!(answer.text, "yes");

    // Alice's receipt for it is not shown; her next message (after it, on the same connection,
    // so printed after it would have been) is.
    alice
        .send_content(
            &bob,
            &Content::Receipt {
                read: vec![answer.message_id.clone().unwrap()],
            },
        )
        .await
        .unwrap();
    alice.send_message(&bob, "good").await.unwrap();
    chat.until("good").await;
    assert!(
        !chat.seen.iter().any(|l| l.contains("alice read")),
        "{:#?}",
        chat.seen
    );
    chat.quit().await;
    alice.disconnect().await;
}

/// Both sides have MLS state (the chat always has): the 1:1 conversation moves to MLS by itself,
/// `/info` says so, and the content commands ride inside it unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_to_one_moves_to_mls_by_itself_and_info_shows_the_envelope() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&tmp.path().join("data"), &[]).await;
    let mut chat = Chat::start(&server.url, tmp.path()).await;
    let (alice_id, bob) = (
        ClientId::new("alice").unwrap(),
        ClientId::new("bob").unwrap(),
    );
    let mut config = PeerConfig::new(
        server.url.clone(),
        alice_id.clone(),
        lattice_crypto::Identity::generate(&mut rand_core::OsRng),
    );
    config.mls_state = Some(tmp.path().join("alice-mls.sqlite3"));
    let alice = MessagingPeer::new(config).unwrap();
    let mut events = alice.events();
    alice.connect().await.unwrap();
    // The chat uploads its KeyPackages right after registering: wait until the server has them
    // (a probe consumes one of bob's 32).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let probe = alice
            .send_to_server_and_wait(
                lattice_protocol::ClientFrame::KeyPackageFetch(lattice_protocol::KeyPackageFetch {
                    client_id: bob.clone(),
                    all_devices: false,
                }),
                "key_package_fetch",
                lattice_peer::WaitOptions::default(),
            )
            .await;
        if probe.is_ok() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "bob never published KeyPackages"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    let sent = alice.send_message(&bob, "over mls").await.unwrap();
    assert_eq!(sent.algorithm, lattice_peer::Algorithm::Mls);
    assert_eq!(chat.until("over mls").await, "#1 [alice ✓] over mls");
    chat.type_line("/to alice").await;
    chat.until("-- talking to alice").await;
    chat.type_line("/info").await;
    let info = chat.until("-- talking to alice:").await;
    assert!(info.contains("envelope mls"), "{info}");

    chat.type_line("/reply 1 ok").await;
    chat.until("ok").await;
    let reply = next_event(&mut events, |e| match e {
        PeerEvent::Message(m) => Some(m),
        _ => None,
    })
    .await;
    assert_eq!(reply.algorithm, lattice_peer::Algorithm::Mls);
    assert!(matches!(reply.content, Content::Reply { ref text, .. } if text == "ok"));
    chat.type_line("/edit ok!").await;
    let edit = next_event(&mut events, |e| match e {
        PeerEvent::Update(u) if matches!(u.change, Change::Edited { .. }) => Some(u),
        _ => None,
    })
    .await;
    assert_eq!(
        edit.change,
        Change::Edited {
            target: reply.message_id.clone().unwrap(),
            text: "ok!".into()
        }
    );
    chat.quit().await;
    alice.disconnect().await;
}
