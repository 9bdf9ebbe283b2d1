//! The MLS delivery service on Redis (`lattice_server::cluster::{key_packages, groups}`), across
//! several "nodes" (each its own connections, as separate processes would have), on one Redis and
//! on a 3-master Redis Cluster (`both!`): KeyPackages handed out once whichever nodes fetch, the
//! stock bound held by racing uploads, exactly one of racing Commits accepted per epoch, Commits
//! reaching every member in epoch order, the SQLite path's refusals, and copies per device leaf
//! within each device mailbox's own quota.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

#[path = "support/redis_process.rs"]
mod redis_process;

use std::collections::{BTreeSet, HashSet};

use lattice_protocol::limits::{KEY_PACKAGE_LOW_STOCK, MAX_KEY_PACKAGE_STOCK};
use lattice_protocol::{
    ClientId, DeviceEntry, DeviceId, GroupId, Leaf, MessageId, SignedDeviceList,
};
use lattice_server::cluster::devices::RedisDevices;
use lattice_server::cluster::directory::RedisDirectory;
use lattice_server::cluster::groups::{RedisGroupError, RedisGroups};
use lattice_server::cluster::key_packages::{RedisKeyPackages, RedisUploadError};
use lattice_server::cluster::mailbox::RedisMailbox;
use lattice_server::store::{Binding, CommitOp, GroupError, Limit, MailboxKey, Quota};
use redis_process::Backend;

fn id(s: &str) -> ClientId {
    ClientId::new(s).unwrap()
}

fn kp(owner: u8, n: usize) -> Vec<u8> {
    let mut v = vec![owner; 64];
    v.extend_from_slice(&n.to_be_bytes());
    v
}

async fn key_packages_are_handed_out_once_whichever_nodes_fetch(redis: &Backend) {
    let nodes = [
        RedisKeyPackages::new(redis.conn().await),
        RedisKeyPackages::new(redis.conn().await),
        RedisKeyPackages::new(redis.conn().await),
    ];
    let alice = id("alice");
    let one_time: Vec<Vec<u8>> = (0..30).map(|n| kp(1, n)).collect();
    let stock = nodes[0]
        .upload(&alice, &one_time, Some(&kp(1, 999)))
        .await
        .unwrap();
    assert_eq!((stock.one_time, stock.last_resort), (30, true));
    // 40 fetches at once from three nodes: each one-time KeyPackage exactly once, then the last
    // resort (kept: it is handed out again).
    let mut tasks = Vec::new();
    for i in 0..40 {
        let n = nodes[i % 3].clone();
        let alice = alice.clone();
        tasks.push(tokio::spawn(async move {
            n.fetch(&alice).await.unwrap().unwrap()
        }));
    }
    let mut seen = HashSet::new();
    let mut last_resorts = 0;
    for t in tasks {
        let f = t.await.unwrap();
        if f.last_resort {
            assert_eq!(f.data, kp(1, 999));
            assert_eq!(f.stock_left, 0);
            last_resorts += 1;
        } else {
            assert!(seen.insert(f.data.clone()), "a KeyPackage handed out twice");
            assert_eq!(
                f.low_stock(),
                usize::try_from(f.stock_left).unwrap() < KEY_PACKAGE_LOW_STOCK
            );
        }
    }
    assert_eq!(seen.len(), 30, "every one-time KeyPackage, once");
    assert_eq!(last_resorts, 10);
    let stock = nodes[1].stock(&alice).await.unwrap();
    assert_eq!((stock.one_time, stock.last_resort), (0, true));
    // Oldest first, and the low-stock notice is due below the threshold.
    nodes[2]
        .upload(&alice, &[kp(1, 100), kp(1, 101)], None)
        .await
        .unwrap();
    let f = nodes[0].fetch(&alice).await.unwrap().unwrap();
    assert!(f.low_stock());
    assert_eq!(
        (f.data, f.last_resort, f.stock_left),
        (kp(1, 100), false, 1)
    );
    // An id with nothing uploaded has nothing to hand out.
    assert_eq!(nodes[1].fetch(&id("nobody")).await.unwrap(), None);
}

both!(key_packages_are_handed_out_once_whichever_nodes_fetch);

