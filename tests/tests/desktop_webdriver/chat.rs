//! Alice chats with bob, answers the server's questions and keeps her history across a restart.

use fantoccini::Locator;
use lattice_crypto::Identity;
use lattice_peer::{MessagingPeer, PeerConfig, PeerEvent};
use lattice_protocol::ClientId;
use serde_json::json;

use crate::support::*;

#[tokio::test]
#[ignore = "needs Xvfb, tauri-driver and the app binary: run scripts/e2e-desktop.sh"]
async fn alice_chats_with_bob_answers_the_server_and_keeps_her_history() {
    let shots_dir = screenshot_dir();
    std::fs::create_dir_all(&shots_dir).unwrap();
    let mut shots = Shots {
        dir: shots_dir,
        n: 0,
    };

    // The server, with the admin API on.
    let mut config = lattice_server::Config::for_tests();
    config.admin_token = Some(ADMIN_TOKEN.into());
    let server = lattice_server::spawn(config).await.expect("server");
    let url = server.url();
    let admin_url = server.admin_url();

    // Bob, headless.
    let bob_config = PeerConfig::new(
        url.clone(),
        ClientId::new("bob").unwrap(),
        Identity::generate(&mut rand_core::OsRng),
    );
    let bob = MessagingPeer::new(bob_config).unwrap();
    let mut bob_events = bob.events();
    bob.connect().await.expect("bob connects");

    // Alice: the app, on an empty data directory.
    let data = tempfile::tempdir().unwrap();
    let (client, guard) = start_app(data.path()).await;

    // First run: name, "Connect to a server", URL.
    client
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Css("#setup-name"))
        .await
        .expect("the welcome view");
    shots.take(&client, "first-run").await;
    type_into(&client, "#setup-name", "alice").await;
    click(
        &client,
        "input[name=serverMode][value=connect] + .choice-icon",
    )
    .await;
    until_js(
        &client,
        "the URL field",
        "return !document.getElementById('setup-url-field').hidden;",
    )
    .await;
    type_into(&client, "#setup-url", &url).await;
    shots.take(&client, "first-run-filled").await;
    click(&client, "#setup-submit").await;
    until_js(
        &client,
        "the identity's fingerprint",
        "return !document.getElementById('setup-done').hidden \
         && document.querySelectorAll('#setup-fingerprint span').length === 12;",
    )
    .await;
    shots.take(&client, "identity-created").await;
    assert_accessible(&client, "the new identity's fingerprint").await;
    click(&client, "#setup-start").await;

    // The peer list shows bob, online.
    until_js(
        &client,
        "bob online in the peer list",
        "return !!document.querySelector('li.peer[data-peer-id=\"bob\"][data-online=\"true\"]');",
    )
    .await;
    until_js(
        &client,
        "the connected indicator",
        "return document.getElementById('status-bar').dataset.state === 'connected';",
    )
    .await;
    shots.take(&client, "peer-list").await;

    // Alice writes to bob; bob receives the decrypted text.
    open_conversation(&client, "bob").await;
    until_js(
        &client,
        "the conversation with bob",
        "return !document.getElementById('conversation').hidden \
         && document.getElementById('conv-name').textContent.startsWith('bob');",
    )
    .await;
    let hello = "Hello bob! This is alice, end-to-end encrypted.";
    type_into(&client, "#composer-input", hello).await;
    type_into(&client, "#composer-input", "\u{E007}").await; // Enter sends
    let received = tokio::time::timeout(WAIT, async {
        loop {
            match bob_events.next().await {
                Some(PeerEvent::Message(m)) => break m,
                Some(_) => {}
                None => panic!("bob's events ended"),
            }
        }
    })
    .await
    .expect("bob receives alice's message");
    assert_eq!(received.text, hello);
    assert_eq!(received.from.as_str(), "alice");
    assert!(received.verified, "alice's message is signed");
    until_js(
        &client,
        "the message marked delivered",
        "const m = document.querySelector('li.msg.out'); \
         return m && m.dataset.status === 'delivered';",
    )
    .await;
    shots.take(&client, "sent-and-delivered").await;
    assert_accessible(&client, "a conversation with bob").await;

    // Bob replies; alice's conversation shows it. The peer list's row for bob is updated in
    // place (a click that straddles the update still lands): remember the element first.
    client
        .execute(
            "window.__bobRow = document.querySelector('li.peer[data-peer-id=\"bob\"]'); return true;",
            vec![],
        )
        .await
        .expect("remember bob's row");
    let reply = "Hi alice — got it. Quantum-safe hello back!";
    bob.send_message(&ClientId::new("alice").unwrap(), reply)
        .await
        .expect("bob replies");
    let script = format!(
        "return Array.from(document.querySelectorAll('li.msg.in .bubble')) \
           .some(b => b.textContent.includes({}));",
        serde_json::to_string(reply).unwrap()
    );
    until_js(&client, "bob's reply in the conversation", &script).await;
    let script = format!(
        "const row = document.querySelector('li.peer[data-peer-id=\"bob\"]'); \
         return row === window.__bobRow && row.textContent.includes({});",
        serde_json::to_string(&reply[..8]).unwrap()
    );
    until_js(
        &client,
        "bob's row, the same element, previews the reply",
        &script,
    )
    .await;
    shots.take(&client, "reply-received").await;

    // Three rounds of questions through the admin API; the dialog shows each, the answers
    // reach the server.
    let http = reqwest::Client::new();
    let round1 = json!({"text": "Which name should the release get?", "kind": "text"});
    let pending = tokio::spawn(ask(http.clone(), admin_url.clone(), round1, None));
    dialog_shows(&client, "Which name should the release get?").await;
    shots.take(&client, "question-round-1").await;
    assert_accessible(&client, "a server question (text)").await;
    type_into(&client, "#question-input", "Aurora").await;
    click(&client, "#question-send").await;
    let a1 = pending.await.unwrap();
    assert_eq!(a1["response"], json!("Aurora"));
    let conversation = a1["conversationId"]
        .as_str()
        .expect("a conversation id")
        .to_owned();

    let round2 = json!({"text": "Pick a colour for Aurora", "kind": "choice",
                        "options": ["Blue", "Green", "Violet"]});
    let pending = tokio::spawn(ask(
        http.clone(),
        admin_url.clone(),
        round2,
        Some(conversation.clone()),
    ));
    dialog_shows(&client, "Pick a colour for Aurora").await;
    until_js(
        &client,
        "round 2 and the transcript of round 1",
        "return document.getElementById('question-round').textContent === 'Round 2' \
         && document.querySelectorAll('#question-transcript li').length === 1;",
    )
    .await;
    shots.take(&client, "question-round-2").await;
    assert_accessible(&client, "a server question (choice)").await;
    click(&client, "#question-answer button[data-answer=\"Violet\"]").await;
    let a2 = pending.await.unwrap();
    assert_eq!(a2["response"], json!("Violet"));
    assert_eq!(a2["round"], json!(2));

    let round3 = json!({"text": "Ship Aurora in violet today?", "kind": "confirm"});
    let pending = tokio::spawn(ask(
        http.clone(),
        admin_url.clone(),
        round3,
        Some(conversation.clone()),
    ));
    dialog_shows(&client, "Ship Aurora in violet today?").await;
    until_js(
        &client,
        "round 3",
        "return document.getElementById('question-round').textContent === 'Round 3';",
    )
    .await;
    shots.take(&client, "question-round-3").await;
    assert_accessible(&client, "a server question (confirm)").await;
    click(&client, "#question-answer button[data-answer=\"yes\"]").await;
    let a3 = pending.await.unwrap();
    assert_eq!(a3["response"], json!(true));
    assert_eq!(a3["round"], json!(3));
    assert_eq!(a3["conversationId"], json!(conversation));
    until_js(
        &client,
        "the dialog to close",
        "return !document.getElementById('question-dialog').open;",
    )
    .await;

    // Restart the app: the history is there.
    client.close().await.expect("close the first session");
    guard.disarm();
    let (client, guard) = start_app(data.path()).await;
    until_js(
        &client,
        "bob in the peer list after a restart",
        "return !!document.querySelector('li.peer[data-peer-id=\"bob\"]');",
    )
    .await;
    open_conversation(&client, "bob").await;
    let script = format!(
        "const out = Array.from(document.querySelectorAll('li.msg.out .bubble')) \
           .some(b => b.textContent.includes({})); \
         const inc = Array.from(document.querySelectorAll('li.msg.in .bubble')) \
           .some(b => b.textContent.includes({})); \
         return out && inc;",
        serde_json::to_string(hello).unwrap(),
        serde_json::to_string(reply).unwrap()
    );
    until_js(&client, "both messages after the restart", &script).await;
    shots.take(&client, "history-after-restart").await;

    // Settings, for the record.
    click(&client, "#open-settings").await;
    until_js(
        &client,
        "the settings dialog",
        "return document.getElementById('settings-dialog').open;",
    )
    .await;
    shots.take(&client, "settings").await;
    assert_accessible(&client, "the settings dialog").await;

    client.close().await.expect("close the second session");
    guard.disarm();
    bob.disconnect().await;
    server.shutdown().await;
}
