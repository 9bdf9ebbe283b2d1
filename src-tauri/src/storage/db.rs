//! The SQLite database: message history, contacts, pinned identity keys and the outbox.
//!
//! One file in WAL mode, one connection behind a `std::sync::Mutex`: every statement here is
//! short (indexed lookups, single-row writes, one page of history), so the lock is never held
//! across an `.await` and a blocking mutex is the right tool.
//!
//! Schema (version 8):
//! - `contacts(peer_id PK, first_seen, unread, user_verified, authenticated)` — everyone we have
//!   talked to or seen online. `authenticated` is set once the peer was seen with a signed
//!   identity (a `lattice-v1` peer); `user_verified` once the person compared fingerprints.
//! - `pinned_keys(peer_id PK, identity_key, pinned_at, pending_fingerprint)` — trust on first
//!   use (the peer's `KeyStore`): the first identity key seen for a peer. When the peer presents
//!   another key, its fingerprint waits in `pending_fingerprint` until the person accepts it.
//! - `messages(seq PK, message_id, peer_id, outgoing, body, at, status, authenticated)`,
//!   unique on `(peer_id, outgoing, message_id)` — history; `seq` orders a conversation and is
//!   the paging cursor. A `messageId` is chosen by its sender, so two senders may use the same
//!   one: an incoming message is a duplicate only of one from the same peer (version 4; before,
//!   `message_id` alone was unique and a later message from another sender with a colliding id
//!   was dropped after being acknowledged). Outgoing messages are keyed by our own local id.
//!   (Version 2 adds a partial index of unsigned incoming messages.)
//! - `replay_marks(peer_id PK, sent_at)` (version 4) — for each signed sender, the newest
//!   `sentAt` of a message we accepted: the peer's `ReplayStore`, so a message seen before a
//!   restart cannot be replayed after it, once the in-memory replay window has forgotten it.
//! - `outbox(message_id PK, peer_id, body, created_at, wire_id)` — messages written but not yet
//!   confirmed by the server. A row leaves the outbox only when the server acknowledged the
//!   message (or refused it for good), so a message typed offline survives a crash or a kill.
//!   `wire_id` (version 3) is the `messageId` the message goes out with, chosen when it is queued:
//!   every resend, also after a restart, uses it, so a copy the server had already accepted
//!   before a kill is dropped by the recipient's dedup instead of shown twice. Version 3 adds
//!   the column to older files and gives their waiting rows a fresh id.
//! - Version 5: `messages_fts`, the full-text index of the bodies, kept by triggers
//!   ([`super::search`]), and `drafts(peer_id PK, body, updated_at)` ([`super::drafts`]).
//! - Version 6: what the content layer changes ([`super::content`]): `messages` gains the wire
//!   id and signed `sentAt`, the reply it answers, an edit time, a tombstone flag, a revision
//!   counter and whether a read receipt went out; `message_versions` keeps earlier texts,
//!   `reactions` one reaction per reactor per message, and `outbox.kind` the content kind.
//! - Version 7: `attachments`, the file of a file message ([`super::files`]).
//! - Version 8: `groups` and `group_messages`, the group conversations ([`super::groups`]).
//! - Version 9: `group_attachments`, the file of a group file message ([`super::files`]).
//! - Version 10: one `attachments` table for the files of both, keyed by `(home, seq)`; a
//!   version 9 file has its `group_attachments` rows moved in ([`super::files`]).

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::{params, Connection, OptionalExtension};

use lattice_protocol::{ClientId, MessageId};

use super::error::StorageError;
pub use crate::contract::DeliveryStatus as MessageStatus;

/// Current schema version, kept in `PRAGMA user_version`.
pub(crate) const SCHEMA_VERSION: i64 = 12;

