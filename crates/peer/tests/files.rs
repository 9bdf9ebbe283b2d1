//! Files end to end through a real `lattice-server` with a real data directory on 127.0.0.1:0
//! and real peers: round trips of every size class byte for byte, pause/resume/cancel, a peer
//! restarted mid-transfer resuming from its journal, and the attacks (a chunk swapped on the
//! server, a chunk of another file, a wrong digest), quotas and an original client refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use lattice_crypto::{Identity, KemKeyPair};
use lattice_peer::defaults::FILE_CHUNK_BYTES;
use lattice_peer::{
    Content, EventStream, FileMeta, FileOffer, FileRejection, MessagingPeer, PeerConfig, PeerError,
    PeerEvent, TransferDirection, TransferId, TransferProgress, TransferState,
};
use lattice_protocol::MessageId;
use lattice_server::{Config, ServerHandle};
use support::raw::RawClient;
use support::*;

/// Bound on a whole transfer in these tests.
const TRANSFER_WAIT: Duration = Duration::from_secs(60);

async fn server(data: &Path) -> ServerHandle {
    lattice_server::spawn(Config {
        data_dir: Some(data.to_path_buf()),
        ..Config::for_tests()
    })
    .await
    .unwrap()
}

fn config(url: &str, name: &str, identity: Identity, dir: &Path) -> PeerConfig {
    let mut c = test_config(url, name, identity);
    c.transfers_dir = Some(dir.join(format!("{name}-transfers")));
    c
}

async fn online(url: &str, name: &str, dir: &Path) -> (MessagingPeer, EventStream) {
    let p = MessagingPeer::new(config(url, name, new_identity(), dir)).unwrap();
    let events = p.events();
    p.connect().await.unwrap();
    (p, events)
}

/// Bytes that differ at every offset and between files.
fn pattern(len: u64, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ ((i >> 8) as u8))
        .collect()
}

/// Waits until transfer `id` reaches a final or failed state; returns its last progress.
async fn finished(events: &mut EventStream, id: &TransferId) -> TransferProgress {
    let fut = async {
        while let Some(ev) = events.next().await {
            if let PeerEvent::Transfer(p) = ev {
                if &p.id == id
                    && matches!(
                        p.state,
                        TransferState::Completed
                            | TransferState::Cancelled
                            | TransferState::Failed(_)
                    )
                {
                    return p;
                }
            }
        }
        panic!("event stream ended");
    };
    tokio::time::timeout(TRANSFER_WAIT, fut)
        .await
        .expect("the transfer did not finish in time")
}

/// The next file message.
async fn next_file(events: &mut EventStream) -> (MessageId, FileOffer, bool) {
    wait_for(events, |e| match e {
        PeerEvent::Message(m) => match m.content {
            Content::File(offer) => Some((m.message_id.unwrap(), offer, m.verified)),
            _ => None,
        },
        _ => None,
    })
    .await
}

