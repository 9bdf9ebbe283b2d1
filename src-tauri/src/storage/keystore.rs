//! The peer's [`KeyStore`] (trust on first use) backed by the `pinned_keys` table, so pins
//! survive restarts, and its [`ReplayStore`] backed by `replay_marks`, so a signed message
//! accepted before a restart is refused as a replay after it. It also keeps the last device list
//! this device signed (`own_device_list`, schema version 11), so a restart never signs the next
//! list on top of an older one a server serves (docs/mls.md, *Multi-device*).

use std::sync::Arc;

use lattice_crypto::IdentityPublicKey;
use lattice_peer::replay::ReplayStore;
use lattice_peer::{KeyStore, PeerError};
use lattice_protocol::{ClientId, SignedDeviceList};
use rusqlite::{params, Connection, OptionalExtension};

use super::error::StorageError;
use super::Db;
use crate::clock::now_ms;

const OWN_DEVICE_LIST_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS own_device_list(
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    list       TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
";

/// Schema version 11: the table of the last signed device list (idempotent).
///
/// # Errors
/// [`StorageError::Sqlite`].
pub(crate) fn migrate(conn: &Connection) -> Result<(), StorageError> {
    conn.execute_batch(OWN_DEVICE_LIST_SCHEMA)?;
    Ok(())
}

impl Db {
    /// The last device list this device signed and published, as JSON, if any.
    ///
    /// # Errors
    /// [`StorageError::Sqlite`].
    pub fn own_device_list(&self) -> Result<Option<String>, StorageError> {
        Ok(self
            .conn()
            .query_row("SELECT list FROM own_device_list WHERE id = 1", [], |r| {
                r.get(0)
            })
            .optional()?)
    }

    /// Keeps `list` (JSON) as the last device list this device signed.
    ///
    /// # Errors
    /// [`StorageError::Sqlite`].
    pub fn keep_own_device_list(&self, list: &str, now_ms: i64) -> Result<(), StorageError> {
        self.conn().execute(
            "INSERT INTO own_device_list(id, list, updated_at) VALUES (1, ?1, ?2)
             ON CONFLICT(id) DO UPDATE SET list = excluded.list, updated_at = excluded.updated_at",
            params![list, now_ms],
        )?;
        Ok(())
    }
}

/// Pinned identity keys in SQLite.
#[derive(Debug)]
pub struct DbKeyStore {
    db: Arc<Db>,
}

impl DbKeyStore {
    /// A key store over `db`.
    pub fn new(db: Arc<Db>) -> Self {
        Self { db }
    }
}

impl KeyStore for DbKeyStore {
    fn pinned(&self, peer: &ClientId) -> Result<Option<IdentityPublicKey>, PeerError> {
        let bytes = self
            .db
            .pinned_key(peer)
            .map_err(|e| PeerError::KeyStore(e.to_string()))?;
        bytes
            .map(|b| {
                IdentityPublicKey::from_bytes(&b)
                    .map_err(|e| PeerError::KeyStore(format!("pinned key of {peer}: {e}")))
            })
            .transpose()
    }

    fn pin(&self, peer: &ClientId, key: &IdentityPublicKey) -> Result<(), PeerError> {
        self.db
            .pin_key(peer, key.as_bytes(), now_ms())
            .map_err(|e| PeerError::KeyStore(e.to_string()))
    }

    fn own_device_list(&self) -> Result<Option<SignedDeviceList>, PeerError> {
        let text = self
            .db
            .own_device_list()
            .map_err(|e| PeerError::KeyStore(e.to_string()))?;
        text.map(|t| {
            serde_json::from_str(&t)
                .map_err(|e| PeerError::KeyStore(format!("the kept device list: {e}")))
        })
        .transpose()
    }

    fn keep_own_device_list(&self, list: &SignedDeviceList) -> Result<(), PeerError> {
        let text = serde_json::to_string(list).map_err(|e| PeerError::KeyStore(e.to_string()))?;
        self.db
            .keep_own_device_list(&text, now_ms())
            .map_err(|e| PeerError::KeyStore(e.to_string()))
    }
}

/// Replay high-water marks in SQLite.
#[derive(Debug)]
pub struct DbReplayStore {
    db: Arc<Db>,
}

impl DbReplayStore {
    /// A replay store over `db`.
    pub fn new(db: Arc<Db>) -> Self {
        Self { db }
    }
}

impl ReplayStore for DbReplayStore {
    fn high_water_mark(&self, sender: &ClientId) -> Result<Option<u64>, PeerError> {
        let mark = self
            .db
            .replay_mark(sender)
            .map_err(|e| PeerError::KeyStore(e.to_string()))?;
        // Stored as SQLite's signed integer; a negative one was never written by us.
        Ok(mark.map(|m| u64::try_from(m).unwrap_or(0)))
    }

    fn raise_high_water_mark(&self, sender: &ClientId, sent_at: u64) -> Result<(), PeerError> {
        let sent_at = i64::try_from(sent_at).unwrap_or(i64::MAX);
        self.db
            .raise_replay_mark(sender, sent_at)
            .map_err(|e| PeerError::KeyStore(e.to_string()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use lattice_crypto::IdentityKeyPair;

    #[test]
    fn pins_survive_in_the_database() {
        let db = Arc::new(Db::open_in_memory().unwrap());
        let store = DbKeyStore::new(Arc::clone(&db));
        let bob = ClientId::try_from("bob").unwrap();
        assert!(store.pinned(&bob).unwrap().is_none());
        let key = IdentityKeyPair::from_secret_bytes(&[7; 32]).public_key();
        store.pin(&bob, &key).unwrap();
        assert_eq!(store.pinned(&bob).unwrap(), Some(key));
        assert!(db.peer(&bob).unwrap().unwrap().authenticated);
    }

    #[test]
    fn the_last_signed_device_list_survives_reopening_and_is_replaced_by_a_newer_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.sqlite3");
        let list = |counter: u64| SignedDeviceList {
            counter,
            devices: Vec::new(),
            signature: "c2ln".into(),
        };
        {
            let store = DbKeyStore::new(Arc::new(Db::open(&path).unwrap()));
            assert_eq!(store.own_device_list().unwrap(), None);
            store.keep_own_device_list(&list(2)).unwrap();
            store.keep_own_device_list(&list(3)).unwrap();
        }
        let store = DbKeyStore::new(Arc::new(Db::open(&path).unwrap()));
        assert_eq!(store.own_device_list().unwrap(), Some(list(3)));
    }

    #[test]
    fn replay_marks_only_rise_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.sqlite3");
        let bob = ClientId::try_from("bob").unwrap();
        {
            let store = DbReplayStore::new(Arc::new(Db::open(&path).unwrap()));
            assert_eq!(store.high_water_mark(&bob).unwrap(), None);
            store.raise_high_water_mark(&bob, 2_000).unwrap();
            store.raise_high_water_mark(&bob, 1_000).unwrap();
            assert_eq!(store.high_water_mark(&bob).unwrap(), Some(2_000));
        }
        let store = DbReplayStore::new(Arc::new(Db::open(&path).unwrap()));
        assert_eq!(store.high_water_mark(&bob).unwrap(), Some(2_000));
        let carol = ClientId::try_from("carol").unwrap();
        assert_eq!(store.high_water_mark(&carol).unwrap(), None);
    }
}
