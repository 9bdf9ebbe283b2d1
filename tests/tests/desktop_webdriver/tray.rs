//! The tray, through the StatusNotifierItem protocol: unread count, show/hide, quit.

use std::time::Duration;

use lattice_crypto::Identity;
use lattice_peer::{MessagingPeer, PeerConfig};
use lattice_protocol::ClientId;

use crate::support::*;

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
