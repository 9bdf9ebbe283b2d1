//! Durable storage: the [`Directory`] of verified id bindings and the [`Mailbox`] of sealed messages
//! for offline peers, behind traits so a Redis backend can stand beside the embedded SQLite one.
//!
//! SQLite runs in WAL mode with `synchronous = NORMAL`: a commit survives a process crash, and a
//! power cut loses at most the last transactions since the last checkpoint. Each call is one short
//! statement under a `std::sync::Mutex` (no `.await` while held), cheap enough to run on the async
//! worker threads for the low-rate operations that use it (registration, offline delivery, acks).

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lattice_protocol::{ClientId, MessageId};
use rusqlite::{params, Connection, OptionalExtension};

/// A storage failure. The server answers `INTERNAL_ERROR` and keeps the connection.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The database file could not be created.
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A stored value is not what was written.
    #[error("corrupt record for {0}")]
    Corrupt(String),
}

/// A durable binding of a client id to a Lattice identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// Ed25519 identity key.
    pub identity_key: [u8; 32],
    /// Latest ML-KEM-768 public key registered under the identity.
    pub kem_public_key: Vec<u8>,
    /// Identity signature over the KEM key.
    pub key_signature: Vec<u8>,
}

/// Who owns which id.
pub trait Directory: Send + Sync + std::fmt::Debug {
    /// The binding of `id`, if any.
    ///
    /// # Errors
    /// Storage failure.
    fn get(&self, id: &ClientId) -> Result<Option<Binding>, StoreError>;
    /// Creates or updates the binding of `id`. The caller has checked that an existing binding has
    /// the same identity key.
    ///
    /// # Errors
    /// Storage failure.
    fn put(&self, id: &ClientId, binding: &Binding) -> Result<(), StoreError>;
}

/// Why a message was not queued.
#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    /// The recipient's quota is used up.
    #[error("mailbox of {0} is full")]
    Full(ClientId),
    /// Storage failure.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A queued message: the complete `message` frame as it will be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailItem {
    /// The message id (the sender's, or one the server assigned).
    pub message_id: MessageId,
    /// Who sent it. Part of the dedup key: one sender reusing another's message id must not
    /// silently suppress the other's message.
    pub sender: ClientId,
    /// The encoded frame.
    pub frame: String,
}

/// Store-and-forward queue of sealed messages for offline verified peers. A message stays until the
/// recipient acknowledges it or it expires.
pub trait Mailbox: Send + Sync + std::fmt::Debug {
    /// Queues `item` for `recipient`. Queuing the same (sender, id) again is a no-op.
    ///
    /// # Errors
    /// [`EnqueueError::Full`] past `quota` entries; storage failure.
    fn enqueue(
        &self,
        recipient: &ClientId,
        item: &MailItem,
        quota: u32,
        ttl: Duration,
    ) -> Result<(), EnqueueError>;
    /// Up to `limit` unexpired entries for `recipient` after `after` (a cursor from an earlier call,
    /// 0 to start), oldest first, with their cursors.
    ///
    /// # Errors
    /// Storage failure.
    fn pending(
        &self,
        recipient: &ClientId,
        after: i64,
        limit: usize,
    ) -> Result<Vec<(i64, MailItem)>, StoreError>;
    /// Removes an acknowledged entry; true if there was one.
    ///
    /// # Errors
    /// Storage failure.
    fn remove(&self, recipient: &ClientId, message_id: &MessageId) -> Result<bool, StoreError>;
    /// Deletes expired entries; returns how many.
    ///
    /// # Errors
    /// Storage failure.
    fn purge_expired(&self) -> Result<usize, StoreError>;
    /// Entries waiting for `recipient`.
    ///
    /// # Errors
    /// Storage failure.
    fn count(&self, recipient: &ClientId) -> Result<u32, StoreError>;
}

