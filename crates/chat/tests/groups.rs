//! `lattice-chat`'s group commands end to end: a real `lattice-server` process, the chat binary
//! (bob) on pipes, and two `lattice-peer` peers with groups on (alice, carol). bob creates a
//! group, talks in it, sees alice's message with her name, renames it, lists groups and members
//! (with fingerprints), sees carol leave (committed by his own client) and removes alice.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)] // Shared with the server's crash tests, which use all of it.
#[path = "../../server/tests/support/server_process.rs"]
mod server_process;
mod support;

use lattice_peer::{Content, EventStream, GroupChange, MessagingPeer, PeerConfig, PeerEvent};
use lattice_protocol::ClientId;
use server_process::ServerProcess;
use support::chat::{next_event, Chat};

async fn member(url: &str, name: &str, dir: &std::path::Path) -> (MessagingPeer, EventStream) {
    let mut config = PeerConfig::new(
        url.to_owned(),
        ClientId::new(name).unwrap(),
        lattice_crypto::Identity::generate(&mut rand_core::OsRng),
    );
    config.mls_state = Some(dir.join(format!("{name}.mls")));
    let p = MessagingPeer::new(config).unwrap();
    let events = p.events();
    p.connect().await.unwrap();
    p.publish_key_packages().await.unwrap();
    (p, events)
}

async fn change(events: &mut EventStream, pick: impl Fn(&GroupChange) -> bool) -> GroupChange {
    next_event(events, |e| match e {
        PeerEvent::GroupChanged { change, .. } if pick(&change) => Some(change),
        _ => None,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bob_runs_a_group_from_the_terminal() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&tmp.path().join("data"), &[]).await;
    let (alice, mut ae) = member(&server.url, "alice", tmp.path()).await;
    let (carol, mut ce) = member(&server.url, "carol", tmp.path()).await;
    let mut chat = Chat::start(&server.url, tmp.path()).await;

    chat.type_line("/group new the team alice,carol").await;
    chat.until("-- [the team] created with alice, carol").await;
    for e in [&mut ae, &mut ce] {
        let joined = change(e, |c| matches!(c, GroupChange::Joined { .. })).await;
        assert!(matches!(joined, GroupChange::Joined { name, .. } if name == "the team"));
    }
    chat.type_line("hello team").await;
    chat.until("[the team] you: hello team").await;
    let g = next_event(&mut ae, |e| match e {
        PeerEvent::GroupMessage(m) => Some(m),
        _ => None,
    })
    .await;
    assert_eq!(
        (g.from.as_str(), &g.content),
        ("bob", &Content::Text("hello team".into()))
    );
    let group = g.group;

    alice
        .send_group_content(&group, &Content::Text("hi bob".into()))
        .await
        .unwrap();
    assert_eq!(chat.until("hi bob").await, "[the team] alice: hi bob");

    chat.type_line("/group rename crew").await;
    chat.until("-- renamed the group to crew").await;
    assert_eq!(
        change(&mut ce, |c| matches!(c, GroupChange::Renamed(_))).await,
        GroupChange::Renamed("crew".into())
    );
    chat.type_line("/groups").await;
    assert_eq!(chat.until("#1").await, "  #1 crew (3 members)  <- current");
    chat.type_line("/members").await;
    chat.until("-- [crew], epoch").await;
    let alice_line = chat.until("alice").await;
    assert_eq!(alice_line, format!("  alice  {}", alice.fingerprint()));

    // carol leaves; bob's client (the lowest remaining leaf) commits it and shows it.
    carol.leave_group(&group).await.unwrap();
    chat.until("-- [crew] carol left or was removed").await;
    change(&mut ce, |c| matches!(c, GroupChange::Removed)).await;

    chat.type_line("/group remove alice").await;
    chat.until("-- [crew] removed alice").await;
    change(&mut ae, |c| matches!(c, GroupChange::Removed)).await;

    // Bad input gets a readable line and the chat goes on.
    chat.type_line("/group new lonely").await;
    chat.until("usage: /group new <name> <id,id…>").await;
    chat.type_line("/g 7").await;
    chat.until("!! no group 7").await;
    chat.quit().await;
}

/// bob's chat is killed (SIGKILL) while alice's group messages and Commits stream in, and started
/// again on the same files: it resumes the group in the right epoch (it reads what comes after,
/// and what it sends opens for alice). Every group message is acknowledged only after the
/// engine stored its effects, so no Commit is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_killed_mid_stream_resumes_without_losing_an_epoch() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&tmp.path().join("data"), &[]).await;
    let (alice, mut ae) = member(&server.url, "alice", tmp.path()).await;
    let mut chat = Chat::start(&server.url, tmp.path()).await;
    chat.type_line("/group new crash alice").await;
    chat.until("-- [crash] created with alice").await;
    let group = match change(&mut ae, |c| matches!(c, GroupChange::Joined { .. })).await {
        GroupChange::Joined { .. } => alice.groups_list().unwrap().remove(0),
        _ => unreachable!(),
    };
    for i in 0..40 {
        if i == 20 {
            chat.kill9().await;
            chat = Chat::start(&server.url, tmp.path()).await;
        }
        if i % 8 == 0 {
            alice
                .rename_group(&group, &format!("crash {i}"))
                .await
                .unwrap();
        } else {
            alice
                .send_group_content(&group, &Content::Text(format!("m{i}")))
                .await
                .unwrap();
        }
    }
    alice
        .send_group_content(&group, &Content::Text("final".into()))
        .await
        .unwrap();
    chat.until("alice: final").await;
    chat.type_line("/g 1").await;
    chat.until("-- talking in [crash 32]").await;
    chat.type_line("bob is back").await;
    let m = next_event(&mut ae, |e| match e {
        PeerEvent::GroupMessage(m) => Some(m),
        _ => None,
    })
    .await;
    assert_eq!(m.content, Content::Text("bob is back".into()));
    chat.quit().await;
}

