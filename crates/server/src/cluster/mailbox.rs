//! The mailboxes of verified peers in Redis: `lattice:mbox:{bob}`, a stream of complete `message`
//! frames (the entry id is the drain cursor, like SQLite's `seq`); `lattice:mbox:{bob}:ids`, a hash
//! from (sender, `messageId`) to entry id, for deduplication across nodes and removal on `ack`;
//! and `lattice:mbox:{bob}:use`, the counters the quota ([`Quota`]) is checked against: messages
//! and bytes, in total and per sender (a sender's counters are deleted when they reach zero).
//!
//! **Ownership across nodes.** The stream has one consumer group (`lattice`); each connection that
//! drains a mailbox is a consumer (`node:conn`). [`RedisMailbox::claim`] hands a connection the
//! entries never handed to anyone (`XREADGROUP >`): they stay *pending* for it until the
//! recipient's `ack` removes them. One id has one live holder, so when a new connection of the
//! recipient registers, on any node, every entry still pending for an earlier connection (it was
//! closed, replaced, or its node was killed) is unacknowledged: [`RedisMailbox::take_over`] moves
//! them to the new connection (`XAUTOCLAIM`), to be sent again; the recipient drops duplicates by
//! `messageId`. Nothing is lost with the node, and no node has to give anything back.
//!
//! Enqueue, removal and expiry are each one Lua script, so a quota check and the write it allows
//! are one atomic step whichever node runs them; the three keys share the recipient's hash tag.
//! An enqueue answers only after Redis executed it: with AOF `appendfsync everysec` a crash of
//! Redis itself may lose the last second, as docs/deployment.md says (`always` loses nothing).

use lattice_protocol::limits::{MAX_DEVICES_PER_ID, MAX_GROUP_MEMBERS};
use lattice_protocol::{ClientId, DeviceId, MessageId};
use std::sync::Arc;

use redis::streams::{StreamAutoClaimReply, StreamId, StreamRangeReply};
use redis::Script;

use super::stats::{RedisStats, Timed as _};
use super::{id_key, ClusterError, NodeId, RedisConn};
use crate::store::{Accepted, Limit, MailItem, Quota};

/// Removes one entry and gives its size back to the counters. Lua, shared by the scripts below.
/// `fields` is the entry's flat field list.
const DROP_FN: &str = "
local function drop(eid, fields)
  local sender, size, key = '', 0, ''
  for i = 1, #fields, 2 do
    if fields[i] == 's' then sender = fields[i + 1]
    elseif fields[i] == 'f' then size = string.len(fields[i + 1])
    elseif fields[i] == 'k' then key = fields[i + 1] end
  end
  redis.pcall('XACK', KEYS[1], 'lattice', eid)
  redis.call('XDEL', KEYS[1], eid)
  redis.call('HDEL', KEYS[2], key)
  redis.call('HINCRBY', KEYS[3], 'n', -1)
  redis.call('HINCRBY', KEYS[3], 'b', -size)
  if redis.call('HINCRBY', KEYS[3], 'n:' .. sender, -1) <= 0 then
    redis.call('HDEL', KEYS[3], 'n:' .. sender, 'b:' .. sender)
  else
    redis.call('HINCRBY', KEYS[3], 'b:' .. sender, -size)
  end
end
";

/// KEYS: stream, ids, use. ARGV: dedup key, sender, frame, count, bytes, sender count, sender
/// bytes. Returns {1, entry id} stored, {2, entry id} already stored, {0, limit} refused
/// (1 count, 2 bytes, 3 sender count, 4 sender bytes).
const ENQUEUE: &str = "
local have = redis.call('HGET', KEYS[2], ARGV[1])
if have then return {2, have} end
local size = string.len(ARGV[3])
local u = redis.call('HMGET', KEYS[3], 'n', 'b', 'n:' .. ARGV[2], 'b:' .. ARGV[2])
if tonumber(u[1] or '0') + 1 > tonumber(ARGV[4]) then return {0, '1'} end
if tonumber(u[2] or '0') + size > tonumber(ARGV[5]) then return {0, '2'} end
if tonumber(u[3] or '0') + 1 > tonumber(ARGV[6]) then return {0, '3'} end
if tonumber(u[4] or '0') + size > tonumber(ARGV[7]) then return {0, '4'} end
local eid = redis.call('XADD', KEYS[1], '*', 's', ARGV[2], 'k', ARGV[1], 'f', ARGV[3])
redis.call('HSET', KEYS[2], ARGV[1], eid)
redis.call('HINCRBY', KEYS[3], 'n', 1)
redis.call('HINCRBY', KEYS[3], 'b', size)
redis.call('HINCRBY', KEYS[3], 'n:' .. ARGV[2], 1)
redis.call('HINCRBY', KEYS[3], 'b:' .. ARGV[2], size)
return {1, eid}
";

