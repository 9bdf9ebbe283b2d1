//! The storage layer's error, in its own module so the storage modules and their parent can all
//! use it without importing each other.

use std::path::PathBuf;

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
    /// A content (a reply, an edit, a reaction) breaks a bound of the content layer.
    #[error("{0}")]
    Content(#[from] lattice_peer::content::ContentError),
    /// A value from outside (a peer's file offer, a backup) breaks a bound of the storage.
    #[error("{0}")]
    Invalid(String),
    /// A row written in the same transaction could not be read back.
    #[error("database error: {0} is missing")]
    Missing(&'static str),
}
