//! Backups through the storage layer's public functions on real SQLite files: a round trip
//! restores the identity, settings, contacts, pinned keys (with a pending key change), replay
//! marks, drafts, outbox and history on a fresh profile; every kind of bad file — wrong
//! passphrase, changed, cut, reordered or extended chunks, foreign magic, newer version,
//! oversized or greedy header — is refused and changes nothing; a profile in use is refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use lattice_crypto::IdentityKeyPair;
use lattice_desktop::storage::backup::{
    self, BackupError, KdfParams, Passphrase, CHUNK_BYTES, HEADER_LEN,
};
use lattice_desktop::storage::content::Target;
use lattice_desktop::storage::export::{export_conversation, ExportFormat};
use lattice_desktop::storage::files::{NewAttachment, Thumbnail, TransferState};
use lattice_desktop::storage::settings::{ServerMode, Settings};
use lattice_desktop::storage::{self, Db, MessageStatus, DB_FILE, IDENTITY_FILE};
use lattice_peer::content::Content;
use lattice_protocol::{ClientId, MessageId};

/// Cheap Argon2 parameters so the tests stay quick; the real ones are measured in
/// `measure_backup_and_restore_of_100_000_messages`.
const FAST: KdfParams = KdfParams {
    memory_kib: 256,
    iterations: 1,
    lanes: 1,
};
const PASS: &str = "correct horse battery staple";
const SEALED_CHUNK: usize = CHUNK_BYTES as usize + 16;

fn c(id: &str) -> ClientId {
    ClientId::try_from(id).unwrap()
}

struct Profile {
    dir: tempfile::TempDir,
    db: Arc<Db>,
}

