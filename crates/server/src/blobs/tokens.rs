//! Blob tokens: what a verified WebSocket session hands its peer so that an HTTP request can
//! prove the same id. One live token per id (a new one replaces the old), compared in constant
//! time, expired by the sweeper.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use lattice_protocol::ClientId;
use subtle::ConstantTimeEq as _;

use crate::limits::BLOB_SECRET_BYTES;

/// The live tokens, one per verified id.
#[derive(Debug, Default)]
pub struct Tokens {
    live: Mutex<HashMap<ClientId, (String, u64)>>,
}

impl Tokens {
    /// A new random token for `id`, valid for `ttl` from `now_ms` (Unix milliseconds; replaces
    /// its previous one).
    pub fn issue(&self, id: &ClientId, ttl: Duration, now_ms: u64) -> String {
        let bytes: [u8; BLOB_SECRET_BYTES] = rand::random();
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let expires = now_ms.saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
        if let Ok(mut live) = self.live.lock() {
            live.insert(id.clone(), (token.clone(), expires));
        }
        token
    }

    /// Whether `token` is `id`'s live token at `now_ms` (Unix milliseconds).
    pub fn check(&self, id: &ClientId, token: &str, now_ms: u64) -> bool {
        let Ok(live) = self.live.lock() else {
            return false;
        };
        live.get(id).is_some_and(|(t, expires)| {
            now_ms < *expires && bool::from(t.as_bytes().ct_eq(token.as_bytes()))
        })
    }

    /// Drops tokens expired at `now_ms`.
    pub fn purge(&self, now_ms: u64) {
        if let Ok(mut live) = self.live.lock() {
            live.retain(|_, (_, expires)| now_ms < *expires);
        }
    }
}
