//! Groups in the desktop app, against a real `lattice-server` (port 0), with the app on Tauri's
//! mock runtime and headless MLS peers (real SQLite state each): alice (the app) creates a group
//! with bob and carol, messages flow three ways with their senders, a rename and a removal show
//! as system lines, and carol, removed, can no longer read what follows (checked on her side).
//! A person whose app cannot join groups is refused with a sentence naming them; a group
//! another client adds the app to appears by itself, and the group survives a restart. Files
//! go both ways in a group (each member downloads the app's file; the members' files download
//! by themselves or on *Download*, are saved, and survive a restart).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use lattice_peer::{Content, EventStream, GroupChange, GroupId, MessagingPeer, PeerEvent};
use lattice_protocol::ClientId;
use serde_json::{json, Value};
use support::{eventually, until_online, TestApp, WAIT};

/// A headless peer with MLS state in `dir`, connected, its KeyPackages at the server.
async fn mls_peer(url: &str, name: &str, dir: &std::path::Path) -> MessagingPeer {
    let mut config = lattice_peer::PeerConfig::new(
        url.to_owned(),
        ClientId::new(name).unwrap(),
        lattice_crypto::Identity::generate(&mut rand_core::OsRng),
    );
    config.mls_state = Some(dir.join("mls.sqlite3"));
    config.transfers_dir = Some(dir.join("transfers"));
    let peer = MessagingPeer::new(config).unwrap();
    peer.connect().await.unwrap();
    assert!(peer.publish_key_packages().await.unwrap() > 0);
    peer
}

