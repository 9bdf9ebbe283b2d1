//! Linked devices on several real `lattice-server --redis` processes (docs/protocol.md,
//! "Devices"; docs/scaling.md): an id's devices on different nodes each get and acknowledge
//! their own copy of a message, `REPLACED` is per device across nodes, presence is per id across
//! nodes (connected with the first device anywhere, disconnected with the last), a list stored
//! through one node closes (4001) a removed device on another and deletes its mail, forged and
//! stale lists are refused with the connection surviving, `allDevices` KeyPackage fetches see
//! every device's stock whatever node uploaded it, and MLS groups of linked devices reach every
//! leaf but the sending device on whichever node holds it (the offline one from its mailbox,
//! one Commit per epoch, none for a removed device). The message, removal and group cases run
//! on a 3-master Redis Cluster too.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/devices.rs"]
mod devices_kit;
#[path = "support/redis_process.rs"]
mod redis_process;
#[allow(dead_code)]
#[path = "support/server_process.rs"]
mod server_process;
mod support;

use devices_kit::*;
use lattice_crypto::Identity;
use lattice_protocol::close_code;
use redis_process::{cli, RedisCluster, RedisProcess};
use serde_json::{json, Value};
use server_process::ServerProcess;
use support::{new_identity, register_verified, Client, Next, B64};

use base64::Engine as _;

/// `n` nodes on the Redis (or Redis Cluster) at `url`, each on its own data dir under `dir`.
async fn nodes_on(url: &str, dir: &tempfile::TempDir, n: usize) -> Vec<ServerProcess> {
    let mut out = Vec::new();
    for i in 0..n {
        let data = dir.path().join(format!("node{i}"));
        std::fs::create_dir_all(&data).unwrap();
        out.push(ServerProcess::start(&data, &["--redis", url]).await);
    }
    out
}

fn ack(mid: &str, from: &str) -> Value {
    json!({"type":"ack","payload":{"messageId":mid,"fromId":from}})
}

/// The close frame `c` gets next (skipping frames).
async fn closed(c: &mut Client) -> u16 {
    loop {
        match c.next().await {
            Next::Closed(f) => return u16::from(f.expect("a close frame").code),
            Next::Frame(_) => {}
        }
    }
}

/// `device` of alice registers on `url` again after a close its node may not have noticed yet
/// (bounded).
async fn device_again(url: &str, alice: &Identity, phone: &Device) -> Client {
    for _ in 0..100 {
        let (c, v) = try_device(url, alice, "alice", phone, None).await;
        if v["type"] == "register" {
            return c;
        }
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    }
    panic!("the device could not register again");
}

/// The primary of alice registers on `url` again (bounded, as [`device_again`]).
async fn primary_again(url: &str, alice: &Identity) -> Client {
    support::reconnect_verified(url, "alice", alice).await
}

/// The next presence notice `c` gets.
async fn presence(c: &mut Client) -> Value {
    c.recv_any(&["peer_connected", "peer_disconnected"]).await
}

/// alice's primary on node A and her phone on node B each get bob's message (bob on a third
/// node), each acknowledges only its own copy: after both reconnect elsewhere, the phone (which
/// acked) gets nothing again and the primary (which did not) gets it again.
async fn each_device_on_its_node_gets_and_acks_its_own_copy(urls: &[String]) {
    let (alice, phone, mut primary, mut phone_c, mut bob) =
        every_device_gets_its_copy([&urls[0], &urls[1], &urls[2]]).await;
    phone_c.send(ack("m1", "bob")).await;
    alive(&mut phone_c).await;
    // Both move to the other node: the phone's copy is gone (acked), the primary's comes again.
    phone_c.ws.close(None).await.unwrap();
    drop(phone_c);
    let mut phone_c = device_again(&urls[0], &alice, &phone).await;
    let mut primary2 = primary_again(&urls[1], &alice).await;
    assert_eq!(closed(&mut primary).await, close_code::REPLACED);
    assert_eq!(next_message(&mut primary2).await["messageId"], "m1");
    primary2.send(ack("m1", "bob")).await;
    bob.send(message("alice", "m2")).await;
    assert_eq!(
        next_message(&mut phone_c).await["messageId"],
        "m2",
        "the phone acked m1: the next it gets is m2"
    );
    assert_eq!(next_message(&mut primary2).await["messageId"], "m2");
}

