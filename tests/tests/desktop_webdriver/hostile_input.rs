//! Text from the network stays text, and pins survive a restart.

use lattice_protocol::ClientId;
use serde_json::json;

use crate::support::*;

/// What a sender (or a malicious server) puts in a message stays text: terminal escapes and a
/// right-to-left override are shown as characters, confined to the message, never reordering
/// its time. And a key pinned before the app restarts is still pinned after it: a new key then
/// is the same loud warning as a live change, and nothing from it is shown.
#[tokio::test]
#[ignore = "needs Xvfb, tauri-driver and the app binary: run scripts/e2e-desktop.sh"]
async fn network_text_stays_text_and_pins_survive_a_restart() {
    let mut shots = Shots {
        dir: screenshot_dir(),
        n: 80,
    };
    let server = lattice_server::spawn(lattice_server::Config::for_tests())
        .await
        .expect("server");
    let url = server.url();
    let bob = connect_bob(&url).await;

    let data = tempfile::tempdir().unwrap();
    let (client, guard) = start_app(data.path()).await;
    first_run_as(&client, "alice", &url).await;
    let bob_online =
        "return !!document.querySelector('li.peer[data-peer-id=\"bob\"][data-online=\"true\"]');";
    until_js(&client, "bob in the list", bob_online).await;
    open_conversation(&client, "bob").await;
    let hostile = "\u{1b}]0;pwned\u{7}\u{1b}[2J\u{202e}gnp.exe\u{202c} [alice \u{2713}] fake";
    bob.send_message(&ClientId::new("alice").unwrap(), hostile)
        .await
        .expect("bob sends");
    let shown = until_js(
        &client,
        "the hostile message",
        "const t = document.querySelector('li.msg.in .bubble bdi.text'); \
         return t ? t.textContent : null;",
    )
    .await;
    assert_eq!(shown, json!(hostile), "shown as the characters it is");
    let isolated = client
        .execute(
            "const b = document.querySelector('li.msg.in .bubble'); \
             const t = b.querySelector('bdi.text'); \
             return getComputedStyle(t).unicodeBidi === 'isolate' \
               && !t.contains(b.querySelector('time')) \
               && document.title === 'Lattice';",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        isolated,
        json!(true),
        "the override stays inside the message"
    );
    shots.take(&client, "hostile-text").await;
    client.close().await.expect("close");
    guard.disarm();

    // The server forgets bob (an in-memory server restarted); someone else registers "bob".
    bob.disconnect().await;
    let server = restart_empty(server).await;
    let impostor = connect_bob(&url).await;

    let (client, guard) = start_app(data.path()).await;
    until_js(
        &client,
        "alice connected after the restart",
        "return document.getElementById('status-bar').dataset.state === 'connected';",
    )
    .await;
    until_js(&client, "bob in the list again", bob_online).await;
    open_conversation(&client, "bob").await;
    impostor
        .send_message(&ClientId::new("alice").unwrap(), "same bob, honest")
        .await
        .expect("the impostor sends");
    until_js(
        &client,
        "the key-change warning after a restart",
        "return !document.getElementById('key-banner').hidden;",
    )
    .await;
    let leaked = client
        .execute(
            "return Array.from(document.querySelectorAll('li.msg.in .bubble')) \
               .some(b => b.textContent.includes('same bob, honest'));",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(leaked, json!(false), "nothing from the new key is shown");
    shots.take(&client, "key-changed-after-restart").await;

    client.close().await.expect("close");
    guard.disarm();
    impostor.disconnect().await;
    server.shutdown().await;
}
