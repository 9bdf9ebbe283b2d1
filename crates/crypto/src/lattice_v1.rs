//! `lattice-v1`: the envelope Lattice peers use with each other.
//!
//! ```text
//! (ct, ss) = ML-KEM-768.Encaps(recipient key)
//! key      = HKDF-SHA256(salt = empty, ikm = ss,
//!                        info = "lattice/v1/key" ‖ lp(senderId) ‖ lp(recipientId))   32 bytes
//! aad      = "lattice/v1" ‖ lp(senderId) ‖ lp(recipientId) ‖ lp(messageId)
//! data     = nonce (12 random bytes) ‖ AES-256-GCM(key, nonce, aad, plaintext) ‖ tag
//! ```
//! Binding both ids into the key and all three into the AAD means an envelope opened under any
//! other [`Context`] fails, so a server cannot re-address or re-label it. The plaintext is the
//! signed JSON message built by the caller with
//! [`message_signature_payload`](crate::message_signature_payload); this layer does not
//! authenticate the sender by itself (anyone can encrypt to a public key).
//!
//! ```
//! use lattice_crypto::{lattice_v1, CryptoError, KemKeyPair};
//! use rand_core::OsRng;
//!
//! # fn main() -> Result<(), CryptoError> {
//! let bob = KemKeyPair::generate(&mut OsRng);
//! let ctx = lattice_v1::Context { sender_id: "alice", recipient_id: "bob", message_id: "1" };
//! let envelope = lattice_v1::seal(&mut OsRng, bob.public_key(), &ctx, b"{\"v\":1}")?;
//! assert_eq!(lattice_v1::open(&bob, &ctx, &envelope)?.as_slice(), b"{\"v\":1}");
//!
//! let replayed = lattice_v1::Context { message_id: "2", ..ctx };
//! assert_eq!(lattice_v1::open(&bob, &replayed, &envelope), Err(CryptoError::Decrypt));
//! # Ok(())
//! # }
//! ```

use hkdf::Hkdf;
use rand_core::CryptoRngCore;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::ml_kem_aes::split_randomness;
use crate::statements::lp_named;
use crate::{aead, CryptoError, KemKeyPair, KemPublicKey, SealedEnvelope, NONCE_LEN};

/// The envelope's `algorithm` field.
pub const ALGORITHM: &str = "lattice-v1";

/// HKDF `info` label.
const KEY_LABEL: &[u8] = b"lattice/v1/key";
/// AAD label.
const AAD_LABEL: &[u8] = b"lattice/v1";

/// Who sends what to whom: bound into the key (sender, recipient) and the AAD (all three).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Context<'a> {
    /// The sender's `clientId`.
    pub sender_id: &'a str,
    /// The recipient's `clientId`.
    pub recipient_id: &'a str,
    /// The `messageId` chosen by the sender.
    pub message_id: &'a str,
}

impl Context<'_> {
    /// HKDF info: `"lattice/v1/key"` ‖ lp(senderId) ‖ lp(recipientId).
    fn key_info(&self) -> Result<Vec<u8>, CryptoError> {
        let mut info = Vec::with_capacity(
            KEY_LABEL.len() + 4 + self.sender_id.len() + self.recipient_id.len(),
        );
        info.extend_from_slice(KEY_LABEL);
        lp_named(&mut info, self.sender_id.as_bytes(), "senderId")?;
        lp_named(&mut info, self.recipient_id.as_bytes(), "recipientId")?;
        Ok(info)
    }

    /// AAD: `"lattice/v1"` ‖ lp(senderId) ‖ lp(recipientId) ‖ lp(messageId).
    fn aad(&self) -> Result<Vec<u8>, CryptoError> {
        let mut aad = Vec::with_capacity(
            AAD_LABEL.len()
                + 6
                + self.sender_id.len()
                + self.recipient_id.len()
                + self.message_id.len(),
        );
        aad.extend_from_slice(AAD_LABEL);
        lp_named(&mut aad, self.sender_id.as_bytes(), "senderId")?;
        lp_named(&mut aad, self.recipient_id.as_bytes(), "recipientId")?;
        lp_named(&mut aad, self.message_id.as_bytes(), "messageId")?;
        Ok(aad)
    }
}

