//! The content layer through a real `lattice-server` on loopback with real peers: every kind end
//! to end (text, reply, edit, delete, reaction, read receipt, typing), the attacks on it (an edit
//! or a delete from someone else, a reaction to a message that does not exist, a receipt for a
//! message never sent), and an original client getting plain text only.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use lattice_crypto::{ml_kem_aes, KemKeyPair, SealedEnvelope};
use lattice_peer::{
    Change, Content, ContentUpdate, EventStream, IncomingMessage, MessageRef, MessagingPeer,
    PeerError, PeerEvent, ReactionAction, RejectReason,
};
use lattice_protocol::{Envelope, MessageId};
use support::raw::RawClient;
use support::server::*;
use support::*;

async fn online(url: &str, name: &str) -> (MessagingPeer, EventStream) {
    let p = peer(url, name);
    let events = p.events();
    p.connect().await.unwrap();
    (p, events)
}

async fn next_message(events: &mut EventStream) -> IncomingMessage {
    wait_for(events, |e| match e {
        PeerEvent::Message(m) => Some(m),
        _ => None,
    })
    .await
}

async fn next_update(events: &mut EventStream) -> ContentUpdate {
    wait_for(events, |e| match e {
        PeerEvent::Update(u) => Some(u),
        PeerEvent::Error(e) => panic!("unexpected error {e:?}"),
        _ => None,
    })
    .await
}

/// The next refusal of a message from `from`; nothing may be delivered before it.
async fn next_refusal(events: &mut EventStream, from: &str) -> RejectReason {
    wait_for(events, |e| match e {
        PeerEvent::Message(m) => panic!("delivered: {m:?}"),
        PeerEvent::Update(u) => panic!("applied: {u:?}"),
        PeerEvent::Error(PeerError::Rejected {
            from: f, reason, ..
        }) if f.as_str() == from => Some(reason),
        _ => None,
    })
    .await
}

fn reference(sender: &MessagingPeer, message_id: &MessageId) -> MessageRef {
    MessageRef {
        sender: sender.client_id().clone(),
        message_id: message_id.clone(),
    }
}

