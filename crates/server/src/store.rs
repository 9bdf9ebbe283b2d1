//! Durable storage: the [`Directory`] of verified id bindings, the [`Mailbox`] of sealed messages
//! for offline peers and the MLS delivery service's KeyPackages and groups (`delivery`, on
//! [`SqliteStore`] itself), the first two behind traits so a Redis backend can stand beside the
//! embedded SQLite one.
//!
//! SQLite runs in WAL mode with `synchronous = NORMAL`: a commit survives a process crash, and a
//! power cut loses at most the last transactions since the last checkpoint. Each call is one short
//! statement under a `std::sync::Mutex` (no `.await` while held), cheap enough to run on the async
//! worker threads for the low-rate operations that use it (registration, offline delivery, acks).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lattice_protocol::{ClientId, DeviceId, MessageId};
use rusqlite::{params, Connection, OptionalExtension};

mod delivery;
mod devices;
pub use delivery::{
    plan_leaves, CommitOp, CommitOutcome, FetchedKeyPackage, GroupError, PlannedLeaves, Stock,
    UploadError,
};
pub use devices::{listed_key, DeviceListError};

/// A storage failure. The server answers `INTERNAL_ERROR` and keeps the connection.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The database file could not be created.
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A stored value is not what was written.
    #[error("corrupt record for {0}")]
    Corrupt(String),
    /// A group commit failed (every message in it gets this).
    #[error("group commit failed: {0}")]
    Commit(String),
    /// The data directory or database file could not be made private.
    #[error("cannot restrict the permissions of {path}: {source}")]
    Permissions {
        /// The file or directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Whose mailbox: one per (id, device) (docs/protocol.md, "Devices"). Stored as the `recipient`
/// column: the id itself for its primary device (so mail stored before devices existed is the
/// primary's), `id/device` for a linked device (`/` is in neither charset, so no two keys meet).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MailboxKey {
    id: ClientId,
    device: DeviceId,
    key: String,
}

impl MailboxKey {
    /// The mailbox of `id`'s `device`.
    pub fn new(id: &ClientId, device: &DeviceId) -> Self {
        let key = if device.is_primary() {
            id.as_str().to_owned()
        } else {
            format!("{id}/{device}")
        };
        Self {
            id: id.clone(),
            device: device.clone(),
            key,
        }
    }

    /// The mailbox of `id`'s primary device (every id's only one before devices).
    pub fn primary(id: &ClientId) -> Self {
        Self::new(id, &DeviceId::primary())
    }

    /// The id whose mailbox it is.
    pub fn id(&self) -> &ClientId {
        &self.id
    }

    /// The device whose mailbox it is.
    pub fn device(&self) -> &DeviceId {
        &self.device
    }

    /// The `recipient` column's value.
    pub fn as_str(&self) -> &str {
        &self.key
    }
}

impl std::fmt::Display for MailboxKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.key)
    }
}

/// A durable binding of a client id to a Lattice identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// Ed25519 identity key.
    pub identity_key: [u8; 32],
    /// Latest ML-KEM-768 public key registered under the identity.
    pub kem_public_key: Vec<u8>,
    /// Identity signature over the KEM key.
    pub key_signature: Vec<u8>,
}

/// Who owns which id.
pub trait Directory: Send + Sync + std::fmt::Debug {
    /// The binding of `id`, if any.
    ///
    /// # Errors
    /// Storage failure.
    fn get(&self, id: &ClientId) -> Result<Option<Binding>, StoreError>;
    /// Creates or updates the binding of `id`. The caller has checked that an existing binding has
    /// the same identity key.
    ///
    /// # Errors
    /// Storage failure.
    fn put(&self, id: &ClientId, binding: &Binding) -> Result<(), StoreError>;
    /// Records that `id` registered now (its binding is in use).
    ///
    /// # Errors
    /// Storage failure.
    fn touch(&self, id: &ClientId, now_ms: i64) -> Result<(), StoreError>;
    /// Deletes up to `limit` bindings last used before `cutoff_ms` (unix milliseconds), except
    /// those `keep` says are in use; returns how many were deleted.
    ///
    /// # Errors
    /// Storage failure.
    fn expire_unused(
        &self,
        cutoff_ms: i64,
        limit: usize,
        keep: &dyn Fn(&ClientId) -> bool,
    ) -> Result<usize, StoreError>;
    /// Bindings in the directory.
    ///
    /// # Errors
    /// Storage failure.
    fn binding_count(&self) -> Result<u64, StoreError>;
}

/// How much one recipient's mailbox may hold: every stored message, whether it waits for a
/// connection or was sent on one and is not acknowledged yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Messages.
    pub count: u32,
    /// Bytes of frames.
    pub bytes: u64,
    /// Messages from one sender.
    pub sender_count: u32,
    /// Bytes of frames from one sender.
    pub sender_bytes: u64,
}

impl Quota {
    /// No limit (tests).
    pub const UNLIMITED: Quota = Quota {
        count: u32::MAX,
        bytes: u64::MAX,
        sender_count: u32::MAX,
        sender_bytes: u64::MAX,
    };
}

/// Which limit of a [`Quota`] refused a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// [`Quota::count`].
    Count,
    /// [`Quota::bytes`].
    Bytes,
    /// [`Quota::sender_count`].
    SenderCount,
    /// [`Quota::sender_bytes`].
    SenderBytes,
}

/// Why a message was not queued.
#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    /// A limit of the recipient's quota is used up.
    #[error("mailbox of {recipient} is full ({limit:?})")]
    Full {
        /// The recipient.
        recipient: ClientId,
        /// The limit reached.
        limit: Limit,
    },
    /// Storage failure.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One message of [`Mailbox::accept_live_batch`]: for `recipient`, owned by connection `conn`.
#[derive(Debug, Clone, Copy)]
pub struct LiveItem<'a> {
    /// The recipient.
    pub recipient: &'a MailboxKey,
    /// The message.
    pub item: &'a MailItem,
    /// The live connection it is about to be sent on.
    pub conn: u64,
}

/// What [`Mailbox::accept_live`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// A new row, owned by the connection: send it.
    Stored,
    /// The same (sender, id) is already stored (a resend): it is not sent again from here.
    Duplicate,
}

/// A queued message: the complete `message` frame as it will be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailItem {
    /// The message id (the sender's, or one the server assigned).
    pub message_id: MessageId,
    /// Who sent it. Part of the dedup key: one sender reusing another's message id must not
    /// silently suppress the other's message.
    pub sender: ClientId,
    /// The encoded frame.
    pub frame: String,
}

