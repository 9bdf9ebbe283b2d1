//! The byte strings that get signed, exactly as `PROTOCOL.md` defines them.
//!
//! Every statement starts with its own `lattice/v1/...` label, and no label is a prefix of
//! another, so a signature made for one purpose can never be replayed as another. Variable-length
//! fields are length-prefixed with [`lp`] unless they come last, so each statement parses one way.

use crate::{CryptoError, IdentityPublicKey, REGISTRATION_NONCE_LEN};

/// Label of the KEM key signature (`keySignature`).
const KEM_KEY_LABEL: &[u8] = b"lattice/v1/kem-key";
/// Label of the registration statement (`verification.serializedMessage`).
const REGISTER_LABEL: &[u8] = b"lattice/v1/register";
/// Label of a device certificate (the identity key vouching for a device key).
const DEVICE_LABEL: &[u8] = b"lattice-device-v1";
/// Label of a signed device list.
const DEVICE_LIST_LABEL: &[u8] = b"lattice-device-list-v1";
/// Label of a linked device's registration statement (signed by the device key).
const DEVICE_REGISTER_LABEL: &[u8] = b"lattice-device-register-v1";
/// Label of the per-message signature (`sig` inside a version 1 `lattice-v1` plaintext).
const MSG_LABEL: &[u8] = b"lattice/v1/msg";
/// Label of the per-content signature (`sig` inside a version 2 `lattice-v1` plaintext).
const CONTENT_LABEL: &[u8] = b"lattice/v2/content";

/// Appends `lp(field)` = 2-byte big-endian length ‖ `field` to `out`.
///
/// # Errors
/// [`CryptoError::FieldTooLong`] if `field` is longer than 65535 bytes (nothing is appended).
///
/// # Example
/// ```
/// let mut out = Vec::new();
/// lattice_crypto::lp(&mut out, b"bob")?;
/// assert_eq!(out, [0, 3, b'b', b'o', b'b']);
/// # Ok::<(), lattice_crypto::CryptoError>(())
/// ```
pub fn lp(out: &mut Vec<u8>, field: &[u8]) -> Result<(), CryptoError> {
    lp_named(out, field, "length-prefixed field")
}

/// [`lp`], naming the field in the error.
pub(crate) fn lp_named(
    out: &mut Vec<u8>,
    field: &[u8],
    name: &'static str,
) -> Result<(), CryptoError> {
    let len = u16::try_from(field.len()).map_err(|_| CryptoError::FieldTooLong(name))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(field);
    Ok(())
}

/// The message an identity key signs to vouch for its ML-KEM key:
/// `"lattice/v1/kem-key"` ‖ `kem_public_key`.
pub fn kem_key_signature_message(kem_public_key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(KEM_KEY_LABEL.len() + kem_public_key.len());
    out.extend_from_slice(KEM_KEY_LABEL);
    out.extend_from_slice(kem_public_key);
    out
}

/// Checks a `keySignature`: `sig` must be `identity`'s signature over
/// [`kem_key_signature_message`]`(kem_public_key)`. Peers call this before encrypting to a key
/// fetched from the server.
///
/// # Errors
/// [`CryptoError::BadSignature`] if the signature is malformed or does not verify.
pub fn verify_kem_key_signature(
    identity: &IdentityPublicKey,
    kem_public_key: &[u8],
    sig: &[u8],
) -> Result<(), CryptoError> {
    identity.verify(&kem_key_signature_message(kem_public_key), sig)
}

/// The registration statement: `"lattice/v1/register"` ‖ nonce ‖ lp(clientId) ‖ publicKey.
///
/// `nonce` is the 32-byte `challenge` nonce; its length is enforced so that the statement has
/// a single parse (the nonce is not length-prefixed).
///
/// # Errors
/// [`CryptoError::InvalidLength`] if `nonce` is not 32 bytes, [`CryptoError::FieldTooLong`] if
/// `client_id` is longer than 65535 bytes.
///
/// # Example
/// ```
/// let statement = lattice_crypto::registration_statement(&[0u8; 32], "alice", b"pk")?;
/// assert!(statement.starts_with(b"lattice/v1/register"));
/// assert!(statement.ends_with(b"\x00\x05alicepk"));
/// # Ok::<(), lattice_crypto::CryptoError>(())
/// ```
pub fn registration_statement(
    nonce: &[u8],
    client_id: &str,
    kem_public_key: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    if nonce.len() != REGISTRATION_NONCE_LEN {
        return Err(CryptoError::InvalidLength {
            what: "registration nonce",
            expected: REGISTRATION_NONCE_LEN,
            got: nonce.len(),
        });
    }
    let mut out = Vec::with_capacity(
        REGISTER_LABEL.len() + nonce.len() + 2 + client_id.len() + kem_public_key.len(),
    );
    out.extend_from_slice(REGISTER_LABEL);
    out.extend_from_slice(nonce);
    lp_named(&mut out, client_id.as_bytes(), "clientId")?;
    out.extend_from_slice(kem_public_key);
    Ok(out)
}

