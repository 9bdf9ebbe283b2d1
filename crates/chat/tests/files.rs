//! Files through `lattice-chat`: two chat processes on pipes and a real `lattice-server` process
//! with a data dir. Alice `/send`s a file and is killed (SIGKILL) mid-upload; restarted, she
//! finishes it by herself, and the server's byte counter shows that no acknowledged chunk was
//! uploaded twice. Bob sees the file as a line with its name, size, type and the `/get` hint,
//! `/get`s it, is killed mid-download; restarted, he finishes it by himself, and the file is
//! byte for byte the one sent (the library checked every chunk and the digest).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)] // Shared with the server's crash tests, which use all of it.
#[path = "../../server/tests/support/server_process.rs"]
mod server_process;
mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use lattice_peer::defaults::FILE_CHUNK_BYTES;
use server_process::ServerProcess;
use support::chat::Chat;

/// Bound on waiting for a transfer state on disk.
const WAIT: Duration = Duration::from_secs(60);

/// Bytes a sealed chunk adds (nonce and tag).
const OVERHEAD: u64 = lattice_crypto::file_chunk::CHUNK_OVERHEAD as u64;

fn pattern(len: u64, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ ((i >> 8) as u8))
        .collect()
}

/// The lines of the acknowledgement logs in `dir` (0 if there are none).
fn acked(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "acks"))
                .map(|e| {
                    std::fs::read_to_string(e.path())
                        .unwrap_or_default()
                        .lines()
                        .count()
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Waits until at least `n` chunks are acknowledged in `dir`; returns how many.
async fn until_acked(dir: &Path, n: usize) -> usize {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let a = acked(dir);
        if a >= n {
            return a;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {a} chunks acknowledged in {}",
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// `lattice_blob_bytes_in_total` from the server's `/metrics`.
async fn bytes_in(url: &str) -> u64 {
    metric(url, "lattice_blob_bytes_in_total").await
}

/// One counter or gauge from the server's `/metrics`.
async fn metric(url: &str, name: &str) -> u64 {
    let http = url.replacen("ws://", "http://", 1);
    let text = reqwest::get(format!("{http}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

async fn start(url: &str, dir: &Path, id: &str) -> Chat {
    let mut chat = Chat::spawn(url, dir, id, &[]);
    chat.until("type /help for commands").await;
    chat
}

fn transfers_dir(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.transfers"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_survives_killing_the_sender_and_the_receiver_mid_transfer() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&tmp.path().join("data"), &[]).await;
    let url = server.url.clone();
    let dir = tmp.path();
    let mut bob = start(&url, dir, "bob").await;
    let mut alice = start(&url, dir, "alice").await;
    alice.type_line("/to bob").await;
    alice.until("talking to bob").await;

    let size = 24 * FILE_CHUNK_BYTES + 777;
    let chunks = size.div_ceil(FILE_CHUNK_BYTES);
    let sealed = size + chunks * OVERHEAD;
    let src = dir.join("movie.mp4");
    let bytes = pattern(size, 3);
    std::fs::write(&src, &bytes).unwrap();

    // Alice sends; killed once a few chunks are acknowledged, long before the end.
    alice.type_line(&format!("/send {}", src.display())).await;
    alice.until("-- sending").await;
    let at_kill = until_acked(&transfers_dir(dir, "alice"), 3).await;
    alice.kill9().await;
    assert!(
        (at_kill as u64) < chunks,
        "the upload finished before the kill ({at_kill} of {chunks} chunks)"
    );

    // Restarted, she finishes by herself.
    let mut alice = start(&url, dir, "alice").await;
    let sent = alice.until(") sent").await;
    assert!(sent.contains("movie.mp4"), "{sent}");
    // Every chunk was accepted exactly once: none acknowledged before the kill went again.
    assert_eq!(bytes_in(&url).await, sealed);

    // Bob sees the file with its name, size, type and how to get it.
    let line = bob.until("/get").await;
    assert!(line.contains("[alice ✓]"), "{line}");
    assert!(
        line.contains("movie.mp4") && line.contains("24.00 MiB") && line.contains("video/mp4"),
        "{line}"
    );
    let n: i64 = line
        .strip_prefix('#')
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number in {line}"));

    // Not a file: a readable refusal.
    bob.type_line("/get 999").await;
    bob.until("#999 is not a file message").await;

    // Bob gets it; killed mid-download: nothing at the destination yet.
    let dest = dir.join("saved.mp4");
    bob.type_line(&format!("/get {n} {}", dest.display())).await;
    bob.until("-- saving").await;
    let at_kill = until_acked(&transfers_dir(dir, "bob"), 3).await;
    bob.kill9().await;
    assert!(
        (at_kill as u64) < chunks,
        "the download finished before the kill"
    );
    assert!(!dest.exists());

    // Restarted, he finishes by himself: the file is the one sent, and only it.
    let mut bob = start(&url, dir, "bob").await;
    let saved = bob.until("-- saved movie.mp4 from alice").await;
    assert!(saved.contains("verified"), "{saved}");
    assert_eq!(std::fs::read(&dest).unwrap(), bytes);
    let mut part = dest.clone().into_os_string();
    part.push(".part");
    assert!(!PathBuf::from(part).exists());
    assert_eq!(acked(&transfers_dir(dir, "bob")), 0, "the journal is gone");

    // The history keeps the file: after the restart `/get` finds it again (and refuses to
    // overwrite what is there).
    bob.type_line(&format!("/get {n} {}", dest.display())).await;
    bob.until("exists: give another path").await;
    alice.quit().await;
    bob.quit().await;
}

/// The sender is killed (SIGKILL) the moment the server has created its blob, which may be
/// before it journalled the server's answer; restarted, it finds the same blob again (the
/// create is idempotent by the transfer id, journalled before it), so no orphan blob is left
/// and nothing is reserved twice. Once bob has his verified copy, the blob is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_killed_as_its_blob_is_created_leaves_no_orphan_and_the_blob_goes_once_received() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&tmp.path().join("data"), &[]).await;
    let url = server.url.clone();
    let dir = tmp.path();
    let mut bob = start(&url, dir, "bob").await;
    let mut alice = start(&url, dir, "alice").await;
    alice.type_line("/to bob").await;
    alice.until("talking to bob").await;

    let size = 6 * FILE_CHUNK_BYTES + 5;
    let src = dir.join("report.pdf");
    let bytes = pattern(size, 9);
    std::fs::write(&src, &bytes).unwrap();
    alice.type_line(&format!("/send {}", src.display())).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while metric(&url, "lattice_blob_transfers_created_total").await == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no blob created");
    }
    alice.kill9().await;

    let mut alice = start(&url, dir, "alice").await;
    let sent = alice.until(") sent").await;
    assert!(sent.contains("report.pdf"), "{sent}");
    assert_eq!(
        metric(&url, "lattice_blob_transfers_created_total").await,
        1,
        "the restarted sender used the blob it had created"
    );
    assert_eq!(metric(&url, "lattice_blob_transfers").await, 1, "no orphan");

    let line = bob.until("/get").await;
    let n: i64 = line
        .strip_prefix('#')
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number in {line}"));
    let dest = dir.join("saved.pdf");
    bob.type_line(&format!("/get {n} {}", dest.display())).await;
    bob.until("-- saved report.pdf from alice").await;
    assert_eq!(std::fs::read(&dest).unwrap(), bytes);
    assert_eq!(
        metric(&url, "lattice_blob_transfers").await,
        0,
        "the one recipient deleted the blob once its copy was verified"
    );
    assert_eq!(metric(&url, "lattice_blob_stored_bytes").await, 0);
    alice.quit().await;
    bob.quit().await;
}

/// Files in a group from the terminal: bob (`lattice-chat`) creates a group with alice and
/// carol (`lattice-peer` peers), `/send`s a file into it, and alice downloads it byte for byte;
/// alice sends one into the group, bob sees it numbered and `/get g1`s it, verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_file_goes_both_ways_from_the_terminal() {
    use lattice_peer::{Content, FileMeta, MessagingPeer, PeerConfig, PeerEvent, TransferState};
    use support::chat::next_event;
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&tmp.path().join("data"), &[]).await;
    let url = server.url.clone();
    let dir = tmp.path();
    let member = |name: &str| {
        let mut config = PeerConfig::new(
            url.clone(),
            lattice_protocol::ClientId::new(name).unwrap(),
            lattice_crypto::Identity::generate(&mut rand_core::OsRng),
        );
        config.mls_state = Some(dir.join(format!("{name}.mls")));
        config.transfers_dir = Some(dir.join(format!("{name}-peer.transfers")));
        async move {
            let p = MessagingPeer::new(config).unwrap();
            let events = p.events();
            p.connect().await.unwrap();
            p.publish_key_packages().await.unwrap();
            (p, events)
        }
    };
    let (alice, mut ae) = member("alice").await;
    let (_carol, _ce) = member("carol").await;
    let mut bob = start(&url, dir, "bob").await;
    bob.type_line("/group new pics alice,carol").await;
    bob.until("-- [pics] created with alice, carol").await;
    let g = next_event(&mut ae, |e| match e {
        PeerEvent::GroupChanged { group, .. } => Some(group),
        _ => None,
    })
    .await;

    let bytes = pattern(2 * FILE_CHUNK_BYTES + 5, 21);
    let src = dir.join("holiday.mp4");
    std::fs::write(&src, &bytes).unwrap();
    bob.type_line(&format!("/send {}", src.display())).await;
    bob.until("-- sending").await;
    let (from, mid, offer) = next_event(&mut ae, |e| match e {
        PeerEvent::GroupMessage(m) => match m.content {
            Content::File(offer) => Some((m.from, m.message_id, offer)),
            _ => None,
        },
        _ => None,
    })
    .await;
    assert_eq!(from.as_str(), "bob");
    let dest = dir.join("alice-holiday.mp4");
    let down = alice.download_file(&from, &mid, &offer, &dest).unwrap();
    let state = next_event(&mut ae, |e| match e {
        PeerEvent::Transfer(p) if p.id == down && p.state.is_final() => Some(p.state),
        _ => None,
    })
    .await;
    assert_eq!(state, TransferState::Completed);
    assert_eq!(std::fs::read(&dest).unwrap(), bytes);
    bob.until("sent to the group").await;

    let notes = pattern(FILE_CHUNK_BYTES / 2, 5);
    let src = dir.join("notes.txt");
    std::fs::write(&src, &notes).unwrap();
    alice
        .send_group_file(&g, &src, FileMeta::default())
        .await
        .unwrap();
    let line = bob.until("/get g1").await;
    assert!(
        line.contains("[pics] alice") && line.contains("notes.txt"),
        "{line}"
    );
    let saved = dir.join("bob-notes.txt");
    bob.type_line(&format!("/get g1 {}", saved.display())).await;
    bob.until("-- saved notes.txt from alice").await;
    assert_eq!(std::fs::read(&saved).unwrap(), notes);
    bob.type_line("/get g9").await;
    bob.until("g9 is not a group file").await;
    bob.quit().await;
}
