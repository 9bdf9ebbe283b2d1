//! The directory of verified ids in Redis: `lattice:bind:{alice}`, a hash `{ik, kem, ksig, used}`, and
//! `lattice:bindings`, every bound id scored by its last use (unix ms), for the count the
//! `--max-bindings` cap is checked against and for the expiry of unused bindings.
//!
//! [`RedisDirectory::bind`] applies the binding rules in one Lua script on the id's key, so two
//! nodes racing to bind one new id with different identity keys cannot both succeed (the SQLite
//! directory relies on its caller's check, which one process serializes): create if absent,
//! update the KEM key and its signature only under the same identity key, never change the
//! identity key.
//!
//! **The cap** is checked and a seat reserved in one script on `lattice:bindings` before the
//! binding is written (the two keys are in different Redis Cluster slots, so no script touches
//! both): of nodes racing for the last seat exactly one gets it. A seat reserved for an id whose
//! binding then fails to be written (Redis failed in between) counts until unused bindings
//! expire; one reserved by a node that lost the race for the id stands for the winner's binding.
//! The bind hash keeps its own last use (`used`), so expiry, which first unlists an id and then
//! deletes its keys, deletes nothing that a registration touched in between.

use lattice_protocol::ClientId;
use std::sync::Arc;

use redis::Script;

use super::stats::{RedisStats, Timed as _};
use super::{id_key, ClusterError, RedisConn, KEY_PREFIX};
use crate::store::Binding;

/// KEYS: bindings. ARGV: id, now ms, cap (0: none). Returns 1 if the id is listed already
/// (untouched), 2 if the cap is reached, 0 if a seat was reserved (listed as used now).
const RESERVE: &str = "
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 1 end
local cap = tonumber(ARGV[3])
if cap > 0 and redis.call('ZCARD', KEYS[1]) >= cap then return 2 end
redis.call('ZADD', KEYS[1], tonumber(ARGV[2]), ARGV[1])
return 0
";

/// KEYS: bind. ARGV: ik, kem, ksig, now ms.
/// Returns 0 taken by another identity key, 1 created, 3 updated.
const BIND: &str = "
local cur = redis.call('HGET', KEYS[1], 'ik')
if cur and cur ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'ik', ARGV[1], 'kem', ARGV[2], 'ksig', ARGV[3], 'used', ARGV[4])
if cur then return 3 end
return 1
";

/// KEYS: bind. ARGV: now ms. Records a use of an existing binding.
const TOUCH: &str = "
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'used', ARGV[1]) end
return 0
";

/// KEYS: bindings. ARGV: id, cutoff ms. Unlists the id if it is still unused since before the
/// cutoff; 1 if unlisted.
const UNLIST: &str = "
local used = redis.call('ZSCORE', KEYS[1], ARGV[1])
if used and tonumber(used) < tonumber(ARGV[2]) then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 1
end
return 0
";

/// KEYS: bind, then the id's mailbox keys (stream, ids, use) and KeyPackage keys (one-time,
/// last resort), then its presence key. ARGV: cutoff ms. Deletes the binding, and the mailbox and
/// KeyPackages that only a bound id has, unless the binding was used since the cutoff or the id
/// is online on some node (its presence key lives: in use now, however long ago it registered).
/// Returns {1, ''} if deleted, {0, last use} if not (to be listed again; an online id as used
/// now, by Redis's clock).
const FORGET: &str = "
if redis.call('EXISTS', KEYS[7]) == 1 then
  local t = redis.call('TIME')
  return {0, tostring(tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))}
