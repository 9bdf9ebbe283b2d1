//! AES-256-GCM over the `nonce ‖ ciphertext ‖ tag` layout both envelopes use.

use aes_gcm::aead::{AeadInOut, Key, KeyInit, Nonce, Tag};
use aes_gcm::Aes256Gcm;
use zeroize::{Zeroize, Zeroizing};

use crate::{CryptoError, NONCE_LEN, TAG_LEN};

/// Builds the cipher from a 32-byte key, wiping the temporary key array afterwards (the cipher
/// itself zeroizes its round keys on drop).
fn cipher(key: &[u8; 32]) -> Aes256Gcm {
    let mut k = Key::<Aes256Gcm>::default();
    k.copy_from_slice(key);
    let cipher = Aes256Gcm::new(&k);
    k[..].zeroize();
    cipher
}

/// Encrypts `plaintext` and returns `nonce ‖ ciphertext ‖ tag`, built in one allocation.
///
/// # Errors
/// [`CryptoError::FieldTooLong`] if the plaintext exceeds the AES-GCM limit (2³⁶ − 32 bytes).
pub(crate) fn seal(
    key: &[u8; 32],
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + TAG_LEN);
    out.extend_from_slice(nonce);
    out.extend_from_slice(plaintext);
    let tag = cipher(key)
        .encrypt_inout_detached(
            &Nonce::<Aes256Gcm>::from(*nonce),
            aad,
            (&mut out[NONCE_LEN..]).into(),
        )
        .map_err(|_| CryptoError::FieldTooLong("plaintext"))?;
    out.extend_from_slice(&tag);
    Ok(out)
}

/// As [`seal`], in place: `buf` holds [`NONCE_LEN`] bytes of room (any value) and then the
/// plaintext; it becomes `nonce ‖ ciphertext ‖ tag` (the tag appended: capacity for [`TAG_LEN`]
/// more bytes saves a reallocation). No second buffer, no copy of the plaintext.
///
/// # Errors
/// [`CryptoError::InvalidLength`] if `buf` is shorter than the room for the nonce;
/// [`CryptoError::FieldTooLong`] as [`seal`].
pub(crate) fn seal_in_place(
    key: &[u8; 32],
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    buf: &mut Vec<u8>,
) -> Result<(), CryptoError> {
    let Some((room, plaintext)) = buf.split_at_mut_checked(NONCE_LEN) else {
        return Err(CryptoError::InvalidLength {
            what: "room for the nonce",
            expected: NONCE_LEN,
            got: buf.len(),
        });
    };
    room.copy_from_slice(nonce);
    let tag = cipher(key)
        .encrypt_inout_detached(&Nonce::<Aes256Gcm>::from(*nonce), aad, plaintext.into())
        .map_err(|_| CryptoError::FieldTooLong("plaintext"))?;
    buf.extend_from_slice(&tag);
    Ok(())
}

/// As [`open`], in place: decrypts the ciphertext of `nonce ‖ ciphertext ‖ tag` where it lies and
/// returns it, a slice of `data`. The tag is checked before anything is decrypted, so `data` is
/// unchanged when it does not verify.
///
/// # Errors
/// [`CryptoError::Decrypt`] for a short input or a tag that does not verify.
pub(crate) fn open_in_place<'a>(
    key: &[u8; 32],
    aad: &[u8],
    data: &'a mut [u8],
) -> Result<&'a [u8], CryptoError> {
    if data.len() < NONCE_LEN + TAG_LEN {
        return Err(CryptoError::Decrypt);
    }
    let (nonce, rest) = data.split_at_mut(NONCE_LEN);
    let (ciphertext, tag) = rest.split_at_mut(rest.len() - TAG_LEN);
    let nonce = Nonce::<Aes256Gcm>::try_from(&*nonce).map_err(|_| CryptoError::Decrypt)?;
    let tag = Tag::<Aes256Gcm>::try_from(&*tag).map_err(|_| CryptoError::Decrypt)?;
    cipher(key)
        .decrypt_inout_detached(&nonce, aad, (&mut *ciphertext).into(), &tag)
        .map_err(|_| CryptoError::Decrypt)?;
    Ok(ciphertext)
}

/// Opens `nonce ‖ ciphertext ‖ tag`. The tag is checked (in constant time, by `aes-gcm`) before
/// anything is decrypted.
///
/// # Errors
/// [`CryptoError::Decrypt`] for a short input or a tag that does not verify.
pub(crate) fn open(
    key: &[u8; 32],
    aad: &[u8],
    data: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    if data.len() < NONCE_LEN + TAG_LEN {
        return Err(CryptoError::Decrypt);
    }
    let (nonce, rest) = data.split_at(NONCE_LEN);
    let (ciphertext, tag) = rest.split_at(rest.len() - TAG_LEN);
    let nonce = Nonce::<Aes256Gcm>::try_from(nonce).map_err(|_| CryptoError::Decrypt)?;
    let tag = Tag::<Aes256Gcm>::try_from(tag).map_err(|_| CryptoError::Decrypt)?;
    let mut buffer = Zeroizing::new(ciphertext.to_vec());
    cipher(key)
        .decrypt_inout_detached(&nonce, aad, buffer.as_mut_slice().into(), &tag)
        .map_err(|_| CryptoError::Decrypt)?;
    Ok(buffer)
}