async fn racing_uploads_never_pass_the_stock_bound(redis: &Backend) {
    let a = RedisKeyPackages::new(redis.conn().await);
    let b = RedisKeyPackages::new(redis.conn().await);
    let bob = id("bob");
    let batch = |from: usize| -> Vec<Vec<u8>> { (from..from + 60).map(|n| kp(2, n)).collect() };
    let (first, second) = (batch(0), batch(100));
    let (ra, rb) = tokio::join!(a.upload(&bob, &first, None), b.upload(&bob, &second, None));
    let ok = [&ra, &rb].iter().filter(|r| r.is_ok()).count();
    assert_eq!(
        ok, 1,
        "of two uploads of 60 into a stock of 100, one: {ra:?} {rb:?}"
    );
    let refused = if ra.is_err() { ra } else { rb };
    assert!(
        matches!(
            refused,
            Err(RedisUploadError::StockFull {
                stock: 60,
                adding: 60
            })
        ),
        "{refused:?}"
    );
    let stock = a.stock(&bob).await.unwrap();
    assert_eq!((stock.one_time, stock.last_resort), (60, false));
    // Up to the bound exactly; one more is refused whole.
    let rest: Vec<Vec<u8>> = (200..200 + MAX_KEY_PACKAGE_STOCK - 60)
        .map(|n| kp(2, n))
        .collect();
    assert_eq!(
        b.upload(&bob, &rest, None).await.unwrap().one_time,
        u32::try_from(MAX_KEY_PACKAGE_STOCK).unwrap()
    );
    assert!(matches!(
        a.upload(&bob, &[kp(2, 999)], Some(&kp(2, 1000))).await,
        Err(RedisUploadError::StockFull { .. })
    ));
    assert!(
        !a.stock(&bob).await.unwrap().last_resort,
        "a refused upload stores nothing, not even its last resort"
    );
    // A last resort alone is always accepted, and replaces the one before.
    a.upload(&bob, &[], Some(&kp(2, 1))).await.unwrap();
    let stock = b.upload(&bob, &[], Some(&kp(2, 2))).await.unwrap();
    assert!(stock.last_resort);
    for _ in 0..MAX_KEY_PACKAGE_STOCK {
        assert!(!a.fetch(&bob).await.unwrap().unwrap().last_resort);
    }
    assert_eq!(a.fetch(&bob).await.unwrap().unwrap().data, kp(2, 2));
}

both!(racing_uploads_never_pass_the_stock_bound);

/// Three nodes of the delivery service, with the members' bindings in the directory.
async fn delivery(redis: &Backend, members: &[&str]) -> (Vec<RedisGroups>, RedisMailbox) {
    let directory = RedisDirectory::new(redis.conn().await);
    for (i, m) in members.iter().enumerate() {
        let ik = u8::try_from(i + 1).unwrap();
        let b = Binding {
            identity_key: [ik; 32],
            kem_public_key: vec![ik; 1184],
            key_signature: vec![ik; 64],
        };
        directory.bind(&id(m), &b, 0, 1000).await.unwrap();
    }
    let mut nodes = Vec::new();
    for _ in 0..3 {
        let conn = redis.conn().await;
        nodes.push(RedisGroups::new(
            conn.clone(),
            RedisMailbox::new(conn.clone()),
            RedisDirectory::new(conn.clone()),
            RedisDevices::new(conn),
        ));
    }
    (nodes, RedisMailbox::new(redis.conn().await))
}

/// The primary device's leaf of `who`.
fn primary(who: &str) -> Leaf {
    Leaf {
        client_id: id(who),
        device_id: DeviceId::primary(),
    }
}

fn set(ids: &[&str]) -> BTreeSet<ClientId> {
    ids.iter().map(|s| id(s)).collect()
}

/// The frames in `who`'s mailbox, oldest first.
async fn frames(mbox: &RedisMailbox, who: &str) -> Vec<String> {
    mbox.pending(&id(who), None, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, m)| m.frame)
        .collect()
}

struct Commit {
    sender: ClientId,
    device: DeviceId,
    epoch: u64,
    message_id: MessageId,
    members: BTreeSet<ClientId>,
    frame: String,
    welcome: Option<String>,
}

impl Commit {
    fn new(sender: &str, epoch: u64, members: &[&str], welcome: bool) -> Self {
        Self {
            sender: id(sender),
            device: DeviceId::primary(),
            epoch,
            message_id: MessageId::new(format!("c-{sender}-{epoch}")).unwrap(),
            members: set(members),
            frame: format!("commit {sender} {epoch}"),
            welcome: welcome.then(|| format!("welcome {sender} {epoch}")),
        }
    }

