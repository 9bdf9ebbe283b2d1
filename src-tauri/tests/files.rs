//! Files through the app's commands (the real IPC path of the mock runtime, raw bytes and
//! headers included) against a real `lattice-server` (port 0, blob store on disk) and a headless
//! peer *bob* that sends and downloads files with the library:
//! - alice pastes a picture: bob gets the preview made on alice's side and the same bytes;
//! - bob sends a file: alice's app downloads it by itself, shows it across a restart, and *Save*
//!   copies it byte for byte into the downloads folder, never over a file;
//! - over the auto-download limit a file waits for *Download*; a download paused part-way
//!   stays paused across a restart of the app and then finishes where it stopped; a cancelled
//!   one leaves nothing behind; deleting a file message removes the app's copy;
//! - files dropped on the window are sent once, a folder among them refused;
//! - bad input (a name with a slash, no bytes, an unknown message) gets a readable error.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;

use lattice_peer::{Content, FileMeta, FileOffer, PeerEvent, TransferState};
use lattice_protocol::{ClientId, MessageId};
use serde_json::{json, Value};
use support::{eventually, TestApp, WAIT};
use tauri::ipc::{CallbackFn, InvokeBody};
use tauri::test::{get_ipc_response, INVOKE_KEY};
use tauri::webview::InvokeRequest;

/// A headless peer with a transfers directory (so it can send and receive files).
async fn file_peer(url: &str, name: &str, dir: &Path) -> lattice_peer::MessagingPeer {
    let mut config = lattice_peer::PeerConfig::new(
        url.to_owned(),
        ClientId::new(name).unwrap(),
        lattice_crypto::Identity::generate(&mut rand_core::OsRng),
    );
    config.transfers_dir = Some(dir.join("transfers"));
    let peer = lattice_peer::MessagingPeer::new(config).unwrap();
    peer.connect().await.unwrap();
    peer
}

/// A noisy PNG of `w`×`h` (noise compresses badly: a real-sized file).
fn png(w: u32, h: u32) -> Vec<u8> {
    let mut state = 0x1234_5678_u32;
    let img = image::RgbImage::from_fn(w, h, |_, _| {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let [a, b, c, _] = state.to_le_bytes();
        image::Rgb([a, b, c])
    });
    let mut out = Vec::new();
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

fn random_bytes(len: usize) -> Vec<u8> {
    use rand_core::RngCore as _;
    let mut out = vec![0u8; len];
    rand_core::OsRng.fill_bytes(&mut out);
    out
}

/// `send_file_bytes` as the page calls it: the bytes as the body, the rest in headers.
fn paste(app: &TestApp, peer: &str, name: &str, bytes: Vec<u8>) -> Result<Value, Value> {
    let mut headers = tauri::http::HeaderMap::new();
    headers.insert("x-lattice-peer", peer.parse().unwrap());
    headers.insert(
        "x-lattice-name",
        percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC)
            .to_string()
            .parse()
            .unwrap(),
    );
    get_ipc_response(
        app.webview(),
        InvokeRequest {
            cmd: "send_file_bytes".into(),
            callback: CallbackFn(0),
            error: CallbackFn(1),
            url: "tauri://localhost".parse().unwrap(),
            body: InvokeBody::Raw(bytes),
            headers,
            invoke_key: INVOKE_KEY.to_string(),
        },
    )
    .map(|body| body.deserialize::<Value>().unwrap())
}

/// Bob's next file offer.
async fn next_offer(events: &mut lattice_peer::EventStream) -> (MessageId, FileOffer) {
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some(PeerEvent::Message(m)) = events.next().await {
                if let Content::File(offer) = m.content {
                    break (m.message_id.unwrap(), offer);
                }
            }
        }
    })
    .await
    .expect("bob receives a file")
}

/// Waits until bob's transfer `id` completes.
async fn bob_completes(events: &mut lattice_peer::EventStream, id: &lattice_peer::TransferId) {
    tokio::time::timeout(BIG_WAIT, async {
        loop {
            match events.next().await {
                Some(PeerEvent::Transfer(p)) if &p.id == id => match p.state {
                    TransferState::Completed => break,
                    TransferState::Failed(reason) => panic!("bob's transfer failed: {reason}"),
                    _ => {}
                },
                Some(_) => {}
                None => panic!("bob's events ended"),
            }
        }
    })
    .await
    .expect("bob's transfer completes");
}

/// How long a big transfer may take on a loaded machine (a debug build, other builds running).
const BIG_WAIT: std::time::Duration = std::time::Duration::from_secs(180);

