//! Several devices of one id (docs/protocol.md, "Devices"), through real WebSocket clients on a
//! real server (127.0.0.1:0, SQLite): two devices online at once, per-device mailboxes and acks,
//! `REPLACED` per device, presence per id, the signed device list's refusals (a ninth device, a
//! device not on the list, a forged certificate or list, a replayed or older list), a removed
//! device, one KeyPackage per device, and group fan-out to the sender's other devices.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/devices.rs"]
mod devices_kit;
mod support;

use base64::Engine as _;
use devices_kit::*;
use lattice_crypto::Identity;
use lattice_protocol::close_code;
use serde_json::json;
use support::{challenge, new_identity, register_verified, spawn_server, Client, Next, B64};

#[tokio::test]
async fn two_devices_of_one_id_are_online_at_once_and_both_receive_a_message() {
    let server = spawn_server().await;
    let url = server.url();
    every_device_gets_its_copy([&url, &url, &url]).await;
}

#[tokio::test]
async fn presence_is_per_id_and_discover_lists_it_once() {
    let server = spawn_server().await;
    let url = server.url();
    let alice = new_identity();
    let phone = Device::new("phone");
    let mut primary = alice_with(&url, &alice, &[&phone]).await;
    let mut bob = register_verified(&url, "bob", &new_identity()).await;
    let d = bob
        .request(json!({"type":"discover","payload":{}}), "discover")
        .await;
    assert_eq!(d["payload"]["peers"], json!(["alice", "bob"]));
    let mut phone_c = device(&url, &alice, "alice", &phone).await;
    let d = bob
        .request(json!({"type":"discover","payload":{}}), "discover")
        .await;
    assert_eq!(d["payload"]["peers"], json!(["alice", "bob"]), "{d}");
    // The phone leaving does not take alice offline: the next presence notice bob gets is
    // carol's, not alice's.
    phone_c.ws.close(None).await.unwrap();
    drop(phone_c);
    let _carol = register_verified(&url, "carol", &new_identity()).await;
    let p = bob.recv_any(&["peer_connected", "peer_disconnected"]).await;
    // (a peer_connected for alice's phone would also be a bug)
    assert_eq!(
        p,
        json!({"type":"peer_connected","payload":{"peerId":"carol"}})
    );
    primary.ws.close(None).await.unwrap();
    let p = bob.recv_any(&["peer_connected", "peer_disconnected"]).await;
    assert_eq!(
        p,
        json!({"type":"peer_disconnected","payload":{"peerId":"alice"}})
    );
}

#[tokio::test]
async fn mail_for_an_offline_device_waits_for_that_device_and_acks_are_per_device() {
    let server = spawn_server().await;
    let url = server.url();
    let alice = new_identity();
    let phone = Device::new("phone");
    let mut primary = alice_with(&url, &alice, &[&phone]).await;
    let mut bob = register_verified(&url, "bob", &new_identity()).await;

    bob.send(message("alice", "m1")).await;
    assert_eq!(
        bob.recv_type("message_ack").await["payload"]["status"],
        "queued"
    );
    let m = next_message(&mut primary).await;
    assert_eq!(m["messageId"], "m1");
    primary
        .send(json!({"type":"ack","payload":{"messageId":"m1","fromId":"bob"}}))
        .await;
    alive(&mut primary).await;

    // The phone was offline: its copy waited for it, the primary's ack did not touch it.
    let mut phone_c = device(&url, &alice, "alice", &phone).await;
    let m = next_message(&mut phone_c).await;
    assert_eq!(m["messageId"], "m1");
    phone_c
        .send(json!({"type":"ack","payload":{"messageId":"m1","fromId":"bob"}}))
        .await;
    alive(&mut phone_c).await;
    phone_c.ws.close(None).await.unwrap();
    drop(phone_c);

    // Acked on both: neither gets m1 again; the next thing each gets is m2.
    let mut phone_c = support_reconnect_device(&url, &alice, &phone).await;
    bob.send(message("alice", "m2")).await;
    assert_eq!(next_message(&mut phone_c).await["messageId"], "m2");
    assert_eq!(next_message(&mut primary).await["messageId"], "m2");
}

