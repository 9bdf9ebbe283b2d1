//! Linking devices on the first device (the app holding the identity), against a real
//! `lattice-server` (port 0) with a real library peer as the new device, through the commands
//! and the `link` event the page uses: a request comes up, the code typed is checked, the
//! fingerprint shown is the new device's own, approval links it (the new device gets its
//! bundle) and lists it with that fingerprint, removal signs it out; a wrong code, a refusal
//! and text that is no code are readable refusals, and nothing is linked by them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use lattice_peer::{EventStream, LinkEvent, LinkFailure, MessagingPeer, PeerEvent};
use lattice_protocol::{ClientId, DeviceId};
use serde_json::json;
use support::{eventually, link_events, next_stage, TestApp, WAIT};

/// The new device's next linking event.
async fn new_device_event(events: &mut EventStream) -> LinkEvent {
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some(PeerEvent::Link(l)) = events.next().await {
                break l;
            }
        }
    })
    .await
    .expect("a linking event on the new device")
}

/// A new device: a library peer on a throwaway id, connected.
async fn new_device(url: &str) -> MessagingPeer {
    support::connect_peer(url, &format!("link-{}", uuid::Uuid::new_v4().simple())).await
}

/// Waits until the app is connected.
fn until_connected(app: &TestApp) {
    eventually(
        "connected",
        || app.invoke("bootstrap", json!({})).unwrap(),
        |b| b["connection"]["state"] == json!("connected"),
    );
}

#[test]
fn the_first_device_links_lists_and_removes_a_new_device() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt
        .block_on(lattice_server::spawn(lattice_server::Config::for_tests()))
        .unwrap();
    let url = server.url();
    let app = TestApp::set_up("alice", &url);
    until_connected(&app);
    let links = link_events(&app);
    assert_eq!(app.invoke("list_devices", json!({})).unwrap(), json!([]));

    let laptop = rt.block_on(new_device(&url));
    let mut laptop_events = laptop.events();
    let alice = ClientId::new("alice").unwrap();
    let code = laptop
        .start_linking(&alice, DeviceId::new("laptop").unwrap())
        .unwrap();

    let request = next_stage(&links, "request");
    assert_eq!(request["deviceId"], json!("laptop"));
    assert_eq!(request["relayId"], json!(laptop.client_id().as_str()));

    // Typed as a person might: small letters, grouped.
    let typed = format!("{} {}", &code[..4], &code[4..]).to_lowercase();
    let relay = app
        .invoke("enter_link_code", json!({"code": typed}))
        .unwrap();
    assert_eq!(relay, json!(laptop.client_id().as_str()));
    let compare = next_stage(&links, "awaitingApproval");
    assert_eq!(
        compare["fingerprint"],
        json!(laptop.linking_fingerprint().unwrap().to_string()),
        "the fingerprint shown is the new device's own"
    );
    assert!(
        laptop.take_linked_device().is_none(),
        "nothing before approval"
    );

    app.invoke("answer_link", json!({"relayId": relay, "approve": true}))
        .unwrap();
    assert_eq!(next_stage(&links, "approved")["deviceId"], json!("laptop"));
    assert!(matches!(
        rt.block_on(new_device_event(&mut laptop_events)),
        LinkEvent::Linked { client_id, device_id }
            if client_id == alice && device_id.as_str() == "laptop"
    ));
    let linked = laptop.take_linked_device().unwrap();

    let listed = app.invoke("list_devices", json!({})).unwrap();
    assert_eq!(
        listed,
        json!([{
            "deviceId": "laptop",
            "fingerprint": linked.device_key.public_key().fingerprint().to_string(),
        }])
    );

    // Removing it: gone from the list; removing it again is a sentence, not an error string.
    assert_eq!(
        app.invoke("remove_device", json!({"deviceId": "laptop"}))
            .unwrap(),
        json!([])
    );
    assert_eq!(app.invoke("list_devices", json!({})).unwrap(), json!([]));
    let again = app
        .invoke("remove_device", json!({"deviceId": "laptop"}))
        .unwrap_err();
    assert_eq!(again["kind"], json!("invalidInput"));
    assert_eq!(
        again["message"],
        json!("That device is not linked to this account any more.")
    );
    rt.block_on(laptop.disconnect());
    drop(app);
    rt.block_on(server.shutdown());
}

