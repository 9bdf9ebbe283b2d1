//! What every scenario of the WebDriver suite uses: the app under tauri-driver, bounded waits
//! on the page, screenshots, first run, a headless bob, a restartable server.

use std::path::PathBuf;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use lattice_crypto::Identity;
use lattice_peer::{MessagingPeer, PeerConfig};
use lattice_protocol::ClientId;
use serde_json::{json, Value};

/// Upper bound of any single wait in this test (generous: a cold WebKit start under Xvfb on a
/// loaded 2-core machine).
pub(crate) const WAIT: Duration = Duration::from_secs(30);
pub(crate) const POLL: Duration = Duration::from_millis(100);
pub(crate) const ADMIN_TOKEN: &str = "e2e-admin-token-0123456789abcdefghij";

pub(crate) fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run scripts/e2e-desktop.sh"))
}

/// Runs `script` (a function body) until it returns something truthy, and returns that. On a
/// timeout, saves a screenshot of what the window showed (`failure-….png`) before failing.
pub(crate) async fn until_js(client: &Client, what: &str, script: &str) -> Value {
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

pub(crate) fn screenshot_dir() -> PathBuf {
    std::env::var("E2E_SCREENSHOT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("target/e2e-screenshots"))
}

/// Ends a WebDriver session even when the test panics, so the next test can start the app
/// (tauri-driver allows one session at a time). A plain blocking HTTP `DELETE`, because `Drop`
/// cannot await and the test's runtime may be unwinding.
pub(crate) struct SessionGuard {
    pub(crate) driver: String,
    pub(crate) id: Option<String>,
}

impl SessionGuard {
    /// The session was closed normally.
    pub(crate) fn disarm(mut self) {
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

pub(crate) struct Shots {
    pub(crate) dir: PathBuf,
    pub(crate) n: u32,
}

impl Shots {
    pub(crate) async fn take(&mut self, client: &Client, name: &str) {
        self.n += 1;
        // Let the last frame paint (transitions are short) before capturing.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let png = client.screenshot().await.expect("screenshot");
        let path = self.dir.join(format!("{:02}-{name}.png", self.n));
        std::fs::write(&path, png).expect("write screenshot");
        println!("screenshot: {}", path.display());
    }
}

pub(crate) async fn start_app(data_dir: &std::path::Path) -> (Client, SessionGuard) {
    start_app_on(&env("TAURI_DRIVER_URL"), data_dir, "app.log").await
}

/// [`start_app`] through the tauri-driver at `driver` (one session per driver: a second
/// instance of the app needs a second driver), logging to `log` in the screenshot directory.
pub(crate) async fn start_app_on(
    driver: &str,
    data_dir: &std::path::Path,
    log: &str,
) -> (Client, SessionGuard) {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "tauri:options".into(),
        json!({
            "application": env("LATTICE_DESKTOP_BIN"),
            "args": [
                "--data-dir", data_dir.display().to_string(),
                "--log-file", screenshot_dir().join(log).display().to_string(),
            ],
        }),
    );
    caps.insert("browserName".into(), json!("wry"));
    // tauri-driver listens on plain HTTP on loopback: no TLS connector needed.
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let client = ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(driver)
        .await
        .expect("a WebDriver session with the app");
    let guard = SessionGuard {
        driver: driver.to_owned(),
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

pub(crate) async fn click(client: &Client, css: &str) {
    client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("find {css}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("click {css}: {e}"));
}

/// Opens the conversation with `peer` from the peer list. The list is rebuilt on every
/// `peer-list` event (presence, a key fetched, a message), and a click whose press and release
/// straddle a rebuild lands on two different elements and is lost; so the click is repeated,
/// a bounded number of times, until the conversation shows that peer.
pub(crate) async fn open_conversation(client: &Client, peer: &str) {
    let row = format!(
        "li.peer[data-peer-id={}]",
        serde_json::to_string(peer).unwrap()
    );
    let shown = format!(
        "return !document.getElementById('conversation').hidden \
           && document.getElementById('conv-name').firstChild?.textContent === {};",
        serde_json::to_string(peer).unwrap()
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        // The row found may be replaced before the click reaches it (a stale element: the
        // driver's error); that is the same lost click, tried again below.
        if let Ok(el) = client.find(Locator::Css(&row)).await {
            let _ = el.click().await;
        }
        let settle = tokio::time::Instant::now() + Duration::from_secs(2);
        while tokio::time::Instant::now() < settle {
            if client.execute(&shown, vec![]).await.ok() == Some(Value::Bool(true)) {
                return;
            }
            tokio::time::sleep(POLL).await;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the conversation with {peer} did not open"
        );
    }
}

/// Replaces the value of the input `css` with `text`, typed as keys.
pub(crate) async fn fill(client: &Client, css: &str, text: &str) {
    client
        .execute(
            &format!("document.querySelector({}).value = '';", json!(css)),
            vec![],
        )
        .await
        .expect("clear the field");
    type_into(client, css, text).await;
}

pub(crate) async fn type_into(client: &Client, css: &str, text: &str) {
    client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("find {css}: {e}"))
        .send_keys(text)
        .await
        .unwrap_or_else(|e| panic!("type into {css}: {e}"));
}

/// Posts one admin question and returns the server's JSON answer (it waits for alice).
pub(crate) async fn ask(
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
pub(crate) async fn scroll_to_end(
    client: &Client,
    to_top: bool,
    prefix: &str,
) -> (f64, String, u64) {
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
pub(crate) async fn first_run_as(client: &Client, name: &str, url: &str) {
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
pub(crate) async fn connect_bob(url: &str) -> MessagingPeer {
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
pub(crate) async fn restart_empty(
    server: lattice_server::ServerHandle,
) -> lattice_server::ServerHandle {
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

pub(crate) async fn dialog_shows(client: &Client, text: &str) {
    let script = format!(
        "const d = document.getElementById('question-dialog'); \
         return d.open && document.getElementById('question-text').textContent === {};",
        serde_json::to_string(text).unwrap()
    );
    until_js(client, &format!("the question {text:?}"), &script).await;
}

/// The axe-core engine (npm `axe-core`, installed at the repository root by
/// `scripts/install-desktop-deps.sh`).
fn axe_source() -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../node_modules/axe-core/axe.min.js");
    std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}: run `npm ci` in the repository root (scripts/install-desktop-deps.sh)",
            path.display()
        )
    })
}

/// Runs axe-core in the real webview on what the window shows now and fails on any serious or
/// critical violation, listing each with the elements concerned. `screen` names it in the output.
pub(crate) async fn assert_accessible(client: &Client, screen: &str) {
    let loaded = client
        .execute("return typeof window.axe === 'object';", vec![])
        .await
        .expect("look for axe");
    if loaded != Value::Bool(true) {
        client
            .execute(&axe_source(), vec![])
            .await
            .expect("inject axe-core");
    }
    let result = client
        .execute_async(
            "const done = arguments[arguments.length - 1];
             axe.run(document, { resultTypes: ['violations'] })
               .then((r) => done({
                 checked: r.passes.length + r.violations.length + r.incomplete.length,
                 violations: r.violations.map((v) => ({
                   id: v.id, impact: v.impact, help: v.help,
                   nodes: v.nodes.slice(0, 5).map((n) => n.target.join(' ')),
                 })),
               }))
               .catch((e) => done({ error: String(e) }));",
            vec![],
        )
        .await
        .expect("run axe-core");
    assert!(
        result["error"].is_null(),
        "axe-core failed on {screen}: {result}"
    );
    let violations = result["violations"].as_array().cloned().unwrap_or_default();
    for v in &violations {
        println!(
            "axe on {screen}: {} ({}) — {}: {}",
            v["id"], v["impact"], v["help"], v["nodes"]
        );
    }
    let serious: Vec<&Value> = violations
        .iter()
        .filter(|v| matches!(v["impact"].as_str(), Some("serious" | "critical")))
        .collect();
    println!(
        "axe on {screen}: {} rules applied, {} violations, {} serious or critical",
        result["checked"],
        violations.len(),
        serious.len()
    );
    assert!(
        serious.is_empty(),
        "serious or critical accessibility violations on {screen}: {serious:#?}"
    );
}

/// Sends WebDriver keys to the element `css` (modifiers such as `\u{E009}` Control stay down until
/// the end of `keys`), so the page's keydown handlers see real key events.
pub(crate) async fn press(client: &Client, css: &str, keys: &str) {
    type_into(client, css, keys).await;
}

/// Sends WebDriver keys to whatever has focus (a selected message is not a form control).
pub(crate) async fn press_focused(client: &Client, keys: &str) {
    client
        .active_element()
        .await
        .expect("the focused element")
        .send_keys(keys)
        .await
        .expect("keys to the focused element");
}

/// Waits for the message dialog titled `title`.
pub(crate) async fn message_dialog(client: &Client, title: &str) {
    let script = format!(
        "return document.getElementById('message-dialog').open \
           && document.getElementById('message-dialog-title').textContent === {};",
        serde_json::to_string(title).unwrap()
    );
    until_js(client, &format!("the dialog {title:?}"), &script).await;
}

/// Focuses the message whose text contains `text` (as the arrow keys would).
pub(crate) async fn select(client: &Client, text: &str) {
    let script = format!(
        "const li = Array.from(document.querySelectorAll('li.msg')) \
           .find(l => l.querySelector('.text')?.textContent.includes({})); \
         if (!li) return false; li.focus(); return document.activeElement === li;",
        serde_json::to_string(text).unwrap()
    );
    until_js(client, &format!("the message {text:?} selected"), &script).await;
}
