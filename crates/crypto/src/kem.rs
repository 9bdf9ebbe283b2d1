//! ML-KEM-768 (FIPS 203) keys.
//!
//! A key pair is stored as its 64-byte key-generation seed `d ‖ z`: that is what an identity file
//! keeps, and FIPS 203 `ML-KEM.KeyGen_internal(d, z)` re-derives the same decapsulation key from it
//! every time. The seed, the decapsulation key and every shared secret are zeroized on drop.

use core::fmt;

use ml_kem::{
    Ciphertext, Decapsulate, DecapsulationKey768, EncapsulationKey768, KeyExport, MlKem768, Seed,
    B32,
};
use rand_core::CryptoRngCore;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

use crate::hex::HexPrefix;
use crate::{CryptoError, KEM_CIPHERTEXT_LEN, KEM_PUBLIC_KEY_LEN, KEM_SEED_LEN};

/// How many bytes of a public key `Debug` shows.
const DEBUG_PREFIX: usize = 4;

/// An ML-KEM-768 encapsulation key (1184 bytes), validated and ready to encapsulate to.
///
/// `Debug` shows only a short hex prefix.
#[derive(Clone)]
pub struct KemPublicKey {
    bytes: Box<[u8; KEM_PUBLIC_KEY_LEN]>,
    /// `ml-kem` keeps the key's polynomials on the heap (its `alloc` feature).
    ek: EncapsulationKey768,
}

impl KemPublicKey {
    /// Parses a 1184-byte ML-KEM-768 encapsulation key.
    ///
    /// Runs the FIPS 203 §7.2 encapsulation key check: every 12-bit coefficient of t̂ must be
    /// below q = 3329 (so that decoding then re-encoding gives the same bytes); `ml-kem` runs it
    /// when it parses the key. The original client's library refuses such keys as well, at
    /// encapsulation time.
    ///
    /// # Errors
    /// [`CryptoError::InvalidLength`] if `b` is not 1184 bytes long, [`CryptoError::InvalidKey`]
    /// if a coefficient is out of range.
    ///
    /// # Example
    /// ```
    /// use lattice_crypto::{CryptoError, KemKeyPair, KemPublicKey};
    ///
    /// let pair = KemKeyPair::from_seed(&[7u8; 64]);
    /// let parsed = KemPublicKey::from_bytes(pair.public_key().as_bytes())?;
    /// assert_eq!(&parsed, pair.public_key());
    /// assert!(matches!(
    ///     KemPublicKey::from_bytes(&[0u8; 10]),
    ///     Err(CryptoError::InvalidLength { expected: 1184, got: 10, .. })
    /// ));
    /// # Ok::<(), CryptoError>(())
    /// ```
    pub fn from_bytes(b: &[u8]) -> Result<Self, CryptoError> {
        let bytes: [u8; KEM_PUBLIC_KEY_LEN] =
            b.try_into().map_err(|_| CryptoError::InvalidLength {
                what: "ML-KEM-768 public key",
                expected: KEM_PUBLIC_KEY_LEN,
                got: b.len(),
            })?;
        // With the length fixed above, the modulus check is the only way this can fail.
        let ek = EncapsulationKey768::new(&bytes.into()).map_err(|_| {
            CryptoError::InvalidKey(
                "ML-KEM-768 public key has a coefficient >= q (FIPS 203 modulus check)",
            )
        })?;
        Ok(Self {
            bytes: Box::new(bytes),
            ek,
        })
    }

    /// The 1184 bytes of the key, as sent on the wire.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..]
    }

    /// Encapsulates to this key with the 32-byte message `m` (FIPS 203 `Encaps_internal`).
    ///
    /// `m` must be fresh randomness for every call; callers inside the crate draw it from the
    /// caller's RNG, or take it from a known-answer vector.
    pub(crate) fn encapsulate(
        &self,
        m: &[u8; 32],
    ) -> ([u8; KEM_CIPHERTEXT_LEN], Zeroizing<[u8; 32]>) {
        let mut m: B32 = (*m).into();
        let (ct, mut ss) = self.ek.encapsulate_deterministic(&m);
        m[..].zeroize();
        let shared = Zeroizing::new(ss.into());
        ss[..].zeroize();
        (ct.into(), shared)
    }
}

