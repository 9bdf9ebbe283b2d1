//! SQLite persistence: openmls' own tables (through `openmls_sqlite_storage`, which shares the
//! workspace's rusqlite) plus two of ours, `lattice_mls_client` and `lattice_mls_groups`.
//!
//! Every operation of [`crate::MlsClient`] runs in one SQLite transaction: either all of an
//! epoch change (tree, secrets, own leaf, consumed keys) is written, or none of it, so a killed
//! process resumes at an epoch it fully has.

use std::path::Path;

use openmls_libcrux_crypto::CryptoProvider;
use openmls_sqlite_storage::{Codec, SqliteStorageProvider};
use openmls_traits::OpenMlsProvider;
use rusqlite::{Connection, OptionalExtension};

use crate::MlsError;

/// The codec openmls' rows are written with.
#[derive(Debug, Default)]
pub(crate) struct JsonCodec;

impl Codec for JsonCodec {
    type Error = serde_json::Error;

    fn to_vec<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, Self::Error> {
        serde_json::to_vec(value)
    }

    fn from_slice<T: serde::de::DeserializeOwned>(slice: &[u8]) -> Result<T, Self::Error> {
        serde_json::from_slice(slice)
    }
}

/// The openmls storage over a borrowed connection.
pub(crate) type Storage<'a> = SqliteStorageProvider<JsonCodec, &'a Connection>;

/// The provider handed to openmls for one operation: libcrux crypto, SQLite storage.
pub(crate) struct Provider<'a> {
    crypto: &'a CryptoProvider,
    conn: &'a Connection,
    storage: Storage<'a>,
}

impl<'a> Provider<'a> {
    pub(crate) fn new(crypto: &'a CryptoProvider, conn: &'a Connection) -> Self {
        Self {
            crypto,
            conn,
            storage: SqliteStorageProvider::new(conn),
        }
    }

    /// The connection (inside the operation's transaction) the storage writes through.
    pub(crate) fn connection(&self) -> &'a Connection {
        self.conn
    }
}

impl<'a> OpenMlsProvider for Provider<'a> {
    type CryptoProvider = CryptoProvider;
    type RandProvider = CryptoProvider;
    type StorageProvider = Storage<'a>;

    fn storage(&self) -> &Self::StorageProvider {
        &self.storage
    }

    fn crypto(&self) -> &Self::CryptoProvider {
        self.crypto
    }

    fn rand(&self) -> &Self::RandProvider {
        self.crypto
    }
}

/// An MLS state store: one SQLite database (its own file, or a connection the caller shares,
/// such as the desktop's history database).
#[derive(Debug)]
pub struct MlsStore {
    pub(crate) conn: Connection,
}

/// What `lattice_mls_client` holds: who this client is.
pub(crate) struct ClientRow {
    pub(crate) client_id: String,
    pub(crate) signature_public_key: Vec<u8>,
    pub(crate) credential: Vec<u8>,
}

impl MlsStore {
    /// Opens (creating if needed) the store at `path`, in WAL mode with `synchronous=NORMAL`:
    /// every committed operation survives a killed process; a power cut may lose the last few
    /// (SQLite's documented trade-off), never leave a half-written epoch.
    ///
    /// # Errors
    /// [`MlsError::Store`] if the file cannot be opened or migrated.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, MlsError> {
        let conn = Connection::open(path)?;
        let _mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        Self::from_connection(conn)
    }

    /// Uses an open connection (its database gains the MLS tables; other tables are untouched;
    /// journal and sync settings stay the caller's).
    ///
    /// # Errors
    /// [`MlsError::Store`] if the tables cannot be created.
    pub fn from_connection(mut conn: Connection) -> Result<Self, MlsError> {
        SqliteStorageProvider::<JsonCodec, &mut Connection>::new(&mut conn)
            .run_migrations()
            .map_err(|e| MlsError::op("store migrations", e))?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS lattice_mls_client (
                 only_row INTEGER PRIMARY KEY CHECK (only_row = 1),
                 client_id TEXT NOT NULL,
                 signature_public_key BLOB NOT NULL,
                 credential BLOB NOT NULL
             );
             CREATE TABLE IF NOT EXISTS lattice_mls_groups (
                 group_id BLOB PRIMARY KEY
             );
             CREATE TABLE IF NOT EXISTS lattice_mls_delivered (
                 sender TEXT NOT NULL,
                 message_id TEXT NOT NULL,
                 PRIMARY KEY (sender, message_id)
             );",
        )?;
        Ok(Self { conn })
    }

    /// Gives the connection back (for a caller that shares it).
    pub fn into_connection(self) -> Connection {
        self.conn
    }

    pub(crate) fn client_row(&self) -> Result<Option<ClientRow>, MlsError> {
        Ok(self
            .conn
            .query_row(
                "SELECT client_id, signature_public_key, credential FROM lattice_mls_client",
                [],
                |r| {
                    Ok(ClientRow {
                        client_id: r.get(0)?,
                        signature_public_key: r.get(1)?,
                        credential: r.get(2)?,
                    })
                },
            )
            .optional()?)
    }

    pub(crate) fn group_ids(&self) -> Result<Vec<Vec<u8>>, MlsError> {
        let mut stmt = self
            .conn
            .prepare("SELECT group_id FROM lattice_mls_groups ORDER BY group_id")?;
        let rows = stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

pub(crate) fn insert_client(conn: &Connection, row: &ClientRow) -> Result<(), MlsError> {
    conn.execute(
        "INSERT INTO lattice_mls_client (only_row, client_id, signature_public_key, credential)
         VALUES (1, ?1, ?2, ?3)",
        rusqlite::params![row.client_id, row.signature_public_key, row.credential],
    )?;
    Ok(())
}

pub(crate) fn insert_group(conn: &Connection, group_id: &[u8]) -> Result<(), MlsError> {
    conn.execute(
        "INSERT OR IGNORE INTO lattice_mls_groups (group_id) VALUES (?1)",
        [group_id],
    )?;
    Ok(())
}

pub(crate) fn delete_group(conn: &Connection, group_id: &[u8]) -> Result<(), MlsError> {
    conn.execute(
        "DELETE FROM lattice_mls_groups WHERE group_id = ?1",
        [group_id],
    )?;
    Ok(())
}

/// Records a delivery (in the caller's open transaction) and keeps only the last
/// [`crate::limits::MAX_REMEMBERED_DELIVERIES`]. `Ok(false)` if it was recorded already.
pub(crate) fn record_delivery(
    conn: &Connection,
    sender: &str,
    message_id: &str,
) -> Result<bool, MlsError> {
    let inserted = conn.execute(
        "INSERT OR IGNORE INTO lattice_mls_delivered (sender, message_id) VALUES (?1, ?2)",
        [sender, message_id],
    )?;
    if inserted == 0 {
        return Ok(false);
    }
    let keep = i64::try_from(crate::limits::MAX_REMEMBERED_DELIVERIES).unwrap_or(i64::MAX);
    conn.execute(
        "DELETE FROM lattice_mls_delivered
         WHERE rowid <= (SELECT MAX(rowid) FROM lattice_mls_delivered) - ?1",
        [keep],
    )?;
    Ok(true)
}
