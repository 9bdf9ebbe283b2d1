//! Ed25519 identity keys.
//!
//! The identity key is what a Lattice user *is*: it signs the ML-KEM key, the registration
//! statement and every `lattice-v1` message. Verification uses `verify_strict` (no small-order
//! keys or components, canonical `S`), so a signature has exactly one valid encoding per message.

use core::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rand_core::CryptoRngCore;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::hex::HexPrefix;
use crate::{CryptoError, Fingerprint, IDENTITY_PUBLIC_KEY_LEN, SIGNATURE_LEN};

/// Length of an Ed25519 secret key (the RFC 8032 seed), in bytes.
const SECRET_LEN: usize = 32;

/// An Ed25519 identity key pair.
///
/// The secret is zeroized on drop (and boxed, so moving the pair does not copy it around the
/// stack). `Debug` shows only a prefix of the public key; equality compares secrets in constant
/// time.
pub struct IdentityKeyPair {
    key: Box<SigningKey>,
}

impl IdentityKeyPair {
    /// Generates a key pair from 32 bytes of the caller's RNG.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        let mut secret = Zeroizing::new([0u8; SECRET_LEN]);
        rng.fill_bytes(&mut secret[..]);
        Self::from_secret_bytes(&secret)
    }

    /// Rebuilds a key pair from its 32-byte secret (the RFC 8032 private key).
    pub fn from_secret_bytes(b: &[u8; 32]) -> Self {
        Self {
            key: Box::new(SigningKey::from_bytes(b)),
        }
    }

    /// The 32-byte secret, in a buffer that is wiped when dropped.
    pub fn secret_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.key.to_bytes())
    }

    /// The public identity key.
    pub fn public_key(&self) -> IdentityPublicKey {
        IdentityPublicKey(self.key.verifying_key())
    }

    /// Signs `msg` (pure Ed25519, deterministic).
    ///
    /// Sign only the domain-separated statements this crate builds
    /// ([`kem_key_signature_message`](crate::kem_key_signature_message),
    /// [`registration_statement`](crate::registration_statement),
    /// [`message_signature_payload`](crate::message_signature_payload)), never raw peer input.
    ///
    /// # Example
    /// ```
    /// use lattice_crypto::{message_signature_payload, IdentityKeyPair};
    /// use rand_core::OsRng;
    ///
    /// let alice = IdentityKeyPair::generate(&mut OsRng);
    /// let payload = message_signature_payload("alice", "bob", "m-1", 1_700_000_000_000, b"hi")?;
    /// let sig = alice.sign(&payload);
    /// assert!(alice.public_key().verify(&payload, &sig).is_ok());
    /// # Ok::<(), lattice_crypto::CryptoError>(())
    /// ```
    pub fn sign(&self, msg: &[u8]) -> [u8; SIGNATURE_LEN] {
        self.key.sign(msg).to_bytes()
    }
}

impl PartialEq for IdentityKeyPair {
    /// Constant-time comparison of the secrets.
    fn eq(&self, other: &Self) -> bool {
        self.key.as_bytes().ct_eq(other.key.as_bytes()).into()
    }
}

impl Eq for IdentityKeyPair {}

impl fmt::Debug for IdentityKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityKeyPair")
            .field("public", &HexPrefix(self.key.verifying_key().as_bytes(), 8))
            .finish_non_exhaustive()
    }
}

/// An Ed25519 public identity key (32 bytes), known to be a valid point of large order.
///
/// `Debug` prints the key in hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct IdentityPublicKey(VerifyingKey);

impl IdentityPublicKey {
    /// Parses a 32-byte Ed25519 public key.
    ///
    /// # Errors
    /// [`CryptoError::InvalidLength`] if `b` is not 32 bytes, [`CryptoError::InvalidKey`] if it
    /// is not the encoding of a curve point, or if the point has small order (such a key would
    /// "verify" forged signatures under lax rules; `verify_strict` refuses it anyway).
    pub fn from_bytes(b: &[u8]) -> Result<Self, CryptoError> {
        let bytes: &[u8; IDENTITY_PUBLIC_KEY_LEN] =
            b.try_into().map_err(|_| CryptoError::InvalidLength {
                what: "Ed25519 identity key",
                expected: IDENTITY_PUBLIC_KEY_LEN,
                got: b.len(),
            })?;
        let key = VerifyingKey::from_bytes(bytes)
            .map_err(|_| CryptoError::InvalidKey("Ed25519 identity key is not a curve point"))?;
        if key.is_weak() {
            return Err(CryptoError::InvalidKey(
                "Ed25519 identity key has small order",
            ));
        }
        Ok(Self(key))
    }

    /// The 32 bytes of the key.
    pub fn as_bytes(&self) -> &[u8; IDENTITY_PUBLIC_KEY_LEN] {
        self.0.as_bytes()
    }

    /// Verifies an Ed25519 signature over `msg` with RFC 8032 strict rules
    /// (`verify_strict`).
    ///
    /// # Errors
    /// [`CryptoError::BadSignature`] if `sig` is not 64 bytes or does not verify.
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> Result<(), CryptoError> {
        let sig = Signature::from_slice(sig).map_err(|_| CryptoError::BadSignature)?;
        self.0
            .verify_strict(msg, &sig)
            .map_err(|_| CryptoError::BadSignature)
    }

    /// The 60-digit fingerprint (safety number) of this key.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(self.as_bytes())
    }
}

impl fmt::Debug for IdentityPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("IdentityPublicKey")
            .field(&HexPrefix(self.as_bytes(), IDENTITY_PUBLIC_KEY_LEN))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc8032_test_vector_1() {
        // RFC 8032 §7.1, TEST 1 (empty message).
        let secret: [u8; 32] =
            hex::decode("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
                .unwrap()
                .try_into()
                .unwrap();
        let pair = IdentityKeyPair::from_secret_bytes(&secret);
        assert_eq!(
            hex::encode(pair.public_key().as_bytes()),
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
        );
        assert_eq!(
            hex::encode(pair.sign(b"")),
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155\
             5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
        );
        assert_eq!(*pair.secret_bytes(), secret);
    }

    #[test]
    fn rejects_bad_public_keys() {
        assert!(matches!(
            IdentityPublicKey::from_bytes(&[1u8; 31]),
            Err(CryptoError::InvalidLength {
                expected: 32,
                got: 31,
                ..
            })
        ));
        // The identity point (small order).
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert_eq!(
            IdentityPublicKey::from_bytes(&identity),
            Err(CryptoError::InvalidKey(
                "Ed25519 identity key has small order"
            ))
        );
    }

    #[test]
    fn debug_hides_the_secret() {
        let pair = IdentityKeyPair::from_secret_bytes(&[0xab; 32]);
        let shown = format!("{pair:?}");
        assert!(shown.starts_with("IdentityKeyPair { public: "));
        assert!(!shown.contains("abababab"));
    }
}