#[tokio::test]
async fn each_device_on_its_node_gets_and_acks_its_own_copy_on_one_redis() {
    let redis = RedisProcess::start().await;
    let dir = tempfile::tempdir().unwrap();
    let n = nodes_on(&redis.url(), &dir, 3).await;
    let urls: Vec<String> = n.iter().map(|s| s.url.clone()).collect();
    each_device_on_its_node_gets_and_acks_its_own_copy(&urls).await;
}

#[tokio::test]
async fn replaced_is_per_device_across_nodes() {
    let redis = RedisProcess::start().await;
    let dir = tempfile::tempdir().unwrap();
    let n = nodes_on(&redis.url(), &dir, 2).await;
    let alice = new_identity();
    let phone = Device::new("phone");
    let mut primary = alice_with(&n[0].url, &alice, &[&phone]).await;
    let mut old_phone = device(&n[0].url, &alice, "alice", &phone).await;
    // The same device on the other node replaces only itself.
    let mut new_phone = device(&n[1].url, &alice, "alice", &phone).await;
    assert_eq!(closed(&mut old_phone).await, close_code::REPLACED);
    let mut bob = register_verified(&n[1].url, "bob", &new_identity()).await;
    bob.send(message("alice", "m1")).await;
    assert_eq!(next_message(&mut primary).await["messageId"], "m1");
    assert_eq!(next_message(&mut new_phone).await["messageId"], "m1");
    // Another identity cannot join alice's devices from any node.
    let mallory = new_identity();
    let (_c, v) = support::try_register_verified(&n[1].url, "alice", &mallory).await;
    assert_eq!(v["payload"]["errorType"], "CLIENT_ID_TAKEN", "{v}");
    alive(&mut primary).await;
    alive(&mut new_phone).await;
}

#[tokio::test]
async fn presence_is_per_id_across_nodes() {
    let redis = RedisProcess::start().await;
    let dir = tempfile::tempdir().unwrap();
    let n = nodes_on(&redis.url(), &dir, 3).await;
    let alice = new_identity();
    let phone = Device::new("phone");
    let mut bob = register_verified(&n[2].url, "bob", &new_identity()).await;
    bob.request(json!({"type":"discover","payload":{}}), "discover")
        .await;
    let mut primary = alice_with(&n[0].url, &alice, &[&phone]).await;
    assert_eq!(
        presence(&mut bob).await,
        json!({"type":"peer_connected","payload":{"peerId":"alice"}})
    );
    let mut phone_c = device(&n[1].url, &alice, "alice", &phone).await;
    alive(&mut phone_c).await;
    let d = bob
        .request(json!({"type":"discover","payload":{}}), "discover")
        .await;
    assert_eq!(d["payload"]["peers"], json!(["alice", "bob"]), "once: {d}");
    // The primary leaving does not take alice offline (her phone is on another node): the next
    // notice bob gets is carol's.
    primary.ws.close(None).await.unwrap();
    drop(primary);
    let _carol = register_verified(&n[0].url, "carol", &new_identity()).await;
    assert_eq!(
        presence(&mut bob).await,
        json!({"type":"peer_connected","payload":{"peerId":"carol"}})
    );
    let d = bob
        .request(json!({"type":"discover","payload":{}}), "discover")
        .await;
    assert_eq!(
        d["payload"]["peers"],
        json!(["alice", "bob", "carol"]),
        "{d}"
    );
    // Her last device leaving does.
    phone_c.ws.close(None).await.unwrap();
    assert_eq!(
        presence(&mut bob).await,
        json!({"type":"peer_disconnected","payload":{"peerId":"alice"}})
    );
}