impl Profile {
    fn fresh() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Db::open(&dir.path().join(DB_FILE)).unwrap());
        Self { dir, db }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A profile in use: an identity, two contacts with pinned keys (one verified, one with a
    /// pending key change), an unsigned contact, `messages` messages, a draft, a replay mark
    /// and a message waiting in the outbox.
    fn in_use(messages: usize) -> Self {
        let p = Self::fresh();
        storage::load_identity(p.path(), true).unwrap();
        let db = &p.db;
        let bob_key = IdentityKeyPair::from_secret_bytes(&[7; 32]).public_key();
        let carol_key = IdentityKeyPair::from_secret_bytes(&[9; 32]).public_key();
        db.pin_key(&c("bob"), bob_key.as_bytes(), 1).unwrap();
        db.set_user_verified(&c("bob"), true).unwrap();
        db.pin_key(&c("carol"), carol_key.as_bytes(), 2).unwrap();
        db.set_key_change(&c("carol"), "12345 67890 12345 67890")
            .unwrap();
        for i in 0..messages {
            let peer = if i % 3 == 0 { "carol" } else { "bob" };
            let body = format!("message {i} <b>&</b> שלום \u{1F600}\nline two");
            if i % 2 == 0 {
                db.insert_incoming(
                    &format!("in-{i}"),
                    &c(peer),
                    &body,
                    i as i64,
                    true,
                    i + 5 < messages,
                )
                .unwrap();
            } else {
                let id = format!("out-{i}");
                let wire = MessageId::new(format!("wire-{i}")).unwrap();
                db.enqueue_outgoing(&id, &wire, &c(peer), &body, i as i64)
                    .unwrap();
                db.advance_status(&id, MessageStatus::Delivered).unwrap();
            }
        }
        db.insert_incoming(
            "old-1",
            &c("dave"),
            "from an original client",
            5,
            false,
            false,
        )
        .unwrap();
        db.enqueue_outgoing(
            "waiting",
            &MessageId::new("wire-waiting").unwrap(),
            &c("bob"),
            "typed offline",
            99,
        )
        .unwrap();
        db.set_draft(&c("carol"), "half a thought", 100).unwrap();
        db.raise_replay_mark(&c("bob"), 4242).unwrap();
        // The content layer's state: an edit (with its earlier version), a reaction, a
        // delete and a queued edit of ours.
        if messages > 4 {
            db.apply_edit(&c("bob"), false, "in-2", "bob's new words", 1_000)
                .unwrap()
                .unwrap();
            db.set_reaction(
                Target {
                    peer: &c("bob"),
                    outgoing: false,
                    wire_id: "in-2",
                },
                &c("alice"),
                "\u{1F44D}",
                true,
                1_001,
            )
            .unwrap()
            .unwrap();
            db.apply_delete(&c("bob"), false, "in-4").unwrap().unwrap();
            db.enqueue_change(
                "edit-1",
                &MessageId::new("wire-edit-1").unwrap(),
                &c("bob"),
                &Content::Edit {
                    target: MessageId::new("wire-1").unwrap(),
                    text: "fixed".into(),
                },
                1_002,
            )
            .unwrap();
            // Files (schema 7): one received and not downloaded, with a preview; one sent and
            // finished.
            let photo = db
                .insert_incoming("file-in", &c("bob"), "beach <1>.jpg", 1_003, true, true)
                .unwrap()
                .unwrap();
            db.attach_file(
                photo.seq,
                &NewAttachment {
                    name: "beach <1>.jpg".into(),
                    size: 2_000_000,
                    mime: "image/jpeg".into(),
                    thumbnail: Some(Thumbnail {
                        mime: "image/jpeg".into(),
                        width: 320,
                        height: 200,
                        bytes: vec![0xff, 0xd8, 1, 2, 3, 0xff, 0xd9],
                    }),
                    offer: Some("{\"offer\":1}".into()),
                    local_path: None,
                    transfer_id: None,
                    state: TransferState::Offered,
                },
            )
            .unwrap();
            let sent = db
                .enqueue_outgoing(
                    "file-out",
                    &MessageId::new("wire-file-out").unwrap(),
                    &c("bob"),
                    "report.pdf",
                    1_004,
                )
                .unwrap();
            db.attach_file(
                sent.seq,
                &NewAttachment {
                    name: "report.pdf".into(),
                    size: 10_000,
                    mime: "application/pdf".into(),
                    thumbnail: None,
                    offer: None,
                    local_path: Some("/home/alice/report.pdf".into()),
                    transfer_id: Some("t-sent".into()),
                    state: TransferState::Queued,
                },
            )
            .unwrap();
            db.update_transfer("t-sent", TransferState::Completed, 10_000, None)
                .unwrap()
                .unwrap();
        }
        p
    }

    fn settings() -> Settings {
        Settings {
            client_id: Some(c("alice")),
            server_mode: ServerMode::Connect,
            server_url: "ws://192.0.2.1:9000".into(),
            ..Settings::default()
        }
    }

    fn export(&self, file: &Path) -> backup::BackupCounts {
        backup::export(
            &self.db,
            self.path(),
            &Self::settings(),
            file,
            &Passphrase::for_backup(PASS.into()).unwrap(),
            FAST,
            &mut rand_core::OsRng,
        )
        .unwrap()
    }

    fn restore(&self, file: &Path, pass: &str) -> Result<backup::Restored, BackupError> {
        backup::restore(
            &self.db,
            self.path(),
            file,
            &Passphrase::for_restore(pass.into()).unwrap(),
        )
    }

    /// Everything a person would see or the app relies on, to compare two profiles.
    fn snapshot(&self) -> String {
        let db = &self.db;
        let mut out = format!("{:?}\n", db.peers().unwrap());
        for peer in db.peers().unwrap() {
            let mut after = 0;
            loop {
                let page = db.page_after(&peer.peer_id, after, 500).unwrap();
                let Some(last) = page.last() else { break };
                after = last.seq;
                out.push_str(&format!("{page:?}\n"));
                for m in &page {
                    out.push_str(&format!("{:?}", db.versions(&peer.peer_id, m.seq).unwrap()));
                }
            }
            out.push_str(&format!(
                "draft {:?} mark {:?}\n",
                db.draft(&peer.peer_id).unwrap(),
                db.replay_mark(&peer.peer_id).unwrap()
            ));
        }
        out.push_str(&format!(
            "{:?} {}\n",
            db.outbox().unwrap(),
            db.total_unread().unwrap()
        ));
        out
    }

    fn public_key(&self) -> Option<Vec<u8>> {
        storage::load_identity(self.path(), false)
            .unwrap()
            .map(|(id, _)| id.identity_public_key().as_bytes().to_vec())
    }

    /// The profile is exactly as fresh as before: no identity, nothing in the database, and no
    /// file other than the database's.
    fn assert_untouched(&self) {
        assert!(backup::is_fresh(&self.db, self.path()).unwrap());
        let mut names: Vec<String> = std::fs::read_dir(self.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with(DB_FILE))
            .collect();
        names.sort();
        assert!(names.is_empty(), "left behind: {names:?}");
        assert_eq!(self.db.peers().unwrap().len(), 0);
    }
}