    fn op<'a>(&'a self, group: &'a GroupId) -> CommitOp<'a> {
        CommitOp {
            group,
            sender: &self.sender,
            sender_device: &self.device,
            epoch: self.epoch,
            message_id: &self.message_id,
            members: &self.members,
            leaves: None,
            commit_frame: &self.frame,
            welcome_frame: self.welcome.as_deref(),
            max_groups_per_id: 10,
        }
    }
}

async fn exactly_one_of_racing_commits_wins_each_epoch_and_members_see_epoch_order(
    redis: &Backend,
) {
    let who = ["alice", "bob", "carol"];
    let (nodes, mbox) = delivery(redis, &who).await;
    let group = GroupId::new("00c0ffee").unwrap();
    let create = Commit::new("alice", 0, &who, true);
    let out = nodes[0]
        .commit(&create.op(&group), &Quota::UNLIMITED)
        .await
        .unwrap();
    assert_eq!(out.epoch, 1);
    assert_eq!(
        out.recipients,
        [id("bob"), id("carol")],
        "the Welcome to each added"
    );
    // Ten epochs; in each, all three members commit at once, each from its own node.
    let mut winners = Vec::new();
    for epoch in 1..=10u64 {
        let mut tasks = Vec::new();
        for (i, sender) in who.iter().enumerate() {
            let node = nodes[i].clone();
            let group = group.clone();
            let c = Commit::new(sender, epoch, &who, false);
            tasks.push(tokio::spawn(async move {
                let r = node.commit(&c.op(&group), &Quota::UNLIMITED).await;
                (c.sender.clone(), r)
            }));
        }
        let mut won = Vec::new();
        for t in tasks {
            match t.await.unwrap() {
                (sender, Ok(out)) => {
                    assert_eq!(out.epoch, epoch + 1);
                    won.push(sender);
                }
                (_, Err(RedisGroupError::Refused(GroupError::StaleEpoch { current }))) => {
                    assert_eq!(current, epoch + 1, "refused as stale by the winner's epoch");
                }
                (_, Err(e)) => panic!("epoch {epoch}: {e}"),
            }
        }
        assert_eq!(
            won.len(),
            1,
            "epoch {epoch}: exactly one Commit wins: {won:?}"
        );
        winners.push(won.remove(0));
    }
    assert_eq!(
        nodes[2].state(&group).await.unwrap(),
        Some((11, set(&who))),
        "eleven Commits, no fork"
    );
    // Each member holds the winners' Commits, each once, in epoch order (its own excepted).
    for member in who {
        let want: Vec<String> = winners
            .iter()
            .enumerate()
            .filter(|(_, w)| w.as_str() != member)
            .map(|(e, w)| format!("commit {w} {}", e + 1))
            .collect();
        let got: Vec<String> = frames(&mbox, member)
            .await
            .into_iter()
            .filter(|f| f.starts_with("commit"))
            .collect();
        assert_eq!(got, want, "{member}");
    }
    // The winner of the last epoch resending (its answer was lost) is told it was accepted,
    // and nothing is stored again.
    let last = winners.last().unwrap().as_str().to_owned();
    let resend = Commit::new(&last, 10, &who, false);
    let before = frames(&mbox, "alice").await.len() + frames(&mbox, "bob").await.len();
    let out = nodes[1]
        .commit(&resend.op(&group), &Quota::UNLIMITED)
        .await
        .unwrap();
    assert_eq!((out.epoch, out.recipients.len()), (11, 0));
    let after = frames(&mbox, "alice").await.len() + frames(&mbox, "bob").await.len();
    assert_eq!(before, after);
}

both!(exactly_one_of_racing_commits_wins_each_epoch_and_members_see_epoch_order);

