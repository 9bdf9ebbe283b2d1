//! Chunked file encryption (issue 11): a random 256-bit key per file; every chunk sealed with
//! AES-256-GCM under a fresh random 96-bit nonce, with an AAD that binds the file id, the chunk's
//! index and whether it is the last chunk; and a digest over the whole ciphertext.
//!
//! What each piece stops:
//! - the **file id** in the AAD: a chunk of another file (even one sealed under the same key, which
//!   never happens with a fresh key per file) does not open here;
//! - the **index**: a chunk moved to another position (swapped, reordered, duplicated) does not
//!   open there;
//! - the **last flag**: a file cut after any chunk is detected, because the chunk that would have
//!   to be last was sealed as not last (and the real last chunk only opens as last);
//! - the **digest** ([`FileDigest`]): SHA-256 over the SHA-256 of each chunk's ciphertext in order,
//!   carried in the end-to-end encrypted message, so the receiver knows the exact ciphertext the
//!   sender uploaded before it writes the file in place.
//!
//! The nonce is random rather than derived from the index so that sealing a chunk again (a sender
//! resuming after a restart, whose file may have changed in between) never reuses a nonce with
//! different plaintext. At most 2³² chunks (far more than any file) are sealed under one key.
//!
//! A sealed chunk is `nonce (12) ‖ ciphertext ‖ tag (16)`: [`CHUNK_OVERHEAD`] bytes longer than its
//! plaintext.
//!
//! ```
//! use lattice_crypto::file_chunk::{self, FileDigest, FileKey};
//! use rand_core::OsRng;
//!
//! # fn main() -> Result<(), lattice_crypto::CryptoError> {
//! let key = FileKey::generate(&mut OsRng);
//! let file_id = [7u8; file_chunk::FILE_ID_LEN];
//! let sealed = file_chunk::seal_chunk(&mut OsRng, &key, &file_id, 0, true, b"hello")?;
//! let mut digest = FileDigest::new();
//! digest.push(&file_chunk::chunk_hash(&sealed));
//! let opened = file_chunk::open_chunk(&key, &file_id, 0, true, &sealed)?;
//! assert_eq!(opened.as_slice(), b"hello");
//! // Opened as if it were chunk 1, or as not the last chunk: refused.
//! assert!(file_chunk::open_chunk(&key, &file_id, 1, true, &sealed).is_err());
//! assert!(file_chunk::open_chunk(&key, &file_id, 0, false, &sealed).is_err());
//! let _expected: [u8; 32] = digest.finish();
//! # Ok(())
//! # }
//! ```

use std::fmt;

use rand_core::CryptoRngCore;
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use crate::{aead, CryptoError, NONCE_LEN, TAG_LEN};

/// Length of a file key, in bytes.
pub const FILE_KEY_LEN: usize = 32;
/// Length of a file id, in bytes (random, chosen by the sender).
pub const FILE_ID_LEN: usize = 16;
/// Bytes a sealed chunk adds to its plaintext (nonce and tag).
pub const CHUNK_OVERHEAD: usize = NONCE_LEN + TAG_LEN;
/// Length of a chunk hash and of a file digest, in bytes.
pub const DIGEST_LEN: usize = 32;

/// The domain label that starts every chunk's AAD.
const AAD_LABEL: &[u8] = b"lattice-file-chunk-v1";

/// A file's key: wiped on drop, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct FileKey(Zeroizing<[u8; FILE_KEY_LEN]>);

impl FileKey {
    /// A fresh random key.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        let mut k = Zeroizing::new([0u8; FILE_KEY_LEN]);
        rng.fill_bytes(k.as_mut());
        Self(k)
    }

    /// A key from its bytes (as received in a file message).
    ///
    /// # Errors
    /// [`CryptoError::InvalidLength`] unless `bytes` is [`FILE_KEY_LEN`] long.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, CryptoError> {
        let mut k = Zeroizing::new([0u8; FILE_KEY_LEN]);
        if bytes.len() != FILE_KEY_LEN {
            return Err(CryptoError::InvalidLength {
                what: "file key",
                expected: FILE_KEY_LEN,
                got: bytes.len(),
            });
        }
        k.copy_from_slice(bytes);
        Ok(Self(k))
    }

    /// The key's bytes (to put in the end-to-end encrypted file message).
    pub fn as_bytes(&self) -> &[u8; FILE_KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for FileKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FileKey(..)")
    }
}

