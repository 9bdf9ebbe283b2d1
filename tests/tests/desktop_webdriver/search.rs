//! Search, drafts, shortcuts, links, text direction and accessibility, in the real webview.
//!
//! Alice's history holds 10,000 messages with dave (written into her database while the app is
//! closed) and a live bob. Ctrl+K finds a word from deep in dave's history and Enter opens the
//! conversation at that message; Ctrl+F searches one conversation and query syntax stays text;
//! a draft survives switching conversations and a restart; Ctrl+/ lists the shortcuts; a link
//! asks before opening; right-to-left text runs right to left and long words wrap; a message
//! from bob is announced in the live region; Tab walks the window without a trap. axe-core
//! checks every screen: first run, the main window, each dialog.

use serde_json::Value;

use crate::support::*;

/// Messages with dave, and the one the search looks for (deep in the history).
const MESSAGES: usize = 10_000;
const NEEDLE_AT: usize = 1_234;
const LINK_MESSAGE: &str = "The guide is at https://example.com/guide/start. Have a look!";
const RTL_MESSAGE: &str = "مرحبا بالعالم، هذه رسالة";
const DRAFT: &str = "an unsent thought about the weekend";

fn seed_history(data: &std::path::Path) {
    let mut db = rusqlite::Connection::open(data.join("lattice.sqlite3")).unwrap();
    let tx = db.transaction().unwrap();
    tx.execute_batch(
        "INSERT OR IGNORE INTO contacts(peer_id, first_seen) VALUES ('dave', 0);
         INSERT OR IGNORE INTO contacts(peer_id, first_seen) VALUES ('carol', 0);",
    )
    .unwrap();
    let start: i64 = 1_700_000_000_000;
    let insert = |id: String, peer: &str, outgoing: bool, body: String, at: i64| {
        tx.execute(
            "INSERT INTO messages(message_id, peer_id, outgoing, body, at, status, authenticated)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1)",
            rusqlite::params![id, peer, outgoing, body, at, if outgoing { 3 } else { 4 }],
        )
        .unwrap();
    };
    for i in 0..MESSAGES {
        let body = if i == NEEDLE_AT {
            format!("message {i}: the zeppelin lands at the harbour on Tuesday")
        } else {
            format!("message {i}: the quick brown fox jumps over the lazy dog")
        };
        insert(
            format!("seed-{i}"),
            "dave",
            i % 3 == 0,
            body,
            start + (i as i64) * 60_000,
        );
    }
    let end = start + (MESSAGES as i64) * 60_000;
    insert("rtl".into(), "dave", false, RTL_MESSAGE.into(), end + 1);
    insert(
        "long".into(),
        "dave",
        false,
        format!("{} end", "x".repeat(600)),
        end + 2,
    );
    insert("link".into(), "dave", false, LINK_MESSAGE.into(), end + 3);
    insert(
        "c1".into(),
        "carol",
        false,
        "a zeppelin for carol too".into(),
        end + 4,
    );
    tx.commit().unwrap();
}

async fn js(client: &fantoccini::Client, script: &str) -> Value {
    client.execute(script, vec![]).await.expect(script)
}