/// How long a writer waits for the database lock before failing (another process holding
/// the file, e.g. a second instance started without single-instance support).
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The largest page of history one call returns.
pub const MAX_PAGE: u32 = 500;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS contacts(
    peer_id       TEXT PRIMARY KEY,
    first_seen    INTEGER NOT NULL,
    unread        INTEGER NOT NULL DEFAULT 0,
    user_verified INTEGER NOT NULL DEFAULT 0,
    authenticated INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS pinned_keys(
    peer_id      TEXT PRIMARY KEY,
    identity_key BLOB NOT NULL,
    pinned_at    INTEGER NOT NULL,
    pending_fingerprint TEXT
);
CREATE TABLE IF NOT EXISTS messages(
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id    TEXT NOT NULL,
    peer_id       TEXT NOT NULL,
    outgoing      INTEGER NOT NULL,
    body          TEXT NOT NULL,
    at            INTEGER NOT NULL,
    status        INTEGER NOT NULL,
    authenticated INTEGER NOT NULL,
    UNIQUE(peer_id, outgoing, message_id)
);
CREATE INDEX IF NOT EXISTS messages_by_peer ON messages(peer_id, seq);
-- version 2: finds the peers that sent unsigned (original-client) messages without a scan.
CREATE INDEX IF NOT EXISTS messages_unsigned ON messages(peer_id)
    WHERE outgoing = 0 AND authenticated = 0;
-- version 4: the replay guard's high-water marks.
CREATE TABLE IF NOT EXISTS replay_marks(
    peer_id TEXT PRIMARY KEY,
    sent_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox(
    message_id TEXT PRIMARY KEY,
    peer_id    TEXT NOT NULL,
    body       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    -- version 3 (added by `migrate_wire_id` to older files).
    wire_id    TEXT
);
";

/// One stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRecord {
    /// Position in the database; orders a conversation and is the paging cursor.
    pub seq: i64,
    /// The protocol's `messageId`.
    pub message_id: String,
    /// The other side of the conversation.
    pub peer_id: ClientId,
    /// Whether we wrote it.
    pub outgoing: bool,
    /// The text.
    pub body: String,
    /// Unix milliseconds: when we wrote it, or the server's timestamp for incoming messages.
    pub at: i64,
    /// Delivery state.
    pub status: MessageStatus,
    /// For incoming messages: whether the sender was authenticated (`lattice-v1`, signed). Always
    /// true for outgoing ones.
    pub authenticated: bool,
    /// What the content layer added (version 6): reply, edit, tombstone, reactions.
    pub extra: super::message::MessageExtra,
}

/// One row of the peer list, as far as the disk knows it (presence is added by the session).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRecord {
    /// The peer's client id.
    pub peer_id: ClientId,
    /// Messages received since the conversation was last read.
    pub unread: i64,
    /// The person compared fingerprints and marked this contact verified.
    pub user_verified: bool,
    /// The peer has a signed identity (a `lattice-v1` peer) rather than being an original client.
    pub authenticated: bool,
    /// The pinned identity key, if any.
    pub identity_key: Option<Vec<u8>>,
    /// Fingerprint of a different identity key the peer presented, waiting for the person's
    /// decision.
    pub pending_fingerprint: Option<String>,
    /// Text of the latest message, either direction.
    pub last_body: Option<String>,
    /// Time of the latest message (unix ms).
    pub last_at: Option<i64>,
    /// Whether the latest message is ours.
    pub last_outgoing: bool,
    /// Some incoming message from this peer was not signed (an original, `ml-kem-aes` client).
    pub sent_unsigned: bool,
    /// The text typed into this conversation and not sent yet ([`super::drafts`]).
    pub draft: Option<String>,
}

/// One entry of the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    /// The message's id (also its row in `messages`).
    pub message_id: String,
    /// The `messageId` it is sent with, every time (see the module docs).
    pub wire_id: MessageId,
    /// Recipient.
    pub peer_id: ClientId,
    /// The content's wire body (the text, for a text).
    pub body: String,
    /// The content's wire kind; `None` for a text.
    pub kind: Option<String>,
}

/// The database handle. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Db {
    // std Mutex: statements are short and never span an `.await` (see the module docs).
    conn: Mutex<Connection>,
}

impl Db {
    /// Opens (creating if needed) the database at `path`, in WAL mode, and brings the schema up
    /// to date.
    ///
    /// # Errors
    /// [`StorageError::Sqlite`] when the file cannot be opened or migrated.
    pub fn open(path: &Path) -> Result<Self, StorageError> {
        let conn = Connection::open(path)?;
        Self::init(conn)
    }