async fn commits_are_refused_by_the_rules_of_the_sqlite_path_and_store_nothing(redis: &Backend) {
    let (nodes, mbox) = delivery(redis, &["alice", "bob", "carol", "dave"]).await;
    let group = GroupId::new("0abc").unwrap();
    let refused = |r: Result<_, RedisGroupError>| match r {
        Err(RedisGroupError::Refused(e)) => e,
        other => panic!("expected a refusal, got {other:?}"),
    };
    let n = &nodes[0];
    // Not a group yet: only an epoch-0 Commit makes it.
    let c = Commit::new("alice", 3, &["alice"], false);
    assert!(matches!(
        refused(n.commit(&c.op(&group), &Quota::UNLIMITED).await),
        GroupError::NotAMember
    ));
    // Adding without a Welcome, or a Welcome adding nobody.
    let mut c = Commit::new("alice", 0, &["alice", "bob"], false);
    assert!(matches!(
        refused(n.commit(&c.op(&group), &Quota::UNLIMITED).await),
        GroupError::WelcomeMissing
    ));
    c.members = set(&["alice"]);
    c.welcome = Some("w".into());
    assert!(matches!(
        refused(n.commit(&c.op(&group), &Quota::UNLIMITED).await),
        GroupError::WelcomeUnexpected
    ));
    // Adding an id with no binding.
    let c = Commit::new("alice", 0, &["alice", "mallory"], true);
    assert!(matches!(
        refused(n.commit(&c.op(&group), &Quota::UNLIMITED).await),
        GroupError::UnknownMember(m) if m == id("mallory")
    ));
    // A mailbox with no room: refused whole, the group not created.
    let tight = Quota {
        count: 1,
        ..Quota::UNLIMITED
    };
    mbox.enqueue(
        &id("bob"),
        &lattice_server::store::MailItem {
            message_id: MessageId::new("x").unwrap(),
            sender: id("carol"),
            frame: "x".into(),
        },
        &Quota::UNLIMITED,
    )
    .await
    .unwrap();
    let c = Commit::new("alice", 0, &["alice", "bob", "carol"], true);
    assert!(matches!(
        refused(n.commit(&c.op(&group), &tight).await),
        GroupError::MailboxFull { recipient, limit: Limit::Count } if recipient == id("bob")
    ));
    assert_eq!(n.state(&group).await.unwrap(), None);
    assert_eq!(frames(&mbox, "carol").await.len(), 0, "nothing stored");
    // Made now; then the epoch rules, from other nodes.
    n.commit(&c.op(&group), &Quota::UNLIMITED).await.unwrap();
    let stale = Commit::new("bob", 0, &["alice", "bob", "carol"], false);
    assert!(matches!(
        refused(nodes[1].commit(&stale.op(&group), &Quota::UNLIMITED).await),
        GroupError::StaleEpoch { current: 1 }
    ));
    let future = Commit::new("bob", 2, &["alice", "bob", "carol"], false);
    assert!(matches!(
        refused(nodes[1].commit(&future.op(&group), &Quota::UNLIMITED).await),
        GroupError::FutureEpoch { current: 1 }
    ));
    let outsider = Commit::new("dave", 1, &["alice", "dave"], true);
    assert!(matches!(
        refused(
            nodes[2]
                .commit(&outsider.op(&group), &Quota::UNLIMITED)
                .await
        ),
        GroupError::NotAMember
    ));
    // The group cap of an added member.
    let mut capped = Commit::new("bob", 1, &["alice", "bob", "carol", "dave"], true);
    let op = CommitOp {
        max_groups_per_id: 0,
        ..capped.op(&group)
    };
    assert!(matches!(
        refused(nodes[1].commit(&op, &Quota::UNLIMITED).await),
        GroupError::TooManyGroups { member, max: 0 } if member == id("dave")
    ));
    // Removing carol and adding dave: carol learns she is out, dave gets the Welcome.
    capped.members = set(&["alice", "bob", "dave"]);
    let out = nodes[1]
        .commit(&capped.op(&group), &Quota::UNLIMITED)
        .await
        .unwrap();
    assert_eq!(out.epoch, 2);
    assert_eq!(out.recipients, [id("alice"), id("carol"), id("dave")]);
    assert_eq!(frames(&mbox, "dave").await, ["welcome bob 1"]);
    assert_eq!(nodes[2].group_count(&id("carol")).await.unwrap(), 0);
    assert_eq!(nodes[2].group_count(&id("dave")).await.unwrap(), 1);
    // A group message goes to every member but its sender, after the Commits.
    let to = nodes[2]
        .send(
            &group,
            &primary("dave"),
            &MessageId::new("hello").unwrap(),
            "app dave",
            &Quota::UNLIMITED,
        )
        .await
        .unwrap();
    let to: Vec<&ClientId> = to.iter().map(MailboxKey::id).collect();
    assert_eq!(to, [&id("alice"), &id("bob")]);
    assert_eq!(frames(&mbox, "alice").await.last().unwrap(), "app dave");
    assert!(matches!(
        nodes[0]
            .send(
                &group,
                &primary("carol"),
                &MessageId::new("late").unwrap(),
                "app carol",
                &Quota::UNLIMITED,
            )
            .await,
        Err(RedisGroupError::Refused(GroupError::NotAMember))
    ));
}