fn backup_of(profile: &Profile) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("alice.lattice-backup");
    profile.export(&file);
    (dir, file)
}

#[test]
fn a_restore_on_a_fresh_profile_brings_back_identity_keys_settings_and_10_000_messages() {
    let source = Profile::in_use(10_000);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("alice.lattice-backup");
    let counts = source.export(&file);
    assert_eq!(counts.messages, 10_004);
    assert_eq!(counts.contacts, 3);
    assert_eq!(counts.pinned_keys, 2);

    // Nothing readable in the file: no text, no id, no key.
    let bytes = std::fs::read(&file).unwrap();
    for needle in [&b"message 1"[..], b"carol", b"half a thought", b"LTID"] {
        assert!(!bytes.windows(needle.len()).any(|w| w == needle));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    let target = Profile::fresh();
    let restored = target.restore(&file, PASS).unwrap();
    assert_eq!(restored.counts, counts);
    assert_eq!(restored.settings, Profile::settings());
    assert_eq!(
        restored.identity.identity_public_key().as_bytes().to_vec(),
        source.public_key().unwrap()
    );
    assert_eq!(
        target.public_key(),
        source.public_key(),
        "the identity file is in place"
    );
    assert_eq!(target.snapshot(), source.snapshot());
    let carol = target.db.peer(&c("carol")).unwrap().unwrap();
    assert_eq!(
        carol.pending_fingerprint.as_deref(),
        Some("12345 67890 12345 67890")
    );
    assert!(target.db.peer(&c("bob")).unwrap().unwrap().user_verified);
    // The restored history is searchable (the index is kept by triggers).
    let query = lattice_desktop::storage::search::SearchQuery::parse("9999").unwrap();
    assert_eq!(target.db.search(&query, None, 10).unwrap().0.len(), 1);
    // And the restored database keeps working: new messages go after the old ones.
    let next = target
        .db
        .insert_incoming("new", &c("bob"), "after the restore", 20_000, true, false)
        .unwrap()
        .unwrap();
    assert!(next.seq > 10_004);
    // Files come back with their preview and offer (their bytes were never in the backup),
    // and are found by name.
    let query = lattice_desktop::storage::search::SearchQuery::parse("beach").unwrap();
    let (hits, _) = target.db.search(&query, None, 10).unwrap();
    let photo = target.db.attachment(hits[0].seq).unwrap().unwrap();
    assert_eq!(photo.state, TransferState::Offered);
    assert_eq!(photo.thumbnail.unwrap().width, 320);
    assert_eq!(
        target.db.file_offer(hits[0].seq).unwrap().as_deref(),
        Some("{\"offer\":1}")
    );
}

#[test]
fn a_transfer_under_way_when_the_backup_was_made_is_failed_after_the_restore() {
    let source = Profile::in_use(10);
    let m = source
        .db
        .insert_incoming("file-2", &c("bob"), "movie.mkv", 2_000, true, true)
        .unwrap()
        .unwrap();
    source
        .db
        .attach_file(
            m.seq,
            &NewAttachment {
                name: "movie.mkv".into(),
                size: 1 << 30,
                mime: "video/x-matroska".into(),
                thumbnail: None,
                offer: Some("{}".into()),
                local_path: Some("/data/files/movie.mkv".into()),
                transfer_id: Some("t-running".into()),
                state: TransferState::Queued,
            },
        )
        .unwrap();
    source
        .db
        .update_transfer("t-running", TransferState::Running, 1 << 20, None)
        .unwrap();
    let (_dir, file) = backup_of(&source);
    let target = Profile::fresh();
    target.restore(&file, PASS).unwrap();
    let movie = target.db.attachment(m.seq).unwrap().unwrap();
    assert_eq!(movie.state, TransferState::Failed);
    assert_eq!(movie.transfer_id, None);
    assert_eq!(movie.done, 1 << 20);
    assert_eq!(
        movie.error.as_deref(),
        Some(lattice_desktop::storage::files::INTERRUPTED_BY_RESTORE)
    );
}

#[test]
fn group_history_is_restored_readable_and_left_with_what_waited_failed() {
    use lattice_desktop::storage::groups::{GroupLineKind, NewGroupLine};
    let source = Profile::in_use(5);
    let (alice, bob) = (c("alice"), c("bob"));
    source.db.ensure_group("ab01", "Climbing", 1_000).unwrap();
    let line = |kind, sender, id, outgoing, body, status| NewGroupLine {
        group_id: "ab01",
        kind,
        sender,
        message_id: id,
        outgoing,
        body,
        at: 1_500,
        status,
    };
    for l in [
        line(
            GroupLineKind::System,
            Some(&bob),
            "s1",
            false,
            "bob added you to the group",
            MessageStatus::Received,
        ),
        line(
            GroupLineKind::Message,
            Some(&bob),
            "b1",
            false,
            "hello group",
            MessageStatus::Received,
        ),
        line(
            GroupLineKind::Message,
            Some(&alice),
            "a1",
            true,
            "sent before",
            MessageStatus::Pending,
        ),
        line(
            GroupLineKind::Message,
            Some(&alice),
            "a2",
            true,
            "still waiting",
            MessageStatus::Pending,
        ),
    ] {
        source.db.insert_group_line(&l).unwrap().unwrap();
    }
    let sent = source.db.group_page("ab01", None, 10).unwrap()[2].seq;
    source
        .db
        .advance_group_status(sent, MessageStatus::Sent)
        .unwrap();
    let (_dir, file) = backup_of(&source);

    let target = Profile::fresh();
    target.restore(&file, PASS).unwrap();
    let groups = target.db.groups().unwrap();
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0].name, "Climbing");
    assert!(
        groups[0].left,
        "the restored profile is in no group: its keys were not backed up"
    );
    assert_eq!(groups[0].unread, 1);
    let lines = target.db.group_page("ab01", None, 10).unwrap();
    let shown: Vec<(&str, &str, MessageStatus)> = lines
        .iter()
        .map(|l| (l.sender.as_str(), l.body.as_str(), l.status))
        .collect();
    assert_eq!(
        shown,
        [
            ("bob", "bob added you to the group", MessageStatus::Received),
            ("bob", "hello group", MessageStatus::Received),
            ("alice", "sent before", MessageStatus::Sent),
            ("alice", "still waiting", MessageStatus::Failed),
        ]
    );
    assert_eq!(lines[0].kind, GroupLineKind::System);
    assert!(
        target.db.group_outbox(10).unwrap().is_empty(),
        "nothing is sent from a left group"
    );
}

