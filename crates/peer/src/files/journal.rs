//! A transfer's journal: what a transfer needs to resume after a restart, in
//! [`crate::PeerConfig::transfers_dir`].
//!
//! Two owner-only files per unfinished transfer, named by its id:
//! - `ID.json`, the header ([`Header`]): direction, peer, message id, path, the file's name, size
//!   and type, the key, the file id, the blob and its capabilities, whether it is paused. Small,
//!   rewritten whole (a temporary file synced and renamed over it) when it changes, which is
//!   rarely: when the blob is created, when the transfer is paused or resumed.
//! - `ID.acks`, one line `INDEX HASH` per chunk acknowledged (an upload: the server stored it; a
//!   download: it opened and was written), appended as each chunk is done. A line cut short by a
//!   crash is ignored (that chunk is simply done again).
//!
//! Both are deleted when the transfer completes or is cancelled.
//!
//! And `digests/`: the digest of a file whose `file-digest` message came before its download
//! started (one small file per file message, at most [`MAX_STORED_DIGESTS`] and
//! [`MAX_STORED_DIGESTS_PER_PEER`] from one sender, the oldest dropped),
//! so that a download started later completes without it being sent again.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use lattice_crypto::file_chunk::DIGEST_LEN;
use lattice_protocol::{ClientId, MessageId};
use serde::{Deserialize, Serialize};

use crate::content::Thumbnail;
use crate::events::{TransferDirection, TransferId};
use crate::PeerError;

/// The journal format version.
const JOURNAL_VERSION: u32 = 1;
/// Largest header read back, in bytes (a thumbnail in base64 and a long path fit easily).
const MAX_HEADER_BYTES: u64 = 256 * 1024;
/// Largest acknowledgement log read back, in bytes (one line per chunk, about 80 bytes each).
const MAX_ACKS_BYTES: u64 = 16 * 1024 * 1024;
/// Digests kept for downloads not started yet; past it the oldest goes (a download of that file
/// then waits for a digest that does not come again, and fails with a readable reason).
pub(crate) const MAX_STORED_DIGESTS: usize = 1024;
/// Digests kept from one sender: a peer sending `file-digest` messages for files nobody
/// downloads pushes out only its own, never another sender's.
pub(crate) const MAX_STORED_DIGESTS_PER_PEER: usize = 64;

/// The blob a transfer uses.
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct BlobRef {
    pub(crate) blob_id: String,
    /// Only the sender holds it.
    pub(crate) upload_capability: Option<String>,
    pub(crate) download_capability: String,
}

/// What a transfer needs to resume.
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Header {
    pub(crate) v: u32,
    pub(crate) id: String,
    pub(crate) upload: bool,
    pub(crate) peer: ClientId,
    pub(crate) message_id: MessageId,
    /// The file sent (upload) or the destination (download; the partial file is `PATH.part`).
    pub(crate) path: PathBuf,
    pub(crate) paused: bool,
    pub(crate) name: String,
    pub(crate) size: u64,
    pub(crate) mime: String,
    #[serde(default)]
    pub(crate) thumbnail: Option<Thumbnail>,
    /// Base64 (a secret: the file is owner-only).
    pub(crate) key: String,
    /// Hex.
    pub(crate) file_id: String,
    pub(crate) chunk_size: u64,
    pub(crate) chunk_count: u64,
    /// `None` until the sender created it.
    pub(crate) blob: Option<BlobRef>,
    /// Hex; the digest a download must match (from the file message).
    #[serde(default)]
    pub(crate) digest: Option<String>,
    /// The source's modification time (unix ms) when an upload started: a file changed since is
    /// not sent half old, half new.
    #[serde(default)]
    pub(crate) source_modified_ms: Option<u64>,
    /// An upload: the id of the `file-digest` message that follows the offer. `None` in a
    /// journal of the previous version, which sends one complete offer at the end.
    #[serde(default)]
    pub(crate) digest_message_id: Option<MessageId>,
    /// An upload: the offer (without the digest) was accepted by the server.
    #[serde(default)]
    pub(crate) offer_sent: bool,
    /// An upload into a group (its id in hex): the messages go to the group, and the blob is not
    /// deleted on receipt (every member downloads it; expiry is the bound).
    #[serde(default)]
    pub(crate) group: Option<String>,
}