/// KEYS: (stream, ids, use) of each device's mailbox of one id, in order. ARGV: as ENQUEUE.
/// Checks every mailbox first and writes only if every one has room: all or nothing. A mailbox
/// that already holds the (sender, id) is left as it is. Returns {1, stored} when at least one
/// copy was written, {2, 0} when every mailbox already had it, {0, n, limit} when the n-th
/// (1-based) mailbox would pass the limit (numbered as ENQUEUE's).
const ENQUEUE_ALL: &str = "
local size = string.len(ARGV[3])
local todo = {}
for i = 1, #KEYS, 3 do
  if redis.call('HEXISTS', KEYS[i + 1], ARGV[1]) == 0 then
    local u = redis.call('HMGET', KEYS[i + 2], 'n', 'b', 'n:' .. ARGV[2], 'b:' .. ARGV[2])
    local n = (i + 2) / 3
    if tonumber(u[1] or '0') + 1 > tonumber(ARGV[4]) then return {0, n, 1} end
    if tonumber(u[2] or '0') + size > tonumber(ARGV[5]) then return {0, n, 2} end
    if tonumber(u[3] or '0') + 1 > tonumber(ARGV[6]) then return {0, n, 3} end
    if tonumber(u[4] or '0') + size > tonumber(ARGV[7]) then return {0, n, 4} end
    todo[#todo + 1] = i
  end
end
if #todo == 0 then return {2, 0} end
for _, i in ipairs(todo) do
  local eid = redis.call('XADD', KEYS[i], '*', 's', ARGV[2], 'k', ARGV[1], 'f', ARGV[3])
  redis.call('HSET', KEYS[i + 1], ARGV[1], eid)
  redis.call('HINCRBY', KEYS[i + 2], 'n', 1)
  redis.call('HINCRBY', KEYS[i + 2], 'b', size)
  redis.call('HINCRBY', KEYS[i + 2], 'n:' .. ARGV[2], 1)
  redis.call('HINCRBY', KEYS[i + 2], 'b:' .. ARGV[2], size)
end
return {1, #todo}
";

/// The group copies for some devices of one id (group leaves), checked against the id's device
/// list in the same script: a linked device no longer on it (its mailbox deleted with the list
/// that removed it) gets nothing, and no write recreates its stream.
/// KEYS: the id's device list (`lattice:devs:{alice}`), then (stream, ids, use) of each device.
/// ARGV: mode (`room`: check only; `write`), dedup key, sender, size, frame (empty for `room`),
/// count, bytes, sender count, sender bytes, then per device its id ('' for the primary, which
/// is always current). Every current mailbox without the (sender, id) is checked first; `write`
/// then stores in every one of them (all or nothing). Returns {0, n, limit} when the n-th
/// (1-based) device would pass a limit (numbered as ENQUEUE's), else {1, copies stored (or that
/// `room` would store), copies already waiting, then the 1-based numbers of the current
/// devices}.
const DEVICE_COPIES: &str = "
local listed = {}
local raw = redis.call('HGET', KEYS[1], 'l')
if raw then
  local ok, list = pcall(cjson.decode, raw)
  if ok and type(list) == 'table' and type(list.devices) == 'table' then
    for _, d in ipairs(list.devices) do
      if type(d) == 'table' and type(d.deviceId) == 'string' then listed[d.deviceId] = true end
    end
  end
end
local size = tonumber(ARGV[4])
local todo, current, waiting = {}, {}, 0
local n = 0
for i = 2, #KEYS, 3 do
  n = n + 1
  local dev = ARGV[9 + n]
  if dev == '' or listed[dev] then
    current[#current + 1] = n
    if redis.call('HEXISTS', KEYS[i + 1], ARGV[2]) == 1 then
      waiting = waiting + 1
    else
      local u = redis.call('HMGET', KEYS[i + 2], 'n', 'b', 'n:' .. ARGV[3], 'b:' .. ARGV[3])
      if tonumber(u[1] or '0') + 1 > tonumber(ARGV[6]) then return {0, n, 1} end
      if tonumber(u[2] or '0') + size > tonumber(ARGV[7]) then return {0, n, 2} end
      if tonumber(u[3] or '0') + 1 > tonumber(ARGV[8]) then return {0, n, 3} end
      if tonumber(u[4] or '0') + size > tonumber(ARGV[9]) then return {0, n, 4} end
      todo[#todo + 1] = i
    end
  end
end
if ARGV[1] == 'write' then
  for _, i in ipairs(todo) do
    local eid = redis.call('XADD', KEYS[i], '*', 's', ARGV[3], 'k', ARGV[2], 'f', ARGV[5])
    redis.call('HSET', KEYS[i + 1], ARGV[2], eid)
    redis.call('HINCRBY', KEYS[i + 2], 'n', 1)
    redis.call('HINCRBY', KEYS[i + 2], 'b', size)
    redis.call('HINCRBY', KEYS[i + 2], 'n:' .. ARGV[3], 1)
    redis.call('HINCRBY', KEYS[i + 2], 'b:' .. ARGV[3], size)
  end
end
local out = {1, #todo, waiting}
for _, k in ipairs(current) do out[#out + 1] = k end
return out
";

/// KEYS: ids, use. ARGV: dedup key, sender, size, count, bytes, sender count, sender bytes.
/// Writes nothing. Returns 0 if a message of that size fits, 1..4 the limit it would pass (as
/// ENQUEUE), 5 if the dedup key names a message already waiting.
const ROOM: &str = "
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 5 end
local size = tonumber(ARGV[3])
local u = redis.call('HMGET', KEYS[2], 'n', 'b', 'n:' .. ARGV[2], 'b:' .. ARGV[2])
if tonumber(u[1] or '0') + 1 > tonumber(ARGV[4]) then return 1 end
if tonumber(u[2] or '0') + size > tonumber(ARGV[5]) then return 2 end
if tonumber(u[3] or '0') + 1 > tonumber(ARGV[6]) then return 3 end
if tonumber(u[4] or '0') + size > tonumber(ARGV[7]) then return 4 end
return 0
";

/// KEYS: stream, ids, use. ARGV: dedup key. Returns 1 if removed.
const REMOVE: &str = "
local eid = redis.call('HGET', KEYS[2], ARGV[1])
if not eid then return 0 end
local e = redis.call('XRANGE', KEYS[1], eid, eid)
if #e == 0 then
  redis.call('HDEL', KEYS[2], ARGV[1])
  return 0
end
drop(eid, e[1][2])
return 1
";

/// KEYS: stream, ids, use. ARGV: max age ms, batch. Removes up to `batch` entries older than the
/// age on Redis's clock; returns how many.
const EXPIRE: &str = "
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cutoff = now - tonumber(ARGV[1])
if cutoff < 0 then return 0 end
local es = redis.call('XRANGE', KEYS[1], '-', tostring(cutoff), 'COUNT', tonumber(ARGV[2]))
for _, e in ipairs(es) do drop(e[1], e[2]) end
return #es
";

/// Creates the consumer group with the stream if missing (an existing one is an error we ignore).
const ENSURE_GROUP: &str = "redis.pcall('XGROUP', 'CREATE', KEYS[1], 'lattice', '0', 'MKSTREAM')\n";

/// KEYS: stream. ARGV: consumer, count. Entries never handed out before, now pending for the
/// consumer.
const CLAIM: &str = "
local r = redis.call('XREADGROUP', 'GROUP', 'lattice', ARGV[1], 'COUNT', tonumber(ARGV[2]), 'STREAMS', KEYS[1], '>')
if not r then return {} end
return r[1][2]
";

/// KEYS: stream. ARGV: consumer, start, count. Moves up to `count` pending entries (of any
/// consumer) to this one; once the scan is complete, deletes the consumers left with nothing
/// pending, so their number stays bounded. Returns XAUTOCLAIM's reply.
const TAKE_OVER: &str = "
local r = redis.call('XAUTOCLAIM', KEYS[1], 'lattice', ARGV[1], 0, ARGV[2], 'COUNT', tonumber(ARGV[3]))
if r[1] == '0-0' then
  for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], 'lattice')) do
    local name, pending = nil, 0
    for i = 1, #c, 2 do
      if c[i] == 'name' then name = c[i + 1] elseif c[i] == 'pending' then pending = c[i + 1] end
    end
    if name and name ~= ARGV[1] and pending == 0 then
      redis.call('XGROUP', 'DELCONSUMER', KEYS[1], 'lattice', name)
    end
  end
end
return r
";

/// Whether a message would be stored now ([`RedisMailbox::room`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Room {
    /// It fits the quota.
    Free,
    /// It would pass this limit.
    Full(Limit),
    /// Its (sender, `messageId`) names a message already waiting (storing it would be a no-op).
    Waiting,
}

/// A mailbox entry's position in its stream: what a drain continues after.
pub type Cursor = String;

/// The mailboxes, as seen from one node.
#[derive(Clone)]
pub struct RedisMailbox {
    conn: RedisConn,
    stats: Arc<RedisStats>,
    enqueue: Script,
    enqueue_all: Script,
    device_copies: Script,
    room: Script,
    remove: Script,
    expire: Script,
    claim: Script,
    take_over: Script,
}

impl std::fmt::Debug for RedisMailbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisMailbox").finish_non_exhaustive()
    }
}

