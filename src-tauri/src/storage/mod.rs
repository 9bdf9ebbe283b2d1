//! What the app keeps on disk, all of it under one data directory (the app data dir, or
//! `--data-dir` / `LATTICE_DATA_DIR`):
//!
//! - [`settings`]: name, server choice and preferences, in `settings.json` through
//!   tauri-plugin-store.
//! - [`db`]: `lattice.sqlite3` (WAL): message history, contacts, pinned identity keys and the
//!   durable outbox of messages not yet handed to the server.
//!   [`search`] adds the full-text index of the history, [`drafts`] the unsent texts,
//!   [`content`] replies, edits, deletes, reactions and read receipts, [`files`] the files
//!   attached to messages (their records, previews and transfer state; never their bytes),
//!   [`groups`] the group conversations and their history (schema 8).
//! - [`backup`]: all of the above sealed with a passphrase into one file, and its restore onto
//!   a fresh profile; [`export`]: one conversation as HTML or JSON.
//! - [`devices`]: on a linked device, which of our messages another device sent, and when this
//!   device was removed (schema 13); `device.json` (a linked device's key, [`DEVICE_FILE`]).
//! - `identity.key`: the secret identity (Ed25519 + ML-KEM-768), mode 0600, read and written by
//!   `lattice_peer::identity_file` (the same format and rules as the terminal client's); see
//!   [`load_identity`].
//!
//! Nothing here knows about windows or events; the commands and the session call into it.

pub mod backup;
pub mod content;
pub mod db;
pub mod devices;
pub mod drafts;
mod error;
pub mod export;
pub mod files;
pub mod groups;
pub mod keystore;
pub mod message;
pub mod search;
pub mod settings;

use std::path::PathBuf;

pub use db::{Db, MessageRecord, MessageStatus, PeerRecord};
pub use error::StorageError;

/// File name of the SQLite database inside the data directory.
pub const DB_FILE: &str = "lattice.sqlite3";
/// File name of this device's MLS state inside the data directory (every MLS conversation's
/// secrets; created owner-only by `lattice-peer`, kept apart from [`DB_FILE`]: docs/mls.md,
/// *Desktop*).
pub const MLS_STATE_FILE: &str = "mls.sqlite3";
/// File name of the identity secret inside the data directory.
pub const IDENTITY_FILE: &str = "identity.key";
/// File name of the settings store inside the data directory.
pub const SETTINGS_FILE: &str = "settings.json";
/// File name of this **linked device**'s key, certificate and device list inside the data
/// directory (`lattice_peer::device_file`, mode 0600). A profile holds either this or
/// [`IDENTITY_FILE`], never both (see docs/desktop.md, *A linked device*).
pub const DEVICE_FILE: &str = "device.json";

/// Mode of the data directory: only the user may list or enter it.
#[cfg(unix)]
const PRIVATE_DIR_MODE: u32 = 0o700;
/// Mode of every file in it that holds history, keys or settings.
#[cfg(unix)]
const PRIVATE_FILE_MODE: u32 = 0o600;

/// Creates `dir` (and its parents) if needed and makes it private (0700), also when it exists
/// with a looser mode (an older version created it 0755): called on every start.
///
/// # Errors
/// [`StorageError::Io`] if it cannot be created or its mode cannot be set.
pub fn create_private_dir(dir: &std::path::Path) -> Result<(), StorageError> {
    let io = |action| {
        move |source| StorageError::Io {
            action,
            path: dir.to_owned(),
            source,
        }
    };
    std::fs::create_dir_all(dir).map_err(io("creating"))?;
    #[cfg(unix)]
    restrict(dir, PRIVATE_DIR_MODE).map_err(io("restricting"))?;
    Ok(())
}

/// Makes the files at `paths` that exist private (0600); missing ones are skipped. Called on
/// every start for the database (and its `-wal`/`-shm`, which SQLite creates with the main
/// file's mode) and the settings.
///
/// # Errors
/// [`StorageError::Io`] if a mode cannot be set.
pub fn restrict_files(paths: &[PathBuf]) -> Result<(), StorageError> {
    #[cfg(unix)]
    for path in paths {
        match restrict(path, PRIVATE_FILE_MODE) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(StorageError::Io {
                    action: "restricting",
                    path: path.clone(),
                    source,
                })
            }
        }
    }
    #[cfg(not(unix))]
    let _ = paths;
    Ok(())
}

/// Creates an empty private (0600) file at `path` unless one exists, so that SQLite opens a
/// file that was never readable by others, rather than narrowing it after the fact.
///
/// # Errors
/// [`StorageError::Io`] if it cannot be created.
pub fn create_private_file(path: &std::path::Path) -> Result<(), StorageError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(PRIVATE_FILE_MODE);
    }
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(StorageError::Io {
            action: "creating",
            path: path.to_owned(),
            source,
        }),
    }
}

/// Sets the permission bits of `path` to `mode` if they differ (never follows into another
/// owner's file: a symlink is left alone).
#[cfg(unix)]
fn restrict(path: &std::path::Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = std::fs::symlink_metadata(path)?;
    if meta.file_type().is_symlink() || meta.permissions().mode() & 0o777 == mode {
        return Ok(());
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// The database file and the files SQLite keeps next to it.
pub fn db_files(data_dir: &std::path::Path) -> Vec<PathBuf> {
    sqlite_files(data_dir, DB_FILE)
}

/// The MLS state's files (the database and its `-wal`/`-shm`).
pub fn mls_state_files(data_dir: &std::path::Path) -> Vec<PathBuf> {
    sqlite_files(data_dir, MLS_STATE_FILE)
}

fn sqlite_files(data_dir: &std::path::Path, name: &str) -> Vec<PathBuf> {
    ["", "-wal", "-shm"]
        .iter()
        .map(|suffix| data_dir.join(format!("{name}{suffix}")))
        .collect()
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

    #[cfg(unix)]
    fn mode(path: &std::path::Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[cfg(unix)]
    #[test]
    fn the_data_directory_and_its_files_are_private_at_creation_and_after_every_start() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("profile");
        create_private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        let db = dir.join(DB_FILE);
        create_private_file(&db).unwrap();
        assert_eq!(mode(&db), 0o600);

        // What an older version left behind: a 0755 directory and 0644 files.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        for path in db_files(&dir) {
            std::fs::write(&path, b"").unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        create_private_dir(&dir).unwrap();
        restrict_files(&db_files(&dir)).unwrap();
        assert_eq!(mode(&dir), 0o700);
        for path in db_files(&dir) {
            assert_eq!(mode(&path), 0o600, "{}", path.display());
        }
        // Missing files are fine.
        restrict_files(&[dir.join("absent")]).unwrap();
    }

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
