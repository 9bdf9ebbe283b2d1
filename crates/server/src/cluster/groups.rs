//! The MLS delivery service's groups in Redis: the epoch check and the ordered fan-out of
//! Commits, for several nodes (the SQLite one is `store::SqliteStore::group_commit`, one
//! transaction in one process).
//!
//! Keys, all with the group's hash tag (one Redis Cluster slot per group):
//! `lattice:group:{g}` (hash `epoch, last_sender, last_mid`), `lattice:group:{g}:members` (set),
//! `lattice:group:{g}:leaves` (set of `id device`: the member devices copies go to, as the
//! SQLite path's `mls_group_leaves`; a member with none stored, as in a group stored before
//! device leaves, counts as its primary device's leaf) and `lattice:group:{g}:pending` (the
//! accepted Commit whose copies are being stored, JSON). Per member, `lattice:groups:{alice}`
//! (the set of its groups, for `max_groups_per_id`).
//!
//! **Copies per leaf, one slot per script.** A copy goes to the mailbox stream of each leaf's
//! device ([`super::mailbox`]'s `lattice:mbox:{alice}` or `lattice:mbox:{alice}:d:laptop`), never
//! to the sending device. The devices of one id share its hash tag with its device list, so one
//! script per recipient id ([`RedisMailbox::device_copies`]) checks the room of all of its
//! leaves' mailboxes, skips a device its current list no longer names (a device removed from
//! the list gets no further copies, though its leaf stays until a Commit removes it, as on
//! SQLite) and stores every copy or none. The group's keys and each id's keys are in different
//! slots, so a Commit's or message's steps are one script each, in the order below.
//!
//! **Exactly one Commit per epoch, across nodes.** [`RedisGroups::commit`] reads the group,
//! makes the checks of the SQLite path (membership, epoch, Welcome, added members bound in the
//! directory, the group cap of every joining member, room in every recipient's mailbox), then
//! accepts with one script on the group's slot that moves the epoch only if it is still the
//! one read and no earlier Commit is pending: of Commits racing for one epoch from any nodes
//! exactly one is accepted; the others re-read and are refused as stale.
//!
//! **Nothing accepted is lost, and Commits reach members in epoch order.** The accepting script
//! also records the Commit (and the leaves each copy goes to) as the group's pending fan-out.
//! Its copies are then stored in each recipient device's mailbox stream, all before the sender
//! hears `group_commit` (deduplicated by sender and message id, so storing twice is
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

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use futures_util::future::try_join_all;
use lattice_protocol::{ClientId, DeviceId, GroupId, Leaf, MessageId};
use redis::Script;
use serde::{Deserialize, Serialize};

use super::devices::RedisDevices;
use super::directory::RedisDirectory;
use super::mailbox::{CopyMode, DeviceCopies, RedisEnqueueAllError, RedisMailbox};
use super::stats::{RedisStats, Timed as _};
use super::{id_key, ClusterError, RedisConn, KEY_PREFIX};
use crate::store::{plan_leaves, CommitOp, CommitOutcome, GroupError, MailItem, MailboxKey, Quota};

/// Reads of a group before a Commit gives up (each retry follows another node's accepted
/// Commit or finished fan-out, so the next read refuses it as stale or accepts it).
pub const ACCEPT_ATTEMPTS: usize = 4;

/// KEYS: group, members, pending, leaves. ARGV: sender, epoch read, message id, pending record,
/// the number of members after the Commit, those members, then its leaves (`id device`).
/// Returns {1, new epoch} accepted, {3, 0} a fan-out is pending, {4, epoch} the epoch moved
/// since it was read.
const ACCEPT: &str = "
if redis.call('EXISTS', KEYS[3]) == 1 then return {3, 0} end
local e = redis.call('HGET', KEYS[1], 'epoch')
local current = tonumber(e or '0')
if current ~= tonumber(ARGV[2]) then return {4, current} end
redis.call('DEL', KEYS[2], KEYS[4])
local m = tonumber(ARGV[5])
if m > 0 then
  redis.call('SADD', KEYS[2], unpack(ARGV, 6, 5 + m))
  if #ARGV > 5 + m then redis.call('SADD', KEYS[4], unpack(ARGV, 6 + m)) end
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