/// The next group event matching `pick` on a headless peer.
async fn next_group<T>(
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

/// Creates a group in the app; its id.
fn create_group(app: &TestApp, name: &str, members: &[&str]) -> String {
    app.invoke("create_group", json!({"name": name, "members": members}))
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The group a headless peer is added to next.
async fn joined(events: &mut EventStream) -> GroupId {
    next_group(events, |e| match e {
        PeerEvent::GroupChanged {
            group,
            change: GroupChange::Joined { .. },
            ..
        } => Some(group.clone()),
        _ => None,
    })
    .await
}

/// The text of the next group message a headless peer reads, with its sender.
async fn next_text(events: &mut EventStream) -> (ClientId, String) {
    next_group(events, |e| match e {
        PeerEvent::GroupMessage(m) => match &m.content {
            Content::Text(t) => Some((m.from.clone(), t.clone())),
            _ => None,
        },
        _ => None,
    })
    .await
}

fn lines(app: &TestApp, group: &str) -> Vec<Value> {
    app.invoke(
        "load_group_messages",
        json!({"groupId": group, "limit": 200}),
    )
    .unwrap()["messages"]
        .as_array()
        .unwrap()
        .clone()
}

/// Waits until the group's history holds a line `body` (from `sender`, or a system line when
/// `sender` is `None`); returns it.
fn until_line(app: &TestApp, group: &str, body: &str, system: bool) -> Value {
    let found = eventually(
        body,
        || Value::Array(lines(app, group)),
        |ls| {
            ls.as_array()
                .unwrap()
                .iter()
                .any(|l| l["body"] == json!(body) && l["system"] == json!(system))
        },
    );
    found
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["body"] == json!(body))
        .cloned()
        .unwrap()
}

fn group_row(app: &TestApp, group: &str) -> Value {
    let boot = app.invoke("bootstrap", json!({})).unwrap();
    boot["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["id"] == json!(group))
        .cloned()
        .unwrap_or(Value::Null)
}

#[test]
fn a_group_made_in_the_app_talks_three_ways_renames_and_locks_a_removed_member_out() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    // A data directory, so the server keeps the blob of the file bob sends to the group.
    let server_dir = tempfile::tempdir().unwrap();
    let mut config = lattice_server::Config::for_tests();
    config.data_dir = Some(server_dir.path().to_owned());
    let server = rt.block_on(lattice_server::spawn(config)).unwrap();
    let url = server.url();
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let bob = rt.block_on(mls_peer(&url, "bob", dirs.0.path()));
    let carol = rt.block_on(mls_peer(&url, "carol", dirs.1.path()));
    // dave runs a Lattice client without MLS: no group keys at the server.
    let _dave = rt.block_on(support::connect_peer(&url, "dave"));
    let (mut bob_events, mut carol_events) = (bob.events(), carol.events());
    let alice_id = ClientId::new("alice").unwrap();

    let app = TestApp::set_up("alice", &url);
    until_online(&app, &["bob", "carol", "dave"]);

    // Someone who cannot join: a sentence naming them, and no group.
    let refused = app
        .invoke(
            "create_group",
            json!({"name": "Climbing", "members": ["bob", "dave"]}),
        )
        .unwrap_err();
    assert_eq!(refused["kind"], json!("peer"), "{refused}");
    assert_eq!(refused["code"], json!("noKeyPackage"), "{refused}");
    let text = refused["message"].as_str().unwrap();
    assert!(
        text.contains("dave") && text.contains("cannot join"),
        "{text}"
    );
    // Input the page should never send is refused too, readably.
    let empty = app
        .invoke("create_group", json!({"name": "  ", "members": ["bob"]}))
        .unwrap_err();
    assert_eq!(empty["kind"], json!("invalidInput"), "{empty}");
    let alone = app
        .invoke("create_group", json!({"name": "Me", "members": ["alice"]}))
        .unwrap_err();
    assert_eq!(alone["kind"], json!("invalidInput"), "{alone}");
    assert!(app.invoke("bootstrap", json!({})).unwrap()["groups"]
        .as_array()
        .unwrap()
        .is_empty());

    let created = app
        .invoke(
            "create_group",
            json!({"name": "Climbing", "members": ["bob", "carol"]}),
        )
        .unwrap();
    let gid = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["name"], json!("Climbing"));
    let joined = |events: &mut EventStream| {
        rt.block_on(next_group(events, |e| match e {
            PeerEvent::GroupChanged {
                group,
                change: GroupChange::Joined { name, .. },
                ..
            } => Some((group.clone(), name.clone())),
            _ => None,
        }))
    };
    let (bob_gid, name) = joined(&mut bob_events);
    assert_eq!(name, "Climbing");
    assert_eq!(bob_gid.to_string(), gid);
    let (carol_gid, _) = joined(&mut carol_events);
    assert_eq!(carol_gid, bob_gid);
    until_line(&app, &gid, "You created the group with bob and carol", true);

    // Three ways, each with its sender.
    let sent = app
        .invoke(
            "send_group_message",
            json!({"groupId": gid, "text": "hello climbers"}),
        )
        .unwrap();
    assert_eq!(sent["outgoing"], json!(true));
    assert_eq!(
        rt.block_on(next_text(&mut bob_events)),
        (alice_id.clone(), "hello climbers".into())
    );
    assert_eq!(
        rt.block_on(next_text(&mut carol_events)),
        (alice_id.clone(), "hello climbers".into())
    );
    let ours = until_line(&app, &gid, "hello climbers", false);
    eventually(
        "our message sent",
        || Value::Array(lines(&app, &gid)),
        |ls| {
            ls.as_array()
                .unwrap()
                .iter()
                .any(|l| l["id"] == ours["id"] && l["status"] == json!("sent"))
        },
    );
    rt.block_on(bob.send_group_content(&bob_gid, &Content::Text("from bob".into())))
        .unwrap();
    rt.block_on(carol.send_group_content(&carol_gid, &Content::Text("from carol".into())))
        .unwrap();
    assert_eq!(
        until_line(&app, &gid, "from bob", false)["sender"],
        json!("bob")
    );
    assert_eq!(
        until_line(&app, &gid, "from carol", false)["sender"],
        json!("carol")
    );
    let (from, text) = rt.block_on(next_text(&mut carol_events));
    assert_eq!((from.as_str(), text.as_str()), ("bob", "from bob"));
    let (from, text) = rt.block_on(next_text(&mut bob_events));
    assert_eq!((from.as_str(), text.as_str()), ("carol", "from carol"));

    // Search finds group messages: in all conversations (with the group named) or in the group.
    let found = app
        .invoke("search_messages", json!({"query": "carol"}))
        .unwrap();
    let hit = found["hits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["groupId"] == json!(gid))
        .cloned()
        .expect("the group's message is found");
    assert_eq!(hit["peerId"], json!("carol"), "{hit}");
    assert_eq!(hit["groupName"], json!("Climbing"));
    assert_eq!(
        hit["seq"],
        until_line(&app, &gid, "from carol", false)["seq"]
    );
    let scoped = app
        .invoke(
            "search_messages",
            json!({"query": "climbers", "groupId": gid}),
        )
        .unwrap();
    let scoped = scoped["hits"].as_array().unwrap();
    assert_eq!(scoped.len(), 1, "{scoped:?}");
    assert_eq!(scoped[0]["outgoing"], json!(true));
    let in_bob = app
        .invoke(
            "search_messages",
            json!({"query": "climbers", "peerId": "bob"}),
        )
        .unwrap();
    assert_eq!(in_bob["hits"], json!([]), "a 1:1 search leaves groups out");
    let both = app
        .invoke(
            "search_messages",
            json!({"query": "x", "peerId": "bob", "groupId": gid}),
        )
        .unwrap_err();
    assert_eq!(both["kind"], json!("invalidInput"), "{both}");

    // A file bob sends to the group is a line from him with the file (its name the body).
    let file = dirs.0.path().join("notes.txt");
    std::fs::write(&file, b"ten bytes!").unwrap();
    rt.block_on(bob.send_group_file(&bob_gid, &file, lattice_peer::FileMeta::default()))
        .unwrap();
    let line = until_line(&app, &gid, "notes.txt", false);
    assert_eq!(line["sender"], json!("bob"));
    assert_eq!(line["file"]["name"], json!("notes.txt"), "{line}");
    let row = group_row(&app, &gid);
    assert_eq!(row["unread"], json!(3), "{row}");
    app.invoke("mark_group_read", json!({"groupId": gid}))
        .unwrap();
    assert_eq!(group_row(&app, &gid)["unread"], json!(0));

    // The member panel: everyone, with the safety number of the key each is bound to.
    let details = app
        .invoke("group_details", json!({"groupId": gid}))
        .unwrap();
    let members = details["members"].as_array().unwrap();
    let ids: Vec<&str> = members.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["alice", "bob", "carol"]);
    let bob_fp = bob.fingerprint().to_string();
    assert_eq!(members[1]["fingerprint"], json!(bob_fp));
    assert_eq!(members[0]["me"], json!(true));

    // A rename is a system line here and reaches the others.
    app.invoke("rename_group", json!({"groupId": gid, "name": "Crag"}))
        .unwrap();
    until_line(
        &app,
        &gid,
        "You renamed the group to \u{201c}Crag\u{201d}",
        true,
    );
    assert_eq!(group_row(&app, &gid)["name"], json!("Crag"));
    let renamed = rt.block_on(next_group(&mut bob_events, |e| match e {
        PeerEvent::GroupChanged {
            change: GroupChange::Renamed(n),
            ..
        } => Some(n.clone()),
        _ => None,
    }));
    assert_eq!(renamed, "Crag");

    // carol is removed: a system line, and she cannot read what follows.
    app.invoke(
        "remove_from_group",
        json!({"groupId": gid, "member": "carol"}),
    )
    .unwrap();
    until_line(&app, &gid, "You removed carol", true);
    rt.block_on(next_group(&mut carol_events, |e| {
        matches!(
            e,
            PeerEvent::GroupChanged {
                change: GroupChange::Removed,
                ..
            }
        )
        .then_some(())
    }));
    app.invoke(
        "send_group_message",
        json!({"groupId": gid, "text": "carol must not read this"}),
    )
    .unwrap();
    assert_eq!(
        rt.block_on(next_text(&mut bob_events)).1,
        "carol must not read this"
    );
    // bob answers; once alice has it, the server has fanned out both messages. carol holds no
    // state for the group any more, and read neither.
    rt.block_on(bob.send_group_content(&bob_gid, &Content::Text("nor this".into())))
        .unwrap();
    until_line(&app, &gid, "nor this", false);
    assert!(!carol.groups_list().unwrap().contains(&carol_gid));
    assert!(carol.group_info(&carol_gid).is_err());
    // What reached carol's stream by now (the idle wait ends the drain; it is no assertion).
    while let Ok(Some(e)) = rt.block_on(async {
        tokio::time::timeout(std::time::Duration::from_millis(200), carol_events.next()).await
    }) {
        assert!(
            !matches!(e, PeerEvent::GroupMessage(_)),
            "carol read a message after her removal: {e:?}"
        );
    }
    let details = app
        .invoke("group_details", json!({"groupId": gid}))
        .unwrap();
    assert_eq!(details["members"].as_array().unwrap().len(), 2);

    // A group bob makes with alice appears in the app by itself, with its first message.
    let bobs = rt
        .block_on(bob.create_group("Bob's plans", std::slice::from_ref(&alice_id)))
        .unwrap();
    rt.block_on(bob.send_group_content(&bobs, &Content::Text("welcome in".into())))
        .unwrap();
    let key = bobs.to_string();
    eventually(
        "bob's group listed",
        || group_row(&app, &key),
        |row| !row.is_null(),
    );
    until_line(&app, &key, "bob added you to the group", true);
    assert_eq!(
        until_line(&app, &key, "welcome in", false)["sender"],
        json!("bob")
    );
    assert_eq!(group_row(&app, &key)["name"], json!("Bob's plans"));

    // carol is invited back: she joins again from the Welcome.
    app.invoke(
        "invite_to_group",
        json!({"groupId": gid, "members": ["carol"]}),
    )
    .unwrap();
    until_line(&app, &gid, "You added carol", true);
    let (again, _) = joined(&mut carol_events);
    assert_eq!(again, carol_gid);

    // alice leaves bob's group: bob commits it, the conversation says so and takes no more.
    app.invoke("leave_group", json!({"groupId": key})).unwrap();
    until_line(&app, &key, "You left the group", true);
    assert_eq!(group_row(&app, &key)["left"], json!(true));
    let refused = app
        .invoke(
            "send_group_message",
            json!({"groupId": key, "text": "still here?"}),
        )
        .unwrap_err();
    assert_eq!(refused["kind"], json!("invalidInput"), "{refused}");
    let details = app
        .invoke("group_details", json!({"groupId": key}))
        .unwrap();
    assert!(details["members"].as_array().unwrap().is_empty());
    let (_, left) = rt.block_on(next_group(&mut bob_events, |e| match e {
        PeerEvent::GroupChanged {
            group,
            change: GroupChange::MemberRemoved(m),
            ..
        } if *group == bobs => Some((group.clone(), m.clone())),
        _ => None,
    }));
    assert_eq!(left, alice_id);

    // A restart keeps the groups, their history and their MLS state.
    let dir = app.into_dir();
    let app = TestApp::in_dir(dir);
    until_online(&app, &["bob"]);
    assert_eq!(group_row(&app, &gid)["name"], json!("Crag"));
    app.invoke(
        "send_group_message",
        json!({"groupId": gid, "text": "after the restart"}),
    )
    .unwrap();
    assert_eq!(
        rt.block_on(next_text(&mut bob_events)),
        (alice_id, "after the restart".into())
    );
}

