//! The desktop app end to end, in its real webview (WebKitGTK), through WebDriver.
//!
//! Scenario: a server (port 0, admin API on) and a headless peer *bob*; the app starts as
//! *alice* on an empty data directory and goes through first run; the peer list shows bob;
//! alice sends, bob receives the decrypted text; bob replies and alice's conversation shows it;
//! the server asks alice a three-round question through the admin API and every round appears in
//! the dialog and every answer reaches the server; the app restarts and the history is there.
//! A screenshot of each step goes to `$E2E_SCREENSHOT_DIR` (default `target/e2e-screenshots`).
//!
//! Needs Xvfb, tauri-driver, WebKitWebDriver and the app binary, so it is `#[ignore]`d in plain
//! `cargo test`; `scripts/e2e-desktop.sh` sets all of that up and runs it with `--ignored`.
//! Every wait is bounded; no timing is asserted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use lattice_crypto::Identity;
use lattice_peer::{MessagingPeer, PeerConfig, PeerEvent};
use lattice_protocol::ClientId;
use serde_json::{json, Value};

/// Upper bound of any single wait in this test (generous: a cold WebKit start under Xvfb on a
/// loaded 2-core machine).
const WAIT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(100);
const ADMIN_TOKEN: &str = "e2e-admin-token-0123456789abcdefghij";

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run scripts/e2e-desktop.sh"))
}

/// Runs `script` (a function body) until it returns something truthy, and returns that. On a
/// timeout, saves a screenshot of what the window showed (`failure-….png`) before failing.
async fn until_js(client: &Client, what: &str, script: &str) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match client.execute(script, vec![]).await {
            Ok(v) if !v.is_null() && v != Value::Bool(false) => return v,
            _ => {}
        }
        if tokio::time::Instant::now() >= deadline {
            if let Ok(png) = client.screenshot().await {
                let name: String = what
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                    .collect();
                let path = screenshot_dir().join(format!("failure-{name}.png"));
                let _ = std::fs::write(&path, png);
                println!("failure screenshot: {}", path.display());
            }
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(POLL).await;
    }
}

fn screenshot_dir() -> PathBuf {
    std::env::var("E2E_SCREENSHOT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("target/e2e-screenshots"))
}

/// Ends a WebDriver session even when the test panics, so the next test can start the app
/// (tauri-driver allows one session at a time). A plain blocking HTTP `DELETE`, because `Drop`
/// cannot await and the test's runtime may be unwinding.
struct SessionGuard {
    driver: String,
    id: Option<String>,
}

impl SessionGuard {
    /// The session was closed normally.
    fn disarm(mut self) {
        self.id = None;
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        use std::io::{Read, Write};
        let Some(id) = self.id.take() else {
            return;
        };
        let Some(hostport) = self.driver.strip_prefix("http://") else {
            return;
        };
        let hostport = hostport.trim_end_matches('/');
        if let Ok(mut stream) = std::net::TcpStream::connect(hostport) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let request = format!(
                "DELETE /session/{id} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
            );
            if stream.write_all(request.as_bytes()).is_ok() {
                let mut sink = Vec::new();
                let _ = stream.read_to_end(&mut sink);
            }
        }
    }
}

struct Shots {
    dir: PathBuf,
    n: u32,
}

impl Shots {
    async fn take(&mut self, client: &Client, name: &str) {
        self.n += 1;
        // Let the last frame paint (transitions are short) before capturing.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let png = client.screenshot().await.expect("screenshot");
        let path = self.dir.join(format!("{:02}-{name}.png", self.n));
        std::fs::write(&path, png).expect("write screenshot");
        println!("screenshot: {}", path.display());
    }
}

async fn start_app(data_dir: &std::path::Path) -> (Client, SessionGuard) {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "tauri:options".into(),
        json!({
            "application": env("LATTICE_DESKTOP_BIN"),
            "args": [
                "--data-dir", data_dir.display().to_string(),
                "--log-file", screenshot_dir().join("app.log").display().to_string(),
            ],
        }),
    );
    caps.insert("browserName".into(), json!("wry"));
    // tauri-driver listens on plain HTTP on loopback: no TLS connector needed.
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let client = ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&env("TAURI_DRIVER_URL"))
        .await
        .expect("a WebDriver session with the app");
    let guard = SessionGuard {
        driver: env("TAURI_DRIVER_URL"),
        id: client.session_id().await.expect("session id"),
    };
    until_js(
        &client,
        "the page to finish bootstrapping",
        "return document.body.dataset.ready === 'true';",
    )
    .await;
    (client, guard)
}

