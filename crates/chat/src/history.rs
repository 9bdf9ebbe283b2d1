//! The local message history of `lattice-chat`: one SQLite file next to the identity
//! (`<id>.history`, mode 0600), with an FTS5 index for `/search`.
//!
//! Every message shown (received or sent) is a row; its row number is the `#n` printed in front
//! of it and used by `/reply n` and `/react n`. Edits replace the text (the edit time is kept, so a
//! replayed edit changes nothing), deletes leave a tombstone (the text is dropped, from the index
//! too), reactions are kept per reacting peer. The history also answers the library's
//! [`MessageLookup`], so that edits, deletes, reactions and receipts referring to messages of an
//! earlier run are checked against it.

use std::path::Path;
use std::sync::Mutex;

use lattice_peer::{KnownMessage, MessageLookup, PeerError};
use lattice_protocol::{ClientId, MessageId};
use rusqlite::{params, Connection, OptionalExtension as _};

/// Most rows `/search` prints.
pub const SEARCH_LIMIT: usize = 20;
/// Most words `/search` takes (more are refused, not cut silently).
pub const SEARCH_MAX_WORDS: usize = 16;
/// Longest word `/search` takes, in bytes.
pub const SEARCH_MAX_WORD_BYTES: usize = 64;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS messages (
    n          INTEGER PRIMARY KEY AUTOINCREMENT,
    peer       TEXT NOT NULL,
    sender     TEXT NOT NULL,
    message_id TEXT NOT NULL,
    text       TEXT NOT NULL,
    sent_at    INTEGER NOT NULL,
    edited_at  INTEGER,
    deleted    INTEGER NOT NULL DEFAULT 0,
    UNIQUE (peer, sender, message_id)
);
CREATE TABLE IF NOT EXISTS reactions (
    n       INTEGER NOT NULL REFERENCES messages (n),
    reactor TEXT NOT NULL,
    emoji   TEXT NOT NULL,
    PRIMARY KEY (n, reactor, emoji)
);
CREATE TABLE IF NOT EXISTS files (
    n     INTEGER PRIMARY KEY REFERENCES messages (n),
    offer TEXT NOT NULL
);
CREATE VIRTUAL TABLE IF NOT EXISTS messages_fts USING fts5 (
    text, content = 'messages', content_rowid = 'n'
);
CREATE TRIGGER IF NOT EXISTS messages_ai AFTER INSERT ON messages BEGIN
    INSERT INTO messages_fts (rowid, text) VALUES (new.n, new.text);
END;
CREATE TRIGGER IF NOT EXISTS messages_au AFTER UPDATE OF text ON messages BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, text) VALUES ('delete', old.n, old.text);
    INSERT INTO messages_fts (rowid, text) VALUES (new.n, new.text);
END;
";

/// One message of the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// The number shown as `#n`.
    pub n: i64,
    /// The conversation (the other peer).
    pub peer: ClientId,
    /// Who sent it (the peer, or us).
    pub sender: ClientId,
    /// Its message id.
    pub message_id: MessageId,
    /// Its text (the latest edit; empty once deleted).
    pub text: String,
    /// Deleted for everyone.
    pub deleted: bool,
}

/// Why the history failed.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// SQLite failed.
    #[error("history database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The file could not be created.
    #[error("history file: {0}")]
    Io(#[from] std::io::Error),
    /// A stored id is not a valid id any more (the file was changed by hand).
    #[error("history database holds an invalid id: {0}")]
    InvalidId(String),
    /// `/search` words out of bounds.
    #[error("{0}")]
    Search(String),
}

/// The history: one connection, behind a lock (the library's lookups come from its own task).
#[derive(Debug)]
pub struct History {
    // std Mutex: held for one statement or one short transaction, never across an await.
    conn: Mutex<Connection>,
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(i64, String, String, String, String, bool)> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
    ))
}

fn to_row(
    (n, peer, sender, message_id, text, deleted): (i64, String, String, String, String, bool),
) -> Result<Row, HistoryError> {
    let bad = |e: lattice_protocol::IdError| HistoryError::InvalidId(e.to_string());
    Ok(Row {
        n,
        peer: ClientId::new(peer).map_err(bad)?,
        sender: ClientId::new(sender).map_err(bad)?,
        message_id: MessageId::new(message_id).map_err(bad)?,
        text,
        deleted,
    })
}

