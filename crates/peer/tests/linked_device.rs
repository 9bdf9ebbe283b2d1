//! A linked device as a full `MessagingPeer` of its id, through a real `lattice-server` on
//! loopback, real peers and real SQLite: linked through the real flow, saved to its file and
//! restarted from it; it registers as the id's device, speaks MLS (its own KeyPackages, a group
//! a contact reads as the id's), refuses what needs the identity key or the long-term ML-KEM key
//! with typed errors, and ends for good when the primary removes it. The primary's last signed
//! device list survives its restart, so a stale list a server serves is never the base of the
//! next one. Adversarial: a device file tampered with, or of another id, is refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::sync::Arc;

use lattice_peer::{
    device_file, ConnectionState, Content, EventStream, FileKeyStore, KeyStore as _, MessagingPeer,
    PeerError, PeerEvent, RejectReason,
};
use support::devices::{dev, link_device};
use support::person::Person;
use support::server::*;
use support::*;

/// The laptop of alice, from its file in `dir` (its pins and MLS state beside it).
fn laptop_from(url: &str, dir: &Path) -> Result<MessagingPeer, PeerError> {
    let linked = device_file::load(&dir.join("laptop.device"), &id("alice"))?;
    let mut config = device_config(url, linked, &dir.join("laptop.mls"));
    config.key_store = Arc::new(FileKeyStore::open(&dir.join("laptop.pins"))?);
    MessagingPeer::new(config)
}

async fn group_text(events: &mut EventStream) -> (lattice_protocol::ClientId, String) {
    wait_for(events, |e| match e {
        PeerEvent::GroupMessage(m) => match m.content {
            Content::Text(t) => Some((m.from, t)),
            _ => None,
        },
        _ => None,
    })
    .await
}

#[tokio::test]
async fn a_linked_device_restarted_from_its_file_is_an_mls_peer_of_its_id_until_removed() {
    let server = spawn_server().await;
    let url = server.url();
    let (a, b) = (Person::new("alice"), Person::new("bob"));
    let (alice, mut alice_events) = a.online(&url).await;
    let (bob, mut bob_events) = b.online(&url).await;
    alice.request_public_key(&id("bob")).await.unwrap();

    // Linked, its contacts' pins imported, saved: what lattice-chat does after `/link`.
    let dir = tempfile::tempdir().unwrap();
    let linked = link_device(&url, &alice, "laptop").await;
    let pins = FileKeyStore::open(&dir.path().join("laptop.pins")).unwrap();
    assert_eq!(linked.import_pins(&pins).unwrap(), 1);
    drop(pins);
    let file = dir.path().join("laptop.device");
    device_file::save(&file, &linked).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the device key's secret is in it");
    }
    drop(linked);

    // Restarted from the file: a device of alice, with MLS only.
    let no_mls = device_file::load(&file, &id("alice")).unwrap();
    let refused = MessagingPeer::new(lattice_peer::PeerConfig::for_device(&url, no_mls));
    assert!(matches!(refused, Err(PeerError::InvalidArgument(_))));
    let laptop = laptop_from(&url, dir.path()).unwrap();
    let mut laptop_events = laptop.events();
    laptop.connect().await.unwrap();
    assert!(laptop.is_verified());
    assert_eq!(laptop.client_id(), &id("alice"));
    assert_eq!(laptop.fingerprint(), alice.fingerprint());
    assert!(laptop.publish_key_packages().await.unwrap() > 0);
    let listed: Vec<String> = laptop
        .devices()
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.device_id.to_string())
        .collect();
    assert_eq!(listed, ["laptop"]);

    // What needs the identity key is the primary's.
    assert!(matches!(
        laptop.start_linking(&id("carol"), dev("phone")),
        Err(PeerError::PrimaryOnly { .. })
    ));
    assert!(matches!(
        laptop.remove_device(&dev("laptop")).await,
        Err(PeerError::PrimaryOnly { .. })
    ));
    assert!(matches!(
        laptop.enter_link_code("ABCD-EFGH"),
        Err(PeerError::PrimaryOnly { .. } | PeerError::Crypto(_))
    ));

    // MLS with its own credential chain: bob reads the laptop's group message as alice's.
    let group = laptop.create_group("trip", &[id("bob")]).await.unwrap();
    laptop
        .send_group_content(&group, &Content::Text("from the laptop".into()))
        .await
        .unwrap();
    assert_eq!(
        group_text(&mut bob_events).await,
        (id("alice"), "from the laptop".to_owned())
    );
    bob.send_group_content(&group, &Content::Text("hi laptop".into()))
        .await
        .unwrap();
    assert_eq!(
        group_text(&mut laptop_events).await,
        (id("bob"), "hi laptop".to_owned())
    );

    // No lattice-v1 on a linked device: carol (an older Lattice client, no MLS) gets a typed
    // error, and her lattice-v1 message to alice is read by the primary and dropped here with a
    // typed refusal, acknowledged (not delivered again after a reconnect).
    let c = Person::new("carol");
    let (carol, _) = c.without_mls(&url).await;
    let err = laptop.send_message(&id("carol"), "hi").await.unwrap_err();
    assert!(matches!(err, PeerError::MlsOnlyDevice { .. }), "{err:?}");
    assert!(err.to_string().contains("send from your primary device"));
    let sent = carol
        .send_message(&id("alice"), "old client")
        .await
        .unwrap();
    wait_for(&mut alice_events, |e| match e {
        PeerEvent::Message(m) if m.text == "old client" => Some(()),
        _ => None,
    })
    .await;
    let (mid, reason) = wait_for(&mut laptop_events, |e| match e {
        PeerEvent::Error(PeerError::Rejected {
            message_id, reason, ..
        }) => Some((message_id, reason)),
        _ => None,
    })
    .await;
    assert_eq!(mid, Some(sent.message_id.clone()));
    assert!(matches!(reason, RejectReason::MlsOnlyDevice(ref a) if a == "lattice-v1"));
    laptop.disconnect().await;
    laptop.connect().await.unwrap();
    let second = carol.send_message(&id("alice"), "again").await.unwrap();
    let mid = wait_for(&mut laptop_events, |e| match e {
        PeerEvent::Error(PeerError::Rejected { message_id, .. }) => Some(message_id),
        _ => None,
    })
    .await;
    assert_eq!(
        mid,
        Some(second.message_id),
        "the first one was acknowledged"
    );

    // Removed by the primary: the typed 4001 ending, no reconnect, and not back from its file.
    alice.remove_device(&dev("laptop")).await.unwrap();
    wait_for(&mut laptop_events, |e| match e {
        PeerEvent::Error(PeerError::DeviceRemoved) => Some(()),
        _ => None,
    })
    .await;
    wait_for(&mut laptop_events, |e| match e {
        PeerEvent::ConnectionState(ConnectionState::Disconnected) => Some(()),
        _ => None,
    })
    .await;
    assert_eq!(laptop.connection_state(), ConnectionState::Disconnected);
    drop(laptop);
    let again = laptop_from(&url, dir.path()).unwrap();
    assert_eq!(again.connect().await, Err(PeerError::DeviceRemoved));
}

