//! Two instances of the app, alice's and bob's (two tauri-driver sessions, two data
//! directories, one server): alice types and bob's app shows "alice is typing…"; bob reads and
//! alice's message shows as read; with read receipts off in bob's app, bob's reading sends none
//! and alice's reading is not shown to him, while typing still goes both ways. The chat moves
//! to MLS by itself (both headers show the tag). Screenshots of
//! both windows; each checked with axe-core.

use fantoccini::Client;

use crate::support::*;

/// The status of the last outgoing message whose text contains `text`, once there is one.
async fn status_of(client: &Client, text: &str) -> String {
    let script = format!(
        "const li = Array.from(document.querySelectorAll('li.msg.out')) \
           .find(l => l.querySelector('.text')?.textContent.includes({})); \
         return li ? li.dataset.status : false;",
        serde_json::to_string(text).unwrap()
    );
    until_js(client, &format!("our message {text:?}"), &script)
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Waits until the last outgoing message containing `text` shows `status`.
async fn until_status(client: &Client, text: &str, status: &str) {
    let script = format!(
        "const li = Array.from(document.querySelectorAll('li.msg.out')) \
           .find(l => l.querySelector('.text')?.textContent.includes({})); \
         return li?.dataset.status === {};",
        serde_json::to_string(text).unwrap(),
        serde_json::to_string(status).unwrap()
    );
    until_js(client, &format!("{text:?} {status}"), &script).await;
}

/// Waits until an incoming message containing `text` is shown.
async fn until_incoming(client: &Client, text: &str) {
    let script = format!(
        "return Array.from(document.querySelectorAll('li.msg.in')) \
           .some(l => l.querySelector('.text')?.textContent.includes({}));",
        serde_json::to_string(text).unwrap()
    );
    until_js(client, &format!("the message {text:?}"), &script).await;
}

async fn until_typing(client: &Client, who: &str) {
    let script = format!(
        "return document.getElementById('typing-indicator').textContent === {};",
        serde_json::to_string(&format!("{who} is typing…")).unwrap()
    );
    until_js(client, &format!("{who} is typing"), &script).await;
}

/// Sends `text` from the composer (typed, then Enter).
async fn send(client: &Client, text: &str) {
    type_into(client, "#composer-input", text).await;
    type_into(client, "#composer-input", "\u{E007}").await;
}

/// Ctrl+Shift+R in the composer: the conversation is marked read.
async fn mark_read(client: &Client) {
    press(client, "#composer-input", "\u{E009}\u{E008}r").await;
}

async fn online(client: &Client, peer: &str) {
    let script = format!(
        "return !!document.querySelector('li.peer[data-peer-id={}][data-online=\"true\"]');",
        serde_json::to_string(peer).unwrap()
    );
    until_js(client, &format!("{peer} online"), &script).await;
}

#[tokio::test]
#[ignore = "needs Xvfb, two tauri-drivers and the app binary: run scripts/e2e-desktop.sh"]
async fn two_apps_read_receipts_and_typing_and_the_setting_stops_both_directions() {
    let dir = screenshot_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let mut shots = Shots { dir, n: 90 };
    let server = lattice_server::spawn(lattice_server::Config::for_tests())
        .await
        .expect("server");
    let url = server.url();

    let (alice_data, bob_data) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (alice, alice_guard) =
        start_app_on(&env("TAURI_DRIVER_URL"), alice_data.path(), "app-alice.log").await;
    first_run_as(&alice, "alice", &url).await;
    let (bob, bob_guard) =
        start_app_on(&env("TAURI_DRIVER_URL_2"), bob_data.path(), "app-bob.log").await;
    first_run_as(&bob, "bob", &url).await;
    online(&alice, "bob").await;
    online(&bob, "alice").await;
    open_conversation(&alice, "bob").await;
    open_conversation(&bob, "alice").await;

    // Alice types: bob's app says so. She sends; bob's app shows it.
    type_into(&alice, "#composer-input", "Are you coming tonight?").await;
    until_typing(&bob, "alice").await;
    shots.take(&bob, "two-apps-bob-sees-alice-typing").await;
    assert_accessible(&bob, "bob's window, alice typing").await;
    type_into(&alice, "#composer-input", "\u{E007}").await;
    until_incoming(&bob, "Are you coming tonight?").await;

    // Bob reads it: alice's app shows it read.
    mark_read(&bob).await;
    until_status(&alice, "Are you coming tonight?", "read").await;
    // Two desktops: the chat moved to MLS by itself, and both headers say so, bob's too
    // although he has sent no message yet (whatever set the conversation up, a message, his
    // receipt or a typing notice, the library says so and his app redraws the mark).
    until_mls_header(&alice, "alice").await;
    until_mls_header(&bob, "bob").await;
    shots.take(&alice, "two-apps-alice-sees-read").await;
    assert_accessible(&alice, "alice's window, her message read").await;

    // And the other way: bob types, alice sees it; alice reads bob's answer, bob sees it read.
    type_into(&bob, "#composer-input", "Yes, at eight").await;
    until_typing(&alice, "bob").await;
    type_into(&bob, "#composer-input", "\u{E007}").await;
    until_incoming(&alice, "Yes, at eight").await;
    mark_read(&alice).await;
    until_status(&bob, "Yes, at eight", "read").await;
    shots.take(&bob, "two-apps-bob-sees-read").await;

    // Bob turns read receipts off in his settings.
    click(&bob, "#open-settings").await;
    until_js(
        &bob,
        "bob's settings",
        "return document.getElementById('settings-dialog').open;",
    )
    .await;
    let on = bob
        .execute(
            "return document.getElementById('settings-read-receipts').checked;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(on, serde_json::Value::Bool(true), "on by default");
    click(&bob, "#settings-read-receipts + .switch").await;
    click(&bob, "#settings-save").await;
    until_js(
        &bob,
        "the settings saved",
        "return !document.getElementById('settings-dialog').open;",
    )
    .await;
    open_conversation(&bob, "alice").await;

    // Bob's reading no longer tells alice: bob reads alice's next message, then answers; the
    // answer travels after any receipt bob would have sent, so once alice shows it her message
    // would already be read.
    send(&alice, "Bring the tickets").await;
    until_incoming(&bob, "Bring the tickets").await;
    mark_read(&bob).await;
    send(&bob, "Will do").await;
    until_incoming(&alice, "Will do").await;
    assert_ne!(
        status_of(&alice, "Bring the tickets").await,
        "read",
        "bob's app sent a read receipt with receipts off"
    );
    // And alice's reading is not shown to bob: alice reads his answer and writes again; once
    // bob shows that, his answer would already be read.
    mark_read(&alice).await;
    send(&alice, "Thanks").await;
    until_incoming(&bob, "Thanks").await;
    assert_ne!(
        status_of(&bob, "Will do").await,
        "read",
        "bob's app shows a read receipt with receipts off"
    );
    // Typing still goes both ways (a separate setting).
    type_into(&alice, "#composer-input", "one more thing").await;
    until_typing(&bob, "alice").await;
    shots.take(&bob, "two-apps-receipts-off").await;
    shots.take(&alice, "two-apps-receipts-off-alice").await;
    assert_accessible(&bob, "bob's window with read receipts off").await;

    alice.close().await.unwrap();
    alice_guard.disarm();
    bob.close().await.unwrap();
    bob_guard.disarm();
    server.shutdown().await;
}

/// Waits until `who`'s conversation header shows the MLS mark.
async fn until_mls_header(client: &Client, who: &str) {
    until_js(
        client,
        &format!("{who}'s header shows MLS"),
        "const t = document.getElementById('conv-envelope'); \
         return t !== null && t.textContent.includes('MLS');",
    )
    .await;
}
