//! Backups: the identity, settings, contacts, pinned keys (with a pending key change), replay
//! marks, drafts, the outbox and the whole history in one file sealed with a passphrase, and
//! their restore onto a fresh profile.
//!
//! ## File format (version 1)
//! ```text
//! header  = magic "LATTBKUP" (8) ‖ version u16 BE (= 1) ‖ body_len u16 BE (≤ 1024) ‖ body
//! body    = kdf u8 (1 = Argon2id v0x13) ‖ memory KiB u32 BE ‖ iterations u32 BE ‖ lanes u32 BE
//!           ‖ salt_len u8 (16) ‖ salt ‖ chunk_len u32 BE ‖ nonce_prefix (7)
//! chunks  = AES-256-GCM(key, nonce = nonce_prefix ‖ index u32 BE ‖ last u8, aad = header,
//!                       chunk_len bytes of plaintext; the last chunk may be shorter or empty)
//! ```
//! The key is Argon2id(passphrase, salt, memory, iterations, lanes) → 32 bytes. The chunk
//! nonce is the STREAM construction of Hoang, Reyhanitabar, Rogaway and Vizár ("Online
//! authenticated-encryption and its nonce-reuse misuse-resistance", 2015): every chunk's
//! position and whether it is the last are authenticated, so a chunk that is changed, moved,
//! dropped or repeated, or a file cut at any point, fails to open. The whole header is the
//! associated data of every chunk, so its KDF parameters cannot be changed either. Writing and
//! reading hold one chunk (64 KiB) and one record at a time, never the whole history.
//!
//! The plaintext is JSON lines (one `Record` each, tagged by `type`): `begin`, `identity`, `settings`, then contacts,
//! pinned keys, replay marks, drafts, messages, the files attached to messages and outbox
//! entries, the group conversations and their history (schema 8), then `end` with the number
//! of records before it.
//!
//! Groups are restored as *left*: their MLS keys (`mls.sqlite3`) are never in a backup, so a
//! restored profile is a new MLS client in no group. Their history stays readable; our group
//! messages that were still waiting are marked failed.
//!
//! A file record ([`super::files`], schema 7) holds what the conversation shows and what a
//! download needs (name, size, type, preview, the sender's offer), never the file's bytes:
//! after a restore an incoming file is downloaded again while the server still keeps it, and
//! a transfer that was under way is shown as failed.
//!
//! ## Restore
//! Only onto a fresh profile: no identity file and an empty database (a restore never merges
//! two histories or replaces an identity; to restore over one, start the app with a new,
//! empty `--data-dir`). Every record is checked and inserted inside one SQLite transaction
//! that is committed only once the last chunk authenticated and `end` matched; the identity
//! file is written to a temporary file and linked into place (never over an existing one)
//! just before that commit. A wrong passphrase, a foreign, damaged, cut or reordered file
//! therefore changes nothing.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use aes_gcm::aead::{AeadInOut, Key, KeyInit, Nonce, Tag};
use aes_gcm::Aes256Gcm;
use lattice_crypto::{Identity, IdentityPublicKey};
use lattice_protocol::{ClientId, MessageId};
use rand_core::CryptoRngCore;
use rusqlite::params;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use super::settings::Settings;
use super::{Db, MessageStatus, StorageError, IDENTITY_FILE};

/// The first bytes of every backup file.
pub const MAGIC: &[u8; 8] = b"LATTBKUP";
/// The format version this code writes and reads.
pub const FORMAT_VERSION: u16 = 1;
/// Largest header body accepted (a foreign file must not make us read or allocate more).
pub const MAX_HEADER_BYTES: usize = 1024;
/// Plaintext bytes per chunk when writing.
pub const CHUNK_BYTES: u32 = 64 * 1024;
/// Smallest and largest chunk a file may declare: bounds the memory a restore needs.
const CHUNK_BYTES_RANGE: std::ops::RangeInclusive<u32> = 1024..=1024 * 1024;
/// Largest record (one JSON line). A message body is at most the protocol's 256 KiB frame;
/// JSON escaping can grow control characters six-fold.
pub const MAX_RECORD_BYTES: usize = 2 * 1024 * 1024;
/// Shortest passphrase accepted for a new backup, in characters.
pub const MIN_PASSPHRASE_CHARS: usize = 12;
/// Longest passphrase accepted, in bytes.
pub const MAX_PASSPHRASE_BYTES: usize = 1024;
/// Largest Argon2 memory a file may ask for on restore (1 GiB), in KiB: a foreign file must
/// not make the app allocate without bound.
pub const MAX_KDF_MEMORY_KIB: u32 = 1024 * 1024;
/// Most Argon2 passes a file may ask for on restore.
pub const MAX_KDF_ITERATIONS: u32 = 64;
/// Most Argon2 lanes a file may ask for on restore.
pub const MAX_KDF_LANES: u32 = 16;

const KDF_ARGON2ID: u8 = 1;
const SALT_LEN: usize = 16;
const NONCE_PREFIX_LEN: usize = 7;
const TAG_LEN: usize = 16;
const KEY_LEN: usize = 32;
/// The header body of version 1: kdf, three parameters, salt length and salt, chunk length,
/// nonce prefix.
const BODY_LEN: usize = 1 + 4 * 3 + 1 + SALT_LEN + 4 + NONCE_PREFIX_LEN;

/// Length of a version 1 header: magic, version, body length and body.
pub const HEADER_LEN: usize = 12 + BODY_LEN;

/// Argon2id's cost parameters, stored in the header so that later versions can raise them and
/// still read older files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes over the memory.
    pub iterations: u32,
    /// Parallel lanes.
    pub lanes: u32,
}

impl KdfParams {
    /// What new backups use: 64 MiB, 3 passes, 1 lane (RFC 9106's second recommended option,
    /// with one lane because the derivation runs on one thread).
    pub const RECOMMENDED: Self = Self {
        memory_kib: 64 * 1024,
        iterations: 3,
        lanes: 1,
    };
}

/// Why a backup could not be written or restored. The messages are sentences for people.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The passphrase is too short or too long.
    #[error("{0}")]
    Passphrase(String),
    /// The file does not start like a Lattice backup.
    #[error("This file is not a Lattice backup.")]
    NotABackup,
    /// A backup of a format this version cannot read.
    #[error("This backup was made by a newer Lattice (format {0}); update Lattice to restore it.")]
    UnsupportedVersion(u16),
    /// The header is malformed or asks for more than allowed.
    #[error("This backup's header is damaged or not acceptable: {0}.")]
    BadHeader(String),
    /// The first chunk does not open: the passphrase is wrong (or the file was changed).
    #[error("Wrong passphrase, or the backup file was changed. Nothing was restored.")]
    WrongPassphrase,
    /// A later chunk does not open, or the file ends early or goes on after its end.
    #[error("The backup file is damaged or incomplete (at part {chunk}). Nothing was restored.")]
    Damaged {
        /// The index of the chunk that failed.
        chunk: u32,
    },
    /// The chunks opened but their contents are not a valid backup.
    #[error("The backup's contents are not valid: {0}. Nothing was restored.")]
    BadContents(String),
    /// Restore onto a profile that already has an identity or history.
    #[error("This profile already has an identity or messages; a backup is restored only onto a fresh profile (start Lattice with a new, empty data directory).")]
    NotFresh,
    /// The file to write exists already (a backup or export never replaces one).
    #[error("There is already a file at {0}; choose another name.")]
    Exists(PathBuf),
    /// A file could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The database failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// An I/O error while writing a file whose path the caller fills in (`write_new_file`).
