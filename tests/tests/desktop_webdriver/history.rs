//! A conversation of ten thousand messages: first screen and scrolling back (measured, never
//! asserted), with and without reactions and edits, side by side in one run.

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

    // 10,000 messages with dave, written straight into the app's database; the same with erin,
    // where every 4th message has two reactions and every 10th was edited once (the reference
    // and the content layer's cost, measured in the same run).
    {
        let mut db = rusqlite::Connection::open(data.path().join("lattice.sqlite3")).unwrap();
        let tx = db.transaction().unwrap();
        let start: i64 = 1_700_000_000_000;
        for peer in ["dave", "erin"] {
            tx.execute(
                "INSERT OR IGNORE INTO contacts(peer_id, first_seen) VALUES (?1, 0)",
                [peer],
            )
            .unwrap();
            let rich = peer == "erin";
            for i in 0..MESSAGES {
                let outgoing = i % 3 == 0;
                let edited = rich && i % 10 == 0;
                let body = format!("message {i}: the quick brown fox jumps over the lazy dog");
                let shown = if edited {
                    format!("{body} (fixed)")
                } else {
                    body.clone()
                };
                tx.execute(
                    "INSERT INTO messages(message_id, peer_id, outgoing, body, at, status,
                                          authenticated, wire_id, sent_at, edited_at, rev)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1, ?1, ?5, ?7, ?8)",
                    rusqlite::params![
                        format!("seed-{peer}-{i}"),
                        peer,
                        outgoing,
                        shown,
                        start + (i as i64) * 60_000,
                        if outgoing { 3 } else { 4 },
                        edited.then_some(start + (i as i64) * 60_000 + 1_000),
                        i64::from(edited) + if rich && i % 4 == 0 { 2 } else { 0 },
                    ],
                )
                .unwrap();
                let seq = tx.last_insert_rowid();
                if edited {
                    tx.execute(
                        "INSERT INTO message_versions(seq, body, replaced_at) VALUES (?1, ?2, ?3)",
                        rusqlite::params![seq, body, start + (i as i64) * 60_000 + 1_000],
                    )
                    .unwrap();
                }
                if rich && i % 4 == 0 {
                    for (reactor, emoji) in [("carol", "👍"), ("erin", "❤️")] {
                        tx.execute(
                            "INSERT INTO reactions(seq, reactor, emoji, at) VALUES (?1, ?2, ?3, 0)",
                            rusqlite::params![seq, reactor, emoji],
                        )
                        .unwrap();
                    }
                }
            }
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
    // Alternately, twice each: the plain conversation, then the one with reactions and edits.
    for round in 1..=2 {
        for peer in ["dave", "erin"] {
            let (ms, shown) = first_screen(&client, peer).await;
            println!(
                "10k conversation ({}), round {round}: first screen {ms:.0} ms ({shown} messages in the DOM)",
                if peer == "erin" { "every 4th with 2 reactions, every 10th edited" } else { "plain reference" }
            );
        }
    }
    let rich = client
        .execute(
            "return [document.querySelectorAll('li.msg .reaction').length, \
                     document.querySelectorAll('li.msg .edited').length];",
            vec![],
        )
        .await
        .unwrap();
    println!(
        "10k conversation with erin: [reaction chips, edited marks] on the first screen: {rich}"
    );
    let mut shots = Shots {
        dir: screenshot_dir(),
        n: 49,
    };
    shots
        .take(&client, "ten-thousand-messages-with-reactions-and-edits")
        .await;
    first_screen(&client, "dave").await;
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

/// Opens the conversation with `peer` from the peer list and returns how long (ms, in the page)
/// until its first screen was painted, and how many messages it shows.
async fn first_screen(client: &fantoccini::Client, peer: &str) -> (f64, serde_json::Value) {
    let script = format!(
        "const done = arguments[arguments.length - 1];
         const list = document.getElementById('message-list');
         const t0 = performance.now();
         const obs = new MutationObserver(() => {{
           if (list.querySelector('li.msg')) {{
             obs.disconnect();
             requestAnimationFrame(() => requestAnimationFrame(() => done(performance.now() - t0)));
           }}
         }});
         obs.observe(list, {{ childList: true }});
         document.querySelector('li.peer[data-peer-id={}]').click();",
        serde_json::to_string(peer).unwrap()
    );
    let ms = client
        .execute_async(&script, vec![])
        .await
        .expect("first screen");
    let shown = client
        .execute("return document.querySelectorAll('li.msg').length;", vec![])
        .await
        .unwrap();
    (ms.as_f64().unwrap_or(-1.0), shown)
}
