//! Files (issue 11, the client): send a file from a path, download one to a path the app chose,
//! pause, resume (after a restart too), cancel, with progress events.
//!
//! A file goes as ciphertext through the server's blob store (docs/protocol.md, *Blob store* and
//! *Files*): the sender picks a random key and file id, creates the blob, sends a
//! [`Content::File`] message ([`FileOffer`]: name, size, type, thumbnail, key, blob id, download
//! capability; no digest yet) through the ordinary end-to-end encrypted path, then seals every
//! chunk ([`lattice_crypto::file_chunk`]) and uploads it (a few in flight; never the whole file
//! in memory), and once every chunk is stored sends the digest of the whole ciphertext in a
//! [`Content::FileDigest`] message. The receiver may start at once: the server holds a request
//! for a chunk not uploaded yet until it arrives (bounded), so the download runs right behind
//! the upload. It writes the chunks into `DEST.part`, opens each one (it must be that chunk of
//! that file), and when all are in waits for the digest, checks it, and only then renames the
//! file into place and deletes the blob (it was the one recipient).
//!
//! Each unfinished transfer has a journal ([`journal`]) in [`crate::PeerConfig::transfers_dir`]:
//! on start, the peer resumes them by itself (once connected); an upload asks the server which
//! chunks it already has, so no acknowledged chunk is sent twice. Errors that may pass (the
//! network, a busy server) are retried with a bounded backoff; then the transfer fails with a
//! readable reason and can be resumed.

mod http;
mod journal;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use tokio::time::Instant;

use base64::Engine as _;
use lattice_crypto::file_chunk::{
    self, FileDigest, FileKey, CHUNK_OVERHEAD, DIGEST_LEN, FILE_ID_LEN,
};
use lattice_protocol::limits::{MAX_BLOB_CHUNK_BYTES, MIN_BLOB_CHUNK_BYTES};
use lattice_protocol::{ClientFrame, ClientId, Empty, MessageId, ServerFrame};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

use crate::content::{chunk_count, Content, FileOffer, Thumbnail};
use crate::error::FileRejection;
use crate::events::{Change, Dispatcher, PeerEvent, TransferId, TransferProgress, TransferState};
use crate::link::Lane;
use crate::outbox::Outbox;
use crate::pending::WaitOptions;
use crate::requests::Requests;
use crate::sync::lock;
use crate::trust::Trust;
use crate::wire::{unexpected, B64};
use crate::{defaults, PeerError};

use self::http::BlobClient;
use self::journal::{BlobRef, Header, Journal};

/// What the app says about a file it sends; every field overrides what
/// [`crate::MessagingPeer::send_file`] would take from the path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileMeta {
    /// The name the recipient sees (default: the path's file name).
    pub name: Option<String>,
    /// The MIME type (default: guessed from the name's extension, else
    /// `application/octet-stream`).
    pub mime: Option<String>,
    /// A preview image the app made (bounded: [`crate::content::MAX_THUMBNAIL_BYTES`]).
    pub thumbnail: Option<Thumbnail>,
}

/// Why a running transfer was told to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Pause,
    Cancel,
}

/// A transfer's task and how to stop it.
#[derive(Debug)]
struct Run {
    cancel: CancellationToken,
    stop: Option<Stop>,
}

#[derive(Debug)]
struct Entry {
    header: Header,
    progress: TransferProgress,
    run: Option<Run>,
    last_emit: Option<Instant>,
}

#[derive(Debug, Default)]
struct Table {
    live: HashMap<String, Entry>,
    finished: VecDeque<TransferProgress>,
}

/// The file transfer component. Shared (`Arc`) by the handle and the transfer tasks.
#[derive(Debug)]
pub(crate) struct Files {
    me: ClientId,
    /// `None`: transfers are off.
    journal: Option<Journal>,
    blobs: BlobClient,
    requests: Arc<Requests>,
    trust: Arc<Trust>,
    outbox: Arc<Outbox>,
    /// The MLS engine when groups are on: a file's messages go over the 1:1 MLS conversation
    /// when there is one, like every other message (an older envelope would be refused as a
    /// downgrade by a peer pinned as speaking MLS).
    groups: Option<Arc<crate::groups::Groups>>,
    dispatcher: Arc<Dispatcher>,
    /// Plaintext bytes per chunk of an upload ([`crate::PeerConfig::file_chunk_bytes`]).
    chunk_bytes: u64,
    /// Chunks of one transfer in flight ([`crate::PeerConfig::file_chunks_in_flight`]).
    in_flight: usize,
    slots: Arc<Semaphore>,
    /// std Mutex: never held across an await.
    table: Mutex<Table>,
    resumed: AtomicBool,
    /// Woken when a `file-digest` message updates a download's header.
    digest_arrived: Notify,
    /// Cancelled when the last handle of the peer goes: every transfer task stops where it is,
    /// its journal untouched (it resumes at the next start).
    shutdown: CancellationToken,
}

/// The parts of the peer the file component uses.
pub(crate) type Parts = (Arc<Requests>, Arc<Trust>, Arc<Outbox>, Arc<Dispatcher>);

fn sealed_len(plain: u64) -> u64 {
    plain + CHUNK_OVERHEAD as u64
}

/// Plaintext length of chunk `index` of a `size`-byte file in `chunk_size` chunks.
fn plain_len(size: u64, chunk_size: u64, count: u64, index: u64) -> u64 {
    if index + 1 < count {
        chunk_size
    } else {
        size - chunk_size * (count - 1)
    }
}

/// The digest of the whole ciphertext from the recorded hash of every chunk, in order.
fn whole_digest(
    h: &Header,
    acks: &BTreeMap<u64, [u8; DIGEST_LEN]>,
) -> Result<[u8; DIGEST_LEN], PeerError> {
    let mut digest = FileDigest::new();
    for i in 0..h.chunk_count {
        let hash = acks
            .get(&i)
            .ok_or_else(|| PeerError::Protocol(format!("chunk {i} not acknowledged")))?;
        digest.push(hash);
    }
    Ok(digest.finish())
}

fn done_bytes(h: &Header, acks: &BTreeMap<u64, [u8; DIGEST_LEN]>) -> u64 {
    acks.keys()
        .map(|&i| plain_len(h.size, h.chunk_size, h.chunk_count, i))
        .sum()
}

