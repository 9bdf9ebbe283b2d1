//! The blob store's shared state for several nodes (issue 11 on issue 10): everything about a
//! transfer except its bytes. The bytes are chunk files on a directory every node mounts
//! (`crate::blobs`, "shared"); **no blob byte is ever written to Redis**.
//!
//! What lives here: each transfer's metadata (sender, sizes, expiry, the two capabilities, its
//! `clientRef`), the set of chunks present (a bitmap), the total and per-sender quota counters,
//! the `clientRef` index, the expiry schedule, the deletions in progress, and the blob tokens.
//!
//! **One slot.** Every blob key carries the hash tag `{blobs}`, so on a Redis Cluster they all
//! live in one slot and each operation is one Lua script over declared keys: a create checks the
//! sender's count and bytes and the total together with its insert (two creates racing on two
//! nodes cannot both pass a quota), a chunk landing sets its bit and counts its bytes once (the
//! same chunk landing through two nodes counts once), a deletion is claimed by exactly one node.
//! The price is that one master carries blob metadata: a few small commands per chunk (chunks
//! are at least 64 KiB), small next to the bytes themselves. Tokens are keyed by id
//! (`lattice:blobtok:{alice}`, the id's slot) and expire by Redis TTL.
//!
//! Keys: `lattice:{blobs}:t:<id>` (hash: the metadata, `missing`, `stored`),
//! `lattice:{blobs}:p:<id>` (bitmap of chunks present), `lattice:{blobs}:stat` (hash:
//! `reserved`, `stored`, `count` over every live transfer), `lattice:{blobs}:senders` (hash:
//! `n:<sender>` transfers, `b:<sender>` declared bytes), `lattice:{blobs}:refs` (hash:
//! `<sender> <clientRef>` → id), `lattice:{blobs}:exp` (ids by expiry), `lattice:{blobs}:gone`
//! (ids whose bytes are being deleted, by the end of the deleting node's lease),
//! `lattice:{blobs}:volume` (the id of the shared directory every node must mount).
//!
//! **Deletion exactly once.** Deleting (by capability or by expiry) is [`RedisBlobs::claim_drop`]:
//! one script takes the transfer off the expiry schedule, removes its metadata and counters, and
//! puts it on `gone` with a lease; only the node that got the claim removes the bytes, then
//! [`RedisBlobs::dropped`] clears it. A node killed in between leaves the id on `gone`; once the
//! lease ends, another node's sweeper claims it again ([`DropClaim::Reclaimed`]) and removes the
//! bytes: nothing is deleted twice, nothing is missed.

use std::sync::Arc;
use std::time::Duration;

use lattice_protocol::ClientId;
use redis::Script;

use super::stats::{RedisStats, Timed as _};
use super::{id_key, ClusterError, RedisConn, KEY_PREFIX};

// Lua: the time in milliseconds on Redis's clock (every node's expiry uses the same clock).
const NOW: &str =
    "local t = redis.call('TIME')\nlocal now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n";

/// KEYS: transfer, stat, senders, refs, exp. ARGV: id, sender, size, chunk size, chunk count,
/// ttl ms, upload capability, download capability, clientRef ('' for none), one recipient (0/1),
/// max transfers per sender, per-sender bytes, total bytes. Returns {0, expiry} when created,
/// {1, id} for a known clientRef, {2, count} over the transfer count, {3, bytes} over the
/// sender's bytes, {4, reserved} over the total.
const CREATE: &str = "
local refkey = ARGV[2] .. ' ' .. ARGV[9]
if ARGV[9] ~= '' then
  local known = redis.call('HGET', KEYS[4], refkey)
  if known then return {'1', known} end
