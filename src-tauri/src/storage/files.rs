//! Files attached to messages (schema version 7): one `attachments` row per file message, so a
//! conversation shows its files, their previews and where each transfer stands across restarts.
//!
//! `attachments(seq PK, name, size, mime, thumb_mime, thumb_width, thumb_height, thumb, offer,
//! local_path, transfer_id, state, done, error)`:
//! - `seq` is the message's row in `messages` (deleting the message deletes the row);
//! - `name`, `size`, `mime` and the thumbnail are what the sender declared (bounded by
//!   [`MAX_NAME_BYTES`], [`MAX_MIME_BYTES`], [`MAX_THUMBNAIL_BYTES`]);
//! - `offer` is the library's file offer as it travels in the message, without its preview (the file key, digest
//!   and download capability): what a download needs to start or restart. It is as secret as
//!   the history it sits in, and is never logged;
//! - `local_path` is where the bytes are on this device: the file sent, or the file received
//!   once downloaded. The bytes themselves are never in the database, so neither backups nor
//!   exports carry them;
//! - `transfer_id`, `state` ([`TransferState`]'s wire name), `done` and `error` mirror the
//!   library's transfer so the page can draw the progress bar before the library reports.
//!
//! The message's `body` is the file's name, so the full-text index ([`super::search`]) finds
//! files by name and the peer list shows it as the latest message.
//!
//! Group conversations have files too (schema version 9): a group file is a group line whose
//! `body` is the file's name. Since schema version 10 both live in this one table, keyed by
//! `(home, seq)`: `home` says which history `seq` is a row of ([`FileHome`]: 0 for `messages`,
//! 1 for `group_messages`), so one code path stores, reads and moves every file. Version 9 kept
//! the group files in a twin table, `group_attachments`; opening such a file moves its rows here
//! (and the 1:1 rows to `home = 0`). Transfer ids are the library's random ids, unique across
//! both homes.

use rusqlite::{params, Connection, OptionalExtension};

use lattice_protocol::ClientId;

use super::db::{Db, MessageRecord, MessageStatus};
use super::error::StorageError;
use super::message::Received;
pub use crate::contract::TransferState;

/// Longest file name kept, in bytes (longer names are cut at a character boundary).
pub const MAX_NAME_BYTES: usize = 255;
/// Longest MIME type kept, in bytes.
pub const MAX_MIME_BYTES: usize = 127;
/// Largest thumbnail kept, in bytes: the library's bound on what a file message may carry (a
/// bigger one, which the library would have refused, is dropped and the file shown as a card).
pub const MAX_THUMBNAIL_BYTES: usize = lattice_peer::content::MAX_THUMBNAIL_BYTES;
/// Largest thumbnail side kept, in pixels: the library's bound (this app makes smaller ones,
/// [`crate::thumbnail::PREVIEW_SIDE`]; other clients may send up to this).
pub const MAX_THUMBNAIL_SIDE: u32 = lattice_peer::content::MAX_THUMBNAIL_SIDE;
/// The image types this app previews (and shows in its viewer).
pub const PREVIEWABLE: [&str; 4] = ["image/jpeg", "image/png", "image/gif", "image/webp"];

/// Whether files of type `mime` are shown as pictures.
pub fn is_previewable(mime: &str) -> bool {
    PREVIEWABLE.contains(&mime)
}

/// Longest stored offer (the library's JSON), in bytes.
pub const MAX_OFFER_BYTES: usize = 16 * 1024;
/// Longest stored error text, in bytes.
pub const MAX_ERROR_BYTES: usize = 512;
/// Why a transfer under way when a backup was made is failed after its restore.
pub const INTERRUPTED_BY_RESTORE: &str =
    "This transfer was interrupted by restoring a backup; download or send the file again.";

const FILES_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS attachments(
    home         INTEGER NOT NULL,
    seq          INTEGER NOT NULL,
    name         TEXT NOT NULL,
    size         INTEGER NOT NULL,
    mime         TEXT NOT NULL,
    thumb_mime   TEXT,
    thumb_width  INTEGER,
    thumb_height INTEGER,
    thumb        BLOB,
    offer        TEXT,
    local_path   TEXT,
    transfer_id  TEXT,
    state        TEXT NOT NULL,
    done         INTEGER NOT NULL DEFAULT 0,
    error        TEXT,
    PRIMARY KEY(home, seq)
);
CREATE UNIQUE INDEX IF NOT EXISTS attachments_by_transfer ON attachments(transfer_id)
    WHERE transfer_id IS NOT NULL;