fn modified_ms(meta: &std::fs::Metadata) -> Option<u64> {
    let t = meta.modified().ok()?.duration_since(UNIX_EPOCH).ok()?;
    u64::try_from(t.as_millis()).ok()
}

fn part_path(dest: &Path) -> PathBuf {
    let mut s = dest.as_os_str().to_owned();
    s.push(".part");
    PathBuf::from(s)
}

fn key_and_id(h: &Header) -> Result<(FileKey, [u8; FILE_ID_LEN]), PeerError> {
    let bad = |what: &str| PeerError::FileRejected(FileRejection::InvalidOffer(what.to_owned()));
    let key = B64
        .decode(&h.key)
        .ok()
        .and_then(|k| FileKey::from_slice(&k).ok())
        .ok_or_else(|| bad("file key"))?;
    let id = hex::decode(&h.file_id)
        .ok()
        .and_then(|b| <[u8; FILE_ID_LEN]>::try_from(b).ok())
        .ok_or_else(|| bad("file id"))?;
    Ok((key, id))
}

fn new_transfer_id() -> TransferId {
    TransferId(uuid::Uuid::new_v4().simple().to_string())
}

fn io_err(path: &Path, what: &str, e: &std::io::Error) -> PeerError {
    PeerError::Io(format!("{what} {}: {e}", path.display()))
}

impl Files {
    /// Builds the component and loads the journals of unfinished transfers (they start once
    /// [`Files::start_resumed`] is called, after the first registration).
    pub(crate) fn new(
        me: ClientId,
        dir: Option<&Path>,
        server_url: &str,
        tls: Option<Arc<rustls::ClientConfig>>,
        (requests, trust, outbox, dispatcher): Parts,
        groups: Option<Arc<crate::groups::Groups>>,
        (chunk_bytes, in_flight): (u64, usize),
    ) -> Result<Arc<Self>, PeerError> {
        let chunks = MIN_BLOB_CHUNK_BYTES..=MAX_BLOB_CHUNK_BYTES - CHUNK_OVERHEAD as u64;
        if !chunks.contains(&chunk_bytes) {
            return Err(PeerError::InvalidArgument(format!(
                "file_chunk_bytes {chunk_bytes} is outside {}..={}",
                chunks.start(),
                chunks.end()
            )));
        }
        if !(1..=defaults::MAX_FILE_CHUNKS_IN_FLIGHT).contains(&in_flight) {
            return Err(PeerError::InvalidArgument(format!(
                "file_chunks_in_flight {in_flight} is outside 1..={}",
                defaults::MAX_FILE_CHUNKS_IN_FLIGHT
            )));
        }
        let journal = dir.map(Journal::open).transpose()?;
        let mut table = Table::default();
        if let Some(j) = &journal {
            for header in j.load_all()? {
                let acks = j.acks(&header.id, header.chunk_count)?;
                let progress = TransferProgress {
                    id: header.transfer_id(),
                    direction: header.direction(),
                    peer: header.peer.clone(),
                    message_id: Some(header.message_id.clone()),
                    name: header.name.clone(),
                    done: done_bytes(&header, &acks),
                    total: header.size,
                    state: if header.paused {
                        TransferState::Paused
                    } else {
                        TransferState::Queued
                    },
                };
                table.live.insert(
                    header.id.clone(),
                    Entry {
                        header,
                        progress,
                        run: None,
                        last_emit: None,
                    },
                );
            }
        }
        let files = Arc::new(Self {
            me,
            journal,
            blobs: BlobClient::new(server_url, tls)?,
            requests,
            trust,
            outbox,
            groups,
            dispatcher,
            chunk_bytes,
            in_flight,
            slots: Arc::new(Semaphore::new(defaults::RUNNING_TRANSFERS)),
            table: Mutex::new(table),
            resumed: AtomicBool::new(false),
            digest_arrived: Notify::new(),
            shutdown: CancellationToken::new(),
        });
        // A handler, not the (lossy when lagging) event stream: no digest is missed. It holds the
        // component weakly, so the two do not keep each other alive.
        let weak = Arc::downgrade(&files);
        let _ = files.dispatcher.add(Arc::new(move |ev: &PeerEvent| {
            let (from, target, digest) = match ev {
                PeerEvent::Update(u) => match &u.change {
                    Change::FileDigest { target, digest } => (&u.from, target, digest),
                    _ => return,
                },
                // A group's file: the digest is a group message of the sender's.
                PeerEvent::GroupMessage(m) => match &m.content {
                    Content::FileDigest { target, digest } => (&m.from, target, digest),
                    _ => return,
                },
                _ => return,
            };
            if let Some(files) = weak.upgrade() {
                files.on_digest(from, target, digest);
            }
        }));
        Ok(files)
    }

    /// The digest of `from`'s file message `target` arrived (a verified `file-digest`): it goes
    /// into the header of the download of that file (a running one waiting for it completes; one
    /// that gave up waiting starts again), or is kept for a download not started yet. Only the
    /// first digest counts: a second one, or one for a download whose offer carried a digest,
    /// changes nothing.
    fn on_digest(self: &Arc<Self>, from: &ClientId, target: &MessageId, digest: &str) {
        let Some(journal) = self.journal.as_ref() else {
            return;
        };
        // Kept in any case (until a download of that file completes; the first one only): a
        // download started later, or one that replaces a failed one, finds it there.
        if journal.stored_digest(from, target).is_none() {
            if let Err(e) = journal.store_digest(from, target, digest) {
                tracing::warn!(peer = %self.me, from = %from, message_id = %target, error = %e, "cannot keep a file digest");
            }
        }
        let mut t = lock(&self.table);
        let found = t
            .live
            .values_mut()
            .find(|e| !e.header.upload && e.header.peer == *from && e.header.message_id == *target);
        let Some(e) = found else {
            return;
        };
        if e.header.digest.is_some() {
            return;
        }
        e.header.digest = Some(digest.to_owned());
        if let Err(err) = journal.write_header(&e.header) {
            tracing::warn!(peer = %self.me, transfer = %e.header.id, error = %err, "cannot record a file digest");
        }
        let idle = e.run.is_none() && !e.header.paused;
        let id = e.header.id.clone();
        drop(t);
        self.digest_arrived.notify_waiters();
        if idle {
            tracing::info!(peer = %self.me, transfer = %id, "the digest arrived: finishing the download");
            self.spawn(&id);
        }
    }

