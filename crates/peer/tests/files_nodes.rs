//! A file between real peers (the public `MessagingPeer` file API, real SQLite state) on two
//! nodes of a `lattice-server --redis` cluster on a real `redis-server`, sharing one blob
//! directory: alice, on node A, sends a file to bob, on node B; the chunks go up through A and
//! come down through B, and bob's copy matches byte for byte (the peer checks the digest).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../server/tests/support/redis_process.rs"]
mod redis_process;
mod support;

use std::path::Path;
use std::time::Duration;

use lattice_peer::defaults::FILE_CHUNK_BYTES;
use lattice_peer::{
    Content, EventStream, FileMeta, MessagingPeer, PeerEvent, TransferId, TransferProgress,
    TransferState,
};
use lattice_server::{Config, ServerHandle};
use support::*;

const TRANSFER_WAIT: Duration = Duration::from_secs(60);

async fn node(redis_url: &str, data: &Path, blobs: &Path) -> ServerHandle {
    let config = Config {
        redis: Some(lattice_server::cluster::RedisUrl::parse(redis_url).unwrap()),
        data_dir: Some(data.to_path_buf()),
        blob_dir: Some(blobs.to_path_buf()),
        ..Config::for_tests()
    };
    lattice_server::spawn(config).await.unwrap()
}

async fn online(url: &str, name: &str, dir: &Path) -> (MessagingPeer, EventStream) {
    let mut c = test_config(url, name, new_identity());
    c.transfers_dir = Some(dir.join(format!("{name}-transfers")));
    let p = MessagingPeer::new(c).unwrap();
    let events = p.events();
    p.connect().await.unwrap();
    (p, events)
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alice_on_node_a_sends_a_file_to_bob_on_node_b() {
    let redis = redis_process::RedisProcess::start().await;
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared-blobs");
    let a = node(&redis.url(), &dir.path().join("a"), &shared).await;
    let b = node(&redis.url(), &dir.path().join("b"), &shared).await;
    let (alice, mut alice_events) = online(&a.url(), "alice", dir.path()).await;
    let (bob, mut bob_events) = online(&b.url(), "bob", dir.path()).await;

    let size = 3 * FILE_CHUNK_BYTES + 4321;
    let bytes: Vec<u8> = (0..size)
        .map(|i| (i as u8).wrapping_mul(31) ^ ((i >> 8) as u8))
        .collect();
    let src = dir.path().join("photo.bin");
    std::fs::write(&src, &bytes).unwrap();
    let up = alice
        .send_file(&id("bob"), &src, FileMeta::default())
        .await
        .unwrap();
    let done = finished(&mut alice_events, &up).await;
    assert_eq!(done.state, TransferState::Completed);

    let (message_id, offer) = wait_for(&mut bob_events, |e| match e {
        PeerEvent::Message(m) => match m.content {
            Content::File(offer) => Some((m.message_id.unwrap(), offer)),
            _ => None,
        },
        _ => None,
    })
    .await;
    assert_eq!(offer.size, size);
    let dest = dir.path().join("received.bin");
    let down = bob
        .download_file(&id("alice"), &message_id, &offer, &dest)
        .unwrap();
    let got = finished(&mut bob_events, &down).await;
    assert_eq!(got.state, TransferState::Completed);
    assert_eq!(std::fs::read(&dest).unwrap(), bytes, "byte for byte");
    // bob, the one recipient, deleted the blob through node B once his copy was verified
    assert!(!shared.join(&offer.blob_id).exists());

    a.shutdown().await;
    b.shutdown().await;
}