impl From<std::io::Error> for BackupError {
    fn from(source: std::io::Error) -> Self {
        Self::Io {
            action: "writing",
            path: PathBuf::new(),
            source,
        }
    }
}

impl From<rusqlite::Error> for BackupError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Storage(StorageError::Sqlite(e))
    }
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BackupError {
    let path = path.to_owned();
    move |source| BackupError::Io {
        action,
        path,
        source,
    }
}

/// A passphrase, wiped from memory when dropped and never printed.
pub struct Passphrase(Zeroizing<String>);

impl std::fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Passphrase(..)")
    }
}

impl Passphrase {
    /// A passphrase for a new backup: at least [`MIN_PASSPHRASE_CHARS`] characters, at most
    /// [`MAX_PASSPHRASE_BYTES`] bytes. Takes ownership so the caller's copy is the one wiped.
    ///
    /// # Errors
    /// [`BackupError::Passphrase`] saying what is wrong.
    pub fn for_backup(text: String) -> Result<Self, BackupError> {
        let text = Zeroizing::new(text);
        if text.chars().count() < MIN_PASSPHRASE_CHARS {
            return Err(BackupError::Passphrase(format!(
                "Choose a passphrase of at least {MIN_PASSPHRASE_CHARS} characters."
            )));
        }
        Self::checked(text)
    }

    /// A passphrase typed to restore: any length up to [`MAX_PASSPHRASE_BYTES`].
    ///
    /// # Errors
    /// [`BackupError::Passphrase`] for an empty or too long one.
    pub fn for_restore(text: String) -> Result<Self, BackupError> {
        let text = Zeroizing::new(text);
        if text.is_empty() {
            return Err(BackupError::Passphrase(
                "Type the backup's passphrase.".into(),
            ));
        }
        Self::checked(text)
    }

    fn checked(text: Zeroizing<String>) -> Result<Self, BackupError> {
        if text.len() > MAX_PASSPHRASE_BYTES {
            return Err(BackupError::Passphrase(format!(
                "A passphrase is at most {MAX_PASSPHRASE_BYTES} bytes."
            )));
        }
        Ok(Self(text))
    }
}

/// The header of a backup file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Header {
    kdf: KdfParams,
    salt: [u8; SALT_LEN],
    chunk_bytes: u32,
    nonce_prefix: [u8; NONCE_PREFIX_LEN],
}

impl Header {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(12 + BODY_LEN);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
        // BODY_LEN is a small constant.
        out.extend_from_slice(&(BODY_LEN as u16).to_be_bytes());
        out.push(KDF_ARGON2ID);
        out.extend_from_slice(&self.kdf.memory_kib.to_be_bytes());
        out.extend_from_slice(&self.kdf.iterations.to_be_bytes());
        out.extend_from_slice(&self.kdf.lanes.to_be_bytes());
        out.push(SALT_LEN as u8);
        out.extend_from_slice(&self.salt);
        out.extend_from_slice(&self.chunk_bytes.to_be_bytes());
        out.extend_from_slice(&self.nonce_prefix);
        out
    }

    /// Reads and checks a header; returns it and its bytes (the chunks' associated data).
    fn read(input: &mut impl Read) -> Result<(Self, Vec<u8>), BackupError> {
        let mut fixed = [0u8; 12];
        if read_full(input, &mut fixed).map_err(|_| BackupError::NotABackup)? < fixed.len()
            || &fixed[..8] != MAGIC
        {
            return Err(BackupError::NotABackup);
        }
        let version = u16::from_be_bytes([fixed[8], fixed[9]]);
        if version != FORMAT_VERSION {
            return Err(BackupError::UnsupportedVersion(version));
        }
        let body_len = usize::from(u16::from_be_bytes([fixed[10], fixed[11]]));
        if body_len > MAX_HEADER_BYTES {
            return Err(BackupError::BadHeader(format!(
                "it claims {body_len} bytes, more than {MAX_HEADER_BYTES}"
            )));
        }
        if body_len != BODY_LEN {
            return Err(BackupError::BadHeader(format!(
                "{body_len} bytes where version 1 has {BODY_LEN}"
            )));
        }
        let mut body = [0u8; BODY_LEN];
        if read_full(input, &mut body).map_err(|_| BackupError::NotABackup)? < BODY_LEN {
            return Err(BackupError::BadHeader("it is cut short".into()));
        }
        let mut at = 0;
        let mut take = |n: usize| {
            let s = &body[at..at + n];
            at += n;
            s
        };
        let u32_at = |s: &[u8]| u32::from_be_bytes([s[0], s[1], s[2], s[3]]);
        if take(1)[0] != KDF_ARGON2ID {
            return Err(BackupError::BadHeader("unknown key derivation".into()));
        }
        let kdf = KdfParams {
            memory_kib: u32_at(take(4)),
            iterations: u32_at(take(4)),
            lanes: u32_at(take(4)),
        };
        if usize::from(take(1)[0]) != SALT_LEN {
            return Err(BackupError::BadHeader("unexpected salt length".into()));
        }
        let mut salt = [0u8; SALT_LEN];
        salt.copy_from_slice(take(SALT_LEN));
        let chunk_bytes = u32_at(take(4));
        let mut nonce_prefix = [0u8; NONCE_PREFIX_LEN];
        nonce_prefix.copy_from_slice(take(NONCE_PREFIX_LEN));
        if kdf.memory_kib > MAX_KDF_MEMORY_KIB
            || kdf.iterations > MAX_KDF_ITERATIONS
            || kdf.lanes > MAX_KDF_LANES
        {
            return Err(BackupError::BadHeader(format!(
                "key derivation asks for {} KiB, {} passes, {} lanes (at most {MAX_KDF_MEMORY_KIB}, {MAX_KDF_ITERATIONS}, {MAX_KDF_LANES})",
                kdf.memory_kib, kdf.iterations, kdf.lanes
            )));
        }
        if !CHUNK_BYTES_RANGE.contains(&chunk_bytes) {
            return Err(BackupError::BadHeader(format!(
                "chunks of {chunk_bytes} bytes"
            )));
        }
        let mut raw = fixed.to_vec();
        raw.extend_from_slice(&body);
        Ok((
            Self {
                kdf,
                salt,
                chunk_bytes,
                nonce_prefix,
            },
            raw,
        ))
    }

    /// Argon2id(passphrase, salt) with this header's parameters.
    fn derive_key(&self, passphrase: &Passphrase) -> Result<Zeroizing<[u8; KEY_LEN]>, BackupError> {
        let params = argon2::Params::new(
            self.kdf.memory_kib,
            self.kdf.iterations,
            self.kdf.lanes,
            Some(KEY_LEN),
        )
        .map_err(|e| BackupError::BadHeader(format!("key derivation parameters: {e}")))?;
        let argon =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        argon
            .hash_password_into(passphrase.0.as_bytes(), &self.salt, &mut key[..])
            .map_err(|e| BackupError::BadHeader(format!("key derivation: {e}")))?;
        Ok(key)
    }
}

