//! Files in the real webview: alice pastes a picture (a real `paste` event carrying PNG bytes
//! the page drew on a canvas) and drops a file (a real `drop` event), and bob — headless, with
//! the library — receives both byte for byte and the preview made on alice's side; bob sends a
//! picture back, alice's app shows its preview, downloads it by itself, opens it in the viewer
//! and saves it to the downloads folder byte for byte; a 50 MB file shows its progress bar and
//! arrives; another is cut by quitting the app mid-transfer and finishes after the restart by
//! itself. Each screen is checked with axe-core and photographed.

use std::path::Path;

use lattice_crypto::Identity;
use lattice_peer::{Content, FileMeta, FileOffer, MessagingPeer, PeerConfig, PeerEvent};
use lattice_protocol::{ClientId, MessageId};
use serde_json::{json, Value};

use crate::support::*;

/// Bob's next file offer.
async fn next_offer(events: &mut lattice_peer::EventStream) -> (MessageId, FileOffer) {
    tokio::time::timeout(WAIT, async {
        loop {
            match events.next().await {
                Some(PeerEvent::Message(m)) => {
                    if let Content::File(offer) = m.content {
                        break (m.message_id.expect("an id"), offer);
                    }
                }
                Some(_) => {}
                None => panic!("bob's events ended"),
            }
        }
    })
    .await
    .expect("bob receives a file")
}

/// Bob downloads `offer` to `dest` and waits for it.
async fn bob_downloads(
    bob: &MessagingPeer,
    events: &mut lattice_peer::EventStream,
    id: &MessageId,
    offer: &FileOffer,
    dest: &Path,
) -> Vec<u8> {
    let transfer = bob
        .download_file(&ClientId::new("alice").unwrap(), id, offer, dest)
        .expect("bob's download starts");
    tokio::time::timeout(2 * WAIT, async {
        loop {
            match events.next().await {
                Some(PeerEvent::Transfer(p)) if p.id == transfer => match p.state {
                    lattice_peer::TransferState::Completed => break,
                    lattice_peer::TransferState::Failed(reason) => {
                        panic!("bob's download: {reason}")
                    }
                    _ => {}
                },
                Some(_) => {}
                None => panic!("bob's events ended"),
            }
        }
    })
    .await
    .expect("bob's download completes");
    std::fs::read(dest).unwrap()
}

/// The bytes the page produced (it returns them as an array of numbers).
fn bytes_of(v: &Value) -> Vec<u8> {
    v.as_array()
        .expect("bytes")
        .iter()
        .map(|b| u8::try_from(b.as_u64().unwrap()).unwrap())
        .collect()
}

/// The state of the file of the last message named `name` in the conversation.
fn file_state_is(name: &str, state: &str) -> String {
    format!(
        "const li = Array.from(document.querySelectorAll('li.msg')) \
           .filter(l => l.querySelector('.file-name')?.textContent === {}).pop(); \
         return !!li && li.querySelector('.file')?.dataset.state === {};",
        serde_json::to_string(name).unwrap(),
        serde_json::to_string(state).unwrap()
    )
}