CREATE TRIGGER IF NOT EXISTS messages_files_delete AFTER DELETE ON messages BEGIN
    DELETE FROM attachments WHERE home = 0 AND seq = old.seq;
END;
CREATE TRIGGER IF NOT EXISTS group_messages_files_delete AFTER DELETE ON group_messages BEGIN
    DELETE FROM attachments WHERE home = 1 AND seq = old.seq;
END;
";

/// The table as schema versions 7 to 9 made it (1:1 files only; version 9 had a twin of it,
/// `group_attachments`, for group files), for the migration tests.
#[cfg(test)]
pub(crate) const V9_ATTACHMENTS: &str = "
CREATE TABLE attachments(
    seq INTEGER PRIMARY KEY, name TEXT NOT NULL, size INTEGER NOT NULL, mime TEXT NOT NULL,
    thumb_mime TEXT, thumb_width INTEGER, thumb_height INTEGER, thumb BLOB, offer TEXT,
    local_path TEXT, transfer_id TEXT, state TEXT NOT NULL, done INTEGER NOT NULL DEFAULT 0,
    error TEXT
);
CREATE UNIQUE INDEX attachments_by_transfer ON attachments(transfer_id)
    WHERE transfer_id IS NOT NULL;
CREATE TRIGGER messages_files_delete AFTER DELETE ON messages BEGIN
    DELETE FROM attachments WHERE seq = old.seq;
END;
";

/// The columns every layout of the table has, in order (what a migration moves).
const MOVED_COLUMNS: &str = "seq, name, size, mime, thumb_mime, thumb_width, thumb_height, \
     thumb, offer, local_path, transfer_id, state, done, error";

/// The 1:1 files as a table with `seq` to join `USING (seq)` with `messages` (so a query may
/// name `seq` unqualified): a macro, so the queries are built at compile time.
macro_rules! chat_attachments {
    () => {
        "(SELECT * FROM attachments WHERE home = 0)"
    };
}
pub(super) use chat_attachments;

/// The group files, to join `USING (seq)` with `group_messages`.
macro_rules! group_attachments {
    () => {
        "(SELECT * FROM attachments WHERE home = 1)"
    };
}
pub(super) use group_attachments;

fn table_exists(conn: &Connection, table: &str) -> Result<bool, StorageError> {
    Ok(conn
        .prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1")?
        .exists(params![table])?)
}

/// Schema version 7 made the table (1:1 files only), version 9 a twin `group_attachments` for
/// group files; version 10 has one table for both. A file of version 7 to 9 has its rows moved
/// into the new layout (SQLite cannot change a primary key in place), in the caller's
/// transaction.
pub(super) fn migrate(conn: &Connection) -> Result<(), StorageError> {
    let old_layout = table_exists(conn, "attachments")?
        && !conn
            .prepare("SELECT 1 FROM pragma_table_info('attachments') WHERE name = 'home'")?
            .exists([])?;
    if old_layout {
        conn.execute_batch(
            "DROP TRIGGER IF EXISTS messages_files_delete;
             DROP INDEX IF EXISTS attachments_by_transfer;
             ALTER TABLE attachments RENAME TO attachments_v9;",
        )?;
    }
    conn.execute_batch(FILES_SCHEMA)?;
    for (old, home) in [
        ("attachments_v9", FileHome::Chat),
        ("group_attachments", FileHome::Group),
    ] {
        if table_exists(conn, old)? {
            conn.execute(
                &format!(
                    "INSERT INTO attachments(home, {MOVED_COLUMNS})
                     SELECT ?1, {MOVED_COLUMNS} FROM {old}"
                ),
                params![home.code()],
            )?;
            conn.execute_batch(&format!("DROP TABLE {old}"))?;
        }
    }
    Ok(())
}

/// Which history a file belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileHome {
    /// A 1:1 message (`home = 0`, keyed by `messages.seq`).
    Chat,
    /// A group line (`home = 1`, keyed by `group_messages.seq`).
    Group,
}

impl FileHome {
    /// Its `home` value.
    pub(super) fn code(self) -> i64 {
        match self {
            Self::Chat => 0,
            Self::Group => 1,
        }
    }
}

