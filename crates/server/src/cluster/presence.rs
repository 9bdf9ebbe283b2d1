//! Who holds which id, across every node: `lattice:peer:{id}`, a hash `{node, conn, ik}` with a
//! TTL ([`PRESENCE_TTL`]) that the holding node refreshes ([`Presence::refresh`]); plus the sorted
//! sets `lattice:{online}` (every holder's id, for `discover` pages in id order) and
//! `lattice:{online}:exp` (the same ids scored by the expiry of their key, so the ids of a dead
//! node drop out of `discover` within one TTL). The two sets share a hash tag, so in a Redis
//! Cluster they live in one slot.
//!
//! [`Presence::claim`] is one Lua script on the id's own key, so check and set are one atomic
//! step on Redis: of any number of claims for one id racing from any number of nodes exactly one
//! wins, and a verified registration replaces another connection only when it proves the same
//! identity key (the replaced holder is returned, so the caller can tell that node to close it
//! with 4000). Expiry times come from Redis's own clock (`TIME`), never a node's.
//!
//! **The online sets are an index, updated right after** the claim, release or refresh (a
//! second script, on the sets' slot): no script touches keys of two slots, so the same code runs
//! on one Redis and on a cluster. The holder key is the truth; the index can lag it only when a
//! release and a claim of one id on two nodes interleave (the id may then miss from `discover`
//! until its holder's next refresh, at most [`PRESENCE_REFRESH`]), or when a node dies between
//! the two steps (its ids expire from the index within one TTL, as they would anyway).

use std::sync::Arc;

use base64::Engine as _;
use lattice_protocol::ClientId;
use redis::cluster_routing::Slot;
use redis::Script;

use super::stats::{RedisStats, Timed as _};
use super::{id_key, ClusterError, NodeId, RedisConn, KEY_PREFIX};

/// How long an id stays held without a refresh: a node that dies stops refreshing, and its ids
/// are free (and gone from `discover`) at most this long after.
pub const PRESENCE_TTL: std::time::Duration = std::time::Duration::from_secs(30);
/// Refreshes per TTL: three, so one late or failed refresh does not drop a live peer.
pub const REFRESHES_PER_TTL: u32 = 3;
/// How often a node refreshes its ids with the default TTL.
pub const PRESENCE_REFRESH: std::time::Duration =
    std::time::Duration::from_secs(PRESENCE_TTL.as_secs() / REFRESHES_PER_TTL as u64);
/// Shortest TTL a node accepts (`--presence-ttl`): a refresh a second.
pub const MIN_PRESENCE_TTL: std::time::Duration =
    std::time::Duration::from_secs(REFRESHES_PER_TTL as u64);
/// Ids refreshed per script call (one round trip each), so one call never blocks Redis long.
pub const REFRESH_BATCH: usize = 500;
/// Expired ids trimmed from the online sets per `discover` page (the rest on the next pages).
const TRIM_BATCH: usize = 1000;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

