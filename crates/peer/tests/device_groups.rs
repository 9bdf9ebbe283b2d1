//! A linked device joins every group and 1:1 conversation of its id, and a removed one is
//! removed from all of them (docs/mls.md, *Multi-device*), through a real `lattice-server` on
//! loopback, real peers and real SQLite: alice approves her laptop and nobody else acts; the
//! laptop reads what bob sends after, and what it sends reaches everyone; removed, it is closed
//! (4001), its leaves are committed away and its saved MLS state cannot open what is sent
//! after. A removal while alice's primary is offline: bob's client removes the unlisted leaf.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use lattice_mls::{MlsClient, MlsStore};
use lattice_peer::{
    Content, Conversation, EventStream, GroupChange, GroupId, LinkedDevice, MessagingPeer,
    PeerError, PeerEvent,
};
use lattice_protocol::ClientId;
use support::devices::{dev, link_device};
use support::groups::{device_change, group_text};
use support::person::Person;
use support::server::*;
use support::*;

/// The laptop online from `linked` (its contacts' pins imported), MLS state at `state`.
async fn laptop_online(
    url: &str,
    linked: LinkedDevice,
    state: &Path,
) -> (MessagingPeer, EventStream) {
    let config = device_config(url, linked, state);
    let p = MessagingPeer::new(config).unwrap();
    let events = p.events();
    p.connect().await.unwrap();
    (p, events)
}

/// bob sends 1:1 texts to alice until `reader` reads one (the laptop joins the conversation
/// on its own; bob's first sends may come before he processed the Commit that added it).
/// Returns the text read.
async fn direct_until_read(bob: &MessagingPeer, reader: &mut EventStream, tag: &str) -> String {
    let deadline = Instant::now() + EVENT_WAIT;
    for n in 0.. {
        assert!(Instant::now() < deadline, "{tag}: never read");
        let text = format!("{tag} {n}");
        bob.send_message(&id("alice"), &text).await.unwrap();
        let got = tokio::time::timeout(
            Duration::from_secs(2),
            wait_for(reader, |e| match e {
                PeerEvent::Message(m) if m.from == id("bob") && m.text.starts_with(tag) => {
                    Some(m.text)
                }
                _ => None,
            }),
        )
        .await;
        if let Ok(t) = got {
            return t;
        }
    }
    unreachable!()
}

/// Both MLS states opened from their files (the peers stopped): what `sender`'s state
/// encrypts in `group` now, `reader`'s saved state cannot open.
fn cannot_read(
    sender: &Path,
    reader: &Path,
    group: &GroupId,
    pins: &[(&str, lattice_crypto::IdentityPublicKey)],
) {
    let pins: Vec<(ClientId, lattice_crypto::IdentityPublicKey)> =
        pins.iter().map(|(c, k)| (id(c), *k)).collect();
    let pin = move |c: &ClientId| pins.iter().find(|(p, _)| p == c).map(|(_, k)| *k);
    let mut s = MlsClient::open(MlsStore::open(sender).unwrap()).unwrap();
    let ct = s.encrypt(group, b"after the removal").unwrap();
    let mut r = MlsClient::open(MlsStore::open(reader).unwrap()).unwrap();
    assert!(r.epoch(group).unwrap() < s.epoch(group).unwrap());
    assert!(r.process(&ct, &pin).is_err(), "the removed device read it");
}

