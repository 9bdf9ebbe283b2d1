//! Blob tokens: what a verified WebSocket session hands its peer so that an HTTP request can
//! prove the same id. One live token per id (a new one replaces the old), compared in constant
//! time. On one node they live in memory (expired by the sweeper); on a node of several in Redis
//! (`lattice:blobtok:{id}`, expired by its TTL), so a token issued by one node is accepted by
//! every other.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use lattice_protocol::ClientId;
use subtle::ConstantTimeEq as _;

use crate::cluster::blobs::RedisBlobs;
use crate::cluster::ClusterError;
use crate::limits::BLOB_SECRET_BYTES;

/// The live tokens, one per verified id.
#[derive(Debug, Default)]
pub struct Tokens {
    // std Mutex: one map update per token; never held across an await.
    live: Mutex<HashMap<ClientId, (String, u64)>>,
    /// On a node of several: the tokens are in Redis instead.
    shared: Option<RedisBlobs>,
}

impl Tokens {
    /// Tokens kept in Redis, shared by every node.
    pub fn shared(redis: RedisBlobs) -> Self {
        Self {
            live: Mutex::default(),
            shared: Some(redis),
        }
    }

    /// A new random token for `id`, valid for `ttl` from `now_ms` (Unix milliseconds; replaces
    /// its previous one).
    ///
    /// # Errors
    /// On a node of several, Redis failing (no token issued).
    pub async fn issue(
        &self,
        id: &ClientId,
        ttl: Duration,
        now_ms: u64,
    ) -> Result<String, ClusterError> {
        let bytes: [u8; BLOB_SECRET_BYTES] = rand::random();
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        if let Some(redis) = &self.shared {
            redis.put_token(id, &token, ttl).await?;
            return Ok(token);
        }
        let expires = now_ms.saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
        if let Ok(mut live) = self.live.lock() {
            live.insert(id.clone(), (token.clone(), expires));
        }
        Ok(token)
    }

    /// Whether `token` is `id`'s live token at `now_ms` (Unix milliseconds).
    ///
    /// # Errors
    /// On a node of several, Redis failing.
    pub async fn check(
        &self,
        id: &ClientId,
        token: &str,
        now_ms: u64,
    ) -> Result<bool, ClusterError> {
        if let Some(redis) = &self.shared {
            return Ok(redis
                .token(id)
                .await?
                .is_some_and(|t| bool::from(t.as_bytes().ct_eq(token.as_bytes()))));
        }
        let Ok(live) = self.live.lock() else {
            return Ok(false);
        };
        Ok(live.get(id).is_some_and(|(t, expires)| {
            now_ms < *expires && bool::from(t.as_bytes().ct_eq(token.as_bytes()))
        }))
    }

    /// Drops tokens expired at `now_ms` (in Redis, their TTL does).
    pub fn purge(&self, now_ms: u64) {
        if let Ok(mut live) = self.live.lock() {
            live.retain(|_, (_, expires)| now_ms < *expires);
        }
    }
}
