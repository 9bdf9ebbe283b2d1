//! Criterion benchmarks of a file's chunk crypto (issue 11, docs/performance.md *Files*): seal
//! (AES-256-GCM) and open, copying and in place, and the chunk's SHA-256 (the digest's part), on
//! one 1 MiB chunk, beside a plain copy of the same bytes as the floor. Throughput is per plaintext byte, so criterion's
//! time per iteration is the CPU per MiB on one core.
//!
//! `cargo bench -p lattice-crypto --bench file_chunk -- --warm-up-time 1 --measurement-time 3`
#![allow(clippy::unwrap_used, clippy::expect_used)] // benchmark setup

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use lattice_crypto::file_chunk::{
    chunk_hash, open_chunk, open_chunk_in_place, seal_chunk, seal_chunk_in_place, FileKey,
    CHUNK_HEADROOM, CHUNK_OVERHEAD, FILE_ID_LEN,
};
use rand::rngs::StdRng;
use rand::SeedableRng;

const CHUNK: usize = 1024 * 1024;

fn file_chunk(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(11);
    let key = FileKey::generate(&mut rng);
    let id = [7u8; FILE_ID_LEN];
    let plain: Vec<u8> = (0..CHUNK).map(|i| (i * 31 % 251) as u8).collect();
    let sealed = seal_chunk(&mut rng, &key, &id, 3, false, &plain).unwrap();

    let mut group = c.benchmark_group("file_chunk_1MiB");
    group.throughput(Throughput::Bytes(CHUNK as u64));
    group.bench_function("copy (reference)", |b| {
        b.iter(|| black_box(&plain).to_vec())
    });
    // Every variant drops its output outside the timing (iter_batched), so the four compare the
    // crypto and the copies, not the freeing.
    group.bench_function("seal", |b| {
        b.iter_batched(
            || (),
            |()| seal_chunk(&mut rng, &key, &id, 3, false, black_box(&plain)).unwrap(),
            BatchSize::LargeInput,
        )
    });
    // In place: the buffer a chunk is read into (room for the nonce first) becomes the sealed
    // chunk; each iteration starts from a fresh buffer, as a chunk read from the file does.
    group.bench_function("seal in place", |b| {
        b.iter_batched(
            || {
                let mut buf = Vec::with_capacity(CHUNK + CHUNK_OVERHEAD);
                buf.resize(CHUNK_HEADROOM, 0);
                buf.extend_from_slice(&plain);
                buf
            },
            |mut buf| {
                seal_chunk_in_place(&mut rng, &key, &id, 3, false, &mut buf).unwrap();
                buf
            },
            BatchSize::LargeInput,
        )
    });
    group.bench_function("sha256", |b| b.iter(|| chunk_hash(black_box(&sealed))));
    group.bench_function("open", |b| {
        b.iter_batched(
            || (),
            |()| open_chunk(&key, &id, 3, false, black_box(&sealed)).unwrap(),
            BatchSize::LargeInput,
        )
    });
    group.bench_function("open in place", |b| {
        b.iter_batched(
            || sealed.clone(),
            |mut buf| {
                open_chunk_in_place(&key, &id, 3, false, &mut buf).unwrap();
                buf
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, file_chunk);
criterion_main!(benches);
