//! Linked devices on the Redis side of several nodes (`lattice_server::cluster::devices`, and the
//! per-device mailboxes and KeyPackage stocks of `cluster::mailbox` and `cluster::key_packages`),
//! against a real `redis-server` this test starts: each "node" is its own set of Redis
//! connections, as separate processes would have. The device list keeps only a strictly higher
//! counter, also when nodes race; a list that drops a device deletes that device's mailbox and
//! KeyPackages and nothing else; a message for every device of an id is stored all or nothing;
//! `allDevices` takes one KeyPackage of every device in one step.
//!
//! Every test runs twice (`both!`): on one Redis (`…::single`) and on a 3-master Redis Cluster
//! (`…::cluster`), where a script touching keys of two slots would fail (`CROSSSLOT`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

#[path = "support/redis_process.rs"]
mod redis_process;

use lattice_protocol::limits::MAX_DEVICES_PER_ID;
use lattice_protocol::{ClientId, DeviceEntry, DeviceId, MessageId, SignedDeviceList};
use lattice_server::cluster::devices::{RedisDeviceListError, RedisDevices};
use lattice_server::cluster::key_packages::RedisKeyPackages;
use lattice_server::cluster::mailbox::{RedisEnqueueAllError, RedisMailbox};
use lattice_server::store::{Accepted, Limit, MailItem, Quota, Stock};
use redis_process::Backend;

fn id(s: &str) -> ClientId {
    ClientId::new(s).unwrap()
}

fn dev(s: &str) -> DeviceId {
    DeviceId::new(s).unwrap()
}

/// A list of `devices` (id, key byte) at `counter`. The component stores what the handler
/// verified; the signature is opaque to it.
fn list(counter: u64, devices: &[(&str, u8)]) -> SignedDeviceList {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    SignedDeviceList {
        counter,
        devices: devices
            .iter()
            .map(|(d, k)| DeviceEntry {
                device_id: dev(d),
                device_key: b64.encode([*k; 32]),
            })
            .collect(),
        signature: b64.encode([counter.to_le_bytes()[0]; 64]),
    }
}

