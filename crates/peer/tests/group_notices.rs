//! Read receipts and typing notices in MLS groups, through a real `lattice-server` on loopback,
//! real peers through the public `MessagingPeer` API and real SQLite MLS state: receipts reach
//! the other members naming the reader and the message, only move forward and follow the
//! read-receipt setting; a receipt forged by a member (for a message of another group, or of no
//! group) is refused; typing reaches the others and ends by itself; a receipt sent from our own
//! linked laptop comes up on the primary as "read elsewhere", never as a member's receipt.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use base64::Engine as _;
use lattice_mls::{MlsClient, MlsStore};
use lattice_peer::{
    EventStream, GroupId, MessageRef, MessagingPeer, PeerError, PeerEvent, WaitOptions,
};
use lattice_protocol::{ClientFrame, GroupMessage as GroupMessageFrame, MessageId};
use support::devices::link_device;
use support::groups::{joined, say};
use support::person::Person;
use support::server::*;
use support::*;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Waits until `events` has the group message `mid`.
async fn got(events: &mut EventStream, mid: &MessageId) {
    wait_for(events, |e| match e {
        PeerEvent::GroupMessage(m) if &m.message_id == mid => Some(()),
        PeerEvent::Error(e) => panic!("unexpected error {e:?}"),
        _ => None,
    })
    .await;
}

fn to(sender: &str, message_id: &MessageId) -> MessageRef {
    MessageRef {
        sender: id(sender),
        message_id: message_id.clone(),
    }
}

/// The next group read receipt: (group, member, device, up to).
async fn next_read(events: &mut EventStream) -> (GroupId, String, Option<String>, MessageRef) {
    wait_for(events, |e| match e {
        PeerEvent::GroupRead {
            group,
            member,
            device,
            up_to,
        } => Some((group, member.to_string(), device, up_to)),
        PeerEvent::GroupReadElsewhere { .. } => panic!("unexpected {e:?}"),
        PeerEvent::Error(e) => panic!("unexpected error {e:?}"),
        _ => None,
    })
    .await
}

fn is_read(e: &PeerEvent) -> bool {
    matches!(
        e,
        PeerEvent::GroupRead { .. } | PeerEvent::GroupReadElsewhere { .. }
    )
}

/// Waits for the group message `mid`, asserting that no read receipt comes before it.
async fn no_read_before(events: &mut EventStream, mid: &MessageId) {
    none_before(events, is_read, |e| match e {
        PeerEvent::GroupMessage(m) if &m.message_id == mid => Some(()),
        _ => None,
    })
    .await;
}

/// The next group typing event: (group, member, started).
async fn typing(events: &mut EventStream) -> (GroupId, String, bool) {
    wait_for(events, |e| match e {
        PeerEvent::GroupTyping {
            group,
            member,
            started,
        } => Some((group, member.to_string(), started)),
        PeerEvent::Error(e) => panic!("unexpected error {e:?}"),
        _ => None,
    })
    .await
}