end
local n = tonumber(redis.call('HGET', KEYS[3], 'n:' .. ARGV[2]) or '0')
if n >= tonumber(ARGV[11]) then return {'2', tostring(n)} end
local b = tonumber(redis.call('HGET', KEYS[3], 'b:' .. ARGV[2]) or '0')
local size = tonumber(ARGV[3])
if b + size > tonumber(ARGV[12]) then return {'3', tostring(b)} end
local r = tonumber(redis.call('HGET', KEYS[2], 'reserved') or '0')
if r + size > tonumber(ARGV[13]) then return {'4', tostring(r)} end
local exp = string.format('%d', now + tonumber(ARGV[6]))
redis.call('HSET', KEYS[1], 'sender', ARGV[2], 'size', ARGV[3], 'cs', ARGV[4], 'cc', ARGV[5],
  'exp', exp, 'up', ARGV[7], 'down', ARGV[8], 'ref', ARGV[9], 'one', ARGV[10],
  'missing', ARGV[5], 'stored', '0')
redis.call('HINCRBY', KEYS[3], 'n:' .. ARGV[2], 1)
redis.call('HINCRBY', KEYS[3], 'b:' .. ARGV[2], ARGV[3])
redis.call('HINCRBY', KEYS[2], 'reserved', ARGV[3])
redis.call('HINCRBY', KEYS[2], 'count', 1)
if ARGV[9] ~= '' then redis.call('HSET', KEYS[4], refkey, ARGV[1]) end
redis.call('ZADD', KEYS[5], exp, ARGV[1])
return {'0', exp}
";

/// KEYS: transfer, present. ARGV: chunk index (-1 for none), 1 to return the whole bitmap.
/// Returns nil for an unknown transfer, else {sender, size, chunk size, chunk count, expiry,
/// upload capability, download capability, one recipient, missing, the index's bit, bitmap}.
const LOOK: &str = "
local m = redis.call('HMGET', KEYS[1], 'sender', 'size', 'cs', 'cc', 'exp', 'up', 'down', 'one', 'missing')
if not m[1] then return false end
local bit = 0
if tonumber(ARGV[1]) >= 0 then bit = redis.call('GETBIT', KEYS[2], ARGV[1]) end
local map = ''
if ARGV[2] == '1' then map = redis.call('GET', KEYS[2]) or '' end
m[10] = tostring(bit)
m[11] = map
return m
";

/// KEYS: transfer, present, stat. ARGV: chunk index, its length. Returns {-1, 0} for an unknown
/// transfer, else {the bit before (1: it was present), chunks still missing}.
const LAND: &str = "
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1, 0} end
local old = redis.call('SETBIT', KEYS[2], ARGV[1], 1)
local missing
if old == 0 then
  missing = redis.call('HINCRBY', KEYS[1], 'missing', -1)
  redis.call('HINCRBY', KEYS[1], 'stored', ARGV[2])
  redis.call('HINCRBY', KEYS[3], 'stored', ARGV[2])
else
  missing = tonumber(redis.call('HGET', KEYS[1], 'missing'))
end
return {old, missing}
";

/// KEYS: transfer, present, stat, senders, refs, exp, gone. ARGV: id, lease ms. Returns 1 when
/// this call took the live transfer (metadata and counters removed, the id on `gone` with a
/// lease), 2 when it took over a deletion whose lease ended, 0 otherwise. (Amounts are negated
/// as text, exactly; Redis does not read "-0" as a number.)
const DROP: &str = "
local function neg(x) if x == '0' then return '0' end return '-' .. x end
if redis.call('ZREM', KEYS[6], ARGV[1]) == 1 then
  local m = redis.call('HMGET', KEYS[1], 'sender', 'size', 'ref', 'stored')
  if m[1] then
    local s = m[1]
    local n = redis.call('HINCRBY', KEYS[4], 'n:' .. s, -1)
    redis.call('HINCRBY', KEYS[4], 'b:' .. s, neg(m[2]))
    if n <= 0 then redis.call('HDEL', KEYS[4], 'n:' .. s, 'b:' .. s) end
    redis.call('HINCRBY', KEYS[3], 'reserved', neg(m[2]))
    redis.call('HINCRBY', KEYS[3], 'stored', neg(m[4]))
    redis.call('HINCRBY', KEYS[3], 'count', -1)
    if m[3] and m[3] ~= '' then redis.call('HDEL', KEYS[5], s .. ' ' .. m[3]) end
  end
  redis.call('DEL', KEYS[1], KEYS[2])
  redis.call('ZADD', KEYS[7], now + tonumber(ARGV[2]), ARGV[1])
  return 1
