//! The blob store's state and its disk. Methods are synchronous (std::fs); the HTTP layer runs
//! them on the blocking pool. One mutex guards the index (which transfers exist, which chunks are
//! present, the quota counters); file I/O happens outside it.

use std::collections::HashMap;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use lattice_protocol::limits::{MAX_BLOB_CHUNK_BYTES, MIN_BLOB_CHUNK_BYTES};
use lattice_protocol::ClientId;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq as _;
use tokio::sync::{Notify, Semaphore};
use tracing::{info, warn};

use super::BlobError;
use crate::limits::{
    BLOB_CHUNK_WAITERS, BLOB_DOWNLOADS_TOTAL, BLOB_ID_BYTES, BLOB_SECRET_BYTES,
    BLOB_TRANSFERS_PER_SENDER, BLOB_UPLOADS_PER_SENDER, BLOB_UPLOADS_TOTAL, MAX_BLOB_CLIENT_REF,
};

/// The store's bounds.
#[derive(Debug, Clone, Copy)]
pub struct BlobLimits {
    /// Total declared bytes of live transfers.
    pub total: u64,
    /// Declared bytes of one sender's live transfers.
    pub per_sender: u64,
    /// Largest transfer.
    pub max_file: u64,
    /// Lifetime of a transfer.
    pub ttl: Duration,
}

/// Body of `POST /blobs`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateRequest {
    /// The verified id the token was issued to.
    pub sender_id: ClientId,
    /// Total ciphertext bytes.
    pub size: u64,
    /// Bytes of every chunk but the last.
    pub chunk_size: u64,
    /// Number of chunks: `ceil(size / chunkSize)`, at least 1.
    pub chunk_count: u64,
    /// The sender's idempotency key (1–64 of `A-Z a-z 0-9 - _`), chosen and journalled before
    /// the request: asking again with the same key (after a crash that lost the answer) returns
    /// the same transfer instead of leaving an orphan.
    #[serde(default)]
    pub client_ref: Option<String>,
    /// The file has one recipient: its download capability may delete the transfer too (the
    /// recipient does once its copy is verified). Off for a group's file, where every member
    /// holds the download capability and expiry is the bound.
    #[serde(default)]
    pub one_recipient: bool,
}

/// Answer of `POST /blobs`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Created {
    /// The transfer's id (hex, in URLs).
    pub transfer_id: String,
    /// Capability to upload chunks and delete the transfer.
    pub upload_capability: String,
    /// Capability to read the status and download chunks (goes into the end-to-end message).
    pub download_capability: String,
    /// When the bytes are deleted (Unix milliseconds).
    pub expires_at_ms: u64,
    /// `false` when a `clientRef` found the transfer made by an earlier request (HTTP 200
    /// instead of 201).
    #[serde(skip)]
    pub new: bool,
}

/// Answer of `GET /blobs/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// The transfer's id.
    pub transfer_id: String,
    /// Total bytes.
    pub size: u64,
    /// Bytes per chunk (the last may be shorter).
    pub chunk_size: u64,
    /// Number of chunks.
    pub chunk_count: u64,
    /// Indices of the chunks present, ascending.
    pub present: Vec<u64>,
    /// Whether every chunk is present.
    pub complete: bool,
    /// When the bytes are deleted (Unix milliseconds).
    pub expires_at_ms: u64,
}

/// Answer of `PUT /blobs/{id}/chunks/{index}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Uploaded {
    /// The chunk's index.
    pub index: u64,
    /// Whether it was present already (nothing was written).
    pub already_present: bool,
    /// Whether every chunk is now present.
    pub complete: bool,
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct BlobStats {
    /// Chunk bytes accepted.
    pub bytes_in: AtomicU64,
    /// Chunk bytes served.
    pub bytes_out: AtomicU64,
    /// Transfers created.
    pub transfers_created: AtomicU64,
    /// Transfers deleted by expiry.
    pub transfers_expired: AtomicU64,
}