/// A small preview of an image, made by the sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thumbnail {
    /// Its type (`image/jpeg`, `image/png`, ...).
    pub mime: String,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// The encoded image.
    pub bytes: Vec<u8>,
}

impl Thumbnail {
    /// Whether it is within the bounds this storage keeps: an image type, sides within
    /// [`MAX_THUMBNAIL_SIDE`], at most [`MAX_THUMBNAIL_BYTES`].
    pub fn is_within_bounds(&self) -> bool {
        self.mime.starts_with("image/")
            && self.mime.len() <= MAX_MIME_BYTES
            && (1..=MAX_THUMBNAIL_SIDE).contains(&self.width)
            && (1..=MAX_THUMBNAIL_SIDE).contains(&self.height)
            && !self.bytes.is_empty()
            && self.bytes.len() <= MAX_THUMBNAIL_BYTES
    }
}

/// What a file message declares about its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAttachment {
    /// File name (no directories).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// MIME type.
    pub mime: String,
    /// Preview, for images.
    pub thumbnail: Option<Thumbnail>,
    /// The library's offer, as JSON (see the module docs).
    pub offer: Option<String>,
    /// Where the bytes are here (the file sent), if anywhere yet.
    pub local_path: Option<String>,
    /// The transfer moving it, once there is one.
    pub transfer_id: Option<String>,
    /// Where it stands.
    pub state: TransferState,
}

/// A stored attachment, as the conversation shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// File name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// MIME type.
    pub mime: String,
    /// Preview, for images.
    pub thumbnail: Option<Thumbnail>,
    /// Where the bytes are here, once sent from or downloaded to this device.
    pub local_path: Option<String>,
    /// The transfer moving it, if any.
    pub transfer_id: Option<String>,
    /// Where it stands.
    pub state: TransferState,
    /// Bytes moved so far.
    pub done: u64,
    /// Why it failed, when it did.
    pub error: Option<String>,
}

/// The columns [`Attachment::from_row`] reads, in order, for a query over `attachments AS a`
/// (also joined into [`super::db`]'s message query): a macro so both queries are built at
/// compile time from the one list.
macro_rules! attachment_columns {
    () => {
        "a.name, a.size, a.mime, a.thumb_mime, a.thumb_width, a.thumb_height, a.thumb,
         a.local_path, a.transfer_id, a.state, a.done, a.error"
    };
}
pub(super) use attachment_columns;

impl Attachment {
    /// Reads the columns of `attachment_columns!` from `start` on; `None` for a message without a file.
    pub(super) fn from_row(r: &rusqlite::Row<'_>, start: usize) -> rusqlite::Result<Option<Self>> {
        let Some(name) = r.get::<_, Option<String>>(start)? else {
            return Ok(None);
        };
        let thumb_mime: Option<String> = r.get(start + 3)?;
        let thumb_width: Option<u32> = r.get(start + 4)?;
        let thumb_height: Option<u32> = r.get(start + 5)?;
        let thumb: Option<Vec<u8>> = r.get(start + 6)?;
        let thumbnail = match (thumb_mime, thumb_width, thumb_height, thumb) {
            (Some(mime), Some(width), Some(height), Some(bytes)) => Some(Thumbnail {
                mime,
                width,
                height,
                bytes,
            }),
            _ => None,
        };
        let state: String = r.get(start + 9)?;
        Ok(Some(Self {
            name,
            size: u64::try_from(r.get::<_, i64>(start + 1)?).unwrap_or(0),
            mime: r.get(start + 2)?,
            thumbnail,
            local_path: r.get(start + 7)?,
            transfer_id: r.get(start + 8)?,
            state: TransferState::from_wire(&state),
            done: u64::try_from(r.get::<_, i64>(start + 10)?).unwrap_or(0),
            error: r.get(start + 11)?,
        }))
    }

    /// Whether it is an image this app previews.
    pub fn is_image(&self) -> bool {
        is_previewable(&self.mime)
    }
}