#[tokio::test]
async fn files_of_every_size_class_round_trip_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(&dir.path().join("server")).await;
    let url = server.url();
    let (alice, mut alice_events) = online(&url, "alice", dir.path()).await;
    let (bob, mut bob_events) = online(&url, "bob", dir.path()).await;
    let b = id("bob");
    let a = id("alice");

    let sizes = [
        0,
        1,
        FILE_CHUNK_BYTES - 1,
        FILE_CHUNK_BYTES,
        FILE_CHUNK_BYTES + 1,
        3 * FILE_CHUNK_BYTES + 4321,
    ];
    for (n, size) in sizes.into_iter().enumerate() {
        let src = dir.path().join(format!("src-{n}.bin"));
        let bytes = pattern(size, n as u8);
        std::fs::write(&src, &bytes).unwrap();
        let up = alice
            .send_file(&b, &src, FileMeta::default())
            .await
            .unwrap();
        let done = finished(&mut alice_events, &up).await;
        assert_eq!(
            done.state,
            TransferState::Completed,
            "upload of {size} bytes"
        );
        assert_eq!((done.done, done.total), (size, size));
        assert_eq!(done.direction, TransferDirection::Upload);

        let (message_id, offer, verified) = next_file(&mut bob_events).await;
        assert!(verified);
        assert_eq!(
            offer.digest, None,
            "the offer goes out as the upload starts"
        );
        assert_eq!(offer.name, format!("src-{n}.bin"));
        assert_eq!(offer.size, size);
        assert_eq!(offer.mime, "application/octet-stream");
        assert_eq!(Some(&message_id), done.message_id.as_ref());

        let dest = dir.path().join(format!("dest-{n}.bin"));
        let down = bob.download_file(&a, &message_id, &offer, &dest).unwrap();
        let got = finished(&mut bob_events, &down).await;
        assert_eq!(
            got.state,
            TransferState::Completed,
            "download of {size} bytes"
        );
        assert_eq!(std::fs::read(&dest).unwrap(), bytes, "{size} bytes");
        assert!(!part(&dest).exists());
        // The one recipient has its verified copy: the blob is gone from the server's disk.
        assert!(
            !dir.path()
                .join("server")
                .join("blobs")
                .join(&offer.blob_id)
                .exists(),
            "the blob of {size} bytes is deleted once received"
        );
    }
    // Finished transfers are listed; no journal is left behind.
    assert!(alice
        .transfers()
        .iter()
        .all(|t| t.state == TransferState::Completed));
    let journals = std::fs::read_dir(dir.path().join("alice-transfers"))
        .unwrap()
        .count();
    assert_eq!(journals, 0);
    server.shutdown().await;
}

/// `PeerConfig::file_chunk_bytes` and `file_chunks_in_flight`: a sender with the smallest chunks
/// the blob store takes and one chunk in flight, and a receiver with the most in flight, move a
/// file of many chunks byte for byte (the offer carries the sender's chunk size); values outside
/// the protocol's bounds are refused when the peer is made.
#[tokio::test]
async fn the_chunk_size_and_window_are_configurable_within_the_protocols_bounds() {
    use lattice_peer::defaults::MAX_FILE_CHUNKS_IN_FLIGHT;
    use lattice_protocol::limits::{MAX_BLOB_CHUNK_BYTES, MIN_BLOB_CHUNK_BYTES};
    let dir = tempfile::tempdir().unwrap();
    let server = server(&dir.path().join("server")).await;
    let url = server.url();
    for (chunk, window) in [
        (MIN_BLOB_CHUNK_BYTES - 1, 4),
        (MAX_BLOB_CHUNK_BYTES - 27, 4),
        (FILE_CHUNK_BYTES, 0),
        (FILE_CHUNK_BYTES, MAX_FILE_CHUNKS_IN_FLIGHT + 1),
    ] {
        let mut c = config(&url, "carol", new_identity(), dir.path());
        c.file_chunk_bytes = chunk;
        c.file_chunks_in_flight = window;
        assert!(
            matches!(MessagingPeer::new(c), Err(PeerError::InvalidArgument(_))),
            "{chunk} bytes, {window} in flight"
        );
    }

    let mut c = config(&url, "alice", new_identity(), dir.path());
    c.file_chunk_bytes = MIN_BLOB_CHUNK_BYTES;
    c.file_chunks_in_flight = 1;
    let alice = MessagingPeer::new(c).unwrap();
    let mut alice_events = alice.events();
    alice.connect().await.unwrap();
    let mut c = config(&url, "bob", new_identity(), dir.path());
    c.file_chunks_in_flight = MAX_FILE_CHUNKS_IN_FLIGHT;
    let bob = MessagingPeer::new(c).unwrap();
    let mut bob_events = bob.events();
    bob.connect().await.unwrap();

    let size = 20 * MIN_BLOB_CHUNK_BYTES + 3;
    let bytes = pattern(size, 42);
    let src = dir.path().join("small-chunks.bin");
    std::fs::write(&src, &bytes).unwrap();
    let up = alice
        .send_file(&id("bob"), &src, FileMeta::default())
        .await
        .unwrap();
    let (message_id, offer, _) = next_file(&mut bob_events).await;
    assert_eq!(
        (offer.chunk_size, offer.chunk_count),
        (MIN_BLOB_CHUNK_BYTES, 21)
    );
    let dest = dir.path().join("small-chunks-received.bin");
    let down = bob
        .download_file(&id("alice"), &message_id, &offer, &dest)
        .unwrap();
    assert_eq!(
        finished(&mut alice_events, &up).await.state,
        TransferState::Completed
    );
    assert_eq!(
        finished(&mut bob_events, &down).await.state,
        TransferState::Completed
    );
    assert_eq!(std::fs::read(&dest).unwrap(), bytes);
    server.shutdown().await;
}