#[test]
fn a_wrong_passphrase_is_a_clear_error_and_changes_nothing() {
    let (_dir, file) = backup_of(&Profile::in_use(50));
    let target = Profile::fresh();
    let err = target
        .restore(&file, "correct horse battery stapler")
        .unwrap_err();
    assert!(matches!(err, BackupError::WrongPassphrase), "{err:?}");
    assert!(err.to_string().contains("Wrong passphrase"), "{err}");
    target.assert_untouched();
    // The right one still works afterwards.
    target.restore(&file, PASS).unwrap();
}

/// Restores `bytes` (a changed backup) onto a fresh profile: it must fail and change nothing.
fn refused(bytes: &[u8]) -> BackupError {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("changed.lattice-backup");
    std::fs::write(&file, bytes).unwrap();
    let target = Profile::fresh();
    let err = target.restore(&file, PASS).unwrap_err();
    target.assert_untouched();
    err
}

#[test]
fn a_changed_cut_reordered_or_extended_file_is_refused_and_changes_nothing() {
    let (_dir, file) = backup_of(&Profile::in_use(3_000));
    let good = std::fs::read(&file).unwrap();
    let chunks = (good.len() - HEADER_LEN).div_ceil(SEALED_CHUNK);
    assert!(chunks >= 4, "the history spans several chunks ({chunks})");
    let chunk_at = |i: usize| HEADER_LEN + i * SEALED_CHUNK;

    // One bit changed inside the second chunk, and in the last tag.
    let mut flipped = good.clone();
    flipped[chunk_at(1) + 100] ^= 1;
    assert!(matches!(
        refused(&flipped),
        BackupError::Damaged { chunk: 1 }
    ));
    let mut flipped = good.clone();
    *flipped.last_mut().unwrap() ^= 0x80;
    assert!(matches!(refused(&flipped), BackupError::Damaged { .. }));

    // Cut: right after the header, on a chunk boundary (the cut-off chunk is not marked last),
    // inside a chunk, and one byte short.
    for cut in [HEADER_LEN, chunk_at(2), chunk_at(2) + 500, good.len() - 1] {
        let err = refused(&good[..cut]);
        assert!(
            matches!(err, BackupError::Damaged { .. }),
            "cut at {cut}: {err:?}"
        );
        assert!(err.to_string().contains("damaged or incomplete"), "{err}");
    }
    // Cut inside the header.
    assert!(matches!(
        refused(&good[..HEADER_LEN - 3]),
        BackupError::BadHeader(_)
    ));

    // Two chunks swapped; a chunk repeated in place of another.
    let mut swapped = good[..chunk_at(1)].to_vec();
    swapped.extend_from_slice(&good[chunk_at(2)..chunk_at(3)]);
    swapped.extend_from_slice(&good[chunk_at(1)..chunk_at(2)]);
    swapped.extend_from_slice(&good[chunk_at(3)..]);
    assert!(matches!(
        refused(&swapped),
        BackupError::Damaged { chunk: 1 }
    ));
    let mut repeated = good[..chunk_at(2)].to_vec();
    repeated.extend_from_slice(&good[chunk_at(1)..chunk_at(2)]);
    repeated.extend_from_slice(&good[chunk_at(3)..]);
    assert!(matches!(
        refused(&repeated),
        BackupError::Damaged { chunk: 2 }
    ));

    // Bytes appended after the last chunk: it is no longer the last.
    let mut extended = good.clone();
    extended.extend_from_slice(&[0u8; 40]);
    assert!(matches!(refused(&extended), BackupError::Damaged { .. }));

    // The untouched file still restores.
    Profile::fresh().restore(&file, PASS).unwrap();
}