#[tokio::test]
#[ignore = "needs Xvfb, tauri-driver and the app binary: run scripts/e2e-desktop.sh"]
async fn search_drafts_shortcuts_links_and_accessibility() {
    let mut shots = Shots {
        dir: screenshot_dir(),
        n: 90,
    };
    std::fs::create_dir_all(&shots.dir).unwrap();
    let server = lattice_server::spawn(lattice_server::Config::for_tests())
        .await
        .expect("server");
    let url = server.url();
    let data = tempfile::tempdir().unwrap();

    // First run, checked by axe, then the empty main window.
    let (client, guard) = start_app(data.path()).await;
    assert_accessible(&client, "first run").await;
    first_run_as(&client, "alice", &url).await;
    until_js(
        &client,
        "the main window",
        "return !document.getElementById('app').hidden;",
    )
    .await;
    assert_accessible(&client, "the empty main window").await;
    client.close().await.expect("close");
    guard.disarm();

    seed_history(data.path());
    let bob = connect_bob(&url).await;

    let (client, guard) = start_app(data.path()).await;
    until_js(
        &client,
        "dave and bob in the list",
        "return !!document.querySelector('li.peer[data-peer-id=\"dave\"]') \
         && !!document.querySelector('li.peer[data-peer-id=\"bob\"]');",
    )
    .await;
    open_conversation(&client, "dave").await;
    until_js(
        &client,
        "dave's latest messages",
        "return document.querySelectorAll('li.msg').length > 10;",
    )
    .await;
    shots
        .take(&client, "conversation-with-links-rtl-and-long-words")
        .await;
    assert_accessible(&client, "a conversation").await;

    // Text: right to left runs right to left, long words wrap, links are links.
    let text = js(
        &client,
        "const rtl = document.querySelector('li.msg[data-id=\"rtl\"] .text'); \
         const long = document.querySelector('li.msg[data-id=\"long\"] .bubble'); \
         const box = document.getElementById('messages').getBoundingClientRect(); \
         const link = document.querySelector('li.msg[data-id=\"link\"] a.link'); \
         return { dir: getComputedStyle(rtl).direction, \
                  longFits: long.getBoundingClientRect().width <= box.width, \
                  link: link && link.getAttribute('href'), linkText: link && link.textContent };",
    )
    .await;
    assert_eq!(text["dir"], "rtl", "Arabic text runs right to left: {text}");
    assert_eq!(text["longFits"], true, "a 600-character word wraps: {text}");
    assert_eq!(text["link"], "https://example.com/guide/start", "{text}");

    // A link asks first; Cancel opens nothing.
    click(&client, "li.msg[data-id=\"link\"] a.link").await;
    until_js(
        &client,
        "the link dialog",
        "return document.getElementById('link-dialog').open \
         && document.getElementById('link-url').textContent === 'https://example.com/guide/start';",
    )
    .await;
    shots.take(&client, "link-asks-first").await;
    assert_accessible(&client, "the link dialog").await;
    click(&client, "#link-cancel").await;
    until_js(
        &client,
        "the link dialog to close",
        "return !document.getElementById('link-dialog').open;",
    )
    .await;

    // Ctrl+K: all conversations; the word from message 1,234 of 10,000.
    press(&client, "#composer-input", "\u{E009}k").await;
    until_js(
        &client,
        "the search dialog",
        "return document.getElementById('search-dialog').open \
         && document.activeElement === document.getElementById('search-input');",
    )
    .await;
    type_into(&client, "#search-input", "zeppel").await;
    let found = until_js(
        &client,
        "two results with highlights",
        "const hits = document.querySelectorAll('#search-results li.search-hit'); \
         return hits.length === 2 && hits[1].querySelector('mark') \
           ? Array.from(hits).map(h => h.dataset.peerId + ':' + h.querySelector('mark').textContent) : null;",
    )
    .await;
    assert_eq!(
        found,
        serde_json::json!(["carol:zeppelin", "dave:zeppelin"])
    );
    shots.take(&client, "search-all-conversations").await;
    assert_accessible(&client, "the search dialog").await;
    // Down to dave's result, Enter: the conversation opens at that message.
    press(&client, "#search-input", "\u{E015}\u{E007}").await;
    let jumped = until_js(
        &client,
        "message 1234 shown, highlighted and in view",
        "const m = document.querySelector('li.msg.found'); \
         if (!m || document.getElementById('search-dialog').open) return null; \
         const r = m.getBoundingClientRect(); \
         const box = document.getElementById('messages').getBoundingClientRect(); \
         return r.top >= box.top && r.bottom <= box.bottom ? m.textContent : null;",
    )
    .await;
    assert!(
        jumped
            .as_str()
            .unwrap()
            .contains("message 1234: the zeppelin"),
        "{jumped}"
    );
    let window = js(
        &client,
        "return { focused: document.activeElement.dataset.id === 'seed-1234', \
                  dom: document.querySelectorAll('li.msg').length, \
                  name: document.getElementById('conv-name').firstChild.textContent };",
    )
    .await;
    assert_eq!(window["name"], "dave");
    assert_eq!(
        window["focused"], true,
        "focus moves to the message: {window}"
    );
    assert!(
        window["dom"].as_u64().unwrap() <= 800,
        "a window, not the history: {window}"
    );
    shots.take(&client, "jumped-to-message-1234-of-10000").await;
    // Scrolling on from there still pages: down to the newest message.
    let (_, last, _) = scroll_to_end(&client, false, "The guide").await;
    assert!(last.starts_with("The guide"), "{last}");

    // Ctrl+F: this conversation only; query syntax is text; a search with no words says why.
    press(&client, "#composer-input", "\u{E009}f").await;
    until_js(
        &client,
        "the search dialog, in dave's conversation",
        "return document.getElementById('search-dialog').open \
         && document.getElementById('search-scope-conversation').checked;",
    )
    .await;
    let input = client
        .find(fantoccini::Locator::Css("#search-input"))
        .await
        .unwrap();
    input.clear().await.unwrap();
    type_into(&client, "#search-input", "zeppelin").await;
    until_js(
        &client,
        "only dave's result",
        "const hits = document.querySelectorAll('#search-results li.search-hit'); \
         return hits.length === 1 && hits[0].dataset.peerId === 'dave';",
    )
    .await;
    input.clear().await.unwrap();
    type_into(&client, "#search-input", "\"NEAR( OR *").await;
    until_js(
        &client,
        "query syntax searched as text",
        "return /No messages with dave match/.test(document.getElementById('search-status').textContent);",
    )
    .await;
    input.clear().await.unwrap();
    type_into(&client, "#search-input", "?! ...").await;
    until_js(
        &client,
        "a readable refusal",
        "return document.getElementById('search-status').textContent === 'Type a word to search for.';",
    )
    .await;
    shots.take(&client, "search-refusal").await;
    press(&client, "#search-input", "\u{E00C}").await; // Escape
    until_js(
        &client,
        "the search dialog to close",
        "return !document.getElementById('search-dialog').open;",
    )
    .await;

    // Drafts: kept when switching conversations and across a restart.
    type_into(&client, "#composer-input", DRAFT).await;
    open_conversation(&client, "carol").await;
    until_js(
        &client,
        "carol's empty composer, dave's draft in the list",
        "return document.getElementById('composer-input').value === '' \
         && document.querySelector('li.peer[data-peer-id=\"dave\"] .peer-preview').textContent \
              === 'Draft: an unsent thought about the weekend';",
    )
    .await;
    shots.take(&client, "draft-in-the-list").await;
    // Alt+Down: the next conversation in the list (carol's message is the newest, dave's next).
    press(&client, "#composer-input", "\u{E00A}\u{E015}").await;
    let back = format!(
        "return document.getElementById('conv-name').firstChild?.textContent === 'dave' \
         && document.getElementById('composer-input').value === {};",
        serde_json::to_string(DRAFT).unwrap()
    );
    until_js(&client, "dave's draft restored", &back).await;
    shots.take(&client, "draft-restored").await;

    // Ctrl+/: the shortcuts, from the same table the keys use.
    press(&client, "#composer-input", "\u{E009}/").await;
    let rows = until_js(
        &client,
        "the shortcuts dialog",
        "return document.getElementById('help-dialog').open \
           && document.querySelectorAll('#help-rows tr').length;",
    )
    .await;
    assert!(rows.as_u64().unwrap() >= 8, "{rows}");
    shots.take(&client, "keyboard-shortcuts").await;
    assert_accessible(&client, "the shortcuts dialog").await;
    press(&client, "#help-close", "\u{E00C}").await;
    until_js(
        &client,
        "the shortcuts dialog to close",
        "return !document.getElementById('help-dialog').open;",
    )
    .await;

    // Ctrl+, opens the settings; Escape closes them; Ctrl+Shift+M comes back to the composer.
    press(&client, "#composer-input", "\u{E009},").await;
    until_js(
        &client,
        "the settings",
        "return document.getElementById('settings-dialog').open;",
    )
    .await;
    client
        .active_element()
        .await
        .unwrap()
        .send_keys("\u{E00C}")
        .await
        .unwrap();
    until_js(
        &client,
        "the settings to close",
        "return !document.getElementById('settings-dialog').open;",
    )
    .await;
    // Ctrl+Shift+R marks the conversation read and is not taken by the webview (no reload).
    js(&client, "window.__stillHere = true; return true;").await;
    press(&client, "#composer-input", "\u{E009}\u{E008}r").await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(
        js(&client, "return window.__stillHere === true;").await,
        Value::Bool(true),
        "Ctrl+Shift+R must not reload the page"
    );
    press(&client, "#conv-search", "\u{E009}\u{E008}m").await;
    until_js(
        &client,
        "the composer focused by Ctrl+Shift+M",
        "return document.activeElement === document.getElementById('composer-input');",
    )
    .await;

    // A message from bob is announced in the live region.
    bob.send_message(
        &lattice_protocol::ClientId::new("alice").unwrap(),
        "ping from bob",
    )
    .await
    .expect("bob sends");
    until_js(
        &client,
        "the announcement",
        "return document.getElementById('announcer').textContent === 'New message from bob: ping from bob';",
    )
    .await;

    // Keyboard only: Tab walks through the window and comes back around, no trap.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        client
            .active_element()
            .await
            .unwrap()
            .send_keys("\u{E004}")
            .await
            .unwrap();
        let id = js(
            &client,
            "const a = document.activeElement; \
             return a.id || (a.dataset && a.dataset.peerId ? 'peer:' + a.dataset.peerId : a.tagName);",
        )
        .await;
        seen.insert(id.as_str().unwrap_or_default().to_owned());
    }
    for must in [
        "open-search",
        "open-settings",
        "peer-filter",
        "composer-input",
        "conv-search",
    ] {
        assert!(seen.contains(must), "Tab never reached {must}: {seen:?}");
    }
    assert!(
        seen.iter().any(|s| s.starts_with("peer:")),
        "Tab reaches the peer list: {seen:?}"
    );

    // The contact list by keyboard: Up moves from carol to bob (his message is the newest now),
    // Enter opens him, ready to write.
    press(
        &client,
        "li.peer[data-peer-id=\"carol\"]",
        "\u{E013}\u{E007}",
    )
    .await;
    until_js(
        &client,
        "bob opened from the keyboard",
        "return document.getElementById('conv-name').firstChild?.textContent === 'bob' \
         && document.activeElement === document.getElementById('composer-input');",
    )
    .await;
    shots.take(&client, "contact-list-by-keyboard").await;

    // Restart: dave's draft is still there.
    client.close().await.expect("close");
    guard.disarm();
    let (client, guard) = start_app(data.path()).await;
    open_conversation(&client, "dave").await;
    until_js(&client, "dave's draft after a restart", &back).await;
    client.close().await.expect("close");
    guard.disarm();
    drop(bob);
    server.shutdown().await;
}

