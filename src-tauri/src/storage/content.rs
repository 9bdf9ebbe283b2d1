//! What the content layer changes in the history (schema version 6): replies, edits (earlier
//! versions kept locally), deletes (a tombstone), reactions (one per reactor per message) and
//! read receipts (our messages move to `read`; the receipts we owe are remembered).
//!
//! A message another message refers to is named by its **wire id**: the `messageId` it went out
//! with. For an incoming message that is its `message_id`; for one of ours it is the id fixed
//! when it was queued (`messages.wire_id`, version 6: messages sent by older versions have none
//! and cannot be referred to). [`DbHistory`] answers the library's [`MessageLookup`] from here,
//! so an edit, a delete, a reaction or a receipt of a message from an earlier run is checked too.
//!
//! Every change that arrives here was checked by the library first (sender, window, replay);
//! the storage checks again what it can (a tombstone takes no edit, an edit older than the last
//! one is ignored), so a replay that outlived the library's memory changes nothing.

use std::sync::Arc;

use lattice_peer::content::Content;
use lattice_peer::{GroupId, KnownMessage, MessageLookup, PeerError};
use lattice_protocol::{ClientId, MessageId};
use rusqlite::{params, Connection, OptionalExtension};

use super::db::{insert_outbox, Db, MessageRecord, MessageStatus};
use super::error::StorageError;
pub use super::message::{MessageExtra, Reaction, Received, ReplyRef, StoredReply};

/// Earlier versions kept per message; past this the oldest is forgotten (edits are bounded by
/// the library's edit window, not by number).
pub const MAX_VERSIONS: usize = 32;

/// Columns a history's lines need for replies, edits, deletes and reactions, each with its
/// type: version 6 adds them to `messages`, version 12 to `group_messages`.
const CONTENT_COLUMNS: &[(&str, &str)] = &[
    ("wire_id", "TEXT"),
    ("edited_at", "INTEGER"),
    ("deleted", "INTEGER NOT NULL DEFAULT 0"),
    ("reply_sender", "TEXT"),
    ("reply_id", "TEXT"),
    ("reply_excerpt", "TEXT"),
    ("rev", "INTEGER NOT NULL DEFAULT 0"),
];

/// Columns version 6 adds to `messages` only (groups carry no receipts, and a group line's
/// time is its sender's clock already).
const MESSAGE_ONLY_COLUMNS: &[(&str, &str)] = &[
    ("sent_at", "INTEGER"),
    ("receipt_sent", "INTEGER NOT NULL DEFAULT 0"),
];

/// Where a history's lines and what hangs on them live: the 1:1 conversations' tables
/// ([`DIRECT`]) or the groups' ([`GROUPS`]). The edits, deletes and reactions below work on
/// either, by a line's `seq`.
#[derive(Debug, Clone, Copy)]
pub(super) struct ContentTables {
    /// The lines (`messages`, `group_messages`).
    lines: &'static str,
    /// Earlier versions of edited lines.
    versions: &'static str,
    /// Reactions, one per reactor per line.
    reactions: &'static str,
}

/// The 1:1 conversations' tables (schema 6).
pub(super) const DIRECT: ContentTables = ContentTables {
    lines: "messages",
    versions: "message_versions",
    reactions: "reactions",
};

/// The groups' tables (schema 12).
pub(super) const GROUPS: ContentTables = ContentTables {
    lines: "group_messages",
    versions: "group_message_versions",
    reactions: "group_reactions",
};

