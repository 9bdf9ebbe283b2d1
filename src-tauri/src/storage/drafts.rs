//! Drafts: the text typed into a conversation's composer and not sent yet, one per
//! conversation, kept across restarts (`drafts(peer_id PK, body, updated_at)`, schema version 5).
//! An empty draft is no draft: saving one removes the row.

use rusqlite::{params, Connection, OptionalExtension};

use lattice_protocol::ClientId;

use super::db::Db;
use super::error::StorageError;

const DRAFTS_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS drafts(
    peer_id    TEXT PRIMARY KEY,
    body       TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
";

/// Schema version 5, drafts half: creates the table (idempotent).
///
/// # Errors
/// [`StorageError::Sqlite`].
pub(crate) fn migrate(conn: &Connection) -> Result<(), StorageError> {
    conn.execute_batch(DRAFTS_SCHEMA)?;
    Ok(())
}

impl Db {
    /// The draft of the conversation with `peer`, if any.
    ///
    /// # Errors
    /// [`StorageError::Sqlite`].
    pub fn draft(&self, peer: &ClientId) -> Result<Option<String>, StorageError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT body FROM drafts WHERE peer_id = ?1",
                params![peer.as_str()],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Keeps `body` as the draft of the conversation with `peer`; an empty or blank one removes
    /// it. The caller bounds its size.
    ///
    /// # Errors
    /// [`StorageError::Sqlite`].
    pub fn set_draft(&self, peer: &ClientId, body: &str, now_ms: i64) -> Result<(), StorageError> {
        let conn = self.conn();
        if body.trim().is_empty() {
            conn.execute(
                "DELETE FROM drafts WHERE peer_id = ?1",
                params![peer.as_str()],
            )?;
        } else {
            conn.execute(
                "INSERT INTO drafts(peer_id, body, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT(peer_id) DO UPDATE SET body = excluded.body,
                                                    updated_at = excluded.updated_at",
                params![peer.as_str(), body, now_ms],
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn c(id: &str) -> ClientId {
        ClientId::new(id).unwrap()
    }

    #[test]
    fn a_draft_per_conversation_survives_reopening_and_an_empty_one_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.sqlite3");
        {
            let db = Db::open(&path).unwrap();
            db.set_draft(&c("bob"), "half a thought", 1).unwrap();
            db.set_draft(&c("carol"), "first", 1).unwrap();
            db.set_draft(&c("carol"), "second", 2).unwrap();
        }
        let db = Db::open(&path).unwrap();
        assert_eq!(
            db.draft(&c("bob")).unwrap().as_deref(),
            Some("half a thought")
        );
        assert_eq!(db.draft(&c("carol")).unwrap().as_deref(), Some("second"));
        assert_eq!(db.draft(&c("dave")).unwrap(), None);
        db.set_draft(&c("bob"), "  \n", 3).unwrap();
        assert_eq!(db.draft(&c("bob")).unwrap(), None);
    }
}
