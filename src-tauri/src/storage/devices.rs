//! What a **linked device** keeps beside the history (schema version 13, in tables of their own
//! so no other table changes): which of our own messages another device of this id sent
//! (`own_sent_from`: "from laptop", "from primary"), and when this device was removed from its id
//! (`device_removed`), so a removed device stays removed across restarts and never dials again.
//!
//! Our own messages from another device are stored like the ones this device sent: outgoing,
//! in the same `messages` / `group_messages` tables (so search, export and backups see them),
//! never counted unread.

use lattice_protocol::ClientId;
use rusqlite::{params, Connection, OptionalExtension};

use super::error::StorageError;
use super::groups::{GroupLine, GroupLineKind, NewGroupLine};
use super::{Db, MessageRecord, MessageStatus};

const DEVICES_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS own_sent_from(
    conversation INTEGER NOT NULL,
    seq          INTEGER NOT NULL,
    device       TEXT NOT NULL,
    PRIMARY KEY(conversation, seq)
);
CREATE TABLE IF NOT EXISTS device_removed(
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    removed_at INTEGER NOT NULL
);
";

/// `own_sent_from.conversation` of a 1:1 message (`messages.seq`).
const DIRECT: i64 = 0;
/// `own_sent_from.conversation` of a group line (`group_messages.seq`).
const GROUP: i64 = 1;

/// What the page calls the id's primary device when it sent one of our messages (the
/// protocol's reserved device id).
pub use lattice_protocol::PRIMARY_DEVICE;

/// Schema version 13: the tables above (idempotent).
///
/// # Errors
/// [`StorageError::Sqlite`].
pub(crate) fn migrate(conn: &Connection) -> Result<(), StorageError> {
    conn.execute_batch(DEVICES_SCHEMA)?;
    Ok(())
}

/// One of our messages another device of this id sent in a 1:1 conversation.
#[derive(Debug, Clone, Copy)]
pub struct OwnDirect<'a> {
    /// The contact.
    pub peer_id: &'a ClientId,
    /// The sending device's message id (kept as both ids: a redelivery is stored once).
    pub wire_id: &'a str,
    /// The text.
    pub body: &'a str,
    /// When it was sent (unix ms).
    pub at: i64,
    /// The sending device ([`PRIMARY_DEVICE`] for the primary).
    pub device: &'a str,
}

