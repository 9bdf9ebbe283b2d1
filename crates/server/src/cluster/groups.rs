//! The MLS delivery service's groups in Redis: the epoch check and the ordered fan-out of
//! Commits, for several nodes (the SQLite one is `store::SqliteStore::group_commit`, one
//! transaction in one process).
//!
//! Keys, all with the group's hash tag (one Redis Cluster slot per group):
//! `lattice:group:{g}` (hash `epoch, last_sender, last_mid`), `lattice:group:{g}:members` (set)
//! and `lattice:group:{g}:pending` (the accepted Commit whose copies are being stored, JSON).
//! Per member, `lattice:groups:{alice}` (the set of its groups, for `max_groups_per_id`).
//!
//! **Exactly one Commit per epoch, across nodes.** [`RedisGroups::commit`] reads the group,
//! makes the checks of the SQLite path (membership, epoch, Welcome, added members bound in the
//! directory, the group cap of every joining member, room in every recipient's mailbox), then
//! accepts with one script on the group's slot that moves the epoch only if it is still the
//! one read and no earlier Commit is pending: of Commits racing for one epoch from any nodes
//! exactly one is accepted; the others re-read and are refused as stale.
//!
//! **Nothing accepted is lost, and Commits reach members in epoch order.** The accepting script
//! also records the Commit as the group's pending fan-out. Its copies are then stored in each
//! recipient's mailbox stream (deduplicated by sender and message id, so storing twice is
//! harmless), the group memberships updated, and the pending record deleted. The next Commit or
//! message for the group, on any node, first finishes a pending fan-out (so a node killed
//! halfway costs nothing: the sender's resend, or the group's next operation, completes it),
//! and no Commit is accepted while an earlier one is pending, so every member's stream holds
//! a group's Commits in epoch order.
//!
//! **Limits, where this differs from one SQLite transaction.** The mailboxes are in other slots
//! than the group, so the room in each recipient's mailbox is checked before the Commit is
//! accepted, and its copies are then stored without a second check (an accepted Commit must
//! reach every member): when other mail fills a mailbox in between, it passes its quota by at
//! most one copy per group its owner is in (each group has at most one Commit in flight). The
//! group cap of joining members is checked the same way and may be passed by Commits of
//! different groups adding one id at the same moment. A group message ([`RedisGroups::send`])
//! racing a Commit on another node may reach members after that Commit (as with any delivery
//! across an epoch change, MLS clients keep the previous epoch's secrets for late messages).

use std::collections::BTreeSet;
use std::sync::Arc;

use lattice_protocol::{ClientId, GroupId, MessageId};
use redis::Script;
use serde::{Deserialize, Serialize};

use super::directory::RedisDirectory;
use super::mailbox::{RedisEnqueueError, RedisMailbox, Room};
use super::stats::{RedisStats, Timed as _};
use super::{id_key, ClusterError, RedisConn, KEY_PREFIX};
use crate::store::{CommitOp, CommitOutcome, GroupError, MailItem, Quota};

/// Reads of a group before a Commit gives up (each retry follows another node's accepted
/// Commit or finished fan-out, so the next read refuses it as stale or accepts it).
pub const ACCEPT_ATTEMPTS: usize = 4;

/// KEYS: group, members, pending. ARGV: sender, epoch read, message id, pending record, then the
/// members after the Commit. Returns {1, new epoch} accepted, {3, 0} a fan-out is pending,
/// {4, epoch} the epoch moved since it was read.
const ACCEPT: &str = "
if redis.call('EXISTS', KEYS[3]) == 1 then return {3, 0} end
local e = redis.call('HGET', KEYS[1], 'epoch')
local current = tonumber(e or '0')
if current ~= tonumber(ARGV[2]) then return {4, current} end
redis.call('DEL', KEYS[2])
if #ARGV > 4 then
  redis.call('SADD', KEYS[2], unpack(ARGV, 5))
  redis.call('HSET', KEYS[1], 'epoch', current + 1, 'last_sender', ARGV[1], 'last_mid', ARGV[3])
else
  redis.call('DEL', KEYS[1])
end
redis.call('SET', KEYS[3], ARGV[4])
return {1, current + 1}
";

