//! What the app keeps on disk, all of it under one data directory (the app data dir, or
//! `--data-dir` / `LATTICE_DATA_DIR`):
//!
//! - [`settings`]: name, server choice and preferences, in `settings.json` through
//!   tauri-plugin-store.
//! - [`db`]: `lattice.sqlite3` (WAL): message history, contacts, pinned identity keys and the
//!   durable outbox of messages not yet handed to the server.
//! - [`identity`]: `identity.key`, the secret identity (Ed25519 + ML-KEM-768), mode 0600.
//!
//! Nothing here knows about windows or events; the commands and the session call into it.

pub mod db;
pub mod identity;
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
    /// The identity file exists but is not a valid Lattice identity.
    #[error("the identity file {0} is damaged or not a Lattice identity")]
    BadIdentity(PathBuf),
    /// The settings store failed.
    #[error("settings: {0}")]
    Settings(String),
}