/// Reads until `buf` is full or the input ends; returns how much was read.
fn read_full(input: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// AES-256-GCM with STREAM nonces (see the module docs).
struct ChunkCipher {
    cipher: Aes256Gcm,
    nonce_prefix: [u8; NONCE_PREFIX_LEN],
    aad: Vec<u8>,
    next: u32,
}

impl ChunkCipher {
    fn new(key: &[u8; KEY_LEN], header: &Header, aad: Vec<u8>) -> Self {
        let mut k = Key::<Aes256Gcm>::default();
        k.copy_from_slice(key);
        let cipher = Aes256Gcm::new(&k);
        k[..].zeroize();
        Self {
            cipher,
            nonce_prefix: header.nonce_prefix,
            aad,
            next: 0,
        }
    }

    fn nonce(&self, last: bool) -> Nonce<Aes256Gcm> {
        let mut n = [0u8; 12];
        n[..NONCE_PREFIX_LEN].copy_from_slice(&self.nonce_prefix);
        n[NONCE_PREFIX_LEN..11].copy_from_slice(&self.next.to_be_bytes());
        n[11] = u8::from(last);
        Nonce::<Aes256Gcm>::from(n)
    }

    /// Encrypts `chunk` in place and returns its tag.
    fn seal(&mut self, chunk: &mut [u8], last: bool) -> Result<[u8; TAG_LEN], BackupError> {
        let tag = self
            .cipher
            .encrypt_inout_detached(&self.nonce(last), &self.aad, chunk.into())
            .map_err(|_| BackupError::BadContents("a chunk too large to seal".into()))?;
        self.advance()?;
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(&tag);
        Ok(out)
    }

    /// Decrypts `chunk` (ciphertext ‖ tag) in place and returns the plaintext's length.
    fn open(&mut self, chunk: &mut [u8], last: bool) -> Result<usize, BackupError> {
        let index = self.next;
        let failed = || {
            if index == 0 {
                BackupError::WrongPassphrase
            } else {
                BackupError::Damaged { chunk: index }
            }
        };
        let Some(len) = chunk.len().checked_sub(TAG_LEN) else {
            return Err(failed());
        };
        let (data, tag) = chunk.split_at_mut(len);
        let tag = Tag::<Aes256Gcm>::try_from(&tag[..]).map_err(|_| failed())?;
        self.cipher
            .decrypt_inout_detached(&self.nonce(last), &self.aad, data.into(), &tag)
            .map_err(|_| failed())?;
        self.advance()?;
        Ok(len)
    }

    fn advance(&mut self) -> Result<(), BackupError> {
        self.next = self
            .next
            .checked_add(1)
            .ok_or_else(|| BackupError::BadContents("too many chunks".into()))?;
        Ok(())
    }
}

/// Writes records as sealed chunks; holds at most one chunk plus one record of plaintext.
struct SealedWriter<W: Write> {
    out: W,
    cipher: ChunkCipher,
    chunk: usize,
    buf: Zeroizing<Vec<u8>>,
}

impl<W: Write> SealedWriter<W> {
    fn new(
        mut out: W,
        passphrase: &Passphrase,
        kdf: KdfParams,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Self, BackupError> {
        let mut header = Header {
            kdf,
            salt: [0; SALT_LEN],
            chunk_bytes: CHUNK_BYTES,
            nonce_prefix: [0; NONCE_PREFIX_LEN],
        };
        rng.fill_bytes(&mut header.salt);
        rng.fill_bytes(&mut header.nonce_prefix);
        let key = header.derive_key(passphrase)?;
        let aad = header.encode();
        out.write_all(&aad)?;
        Ok(Self {
            out,
            cipher: ChunkCipher::new(&key, &header, aad),
            chunk: CHUNK_BYTES as usize,
            buf: Zeroizing::new(Vec::with_capacity(CHUNK_BYTES as usize + MAX_RECORD_BYTES)),
        })
    }

    fn record(&mut self, record: &Record) -> Result<(), BackupError> {
        let start = self.buf.len();
        serde_json::to_writer(&mut *self.buf, record)
            .map_err(|e| BackupError::BadContents(format!("cannot encode a record: {e}")))?;
        if self.buf.len() - start > MAX_RECORD_BYTES {
            return Err(BackupError::BadContents(format!(
                "a record larger than {MAX_RECORD_BYTES} bytes"
            )));
        }
        self.buf.push(b'\n');
        while self.buf.len() > self.chunk {
            self.seal_front(self.chunk, false)?;
        }
        Ok(())
    }

    fn seal_front(&mut self, len: usize, last: bool) -> Result<(), BackupError> {
        let mut chunk: Zeroizing<Vec<u8>> = Zeroizing::new(self.buf.drain(..len).collect());
        let tag = self.cipher.seal(&mut chunk, last)?;
        let write = |out: &mut W| {
            out.write_all(&chunk)?;
            out.write_all(&tag)
        };
        Ok(write(&mut self.out)?)
    }

    fn finish(mut self) -> Result<W, BackupError> {
        let len = self.buf.len();
        self.seal_front(len, true)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Opens sealed chunks and yields their lines; holds one chunk and one record at most.
struct SealedReader<R: Read> {
    input: BufReader<R>,
    cipher: ChunkCipher,
    chunk: usize,
    plain: Zeroizing<Vec<u8>>,
    pos: usize,
    done: bool,
}

impl<R: Read> SealedReader<R> {
    fn new(input: R, passphrase: &Passphrase) -> Result<Self, BackupError> {
        let mut input = BufReader::new(input);
        let (header, aad) = Header::read(&mut input)?;
        let key = header.derive_key(passphrase)?;
        Ok(Self {
            input,
            cipher: ChunkCipher::new(&key, &header, aad),
            chunk: header.chunk_bytes as usize,
            plain: Zeroizing::new(Vec::new()),
            pos: 0,
            done: false,
        })
    }

    fn damaged(&self) -> BackupError {
        BackupError::Damaged {
            chunk: self.cipher.next,
        }
    }

    /// Opens the next chunk into `plain`; false once the last chunk was read.
    fn next_chunk(&mut self) -> Result<bool, BackupError> {
        if self.done {
            return Ok(false);
        }
        let mut sealed = Zeroizing::new(vec![0u8; self.chunk + TAG_LEN]);
        let read = read_full(&mut self.input, &mut sealed).map_err(|_| self.damaged())?;
        if read == 0 {
            // Cut right after the header or after a chunk that was not the last.
            return Err(self.damaged());
        }
        // A full chunk is the last one only if nothing follows it.
        let damaged = self.damaged();
        let last = read < sealed.len() || self.input.fill_buf().map_err(|_| damaged)?.is_empty();
        sealed.truncate(read);
        let len = self.cipher.open(&mut sealed, last)?;
        sealed.truncate(len);
        self.plain.drain(..self.pos);
        self.pos = 0;
        self.plain.extend_from_slice(&sealed);
        self.done = last;
        Ok(true)
    }

    /// The next line (without its newline), or `None` at the end of the last chunk.
    fn next_line(&mut self) -> Result<Option<Zeroizing<Vec<u8>>>, BackupError> {
        loop {
            if let Some(nl) = self.plain[self.pos..].iter().position(|&b| b == b'\n') {
                let line = Zeroizing::new(self.plain[self.pos..self.pos + nl].to_vec());
                self.pos += nl + 1;
                return Ok(Some(line));
            }
            if self.plain.len() - self.pos > MAX_RECORD_BYTES {
                return Err(BackupError::BadContents(format!(
                    "a record larger than {MAX_RECORD_BYTES} bytes"
                )));
            }
            if !self.next_chunk()? {
                if self.pos < self.plain.len() {
                    return Err(BackupError::BadContents("it ends inside a record".into()));
                }
                return Ok(None);
            }
        }
    }
}

/// One line of a backup's plaintext.
#[derive(Debug, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    deny_unknown_fields
)]
enum Record {
    /// First: who wrote it, when.
    Begin {
        app_version: String,
        created_at: i64,
    },
    /// The identity file's bytes, hex.
    Identity { secret: String },
    /// The settings.
    Settings { settings: Settings },
    /// A `contacts` row.
    Contact {
        peer_id: String,
        first_seen: i64,
        unread: i64,
        user_verified: bool,
        authenticated: bool,
    },
    /// A `pinned_keys` row; the key hex.
    PinnedKey {
        peer_id: String,
        identity_key: String,
        pinned_at: i64,
        pending_fingerprint: Option<String>,
    },
    /// A `replay_marks` row.
    ReplayMark { peer_id: String, sent_at: i64 },
    /// A `drafts` row.
    Draft {
        peer_id: String,
        body: String,
        updated_at: i64,
    },
    /// A `messages` row, with the content layer's columns (schema 6; absent in older backups).
    Message {
        seq: i64,
        message_id: String,
        peer_id: String,
        outgoing: bool,
        body: String,
        at: i64,
        status: i64,
        authenticated: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        wire_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sent_at: Option<i64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        edited_at: Option<i64>,
        #[serde(default)]
        deleted: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_sender: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_excerpt: Option<String>,
        #[serde(default)]
        rev: i64,
        #[serde(default)]
        receipt_sent: bool,
    },
    /// A `message_versions` row: an earlier text of an edited message.
    MessageVersion {
        seq: i64,
        body: String,
        replaced_at: i64,
    },
    /// A `reactions` row.
    Reaction {
        seq: i64,
        reactor: String,
        emoji: String,
        at: i64,
    },
    /// An `attachments` row (schema 7; the thumbnail hex): of the 1:1 message `seq`, or with
    /// `group` (schema 9; absent in older backups) of the group line `seq`, written after the
    /// group lines. The file's bytes are not in the backup.
    Attachment {
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        group: bool,
        seq: i64,
        name: String,
        size: u64,
        mime: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        thumbnail: Option<BackupThumbnail>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        offer: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        local_path: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        transfer_id: Option<String>,
        state: super::files::TransferState,
        done: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// An `outbox` row.
    Outbox {
        message_id: String,
        peer_id: String,
        body: String,
        created_at: i64,
        wire_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kind: Option<String>,
    },
    /// A `groups` row (schema 8). Restored as left: the group's MLS keys are not in backups,
    /// so the restored profile is in no group; its history stays readable.
    Group {
        group_id: String,
        name: String,
        unread: i64,
        created_at: i64,
    },
    /// A `group_messages` row (schema 8): a message with its sender, or a system line.
    GroupMessage {
        seq: i64,
        group_id: String,
        kind: i64,
        sender: String,
        message_id: String,
        outgoing: bool,
        body: String,
        at: i64,
        status: i64,
    },
    /// Last: how many records came before it.
    End { records: u64 },
}

/// A thumbnail in a backup record.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct BackupThumbnail {
    mime: String,
    width: u32,
    height: u32,
    /// Hex.
    bytes: String,
}

/// What a backup holds, counted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupCounts {
    /// Contacts.
    pub contacts: u64,
    /// Pinned identity keys.
    pub pinned_keys: u64,
    /// Messages, both directions.
    pub messages: u64,
}

/// Writes a backup of the profile in `data_dir` (its identity file and `settings`) and `db`
/// to a new file at `path`, sealed with `passphrase`. The file appears complete or not at all:
/// it is written beside `path` and renamed into place; an existing file is never replaced.
/// The history is read from one snapshot of the database (a read transaction), so the backup
/// is consistent even while messages arrive.
///
/// # Errors
/// [`BackupError::Exists`] when `path` exists; [`BackupError::Io`] when it cannot be written;
/// [`BackupError::Storage`]; [`BackupError::BadContents`] if the profile has no identity.
pub fn export(
    db: &Db,
    data_dir: &Path,
    settings: &Settings,
    path: &Path,
    passphrase: &Passphrase,
    kdf: KdfParams,
    rng: &mut impl CryptoRngCore,
) -> Result<BackupCounts, BackupError> {
    let identity = std::fs::read(data_dir.join(IDENTITY_FILE)).map(Zeroizing::new);
    let identity = match identity {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(BackupError::BadContents(
                "this profile has no identity yet".into(),
            ))
        }
        Err(e) => return Err(io_error("reading", &data_dir.join(IDENTITY_FILE))(e)),
    };
    write_new_file(path, |out| {
        let mut writer = SealedWriter::new(out, passphrase, kdf, rng)?;
        let counts = write_records(&mut writer, db, &identity, settings)?;
        writer.finish()?;
        Ok(counts)
    })
}

