//! The blob store of a node of several (`--redis`): the same transfers, capabilities, limits and
//! answers as [`super::BlobStore`], with the chunk files on a directory every node mounts
//! (`--blob-dir`, NFS or a shared volume) and everything else in Redis
//! ([`crate::cluster::blobs::RedisBlobs`]). No blob byte goes to Redis.
//!
//! - A chunk is streamed to a temporary file in the transfer's directory, synced, and
//!   **hard-linked** to its final name: a chunk once in place is never replaced (a reader on
//!   another host never sees a file change under it), and of two uploads of one chunk through
//!   two nodes, the second finds the name taken and drops its copy. Then Redis records it
//!   present (its bytes counted once).
//! - A download of a chunk not there yet waits ([`crate::limits::BLOB_CHUNK_WAIT`], at most
//!   [`crate::limits::BLOB_CHUNK_WAITERS`] per node): an upload through this node wakes it at once,
//!   one through another node is seen within [`crate::limits::BLOB_REMOTE_POLL`].
//! - Deletion and expiry: one node claims the transfer in Redis and only it removes the bytes
//!   (a claim left by a killed node is taken over after [`crate::limits::BLOB_DELETE_LEASE`]).
//! - At start, the node checks that its directory is the one the other nodes use: the first
//!   node writes a random id to `volume-id` in it and records it in Redis; a node whose
//!   directory holds another id (or none, while Redis has one) refuses to start its blob store.

use std::collections::HashMap;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lattice_protocol::ClientId;
use tokio::sync::{Notify, Semaphore};
use tracing::{info, warn};

use super::store::{
    check_request, ct_eq, expected_len, random_secret, to_hex, upload_gate, valid_id, Access,
};
use super::{
    BlobError, BlobLimits, BlobStats, ChunkSlot, CreateRequest, Created, Status, Uploaded,
};
use crate::cluster::blobs::{
    BlobQuotas, CreateOutcome, DropClaim, Landed, NewTransfer, RedisBlobs, TransferRecord,
    VolumeCheck,
};
use crate::cluster::ClusterError;
use crate::limits::{
    BLOB_CHUNK_WAITERS, BLOB_DELETE_LEASE, BLOB_DOWNLOADS_TOTAL, BLOB_EXPIRY_BATCH, BLOB_ID_BYTES,
    BLOB_REMOTE_POLL, BLOB_TRANSFERS_PER_SENDER, BLOB_UPLOADS_TOTAL,
};

/// The file in the shared directory naming it (see the module docs).
const VOLUME_FILE: &str = "volume-id";

impl From<ClusterError> for BlobError {
    fn from(e: ClusterError) -> Self {
        warn!(error = %e, "blob records in Redis unavailable");
        Self::Unavailable
    }
}

/// The blob store of a node of several. See the [module docs](self).
#[derive(Debug)]
pub struct SharedStore {
    root: PathBuf,
    limits: BlobLimits,
    redis: RedisBlobs,
    // std Mutex: a map lookup per upload; never held across an await.
    uploads: Mutex<HashMap<ClientId, Arc<Semaphore>>>,
    /// Uploads running on this node.
    pub(crate) uploads_total: Arc<Semaphore>,
    /// Downloads running on this node.
    pub(crate) downloads_total: Arc<Semaphore>,
    chunk_waiters: Arc<Semaphore>,
    /// Per transfer with a download waiting on this node: woken when a chunk lands here.
    // std Mutex: a map lookup per wait and per landed chunk; never held across an await.
    arrivals: Mutex<HashMap<String, Arc<Notify>>>,
    /// This node's counters.
    pub stats: BlobStats,
    /// Every node's stored bytes and live transfers, as of this node's last sweep.
    stored: AtomicU64,
    transfers: AtomicU64,
}