/// Receipts and typing in a group, in the terminal: bob's chat tells the members it read what
/// it showed (one receipt naming the newest line), shows "read by alice, carol" under his own
/// message as their receipts come, and "alice is typing …"; with `--no-read-receipts` it sends
/// none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_shows_who_read_and_who_types_and_the_chat_sends_its_receipts() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&tmp.path().join("data"), &[]).await;
    let (alice, mut ae) = member(&server.url, "alice", tmp.path()).await;
    let (carol, mut ce) = member(&server.url, "carol", tmp.path()).await;
    let mut chat = Chat::start(&server.url, tmp.path()).await;
    chat.type_line("/group new readers alice,carol").await;
    chat.until("-- [readers] created with alice, carol").await;
    for e in [&mut ae, &mut ce] {
        change(e, |c| matches!(c, GroupChange::Joined { .. })).await;
    }
    chat.type_line("did you read this").await;
    let mut mine = None;
    for e in [&mut ae, &mut ce] {
        mine = Some(
            next_event(e, |e| match e {
                PeerEvent::GroupMessage(m) => Some(m),
                _ => None,
            })
            .await,
        );
    }
    let mine = mine.unwrap();
    let up_to = lattice_peer::MessageRef {
        sender: mine.from.clone(),
        message_id: mine.message_id.clone(),
    };
    assert!(alice.mark_group_read(&mine.group, &up_to).await.unwrap());
    chat.until("-- [readers] read by alice").await;
    assert!(carol.mark_group_read(&mine.group, &up_to).await.unwrap());
    chat.until("-- [readers] read by alice, carol").await;

    // alice types; then writes: bob's chat shows both and says it read her line.
    assert!(alice.group_typing(&mine.group, true).await.unwrap());
    chat.until("-- [readers] alice is typing …").await;
    let hers = alice
        .send_group_content(&mine.group, &Content::Text("yes".into()))
        .await
        .unwrap();
    chat.until("[readers] alice: yes").await;
    let read = next_event(&mut ce, |e| match e {
        PeerEvent::GroupRead { member, up_to, .. } if member.as_str() == "bob" => Some(up_to),
        _ => None,
    })
    .await;
    assert_eq!(read.message_id, hers);
    chat.quit().await;

    // With --no-read-receipts the chat sends none: carol gets bob's next line and no receipt
    // of his before it.
    let mut quiet = Chat::start_with(&server.url, tmp.path(), &["--no-read-receipts"]).await;
    alice
        .send_group_content(&mine.group, &Content::Text("again".into()))
        .await
        .unwrap();
    quiet.until("[readers] alice: again").await;
    quiet.type_line("/g 1").await;
    quiet.until("-- talking in [readers]").await;
    quiet.type_line("bye").await;
    next_event(&mut ce, |e| match e {
        PeerEvent::GroupRead { member, .. } if member.as_str() == "bob" => {
            panic!("a receipt with receipts off")
        }
        PeerEvent::GroupMessage(m) if m.content == Content::Text("bye".into()) => Some(()),
        _ => None,
    })
    .await;
    quiet.quit().await;
}