/// The bytes a device certificate signs: `"lattice-device-v1"` ‖ lp(clientId) ‖ lp(deviceId) ‖
/// deviceKey (32 bytes). The identity key of `client_id` signs it when it links the device.
///
/// # Errors
/// [`CryptoError::FieldTooLong`] if an id is longer than 65535 bytes.
pub fn device_certificate_message(
    client_id: &str,
    device_id: &str,
    device_key: &[u8; crate::IDENTITY_PUBLIC_KEY_LEN],
) -> Result<Vec<u8>, CryptoError> {
    let mut out =
        Vec::with_capacity(DEVICE_LABEL.len() + 4 + client_id.len() + device_id.len() + 32);
    out.extend_from_slice(DEVICE_LABEL);
    lp_named(&mut out, client_id.as_bytes(), "clientId")?;
    lp_named(&mut out, device_id.as_bytes(), "deviceId")?;
    out.extend_from_slice(device_key);
    Ok(out)
}

/// The bytes a device list signature signs: `"lattice-device-list-v1"` ‖ lp(clientId) ‖ counter
/// (u64 BE) ‖ count (u8) ‖ for each device in order: lp(deviceId) ‖ deviceKey (32 bytes).
///
/// # Errors
/// [`CryptoError::FieldTooLong`] if an id is longer than 65535 bytes or there are more than 255
/// devices.
pub fn device_list_message(
    client_id: &str,
    counter: u64,
    devices: &[(&str, [u8; crate::IDENTITY_PUBLIC_KEY_LEN])],
) -> Result<Vec<u8>, CryptoError> {
    let count = u8::try_from(devices.len()).map_err(|_| CryptoError::FieldTooLong("devices"))?;
    let mut out =
        Vec::with_capacity(DEVICE_LIST_LABEL.len() + 11 + client_id.len() + 66 * devices.len());
    out.extend_from_slice(DEVICE_LIST_LABEL);
    lp_named(&mut out, client_id.as_bytes(), "clientId")?;
    out.extend_from_slice(&counter.to_be_bytes());
    out.push(count);
    for (device_id, key) in devices {
        lp_named(&mut out, device_id.as_bytes(), "deviceId")?;
        out.extend_from_slice(key);
    }
    Ok(out)
}

/// A linked device's registration statement, signed by its **device key**:
/// `"lattice-device-register-v1"` ‖ nonce (32 bytes) ‖ lp(clientId) ‖ lp(deviceId) ‖ publicKey.
///
/// # Errors
/// [`CryptoError::InvalidLength`] if `nonce` is not 32 bytes, [`CryptoError::FieldTooLong`] if an
/// id is longer than 65535 bytes.
pub fn device_registration_statement(
    nonce: &[u8],
    client_id: &str,
    device_id: &str,
    kem_public_key: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    if nonce.len() != REGISTRATION_NONCE_LEN {
        return Err(CryptoError::InvalidLength {
            what: "registration nonce",
            expected: REGISTRATION_NONCE_LEN,
            got: nonce.len(),
        });
    }
    let mut out = Vec::with_capacity(
        DEVICE_REGISTER_LABEL.len()
            + nonce.len()
            + 4
            + client_id.len()
            + device_id.len()
            + kem_public_key.len(),
    );
    out.extend_from_slice(DEVICE_REGISTER_LABEL);
    out.extend_from_slice(nonce);
    lp_named(&mut out, client_id.as_bytes(), "clientId")?;
    lp_named(&mut out, device_id.as_bytes(), "deviceId")?;
    out.extend_from_slice(kem_public_key);
    Ok(out)
}

/// The payload of a `lattice-v1` message signature:
/// `"lattice/v1/msg"` ‖ lp(senderId) ‖ lp(recipientId) ‖ lp(messageId) ‖ sentAt (u64 BE) ‖ body.
///
/// # Errors
/// [`CryptoError::FieldTooLong`] if an id is longer than 65535 bytes.
pub fn message_signature_payload(
    sender_id: &str,
    recipient_id: &str,
    message_id: &str,
    sent_at_ms: u64,
    body: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let mut out = Vec::with_capacity(
        MSG_LABEL.len()
            + 6
            + sender_id.len()
            + recipient_id.len()
            + message_id.len()
            + 8
            + body.len(),
    );
    out.extend_from_slice(MSG_LABEL);
    lp_named(&mut out, sender_id.as_bytes(), "senderId")?;
    lp_named(&mut out, recipient_id.as_bytes(), "recipientId")?;
    lp_named(&mut out, message_id.as_bytes(), "messageId")?;
    out.extend_from_slice(&sent_at_ms.to_be_bytes());
    out.extend_from_slice(body);
    Ok(out)
}