/// A list uploaded through node A drops the phone held by node B: B closes it with 4001, its
/// mailbox stream is gone, and it cannot register again anywhere. `exists` tells whether a
/// Redis key exists.
async fn a_list_upload_removes_a_device_on_another_node<F, Fut>(urls: &[String], exists: F)
where
    F: Fn(&'static str) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let alice = new_identity();
    let phone = Device::new("phone");
    let mut primary = alice_with(&urls[0], &alice, &[&phone]).await;
    let mut phone_c = device(&urls[1], &alice, "alice", &phone).await;
    let mut bob = register_verified(&urls[1], "bob", &new_identity()).await;
    bob.send(message("alice", "m1")).await;
    bob.recv_type("message_ack").await;
    assert_eq!(next_message(&mut phone_c).await["messageId"], "m1");
    assert_eq!(next_message(&mut primary).await["messageId"], "m1");
    primary.send(ack("m1", "bob")).await;
    assert!(
        exists("lattice:mbox:{alice}:d:phone").await,
        "its unacked copy waits"
    );

    let v = upload_list(&mut primary, signed_list(&alice, "alice", 2, &[]), "l2").await;
    assert_eq!(v["payload"], json!({"counter": 2, "devices": 0}), "{v}");
    assert_eq!(closed(&mut phone_c).await, close_code::DEVICE_REMOVED);
    assert!(
        !exists("lattice:mbox:{alice}:d:phone").await,
        "the removed device's mail is gone"
    );
    let (_c, v) = try_device(&urls[1], &alice, "alice", &phone, None).await;
    assert_error(&v, "UNKNOWN_DEVICE", "reg");
    // Back to the primary-only path.
    bob.send(message("alice", "m2")).await;
    assert_eq!(next_message(&mut primary).await["messageId"], "m2");
}

#[tokio::test]
async fn a_list_upload_on_one_node_removes_a_device_on_another_on_one_redis() {
    let redis = RedisProcess::start().await;
    let dir = tempfile::tempdir().unwrap();
    let n = nodes_on(&redis.url(), &dir, 2).await;
    let urls: Vec<String> = n.iter().map(|s| s.url.clone()).collect();
    let port = redis.port();
    a_list_upload_removes_a_device_on_another_node(&urls, |key| async move {
        cli(port, &["EXISTS", key]).await.trim() == "1"
    })
    .await;
}

#[tokio::test]
async fn forged_and_stale_lists_are_refused_across_nodes_and_the_connections_survive() {
    let redis = RedisProcess::start().await;
    let dir = tempfile::tempdir().unwrap();
    let n = nodes_on(&redis.url(), &dir, 2).await;
    let alice = new_identity();
    let mallory = new_identity();
    let phone = Device::new("phone");
    let evil = Device::new("evil");
    let mut primary = alice_with(&n[0].url, &alice, &[&phone]).await;
    // A list signed by someone else, uploaded or brought by a device on the other node.
    let evil_list = signed_list(&mallory, "alice", 9, &[&phone, &evil]);
    let cert = certificate(&alice, "alice", &evil);
    let (_c, v) = try_device_with(
        &n[1].url,
        &alice,
        "alice",
        &evil,
        cert,
        Some(evil_list.clone()),
    )
    .await;
    assert_error(&v, "INVALID_DEVICE_CERTIFICATE", "reg");
    let v = upload_list(&mut primary, evil_list, "forged").await;
    assert_error(&v, "INVALID_DEVICE_CERTIFICATE", "forged");
    // Stored through node A, replayed or older through node B.
    let mut phone_c = device(&n[1].url, &alice, "alice", &phone).await;
    let v = upload_list(
        &mut phone_c,
        signed_list(&alice, "alice", 1, &[&phone]),
        "again",
    )
    .await;
    assert_error(&v, "STALE_DEVICE_LIST", "again");
    let v = upload_list(&mut phone_c, signed_list(&alice, "alice", 0, &[]), "older").await;
    assert_error(&v, "STALE_DEVICE_LIST", "older");
    // A device not on the list, on either node.
    let (_c, v) = try_device(&n[1].url, &alice, "alice", &evil, None).await;
    assert_error(&v, "UNKNOWN_DEVICE", "reg");
    alive(&mut primary).await;
    alive(&mut phone_c).await;
    // A newer list through node B is taken.
    let v = upload_list(
        &mut phone_c,
        signed_list(&alice, "alice", 3, &[&phone, &evil]),
        "l3",
    )
    .await;
    assert_eq!(v["payload"], json!({"counter": 3, "devices": 2}), "{v}");
    let _evil = device(&n[0].url, &alice, "alice", &evil).await;
}

