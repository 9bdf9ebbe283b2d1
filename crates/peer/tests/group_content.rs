//! Replies, edits, deletes and reactions inside MLS groups, through a real `lattice-server` on
//! loopback, real peers through the public `MessagingPeer` API and real SQLite MLS state; and
//! the attacks on them: a member editing another's message, an edit of a message of another
//! group or of a 1:1 conversation, a forged author field in the plaintext, an oversized
//! reaction, a replayed edit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use base64::Engine as _;
use lattice_mls::{MlsClient, MlsStore};
use lattice_peer::{
    Change, Content, ContentUpdate, EventStream, GroupId, GroupMessage, MessageRef, PeerError,
    PeerEvent, ReactionAction, WaitOptions,
};
use lattice_protocol::{ClientFrame, GroupMessage as GroupMessageFrame, MessageId};
use support::groups::{joined, say};
use support::person::Person;
use support::server::*;
use support::*;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

async fn next_message(events: &mut EventStream) -> GroupMessage {
    wait_for(events, |e| match e {
        PeerEvent::GroupMessage(m) => Some(m),
        PeerEvent::GroupUpdate { update, .. } => panic!("unexpected update {update:?}"),
        PeerEvent::Error(e) => panic!("unexpected error {e:?}"),
        _ => None,
    })
    .await
}

async fn next_update(events: &mut EventStream) -> (GroupId, ContentUpdate) {
    wait_for(events, |e| match e {
        PeerEvent::GroupUpdate { group, update } => Some((group, update)),
        PeerEvent::GroupMessage(m) => panic!("unexpected message {m:?}"),
        PeerEvent::Error(e) => panic!("unexpected error {e:?}"),
        _ => None,
    })
    .await
}

/// The next refusal of a group message (anything delivered instead fails the test).
async fn next_refusal(events: &mut EventStream) -> (Option<String>, String, String) {
    wait_for(events, |e| match e {
        PeerEvent::GroupMessage(m) => panic!("delivered: {m:?}"),
        PeerEvent::GroupUpdate { update, .. } => panic!("applied: {update:?}"),
        PeerEvent::Error(PeerError::GroupRejected {
            group,
            from,
            reason,
        }) => Some((group, from.to_string(), reason)),
        _ => None,
    })
    .await
}