/// Creates a new private (0600) file at `path` through `fill`, so that it appears complete or
/// not at all: written beside `path`, synced, then linked into place (which fails rather than
/// replace a file that exists).
///
/// # Errors
/// [`BackupError::Exists`] when `path` exists; [`BackupError::Io`] when it cannot be written;
/// whatever `fill` returns.
pub(super) fn write_new_file<T>(
    path: &Path,
    fill: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> Result<T, BackupError>,
) -> Result<T, BackupError> {
    if path.exists() {
        return Err(BackupError::Exists(path.to_owned()));
    }
    let partial = partial_path(path);
    let file = private_new_file(&partial)?;
    let result = (|| {
        let mut out = std::io::BufWriter::new(file);
        let value = fill(&mut out)?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::hard_link(&partial, path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                BackupError::Exists(path.to_owned())
            } else {
                io_error("creating", path)(e)
            }
        })?;
        Ok(value)
    })();
    let _ = std::fs::remove_file(&partial);
    result.map_err(|e| match e {
        BackupError::Io {
            action,
            path: p,
            source,
        } if p.as_os_str().is_empty() => BackupError::Io {
            action,
            path: path.to_owned(),
            source,
        },
        e => e,
    })
}

fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    path.with_file_name(name)
}

/// A new file readable only by its owner (0600); fails if it exists.
fn private_new_file(path: &Path) -> Result<std::fs::File, BackupError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    options.open(path).map_err(io_error("creating", path))
}