/// SQLite implementation of [`Directory`] and [`Mailbox`], one file (or memory).
#[derive(Debug)]
pub struct SqliteStore {
    // std Mutex: every use is one short synchronous statement, never held across `.await`.
    conn: Mutex<Connection>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS bindings (
    client_id TEXT PRIMARY KEY,
    identity_key BLOB NOT NULL,
    kem_public_key BLOB NOT NULL,
    key_signature BLOB NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS mailbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    recipient TEXT NOT NULL,
    sender TEXT NOT NULL,
    message_id TEXT NOT NULL,
    frame TEXT NOT NULL,
    expires_ms INTEGER NOT NULL,
    UNIQUE (recipient, sender, message_id)
);
CREATE INDEX IF NOT EXISTS mailbox_by_recipient ON mailbox (recipient, seq);
CREATE INDEX IF NOT EXISTS mailbox_by_expiry ON mailbox (expires_ms);
";

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl SqliteStore {
    /// Opens (creating if needed) `dir/lattice-server.sqlite3`.
    ///
    /// # Errors
    /// The directory or database cannot be created or opened.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::DataDir {
            path: dir.display().to_string(),
            source,
        })?;
        let conn = Connection::open(dir.join("lattice-server.sqlite3"))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        Self::init(conn)
    }

    /// A private in-memory database (nothing survives the process).
    ///
    /// # Errors
    /// SQLite cannot allocate it.
    pub fn in_memory() -> Result<Self, StoreError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<Self, StoreError> {
        conn.busy_timeout(Duration::from_secs(5))?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version < 1 {
            // Version 0 (the first development builds) keyed the mailbox on (recipient,
            // message_id) without the sender. Rebuild it with the sender in the key; migrated rows
            // get an empty sender.
            let old: bool = conn
                .prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'mailbox'")?
                .exists([])?;
            if old {
                conn.execute_batch(&format!(
                    "BEGIN;
                     ALTER TABLE mailbox RENAME TO mailbox_v0;
                     DROP INDEX IF EXISTS mailbox_by_recipient;
                     DROP INDEX IF EXISTS mailbox_by_expiry;
                     {SCHEMA}
                     INSERT INTO mailbox (recipient, sender, message_id, frame, expires_ms)
                         SELECT recipient, '', message_id, frame, expires_ms FROM mailbox_v0 ORDER BY seq;
                     DROP TABLE mailbox_v0;
                     COMMIT;"
                ))?;
            }
        }
        conn.execute_batch(SCHEMA)?;
        conn.pragma_update(None, "user_version", 1)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent (statements are atomic),
        // so a poisoned lock is still usable.
        self.conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Writes the WAL back into the main file; called at shutdown.
    ///
    /// # Errors
    /// SQLite failure.
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        self.lock()
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")?;
        Ok(())
    }
}

impl Directory for SqliteStore {
    fn get(&self, id: &ClientId) -> Result<Option<Binding>, StoreError> {
        let conn = self.lock();
        let row = conn
            .prepare_cached(
                "SELECT identity_key, kem_public_key, key_signature FROM bindings WHERE client_id = ?1",
            )?
            .query_row([id.as_str()], |r| {
                Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?, r.get::<_, Vec<u8>>(2)?))
            })
            .optional()?;
        row.map(|(ik, kem_public_key, key_signature)| {
            let identity_key: [u8; 32] = ik
                .try_into()
                .map_err(|_| StoreError::Corrupt(id.to_string()))?;
            Ok(Binding {
                identity_key,
                kem_public_key,
                key_signature,
            })
        })
        .transpose()
    }

    fn put(&self, id: &ClientId, b: &Binding) -> Result<(), StoreError> {
        self.lock()
            .prepare_cached(
                "INSERT INTO bindings (client_id, identity_key, kem_public_key, key_signature, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (client_id) DO UPDATE SET kem_public_key = excluded.kem_public_key,
                     key_signature = excluded.key_signature, updated_ms = excluded.updated_ms",
            )?
            .execute(params![id.as_str(), &b.identity_key[..], b.kem_public_key, b.key_signature, now_ms()])?;
        Ok(())
    }
}

