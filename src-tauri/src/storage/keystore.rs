//! The peer's [`KeyStore`] (trust on first use) backed by the `pinned_keys` table, so pins
//! survive restarts.

use std::sync::Arc;

use lattice_crypto::IdentityPublicKey;
use lattice_peer::{KeyStore, PeerError};
use lattice_protocol::ClientId;

use super::Db;
use crate::messenger::now_ms;

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
            .pinned_key(peer.as_str())
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
            .pin_key(peer.as_str(), key.as_bytes(), now_ms())
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
        assert!(db.peer("bob").unwrap().unwrap().authenticated);
    }
}