impl std::fmt::Debug for Header {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key, the capabilities and the name stay out of logs.
        f.debug_struct("Header")
            .field("id", &self.id)
            .field("upload", &self.upload)
            .field("peer", &self.peer)
            .field("message_id", &self.message_id)
            .field("paused", &self.paused)
            .field("size", &self.size)
            .field("chunk_count", &self.chunk_count)
            .finish_non_exhaustive()
    }
}

impl Header {
    pub(crate) fn transfer_id(&self) -> TransferId {
        TransferId(self.id.clone())
    }

    pub(crate) fn direction(&self) -> TransferDirection {
        if self.upload {
            TransferDirection::Upload
        } else {
            TransferDirection::Download
        }
    }

    /// A new header (version set).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        id: &TransferId,
        upload: bool,
        peer: ClientId,
        message_id: MessageId,
        path: PathBuf,
        meta: (String, u64, String, Option<Thumbnail>),
        key: String,
        file_id: String,
        chunking: (u64, u64),
    ) -> Self {
        let (name, size, mime, thumbnail) = meta;
        Self {
            v: JOURNAL_VERSION,
            id: id.0.clone(),
            upload,
            peer,
            message_id,
            path,
            paused: false,
            name,
            size,
            mime,
            thumbnail,
            key,
            file_id,
            chunk_size: chunking.0,
            chunk_count: chunking.1,
            blob: None,
            digest: None,
            source_modified_ms: None,
            digest_message_id: None,
            offer_sent: false,
            group: None,
        }
    }
}

/// The journal directory.
#[derive(Debug, Clone)]
pub(crate) struct Journal {
    dir: PathBuf,
}

fn io(path: &Path, what: &str, e: &std::io::Error) -> PeerError {
    PeerError::Io(format!("{what} {}: {e}", path.display()))
}

fn private_options() -> fs::OpenOptions {
    let mut o = fs::OpenOptions::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        o.mode(0o600);
    }
    o
}

fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>, PeerError> {
    use std::io::Read as _;
    let file = fs::File::open(path).map_err(|e| io(path, "cannot open", &e))?;
    let mut out = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut out)
        .map_err(|e| io(path, "cannot read", &e))?;
    if out.len() as u64 > max {
        return Err(PeerError::Io(format!("{} is too large", path.display())));
    }
    Ok(out)
}

impl Journal {
    /// Opens (creating, owner-only) the directory.
    pub(crate) fn open(dir: &Path) -> Result<Self, PeerError> {
        crate::identity_file::create_private_dir(dir).map_err(|e| io(dir, "cannot create", &e))?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    fn header_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    fn acks_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.acks"))
    }

