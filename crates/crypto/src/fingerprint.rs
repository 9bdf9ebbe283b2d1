//! Fingerprints (safety numbers) of identity keys, for people to compare out of band.

use core::fmt;

use sha2::{Digest, Sha256};

use crate::IDENTITY_PUBLIC_KEY_LEN;

/// Domain label hashed in front of the identity key.
const LABEL: &[u8] = b"lattice/v1/fingerprint";
/// Number of 5-digit groups.
const GROUPS: usize = 12;
/// Bytes of hash output consumed per group (a big-endian 40-bit integer).
const CHUNK: usize = 5;
/// Groups shown by [`Fingerprint::short`].
const SHORT_GROUPS: usize = 4;

/// The 60-digit fingerprint of an [`IdentityPublicKey`](crate::IdentityPublicKey), shown as 12 groups of 5 digits.
///
/// # Derivation
/// ```text
/// h0 = SHA-256("lattice/v1/fingerprint" ‖ identity key)
/// h1 = SHA-256("lattice/v1/fingerprint" ‖ identity key ‖ 0x01)
/// b  = first 60 bytes of h0 ‖ h1
/// group i (0..12) = big-endian u40 of b[5i .. 5i+5] mod 100000, zero-padded to 5 digits
/// ```
/// Each group carries ≈ 16.6 bits, about 199 bits in all. The reduction of a 40-bit value
/// mod 10⁵ is biased by less than 10⁻⁷, which is negligible for comparison by eye.
///
/// # Example
/// ```
/// use lattice_crypto::IdentityKeyPair;
///
/// let key = IdentityKeyPair::from_secret_bytes(&[1u8; 32]).public_key();
/// let shown = key.fingerprint().to_string();
/// assert_eq!(shown.len(), 12 * 5 + 11);
/// assert!(shown.starts_with(&key.fingerprint().short()));
/// ```
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Fingerprint([u32; GROUPS]);

impl Fingerprint {
    /// Computes the fingerprint of the identity key `key` (see the type's documentation for the
    /// derivation). Takes the key's bytes, so this module does not import the key's type.
    pub(crate) fn of(key: &[u8; IDENTITY_PUBLIC_KEY_LEN]) -> Self {
        let h0 = Sha256::new()
            .chain_update(LABEL)
            .chain_update(key)
            .finalize();
        let h1 = Sha256::new()
            .chain_update(LABEL)
            .chain_update(key)
            .chain_update([0x01])
            .finalize();
        let mut bytes = [0u8; 64];
        bytes[..32].copy_from_slice(&h0);
        bytes[32..].copy_from_slice(&h1);

        let mut groups = [0u32; GROUPS];
        for (group, chunk) in groups.iter_mut().zip(bytes.chunks_exact(CHUNK)) {
            let value = chunk.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
            // < 100000, so the conversion cannot truncate.
            *group = (value % 100_000) as u32;
        }
        Self(groups)
    }

    /// The first 4 groups (20 digits), for a compact display; compare the full fingerprint to
    /// verify a key.
    pub fn short(&self) -> String {
        self.join(SHORT_GROUPS)
    }

    fn join(&self, groups: usize) -> String {
        self.0[..groups]
            .iter()
            .map(|g| format!("{g:05}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl fmt::Display for Fingerprint {
    /// 60 digits in 12 groups of 5, separated by single spaces.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.join(GROUPS))
    }
}

/// A text that is not a fingerprint: 60 decimal digits, in groups of 5 or not, separated by
/// spaces (or nothing).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a fingerprint: expected 60 digits (12 groups of 5)")]
pub struct ParseFingerprintError;

impl core::str::FromStr for Fingerprint {
    type Err = ParseFingerprintError;

    /// Reads a fingerprint as [`Fingerprint`]'s `Display` writes it (12 groups of 5 digits);
    /// whitespace anywhere is ignored, anything else but digits is refused.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut digits = s.chars().filter(|c| !c.is_whitespace());
        let mut groups = [0u32; GROUPS];
        for group in &mut groups {
            for _ in 0..5 {
                let d = digits
                    .next()
                    .and_then(|c| c.to_digit(10))
                    .ok_or(ParseFingerprintError)?;
                *group = *group * 10 + d;
            }
        }
        if digits.next().is_some() {
            return Err(ParseFingerprintError);
        }
        Ok(Self(groups))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::IdentityKeyPair;

    #[test]
    fn format_and_derivation() {
        let key = IdentityKeyPair::from_secret_bytes(&[7u8; 32]).public_key();
        let fp = key.fingerprint();
        let text = fp.to_string();
        let groups: Vec<&str> = text.split(' ').collect();
        assert_eq!(groups.len(), 12);
        assert!(groups
            .iter()
            .all(|g| g.len() == 5 && g.bytes().all(|c| c.is_ascii_digit())));
        assert_eq!(fp.short(), groups[..4].join(" "));

        // Recompute group 0 and group 11 (which straddles h0 and h1) independently.
        let mut input = LABEL.to_vec();
        input.extend_from_slice(key.as_bytes());
        let h0 = Sha256::digest(&input);
        input.push(1);
        let h1 = Sha256::digest(&input);
        let all: Vec<u8> = h0.iter().chain(h1.iter()).copied().collect();
        let group = |i: usize| {
            let v = all[5 * i..5 * i + 5]
                .iter()
                .fold(0u64, |a, &b| (a << 8) | u64::from(b));
            format!("{:05}", v % 100_000)
        };
        assert_eq!(groups[0], group(0));
        assert_eq!(groups[6], group(6));
        assert_eq!(groups[11], group(11));
    }

    #[test]
    fn different_keys_differ() {
        let a = IdentityKeyPair::from_secret_bytes(&[1u8; 32]).public_key();
        let b = IdentityKeyPair::from_secret_bytes(&[2u8; 32]).public_key();
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint(), a.fingerprint());
    }

    #[test]
    fn parses_what_it_displays_and_nothing_else() {
        let fp = IdentityKeyPair::from_secret_bytes(&[9u8; 32])
            .public_key()
            .fingerprint();
        let shown = fp.to_string();
        assert_eq!(shown.parse::<Fingerprint>(), Ok(fp.clone()));
        assert_eq!(
            shown.replace(' ', "").parse::<Fingerprint>(),
            Ok(fp.clone())
        );
        assert_eq!(format!(" {shown}\n").parse::<Fingerprint>(), Ok(fp));
        for bad in [
            "",
            "12345",
            &shown[1..],
            &format!("{shown}1"),
            &format!("a{}", &shown[1..]),
        ] {
            assert_eq!(
                bad.parse::<Fingerprint>(),
                Err(ParseFingerprintError),
                "{bad:?}"
            );
        }
    }
}
