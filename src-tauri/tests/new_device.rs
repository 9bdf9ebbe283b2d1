//! The desktop app as a **new (linked) device**, against a real `lattice-server` (port 0), with
//! the desktop app as the first device too and a real library peer (bob, with MLS) as a contact,
//! through the commands the page uses: the new device starts linking and shows a code and its
//! fingerprint; the first device types the code, sees that same fingerprint and approves; the new
//! device saves itself (owner-only, no identity file) and runs as alice's device; a contact's
//! message reaches it; a message either of alice's devices sends shows on the other as her own,
//! outgoing, "from" the device that sent it, never unread; started again it is still that
//! device; removed by the first device, it shows as removed and never dials again, also after a
//! restart. A wrong code, an unknown account and a profile holding both an identity and a device
//! file are readable refusals.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;

use lattice_peer::{MessagingPeer, PeerConfig, PeerEvent};
use lattice_protocol::ClientId;
use serde_json::{json, Value};
use support::{eventually, link_events, next_stage, TestApp, WAIT};

fn until_connected(app: &TestApp) {
    eventually(
        "connected",
        || app.invoke("bootstrap", json!({})).unwrap(),
        |b| b["connection"]["state"] == json!("connected"),
    );
}

/// bob: a library peer speaking MLS, online with his KeyPackages published.
async fn bob(url: &str, dir: &std::path::Path) -> MessagingPeer {
    let mut config = PeerConfig::new(
        url.to_owned(),
        ClientId::new("bob").unwrap(),
        lattice_crypto::Identity::generate(&mut rand_core::OsRng),
    );
    config.mls_state = Some(dir.join("bob.mls"));
    let bob = MessagingPeer::new(config).unwrap();
    bob.connect().await.unwrap();
    bob.publish_key_packages().await.unwrap();
    bob
}

/// The messages of the 1:1 with `peer` as the app has them.
fn messages(app: &TestApp, peer: &str) -> Vec<Value> {
    app.invoke("load_messages", json!({"peerId": peer}))
        .unwrap()["messages"]
        .as_array()
        .unwrap()
        .clone()
}

/// Waits until the app's 1:1 with `peer` holds a message with `body`; returns it.
fn message_with(app: &TestApp, peer: &str, body: &str) -> Value {
    let found = eventually(
        body,
        || json!(messages(app, peer)),
        |m| {
            m.as_array()
                .unwrap()
                .iter()
                .any(|m| m["body"] == json!(body))
        },
    );
    found
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["body"] == json!(body))
        .unwrap()
        .clone()
}

/// Links a fresh app to alice's app `first` as `device`; returns the new app (connected).
fn link(first: &TestApp, url: &str, device: &str) -> TestApp {
    let links = link_events(first);
    let laptop = TestApp::new();
    let shown = laptop
        .invoke(
            "start_linking",
            json!({"serverUrl": url, "clientId": "alice", "deviceName": device}),
        )
        .unwrap();
    let code = shown["code"].as_str().unwrap();
    assert_eq!(code.chars().filter(char::is_ascii_alphanumeric).count(), 8);
    assert_eq!(shown["validSecs"], json!(300));
    assert_eq!(next_stage(&links, "request")["deviceId"], json!(device));
    let relay = first
        .invoke("enter_link_code", json!({"code": code}))
        .unwrap();
    let compare = next_stage(&links, "awaitingApproval");
    assert_eq!(
        compare["fingerprint"], shown["fingerprint"],
        "the first device shows the fingerprint the new device shows"
    );
    first
        .invoke("answer_link", json!({"relayId": relay, "approve": true}))
        .unwrap();
    let boot = laptop.invoke("wait_linking", json!({})).unwrap();
    assert_eq!(boot["needsSetup"], json!(false));
    assert_eq!(boot["me"]["clientId"], json!("alice"));
    assert_eq!(boot["me"]["deviceId"], json!(device));
    let primary = first.invoke("bootstrap", json!({})).unwrap();
    assert_eq!(
        boot["me"]["fingerprint"], primary["me"]["fingerprint"],
        "one id, one safety number"
    );
    until_connected(&laptop);
    laptop
}