fn mail(sender: &str, mid: &str) -> MailItem {
    MailItem {
        message_id: MessageId::new(mid).unwrap(),
        sender: id(sender),
        frame: format!(r#"{{"type":"message","fromId":"{sender}","messageId":"{mid}"}}"#),
    }
}

struct Node {
    devices: RedisDevices,
    mailbox: RedisMailbox,
    key_packages: RedisKeyPackages,
}

async fn node(redis: &Backend) -> Node {
    let conn = redis.conn().await;
    Node {
        devices: RedisDevices::new(conn.clone()),
        mailbox: RedisMailbox::new(conn.clone()),
        key_packages: RedisKeyPackages::new(conn),
    }
}

async fn a_device_list_keeps_only_a_strictly_higher_counter_from_any_node(redis: &Backend) {
    let (a, b) = (node(redis).await, node(redis).await);
    let alice = id("alice");
    assert_eq!(b.devices.list(&alice).await.unwrap(), None);
    assert_eq!(
        b.devices.devices_of(&alice).await.unwrap(),
        [DeviceId::primary()]
    );
    let first = list(5, &[("laptop", 1), ("phone", 2)]);
    assert!(a.devices.put_list(&alice, &first).await.unwrap().is_empty());
    // Served as stored, from the other node.
    assert_eq!(b.devices.list(&alice).await.unwrap(), Some(first.clone()));
    assert_eq!(
        b.devices.devices_of(&alice).await.unwrap(),
        [DeviceId::primary(), dev("laptop"), dev("phone")]
    );
    // A replay, an equal counter with other content, and a lower one: refused, nothing changes.
    for stale in [first.clone(), list(5, &[("laptop", 1)]), list(4, &[])] {
        match b.devices.put_list(&alice, &stale).await {
            Err(RedisDeviceListError::Stale { stored: 5 }) => {}
            other => panic!("stale list answered {other:?}"),
        }
    }
    assert_eq!(a.devices.list(&alice).await.unwrap(), Some(first));
    // A counter past 2^53 (where Lua's doubles lose precision) is still compared exactly.
    let big = list(u64::MAX - 1, &[("laptop", 1)]);
    assert_eq!(
        b.devices.put_list(&alice, &big).await.unwrap(),
        [dev("phone")]
    );
    assert!(matches!(
        a.devices
            .put_list(&alice, &list(u64::MAX - 2, &[("laptop", 1)]))
            .await,
        Err(RedisDeviceListError::Stale { stored }) if stored == u64::MAX - 1
    ));
    assert!(a
        .devices
        .put_list(&alice, &list(u64::MAX, &[]))
        .await
        .is_ok());
    // Another id's list is its own.
    assert_eq!(a.devices.list(&id("bob")).await.unwrap(), None);
}

both!(a_device_list_keeps_only_a_strictly_higher_counter_from_any_node);

/// Adversarial: nodes upload lists of one id at once, each reading the stored counter before the
/// other writes. The stored list is always the highest counter uploaded, and every upload with a
/// lower counter than the one stored when it finished was refused, never stored over it.
async fn racing_list_uploads_through_several_nodes_keep_the_highest_counter(redis: &Backend) {
    let nodes = [node(redis).await, node(redis).await, node(redis).await];
    let alice = id("alice");
    let mut base = 0u64;
    for round in 0..40u64 {
        // Three uploads with counters base+1..=base+3, in an order that varies by round.
        let order = [round % 3, (round + 1) % 3, (round + 2) % 3];
        let uploads: Vec<SignedDeviceList> = order
            .iter()
            .map(|k| {
                let n = u8::try_from(*k).unwrap();
                list(base + k + 1, &[("laptop", n), ("phone", n + 10)])
            })
            .collect();
        let (r0, r1, r2) = tokio::join!(
            nodes[0].devices.put_list(&alice, &uploads[0]),
            nodes[1].devices.put_list(&alice, &uploads[1]),
            nodes[2].devices.put_list(&alice, &uploads[2]),
        );
        for (upload, r) in uploads.iter().zip([r0, r1, r2]) {
            match r {
                Ok(_) => {}
                Err(RedisDeviceListError::Stale { stored }) => assert!(
                    stored >= upload.counter && stored > base,
                    "refused {} against {stored}",
                    upload.counter
                ),
                Err(e) => panic!("upload failed: {e}"),
            }
        }
        let highest = uploads.iter().max_by_key(|l| l.counter).unwrap();
        assert_eq!(
            nodes[round as usize % 3]
                .devices
                .list(&alice)
                .await
                .unwrap(),
            Some(highest.clone()),
            "round {round}"
        );
        base += 3;
    }
}

both!(racing_list_uploads_through_several_nodes_keep_the_highest_counter);

async fn a_list_that_drops_a_device_deletes_its_mailbox_and_key_packages_only(redis: &Backend) {
    let (a, b) = (node(redis).await, node(redis).await);
    let (alice, bob) = (id("alice"), id("bob"));
    let all = [
        DeviceId::primary(),
        dev("laptop"),
        dev("phone"),
        dev("tablet"),
    ];
    a.devices
        .put_list(
            &alice,
            &list(1, &[("laptop", 1), ("phone", 2), ("tablet", 3)]),
        )
        .await
        .unwrap();
    // Bob's list names a device of the same name: not alice's.
    a.devices
        .put_list(&bob, &list(1, &[("tablet", 9)]))
        .await
        .unwrap();
    for m in ["m-1", "m-2"] {
        assert_eq!(
            a.mailbox
                .enqueue_all(&alice, &all, &mail("carol", m), &Quota::UNLIMITED)
                .await
                .unwrap(),
            Accepted::Stored
        );
    }
    b.mailbox
        .enqueue_all(
            &bob,
            &[DeviceId::primary(), dev("tablet")],
            &mail("carol", "m-1"),
            &Quota::UNLIMITED,
        )
        .await
        .unwrap();
    for d in &all {
        b.key_packages
            .upload_device(&alice, d, &[d.as_str().as_bytes().to_vec()], Some(b"lr"))
            .await
            .unwrap();
    }
    b.key_packages
        .upload_device(&bob, &dev("tablet"), &[b"bob".to_vec()], None)
        .await
        .unwrap();

    // The new list leaves tablet out and lists phone with another key: both are removed.
    let removed = b
        .devices
        .put_list(&alice, &list(2, &[("laptop", 1), ("phone", 7)]))
        .await
        .unwrap();
    assert_eq!(removed, [dev("phone"), dev("tablet")]);
    let none = Stock {
        one_time: 0,
        last_resort: false,
    };
    let kept = Stock {
        one_time: 1,
        last_resort: true,
    };
    for (d, mails, stock) in [
        (DeviceId::primary(), 2, kept),
        (dev("laptop"), 2, kept),
        (dev("phone"), 0, none),
        (dev("tablet"), 0, none),
    ] {
        assert_eq!(
            a.mailbox.device_count(&alice, &d).await.unwrap(),
            mails,
            "{d}"
        );
        assert_eq!(
            a.key_packages.device_stock(&alice, &d).await.unwrap(),
            stock,
            "{d}"
        );
    }
    // The primary's mailbox is the one every id had before devices.
    assert_eq!(a.mailbox.count(&alice).await.unwrap(), 2);
    assert_eq!(
        a.mailbox.device_count(&bob, &dev("tablet")).await.unwrap(),
        1
    );
    assert_eq!(
        a.key_packages
            .device_stock(&bob, &dev("tablet"))
            .await
            .unwrap()
            .one_time,
        1
    );

    // An expired id forgets its list and its linked devices' mail and stock, from any node.
    assert!(a.devices.forget(&alice).await.unwrap());
    assert!(!b.devices.forget(&alice).await.unwrap());
    assert_eq!(b.devices.list(&alice).await.unwrap(), None);
    assert_eq!(
        b.mailbox
            .device_count(&alice, &dev("laptop"))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        b.key_packages
            .device_stock(&alice, &dev("laptop"))
            .await
            .unwrap(),
        none
    );
    assert_eq!(
        b.devices.list(&bob).await.unwrap(),
        Some(list(1, &[("tablet", 9)]))
    );
}

both!(a_list_that_drops_a_device_deletes_its_mailbox_and_key_packages_only);

async fn a_message_to_every_device_is_stored_all_or_nothing_naming_the_first_full_one(
    redis: &Backend,
) {
    let (a, b) = (node(redis).await, node(redis).await);
    let alice = id("alice");
    let devices = [DeviceId::primary(), dev("laptop"), dev("phone")];
    let quota = Quota {
        count: 2,
        bytes: 1 << 20,
        sender_count: 2,
        sender_bytes: 1 << 20,
    };
    assert_eq!(
        a.mailbox
            .enqueue_all(&alice, &devices, &mail("bob", "m-1"), &quota)
            .await
            .unwrap(),
        Accepted::Stored
    );
    // The phone's mailbox fills up with a message for it alone.
    b.mailbox
        .enqueue_all(&alice, &[dev("phone")], &mail("carol", "m-2"), &quota)
        .await
        .unwrap();
    match b
        .mailbox
        .enqueue_all(&alice, &devices, &mail("bob", "m-3"), &quota)
        .await
    {
        Err(RedisEnqueueAllError::Full { device, limit }) => {
            assert_eq!((device, limit), (dev("phone"), Limit::Count));
        }
        other => panic!("a full device answered {other:?}"),
    }
    // Nothing of the refused message is anywhere.
    for (d, n) in [
        (DeviceId::primary(), 1),
        (dev("laptop"), 1),
        (dev("phone"), 2),
    ] {
        assert_eq!(a.mailbox.device_count(&alice, &d).await.unwrap(), n, "{d}");
    }
    let primary = a.mailbox.pending(&alice, None, 10).await.unwrap();
    assert_eq!(
        primary.iter().map(|(_, m)| m.clone()).collect::<Vec<_>>(),
        [mail("bob", "m-1")]
    );
    // The sender's retry through the other node: every copy is there already.
    assert_eq!(
        b.mailbox
            .enqueue_all(&alice, &devices, &mail("bob", "m-1"), &quota)
            .await
            .unwrap(),
        Accepted::Duplicate
    );
    // Each device acknowledges its own copy (through any node); the others keep theirs, and
    // the freed room lets the refused message in everywhere.
    let bob = id("bob");
    let m1 = MessageId::new("m-1").unwrap();
    assert!(b
        .mailbox
        .remove_device(&alice, &dev("phone"), &bob, &m1)
        .await
        .unwrap());
    assert!(!a
        .mailbox
        .remove_device(&alice, &dev("phone"), &bob, &m1)
        .await
        .unwrap());
    for (d, n) in [
        (DeviceId::primary(), 1),
        (dev("laptop"), 1),
        (dev("phone"), 1),
    ] {
        assert_eq!(a.mailbox.device_count(&alice, &d).await.unwrap(), n, "{d}");
    }
    assert_eq!(
        a.mailbox
            .enqueue_all(&alice, &devices, &mail("bob", "m-3"), &quota)
            .await
            .unwrap(),
        Accepted::Stored
    );
    for (d, n) in [
        (DeviceId::primary(), 2),
        (dev("laptop"), 2),
        (dev("phone"), 2),
    ] {
        assert_eq!(a.mailbox.device_count(&alice, &d).await.unwrap(), n, "{d}");
    }
    // The per-sender bound (2 from bob) is per device too, with room left in total.
    let room_for_ten = Quota { count: 10, ..quota };
    match a
        .mailbox
        .enqueue_all(&alice, &devices[..2], &mail("bob", "m-4"), &room_for_ten)
        .await
    {
        Err(RedisEnqueueAllError::Full { device, limit }) => {
            assert_eq!((device, limit), (DeviceId::primary(), Limit::SenderCount));
        }
        other => panic!("a sender over its share answered {other:?}"),
    }
    // No device, a device twice, and more devices than an id can have are refused unsent.
    let nine: Vec<DeviceId> = std::iter::once(DeviceId::primary())
        .chain((1..MAX_DEVICES_PER_ID).map(|i| dev(&format!("d{i}"))))
        .chain([dev("extra")])
        .collect();
    for bad in [&[][..], &[dev("laptop"), dev("laptop")][..], &nine[..]] {
        assert!(matches!(
            a.mailbox
                .enqueue_all(&alice, bad, &mail("bob", "m-5"), &Quota::UNLIMITED)
                .await,
            Err(RedisEnqueueAllError::Devices(_))
        ));
    }
    assert_eq!(
        a.mailbox
            .device_count(&alice, &dev("laptop"))
            .await
            .unwrap(),
        2
    );
}

both!(a_message_to_every_device_is_stored_all_or_nothing_naming_the_first_full_one);

async fn an_all_devices_fetch_takes_one_key_package_of_every_device_at_once(redis: &Backend) {
    let (a, b) = (node(redis).await, node(redis).await);
    let alice = id("alice");
    let devices = [DeviceId::primary(), dev("laptop"), dev("phone")];
    a.key_packages
        .upload(&alice, &[b"p1".to_vec(), b"p2".to_vec()], None)
        .await
        .unwrap();
    b.key_packages
        .upload_device(&alice, &dev("laptop"), &[b"l1".to_vec()], Some(b"l-lr"))
        .await
        .unwrap();
    // From two nodes at once: each gets one of every device's, never the same one-time one.
    let (x, y) = tokio::join!(
        a.key_packages.fetch_all(&alice, &devices),
        b.key_packages.fetch_all(&alice, &devices),
    );
    let (x, y) = (x.unwrap(), y.unwrap());
    for got in [&x, &y] {
        assert_eq!(
            got.iter().map(|(d, _)| d.clone()).collect::<Vec<_>>(),
            devices
        );
        assert!(got[2].1.is_none(), "phone has none");
    }
    let mut primary: Vec<Vec<u8>> = [&x, &y]
        .iter()
        .map(|g| g[0].1.clone().unwrap().data)
        .collect();
    primary.sort();
    assert_eq!(primary, [b"p1".to_vec(), b"p2".to_vec()]);
    let mut laptop: Vec<(Vec<u8>, bool)> = [&x, &y]
        .iter()
        .map(|g| {
            let k = g[1].1.clone().unwrap();
            (k.data, k.last_resort)
        })
        .collect();
    laptop.sort();
    // One took the one-time KeyPackage; the other, with none left, the last resort (kept).
    assert_eq!(laptop, [(b"l-lr".to_vec(), true), (b"l1".to_vec(), false)]);
    let low = [&x, &y]
        .iter()
        .find(|g| !g[1].1.as_ref().unwrap().last_resort)
        .map(|g| g[1].1.clone().unwrap())
        .unwrap();
    assert_eq!(low.stock_left, 0);
    assert!(
        low.low_stock(),
        "the laptop's stock ran low: its notice is due"
    );
    assert_eq!(
        a.key_packages
            .device_stock(&alice, &dev("laptop"))
            .await
            .unwrap(),
        Stock {
            one_time: 0,
            last_resort: true
        }
    );
    assert!(a
        .key_packages
        .fetch_all(&alice, &[])
        .await
        .unwrap()
        .is_empty());
}

both!(an_all_devices_fetch_takes_one_key_package_of_every_device_at_once);
