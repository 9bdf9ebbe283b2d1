//! Desktop notifications, end to end over a real D-Bus session bus: a private `dbus-daemon`, the
//! app on the mock runtime with its real notification plugin, and this test in the role a
//! desktop's notification daemon plays (it owns `org.freedesktop.Notifications` and records what
//! it is asked to show). Messages come from a headless peer *bob* through a real `lattice-server`.
//!
//! One test in its own file (its own process): it points `DBUS_SESSION_BUS_ADDRESS` at the
//! private bus before anything reads it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use lattice_protocol::ClientId;
use serde_json::json;
use support::{eventually, TestApp, WAIT};
use tauri::{Listener as _, Manager as _};

/// A private session bus (no service activation: only this test answers on it); killed on drop.
struct Bus(Child);

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_bus(dir: &std::path::Path) -> (Bus, String) {
    let config = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../scripts/dbus-test-session.conf"
    );
    let mut child = Command::new("dbus-daemon")
        .arg(format!("--config-file={config}"))
        .arg("--nofork")
        .arg("--print-address=1")
        .arg(format!("--address=unix:path={}", dir.join("bus").display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("dbus-daemon (Debian package dbus-daemon; scripts/install-deps.sh installs it)");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(!line.trim().is_empty(), "dbus-daemon printed no address");
    (Bus(child), line.trim().to_owned())
}

/// What a notification daemon is asked to show: (summary, body).
struct NotificationServer {
    shown: mpsc::Sender<(String, String)>,
    last_id: u32,
}

#[zbus::interface(name = "org.freedesktop.Notifications")]
impl NotificationServer {
    #[allow(clippy::too_many_arguments)]
    fn notify(
        &mut self,
        _app_name: String,
        _replaces_id: u32,
        _app_icon: String,
        summary: String,
        body: String,
        _actions: Vec<String>,
        _hints: HashMap<String, zbus::zvariant::OwnedValue>,
        _expire_timeout: i32,
    ) -> u32 {
        let _ = self.shown.send((summary, body));
        self.last_id += 1;
        self.last_id
    }

    fn get_capabilities(&self) -> Vec<String> {
        vec!["body".into()]
    }

    fn get_server_information(&self) -> (String, String, String, String) {
        (
            "lattice-test".into(),
            "lattice".into(),
            "1".into(),
            "1.2".into(),
        )
    }

    fn close_notification(&self, _id: u32) {}
}

#[test]
fn a_message_to_an_unfocused_window_is_a_desktop_notification_unless_disabled() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("info")
        .with_test_writer()
        .try_init();
    let bus_dir = tempfile::tempdir().unwrap();
    let (_bus, address) = start_bus(bus_dir.path());
    // Before the app or zbus look for a session bus. This file holds one test: no other thread
    // reads the environment concurrently.
    std::env::set_var("DBUS_SESSION_BUS_ADDRESS", &address);

    let rt = tokio::runtime::Runtime::new().unwrap();
    let (shown_tx, shown) = mpsc::channel();
    let _daemon = rt.block_on(async {
        zbus::connection::Builder::address(address.as_str())
            .unwrap()
            .name("org.freedesktop.Notifications")
            .unwrap()
            .serve_at(
                "/org/freedesktop/Notifications",
                NotificationServer {
                    shown: shown_tx,
                    last_id: 0,
                },
            )
            .unwrap()
            .build()
            .await
            .expect("own org.freedesktop.Notifications on the private bus")
    });

    let server = rt
        .block_on(lattice_server::spawn(lattice_server::Config::for_tests()))
        .unwrap();
    let url = server.url();
    let bob = rt.block_on(support::connect_peer(&url, "bob"));
    let alice = ClientId::new("alice").unwrap();

    let app = TestApp::set_up("alice", &url);
    eventually(
        "bob online",
        || app.invoke("bootstrap", json!({})).unwrap(),
        |b| {
            b["peers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["id"] == json!("bob") && p["online"] == json!(true))
        },
    );
    let messenger = app.messenger();
    // Every message the page is told about. The app decides whether to notify before it tells
    // the page, so once a message's event is here its notification (if any) has been requested.
    // (Waiting until it is stored is not enough: the store comes first, and the focus switched
    // between the two used to make this test flaky under load.)
    let (page_tx, page_rx) = mpsc::channel::<String>();
    app.webview().app_handle().listen_any(
        lattice_desktop::contract::Event::Message.as_str(),
        move |event| {
            let _ = page_tx.send(event.payload().to_owned());
        },
    );
    let send = |text: &str| {
        rt.block_on(bob.send_message(&alice, text)).unwrap();
        let wanted = serde_json::Value::String(text.to_owned());
        loop {
            let payload = page_rx
                .recv_timeout(WAIT)
                .expect("the page told of the message");
            let message: serde_json::Value = serde_json::from_str(&payload).unwrap();
            if message["body"] == wanted && message["outgoing"] != json!(true) {
                break;
            }
        }
    };
    let next_notification = || shown.recv_timeout(WAIT).expect("a notification");

    // The window does not have focus: sender and first line only.
    messenger.set_focused(false);
    send("hello alice\nthe second line stays private");
    assert_eq!(
        next_notification(),
        ("bob".to_owned(), "hello alice".to_owned())
    );

    // While the window has focus there is none (the marker after it is the next one shown).
    messenger.set_focused(true);
    send("seen in the window");
    messenger.set_focused(false);
    send("marker 1");
    assert_eq!(next_notification().1, "marker 1");

    // Notifications switched off in the settings: none, until switched on again.
    app.invoke(
        "update_settings",
        json!({"patch": {"notifications": false}}),
    )
    .unwrap();
    send("quiet");
    app.invoke("update_settings", json!({"patch": {"notifications": true}}))
        .unwrap();
    send("marker 2");
    assert_eq!(next_notification().1, "marker 2");

    drop(app);
    rt.block_on(async {
        bob.disconnect().await;
        server.shutdown().await;
    });
}
