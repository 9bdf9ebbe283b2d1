//! Who holds which id, across every node: `lattice:peer:{id}`, a hash of the id's keys (`ik`,
//! `kem`, `ksig`: the same for every device of a verified id, which registers with its bound
//! keys) and one field per online device, `d:<device>` = `"<node> <conn> <expiry ms>"`, whose
//! expiry the holding node refreshes ([`Presence::refresh_devices`], within [`PRESENCE_TTL`]);
//! the key itself expires with its last device. Plus the sorted sets `lattice:{online}` (every
//! online id, for `discover` pages in id order) and `lattice:{online}:exp` (the same ids scored
//! by the expiry of their key, so the ids of a dead node drop out of `discover` within one TTL).
//! The two sets share a hash tag, so in a Redis Cluster they live in one slot.
//!
//! **An id is online while any of its devices is** (docs/protocol.md, "Devices"): a claim
//! reports whether it was the id's first live device ([`Presence::claim_device`]), a release
//! whether it was the last ([`Presence::release_device`]), so the nodes announce
//! `peer_connected` and `peer_disconnected` once per id. A device field past its expiry (its node
//! died) counts as absent and is deleted by the next script that reads it.
//!
//! [`Presence::claim_device`] is one Lua script on the id's own key, so check and set are one
//! atomic step on Redis: of any number of claims for one (id, device) racing from any number of
//! nodes exactly one wins; a verified registration replaces another connection of the device, or
//! joins the id's other devices, only when it proves the same identity key (an unverified holder
//! is never joined) (the replaced holder is returned, so the caller can tell that node to close it
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
use lattice_protocol::{ClientId, DeviceId};
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

// Lua: the live device fields of the hash in `all` (an HGETALL reply), deleting expired ones
// from KEYS[k]: calls `each(field, node, conn, exp)` for every live one.
macro_rules! live_devices {
    () => {
        "local function live(k, all, each)\n  for i = 1, #all, 2 do\n    local f = all[i]\n    if string.sub(f, 1, 2) == 'd:' then\n      local n, c, e = string.match(all[i + 1], '^(%S+) (%S+) (%S+)$')\n      e = tonumber(e) or 0\n      if e <= now then redis.call('HDEL', KEYS[k], f) else each(f, n, c, e) end\n    end\n  end\nend\n"
    };
}

/// KEYS: peer key. ARGV: node, conn, ik (base64 or ''), ttl ms, id, kem, ksig ('' for none),
/// device, relay ('1' for a link relay, else ''). Returns {0, node, conn, 0} when taken, {1, '', '', first} when won, {2, node, conn,
/// first} when won by replacing; `first` is 1 when no other device of the id is online.
const CLAIM: &str = concat!(
    now_ms!(),
    live_devices!(),
    "local me = 'd:' .. ARGV[8]\n",
    "local all = redis.call('HGETALL', KEYS[1])\n",
    "local ik = nil\n",
    "for i = 1, #all, 2 do if all[i] == 'ik' then ik = all[i + 1] end end\n",
    "local mine, other, maxexp = nil, nil, 0\n",
    "live(1, all, function(f, n, c, e)\n",
    "  if f == me then mine = {n, c} else\n",
    "    other = other or {n, c}\n",
    "    if e > maxexp then maxexp = e end\n",
    "  end\n",
    "end)\n",
    "local code = 1\n",
    "local cur = mine or other\n",
    "if cur then\n",
    "  local same = ARGV[3] ~= '' and ik == ARGV[3]\n",
    "  if mine and mine[1] == ARGV[1] and mine[2] == ARGV[2] then\n",
    "    code = 1\n",
    "  elseif same and mine then\n",
    "    code = 2\n",
    "  elseif not same then\n",
    "    return {0, cur[1], cur[2], 0}\n",
    "  end\n",
    "end\n",
    "local exp = now + tonumber(ARGV[4])\n",
    "redis.call('HSET', KEYS[1], 'ik', ARGV[3], 'kem', ARGV[6], 'ksig', ARGV[7], 'relay', ARGV[9], me, ARGV[1] .. ' ' .. ARGV[2] .. ' ' .. exp)\n",
    "if exp > maxexp then maxexp = exp end\n",
    "redis.call('PEXPIREAT', KEYS[1], maxexp)\n",
    "local first = other and 0 or 1\n",
    "if code == 2 then return {2, mine[1], mine[2], first} end\n",
    "return {1, '', '', first}\n",
);