// Lua: the time in milliseconds on Redis's clock.
macro_rules! now_ms {
    () => {
        "local t = redis.call('TIME')\nlocal now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    };
}

/// KEYS: peer key. ARGV: node, conn, ik (base64 or ''), ttl ms, id, kem, ksig ('' for none).
/// Returns {0, node, conn} when taken, {1, '', ''} when won, {2, node, conn} when won by replacing.
const CLAIM: &str = concat!(
    "local cur = redis.call('HMGET', KEYS[1], 'node', 'conn', 'ik')\n",
    "local code = 1\n",
    "if cur[1] then\n",
    "  if cur[1] == ARGV[1] and cur[2] == ARGV[2] then\n",
    "    code = 1\n",
    "  elseif ARGV[3] ~= '' and cur[3] == ARGV[3] then\n",
    "    code = 2\n",
    "  else\n",
    "    return {0, cur[1], cur[2]}\n",
    "  end\n",
    "end\n",
    "redis.call('HSET', KEYS[1], 'node', ARGV[1], 'conn', ARGV[2], 'ik', ARGV[3], 'kem', ARGV[6], 'ksig', ARGV[7])\n",
    "redis.call('PEXPIRE', KEYS[1], ARGV[4])\n",
    "if code == 2 then return {2, cur[1], cur[2]} end\n",
    "return {1, '', ''}\n",
);

/// KEYS: peer key. ARGV: node, conn. Returns 1 if released.
const RELEASE: &str = "
local cur = redis.call('HMGET', KEYS[1], 'node', 'conn')
if cur[1] == ARGV[1] and cur[2] == ARGV[2] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
";

/// KEYS: peer keys (of one slot). ARGV: node, ttl ms, then the conn of each id. Extends each key
/// this node's connection still holds. Returns the 1-based positions of the ids another
/// connection holds now, and the negated positions of those whose key is gone (Redis restarted
/// without it, or it expired during a pause): the node claims those again.
const REFRESH: &str = "
local out = {}
for i = 1, #KEYS do
  local cur = redis.call('HMGET', KEYS[i], 'node', 'conn')
  if not cur[1] then
    out[#out + 1] = -i
  elseif cur[1] == ARGV[1] and cur[2] == ARGV[i + 2] then
    redis.call('PEXPIRE', KEYS[i], ARGV[2])
  else
    out[#out + 1] = i
  end
end
return out
";

/// KEYS: online, online:exp. ARGV: ttl ms, then ids. Lists the ids as online until the TTL from
/// now.
const INDEX: &str = concat!(
    now_ms!(),
    "local exp = now + tonumber(ARGV[1])\n",
    "for i = 2, #ARGV do\n",
    "  redis.call('ZADD', KEYS[1], 0, ARGV[i])\n",
    "  redis.call('ZADD', KEYS[2], exp, ARGV[i])\n",
    "end\n",
    "return #ARGV - 1\n",
);

/// KEYS: online, online:exp. ARGV: an id. Drops it from both.
const UNINDEX: &str = "
redis.call('ZREM', KEYS[1], ARGV[1])
return redis.call('ZREM', KEYS[2], ARGV[1])
";

/// KEYS: online, online:exp. ARGV: lex start ('-' or '(id'), count, trim batch. Trims expired ids,
/// then returns up to `count` ids in order.
const PAGE: &str = concat!(
    now_ms!(),
    "local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))\n",
    "if #dead > 0 then\n",
    "  redis.call('ZREM', KEYS[1], unpack(dead))\n",
    "  redis.call('ZREM', KEYS[2], unpack(dead))\n",
    "end\n",
    "return redis.call('ZRANGEBYLEX', KEYS[1], ARGV[1], '+', 'LIMIT', 0, tonumber(ARGV[2]))\n",
);

/// Held ids whose keys share a slot (all of them on one Redis), refreshed by one script.
type SlotGroup<'a> = (Option<Slot>, Vec<&'a (ClientId, u64)>);

/// The connection holding an id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// Its node.
    pub node: NodeId,
    /// The connection's id on that node.
    pub conn: u64,
}

/// The keys a registration showed, kept with its presence so any node can answer
/// `request_public_key` for a peer online on another node (unverified peers have no binding).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PeerKeys {
    /// ML-KEM public key.
    pub public_key: Vec<u8>,
    /// Ed25519 identity key (verified peers).
    pub identity_key: Option<[u8; 32]>,
    /// The identity's signature over `public_key` (verified peers).
    pub key_signature: Option<Vec<u8>>,
}

/// What a refresh found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Refreshed {
    /// Ids another connection holds now: their sessions here are stale and should close.
    pub taken: Vec<ClientId>,
    /// Ids whose key is gone: claim them again (with their keys).
    pub gone: Vec<ClientId>,
}

/// What a claim did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The id is this connection's now; `replaced` is the connection of the same verified
    /// identity it took the id from (to be closed with 4000 by its node).
    Won {
        /// The replaced holder, if any.
        replaced: Option<Holder>,
    },
    /// Another connection holds the id and may not be replaced.
    Taken(Holder),
}

/// A node's view of presence in Redis.
#[derive(Clone)]
pub struct Presence {
    conn: RedisConn,
    stats: Arc<RedisStats>,
    node: NodeId,
    ttl_ms: u64,
    claim: Script,
    release: Script,
    refresh: Script,
    index: Script,
    unindex: Script,
    page: Script,
}

impl std::fmt::Debug for Presence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Presence")
            .field("node", &self.node)
            .field("ttl_ms", &self.ttl_ms)
            .finish_non_exhaustive()
    }
}

fn online_key() -> String {
    format!("{KEY_PREFIX}:{{online}}")
}

fn online_exp_key() -> String {
    format!("{KEY_PREFIX}:{{online}}:exp")
}

impl Presence {
    /// Presence for `node` on `conn`, ids held for [`PRESENCE_TTL`] after each claim or refresh.
    pub fn new(conn: impl Into<RedisConn>, node: NodeId) -> Self {
        Self::with_ttl(conn, node, PRESENCE_TTL)
    }