    fn journal(&self) -> Result<&Journal, PeerError> {
        self.journal.as_ref().ok_or(PeerError::FilesDisabled)
    }

    /// Stops every transfer task (the peer is going away); journals stay as they are.
    pub(crate) fn shut_down(&self) {
        self.shutdown.cancel();
    }

    /// Starts the unfinished transfers found at start (once; paused ones stay paused).
    pub(crate) fn start_resumed(self: &Arc<Self>) {
        if self.resumed.swap(true, Ordering::SeqCst) {
            return;
        }
        let ids: Vec<String> = lock(&self.table)
            .live
            .values()
            .filter(|e| e.progress.state == TransferState::Queued && e.run.is_none())
            .map(|e| e.header.id.clone())
            .collect();
        for id in ids {
            tracing::info!(peer = %self.me, transfer = %id, "resuming a transfer");
            self.spawn(&id);
        }
    }

    /// Every transfer this run knows: the unfinished ones, then the last finished ones.
    pub(crate) fn list(&self) -> Vec<TransferProgress> {
        let t = lock(&self.table);
        let mut out: Vec<TransferProgress> = t.live.values().map(|e| e.progress.clone()).collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out.extend(t.finished.iter().cloned());
        out
    }

    fn insert(&self, header: Header) -> Result<TransferId, PeerError> {
        let id = header.transfer_id();
        let mut t = lock(&self.table);
        if t.live.len() >= defaults::MAX_TRANSFERS {
            return Err(PeerError::TooManyTransfers {
                max: defaults::MAX_TRANSFERS,
            });
        }
        self.journal()?.write_header(&header)?;
        let progress = TransferProgress {
            id: id.clone(),
            direction: header.direction(),
            peer: header.peer.clone(),
            message_id: Some(header.message_id.clone()),
            name: header.name.clone(),
            done: 0,
            total: header.size,
            state: TransferState::Queued,
        };
        t.live.insert(
            header.id.clone(),
            Entry {
                header,
                progress: progress.clone(),
                run: None,
                last_emit: Some(Instant::now()),
            },
        );
        drop(t);
        self.dispatcher.emit(PeerEvent::Transfer(progress));
        Ok(id)
    }

    /// Starts sending `path` to `to` (see [`crate::MessagingPeer::send_file`]).
    pub(crate) async fn send_file(
        self: &Arc<Self>,
        to: &ClientId,
        path: &Path,
        meta: FileMeta,
    ) -> Result<TransferId, PeerError> {
        self.journal()?;
        let key = match self.trust.cached_key(to) {
            Some(k) => k,
            None => self.trust.fetch_key(to).await?,
        };
        if key.identity.is_none() {
            return Err(PeerError::FilesUnsupported { peer: to.clone() });
        }
        self.start_upload(to.clone(), None, path, meta).await
    }

    /// Starts sending `path` into MLS group `group` (see
    /// [`crate::MessagingPeer::send_group_file`]).
    pub(crate) async fn send_group_file(
        self: &Arc<Self>,
        group: &lattice_mls::GroupId,
        path: &Path,
        meta: FileMeta,
    ) -> Result<TransferId, PeerError> {
        self.journal()?;
        let groups = self.groups.as_ref().ok_or(PeerError::GroupsDisabled)?;
        // Refuses an unknown group before anything is uploaded.
        groups.info(group)?;
        let me = self.me.clone();
        self.start_upload(me, Some(hex::encode(group.as_bytes())), path, meta)
            .await
    }

    /// Journals and starts an upload of `path` to `to` (or, with `group`, into that group).
    async fn start_upload(
        self: &Arc<Self>,
        to: ClientId,
        group: Option<String>,
        path: &Path,
        meta: FileMeta,
    ) -> Result<TransferId, PeerError> {
        let md = tokio::fs::metadata(path)
            .await
            .map_err(|e| io_err(path, "cannot read", &e))?;
        if !md.is_file() {
            return Err(PeerError::InvalidArgument(format!(
                "{} is not a file",
                path.display()
            )));
        }
        let name = match meta.name {
            Some(n) => n,
            None => path
                .file_name()
                .and_then(|n| n.to_str())
                .map(str::to_owned)
                .ok_or_else(|| {
                    PeerError::InvalidArgument(format!(
                        "{} has no file name in UTF-8: give one in FileMeta::name",
                        path.display()
                    ))
                })?,
        };
        let mime = meta.mime.unwrap_or_else(|| {
            mime_guess::from_path(&name)
                .first_or_octet_stream()
                .essence_str()
                .to_owned()
        });
        let size = md.len();
        let chunk_size = self.chunk_bytes;
        let count = chunk_count(size, chunk_size);
        let file_key = FileKey::generate(&mut rand_core::OsRng);
        let mut file_id = [0u8; FILE_ID_LEN];
        rand::RngCore::fill_bytes(&mut rand_core::OsRng, &mut file_id);
        // The offer as it will be sent, with the blob fields still unknown: checks the name, the
        // type, the sizes and the thumbnail now, before anything is uploaded.
        let draft = FileOffer {
            name: name.clone(),
            size,
            mime: mime.clone(),
            thumbnail: meta.thumbnail.clone(),
            blob_id: "0".repeat(32),
            capability: "pending".into(),
            key: B64.encode(file_key.as_bytes()),
            file_id: hex::encode(file_id),
            digest: None,
            chunk_size,
            chunk_count: count,
        };
        draft.validate()?;
        let id = new_transfer_id();
        let path = std::path::absolute(path).map_err(|e| io_err(path, "cannot resolve", &e))?;
        let mut header = Header::new(
            &id,
            true,
            to.clone(),
            crate::wire::new_message_id(),
            path,
            (name, size, mime, meta.thumbnail),
            draft.key.clone(),
            draft.file_id.clone(),
            (chunk_size, count),
        );
        header.source_modified_ms = modified_ms(&md);
        header.digest_message_id = Some(crate::wire::new_message_id());
        header.group = group;
        self.insert(header)?;
        self.spawn(id.as_str());
        Ok(id)
    }