#[tokio::test]
async fn all_devices_key_package_fetch_sees_every_devices_stock_across_nodes() {
    let redis = RedisProcess::start().await;
    let dir = tempfile::tempdir().unwrap();
    let n = nodes_on(&redis.url(), &dir, 3).await;
    let alice = new_identity();
    let phone = Device::new("phone");
    let mut primary = alice_with(&n[0].url, &alice, &[&phone]).await;
    let mut phone_c = device(&n[1].url, &alice, "alice", &phone).await;
    let kp = |tag: &str| B64.encode(format!("kp-{tag}"));
    let up = primary
        .request(
            json!({"type":"key_package_upload","payload":{"keyPackages":[kp("p1"), kp("p2"), kp("p3")]}}),
            "key_package_upload",
        )
        .await;
    assert_eq!(up["payload"]["stock"], 3, "{up}");
    let up = phone_c
        .request(
            json!({"type":"key_package_upload","payload":{"keyPackages":[kp("q1")],"lastResort":kp("qlr")}}),
            "key_package_upload",
        )
        .await;
    assert_eq!(
        up["payload"],
        json!({"stock": 1, "lastResort": true}),
        "{up}"
    );

    let mut bob = register_verified(&n[2].url, "bob", &new_identity()).await;
    let f = bob
        .request(
            json!({"type":"key_package_fetch","payload":{"clientId":"alice","allDevices":true}}),
            "key_package_fetch",
        )
        .await;
    assert_eq!(
        f["payload"]["devices"],
        json!([
            {"deviceId":"primary","keyPackage":kp("p1"),"lastResort":false},
            {"deviceId":"phone","keyPackage":kp("q1"),"lastResort":false},
        ]),
        "{f}"
    );
    let f = bob
        .request(
            json!({"type":"key_package_fetch","payload":{"clientId":"alice","allDevices":true}}),
            "key_package_fetch",
        )
        .await;
    assert_eq!(f["payload"]["devices"][1]["keyPackage"], kp("qlr"), "{f}");
    // An older client: the primary's, in the old shape (the phone's upload never mixed in).
    let f = bob
        .request(
            json!({"type":"key_package_fetch","payload":{"clientId":"alice"}}),
            "key_package_fetch",
        )
        .await;
    assert_eq!(
        f["payload"],
        json!({"clientId":"alice","keyPackage":kp("p3"),"lastResort":false}),
        "{f}"
    );
}

/// A connection that keeps the `message` frames it reads while waiting for an answer, so no
/// delivery is lost to a test's request, and acknowledges each one it hands out.
struct Leaf {
    c: Client,
    inbox: std::collections::VecDeque<Value>,
}

impl Leaf {
    fn new(c: Client) -> Leaf {
        Leaf {
            c,
            inbox: std::collections::VecDeque::new(),
        }
    }

    /// Sends `v` and reads its answer (`ty` or an error), keeping deliveries met on the way.
    async fn ask(&mut self, v: Value) -> Value {
        let ty = v["type"].as_str().unwrap().to_owned();
        self.c.send(v).await;
        self.answer(&ty).await
    }

    async fn answer(&mut self, ty: &str) -> Value {
        loop {
            let f = self.c.recv().await;
            if f["type"] == ty || f["type"] == "error" {
                return f;
            }
            if f["type"] == "message" {
                self.inbox.push_back(f["payload"].clone());
            }
        }
    }

    /// The next delivered message as (sender, messageId, envelope kind), acknowledged.
    async fn take(&mut self) -> (String, String, String) {
        let m = match self.inbox.pop_front() {
            Some(m) => m,
            None => next_message(&mut self.c).await,
        };
        let from = m["fromId"].as_str().unwrap().to_owned();
        let mid = m["messageId"].as_str().unwrap().to_owned();
        self.c.send(ack(&mid, &from)).await;
        (
            from,
            mid,
            m["message"]["kind"].as_str().unwrap_or("").to_owned(),
        )
    }

    /// The next `n` delivered messages' (sender, messageId), in order.
    async fn take_n(&mut self, n: usize) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for _ in 0..n {
            let (from, mid, _) = self.take().await;
            out.push((from, mid));
        }
        out
    }
}

fn group_message(g: &str, epoch: u64, mid: &str) -> Value {
    json!({"type":"group_message","requestId": mid,"payload":{"groupId": g,
        "message": mls(g, epoch, APPLICATION, mid), "messageId": mid}})
}

fn group_commit(g: &str, epoch: u64, mid: &str, members: &[&str], leaves: Option<Value>) -> Value {
    let mut v = json!({"type":"group_commit","requestId": mid,"payload":{"groupId": g,
        "epoch": epoch, "commit": mls(g, epoch, COMMIT, mid), "members": members,
        "messageId": mid}});
    if let Some(leaves) = leaves {
        v["payload"]["leaves"] = leaves;
    }
    v
}

fn from(who: &str, mid: &str) -> (String, String) {
    (who.to_owned(), mid.to_owned())
}