    /// The same with another TTL (tests of expiry).
    pub fn with_ttl(conn: impl Into<RedisConn>, node: NodeId, ttl: std::time::Duration) -> Self {
        Self {
            conn: conn.into(),
            stats: Arc::default(),
            node,
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1),
            claim: Script::new(CLAIM),
            release: Script::new(RELEASE),
            refresh: Script::new(REFRESH),
            index: Script::new(INDEX),
            unindex: Script::new(UNINDEX),
            page: Script::new(PAGE),
        }
    }

    /// How often the holding node must refresh its ids: [`REFRESHES_PER_TTL`] times per TTL.
    pub fn refresh_period(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.ttl_ms) / REFRESHES_PER_TTL
    }

    /// Records the round trips and errors in `stats` (shared by a node's components).
    #[must_use]
    pub fn with_stats(mut self, stats: Arc<RedisStats>) -> Self {
        self.stats = stats;
        self
    }

    /// This node.
    pub fn node(&self) -> &NodeId {
        &self.node
    }

    /// Makes connection `conn` of this node the holder of `id`. A holder on another connection
    /// is replaced only by a verified claim with the same identity key. `keys` are kept for
    /// [`Presence::keys`].
    ///
    /// # Errors
    /// Redis unreachable or failing.
    pub async fn claim(
        &self,
        id: &ClientId,
        conn: u64,
        keys: &PeerKeys,
    ) -> Result<Claim, ClusterError> {
        let ik = keys.identity_key.map(|k| B64.encode(k)).unwrap_or_default();
        let (code, node, holder_conn): (i64, String, String) = self
            .claim
            .key(id_key("peer", id))
            .arg(self.node.as_str())
            .arg(conn)
            .arg(ik)
            .arg(self.ttl_ms)
            .arg(id.as_str())
            .arg(&keys.public_key[..])
            .arg(keys.key_signature.as_deref().unwrap_or_default())
            .invoke_async(&mut self.conn.clone())
            .timed(&self.stats)
            .await?;
        let holder = || -> Result<Holder, ClusterError> {
            Ok(Holder {
                node: NodeId::from_redis(node.clone()),
                conn: holder_conn
                    .parse()
                    .map_err(|_| ClusterError::Reply("a connection id that is not a number"))?,
            })
        };
        let claim = match code {
            0 => return Ok(Claim::Taken(holder()?)),
            1 => Claim::Won { replaced: None },
            2 => Claim::Won {
                replaced: Some(holder()?),
            },
            _ => return Err(ClusterError::Reply("an unknown claim result")),
        };
        self.index(&[id]).await?;
        Ok(claim)
    }

    /// Lists `ids` in the online sets until one TTL from now.
    async fn index(&self, ids: &[&ClientId]) -> Result<(), ClusterError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut inv = self.index.prepare_invoke();
        inv.key(online_key()).key(online_exp_key()).arg(self.ttl_ms);
        for id in ids {
            inv.arg(id.as_str());
        }
        let _: i64 = inv
            .invoke_async(&mut self.conn.clone())
            .timed(&self.stats)
            .await?;
        Ok(())
    }

    /// Frees `id` if connection `conn` of this node still holds it; true if it did.
    ///
    /// # Errors
    /// Redis unreachable or failing.
    pub async fn release(&self, id: &ClientId, conn: u64) -> Result<bool, ClusterError> {
        let released: i64 = self
            .release
            .key(id_key("peer", id))
            .arg(self.node.as_str())
            .arg(conn)
            .invoke_async(&mut self.conn.clone())
            .timed(&self.stats)
            .await?;
        if released == 1 {
            let _: i64 = self
                .unindex
                .key(online_key())
                .key(online_exp_key())
                .arg(id.as_str())
                .invoke_async(&mut self.conn.clone())
                .timed(&self.stats)
                .await?;
        }
        Ok(released == 1)
    }

    /// Extends the ids this node holds, `(id, conn)` each, in batches of [`REFRESH_BATCH`].
    ///
    /// # Errors
    /// Redis unreachable or failing (ids of the batches before the failure were refreshed).
    pub async fn refresh(&self, held: &[(ClientId, u64)]) -> Result<Refreshed, ClusterError> {
        let mut out = Refreshed::default();
        for batch in held.chunks(REFRESH_BATCH) {
            // One script per slot (one for everything on one Redis), run concurrently.
            let mut groups: Vec<SlotGroup<'_>> = Vec::new();
            for entry in batch {
                let group = self.conn.script_group(&id_key("peer", &entry.0));
                match groups.iter_mut().find(|(g, _)| *g == group) {
                    Some((_, members)) => members.push(entry),
                    None => groups.push((group, vec![entry])),
                }
            }
            let calls = groups
                .iter()
                .map(|(_, members)| self.refresh_group(members));
            let mut extended: Vec<&ClientId> = Vec::with_capacity(batch.len());
            for (result, (_, members)) in futures_util::future::join_all(calls)
                .await
                .into_iter()
                .zip(&groups)
            {
                let (taken, gone) = result?;
                for (i, (id, _)) in members.iter().enumerate() {
                    if taken.contains(&i) {
                        out.taken.push(id.clone());
                    } else if gone.contains(&i) {
                        out.gone.push(id.clone());
                    } else {
                        extended.push(id);
                    }
                }
            }
            self.index(&extended).await?;
        }
        Ok(out)
    }

    /// Refreshes `members` (keys of one slot): the positions taken by another connection, and
    /// those whose key is gone.
    async fn refresh_group(
        &self,
        members: &[&(ClientId, u64)],
    ) -> Result<(Vec<usize>, Vec<usize>), ClusterError> {
        let mut inv = self.refresh.prepare_invoke();
        inv.arg(self.node.as_str()).arg(self.ttl_ms);
        for (id, conn) in members {
            inv.key(id_key("peer", id));
            inv.arg(*conn);
        }
        let positions: Vec<i64> = inv
            .invoke_async(&mut self.conn.clone())
            .timed(&self.stats)
            .await?;
        let (mut taken, mut gone) = (Vec::new(), Vec::new());
        for p in positions {
            let i = usize::try_from(p.unsigned_abs())
                .ok()
                .and_then(|p| p.checked_sub(1))
                .filter(|i| *i < members.len())
                .ok_or(ClusterError::Reply("a refresh position out of range"))?;
            if p > 0 {
                taken.push(i);
            } else {
                gone.push(i);
            }
        }
        Ok((taken, gone))
    }

    /// The holder of `id` and the keys it registered with, if `id` is online on any node.
    ///
    /// # Errors
    /// Redis unreachable or failing.
    pub async fn keys(&self, id: &ClientId) -> Result<Option<(Holder, PeerKeys)>, ClusterError> {
        type Row = (
            Option<String>,
            Option<String>,
            Option<String>,
            Option<Vec<u8>>,
            Option<Vec<u8>>,
        );
        let (node, conn, ik, kem, ksig): Row = redis::cmd("HMGET")
            .arg(id_key("peer", id))
            .arg("node")
            .arg("conn")
            .arg("ik")
            .arg("kem")
            .arg("ksig")
            .query_async(&mut self.conn.clone())
            .timed(&self.stats)
            .await?;
        let (Some(node), Some(conn), Some(public_key)) = (node, conn, kem) else {
            return Ok(None);
        };
        let identity_key = match ik.as_deref() {
            None | Some("") => None,
            Some(b64) => Some(
                B64.decode(b64)
                    .ok()
                    .and_then(|k| <[u8; 32]>::try_from(k).ok())
                    .ok_or(ClusterError::Reply("an identity key that is not 32 bytes"))?,
            ),
        };
        let holder = Holder {
            node: NodeId::from_redis(node),
            conn: conn
                .parse()
                .map_err(|_| ClusterError::Reply("a connection id that is not a number"))?,
        };
        let keys = PeerKeys {
            public_key,
            identity_key,
            key_signature: ksig.filter(|s| !s.is_empty()),
        };
        Ok(Some((holder, keys)))
    }

    /// The connection holding `id`, if any.
    ///
    /// # Errors
    /// Redis unreachable or failing.
    pub async fn holder(&self, id: &ClientId) -> Result<Option<Holder>, ClusterError> {
        let (node, conn): (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(id_key("peer", id))
            .arg("node")
            .arg("conn")
            .query_async(&mut self.conn.clone())
            .timed(&self.stats)
            .await?;
        match (node, conn) {
            (Some(node), Some(conn)) => Ok(Some(Holder {
                node: NodeId::from_redis(node),
                conn: conn
                    .parse()
                    .map_err(|_| ClusterError::Reply("a connection id that is not a number"))?,
            })),
            _ => Ok(None),
        }
    }

    /// Up to `limit` online ids after `after` (from the start if `None`), in id order, across
    /// every node; true if more follow. Ids whose key expired are trimmed first.
    ///
    /// # Errors
    /// Redis unreachable or failing.
    pub async fn online_page(
        &self,
        after: Option<&ClientId>,
        limit: usize,
    ) -> Result<(Vec<ClientId>, bool), ClusterError> {
        let start = after.map_or_else(|| "-".to_owned(), |a| format!("({a}"));
        let raw: Vec<String> = self
            .page
            .key(online_key())
            .key(online_exp_key())
            .arg(start)
            .arg(limit.saturating_add(1))
            .arg(TRIM_BATCH)
            .invoke_async(&mut self.conn.clone())
            .timed(&self.stats)
            .await?;
        let mut ids = raw
            .into_iter()
            .map(|s| ClientId::new(s).map_err(|_| ClusterError::Reply("an invalid id")))
            .collect::<Result<Vec<_>, _>>()?;
        let more = ids.len() > limit;
        ids.truncate(limit);
        Ok((ids, more))
    }
}