/// KEYS: peer key. ARGV: node, conn, device. Returns 0 if that connection does not hold the
/// device, 1 if released and another device of the id is online, 2 if released and none is
/// (the key is deleted).
const RELEASE: &str = concat!(
    now_ms!(),
    live_devices!(),
    "local me = 'd:' .. ARGV[3]\n",
    "local v = redis.call('HGET', KEYS[1], me)\n",
    "if not v then return 0 end\n",
    "local n, c = string.match(v, '^(%S+) (%S+) ')\n",
    "if n ~= ARGV[1] or c ~= ARGV[2] then return 0 end\n",
    "redis.call('HDEL', KEYS[1], me)\n",
    "local maxexp = 0\n",
    "live(1, redis.call('HGETALL', KEYS[1]), function(f, n, c, e)\n",
    "  if e > maxexp then maxexp = e end\n",
    "end)\n",
    "if maxexp == 0 then redis.call('DEL', KEYS[1]) return 2 end\n",
    "redis.call('PEXPIREAT', KEYS[1], maxexp)\n",
    "return 1\n",
);

/// KEYS: peer keys (of one slot). ARGV: node, ttl ms, then the conn and the device of each key.
/// Extends each device this node's connection still holds. Returns the 1-based positions of the
/// devices another connection holds now, and the negated positions of those whose field is gone
/// or expired (Redis restarted without it, or it expired during a pause): the node claims those
/// again.
const REFRESH: &str = concat!(
    now_ms!(),
    "local out = {}\n",
    "local ttl = tonumber(ARGV[2])\n",
    "for i = 1, #KEYS do\n",
    "  local f = 'd:' .. ARGV[2 * i + 2]\n",
    "  local v = redis.call('HGET', KEYS[i], f)\n",
    "  local n, c, e = nil, nil, 0\n",
    "  if v then n, c, e = string.match(v, '^(%S+) (%S+) (%S+)$') end\n",
    "  if not v then\n",
    "    out[#out + 1] = -i\n",
    "  elseif n == ARGV[1] and c == ARGV[2 * i + 1] then\n",
    "    redis.call('HSET', KEYS[i], f, n .. ' ' .. c .. ' ' .. (now + ttl))\n",
    "    if redis.call('PTTL', KEYS[i]) < ttl then redis.call('PEXPIRE', KEYS[i], ttl) end\n",
    "  elseif (tonumber(e) or 0) <= now then\n",
    "    out[#out + 1] = -i\n",
    "  else\n",
    "    out[#out + 1] = i\n",
    "  end\n",
    "end\n",
    "return out\n",
);

/// KEYS: peer key. Returns {ik, kem, ksig, relay, then device, node, conn of each live device},
/// or {} when no device of the id is online.
const LIVE: &str = concat!(
    now_ms!(),
    live_devices!(),
    "local all = redis.call('HGETALL', KEYS[1])\n",
    "local h = {}\n",
    "for i = 1, #all, 2 do h[all[i]] = all[i + 1] end\n",
    "local out = {h['ik'] or '', h['kem'] or '', h['ksig'] or '', h['relay'] or ''}\n",
    "live(1, all, function(f, n, c, e)\n",
    "  out[#out + 1] = string.sub(f, 3)\n",
    "  out[#out + 1] = n\n",
    "  out[#out + 1] = c\n",
    "end)\n",
    "if #out == 4 then return {} end\n",
    "return out\n",
);

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
type SlotGroup<'a> = (Option<Slot>, Vec<&'a (ClientId, DeviceId, u64)>);

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
    /// A link relay (`register` with `linkRelay`): held like any id (so messages reach it), but
    /// never in the online index, and no node answers `request_public_key` for it.
    pub link_relay: bool,
}

/// What a refresh found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Refreshed {
    /// Ids another connection holds now: their sessions here are stale and should close.
    pub taken: Vec<ClientId>,
    /// Ids whose key is gone: claim them again (with their keys).
    pub gone: Vec<ClientId>,
}

/// What a refresh of devices found ([`Presence::refresh_devices`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DevicesRefreshed {
    /// Devices another connection holds now: their sessions here are stale and should close.
    pub taken: Vec<(ClientId, DeviceId)>,
    /// Devices whose field is gone: claim them again (with their keys).
    pub gone: Vec<(ClientId, DeviceId)>,
}

/// What a release did ([`Presence::release_device`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Released {
    /// The connection did not hold the device (replaced, or expired and claimed elsewhere).
    NotHeld,
    /// Released; `last` when no device of the id is online any more (presence changes).
    Released {
        /// No other device of the id is online.
        last: bool,
    },
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