/// Why a message was not stored.
#[derive(Debug, thiserror::Error)]
pub enum RedisEnqueueError {
    /// A limit of the recipient's quota is used up.
    #[error("mailbox full ({0:?})")]
    Full(Limit),
    /// Redis failed: the message is not stored.
    #[error(transparent)]
    Redis(#[from] ClusterError),
}

/// Why a message for every device of an id was not stored (none of its copies is).
#[derive(Debug, thiserror::Error)]
pub enum RedisEnqueueAllError {
    /// The mailbox of `device` would pass `limit` (the first full one, in the order given).
    #[error("mailbox of device {device} full ({limit:?})")]
    Full {
        /// The device whose mailbox is full.
        device: DeviceId,
        /// The limit it would pass.
        limit: Limit,
    },
    /// More devices than an id can have ([`MAX_DEVICES_PER_ID`]), none, or one named twice.
    #[error("{0} devices: an id has 1 to {MAX_DEVICES_PER_ID} distinct ones")]
    Devices(usize),
    /// Redis failed: nothing is stored.
    #[error(transparent)]
    Redis(#[from] ClusterError),
}

/// What [`RedisMailbox::device_copies`] found or did for the devices of one id.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceCopies {
    /// Copies stored (or, checking only, that would be stored).
    pub stored: usize,
    /// Devices whose mailbox already holds the (sender, `messageId`).
    pub waiting: usize,
    /// The devices that are current (the primary, and every linked device on the id's list):
    /// the ones that got (or would get) a copy or already had one.
    pub current: Vec<DeviceId>,
}

/// Whether [`RedisMailbox::device_copies`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyMode {
    /// Check the room only; nothing is written.
    Room,
    /// Store every copy, or none.
    Write,
}

