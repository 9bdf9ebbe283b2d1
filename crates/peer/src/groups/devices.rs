//! The devices of an id in its groups (docs/mls.md, *Multi-device*): every device on our id's
//! signed device list gets a leaf in every group and 1:1 conversation we are in, and no leaf
//! stays of a device its id dropped from its list.
//!
//! A **pass** ([`Groups::sync_devices`]) reads our id's list from the server (taken only if it
//! verifies under our identity key and is newer than the one known:
//! [`crate::trust::Trust::refresh_devices`])
//! and, in each group, the lists of the ids that have linked-device leaves there; then, group by
//! group, through the normal op order ([`Groups::commit_if`]: one change at a time,
//! `STALE_EPOCH` → the winner is processed → the plan is made again in the new epoch):
//!
//! - **Removes** every leaf whose (id, device) is not on that id's list as known — by **any**
//!   member, not only a device of the id: a removed (perhaps stolen) device stops reading even
//!   while the id's primary is offline. Only on the strength of a signed list newer than the
//!   one that admitted the leaf: an id with no verified list loses nothing, an older list the
//!   server serves is ignored.
//! - **Adds** each device of our own list that has no leaf (and, seen from a linked device, the
//!   id's primary), from a KeyPackage fetched with
//!   `allDevices` for our own id (validated: bound to our identity key through its
//!   certificate, on our list with that key). If another device of the id added it first, the
//!   plan made again finds nothing to do. The new device gets its Welcome through its own
//!   mailbox; a 1:1 conversation stays one (still exactly two ids).
//!
//! A device with no KeyPackage yet (it has not registered since it was linked) is tried again
//! after a doubling delay, [`defaults::DEVICE_KEY_PACKAGE_RETRY`] up to
//! [`defaults::DEVICE_KEY_PACKAGE_RETRY_MAX`], at most [`defaults::DEVICE_KEY_PACKAGE_ATTEMPTS`]
//! times until the next trigger ([`DeviceSchedule`], on tokio time). A pass makes at most
//! [`defaults::DEVICE_SYNC_COMMITS`] Commits and fetches at most
//! [`defaults::DEVICE_SYNC_LIST_FETCHES`] lists; what is left is a new pass.
//!
//! **Triggers**: a newer list of any id taken by [`crate::trust::Trust`] (our approval or removal of a device,
//! a contact's list seen in a key fetch), each registration, a due retry, and every
//! [`defaults::DEVICE_AUDIT_INTERVAL`] (a contact's removal is seen without any other traffic).
//! One pass runs at a time, at most one more waits.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use base64::Engine as _;
use lattice_mls::{Member, MemberIdentity, MlsClient, MlsError, OutgoingCommit};
use lattice_protocol::{
    ClientFrame, ClientId, ErrorType, KeyPackageFetch, ServerFrame, PRIMARY_DEVICE,
};
use tokio::time::Instant;

use super::{mls_error, Groups};
use crate::link::Lane;
use crate::sanitize::Sanitized;
use crate::sync::lock;
use crate::trust::DeviceList;
use crate::wire::{unexpected, B64};
use crate::{defaults, GroupId, PeerError, WaitOptions};

/// A leaf to remove: a device its id's current list no longer names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Unlisted {
    pub(crate) client_id: ClientId,
    pub(crate) device_id: String,
    pub(crate) leaf_index: u32,
}

/// What one group needs.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Devices of our own list with no leaf in the group.
    pub(crate) add: Vec<String>,
    /// Leaves of devices their id's list no longer names.
    pub(crate) remove: Vec<Unlisted>,
}