/// A device registers again after a close the server may not have noticed yet (bounded).
async fn support_reconnect_device(url: &str, alice: &Identity, phone: &Device) -> Client {
    for _ in 0..50 {
        let (c, v) = try_device(url, alice, "alice", phone, None).await;
        if v["type"] == "register" {
            return c;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("the phone could not register again");
}

#[tokio::test]
async fn a_device_replacing_itself_does_not_touch_the_other() {
    let server = spawn_server().await;
    let url = server.url();
    let alice = new_identity();
    let phone = Device::new("phone");
    let mut primary = alice_with(&url, &alice, &[&phone]).await;
    let mut old_phone = device(&url, &alice, "alice", &phone).await;
    let mut new_phone = device(&url, &alice, "alice", &phone).await;
    let close = old_phone.recv_close().await.expect("a close frame");
    assert_eq!(u16::from(close.code), close_code::REPLACED);
    // The primary lives on and gets mail; so does the new phone connection.
    let mut bob = register_verified(&url, "bob", &new_identity()).await;
    bob.send(message("alice", "m1")).await;
    assert_eq!(next_message(&mut primary).await["messageId"], "m1");
    assert_eq!(next_message(&mut new_phone).await["messageId"], "m1");
    // And the primary replacing itself leaves the phone alone.
    let mut new_primary = register_verified(&url, "alice", &alice).await;
    let close = primary.recv_close().await.expect("a close frame");
    assert_eq!(u16::from(close.code), close_code::REPLACED);
    bob.send(message("alice", "m2")).await;
    assert_eq!(next_message(&mut new_phone).await["messageId"], "m2");
    // (the new primary first drains m1, which the old one never acked)
    let m = next_message(&mut new_primary).await;
    assert!(m["messageId"] == "m1" || m["messageId"] == "m2", "{m}");
}

#[tokio::test]
async fn a_ninth_device_is_refused() {
    let server = spawn_server().await;
    let url = server.url();
    let alice = new_identity();
    let devices: Vec<Device> = ["d1", "d2", "d3", "d4", "d5", "d6", "d7", "d8"]
        .into_iter()
        .map(Device::new)
        .collect();
    let mut primary = register_verified(&url, "alice", &alice).await;
    let eight: Vec<&Device> = devices.iter().collect();
    let v = upload_list(&mut primary, signed_list(&alice, "alice", 1, &eight), "l9").await;
    assert_error(&v, "TOO_MANY_DEVICES", "l9");
    // Seven linked devices and the primary are the most: accepted, and all online at once.
    let v = upload_list(
        &mut primary,
        signed_list(&alice, "alice", 2, &eight[..7]),
        "l8",
    )
    .await;
    assert_eq!(v["payload"]["devices"], 7, "{v}");
    let mut online = Vec::new();
    for d in &eight[..7] {
        online.push(device(&url, &alice, "alice", d).await);
    }
    // The eighth linked device (the ninth device) is not on the list and cannot register.
    let (_c, v) = try_device(&url, &alice, "alice", eight[7], None).await;
    assert_error(&v, "UNKNOWN_DEVICE", "reg");
    alive(&mut primary).await;
}

#[tokio::test]
async fn a_device_not_on_the_list_a_forged_certificate_and_forged_or_stale_lists_are_refused() {
    let server = spawn_server().await;
    let url = server.url();
    let alice = new_identity();
    let mallory = new_identity();
    let phone = Device::new("phone");
    let laptop = Device::new("laptop");

    // No list yet: no device can register.
    let _primary = register_verified(&url, "alice", &alice).await;
    let (_c, v) = try_device(&url, &alice, "alice", &phone, None).await;
    assert_error(&v, "UNKNOWN_DEVICE", "reg");

    let mut primary = alice_with_again(&url, &alice, &[&phone]).await;
    // Not on the list.
    let (_c, v) = try_device(&url, &alice, "alice", &laptop, None).await;
    assert_error(&v, "UNKNOWN_DEVICE", "reg");
    // On the list by name, with another key (the certificate is for the other key).
    let impostor = Device::new("phone");
    let (_c, v) = try_device(&url, &alice, "alice", &impostor, None).await;
    assert_error(&v, "UNKNOWN_DEVICE", "reg");
    // A certificate not made by alice's identity key.
    let forged = certificate(&mallory, "alice", &phone);
    let (_c, v) = try_device_with(&url, &alice, "alice", &phone, forged, None).await;
    assert_error(&v, "INVALID_DEVICE_CERTIFICATE", "reg");
    // A device bringing a list signed by someone else (mallory adding her device).
    let evil = Device::new("evil");
    let evil_list = signed_list(&mallory, "alice", 9, &[&phone, &evil]);
    let cert = certificate(&alice, "alice", &evil);
    let (_c, v) =
        try_device_with(&url, &alice, "alice", &evil, cert, Some(evil_list.clone())).await;
    assert_error(&v, "INVALID_DEVICE_CERTIFICATE", "reg");
    let v = upload_list(&mut primary, evil_list, "forged").await;
    assert_error(&v, "INVALID_DEVICE_CERTIFICATE", "forged");
    // Replayed (the same counter) and older lists.
    let v = upload_list(
        &mut primary,
        signed_list(&alice, "alice", 1, &[&phone]),
        "again",
    )
    .await;
    assert_error(&v, "STALE_DEVICE_LIST", "again");
    let v = upload_list(&mut primary, signed_list(&alice, "alice", 0, &[]), "older").await;
    assert_error(&v, "STALE_DEVICE_LIST", "older");
    // The reserved id and duplicates are malformed.
    let fake_primary = Device::new("primary");
    let v = upload_list(
        &mut primary,
        signed_list(&alice, "alice", 5, &[&fake_primary]),
        "reserved",
    )
    .await;
    assert_error(&v, "INVALID_MESSAGE", "reserved");
    let v = upload_list(
        &mut primary,
        signed_list(&alice, "alice", 5, &[&phone, &phone]),
        "dup",
    )
    .await;
    assert_error(&v, "INVALID_MESSAGE", "dup");
    // Every refusal left the connection working, and the real phone still registers.
    alive(&mut primary).await;
    let _phone = device(&url, &alice, "alice", &phone).await;
}

/// Like [`alice_with`], for an alice already registered once (its first connection is replaced).
async fn alice_with_again(url: &str, alice: &Identity, devices: &[&Device]) -> Client {
    let mut primary = support::reconnect_verified(url, "alice", alice).await;
    let v = upload_list(&mut primary, signed_list(alice, "alice", 1, devices), "l1").await;
    assert_eq!(v["type"], "device_list_upload", "{v}");
    primary
}

#[tokio::test]
async fn a_new_device_brings_its_list_and_a_removed_device_is_closed_and_refused() {
    let server = spawn_server().await;
    let url = server.url();
    let alice = new_identity();
    let phone = Device::new("phone");
    let mut primary = register_verified(&url, "alice", &alice).await;
    // Linking: the new device registers with the list that names it.
    let list = signed_list(&alice, "alice", 1, &[&phone]);
    let (mut phone_c, v) = try_device(&url, &alice, "alice", &phone, Some(list.clone())).await;
    assert_eq!(v["payload"]["deviceId"], "phone", "{v}");
    // Mail for the phone waits in its mailbox…
    let mut bob = register_verified(&url, "bob", &new_identity()).await;
    phone_c.ws.close(None).await.unwrap();
    drop(phone_c);
    bob.send(message("alice", "m1")).await;
    bob.recv_type("message_ack").await;
    let phone_c = support_reconnect_device(&url, &alice, &phone).await;
    // …until a new list drops the phone: closed with 4001, and it cannot come back.
    let v = upload_list(&mut primary, signed_list(&alice, "alice", 2, &[]), "l2").await;
    assert_eq!(v["payload"], json!({"counter": 2, "devices": 0}));
    let mut phone_c = phone_c;
    let close = loop {
        match phone_c.next().await {
            Next::Closed(c) => break c.expect("a close frame"),
            Next::Frame(_) => {}
        }
    };
    assert_eq!(u16::from(close.code), close_code::DEVICE_REMOVED);
    let (_c, v) = try_device(&url, &alice, "alice", &phone, Some(list)).await;
    assert_error(&v, "STALE_DEVICE_LIST", "reg");
    let (_c, v) = try_device(&url, &alice, "alice", &phone, None).await;
    assert_error(&v, "UNKNOWN_DEVICE", "reg");
    // Without linked devices alice is back to the primary-only path: delivered end to end.
    bob.send(message("alice", "m2")).await;
    let m = next_message(&mut primary).await;
    assert!(m["messageId"] == "m1" || m["messageId"] == "m2", "{m}");
}

#[tokio::test]
async fn key_package_fetch_returns_one_per_device_and_older_clients_get_the_primarys() {
    let server = spawn_server().await;
    let url = server.url();
    let alice = new_identity();
    let phone = Device::new("phone");
    let mut primary = alice_with(&url, &alice, &[&phone]).await;
    let mut phone_c = device(&url, &alice, "alice", &phone).await;
    let kp = |tag: &str| B64.encode(format!("kp-{tag}"));
    let up = primary
        .request(
            json!({"type":"key_package_upload","payload":{"keyPackages":[kp("p1"), kp("p2"), kp("p3")]}}),
            "key_package_upload",
        )
        .await;
    assert_eq!(up["payload"]["stock"], 3, "{up}");
    let up = phone_c
        .request(
            json!({"type":"key_package_upload","payload":{"keyPackages":[kp("q1")],"lastResort":kp("qlr")}}),
            "key_package_upload",
        )
        .await;
    assert_eq!(
        up["payload"],
        json!({"stock": 1, "lastResort": true}),
        "{up}"
    );

    let mut bob = register_verified(&url, "bob", &new_identity()).await;
    let f = bob
        .request(
            json!({"type":"key_package_fetch","payload":{"clientId":"alice","allDevices":true}}),
            "key_package_fetch",
        )
        .await;
    assert_eq!(
        f["payload"]["devices"],
        json!([
            {"deviceId":"primary","keyPackage":kp("p1"),"lastResort":false},
            {"deviceId":"phone","keyPackage":kp("q1"),"lastResort":false},
        ]),
        "{f}"
    );
    assert_eq!(f["payload"]["keyPackage"], kp("p1"));
    // The phone's stock is empty now: its last resort, kept.
    let f = bob
        .request(
            json!({"type":"key_package_fetch","payload":{"clientId":"alice","allDevices":true}}),
            "key_package_fetch",
        )
        .await;
    assert_eq!(f["payload"]["devices"][1]["keyPackage"], kp("qlr"), "{f}");
    assert_eq!(f["payload"]["devices"][1]["lastResort"], true);
    // An older client (no allDevices): one KeyPackage, the primary's, in the old shape.
    let f = bob
        .request(
            json!({"type":"key_package_fetch","payload":{"clientId":"alice"}}),
            "key_package_fetch",
        )
        .await;
    assert_eq!(
        f["payload"],
        json!({"clientId":"alice","keyPackage":kp("p3"),"lastResort":false}),
        "{f}"
    );
}

#[tokio::test]
async fn group_fan_out_reaches_the_senders_other_device_and_not_the_sender() {
    let server = spawn_server().await;
    let url = server.url();
    let alice = new_identity();
    let phone = Device::new("phone");
    let mut primary = alice_with(&url, &alice, &[&phone]).await;
    let mut phone_c = device(&url, &alice, "alice", &phone).await;
    let mut bob = register_verified(&url, "bob", &new_identity()).await;
    let g = "00aa11bb";

    // alice's primary creates the group with her phone and bob.
    let c = primary
        .request(
            json!({"type":"group_commit","requestId":"c0","payload":{"groupId": g, "epoch": 0,
                "commit": mls(g, 0, COMMIT, "c0"), "welcome": welcome("w0"),
                "members": ["alice", "bob"], "messageId": "c0",
                "leaves": [leaf("alice","primary"), leaf("alice","phone"), leaf("bob","primary")]}}),
            "group_commit",
        )
        .await;
    assert_eq!(c["payload"]["epoch"], 1, "{c}");
    for who in [&mut phone_c, &mut bob] {
        let (from, env) = next_mls(who).await;
        assert_eq!(
            (from.as_str(), env["kind"].as_str()),
            ("alice", Some("welcome"))
        );
    }

    // The phone sends: the primary (same id, other device) and bob get it.
    let sent = phone_c
        .request(
            json!({"type":"group_message","requestId":"g1","payload":{"groupId": g,
                "message": mls(g, 1, APPLICATION, "from-phone"), "messageId": "g1"}}),
            "group_message",
        )
        .await;
    assert_eq!(sent["payload"]["recipients"], 2, "{sent}");
    for who in [&mut primary, &mut bob] {
        let m = next_message(who).await;
        assert_eq!(
            (m["fromId"].as_str(), m["messageId"].as_str()),
            (Some("alice"), Some("g1"))
        );
    }
    // Not the phone itself: the next thing it gets is bob's message.
    bob.request(
        json!({"type":"group_message","requestId":"g2","payload":{"groupId": g,
            "message": mls(g, 1, APPLICATION, "from-bob"), "messageId": "g2"}}),
        "group_message",
    )
    .await;
    let m = next_message(&mut phone_c).await;
    assert_eq!(
        (m["fromId"].as_str(), m["messageId"].as_str()),
        (Some("bob"), Some("g2"))
    );

    // A Commit naming a device that is not on alice's list is refused, nothing stored.
    let v = bob
        .request(
            json!({"type":"group_commit","requestId":"c1","payload":{"groupId": g, "epoch": 1,
                "commit": mls(g, 1, COMMIT, "c1"), "welcome": welcome("w1"),
                "members": ["alice", "bob"], "messageId": "c1",
                "leaves": [leaf("alice","primary"), leaf("alice","phone"), leaf("alice","tablet"),
                           leaf("bob","primary")]}}),
            "error",
        )
        .await;
    assert_error(&v, "UNKNOWN_DEVICE", "c1");
    // A device that is not a leaf of the group may not send to it.
    let tablet = Device::new("tablet");
    let v = upload_list(
        &mut primary,
        signed_list(&alice, "alice", 2, &[&phone, &tablet]),
        "l2",
    )
    .await;
    assert_eq!(v["type"], "device_list_upload", "{v}");
    let mut tablet_c = device(&url, &alice, "alice", &tablet).await;
    let v = tablet_c
        .request(
            json!({"type":"group_message","requestId":"t1","payload":{"groupId": g,
                "message": mls(g, 1, APPLICATION, "from-tablet"), "messageId": "t1"}}),
            "error",
        )
        .await;
    assert_error(&v, "NOT_A_MEMBER", "t1");
    // An older client's Commit (no leaves) keeps alice's two leaves.
    let c = bob
        .request(
            json!({"type":"group_commit","requestId":"c2","payload":{"groupId": g, "epoch": 1,
                "commit": mls(g, 1, COMMIT, "c2"), "members": ["alice", "bob"], "messageId": "c2"}}),
            "group_commit",
        )
        .await;
    assert_eq!(c["payload"]["epoch"], 2, "{c}");
    for who in [&mut primary, &mut phone_c] {
        let m = next_message(who).await;
        assert_eq!(
            (m["fromId"].as_str(), m["messageId"].as_str()),
            (Some("bob"), Some("c2"))
        );
    }
}

#[tokio::test]
async fn a_device_part_without_a_verification_is_refused_and_primary_is_reserved() {
    let server = spawn_server().await;
    let url = server.url();
    let alice = new_identity();
    let phone = Device::new("phone");
    let _primary = alice_with(&url, &alice, &[&phone]).await;
    let mut c = Client::connect(&url).await;
    let nonce = challenge(&mut c).await;
    let mut frame = device_register(
        &alice,
        "alice",
        &phone,
        certificate(&alice, "alice", &phone),
        None,
        &nonce,
    );
    frame["payload"]["verification"]["algorithm"] = json!("ml-dsa");
    c.send(frame).await;
    assert_error(&c.recv_any(&["error"]).await, "INVALID_PROOF", "reg");
    let fake = Device::new("primary");
    let (_c, v) = try_device(&url, &alice, "alice", &fake, None).await;
    assert_error(&v, "INVALID_MESSAGE", "reg");
}

#[tokio::test]
async fn a_removed_devices_leaf_gets_no_copies_and_does_not_block_commits() {
    let server = spawn_server().await;
    let url = server.url();
    let alice = new_identity();
    let phone = Device::new("phone");
    let mut primary = alice_with(&url, &alice, &[&phone]).await;
    let _phone_c = device(&url, &alice, "alice", &phone).await;
    let mut bob = register_verified(&url, "bob", &new_identity()).await;
    let g = "00dd";
    let leaves = json!([
        leaf("alice", "primary"),
        leaf("alice", "phone"),
        leaf("bob", "primary")
    ]);
    let c = primary
        .request(
            json!({"type":"group_commit","requestId":"c0","payload":{"groupId": g, "epoch": 0,
                "commit": mls(g, 0, COMMIT, "c0"), "welcome": welcome("w0"),
                "members": ["alice", "bob"], "messageId": "c0", "leaves": leaves}}),
            "group_commit",
        )
        .await;
    assert_eq!(c["payload"]["epoch"], 1, "{c}");
    let v = upload_list(&mut primary, signed_list(&alice, "alice", 2, &[]), "l2").await;
    assert_eq!(v["type"], "device_list_upload", "{v}");
    // bob's Commit still names the phone's leaf (alice has not removed it in MLS yet): accepted.
    let c = bob
        .ask(
            json!({"type":"group_commit","requestId":"c1","payload":{"groupId": g, "epoch": 1,
                "commit": mls(g, 1, COMMIT, "c1"), "members": ["alice", "bob"], "messageId": "c1",
                "leaves": leaves}}),
            "group_commit",
        )
        .await;
    assert_eq!(c["payload"]["epoch"], 2, "{c}");
    // Copies skip the removed device: a message from bob reaches alice's primary only.
    let sent = bob
        .ask(
            json!({"type":"group_message","requestId":"g1","payload":{"groupId": g,
                "message": mls(g, 2, APPLICATION, "hi"), "messageId": "g1"}}),
            "group_message",
        )
        .await;
    assert_eq!(sent["payload"]["recipients"], 1, "{sent}");
}

#[tokio::test]
async fn a_device_that_removes_itself_gets_the_answer_then_4001() {
    let server = spawn_server().await;
    let url = server.url();
    let alice = new_identity();
    let phone = Device::new("phone");
    let mut primary = alice_with(&url, &alice, &[&phone]).await;
    let mut phone_c = device(&url, &alice, "alice", &phone).await;
    let v = upload_list(&mut phone_c, signed_list(&alice, "alice", 2, &[]), "bye").await;
    assert_eq!(v["payload"], json!({"counter": 2, "devices": 0}), "{v}");
    assert_eq!(v["requestId"], "bye");
    let close = phone_c.recv_close().await.expect("a close frame");
    assert_eq!(u16::from(close.code), close_code::DEVICE_REMOVED);
    alive(&mut primary).await;
}