/// `text` cut to at most `max` bytes at a character boundary.
pub fn truncate_bytes(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A size as SQLite stores it (a file larger than `i64::MAX` bytes does not exist).
fn size_i64(size: u64) -> i64 {
    i64::try_from(size).unwrap_or(i64::MAX)
}

/// Inserts (or, for the same message, replaces) the attachment of message `seq`, keeping the
/// bounds of the module docs: a name or type too long is cut, a thumbnail out of bounds is
/// dropped, an offer too long is refused.
pub(super) fn insert(
    conn: &Connection,
    home: FileHome,
    seq: i64,
    file: &NewAttachment,
) -> Result<(), StorageError> {
    if file
        .offer
        .as_ref()
        .is_some_and(|o| o.len() > MAX_OFFER_BYTES)
    {
        return Err(StorageError::Invalid(format!(
            "a file offer longer than {MAX_OFFER_BYTES} bytes"
        )));
    }
    let thumbnail = file.thumbnail.as_ref().filter(|t| t.is_within_bounds());
    conn.prepare_cached(
        "INSERT OR REPLACE INTO attachments(home, seq, name, size, mime, thumb_mime,
             thumb_width, thumb_height, thumb, offer, local_path, transfer_id, state, done, error)
         VALUES (?13, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, 0, NULL)",
    )?
    .execute(params![
        seq,
        truncate_bytes(&file.name, MAX_NAME_BYTES),
        size_i64(file.size),
        truncate_bytes(&file.mime, MAX_MIME_BYTES),
        thumbnail.map(|t| t.mime.as_str()),
        thumbnail.map(|t| t.width),
        thumbnail.map(|t| t.height),
        thumbnail.map(|t| t.bytes.as_slice()),
        file.offer,
        file.local_path,
        file.transfer_id,
        file.state.as_str(),
        home.code(),
    ])?;
    Ok(())
}

/// The attachment of a message and the conversation it belongs to, found by its transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferRow {
    /// The message's `seq` (in `messages`, or in `group_messages` for a group file).
    pub seq: i64,
    /// The message's local id (what the page knows it by).
    pub message_id: String,
    /// Its conversation; for a group file, its sender.
    pub peer_id: String,
    /// Ours (an upload) or theirs (a download).
    pub outgoing: bool,
    /// The group (hex id), for a group file.
    pub group_id: Option<String>,
}

