//! A linked device kept in a file readable only by its owner (mode 0600 on Unix), so that it runs
//! as a device of its id after a restart ([`crate::PeerConfig::for_device`]).
//!
//! The file holds the device key's **secret**: whoever reads it can act as this device until the
//! primary device removes it. It is created owner-only (written to a temporary file beside it,
//! then renamed over it) and never logged.
//!
//! Format (version 1), one JSON object:
//! `{"format":"lattice-linked-device","v":1,"clientId":…,"deviceId":…,"deviceKey":"<base64
//! secret, 32 bytes>","certificate":…,"deviceList":{…},"identityKey":…,"kemPublicKey":…,
//! "keySignature":…}`. The contacts' pins of the bundle are not kept: they go to the key store
//! at linking ([`crate::LinkedDevice::import_pins`]).
//!
//! [`load`] trusts nothing in the file: the certificate must verify under the identity key over
//! *this* device key, the device list must be signed by the same key and name this device with
//! this key, and the `keySignature` must bind the ML-KEM key to it; a file for another id than the
//! one asked for is refused too ([`PeerError::DeviceFile`]).

use std::fs;
use std::io::Write as _;
use std::path::Path;

use base64::Engine as _;
use lattice_crypto::{IdentityKeyPair, IdentityPublicKey, SIGNATURE_LEN};
use lattice_protocol::{ClientId, DeviceId, SignedDeviceList};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::identity_file::create_private_dir;
use crate::linking::LinkedDevice;
use crate::wire::B64;
use crate::PeerError;

/// The `format` field of a device file.
const FORMAT: &str = "lattice-linked-device";
/// The version written (and the only one read).
const VERSION: u32 = 1;
/// Largest device file read: a device list of at most 8 entries and a 1,184-byte ML-KEM key fit
/// well under it; anything larger is not a device file.
const MAX_FILE_LEN: u64 = 16 * 1024;

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FileV1 {
    format: String,
    v: u32,
    client_id: ClientId,
    device_id: DeviceId,
    device_key: String,
    certificate: String,
    device_list: SignedDeviceList,
    identity_key: String,
    kem_public_key: String,
    key_signature: String,
}

fn file_error(path: &Path, reason: impl Into<String>) -> PeerError {
    PeerError::DeviceFile {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// Writes `device` to `path` (creating parent directories owner-only), replacing an older file
/// there only once the new one is complete.
///
/// # Errors
/// [`PeerError::Io`] if it cannot be written.
pub fn save(path: &Path, device: &LinkedDevice) -> Result<(), PeerError> {
    let io = |what: &str, p: &Path, e: std::io::Error| {
        PeerError::Io(format!("{what} {}: {e}", p.display()))
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        create_private_dir(dir).map_err(|e| io("cannot create", dir, e))?;
    }
    let secret = device.device_key.secret_bytes();
    let file = FileV1 {
        format: FORMAT.to_owned(),
        v: VERSION,
        client_id: device.client_id.clone(),
        device_id: device.device_id.clone(),
        device_key: B64.encode(&secret[..]),
        certificate: B64.encode(device.certificate),
        device_list: device.device_list.clone(),
        identity_key: B64.encode(device.identity_key.as_bytes()),
        kem_public_key: B64.encode(&device.kem_public_key),
        key_signature: B64.encode(&device.key_signature),
    };
    let text = Zeroizing::new(
        serde_json::to_vec_pretty(&file).map_err(|e| PeerError::Protocol(e.to_string()))?,
    );
    drop(Zeroizing::new(file.device_key));
    let tmp = path.with_extension(format!("tmp-{}", uuid::Uuid::new_v4().simple()));
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let written = options
        .open(&tmp)
        .and_then(|mut f| f.write_all(&text).and_then(|()| f.sync_all()))
        .and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(io("cannot write", path, e));
    }
    Ok(())
}

/// Reads the linked device at `path` and checks it is a device of `expected` whose chain
/// verifies (see the module docs).
///
/// # Errors
/// [`PeerError::Io`] if it cannot be read; [`PeerError::DeviceFile`] if it is not a version-1
/// device file, does not verify, or is a device of another id.
pub fn load(path: &Path, expected: &ClientId) -> Result<LinkedDevice, PeerError> {
    let meta = fs::metadata(path)
        .map_err(|e| PeerError::Io(format!("cannot read {}: {e}", path.display())))?;
    if meta.len() > MAX_FILE_LEN {
        return Err(file_error(path, "too large to be a device file"));
    }
    warn_if_readable_by_others(path, &meta);
    let bytes = Zeroizing::new(
        fs::read(path)
            .map_err(|e| PeerError::Io(format!("cannot read {}: {e}", path.display())))?,
    );
    let file: FileV1 =
        serde_json::from_slice(&bytes).map_err(|_| file_error(path, "not a device file"))?;
    let file = Zeroizing::new(file);
    if file.format != FORMAT || file.v != VERSION {
        return Err(file_error(
            path,
            format!(
                "format {:?} version {} is not supported",
                file.format, file.v
            ),
        ));
    }
    if &file.client_id != expected {
        return Err(file_error(
            path,
            format!("a device of {}, not of {expected}", file.client_id),
        ));
    }
    let secret: Zeroizing<[u8; 32]> = Zeroizing::new(
        B64.decode(&file.device_key)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
            .ok_or_else(|| file_error(path, "the device key is not 32 bytes of base64"))?,
    );
    let certificate: [u8; SIGNATURE_LEN] = B64
        .decode(&file.certificate)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| file_error(path, "the certificate is not a signature"))?;
    let identity_key = B64
        .decode(&file.identity_key)
        .ok()
        .and_then(|b| IdentityPublicKey::from_bytes(&b).ok())
        .ok_or_else(|| file_error(path, "the identity key is not an Ed25519 key"))?;
    let decode = |s: &str, what: &str| {
        B64.decode(s)
            .map_err(|_| file_error(path, format!("{what} is not base64")))
    };
    let device = LinkedDevice {
        client_id: file.client_id.clone(),
        device_id: file.device_id.clone(),
        device_key: IdentityKeyPair::from_secret_bytes(&secret),
        certificate,
        device_list: file.device_list.clone(),
        identity_key,
        kem_public_key: decode(&file.kem_public_key, "the ML-KEM key")?,
        key_signature: decode(&file.key_signature, "the key signature")?,
        contacts: Vec::new(),
    };
    device.verify().map_err(|reason| file_error(path, reason))?;
    Ok(device)
}

impl zeroize::Zeroize for FileV1 {
    fn zeroize(&mut self) {
        self.device_key.zeroize();
    }
}

fn warn_if_readable_by_others(path: &Path, meta: &fs::Metadata) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(path = %path.display(), "device file is readable by other users; chmod 600 it");
        }
    }
    #[cfg(not(unix))]
    let _ = (path, meta);
}
