//! Linking devices in the real webview, on the app holding the identity (alice): a new device
//! (a headless library peer on a throwaway id: the app as a *linked* device needs the
//! `linked-peer` branch's linked `MessagingPeer`, not merged yet) asks to be linked; the request
//! raises a toast that opens *Link a new device*; the code it shows is typed (small letters,
//! grouped) and Enter submits; the fingerprint the app shows is the new device's own; Approve
//! links it (the new device gets its bundle); Settings → Devices lists it with that
//! fingerprint; Remove asks first, says what it does, and takes it off the list. A wrong code is
//! a readable message in the dialog and links nothing; Esc closes it. axe-core passes on each
//! new screen; screenshots of each (light, or dark under `GTK_THEME=Adwaita:dark`).

use lattice_peer::{EventStream, LinkEvent, LinkFailure, MessagingPeer, PeerEvent};
use lattice_protocol::{ClientId, DeviceId};
use serde_json::json;

use crate::support::*;

/// A new device: a library peer on a throwaway id, connected.
async fn new_device(url: &str) -> MessagingPeer {
    let config = lattice_peer::PeerConfig::new(
        url,
        ClientId::new(format!(
            "link-{:016x}",
            rand_core::RngCore::next_u64(&mut rand_core::OsRng)
        ))
        .unwrap(),
        lattice_crypto::Identity::generate(&mut rand_core::OsRng),
    );
    let peer = MessagingPeer::new(config).unwrap();
    peer.connect().await.expect("the new device connects");
    peer
}

async fn link_event(events: &mut EventStream) -> LinkEvent {
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some(PeerEvent::Link(l)) = events.next().await {
                break l;
            }
        }
    })
    .await
    .expect("a linking event on the new device")
}

/// The fingerprint the dialog shows, its groups joined by spaces.
async fn shown_fingerprint(client: &fantoccini::Client) -> String {
    client
        .execute(
            "return Array.from(document.querySelectorAll('#device-link-fingerprint span')) \
               .map(s => s.textContent).join(' ');",
            vec![],
        )
        .await
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned()
}