/// `[ids, use, stream]` of `recipient`'s mailbox (its primary device's).
fn keys(recipient: &ClientId) -> [String; 3] {
    device_keys(recipient, &DeviceId::primary())
}

/// `[ids, use, stream]` of the mailbox of `id`'s `device`: `lattice:mbox:{alice}` (and its
/// `:ids`, `:use`) for the primary device, the mailbox every id had before devices, and
/// `lattice:mbox:{alice}:d:laptop` (`:ids`, `:use`) for a linked device. One hash tag, so every
/// device's mailbox of one id is in one Redis Cluster slot and one script can write them all.
pub(super) fn device_keys(id: &ClientId, device: &DeviceId) -> [String; 3] {
    let mut stream = id_key("mbox", id);
    if !device.is_primary() {
        stream = format!("{stream}:d:{device}");
    }
    [format!("{stream}:ids"), format!("{stream}:use"), stream]
}

/// The consumer name of connection `conn` of `node`.
pub fn consumer(node: &NodeId, conn: u64) -> String {
    format!("{node}:{conn}")
}

/// A stream entry as a mail item.
fn entry(e: StreamId) -> Result<(Cursor, MailItem), ClusterError> {
    let field = |name: &str| -> Result<String, ClusterError> {
        e.get::<String>(name)
            .ok_or(ClusterError::Reply("a mailbox entry without its fields"))
    };
    let key = field("k")?;
    let (sender, mid) = key
        .split_once(' ')
        .ok_or(ClusterError::Reply("a mailbox entry with a bad key"))?;
    let item = MailItem {
        message_id: MessageId::new(mid)
            .map_err(|_| ClusterError::Reply("an invalid message id"))?,
        sender: ClientId::new(sender).map_err(|_| ClusterError::Reply("an invalid sender"))?,
        frame: field("f")?,
    };
    Ok((e.id, item))
}

