//! The app as a **new (linked) device**, in the real webview, with two instances of the app (two
//! tauri-drivers, two data directories, one server) and a headless contact (bob, MLS): the second
//! app chooses *Link to an existing account* on its first-run screen and shows a code and its
//! fingerprint; the code is read from its screen and typed into the first app's *Link a new
//! device*; the fingerprint the first app shows is the one the second shows; Approve links it and
//! the second app opens its conversations as alice's laptop. bob's message reaches both apps; a
//! message the laptop sends shows in the first app as alice's own, outgoing, "from laptop", and
//! the primary's answer shows on the laptop "from primary". The first app removes the laptop,
//! which shows its removed screen. axe-core passes on each new screen; screenshots of each (light,
//! or dark under `GTK_THEME=Adwaita:dark`).

use fantoccini::Client;
use lattice_peer::{MessagingPeer, PeerConfig};
use lattice_protocol::ClientId;

use crate::support::*;

/// bob: a headless peer speaking MLS, with his KeyPackages published.
async fn bob(url: &str, dir: &std::path::Path) -> MessagingPeer {
    let mut config = PeerConfig::new(
        url,
        ClientId::new("bob").unwrap(),
        lattice_crypto::Identity::generate(&mut rand_core::OsRng),
    );
    config.mls_state = Some(dir.join("bob.mls"));
    let bob = MessagingPeer::new(config).unwrap();
    bob.connect().await.expect("bob connects");
    bob.publish_key_packages().await.expect("bob's KeyPackages");
    bob
}

