//! The blob store's ([`crate::blobs`]) HTTP endpoints (docs/protocol.md, "Blob store"):
//!
//! - `POST /blobs` (`Authorization: Bearer BLOB_TOKEN`, JSON [`CreateRequest`]) → [`Created`]
//!   (`201`; `200` for a repeat with the same `clientRef`)
//! - `GET /blobs/{id}` (either capability) → [`Status`]
//! - `DELETE /blobs/{id}` (upload capability; the download capability of a one-recipient
//!   transfer)
//! - `PUT /blobs/{id}/chunks/{index}` (upload capability, the chunk's bytes) → [`Uploaded`]
//! - `GET /blobs/{id}/chunks/{index}` (either capability) → the chunk's bytes, waiting (bounded:
//!   `BLOB_CHUNK_WAIT`) for one not uploaded yet
//!
//! Every refusal is a [`BlobError`]: its HTTP status and `{"errorType": ..., "error": ...}`.

use std::io::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use futures_util::StreamExt as _;
use lattice_protocol::limits::MAX_BLOB_CHUNK_BYTES;
use serde_json::json;
use tracing::{debug, warn};

use crate::blobs::{BlobError, Blobs, ChunkSlot, CreateRequest, Uploaded};
use crate::limits::{BLOB_BODY_IDLE, BLOB_CHUNK_WAIT, MAX_BLOB_CREATE_BODY};
use crate::state::ServerState;

/// Bytes gathered from the request body before one write to the temporary file.
const WRITE_BATCH: usize = 1024 * 1024;

/// Pieces of the request body gathered before one write (a body that trickles in small pieces
/// is written more often rather than held as many small buffers).
const WRITE_PIECES: usize = 256;

impl IntoResponse for BlobError {
    fn into_response(self) -> Response {
        if let Self::Io(e) = &self {
            warn!(error = %e, "blob storage error");
        }
        (
            self.status(),
            Json(json!({ "errorType": self.error_type(), "error": self.to_string() })),
        )
            .into_response()
    }
}

/// The blob routes, to merge into the server's router.
pub fn routes() -> Router<Arc<ServerState>> {
    Router::new()
        .route("/blobs", axum::routing::post(create))
        .route("/blobs/{id}", get(status).delete(delete))
        .route("/blobs/{id}/chunks/{index}", put(upload).get(download))
        .layer(DefaultBodyLimit::max(MAX_BLOB_CREATE_BODY))
}

fn store(state: &ServerState) -> Result<Arc<Blobs>, BlobError> {
    state.blobs.clone().ok_or(BlobError::Disabled)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BlobError> + Send + 'static,
) -> Result<T, BlobError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BlobError::Io(std::io::Error::other(e)))?
}

fn parse_index(raw: &str) -> Result<u64, BlobError> {
    raw.parse::<u64>()
        .map_err(|_| BlobError::Invalid(format!("`{raw}` is not a chunk index")))
}

async fn create(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, BlobError> {
    let store = store(&state)?;
    let req: CreateRequest = serde_json::from_slice(&body)
        .map_err(|e| BlobError::Invalid(format!("invalid body: {e}")))?;
    let token = bearer(&headers).ok_or(BlobError::Unauthorized)?;
    let now = crate::state::unix_ms();
    if !state.blob_tokens.check(&req.sender_id, token, now).await? {
        return Err(BlobError::Unauthorized);
    }
    let created = store.create(req, now).await?;
    let status = if created.new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(created)).into_response())
}

