//! The signed device list of each id (docs/protocol.md, "Devices"), beside the mailbox in the same
//! SQLite file. The server keeps the list exactly as the identity key signed it (checked by the
//! session before it gets here) and only ever a higher counter; it cannot make one. A device the
//! new list leaves out loses its mailbox and its KeyPackages in the same transaction; its group
//! leaves stay (they are MLS members until a Commit removes them) but get no more copies.

use base64::Engine as _;
use lattice_protocol::{ClientId, DeviceId, SignedDeviceList};
use std::collections::HashMap;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};

use super::{
    insert_checked_in, EnqueueError, MailItem, MailboxKey, Quota, SqliteStore, StoreError,
};

/// The table, created with the mailbox's on every open.
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS device_lists (
    client_id TEXT PRIMARY KEY,
    counter INTEGER NOT NULL,
    -- The signed list as JSON (the wire shape), served to contacts as stored.
    list TEXT NOT NULL
);
";

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Why a device list was not stored.
#[derive(Debug, thiserror::Error)]
pub enum DeviceListError {
    /// The stored list's counter is as high or higher.
    #[error("stale device list (stored counter {stored})")]
    Stale {
        /// The stored counter.
        stored: u64,
    },
    /// Storage failure.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<rusqlite::Error> for DeviceListError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Store(e.into())
    }
}

fn list_in(conn: &Connection, id: &ClientId) -> Result<Option<SignedDeviceList>, StoreError> {
    let json: Option<String> = conn
        .prepare_cached("SELECT list FROM device_lists WHERE client_id = ?1")?
        .query_row([id.as_str()], |r| r.get(0))
        .optional()?;
    json.map(|j| serde_json::from_str(&j).map_err(|_| StoreError::Corrupt(id.to_string())))
        .transpose()
}

/// Whether `device` of `id` exists now: the primary always does, a linked device while the id's
/// stored list names it.
pub(super) fn is_current_in(
    conn: &Connection,
    id: &ClientId,
    device: &DeviceId,
) -> Result<bool, StoreError> {
    if device.is_primary() {
        return Ok(true);
    }
    Ok(list_in(conn, id)?.is_some_and(|l| l.devices.iter().any(|d| &d.device_id == device)))
}

/// Every id with linked devices and its devices (the primary first), from the stored lists.
pub(super) fn load_linked(
    conn: &Connection,
) -> Result<HashMap<ClientId, Vec<DeviceId>>, StoreError> {
    let mut stmt = conn.prepare("SELECT client_id, list FROM device_lists")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
    let mut out = HashMap::new();
    for row in rows {
        let (id, json) = row?;
        let id = ClientId::new(id.as_str()).map_err(|_| StoreError::Corrupt(id.clone()))?;
        let list: SignedDeviceList =
            serde_json::from_str(&json).map_err(|_| StoreError::Corrupt(id.to_string()))?;
        if let Some(devices) = linked_of(&list) {
            out.insert(id, devices);
        }
    }
    Ok(out)
}

/// The devices of an id with `list`, the primary first; `None` when it links none.
fn linked_of(list: &SignedDeviceList) -> Option<Vec<DeviceId>> {
    if list.devices.is_empty() {
        return None;
    }
    let mut devices = vec![DeviceId::primary()];
    devices.extend(list.devices.iter().map(|d| d.device_id.clone()));
    Some(devices)
}

impl SqliteStore {
    /// Every device of `id` (the primary first) when it has linked devices; `None` when its
    /// primary device is its only one (no list, or an empty one). No SQLite access.
    pub fn linked_devices(&self, id: &ClientId) -> Option<Vec<DeviceId>> {
        self.linked
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(id)
            .cloned()
    }

    pub(super) fn set_linked(&self, id: &ClientId, list: Option<&SignedDeviceList>) {
        let mut linked = self
            .linked
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match list.and_then(linked_of) {
            Some(devices) => linked.insert(id.clone(), devices),
            None => linked.remove(id),
        };
    }