#[test]
fn a_group_message_written_offline_waits_and_goes_once_connected() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt
        .block_on(lattice_server::spawn(lattice_server::Config::for_tests()))
        .unwrap();
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let bob = rt.block_on(mls_peer(&url, "bob", dir.path()));
    let mut bob_events = bob.events();
    let app = TestApp::set_up("alice", &url);
    until_online(&app, &["bob"]);
    let gid = app
        .invoke("create_group", json!({"name": "Pair", "members": ["bob"]}))
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let bob_gid: GroupId = rt.block_on(next_group(&mut bob_events, |e| match e {
        PeerEvent::GroupChanged {
            group,
            change: GroupChange::Joined { .. },
            ..
        } => Some(group.clone()),
        _ => None,
    }));
    assert_eq!(bob_gid.to_string(), gid);

    // The app stops; a message written while it is down is in the history as pending.
    let data = app.into_dir();
    {
        let db = lattice_desktop::storage::Db::open(
            &data.path().join(lattice_desktop::storage::DB_FILE),
        )
        .unwrap();
        let me = ClientId::new("alice").unwrap();
        db.insert_group_line(&lattice_desktop::storage::groups::NewGroupLine {
            group_id: &gid,
            kind: lattice_desktop::storage::groups::GroupLineKind::Message,
            sender: Some(&me),
            message_id: "local-offline-1",
            outgoing: true,
            body: "written offline",
            at: 1,
            status: lattice_desktop::contract::DeliveryStatus::Pending,
        })
        .unwrap()
        .unwrap();
    }
    let app = TestApp::in_dir(data);
    assert_eq!(rt.block_on(next_text(&mut bob_events)).1, "written offline");
    eventually(
        "the offline message sent",
        || Value::Array(lines(&app, &gid)),
        |ls| {
            ls.as_array()
                .unwrap()
                .iter()
                .any(|l| l["body"] == json!("written offline") && l["status"] == json!("sent"))
        },
    );
    // Unknown or junk group ids are refused readably.
    let junk = app
        .invoke("send_group_message", json!({"groupId": "ZZ", "text": "x"}))
        .unwrap_err();
    assert_eq!(junk["kind"], json!("invalidInput"), "{junk}");
    let unknown = app
        .invoke(
            "send_group_message",
            json!({"groupId": "abcd", "text": "x"}),
        )
        .unwrap_err();
    assert_eq!(unknown["kind"], json!("invalidInput"), "{unknown}");
}