fn aad(file_id: &[u8; FILE_ID_LEN], index: u64, last: bool) -> [u8; AAD_LABEL.len() + 16 + 9] {
    let mut a = [0u8; AAD_LABEL.len() + 16 + 9];
    let (label, rest) = a.split_at_mut(AAD_LABEL.len());
    label.copy_from_slice(AAD_LABEL);
    let (id, rest) = rest.split_at_mut(FILE_ID_LEN);
    id.copy_from_slice(file_id);
    let (idx, flag) = rest.split_at_mut(8);
    idx.copy_from_slice(&index.to_be_bytes());
    flag[0] = u8::from(last);
    a
}

/// Seals chunk `index` of file `file_id` (`last`: whether it is the file's last chunk) under a
/// fresh random nonce. Returns `nonce ‖ ciphertext ‖ tag`.
///
/// # Errors
/// [`CryptoError::FieldTooLong`] for a plaintext over the AES-GCM limit.
pub fn seal_chunk(
    rng: &mut impl CryptoRngCore,
    key: &FileKey,
    file_id: &[u8; FILE_ID_LEN],
    index: u64,
    last: bool,
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    aead::seal(&key.0, &nonce, &aad(file_id, index, last), plaintext)
}

/// Opens chunk `index` of file `file_id`, which must be the last chunk exactly when `last`.
///
/// # Errors
/// [`CryptoError::Decrypt`] (no detail) for a chunk that was not sealed under this key for this
/// file, index and last flag, or was changed in any way.
pub fn open_chunk(
    key: &FileKey,
    file_id: &[u8; FILE_ID_LEN],
    index: u64,
    last: bool,
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    aead::open(&key.0, &aad(file_id, index, last), sealed)
}

/// Bytes of room a buffer for [`seal_chunk_in_place`] starts with, before the plaintext (where
/// the nonce goes).
pub const CHUNK_HEADROOM: usize = NONCE_LEN;

/// As [`seal_chunk`], in place, for large chunks: `buf` is [`CHUNK_HEADROOM`] bytes (any value)
/// followed by the plaintext, and becomes the sealed chunk `nonce ‖ ciphertext ‖ tag` (the tag
/// appended: capacity for [`CHUNK_OVERHEAD`] bytes more than the plaintext saves a
/// reallocation). The same bytes as [`seal_chunk`] would give with the same nonce, without its
/// second buffer and copy of the plaintext.
///
/// # Errors
/// [`CryptoError::InvalidLength`] if `buf` is shorter than [`CHUNK_HEADROOM`];
/// [`CryptoError::FieldTooLong`] as [`seal_chunk`].
pub fn seal_chunk_in_place(
    rng: &mut impl CryptoRngCore,
    key: &FileKey,
    file_id: &[u8; FILE_ID_LEN],
    index: u64,
    last: bool,
    buf: &mut Vec<u8>,
) -> Result<(), CryptoError> {
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    aead::seal_in_place(&key.0, &nonce, &aad(file_id, index, last), buf)
}

/// As [`open_chunk`], in place: decrypts the chunk where it lies and returns the plaintext, a
/// slice of `sealed` (which then holds plaintext: wipe it when that matters). The tag is checked
/// first, so `sealed` is unchanged when the chunk does not open.
///
/// # Errors
/// [`CryptoError::Decrypt`] (no detail), as [`open_chunk`].
pub fn open_chunk_in_place<'a>(
    key: &FileKey,
    file_id: &[u8; FILE_ID_LEN],
    index: u64,
    last: bool,
    sealed: &'a mut [u8],
) -> Result<&'a [u8], CryptoError> {
    aead::open_in_place(&key.0, &aad(file_id, index, last), sealed)
}

