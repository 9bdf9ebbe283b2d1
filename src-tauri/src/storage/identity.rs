//! The identity secret on disk: `identity.key`, readable only by the user (mode 0600).
//!
//! The file holds [`Identity::to_bytes`] (101 bytes, version 1). It is written to a temporary
//! file created with mode 0600 from the start, synced, then renamed into place, so a crash never
//! leaves a half-written identity and the secret is never readable by others, not even briefly.

use std::fs;
use std::io::Write;
use std::path::Path;

use lattice_crypto::Identity;
use rand_core::OsRng;

use super::StorageError;

/// Loads the identity at `path`, or generates and stores a new one if there is none.
/// Returns the identity and whether it was just created.
///
/// # Errors
/// [`StorageError::Io`] if the file cannot be read or written, [`StorageError::BadIdentity`] if
/// it exists but is not a valid identity (it is never overwritten: that would lose the person's
/// identity).
pub fn load_or_create(path: &Path) -> Result<(Identity, bool), StorageError> {
    if let Some(identity) = load(path)? {
        return Ok((identity, false));
    }
    let identity = Identity::generate(&mut OsRng);
    write(path, &identity)?;
    Ok((identity, true))
}

/// Loads the identity at `path`, `None` if the file does not exist.
///
/// # Errors
/// As [`load_or_create`].
pub fn load(path: &Path) -> Result<Option<Identity>, StorageError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => zeroize::Zeroizing::new(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StorageError::Io {
                action: "reading",
                path: path.to_owned(),
                source,
            })
        }
    };
    tighten_permissions(path);
    Identity::from_bytes(&bytes)
        .map(Some)
        .map_err(|_| StorageError::BadIdentity(path.to_owned()))
}

fn write(path: &Path, identity: &Identity) -> Result<(), StorageError> {
    let io = |action, source| StorageError::Io {
        action,
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("key.tmp");
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp).map_err(|e| io("creating", e))?;
    file.write_all(&identity.to_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| io("writing", e))?;
    drop(file);
    fs::rename(&tmp, path).map_err(|e| io("renaming into", e))?;
    Ok(())
}

/// An identity file that someone made readable by others (a restore from backup, a copy) is put
/// back to 0600; failing to do so is logged, not fatal.
fn tighten_permissions(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(path = %path.display(), "identity file was readable by others; setting mode 0600");
                if let Err(e) = fs::set_permissions(path, fs::Permissions::from_mode(0o600)) {
                    tracing::warn!(error = %e, "could not restrict the identity file");
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_loaded_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.key");
        let (first, created) = load_or_create(&path).unwrap();
        assert!(created);
        let (again, created) = load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(first.identity_public_key(), again.identity_public_key());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn a_damaged_file_is_reported_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.key");
        fs::write(&path, b"not an identity").unwrap();
        assert!(matches!(
            load_or_create(&path),
            Err(StorageError::BadIdentity(_))
        ));
        assert_eq!(fs::read(&path).unwrap(), b"not an identity");
    }
}