    /// Starts downloading the file `offer` (of message `message_id` from `from`) to `dest`.
    pub(crate) fn download_file(
        self: &Arc<Self>,
        from: &ClientId,
        message_id: &MessageId,
        offer: &FileOffer,
        dest: &Path,
    ) -> Result<TransferId, PeerError> {
        self.journal()?;
        offer.validate()?;
        // A download of this message in progress is that download; a paused or failed one is
        // replaced by this request (its partial file and journal go).
        let stale = {
            let mut t = lock(&self.table);
            let old = t.live.values().find(|e| {
                !e.header.upload && e.header.peer == *from && e.header.message_id == *message_id
            });
            match old {
                Some(e) if e.run.is_some() => return Ok(e.progress.id.clone()),
                Some(e) => {
                    let id = e.header.id.clone();
                    t.live.remove(&id).map(|e| e.header)
                }
                None => None,
            }
        };
        if let Some(old) = stale {
            journal::remove_if_there(&part_path(&old.path))?;
            self.journal()?.remove(&old.id)?;
        }
        let dest = std::path::absolute(dest).map_err(|e| io_err(dest, "cannot resolve", &e))?;
        if dest.file_name().is_none() || dest.parent().is_none_or(|p| !p.is_dir()) {
            return Err(PeerError::InvalidArgument(format!(
                "{} is not a file path in an existing directory",
                dest.display()
            )));
        }
        let id = new_transfer_id();
        let mut header = Header::new(
            &id,
            false,
            from.clone(),
            message_id.clone(),
            dest,
            (
                offer.name.clone(),
                offer.size,
                offer.mime.clone(),
                offer.thumbnail.clone(),
            ),
            offer.key.clone(),
            offer.file_id.clone(),
            (offer.chunk_size, offer.chunk_count),
        );
        header.blob = Some(BlobRef {
            blob_id: offer.blob_id.clone(),
            upload_capability: None,
            download_capability: offer.capability.clone(),
        });
        // The offer's digest, else one that came already (an offer sent as the upload started
        // has none: it follows in a `file-digest` message, applied by `on_digest`).
        header.digest = offer
            .digest
            .clone()
            .or_else(|| self.journal().ok()?.stored_digest(from, message_id));
        self.insert(header)?;
        self.spawn(id.as_str());
        Ok(id)
    }

    /// Pauses a queued or running transfer (it stays paused across restarts).
    pub(crate) fn pause(&self, id: &TransferId) -> Result<(), PeerError> {
        let mut t = lock(&self.table);
        let e = t
            .live
            .get_mut(id.as_str())
            .ok_or_else(|| PeerError::UnknownTransfer(id.to_string()))?;
        match &mut e.run {
            Some(run) => {
                if run.stop.is_none() {
                    run.stop = Some(Stop::Pause);
                }
                run.cancel.cancel();
                Ok(())
            }
            None => {
                e.header.paused = true;
                self.journal()?.write_header(&e.header)?;
                let p = set_state(e, TransferState::Paused);
                drop(t);
                self.dispatcher.emit(PeerEvent::Transfer(p));
                Ok(())
            }
        }
    }

    /// Resumes a paused or failed transfer.
    pub(crate) fn resume(self: &Arc<Self>, id: &TransferId) -> Result<(), PeerError> {
        let mut t = lock(&self.table);
        let e = t
            .live
            .get_mut(id.as_str())
            .ok_or_else(|| PeerError::UnknownTransfer(id.to_string()))?;
        if e.run.is_some() {
            return Ok(());
        }
        e.header.paused = false;
        self.journal()?.write_header(&e.header)?;
        drop(t);
        self.spawn(id.as_str());
        Ok(())
    }

    /// Cancels a transfer: its task stops, the blob (upload) or the partial file (download) is
    /// deleted, and so is its journal.
    pub(crate) async fn cancel(self: &Arc<Self>, id: &TransferId) -> Result<(), PeerError> {
        let header = {
            let mut t = lock(&self.table);
            let e = t
                .live
                .get_mut(id.as_str())
                .ok_or_else(|| PeerError::UnknownTransfer(id.to_string()))?;
            if let Some(run) = &mut e.run {
                // The task cleans up when it sees the stop.
                run.stop = Some(Stop::Cancel);
                run.cancel.cancel();
                return Ok(());
            }
            e.header.clone()
        };
        self.clean_up(&header).await;
        self.finish(id.as_str(), TransferState::Cancelled);
        Ok(())
    }

    /// Deletes what a cancelled transfer left: the blob (best effort: it expires anyway) or the
    /// partial file, and the journal.
    async fn clean_up(&self, h: &Header) {
        if h.upload {
            if let Some(BlobRef {
                blob_id,
                upload_capability: Some(cap),
                ..
            }) = &h.blob
            {
                if let Err(e) = self.blobs.delete(blob_id, cap).await {
                    tracing::warn!(peer = %self.me, transfer = %h.id, error = %e, "cannot delete a cancelled upload's blob (it expires by itself)");
                }
            }
        } else if let Err(e) = journal::remove_if_there(&part_path(&h.path)) {
            tracing::warn!(peer = %self.me, transfer = %h.id, error = %e, "cannot delete a partial download");
        }
        if let Ok(j) = self.journal() {
            if let Err(e) = j.remove(&h.id) {
                tracing::warn!(peer = %self.me, transfer = %h.id, error = %e, "cannot delete a transfer journal");
            }
        }
    }

    /// Moves a transfer to the finished list with its final state.
    fn finish(&self, id: &str, state: TransferState) {
        let mut t = lock(&self.table);
        let Some(mut e) = t.live.remove(id) else {
            return;
        };
        let p = set_state(&mut e, state);
        if t.finished.len() >= defaults::FINISHED_TRANSFERS_LISTED {
            t.finished.pop_front();
        }
        t.finished.push_back(p.clone());
        drop(t);
        self.dispatcher.emit(PeerEvent::Transfer(p));
    }

    /// Sets the state of a live transfer and reports it.
    fn state(&self, id: &str, state: TransferState) {
        let mut t = lock(&self.table);
        let Some(e) = t.live.get_mut(id) else {
            return;
        };
        if e.progress.state == state {
            return;
        }
        let p = set_state(e, state);
        drop(t);
        self.dispatcher.emit(PeerEvent::Transfer(p));
    }