fn to(sender: &str, message_id: &MessageId) -> MessageRef {
    MessageRef {
        sender: id(sender),
        message_id: message_id.clone(),
    }
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

/// A group plaintext as `lattice-peer` writes it, with `extra` fields merged in.
fn plaintext(mid: &str, kind: &str, body: &str, sent_at: u64, extra: serde_json::Value) -> Vec<u8> {
    let mut p = serde_json::json!({
        "messageId": mid, "kind": kind, "body": body, "sentAt": sent_at
    });
    if let (Some(p), serde_json::Value::Object(extra)) = (p.as_object_mut(), extra) {
        p.extend(extra);
    }
    serde_json::to_vec(&p).unwrap()
}

/// Sends MLS application messages a member's own engine sealed (from its state file, while
/// it is offline), each under its message id, through a connection of that member without
/// MLS: what a modified client could send.
async fn send_sealed(person: &Person, url: &str, g: &GroupId, sealed: Vec<(&str, Vec<u8>)>) {
    let (raw, _events) = person.without_mls(url).await;
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
}

#[tokio::test]
async fn replies_edits_reactions_and_deletes_flow_in_a_three_member_group() {
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

    let hello = say(&alice, &g, "hello both").await;
    next_message(&mut be).await;
    next_message(&mut ce).await;

    // bob replies with a quote: everyone sees the quote of alice's message.
    bob.send_group_content(
        &g,
        &Content::Reply {
            to: to("alice", &hello),
            excerpt: "hello both".into(),
            text: "hi alice".into(),
        },
    )
    .await
    .unwrap();
    for e in [&mut ae, &mut ce] {
        let m = next_message(e).await;
        assert_eq!(m.from, id("bob"));
        match m.content {
            Content::Reply {
                to: quoted, text, ..
            } => {
                assert_eq!(quoted, to("alice", &hello));
                assert_eq!(text, "hi alice");
            }
            other => panic!("not a reply: {other:?}"),
        }
    }

    // carol reacts to alice's message; alice and bob see it, with the group.
    carol
        .send_group_content(
            &g,
            &Content::Reaction {
                target: to("alice", &hello),
                emoji: "👍".into(),
                action: ReactionAction::Add,
            },
        )
        .await
        .unwrap();
    for e in [&mut ae, &mut be] {
        let (group, u) = next_update(e).await;
        assert_eq!(group, g);
        assert_eq!(u.from, id("carol"));
        assert_eq!(
            u.change,
            Change::Reaction {
                target: to("alice", &hello),
                emoji: "👍".into(),
                action: ReactionAction::Add,
            }
        );
    }

    // alice edits her message.
    alice
        .send_group_content(
            &g,
            &Content::Edit {
                target: hello.clone(),
                text: "hello all".into(),
            },
        )
        .await
        .unwrap();
    for e in [&mut be, &mut ce] {
        let (group, u) = next_update(e).await;
        assert_eq!(group, g);
        assert_eq!(u.from, id("alice"));
        assert_eq!(
            u.change,
            Change::Edited {
                target: hello.clone(),
                text: "hello all".into()
            }
        );
    }

    // bob edits alice's message: sent (the sender's library cannot stop a modified client
    // either), refused by both receivers as not his.
    bob.send_group_content(
        &g,
        &Content::Edit {
            target: hello.clone(),
            text: "bob was here".into(),
        },
    )
    .await
    .unwrap();
    for e in [&mut ae, &mut ce] {
        let (group, from, reason) = next_refusal(e).await;
        assert_eq!(group.as_deref(), Some(g.to_string().as_str()));
        assert_eq!(from, "bob");
        assert!(reason.contains("original sender"), "{reason}");
    }

    // An oversized reaction is refused before it is sent.
    let err = carol
        .send_group_content(
            &g,
            &Content::Reaction {
                target: to("alice", &hello),
                emoji: "🙂".repeat(9),
                action: ReactionAction::Add,
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, PeerError::InvalidContent(_)), "{err:?}");
    // Typing notices are not content of a group: they go with `group_typing`.
    assert!(matches!(
        carol
            .send_group_content(&g, &Content::Typing { started: true })
            .await,
        Err(PeerError::InvalidArgument(_))
    ));

    // alice deletes her message; a reaction to it afterwards is refused.
    alice
        .send_group_content(
            &g,
            &Content::Delete {
                target: hello.clone(),
            },
        )
        .await
        .unwrap();
    for e in [&mut be, &mut ce] {
        let (_, u) = next_update(e).await;
        assert_eq!(
            u.change,
            Change::Deleted {
                target: hello.clone()
            }
        );
    }
    bob.send_group_content(
        &g,
        &Content::Reaction {
            target: to("alice", &hello),
            emoji: "❤️".into(),
            action: ReactionAction::Add,
        },
    )
    .await
    .unwrap();
    let (_, _, reason) = next_refusal(&mut ce).await;
    assert!(reason.contains("does not exist"), "{reason}");
}

#[tokio::test]
async fn edits_and_reactions_must_name_a_message_of_the_same_group() {
    let server = spawn_server().await;
    let url = server.url();
    let (a, b) = (Person::new("alice"), Person::new("bob"));
    let (alice, mut ae) = a.online(&url).await;
    let (bob, mut be) = b.online(&url).await;
    let g1 = alice.create_group("one", &[id("bob")]).await.unwrap();
    joined(&mut be).await;
    let g2 = alice.create_group("two", &[id("bob")]).await.unwrap();
    joined(&mut be).await;

    // bob writes in g1 and 1:1.
    let in_g1 = say(&bob, &g1, "in one").await;
    assert_eq!(next_message(&mut ae).await.message_id, in_g1);
    let direct = bob
        .send_content(&id("alice"), &Content::Text("just you".into()))
        .await
        .unwrap()
        .message_id;
    let got = wait_for(&mut ae, |e| match e {
        PeerEvent::Message(m) => Some(m),
        PeerEvent::Error(e) => panic!("unexpected error {e:?}"),
        _ => None,
    })
    .await;
    assert_eq!(got.message_id.as_ref(), Some(&direct));

    // His own messages, named in the wrong conversation: refused.
    let edit = |target: &MessageId| Content::Edit {
        target: target.clone(),
        text: "changed".into(),
    };
    bob.send_group_content(&g2, &edit(&in_g1)).await.unwrap();
    let (group, _, reason) = next_refusal(&mut ae).await;
    assert_eq!(group.as_deref(), Some(g2.to_string().as_str()));
    assert!(reason.contains("does not exist"), "{reason}");
    bob.send_group_content(&g1, &edit(&direct)).await.unwrap();
    let (group, _, reason) = next_refusal(&mut ae).await;
    assert_eq!(group.as_deref(), Some(g1.to_string().as_str()));
    assert!(reason.contains("does not exist"), "{reason}");
    bob.send_group_content(
        &g2,
        &Content::Reaction {
            target: to("bob", &in_g1),
            emoji: "👍".into(),
            action: ReactionAction::Add,
        },
    )
    .await
    .unwrap();
    let (_, _, reason) = next_refusal(&mut ae).await;
    assert!(reason.contains("does not exist"), "{reason}");

    // A reply quoting the 1:1 message in g2 arrives without the quote.
    bob.send_group_content(
        &g2,
        &Content::Reply {
            to: to("bob", &direct),
            excerpt: "just you".into(),
            text: "answer".into(),
        },
    )
    .await
    .unwrap();
    assert_eq!(
        next_message(&mut ae).await.content,
        Content::Text("answer".into())
    );

    // The same edit in the right group is applied.
    bob.send_group_content(&g1, &edit(&in_g1)).await.unwrap();
    let (group, u) = next_update(&mut ae).await;
    assert_eq!(group, g1);
    assert_eq!(
        u.change,
        Change::Edited {
            target: in_g1,
            text: "changed".into()
        }
    );
}

#[tokio::test]
async fn the_mls_sender_is_the_author_and_a_replayed_edit_applies_once() {
    let server = spawn_server().await;
    let url = server.url();
    let (a, m) = (Person::new("alice"), Person::new("mallory"));
    let (alice, mut ae) = a.online(&url).await;
    let (g, hers) = {
        let (mallory, mut me) = m.online(&url).await;
        let g = alice.create_group("two", &[id("mallory")]).await.unwrap();
        joined(&mut me).await;
        let hers = say(&alice, &g, "alice's words").await;
        assert_eq!(next_message(&mut me).await.message_id, hers);
        mallory.disconnect().await;
        (g, hers)
    };

    // mallory's own engine (she is a member: her messages are real MLS messages).
    let mut engine = MlsClient::open(MlsStore::open(m.state()).unwrap()).unwrap();
    let t = now_ms();
    let none = || serde_json::json!({});
    let edit_body = |target: &str, text: &str, extra: serde_json::Value| {
        let mut b = serde_json::json!({ "target": target, "text": text });
        if let (Some(b), serde_json::Value::Object(extra)) = (b.as_object_mut(), extra) {
            b.extend(extra);
        }
        b.to_string()
    };
    let body = |target: &str, text: &str| edit_body(target, text, none());
    let forged = || serde_json::json!({"from": "alice", "sender": "alice", "author": "alice"});
    let mut seal = |mid: &str, kind: &str, body: &str, at: u64, extra: serde_json::Value| {
        (
            mid.to_owned(),
            engine
                .encrypt(&g, &plaintext(mid, kind, body, at, extra))
                .unwrap(),
        )
    };
    let sealed = [
        // A plaintext naming an author: there is no such field, the whole message is refused.
        seal("f0", "text", "who am i", t, forged()),
        // An edit of alice's message whose body claims to be alice's: the claim is ignored,
        // the MLS sender (mallory) is the author, and she may not edit alice's message.
        seal(
            "f1",
            "edit",
            &edit_body(hers.as_str(), "pwned", forged()),
            t,
            none(),
        ),
        // A reaction whose body claims to be alice's: applied as mallory's.
        seal(
            "f2",
            "reaction",
            &serde_json::json!({
                "target": {"sender": "alice", "messageId": hers.as_str()},
                "emoji": "👍", "remove": false, "from": "alice", "reactor": "alice"
            })
            .to_string(),
            t,
            none(),
        ),
        // An oversized reaction to alice's message.
        seal(
            "f3",
            "reaction",
            &serde_json::json!({
                "target": {"sender": "alice", "messageId": hers.as_str()},
                "emoji": "🙂".repeat(9),
                "remove": false
            })
            .to_string(),
            t,
            none(),
        ),
        // Her own message, edited; then the same edit again under a new id (a replay the
        // MLS layer cannot see: a fresh ciphertext), then an older edit.
        seal("m1", "text", "mine", t, none()),
        seal("e1", "edit", &body("m1", "mine, fixed"), t + 10, none()),
        seal("e2", "edit", &body("m1", "mine, fixed"), t + 10, none()),
        seal("e3", "edit", &body("m1", "older"), t + 5, none()),
        seal("end", "text", "done", t + 20, none()),
    ];
    drop(engine);
    send_sealed(
        &m,
        &url,
        &g,
        sealed
            .iter()
            .map(|(mid, b)| (mid.as_str(), b.clone()))
            .collect(),
    )
    .await;

    let (_, from, reason) = next_refusal(&mut ae).await;
    assert_eq!(from, "mallory");
    assert!(reason.contains("malformed"), "{reason}");
    let (_, from, reason) = next_refusal(&mut ae).await;
    assert_eq!(from, "mallory");
    assert!(reason.contains("original sender"), "{reason}");
    let (_, f2) = next_update(&mut ae).await;
    assert_eq!(f2.from, id("mallory"));
    assert!(matches!(f2.change, Change::Reaction { .. }), "{f2:?}");
    let (_, _, reason) = next_refusal(&mut ae).await;
    assert!(reason.contains("too long"), "{reason}");
    assert_eq!(next_message(&mut ae).await.message_id.as_str(), "m1");
    // Exactly one edit applied before "end".
    let mut edits = Vec::new();
    wait_for(&mut ae, |e| match e {
        PeerEvent::GroupUpdate { update, .. } => {
            edits.push(update);
            None
        }
        PeerEvent::GroupMessage(m) if m.message_id.as_str() == "end" => Some(()),
        PeerEvent::GroupMessage(m) => panic!("unexpected message {m:?}"),
        PeerEvent::Error(e) => panic!("unexpected error {e:?}"),
        _ => None,
    })
    .await;
    assert_eq!(edits.len(), 1, "{edits:?}");
    assert_eq!(edits[0].from, id("mallory"));
    assert_eq!(
        edits[0].change,
        Change::Edited {
            target: MessageId::new("m1").unwrap(),
            text: "mine, fixed".into()
        }
    );
}
