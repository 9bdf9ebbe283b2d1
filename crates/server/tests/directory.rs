//! A bounded directory: new verified ids are limited per source address and capped in total,
//! with typed errors and a metric; existing ids are never limited. (Expiry of unused bindings is
//! unit-tested on an injected clock in `store.rs`.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use lattice_server::Config;
use serde_json::json;
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

/// Attack: one address registers more ids than allowed. Asserts: the extra registration gets
/// `TOO_MANY_REGISTRATIONS` with its `requestId`; once one of that address's connections closes,
/// a registration succeeds again.
#[tokio::test]
async fn registrations_per_address_are_limited() {
    let server = spawn_with(Config {
        max_registrations_per_ip: 3,
        limit_loopback: true,
        ..Config::for_tests()
    })
    .await;
    let url = server.url();
    let mut held = Vec::new();
    for i in 0..3 {
        held.push(register_unverified(&url, &format!("p{i}")).await.0);
    }
    let key = json!(kem_key(&new_identity()));
    let mut extra = Client::connect(&url).await;
    let mut frame = unverified_register("p3", &key);
    frame["requestId"] = json!("reg-3");
    extra.send(frame.clone()).await;
    let e = extra.recv_type("error").await;
    assert_eq!(e["payload"]["errorType"], "TOO_MANY_REGISTRATIONS", "{e}");
    assert_eq!(e["requestId"], "reg-3");
    // one slot freed (the server notices the close asynchronously: bounded retries)
    drop(held.pop());
    let mut ok = false;
    for _ in 0..100 {
        extra.send(frame.clone()).await;
        let v = extra.recv().await;
        if v["type"] == "register" {
            ok = true;
            break;
        }
        assert_eq!(v["payload"]["errorType"], "TOO_MANY_REGISTRATIONS");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok, "a freed slot can be used again");
    server.shutdown().await;
}
