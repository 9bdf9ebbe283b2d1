//! `ml-kem-aes`: the original MessagingPeer envelope, bit for bit.
//!
//! ML-KEM-768 encapsulation to the recipient; the raw 32-byte shared secret is the AES-256-GCM
//! key (no KDF, no AAD); random 12-byte IV; `encrypted_data` = IV ‖ ciphertext ‖ tag. Kept only to
//! talk to original clients: it binds no sender, recipient or message id, so whatever opens it
//! must treat the sender as unverified. Lattice peers use [`lattice_v1`](crate::lattice_v1).
//!
//! ```
//! use lattice_crypto::{ml_kem_aes, KemKeyPair};
//! use rand_core::OsRng;
//!
//! # fn main() -> Result<(), lattice_crypto::CryptoError> {
//! let bob = KemKeyPair::generate(&mut OsRng);
//! let envelope = ml_kem_aes::seal(&mut OsRng, bob.public_key(), "hello".as_bytes())?;
//! assert_eq!(envelope.cipher_text.len(), lattice_crypto::KEM_CIPHERTEXT_LEN);
//! assert_eq!(ml_kem_aes::open(&bob, &envelope)?.as_slice(), b"hello");
//! # Ok(())
//! # }
//! ```

use rand_core::CryptoRngCore;
use zeroize::Zeroizing;

use crate::{aead, CryptoError, KemKeyPair, KemPublicKey, SealedEnvelope, NONCE_LEN};

/// The envelope's `algorithm` field.
pub const ALGORITHM: &str = "ml-kem-aes";

/// Encrypts `plaintext` (the UTF-8 text of the message) to `recipient`.
///
/// Draws 44 bytes from `rng`: the 32-byte ML-KEM encapsulation randomness `m`, then the 12-byte
/// IV.
///
/// # Errors
/// [`CryptoError::FieldTooLong`] if `plaintext` exceeds the AES-GCM limit.
pub fn seal(
    rng: &mut impl CryptoRngCore,
    recipient: &KemPublicKey,
    plaintext: &[u8],
) -> Result<SealedEnvelope, CryptoError> {
    let mut randomness = Zeroizing::new([0u8; 32 + NONCE_LEN]);
    rng.fill_bytes(&mut randomness[..]);
    let (m, iv) = split_randomness(&randomness);
    seal_deterministic(recipient, &m, &iv, plaintext)
}

/// Splits the 44 random bytes of a seal into `m` and the nonce.
pub(crate) fn split_randomness(r: &[u8; 32 + NONCE_LEN]) -> (Zeroizing<[u8; 32]>, [u8; NONCE_LEN]) {
    let mut m = Zeroizing::new([0u8; 32]);
    let mut iv = [0u8; NONCE_LEN];
    m.copy_from_slice(&r[..32]);
    iv.copy_from_slice(&r[32..]);
    (m, iv)
}

/// [`seal`] with caller-chosen randomness, for known-answer tests only.
///
/// `kem_randomness` is the FIPS 203 `Encaps_internal` message `m`; `iv` is the AES-GCM nonce.
/// **Never reuse either**: the same `m` to the same key repeats the AES key, and a repeated
/// (key, IV) pair under GCM reveals the XOR of plaintexts and lets anyone forge tags. Real
/// senders call [`seal`].
///
/// # Errors
/// [`CryptoError::FieldTooLong`] if `plaintext` exceeds the AES-GCM limit.
pub fn seal_deterministic(
    recipient: &KemPublicKey,
    kem_randomness: &[u8; 32],
    iv: &[u8; NONCE_LEN],
    plaintext: &[u8],
) -> Result<SealedEnvelope, CryptoError> {
    let (cipher_text, shared_secret) = recipient.encapsulate(kem_randomness);
    let encrypted_data = aead::seal(&shared_secret, iv, &[], plaintext)?;
    Ok(SealedEnvelope {
        cipher_text: cipher_text.to_vec(),
        encrypted_data,
    })
}

/// Decrypts an envelope addressed to `recipient`.
///
/// The plaintext comes back in a buffer that is wiped when dropped. It is whatever bytes the
/// sender chose; check UTF-8 before treating it as text.
///
/// # Errors
/// [`CryptoError::Decrypt`] for every failure (wrong lengths, a corrupted KEM ciphertext, a
/// different recipient, a bad tag), with no further detail.
pub fn open(
    recipient: &KemKeyPair,
    envelope: &SealedEnvelope,
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let shared_secret = recipient.decapsulate(&envelope.cipher_text)?;
    aead::open(&shared_secret, &[], &envelope.encrypted_data)
}