    /// An in-memory database, for tests.
    ///
    /// # Errors
    /// [`StorageError::Sqlite`] if SQLite cannot create it.
    pub fn open_in_memory() -> Result<Self, StorageError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<Self, StorageError> {
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // WAL: readers never block the writer; NORMAL sync is durable across an app crash
        // (only a power loss can lose the last commits).
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        // Every statement of SCHEMA is idempotent, so one script brings any older version up.
        if version < SCHEMA_VERSION {
            let tx = conn.unchecked_transaction()?;
            let moved = Self::migrate_message_key(&tx)?;
            tx.execute_batch(SCHEMA)?;
            if moved {
                Self::migrate_message_key_rows(&tx)?;
            }
            Self::migrate_wire_id(&tx)?;
            super::search::migrate(&tx)?;
            super::drafts::migrate(&tx)?;
            super::content::migrate(&tx)?;
            super::groups::migrate(&tx)?;
            // After the groups: the files' table has a trigger on `group_messages`.
            super::files::migrate(&tx)?;
            super::keystore::migrate(&tx)?;
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
            tx.commit()?;
        }
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    /// Version 4, first half: a `messages` table made by an older version, unique on
    /// `message_id` alone, is moved aside (SQLite cannot drop a constraint in place), with its
    /// indexes dropped, so that [`SCHEMA`] creates the table and indexes anew. Returns whether it
    /// did; [`Self::migrate_message_key_rows`] then moves the rows over.
    fn migrate_message_key(conn: &Connection) -> Result<bool, StorageError> {
        let old_table: Option<String> = conn
            .query_row(
                "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'messages'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        match old_table {
            Some(sql) if !sql.contains("UNIQUE(peer_id, outgoing, message_id)") => {
                conn.execute_batch(
                    "DROP INDEX IF EXISTS messages_by_peer;
                     DROP INDEX IF EXISTS messages_unsigned;
                     ALTER TABLE messages RENAME TO messages_v3;",
                )?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Version 4, second half: the rows of the old table, `seq` kept, into the new one.
    fn migrate_message_key_rows(conn: &Connection) -> Result<(), StorageError> {
        conn.execute_batch(
            "INSERT INTO messages(seq, message_id, peer_id, outgoing, body, at, status,
                                  authenticated)
                 SELECT seq, message_id, peer_id, outgoing, body, at, status, authenticated
                 FROM messages_v3;
             DROP TABLE messages_v3;",
        )?;
        Ok(())
    }

    /// Version 3: adds `outbox.wire_id` to a file made by an older version (`CREATE TABLE IF NOT
    /// EXISTS` left its outbox as it was) and gives every waiting row a fresh id.
    fn migrate_wire_id(conn: &Connection) -> Result<(), StorageError> {
        let has_column = conn
            .prepare("SELECT 1 FROM pragma_table_info('outbox') WHERE name = 'wire_id'")?
            .exists([])?;
        if !has_column {
            conn.execute_batch("ALTER TABLE outbox ADD COLUMN wire_id TEXT")?;
        }
        let missing: Vec<String> = conn
            .prepare("SELECT message_id FROM outbox WHERE wire_id IS NULL")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        for message_id in missing {
            conn.execute(
                "UPDATE outbox SET wire_id = ?2 WHERE message_id = ?1",
                params![message_id, uuid::Uuid::new_v4().to_string()],
            )?;
        }
        Ok(())
    }

    pub(super) fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (every write is one
        // statement or one transaction), so a poisoned lock is safe to keep using.
        self.conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Makes sure `peer_id` is a contact.
    ///
    /// # Errors
    /// [`StorageError::Sqlite`].
    pub fn ensure_contact(&self, peer_id: &ClientId, now_ms: i64) -> Result<(), StorageError> {
        self.conn().execute(
            "INSERT OR IGNORE INTO contacts(peer_id, first_seen) VALUES (?1, ?2)",
            params![peer_id.as_str(), now_ms],
        )?;
        Ok(())
    }

    /// Marks a contact as verified (or not) by the person, after comparing fingerprints.
    ///
    /// # Errors
    /// [`StorageError::Sqlite`].
    pub fn set_user_verified(
        &self,
        peer_id: &ClientId,
        verified: bool,
    ) -> Result<(), StorageError> {
        self.conn().execute(
            "UPDATE contacts SET user_verified = ?2 WHERE peer_id = ?1",
            params![peer_id.as_str(), verified],
        )?;
        Ok(())
    }

    /// Every contact with its latest message, most recent conversation first, then by name.
    ///
    /// # Errors
    /// [`StorageError::Sqlite`].
    pub fn peers(&self) -> Result<Vec<PeerRecord>, StorageError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT c.peer_id, c.unread, c.user_verified, c.authenticated,
                    k.identity_key, k.pending_fingerprint,
                    CASE WHEN m.deleted THEN 'This message was deleted' ELSE m.body END,
                    m.at, m.outgoing,
                    EXISTS(SELECT 1 FROM messages u WHERE u.peer_id = c.peer_id
                           AND u.outgoing = 0 AND u.authenticated = 0),
                    d.body
             FROM contacts c
             LEFT JOIN pinned_keys k ON k.peer_id = c.peer_id
             LEFT JOIN drafts d ON d.peer_id = c.peer_id
             LEFT JOIN messages m ON m.seq =
                 (SELECT MAX(seq) FROM messages WHERE peer_id = c.peer_id)
             ORDER BY m.seq IS NULL, m.seq DESC, c.peer_id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(PeerRecord {
                peer_id: client_id(r, 0)?,
                unread: r.get(1)?,
                user_verified: r.get(2)?,
                authenticated: r.get(3)?,
                identity_key: r.get(4)?,
                pending_fingerprint: r.get(5)?,
                last_body: r.get(6)?,
                last_at: r.get(7)?,
                last_outgoing: r.get::<_, Option<bool>>(8)?.unwrap_or(false),
                sent_unsigned: r.get(9)?,
                draft: r.get(10)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// One contact, if known.
    ///
    /// # Errors
    /// [`StorageError::Sqlite`].
    pub fn peer(&self, peer_id: &ClientId) -> Result<Option<PeerRecord>, StorageError> {
        Ok(self.peers()?.into_iter().find(|p| &p.peer_id == peer_id))
    }

    /// Stores an outgoing message and puts it in the outbox, in one transaction. `wire_id` is the
    /// `messageId` every send of it will carry.
    ///
    /// # Errors
    /// [`StorageError::Sqlite`].
    pub fn enqueue_outgoing(
        &self,
        message_id: &str,
        wire_id: &MessageId,
        peer_id: &ClientId,
        body: &str,
        now_ms: i64,
    ) -> Result<MessageRecord, StorageError> {
        self.enqueue_message(message_id, wire_id, peer_id, body, None, now_ms)
    }

    /// [`Db::enqueue_outgoing`] for a text or, with `reply`, a reply to an earlier message: the
    /// outbox row then carries the reply's wire body.
    ///
    /// # Errors
    /// [`StorageError::Sqlite`]; [`StorageError::Content`] if the reply cannot be encoded.
    pub fn enqueue_message(
        &self,
        message_id: &str,
        wire_id: &MessageId,
        peer_id: &ClientId,
        body: &str,
        reply: Option<&super::message::ReplyRef>,
        now_ms: i64,
    ) -> Result<MessageRecord, StorageError> {
        let (kind, wire_body) = match reply {
            Some(r) => {
                let content = r.content(body.to_owned())?;
                let (kind, wire) = content.encode()?;
                (Some(kind.to_owned()), wire)
            }
            None => (None, body.to_owned()),
        };
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT OR IGNORE INTO contacts(peer_id, first_seen) VALUES (?1, ?2)",
            params![peer_id.as_str(), now_ms],
        )?;
        tx.execute(
            "INSERT INTO messages(message_id, peer_id, outgoing, body, at, status, authenticated,
                                  wire_id, sent_at, reply_sender, reply_id, reply_excerpt)
             VALUES (?1, ?2, 1, ?3, ?4, ?5, 1, ?6, ?4, ?7, ?8, ?9)",
            params![
                message_id,
                peer_id.as_str(),
                body,
                now_ms,
                MessageStatus::Pending.rank(),
                wire_id.as_str(),
                reply.map(|r| r.sender.as_str()),
                reply.map(|r| r.message_id.as_str()),
                reply.map(|r| r.excerpt.as_str()),
            ],
        )?;
        let seq = tx.last_insert_rowid();
        insert_outbox(
            &tx,
            message_id,
            peer_id,
            &wire_body,
            now_ms,
            wire_id,
            kind.as_deref(),
        )?;
        let record = Self::message_by_seq(&tx, seq)?;
        tx.commit()?;
        record.ok_or(StorageError::Missing("the message just stored"))
    }

    /// Stores an incoming message and counts it unread unless `read` is set. Returns `None` if
    /// a message with this id from this peer is already stored (a redelivery after a
    /// reconnect); the same id from another peer is another message.
    ///
    /// # Errors
    /// [`StorageError::Sqlite`].
    pub fn insert_incoming(
        &self,
        message_id: &str,
        peer_id: &ClientId,
        body: &str,
        at_ms: i64,
        authenticated: bool,
        read: bool,
    ) -> Result<Option<MessageRecord>, StorageError> {
        self.insert_received(&super::message::Received {
            message_id,
            peer_id,
            body,
            at_ms,
            sent_at: None,
            authenticated,
            read,
            reply: None,
        })
    }

    /// [`Db::insert_incoming`] with the signed `sentAt` and the reply it answers, if any.
    ///
    /// # Errors
    /// [`StorageError::Sqlite`].
    pub fn insert_received(
        &self,
        m: &super::message::Received<'_>,
    ) -> Result<Option<MessageRecord>, StorageError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT OR IGNORE INTO contacts(peer_id, first_seen) VALUES (?1, ?2)",
            params![m.peer_id.as_str(), m.at_ms],
        )?;
        let inserted = tx.execute(
            "INSERT OR IGNORE INTO messages(message_id, peer_id, outgoing, body, at, status,
                                            authenticated, wire_id, sent_at, reply_sender,
                                            reply_id, reply_excerpt)
             VALUES (?1, ?2, 0, ?3, ?4, ?5, ?6, ?1, ?7, ?8, ?9, ?10)",
            params![
                m.message_id,
                m.peer_id.as_str(),
                m.body,
                m.at_ms,
                MessageStatus::Received.rank(),
                m.authenticated,
                m.sent_at.unwrap_or(m.at_ms),
                m.reply.map(|r| r.sender.as_str()),
                m.reply.map(|r| r.message_id.as_str()),
                m.reply.map(|r| r.excerpt.as_str()),
            ],
        )?;
        if inserted == 0 {
            return Ok(None);
        }
        let seq = tx.last_insert_rowid();
        if !m.read {
            tx.execute(
                "UPDATE contacts SET unread = unread + 1 WHERE peer_id = ?1",
                params![m.peer_id.as_str()],
            )?;
        }
        let record = Self::message_by_seq(&tx, seq)?;
        tx.commit()?;
        Ok(record)
    }

    /// Moves an outgoing message forward to `status` (never backwards; `Failed` only replaces
    /// `Pending` or `Sent`). When the server has taken responsibility for it (queued, delivered)
    /// or refused it, it also leaves the outbox. Returns the updated message, or `None` if
    /// nothing changed.
    ///
    /// # Errors
    /// [`StorageError::Sqlite`].
    pub fn advance_status(
        &self,
        message_id: &str,
        status: MessageStatus,
    ) -> Result<Option<MessageRecord>, StorageError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        // The statuses this one may replace, as a bit set over their ranks: the rule lives in
        // `DeliveryStatus::may_replace` only.
        let replaceable: i64 = MessageStatus::ALL
            .iter()
            .filter(|current| status.may_replace(**current))
            .fold(0, |set, current| set | (1 << current.rank()));
        let changed = tx.execute(
            "UPDATE messages SET status = ?2 WHERE message_id = ?1 AND outgoing = 1
             AND ((1 << status) & ?3) != 0",
            params![message_id, status.rank(), replaceable],
        )?;
        if matches!(
            status,
            MessageStatus::Queued | MessageStatus::Delivered | MessageStatus::Failed
        ) {
            tx.execute(
                "DELETE FROM outbox WHERE message_id = ?1",
                params![message_id],
            )?;
        }
        let record = if changed > 0 {
            Self::message_in(&tx, message_id)?
        } else {
            None
        };
        tx.commit()?;
        Ok(record)
    }