/// `send_file_bytes` as the page calls it for a group: the bytes as the body, the group and the
/// name in headers.
fn paste_to_group(app: &TestApp, group: &str, name: &str, bytes: Vec<u8>) -> Result<Value, Value> {
    use tauri::ipc::{CallbackFn, InvokeBody};
    use tauri::test::{get_ipc_response, INVOKE_KEY};
    let mut headers = tauri::http::HeaderMap::new();
    headers.insert("x-lattice-group", group.parse().unwrap());
    headers.insert("x-lattice-name", name.parse().unwrap());
    get_ipc_response(
        app.webview(),
        tauri::webview::InvokeRequest {
            cmd: "send_file_bytes".into(),
            callback: CallbackFn(0),
            error: CallbackFn(1),
            url: "tauri://localhost".parse().unwrap(),
            body: InvokeBody::Raw(bytes),
            headers,
            invoke_key: INVOKE_KEY.to_string(),
        },
    )
    .map(|body| body.deserialize::<Value>().unwrap())
}

/// The next file offer a headless member reads in a group, with its message id.
async fn next_group_offer(
    events: &mut EventStream,
) -> (lattice_protocol::MessageId, lattice_peer::FileOffer) {
    next_group(events, |e| match e {
        PeerEvent::GroupMessage(m) => match &m.content {
            Content::File(offer) => Some((m.message_id.clone(), offer.clone())),
            _ => None,
        },
        _ => None,
    })
    .await
}

/// A headless member downloads `offer` from `from` and waits until it is complete; the bytes.
async fn fetch(
    peer: &MessagingPeer,
    events: &mut EventStream,
    from: &ClientId,
    (message_id, offer): &(lattice_protocol::MessageId, lattice_peer::FileOffer),
    dest: &std::path::Path,
) -> Vec<u8> {
    let id = peer.download_file(from, message_id, offer, dest).unwrap();
    next_group(events, |e| match e {
        PeerEvent::Transfer(p) if p.id == id => match &p.state {
            lattice_peer::TransferState::Completed => Some(()),
            lattice_peer::TransferState::Failed(reason) => panic!("download failed: {reason}"),
            _ => None,
        },
        _ => None,
    })
    .await;
    std::fs::read(dest).unwrap()
}

/// The line `seq` of the group once `ok` accepts it.
fn until_seq(
    app: &TestApp,
    group: &str,
    seq: &Value,
    what: &str,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    eventually(
        what,
        || {
            lines(app, group)
                .into_iter()
                .find(|l| l["seq"] == *seq)
                .unwrap_or(Value::Null)
        },
        |l| !l.is_null() && ok(l),
    )
}