/// An MLS group of linked devices across nodes: alice's primary on `urls[0]`, her laptop on
/// `urls[1]`, bob on `urls[2]`. Each device's group message reaches every other leaf and not
/// itself (counted); the laptop offline gets its Commit and message copies from its mailbox
/// when it comes back on another node; two devices racing Commits for one epoch: exactly one
/// wins, the other is `STALE_EPOCH` and gets the winner's Commit; the laptop removed from
/// alice's list is closed and gets no further copies, its stream never recreated (`exists`
/// tells whether a Redis key exists).
async fn a_group_of_linked_devices_reaches_every_leaf_across_nodes<F, Fut>(
    urls: &[String],
    exists: F,
) where
    F: Fn(&'static str) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let alice = new_identity();
    let laptop = Device::new("laptop");
    let mut primary = Leaf::new(alice_with(&urls[0], &alice, &[&laptop]).await);
    let mut lap = Leaf::new(device(&urls[1], &alice, "alice", &laptop).await);
    let mut bob = Leaf::new(register_verified(&urls[2], "bob", &new_identity()).await);
    let g = "00ee11";
    let leaves = json!([
        leaf("alice", "primary"),
        leaf("alice", "laptop"),
        leaf("bob", "primary")
    ]);

    // alice's primary creates the group with her laptop and bob: a Welcome for each new leaf.
    let mut create = group_commit(g, 0, "c0", &["alice", "bob"], Some(leaves.clone()));
    create["payload"]["welcome"] = json!(welcome("w0"));
    let c = primary.ask(create).await;
    assert_eq!(c["payload"]["epoch"], 1, "{c}");
    for who in [&mut lap, &mut bob] {
        assert_eq!(
            who.take().await,
            ("alice".into(), "c0".into(), "welcome".into())
        );
    }

    // Every device sends once: each copy reaches the two other leaves, never the sender.
    for (who, mid) in [
        (&mut lap, "g-lap"),
        (&mut bob, "g-bob"),
        (&mut primary, "g-pri"),
    ] {
        let sent = who.ask(group_message(g, 1, mid)).await;
        assert_eq!(sent["type"], "group_message", "{sent}");
        assert_eq!(sent["payload"]["recipients"], 2, "{sent}");
    }
    assert_eq!(
        primary.take_n(2).await,
        [from("alice", "g-lap"), from("bob", "g-bob")]
    );
    assert_eq!(
        lap.take_n(2).await,
        [from("bob", "g-bob"), from("alice", "g-pri")]
    );
    assert_eq!(
        bob.take_n(2).await,
        [from("alice", "g-lap"), from("alice", "g-pri")]
    );

    // The laptop goes offline: bob's Commit (an older client's, no leaves: alice keeps both)
    // and message wait in its mailbox and come when it returns on another node.
    lap.c.ws.close(None).await.unwrap();
    drop(lap);
    let c = bob
        .ask(group_commit(g, 1, "c1", &["alice", "bob"], None))
        .await;
    assert_eq!(c["payload"]["epoch"], 2, "{c}");
    let sent = bob.ask(group_message(g, 2, "g-off")).await;
    assert_eq!(
        sent["payload"]["recipients"], 2,
        "stored for the offline laptop: {sent}"
    );
    assert_eq!(
        primary.take_n(2).await,
        [from("bob", "c1"), from("bob", "g-off")]
    );
    let mut lap = Leaf::new(device_again(&urls[2], &alice, &laptop).await);
    assert_eq!(
        lap.take_n(2).await,
        [from("bob", "c1"), from("bob", "g-off")]
    );

    // alice's two devices race a Commit for epoch 2 from two nodes: exactly one wins.
    primary
        .c
        .send(group_commit(
            g,
            2,
            "r-pri",
            &["alice", "bob"],
            Some(leaves.clone()),
        ))
        .await;
    lap.c
        .send(group_commit(
            g,
            2,
            "r-lap",
            &["alice", "bob"],
            Some(leaves.clone()),
        ))
        .await;
    let a = primary.answer("group_commit").await;
    let b = lap.answer("group_commit").await;
    let won: Vec<&Value> = [&a, &b]
        .into_iter()
        .filter(|v| v["type"] == "group_commit")
        .collect();
    assert_eq!(won.len(), 1, "exactly one winner: {a} {b}");
    assert_eq!(won[0]["payload"]["epoch"], 3, "{a} {b}");
    let (winner, loser, lost) = if a["type"] == "group_commit" {
        ("r-pri", &mut lap, &b)
    } else {
        ("r-lap", &mut primary, &a)
    };
    assert_error(
        lost,
        "STALE_EPOCH",
        if winner == "r-pri" { "r-lap" } else { "r-pri" },
    );
    assert_eq!(lost["payload"]["currentEpoch"], 3, "{lost}");
    assert_eq!(
        loser.take().await,
        ("alice".into(), winner.into(), "commit".into())
    );
    assert_eq!(
        bob.take().await,
        ("alice".into(), winner.into(), "commit".into())
    );

    // The laptop removed from alice's list: closed (4001) and no further copies, while its
    // leaf is still in the group (until a Commit removes it).
    let v = upload_list(&mut primary.c, signed_list(&alice, "alice", 2, &[]), "l2").await;
    assert_eq!(v["payload"], json!({"counter": 2, "devices": 0}), "{v}");
    assert_eq!(closed(&mut lap.c).await, close_code::DEVICE_REMOVED);
    let sent = bob.ask(group_message(g, 3, "g-after")).await;
    assert_eq!(
        sent["payload"]["recipients"], 1,
        "alice's primary only: {sent}"
    );
    assert_eq!(
        primary.take().await,
        ("bob".into(), "g-after".into(), "message".into())
    );
    let c = bob
        .ask(group_commit(g, 3, "c4", &["alice", "bob"], Some(leaves)))
        .await;
    assert_eq!(
        c["payload"]["epoch"], 4,
        "its leaf does not block Commits: {c}"
    );
    assert_eq!(
        primary.take().await,
        ("bob".into(), "c4".into(), "commit".into())
    );
    assert!(
        !exists("lattice:mbox:{alice}:d:laptop").await,
        "no copy recreated the removed device's stream"
    );
    alive(&mut primary.c).await;
    alive(&mut bob.c).await;
}