    /// Records progress; reported at most every [`defaults::TRANSFER_EVENT_INTERVAL`].
    fn progress(&self, id: &str, done: u64) {
        let mut t = lock(&self.table);
        let Some(e) = t.live.get_mut(id) else {
            return;
        };
        e.progress.done = done;
        let now = Instant::now();
        if report_due(e.last_emit, now) || done == e.progress.total {
            e.last_emit = Some(now);
            let p = e.progress.clone();
            drop(t);
            self.dispatcher.emit(PeerEvent::Transfer(p));
        }
    }

    fn header(&self, id: &str) -> Option<Header> {
        lock(&self.table).live.get(id).map(|e| e.header.clone())
    }

    /// Starts the task of transfer `id` (if it has none).
    fn spawn(self: &Arc<Self>, id: &str) {
        if self.shutdown.is_cancelled() {
            return;
        }
        let cancel = self.shutdown.child_token();
        {
            let mut t = lock(&self.table);
            let Some(e) = t.live.get_mut(id) else {
                return;
            };
            if e.run.is_some() {
                return;
            }
            e.run = Some(Run {
                cancel: cancel.clone(),
                stop: None,
            });
        }
        self.state(id, TransferState::Queued);
        let this = Arc::clone(self);
        let id = id.to_owned();
        tokio::spawn(async move { this.drive(&id, cancel).await });
    }

    /// Runs a transfer to its end: waits for a slot, runs, retries what may pass, and handles
    /// pause and cancel.
    async fn drive(self: Arc<Self>, id: &str, cancel: CancellationToken) {
        let slots = Arc::clone(&self.slots);
        let permit = tokio::select! {
            p = slots.acquire_owned() => p.ok(),
            () = cancel.cancelled() => None,
        };
        let mut attempts = 0u32;
        let result = loop {
            if permit.is_none() || cancel.is_cancelled() {
                break Err(None);
            }
            self.state(id, TransferState::Running);
            let before = lock(&self.table).live.get(id).map(|e| e.progress.done);
            let r = tokio::select! {
                r = self.run_once(id) => r,
                () = cancel.cancelled() => break Err(None),
            };
            match r {
                Ok(()) => break Ok(()),
                Err(e) if e.is_transient() && attempts < defaults::TRANSFER_RETRIES => {
                    let after = lock(&self.table).live.get(id).map(|e| e.progress.done);
                    if after > before {
                        attempts = 0;
                    }
                    attempts += 1;
                    let delay = backoff(attempts);
                    tracing::info!(peer = %self.me, transfer = %id, attempt = attempts, error = %e, delay_ms = delay.as_millis() as u64, "transfer interrupted; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = cancel.cancelled() => break Err(None),
                    }
                }
                Err(e) => break Err(Some(e)),
            }
        };
        drop(permit);
        // The run stays registered until its end is recorded, so a `resume` meanwhile is a
        // no-op rather than a second task.
        let stop = lock(&self.table)
            .live
            .get(id)
            .and_then(|e| e.run.as_ref())
            .and_then(|r| r.stop);
        if stop.is_none() && self.shutdown.is_cancelled() {
            // The peer is going away: the journal stays as it is, and the transfer resumes at
            // the next start.
            return;
        }
        match (result, stop) {
            (_, Some(Stop::Cancel)) => {
                if let Some(h) = self.header(id) {
                    self.clean_up(&h).await;
                }
                self.finish(id, TransferState::Cancelled);
            }
            (Ok(()), _) => {
                if let Ok(j) = self.journal() {
                    if let Err(e) = j.remove(id) {
                        tracing::warn!(peer = %self.me, transfer = %id, error = %e, "cannot delete a finished transfer's journal");
                    }
                }
                self.finish(id, TransferState::Completed);
            }
            (Err(_), Some(Stop::Pause)) | (Err(None), None) => {
                let paused = {
                    let mut t = lock(&self.table);
                    t.live.get_mut(id).map(|e| {
                        e.header.paused = true;
                        e.header.clone()
                    })
                };
                if let (Some(h), Ok(j)) = (paused, self.journal()) {
                    if let Err(e) = j.write_header(&h) {
                        tracing::warn!(peer = %self.me, transfer = %id, error = %e, "cannot record a pause");
                    }
                }
                self.settle(id, TransferState::Paused).await;
            }
            (Err(Some(e)), None) => {
                tracing::warn!(peer = %self.me, transfer = %id, error = %e, "transfer failed");
                if let PeerError::FileRejected(_) = e {
                    // Bad bytes: the partial download is worthless; a resume starts over.
                    if let Some(h) = self.header(id).filter(|h| !h.upload) {
                        let _ = journal::remove_if_there(&part_path(&h.path));
                        if let Ok(j) = self.journal() {
                            let _ = j.clear_acks(id);
                        }
                        self.progress(id, 0);
                    }
                }
                self.settle(id, TransferState::Failed(e.to_string())).await;
            }
        }
    }

    /// Ends the task of transfer `id` in `state`, in one step (so a pause, resume or cancel
    /// sees either the running task or the final state); a cancel that came while the task was
    /// ending is carried out instead.
    async fn settle(&self, id: &str, state: TransferState) {
        let outcome = {
            let mut t = lock(&self.table);
            let Some(e) = t.live.get_mut(id) else {
                return;
            };
            let stop = e.run.take().and_then(|r| r.stop);
            if stop == Some(Stop::Cancel) {
                None
            } else {
                Some(set_state(e, state))
            }
        };
        match outcome {
            Some(p) => self.dispatcher.emit(PeerEvent::Transfer(p)),
            None => {
                if let Some(h) = self.header(id) {
                    self.clean_up(&h).await;
                }
                self.finish(id, TransferState::Cancelled);
            }
        }
    }

    /// Records a finished chunk task of transfer `h` (upload or download): its hash in the
    /// journal and in `acks`, then the progress.
    fn record_chunk(
        &self,
        journal: &Journal,
        h: &Header,
        acks: &mut BTreeMap<u64, [u8; DIGEST_LEN]>,
        done: Result<Result<(u64, [u8; DIGEST_LEN]), PeerError>, tokio::task::JoinError>,
    ) -> Result<(), PeerError> {
        let (i, hash) = done.map_err(|e| PeerError::Io(format!("chunk task: {e}")))??;
        journal.ack(&h.id, i, &hash)?;
        acks.insert(i, hash);
        self.progress(&h.id, done_bytes(h, acks));
        Ok(())
    }

