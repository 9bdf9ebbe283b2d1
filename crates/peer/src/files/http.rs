//! The blob store's HTTP API (docs/protocol.md, *Blob store*) over `reqwest`: create a transfer,
//! put, get and list chunks, delete. Every answer is bounded: a chunk to the length its index
//! requires, JSON to [`defaults::MAX_BLOB_JSON_BYTES`]. Capabilities and tokens travel only in
//! `Authorization`, never in a URL or a log.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::{defaults, PeerError};

/// An HTTP client for one server's blob store.
#[derive(Debug, Clone)]
pub(crate) struct BlobClient {
    base: String,
    http: reqwest::Client,
}

/// `POST /blobs` body.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct CreateBody<'a> {
    sender_id: &'a str,
    size: u64,
    chunk_size: u64,
    chunk_count: u64,
    client_ref: &'a str,
    one_recipient: bool,
}

/// `POST /blobs` answer.
#[derive(Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Created {
    pub(crate) transfer_id: String,
    pub(crate) upload_capability: String,
    pub(crate) download_capability: String,
}

/// `GET /blobs/{id}` answer (the fields used).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Listing {
    pub(crate) present: Vec<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ErrorBody {
    error_type: String,
    error: String,
}

fn http_error(e: &reqwest::Error) -> PeerError {
    // Without the URL: it names the transfer, which is nobody's business in a log.
    PeerError::Http(e.without_url_ref().to_string())
}

trait WithoutUrl {
    fn without_url_ref(&self) -> String;
}

impl WithoutUrl for reqwest::Error {
    fn without_url_ref(&self) -> String {
        let mut s = if self.is_timeout() {
            "timed out".to_owned()
        } else if self.is_connect() {
            "cannot connect".to_owned()
        } else if self.is_body() || self.is_decode() {
            "the answer broke off".to_owned()
        } else {
            "request failed".to_owned()
        };
        let mut source = std::error::Error::source(self);
        while let Some(inner) = source {
            s.push_str(": ");
            s.push_str(&inner.to_string());
            source = inner.source();
        }
        s
    }
}

impl BlobClient {
    /// A client for the blob store on the same host and port as the WebSocket at `server_url`
    /// (`ws://` → `http://`, `wss://` → `https://` with `tls`, the peer's rustls configuration).
    pub(crate) fn new(
        server_url: &str,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<Self, PeerError> {
        let bad = |reason: &str| PeerError::InvalidUrl {
            url: server_url.to_owned(),
            reason: reason.to_owned(),
        };
        let (scheme, rest) = if let Some(rest) = server_url.strip_prefix("wss://") {
            ("https", rest)
        } else if let Some(rest) = server_url.strip_prefix("ws://") {
            ("http", rest)
        } else {
            return Err(bad("the scheme must be ws:// or wss://"));
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if authority.is_empty() {
            return Err(bad("no host"));
        }
        let mut builder = reqwest::Client::builder()
            .connect_timeout(defaults::BLOB_CONNECT_TIMEOUT)
            .timeout(defaults::BLOB_REQUEST_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none());
        if let Some(tls) = tls {
            builder = builder.use_preconfigured_tls((*tls).clone());
        }
        let http = builder
            .build()
            .map_err(|e| PeerError::Tls(format!("blob HTTP client: {e}")))?;
        Ok(Self {
            base: format!("{scheme}://{authority}/blobs"),
            http,
        })
    }

    /// Reads an answer: `Ok(response)` for a success, the server's typed error otherwise.
    async fn check(response: reqwest::Response) -> Result<reqwest::Response, PeerError> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = read_bounded(response, defaults::MAX_BLOB_JSON_BYTES as u64)
            .await
            .unwrap_or_default();
        let (error_type, message) = match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(b) => (b.error_type, b.error),
            Err(_) => (
                format!("HTTP_{}", status.as_u16()),
                status.canonical_reason().unwrap_or("error").to_owned(),
            ),
        };
        Err(PeerError::Blob {
            status: status.as_u16(),
            error_type: crate::sanitize::for_terminal(&error_type)
                .chars()
                .take(64)
                .collect(),
            message: crate::sanitize::for_terminal(&message)
                .chars()
                .take(512)
                .collect(),
        })
    }

    async fn json<T: for<'de> Deserialize<'de>>(
        response: reqwest::Response,
    ) -> Result<T, PeerError> {
        let body = read_bounded(response, defaults::MAX_BLOB_JSON_BYTES as u64).await?;
        serde_json::from_slice(&body)
            .map_err(|e| PeerError::Protocol(format!("blob store answer: {e}")))
    }

