//! The MLS KeyPackage directory in Redis, the same directory as the SQLite one
//! (`store::SqliteStore::upload_key_packages` and `fetch_key_package`) for several nodes:
//! `lattice:kp:{alice}`, a list of one-time KeyPackages (oldest first), and `lattice:kp:{alice}:lr`,
//! the last-resort KeyPackage. Both share the owner's hash tag (one Redis Cluster slot), so each
//! operation is one Lua script, atomic whichever node runs it:
//!
//! - an upload adds its whole batch or nothing, within [`MAX_KEY_PACKAGE_STOCK`] (the check and
//!   the write are one step, so uploads racing from two nodes cannot overfill the stock), and
//!   replaces the last-resort KeyPackage if it carries one;
//! - a fetch takes the oldest one-time KeyPackage (`LPOP`: no two fetches, on any nodes, ever get
//!   the same one), or, with none left, the last-resort one (kept), and says how many are left,
//!   so the caller sends the owner its low-stock notice below [`KEY_PACKAGE_LOW_STOCK`]
//!   ([`FetchedKeyPackage::low_stock`]).
//!
//! Sizes and counts per upload ([`lattice_protocol::limits::MAX_KEY_PACKAGE_BYTES`],
//! [`lattice_protocol::limits::MAX_KEY_PACKAGE_UPLOAD`]) are the frame handler's checks, before it
//! calls here, as on the SQLite path.
//!
//! [`KEY_PACKAGE_LOW_STOCK`]: lattice_protocol::limits::KEY_PACKAGE_LOW_STOCK

use std::sync::Arc;

use lattice_protocol::limits::MAX_DEVICES_PER_ID;
use lattice_protocol::limits::{KEY_PACKAGE_LOW_STOCK, MAX_KEY_PACKAGE_STOCK};
use lattice_protocol::{ClientId, DeviceId};
use redis::Script;

use super::stats::{RedisStats, Timed as _};
use super::{id_key, ClusterError, RedisConn};
use crate::store::{FetchedKeyPackage, Stock};

/// KEYS: one-time list, last resort. ARGV: max stock, last resort ('' for none), then the
/// one-time KeyPackages. Returns {0, stock} when the stock would exceed the max (nothing stored),
/// else {1, stock after, 1 if a last resort is stored}.
const UPLOAD: &str = "
local n = redis.call('LLEN', KEYS[1])
if n + #ARGV - 2 > tonumber(ARGV[1]) then return {0, n, 0} end
if #ARGV > 2 then redis.call('RPUSH', KEYS[1], unpack(ARGV, 3)) end
if ARGV[2] ~= '' then redis.call('SET', KEYS[2], ARGV[2]) end
return {1, redis.call('LLEN', KEYS[1]), redis.call('EXISTS', KEYS[2])}
";

/// KEYS: one-time list, last resort. Returns {KeyPackage, 0, left} for a one-time KeyPackage,
/// {KeyPackage, 1, 0} for the last resort, nil for none.
const FETCH: &str = "
local kp = redis.call('LPOP', KEYS[1])
if kp then return {kp, 0, redis.call('LLEN', KEYS[1])} end
local lr = redis.call('GET', KEYS[2])
if lr then return {lr, 1, 0} end
return false
";

