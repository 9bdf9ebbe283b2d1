//! The content layer: what a message says, independent of the envelope that carries it.
//!
//! [`Content`] is one of: text, a reply quoting an earlier message, an edit or a delete (for
//! everyone) of one of the sender's own messages, a reaction, a read receipt, a typing notice, or a
//! kind this version does not know ([`Content::Unsupported`], surfaced, never dropped silently).
//! On the wire a content is a `kind` and a `body` ([`Content::encode`], [`Content::decode`]): the
//! text itself for `text`, a small JSON object for the other kinds. The pair travels in the
//! version 2 inner plaintext of `lattice-v1`, whose signature covers the version, the kind and the
//! body (`docs/protocol.md`, *Content*); the encryption below it does not care which.
//!
//! Every field is bounded (the `MAX_*` constants here), and decoding checks the same bounds as
//! encoding, so a malformed or oversized content is a typed [`ContentError`], never a panic.
//!
//! Whether an edit, a delete, a reaction or a receipt refers to a message that exists is checked
//! on receipt against the history ([`crate::history`]).

use std::fmt;

use lattice_protocol::{ClientId, MessageId};
use serde::{Deserialize, Serialize};

/// The inner plaintext version whose signature covers the whole content (version and kind
/// included). Version 1 (text only, `kind`/`v` unsigned) is still read.
pub const CONTENT_VERSION: u32 = 2;
/// Longest text (of a text, a reply or an edit), in UTF-8 bytes.
pub const MAX_TEXT_BYTES: usize = 64 * 1024;
/// Longest quoted excerpt of a reply, in UTF-8 bytes ([`excerpt`] cuts to it).
pub const MAX_EXCERPT_BYTES: usize = 256;
/// Longest reaction, in UTF-8 bytes: one emoji (with its modifiers and joiners) or a short word.
pub const MAX_REACTION_BYTES: usize = 32;
/// Most message ids in one read receipt.
pub const MAX_RECEIPT_IDS: usize = 256;
/// Longest kind name, in bytes (`a-z`, `0-9`, `-`).
pub const MAX_KIND_BYTES: usize = 32;

/// Kind names on the wire.
pub(crate) const KIND_TEXT: &str = "text";
pub(crate) const KIND_REPLY: &str = "reply";
pub(crate) const KIND_EDIT: &str = "edit";
pub(crate) const KIND_DELETE: &str = "delete";
pub(crate) const KIND_REACTION: &str = "reaction";
pub(crate) const KIND_RECEIPT: &str = "receipt";
pub(crate) const KIND_TYPING: &str = "typing";
pub(crate) const KIND_FILE: &str = "file";
pub(crate) const KIND_FILE_DIGEST: &str = "file-digest";

/// Longest file name in a [`FileOffer`], in UTF-8 bytes.
pub const MAX_FILE_NAME_BYTES: usize = 255;
/// Longest MIME type in a [`FileOffer`] or a [`Thumbnail`], in bytes.
pub const MAX_MIME_BYTES: usize = 127;
/// Largest thumbnail, in bytes (the image itself; base64 on the wire). Keeps a file message well
/// under the frame limit.
pub const MAX_THUMBNAIL_BYTES: usize = 64 * 1024;
/// Largest thumbnail side, in pixels.
pub const MAX_THUMBNAIL_SIDE: u32 = 1024;
/// Largest file a [`FileOffer`] may announce, in bytes (servers default to 2 GiB; this only
/// bounds what a receiver is asked to accept).
pub const MAX_FILE_BYTES: u64 = 1 << 40;

/// Why a content cannot be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ContentError {
    /// A field is longer than its bound.
    #[error("{field} too long: {got} bytes, at most {max}")]
    TooLong {
        /// The field.
        field: &'static str,
        /// Its bound.
        max: usize,
        /// Its length.
        got: usize,
    },
    /// A field that must not be empty is.
    #[error("{0} is empty")]
    Empty(&'static str),
    /// A list has more entries than its bound.
    #[error("{field} has {got} entries, at most {max}")]
    TooMany {
        /// The field.
        field: &'static str,
        /// Its bound.
        max: usize,
        /// Its length.
        got: usize,
    },
    /// A reaction with control characters or white space.
    #[error("a reaction must be printable, without spaces or control characters")]
    InvalidReaction,
    /// A kind name that is not 1 to [`MAX_KIND_BYTES`] of `a-z`, `0-9`, `-`.
    #[error("invalid kind name")]
    InvalidKind,
    /// The body does not have the shape its kind requires.
    #[error("malformed {kind} body")]
    Malformed {
        /// The kind.
        kind: &'static str,
    },
    /// [`Content::Unsupported`] only describes something received; it cannot be sent.
    #[error("an unsupported content cannot be sent")]
    Unsendable,
}