    /// `POST /blobs` with the sender's blob token. `client_ref` (journalled before this call)
    /// makes it idempotent: asked again after a crash that lost the answer, the server returns
    /// the same transfer rather than a second one. `one_recipient`: the recipient's download
    /// capability may delete it once its copy is verified.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn create(
        &self,
        token: &str,
        sender_id: &str,
        size: u64,
        chunk_size: u64,
        chunk_count: u64,
        client_ref: &str,
        one_recipient: bool,
    ) -> Result<Created, PeerError> {
        let r = self
            .http
            .post(&self.base)
            .bearer_auth(token)
            .json(&CreateBody {
                sender_id,
                size,
                chunk_size,
                chunk_count,
                client_ref,
                one_recipient,
            })
            .send()
            .await
            .map_err(|e| http_error(&e))?;
        Self::json(Self::check(r).await?).await
    }

    /// `PUT /blobs/{id}/chunks/{index}`.
    pub(crate) async fn put_chunk(
        &self,
        blob: &str,
        capability: &str,
        index: u64,
        bytes: Vec<u8>,
    ) -> Result<(), PeerError> {
        let r = self
            .http
            .put(format!("{}/{blob}/chunks/{index}", self.base))
            .bearer_auth(capability)
            .body(bytes)
            .send()
            .await
            .map_err(|e| http_error(&e))?;
        Self::check(r).await.map(drop)
    }

    /// `GET /blobs/{id}/chunks/{index}`: the chunk, which must be `expected` bytes long (a longer
    /// answer is cut off after one byte too many, never read whole).
    pub(crate) async fn get_chunk(
        &self,
        blob: &str,
        capability: &str,
        index: u64,
        expected: u64,
    ) -> Result<Vec<u8>, PeerError> {
        let r = self
            .http
            .get(format!("{}/{blob}/chunks/{index}", self.base))
            .bearer_auth(capability)
            .send()
            .await
            .map_err(|e| http_error(&e))?;
        let bytes = read_bounded(Self::check(r).await?, expected).await;
        match bytes {
            Ok(b) if b.len() as u64 == expected => Ok(b),
            Ok(b) => Err(PeerError::FileRejected(crate::FileRejection::ChunkLength {
                index,
                expected,
                got: b.len() as u64,
            })),
            Err(PeerError::MessageTooLarge { .. }) => {
                Err(PeerError::FileRejected(crate::FileRejection::ChunkLength {
                    index,
                    expected,
                    got: expected + 1,
                }))
            }
            Err(e) => Err(e),
        }
    }

    /// `GET /blobs/{id}`: which chunks are there.
    pub(crate) async fn list(&self, blob: &str, capability: &str) -> Result<Listing, PeerError> {
        let r = self
            .http
            .get(format!("{}/{blob}", self.base))
            .bearer_auth(capability)
            .send()
            .await
            .map_err(|e| http_error(&e))?;
        Self::json(Self::check(r).await?).await
    }

    /// `DELETE /blobs/{id}` with the upload capability (or, for a one-recipient transfer, the
    /// download capability).
    pub(crate) async fn delete(&self, blob: &str, capability: &str) -> Result<(), PeerError> {
        let r = self
            .http
            .delete(format!("{}/{blob}", self.base))
            .bearer_auth(capability)
            .send()
            .await
            .map_err(|e| http_error(&e))?;
        Self::check(r).await.map(drop)
    }
}

/// The body, at most `max` bytes ([`PeerError::MessageTooLarge`] past it, without reading on).
async fn read_bounded(mut response: reqwest::Response, max: u64) -> Result<Vec<u8>, PeerError> {
    if response.content_length().is_some_and(|n| n > max) {
        return Err(PeerError::MessageTooLarge {
            size: usize::try_from(response.content_length().unwrap_or(max)).unwrap_or(usize::MAX),
            max: usize::try_from(max).unwrap_or(usize::MAX),
        });
    }
    let mut out = Vec::with_capacity(usize::try_from(max.min(1 << 24)).unwrap_or(0));
    while let Some(piece) = response.chunk().await.map_err(|e| http_error(&e))? {
        if (out.len() + piece.len()) as u64 > max {
            return Err(PeerError::MessageTooLarge {
                size: out.len() + piece.len(),
                max: usize::try_from(max).unwrap_or(usize::MAX),
            });
        }
        out.extend_from_slice(&piece);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_blob_url_follows_the_server_url() {
        let c = BlobClient::new("ws://127.0.0.1:3005/some/path?x", None)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.base, "http://127.0.0.1:3005/blobs");
        assert!(matches!(
            BlobClient::new("http://x", None),
            Err(PeerError::InvalidUrl { .. })
        ));
        assert!(matches!(
            BlobClient::new("ws:///x", None),
            Err(PeerError::InvalidUrl { .. })
        ));
    }
}