#[test]
fn a_new_device_links_runs_as_the_device_shares_the_conversation_and_stays_removed() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt
        .block_on(lattice_server::spawn(lattice_server::Config::for_tests()))
        .unwrap();
    let url = server.url();
    let tmp = tempfile::tempdir().unwrap();
    let bob = rt.block_on(bob(&url, tmp.path()));
    let mut bob_events = bob.events();
    let alice = TestApp::set_up("alice", &url);
    until_connected(&alice);

    let laptop = link(&alice, &url, "laptop");
    // Saved owner-only, and this profile has no identity of its own.
    let file = laptop.dir().join(lattice_desktop::storage::DEVICE_FILE);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the device key's secret is in it");
    }
    assert!(!laptop
        .dir()
        .join(lattice_desktop::storage::IDENTITY_FILE)
        .exists());
    // A linked device cannot also create an identity.
    let refused = laptop
        .invoke(
            "complete_setup",
            json!({"clientId": "alice", "serverMode": "connect", "serverUrl": url}),
        )
        .unwrap_err();
    assert_eq!(refused["kind"], json!("invalidInput"));
    // It lists its id's devices (read-only: the list is signed by the identity key).
    let listed = laptop.invoke("list_devices", json!({})).unwrap();
    assert_eq!(listed[0]["deviceId"], json!("laptop"));

    // bob writes to alice: both of her devices read it.
    rt.block_on(bob.send_message(&ClientId::new("alice").unwrap(), "hello both"))
        .unwrap();
    let on_laptop = message_with(&laptop, "bob", "hello both");
    assert_eq!(on_laptop["outgoing"], json!(false));
    message_with(&alice, "bob", "hello both");

    // The primary answers: bob reads alice; the laptop shows it as alice's own, from the
    // primary, outgoing and not unread.
    alice
        .invoke(
            "send_message",
            json!({"peerId": "bob", "text": "from my primary"}),
        )
        .unwrap();
    let own = message_with(&laptop, "bob", "from my primary");
    assert_eq!(own["outgoing"], json!(true));
    assert_eq!(own["fromDevice"], json!("primary"));
    rt.block_on(async {
        tokio::time::timeout(WAIT, async {
            loop {
                if let Some(PeerEvent::Message(m)) = bob_events.next().await {
                    if m.text == "from my primary" {
                        assert_eq!(m.from.as_str(), "alice");
                        break;
                    }
                }
            }
        })
        .await
        .expect("bob reads the primary's answer");
    });

    // The laptop answers: alice's primary shows it as her own, from the laptop.
    laptop
        .invoke(
            "send_message",
            json!({"peerId": "bob", "text": "from my laptop"}),
        )
        .unwrap();
    let own = message_with(&alice, "bob", "from my laptop");
    assert_eq!(own["outgoing"], json!(true));
    assert_eq!(own["fromDevice"], json!("laptop"));
    // Our own messages from elsewhere are never unread; bob's first one is, on each device.
    let peers = alice.invoke("bootstrap", json!({})).unwrap()["peers"].clone();
    let bob_row = peers
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == json!("bob"))
        .unwrap()
        .clone();
    assert_eq!(bob_row["unread"], json!(1), "{bob_row}");
    // Search sees them.
    let hits = alice
        .invoke("search_messages", json!({"query": "laptop"}))
        .unwrap();
    assert!(
        hits["hits"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["seq"] == own["seq"] && h["outgoing"] == json!(true)),
        "{hits}"
    );

    // Started again: still alice's laptop, from its file.
    let dir = laptop.into_dir();
    let laptop = TestApp::in_dir(dir);
    let boot = laptop.invoke("bootstrap", json!({})).unwrap();
    assert_eq!(boot["needsSetup"], json!(false));
    assert_eq!(boot["me"]["deviceId"], json!("laptop"));
    until_connected(&laptop);

    // Removed by the first device: the removed state, kept, and no reconnecting.
    alice
        .invoke("remove_device", json!({"deviceId": "laptop"}))
        .unwrap();
    let boot = eventually(
        "the removed state",
        || laptop.invoke("bootstrap", json!({})).unwrap(),
        |b| b["me"]["removedAt"].is_i64(),
    );
    assert_eq!(boot["connection"]["state"], json!("offline"));
    // History stays readable; sending is refused in a sentence.
    message_with(&laptop, "bob", "hello both");
    let refused = laptop
        .invoke(
            "send_message",
            json!({"peerId": "bob", "text": "still here?"}),
        )
        .unwrap_err();
    assert_eq!(refused["kind"], json!("invalidInput"));
    assert!(refused["message"].as_str().unwrap().contains("removed"));
    std::thread::sleep(std::time::Duration::from_secs(2));
    let boot = laptop.invoke("bootstrap", json!({})).unwrap();
    assert_eq!(
        boot["connection"]["state"],
        json!("offline"),
        "no reconnect loop"
    );
    let dir = laptop.into_dir();
    let laptop = TestApp::in_dir(dir);
    let boot = laptop.invoke("bootstrap", json!({})).unwrap();
    assert!(boot["me"]["removedAt"].is_i64(), "still removed: {boot}");
    std::thread::sleep(std::time::Duration::from_secs(1));
    let boot = laptop.invoke("bootstrap", json!({})).unwrap();
    assert_ne!(
        boot["connection"]["state"],
        json!("connected"),
        "a removed device never dials again"
    );
    assert_ne!(boot["connection"]["state"], json!("connecting"));

    drop(laptop);
    drop(alice);
    rt.block_on(bob.disconnect());
    rt.block_on(server.shutdown());
}

