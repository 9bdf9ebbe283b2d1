//! Groups in the real webview: alice (the app) creates a group with bob and carol (headless
//! peers with MLS state) from the New group dialog, messages flow three ways with the senders'
//! names, a rename from the member panel shows a system line, carol is removed and can no
//! longer read what follows (checked on her side), files go both ways in the group (alice
//! pastes a picture, bob downloads it; bob's file shows as a card alice saves; a drop on the
//! group sends), search finds a group message and opens the group at it, the group's history
//! exports, and axe-core passes on each new screen. The message actions of a 1:1 chat work in
//! the group, through the keyboard: alice replies with a quote (which jumps to the quoted line),
//! edits, reacts and deletes for everyone, and bob (headless) sees each; bob reacts, edits and
//! deletes, and alice's page shows each.

use std::time::Duration;

use lattice_peer::{
    Content, EventStream, GroupChange, GroupId, MessagingPeer, PeerConfig, PeerEvent,
};
use lattice_protocol::ClientId;
use serde_json::{json, Value};

use crate::support::*;

/// A headless peer `name` with MLS state in `dir`, connected, its KeyPackages at the server.
async fn mls_peer(url: &str, name: &str, dir: &std::path::Path) -> MessagingPeer {
    let mut config = PeerConfig::new(
        url,
        ClientId::new(name).unwrap(),
        lattice_crypto::Identity::generate(&mut rand_core::OsRng),
    );
    config.mls_state = Some(dir.join("mls.sqlite3"));
    config.transfers_dir = Some(dir.join("transfers"));
    let peer = MessagingPeer::new(config).unwrap();
    peer.connect().await.expect("connects");
    assert!(peer.publish_key_packages().await.expect("KeyPackages") > 0);
    peer
}

async fn next_event<T>(
    events: &mut EventStream,
    mut pick: impl FnMut(&PeerEvent) -> Option<T>,
) -> T {
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some(e) = events.next().await {
                if let Some(t) = pick(&e) {
                    break t;
                }
            }
        }
    })
    .await
    .expect("the group event arrives")
}

async fn joined(events: &mut EventStream) -> GroupId {
    next_event(events, |e| match e {
        PeerEvent::GroupChanged {
            group,
            change: GroupChange::Joined { .. },
            ..
        } => Some(group.clone()),
        _ => None,
    })
    .await
}

/// The next edit, delete or reaction a headless member reads in a group.
async fn next_change(events: &mut EventStream) -> lattice_peer::Change {
    next_event(events, |e| match e {
        PeerEvent::GroupUpdate { update, .. } => Some(update.change.clone()),
        _ => None,
    })
    .await
}

async fn next_text(events: &mut EventStream) -> (String, String) {
    next_event(events, |e| match e {
        PeerEvent::GroupMessage(m) => match &m.content {
            Content::Text(t) => Some((m.from.to_string(), t.clone())),
            _ => None,
        },
        _ => None,
    })
    .await
}

/// Waits until the open group shows a line: a message `text` from `sender` (its name shown
/// above the first of a run), or a system line when `sender` is `None`.
async fn until_group_line(client: &fantoccini::Client, text: &str, sender: Option<&str>) {
    let text_js = serde_json::to_string(text).unwrap();
    let script = match sender {
        None => format!(
            "return Array.from(document.querySelectorAll('#group-message-list li.system-line bdi')) \
               .some(b => b.textContent === {text_js});"
        ),
        Some(who) => format!(
            "return Array.from(document.querySelectorAll('#group-message-list li.msg')) \
               .some(li => li.dataset.sender === {} && li.querySelector('.text')?.textContent === {text_js});",
            serde_json::to_string(who).unwrap()
        ),
    };
    until_js(client, text, &script).await;
}