/// The limit a script numbered (as ENQUEUE's).
fn limit_of(n: i64) -> Result<Limit, ClusterError> {
    match n {
        1 => Ok(Limit::Count),
        2 => Ok(Limit::Bytes),
        3 => Ok(Limit::SenderCount),
        4 => Ok(Limit::SenderBytes),
        _ => Err(ClusterError::Reply("an unknown enqueue limit")),
    }
}

/// The dedup key of a message: (sender, id). Neither can contain a space.
fn dedup_key(sender: &ClientId, id: &MessageId) -> String {
    format!("{sender} {id}")
}

impl RedisMailbox {
    /// The mailboxes on `conn`.
    pub fn new(conn: impl Into<RedisConn>) -> Self {
        Self {
            conn: conn.into(),
            stats: Arc::default(),
            enqueue: Script::new(ENQUEUE),
            enqueue_all: Script::new(ENQUEUE_ALL),
            device_copies: Script::new(DEVICE_COPIES),
            room: Script::new(ROOM),
            remove: Script::new(&format!("{DROP_FN}{REMOVE}")),
            expire: Script::new(&format!("{DROP_FN}{EXPIRE}")),
            claim: Script::new(&format!("{ENSURE_GROUP}{CLAIM}")),
            take_over: Script::new(&format!("{ENSURE_GROUP}{TAKE_OVER}")),
        }
    }

    /// Records this component's Redis round trips and errors in `stats` (shared by a node's
    /// components, rendered on `/metrics`).
    #[must_use]
    pub fn with_stats(mut self, stats: Arc<RedisStats>) -> Self {
        self.stats = stats;
        self
    }

    /// Stores `item` for `recipient` within `quota`. Storing the same (sender, id) again, from
    /// any node, is a no-op answered [`Accepted::Duplicate`] (even when full: it is stored).
    ///
    /// # Errors
    /// [`RedisEnqueueError::Full`] naming the limit; Redis failing (then nothing was stored).
    pub async fn enqueue(
        &self,
        recipient: &ClientId,
        item: &MailItem,
        quota: &Quota,
    ) -> Result<(Accepted, Cursor), RedisEnqueueError> {
        let [ids, usage, stream] = keys(recipient);
        let (code, detail): (i64, String) = self
            .enqueue
            .key(stream)
            .key(ids)
            .key(usage)
            .arg(dedup_key(&item.sender, &item.message_id))
            .arg(item.sender.as_str())
            .arg(item.frame.as_str())
            .arg(quota.count)
            .arg(quota.bytes)
            .arg(quota.sender_count)
            .arg(quota.sender_bytes)
            .invoke_async(&mut self.conn.clone())
            .timed(&self.stats)
            .await
            .map_err(ClusterError::from)?;
        match (code, detail.as_str()) {
            (1, _) => Ok((Accepted::Stored, detail)),
            (2, _) => Ok((Accepted::Duplicate, detail)),
            (0, "1") => Err(RedisEnqueueError::Full(Limit::Count)),
            (0, "2") => Err(RedisEnqueueError::Full(Limit::Bytes)),
            (0, "3") => Err(RedisEnqueueError::Full(Limit::SenderCount)),
            (0, "4") => Err(RedisEnqueueError::Full(Limit::SenderBytes)),
            _ => Err(ClusterError::Reply("an unknown enqueue result").into()),
        }
    }

