//! Criterion benchmarks: both envelopes (1 KiB message), Ed25519 sign/verify, ML-KEM keygen.
//!
//! `cargo bench -p lattice-crypto -- --warm-up-time 1 --measurement-time 3`
#![allow(clippy::unwrap_used, clippy::expect_used)] // benchmark setup

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use lattice_crypto::lattice_v1::{self, Context};
use lattice_crypto::{message_signature_payload, ml_kem_aes, IdentityKeyPair, KemKeyPair};
use rand::rngs::StdRng;
use rand::SeedableRng;

const MESSAGE_LEN: usize = 1024;
const CTX: Context<'static> = Context {
    sender_id: "alice",
    recipient_id: "bob",
    message_id: "01J9Z3K8Q4W6X2Y7V5T0R1S3N8",
};

fn envelopes(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(1);
    let bob = KemKeyPair::generate(&mut rng);
    let message = vec![0x61; MESSAGE_LEN];
    let classic = ml_kem_aes::seal(&mut rng, bob.public_key(), &message).unwrap();
    let v1 = lattice_v1::seal(&mut rng, bob.public_key(), &CTX, &message).unwrap();

    let mut group = c.benchmark_group("envelope_1KiB");
    group.throughput(Throughput::Bytes(MESSAGE_LEN as u64));
    group.bench_function("ml-kem-aes/seal", |b| {
        b.iter(|| ml_kem_aes::seal(&mut rng, bob.public_key(), black_box(&message)).unwrap())
    });
    group.bench_function("ml-kem-aes/open", |b| {
        b.iter(|| ml_kem_aes::open(&bob, black_box(&classic)).unwrap())
    });
    group.bench_function("lattice-v1/seal", |b| {
        b.iter(|| lattice_v1::seal(&mut rng, bob.public_key(), &CTX, black_box(&message)).unwrap())
    });
    group.bench_function("lattice-v1/open", |b| {
        b.iter(|| lattice_v1::open(&bob, &CTX, black_box(&v1)).unwrap())
    });
    group.finish();
}

fn ed25519(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(2);
    let alice = IdentityKeyPair::generate(&mut rng);
    let public = alice.public_key();
    let payload = message_signature_payload(
        "alice",
        "bob",
        "m-1",
        1_700_000_000_000,
        &[0x61; MESSAGE_LEN],
    )
    .unwrap();
    let sig = alice.sign(&payload);
    c.bench_function("ed25519/sign", |b| {
        b.iter(|| alice.sign(black_box(&payload)))
    });
    c.bench_function("ed25519/verify", |b| {
        b.iter(|| public.verify(black_box(&payload), black_box(&sig)).unwrap())
    });
}

fn ml_kem_keygen(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(3);
    c.bench_function("ml-kem-768/keygen", |b| {
        b.iter(|| KemKeyPair::generate(&mut rng))
    });
}

criterion_group!(benches, envelopes, ed25519, ml_kem_keygen);
criterion_main!(benches);