fn part(dest: &Path) -> PathBuf {
    let mut s = dest.as_os_str().to_owned();
    s.push(".part");
    PathBuf::from(s)
}

#[tokio::test]
async fn names_types_and_thumbnails_travel_and_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(&dir.path().join("server")).await;
    let url = server.url();
    let (alice, mut alice_events) = online(&url, "alice", dir.path()).await;
    let (_bob, mut bob_events) = online(&url, "bob", dir.path()).await;
    let b = id("bob");
    let src = dir.path().join("x.bin");
    std::fs::write(&src, b"\x89PNG not really").unwrap();

    // The largest thumbnail allowed still fits in one message.
    let thumb = lattice_peer::Thumbnail {
        mime: "image/png".into(),
        width: 16,
        height: 9,
        bytes: pattern(lattice_peer::content::MAX_THUMBNAIL_BYTES as u64, 5),
    };
    let meta = FileMeta {
        name: Some("holiday.png".into()),
        mime: None,
        thumbnail: Some(thumb.clone()),
    };
    let up = alice.send_file(&b, &src, meta).await.unwrap();
    assert_eq!(
        finished(&mut alice_events, &up).await.state,
        TransferState::Completed
    );
    let (_, offer, _) = next_file(&mut bob_events).await;
    assert_eq!(offer.name, "holiday.png");
    assert_eq!(offer.mime, "image/png");
    assert_eq!(offer.thumbnail, Some(thumb));

    // A name with a path in it, or a thumbnail over the bound: refused before any upload.
    for meta in [
        FileMeta {
            name: Some("../etc/passwd".into()),
            ..FileMeta::default()
        },
        FileMeta {
            thumbnail: Some(lattice_peer::Thumbnail {
                mime: "image/png".into(),
                width: 1,
                height: 1,
                bytes: vec![0; lattice_peer::content::MAX_THUMBNAIL_BYTES + 1],
            }),
            ..FileMeta::default()
        },
    ] {
        assert!(matches!(
            alice.send_file(&b, &src, meta).await,
            Err(PeerError::InvalidContent(_))
        ));
    }
    server.shutdown().await;
}

#[tokio::test]
async fn an_original_client_is_refused_before_anything_is_uploaded() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(&dir.path().join("server")).await;
    let url = server.url();
    let (alice, _events) = online(&url, "alice", dir.path()).await;
    let kem = KemKeyPair::generate(&mut rand_core::OsRng);
    let _old = RawClient::register_unverified(&url, "old", kem.public_key().as_bytes()).await;
    let src = dir.path().join("f.bin");
    std::fs::write(&src, b"hello").unwrap();
    let err = alice
        .send_file(&id("old"), &src, FileMeta::default())
        .await
        .unwrap_err();
    assert_eq!(err, PeerError::FilesUnsupported { peer: id("old") });
    assert!(alice.transfers().is_empty());
    // Nothing reached the blob store.
    let blobs = dir.path().join("server").join("blobs");
    let stored = std::fs::read_dir(&blobs).map_or(0, |d| d.count());
    assert_eq!(stored, 0);
    server.shutdown().await;
}