impl PartialEq for KemPublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.bytes[..] == other.bytes[..]
    }
}

impl Eq for KemPublicKey {}

impl core::hash::Hash for KemPublicKey {
    fn hash<H: core::hash::Hasher>(&self, state: &mut H) {
        self.bytes[..].hash(state);
    }
}

impl fmt::Debug for KemPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("KemPublicKey")
            .field(&HexPrefix(self.as_bytes(), DEBUG_PREFIX))
            .finish()
    }
}

/// An ML-KEM-768 key pair: the 64-byte seed `d ‖ z`, the decapsulation key derived from it, and
/// its public key.
///
/// The seed and the decapsulation key are zeroized on drop. `Debug` shows only a prefix of the
/// public key; equality compares seeds in constant time.
pub struct KemKeyPair {
    seed: Box<Zeroizing<[u8; KEM_SEED_LEN]>>,
    /// Zeroizes its secret parts (heap-allocated by `ml-kem`) on drop.
    dk: DecapsulationKey768,
    public: KemPublicKey,
}

impl KemKeyPair {
    /// Generates a key pair from 64 bytes of the caller's RNG (`d` then `z`, the order
    /// `ml-kem`'s own `generate_from_rng` draws them in).
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        let mut seed = Zeroizing::new([0u8; KEM_SEED_LEN]);
        rng.fill_bytes(&mut seed[..]);
        Self::from_seed(&seed)
    }

    /// Derives the key pair `ML-KEM.KeyGen_internal(d, z)` from `seed = d ‖ z`.
    ///
    /// Deterministic: the same seed always gives the same keys, which is how identity files
    /// store the KEM key and how the known-answer vector is checked.
    pub fn from_seed(seed: &[u8; KEM_SEED_LEN]) -> Self {
        let mut d_z = Seed::default();
        d_z.copy_from_slice(&seed[..]);
        let dk = DecapsulationKey768::from_seed(d_z);
        d_z[..].zeroize();
        let ek = dk.encapsulation_key().clone();
        let bytes: [u8; KEM_PUBLIC_KEY_LEN] = ek.to_bytes().into();
        Self {
            seed: Box::new(Zeroizing::new(*seed)),
            dk,
            public: KemPublicKey {
                bytes: Box::new(bytes),
                ek,
            },
        }
    }

    /// The 64-byte seed `d ‖ z` this key pair derives from. Secret.
    pub fn seed(&self) -> &[u8; KEM_SEED_LEN] {
        &self.seed
    }

    /// The public (encapsulation) key.
    pub fn public_key(&self) -> &KemPublicKey {
        &self.public
    }

    /// Decapsulates a KEM ciphertext to its 32-byte shared secret.
    ///
    /// ML-KEM uses implicit rejection: a corrupted ciphertext of the right length yields an
    /// unrelated pseudo-random secret rather than an error, so the AEAD tag check that follows
    /// is what fails.
    pub(crate) fn decapsulate(&self, ct: &[u8]) -> Result<Zeroizing<[u8; 32]>, CryptoError> {
        let ct = Ciphertext::<MlKem768>::try_from(ct).map_err(|_| CryptoError::Decrypt)?;
        let mut ss = self.dk.decapsulate(&ct);
        let shared = Zeroizing::new(ss.into());
        ss[..].zeroize();
        Ok(shared)
    }

    /// The FIPS 203 decapsulation key (2400 bytes), for checking against other implementations.
    ///
    /// ml-kem 0.3 deprecates this expanded form as a storage format (we store the seed); it is
    /// still the FIPS 203 encoding other implementations export.
    #[cfg(test)]
    #[allow(deprecated)]
    pub(crate) fn decapsulation_key_bytes(&self) -> Zeroizing<Vec<u8>> {
        use ml_kem::ExpandedKeyEncoding as _;
        Zeroizing::new(self.dk.to_expanded_bytes().to_vec())
    }
}