#[test]
fn a_wrong_code_or_an_unknown_account_links_nothing_and_says_why() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt
        .block_on(lattice_server::spawn(lattice_server::Config::for_tests()))
        .unwrap();
    let url = server.url();
    let alice = TestApp::set_up("alice", &url);
    until_connected(&alice);
    let links = link_events(&alice);

    // A wrong code typed on the first device.
    let phone = TestApp::new();
    let shown = phone
        .invoke(
            "start_linking",
            json!({"serverUrl": url, "clientId": "alice", "deviceName": "phone"}),
        )
        .unwrap();
    next_stage(&links, "request");
    let code = shown["code"].as_str().unwrap().replace('-', "");
    let wrong: String = std::iter::once(if code.starts_with('A') { 'B' } else { 'A' })
        .chain(code.chars().skip(1))
        .collect();
    alice
        .invoke("enter_link_code", json!({"code": wrong}))
        .unwrap();
    let err = phone.invoke("wait_linking", json!({})).unwrap_err();
    assert_eq!(err["kind"], json!("invalidInput"));
    assert!(
        err["message"].as_str().unwrap().contains("did not match"),
        "{err}"
    );
    assert!(!phone
        .dir()
        .join(lattice_desktop::storage::DEVICE_FILE)
        .exists());
    let boot = phone.invoke("bootstrap", json!({})).unwrap();
    assert_eq!(boot["needsSetup"], json!(true));

    // Waiting with nothing under way, and bad input, are sentences.
    let err = phone.invoke("wait_linking", json!({})).unwrap_err();
    assert!(err["message"].as_str().unwrap().starts_with("No linking"));
    let err = phone
        .invoke(
            "start_linking",
            json!({"serverUrl": "http://x", "clientId": "alice", "deviceName": "phone"}),
        )
        .unwrap_err();
    assert_eq!(err["kind"], json!("invalidInput"));
    let err = phone
        .invoke(
            "start_linking",
            json!({"serverUrl": url, "clientId": "alice", "deviceName": "primary"}),
        )
        .unwrap_err();
    assert_eq!(err["kind"], json!("invalidInput"));
    // An unreachable server.
    let err = phone
        .invoke(
            "start_linking",
            json!({"serverUrl": support::UNREACHABLE, "clientId": "alice", "deviceName": "phone"}),
        )
        .unwrap_err();
    assert_eq!(err["code"], json!("unreachable"), "{err}");

    // Cancelled on the new device.
    phone
        .invoke(
            "start_linking",
            json!({"serverUrl": url, "clientId": "alice", "deviceName": "phone"}),
        )
        .unwrap();
    phone.invoke("cancel_linking", json!({})).unwrap();
    let err = phone.invoke("wait_linking", json!({})).unwrap_err();
    assert!(
        err["message"].as_str().unwrap().contains("cancelled"),
        "{err}"
    );

    // An account the server does not know.
    phone
        .invoke(
            "start_linking",
            json!({"serverUrl": url, "clientId": "nobody-here", "deviceName": "phone"}),
        )
        .unwrap();
    let err = phone.invoke("wait_linking", json!({})).unwrap_err();
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("no account named nobody-here"),
        "{err}"
    );

    drop(phone);
    drop(alice);
    rt.block_on(server.shutdown());
}

/// A `Ui` that drops what it is sent.
struct Nowhere;

impl lattice_desktop::Ui for Nowhere {
    fn send(&self, _: lattice_desktop::Update) {}
}