/// HKDF-SHA256 with an empty salt. (RFC 5869 pads the HMAC key with zeros, so an empty salt and
/// the default all-zero salt are the same thing.)
fn derive_key(shared_secret: &[u8; 32], info: &[u8]) -> Option<Zeroizing<[u8; 32]>> {
    let mut key = Zeroizing::new([0u8; 32]);
    Hkdf::<Sha256>::new(Some(&[]), shared_secret)
        .expand(info, &mut key[..])
        .ok()?;
    Some(key)
}

/// Encrypts `plaintext` to `recipient` under `ctx`.
///
/// Draws 44 bytes from `rng`: the 32-byte ML-KEM encapsulation randomness, then the 12-byte
/// nonce.
///
/// # Errors
/// [`CryptoError::FieldTooLong`] if an id in `ctx` is longer than 65535 bytes or `plaintext`
/// exceeds the AES-GCM limit.
pub fn seal(
    rng: &mut impl CryptoRngCore,
    recipient: &KemPublicKey,
    ctx: &Context<'_>,
    plaintext: &[u8],
) -> Result<SealedEnvelope, CryptoError> {
    let info = ctx.key_info()?;
    let aad = ctx.aad()?;
    let mut randomness = Zeroizing::new([0u8; 32 + NONCE_LEN]);
    rng.fill_bytes(&mut randomness[..]);
    let (m, nonce) = split_randomness(&randomness);

    let (cipher_text, shared_secret) = recipient.encapsulate(&m);
    let key = derive_key(&shared_secret, &info)
        .ok_or(CryptoError::InvalidKey("HKDF-SHA256 expand failed"))?;
    let encrypted_data = aead::seal(&key, &nonce, &aad, plaintext)?;
    Ok(SealedEnvelope {
        cipher_text: cipher_text.to_vec(),
        encrypted_data,
    })
}

/// Decrypts an envelope addressed to `recipient` under `ctx`, which must be exactly the
/// context it was sealed with.
///
/// # Errors
/// [`CryptoError::Decrypt`] for every failure (wrong lengths, a corrupted KEM ciphertext, a
/// different recipient key, a bad tag, a different sender, recipient or message id, an
/// over-long id), with no further detail.
pub fn open(
    recipient: &KemKeyPair,
    ctx: &Context<'_>,
    envelope: &SealedEnvelope,
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let info = ctx.key_info().map_err(|_| CryptoError::Decrypt)?;
    let aad = ctx.aad().map_err(|_| CryptoError::Decrypt)?;
    let shared_secret = recipient.decapsulate(&envelope.cipher_text)?;
    let key = derive_key(&shared_secret, &info).ok_or(CryptoError::Decrypt)?;
    aead::open(&key, &aad, &envelope.encrypted_data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_info_and_aad_layout() {
        let ctx = Context {
            sender_id: "al",
            recipient_id: "b",
            message_id: "m1",
        };
        assert_eq!(
            ctx.key_info().unwrap(),
            b"lattice/v1/key\x00\x02al\x00\x01b"
        );
        assert_eq!(
            ctx.aad().unwrap(),
            b"lattice/v1\x00\x02al\x00\x01b\x00\x02m1"
        );
    }

    #[test]
    fn hkdf_empty_salt_is_rfc5869_default() {
        // RFC 5869 test case 3: salt = empty, info = empty, L = 42 (checks the Some(&[]) path).
        let ikm = [0x0b; 22];
        let mut okm = [0u8; 42];
        Hkdf::<Sha256>::new(Some(&[]), &ikm)
            .expand(&[], &mut okm)
            .unwrap();
        assert_eq!(
            hex::encode(okm),
            "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d\
             9d201395faa4b61a96c8"
        );
    }
}
