//! An identity kept in a file readable only by its owner (mode 0600 on Unix).
//!
//! The file holds `lattice_crypto::Identity::to_bytes` (the secret keys): whoever reads it can
//! impersonate the user, so it is created with owner-only permissions and never logged.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use lattice_crypto::Identity;

use crate::PeerError;

fn io_error(path: &Path, what: &str, e: &std::io::Error) -> PeerError {
    PeerError::Io(format!("{what} {}: {e}", path.display()))
}

/// Loads the identity at `path`, or generates one and writes it there (creating parent
/// directories) if the file does not exist. Returns the identity and whether it was created.
///
/// ```no_run
/// let (identity, created) = lattice_peer::identity_file::load_or_create("/tmp/alice.identity".as_ref())?;
/// # Ok::<(), lattice_peer::PeerError>(())
/// ```
///
/// # Errors
/// [`PeerError::Io`] if the file cannot be read or written; [`PeerError::Crypto`] if it is not an
/// identity file.
pub fn load_or_create(path: &Path) -> Result<(Identity, bool), PeerError> {
    match fs::read(path) {
        Ok(bytes) => {
            let bytes = zeroize::Zeroizing::new(bytes);
            warn_if_readable_by_others(path);
            Ok((Identity::from_bytes(&bytes)?, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let identity = Identity::generate(&mut rand_core::OsRng);
            save(path, &identity)?;
            Ok((identity, true))
        }
        Err(e) => Err(io_error(path, "cannot read", &e)),
    }
}

/// Writes `identity` to a new file at `path` with owner-only permissions. Refuses to overwrite.
///
/// # Errors
/// [`PeerError::Io`] if the file exists or cannot be written.
pub fn save(path: &Path, identity: &Identity) -> Result<(), PeerError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        create_private_dir(dir).map_err(|e| io_error(dir, "cannot create", &e))?;
    }
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .map_err(|e| io_error(path, "cannot create", &e))?;
    file.write_all(&identity.to_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| io_error(path, "cannot write", &e))
}

pub(crate) fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// Where the pinned keys of the identity at `identity_path` are kept ([`crate::FileKeyStore`]):
/// next to it, with the extension `pins` (`alice.identity` → `alice.pins`).
pub fn key_store_path(identity_path: &Path) -> PathBuf {
    identity_path.with_extension("pins")
}

fn warn_if_readable_by_others(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        if let Ok(meta) = fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(path = %path.display(), "identity file is readable by other users; chmod 600 it");
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_then_loads_the_same_identity() {
        let dir = std::env::temp_dir().join(format!("lattice-idfile-{}", uuid::Uuid::new_v4()));
        let path = dir.join("sub").join("me.identity");
        let (a, created) = load_or_create(&path).unwrap();
        assert!(created);
        let (b, created) = load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(a.identity_public_key(), b.identity_public_key());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(save(&path, &a).is_err(), "never overwrites");
        fs::write(&path, b"garbage").unwrap();
        assert!(matches!(load_or_create(&path), Err(PeerError::Crypto(_))));
        fs::remove_dir_all(&dir).unwrap();
    }
}
