//! Lattice crypto core: identity keys, ML-KEM-768 envelopes, signed statements and fingerprints.
//!
//! This crate implements the cryptographic half of the Lattice wire protocol, version 1
//! (`PROTOCOL.md`, sections *Envelopes* and *Identity*). It does no I/O: callers push bytes in
//! and take bytes out, and base64/JSON encoding is the caller's business. Randomness always comes
//! from an RNG the caller passes in (`&mut impl rand_core::CryptoRngCore`); every primitive is
//! driven through its deterministic API with bytes drawn from that RNG, so tests can seed it and
//! the known-answer vectors of the original JavaScript client are reproduced bit for bit.
//!
//! # What it follows
//! - **ML-KEM-768** (FIPS 203) through RustCrypto `ml-kem`; public keys are checked as FIPS 203
//!   §7.2 requires (every coefficient below q) before anything is encapsulated to them.
//! - **`ml-kem-aes`**: the original MessagingPeer envelope, exactly: the raw ML-KEM shared secret
//!   is the AES-256-GCM key, no KDF, no AAD. It authenticates nobody.
//! - **`lattice-v1`**: HKDF-SHA256 from the shared secret bound to both ids, AES-256-GCM with an
//!   AAD binding sender, recipient and message id.
//! - **Ed25519** identity keys (RFC 8032, verified with `verify_strict`), signing the ML-KEM key,
//!   registration statements and message payloads, each under its own domain label.
//!
//! # Module map
//! - [`CryptoError`] (`error`): the one error type; every decryption failure is
//!   [`CryptoError::Decrypt`], with no detail, so nothing leaks which check failed.
//! - [`KemPublicKey`], [`KemKeyPair`] (`kem`): ML-KEM-768 keys, kept as their 64-byte seed.
//! - [`IdentityKeyPair`], [`IdentityPublicKey`] (`identity_key`): Ed25519 identity keys.
//! - [`Fingerprint`] (`fingerprint`): the 60-digit safety number of an identity key.
//! - [`Identity`] (`identity`): identity key + the KEM key it signs, and its file format.
//! - [`lp`], [`kem_key_signature_message`], [`registration_statement`],
//!   [`message_signature_payload`], [`content_signature_payload`] (`statements`): the exact byte
//!   strings that get signed.
//! - [`SealedEnvelope`] (`envelope`) and the two algorithms [`ml_kem_aes`] and [`lattice_v1`].
//! - [`file_chunk`]: chunked file encryption (a key per file, chunks bound to the file, their
//!   index and the last-chunk flag; the digest of the whole ciphertext).
//! - [`device_link`]: linking a new device by a one-time short code (SPAKE2, key
//!   confirmation, the sealed bundle).
//! - `aead` (private): AES-256-GCM over the `nonce ‖ ciphertext ‖ tag` layout both envelopes use.
//!
//! # Secrets
//! Seeds, secret keys, shared secrets, derived keys and opened plaintexts live in buffers that are
//! wiped on drop (`zeroize`), and secret-holding types print only public key prefixes in `Debug`.
//! This is best effort: the dependencies' internal temporaries (for example HKDF's HMAC state, or
//! stack copies made inside `ml-kem` key generation) are outside our control.
//!
//! # Example
//! ```
//! use lattice_crypto::{lattice_v1, Identity};
//! use rand_core::OsRng;
//!
//! # fn main() -> Result<(), lattice_crypto::CryptoError> {
//! let bob = Identity::generate(&mut OsRng);
//! let ctx = lattice_v1::Context { sender_id: "alice", recipient_id: "bob", message_id: "m-1" };
//! let envelope = lattice_v1::seal(&mut OsRng, bob.kem_public_key(), &ctx, b"hi bob")?;
//! let plaintext = lattice_v1::open(bob.kem(), &ctx, &envelope)?;
//! assert_eq!(plaintext.as_slice(), b"hi bob");
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod aead;
pub mod device_link;
mod envelope;
mod error;
pub mod file_chunk;
mod fingerprint;
mod hex;
mod identity;
mod identity_key;
mod kem;
pub mod lattice_v1;
pub mod ml_kem_aes;
mod statements;

pub use envelope::SealedEnvelope;
pub use error::CryptoError;
pub use fingerprint::{Fingerprint, ParseFingerprintError};
pub use identity::Identity;
pub use identity_key::{IdentityKeyPair, IdentityPublicKey};
pub use kem::{KemKeyPair, KemPublicKey};
pub use statements::{
    content_signature_payload, device_certificate_message, device_list_message,
    device_registration_statement, kem_key_signature_message, lp, message_signature_payload,
    registration_statement, verify_kem_key_signature, ContentStatement,
};

/// Length of the registration challenge nonce (`challenge` answer), in bytes (the protocol's
/// `CHALLENGE_NONCE_LEN`).
pub use lattice_protocol::limits::CHALLENGE_NONCE_LEN as REGISTRATION_NONCE_LEN;
/// Length of an Ed25519 public (identity) key, in bytes (the protocol's `IDENTITY_KEY_LEN`).
pub use lattice_protocol::limits::IDENTITY_KEY_LEN as IDENTITY_PUBLIC_KEY_LEN;
/// Length of an ML-KEM-768 encapsulation (public) key, in bytes (a wire size: defined once in
/// [`lattice_protocol::limits`]).
pub use lattice_protocol::limits::KEM_PUBLIC_KEY_LEN;
/// Length of an Ed25519 signature, in bytes.
pub use lattice_protocol::limits::SIGNATURE_LEN;
/// Length of an ML-KEM-768 ciphertext, in bytes.
pub const KEM_CIPHERTEXT_LEN: usize = 1088;
/// Length of an ML-KEM key-generation seed `d ‖ z` (FIPS 203 `KeyGen_internal`), in bytes.
pub const KEM_SEED_LEN: usize = 64;
/// Length of the AES-256-GCM nonce (IV) that starts `encrypted_data`, in bytes.
pub const NONCE_LEN: usize = 12;
/// Length of the AES-256-GCM tag that ends `encrypted_data`, in bytes.
pub const TAG_LEN: usize = 16;