#[test]
fn a_foreign_newer_or_greedy_header_is_refused_before_any_key_is_derived() {
    let (_dir, file) = backup_of(&Profile::in_use(10));
    let good = std::fs::read(&file).unwrap();

    let mut foreign = good.clone();
    foreign[..8].copy_from_slice(b"SQLite f");
    assert!(matches!(refused(&foreign), BackupError::NotABackup));
    assert!(matches!(refused(b""), BackupError::NotABackup));
    assert!(matches!(refused(b"LATT"), BackupError::NotABackup));

    let mut newer = good.clone();
    newer[8..10].copy_from_slice(&2u16.to_be_bytes());
    let err = refused(&newer);
    assert!(matches!(err, BackupError::UnsupportedVersion(2)), "{err:?}");

    let mut oversized = good.clone();
    oversized[10..12].copy_from_slice(&60_000u16.to_be_bytes());
    let err = refused(&oversized);
    assert!(
        matches!(&err, BackupError::BadHeader(m) if m.contains("60000")),
        "{err:?}"
    );

    // 4 TiB of Argon2 memory, or a billion passes: refused, not attempted.
    let mut greedy = good.clone();
    greedy[13..17].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(refused(&greedy), BackupError::BadHeader(_)));
    let mut slow = good.clone();
    slow[17..21].copy_from_slice(&1_000_000_000u32.to_be_bytes());
    assert!(matches!(refused(&slow), BackupError::BadHeader(_)));
    // Chunks of 4 GiB.
    let mut huge_chunks = good.clone();
    huge_chunks[HEADER_LEN - 11..HEADER_LEN - 7].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(refused(&huge_chunks), BackupError::BadHeader(_)));

    // Parameters changed within bounds: authenticated as the chunks' associated data (and a
    // different key), so the first chunk does not open.
    let mut weaker = good.clone();
    weaker[17..21].copy_from_slice(&2u32.to_be_bytes());
    assert!(matches!(refused(&weaker), BackupError::WrongPassphrase));
    let mut other_salt = good.clone();
    other_salt[26] ^= 1;
    assert!(matches!(refused(&other_salt), BackupError::WrongPassphrase));
}