both!(commits_are_refused_by_the_rules_of_the_sqlite_path_and_store_nothing);

fn leaf_of(who: &str, device: &str) -> Leaf {
    Leaf {
        client_id: id(who),
        device_id: DeviceId::new(device).unwrap(),
    }
}

fn mailbox(who: &str, device: &str) -> MailboxKey {
    MailboxKey::new(&id(who), &DeviceId::new(device).unwrap())
}

async fn device_leaves_get_their_own_copies_within_their_own_quota(redis: &Backend) {
    let (nodes, mbox) = delivery(redis, &["alice", "bob"]).await;
    let conn = redis.conn().await;
    let laptop = DeviceId::new("laptop").unwrap();
    let list = SignedDeviceList {
        counter: 1,
        devices: vec![DeviceEntry {
            device_id: laptop.clone(),
            device_key: "k".into(),
        }],
        signature: "checked by the frame handler".into(),
    };
    RedisDevices::new(conn.clone())
        .put_list(&id("alice"), &list)
        .await
        .unwrap();
    let group = GroupId::new("00de").unwrap();
    let create = Commit::new("alice", 0, &["alice", "bob"], true);
    let leaves: BTreeSet<Leaf> = [
        leaf_of("alice", "primary"),
        leaf_of("alice", "laptop"),
        leaf_of("bob", "primary"),
    ]
    .into();
    let mut op = create.op(&group);
    op.leaves = Some(&leaves);
    let out = nodes[0].commit(&op, &Quota::UNLIMITED).await.unwrap();
    assert_eq!(
        out.copies,
        [mailbox("alice", "laptop"), mailbox("bob", "primary")],
        "a Welcome for each added leaf, none for the sending device"
    );
    assert_eq!(nodes[1].leaves(&group).await.unwrap(), Some(leaves.clone()));
    assert_eq!(mbox.device_count(&id("alice"), &laptop).await.unwrap(), 1);
    assert_eq!(mbox.count(&id("alice")).await.unwrap(), 0);

    // bob's message reaches both of alice's devices; the laptop's reaches bob and her primary.
    let mid = |m: &str| MessageId::new(m).unwrap();
    let u = Quota::UNLIMITED;
    let to = nodes[1]
        .send(&group, &primary("bob"), &mid("m1"), "app bob", &u)
        .await
        .unwrap();
    assert_eq!(
        to,
        [mailbox("alice", "laptop"), mailbox("alice", "primary")]
    );
    let lap = leaf_of("alice", "laptop");
    let to = nodes[2]
        .send(&group, &lap, &mid("m2"), "app laptop", &u)
        .await
        .unwrap();
    assert_eq!(to, [mailbox("alice", "primary"), mailbox("bob", "primary")]);

    // Each device mailbox has its own quota: the laptop's full refuses the message for everyone.
    let tight = Quota { count: 2, ..u };
    assert!(matches!(
        nodes[2].send(&group, &primary("bob"), &mid("m3"), "app bob 3", &tight).await,
        Err(RedisGroupError::Refused(GroupError::MailboxFull { recipient, limit: Limit::Count }))
            if recipient == id("alice")
    ));
    assert_eq!(mbox.count(&id("alice")).await.unwrap(), 2, "nothing stored");
    assert_eq!(mbox.device_count(&id("alice"), &laptop).await.unwrap(), 2);

    // A group stored before device leaves (no leaves key): every member is its primary's leaf.
    let _: i64 = redis::cmd("DEL")
        .arg("lattice:group:{00de}:leaves")
        .query_async(&mut conn.clone())
        .await
        .unwrap();
    let to = nodes[0]
        .send(&group, &primary("bob"), &mid("m4"), "app bob 4", &u)
        .await
        .unwrap();
    assert_eq!(to, [mailbox("alice", "primary")]);
    assert!(matches!(
        nodes[0]
            .send(&group, &lap, &mid("m5"), "app laptop 5", &u)
            .await,
        Err(RedisGroupError::Refused(GroupError::NotAMember))
    ));
}

both!(device_leaves_get_their_own_copies_within_their_own_quota);

