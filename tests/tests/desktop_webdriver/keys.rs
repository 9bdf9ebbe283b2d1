//! A changed identity key: a loud warning until the person compares and accepts the new one.

use lattice_protocol::ClientId;
use serde_json::json;

use crate::support::*;

/// A contact's identity key changes (the server forgot bob — an in-memory server restarted —
/// and someone registers "bob" with another key): the conversation shows the loud warning,
/// and accepting the new key clears it.
#[tokio::test]
#[ignore = "needs Xvfb, tauri-driver and the app binary: run scripts/e2e-desktop.sh"]
async fn a_changed_identity_key_is_a_loud_warning_until_accepted() {
    let mut shots = Shots {
        dir: screenshot_dir(),
        n: 70,
    };
    let server = lattice_server::spawn(lattice_server::Config::for_tests())
        .await
        .expect("server");
    let port = server.local_addr().port();
    let url = server.url();
    let bob = connect_bob(&url).await;

    let data = tempfile::tempdir().unwrap();
    let (client, guard) = start_app(data.path()).await;
    first_run_as(&client, "alice", &url).await;
    until_js(
        &client,
        "bob in the list",
        "return !!document.querySelector('li.peer[data-peer-id=\"bob\"][data-online=\"true\"]');",
    )
    .await;
    open_conversation(&client, "bob").await;
    until_js(
        &client,
        "bob's key pinned",
        "return document.getElementById('conv-sub').textContent.includes('Not yet verified');",
    )
    .await;

    // The server restarts empty on the same port; a different "bob" registers.
    bob.disconnect().await;
    server.shutdown().await;
    until_js(
        &client,
        "the reconnecting indicator",
        "return document.getElementById('status-bar').dataset.state === 'reconnecting';",
    )
    .await;
    shots.take(&client, "reconnecting").await;
    let server = lattice_server::spawn(lattice_server::Config {
        port,
        ..lattice_server::Config::for_tests()
    })
    .await
    .expect("server again");
    let impostor = connect_bob(&url).await;
    until_js(
        &client,
        "alice reconnected",
        "return document.getElementById('status-bar').dataset.state === 'connected';",
    )
    .await;
    impostor
        .send_message(&ClientId::new("alice").unwrap(), "it's me, really")
        .await
        .expect("the impostor sends");
    until_js(
        &client,
        "the key-change warning",
        "return !document.getElementById('key-banner').hidden;",
    )
    .await;
    let refused = client
        .execute(
            "return Array.from(document.querySelectorAll('li.msg.in .bubble')) \
               .some(b => b.textContent.includes(\"it's me, really\"));",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(refused, json!(false), "nothing from the new key is shown");
    shots.take(&client, "key-changed").await;
    assert_accessible(&client, "a changed safety number").await;

    // Compare first: the dialog shows the new key's safety number next to ours.
    click(&client, "#key-banner-compare").await;
    until_js(
        &client,
        "the safety-number dialog",
        "return document.getElementById('verify-dialog').open \
         && document.querySelectorAll('#verify-theirs span').length === 12;",
    )
    .await;
    shots.take(&client, "key-compare").await;
    assert_accessible(&client, "the safety number dialog").await;
    click(&client, "#verify-close").await;

    click(&client, "#key-banner-accept").await;
    until_js(
        &client,
        "the warning to clear",
        "return document.getElementById('key-banner').hidden;",
    )
    .await;
    // The message held back meanwhile appears at once: held by the peer, not lost, and not
    // waiting for the server to deliver it again after some reconnect.
    until_js(
        &client,
        "the held-back message after accepting",
        "return Array.from(document.querySelectorAll('li.msg.in .bubble')) \
           .some(b => b.textContent.includes(\"it's me, really\"));",
    )
    .await;
    shots.take(&client, "key-accepted").await;

    // The key changes again; while the person compares, the server swaps in yet another key
    // (what a malicious server would do to get its own key pinned). Accepting the number on
    // screen is refused with a reason, nothing is pinned, and the dialog then shows the key the
    // server presents now, saying that it changed; accepting that one pins it.
    let connected = "return document.getElementById('status-bar').dataset.state === 'connected';";
    impostor.disconnect().await;
    let server = restart_empty(server).await;
    let second = connect_bob(&url).await;
    until_js(&client, "alice reconnected", connected).await;
    second
        .send_message(&ClientId::new("alice").unwrap(), "another new key")
        .await
        .expect("the second key sends");
    until_js(
        &client,
        "the second key-change warning",
        "return !document.getElementById('key-banner').hidden;",
    )
    .await;
    click(&client, "#key-banner-compare").await;
    let number = "return Array.from(document.querySelectorAll('#verify-theirs span')) \
                    .map(s => s.textContent).join(' ');";
    // The dialog is open and shows `fp` as their number.
    let shows = |fp: String| {
        format!(
            "document.getElementById('verify-dialog').open \
               && Array.from(document.querySelectorAll('#verify-theirs span')) \
                    .map(s => s.textContent).join(' ') === '{fp}'"
        )
    };
    until_js(
        &client,
        "the dialog with the second key",
        &format!("return {};", shows(second.fingerprint().to_string())),
    )
    .await;

    second.disconnect().await;
    let server = restart_empty(server).await;
    let third = connect_bob(&url).await;
    until_js(&client, "alice reconnected", connected).await;
    click(&client, "#verify-accept").await;
    until_js(
        &client,
        "the dialog to show the key the server swapped in, with a warning",
        &format!(
            "return {} && !document.getElementById('verify-changed').hidden;",
            shows(third.fingerprint().to_string())
        ),
    )
    .await;
    let banner_hidden = client
        .execute(
            "return document.getElementById('key-banner').hidden;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(banner_hidden, json!(false), "nothing was pinned");
    let warning = client
        .execute(
            "return document.getElementById('verify-changed').textContent;",
            vec![],
        )
        .await
        .unwrap();
    assert!(
        // The refusal's reason, or the note that the key changed again: both say what to do.
        warning.as_str().unwrap_or("").contains("Compare the new"),
        "{warning}"
    );
    let now_shown = client.execute(number, vec![]).await.unwrap();
    assert_eq!(now_shown, json!(third.fingerprint().to_string()));
    shots.take(&client, "key-swapped-while-comparing").await;

    click(&client, "#verify-accept").await;
    until_js(
        &client,
        "the dialog to close and the warning to clear",
        "return !document.getElementById('verify-dialog').open \
           && document.getElementById('key-banner').hidden;",
    )
    .await;

    client.close().await.expect("close");
    guard.disarm();
    third.disconnect().await;
    server.shutdown().await;
}
