//! Search, drafts and links through the real command handlers on Tauri's mock runtime, invoked
//! as the page invokes them: camelCase arguments, `{kind, message}` errors.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::{json, Value};
use support::TestApp;

fn send(app: &TestApp, peer: &str, text: &str) -> Value {
    app.invoke("send_message", json!({"peerId": peer, "text": text}))
        .unwrap()
}

fn search(app: &TestApp, query: &str, peer: Option<&str>) -> Result<Value, Value> {
    app.invoke(
        "search_messages",
        json!({"query": query, "peerId": peer, "limit": null}),
    )
}

#[test]
fn search_finds_messages_in_one_or_all_conversations_with_marked_matches() {
    let app = TestApp::set_up("alice", support::UNREACHABLE);
    let first = send(&app, "bob", "Lunch at the Turkish place?");
    send(&app, "carol", "The turkish delight was great");
    send(&app, "bob", "something else entirely");

    let all = search(&app, "turk", None).unwrap();
    let hits = all["hits"].as_array().unwrap();
    assert_eq!(hits.len(), 2);
    assert_eq!(hits[0]["peerId"], json!("carol"), "newest first");
    assert_eq!(hits[1]["id"], first["id"]);
    assert_eq!(hits[1]["seq"], first["seq"]);
    assert_eq!(all["hasMore"], json!(false));
    let marked: Vec<&str> = hits[1]["snippet"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["hit"] == json!(true))
        .map(|p| p["text"].as_str().unwrap())
        .collect();
    assert_eq!(marked, ["Turkish"]);

    let bob = search(&app, "turkish", Some("bob")).unwrap();
    assert_eq!(bob["hits"].as_array().unwrap().len(), 1);
    assert!(search(&app, "zebra", None).unwrap()["hits"]
        .as_array()
        .unwrap()
        .is_empty());
}

#[test]
fn bad_searches_get_readable_errors_and_query_syntax_is_just_text() {
    let app = TestApp::set_up("alice", support::UNREACHABLE);
    send(&app, "bob", "a NEAR(miss) \"quoted\" OR not");
    for query in ["", "  ", "?!", &"x".repeat(300)] {
        let err = search(&app, query, None).unwrap_err();
        assert_eq!(err["kind"], json!("invalidInput"), "{query:?}");
        assert!(err["message"].as_str().unwrap().ends_with('.'));
    }
    let err = search(&app, "hi", Some("two words")).unwrap_err();
    assert_eq!(err["kind"], json!("invalidInput"));
    for query in [
        "NEAR(miss",
        "\"quoted",
        "OR",
        "body:quoted",
        "miss)*",
        "\u{0}",
    ] {
        match search(&app, query, None) {
            Ok(found) => assert!(found["hits"].is_array()),
            Err(err) => assert_eq!(err["kind"], json!("invalidInput"), "{query:?}"),
        }
    }
    assert_eq!(
        search(&app, "NEAR(miss", None).unwrap()["hits"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn drafts_are_kept_per_conversation_across_restarts() {
    let app = TestApp::set_up("alice", support::UNREACHABLE);
    send(&app, "bob", "a first message makes bob a contact");
    app.invoke("save_draft", json!({"peerId": "bob", "text": "half a tho"}))
        .unwrap();
    app.invoke(
        "save_draft",
        json!({"peerId": "carol", "text": "for carol"}),
    )
    .unwrap();
    let err = app
        .invoke(
            "save_draft",
            json!({"peerId": "bob", "text": "x".repeat(65 * 1024)}),
        )
        .unwrap_err();
    assert_eq!(err["kind"], json!("invalidInput"));

    let boot = app.invoke("bootstrap", json!({})).unwrap();
    let bob = boot["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == json!("bob"))
        .cloned()
        .expect("bob in the peer list");
    assert_eq!(bob["draft"], json!("half a tho"));

    let again = TestApp::in_dir(app.into_dir());
    assert_eq!(
        again
            .invoke("load_draft", json!({"peerId": "bob"}))
            .unwrap(),
        json!("half a tho"),
        "the refused draft did not replace the kept one"
    );
    assert_eq!(
        again
            .invoke("load_draft", json!({"peerId": "carol"}))
            .unwrap(),
        json!("for carol")
    );
    again
        .invoke("save_draft", json!({"peerId": "bob", "text": ""}))
        .unwrap();
    assert_eq!(
        again
            .invoke("load_draft", json!({"peerId": "bob"}))
            .unwrap(),
        json!(null)
    );
}

#[test]
fn only_web_links_are_opened() {
    let app = TestApp::set_up("alice", support::UNREACHABLE);
    for url in [
        "javascript:alert(1)",
        "file:///etc/passwd",
        "JAVASCRIPT://x",
        "http://",
        "https://@evil",
        "https://exa mple.com",
        "https://example.com/\u{0}",
        "ftp://example.com",
        "/usr/bin/xterm",
    ] {
        let err = app.invoke("open_link", json!({"url": url})).unwrap_err();
        assert_eq!(err["kind"], json!("invalidInput"), "{url:?}");
    }
    assert!(lattice_desktop::commands::validate_link("https://example.com/a?b#c").is_ok());
    assert!(lattice_desktop::commands::validate_link("HTTP://example.com").is_ok());
}
