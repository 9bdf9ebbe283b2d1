//! Two multi-device details of the device pass (docs/mls.md, *Multi-device*), through a real
//! `lattice-server` on loopback, real peers and real SQLite:
//!
//! - a device that is leaving a group keeps that mark across a restart between its leave
//!   proposal and the Commit of it, so its device pass does not add its other devices back;
//! - a primary that keeps its last signed device list does not ask the server for its own list
//!   on every reconnect (frames counted at a proxy in front of the real server), while a linked
//!   device still does (the primary changes the list).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::{Arc, Mutex};

use futures_util::{SinkExt as _, StreamExt as _};
use lattice_peer::{EventStream, FileKeyStore, GroupChange, GroupId, MessagingPeer, PeerEvent};
use support::devices::link_device;
use support::groups::joined;
use support::person::Person;
use support::server::*;
use support::*;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

async fn removed(events: &mut EventStream, g: &GroupId) {
    wait_for(events, |e| match e {
        PeerEvent::GroupChanged {
            group,
            change: GroupChange::Removed,
            ..
        } if &group == g => Some(()),
        _ => None,
    })
    .await;
}

/// A WebSocket proxy on loopback in front of a real server that records every frame its
/// clients send.
struct CountingProxy {
    url: String,
    sent: Arc<Mutex<Vec<serde_json::Value>>>,
    accept: JoinHandle<()>,
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl CountingProxy {
    async fn start(backend: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}", listener.local_addr().unwrap());
        let sent: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
        let log = Arc::clone(&sent);
        let accept = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (backend, log) = (backend.clone(), Arc::clone(&log));
                tokio::spawn(async move {
                    let Ok(client) = tokio_tungstenite::accept_async(tcp).await else {
                        return;
                    };
                    let Ok((server, _)) = tokio_tungstenite::connect_async(backend.as_str()).await
                    else {
                        return;
                    };
                    let (mut to_client, mut from_client) = client.split();
                    let (mut to_server, mut from_server) = server.split();
                    let up = async {
                        while let Some(Ok(m)) = from_client.next().await {
                            if m.is_text() {
                                if let Ok(v) = serde_json::from_str(m.to_text().unwrap()) {
                                    log.lock().unwrap().push(v);
                                }
                            }
                            if to_server.send(m).await.is_err() {
                                break;
                            }
                        }
                        let _ = to_server.close().await;
                    };
                    let down = async {
                        while let Some(Ok(m)) = from_server.next().await {
                            if to_client.send(m).await.is_err() {
                                break;
                            }
                        }
                        let _ = to_client.close().await;
                    };
                    tokio::select! {
                        () = up => {}
                        () = down => {}
                    }
                });
            }
        });
        Self { url, sent, accept }
    }

    /// How many `request_public_key` frames for `target` its clients sent.
    fn key_requests_for(&self, target: &str) -> usize {
        self.sent
            .lock()
            .unwrap()
            .iter()
            .filter(|f| f["type"] == "request_public_key" && f["payload"]["targetId"] == target)
            .count()
    }

    fn frames(&self) -> usize {
        self.sent.lock().unwrap().len()
    }
}

