//! The blob store: encrypted files in chunks, on disk under `DATA_DIR/blobs/`, served over HTTP on
//! the server's one port (`blob_http`). The server only ever sees ciphertext: clients seal each chunk
//! before upload (issue 11), so it learns sizes, chunk counts, timing and which verified id created
//! a transfer, nothing else.
//!
//! - A verified id gets a short-lived token over its WebSocket session (`blob_token` frame,
//!   [`Tokens`]) and shows it with its id to `POST /blobs`, which checks the per-file limit and the
//!   quotas first and returns two random capabilities: one to upload (and delete), one to download.
//! - Chunks are uploaded by index in any order, each streamed to a temporary file, synced and
//!   renamed into place (atomic); a chunk already present is not written again (idempotent, so
//!   resuming after a cut re-sends only what is missing).
//! - Transfers expire (`--blob-ttl`): the sweeper deletes their bytes.
//!
//! Disk layout: `blobs/<id>/meta.json` (sizes, sender, expiry, the two capabilities) and
//! `blobs/<id>/<index>` per chunk. A restart reloads every transfer from its `meta.json`.
//!
//! On a node of several (`--redis`), [`SharedStore`] keeps the chunk files on a directory every
//! node mounts (`--blob-dir`) and the rest (transfers, chunks present, quotas, `clientRef`s,
//! expiry, tokens) in Redis, so any node serves any request; [`Blobs`] is the one face the HTTP
//! endpoints and the sweeper use for either store.

mod shared;
mod store;
mod tokens;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use shared::SharedStore;
pub(crate) use store::ChunkSlot;
pub use store::{BlobLimits, BlobStats, BlobStore, CreateRequest, Created, Status, Uploaded};
pub use tokens::Tokens;

use axum::http::StatusCode;
use lattice_protocol::ClientId;
use tokio::sync::Semaphore;

/// The blob store a server uses: its own ([`BlobStore`], one node) or the one shared by every
/// node ([`SharedStore`]). The single-node store's blocking file work runs on the blocking pool.
#[derive(Debug)]
pub enum Blobs {
    /// One node: index in memory, `meta.json` per transfer.
    Local(Arc<BlobStore>),
    /// A node of several: records in Redis, bytes on the shared directory.
    Shared(Arc<SharedStore>),
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BlobError> + Send + 'static,
) -> Result<T, BlobError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BlobError::Io(std::io::Error::other(e)))?
}

impl Blobs {
    /// Creates a transfer for `req.sender_id` (already authenticated) at `now_ms`.
    ///
    /// # Errors
    /// A malformed request, a limit, storage.
    pub async fn create(&self, req: CreateRequest, now_ms: u64) -> Result<Created, BlobError> {
        match self {
            Self::Local(s) => {
                let s = Arc::clone(s);
                blocking(move || s.create(&req, now_ms)).await
            }
            Self::Shared(s) => s.create(&req).await,
        }
    }

    /// The status of a transfer.
    ///
    /// # Errors
    /// Unknown transfer or wrong capability.
    pub async fn status(&self, id: &str, capability: &str) -> Result<Status, BlobError> {
        match self {
            Self::Local(s) => s.status(id, capability),
            Self::Shared(s) => s.status(id, capability).await,
        }
    }

    /// Deletes a transfer and its bytes.
    ///
    /// # Errors
    /// Unknown transfer or wrong capability.
    pub async fn delete(&self, id: String, capability: String) -> Result<(), BlobError> {
        match self {
            Self::Local(s) => {
                let s = Arc::clone(s);
                blocking(move || s.delete(&id, &capability)).await
            }
            Self::Shared(s) => s.delete(&id, &capability).await,
        }
    }

    /// Admits an upload of chunk `index`: `Ok(None)` when it is present already.
    pub(crate) async fn begin_upload(
        &self,
        id: &str,
        capability: &str,
        index: u64,
    ) -> Result<Option<ChunkSlot>, BlobError> {
        match self {
            Self::Local(s) => s.begin_upload(id, capability, index),
            Self::Shared(s) => s.begin_upload(id, capability, index).await,
        }
    }

    /// Puts a written, synced chunk in place and records it.
    pub(crate) async fn finish_upload(
        &self,
        id: String,
        index: u64,
        slot: ChunkSlot,
    ) -> Result<Uploaded, BlobError> {
        match self {
            Self::Local(s) => {
                let s = Arc::clone(s);
                blocking(move || s.finish_upload(&id, index, &slot)).await
            }
            Self::Shared(s) => s.finish_upload(&id, index, &slot).await,
        }
    }

    /// The upload gate of `sender` (per node).
    pub(crate) fn upload_gate(&self, sender: &ClientId) -> Arc<Semaphore> {
        match self {
            Self::Local(s) => s.upload_gate(sender),
            Self::Shared(s) => s.upload_gate(sender),
        }
    }

    /// Uploads running on this server.
    pub(crate) fn uploads_total(&self) -> Arc<Semaphore> {
        match self {
            Self::Local(s) => Arc::clone(&s.uploads_total),
            Self::Shared(s) => Arc::clone(&s.uploads_total),
        }
    }

    /// Downloads running on this server.
    pub(crate) fn downloads_total(&self) -> Arc<Semaphore> {
        match self {
            Self::Local(s) => Arc::clone(&s.downloads_total),
            Self::Shared(s) => Arc::clone(&s.downloads_total),
        }
    }