    async fn run_once(&self, id: &str) -> Result<(), PeerError> {
        let header = self
            .header(id)
            .ok_or_else(|| PeerError::UnknownTransfer(id.to_owned()))?;
        if header.upload {
            self.upload(header).await
        } else {
            self.download(header).await
        }
    }

    /// Asks the server for a blob token over the WebSocket.
    async fn blob_token(&self) -> Result<String, PeerError> {
        let answer = self
            .requests
            .request(
                Lane::Normal,
                ClientFrame::BlobToken(Empty {}),
                "blob_token",
                WaitOptions::default(),
            )
            .await?;
        match answer {
            ServerFrame::BlobToken(t) => Ok(t.token),
            other => Err(unexpected("blob_token", &other)),
        }
    }

    async fn upload(&self, mut h: Header) -> Result<(), PeerError> {
        let journal = self.journal()?;
        let md = tokio::fs::metadata(&h.path)
            .await
            .map_err(|e| io_err(&h.path, "cannot read", &e))?;
        if md.len() != h.size || modified_ms(&md) != h.source_modified_ms {
            return Err(PeerError::FileRejected(FileRejection::SourceChanged));
        }
        let blob = match h.blob.clone() {
            Some(b) => b,
            None => {
                let token = self.blob_token().await?;
                let created = self
                    .blobs
                    .create(
                        &token,
                        self.me.as_str(),
                        h.size + h.chunk_count * CHUNK_OVERHEAD as u64,
                        if h.chunk_count > 1 {
                            sealed_len(h.chunk_size)
                        } else {
                            sealed_len(h.size)
                        },
                        h.chunk_count,
                        // The transfer id, journalled before this request: a crash before the
                        // answer is journalled finds the same blob again, never an orphan.
                        &h.id,
                        // One recipient may delete it once received; a group's stays for all.
                        h.group.is_none(),
                    )
                    .await?;
                let b = BlobRef {
                    blob_id: created.transfer_id,
                    upload_capability: Some(created.upload_capability),
                    download_capability: created.download_capability,
                };
                h.blob = Some(b.clone());
                journal.write_header(&h)?;
                if let Some(e) = lock(&self.table).live.get_mut(&h.id) {
                    e.header.blob = Some(b.clone());
                }
                b
            }
        };
        let cap = blob
            .upload_capability
            .clone()
            .ok_or_else(|| PeerError::Protocol("an upload without its capability".into()))?;
        if h.digest_message_id.is_some() && !h.offer_sent {
            // The offer goes first, so that the recipient downloads while the chunks go up.
            let offer = self.offer(&h, &blob, None);
            self.send_and_wait(&h, Content::File(offer), h.message_id.clone())
                .await?;
            h.offer_sent = true;
            journal.write_header(&h)?;
            if let Some(e) = lock(&self.table).live.get_mut(&h.id) {
                e.header.offer_sent = true;
            }
        }
        let mut acks = journal.acks(&h.id, h.chunk_count)?;
        if acks.len() as u64 == h.chunk_count {
            // Every chunk is stored; only the message is left. The blob may be gone already
            // (the recipient deletes it once its copy is verified), so it is not asked about.
            return self.finish_upload(&h, &blob, &acks).await;
        }
        // What the server has: a chunk stored before a crash but not yet journalled is fetched
        // back to learn its hash (its nonce was random), never uploaded again.
        let listing = self.blobs.list(&blob.blob_id, &cap).await?;
        let present: std::collections::BTreeSet<u64> = listing
            .present
            .into_iter()
            .filter(|&i| i < h.chunk_count)
            .collect();
        acks.retain(|i, _| present.contains(i));
        let unjournalled: Vec<u64> = present
            .iter()
            .copied()
            .filter(|i| !acks.contains_key(i))
            .collect();
        for i in unjournalled {
            let expected = sealed_len(plain_len(h.size, h.chunk_size, h.chunk_count, i));
            let bytes = self
                .blobs
                .get_chunk(&blob.blob_id, &cap, i, expected)
                .await?;
            let hash = file_chunk::chunk_hash(&bytes);
            journal.ack(&h.id, i, &hash)?;
            acks.insert(i, hash);
        }
        self.progress(&h.id, done_bytes(&h, &acks));
        let (key, file_id) = key_and_id(&h)?;
        let key = Arc::new(key);
        let todo: Vec<u64> = (0..h.chunk_count)
            .filter(|i| !acks.contains_key(i))
            .collect();
        let mut tasks = JoinSet::new();
        let mut next = todo.into_iter();
        loop {
            while tasks.len() < self.in_flight {
                let Some(i) = next.next() else { break };
                let (blobs, key, path) = (self.blobs.clone(), Arc::clone(&key), h.path.clone());
                let (blob_id, cap) = (blob.blob_id.clone(), cap.clone());
                let (size, chunk_size, count) = (h.size, h.chunk_size, h.chunk_count);
                tasks.spawn(async move {
                    let len = plain_len(size, chunk_size, count, i);
                    // Read, seal and hash on the blocking pool, in one go: the disk and the CPU
                    // work stay off the async threads that drive the HTTP requests.
                    // One buffer per chunk: read after room for the nonce, sealed in place.
                    let (sealed, hash) = blocking(move || {
                        let mut buf = read_chunk(&path, i * chunk_size, len)?;
                        file_chunk::seal_chunk_in_place(
                            &mut rand_core::OsRng,
                            &key,
                            &file_id,
                            i,
                            i + 1 == count,
                            &mut buf,
                        )?;
                        let hash = file_chunk::chunk_hash(&buf);
                        Ok((buf, hash))
                    })
                    .await?;
                    blobs.put_chunk(&blob_id, &cap, i, sealed).await?;
                    Ok::<_, PeerError>((i, hash))
                });
            }
            let Some(done) = tasks.join_next().await else {
                break;
            };
            self.record_chunk(journal, &h, &mut acks, done)?;
        }
        self.finish_upload(&h, &blob, &acks).await
    }