#[test]
fn a_profile_with_both_an_identity_and_a_device_file_is_refused_loudly() {
    let dir = tempfile::tempdir().unwrap();
    lattice_desktop::storage::load_identity(dir.path(), true).unwrap();
    std::fs::write(
        dir.path().join(lattice_desktop::storage::DEVICE_FILE),
        b"{}",
    )
    .unwrap();
    let settings = lattice_desktop::storage::settings::Settings::default();
    let err = lattice_desktop::Messenger::open(dir.path(), settings, Arc::new(Nowhere))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("both an identity") && err.contains("device.json"),
        "{err}"
    );
}

/// The group line of `group` with `body` on `app`, once it is there.
fn group_line_with(app: &TestApp, group: &str, body: &str) -> Value {
    let lines = || {
        app.invoke(
            "load_group_messages",
            json!({"groupId": group, "limit": 200}),
        )
        .unwrap()["messages"]
            .clone()
    };
    let found = eventually(body, lines, |ls| {
        ls.as_array()
            .unwrap()
            .iter()
            .any(|l| l["body"] == json!(body))
    });
    found
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["body"] == json!(body))
        .unwrap()
        .clone()
}

/// In a group, a message either of alice's devices sends shows on the other as her own,
/// outgoing, "from" the device that sent it (`fromDevice`), as in a 1:1 chat; a group read on
/// the laptop is no longer unread on the primary.
#[test]
fn in_a_group_our_lines_from_the_other_device_say_which_device_sent_them() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt
        .block_on(lattice_server::spawn(lattice_server::Config::for_tests()))
        .unwrap();
    let url = server.url();
    let tmp = tempfile::tempdir().unwrap();
    let bob = rt.block_on(bob(&url, tmp.path()));
    let mut bob_events = bob.events();
    let alice = TestApp::set_up("alice", &url);
    until_connected(&alice);
    let laptop = link(&alice, &url, "laptop");
    eventually(
        "bob's key on the primary",
        || alice.invoke("bootstrap", json!({})).unwrap(),
        |b| {
            b["peers"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|p| p["id"] == json!("bob")))
        },
    );
    let gid = alice
        .invoke("create_group", json!({"name": "Both", "members": ["bob"]}))
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // The laptop joins the group of its id on its own.
    eventually(
        "the group on the laptop",
        || laptop.invoke("bootstrap", json!({})).unwrap(),
        |b| {
            b["groups"]
                .as_array()
                .is_some_and(|gs| gs.iter().any(|g| g["id"] == json!(gid)))
        },
    );
    alice
        .invoke(
            "send_group_message",
            json!({"groupId": gid, "text": "group from primary"}),
        )
        .unwrap();
    let own = group_line_with(&laptop, &gid, "group from primary");
    assert_eq!(own["outgoing"], json!(true));
    assert_eq!(own["fromDevice"], json!("primary"));
    laptop
        .invoke(
            "send_group_message",
            json!({"groupId": gid, "text": "group from laptop"}),
        )
        .unwrap();
    let own = group_line_with(&alice, &gid, "group from laptop");
    assert_eq!(own["outgoing"], json!(true));
    assert_eq!(own["fromDevice"], json!("laptop"));
    // Written here: no device named.
    let here = group_line_with(&alice, &gid, "group from primary");
    assert_eq!(here["fromDevice"], Value::Null);

    // bob writes: unread on both; read on the laptop, it is read on the primary too.
    let bob_gid = rt.block_on(async {
        tokio::time::timeout(WAIT, async {
            loop {
                if let Some(PeerEvent::GroupChanged { group, .. }) = bob_events.next().await {
                    break group;
                }
            }
        })
        .await
        .expect("bob is in the group")
    });
    rt.block_on(bob.send_group_content(&bob_gid, &lattice_peer::Content::Text("to both".into())))
        .unwrap();
    group_line_with(&laptop, &gid, "to both");
    group_line_with(&alice, &gid, "to both");
    let unread = |app: &TestApp| {
        app.invoke("bootstrap", json!({})).unwrap()["groups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["id"] == json!(gid))
            .unwrap()["unread"]
            .clone()
    };
    assert_eq!(unread(&alice), json!(1));
    laptop
        .invoke("mark_group_read", json!({"groupId": gid}))
        .unwrap();
    eventually("read elsewhere", || unread(&alice), |u| *u == json!(0));
}