impl PartialEq for KemKeyPair {
    /// Constant-time comparison of the seeds.
    fn eq(&self, other: &Self) -> bool {
        self.seed[..].ct_eq(&other.seed[..]).into()
    }
}

impl Eq for KemKeyPair {}

impl fmt::Debug for KemKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KemKeyPair")
            .field("public", &HexPrefix(self.public.as_bytes(), DEBUG_PREFIX))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vector() -> serde_json::Value {
        serde_json::from_str(include_str!("../tests/vectors/ml-kem-aes.json")).unwrap()
    }

    fn field(v: &serde_json::Value, name: &str) -> String {
        v[name].as_str().unwrap().to_owned()
    }

    #[test]
    fn decapsulation_key_matches_vector() {
        use base64::Engine as _;
        let v = vector();
        let seed: [u8; 64] = hex::decode(field(&v, "seed")).unwrap().try_into().unwrap();
        let expected = base64::engine::general_purpose::STANDARD
            .decode(field(&v, "secretKey"))
            .unwrap();
        let pair = KemKeyPair::from_seed(&seed);
        assert_eq!(expected.len(), 2400);
        assert_eq!(
            pair.decapsulation_key_bytes().as_slice(),
            expected.as_slice()
        );
    }

    #[test]
    fn modulus_check_rejects_out_of_range_coefficients() {
        let pair = KemKeyPair::from_seed(&[1u8; 64]);
        let mut bytes = pair.public_key().as_bytes().to_vec();
        // First coefficient = 0xfff ≥ q.
        bytes[0] = 0xff;
        bytes[1] |= 0x0f;
        assert!(matches!(
            KemPublicKey::from_bytes(&bytes),
            Err(CryptoError::InvalidKey(_))
        ));
        // Second coefficient = 3329 exactly (0xd01): b1 high nibble 1, b2 = 0xd0.
        let mut bytes = pair.public_key().as_bytes().to_vec();
        bytes[1] = (bytes[1] & 0x0f) | 0x10;
        bytes[2] = 0xd0;
        assert!(KemPublicKey::from_bytes(&bytes).is_err());
        // 3328 is the largest allowed value.
        bytes[1] &= 0x0f;
        bytes[2] = 0xd0;
        assert!(KemPublicKey::from_bytes(&bytes).is_ok());
        // ρ (the last 32 bytes) is unconstrained.
        let mut bytes = pair.public_key().as_bytes().to_vec();
        bytes[KEM_PUBLIC_KEY_LEN - 1] = 0xff;
        assert!(KemPublicKey::from_bytes(&bytes).is_ok());
    }

    #[test]
    fn debug_shows_only_a_public_prefix() {
        let pair = KemKeyPair::from_seed(&[0x42; 64]);
        let shown = format!("{pair:?}");
        let prefix: String = pair.public_key().as_bytes()[..4]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(shown, format!("KemKeyPair {{ public: {prefix}…, .. }}"));
        assert!(!shown.contains("4242"));
        assert_eq!(
            format!("{:?}", pair.public_key()),
            format!("KemPublicKey({prefix}…)")
        );
    }

    #[test]
    fn encapsulate_decapsulate_agree() {
        let pair = KemKeyPair::from_seed(&[3u8; 64]);
        let (ct, ss) = pair.public_key().encapsulate(&[9u8; 32]);
        assert_eq!(*pair.decapsulate(&ct).unwrap(), *ss);
        assert_eq!(pair.decapsulate(&ct[1..]), Err(CryptoError::Decrypt));
    }
}