/// Waits until a message of the open conversation containing `text` is shown, on `side`
/// (`in` or `out`); returns its "from" mark (empty when it has none).
async fn until_message(client: &Client, side: &str, text: &str) -> String {
    let script = format!(
        "const li = Array.from(document.querySelectorAll('li.msg.{side}')) \
           .find(l => l.querySelector('.text')?.textContent.includes({})); \
         return li ? (li.querySelector('.from-device')?.textContent ?? '') : false;",
        serde_json::to_string(text).unwrap()
    );
    until_js(client, &format!("the message {text:?}"), &script)
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

async fn until_connected(client: &Client, who: &str) {
    until_js(
        client,
        &format!("{who}'s main window, connected"),
        "return !document.getElementById('app').hidden \
           && document.getElementById('status-bar').dataset.state === 'connected';",
    )
    .await;
}

/// Sends `text` from the composer (typed, then Enter).
async fn send(client: &Client, text: &str) {
    type_into(client, "#composer-input", text).await;
    type_into(client, "#composer-input", "\u{E007}").await;
}

#[tokio::test]
#[ignore = "needs Xvfb, two tauri-drivers and the app binary: run scripts/e2e-desktop.sh"]
async fn a_second_app_links_itself_to_the_first_shares_the_chat_and_shows_its_removal() {
    let mut shots = Shots {
        dir: screenshot_dir(),
        n: 170,
    };
    let server = lattice_server::spawn(lattice_server::Config::for_tests())
        .await
        .expect("server");
    let url = server.url();
    let tmp = tempfile::tempdir().unwrap();
    let bob = bob(&url, tmp.path()).await;

    let (alice_data, laptop_data) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (alice, alice_guard) =
        start_app_on(&env("TAURI_DRIVER_URL"), alice_data.path(), "app-alice.log").await;
    first_run_as(&alice, "alice", &url).await;
    until_connected(&alice, "alice").await;

    // The second app: Link to an existing account.
    let (laptop, laptop_guard) = start_app_on(
        &env("TAURI_DRIVER_URL_2"),
        laptop_data.path(),
        "app-laptop.log",
    )
    .await;
    click(&laptop, "#setup-link").await;
    until_js(
        &laptop,
        "the link form, focus in its first field",
        "return !document.getElementById('link-form').hidden \
           && document.activeElement === document.getElementById('link-server');",
    )
    .await;
    type_into(&laptop, "#link-server", &url).await;
    type_into(&laptop, "#link-account", "alice").await;
    type_into(&laptop, "#link-device", "laptop").await;
    assert_accessible(&laptop, "Link to an existing account").await;
    type_into(&laptop, "#link-device", "\u{E007}").await; // Enter submits
    let code = until_js(
        &laptop,
        "the code on the new device",
        "return !document.getElementById('link-wait').hidden \
           && document.getElementById('link-code').textContent;",
    )
    .await
    .as_str()
    .unwrap()
    .to_owned();
    assert_eq!(code.len(), 9, "4+4, grouped: {code:?}");
    let laptop_fp = laptop
        .execute(
            "return Array.from(document.querySelectorAll('#link-fingerprint span')) \
               .map(s => s.textContent).join(' ');",
            vec![],
        )
        .await
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned();
    shots.take(&laptop, "new-device-code").await;
    assert_accessible(&laptop, "the new device's code").await;

    // The first app: the request, the code typed, the same fingerprint, Approve.
    until_js(
        &alice,
        "the laptop's request",
        "return Array.from(document.querySelectorAll('.toast.link-request')) \
           .some(t => t.textContent.includes('\"laptop\"'));",
    )
    .await;
    click(&alice, ".toast.link-request button.primary").await;
    until_js(
        &alice,
        "the dialog",
        "return document.getElementById('device-link-dialog').open;",
    )
    .await;
    type_into(&alice, "#device-link-code", &code).await;
    type_into(&alice, "#device-link-code", "\u{E007}").await;
    until_js(
        &alice,
        "the fingerprint to compare",
        "return !document.getElementById('device-link-compare-step').hidden;",
    )
    .await;
    let shown = alice
        .execute(
            "return Array.from(document.querySelectorAll('#device-link-fingerprint span')) \
               .map(s => s.textContent).join(' ');",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        shown.as_str().unwrap(),
        laptop_fp,
        "the first app shows the fingerprint the new device shows"
    );
    click(&alice, "#device-link-submit").await;
    until_connected(&laptop, "the laptop").await;

    // bob writes to alice: both apps show it.
    bob.send_message(&ClientId::new("alice").unwrap(), "hello both")
        .await
        .unwrap();
    open_conversation(&alice, "bob").await;
    open_conversation(&laptop, "bob").await;
    until_message(&alice, "in", "hello both").await;
    until_message(&laptop, "in", "hello both").await;

    // The laptop answers: the first app shows it as alice's own, from the laptop.
    send(&laptop, "from my laptop").await;
    assert_eq!(
        until_message(&alice, "out", "from my laptop").await,
        "from laptop"
    );
    // The primary answers: the laptop shows it as its own, from the primary.
    send(&alice, "and from my primary").await;
    assert_eq!(
        until_message(&laptop, "out", "and from my primary").await,
        "from primary"
    );
    shots.take(&laptop, "new-device-conversation").await;
    assert_accessible(&laptop, "the linked device's conversation").await;

    // Settings → Devices on the laptop: read-only, this device marked.
    click(&laptop, "#open-settings").await;
    until_js(
        &laptop,
        "the laptop's devices, read-only",
        "return document.getElementById('settings-dialog').open \
           && !!document.querySelector('#settings-devices li[data-device-id=laptop] .this-device') \
           && document.getElementById('settings-link-device').hidden \
           && !document.querySelector('#settings-devices button');",
    )
    .await;
    click(&laptop, "#settings-cancel").await;

    // The first app removes the laptop: its removed screen.
    click(&alice, "#open-settings").await;
    until_js(
        &alice,
        "the laptop listed",
        "return !!document.querySelector('#settings-devices li[data-device-id=laptop] button');",
    )
    .await;
    click(&alice, "#settings-devices li[data-device-id=laptop] button").await;
    until_js(
        &alice,
        "the remove confirmation",
        "return document.getElementById('device-remove-dialog').open;",
    )
    .await;
    click(&alice, "#device-remove-confirm").await;
    until_js(
        &laptop,
        "the removed screen",
        "return !document.getElementById('removed').hidden \
           && document.getElementById('removed-text').textContent.includes('removed from alice') \
           && document.activeElement === document.getElementById('removed-read');",
    )
    .await;
    shots.take(&laptop, "new-device-removed").await;
    assert_accessible(&laptop, "the removed screen").await;
    // Keep reading: the history, read-only.
    click(&laptop, "#removed-read").await;
    until_js(
        &laptop,
        "the history, read-only",
        "return !document.getElementById('app').hidden \
           && !!document.getElementById('removed-banner');",
    )
    .await;

    alice.close().await.unwrap();
    alice_guard.disarm();
    laptop.close().await.unwrap();
    laptop_guard.disarm();
    bob.disconnect().await;
    server.shutdown().await;
}