#[tokio::test]
async fn a_device_file_tampered_with_or_of_another_id_is_refused() {
    let server = spawn_server().await;
    let url = server.url();
    let a = Person::new("alice");
    let (alice, _) = a.online(&url).await;
    let linked = link_device(&url, &alice, "laptop").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("laptop.device");
    device_file::save(&file, &linked).unwrap();
    assert!(device_file::load(&file, &id("alice")).is_ok());

    // Of another id.
    assert!(matches!(
        device_file::load(&file, &id("bob")),
        Err(PeerError::DeviceFile { .. })
    ));
    // Not a device file at all, or of a version this build does not read.
    let text = std::fs::read_to_string(&file).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let write = |v: &serde_json::Value| std::fs::write(&file, v.to_string()).unwrap();
    std::fs::write(&file, "garbage").unwrap();
    assert!(matches!(
        device_file::load(&file, &id("alice")),
        Err(PeerError::DeviceFile { .. })
    ));
    let mut newer = json.clone();
    newer["v"] = 2.into();
    write(&newer);
    assert!(matches!(
        device_file::load(&file, &id("alice")),
        Err(PeerError::DeviceFile { .. })
    ));
    // Tampered with: the id renamed (the certificate names alice), another device key (the
    // certificate is over the linked one), a device list with a changed counter (its signature
    // no longer verifies), another identity key (nothing chains to it).
    let other = new_identity();
    let b64 = |b: &[u8]| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(b)
    };
    let tampered: Vec<(&str, serde_json::Value)> = vec![
        ("clientId", "mallory".into()),
        ("deviceKey", b64(&[7u8; 32]).into()),
        (
            "identityKey",
            b64(other.identity_public_key().as_bytes()).into(),
        ),
        ("deviceId", "phone".into()),
    ];
    for (field, value) in tampered {
        let mut t = json.clone();
        t[field] = value;
        write(&t);
        let expected = if field == "clientId" {
            id("mallory")
        } else {
            id("alice")
        };
        let r = device_file::load(&file, &expected);
        assert!(
            matches!(r, Err(PeerError::DeviceFile { .. })),
            "{field}: {r:?}"
        );
    }
    json["deviceList"]["counter"] = 99.into();
    write(&json);
    assert!(matches!(
        device_file::load(&file, &id("alice")),
        Err(PeerError::DeviceFile { .. })
    ));
}

