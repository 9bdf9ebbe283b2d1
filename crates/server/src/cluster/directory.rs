//! The directory of verified ids in Redis: `lattice:bind:{alice}`, a hash `{ik, kem, ksig}`, and
//! `lattice:bindings`, every bound id scored by its last use (unix ms), for the count the
//! `--max-bindings` cap is checked against and for the expiry of unused bindings.
//!
//! [`RedisDirectory::bind`] is one Lua script that applies the binding rules atomically, so two
//! nodes racing to bind one new id with different identity keys cannot both succeed (the SQLite
//! directory relies on its caller's check, which one process serializes): create if absent (and
//! the cap allows), update the KEM key and its signature only under the same identity key, never
//! change the identity key.

use lattice_protocol::ClientId;
use std::sync::Arc;

use redis::aio::ConnectionManager;
use redis::Script;

use super::stats::{RedisStats, Timed as _};
use super::{id_key, ClusterError, KEY_PREFIX};
use crate::store::Binding;

/// KEYS: bind, bindings. ARGV: ik, kem, ksig, cap (0: none), id, now ms.
/// Returns 0 taken by another identity key, 1 created, 2 refused by the cap, 3 updated.
const BIND: &str = "
local cur = redis.call('HGET', KEYS[1], 'ik')
if cur and cur ~= ARGV[1] then return 0 end
if not cur then
  local cap = tonumber(ARGV[4])
  if cap > 0 and redis.call('ZCARD', KEYS[2]) >= cap then return 2 end
end
redis.call('HSET', KEYS[1], 'ik', ARGV[1], 'kem', ARGV[2], 'ksig', ARGV[3])
redis.call('ZADD', KEYS[2], tonumber(ARGV[6]), ARGV[5])
if cur then return 3 end
return 1
";

/// KEYS: bind, bindings, then the id's mailbox keys (stream, ids, use). ARGV: id, cutoff ms.
/// Deletes the binding, and the mailbox that only a bound id has, if it is still unused since
/// before the cutoff (a registration may have touched it since it was listed); 1 if deleted.
const FORGET: &str = "
local used = redis.call('ZSCORE', KEYS[2], ARGV[1])
if used and tonumber(used) < tonumber(ARGV[2]) then
  redis.call('DEL', KEYS[1], KEYS[3], KEYS[4], KEYS[5])
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 1
end
return 0
";

/// What [`RedisDirectory::bind`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// A new binding.
    Created,
    /// The existing binding (same identity key) now has this KEM key.
    Updated,
    /// Another identity key holds the id: nothing changed.
    Taken,
    /// The directory holds its cap of bindings: nothing changed.
    Full,
}

/// The directory, as seen from one node.
#[derive(Clone)]
pub struct RedisDirectory {
    conn: ConnectionManager,
    stats: Arc<RedisStats>,
    bind: Script,
    forget: Script,
}

impl std::fmt::Debug for RedisDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisDirectory").finish_non_exhaustive()
    }
}

fn bindings_key() -> String {
    format!("{KEY_PREFIX}:bindings")
}

impl RedisDirectory {
    /// The directory on `conn`.
    pub fn new(conn: ConnectionManager) -> Self {
        Self {
            conn,
            stats: Arc::default(),
            bind: Script::new(BIND),
            forget: Script::new(FORGET),
        }
    }

    /// Records this component's Redis round trips and errors in `stats` (shared by a node's
    /// components, rendered on `/metrics`).
    #[must_use]
    pub fn with_stats(mut self, stats: Arc<RedisStats>) -> Self {
        self.stats = stats;
        self
    }

