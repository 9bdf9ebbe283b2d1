//! 1:1 conversations over MLS through a real `lattice-server` on loopback, real peers through
//! the public `MessagingPeer` API and real SQLite state: the first message to an offline peer,
//! restarts, two sides starting at once, older clients, and the downgrade refusal.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Instant;

use lattice_peer::{
    Algorithm, Change, Content, ConversationNotice, EventStream, IncomingMessage, MessageRef,
    PeerError, PeerEvent, RejectReason,
};
use lattice_protocol::{AckStatus, MessageAck, MessageId};
use support::person::Person;
use support::server::*;
use support::*;

/// The direct conversations recorded in `p`'s MLS state: (group id, peer), sorted.
fn direct_rows(p: &Person) -> Vec<(Vec<u8>, String)> {
    let conn = rusqlite::Connection::open(p.state()).unwrap();
    let mut q = conn
        .prepare("SELECT group_id, peer FROM lattice_peer_direct ORDER BY group_id")
        .unwrap();
    let rows = q
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    rows
}

/// The next 1:1 message; any error or group event fails the test (a 1:1 conversation raises
/// none).
async fn next_message(events: &mut EventStream) -> IncomingMessage {
    wait_for(events, |e| match e {
        PeerEvent::Message(m) => Some(m),
        PeerEvent::Error(e) => panic!("unexpected error {e:?}"),
        e @ (PeerEvent::GroupChanged { .. } | PeerEvent::GroupMessage(_)) => {
            panic!("a 1:1 conversation raised a group event: {e:?}")
        }
        _ => None,
    })
    .await
}

fn text_of(m: &IncomingMessage) -> &str {
    match &m.content {
        Content::Text(t) => t,
        other => panic!("not a text: {other:?}"),
    }
}