#[test]
fn files_go_both_ways_in_a_group_are_saved_and_survive_a_restart() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server_dir = tempfile::tempdir().unwrap();
    let mut config = lattice_server::Config::for_tests();
    config.data_dir = Some(server_dir.path().to_owned());
    let server = rt.block_on(lattice_server::spawn(config)).unwrap();
    let url = server.url();
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let bob = rt.block_on(mls_peer(&url, "bob", dirs.0.path()));
    let carol = rt.block_on(mls_peer(&url, "carol", dirs.1.path()));
    let (mut bob_events, mut carol_events) = (bob.events(), carol.events());
    let alice_id = ClientId::new("alice").unwrap();
    let app = TestApp::set_up("alice", &url);
    until_online(&app, &["bob", "carol"]);
    let downloads = tempfile::tempdir().unwrap();
    app.invoke(
        "update_settings",
        json!({"patch": {"downloadsFolder": downloads.path().to_str().unwrap()}}),
    )
    .unwrap();
    let gid = create_group(&app, "Climbing", &["bob", "carol"]);
    let bob_gid = rt.block_on(joined(&mut bob_events));
    let carol_gid = rt.block_on(joined(&mut carol_events));

    // alice drops a file on the window with the group open: it goes to the group, its line
    // waits as pending until the upload is done and the file message went out.
    let drop_dir = tempfile::tempdir().unwrap();
    let topo: Vec<u8> = (0..90_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(drop_dir.path().join("topo.pdf"), &topo).unwrap();
    app.messenger()
        .set_dropped(vec![drop_dir.path().join("topo.pdf")]);
    let sent = app.invoke("send_dropped", json!({"groupId": gid})).unwrap();
    let sent = sent.as_array().unwrap()[0].clone();
    assert_eq!(sent["groupId"], json!(gid), "{sent}");
    assert_eq!(sent["outgoing"], json!(true));
    assert_eq!(sent["body"], json!("topo.pdf"));
    assert_eq!(sent["file"]["name"], json!("topo.pdf"));
    until_seq(&app, &gid, &sent["seq"], "alice's file sent", |l| {
        l["status"] == json!("sent") && l["file"]["state"] == json!("completed")
    });
    // Each member downloads it, byte for byte.
    for (peer, events, dir) in [
        (&bob, &mut bob_events, &dirs.0),
        (&carol, &mut carol_events, &dirs.1),
    ] {
        let offer = rt.block_on(next_group_offer(events));
        assert_eq!(offer.1.name, "topo.pdf");
        let got = rt.block_on(fetch(
            peer,
            events,
            &alice_id,
            &offer,
            &dir.path().join("topo.pdf"),
        ));
        assert_eq!(got, topo);
    }

    // A picture pasted into the group composer goes the same way.
    let pasted = paste_to_group(&app, &gid, "crag.bin", vec![7; 3_000]).unwrap();
    assert_eq!(pasted["groupId"], json!(gid), "{pasted}");
    let offer = rt.block_on(next_group_offer(&mut bob_events));
    assert_eq!(offer.1.name, "crag.bin");
    assert_eq!(
        rt.block_on(fetch(
            &bob,
            &mut bob_events,
            &alice_id,
            &offer,
            &dirs.0.path().join("crag.bin")
        )),
        vec![7; 3_000]
    );

    // bob's file downloads by itself (under the auto-download limit) and is saved.
    let notes = dirs.0.path().join("notes.txt");
    std::fs::write(&notes, b"bring the long rope").unwrap();
    rt.block_on(bob.send_group_file(&bob_gid, &notes, lattice_peer::FileMeta::default()))
        .unwrap();
    let line = until_line(&app, &gid, "notes.txt", false);
    assert_eq!(line["sender"], json!("bob"));
    let line = until_seq(&app, &gid, &line["seq"], "bob's file downloaded", |l| {
        l["file"]["state"] == json!("completed") && l["file"]["local"] == json!(true)
    });
    let saved = app
        .invoke("save_file", json!({"groupId": gid, "seq": line["seq"]}))
        .unwrap();
    assert_eq!(
        std::fs::read(saved.as_str().unwrap()).unwrap(),
        b"bring the long rope"
    );

    // Over the limit, carol's file waits for Download.
    app.invoke(
        "update_settings",
        json!({"patch": {"autoDownloadBytes": 1000}}),
    )
    .unwrap();
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    let big_path = dirs.1.path().join("video.bin");
    std::fs::write(&big_path, &big).unwrap();
    rt.block_on(carol.send_group_file(&carol_gid, &big_path, lattice_peer::FileMeta::default()))
        .unwrap();
    let offered = until_line(&app, &gid, "video.bin", false);
    assert_eq!(offered["file"]["state"], json!("offered"), "{offered}");
    assert_eq!(offered["file"]["local"], json!(false));
    // Refused readably: a message that is no file, both a person and a group, neither.
    let both = app
        .invoke(
            "download_file",
            json!({"groupId": gid, "peerId": "carol", "seq": offered["seq"]}),
        )
        .unwrap_err();
    assert_eq!(both["kind"], json!("invalidInput"), "{both}");
    let neither = app
        .invoke("download_file", json!({"seq": offered["seq"]}))
        .unwrap_err();
    assert_eq!(neither["kind"], json!("invalidInput"), "{neither}");
    let first = lines(&app, &gid)[0].clone();
    let no_file = app
        .invoke(
            "download_file",
            json!({"groupId": gid, "seq": first["seq"]}),
        )
        .unwrap_err();
    assert_eq!(no_file["kind"], json!("invalidInput"), "{no_file}");
    app.invoke(
        "download_file",
        json!({"groupId": gid, "seq": offered["seq"]}),
    )
    .unwrap();
    until_seq(
        &app,
        &gid,
        &offered["seq"],
        "carol's file downloaded",
        |l| l["file"]["state"] == json!("completed"),
    );

    // After a restart every file is still there, still saveable.
    let data = app.into_dir();
    let app = TestApp::in_dir(data);
    let after = lines(&app, &gid);
    let video = after
        .iter()
        .find(|l| l["body"] == json!("video.bin"))
        .unwrap();
    assert_eq!(video["file"]["state"], json!("completed"), "{video}");
    assert_eq!(video["file"]["local"], json!(true));
    let saved = app
        .invoke("save_file", json!({"groupId": gid, "seq": video["seq"]}))
        .unwrap();
    assert_eq!(std::fs::read(saved.as_str().unwrap()).unwrap(), big);
    let ours = after
        .iter()
        .find(|l| l["body"] == json!("topo.pdf"))
        .unwrap();
    assert_eq!(ours["status"], json!("sent"));

    // The group's history exports as JSON through the command, files named without their bytes.
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("climbing.json");
    let summary = app
        .invoke(
            "export_conversation",
            json!({"groupId": gid, "path": path.to_str().unwrap(), "format": "json"}),
        )
        .unwrap();
    assert_eq!(summary["messages"], json!(after.len()), "{summary}");
    let exported: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(exported["name"], json!("Climbing"));
    let video = exported["lines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["body"] == json!("video.bin"))
        .unwrap();
    assert_eq!(video["sender"], json!("carol"));
    assert_eq!(video["file"]["size"], json!(200_000));
    let unknown = app
        .invoke(
            "export_conversation",
            json!({"groupId": "abcd", "path": out.path().join("x.json").to_str().unwrap(), "format": "json"}),
        )
        .unwrap_err();
    assert_eq!(unknown["kind"], json!("invalidInput"), "{unknown}");

    drop(app.into_dir());
    rt.block_on(async {
        bob.disconnect().await;
        carol.disconnect().await;
        server.shutdown().await;
    });
}

/// The `group-message` events the app sent to the page.
fn group_events(app: &TestApp) -> std::sync::mpsc::Receiver<Value> {
    use tauri::{Listener as _, Manager as _};
    let (tx, rx) = std::sync::mpsc::channel();
    app.webview().app_handle().listen_any(
        lattice_desktop::contract::Event::GroupMessage.as_str(),
        move |event| {
            let _ = tx.send(serde_json::from_str::<Value>(event.payload()).unwrap());
        },
    );
    rx
}

/// The next `group-message` event `pick` accepts, skipping others.
fn next_event(
    rx: &std::sync::mpsc::Receiver<Value>,
    what: &str,
    pick: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let v = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no group-message event: {what}"));
        if pick(&v) {
            return v;
        }
    }
}