const COLUMNS: &str = "n, peer, sender, message_id, text, deleted";

impl History {
    /// Opens (or creates, mode 0600) the history file at `path`.
    ///
    /// # Errors
    /// The file cannot be created or opened, or is not a history database.
    pub fn open(path: &Path) -> Result<Self, HistoryError> {
        let mut options = std::fs::OpenOptions::new();
        options.create(true).append(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        drop(options.open(path)?);
        Self::with_connection(Connection::open(path)?)
    }

    /// A history in memory (tests).
    #[cfg(test)]
    pub fn in_memory() -> Result<Self, HistoryError> {
        Self::with_connection(Connection::open_in_memory()?)
    }

    fn with_connection(conn: Connection) -> Result<Self, HistoryError> {
        conn.execute_batch(SCHEMA)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A poisoned lock only means another thread panicked mid-statement; SQLite rolled back.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a message; `None` if it is already there (a redelivered copy).
    ///
    /// # Errors
    /// SQLite failed.
    pub fn add(
        &self,
        peer: &ClientId,
        sender: &ClientId,
        message_id: &MessageId,
        text: &str,
        sent_at: u64,
    ) -> Result<Option<i64>, HistoryError> {
        let conn = self.conn();
        let added = conn.execute(
            "INSERT OR IGNORE INTO messages (peer, sender, message_id, text, sent_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                peer.as_str(),
                sender.as_str(),
                message_id.as_str(),
                text,
                i64::try_from(sent_at).unwrap_or(i64::MAX)
            ],
        )?;
        Ok((added == 1).then(|| conn.last_insert_rowid()))
    }

    /// The number of message `message_id` from `sender` in the conversation with `peer`.
    ///
    /// # Errors
    /// SQLite failed.
    pub fn number(
        &self,
        peer: &ClientId,
        sender: &ClientId,
        message_id: &MessageId,
    ) -> Result<Option<i64>, HistoryError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT n FROM messages WHERE peer = ?1 AND sender = ?2 AND message_id = ?3",
                params![peer.as_str(), sender.as_str(), message_id.as_str()],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Message `#n`.
    ///
    /// # Errors
    /// SQLite failed.
    pub fn get(&self, n: i64) -> Result<Option<Row>, HistoryError> {
        self.conn()
            .query_row(
                &format!("SELECT {COLUMNS} FROM messages WHERE n = ?1"),
                [n],
                row,
            )
            .optional()?
            .map(to_row)
            .transpose()
    }

    /// The last message `me` sent in the conversation with `peer` that is not deleted.
    ///
    /// # Errors
    /// SQLite failed.
    pub fn last_own(&self, me: &ClientId, peer: &ClientId) -> Result<Option<Row>, HistoryError> {
        self.conn()
            .query_row(
                &format!(
                    "SELECT {COLUMNS} FROM messages WHERE peer = ?1 AND sender = ?2 AND deleted = 0
                     ORDER BY n DESC LIMIT 1"
                ),
                params![peer.as_str(), me.as_str()],
                row,
            )
            .optional()?
            .map(to_row)
            .transpose()
    }

    /// Replaces the text of a message with its edit signed at `edited_at`; the message's number,
    /// or `None` if there is no such message (or it is deleted).
    ///
    /// # Errors
    /// SQLite failed.
    pub fn edit(
        &self,
        peer: &ClientId,
        sender: &ClientId,
        message_id: &MessageId,
        text: &str,
        edited_at: u64,
    ) -> Result<Option<i64>, HistoryError> {
        let n = self.number(peer, sender, message_id)?;
        if let Some(n) = n {
            self.conn().execute(
                "UPDATE messages SET text = ?2, edited_at = ?3 WHERE n = ?1 AND deleted = 0",
                params![n, text, i64::try_from(edited_at).unwrap_or(i64::MAX)],
            )?;
        }
        Ok(n)
    }

    /// Deletes a message for everyone: a tombstone (no text, no reactions); its number.
    ///
    /// # Errors
    /// SQLite failed.
    pub fn delete(
        &self,
        peer: &ClientId,
        sender: &ClientId,
        message_id: &MessageId,
    ) -> Result<Option<i64>, HistoryError> {
        let n = self.number(peer, sender, message_id)?;
        if let Some(n) = n {
            let mut conn = self.conn();
            let tx = conn.transaction()?;
            tx.execute(
                "UPDATE messages SET text = '', deleted = 1 WHERE n = ?1",
                [n],
            )?;
            tx.execute("DELETE FROM reactions WHERE n = ?1", [n])?;
            tx.execute("DELETE FROM files WHERE n = ?1", [n])?;
            tx.commit()?;
        }
        Ok(n)
    }

    /// Keeps the file offer (JSON: name, size, type, key, where to fetch it) of message `#n`.
    /// The key is a secret: the history file is owner-only.
    ///
    /// # Errors
    /// SQLite failed.
    pub fn set_file(&self, n: i64, offer_json: &str) -> Result<(), HistoryError> {
        self.conn().execute(
            "INSERT OR REPLACE INTO files (n, offer) VALUES (?1, ?2)",
            params![n, offer_json],
        )?;
        Ok(())
    }

    /// The file offer of message `#n`, if it carries one.
    ///
    /// # Errors
    /// SQLite failed.
    pub fn file(&self, n: i64) -> Result<Option<String>, HistoryError> {
        Ok(self
            .conn()
            .query_row("SELECT offer FROM files WHERE n = ?1", [n], |r| r.get(0))
            .optional()?)
    }

    /// Adds (or removes) `reactor`'s `emoji` on message `#n`.
    ///
    /// # Errors
    /// SQLite failed.
    pub fn react(
        &self,
        n: i64,
        reactor: &ClientId,
        emoji: &str,
        add: bool,
    ) -> Result<(), HistoryError> {
        let sql = if add {
            "INSERT OR IGNORE INTO reactions (n, reactor, emoji) VALUES (?1, ?2, ?3)"
        } else {
            "DELETE FROM reactions WHERE n = ?1 AND reactor = ?2 AND emoji = ?3"
        };
        self.conn()
            .execute(sql, params![n, reactor.as_str(), emoji])?;
        Ok(())
    }

    /// The reactions on message `#n`: (emoji, how many), most first.
    ///
    /// # Errors
    /// SQLite failed.
    pub fn reactions(&self, n: i64) -> Result<Vec<(String, u32)>, HistoryError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT emoji, COUNT(*) FROM reactions WHERE n = ?1 GROUP BY emoji
             ORDER BY COUNT(*) DESC, emoji",
        )?;
        let rows = stmt.query_map([n], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The messages (of every conversation) containing all of `words`, newest first, at most
    /// [`SEARCH_LIMIT`]. Each word is matched as a literal (FTS5 syntax in it means nothing).
    ///
    /// # Errors
    /// [`HistoryError::Search`] for no words, too many or too long ones; SQLite failed.
    pub fn search(&self, words: &str) -> Result<Vec<Row>, HistoryError> {
        let words: Vec<&str> = words.split_whitespace().collect();
        if words.is_empty() {
            return Err(HistoryError::Search(
                "search for what? /search <words>".into(),
            ));
        }
        if words.len() > SEARCH_MAX_WORDS {
            return Err(HistoryError::Search(format!(
                "at most {SEARCH_MAX_WORDS} words"
            )));
        }
        if words.iter().any(|w| w.len() > SEARCH_MAX_WORD_BYTES) {
            return Err(HistoryError::Search(format!(
                "words of at most {SEARCH_MAX_WORD_BYTES} bytes"
            )));
        }
        // Each word a quoted FTS5 string (a `"` doubled): all must occur.
        let query = words
            .iter()
            .map(|w| format!("\"{}\"", w.replace('"', "\"\"")))
            .collect::<Vec<_>>()
            .join(" ");
        let conn = self.conn();
        // The index is walked newest first and stops at the limit (a deleted message has no text,
        // so it is not in the index).
        let mut stmt = conn.prepare(
            "SELECT m.n, m.peer, m.sender, m.message_id, m.text, m.deleted
             FROM messages_fts f JOIN messages m ON m.n = f.rowid
             WHERE messages_fts MATCH ?1 AND m.deleted = 0
             ORDER BY f.rowid DESC LIMIT ?2",
        )?;
        let limit = i64::try_from(SEARCH_LIMIT).unwrap_or(i64::MAX);
        let rows = stmt
            .query_map(params![query, limit], row)?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter().map(to_row).collect()
    }

    fn known(
        &self,
        peer: &ClientId,
        sender: &ClientId,
        id: &MessageId,
    ) -> Result<Option<KnownMessage>, HistoryError> {
        let found: Option<(i64, Option<i64>, bool)> = self
            .conn()
            .query_row(
                "SELECT sent_at, edited_at, deleted FROM messages
                 WHERE peer = ?1 AND sender = ?2 AND message_id = ?3",
                params![peer.as_str(), sender.as_str(), id.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        Ok(found.map(|(sent_at, edited_at, deleted)| KnownMessage {
            sent_at: u64::try_from(sent_at).unwrap_or(0),
            deleted,
            last_edit_at: edited_at.map(|e| u64::try_from(e).unwrap_or(0)),
        }))
    }
}

impl MessageLookup for History {
    fn find(
        &self,
        peer: &ClientId,
        sender: &ClientId,
        id: &MessageId,
    ) -> Result<Option<KnownMessage>, PeerError> {
        self.known(peer, sender, id)
            .map_err(|e| PeerError::KeyStore(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn cid(s: &str) -> ClientId {
        ClientId::new(s).unwrap()
    }

    fn mid(s: &str) -> MessageId {
        MessageId::new(s).unwrap()
    }

    #[test]
    fn messages_edits_deletes_reactions_and_lookups() {
        let h = History::in_memory().unwrap();
        let (me, bob) = (cid("alice"), cid("bob"));
        let n = h
            .add(&bob, &bob, &mid("b1"), "hello there", 10)
            .unwrap()
            .unwrap();
        assert_eq!(
            h.add(&bob, &bob, &mid("b1"), "hello there", 10).unwrap(),
            None
        );
        let mine = h.add(&bob, &me, &mid("a1"), "hi bob", 11).unwrap().unwrap();
        assert_eq!(h.last_own(&me, &bob).unwrap().unwrap().n, mine);
        assert_eq!(
            h.edit(&bob, &bob, &mid("b1"), "hello world", 12).unwrap(),
            Some(n)
        );
        assert_eq!(h.get(n).unwrap().unwrap().text, "hello world");
        let known = h.find(&bob, &bob, &mid("b1")).unwrap().unwrap();
        assert_eq!(
            (known.sent_at, known.last_edit_at, known.deleted),
            (10, Some(12), false)
        );
        assert!(h.find(&bob, &me, &mid("b1")).unwrap().is_none());
        h.react(n, &me, "👍", true).unwrap();
        h.react(n, &bob, "👍", true).unwrap();
        h.react(n, &bob, "🔥", true).unwrap();
        h.react(n, &bob, "🔥", false).unwrap();
        assert_eq!(h.reactions(n).unwrap(), [("👍".to_owned(), 2)]);
        assert_eq!(h.delete(&bob, &me, &mid("a1")).unwrap(), Some(mine));
        assert!(h.last_own(&me, &bob).unwrap().is_none());
        assert!(h.find(&bob, &me, &mid("a1")).unwrap().unwrap().deleted);
    }

    #[test]
    fn search_matches_all_words_literally_and_skips_deleted_messages() {
        let h = History::in_memory().unwrap();
        let (me, bob, carol) = (cid("alice"), cid("bob"), cid("carol"));
        h.add(&bob, &bob, &mid("1"), "the launch is on Friday", 1)
            .unwrap();
        h.add(&carol, &me, &mid("2"), "Friday launch party?", 2)
            .unwrap();
        h.add(&bob, &me, &mid("3"), "nothing here", 3).unwrap();
        h.add(&bob, &bob, &mid("4"), "launch \"quoted\" OR NOT", 4)
            .unwrap();
        let found: Vec<String> = h
            .search("friday LAUNCH")
            .unwrap()
            .into_iter()
            .map(|r| r.message_id.as_str().to_owned())
            .collect();
        assert_eq!(found, ["2", "1"], "both conversations, newest first");
        // FTS5 syntax is taken literally, never as an operator or an error.
        assert_eq!(h.search("\"quoted\"").unwrap().len(), 1);
        assert!(h.search("OR").unwrap().len() == 1);
        assert!(h.search("NEAR( *").unwrap().is_empty());
        // An edit is found by its new text, a deleted message not at all.
        h.edit(&bob, &bob, &mid("1"), "moved to Monday", 5).unwrap();
        assert_eq!(h.search("monday").unwrap().len(), 1);
        assert!(h.search("friday").unwrap().len() == 1);
        h.delete(&carol, &me, &mid("2")).unwrap();
        assert!(h.search("friday").unwrap().is_empty());
        assert!(matches!(h.search("  "), Err(HistoryError::Search(_))));
        let many = "w ".repeat(SEARCH_MAX_WORDS + 1);
        assert!(matches!(h.search(&many), Err(HistoryError::Search(_))));
    }

    /// A measurement, not a check: `/search` over 100,000 messages (FTS5) side by side with the
    /// reference it replaces, a `LIKE` scan of the same table, in one run; prints the medians,
    /// asserts only that both find the same messages. Run it with
    /// `cargo test -p lattice-chat --release -- --ignored --nocapture measure_search`.
    #[test]
    #[ignore = "measurement: prints timings"]
    fn measure_search_over_100k_messages() {
        use std::time::{Duration, Instant};
        const N: u64 = 100_000;
        const RUNS: usize = 21;
        let dir = tempfile::tempdir().unwrap();
        let h = History::open(&dir.path().join("m.history")).unwrap();
        let words = [
            "launch", "meeting", "coffee", "tomorrow", "report", "budget", "team", "lunch",
            "deploy", "review", "friday", "weekend", "ticket", "design", "draft", "update",
        ];
        let (me, bob) = (cid("alice"), cid("bob"));
        let start = Instant::now();
        {
            let mut conn = h.conn();
            let tx = conn.transaction().unwrap();
            let mut seed = 0x2545_f491_4f6c_dd1d_u64;
            for i in 0..N {
                let mut text = Vec::new();
                for _ in 0..12 {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    text.push(words[(seed % words.len() as u64) as usize]);
                }
                if i % 1000 == 7 {
                    text.push("zanzibar");
                }
                let sender = if i % 2 == 0 { &me } else { &bob };
                tx.execute(
                    "INSERT INTO messages (peer, sender, message_id, text, sent_at)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![
                        bob.as_str(),
                        sender.as_str(),
                        format!("m{i}"),
                        text.join(" "),
                        i
                    ],
                )
                .unwrap();
            }
            tx.commit().unwrap();
        }
        let inserted = start.elapsed();
        let median = |f: &dyn Fn() -> usize| -> (Duration, usize) {
            let mut times = Vec::new();
            let mut found = 0;
            for _ in 0..RUNS {
                let t = Instant::now();
                found = f();
                times.push(t.elapsed());
            }
            times.sort();
            (times[RUNS / 2], found)
        };
        let like = |a: &str, b: &str| -> usize {
            let conn = h.conn();
            let mut stmt = conn
                .prepare(
                    "SELECT n FROM messages WHERE text LIKE ?1 AND text LIKE ?2 AND deleted = 0
                     ORDER BY n DESC LIMIT 20",
                )
                .unwrap();
            stmt.query_map(params![format!("%{a}%"), format!("%{b}%")], |r| {
                r.get::<_, i64>(0)
            })
            .unwrap()
            .count()
        };
        for (query, a, b) in [
            ("zanzibar launch", "zanzibar", "launch"),
            ("coffee budget", "coffee", "budget"),
        ] {
            let (fts, n_fts) = median(&|| h.search(query).unwrap().len());
            let (scan, n_scan) = median(&|| like(a, b));
            assert_eq!(n_fts, n_scan, "{query}");
            println!(
                "search {query:?} over {N} messages: FTS5 {fts:?}, LIKE scan {scan:?} (median of {RUNS}; {n_fts} shown)"
            );
        }
        println!("inserting {N} messages in one transaction (with the FTS5 index): {inserted:?}");
    }
}