#[test]
fn a_wrong_code_a_refusal_and_text_that_is_no_code_link_nothing_and_say_why() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt
        .block_on(lattice_server::spawn(lattice_server::Config::for_tests()))
        .unwrap();
    let url = server.url();
    let app = TestApp::set_up("alice", &url);
    until_connected(&app);
    let links = link_events(&app);
    let alice = ClientId::new("alice").unwrap();

    // No request yet: the code has nobody to go to.
    let none = app
        .invoke("enter_link_code", json!({"code": "ABCD EFGH"}))
        .unwrap_err();
    assert_eq!(none["kind"], json!("invalidInput"));
    assert!(none["message"]
        .as_str()
        .unwrap()
        .starts_with("No new device is waiting for a code."));

    // Text that is no code, and a flood of text, are refused before anything is sent.
    for text in [
        "hello",
        "12345678901234567890123456789012345678901234567890123456789012345",
    ] {
        let err = app
            .invoke("enter_link_code", json!({"code": text}))
            .unwrap_err();
        assert_eq!(err["kind"], json!("invalidInput"), "{text}");
        assert!(err["message"]
            .as_str()
            .unwrap()
            .contains("8 letters and digits"));
    }

    // A wrong code: the run fails on both sides, readably.
    let phone = rt.block_on(new_device(&url));
    let mut phone_events = phone.events();
    let code = phone
        .start_linking(&alice, DeviceId::new("phone").unwrap())
        .unwrap();
    next_stage(&links, "request");
    // Another valid code: the first character changed within the alphabet.
    let wrong: String = std::iter::once(if code.starts_with('A') { 'B' } else { 'A' })
        .chain(code.chars().skip(1))
        .collect();
    app.invoke("enter_link_code", json!({"code": wrong}))
        .unwrap();
    let failed = next_stage(&links, "failed");
    assert!(failed["message"]
        .as_str()
        .unwrap()
        .starts_with("The code did not match"));
    assert!(matches!(
        rt.block_on(new_device_event(&mut phone_events)),
        LinkEvent::Failed {
            reason: LinkFailure::WrongCode,
            ..
        }
    ));
    assert!(phone.take_linked_device().is_none());

    // A refusal after the right code.
    let tablet = rt.block_on(new_device(&url));
    let mut tablet_events = tablet.events();
    let code = tablet
        .start_linking(&alice, DeviceId::new("tablet").unwrap())
        .unwrap();
    next_stage(&links, "request");
    let relay = app
        .invoke("enter_link_code", json!({"code": code}))
        .unwrap();
    next_stage(&links, "awaitingApproval");
    app.invoke("answer_link", json!({"relayId": relay, "approve": false}))
        .unwrap();
    assert_eq!(
        next_stage(&links, "failed")["message"],
        json!("The new device was refused; nothing was linked.")
    );
    assert!(matches!(
        rt.block_on(new_device_event(&mut tablet_events)),
        LinkEvent::Failed {
            reason: LinkFailure::Refused,
            ..
        }
    ));
    // Answering it again: the request is no longer open.
    let late = app
        .invoke("answer_link", json!({"relayId": relay, "approve": true}))
        .unwrap_err();
    assert_eq!(late["kind"], json!("invalidInput"));
    assert!(late["message"]
        .as_str()
        .unwrap()
        .starts_with("This link request is no longer open"));
    assert_eq!(app.invoke("list_devices", json!({})).unwrap(), json!([]));

    rt.block_on(phone.disconnect());
    rt.block_on(tablet.disconnect());
    drop(app);
    rt.block_on(server.shutdown());
}

#[test]
fn device_calls_without_a_session_say_to_connect() {
    let app = TestApp::new();
    for (cmd, args) in [
        ("list_devices", json!({})),
        ("remove_device", json!({"deviceId": "laptop"})),
        ("enter_link_code", json!({"code": "ABCDEFGH"})),
        ("answer_link", json!({"relayId": "link-x", "approve": true})),
    ] {
        let err = app.invoke(cmd, args).unwrap_err();
        assert_eq!(err["kind"], json!("peer"), "{cmd}: {err}");
        assert_eq!(err["code"], json!("notConnected"), "{cmd}: {err}");
    }
    let bad = app
        .invoke("remove_device", json!({"deviceId": "not a device"}))
        .unwrap_err();
    assert_eq!(bad["kind"], json!("invalidInput"));
}