fn now_ms() -> u64 {
    u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

#[tokio::test]
async fn read_receipts_reach_the_other_members_move_forward_only_and_follow_the_setting() {
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
    let g = alice
        .create_group("friends", &[id("bob"), id("carol")])
        .await
        .unwrap();
    joined(&mut be).await;
    joined(&mut ce).await;
    let m1 = say(&alice, &g, "one").await;
    let m2 = say(&alice, &g, "two").await;
    for e in [&mut be, &mut ce] {
        got(e, &m1).await;
        got(e, &m2).await;
    }

    // bob read up to m2: one receipt, which alice and carol get naming bob and m2.
    assert!(bob.mark_group_read(&g, &to("alice", &m2)).await.unwrap());
    for e in [&mut ae, &mut ce] {
        assert_eq!(
            next_read(e).await,
            (g.clone(), "bob".to_owned(), None, to("alice", &m2))
        );
    }
    // Backwards or again: nothing is sent.
    assert!(!bob.mark_group_read(&g, &to("alice", &m1)).await.unwrap());
    assert!(!bob.mark_group_read(&g, &to("alice", &m2)).await.unwrap());
    // A message the group does not have: refused before anything is sent.
    let err = bob
        .mark_group_read(&g, &to("alice", &MessageId::new("no-such").unwrap()))
        .await
        .unwrap_err();
    assert!(matches!(err, PeerError::InvalidArgument(_)), "{err:?}");

    // carol turns read receipts off: she sends none and is shown none.
    carol.set_read_receipts(false);
    assert!(!carol.mark_group_read(&g, &to("alice", &m2)).await.unwrap());
    let m3 = say(&alice, &g, "three").await;
    got(&mut be, &m3).await;
    got(&mut ce, &m3).await;
    assert!(bob.mark_group_read(&g, &to("alice", &m3)).await.unwrap());
    assert_eq!(
        next_read(&mut ae).await,
        (g.clone(), "bob".to_owned(), None, to("alice", &m3))
    );
    // bob's marker after his receipt: carol sees the marker and no receipt before it; alice
    // sees no receipt from carol before it.
    let marker = say(&bob, &g, "marker").await;
    no_read_before(&mut ce, &marker).await;
    no_read_before(&mut ae, &marker).await;

    // carol's own message, read by bob: alice gets it (a receipt may name any member's).
    let hers = say(&carol, &g, "carol here").await;
    got(&mut be, &hers).await;
    got(&mut ae, &hers).await;
    assert!(bob.mark_group_read(&g, &to("carol", &hers)).await.unwrap());
    assert_eq!(
        next_read(&mut ae).await,
        (g.clone(), "bob".to_owned(), None, to("carol", &hers))
    );
}

#[tokio::test]
async fn a_forged_read_receipt_for_another_groups_message_or_none_is_refused() {
    let server = spawn_server().await;
    let url = server.url();
    let (a, m) = (Person::new("alice"), Person::new("mallory"));
    let (alice, mut ae) = a.online(&url).await;
    let (g, other, in_g, in_other) = {
        let (mallory, mut me) = m.online(&url).await;
        let g = alice.create_group("one", &[id("mallory")]).await.unwrap();
        joined(&mut me).await;
        let other = alice.create_group("two", &[id("mallory")]).await.unwrap();
        joined(&mut me).await;
        let in_g = say(&alice, &g, "in one").await;
        let in_other = say(&alice, &other, "in two").await;
        got(&mut me, &in_g).await;
        got(&mut me, &in_other).await;
        mallory.disconnect().await;
        (g, other, in_g, in_other)
    };

    // mallory's own engine: real MLS messages of a member, with plaintexts of her choosing.
    let mut engine = MlsClient::open(MlsStore::open(m.state()).unwrap()).unwrap();
    let t = now_ms();
    let mut seal_at = |mid: &str, kind: &str, body: serde_json::Value, at: u64| {
        let p = serde_json::json!({
            "messageId": mid, "kind": kind, "body": body.to_string(), "sentAt": at
        });
        (
            mid.to_owned(),
            engine
                .encrypt(&g, &serde_json::to_vec(&p).unwrap())
                .unwrap(),
        )
    };
    let read = |sender: &str, mid: &MessageId| serde_json::json!({ "upTo": { "sender": sender, "messageId": mid.as_str() } });
    let sealed = [
        // The message of another group, named in this one.
        seal_at("r1", "group-read", read("alice", &in_other), t),
        // A message nobody sent.
        seal_at(
            "r2",
            "group-read",
            read("alice", &MessageId::new("nothing").unwrap()),
            t,
        ),
        // alice's message, but named as mallory's.
        seal_at("r3", "group-read", read("mallory", &in_g), t),
        // Not a receipt body.
        seal_at(
            "r4",
            "group-read",
            serde_json::json!({ "upTo": "everything" }),
            t,
        ),
        // A typing notice that waited a minute in the mailbox: not shown.
        seal_at(
            "t1",
            "typing",
            serde_json::json!({ "started": true }),
            t - 60_000,
        ),
        // The real one.
        seal_at("r5", "group-read", read("alice", &in_g), t),
    ];
    drop(engine);
    let (raw, _events) = m.without_mls(&url).await;
    let wire_group = lattice_protocol::GroupId::new(g.to_string()).unwrap();
    for (mid, bytes) in sealed {
        raw.send_to_server_and_wait(
            ClientFrame::GroupMessage(GroupMessageFrame {
                group_id: wire_group.clone(),
                message: B64.encode(bytes),
                message_id: Some(MessageId::new(mid).unwrap()),
            }),
            "group_message",
            WaitOptions::default(),
        )
        .await
        .unwrap();
    }
    raw.disconnect().await;

    let mut refusals = Vec::new();
    let up_to = wait_for(&mut ae, |e| match e {
        PeerEvent::Error(PeerError::GroupRejected {
            group,
            from,
            reason,
        }) => {
            assert_eq!(group.as_deref(), Some(g.to_string().as_str()));
            assert_eq!(from, id("mallory"));
            refusals.push(reason);
            None
        }
        PeerEvent::GroupRead {
            group,
            member,
            device,
            up_to,
        } => {
            assert_eq!((group, member, device), (g.clone(), id("mallory"), None));
            Some(up_to)
        }
        PeerEvent::GroupTyping { .. } => panic!("a stale typing notice was shown: {e:?}"),
        PeerEvent::Error(e) => panic!("unexpected error {e:?}"),
        _ => None,
    })
    .await;
    assert_eq!(up_to, to("alice", &in_g), "only the real receipt");
    assert_eq!(refusals.len(), 4, "{refusals:?}");
    for r in &refusals[..3] {
        assert!(r.contains("no message of this group"), "{r}");
    }
    assert!(refusals[3].contains("malformed"), "{}", refusals[3]);
    // The other group was not touched by any of it.
    let _ = other;
}

#[tokio::test]
async fn typing_reaches_the_other_members_and_ends_by_itself() {
    let server = spawn_server().await;
    let url = server.url();
    let (a, b, c) = (
        Person::new("alice"),
        Person::new("bob"),
        Person::new("carol"),
    );
    let (alice, mut ae) = a.online(&url).await;
    let (bob, mut be) = b.online(&url).await;
    let (_carol, mut ce) = c.online(&url).await;
    let g = alice
        .create_group("friends", &[id("bob"), id("carol")])
        .await
        .unwrap();
    joined(&mut be).await;
    joined(&mut ce).await;

    // bob types: "started" goes once (a second right away is dropped by the rate bound).
    assert!(bob.group_typing(&g, true).await.unwrap());
    assert!(!bob.group_typing(&g, true).await.unwrap());
    for e in [&mut ae, &mut ce] {
        assert_eq!(typing(e).await, (g.clone(), "bob".to_owned(), true));
        // He never says he stopped: it ends by itself.
        assert_eq!(typing(e).await, (g.clone(), "bob".to_owned(), false));
    }
    // His "stopped" now changes nothing for them (already ended); it was still sent once.
    assert!(bob.group_typing(&g, false).await.unwrap());
    assert!(
        !bob.group_typing(&g, false).await.unwrap(),
        "only after a start"
    );

    // alice types and stops: bob sees both; alice never sees her own.
    assert!(alice.group_typing(&g, true).await.unwrap());
    assert!(alice.group_typing(&g, false).await.unwrap());
    assert_eq!(typing(&mut be).await, (g.clone(), "alice".to_owned(), true));
    assert_eq!(
        typing(&mut be).await,
        (g.clone(), "alice".to_owned(), false)
    );
    // bob types again and sends: his message ends his typing for them, before the message.
    assert!(bob.group_typing(&g, true).await.unwrap());
    assert_eq!(typing(&mut ae).await, (g.clone(), "bob".to_owned(), true));
    let sent = say(&bob, &g, "typed it").await;
    assert_eq!(typing(&mut ae).await, (g.clone(), "bob".to_owned(), false));
    got(&mut ae, &sent).await;
    let marker = say(&bob, &g, "marker").await;
    none_before(
        &mut ae,
        |e| matches!(e, PeerEvent::GroupTyping { .. }),
        |e| match e {
            PeerEvent::GroupMessage(m) if m.message_id == marker => Some(()),
            _ => None,
        },
    )
    .await;
}

#[tokio::test]
async fn a_receipt_from_our_own_linked_laptop_is_read_elsewhere_on_the_primary() {
    let server = spawn_server().await;
    let url = server.url();
    let (a, b) = (Person::new("alice"), Person::new("bob"));
    let (alice, mut ae) = a.online(&url).await;
    let (bob, mut be) = b.online(&url).await;
    let g = alice.create_group("two", &[id("bob")]).await.unwrap();
    joined(&mut be).await;

    let linked = link_device(&url, &alice, "laptop").await;
    let dir = tempfile::tempdir().unwrap();
    let laptop =
        MessagingPeer::new(device_config(&url, linked, &dir.path().join("laptop.mls"))).unwrap();
    let mut le = laptop.events();
    laptop.connect().await.unwrap();
    assert_eq!(joined(&mut le).await, g);

    // bob writes until the laptop reads one (bob's first sends may come before he processed
    // the Commit that added it).
    let mut read_by_laptop = None;
    for n in 0..20 {
        let mid = say(&bob, &g, &format!("hello {n}")).await;
        let got_it = tokio::time::timeout(std::time::Duration::from_secs(2), got(&mut le, &mid));
        if got_it.await.is_ok() {
            read_by_laptop = Some(mid);
            break;
        }
    }
    let mid = read_by_laptop.expect("the laptop never read bob's message");
    got(&mut ae, &mid).await;

    // alice reads it on the laptop: the primary learns it was read elsewhere (to clear its
    // unread count), bob gets alice's receipt from her laptop.
    assert!(laptop.mark_group_read(&g, &to("bob", &mid)).await.unwrap());
    let (group, device, up_to) = wait_for(&mut ae, |e| match e {
        PeerEvent::GroupReadElsewhere {
            group,
            device,
            up_to,
        } => Some((group, device, up_to)),
        PeerEvent::GroupRead { .. } => panic!("our own device as a member: {e:?}"),
        _ => None,
    })
    .await;
    assert_eq!(
        (group, device.as_deref(), up_to),
        (g.clone(), Some("laptop"), to("bob", &mid))
    );
    assert_eq!(
        next_read(&mut be).await,
        (
            g.clone(),
            "alice".to_owned(),
            Some("laptop".to_owned()),
            to("bob", &mid)
        )
    );
    // The primary has nothing newer to say.
    assert!(!alice.mark_group_read(&g, &to("bob", &mid)).await.unwrap());
}

/// Measurement, not a check (`cargo test -p lattice-peer --test group_notices -- --ignored
/// --nocapture`): the size of the MLS application message of a group read receipt and of a
/// typing notice, side by side with a one-word text, in a three-member group (real engines and
/// SQLite; plaintexts as `lattice-peer` writes them).
#[test]
#[ignore = "measurement: run by hand"]
fn measure_the_size_of_a_group_receipt_and_typing_notice() {
    let dir = tempfile::tempdir().unwrap();
    let people: Vec<(String, lattice_crypto::Identity)> = ["alice", "bob", "carol"]
        .iter()
        .map(|n| ((*n).to_owned(), new_identity()))
        .collect();
    let keys: Vec<(String, lattice_crypto::IdentityPublicKey)> = people
        .iter()
        .map(|(n, i)| (n.clone(), i.identity_public_key()))
        .collect();
    let pins = move |c: &lattice_protocol::ClientId| {
        keys.iter().find(|(n, _)| n == c.as_str()).map(|(_, k)| *k)
    };
    let mut engines: Vec<MlsClient> = people
        .iter()
        .map(|(n, i)| {
            MlsClient::create(
                MlsStore::open(dir.path().join(format!("{n}.mls"))).unwrap(),
                i.identity_key(),
                id(n),
            )
            .unwrap()
        })
        .collect();
    let kps: Vec<Vec<u8>> = engines[1..]
        .iter_mut()
        .map(|e| e.key_packages(1).unwrap().remove(0))
        .collect();
    let alice = &mut engines[0];
    let validated: Vec<_> = kps
        .iter()
        .map(|k| alice.validate_key_package(k, &pins).unwrap())
        .collect();
    let g = alice.create_group("friends").unwrap();
    alice.add_members(&g, &validated).unwrap();
    alice.confirm_commit(&g).unwrap();
    let plaintext = |kind: &str, body: String| {
        serde_json::to_vec(&serde_json::json!({
            "messageId": uuid::Uuid::new_v4().to_string(), "kind": kind, "body": body,
            "sentAt": now_ms()
        }))
        .unwrap()
    };
    let up_to = serde_json::json!({ "upTo": { "sender": "bob", "messageId": uuid::Uuid::new_v4().to_string() } });
    for (what, p) in [
        (
            "text \"hello\" (reference)",
            plaintext("text", "\"hello\"".into()),
        ),
        (
            "group read receipt",
            plaintext("group-read", up_to.to_string()),
        ),
        (
            "typing notice",
            plaintext("typing", serde_json::json!({ "started": true }).to_string()),
        ),
    ] {
        let sealed = alice.encrypt(&g, &p).unwrap();
        eprintln!(
            "{what}: plaintext {} B, MLS message {} B, base64 in the frame {} B",
            p.len(),
            sealed.len(),
            B64.encode(&sealed).len()
        );
    }
}