/// Store-and-forward queue of sealed messages for offline verified peers. A message stays until the
/// recipient acknowledges it or it expires.
///
/// Every message the server answers `queued` for a verified recipient (and every one it answers
/// `delivered` without the recipient's `ack`, see [`crate::inflight`]) is a row from before that
/// answer: either waiting for a connection, or *owned* by the live connection it was sent on
/// ([`Mailbox::accept_live`], [`Mailbox::claim`]) until the recipient acknowledges it
/// ([`Mailbox::remove`]) or the connection ends ([`Mailbox::disown_all`]). So the quota counts
/// everything committed and unacknowledged, and nothing the sender was told was accepted lives
/// only in memory.
pub trait Mailbox: Send + Sync + std::fmt::Debug {
    /// Queues `item` for `recipient` if its rows stay within `quota`. Queuing the
    /// same (sender, id) again is a no-op (and succeeds even when full: it is stored).
    ///
    /// # Errors
    /// [`EnqueueError::Full`] naming the limit reached; storage failure.
    fn enqueue(
        &self,
        recipient: &MailboxKey,
        item: &MailItem,
        quota: &Quota,
        ttl: Duration,
    ) -> Result<(), EnqueueError>;
    /// Stores `item` for `recipient` within `quota`, like [`Mailbox::enqueue`], owned by the live
    /// connection `conn` it is about to be sent on (so no drain sends it a second time). The row
    /// is committed before this returns: from then on it survives a crash of the process.
    ///
    /// # Errors
    /// [`EnqueueError::Full`] naming the limit reached; storage failure.
    fn accept_live(
        &self,
        recipient: &MailboxKey,
        item: &MailItem,
        quota: &Quota,
        ttl: Duration,
        conn: u64,
    ) -> Result<Accepted, EnqueueError>;
    /// [`Mailbox::accept_live`] for several messages in one transaction (a group commit): one
    /// result per item, in order. Each item is checked against the quota with the rows before it
    /// counted. Nothing is committed, and every result is an error, if the commit fails.
    fn accept_live_batch(
        &self,
        items: &[LiveItem<'_>],
        quota: &Quota,
        ttl: Duration,
    ) -> Vec<Result<Accepted, EnqueueError>>;
    /// [`Mailbox::remove`] for several acknowledgements of `recipient` in one transaction.
    ///
    /// # Errors
    /// Storage failure (nothing is removed).
    fn remove_batch(
        &self,
        recipient: &MailboxKey,
        acks: &[(Option<ClientId>, MessageId)],
    ) -> Result<usize, StoreError>;
    /// Several sessions' acknowledgements and messages in one transaction (the mailbox
    /// writer's group commit): for each request in order, its acks are deleted (a failed delete
    /// is logged and leaves the row: at least once), then its messages stored, each within the
    /// quota with the rows before it counted. One result list per request. Nothing is
    /// committed, and every message result is an error, if the commit fails.
    fn commit_group(
        &self,
        requests: &[CommitRequest],
        quota: &Quota,
        ttl: Duration,
    ) -> Vec<CommitResults>;
    /// Gives one row owned by `conn` back to the mailbox (it could not be sent on `conn`).
    ///
    /// # Errors
    /// Storage failure.
    fn disown(&self, recipient: &MailboxKey, item: &MailItem, conn: u64) -> Result<(), StoreError>;
    /// Gives every row owned by `conn` back to the mailbox (the connection ended before the
    /// recipient acknowledged them); returns how many.
    ///
    /// # Errors
    /// Storage failure.
    fn disown_all(&self, recipient: &MailboxKey, conn: u64) -> Result<usize, StoreError>;
    /// Takes up to `limit` unexpired rows waiting for `recipient` (owned by no connection),
    /// oldest first, and makes `conn` their owner.
    ///
    /// # Errors
    /// Storage failure.
    fn claim(
        &self,
        recipient: &MailboxKey,
        conn: u64,
        limit: usize,
    ) -> Result<Vec<MailItem>, StoreError>;
    /// Up to `limit` unexpired entries for `recipient` after `after` (a cursor from an earlier call,
    /// 0 to start), oldest first, with their cursors.
    ///
    /// # Errors
    /// Storage failure.
    fn pending(
        &self,
        recipient: &MailboxKey,
        after: i64,
        limit: usize,
    ) -> Result<Vec<(i64, MailItem)>, StoreError>;
    /// Removes an acknowledged entry from `sender`; true if there was one. Without a sender (an
    /// `ack` without `fromId`) the entry is removed only when no other sender used the same id.
    ///
    /// # Errors
    /// Storage failure.
    fn remove(
        &self,
        recipient: &MailboxKey,
        sender: Option<&ClientId>,
        message_id: &MessageId,
    ) -> Result<bool, StoreError>;
    /// Deletes expired entries; returns how many.
    ///
    /// # Errors
    /// Storage failure.
    fn purge_expired(&self) -> Result<usize, StoreError>;
    /// Entries waiting for `recipient`.
    ///
    /// # Errors
    /// Storage failure.
    fn count(&self, recipient: &MailboxKey) -> Result<u32, StoreError>;
}

/// One session read batch's share of a group commit ([`Mailbox::commit_group`]).
#[derive(Debug, Default)]
pub struct CommitRequest {
    /// The acknowledgements of a recipient (named first), deleted like [`Mailbox::remove`].
    pub acks: Option<(MailboxKey, Vec<AckedId>)>,
    /// Messages `(recipient, item, conn)` stored like [`Mailbox::accept_live`].
    pub live: Vec<(MailboxKey, MailItem, u64)>,
}

/// An acknowledged message: its sender if the ack named it, and its id.
pub type AckedId = (Option<ClientId>, MessageId);

/// The results of one [`CommitRequest`]'s messages, in order.
pub type CommitResults = Vec<Result<Accepted, EnqueueError>>;

/// SQLite implementation of [`Directory`] and [`Mailbox`], one file (or memory).
#[derive(Debug)]
pub struct SqliteStore {
    // std Mutex: every use is one short synchronous statement, never held across `.await`.
    inner: Mutex<Inner>,
    /// Every device of each id that has linked devices (the primary first), as its stored list
    /// says: the relay asks for every message, so it is kept apart from `inner` (no wait behind a
    /// mailbox commit). std RwLock: lookups only, no awaits; written after each list's commit.
    linked: std::sync::RwLock<HashMap<ClientId, Vec<DeviceId>>>,
}

#[derive(Debug)]
struct Inner {
    conn: Connection,
    /// The mailbox's rows counted per recipient and sender, so the quota check of a new message
    /// is a lookup instead of a scan of the recipient's rows. `None` while unknown (a failed
    /// transaction whose recount failed too): every check then scans.
    usage: Option<Usage>,
}

/// Rows and bytes stored per recipient, and per sender within it, as committed (expired rows
/// count until they are purged, so the counts are an upper bound of what the quota counts: a
/// message they admit is within the quota; one they would refuse is checked again by a scan).
/// Entries go when their count reaches 0, so the map is bounded by the rows, which the quota
/// bounds.
#[derive(Debug, Default)]
struct Usage {
    recipients: HashMap<String, RecipientUsage>,
}

#[derive(Debug, Default)]
struct RecipientUsage {
    rows: u64,
    bytes: u64,
    /// Rows and bytes per sender.
    senders: HashMap<String, (u64, u64)>,
}

impl Usage {
    /// Counts every row of the table (at open, and after a failed transaction).
    fn load(conn: &Connection) -> Result<Self, rusqlite::Error> {
        let mut usage = Self::default();
        let mut stmt = conn.prepare(
            "SELECT recipient, sender, COUNT(*), COALESCE(SUM(size), 0) FROM mailbox
             GROUP BY recipient, sender",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })?;
        for row in rows {
            let (recipient, sender, n, bytes) = row?;
            let r = usage.recipients.entry(recipient).or_default();
            let (n, bytes) = (to_u64(n), to_u64(bytes));
            r.rows += n;
            r.bytes += bytes;
            let s = r.senders.entry(sender).or_default();
            s.0 += n;
            s.1 += bytes;
        }
        Ok(usage)
    }

    /// `[rows, bytes, rows from sender, bytes from sender]` stored for `recipient`.
    fn of(&self, recipient: &str, sender: &str) -> [u64; 4] {
        self.recipients.get(recipient).map_or([0; 4], |r| {
            let (n, b) = r.senders.get(sender).copied().unwrap_or((0, 0));
            [r.rows, r.bytes, n, b]
        })
    }

    fn add(&mut self, recipient: &str, sender: &str, bytes: u64) {
        let r = self.recipients.entry(recipient.to_owned()).or_default();
        r.rows += 1;
        r.bytes += bytes;
        let s = r.senders.entry(sender.to_owned()).or_default();
        s.0 += 1;
        s.1 += bytes;
    }

    fn remove(&mut self, recipient: &str, sender: &str, bytes: u64) {
        let Some(r) = self.recipients.get_mut(recipient) else {
            return;
        };
        r.rows = r.rows.saturating_sub(1);
        r.bytes = r.bytes.saturating_sub(bytes);
        if let Some(s) = r.senders.get_mut(sender) {
            s.0 = s.0.saturating_sub(1);
            s.1 = s.1.saturating_sub(bytes);
            if s.0 == 0 {
                r.senders.remove(sender);
            }
        }
        if r.rows == 0 {
            self.recipients.remove(recipient);
        }
    }
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl Inner {
    /// After a transaction that did not commit: the counts may include its rolled-back changes,
    /// so they are counted again from the table (or left unknown if that fails too).
    fn recount(&mut self) {
        self.usage = match Usage::load(&self.conn) {
            Ok(u) => Some(u),
            Err(e) => {
                tracing::warn!(error = %e, "mailbox recount failed: quota checks scan until the next one");
                None
            }
        };
    }

    /// Applies the deleted rows (`sender`, `size`) of `recipient` to the counts.
    fn removed(&mut self, recipient: &str, rows: &[(String, i64)]) {
        if let Some(u) = &mut self.usage {
            for (sender, size) in rows {
                u.remove(recipient, sender, to_u64(*size));
            }
        }
    }
}

/// Checks one more message of `bytes` from a sender against `quota`, given the recipient's stored
/// rows (`rows`: total count and bytes, then the sender's).
fn check_quota(quota: &Quota, rows: [u64; 4], bytes: u64) -> Result<(), Limit> {
    let over = |used: u64, extra: u64, limit: u64| used.saturating_add(extra) > limit;
    if over(rows[0], 1, u64::from(quota.count)) {
        Err(Limit::Count)
    } else if over(rows[1], bytes, quota.bytes) {
        Err(Limit::Bytes)
    } else if over(rows[2], 1, u64::from(quota.sender_count)) {
        Err(Limit::SenderCount)
    } else if over(rows[3], bytes, quota.sender_bytes) {
        Err(Limit::SenderBytes)
    } else {
        Ok(())
    }
}

/// Stored messages for `recipient`: count and bytes, then those from `sender`.
fn row_usage(
    conn: &Connection,
    recipient: &MailboxKey,
    sender: &ClientId,
) -> Result<[u64; 4], StoreError> {
    let row = conn
        .prepare_cached(
            "SELECT COUNT(*), COALESCE(SUM(size), 0),
                    COALESCE(SUM(sender = ?2), 0),
                    COALESCE(SUM(CASE WHEN sender = ?2 THEN size ELSE 0 END), 0)
             FROM mailbox WHERE recipient = ?1 AND expires_ms > ?3",
        )?
        .query_row(
            params![recipient.as_str(), sender.as_str(), now_ms()],
            |r| {
                Ok([
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                ])
            },
        )?;
    Ok(row.map(|v| u64::try_from(v).unwrap_or(0)))
}

/// Creates `dir` (and missing parents) as 0700 and tightens an existing one to 0700.
fn private_dir(dir: &Path) -> Result<(), StoreError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(|source| StoreError::DataDir {
        path: dir.display().to_string(),
        source,
    })?;
    tighten(dir, 0o700)
}

/// Sets `path` to `mode` if it is readable or writable by group or others. A missing file is fine.
fn tighten(path: &Path, mode: u32) -> Result<(), StoreError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let err = |source| StoreError::Permissions {
            path: path.display().to_string(),
            source,
        };
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(err(e)),
        };
        if meta.permissions().mode() & 0o077 != 0 {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(err)?;
        }
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
    Ok(())
}