/// A message of a conversation, named by who sent it and its id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageRef {
    /// Who sent the message.
    pub sender: ClientId,
    /// Its id.
    pub message_id: MessageId,
}

/// Adding or removing a reaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReactionAction {
    /// The sender reacts.
    Add,
    /// The sender takes its reaction back.
    Remove,
}

/// What a message says. Texts (a reply's excerpt, an edit's text, a reaction) are left out of
/// `Debug`, so that logging a content never logs what someone wrote.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Content {
    /// A text message.
    Text(String),
    /// A text answering an earlier message, quoted by a short excerpt.
    Reply {
        /// The message answered.
        to: MessageRef,
        /// A short excerpt of it (at most [`MAX_EXCERPT_BYTES`]), shown as the quote.
        excerpt: String,
        /// The answer.
        text: String,
    },
    /// Replaces the text of one of the sender's own earlier messages.
    Edit {
        /// The sender's message being edited.
        target: MessageId,
        /// Its new text.
        text: String,
    },
    /// Deletes one of the sender's own earlier messages for everyone.
    Delete {
        /// The sender's message being deleted.
        target: MessageId,
    },
    /// A reaction to a message of the conversation (the sender's or the recipient's).
    Reaction {
        /// The message reacted to.
        target: MessageRef,
        /// The emoji (or short word), at most [`MAX_REACTION_BYTES`].
        emoji: String,
        /// Added or removed.
        action: ReactionAction,
    },
    /// The recipient's messages the sender has read.
    Receipt {
        /// Their ids (1 to [`MAX_RECEIPT_IDS`]).
        read: Vec<MessageId>,
    },
    /// The sender started or stopped typing.
    Typing {
        /// `true`: started; `false`: stopped.
        started: bool,
    },
    /// A file: what it is, and how to fetch and decrypt it from the server's blob store. Sent by
    /// [`crate::MessagingPeer::send_file`] as the upload starts (without its digest: the
    /// recipient may download while the sender uploads); fetched with
    /// [`crate::MessagingPeer::download_file`].
    File(FileOffer),
    /// The digest of the whole ciphertext of the sender's file message `target`, sent once its
    /// upload is complete. The library applies it to the download of that file (which completes
    /// only with it); apps see it as [`crate::Change::FileDigest`] and need not do anything.
    FileDigest {
        /// The sender's `file` message.
        target: MessageId,
        /// 64 lowercase hex digits ([`FileOffer::digest`]).
        digest: String,
    },
    /// A kind this version does not know, received from a newer client: shown as "unsupported
    /// message", never dropped silently. Cannot be sent.
    Unsupported {
        /// The kind's name, as sent (a valid kind name).
        kind: String,
    },
}

