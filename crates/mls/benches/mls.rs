//! Costs of the MLS engine with SQLite-backed state (each operation one transaction on a WAL
//! file in a temp dir): encrypt/decrypt of a 1 KiB message, side by side in the same run with
//! today's 1:1 envelope (`lattice-v1` seal + Ed25519 signature, open + verify) as the reference,
//! and add/remove time at 2, 10 and 100 members, with the Commit and Welcome sizes printed
//! alongside. `make bench-mls`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::HashMap;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use lattice_crypto::{IdentityKeyPair, IdentityPublicKey};
use lattice_mls::{GroupId, IdentityPins, MlsClient, MlsStore, ValidatedKeyPackage};
use lattice_protocol::ClientId;
use rand_core::OsRng;
use tempfile::TempDir;

struct Pins(HashMap<ClientId, IdentityPublicKey>);

impl IdentityPins for Pins {
    fn pinned_identity(&self, client_id: &ClientId) -> Option<IdentityPublicKey> {
        self.0.get(client_id).copied()
    }
}

fn client(name: &str, pins: &mut Pins) -> (MlsClient, TempDir) {
    client_on(name, pins, true)
}

/// A client on a WAL file (`file`) or on an in-memory SQLite database (to separate file I/O
/// from the rest of the per-operation cost).
fn client_on(name: &str, pins: &mut Pins, file: bool) -> (MlsClient, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let identity = IdentityKeyPair::generate(&mut OsRng);
    let id = ClientId::new(name).unwrap();
    pins.0.insert(id.clone(), identity.public_key());
    let store = if file {
        MlsStore::open(dir.path().join("mls.sqlite3")).unwrap()
    } else {
        MlsStore::from_connection(rusqlite::Connection::open_in_memory().unwrap()).unwrap()
    };
    (MlsClient::create(store, &identity, id).unwrap(), dir)
}

fn key_package(of: &mut MlsClient, by: &MlsClient, pins: &Pins) -> ValidatedKeyPackage {
    let kp = of.key_packages(1).unwrap().remove(0);
    by.validate_key_package(&kp, pins).unwrap()
}

/// The reference: a `lattice-v1` 1:1 message as `lattice-peer` makes it (sign, seal) and
/// reads it (open, verify), without the JSON around it.
fn lattice_v1_reference(c: &mut Criterion) {
    use lattice_crypto::lattice_v1::{self, Context};
    let ctx = Context {
        sender_id: "alice",
        recipient_id: "bob",
        message_id: "01J9Z3K8Q4W6X2Y7V5T0R1S3N8",
    };
    let alice = IdentityKeyPair::generate(&mut OsRng);
    let bob = lattice_crypto::KemKeyPair::generate(&mut OsRng);
    let message = vec![0x61_u8; 1024];
    let sealed = lattice_v1::seal(&mut OsRng, bob.public_key(), &ctx, &message).unwrap();
    let sig = alice.sign(&message);
    let mut g = c.benchmark_group("lattice_v1_1KiB_reference");
    g.throughput(Throughput::Bytes(1024));
    g.bench_function("sign+seal", |b| {
        b.iter(|| {
            black_box(alice.sign(black_box(&message)));
            lattice_v1::seal(&mut OsRng, bob.public_key(), &ctx, black_box(&message)).unwrap()
        })
    });
    g.bench_function("open+verify", |b| {
        b.iter(|| {
            let plain = lattice_v1::open(&bob, &ctx, black_box(&sealed)).unwrap();
            alice.public_key().verify(&plain, &sig).unwrap();
        })
    });
    g.finish();
}

fn messages(c: &mut Criterion) {
    lattice_v1_reference(c);
    messages_on(c, "mls_1KiB_sqlite_file", true);
    messages_on(c, "mls_1KiB_sqlite_memory", false);
}