impl SharedStore {
    /// Opens (creating) the shared directory `dir`, checks it is the one the other nodes use,
    /// and reads the totals.
    ///
    /// # Errors
    /// The directory cannot be created or read, it is not the other nodes' directory
    /// ([`BlobError::NotShared`]), or Redis fails.
    pub async fn open(
        dir: &Path,
        limits: BlobLimits,
        redis: RedisBlobs,
    ) -> Result<Self, BlobError> {
        let volume = {
            let dir = dir.to_path_buf();
            tokio::task::spawn_blocking(move || volume_id(&dir))
                .await
                .map_err(|e| BlobError::Io(std::io::Error::other(e)))??
        };
        match redis.check_volume(&volume).await? {
            VolumeCheck::Same => {}
            VolumeCheck::Other(theirs) => {
                return Err(BlobError::NotShared(format!(
                    "{} holds blob volume {volume}, but the other nodes use volume {theirs}: \
                     every node must mount the same --blob-dir (or, for a new one on purpose, \
                     delete the Redis key lattice:{{blobs}}:volume)",
                    dir.display()
                )));
            }
        }
        let store = Self {
            root: dir.to_path_buf(),
            limits,
            redis,
            uploads: Mutex::default(),
            uploads_total: Arc::new(Semaphore::new(BLOB_UPLOADS_TOTAL)),
            downloads_total: Arc::new(Semaphore::new(BLOB_DOWNLOADS_TOTAL)),
            chunk_waiters: Arc::new(Semaphore::new(BLOB_CHUNK_WAITERS)),
            arrivals: Mutex::default(),
            stats: BlobStats::default(),
            stored: AtomicU64::new(0),
            transfers: AtomicU64::new(0),
        };
        store.refresh_totals().await;
        info!(dir = %dir.display(), %volume, "shared blob store opened");
        Ok(store)
    }

    /// Every node's stored bytes, as of this node's last sweep.
    pub fn stored_bytes(&self) -> u64 {
        self.stored.load(Ordering::Relaxed)
    }

    /// Every node's live transfers, as of this node's last sweep.
    pub fn transfer_count(&self) -> usize {
        usize::try_from(self.transfers.load(Ordering::Relaxed)).unwrap_or(usize::MAX)
    }

    async fn refresh_totals(&self) {
        match self.redis.totals().await {
            Ok((stored, count)) => {
                self.stored.store(stored, Ordering::Relaxed);
                self.transfers.store(count, Ordering::Relaxed);
            }
            Err(e) => warn!(error = %e, "blob totals not read"),
        }
    }

    /// Creates a transfer for `req.sender_id` (already authenticated): the same checks as one
    /// node, with the quotas over every node's transfers.
    ///
    /// # Errors
    /// A malformed request, a limit, storage, or Redis.
    pub async fn create(&self, req: &CreateRequest) -> Result<Created, BlobError> {
        let count = check_request(req, self.limits.max_file)?;
        let id = to_hex(&rand::random::<[u8; BLOB_ID_BYTES]>());
        let (up, down) = (random_secret(), random_secret());
        let t = NewTransfer {
            id: &id,
            sender: &req.sender_id,
            size: req.size,
            chunk_size: req.chunk_size,
            chunk_count: count,
            ttl: self.limits.ttl,
            upload_capability: &up,
            download_capability: &down,
            client_ref: req.client_ref.as_deref(),
            one_recipient: req.one_recipient,
        };
        let quotas = BlobQuotas {
            transfers_per_sender: BLOB_TRANSFERS_PER_SENDER,
            per_sender: self.limits.per_sender,
            total: self.limits.total,
        };
        let expires_ms = match self.redis.create(&t, quotas).await? {
            CreateOutcome::Created { expires_ms } => expires_ms,
            CreateOutcome::Known(known) => return self.known(req, count, &known).await,
            CreateOutcome::TooManyTransfers(n) => return Err(BlobError::TooManyTransfers(n)),
            CreateOutcome::SenderQuota => {
                return Err(BlobError::SenderQuotaExceeded {
                    limit: self.limits.per_sender,
                })
            }
            CreateOutcome::TotalQuota => {
                return Err(BlobError::QuotaExceeded {
                    limit: self.limits.total,
                })
            }
        };
        let dir = self.root.join(&id);
        let made = tokio::task::spawn_blocking(move || fs::create_dir(&dir))
            .await
            .map_err(|e| BlobError::Io(std::io::Error::other(e)))?;
        if let Err(e) = made {
            // Undone: the quota it reserved goes back.
            if let Ok(DropClaim::Dropped) = self.redis.claim_drop(&id, BLOB_DELETE_LEASE).await {
                let _ = self.redis.dropped(&id).await;
            }
            return Err(BlobError::io(e));
        }
        self.stats.transfers_created.fetch_add(1, Ordering::Relaxed);
        info!(transfer = %id, sender = %req.sender_id, size = req.size, chunks = count, "blob transfer created");
        Ok(Created {
            transfer_id: id,
            upload_capability: up,
            download_capability: down,
            expires_at_ms: expires_ms,
            new: true,
        })
    }