impl fmt::Debug for Content {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = |t: &String| format!("<{} bytes>", t.len());
        match self {
            Self::Text(t) => f.debug_tuple("Text").field(&text(t)).finish(),
            Self::Reply {
                to,
                excerpt,
                text: t,
            } => f
                .debug_struct("Reply")
                .field("to", to)
                .field("excerpt", &text(excerpt))
                .field("text", &text(t))
                .finish(),
            Self::Edit { target, text: t } => f
                .debug_struct("Edit")
                .field("target", target)
                .field("text", &text(t))
                .finish(),
            Self::Delete { target } => f.debug_struct("Delete").field("target", target).finish(),
            Self::Reaction {
                target,
                emoji,
                action,
            } => f
                .debug_struct("Reaction")
                .field("target", target)
                .field("emoji", &text(emoji))
                .field("action", action)
                .finish(),
            Self::Receipt { read } => f.debug_struct("Receipt").field("read", read).finish(),
            Self::Typing { started } => f.debug_struct("Typing").field("started", started).finish(),
            Self::File(offer) => f.debug_tuple("File").field(offer).finish(),
            Self::FileDigest { target, .. } => f
                .debug_struct("FileDigest")
                .field("target", target)
                .finish_non_exhaustive(),
            Self::Unsupported { kind } => {
                f.debug_struct("Unsupported").field("kind", kind).finish()
            }
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReplyBody {
    to: MessageRef,
    excerpt: String,
    text: String,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EditBody {
    target: MessageId,
    text: String,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeleteBody {
    target: MessageId,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReactionBody {
    target: MessageRef,
    emoji: String,
    remove: bool,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReceiptBody {
    read: Vec<MessageId>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TypingBody {
    started: bool,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FileDigestBody {
    target: MessageId,
    digest: String,
}

/// A small preview image made by the sender (e.g. a JPEG of at most 320 px), shown before the
/// file is downloaded.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Thumbnail {
    /// Its MIME type (`image/jpeg`, `image/png`, `image/webp`).
    pub mime: String,
    /// Width in pixels (1 to [`MAX_THUMBNAIL_SIDE`]).
    pub width: u32,
    /// Height in pixels (1 to [`MAX_THUMBNAIL_SIDE`]).
    pub height: u32,
    /// The image (at most [`MAX_THUMBNAIL_BYTES`]); base64 on the wire.
    #[serde(with = "b64")]
    pub bytes: Vec<u8>,
}

impl fmt::Debug for Thumbnail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Thumbnail")
            .field("mime", &self.mime)
            .field("width", &self.width)
            .field("height", &self.height)
            .field("bytes", &format_args!("<{} bytes>", self.bytes.len()))
            .finish()
    }
}

/// A file in a message (`kind: "file"`): its name, size and type, an optional thumbnail, and
/// everything needed to download and decrypt it (docs/protocol.md, *Files*). The key and the
/// download capability are secrets: the offer travels only end-to-end encrypted, and `Debug`
/// leaves them (and the name) out.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileOffer {
    /// The file's name as the sender gave it (no path: no `/`, `\\` or control characters).
    pub name: String,
    /// Its size in bytes (plaintext).
    pub size: u64,
    /// Its MIME type (`application/octet-stream` when unknown).
    pub mime: String,
    /// A preview image, if the sender made one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumbnail: Option<Thumbnail>,
    /// The transfer id in the server's blob store (32 lowercase hex digits).
    pub blob_id: String,
    /// The download capability for that transfer (base64url).
    pub capability: String,
    /// The file key (32 bytes, base64).
    pub key: String,
    /// The file id bound into every chunk (16 bytes, hex).
    pub file_id: String,
    /// SHA-256 over the SHA-256 of each sealed chunk, in order (32 bytes, hex):
    /// [`lattice_crypto::file_chunk::FileDigest`]. `None` in an offer sent as the upload starts:
    /// the digest follows in a [`Content::FileDigest`] message, and a download completes only
    /// once it has it and it matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Plaintext bytes per chunk (every chunk but the last; each is sealed with
    /// [`lattice_crypto::file_chunk::CHUNK_OVERHEAD`] more bytes).
    pub chunk_size: u64,
    /// Number of chunks: `ceil(size / chunkSize)`, 1 for an empty file.
    pub chunk_count: u64,
}

impl fmt::Debug for FileOffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileOffer")
            .field("name", &format_args!("<{} bytes>", self.name.len()))
            .field("size", &self.size)
            .field("mime", &self.mime)
            .field("thumbnail", &self.thumbnail)
            .field("blob_id", &self.blob_id)
            .field("chunk_size", &self.chunk_size)
            .field("chunk_count", &self.chunk_count)
            .finish_non_exhaustive()
    }
}

mod b64 {
    use base64::Engine as _;
    use serde::{Deserialize as _, Deserializer, Serializer};

    const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&B64.encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = <&str>::deserialize(d)?;
        B64.decode(s).map_err(serde::de::Error::custom)
    }
}

/// The number of chunks of a `size`-byte file cut into `chunk_size`-byte chunks (1 when empty).
pub fn chunk_count(size: u64, chunk_size: u64) -> u64 {
    if size == 0 || chunk_size == 0 {
        1
    } else {
        size.div_ceil(chunk_size)
    }
}

/// Whether `name` is usable as a file name on every platform we ship: not empty, not `.` or
/// `..`, no path separator, no control character.
pub fn is_safe_file_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == '\\' || c.is_control())
}