    /// The path of chunk `index`, waiting (bounded) for one not uploaded yet.
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
        match self {
            Self::Local(s) => s.wait_for_chunk(id, capability, index, wait).await,
            Self::Shared(s) => s.wait_for_chunk(id, capability, index, wait).await,
        }
    }

    /// Deletes what expired at `now_ms` (on several nodes: what Redis's clock says expired,
    /// each transfer by one node); how many this server deleted.
    pub async fn purge_expired(&self, now_ms: u64) -> usize {
        match self {
            Self::Local(s) => {
                let s = Arc::clone(s);
                blocking(move || Ok(s.purge_expired(now_ms)))
                    .await
                    .unwrap_or(0)
            }
            Self::Shared(s) => s.purge_expired().await,
        }
    }

    /// This server's counters.
    pub fn stats(&self) -> &BlobStats {
        match self {
            Self::Local(s) => &s.stats,
            Self::Shared(s) => &s.stats,
        }
    }

    /// Bytes of chunks stored (on several nodes: by every node, as of this node's last sweep).
    pub fn stored_bytes(&self) -> u64 {
        match self {
            Self::Local(s) => s.stored_bytes(),
            Self::Shared(s) => s.stored_bytes(),
        }
    }

    /// Live transfers (on several nodes: of every node, as of this node's last sweep).
    pub fn transfer_count(&self) -> usize {
        match self {
            Self::Local(s) => s.transfer_count(),
            Self::Shared(s) => s.transfer_count(),
        }
    }
}

/// Why a blob request was refused. Each maps to an HTTP status and a typed `errorType`.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// Blobs need `--data-dir` (one node) or `--blob-dir` (a node of several).
    #[error("this server keeps no files (it runs without --data-dir, or as several nodes without a shared --blob-dir)")]
    Disabled,
    /// No token, a wrong or expired one, or one for another id.
    #[error("missing, wrong or expired blob token (ask for one with a blob_token frame)")]
    Unauthorized,
    /// The capability does not open this transfer (or this operation).
    #[error("missing or wrong capability for this transfer")]
    Forbidden,
    /// No such transfer (never created, deleted or expired).
    #[error("no such transfer")]
    NotFound,
    /// The chunk has not been uploaded (yet).
    #[error("chunk {0} is not uploaded")]
    ChunkMissing(u64),
    /// A malformed request.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// Over the per-file limit.
    #[error("a file of {size} bytes is over this server's limit of {limit} bytes")]
    FileTooLarge {
        /// Declared size.
        size: u64,
        /// `--blob-max-file`.
        limit: u64,
    },
    /// The store's total quota is used up.
    #[error("the server's file storage is full ({limit} bytes)")]
    QuotaExceeded {
        /// `--blob-quota`.
        limit: u64,
    },
    /// This sender's quota is used up.
    #[error("your files on this server would exceed your quota of {limit} bytes")]
    SenderQuotaExceeded {
        /// `--blob-sender-quota`.
        limit: u64,
    },
    /// This sender has too many live transfers.
    #[error("you have {0} transfers on this server already; delete some or wait for expiry")]
    TooManyTransfers(usize),
    /// A chunk's length is not the one its index requires.
    #[error("chunk {index} must be exactly {expected} bytes")]
    ChunkSize {
        /// The index.
        index: u64,
        /// Its length.
        expected: u64,
    },
    /// The upload's body broke off.
    #[error("the upload was cut short")]
    Truncated,
    /// The disk is full.
    #[error("the server's disk is full")]
    DiskFull,
    /// Another storage failure.
    #[error("storage error: {0}")]
    Io(#[source] std::io::Error),
    /// On a node of several: Redis, where the transfers are recorded, does not answer.
    #[error("the server's file records are unavailable; try again")]
    Unavailable,
    /// On a node of several: this node's blob directory is not the one the other nodes use.
    #[error("the blob directory is not shared with the other nodes: {0}")]
    NotShared(String),
}

impl BlobError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Disabled => StatusCode::SERVICE_UNAVAILABLE,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NotFound | Self::ChunkMissing(_) => StatusCode::NOT_FOUND,
            Self::Invalid(_) | Self::ChunkSize { .. } | Self::Truncated => StatusCode::BAD_REQUEST,
            Self::FileTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::QuotaExceeded { .. } | Self::DiskFull => StatusCode::INSUFFICIENT_STORAGE,
            Self::SenderQuotaExceeded { .. } | Self::TooManyTransfers(_) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Self::Io(_) | Self::NotShared(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The `errorType` of the JSON body.
    pub fn error_type(&self) -> &'static str {
        match self {
            Self::Disabled => "BLOBS_DISABLED",
            Self::Unauthorized => "UNAUTHORIZED",
            Self::Forbidden => "FORBIDDEN",
            Self::NotFound => "TRANSFER_NOT_FOUND",
            Self::ChunkMissing(_) => "CHUNK_MISSING",
            Self::Invalid(_) => "INVALID_REQUEST",
            Self::FileTooLarge { .. } => "FILE_TOO_LARGE",
            Self::QuotaExceeded { .. } => "QUOTA_EXCEEDED",
            Self::SenderQuotaExceeded { .. } => "SENDER_QUOTA_EXCEEDED",
            Self::TooManyTransfers(_) => "TOO_MANY_TRANSFERS",
            Self::ChunkSize { .. } => "CHUNK_SIZE",
            Self::Truncated => "TRUNCATED",
            Self::DiskFull => "DISK_FULL",
            Self::Io(_) | Self::NotShared(_) | Self::Unavailable => "INTERNAL_ERROR",
        }
    }

    /// An I/O error, with a full disk told apart.
    pub(crate) fn io(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::StorageFull || e.raw_os_error() == Some(28) {
            Self::DiskFull
        } else {
            Self::Io(e)
        }
    }
}