/// Group files come back as 1:1 files do: their records, names, previews and offers (what a
/// download needs, as for 1:1 files), each on its own line even where a 1:1 message has the
/// same `seq`; a transfer under way fails with the reason.
#[test]
fn group_files_are_restored_with_their_records_and_names() {
    use lattice_desktop::storage::files::{FileHome, INTERRUPTED_BY_RESTORE};
    use lattice_desktop::storage::groups::{GroupLineKind, NewGroupLine};
    let source = Profile::in_use(3);
    let carol = c("carol");
    source.db.ensure_group("ab01", "Climbing", 1_000).unwrap();
    let line = |id, body| NewGroupLine {
        group_id: "ab01",
        kind: GroupLineKind::Message,
        sender: Some(&carol),
        message_id: id,
        outgoing: false,
        body,
        at: 1_500,
        status: MessageStatus::Received,
    };
    let file = |name: &str, offer: &str, thumbnail| NewAttachment {
        name: name.into(),
        size: 4_096,
        mime: "image/png".into(),
        thumbnail,
        offer: Some(offer.into()),
        local_path: None,
        transfer_id: None,
        state: TransferState::Offered,
    };
    let topo = source
        .db
        .insert_group_file(
            &line("g1", "topo.png"),
            &file(
                "topo.png",
                "{\"group\":1}",
                Some(Thumbnail {
                    mime: "image/png".into(),
                    width: 64,
                    height: 48,
                    bytes: vec![0x89, 0x50, 0x4e, 0x47],
                }),
            ),
        )
        .unwrap()
        .unwrap();
    let route = source
        .db
        .insert_group_file(&line("g2", "route.png"), &file("route.png", "{}", None))
        .unwrap()
        .unwrap();
    source
        .db
        .start_transfer_in(
            FileHome::Group,
            route.seq,
            "t-route",
            "/data/files/route.png",
        )
        .unwrap();
    source
        .db
        .update_transfer("t-route", TransferState::Running, 1_024, None)
        .unwrap();
    // A 1:1 file on the message with the same `seq` as the first group file (each history
    // counts from 1, and the profile's first messages came before the group).
    let twin_seq = topo.seq;
    assert!(source
        .db
        .page(&c("carol"), None, 100)
        .unwrap()
        .iter()
        .any(|m| m.seq == twin_seq));
    source
        .db
        .attach_file(twin_seq, &file("bob.png", "{\"chat\":1}", None))
        .unwrap();
    let (_dir, backup_file) = backup_of(&source);

    let target = Profile::fresh();
    target.restore(&backup_file, PASS).unwrap();
    let lines = target.db.group_page("ab01", None, 10).unwrap();
    let names: Vec<&str> = lines
        .iter()
        .map(|l| l.attachment.as_ref().unwrap().name.as_str())
        .collect();
    assert_eq!(names, ["topo.png", "route.png"]);
    let restored = target
        .db
        .attachment_in(FileHome::Group, topo.seq)
        .unwrap()
        .unwrap();
    assert_eq!(restored.state, TransferState::Offered);
    assert_eq!(restored.thumbnail.unwrap().width, 64);
    assert_eq!(
        target
            .db
            .file_offer_in(FileHome::Group, topo.seq)
            .unwrap()
            .as_deref(),
        Some("{\"group\":1}")
    );
    let interrupted = target
        .db
        .attachment_in(FileHome::Group, route.seq)
        .unwrap()
        .unwrap();
    assert_eq!(interrupted.state, TransferState::Failed);
    assert_eq!(interrupted.transfer_id, None);
    assert_eq!(interrupted.done, 1_024);
    assert_eq!(interrupted.error.as_deref(), Some(INTERRUPTED_BY_RESTORE));
    // The 1:1 file with the same `seq` is still the 1:1 message's.
    assert_eq!(
        target.db.attachment(twin_seq).unwrap().unwrap().name,
        "bob.png"
    );
    assert_eq!(
        target.db.file_offer(twin_seq).unwrap().as_deref(),
        Some("{\"chat\":1}")
    );
}

