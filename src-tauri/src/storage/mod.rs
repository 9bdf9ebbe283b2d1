//! What the app keeps on disk, all of it under one data directory (the app data dir, or
//! `--data-dir` / `LATTICE_DATA_DIR`):
//!
//! - [`settings`]: name, server choice and preferences, in `settings.json` through
//!   tauri-plugin-store.
//! - [`db`]: `lattice.sqlite3` (WAL): message history, contacts, pinned identity keys and the
//!   durable outbox of messages not yet handed to the server.
//! - `identity.key`: the secret identity (Ed25519 + ML-KEM-768), mode 0600, read and written by
//!   `lattice_peer::identity_file` (the same format and rules as the terminal client's); see
//!   [`load_identity`].
//!
//! Nothing here knows about windows or events; the commands and the session call into it.

pub mod db;
pub mod keystore;
pub mod settings;

use std::path::PathBuf;

pub use db::{Db, MessageRecord, MessageStatus, PeerRecord};

/// File name of the SQLite database inside the data directory.
pub const DB_FILE: &str = "lattice.sqlite3";
/// File name of the identity secret inside the data directory.
pub const IDENTITY_FILE: &str = "identity.key";
/// File name of the settings store inside the data directory.
pub const SETTINGS_FILE: &str = "settings.json";

/// Why something could not be read from or written to disk.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The SQLite database failed.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A file could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done ("reading", "writing", ...).
        action: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The identity file cannot be read or written, or is not a Lattice identity.
    #[error("identity file: {0}")]
    Identity(String),
    /// The settings store failed.
    #[error("settings: {0}")]
    Settings(String),
}

/// Loads the identity in `data_dir`, creating it if `create` is set and there is none. Returns
/// `None` when there is none and `create` is not set, else the identity and whether it was
/// just created. An existing file is never overwritten, even a damaged one: it may be the only
/// copy of someone's identity.
///
/// # Errors
/// [`StorageError::Identity`] when the file cannot be read or written or is not an identity.
pub fn load_identity(
    data_dir: &std::path::Path,
    create: bool,
) -> Result<Option<(lattice_crypto::Identity, bool)>, StorageError> {
    let path = data_dir.join(IDENTITY_FILE);
    if !create && !path.exists() {
        return Ok(None);
    }
    lattice_peer::identity_file::load_or_create(&path)
        .map(Some)
        .map_err(|e| StorageError::Identity(e.to_string()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn the_identity_is_created_once_private_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load_identity(dir.path(), false).unwrap().is_none());
        let (first, created) = load_identity(dir.path(), true).unwrap().unwrap();
        assert!(created);
        let (again, created) = load_identity(dir.path(), false).unwrap().unwrap();
        assert!(!created);
        assert_eq!(first.identity_public_key(), again.identity_public_key());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(IDENTITY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(dir.path().join(IDENTITY_FILE), b"damaged").unwrap();
        assert!(matches!(
            load_identity(dir.path(), true),
            Err(StorageError::Identity(_))
        ));
        assert_eq!(
            std::fs::read(dir.path().join(IDENTITY_FILE)).unwrap(),
            b"damaged"
        );
    }
}
