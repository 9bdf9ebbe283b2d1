//! 1:1 conversations over MLS through a real `lattice-server` on loopback, real peers through
//! the public `MessagingPeer` API and real SQLite state: the first message to an offline peer,
//! restarts, two sides starting at once, older clients, and the downgrade refusal.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Instant;

use lattice_peer::{
    Algorithm, Change, Content, EventStream, IncomingMessage, MessageRef, PeerError, PeerEvent,
    RejectReason,
};
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