async fn a_commit_accepted_by_a_node_that_stops_halfway_is_finished_by_another(redis: &Backend) {
    let others: Vec<String> = (0..60).map(|i| format!("m{i:02}")).collect();
    let mut all: Vec<&str> = others.iter().map(String::as_str).collect();
    all.push("alice");
    let (nodes, mbox) = delivery(redis, &all).await;
    let group = GroupId::new("0dead0").unwrap();
    let create = Commit::new("alice", 0, &["alice"], false);
    nodes[0]
        .commit(&create.op(&group), &Quota::UNLIMITED)
        .await
        .unwrap();
    // Each epoch: node 0 accepts alice's Commit and is stopped (its task aborted, as a killed
    // node stops) as soon as the Commit is accepted, somewhere in its fan-out to 60 members;
    // node 2 finishes what node 0 left.
    let mut stopped_halfway = 0;
    let rounds = 12u64;
    for epoch in 1..=rounds {
        let c = Commit::new("alice", epoch, &all, epoch == 1);
        let (node, g) = (nodes[0].clone(), group.clone());
        let task = tokio::spawn(async move { node.commit(&c.op(&g), &Quota::UNLIMITED).await });
        let mut accepted = false;
        for _ in 0..10_000 {
            if nodes[1].has_pending(&group).await.unwrap() || task.is_finished() {
                accepted = true;
                break;
            }
        }
        assert!(accepted, "epoch {epoch}: the Commit is accepted");
        task.abort();
        let _ = task.await;
        if nodes[1].has_pending(&group).await.unwrap() {
            stopped_halfway += 1;
        }
        nodes[2].finish_pending(&group).await.unwrap();
        assert!(!nodes[1].has_pending(&group).await.unwrap());
        assert_eq!(
            nodes[1].state(&group).await.unwrap().map(|(e, _)| e),
            Some(epoch + 1)
        );
    }
    assert!(
        stopped_halfway > 0,
        "at least one node was stopped before its fan-out finished"
    );
    // Every member has every Commit of alice once, in epoch order, whatever node stored it.
    let want: Vec<String> = std::iter::once("welcome alice 1".to_owned())
        .chain((2..=rounds).map(|e| format!("commit alice {e}")))
        .collect();
    for m in &others {
        assert_eq!(frames(&mbox, m).await, want, "{m}");
        assert_eq!(nodes[0].group_count(&id(m)).await.unwrap(), 1);
    }
}

both!(a_commit_accepted_by_a_node_that_stops_halfway_is_finished_by_another);

async fn an_expired_member_leaves_its_groups_and_an_empty_group_goes(redis: &Backend) {
    let (nodes, _) = delivery(redis, &["alice", "bob"]).await;
    let group = GroupId::new("0b0b").unwrap();
    let c = Commit::new("alice", 0, &["alice", "bob"], true);
    nodes[0]
        .commit(&c.op(&group), &Quota::UNLIMITED)
        .await
        .unwrap();
    assert_eq!(nodes[1].forget_member(&id("bob")).await.unwrap(), 1);
    assert_eq!(
        nodes[2].state(&group).await.unwrap(),
        Some((1, set(&["alice"])))
    );
    assert_eq!(nodes[2].group_count(&id("bob")).await.unwrap(), 0);
    assert_eq!(
        nodes[2].leaves(&group).await.unwrap(),
        Some(BTreeSet::from([primary("alice")])),
        "bob's leaves went with him"
    );
    // A Commit of the group now goes to alice's remaining members only: bob is out.
    let next = Commit::new("alice", 1, &["alice"], false);
    let out = nodes[2]
        .commit(&next.op(&group), &Quota::UNLIMITED)
        .await
        .unwrap();
    assert!(out.recipients.is_empty());
    assert_eq!(nodes[0].forget_member(&id("alice")).await.unwrap(), 1);
    assert_eq!(
        nodes[1].state(&group).await.unwrap(),
        None,
        "nobody left: gone"
    );
    assert_eq!(nodes[1].forget_member(&id("alice")).await.unwrap(), 0);
    let left: i64 = redis::cmd("EXISTS")
        .arg("lattice:group:{0b0b}:leaves")
        .query_async(&mut redis.conn().await)
        .await
        .unwrap();
    assert_eq!(left, 0, "no leaves key outlives its group");
}

both!(an_expired_member_leaves_its_groups_and_an_empty_group_goes);