fn parse_holder(node: String, conn: &str) -> Result<Holder, ClusterError> {
    Ok(Holder {
        node: NodeId::from_redis(node),
        conn: conn
            .parse()
            .map_err(|_| ClusterError::Reply("a connection id that is not a number"))?,
    })
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
    live: Script,
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
            live: Script::new(LIVE),
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

    /// Makes connection `conn` of this node the holder of `id`'s primary device
    /// ([`Self::claim_device`]).
    ///
    /// # Errors
    /// Redis unreachable or failing.
    pub async fn claim(
        &self,
        id: &ClientId,
        conn: u64,
        keys: &PeerKeys,
    ) -> Result<Claim, ClusterError> {
        Ok(self
            .claim_device(id, &DeviceId::primary(), conn, keys)
            .await?
            .0)
    }

    /// Makes connection `conn` of this node the holder of `id`'s `device`. A holder of the
    /// device on another connection is replaced, and another online device of the id is joined,
    /// only by a verified claim with the same identity key. `keys` are kept for
    /// [`Presence::keys`]. The flag is true when no other device of the id was online (the id
    /// comes online: `peer_connected`).
    ///
    /// # Errors
    /// Redis unreachable or failing.
    pub async fn claim_device(
        &self,
        id: &ClientId,
        device: &DeviceId,
        conn: u64,
        keys: &PeerKeys,
    ) -> Result<(Claim, bool), ClusterError> {
        let ik = keys.identity_key.map(|k| B64.encode(k)).unwrap_or_default();
        let (code, node, holder_conn, first): (i64, String, String, i64) = self
            .claim
            .key(id_key("peer", id))
            .arg(self.node.as_str())
            .arg(conn)
            .arg(ik)
            .arg(self.ttl_ms)
            .arg(id.as_str())
            .arg(&keys.public_key[..])
            .arg(keys.key_signature.as_deref().unwrap_or_default())
            .arg(device.as_str())
            .arg(if keys.link_relay { "1" } else { "" })
            .invoke_async(&mut self.conn.clone())
            .timed(&self.stats)
            .await?;
        let holder =
            || -> Result<Holder, ClusterError> { parse_holder(node.clone(), &holder_conn) };
        let claim = match code {
            0 => return Ok((Claim::Taken(holder()?), false)),
            1 => Claim::Won { replaced: None },
            2 => Claim::Won {
                replaced: Some(holder()?),
            },
            _ => return Err(ClusterError::Reply("an unknown claim result")),
        };
        if !keys.link_relay {
            self.index(&[id]).await?;
        }
        Ok((claim, first == 1))
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

    /// Frees `id`'s primary device if connection `conn` of this node still holds it; true if
    /// it did ([`Self::release_device`]).
    ///
    /// # Errors
    /// Redis unreachable or failing.
    pub async fn release(&self, id: &ClientId, conn: u64) -> Result<bool, ClusterError> {
        Ok(self.release_device(id, &DeviceId::primary(), conn).await? != Released::NotHeld)
    }

    /// Frees `id`'s `device` if connection `conn` of this node still holds it; the id leaves the
    /// online sets with its last device.
    ///
    /// # Errors
    /// Redis unreachable or failing.
    pub async fn release_device(
        &self,
        id: &ClientId,
        device: &DeviceId,
        conn: u64,
    ) -> Result<Released, ClusterError> {
        let code: i64 = self
            .release
            .key(id_key("peer", id))
            .arg(self.node.as_str())
            .arg(conn)
            .arg(device.as_str())
            .invoke_async(&mut self.conn.clone())
            .timed(&self.stats)
            .await?;
        if code == 2 {
            let _: i64 = self
                .unindex
                .key(online_key())
                .key(online_exp_key())
                .arg(id.as_str())
                .invoke_async(&mut self.conn.clone())
                .timed(&self.stats)
                .await?;
        }
        Ok(match code {
            0 => Released::NotHeld,
            1 => Released::Released { last: false },
            _ => Released::Released { last: true },
        })
    }

    /// Extends the primary devices this node holds, `(id, conn)` each
    /// ([`Self::refresh_devices`]).
    ///
    /// # Errors
    /// As [`Self::refresh_devices`].
    pub async fn refresh(&self, held: &[(ClientId, u64)]) -> Result<Refreshed, ClusterError> {
        let held: Vec<(ClientId, DeviceId, u64)> = held
            .iter()
            .map(|(id, conn)| (id.clone(), DeviceId::primary(), *conn))
            .collect();
        let r = self.refresh_devices(&held).await?;
        Ok(Refreshed {
            taken: r.taken.into_iter().map(|(id, _)| id).collect(),
            gone: r.gone.into_iter().map(|(id, _)| id).collect(),
        })
    }

    /// Extends the devices this node holds, `(id, device, conn)` each, in batches of
    /// [`REFRESH_BATCH`].
    ///
    /// # Errors
    /// Redis unreachable or failing (devices of the batches before the failure were refreshed).
    pub async fn refresh_devices(
        &self,
        held: &[(ClientId, DeviceId, u64)],
    ) -> Result<DevicesRefreshed, ClusterError> {
        self.refresh_held(held, true).await
    }

    /// Extends link relays this node holds, `(id, device, conn)` each, as
    /// [`Self::refresh_devices`] does but without listing them in the online index.
    ///
    /// # Errors
    /// As [`Self::refresh_devices`].
    pub async fn refresh_unlisted(
        &self,
        held: &[(ClientId, DeviceId, u64)],
    ) -> Result<DevicesRefreshed, ClusterError> {
        self.refresh_held(held, false).await
    }

    async fn refresh_held(
        &self,
        held: &[(ClientId, DeviceId, u64)],
        listed: bool,
    ) -> Result<DevicesRefreshed, ClusterError> {
        let mut out = DevicesRefreshed::default();
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
            // (An id with several devices here is listed once per device: ZADD is idempotent.)
            for (result, (_, members)) in futures_util::future::join_all(calls)
                .await
                .into_iter()
                .zip(&groups)
            {
                let (taken, gone) = result?;
                for (i, (id, device, _)) in members.iter().enumerate() {
                    if taken.contains(&i) {
                        out.taken.push((id.clone(), device.clone()));
                    } else if gone.contains(&i) {
                        out.gone.push((id.clone(), device.clone()));
                    } else {
                        extended.push(id);
                    }
                }
            }
            if listed {
                self.index(&extended).await?;
            }
        }
        Ok(out)
    }

    /// Refreshes `members` (keys of one slot): the positions taken by another connection, and
    /// those whose key is gone.
    async fn refresh_group(
        &self,
        members: &[&(ClientId, DeviceId, u64)],
    ) -> Result<(Vec<usize>, Vec<usize>), ClusterError> {
        let mut inv = self.refresh.prepare_invoke();
        inv.arg(self.node.as_str()).arg(self.ttl_ms);
        for (id, device, conn) in members {
            inv.key(id_key("peer", id));
            inv.arg(*conn).arg(device.as_str());
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

    /// Every online device of `id` with its holder (the primary first if online), and the keys
    /// the id registered with; `None` when no device of `id` is online on any node.
    ///
    /// # Errors
    /// Redis unreachable or failing.
    pub async fn live(
        &self,
        id: &ClientId,
    ) -> Result<Option<(Vec<(DeviceId, Holder)>, PeerKeys)>, ClusterError> {
        let raw: Vec<Vec<u8>> = self
            .live
            .key(id_key("peer", id))
            .invoke_async(&mut self.conn.clone())
            .timed(&self.stats)
            .await?;
        let [ik, kem, ksig, relay, devices @ ..] = raw.as_slice() else {
            return Ok(None);
        };
        let text = |b: &[u8]| -> Result<String, ClusterError> {
            String::from_utf8(b.to_vec())
                .map_err(|_| ClusterError::Reply("a presence field that is not text"))
        };
        let identity_key = match ik.as_slice() {
            [] => None,
            b64 => Some(
                B64.decode(b64)
                    .ok()
                    .and_then(|k| <[u8; 32]>::try_from(k).ok())
                    .ok_or(ClusterError::Reply("an identity key that is not 32 bytes"))?,
            ),
        };
        let mut holders = Vec::with_capacity(devices.len() / 3);
        for d in devices.chunks(3) {
            let [device, node, conn] = d else {
                return Err(ClusterError::Reply("a presence reply of the wrong length"));
            };
            let device = DeviceId::new(text(device)?)
                .map_err(|_| ClusterError::Reply("an invalid device id"))?;
            holders.push((device, parse_holder(text(node)?, &text(conn)?)?));
        }
        if let Some(i) = holders.iter().position(|(d, _)| d.is_primary()) {
            holders.swap(0, i);
        }
        let keys = PeerKeys {
            public_key: kem.clone(),
            identity_key,
            key_signature: Some(ksig.clone()).filter(|s| !s.is_empty()),
            link_relay: relay.as_slice() == b"1",
        };
        Ok(Some((holders, keys)))
    }

    /// A holder of `id` (its primary device if online, else any) and the keys it registered
    /// with, if `id` is online on any node.
    ///
    /// # Errors
    /// Redis unreachable or failing.
    pub async fn keys(&self, id: &ClientId) -> Result<Option<(Holder, PeerKeys)>, ClusterError> {
        Ok(self.live(id).await?.and_then(|(holders, keys)| {
            holders.into_iter().next().map(|(_, holder)| (holder, keys))
        }))
    }

    /// The connection holding `id` (its primary device if online, else any), if any.
    ///
    /// # Errors
    /// Redis unreachable or failing.
    pub async fn holder(&self, id: &ClientId) -> Result<Option<Holder>, ClusterError> {
        Ok(self.keys(id).await?.map(|(holder, _)| holder))
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