fn write_records<W: Write>(
    w: &mut SealedWriter<W>,
    db: &Db,
    identity: &[u8],
    settings: &Settings,
) -> Result<BackupCounts, BackupError> {
    let mut counts = BackupCounts::default();
    let mut records = 0u64;
    let mut put = |w: &mut SealedWriter<W>, r: Record| {
        records += 1;
        w.record(&r)
    };
    put(
        w,
        Record::Begin {
            app_version: env!("CARGO_PKG_VERSION").into(),
            created_at: crate::clock::now_ms(),
        },
    )?;
    {
        let mut secret = Record::Identity {
            secret: hex::encode(identity),
        };
        let written = w.record(&secret);
        if let Record::Identity { secret } = &mut secret {
            secret.zeroize();
        }
        written?;
    }
    put(
        w,
        Record::Settings {
            settings: settings.clone(),
        },
    )?;
    with_snapshot(db, |conn| {
        let mut stmt = conn.prepare(
            "SELECT peer_id, first_seen, unread, user_verified, authenticated FROM contacts",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            counts.contacts += 1;
            put(
                w,
                Record::Contact {
                    peer_id: r.get(0)?,
                    first_seen: r.get(1)?,
                    unread: r.get(2)?,
                    user_verified: r.get(3)?,
                    authenticated: r.get(4)?,
                },
            )?;
        }
        let mut stmt = conn.prepare(
            "SELECT peer_id, identity_key, pinned_at, pending_fingerprint FROM pinned_keys",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            counts.pinned_keys += 1;
            put(
                w,
                Record::PinnedKey {
                    peer_id: r.get(0)?,
                    identity_key: hex::encode(r.get::<_, Vec<u8>>(1)?),
                    pinned_at: r.get(2)?,
                    pending_fingerprint: r.get(3)?,
                },
            )?;
        }
        let mut stmt = conn.prepare("SELECT peer_id, sent_at FROM replay_marks")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            put(
                w,
                Record::ReplayMark {
                    peer_id: r.get(0)?,
                    sent_at: r.get(1)?,
                },
            )?;
        }
        let mut stmt = conn.prepare("SELECT peer_id, body, updated_at FROM drafts")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            put(
                w,
                Record::Draft {
                    peer_id: r.get(0)?,
                    body: r.get(1)?,
                    updated_at: r.get(2)?,
                },
            )?;
        }
        let mut stmt = conn.prepare(
            "SELECT seq, message_id, peer_id, outgoing, body, at, status, authenticated,
                    wire_id, sent_at, edited_at, deleted, reply_sender, reply_id, reply_excerpt,
                    rev, receipt_sent
             FROM messages ORDER BY seq",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            counts.messages += 1;
            put(
                w,
                Record::Message {
                    seq: r.get(0)?,
                    message_id: r.get(1)?,
                    peer_id: r.get(2)?,
                    outgoing: r.get(3)?,
                    body: r.get(4)?,
                    at: r.get(5)?,
                    status: r.get(6)?,
                    authenticated: r.get(7)?,
                    wire_id: r.get(8)?,
                    sent_at: r.get(9)?,
                    edited_at: r.get(10)?,
                    deleted: r.get(11)?,
                    reply_sender: r.get(12)?,
                    reply_id: r.get(13)?,
                    reply_excerpt: r.get(14)?,
                    rev: r.get(15)?,
                    receipt_sent: r.get(16)?,
                },
            )?;
        }
        let mut stmt =
            conn.prepare("SELECT seq, body, replaced_at FROM message_versions ORDER BY rowid")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            put(
                w,
                Record::MessageVersion {
                    seq: r.get(0)?,
                    body: r.get(1)?,
                    replaced_at: r.get(2)?,
                },
            )?;
        }
        let mut stmt = conn.prepare("SELECT seq, reactor, emoji, at FROM reactions")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            put(
                w,
                Record::Reaction {
                    seq: r.get(0)?,
                    reactor: r.get(1)?,
                    emoji: r.get(2)?,
                    at: r.get(3)?,
                },
            )?;
        }
        put_attachments(conn, super::files::FileHome::Chat, &mut |r| put(w, r))?;
        let mut stmt = conn.prepare(
            "SELECT message_id, peer_id, body, created_at, wire_id, kind
             FROM outbox WHERE wire_id IS NOT NULL ORDER BY rowid",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            put(
                w,
                Record::Outbox {
                    message_id: r.get(0)?,
                    peer_id: r.get(1)?,
                    body: r.get(2)?,
                    created_at: r.get(3)?,
                    wire_id: r.get(4)?,
                    kind: r.get(5)?,
                },
            )?;
        }
        let mut stmt = conn.prepare("SELECT group_id, name, unread, created_at FROM groups")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            put(
                w,
                Record::Group {
                    group_id: r.get(0)?,
                    name: r.get(1)?,
                    unread: r.get(2)?,
                    created_at: r.get(3)?,
                },
            )?;
        }
        let mut stmt = conn.prepare(
            "SELECT seq, group_id, kind, sender, message_id, outgoing, body, at, status
             FROM group_messages ORDER BY seq",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            put(
                w,
                Record::GroupMessage {
                    seq: r.get(0)?,
                    group_id: r.get(1)?,
                    kind: r.get(2)?,
                    sender: r.get(3)?,
                    message_id: r.get(4)?,
                    outgoing: r.get(5)?,
                    body: r.get(6)?,
                    at: r.get(7)?,
                    status: r.get(8)?,
                },
            )?;
        }
        // After the group lines they belong to.
        put_attachments(conn, super::files::FileHome::Group, &mut |r| put(w, r))?;
        Ok(())
    })?;
    // The identity record was written outside `put`.
    w.record(&Record::End {
        records: records + 1,
    })?;
    Ok(counts)
}