#[test]
fn a_profile_in_use_is_never_restored_over() {
    let (_dir, file) = backup_of(&Profile::in_use(10));

    // Someone else's profile, with an identity and history.
    let other = Profile::in_use(3);
    let before = (other.snapshot(), other.public_key());
    let err = other.restore(&file, PASS).unwrap_err();
    assert!(matches!(err, BackupError::NotFresh), "{err:?}");
    assert!(err.to_string().contains("fresh profile"), "{err}");
    assert_eq!((other.snapshot(), other.public_key()), before);

    // An identity alone (first run done, nothing said yet) is also in use.
    let new_identity = Profile::fresh();
    storage::load_identity(new_identity.path(), true).unwrap();
    let key = new_identity.public_key();
    assert!(matches!(
        new_identity.restore(&file, PASS),
        Err(BackupError::NotFresh)
    ));
    assert_eq!(new_identity.public_key(), key);
    assert!(!new_identity
        .path()
        .join(format!("{IDENTITY_FILE}.partial"))
        .exists());
}

#[test]
fn a_backup_never_replaces_a_file_and_needs_a_real_passphrase() {
    let source = Profile::in_use(3);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("exists");
    std::fs::write(&file, b"keep me").unwrap();
    let err = backup::export(
        &source.db,
        source.path(),
        &Profile::settings(),
        &file,
        &Passphrase::for_backup(PASS.into()).unwrap(),
        FAST,
        &mut rand_core::OsRng,
    )
    .unwrap_err();
    assert!(matches!(err, BackupError::Exists(_)), "{err:?}");
    assert!(err.to_string().contains("already a file"), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");

    let short = Passphrase::for_backup("short pass".into()).unwrap_err();
    assert!(short.to_string().contains("at least 12"), "{short}");
    assert!(Passphrase::for_backup("x".repeat(2000)).is_err());
    assert!(Passphrase::for_restore(String::new()).is_err());
    // Never printed.
    let pass = Passphrase::for_backup(PASS.into()).unwrap();
    assert!(!format!("{pass:?}").contains("horse"));

    // No identity yet: nothing to back up, and no file left.
    let empty = Profile::fresh();
    let target = dir.path().join("empty.lattice-backup");
    assert!(backup::export(
        &empty.db,
        empty.path(),
        &Settings::default(),
        &target,
        &pass,
        FAST,
        &mut rand_core::OsRng
    )
    .is_err());
    assert!(!target.exists());
}

#[test]
fn one_conversation_exports_as_escaped_html_and_as_json() {
    let source = Profile::in_use(1_200);
    source
        .db
        .insert_incoming(
            "xss",
            &c("bob"),
            "<script>alert('x')</script> \"q\" & مرحبا",
            2_000,
            true,
            true,
        )
        .unwrap();
    let dir = tempfile::tempdir().unwrap();

    let html_path = dir.path().join("bob.html");
    let n = export_conversation(
        &source.db,
        "alice",
        &c("bob"),
        ExportFormat::Html,
        &html_path,
        0,
    )
    .unwrap();
    assert!(n > 800, "{n}");
    let html = std::fs::read_to_string(&html_path).unwrap();
    assert!(!html.contains("<script>"));
    assert!(
        html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &quot;q&quot; &amp; مرحبا")
    );
    assert_eq!(html.matches("dir=\"auto\">").count() as u64, 2 * n);
    assert!(
        html.contains("default-src 'none'"),
        "self-contained: nothing loads"
    );
    assert!(html.trim_end().ends_with("</html>"));

    let json_path = dir.path().join("bob.json");
    let m = export_conversation(
        &source.db,
        "alice",
        &c("bob"),
        ExportFormat::Json,
        &json_path,
        0,
    )
    .unwrap();
    assert_eq!(m, n);
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    assert_eq!(json["format"], "lattice-conversation");
    assert_eq!(json["peerId"], "bob");
    let messages = json["messages"].as_array().unwrap();
    assert_eq!(messages.len() as u64, n);
    assert_eq!(
        messages.last().unwrap()["body"],
        "<script>alert('x')</script> \"q\" & مرحبا"
    );
    assert_eq!(messages[0]["status"], "delivered");
    let file = messages
        .iter()
        .find(|m| m["body"] == "beach <1>.jpg")
        .unwrap();
    assert_eq!(file["file"]["size"], 2_000_000);
    assert_eq!(file["file"]["mime"], "image/jpeg");
    assert!(html.contains(
        "File: beach &lt;1&gt;.jpg (2000000 bytes, image/jpeg); the file itself is not part of the export"
    ));

    // Never over an existing file.
    assert!(export_conversation(
        &source.db,
        "alice",
        &c("bob"),
        ExportFormat::Json,
        &json_path,
        0
    )
    .is_err());
}

/// `cargo test --release -p lattice-desktop --test backup -- --ignored --nocapture`
#[test]
#[ignore = "a measurement: run in release"]
fn measure_backup_and_restore_of_100_000_messages() {
    let started = std::time::Instant::now();
    // The profile of `in_use`, with 100,000 more messages written in one transaction (one at a
    // time through `Db` takes minutes in a debug build).
    let source = Profile::in_use(0);
    {
        let mut conn = rusqlite::Connection::open(source.path().join(DB_FILE)).unwrap();
        let tx = conn.transaction().unwrap();
        let mut insert = tx
            .prepare(
                "INSERT INTO messages(message_id, peer_id, outgoing, body, at, status, authenticated)
                 VALUES (?1, ?2, ?3, ?4, ?5, 2, 1)",
            )
            .unwrap();
        for i in 0..100_000i64 {
            let peer = ["bob", "carol", "dave"][(i % 3) as usize];
            insert
                .execute(rusqlite::params![
                    format!("bulk-{i}"),
                    peer,
                    i % 2 == 0,
                    format!(
                        "message {i}: a sentence of about the length people write, with some words"
                    ),
                    i,
                ])
                .unwrap();
        }
        drop(insert);
        tx.commit().unwrap();
    }
    println!("filling 100,000 messages took {:?}", started.elapsed());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big.lattice-backup");
    let pass = Passphrase::for_backup(PASS.into()).unwrap();

    let kdf = std::time::Instant::now();
    let tiny = dir.path().join("tiny.lattice-backup");
    let empty = Profile::fresh();
    storage::load_identity(empty.path(), true).unwrap();
    backup::export(
        &empty.db,
        empty.path(),
        &Profile::settings(),
        &tiny,
        &pass,
        KdfParams::RECOMMENDED,
        &mut rand_core::OsRng,
    )
    .unwrap();
    println!(
        "backup of an empty profile (Argon2id 64 MiB, t=3): {:?}",
        kdf.elapsed()
    );

    let t = std::time::Instant::now();
    backup::export(
        &source.db,
        source.path(),
        &Profile::settings(),
        &file,
        &pass,
        KdfParams::RECOMMENDED,
        &mut rand_core::OsRng,
    )
    .unwrap();
    let backup_time = t.elapsed();
    let size = std::fs::metadata(&file).unwrap().len();
    let target = Profile::fresh();
    let t = std::time::Instant::now();
    let restored = backup::restore(
        &target.db,
        target.path(),
        &file,
        &Passphrase::for_restore(PASS.into()).unwrap(),
    )
    .unwrap();
    let restore_time = t.elapsed();
    assert_eq!(restored.counts.messages, 100_004);
    assert_eq!(target.snapshot(), source.snapshot());
    println!(
        "100,000 messages: backup {backup_time:?}, restore {restore_time:?}, file {:.1} MiB",
        size as f64 / (1024.0 * 1024.0)
    );
}

#[test]
fn two_restores_at_once_leave_one_whole_restore() {
    let source = Profile::in_use(500);
    let (_dir, file) = backup_of(&source);
    let target = Profile::fresh();
    let results: Vec<Result<backup::Restored, BackupError>> = std::thread::scope(|s| {
        let a = s.spawn(|| target.restore(&file, PASS));
        let b = s.spawn(|| target.restore(&file, PASS));
        vec![a.join().unwrap(), b.join().unwrap()]
    });
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 1, "{results:?}");
    assert!(results
        .iter()
        .any(|r| matches!(r, Err(BackupError::NotFresh))));
    assert_eq!(target.snapshot(), source.snapshot());
    assert_eq!(target.public_key(), source.public_key());
}
