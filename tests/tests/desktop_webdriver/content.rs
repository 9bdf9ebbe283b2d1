//! Replies, edits, deletes, reactions, read receipts and typing between the app (alice) and a
//! headless bob, both ways, through the keyboard where the app offers it; each new screen is
//! checked with axe-core and photographed.

use lattice_peer::content::{MessageRef, ReactionAction};
use lattice_peer::{Change, Content, EventStream, IncomingMessage, PeerEvent};
use lattice_protocol::{ClientId, MessageId};

use crate::support::*;

/// The next event of bob's that `pick` accepts (others are skipped), within [`WAIT`].
async fn bob_sees<T>(
    events: &mut EventStream,
    what: &str,
    pick: impl Fn(PeerEvent) -> Option<T>,
) -> T {
    tokio::time::timeout(WAIT, async {
        loop {
            match events.next().await {
                Some(ev) => {
                    if let Some(t) = pick(ev) {
                        break t;
                    }
                }
                None => panic!("bob's events ended"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("bob did not see {what}"))
}

fn message(ev: PeerEvent) -> Option<IncomingMessage> {
    match ev {
        PeerEvent::Message(m) => Some(m),
        _ => None,
    }
}

/// A change other than a typing notice (alice's come and go as she types).
fn change(ev: PeerEvent) -> Option<Change> {
    match ev {
        PeerEvent::Update(u) if !matches!(u.change, Change::Typing { .. }) => Some(u.change),
        _ => None,
    }
}

#[tokio::test]
#[ignore = "needs Xvfb, tauri-driver and the app binary: run scripts/e2e-desktop.sh"]
async fn replies_edits_deletes_reactions_receipts_and_typing_both_ways() {
    let dir = screenshot_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let mut shots = Shots { dir, n: 60 };
    let server = lattice_server::spawn(lattice_server::Config::for_tests())
        .await
        .expect("server");
    let url = server.url();
    let bob = connect_bob(&url).await;
    let mut events = bob.events();
    let alice = ClientId::new("alice").unwrap();

    let data = tempfile::tempdir().unwrap();
    let (client, _guard) = start_app(data.path()).await;
    first_run_as(&client, "alice", &url).await;
    until_js(
        &client,
        "bob online",
        "return !!document.querySelector('li.peer[data-peer-id=\"bob\"][data-online=\"true\"]');",
    )
    .await;
    open_conversation(&client, "bob").await;

    // Bob asks; alice answers with a reply (Ctrl+Shift+L selects the latest message, Alt+R
    // replies to it).
    let lunch = bob.send_message(&alice, "Lunch at noon?").await.unwrap();
    until_js(
        &client,
        "bob's question",
        "return !!document.querySelector('li.msg.in')?.textContent.includes('Lunch at noon?');",
    )
    .await;
    press(&client, "#composer-input", "\u{E009}\u{E008}l").await;
    until_js(
        &client,
        "the latest message selected",
        "return document.activeElement?.matches('li.msg.in');",
    )
    .await;
    press_focused(&client, "\u{E00A}r").await;
    until_js(
        &client,
        "the composer replying",
        "return !document.getElementById('composer-context').hidden \
           && document.activeElement?.id === 'composer-input';",
    )
    .await;
    type_into(&client, "#composer-input", "Yes, the usual place").await;
    // Bob sees alice typing.
    bob_sees(&mut events, "alice typing", |ev| match ev {
        PeerEvent::Update(u) if u.change == (Change::Typing { started: true }) => Some(()),
        _ => None,
    })
    .await;
    shots.take(&client, "content-replying").await;
    assert_accessible(&client, "the composer replying to a message").await;
    type_into(&client, "#composer-input", "\u{E007}").await;
    let reply = bob_sees(&mut events, "alice's reply", message).await;
    match &reply.content {
        Content::Reply { to, excerpt, text } => {
            assert_eq!(to.sender.as_str(), "bob");
            assert_eq!(to.message_id, lunch.message_id);
            assert_eq!(excerpt, "Lunch at noon?");
            assert_eq!(text, "Yes, the usual place");
        }
        other => panic!("expected a reply, got {other:?}"),
    }
    let reply_id: MessageId = reply.message_id.clone().unwrap();
    until_js(
        &client,
        "the quote above alice's reply",
        "return document.querySelector('li.msg.out .quote')?.textContent.includes('Lunch at noon?');",
    )
    .await;

    // Up in the empty composer edits it; bob gets the edit.
    press(&client, "#composer-input", "\u{E013}").await;
    until_js(
        &client,
        "the composer editing",
        "return document.getElementById('composer-input').value === 'Yes, the usual place' \
           && document.getElementById('composer-context-title').textContent.startsWith('Editing');",
    )
    .await;
    type_into(&client, "#composer-input", " at 12:15\u{E007}").await;
    let edited = bob_sees(&mut events, "alice's edit", change).await;
    assert_eq!(
        edited,
        Change::Edited {
            target: reply_id.clone(),
            text: "Yes, the usual place at 12:15".into()
        }
    );
    until_js(
        &client,
        "the edited mark",
        "const m = document.querySelector('li.msg.out'); \
         return m.querySelector('.edited') && m.textContent.includes('at 12:15');",
    )
    .await;

    // Bob reacts to alice's reply and reads it: the reaction shows, the ticks reach "read".
    let on_reply = MessageRef {
        sender: alice.clone(),
        message_id: reply_id.clone(),
    };
    bob.send_content(
        &alice,
        &Content::Reaction {
            target: on_reply.clone(),
            emoji: "👍".into(),
            action: ReactionAction::Add,
        },
    )
    .await
    .unwrap();
    bob.send_content(
        &alice,
        &Content::Receipt {
            read: vec![reply_id.clone()],
        },
    )
    .await
    .unwrap();
    until_js(
        &client,
        "bob's reaction and the read ticks",
        "const m = document.querySelector('li.msg.out'); \
         return m.dataset.status === 'read' \
           && m.querySelector('.reaction')?.getAttribute('aria-label') === '👍 1, by bob';",
    )
    .await;
    // Bob types: alice sees it.
    bob.send_content(&alice, &Content::Typing { started: true })
        .await
        .unwrap();
    until_js(
        &client,
        "bob is typing",
        "return document.getElementById('typing-indicator').textContent === 'bob is typing…';",
    )
    .await;
    shots.take(&client, "content-reaction-read-typing").await;
    assert_accessible(&client, "a reply, an edit, a reaction and read ticks").await;

    // Alice reacts to bob's question with the picker (Alt+A), then reads what bob sends next
    // (Ctrl+Shift+R): bob gets the reaction and the receipt.
    select(&client, "Lunch at noon?").await;
    press_focused(&client, "\u{E00A}a").await;
    message_dialog(&client, "React to this message").await;
    shots.take(&client, "content-react-picker").await;
    assert_accessible(&client, "the reaction picker").await;
    click(&client, "button[aria-label='React with ❤️']").await;
    let reacted = bob_sees(&mut events, "alice's reaction", change).await;
    assert_eq!(
        reacted,
        Change::Reaction {
            target: MessageRef {
                sender: ClientId::new("bob").unwrap(),
                message_id: lunch.message_id.clone()
            },
            emoji: "❤️".into(),
            action: ReactionAction::Add
        }
    );
    let more = bob.send_message(&alice, "Great, see you").await.unwrap();
    until_js(
        &client,
        "bob's second message",
        "return Array.from(document.querySelectorAll('li.msg.in')).some(l => l.textContent.includes('see you'));",
    )
    .await;
    press(&client, "#composer-input", "\u{E009}\u{E008}r").await;
    let read = bob_sees(&mut events, "alice's read receipt", |ev| match change(ev) {
        Some(Change::Read { message_ids }) => Some(message_ids),
        _ => None,
    })
    .await;
    assert!(read.contains(&more.message_id), "{read:?}");

    // Bob edits, then deletes his second message for everyone: alice shows the edit, then the
    // tombstone.
    bob.send_content(
        &alice,
        &Content::Edit {
            target: more.message_id.clone(),
            text: "Great, see you soon".into(),
        },
    )
    .await
    .unwrap();
    until_js(
        &client,
        "bob's edit",
        "return Array.from(document.querySelectorAll('li.msg.in')).some(l => \
           l.textContent.includes('see you soon') && l.querySelector('.edited'));",
    )
    .await;
    bob.send_content(
        &alice,
        &Content::Delete {
            target: more.message_id.clone(),
        },
    )
    .await
    .unwrap();
    until_js(
        &client,
        "bob's tombstone",
        "return Array.from(document.querySelectorAll('li.msg.in.deleted')) \
           .some(l => l.textContent.includes('This message was deleted'));",
    )
    .await;

    // Alice deletes her reply for everyone (Alt+D, "Delete for everyone").
    select(&client, "at 12:15").await;
    press_focused(&client, "\u{E00A}d").await;
    message_dialog(&client, "Delete this message?").await;
    shots.take(&client, "content-delete-dialog").await;
    assert_accessible(&client, "the delete dialog").await;
    click(&client, "#delete-for-everyone").await;
    let deleted = bob_sees(&mut events, "alice's delete", change).await;
    assert_eq!(deleted, Change::Deleted { target: reply_id });
    until_js(
        &client,
        "alice's tombstone",
        "return !!document.querySelector('li.msg.out.deleted .tombstone');",
    )
    .await;
    shots.take(&client, "content-tombstones").await;
    assert_accessible(&client, "tombstones both ways").await;
    server.shutdown().await;
}