    /// The binding of `id`, if any.
    ///
    /// # Errors
    /// Redis failing, or a stored identity key that is not 32 bytes.
    pub async fn get(&self, id: &ClientId) -> Result<Option<Binding>, ClusterError> {
        type Row = (Option<Vec<u8>>, Option<Vec<u8>>, Option<Vec<u8>>);
        let (ik, kem, ksig): Row = redis::cmd("HMGET")
            .arg(id_key("bind", id))
            .arg("ik")
            .arg("kem")
            .arg("ksig")
            .query_async(&mut self.conn.clone())
            .timed(&self.stats)
            .await?;
        match (ik, kem, ksig) {
            (Some(ik), Some(kem_public_key), Some(key_signature)) => Ok(Some(Binding {
                identity_key: ik
                    .try_into()
                    .map_err(|_| ClusterError::Reply("an identity key that is not 32 bytes"))?,
                kem_public_key,
                key_signature,
            })),
            _ => Ok(None),
        }
    }

    /// Creates or updates the binding of `id` under the binding rules, with at most `cap`
    /// bindings in all (0: no cap); `now_ms` is its last use.
    ///
    /// # Errors
    /// Redis failing.
    pub async fn bind(
        &self,
        id: &ClientId,
        b: &Binding,
        cap: u64,
        now_ms: i64,
    ) -> Result<Bound, ClusterError> {
        let code: i64 = self
            .bind
            .key(id_key("bind", id))
            .key(bindings_key())
            .arg(&b.identity_key[..])
            .arg(&b.kem_public_key[..])
            .arg(&b.key_signature[..])
            .arg(cap)
            .arg(id.as_str())
            .arg(now_ms)
            .invoke_async(&mut self.conn.clone())
            .timed(&self.stats)
            .await?;
        match code {
            0 => Ok(Bound::Taken),
            1 => Ok(Bound::Created),
            2 => Ok(Bound::Full),
            3 => Ok(Bound::Updated),
            _ => Err(ClusterError::Reply("an unknown bind result")),
        }
    }

    /// Records that `id` registered at `now_ms` (only an existing binding).
    ///
    /// # Errors
    /// Redis failing.
    pub async fn touch(&self, id: &ClientId, now_ms: i64) -> Result<(), ClusterError> {
        let _: i64 = redis::cmd("ZADD")
            .arg(bindings_key())
            .arg("XX")
            .arg(now_ms)
            .arg(id.as_str())
            .query_async(&mut self.conn.clone())
            .timed(&self.stats)
            .await?;
        Ok(())
    }

    /// Deletes up to `limit` bindings last used before `cutoff_ms`, except those `keep` says are
    /// in use, with their mailboxes (only a bound id has one; it would have expired by then with
    /// `--binding-ttl` above `--mailbox-ttl`, and this also removes the empty stream); how many
    /// were deleted.
    ///
    /// # Errors
    /// Redis failing.
    pub async fn expire_unused(
        &self,
        cutoff_ms: i64,
        limit: usize,
        keep: &(dyn Fn(&ClientId) -> bool + Sync),
    ) -> Result<usize, ClusterError> {
        let ids: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(bindings_key())
            .arg("-inf")
            .arg(format!("({cutoff_ms}"))
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .query_async(&mut self.conn.clone())
            .timed(&self.stats)
            .await?;
        let mut deleted = 0;
        for raw in ids {
            let parsed = ClientId::new(raw.as_str());
            if parsed.as_ref().is_ok_and(keep) {
                continue;
            }
            // The same keys as `id_key` gives, for an id that may no longer parse.
            let bind_key = format!("{KEY_PREFIX}:bind:{{{raw}}}");
            let mbox = format!("{KEY_PREFIX}:mbox:{{{raw}}}");
            let n: i64 = self
                .forget
                .key(bind_key)
                .key(bindings_key())
                .key(&mbox)
                .key(format!("{mbox}:ids"))
                .key(format!("{mbox}:use"))
                .arg(raw.as_str())
                .arg(cutoff_ms)
                .invoke_async(&mut self.conn.clone())
                .timed(&self.stats)
                .await?;
            deleted += usize::from(n == 1);
        }
        Ok(deleted)
    }

    /// Bindings in the directory.
    ///
    /// # Errors
    /// Redis failing.
    pub async fn binding_count(&self) -> Result<u64, ClusterError> {
        Ok(redis::cmd("ZCARD")
            .arg(bindings_key())
            .query_async(&mut self.conn.clone())
            .timed(&self.stats)
            .await?)
    }
}
