//! A full Lattice identity (Ed25519 identity key + the ML-KEM-768 key it signs) and its file
//! format.
//!
//! File format, version 1 (101 bytes, all secret):
//! ```text
//! "LTID" (4) ‖ 0x01 (version) ‖ Ed25519 secret key (32) ‖ ML-KEM-768 seed d ‖ z (64)
//! ```
//! The public keys are re-derived on load, so a file cannot pair a secret with a foreign public
//! key.

use core::fmt;

use rand_core::CryptoRngCore;
use zeroize::Zeroizing;

use crate::{
    kem_key_signature_message, CryptoError, IdentityKeyPair, IdentityPublicKey, KemKeyPair,
    KemPublicKey, KEM_SEED_LEN, SIGNATURE_LEN,
};

/// Magic bytes opening an identity file.
const MAGIC: &[u8; 4] = b"LTID";
/// The one file version this crate reads and writes.
const VERSION: u8 = 0x01;
/// Length of the Ed25519 secret in the file.
const ED25519_SECRET_LEN: usize = 32;
/// Total length of a version-1 identity file.
const FILE_LEN: usize = MAGIC.len() + 1 + ED25519_SECRET_LEN + KEM_SEED_LEN;

/// A Lattice identity: an Ed25519 identity key and the ML-KEM-768 key it vouches for.
///
/// Secrets are zeroized on drop. `Debug` shows public key prefixes only; equality compares the
/// secrets in constant time.
///
/// # Example
/// ```
/// use lattice_crypto::{verify_kem_key_signature, Identity};
/// use rand_core::OsRng;
///
/// let me = Identity::generate(&mut OsRng);
/// // Publish: identity key, KEM key, and the signature binding them.
/// let sig = me.key_signature();
/// verify_kem_key_signature(&me.identity_public_key(), me.kem_public_key().as_bytes(), &sig)?;
///
/// // Persist and reload.
/// let file = me.to_bytes();
/// let again = Identity::from_bytes(&file)?;
/// assert_eq!(again.identity_public_key(), me.identity_public_key());
/// # Ok::<(), lattice_crypto::CryptoError>(())
/// ```
#[derive(PartialEq, Eq)]
pub struct Identity {
    identity: IdentityKeyPair,
    kem: KemKeyPair,
}

impl Identity {
    /// Generates a new identity from 96 bytes of the caller's RNG: the 32-byte Ed25519 secret,
    /// then the 64-byte ML-KEM seed.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        let identity = IdentityKeyPair::generate(rng);
        let kem = KemKeyPair::generate(rng);
        Self { identity, kem }
    }

    /// Puts an identity together from its two key pairs.
    pub fn from_parts(identity: IdentityKeyPair, kem: KemKeyPair) -> Self {
        Self { identity, kem }
    }

    /// The Ed25519 identity key pair.
    pub fn identity_key(&self) -> &IdentityKeyPair {
        &self.identity
    }

    /// The ML-KEM-768 key pair.
    pub fn kem(&self) -> &KemKeyPair {
        &self.kem
    }

    /// The public identity key.
    pub fn identity_public_key(&self) -> IdentityPublicKey {
        self.identity.public_key()
    }

    /// The public ML-KEM key.
    pub fn kem_public_key(&self) -> &KemPublicKey {
        self.kem.public_key()
    }

    /// The `keySignature`: the identity key's signature over
    /// [`kem_key_signature_message`]`(KEM public key)`. Ed25519 is deterministic, so this is the
    /// same value every time.
    pub fn key_signature(&self) -> [u8; SIGNATURE_LEN] {
        self.identity
            .sign(&kem_key_signature_message(self.kem.public_key().as_bytes()))
    }

    /// Serializes the identity to the version-1 file format (see the module docs). The bytes
    /// are secret and wiped when the buffer is dropped.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(FILE_LEN));
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&self.identity.secret_bytes()[..]);
        out.extend_from_slice(self.kem.seed());
        out
    }

    /// Parses a version-1 identity file.
    ///
    /// # Errors
    /// [`CryptoError::InvalidIdentityFile`] unless `b` is exactly 101 bytes starting with
    /// `"LTID"` and version `0x01`.
    pub fn from_bytes(b: &[u8]) -> Result<Self, CryptoError> {
        if b.len() != FILE_LEN || &b[..4] != MAGIC || b[4] != VERSION {
            return Err(CryptoError::InvalidIdentityFile);
        }
        let mut secret = Zeroizing::new([0u8; ED25519_SECRET_LEN]);
        secret.copy_from_slice(&b[5..5 + ED25519_SECRET_LEN]);
        let mut seed = Zeroizing::new([0u8; KEM_SEED_LEN]);
        seed.copy_from_slice(&b[5 + ED25519_SECRET_LEN..]);
        Ok(Self {
            identity: IdentityKeyPair::from_secret_bytes(&secret),
            kem: KemKeyPair::from_seed(&seed),
        })
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("identity_key", &self.identity)
            .field("kem", &self.kem)
            .finish()
    }
}