/// What a version 2 inner plaintext signs (the [`content_signature_payload`] fields).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentStatement<'a> {
    /// The sender's `clientId`.
    pub sender_id: &'a str,
    /// The recipient's `clientId`.
    pub recipient_id: &'a str,
    /// The outer frame's `messageId`.
    pub message_id: &'a str,
    /// The sender's clock, unix ms.
    pub sent_at_ms: u64,
    /// The inner format version (`v`).
    pub version: u32,
    /// The content kind (`kind`).
    pub kind: &'a str,
    /// The content body (`body`, UTF-8).
    pub body: &'a [u8],
}

/// The payload of a version 2 message signature, which covers the whole content:
/// `"lattice/v2/content"` ‖ lp(senderId) ‖ lp(recipientId) ‖ lp(messageId) ‖ sentAt (u64 BE) ‖
/// v (u32 BE) ‖ lp(kind) ‖ body.
///
/// Unlike [`message_signature_payload`] (version 1, which leaves `v` and `kind` unsigned), a
/// change to the version or the kind breaks the signature.
///
/// # Errors
/// [`CryptoError::FieldTooLong`] if an id or the kind is longer than 65535 bytes.
///
/// # Example
/// ```
/// use lattice_crypto::{content_signature_payload, ContentStatement};
/// let s = ContentStatement {
///     sender_id: "a", recipient_id: "b", message_id: "m", sent_at_ms: 1,
///     version: 2, kind: "text", body: b"hi",
/// };
/// let p = content_signature_payload(&s)?;
/// assert!(p.starts_with(b"lattice/v2/content"));
/// assert!(p.ends_with(b"\x00\x00\x00\x02\x00\x04texthi"));
/// # Ok::<(), lattice_crypto::CryptoError>(())
/// ```
pub fn content_signature_payload(s: &ContentStatement<'_>) -> Result<Vec<u8>, CryptoError> {
    let mut out = Vec::with_capacity(
        CONTENT_LABEL.len()
            + 8
            + s.sender_id.len()
            + s.recipient_id.len()
            + s.message_id.len()
            + s.kind.len()
            + 12
            + s.body.len(),
    );
    out.extend_from_slice(CONTENT_LABEL);
    lp_named(&mut out, s.sender_id.as_bytes(), "senderId")?;
    lp_named(&mut out, s.recipient_id.as_bytes(), "recipientId")?;
    lp_named(&mut out, s.message_id.as_bytes(), "messageId")?;
    out.extend_from_slice(&s.sent_at_ms.to_be_bytes());
    out.extend_from_slice(&s.version.to_be_bytes());
    lp_named(&mut out, s.kind.as_bytes(), "kind")?;
    out.extend_from_slice(s.body);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lp_limits() {
        let mut out = Vec::new();
        lp(&mut out, &[]).unwrap();
        assert_eq!(out, [0, 0]);
        let max = vec![0xaa; 65535];
        let mut out = Vec::new();
        lp(&mut out, &max).unwrap();
        assert_eq!(&out[..3], [0xff, 0xff, 0xaa]);
        assert_eq!(out.len(), 65537);
        let mut out = vec![1];
        assert!(matches!(
            lp(&mut out, &vec![0; 65536]),
            Err(CryptoError::FieldTooLong(_))
        ));
        assert_eq!(out, [1], "nothing appended on error");
    }

    #[test]
    fn labels_are_prefix_free() {
        let labels = [KEM_KEY_LABEL, REGISTER_LABEL, MSG_LABEL, CONTENT_LABEL];
        for a in labels {
            for b in labels {
                if a != b {
                    assert!(!a.starts_with(b), "{a:?} starts with {b:?}");
                }
            }
        }
    }

    #[test]
    fn message_payload_layout() {
        let p = message_signature_payload("a", "bc", "", 0x0102_0304_0506_0708, b"xyz").unwrap();
        let mut expected = b"lattice/v1/msg".to_vec();
        expected.extend_from_slice(&[0, 1, b'a', 0, 2, b'b', b'c', 0, 0]);
        expected.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        expected.extend_from_slice(b"xyz");
        assert_eq!(p, expected);
        let long = "x".repeat(70_000);
        assert_eq!(
            message_signature_payload("a", &long, "m", 0, b""),
            Err(CryptoError::FieldTooLong("recipientId"))
        );
    }

    #[test]
    fn content_payload_covers_version_and_kind() {
        let base = ContentStatement {
            sender_id: "a",
            recipient_id: "bc",
            message_id: "m",
            sent_at_ms: 7,
            version: 2,
            kind: "edit",
            body: b"{}",
        };
        let p = content_signature_payload(&base).unwrap();
        let mut expected = b"lattice/v2/content".to_vec();
        expected.extend_from_slice(&[0, 1, b'a', 0, 2, b'b', b'c', 0, 1, b'm']);
        expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 2, 0, 4]);
        expected.extend_from_slice(b"edit{}");
        assert_eq!(p, expected);
        let other_kind = ContentStatement {
            kind: "text",
            ..base
        };
        let other_version = ContentStatement { version: 3, ..base };
        assert_ne!(content_signature_payload(&other_kind).unwrap(), p);
        assert_ne!(content_signature_payload(&other_version).unwrap(), p);
    }
}