#[tokio::test]
#[ignore = "needs Xvfb, tauri-driver and the app binary: run scripts/e2e-desktop.sh"]
async fn pictures_and_files_go_both_ways_with_previews_progress_and_a_restart() {
    let shots_dir = screenshot_dir();
    std::fs::create_dir_all(&shots_dir).unwrap();
    let mut shots = Shots {
        dir: shots_dir,
        n: 100,
    };
    let server_dir = tempfile::tempdir().unwrap();
    let mut config = lattice_server::Config::for_tests();
    config.data_dir = Some(server_dir.path().to_owned());
    let server = lattice_server::spawn(config).await.expect("server");
    let url = server.url();

    let bob_dir = tempfile::tempdir().unwrap();
    let mut bob_config = PeerConfig::new(
        url.clone(),
        ClientId::new("bob").unwrap(),
        Identity::generate(&mut rand_core::OsRng),
    );
    bob_config.transfers_dir = Some(bob_dir.path().join("transfers"));
    let bob = MessagingPeer::new(bob_config).unwrap();
    let mut bob_events = bob.events();
    bob.connect().await.expect("bob connects");
    let alice = ClientId::new("alice").unwrap();

    let data = tempfile::tempdir().unwrap();
    let downloads = tempfile::tempdir().unwrap();
    let (client, guard) = start_app(data.path()).await;
    first_run_as(&client, "alice", &url).await;
    client
        .execute(
            "return window.__TAURI__.core.invoke('update_settings', \
               { patch: { downloadsFolder: arguments[0] } }).then(() => true);",
            vec![json!(downloads.path().display().to_string())],
        )
        .await
        .expect("the downloads folder set");
    until_js(
        &client,
        "bob online",
        "return !!document.querySelector('li.peer[data-peer-id=\"bob\"][data-online=\"true\"]');",
    )
    .await;
    open_conversation(&client, "bob").await;

    // Alice pastes a picture: the page draws it, the paste event carries its PNG bytes.
    let pasted = client
        .execute_async(
            "const done = arguments[arguments.length - 1];
             const c = document.createElement('canvas'); c.width = 640; c.height = 400;
             const g = c.getContext('2d');
             const grad = g.createLinearGradient(0, 0, 640, 400);
             grad.addColorStop(0, '#2c6bed'); grad.addColorStop(1, '#f5a524');
             g.fillStyle = grad; g.fillRect(0, 0, 640, 400);
             g.fillStyle = '#fff'; g.font = 'bold 64px sans-serif'; g.fillText('Lattice', 180, 220);
             c.toBlob(async (blob) => {
               const bytes = new Uint8Array(await blob.arrayBuffer());
               const dt = new DataTransfer();
               dt.items.add(new File([bytes], 'sunset.png', { type: 'image/png' }));
               const ev = new ClipboardEvent('paste', { clipboardData: dt, bubbles: true, cancelable: true });
               document.getElementById('composer-input').dispatchEvent(ev);
               done(Array.from(bytes));
             }, 'image/png');",
            vec![],
        )
        .await
        .expect("a paste event");
    let pasted = bytes_of(&pasted);
    let (id, offer) = next_offer(&mut bob_events).await;
    assert_eq!(offer.name, "sunset.png");
    let thumb = offer
        .thumbnail
        .clone()
        .expect("a preview made on alice's side");
    assert_eq!((thumb.width, thumb.height), (320, 200));
    let got = bob_downloads(
        &bob,
        &mut bob_events,
        &id,
        &offer,
        &bob_dir.path().join("sunset.png"),
    )
    .await;
    assert_eq!(got, pasted, "bob has the pasted picture byte for byte");
    until_js(
        &client,
        "the sent picture completed",
        &file_state_is("sunset.png", "completed"),
    )
    .await;
    shots.take(&client, "file-picture-sent").await;
    assert_accessible(&client, "a sent picture").await;

    // Alice drops a file into the conversation.
    let dropped = client
        .execute(
            "const text = 'Meeting notes\\n'.repeat(2000);
             const bytes = new TextEncoder().encode(text);
             const dt = new DataTransfer();
             dt.items.add(new File([bytes], 'notes.txt', { type: 'text/plain' }));
             const target = document.getElementById('conversation');
             target.dispatchEvent(new DragEvent('dragover', { dataTransfer: dt, bubbles: true, cancelable: true }));
             target.dispatchEvent(new DragEvent('drop', { dataTransfer: dt, bubbles: true, cancelable: true }));
             return Array.from(bytes);",
            vec![],
        )
        .await
        .expect("a drop event");
    let dropped = bytes_of(&dropped);
    let (id, offer) = next_offer(&mut bob_events).await;
    assert_eq!(offer.name, "notes.txt");
    let got = bob_downloads(
        &bob,
        &mut bob_events,
        &id,
        &offer,
        &bob_dir.path().join("notes.txt"),
    )
    .await;
    assert_eq!(got, dropped);
    until_js(
        &client,
        "the dropped file completed",
        &file_state_is("notes.txt", "completed"),
    )
    .await;
    shots.take(&client, "file-card-sent").await;

    // Bob sends the picture back with its preview: alice sees the preview, it downloads by
    // itself, opens in the viewer and saves byte for byte.
    let back = bob_dir.path().join("from bob.png");
    std::fs::write(&back, &pasted).unwrap();
    bob.send_file(
        &alice,
        &back,
        FileMeta {
            thumbnail: Some(thumb),
            ..FileMeta::default()
        },
    )
    .await
    .expect("bob sends a picture");
    until_js(
        &client,
        "bob's picture downloaded",
        &file_state_is("from bob.png", "completed"),
    )
    .await;
    shots.take(&client, "file-picture-received").await;
    assert_accessible(&client, "a received picture").await;
    client
        .execute(
            "Array.from(document.querySelectorAll('li.msg.in .file-preview')).pop().click(); return true;",
            vec![],
        )
        .await
        .unwrap();
    until_js(
        &client,
        "the viewer",
        "const img = document.getElementById('viewer-image'); \
         return document.getElementById('viewer-dialog').open && img.complete && img.naturalWidth === 640;",
    )
    .await;
    shots.take(&client, "file-viewer").await;
    assert_accessible(&client, "the picture viewer").await;
    click(&client, "#viewer-save").await;
    let saved = downloads.path().join("from bob.png");
    let deadline = tokio::time::Instant::now() + WAIT;
    while std::fs::read(&saved).ok().as_deref() != Some(&pasted[..]) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the picture saved byte for byte"
        );
        tokio::time::sleep(POLL).await;
    }
    click(&client, "#viewer-close").await;

    // A 50 MB file shows its progress and arrives.
    let big: Vec<u8> = (0..50_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let big_path = bob_dir.path().join("dataset.bin");
    std::fs::write(&big_path, &big).unwrap();
    bob.send_file(&alice, &big_path, FileMeta::default())
        .await
        .unwrap();
    until_js(
        &client,
        "the progress bar",
        "const b = Array.from(document.querySelectorAll('.file-progress')).pop(); \
         return !!b && Number(b.getAttribute('aria-valuenow')) > 0;",
    )
    .await;
    shots.take(&client, "file-progress").await;
    assert_accessible(&client, "a transfer in progress").await;
    until_js(
        &client,
        "the 50 MB file arrived",
        &file_state_is("dataset.bin", "completed"),
    )
    .await;
    shots.take(&client, "file-arrived").await;

    // Another is cut by quitting the app mid-transfer; after the restart it finishes by itself.
    let second = bob_dir.path().join("second.bin");
    std::fs::write(&second, &big).unwrap();
    bob.send_file(&alice, &second, FileMeta::default())
        .await
        .unwrap();
    until_js(
        &client,
        "the second download running",
        &file_state_is("second.bin", "running"),
    )
    .await;
    client.close().await.expect("the app quits");
    guard.disarm();
    let (client, guard) = start_app(data.path()).await;
    open_conversation(&client, "bob").await;
    until_js(
        &client,
        "the second file finished after the restart",
        &file_state_is("second.bin", "completed"),
    )
    .await;
    shots.take(&client, "file-after-restart").await;
    let saved = client
        .execute(
            "const li = Array.from(document.querySelectorAll('li.msg')) \
               .filter(l => l.querySelector('.file-name')?.textContent === 'second.bin').pop(); \
             return window.__TAURI__.core.invoke('save_file', { peerId: 'bob', seq: Number(li.dataset.seq) });",
            vec![],
        )
        .await
        .expect("saved");
    assert_eq!(std::fs::read(saved.as_str().unwrap()).unwrap(), big);

    client.close().await.unwrap();
    guard.disarm();
    bob.disconnect().await;
    server.shutdown().await;
}