end
local lease = redis.call('ZSCORE', KEYS[7], ARGV[1])
if lease and tonumber(lease) <= now then
  redis.call('ZADD', KEYS[7], now + tonumber(ARGV[2]), ARGV[1])
  return 2
end
return 0
";

/// KEYS: exp, gone. ARGV: most ids. The ids expired, then those whose deletion lease ended.
const DUE: &str = "
local out = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local stale = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, x in ipairs(stale) do table.insert(out, x) end
return out
";

/// KEYS: volume. ARGV: this node's directory id. The id every node must have (the first one
/// set wins).
const VOLUME: &str = "
redis.call('SET', KEYS[1], ARGV[1], 'NX')
return redis.call('GET', KEYS[1])
";

/// A new transfer, as [`RedisBlobs::create`] records it.
#[derive(Debug, Clone)]
pub struct NewTransfer<'a> {
    /// Its id (random, hex).
    pub id: &'a str,
    /// The verified id that creates it.
    pub sender: &'a ClientId,
    /// Total bytes.
    pub size: u64,
    /// Bytes per chunk.
    pub chunk_size: u64,
    /// Chunks.
    pub chunk_count: u64,
    /// Lifetime (the expiry is on Redis's clock).
    pub ttl: Duration,
    /// The upload capability.
    pub upload_capability: &'a str,
    /// The download capability.
    pub download_capability: &'a str,
    /// The sender's idempotency key.
    pub client_ref: Option<&'a str>,
    /// Whether the download capability may delete it.
    pub one_recipient: bool,
}

/// The quotas a create is checked against (the same as one node's).
#[derive(Debug, Clone, Copy)]
pub struct BlobQuotas {
    /// Live transfers per sender.
    pub transfers_per_sender: usize,
    /// Declared bytes per sender.
    pub per_sender: u64,
    /// Declared bytes in all.
    pub total: u64,
}

/// What [`RedisBlobs::create`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateOutcome {
    /// Recorded; it expires at this time (Unix milliseconds, Redis's clock).
    Created {
        /// Expiry.
        expires_ms: u64,
    },
    /// The sender's `clientRef` names this transfer already (nothing new recorded).
    Known(String),
    /// The sender has this many live transfers, the most allowed.
    TooManyTransfers(usize),
    /// Over the sender's bytes.
    SenderQuota,
    /// Over the total.
    TotalQuota,
}

/// A transfer's metadata as every node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferRecord {
    /// Who created it.
    pub sender: ClientId,
    /// Total bytes.
    pub size: u64,
    /// Bytes per chunk.
    pub chunk_size: u64,
    /// Chunks.
    pub chunk_count: u64,
    /// Expiry (Unix milliseconds).
    pub expires_ms: u64,
    /// The upload capability.
    pub upload_capability: String,
    /// The download capability.
    pub download_capability: String,
    /// Whether the download capability may delete it.
    pub one_recipient: bool,
    /// Chunks not present yet.
    pub missing: u64,
    /// Whether the chunk asked about is present.
    pub chunk_present: bool,
    /// The chunks present (only when asked for: [`RedisBlobs::look_all`]), ascending.
    pub present: Vec<u64>,
}

/// What [`RedisBlobs::land`] recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Landed {
    /// The chunk is recorded present now; `complete` when none is missing.
    New {
        /// Every chunk present.
        complete: bool,
    },
    /// It was present already (another upload, maybe through another node, landed it first).
    Already {
        /// Every chunk present.
        complete: bool,
    },
    /// The transfer is gone (deleted or expired).
    Gone,
}

