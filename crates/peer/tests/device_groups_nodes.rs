//! A linked device in an MLS group between real peers (the public `MessagingPeer` API, real MLS
//! and SQLite state) on three `lattice-server --redis` nodes sharing a real `redis-server`
//! (docs/scaling.md, "MLS groups of linked devices"): alice on node A, bob on B, carol on C; alice
//! links her laptop (the linking runs across nodes too) and it comes online on another node.
//! The laptop joins the group with nobody acting beyond alice's approval, reads bob's message,
//! its own message reaches bob, carol and alice's primary; removed, it is closed (4001), its
//! leaf is committed away and bob's next message reaches alice and carol.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../server/tests/support/redis_process.rs"]
mod redis_process;
mod support;

use lattice_peer::{Content, Conversation, GroupChange, MessagingPeer, PeerError, PeerEvent};
use support::devices::{dev, link_device};
use support::groups::{device_change, group_text, say};
use support::person::Person;
use support::server::redis_node;
use support::*;

#[tokio::test]
async fn a_linked_laptop_on_another_node_joins_the_group_talks_and_is_removed() {
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
        .create_group("Climbing", &[id("bob"), id("carol")])
        .await
        .unwrap();
    say(&bob, &g, "ready").await;
    assert_eq!(group_text(&mut ae, &g).await.1, "ready");
    assert_eq!(group_text(&mut ce, &g).await.1, "ready");

    // The new device links through node B and comes online on node C.
    let linked = link_device(&nodes[1].url(), &alice, "laptop").await;
    let dir = tempfile::tempdir().unwrap();
    let config = device_config(&nodes[2].url(), linked, &dir.path().join("laptop.mls"));
    let laptop = MessagingPeer::new(config).unwrap();
    let mut le = laptop.events();
    laptop.connect().await.unwrap();
    for events in [&mut be, &mut ce, &mut ae] {
        assert_eq!(
            device_change(events, &g, true).await,
            (id("alice"), dev("laptop"))
        );
    }
    wait_for(&mut le, |e| match e {
        PeerEvent::GroupChanged {
            group,
            change: GroupChange::Joined { .. },
            ..
        } if group == g => Some(()),
        _ => None,
    })
    .await;

    // bob's message reaches both of alice's devices (on two nodes); the laptop's reaches bob,
    // carol, and alice's primary as her own.
    say(&bob, &g, "after the laptop").await;
    for events in [&mut ae, &mut le] {
        assert_eq!(
            group_text(events, &g).await,
            (id("bob"), "after the laptop".to_owned())
        );
    }
    assert_eq!(
        group_text(&mut ce, &g).await,
        (id("bob"), "after the laptop".to_owned())
    );
    say(&laptop, &g, "from the laptop").await;
    for events in [&mut be, &mut ce] {
        assert_eq!(
            group_text(events, &g).await,
            (id("alice"), "from the laptop".to_owned())
        );
    }
    let device = wait_for(&mut ae, |e| match e {
        PeerEvent::OwnMessage(m)
            if m.conversation == Conversation::Group(g.clone())
                && matches!(&m.content, Content::Text(t) if t == "from the laptop") =>
        {
            Some(m.device)
        }
        _ => None,
    })
    .await;
    assert_eq!(device.as_deref(), Some("laptop"));

    // Removed: closed (4001) on its node, its leaf committed away, no further copies.
    alice.remove_device(&dev("laptop")).await.unwrap();
    wait_for(&mut le, |e| match e {
        PeerEvent::Error(PeerError::DeviceRemoved) => Some(()),
        _ => None,
    })
    .await;
    for events in [&mut be, &mut ce, &mut ae] {
        assert_eq!(
            device_change(events, &g, false).await,
            (id("alice"), dev("laptop"))
        );
    }
    say(&bob, &g, "without the laptop").await;
    assert_eq!(group_text(&mut ae, &g).await.1, "without the laptop");
    assert_eq!(group_text(&mut ce, &g).await.1, "without the laptop");
    drop((laptop, alice, bob, carol));
}