    /// Writes the header: a temporary file, synced, renamed into place.
    pub(crate) fn write_header(&self, h: &Header) -> Result<(), PeerError> {
        let path = self.header_path(&h.id);
        let tmp = self.dir.join(format!("{}.json.tmp", h.id));
        let bytes = serde_json::to_vec(h).map_err(|e| PeerError::Protocol(e.to_string()))?;
        let mut f = private_options()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| io(&tmp, "cannot create", &e))?;
        f.write_all(&bytes)
            .and_then(|()| f.sync_all())
            .map_err(|e| io(&tmp, "cannot write", &e))?;
        fs::rename(&tmp, &path).map_err(|e| io(&path, "cannot replace", &e))
    }

    /// Appends that chunk `index` is done, with the SHA-256 of its sealed bytes.
    pub(crate) fn ack(
        &self,
        id: &str,
        index: u64,
        hash: &[u8; DIGEST_LEN],
    ) -> Result<(), PeerError> {
        let path = self.acks_path(id);
        let mut f = private_options()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| io(&path, "cannot open", &e))?;
        f.write_all(format!("{index} {}\n", hex::encode(hash)).as_bytes())
            .map_err(|e| io(&path, "cannot append to", &e))
    }

    /// Forgets every acknowledgement (a download whose chunks turned out wrong starts over).
    pub(crate) fn clear_acks(&self, id: &str) -> Result<(), PeerError> {
        remove_if_there(&self.acks_path(id))
    }

    /// The chunks acknowledged, with their hashes. Lines that do not parse (a crash mid-append)
    /// or name a chunk out of range are skipped.
    pub(crate) fn acks(
        &self,
        id: &str,
        chunk_count: u64,
    ) -> Result<BTreeMap<u64, [u8; DIGEST_LEN]>, PeerError> {
        let path = self.acks_path(id);
        let bytes = match read_bounded(&path, MAX_ACKS_BYTES) {
            Ok(b) => b,
            Err(_) if !path.exists() => return Ok(BTreeMap::new()),
            Err(e) => return Err(e),
        };
        let mut out = BTreeMap::new();
        for line in String::from_utf8_lossy(&bytes).lines() {
            let Some((index, hash)) = line.split_once(' ') else {
                continue;
            };
            let (Ok(index), Ok(hash)) = (index.parse::<u64>(), hex::decode(hash)) else {
                continue;
            };
            if let (true, Ok(hash)) = (index < chunk_count, <[u8; DIGEST_LEN]>::try_from(hash)) {
                out.insert(index, hash);
            }
        }
        Ok(out)
    }

    /// `digests/SENDER-MESSAGE.digest`, both parts hashes (ids never reach a path as they are).
    fn digest_path(&self, from: &ClientId, message: &MessageId) -> PathBuf {
        let mut key = Vec::new();
        key.extend_from_slice(from.as_str().as_bytes());
        key.push(0);
        key.extend_from_slice(message.as_str().as_bytes());
        let name = hex::encode(lattice_crypto::file_chunk::chunk_hash(&key));
        self.dir
            .join("digests")
            .join(format!("{}-{}.digest", digest_sender(from), &name[..32]))
    }

    /// Keeps the digest of `from`'s file message `message` for a download not started yet
    /// (bounded: [`MAX_STORED_DIGESTS`], the oldest dropped).
    pub(crate) fn store_digest(
        &self,
        from: &ClientId,
        message: &MessageId,
        digest: &str,
    ) -> Result<(), PeerError> {
        let dir = self.dir.join("digests");
        crate::identity_file::create_private_dir(&dir)
            .map_err(|e| io(&dir, "cannot create", &e))?;
        let mut kept: Vec<(std::time::SystemTime, PathBuf)> = fs::read_dir(&dir)
            .map_err(|e| io(&dir, "cannot list", &e))?
            .flatten()
            .map(|e| {
                let at = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or(std::time::UNIX_EPOCH);
                (at, e.path())
            })
            .collect();
        kept.sort();
        let prefix = format!("{}-", digest_sender(from));
        let own: Vec<&PathBuf> = kept
            .iter()
            .map(|(_, p)| p)
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&prefix))
            })
            .collect();
        // This sender's oldest first; anyone's only when the directory is full anyway.
        if own.len() >= MAX_STORED_DIGESTS_PER_PEER {
            for old in own.iter().take(own.len() + 1 - MAX_STORED_DIGESTS_PER_PEER) {
                remove_if_there(old)?;
            }
        } else if kept.len() >= MAX_STORED_DIGESTS {
            for (_, old) in kept.iter().take(kept.len() + 1 - MAX_STORED_DIGESTS) {
                remove_if_there(old)?;
            }
        }
        let path = self.digest_path(from, message);
        let mut f = private_options()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| io(&path, "cannot create", &e))?;
        f.write_all(digest.as_bytes())
            .map_err(|e| io(&path, "cannot write", &e))
    }

    /// The digest kept for `from`'s file message `message`, if any (a file cut short by a crash
    /// reads as none).
    pub(crate) fn stored_digest(&self, from: &ClientId, message: &MessageId) -> Option<String> {
        let bytes = read_bounded(&self.digest_path(from, message), 2 * DIGEST_LEN as u64).ok()?;
        let s = String::from_utf8(bytes).ok()?;
        (s.len() == 2 * DIGEST_LEN && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .then_some(s)
    }

    /// Forgets the digest kept for `from`'s file message `message`.
    pub(crate) fn forget_digest(&self, from: &ClientId, message: &MessageId) {
        let _ = remove_if_there(&self.digest_path(from, message));
    }

    /// Deletes a transfer's journal.
    pub(crate) fn remove(&self, id: &str) -> Result<(), PeerError> {
        remove_if_there(&self.header_path(id))?;
        remove_if_there(&self.acks_path(id))
    }

    /// Every journal in the directory. One that cannot be read is logged and skipped (left in
    /// place for a person to look at).
    pub(crate) fn load_all(&self) -> Result<Vec<Header>, PeerError> {
        let entries = fs::read_dir(&self.dir).map_err(|e| io(&self.dir, "cannot list", &e))?;
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let header = read_bounded(&path, MAX_HEADER_BYTES).and_then(|b| {
                serde_json::from_slice::<Header>(&b).map_err(|e| PeerError::Io(e.to_string()))
            });
            match header {
                Ok(h) if h.v == JOURNAL_VERSION && TransferId::parse(&h.id).is_ok() => out.push(h),
                Ok(_) => {
                    tracing::warn!(path = %path.display(), "skipping a transfer journal of another version")
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "skipping an unreadable transfer journal")
                }
            }
        }
        Ok(out)
    }
}