async fn click(client: &Client, css: &str) {
    client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("find {css}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("click {css}: {e}"));
}

async fn type_into(client: &Client, css: &str, text: &str) {
    client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("find {css}: {e}"))
        .send_keys(text)
        .await
        .unwrap_or_else(|e| panic!("type into {css}: {e}"));
}

/// Posts one admin question and returns the server's JSON answer (it waits for alice).
async fn ask(
    http: reqwest::Client,
    admin_url: String,
    question: Value,
    conversation: Option<String>,
) -> Value {
    let mut body = json!({ "question": question, "timeoutMs": WAIT.as_millis() as u64 });
    if let Some(c) = conversation {
        body["conversationId"] = json!(c);
    }
    let res = http
        .post(format!("{admin_url}/admin/peers/alice/questions"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&body)
        .send()
        .await
        .expect("admin request");
    let status = res.status();
    let answer: Value = res.json().await.expect("admin answer");
    assert!(status.is_success(), "admin API: {status} {answer}");
    answer
}

/// Waits until the question dialog shows `text`.
/// Scrolls the message list to its top (`to_top`) or bottom step by step (the list loads pages as
/// it goes) until the message at that end starts with `prefix`, or 25 s pass. Returns how long it
/// took in ms, the start of the text at that end, and how many messages the DOM then holds.
async fn scroll_to_end(client: &Client, to_top: bool, prefix: &str) -> (f64, String, u64) {
    let found = client
        .execute_async(
            "const [toTop, prefix, done] = arguments;
             const box = document.getElementById('messages');
             const t0 = performance.now();
             const step = () => {
               const all = document.querySelectorAll('li.msg .bubble');
               const end = toTop ? all[0] : all[all.length - 1];
               const elapsed = performance.now() - t0;
               if ((end && end.textContent.startsWith(prefix)) || elapsed > 25000) {
                 done({ ms: elapsed, text: end ? end.textContent.slice(0, 20) : '' });
                 return;
               }
               box.scrollTop = toTop ? 0 : box.scrollHeight;
               setTimeout(step, 16);
             };
             step();",
            vec![json!(to_top), json!(prefix)],
        )
        .await
        .expect("scroll the message list");
    let dom = client
        .execute("return document.querySelectorAll('li.msg').length;", vec![])
        .await
        .unwrap();
    (
        found["ms"].as_f64().unwrap_or(-1.0),
        found["text"].as_str().unwrap_or_default().to_owned(),
        dom.as_u64().unwrap_or(u64::MAX),
    )
}

/// Completes the first-run screen: `name`, connecting to `url`, then opens the main window.
async fn first_run_as(client: &Client, name: &str, url: &str) {
    type_into(client, "#setup-name", name).await;
    click(
        client,
        "input[name=serverMode][value=connect] + .choice-icon",
    )
    .await;
    type_into(client, "#setup-url", url).await;
    click(client, "#setup-submit").await;
    until_js(
        client,
        "first run to finish",
        "return !document.getElementById('setup-done').hidden;",
    )
    .await;
    click(client, "#setup-start").await;
}

/// A new identity registering as "bob": the real one, or an impostor once the server forgot bob.
async fn connect_bob(url: &str) -> MessagingPeer {
    let config = PeerConfig::new(
        url,
        ClientId::new("bob").unwrap(),
        Identity::generate(&mut rand_core::OsRng),
    );
    let bob = MessagingPeer::new(config).unwrap();
    bob.connect().await.expect("bob connects");
    bob
}

/// Stops `server` and starts an empty in-memory one on the same port (which may take a moment
/// to be free again): a server that forgot every binding.
async fn restart_empty(server: lattice_server::ServerHandle) -> lattice_server::ServerHandle {
    let port = server.local_addr().port();
    server.shutdown().await;
    for _ in 0..50 {
        let config = lattice_server::Config {
            port,
            ..lattice_server::Config::for_tests()
        };
        if let Ok(server) = lattice_server::spawn(config).await {
            return server;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("cannot listen on port {port} again");
}

async fn dialog_shows(client: &Client, text: &str) {
    let script = format!(
        "const d = document.getElementById('question-dialog'); \
         return d.open && document.getElementById('question-text').textContent === {};",
        serde_json::to_string(text).unwrap()
    );
    until_js(client, &format!("the question {text:?}"), &script).await;
}

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
    click(&client, "li.peer[data-peer-id=\"bob\"]").await;
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

    // Bob replies; alice's conversation shows it.
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
    shots.take(&client, "reply-received").await;

    // Three rounds of questions through the admin API; the dialog shows each, the answers
    // reach the server.
    let http = reqwest::Client::new();
    let round1 = json!({"text": "Which name should the release get?", "kind": "text"});
    let pending = tokio::spawn(ask(http.clone(), admin_url.clone(), round1, None));
    dialog_shows(&client, "Which name should the release get?").await;
    shots.take(&client, "question-round-1").await;
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
    click(&client, "li.peer[data-peer-id=\"bob\"]").await;
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

    client.close().await.expect("close the second session");
    guard.disarm();
    bob.disconnect().await;
    server.shutdown().await;
}

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
    click(&client, "li.peer[data-peer-id=\"bob\"]").await;
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
    click(&client, "li.peer[data-peer-id=\"bob\"]").await;
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
    click(&client, "li.peer[data-peer-id=\"bob\"]").await;
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

// ---- the tray, through the StatusNotifierItem protocol ----

/// The StatusNotifierWatcher a desktop's panel runs: apps register their tray item with it.
/// This one hands every registration (bus name, object path) to the test.
struct Watcher {
    items: tokio::sync::mpsc::UnboundedSender<(String, String)>,
}

#[zbus::interface(name = "org.kde.StatusNotifierWatcher")]
impl Watcher {
    fn register_status_notifier_item(
        &self,
        service: String,
        #[zbus(header)] header: zbus::message::Header<'_>,
    ) {
        let sender = header.sender().map(|s| s.to_string()).unwrap_or_default();
        // The argument is an object path on the caller's connection, or a bus name.
        let item = if service.starts_with('/') {
            (sender, service)
        } else {
            (service, "/StatusNotifierItem".to_owned())
        };
        let _ = self.items.send(item);
    }

    fn register_status_notifier_host(&self, _service: String) {}

    #[zbus(property)]
    fn registered_status_notifier_items(&self) -> Vec<String> {
        Vec::new()
    }

    #[zbus(property)]
    fn is_status_notifier_host_registered(&self) -> bool {
        true
    }

    #[zbus(property)]
    fn protocol_version(&self) -> i32 {
        0
    }
}

/// A `com.canonical.dbusmenu` layout node: id, properties, children (each a variant holding a
/// node of the same shape).
type MenuNode = (
    i32,
    std::collections::HashMap<String, zbus::zvariant::OwnedValue>,
    Vec<zbus::zvariant::OwnedValue>,
);

/// The labelled items (id, label) below `node`, depth first.
fn menu_items(node: &MenuNode, out: &mut Vec<(i32, String)>) {
    let (id, props, children) = node;
    if let Some(label) = props
        .get("label")
        .and_then(|v| String::try_from(v.try_clone().ok()?).ok())
    {
        out.push((*id, label));
    }
    for child in children {
        if let Ok(child) = child.try_clone().and_then(MenuNode::try_from) {
            menu_items(&child, out);
        }
    }
}

/// The tray menu as the panel would show it.
async fn tray_menu(menu: &zbus::Proxy<'_>) -> Vec<(i32, String)> {
    let (_revision, layout): (u32, MenuNode) = menu
        .call("GetLayout", &(0i32, -1i32, Vec::<String>::new()))
        .await
        .expect("GetLayout");
    let mut items = Vec::new();
    menu_items(&layout, &mut items);
    items
}

/// Polls the tray menu until it has an item labelled `label`; returns that item's id.
async fn until_menu_has(menu: &zbus::Proxy<'_>, label: &str) -> i32 {
    let mut last = Vec::new();
    for _ in 0..200 {
        last = tray_menu(menu).await;
        if let Some((id, _)) = last.iter().find(|(_, l)| l == label) {
            return *id;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the tray menu never showed {label:?}; it has {last:?}");
}

/// Clicks a tray menu item, as the panel does.
async fn click_menu(menu: &zbus::Proxy<'_>, id: i32) {
    let _: () = menu
        .call(
            "Event",
            &(id, "clicked", zbus::zvariant::Value::from(0i32), 0u32),
        )
        .await
        .expect("Event clicked");
}

#[tokio::test]
#[ignore = "needs Xvfb, tauri-driver and the app binary: run scripts/e2e-desktop.sh"]
async fn the_tray_menu_counts_unread_messages_shows_hides_and_quits() {
    // The panel's side: own the watcher name on the session bus the app uses.
    let (items_tx, mut items) = tokio::sync::mpsc::unbounded_channel();
    let bus = zbus::connection::Builder::session()
        .expect("a session bus (scripts/e2e-desktop.sh starts one)")
        .name("org.kde.StatusNotifierWatcher")
        .unwrap()
        .serve_at("/StatusNotifierWatcher", Watcher { items: items_tx })
        .unwrap()
        .build()
        .await
        .expect("own org.kde.StatusNotifierWatcher");

    let server = lattice_server::spawn(lattice_server::Config::for_tests())
        .await
        .expect("server");
    let url = server.url();
    let bob = MessagingPeer::new(PeerConfig::new(
        url.clone(),
        ClientId::new("bob").unwrap(),
        Identity::generate(&mut rand_core::OsRng),
    ))
    .unwrap();
    bob.connect().await.expect("bob connects");

    let data = tempfile::tempdir().unwrap();
    let (client, guard) = start_app(data.path()).await;
    let (name, path) = tokio::time::timeout(Duration::from_secs(20), items.recv())
        .await
        .expect("the app registers a tray item")
        .expect("watcher running");
    let item = zbus::Proxy::new(&bus, name.clone(), path, "org.kde.StatusNotifierItem")
        .await
        .unwrap();
    let menu_path: zbus::zvariant::OwnedObjectPath =
        item.get_property("Menu").await.expect("the item's menu");
    let menu = zbus::Proxy::new(&bus, name.clone(), menu_path, "com.canonical.dbusmenu")
        .await
        .unwrap();
    let toggle = until_menu_has(&menu, "Hide Lattice").await;
    until_menu_has(&menu, "No unread messages").await;
    let quit = until_menu_has(&menu, "Quit Lattice").await;

    // A message in a conversation that is not open counts as unread in the menu.
    first_run_as(&client, "alice", &url).await;
    bob.send_message(&ClientId::new("alice").unwrap(), "are you there?")
        .await
        .expect("bob sends");
    until_menu_has(&menu, "1 unread message").await;

    // Hide and show the window from the menu.
    click_menu(&menu, toggle).await;
    let toggle = until_menu_has(&menu, "Show Lattice").await;
    until_js(
        &client,
        "the page hidden with its window",
        "return document.visibilityState === 'hidden';",
    )
    .await;
    click_menu(&menu, toggle).await;
    until_menu_has(&menu, "Hide Lattice").await;
    until_js(
        &client,
        "the page visible again",
        "return document.visibilityState === 'visible';",
    )
    .await;

    // Quit ends the app: its connection to the bus goes away.
    click_menu(&menu, quit).await;
    let dbus = zbus::fdo::DBusProxy::new(&bus).await.unwrap();
    let mut gone = false;
    for _ in 0..200 {
        let bus_name = zbus::names::BusName::try_from(name.as_str()).unwrap();
        if !dbus.name_has_owner(bus_name).await.unwrap_or(true) {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "the app still runs after Quit");
    // The session's app is gone; ending the WebDriver session may fail and that is fine.
    let _ = client.close().await;
    guard.disarm();
    bob.disconnect().await;
    server.shutdown().await;
}
