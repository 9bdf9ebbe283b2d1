//! A conversation of ten thousand messages: first screen and scrolling back (measured, never asserted).

use crate::support::*;

/// Not a pass/fail test: opens a conversation of 10,000 messages and prints how long the first
/// screen and scrolling back to the very first message take (numbers for the closing report).
#[tokio::test]
#[ignore = "needs Xvfb, tauri-driver and the app binary: run scripts/e2e-desktop.sh"]
async fn measure_a_conversation_of_ten_thousand_messages() {
    const MESSAGES: usize = 10_000;
    let server = lattice_server::spawn(lattice_server::Config::for_tests())
        .await
        .expect("server");
    let data = tempfile::tempdir().unwrap();

    // First run through the UI, then close the app.
    let (client, guard) = start_app(data.path()).await;
    type_into(&client, "#setup-name", "carol").await;
    click(
        &client,
        "input[name=serverMode][value=connect] + .choice-icon",
    )
    .await;
    type_into(&client, "#setup-url", &server.url()).await;
    click(&client, "#setup-submit").await;
    until_js(
        &client,
        "first run to finish",
        "return !document.getElementById('setup-done').hidden;",
    )
    .await;
    client.close().await.expect("close");
    guard.disarm();

    // 10,000 messages with dave, written straight into the app's database.
    {
        let mut db = rusqlite::Connection::open(data.path().join("lattice.sqlite3")).unwrap();
        let tx = db.transaction().unwrap();
        tx.execute(
            "INSERT OR IGNORE INTO contacts(peer_id, first_seen) VALUES ('dave', 0)",
            [],
        )
        .unwrap();
        let start: i64 = 1_700_000_000_000;
        for i in 0..MESSAGES {
            let outgoing = i % 3 == 0;
            tx.execute(
                "INSERT INTO messages(message_id, peer_id, outgoing, body, at, status, authenticated)
                 VALUES (?1, 'dave', ?2, ?3, ?4, ?5, 1)",
                rusqlite::params![
                    format!("seed-{i}"),
                    outgoing,
                    format!("message {i}: the quick brown fox jumps over the lazy dog"),
                    start + (i as i64) * 60_000,
                    if outgoing { 3 } else { 4 },
                ],
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }

    let (client, guard) = start_app(data.path()).await;
    until_js(
        &client,
        "dave in the list",
        "return !!document.querySelector('li.peer[data-peer-id=\"dave\"]');",
    )
    .await;
    let first_screen = client
        .execute_async(
            "const done = arguments[arguments.length - 1];
             const list = document.getElementById('message-list');
             const t0 = performance.now();
             const obs = new MutationObserver(() => {
               if (list.querySelector('li.msg')) {
                 obs.disconnect();
                 requestAnimationFrame(() => requestAnimationFrame(() => done(performance.now() - t0)));
               }
             });
             obs.observe(list, { childList: true });
             document.querySelector('li.peer[data-peer-id=\"dave\"]').click();",
            vec![],
        )
        .await
        .expect("first screen");
    let shown = client
        .execute("return document.querySelectorAll('li.msg').length;", vec![])
        .await
        .unwrap();
    println!(
        "10k conversation: first screen {:.0} ms ({shown} messages in the DOM)",
        first_screen.as_f64().unwrap_or(-1.0)
    );
    let mut shots = Shots {
        dir: screenshot_dir(),
        n: 50,
    };
    shots.take(&client, "ten-thousand-messages").await;

    // Scroll to the top until the very first message is loaded.
    let (ms, first, dom) = scroll_to_end(&client, true, "message 0:").await;
    println!(
        "10k conversation: scrolled back in {ms:.0} ms to {first:?} ({dom} messages in the DOM)"
    );
    assert!(
        first.starts_with("message 0:"),
        "scrolling back reached the first message"
    );
    assert!(
        dom <= 800,
        "the DOM keeps a window, not the whole history: {dom}"
    );
    shots.take(&client, "scrolled-to-the-first-message").await;

    // And down again to the newest message.
    let (ms, last, dom) = scroll_to_end(&client, false, "message 9999:").await;
    println!(
        "10k conversation: scrolled forward again in {ms:.0} ms to {last:?} ({dom} messages in the DOM)"
    );
    assert!(
        last.starts_with("message 9999:"),
        "scrolling forward reached the newest message"
    );
    shots.take(&client, "scrolled-back-to-the-newest").await;
    client.close().await.expect("close");
    guard.disarm();
    server.shutdown().await;
}