#[tokio::test]
async fn without_a_transfers_directory_files_are_off() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(&dir.path().join("server")).await;
    let url = server.url();
    let alice = peer(&url, "alice");
    alice.connect().await.unwrap();
    let src = dir.path().join("f.bin");
    std::fs::write(&src, b"hello").unwrap();
    assert_eq!(
        alice.send_file(&id("bob"), &src, FileMeta::default()).await,
        Err(PeerError::FilesDisabled)
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_file_over_the_servers_limits_fails_with_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let server = lattice_server::spawn(Config {
        data_dir: Some(dir.path().join("server")),
        blob_max_file: 1000,
        ..Config::for_tests()
    })
    .await
    .unwrap();
    let url = server.url();
    let (alice, mut alice_events) = online(&url, "alice", dir.path()).await;
    let (_bob, _bob_events) = online(&url, "bob", dir.path()).await;
    let src = dir.path().join("big.bin");
    std::fs::write(&src, pattern(5000, 1)).unwrap();
    let up = alice
        .send_file(&id("bob"), &src, FileMeta::default())
        .await
        .unwrap();
    let p = finished(&mut alice_events, &up).await;
    let TransferState::Failed(reason) = p.state else {
        panic!("expected a failure, got {:?}", p.state);
    };
    assert!(reason.contains("FILE_TOO_LARGE"), "{reason}");
    // Nothing to retry: the transfer keeps its journal for an explicit resume, and stays failed.
    assert!(matches!(
        alice.transfers()[0].state,
        TransferState::Failed(_)
    ));
    server.shutdown().await;

    // Over the sender's quota: the same, with the server's other error type.
    let server = lattice_server::spawn(Config {
        data_dir: Some(dir.path().join("server2")),
        blob_sender_quota: 1000,
        ..Config::for_tests()
    })
    .await
    .unwrap();
    let url = server.url();
    let (alice, mut alice_events) = online(&url, "alice", &dir.path().join("2")).await;
    let (_bob, _bob_events) = online(&url, "bob", &dir.path().join("2")).await;
    let up = alice
        .send_file(&id("bob"), &src, FileMeta::default())
        .await
        .unwrap();
    let p = finished(&mut alice_events, &up).await;
    let TransferState::Failed(reason) = p.state else {
        panic!("expected a failure, got {:?}", p.state);
    };
    assert!(reason.contains("SENDER_QUOTA_EXCEEDED"), "{reason}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_chunk_swapped_on_the_server_is_refused_and_nothing_lands_at_the_destination() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(&dir.path().join("server")).await;
    let url = server.url();
    let (alice, mut alice_events) = online(&url, "alice", dir.path()).await;
    let (bob, mut bob_events) = online(&url, "bob", dir.path()).await;
    let (b, a) = (id("bob"), id("alice"));

    // Two files of two chunks each.
    let mut offers = Vec::new();
    for seed in [1u8, 2] {
        let src = dir.path().join(format!("s{seed}"));
        std::fs::write(&src, pattern(FILE_CHUNK_BYTES + 10, seed)).unwrap();
        let up = alice
            .send_file(&b, &src, FileMeta::default())
            .await
            .unwrap();
        assert_eq!(
            finished(&mut alice_events, &up).await.state,
            TransferState::Completed
        );
        offers.push(next_file(&mut bob_events).await);
    }
    // The server (or anyone writing its disk) puts chunk 0 of file 2 in place of chunk 0 of
    // file 1: same length, another file.
    let (m1, o1, _) = &offers[0];
    let (_, o2, _) = &offers[1];
    let foreign =
        std::fs::read(find_chunk_file(&dir.path().join("server"), &o2.blob_id, 0)).unwrap();
    let stored = find_chunk_file(&dir.path().join("server"), &o1.blob_id, 0);
    assert_eq!(std::fs::read(&stored).unwrap().len(), foreign.len());
    std::fs::write(&stored, &foreign).unwrap();

    let dest = dir.path().join("d1");
    let down = bob.download_file(&a, m1, o1, &dest).unwrap();
    let p = finished(&mut bob_events, &down).await;
    assert_eq!(
        p.state,
        TransferState::Failed(
            PeerError::FileRejected(FileRejection::ChunkRefused { index: 0 }).to_string()
        )
    );
    assert!(!dest.exists());
    assert!(!part(&dest).exists());

    // A message whose digest does not match the chunks: refused at the end, nothing in place.
    let (m2, o2, _) = &offers[1];
    let mut wrong = o2.clone();
    wrong.digest = Some("ab".repeat(32));
    let dest = dir.path().join("d2");
    let down = bob.download_file(&a, m2, &wrong, &dest).unwrap();
    let p = finished(&mut bob_events, &down).await;
    assert_eq!(
        p.state,
        TransferState::Failed(PeerError::FileRejected(FileRejection::DigestMismatch).to_string())
    );
    assert!(!dest.exists());
    assert!(!part(&dest).exists());

    // The real offer of file 2 still downloads (asking again replaces the failed download).
    let dest = dir.path().join("d3");
    let down = bob.download_file(&a, m2, o2, &dest).unwrap();
    assert_eq!(
        finished(&mut bob_events, &down).await.state,
        TransferState::Completed
    );
    assert_eq!(
        std::fs::read(&dest).unwrap(),
        pattern(FILE_CHUNK_BYTES + 10, 2)
    );
    server.shutdown().await;
}

/// The server's file for chunk `index` of blob `blob` under `data` (`…/BLOB/INDEX`).
fn find_chunk_file(data: &Path, blob: &str, index: u64) -> PathBuf {
    fn walk(p: &Path, blob: &str, index: &str) -> Option<PathBuf> {
        for e in std::fs::read_dir(p).ok()?.flatten() {
            let path = e.path();
            if path.is_dir() {
                if let Some(found) = walk(&path, blob, index) {
                    return Some(found);
                }
            } else if path.file_name().is_some_and(|n| n == index)
                && path
                    .parent()
                    .and_then(Path::file_name)
                    .is_some_and(|n| n == blob)
            {
                return Some(path);
            }
        }
        None
    }
    walk(data, blob, &index.to_string()).unwrap_or_else(|| panic!("no chunk {index} of {blob}"))
}

#[tokio::test]
async fn pause_resume_and_cancel() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(&dir.path().join("server")).await;
    let url = server.url();
    let (alice, mut alice_events) = online(&url, "alice", dir.path()).await;
    let (bob, mut bob_events) = online(&url, "bob", dir.path()).await;
    let (b, a) = (id("bob"), id("alice"));
    let size = 12 * FILE_CHUNK_BYTES + 5;
    let src = dir.path().join("big");
    std::fs::write(&src, pattern(size, 9)).unwrap();

    // Paused as soon as it starts; resumed; completes.
    let up = alice
        .send_file(&b, &src, FileMeta::default())
        .await
        .unwrap();
    alice.pause_transfer(&up).unwrap();
    wait_for(&mut alice_events, |e| match e {
        PeerEvent::Transfer(p) if p.id == up && p.state == TransferState::Paused => Some(()),
        _ => None,
    })
    .await;
    let listed = alice.transfers();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].state, TransferState::Paused);
    alice.resume_transfer(&up).unwrap();
    assert_eq!(
        finished(&mut alice_events, &up).await.state,
        TransferState::Completed
    );
    let (m, offer, _) = next_file(&mut bob_events).await;

    // A download cancelled: no partial file, no destination, nothing listed as live.
    let dest = dir.path().join("got");
    let down = bob.download_file(&a, &m, &offer, &dest).unwrap();
    bob.cancel_transfer(&down).await.unwrap();
    assert_eq!(
        finished(&mut bob_events, &down).await.state,
        TransferState::Cancelled
    );
    assert!(!part(&dest).exists());
    assert!(!dest.exists());
    assert!(matches!(
        bob.resume_transfer(&down),
        Err(PeerError::UnknownTransfer(_))
    ));

    // An upload cancelled: its blob is deleted from the server.
    let up = alice
        .send_file(&b, &src, FileMeta::default())
        .await
        .unwrap();
    // Let it create its blob first.
    wait_for(&mut alice_events, |e| match e {
        PeerEvent::Transfer(p) if p.id == up && p.done > 0 => Some(()),
        _ => None,
    })
    .await;
    alice.cancel_transfer(&up).await.unwrap();
    assert_eq!(
        finished(&mut alice_events, &up).await.state,
        TransferState::Cancelled
    );
    // Only the completed file's blob remains.
    let mut blob_dirs = std::collections::BTreeSet::new();
    collect_blob_ids(&dir.path().join("server"), &mut blob_dirs);
    assert_eq!(
        blob_dirs.into_iter().collect::<Vec<_>>(),
        vec![offer.blob_id]
    );
    server.shutdown().await;
}