/// The outcome of [`RedisBlobs::claim_drop`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropClaim {
    /// This node took the live transfer: it removes the bytes, then calls
    /// [`RedisBlobs::dropped`].
    Dropped,
    /// This node took over a deletion another node did not finish (its lease ended): it removes
    /// the bytes, then calls [`RedisBlobs::dropped`].
    Reclaimed,
    /// Another node has it (or it is gone): nothing to do.
    NotMine,
}

/// The shared directory's id as Redis knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeCheck {
    /// The same as this node's: the directory is the shared one.
    Same,
    /// Another node recorded this id: this node's directory is not the one the others use.
    Other(String),
}

fn key(part: &str) -> String {
    format!("{KEY_PREFIX}:{{blobs}}:{part}")
}

fn transfer_key(id: &str) -> String {
    key(&format!("t:{id}"))
}

fn present_key(id: &str) -> String {
    key(&format!("p:{id}"))
}

fn token_key(id: &ClientId) -> String {
    id_key("blobtok", id)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// The blob store's shared records, as seen from one node. Cheap to clone.
#[derive(Clone)]
pub struct RedisBlobs {
    conn: RedisConn,
    stats: Arc<RedisStats>,
    create: Script,
    look: Script,
    land: Script,
    drop: Script,
    due: Script,
    volume: Script,
}

impl std::fmt::Debug for RedisBlobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBlobs").finish_non_exhaustive()
    }
}

fn num(v: &[u8]) -> Result<u64, ClusterError> {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(ClusterError::Reply(
            "a blob record field that is not a number",
        ))
}

fn text(v: &[u8]) -> Result<String, ClusterError> {
    String::from_utf8(v.to_vec())
        .map_err(|_| ClusterError::Reply("a blob record field that is not text"))
}

/// The indices of the bits set in a Redis bitmap (bit 0 is the high bit of byte 0), below
/// `count`.
fn bits(map: &[u8], count: u64) -> Vec<u64> {
    let mut out = Vec::new();
    for (byte_index, byte) in map.iter().enumerate() {
        if *byte == 0 {
            continue;
        }
        for bit in 0..8u64 {
            if byte & (0x80 >> bit) != 0 {
                let i = (byte_index as u64) * 8 + bit;
                if i < count {
                    out.push(i);
                }
            }
        }
    }
    out
}

impl RedisBlobs {
    /// The records on `conn`.
    pub fn new(conn: impl Into<RedisConn>) -> Self {
        Self {
            conn: conn.into(),
            stats: Arc::default(),
            create: Script::new(&format!("{NOW}{CREATE}")),
            look: Script::new(LOOK),
            land: Script::new(LAND),
            drop: Script::new(&format!("{NOW}{DROP}")),
            due: Script::new(&format!("{NOW}{DUE}")),
            volume: Script::new(VOLUME),
        }
    }

    /// Records this component's Redis round trips and errors in `stats`.
    #[must_use]
    pub fn with_stats(mut self, stats: Arc<RedisStats>) -> Self {
        self.stats = stats;
        self
    }

    /// Checks this node's shared directory id against the one the first node recorded.
    ///
    /// # Errors
    /// Redis failing.
    pub async fn check_volume(&self, volume: &str) -> Result<VolumeCheck, ClusterError> {
        let recorded: String = self
            .volume
            .key(key("volume"))
            .arg(volume)
            .invoke_async(&mut self.conn.clone())
            .timed(&self.stats)
            .await?;
        Ok(if recorded == volume {
            VolumeCheck::Same
        } else {
            VolumeCheck::Other(recorded)
        })
    }