end
local used = redis.call('HGET', KEYS[1], 'used')
if used and tonumber(used) >= tonumber(ARGV[1]) then return {0, used} end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6])
return {1, ''}
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
    conn: RedisConn,
    stats: Arc<RedisStats>,
    reserve: Script,
    bind: Script,
    touch: Script,
    unlist: Script,
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
    pub fn new(conn: impl Into<RedisConn>) -> Self {
        Self {
            conn: conn.into(),
            stats: Arc::default(),
            reserve: Script::new(RESERVE),
            bind: Script::new(BIND),
            touch: Script::new(TOUCH),
            unlist: Script::new(UNLIST),
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
        let listed: i64 = self
            .reserve
            .key(bindings_key())
            .arg(id.as_str())
            .arg(now_ms)
            .arg(cap)
            .invoke_async(&mut self.conn.clone())
            .timed(&self.stats)
            .await?;
        if listed == 2 {
            return Ok(Bound::Full);
        }
        let code: i64 = self
            .bind
            .key(id_key("bind", id))
            .arg(&b.identity_key[..])
            .arg(&b.kem_public_key[..])
            .arg(&b.key_signature[..])
            .arg(now_ms)
            .invoke_async(&mut self.conn.clone())
            .timed(&self.stats)
            .await?;
        let bound = match code {
            0 => return Ok(Bound::Taken),
            1 => Bound::Created,
            3 => Bound::Updated,
            _ => return Err(ClusterError::Reply("an unknown bind result")),
        };
        if listed == 1 {
            // Listed before: record this use (and list it again if expiry unlisted it since).
            let _: i64 = redis::cmd("ZADD")
                .arg(bindings_key())
                .arg(now_ms)
                .arg(id.as_str())
                .query_async(&mut self.conn.clone())
                .timed(&self.stats)
                .await?;
        }
        Ok(bound)
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
        let _: i64 = self
            .touch
            .key(id_key("bind", id))
            .arg(now_ms)
            .invoke_async(&mut self.conn.clone())
            .timed(&self.stats)
            .await?;
        Ok(())
    }

    /// Deletes up to `limit` bindings last used before `cutoff_ms`, except those `keep` says are
    /// in use and those online on any node, with their KeyPackages and mailboxes (only a bound id
    /// has one; it would have expired by then with `--binding-ttl` above `--mailbox-ttl`, and this
    /// also removes the empty stream); how many were deleted.
    ///
    /// # Errors
    /// Redis failing.
    pub async fn expire_unused(
        &self,
        cutoff_ms: i64,
        limit: usize,
        keep: &(dyn Fn(&ClientId) -> bool + Sync),
    ) -> Result<usize, ClusterError> {
        Ok(self.expire(cutoff_ms, limit, keep).await?.len())
    }

    /// [`Self::expire_unused`], returning the ids whose bindings were deleted (for what else the
    /// server forgets of them: their group memberships, [`super::groups::RedisGroups::forget_member`]).
    /// An id that no longer parses is deleted and counted by [`Self::expire_unused`] only.
    ///
    /// # Errors
    /// Redis failing (the bindings deleted before the failure stay deleted).
    pub async fn expire_unused_ids(
        &self,
        cutoff_ms: i64,
        limit: usize,
        keep: &(dyn Fn(&ClientId) -> bool + Sync),
    ) -> Result<Vec<ClientId>, ClusterError> {
        Ok(self
            .expire(cutoff_ms, limit, keep)
            .await?
            .into_iter()
            .filter_map(|raw| ClientId::new(raw).ok())
            .collect())
    }

    async fn expire(
        &self,
        cutoff_ms: i64,
        limit: usize,
        keep: &(dyn Fn(&ClientId) -> bool + Sync),
    ) -> Result<Vec<String>, ClusterError> {
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
        let mut deleted = Vec::new();
        for raw in ids {
            let parsed = ClientId::new(raw.as_str());
            if parsed.as_ref().is_ok_and(keep) {
                continue;
            }
            // The same keys as `id_key` gives, for an id that may no longer parse.
            let bind_key = format!("{KEY_PREFIX}:bind:{{{raw}}}");
            let mbox = format!("{KEY_PREFIX}:mbox:{{{raw}}}");
            let unlisted: i64 = self
                .unlist
                .key(bindings_key())
                .arg(raw.as_str())
                .arg(cutoff_ms)
                .invoke_async(&mut self.conn.clone())
                .timed(&self.stats)
                .await?;
            if unlisted != 1 {
                continue;
            }
            let (gone, used): (i64, String) = self
                .forget
                .key(bind_key)
                .key(&mbox)
                .key(format!("{mbox}:ids"))
                .key(format!("{mbox}:use"))
                .key(format!("{KEY_PREFIX}:kp:{{{raw}}}"))
                .key(format!("{KEY_PREFIX}:kp:{{{raw}}}:lr"))
                .key(format!("{KEY_PREFIX}:peer:{{{raw}}}"))
                .arg(cutoff_ms)
                .invoke_async(&mut self.conn.clone())
                .timed(&self.stats)
                .await?;
            if gone == 1 {
                deleted.push(raw);
            } else {
                // Used since it was listed: list it again, with that use.
                let _: i64 = redis::cmd("ZADD")
                    .arg(bindings_key())
                    .arg(used)
                    .arg(raw.as_str())
                    .query_async(&mut self.conn.clone())
                    .timed(&self.stats)
                    .await?;
            }
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