/// Plans one group from its leaves and the verified lists known (by id). `me` is this device:
/// its own leaf is never planned away, and it is never added.
pub(crate) fn plan(
    me: &MemberIdentity,
    members: &[Member],
    lists: &HashMap<ClientId, DeviceList>,
) -> Plan {
    let listed =
        |list: &DeviceList, device: &str| list.devices.iter().any(|(d, _)| d.as_str() == device);
    let remove = members
        .iter()
        .filter_map(|m| {
            let device = m.identity.device_id.as_deref()?;
            let mine =
                m.identity.client_id == me.client_id && me.device_id.as_deref() == Some(device);
            let list = lists.get(&m.identity.client_id)?;
            (!mine && !listed(list, device)).then(|| Unlisted {
                client_id: m.identity.client_id.clone(),
                device_id: device.to_owned(),
                leaf_index: m.leaf_index,
            })
        })
        .collect();
    // Our devices: the listed ones, and the primary (never listed, always there) when we are a
    // linked device.
    let add = lists
        .get(&me.client_id)
        .map(|own| {
            let primary = me.device_id.is_some().then_some(PRIMARY_DEVICE);
            own.devices
                .iter()
                .map(|(d, _)| d.as_str())
                .chain(primary)
                .filter(|d| me.device_id.as_deref() != Some(*d))
                .filter(|d| {
                    !members.iter().any(|m| {
                        m.identity.client_id == me.client_id && leaf_device(&m.identity) == *d
                    })
                })
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    Plan { add, remove }
}

/// When an own device without a KeyPackage is tried again, and when the next audit pass is due.
/// Pure bookkeeping over [`Instant`]s, so it is tested on paused time.
#[derive(Debug)]
pub(crate) struct DeviceSchedule {
    waiting: HashMap<String, Waiting>,
    next_audit: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Waiting {
    attempts: u32,
    at: Instant,
}

impl DeviceSchedule {
    pub(crate) fn new() -> Self {
        Self {
            waiting: HashMap::new(),
            next_audit: Instant::now() + defaults::DEVICE_AUDIT_INTERVAL,
        }
    }

    /// Whether `device` may be tried now (not waiting, or its wait is over and it has attempts
    /// left).
    pub(crate) fn ready(&self, device: &str, now: Instant) -> bool {
        self.waiting
            .get(device)
            .is_none_or(|w| w.attempts < defaults::DEVICE_KEY_PACKAGE_ATTEMPTS && w.at <= now)
    }

    /// `device` had no KeyPackage: it waits twice as long as last time (capped).
    pub(crate) fn missed(&mut self, device: &str, now: Instant) {
        let attempts = self.waiting.get(device).map_or(0, |w| w.attempts) + 1;
        let delay = defaults::DEVICE_KEY_PACKAGE_RETRY
            .saturating_mul(1 << attempts.saturating_sub(1).min(16))
            .min(defaults::DEVICE_KEY_PACKAGE_RETRY_MAX);
        self.waiting.insert(
            device.to_owned(),
            Waiting {
                attempts,
                at: now + delay,
            },
        );
    }

    /// `device` got its KeyPackage.
    pub(crate) fn found(&mut self, device: &str) {
        self.waiting.remove(device);
    }

    /// A new trigger (our list changed, a registration): every device gets its attempts back.
    pub(crate) fn reset(&mut self) {
        self.waiting.clear();
    }

    /// The audit pass is starting: the next one is a full interval later.
    pub(crate) fn audited(&mut self, now: Instant) {
        self.next_audit = now + defaults::DEVICE_AUDIT_INTERVAL;
    }

    /// The earliest moment something is due: a retry with attempts left, or the audit.
    pub(crate) fn next_due(&self) -> Instant {
        self.waiting
            .values()
            .filter(|w| w.attempts < defaults::DEVICE_KEY_PACKAGE_ATTEMPTS)
            .map(|w| w.at)
            .fold(self.next_audit, Instant::min)
    }

    /// Whether the audit is due at `now`.
    pub(crate) fn audit_due(&self, now: Instant) -> bool {
        self.next_audit <= now
    }
}

/// The device id of a leaf, the primary's included.
fn leaf_device(m: &MemberIdentity) -> &str {
    m.device_id.as_deref().unwrap_or(PRIMARY_DEVICE)
}

/// The ids with linked-device leaves in `members`, ours left out.
fn ids_with_devices(me: &ClientId, members: &[Member]) -> Vec<ClientId> {
    let mut ids: Vec<ClientId> = members
        .iter()
        .filter(|m| m.identity.device_id.is_some() && &m.identity.client_id != me)
        .map(|m| m.identity.client_id.clone())
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// The Commit of a plan's removals made again on the group as it is now (after a lost epoch the
/// winner may have removed them already): `None` when nothing is left to remove.
fn remove_now(
    mls: &mut MlsClient,
    gid: &GroupId,
    me: &MemberIdentity,
    lists: &HashMap<ClientId, DeviceList>,
) -> Result<Option<OutgoingCommit>, MlsError> {
    let members = mls.members(gid)?;
    let leaves: Vec<u32> = plan(me, &members, lists)
        .remove
        .iter()
        .map(|u| u.leaf_index)
        .collect();
    if leaves.is_empty() {
        return Ok(None);
    }
    mls.remove_leaves(gid, &leaves).map(Some)
}

/// The leaves of our id's other devices in `gid`.
fn own_other_leaves(
    mls: &MlsClient,
    gid: &GroupId,
    me: &MemberIdentity,
) -> Result<Vec<u32>, MlsError> {
    Ok(mls
        .members(gid)?
        .into_iter()
        .filter(|m| m.identity.client_id == me.client_id && m.identity.device_id != me.device_id)
        .map(|m| m.leaf_index)
        .collect())
}

impl Groups {
    /// Commits the removal of our id's other devices from `gid` (leaving is for the whole id:
    /// [`Groups::leave`]). Returns whether a Commit was made (none when no other device of ours
    /// is in the group).
    pub(super) async fn remove_own_other_devices(&self, gid: &GroupId) -> Result<bool, PeerError> {
        let me = self.me.clone();
        self.commit_if(gid, |mls| {
            let leaves = own_other_leaves(mls, gid, &me)?;
            if leaves.is_empty() {
                return Ok(None);
            }
            mls.remove_leaves(gid, &leaves).map(Some)
        })
        .await
    }

    /// Our own id's device list for a pass. A primary that keeps the last list it signed
    /// ([`crate::KeyStore::own_device_list`], taken at start-up and on every publish) already
    /// knows the newest one there is: only a device holding the identity key signs lists, and
    /// the primary is that device. So it asks the server for nothing (a round trip per
    /// reconnect, and a server restored from a backup would serve an older list anyway, which
    /// is never taken). A linked device, or a primary that kept no list (a fresh install of an
    /// identity that may have signed lists elsewhere), fetches the served list and takes it if
    /// it verifies and is newer.
    async fn own_devices(&self) -> Result<Option<crate::trust::DeviceList>, PeerError> {
        let me = &self.me;
        if me.device_id.is_none() && matches!(self.trust.key_store().own_device_list(), Ok(Some(_)))
        {
            if let Some(known) = self.trust.known_devices(&me.client_id) {
                return Ok(Some(known));
            }
        }
        self.trust
            .refresh_devices(&me.client_id, Some(&me.identity_key))
            .await
    }

    /// Runs [`Groups::sync_devices`] on its own task (a Commit that loses its epoch waits for
    /// the worker to process the winner). At most one pass runs and one more waits: a trigger
    /// while one waits is already covered by it.
    pub(crate) fn sync_devices_later(self: &Arc<Self>) {
        if self.device_pass_wanted.swap(true, Ordering::SeqCst) {
            return;
        }
        let me = Arc::clone(self);
        tokio::spawn(async move {
            if let Err(e) = me.sync_devices().await {
                tracing::warn!(peer = %me.client_id, error = %Sanitized(&e), "device reconciliation failed; tried again on the next trigger");
            }
        });
    }

    /// A trigger that gives every waiting device its attempts back (our list changed, a new
    /// registration), then a pass.
    pub(crate) fn devices_changed(self: &Arc<Self>) {
        lock(&self.device_schedule).reset();
        self.sync_devices_later();
    }

    /// The worker's timer fired: a pass if a retry or the audit is due.
    pub(super) fn device_timer(self: &Arc<Self>) {
        let now = Instant::now();
        {
            let mut s = lock(&self.device_schedule);
            if s.audit_due(now) {
                s.audited(now);
            }
        }
        self.sync_devices_later();
    }

    /// When the worker's device timer is next due.
    pub(super) fn device_due(&self) -> Instant {
        lock(&self.device_schedule).next_due()
    }

    /// One reconciliation pass over every group and 1:1 conversation (see the module doc).
    /// Returns how many Commits it made.
    ///
    /// # Errors
    /// [`PeerError::Group`] for our own credential; the errors of fetching our own list. A
    /// failure in one group is logged and the pass goes on; the first one is returned at the
    /// end.
    pub(crate) async fn sync_devices(&self) -> Result<usize, PeerError> {
        let _one = self.device_pass.lock().await;
        self.device_pass_wanted.store(false, Ordering::SeqCst);
        let me = self.me.clone();
        let mut lists = HashMap::new();
        if let Some(own) = self.own_devices().await? {
            lists.insert(me.client_id.clone(), own);
        }
        let mut fetched = HashSet::from([me.client_id.clone()]);
        let mut commits = 0;
        let mut first_error = None;
        let all = lock(&self.mls).groups();
        let leaving = self.still_leaving(&all);
        for gid in all.iter().filter(|g| !leaving.contains(*g)) {
            if commits >= defaults::DEVICE_SYNC_COMMITS {
                tracing::info!(peer = %self.client_id, commits, "device pass budget spent; another pass follows");
                if let Some(me) = self.self_arc() {
                    me.sync_devices_later();
                }
                break;
            }
            let Ok(members) = lock(&self.mls).members(gid) else {
                continue;
            };
            for id in ids_with_devices(&me.client_id, &members) {
                if fetched.len() <= defaults::DEVICE_SYNC_LIST_FETCHES && fetched.insert(id.clone())
                {
                    if let Err(e) = self.trust.refresh_devices(&id, None).await {
                        tracing::warn!(peer = %self.client_id, of = %id, error = %Sanitized(&e), "device list not refreshed; the one known is used");
                    }
                }
                if let Some(l) = self.trust.known_devices(&id) {
                    lists.insert(id, l);
                }
            }
            let planned = plan(&me, &members, &lists);
            if !planned.remove.is_empty() {
                match self
                    .commit_if(gid, |mls| remove_now(mls, gid, &me, &lists))
                    .await
                {
                    Ok(done) => {
                        if done {
                            commits += 1;
                            for u in &planned.remove {
                                tracing::info!(peer = %self.client_id, group = %gid, member = %u.client_id, device = %u.device_id, "leaf of a device no longer on its id's list removed");
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(peer = %self.client_id, group = %gid, error = %Sanitized(&e), "removing unlisted device leaves failed");
                        first_error.get_or_insert(e);
                    }
                }
            }
            let now = Instant::now();
            let ready: Vec<String> = {
                let s = lock(&self.device_schedule);
                planned
                    .add
                    .into_iter()
                    .filter(|d| s.ready(d, now))
                    .collect()
            };
            if ready.is_empty() {
                continue;
            }
            match self.add_own_devices(gid, &ready).await {
                Ok(true) => commits += 1,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(peer = %self.client_id, group = %gid, error = %Sanitized(&e), "adding own devices failed");
                    first_error.get_or_insert(e);
                }
            }
        }
        // A retry may have become due while this pass ran.
        self.heal_changed.notify_one();
        match first_error {
            None => Ok(commits),
            Some(e) => Err(e),
        }
    }

    /// Adds our own `devices` to `gid` from KeyPackages fetched now. Returns whether a Commit
    /// was made (none when no device had a KeyPackage, or another device added them first).
    async fn add_own_devices(&self, gid: &GroupId, devices: &[String]) -> Result<bool, PeerError> {
        let found = self.own_device_key_packages().await?;
        let now = Instant::now();
        let mut kps = Vec::new();
        for d in devices {
            let kp = found.iter().find(|(id, _)| id == d);
            let Some((_, bytes)) = kp else {
                tracing::info!(peer = %self.client_id, device = %d, "own device has no KeyPackage yet; tried again later");
                lock(&self.device_schedule).missed(d, now);
                continue;
            };
            let validated = {
                let pins = self.pins();
                lock(&self.mls).validate_key_package(bytes, &pins)
            };
            match validated {
                Ok(v)
                    if v.identity().client_id == self.me.client_id
                        && leaf_device(v.identity()) == d.as_str() =>
                {
                    lock(&self.device_schedule).found(d);
                    kps.push(v);
                }
                Ok(v) => {
                    return Err(PeerError::GroupIdentity {
                        peer: v.identity().client_id.to_string(),
                        reason: format!("the KeyPackage served for own device {d} is another's"),
                    });
                }
                Err(e) => return Err(mls_error(e, Some(gid))),
            }
        }
        if kps.is_empty() {
            return Ok(false);
        }
        let me = self.me.client_id.clone();
        let added = self
            .commit_if(gid, |mls| {
                let members = mls.members(gid)?;
                let missing: Vec<_> = kps
                    .iter()
                    .filter(|k| {
                        !members.iter().any(|m| {
                            m.identity.client_id == me
                                && m.identity.device_id == k.identity().device_id
                        })
                    })
                    .cloned()
                    .collect();
                if missing.is_empty() {
                    return Ok(None);
                }
                mls.add_members(gid, &missing).map(Some)
            })
            .await?;
        if added {
            for k in &kps {
                tracing::info!(peer = %self.client_id, group = %gid, device = ?k.identity().device_id, "own device added");
            }
        }
        Ok(added)
    }

    /// One KeyPackage of each device of our id that has one (`allDevices`), by device id, ours
    /// left out. None at all (`NO_KEY_PACKAGE`) is an empty list.
    async fn own_device_key_packages(&self) -> Result<Vec<(String, Vec<u8>)>, PeerError> {
        let me = self.me.client_id.clone();
        let m = me.clone();
        let options = WaitOptions::default()
            .filter(move |f| matches!(f, ServerFrame::KeyPackage(k) if k.client_id == m));
        let answer = self
            .requests
            .request(
                Lane::Normal,
                ClientFrame::KeyPackageFetch(KeyPackageFetch {
                    client_id: me,
                    all_devices: true,
                }),
                "key_package_fetch",
                options,
            )
            .await;
        let found = match answer {
            Ok(ServerFrame::KeyPackage(k)) => k,
            Ok(other) => return Err(unexpected("key_package_fetch", &other)),
            Err(e) if e.error_type() == Some(ErrorType::NoKeyPackage) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mine = leaf_device(&self.me);
        found
            .devices
            .unwrap_or_default()
            .into_iter()
            .filter(|d| d.device_id.as_str() != mine)
            .map(|d| {
                B64.decode(&d.key_package)
                    .map(|b| (d.device_id.as_str().to_owned(), b))
                    .map_err(|_| PeerError::Protocol("KeyPackage is not base64".into()))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::testkit::id;
    use lattice_crypto::IdentityKeyPair;
    use lattice_protocol::DeviceId;
    use rand_core::OsRng;
    use std::time::Duration;

    fn member(who: &str, device: Option<&str>, leaf: u32, ik: &IdentityKeyPair) -> Member {
        Member {
            identity: MemberIdentity {
                client_id: id(who),
                identity_key: ik.public_key(),
                device_id: device.map(str::to_owned),
            },
            leaf_index: leaf,
        }
    }

    fn list(counter: u64, devices: &[&str]) -> DeviceList {
        DeviceList {
            counter,
            devices: devices
                .iter()
                .map(|d| {
                    (
                        DeviceId::new(*d).unwrap(),
                        IdentityKeyPair::generate(&mut OsRng).public_key(),
                    )
                })
                .collect(),
        }
    }

    /// alice's primary in a group with bob (primary + phone) and her old tablet: her laptop
    /// (on her list, no leaf) is to be added, the tablet (off her list) and bob's phone (off
    /// his) removed; an id with no known list loses nothing; her own leaf is never touched.
    #[test]
    fn a_plan_adds_listed_own_devices_and_removes_unlisted_leaves() {
        let (a, b, c) = (
            IdentityKeyPair::generate(&mut OsRng),
            IdentityKeyPair::generate(&mut OsRng),
            IdentityKeyPair::generate(&mut OsRng),
        );
        let me = member("alice", None, 0, &a).identity;
        let members = vec![
            member("alice", None, 0, &a),
            member("alice", Some("tablet"), 1, &a),
            member("bob", None, 2, &b),
            member("bob", Some("phone"), 3, &b),
            member("carol", Some("desk"), 4, &c),
        ];
        let mut lists = HashMap::new();
        lists.insert(id("alice"), list(3, &["laptop"]));
        lists.insert(id("bob"), list(7, &[]));
        let p = plan(&me, &members, &lists);
        assert_eq!(p.add, ["laptop"]);
        let removed: Vec<(&str, &str, u32)> = p
            .remove
            .iter()
            .map(|u| (u.client_id.as_str(), u.device_id.as_str(), u.leaf_index))
            .collect();
        assert_eq!(removed, [("alice", "tablet", 1), ("bob", "phone", 3)]);

        // Seen from the laptop once it is in: it neither adds nor removes itself, and adds a
        // phone alice linked since.
        let laptop = member("alice", Some("laptop"), 5, &a).identity;
        let mut members = members;
        members.push(member("alice", Some("laptop"), 5, &a));
        lists.insert(id("alice"), list(4, &["laptop", "phone"]));
        let p = plan(&laptop, &members, &lists);
        assert_eq!(p.add, ["phone"]);
        // A group the laptop is in without alice's primary: the primary is added too.
        let p = plan(&laptop, &members[1..], &lists);
        assert_eq!(p.add, ["phone", "primary"]);
        assert!(p.remove.iter().all(|u| u.device_id != "laptop"));

        // No lists known: nothing at all.
        assert_eq!(plan(&me, &members, &HashMap::new()), Plan::default());
    }

    fn signed(
        by: &IdentityKeyPair,
        counter: u64,
        devices: &[(&str, &IdentityKeyPair)],
    ) -> lattice_protocol::SignedDeviceList {
        let entries: Vec<(&str, [u8; 32])> = devices
            .iter()
            .map(|(d, k)| (*d, *k.public_key().as_bytes()))
            .collect();
        let sig =
            by.sign(&lattice_crypto::device_list_message("alice", counter, &entries).unwrap());
        lattice_protocol::SignedDeviceList {
            counter,
            devices: devices
                .iter()
                .map(|(d, k)| lattice_protocol::DeviceEntry {
                    device_id: DeviceId::new(*d).unwrap(),
                    device_key: B64.encode(k.public_key().as_bytes()),
                })
                .collect(),
            signature: B64.encode(sig),
        }
    }

    /// Adversarial: after alice removed her laptop (list 3), a server serving the older list 2
    /// that still names it, or a list it signed itself naming the laptop and a device of its
    /// own, changes nothing: the plan neither adds the laptop back nor adds the invented
    /// device, and a laptop leaf still there is planned for removal.
    #[tokio::test]
    async fn an_older_or_forged_list_never_brings_a_device_in() {
        let kit = crate::testkit::Kit::new("alice");
        let ik = kit.identity.identity_key();
        let alice = id("alice");
        let laptop = IdentityKeyPair::generate(&mut OsRng);
        let evil = IdentityKeyPair::generate(&mut OsRng);
        let server_key = IdentityKeyPair::generate(&mut OsRng);
        let me = member("alice", None, 0, ik).identity;
        let pk = ik.public_key();
        kit.trust
            .record_devices(&alice, &pk, &signed(ik, 2, &[("laptop", &laptop)]))
            .unwrap();
        kit.trust
            .record_devices(&alice, &pk, &signed(ik, 3, &[]))
            .unwrap();
        // The older list again: not taken.
        kit.trust
            .record_devices(&alice, &pk, &signed(ik, 2, &[("laptop", &laptop)]))
            .unwrap();
        // A newer list the server made: refused.
        assert!(kit
            .trust
            .record_devices(
                &alice,
                &pk,
                &signed(&server_key, 9, &[("laptop", &laptop), ("evil", &evil)])
            )
            .is_err());
        let known = kit.trust.known_devices(&alice).unwrap();
        assert_eq!((known.counter, known.devices.len()), (3, 0));
        assert!(!kit.trust.device_listed(&alice, "evil", &evil.public_key()));
        assert!(!kit
            .trust
            .device_listed(&alice, "laptop", &laptop.public_key()));
        let lists = HashMap::from([(alice.clone(), known)]);
        let p = plan(&me, &[member("alice", None, 0, ik)], &lists);
        assert_eq!(p, Plan::default());
        let p = plan(
            &me,
            &[
                member("alice", None, 0, ik),
                member("alice", Some("laptop"), 1, ik),
            ],
            &lists,
        );
        assert!(p.add.is_empty());
        assert_eq!(p.remove.len(), 1);
        assert_eq!(p.remove[0].device_id, "laptop");
    }

    /// A device with no KeyPackage is tried again after 2, 4, 8 … seconds (capped), never
    /// before, and not after its attempts are spent until a trigger resets it; the audit comes
    /// round every interval. Paused time.
    #[tokio::test(start_paused = true)]
    async fn a_device_without_key_packages_is_retried_with_a_growing_bounded_delay() {
        let mut s = DeviceSchedule::new();
        let start = Instant::now();
        assert_eq!(s.next_due(), start + defaults::DEVICE_AUDIT_INTERVAL);
        assert!(s.ready("laptop", start));
        let mut waited = Vec::new();
        for attempt in 1..=defaults::DEVICE_KEY_PACKAGE_ATTEMPTS {
            let now = Instant::now();
            assert!(s.ready("laptop", now));
            s.missed("laptop", now);
            assert!(!s.ready("laptop", now));
            if attempt == defaults::DEVICE_KEY_PACKAGE_ATTEMPTS {
                break;
            }
            let due = s.next_due();
            tokio::time::advance(due - now - Duration::from_millis(1)).await;
            assert!(!s.ready("laptop", Instant::now()), "ready too early");
            tokio::time::advance(Duration::from_millis(1)).await;
            waited.push(due - now);
        }
        let r = defaults::DEVICE_KEY_PACKAGE_RETRY;
        assert_eq!(&waited[..3], &[r, 2 * r, 4 * r]);
        assert!(waited.windows(2).all(|w| w[1] >= w[0]));
        assert!(waited
            .iter()
            .all(|w| *w <= defaults::DEVICE_KEY_PACKAGE_RETRY_MAX));
        // Spent: not ready, and no longer what the timer waits for.
        let now = Instant::now();
        assert!(!s.ready("laptop", now));
        assert_eq!(s.next_due(), start + defaults::DEVICE_AUDIT_INTERVAL);
        s.reset();
        assert!(s.ready("laptop", now));
        s.missed("laptop", now);
        s.found("laptop");
        assert!(s.ready("laptop", now));
        tokio::time::advance(defaults::DEVICE_AUDIT_INTERVAL).await;
        assert!(s.audit_due(Instant::now()));
        s.audited(Instant::now());
        assert!(!s.audit_due(Instant::now()));
    }
}