    /// Records `t` if the quotas allow it, in one step (or finds the transfer its `clientRef`
    /// names).
    ///
    /// # Errors
    /// Redis failing (nothing recorded).
    pub async fn create(
        &self,
        t: &NewTransfer<'_>,
        quotas: BlobQuotas,
    ) -> Result<CreateOutcome, ClusterError> {
        let (code, value): (String, String) = self
            .create
            .key(transfer_key(t.id))
            .key(key("stat"))
            .key(key("senders"))
            .key(key("refs"))
            .key(key("exp"))
            .arg(t.id)
            .arg(t.sender.as_str())
            .arg(t.size)
            .arg(t.chunk_size)
            .arg(t.chunk_count)
            .arg(millis(t.ttl))
            .arg(t.upload_capability)
            .arg(t.download_capability)
            .arg(t.client_ref.unwrap_or(""))
            .arg(u8::from(t.one_recipient))
            .arg(quotas.transfers_per_sender)
            .arg(quotas.per_sender)
            .arg(quotas.total)
            .invoke_async(&mut self.conn.clone())
            .timed(&self.stats)
            .await?;
        let n = || num(value.as_bytes());
        Ok(match code.as_str() {
            "0" => CreateOutcome::Created { expires_ms: n()? },
            "1" => CreateOutcome::Known(value),
            "2" => CreateOutcome::TooManyTransfers(usize::try_from(n()?).unwrap_or(usize::MAX)),
            "3" => CreateOutcome::SenderQuota,
            "4" => CreateOutcome::TotalQuota,
            _ => return Err(ClusterError::Reply("an unknown blob create outcome")),
        })
    }

    /// Transfer `id`'s record, with whether chunk `index` is present; `None` if it does not
    /// exist (never created, deleted, expired).
    ///
    /// # Errors
    /// Redis failing, or a record that does not parse.
    pub async fn look(
        &self,
        id: &str,
        index: Option<u64>,
    ) -> Result<Option<TransferRecord>, ClusterError> {
        self.look_with(id, index, false).await
    }

    /// Transfer `id`'s record with every chunk present listed.
    ///
    /// # Errors
    /// Redis failing, or a record that does not parse.
    pub async fn look_all(&self, id: &str) -> Result<Option<TransferRecord>, ClusterError> {
        self.look_with(id, None, true).await
    }

    async fn look_with(
        &self,
        id: &str,
        index: Option<u64>,
        all: bool,
    ) -> Result<Option<TransferRecord>, ClusterError> {
        // A bitmap offset above u32 is no chunk of any transfer (and Redis would refuse it): the
        // caller compares the index with the chunk count.
        let index = index
            .filter(|i| *i <= u64::from(u32::MAX))
            .map_or(-1, |i| i64::try_from(i).unwrap_or(-1));
        let row: Option<Vec<Vec<u8>>> = self
            .look
            .key(transfer_key(id))
            .key(present_key(id))
            .arg(index)
            .arg(u8::from(all))
            .invoke_async(&mut self.conn.clone())
            .timed(&self.stats)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let [sender, size, cs, cc, exp, up, down, one, missing, bit, map] = row.as_slice() else {
            return Err(ClusterError::Reply("a blob record of the wrong shape"));
        };
        let chunk_count = num(cc)?;
        Ok(Some(TransferRecord {
            sender: ClientId::new(&text(sender)?)
                .map_err(|_| ClusterError::Reply("a blob record with a bad sender"))?,
            size: num(size)?,
            chunk_size: num(cs)?,
            chunk_count,
            expires_ms: num(exp)?,
            upload_capability: text(up)?,
            download_capability: text(down)?,
            one_recipient: one.as_slice() == b"1",
            missing: num(missing)?,
            chunk_present: bit.as_slice() == b"1",
            present: if all {
                bits(map, chunk_count)
            } else {
                Vec::new()
            },
        }))
    }

    /// Records chunk `index` (of `len` bytes, already in place on the shared directory) of
    /// transfer `id` present. Of uploads of one chunk through several nodes, one gets
    /// [`Landed::New`] and its bytes are counted once.
    ///
    /// # Errors
    /// Redis failing.
    pub async fn land(&self, id: &str, index: u64, len: u64) -> Result<Landed, ClusterError> {
        let (old, missing): (i64, i64) = self
            .land
            .key(transfer_key(id))
            .key(present_key(id))
            .key(key("stat"))
            .arg(index)
            .arg(len)
            .invoke_async(&mut self.conn.clone())
            .timed(&self.stats)
            .await?;
        let complete = missing <= 0;
        Ok(match old {
            -1 => Landed::Gone,
            0 => Landed::New { complete },
            _ => Landed::Already { complete },
        })
    }

