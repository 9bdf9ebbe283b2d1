//! Backup and restore through the app: alice talks with bob, backs up from the settings, and a
//! second app on an empty data directory restores the file from the first-run screen — a wrong
//! passphrase first (a clear error, still the first-run screen), then the right one — and shows
//! the same conversation, the same safety numbers (hers and bob's). A conversation exports as
//! HTML. axe-core checks the backup, restore and export dialogs.

use serde_json::{json, Value};

use crate::support::*;

const PASSPHRASE: &str = "tremble quiet orange harbour";

async fn text_of(client: &fantoccini::Client, id: &str) -> String {
    client
        .execute(
            &format!("return document.getElementById({}).textContent;", json!(id)),
            vec![],
        )
        .await
        .expect("read text")
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

async fn fingerprints(client: &fantoccini::Client) -> (String, String) {
    click(client, "#conv-verify").await;
    until_js(
        client,
        "the safety number dialog",
        "return document.getElementById('verify-dialog').open \
           && document.getElementById('verify-theirs').textContent.length > 0;",
    )
    .await;
    let pair = (
        text_of(client, "verify-mine").await,
        text_of(client, "verify-theirs").await,
    );
    click(client, "#verify-close").await;
    pair
}

#[tokio::test]
#[ignore = "needs Xvfb, tauri-driver and the app binary: run scripts/e2e-desktop.sh"]
async fn a_backup_restores_on_a_fresh_profile_with_the_same_conversation_and_safety_numbers() {
    let mut shots = Shots {
        dir: screenshot_dir(),
        n: 90,
    };
    let server = lattice_server::spawn(lattice_server::Config::for_tests())
        .await
        .expect("server");
    let url = server.url();
    let bob = connect_bob(&url).await;
    let alice_id = lattice_protocol::ClientId::new("alice").unwrap();
    let out = tempfile::tempdir().unwrap();
    let backup_file = out.path().join("alice.lattice-backup");
    let export_file = out.path().join("bob.html");

    // The first computer: a conversation with bob.
    let first = tempfile::tempdir().unwrap();
    let (client, guard) = start_app(first.path()).await;
    first_run_as(&client, "alice", &url).await;
    until_js(
        &client,
        "bob in the list",
        "return !!document.querySelector('li.peer[data-peer-id=\"bob\"]');",
    )
    .await;
    open_conversation(&client, "bob").await;
    type_into(&client, "#composer-input", "the plan is on").await;
    type_into(&client, "#composer-input", "\u{E007}").await; // Enter sends
    bob.send_message(&alice_id, "see you at נמל at nine")
        .await
        .expect("bob sends");
    // The texts only: the times beside them are local and the same on both computers, but
    // the text is what must come back.
    let shown = "return Array.from(document.querySelectorAll('li.msg .bubble .text')) \
                   .map(b => b.textContent).join('|');";
    until_js(
        &client,
        "both messages",
        "const t = Array.from(document.querySelectorAll('li.msg .bubble')).map(b => b.textContent).join('|'); \
         return t.includes('the plan is on') && t.includes('see you at');",
    )
    .await;
    let history_before = client.execute(shown, vec![]).await.unwrap();
    let (mine_before, bobs_before) = fingerprints(&client).await;
    assert!(!mine_before.is_empty() && !bobs_before.is_empty());

    // Export the conversation as HTML.
    click(&client, "#conv-export").await;
    until_js(
        &client,
        "the export dialog",
        "return document.getElementById('backup-dialog').open \
           && document.getElementById('backup-path').value.length > 0;",
    )
    .await;
    assert_accessible(&client, "the conversation export dialog").await;
    fill(&client, "#backup-path", export_file.to_str().unwrap()).await;
    click(&client, "#backup-submit").await;
    until_js(
        &client,
        "the export to finish",
        "return document.getElementById('backup-status').textContent.startsWith('Exported 2 messages');",
    )
    .await;
    shots.take(&client, "conversation-exported").await;
    click(&client, "#backup-cancel").await;
    let html = std::fs::read_to_string(&export_file).expect("the exported page");
    assert!(html.contains("the plan is on") && html.contains("dir=\"auto\""));

    // Back up from the settings: the passphrases must match.
    click(&client, "#open-settings").await;
    click(&client, "#settings-backup").await;
    until_js(
        &client,
        "the backup dialog",
        "return document.getElementById('backup-dialog').open \
           && document.getElementById('backup-path').value.endsWith('.lattice-backup');",
    )
    .await;
    fill(&client, "#backup-path", backup_file.to_str().unwrap()).await;
    type_into(&client, "#backup-passphrase", PASSPHRASE).await;
    type_into(&client, "#backup-confirm", "something else entirely").await;
    click(&client, "#backup-submit").await;
    until_js(
        &client,
        "the mismatch error",
        "return !document.getElementById('backup-error').hidden \
           && document.getElementById('backup-error').textContent.includes('differ');",
    )
    .await;
    shots.take(&client, "backup-passphrases-differ").await;
    assert_accessible(&client, "the backup dialog with an error").await;
    fill(&client, "#backup-confirm", PASSPHRASE).await;
    click(&client, "#backup-submit").await;
    until_js(
        &client,
        "the backup to finish",
        "return document.getElementById('backup-status').textContent.startsWith('Backed up 2 messages');",
    )
    .await;
    let cleared = client
        .execute(
            "return document.getElementById('backup-passphrase').value === '' \
               && document.getElementById('backup-confirm').value === '';",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        cleared,
        Value::Bool(true),
        "the passphrase fields are emptied"
    );
    shots.take(&client, "backup-done").await;
    assert!(backup_file.exists());
    client.close().await.expect("close the first app");
    guard.disarm();

    // The second computer: an empty data directory, restore from the first-run screen.
    let second = tempfile::tempdir().unwrap();
    let (client, guard) = start_app(second.path()).await;
    assert_accessible(&client, "the first-run screen with restore").await;
    click(&client, "#setup-restore").await;
    until_js(
        &client,
        "the restore dialog",
        "return document.getElementById('backup-dialog').open;",
    )
    .await;
    fill(&client, "#backup-path", backup_file.to_str().unwrap()).await;
    type_into(&client, "#backup-passphrase", "tremble quiet orange harbor").await;
    click(&client, "#backup-submit").await;
    until_js(
        &client,
        "the wrong passphrase error",
        "return !document.getElementById('backup-error').hidden \
           && document.getElementById('backup-error').textContent.includes('Wrong passphrase');",
    )
    .await;
    shots.take(&client, "restore-wrong-passphrase").await;
    assert_accessible(&client, "the restore dialog with an error").await;
    assert!(
        !second.path().join("identity.key").exists(),
        "a wrong passphrase changes nothing"
    );
    type_into(&client, "#backup-passphrase", PASSPHRASE).await;
    click(&client, "#backup-submit").await;
    until_js(
        &client,
        "the restored app",
        "return !document.getElementById('app').hidden \
           && !!document.querySelector('li.peer[data-peer-id=\"bob\"]');",
    )
    .await;
    open_conversation(&client, "bob").await;
    until_js(
        &client,
        "the restored history",
        "return document.querySelectorAll('li.msg .bubble').length >= 2;",
    )
    .await;
    let history_after = client.execute(shown, vec![]).await.unwrap();
    assert_eq!(history_after, history_before);
    let (mine_after, bobs_after) = fingerprints(&client).await;
    assert_eq!(mine_after, mine_before, "the same identity");
    assert_eq!(bobs_after, bobs_before, "the same pinned key for bob");
    shots.take(&client, "restored-conversation").await;
    client.close().await.expect("close the second app");
    guard.disarm();
    server.shutdown().await;
}
