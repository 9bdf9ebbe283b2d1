//! What only a Redis Cluster does to the cluster components, against a real cluster this test
//! starts (`redis-server --cluster-enabled yes`, joined by `redis-cli --cluster create`): node
//! channels are sharded (a node's channel lives on the shard of its slot, not broadcast to every
//! shard); a slot moved to another master (resharding) takes an id's keys and a node's channel
//! along, and the components follow it (`MOVED`, the shard's `sunsubscribe`); a master killed
//! and restarted loses no accepted mail and the channels subscribe again; a replica taking over a
//! killed master (failover) serves everything it had replicated, and the channels follow.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

#[path = "support/redis_process.rs"]
mod redis_process;

use std::time::Duration;

use lattice_protocol::{ClientId, MessageId};
use lattice_server::cluster::channel::{node_channel, Channels, Inbound};
use lattice_server::cluster::mailbox::{RedisEnqueueError, RedisMailbox};
use lattice_server::cluster::presence::{Claim, PeerKeys, Presence};
use lattice_server::cluster::{NodeId, RedisConn, RedisUrl};
use lattice_server::store::{MailItem, Quota};
use redis_process::{cli, RedisCluster};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A bound so a broken build fails instead of hanging (never a timing assertion).
const WAIT: Duration = Duration::from_secs(30);

fn id(s: &str) -> ClientId {
    ClientId::new(s).unwrap()
}