impl Mailbox for SqliteStore {
    fn enqueue(
        &self,
        recipient: &ClientId,
        item: &MailItem,
        quota: u32,
        ttl: Duration,
    ) -> Result<(), EnqueueError> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(StoreError::from)?;
        let now = now_ms();
        let count: u32 = tx
            .prepare_cached("SELECT COUNT(*) FROM mailbox WHERE recipient = ?1 AND expires_ms > ?2")
            .and_then(|mut s| s.query_row(params![recipient.as_str(), now], |r| r.get(0)))
            .map_err(StoreError::from)?;
        if count >= quota {
            return Err(EnqueueError::Full(recipient.clone()));
        }
        let expires = now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
        tx.prepare_cached(
            "INSERT OR IGNORE INTO mailbox (recipient, sender, message_id, frame, expires_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .and_then(|mut s| {
            s.execute(params![
                recipient.as_str(),
                item.sender.as_str(),
                item.message_id.as_str(),
                item.frame,
                expires
            ])
        })
        .map_err(StoreError::from)?;
        tx.commit().map_err(StoreError::from)?;
        Ok(())
    }

    fn pending(
        &self,
        recipient: &ClientId,
        after: i64,
        limit: usize,
    ) -> Result<Vec<(i64, MailItem)>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT seq, message_id, sender, frame FROM mailbox
             WHERE recipient = ?1 AND seq > ?2 AND expires_ms > ?3 ORDER BY seq LIMIT ?4",
        )?;
        let rows = stmt.query_map(
            params![
                recipient.as_str(),
                after,
                now_ms(),
                i64::try_from(limit).unwrap_or(i64::MAX)
            ],
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                ))
            },
        )?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, mid, sender, frame) = row?;
            let corrupt = || StoreError::Corrupt(recipient.to_string());
            let message_id = MessageId::new(mid).map_err(|_| corrupt())?;
            // Rows migrated from version 0 have no sender column value; the frame names it.
            let sender = if sender.is_empty() {
                "unknown".to_owned()
            } else {
                sender
            };
            let sender = ClientId::new(sender).map_err(|_| corrupt())?;
            out.push((
                seq,
                MailItem {
                    message_id,
                    sender,
                    frame,
                },
            ));
        }
        Ok(out)
    }

    fn remove(&self, recipient: &ClientId, message_id: &MessageId) -> Result<bool, StoreError> {
        let n = self
            .lock()
            .prepare_cached("DELETE FROM mailbox WHERE recipient = ?1 AND message_id = ?2")?
            .execute(params![recipient.as_str(), message_id.as_str()])?;
        Ok(n > 0)
    }

    fn purge_expired(&self) -> Result<usize, StoreError> {
        Ok(self
            .lock()
            .prepare_cached("DELETE FROM mailbox WHERE expires_ms <= ?1")?
            .execute([now_ms()])?)
    }

    fn count(&self, recipient: &ClientId) -> Result<u32, StoreError> {
        Ok(self
            .lock()
            .prepare_cached(
                "SELECT COUNT(*) FROM mailbox WHERE recipient = ?1 AND expires_ms > ?2",
            )?
            .query_row(params![recipient.as_str(), now_ms()], |r| r.get(0))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> ClientId {
        ClientId::new(s).unwrap()
    }
    fn item(m: &str) -> MailItem {
        from("s", m)
    }
    fn from(sender: &str, m: &str) -> MailItem {
        MailItem {
            message_id: MessageId::new(m).unwrap(),
            sender: ClientId::new(sender).unwrap(),
            frame: format!("frame-{sender}-{m}"),
        }
    }

    fn suite(store: &SqliteStore) {
        // directory
        assert_eq!(store.get(&id("a")).unwrap(), None);
        let b = Binding {
            identity_key: [7; 32],
            kem_public_key: vec![1; 4],
            key_signature: vec![2; 64],
        };
        store.put(&id("a"), &b).unwrap();
        assert_eq!(store.get(&id("a")).unwrap(), Some(b.clone()));
        let b2 = Binding {
            kem_public_key: vec![3; 4],
            ..b
        };
        store.put(&id("a"), &b2).unwrap();
        assert_eq!(store.get(&id("a")).unwrap(), Some(b2));

        // mailbox: order, dedup, quota, cursor, remove
        let ttl = Duration::from_secs(60);
        for m in ["m1", "m2", "m3"] {
            store.enqueue(&id("a"), &item(m), 3, ttl).unwrap();
        }
        store.enqueue(&id("a"), &item("m1"), 4, ttl).unwrap(); // duplicate id: no-op
        assert_eq!(store.count(&id("a")).unwrap(), 3);
        assert!(matches!(
            store.enqueue(&id("a"), &item("m4"), 3, ttl),
            Err(EnqueueError::Full(_))
        ));
        let first = store.pending(&id("a"), 0, 2).unwrap();
        assert_eq!(
            first
                .iter()
                .map(|(_, i)| i.message_id.as_str())
                .collect::<Vec<_>>(),
            ["m1", "m2"]
        );
        let rest = store.pending(&id("a"), first[1].0, 10).unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].1, item("m3"));
        assert!(store
            .remove(&id("a"), &MessageId::new("m2").unwrap())
            .unwrap());
        assert!(!store
            .remove(&id("a"), &MessageId::new("m2").unwrap())
            .unwrap());
        assert_eq!(store.count(&id("b")).unwrap(), 0);

        // expiry
        store
            .enqueue(&id("c"), &item("x"), 10, Duration::ZERO)
            .unwrap();
        assert_eq!(store.pending(&id("c"), 0, 10).unwrap().len(), 0);
        assert!(store.purge_expired().unwrap() >= 1);
    }

    #[test]
    fn in_memory_store_passes_the_suite() {
        suite(&SqliteStore::in_memory().unwrap());
    }

    #[test]
    fn file_store_passes_the_suite_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SqliteStore::open(dir.path()).unwrap();
            suite(&s);
            s.checkpoint().unwrap();
        }
        let s = SqliteStore::open(dir.path()).unwrap();
        assert!(s.get(&id("a")).unwrap().is_some());
        assert_eq!(s.count(&id("a")).unwrap(), 2);
    }

    #[test]
    fn a_version_0_mailbox_is_migrated_without_losing_mail() {
        let dir = tempfile::tempdir().unwrap();
        {
            let conn = Connection::open(dir.path().join("lattice-server.sqlite3")).unwrap();
            conn.execute_batch(
                "CREATE TABLE mailbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, recipient TEXT NOT NULL,
                     message_id TEXT NOT NULL, frame TEXT NOT NULL, expires_ms INTEGER NOT NULL,
                     UNIQUE (recipient, message_id));
                 INSERT INTO mailbox (recipient, message_id, frame, expires_ms)
                     VALUES ('bob', 'm1', 'old-frame', 9999999999999);",
            )
            .unwrap();
        }
        let s = SqliteStore::open(dir.path()).unwrap();
        let items = s.pending(&id("bob"), 0, 10).unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].1.frame, "old-frame");
        s.enqueue(
            &id("bob"),
            &from("alice", "m1"),
            10,
            Duration::from_secs(60),
        )
        .unwrap();
        assert_eq!(s.count(&id("bob")).unwrap(), 2);
    }
}