#[tokio::test]
#[ignore = "needs Xvfb, tauri-driver and the app binary: run scripts/e2e-desktop.sh"]
async fn a_group_made_in_the_app_talks_three_ways_and_locks_out_a_removed_member() {
    let mut shots = Shots {
        dir: screenshot_dir(),
        n: 120,
    };
    // A data directory, so the server keeps the blobs of the files sent to the group.
    let server_dir = tempfile::tempdir().unwrap();
    let mut config = lattice_server::Config::for_tests();
    config.data_dir = Some(server_dir.path().to_owned());
    let server = lattice_server::spawn(config).await.expect("server");
    let url = server.url();
    let (bob_dir, carol_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let bob = mls_peer(&url, "bob", bob_dir.path()).await;
    let carol = mls_peer(&url, "carol", carol_dir.path()).await;
    let (mut bob_events, mut carol_events) = (bob.events(), carol.events());

    let data = tempfile::tempdir().unwrap();
    let (client, guard) = start_app(data.path()).await;
    first_run_as(&client, "alice", &url).await;
    until_js(
        &client,
        "the main window with bob and carol online",
        "return !document.getElementById('app').hidden \
           && !!document.querySelector('li.peer[data-peer-id=\"bob\"][data-online=\"true\"]') \
           && !!document.querySelector('li.peer[data-peer-id=\"carol\"][data-online=\"true\"]');",
    )
    .await;

    // New group: a name, bob and carol.
    click(&client, "#open-new-group").await;
    until_js(
        &client,
        "the New group dialog with both people",
        "return document.getElementById('new-group-dialog').open \
           && document.querySelectorAll('#new-group-people input[type=checkbox]').length === 2;",
    )
    .await;
    type_into(&client, "#new-group-name", "Climbing").await;
    click(&client, "#new-group-people input[value=\"bob\"]").await;
    click(&client, "#new-group-people input[value=\"carol\"]").await;
    shots.take(&client, "new-group").await;
    assert_accessible(&client, "the New group dialog").await;
    click(&client, "#new-group-submit").await;
    until_js(
        &client,
        "the group's conversation",
        "return !document.getElementById('group-conversation').hidden \
           && document.getElementById('group-name').textContent === 'Climbing';",
    )
    .await;
    until_group_line(&client, "You created the group with bob and carol", None).await;
    let bob_gid = joined(&mut bob_events).await;
    let carol_gid = joined(&mut carol_events).await;
    assert_eq!(bob_gid, carol_gid);

    // Three ways, with the senders' names.
    type_into(&client, "#group-input", "hello climbers").await;
    type_into(&client, "#group-input", "\u{E007}").await; // Enter sends
    assert_eq!(
        next_text(&mut bob_events).await,
        ("alice".into(), "hello climbers".into())
    );
    assert_eq!(
        next_text(&mut carol_events).await,
        ("alice".into(), "hello climbers".into())
    );
    until_js(
        &client,
        "our message sent",
        "return Array.from(document.querySelectorAll('#group-message-list li.msg.out')) \
           .some(li => li.dataset.status === 'sent');",
    )
    .await;
    let from_bob = bob
        .send_group_content(&bob_gid, &Content::Text("from bob".into()))
        .await
        .unwrap();
    carol
        .send_group_content(&carol_gid, &Content::Text("from carol".into()))
        .await
        .unwrap();
    until_group_line(&client, "from bob", Some("bob")).await;
    until_group_line(&client, "from carol", Some("carol")).await;
    assert_eq!(
        next_text(&mut carol_events).await,
        ("bob".into(), "from bob".into())
    );
    assert_eq!(
        next_text(&mut bob_events).await,
        ("carol".into(), "from carol".into())
    );
    let names = client
        .execute(
            "return Array.from(document.querySelectorAll('#group-message-list .msg-sender')) \
               .map(s => s.textContent);",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        names,
        json!(["bob", "carol"]),
        "each sender named above their message"
    );
    let row = until_js(
        &client,
        "the group in the sidebar",
        "const li = document.querySelector('li.peer.group-row'); \
         return li && li.querySelector('.peer-name').textContent;",
    )
    .await;
    assert_eq!(row, json!("Climbing"));

    // Message actions as in a 1:1 chat. alice replies to bob's line with the keyboard (select
    // it, Alt+R): bob reads a reply naming his message, and the quote jumps to it.
    select(&client, "from bob").await;
    press_focused(&client, "\u{E00A}r").await;
    until_js(
        &client,
        "the group composer replying to bob",
        "return !document.getElementById('group-composer-context').hidden \
           && document.getElementById('group-composer-context-title').textContent === 'Replying to bob' \
           && document.activeElement?.id === 'group-input';",
    )
    .await;
    type_into(&client, "#group-input", "nice route\u{E007}").await;
    let (to, reply_id) = next_event(&mut bob_events, |e| match e {
        PeerEvent::GroupMessage(m) => match &m.content {
            Content::Reply { to, text, .. } if text == "nice route" => {
                Some((to.clone(), m.message_id.clone()))
            }
            _ => None,
        },
        _ => None,
    })
    .await;
    assert_eq!((to.sender.as_str(), &to.message_id), ("bob", &from_bob));
    until_js(
        &client,
        "our reply sent, quoting bob",
        "const li = Array.from(document.querySelectorAll('#group-message-list li.msg.out')) \
           .find(l => l.querySelector('.text')?.textContent === 'nice route'); \
         return !!li && li.dataset.wire !== '' \
           && li.querySelector('.quote .quote-sender')?.textContent === 'bob';",
    )
    .await;
    click(&client, "#group-message-list li.msg.out .quote").await;
    until_js(
        &client,
        "the quote jumped to bob's line",
        "const li = document.querySelector('#group-message-list li.msg.found'); \
         return !!li && li.dataset.sender === 'bob' && document.activeElement === li;",
    )
    .await;

    // Up in the empty composer edits our reply; bob's library accepts the edit.
    click(&client, "#group-input").await;
    press(&client, "#group-input", "\u{E013}").await;
    until_js(
        &client,
        "the group composer editing",
        "return document.getElementById('group-input').value === 'nice route' \
           && document.getElementById('group-composer-context-title').textContent === 'Editing your message';",
    )
    .await;
    type_into(&client, "#group-input", ", well led\u{E007}").await;
    let edit = next_change(&mut bob_events).await;
    assert_eq!(
        edit,
        lattice_peer::Change::Edited {
            target: reply_id.clone(),
            text: "nice route, well led".into()
        }
    );

    // alice reacts to bob's line with the picker (Alt+A); bob reacts to alice's first message
    // and edits his own: alice sees each, with who reacted on the chip.
    select(&client, "from bob").await;
    press_focused(&client, "\u{E00A}a").await;
    message_dialog(&client, "React to this message").await;
    click(&client, "button[aria-label='React with 👍']").await;
    let reacted = next_change(&mut bob_events).await;
    assert!(
        matches!(&reacted, lattice_peer::Change::Reaction { target, emoji, .. }
            if target.message_id == from_bob && emoji == "👍"),
        "{reacted:?}"
    );
    let hello_wire: String = serde_json::from_value(
        until_js(
            &client,
            "our first message's wire id",
            "const li = Array.from(document.querySelectorAll('#group-message-list li.msg.out')) \
               .find(l => l.querySelector('.text')?.textContent === 'hello climbers'); \
             return li && li.dataset.wire !== '' ? li.dataset.wire : false;",
        )
        .await,
    )
    .unwrap();
    bob.send_group_content(
        &bob_gid,
        &Content::Reaction {
            target: lattice_peer::MessageRef {
                sender: ClientId::new("alice").unwrap(),
                message_id: lattice_protocol::MessageId::new(hello_wire).unwrap(),
            },
            emoji: "🎉".into(),
            action: lattice_peer::ReactionAction::Add,
        },
    )
    .await
    .unwrap();
    bob.send_group_content(
        &bob_gid,
        &Content::Edit {
            target: from_bob.clone(),
            text: "from bob, edited".into(),
        },
    )
    .await
    .unwrap();
    until_js(
        &client,
        "the reactions both ways and bob's edit",
        "const lines = Array.from(document.querySelectorAll('#group-message-list li.msg')); \
         const hello = lines.find(l => l.querySelector('.text')?.textContent === 'hello climbers'); \
         const bobs = lines.find(l => l.dataset.sender === 'bob' && l.querySelector('.edited')); \
         return hello?.querySelector('.reaction')?.getAttribute('aria-label') === '🎉 1, by bob' \
           && bobs?.querySelector('.text')?.textContent === 'from bob, edited' \
           && bobs.querySelector('.reaction')?.getAttribute('aria-label') === '👍 1, by you';",
    )
    .await;

    // bob writes a line and deletes it for everyone; alice deletes her reply (Alt+D).
    let oops = bob
        .send_group_content(&bob_gid, &Content::Text("wrong crag".into()))
        .await
        .unwrap();
    until_group_line(&client, "wrong crag", Some("bob")).await;
    bob.send_group_content(&bob_gid, &Content::Delete { target: oops })
        .await
        .unwrap();
    until_js(
        &client,
        "bob's tombstone",
        "return Array.from(document.querySelectorAll('#group-message-list li.msg.in.deleted')) \
           .some(l => l.querySelector('.tombstone')?.textContent === 'This message was deleted');",
    )
    .await;
    select(&client, "well led").await;
    press_focused(&client, "\u{E00A}d").await;
    message_dialog(&client, "Delete this message?").await;
    let for_me: Value = client
        .execute("return !!document.getElementById('delete-for-me');", vec![])
        .await
        .unwrap();
    assert_eq!(for_me, json!(false), "a group has no delete for me");
    shots.take(&client, "group-actions-delete").await;
    assert_accessible(&client, "the delete dialog in a group").await;
    click(&client, "#delete-for-everyone").await;
    let deleted = next_change(&mut bob_events).await;
    assert_eq!(deleted, lattice_peer::Change::Deleted { target: reply_id });
    until_js(
        &client,
        "our tombstone",
        "return !!document.querySelector('#group-message-list li.msg.out.deleted .tombstone');",
    )
    .await;
    select(&client, "from bob, edited").await;
    shots.take(&client, "group-actions").await;
    assert_accessible(
        &client,
        "a group with replies, edits, reactions and tombstones",
    )
    .await;

    // Ctrl+K finds group messages too, named by sender and group; Enter opens the group at it.
    press(&client, "#group-input", "\u{E009}k").await;
    until_js(
        &client,
        "the search dialog",
        "return document.getElementById('search-dialog').open;",
    )
    .await;
    type_into(&client, "#search-input", "carol").await;
    until_js(
        &client,
        "carol's group message found",
        "const hits = document.querySelectorAll('#search-results li.search-hit'); \
         return hits.length === 1 \
           && hits[0].querySelector('.search-hit-who').textContent === 'carol in Climbing' \
           && hits[0].querySelector('mark')?.textContent === 'carol';",
    )
    .await;
    shots.take(&client, "group-search").await;
    assert_accessible(&client, "a search with a group's message").await;
    press(&client, "#search-input", "\u{E007}").await;
    until_js(
        &client,
        "the group opened at carol's message",
        "const m = document.querySelector('#group-message-list li.msg.found'); \
         return !!m && !document.getElementById('search-dialog').open \
           && m.dataset.sender === 'carol';",
    )
    .await;

    // alice pastes a picture into the group composer: it goes to the group, bob downloads it
    // byte for byte, and alice's line shows the preview, sent.
    let pasted = client
        .execute_async(
            "const done = arguments[arguments.length - 1];
             const c = document.createElement('canvas'); c.width = 480; c.height = 320;
             const g = c.getContext('2d');
             const grad = g.createLinearGradient(0, 0, 480, 320);
             grad.addColorStop(0, '#1f8a5b'); grad.addColorStop(1, '#2c6bed');
             g.fillStyle = grad; g.fillRect(0, 0, 480, 320);
             g.fillStyle = '#fff'; g.font = 'bold 48px sans-serif'; g.fillText('The crag', 120, 175);
             c.toBlob(async (blob) => {
               const bytes = new Uint8Array(await blob.arrayBuffer());
               const dt = new DataTransfer();
               dt.items.add(new File([bytes], 'crag.png', { type: 'image/png' }));
               const ev = new ClipboardEvent('paste', { clipboardData: dt, bubbles: true, cancelable: true });
               document.getElementById('group-input').dispatchEvent(ev);
               done(Array.from(bytes));
             }, 'image/png');",
            vec![],
        )
        .await
        .expect("a paste event");
    let pasted: Vec<u8> = pasted
        .as_array()
        .expect("bytes")
        .iter()
        .map(|b| u8::try_from(b.as_u64().unwrap()).unwrap())
        .collect();
    let (message_id, offer) = next_event(&mut bob_events, |e| match e {
        PeerEvent::GroupMessage(m) => match &m.content {
            Content::File(offer) => Some((m.message_id.clone(), offer.clone())),
            _ => None,
        },
        _ => None,
    })
    .await;
    assert_eq!(offer.name, "crag.png");
    assert!(offer.thumbnail.is_some(), "a preview made on alice's side");
    let dest = bob_dir.path().join("crag.png");
    let transfer = bob
        .download_file(&ClientId::new("alice").unwrap(), &message_id, &offer, &dest)
        .expect("bob's download starts");
    next_event(&mut bob_events, |e| match e {
        PeerEvent::Transfer(p) if p.id == transfer => match &p.state {
            lattice_peer::TransferState::Completed => Some(()),
            lattice_peer::TransferState::Failed(reason) => panic!("bob's download: {reason}"),
            _ => None,
        },
        _ => None,
    })
    .await;
    assert_eq!(std::fs::read(&dest).unwrap(), pasted, "bob has the picture");
    until_js(
        &client,
        "alice's picture sent, with its preview",
        "const li = Array.from(document.querySelectorAll('#group-message-list li.msg.out'))            .find(l => l.querySelector('.file-name')?.textContent === 'crag.png');          return !!li && li.dataset.status === 'sent'            && li.querySelector('.file')?.dataset.state === 'completed'            && !!li.querySelector('img.file-thumb');",
    )
    .await;

    // bob sends a file: alice's app shows it as a card from him, downloaded, with Save.
    let notes = bob_dir.path().join("route-notes.txt");
    std::fs::write(&notes, b"Pitch 2: traverse left under the roof.").unwrap();
    bob.send_group_file(&bob_gid, &notes, lattice_peer::FileMeta::default())
        .await
        .unwrap();
    until_js(
        &client,
        "bob's file downloaded, with Save",
        "const li = Array.from(document.querySelectorAll('#group-message-list li.msg.in'))            .find(l => l.querySelector('.file-name')?.textContent === 'route-notes.txt');          return !!li && li.dataset.sender === 'bob'            && li.querySelector('.file')?.dataset.state === 'completed'            && Array.from(li.querySelectorAll('.file-action-text')).some(t => t.textContent === 'Save');",
    )
    .await;
    shots.take(&client, "group-files").await;
    assert_accessible(&client, "a group conversation with files").await;

    // Files dragged over the group show where they go; dropped, they are sent to the group.
    client
        .execute(
            "const dt = new DataTransfer();
             dt.items.add(new File([new TextEncoder().encode('meet at 8')], 'plan.txt', { type: 'text/plain' }));
             window.__groupDrop = dt;
             document.getElementById('group-conversation')
               .dispatchEvent(new DragEvent('dragover', { dataTransfer: dt, bubbles: true, cancelable: true }));",
            vec![],
        )
        .await
        .expect("a dragover event");
    until_js(
        &client,
        "the group's drop overlay",
        "return !document.getElementById('group-drop-overlay').hidden;",
    )
    .await;
    shots.take(&client, "group-drop").await;
    client
        .execute(
            "document.getElementById('group-conversation')
               .dispatchEvent(new DragEvent('drop', { dataTransfer: window.__groupDrop, bubbles: true, cancelable: true }));",
            vec![],
        )
        .await
        .expect("a drop event");
    let (_, offer) = next_event(&mut carol_events, |e| match e {
        PeerEvent::GroupMessage(m) => match &m.content {
            Content::File(offer) if offer.name == "plan.txt" => {
                Some((m.message_id.clone(), offer.clone()))
            }
            _ => None,
        },
        _ => None,
    })
    .await;
    assert_eq!(offer.size, 9);
    until_js(
        &client,
        "the dropped file sent, the overlay gone",
        "const li = Array.from(document.querySelectorAll('#group-message-list li.msg.out')) \
           .find(l => l.querySelector('.file-name')?.textContent === 'plan.txt'); \
         return !!li && li.dataset.status === 'sent' \
           && document.getElementById('group-drop-overlay').hidden;",
    )
    .await;

    // Export from the group's header: its history as a readable page, senders and files named.
    let export_dir = tempfile::tempdir().unwrap();
    let export_file = export_dir.path().join("climbing.html");
    click(&client, "#group-export").await;
    until_js(
        &client,
        "the group export dialog",
        "return document.getElementById('backup-dialog').open \
           && document.getElementById('backup-intro').textContent.includes('the group Climbing') \
           && document.getElementById('backup-path').value.length > 0;",
    )
    .await;
    fill(&client, "#backup-path", export_file.to_str().unwrap()).await;
    click(&client, "#backup-submit").await;
    until_js(
        &client,
        "the group export to finish",
        "return document.getElementById('backup-status').textContent.startsWith('Exported ');",
    )
    .await;
    shots.take(&client, "group-exported").await;
    assert_accessible(&client, "the group export dialog").await;
    click(&client, "#backup-cancel").await;
    let html = std::fs::read_to_string(&export_file).expect("the exported page");
    assert!(html.contains("the group Climbing") && html.contains("<b dir=\"auto\">bob</b>"));
    assert!(html.contains("File: route-notes.txt (38 bytes"));
    shots.take(&client, "group-conversation").await;
    assert_accessible(&client, "a group conversation").await;

    // The member panel (Ctrl+Shift+G): names and safety numbers; rename from it.
    press(&client, "#group-input", "\u{E009}\u{E008}g").await;
    until_js(
        &client,
        "the member panel",
        "return document.getElementById('group-dialog').open \
           && document.querySelectorAll('#group-member-list li.member').length === 3;",
    )
    .await;
    let bob_fp = client
        .execute(
            "return Array.from(document.querySelectorAll('#group-member-list li.member')) \
               .find(li => li.querySelector('.member-name').textContent === 'bob') \
               .querySelector('.member-fingerprint').textContent;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(bob_fp, json!(bob.fingerprint().to_string()));
    shots.take(&client, "group-members").await;
    assert_accessible(&client, "the group's member panel").await;
    client
        .execute(
            "document.getElementById('group-rename-input').value = '';",
            vec![],
        )
        .await
        .unwrap();
    type_into(&client, "#group-rename-input", "Crag").await;
    click(&client, "#group-rename-submit").await;
    until_js(
        &client,
        "the panel renamed",
        "return document.getElementById('group-dialog-title').textContent.startsWith('Crag');",
    )
    .await;
    let renamed = next_event(&mut bob_events, |e| match e {
        PeerEvent::GroupChanged {
            change: GroupChange::Renamed(n),
            ..
        } => Some(n.clone()),
        _ => None,
    })
    .await;
    assert_eq!(renamed, "Crag");

    // carol is removed from the panel.
    click(
        &client,
        "button[aria-label=\"Remove carol from the group\"]",
    )
    .await;
    until_js(
        &client,
        "carol gone from the panel",
        "return document.querySelectorAll('#group-member-list li.member').length === 2;",
    )
    .await;
    click(&client, "#group-dialog-done").await;
    until_group_line(
        &client,
        "You renamed the group to \u{201c}Crag\u{201d}",
        None,
    )
    .await;
    until_group_line(&client, "You removed carol", None).await;
    until_js(
        &client,
        "the header renamed",
        "return document.getElementById('group-name').textContent === 'Crag';",
    )
    .await;
    next_event(&mut carol_events, |e| {
        matches!(
            e,
            PeerEvent::GroupChanged {
                change: GroupChange::Removed,
                ..
            }
        )
        .then_some(())
    })
    .await;

    // What follows reaches bob, not carol.
    type_into(&client, "#group-input", "carol must not read this").await;
    type_into(&client, "#group-input", "\u{E007}").await;
    assert_eq!(
        next_text(&mut bob_events).await.1,
        "carol must not read this"
    );
    bob.send_group_content(&bob_gid, &Content::Text("nor this".into()))
        .await
        .unwrap();
    until_group_line(&client, "nor this", Some("bob")).await;
    assert!(!carol.groups_list().unwrap().contains(&carol_gid));
    assert!(carol.group_info(&carol_gid).is_err());
    // What reached carol's stream by now (the idle wait ends the drain; it is no assertion).
    while let Ok(Some(e)) =
        tokio::time::timeout(Duration::from_millis(300), carol_events.next()).await
    {
        assert!(
            !matches!(e, PeerEvent::GroupMessage(_)),
            "carol read a message after her removal: {e:?}"
        );
    }
    shots.take(&client, "group-after-removal").await;
    assert_accessible(&client, "a group after a removal").await;
    let unread: Value = client
        .execute(
            "return document.querySelector('li.peer.group-row .unread') === null;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(unread, json!(true), "the open group counts nothing unread");

    client.close().await.expect("close");
    guard.disarm();
    bob.disconnect().await;
    carol.disconnect().await;
    server.shutdown().await;
}