/// `meta.json` of a transfer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Meta {
    id: String,
    sender: ClientId,
    size: u64,
    chunk_size: u64,
    chunk_count: u64,
    created_ms: u64,
    expires_ms: u64,
    upload_capability: String,
    download_capability: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    client_ref: Option<String>,
    #[serde(default)]
    one_recipient: bool,
}

impl Meta {
    fn expected_len(&self, index: u64) -> u64 {
        expected_len(self.size, self.chunk_size, self.chunk_count, index)
    }
}

/// The length chunk `index` must have: `chunk_size`, but the last one holds the rest.
pub(crate) fn expected_len(size: u64, chunk_size: u64, chunk_count: u64, index: u64) -> u64 {
    if index.saturating_add(1) < chunk_count {
        chunk_size
    } else {
        size.saturating_sub(chunk_size.saturating_mul(chunk_count.saturating_sub(1)))
    }
}

#[derive(Debug)]
struct Transfer {
    meta: Meta,
    present: Vec<bool>,
    missing: u64,
    /// Woken when a chunk arrives or the transfer goes: downloads waiting for a chunk.
    arrived: Arc<Notify>,
}

impl Transfer {
    fn new(meta: Meta, present: Vec<bool>, missing: u64) -> Self {
        Self {
            meta,
            present,
            missing,
            arrived: Arc::new(Notify::new()),
        }
    }
}

#[derive(Debug, Default)]
struct Index {
    transfers: HashMap<String, Transfer>,
    reserved: u64,
    stored: u64,
    senders: HashMap<ClientId, (u64, usize)>,
    /// `(sender, clientRef)` → transfer id.
    refs: HashMap<(ClientId, String), String>,
}

impl Index {
    fn insert(&mut self, t: Transfer) {
        self.reserved = self.reserved.saturating_add(t.meta.size);
        let s = self.senders.entry(t.meta.sender.clone()).or_default();
        s.0 = s.0.saturating_add(t.meta.size);
        s.1 += 1;
        if let Some(r) = &t.meta.client_ref {
            self.refs
                .insert((t.meta.sender.clone(), r.clone()), t.meta.id.clone());
        }
        self.transfers.insert(t.meta.id.clone(), t);
    }

    fn remove(&mut self, id: &str) -> Option<Transfer> {
        let t = self.transfers.remove(id)?;
        // Downloads waiting for a chunk of it learn at once that it is gone.
        t.arrived.notify_waiters();
        if let Some(r) = &t.meta.client_ref {
            self.refs.remove(&(t.meta.sender.clone(), r.clone()));
        }
        self.reserved = self.reserved.saturating_sub(t.meta.size);
        let stored: u64 = (0..t.meta.chunk_count)
            .filter(|&i| t.present.get(to_usize(i)).copied().unwrap_or(false))
            .map(|i| t.meta.expected_len(i))
            .sum();
        self.stored = self.stored.saturating_sub(stored);
        if let Some(s) = self.senders.get_mut(&t.meta.sender) {
            s.0 = s.0.saturating_sub(t.meta.size);
            s.1 = s.1.saturating_sub(1);
            if s.1 == 0 {
                self.senders.remove(&t.meta.sender);
            }
        }
        Some(t)
    }
}

fn to_usize(i: u64) -> usize {
    usize::try_from(i).unwrap_or(usize::MAX)
}