#[tokio::test]
async fn a_linked_laptop_joins_every_conversation_and_a_removed_one_leaves_them_all() {
    let server = spawn_server().await;
    let url = server.url();
    let (a, b, c) = (
        Person::new("alice"),
        Person::new("bob"),
        Person::new("carol"),
    );
    let (alice, mut ae) = a.online(&url).await;
    let (bob, mut be) = b.online(&url).await;
    let (carol, mut ce) = c.online(&url).await;

    // A group, and a 1:1 conversation over MLS with bob.
    let climbing = alice
        .create_group("Climbing", &[id("bob"), id("carol")])
        .await
        .unwrap();
    alice.send_message(&id("bob"), "hi bob").await.unwrap();
    wait_for(&mut be, |e| match e {
        PeerEvent::Message(m) if m.text == "hi bob" => Some(()),
        _ => None,
    })
    .await;
    bob.send_group_content(&climbing, &Content::Text("ready".into()))
        .await
        .unwrap();
    assert_eq!(group_text(&mut ae, &climbing).await.1, "ready");
    assert_eq!(group_text(&mut ce, &climbing).await.1, "ready");

    // alice links her laptop; nobody acts beyond her approval.
    let started = Instant::now();
    let linked = link_device(&url, &alice, "laptop").await;
    let dir = tempfile::tempdir().unwrap();
    let laptop_state = dir.path().join("laptop.mls");
    let (laptop, mut le) = laptop_online(&url, linked, &laptop_state).await;
    let (member, device) = device_change(&mut be, &climbing, true).await;
    assert_eq!((member.as_str(), device.as_str()), ("alice", "laptop"));
    assert_eq!(
        device_change(&mut ce, &climbing, true).await.1,
        dev("laptop")
    );
    assert_eq!(
        device_change(&mut ae, &climbing, true).await.1,
        dev("laptop")
    );
    let joined = wait_for(&mut le, |e| match e {
        PeerEvent::GroupChanged {
            group,
            change: GroupChange::Joined { name, .. },
            ..
        } => Some((group, name)),
        _ => None,
    })
    .await;
    assert_eq!(joined, (climbing.clone(), "Climbing".to_owned()));
    eprintln!("laptop in the group {:?} after approval", started.elapsed());
    assert_eq!(laptop.groups_list().unwrap(), vec![climbing.clone()]);

    // The group: bob's message is read by alice's primary and her laptop; the laptop's reaches
    // bob, carol and the primary, as alice's.
    bob.send_group_content(&climbing, &Content::Text("after the laptop".into()))
        .await
        .unwrap();
    assert_eq!(
        group_text(&mut ae, &climbing).await,
        (id("bob"), "after the laptop".to_owned())
    );
    assert_eq!(
        group_text(&mut le, &climbing).await,
        (id("bob"), "after the laptop".to_owned())
    );
    laptop
        .send_group_content(&climbing, &Content::Text("from the laptop".into()))
        .await
        .unwrap();
    for events in [&mut be, &mut ce] {
        let from = wait_for(events, |e| match e {
            PeerEvent::GroupMessage(m)
                if m.group == climbing
                    && matches!(&m.content, Content::Text(t) if t == "from the laptop") =>
            {
                Some(m.from)
            }
            _ => None,
        })
        .await;
        assert_eq!(from, id("alice"));
    }
    // alice's primary sees it as her own, sent from the laptop.
    let device = wait_for(&mut ae, |e| match e {
        PeerEvent::OwnMessage(m)
            if m.conversation == Conversation::Group(climbing.clone())
                && matches!(&m.content, Content::Text(t) if t == "from the laptop") =>
        {
            Some(m.device)
        }
        _ => None,
    })
    .await;
    assert_eq!(device.as_deref(), Some("laptop"));

    // The 1:1 conversation: the laptop joined it too (still 1:1: a message from bob), and the
    // primary reads the same message.
    let read = direct_until_read(&bob, &mut le, "direct").await;
    wait_for(&mut ae, |e| match e {
        PeerEvent::Message(m) if m.text == read => Some(()),
        _ => None,
    })
    .await;

    // alice removes the laptop: closed with 4001, its leaves committed away everywhere.
    alice.remove_device(&dev("laptop")).await.unwrap();
    wait_for(&mut le, |e| match e {
        PeerEvent::Error(PeerError::DeviceRemoved) => Some(()),
        _ => None,
    })
    .await;
    for events in [&mut be, &mut ce, &mut ae] {
        assert_eq!(
            device_change(events, &climbing, false).await.1,
            dev("laptop")
        );
    }
    bob.send_group_content(&climbing, &Content::Text("without the laptop".into()))
        .await
        .unwrap();
    assert_eq!(group_text(&mut ae, &climbing).await.1, "without the laptop");
    assert_eq!(group_text(&mut ce, &climbing).await.1, "without the laptop");
    // The 1:1 conversation lost the laptop's leaf too: bob's next pass has nothing to do.
    assert_eq!(bob.sync_devices().await.unwrap(), 0);
    assert_eq!(alice.sync_devices().await.unwrap(), 0);
    let direct = direct_until_read(&bob, &mut ae, "after removal").await;
    assert!(direct.starts_with("after removal"));

    // The laptop's saved state cannot open what bob's state sends in the group now.
    laptop.disconnect().await;
    bob.disconnect().await;
    drop((laptop, bob));
    cannot_read(
        &b.state(),
        &laptop_state,
        &climbing,
        &[
            ("alice", a.identity().identity_public_key()),
            ("bob", b.identity().identity_public_key()),
            ("carol", c.identity().identity_public_key()),
        ],
    );
    drop((alice, carol));
}