fn mail(n: usize) -> MailItem {
    MailItem {
        message_id: MessageId::new(format!("m-{n}")).unwrap(),
        sender: id("alice"),
        frame: format!(r#"{{"type":"message","n":{n}}}"#),
    }
}

fn url(c: &RedisCluster) -> RedisUrl {
    RedisUrl::parse(&c.url()).unwrap()
}

async fn next(rx: &mut mpsc::Receiver<Inbound>) -> Inbound {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("something arrives")
        .expect("channel open")
}

/// Waits for the subscription to come back after it was lost, skipping other traffic.
async fn resubscribed(rx: &mut mpsc::Receiver<Inbound>) {
    let mut lost = false;
    loop {
        match next(rx).await {
            Inbound::Disconnected => lost = true,
            Inbound::Reconnected if lost => return,
            _ => {}
        }
    }
}

/// Publishes until node `to` gets it (a bounded number of tries while the cluster settles).
async fn deliver(from: &Channels, to: &NodeId, rx: &mut mpsc::Receiver<Inbound>, payload: &[u8]) {
    let mut got = 0;
    for _ in 0..100 {
        got = from.publish_to(to, payload).await.unwrap_or(0);
        if got == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(got, 1, "the node is subscribed on its channel's shard");
    loop {
        if let Inbound::Node(p) = next(rx).await {
            assert_eq!(p, payload);
            return;
        }
    }
}

/// Retries `f` until it succeeds (bounded): a cluster refreshing its slot map may refuse a
/// command or two.
macro_rules! eventually {
    ($f:expr) => {{
        let mut out = None;
        for _ in 0..300 {
            if let Ok(v) = $f.await {
                out = Some(v);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        out.expect("the cluster serves it again")
    }};
}

/// A node id whose channel's slot is on master `master`.
async fn node_on(cluster: &RedisCluster, master: usize) -> NodeId {
    for _ in 0..200 {
        let n = NodeId::random();
        if cluster.master_of(&node_channel(&n)).await == master {
            return n;
        }
    }
    panic!("no node id whose channel is on master {master}");
}

#[tokio::test]
async fn node_channels_are_sharded_to_the_master_of_their_slot() {
    let cluster = RedisCluster::start(3, 0).await;
    let stop = CancellationToken::new();
    let (na, nb) = (NodeId::random(), NodeId::random());
    let (a, mut a_rx) = Channels::open(&url(&cluster), na.clone(), stop.clone())
        .await
        .unwrap();
    let (b, mut b_rx) = Channels::open(&url(&cluster), nb.clone(), stop.clone())
        .await
        .unwrap();
    let channel = node_channel(&na);
    let home = cluster.master_of(&channel).await;
    for m in 0..3 {
        let shard = cli(cluster.port(m), &["PUBSUB", "SHARDNUMSUB", &channel]).await;
        let want = if m == home { "1" } else { "0" };
        assert_eq!(
            shard.lines().nth(1).map(str::trim),
            Some(want),
            "master {m} (home {home}): {shard}"
        );
        let classic = cli(cluster.port(m), &["PUBSUB", "NUMSUB", &channel]).await;
        assert_eq!(
            classic.lines().nth(1).map(str::trim),
            Some("0"),
            "no classic subscription, which every shard would be sent: {classic}"
        );
    }
    assert_eq!(b.publish_to(&na, b"to a").await.unwrap(), 1);
    assert_eq!(next(&mut a_rx).await, Inbound::Node(b"to a".to_vec()));
    assert_eq!(a.publish_presence(b"up").await.unwrap(), 2);
    assert_eq!(next(&mut a_rx).await, Inbound::Presence(b"up".to_vec()));
    assert_eq!(next(&mut b_rx).await, Inbound::Presence(b"up".to_vec()));
    stop.cancel();
}

#[tokio::test]
async fn a_resharded_slot_takes_an_ids_keys_and_a_nodes_channel_along_and_the_components_follow() {
    let cluster = RedisCluster::start(3, 0).await;
    let conn = RedisConn::open(&url(&cluster)).await.unwrap();
    let mbox = RedisMailbox::new(conn.clone());
    let presence = Presence::new(conn, NodeId::random());
    let bob = id("bob");
    for n in 0..5 {
        mbox.enqueue(&bob, &mail(n), &Quota::UNLIMITED)
            .await
            .unwrap();
    }
    presence.claim(&bob, 1, &PeerKeys::default()).await.unwrap();
    let stop = CancellationToken::new();
    let (na, nb) = (NodeId::random(), NodeId::random());
    let (_a, mut a_rx) = Channels::open(&url(&cluster), na.clone(), stop.clone())
        .await
        .unwrap();
    let (b, _b_rx) = Channels::open(&url(&cluster), nb.clone(), stop.clone())
        .await
        .unwrap();

    // Bob's slot (his mailbox and presence keys share it) moves to another master.
    let bobs = "lattice:mbox:{bob}";
    let from = cluster.master_of(bobs).await;
    cluster.move_slot_of(bobs, (from + 1) % 3).await;
    // The same handles follow the slot (MOVED, then a new slot map): nothing lost, writable.
    assert_eq!(eventually!(mbox.count(&bob)), 5);
    mbox.enqueue(&bob, &mail(5), &Quota::UNLIMITED)
        .await
        .unwrap();
    assert_eq!(mbox.count(&bob).await.unwrap(), 6);
    assert_eq!(
        presence.claim(&bob, 1, &PeerKeys::default()).await.unwrap(),
        Claim::Won { replaced: None },
        "bob's holder key moved with him"
    );

    // Node A's channel's slot moves: the shard unsubscribes A, which subscribes again on the
    // new owner; publishes reach it there.
    let channel = node_channel(&na);
    let from = cluster.master_of(&channel).await;
    cluster.move_slot_of(&channel, (from + 1) % 3).await;
    resubscribed(&mut a_rx).await;
    deliver(&b, &na, &mut a_rx, b"after the move").await;
    stop.cancel();
}

#[tokio::test]
async fn a_killed_master_restarted_loses_no_accepted_mail_and_channels_subscribe_again() {
    // AOF with fsync on every write: what a master acknowledged survives its SIGKILL.
    let mut cluster = RedisCluster::start_with(3, 0, &["--appendfsync", "always"]).await;
    let conn = RedisConn::open(&url(&cluster)).await.unwrap();
    let mbox = RedisMailbox::new(conn);
    let bob = id("bob");
    let master = cluster.master_of("lattice:mbox:{bob}").await;
    let stop = CancellationToken::new();
    let na = node_on(&cluster, master).await;
    let (_a, mut a_rx) = Channels::open(&url(&cluster), na.clone(), stop.clone())
        .await
        .unwrap();
    let (b, _b_rx) = Channels::open(&url(&cluster), NodeId::random(), stop.clone())
        .await
        .unwrap();
    for n in 0..50 {
        mbox.enqueue(&bob, &mail(n), &Quota::UNLIMITED)
            .await
            .unwrap();
    }

    cluster.nodes[master].kill9();
    // While bob's master is down: a clear error, in bounded time, and nothing panics.
    let refused = tokio::time::timeout(WAIT, mbox.enqueue(&bob, &mail(1000), &Quota::UNLIMITED))
        .await
        .expect("a bounded wait, not a hang");
    assert!(
        matches!(refused, Err(RedisEnqueueError::Redis(_))),
        "{refused:?}"
    );

    cluster.nodes[master].restart().await;
    for i in 0..3 {
        cluster.wait_ok(i).await;
    }
    assert_eq!(
        eventually!(mbox.count(&bob)),
        50,
        "every accepted message is back"
    );
    resubscribed(&mut a_rx).await;
    deliver(&b, &na, &mut a_rx, b"after the restart").await;
    stop.cancel();
}

#[tokio::test]
async fn a_replica_takes_over_a_killed_master_and_the_components_follow() {
    let mut cluster = RedisCluster::start(3, 1).await;
    let conn = RedisConn::open(&url(&cluster)).await.unwrap();
    let mbox = RedisMailbox::new(conn);
    let bob = id("bob");
    let bobs = "lattice:mbox:{bob}";
    let master = cluster.master_of(bobs).await;
    let stop = CancellationToken::new();
    let na = node_on(&cluster, master).await;
    let (_a, mut a_rx) = Channels::open(&url(&cluster), na.clone(), stop.clone())
        .await
        .unwrap();
    let (b, _b_rx) = Channels::open(&url(&cluster), NodeId::random(), stop.clone())
        .await
        .unwrap();
    for n in 0..50 {
        mbox.enqueue(&bob, &mail(n), &Quota::UNLIMITED)
            .await
            .unwrap();
    }
    // Replication is asynchronous: what the replica has when its master dies is what survives
    // a failover (docs/scaling.md). Wait until it has everything, then kill the master.
    cluster.wait_replicated(master).await;
    let replica = cluster.replica_of(master).await;
    cluster.nodes[master].kill9();

    // The replica is promoted (bounded wait), and serves bob's slot with everything.
    let mut promoted = false;
    for _ in 0..300 {
        let role = cli(cluster.port(replica), &["ROLE"]).await;
        if role.lines().next() == Some("master") {
            promoted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(promoted, "the replica took over");
    assert_eq!(
        eventually!(mbox.count(&bob)),
        50,
        "nothing replicated is lost"
    );
    mbox.enqueue(&bob, &mail(50), &Quota::UNLIMITED)
        .await
        .unwrap();
    assert_eq!(mbox.count(&bob).await.unwrap(), 51);
    assert_eq!(cluster.master_of(bobs).await, replica);
    // Node A's channel was on the dead master: A subscribes again on the promoted replica.
    resubscribed(&mut a_rx).await;
    deliver(&b, &na, &mut a_rx, b"after the failover").await;
    stop.cancel();
}
