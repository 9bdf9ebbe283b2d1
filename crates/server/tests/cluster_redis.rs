//! The Redis side of several nodes (`lattice_server::cluster`), against a real `redis-server` this
//! test starts: each "node" is its own node id with its own Redis connections, as separate
//! processes would have. One live holder per id, reclaim by the same verified identity, presence
//! pages and expiry, node channels both ways and after a Redis restart, mailbox streams with
//! dedup and quotas across nodes, durability across a Redis crash, and clear errors while Redis
//! is down.
//!
//! Every test that does not restart Redis runs twice (`both!`): on one Redis (`…::single`) and on
//! a 3-master Redis Cluster (`…::cluster`); the cluster's own failures are in
//! `tests/redis_cluster_mode.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/redis_process.rs"]
mod redis_process;

use std::time::Duration;

use lattice_protocol::{ClientId, DeviceId, MessageId};
use lattice_server::cluster::channel::{Channels, Inbound};
use lattice_server::cluster::directory::{Bound, RedisDirectory};
use lattice_server::cluster::mailbox::{consumer, RedisEnqueueError, RedisMailbox};
use lattice_server::cluster::presence::{
    Claim, DevicesRefreshed, Holder, PeerKeys, Presence, Refreshed, Released,
};
use lattice_server::cluster::stats::RedisStats;
use lattice_server::cluster::{connect, ClusterError, NodeId, RedisUrl};
use lattice_server::store::{Accepted, Binding, Limit, MailItem, Quota};
use redis_process::{Backend, RedisProcess};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A bound so a broken build fails instead of hanging (never a timing assertion).
const WAIT: Duration = Duration::from_secs(20);

fn id(s: &str) -> ClientId {
    ClientId::new(s).unwrap()
}

/// The keys of a registration: a verified one when `ik` is given.
fn keys(ik: Option<[u8; 32]>) -> PeerKeys {
    PeerKeys {
        public_key: vec![ik.map_or(0, |k| k[0]); 1184],
        identity_key: ik,
        key_signature: ik.map(|k| vec![k[0] ^ 0x5a; 64]),
        link_relay: false,
    }
}

fn url(r: &RedisProcess) -> RedisUrl {
    RedisUrl::parse(&r.url()).unwrap()
}

async fn node(r: &Backend) -> Presence {
    Presence::new(r.conn().await, NodeId::random())
}