#[tokio::test]
async fn every_kind_goes_end_to_end_between_two_peers() {
    let server = spawn_server().await;
    let url = server.url();
    let (alice, mut alice_events) = online(&url, "alice").await;
    let (bob, mut bob_events) = online(&url, "bob").await;
    let (a, b) = (id("alice"), id("bob"));

    let first = alice.send_message(&b, "helo bob").await.unwrap().message_id;
    let m = next_message(&mut bob_events).await;
    assert_eq!(m.content, Content::Text("helo bob".into()));

    let reply = Content::Reply {
        to: reference(&alice, &first),
        excerpt: lattice_peer::content::excerpt("helo bob"),
        text: "hi alice".into(),
    };
    let answer = bob.send_content(&a, &reply).await.unwrap().message_id;
    let m = next_message(&mut alice_events).await;
    assert_eq!(
        (m.text.as_str(), &m.content, m.verified),
        ("hi alice", &reply, true)
    );

    let edit = Content::Edit {
        target: first.clone(),
        text: "hello bob".into(),
    };
    alice.send_content(&b, &edit).await.unwrap();
    let u = next_update(&mut bob_events).await;
    assert_eq!(u.from, a);
    assert_eq!(
        u.change,
        Change::Edited {
            target: first.clone(),
            text: "hello bob".into()
        }
    );

    // Bob reacts to alice's message, alice to bob's reply.
    let thumbs = |target| Content::Reaction {
        target,
        emoji: "👍".into(),
        action: ReactionAction::Add,
    };
    bob.send_content(&a, &thumbs(reference(&alice, &first)))
        .await
        .unwrap();
    let u = next_update(&mut alice_events).await;
    assert!(
        matches!(&u.change, Change::Reaction { target, emoji, action: ReactionAction::Add } if target.message_id == first && emoji == "👍"),
        "{u:?}"
    );
    alice
        .send_content(&b, &thumbs(reference(&bob, &answer)))
        .await
        .unwrap();
    assert!(matches!(
        next_update(&mut bob_events).await.change,
        Change::Reaction { .. }
    ));

    bob.send_content(
        &a,
        &Content::Receipt {
            read: vec![first.clone()],
        },
    )
    .await
    .unwrap();
    assert_eq!(
        next_update(&mut alice_events).await.change,
        Change::Read {
            message_ids: vec![first.clone()]
        }
    );

    for started in [true, false] {
        alice
            .send_content(&b, &Content::Typing { started })
            .await
            .unwrap();
        assert_eq!(
            next_update(&mut bob_events).await.change,
            Change::Typing { started }
        );
    }

    alice
        .send_content(
            &b,
            &Content::Delete {
                target: first.clone(),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        next_update(&mut bob_events).await.change,
        Change::Deleted { target: first }
    );

    alice.disconnect().await;
    bob.disconnect().await;
    server.shutdown().await;
}

#[tokio::test]
async fn edits_deletes_reactions_and_receipts_that_do_not_fit_the_history_are_refused() {
    let server = spawn_server().await;
    let url = server.url();
    let (alice, mut alice_events) = online(&url, "alice").await;
    let (bob, mut bob_events) = online(&url, "bob").await;
    let (mallory, _mallory_events) = online(&url, "mallory").await;
    let (a, b) = (id("alice"), id("bob"));

    let hers = alice.send_message(&b, "the plan").await.unwrap().message_id;
    next_message(&mut bob_events).await;

    // Bob edits and deletes alice's message in their conversation: only she may.
    for content in [
        Content::Edit {
            target: hers.clone(),
            text: "forged".into(),
        },
        Content::Delete {
            target: hers.clone(),
        },
    ] {
        bob.send_content(&a, &content).await.unwrap();
        assert_eq!(
            next_refusal(&mut alice_events, "bob").await,
            RejectReason::NotOriginalSender
        );
    }
    // Mallory edits it in her own conversation with bob: no such message there.
    mallory
        .send_content(
            &b,
            &Content::Edit {
                target: hers.clone(),
                text: "forged".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        next_refusal(&mut bob_events, "mallory").await,
        RejectReason::UnknownTarget
    );
    // A reaction to a message that does not exist; a receipt for a message never sent to bob.
    let nothing = MessageId::new("no-such-message").unwrap();
    bob.send_content(
        &a,
        &Content::Reaction {
            target: reference(&alice, &nothing),
            emoji: "🔥".into(),
            action: ReactionAction::Add,
        },
    )
    .await
    .unwrap();
    assert_eq!(
        next_refusal(&mut alice_events, "bob").await,
        RejectReason::UnknownTarget
    );
    mallory
        .send_content(
            &b,
            &Content::Receipt {
                read: vec![hers.clone()],
            },
        )
        .await
        .unwrap();
    assert_eq!(
        next_refusal(&mut bob_events, "mallory").await,
        RejectReason::UnknownTarget
    );

    // The connections survive and honest traffic still flows.
    bob.send_message(&a, "still here").await.unwrap();
    assert_eq!(next_message(&mut alice_events).await.text, "still here");

    alice.disconnect().await;
    bob.disconnect().await;
    mallory.disconnect().await;
    server.shutdown().await;
}

/// An original client: registers without an identity key and reads `ml-kem-aes` messages.
struct Original {
    kem: KemKeyPair,
    raw: RawClient,
}

impl Original {
    async fn register(url: &str, id: &str) -> Self {
        let kem = KemKeyPair::generate(&mut rand_core::OsRng);
        let raw = RawClient::register_unverified(url, id, kem.public_key().as_bytes()).await;
        Self { kem, raw }
    }

    /// The text of the next message it receives.
    async fn next_text(&mut self) -> String {
        let m = self.raw.recv_type("message").await;
        let envelope: Envelope = serde_json::from_value(m["payload"]["message"].clone()).unwrap();
        assert_eq!(envelope.algorithm, ml_kem_aes::ALGORITHM);
        let (cipher_text, encrypted_data) = envelope.to_bytes().unwrap();
        let sealed = SealedEnvelope {
            cipher_text,
            encrypted_data,
        };
        String::from_utf8(ml_kem_aes::open(&self.kem, &sealed).unwrap().to_vec()).unwrap()
    }
}

#[tokio::test]
async fn an_original_client_gets_plain_text_only() {
    let server = spawn_server().await;
    let url = server.url();
    let (alice, _alice_events) = online(&url, "alice").await;
    let mut old = Original::register(&url, "old").await;
    let o = id("old");

    let first = alice.send_message(&o, "hello").await.unwrap().message_id;
    assert_eq!(old.next_text().await, "hello");
    let reply = Content::Reply {
        to: MessageRef {
            sender: o.clone(),
            message_id: MessageId::new("theirs").unwrap(),
        },
        excerpt: "how are you".into(),
        text: "fine".into(),
    };
    alice.send_content(&o, &reply).await.unwrap();
    assert_eq!(old.next_text().await, "> how are you\nfine");
    alice
        .send_content(
            &o,
            &Content::Edit {
                target: first.clone(),
                text: "hello!".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(old.next_text().await, "(edited) hello!");
    // No delete, reaction, receipt or typing goes to it: a typed refusal, nothing sent.
    for content in [
        Content::Delete {
            target: first.clone(),
        },
        Content::Reaction {
            target: reference(&alice, &first),
            emoji: "👍".into(),
            action: ReactionAction::Add,
        },
        Content::Receipt {
            read: vec![first.clone()],
        },
        Content::Typing { started: true },
    ] {
        let err = alice.send_content(&o, &content).await.unwrap_err();
        assert!(
            matches!(&err, PeerError::PlainTextOnly { peer, .. } if *peer == o),
            "{err:?}"
        );
    }
    alice.send_message(&o, "last").await.unwrap();
    assert_eq!(old.next_text().await, "last", "nothing was sent in between");

    alice.disconnect().await;
    server.shutdown().await;
}
