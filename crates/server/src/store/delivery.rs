//! The MLS delivery service's durable state, beside the mailbox in the same SQLite file: the
//! KeyPackage directory (a stock of one-time KeyPackages and one last-resort KeyPackage per id)
//! per device, and, per group, its members, its leaves (the member devices copies go to) and
//! current epoch.
//!
//! The server never decrypts MLS: it checks sizes, ownership and membership, and orders Commits by
//! epoch. A Commit is checked, its copies stored in the members' mailboxes and the group moved to
//! the next epoch in **one transaction**: either all of it happens or none (so two Commits for one
//! epoch can never both be stored, and a Commit is never half delivered).

use std::collections::BTreeSet;
use std::time::Duration;

use lattice_protocol::limits::{MAX_GROUP_MEMBERS, MAX_KEY_PACKAGE_STOCK};
use lattice_protocol::{ClientId, DeviceId, GroupId, Leaf, MessageId};
use rusqlite::{params, Connection, OptionalExtension};

use super::{
    insert_checked_in, Accepted, EnqueueError, Limit, MailItem, MailboxKey, Quota, SqliteStore,
    StoreError,
};

/// The tables, created with the mailbox's on every open.
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS key_packages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    client_id TEXT NOT NULL,
    data BLOB NOT NULL,
    device_id TEXT NOT NULL DEFAULT 'primary'
);
CREATE INDEX IF NOT EXISTS key_packages_by_device ON key_packages (client_id, device_id, seq);
CREATE TABLE IF NOT EXISTS last_resort_key_packages (
    client_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (client_id, device_id)
);
CREATE TABLE IF NOT EXISTS mls_groups (
    group_id TEXT PRIMARY KEY,
    epoch INTEGER NOT NULL,
    -- The sender and messageId of the Commit that won the last epoch, so its resend is answered
    -- as accepted (its answer may have been lost) instead of as stale.
    last_sender TEXT,
    last_message_id TEXT
);
CREATE TABLE IF NOT EXISTS mls_group_members (
    group_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    PRIMARY KEY (group_id, client_id)
);
CREATE INDEX IF NOT EXISTS mls_group_members_by_id ON mls_group_members (client_id);
-- The devices of the members that copies go to (MLS leaves); every member has at least one.
CREATE TABLE IF NOT EXISTS mls_group_leaves (
    group_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    PRIMARY KEY (group_id, client_id, device_id)
);
CREATE INDEX IF NOT EXISTS mls_group_leaves_by_device ON mls_group_leaves (client_id, device_id);
";

/// Schema version 4 (devices) from version 3: KeyPackages and last-resort KeyPackages gain a
/// device (the primary's, for every stored one) and every group member becomes its primary
/// device's leaf. Runs before [`SCHEMA`], in one transaction; a table that does not exist yet is
/// simply created by [`SCHEMA`].
pub(super) fn migrate_to_v4(conn: &Connection) -> Result<(), StoreError> {
    let has_table = |name: &str| -> Result<bool, rusqlite::Error> {
        conn.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1")?
            .exists([name])
    };
    let has_column = |table: &str, column: &str| -> Result<bool, rusqlite::Error> {
        conn.prepare("SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2")?
            .exists([table, column])
    };
    let mut sql = String::from("BEGIN;");
    if has_table("key_packages")? && !has_column("key_packages", "device_id")? {
        sql.push_str(
            "ALTER TABLE key_packages ADD COLUMN device_id TEXT NOT NULL DEFAULT 'primary';
             DROP INDEX IF EXISTS key_packages_by_owner;",
        );
    }
    if has_table("last_resort_key_packages")?
        && !has_column("last_resort_key_packages", "device_id")?
    {
        sql.push_str(
            "ALTER TABLE last_resort_key_packages RENAME TO last_resort_key_packages_v3;
             CREATE TABLE last_resort_key_packages (
                 client_id TEXT NOT NULL, device_id TEXT NOT NULL, data BLOB NOT NULL,
                 PRIMARY KEY (client_id, device_id));
             INSERT INTO last_resort_key_packages (client_id, device_id, data)
                 SELECT client_id, 'primary', data FROM last_resort_key_packages_v3;
             DROP TABLE last_resort_key_packages_v3;",
        );
    }
    if has_table("mls_group_members")? && !has_table("mls_group_leaves")? {
        sql.push_str(
            "CREATE TABLE mls_group_leaves (
                 group_id TEXT NOT NULL, client_id TEXT NOT NULL, device_id TEXT NOT NULL,
                 PRIMARY KEY (group_id, client_id, device_id));
             INSERT INTO mls_group_leaves (group_id, client_id, device_id)
                 SELECT group_id, client_id, 'primary' FROM mls_group_members;",
        );
    }
    sql.push_str("COMMIT;");
    conn.execute_batch(&sql)?;
    Ok(())
}

/// An id's KeyPackage stock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stock {
    /// One-time KeyPackages.
    pub one_time: u32,
    /// Whether a last-resort KeyPackage is stored.
    pub last_resort: bool,
}

/// A KeyPackage taken from the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedKeyPackage {
    /// The KeyPackage bytes, as uploaded.
    pub data: Vec<u8>,
    /// Whether it is the last-resort KeyPackage (not consumed).
    pub last_resort: bool,
    /// One-time KeyPackages left after this fetch.
    pub stock_left: u32,
}