    /// Stores `item` in every mailbox of `keys` within `quota`, in one transaction: all or
    /// nothing (a copy already there under the same sender and id counts as stored).
    ///
    /// # Errors
    /// [`EnqueueError::Full`] naming the id whose device mailbox is full; storage failure.
    pub fn enqueue_all(
        &self,
        keys: &[MailboxKey],
        item: &MailItem,
        quota: &Quota,
        ttl: Duration,
    ) -> Result<(), EnqueueError> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let result = (|| {
            let tx = inner.conn.transaction().map_err(StoreError::from)?;
            for key in keys {
                insert_checked_in(&tx, &mut inner.usage, key, item, quota, ttl, None)?;
            }
            tx.commit().map_err(StoreError::from)?;
            Ok(())
        })();
        if result.is_err() {
            // The counts may hold rows of the rolled-back copies.
            inner.recount();
        }
        result
    }

    /// The stored device list of `id`, if it has one.
    ///
    /// # Errors
    /// Storage failure, or a stored list that does not parse.
    pub fn device_list(&self, id: &ClientId) -> Result<Option<SignedDeviceList>, StoreError> {
        list_in(&self.lock().conn, id)
    }

    /// Every device of `id`: the primary first, then the listed ones in list order.
    ///
    /// # Errors
    /// Storage failure.
    pub fn devices_of(&self, id: &ClientId) -> Result<Vec<DeviceId>, StoreError> {
        let mut out = vec![DeviceId::primary()];
        if let Some(list) = self.device_list(id)? {
            out.extend(list.devices.into_iter().map(|d| d.device_id));
        }
        Ok(out)
    }

    /// Stores `list` (already verified under `id`'s identity key) if its counter is higher than
    /// the stored one's; in the same transaction every device it leaves out (or lists with
    /// another key) loses its mailbox rows and KeyPackages (its group leaves stay until a Commit
    /// drops them; fan-out skips them). Returns those devices.
    ///
    /// # Errors
    /// [`DeviceListError::Stale`] (nothing changes); storage failure.
    pub fn put_device_list(
        &self,
        id: &ClientId,
        list: &SignedDeviceList,
    ) -> Result<Vec<DeviceId>, DeviceListError> {
        let json = serde_json::to_string(list)
            .map_err(|_| StoreError::Corrupt(format!("device list of {id}")))?;
        let mut inner = self.lock();
        let inner = &mut *inner;
        let tx = inner.conn.transaction()?;
        let old = list_in(&tx, id)?;
        if let Some(old) = &old {
            if list.counter <= old.counter {
                return Err(DeviceListError::Stale {
                    stored: old.counter,
                });
            }
        }
        let removed: Vec<DeviceId> = old
            .map(|old| {
                old.devices
                    .into_iter()
                    .filter(|d| !list.devices.contains(d))
                    .map(|d| d.device_id)
                    .collect()
            })
            .unwrap_or_default();
        tx.prepare_cached(
            "INSERT INTO device_lists (client_id, counter, list) VALUES (?1, ?2, ?3)
             ON CONFLICT (client_id) DO UPDATE SET counter = excluded.counter, list = excluded.list",
        )?
        .execute(params![
            id.as_str(),
            i64::try_from(list.counter).unwrap_or(i64::MAX),
            json
        ])?;
        for device in &removed {
            let key = MailboxKey::new(id, device);
            tx.prepare_cached("DELETE FROM mailbox WHERE recipient = ?1")?
                .execute([key.as_str()])?;
            for sql in [
                "DELETE FROM key_packages WHERE client_id = ?1 AND device_id = ?2",
                "DELETE FROM last_resort_key_packages WHERE client_id = ?1 AND device_id = ?2",
            ] {
                tx.prepare_cached(sql)?
                    .execute([id.as_str(), device.as_str()])?;
            }
        }
        tx.commit()?;
        if !removed.is_empty() {
            // The mailbox counts per recipient lost the removed devices' rows.
            inner.recount();
        }
        self.set_linked(id, Some(list));
        Ok(removed)
    }
}

/// The device key of `device` on `list`, decoded (`None` if it is not listed or its key is not
/// 32 base64 bytes).
pub fn listed_key(list: &SignedDeviceList, device: &DeviceId) -> Option<[u8; 32]> {
    let entry = list.devices.iter().find(|d| &d.device_id == device)?;
    B64.decode(&entry.device_key).ok()?.try_into().ok()
}

/// Deletes an expired id's device list (a new owner of the id starts with none).
pub(super) fn forget_id(tx: &Connection, id: &str) -> Result<(), StoreError> {
    tx.prepare_cached("DELETE FROM device_lists WHERE client_id = ?1")?
        .execute([id])?;
    Ok(())
}
