//! MLS groups between real peers (the public `MessagingPeer` API, real SQLite state) each on a
//! different node of a `lattice-server --redis` cluster on a real `redis-server`: the KeyPackage
//! directory, the Welcomes, the Commits and the group messages all cross nodes; and a 1:1
//! `lattice-v1` message's end-to-end `delivered` across nodes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../server/tests/support/redis_process.rs"]
mod redis_process;
mod support;

use lattice_peer::{Algorithm, Content, EventStream, GroupChange, GroupMessage, PeerEvent};
use lattice_protocol::{AckStatus, MessageId};
use support::groups::say;
use support::person::Person;
use support::server::redis_node;
use support::*;

async fn next_text(events: &mut EventStream) -> (String, String) {
    let m: GroupMessage = wait_for(events, |e| match e {
        PeerEvent::GroupMessage(m) => Some(m),
        PeerEvent::Error(e) => panic!("unexpected error {e:?}"),
        _ => None,
    })
    .await;
    match m.content {
        Content::Text(t) => (m.from.to_string(), t),
        other => panic!("not a text: {other:?}"),
    }
}

async fn joined(events: &mut EventStream) -> Vec<String> {
    wait_for(events, |e| match e {
        PeerEvent::GroupChanged {
            change: GroupChange::Joined { members, .. },
            ..
        } => {
            let mut m: Vec<String> = members.iter().map(ToString::to_string).collect();
            m.sort();
            Some(m)
        }
        PeerEvent::Error(e) => panic!("unexpected error {e:?}"),
        _ => None,
    })
    .await
}

#[tokio::test]
async fn three_peers_on_three_nodes_make_a_group_and_talk_every_way() {
    let redis = redis_process::RedisProcess::start().await;
    let nodes = [
        redis_node(&redis.url()).await,
        redis_node(&redis.url()).await,
        redis_node(&redis.url()).await,
    ];
    let (a, b, c) = (
        Person::new("alice"),
        Person::new("bob"),
        Person::new("carol"),
    );
    let (alice, mut ae) = a.online(&nodes[0].url()).await;
    let (bob, mut be) = b.online(&nodes[1].url()).await;
    let (carol, mut ce) = c.online(&nodes[2].url()).await;

    let g = alice
        .create_group("friends", &[id("bob"), id("carol")])
        .await
        .unwrap();
    let everyone = vec!["alice".to_owned(), "bob".into(), "carol".into()];
    assert_eq!(joined(&mut be).await, everyone);
    assert_eq!(joined(&mut ce).await, everyone);

    say(&alice, &g, "from node 0").await;
    for e in [&mut be, &mut ce] {
        assert_eq!(next_text(e).await, ("alice".into(), "from node 0".into()));
    }
    say(&bob, &g, "from node 1").await;
    for e in [&mut ae, &mut ce] {
        assert_eq!(next_text(e).await, ("bob".into(), "from node 1".into()));
    }
    // a Commit from node 2 (a rename) reaches the members on the other nodes
    carol.rename_group(&g, "best friends").await.unwrap();
    for e in [&mut ae, &mut be] {
        wait_for(e, |ev| match ev {
            PeerEvent::GroupChanged {
                change: GroupChange::Renamed(n),
                ..
            } => Some(n),
            _ => None,
        })
        .await;
    }
    say(&carol, &g, "from node 2").await;
    for e in [&mut ae, &mut be] {
        assert_eq!(next_text(e).await, ("carol".into(), "from node 2".into()));
    }
    assert_eq!(bob.group_info(&g).unwrap().name, "best friends");
}

/// The server's first answer to `message_id`.
async fn first_ack(events: &mut EventStream, message_id: &MessageId) -> AckStatus {
    wait_for(events, |e| match e {
        PeerEvent::MessageAck(a) if a.message_id == *message_id => Some(a.status),
        PeerEvent::Error(e) => panic!("unexpected error {e:?}"),
        _ => None,
    })
    .await
}

/// The text of the next 1:1 message.
async fn next_direct(events: &mut EventStream) -> String {
    let m = wait_for(events, |e| match e {
        PeerEvent::Message(m) => Some(m),
        PeerEvent::Error(e) => panic!("unexpected error {e:?}"),
        _ => None,
    })
    .await;
    match m.content {
        Content::Text(t) => t,
        other => panic!("not a text: {other:?}"),
    }
}

/// Two peers on two nodes: a `lattice-v1` message's sender hears `delivered` (its only answer)
/// once the recipient's client acknowledged it on the other node, both ways, as on one node.
#[tokio::test]
async fn a_message_to_a_peer_on_another_node_is_answered_delivered_after_its_ack() {
    let redis = redis_process::RedisProcess::start().await;
    let nodes = [
        redis_node(&redis.url()).await,
        redis_node(&redis.url()).await,
    ];
    let (a, b) = (Person::new("alice"), Person::new("bob"));
    let (alice, mut ae) = a.without_mls(&nodes[0].url()).await;
    let (bob, mut be) = b.without_mls(&nodes[1].url()).await;

    let sent = alice.send_message(&id("bob"), "across").await.unwrap();
    assert_eq!(sent.algorithm, Algorithm::LatticeV1);
    assert_eq!(next_direct(&mut be).await, "across");
    assert_eq!(
        first_ack(&mut ae, &sent.message_id).await,
        AckStatus::Delivered
    );

    let back = bob.send_message(&id("alice"), "and back").await.unwrap();
    assert_eq!(next_direct(&mut ae).await, "and back");
    assert_eq!(
        first_ack(&mut be, &back.message_id).await,
        AckStatus::Delivered
    );
}