/// Writes the `attachments` rows of `home`, in `seq` order.
fn put_attachments(
    conn: &rusqlite::Connection,
    home: super::files::FileHome,
    put: &mut impl FnMut(Record) -> Result<(), BackupError>,
) -> Result<(), BackupError> {
    let mut stmt = conn.prepare(
        "SELECT seq, name, size, mime, thumb_mime, thumb_width, thumb_height, thumb, offer,
                local_path, transfer_id, state, done, error
         FROM attachments WHERE home = ?1 ORDER BY seq",
    )?;
    let mut rows = stmt.query(params![home.code()])?;
    while let Some(r) = rows.next()? {
        let thumb_mime: Option<String> = r.get(4)?;
        let thumb_width: Option<u32> = r.get(5)?;
        let thumb_height: Option<u32> = r.get(6)?;
        let thumb: Option<Vec<u8>> = r.get(7)?;
        let thumbnail = match (thumb_mime, thumb_width, thumb_height, thumb) {
            (Some(mime), Some(width), Some(height), Some(bytes)) => Some(BackupThumbnail {
                mime,
                width,
                height,
                bytes: hex::encode(bytes),
            }),
            _ => None,
        };
        let state: String = r.get(11)?;
        put(Record::Attachment {
            group: home == super::files::FileHome::Group,
            seq: r.get(0)?,
            name: r.get(1)?,
            size: u64::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
            mime: r.get(3)?,
            thumbnail,
            offer: r.get(8)?,
            local_path: r.get(9)?,
            transfer_id: r.get(10)?,
            state: super::files::TransferState::from_wire(&state),
            done: u64::try_from(r.get::<_, i64>(12)?).unwrap_or(0),
            error: r.get(13)?,
        })?;
    }
    Ok(())
}

