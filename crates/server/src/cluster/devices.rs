//! The signed device list of each id in Redis (docs/protocol.md, "Devices"), the same record as
//! the SQLite path's `device_lists` table (`store/devices.rs`) for several nodes:
//! `lattice:devs:{alice}`, a hash of the stored counter (`c`) and the list exactly as the
//! identity key signed it (`l`, the wire JSON, served to contacts as stored).
//!
//! **Only a strictly higher counter is kept, across nodes.** [`RedisDevices::put_list`] reads
//! the stored list, compares the counters in Rust (exact `u64`s; Lua's numbers are doubles), and
//! writes with one script that first checks the stored counter is still the one it read (a
//! compare-and-set): of two nodes racing two uploads, the one that read first and writes second
//! finds the counter changed, reads again, and is refused as stale if the other's counter is as
//! high. Every stored list has a higher counter than the one before it, so the loop ends; it is
//! bounded anyway ([`PUT_ATTEMPTS`]).
//!
//! **What a new list removes.** A device the new list leaves out (or lists with another key)
//! loses its mailbox stream ([`super::mailbox`]'s `lattice:mbox:{alice}:d:laptop` with its
//! `:ids` and `:use`) and its KeyPackage stock ([`super::key_packages`]'s
//! `lattice:kp:{alice}:d:laptop` and `:lr`) in the same script as the write, as the SQLite path
//! deletes them in the same transaction. All of these keys carry the id's hash tag, so the
//! script touches one Redis Cluster slot and declares every key it touches.
//!
//! The signature, the bounds (at most `MAX_DEVICES_PER_ID - 1` linked devices, distinct, none
//! `primary`) are the frame handler's checks (`session::handlers::devices::check_device_list`),
//! before it calls here, as on the SQLite path.

use std::sync::Arc;

use lattice_protocol::{ClientId, DeviceId, SignedDeviceList};
use redis::Script;

use super::stats::{RedisStats, Timed as _};
use super::{id_key, ClusterError, RedisConn};

/// How many times [`RedisDevices::put_list`] reads and tries again when another node stored a
/// list between its read and its write. Each retry means a strictly higher counter was stored,
/// so a handful suffice unless uploads of one id are stormed from many nodes at once.
pub const PUT_ATTEMPTS: usize = 8;

/// KEYS: the list's hash, then every key to delete (the removed devices' mailboxes and
/// KeyPackages). ARGV: the counter read ('' for no list), the new counter, the list's JSON.
/// Returns 1 if stored, 0 if the stored counter is no longer the one read (nothing changed).
const PUT: &str = "
if (redis.call('HGET', KEYS[1], 'c') or '') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'c', ARGV[2], 'l', ARGV[3])
if #KEYS > 1 then redis.call('DEL', unpack(KEYS, 2)) end
return 1
";

/// Why a device list was not stored (nothing changed).
#[derive(Debug, thiserror::Error)]
pub enum RedisDeviceListError {
    /// The stored list's counter is as high or higher.
    #[error("stale device list (stored counter {stored})")]
    Stale {
        /// The stored counter.
        stored: u64,
    },
    /// Other nodes stored [`PUT_ATTEMPTS`] lists of this id while this one tried.
    #[error("device list of this id changed {PUT_ATTEMPTS} times while storing")]
    Contended,
    /// Redis failed, or holds a list that does not parse.
    #[error(transparent)]
    Redis(#[from] ClusterError),
}

/// The key of `id`'s device list.
pub(super) fn list_key(id: &ClientId) -> String {
    id_key("devs", id)
}

/// The devices `new` removes from `old`: left out, or listed with another key.
fn removed(old: &SignedDeviceList, new: &SignedDeviceList) -> Vec<DeviceId> {
    old.devices
        .iter()
        .filter(|d| !new.devices.contains(d))
        .map(|d| d.device_id.clone())
        .collect()
}

/// The device lists, as seen from one node.
#[derive(Clone)]
pub struct RedisDevices {
    conn: RedisConn,
    stats: Arc<RedisStats>,
    put: Script,
}

impl std::fmt::Debug for RedisDevices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisDevices").finish_non_exhaustive()
    }
}

impl RedisDevices {
    /// The device lists on `conn`.
    pub fn new(conn: impl Into<RedisConn>) -> Self {
        Self {
            conn: conn.into(),
            stats: Arc::default(),
            put: Script::new(PUT),
        }
    }