/// KEYS: pending. ARGV: the record that was fanned out. Deletes it if it is still that one.
const SETTLE: &str = "
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// KEYS: group, members. ARGV: an id. Removes the id from the group, and the group if nobody is
/// left in it; 1 if the group went.
const LEAVE: &str = "
redis.call('SREM', KEYS[2], ARGV[1])
if redis.call('SCARD', KEYS[2]) == 0 then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
";

/// Why the delivery service refused a group operation on Redis.
#[derive(Debug, thiserror::Error)]
pub enum RedisGroupError {
    /// Refused by the same rule as on SQLite (never [`GroupError::Store`]); nothing is stored.
    #[error(transparent)]
    Refused(GroupError),
    /// Redis failed. For a Commit: if it was accepted, its fan-out finishes with the group's
    /// next operation or the sender's resend.
    #[error(transparent)]
    Redis(#[from] ClusterError),
}

impl From<GroupError> for RedisGroupError {
    fn from(e: GroupError) -> Self {
        Self::Refused(e)
    }
}

/// An accepted Commit whose copies are being stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Pending {
    sender: ClientId,
    message_id: MessageId,
    commit: String,
    welcome: Option<String>,
    /// Members before the Commit but the sender (removed ones included).
    to_commit: Vec<ClientId>,
    /// Added members.
    to_welcome: Vec<ClientId>,
    joined: Vec<ClientId>,
    left: Vec<ClientId>,
}

/// A group as read from Redis.
struct Read {
    epoch: Option<u64>,
    last_sender: Option<String>,
    last_mid: Option<String>,
    members: BTreeSet<ClientId>,
    pending: Option<String>,
}

/// `[group, members, pending]` of `group`.
fn keys(group: &GroupId) -> [String; 3] {
    let g = format!("{KEY_PREFIX}:group:{{{group}}}");
    let members = format!("{g}:members");
    let pending = format!("{g}:pending");
    [g, members, pending]
}

/// The groups, as seen from one node.
#[derive(Clone)]
pub struct RedisGroups {
    conn: RedisConn,
    stats: Arc<RedisStats>,
    mailbox: RedisMailbox,
    directory: RedisDirectory,
    accept: Script,
    settle: Script,
    leave: Script,
}

impl std::fmt::Debug for RedisGroups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisGroups").finish_non_exhaustive()
    }
}

impl RedisGroups {
    /// The groups on `conn`, storing copies in `mailbox` and checking added members in
    /// `directory`.
    pub fn new(
        conn: impl Into<RedisConn>,
        mailbox: RedisMailbox,
        directory: RedisDirectory,
    ) -> Self {
        Self {
            conn: conn.into(),
            stats: Arc::default(),
            mailbox,
            directory,
            accept: Script::new(ACCEPT),
            settle: Script::new(SETTLE),
            leave: Script::new(LEAVE),
        }
    }

    /// Records this component's Redis round trips and errors in `stats`.
    #[must_use]
    pub fn with_stats(mut self, stats: Arc<RedisStats>) -> Self {
        self.stats = stats;
        self
    }

    /// The epoch and members of `group`, if the server knows it.
    ///
    /// # Errors
    /// Redis failing, or a member that is not an id.
    pub async fn state(
        &self,
        group: &GroupId,
    ) -> Result<Option<(u64, BTreeSet<ClientId>)>, ClusterError> {
        let r = self.read(group).await?;
        Ok(r.epoch.map(|e| (e, r.members)))
    }