fn messages_on(c: &mut Criterion, name: &str, file: bool) {
    let mut pins = Pins(HashMap::new());
    let (mut alice, _a) = client_on("alice", &mut pins, file);
    let (mut bob, _b) = client_on("bob", &mut pins, file);
    let gid = alice.create_group("bench").unwrap();
    let kp = key_package(&mut bob, &alice, &pins);
    let out = alice.add_members(&gid, &[kp]).unwrap();
    alice.confirm_commit(&gid).unwrap();
    bob.join(&out.welcome.unwrap(), &pins).unwrap();
    let msg = vec![0x5a_u8; 1024];
    let sample = alice.encrypt(&gid, &msg).unwrap();
    bob.process(&sample, &pins).unwrap();
    eprintln!("size: 1 KiB application message = {} B", sample.len());

    let mut g = c.benchmark_group(name);
    g.bench_function("encrypt", |b| {
        b.iter(|| black_box(alice.encrypt(&gid, &msg).unwrap()))
    });
    // bob seals, alice opens: alice's own sends above left bob's view of her ratchet far
    // behind (beyond the forward-distance bound), while bob's ratchet is untouched.
    g.bench_function("decrypt", |b| {
        b.iter_batched(
            || bob.encrypt(&gid, &msg).unwrap(),
            |ct| black_box(alice.process(&ct, &pins).unwrap()),
            BatchSize::SmallInput,
        )
    });
    g.finish();

    // A mailbox drain: BATCH messages opened in one transaction (time is per batch).
    const BATCH: usize = 50;
    let mut g = c.benchmark_group(format!("{name}_batch{BATCH}"));
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("decrypt", |b| {
        b.iter_batched(
            || {
                (0..BATCH)
                    .map(|_| bob.encrypt(&gid, &msg).unwrap())
                    .collect::<Vec<_>>()
            },
            |cts| {
                let results = alice
                    .process_batch(cts.iter().map(Vec::as_slice), &pins)
                    .unwrap();
                assert!(results.iter().all(Result::is_ok));
                black_box(results)
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// A group of `n` members made by `alice` (the others never need to join for her costs).
fn group_of(n: usize, pins: &mut Pins) -> (MlsClient, GroupId, Vec<(MlsClient, TempDir)>, TempDir) {
    let (mut alice, dir) = client("alice", pins);
    let gid = alice.create_group("bench").unwrap();
    let mut others: Vec<_> = (1..n).map(|i| client(&format!("m{i}"), pins)).collect();
    if !others.is_empty() {
        let kps: Vec<_> = others
            .iter_mut()
            .map(|(o, _)| key_package(o, &alice, pins))
            .collect();
        alice.add_members(&gid, &kps).unwrap();
        alice.confirm_commit(&gid).unwrap();
    }
    (alice, gid, others, dir)
}

fn membership(c: &mut Criterion) {
    let mut g = c.benchmark_group("mls_membership_sqlite");
    g.sample_size(10);
    for n in [2_usize, 10, 100] {
        let mut pins = Pins(HashMap::new());
        let (mut alice, gid, _others, _dir) = group_of(n, &mut pins);
        let (mut newcomer, _nd) = client("newcomer", &mut pins);
        // One-time KeyPackages are consumed by a Welcome only, so one can be re-added while
        // each Commit is discarded.
        let kp = key_package(&mut newcomer, &alice, &pins);
        let out = alice.add_members(&gid, std::slice::from_ref(&kp)).unwrap();
        alice.discard_commit(&gid).unwrap();
        let victim = ClientId::new("m1").unwrap();
        let removal = alice
            .remove_members(&gid, std::slice::from_ref(&victim))
            .unwrap();
        alice.discard_commit(&gid).unwrap();
        let update = alice.self_update(&gid).unwrap();
        alice.discard_commit(&gid).unwrap();
        eprintln!(
            "size at {n} members: add Commit {} B, Welcome {} B; remove Commit {} B; self-update Commit {} B",
            out.commit.len(),
            out.welcome.as_ref().map_or(0, Vec::len),
            removal.commit.len(),
            update.commit.len(),
        );
        g.bench_function(format!("add_one_at_{n}"), |b| {
            b.iter(|| {
                black_box(alice.add_members(&gid, std::slice::from_ref(&kp)).unwrap());
                alice.discard_commit(&gid).unwrap();
            })
        });
        g.bench_function(format!("remove_one_at_{n}"), |b| {
            b.iter(|| {
                black_box(
                    alice
                        .remove_members(&gid, std::slice::from_ref(&victim))
                        .unwrap(),
                );
                alice.discard_commit(&gid).unwrap();
            })
        });
    }
    g.finish();
}

criterion_group!(benches, messages, membership);
criterion_main!(benches);