/// Why a KeyPackage upload was refused (nothing of it is stored).
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The stock would exceed [`MAX_KEY_PACKAGE_STOCK`].
    #[error("stock full: {stock} stored, {adding} more would exceed {MAX_KEY_PACKAGE_STOCK}")]
    StockFull {
        /// Stored now.
        stock: u32,
        /// In the upload.
        adding: usize,
    },
    /// Storage failure.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A Commit for the delivery service ([`SqliteStore::group_commit`]).
#[derive(Debug, Clone)]
pub struct CommitOp<'a> {
    /// The group.
    pub group: &'a GroupId,
    /// Who sends it.
    pub sender: &'a ClientId,
    /// The device that sends it: its own leaf gets no copy.
    pub sender_device: &'a DeviceId,
    /// The epoch it was made in.
    pub epoch: u64,
    /// Its message id (the copies' id and the resend check).
    pub message_id: &'a MessageId,
    /// The members after it (deduplicated, at most [`MAX_GROUP_MEMBERS`]).
    pub members: &'a BTreeSet<ClientId>,
    /// The leaves after it, when the sender named them (at most [`MAX_GROUP_MEMBERS`]); `None`:
    /// members that stay keep their leaves and added members get their primary device.
    pub leaves: Option<&'a BTreeSet<Leaf>>,
    /// The `message` frame of the Commit, as each member gets it.
    pub commit_frame: &'a str,
    /// The `message` frame of the Welcome, if any, as each added member gets it.
    pub welcome_frame: Option<&'a str>,
    /// Most groups one id may be a member of.
    pub max_groups_per_id: u32,
}

/// What an accepted Commit did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitOutcome {
    /// The group's epoch now.
    pub epoch: u64,
    /// Who got a copy (the Commit or the Welcome); empty for a resend.
    pub recipients: Vec<ClientId>,
    /// The device mailboxes the copies went to (on SQLite; a node of several wakes by id).
    pub copies: Vec<MailboxKey>,
}

/// Why the delivery service refused a group operation (nothing of it is stored).
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    /// The sender is not a member (or the group does not exist).
    #[error("not a member")]
    NotAMember,
    /// The Commit's epoch is behind the group's.
    #[error("stale epoch (group is at {current})")]
    StaleEpoch {
        /// The group's epoch.
        current: u64,
    },
    /// The Commit's epoch is ahead of the group's.
    #[error("future epoch (group is at {current})")]
    FutureEpoch {
        /// The group's epoch.
        current: u64,
    },
    /// A listed member is not a known verified id.
    #[error("unknown member {0}")]
    UnknownMember(ClientId),
    /// An added member is in as many groups as allowed.
    #[error("{member} is in {max} groups")]
    TooManyGroups {
        /// The member.
        member: ClientId,
        /// The limit.
        max: u32,
    },
    /// The Commit adds members but carries no Welcome.
    #[error("welcome missing")]
    WelcomeMissing,
    /// The Commit carries a Welcome but adds nobody.
    #[error("welcome without added members")]
    WelcomeUnexpected,
    /// A member's mailbox has no room for its copy.
    #[error("mailbox of {recipient} is full")]
    MailboxFull {
        /// The member.
        recipient: ClientId,
        /// The limit reached.
        limit: Limit,
    },
    /// The Commit's message id names another message still waiting for a member.
    #[error("message id reused")]
    MessageIdReused,
    /// A leaf names a device that is neither primary nor on its id's current device list.
    #[error("unknown device {}/{}", .0.client_id, .0.device_id)]
    UnknownDevice(Leaf),
    /// The leaves do not fit the member list.
    #[error("{0}")]
    LeavesMismatch(String),
    /// Storage failure.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<rusqlite::Error> for GroupError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Store(e.into())
    }
}

impl From<EnqueueError> for GroupError {
    fn from(e: EnqueueError) -> Self {
        match e {
            EnqueueError::Full { recipient, limit } => Self::MailboxFull { recipient, limit },
            EnqueueError::Store(e) => Self::Store(e),
        }
    }
}

impl Quota {
    /// The value of `limit` in this quota (messages or bytes), for the refusal's message.
    pub fn bound(&self, limit: Limit) -> u64 {
        match limit {
            Limit::Count => u64::from(self.count),
            Limit::Bytes => self.bytes,
            Limit::SenderCount => u64::from(self.sender_count),
            Limit::SenderBytes => self.sender_bytes,
        }
    }
}

