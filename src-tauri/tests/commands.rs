//! Command-level tests: the real command handlers on Tauri's mock runtime, invoked through IPC
//! exactly as the page invokes them (camelCase arguments, `{kind, message}` errors).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::json;
use support::TestApp;

#[test]
fn a_fresh_profile_needs_setup() {
    let app = TestApp::new();
    let boot = app.invoke("bootstrap", json!({})).unwrap();
    assert_eq!(boot["needsSetup"], json!(true));
    assert_eq!(boot["me"], json!(null));
    assert_eq!(boot["settings"]["serverMode"], json!("host"));
    assert_eq!(boot["settings"]["hostPort"], json!(3005));
    assert_eq!(boot["connection"]["state"], json!("offline"));
    assert_eq!(boot["peers"], json!([]));
}

#[test]
fn setup_refuses_bad_names_and_urls_with_readable_errors() {
    let app = TestApp::new();
    let err = app
        .invoke(
            "complete_setup",
            json!({"clientId": "two words", "serverMode": "connect", "serverUrl": "ws://127.0.0.1:9"}),
        )
        .unwrap_err();
    assert_eq!(err["kind"], json!("invalidInput"));
    assert!(err["message"].as_str().unwrap().contains("letters, digits"));

    let err = app
        .invoke(
            "complete_setup",
            json!({"clientId": "alice", "serverMode": "connect", "serverUrl": "http://example"}),
        )
        .unwrap_err();
    assert_eq!(err["kind"], json!("invalidInput"));
    assert!(err["message"].as_str().unwrap().contains("ws://"));
    // Nothing was created.
    assert!(!app.dir().join("identity.key").exists());
}

#[test]
fn setup_creates_a_private_identity_and_survives_a_restart() {
    let app = TestApp::new();
    // A server that is not there: setup still completes; the indicator will say so.
    let boot = app
        .invoke(
            "complete_setup",
            json!({"clientId": "alice", "serverMode": "connect", "serverUrl": support::UNREACHABLE}),
        )
        .unwrap();
    assert_eq!(boot["needsSetup"], json!(false));
    assert_eq!(boot["me"]["clientId"], json!("alice"));
    let fingerprint = boot["me"]["fingerprint"].as_str().unwrap().to_owned();
    assert_eq!(fingerprint.split(' ').count(), 12);

    let key = app.dir().join("identity.key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "identity readable only by the user");
    }

    let dir = app.into_dir();
    let again = TestApp::in_dir(dir);
    let boot = again.invoke("bootstrap", json!({})).unwrap();
    assert_eq!(boot["needsSetup"], json!(false));
    assert_eq!(boot["me"]["fingerprint"], json!(fingerprint));
    assert_eq!(boot["settings"]["serverUrl"], json!(support::UNREACHABLE));
}

#[test]
fn a_message_written_offline_waits_in_the_outbox_across_restarts() {
    let app = TestApp::set_up("alice", support::UNREACHABLE);
    let sent = app
        .invoke(
            "send_message",
            json!({"peerId": "bob", "text": "written offline"}),
        )
        .unwrap();
    assert_eq!(sent["status"], json!("pending"));
    assert_eq!(sent["outgoing"], json!(true));
    assert_eq!(sent["peerId"], json!("bob"));

    let err = app
        .invoke("send_message", json!({"peerId": "bob", "text": "   "}))
        .unwrap_err();
    assert_eq!(err["kind"], json!("invalidInput"));

    let dir = app.into_dir();
    let again = TestApp::in_dir(dir);
    let page = again
        .invoke(
            "load_messages",
            json!({"peerId": "bob", "before": null, "limit": 50}),
        )
        .unwrap();
    let messages = page["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0]["body"], json!("written offline"));
    assert_eq!(messages[0]["status"], json!("pending"));
    let boot = again.invoke("bootstrap", json!({})).unwrap();
    assert_eq!(boot["peers"][0]["id"], json!("bob"));
    assert_eq!(boot["peers"][0]["lastMessage"], json!("written offline"));
}

#[test]
fn history_pages_backwards() {
    let app = TestApp::set_up("alice", support::UNREACHABLE);
    for i in 0..120 {
        app.invoke(
            "send_message",
            json!({"peerId": "bob", "text": format!("m{i}")}),
        )
        .unwrap();
    }
    let first = app
        .invoke("load_messages", json!({"peerId": "bob", "limit": 50}))
        .unwrap();
    assert_eq!(first["hasMore"], json!(true));
    let msgs = first["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 50);
    assert_eq!(msgs[49]["body"], json!("m119"));
    let oldest = msgs[0]["seq"].as_i64().unwrap();
    let second = app
        .invoke(
            "load_messages",
            json!({"peerId": "bob", "before": oldest, "limit": 100}),
        )
        .unwrap();
    assert_eq!(second["hasMore"], json!(false));
    let msgs = second["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 70);
    assert_eq!(msgs[0]["body"], json!("m0"));

    // And forward again from the oldest.
    let m0 = msgs[0]["seq"].as_i64().unwrap();
    let forward = app
        .invoke(
            "load_messages",
            json!({"peerId": "bob", "after": m0, "limit": 100}),
        )
        .unwrap();
    assert_eq!(forward["hasMore"], json!(true));
    let msgs = forward["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 100);
    assert_eq!(msgs[0]["body"], json!("m1"));
    let last = msgs[99]["seq"].as_i64().unwrap();
    let rest = app
        .invoke(
            "load_messages",
            json!({"peerId": "bob", "after": last, "limit": 100}),
        )
        .unwrap();
    assert_eq!(rest["hasMore"], json!(false));
    assert_eq!(rest["messages"].as_array().unwrap().len(), 19);
}

#[test]
fn settings_change_and_persist() {
    let app = TestApp::set_up("alice", support::UNREACHABLE);
    let boot = app
        .invoke(
            "update_settings",
            json!({"patch": {"notifications": false, "closeToTray": false, "startMinimized": true}}),
        )
        .unwrap();
    assert_eq!(boot["settings"]["notifications"], json!(false));
    let err = app
        .invoke(
            "update_settings",
            json!({"patch": {"serverUrl": "nonsense"}}),
        )
        .unwrap_err();
    assert_eq!(err["kind"], json!("invalidInput"));
    let err = app
        .invoke("update_settings", json!({"patch": {"hostPort": 0}}))
        .unwrap_err();
    assert_eq!(err["kind"], json!("invalidInput"));

    let again = TestApp::in_dir(app.into_dir());
    let boot = again.invoke("bootstrap", json!({})).unwrap();
    assert_eq!(boot["settings"]["notifications"], json!(false));
    assert_eq!(boot["settings"]["closeToTray"], json!(false));
    assert_eq!(boot["settings"]["startMinimized"], json!(true));
}

#[test]
fn unknown_questions_and_unverifiable_contacts_are_refused_readably() {
    let app = TestApp::set_up("alice", support::UNREACHABLE);
    let err = app
        .invoke(
            "answer_question",
            json!({"questionId": "00000000-0000-4000-8000-000000000000", "response": "hi"}),
        )
        .unwrap_err();
    assert_eq!(err["kind"], json!("unknownQuestion"));
    let err = app
        .invoke("set_verified", json!({"peerId": "bob", "verified": true}))
        .unwrap_err();
    assert_eq!(err["kind"], json!("invalidInput"));
    assert!(err["message"].as_str().unwrap().contains("bob"));
}