    /// Stores `item` in the mailbox of every one of `devices` of `id` within `quota` (each
    /// mailbox's own), in one script: all or nothing, as the SQLite path's
    /// `SqliteStore::enqueue_all`. A mailbox already holding the (sender, id) keeps it and counts
    /// as stored; [`Accepted::Duplicate`] when every one did.
    ///
    /// # Errors
    /// [`RedisEnqueueAllError::Full`] naming the first device (in the order of `devices`) whose
    /// mailbox would pass a limit (nothing is stored); [`RedisEnqueueAllError::Devices`] for no
    /// device or more than [`MAX_DEVICES_PER_ID`]; Redis failing (nothing is stored).
    pub async fn enqueue_all(
        &self,
        id: &ClientId,
        devices: &[DeviceId],
        item: &MailItem,
        quota: &Quota,
    ) -> Result<Accepted, RedisEnqueueAllError> {
        let distinct = devices
            .iter()
            .enumerate()
            .all(|(i, d)| !devices[..i].contains(d));
        if devices.is_empty() || devices.len() > MAX_DEVICES_PER_ID || !distinct {
            return Err(RedisEnqueueAllError::Devices(devices.len()));
        }
        let mut inv = self.enqueue_all.prepare_invoke();
        for device in devices {
            let [ids, usage, stream] = device_keys(id, device);
            inv.key(stream).key(ids).key(usage);
        }
        inv.arg(dedup_key(&item.sender, &item.message_id))
            .arg(item.sender.as_str())
            .arg(item.frame.as_str())
            .arg(quota.count)
            .arg(quota.bytes)
            .arg(quota.sender_count)
            .arg(quota.sender_bytes);
        let reply: Vec<i64> = inv
            .invoke_async(&mut self.conn.clone())
            .timed(&self.stats)
            .await
            .map_err(ClusterError::from)?;
        match reply.as_slice() {
            [1, _] => Ok(Accepted::Stored),
            [2, _] => Ok(Accepted::Duplicate),
            [0, n, limit] => {
                let device = usize::try_from(*n)
                    .ok()
                    .and_then(|n| devices.get(n.checked_sub(1)?))
                    .ok_or(ClusterError::Reply("an enqueue naming no device"))?;
                Err(RedisEnqueueAllError::Full {
                    device: device.clone(),
                    limit: limit_of(*limit)?,
                })
            }
            _ => Err(ClusterError::Reply("an unknown enqueue result").into()),
        }
    }

    /// The group copies of `item` for `devices` of `id` (the id's leaves in a group), in one
    /// script that reads `id`'s device list too: a linked device that is not on it any more (a
    /// newer list removed it) is skipped, so it gets no further copies and its deleted stream is
    /// never recreated. With [`CopyMode::Room`] only checks that every current mailbox not
    /// holding the (sender, id) yet has room within `quota`; with [`CopyMode::Write`] checks and
    /// stores them all, or none. A mailbox already holding the (sender, id) keeps it (counted in
    /// [`DeviceCopies::waiting`]).
    ///
    /// # Errors
    /// [`RedisEnqueueAllError::Full`] naming the first device (in the order of `devices`) whose
    /// mailbox would pass a limit (nothing is stored); [`RedisEnqueueAllError::Devices`] for no
    /// device, one named twice or more than [`MAX_GROUP_MEMBERS`] (a group's leaves); Redis
    /// failing (nothing is stored).
    pub async fn device_copies(
        &self,
        id: &ClientId,
        devices: &[DeviceId],
        item: &MailItem,
        quota: &Quota,
        mode: CopyMode,
    ) -> Result<DeviceCopies, RedisEnqueueAllError> {
        let distinct = devices
            .iter()
            .enumerate()
            .all(|(i, d)| !devices[..i].contains(d));
        if devices.is_empty() || devices.len() > MAX_GROUP_MEMBERS || !distinct {
            return Err(RedisEnqueueAllError::Devices(devices.len()));
        }
        let mut inv = self.device_copies.prepare_invoke();
        inv.key(super::devices::list_key(id));
        for device in devices {
            let [ids, usage, stream] = device_keys(id, device);
            inv.key(stream).key(ids).key(usage);
        }
        let (mode, frame) = match mode {
            CopyMode::Room => ("room", ""),
            CopyMode::Write => ("write", item.frame.as_str()),
        };
        inv.arg(mode)
            .arg(dedup_key(&item.sender, &item.message_id))
            .arg(item.sender.as_str())
            .arg(item.frame.len())
            .arg(frame)
            .arg(quota.count)
            .arg(quota.bytes)
            .arg(quota.sender_count)
            .arg(quota.sender_bytes);
        for device in devices {
            inv.arg(if device.is_primary() {
                ""
            } else {
                device.as_str()
            });
        }
        let reply: Vec<i64> = inv
            .invoke_async(&mut self.conn.clone())
            .timed(&self.stats)
            .await
            .map_err(ClusterError::from)?;
        let nth = |n: i64| -> Result<&DeviceId, ClusterError> {
            usize::try_from(n)
                .ok()
                .and_then(|n| devices.get(n.checked_sub(1)?))
                .ok_or(ClusterError::Reply("a copy naming no device"))
        };
        match reply.as_slice() {
            [1, stored, waiting, current @ ..] => Ok(DeviceCopies {
                stored: usize::try_from(*stored).unwrap_or(0),
                waiting: usize::try_from(*waiting).unwrap_or(0),
                current: current
                    .iter()
                    .map(|n| nth(*n).cloned())
                    .collect::<Result<_, _>>()?,
            }),
            [0, n, limit] => Err(RedisEnqueueAllError::Full {
                device: nth(*n)?.clone(),
                limit: limit_of(*limit)?,
            }),
            _ => Err(ClusterError::Reply("an unknown copy result").into()),
        }
    }