fn is_mime(mime: &str) -> bool {
    mime.len() <= MAX_MIME_BYTES
        && mime
            .split_once('/')
            .is_some_and(|(t, s)| !t.is_empty() && !s.is_empty())
        && mime.bytes().all(|b| b.is_ascii_graphic())
}

fn is_hex(s: &str, bytes: usize) -> bool {
    s.len() == 2 * bytes
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl FileOffer {
    /// Checks every field: a safe name, a MIME type, sizes that agree with each other, ids,
    /// key and digest of the right form, a bounded thumbnail.
    ///
    /// # Errors
    /// [`ContentError::Malformed`] (kind `file`) or [`ContentError::TooLong`].
    pub fn validate(&self) -> Result<(), ContentError> {
        let bad = Err(ContentError::Malformed { kind: KIND_FILE });
        check_text("file name", &self.name, MAX_FILE_NAME_BYTES)?;
        if !is_safe_file_name(&self.name) || !is_mime(&self.mime) {
            return bad;
        }
        let max_chunk = lattice_protocol::limits::MAX_BLOB_CHUNK_BYTES
            - lattice_crypto::file_chunk::CHUNK_OVERHEAD as u64;
        if self.size > MAX_FILE_BYTES
            || self.chunk_size == 0
            || self.chunk_size > max_chunk
            || self.chunk_count != chunk_count(self.size, self.chunk_size)
        {
            return bad;
        }
        let key_ok = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &self.key)
            .is_ok_and(|k| k.len() == lattice_crypto::file_chunk::FILE_KEY_LEN);
        if !key_ok
            || !is_hex(&self.blob_id, 16)
            || !is_hex(&self.file_id, lattice_crypto::file_chunk::FILE_ID_LEN)
            || !self
                .digest
                .as_deref()
                .is_none_or(|d| is_hex(d, lattice_crypto::file_chunk::DIGEST_LEN))
            || self.capability.is_empty()
            || self.capability.len() > 128
            || !self
                .capability
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return bad;
        }
        if let Some(t) = &self.thumbnail {
            if t.bytes.len() > MAX_THUMBNAIL_BYTES {
                return Err(ContentError::TooLong {
                    field: "thumbnail",
                    max: MAX_THUMBNAIL_BYTES,
                    got: t.bytes.len(),
                });
            }
            if !is_mime(&t.mime)
                || !t.mime.starts_with("image/")
                || !(1..=MAX_THUMBNAIL_SIDE).contains(&t.width)
                || !(1..=MAX_THUMBNAIL_SIDE).contains(&t.height)
            {
                return bad;
            }
        }
        Ok(())
    }
}

fn check_text(field: &'static str, text: &str, max: usize) -> Result<(), ContentError> {
    if text.len() > max {
        return Err(ContentError::TooLong {
            field,
            max,
            got: text.len(),
        });
    }
    Ok(())
}

fn check_reaction(emoji: &str) -> Result<(), ContentError> {
    if emoji.is_empty() {
        return Err(ContentError::Empty("reaction"));
    }
    check_text("reaction", emoji, MAX_REACTION_BYTES)?;
    if emoji.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(ContentError::InvalidReaction);
    }
    Ok(())
}