/// Not a pass/fail test: how long the first results of a search take in the real webview over
/// 10,000 messages, from the keystroke that starts it to the results drawn.
#[tokio::test]
#[ignore = "needs Xvfb, tauri-driver and the app binary: run scripts/e2e-desktop.sh"]
async fn measure_search_in_the_webview() {
    let server = lattice_server::spawn(lattice_server::Config::for_tests())
        .await
        .expect("server");
    let data = tempfile::tempdir().unwrap();
    let (client, guard) = start_app(data.path()).await;
    first_run_as(&client, "alice", &server.url()).await;
    client.close().await.expect("close");
    guard.disarm();
    seed_history(data.path());
    let (client, guard) = start_app(data.path()).await;
    until_js(
        &client,
        "dave in the list",
        "return !!document.querySelector('li.peer[data-peer-id=\"dave\"]');",
    )
    .await;
    for word in ["quick", "zeppelin", "harbour tuesday"] {
        let ms = client
            .execute_async(
                "const [word, done] = arguments;
                 const t0 = performance.now();
                 window.__TAURI__.core.invoke('search_messages', { query: word, peerId: null, limit: 50 })
                   .then((r) => done({ ms: performance.now() - t0, n: r.hits.length }));",
                vec![serde_json::json!(word)],
            )
            .await
            .expect("search");
        println!(
            "search in the webview over {MESSAGES} messages: {word:?}: {:.1} ms, {} results",
            ms["ms"].as_f64().unwrap_or(-1.0),
            ms["n"]
        );
    }
    client.close().await.expect("close");
    guard.disarm();
    server.shutdown().await;
}