#[tokio::test]
async fn a_group_of_linked_devices_reaches_every_leaf_across_nodes_on_one_redis() {
    let redis = RedisProcess::start().await;
    let dir = tempfile::tempdir().unwrap();
    let n = nodes_on(&redis.url(), &dir, 3).await;
    let urls: Vec<String> = n.iter().map(|s| s.url.clone()).collect();
    let port = redis.port();
    a_group_of_linked_devices_reaches_every_leaf_across_nodes(&urls, |key| async move {
        cli(port, &["EXISTS", key]).await.trim() == "1"
    })
    .await;
}

#[tokio::test]
async fn a_group_of_linked_devices_reaches_every_leaf_on_a_redis_cluster() {
    let cluster = RedisCluster::start(3, 0).await;
    let dir = tempfile::tempdir().unwrap();
    let n = nodes_on(&cluster.url(), &dir, 3).await;
    let urls: Vec<String> = n.iter().map(|s| s.url.clone()).collect();
    let cluster = &cluster;
    a_group_of_linked_devices_reaches_every_leaf_across_nodes(&urls, |key| async move {
        let port = cluster.port(cluster.master_of(key).await);
        cli(port, &["EXISTS", key]).await.trim() == "1"
    })
    .await;
}

#[tokio::test]
async fn on_a_redis_cluster_each_device_gets_its_copy_and_a_removal_crosses_nodes() {
    let cluster = RedisCluster::start(3, 0).await;
    let dir = tempfile::tempdir().unwrap();
    let n = nodes_on(&cluster.url(), &dir, 3).await;
    let urls: Vec<String> = n.iter().map(|s| s.url.clone()).collect();
    each_device_on_its_node_gets_and_acks_its_own_copy(&urls).await;

    // A second id for the removal (alice's list is at counter 1 above).
    let dir2 = tempfile::tempdir().unwrap();
    drop(n);
    let n = nodes_on(&cluster.url(), &dir2, 2).await;
    let urls: Vec<String> = n.iter().map(|s| s.url.clone()).collect();
    let cluster = &cluster;
    // Flush alice's keys first: the removal case starts from a fresh alice.
    for i in 0..3 {
        cli(cluster.port(i), &["FLUSHALL"]).await;
    }
    a_list_upload_removes_a_device_on_another_node(&urls, |key| async move {
        let port = cluster.port(cluster.master_of(key).await);
        cli(port, &["EXISTS", key]).await.trim() == "1"
    })
    .await;
}