    /// Claims the deletion of transfer `id` (its metadata and quota go at once; the bytes are
    /// the claimer's to remove within `lease`).
    ///
    /// # Errors
    /// Redis failing (nothing claimed).
    pub async fn claim_drop(&self, id: &str, lease: Duration) -> Result<DropClaim, ClusterError> {
        let r: i64 = self
            .drop
            .key(transfer_key(id))
            .key(present_key(id))
            .key(key("stat"))
            .key(key("senders"))
            .key(key("refs"))
            .key(key("exp"))
            .key(key("gone"))
            .arg(id)
            .arg(millis(lease))
            .invoke_async(&mut self.conn.clone())
            .timed(&self.stats)
            .await?;
        Ok(match r {
            1 => DropClaim::Dropped,
            2 => DropClaim::Reclaimed,
            _ => DropClaim::NotMine,
        })
    }

    /// The bytes of claimed transfer `id` are removed: its deletion is finished.
    ///
    /// # Errors
    /// Redis failing (the lease ends and another node removes nothing again but finishes it).
    pub async fn dropped(&self, id: &str) -> Result<(), ClusterError> {
        let _: i64 = redis::cmd("ZREM")
            .arg(key("gone"))
            .arg(id)
            .query_async(&mut self.conn.clone())
            .timed(&self.stats)
            .await?;
        Ok(())
    }

    /// Up to `limit` transfers expired now, then up to `limit` deletions whose lease ended (for
    /// the sweepers to claim).
    ///
    /// # Errors
    /// Redis failing.
    pub async fn due(&self, limit: usize) -> Result<Vec<String>, ClusterError> {
        Ok(self
            .due
            .key(key("exp"))
            .key(key("gone"))
            .arg(limit)
            .invoke_async(&mut self.conn.clone())
            .timed(&self.stats)
            .await?)
    }

    /// `(bytes stored, live transfers)` over every node.
    ///
    /// # Errors
    /// Redis failing.
    pub async fn totals(&self) -> Result<(u64, u64), ClusterError> {
        let (stored, count): (Option<i64>, Option<i64>) = redis::cmd("HMGET")
            .arg(key("stat"))
            .arg("stored")
            .arg("count")
            .query_async(&mut self.conn.clone())
            .timed(&self.stats)
            .await?;
        let pos = |v: Option<i64>| u64::try_from(v.unwrap_or(0)).unwrap_or(0);
        Ok((pos(stored), pos(count)))
    }

    /// Stores `token` as `id`'s blob token for `ttl` (replacing its previous one).
    ///
    /// # Errors
    /// Redis failing (no token issued).
    pub async fn put_token(
        &self,
        id: &ClientId,
        token: &str,
        ttl: Duration,
    ) -> Result<(), ClusterError> {
        let _: () = redis::cmd("SET")
            .arg(token_key(id))
            .arg(token)
            .arg("PX")
            .arg(millis(ttl))
            .query_async(&mut self.conn.clone())
            .timed(&self.stats)
            .await?;
        Ok(())
    }

    /// `id`'s live blob token, if any.
    ///
    /// # Errors
    /// Redis failing.
    pub async fn token(&self, id: &ClientId) -> Result<Option<String>, ClusterError> {
        Ok(redis::cmd("GET")
            .arg(token_key(id))
            .query_async(&mut self.conn.clone())
            .timed(&self.stats)
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::bits;

    #[test]
    fn bitmap_bits_are_read_high_bit_first_and_bounded_by_the_count() {
        assert_eq!(bits(&[0b1000_0001, 0b0100_0000], 16), vec![0, 7, 9]);
        assert_eq!(bits(&[0b1000_0001, 0b0100_0000], 8), vec![0, 7]);
        assert!(bits(&[], 8).is_empty());
    }
}