#[tokio::test]
async fn a_device_leaving_a_group_does_not_add_its_devices_back_after_a_restart() {
    let server = spawn_server().await;
    let url = server.url();
    let (a, b) = (Person::new("alice"), Person::new("bob"));
    let (alice, _ae) = a.online(&url).await;
    let (bob, mut be) = b.online(&url).await;
    let g = alice.create_group("two", &[id("bob")]).await.unwrap();
    joined(&mut be).await;

    // alice's laptop joins the group.
    let linked = link_device(&url, &alice, "laptop").await;
    let dir = tempfile::tempdir().unwrap();
    let laptop =
        MessagingPeer::new(device_config(&url, linked, &dir.path().join("laptop.mls"))).unwrap();
    let mut le = laptop.events();
    laptop.connect().await.unwrap();
    assert_eq!(joined(&mut le).await, g);

    // bob (who would commit alice's leave) is away; alice leaves: her laptop's leaf is
    // committed away and her leave proposal waits for bob.
    bob.disconnect().await;
    drop(bob);
    alice.leave_group(&g).await.unwrap();
    removed(&mut le, &g).await;

    // alice restarts before bob commits her leave: her device pass adds nothing to the group
    // she is leaving (without the kept mark it would add the laptop back).
    alice.disconnect().await;
    drop(alice);
    let (alice, mut ae) = a.online(&url).await;
    assert_eq!(alice.sync_devices().await.unwrap(), 0);

    // bob comes back and commits the leave: he sees no device of alice's added before it,
    // alice is out, and so is her laptop.
    let (_bob, mut be) = b.online(&url).await;
    none_before(
        &mut be,
        |e| {
            matches!(
                e,
                PeerEvent::GroupChanged {
                    change: GroupChange::DeviceAdded { .. } | GroupChange::MembersAdded(_),
                    ..
                }
            )
        },
        |e| match e {
            PeerEvent::GroupChanged {
                change: GroupChange::MemberRemoved(who),
                ..
            } if *who == id("alice") => Some(()),
            _ => None,
        },
    )
    .await;
    removed(&mut ae, &g).await;
    assert!(alice.groups_list().unwrap().is_empty());
    assert!(laptop.groups_list().unwrap().is_empty());
    assert_eq!(alice.sync_devices().await.unwrap(), 0);
    laptop.disconnect().await;
}

#[tokio::test]
async fn a_reconnecting_primary_that_keeps_its_list_does_not_fetch_it_and_a_linked_device_does() {
    let server = spawn_server().await;
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let identity = new_identity().to_bytes().to_vec();
    let alice_via = |url: &str| {
        let mut config = test_config(
            url,
            "alice",
            lattice_crypto::Identity::from_bytes(&identity).unwrap(),
        );
        config.key_store = Arc::new(FileKeyStore::open(&dir.path().join("alice.pins")).unwrap());
        config.mls_state = Some(dir.path().join("alice.mls"));
        MessagingPeer::new(config).unwrap()
    };

    // alice links her laptop: she keeps the list she signed.
    let alice = alice_via(&url);
    alice.connect().await.unwrap();
    alice.publish_key_packages().await.unwrap();
    let linked = link_device(&url, &alice, "laptop").await;
    alice.disconnect().await;
    drop(alice);

    // Restarted behind a proxy that counts what she sends: registered, a device pass (the one
    // after registration and one more), and no request for her own list.
    let proxy = CountingProxy::start(url.clone()).await;
    let alice = alice_via(&proxy.url);
    let mut ae = alice.events();
    alice.connect().await.unwrap();
    wait_for(&mut ae, |e| match e {
        PeerEvent::Registered { .. } => Some(()),
        _ => None,
    })
    .await;
    alice.sync_devices().await.unwrap();
    assert!(proxy.frames() > 0, "the proxy saw her frames");
    assert_eq!(proxy.key_requests_for("alice"), 0);
    // Her kept list is still what she knows.
    let devices: Vec<String> = alice
        .devices()
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.device_id.to_string())
        .collect();
    assert_eq!(devices, ["laptop"]);

    // The laptop, behind its own proxy, fetches its id's list: the primary changes it.
    let laptop_proxy = CountingProxy::start(url.clone()).await;
    let laptop_dir = tempfile::tempdir().unwrap();
    let laptop = MessagingPeer::new(device_config(
        &laptop_proxy.url,
        linked,
        &laptop_dir.path().join("laptop.mls"),
    ))
    .unwrap();
    laptop.connect().await.unwrap();
    laptop.sync_devices().await.unwrap();
    assert!(laptop_proxy.key_requests_for("alice") > 0);
    laptop.disconnect().await;
    alice.disconnect().await;
}