    /// Records this component's Redis round trips and errors in `stats`.
    #[must_use]
    pub fn with_stats(mut self, stats: Arc<RedisStats>) -> Self {
        self.stats = stats;
        self
    }

    /// The stored list of `id` with its counter as stored (the compare-and-set's token).
    async fn read(
        &self,
        id: &ClientId,
    ) -> Result<Option<(String, SignedDeviceList)>, ClusterError> {
        let (counter, json): (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(list_key(id))
            .arg("c")
            .arg("l")
            .query_async(&mut self.conn.clone())
            .timed(&self.stats)
            .await?;
        let (Some(counter), Some(json)) = (counter, json) else {
            return Ok(None);
        };
        let list = serde_json::from_str(&json)
            .map_err(|_| ClusterError::Reply("a stored device list that does not parse"))?;
        Ok(Some((counter, list)))
    }

    /// The stored device list of `id`, if it has one (from any node: the one record).
    ///
    /// # Errors
    /// Redis failing, or a stored list that does not parse.
    pub async fn list(&self, id: &ClientId) -> Result<Option<SignedDeviceList>, ClusterError> {
        Ok(self.read(id).await?.map(|(_, list)| list))
    }

    /// Every device of `id`: the primary first, then the listed ones in list order.
    ///
    /// # Errors
    /// As [`Self::list`].
    pub async fn devices_of(&self, id: &ClientId) -> Result<Vec<DeviceId>, ClusterError> {
        let mut out = vec![DeviceId::primary()];
        if let Some(list) = self.list(id).await? {
            out.extend(list.devices.into_iter().map(|d| d.device_id));
        }
        Ok(out)
    }

    /// Stores `list` (already verified under `id`'s identity key) if its counter is higher than
    /// the stored one's, atomically against every other node; in the same script every device
    /// it removes loses its mailbox and its KeyPackages. Returns those devices (the caller
    /// closes their connections, on whichever node holds them).
    ///
    /// # Errors
    /// [`RedisDeviceListError::Stale`] (nothing changes); [`RedisDeviceListError::Contended`];
    /// Redis failing (nothing changes).
    pub async fn put_list(
        &self,
        id: &ClientId,
        list: &SignedDeviceList,
    ) -> Result<Vec<DeviceId>, RedisDeviceListError> {
        let json = serde_json::to_string(list)
            .map_err(|_| ClusterError::Reply("a device list that does not serialize"))?;
        for _ in 0..PUT_ATTEMPTS {
            let stored = self.read(id).await?;
            let (token, gone) = match &stored {
                Some((token, old)) => {
                    if list.counter <= old.counter {
                        return Err(RedisDeviceListError::Stale {
                            stored: old.counter,
                        });
                    }
                    (token.as_str(), removed(old, list))
                }
                None => ("", Vec::new()),
            };
            let mut inv = self.put.prepare_invoke();
            inv.key(list_key(id));
            for device in &gone {
                for key in super::mailbox::device_keys(id, device) {
                    inv.key(key);
                }
                for key in super::key_packages::device_keys(id, device) {
                    inv.key(key);
                }
            }
            inv.arg(token).arg(list.counter).arg(&json);
            let done: i64 = inv
                .invoke_async(&mut self.conn.clone())
                .timed(&self.stats)
                .await
                .map_err(ClusterError::from)?;
            if done == 1 {
                return Ok(gone);
            }
        }
        Err(RedisDeviceListError::Contended)
    }

    /// Deletes `id`'s device list with every linked device's mailbox and KeyPackages (an
    /// expired id: a later owner starts with none). The primary's keys are the binding
    /// sweeper's. True if there was a list. Called for an id whose binding is gone (the sweeper,
    /// or a new owner's first registration), so no upload of its owner races the read and the
    /// delete (a list is only stored for a bound, verified id).
    ///
    /// # Errors
    /// Redis failing, or a stored list that does not parse.
    pub async fn forget(&self, id: &ClientId) -> Result<bool, ClusterError> {
        let Some((_, list)) = self.read(id).await? else {
            return Ok(false);
        };
        let mut cmd = redis::cmd("DEL");
        cmd.arg(list_key(id));
        for d in &list.devices {
            cmd.arg(&super::mailbox::device_keys(id, &d.device_id)[..]);
            cmd.arg(&super::key_packages::device_keys(id, &d.device_id)[..]);
        }
        let _: i64 = cmd
            .query_async(&mut self.conn.clone())
            .timed(&self.stats)
            .await?;
        Ok(true)
    }
}