#[tokio::test]
async fn the_primarys_last_signed_list_survives_its_restart_and_a_stale_served_list() {
    let data = tempfile::tempdir().unwrap();
    let backup = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let alice_identity = new_identity().to_bytes().to_vec();
    let alice_at = |url: &str| {
        let identity = lattice_crypto::Identity::from_bytes(&alice_identity).unwrap();
        let mut config = test_config(url, "alice", identity);
        config.key_store = Arc::new(FileKeyStore::open(&keys.path().join("alice.pins")).unwrap());
        MessagingPeer::new(config).unwrap()
    };
    let names = |devices: Vec<lattice_protocol::DeviceEntry>| -> Vec<String> {
        devices
            .into_iter()
            .map(|d| d.device_id.to_string())
            .collect()
    };

    // The laptop is linked (list 1: laptop); the server's data is backed up then.
    let server = spawn_server_at(0, Some(data.path().to_owned())).await;
    let alice = alice_at(&server.url());
    alice.connect().await.unwrap();
    link_device(&server.url(), &alice, "laptop").await;
    alice.disconnect().await;
    drop(alice);
    server.shutdown().await;
    wait_closed(data.path()).await;
    copy_dir(data.path(), backup.path());

    // The laptop is removed (list 2: empty).
    let server = spawn_server_at(0, Some(data.path().to_owned())).await;
    let alice = alice_at(&server.url());
    alice.connect().await.unwrap();
    alice.remove_device(&dev("laptop")).await.unwrap();
    assert!(alice.devices().await.unwrap().is_empty());
    alice.disconnect().await;
    drop(alice);
    server.shutdown().await;
    wait_closed(data.path()).await;
    let kept = FileKeyStore::open(&keys.path().join("alice.pins"))
        .unwrap()
        .own_device_list()
        .unwrap()
        .expect("kept in the key store");
    assert_eq!(kept.counter, 2);
    assert!(kept.devices.is_empty());

    // The server comes back from the backup: it serves list 1, which still names the laptop.
    // alice, restarted, bases her lists on her own list 2, never on the stale one.
    copy_dir(backup.path(), data.path());
    let server = spawn_server_at(0, Some(data.path().to_owned())).await;
    let alice = alice_at(&server.url());
    alice.connect().await.unwrap();
    let served = alice.request_public_key(&id("alice")).await;
    assert!(served.is_ok());
    assert!(
        alice.devices().await.unwrap().is_empty(),
        "the stale list is not taken"
    );
    link_device(&server.url(), &alice, "phone").await;
    assert_eq!(names(alice.devices().await.unwrap()), ["phone"]);
    let kept = FileKeyStore::open(&keys.path().join("alice.pins"))
        .unwrap()
        .own_device_list()
        .unwrap()
        .unwrap();
    assert_eq!(kept.counter, 3, "based on list 2, not on the served list 1");
    alice.disconnect().await;
    server.shutdown().await;
}