#[tokio::test]
async fn a_device_removed_while_the_primary_is_offline_is_removed_by_a_contact() {
    let server = spawn_server().await;
    let url = server.url();
    let (a, b, c) = (
        Person::new("alice"),
        Person::new("bob"),
        Person::new("carol"),
    );
    let (alice, _ae) = a.online(&url).await;
    let (bob, mut be) = b.online(&url).await;
    let (carol, mut ce) = c.online(&url).await;
    let climbing = alice
        .create_group("Climbing", &[id("bob"), id("carol")])
        .await
        .unwrap();
    let linked = link_device(&url, &alice, "laptop").await;
    let dir = tempfile::tempdir().unwrap();
    let laptop_state = dir.path().join("laptop.mls");
    let (laptop, mut le) = laptop_online(&url, linked, &laptop_state).await;
    assert_eq!(
        device_change(&mut be, &climbing, true).await.1,
        dev("laptop")
    );
    assert_eq!(
        device_change(&mut ce, &climbing, true).await.1,
        dev("laptop")
    );

    // alice's primary (the one with the MLS state) goes offline; the laptop is removed from
    // the id's list by the identity on a client without MLS: nobody of alice commits.
    alice.disconnect().await;
    drop(alice);
    let (plain, _) = a.without_mls(&url).await;
    plain.remove_device(&dev("laptop")).await.unwrap();
    wait_for(&mut le, |e| match e {
        PeerEvent::Error(PeerError::DeviceRemoved) => Some(()),
        _ => None,
    })
    .await;
    plain.disconnect().await;

    // bob's client sees the newer signed list and removes the laptop's leaf.
    bob.sync_devices().await.unwrap();
    let (member, device) = device_change(&mut be, &climbing, false).await;
    assert_eq!((member.as_str(), device.as_str()), ("alice", "laptop"));
    assert_eq!(
        device_change(&mut ce, &climbing, false).await.1,
        dev("laptop")
    );
    bob.send_group_content(&climbing, &Content::Text("laptop gone".into()))
        .await
        .unwrap();
    assert_eq!(group_text(&mut ce, &climbing).await.1, "laptop gone");

    laptop.disconnect().await;
    bob.disconnect().await;
    drop((laptop, bob, carol));
    cannot_read(
        &b.state(),
        &laptop_state,
        &climbing,
        &[
            ("alice", a.identity().identity_public_key()),
            ("bob", b.identity().identity_public_key()),
            ("carol", c.identity().identity_public_key()),
        ],
    );
}