/// The database file and its WAL companions (which SQLite creates with the database's mode).
fn database_files(db: &Path) -> [std::path::PathBuf; 3] {
    let with = |suffix: &str| {
        let mut name = db.as_os_str().to_owned();
        name.push(suffix);
        std::path::PathBuf::from(name)
    };
    [db.to_path_buf(), with("-wal"), with("-shm")]
}

/// The schema version this build writes (`PRAGMA user_version`): 4 added devices (KeyPackages,
/// last-resort KeyPackages and group leaves per device, and the device lists).
const SCHEMA_VERSION: i64 = 4;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS bindings (
    client_id TEXT PRIMARY KEY,
    identity_key BLOB NOT NULL,
    kem_public_key BLOB NOT NULL,
    key_signature BLOB NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS mailbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    recipient TEXT NOT NULL,
    sender TEXT NOT NULL,
    message_id TEXT NOT NULL,
    frame TEXT NOT NULL,
    expires_ms INTEGER NOT NULL,
    -- The connection (server-local id) the row was sent on and that has not acknowledged it yet;
    -- NULL when it waits for a connection. Every owner is cleared when the server starts.
    live_conn INTEGER,
    -- The frame's length in bytes, so the quota check never reads the frames themselves.
    size INTEGER NOT NULL DEFAULT 0,
    UNIQUE (recipient, sender, message_id)
);
CREATE INDEX IF NOT EXISTS mailbox_by_recipient ON mailbox (recipient, seq);
CREATE INDEX IF NOT EXISTS mailbox_by_expiry ON mailbox (expires_ms);
-- bindings.updated_ms is when the id last registered (or changed keys): expiry looks it up
CREATE INDEX IF NOT EXISTS bindings_by_use ON bindings (updated_ms);
";

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl SqliteStore {
    /// Opens (creating if needed) `dir/lattice-server.sqlite3`. The directory is made 0700 and
    /// the database files 0600, when created and again on every open (a looser mode is fixed).
    ///
    /// # Errors
    /// The directory or database cannot be created, opened or made private.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        private_dir(dir)?;
        let db = dir.join("lattice-server.sqlite3");
        // Create the file 0600 before SQLite does (it would use the umask, typically 0644); the
        // WAL and shared-memory files then inherit the database's mode.
        let mut create = std::fs::OpenOptions::new();
        create.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut create, 0o600);
        match create.open(&db) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(source) => {
                return Err(StoreError::DataDir {
                    path: db.display().to_string(),
                    source,
                })
            }
        }
        for file in database_files(&db) {
            tighten(&file, 0o600)?;
        }
        let conn = Connection::open(&db)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(
            None,
            "wal_autocheckpoint",
            crate::limits::WAL_AUTOCHECKPOINT_PAGES,
        )?;
        conn.pragma_update(
            None,
            "journal_size_limit",
            i64::try_from(crate::limits::WAL_SIZE_LIMIT).unwrap_or(i64::MAX),
        )?;
        let store = Self::init(conn)?;
        for file in database_files(&db) {
            tighten(&file, 0o600)?;
        }
        Ok(store)
    }

    /// A private in-memory database (nothing survives the process).
    ///
    /// # Errors
    /// SQLite cannot allocate it.
    pub fn in_memory() -> Result<Self, StoreError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<Self, StoreError> {
        conn.busy_timeout(Duration::from_secs(5))?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version < 1 {
            // Version 0 (the first development builds) keyed the mailbox on (recipient,
            // message_id) without the sender. Rebuild it with the sender in the key; migrated rows
            // get an empty sender.
            let old: bool = conn
                .prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'mailbox'")?
                .exists([])?;
            if old {
                conn.execute_batch(&format!(
                    "BEGIN;
                     ALTER TABLE mailbox RENAME TO mailbox_v0;
                     DROP INDEX IF EXISTS mailbox_by_recipient;
                     DROP INDEX IF EXISTS mailbox_by_expiry;
                     {SCHEMA}
                     INSERT INTO mailbox (recipient, sender, message_id, frame, expires_ms)
                         SELECT recipient, '', message_id, frame, expires_ms FROM mailbox_v0 ORDER BY seq;
                     DROP TABLE mailbox_v0;
                     COMMIT;"
                ))?;
            }
        }
        if version < 3 {
            // Version 1 had no owner column (every row waited for a connection, which NULL
            // says), version 2 no size column (filled in below).
            let has_table: bool = conn
                .prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'mailbox'")?
                .exists([])?;
            let has_column = |name: &str| -> Result<bool, rusqlite::Error> {
                conn.prepare("SELECT 1 FROM pragma_table_info('mailbox') WHERE name = ?1")?
                    .exists([name])
            };
            if has_table && !has_column("live_conn")? {
                conn.execute_batch("ALTER TABLE mailbox ADD COLUMN live_conn INTEGER;")?;
            }
            if has_table && !has_column("size")? {
                conn.execute_batch(
                    "ALTER TABLE mailbox ADD COLUMN size INTEGER NOT NULL DEFAULT 0;",
                )?;
            }
        }
        if version < 4 {
            // Version 3 kept KeyPackages and group members per id only (no devices).
            delivery::migrate_to_v4(&conn)?;
        }
        conn.execute_batch(SCHEMA)?;
        conn.execute_batch(delivery::SCHEMA)?;
        conn.execute_batch(devices::SCHEMA)?;
        if version < 3 {
            // Rows from before version 3 (including those just migrated from version 0): a
            // frame is never empty, so 0 means "not filled in yet".
            conn.execute(
                "UPDATE mailbox SET size = LENGTH(CAST(frame AS BLOB)) WHERE size = 0",
                [],
            )?;
        }
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        // No connection survives a restart: every message sent but not acknowledged before it
        // waits for the recipient's next connection again.
        let returned = conn.execute(
            "UPDATE mailbox SET live_conn = NULL WHERE live_conn IS NOT NULL",
            [],
        )?;
        if returned > 0 {
            tracing::info!(
                returned,
                "unacknowledged messages from before the restart wait for their recipients"
            );
        }
        let usage = Some(Usage::load(&conn)?);
        Ok(Self {
            linked: std::sync::RwLock::new(devices::load_linked(&conn)?),
            inner: Mutex::new(Inner { conn, usage }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave SQLite inconsistent (statements are atomic),
        // so a poisoned lock is still usable.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Writes the WAL back into the main file and truncates it; called at shutdown and every
    /// [`crate::limits::STORE_MAINTENANCE_EVERY`].
    ///
    /// # Errors
    /// SQLite failure.
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        self.lock()
            .conn
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")?;
        Ok(())
    }
}

impl Directory for SqliteStore {
    fn get(&self, id: &ClientId) -> Result<Option<Binding>, StoreError> {
        let inner = self.lock();
        let row = inner
            .conn
            .prepare_cached(
                "SELECT identity_key, kem_public_key, key_signature FROM bindings WHERE client_id = ?1",
            )?
            .query_row([id.as_str()], |r| {
                Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?, r.get::<_, Vec<u8>>(2)?))
            })
            .optional()?;
        row.map(|(ik, kem_public_key, key_signature)| {
            let identity_key: [u8; 32] = ik
                .try_into()
                .map_err(|_| StoreError::Corrupt(id.to_string()))?;
            Ok(Binding {
                identity_key,
                kem_public_key,
                key_signature,
            })
        })
        .transpose()
    }

    fn put(&self, id: &ClientId, b: &Binding) -> Result<(), StoreError> {
        self.lock()
            .conn
            .prepare_cached(
                "INSERT INTO bindings (client_id, identity_key, kem_public_key, key_signature, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (client_id) DO UPDATE SET kem_public_key = excluded.kem_public_key,
                     key_signature = excluded.key_signature, updated_ms = excluded.updated_ms",
            )?
            .execute(params![id.as_str(), &b.identity_key[..], b.kem_public_key, b.key_signature, now_ms()])?;
        Ok(())
    }

    fn touch(&self, id: &ClientId, now_ms: i64) -> Result<(), StoreError> {
        self.touch_at(id, now_ms)
    }

    fn expire_unused(
        &self,
        cutoff_ms: i64,
        limit: usize,
        keep: &dyn Fn(&ClientId) -> bool,
    ) -> Result<usize, StoreError> {
        let mut inner = self.lock();
        let tx = inner.conn.transaction()?;
        let ids: Vec<String> = tx
            .prepare_cached(
                "SELECT client_id FROM bindings WHERE updated_ms < ?1 ORDER BY updated_ms LIMIT ?2",
            )?
            .query_map(
                params![cutoff_ms, i64::try_from(limit).unwrap_or(i64::MAX)],
                |r| r.get(0),
            )?
            .collect::<Result<_, _>>()?;
        let mut deleted = 0;
        let mut forgotten = Vec::new();
        {
            let mut del = tx.prepare_cached("DELETE FROM bindings WHERE client_id = ?1")?;
            for id in ids {
                // An id that does not parse cannot be registered; it goes too.
                if ClientId::new(id.as_str()).is_ok_and(|c| keep(&c)) {
                    continue;
                }
                deleted += del.execute([id.as_str()])?;
                delivery::forget_id(&tx, &id)?;
                devices::forget_id(&tx, &id)?;
                forgotten.push(id);
            }
        }
        tx.commit()?;
        drop(inner);
        for id in forgotten {
            if let Ok(id) = ClientId::new(id) {
                self.set_linked(&id, None);
            }
        }
        Ok(deleted)
    }

    fn binding_count(&self) -> Result<u64, StoreError> {
        let n: i64 = self
            .lock()
            .conn
            .prepare_cached("SELECT COUNT(*) FROM bindings")?
            .query_row([], |r| r.get(0))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}

impl SqliteStore {
    fn touch_at(&self, id: &ClientId, now_ms: i64) -> Result<(), StoreError> {
        self.lock()
            .conn
            .prepare_cached("UPDATE bindings SET updated_ms = ?2 WHERE client_id = ?1")?
            .execute(params![id.as_str(), now_ms])?;
        Ok(())
    }
}

/// Inserts a row; false if the same (recipient, sender, id) was there (nothing is inserted).
fn insert(
    conn: &Connection,
    recipient: &MailboxKey,
    item: &MailItem,
    ttl: Duration,
    owner: Option<u64>,
) -> Result<bool, StoreError> {
    let expires = now_ms().saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
    let n = conn
        .prepare_cached(
            "INSERT OR IGNORE INTO mailbox
             (recipient, sender, message_id, frame, expires_ms, live_conn, size)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?
        .execute(params![
            recipient.as_str(),
            item.sender.as_str(),
            item.message_id.as_str(),
            item.frame,
            expires,
            owner.map(owner_value),
            i64::try_from(item.frame.len()).unwrap_or(i64::MAX)
        ])?;
    Ok(n > 0)
}

/// Deletes an acknowledged row (see [`Mailbox::remove`]); appends the deleted rows' (sender,
/// size) to `deleted`.
fn remove_in(
    conn: &Connection,
    recipient: &MailboxKey,
    sender: Option<&ClientId>,
    message_id: &MessageId,
    deleted: &mut Vec<(String, i64)>,
) -> Result<(), StoreError> {
    let sender_size = |r: &rusqlite::Row<'_>| Ok((r.get(0)?, r.get(1)?));
    match sender {
        Some(sender) => {
            let mut stmt = conn.prepare_cached(
                "DELETE FROM mailbox WHERE recipient = ?1 AND sender = ?2 AND message_id = ?3
                 RETURNING sender, size",
            )?;
            let rows = stmt.query_map(
                params![recipient.as_str(), sender.as_str(), message_id.as_str()],
                sender_size,
            )?;
            for row in rows {
                deleted.push(row?);
            }
        }
        None => {
            let mut stmt = conn.prepare_cached(
                "DELETE FROM mailbox WHERE recipient = ?1 AND message_id = ?2
                 AND (SELECT COUNT(*) FROM mailbox WHERE recipient = ?1 AND message_id = ?2) = 1
                 RETURNING sender, size",
            )?;
            let rows = stmt.query_map(
                params![recipient.as_str(), message_id.as_str()],
                sender_size,
            )?;
            for row in rows {
                deleted.push(row?);
            }
        }
    }
    Ok(())
}

/// A connection id as SQLite stores it (ids count up from 1 and never reach `i64::MAX`).
fn owner_value(conn: u64) -> i64 {
    i64::try_from(conn).unwrap_or(i64::MAX)
}

/// A mailbox row as a [`MailItem`].
/// `seq, message_id, sender, frame` of a mailbox row, as read (checked by [`mail_item_from_row`]).
fn raw_mail_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(i64, String, String, String)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
}

fn mail_item_from_row(
    recipient: &MailboxKey,
    mid: String,
    sender: String,
    frame: String,
) -> Result<MailItem, StoreError> {
    let corrupt = || StoreError::Corrupt(recipient.to_string());
    let message_id = MessageId::new(mid).map_err(|_| corrupt())?;
    // Rows migrated from version 0 have no sender column value; the frame names it.
    let sender = if sender.is_empty() {
        "unknown".to_owned()
    } else {
        sender
    };
    let sender = ClientId::new(sender).map_err(|_| corrupt())?;
    Ok(MailItem {
        message_id,
        sender,
        frame,
    })
}

impl SqliteStore {
    /// Inserts `item` within `quota`, owned by `conn` if given, in one transaction.
    fn insert_checked(
        &self,
        recipient: &MailboxKey,
        item: &MailItem,
        quota: &Quota,
        ttl: Duration,
        conn: Option<u64>,
    ) -> Result<Accepted, EnqueueError> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let result = (|| {
            let tx = inner.conn.transaction().map_err(StoreError::from)?;
            let r = insert_checked_in(&tx, &mut inner.usage, recipient, item, quota, ttl, conn)?;
            tx.commit().map_err(StoreError::from)?;
            Ok(r)
        })();
        if matches!(result, Err(EnqueueError::Store(_))) {
            inner.recount();
        }
        result
    }
}