fn mail(sender: &str, mid: &str, body: &str) -> MailItem {
    MailItem {
        message_id: MessageId::new(mid).unwrap(),
        sender: id(sender),
        frame: format!(r#"{{"type":"message","fromId":"{sender}","message":{body}}}"#),
    }
}

async fn next(rx: &mut mpsc::Receiver<Inbound>) -> Inbound {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("something arrives")
        .expect("channel open")
}

async fn exactly_one_of_racing_claims_from_three_nodes_wins(redis: &Backend) {
    let nodes = [node(redis).await, node(redis).await, node(redis).await];
    // Unverified claims, then verified claims with different identity keys: 30 each, at once.
    for (round, verified) in [(0u8, false), (1, true)] {
        let who = id(&format!("race-{round}"));
        let mut tasks = Vec::new();
        for i in 0..30u64 {
            let p = nodes[usize::try_from(i % 3).unwrap()].clone();
            let who = who.clone();
            let ik = verified.then(|| [u8::try_from(i).unwrap(); 32]);
            tasks.push(tokio::spawn(async move {
                (
                    p.node().clone(),
                    i,
                    p.claim(&who, i, &keys(ik)).await.unwrap(),
                )
            }));
        }
        let mut winners = Vec::new();
        let mut holders = Vec::new();
        for t in tasks {
            match t.await.unwrap() {
                (node, conn, Claim::Won { replaced: None }) => winners.push(Holder { node, conn }),
                (_, _, Claim::Taken(h)) => holders.push(h),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(winners.len(), 1, "exactly one claim wins: {winners:?}");
        let winner = &winners[0];
        assert_eq!(
            nodes[0].holder(&who).await.unwrap().as_ref(),
            Some(winner),
            "the winner holds the id"
        );
        // Every loser saw a holder; the last ones saw the winner.
        assert_eq!(holders.len(), 29);
    }
}

both!(exactly_one_of_racing_claims_from_three_nodes_wins);

fn dev(s: &str) -> DeviceId {
    DeviceId::new(s).unwrap()
}

/// Linked devices in presence: each device of an id has its own holder across nodes; a device
/// joins the id, or replaces its own older connection, only with the id's identity key; the
/// claim says whether it was the id's first live device (of devices racing from three nodes
/// onto an offline id exactly one is first), the release whether it was the last (the id then
/// leaves `discover`); a dead node's device expires on its own while the id's other devices stay.
async fn devices_of_one_id_are_held_one_by_one_across_nodes(redis: &Backend) {
    let (a, b, c) = (node(redis).await, node(redis).await, node(redis).await);
    let alice = id("alice");
    let ik = Some([7u8; 32]);
    let holds = |p: &Presence, conn| Holder {
        node: p.node().clone(),
        conn,
    };
    let (claim, first) = a
        .claim_device(&alice, &DeviceId::primary(), 1, &keys(ik))
        .await
        .unwrap();
    assert_eq!((claim, first), (Claim::Won { replaced: None }, true));
    let (claim, first) = b
        .claim_device(&alice, &dev("phone"), 2, &keys(ik))
        .await
        .unwrap();
    assert_eq!((claim, first), (Claim::Won { replaced: None }, false));
    // Another identity, or an unverified claim, neither joins nor replaces.
    for other in [Some([8u8; 32]), None] {
        for device in ["phone", "tablet"] {
            let (claim, _) = c
                .claim_device(&alice, &dev(device), 3, &keys(other))
                .await
                .unwrap();
            assert!(matches!(claim, Claim::Taken(_)), "{device}: {claim:?}");
        }
    }
    // The same identity replaces only the phone's connection.
    let (claim, first) = c
        .claim_device(&alice, &dev("phone"), 3, &keys(ik))
        .await
        .unwrap();
    assert_eq!(
        (claim, first),
        (
            Claim::Won {
                replaced: Some(holds(&b, 2))
            },
            false
        )
    );
    let (devices, shown) = b.live(&alice).await.unwrap().expect("online");
    assert_eq!(
        devices,
        [
            (DeviceId::primary(), holds(&a, 1)),
            (dev("phone"), holds(&c, 3))
        ]
    );
    assert_eq!(shown, keys(ik));
    // The replaced connection releases nothing; the phone leaving keeps alice online.
    assert_eq!(
        b.release_device(&alice, &dev("phone"), 2).await.unwrap(),
        Released::NotHeld
    );
    assert_eq!(
        c.release_device(&alice, &dev("phone"), 3).await.unwrap(),
        Released::Released { last: false }
    );
    assert_eq!(
        a.online_page(None, 10).await.unwrap().0,
        std::slice::from_ref(&alice)
    );
    assert_eq!(
        a.release_device(&alice, &DeviceId::primary(), 1)
            .await
            .unwrap(),
        Released::Released { last: true }
    );
    assert!(a.online_page(None, 10).await.unwrap().0.is_empty());
    assert_eq!(a.live(&alice).await.unwrap(), None);

    // Eight devices of carol racing from three nodes onto an offline id: exactly one is first.
    let nodes = [a.clone(), b.clone(), c.clone()];
    let carol = id("carol");
    let mut tasks = Vec::new();
    for i in 0..8u64 {
        let p = nodes[usize::try_from(i % 3).unwrap()].clone();
        let carol = carol.clone();
        let device = if i == 0 {
            DeviceId::primary()
        } else {
            dev(&format!("d{i}"))
        };
        tasks.push(tokio::spawn(async move {
            p.claim_device(&carol, &device, i, &keys(Some([9; 32])))
                .await
                .unwrap()
        }));
    }
    let mut firsts = 0;
    for t in tasks {
        let (claim, first) = t.await.unwrap();
        assert_eq!(claim, Claim::Won { replaced: None });
        firsts += usize::from(first);
    }
    assert_eq!(firsts, 1, "one first device");
    assert_eq!(a.live(&carol).await.unwrap().unwrap().0.len(), 8);

    // A node that dies (a short TTL, never refreshed) loses its device alone.
    let dying = Presence::with_ttl(
        redis.conn().await,
        NodeId::random(),
        Duration::from_millis(300),
    );
    let dave = id("dave");
    let dik = Some([4u8; 32]);
    a.claim_device(&dave, &DeviceId::primary(), 1, &keys(dik))
        .await
        .unwrap();
    dying
        .claim_device(&dave, &dev("phone"), 1, &keys(dik))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while a.live(&dave).await.unwrap().unwrap().0.len() == 2 {
        assert!(tokio::time::Instant::now() < deadline, "the phone expires");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        a.live(&dave).await.unwrap().unwrap().0,
        [(DeviceId::primary(), holds(&a, 1))]
    );
    // Its next connection, anywhere, replaces nobody; the dead one's refresh finds it taken.
    let (claim, first) = b
        .claim_device(&dave, &dev("phone"), 5, &keys(dik))
        .await
        .unwrap();
    assert_eq!((claim, first), (Claim::Won { replaced: None }, false));
    assert_eq!(
        dying
            .refresh_devices(&[(dave.clone(), dev("phone"), 1)])
            .await
            .unwrap(),
        DevicesRefreshed {
            taken: vec![(dave.clone(), dev("phone"))],
            gone: vec![]
        }
    );
    assert_eq!(
        a.refresh_devices(&[(dave.clone(), DeviceId::primary(), 1)])
            .await
            .unwrap(),
        DevicesRefreshed::default()
    );
}

both!(devices_of_one_id_are_held_one_by_one_across_nodes);

async fn a_verified_owner_reclaims_its_id_from_a_connection_on_another_node(redis: &Backend) {
    let (a, b, c) = (node(redis).await, node(redis).await, node(redis).await);
    let alice = id("alice");
    let ik = [7u8; 32];
    assert_eq!(
        a.claim(&alice, 1, &keys(Some(ik))).await.unwrap(),
        Claim::Won { replaced: None }
    );
    // The same connection claiming again (a retry) keeps it.
    assert_eq!(
        a.claim(&alice, 1, &keys(Some(ik))).await.unwrap(),
        Claim::Won { replaced: None }
    );
    let a_holds = Holder {
        node: a.node().clone(),
        conn: 1,
    };
    assert_eq!(
        b.claim(&alice, 9, &keys(Some(ik))).await.unwrap(),
        Claim::Won {
            replaced: Some(a_holds)
        },
        "the same identity replaces the old connection and learns where it was"
    );
    let b_holds = Holder {
        node: b.node().clone(),
        conn: 9,
    };
    // Another identity, or an unverified claim, cannot take it.
    assert_eq!(
        c.claim(&alice, 3, &keys(Some([8u8; 32]))).await.unwrap(),
        Claim::Taken(b_holds.clone())
    );
    assert_eq!(
        c.claim(&alice, 4, &keys(None)).await.unwrap(),
        Claim::Taken(b_holds.clone())
    );
    // The replaced connection's release (when node A closes it) frees nothing.
    assert!(!a.release(&alice, 1).await.unwrap());
    assert_eq!(a.holder(&alice).await.unwrap(), Some(b_holds));
    // Its refresh reports the id lost, so node A closes a session it did not close yet.
    assert_eq!(
        a.refresh(&[(alice.clone(), 1)]).await.unwrap(),
        Refreshed {
            taken: vec![alice.clone()],
            gone: vec![]
        }
    );
    // Any node answers a key request for alice from her presence, the current holder's keys.
    let (holder, shown) = c.keys(&alice).await.unwrap().expect("online");
    assert_eq!(holder.node, *b.node());
    assert_eq!(shown, keys(Some(ik)));
    // An unverified holder is never replaced, not even by a verified claim.
    let bob = id("bob");
    assert!(matches!(
        a.claim(&bob, 5, &keys(None)).await.unwrap(),
        Claim::Won { replaced: None }
    ));
    assert!(matches!(
        b.claim(&bob, 6, &keys(Some(ik))).await.unwrap(),
        Claim::Taken(_)
    ));
}

both!(a_verified_owner_reclaims_its_id_from_a_connection_on_another_node);

async fn discover_pages_ids_of_every_node_and_release_frees_only_the_holders_own(redis: &Backend) {
    let (a, b) = (node(redis).await, node(redis).await);
    for i in 0..5 {
        a.claim(&id(&format!("a{i}")), i, &keys(None))
            .await
            .unwrap();
        b.claim(&id(&format!("b{i}")), i, &keys(None))
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let (page, more) = a.online_page(cursor.as_ref(), 4).await.unwrap();
        assert!(page.len() <= 4);
        seen.extend(page.iter().map(ToString::to_string));
        cursor = page.last().cloned();
        if !more {
            break;
        }
    }
    let want: Vec<String> = ["a0", "a1", "a2", "a3", "a4", "b0", "b1", "b2", "b3", "b4"]
        .map(String::from)
        .to_vec();
    assert_eq!(seen, want, "every node's ids, in order, each once");
    assert!(
        !a.release(&id("b3"), 3).await.unwrap(),
        "not A's to release"
    );
    assert!(
        !b.release(&id("b3"), 4).await.unwrap(),
        "not that connection's"
    );
    assert!(b.release(&id("b3"), 3).await.unwrap());
    let (page, more) = b.online_page(None, 100).await.unwrap();
    assert!(!more);
    assert!(!page.contains(&id("b3")));
    assert_eq!(page.len(), 9);
    assert_eq!(a.holder(&id("b3")).await.unwrap(), None);
}

both!(discover_pages_ids_of_every_node_and_release_frees_only_the_holders_own);

async fn a_dead_nodes_ids_expire_within_one_ttl_and_a_lost_key_is_claimed_again(redis: &Backend) {
    let conn = redis.conn().await;
    // Node A "dies": it claimed with a short TTL and never refreshes.
    let a = Presence::with_ttl(conn.clone(), NodeId::random(), Duration::from_millis(300));
    let b = node(redis).await;
    a.claim(&id("ghost"), 1, &keys(None)).await.unwrap();
    b.claim(&id("live"), 1, &keys(None)).await.unwrap();
    let (page, _) = b.online_page(None, 10).await.unwrap();
    assert_eq!(page, [id("ghost"), id("live")]);
    let deadline = tokio::time::Instant::now() + WAIT;
    while b.holder(&id("ghost")).await.unwrap().is_some() {
        assert!(tokio::time::Instant::now() < deadline, "the key expires");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (page, _) = b.online_page(None, 10).await.unwrap();
    assert_eq!(
        page,
        [id("live")],
        "gone from discover once its key expired"
    );
    // The id is free for anyone now.
    assert!(matches!(
        b.claim(&id("ghost"), 2, &keys(None)).await.unwrap(),
        Claim::Won { replaced: None }
    ));
    // An unverified peer's key is there for key requests from any node too.
    let (_, shown) = a.keys(&id("live")).await.unwrap().expect("online");
    assert_eq!(shown, keys(None));
    assert_eq!(a.keys(&id("nobody")).await.unwrap(), None);
    // A key lost without anyone else claiming it (Redis restarted without it) is reported by
    // the holder's next refresh, and claimed again.
    let mut raw = conn.clone();
    let _: () = redis::cmd("DEL")
        .arg("lattice:peer:{live}")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(
        b.refresh(&[(id("live"), 1)]).await.unwrap(),
        Refreshed {
            taken: vec![],
            gone: vec![id("live")]
        }
    );
    assert_eq!(
        b.claim(&id("live"), 1, &keys(None)).await.unwrap(),
        Claim::Won { replaced: None }
    );
    assert_eq!(
        b.refresh(&[(id("live"), 1)]).await.unwrap(),
        Refreshed::default()
    );
    assert_eq!(
        a.holder(&id("live")).await.unwrap(),
        Some(Holder {
            node: b.node().clone(),
            conn: 1
        })
    );
}

both!(a_dead_nodes_ids_expire_within_one_ttl_and_a_lost_key_is_claimed_again);

async fn node_channels_carry_payloads_both_ways_and_presence_to_every_node(redis: &Backend) {
    let stop = CancellationToken::new();
    let (na, nb) = (NodeId::random(), NodeId::random());
    let (a, mut a_rx) = Channels::open(&redis.url(), na.clone(), stop.clone())
        .await
        .unwrap();
    let (b, mut b_rx) = Channels::open(&redis.url(), nb.clone(), stop.clone())
        .await
        .unwrap();
    assert_eq!(a.publish_to(&nb, b"to b").await.unwrap(), 1);
    assert_eq!(next(&mut b_rx).await, Inbound::Node(b"to b".to_vec()));
    assert_eq!(b.publish_to(&na, b"to a").await.unwrap(), 1);
    assert_eq!(next(&mut a_rx).await, Inbound::Node(b"to a".to_vec()));
    assert_eq!(a.publish_presence(b"alice up").await.unwrap(), 2);
    assert_eq!(
        next(&mut a_rx).await,
        Inbound::Presence(b"alice up".to_vec())
    );
    assert_eq!(
        next(&mut b_rx).await,
        Inbound::Presence(b"alice up".to_vec())
    );
    assert_eq!(
        a.publish_to(&NodeId::random(), b"nobody").await.unwrap(),
        0,
        "a node that is gone: the sender learns nobody got it"
    );
    // Binary-safe: a frame is passed through as is.
    let bytes: Vec<u8> = (0..=255).collect();
    b.publish_to(&na, &bytes).await.unwrap();
    assert_eq!(next(&mut a_rx).await, Inbound::Node(bytes));
    // What /metrics shows for each node.
    let count = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(count(&a.stats().published), 3);
    assert_eq!(count(&a.stats().received), 3);
    assert_eq!(count(&b.stats().published), 2);
    assert_eq!(count(&b.stats().received), 2);
    assert_eq!(count(&a.stats().dropped), 0);
    stop.cancel();
}

both!(node_channels_carry_payloads_both_ways_and_presence_to_every_node);

#[tokio::test]
async fn channels_subscribe_again_after_redis_restarts() {
    let mut redis = RedisProcess::start().await;
    let stop = CancellationToken::new();
    let (na, nb) = (NodeId::random(), NodeId::random());
    let (a, mut a_rx) = Channels::open(&url(&redis), na.clone(), stop.clone())
        .await
        .unwrap();
    let (_b, mut b_rx) = Channels::open(&url(&redis), nb.clone(), stop.clone())
        .await
        .unwrap();
    redis.restart().await;
    for rx in [&mut a_rx, &mut b_rx] {
        assert_eq!(next(rx).await, Inbound::Disconnected);
        assert_eq!(next(rx).await, Inbound::Reconnected);
    }
    // Subscribed again: publishes arrive as before.
    let mut published = 0;
    for _ in 0..50 {
        published = a.publish_to(&nb, b"after").await.unwrap_or(0);
        if published == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(published, 1, "node B is subscribed again");
    assert_eq!(next(&mut b_rx).await, Inbound::Node(b"after".to_vec()));
    stop.cancel();
}

async fn mail_is_deduplicated_across_nodes_and_removed_by_ack(redis: &Backend) {
    let a = RedisMailbox::new(redis.conn().await);
    let b = RedisMailbox::new(redis.conn().await);
    let bob = id("bob");
    let m1 = mail("alice", "m-1", r#"{"n":1}"#);
    let (first, cursor) = a.enqueue(&bob, &m1, &Quota::UNLIMITED).await.unwrap();
    assert_eq!(first, Accepted::Stored);
    // The sender's retry reaches another node: stored once.
    let (again, same) = b.enqueue(&bob, &m1, &Quota::UNLIMITED).await.unwrap();
    assert_eq!(
        (again, same.as_str()),
        (Accepted::Duplicate, cursor.as_str())
    );
    // Another sender's message with the same id is a different message.
    let m2 = mail("carol", "m-1", r#"{"n":2}"#);
    assert_eq!(
        b.enqueue(&bob, &m2, &Quota::UNLIMITED).await.unwrap().0,
        Accepted::Stored
    );
    assert_eq!(a.count(&bob).await.unwrap(), 2);
    let all = b.pending(&bob, None, 10).await.unwrap();
    assert_eq!(
        all.iter().map(|(_, m)| m.clone()).collect::<Vec<_>>(),
        [m1.clone(), m2.clone()]
    );
    let rest = b.pending(&bob, Some(&all[0].0), 10).await.unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].1, m2);
    // The ack arrives on the other node.
    assert!(a
        .remove(&bob, &id("alice"), &MessageId::new("m-1").unwrap())
        .await
        .unwrap());
    assert!(!b
        .remove(&bob, &id("alice"), &MessageId::new("m-1").unwrap())
        .await
        .unwrap());
    assert_eq!(a.count(&bob).await.unwrap(), 1);
    assert_eq!(b.pending(&bob, None, 10).await.unwrap()[0].1, m2);
}

both!(mail_is_deduplicated_across_nodes_and_removed_by_ack);

async fn the_mailbox_quota_holds_across_nodes_and_frees_on_ack_and_expiry(redis: &Backend) {
    let a = RedisMailbox::new(redis.conn().await);
    let b = RedisMailbox::new(redis.conn().await);
    let bob = id("bob");
    let quota = Quota {
        count: 3,
        bytes: 10_000,
        sender_count: 2,
        sender_bytes: 10_000,
    };
    a.enqueue(&bob, &mail("s1", "1", "{}"), &quota)
        .await
        .unwrap();
    b.enqueue(&bob, &mail("s1", "2", "{}"), &quota)
        .await
        .unwrap();
    assert!(matches!(
        a.enqueue(&bob, &mail("s1", "3", "{}"), &quota).await,
        Err(RedisEnqueueError::Full(Limit::SenderCount))
    ));
    // A resend of a stored message is still answered as stored.
    assert_eq!(
        b.enqueue(&bob, &mail("s1", "2", "{}"), &quota)
            .await
            .unwrap()
            .0,
        Accepted::Duplicate
    );
    b.enqueue(&bob, &mail("s2", "1", "{}"), &quota)
        .await
        .unwrap();
    assert!(matches!(
        b.enqueue(&bob, &mail("s3", "1", "{}"), &quota).await,
        Err(RedisEnqueueError::Full(Limit::Count))
    ));
    let big = "x".repeat(20_000);
    assert!(matches!(
        a.enqueue(&id("dave"), &mail("s1", "1", &format!("\"{big}\"")), &quota)
            .await,
        Err(RedisEnqueueError::Full(Limit::Bytes))
    ));
    // An ack frees its place.
    assert!(a
        .remove(&bob, &id("s1"), &MessageId::new("1").unwrap())
        .await
        .unwrap());
    a.enqueue(&bob, &mail("s1", "3", "{}"), &quota)
        .await
        .unwrap();
    // Expiry frees every place (the entries are older than 1 ms once 20 ms passed).
    assert_eq!(
        a.expire(&bob, Duration::from_secs(3600), 100)
            .await
            .unwrap(),
        0
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        a.expire(&bob, Duration::from_millis(1), 100).await.unwrap(),
        3
    );
    assert_eq!(a.count(&bob).await.unwrap(), 0);
    for i in 0..2 {
        a.enqueue(&bob, &mail("s1", &format!("n{i}"), "{}"), &quota)
            .await
            .unwrap();
    }
}

both!(the_mailbox_quota_holds_across_nodes_and_frees_on_ack_and_expiry);

#[tokio::test]
async fn accepted_mail_survives_a_redis_crash() {
    // `appendfsync always`: an enqueue answered is on disk. (With `everysec`, the documented
    // default, a crash of Redis itself may lose the last second.)
    let mut redis = RedisProcess::start_with(&["--appendfsync", "always"]).await;
    let conn = connect(&url(&redis)).await.unwrap();
    let bob = id("bob");
    let mut tasks = Vec::new();
    for n in 0..2 {
        let mbox = RedisMailbox::new(connect(&url(&redis)).await.unwrap());
        let bob = bob.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..100 {
                let m = mail(&format!("s{n}"), &format!("m{i}"), "{}");
                mbox.enqueue(&bob, &m, &Quota::UNLIMITED).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    redis.restart().await;
    let mbox = RedisMailbox::new(conn);
    let mut count = Err(());
    for _ in 0..50 {
        // The manager reconnects on the first failed command.
        if let Ok(n) = mbox.count(&bob).await {
            count = Ok(n);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        count,
        Ok(200),
        "every accepted message is back after the crash"
    );
    assert_eq!(mbox.pending(&bob, None, 500).await.unwrap().len(), 200);
}

#[tokio::test]
async fn redis_down_gives_a_clear_error_and_the_same_handles_work_once_it_is_back() {
    let mut redis = RedisProcess::start().await;
    let stats = std::sync::Arc::new(RedisStats::default());
    let p = Presence::new(connect(&url(&redis)).await.unwrap(), NodeId::random())
        .with_stats(stats.clone());
    let mbox = RedisMailbox::new(connect(&url(&redis)).await.unwrap()).with_stats(stats.clone());
    p.claim(&id("before"), 1, &keys(None)).await.unwrap();
    redis.kill9();
    let refused = tokio::time::timeout(WAIT, p.claim(&id("during"), 2, &keys(None)))
        .await
        .expect("a bounded wait, not a hang");
    assert!(
        matches!(refused, Err(ClusterError::Redis(_))),
        "{refused:?}"
    );
    let refused = tokio::time::timeout(
        WAIT,
        mbox.enqueue(&id("bob"), &mail("a", "1", "{}"), &Quota::UNLIMITED),
    )
    .await
    .expect("a bounded wait");
    assert!(matches!(refused, Err(RedisEnqueueError::Redis(_))));
    let mut metrics = String::new();
    stats.render(&mut metrics);
    assert!(
        metrics.contains("lattice_redis_errors_total 2\n"),
        "both failures counted:\n{metrics}"
    );
    // The first claim's two round trips (the claim, then the online index), and the two
    // failures.
    assert!(
        metrics.contains("lattice_redis_latency_seconds_count 4\n"),
        "{metrics}"
    );
    redis.restart().await;
    let mut back = false;
    for _ in 0..50 {
        if p.claim(&id("after"), 3, &keys(None)).await.is_ok() {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(back, "the same handle reconnects");
    assert!(mbox
        .enqueue(&id("bob"), &mail("a", "1", "{}"), &Quota::UNLIMITED)
        .await
        .is_ok());
}

fn binding(ik: u8, kem: u8) -> Binding {
    Binding {
        identity_key: [ik; 32],
        kem_public_key: vec![kem; 1184],
        key_signature: vec![ik ^ kem; 64],
    }
}

async fn binding_rules_hold_when_nodes_race_for_one_new_id(redis: &Backend) {
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(RedisDirectory::new(redis.conn().await));
    }
    let carol = id("carol");
    let mut tasks = Vec::new();
    for i in 0..30u8 {
        let d = nodes[usize::from(i % 3)].clone();
        let carol = carol.clone();
        tasks.push(tokio::spawn(async move {
            (i, d.bind(&carol, &binding(i, 1), 0, 1000).await.unwrap())
        }));
    }
    let mut created = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            (i, Bound::Created) => created.push(i),
            (_, Bound::Taken) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(created.len(), 1, "exactly one identity binds the id");
    let winner = created[0];
    assert_eq!(
        nodes[1].get(&carol).await.unwrap(),
        Some(binding(winner, 1))
    );
    // The same identity rotates its KEM key from any node; no other identity can.
    assert_eq!(
        nodes[2]
            .bind(&carol, &binding(winner, 2), 0, 2000)
            .await
            .unwrap(),
        Bound::Updated
    );
    let other = winner.wrapping_add(1);
    assert_eq!(
        nodes[0]
            .bind(&carol, &binding(other, 3), 0, 3000)
            .await
            .unwrap(),
        Bound::Taken
    );
    assert_eq!(
        nodes[0].get(&carol).await.unwrap(),
        Some(binding(winner, 2))
    );
    assert_eq!(nodes[0].get(&id("nobody")).await.unwrap(), None);
}

both!(binding_rules_hold_when_nodes_race_for_one_new_id);

async fn the_binding_cap_holds_across_nodes_and_unused_bindings_expire(redis: &Backend) {
    let a = RedisDirectory::new(redis.conn().await);
    let b = RedisDirectory::new(redis.conn().await);
    let mut tasks = Vec::new();
    for i in 0..20u8 {
        let d = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            d.bind(&id(&format!("u{i:02}")), &binding(i, 1), 5, 1000)
                .await
                .unwrap()
        }));
    }
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap());
    }
    let created = outcomes.iter().filter(|o| **o == Bound::Created).count();
    let full = outcomes.iter().filter(|o| **o == Bound::Full).count();
    assert_eq!((created, full), (5, 15), "{outcomes:?}");
    assert_eq!(a.binding_count().await.unwrap(), 5);
    // Full: an existing identity still updates its key.
    let mut bound = Vec::new();
    for i in 0..20u8 {
        let who = id(&format!("u{i:02}"));
        if a.get(&who).await.unwrap().is_some() {
            bound.push((i, who));
        }
    }
    let (i0, first) = bound[0].clone();
    assert_eq!(
        b.bind(&first, &binding(i0, 9), 5, 1000).await.unwrap(),
        Bound::Updated
    );
    // Expiry: bindings last used before the cutoff go, unless kept or touched since.
    let (_, touched) = bound[1].clone();
    let (_, kept) = bound[2].clone();
    b.touch(&touched, 9000).await.unwrap();
    b.touch(&id("never-bound"), 9000).await.unwrap();
    // The first one has mail, which goes with its binding.
    let mbox = RedisMailbox::new(redis.conn().await);
    mbox.enqueue(&first, &mail("s", "1", "{}"), &Quota::UNLIMITED)
        .await
        .unwrap();
    mbox.enqueue(&touched, &mail("s", "1", "{}"), &Quota::UNLIMITED)
        .await
        .unwrap();
    let keep = |c: &ClientId| *c == kept;
    assert_eq!(a.expire_unused(5000, 100, &keep).await.unwrap(), 3);
    assert_eq!(a.binding_count().await.unwrap(), 2);
    assert!(a.get(&touched).await.unwrap().is_some());
    assert!(a.get(&kept).await.unwrap().is_some());
    assert_eq!(a.get(&first).await.unwrap(), None);
    assert_eq!(mbox.count(&first).await.unwrap(), 0);
    assert_eq!(
        mbox.count(&touched).await.unwrap(),
        1,
        "a kept id keeps its mail"
    );
    let mut raw = redis.conn().await;
    let left: i64 = redis::cmd("EXISTS")
        .arg(format!("lattice:mbox:{{{first}}}"))
        .arg(format!("lattice:mbox:{{{first}}}:ids"))
        .arg(format!("lattice:mbox:{{{first}}}:use"))
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(left, 0, "no key of the forgotten id's mailbox is left");
    assert_eq!(a.get(&id("never-bound")).await.unwrap(), None);
}

both!(the_binding_cap_holds_across_nodes_and_unused_bindings_expire);

fn ids(items: &[(String, MailItem)]) -> Vec<String> {
    items
        .iter()
        .map(|(_, m)| m.message_id.to_string())
        .collect()
}

async fn mail_handed_to_a_connection_on_a_killed_node_goes_to_the_next_connection_elsewhere(
    redis: &Backend,
) {
    let a = RedisMailbox::new(redis.conn().await);
    let b = RedisMailbox::new(redis.conn().await);
    let (na, nb) = (NodeId::random(), NodeId::random());
    let bob = id("bob");
    for i in 0..5 {
        a.enqueue(
            &bob,
            &mail("alice", &format!("m{i}"), "{}"),
            &Quota::UNLIMITED,
        )
        .await
        .unwrap();
    }
    // Bob's connection 1 on node A is handed three and acknowledges one; then node A dies.
    let c1 = consumer(&na, 1);
    let first = a.claim(&bob, &c1, 3).await.unwrap();
    assert_eq!(ids(&first), ["m0", "m1", "m2"]);
    assert!(a
        .remove(&bob, &id("alice"), &MessageId::new("m0").unwrap())
        .await
        .unwrap());
    // Nothing handed out is handed out again to a plain claim.
    let c9 = consumer(&na, 9);
    assert_eq!(ids(&a.claim(&bob, &c9, 1).await.unwrap()), ["m3"]);
    // Bob comes back on node B: everything handed out and not acknowledged is his again, then
    // what nobody was handed.
    let c2 = consumer(&nb, 2);
    let (again, next) = b.take_over(&bob, &c2, None, 100).await.unwrap();
    assert_eq!(ids(&again), ["m1", "m2", "m3"]);
    assert_eq!(next, None);
    assert_eq!(ids(&b.claim(&bob, &c2, 100).await.unwrap()), ["m4"]);
    assert!(b.claim(&bob, &c2, 100).await.unwrap().is_empty());
    for m in ["m1", "m2", "m3", "m4"] {
        assert!(b
            .remove(&bob, &id("alice"), &MessageId::new(m).unwrap())
            .await
            .unwrap());
    }
    assert_eq!(b.count(&bob).await.unwrap(), 0);
    let (none, _) = a
        .take_over(&bob, &consumer(&na, 3), None, 100)
        .await
        .unwrap();
    assert!(none.is_empty(), "acknowledged mail is never sent again");
    // The consumers left with nothing pending were deleted by the completed take-over.
    let mut raw = redis.conn().await;
    let consumers: Vec<redis::Value> = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg("lattice:mbox:{bob}")
        .arg("lattice")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(
        consumers.len() <= 1,
        "at most the taking connection is left, not the {} before",
        consumers.len()
    );
    // Taking over in pages.
    for i in 0..5 {
        a.enqueue(
            &bob,
            &mail("alice", &format!("p{i}"), "{}"),
            &Quota::UNLIMITED,
        )
        .await
        .unwrap();
    }
    a.claim(&bob, &c1, 5).await.unwrap();
    let (page, next) = b.take_over(&bob, &c2, None, 2).await.unwrap();
    assert_eq!(ids(&page), ["p0", "p1"]);
    let next = next.expect("more to take over");
    let (rest, _) = b.take_over(&bob, &c2, Some(&next), 10).await.unwrap();
    assert_eq!(ids(&rest), ["p2", "p3", "p4"]);
}

both!(mail_handed_to_a_connection_on_a_killed_node_goes_to_the_next_connection_elsewhere);

async fn racing_claims_from_two_nodes_never_hand_out_one_entry_twice(redis: &Backend) {
    let a = RedisMailbox::new(redis.conn().await);
    let b = RedisMailbox::new(redis.conn().await);
    let bob = id("bob");
    for i in 0..200 {
        a.enqueue(
            &bob,
            &mail("alice", &format!("m{i:03}"), "{}"),
            &Quota::UNLIMITED,
        )
        .await
        .unwrap();
    }
    let mut tasks = Vec::new();
    for (n, mbox) in [a, b].into_iter().enumerate() {
        let bob = bob.clone();
        tasks.push(tokio::spawn(async move {
            let me = consumer(&NodeId::random(), u64::try_from(n).unwrap());
            let mut got = Vec::new();
            loop {
                let batch = mbox.claim(&bob, &me, 7).await.unwrap();
                if batch.is_empty() {
                    return got;
                }
                got.extend(ids(&batch));
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let n = all.len();
    all.sort();
    all.dedup();
    assert_eq!(
        (n, all.len()),
        (200, 200),
        "each entry handed out exactly once"
    );
}

both!(racing_claims_from_two_nodes_never_hand_out_one_entry_twice);

#[tokio::test]
async fn rediss_trusts_the_ca_it_is_given_and_refuses_an_unknown_one() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let certs = tempfile::tempdir().unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let path = |name: &str| certs.path().join(name).to_str().unwrap().to_owned();
    std::fs::write(path("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(path("server.pem"), leaf.pem()).unwrap();
    std::fs::write(path("server.key"), leaf_key.serialize_pem()).unwrap();
    let tls_port = redis_process::free_port().to_string();
    let _redis = RedisProcess::start_with(&[
        "--tls-port",
        &tls_port,
        "--tls-cert-file",
        &path("server.pem"),
        "--tls-key-file",
        &path("server.key"),
        "--tls-ca-cert-file",
        &path("ca.pem"),
        "--tls-auth-clients",
        "no",
    ])
    .await;
    let url = RedisUrl::parse(&format!("rediss://127.0.0.1:{tls_port}")).unwrap();
    assert!(url.tls());
    let trusted = url.clone().with_root_ca(ca_cert.pem().into_bytes());
    let p = Presence::new(connect(&trusted).await.unwrap(), NodeId::random());
    assert_eq!(
        p.claim(&id("alice"), 1, &keys(None)).await.unwrap(),
        Claim::Won { replaced: None }
    );
    let stop = CancellationToken::new();
    let nb = NodeId::random();
    let (a, _a_rx) = Channels::open(&trusted, NodeId::random(), stop.clone())
        .await
        .unwrap();
    let (_b, mut b_rx) = Channels::open(&trusted, nb.clone(), stop.clone())
        .await
        .unwrap();
    assert_eq!(a.publish_to(&nb, b"over tls").await.unwrap(), 1);
    assert_eq!(next(&mut b_rx).await, Inbound::Node(b"over tls".to_vec()));
    stop.cancel();
    // The system's roots do not know this CA: no connection.
    let refused = tokio::time::timeout(WAIT, connect(&url))
        .await
        .expect("a bounded wait");
    assert!(
        matches!(&refused, Err(ClusterError::Redis(e)) if e.to_string().contains("UnknownIssuer")),
        "refused for its certificate: {refused:?}"
    );
}

async fn a_question_asked_on_one_node_is_answered_once_on_any_and_the_cap_holds_across_nodes(
    redis: &Backend,
) {
    use lattice_protocol::{ConversationId, Question, QuestionId};
    use lattice_server::cluster::questions::{RedisAskError, RedisQuestions};

    let (na, nb, nc) = (NodeId::random(), NodeId::random(), NodeId::random());
    let a = RedisQuestions::new(redis.conn().await, na.clone());
    let b = RedisQuestions::new(redis.conn().await, nb);
    let c = RedisQuestions::new(redis.conn().await, nc);
    let alice = id("alice");
    let conv = ConversationId::new("conv-1").unwrap();
    let q = Question::choice("Which?", vec!["x".into(), "y".into()]);
    let minute = Duration::from_secs(60);
    let qid = |n: usize| QuestionId::new(format!("q-{n}")).unwrap();
    assert_eq!(
        a.register(&alice, &qid(0), &conv, &q, minute, minute)
            .await
            .unwrap(),
        1
    );
    // The peer's node sees what was asked (to check the answer's shape) and by whom.
    let seen = b.get(&alice, &qid(0)).await.unwrap().expect("open");
    assert_eq!((seen.asking_node(), seen.round), (na.clone(), 1));
    assert_eq!(seen.question, q);
    assert_eq!(
        b.get(&bob(), &qid(0)).await.unwrap(),
        None,
        "asked of alice only"
    );
    // Two nodes take the answer at once: exactly one gets it.
    let first = qid(0);
    let (tb, tc) = tokio::join!(b.take(&alice, &first), c.take(&alice, &first));
    let taken: Vec<_> = [tb.unwrap(), tc.unwrap()].into_iter().flatten().collect();
    assert_eq!(taken.len(), 1, "one answer, once");
    assert_eq!(taken[0].conversation, conv);
    assert_eq!(
        b.take(&alice, &qid(0)).await.unwrap(),
        None,
        "answered already"
    );
    // Rounds count on, whichever node asks next in the conversation.
    assert_eq!(
        c.register(&alice, &qid(1), &conv, &q, minute, minute)
            .await
            .unwrap(),
        2
    );
    // A conversation of alice is not bob's.
    assert!(matches!(
        b.register(&bob(), &qid(2), &conv, &q, minute, minute).await,
        Err(RedisAskError::ForeignConversation(_))
    ));
    // The cap of pending questions per peer holds for questions racing from three nodes.
    let cap = lattice_server::limits::MAX_PENDING_QUESTIONS_PER_PEER;
    let mut tasks = Vec::new();
    for n in 0..cap + 10 {
        let node = [&a, &b, &c][n % 3].clone();
        let q = q.clone();
        tasks.push(tokio::spawn(async move {
            let conv = ConversationId::new(format!("c{n}")).unwrap();
            node.register(
                &bob(),
                &QuestionId::new(format!("b-{n}")).unwrap(),
                &conv,
                &q,
                Duration::from_secs(60),
                Duration::from_secs(60),
            )
            .await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(1) => ok += 1,
            Err(RedisAskError::TooMany(who)) => assert_eq!(who, bob()),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(ok, cap, "exactly the cap, across nodes");
    // An expired question cannot be answered, and frees its place.
    let carol = id("carol");
    let short = Duration::from_millis(200);
    a.register(
        &carol,
        &qid(9),
        &ConversationId::new("c-x").unwrap(),
        &q,
        short,
        minute,
    )
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while b.get(&carol, &qid(9)).await.unwrap().is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the question expires"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(b.take(&carol, &qid(9)).await.unwrap(), None);
}

fn bob() -> ClientId {
    id("bob")
}

both!(a_question_asked_on_one_node_is_answered_once_on_any_and_the_cap_holds_across_nodes);

async fn expiry_keeps_a_binding_used_after_it_was_listed_as_unused(redis: &Backend) {
    let d = RedisDirectory::new(redis.conn().await);
    let mbox = RedisMailbox::new(redis.conn().await);
    let carol = id("carol");
    d.bind(&carol, &binding(3, 1), 0, 1000).await.unwrap();
    mbox.enqueue(&carol, &mail("s", "1", "{}"), &Quota::UNLIMITED)
        .await
        .unwrap();
    // A registration uses the binding at 9000 while expiry already listed it as last used at
    // 1000: the state between expiry's two steps (unlist, then delete), made here by hand.
    d.touch(&carol, 9000).await.unwrap();
    let mut raw = redis.conn().await;
    let _: i64 = redis::cmd("ZADD")
        .arg("lattice:bindings")
        .arg(1000)
        .arg("carol")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(d.expire_unused(5000, 100, &|_| false).await.unwrap(), 0);
    assert!(
        d.get(&carol).await.unwrap().is_some(),
        "the used binding stays"
    );
    assert_eq!(mbox.count(&carol).await.unwrap(), 1, "with its mail");
    assert_eq!(d.binding_count().await.unwrap(), 1, "listed again");
    let used: Option<i64> = redis::cmd("ZSCORE")
        .arg("lattice:bindings")
        .arg("carol")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(used, Some(9000), "with its last use");
    // Unused since: the next expiry takes it.
    assert_eq!(d.expire_unused(10_000, 100, &|_| false).await.unwrap(), 1);
    assert_eq!(d.get(&carol).await.unwrap(), None);
    assert_eq!(mbox.count(&carol).await.unwrap(), 0);
}

both!(expiry_keeps_a_binding_used_after_it_was_listed_as_unused);