    /// A create repeated with its `clientRef` (on any node): the same transfer, if the sizes
    /// match.
    async fn known(&self, req: &CreateRequest, count: u64, id: &str) -> Result<Created, BlobError> {
        let m = self
            .redis
            .look(id, None)
            .await?
            .ok_or(BlobError::NotFound)?;
        if (m.size, m.chunk_size, m.chunk_count, m.one_recipient)
            != (req.size, req.chunk_size, count, req.one_recipient)
        {
            return Err(BlobError::Invalid(
                "this clientRef names another transfer of different sizes".into(),
            ));
        }
        Ok(Created {
            transfer_id: id.to_owned(),
            upload_capability: m.upload_capability,
            download_capability: m.download_capability,
            expires_at_ms: m.expires_ms,
            new: false,
        })
    }

    /// Transfer `id`'s record (with chunk `index`'s presence, or every chunk's with `all`)
    /// once `capability` opens it for `access` (compared in constant time).
    async fn authorize(
        &self,
        id: &str,
        capability: &str,
        access: Access,
        index: Option<u64>,
        all: bool,
    ) -> Result<TransferRecord, BlobError> {
        if !valid_id(id) {
            return Err(BlobError::NotFound);
        }
        let record = if all {
            self.redis.look_all(id).await?
        } else {
            self.redis.look(id, index).await?
        };
        let t = record.ok_or(BlobError::NotFound)?;
        let upload = ct_eq(&t.upload_capability, capability);
        let download = ct_eq(&t.download_capability, capability);
        match access {
            Access::Upload if upload => Ok(t),
            Access::Download if upload || download => Ok(t),
            Access::Delete if upload || (download && t.one_recipient) => Ok(t),
            _ => Err(BlobError::Forbidden),
        }
    }

    /// The status of a transfer.
    ///
    /// # Errors
    /// Unknown transfer, wrong capability, or Redis.
    pub async fn status(&self, id: &str, capability: &str) -> Result<Status, BlobError> {
        let t = self
            .authorize(id, capability, Access::Download, None, true)
            .await?;
        Ok(Status {
            transfer_id: id.to_owned(),
            size: t.size,
            chunk_size: t.chunk_size,
            chunk_count: t.chunk_count,
            present: t.present,
            complete: t.missing == 0,
            expires_at_ms: t.expires_ms,
        })
    }

    /// Admits an upload of chunk `index`: `Ok(None)` when it is present already.
    pub(crate) async fn begin_upload(
        &self,
        id: &str,
        capability: &str,
        index: u64,
    ) -> Result<Option<ChunkSlot>, BlobError> {
        let t = self
            .authorize(id, capability, Access::Upload, Some(index), false)
            .await?;
        if index >= t.chunk_count {
            return Err(BlobError::Invalid(format!(
                "chunk index {index} is out of range (the transfer has {} chunks)",
                t.chunk_count
            )));
        }
        if t.chunk_present {
            return Ok(None);
        }
        let dir = self.root.join(id);
        let nonce = to_hex(&rand::random::<[u8; 8]>());
        Ok(Some(ChunkSlot {
            sender: t.sender,
            expected: expected_len(t.size, t.chunk_size, t.chunk_count, index),
            temp: dir.join(format!("{index}.part-{nonce}")),
            dest: dir.join(index.to_string()),
        }))
    }