/// Replaces `to`'s files by `from`'s (a server's data directory, stopped), as an operator's
/// backup does: the database files only. The server checkpoints with `TRUNCATE` when it stops, so
/// SQLite's `-wal`/`-shm` side files hold nothing committed, and they vanish whenever the last
/// connection closes (which may be just after `shutdown` returned: copying them raced with that).
fn copy_dir(from: &Path, to: &Path) {
    let side_file = |p: &Path| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with("-wal") || n.ends_with("-shm"))
    };
    for entry in std::fs::read_dir(to).unwrap() {
        let p = entry.unwrap().path();
        let removed = if p.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        if let Err(e) = removed {
            assert!(side_file(&p), "cannot remove {}: {e}", p.display());
        }
    }
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&entry.path(), &target);
        } else if !side_file(&entry.path()) {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Waits (bounded) until SQLite closed every database under `dir`: its last connection deletes
/// the `-wal` file, and a connection closing late would otherwise unlink the next server's.
async fn wait_closed(dir: &Path) {
    let open = |dir: &Path| {
        std::fs::read_dir(dir).unwrap().any(|e| {
            e.unwrap()
                .file_name()
                .to_str()
                .is_some_and(|n| n.ends_with("-wal"))
        })
    };
    for _ in 0..200 {
        if !open(dir) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("a database under {} is still open", dir.display());
}

/// alice's laptop, linked through the real flow and restarted from its file, online with its
/// KeyPackages at the server. Its files live in `dir`.
async fn online_laptop(url: &str, alice: &MessagingPeer, dir: &Path) -> MessagingPeer {
    let linked = link_device(url, alice, "laptop").await;
    let pins = FileKeyStore::open(&dir.join("laptop.pins")).unwrap();
    linked.import_pins(&pins).unwrap();
    device_file::save(&dir.join("laptop.device"), &linked).unwrap();
    let laptop = laptop_from(url, dir).unwrap();
    laptop.connect().await.unwrap();
    assert!(laptop.publish_key_packages().await.unwrap() > 0);
    laptop
}

async fn text_from(events: &mut EventStream) -> (lattice_protocol::ClientId, String) {
    wait_for(events, |e| match e {
        PeerEvent::Message(m) => Some((m.from, m.text)),
        _ => None,
    })
    .await
}

async fn own_message(events: &mut EventStream) -> lattice_peer::OwnMessage {
    wait_for(events, |e| match e {
        PeerEvent::OwnMessage(m) => Some(m),
        _ => None,
    })
    .await
}

#[tokio::test]
async fn a_contact_reaches_every_device_of_an_id_and_the_laptop_writes_as_its_id() {
    use lattice_peer::{Algorithm, Conversation};
    let server = spawn_server().await;
    let url = server.url();
    let (a, b) = (Person::new("alice"), Person::new("bob"));
    let (alice, mut alice_events) = a.online(&url).await;
    let (bob, mut bob_events) = b.online(&url).await;
    alice.request_public_key(&id("bob")).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let laptop = online_laptop(&url, &alice, dir.path()).await;
    let mut laptop_events = laptop.events();

    // bob starts a 1:1 with alice: one MLS conversation with both of her devices, each reads it.
    let sent = bob.send_message(&id("alice"), "hello both").await.unwrap();
    assert_eq!(sent.algorithm, Algorithm::Mls);
    assert_eq!(
        text_from(&mut alice_events).await,
        (id("bob"), "hello both".to_owned())
    );
    assert_eq!(
        text_from(&mut laptop_events).await,
        (id("bob"), "hello both".to_owned())
    );
    assert_eq!(
        laptop.conversation_envelope(&id("bob")),
        Some(Algorithm::Mls)
    );

    // The laptop answers in it: bob reads alice; alice's primary sees her own message, sent
    // from the laptop, and never as a message from anyone.
    laptop
        .send_message(&id("bob"), "from my laptop")
        .await
        .unwrap();
    assert_eq!(
        text_from(&mut bob_events).await,
        (id("alice"), "from my laptop".to_owned())
    );
    let own = own_message(&mut alice_events).await;
    assert_eq!(own.conversation, Conversation::Direct(id("bob")));
    assert_eq!(own.device.as_deref(), Some("laptop"));
    assert_eq!(own.content, Content::Text("from my laptop".into()));
    // And the primary's answer reaches the laptop as alice's own, from the primary.
    alice
        .send_message(&id("bob"), "and from my phone")
        .await
        .unwrap();
    assert_eq!(
        text_from(&mut bob_events).await,
        (id("alice"), "and from my phone".to_owned())
    );
    let own = own_message(&mut laptop_events).await;
    assert_eq!(own.conversation, Conversation::Direct(id("bob")));
    assert_eq!(own.device, None);

    // bob invites alice to a group: both of her devices join and read it.
    let group = bob.create_group("trip", &[id("alice")]).await.unwrap();
    bob.send_group_content(&group, &Content::Text("plans".into()))
        .await
        .unwrap();
    assert_eq!(
        group_text(&mut alice_events).await,
        (id("bob"), "plans".to_owned())
    );
    assert_eq!(
        group_text(&mut laptop_events).await,
        (id("bob"), "plans".to_owned())
    );
    let members = bob.group_info(&group).unwrap().members;
    assert_eq!(members.len(), 2, "one entry per id: {members:?}");
    laptop
        .send_group_content(&group, &Content::Text("count me in".into()))
        .await
        .unwrap();
    assert_eq!(
        group_text(&mut bob_events).await,
        (id("alice"), "count me in".to_owned())
    );
    let own = own_message(&mut alice_events).await;
    assert_eq!(own.conversation, Conversation::Group(group));
    assert_eq!(own.device.as_deref(), Some("laptop"));
}