#[tokio::test]
async fn the_first_message_to_an_offline_peer_goes_over_mls_and_survives_restarts() {
    let server = spawn_server().await;
    let url = server.url();
    let (a, b) = (Person::new("alice"), Person::new("bob"));
    let (alice, mut ae) = a.online(&url).await;
    {
        // bob publishes his KeyPackages, then goes offline.
        let (bob, _) = b.online(&url).await;
        bob.disconnect().await;
    }
    assert_eq!(alice.conversation_envelope(&id("bob")), None);

    // KeyPackage fetch + Commit/Welcome + the message, all into bob's mailbox.
    let started = Instant::now();
    let sent = alice.send_message(&id("bob"), "hello").await.unwrap();
    let first_send = started.elapsed();
    assert_eq!(sent.algorithm, Algorithm::Mls);
    assert_eq!(
        alice.conversation_envelope(&id("bob")),
        Some(Algorithm::Mls)
    );
    let edit = alice
        .send_content(
            &id("bob"),
            &Content::Edit {
                target: sent.message_id.clone(),
                text: "hello!".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(edit.algorithm, Algorithm::Mls);
    assert!(
        alice.groups_list().unwrap().is_empty(),
        "not listed as a group"
    );

    let reconnect = Instant::now();
    let (bob, mut be) = b.online(&url).await;
    let m = next_message(&mut be).await;
    let caught_up = reconnect.elapsed();
    assert_eq!((m.from.as_str(), text_of(&m)), ("alice", "hello"));
    assert_eq!(m.algorithm, Algorithm::Mls);
    assert!(m.verified);
    assert_eq!(m.message_id.as_ref(), Some(&sent.message_id));
    let update = wait_for(&mut be, |e| match e {
        PeerEvent::Update(u) => Some(u),
        PeerEvent::Error(e) => panic!("unexpected error {e:?}"),
        _ => None,
    })
    .await;
    assert!(
        matches!(&update.change, Change::Edited { target, text } if *target == sent.message_id && text == "hello!"),
        "{update:?}"
    );
    assert!(bob.groups_list().unwrap().is_empty());
    assert_eq!(
        bob.conversation_envelope(&id("alice")),
        Some(Algorithm::Mls)
    );

    let reply = bob
        .send_content(
            &id("alice"),
            &Content::Reply {
                to: MessageRef {
                    sender: id("alice"),
                    message_id: sent.message_id.clone(),
                },
                excerpt: "hello".into(),
                text: "hi".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(reply.algorithm, Algorithm::Mls);
    let m = next_message(&mut ae).await;
    assert!(matches!(&m.content, Content::Reply { text, .. } if text == "hi"));
    assert_eq!(m.algorithm, Algorithm::Mls);

    // Both restart: the conversation (and the pin) comes back from SQLite, no new group.
    drop((alice, ae, bob, be));
    let (alice, _ae) = a.online(&url).await;
    let (bob, mut be) = b.online(&url).await;
    assert_eq!(
        bob.conversation_envelope(&id("alice")),
        Some(Algorithm::Mls)
    );
    let again = alice.send_message(&id("bob"), "again").await.unwrap();
    assert_eq!(again.algorithm, Algorithm::Mls);
    let m = next_message(&mut be).await;
    assert_eq!(text_of(&m), "again");
    assert_eq!(direct_rows(&a).len(), 1);
    assert_eq!(
        direct_rows(&a),
        direct_rows(&b)
            .into_iter()
            .map(|(g, _)| (g, "bob".into()))
            .collect::<Vec<_>>()
    );
    drop(bob);
    eprintln!(
        "measured: first message to an offline peer (KeyPackage fetch + Commit/Welcome + message) {first_send:?} at the sender; offline peer connect + Welcome + 2 messages {caught_up:?}"
    );
}

#[tokio::test]
async fn both_sides_starting_at_once_converge_on_one_conversation() {
    let server = spawn_server().await;
    let url = server.url();
    let (a, b) = (Person::new("alice"), Person::new("bob"));
    let (alice, mut ae) = a.online(&url).await;
    let (bob, mut be) = b.online(&url).await;

    let (to_bob, to_alice) = (id("bob"), id("alice"));
    let (sa, sb) = tokio::join!(
        alice.send_message(&to_bob, "from alice"),
        bob.send_message(&to_alice, "from bob")
    );
    assert_eq!(sa.unwrap().algorithm, Algorithm::Mls);
    assert_eq!(sb.unwrap().algorithm, Algorithm::Mls);
    assert_eq!(text_of(&next_message(&mut be).await), "from alice");
    assert_eq!(text_of(&next_message(&mut ae).await), "from bob");

    // Whatever raced, both know the same direct groups and so pick the same one (the smallest
    // id): the next messages flow both ways in it.
    let groups =
        |p: &Person| -> Vec<Vec<u8>> { direct_rows(p).into_iter().map(|(g, _)| g).collect() };
    assert_eq!(groups(&a), groups(&b));
    assert!(matches!(groups(&a).len(), 1 | 2), "{:?}", groups(&a));
    eprintln!("direct groups after the race: {}", groups(&a).len());
    for n in 0..3 {
        alice
            .send_message(&id("bob"), &format!("a{n}"))
            .await
            .unwrap();
        bob.send_message(&id("alice"), &format!("b{n}"))
            .await
            .unwrap();
        assert_eq!(text_of(&next_message(&mut be).await), format!("a{n}"));
        assert_eq!(text_of(&next_message(&mut ae).await), format!("b{n}"));
    }
    assert_eq!(groups(&a), groups(&b), "no further group was made");
    assert!(alice.groups_list().unwrap().is_empty());
    assert!(bob.groups_list().unwrap().is_empty());
}

#[tokio::test]
async fn an_older_lattice_client_still_talks_lattice_v1_both_ways() {
    let server = spawn_server().await;
    let url = server.url();
    let (a, b) = (Person::new("alice"), Person::new("bob"));
    let (alice, mut ae) = a.online(&url).await;
    let (bob, mut be) = b.without_mls(&url).await;

    let sent = alice
        .send_message(&id("bob"), "to an older client")
        .await
        .unwrap();
    assert_eq!(sent.algorithm, Algorithm::LatticeV1);
    let m = next_message(&mut be).await;
    assert_eq!(
        (text_of(&m), m.algorithm),
        ("to an older client", Algorithm::LatticeV1)
    );
    bob.send_message(&id("alice"), "back").await.unwrap();
    let m = next_message(&mut ae).await;
    assert_eq!((text_of(&m), m.algorithm), ("back", Algorithm::LatticeV1));
    assert_eq!(alice.conversation_envelope(&id("bob")), None, "not pinned");
    // The answer is remembered: the next message goes straight to lattice-v1.
    let sent = alice.send_message(&id("bob"), "again").await.unwrap();
    assert_eq!(sent.algorithm, Algorithm::LatticeV1);
    assert_eq!(text_of(&next_message(&mut be).await), "again");
}

/// bob speaks MLS with alice; then a valid, signed `lattice-v1` message in bob's name reaches
/// alice (bob's identity on a client without MLS: what a stolen identity key, an older device or
/// a server replaying stored envelopes can produce). alice refuses it with a typed reason, before
/// and after a restart, and the MLS conversation goes on.
#[tokio::test]
async fn a_lattice_v1_message_from_a_peer_that_speaks_mls_is_refused() {
    let server = spawn_server().await;
    let url = server.url();
    let (a, b) = (Person::new("alice"), Person::new("bob"));
    let (mut alice, mut ae) = a.online(&url).await;
    let (bob, mut be) = b.online(&url).await;
    alice.send_message(&id("bob"), "over mls").await.unwrap();
    assert_eq!(next_message(&mut be).await.algorithm, Algorithm::Mls);
    drop((bob, be));

    for round in 0..2 {
        let (old, _oe) = b.without_mls(&url).await;
        let sent = old.send_message(&id("alice"), "downgraded").await.unwrap();
        assert_eq!(sent.algorithm, Algorithm::LatticeV1);
        let (reason, message_id) = wait_for(&mut ae, |e| match e {
            PeerEvent::Error(PeerError::Rejected {
                from,
                message_id,
                reason,
            }) if from.as_str() == "bob" => Some((reason, message_id)),
            PeerEvent::Message(m) => {
                panic!("round {round}: a downgraded message was delivered: {m:?}")
            }
            _ => None,
        })
        .await;
        assert_eq!(
            reason,
            RejectReason::MlsDowngrade {
                algorithm: "lattice-v1".into()
            }
        );
        assert_eq!(message_id, Some(sent.message_id));
        assert!(reason.to_string().contains("downgrade"));
        drop(old);
        // The pin is durable: the same after alice restarts.
        drop((alice, ae));
        (alice, ae) = a.online(&url).await;
    }

    // Sending to bob never falls back either: it stays MLS.
    let (_bob, mut be) = b.online(&url).await;
    let sent = alice.send_message(&id("bob"), "still mls").await.unwrap();
    assert_eq!(sent.algorithm, Algorithm::Mls);
    assert_eq!(text_of(&next_message(&mut be).await), "still mls");
}

/// mallory is alice's real 1:1 MLS peer and turns hostile: a tampered MLS message is refused
/// and reported, the next good one still arrives as an ordinary 1:1 message, and the same good
/// ciphertext again under a new message id (a replay the server cannot tell) does not open twice.
#[tokio::test]
async fn a_tampered_or_replayed_one_to_one_mls_message_is_refused_and_the_conversation_goes_on() {
    let server = spawn_server().await;
    let url = server.url();
    let (a, m) = (Person::new("alice"), Person::new("mallory"));
    let (alice, mut ae) = a.online(&url).await;
    {
        let (mallory, mut me) = m.online(&url).await;
        alice.send_message(&id("mallory"), "hi").await.unwrap();
        assert_eq!(next_message(&mut me).await.algorithm, Algorithm::Mls);
        mallory.disconnect().await;
    }
    let rows = direct_rows(&m);
    assert_eq!(rows.len(), 1);
    let g = lattice_peer::GroupId::from_bytes(&rows[0].0);
    // mallory's own state, read by the test (she is the peer: her messages are real).
    let mut engine =
        lattice_mls::MlsClient::open(lattice_mls::MlsStore::open(m.state()).unwrap()).unwrap();
    let plaintext = |mid: &str, t: &str| {
        serde_json::to_vec(&serde_json::json!({
            "messageId": mid, "kind": "text", "body": t, "sentAt": 1
        }))
        .unwrap()
    };
    let mut tampered = engine.encrypt(&g, &plaintext("m1", "evil")).unwrap();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    let good = engine.encrypt(&g, &plaintext("m2", "fine")).unwrap();
    drop(engine);
    let (raw, _re) = m.without_mls(&url).await;
    let wire_group = lattice_protocol::GroupId::new(g.to_string()).unwrap();
    for (mid, bytes) in [("m1", tampered), ("m2", good.clone()), ("m3", good)] {
        raw.send_to_server_and_wait(
            lattice_protocol::ClientFrame::GroupMessage(lattice_protocol::GroupMessage {
                group_id: wire_group.clone(),
                message: base64::Engine::encode(&base64::engine::general_purpose::STANDARD, bytes),
                message_id: Some(lattice_protocol::MessageId::new(mid).unwrap()),
            }),
            "group_message",
            lattice_peer::WaitOptions::default(),
        )
        .await
        .unwrap();
    }
    let refused = |e: PeerEvent| match e {
        PeerEvent::Message(m) if text_of(&m) != "fine" => panic!("delivered: {m:?}"),
        PeerEvent::Error(PeerError::GroupRejected { from, reason, .. }) => Some((from, reason)),
        _ => None,
    };
    let (from, reason) = wait_for(&mut ae, refused).await;
    assert_eq!(from, id("mallory"));
    assert!(reason.contains("decrypt"), "{reason}");
    let m2 = next_message(&mut ae).await;
    assert_eq!((text_of(&m2), m2.algorithm), ("fine", Algorithm::Mls));
    let replay = wait_for(&mut ae, |e| match e {
        PeerEvent::Message(m) => panic!("delivered twice: {m:?}"),
        PeerEvent::Error(PeerError::GroupRejected { reason, .. }) => Some(reason),
        _ => None,
    })
    .await;
    assert!(replay.contains("decrypt"), "{replay}");
}

/// alice has pinned bob as speaking MLS. Then her 1:1 conversation with him is gone (deleted
/// from her state) and a server shows bob without any KeyPackage (bob on a client without MLS):
/// the send fails with `MlsRequired` and nothing at all reaches bob — no `lattice-v1` fallback.
#[tokio::test]
async fn a_pinned_mls_peer_is_never_sent_an_older_envelope_when_its_key_packages_vanish() {
    let (a, b, c) = (
        Person::new("alice"),
        Person::new("bob"),
        Person::new("carol"),
    );
    {
        let server = spawn_server().await;
        let url = server.url();
        let (alice, _ae) = a.online(&url).await;
        let (_bob, mut be) = b.online(&url).await;
        alice.send_message(&id("bob"), "over mls").await.unwrap();
        assert_eq!(next_message(&mut be).await.algorithm, Algorithm::Mls);
    }
    let conn = rusqlite::Connection::open(a.state()).unwrap();
    assert_eq!(
        conn.execute("DELETE FROM lattice_peer_direct", []).unwrap(),
        1
    );
    drop(conn);

    let server = spawn_server().await;
    let url = server.url();
    let (alice, _ae) = a.online(&url).await;
    let (_bob, mut be) = b.without_mls(&url).await;
    let (carol, _ce) = c.without_mls(&url).await;
    let err = alice
        .send_message(&id("bob"), "must not leave")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PeerError::MlsRequired { peer, .. } if peer.as_str() == "bob"),
        "{err:?}"
    );
    assert!(err.to_string().contains("nothing was sent"), "{err}");
    // carol's message, sent after alice's attempt, is the first thing bob gets.
    carol.send_message(&id("bob"), "marker").await.unwrap();
    let first = none_before(
        &mut be,
        |e| matches!(e, PeerEvent::Message(m) if m.from.as_str() == "alice"),
        |e| match e {
            PeerEvent::Message(m) if m.from.as_str() == "carol" => Some(m.clone()),
            _ => None,
        },
    )
    .await;
    assert_eq!(text_of(&first), "marker");
}

/// The next `MessageAck` for `message_id`; any error fails the test.
async fn ack_of(events: &mut EventStream, message_id: &MessageId) -> MessageAck {
    wait_for(events, |e| match e {
        PeerEvent::MessageAck(a) if a.message_id == *message_id => Some(a),
        PeerEvent::Error(e) => panic!("unexpected error {e:?}"),
        _ => None,
    })
    .await
}

/// Waits until `message_id` is acknowledged as delivered (its `queued` ack may come first).
async fn delivered(events: &mut EventStream, message_id: &MessageId) {
    while ack_of(events, message_id).await.status != AckStatus::Delivered {}
}

/// A 1:1 MLS send raises the same delivery states as a `lattice-v1` one: `queued` once the
/// server stored it for the peer (offline here), then `delivered` when the peer's client read
/// it (its delivery receipt, inside the conversation); both ways.
#[tokio::test]
async fn a_one_to_one_mls_send_is_queued_then_delivered_once_the_peer_read_it() {
    let server = spawn_server().await;
    let url = server.url();
    let (a, b) = (Person::new("alice"), Person::new("bob"));
    let (alice, mut ae) = a.online(&url).await;
    {
        let (bob, _) = b.online(&url).await;
        bob.disconnect().await;
    }
    let sent = alice
        .send_message(&id("bob"), "while you were away")
        .await
        .unwrap();
    assert_eq!(sent.algorithm, Algorithm::Mls);
    let ack = ack_of(&mut ae, &sent.message_id).await;
    assert_eq!(
        (ack.status, ack.target_id.as_str()),
        (AckStatus::Queued, "bob")
    );

    let (bob, mut be) = b.online(&url).await;
    assert_eq!(text_of(&next_message(&mut be).await), "while you were away");
    let ack = ack_of(&mut ae, &sent.message_id).await;
    assert_eq!(
        (ack.status, ack.target_id.as_str()),
        (AckStatus::Delivered, "bob")
    );

    let back = bob.send_message(&id("alice"), "back").await.unwrap();
    assert_eq!(back.algorithm, Algorithm::Mls);
    assert_eq!(
        ack_of(&mut be, &back.message_id).await.status,
        AckStatus::Queued
    );
    assert_eq!(text_of(&next_message(&mut ae).await), "back");
    let ack = ack_of(&mut be, &back.message_id).await;
    assert_eq!(
        (ack.status, ack.target_id.as_str()),
        (AckStatus::Delivered, "alice")
    );
}

/// The server lost the 1:1 group (restored from an older backup): alice's next message is
/// answered `NOT_A_MEMBER`, the conversation is set up again from a fresh KeyPackage of bob's,
/// and that very message (same id) arrives once, over MLS; replies and later messages flow
/// both ways; no stale group shows up in either group list.
#[tokio::test]
async fn a_one_to_one_group_the_server_lost_is_set_up_again_without_losing_the_message() {
    let (a, b) = (Person::new("alice"), Person::new("bob"));
    let before = {
        let server = spawn_server().await;
        let url = server.url();
        let (alice, _ae) = a.online(&url).await;
        let (_bob, mut be) = b.online(&url).await;
        alice.send_message(&id("bob"), "first").await.unwrap();
        assert_eq!(text_of(&next_message(&mut be).await), "first");
        direct_rows(&a)
    };
    assert_eq!(before.len(), 1);

    // A server that knows no group any more; same identities.
    let server = spawn_server().await;
    let url = server.url();
    let (alice, mut ae) = a.online(&url).await;
    let (bob, mut be) = b.online(&url).await;
    let sent = alice
        .send_message(&id("bob"), "after the loss")
        .await
        .unwrap();
    assert_eq!(sent.algorithm, Algorithm::Mls);
    let m = next_message(&mut be).await;
    assert_eq!(
        (text_of(&m), m.algorithm, m.message_id.as_ref()),
        ("after the loss", Algorithm::Mls, Some(&sent.message_id))
    );
    assert!(
        !direct_rows(&a).contains(&before[0]),
        "the lost group is retired"
    );

    let reply = bob.send_message(&id("alice"), "reply").await.unwrap();
    assert_eq!(reply.algorithm, Algorithm::Mls);
    let m = next_message(&mut ae).await;
    assert_eq!((text_of(&m), m.algorithm), ("reply", Algorithm::Mls));
    for n in 0..2 {
        alice
            .send_message(&id("bob"), &format!("a{n}"))
            .await
            .unwrap();
        bob.send_message(&id("alice"), &format!("b{n}"))
            .await
            .unwrap();
        // The next message is the next one sent: nothing arrived twice.
        assert_eq!(text_of(&next_message(&mut be).await), format!("a{n}"));
        assert_eq!(text_of(&next_message(&mut ae).await), format!("b{n}"));
    }
    assert!(alice.groups_list().unwrap().is_empty());
    assert!(bob.groups_list().unwrap().is_empty());
}

/// The notice `who` gets about `peer`'s conversation.
async fn notice(events: &mut EventStream, peer: &str) -> ConversationNotice {
    wait_for(events, |e| match e {
        PeerEvent::ConversationNotice { peer: p, notice } if p.as_str() == peer => Some(notice),
        PeerEvent::Error(e) => panic!("unexpected error {e:?}"),
        _ => None,
    })
    .await
}

/// bob's MLS state is gone (a restored backup without it, a reinstall with the same identity):
/// a real restart with the state file deleted, twice. When bob writes first, alice's client
/// moves to the conversation bob's new client set up and says so; when alice writes first, her
/// message lands in a group bob no longer has: bob is told (with its id), sets a new
/// conversation up by himself, and alice is told. Afterwards messages flow both ways over MLS,
/// no stale group is listed, and alice still refuses `lattice-v1` from bob.
#[tokio::test]
async fn a_peer_that_lost_its_mls_state_gets_its_conversation_back_with_a_notice() {
    let server = spawn_server().await;
    let url = server.url();
    let (a, b) = (Person::new("alice"), Person::new("bob"));
    let (alice, mut ae) = a.online(&url).await;
    {
        let (bob, mut be) = b.online(&url).await;
        alice.send_message(&id("bob"), "before").await.unwrap();
        assert_eq!(text_of(&next_message(&mut be).await), "before");
        let sent = bob.send_message(&id("alice"), "before too").await.unwrap();
        assert_eq!(text_of(&next_message(&mut ae).await), "before too");
        // alice's receipt read: nothing of the old conversation waits for bob.
        delivered(&mut be, &sent.message_id).await;
    }

    // 1. bob comes back without MLS state and writes first.
    b.lose_mls_state();
    let (bob, mut be) = b.online(&url).await;
    let sent = bob.send_message(&id("alice"), "I am back").await.unwrap();
    assert_eq!(sent.algorithm, Algorithm::Mls);
    assert_eq!(
        notice(&mut ae, "bob").await,
        ConversationNotice::PeerStartedOver
    );
    let m = next_message(&mut ae).await;
    assert_eq!((text_of(&m), m.algorithm), ("I am back", Algorithm::Mls));
    delivered(&mut be, &sent.message_id).await;
    alice
        .send_message(&id("bob"), "welcome back")
        .await
        .unwrap();
    assert_eq!(text_of(&next_message(&mut be).await), "welcome back");
    assert_eq!(direct_rows(&a).len(), 1, "the old conversation is retired");
    drop((bob, be));

    // 2. Again, and this time alice writes first, into the group bob lost.
    b.lose_mls_state();
    let (bob, mut be) = b.online(&url).await;
    let lost = alice
        .send_message(&id("bob"), "into the void")
        .await
        .unwrap();
    assert_eq!(
        notice(&mut be, "alice").await,
        ConversationNotice::Unreadable {
            message_id: Some(lost.message_id.clone())
        }
    );
    assert_eq!(
        notice(&mut ae, "bob").await,
        ConversationNotice::PeerStartedOver
    );
    alice.send_message(&id("bob"), "again").await.unwrap();
    let m = next_message(&mut be).await;
    assert_eq!((text_of(&m), m.algorithm), ("again", Algorithm::Mls));
    bob.send_message(&id("alice"), "got it").await.unwrap();
    let m = next_message(&mut ae).await;
    assert_eq!((text_of(&m), m.algorithm), ("got it", Algorithm::Mls));
    assert!(alice.groups_list().unwrap().is_empty());
    assert!(bob.groups_list().unwrap().is_empty());
    assert_eq!(direct_rows(&a).len(), 1);
    drop((bob, be));

    // The downgrade pin holds through all of it.
    let (old, _oe) = b.without_mls(&url).await;
    let sent = old.send_message(&id("alice"), "downgraded").await.unwrap();
    assert_eq!(sent.algorithm, Algorithm::LatticeV1);
    let reason = wait_for(&mut ae, |e| match e {
        PeerEvent::Error(PeerError::Rejected { from, reason, .. }) if from.as_str() == "bob" => {
            Some(reason)
        }
        PeerEvent::Message(m) => panic!("a downgraded message was delivered: {m:?}"),
        _ => None,
    })
    .await;
    assert_eq!(
        reason,
        RejectReason::MlsDowngrade {
            algorithm: "lattice-v1".into()
        }
    );
}