/// The quota check and insert of one message, inside the caller's transaction; `usage` counts
/// the insert (the caller recounts if the transaction does not commit).
fn insert_checked_in(
    tx: &Connection,
    usage: &mut Option<Usage>,
    recipient: &MailboxKey,
    item: &MailItem,
    quota: &Quota,
    ttl: Duration,
    conn: Option<u64>,
) -> Result<Accepted, EnqueueError> {
    let bytes = item.frame.len() as u64;
    if let Some(u) = usage {
        // The usual case: the counts (an upper bound) admit it; a duplicate inserts nothing.
        if check_quota(quota, u.of(recipient.as_str(), item.sender.as_str()), bytes).is_ok() {
            if !insert(tx, recipient, item, ttl, conn)? {
                return Ok(Accepted::Duplicate);
            }
            u.add(recipient.as_str(), item.sender.as_str(), bytes);
            return Ok(Accepted::Stored);
        }
    }
    let exists = tx
        .prepare_cached(
            "SELECT 1 FROM mailbox WHERE recipient = ?1 AND sender = ?2 AND message_id = ?3",
        )
        .and_then(|mut s| {
            s.exists(params![
                recipient.as_str(),
                item.sender.as_str(),
                item.message_id.as_str()
            ])
        })
        .map_err(StoreError::from)?;
    if exists {
        // A retry of a stored message: it is there, whatever the quota says now.
        return Ok(Accepted::Duplicate);
    }
    // Over the counts (or they are unknown): the exact check, which leaves expired rows out.
    let rows = row_usage(tx, recipient, &item.sender)?;
    check_quota(quota, rows, bytes).map_err(|limit| EnqueueError::Full {
        recipient: recipient.id().clone(),
        limit,
    })?;
    insert(tx, recipient, item, ttl, conn)?;
    if let Some(u) = usage {
        u.add(recipient.as_str(), item.sender.as_str(), bytes);
    }
    Ok(Accepted::Stored)
}

