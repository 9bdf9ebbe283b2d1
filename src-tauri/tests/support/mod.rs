//! A `TestApp`: the real app built on Tauri's mock runtime in a temporary data directory, with a
//! webview to invoke commands through IPC.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use serde_json::{json, Value};
use tauri::ipc::{CallbackFn, InvokeBody};
use tauri::test::{
    get_ipc_response, mock_builder, mock_context, noop_assets, MockRuntime, INVOKE_KEY,
};
use tauri::webview::InvokeRequest;
use tauri::{App, Manager, WebviewWindow, WebviewWindowBuilder};

/// How long a test waits for something that should happen.
pub const WAIT: std::time::Duration = std::time::Duration::from_secs(20);

/// Polls `f` (a command call) until `ok` accepts its result; fails after [`WAIT`].
pub fn eventually(what: &str, mut f: impl FnMut() -> Value, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let v = f();
        if ok(&v) {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}: {v}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A headless peer `name` with a fresh identity, connected and registered at `url`.
pub async fn connect_peer(url: &str, name: &str) -> lattice_peer::MessagingPeer {
    let config = lattice_peer::PeerConfig::new(
        url.to_owned(),
        lattice_protocol::ClientId::new(name).unwrap(),
        lattice_crypto::Identity::generate(&mut rand_core::OsRng),
    );
    let peer = lattice_peer::MessagingPeer::new(config).unwrap();
    peer.connect().await.unwrap();
    peer
}

/// A server URL where nothing listens (port 9, discard, is closed on a test machine): the app
/// keeps retrying in the background, which is what an offline test wants.
pub const UNREACHABLE: &str = "ws://127.0.0.1:9";

/// The app on the mock runtime.
pub struct TestApp {
    // Dropped in this order: the webview, the app (which stops its session), the directory.
    webview: WebviewWindow<MockRuntime>,
    app: App<MockRuntime>,
    dir: Option<tempfile::TempDir>,
}

impl TestApp {
    /// A fresh profile.
    pub fn new() -> Self {
        Self::in_dir(tempfile::tempdir().unwrap())
    }

    /// The app on an existing profile (a "restart").
    pub fn in_dir(dir: tempfile::TempDir) -> Self {
        let options = lattice_desktop::Options {
            data_dir: Some(dir.path().to_owned()),
            headless: true,
            ..Default::default()
        };
        let mut app = lattice_desktop::build(mock_builder(), options)
            .build(mock_context(noop_assets()))
            .expect("the app builds on the mock runtime");
        // Setup runs with the event loop; one (mock) iteration runs it without blocking.
        #[allow(deprecated)]
        app.run_iteration(|_, _| {});
        let webview = WebviewWindowBuilder::new(&app, "main", Default::default())
            .build()
            .expect("a webview");
        Self {
            webview,
            app,
            dir: Some(dir),
        }
    }

    /// A profile that finished first run, connecting to `url`.
    pub fn set_up(name: &str, url: &str) -> Self {
        let app = Self::new();
        app.invoke(
            "complete_setup",
            json!({"clientId": name, "serverMode": "connect", "serverUrl": url}),
        )
        .unwrap();
        app
    }

    /// The webview commands are invoked through.
    pub fn webview(&self) -> &WebviewWindow<MockRuntime> {
        &self.webview
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().unwrap().path()
    }

    /// Stops the app and hands back its data directory.
    pub fn into_dir(mut self) -> tempfile::TempDir {
        let dir = self.dir.take().unwrap();
        tauri::async_runtime::block_on(self.messenger().stop_session());
        drop(self);
        dir
    }

    /// The app's backend (the window events of a real runtime, such as focus, are its methods).
    pub fn messenger(&self) -> std::sync::Arc<lattice_desktop::Messenger> {
        std::sync::Arc::clone(
            self.app
                .state::<std::sync::Arc<lattice_desktop::Messenger>>()
                .inner(),
        )
    }

    /// Invokes a command as the page does; `Ok(value)` or `Err({kind, message})`.
    pub fn invoke(&self, cmd: &str, args: Value) -> Result<Value, Value> {
        get_ipc_response(
            &self.webview,
            InvokeRequest {
                cmd: cmd.into(),
                callback: CallbackFn(0),
                error: CallbackFn(1),
                url: "tauri://localhost".parse().unwrap(),
                body: InvokeBody::Json(args),
                headers: Default::default(),
                invoke_key: INVOKE_KEY.to_string(),
            },
        )
        .map(|body| body.deserialize::<Value>().unwrap())
    }
}

/// Waits until the app is connected and sees every one of `ids` online.
pub fn until_online(app: &TestApp, ids: &[&str]) {
    eventually(
        "connected, the peers online",
        || app.invoke("bootstrap", json!({})).unwrap(),
        |b| {
            b["connection"]["state"] == json!("connected")
                && ids.iter().all(|id| {
                    b["peers"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|p| p["id"] == json!(id) && p["online"] == json!(true))
                })
        },
    );
}

/// The `link` events the app sent to the page.
pub fn link_events(app: &TestApp) -> std::sync::mpsc::Receiver<Value> {
    let (tx, rx) = std::sync::mpsc::channel();
    tauri::Listener::listen_any(
        app.webview().app_handle(),
        lattice_desktop::contract::Event::Link.as_str(),
        move |event| {
            let _ = tx.send(serde_json::from_str::<Value>(event.payload()).unwrap());
        },
    );
    rx
}

/// The next `link` event at `stage`, skipping others.
pub fn next_stage(rx: &std::sync::mpsc::Receiver<Value>, stage: &str) -> Value {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let v = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no link event {stage} in time"));
        if v["stage"] == json!(stage) {
            return v;
        }
    }
}
