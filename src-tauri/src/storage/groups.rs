//! Group conversations (schema version 8): each MLS group this device is or was in, and its
//! history. The group's secrets are not here (they live in the MLS state file, docs/mls.md,
//! *Desktop*); this is what the person sees.
//!
//! - `groups(group_id PK, name, unread, created_at, left)`: `group_id` is the MLS group id in
//!   lowercase hex; `name` the name the group context carries (authenticated); `left` is set
//!   once this device is out of it (it left or was removed): its history stays readable and it
//!   takes no more messages.
//! - `group_messages(seq PK, group_id, kind, sender, message_id, outgoing, body, at, status)`,
//!   unique on `(group_id, sender, message_id)`: `kind` is a message or a system line (a join,
//!   a leave, a removal, a rename, a key change). An incoming message is a duplicate only of one
//!   from the same sender in the same group (a sender chooses its ids). Our own messages are
//!   keyed by a local id and wait as `pending` until the server takes them: the rows with
//!   `outgoing = 1 AND status = pending` are the group outbox, sent oldest first.
//! - A group file (schema 9) is a message line whose `body` is the file's name, with an
//!   `attachments` row of `home = 1` ([`super::files`]); our own waits as `pending` until its upload
//!   is done, but is not in the outbox: the library sends the file message itself.
//! - Replies, edits, deletes and reactions (schema 12): the columns and tables of
//!   [`super::content`] (`wire_id`, `edited_at`, `deleted`, `reply_*`, `rev`;
//!   `group_message_versions`, `group_reactions`), changed by the same code as the 1:1 ones. A line
//!   is named by `(group_id, sender, wire_id)`: another member's by the id it came with, ours by
//!   the id the library sent it with, recorded when the server took it ([`Db::mark_group_sent`]).
//!   Our own edits, deletes and reactions wait in `group_changes` (oldest first) until the
//!   server takes them, like our texts.

use rusqlite::{params, Connection, OptionalExtension};

use lattice_peer::content::Content;
use lattice_peer::KnownMessage;
use lattice_protocol::{ClientId, MessageId};

use super::content::GROUPS;
use super::db::Db;
use super::error::StorageError;
use super::files::{attachment_columns, group_attachments, Attachment, FileHome, NewAttachment};
use super::message::{MessageExtra, ReplyRef};
use crate::contract::DeliveryStatus;

const GROUPS_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS groups(
    group_id   TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    unread     INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    left       INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS group_messages(
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    group_id   TEXT NOT NULL,
    kind       INTEGER NOT NULL,
    sender     TEXT NOT NULL,
    message_id TEXT NOT NULL,
    outgoing   INTEGER NOT NULL,
    body       TEXT NOT NULL,
    at         INTEGER NOT NULL,
    status     INTEGER NOT NULL,
    UNIQUE(group_id, sender, message_id)
);
CREATE INDEX IF NOT EXISTS group_messages_by_group ON group_messages(group_id, seq);
CREATE INDEX IF NOT EXISTS group_outbox ON group_messages(seq)
    WHERE outgoing = 1 AND status = 0;
";

/// Version 12: our own edits, deletes and reactions in groups, waiting for the server.
const GROUP_CHANGES_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS group_changes(
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    group_id   TEXT NOT NULL,
    kind       TEXT NOT NULL,
    body       TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
";

/// Longest group id kept, in bytes (MLS group ids made by `lattice-mls` are 16 to 32).
pub const MAX_GROUP_ID_BYTES: usize = 64;

/// Whether `key` is a group id as stored: lowercase hex of 1 to [`MAX_GROUP_ID_BYTES`] bytes.
pub fn is_group_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 2 * MAX_GROUP_ID_BYTES
        && key.len().is_multiple_of(2)
        && key
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Schema version 8: creates the group tables (idempotent; their files' table is version 9's,
/// in [`super::files`]).
///
/// # Errors
/// [`StorageError::Sqlite`].
pub(crate) fn migrate(conn: &Connection) -> Result<(), StorageError> {
    conn.execute_batch(GROUPS_SCHEMA)?;
    // Version 9: the groups' full-text index.
    super::search::migrate_groups(conn)?;
    // Version 12: replies, edits, deletes and reactions.
    super::content::migrate_groups(conn)?;
    conn.execute_batch(GROUP_CHANGES_SCHEMA)?;
    Ok(())
}

/// What a row of a group's history is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupLineKind {
    /// A message a member wrote.
    Message,
    /// A line the app writes: someone joined, left, was removed, renamed the group, a key
    /// changed.
    System,
}

impl GroupLineKind {
    /// The stored integer.
    pub fn to_db(self) -> i64 {
        match self {
            Self::Message => 0,
            Self::System => 1,
        }
    }

    /// The kind stored as `v` (anything but 1 reads as a message).
    pub fn from_db(v: i64) -> Self {
        if v == 1 {
            Self::System
        } else {
            Self::Message
        }
    }
}

/// One group this device is or was in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRecord {
    /// The MLS group id, lowercase hex.
    pub group_id: String,
    /// Its name.
    pub name: String,
    /// Messages received since it was last read.
    pub unread: i64,
    /// This device left or was removed.
    pub left: bool,
    /// The latest line (message or system line), if any.
    pub last_body: Option<String>,
    /// Who wrote the latest message (empty for a system line).
    pub last_sender: Option<String>,
    /// Whether the latest line is ours.
    pub last_outgoing: bool,
    /// When (unix ms), or when the group was first seen.
    pub last_at: Option<i64>,
}

/// One line of a group's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupLine {
    /// Position in the database; orders the history and is the paging cursor.
    pub seq: i64,
    /// The group (hex id).
    pub group_id: String,
    /// A message or a system line.
    pub kind: GroupLineKind,
    /// Who wrote it (a member id), or who made the change; empty when nobody is named.
    pub sender: String,
    /// The sender's message id (ours: a local id).
    pub message_id: String,
    /// Whether we wrote it.
    pub outgoing: bool,
    /// The text.
    pub body: String,
    /// Unix ms: when we wrote it, or the server's timestamp.
    pub at: i64,
    /// Delivery state (incoming and system lines: `received`).
    pub status: DeliveryStatus,
    /// The file, for a file message.
    pub attachment: Option<Attachment>,
    /// Its wire id, edit time, tombstone, the message it answers, revision and reactions (schema
    /// 12; `extra.attachment` is always `None`: the file is [`GroupLine::attachment`]).
    pub extra: MessageExtra,
}