    /// Sends the digest of an upload whose every chunk is stored: a `file-digest` message after
    /// the offer, or (a journal of the previous version) the whole offer with it.
    async fn finish_upload(
        &self,
        h: &Header,
        blob: &BlobRef,
        acks: &BTreeMap<u64, [u8; DIGEST_LEN]>,
    ) -> Result<(), PeerError> {
        let digest = hex::encode(whole_digest(h, acks)?);
        match (&h.digest_message_id, h.offer_sent) {
            (Some(id), true) => {
                let content = Content::FileDigest {
                    target: h.message_id.clone(),
                    digest,
                };
                self.send_and_wait(h, content, id.clone()).await
            }
            _ => {
                let offer = self.offer(h, blob, Some(digest));
                self.send_and_wait(h, Content::File(offer), h.message_id.clone())
                    .await
            }
        }
    }

    /// The offer of upload `h` in blob `blob`.
    fn offer(&self, h: &Header, blob: &BlobRef, digest: Option<String>) -> FileOffer {
        FileOffer {
            name: h.name.clone(),
            size: h.size,
            mime: h.mime.clone(),
            thumbnail: h.thumbnail.clone(),
            blob_id: blob.blob_id.clone(),
            capability: blob.download_capability.clone(),
            key: h.key.clone(),
            file_id: h.file_id.clone(),
            digest,
            chunk_size: h.chunk_size,
            chunk_count: h.chunk_count,
        }
    }

    /// Sends a message of transfer `h` (the offer, the digest) with the id fixed when the
    /// transfer started, and waits for the server's verdict, so that the journal moves on only
    /// once the message is accepted. Sent again after a crash with the same id: the recipient
    /// drops the duplicate.
    async fn send_and_wait(
        &self,
        h: &Header,
        content: Content,
        message_id: MessageId,
    ) -> Result<(), PeerError> {
        if let Some(group) = &h.group {
            let groups = self.groups.as_ref().ok_or(PeerError::GroupsDisabled)?;
            let gid = hex::decode(group)
                .map(|b| lattice_mls::GroupId::from_bytes(&b))
                .map_err(|_| {
                    PeerError::Protocol("a transfer journal with a bad group id".into())
                })?;
            // The answer is awaited by the send itself.
            return groups
                .send_with_id(&gid, &content, message_id)
                .await
                .map(drop);
        }
        if let Some(g) = &self.groups {
            // Over MLS the answer is awaited by the send itself.
            if g.send_direct(&h.peer, &content, message_id.clone())
                .await?
                .is_some()
            {
                return Ok(());
            }
        }
        let mut events = self.dispatcher.subscribe();
        self.outbox
            .send(&h.peer, &content, message_id.clone())
            .await?;
        let wait = async {
            while let Some(ev) = events.next().await {
                match ev {
                    PeerEvent::MessageAck(a) if a.message_id == message_id => return Ok(()),
                    PeerEvent::MessageFailed {
                        message_id: failed,
                        error,
                        ..
                    } if failed == message_id => return Err(error),
                    _ => {}
                }
            }
            Err(PeerError::NotConnected)
        };
        match tokio::time::timeout(defaults::BLOB_REQUEST_TIMEOUT, wait).await {
            Ok(r) => r,
            Err(_) => Err(PeerError::Timeout {
                request: "message".into(),
                expected: "message_ack".into(),
                after: defaults::BLOB_REQUEST_TIMEOUT,
                attempts: 1,
            }),
        }
    }

    async fn download(&self, h: Header) -> Result<(), PeerError> {
        let journal = self.journal()?;
        let blob = h
            .blob
            .clone()
            .ok_or_else(|| PeerError::Protocol("a download without its blob".into()))?;
        let part = part_path(&h.path);
        let mut acks = journal.acks(&h.id, h.chunk_count)?;
        if !acks.is_empty() && !part.exists() {
            journal.clear_acks(&h.id)?;
            acks.clear();
        }
        {
            // Synchronous on purpose (a create and a sparse resize, both immediate): with
            // `tokio::fs` the create runs on a blocking thread that a cancel cannot stop, so it
            // could make the `.part` again after the cancel's clean-up removed it.
            let f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(&part)
                .map_err(|e| io_err(&part, "cannot create", &e))?;
            f.set_len(h.size)
                .map_err(|e| io_err(&part, "cannot size", &e))?;
        }
        self.progress(&h.id, done_bytes(&h, &acks));
        let (key, file_id) = key_and_id(&h)?;
        let key = Arc::new(key);
        let todo: Vec<u64> = (0..h.chunk_count)
            .filter(|i| !acks.contains_key(i))
            .collect();
        let mut tasks = JoinSet::new();
        let mut next = todo.into_iter();
        loop {
            while tasks.len() < self.in_flight {
                let Some(i) = next.next() else { break };
                let (blobs, key, part) = (self.blobs.clone(), Arc::clone(&key), part.clone());
                let blob = blob.clone();
                let (size, chunk_size, count) = (h.size, h.chunk_size, h.chunk_count);
                tasks.spawn(async move {
                    let len = plain_len(size, chunk_size, count, i);
                    let sealed = blobs
                        .get_chunk(&blob.blob_id, &blob.download_capability, i, sealed_len(len))
                        .await?;
                    // Hash, open and write on the blocking pool (as the upload seals).
                    blocking(move || {
                        let hash = file_chunk::chunk_hash(&sealed);
                        // Opened where it lies (no second buffer); wiped on drop like any
                        // plaintext.
                        let mut sealed = Zeroizing::new(sealed);
                        let plain = file_chunk::open_chunk_in_place(
                            &key,
                            &file_id,
                            i,
                            i + 1 == count,
                            &mut sealed,
                        )
                        .map_err(|_| {
                            PeerError::FileRejected(FileRejection::ChunkRefused { index: i })
                        })?;
                        write_chunk(&part, i * chunk_size, plain)?;
                        Ok((i, hash))
                    })
                    .await
                });
            }
            let Some(done) = tasks.join_next().await else {
                break;
            };
            self.record_chunk(journal, &h, &mut acks, done)?;
        }
        let digest = whole_digest(&h, &acks)?;
        let expected = self.await_digest(&h.id).await?;
        if expected != hex::encode(digest) {
            return Err(PeerError::FileRejected(FileRejection::DigestMismatch));
        }
        let f = tokio::fs::OpenOptions::new()
            .write(true)
            .open(&part)
            .await
            .map_err(|e| io_err(&part, "cannot open", &e))?;
        f.sync_all()
            .await
            .map_err(|e| io_err(&part, "cannot sync", &e))?;
        drop(f);
        tokio::fs::rename(&part, &h.path)
            .await
            .map_err(|e| io_err(&h.path, "cannot move the file to", &e))?;
        // The one recipient has its verified copy: the blob is not needed any more. Best
        // effort: expiry deletes it anyway (and a server of the previous version refuses).
        if let Err(e) = self
            .blobs
            .delete(&blob.blob_id, &blob.download_capability)
            .await
        {
            tracing::info!(peer = %self.me, transfer = %h.id, error = %e, "cannot delete a received file's blob (it expires by itself)");
        }
        journal.forget_digest(&h.peer, &h.message_id);
        Ok(())
    }