/// KEYS: (one-time list, last resort) of each device of one owner. For each device, in order,
/// FETCH's step: returns {KeyPackage or '', 1 last resort / 0 one-time / -1 none, left} per
/// device.
const FETCH_ALL: &str = "
local out = {}
for i = 1, #KEYS, 2 do
  local kp = redis.call('LPOP', KEYS[i])
  if kp then
    out[#out + 1] = {kp, 0, redis.call('LLEN', KEYS[i])}
  else
    local lr = redis.call('GET', KEYS[i + 1])
    if lr then out[#out + 1] = {lr, 1, 0} else out[#out + 1] = {'', -1, 0} end
  end
end
return out
";

/// Why an upload was refused (nothing of it is stored).
#[derive(Debug, thiserror::Error)]
pub enum RedisUploadError {
    /// The stock would exceed [`MAX_KEY_PACKAGE_STOCK`].
    #[error("stock full: {stock} stored, {adding} more would exceed {MAX_KEY_PACKAGE_STOCK}")]
    StockFull {
        /// Stored now.
        stock: u32,
        /// In the upload.
        adding: usize,
    },
    /// Redis failed: nothing is stored.
    #[error(transparent)]
    Redis(#[from] ClusterError),
}

/// `[one-time list, last resort]` of `owner` (its primary device's).
pub(super) fn keys(owner: &ClientId) -> [String; 2] {
    device_keys(owner, &DeviceId::primary())
}

/// `[one-time list, last resort]` of `owner`'s `device`: `lattice:kp:{alice}` and its `:lr` for
/// the primary device (every id's stock before devices), `lattice:kp:{alice}:d:laptop` and its
/// `:lr` for a linked device. One hash tag, so one script reaches every device's stock.
pub(super) fn device_keys(owner: &ClientId, device: &DeviceId) -> [String; 2] {
    let mut list = id_key("kp", owner);
    if !device.is_primary() {
        list = format!("{list}:d:{device}");
    }
    let lr = format!("{list}:lr");
    [list, lr]
}

/// The KeyPackage directory, as seen from one node.
#[derive(Clone)]
pub struct RedisKeyPackages {
    conn: RedisConn,
    stats: Arc<RedisStats>,
    upload: Script,
    fetch: Script,
    fetch_all: Script,
}

impl std::fmt::Debug for RedisKeyPackages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisKeyPackages").finish_non_exhaustive()
    }
}

impl FetchedKeyPackage {
    /// Whether the owner's stock is low enough after this fetch for a `key_packages_low` notice.
    pub fn low_stock(&self) -> bool {
        usize::try_from(self.stock_left).unwrap_or(usize::MAX) < KEY_PACKAGE_LOW_STOCK
    }
}

fn to_u32(n: i64) -> u32 {
    u32::try_from(n).unwrap_or(if n < 0 { 0 } else { u32::MAX })
}

impl RedisKeyPackages {
    /// The directory on `conn`.
    pub fn new(conn: impl Into<RedisConn>) -> Self {
        Self {
            conn: conn.into(),
            stats: Arc::default(),
            upload: Script::new(UPLOAD),
            fetch: Script::new(FETCH),
            fetch_all: Script::new(FETCH_ALL),
        }
    }

    /// Records this component's Redis round trips and errors in `stats`.
    #[must_use]
    pub fn with_stats(mut self, stats: Arc<RedisStats>) -> Self {
        self.stats = stats;
        self
    }

    /// Adds `one_time` KeyPackages to `owner`'s stock and replaces its last-resort KeyPackage if
    /// `last_resort` is given, atomically; the stock after it.
    ///
    /// # Errors
    /// [`RedisUploadError::StockFull`] if the stock would exceed [`MAX_KEY_PACKAGE_STOCK`]
    /// (nothing is stored); Redis failing (nothing is stored).
    pub async fn upload(
        &self,
        owner: &ClientId,
        one_time: &[Vec<u8>],
        last_resort: Option<&[u8]>,
    ) -> Result<Stock, RedisUploadError> {
        self.upload_device(owner, &DeviceId::primary(), one_time, last_resort)
            .await
    }

    /// [`Self::upload`] to the stock of `owner`'s `device` (each device has its own, within
    /// [`MAX_KEY_PACKAGE_STOCK`]).
    ///
    /// # Errors
    /// As [`Self::upload`].
    pub async fn upload_device(
        &self,
        owner: &ClientId,
        device: &DeviceId,
        one_time: &[Vec<u8>],
        last_resort: Option<&[u8]>,
    ) -> Result<Stock, RedisUploadError> {
        let [list, lr] = device_keys(owner, device);
        let mut inv = self.upload.prepare_invoke();
        inv.key(list)
            .key(lr)
            .arg(MAX_KEY_PACKAGE_STOCK)
            .arg(last_resort.unwrap_or_default());
        for kp in one_time {
            inv.arg(&kp[..]);
        }
        let (stored, stock, has_lr): (i64, i64, i64) = inv
            .invoke_async(&mut self.conn.clone())
            .timed(&self.stats)
            .await
            .map_err(ClusterError::from)?;
        if stored == 0 {
            return Err(RedisUploadError::StockFull {
                stock: to_u32(stock),
                adding: one_time.len(),
            });
        }
        Ok(Stock {
            one_time: to_u32(stock),
            last_resort: has_lr == 1,
        })
    }

    /// Takes `owner`'s oldest one-time KeyPackage (no two fetches from any nodes get the same
    /// one), or, with none left, its last-resort KeyPackage (kept); `None` if it has neither.
    ///
    /// # Errors
    /// Redis failing (nothing was taken).
    pub async fn fetch(&self, owner: &ClientId) -> Result<Option<FetchedKeyPackage>, ClusterError> {
        let [list, lr] = keys(owner);
        let reply: Option<(Vec<u8>, i64, i64)> = self
            .fetch
            .key(list)
            .key(lr)
            .invoke_async(&mut self.conn.clone())
            .timed(&self.stats)
            .await?;
        let Some((data, last_resort, left)) = reply else {
            return Ok(None);
        };
        Ok(Some(FetchedKeyPackage {
            data,
            last_resort: last_resort == 1,
            stock_left: to_u32(left),
        }))
    }

    /// One KeyPackage of every one of `devices` of `owner` (`key_package_fetch` with
    /// `allDevices`), each taken as [`Self::fetch`] takes one, all in one script: the answer is
    /// one consistent cut across nodes. In the order of `devices`; `None` for a device with
    /// neither a one-time nor a last-resort KeyPackage. At most [`MAX_DEVICES_PER_ID`] devices
    /// are read (the rest are answered `None`: an id never has more).
    ///
    /// # Errors
    /// Redis failing (nothing was taken).
    pub async fn fetch_all(
        &self,
        owner: &ClientId,
        devices: &[DeviceId],
    ) -> Result<Vec<(DeviceId, Option<FetchedKeyPackage>)>, ClusterError> {
        let devices = devices.get(..MAX_DEVICES_PER_ID).unwrap_or(devices);
        if devices.is_empty() {
            return Ok(Vec::new());
        }
        let mut inv = self.fetch_all.prepare_invoke();
        for device in devices {
            let [list, lr] = device_keys(owner, device);
            inv.key(list).key(lr);
        }
        let reply: Vec<(Vec<u8>, i64, i64)> = inv
            .invoke_async(&mut self.conn.clone())
            .timed(&self.stats)
            .await?;
        if reply.len() != devices.len() {
            return Err(ClusterError::Reply("a KeyPackage fetch of another length"));
        }
        let out = devices
            .iter()
            .zip(reply)
            .map(|(device, (data, kind, left))| {
                let fetched = (kind >= 0).then(|| FetchedKeyPackage {
                    data,
                    last_resort: kind == 1,
                    stock_left: to_u32(left),
                });
                (device.clone(), fetched)
            })
            .collect();
        Ok(out)
    }

    /// `owner`'s stock.
    ///
    /// # Errors
    /// Redis failing.
    pub async fn stock(&self, owner: &ClientId) -> Result<Stock, ClusterError> {
        self.device_stock(owner, &DeviceId::primary()).await
    }

    /// The stock of `owner`'s `device`.
    ///
    /// # Errors
    /// Redis failing.
    pub async fn device_stock(
        &self,
        owner: &ClientId,
        device: &DeviceId,
    ) -> Result<Stock, ClusterError> {
        let [list, lr] = device_keys(owner, device);
        // Both keys share the owner's slot, so one pipeline reaches one shard.
        let (one_time, has_lr): (i64, i64) = redis::pipe()
            .cmd("LLEN")
            .arg(list)
            .cmd("EXISTS")
            .arg(lr)
            .query_async(&mut self.conn.clone())
            .timed(&self.stats)
            .await?;
        Ok(Stock {
            one_time: to_u32(one_time),
            last_resort: has_lr == 1,
        })
    }
}