fn grouped(fingerprint: &str) -> String {
    fingerprint.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[tokio::test]
#[ignore = "needs Xvfb, tauri-driver and the app binary: run scripts/e2e-desktop.sh"]
async fn the_app_links_approves_lists_and_removes_a_new_device() {
    let mut shots = Shots {
        dir: screenshot_dir(),
        n: 150,
    };
    let server = lattice_server::spawn(lattice_server::Config::for_tests())
        .await
        .expect("server");
    let url = server.url();
    let data = tempfile::tempdir().unwrap();
    let (client, guard) = start_app(data.path()).await;
    first_run_as(&client, "alice", &url).await;
    until_js(
        &client,
        "the main window, connected",
        "return !document.getElementById('app').hidden \
           && document.getElementById('status-bar').dataset.state === 'connected';",
    )
    .await;
    let alice = ClientId::new("alice").unwrap();

    // A wrong code first: a readable message in the dialog, nothing linked.
    let phone = new_device(&url).await;
    let mut phone_events = phone.events();
    let code = phone
        .start_linking(&alice, DeviceId::new("phone").unwrap())
        .unwrap();
    until_js(
        &client,
        "the link request's toast",
        "return !!document.querySelector('.toast.link-request');",
    )
    .await;
    shots.take(&client, "devices-request").await;
    click(&client, ".toast.link-request button.primary").await;
    until_js(
        &client,
        "the Link a new device dialog, focus in the code field",
        "return document.getElementById('device-link-dialog').open \
           && document.activeElement === document.getElementById('device-link-code');",
    )
    .await;
    let wrong: String = std::iter::once(if code.starts_with('A') { 'B' } else { 'A' })
        .chain(code.chars().skip(1))
        .collect();
    type_into(&client, "#device-link-code", &wrong).await;
    type_into(&client, "#device-link-code", "\u{E007}").await; // Enter submits
    until_js(
        &client,
        "the wrong code's message",
        "const e = document.getElementById('device-link-error'); \
         return !e.hidden && e.textContent.startsWith('The code did not match');",
    )
    .await;
    assert!(matches!(
        link_event(&mut phone_events).await,
        LinkEvent::Failed {
            reason: LinkFailure::WrongCode,
            ..
        }
    ));
    shots.take(&client, "devices-wrong-code").await;
    assert_accessible(&client, "a wrong linking code").await;
    // Esc closes the dialog.
    type_into(&client, "#device-link-code", "\u{E00C}").await;
    until_js(
        &client,
        "the dialog closed by Esc",
        "return !document.getElementById('device-link-dialog').open;",
    )
    .await;
    phone.disconnect().await;

    // The right code: compare, approve.
    let laptop = new_device(&url).await;
    let mut laptop_events = laptop.events();
    let code = laptop
        .start_linking(&alice, DeviceId::new("laptop").unwrap())
        .unwrap();
    until_js(
        &client,
        "the laptop's request",
        "return Array.from(document.querySelectorAll('.toast.link-request')) \
           .some(t => t.textContent.includes('\"laptop\"'));",
    )
    .await;
    click(&client, ".toast.link-request button.primary").await;
    until_js(
        &client,
        "the dialog",
        "return document.getElementById('device-link-dialog').open;",
    )
    .await;
    let typed = format!("{} {}", &code[..4], &code[4..]).to_lowercase();
    type_into(&client, "#device-link-code", &typed).await;
    shots.take(&client, "devices-code").await;
    assert_accessible(&client, "Link a new device").await;
    type_into(&client, "#device-link-code", "\u{E007}").await;
    until_js(
        &client,
        "the fingerprint to compare",
        "return !document.getElementById('device-link-compare-step').hidden \
           && document.getElementById('device-link-device').textContent === 'laptop';",
    )
    .await;
    assert_eq!(
        shown_fingerprint(&client).await,
        grouped(&laptop.linking_fingerprint().unwrap().to_string()),
        "the fingerprint shown is the new device's own"
    );
    shots.take(&client, "devices-compare").await;
    assert_accessible(&client, "comparing the new device's fingerprint").await;
    assert!(
        laptop.take_linked_device().is_none(),
        "nothing before approval"
    );
    click(&client, "#device-link-submit").await;
    assert!(matches!(
        link_event(&mut laptop_events).await,
        LinkEvent::Linked { client_id, device_id }
            if client_id == alice && device_id.as_str() == "laptop"
    ));
    let linked = laptop.take_linked_device().expect("the bundle");
    until_js(
        &client,
        "the dialog closed after approval",
        "return !document.getElementById('device-link-dialog').open;",
    )
    .await;

    // Settings → Devices lists it with the fingerprint of its key.
    click(&client, "#open-settings").await;
    let key_fp = linked.device_key.public_key().fingerprint().to_string();
    let listed = until_js(
        &client,
        "the laptop in Settings → Devices",
        "const li = document.querySelector('#settings-devices li.device[data-device-id=\"laptop\"]'); \
         return li ? li.querySelector('.member-fingerprint').textContent : false;",
    )
    .await;
    assert_eq!(listed, json!(key_fp));
    // Scrolled to the Devices section (again on each poll: the dialog's focus may scroll back).
    until_js(
        &client,
        "the Devices section in view",
        "const title = document.getElementById('settings-devices-title'); \
         let box = title.parentElement; \
         while (box && box.scrollHeight <= box.clientHeight) box = box.parentElement; \
         if (!box) return true; \
         const off = title.getBoundingClientRect().top - box.getBoundingClientRect().top; \
         if (off > 40 && off < 200) return true; \
         box.scrollTop += off - 120; \
         return false;",
    )
    .await;
    shots.take(&client, "devices-list").await;
    assert_accessible(&client, "Settings with a linked device").await;

    // Remove: asked first, with what it does.
    click(
        &client,
        "#settings-devices li.device[data-device-id=\"laptop\"] button",
    )
    .await;
    until_js(
        &client,
        "the removal's confirmation",
        "const d = document.getElementById('device-remove-dialog'); \
         return d.open && document.getElementById('device-remove-name').textContent === 'laptop' \
           && document.getElementById('device-remove-body').textContent.includes('can no longer read new messages');",
    )
    .await;
    shots.take(&client, "devices-remove").await;
    assert_accessible(&client, "removing a device").await;
    click(&client, "#device-remove-confirm").await;
    until_js(
        &client,
        "the list without the laptop",
        "return !document.getElementById('device-remove-dialog').open \
           && document.querySelectorAll('#settings-devices li.device').length === 0 \
           && document.getElementById('settings-devices-status').textContent.startsWith('No other device');",
    )
    .await;

    laptop.disconnect().await;
    client.close().await.unwrap();
    guard.disarm();
    server.shutdown().await;
}