impl Mailbox for SqliteStore {
    fn enqueue(
        &self,
        recipient: &MailboxKey,
        item: &MailItem,
        quota: &Quota,
        ttl: Duration,
    ) -> Result<(), EnqueueError> {
        self.insert_checked(recipient, item, quota, ttl, None)
            .map(|_| ())
    }

    fn accept_live(
        &self,
        recipient: &MailboxKey,
        item: &MailItem,
        quota: &Quota,
        ttl: Duration,
        conn: u64,
    ) -> Result<Accepted, EnqueueError> {
        self.insert_checked(recipient, item, quota, ttl, Some(conn))
    }

    fn accept_live_batch(
        &self,
        items: &[LiveItem<'_>],
        quota: &Quota,
        ttl: Duration,
    ) -> Vec<Result<Accepted, EnqueueError>> {
        let failed = |e: &rusqlite::Error| -> Vec<Result<Accepted, EnqueueError>> {
            items
                .iter()
                .map(|_| Err(EnqueueError::Store(StoreError::Commit(e.to_string()))))
                .collect()
        };
        let mut inner = self.lock();
        let inner = &mut *inner;
        let tx = match inner.conn.transaction() {
            Ok(tx) => tx,
            Err(e) => return failed(&e),
        };
        let results: Vec<_> = items
            .iter()
            .map(|l| {
                let usage = &mut inner.usage;
                insert_checked_in(&tx, usage, l.recipient, l.item, quota, ttl, Some(l.conn))
            })
            .collect();
        let failed_store = results
            .iter()
            .any(|r| matches!(r, Err(EnqueueError::Store(_))));
        match tx.commit() {
            Ok(()) => {
                if failed_store {
                    // An item's statement failed after others of the batch were counted.
                    inner.recount();
                }
                results
            }
            Err(e) => {
                inner.recount();
                failed(&e)
            }
        }
    }

    fn commit_group(
        &self,
        requests: &[CommitRequest],
        quota: &Quota,
        ttl: Duration,
    ) -> Vec<CommitResults> {
        let failed = |e: &rusqlite::Error| -> Vec<CommitResults> {
            requests
                .iter()
                .map(|r| {
                    r.live
                        .iter()
                        .map(|_| Err(EnqueueError::Store(StoreError::Commit(e.to_string()))))
                        .collect()
                })
                .collect()
        };
        let mut inner = self.lock();
        let inner = &mut *inner;
        let tx = match inner.conn.transaction() {
            Ok(tx) => tx,
            Err(e) => return failed(&e),
        };
        let mut deleted = Vec::new();
        let mut results = Vec::with_capacity(requests.len());
        for r in requests {
            if let Some((recipient, acks)) = &r.acks {
                let mut rows = Vec::new();
                for (sender, mid) in acks {
                    if let Err(e) = remove_in(&tx, recipient, sender.as_ref(), mid, &mut rows) {
                        tracing::warn!(error = %e, %recipient, "mailbox delete failed");
                    }
                }
                deleted.push((recipient, rows));
            }
            let usage = &mut inner.usage;
            results.push(
                r.live
                    .iter()
                    .map(|(recipient, item, conn)| {
                        insert_checked_in(&tx, usage, recipient, item, quota, ttl, Some(*conn))
                    })
                    .collect::<CommitResults>(),
            );
        }
        match tx.commit() {
            Ok(()) => {
                for (recipient, rows) in deleted {
                    inner.removed(recipient.as_str(), &rows);
                }
                let failed_store = results
                    .iter()
                    .flatten()
                    .any(|r| matches!(r, Err(EnqueueError::Store(_))));
                if failed_store {
                    inner.recount();
                }
                results
            }
            Err(e) => {
                inner.recount();
                failed(&e)
            }
        }
    }

    fn remove_batch(
        &self,
        recipient: &MailboxKey,
        acks: &[(Option<ClientId>, MessageId)],
    ) -> Result<usize, StoreError> {
        let mut inner = self.lock();
        let tx = inner.conn.transaction()?;
        let mut deleted = Vec::new();
        for (sender, mid) in acks {
            remove_in(&tx, recipient, sender.as_ref(), mid, &mut deleted)?;
        }
        tx.commit()?;
        inner.removed(recipient.as_str(), &deleted);
        Ok(deleted.len())
    }

    fn disown(&self, recipient: &MailboxKey, item: &MailItem, conn: u64) -> Result<(), StoreError> {
        self.lock()
            .conn
            .prepare_cached(
                "UPDATE mailbox SET live_conn = NULL
                 WHERE recipient = ?1 AND sender = ?2 AND message_id = ?3 AND live_conn = ?4",
            )?
            .execute(params![
                recipient.as_str(),
                item.sender.as_str(),
                item.message_id.as_str(),
                owner_value(conn)
            ])?;
        Ok(())
    }

    fn disown_all(&self, recipient: &MailboxKey, conn: u64) -> Result<usize, StoreError> {
        Ok(self
            .lock()
            .conn
            .prepare_cached(
                "UPDATE mailbox SET live_conn = NULL WHERE recipient = ?1 AND live_conn = ?2",
            )?
            .execute(params![recipient.as_str(), owner_value(conn)])?)
    }

    fn claim(
        &self,
        recipient: &MailboxKey,
        conn: u64,
        limit: usize,
    ) -> Result<Vec<MailItem>, StoreError> {
        let mut inner = self.lock();
        let tx = inner.conn.transaction()?;
        let rows = {
            let mut stmt = tx.prepare_cached(
                "SELECT seq, message_id, sender, frame FROM mailbox
                 WHERE recipient = ?1 AND live_conn IS NULL AND expires_ms > ?2
                 ORDER BY seq LIMIT ?3",
            )?;
            let rows = stmt.query_map(
                params![
                    recipient.as_str(),
                    now_ms(),
                    i64::try_from(limit).unwrap_or(i64::MAX)
                ],
                raw_mail_row,
            )?;
            rows.collect::<Result<Vec<_>, _>>()?
        };
        let mut out = Vec::with_capacity(rows.len());
        {
            let mut own = tx.prepare_cached("UPDATE mailbox SET live_conn = ?2 WHERE seq = ?1")?;
            for (seq, mid, sender, frame) in rows {
                own.execute(params![seq, owner_value(conn)])?;
                out.push(mail_item_from_row(recipient, mid, sender, frame)?);
            }
        }
        tx.commit()?;
        Ok(out)
    }

    fn pending(
        &self,
        recipient: &MailboxKey,
        after: i64,
        limit: usize,
    ) -> Result<Vec<(i64, MailItem)>, StoreError> {
        let inner = self.lock();
        let mut stmt = inner.conn.prepare_cached(
            "SELECT seq, message_id, sender, frame FROM mailbox
             WHERE recipient = ?1 AND seq > ?2 AND expires_ms > ?3 ORDER BY seq LIMIT ?4",
        )?;
        let rows = stmt.query_map(
            params![
                recipient.as_str(),
                after,
                now_ms(),
                i64::try_from(limit).unwrap_or(i64::MAX)
            ],
            raw_mail_row,
        )?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, mid, sender, frame) = row?;
            out.push((seq, mail_item_from_row(recipient, mid, sender, frame)?));
        }
        Ok(out)
    }

    fn remove(
        &self,
        recipient: &MailboxKey,
        sender: Option<&ClientId>,
        message_id: &MessageId,
    ) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        let mut deleted = Vec::new();
        remove_in(&inner.conn, recipient, sender, message_id, &mut deleted)?;
        inner.removed(recipient.as_str(), &deleted);
        Ok(!deleted.is_empty())
    }

    fn purge_expired(&self) -> Result<usize, StoreError> {
        let mut inner = self.lock();
        let deleted = {
            let mut stmt = inner.conn.prepare_cached(
                "DELETE FROM mailbox WHERE expires_ms <= ?1 RETURNING recipient, sender, size",
            )?;
            let rows = stmt.query_map([now_ms()], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })?;
            rows.collect::<Result<Vec<_>, _>>()?
        };
        if let Some(u) = &mut inner.usage {
            for (recipient, sender, size) in &deleted {
                u.remove(recipient, sender, to_u64(*size));
            }
        }
        Ok(deleted.len())
    }

    fn count(&self, recipient: &MailboxKey) -> Result<u32, StoreError> {
        Ok(self
            .lock()
            .conn
            .prepare_cached(
                "SELECT COUNT(*) FROM mailbox WHERE recipient = ?1 AND expires_ms > ?2",
            )?
            .query_row(params![recipient.as_str(), now_ms()], |r| r.get(0))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> ClientId {
        ClientId::new(s).unwrap()
    }

    fn mb(s: &str) -> MailboxKey {
        MailboxKey::primary(&id(s))
    }
    fn item(m: &str) -> MailItem {
        from("s", m)
    }
    fn quota(count: u32) -> Quota {
        Quota {
            count,
            ..Quota::UNLIMITED
        }
    }
    fn from(sender: &str, m: &str) -> MailItem {
        MailItem {
            message_id: MessageId::new(m).unwrap(),
            sender: ClientId::new(sender).unwrap(),
            frame: format!("frame-{sender}-{m}"),
        }
    }

    fn suite(store: &SqliteStore) {
        // directory
        assert_eq!(store.get(&id("a")).unwrap(), None);
        let b = Binding {
            identity_key: [7; 32],
            kem_public_key: vec![1; 4],
            key_signature: vec![2; 64],
        };
        store.put(&id("a"), &b).unwrap();
        assert_eq!(store.get(&id("a")).unwrap(), Some(b.clone()));
        let b2 = Binding {
            kem_public_key: vec![3; 4],
            ..b
        };
        store.put(&id("a"), &b2).unwrap();
        assert_eq!(store.get(&id("a")).unwrap(), Some(b2));

        // mailbox: order, dedup, quota, cursor, remove
        let ttl = Duration::from_secs(60);
        for m in ["m1", "m2", "m3"] {
            store.enqueue(&mb("a"), &item(m), &quota(3), ttl).unwrap();
        }
        store
            .enqueue(&mb("a"), &item("m1"), &quota(3), ttl)
            .unwrap(); // duplicate id: no-op
        assert_eq!(store.count(&mb("a")).unwrap(), 3);
        assert!(matches!(
            store.enqueue(&mb("a"), &item("m4"), &quota(3), ttl),
            Err(EnqueueError::Full {
                limit: Limit::Count,
                ..
            })
        ));
        let first = store.pending(&mb("a"), 0, 2).unwrap();
        assert_eq!(
            first
                .iter()
                .map(|(_, i)| i.message_id.as_str())
                .collect::<Vec<_>>(),
            ["m1", "m2"]
        );
        let rest = store.pending(&mb("a"), first[1].0, 10).unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].1, item("m3"));
        assert!(store
            .remove(&mb("a"), Some(&id("s")), &MessageId::new("m2").unwrap())
            .unwrap());
        assert!(!store
            .remove(&mb("a"), Some(&id("s")), &MessageId::new("m2").unwrap())
            .unwrap());
        assert_eq!(store.count(&mb("b")).unwrap(), 0);

        // expiry
        store
            .enqueue(&mb("c"), &item("x"), &quota(10), Duration::ZERO)
            .unwrap();
        assert_eq!(store.pending(&mb("c"), 0, 10).unwrap().len(), 0);
        assert!(store.purge_expired().unwrap() >= 1);
    }

    #[test]
    fn live_rows_count_against_the_quota_and_per_sender_limits_hold() {
        let store = SqliteStore::in_memory().unwrap();
        let ttl = Duration::from_secs(60);
        let q = Quota {
            count: 4,
            bytes: 1000,
            sender_count: 2,
            sender_bytes: 500,
        };
        let bob = mb("bob");
        // two messages from mallory, one live on connection 7; a third from mallory is refused
        assert_eq!(
            store
                .accept_live(&bob, &from("mallory", "x"), &q, ttl, 7)
                .unwrap(),
            Accepted::Stored
        );
        store
            .enqueue(&bob, &from("mallory", "m1"), &q, ttl)
            .unwrap();
        assert!(matches!(
            store.accept_live(&bob, &from("mallory", "m2"), &q, ttl, 7),
            Err(EnqueueError::Full {
                limit: Limit::SenderCount,
                ..
            })
        ));
        // a resend of a stored message is not stored (nor sent) twice
        assert_eq!(
            store
                .accept_live(&bob, &from("mallory", "x"), &q, ttl, 7)
                .unwrap(),
            Accepted::Duplicate
        );
        // alice still has room, up to the total count
        store.enqueue(&bob, &from("alice", "a1"), &q, ttl).unwrap();
        store
            .accept_live(&bob, &from("alice", "a2"), &q, ttl, 7)
            .unwrap();
        assert!(matches!(
            store.enqueue(&bob, &from("carol", "c1"), &q, ttl),
            Err(EnqueueError::Full {
                limit: Limit::Count,
                ..
            })
        ));
        // a drain on connection 7 takes only the rows no connection owns, and owns them
        let claimed = store.claim(&bob, 7, 10).unwrap();
        let ids: Vec<_> = claimed.iter().map(|i| i.message_id.as_str()).collect();
        assert_eq!(ids, ["m1", "a1"]);
        assert!(store.claim(&bob, 7, 10).unwrap().is_empty());
        // one row given back is claimed again; the connection's end gives back the rest
        store.disown(&bob, &from("alice", "a2"), 7).unwrap();
        assert_eq!(store.claim(&bob, 8, 10).unwrap().len(), 1);
        assert_eq!(store.disown_all(&bob, 7).unwrap(), 3);
        assert_eq!(store.claim(&bob, 9, 10).unwrap().len(), 3);
        // bytes: a frame larger than the sender's share is refused
        let big = MailItem {
            frame: "x".repeat(600),
            ..from("dave", "big")
        };
        assert!(matches!(
            store.enqueue(&mb("erin"), &big, &q, ttl),
            Err(EnqueueError::Full {
                limit: Limit::SenderBytes,
                ..
            })
        ));
    }

    #[test]
    fn a_group_commit_applies_each_request_in_order_within_the_quota() {
        let store = SqliteStore::in_memory().unwrap();
        let ttl = Duration::from_secs(60);
        let q = quota(2);
        let bob = mb("bob");
        store.enqueue(&bob, &from("alice", "a1"), &q, ttl).unwrap();
        let live = |m: &str, conn| (bob.clone(), from("carol", m), conn);
        let requests = [
            // carol's session: two messages for bob, the second over his quota of 2
            CommitRequest {
                acks: None,
                live: vec![live("c1", 1), live("c2", 1)],
            },
            // bob's session acknowledges a1 and c1: room for carol's next
            CommitRequest {
                acks: Some((
                    bob.clone(),
                    vec![
                        (Some(id("alice")), MessageId::new("a1").unwrap()),
                        (None, MessageId::new("c1").unwrap()),
                    ],
                )),
                live: Vec::new(),
            },
            CommitRequest {
                acks: None,
                live: vec![live("c3", 2), live("c3", 2)],
            },
        ];
        let results = store.commit_group(&requests, &q, ttl);
        assert_eq!(results.len(), 3);
        assert!(matches!(results[0][0], Ok(Accepted::Stored)));
        assert!(matches!(
            results[0][1],
            Err(EnqueueError::Full {
                limit: Limit::Count,
                ..
            })
        ));
        assert!(results[1].is_empty());
        assert!(matches!(results[2][0], Ok(Accepted::Stored)));
        assert!(matches!(results[2][1], Ok(Accepted::Duplicate)));
        // committed: only c3 is left, owned by connection 2
        assert_eq!(store.count(&bob).unwrap(), 1);
        assert!(store.claim(&bob, 9, 10).unwrap().is_empty());
        assert_eq!(store.disown_all(&bob, 2).unwrap(), 1);
    }

    #[test]
    fn the_quota_follows_acks_expiry_purges_and_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let q = quota(2);
        let bob = mb("bob");
        let full = |s: &SqliteStore, m: &str| {
            matches!(
                s.enqueue(&bob, &from("alice", m), &q, Duration::from_secs(60)),
                Err(EnqueueError::Full { .. })
            )
        };
        {
            let s = SqliteStore::open(dir.path()).unwrap();
            s.enqueue(&bob, &from("alice", "a1"), &q, Duration::from_secs(60))
                .unwrap();
            s.accept_live(&bob, &from("alice", "a2"), &q, Duration::from_secs(60), 3)
                .unwrap();
            assert!(full(&s, "a3"));
            // an ack frees a place, in a batch or alone; acking twice frees nothing more
            let acks = [(Some(id("alice")), MessageId::new("a1").unwrap())];
            assert_eq!(s.remove_batch(&bob, &acks).unwrap(), 1);
            assert_eq!(s.remove_batch(&bob, &acks).unwrap(), 0);
            s.enqueue(&bob, &from("alice", "a3"), &q, Duration::from_secs(60))
                .unwrap();
            assert!(full(&s, "a4"));
            assert!(s
                .remove(&bob, None, &MessageId::new("a2").unwrap())
                .unwrap());
            // an expired row no longer counts, purged or not
            s.enqueue(&bob, &from("alice", "old"), &q, Duration::ZERO)
                .unwrap();
            s.enqueue(&bob, &from("alice", "a4"), &q, Duration::from_secs(60))
                .unwrap();
            assert!(full(&s, "a5"));
            assert_eq!(s.purge_expired().unwrap(), 1);
            assert!(full(&s, "a5"));
        }
        // reopened: the stored rows still count
        let s = SqliteStore::open(dir.path()).unwrap();
        assert!(full(&s, "a5"));
        s.remove(&bob, Some(&id("alice")), &MessageId::new("a3").unwrap())
            .unwrap();
        s.enqueue(&bob, &from("alice", "a5"), &q, Duration::from_secs(60))
            .unwrap();
        assert_eq!(s.count(&bob).unwrap(), 2);
    }

    #[test]
    fn rows_owned_by_connections_wait_again_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let ttl = Duration::from_secs(60);
        {
            let s = SqliteStore::open(dir.path()).unwrap();
            s.accept_live(&mb("bob"), &item("m1"), &Quota::UNLIMITED, ttl, 3)
                .unwrap();
            assert!(s.claim(&mb("bob"), 4, 10).unwrap().is_empty());
            // no checkpoint, no clean close: as after kill -9 (the WAL holds the commit)
            std::mem::forget(s);
        }
        let s = SqliteStore::open(dir.path()).unwrap();
        let claimed = s.claim(&mb("bob"), 1, 10).unwrap();
        assert_eq!(claimed, vec![item("m1")]);
    }

    #[test]
    fn acks_without_a_sender_remove_only_unambiguous_ids() {
        let store = SqliteStore::in_memory().unwrap();
        let ttl = Duration::from_secs(60);
        let bob = mb("bob");
        let mid = MessageId::new("same").unwrap();
        store
            .enqueue(&bob, &from("alice", "same"), &Quota::UNLIMITED, ttl)
            .unwrap();
        store
            .enqueue(&bob, &from("carol", "same"), &Quota::UNLIMITED, ttl)
            .unwrap();
        assert!(!store.remove(&bob, None, &mid).unwrap(), "ambiguous");
        assert!(store.remove(&bob, Some(&id("alice")), &mid).unwrap());
        assert_eq!(store.pending(&bob, 0, 10).unwrap()[0].1.sender, id("carol"));
        assert!(store.remove(&bob, None, &mid).unwrap(), "now unambiguous");
    }

    #[test]
    fn in_memory_store_passes_the_suite() {
        suite(&SqliteStore::in_memory().unwrap());
    }

    #[test]
    fn unused_bindings_expire_on_an_injected_clock_unless_in_use() {
        let s = SqliteStore::in_memory().unwrap();
        let b = Binding {
            identity_key: [7; 32],
            kem_public_key: vec![1; 4],
            key_signature: vec![2; 64],
        };
        for n in ["old", "online", "recent"] {
            s.put(&id(n), &b).unwrap();
        }
        // a synthetic clock far beyond the real one (put stamps the real time)
        let day = 24 * 3600 * 1000_i64;
        let t0 = 1_000_000 * day;
        let ttl = 180 * day;
        s.touch(&id("old"), t0).unwrap();
        s.touch(&id("online"), t0).unwrap();
        s.touch(&id("recent"), t0 + 100 * day).unwrap();
        assert_eq!(
            s.expire_unused(t0 + 179 * day - ttl, 10, &|_| false)
                .unwrap(),
            0
        );
        let in_use = |c: &ClientId| c.as_str() == "online";
        assert_eq!(
            s.expire_unused(t0 + 181 * day - ttl, 10, &in_use).unwrap(),
            1
        );
        assert!(
            s.get(&id("old")).unwrap().is_none(),
            "unused for 181 days: gone"
        );
        assert!(s.get(&id("online")).unwrap().is_some(), "online: kept");
        assert!(
            s.get(&id("recent")).unwrap().is_some(),
            "used 81 days ago: kept"
        );
        assert_eq!(s.binding_count().unwrap(), 2);
        // registering again restarts the clock
        s.touch(&id("recent"), t0 + 300 * day).unwrap();
        assert_eq!(
            s.expire_unused(t0 + 400 * day - ttl, 10, &|_| false)
                .unwrap(),
            1
        );
        assert_eq!(s.binding_count().unwrap(), 1);
    }

    #[test]
    fn the_wal_stays_bounded_under_constant_writes() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path()).unwrap();
        let wal = dir.path().join("lattice-server.sqlite3-wal");
        let ttl = Duration::from_secs(60);
        let big = "y".repeat(4000);
        let mut largest = 0;
        for round in 0..20 {
            for i in 0..200 {
                let item = MailItem {
                    frame: big.clone(),
                    ..from("s", &format!("m{round}-{i}"))
                };
                s.enqueue(&mb("bob"), &item, &Quota::UNLIMITED, ttl)
                    .unwrap();
                s.remove(&mb("bob"), Some(&id("s")), &item.message_id)
                    .unwrap();
            }
            largest = largest.max(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0));
        }
        // over 32 MB of pages written through the WAL; autocheckpoint keeps the file small
        assert!(
            largest <= crate::limits::WAL_SIZE_LIMIT,
            "WAL grew to {largest} bytes"
        );
        s.checkpoint().unwrap();
        assert_eq!(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0), 0);
    }

    #[test]
    fn file_store_passes_the_suite_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SqliteStore::open(dir.path()).unwrap();
            suite(&s);
            s.checkpoint().unwrap();
        }
        let s = SqliteStore::open(dir.path()).unwrap();
        assert!(s.get(&id("a")).unwrap().is_some());
        assert_eq!(s.count(&mb("a")).unwrap(), 2);
    }

    #[test]
    fn a_version_0_mailbox_is_migrated_without_losing_mail() {
        let dir = tempfile::tempdir().unwrap();
        {
            let conn = Connection::open(dir.path().join("lattice-server.sqlite3")).unwrap();
            conn.execute_batch(
                "CREATE TABLE mailbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, recipient TEXT NOT NULL,
                     message_id TEXT NOT NULL, frame TEXT NOT NULL, expires_ms INTEGER NOT NULL,
                     UNIQUE (recipient, message_id));
                 INSERT INTO mailbox (recipient, message_id, frame, expires_ms)
                     VALUES ('bob', 'm1', 'old-frame', 9999999999999);",
            )
            .unwrap();
        }
        let s = SqliteStore::open(dir.path()).unwrap();
        let items = s.pending(&mb("bob"), 0, 10).unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].1.frame, "old-frame");
        // the migrated row counts its bytes against the quota
        let tight = Quota {
            bytes: "old-frame".len() as u64 + 5,
            ..Quota::UNLIMITED
        };
        assert!(matches!(
            s.enqueue(
                &mb("bob"),
                &from("alice", "m2"),
                &tight,
                Duration::from_secs(60)
            ),
            Err(EnqueueError::Full {
                limit: Limit::Bytes,
                ..
            })
        ));
        s.enqueue(
            &mb("bob"),
            &from("alice", "m1"),
            &quota(10),
            Duration::from_secs(60),
        )
        .unwrap();
        assert_eq!(s.count(&mb("bob")).unwrap(), 2);
    }
}
