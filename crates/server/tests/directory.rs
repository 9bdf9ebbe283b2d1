//! A bounded directory: new verified ids are limited per source address and capped in total,
//! with typed errors and a metric; existing ids are never limited. (Expiry of unused bindings is
//! unit-tested on an injected clock in `store.rs`.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use lattice_server::Config;
use support::*;

async fn new_ids_refused(server: &lattice_server::ServerHandle) -> u64 {
    let base = server.url().replacen("ws://", "http://", 1);
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("lattice_new_ids_refused_total "))
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn new_ids_from_one_address_are_rate_limited_and_existing_ids_are_not() {
    let server = spawn_with(Config {
        new_ids_per_ip: 2,
        limit_loopback: true,
        ..Config::for_tests()
    })
    .await;
    let url = server.url();
    let (a, b, c) = (new_identity(), new_identity(), new_identity());
    drop(register_verified(&url, "a", &a).await);
    drop(register_verified(&url, "b", &b).await);
    let (_c, v) = try_register_verified(&url, "c", &c).await;
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["payload"]["errorType"], "RATE_LIMITED", "{v}");
    assert_eq!(new_ids_refused(&server).await, 1);
    // existing ids register again as often as they like
    for _ in 0..3 {
        drop(reconnect_verified(&url, "a", &a).await);
    }
    // and unverified (original) clients mint nothing, so they are not limited either
    let _ = register_unverified(&url, "orig").await;
    server.shutdown().await;
}

#[tokio::test]
async fn the_directory_is_capped_with_a_typed_error() {
    let server = spawn_with(Config {
        max_bindings: 2,
        ..Config::for_tests()
    })
    .await;
    let url = server.url();
    let (a, b, c) = (new_identity(), new_identity(), new_identity());
    drop(register_verified(&url, "a", &a).await);
    drop(register_verified(&url, "b", &b).await);
    let (_c, v) = try_register_verified(&url, "c", &c).await;
    assert_eq!(v["payload"]["errorType"], "TOO_MANY_REGISTRATIONS", "{v}");
    assert_eq!(new_ids_refused(&server).await, 1);
    drop(reconnect_verified(&url, "b", &b).await);
    server.shutdown().await;
}