    /// The upload gate of `sender` on this node.
    pub(crate) fn upload_gate(&self, sender: &ClientId) -> Arc<Semaphore> {
        upload_gate(&self.uploads, sender)
    }

    /// Puts a fully written, synced temporary chunk in place (a link: never replacing a chunk
    /// there already) and records it present.
    pub(crate) async fn finish_upload(
        &self,
        id: &str,
        index: u64,
        slot: &ChunkSlot,
    ) -> Result<Uploaded, BlobError> {
        let (temp, dest) = (slot.temp.clone(), slot.dest.clone());
        let linked = tokio::task::spawn_blocking(move || {
            let linked = match fs::hard_link(&temp, &dest) {
                // Another upload of this chunk (here or through another node) put it in place.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
                // The transfer's directory is gone: deleted or expired meanwhile.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(BlobError::NotFound),
                other => other.map_err(BlobError::io),
            };
            let _ = fs::remove_file(&temp);
            linked
        })
        .await
        .map_err(|e| BlobError::Io(std::io::Error::other(e)))?;
        linked?;
        let landed = self.redis.land(id, index, slot.expected).await?;
        if let Some(arrived) = self.lock_arrivals().get(id) {
            arrived.notify_waiters();
        }
        match landed {
            Landed::New { complete } => Ok(Uploaded {
                index,
                already_present: false,
                complete,
            }),
            Landed::Already { complete } => Ok(Uploaded {
                index,
                already_present: true,
                complete,
            }),
            Landed::Gone => {
                // Deleted while this chunk was written: what it put there goes too.
                let (dest, dir) = (slot.dest.clone(), self.root.join(id));
                let _ = tokio::task::spawn_blocking(move || {
                    let _ = fs::remove_file(dest);
                    let _ = fs::remove_dir(dir);
                })
                .await;
                Err(BlobError::NotFound)
            }
        }
    }

    fn lock_arrivals(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Notify>>> {
        self.arrivals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// This node's wake-up for downloads of `id` (dropped once no download waits on it).
    fn arrival(&self, id: &str) -> Arc<Notify> {
        let mut arrivals = self.lock_arrivals();
        arrivals.retain(|_, n| Arc::strong_count(n) > 1);
        Arc::clone(arrivals.entry(id.to_owned()).or_default())
    }

    /// The path of chunk `index`, after the capability check, waiting up to `wait` for one not
    /// there yet (as [`super::BlobStore::wait_for_chunk`]; one landing through another node is
    /// seen within [`BLOB_REMOTE_POLL`]).
    ///
    /// # Errors
    /// Unknown transfer, wrong capability, the chunk still missing, or Redis.
    pub async fn wait_for_chunk(
        &self,
        id: &str,
        capability: &str,
        index: u64,
        wait: Duration,
    ) -> Result<PathBuf, BlobError> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut permit = None;
        let mut arrived: Option<Arc<Notify>> = None;
        loop {
            let wake = arrived.clone();
            let notified = wake.as_deref().map(Notify::notified);
            tokio::pin!(notified);
            if let Some(n) = notified.as_mut().as_pin_mut() {
                // Registered before the look, so an upload landing here in between wakes us.
                n.enable();
            }
            let t = self
                .authorize(id, capability, Access::Download, Some(index), false)
                .await?;
            if index >= t.chunk_count {
                return Err(BlobError::ChunkMissing(index));
            }
            if t.chunk_present {
                return Ok(self.root.join(id).join(index.to_string()));
            }
            if permit.is_none() {
                match Arc::clone(&self.chunk_waiters).try_acquire_owned() {
                    Ok(p) => permit = Some(p),
                    Err(_) => return Err(BlobError::ChunkMissing(index)),
                }
                arrived = Some(self.arrival(id));
                // The first look had no wake-up registered: look again at once with one.
                continue;
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(BlobError::ChunkMissing(index));
            }
            let until = deadline.min(now + BLOB_REMOTE_POLL);
            if let Some(n) = notified.as_mut().as_pin_mut() {
                let _ = tokio::time::timeout_at(until, n).await;
            }
        }
    }

    /// Deletes a transfer (the same capabilities as one node): its records go at once, its
    /// bytes are removed by this node, which claimed it.
    ///
    /// # Errors
    /// Unknown transfer, wrong capability, or Redis.
    pub async fn delete(&self, id: &str, capability: &str) -> Result<(), BlobError> {
        self.authorize(id, capability, Access::Delete, None, false)
            .await?;
        match self.redis.claim_drop(id, BLOB_DELETE_LEASE).await? {
            DropClaim::Dropped | DropClaim::Reclaimed => {
                self.remove_bytes(id).await;
                info!(transfer = %id, "blob transfer deleted");
                Ok(())
            }
            // Deleted by someone else at the same moment.
            DropClaim::NotMine => Err(BlobError::NotFound),
        }
    }

    /// Removes a claimed transfer's directory, then finishes its deletion in Redis.
    async fn remove_bytes(&self, id: &str) {
        let dir = self.root.join(id);
        let removed = tokio::task::spawn_blocking(move || match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        })
        .await;
        match removed {
            Ok(Ok(())) => {
                if let Err(e) = self.redis.dropped(id).await {
                    warn!(transfer = %id, error = %e, "blob deletion not finished in Redis");
                }
            }
            Ok(Err(e)) => {
                warn!(transfer = %id, error = %e, "cannot remove a blob transfer's bytes");
            }
            Err(e) => warn!(transfer = %id, error = %e, "blob removal task failed"),
        }
        if let Some(arrived) = self.lock_arrivals().get(id) {
            arrived.notify_waiters();
        }
    }