impl Db {
    /// Stores one of our messages sent from another device of this id as an outgoing message
    /// of the 1:1 with `peer_id` (sent, not unread), with the device it came from. `None` when
    /// it is stored already (a redelivery).
    ///
    /// # Errors
    /// [`StorageError::Sqlite`].
    pub fn insert_own_direct(
        &self,
        m: &OwnDirect<'_>,
    ) -> Result<Option<MessageRecord>, StorageError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT OR IGNORE INTO contacts(peer_id, first_seen) VALUES (?1, ?2)",
            params![m.peer_id.as_str(), m.at],
        )?;
        let inserted = tx.execute(
            "INSERT OR IGNORE INTO messages(message_id, peer_id, outgoing, body, at, status,
                                            authenticated, wire_id, sent_at)
             VALUES (?1, ?2, 1, ?3, ?4, ?5, 1, ?1, ?4)",
            params![
                m.wire_id,
                m.peer_id.as_str(),
                m.body,
                m.at,
                MessageStatus::Sent.rank()
            ],
        )?;
        if inserted == 0 {
            return Ok(None);
        }
        let seq = tx.last_insert_rowid();
        tx.execute(
            "INSERT OR REPLACE INTO own_sent_from(conversation, seq, device) VALUES (?1, ?2, ?3)",
            params![DIRECT, seq, m.device],
        )?;
        let record = Self::message_by_seq(&tx, seq)?;
        tx.commit()?;
        Ok(record)
    }

    /// Stores one of our messages sent from `device` in a group as an outgoing line. `None`
    /// when it is stored already.
    ///
    /// # Errors
    /// [`StorageError::Sqlite`].
    pub fn insert_own_group_line(
        &self,
        line: &NewGroupLine<'_>,
        device: &str,
    ) -> Result<Option<GroupLine>, StorageError> {
        let line = NewGroupLine {
            kind: GroupLineKind::Message,
            outgoing: true,
            status: MessageStatus::Sent,
            ..*line
        };
        let Some(stored) = self.insert_group_line(&line)? else {
            return Ok(None);
        };
        let conn = self.conn();
        conn.execute(
            "INSERT OR REPLACE INTO own_sent_from(conversation, seq, device) VALUES (?1, ?2, ?3)",
            params![GROUP, stored.seq, device],
        )?;
        // It came with the id it was sent with: replies, edits and reactions name it by that.
        conn.execute(
            "UPDATE group_messages SET wire_id = ?2 WHERE seq = ?1 AND wire_id IS NULL",
            params![stored.seq, line.message_id],
        )?;
        drop(conn);
        self.group_line(line.group_id, stored.seq)
    }

    /// The other device of this id that sent the 1:1 message `seq`, if another one did.
    ///
    /// # Errors
    /// [`StorageError::Sqlite`].
    pub fn sent_from(&self, seq: i64) -> Result<Option<String>, StorageError> {
        self.sent_from_in(DIRECT, seq)
    }

    /// The other device of this id that sent the group line `seq`, if another one did.
    ///
    /// # Errors
    /// [`StorageError::Sqlite`].
    pub fn group_line_sent_from(&self, seq: i64) -> Result<Option<String>, StorageError> {
        self.sent_from_in(GROUP, seq)
    }

    fn sent_from_in(&self, conversation: i64, seq: i64) -> Result<Option<String>, StorageError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT device FROM own_sent_from WHERE conversation = ?1 AND seq = ?2",
                params![conversation, seq],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Records that this device was removed from its id at `at` (unix ms); the first time
    /// counts. Returns when it was removed.
    ///
    /// # Errors
    /// [`StorageError::Sqlite`].
    pub fn mark_device_removed(&self, at: i64) -> Result<i64, StorageError> {
        let conn = self.conn();
        conn.execute(
            "INSERT OR IGNORE INTO device_removed(id, removed_at) VALUES (1, ?1)",
            params![at],
        )?;
        Ok(conn.query_row(
            "SELECT removed_at FROM device_removed WHERE id = 1",
            [],
            |r| r.get(0),
        )?)
    }

    /// When this device was removed from its id, if it was.
    ///
    /// # Errors
    /// [`StorageError::Sqlite`].
    pub fn device_removed_at(&self) -> Result<Option<i64>, StorageError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT removed_at FROM device_removed WHERE id = 1",
                [],
                |r| r.get(0),
            )
            .optional()?)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn an_own_message_from_another_device_is_outgoing_read_once_and_names_its_device() {
        let db = Db::open_in_memory().unwrap();
        let bob = ClientId::new("bob").unwrap();
        let own = OwnDirect {
            peer_id: &bob,
            wire_id: "w-1",
            body: "from the laptop",
            at: 10,
            device: "laptop",
        };
        let stored = db.insert_own_direct(&own).unwrap().unwrap();
        assert!(stored.outgoing);
        assert_eq!(stored.status, MessageStatus::Sent);
        assert_eq!(stored.extra.wire_id.as_deref(), Some("w-1"));
        assert!(db.insert_own_direct(&own).unwrap().is_none(), "stored once");
        assert_eq!(db.sent_from(stored.seq).unwrap().as_deref(), Some("laptop"));
        assert_eq!(db.total_unread().unwrap(), 0);
        let page = db.page(&bob, None, 10).unwrap();
        assert_eq!(page.len(), 1);
        assert_eq!(page[0].body, "from the laptop");
    }

    #[test]
    fn an_own_group_line_is_outgoing_and_not_unread() {
        let db = Db::open_in_memory().unwrap();
        db.ensure_group("ab01", "Trip", 1).unwrap();
        let me = ClientId::new("alice").unwrap();
        let line = NewGroupLine {
            group_id: "ab01",
            kind: GroupLineKind::Message,
            sender: Some(&me),
            message_id: "g-1",
            outgoing: false,
            body: "plans",
            at: 5,
            status: MessageStatus::Received,
        };
        let stored = db
            .insert_own_group_line(&line, PRIMARY_DEVICE)
            .unwrap()
            .unwrap();
        assert!(stored.outgoing);
        assert!(db
            .insert_own_group_line(&line, PRIMARY_DEVICE)
            .unwrap()
            .is_none());
        assert_eq!(
            db.group_line_sent_from(stored.seq).unwrap().as_deref(),
            Some(PRIMARY_DEVICE)
        );
        assert_eq!(db.group("ab01").unwrap().unwrap().unread, 0);
    }

    #[test]
    fn the_first_removal_time_is_kept() {
        let db = Db::open_in_memory().unwrap();
        assert_eq!(db.device_removed_at().unwrap(), None);
        assert_eq!(db.mark_device_removed(100).unwrap(), 100);
        assert_eq!(db.mark_device_removed(200).unwrap(), 100);
        assert_eq!(db.device_removed_at().unwrap(), Some(100));
    }
}