/// The sender part of a stored digest's name.
fn digest_sender(from: &ClientId) -> String {
    hex::encode(&lattice_crypto::file_chunk::chunk_hash(from.as_str().as_bytes())[..8])
}

pub(crate) fn remove_if_there(path: &Path) -> Result<(), PeerError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(path, "cannot delete", &e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> ClientId {
        ClientId::new(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn mid(n: usize) -> MessageId {
        MessageId::new(format!("m{n}")).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Digests for downloads not started yet are kept and read back; a sender storing more than
    /// its share pushes out only its own, never another sender's.
    #[test]
    fn stored_digests_are_bounded_per_sender() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let j = Journal::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let good = "ab".repeat(DIGEST_LEN);
        j.store_digest(&id("alice"), &mid(0), &good)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(j.stored_digest(&id("alice"), &mid(0)), Some(good.clone()));
        assert_eq!(j.stored_digest(&id("carol"), &mid(0)), None, "per sender");
        for n in 0..MAX_STORED_DIGESTS_PER_PEER + 10 {
            j.store_digest(&id("carol"), &mid(n), &"cd".repeat(DIGEST_LEN))
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let carols = (0..MAX_STORED_DIGESTS_PER_PEER + 10)
            .filter(|&n| j.stored_digest(&id("carol"), &mid(n)).is_some())
            .count();
        assert_eq!(carols, MAX_STORED_DIGESTS_PER_PEER);
        assert_eq!(j.stored_digest(&id("alice"), &mid(0)), Some(good));
        j.forget_digest(&id("alice"), &mid(0));
        assert_eq!(j.stored_digest(&id("alice"), &mid(0)), None);
        // A file cut short (a crash mid-write) reads as none.
        std::fs::write(j.digest_path(&id("bob"), &mid(1)), "ab").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(j.stored_digest(&id("bob"), &mid(1)), None);
    }
}