    /// The digest download `id` must match: from its offer, or from the sender's `file-digest`
    /// message, waited for up to [`defaults::FILE_DIGEST_WAIT`] (then a transient error: the
    /// transfer retries, then fails, and the digest arriving later finishes it).
    async fn await_digest(&self, id: &str) -> Result<String, PeerError> {
        loop {
            let notified = self.digest_arrived.notified();
            tokio::pin!(notified);
            // Registered before the look, so a digest arriving in between wakes us.
            notified.as_mut().enable();
            let known = lock(&self.table)
                .live
                .get(id)
                .and_then(|e| e.header.digest.clone());
            if let Some(d) = known {
                return Ok(d);
            }
            if tokio::time::timeout(defaults::FILE_DIGEST_WAIT, notified)
                .await
                .is_err()
            {
                return Err(PeerError::Timeout {
                    request: "file download".into(),
                    expected: "the sender's file-digest message".into(),
                    after: defaults::FILE_DIGEST_WAIT,
                    attempts: 1,
                });
            }
        }
    }
}

fn set_state(e: &mut Entry, state: TransferState) -> TransferProgress {
    e.progress.state = state;
    e.last_emit = Some(Instant::now());
    e.progress.clone()
}

/// Whether a progress report is due at `now`, the last one having gone at `last`: at most one
/// per [`defaults::TRANSFER_EVENT_INTERVAL`].
fn report_due(last: Option<Instant>, now: Instant) -> bool {
    last.is_none_or(|at| now.duration_since(at) >= defaults::TRANSFER_EVENT_INTERVAL)
}

/// The delay before retry `attempt` (1-based).
fn backoff(attempt: u32) -> Duration {
    let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(16));
    defaults::TRANSFER_RETRY_BASE
        .saturating_mul(factor)
        .min(defaults::TRANSFER_RETRY_MAX)
}

/// Runs `f` on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, PeerError> + Send + 'static,
) -> Result<T, PeerError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| PeerError::Io(format!("chunk task: {e}")))?
}

/// Reads `len` bytes at `offset` of `path` (blocking) into a new buffer after
/// [`file_chunk::CHUNK_HEADROOM`] bytes of room, with the capacity of the sealed chunk: ready to
/// be sealed in place.
fn read_chunk(path: &Path, offset: u64, len: u64) -> Result<Vec<u8>, PeerError> {
    use std::io::{Read as _, Seek as _};
    let mut f = std::fs::File::open(path).map_err(|e| io_err(path, "cannot open", &e))?;
    f.seek(SeekFrom::Start(offset))
        .map_err(|e| io_err(path, "cannot seek in", &e))?;
    let want = usize::try_from(len).map_err(|_| PeerError::Io("chunk too large".into()))?;
    let mut buf = Vec::with_capacity(want + CHUNK_OVERHEAD);
    buf.resize(file_chunk::CHUNK_HEADROOM, 0);
    // Read into the spare capacity (nothing zeroed first); a file shorter than it was changed.
    f.take(len)
        .read_to_end(&mut buf)
        .map_err(|e| io_err(path, "cannot read", &e))?;
    if buf.len() != file_chunk::CHUNK_HEADROOM + want {
        return Err(PeerError::FileRejected(FileRejection::SourceChanged));
    }
    Ok(buf)
}

/// Writes `bytes` at `offset` of `path` (blocking; the file must exist: a partial file removed
/// by a cancel is not made again).
fn write_chunk(path: &Path, offset: u64, bytes: &[u8]) -> Result<(), PeerError> {
    use std::io::{Seek as _, Write as _};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| io_err(path, "cannot open", &e))?;
    f.seek(SeekFrom::Start(offset))
        .map_err(|e| io_err(path, "cannot seek in", &e))?;
    f.write_all(bytes)
        .map_err(|e| io_err(path, "cannot write", &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_lengths_add_up() {
        for (size, chunk) in [(0u64, 10u64), (1, 10), (10, 10), (11, 10), (25, 10)] {
            let n = chunk_count(size, chunk);
            let total: u64 = (0..n).map(|i| plain_len(size, chunk, n, i)).sum();
            assert_eq!(total, size, "{size}/{chunk}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn progress_reports_are_at_most_ten_a_second() {
        let start = Instant::now();
        assert!(report_due(None, start));
        let mut last = start;
        let mut reports = 0;
        // A report offered every millisecond for one second.
        for _ in 0..1000 {
            tokio::time::advance(Duration::from_millis(1)).await;
            let now = Instant::now();
            if report_due(Some(last), now) {
                reports += 1;
                last = now;
            }
        }
        assert_eq!(reports, 10);
    }

    #[test]
    fn retries_back_off_up_to_a_cap() {
        assert_eq!(backoff(1), defaults::TRANSFER_RETRY_BASE);
        assert_eq!(backoff(2), defaults::TRANSFER_RETRY_BASE * 2);
        assert_eq!(backoff(40), defaults::TRANSFER_RETRY_MAX);
    }

    #[test]
    fn the_partial_file_sits_next_to_the_destination() {
        assert_eq!(
            part_path(Path::new("/tmp/a.jpg")),
            Path::new("/tmp/a.jpg.part")
        );
    }
}