/// Checks a create request's sizes against the protocol's chunk bounds and `max_file`; its
/// chunk count. The same checks on one node and on several.
pub(crate) fn check_request(req: &CreateRequest, max_file: u64) -> Result<u64, BlobError> {
    if req.chunk_size == 0 || req.chunk_size > MAX_BLOB_CHUNK_BYTES {
        return Err(BlobError::Invalid(format!(
            "chunkSize must be 1 to {MAX_BLOB_CHUNK_BYTES} bytes"
        )));
    }
    if req.size > max_file {
        return Err(BlobError::FileTooLarge {
            size: req.size,
            limit: max_file,
        });
    }
    let count = req.size.div_ceil(req.chunk_size).max(1);
    if req.chunk_count != count {
        return Err(BlobError::Invalid(format!(
            "chunkCount must be {count} for size {} and chunkSize {}",
            req.size, req.chunk_size
        )));
    }
    if count > 1 && req.chunk_size < MIN_BLOB_CHUNK_BYTES {
        return Err(BlobError::Invalid(format!(
            "chunkSize must be at least {MIN_BLOB_CHUNK_BYTES} bytes when there is more than one chunk"
        )));
    }
    if let Some(r) = &req.client_ref {
        let ok = !r.is_empty()
            && r.len() <= MAX_BLOB_CLIENT_REF
            && r.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(BlobError::Invalid(format!(
                "clientRef must be 1 to {MAX_BLOB_CLIENT_REF} of A-Z a-z 0-9 - _"
            )));
        }
    }
    Ok(count)
}

/// The upload gate of `sender` in `gates` (at most [`BLOB_UPLOADS_PER_SENDER`] chunk uploads at
/// once; per node on a node of several).
pub(crate) fn upload_gate(
    gates: &Mutex<HashMap<ClientId, Arc<Semaphore>>>,
    sender: &ClientId,
) -> Arc<Semaphore> {
    let mut gates = gates
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // Gates of senders without a running upload are dropped, so the map stays small.
    gates
        .retain(|_, g| Arc::strong_count(g) > 1 || g.available_permits() < BLOB_UPLOADS_PER_SENDER);
    Arc::clone(
        gates
            .entry(sender.clone())
            .or_insert_with(|| Arc::new(Semaphore::new(BLOB_UPLOADS_PER_SENDER))),
    )
}