    async fn read(&self, group: &GroupId) -> Result<Read, ClusterError> {
        let [g, members, pending] = keys(group);
        // One slot, one transaction: a consistent snapshot.
        type Row = (
            (Option<u64>, Option<String>, Option<String>),
            Vec<String>,
            Option<String>,
        );
        let ((epoch, last_sender, last_mid), ids, pending): Row = redis::pipe()
            .atomic()
            .cmd("HMGET")
            .arg(&g)
            .arg("epoch")
            .arg("last_sender")
            .arg("last_mid")
            .cmd("SMEMBERS")
            .arg(&members)
            .cmd("GET")
            .arg(&pending)
            .query_async(&mut self.conn.clone())
            .timed(&self.stats)
            .await?;
        let members = ids
            .into_iter()
            .map(|s| {
                ClientId::new(s).map_err(|_| ClusterError::Reply("a member that is not an id"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Read {
            epoch,
            last_sender,
            last_mid,
            members,
            pending,
        })
    }

    /// The epoch check and fan-out of one Commit (see the module's documentation): the same
    /// rules and answers as `SqliteStore::group_commit`, including a resend of the Commit that
    /// won the last epoch answered as accepted again, storing nothing.
    ///
    /// # Errors
    /// [`RedisGroupError::Refused`] with the rule that refused it (nothing is stored);
    /// [`RedisGroupError::Redis`].
    pub async fn commit(
        &self,
        op: &CommitOp<'_>,
        quota: &Quota,
    ) -> Result<CommitOutcome, RedisGroupError> {
        for _ in 0..ACCEPT_ATTEMPTS {
            let read = self.read(op.group).await?;
            if let Some(pending) = read.pending {
                self.finish(op.group, &pending).await?;
                continue;
            }
            let (current, before) = match read.epoch {
                Some(current) => {
                    if !read.members.contains(op.sender) {
                        return Err(GroupError::NotAMember.into());
                    }
                    let resend = read.last_sender.as_deref() == Some(op.sender.as_str())
                        && read.last_mid.as_deref() == Some(op.message_id.as_str());
                    if op.epoch.checked_add(1) == Some(current) && resend {
                        return Ok(CommitOutcome {
                            epoch: current,
                            recipients: Vec::new(),
                            copies: Vec::new(),
                        });
                    }
                    (current, read.members)
                }
                // An unknown group: only its creator's first Commit (epoch 0) makes it.
                None if op.epoch == 0 => (0, BTreeSet::from([op.sender.clone()])),
                None => return Err(GroupError::NotAMember.into()),
            };
            if op.epoch < current {
                return Err(GroupError::StaleEpoch { current }.into());
            }
            if op.epoch > current {
                return Err(GroupError::FutureEpoch { current }.into());
            }
            let pending = self.check(op, quota, read.epoch.is_none(), &before).await?;
            let record = serde_json::to_string(&pending)
                .map_err(|_| ClusterError::Reply("a pending Commit that does not serialize"))?;
            let [g, members, pending_key] = keys(op.group);
            let mut inv = self.accept.prepare_invoke();
            inv.key(g)
                .key(members)
                .key(pending_key)
                .arg(op.sender.as_str())
                .arg(current)
                .arg(op.message_id.as_str())
                .arg(&record);
            for m in op.members {
                inv.arg(m.as_str());
            }
            let (code, epoch): (i64, u64) = inv
                .invoke_async(&mut self.conn.clone())
                .timed(&self.stats)
                .await
                .map_err(ClusterError::from)?;
            match code {
                1 => {
                    self.finish(op.group, &record).await?;
                    let recipients = pending
                        .to_commit
                        .into_iter()
                        .chain(pending.to_welcome)
                        .collect();
                    return Ok(CommitOutcome {
                        epoch,
                        recipients,
                        copies: Vec::new(),
                    });
                }
                // Another node moved the group, or has a fan-out pending: read again.
                3 | 4 => {}
                _ => return Err(ClusterError::Reply("an unknown accept result").into()),
            }
        }
        Err(ClusterError::Reply("the group kept changing while a Commit was checked").into())
    }

    /// The checks of a Commit for epoch `op.epoch` of a group with members `before` (`new`: a
    /// group the server does not know yet) that need other slots; the fan-out it makes.
    async fn check(
        &self,
        op: &CommitOp<'_>,
        quota: &Quota,
        new: bool,
        before: &BTreeSet<ClientId>,
    ) -> Result<Pending, RedisGroupError> {
        let added: Vec<ClientId> = op.members.difference(before).cloned().collect();
        match (added.is_empty(), op.welcome_frame) {
            (false, None) => return Err(GroupError::WelcomeMissing.into()),
            (true, Some(_)) => return Err(GroupError::WelcomeUnexpected.into()),
            _ => {}
        }
        // Who joins a group now: the added members, and the creator of a new one (otherwise one
        // id could create groups without end).
        let creator = (new && op.members.contains(op.sender)).then(|| op.sender.clone());
        let joined: Vec<ClientId> = creator.into_iter().chain(added.iter().cloned()).collect();
        for m in &added {
            if self.directory.get(m).await?.is_none() {
                return Err(GroupError::UnknownMember(m.clone()).into());
            }
        }
        for m in &joined {
            let groups: u64 = redis::cmd("SCARD")
                .arg(id_key("groups", m))
                .query_async(&mut self.conn.clone())
                .timed(&self.stats)
                .await
                .map_err(ClusterError::from)?;
            if groups >= u64::from(op.max_groups_per_id) {
                return Err(GroupError::TooManyGroups {
                    member: m.clone(),
                    max: op.max_groups_per_id,
                }
                .into());
            }
        }
        let to_commit: Vec<ClientId> = before.iter().filter(|m| *m != op.sender).cloned().collect();
        let commit = item(op, op.commit_frame);
        for m in &to_commit {
            self.room(m, &commit, quota).await?;
        }
        if let Some(welcome) = op.welcome_frame {
            let welcome = item(op, welcome);
            for m in &added {
                self.room(m, &welcome, quota).await?;
            }
        }
        Ok(Pending {
            sender: op.sender.clone(),
            message_id: op.message_id.clone(),
            commit: op.commit_frame.to_owned(),
            welcome: op.welcome_frame.map(str::to_owned),
            to_commit,
            to_welcome: added,
            joined,
            left: before.difference(op.members).cloned().collect(),
        })
    }

    async fn room(
        &self,
        recipient: &ClientId,
        item: &MailItem,
        quota: &Quota,
    ) -> Result<(), RedisGroupError> {
        match self.mailbox.room(recipient, item, quota).await? {
            Room::Free => Ok(()),
            Room::Full(limit) => Err(GroupError::MailboxFull {
                recipient: recipient.clone(),
                limit,
            }
            .into()),
            Room::Waiting => Err(GroupError::MessageIdReused.into()),
        }
    }

    /// Stores the copies of the pending Commit `record` of `group` (again: storing twice is a
    /// no-op), updates the memberships, and clears the record. Any node may run it, more than
    /// once.
    async fn finish(&self, group: &GroupId, record: &str) -> Result<(), ClusterError> {
        let p: Pending = serde_json::from_str(record)
            .map_err(|_| ClusterError::Reply("a pending Commit that does not parse"))?;
        let commit = MailItem {
            message_id: p.message_id.clone(),
            sender: p.sender.clone(),
            frame: p.commit.clone(),
        };
        let welcome = p.welcome.as_ref().map(|frame| MailItem {
            message_id: p.message_id.clone(),
            sender: p.sender.clone(),
            frame: frame.clone(),
        });
        // Room was checked before the Commit was accepted; an accepted Commit reaches every
        // member (see the module's documentation for the bound).
        let copies = p
            .to_commit
            .iter()
            .map(|m| (m, &commit))
            .chain(
                welcome
                    .iter()
                    .flat_map(|w| p.to_welcome.iter().map(move |m| (m, w))),
            )
            .map(|(m, item)| self.mailbox.enqueue(m, item, &Quota::UNLIMITED));
        for stored in futures_util::future::join_all(copies).await {
            match stored {
                Ok(_) => {}
                Err(RedisEnqueueError::Redis(e)) => return Err(e),
                Err(RedisEnqueueError::Full(_)) => {
                    return Err(ClusterError::Reply("an unlimited mailbox that is full"))
                }
            }
        }
        for m in &p.joined {
            let _: i64 = redis::cmd("SADD")
                .arg(id_key("groups", m))
                .arg(group.as_str())
                .query_async(&mut self.conn.clone())
                .timed(&self.stats)
                .await?;
        }
        for m in &p.left {
            let _: i64 = redis::cmd("SREM")
                .arg(id_key("groups", m))
                .arg(group.as_str())
                .query_async(&mut self.conn.clone())
                .timed(&self.stats)
                .await?;
        }
        let [_, _, pending] = keys(group);
        let _: i64 = self
            .settle
            .key(pending)
            .arg(record)
            .invoke_async(&mut self.conn.clone())
            .timed(&self.stats)
            .await?;
        Ok(())
    }

    /// Finishes the fan-out of a Commit of `group` that a node accepted but did not finish
    /// (killed halfway); true if there was one. The group's next operation does this too.
    ///
    /// # Errors
    /// Redis failing.
    pub async fn finish_pending(&self, group: &GroupId) -> Result<bool, ClusterError> {
        let read = self.read(group).await?;
        match read.pending {
            Some(record) => {
                self.finish(group, &record).await?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Whether a Commit of `group` was accepted and its fan-out is not finished yet.
    ///
    /// # Errors
    /// Redis failing.
    pub async fn has_pending(&self, group: &GroupId) -> Result<bool, ClusterError> {
        let [_, _, pending] = keys(group);
        let n: i64 = redis::cmd("EXISTS")
            .arg(pending)
            .query_async(&mut self.conn.clone())
            .timed(&self.stats)
            .await?;
        Ok(n == 1)
    }

    /// Stores one group message (`frame`, the `message` frame each member gets) for every
    /// member of `group` but `sender`, after any pending Commit of the group; who got it.
    /// Every copy is checked for room first; a copy refused later (the mailbox filled in
    /// between) stops the rest, and a resend with the same message id stores only what is
    /// missing.
    ///
    /// # Errors
    /// [`GroupError::NotAMember`], [`GroupError::MailboxFull`]; Redis failing.
    pub async fn send(
        &self,
        group: &GroupId,
        sender: &ClientId,
        message_id: &MessageId,
        frame: &str,
        quota: &Quota,
    ) -> Result<Vec<ClientId>, RedisGroupError> {
        let mut read = self.read(group).await?;
        if let Some(pending) = read.pending.take() {
            self.finish(group, &pending).await?;
            read = self.read(group).await?;
        }
        if !read.members.contains(sender) {
            return Err(GroupError::NotAMember.into());
        }
        let item = MailItem {
            message_id: message_id.clone(),
            sender: sender.clone(),
            frame: frame.to_owned(),
        };
        let recipients: Vec<ClientId> = read
            .members
            .iter()
            .filter(|m| *m != sender)
            .cloned()
            .collect();
        for m in &recipients {
            match self.mailbox.room(m, &item, quota).await? {
                Room::Free | Room::Waiting => {}
                Room::Full(limit) => {
                    return Err(GroupError::MailboxFull {
                        recipient: m.clone(),
                        limit,
                    }
                    .into())
                }
            }
        }
        for m in &recipients {
            match self.mailbox.enqueue(m, &item, quota).await {
                Ok(_) => {}
                Err(RedisEnqueueError::Full(limit)) => {
                    return Err(GroupError::MailboxFull {
                        recipient: m.clone(),
                        limit,
                    }
                    .into())
                }
                Err(RedisEnqueueError::Redis(e)) => return Err(e.into()),
            }
        }
        Ok(recipients)
    }

    /// Removes `id` from every group it is in, deleting groups left without members (its binding
    /// expired: a new owner of the id starts with none, as `forget_id` does on SQLite); how many
    /// groups it left.
    ///
    /// # Errors
    /// Redis failing (the groups before the failure were left; calling again finishes).
    pub async fn forget_member(&self, id: &ClientId) -> Result<usize, ClusterError> {
        let mine = id_key("groups", id);
        let groups: Vec<String> = redis::cmd("SMEMBERS")
            .arg(&mine)
            .query_async(&mut self.conn.clone())
            .timed(&self.stats)
            .await?;
        for g in &groups {
            // A name that is not a group id was never written by us: nothing to leave.
            let Ok(group) = GroupId::new(g.as_str()) else {
                continue;
            };
            let [g_key, members, _] = keys(&group);
            let _: i64 = self
                .leave
                .key(g_key)
                .key(members)
                .arg(id.as_str())
                .invoke_async(&mut self.conn.clone())
                .timed(&self.stats)
                .await?;
            let _: i64 = redis::cmd("SREM")
                .arg(&mine)
                .arg(g)
                .query_async(&mut self.conn.clone())
                .timed(&self.stats)
                .await?;
        }
        Ok(groups.len())
    }

    /// The groups `id` is a member of (a group's members learn of it as its Commits finish).
    ///
    /// # Errors
    /// Redis failing.
    pub async fn group_count(&self, id: &ClientId) -> Result<u64, ClusterError> {
        Ok(redis::cmd("SCARD")
            .arg(id_key("groups", id))
            .query_async(&mut self.conn.clone())
            .timed(&self.stats)
            .await?)
    }
}

fn item(op: &CommitOp<'_>, frame: &str) -> MailItem {
    MailItem {
        message_id: op.message_id.clone(),
        sender: op.sender.clone(),
        frame: frame.to_owned(),
    }
}
