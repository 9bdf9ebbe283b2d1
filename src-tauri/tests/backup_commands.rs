//! Backup, restore and conversation export through the real command handlers on Tauri's mock
//! runtime, invoked as the page invokes them, with the real Argon2id parameters.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::{json, Value};
use support::TestApp;

const PASS: &str = "a long enough passphrase";

fn bodies(app: &TestApp, peer: &str) -> Vec<Value> {
    let page = app
        .invoke(
            "load_messages",
            json!({"peerId": peer, "before": null, "after": null, "limit": 500}),
        )
        .unwrap();
    page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"].clone())
        .collect()
}

#[test]
fn a_backup_made_in_the_app_restores_in_a_fresh_app_and_a_wrong_passphrase_changes_nothing() {
    let alice = TestApp::set_up("alice", support::UNREACHABLE);
    for text in ["first", "second <b>bold</b>", "שלום"] {
        alice
            .invoke("send_message", json!({"peerId": "bob", "text": text}))
            .unwrap();
    }
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("alice.lattice-backup");
    let file = file.to_str().unwrap();

    let short = alice
        .invoke(
            "export_backup",
            json!({"path": file, "passphrase": "too short"}),
        )
        .unwrap_err();
    assert_eq!(short["kind"], "invalidInput");
    assert!(short["message"].as_str().unwrap().contains("at least 12"));
    let relative = alice
        .invoke(
            "export_backup",
            json!({"path": "backup.file", "passphrase": PASS}),
        )
        .unwrap_err();
    assert!(relative["message"].as_str().unwrap().contains("full path"));

    let summary = alice
        .invoke("export_backup", json!({"path": file, "passphrase": PASS}))
        .unwrap();
    assert_eq!(summary["messages"], 3);
    assert_eq!(summary["contacts"], 1);
    assert_eq!(summary["path"], file);
    // Never over an existing file.
    let again = alice
        .invoke("export_backup", json!({"path": file, "passphrase": PASS}))
        .unwrap_err();
    assert_eq!(again["kind"], "invalidInput");

    // The profile in use refuses it.
    let in_use = alice
        .invoke("restore_backup", json!({"path": file, "passphrase": PASS}))
        .unwrap_err();
    assert!(in_use["message"]
        .as_str()
        .unwrap()
        .contains("fresh profile"));

    let fresh = TestApp::new();
    let boot = fresh.invoke("bootstrap", json!({})).unwrap();
    assert_eq!(boot["needsSetup"], true);
    let wrong = fresh
        .invoke(
            "restore_backup",
            json!({"path": file, "passphrase": "not the passphrase"}),
        )
        .unwrap_err();
    assert_eq!(wrong["kind"], "invalidInput");
    assert!(wrong["message"]
        .as_str()
        .unwrap()
        .contains("Wrong passphrase"));
    let still = fresh.invoke("bootstrap", json!({})).unwrap();
    assert_eq!(still["needsSetup"], true);
    assert_eq!(still["peers"], json!([]));
    assert!(!fresh.dir().join("identity.key").exists());

    let restored = fresh
        .invoke("restore_backup", json!({"path": file, "passphrase": PASS}))
        .unwrap();
    assert_eq!(restored["needsSetup"], false);
    let before = alice.invoke("bootstrap", json!({})).unwrap();
    assert_eq!(
        restored["me"], before["me"],
        "same name and same safety number"
    );
    assert_eq!(restored["settings"], before["settings"]);
    assert_eq!(bodies(&fresh, "bob"), bodies(&alice, "bob"));
}

#[test]
fn a_conversation_exports_as_html_through_the_command() {
    let alice = TestApp::set_up("alice", support::UNREACHABLE);
    alice
        .invoke(
            "send_message",
            json!({"peerId": "bob", "text": "<img src=x onerror=alert(1)>"}),
        )
        .unwrap();
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("bob.html");
    let summary = alice
        .invoke(
            "export_conversation",
            json!({"peerId": "bob", "path": file.to_str().unwrap(), "format": "html"}),
        )
        .unwrap();
    assert_eq!(summary["messages"], 1);
    let html = std::fs::read_to_string(&file).unwrap();
    assert!(html.contains("&lt;img src=x onerror=alert(1)&gt;"));
    assert!(!html.contains("<img"));
    let bad = alice
        .invoke(
            "export_conversation",
            json!({"peerId": "bob", "path": file.to_str().unwrap(), "format": "pdf"}),
        )
        .unwrap_err();
    // Refused by the argument parser, before any file is touched.
    assert!(bad.to_string().contains("pdf"), "{bad}");
}