/// One of our edits, deletes or reactions waiting in the group outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupChange {
    /// Its place in the queue.
    pub id: i64,
    /// The group (hex id).
    pub group_id: String,
    /// What to send.
    pub content: Content,
}

/// A line to add to a group's history.
#[derive(Debug, Clone, Copy)]
pub struct NewGroupLine<'a> {
    /// The group (hex id).
    pub group_id: &'a str,
    /// A message or a system line.
    pub kind: GroupLineKind,
    /// The member who wrote it or made the change, if any.
    pub sender: Option<&'a ClientId>,
    /// Its id: the sender's message id, or a fresh local one.
    pub message_id: &'a str,
    /// Whether we wrote it.
    pub outgoing: bool,
    /// The text.
    pub body: &'a str,
    /// Unix ms.
    pub at: i64,
    /// Delivery state.
    pub status: DeliveryStatus,
}

/// A line's columns, then what [`MessageExtra::from_row`] reads (its reactions folded, the
/// `seq` of the line a reply answers), its file's after them, over [`LINE_FROM`].
const LINE_COLUMNS: &str = concat!(
    "seq, group_id, kind, sender, message_id, outgoing, body, at, status,
     wire_id, edited_at, deleted, reply_sender, reply_id, reply_excerpt, rev,
     (SELECT group_concat(r.reactor || char(31) || r.emoji, char(30))
      FROM group_reactions r WHERE r.seq = group_messages.seq),
     (SELECT t.seq FROM group_messages t
      WHERE t.group_id = group_messages.group_id AND t.sender = group_messages.reply_sender
        AND t.wire_id = group_messages.reply_id), ",
    attachment_columns!()
);
/// The lines with their files.
const LINE_FROM: &str = concat!(
    "group_messages LEFT JOIN ",
    group_attachments!(),
    " a USING (seq)"
);

fn row_to_line(r: &rusqlite::Row<'_>) -> rusqlite::Result<GroupLine> {
    let mut extra = MessageExtra::from_row(r, 9)?;
    Ok(GroupLine {
        attachment: extra.attachment.take(),
        extra,
        seq: r.get(0)?,
        group_id: r.get(1)?,
        kind: GroupLineKind::from_db(r.get(2)?),
        sender: r.get(3)?,
        message_id: r.get(4)?,
        outgoing: r.get::<_, i64>(5)? != 0,
        body: r.get(6)?,
        at: r.get(7)?,
        status: DeliveryStatus::from_rank(r.get(8)?),
    })
}

impl Db {
    /// Makes sure `group_id` is a known group named `name` (the name is kept if it is known
    /// already; [`Db::rename_group`] changes it). Returns whether it was new.
    ///
    /// # Errors
    /// [`StorageError::Sqlite`].
    pub fn ensure_group(
        &self,
        group_id: &str,
        name: &str,
        now_ms: i64,
    ) -> Result<bool, StorageError> {
        let n = self.conn().execute(
            "INSERT OR IGNORE INTO groups(group_id, name, created_at) VALUES (?1, ?2, ?3)",
            params![group_id, name, now_ms],
        )?;
        Ok(n > 0)
    }

    /// Whether `group_id` is a known group.
    ///
    /// # Errors
    /// [`StorageError::Sqlite`].
    pub fn group_known(&self, group_id: &str) -> Result<bool, StorageError> {
        Ok(self
            .conn()
            .prepare_cached("SELECT 1 FROM groups WHERE group_id = ?1")?
            .exists(params![group_id])?)
    }

    /// Renames a group (a rename Commit was applied).
    ///
    /// # Errors
    /// [`StorageError::Sqlite`].
    pub fn rename_group(&self, group_id: &str, name: &str) -> Result<(), StorageError> {
        self.conn().execute(
            "UPDATE groups SET name = ?2 WHERE group_id = ?1",
            params![group_id, name],
        )?;
        Ok(())
    }

    /// Marks a group as left (or rejoined: `false`, when a Welcome to it arrives again).
    ///
    /// # Errors
    /// [`StorageError::Sqlite`].
    pub fn set_group_left(&self, group_id: &str, left: bool) -> Result<(), StorageError> {
        self.conn().execute(
            "UPDATE groups SET left = ?2 WHERE group_id = ?1",
            params![group_id, left],
        )?;
        Ok(())
    }