/// Every 32-hex-digit name (a blob id) under `p`.
fn collect_blob_ids(p: &Path, out: &mut std::collections::BTreeSet<String>) {
    for e in std::fs::read_dir(p).unwrap().flatten() {
        let path = e.path();
        if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
            let stem = name.split('.').next().unwrap_or_default();
            if stem.len() == 32 && stem.bytes().all(|b| b.is_ascii_hexdigit()) {
                out.insert(stem.to_owned());
            }
        }
        if path.is_dir() {
            collect_blob_ids(&path, out);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_is_retried_and_a_new_peer_resumes_from_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let server = support::server::spawn_server_at(0, Some(data.clone())).await;
    let port = server.local_addr().port();
    let url = server.url();
    let identity_path = dir.path().join("alice.identity");
    let alice_config = || {
        let (identity, _) = lattice_peer::identity_file::load_or_create(&identity_path).unwrap();
        config(&url, "alice", identity, dir.path())
    };
    let alice = MessagingPeer::new(alice_config()).unwrap();
    let mut alice_events = alice.events();
    alice.connect().await.unwrap();
    let (bob, mut bob_events) = online(&url, "bob", dir.path()).await;
    let (b, a) = (id("bob"), id("alice"));
    let size = 16 * FILE_CHUNK_BYTES + 3;

    // The server goes away mid-upload and comes back on the same port and data: the upload is
    // retried with backoff and completes.
    let src1 = dir.path().join("one");
    std::fs::write(&src1, pattern(size, 1)).unwrap();
    let up = alice
        .send_file(&b, &src1, FileMeta::default())
        .await
        .unwrap();
    started(&mut alice_events, &up).await;
    server.shutdown().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let server = support::server::spawn_server_at(port, Some(data.clone())).await;
    assert_eq!(
        finished(&mut alice_events, &up).await.state,
        TransferState::Completed
    );
    let (m1, o1, _) = next_file(&mut bob_events).await;

    // Alice goes away mid-upload (every handle dropped: the tasks stop where they are); a new
    // peer with the same identity and transfers directory resumes it once connected.
    let src2 = dir.path().join("two");
    std::fs::write(&src2, pattern(size, 2)).unwrap();
    let up = alice
        .send_file(&b, &src2, FileMeta::default())
        .await
        .unwrap();
    started(&mut alice_events, &up).await;
    drop(alice_events);
    alice.disconnect().await;
    drop(alice);
    let alice = MessagingPeer::new(alice_config()).unwrap();
    let listed = alice.transfers();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].id, up);
    assert_eq!(listed[0].state, TransferState::Queued);
    let mut alice_events = alice.events();
    alice.connect().await.unwrap();
    assert_eq!(
        finished(&mut alice_events, &up).await.state,
        TransferState::Completed
    );
    let (m2, o2, _) = next_file(&mut bob_events).await;

    for (m, o, seed) in [(m1, o1, 1u8), (m2, o2, 2)] {
        let dest = dir.path().join(format!("got-{seed}"));
        let down = bob.download_file(&a, &m, &o, &dest).unwrap();
        assert_eq!(
            finished(&mut bob_events, &down).await.state,
            TransferState::Completed
        );
        assert_eq!(std::fs::read(&dest).unwrap(), pattern(size, seed));
    }
    server.shutdown().await;
}