/// SHA-256 of one sealed chunk, as it is stored on the server.
pub fn chunk_hash(sealed: &[u8]) -> [u8; DIGEST_LEN] {
    Sha256::digest(sealed).into()
}

/// The digest of a file's whole ciphertext: SHA-256 over the [`chunk_hash`] of every chunk, in
/// index order. Built from the chunk hashes so that a transfer resumed after a restart needs only
/// the hashes it recorded, not the chunks again.
#[derive(Debug, Clone, Default)]
pub struct FileDigest(Sha256);

impl FileDigest {
    /// An empty digest.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the next chunk's hash.
    pub fn push(&mut self, chunk_hash: &[u8; DIGEST_LEN]) {
        self.0.update(chunk_hash);
    }

    /// The digest.
    pub fn finish(self) -> [u8; DIGEST_LEN] {
        self.0.finalize().into()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rand_core::OsRng;

    const A: [u8; FILE_ID_LEN] = [1; FILE_ID_LEN];
    const B: [u8; FILE_ID_LEN] = [2; FILE_ID_LEN];

    /// In place and not are the same format: each opens the other's chunk; a chunk that does not
    /// open is left as it was; a buffer without room for the nonce is refused.
    #[test]
    fn in_place_sealing_and_opening_match_the_copying_ones() {
        let key = FileKey::generate(&mut OsRng);
        let plain: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
        let mut buf = vec![0xEE; CHUNK_HEADROOM];
        buf.extend_from_slice(&plain);
        seal_chunk_in_place(&mut OsRng, &key, &A, 4, true, &mut buf).unwrap();
        assert_eq!(buf.len(), plain.len() + CHUNK_OVERHEAD);
        assert_eq!(
            open_chunk(&key, &A, 4, true, &buf).unwrap().as_slice(),
            plain
        );

        let mut sealed = seal_chunk(&mut OsRng, &key, &A, 4, false, &plain).unwrap();
        let before = sealed.clone();
        assert!(open_chunk_in_place(&key, &A, 4, true, &mut sealed).is_err());
        assert!(open_chunk_in_place(&key, &B, 4, false, &mut sealed).is_err());
        assert_eq!(sealed, before, "a refused chunk is not touched");
        assert_eq!(
            open_chunk_in_place(&key, &A, 4, false, &mut sealed).unwrap(),
            plain.as_slice()
        );
        assert!(open_chunk_in_place(&key, &A, 0, true, &mut [0u8; 27]).is_err());

        let mut short = vec![0u8; CHUNK_HEADROOM - 1];
        assert!(matches!(
            seal_chunk_in_place(&mut OsRng, &key, &A, 0, true, &mut short),
            Err(CryptoError::InvalidLength { .. })
        ));
    }

    /// A three-chunk file, sealed.
    fn sealed(key: &FileKey, id: &[u8; FILE_ID_LEN]) -> Vec<Vec<u8>> {
        (0..3u64)
            .map(|i| {
                seal_chunk(
                    &mut OsRng,
                    key,
                    id,
                    i,
                    i == 2,
                    format!("chunk {i}").as_bytes(),
                )
                .unwrap()
            })
            .collect()
    }

    fn digest(chunks: &[Vec<u8>]) -> [u8; DIGEST_LEN] {
        let mut d = FileDigest::new();
        for c in chunks {
            d.push(&chunk_hash(c));
        }
        d.finish()
    }

    /// Opens `chunks` as a whole file of `chunks.len()` chunks, as a receiver does.
    fn open_all(
        key: &FileKey,
        id: &[u8; FILE_ID_LEN],
        chunks: &[Vec<u8>],
    ) -> Result<Vec<u8>, CryptoError> {
        let mut out = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            let last = i + 1 == chunks.len();
            out.extend_from_slice(&open_chunk(key, id, i as u64, last, c)?);
        }
        Ok(out)
    }