fn is_kind_name(kind: &str) -> bool {
    !kind.is_empty()
        && kind.len() <= MAX_KIND_BYTES
        && kind
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The text shown for a message of a kind the app does not render: `[unsupported message: kind]`.
pub fn unsupported_text(kind: &str) -> String {
    format!("[unsupported message: {kind}]")
}

/// At most [`MAX_EXCERPT_BYTES`] of `text`, cut at a character boundary (with "…" when cut), for
/// [`Content::Reply`].
pub fn excerpt(text: &str) -> String {
    if text.len() <= MAX_EXCERPT_BYTES {
        return text.to_owned();
    }
    let ellipsis = "…";
    let mut end = MAX_EXCERPT_BYTES - ellipsis.len();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{ellipsis}", &text[..end])
}

fn to_json<T: Serialize>(kind: &'static str, body: &T) -> Result<String, ContentError> {
    serde_json::to_string(body).map_err(|_| ContentError::Malformed { kind })
}

fn from_json<'a, T: Deserialize<'a>>(kind: &'static str, body: &'a str) -> Result<T, ContentError> {
    serde_json::from_str(body).map_err(|_| ContentError::Malformed { kind })
}

impl Content {
    /// The wire kind name.
    pub fn kind(&self) -> &str {
        match self {
            Self::Text(_) => KIND_TEXT,
            Self::Reply { .. } => KIND_REPLY,
            Self::Edit { .. } => KIND_EDIT,
            Self::Delete { .. } => KIND_DELETE,
            Self::Reaction { .. } => KIND_REACTION,
            Self::Receipt { .. } => KIND_RECEIPT,
            Self::Typing { .. } => KIND_TYPING,
            Self::File(_) => KIND_FILE,
            Self::FileDigest { .. } => KIND_FILE_DIGEST,
            Self::Unsupported { kind } => kind,
        }
    }

    /// Checks every bound.
    ///
    /// # Errors
    /// The first bound broken, as a [`ContentError`].
    pub fn validate(&self) -> Result<(), ContentError> {
        match self {
            Self::Text(text) => check_text("text", text, MAX_TEXT_BYTES),
            Self::Reply { excerpt, text, .. } => {
                check_text("excerpt", excerpt, MAX_EXCERPT_BYTES)?;
                check_text("text", text, MAX_TEXT_BYTES)
            }
            Self::Edit { text, .. } => check_text("text", text, MAX_TEXT_BYTES),
            Self::Delete { .. } | Self::Typing { .. } => Ok(()),
            Self::File(offer) => offer.validate(),
            Self::FileDigest { digest, .. } => {
                if is_hex(digest, lattice_crypto::file_chunk::DIGEST_LEN) {
                    Ok(())
                } else {
                    Err(ContentError::Malformed {
                        kind: KIND_FILE_DIGEST,
                    })
                }
            }
            Self::Reaction { emoji, .. } => check_reaction(emoji),
            Self::Receipt { read } => {
                if read.is_empty() {
                    return Err(ContentError::Empty("receipt"));
                }
                if read.len() > MAX_RECEIPT_IDS {
                    return Err(ContentError::TooMany {
                        field: "receipt",
                        max: MAX_RECEIPT_IDS,
                        got: read.len(),
                    });
                }
                Ok(())
            }
            Self::Unsupported { kind } => {
                if is_kind_name(kind) {
                    Ok(())
                } else {
                    Err(ContentError::InvalidKind)
                }
            }
        }
    }

    /// The `(kind, body)` pair that goes on the wire, after [`Content::validate`].
    ///
    /// # Errors
    /// A bound broken, or [`ContentError::Unsendable`] for [`Content::Unsupported`].
    pub fn encode(&self) -> Result<(&str, String), ContentError> {
        self.validate()?;
        let body = match self {
            Self::Text(text) => text.clone(),
            Self::Reply { to, excerpt, text } => to_json(
                KIND_REPLY,
                &ReplyBody {
                    to: to.clone(),
                    excerpt: excerpt.clone(),
                    text: text.clone(),
                },
            )?,
            Self::Edit { target, text } => to_json(
                KIND_EDIT,
                &EditBody {
                    target: target.clone(),
                    text: text.clone(),
                },
            )?,
            Self::Delete { target } => to_json(
                KIND_DELETE,
                &DeleteBody {
                    target: target.clone(),
                },
            )?,
            Self::Reaction {
                target,
                emoji,
                action,
            } => to_json(
                KIND_REACTION,
                &ReactionBody {
                    target: target.clone(),
                    emoji: emoji.clone(),
                    remove: *action == ReactionAction::Remove,
                },
            )?,
            Self::Receipt { read } => to_json(KIND_RECEIPT, &ReceiptBody { read: read.clone() })?,
            Self::Typing { started } => to_json(KIND_TYPING, &TypingBody { started: *started })?,
            Self::File(offer) => to_json(KIND_FILE, offer)?,
            Self::FileDigest { target, digest } => to_json(
                KIND_FILE_DIGEST,
                &FileDigestBody {
                    target: target.clone(),
                    digest: digest.clone(),
                },
            )?,
            Self::Unsupported { .. } => return Err(ContentError::Unsendable),
        };
        Ok((self.kind(), body))
    }

    /// Reads a `(kind, body)` pair. A valid kind name this version does not know gives
    /// [`Content::Unsupported`]; the bounds are checked as by [`Content::validate`].
    ///
    /// # Errors
    /// [`ContentError::InvalidKind`] for a kind that is not a kind name,
    /// [`ContentError::Malformed`] for a body without its kind's shape, or a bound broken.
    pub fn decode(kind: &str, body: &str) -> Result<Self, ContentError> {
        let content = match kind {
            KIND_TEXT => Self::Text(body.to_owned()),
            KIND_REPLY => {
                let b: ReplyBody = from_json(KIND_REPLY, body)?;
                Self::Reply {
                    to: b.to,
                    excerpt: b.excerpt,
                    text: b.text,
                }
            }
            KIND_EDIT => {
                let b: EditBody = from_json(KIND_EDIT, body)?;
                Self::Edit {
                    target: b.target,
                    text: b.text,
                }
            }
            KIND_DELETE => {
                let b: DeleteBody = from_json(KIND_DELETE, body)?;
                Self::Delete { target: b.target }
            }
            KIND_REACTION => {
                let b: ReactionBody = from_json(KIND_REACTION, body)?;
                Self::Reaction {
                    target: b.target,
                    emoji: b.emoji,
                    action: if b.remove {
                        ReactionAction::Remove
                    } else {
                        ReactionAction::Add
                    },
                }
            }
            KIND_RECEIPT => {
                let b: ReceiptBody = from_json(KIND_RECEIPT, body)?;
                Self::Receipt { read: b.read }
            }
            KIND_TYPING => {
                let b: TypingBody = from_json(KIND_TYPING, body)?;
                Self::Typing { started: b.started }
            }
            KIND_FILE => Self::File(from_json(KIND_FILE, body)?),
            KIND_FILE_DIGEST => {
                let b: FileDigestBody = from_json(KIND_FILE_DIGEST, body)?;
                Self::FileDigest {
                    target: b.target,
                    digest: b.digest,
                }
            }
            other => Self::Unsupported {
                kind: other.to_owned(),
            },
        };
        content.validate()?;
        Ok(content)
    }

    /// What an original (`ml-kem-aes`) client gets instead: plain text only. A reply becomes the
    /// quote and the answer, an edit a new text marked as such; `None` for kinds that are not sent
    /// to such clients at all (delete, reaction, receipt, typing, file).
    pub fn plain_text(&self) -> Option<String> {
        match self {
            Self::Text(text) => Some(text.clone()),
            Self::Reply { excerpt, text, .. } => Some(format!("> {excerpt}\n{text}")),
            Self::Edit { text, .. } => Some(format!("(edited) {text}")),
            _ => None,
        }
    }

    /// The text to show for a message-like content: the text of a text or a reply, a notice for
    /// an unsupported kind; `None` for the kinds that change other messages.
    pub fn display_text(&self) -> Option<String> {
        match self {
            Self::Text(text) | Self::Reply { text, .. } => Some(text.clone()),
            Self::File(offer) => Some(format!("[file] {}", offer.name)),
            Self::Unsupported { kind } => Some(unsupported_text(kind)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mid(s: &str) -> MessageId {
        MessageId::new(s).unwrap()
    }

    fn all() -> Vec<Content> {
        let to = MessageRef {
            sender: ClientId::new("alice").unwrap(),
            message_id: mid("m1"),
        };
        vec![
            Content::Text("hi".into()),
            Content::Reply {
                to: to.clone(),
                excerpt: "earlier".into(),
                text: "answer".into(),
            },
            Content::Edit {
                target: mid("m1"),
                text: "fixed".into(),
            },
            Content::Delete { target: mid("m1") },
            Content::Reaction {
                target: to,
                emoji: "👍".into(),
                action: ReactionAction::Remove,
            },
            Content::Receipt {
                read: vec![mid("m1"), mid("m2")],
            },
            Content::Typing { started: true },
            Content::FileDigest {
                target: mid("m1"),
                digest: "0a".repeat(32),
            },
        ]
    }

    #[test]
    fn every_kind_round_trips() {
        for c in all() {
            let (kind, body) = c.encode().unwrap();
            assert_eq!(Content::decode(kind, &body).unwrap(), c, "{kind}");
        }
    }

    #[test]
    fn unknown_kinds_are_unsupported_and_bad_names_are_errors() {
        assert_eq!(
            Content::decode("poll", "{}").unwrap(),
            Content::Unsupported {
                kind: "poll".into()
            }
        );
        for bad in ["", "Poll", "a b", &"x".repeat(MAX_KIND_BYTES + 1)] {
            assert_eq!(Content::decode(bad, ""), Err(ContentError::InvalidKind));
        }
        assert_eq!(
            Content::Unsupported {
                kind: "poll".into()
            }
            .encode(),
            Err(ContentError::Unsendable)
        );
    }

    #[test]
    fn malformed_bodies_are_typed_errors() {
        for kind in [
            KIND_FILE,
            KIND_REPLY,
            KIND_EDIT,
            KIND_DELETE,
            KIND_REACTION,
            KIND_RECEIPT,
            KIND_TYPING,
        ] {
            assert!(
                matches!(
                    Content::decode(kind, "not json"),
                    Err(ContentError::Malformed { .. })
                ),
                "{kind}"
            );
        }
        // An id that is not a message id.
        assert!(matches!(
            Content::decode(KIND_DELETE, r#"{"target":""}"#),
            Err(ContentError::Malformed { .. })
        ));
    }

    #[test]
    fn every_field_is_bounded_both_ways() {
        let long = "x".repeat(MAX_TEXT_BYTES + 1);
        assert!(matches!(
            Content::Text(long.clone()).encode(),
            Err(ContentError::TooLong { field: "text", .. })
        ));
        assert!(matches!(
            Content::decode(KIND_TEXT, &long),
            Err(ContentError::TooLong { field: "text", .. })
        ));
        let edit = format!(r#"{{"target":"m","text":"{long}"}}"#);
        assert!(matches!(
            Content::decode(KIND_EDIT, &edit),
            Err(ContentError::TooLong { .. })
        ));
        let reply = format!(
            r#"{{"to":{{"sender":"a","messageId":"m"}},"excerpt":"{}","text":""}}"#,
            "e".repeat(MAX_EXCERPT_BYTES + 1)
        );
        assert!(matches!(
            Content::decode(KIND_REPLY, &reply),
            Err(ContentError::TooLong {
                field: "excerpt",
                ..
            })
        ));
        let ids: Vec<String> = (0..=MAX_RECEIPT_IDS).map(|n| format!("\"m{n}\"")).collect();
        let receipt = format!(r#"{{"read":[{}]}}"#, ids.join(","));
        assert!(matches!(
            Content::decode(KIND_RECEIPT, &receipt),
            Err(ContentError::TooMany { .. })
        ));
        assert_eq!(
            Content::decode(KIND_RECEIPT, r#"{"read":[]}"#),
            Err(ContentError::Empty("receipt"))
        );
        let reaction = |e: &str| {
            format!(r#"{{"target":{{"sender":"a","messageId":"m"}},"emoji":"{e}","remove":false}}"#)
        };
        assert!(Content::decode(KIND_REACTION, &reaction("👍🏽")).is_ok());
        assert_eq!(
            Content::decode(KIND_REACTION, &reaction("")),
            Err(ContentError::Empty("reaction"))
        );
        assert_eq!(
            Content::decode(KIND_REACTION, &reaction("a b")),
            Err(ContentError::InvalidReaction)
        );
        assert_eq!(
            Content::decode(KIND_REACTION, &reaction("\\u0007")),
            Err(ContentError::InvalidReaction)
        );
        assert!(matches!(
            Content::decode(KIND_REACTION, &reaction(&"🙂".repeat(9))),
            Err(ContentError::TooLong { .. })
        ));
    }

    fn offer() -> FileOffer {
        FileOffer {
            name: "photo.jpg".into(),
            size: 3 * 1024 * 1024 + 1,
            mime: "image/jpeg".into(),
            thumbnail: Some(Thumbnail {
                mime: "image/jpeg".into(),
                width: 320,
                height: 240,
                bytes: vec![1, 2, 3],
            }),
            blob_id: "0123456789abcdef0123456789abcdef".into(),
            capability: "Zk3_-abc".into(),
            key: "A".repeat(43) + "=",
            file_id: "00".repeat(16),
            digest: Some("ff".repeat(32)),
            chunk_size: 1024 * 1024,
            chunk_count: 4,
        }
    }

    #[test]
    fn a_file_offer_round_trips_and_every_field_is_checked() {
        let c = Content::File(offer());
        let (kind, body) = c.encode().unwrap();
        assert_eq!(kind, "file");
        assert_eq!(Content::decode(kind, &body).unwrap(), c);
        assert_eq!(c.plain_text(), None);
        assert_eq!(c.display_text().as_deref(), Some("[file] photo.jpg"));
        // Secrets stay out of Debug.
        let debug = format!("{c:?}");
        assert!(!debug.contains("Zk3") && !debug.contains("AAAA") && !debug.contains("photo"));

        type Spoil = Box<dyn Fn(&mut FileOffer)>;
        let bad: Vec<Spoil> = vec![
            Box::new(|o| o.name = "../x".into()),
            Box::new(|o| o.name = "a/b".into()),
            Box::new(|o| o.name = "a\\b".into()),
            Box::new(|o| o.name = "..".into()),
            Box::new(|o| o.name = String::new()),
            Box::new(|o| o.name = "x\u{1b}[2J".into()),
            Box::new(|o| o.name = "n".repeat(MAX_FILE_NAME_BYTES + 1)),
            Box::new(|o| o.mime = "jpeg".into()),
            Box::new(|o| o.chunk_count = 3),
            Box::new(|o| o.chunk_size = 0),
            Box::new(|o| o.chunk_size = lattice_protocol::limits::MAX_BLOB_CHUNK_BYTES),
            Box::new(|o| o.size = MAX_FILE_BYTES + 1),
            Box::new(|o| o.key = "short".into()),
            Box::new(|o| o.blob_id = "../../etc".into()),
            Box::new(|o| o.file_id = "zz".repeat(16)),
            Box::new(|o| o.digest = Some("FF".repeat(32))),
            Box::new(|o| o.digest = Some(String::new())),
            Box::new(|o| o.capability = "a b".into()),
            Box::new(|o| {
                if let Some(t) = &mut o.thumbnail {
                    t.bytes = vec![0; MAX_THUMBNAIL_BYTES + 1];
                }
            }),
            Box::new(|o| {
                if let Some(t) = &mut o.thumbnail {
                    t.width = 0;
                }
            }),
            Box::new(|o| {
                if let Some(t) = &mut o.thumbnail {
                    t.mime = "text/html".into();
                }
            }),
        ];
        for (n, spoil) in bad.iter().enumerate() {
            let mut o = offer();
            spoil(&mut o);
            let body = serde_json::to_string(&o).unwrap();
            assert!(Content::decode(KIND_FILE, &body).is_err(), "case {n}");
            assert!(Content::File(o).encode().is_err(), "case {n}");
        }
        let mut empty = offer();
        empty.size = 0;
        empty.chunk_count = 1;
        assert!(Content::File(empty).validate().is_ok());
        // An offer sent as the upload starts has no digest yet (and none goes on the wire).
        let mut early = offer();
        early.digest = None;
        let (_, body) = Content::File(early.clone()).encode().unwrap();
        assert!(!body.contains("digest"), "{body}");
        assert_eq!(
            Content::decode(KIND_FILE, &body).unwrap(),
            Content::File(early)
        );
        let bad = Content::FileDigest {
            target: mid("m1"),
            digest: "FF".repeat(32),
        };
        assert!(bad.encode().is_err());
    }

    #[test]
    fn excerpts_are_cut_at_a_character_boundary() {
        assert_eq!(excerpt("short"), "short");
        let cut = excerpt(&"é".repeat(MAX_EXCERPT_BYTES));
        assert!(cut.len() <= MAX_EXCERPT_BYTES);
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn original_clients_get_plain_text_only() {
        let plain: Vec<Option<String>> = all().iter().map(Content::plain_text).collect();
        assert_eq!(plain[0].as_deref(), Some("hi"));
        assert_eq!(plain[1].as_deref(), Some("> earlier\nanswer"));
        assert_eq!(plain[2].as_deref(), Some("(edited) fixed"));
        assert!(plain[3..].iter().all(Option::is_none));
    }
}