/// Waits until transfer `id` has moved some bytes.
async fn started(events: &mut EventStream, id: &TransferId) {
    wait_for(events, |e| match e {
        PeerEvent::Transfer(p) if &p.id == id && p.done > 0 => Some(()),
        _ => None,
    })
    .await;
}

/// The transfer state of `id` once it is `Paused` or final.
async fn settled(events: &mut EventStream, id: &TransferId) -> TransferState {
    wait_for(events, |e| match e {
        PeerEvent::Transfer(p)
            if &p.id == id
                && matches!(
                    p.state,
                    TransferState::Paused | TransferState::Completed | TransferState::Failed(_)
                ) =>
        {
            Some(p.state)
        }
        _ => None,
    })
    .await
}

/// The offer goes out as the upload starts, without the digest; the recipient downloads behind
/// the upload and completes only with the digest from the sender itself: a `file-digest` for
/// the same message from anyone else is ignored, nothing is at the destination before the real
/// one came, and a digest that arrived before the download started is kept for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_runs_behind_the_upload_and_completes_only_with_the_senders_digest() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(&dir.path().join("server")).await;
    let url = server.url();
    let (alice, mut alice_events) = online(&url, "alice", dir.path()).await;
    let (bob, mut bob_events) = online(&url, "bob", dir.path()).await;
    let (carol, _carol_events) = online(&url, "carol", dir.path()).await;
    let (a, b) = (id("alice"), id("bob"));

    let size = 16 * FILE_CHUNK_BYTES + 3;
    let bytes = pattern(size, 42);
    let src = dir.path().join("big.bin");
    std::fs::write(&src, &bytes).unwrap();
    let up = alice
        .send_file(&b, &src, FileMeta::default())
        .await
        .unwrap();
    let (message_id, offer, _) = next_file(&mut bob_events).await;
    assert_eq!(offer.digest, None);
    // Alice stops right after her offer (if her upload is not over already): her digest
    // cannot come before she goes on.
    let paused = alice.pause_transfer(&up).is_ok()
        && settled(&mut alice_events, &up).await == TransferState::Paused;

    // Carol, who has the message id, forges a digest for alice's file.
    carol
        .send_content(
            &b,
            &Content::FileDigest {
                target: message_id.clone(),
                digest: "ab".repeat(32),
            },
        )
        .await
        .unwrap();
    wait_for(&mut bob_events, |e| match e {
        PeerEvent::Update(u) if u.from == id("carol") => Some(()),
        _ => None,
    })
    .await;
    let dest = dir.path().join("big-got.bin");
    let down = bob.download_file(&a, &message_id, &offer, &dest).unwrap();
    if paused {
        // Bob fetches what is there and waits; nothing lands at the destination meanwhile.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!dest.exists(), "no file before the sender's digest");
        alice.resume_transfer(&up).unwrap();
    }
    assert_eq!(
        finished(&mut alice_events, &up).await.state,
        TransferState::Completed
    );
    let got = finished(&mut bob_events, &down).await;
    assert_eq!(
        got.state,
        TransferState::Completed,
        "carol's digest was ignored"
    );
    assert_eq!(std::fs::read(&dest).unwrap(), bytes);

    // A digest that arrives before the download starts is kept for it.
    let small = dir.path().join("small.bin");
    std::fs::write(&small, pattern(FILE_CHUNK_BYTES + 1, 9)).unwrap();
    let up = alice
        .send_file(&b, &small, FileMeta::default())
        .await
        .unwrap();
    let (message_id, offer, _) = next_file(&mut bob_events).await;
    assert_eq!(
        finished(&mut alice_events, &up).await.state,
        TransferState::Completed
    );
    wait_for(&mut bob_events, |e| match e {
        PeerEvent::Update(u) if u.from == a => Some(()),
        _ => None,
    })
    .await;
    let dest = dir.path().join("small-got.bin");
    let down = bob.download_file(&a, &message_id, &offer, &dest).unwrap();
    assert_eq!(
        finished(&mut bob_events, &down).await.state,
        TransferState::Completed
    );
    assert_eq!(
        std::fs::read(&dest).unwrap(),
        pattern(FILE_CHUNK_BYTES + 1, 9)
    );
    server.shutdown().await;
}