    fn message_in(
        conn: &Connection,
        message_id: &str,
    ) -> Result<Option<MessageRecord>, StorageError> {
        Ok(conn
            .query_row(
                &format!("{MESSAGE_SELECT} WHERE message_id = ?1 AND outgoing = 1"),
                params![message_id],
                row_to_message,
            )
            .optional()?)
    }

    /// One message by its `seq`.
    pub(super) fn message_by_seq(
        conn: &Connection,
        seq: i64,
    ) -> Result<Option<MessageRecord>, StorageError> {
        Ok(conn
            .query_row(
                &format!("{MESSAGE_SELECT} WHERE seq = ?1"),
                params![seq],
                row_to_message,
            )
            .optional()?)
    }

    /// One of our own messages by its local id.
    ///
    /// # Errors
    /// [`StorageError::Sqlite`].
    pub fn outgoing_message(
        &self,
        message_id: &str,
    ) -> Result<Option<MessageRecord>, StorageError> {
        Self::message_in(&self.conn(), message_id)
    }

    /// The outbox, oldest first.
    ///
    /// # Errors
    /// [`StorageError::Sqlite`].
    pub fn outbox(&self) -> Result<Vec<OutboxEntry>, StorageError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            // Edits, deletes and reactions have no row in `messages`: the order is the outbox's
            // own (an edit goes after the message it edits).
            "SELECT o.message_id, o.peer_id, o.body, o.wire_id, o.kind FROM outbox o
             ORDER BY o.rowid",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(OutboxEntry {
                message_id: r.get(0)?,
                peer_id: client_id(r, 1)?,
                body: r.get(2)?,
                wire_id: message_id(r, 3)?,
                kind: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// A page of a conversation, oldest first: the `limit` messages just before `before` (a
    /// `seq`), or the latest ones when `before` is `None`. `limit` is capped at [`MAX_PAGE`] + 1
    /// (callers ask for one more than they show, to learn whether there is more).
    ///
    /// # Errors
    /// [`StorageError::Sqlite`].
    pub fn page(
        &self,
        peer_id: &ClientId,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<MessageRecord>, StorageError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "{MESSAGE_SELECT} WHERE peer_id = ?1 AND seq < ?2 ORDER BY seq DESC LIMIT ?3"
        ))?;
        let rows = stmt.query_map(
            params![
                peer_id.as_str(),
                before.unwrap_or(i64::MAX),
                limit.min(MAX_PAGE + 1)
            ],
            row_to_message,
        )?;
        let mut page: Vec<MessageRecord> = rows.collect::<Result<_, _>>()?;
        page.reverse();
        Ok(page)
    }

    /// A page of a conversation, oldest first: the `limit` messages just after `after` (a
    /// `seq`). For walking forward again after older pages pushed the newest out of view.
    ///
    /// # Errors
    /// [`StorageError::Sqlite`].
    pub fn page_after(
        &self,
        peer_id: &ClientId,
        after: i64,
        limit: u32,
    ) -> Result<Vec<MessageRecord>, StorageError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "{MESSAGE_SELECT} WHERE peer_id = ?1 AND seq > ?2 ORDER BY seq ASC LIMIT ?3"
        ))?;
        let rows = stmt.query_map(
            params![peer_id.as_str(), after, limit.min(MAX_PAGE + 1)],
            row_to_message,
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Clears the unread count of a conversation.
    ///
    /// # Errors
    /// [`StorageError::Sqlite`].
    pub fn mark_read(&self, peer_id: &ClientId) -> Result<(), StorageError> {
        self.conn().execute(
            "UPDATE contacts SET unread = 0 WHERE peer_id = ?1",
            params![peer_id.as_str()],
        )?;
        Ok(())
    }

    /// Unread messages over all conversations (for the tray).
    ///
    /// # Errors
    /// [`StorageError::Sqlite`].
    pub fn total_unread(&self) -> Result<i64, StorageError> {
        Ok(self.conn().query_row(
            "SELECT (SELECT COALESCE(SUM(unread), 0) FROM contacts)
                      + (SELECT COALESCE(SUM(unread), 0) FROM groups)",
            [],
            |r| r.get(0),
        )?)
    }

    /// The replay high-water mark of `peer_id`: the newest `sentAt` accepted from it.
    ///
    /// # Errors
    /// [`StorageError::Sqlite`].
    pub fn replay_mark(&self, peer_id: &ClientId) -> Result<Option<i64>, StorageError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT sent_at FROM replay_marks WHERE peer_id = ?1",
                params![peer_id.as_str()],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Raises the replay high-water mark of `peer_id` to `sent_at` (never lowers it).
    ///
    /// # Errors
    /// [`StorageError::Sqlite`].
    pub fn raise_replay_mark(&self, peer_id: &ClientId, sent_at: i64) -> Result<(), StorageError> {
        self.conn().execute(
            "INSERT INTO replay_marks(peer_id, sent_at) VALUES (?1, ?2)
             ON CONFLICT(peer_id) DO UPDATE SET sent_at = MAX(sent_at, excluded.sent_at)",
            params![peer_id.as_str(), sent_at],
        )?;
        Ok(())
    }

    /// The pinned identity key of `peer_id` (the [`KeyStore`] read).
    ///
    /// [`KeyStore`]: lattice_peer::KeyStore
    ///
    /// # Errors
    /// [`StorageError::Sqlite`].
    pub fn pinned_key(&self, peer_id: &ClientId) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT identity_key FROM pinned_keys WHERE peer_id = ?1",
                params![peer_id.as_str()],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Pins `key` as the identity key of `peer`, replacing any earlier one (the [`KeyStore`]
    /// write). A different key than before clears the pending change and the contact's verified
    /// mark: the new key has not been compared.
    ///
    /// [`KeyStore`]: lattice_peer::KeyStore
    ///
    /// # Errors
    /// [`StorageError::Sqlite`].
    pub fn pin_key(&self, peer_id: &ClientId, key: &[u8], now_ms: i64) -> Result<(), StorageError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT OR IGNORE INTO contacts(peer_id, first_seen) VALUES (?1, ?2)",
            params![peer_id.as_str(), now_ms],
        )?;
        let previous: Option<Vec<u8>> = tx
            .query_row(
                "SELECT identity_key FROM pinned_keys WHERE peer_id = ?1",
                params![peer_id.as_str()],
                |r| r.get(0),
            )
            .optional()?;
        match previous {
            Some(old) if old == key => {}
            Some(_) => {
                tx.execute(
                    "UPDATE pinned_keys SET identity_key = ?2, pinned_at = ?3,
                     pending_fingerprint = NULL WHERE peer_id = ?1",
                    params![peer_id.as_str(), key, now_ms],
                )?;
                tx.execute(
                    "UPDATE contacts SET user_verified = 0 WHERE peer_id = ?1",
                    params![peer_id.as_str()],
                )?;
            }
            None => {
                tx.execute(
                    "INSERT INTO pinned_keys(peer_id, identity_key, pinned_at) VALUES (?1, ?2, ?3)",
                    params![peer_id.as_str(), key, now_ms],
                )?;
            }
        }
        tx.execute(
            "UPDATE contacts SET authenticated = 1 WHERE peer_id = ?1",
            params![peer_id.as_str()],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Records that `peer` presented a different identity key (fingerprint `new_fingerprint`)
    /// than the pinned one; the warning stays until the change is accepted, across restarts.
    ///
    /// # Errors
    /// [`StorageError::Sqlite`].
    pub fn set_key_change(
        &self,
        peer_id: &ClientId,
        new_fingerprint: &str,
    ) -> Result<(), StorageError> {
        self.conn().execute(
            "UPDATE pinned_keys SET pending_fingerprint = ?2 WHERE peer_id = ?1",
            params![peer_id.as_str(), new_fingerprint],
        )?;
        Ok(())
    }
}

/// The columns [`row_to_message`] reads, with the message's reactions folded into one column,
/// the `seq` of the message a reply answers (when it is stored here) and its attachment's
/// columns (`super::files::attachment_columns!`, `NULL` for a message without a file). The
/// join is `USING (seq)`, so the conditions callers append may name `seq` unqualified.
pub(super) const MESSAGE_SELECT: &str = concat!(
    "SELECT seq, message_id, peer_id, outgoing, body, at, status, authenticated, wire_id,
            edited_at, deleted, reply_sender, reply_id, reply_excerpt, rev,
            (SELECT group_concat(r.reactor || char(31) || r.emoji, char(30))
             FROM reactions r WHERE r.seq = messages.seq),
            (SELECT t.seq FROM messages t
             WHERE t.peer_id = messages.peer_id AND t.wire_id = messages.reply_id
               AND t.outgoing = (messages.reply_sender != messages.peer_id)), ",
    super::files::attachment_columns!(),
    " FROM messages LEFT JOIN ",
    super::files::chat_attachments!(),
    " a USING (seq)"
);

pub(super) fn row_to_message(r: &rusqlite::Row<'_>) -> rusqlite::Result<MessageRecord> {
    Ok(MessageRecord {
        seq: r.get(0)?,
        message_id: r.get(1)?,
        peer_id: client_id(r, 2)?,
        outgoing: r.get(3)?,
        body: r.get(4)?,
        at: r.get(5)?,
        status: MessageStatus::from_rank(r.get(6)?),
        authenticated: r.get(7)?,
        extra: super::message::MessageExtra::from_row(r, 8)?,
    })
}

/// An id column read as a [`ClientId`]: parsed once, here, where it leaves the database.
fn client_id(r: &rusqlite::Row<'_>, column: usize) -> rusqlite::Result<ClientId> {
    let text: String = r.get(column)?;
    ClientId::try_from(text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(column, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// An id column read as a [`MessageId`].
fn message_id(r: &rusqlite::Row<'_>, column: usize) -> rusqlite::Result<MessageId> {
    let text: String = r.get(column)?;
    MessageId::try_from(text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(column, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// One outbox row: `local_id` (the history's id), its conversation, the wire body of its content
/// and its kind (`None` for a plain text), in the order of the rowid it gets.
pub(super) fn insert_outbox(
    conn: &Connection,
    local_id: &str,
    peer: &ClientId,
    body: &str,
    now_ms: i64,
    wire_id: &MessageId,
    kind: Option<&str>,
) -> Result<(), StorageError> {
    conn.execute(
        "INSERT INTO outbox(message_id, peer_id, body, created_at, wire_id, kind)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            local_id,
            peer.as_str(),
            body,
            now_ms,
            wire_id.as_str(),
            kind
        ],
    )?;
    Ok(())
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

    #[test]
    fn outgoing_message_stays_in_outbox_until_the_server_takes_it() {
        let db = Db::open_in_memory().unwrap();
        db.enqueue_outgoing("m1", &w("w1"), &c("bob"), "hi", 10)
            .unwrap();
        assert_eq!(db.outbox().unwrap().len(), 1);

        let sent = db
            .advance_status("m1", MessageStatus::Sent)
            .unwrap()
            .unwrap();
        assert_eq!(sent.status, MessageStatus::Sent);
        assert_eq!(
            db.outbox().unwrap().len(),
            1,
            "sent is not yet acknowledged"
        );

        db.advance_status("m1", MessageStatus::Delivered).unwrap();
        assert!(db.outbox().unwrap().is_empty());
        // An ack that overtook the send's own return never moves it back.
        assert!(db
            .advance_status("m1", MessageStatus::Sent)
            .unwrap()
            .is_none());
        assert!(db
            .advance_status("m1", MessageStatus::Failed)
            .unwrap()
            .is_none());
        assert_eq!(
            db.outgoing_message("m1").unwrap().unwrap().status,
            MessageStatus::Delivered
        );
    }

    #[test]
    fn incoming_messages_are_deduplicated_and_counted_unread() {
        let db = Db::open_in_memory().unwrap();
        assert!(db
            .insert_incoming("x", &c("bob"), "one", 1, true, false)
            .unwrap()
            .is_some());
        assert!(db
            .insert_incoming("x", &c("bob"), "one", 1, true, false)
            .unwrap()
            .is_none());
        db.insert_incoming("y", &c("bob"), "two", 2, true, false)
            .unwrap();
        assert_eq!(db.total_unread().unwrap(), 2);
        let peers = db.peers().unwrap();
        assert_eq!(peers[0].last_body.as_deref(), Some("two"));
        // Ids are the sender's: carol's "x" is not bob's "x".
        assert!(db
            .insert_incoming("x", &c("carol"), "carol's", 3, true, true)
            .unwrap()
            .is_some());
        assert_eq!(db.page(&c("carol"), None, 10).unwrap()[0].body, "carol's");
        assert_eq!(db.page(&c("bob"), None, 10).unwrap()[0].body, "one");
        db.mark_read(&c("bob")).unwrap();
        assert_eq!(db.total_unread().unwrap(), 0);
    }

    #[test]
    fn pages_walk_back_through_a_conversation() {
        let db = Db::open_in_memory().unwrap();
        for i in 0..25 {
            db.insert_incoming(&format!("m{i}"), &c("bob"), &i.to_string(), i, true, true)
                .unwrap();
        }
        db.insert_incoming("other", &c("carol"), "x", 0, true, true)
            .unwrap();
        let last = db.page(&c("bob"), None, 10).unwrap();
        assert_eq!(last.len(), 10);
        assert_eq!(last[0].body, "15");
        assert_eq!(last[9].body, "24");
        let before = db.page(&c("bob"), Some(last[0].seq), 10).unwrap();
        assert_eq!(before[9].body, "14");
        let first = db.page(&c("bob"), Some(before[0].seq), 10).unwrap();
        assert_eq!(first.len(), 5);
        assert_eq!(first[0].body, "0");
        let forward = db.page_after(&c("bob"), first[4].seq, 3).unwrap();
        let bodies: Vec<&str> = forward.iter().map(|m| m.body.as_str()).collect();
        assert_eq!(bodies, ["5", "6", "7"]);
        assert!(db
            .page_after(&c("bob"), last[9].seq, 10)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn pinning_a_new_key_clears_the_change_and_the_verified_mark() {
        let db = Db::open_in_memory().unwrap();
        db.pin_key(&c("bob"), b"k1", 0).unwrap();
        assert_eq!(db.pinned_key(&c("bob")).unwrap().unwrap(), b"k1");
        db.set_user_verified(&c("bob"), true).unwrap();
        db.pin_key(&c("bob"), b"k1", 0).unwrap();
        assert!(db.peer(&c("bob")).unwrap().unwrap().user_verified);
        db.set_key_change(&c("bob"), "12345 ...").unwrap();
        let bob = db.peer(&c("bob")).unwrap().unwrap();
        assert_eq!(bob.pending_fingerprint.as_deref(), Some("12345 ..."));
        assert!(bob.authenticated);
        db.pin_key(&c("bob"), b"k2", 1).unwrap();
        let bob = db.peer(&c("bob")).unwrap().unwrap();
        assert_eq!(bob.identity_key.as_deref(), Some(&b"k2"[..]));
        assert!(bob.pending_fingerprint.is_none());
        assert!(!bob.user_verified, "a new key has not been compared");
    }

    #[test]
    fn survives_reopening_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.sqlite3");
        {
            let db = Db::open(&path).unwrap();
            db.enqueue_outgoing("m1", &w("w1"), &c("bob"), "typed offline", 5)
                .unwrap();
        }
        let db = Db::open(&path).unwrap();
        assert_eq!(db.outbox().unwrap()[0].body, "typed offline");
        assert_eq!(db.outbox().unwrap()[0].wire_id.as_str(), "w1");
        assert_eq!(db.page(&c("bob"), None, 50).unwrap().len(), 1);
    }

    #[test]
    fn a_version_2_file_gets_a_wire_id_for_each_waiting_message_and_per_sender_ids() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.sqlite3");
        {
            // The version 2 outbox and a message waiting in it.
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE outbox(
                     message_id TEXT PRIMARY KEY,
                     peer_id    TEXT NOT NULL,
                     body       TEXT NOT NULL,
                     created_at INTEGER NOT NULL
                 );
                 CREATE TABLE messages(
                     seq           INTEGER PRIMARY KEY AUTOINCREMENT,
                     message_id    TEXT NOT NULL UNIQUE,
                     peer_id       TEXT NOT NULL,
                     outgoing      INTEGER NOT NULL,
                     body          TEXT NOT NULL,
                     at            INTEGER NOT NULL,
                     status        INTEGER NOT NULL,
                     authenticated INTEGER NOT NULL
                 );
                 INSERT INTO messages(message_id, peer_id, outgoing, body, at, status, authenticated)
                     VALUES ('m1', 'bob', 1, 'old', 1, 0, 1);
                 INSERT INTO outbox VALUES ('m1', 'bob', 'old', 1);
                 PRAGMA user_version = 2;",
            )
            .unwrap();
        }
        let wire_id = {
            let db = Db::open(&path).unwrap();
            let outbox = db.outbox().unwrap();
            assert_eq!(outbox.len(), 1);
            assert_eq!(outbox[0].body, "old");
            assert!(lattice_protocol::MessageId::new(outbox[0].wire_id.as_str()).is_ok());
            db.enqueue_outgoing("m2", &w("w2"), &c("bob"), "new", 2)
                .unwrap();
            outbox[0].wire_id.clone()
        };
        // Reopening keeps the ids: the migration ran once.
        let db = Db::open(&path).unwrap();
        // Version 4: the table was rebuilt with its indexes; its rows kept, ids now per sender.
        assert_eq!(db.page(&c("bob"), None, 10).unwrap()[0].body, "old");
        let indexes: i64 = db
            .conn()
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND tbl_name = 'messages'
                 AND name IN ('messages_by_peer', 'messages_unsigned')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(indexes, 2);
        assert!(db
            .insert_incoming("m1", &c("carol"), "same id, other sender", 3, true, true)
            .unwrap()
            .is_some());
        assert!(db
            .insert_incoming("m1", &c("carol"), "same id, other sender", 3, true, true)
            .unwrap()
            .is_none());
        let ids: Vec<String> = db
            .outbox()
            .unwrap()
            .into_iter()
            .map(|e| e.wire_id.as_str().to_owned())
            .collect();
        assert_eq!(ids, [wire_id.as_str().to_owned(), "w2".to_owned()]);
    }
}