/// The line with `seq` as the history has it now.
fn line_at(app: &TestApp, group: &str, seq: &Value) -> Value {
    lines(app, group)
        .into_iter()
        .find(|l| l["seq"] == *seq)
        .expect("the line is in the history")
}

/// The next edit, delete or reaction a headless member reads in a group.
async fn next_update(events: &mut EventStream) -> lattice_peer::ContentUpdate {
    next_group(events, |e| match e {
        PeerEvent::GroupUpdate { update, .. } => Some(update.clone()),
        _ => None,
    })
    .await
}

#[test]
fn replies_edits_deletes_and_reactions_go_both_ways_in_a_group_forgeries_are_refused_and_all_survives_a_restart(
) {
    use lattice_peer::{Change, MessageRef, ReactionAction};
    use lattice_protocol::MessageId;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt
        .block_on(lattice_server::spawn(lattice_server::Config::for_tests()))
        .unwrap();
    let url = server.url();
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let bob = rt.block_on(mls_peer(&url, "bob", dirs.0.path()));
    let carol = rt.block_on(mls_peer(&url, "carol", dirs.1.path()));
    let (mut bob_events, mut carol_events) = (bob.events(), carol.events());
    let (alice_id, bob_id) = (
        ClientId::new("alice").unwrap(),
        ClientId::new("bob").unwrap(),
    );
    let app = TestApp::set_up("alice", &url);
    let ui = group_events(&app);
    until_online(&app, &["bob", "carol"]);
    let gid = create_group(&app, "Crag", &["bob", "carol"]);
    let bob_gid = rt.block_on(joined(&mut bob_events));
    let carol_gid = rt.block_on(joined(&mut carol_events));

    // Bob writes; the app has his line with the id it came with.
    let b1 = rt
        .block_on(bob.send_group_content(&bob_gid, &Content::Text("first try".into())))
        .unwrap();
    let theirs = until_line(&app, &gid, "first try", false);
    assert_eq!(theirs["wireId"], json!(b1.as_str()));
    let seq = theirs["seq"].clone();

    // Bob edits it: the history and the page show the new text, marked edited.
    rt.block_on(bob.send_group_content(
        &bob_gid,
        &Content::Edit {
            target: b1.clone(),
            text: "second try".into(),
        },
    ))
    .unwrap();
    let seen = next_event(&ui, "bob's edit", |v| {
        v["seq"] == seq && v["edited"] == json!(true)
    });
    assert_eq!(seen["body"], json!("second try"));
    let now = line_at(&app, &gid, &seq);
    assert_eq!(
        (now["body"].clone(), now["edited"].clone()),
        (json!("second try"), json!(true))
    );
    let versions = app
        .invoke("message_versions", json!({"groupId": gid, "seq": seq}))
        .unwrap();
    assert_eq!(versions[0]["body"], json!("first try"));

    // Carol forges an edit of bob's line: the app's library refuses it (MLS says carol sent
    // it), nothing changes. Her next message proves the forgery was processed before it.
    rt.block_on(carol.send_group_content(
        &carol_gid,
        &Content::Edit {
            target: b1.clone(),
            text: "carol was here".into(),
        },
    ))
    .unwrap();
    rt.block_on(carol.send_group_content(&carol_gid, &Content::Text("after the forgery".into())))
        .unwrap();
    until_line(&app, &gid, "after the forgery", false);
    assert_eq!(line_at(&app, &gid, &seq)["body"], json!("second try"));
    // A reaction naming a message that is not in the history is ignored quietly.
    rt.block_on(carol.send_group_content(
        &carol_gid,
        &Content::Reaction {
            target: MessageRef {
                sender: bob_id.clone(),
                message_id: MessageId::new("no-such-message").unwrap(),
            },
            emoji: "👍".into(),
            action: ReactionAction::Add,
        },
    ))
    .unwrap();

    // Alice answers bob's line with a quote; bob reads the reply naming his message.
    let reply = app
        .invoke(
            "send_group_message",
            json!({"groupId": gid, "text": "nice one", "replyTo": seq}),
        )
        .unwrap();
    assert_eq!(reply["replyTo"]["messageId"], json!(b1.as_str()));
    assert_eq!(
        reply["replyTo"]["seq"], seq,
        "the quote jumps to bob's line"
    );
    let (to, wire) = rt.block_on(next_group(&mut bob_events, |e| match e {
        PeerEvent::GroupMessage(m) => match &m.content {
            Content::Reply { to, text, .. } if text == "nice one" => {
                Some((to.clone(), m.message_id.clone()))
            }
            _ => None,
        },
        _ => None,
    }));
    assert_eq!((to.sender, to.message_id), (bob_id.clone(), b1.clone()));
    // Its wire id is kept once the server took it: what bob's reaction names.
    let ours = eventually(
        "our reply's wire id kept",
        || line_at(&app, &gid, &reply["seq"]),
        |l| l["wireId"] == json!(wire.as_str()),
    );
    rt.block_on(bob.send_group_content(
        &bob_gid,
        &Content::Reaction {
            target: MessageRef {
                sender: alice_id.clone(),
                message_id: wire.clone(),
            },
            emoji: "🎉".into(),
            action: ReactionAction::Add,
        },
    ))
    .unwrap();
    let reacted = next_event(&ui, "bob's reaction", |v| {
        v["seq"] == ours["seq"] && v["reactions"] != json!([])
    });
    assert_eq!(
        reacted["reactions"],
        json!([{"emoji": "🎉", "reactors": ["bob"]}])
    );

    // Alice reacts to bob's line and edits her reply: bob reads both, checked by his library.
    app.invoke("react", json!({"groupId": gid, "seq": seq, "emoji": "👍"}))
        .unwrap();
    let u = rt.block_on(next_update(&mut bob_events));
    assert_eq!(u.from, alice_id);
    assert!(
        matches!(&u.change, Change::Reaction { target, emoji, action: ReactionAction::Add }
            if target.message_id == b1 && emoji == "👍"),
        "{u:?}"
    );
    let edited = app
        .invoke(
            "edit_message",
            json!({"groupId": gid, "seq": reply["seq"], "text": "very nice one"}),
        )
        .unwrap();
    assert_eq!(edited["edited"], json!(true));
    let u = rt.block_on(next_update(&mut bob_events));
    assert!(
        matches!(&u.change, Change::Edited { target, text } if *target == wire && text == "very nice one"),
        "{u:?}"
    );
    // Someone else's line cannot be edited or deleted from here.
    let refused = app
        .invoke(
            "edit_message",
            json!({"groupId": gid, "seq": seq, "text": "mine now"}),
        )
        .unwrap_err();
    assert_eq!(refused["kind"], json!("invalidInput"), "{refused}");
    let refused = app
        .invoke(
            "delete_message",
            json!({"groupId": gid, "seq": seq, "forEveryone": true}),
        )
        .unwrap_err();
    assert_eq!(refused["kind"], json!("invalidInput"), "{refused}");
    // A group has no "delete for me"; naming both a person and a group is refused too.
    let refused = app
        .invoke(
            "delete_message",
            json!({"groupId": gid, "seq": reply["seq"], "forEveryone": false}),
        )
        .unwrap_err();
    assert_eq!(refused["kind"], json!("invalidInput"), "{refused}");
    let refused = app
        .invoke(
            "react",
            json!({"groupId": gid, "peerId": "bob", "seq": seq, "emoji": "👍"}),
        )
        .unwrap_err();
    assert_eq!(refused["kind"], json!("invalidInput"), "{refused}");

    // Bob deletes his line: a tombstone here, its reactions gone, its text not found.
    rt.block_on(bob.send_group_content(&bob_gid, &Content::Delete { target: b1.clone() }))
        .unwrap();
    let gone = next_event(&ui, "bob's delete", |v| {
        v["seq"] == seq && v["deleted"] == json!(true)
    });
    assert_eq!(
        (gone["body"].clone(), gone["reactions"].clone()),
        (json!(""), json!([]))
    );
    let search = |q: &str| {
        app.invoke("search_messages", json!({"query": q, "groupId": gid}))
            .unwrap()["hits"]
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!(search("second"), 0, "a deleted line is not found");
    assert_eq!(search("very"), 1, "the edited text is found");
    assert_eq!(search("nice"), 1);

    // A line bob writes now is changed after the app restarts: the library checks the edit
    // against the history the app kept (`find_in_group`), not its memory of this run.
    let b2 = rt
        .block_on(bob.send_group_content(&bob_gid, &Content::Text("before the restart".into())))
        .unwrap();
    let b2_seq = until_line(&app, &gid, "before the restart", false)["seq"].clone();

    // Offline, alice deletes her reply: it waits in the outbox and goes after the restart.
    rt.block_on(app.messenger().stop_session());
    app.invoke(
        "delete_message",
        json!({"groupId": gid, "seq": reply["seq"], "forEveryone": true}),
    )
    .unwrap();
    assert_eq!(line_at(&app, &gid, &reply["seq"])["deleted"], json!(true));
    let dir = app.into_dir();
    let app = TestApp::in_dir(dir);
    let u = rt.block_on(next_update(&mut bob_events));
    assert!(
        matches!(&u.change, Change::Deleted { target } if *target == wire),
        "{u:?}"
    );
    until_online(&app, &["bob"]);
    rt.block_on(bob.send_group_content(
        &bob_gid,
        &Content::Edit {
            target: b2,
            text: "after the restart".into(),
        },
    ))
    .unwrap();
    eventually(
        "bob's edit of a line from before the restart",
        || line_at(&app, &gid, &b2_seq),
        |l| l["body"] == json!("after the restart") && l["edited"] == json!(true),
    );
    // Everything from before the restart is still as it was.
    let first = line_at(&app, &gid, &seq);
    assert_eq!(
        (first["deleted"].clone(), first["body"].clone()),
        (json!(true), json!(""))
    );
    let ours = line_at(&app, &gid, &reply["seq"]);
    assert_eq!(ours["deleted"], json!(true));
    assert_eq!(ours["replyTo"]["messageId"], json!(b1.as_str()));
    assert_eq!(
        line_at(&app, &gid, &theirs["seq"])["wireId"],
        json!(b1.as_str())
    );
}

/// The app reads a group: bob's library gets alice's read receipt naming his newest message.
/// With the read-receipt setting off, reading sends none (the app's next message reaches bob
/// with no receipt before it, where one would have gone first).
#[test]
fn reading_a_group_sends_a_receipt_and_the_setting_off_sends_none() {
    use lattice_peer::MessageRef;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt
        .block_on(lattice_server::spawn(lattice_server::Config::for_tests()))
        .unwrap();
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let bob = rt.block_on(mls_peer(&url, "bob", dir.path()));
    let mut bob_events = bob.events();
    let bob_id = ClientId::new("bob").unwrap();
    let app = TestApp::set_up("alice", &url);
    until_online(&app, &["bob"]);
    let gid = create_group(&app, "Reads", &["bob"]);
    let bob_gid = rt.block_on(joined(&mut bob_events));

    let b1 = rt
        .block_on(bob.send_group_content(&bob_gid, &Content::Text("read me".into())))
        .unwrap();
    until_line(&app, &gid, "read me", false);
    app.invoke("mark_group_read", json!({"groupId": gid}))
        .unwrap();
    let (member, up_to) = rt.block_on(next_group(&mut bob_events, |e| match e {
        PeerEvent::GroupRead {
            group,
            member,
            up_to,
            ..
        } if *group == bob_gid => Some((member.clone(), up_to.clone())),
        _ => None,
    }));
    assert_eq!(member.as_str(), "alice");
    assert_eq!(
        up_to,
        MessageRef {
            sender: bob_id.clone(),
            message_id: b1
        }
    );

    // Receipts off: reading sends nothing.
    app.invoke("update_settings", json!({"patch": {"readReceipts": false}}))
        .unwrap();
    rt.block_on(bob.send_group_content(&bob_gid, &Content::Text("not this one".into())))
        .unwrap();
    until_line(&app, &gid, "not this one", false);
    app.invoke("mark_group_read", json!({"groupId": gid}))
        .unwrap();
    app.invoke(
        "send_group_message",
        json!({"groupId": gid, "text": "after reading"}),
    )
    .unwrap();
    let receipt = rt.block_on(next_group(&mut bob_events, |e| match e {
        PeerEvent::GroupRead { .. } => Some(true),
        PeerEvent::GroupMessage(m) => {
            matches!(&m.content, Content::Text(t) if t == "after reading").then_some(false)
        }
        _ => None,
    }));
    assert!(!receipt, "a read receipt went with read receipts off");
}

/// Typing both ways in a group: bob's "started" reaches the page as a `group-typing` event and
/// his message ends it (the library's stop, raised just before the message); the app's typing
/// reaches bob's library.
#[test]
fn typing_in_a_group_goes_both_ways_and_a_message_ends_it() {
    use tauri::{Listener as _, Manager as _};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt
        .block_on(lattice_server::spawn(lattice_server::Config::for_tests()))
        .unwrap();
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let bob = rt.block_on(mls_peer(&url, "bob", dir.path()));
    let mut bob_events = bob.events();
    let app = TestApp::set_up("alice", &url);
    let (tx, typing) = std::sync::mpsc::channel();
    app.webview().app_handle().listen_any(
        lattice_desktop::contract::Event::GroupTyping.as_str(),
        move |event| {
            let _ = tx.send(serde_json::from_str::<Value>(event.payload()).unwrap());
        },
    );
    until_online(&app, &["bob"]);
    let gid = create_group(&app, "Typing", &["bob"]);
    let bob_gid = rt.block_on(joined(&mut bob_events));

    assert!(rt.block_on(bob.group_typing(&bob_gid, true)).unwrap());
    let seen = next_event(&typing, "bob typing", |_| true);
    assert_eq!(
        seen,
        json!({"groupId": gid, "memberId": "bob", "typing": true})
    );
    rt.block_on(bob.send_group_content(&bob_gid, &Content::Text("done typing".into())))
        .unwrap();
    let seen = next_event(&typing, "bob stopped", |_| true);
    assert_eq!(
        seen,
        json!({"groupId": gid, "memberId": "bob", "typing": false})
    );

    app.invoke("group_typing", json!({"groupId": gid, "typing": true}))
        .unwrap();
    let (member, started) = rt.block_on(next_group(&mut bob_events, |e| match e {
        PeerEvent::GroupTyping {
            group,
            member,
            started,
        } if *group == bob_gid => Some((member.clone(), *started)),
        _ => None,
    }));
    assert_eq!((member.as_str(), started), ("alice", true));
    // An unknown group is refused readably.
    let refused = app
        .invoke("group_typing", json!({"groupId": "ab", "typing": true}))
        .unwrap_err();
    assert_eq!(refused["kind"], json!("invalidInput"));
}
