//! The MLS delivery service on Redis (`lattice_server::cluster::{key_packages, groups}`), across
//! several "nodes" (each its own connections, as separate processes would have), on one Redis and
//! on a 3-master Redis Cluster (`both!`): KeyPackages handed out once whichever nodes fetch, the
//! stock bound held by racing uploads, exactly one of racing Commits accepted per epoch, Commits
//! reaching every member in epoch order, and the SQLite path's refusals.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

#[path = "support/redis_process.rs"]
mod redis_process;

use std::collections::HashSet;

use lattice_protocol::limits::{KEY_PACKAGE_LOW_STOCK, MAX_KEY_PACKAGE_STOCK};
use lattice_protocol::ClientId;
use lattice_server::cluster::key_packages::{RedisKeyPackages, RedisUploadError};
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