fn to_u32(n: i64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn stock_in(conn: &Connection, owner: &ClientId, device: &DeviceId) -> Result<Stock, StoreError> {
    let one_time: i64 = conn
        .prepare_cached(
            "SELECT COUNT(*) FROM key_packages WHERE client_id = ?1 AND device_id = ?2",
        )?
        .query_row([owner.as_str(), device.as_str()], |r| r.get(0))?;
    let last_resort = conn
        .prepare_cached(
            "SELECT 1 FROM last_resort_key_packages WHERE client_id = ?1 AND device_id = ?2",
        )?
        .exists([owner.as_str(), device.as_str()])?;
    Ok(Stock {
        one_time: to_u32(one_time),
        last_resort,
    })
}

/// One device's KeyPackage, inside the caller's transaction (see
/// [`SqliteStore::fetch_key_packages`]).
fn fetch_in(
    tx: &Connection,
    owner: &ClientId,
    device: &DeviceId,
) -> Result<Option<FetchedKeyPackage>, StoreError> {
    let taken: Option<Vec<u8>> = tx
        .prepare_cached(
            "DELETE FROM key_packages WHERE seq =
                 (SELECT seq FROM key_packages WHERE client_id = ?1 AND device_id = ?2
                  ORDER BY seq LIMIT 1)
             RETURNING data",
        )?
        .query_row([owner.as_str(), device.as_str()], |r| r.get(0))
        .optional()?;
    let (data, last_resort) = match taken {
        Some(data) => (data, false),
        None => {
            let lr: Option<Vec<u8>> = tx
                .prepare_cached(
                    "SELECT data FROM last_resort_key_packages
                     WHERE client_id = ?1 AND device_id = ?2",
                )?
                .query_row([owner.as_str(), device.as_str()], |r| r.get(0))
                .optional()?;
            match lr {
                Some(data) => (data, true),
                None => return Ok(None),
            }
        }
    };
    let stock_left = stock_in(tx, owner, device)?.one_time;
    Ok(Some(FetchedKeyPackage {
        data,
        last_resort,
        stock_left,
    }))
}

/// The leaves of `group` (empty if it does not exist).
fn leaves_in(conn: &Connection, group: &GroupId) -> Result<BTreeSet<Leaf>, StoreError> {
    let mut stmt = conn
        .prepare_cached("SELECT client_id, device_id FROM mls_group_leaves WHERE group_id = ?1")?;
    let rows = stmt.query_map([group.as_str()], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
    })?;
    let corrupt = || StoreError::Corrupt(group.to_string());
    let mut out = BTreeSet::new();
    for row in rows {
        let (id, device) = row?;
        out.insert(Leaf {
            client_id: ClientId::new(id).map_err(|_| corrupt())?,
            device_id: DeviceId::new(device).map_err(|_| corrupt())?,
        });
    }
    Ok(out)
}

/// The members of `group` (empty if it does not exist).
fn members_in(conn: &Connection, group: &GroupId) -> Result<BTreeSet<ClientId>, StoreError> {
    let mut stmt =
        conn.prepare_cached("SELECT client_id FROM mls_group_members WHERE group_id = ?1")?;
    let rows = stmt.query_map([group.as_str()], |r| r.get::<_, String>(0))?;
    let mut out = BTreeSet::new();
    for row in rows {
        let id = row?;
        out.insert(ClientId::new(id).map_err(|_| StoreError::Corrupt(group.to_string()))?);
    }
    Ok(out)
}