    /// Every group, most recent activity first.
    ///
    /// # Errors
    /// [`StorageError::Sqlite`].
    pub fn groups(&self) -> Result<Vec<GroupRecord>, StorageError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT g.group_id, g.name, g.unread, g.left,
                    CASE WHEN m.deleted THEN 'This message was deleted' ELSE m.body END,
                    m.sender, m.outgoing,
                    COALESCE(m.at, g.created_at), m.kind
             FROM groups g
             LEFT JOIN group_messages m ON m.seq =
                 (SELECT MAX(seq) FROM group_messages WHERE group_id = g.group_id)
             ORDER BY COALESCE(m.at, g.created_at) DESC",
        )?;
        let rows = stmt.query_map([], |r| {
            let system = r.get::<_, Option<i64>>(8)? == Some(GroupLineKind::System.to_db());
            let sender: Option<String> = r.get(5)?;
            Ok(GroupRecord {
                group_id: r.get(0)?,
                name: r.get(1)?,
                unread: r.get(2)?,
                left: r.get::<_, i64>(3)? != 0,
                last_body: r.get(4)?,
                last_sender: if system { None } else { sender },
                last_outgoing: r.get::<_, Option<i64>>(6)?.unwrap_or(0) != 0,
                last_at: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// One group, if known.
    ///
    /// # Errors
    /// [`StorageError::Sqlite`].
    pub fn group(&self, group_id: &str) -> Result<Option<GroupRecord>, StorageError> {
        Ok(self.groups()?.into_iter().find(|g| g.group_id == group_id))
    }

    /// Adds a line to a group's history: a received message counts as unread. Returns the
    /// stored line, or `None` for an incoming message already stored (redelivered).
    ///
    /// # Errors
    /// [`StorageError::Sqlite`].
    pub fn insert_group_line(
        &self,
        line: &NewGroupLine<'_>,
    ) -> Result<Option<GroupLine>, StorageError> {
        self.insert_group_line_with(line, None, None)
    }

    /// Adds a reply to a group's history: the line and the message it answers, quoted.
    ///
    /// # Errors
    /// [`StorageError::Sqlite`].
    pub fn insert_group_reply(
        &self,
        line: &NewGroupLine<'_>,
        reply: &ReplyRef,
    ) -> Result<Option<GroupLine>, StorageError> {
        self.insert_group_line_with(line, None, Some(reply))
    }

    /// Adds a file message to a group's history: the line (its body the file's name) and its
    /// file in one transaction. `None` for an incoming one already stored.
    ///
    /// # Errors
    /// [`StorageError::Sqlite`]; [`StorageError::Invalid`] for an offer out of bounds (then
    /// nothing is stored).
    pub fn insert_group_file(
        &self,
        line: &NewGroupLine<'_>,
        file: &NewAttachment,
    ) -> Result<Option<GroupLine>, StorageError> {
        self.insert_group_line_with(line, Some(file), None)
    }

    /// The line of `group_id` with `seq`, if there is one.
    ///
    /// # Errors
    /// [`StorageError::Sqlite`].
    pub fn group_line(&self, group_id: &str, seq: i64) -> Result<Option<GroupLine>, StorageError> {
        Ok(self
            .conn()
            .query_row(
                &format!("SELECT {LINE_COLUMNS} FROM {LINE_FROM} WHERE seq = ?1 AND group_id = ?2"),
                params![seq, group_id],
                row_to_line,
            )
            .optional()?)
    }

    fn insert_group_line_with(
        &self,
        line: &NewGroupLine<'_>,
        file: Option<&NewAttachment>,
        reply: Option<&ReplyRef>,
    ) -> Result<Option<GroupLine>, StorageError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let sender = line.sender.map_or("", ClientId::as_str);
        // Another member's message is named by the id it came with; ours gets the id it is
        // sent with (`mark_group_sent`); a system line is never referred to.
        let wire_id = (line.kind == GroupLineKind::Message && !line.outgoing && !sender.is_empty())
            .then_some(line.message_id);
        let n = tx.execute(
            "INSERT OR IGNORE INTO group_messages(group_id, kind, sender, message_id, outgoing,
                                                  body, at, status, wire_id, reply_sender,
                                                  reply_id, reply_excerpt)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            params![
                line.group_id,
                line.kind.to_db(),
                sender,
                line.message_id,
                line.outgoing,
                line.body,
                line.at,
                line.status.rank(),
                wire_id,
                reply.map(|r| r.sender.as_str()),
                reply.map(|r| r.message_id.as_str()),
                reply.map(|r| r.excerpt.as_str()),
            ],
        )?;
        if n == 0 {
            return Ok(None);
        }
        let seq = tx.last_insert_rowid();
        if let Some(file) = file {
            super::files::insert(&tx, FileHome::Group, seq, file)?;
        }
        if line.kind == GroupLineKind::Message && !line.outgoing {
            tx.execute(
                "UPDATE groups SET unread = unread + 1 WHERE group_id = ?1",
                params![line.group_id],
            )?;
        }
        let stored = tx.query_row(
            &format!("SELECT {LINE_COLUMNS} FROM {LINE_FROM} WHERE seq = ?1"),
            params![seq],
            row_to_line,
        )?;
        tx.commit()?;
        Ok(Some(stored))
    }

    /// A page of a group's history, oldest first: the latest `limit` lines, or those before
    /// `before` (a `seq`).
    ///
    /// # Errors
    /// [`StorageError::Sqlite`].
    pub fn group_page(
        &self,
        group_id: &str,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<GroupLine>, StorageError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {LINE_COLUMNS} FROM {LINE_FROM}
             WHERE group_id = ?1 AND seq < ?2 ORDER BY seq DESC LIMIT ?3"
        ))?;
        let mut lines: Vec<GroupLine> = stmt
            .query_map(
                params![group_id, before.unwrap_or(i64::MAX), limit],
                row_to_line,
            )?
            .collect::<Result<_, _>>()?;
        lines.reverse();
        Ok(lines)
    }

    /// A page of a group's history after `after` (a `seq`), oldest first: what an export
    /// reads page by page.
    ///
    /// # Errors
    /// [`StorageError::Sqlite`].
    pub fn group_page_after(
        &self,
        group_id: &str,
        after: i64,
        limit: u32,
    ) -> Result<Vec<GroupLine>, StorageError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {LINE_COLUMNS} FROM {LINE_FROM}
             WHERE group_id = ?1 AND seq > ?2 ORDER BY seq ASC LIMIT ?3"
        ))?;
        let lines = stmt
            .query_map(
                params![group_id, after, limit.min(super::db::MAX_PAGE + 1)],
                row_to_line,
            )?
            .collect::<Result<_, _>>()?;
        Ok(lines)
    }

    /// Clears a group's unread count.
    ///
    /// # Errors
    /// [`StorageError::Sqlite`].
    pub fn mark_group_read(&self, group_id: &str) -> Result<(), StorageError> {
        self.conn().execute(
            "UPDATE groups SET unread = 0 WHERE group_id = ?1",
            params![group_id],
        )?;
        Ok(())
    }

    /// The newest message another member sent to the group, with the id it came with: what a
    /// read receipt names ("read up to here"). `None` when there is none.
    ///
    /// # Errors
    /// [`StorageError::Sqlite`].
    pub fn newest_incoming_group_line(
        &self,
        group_id: &str,
    ) -> Result<Option<GroupLine>, StorageError> {
        Ok(self
            .conn()
            .prepare_cached(&format!(
                "SELECT {LINE_COLUMNS} FROM {LINE_FROM}
                 WHERE group_id = ?1 AND outgoing = 0 AND kind = ?2 AND wire_id IS NOT NULL
                 ORDER BY seq DESC LIMIT 1"
            ))?
            .query_row(
                params![group_id, GroupLineKind::Message.to_db()],
                row_to_line,
            )
            .optional()?)
    }

    /// Our group messages the server has not taken yet, oldest first (at most `limit`).
    ///
    /// # Errors
    /// [`StorageError::Sqlite`].
    pub fn group_outbox(&self, limit: u32) -> Result<Vec<GroupLine>, StorageError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {LINE_COLUMNS} FROM {LINE_FROM}
             WHERE outgoing = 1 AND status = ?1 AND a.seq IS NULL ORDER BY seq LIMIT ?2"
        ))?;
        let lines = stmt
            .query_map(params![DeliveryStatus::Pending.rank(), limit], row_to_line)?
            .collect::<Result<_, _>>()?;
        Ok(lines)
    }

    /// Moves one of our group messages on (only forwards, by
    /// [`DeliveryStatus::may_replace`]); the line as it is now, or `None` if nothing changed.
    ///
    /// # Errors
    /// [`StorageError::Sqlite`].
    pub fn advance_group_status(
        &self,
        seq: i64,
        status: DeliveryStatus,
    ) -> Result<Option<GroupLine>, StorageError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let line = tx
            .query_row(
                &format!("SELECT {LINE_COLUMNS} FROM {LINE_FROM} WHERE seq = ?1 AND outgoing = 1"),
                params![seq],
                row_to_line,
            )
            .optional()?;
        let Some(mut line) = line else {
            return Ok(None);
        };
        if !status.may_replace(line.status) {
            return Ok(None);
        }
        tx.execute(
            "UPDATE group_messages SET status = ?2 WHERE seq = ?1",
            params![seq, status.rank()],
        )?;
        tx.commit()?;
        line.status = status;
        Ok(Some(line))
    }

    /// One of our group messages was taken by the server under `wire_id`: it moves to `sent`
    /// (as [`Db::advance_group_status`]) and can be referred to from now on.
    ///
    /// # Errors
    /// [`StorageError::Sqlite`].
    pub fn mark_group_sent(
        &self,
        seq: i64,
        wire_id: &MessageId,
    ) -> Result<Option<GroupLine>, StorageError> {
        self.conn().execute(
            "UPDATE group_messages SET wire_id = ?2
             WHERE seq = ?1 AND outgoing = 1 AND wire_id IS NULL",
            params![seq, wire_id.as_str()],
        )?;
        self.advance_group_status(seq, DeliveryStatus::Sent)
    }

    fn group_target(
        conn: &Connection,
        group_id: &str,
        sender: &ClientId,
        wire_id: &str,
    ) -> Result<Option<i64>, StorageError> {
        Ok(conn
            .query_row(
                "SELECT seq FROM group_messages
                 WHERE group_id = ?1 AND sender = ?2 AND wire_id = ?3 AND kind = 0",
                params![group_id, sender.as_str(), wire_id],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// What the history knows of the message `wire_id` that `sender` (a member, or us) wrote
    /// in group `group_id`, for the library's checks.
    ///
    /// # Errors
    /// [`StorageError::Sqlite`].
    pub fn known_in_group(
        &self,
        group_id: &str,
        sender: &ClientId,
        wire_id: &str,
    ) -> Result<Option<KnownMessage>, StorageError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT at, deleted, edited_at FROM group_messages
                 WHERE group_id = ?1 AND sender = ?2 AND wire_id = ?3 AND kind = 0",
                params![group_id, sender.as_str(), wire_id],
                |r| {
                    let at: i64 = r.get(0)?;
                    let edited_at: Option<i64> = r.get(2)?;
                    Ok(KnownMessage {
                        sent_at: u64::try_from(at).unwrap_or(0),
                        deleted: r.get(1)?,
                        last_edit_at: edited_at.map(|t| u64::try_from(t).unwrap_or(0)),
                    })
                },
            )
            .optional()?)
    }

    /// Applies a change to the line `wire_id` that `sender` wrote in group `group_id`, with the
    /// 1:1 rules ([`super::content`]): `change` runs on the line's `seq` in one transaction.
    /// Returns the changed line, `None` when nothing changed (an unknown line, a tombstone, a
    /// replay).
    fn change_group_line(
        &self,
        group_id: &str,
        sender: &ClientId,
        wire_id: &str,
        change: impl FnOnce(&Connection, i64) -> Result<bool, StorageError>,
    ) -> Result<Option<GroupLine>, StorageError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let Some(seq) = Self::group_target(&tx, group_id, sender, wire_id)? else {
            return Ok(None);
        };
        if !change(&tx, seq)? {
            return Ok(None);
        }
        let line = tx.query_row(
            &format!("SELECT {LINE_COLUMNS} FROM {LINE_FROM} WHERE seq = ?1"),
            params![seq],
            row_to_line,
        )?;
        tx.commit()?;
        Ok(Some(line))
    }

    /// Replaces the text of `sender`'s message `wire_id` in group `group_id` (an edit signed at
    /// `edited_at`), keeping the old text as a version.
    ///
    /// # Errors
    /// [`StorageError::Sqlite`].
    pub fn apply_group_edit(
        &self,
        group_id: &str,
        sender: &ClientId,
        wire_id: &str,
        text: &str,
        edited_at: i64,
    ) -> Result<Option<GroupLine>, StorageError> {
        self.change_group_line(group_id, sender, wire_id, |tx, seq| {
            GROUPS.edit(tx, seq, text, edited_at)
        })
    }

    /// Deletes `sender`'s message `wire_id` in group `group_id` for everyone: a tombstone stays.
    ///
    /// # Errors
    /// [`StorageError::Sqlite`].
    pub fn apply_group_delete(
        &self,
        group_id: &str,
        sender: &ClientId,
        wire_id: &str,
    ) -> Result<Option<GroupLine>, StorageError> {
        self.change_group_line(group_id, sender, wire_id, |tx, seq| GROUPS.delete(tx, seq))
    }

    /// Sets (`add`) or takes back `reactor`'s reaction to `author`'s message `wire_id` in
    /// group `group_id`: one reaction per member per message, as in a 1:1 chat.
    ///
    /// # Errors
    /// [`StorageError::Sqlite`].
    #[allow(clippy::too_many_arguments)]
    pub fn set_group_reaction(
        &self,
        group_id: &str,
        author: &ClientId,
        wire_id: &str,
        reactor: &ClientId,
        emoji: &str,
        add: bool,
        at: i64,
    ) -> Result<Option<GroupLine>, StorageError> {
        self.change_group_line(group_id, author, wire_id, |tx, seq| {
            GROUPS.react(tx, seq, reactor, emoji, add, at)
        })
    }

    /// Queues one of our edits, deletes or reactions for group `group_id`: durable like a
    /// message, sent after what was queued before it.
    ///
    /// # Errors
    /// [`StorageError::Content`] if it breaks a bound; [`StorageError::Sqlite`].
    pub fn enqueue_group_change(
        &self,
        group_id: &str,
        content: &Content,
        now_ms: i64,
    ) -> Result<(), StorageError> {
        let (kind, body) = content.encode()?;
        self.conn().execute(
            "INSERT INTO group_changes(group_id, kind, body, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![group_id, kind, body, now_ms],
        )?;
        Ok(())
    }

    /// Our queued group changes, oldest first (at most `limit`). One that no longer decodes
    /// (never written by this code) is dropped from the queue.
    ///
    /// # Errors
    /// [`StorageError::Sqlite`].
    pub fn group_changes(&self, limit: u32) -> Result<Vec<GroupChange>, StorageError> {
        let rows: Vec<(i64, String, String, String)> = {
            let conn = self.conn();
            let mut stmt = conn.prepare_cached(
                "SELECT id, group_id, kind, body FROM group_changes ORDER BY id LIMIT ?1",
            )?;
            let rows = stmt.query_map(params![limit], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })?;
            rows.collect::<Result<_, _>>()?
        };
        let mut out = Vec::with_capacity(rows.len());
        for (id, group_id, kind, body) in rows {
            match Content::decode(&kind, &body) {
                Ok(content) => out.push(GroupChange {
                    id,
                    group_id,
                    content,
                }),
                Err(e) => {
                    tracing::warn!(id, error = %e, "undecodable group change dropped");
                    self.group_change_done(id)?;
                }
            }
        }
        Ok(out)
    }

    /// A queued group change was taken by the server (or refused for good): out of the queue.
    ///
    /// # Errors
    /// [`StorageError::Sqlite`].
    pub fn group_change_done(&self, id: i64) -> Result<(), StorageError> {
        self.conn()
            .execute("DELETE FROM group_changes WHERE id = ?1", params![id])?;
        Ok(())
    }

    /// Unread messages in every group.
    ///
    /// # Errors
    /// [`StorageError::Sqlite`].
    pub fn total_group_unread(&self) -> Result<i64, StorageError> {
        Ok(self
            .conn()
            .query_row("SELECT COALESCE(SUM(unread), 0) FROM groups", [], |r| {
                r.get(0)
            })?)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::storage::content::ReplyRef;

    fn line<'a>(
        g: &'a str,
        sender: Option<&'a ClientId>,
        id: &'a str,
        body: &'a str,
    ) -> NewGroupLine<'a> {
        NewGroupLine {
            group_id: g,
            kind: GroupLineKind::Message,
            sender,
            message_id: id,
            outgoing: false,
            body,
            at: 10,
            status: DeliveryStatus::Received,
        }
    }

    /// A database file written by this version (`fill`), taken back to what an older one left
    /// on disk (`downgrade`, SQL), then opened again: the migration must bring it up.
    fn reopened_after(path: &std::path::Path, fill: impl FnOnce(&Db), downgrade: &str) -> Db {
        fill(&Db::open(path).unwrap());
        rusqlite::Connection::open(path)
            .unwrap()
            .execute_batch(downgrade)
            .unwrap();
        let db = Db::open(path).unwrap();
        let version: i64 = db
            .conn()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, crate::storage::db::SCHEMA_VERSION);
        db
    }

    #[test]
    fn group_lines_are_deduplicated_per_sender_counted_unread_and_paged() {
        let db = Db::open_in_memory().unwrap();
        let bob = ClientId::new("bob").unwrap();
        let carol = ClientId::new("carol").unwrap();
        assert!(db.ensure_group("aa", "Climbing", 1).unwrap());
        assert!(!db.ensure_group("aa", "Other name", 2).unwrap());
        assert!(db
            .insert_group_line(&line("aa", Some(&bob), "m1", "hi"))
            .unwrap()
            .is_some());
        // Redelivered: not stored twice, not counted twice.
        assert!(db
            .insert_group_line(&line("aa", Some(&bob), "m1", "hi"))
            .unwrap()
            .is_none());
        // Another sender may use the same id.
        assert!(db
            .insert_group_line(&line("aa", Some(&carol), "m1", "hey"))
            .unwrap()
            .is_some());
        let system = NewGroupLine {
            kind: GroupLineKind::System,
            ..line("aa", Some(&bob), "s1", "bob renamed the group")
        };
        db.insert_group_line(&system).unwrap();
        let g = db.group("aa").unwrap().unwrap();
        assert_eq!(g.name, "Climbing");
        assert_eq!(g.unread, 2, "system lines are not unread messages");
        assert_eq!(g.last_sender, None, "the latest line is a system line");
        assert_eq!(db.total_group_unread().unwrap(), 2);
        db.mark_group_read("aa").unwrap();
        assert_eq!(db.total_group_unread().unwrap(), 0);
        let page = db.group_page("aa", None, 2).unwrap();
        assert_eq!(page.len(), 2);
        assert_eq!(page[1].kind, GroupLineKind::System);
        let older = db.group_page("aa", Some(page[0].seq), 10).unwrap();
        assert_eq!(older.len(), 1);
        assert_eq!(older[0].body, "hi");
    }

    #[test]
    fn our_group_messages_wait_in_the_outbox_until_the_server_takes_them() {
        let db = Db::open_in_memory().unwrap();
        let me = ClientId::new("alice").unwrap();
        db.ensure_group("bb", "Team", 1).unwrap();
        let ours = NewGroupLine {
            outgoing: true,
            status: DeliveryStatus::Pending,
            ..line("bb", Some(&me), "local-1", "hello team")
        };
        let stored = db.insert_group_line(&ours).unwrap().unwrap();
        assert_eq!(db.group("bb").unwrap().unwrap().unread, 0);
        assert_eq!(db.group_outbox(10).unwrap(), vec![stored.clone()]);
        let sent = db
            .advance_group_status(stored.seq, DeliveryStatus::Sent)
            .unwrap()
            .unwrap();
        assert_eq!(sent.status, DeliveryStatus::Sent);
        assert!(db.group_outbox(10).unwrap().is_empty());
        // Never backwards.
        assert!(db
            .advance_group_status(stored.seq, DeliveryStatus::Pending)
            .unwrap()
            .is_none());
        assert!(db.group_outbox(10).unwrap().is_empty());
    }

    #[test]
    fn a_version_7_file_gains_the_group_tables_and_keeps_its_history() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lattice.sqlite3");
        let bob = ClientId::new("bob").unwrap();
        {
            let db = Db::open(&path).unwrap();
            db.insert_incoming("m1", &bob, "from before", 5, true, false)
                .unwrap();
        }
        // Make it what version 7 left on disk: no group tables.
        {
            let conn = rusqlite::Connection::open(&path).unwrap();
            conn.execute_batch(
                "DROP TABLE group_messages; DROP TABLE groups; PRAGMA user_version = 7;",
            )
            .unwrap();
        }
        let db = Db::open(&path).unwrap();
        let version: i64 = db
            .conn()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, crate::storage::db::SCHEMA_VERSION);
        assert_eq!(db.page(&bob, None, 10).unwrap()[0].body, "from before");
        assert!(db.groups().unwrap().is_empty());
        db.ensure_group("cc", "New", 1).unwrap();
        let line = line("cc", Some(&bob), "g1", "works");
        assert!(db.insert_group_line(&line).unwrap().is_some());
        assert_eq!(
            db.total_unread().unwrap(),
            2,
            "1:1 and group unread together"
        );
    }

    fn a_file(transfer: Option<&str>) -> NewAttachment {
        NewAttachment {
            name: "topo.pdf".into(),
            size: 90_000,
            mime: "application/pdf".into(),
            thumbnail: None,
            offer: Some("{\"key\":\"secret\"}".into()),
            local_path: None,
            transfer_id: transfer.map(str::to_owned),
            state: crate::storage::files::TransferState::Queued,
        }
    }

    #[test]
    fn a_version_8_file_gains_group_files_whose_transfers_move_and_stay_out_of_the_outbox() {
        use crate::storage::files::TransferState;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lattice.sqlite3");
        let bob = ClientId::new("bob").unwrap();
        let me = ClientId::new("alice").unwrap();
        {
            let db = Db::open(&path).unwrap();
            db.ensure_group("dd", "Climbing", 1).unwrap();
            db.insert_group_line(&line("dd", Some(&bob), "m1", "from before"))
                .unwrap();
        }
        // What version 8 left on disk: no group files.
        {
            let conn = rusqlite::Connection::open(&path).unwrap();
            conn.execute_batch(&format!(
                "DROP TRIGGER messages_files_delete; DROP TRIGGER group_messages_files_delete;
                 DROP TABLE attachments; {}
                 DROP TRIGGER group_messages_fts_insert;
                 DROP TRIGGER group_messages_fts_delete; DROP TRIGGER group_messages_fts_update;
                 DROP TABLE group_messages_fts; PRAGMA user_version = 8;",
                crate::storage::files::V9_ATTACHMENTS
            ))
            .unwrap();
        }
        let db = Db::open(&path).unwrap();
        let version: i64 = db
            .conn()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, crate::storage::db::SCHEMA_VERSION);
        let old = db.group_page("dd", None, 10).unwrap();
        assert_eq!(old[0].body, "from before");
        assert_eq!(old[0].attachment, None);
        // The history from before is in the new search index.
        let query = crate::storage::search::SearchQuery::parse("before").unwrap();
        let (hits, _) = db.search_groups(&query, None, 10).unwrap();
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].seq, old[0].seq);

        // Ours: pending while it uploads, yet not in the outbox (the library sends it).
        let ours = NewGroupLine {
            outgoing: true,
            status: DeliveryStatus::Pending,
            ..line("dd", Some(&me), "local-f", "topo.pdf")
        };
        let stored = db
            .insert_group_file(&ours, &a_file(Some("t-up")))
            .unwrap()
            .unwrap();
        assert_eq!(stored.attachment.as_ref().unwrap().name, "topo.pdf");
        assert!(db.group_outbox(10).unwrap().is_empty());
        let row = db
            .update_transfer("t-up", TransferState::Running, 500, None)
            .unwrap()
            .unwrap();
        assert_eq!(
            (row.seq, row.group_id.as_deref(), row.outgoing),
            (stored.seq, Some("dd"), true)
        );
        let now = db.group_line("dd", stored.seq).unwrap().unwrap();
        let file = now.attachment.unwrap();
        assert_eq!((file.state, file.done), (TransferState::Running, 500));
        assert_eq!(db.group_line("other", stored.seq).unwrap(), None);

        // Theirs: offered, counted unread, not stored twice, its offer kept for a download.
        let theirs = line("dd", Some(&bob), "m2", "video.bin");
        let mut offered = a_file(None);
        offered.state = TransferState::Offered;
        let got = db.insert_group_file(&theirs, &offered).unwrap().unwrap();
        assert!(db.insert_group_file(&theirs, &offered).unwrap().is_none());
        assert_eq!(db.group("dd").unwrap().unwrap().unread, 2);
        assert_eq!(
            db.file_offer_in(FileHome::Group, got.seq)
                .unwrap()
                .as_deref(),
            Some("{\"key\":\"secret\"}")
        );
        // Group and 1:1 seqs are counted apart: the 1:1 table knows nothing of it.
        assert_eq!(db.file_offer(got.seq).unwrap(), None);
        db.start_transfer_in(
            FileHome::Group,
            got.seq,
            "t-down",
            "/data/files/g2-video.bin",
        )
        .unwrap();
        db.update_transfer("t-down", TransferState::Completed, 90_000, None)
            .unwrap();
        let done = db.attachment_in(FileHome::Group, got.seq).unwrap().unwrap();
        assert_eq!(done.state, TransferState::Completed);
        assert_eq!(done.local_path.as_deref(), Some("/data/files/g2-video.bin"));
        // A late report cannot take a finished transfer back.
        db.update_transfer("t-down", TransferState::Running, 1, None)
            .unwrap();
        assert_eq!(
            db.attachment_in(FileHome::Group, got.seq)
                .unwrap()
                .unwrap()
                .state,
            TransferState::Completed
        );
        // An offer over the bound stores nothing.
        let mut huge = a_file(None);
        huge.offer = Some("o".repeat(crate::storage::files::MAX_OFFER_BYTES + 1));
        assert!(db
            .insert_group_file(&line("dd", Some(&bob), "m3", "huge"), &huge)
            .is_err());
        assert!(db
            .group_page("dd", None, 50)
            .unwrap()
            .iter()
            .all(|l| l.body != "huge"));
    }

    #[test]
    fn group_lines_take_replies_edits_deletes_and_reactions_by_author_and_wire_id() {
        let db = Db::open_in_memory().unwrap();
        let (me, bob, carol) = (
            ClientId::new("alice").unwrap(),
            ClientId::new("bob").unwrap(),
            ClientId::new("carol").unwrap(),
        );
        db.ensure_group("ee", "Crag", 1).unwrap();
        let theirs = db
            .insert_group_line(&line("ee", Some(&bob), "b1", "hello"))
            .unwrap()
            .unwrap();
        assert_eq!(
            theirs.extra.wire_id.as_deref(),
            Some("b1"),
            "theirs: its own id"
        );
        // Ours: no wire id until the server took it under the library's id.
        let ours = db
            .insert_group_line(&NewGroupLine {
                outgoing: true,
                status: DeliveryStatus::Pending,
                ..line("ee", Some(&me), "local-1", "mine")
            })
            .unwrap()
            .unwrap();
        assert_eq!(ours.extra.wire_id, None);
        let wire = MessageId::new("w-ours").unwrap();
        let sent = db.mark_group_sent(ours.seq, &wire).unwrap().unwrap();
        assert_eq!(sent.status, DeliveryStatus::Sent);
        assert_eq!(sent.extra.wire_id.as_deref(), Some("w-ours"));

        // A reply quotes bob's line and finds it here.
        let reply = ReplyRef {
            sender: bob.clone(),
            message_id: MessageId::new("b1").unwrap(),
            excerpt: "hello".into(),
        };
        let answer = db
            .insert_group_reply(&line("ee", Some(&carol), "c1", "hi bob"), &reply)
            .unwrap()
            .unwrap();
        let stored = answer.extra.reply.unwrap();
        assert_eq!(stored.to, reply);
        assert_eq!(stored.seq, Some(theirs.seq));

        // An edit names the author: carol cannot edit bob's line, bob can (once per time).
        assert!(db
            .apply_group_edit("ee", &carol, "b1", "forged", 5)
            .unwrap()
            .is_none());
        let edited = db
            .apply_group_edit("ee", &bob, "b1", "hello all", 5)
            .unwrap()
            .unwrap();
        assert_eq!(
            (edited.body.as_str(), edited.extra.edited_at),
            ("hello all", Some(5))
        );
        assert!(db
            .apply_group_edit("ee", &bob, "b1", "replayed", 5)
            .unwrap()
            .is_none());
        let versions = db.group_versions("ee", theirs.seq).unwrap();
        assert_eq!(versions.len(), 1);
        assert_eq!(versions[0].body, "hello");
        assert!(db.group_versions("other", theirs.seq).unwrap().is_empty());
        // The search index has the edited text, not the old one.
        let found = |q: &str| {
            let query = crate::storage::search::SearchQuery::parse(q).unwrap();
            db.search_groups(&query, None, 10).unwrap().0.len()
        };
        assert_eq!(found("all"), 1);

        // Reactions: one per member, a toggle, counted per emoji; the history answers the
        // library for both authors.
        let r = db
            .set_group_reaction("ee", &me, "w-ours", &bob, "👍", true, 6)
            .unwrap()
            .unwrap();
        assert_eq!(r.extra.reactions.len(), 1);
        db.set_group_reaction("ee", &me, "w-ours", &carol, "👍", true, 7)
            .unwrap()
            .unwrap();
        let r = db
            .set_group_reaction("ee", &me, "w-ours", &bob, "❤️", true, 8)
            .unwrap()
            .unwrap();
        assert_eq!(r.extra.reactions.len(), 2, "bob's replaced, not added");
        assert!(
            db.set_group_reaction("ee", &bob, "w-ours", &carol, "👍", true, 9)
                .unwrap()
                .is_none(),
            "named with the wrong author: nothing"
        );
        let known = db.known_in_group("ee", &me, "w-ours").unwrap().unwrap();
        assert!(!known.deleted);
        assert!(db.known_in_group("ee", &bob, "w-ours").unwrap().is_none());

        // A delete leaves a tombstone (no text, no reactions, not found, previewed as such) and
        // takes nothing after it.
        let gone = db.apply_group_delete("ee", &bob, "b1").unwrap().unwrap();
        assert!(gone.extra.deleted);
        assert_eq!(gone.body, "");
        assert!(db.group_versions("ee", theirs.seq).unwrap().is_empty());
        assert!(db.apply_group_delete("ee", &bob, "b1").unwrap().is_none());
        assert!(db
            .apply_group_edit("ee", &bob, "b1", "back", 9)
            .unwrap()
            .is_none());
        assert!(db
            .set_group_reaction("ee", &bob, "b1", &me, "👍", true, 9)
            .unwrap()
            .is_none());
        assert_eq!(found("all"), 0);
        assert!(
            db.known_in_group("ee", &bob, "b1")
                .unwrap()
                .unwrap()
                .deleted
        );
        db.apply_group_delete("ee", &carol, "c1").unwrap().unwrap();
        assert_eq!(
            db.group("ee").unwrap().unwrap().last_body.as_deref(),
            Some("This message was deleted")
        );
    }

    #[test]
    fn our_group_changes_wait_in_order_until_done() {
        let db = Db::open_in_memory().unwrap();
        let w = |id: &str| MessageId::new(id).unwrap();
        db.enqueue_group_change("ff", &Content::Delete { target: w("a") }, 1)
            .unwrap();
        db.enqueue_group_change(
            "ff",
            &Content::Edit {
                target: w("b"),
                text: "x".into(),
            },
            2,
        )
        .unwrap();
        let queued = db.group_changes(10).unwrap();
        assert_eq!(queued.len(), 2);
        assert_eq!(queued[0].content, Content::Delete { target: w("a") });
        db.group_change_done(queued[0].id).unwrap();
        assert_eq!(db.group_changes(10).unwrap().len(), 1);
        // A change over a bound is refused before it is queued.
        let long = Content::Edit {
            target: w("b"),
            text: "x".repeat(lattice_peer::content::MAX_TEXT_BYTES + 1),
        };
        assert!(matches!(
            db.enqueue_group_change("ff", &long, 3),
            Err(StorageError::Content(_))
        ));
    }

    #[test]
    fn a_version_11_file_gains_the_group_content_columns_with_its_rows_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lattice.sqlite3");
        let bob = ClientId::new("bob").unwrap();
        let me = ClientId::new("alice").unwrap();
        let fill = |db: &Db| {
            db.ensure_group("ab", "Crag", 1).unwrap();
            db.insert_group_line(&line("ab", Some(&bob), "b1", "from before"))
                .unwrap();
            db.insert_group_line(&NewGroupLine {
                outgoing: true,
                status: DeliveryStatus::Sent,
                ..line("ab", Some(&me), "local-1", "ours from before")
            })
            .unwrap();
            db.insert_group_line(&NewGroupLine {
                kind: GroupLineKind::System,
                ..line("ab", Some(&bob), "s1", "bob added carol")
            })
            .unwrap();
        };
        // What version 11 left on disk: group_messages without the content columns.
        let db = reopened_after(
            &path,
            fill,
            "DROP TRIGGER group_messages_content_delete;
             DROP TABLE group_message_versions; DROP TABLE group_reactions;
             DROP TABLE group_changes; DROP INDEX group_messages_by_wire_id;
             ALTER TABLE group_messages DROP COLUMN wire_id;
             ALTER TABLE group_messages DROP COLUMN edited_at;
             ALTER TABLE group_messages DROP COLUMN deleted;
             ALTER TABLE group_messages DROP COLUMN reply_sender;
             ALTER TABLE group_messages DROP COLUMN reply_id;
             ALTER TABLE group_messages DROP COLUMN reply_excerpt;
             ALTER TABLE group_messages DROP COLUMN rev;
             PRAGMA user_version = 11;",
        );
        let lines = db.group_page("ab", None, 10).unwrap();
        let wire: Vec<Option<&str>> = lines.iter().map(|l| l.extra.wire_id.as_deref()).collect();
        // Bob's: his id; ours: unknown (the library chose it); a system line: none.
        assert_eq!(wire, [Some("b1"), None, None]);
        assert_eq!(lines[0].body, "from before");
        // Bob's line from before takes his edit and the library finds it.
        assert!(db.known_in_group("ab", &bob, "b1").unwrap().is_some());
        let edited = db
            .apply_group_edit("ab", &bob, "b1", "edited after the upgrade", 20)
            .unwrap()
            .unwrap();
        assert_eq!(edited.seq, lines[0].seq);
    }
}