    /// Claims and deletes up to [`BLOB_EXPIRY_BATCH`] expired transfers (and deletions another
    /// node left unfinished); how many this node expired. Every node runs it: each transfer is
    /// claimed by one.
    pub async fn purge_expired(&self) -> usize {
        let due = match self.redis.due(BLOB_EXPIRY_BATCH).await {
            Ok(d) => d,
            Err(e) => {
                warn!(error = %e, "blob expiry skipped");
                return 0;
            }
        };
        let mut expired = 0;
        for id in due {
            if !valid_id(&id) {
                continue;
            }
            match self.redis.claim_drop(&id, BLOB_DELETE_LEASE).await {
                Ok(DropClaim::Dropped) => {
                    expired += 1;
                    self.remove_bytes(&id).await;
                }
                Ok(DropClaim::Reclaimed) => {
                    info!(transfer = %id, "finishing a deletion another node left");
                    self.remove_bytes(&id).await;
                }
                Ok(DropClaim::NotMine) => {}
                Err(e) => {
                    warn!(transfer = %id, error = %e, "blob expiry claim failed");
                    break;
                }
            }
        }
        self.stats
            .transfers_expired
            .fetch_add(expired as u64, Ordering::Relaxed);
        self.refresh_totals().await;
        expired
    }
}

/// The id in `dir`'s `volume-id`, written (random) if there is none.
fn volume_id(dir: &Path) -> Result<String, BlobError> {
    fs::create_dir_all(dir).map_err(BlobError::io)?;
    let path = dir.join(VOLUME_FILE);
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    match options.open(&path) {
        Ok(mut f) => {
            let id = to_hex(&rand::random::<[u8; 16]>());
            f.write_all(id.as_bytes()).map_err(BlobError::io)?;
            f.sync_all().map_err(BlobError::io)?;
            Ok(id)
        }
        // Another node made it (maybe at this moment: then read until it is written).
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            for _ in 0..50 {
                let id = fs::read_to_string(&path).map_err(BlobError::io)?;
                let id = id.trim();
                if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Ok(id.to_owned());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(BlobError::NotShared(format!(
                "{} is not a blob volume id",
                path.display()
            )))
        }
        Err(e) => Err(BlobError::io(e)),
    }
}