/// KEYS: group, members, leaves. ARGV: an id. Removes the id and its leaves from the group, and
/// the group if nobody is left in it; 1 if the group went.
const LEAVE: &str = "
redis.call('SREM', KEYS[2], ARGV[1])
local prefix = ARGV[1] .. ' '
for _, l in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  if string.sub(l, 1, #prefix) == prefix then redis.call('SREM', KEYS[3], l) end
end
if redis.call('SCARD', KEYS[2]) == 0 then
  redis.call('DEL', KEYS[1], KEYS[3])
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
    /// The leaves before the Commit but the sending device (removed ones included): they get
    /// the Commit. `None` in a record of a node from before device leaves: then `to_commit`'s
    /// primary devices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    commit_to: Option<Vec<Leaf>>,
    /// The leaves the Commit adds: they get the Welcome (`None`: `to_welcome`'s primaries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    welcome_to: Option<Vec<Leaf>>,
    /// The ids of `commit_to`'s primary leaves (what a node from before device leaves reads).
    to_commit: Vec<ClientId>,
    /// The ids of `welcome_to`'s primary leaves (idem).
    to_welcome: Vec<ClientId>,
    joined: Vec<ClientId>,
    left: Vec<ClientId>,
}

impl Pending {
    /// Who gets the Commit and who gets the Welcome.
    fn copies(&self) -> (Vec<Leaf>, Vec<Leaf>) {
        let primaries = |ids: &[ClientId]| -> Vec<Leaf> {
            ids.iter()
                .map(|id| Leaf {
                    client_id: id.clone(),
                    device_id: DeviceId::primary(),
                })
                .collect()
        };
        (
            self.commit_to
                .clone()
                .unwrap_or_else(|| primaries(&self.to_commit)),
            self.welcome_to
                .clone()
                .unwrap_or_else(|| primaries(&self.to_welcome)),
        )
    }
}

/// A group as read from Redis.
struct Read {
    epoch: Option<u64>,
    last_sender: Option<String>,
    last_mid: Option<String>,
    members: BTreeSet<ClientId>,
    /// Every member's leaves (a member without a stored leaf, as a group stored before device
    /// leaves has, counts as its primary device's leaf).
    leaves: BTreeSet<Leaf>,
    pending: Option<String>,
}

/// `[group, members, pending, leaves]` of `group`.
fn keys(group: &GroupId) -> [String; 4] {
    let g = format!("{KEY_PREFIX}:group:{{{group}}}");
    let members = format!("{g}:members");
    let pending = format!("{g}:pending");
    let leaves = format!("{g}:leaves");
    [g, members, pending, leaves]
}

/// A leaf as the `:leaves` set holds it: `id device` (neither holds a space).
fn leaf_entry(l: &Leaf) -> String {
    format!("{} {}", l.client_id, l.device_id)
}

fn parse_leaf(s: &str) -> Result<Leaf, ClusterError> {
    let bad = || ClusterError::Reply("a leaf that is not an id and a device");
    let (id, device) = s.split_once(' ').ok_or_else(bad)?;
    Ok(Leaf {
        client_id: ClientId::new(id).map_err(|_| bad())?,
        device_id: DeviceId::new(device).map_err(|_| bad())?,
    })
}

/// `leaves` by id, each id's devices in order (one script per id: one Redis Cluster slot).
fn by_id<'a>(leaves: impl IntoIterator<Item = &'a Leaf>) -> BTreeMap<ClientId, Vec<DeviceId>> {
    let mut out: BTreeMap<ClientId, Vec<DeviceId>> = BTreeMap::new();
    for l in leaves {
        out.entry(l.client_id.clone())
            .or_default()
            .push(l.device_id.clone());
    }
    out
}

