//! The crate's one error type.

/// Everything that can go wrong in `lattice-crypto`.
///
/// Decryption is deliberately opaque: a bad length, a corrupted KEM ciphertext, a wrong key, a
/// forged tag or a mismatched context all come back as [`CryptoError::Decrypt`] and nothing else,
/// so a peer probing us learns only "no".
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// An input (key, signature, …) does not have the length its format requires.
    #[error("invalid length for {what}: expected {expected} bytes, got {got}")]
    InvalidLength {
        /// What was being parsed.
        what: &'static str,
        /// The length the format requires.
        expected: usize,
        /// The length that was given.
        got: usize,
    },
    /// A key has the right length but is not a valid key (for instance an ML-KEM key with a
    /// coefficient ≥ q, or an Ed25519 key that is not a point or has small order).
    #[error("invalid key: {0}")]
    InvalidKey(&'static str),
    /// A signature did not verify (or was not 64 bytes long).
    #[error("signature verification failed")]
    BadSignature,
    /// An envelope could not be opened. Carries no detail on purpose (no decryption oracle).
    #[error("decryption failed")]
    Decrypt,
    /// A field is longer than its encoding allows: more than 65535 bytes for a length-prefixed
    /// field (`lp`), or a plaintext beyond the AES-GCM limit.
    #[error("{0} is too long for its encoding")]
    FieldTooLong(&'static str),
    /// Bytes that are not a version-1 Lattice identity file.
    #[error("not a Lattice identity file (expected magic \"LTID\", version 1, 101 bytes)")]
    InvalidIdentityFile,
    /// A device-linking code that is not 8 Crockford base32 characters.
    #[error("not a linking code (8 characters, 0-9 and A-Z without I, L, O, U)")]
    InvalidLinkCode,
    /// Device linking: the other side's key confirmation did not verify (a wrong code, a message
    /// from another run, a changed context, or a malformed PAKE message). No detail, on purpose.
    #[error("device linking failed: key confirmation did not verify")]
    LinkConfirmation,
}