/// Alice's view of the last message from bob, once `ok` accepts it (within [`BIG_WAIT`]: the
/// big files take a while; nothing here measures time).
fn alice_sees(app: &TestApp, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + BIG_WAIT;
    loop {
        let page = app
            .invoke("load_messages", json!({"peerId": "bob"}))
            .unwrap();
        let last = page["messages"].as_array().unwrap().last().cloned();
        if let Some(last) = &last {
            if ok(last) {
                return last.clone();
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}: {}",
            last.map_or(Value::Null, |m| json!({"body": m["body"], "file": {
                "state": m["file"]["state"], "done": m["file"]["done"], "error": m["file"]["error"]
            }}))
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn files_go_both_ways_with_previews_progress_save_and_a_restart() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("info")
        .with_test_writer()
        .try_init();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server_dir = tempfile::tempdir().unwrap();
    let mut config = lattice_server::Config::for_tests();
    config.data_dir = Some(server_dir.path().to_owned());
    let server = rt.block_on(lattice_server::spawn(config)).unwrap();
    let url = server.url();
    let bob_dir = tempfile::tempdir().unwrap();
    let bob = rt.block_on(file_peer(&url, "bob", bob_dir.path()));
    let mut bob_events = bob.events();
    let alice_id = ClientId::new("alice").unwrap();

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
    let downloads = tempfile::tempdir().unwrap();
    app.invoke(
        "update_settings",
        json!({"patch": {"downloadsFolder": downloads.path().to_str().unwrap()}}),
    )
    .unwrap();

    // Bad input: readable errors, nothing sent.
    let bad = paste(&app, "bob", "../etc/passwd", b"x".to_vec()).unwrap_err();
    assert_eq!(bad["kind"], json!("invalidInput"), "{bad}");
    let bad = app
        .invoke("download_file", json!({"peerId": "bob", "seq": 999_999}))
        .unwrap_err();
    assert_eq!(bad["kind"], json!("invalidInput"), "{bad}");
    let bad = app
        .invoke(
            "update_settings",
            json!({"patch": {"downloadsFolder": "relative/dir"}}),
        )
        .unwrap_err();
    assert_eq!(bad["kind"], json!("invalidInput"), "{bad}");

    // Alice pastes a picture: a preview is made on her side; bob gets it and the same bytes.
    let picture = png(900, 600);
    let sent = paste(&app, "bob", "screenshot 1.png", picture.clone()).unwrap();
    assert_eq!(sent["file"]["name"], json!("screenshot 1.png"));
    assert_eq!(sent["file"]["mime"], json!("image/png"));
    assert_eq!(sent["file"]["image"], json!(true));
    assert!(sent["file"]["thumbnail"]
        .as_str()
        .unwrap()
        .starts_with("data:image/"));
    let (message_id, offer) = rt.block_on(next_offer(&mut bob_events));
    assert_eq!(offer.name, "screenshot 1.png");
    assert_eq!(offer.size, picture.len() as u64);
    let thumb = offer.thumbnail.clone().expect("a preview made by alice");
    assert_eq!((thumb.width, thumb.height), (320, 213));
    let dest = bob_dir.path().join("got.png");
    let id = {
        // download_file starts a task: it needs the runtime's context.
        let _runtime = rt.enter();
        bob.download_file(&alice_id, &message_id, &offer, &dest)
            .unwrap()
    };
    rt.block_on(bob_completes(&mut bob_events, &id));
    assert_eq!(std::fs::read(&dest).unwrap(), picture);
    let mine = eventually(
        "alice's upload completed",
        || {
            app.invoke("load_messages", json!({"peerId": "bob"}))
                .unwrap()
        },
        |page| {
            page["messages"].as_array().unwrap().iter().any(|m| {
                // The server's acknowledgement of the file message moves its ticks too.
                m["id"] == sent["id"]
                    && m["file"]["state"] == json!("completed")
                    && m["status"] == json!("delivered")
            })
        },
    );
    assert_eq!(mine["messages"].as_array().unwrap().len(), 1);

    // Files dropped on the window (the window gives their paths to the backend): the page asks
    // to send them; the paths are used once; a folder is refused with a notice, not sent.
    let nothing = app
        .invoke("send_dropped", json!({"peerId": "bob"}))
        .unwrap_err();
    assert_eq!(nothing["kind"], json!("invalidInput"), "{nothing}");
    let drop_dir = tempfile::tempdir().unwrap();
    let notes = random_bytes(70_000);
    std::fs::write(drop_dir.path().join("notes.txt"), &notes).unwrap();
    app.messenger().set_dropped(vec![
        drop_dir.path().join("notes.txt"),
        drop_dir.path().to_owned(),
    ]);
    let sent = app
        .invoke("send_dropped", json!({"peerId": "bob"}))
        .unwrap();
    assert_eq!(sent.as_array().unwrap().len(), 1, "{sent}");
    let (message_id, offer) = rt.block_on(next_offer(&mut bob_events));
    assert_eq!(offer.name, "notes.txt");
    let dest = bob_dir.path().join("notes.txt");
    let id = {
        let _runtime = rt.enter();
        bob.download_file(&alice_id, &message_id, &offer, &dest)
            .unwrap()
    };
    rt.block_on(bob_completes(&mut bob_events, &id));
    assert_eq!(std::fs::read(&dest).unwrap(), notes);
    let again = app
        .invoke("send_dropped", json!({"peerId": "bob"}))
        .unwrap_err();
    assert_eq!(again["kind"], json!("invalidInput"), "used once: {again}");

    // Bob sends a file: alice's app downloads it by itself; Save copies it byte for byte.
    let report = random_bytes(3 * 1024 * 1024 + 17);
    let report_path = bob_dir.path().join("report.bin");
    std::fs::write(&report_path, &report).unwrap();
    rt.block_on(bob.send_file(&alice_id, &report_path, FileMeta::default()))
        .unwrap();
    let got = alice_sees(&app, "bob's file downloaded", |m| {
        m["file"]["name"] == json!("report.bin") && m["file"]["state"] == json!("completed")
    });
    assert_eq!(got["file"]["local"], json!(true));
    assert_eq!(got["file"]["size"], json!(report.len()));
    let seq = got["seq"].clone();
    let saved = app
        .invoke("save_file", json!({"peerId": "bob", "seq": seq}))
        .unwrap();
    assert_eq!(
        std::fs::read(saved.as_str().unwrap()).unwrap(),
        report,
        "saved byte for byte"
    );
    let again = app
        .invoke("save_file", json!({"peerId": "bob", "seq": seq}))
        .unwrap();
    assert!(
        again.as_str().unwrap().ends_with("report (1).bin"),
        "{again}"
    );
    assert_eq!(std::fs::read(saved.as_str().unwrap()).unwrap(), report);
    // Found by name.
    let hits = app
        .invoke("search_messages", json!({"query": "report"}))
        .unwrap();
    assert_eq!(hits["hits"].as_array().map(Vec::len), Some(1), "{hits}");

    // Over the limit, a file waits for Download; quitting mid-download, it finishes after the
    // restart.
    app.invoke(
        "update_settings",
        json!({"patch": {"autoDownloadBytes": 1000}}),
    )
    .unwrap();
    let big = random_bytes(40 * 1024 * 1024 + 5);
    let big_path = bob_dir.path().join("video.bin");
    std::fs::write(&big_path, &big).unwrap();
    rt.block_on(bob.send_file(&alice_id, &big_path, FileMeta::default()))
        .unwrap();
    let offered = alice_sees(&app, "the big file offered", |m| {
        m["file"]["name"] == json!("video.bin") && m["file"]["state"] == json!("offered")
    });
    let big_seq = offered["seq"].clone();
    app.invoke("download_file", json!({"peerId": "bob", "seq": big_seq}))
        .unwrap();
    // Paused part-way (a pause is kept across restarts), the app quits and starts again.
    app.invoke(
        "control_transfer",
        json!({"peerId": "bob", "seq": big_seq, "action": "pause"}),
    )
    .unwrap();
    let paused = alice_sees(&app, "the download paused", |m| {
        m["file"]["state"] == json!("paused")
    });
    assert!(paused["file"]["done"].as_u64().unwrap() < big.len() as u64);
    let dir = app.into_dir();
    let app = TestApp::in_dir(dir);
    alice_sees(&app, "the download still paused after the restart", |m| {
        m["file"]["state"] == json!("paused")
    });
    app.invoke(
        "control_transfer",
        json!({"peerId": "bob", "seq": big_seq, "action": "resume"}),
    )
    .unwrap();
    let done = alice_sees(&app, "the download finished after the restart", |m| {
        m["file"]["name"] == json!("video.bin") && m["file"]["state"] == json!("completed")
    });
    let saved = app
        .invoke("save_file", json!({"peerId": "bob", "seq": done["seq"]}))
        .unwrap();
    assert_eq!(std::fs::read(saved.as_str().unwrap()).unwrap(), big);
    // A download cancelled part-way leaves nothing behind and can be started again.
    rt.block_on(bob.send_file(&alice_id, &big_path, FileMeta::default()))
        .unwrap();
    let offered = alice_sees(&app, "the second big file offered", |m| {
        m["file"]["state"] == json!("offered") && m["seq"] != done["seq"]
    });
    app.invoke(
        "download_file",
        json!({"peerId": "bob", "seq": offered["seq"]}),
    )
    .unwrap();
    app.invoke(
        "control_transfer",
        json!({"peerId": "bob", "seq": offered["seq"], "action": "cancel"}),
    )
    .unwrap();
    alice_sees(&app, "the download cancelled", |m| {
        m["file"]["state"] == json!("cancelled")
    });
    let leftovers: Vec<_> = std::fs::read_dir(app.dir().join("files"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!("{}-", offered["seq"])))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Deleting the message on this device removes the app's copy of its file.
    let kept = std::fs::read_dir(app.dir().join("files"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with("-video.bin"))
        .expect("the download in files/");
    app.invoke(
        "delete_message",
        json!({"peerId": "bob", "seq": done["seq"], "forEveryone": false}),
    )
    .unwrap();
    assert!(!kept.exists(), "{} removed", kept.display());
    assert!(
        std::path::Path::new(saved.as_str().unwrap()).exists(),
        "the saved copy is the person's"
    );
    // The pasted picture is still shown after the restart, with its preview.
    let page = app
        .invoke("load_messages", json!({"peerId": "bob"}))
        .unwrap();
    let first = &page["messages"][0];
    assert_eq!(first["file"]["name"], json!("screenshot 1.png"));
    assert!(first["file"]["thumbnail"].is_string());

    drop(app.into_dir());
    rt.block_on(async {
        bob.disconnect().await;
        server.shutdown().await;
    });
}
