//! The peer's [`KeyStore`] (trust on first use) backed by the `pinned_keys` table, so pins
//! survive restarts, and its [`ReplayStore`] backed by `replay_marks`, so a signed message
//! accepted before a restart is refused as a replay after it.

use std::sync::Arc;

use lattice_crypto::IdentityPublicKey;
use lattice_peer::replay::ReplayStore;
use lattice_peer::{KeyStore, PeerError};
use lattice_protocol::ClientId;

use super::Db;
use crate::clock::now_ms;

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