    #[test]
    fn a_file_round_trips() {
        let key = FileKey::generate(&mut OsRng);
        let chunks = sealed(&key, &A);
        assert_eq!(
            open_all(&key, &A, &chunks).unwrap(),
            b"chunk 0chunk 1chunk 2"
        );
        assert_eq!(chunks[0].len(), "chunk 0".len() + CHUNK_OVERHEAD);
        let empty = seal_chunk(&mut OsRng, &key, &A, 0, true, b"").unwrap();
        assert!(open_chunk(&key, &A, 0, true, &empty).unwrap().is_empty());
    }

    #[test]
    fn swapped_and_reordered_chunks_are_refused() {
        let key = FileKey::generate(&mut OsRng);
        let mut chunks = sealed(&key, &A);
        chunks.swap(0, 1);
        assert_eq!(open_all(&key, &A, &chunks), Err(CryptoError::Decrypt));
        let chunks = sealed(&key, &A);
        let rotated = vec![chunks[1].clone(), chunks[2].clone(), chunks[0].clone()];
        assert_eq!(open_all(&key, &A, &rotated), Err(CryptoError::Decrypt));
    }

    #[test]
    fn truncated_files_and_chunks_are_refused() {
        let key = FileKey::generate(&mut OsRng);
        let chunks = sealed(&key, &A);
        // The file cut after chunk 1: chunk 1 was not sealed as last.
        assert_eq!(open_all(&key, &A, &chunks[..2]), Err(CryptoError::Decrypt));
        // A chunk cut short.
        let mut short = chunks.clone();
        let cut = short[1].len() - 1;
        short[1].truncate(cut);
        assert_eq!(open_all(&key, &A, &short), Err(CryptoError::Decrypt));
        // Nothing but a nonce.
        assert_eq!(
            open_chunk(&key, &A, 0, false, &[0; 12]),
            Err(CryptoError::Decrypt)
        );
    }

    #[test]
    fn duplicated_and_extended_chunks_are_refused() {
        let key = FileKey::generate(&mut OsRng);
        let chunks = sealed(&key, &A);
        let dup = vec![chunks[0].clone(), chunks[0].clone(), chunks[2].clone()];
        assert_eq!(open_all(&key, &A, &dup), Err(CryptoError::Decrypt));
        // A chunk appended after the real last one: the last one is then not opened as last.
        let mut longer = chunks.clone();
        longer.push(chunks[2].clone());
        assert_eq!(open_all(&key, &A, &longer), Err(CryptoError::Decrypt));
    }

    #[test]
    fn chunks_of_another_file_or_key_are_refused() {
        let key = FileKey::generate(&mut OsRng);
        let a = sealed(&key, &A);
        // Same key (never happens, but must not help), another file: the file id is bound.
        let b = sealed(&key, &B);
        let spliced = vec![a[0].clone(), b[1].clone(), a[2].clone()];
        assert_eq!(open_all(&key, &A, &spliced), Err(CryptoError::Decrypt));
        let other = FileKey::generate(&mut OsRng);
        assert_eq!(open_all(&other, &A, &a), Err(CryptoError::Decrypt));
        let mut flipped = a.clone();
        flipped[0][20] ^= 1;
        assert_eq!(open_all(&key, &A, &flipped), Err(CryptoError::Decrypt));
    }

    #[test]
    fn the_digest_binds_every_chunk_and_their_order() {
        let key = FileKey::generate(&mut OsRng);
        let chunks = sealed(&key, &A);
        let d = digest(&chunks);
        let mut swapped = chunks.clone();
        swapped.swap(0, 1);
        assert_ne!(digest(&swapped), d);
        assert_ne!(digest(&chunks[..2]), d);
        // Resealing the same plaintext gives other bytes (fresh nonce), hence another digest.
        assert_ne!(digest(&sealed(&key, &A)), d);
        assert_eq!(digest(&chunks), d);
    }

    #[test]
    fn keys_are_checked_and_never_printed() {
        assert!(FileKey::from_slice(&[0; 31]).is_err());
        let key = FileKey::from_slice(&[9; 32]).unwrap();
        assert_eq!(key.as_bytes(), &[9; 32]);
        assert_eq!(format!("{key:?}"), "FileKey(..)");
    }
}