impl SqliteStore {
    /// Adds `one_time` KeyPackages to the stock of `owner`'s `device` and replaces its
    /// last-resort KeyPackage if `last_resort` is given, in one transaction; the stock after it.
    ///
    /// # Errors
    /// [`UploadError::StockFull`] if the stock would exceed [`MAX_KEY_PACKAGE_STOCK`] (nothing is
    /// stored); storage failure.
    pub fn upload_key_packages(
        &self,
        owner: &ClientId,
        device: &DeviceId,
        one_time: &[Vec<u8>],
        last_resort: Option<&[u8]>,
    ) -> Result<Stock, UploadError> {
        let mut inner = self.lock();
        let tx = inner.conn.transaction().map_err(StoreError::from)?;
        let before = stock_in(&tx, owner, device)?;
        let total = usize::try_from(before.one_time)
            .unwrap_or(usize::MAX)
            .saturating_add(one_time.len());
        if total > MAX_KEY_PACKAGE_STOCK {
            return Err(UploadError::StockFull {
                stock: before.one_time,
                adding: one_time.len(),
            });
        }
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO key_packages (client_id, device_id, data) VALUES (?1, ?2, ?3)",
                )
                .map_err(StoreError::from)?;
            for kp in one_time {
                insert
                    .execute(params![owner.as_str(), device.as_str(), kp])
                    .map_err(StoreError::from)?;
            }
        }
        if let Some(kp) = last_resort {
            tx.prepare_cached(
                "INSERT INTO last_resort_key_packages (client_id, device_id, data)
                 VALUES (?1, ?2, ?3)
                 ON CONFLICT (client_id, device_id) DO UPDATE SET data = excluded.data",
            )
            .and_then(|mut s| s.execute(params![owner.as_str(), device.as_str(), kp]))
            .map_err(StoreError::from)?;
        }
        let after = stock_in(&tx, owner, device)?;
        tx.commit().map_err(StoreError::from)?;
        Ok(after)
    }

    /// The KeyPackage stock of `owner`'s `device`.
    ///
    /// # Errors
    /// Storage failure.
    pub fn key_package_stock(
        &self,
        owner: &ClientId,
        device: &DeviceId,
    ) -> Result<Stock, StoreError> {
        stock_in(&self.lock().conn, owner, device)
    }

    /// Takes the oldest one-time KeyPackage of each of `owner`'s `devices` (deleted in the same
    /// transaction, so no two fetches get the same one), or, for a device with none left, its
    /// last-resort KeyPackage (kept). One entry per device that has either, in the order given.
    ///
    /// # Errors
    /// Storage failure (nothing is taken).
    pub fn fetch_key_packages(
        &self,
        owner: &ClientId,
        devices: &[DeviceId],
    ) -> Result<Vec<(DeviceId, FetchedKeyPackage)>, StoreError> {
        let mut inner = self.lock();
        let tx = inner.conn.transaction()?;
        let mut out = Vec::with_capacity(devices.len());
        for device in devices {
            if let Some(found) = fetch_in(&tx, owner, device)? {
                out.push((device.clone(), found));
            }
        }
        tx.commit()?;
        Ok(out)
    }

    /// The members and epoch of `group`, if the server knows it.
    ///
    /// # Errors
    /// Storage failure.
    pub fn group_state(
        &self,
        group: &GroupId,
    ) -> Result<Option<(u64, BTreeSet<ClientId>)>, StoreError> {
        let inner = self.lock();
        let epoch: Option<i64> = inner
            .conn
            .prepare_cached("SELECT epoch FROM mls_groups WHERE group_id = ?1")?
            .query_row([group.as_str()], |r| r.get(0))
            .optional()?;
        match epoch {
            None => Ok(None),
            Some(e) => Ok(Some((
                u64::try_from(e).unwrap_or(0),
                members_in(&inner.conn, group)?,
            ))),
        }
    }

    /// The delivery service's epoch check and fan-out of one Commit, in one transaction: the
    /// sender must be a member and `epoch` the group's current one (a group the server does not
    /// know is created by a Commit for epoch 0, with the sender as its member); then the Commit
    /// is stored for every member before it but the sender (removed members included: they
    /// learn they are out), the Welcome for every added member, each within `quota`, and the
    /// group moves to the next epoch with the new member list. A resend of the Commit that won
    /// the last epoch (same sender and message id) is answered as accepted again, storing
    /// nothing. Either everything is committed or nothing.
    ///
    /// # Errors
    /// Every [`GroupError`]; nothing is stored.
    pub fn group_commit(
        &self,
        op: &CommitOp<'_>,
        quota: &Quota,
        ttl: Duration,
    ) -> Result<CommitOutcome, GroupError> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let result = (|| {
            let tx = inner.conn.transaction()?;
            let r = commit_in(&tx, &mut inner.usage, op, quota, ttl)?;
            tx.commit()?;
            Ok(r)
        })();
        if result.is_err() {
            // The counts may hold rows of the rolled-back copies.
            inner.recount();
        }
        result
    }

    /// Stores one non-Commit group message (`frame`, the `message` frame each member gets) for
    /// every leaf of `group` but the sending device (the sender's other devices included), each
    /// within `quota`, in one transaction; the mailboxes that got it.
    ///
    /// # Errors
    /// [`GroupError::NotAMember`] (the sending device is no leaf), [`GroupError::MailboxFull`]
    /// (nothing is stored), storage.
    pub fn group_send(
        &self,
        group: &GroupId,
        sender: &Leaf,
        message_id: &MessageId,
        frame: &str,
        quota: &Quota,
        ttl: Duration,
    ) -> Result<Vec<MailboxKey>, GroupError> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let result = (|| {
            let tx = inner.conn.transaction()?;
            let leaves = leaves_in(&tx, group)?;
            if !leaves.contains(sender) {
                return Err(GroupError::NotAMember);
            }
            let item = MailItem {
                message_id: message_id.clone(),
                sender: sender.client_id.clone(),
                frame: frame.to_owned(),
            };
            let mut recipients = Vec::with_capacity(leaves.len());
            for leaf in leaves.iter().filter(|l| *l != sender) {
                if !super::devices::is_current_in(&tx, &leaf.client_id, &leaf.device_id)? {
                    continue;
                }
                let key = MailboxKey::new(&leaf.client_id, &leaf.device_id);
                insert_checked_in(&tx, &mut inner.usage, &key, &item, quota, ttl, None)?;
                recipients.push(key);
            }
            tx.commit()?;
            Ok(recipients)
        })();
        if result.is_err() {
            inner.recount();
        }
        result
    }
}

/// Deletes what the delivery service keeps for an id whose binding expired: its KeyPackages and
/// its group memberships (groups left without members go too). A new owner of the id starts
/// with none of them.
pub(super) fn forget_id(tx: &Connection, id: &str) -> Result<(), StoreError> {
    for sql in [
        "DELETE FROM key_packages WHERE client_id = ?1",
        "DELETE FROM last_resort_key_packages WHERE client_id = ?1",
        "DELETE FROM mls_group_members WHERE client_id = ?1",
        "DELETE FROM mls_group_leaves WHERE client_id = ?1",
    ] {
        tx.prepare_cached(sql)?.execute([id])?;
    }
    tx.prepare_cached(
        "DELETE FROM mls_groups WHERE NOT EXISTS
             (SELECT 1 FROM mls_group_members m WHERE m.group_id = mls_groups.group_id)",
    )?
    .execute([])?;
    Ok(())
}