/// The groups, as seen from one node.
#[derive(Clone)]
pub struct RedisGroups {
    conn: RedisConn,
    stats: Arc<RedisStats>,
    mailbox: RedisMailbox,
    directory: RedisDirectory,
    devices: RedisDevices,
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
    /// The groups on `conn`, storing copies in `mailbox`, checking added members in `directory`
    /// and added device leaves in `devices`.
    pub fn new(
        conn: impl Into<RedisConn>,
        mailbox: RedisMailbox,
        directory: RedisDirectory,
        devices: RedisDevices,
    ) -> Self {
        Self {
            conn: conn.into(),
            stats: Arc::default(),
            mailbox,
            directory,
            devices,
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

    /// The leaves of `group` (the member devices its copies go to), if the server knows it.
    ///
    /// # Errors
    /// Redis failing, or a stored leaf that is not an (id, device).
    pub async fn leaves(&self, group: &GroupId) -> Result<Option<BTreeSet<Leaf>>, ClusterError> {
        let r = self.read(group).await?;
        Ok(r.epoch.map(|_| r.leaves))
    }

    async fn read(&self, group: &GroupId) -> Result<Read, ClusterError> {
        let [g, members, pending, leaves] = keys(group);
        // One slot, one transaction: a consistent snapshot.
        type Row = (
            (Option<u64>, Option<String>, Option<String>),
            Vec<String>,
            Vec<String>,
            Option<String>,
        );
        let ((epoch, last_sender, last_mid), ids, stored, pending): Row = redis::pipe()
            .atomic()
            .cmd("HMGET")
            .arg(&g)
            .arg("epoch")
            .arg("last_sender")
            .arg("last_mid")
            .cmd("SMEMBERS")
            .arg(&members)
            .cmd("SMEMBERS")
            .arg(&leaves)
            .cmd("GET")
            .arg(&pending)
            .query_async(&mut self.conn.clone())
            .timed(&self.stats)
            .await?;
        let members: BTreeSet<ClientId> = ids
            .into_iter()
            .map(|s| {
                ClientId::new(s).map_err(|_| ClusterError::Reply("a member that is not an id"))
            })
            .collect::<Result<_, _>>()?;
        let mut leaves = stored
            .iter()
            .map(|s| parse_leaf(s))
            .collect::<Result<BTreeSet<Leaf>, _>>()?;
        for m in &members {
            if !leaves.iter().any(|l| &l.client_id == m) {
                leaves.insert(Leaf {
                    client_id: m.clone(),
                    device_id: DeviceId::primary(),
                });
            }
        }
        Ok(Read {
            epoch,
            last_sender,
            last_mid,
            members,
            leaves,
            pending,
        })
    }

    /// The epoch check and fan-out of one Commit (see the module's documentation): the same
    /// rules and answers as `SqliteStore::group_commit`, including a resend of the Commit that
    /// won the last epoch answered as accepted again, storing nothing. The outcome's `copies`
    /// are the device mailboxes the copies went to.
    ///
    /// # Errors
    /// [`RedisGroupError::Refused`] with the rule that refused it (nothing is stored);
    /// [`RedisGroupError::Redis`].
    pub async fn commit(
        &self,
        op: &CommitOp<'_>,
        quota: &Quota,
    ) -> Result<CommitOutcome, RedisGroupError> {
        let sending = Leaf {
            client_id: op.sender.clone(),
            device_id: op.sender_device.clone(),
        };
        for _ in 0..ACCEPT_ATTEMPTS {
            let read = self.read(op.group).await?;
            if let Some(pending) = read.pending {
                self.finish(op.group, &pending).await?;
                continue;
            }
            let (current, before, leaves_before) = match read.epoch {
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
                    if !read.leaves.contains(&sending) {
                        return Err(GroupError::NotAMember.into());
                    }
                    (current, read.members, read.leaves)
                }
                // An unknown group: only its creator's first Commit (epoch 0) makes it.
                None if op.epoch == 0 => (
                    0,
                    BTreeSet::from([op.sender.clone()]),
                    BTreeSet::from([sending.clone()]),
                ),
                None => return Err(GroupError::NotAMember.into()),
            };
            let leaves_after = self.leaves_after(op, &leaves_before).await?;
            if op.epoch < current {
                return Err(GroupError::StaleEpoch { current }.into());
            }
            if op.epoch > current {
                return Err(GroupError::FutureEpoch { current }.into());
            }
            let pending = self
                .check(
                    op,
                    quota,
                    read.epoch.is_none(),
                    &before,
                    &leaves_before,
                    &leaves_after,
                    &sending,
                )
                .await?;
            let record = serde_json::to_string(&pending)
                .map_err(|_| ClusterError::Reply("a pending Commit that does not serialize"))?;
            let [g, members, pending_key, leaves] = keys(op.group);
            let mut inv = self.accept.prepare_invoke();
            inv.key(g)
                .key(members)
                .key(pending_key)
                .key(leaves)
                .arg(op.sender.as_str())
                .arg(current)
                .arg(op.message_id.as_str())
                .arg(&record)
                .arg(op.members.len());
            for m in op.members {
                inv.arg(m.as_str());
            }
            for l in &leaves_after {
                inv.arg(leaf_entry(l));
            }
            let (code, epoch): (i64, u64) = inv
                .invoke_async(&mut self.conn.clone())
                .timed(&self.stats)
                .await
                .map_err(ClusterError::from)?;
            match code {
                1 => {
                    let copies = self.finish(op.group, &record).await?;
                    let recipients: BTreeSet<ClientId> =
                        copies.iter().map(|k| k.id().clone()).collect();
                    return Ok(CommitOutcome {
                        epoch,
                        recipients: recipients.into_iter().collect(),
                        copies,
                    });
                }
                // Another node moved the group, or has a fan-out pending: read again.
                3 | 4 => {}
                _ => return Err(ClusterError::Reply("an unknown accept result").into()),
            }
        }
        Err(ClusterError::Reply("the group kept changing while a Commit was checked").into())
    }

    /// The leaves after a Commit: the rule every store shares ([`plan_leaves`]), each added
    /// linked device then checked against its id's device list, one read per id.
    async fn leaves_after(
        &self,
        op: &CommitOp<'_>,
        before: &BTreeSet<Leaf>,
    ) -> Result<BTreeSet<Leaf>, RedisGroupError> {
        let planned = plan_leaves(op, before)?;
        for (id, devices) in by_id(&planned.to_check) {
            let listed = self.devices.list(&id).await?;
            for device in devices {
                let current = listed
                    .as_ref()
                    .is_some_and(|l| l.devices.iter().any(|d| d.device_id == device));
                if !current {
                    return Err(GroupError::UnknownDevice(Leaf {
                        client_id: id,
                        device_id: device,
                    })
                    .into());
                }
            }
        }
        Ok(planned.leaves)
    }

    /// The checks of a Commit for epoch `op.epoch` of a group with members `before` and leaves
    /// `leaves_before` (`new`: a group the server does not know yet) that need other slots; the
    /// fan-out it makes.
    #[allow(clippy::too_many_arguments)]
    async fn check(
        &self,
        op: &CommitOp<'_>,
        quota: &Quota,
        new: bool,
        before: &BTreeSet<ClientId>,
        leaves_before: &BTreeSet<Leaf>,
        leaves_after: &BTreeSet<Leaf>,
        sending: &Leaf,
    ) -> Result<Pending, RedisGroupError> {
        let added: Vec<ClientId> = op.members.difference(before).cloned().collect();
        let added_leaves: Vec<Leaf> = leaves_after.difference(leaves_before).cloned().collect();
        match (added_leaves.is_empty(), op.welcome_frame) {
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
        let commit_to: Vec<Leaf> = leaves_before
            .iter()
            .filter(|l| *l != sending)
            .cloned()
            .collect();
        // Room for every copy, one script per id (its devices' mailboxes and its device list
        // share its slot), all at once.
        let commit = item(op, op.commit_frame);
        let welcome = op.welcome_frame.map(|w| item(op, w));
        let mut checks = Vec::new();
        for (id, devices) in by_id(&commit_to) {
            checks.push((id, devices, &commit));
        }
        if let Some(welcome) = &welcome {
            for (id, devices) in by_id(&added_leaves) {
                checks.push((id, devices, welcome));
            }
        }
        let rooms = checks.iter().map(|(id, devices, item)| async move {
            let room = self
                .copies(id, devices, item, quota, CopyMode::Room)
                .await?;
            if room.waiting > 0 {
                // A copy under this (sender, id) waits already: another message, since the
                // resend of the last winner was answered above. The member would never get
                // this Commit.
                return Err(RedisGroupError::Refused(GroupError::MessageIdReused));
            }
            Ok(())
        });
        try_join_all(rooms).await?;
        let primaries = |leaves: &[Leaf]| -> Vec<ClientId> {
            leaves
                .iter()
                .filter(|l| l.device_id.is_primary())
                .map(|l| l.client_id.clone())
                .collect()
        };
        Ok(Pending {
            sender: op.sender.clone(),
            message_id: op.message_id.clone(),
            commit: op.commit_frame.to_owned(),
            welcome: op.welcome_frame.map(str::to_owned),
            to_commit: primaries(&commit_to),
            to_welcome: primaries(&added_leaves),
            commit_to: Some(commit_to),
            welcome_to: Some(added_leaves),
            joined,
            left: before.difference(op.members).cloned().collect(),
        })
    }

    /// [`RedisMailbox::device_copies`] with a full mailbox as the group refusal naming its id.
    async fn copies(
        &self,
        id: &ClientId,
        devices: &[DeviceId],
        item: &MailItem,
        quota: &Quota,
        mode: CopyMode,
    ) -> Result<DeviceCopies, RedisGroupError> {
        match self
            .mailbox
            .device_copies(id, devices, item, quota, mode)
            .await
        {
            Ok(c) => Ok(c),
            Err(RedisEnqueueAllError::Full { limit, .. }) => Err(GroupError::MailboxFull {
                recipient: id.clone(),
                limit,
            }
            .into()),
            Err(RedisEnqueueAllError::Devices(_)) => {
                Err(ClusterError::Reply("a group with more leaves per id than allowed").into())
            }
            Err(RedisEnqueueAllError::Redis(e)) => Err(e.into()),
        }
    }

    /// Stores the copies of the pending Commit `record` of `group` (again: storing twice is a
    /// no-op), updates the memberships, and clears the record; the device mailboxes that hold
    /// a copy (a device removed from its id's list gets none). Any node may run it, more than
    /// once.
    async fn finish(&self, group: &GroupId, record: &str) -> Result<Vec<MailboxKey>, ClusterError> {
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
        let (commit_to, welcome_to) = p.copies();
        let mut writes: Vec<(ClientId, Vec<DeviceId>, &MailItem)> = by_id(&commit_to)
            .into_iter()
            .map(|(id, devices)| (id, devices, &commit))
            .collect();
        if let Some(welcome) = &welcome {
            writes.extend(
                by_id(&welcome_to)
                    .into_iter()
                    .map(|(id, devices)| (id, devices, welcome)),
            );
        }
        // Room was checked before the Commit was accepted; an accepted Commit reaches every
        // current leaf (see the module's documentation for the bound).
        let stored = writes.iter().map(|(id, devices, item)| async move {
            match self
                .mailbox
                .device_copies(id, devices, item, &Quota::UNLIMITED, CopyMode::Write)
                .await
            {
                Ok(c) => Ok(c
                    .current
                    .iter()
                    .map(|d| MailboxKey::new(id, d))
                    .collect::<Vec<_>>()),
                Err(RedisEnqueueAllError::Redis(e)) => Err(e),
                Err(RedisEnqueueAllError::Full { .. }) => {
                    Err(ClusterError::Reply("an unlimited mailbox that is full"))
                }
                Err(RedisEnqueueAllError::Devices(_)) => Err(ClusterError::Reply(
                    "a group with more leaves per id than allowed",
                )),
            }
        });
        let copies: Vec<MailboxKey> = try_join_all(stored).await?.into_iter().flatten().collect();
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
        let [_, _, pending, _] = keys(group);
        let _: i64 = self
            .settle
            .key(pending)
            .arg(record)
            .invoke_async(&mut self.conn.clone())
            .timed(&self.stats)
            .await?;
        Ok(copies)
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
        let [_, _, pending, _] = keys(group);
        let n: i64 = redis::cmd("EXISTS")
            .arg(pending)
            .query_async(&mut self.conn.clone())
            .timed(&self.stats)
            .await?;
        Ok(n == 1)
    }

    /// Stores one group message (`frame`, the `message` frame each member gets) for every leaf
    /// of `group` but the sending device `sender` (the sender's other devices included; a
    /// device removed from its id's list gets none), after any pending Commit of the group; the
    /// device mailboxes that hold it. One script per recipient id checks the room of all its
    /// devices, all ids at once, then one per id stores; a copy refused later (the mailbox filled
    /// in between) stops the rest, and a resend with the same message id stores only what is
    /// missing.
    ///
    /// # Errors
    /// [`GroupError::NotAMember`] (the sending device is no leaf), [`GroupError::MailboxFull`];
    /// Redis failing.
    pub async fn send(
        &self,
        group: &GroupId,
        sender: &Leaf,
        message_id: &MessageId,
        frame: &str,
        quota: &Quota,
    ) -> Result<Vec<MailboxKey>, RedisGroupError> {
        let mut read = self.read(group).await?;
        if let Some(pending) = read.pending.take() {
            self.finish(group, &pending).await?;
            read = self.read(group).await?;
        }
        if read.epoch.is_none() || !read.leaves.contains(sender) {
            return Err(GroupError::NotAMember.into());
        }
        let item = MailItem {
            message_id: message_id.clone(),
            sender: sender.client_id.clone(),
            frame: frame.to_owned(),
        };
        let recipients = by_id(read.leaves.iter().filter(|l| *l != sender));
        let rooms = recipients
            .iter()
            .map(|(id, devices)| self.copies(id, devices, &item, quota, CopyMode::Room));
        try_join_all(rooms).await?;
        let writes = recipients.iter().map(|(id, devices)| async {
            let c = self
                .copies(id, devices, &item, quota, CopyMode::Write)
                .await?;
            Ok::<_, RedisGroupError>(
                c.current
                    .iter()
                    .map(|d| MailboxKey::new(id, d))
                    .collect::<Vec<_>>(),
            )
        });
        Ok(try_join_all(writes).await?.into_iter().flatten().collect())
    }

    /// Removes `id` and its leaves from every group it is in, deleting groups left without
    /// members (its binding expired: a new owner of the id starts with none, as `forget_id` does
    /// on SQLite); how many groups it left.
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
            let [g_key, members, _, leaves] = keys(&group);
            let _: i64 = self
                .leave
                .key(g_key)
                .key(members)
                .key(leaves)
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn leaf(id: &str, device: &str) -> Leaf {
        Leaf {
            client_id: ClientId::new(id).unwrap(),
            device_id: DeviceId::new(device).unwrap(),
        }
    }

    #[test]
    fn a_pending_record_from_before_device_leaves_goes_to_primaries() {
        let old = r#"{"sender":"alice","message_id":"c1","commit":"f","welcome":"w",
            "to_commit":["bob"],"to_welcome":["carol"],"joined":["carol"],"left":[]}"#;
        let p: Pending = serde_json::from_str(old).unwrap();
        assert_eq!(
            p.copies(),
            (vec![leaf("bob", "primary")], vec![leaf("carol", "primary")])
        );
    }

    #[test]
    fn a_pending_record_names_its_leaves_and_their_primaries_for_older_nodes() {
        let p = Pending {
            sender: ClientId::new("alice").unwrap(),
            message_id: MessageId::new("c1").unwrap(),
            commit: "f".into(),
            welcome: None,
            commit_to: Some(vec![leaf("alice", "laptop"), leaf("bob", "primary")]),
            welcome_to: Some(Vec::new()),
            to_commit: vec![ClientId::new("bob").unwrap()],
            to_welcome: Vec::new(),
            joined: Vec::new(),
            left: Vec::new(),
        };
        let back: Pending = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(
            back.copies(),
            (
                vec![leaf("alice", "laptop"), leaf("bob", "primary")],
                Vec::new()
            )
        );
    }

    #[test]
    fn leaves_are_stored_as_id_and_device() {
        let l = leaf("alice@example", "laptop-2");
        assert_eq!(leaf_entry(&l), "alice@example laptop-2");
        assert_eq!(parse_leaf(&leaf_entry(&l)).unwrap(), l);
        for bad in ["alice", "alice lap top", " laptop", "alice "] {
            assert!(parse_leaf(bad).is_err(), "{bad}");
        }
    }
}