/// Runs `f` over one consistent snapshot of the database: a read transaction on a second,
/// read-only connection when the database is a file (the app keeps writing meanwhile), or on
/// the app's own connection, under its lock, for an in-memory one.
fn with_snapshot<T>(
    db: &Db,
    f: impl FnOnce(&rusqlite::Connection) -> Result<T, BackupError>,
) -> Result<T, BackupError> {
    let path = db
        .conn()
        .path()
        .filter(|p| !p.is_empty())
        .map(PathBuf::from);
    match path {
        Some(path) => {
            let conn = rusqlite::Connection::open_with_flags(
                &path,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                    | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            let tx = conn.unchecked_transaction()?;
            let out = f(&tx)?;
            tx.finish()?;
            Ok(out)
        }
        None => {
            let conn = db.conn();
            let tx = conn.unchecked_transaction()?;
            let out = f(&tx)?;
            tx.finish()?;
            Ok(out)
        }
    }
}

/// What a restore brought back.
#[derive(Debug)]
pub struct Restored {
    /// The identity, now also in the data directory.
    pub identity: Identity,
    /// The settings from the backup, for the caller to save and apply.
    pub settings: Settings,
    /// How much came back.
    pub counts: BackupCounts,
}

/// Whether `data_dir`/`db` is a fresh profile: no identity file, no contacts, messages, pins
/// or outbox entries.
///
/// # Errors
/// [`BackupError::Storage`].
pub fn is_fresh(db: &Db, data_dir: &Path) -> Result<bool, BackupError> {
    Ok(!data_dir.join(IDENTITY_FILE).exists() && !has_data(&db.conn())?)
}

/// Whether the database holds any contact, message, pin or outbox entry.
fn has_data(conn: &rusqlite::Connection) -> Result<bool, BackupError> {
    Ok(conn.query_row(
        "SELECT EXISTS(SELECT 1 FROM contacts) OR EXISTS(SELECT 1 FROM messages)
             OR EXISTS(SELECT 1 FROM pinned_keys) OR EXISTS(SELECT 1 FROM outbox)",
        [],
        |r| r.get(0),
    )?)
}

/// Restores the backup at `path` into the fresh profile `data_dir`/`db` (see the module docs):
/// all of it, or — on any error — nothing.
///
/// # Errors
/// [`BackupError::NotFresh`] for a profile in use; [`BackupError::WrongPassphrase`];
/// [`BackupError::NotABackup`], [`BackupError::UnsupportedVersion`],
/// [`BackupError::BadHeader`], [`BackupError::Damaged`], [`BackupError::BadContents`] for a
/// file that is foreign, changed, cut or invalid; [`BackupError::Io`], [`BackupError::Storage`].
pub fn restore(
    db: &Db,
    data_dir: &Path,
    path: &Path,
    passphrase: &Passphrase,
) -> Result<Restored, BackupError> {
    if !is_fresh(db, data_dir)? {
        return Err(BackupError::NotFresh);
    }
    let file = std::fs::File::open(path).map_err(io_error("opening", path))?;
    let mut reader = SealedReader::new(file, passphrase)?;
    let mut conn = db.conn();
    let tx = conn.transaction()?;
    // Again under the lock: another restore may have finished while the key was derived.
    if has_data(&tx)? {
        return Err(BackupError::NotFresh);
    }
    let mut state = RestoreState::default();
    while let Some(line) = reader.next_line()? {
        if state.ended {
            return Err(BackupError::BadContents("records after the end".into()));
        }
        let record: Record = serde_json::from_slice(&line)
            .map_err(|e| BackupError::BadContents(format!("record {}: {e}", state.records + 1)))?;
        state.apply(&tx, record)?;
    }
    let (Some(identity), Some(settings), true) =
        (state.identity.take(), state.settings.take(), state.ended)
    else {
        return Err(BackupError::BadContents(
            "the identity, the settings or the end is missing".into(),
        ));
    };
    // Everything authenticated and parsed: write the identity, then commit.
    let identity_path = data_dir.join(IDENTITY_FILE);
    write_identity(&identity_path, &identity)?;
    if let Err(e) = tx.commit() {
        let _ = std::fs::remove_file(&identity_path);
        return Err(e.into());
    }
    tracing::info!(
        contacts = state.counts.contacts,
        messages = state.counts.messages,
        "restored a backup"
    );
    Ok(Restored {
        identity,
        settings,
        counts: state.counts,
    })
}

/// Writes the identity to a temporary file, then links it to `path`, which must not exist.
fn write_identity(path: &Path, identity: &Identity) -> Result<(), BackupError> {
    let temp = partial_path(path);
    let _ = std::fs::remove_file(&temp);
    let mut file = private_new_file(&temp)?;
    let written = file
        .write_all(&identity.to_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io_error("writing", &temp))
        .and_then(|()| std::fs::hard_link(&temp, path).map_err(io_error("creating", path)));
    let _ = std::fs::remove_file(&temp);
    written
}

#[derive(Default)]
struct RestoreState {
    records: u64,
    begun: bool,
    ended: bool,
    identity: Option<Identity>,
    settings: Option<Settings>,
    counts: BackupCounts,
}

fn peer(id: &str) -> Result<ClientId, BackupError> {
    ClientId::try_from(id).map_err(|e| BackupError::BadContents(format!("peer id: {e}")))
}

fn message_id(id: &str) -> Result<MessageId, BackupError> {
    MessageId::try_from(id).map_err(|e| BackupError::BadContents(format!("message id: {e}")))
}

impl RestoreState {
    fn apply(&mut self, tx: &rusqlite::Transaction<'_>, record: Record) -> Result<(), BackupError> {
        let bad = |what: &str| Err(BackupError::BadContents(what.into()));
        match (&record, self.begun) {
            (Record::Begin { .. }, false) => {}
            (Record::Begin { .. }, true) => return bad("a second beginning"),
            (_, false) => return bad("it does not begin with a beginning"),
            _ => {}
        }
        match record {
            Record::Begin { .. } => self.begun = true,
            Record::Identity { mut secret } => {
                let decoded = hex::decode(&secret);
                secret.zeroize();
                let bytes = Zeroizing::new(
                    decoded
                        .map_err(|_| BackupError::BadContents("the identity is not hex".into()))?,
                );
                if self.identity.is_some() {
                    return bad("two identities");
                }
                let identity = Identity::from_bytes(&bytes)
                    .map_err(|e| BackupError::BadContents(format!("the identity: {e}")))?;
                self.identity = Some(identity);
            }
            Record::Settings { settings } => {
                if self.settings.replace(settings).is_some() {
                    return bad("two sets of settings");
                }
            }
            Record::Contact {
                peer_id,
                first_seen,
                unread,
                user_verified,
                authenticated,
            } => {
                self.counts.contacts += 1;
                tx.execute(
                    "INSERT INTO contacts(peer_id, first_seen, unread, user_verified, authenticated)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![peer(&peer_id)?.as_str(), first_seen, unread.max(0), user_verified, authenticated],
                )?;
            }
            Record::PinnedKey {
                peer_id,
                identity_key,
                pinned_at,
                pending_fingerprint,
            } => {
                self.counts.pinned_keys += 1;
                let key = hex::decode(&identity_key)
                    .map_err(|_| BackupError::BadContents("a pinned key is not hex".into()))?;
                IdentityPublicKey::from_bytes(&key)
                    .map_err(|e| BackupError::BadContents(format!("a pinned key: {e}")))?;
                if let Some(f) = &pending_fingerprint {
                    if f.len() > 256 {
                        return bad("a pending fingerprint is too long");
                    }
                }
                tx.execute(
                    "INSERT INTO pinned_keys(peer_id, identity_key, pinned_at, pending_fingerprint)
                     VALUES (?1, ?2, ?3, ?4)",
                    params![
                        peer(&peer_id)?.as_str(),
                        key,
                        pinned_at,
                        pending_fingerprint
                    ],
                )?;
            }
            Record::ReplayMark { peer_id, sent_at } => {
                tx.execute(
                    "INSERT INTO replay_marks(peer_id, sent_at) VALUES (?1, ?2)",
                    params![peer(&peer_id)?.as_str(), sent_at],
                )?;
            }
            Record::Draft {
                peer_id,
                body,
                updated_at,
            } => {
                tx.execute(
                    "INSERT INTO drafts(peer_id, body, updated_at) VALUES (?1, ?2, ?3)",
                    params![peer(&peer_id)?.as_str(), body, updated_at],
                )?;
            }
            Record::Message {
                seq,
                message_id: id,
                peer_id,
                outgoing,
                body,
                at,
                status,
                authenticated,
                wire_id,
                sent_at,
                edited_at,
                deleted,
                reply_sender,
                reply_id,
                reply_excerpt,
                rev,
                receipt_sent,
            } => {
                self.counts.messages += 1;
                message_id(&id)?;
                if !(0..MessageStatus::ALL.len() as i64).contains(&status) {
                    return bad("a message with an unknown status");
                }
                for id in wire_id.iter().chain(&reply_id) {
                    message_id(id)?;
                }
                if let Some(sender) = &reply_sender {
                    peer(sender)?;
                }
                if reply_excerpt
                    .as_ref()
                    .is_some_and(|e| e.len() > lattice_peer::content::MAX_EXCERPT_BYTES)
                {
                    return bad("a reply quote is too long");
                }
                tx.prepare_cached(
                    "INSERT INTO messages(seq, message_id, peer_id, outgoing, body, at, status,
                                          authenticated, wire_id, sent_at, edited_at, deleted,
                                          reply_sender, reply_id, reply_excerpt, rev, receipt_sent)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15,
                             ?16, ?17)",
                )?
                .execute(params![
                    seq,
                    id,
                    peer(&peer_id)?.as_str(),
                    outgoing,
                    body,
                    at,
                    status,
                    authenticated,
                    wire_id,
                    sent_at,
                    edited_at,
                    deleted,
                    reply_sender,
                    reply_id,
                    reply_excerpt,
                    rev.max(0),
                    receipt_sent
                ])?;
            }
            Record::MessageVersion {
                seq,
                body,
                replaced_at,
            } => {
                let n = tx
                    .prepare_cached(
                        "INSERT INTO message_versions(seq, body, replaced_at)
                         SELECT ?1, ?2, ?3 WHERE EXISTS(SELECT 1 FROM messages WHERE seq = ?1)",
                    )?
                    .execute(params![seq, body, replaced_at])?;
                if n != 1 {
                    return bad("an earlier version of a message that is not there");
                }
            }
            Record::Reaction {
                seq,
                reactor,
                emoji,
                at,
            } => {
                peer(&reactor)?;
                if emoji.is_empty() || emoji.len() > lattice_peer::content::MAX_REACTION_BYTES {
                    return bad("a reaction of the wrong size");
                }
                let n = tx
                    .prepare_cached(
                        "INSERT INTO reactions(seq, reactor, emoji, at)
                         SELECT ?1, ?2, ?3, ?4 WHERE EXISTS(SELECT 1 FROM messages WHERE seq = ?1)",
                    )?
                    .execute(params![seq, reactor, emoji, at])?;
                if n != 1 {
                    return bad("a reaction to a message that is not there");
                }
            }
            Record::Attachment {
                group,
                seq,
                name,
                size,
                mime,
                thumbnail,
                offer,
                local_path,
                transfer_id,
                state,
                done,
                error,
            } => {
                let (home, line) = if group {
                    (
                        super::files::FileHome::Group,
                        "SELECT EXISTS(SELECT 1 FROM group_messages WHERE seq = ?1)",
                    )
                } else {
                    (
                        super::files::FileHome::Chat,
                        "SELECT EXISTS(SELECT 1 FROM messages WHERE seq = ?1)",
                    )
                };
                let exists = tx
                    .prepare_cached(line)?
                    .query_row(params![seq], |r| r.get::<_, bool>(0))?;
                if !exists {
                    return bad("a file of a message that is not there");
                }
                let thumbnail = match thumbnail {
                    Some(t) => Some(super::files::Thumbnail {
                        mime: t.mime,
                        width: t.width,
                        height: t.height,
                        bytes: hex::decode(&t.bytes).map_err(|_| {
                            BackupError::BadContents("a file preview is not hex".into())
                        })?,
                    }),
                    None => None,
                };
                // The library's state of an unfinished transfer is not in the backup: it
                // cannot go on, and says so.
                let (state, transfer_id, error) = if state.is_final() {
                    (state, transfer_id, error)
                } else if state == super::files::TransferState::Offered {
                    (state, None, None)
                } else {
                    (
                        super::files::TransferState::Failed,
                        None,
                        Some(super::files::INTERRUPTED_BY_RESTORE.to_owned()),
                    )
                };
                super::files::insert(
                    tx,
                    home,
                    seq,
                    &super::files::NewAttachment {
                        name,
                        size,
                        mime,
                        thumbnail,
                        offer,
                        local_path,
                        transfer_id,
                        state,
                    },
                )
                .map_err(|e| BackupError::BadContents(format!("a file: {e}")))?;
                tx.prepare_cached(
                    "UPDATE attachments SET done = ?2, error = ?3 WHERE home = ?4 AND seq = ?1",
                )?
                .execute(params![
                    seq,
                    i64::try_from(done.min(size)).unwrap_or(i64::MAX),
                    error
                        .as_deref()
                        .map(|e| super::files::truncate_bytes(e, super::files::MAX_ERROR_BYTES)),
                    home.code()
                ])?;
            }
            Record::Outbox {
                message_id: id,
                peer_id,
                body,
                created_at,
                wire_id,
                kind,
            } => {
                message_id(&id)?;
                message_id(&wire_id)?;
                if kind
                    .as_ref()
                    .is_some_and(|k| k.len() > lattice_peer::content::MAX_KIND_BYTES)
                {
                    return bad("an outbox entry of an unknown kind");
                }
                tx.execute(
                    "INSERT INTO outbox(message_id, peer_id, body, created_at, wire_id, kind)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![
                        id,
                        peer(&peer_id)?.as_str(),
                        body,
                        created_at,
                        wire_id,
                        kind
                    ],
                )?;
            }
            Record::Group {
                group_id,
                name,
                unread,
                created_at,
            } => {
                if !super::groups::is_group_key(&group_id) {
                    return bad("a group id that is not one");
                }
                if name.len() > lattice_mls::limits::MAX_GROUP_NAME_LEN {
                    return bad("a group name is too long");
                }
                // Left: the group's keys are not in the backup, so this profile is in no group.
                tx.execute(
                    "INSERT INTO groups(group_id, name, unread, created_at, left)
                     VALUES (?1, ?2, ?3, ?4, 1)",
                    params![group_id, name, unread.max(0), created_at],
                )?;
            }
            Record::GroupMessage {
                seq,
                group_id,
                kind,
                sender,
                message_id: id,
                outgoing,
                body,
                at,
                status,
            } => {
                if !(0..MessageStatus::ALL.len() as i64).contains(&status)
                    || !(0..=1).contains(&kind)
                {
                    return bad("a group message of an unknown kind or status");
                }
                if !sender.is_empty() {
                    peer(&sender)?;
                }
                if id.is_empty() || id.len() > 256 {
                    return bad("a group message id that is not one");
                }
                let known = tx
                    .prepare_cached("SELECT EXISTS(SELECT 1 FROM groups WHERE group_id = ?1)")?
                    .query_row(params![group_id], |r| r.get::<_, bool>(0))?;
                if !known {
                    return bad("a group message of a group that is not there");
                }
                // Ours still waiting can never go now (not a member any more): failed.
                let status = if outgoing && status == MessageStatus::Pending.rank() {
                    MessageStatus::Failed.rank()
                } else {
                    status
                };
                tx.prepare_cached(
                    "INSERT INTO group_messages(seq, group_id, kind, sender, message_id, outgoing,
                                                body, at, status)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                )?
                .execute(params![
                    seq, group_id, kind, sender, id, outgoing, body, at, status
                ])?;
            }
            Record::End { records } => {
                if records != self.records {
                    return bad("the record count does not match");
                }
                self.ended = true;
            }
        }
        self.records += 1;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const FAST: KdfParams = KdfParams {
        memory_kib: 64,
        iterations: 1,
        lanes: 1,
    };

    /// A draft record whose JSON line (newline included) is exactly `len` bytes.
    fn record_of_len(len: usize) -> Record {
        let empty = |body: String| Record::Draft {
            peer_id: "bob".into(),
            body,
            updated_at: 0,
        };
        let overhead = serde_json::to_vec(&empty(String::new())).unwrap().len() + 1;
        empty("x".repeat(len - overhead))
    }

    /// Plaintexts that end just before, on and just after chunk boundaries (where the last
    /// chunk is full, or one byte) round-trip, and every line comes back in order.
    #[test]
    fn streams_of_every_length_around_a_chunk_boundary_round_trip() {
        let chunk = CHUNK_BYTES as usize;
        for total in [
            100,
            chunk - 1,
            chunk,
            chunk + 1,
            2 * chunk,
            2 * chunk + 1,
            3 * chunk - 7,
        ] {
            let pass = Passphrase::for_backup("a passphrase for tests".into()).unwrap();
            let mut w = SealedWriter::new(Vec::new(), &pass, FAST, &mut rand_core::OsRng).unwrap();
            // Lines of at most 1,000 bytes adding up to `total`.
            let mut lens = Vec::new();
            let mut left = total;
            while left > 0 {
                let len = if left > 1_100 { 1_000 } else { left };
                lens.push(len);
                left -= len;
            }
            for &len in &lens {
                w.record(&record_of_len(len)).unwrap();
            }
            let file = w.finish().unwrap();
            let chunks = (file.len() - HEADER_LEN).div_ceil(chunk + TAG_LEN);
            assert_eq!(chunks, total.div_ceil(chunk), "total {total}");
            let mut r = SealedReader::new(&file[..], &pass).unwrap();
            let mut got = Vec::new();
            while let Some(line) = r.next_line().unwrap() {
                got.push(line.len() + 1);
            }
            assert_eq!(got, lens, "total {total}");
        }
    }
}
