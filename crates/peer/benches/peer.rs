//! The client's hot paths: sealing and opening one 1 KiB message through the peer's own sending
//! and receiving components (no network; inner version 2, with the version 1 it replaced as the
//! reference in the same run), and 1,000 messages round trip (alice → bob → alice)
//! through a real `lattice-server` started in-process on a loopback port.
//!
//! Run with `make bench` (or `cargo bench -p lattice-peer --features bench`).

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use lattice_crypto::Identity;
use lattice_peer::bench_internals::SealOpen;
use lattice_peer::{MessagingPeer, PeerConfig, PeerEvent};
use lattice_protocol::ClientId;

/// Messages per round-trip iteration.
const ROUND_TRIP_MESSAGES: usize = 1_000;
/// Messages alice keeps in flight: below every per-sender queue of the peer and the server.
const WINDOW: usize = 64;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn seal_open(c: &mut Criterion) {
    let rt = runtime();
    let pair = SealOpen::new();
    let text = "x".repeat(1024);
    let mut group = c.benchmark_group("peer");
    group.throughput(Throughput::Bytes(text.len() as u64));
    group.bench_function("seal_open_1k", |b| {
        b.iter(|| {
            let out = rt.block_on(pair.seal_open(&text)).expect("seal and open");
            assert_eq!(out.len(), text.len());
        });
    });
    // The reference, in the same run: the inner version 1 that signed the body only.
    group.bench_function("seal_open_1k_inner_v1", |b| {
        b.iter(|| {
            let out = rt
                .block_on(pair.seal_open_v1(&text))
                .expect("seal and open");
            assert_eq!(out.len(), text.len());
        });
    });
    group.finish();
}

fn config(url: &str, id: &str) -> PeerConfig {
    let mut c = PeerConfig::new(
        url,
        ClientId::new(id).unwrap(),
        Identity::generate(&mut rand_core::OsRng),
    );
    c.outbound_queue = 4 * WINDOW;
    c
}

/// Sends `n` messages from alice to bob, who echoes each back; resolves when alice has all echoes.
async fn round_trip(
    alice: &MessagingPeer,
    bob_id: &ClientId,
    events: &mut lattice_peer::EventStream,
    n: usize,
) {
    let text = "y".repeat(1024);
    let mut sent = 0;
    let mut echoed = 0;
    while echoed < n {
        while sent < n && sent - echoed < WINDOW {
            alice.send_message(bob_id, &text).await.expect("send");
            sent += 1;
        }
        match events.next().await.expect("alice's events") {
            PeerEvent::Message(m) if m.text.len() == text.len() => echoed += 1,
            _ => {}
        }
    }
}

fn server_round_trip(c: &mut Criterion) {
    let rt = runtime();
    let (server, alice, bob, bob_id, echo) = rt.block_on(async {
        let server = lattice_server::spawn(lattice_server::Config::for_tests())
            .await
            .expect("server");
        let url = format!("ws://{}", server.local_addr());
        let alice = MessagingPeer::new(config(&url, "alice")).unwrap();
        let bob = MessagingPeer::new(config(&url, "bob")).unwrap();
        alice.connect().await.expect("alice connects");
        bob.connect().await.expect("bob connects");
        let alice_id = alice.client_id().clone();
        let bob_id = bob.client_id().clone();
        let echo = {
            let bob = bob.clone();
            let mut events = bob.events();
            tokio::spawn(async move {
                while let Some(ev) = events.next().await {
                    if let PeerEvent::Message(m) = ev {
                        bob.send_message(&alice_id, &m.text).await.expect("echo");
                    }
                }
            })
        };
        (server, alice, bob, bob_id, echo)
    });
    let mut group = c.benchmark_group("peer");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements(ROUND_TRIP_MESSAGES as u64));
    group.bench_function("round_trip_1000_via_server", |b| {
        b.iter_batched(
            || alice.events(),
            |mut events| {
                rt.block_on(round_trip(
                    &alice,
                    &bob_id,
                    &mut events,
                    ROUND_TRIP_MESSAGES,
                ))
            },
            BatchSize::PerIteration,
        );
    });
    group.finish();
    rt.block_on(async {
        echo.abort();
        alice.disconnect().await;
        bob.disconnect().await;
        drop(server);
    });
}

criterion_group!(benches, seal_open, server_round_trip);
criterion_main!(benches);