/// Whether `id` has the shape of a transfer id (lowercase hex of [`BLOB_ID_BYTES`] bytes): nothing
/// else ever reaches a path.
pub(crate) fn valid_id(id: &str) -> bool {
    id.len() == BLOB_ID_BYTES * 2 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

pub(crate) fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

pub(crate) fn random_secret() -> String {
    use base64::Engine as _;
    let bytes: [u8; BLOB_SECRET_BYTES] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub(crate) fn ct_eq(a: &str, b: &str) -> bool {
    bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// Writes `bytes` to `path` through a synced temporary file and a rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, path)
}

/// Which capability a request shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    Upload,
    Download,
    /// The upload capability, or the download capability of a one-recipient transfer.
    Delete,
}

/// A chunk upload admitted by [`BlobStore::begin_upload`]: where to write and how much.
#[derive(Debug)]
pub(crate) struct ChunkSlot {
    pub(crate) sender: ClientId,
    pub(crate) expected: u64,
    pub(crate) temp: PathBuf,
    pub(crate) dest: PathBuf,
}

/// The blob store. See the [module docs](super).
#[derive(Debug)]
pub struct BlobStore {
    root: PathBuf,
    limits: BlobLimits,
    index: Mutex<Index>,
    uploads: Mutex<HashMap<ClientId, Arc<Semaphore>>>,
    /// Uploads running on the whole server ([`BLOB_UPLOADS_TOTAL`]).
    pub(crate) uploads_total: Arc<Semaphore>,
    /// Downloads running on the whole server ([`BLOB_DOWNLOADS_TOTAL`]).
    pub(crate) downloads_total: Arc<Semaphore>,
    /// Downloads waiting for a chunk not uploaded yet ([`BLOB_CHUNK_WAITERS`]).
    chunk_waiters: Arc<Semaphore>,
    /// Counters for `/metrics`.
    pub stats: BlobStats,
}

impl BlobStore {
    /// Opens (creating) `dir` and loads every transfer found there. Leftover temporary files of
    /// interrupted uploads are removed; a transfer directory without `meta.json` (a create that
    /// crashed) is removed.
    ///
    /// # Errors
    /// The directory cannot be created or listed.
    pub fn open(dir: &Path, limits: BlobLimits) -> Result<Self, BlobError> {
        fs::create_dir_all(dir).map_err(BlobError::io)?;
        let mut index = Index::default();
        for entry in fs::read_dir(dir).map_err(BlobError::io)? {
            let entry = entry.map_err(BlobError::io)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !valid_id(&name) {
                continue;
            }
            let path = entry.path();
            let meta: Meta = match fs::read(path.join("meta.json")) {
                Ok(bytes) => match serde_json::from_slice(&bytes) {
                    Ok(m) => m,
                    Err(e) => {
                        warn!(transfer = %name, error = %e, "unreadable blob meta.json: skipped");
                        continue;
                    }
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let _ = fs::remove_dir_all(&path);
                    continue;
                }
                Err(e) => {
                    warn!(transfer = %name, error = %e, "cannot read blob meta.json: skipped");
                    continue;
                }
            };
            if meta.id != name || meta.chunk_count == 0 {
                warn!(transfer = %name, "blob meta.json does not match its directory: skipped");
                continue;
            }
            let mut present = vec![false; to_usize(meta.chunk_count)];
            let mut missing = meta.chunk_count;
            let mut stored = 0u64;
            if let Ok(files) = fs::read_dir(&path) {
                for f in files.flatten() {
                    let fname = f.file_name().to_string_lossy().into_owned();
                    if fname.contains(".part-") || fname.ends_with(".tmp") {
                        let _ = fs::remove_file(f.path());
                        continue;
                    }
                    let Ok(i) = fname.parse::<u64>() else {
                        continue;
                    };
                    let len = f.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
                    if i < meta.chunk_count && len == meta.expected_len(i) {
                        if let Some(p) = present.get_mut(to_usize(i)) {
                            *p = true;
                            missing -= 1;
                            stored += len;
                        }
                    }
                }
            }
            index.stored += stored;
            index.insert(Transfer::new(meta, present, missing));
        }
        info!(
            transfers = index.transfers.len(),
            stored = index.stored,
            "blob store opened"
        );
        Ok(Self {
            root: dir.to_path_buf(),
            limits,
            index: Mutex::new(index),
            uploads: Mutex::default(),
            uploads_total: Arc::new(Semaphore::new(BLOB_UPLOADS_TOTAL)),
            downloads_total: Arc::new(Semaphore::new(BLOB_DOWNLOADS_TOTAL)),
            chunk_waiters: Arc::new(Semaphore::new(BLOB_CHUNK_WAITERS)),
            stats: BlobStats::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Index> {
        self.index
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Bytes of chunks on disk.
    pub fn stored_bytes(&self) -> u64 {
        self.lock().stored
    }

    /// Live transfers.
    pub fn transfer_count(&self) -> usize {
        self.lock().transfers.len()
    }

    /// Creates a transfer for `req.sender_id` (already authenticated) at `now_ms`: the per-file
    /// limit and the quotas are checked before anything is written.
    ///
    /// # Errors
    /// A malformed request, a limit, or storage.
    pub fn create(&self, req: &CreateRequest, now_ms: u64) -> Result<Created, BlobError> {
        let count = check_request(req, self.limits.max_file)?;
        let id = to_hex(&rand::random::<[u8; BLOB_ID_BYTES]>());
        let meta = Meta {
            id: id.clone(),
            sender: req.sender_id.clone(),
            size: req.size,
            chunk_size: req.chunk_size,
            chunk_count: count,
            created_ms: now_ms,
            expires_ms: now_ms
                .saturating_add(u64::try_from(self.limits.ttl.as_millis()).unwrap_or(u64::MAX)),
            upload_capability: random_secret(),
            download_capability: random_secret(),
            client_ref: req.client_ref.clone(),
            one_recipient: req.one_recipient,
        };
        {
            let mut index = self.lock();
            if let Some(r) = &req.client_ref {
                let known = index.refs.get(&(req.sender_id.clone(), r.clone())).cloned();
                if let Some(t) = known.and_then(|id| index.transfers.get(&id)) {
                    let m = &t.meta;
                    if (m.size, m.chunk_size, m.chunk_count, m.one_recipient)
                        != (req.size, req.chunk_size, count, req.one_recipient)
                    {
                        return Err(BlobError::Invalid(
                            "this clientRef names another transfer of different sizes".into(),
                        ));
                    }
                    // A repeat of a create whose answer was lost: the same transfer, nothing
                    // new reserved.
                    return Ok(Created {
                        transfer_id: m.id.clone(),
                        upload_capability: m.upload_capability.clone(),
                        download_capability: m.download_capability.clone(),
                        expires_at_ms: m.expires_ms,
                        new: false,
                    });
                }
            }
            let (sender_bytes, sender_count) = index
                .senders
                .get(&req.sender_id)
                .copied()
                .unwrap_or_default();
            if sender_count >= BLOB_TRANSFERS_PER_SENDER {
                return Err(BlobError::TooManyTransfers(sender_count));
            }
            if sender_bytes.saturating_add(req.size) > self.limits.per_sender {
                return Err(BlobError::SenderQuotaExceeded {
                    limit: self.limits.per_sender,
                });
            }
            if index.reserved.saturating_add(req.size) > self.limits.total {
                return Err(BlobError::QuotaExceeded {
                    limit: self.limits.total,
                });
            }
            // Reserved now, so racing creates cannot overshoot; undone below if the disk fails.
            index.insert(Transfer::new(
                meta.clone(),
                vec![false; to_usize(count)],
                count,
            ));
        }
        let dir = self.root.join(&id);
        let written = fs::create_dir(&dir)
            .and_then(|()| serde_json::to_vec(&meta).map_err(std::io::Error::other))
            .and_then(|bytes| write_atomic(&dir.join("meta.json"), &bytes));
        if let Err(e) = written {
            self.lock().remove(&id);
            let _ = fs::remove_dir_all(&dir);
            return Err(BlobError::io(e));
        }
        self.stats.transfers_created.fetch_add(1, Ordering::Relaxed);
        info!(transfer = %id, sender = %req.sender_id, size = req.size, chunks = count, "blob transfer created");
        Ok(Created {
            transfer_id: id,
            upload_capability: meta.upload_capability,
            download_capability: meta.download_capability,
            expires_at_ms: meta.expires_ms,
            new: true,
        })
    }

    /// Looks `id` up and checks `capability` (constant time) for `access`: the upload capability
    /// opens everything, the download capability reading (and deleting a one-recipient
    /// transfer).
    fn authorize<'a>(
        index: &'a mut Index,
        id: &str,
        capability: &str,
        access: Access,
    ) -> Result<&'a mut Transfer, BlobError> {
        if !valid_id(id) {
            return Err(BlobError::NotFound);
        }
        let t = index.transfers.get_mut(id).ok_or(BlobError::NotFound)?;
        let upload = ct_eq(&t.meta.upload_capability, capability);
        let download = ct_eq(&t.meta.download_capability, capability);
        match access {
            Access::Upload if upload => Ok(t),
            Access::Download if upload || download => Ok(t),
            Access::Delete if upload || (download && t.meta.one_recipient) => Ok(t),
            _ => Err(BlobError::Forbidden),
        }
    }

    /// The status of a transfer.
    ///
    /// # Errors
    /// Unknown transfer or wrong capability.
    pub fn status(&self, id: &str, capability: &str) -> Result<Status, BlobError> {
        let mut index = self.lock();
        let t = Self::authorize(&mut index, id, capability, Access::Download)?;
        Ok(Status {
            transfer_id: t.meta.id.clone(),
            size: t.meta.size,
            chunk_size: t.meta.chunk_size,
            chunk_count: t.meta.chunk_count,
            present: (0..t.meta.chunk_count)
                .filter(|&i| t.present.get(to_usize(i)).copied().unwrap_or(false))
                .collect(),
            complete: t.missing == 0,
            expires_at_ms: t.meta.expires_ms,
        })
    }

    /// Admits an upload of chunk `index`: `Ok(None)` when it is present already.
    pub(crate) fn begin_upload(
        &self,
        id: &str,
        capability: &str,
        index: u64,
    ) -> Result<Option<ChunkSlot>, BlobError> {
        let mut idx = self.lock();
        let t = Self::authorize(&mut idx, id, capability, Access::Upload)?;
        if index >= t.meta.chunk_count {
            return Err(BlobError::Invalid(format!(
                "chunk index {index} is out of range (the transfer has {} chunks)",
                t.meta.chunk_count
            )));
        }
        if t.present.get(to_usize(index)).copied().unwrap_or(false) {
            return Ok(None);
        }
        let dir = self.root.join(id);
        let nonce = to_hex(&rand::random::<[u8; 8]>());
        Ok(Some(ChunkSlot {
            sender: t.meta.sender.clone(),
            expected: t.meta.expected_len(index),
            temp: dir.join(format!("{index}.part-{nonce}")),
            dest: dir.join(index.to_string()),
        }))
    }

    /// The upload gate of `sender`: at most [`BLOB_UPLOADS_PER_SENDER`] chunk uploads at once.
    pub(crate) fn upload_gate(&self, sender: &ClientId) -> Arc<Semaphore> {
        upload_gate(&self.uploads, sender)
    }

    /// Moves a fully written, synced temporary chunk into place and records it.
    pub(crate) fn finish_upload(
        &self,
        id: &str,
        index: u64,
        slot: &ChunkSlot,
    ) -> Result<Uploaded, BlobError> {
        let mut idx = self.lock();
        // Renamed under the lock: a delete or expiry cannot remove the directory in between.
        let Some(t) = idx.transfers.get_mut(id) else {
            let _ = fs::remove_file(&slot.temp);
            return Err(BlobError::NotFound);
        };
        if let Err(e) = fs::rename(&slot.temp, &slot.dest) {
            let _ = fs::remove_file(&slot.temp);
            return Err(BlobError::io(e));
        }
        let mut already_present = true;
        if let Some(p) = t.present.get_mut(to_usize(index)) {
            if !*p {
                *p = true;
                t.missing -= 1;
                already_present = false;
            }
        }
        let complete = t.missing == 0;
        t.arrived.notify_waiters();
        if !already_present {
            idx.stored = idx.stored.saturating_add(slot.expected);
        }
        Ok(Uploaded {
            index,
            already_present,
            complete,
        })
    }

    /// The path of a present chunk, after the capability check; `Err(arrived)` while it is
    /// missing (a chunk index past the end is refused at once).
    fn chunk_or_waiter(
        &self,
        id: &str,
        capability: &str,
        index: u64,
    ) -> Result<Result<PathBuf, Arc<Notify>>, BlobError> {
        let mut idx = self.lock();
        let t = Self::authorize(&mut idx, id, capability, Access::Download)?;
        if index >= t.meta.chunk_count {
            return Err(BlobError::ChunkMissing(index));
        }
        if !t.present.get(to_usize(index)).copied().unwrap_or(false) {
            return Ok(Err(Arc::clone(&t.arrived)));
        }
        Ok(Ok(self.root.join(id).join(index.to_string())))
    }

    /// The path of chunk `index`, after the capability check. A chunk not uploaded yet is
    /// waited for up to `wait` (the sender may be uploading it right now: a pipelined file's
    /// recipient downloads behind the upload); then, or when [`BLOB_CHUNK_WAITERS`] downloads
    /// wait already, it is [`BlobError::ChunkMissing`]. A transfer deleted or expired meanwhile
    /// ends the wait with [`BlobError::NotFound`].
    ///
    /// # Errors
    /// Unknown transfer, wrong capability, or the chunk still missing.
    pub async fn wait_for_chunk(
        &self,
        id: &str,
        capability: &str,
        index: u64,
        wait: Duration,
    ) -> Result<PathBuf, BlobError> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut permit = None;
        loop {
            let arrived = match self.chunk_or_waiter(id, capability, index)? {
                Ok(path) => return Ok(path),
                Err(arrived) => arrived,
            };
            if permit.is_none() {
                match Arc::clone(&self.chunk_waiters).try_acquire_owned() {
                    Ok(p) => permit = Some(p),
                    Err(_) => return Err(BlobError::ChunkMissing(index)),
                }
            }
            let notified = arrived.notified();
            tokio::pin!(notified);
            // Registered before the second look, so an upload finishing in between wakes us.
            notified.as_mut().enable();
            match self.chunk_or_waiter(id, capability, index)? {
                Ok(path) => return Ok(path),
                Err(_) => {
                    if tokio::time::timeout_at(deadline, notified).await.is_err() {
                        return Err(BlobError::ChunkMissing(index));
                    }
                }
            }
        }
    }

    /// Deletes a transfer and its bytes (the upload capability; the download capability too for
    /// a one-recipient transfer, whose recipient deletes it once its copy is verified).
    ///
    /// # Errors
    /// Unknown transfer or wrong capability.
    pub fn delete(&self, id: &str, capability: &str) -> Result<(), BlobError> {
        let mut idx = self.lock();
        Self::authorize(&mut idx, id, capability, Access::Delete)?;
        idx.remove(id);
        // Removed under the lock so that no upload renames into it meanwhile.
        let _ = fs::remove_dir_all(self.root.join(id));
        info!(transfer = %id, "blob transfer deleted");
        Ok(())
    }

    /// Deletes every transfer expired at `now_ms` (Unix milliseconds), bytes included; returns
    /// how many.
    pub fn purge_expired(&self, now_ms: u64) -> usize {
        let mut idx = self.lock();
        let expired: Vec<String> = idx
            .transfers
            .values()
            .filter(|t| t.meta.expires_ms <= now_ms)
            .map(|t| t.meta.id.clone())
            .collect();
        for id in &expired {
            idx.remove(id);
            if let Err(e) = fs::remove_dir_all(self.root.join(id)) {
                warn!(transfer = %id, error = %e, "cannot remove an expired blob transfer");
            }
        }
        self.stats
            .transfers_expired
            .fetch_add(expired.len() as u64, Ordering::Relaxed);
        expired.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &Path) -> BlobStore {
        BlobStore::open(
            dir,
            BlobLimits {
                total: u64::MAX,
                per_sender: u64::MAX,
                max_file: u64::MAX,
                ttl: Duration::from_secs(60),
            },
        )
        .expect("open")
    }

    /// The per-sender upload gate: a sender with its uploads all running waits for a slot, while
    /// another sender is not slowed at all; a finished upload lets the waiting one in.
    #[tokio::test]
    async fn one_sender_over_its_concurrent_uploads_waits_and_others_do_not() {
        let dir = tempfile::tempdir().expect("dir");
        let store = store(dir.path());
        let alice = ClientId::new("alice").expect("id");
        let bob = ClientId::new("bob").expect("id");
        let mut held = Vec::new();
        for _ in 0..BLOB_UPLOADS_PER_SENDER {
            held.push(
                store
                    .upload_gate(&alice)
                    .try_acquire_owned()
                    .expect("a free slot"),
            );
        }
        let gate = store.upload_gate(&alice);
        assert!(gate.clone().try_acquire_owned().is_err(), "alice waits");
        assert!(
            store.upload_gate(&bob).try_acquire_owned().is_ok(),
            "bob does not"
        );
        let waiting = tokio::spawn(async move { gate.acquire_owned().await.is_ok() });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        held.pop();
        assert!(
            waiting.await.expect("task"),
            "a finished upload frees a slot"
        );
    }

    /// Ids that are not exactly 32 lowercase hex digits never reach a path.
    #[test]
    fn only_hex_ids_are_valid() {
        assert!(valid_id(&"0123456789abcdef".repeat(2)));
        for bad in [
            "",
            "..",
            "../../etc/passwd",
            &"A".repeat(32),
            &"0".repeat(31),
            &"0".repeat(33),
        ] {
            assert!(!valid_id(bad), "{bad}");
        }
        assert!(!valid_id(&format!("{}/..", "0".repeat(29))));
    }
}