async fn status(
    State(state): State<Arc<ServerState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, BlobError> {
    let store = store(&state)?;
    let cap = bearer(&headers).ok_or(BlobError::Forbidden)?;
    Ok(Json(store.status(&id, cap).await?).into_response())
}

async fn delete(
    State(state): State<Arc<ServerState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, BlobError> {
    let store = store(&state)?;
    let cap = bearer(&headers).ok_or(BlobError::Forbidden)?.to_owned();
    store.delete(id, cap).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn download(
    State(state): State<Arc<ServerState>>,
    Path((id, index)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, BlobError> {
    let store = store(&state)?;
    let index = parse_index(&index)?;
    let cap = bearer(&headers).ok_or(BlobError::Forbidden)?;
    // A chunk not there yet is waited for (bounded) before a download slot is taken.
    let path = store
        .wait_for_chunk(&id, cap, index, BLOB_CHUNK_WAIT)
        .await?;
    let _slot = store
        .downloads_total()
        .acquire_owned()
        .await
        .map_err(|_| BlobError::Io(std::io::Error::other("download gate closed")))?;
    // One chunk (at most MAX_BLOB_CHUNK_BYTES) is read at a time, never a whole file.
    let bytes = blocking(move || match std::fs::read(&path) {
        Ok(b) => Ok(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(BlobError::NotFound),
        Err(e) => Err(BlobError::io(e)),
    })
    .await?;
    store
        .stats()
        .bytes_out
        .fetch_add(bytes.len() as u64, Ordering::Relaxed);
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

/// Streams the body into `slot.temp` and syncs it. The body's pieces are gathered as they came
/// (not copied) up to [`WRITE_BATCH`] bytes or [`WRITE_PIECES`] pieces and written in one trip to
/// the blocking pool; the file is created with the first batch and synced with the last, so a
/// chunk of up to [`WRITE_BATCH`] bytes costs one trip. The caller removes the temporary file on
/// every failure.
async fn write_chunk(slot: &ChunkSlot, body: Body) -> Result<(), BlobError> {
    let mut file: Option<std::fs::File> = None;
    let mut stream = body.into_data_stream();
    let mut received: u64 = 0;
    let mut batch: Vec<Bytes> = Vec::new();
    let mut batched = 0usize;
    loop {
        let next = tokio::time::timeout(BLOB_BODY_IDLE, stream.next()).await;
        let data = match next {
            Ok(Some(Ok(d))) => Some(d),
            Ok(Some(Err(_))) | Err(_) => return Err(BlobError::Truncated),
            Ok(None) => None,
        };
        let last = data.is_none();
        if let Some(d) = data {
            received = received.saturating_add(d.len() as u64);
            if received > slot.expected {
                return Err(BlobError::ChunkSize {
                    index: 0,
                    expected: slot.expected,
                });
            }
            batched += d.len();
            batch.push(d);
            if batched < WRITE_BATCH && batch.len() < WRITE_PIECES {
                continue;
            }
        } else if received != slot.expected {
            return Err(BlobError::ChunkSize {
                index: 0,
                expected: slot.expected,
            });
        }
        let pieces = std::mem::take(&mut batch);
        batched = 0;
        let (open, temp) = (file.take(), slot.temp.clone());
        let written = blocking(move || {
            let mut f = match open {
                Some(f) => f,
                None => {
                    let mut o = std::fs::OpenOptions::new();
                    o.write(true).create_new(true);
                    #[cfg(unix)]
                    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
                    o.open(&temp).map_err(BlobError::io)?
                }
            };
            for piece in &pieces {
                f.write_all(piece).map_err(BlobError::io)?;
            }
            if last {
                // Durable before the answer: an acknowledged chunk is on disk.
                f.sync_all().map_err(BlobError::io)?;
            }
            Ok(f)
        })
        .await?;
        if last {
            return Ok(());
        }
        file = Some(written);
    }
}

async fn upload(
    State(state): State<Arc<ServerState>>,
    Path((id, index)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, BlobError> {
    let store = store(&state)?;
    let index = parse_index(&index)?;
    let cap = bearer(&headers).ok_or(BlobError::Forbidden)?;
    let Some(slot) = store.begin_upload(&id, cap, index).await? else {
        return Ok(Json(Uploaded {
            index,
            already_present: true,
            complete: store.status(&id, cap).await?.complete,
        })
        .into_response());
    };
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len != slot.expected {
            return Err(BlobError::ChunkSize {
                index,
                expected: slot.expected,
            });
        }
    }
    debug_assert!(slot.expected <= MAX_BLOB_CHUNK_BYTES);
    // One sender's uploads beyond the gate wait here: only that sender slows down.
    let gate = store.upload_gate(&slot.sender);
    let _permit = gate
        .acquire_owned()
        .await
        .map_err(|_| BlobError::Io(std::io::Error::other("upload gate closed")))?;
    let _slot = store
        .uploads_total()
        .acquire_owned()
        .await
        .map_err(|_| BlobError::Io(std::io::Error::other("upload gate closed")))?;
    if let Err(e) = write_chunk(&slot, body).await {
        let temp = slot.temp.clone();
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_file(temp)).await;
        debug!(transfer = %id, index, error = %e, "chunk upload refused");
        return Err(match e {
            BlobError::ChunkSize { expected, .. } => BlobError::ChunkSize { index, expected },
            other => other,
        });
    }
    let expected = slot.expected;
    let done = store.finish_upload(id, index, slot).await?;
    store
        .stats()
        .bytes_in
        .fetch_add(expected, Ordering::Relaxed);
    Ok(Json(done).into_response())
}