/// The next file offer in group `g`: its sender, message id and offer.
async fn next_group_file(
    events: &mut EventStream,
    g: &lattice_peer::GroupId,
) -> (lattice_protocol::ClientId, MessageId, FileOffer) {
    wait_for(events, |e| match e {
        PeerEvent::GroupMessage(m) if m.group == *g => match m.content {
            Content::File(offer) => Some((m.from, m.message_id, offer)),
            _ => None,
        },
        _ => None,
    })
    .await
}

/// A file sent into a three-member MLS group: the offer and the digest are group messages, both
/// other members download it byte for byte, and the first one's copy does not delete the blob
/// under the other (a group's blob is not one-recipient).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_sent_into_a_three_member_group_is_downloaded_by_every_member() {
    use support::person::Person;
    let dir = tempfile::tempdir().unwrap();
    let server = server(&dir.path().join("server")).await;
    let url = server.url();
    let online_mls = |p: &Person| {
        let mut c = config(&url, p.name, p.identity(), dir.path());
        c.mls_state = Some(p.state());
        async move {
            let peer = MessagingPeer::new(c).unwrap();
            let events = peer.events();
            peer.connect().await.unwrap();
            assert!(peer.publish_key_packages().await.unwrap() > 0);
            (peer, events)
        }
    };
    let (a, b, c) = (
        Person::new("alice"),
        Person::new("bob"),
        Person::new("carol"),
    );
    let (alice, mut alice_events) = online_mls(&a).await;
    let (bob, mut bob_events) = online_mls(&b).await;
    let (carol, mut carol_events) = online_mls(&c).await;
    let g = alice
        .create_group("photos", &[id("bob"), id("carol")])
        .await
        .unwrap();
    for events in [&mut bob_events, &mut carol_events] {
        wait_for(events, |e| match e {
            PeerEvent::GroupChanged {
                group,
                change: lattice_peer::GroupChange::Joined { .. },
                ..
            } if group == g => Some(()),
            _ => None,
        })
        .await;
    }

    let bytes = pattern(2 * FILE_CHUNK_BYTES + 99, 77);
    let src = dir.path().join("album.zip");
    std::fs::write(&src, &bytes).unwrap();
    let up = alice
        .send_group_file(&g, &src, FileMeta::default())
        .await
        .unwrap();
    let (from_b, mid_b, offer_b) = next_group_file(&mut bob_events, &g).await;
    let (from_c, mid_c, offer_c) = next_group_file(&mut carol_events, &g).await;
    assert_eq!((from_b.as_str(), from_c.as_str()), ("alice", "alice"));
    assert_eq!(offer_b, offer_c);
    assert_eq!(offer_b.name, "album.zip");
    assert_eq!(
        finished(&mut alice_events, &up).await.state,
        TransferState::Completed
    );

    let dest_b = dir.path().join("bob-album.zip");
    let down = bob
        .download_file(&from_b, &mid_b, &offer_b, &dest_b)
        .unwrap();
    assert_eq!(
        finished(&mut bob_events, &down).await.state,
        TransferState::Completed
    );
    assert_eq!(std::fs::read(&dest_b).unwrap(), bytes);
    assert!(
        dir.path()
            .join("server")
            .join("blobs")
            .join(&offer_b.blob_id)
            .exists(),
        "one member's copy does not delete the group's blob"
    );
    let dest_c = dir.path().join("carol-album.zip");
    let down = carol
        .download_file(&from_c, &mid_c, &offer_c, &dest_c)
        .unwrap();
    assert_eq!(
        finished(&mut carol_events, &down).await.state,
        TransferState::Completed
    );
    assert_eq!(std::fs::read(&dest_c).unwrap(), bytes);
    server.shutdown().await;
}