impl Db {
    /// Stores one of our file messages: the message (its body the file's name, `wire_id` the
    /// id the library sends it with) and its file, in one transaction. No outbox row: the
    /// library sends the file message itself once the upload is done.
    ///
    /// # Errors
    /// [`StorageError::Sqlite`]; [`StorageError::Invalid`] for an offer out of bounds.
    pub fn insert_outgoing_file(
        &self,
        local_id: &str,
        wire_id: Option<&str>,
        peer_id: &ClientId,
        file: &NewAttachment,
        now_ms: i64,
    ) -> Result<MessageRecord, StorageError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT OR IGNORE INTO contacts(peer_id, first_seen) VALUES (?1, ?2)",
            params![peer_id.as_str(), now_ms],
        )?;
        tx.execute(
            "INSERT INTO messages(message_id, peer_id, outgoing, body, at, status, authenticated,
                                  wire_id, sent_at)
             VALUES (?1, ?2, 1, ?3, ?4, ?5, 1, ?6, ?4)",
            params![
                local_id,
                peer_id.as_str(),
                truncate_bytes(&file.name, MAX_NAME_BYTES),
                now_ms,
                MessageStatus::Pending.rank(),
                wire_id,
            ],
        )?;
        let seq = tx.last_insert_rowid();
        insert(&tx, FileHome::Chat, seq, file)?;
        let record =
            Db::message_by_seq(&tx, seq)?.ok_or(StorageError::Missing("a file message"))?;
        tx.commit()?;
        Ok(record)
    }

    /// Stores an incoming file message and its file in one transaction (the session does this
    /// before the library acknowledges the message). `None` for a redelivered duplicate.
    ///
    /// # Errors
    /// [`StorageError::Sqlite`]; [`StorageError::Invalid`] for an offer out of bounds (then
    /// nothing is stored).
    pub fn insert_received_file(
        &self,
        message: &Received<'_>,
        file: &NewAttachment,
    ) -> Result<Option<MessageRecord>, StorageError> {
        if file
            .offer
            .as_ref()
            .is_some_and(|o| o.len() > MAX_OFFER_BYTES)
        {
            return Err(StorageError::Invalid(format!(
                "a file offer longer than {MAX_OFFER_BYTES} bytes"
            )));
        }
        let Some(record) = self.insert_received(message)? else {
            return Ok(None);
        };
        let conn = self.conn();
        insert(&conn, FileHome::Chat, record.seq, file)?;
        Db::message_by_seq(&conn, record.seq)
    }

    /// The local id of our file message to `peer` sent with `wire_id`, if there is one (its
    /// server acknowledgement moves its ticks: the library, not the outbox, sent it).
    ///
    /// # Errors
    /// [`StorageError::Sqlite`].
    pub fn outgoing_file_by_wire(
        &self,
        peer: &ClientId,
        wire_id: &str,
    ) -> Result<Option<String>, StorageError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT m.message_id FROM messages m JOIN attachments a ON a.home = 0 AND a.seq = m.seq
                 WHERE m.peer_id = ?1 AND m.outgoing = 1 AND m.wire_id = ?2",
                params![peer.as_str(), wire_id],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Attaches `file` to the stored message `seq` (an outgoing file message just queued, or an
    /// incoming one just stored).
    ///
    /// # Errors
    /// [`StorageError::Sqlite`]; [`StorageError::Invalid`] for an offer out of bounds.
    pub fn attach_file(&self, seq: i64, file: &NewAttachment) -> Result<(), StorageError> {
        insert(&self.conn(), FileHome::Chat, seq, file)
    }

    /// The attachment of message `seq`, if it has one.
    ///
    /// # Errors
    /// [`StorageError::Sqlite`].
    pub fn attachment(&self, seq: i64) -> Result<Option<Attachment>, StorageError> {
        self.attachment_in(FileHome::Chat, seq)
    }

    /// The attachment of line `seq` of `home`, if it has one.
    ///
    /// # Errors
    /// [`StorageError::Sqlite`].
    pub fn attachment_in(
        &self,
        home: FileHome,
        seq: i64,
    ) -> Result<Option<Attachment>, StorageError> {
        let conn = self.conn();
        let found = conn
            .query_row(
                concat!(
                    "SELECT ",
                    attachment_columns!(),
                    " FROM attachments a WHERE a.home = ?2 AND a.seq = ?1"
                ),
                params![seq, home.code()],
                |r| Attachment::from_row(r, 0),
            )
            .optional()?;
        Ok(found.flatten())
    }

    /// The stored offer of message `seq` (what a download needs).
    ///
    /// # Errors
    /// [`StorageError::Sqlite`].
    pub fn file_offer(&self, seq: i64) -> Result<Option<String>, StorageError> {
        self.file_offer_in(FileHome::Chat, seq)
    }

    /// The stored offer of line `seq` of `home`.
    ///
    /// # Errors
    /// [`StorageError::Sqlite`].
    pub fn file_offer_in(&self, home: FileHome, seq: i64) -> Result<Option<String>, StorageError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT offer FROM attachments WHERE home = ?2 AND seq = ?1",
                params![seq, home.code()],
                |r| r.get::<_, Option<String>>(0),
            )
            .optional()?
            .flatten())
    }

    /// Binds message `seq`'s attachment to `transfer_id` and sets where its bytes go (or come
    /// from), when a download or upload starts.
    ///
    /// # Errors
    /// [`StorageError::Sqlite`]; [`StorageError::Invalid`] when `seq` has no attachment.
    pub fn start_transfer(
        &self,
        seq: i64,
        transfer_id: &str,
        local_path: &str,
    ) -> Result<(), StorageError> {
        self.start_transfer_in(FileHome::Chat, seq, transfer_id, local_path)
    }

    /// [`Db::start_transfer`] for line `seq` of `home`.
    ///
    /// # Errors
    /// As [`Db::start_transfer`].
    pub fn start_transfer_in(
        &self,
        home: FileHome,
        seq: i64,
        transfer_id: &str,
        local_path: &str,
    ) -> Result<(), StorageError> {
        let n = self.conn().execute(
            "UPDATE attachments SET transfer_id = ?2, local_path = ?3, state = ?4, done = 0,
                 error = NULL
             WHERE home = ?5 AND seq = ?1",
            params![
                seq,
                transfer_id,
                local_path,
                TransferState::Queued.as_str(),
                home.code()
            ],
        )?;
        if n == 0 {
            return Err(StorageError::Invalid(format!("message {seq} has no file")));
        }
        Ok(())
    }

    /// Records the progress of `transfer_id`. A transfer in a final state stays there (a late
    /// progress report cannot revive a cancelled transfer). Returns the message it belongs to,
    /// `None` for a transfer this history does not know.
    ///
    /// # Errors
    /// [`StorageError::Sqlite`].
    pub fn update_transfer(
        &self,
        transfer_id: &str,
        state: TransferState,
        done: u64,
        error: Option<&str>,
    ) -> Result<Option<TransferRow>, StorageError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let read = |r: &rusqlite::Row<'_>| {
            Ok((
                TransferRow {
                    seq: r.get(0)?,
                    message_id: r.get(1)?,
                    peer_id: r.get(2)?,
                    outgoing: r.get(3)?,
                    group_id: r.get(5)?,
                },
                r.get::<_, String>(4)?,
            ))
        };
        let chat = tx
            .query_row(
                "SELECT a.seq, m.message_id, m.peer_id, m.outgoing, a.state, NULL
                 FROM attachments a JOIN messages m ON m.seq = a.seq
                 WHERE a.home = 0 AND a.transfer_id = ?1",
                params![transfer_id],
                read,
            )
            .optional()?
            .map(|row| (FileHome::Chat, row));
        let found = match chat {
            Some(found) => Some(found),
            None => tx
                .query_row(
                    "SELECT a.seq, m.message_id, m.sender, m.outgoing, a.state, m.group_id
                     FROM attachments a JOIN group_messages m ON m.seq = a.seq
                     WHERE a.home = 1 AND a.transfer_id = ?1",
                    params![transfer_id],
                    read,
                )
                .optional()?
                .map(|row| (FileHome::Group, row)),
        };
        let Some((home, (row, current))) = found else {
            return Ok(None);
        };
        if !TransferState::from_wire(&current).is_final() {
            tx.execute(
                "UPDATE attachments SET state = ?2, done = ?3, error = ?4
                 WHERE home = ?5 AND seq = ?1",
                params![
                    row.seq,
                    state.as_str(),
                    size_i64(done),
                    error.map(|e| truncate_bytes(e, MAX_ERROR_BYTES)),
                    home.code()
                ],
            )?;
        }
        tx.commit()?;
        Ok(Some(row))
    }

    /// Sets where the bytes of message `seq`'s file are on this device (after *Save*, or when
    /// a finished download was moved).
    ///
    /// # Errors
    /// [`StorageError::Sqlite`].
    pub fn set_local_path(&self, seq: i64, local_path: &str) -> Result<(), StorageError> {
        self.conn().execute(
            "UPDATE attachments SET local_path = ?2 WHERE home = 0 AND seq = ?1",
            params![seq, local_path],
        )?;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn c(id: &str) -> ClientId {
        ClientId::try_from(id).unwrap()
    }

    fn photo() -> NewAttachment {
        NewAttachment {
            name: "holiday photo.jpg".into(),
            size: 123_456,
            mime: "image/jpeg".into(),
            thumbnail: Some(Thumbnail {
                mime: "image/jpeg".into(),
                width: 320,
                height: 240,
                bytes: vec![0xff, 0xd8, 0xff, 0xd9],
            }),
            offer: Some("{\"key\":\"secret\"}".into()),
            local_path: None,
            transfer_id: None,
            state: TransferState::Offered,
        }
    }

    fn received(db: &Db, id: &str, body: &str) -> i64 {
        db.insert_received(&Received {
            message_id: id,
            peer_id: &c("bob"),
            body,
            at_ms: 1_000,
            sent_at: Some(1_000),
            authenticated: true,
            read: false,
            reply: None,
        })
        .unwrap()
        .expect("stored")
        .seq
    }

    #[test]
    fn a_file_message_shows_its_file_across_a_reopen_and_is_found_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite3");
        let seq;
        {
            let db = Db::open(&path).unwrap();
            seq = received(&db, "m-1", "holiday photo.jpg");
            db.attach_file(seq, &photo()).unwrap();
        }
        let db = Db::open(&path).unwrap();
        let page = db.page(&c("bob"), None, 50).unwrap();
        let file = page[0].extra.attachment.clone().expect("the file is shown");
        assert_eq!(file.name, "holiday photo.jpg");
        assert_eq!(file.size, 123_456);
        assert_eq!(file.state, TransferState::Offered);
        assert!(file.is_image());
        assert_eq!(file.thumbnail.unwrap().width, 320);
        assert_eq!(
            db.file_offer(seq).unwrap().as_deref(),
            Some("{\"key\":\"secret\"}")
        );
        let query = crate::storage::search::SearchQuery::parse("holiday").unwrap();
        let (hits, _) = db.search(&query, None, 10).unwrap();
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].seq, seq);
    }

    #[test]
    fn a_transfer_moves_forward_and_a_final_state_is_never_left() {
        let db = Db::open_in_memory().unwrap();
        let seq = received(&db, "m-1", "report.pdf");
        db.attach_file(seq, &photo()).unwrap();
        assert!(db
            .update_transfer("t-unknown", TransferState::Running, 5, None)
            .unwrap()
            .is_none());
        db.start_transfer(seq, "t-1", "/data/files/report.pdf")
            .unwrap();
        let row = db
            .update_transfer("t-1", TransferState::Running, 1_000, None)
            .unwrap()
            .unwrap();
        assert_eq!(row.seq, seq);
        assert_eq!(row.peer_id, "bob");
        assert!(!row.outgoing);
        let file = db.attachment(seq).unwrap().unwrap();
        assert_eq!((file.state, file.done), (TransferState::Running, 1_000));
        assert_eq!(file.local_path.as_deref(), Some("/data/files/report.pdf"));

        db.update_transfer("t-1", TransferState::Cancelled, 1_000, None)
            .unwrap();
        // A late progress report of the cancelled transfer changes nothing.
        db.update_transfer("t-1", TransferState::Running, 2_000, None)
            .unwrap();
        let file = db.attachment(seq).unwrap().unwrap();
        assert_eq!((file.state, file.done), (TransferState::Cancelled, 1_000));
        // Downloading again starts a new transfer.
        db.start_transfer(seq, "t-2", "/data/files/report.pdf")
            .unwrap();
        db.update_transfer("t-2", TransferState::Failed, 10, Some(&"x".repeat(2_000)))
            .unwrap();
        let file = db.attachment(seq).unwrap().unwrap();
        assert_eq!(file.state, TransferState::Failed);
        assert_eq!(file.error.unwrap().len(), MAX_ERROR_BYTES);
        assert!(matches!(
            db.start_transfer(seq + 100, "t-3", "/x"),
            Err(StorageError::Invalid(_))
        ));
    }

    #[test]
    fn declared_names_types_and_thumbnails_are_bounded() {
        let db = Db::open_in_memory().unwrap();
        let seq = received(&db, "m-1", "big");
        let mut file = photo();
        file.name = "é".repeat(300);
        file.mime = "x".repeat(500);
        file.thumbnail.as_mut().unwrap().bytes = vec![0; MAX_THUMBNAIL_BYTES + 1];
        db.attach_file(seq, &file).unwrap();
        let stored = db.attachment(seq).unwrap().unwrap();
        assert!(stored.name.len() <= MAX_NAME_BYTES);
        assert!(stored.name.chars().all(|ch| ch == 'é'));
        assert_eq!(stored.mime.len(), MAX_MIME_BYTES);
        assert_eq!(stored.thumbnail, None);

        let mut wide = photo();
        wide.thumbnail.as_mut().unwrap().width = MAX_THUMBNAIL_SIDE + 1;
        db.attach_file(seq, &wide).unwrap();
        assert_eq!(db.attachment(seq).unwrap().unwrap().thumbnail, None);

        let mut long_offer = photo();
        long_offer.offer = Some("o".repeat(MAX_OFFER_BYTES + 1));
        assert!(matches!(
            db.attach_file(seq, &long_offer),
            Err(StorageError::Invalid(_))
        ));
    }

    #[test]
    fn deleting_a_file_message_for_me_forgets_its_file() {
        let db = Db::open_in_memory().unwrap();
        let seq = received(&db, "m-1", "a.txt");
        db.attach_file(seq, &photo()).unwrap();
        db.delete_for_me(&c("bob"), seq).unwrap();
        assert_eq!(db.attachment(seq).unwrap(), None);
    }

    #[test]
    fn a_version_9_file_has_its_files_of_both_kinds_moved_into_one_table() {
        use crate::contract::DeliveryStatus;
        use crate::storage::groups::{GroupLineKind, NewGroupLine};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite3");
        let (chat_seq, group_seq);
        {
            let db = Db::open(&path).unwrap();
            chat_seq = received(&db, "m-1", "holiday photo.jpg");
            db.ensure_group("ab01", "Climbing", 1).unwrap();
            group_seq = db
                .insert_group_line(&NewGroupLine {
                    group_id: "ab01",
                    kind: GroupLineKind::Message,
                    sender: Some(&c("carol")),
                    message_id: "g-1",
                    outgoing: false,
                    body: "topo.pdf",
                    at: 2_000,
                    status: DeliveryStatus::Received,
                })
                .unwrap()
                .unwrap()
                .seq;
        }
        // The same `seq` in both histories (each counts from 1): what version 9 could not mix
        // up, and the merged table must not either.
        assert_eq!(chat_seq, group_seq);
        {
            // What version 9 left on disk: two tables, with real rows.
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(&format!(
                "DROP TRIGGER messages_files_delete; DROP TRIGGER group_messages_files_delete;
                 DROP TABLE attachments; {V9_ATTACHMENTS}
                 CREATE TABLE group_attachments(
                     seq INTEGER PRIMARY KEY, name TEXT NOT NULL, size INTEGER NOT NULL,
                     mime TEXT NOT NULL, thumb_mime TEXT, thumb_width INTEGER,
                     thumb_height INTEGER, thumb BLOB, offer TEXT, local_path TEXT,
                     transfer_id TEXT, state TEXT NOT NULL, done INTEGER NOT NULL DEFAULT 0,
                     error TEXT);
                 INSERT INTO attachments(seq, name, size, mime, thumb_mime, thumb_width,
                     thumb_height, thumb, offer, state)
                     VALUES ({chat_seq}, 'holiday photo.jpg', 123456, 'image/jpeg',
                             'image/jpeg', 320, 240, x'ffd8ffd9', '{{\"key\":\"chat\"}}',
                             'offered');
                 INSERT INTO group_attachments(seq, name, size, mime, offer, local_path,
                     transfer_id, state, done)
                     VALUES ({group_seq}, 'topo.pdf', 9000, 'application/pdf',
                             '{{\"key\":\"group\"}}', '/data/files/g1-topo.pdf', 't-g',
                             'running', 100);
                 PRAGMA user_version = 9;"
            ))
            .unwrap();
        }
        let db = Db::open(&path).unwrap();
        let version: i64 = db
            .conn()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, crate::storage::db::SCHEMA_VERSION);
        let twin: bool = db
            .conn()
            .prepare("SELECT 1 FROM sqlite_master WHERE name = 'group_attachments'")
            .unwrap()
            .exists([])
            .unwrap();
        assert!(!twin, "the twin table is gone");
        // Each file is still its own message's.
        let photo = db.attachment(chat_seq).unwrap().unwrap();
        assert_eq!(photo.name, "holiday photo.jpg");
        assert_eq!(photo.thumbnail.unwrap().width, 320);
        assert_eq!(
            db.file_offer(chat_seq).unwrap().as_deref(),
            Some("{\"key\":\"chat\"}")
        );
        let topo = db
            .attachment_in(FileHome::Group, group_seq)
            .unwrap()
            .unwrap();
        assert_eq!((topo.name.as_str(), topo.done), ("topo.pdf", 100));
        assert_eq!(
            db.file_offer_in(FileHome::Group, group_seq)
                .unwrap()
                .as_deref(),
            Some("{\"key\":\"group\"}")
        );
        let page = db.page(&c("bob"), None, 10).unwrap();
        assert_eq!(
            page[0].extra.attachment.as_ref().unwrap().name,
            "holiday photo.jpg"
        );
        let lines = db.group_page("ab01", None, 10).unwrap();
        assert_eq!(lines[0].attachment.as_ref().unwrap().name, "topo.pdf");
        // The moved group transfer goes on through the one code path.
        let row = db
            .update_transfer("t-g", TransferState::Completed, 9000, None)
            .unwrap()
            .unwrap();
        assert_eq!(row.group_id.as_deref(), Some("ab01"));
        assert_eq!(
            db.attachment_in(FileHome::Group, group_seq)
                .unwrap()
                .unwrap()
                .state,
            TransferState::Completed
        );
        assert_eq!(
            db.attachment(chat_seq).unwrap().unwrap().state,
            TransferState::Offered
        );
        // Deleting the 1:1 message takes only its own file.
        db.delete_for_me(&c("bob"), chat_seq).unwrap();
        assert_eq!(db.attachment(chat_seq).unwrap(), None);
        assert!(db
            .attachment_in(FileHome::Group, group_seq)
            .unwrap()
            .is_some());
    }
}
