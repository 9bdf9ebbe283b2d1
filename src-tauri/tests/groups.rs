//! Groups in the desktop app, against a real `lattice-server` (port 0), with the app on Tauri's
//! mock runtime and headless MLS peers (real SQLite state each): alice (the app) creates a group
//! with bob and carol, messages flow three ways with their senders, a rename and a removal show
//! as system lines, and carol, removed, can no longer read what follows (checked on her side).
//! A person whose app cannot join groups is refused with a sentence naming them; a group
//! another client adds the app to appears by itself, and the group survives a restart.

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

    // A file bob sends to the group (lattice-chat can) reads as a line from him with its name
    // and size, and says the app cannot save it yet: never silence.
    let file = dirs.0.path().join("notes.txt");
    std::fs::write(&file, b"ten bytes!").unwrap();
    rt.block_on(bob.send_group_file(&bob_gid, &file, lattice_peer::FileMeta::default()))
        .unwrap();
    assert_eq!(
        until_line(
            &app,
            &gid,
            "Sent a file, notes.txt (1 KB). Files in groups cannot be saved in this app yet.",
            false
        )["sender"],
        json!("bob")
    );
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