    /// Whether `item` would be stored for `recipient` within `quota` now, writing nothing (the
    /// delivery service checks every copy of a Commit before it accepts it).
    ///
    /// # Errors
    /// Redis failing.
    pub async fn room(
        &self,
        recipient: &ClientId,
        item: &MailItem,
        quota: &Quota,
    ) -> Result<Room, ClusterError> {
        let [ids, usage, _] = keys(recipient);
        let code: i64 = self
            .room
            .key(ids)
            .key(usage)
            .arg(dedup_key(&item.sender, &item.message_id))
            .arg(item.sender.as_str())
            .arg(item.frame.len())
            .arg(quota.count)
            .arg(quota.bytes)
            .arg(quota.sender_count)
            .arg(quota.sender_bytes)
            .invoke_async(&mut self.conn.clone())
            .timed(&self.stats)
            .await?;
        match code {
            0 => Ok(Room::Free),
            1 => Ok(Room::Full(Limit::Count)),
            2 => Ok(Room::Full(Limit::Bytes)),
            3 => Ok(Room::Full(Limit::SenderCount)),
            4 => Ok(Room::Full(Limit::SenderBytes)),
            5 => Ok(Room::Waiting),
            _ => Err(ClusterError::Reply("an unknown room result")),
        }
    }

    /// Up to `limit` messages for `recipient` after `after` (from the oldest if `None`), oldest
    /// first, each with its cursor.
    ///
    /// # Errors
    /// Redis failing, or an entry that is not one of ours.
    pub async fn pending(
        &self,
        recipient: &ClientId,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(Cursor, MailItem)>, ClusterError> {
        let [_, _, stream] = keys(recipient);
        let start = after.map_or_else(|| "-".to_owned(), |c| format!("({c}"));
        let reply: StreamRangeReply = redis::cmd("XRANGE")
            .arg(stream)
            .arg(start)
            .arg("+")
            .arg("COUNT")
            .arg(limit)
            .query_async(&mut self.conn.clone())
            .timed(&self.stats)
            .await?;
        reply.ids.into_iter().map(entry).collect()
    }

    /// Up to `limit` entries of `recipient`'s mailbox that no connection was handed yet, oldest
    /// first; they are pending for `consumer` (one connection: [`consumer`]) until acknowledged.
    ///
    /// # Errors
    /// Redis failing, or an entry that is not one of ours.
    pub async fn claim(
        &self,
        recipient: &ClientId,
        consumer: &str,
        limit: usize,
    ) -> Result<Vec<(Cursor, MailItem)>, ClusterError> {
        self.claim_device(recipient, &DeviceId::primary(), consumer, limit)
            .await
    }

    /// [`Self::claim`] on the mailbox of `id`'s `device` (each device drains its own).
    ///
    /// # Errors
    /// As [`Self::claim`].
    pub async fn claim_device(
        &self,
        id: &ClientId,
        device: &DeviceId,
        consumer: &str,
        limit: usize,
    ) -> Result<Vec<(Cursor, MailItem)>, ClusterError> {
        let [_, _, stream] = device_keys(id, device);
        let reply: StreamRangeReply = self
            .claim
            .key(stream)
            .arg(consumer)
            .arg(limit)
            .invoke_async(&mut self.conn.clone())
            .timed(&self.stats)
            .await?;
        reply.ids.into_iter().map(entry).collect()
    }

    /// Moves every entry of `recipient`'s mailbox handed to an earlier connection and not
    /// acknowledged to `consumer`, and returns them to be sent again (at most `limit` per call
    /// from `start`, `None` first; the second value is where to continue, `None` when done).
    ///
    /// # Errors
    /// Redis failing, or an entry that is not one of ours.
    pub async fn take_over(
        &self,
        recipient: &ClientId,
        consumer: &str,
        start: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<(Cursor, MailItem)>, Option<Cursor>), ClusterError> {
        self.take_over_device(recipient, &DeviceId::primary(), consumer, start, limit)
            .await
    }

    /// [`Self::take_over`] on the mailbox of `id`'s `device`: what an earlier connection of that
    /// device, on any node, was handed and did not acknowledge.
    ///
    /// # Errors
    /// As [`Self::take_over`].
    pub async fn take_over_device(
        &self,
        id: &ClientId,
        device: &DeviceId,
        consumer: &str,
        start: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<(Cursor, MailItem)>, Option<Cursor>), ClusterError> {
        let [_, _, stream] = device_keys(id, device);
        let reply: StreamAutoClaimReply = self
            .take_over
            .key(stream)
            .arg(consumer)
            .arg(start.unwrap_or("0-0"))
            .arg(limit)
            .invoke_async(&mut self.conn.clone())
            .timed(&self.stats)
            .await?;
        let next = (reply.next_stream_id != "0-0").then_some(reply.next_stream_id);
        let items = reply
            .claimed
            .into_iter()
            .map(entry)
            .collect::<Result<_, _>>()?;
        Ok((items, next))
    }

    /// Removes the message (`sender`, `id`) from `recipient`'s mailbox (its `ack`); true if it
    /// was there.
    ///
    /// # Errors
    /// Redis failing.
    pub async fn remove(
        &self,
        recipient: &ClientId,
        sender: &ClientId,
        id: &MessageId,
    ) -> Result<bool, ClusterError> {
        self.remove_device(recipient, &DeviceId::primary(), sender, id)
            .await
    }

    /// Removes the message (`sender`, `mid`) from the mailbox of `id`'s `device` (that device's
    /// `ack`: each device acknowledges its own copy); true if it was there.
    ///
    /// # Errors
    /// Redis failing.
    pub async fn remove_device(
        &self,
        id: &ClientId,
        device: &DeviceId,
        sender: &ClientId,
        mid: &MessageId,
    ) -> Result<bool, ClusterError> {
        let [ids, usage, stream] = device_keys(id, device);
        let removed: i64 = self
            .remove
            .key(stream)
            .key(ids)
            .key(usage)
            .arg(dedup_key(sender, mid))
            .invoke_async(&mut self.conn.clone())
            .timed(&self.stats)
            .await?;
        Ok(removed == 1)
    }

    /// Removes up to `batch` messages older than `ttl` from `recipient`'s mailbox; how many.
    ///
    /// # Errors
    /// Redis failing.
    pub async fn expire(
        &self,
        recipient: &ClientId,
        ttl: std::time::Duration,
        batch: usize,
    ) -> Result<usize, ClusterError> {
        self.expire_device(recipient, &DeviceId::primary(), ttl, batch)
            .await
    }

    /// [`Self::expire`] on the mailbox of `id`'s `device`.
    ///
    /// # Errors
    /// Redis failing.
    pub async fn expire_device(
        &self,
        id: &ClientId,
        device: &DeviceId,
        ttl: std::time::Duration,
        batch: usize,
    ) -> Result<usize, ClusterError> {
        let [ids, usage, stream] = device_keys(id, device);
        let n: usize = self
            .expire
            .key(stream)
            .key(ids)
            .key(usage)
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
            .arg(batch)
            .invoke_async(&mut self.conn.clone())
            .timed(&self.stats)
            .await?;
        Ok(n)
    }

    /// Messages waiting for `recipient`.
    ///
    /// # Errors
    /// Redis failing.
    pub async fn count(&self, recipient: &ClientId) -> Result<u64, ClusterError> {
        self.device_count(recipient, &DeviceId::primary()).await
    }

    /// Messages waiting for `id`'s `device`.
    ///
    /// # Errors
    /// Redis failing.
    pub async fn device_count(
        &self,
        id: &ClientId,
        device: &DeviceId,
    ) -> Result<u64, ClusterError> {
        let [_, _, stream] = device_keys(id, device);
        Ok(redis::cmd("XLEN")
            .arg(stream)
            .query_async(&mut self.conn.clone())
            .timed(&self.stats)
            .await?)
    }
}
