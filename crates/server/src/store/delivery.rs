//! The MLS delivery service's durable state, beside the mailbox in the same SQLite file: the
//! KeyPackage directory (a stock of one-time KeyPackages and one last-resort KeyPackage per id)
//! and, per group, its members and current epoch.
//!
//! The server never decrypts MLS: it checks sizes, ownership and membership, and orders Commits by
//! epoch. A Commit is checked, its copies stored in the members' mailboxes and the group moved to
//! the next epoch in **one transaction**: either all of it happens or none (so two Commits for one
//! epoch can never both be stored, and a Commit is never half delivered).

use std::collections::BTreeSet;
use std::time::Duration;

use lattice_protocol::limits::{MAX_GROUP_MEMBERS, MAX_KEY_PACKAGE_STOCK};
use lattice_protocol::{ClientId, GroupId, MessageId};
use rusqlite::{params, Connection, OptionalExtension};

use super::{
    insert_checked_in, Accepted, EnqueueError, Limit, MailItem, Quota, SqliteStore, StoreError,
};

/// The tables, created with the mailbox's on every open.
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS key_packages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    client_id TEXT NOT NULL,
    data BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS key_packages_by_owner ON key_packages (client_id, seq);
CREATE TABLE IF NOT EXISTS last_resort_key_packages (
    client_id TEXT PRIMARY KEY,
    data BLOB NOT NULL
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
";

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
    /// The epoch it was made in.
    pub epoch: u64,
    /// Its message id (the copies' id and the resend check).
    pub message_id: &'a MessageId,
    /// The members after it (deduplicated, at most [`MAX_GROUP_MEMBERS`]).
    pub members: &'a BTreeSet<ClientId>,
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

fn stock_in(conn: &Connection, owner: &ClientId) -> Result<Stock, StoreError> {
    let one_time: i64 = conn
        .prepare_cached("SELECT COUNT(*) FROM key_packages WHERE client_id = ?1")?
        .query_row([owner.as_str()], |r| r.get(0))?;
    let last_resort = conn
        .prepare_cached("SELECT 1 FROM last_resort_key_packages WHERE client_id = ?1")?
        .exists([owner.as_str()])?;
    Ok(Stock {
        one_time: to_u32(one_time),
        last_resort,
    })
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
    /// Adds `one_time` KeyPackages to `owner`'s stock and replaces its last-resort KeyPackage if
    /// `last_resort` is given, in one transaction; the stock after it.
    ///
    /// # Errors
    /// [`UploadError::StockFull`] if the stock would exceed [`MAX_KEY_PACKAGE_STOCK`] (nothing is
    /// stored); storage failure.
    pub fn upload_key_packages(
        &self,
        owner: &ClientId,
        one_time: &[Vec<u8>],
        last_resort: Option<&[u8]>,
    ) -> Result<Stock, UploadError> {
        let mut inner = self.lock();
        let tx = inner.conn.transaction().map_err(StoreError::from)?;
        let before = stock_in(&tx, owner)?;
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
                .prepare_cached("INSERT INTO key_packages (client_id, data) VALUES (?1, ?2)")
                .map_err(StoreError::from)?;
            for kp in one_time {
                insert
                    .execute(params![owner.as_str(), kp])
                    .map_err(StoreError::from)?;
            }
        }
        if let Some(kp) = last_resort {
            tx.prepare_cached(
                "INSERT INTO last_resort_key_packages (client_id, data) VALUES (?1, ?2)
                 ON CONFLICT (client_id) DO UPDATE SET data = excluded.data",
            )
            .and_then(|mut s| s.execute(params![owner.as_str(), kp]))
            .map_err(StoreError::from)?;
        }
        let after = stock_in(&tx, owner)?;
        tx.commit().map_err(StoreError::from)?;
        Ok(after)
    }

    /// `owner`'s KeyPackage stock.
    ///
    /// # Errors
    /// Storage failure.
    pub fn key_package_stock(&self, owner: &ClientId) -> Result<Stock, StoreError> {
        stock_in(&self.lock().conn, owner)
    }

    /// Takes `owner`'s oldest one-time KeyPackage (deleted in the same transaction, so no two
    /// fetches get the same one), or, with none left, its last-resort KeyPackage (kept);
    /// `None` if it has neither.
    ///
    /// # Errors
    /// Storage failure.
    pub fn fetch_key_package(
        &self,
        owner: &ClientId,
    ) -> Result<Option<FetchedKeyPackage>, StoreError> {
        let mut inner = self.lock();
        let tx = inner.conn.transaction()?;
        let taken: Option<Vec<u8>> = tx
            .prepare_cached(
                "DELETE FROM key_packages WHERE seq =
                     (SELECT seq FROM key_packages WHERE client_id = ?1 ORDER BY seq LIMIT 1)
                 RETURNING data",
            )?
            .query_row([owner.as_str()], |r| r.get(0))
            .optional()?;
        let (data, last_resort) = match taken {
            Some(data) => (data, false),
            None => {
                let lr: Option<Vec<u8>> = tx
                    .prepare_cached(
                        "SELECT data FROM last_resort_key_packages WHERE client_id = ?1",
                    )?
                    .query_row([owner.as_str()], |r| r.get(0))
                    .optional()?;
                match lr {
                    Some(data) => (data, true),
                    None => return Ok(None),
                }
            }
        };
        let stock_left = stock_in(&tx, owner)?.one_time;
        tx.commit()?;
        Ok(Some(FetchedKeyPackage {
            data,
            last_resort,
            stock_left,
        }))
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
    /// every member of `group` but `sender`, each within `quota`, in one transaction; who got it.
    ///
    /// # Errors
    /// [`GroupError::NotAMember`], [`GroupError::MailboxFull`] (nothing is stored), storage.
    pub fn group_send(
        &self,
        group: &GroupId,
        sender: &ClientId,
        message_id: &MessageId,
        frame: &str,
        quota: &Quota,
        ttl: Duration,
    ) -> Result<Vec<ClientId>, GroupError> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let result = (|| {
            let tx = inner.conn.transaction()?;
            let members = members_in(&tx, group)?;
            if !members.contains(sender) {
                return Err(GroupError::NotAMember);
            }
            let item = MailItem {
                message_id: message_id.clone(),
                sender: sender.clone(),
                frame: frame.to_owned(),
            };
            let mut recipients = Vec::with_capacity(members.len());
            for m in members.iter().filter(|m| *m != sender) {
                insert_checked_in(&tx, &mut inner.usage, m, &item, quota, ttl, None)?;
                recipients.push(m.clone());
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
                });
            }
            (current, before)
        }
        // An unknown group: only its creator's first Commit (epoch 0) makes it.
        None if op.epoch == 0 => (0, BTreeSet::from([op.sender.clone()])),
        None => return Err(GroupError::NotAMember),
    };
    if op.epoch < current {
        return Err(GroupError::StaleEpoch { current });
    }
    if op.epoch > current {
        return Err(GroupError::FutureEpoch { current });
    }
    let added: Vec<&ClientId> = op.members.difference(&before).collect();
    // Who joins a group now: the added members, and the creator of a new one (otherwise one id
    // could create groups without end).
    let creator = (row.is_none() && op.members.contains(op.sender)).then_some(op.sender);
    let joining: Vec<&ClientId> = creator.into_iter().chain(added.iter().copied()).collect();
    match (added.is_empty(), op.welcome_frame) {
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
    let mut recipients = Vec::new();
    let commit = MailItem {
        message_id: op.message_id.clone(),
        sender: op.sender.clone(),
        frame: op.commit_frame.to_owned(),
    };
    for m in before.iter().filter(|m| *m != op.sender) {
        store_copy(tx, usage, m, &commit, quota, ttl)?;
        recipients.push(m.clone());
    }
    if let Some(welcome_frame) = op.welcome_frame {
        let welcome = MailItem {
            message_id: op.message_id.clone(),
            sender: op.sender.clone(),
            frame: welcome_frame.to_owned(),
        };
        for m in &added {
            store_copy(tx, usage, m, &welcome, quota, ttl)?;
            recipients.push((*m).clone());
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
    Ok(CommitOutcome {
        epoch: next,
        recipients,
    })
}

/// One member's copy. A row already there under the same (sender, id) is another message (a
/// resent Commit was answered before this), so reusing the id is refused: the member would
/// never get this Commit.
fn store_copy(
    tx: &Connection,
    usage: &mut Option<super::Usage>,
    recipient: &ClientId,
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

    fn id(s: &str) -> ClientId {
        ClientId::new(s).unwrap()
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
            .upload_key_packages(&alice, &[vec![1], vec![2]], Some(&[9]))
            .unwrap();
        assert_eq!(
            s,
            Stock {
                one_time: 2,
                last_resort: true
            }
        );
        let a = store.fetch_key_package(&alice).unwrap().unwrap();
        assert_eq!((a.data, a.last_resort, a.stock_left), (vec![1], false, 1));
        let b = store.fetch_key_package(&alice).unwrap().unwrap();
        assert_eq!((b.data, b.last_resort, b.stock_left), (vec![2], false, 0));
        for _ in 0..3 {
            let c = store.fetch_key_package(&alice).unwrap().unwrap();
            assert_eq!((c.data, c.last_resort), (vec![9], true));
        }
        assert!(store.fetch_key_package(&id("bob")).unwrap().is_none());
        let full = vec![vec![0u8]; MAX_KEY_PACKAGE_STOCK + 1];
        assert!(matches!(
            store.upload_key_packages(&alice, &full, None),
            Err(UploadError::StockFull { stock: 0, .. })
        ));
        assert_eq!(store.key_package_stock(&alice).unwrap().one_time, 0);
    }

    #[test]
    fn an_expired_binding_takes_its_key_packages_and_memberships_along() {
        let store = SqliteStore::in_memory().unwrap();
        for who in ["alice", "bob"] {
            bind(&store, who);
        }
        store
            .upload_key_packages(&id("bob"), &[vec![1]], Some(&[2]))
            .unwrap();
        let gid = GroupId::new("0c").unwrap();
        let pair: BTreeSet<ClientId> = [id("alice"), id("bob")].into();
        store
            .group_commit(
                &CommitOp {
                    group: &gid,
                    sender: &id("alice"),
                    epoch: 0,
                    message_id: &MessageId::new("c").unwrap(),
                    members: &pair,
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
        assert!(store.fetch_key_package(&id("bob")).unwrap().is_none());
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
            epoch: 0,
            message_id: &mid,
            members: &members,
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
                &id("carol"),
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
        assert_eq!(store.count(&id("bob")).unwrap(), 0, "no copy left behind");
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
        assert_eq!(store.count(&id("bob")).unwrap(), 1);
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
                        epoch,
                        message_id: &mid,
                        members: &pair,
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
                    epoch: 0,
                    message_id: &MessageId::new("e").unwrap(),
                    members: &solo,
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
        assert_eq!(store.count(&id("bob")).unwrap(), 2);
    }
}
