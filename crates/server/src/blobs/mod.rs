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

mod store;
mod tokens;

pub(crate) use store::ChunkSlot;
pub use store::{BlobLimits, BlobStats, BlobStore, CreateRequest, Created, Status, Uploaded};
pub use tokens::Tokens;

use axum::http::StatusCode;

/// Why a blob request was refused. Each maps to an HTTP status and a typed `errorType`.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// Blobs need `--data-dir`.
    #[error("this server keeps no files (it runs without --data-dir)")]
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
            Self::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
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
            Self::Io(_) => "INTERNAL_ERROR",
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