fn commit_in(
    tx: &Connection,
    usage: &mut Option<super::Usage>,
    op: &CommitOp<'_>,
    quota: &Quota,
    ttl: Duration,
) -> Result<CommitOutcome, GroupError> {
    let gid = op.group.as_str();
    let sending = Leaf {
        client_id: op.sender.clone(),
        device_id: op.sender_device.clone(),
    };
    let row: Option<(i64, Option<String>, Option<String>)> = tx
        .prepare_cached(
            "SELECT epoch, last_sender, last_message_id FROM mls_groups WHERE group_id = ?1",
        )?
        .query_row([gid], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    let (current, before) = match &row {
        Some((epoch, last_sender, last_mid)) => {
            let current = u64::try_from(*epoch).unwrap_or(0);
            let before = members_in(tx, op.group)?;
            if !before.contains(op.sender) {
                return Err(GroupError::NotAMember);
            }
            let resend = last_sender.as_deref() == Some(op.sender.as_str())
                && last_mid.as_deref() == Some(op.message_id.as_str());
            if op.epoch.checked_add(1) == Some(current) && resend {
                return Ok(CommitOutcome {
                    epoch: current,
                    recipients: Vec::new(),
                    copies: Vec::new(),
                });
            }
            if !leaves_in(tx, op.group)?.contains(&sending) {
                return Err(GroupError::NotAMember);
            }
            (current, before)
        }
        // An unknown group: only its creator's first Commit (epoch 0) makes it.
        None if op.epoch == 0 => (0, BTreeSet::from([op.sender.clone()])),
        None => return Err(GroupError::NotAMember),
    };
    let leaves_before = if row.is_some() {
        leaves_in(tx, op.group)?
    } else {
        BTreeSet::from([sending.clone()])
    };
    let leaves_after = leaves_after(tx, op, &leaves_before)?;
    if op.epoch < current {
        return Err(GroupError::StaleEpoch { current });
    }
    if op.epoch > current {
        return Err(GroupError::FutureEpoch { current });
    }
    let added: Vec<&ClientId> = op.members.difference(&before).collect();
    let added_leaves: Vec<&Leaf> = leaves_after.difference(&leaves_before).collect();
    // Who joins a group now: the added members, and the creator of a new one (otherwise one id
    // could create groups without end).
    let creator = (row.is_none() && op.members.contains(op.sender)).then_some(op.sender);
    let joining: Vec<&ClientId> = creator.into_iter().chain(added.iter().copied()).collect();
    match (added_leaves.is_empty(), op.welcome_frame) {
        (false, None) => return Err(GroupError::WelcomeMissing),
        (true, Some(_)) => return Err(GroupError::WelcomeUnexpected),
        _ => {}
    }
    debug_assert!(op.members.len() <= MAX_GROUP_MEMBERS);
    for m in &added {
        let known = tx
            .prepare_cached("SELECT 1 FROM bindings WHERE client_id = ?1")?
            .exists([m.as_str()])?;
        if !known {
            return Err(GroupError::UnknownMember((*m).clone()));
        }
    }
    for m in &joining {
        let groups: i64 = tx
            .prepare_cached("SELECT COUNT(*) FROM mls_group_members WHERE client_id = ?1")?
            .query_row([m.as_str()], |r| r.get(0))?;
        if to_u32(groups) >= op.max_groups_per_id {
            return Err(GroupError::TooManyGroups {
                member: (*m).clone(),
                max: op.max_groups_per_id,
            });
        }
    }
    let mut recipients = BTreeSet::new();
    let mut copies = Vec::new();
    let commit = MailItem {
        message_id: op.message_id.clone(),
        sender: op.sender.clone(),
        frame: op.commit_frame.to_owned(),
    };
    for leaf in leaves_before.iter().filter(|l| **l != sending) {
        // A device removed from its id's list has no mailbox any more.
        if !super::devices::is_current_in(tx, &leaf.client_id, &leaf.device_id)? {
            continue;
        }
        let key = MailboxKey::new(&leaf.client_id, &leaf.device_id);
        store_copy(tx, usage, &key, &commit, quota, ttl)?;
        recipients.insert(leaf.client_id.clone());
        copies.push(key);
    }
    if let Some(welcome_frame) = op.welcome_frame {
        let welcome = MailItem {
            message_id: op.message_id.clone(),
            sender: op.sender.clone(),
            frame: welcome_frame.to_owned(),
        };
        for leaf in &added_leaves {
            let key = MailboxKey::new(&leaf.client_id, &leaf.device_id);
            store_copy(tx, usage, &key, &welcome, quota, ttl)?;
            recipients.insert(leaf.client_id.clone());
            copies.push(key);
        }
    }
    let next = current.saturating_add(1);
    if op.members.is_empty() {
        tx.prepare_cached("DELETE FROM mls_groups WHERE group_id = ?1")?
            .execute([gid])?;
    } else {
        tx.prepare_cached(
            "INSERT INTO mls_groups (group_id, epoch, last_sender, last_message_id)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (group_id) DO UPDATE SET epoch = excluded.epoch,
                 last_sender = excluded.last_sender, last_message_id = excluded.last_message_id",
        )?
        .execute(params![
            gid,
            i64::try_from(next).unwrap_or(i64::MAX),
            op.sender.as_str(),
            op.message_id.as_str()
        ])?;
    }
    for m in before.difference(op.members) {
        tx.prepare_cached("DELETE FROM mls_group_members WHERE group_id = ?1 AND client_id = ?2")?
            .execute([gid, m.as_str()])?;
    }
    for m in &added {
        tx.prepare_cached("INSERT INTO mls_group_members (group_id, client_id) VALUES (?1, ?2)")?
            .execute([gid, m.as_str()])?;
    }
    if row.is_none() && op.members.contains(op.sender) {
        // A new group: its creator was a member only implicitly until now.
        tx.prepare_cached(
            "INSERT OR IGNORE INTO mls_group_members (group_id, client_id) VALUES (?1, ?2)",
        )?
        .execute([gid, op.sender.as_str()])?;
    }
    tx.prepare_cached("DELETE FROM mls_group_leaves WHERE group_id = ?1")?
        .execute([gid])?;
    if !op.members.is_empty() {
        let mut insert = tx.prepare_cached(
            "INSERT INTO mls_group_leaves (group_id, client_id, device_id) VALUES (?1, ?2, ?3)",
        )?;
        for leaf in &leaves_after {
            insert.execute([gid, leaf.client_id.as_str(), leaf.device_id.as_str()])?;
        }
    }
    Ok(CommitOutcome {
        epoch: next,
        recipients: recipients.into_iter().collect(),
        copies,
    })
}

/// The leaves after a Commit: [`plan_leaves`], each added linked device then checked against
/// its id's current device list in this transaction.
fn leaves_after(
    tx: &Connection,
    op: &CommitOp<'_>,
    before: &BTreeSet<Leaf>,
) -> Result<BTreeSet<Leaf>, GroupError> {
    let planned = plan_leaves(op, before)?;
    for leaf in &planned.to_check {
        if !super::devices::is_current_in(tx, &leaf.client_id, &leaf.device_id)? {
            return Err(GroupError::UnknownDevice(leaf.clone()));
        }
    }
    Ok(planned.leaves)
}

/// The leaves a Commit leaves behind, before any device list is read ([`plan_leaves`]).
#[derive(Debug)]
pub struct PlannedLeaves {
    /// The leaves after the Commit.
    pub leaves: BTreeSet<Leaf>,
    /// The linked devices' leaves it adds: each must be on its id's current signed device list,
    /// which the store checks where it keeps the lists (in its SQLite transaction, or one Redis
    /// read per id).
    pub to_check: Vec<Leaf>,
}

/// The leaves after a Commit, the same rule on every store: the ones it names, checked against
/// its member list (every leaf a member's, every member with a leaf); or, when it names none (an
/// older client), the members that stay keep their leaves and the added ones get their primary
/// device.
///
/// # Errors
/// [`GroupError::LeavesMismatch`] when the named leaves and the members disagree.
pub fn plan_leaves(
    op: &CommitOp<'_>,
    before: &BTreeSet<Leaf>,
) -> Result<PlannedLeaves, GroupError> {
    let Some(named) = op.leaves else {
        let mut out: BTreeSet<Leaf> = before
            .iter()
            .filter(|l| op.members.contains(&l.client_id))
            .cloned()
            .collect();
        for m in op.members {
            if !out.iter().any(|l| &l.client_id == m) {
                out.insert(Leaf {
                    client_id: m.clone(),
                    device_id: DeviceId::primary(),
                });
            }
        }
        return Ok(PlannedLeaves {
            leaves: out,
            to_check: Vec::new(),
        });
    };
    if let Some(stray) = named.iter().find(|l| !op.members.contains(&l.client_id)) {
        return Err(GroupError::LeavesMismatch(format!(
            "leaf {}/{} is not in members",
            stray.client_id, stray.device_id
        )));
    }
    if let Some(bare) = op
        .members
        .iter()
        .find(|m| !named.iter().any(|l| &l.client_id == *m))
    {
        return Err(GroupError::LeavesMismatch(format!(
            "member {bare} has no leaf"
        )));
    }
    Ok(PlannedLeaves {
        leaves: named.clone(),
        to_check: named
            .difference(before)
            .filter(|l| !l.device_id.is_primary())
            .cloned()
            .collect(),
    })
}

/// One member's copy. A row already there under the same (sender, id) is another message (a
/// resent Commit was answered before this), so reusing the id is refused: the member would
/// never get this Commit.
fn store_copy(
    tx: &Connection,
    usage: &mut Option<super::Usage>,
    recipient: &MailboxKey,
    item: &MailItem,
    quota: &Quota,
    ttl: Duration,
) -> Result<(), GroupError> {
    match insert_checked_in(tx, usage, recipient, item, quota, ttl, None)? {
        Accepted::Stored => Ok(()),
        Accepted::Duplicate => Err(GroupError::MessageIdReused),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::store::{Binding, Directory as _, Mailbox as _};

    /// One KeyPackage of `owner`'s primary device, as a fetch without `allDevices` takes it.
    fn fetch_one(
        store: &SqliteStore,
        owner: &ClientId,
    ) -> Result<Option<FetchedKeyPackage>, StoreError> {
        Ok(store
            .fetch_key_packages(owner, &[DeviceId::primary()])?
            .pop()
            .map(|(_, k)| k))
    }

    fn id(s: &str) -> ClientId {
        ClientId::new(s).unwrap()
    }

    fn mb(s: &str) -> MailboxKey {
        MailboxKey::primary(&id(s))
    }

    fn bind(store: &SqliteStore, who: &str) {
        let b = Binding {
            identity_key: [1; 32],
            kem_public_key: vec![2; 8],
            key_signature: vec![3; 8],
        };
        store.put(&id(who), &b).unwrap();
    }

    #[test]
    fn key_packages_are_handed_out_once_then_the_last_resort_forever() {
        let store = SqliteStore::in_memory().unwrap();
        let alice = id("alice");
        let s = store
            .upload_key_packages(
                &alice,
                &DeviceId::primary(),
                &[vec![1], vec![2]],
                Some(&[9]),
            )
            .unwrap();
        assert_eq!(
            s,
            Stock {
                one_time: 2,
                last_resort: true
            }
        );
        let a = fetch_one(&store, &alice).unwrap().unwrap();
        assert_eq!((a.data, a.last_resort, a.stock_left), (vec![1], false, 1));
        let b = fetch_one(&store, &alice).unwrap().unwrap();
        assert_eq!((b.data, b.last_resort, b.stock_left), (vec![2], false, 0));
        for _ in 0..3 {
            let c = fetch_one(&store, &alice).unwrap().unwrap();
            assert_eq!((c.data, c.last_resort), (vec![9], true));
        }
        assert!(fetch_one(&store, &id("bob")).unwrap().is_none());
        let full = vec![vec![0u8]; MAX_KEY_PACKAGE_STOCK + 1];
        assert!(matches!(
            store.upload_key_packages(&alice, &DeviceId::primary(), &full, None),
            Err(UploadError::StockFull { stock: 0, .. })
        ));
        assert_eq!(
            store
                .key_package_stock(&alice, &DeviceId::primary())
                .unwrap()
                .one_time,
            0
        );
    }

    #[test]
    fn an_expired_binding_takes_its_key_packages_and_memberships_along() {
        let store = SqliteStore::in_memory().unwrap();
        for who in ["alice", "bob"] {
            bind(&store, who);
        }
        store
            .upload_key_packages(&id("bob"), &DeviceId::primary(), &[vec![1]], Some(&[2]))
            .unwrap();
        let gid = GroupId::new("0c").unwrap();
        let pair: BTreeSet<ClientId> = [id("alice"), id("bob")].into();
        store
            .group_commit(
                &CommitOp {
                    group: &gid,
                    sender: &id("alice"),
                    sender_device: &DeviceId::primary(),
                    epoch: 0,
                    message_id: &MessageId::new("c").unwrap(),
                    members: &pair,
                    leaves: None,
                    commit_frame: "{}",
                    welcome_frame: Some("{}"),
                    max_groups_per_id: 10,
                },
                &Quota::UNLIMITED,
                Duration::from_secs(60),
            )
            .unwrap();
        // every binding is older than a cutoff in the future; alice is kept (in use)
        let n = store
            .expire_unused(i64::MAX, 10, &|c: &ClientId| c.as_str() == "alice")
            .unwrap();
        assert_eq!(n, 1);
        assert!(fetch_one(&store, &id("bob")).unwrap().is_none());
        let (_, members) = store.group_state(&gid).unwrap().unwrap();
        assert_eq!(members, BTreeSet::from([id("alice")]));
        store
            .expire_unused(i64::MAX, 10, &|_: &ClientId| false)
            .unwrap();
        assert!(
            store.group_state(&gid).unwrap().is_none(),
            "an empty group goes"
        );
    }

    #[test]
    fn a_refused_commit_stores_nothing_and_keeps_the_epoch() {
        let store = SqliteStore::in_memory().unwrap();
        for who in ["alice", "bob", "carol"] {
            bind(&store, who);
        }
        let gid = GroupId::new("0a0b").unwrap();
        let mid = MessageId::new("c1").unwrap();
        let members: BTreeSet<ClientId> = [id("alice"), id("bob"), id("carol")].into();
        let op = CommitOp {
            group: &gid,
            sender: &id("alice"),
            sender_device: &DeviceId::primary(),
            epoch: 0,
            message_id: &mid,
            members: &members,
            leaves: None,
            commit_frame: "{\"c\":1}",
            welcome_frame: Some("{\"w\":1}"),
            max_groups_per_id: 10,
        };
        // carol's mailbox has room for nothing: the whole Commit is refused
        let tight = Quota {
            count: 1,
            ..Quota::UNLIMITED
        };
        store
            .enqueue(
                &mb("carol"),
                &MailItem {
                    message_id: MessageId::new("x").unwrap(),
                    sender: id("bob"),
                    frame: "{}".into(),
                },
                &tight,
                Duration::from_secs(60),
            )
            .unwrap();
        let err = store
            .group_commit(&op, &tight, Duration::from_secs(60))
            .unwrap_err();
        assert!(
            matches!(err, GroupError::MailboxFull { ref recipient, .. } if recipient.as_str() == "carol"),
            "{err:?}"
        );
        assert_eq!(store.count(&mb("bob")).unwrap(), 0, "no copy left behind");
        assert!(store.group_state(&gid).unwrap().is_none());
        // with room it goes through, once; the resend is answered without new copies
        let ok = store
            .group_commit(&op, &Quota::UNLIMITED, Duration::from_secs(60))
            .unwrap();
        assert_eq!(ok.epoch, 1);
        assert_eq!(ok.recipients.len(), 2);
        let again = store
            .group_commit(&op, &Quota::UNLIMITED, Duration::from_secs(60))
            .unwrap();
        assert_eq!((again.epoch, again.recipients.len()), (1, 0));
        assert_eq!(store.count(&mb("bob")).unwrap(), 1);
        let (epoch, m) = store.group_state(&gid).unwrap().unwrap();
        assert_eq!((epoch, m), (1, members));
    }

    #[test]
    fn commits_are_checked_against_groups_per_id_welcomes_and_reused_ids() {
        let store = SqliteStore::in_memory().unwrap();
        for who in ["alice", "bob", "carol"] {
            bind(&store, who);
        }
        let ttl = Duration::from_secs(60);
        let q = Quota::UNLIMITED;
        let pair: BTreeSet<ClientId> = [id("alice"), id("bob")].into();
        let commit = |group: &'static str, mid: &'static str, epoch: u64, welcome: bool| {
            let gid = GroupId::new(group).unwrap();
            let mid = MessageId::new(mid).unwrap();
            let pair = pair.clone();
            move |store: &SqliteStore| {
                store.group_commit(
                    &CommitOp {
                        group: &gid,
                        sender: &id("alice"),
                        sender_device: &DeviceId::primary(),
                        epoch,
                        message_id: &mid,
                        members: &pair,
                        leaves: None,
                        commit_frame: "{}",
                        welcome_frame: welcome.then_some("{\"w\":1}"),
                        max_groups_per_id: 1,
                    },
                    &q,
                    ttl,
                )
            }
        };
        // adding needs a Welcome, and a Welcome needs someone added
        assert!(matches!(
            commit("01", "a", 0, false)(&store),
            Err(GroupError::WelcomeMissing)
        ));
        assert_eq!(commit("01", "a", 0, true)(&store).unwrap().epoch, 1);
        assert!(matches!(
            commit("01", "b", 1, true)(&store),
            Err(GroupError::WelcomeUnexpected)
        ));
        // alice and bob are in one group, the most this test allows: alice cannot create a
        // second one (nor could anyone add bob to it)
        assert!(matches!(
            commit("02", "c", 0, true)(&store),
            Err(GroupError::TooManyGroups { ref member, max: 1 }) if member.as_str() == "alice"
        ));
        let solo: BTreeSet<ClientId> = [id("carol"), id("bob")].into();
        let err = store
            .group_commit(
                &CommitOp {
                    group: &GroupId::new("03").unwrap(),
                    sender: &id("carol"),
                    sender_device: &DeviceId::primary(),
                    epoch: 0,
                    message_id: &MessageId::new("e").unwrap(),
                    members: &solo,
                    leaves: None,
                    commit_frame: "{}",
                    welcome_frame: Some("{}"),
                    max_groups_per_id: 1,
                },
                &q,
                ttl,
            )
            .unwrap_err();
        assert!(
            matches!(err, GroupError::TooManyGroups { ref member, .. } if member.as_str() == "bob"),
            "{err:?}"
        );
        // a new Commit reusing the id of one bob has not acknowledged would never reach him
        assert!(matches!(
            commit("01", "a", 1, false)(&store),
            Err(GroupError::MessageIdReused)
        ));
        assert_eq!(commit("01", "d", 1, false)(&store).unwrap().epoch, 2);
        assert_eq!(store.count(&mb("bob")).unwrap(), 2);
    }

    #[test]
    fn a_version_3_database_is_migrated_to_devices_without_losing_anything() {
        let dir = tempfile::tempdir().unwrap();
        {
            // The version 3 schema (before devices), as that build wrote it.
            let conn = Connection::open(dir.path().join("lattice-server.sqlite3")).unwrap();
            conn.execute_batch(&format!(
                "{}
                 CREATE TABLE key_packages (seq INTEGER PRIMARY KEY AUTOINCREMENT,
                     client_id TEXT NOT NULL, data BLOB NOT NULL);
                 CREATE INDEX key_packages_by_owner ON key_packages (client_id, seq);
                 CREATE TABLE last_resort_key_packages (client_id TEXT PRIMARY KEY,
                     data BLOB NOT NULL);
                 CREATE TABLE mls_groups (group_id TEXT PRIMARY KEY, epoch INTEGER NOT NULL,
                     last_sender TEXT, last_message_id TEXT);
                 CREATE TABLE mls_group_members (group_id TEXT NOT NULL,
                     client_id TEXT NOT NULL, PRIMARY KEY (group_id, client_id));
                 CREATE INDEX mls_group_members_by_id ON mls_group_members (client_id);
                 INSERT INTO key_packages (client_id, data) VALUES ('alice', x'01');
                 INSERT INTO last_resort_key_packages (client_id, data) VALUES ('alice', x'09');
                 INSERT INTO mls_groups VALUES ('0a', 3, 'alice', 'm');
                 INSERT INTO mls_group_members VALUES ('0a', 'alice'), ('0a', 'bob');
                 INSERT INTO mailbox (recipient, sender, message_id, frame, expires_ms, size)
                     VALUES ('bob', 'alice', 'old', '{{}}', 9223372036854775807, 2);
                 PRAGMA user_version = 3;",
                super::super::SCHEMA
            ))
            .unwrap();
        }
        let store = SqliteStore::open(dir.path()).unwrap();
        let version: i64 = store
            .lock()
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, super::super::SCHEMA_VERSION);
        // The KeyPackages became the primary device's: the one-time one, then the last resort.
        let alice = id("alice");
        assert_eq!(fetch_one(&store, &alice).unwrap().unwrap().data, vec![1]);
        let lr = fetch_one(&store, &alice).unwrap().unwrap();
        assert_eq!((lr.data, lr.last_resort), (vec![9], true));
        // Mail kept for the primary device (the id's own mailbox key).
        assert_eq!(store.count(&mb("bob")).unwrap(), 1);
        // The members became their primary devices' leaves: alice's primary reaches bob's.
        let sender = Leaf {
            client_id: alice.clone(),
            device_id: DeviceId::primary(),
        };
        let got = store
            .group_send(
                &GroupId::new("0a").unwrap(),
                &sender,
                &MessageId::new("m2").unwrap(),
                "{}",
                &Quota::UNLIMITED,
                Duration::from_secs(60),
            )
            .unwrap();
        assert_eq!(got, vec![mb("bob")]);
        assert_eq!(store.count(&mb("bob")).unwrap(), 2);
        // and opening it again changes nothing
        drop(store);
        let store = SqliteStore::open(dir.path()).unwrap();
        assert_eq!(store.count(&mb("bob")).unwrap(), 2);
    }
}