impl ContentTables {
    /// The versions and reactions tables, and the trigger that takes them with a deleted line.
    fn schema(self) -> String {
        let ContentTables {
            lines,
            versions,
            reactions,
        } = self;
        format!(
            "CREATE TABLE IF NOT EXISTS {versions}(
                 seq         INTEGER NOT NULL,
                 body        TEXT NOT NULL,
                 replaced_at INTEGER NOT NULL
             );
             CREATE INDEX IF NOT EXISTS {versions}_by_seq ON {versions}(seq);
             CREATE TABLE IF NOT EXISTS {reactions}(
                 seq     INTEGER NOT NULL,
                 reactor TEXT NOT NULL,
                 emoji   TEXT NOT NULL,
                 at      INTEGER NOT NULL,
                 PRIMARY KEY(seq, reactor)
             );
             -- Deleting a line for me takes its versions and reactions with it.
             CREATE TRIGGER IF NOT EXISTS {lines}_content_delete AFTER DELETE ON {lines} BEGIN
                 DELETE FROM {versions} WHERE seq = old.seq;
                 DELETE FROM {reactions} WHERE seq = old.seq;
             END;"
        )
    }

    /// Whether the line `seq` is a tombstone, and when it was last edited; `None` if unknown.
    fn state(
        self,
        conn: &Connection,
        seq: i64,
    ) -> Result<Option<(bool, Option<i64>)>, StorageError> {
        Ok(conn
            .query_row(
                &format!(
                    "SELECT deleted, edited_at FROM {} WHERE seq = ?1",
                    self.lines
                ),
                params![seq],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    /// Replaces the text of line `seq`, keeping the old one as a version (at most
    /// [`MAX_VERSIONS`]). Nothing changes for a tombstone or an edit not newer than the last one
    /// applied (a replay). Returns whether it changed.
    pub(super) fn edit(
        self,
        conn: &Connection,
        seq: i64,
        text: &str,
        edited_at: i64,
    ) -> Result<bool, StorageError> {
        let Some((deleted, last)) = self.state(conn, seq)? else {
            return Ok(false);
        };
        if deleted || last.is_some_and(|at| at >= edited_at) {
            return Ok(false);
        }
        let ContentTables {
            lines, versions, ..
        } = self;
        conn.execute(
            &format!(
                "INSERT INTO {versions}(seq, body, replaced_at)
                 SELECT seq, body, ?2 FROM {lines} WHERE seq = ?1"
            ),
            params![seq, edited_at],
        )?;
        conn.execute(
            &format!(
                "DELETE FROM {versions} WHERE seq = ?1 AND rowid NOT IN
                     (SELECT rowid FROM {versions} WHERE seq = ?1
                      ORDER BY rowid DESC LIMIT ?2)"
            ),
            params![seq, MAX_VERSIONS as i64],
        )?;
        conn.execute(
            &format!("UPDATE {lines} SET body = ?2, edited_at = ?3, rev = rev + 1 WHERE seq = ?1"),
            params![seq, text, edited_at],
        )?;
        Ok(true)
    }

    /// Deletes line `seq` for everyone: its text, versions and reactions go, a tombstone stays.
    /// Returns whether it changed (not for an unknown line or a tombstone).
    pub(super) fn delete(self, conn: &Connection, seq: i64) -> Result<bool, StorageError> {
        let Some((deleted, _)) = self.state(conn, seq)? else {
            return Ok(false);
        };
        if deleted {
            return Ok(false);
        }
        let ContentTables {
            lines,
            versions,
            reactions,
        } = self;
        conn.execute(
            &format!("UPDATE {lines} SET body = '', deleted = 1, rev = rev + 1 WHERE seq = ?1"),
            params![seq],
        )?;
        conn.execute(
            &format!("DELETE FROM {versions} WHERE seq = ?1"),
            params![seq],
        )?;
        conn.execute(
            &format!("DELETE FROM {reactions} WHERE seq = ?1"),
            params![seq],
        )?;
        Ok(true)
    }

    /// Sets (`add`) or takes back `reactor`'s reaction `emoji` to line `seq`. One reaction per
    /// reactor: a new one replaces the old; taking back a reaction that is not the current one
    /// changes nothing, nor does any reaction to a tombstone. Returns whether it changed.
    pub(super) fn react(
        self,
        conn: &Connection,
        seq: i64,
        reactor: &ClientId,
        emoji: &str,
        add: bool,
        at: i64,
    ) -> Result<bool, StorageError> {
        let Some((deleted, _)) = self.state(conn, seq)? else {
            return Ok(false);
        };
        if deleted {
            return Ok(false);
        }
        let ContentTables {
            lines, reactions, ..
        } = self;
        let changed = if add {
            conn.execute(
                &format!(
                    "INSERT INTO {reactions}(seq, reactor, emoji, at) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT(seq, reactor) DO UPDATE SET emoji = excluded.emoji, at = excluded.at
                     WHERE emoji != excluded.emoji"
                ),
                params![seq, reactor.as_str(), emoji, at],
            )?
        } else {
            conn.execute(
                &format!("DELETE FROM {reactions} WHERE seq = ?1 AND reactor = ?2 AND emoji = ?3"),
                params![seq, reactor.as_str(), emoji],
            )?
        };
        if changed == 0 {
            return Ok(false);
        }
        conn.execute(
            &format!("UPDATE {lines} SET rev = rev + 1 WHERE seq = ?1"),
            params![seq],
        )?;
        Ok(true)
    }

    /// The earlier versions of line `seq`, oldest first, if the line is one `owner_sql` (a
    /// condition on the line `m` with `?2`) accepts.
    fn versions(
        self,
        conn: &Connection,
        seq: i64,
        owner_sql: &str,
        owner: &str,
    ) -> Result<Vec<Version>, StorageError> {
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT v.body, v.replaced_at FROM {} v
             JOIN {} m ON m.seq = v.seq
             WHERE v.seq = ?1 AND {owner_sql} ORDER BY v.rowid",
            self.versions, self.lines
        ))?;
        let rows = stmt.query_map(params![seq, owner], |r| {
            Ok(Version {
                body: r.get(0)?,
                replaced_at: r.get(1)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

const CONTENT_SCHEMA: &str = "
CREATE INDEX IF NOT EXISTS messages_by_wire_id ON messages(peer_id, outgoing, wire_id);
CREATE INDEX IF NOT EXISTS messages_receipts_due ON messages(peer_id, seq)
    WHERE outgoing = 0 AND receipt_sent = 0;
";

fn has_column(conn: &Connection, table: &str, column: &str) -> Result<bool, StorageError> {
    Ok(conn
        .prepare("SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2")?
        .exists(params![table, column])?)
}

/// Adds `columns` to `table` where it lacks them.
fn add_columns(
    conn: &Connection,
    table: &str,
    columns: &[(&str, &str)],
) -> Result<(), StorageError> {
    for (column, ty) in columns {
        if !has_column(conn, table, column)? {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {ty}"))?;
        }
    }
    Ok(())
}

/// Schema version 6: the columns and tables above, added to any older file. Incoming messages
/// get their wire id (their own id); ours only when the outbox still knows it.
pub(super) fn migrate(conn: &Connection) -> Result<(), StorageError> {
    add_columns(conn, "messages", CONTENT_COLUMNS)?;
    add_columns(conn, "messages", MESSAGE_ONLY_COLUMNS)?;
    if !has_column(conn, "outbox", "kind")? {
        conn.execute_batch("ALTER TABLE outbox ADD COLUMN kind TEXT")?;
    }
    conn.execute_batch(
        "UPDATE messages SET wire_id = message_id, receipt_sent = 1
             WHERE outgoing = 0 AND wire_id IS NULL;
         UPDATE messages SET wire_id =
             (SELECT o.wire_id FROM outbox o WHERE o.message_id = messages.message_id)
             WHERE outgoing = 1 AND wire_id IS NULL;
         UPDATE messages SET sent_at = at WHERE sent_at IS NULL;",
    )?;
    conn.execute_batch(CONTENT_SCHEMA)?;
    conn.execute_batch(&DIRECT.schema())?;
    Ok(())
}

/// Schema version 12: the same columns and tables for the groups' lines (after
/// `group_messages` exists). Every message line another member wrote gets its wire id (its
/// sender's id); ours sent before have none (the library chose it and it was not kept), so
/// they cannot be referred to.
pub(super) fn migrate_groups(conn: &Connection) -> Result<(), StorageError> {
    add_columns(conn, "group_messages", CONTENT_COLUMNS)?;
    conn.execute_batch(&GROUPS.schema())?;
    conn.execute_batch(
        "UPDATE group_messages SET wire_id = message_id
             WHERE outgoing = 0 AND kind = 0 AND wire_id IS NULL;
         CREATE INDEX IF NOT EXISTS group_messages_by_wire_id
             ON group_messages(group_id, sender, wire_id);",
    )?;
    Ok(())
}

/// A message named the way other messages refer to it: the conversation, whether it is ours,
/// and its wire id.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// The conversation.
    pub peer: &'a ClientId,
    /// Ours.
    pub outgoing: bool,
    /// Its wire id.
    pub wire_id: &'a str,
}

/// An earlier version of an edited message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// Its text.
    pub body: String,
    /// When it was replaced (unix ms, the edit's time).
    pub replaced_at: i64,
}

impl Db {
    fn target_seq(
        conn: &Connection,
        peer: &ClientId,
        outgoing: bool,
        wire_id: &str,
    ) -> Result<Option<i64>, StorageError> {
        Ok(conn
            .query_row(
                "SELECT seq FROM messages
                 WHERE peer_id = ?1 AND outgoing = ?2 AND wire_id = ?3",
                params![peer.as_str(), outgoing, wire_id],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// What the history knows of the message `wire_id` of the conversation with `peer` (ours
    /// when `outgoing`), for the library's checks.
    ///
    /// # Errors
    /// [`StorageError::Sqlite`].
    pub fn known(
        &self,
        peer: &ClientId,
        outgoing: bool,
        wire_id: &str,
    ) -> Result<Option<KnownMessage>, StorageError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT sent_at, at, deleted, edited_at FROM messages
                 WHERE peer_id = ?1 AND outgoing = ?2 AND wire_id = ?3",
                params![peer.as_str(), outgoing, wire_id],
                |r| {
                    let sent_at: Option<i64> = r.get(0)?;
                    let at: i64 = r.get(1)?;
                    let edited_at: Option<i64> = r.get(3)?;
                    Ok(KnownMessage {
                        sent_at: u64::try_from(sent_at.unwrap_or(at)).unwrap_or(0),
                        deleted: r.get(2)?,
                        last_edit_at: edited_at.map(|t| u64::try_from(t).unwrap_or(0)),
                    })
                },
            )
            .optional()?)
    }

    /// One message of the conversation with `peer` by its `seq`.
    ///
    /// # Errors
    /// [`StorageError::Sqlite`].
    pub fn message(
        &self,
        peer: &ClientId,
        seq: i64,
    ) -> Result<Option<MessageRecord>, StorageError> {
        Ok(Self::message_by_seq(&self.conn(), seq)?.filter(|m| &m.peer_id == peer))
    }

    /// Replaces the text of the message `wire_id` (ours when `outgoing`) with `text`, keeping the
    /// old one as a version. Nothing changes for a tombstone, an unknown message or an edit not
    /// newer than the last one applied (a replay). Returns the changed message.
    ///
    /// # Errors
    /// [`StorageError::Sqlite`].
    pub fn apply_edit(
        &self,
        peer: &ClientId,
        outgoing: bool,
        wire_id: &str,
        text: &str,
        edited_at: i64,
    ) -> Result<Option<MessageRecord>, StorageError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let Some(seq) = Self::target_seq(&tx, peer, outgoing, wire_id)? else {
            return Ok(None);
        };
        if !DIRECT.edit(&tx, seq, text, edited_at)? {
            return Ok(None);
        }
        let record = Self::message_by_seq(&tx, seq)?;
        tx.commit()?;
        Ok(record)
    }

    /// Deletes the message `wire_id` (ours when `outgoing`) for everyone: its text, versions and
    /// reactions go, a tombstone stays. Returns the tombstone, `None` if unknown or already one.
    ///
    /// # Errors
    /// [`StorageError::Sqlite`].
    pub fn apply_delete(
        &self,
        peer: &ClientId,
        outgoing: bool,
        wire_id: &str,
    ) -> Result<Option<MessageRecord>, StorageError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let Some(seq) = Self::target_seq(&tx, peer, outgoing, wire_id)? else {
            return Ok(None);
        };
        if !DIRECT.delete(&tx, seq)? {
            return Ok(None);
        }
        let record = Self::message_by_seq(&tx, seq)?;
        tx.commit()?;
        Ok(record)
    }

    /// Deletes a message of the conversation with `peer` on this device only. Returns whether
    /// there was one.
    ///
    /// # Errors
    /// [`StorageError::Sqlite`].
    pub fn delete_for_me(&self, peer: &ClientId, seq: i64) -> Result<bool, StorageError> {
        Ok(self.conn().execute(
            "DELETE FROM messages WHERE seq = ?1 AND peer_id = ?2",
            params![seq, peer.as_str()],
        )? > 0)
    }

    /// Sets (`Some`) or takes back (`None`) `reactor`'s reaction to the message `wire_id` of the
    /// conversation with `peer` (ours when `outgoing`). One reaction per reactor: a new one
    /// replaces the old; taking back a reaction that is not the current one changes nothing.
    /// Returns the changed message.
    ///
    /// # Errors
    /// [`StorageError::Sqlite`].
    pub fn set_reaction(
        &self,
        target: Target<'_>,
        reactor: &ClientId,
        emoji: &str,
        add: bool,
        at: i64,
    ) -> Result<Option<MessageRecord>, StorageError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let Some(seq) = Self::target_seq(&tx, target.peer, target.outgoing, target.wire_id)? else {
            return Ok(None);
        };
        if !DIRECT.react(&tx, seq, reactor, emoji, add, at)? {
            return Ok(None);
        }
        let record = Self::message_by_seq(&tx, seq)?;
        tx.commit()?;
        Ok(record)
    }

    /// `peer` read these messages of ours (wire ids): each moves to `read` unless it is there
    /// already or failed. Returns the messages that changed.
    ///
    /// # Errors
    /// [`StorageError::Sqlite`].
    pub fn mark_read_by_peer(
        &self,
        peer: &ClientId,
        wire_ids: &[MessageId],
    ) -> Result<Vec<MessageRecord>, StorageError> {
        let replaceable: i64 = MessageStatus::ALL
            .iter()
            .filter(|current| MessageStatus::Read.may_replace(**current))
            .fold(0, |set, current| set | (1 << current.rank()));
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let mut changed = Vec::new();
        for id in wire_ids {
            let seq: Option<i64> = tx
                .query_row(
                    "UPDATE messages SET status = ?4
                     WHERE peer_id = ?1 AND outgoing = 1 AND wire_id = ?2
                       AND ((1 << status) & ?3) != 0
                     RETURNING seq",
                    params![
                        peer.as_str(),
                        id.as_str(),
                        replaceable,
                        MessageStatus::Read.rank()
                    ],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(seq) = seq {
                if let Some(record) = Self::message_by_seq(&tx, seq)? {
                    changed.push(record);
                }
            }
        }
        tx.commit()?;
        Ok(changed)
    }

    /// The earlier versions of a message of the conversation with `peer`, oldest first.
    ///
    /// # Errors
    /// [`StorageError::Sqlite`].
    pub fn versions(&self, peer: &ClientId, seq: i64) -> Result<Vec<Version>, StorageError> {
        DIRECT.versions(&self.conn(), seq, "m.peer_id = ?2", peer.as_str())
    }

    /// The earlier versions of a line of group `group_id`, oldest first.
    ///
    /// # Errors
    /// [`StorageError::Sqlite`].
    pub fn group_versions(&self, group_id: &str, seq: i64) -> Result<Vec<Version>, StorageError> {
        GROUPS.versions(&self.conn(), seq, "m.group_id = ?2", group_id)
    }

    /// Queues one read receipt for up to `limit` incoming messages of the conversation with
    /// `peer` that none was queued for yet, oldest first, in the outbox under `local_id` and
    /// `wire_id`: marking them and queueing the receipt is one transaction, so what is owed is
    /// either still owed or waiting in the outbox, which keeps it (across dropped connections
    /// and restarts) until the server's verdict. Unsigned messages get no receipt (they are
    /// only marked). Returns how many messages were handled; 0 when nothing was owed.
    ///
    /// # Errors
    /// [`StorageError::Content`] if the receipt breaks a bound; [`StorageError::Sqlite`].
    pub fn queue_receipts_due(
        &self,
        peer: &ClientId,
        limit: usize,
        local_id: &str,
        wire_id: &MessageId,
        now_ms: i64,
    ) -> Result<usize, StorageError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let due: Vec<(i64, Option<String>, bool)> = {
            let mut stmt = tx.prepare_cached(
                "SELECT seq, wire_id, authenticated AND NOT deleted FROM messages
                 WHERE peer_id = ?1 AND outgoing = 0 AND receipt_sent = 0
                 ORDER BY seq LIMIT ?2",
            )?;
            let rows = stmt.query_map(
                params![peer.as_str(), i64::try_from(limit).unwrap_or(i64::MAX)],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?;
            rows.collect::<Result<_, _>>()?
        };
        for (seq, _, _) in &due {
            tx.execute(
                "UPDATE messages SET receipt_sent = 1 WHERE seq = ?1",
                params![seq],
            )?;
        }
        let read: Vec<MessageId> = due
            .iter()
            .filter(|(_, _, signed)| *signed)
            .filter_map(|(_, id, _)| id.clone().and_then(|id| MessageId::try_from(id).ok()))
            .collect();
        if !read.is_empty() {
            let receipt = Content::Receipt { read };
            let (kind, body) = receipt.encode()?;
            insert_outbox(&tx, local_id, peer, &body, now_ms, wire_id, Some(kind))?;
        }
        tx.commit()?;
        Ok(due.len())
    }

    /// Marks every receipt owed in the conversation with `peer` as handled without sending it
    /// (read receipts are off).
    ///
    /// # Errors
    /// [`StorageError::Sqlite`].
    pub fn forgo_receipts(&self, peer: &ClientId) -> Result<(), StorageError> {
        self.conn().execute(
            "UPDATE messages SET receipt_sent = 1
             WHERE peer_id = ?1 AND outgoing = 0 AND receipt_sent = 0",
            params![peer.as_str()],
        )?;
        Ok(())
    }

    /// Queues a change (an edit, a delete, a reaction) of the conversation with `peer` in the
    /// outbox: durable like a message, sent in order after what was queued before it.
    ///
    /// # Errors
    /// [`StorageError::Content`] if it breaks a bound; [`StorageError::Sqlite`].
    pub fn enqueue_change(
        &self,
        local_id: &str,
        wire_id: &MessageId,
        peer: &ClientId,
        content: &Content,
        now_ms: i64,
    ) -> Result<(), StorageError> {
        let (kind, body) = content.encode()?;
        insert_outbox(
            &self.conn(),
            local_id,
            peer,
            &body,
            now_ms,
            wire_id,
            Some(kind),
        )
    }
}

/// The library's view of the desktop's history: [`MessageLookup`] over [`Db::known`].
#[derive(Debug)]
pub struct DbHistory {
    db: Arc<Db>,
    me: ClientId,
}

impl DbHistory {
    /// The history of `me` in `db`.
    pub fn new(db: Arc<Db>, me: ClientId) -> Self {
        Self { db, me }
    }
}

impl MessageLookup for DbHistory {
    fn find(
        &self,
        peer: &ClientId,
        sender: &ClientId,
        id: &MessageId,
    ) -> Result<Option<KnownMessage>, PeerError> {
        let outgoing = *sender == self.me;
        if !outgoing && sender != peer {
            // A third party's message is never part of a conversation between two.
            return Ok(None);
        }
        self.db
            .known(peer, outgoing, id.as_str())
            .map_err(|e| PeerError::KeyStore(format!("history: {e}")))
    }

    fn find_in_group(
        &self,
        group: &GroupId,
        sender: &ClientId,
        id: &MessageId,
    ) -> Result<Option<KnownMessage>, PeerError> {
        self.db
            .known_in_group(&group.to_string(), sender, id.as_str())
            .map_err(|e| PeerError::KeyStore(format!("history: {e}")))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn c(id: &str) -> ClientId {
        ClientId::new(id).unwrap()
    }

    fn w(id: &str) -> MessageId {
        MessageId::new(id).unwrap()
    }

    fn t<'a>(peer: &'a ClientId, outgoing: bool, wire_id: &'a str) -> Target<'a> {
        Target {
            peer,
            outgoing,
            wire_id,
        }
    }

    /// A database with bob's "b1" (sent at 1 000) and our "a1" (wire id "wa1").
    fn fixture() -> Arc<Db> {
        let db = Arc::new(Db::open_in_memory().unwrap());
        db.insert_received(&Received {
            message_id: "b1",
            peer_id: &c("bob"),
            body: "hello",
            at_ms: 1_500,
            sent_at: Some(1_000),
            authenticated: true,
            read: false,
            reply: None,
        })
        .unwrap()
        .unwrap();
        db.enqueue_outgoing("a1", &w("wa1"), &c("bob"), "hi bob", 2_000)
            .unwrap();
        db
    }

    #[test]
    fn edits_keep_earlier_versions_and_ignore_replays_and_tombstones() {
        let db = fixture();
        let bob = c("bob");
        let edited = db.apply_edit(&bob, false, "b1", "hello!", 3_000).unwrap();
        let edited = edited.unwrap();
        assert_eq!(edited.body, "hello!");
        assert_eq!(edited.extra.edited_at, Some(3_000));
        assert_eq!(edited.extra.rev, 1);
        // The same edit again, or an older one: nothing changes.
        assert!(db
            .apply_edit(&bob, false, "b1", "hello!", 3_000)
            .unwrap()
            .is_none());
        assert!(db
            .apply_edit(&bob, false, "b1", "older", 2_500)
            .unwrap()
            .is_none());
        db.apply_edit(&bob, false, "b1", "hello!!", 4_000).unwrap();
        let versions = db.versions(&bob, edited.seq).unwrap();
        let bodies: Vec<&str> = versions.iter().map(|v| v.body.as_str()).collect();
        assert_eq!(bodies, ["hello", "hello!"]);
        // Another conversation does not see them.
        assert!(db.versions(&c("carol"), edited.seq).unwrap().is_empty());
        // Bob's id names bob's message only: our "wa1" is not his to edit.
        assert!(db
            .apply_edit(&bob, false, "wa1", "mine now", 5_000)
            .unwrap()
            .is_none());
        // Deleted: a tombstone, versions gone, and no edit after it.
        let gone = db.apply_delete(&bob, false, "b1").unwrap().unwrap();
        assert!(gone.extra.deleted);
        db.delete_for_me(&bob, db.page(&bob, None, 10).unwrap()[1].seq)
            .unwrap();
        assert_eq!(
            db.peer(&bob).unwrap().unwrap().last_body.as_deref(),
            Some("This message was deleted"),
            "the list previews the tombstone"
        );
        assert_eq!(gone.body, "");
        assert!(db.versions(&bob, gone.seq).unwrap().is_empty());
        assert!(db.apply_delete(&bob, false, "b1").unwrap().is_none());
        assert!(db
            .apply_edit(&bob, false, "b1", "back", 6_000)
            .unwrap()
            .is_none());
        // The search index forgot the deleted text.
        let query = crate::storage::search::SearchQuery::parse("hello").unwrap();
        let (hits, _) = db.search(&query, None, 10).unwrap();
        assert!(hits.is_empty(), "{hits:?}");
    }

    #[test]
    fn versions_are_bounded() {
        let db = fixture();
        let bob = c("bob");
        for n in 0..(MAX_VERSIONS as i64 + 5) {
            db.apply_edit(&bob, false, "b1", &format!("v{n}"), 10_000 + n)
                .unwrap()
                .unwrap();
        }
        let seq = db.page(&bob, None, 10).unwrap()[0].seq;
        let versions = db.versions(&bob, seq).unwrap();
        assert_eq!(versions.len(), MAX_VERSIONS);
        assert_eq!(
            versions[MAX_VERSIONS - 1].body,
            format!("v{}", MAX_VERSIONS + 3)
        );
    }

    #[test]
    fn reactions_are_one_per_reactor_and_toggle() {
        let db = fixture();
        let (alice, bob) = (c("alice"), c("bob"));
        let r = db
            .set_reaction(t(&bob, true, "wa1"), &bob, "👍", true, 1)
            .unwrap()
            .unwrap();
        assert_eq!(r.extra.reactions.len(), 1);
        db.set_reaction(t(&bob, true, "wa1"), &alice, "👍", true, 2)
            .unwrap();
        // Bob changes his mind: his reaction is replaced, not added.
        let r = db
            .set_reaction(t(&bob, true, "wa1"), &bob, "❤️", true, 3)
            .unwrap()
            .unwrap();
        let mut got: Vec<(String, String)> = r
            .extra
            .reactions
            .iter()
            .map(|r| (r.reactor.clone(), r.emoji.clone()))
            .collect();
        got.sort();
        assert_eq!(
            got,
            [("alice".into(), "👍".into()), ("bob".into(), "❤️".into())]
        );
        // The same again changes nothing; taking back another emoji than his changes nothing.
        assert!(db
            .set_reaction(t(&bob, true, "wa1"), &bob, "❤️", true, 4)
            .unwrap()
            .is_none());
        assert!(db
            .set_reaction(t(&bob, true, "wa1"), &bob, "👍", false, 5)
            .unwrap()
            .is_none());
        let r = db
            .set_reaction(t(&bob, true, "wa1"), &bob, "❤️", false, 6)
            .unwrap()
            .unwrap();
        assert_eq!(r.extra.reactions.len(), 1);
        // Unknown message: nothing.
        assert!(db
            .set_reaction(t(&bob, true, "nope"), &bob, "👍", true, 7)
            .unwrap()
            .is_none());
        // Reactions are in the page too.
        let page = db.page(&bob, None, 10).unwrap();
        assert_eq!(page[1].extra.reactions.len(), 1);
    }

    #[test]
    fn receipts_move_ours_to_read_and_the_ones_we_owe_are_taken_once() {
        let db = fixture();
        let bob = c("bob");
        let read = db.mark_read_by_peer(&bob, &[w("wa1"), w("b1")]).unwrap();
        assert_eq!(read.len(), 1, "only our own message");
        assert_eq!(read[0].status, MessageStatus::Read);
        // A late ack never moves it back; a second receipt changes nothing.
        assert!(db
            .advance_status("a1", MessageStatus::Delivered)
            .unwrap()
            .is_none());
        assert!(db.mark_read_by_peer(&bob, &[w("wa1")]).unwrap().is_empty());
        // Another peer cannot mark our messages to bob read.
        assert!(db
            .mark_read_by_peer(&c("carol"), &[w("wa1")])
            .unwrap()
            .is_empty());

        // What is owed goes into the outbox with the marking, once.
        let receipts = |db: &Db| -> Vec<Content> {
            db.outbox()
                .unwrap()
                .into_iter()
                .filter_map(|e| Some(Content::decode(e.kind.as_deref()?, &e.body).unwrap()))
                .collect()
        };
        assert_eq!(
            db.queue_receipts_due(&bob, 10, "r1", &w("wr1"), 7).unwrap(),
            1
        );
        assert_eq!(
            receipts(&db),
            [Content::Receipt {
                read: vec![w("b1")]
            }]
        );
        assert_eq!(
            db.queue_receipts_due(&bob, 10, "r2", &w("wr2"), 7).unwrap(),
            0
        );
        db.insert_incoming("b2", &bob, "unsigned", 9, false, false)
            .unwrap();
        assert_eq!(
            db.queue_receipts_due(&bob, 10, "r3", &w("wr3"), 8).unwrap(),
            1,
            "handled"
        );
        assert_eq!(
            receipts(&db).len(),
            1,
            "an unsigned message gets no receipt"
        );
        // The receipt leaves the outbox only with the server's verdict.
        db.advance_status("r1", MessageStatus::Sent).unwrap();
        assert_eq!(receipts(&db).len(), 1, "handed over is not answered");
        db.advance_status("r1", MessageStatus::Delivered).unwrap();
        assert!(receipts(&db).is_empty());
        db.insert_incoming("b3", &bob, "later", 9, true, false)
            .unwrap();
        db.forgo_receipts(&bob).unwrap();
        assert_eq!(
            db.queue_receipts_due(&bob, 10, "r4", &w("wr4"), 9).unwrap(),
            0
        );
        assert!(receipts(&db).is_empty());
    }

    #[test]
    fn receipts_are_queued_in_chunks_of_the_limit() {
        let db = fixture();
        let bob = c("bob");
        for n in 0..5 {
            db.insert_incoming(&format!("n{n}"), &bob, "hi", 10 + n, true, false)
                .unwrap();
        }
        let mut handled = Vec::new();
        for n in 0.. {
            let got = db
                .queue_receipts_due(&bob, 2, &format!("r{n}"), &w(&format!("wr{n}")), 20)
                .unwrap();
            if got == 0 {
                break;
            }
            handled.push(got);
        }
        // b1 of the fixture and the five new ones.
        assert_eq!(handled, [2, 2, 2]);
        let ids: Vec<usize> = db
            .outbox()
            .unwrap()
            .into_iter()
            .filter_map(|e| Some(Content::decode(e.kind.as_deref()?, &e.body).unwrap()))
            .map(|content| match content {
                Content::Receipt { read } => read.len(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(ids, [2, 2, 2]);
    }

    #[test]
    fn the_history_answers_the_library_for_both_senders() {
        let db = fixture();
        let history = DbHistory::new(Arc::clone(&db), c("alice"));
        let (alice, bob, carol) = (c("alice"), c("bob"), c("carol"));
        let theirs = history.find(&bob, &bob, &w("b1")).unwrap().unwrap();
        assert_eq!(
            theirs.sent_at, 1_000,
            "the signed sentAt, not the server's time"
        );
        assert!(!theirs.deleted);
        let ours = history.find(&bob, &alice, &w("wa1")).unwrap().unwrap();
        assert_eq!(ours.sent_at, 2_000);
        // The local id is not a wire id; carol's conversation has nothing; carol is not part
        // of the conversation with bob.
        assert!(history.find(&bob, &alice, &w("a1")).unwrap().is_none());
        assert!(history.find(&carol, &bob, &w("b1")).unwrap().is_none());
        assert!(history.find(&bob, &carol, &w("b1")).unwrap().is_none());
        db.apply_edit(&bob, false, "b1", "x", 7_000).unwrap();
        db.apply_delete(&bob, false, "b1").unwrap();
        let after = history.find(&bob, &bob, &w("b1")).unwrap().unwrap();
        assert!(after.deleted);
        assert_eq!(after.last_edit_at, Some(7_000));
    }

    #[test]
    fn deleting_for_me_removes_the_row_and_what_hangs_on_it() {
        let db = fixture();
        let bob = c("bob");
        let seq = db.page(&bob, None, 10).unwrap()[0].seq;
        db.set_reaction(t(&bob, false, "b1"), &c("alice"), "👍", true, 1)
            .unwrap();
        db.apply_edit(&bob, false, "b1", "x", 7_000).unwrap();
        assert!(!db.delete_for_me(&c("carol"), seq).unwrap(), "not carol's");
        assert!(db.delete_for_me(&bob, seq).unwrap());
        assert!(db.message(&bob, seq).unwrap().is_none());
        let left: i64 = db
            .conn()
            .query_row(
                "SELECT (SELECT COUNT(*) FROM reactions) + (SELECT COUNT(*) FROM message_versions)",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(left, 0);
    }

    #[test]
    fn a_version_5_file_gets_wire_ids_and_owes_no_receipts_for_old_messages() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v5.sqlite3");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE contacts(peer_id TEXT PRIMARY KEY, first_seen INTEGER NOT NULL,
                     unread INTEGER NOT NULL DEFAULT 0, user_verified INTEGER NOT NULL DEFAULT 0,
                     authenticated INTEGER NOT NULL DEFAULT 0);
                 CREATE TABLE messages(seq INTEGER PRIMARY KEY AUTOINCREMENT,
                     message_id TEXT NOT NULL, peer_id TEXT NOT NULL, outgoing INTEGER NOT NULL,
                     body TEXT NOT NULL, at INTEGER NOT NULL, status INTEGER NOT NULL,
                     authenticated INTEGER NOT NULL, UNIQUE(peer_id, outgoing, message_id));
                 CREATE TABLE outbox(message_id TEXT PRIMARY KEY, peer_id TEXT NOT NULL,
                     body TEXT NOT NULL, created_at INTEGER NOT NULL, wire_id TEXT);
                 INSERT INTO contacts(peer_id, first_seen) VALUES ('bob', 1);
                 INSERT INTO messages(message_id, peer_id, outgoing, body, at, status, authenticated)
                     VALUES ('in1', 'bob', 0, 'old news', 5, 4, 1),
                            ('out1', 'bob', 1, 'waiting', 6, 0, 1),
                            ('out0', 'bob', 1, 'long delivered', 4, 3, 1);
                 INSERT INTO outbox VALUES ('out1', 'bob', 'waiting', 6, 'wire-out1');
                 PRAGMA user_version = 5;",
            )
            .unwrap();
        }
        let db = Db::open(&path).unwrap();
        let bob = c("bob");
        let page = db.page(&bob, None, 10).unwrap();
        let wire: Vec<Option<&str>> = page.iter().map(|m| m.extra.wire_id.as_deref()).collect();
        // Incoming: its own id; waiting: the outbox's; delivered long ago: unknown.
        assert_eq!(wire, [Some("in1"), Some("wire-out1"), None]);
        assert_eq!(
            db.queue_receipts_due(&bob, 10, "r", &w("wr"), 1).unwrap(),
            0
        );
        // The waiting one can be referred to, and is found by the library's lookup.
        let history = DbHistory::new(Arc::new(db), c("alice"));
        assert_eq!(
            history
                .find(&bob, &c("alice"), &w("wire-out1"))
                .unwrap()
                .map(|k| k.sent_at),
            Some(6)
        );
    }

    #[test]
    fn replies_and_changes_are_queued_with_their_kind() {
        let db = fixture();
        let bob = c("bob");
        let reply = ReplyRef {
            sender: bob.clone(),
            message_id: w("b1"),
            excerpt: "hello".into(),
        };
        let r = db
            .enqueue_message("a2", &w("wa2"), &bob, "yes?", Some(&reply), 3_000)
            .unwrap();
        let stored = r.extra.reply.unwrap();
        assert_eq!(stored.to, reply);
        let answered = db.page(&bob, None, 10).unwrap()[0].seq;
        assert_eq!(stored.seq, Some(answered), "where the answered message is");
        db.enqueue_change(
            "c1",
            &w("wc1"),
            &bob,
            &Content::Delete { target: w("wa1") },
            3_001,
        )
        .unwrap();
        let queued = db.outbox().unwrap();
        let kinds: Vec<Option<&str>> = queued.iter().map(|e| e.kind.as_deref()).collect();
        assert_eq!(kinds, [None, Some("reply"), Some("delete")]);
        let decoded = Content::decode("reply", &queued[1].body).unwrap();
        assert!(matches!(decoded, Content::Reply { text, .. } if text == "yes?"));
        // A change that breaks a bound is refused before it is stored.
        let long = Content::Edit {
            target: w("wa1"),
            text: "x".repeat(lattice_peer::content::MAX_TEXT_BYTES + 1),
        };
        assert!(matches!(
            db.enqueue_change("c2", &w("wc2"), &bob, &long, 1),
            Err(StorageError::Content(_))
        ));
    }
}