/// Measurement, not a check (`cargo test -p lattice-peer --test device_groups -- --ignored
/// --nocapture`): the time from alice's approval to her new laptop being in all of N = 1, 5, 20
/// three-member groups (debug build, real server on loopback), and the size of the Commit and
/// Welcome that add a device leaf to such a group.
#[tokio::test]
#[ignore = "measurement: run by hand"]
async fn measure_time_from_approval_to_the_laptop_in_n_groups() {
    for n in [1usize, 5, 20] {
        let server = spawn_server().await;
        let url = server.url();
        let (a, b, c) = (
            Person::new("alice"),
            Person::new("bob"),
            Person::new("carol"),
        );
        let (alice, _ae) = a.online(&url).await;
        let (_bob, _be) = b.online(&url).await;
        let (_carol, _ce) = c.online(&url).await;
        for i in 0..n {
            alice
                .create_group(&format!("g{i}"), &[id("bob"), id("carol")])
                .await
                .unwrap();
        }
        let approved = Instant::now();
        let linked = link_device(&url, &alice, "laptop").await;
        let dir = tempfile::tempdir().unwrap();
        let (laptop, mut le) = laptop_online(&url, linked, &dir.path().join("laptop.mls")).await;
        let online = approved.elapsed();
        for _ in 0..n {
            wait_for(&mut le, |e| match e {
                PeerEvent::GroupChanged {
                    change: GroupChange::Joined { .. },
                    ..
                } => Some(()),
                _ => None,
            })
            .await;
        }
        eprintln!(
            "N = {n:2}: laptop online {online:?} after approval, in all {n} groups {:?} after approval",
            approved.elapsed()
        );
        laptop.disconnect().await;
    }

    // The bytes: alice adds a second client of her id to a group with bob and carol.
    use lattice_mls::{IdentityPins, MlsClient, MlsStore};
    let dir = tempfile::tempdir().unwrap();
    let ids: Vec<lattice_crypto::IdentityKeyPair> = (0..3)
        .map(|_| lattice_crypto::IdentityKeyPair::generate(&mut rand_core::OsRng))
        .collect();
    let names = ["alice", "bob", "carol"];
    let keys: Vec<_> = ids.iter().map(|k| k.public_key()).collect();
    let pins = move |c: &ClientId| names.iter().position(|n| *n == c.as_str()).map(|i| keys[i]);
    let client = |name: &str, k: &lattice_crypto::IdentityKeyPair, file: &str| {
        MlsClient::create(MlsStore::open(dir.path().join(file)).unwrap(), k, id(name)).unwrap()
    };
    let mut alice = client("alice", &ids[0], "a");
    let mut bob = client("bob", &ids[1], "b");
    let mut carol = client("carol", &ids[2], "c");
    let secret = ids[0].secret_bytes();
    let mut laptop = client(
        "alice",
        &lattice_crypto::IdentityKeyPair::from_secret_bytes(&secret),
        "l",
    );
    let g = alice.create_group("g").unwrap();
    let kps: Vec<_> = [&mut bob, &mut carol]
        .into_iter()
        .map(|m| {
            let kp = m.key_packages(1).unwrap().remove(0);
            alice
                .validate_key_package(&kp, &pins as &dyn IdentityPins)
                .unwrap()
        })
        .collect();
    alice.add_members(&g, &kps).unwrap();
    alice.confirm_commit(&g).unwrap();
    let kp = laptop.key_packages(1).unwrap().remove(0);
    let kp = alice.validate_key_package(&kp, &pins).unwrap();
    let out = alice.add_members(&g, &[kp]).unwrap();
    eprintln!(
        "adding a device leaf to a 3-member group: Commit {} bytes, Welcome {} bytes",
        out.commit.len(),
        out.welcome.map_or(0, |w| w.len())
    );
}

#[tokio::test]
async fn leaving_a_group_on_one_device_takes_the_whole_id_out_and_no_device_brings_it_back() {
    let server = spawn_server().await;
    let url = server.url();
    let (a, b) = (Person::new("alice"), Person::new("bob"));
    let (alice, mut ae) = a.online(&url).await;
    let (bob, mut be) = b.online(&url).await;
    let climbing = alice.create_group("Climbing", &[id("bob")]).await.unwrap();
    let linked = link_device(&url, &alice, "laptop").await;
    let dir = tempfile::tempdir().unwrap();
    let (laptop, mut le) = laptop_online(&url, linked, &dir.path().join("laptop.mls")).await;
    assert_eq!(
        device_change(&mut be, &climbing, true).await.1,
        dev("laptop")
    );
    wait_for(&mut le, |e| match e {
        PeerEvent::GroupChanged {
            group,
            change: GroupChange::Joined { .. },
            ..
        } if group == climbing => Some(()),
        _ => None,
    })
    .await;

    // alice leaves on her primary: her laptop's leaf goes first, then her own.
    alice.leave_group(&climbing).await.unwrap();
    wait_for(&mut le, |e| match e {
        PeerEvent::GroupChanged {
            group,
            change: GroupChange::Removed,
            ..
        } if group == climbing => Some(()),
        _ => None,
    })
    .await;
    wait_for(&mut be, |e| match e {
        PeerEvent::GroupChanged {
            group,
            change: GroupChange::MemberRemoved(who),
            ..
        } if group == climbing && who == id("alice") => Some(()),
        _ => None,
    })
    .await;
    wait_for(&mut ae, |e| match e {
        PeerEvent::GroupChanged {
            group,
            change: GroupChange::Removed,
            ..
        } if group == climbing => Some(()),
        _ => None,
    })
    .await;

    // No device of alice's adds her back: after a pass on each (they may still have work in
    // other conversations), neither is in the group and bob's group holds bob alone.
    laptop.sync_devices().await.unwrap();
    alice.sync_devices().await.unwrap();
    assert!(!laptop.groups_list().unwrap().contains(&climbing));
    assert!(!alice.groups_list().unwrap().contains(&climbing));
    let members: Vec<ClientId> = bob
        .group_info(&climbing)
        .unwrap()
        .members
        .into_iter()
        .map(|m| m.client_id)
        .collect();
    assert_eq!(members, vec![id("bob")]);
    drop((alice, bob, laptop));
}
