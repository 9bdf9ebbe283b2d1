//! Groups: MLS (RFC 9420, `lattice-mls`) wired to the server's delivery service. [`Groups`] owns
//! this device's [`MlsClient`] (its SQLite state), the order of group operations and the healing
//! schedule; it asks [`Trust`] for pinned identity keys, sends through [`Requests`], acknowledges
//! through the [`Link`] and raises group events upwards. It is off (absent) when
//! [`crate::PeerConfig::mls_state`] is not set.
//!
//! - **KeyPackages.** After each verified registration (and on `key_packages_low`) the stock at
//!   the server is read and topped up to [`defaults::KEY_PACKAGE_STOCK_TARGET`], plus a
//!   last-resort KeyPackage when there is none.
//! - **Order.** One MLS change at a time ([`Groups::op`]): an incoming message is processed, or
//!   one Commit of ours is in flight (made, sent, ruled on, then confirmed or discarded). Incoming
//!   `mls` messages are processed by one worker in the order the server delivered them, and
//!   acknowledged only after the engine has committed the new state to SQLite, together with
//!   the (sender, message id) of the delivery ([`MlsClient::process_once`]): a redelivery, even
//!   after a restart, is acknowledged and dropped.
//! - **Commits.** `group_commit`; on `STALE_EPOCH` the Commit is discarded, the worker processes
//!   the winner, and the intent is made again in the new epoch, at most
//!   [`defaults::COMMIT_ATTEMPTS`] times. `confirm_commit` only after the server accepted it.
//! - **Identity.** Every member (KeyPackage, Welcome, Commit) must be bound to the identity key
//!   pinned for its id in the [`crate::KeyStore`]; an id with no pin yet is fetched (TOFU, with
//!   the `keySignature` check) and the operation tried again; a credential bound to another key
//!   is refused loudly ([`PeerError::GroupIdentity`]).
//! - **1:1 conversations** over MLS live in [`direct`]: two-member groups marked by their name,
//!   hidden from the group list, whose messages come up as ordinary 1:1 messages.
//! - **Healing.** Each group gets a self-update Commit every [`crate::PeerConfig::group_self_update`]
//!   ([`HealSchedule`]); the time of the last one is kept in the MLS database.
//! - **Receipts and typing** in groups live in [`notices`]: one read receipt per group naming
//!   the newest message read, typing that ends by itself, both rate-bounded per member.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use lattice_crypto::Fingerprint;
use lattice_mls::{
    GroupEvent, GroupId, MemberIdentity, MlsClient, MlsError, MlsStore, OutgoingCommit,
};
use lattice_protocol::limits::{
    KEY_PACKAGE_LOW_STOCK, MAX_KEY_PACKAGE_STOCK, MAX_KEY_PACKAGE_UPLOAD,
};
use lattice_protocol::{
    ClientFrame, ClientId, Delivered, DeviceId, ErrorType, GroupCommit,
    GroupMessage as GroupMessageFrame, KeyPackageFetch, KeyPackageUpload, MessageId, MlsEnvelope,
    MlsKind, ServerFrame,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

mod devices;
mod direct;
mod notices;

use direct::DirectBook;
pub(crate) use direct::DIRECT_GROUP_NAME;

use crate::content::Content;
use crate::events::{
    Change, ContentUpdate, Conversation, Dispatcher, GroupChange, GroupMessage, OwnMessage,
    PeerEvent,
};
use crate::history::{History, Reply};
use crate::link::{Lane, Link};
use crate::requests::Requests;
use crate::sanitize::Sanitized;
use crate::sync::lock;
use crate::trust::Trust;
use crate::wire::{new_message_id, now_ms, unexpected, B64};
use crate::{defaults, PeerError, RejectReason, WaitOptions};

/// One member of a group, as shown in a member list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMember {
    /// The member's id.
    pub client_id: ClientId,
    /// The fingerprint (safety number) of the identity key its MLS credential is bound to.
    pub fingerprint: Fingerprint,
}

/// A group this device is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    /// The group's id.
    pub id: GroupId,
    /// Its name (authenticated: part of the group context).
    pub name: String,
    /// Its members, this device included (one entry per id).
    pub members: Vec<GroupMember>,
    /// Its current epoch.
    pub epoch: u64,
}

/// The plaintext of a group application message (JSON inside the MLS message).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Plaintext {
    message_id: MessageId,
    kind: String,
    body: String,
    sent_at: u64,
}

/// When each group is due for its next self-update. Pure bookkeeping over [`Instant`]s, so the
/// schedule is tested on paused time.
#[derive(Debug)]
pub(crate) struct HealSchedule {
    interval: Duration,
    next: HashMap<GroupId, Instant>,
}

impl HealSchedule {
    pub(crate) fn new(interval: Duration) -> Self {
        Self {
            interval,
            next: HashMap::new(),
        }
    }

    /// `group` last rotated its keys `ago` before now.
    pub(crate) fn updated_ago(&mut self, group: GroupId, ago: Duration) {
        let now = Instant::now();
        let due = (now + self.interval).checked_sub(ago).unwrap_or(now);
        self.next.insert(group, due);
    }

    /// `group` is due again at `at` (after a failed attempt).
    pub(crate) fn retry_at(&mut self, group: GroupId, at: Instant) {
        self.next.insert(group, at);
    }

    pub(crate) fn forget(&mut self, group: &GroupId) {
        self.next.remove(group);
    }

    /// The earliest due time.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.next.values().min().copied()
    }

    /// The groups due at `now`.
    pub(crate) fn due(&self, now: Instant) -> Vec<GroupId> {
        let mut due: Vec<GroupId> = self
            .next
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(g, _)| g.clone())
            .collect();
        due.sort();
        due
    }
}

/// The group component. Shared (`Arc`) by the handle, the router, the connection and its tasks.
#[derive(Debug)]
pub(crate) struct Groups {
    client_id: ClientId,
    /// This device as its MLS credential names it (id, identity key, device id).
    me: MemberIdentity,
    /// The engine. std Mutex: each section is one synchronous engine call (SQLite), never held
    /// across an await.
    mls: Mutex<MlsClient>,
    trust: Arc<Trust>,
    requests: Arc<Requests>,
    link: Arc<Link>,
    dispatcher: Arc<Dispatcher>,
    /// What 1:1 messages over MLS are checked against (edits, deletes, receipts).
    history: Arc<History>,
    /// The 1:1 conversations and MLS-capable peers ([`direct`]). std Mutex: short lookups and
    /// updates, never held across an await.
    direct: Mutex<DirectBook>,
    /// One 1:1 conversation set-up at a time. tokio Mutex: held across the KeyPackage fetch and
    /// the Commit.
    direct_setup: tokio::sync::Mutex<()>,
    /// One MLS change at a time: an incoming message, or one Commit of ours from making it to
    /// confirming or discarding it. tokio Mutex: held across the wait for the server's verdict.
    op: tokio::sync::Mutex<()>,
    /// Woken whenever a group's epoch moves (a Commit processed), for a Commit that lost its
    /// epoch and waits for the winner.
    epoch_moved: Notify,
    /// One KeyPackage top-up at a time.
    replenishing: tokio::sync::Mutex<()>,
    /// Incoming `mls` messages, in the order the server delivered them.
    queue_tx: mpsc::Sender<Delivered>,
    /// Its receiving end, taken by the running worker and given back when it ends.
    queue_rx: Mutex<Option<mpsc::Receiver<Delivered>>>,
    /// Message ids of 1:1 MLS messages read and not yet confirmed to their senders, per peer
    /// ([`direct`]'s delivery receipts). std Mutex: short pushes and takes.
    delivered: Mutex<HashMap<ClientId, Vec<MessageId>>>,
    /// Our 1:1 MLS sends waiting for the server's answer, and whether the peer's delivery
    /// receipt for one already came ([`direct`]): its `delivered` then follows our `queued`
    /// instead of overtaking it. One entry per send in flight. std Mutex: short updates.
    sending: Mutex<HashMap<(ClientId, MessageId), bool>>,
    /// Peers with whom a lost 1:1 conversation was set up again, and when ([`direct`]), so an
    /// unreadable burst sets up one conversation, not one per message.
    restarted: Mutex<direct::RecentPeers>,
    heal: Mutex<HealSchedule>,
    /// Woken when the heal schedule (or the device schedule) changed.
    heal_changed: Notify,
    /// Retries of own devices without KeyPackages and the audit ([`devices`]). std Mutex:
    /// short updates.
    device_schedule: Mutex<devices::DeviceSchedule>,
    /// One device reconciliation pass at a time. tokio Mutex: held across its Commits.
    device_pass: tokio::sync::Mutex<()>,
    /// A pass is asked for and has not started yet (so triggers coalesce).
    device_pass_wanted: AtomicBool,
    /// Groups this device is leaving (its leave proposal sent, not committed yet): a device pass
    /// adds no device of ours to them. Mirrors [`LEAVING_TABLE`], so a restart in between
    /// keeps it. At most one entry per group we are in; std Mutex.
    leaving: Mutex<std::collections::HashSet<GroupId>>,
    /// Group read receipts and typing notices: rate windows, read marks, typing expiries
    /// ([`notices`]). std Mutex: short updates.
    notices: Mutex<notices::Notices>,
    /// Whether group read receipts are sent and others' raised (the app's read-receipt setting,
    /// [`Groups::set_read_receipts`]).
    read_receipts: AtomicBool,
    /// Ourselves, for the tasks we spawn (set once by [`Groups::into_arc`]).
    this: Mutex<Option<std::sync::Weak<Groups>>>,
}

/// The components [`Groups`] talks to: trust, requests, the link, events and the history.
pub(crate) type Components = (
    Arc<Trust>,
    Arc<Requests>,
    Arc<Link>,
    Arc<Dispatcher>,
    Arc<History>,
);

/// The table where the time of each group's last self-update is kept (in the MLS database).
const HEAL_TABLE: &str = "CREATE TABLE IF NOT EXISTS lattice_peer_group_heal (
    group_id BLOB PRIMARY KEY, last_update_ms INTEGER NOT NULL)";

/// A row here means this MLS client was created fresh and has not yet cleared the KeyPackages
/// the server may still hold for this id from an earlier MLS state (a restored backup without
/// it, a reinstall): their private keys are gone, so a Welcome made from one could never be
/// joined. Deleted once cleared ([`Groups::replenish`]).
const STOCK_RESET_TABLE: &str = "CREATE TABLE IF NOT EXISTS lattice_peer_stock_reset (
    only_row INTEGER PRIMARY KEY CHECK (only_row = 1))";

/// The groups this device is leaving ([`Groups::leave`]) until they are gone (in the MLS
/// database): one row per group we are in at most, pruned when the group is gone.
const LEAVING_TABLE: &str = "CREATE TABLE IF NOT EXISTS lattice_peer_leaving (
    group_id BLOB PRIMARY KEY)";

/// An engine error as a [`PeerError`]: a refused identity binding loudly, the rest typed by kind.
pub(crate) fn mls_error(e: MlsError, group: Option<&GroupId>) -> PeerError {
    match e {
        MlsError::IdentityBinding { client_id, reason } => PeerError::GroupIdentity {
            peer: client_id,
            reason: reason.to_owned(),
        },
        MlsError::UnknownGroup(g) => PeerError::UnknownGroup(g.to_string()),
        e => PeerError::Group {
            group: group.map(ToString::to_string),
            reason: e.to_string(),
        },
    }
}

fn wire_group(gid: &GroupId) -> Result<lattice_protocol::GroupId, PeerError> {
    lattice_protocol::GroupId::new(gid.to_string())
        .map_err(|e| PeerError::Protocol(format!("group id: {e}")))
}

/// The member ids and, when any leaf is a linked device, the (id, device) leaves a Commit's
/// `group_commit` names (sorted by id, as [`MlsClient::pending_commit_leaves`] gives them).
/// Without linked devices `leaves` is left out: the server then gives every member its primary
/// leaf, exactly as before devices existed.
fn wire_leaves(
    leaves: Vec<lattice_mls::MemberIdentity>,
) -> Result<(Vec<ClientId>, Option<Vec<lattice_protocol::Leaf>>), PeerError> {
    let mut members: Vec<ClientId> = leaves.iter().map(|l| l.client_id.clone()).collect();
    members.dedup();
    if leaves.iter().all(|l| l.device_id.is_none()) {
        return Ok((members, None));
    }
    let wire = leaves
        .into_iter()
        .map(|l| {
            let device_id = match l.device_id {
                Some(d) => lattice_protocol::DeviceId::new(d)
                    .map_err(|e| PeerError::Protocol(format!("a leaf's device id: {e}")))?,
                None => lattice_protocol::DeviceId::primary(),
            };
            Ok(lattice_protocol::Leaf {
                client_id: l.client_id,
                device_id,
            })
        })
        .collect::<Result<Vec<_>, PeerError>>()?;
    Ok((members, Some(wire)))
}

impl Groups {
    /// Opens (or creates) this device's MLS state at `path`.
    ///
    /// # Errors
    /// [`PeerError::Io`] if the file cannot be created; [`PeerError::Group`] if the store cannot
    /// be opened, or holds another id's client.
    pub(crate) fn open(
        path: &std::path::Path,
        credentials: &crate::config::Credentials,
        client_id: ClientId,
        self_update: Duration,
        components: Components,
    ) -> Result<Self, PeerError> {
        let (trust, requests, link, dispatcher, history) = components;
        // The file holds every group's secrets: owner-only from its creation (SQLite gives its
        // -wal and -shm files the same permissions).
        let mut options = std::fs::OpenOptions::new();
        options.create(true).append(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        drop(
            options
                .open(path)
                .map_err(|e| PeerError::Io(format!("{}: {e}", path.display())))?,
        );
        let store = MlsStore::open(path).map_err(|e| mls_error(e, None))?;
        let (mls, fresh) = match MlsClient::open(store) {
            Ok(m) => (m, false),
            Err(MlsError::NoClient(_)) => {
                let store = MlsStore::open(path).map_err(|e| mls_error(e, None))?;
                let m = match credentials {
                    crate::config::Credentials::Primary(identity) => {
                        MlsClient::create(store, identity.identity_key(), client_id.clone())
                    }
                    crate::config::Credentials::Device(d) => MlsClient::create_device(
                        store,
                        &d.identity_key,
                        client_id.clone(),
                        &lattice_mls::DeviceCredential {
                            device_id: d.device_id.as_str(),
                            device_key: &d.device_key,
                            certificate: &d.certificate,
                        },
                    ),
                }
                .map_err(|e| mls_error(e, None))?;
                (m, true)
            }
            Err(e) => return Err(mls_error(e, None)),
        };
        if mls.client_id() != &client_id {
            return Err(PeerError::Group {
                group: None,
                reason: format!(
                    "the MLS state at {} belongs to {}, not {client_id}",
                    path.display(),
                    mls.client_id()
                ),
            });
        }
        // The same id on another device (or the primary's state opened by a linked device, or
        // the reverse) is not ours either: its credential names another device or key.
        let own = mls.own_identity().map_err(|e| mls_error(e, None))?;
        let device = credentials
            .device()
            .map(|d| d.device_id.as_str().to_owned());
        if own.identity_key != credentials.identity_public_key() || own.device_id != device {
            return Err(PeerError::Group {
                group: None,
                reason: format!(
                    "the MLS state at {} belongs to another device of {client_id}",
                    path.display()
                ),
            });
        }
        let mut heal = HealSchedule::new(self_update);
        mls.connection()
            .execute(HEAL_TABLE, [])
            .map_err(|e| mls_error(e.into(), None))?;
        mls.connection()
            .execute(STOCK_RESET_TABLE, [])
            .map_err(|e| mls_error(e.into(), None))?;
        if fresh {
            mls.connection()
                .execute(
                    "INSERT OR IGNORE INTO lattice_peer_stock_reset (only_row) VALUES (1)",
                    [],
                )
                .map_err(|e| mls_error(e.into(), None))?;
        }
        let now = now_ms();
        for g in mls.groups() {
            let last: Option<i64> = mls
                .connection()
                .query_row(
                    "SELECT last_update_ms FROM lattice_peer_group_heal WHERE group_id = ?1",
                    [g.as_bytes()],
                    |r| r.get(0),
                )
                .ok();
            let ago = last.map_or(Duration::ZERO, |l| {
                Duration::from_millis(now.saturating_sub(u64::try_from(l).unwrap_or(0)))
            });
            heal.updated_ago(g, ago);
        }
        let direct = DirectBook::load(mls.connection(), &mls.groups())
            .map_err(|e| mls_error(e.into(), None))?;
        let leaving =
            load_leaving(mls.connection(), &mls.groups()).map_err(|e| mls_error(e.into(), None))?;
        let (queue_tx, queue_rx) = mpsc::channel(defaults::GROUP_RECEIVE_QUEUE);
        Ok(Self {
            client_id,
            me: own,
            mls: Mutex::new(mls),
            trust,
            requests,
            link,
            dispatcher,
            history,
            direct: Mutex::new(direct),
            direct_setup: tokio::sync::Mutex::new(()),
            op: tokio::sync::Mutex::new(()),
            epoch_moved: Notify::new(),
            replenishing: tokio::sync::Mutex::new(()),
            queue_tx,
            queue_rx: Mutex::new(Some(queue_rx)),
            delivered: Mutex::new(HashMap::new()),
            sending: Mutex::new(HashMap::new()),
            restarted: Mutex::new(direct::RecentPeers::default()),
            heal: Mutex::new(heal),
            heal_changed: Notify::new(),
            device_schedule: Mutex::new(devices::DeviceSchedule::new()),
            device_pass: tokio::sync::Mutex::new(()),
            device_pass_wanted: AtomicBool::new(false),
            leaving: Mutex::new(leaving),
            notices: Mutex::new(notices::Notices::default()),
            read_receipts: AtomicBool::new(true),
            this: Mutex::new(None),
        })
    }

    /// Shares the component, remembering itself for the tasks it spawns.
    pub(crate) fn into_arc(self) -> Arc<Self> {
        let me = Arc::new(self);
        *lock(&me.this) = Some(Arc::downgrade(&me));
        me
    }

    // ---- KeyPackages ---------------------------------------------------------------------

    /// Reads our KeyPackage stock at the server and tops it up to
    /// [`defaults::KEY_PACKAGE_STOCK_TARGET`] when it is under
    /// [`KEY_PACKAGE_LOW_STOCK`], with a last-resort KeyPackage when there is none. Returns the
    /// stock after.
    pub(crate) async fn replenish(&self) -> Result<u32, PeerError> {
        let _one = self.replenishing.lock().await;
        let reset = self.stock_reset_pending()?;
        if reset {
            self.clear_stale_stock().await?;
        }
        let answer = self
            .requests
            .request(
                Lane::Normal,
                ClientFrame::KeyPackageUpload(KeyPackageUpload::default()),
                "key_package_upload",
                WaitOptions::default(),
            )
            .await?;
        let ServerFrame::KeyPackagesStored(stock) = answer else {
            return Err(unexpected("key_package_upload", &answer));
        };
        let have = usize::try_from(stock.stock).unwrap_or(usize::MAX);
        let count = if have < KEY_PACKAGE_LOW_STOCK {
            defaults::KEY_PACKAGE_STOCK_TARGET
                .saturating_sub(have)
                .min(MAX_KEY_PACKAGE_UPLOAD)
        } else {
            0
        };
        if count == 0 && stock.last_resort && !reset {
            return Ok(stock.stock);
        }
        let upload = {
            let mut mls = lock(&self.mls);
            let key_packages = mls
                .key_packages(count)
                .map_err(|e| mls_error(e, None))?
                .iter()
                .map(|k| B64.encode(k))
                .collect();
            // After a reset the stored last resort is the lost state's: replaced.
            let last_resort = if stock.last_resort && !reset {
                None
            } else {
                Some(
                    B64.encode(
                        mls.last_resort_key_package()
                            .map_err(|e| mls_error(e, None))?,
                    ),
                )
            };
            KeyPackageUpload {
                key_packages,
                last_resort,
            }
        };
        let answer = self
            .requests
            .request(
                Lane::Normal,
                ClientFrame::KeyPackageUpload(upload),
                "key_package_upload",
                WaitOptions::default(),
            )
            .await?;
        let ServerFrame::KeyPackagesStored(after) = answer else {
            return Err(unexpected("key_package_upload", &answer));
        };
        tracing::info!(peer = %self.client_id, uploaded = count, stock = after.stock, "KeyPackages uploaded");
        if reset {
            lock(&self.mls)
                .connection()
                .execute("DELETE FROM lattice_peer_stock_reset", [])
                .map_err(|e| mls_error(e.into(), None))?;
        }
        Ok(after.stock)
    }

    fn stock_reset_pending(&self) -> Result<bool, PeerError> {
        let n: i64 = lock(&self.mls)
            .connection()
            .query_row("SELECT COUNT(*) FROM lattice_peer_stock_reset", [], |r| {
                r.get(0)
            })
            .map_err(|e| mls_error(e.into(), None))?;
        Ok(n > 0)
    }

    /// A fresh MLS client takes (and so deletes) every one-time KeyPackage the server still
    /// holds for its id: they belong to a lost MLS state. Bounded by the server's stock limit;
    /// stops at the last resort (the stock is empty) or `NO_KEY_PACKAGE`.
    async fn clear_stale_stock(&self) -> Result<(), PeerError> {
        let mut cleared = 0usize;
        for _ in 0..=MAX_KEY_PACKAGE_STOCK {
            let me = self.client_id.clone();
            let options = WaitOptions::default()
                .filter(move |f| matches!(f, ServerFrame::KeyPackage(k) if k.client_id == me));
            let answer = self
                .requests
                .request(
                    Lane::Normal,
                    ClientFrame::KeyPackageFetch(KeyPackageFetch {
                        client_id: self.client_id.clone(),
                        all_devices: false,
                    }),
                    "key_package_fetch",
                    options,
                )
                .await;
            match answer {
                Ok(ServerFrame::KeyPackage(k)) if !k.last_resort => cleared += 1,
                Ok(ServerFrame::KeyPackage(_)) => break,
                Ok(other) => return Err(unexpected("key_package_fetch", &other)),
                Err(e) if e.error_type() == Some(ErrorType::NoKeyPackage) => break,
                Err(e) => return Err(e),
            }
        }
        if cleared > 0 {
            tracing::warn!(peer = %self.client_id, cleared, "KeyPackages of a lost MLS state cleared from the server");
        }
        Ok(())
    }

    /// Runs [`Groups::replenish`] in the background, reporting a failure as an event.
    pub(crate) fn replenish_later(self: &Arc<Self>) {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            if let Err(e) = me.replenish().await {
                tracing::warn!(peer = %me.client_id, error = %Sanitized(&e), "KeyPackage upload failed");
                me.dispatcher.emit(PeerEvent::Error(e));
            }
        });
    }

    /// Fetches one KeyPackage of **every device** of `member` (`key_package_fetch` with
    /// `allDevices`; at most [`lattice_protocol::limits::MAX_DEVICES_PER_ID`]) and validates
    /// each against the identity key pinned for it (pinning it first, TOFU with the
    /// `keySignature` check, when none is) and, for a linked device, against the id's signed
    /// device list (fetched again once for a device linked since). Each must be the device the
    /// server says it is. A device without KeyPackages is not in the answer (it is added once it
    /// has some, by a device of its id).
    async fn fetch_key_packages(
        &self,
        member: &ClientId,
    ) -> Result<Vec<lattice_mls::ValidatedKeyPackage>, PeerError> {
        if self.trust.key_store().pinned(member)?.is_none() {
            self.trust.fetch_key(member).await?;
        }
        let m = member.clone();
        let options = WaitOptions::default()
            .filter(move |f| matches!(f, ServerFrame::KeyPackage(k) if k.client_id == m));
        let answer = self
            .requests
            .request(
                Lane::Normal,
                ClientFrame::KeyPackageFetch(KeyPackageFetch {
                    client_id: member.clone(),
                    all_devices: true,
                }),
                "key_package_fetch",
                options,
            )
            .await?;
        let ServerFrame::KeyPackage(found) = answer else {
            return Err(unexpected("key_package_fetch", &answer));
        };
        let entries: Vec<(lattice_protocol::DeviceId, String)> = match found.devices {
            Some(devices) if !devices.is_empty() => devices
                .into_iter()
                .map(|d| (d.device_id, d.key_package))
                .collect(),
            _ => vec![(lattice_protocol::DeviceId::primary(), found.key_package)],
        };
        if entries.len() > lattice_protocol::limits::MAX_DEVICES_PER_ID {
            return Err(PeerError::Protocol(format!(
                "{} KeyPackages for the devices of {member}, more than an id may have",
                entries.len()
            )));
        }
        let mut out = Vec::with_capacity(entries.len());
        for (device, kp) in entries {
            let bytes = B64
                .decode(&kp)
                .map_err(|_| PeerError::Protocol("KeyPackage is not base64".into()))?;
            let validated = self
                .with_pins(|mls, pins| mls.validate_key_package(&bytes, pins))
                .await?
                .map_err(|e| mls_error(e, None))?;
            let who = validated.identity();
            let claimed = (!device.is_primary()).then(|| device.as_str());
            if &who.client_id != member || who.device_id.as_deref() != claimed {
                return Err(PeerError::GroupIdentity {
                    peer: member.to_string(),
                    reason: format!(
                        "the KeyPackage fetched for its device {device} belongs to {} ({})",
                        who.client_id,
                        who.device_id.as_deref().unwrap_or("primary")
                    ),
                });
            }
            out.push(validated);
        }
        Ok(out)
    }

    /// The pins the engine checks members against: the key store's, and the device lists
    /// [`Trust`] verified under them.
    fn pins(&self) -> TrustPins<'_> {
        TrustPins {
            trust: &self.trust,
            me: &self.me,
        }
    }

    /// Runs an engine call that checks members against the pins; while it is refused only
    /// because some member's id has no pinned key yet, fetches that key (TOFU) and tries again.
    /// A linked device not on its id's list as we know it fetches the id's key once too (the
    /// answer carries the newest signed list: a device linked since); refused again, it stays
    /// refused.
    async fn with_pins<T>(
        &self,
        mut f: impl FnMut(&mut MlsClient, &dyn lattice_mls::IdentityPins) -> Result<T, MlsError>,
    ) -> Result<Result<T, MlsError>, PeerError> {
        // Ids whose device list was fetched for a leaf it did not name: once each, so a device
        // still missing from the newest signed list stays refused.
        let mut lists_fetched: Vec<ClientId> = Vec::new();
        for _ in 0..defaults::GROUP_PIN_FETCHES {
            let r = {
                let pins = self.pins();
                let mut mls = lock(&self.mls);
                f(&mut mls, &pins)
            };
            let err = r.as_ref().err();
            let unpinned = err.and_then(MlsError::unpinned_id);
            let unlisted = err.and_then(MlsError::unlisted_id);
            let Some(raw) = unpinned.or(unlisted) else {
                return Ok(r);
            };
            let id = ClientId::new(raw).map_err(|_| PeerError::GroupIdentity {
                peer: raw.to_owned(),
                reason: "invalid client id in a credential".into(),
            })?;
            if unpinned.is_some() {
                self.trust.fetch_key(&id).await?;
            } else if lists_fetched.contains(&id) {
                return Ok(r);
            } else {
                let own = (id == self.me.client_id).then_some(&self.me.identity_key);
                self.trust.refresh_devices(&id, own).await?;
                lists_fetched.push(id);
            }
        }
        Err(PeerError::Group {
            group: None,
            reason: "too many members without a pinned key".into(),
        })
    }

    // ---- Commits -------------------------------------------------------------------------

    /// Makes a Commit with `make` and sends it; on `STALE_EPOCH` discards it, waits for the
    /// winner to be processed and makes it again (at most [`defaults::COMMIT_ATTEMPTS`] times).
    /// `make` returns the Commit and the member ids after it.
    async fn commit(
        &self,
        gid: &GroupId,
        mut make: impl FnMut(&mut MlsClient) -> Result<OutgoingCommit, MlsError>,
    ) -> Result<(), PeerError> {
        self.commit_if(gid, |mls| make(mls).map(Some))
            .await
            .map(|_| ())
    }

    /// [`Groups::commit`] for an intent that may have become moot: `make` returns `None` when
    /// there is nothing to commit in the group as it is now (after a lost epoch, the winner may
    /// have done it). Returns whether a Commit was accepted.
    async fn commit_if(
        &self,
        gid: &GroupId,
        mut make: impl FnMut(&mut MlsClient) -> Result<Option<OutgoingCommit>, MlsError>,
    ) -> Result<bool, PeerError> {
        for attempt in 1..=defaults::COMMIT_ATTEMPTS {
            let guard = self.op.lock().await;
            let (out, members, leaves) = {
                let mut mls = lock(&self.mls);
                let Some(out) = make(&mut mls).map_err(|e| mls_error(e, Some(gid)))? else {
                    return Ok(false);
                };
                // What the staged Commit really does (queued proposals included), for the
                // server's fan-out list.
                match mls
                    .pending_commit_leaves(gid)
                    .map_err(|e| mls_error(e, Some(gid)))
                    .and_then(wire_leaves)
                {
                    Ok((m, l)) => (out, m, l),
                    Err(e) => {
                        drop(mls);
                        self.discard(gid);
                        return Err(e);
                    }
                }
            };
            let frame = GroupCommit {
                group_id: wire_group(gid)?,
                epoch: out.epoch,
                commit: B64.encode(&out.commit),
                welcome: out.welcome.as_ref().map(|w| B64.encode(w)),
                members,
                message_id: new_message_id(),
                leaves,
            };
            let answer = self.send_commit(frame).await;
            match answer {
                Ok(ServerFrame::GroupCommitAccepted(_)) => {
                    let events = lock(&self.mls)
                        .confirm_commit(gid)
                        .map_err(|e| mls_error(e, Some(gid)))?;
                    tracing::info!(peer = %self.client_id, group = %gid, epoch = out.epoch + 1, "commit accepted");
                    self.epoch_moved.notify_waiters();
                    self.emit_changes(gid, Some(&self.client_id.clone()), events);
                    return Ok(true);
                }
                Ok(other) => {
                    self.discard(gid);
                    return Err(unexpected("group_commit", &other));
                }
                Err(e) if e.error_type() == Some(ErrorType::StaleEpoch) => {
                    self.discard(gid);
                    drop(guard);
                    tracing::info!(peer = %self.client_id, group = %gid, epoch = out.epoch, attempt, "commit lost its epoch; processing the winner");
                    self.wait_epoch_after(gid, out.epoch).await?;
                }
                Err(e) => {
                    self.discard(gid);
                    return Err(e);
                }
            }
        }
        Err(PeerError::CommitConflict {
            group: gid.to_string(),
            attempts: defaults::COMMIT_ATTEMPTS,
        })
    }

    /// Sends a Commit until the server rules on it. Every resend is the same frame (same
    /// `messageId`), which the server answers as accepted again if the Commit won: so a lost
    /// answer (a dropped connection, a timeout) is resent rather than given up, as long as the
    /// error may pass, up to [`defaults::COMMIT_SENDS`] times [`defaults::COMMIT_SEND_RETRIES`]
    /// + 1 attempts, [`defaults::COMMIT_RESEND_DELAY`] apart.
    async fn send_commit(&self, frame: GroupCommit) -> Result<ServerFrame, PeerError> {
        let mut sends = 0;
        loop {
            sends += 1;
            let answer = self
                .requests
                .request(
                    Lane::Normal,
                    ClientFrame::GroupCommit(frame.clone()),
                    "group_commit",
                    WaitOptions::default().retries(defaults::COMMIT_SEND_RETRIES),
                )
                .await;
            match answer {
                Err(e) if e.is_transient() && sends < defaults::COMMIT_SENDS => {
                    tracing::info!(peer = %self.client_id, error = %Sanitized(&e), sends, "commit not answered yet; resending it");
                    tokio::time::sleep(defaults::COMMIT_RESEND_DELAY).await;
                }
                other => return other,
            }
        }
    }

    fn discard(&self, gid: &GroupId) {
        if let Err(e) = lock(&self.mls).discard_commit(gid) {
            tracing::warn!(peer = %self.client_id, group = %gid, error = %e, "discarding a commit failed");
        }
    }

    /// Waits until `gid` is past `epoch` (the winning Commit was processed) or gone.
    async fn wait_epoch_after(&self, gid: &GroupId, epoch: u64) -> Result<(), PeerError> {
        let deadline = Instant::now() + defaults::COMMIT_CATCH_UP;
        loop {
            let moved = self.epoch_moved.notified();
            tokio::pin!(moved);
            moved.as_mut().enable();
            match lock(&self.mls).epoch(gid) {
                Ok(e) if e > epoch => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(mls_error(e, Some(gid))),
            }
            if tokio::time::timeout_at(deadline, moved).await.is_err() {
                return Err(PeerError::Group {
                    group: Some(gid.to_string()),
                    reason: format!(
                        "the Commit that won epoch {epoch} did not arrive within {:?}",
                        defaults::COMMIT_CATCH_UP
                    ),
                });
            }
        }
    }

    // ---- The API -------------------------------------------------------------------------

    /// Creates a group named `name` with `members` (each from a fetched, validated KeyPackage).
    pub(crate) async fn create(
        &self,
        name: &str,
        members: &[ClientId],
    ) -> Result<GroupId, PeerError> {
        if name == DIRECT_GROUP_NAME {
            return Err(PeerError::InvalidArgument(format!(
                "{DIRECT_GROUP_NAME:?} is reserved for 1:1 conversations"
            )));
        }
        let members = self.others(members)?;
        let mut kps = Vec::with_capacity(members.len());
        for m in &members {
            kps.extend(self.fetch_key_packages(m).await?);
        }
        let gid = {
            let _g = self.op.lock().await;
            lock(&self.mls)
                .create_group(name)
                .map_err(|e| mls_error(e, None))?
        };
        self.commit(&gid, |mls| mls.add_members(&gid, &kps)).await?;
        self.schedule_heal(&gid, Duration::ZERO);
        // Our other devices join it too.
        if let Some(me) = self.self_arc() {
            me.sync_devices_later();
        }
        Ok(gid)
    }

    /// `members` without us, without duplicates, and not empty.
    fn others(&self, members: &[ClientId]) -> Result<Vec<ClientId>, PeerError> {
        let mut out: Vec<ClientId> = members
            .iter()
            .filter(|m| **m != self.client_id)
            .cloned()
            .collect();
        out.sort();
        out.dedup();
        if out.is_empty() {
            return Err(PeerError::InvalidArgument(
                "name at least one member other than yourself".into(),
            ));
        }
        if out.len() >= lattice_protocol::limits::MAX_GROUP_MEMBERS {
            return Err(PeerError::InvalidArgument(format!(
                "a group has at most {} members",
                lattice_protocol::limits::MAX_GROUP_MEMBERS
            )));
        }
        Ok(out)
    }

    /// Refuses a membership or name change of a 1:1 conversation.
    fn not_direct(&self, gid: &GroupId) -> Result<(), PeerError> {
        match self.direct_peer(gid) {
            Some(peer) => Err(PeerError::InvalidArgument(format!(
                "this is the 1:1 conversation with {peer}; make a group instead"
            ))),
            None => Ok(()),
        }
    }

    pub(crate) async fn invite(
        &self,
        gid: &GroupId,
        members: &[ClientId],
    ) -> Result<(), PeerError> {
        self.not_direct(gid)?;
        let members = self.others(members)?;
        let mut kps = Vec::with_capacity(members.len());
        for m in &members {
            kps.extend(self.fetch_key_packages(m).await?);
        }
        self.commit(gid, |mls| mls.add_members(gid, &kps)).await
    }

    pub(crate) async fn remove(
        &self,
        gid: &GroupId,
        members: &[ClientId],
    ) -> Result<(), PeerError> {
        self.not_direct(gid)?;
        let members = self.others(members)?;
        self.commit(gid, |mls| mls.remove_members(gid, &members))
            .await
    }

    pub(crate) async fn rename(&self, gid: &GroupId, name: &str) -> Result<(), PeerError> {
        self.not_direct(gid)?;
        if name == DIRECT_GROUP_NAME {
            return Err(PeerError::InvalidArgument(format!(
                "{DIRECT_GROUP_NAME:?} is reserved for 1:1 conversations"
            )));
        }
        self.commit(gid, |mls| mls.rename(gid, name)).await
    }

    pub(crate) async fn self_update(&self, gid: &GroupId) -> Result<(), PeerError> {
        self.commit(gid, |mls| mls.self_update(gid)).await?;
        self.schedule_heal(gid, Duration::ZERO);
        Ok(())
    }

    /// A self-update in every group and 1:1 conversation of this device, one after the other
    /// (after a suspected compromise of the device: a copy of its state taken before reads
    /// nothing sent after). Returns how many rotated. A group that could not rotate now is due
    /// again after [`defaults::SELF_UPDATE_RETRY`]; the first error is returned after all were
    /// tried.
    pub(crate) async fn heal_all(&self) -> Result<usize, PeerError> {
        let all = lock(&self.mls).groups();
        let mut healed = 0;
        let mut first_error = None;
        for gid in &all {
            match self.self_update(gid).await {
                Ok(()) => healed += 1,
                Err(e) => {
                    tracing::warn!(peer = %self.client_id, group = %gid, error = %Sanitized(&e), "self-update after a suspected compromise failed; retried later");
                    lock(&self.heal)
                        .retry_at(gid.clone(), Instant::now() + defaults::SELF_UPDATE_RETRY);
                    self.heal_changed.notify_one();
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            None => Ok(healed),
            Some(e) => Err(PeerError::Group {
                group: None,
                reason: format!(
                    "{healed} of {} groups rotated their keys; the others are retried in {:?}: {e}",
                    all.len(),
                    defaults::SELF_UPDATE_RETRY
                ),
            }),
        }
    }

    /// Asks to leave: a Remove proposal of ourselves, which another member commits.
    pub(crate) async fn leave(&self, gid: &GroupId) -> Result<(), PeerError> {
        // Leaving is for the whole id: first our other devices' leaves are committed away (a
        // device pass of theirs would otherwise add this one back), then this device asks to
        // leave. Until the group is gone, no pass of ours adds a device to it.
        self.set_leaving(gid, true)?;
        let left = async {
            self.remove_own_other_devices(gid).await?;
            self.send_leave(gid).await
        }
        .await;
        if left.is_err() {
            // Best effort: a mark left behind only keeps passes out of a group we are in,
            // until it is gone or left again.
            let _ = self.set_leaving(gid, false);
        }
        left
    }

    /// Marks `gid` as being left (or not), in memory and in the MLS database.
    fn set_leaving(&self, gid: &GroupId, on: bool) -> Result<(), PeerError> {
        let mls = lock(&self.mls);
        let sql = if on {
            "INSERT OR IGNORE INTO lattice_peer_leaving (group_id) VALUES (?1)"
        } else {
            "DELETE FROM lattice_peer_leaving WHERE group_id = ?1"
        };
        mls.connection()
            .execute(sql, [gid.as_bytes()])
            .map_err(|e| mls_error(e.into(), Some(gid)))?;
        let mut leaving = lock(&self.leaving);
        if on {
            leaving.insert(gid.clone());
        } else {
            leaving.remove(gid);
        }
        Ok(())
    }

    /// The groups of `all` this device is leaving; marks of groups that are gone are dropped.
    fn still_leaving(&self, all: &[GroupId]) -> std::collections::HashSet<GroupId> {
        let gone: Vec<GroupId> = lock(&self.leaving)
            .iter()
            .filter(|g| !all.contains(g))
            .cloned()
            .collect();
        for g in &gone {
            if let Err(e) = self.set_leaving(g, false) {
                tracing::warn!(peer = %self.client_id, group = %g, error = %Sanitized(&e), "leaving mark not cleared");
            }
        }
        lock(&self.leaving).clone()
    }

    async fn send_leave(&self, gid: &GroupId) -> Result<(), PeerError> {
        let proposal = {
            let _g = self.op.lock().await;
            lock(&self.mls)
                .leave(gid)
                .map_err(|e| mls_error(e, Some(gid)))?
        };
        self.send_group_frame(gid, proposal, new_message_id())
            .await
            .map(|_| ())
    }

    /// Sends `content` to the group: a text, a reply, or an edit, a delete or a reaction of a
    /// message of the group. Returns its message id.
    pub(crate) async fn send(
        &self,
        gid: &GroupId,
        content: &Content,
    ) -> Result<MessageId, PeerError> {
        if !is_group_content(content)
            || matches!(content, Content::File(_) | Content::FileDigest { .. })
        {
            return Err(PeerError::InvalidArgument(format!(
                "groups carry texts, replies, edits, deletes and reactions; {} is not supported in groups yet",
                content.kind()
            )));
        }
        self.send_with_id(gid, content, new_message_id()).await
    }

    /// Sends `content` to `gid` with the id `message_id`: the file component's offer and
    /// digest ([`Content::File`], [`Content::FileDigest`]), whose ids are fixed when the
    /// transfer starts so that a resend after a crash is the same message.
    pub(crate) async fn send_with_id(
        &self,
        gid: &GroupId,
        content: &Content,
        message_id: MessageId,
    ) -> Result<MessageId, PeerError> {
        let (kind, body) = content.encode()?;
        let (id, sent_at) = self.seal_and_send(gid, kind, body, message_id).await?;
        // Others may now refer to it (a reply, a reaction), and we to it (an edit).
        self.history.sent_in_group(gid, &id, content, sent_at);
        Ok(id)
    }

    /// Seals one application message of `kind` in `gid` and sends it, waiting for the server's
    /// answer. Returns its id and the `sentAt` it was signed with.
    async fn seal_and_send(
        &self,
        gid: &GroupId,
        kind: &str,
        body: String,
        message_id: MessageId,
    ) -> Result<(MessageId, u64), PeerError> {
        let sent_at = now_ms();
        let plaintext = serde_json::to_vec(&Plaintext {
            message_id: message_id.clone(),
            kind: kind.to_owned(),
            body,
            sent_at,
        })
        .map_err(|e| PeerError::Protocol(e.to_string()))?;
        let sealed = {
            let _g = self.op.lock().await;
            lock(&self.mls)
                .encrypt(gid, &plaintext)
                .map_err(|e| mls_error(e, Some(gid)))?
        };
        let id = self.send_group_frame(gid, sealed, message_id).await?;
        Ok((id, sent_at))
    }

    async fn send_group_frame(
        &self,
        gid: &GroupId,
        message: Vec<u8>,
        message_id: MessageId,
    ) -> Result<MessageId, PeerError> {
        let frame = GroupMessageFrame {
            group_id: wire_group(gid)?,
            message: B64.encode(message),
            message_id: Some(message_id.clone()),
        };
        let answer = self
            .requests
            .request(
                Lane::Normal,
                ClientFrame::GroupMessage(frame),
                "group_message",
                WaitOptions::default(),
            )
            .await?;
        match answer {
            ServerFrame::GroupMessageAccepted(_) => Ok(message_id),
            other => Err(unexpected("group_message", &other)),
        }
    }

    /// The groups this device is in, 1:1 conversations left out.
    pub(crate) fn groups(&self) -> Vec<GroupId> {
        let all = lock(&self.mls).groups();
        all.into_iter()
            .filter(|g| self.direct_peer(g).is_none())
            .collect()
    }

    pub(crate) fn info(&self, gid: &GroupId) -> Result<GroupInfo, PeerError> {
        let mls = lock(&self.mls);
        let err = |e| mls_error(e, Some(gid));
        let mut members: Vec<GroupMember> = mls
            .members(gid)
            .map_err(err)?
            .into_iter()
            .map(|m| GroupMember {
                client_id: m.identity.client_id,
                fingerprint: m.identity.identity_key.fingerprint(),
            })
            .collect();
        members.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        members.dedup_by(|a, b| a.client_id == b.client_id);
        Ok(GroupInfo {
            id: gid.clone(),
            name: mls.group_name(gid).map_err(err)?,
            epoch: mls.epoch(gid).map_err(err)?,
            members,
        })
    }

    // ---- Incoming ------------------------------------------------------------------------

    /// Queues an incoming `mls` message for the worker. A full queue drops it unacknowledged
    /// (the server delivers it again after a reconnect) and reports it.
    pub(crate) fn deliver(&self, d: Delivered) {
        if let Err(e) = self.queue_tx.try_send(d) {
            let from = match e {
                mpsc::error::TrySendError::Full(d) | mpsc::error::TrySendError::Closed(d) => {
                    d.from_id
                }
            };
            tracing::warn!(peer = %self.client_id, from = %from, "group receive queue full, message dropped unacknowledged");
            self.dispatcher
                .emit(PeerEvent::Error(PeerError::ReceiveQueueFull { from }));
        }
    }

    /// Processes queued `mls` messages one at a time, in order, until cancelled; also runs the
    /// healing schedule.
    pub(crate) async fn worker(self: Arc<Self>, cancel: CancellationToken) {
        let Some(mut rx) = lock(&self.queue_rx).take() else {
            return;
        };
        // Receipts deferred before a reconnect.
        if rx.is_empty() {
            self.flush_reads();
        }
        loop {
            let next_heal = lock(&self.heal).next_due();
            let next_device = self.device_due();
            let next_typing = lock(&self.notices).next_typing_expiry();
            tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                d = rx.recv() => match d {
                    Some(d) => {
                        self.process(d).await;
                        // Delivery receipts go once a burst is read (one per peer, not one
                        // per message), or when one is full.
                        self.flush_delivered(!rx.is_empty());
                        if rx.is_empty() {
                            self.flush_reads();
                        }
                    }
                    None => break,
                },
                () = self.heal_changed.notified() => {}
                () = sleep_until_some(next_heal) => self.heal_due(),
                () = self.trust.devices_changed().notified() => self.devices_changed(),
                () = tokio::time::sleep_until(next_device) => self.device_timer(),
                () = sleep_until_some(next_typing) => self.typing_expired(),
            }
        }
        *lock(&self.queue_rx) = Some(rx);
    }

    /// Starts the self-updates that are due, each on its own task (a Commit that loses its
    /// epoch waits for this worker to process the winner). Each is marked for a retry first, so
    /// it is not started twice; a success reschedules it a full interval later.
    fn heal_due(self: &Arc<Self>) {
        let now = Instant::now();
        let due = lock(&self.heal).due(now);
        for gid in due {
            lock(&self.heal).retry_at(gid.clone(), now + defaults::SELF_UPDATE_RETRY);
            let me = Arc::clone(self);
            tokio::spawn(async move {
                match me.self_update(&gid).await {
                    Ok(()) => {
                        tracing::info!(peer = %me.client_id, group = %gid, "scheduled self-update done")
                    }
                    Err(PeerError::UnknownGroup(_)) => lock(&me.heal).forget(&gid),
                    Err(e)
                        if e.error_type() == Some(ErrorType::NotAMember)
                            && me.direct_peer(&gid).is_some() =>
                    {
                        // The server no longer has this 1:1 conversation: the next message sets
                        // up a new one.
                        me.retire_direct(&gid);
                    }
                    Err(e) => {
                        tracing::warn!(peer = %me.client_id, group = %gid, error = %Sanitized(&e), "scheduled self-update failed; retried later");
                    }
                }
            });
        }
    }

    /// Records that `gid` rotated its keys `ago` before now (persisted for restarts).
    fn schedule_heal(&self, gid: &GroupId, ago: Duration) {
        let at = now_ms().saturating_sub(u64::try_from(ago.as_millis()).unwrap_or(u64::MAX));
        let r = lock(&self.mls).connection().execute(
            "INSERT INTO lattice_peer_group_heal (group_id, last_update_ms) VALUES (?1, ?2)
             ON CONFLICT(group_id) DO UPDATE SET last_update_ms = excluded.last_update_ms",
            rusqlite::params![gid.as_bytes(), i64::try_from(at).unwrap_or(i64::MAX)],
        );
        if let Err(e) = r {
            tracing::warn!(peer = %self.client_id, group = %gid, error = %e, "heal time not stored");
        }
        lock(&self.heal).updated_ago(gid.clone(), ago);
        self.heal_changed.notify_one();
    }

    async fn process(&self, d: Delivered) {
        let from = d.from_id.clone();
        let Some(message_id) = d.message_id.clone() else {
            self.refuse(None, &from, "a group message without a message id");
            return;
        };
        let ack = {
            let _g = self.op.lock().await;
            self.open_message(&d, &message_id).await
        };
        // Not acknowledged (our store failed): the server delivers it again.
        if ack {
            self.link.ack(&from, &message_id);
        }
    }

    fn refuse(&self, group: Option<&GroupId>, from: &ClientId, reason: &str) {
        tracing::warn!(peer = %self.client_id, from = %from, group = ?group.map(ToString::to_string), reason, "group message refused");
        self.dispatcher
            .emit(PeerEvent::Error(PeerError::GroupRejected {
                group: group.map(ToString::to_string),
                from: from.clone(),
                reason: reason.to_owned(),
            }));
    }

    /// Opens one delivered `mls` message and raises its events. Returns whether to acknowledge
    /// it (everything but a failure of our own store, which may pass).
    async fn open_message(&self, d: &Delivered, message_id: &MessageId) -> bool {
        let from = &d.from_id;
        let delivery = (from.as_str(), message_id.as_str());
        let Ok(env) = serde_json::from_str::<MlsEnvelope>(d.message.get()) else {
            self.refuse(None, from, "malformed mls envelope");
            return true;
        };
        let Ok(data) = B64.decode(&env.data) else {
            self.refuse(None, from, "mls data is not base64");
            return true;
        };
        // The group the MLS message itself names (not the envelope's claim); a Welcome names
        // none until it is joined.
        let gid = match env.kind {
            MlsKind::Welcome => GroupId::from_bytes(&[]),
            _ => match MlsClient::message_group(&data) {
                Ok(g) => g,
                Err(e) => {
                    self.refuse(None, from, &e.to_string());
                    return true;
                }
            },
        };
        let outcome = match env.kind {
            MlsKind::Welcome => {
                self.with_pins(|mls, pins| {
                    mls.join_once(delivery.0, delivery.1, &data, pins)
                        .map(|(g, ev)| (g, vec![ev]))
                })
                .await
            }
            MlsKind::Commit | MlsKind::Message => {
                self.with_pins(|mls, pins| {
                    mls.process_once(delivery.0, delivery.1, &data, pins)
                        .map(|ev| (gid.clone(), ev))
                })
                .await
            }
        };
        let result = match outcome {
            Ok(r) => r,
            Err(e) => {
                // A key fetch for a member failed (the server is slow, or the key changed).
                self.refuse(Some(&gid), from, &format!("a member's key: {e}"));
                return !e.is_transient();
            }
        };
        match result {
            Ok((g, events)) => {
                if env.kind != MlsKind::Message
                    || events
                        .iter()
                        .any(|e| matches!(e, GroupEvent::EpochChanged { .. } | GroupEvent::Removed))
                {
                    self.epoch_moved.notify_waiters();
                }
                if env.kind == MlsKind::Welcome {
                    self.schedule_heal(&g, Duration::ZERO);
                    // A group joined without some of our devices gets them.
                    if let Some(me) = self.self_arc() {
                        me.sync_devices_later();
                    }
                }
                self.handle_events(&g, from, d.message_id.as_ref(), d.timestamp, events);
                true
            }
            Err(MlsError::Duplicate { .. }) => {
                // Delivery is at least once (a crash between processing and `ack`), and the
                // engine remembers what it processed, durably: acknowledged again, nothing more.
                tracing::debug!(peer = %self.client_id, from = %from, message_id = %message_id, "duplicate group message dropped");
                true
            }
            Err(MlsError::StaleEpoch { got, current }) => {
                // A replayed handshake message (or one this device already processed before a
                // restart): ignored.
                tracing::debug!(peer = %self.client_id, group = %gid, got, current, "stale handshake message ignored");
                true
            }
            Err(MlsError::UnknownGroup(_)) if env.kind != MlsKind::Welcome => {
                tracing::debug!(peer = %self.client_id, group = %gid, "message for a group we are not in");
                self.lost_conversation(from, message_id);
                true
            }
            Err(MlsError::Store(e)) => {
                tracing::error!(peer = %self.client_id, group = %gid, error = %e, "MLS store failed; message kept at the server");
                self.dispatcher
                    .emit(PeerEvent::Error(mls_error(MlsError::Store(e), Some(&gid))));
                false
            }
            Err(MlsError::IdentityBinding { client_id, reason }) => {
                tracing::warn!(peer = %self.client_id, group = %gid, member = %client_id, reason, "member's identity binding refused");
                self.dispatcher
                    .emit(PeerEvent::Error(PeerError::GroupIdentity {
                        peer: client_id,
                        reason: reason.to_owned(),
                    }));
                true
            }
            Err(e) => {
                self.refuse(Some(&gid), from, &e.to_string());
                true
            }
        }
    }

    fn handle_events(
        &self,
        gid: &GroupId,
        from: &ClientId,
        message_id: Option<&MessageId>,
        timestamp: u64,
        events: Vec<GroupEvent>,
    ) {
        let direct_peer = self.track_direct(gid, from, &events);
        let mut app = Vec::new();
        let mut changes = Vec::new();
        for e in events {
            match e {
                GroupEvent::Application { sender, bytes } => app.push((sender, bytes)),
                other => changes.push(other),
            }
        }
        for (sender, bytes) in app {
            if let Some(peer) = &direct_peer {
                if sender.client_id != *from {
                    self.refuse(Some(gid), from, "sent by one member but signed by another");
                } else {
                    self.read_direct(peer, &sender, message_id, timestamp, &bytes);
                }
                continue;
            }
            match self.read_application(gid, from, message_id, timestamp, &sender, &bytes) {
                // Another device of this id wrote it: ours, shown as outgoing.
                Ok(Some(PeerEvent::GroupMessage(m))) if m.from == self.client_id => {
                    self.dispatcher.emit(PeerEvent::OwnMessage(OwnMessage {
                        conversation: Conversation::Group(m.group),
                        device: sender.device_id,
                        message_id: m.message_id,
                        content: m.content,
                        sent_at: m.sent_at,
                    }));
                }
                Ok(Some(event)) => self.dispatcher.emit(event),
                Ok(None) => {}
                Err(reason) => self.refuse(Some(gid), from, &reason),
            }
        }
        let leavers: Vec<ClientId> = changes
            .iter()
            .filter_map(|c| match c {
                GroupEvent::LeaveRequested { member } => Some(member.client_id.clone()),
                _ => None,
            })
            .collect();
        self.emit_changes(gid, Some(from), changes);
        if !leavers.is_empty() {
            self.commit_leave_later(gid.clone(), leavers);
        }
    }

    /// Reads one application message of `gid` from its member `sender` (as MLS authenticated
    /// it) and checks it against the group's history: the event to raise, `None` for a replay
    /// (an edit or a delete already applied: ignored), or why it is refused. The author of a
    /// message, an edit or a reaction is always `sender`; nothing in the plaintext names it.
    fn read_application(
        &self,
        gid: &GroupId,
        from: &ClientId,
        message_id: Option<&MessageId>,
        timestamp: u64,
        member: &MemberIdentity,
        bytes: &[u8],
    ) -> Result<Option<PeerEvent>, String> {
        let sender = &member.client_id;
        if sender != from {
            return Err(format!("sent by {from} but signed by member {sender}"));
        }
        let p: Plaintext =
            serde_json::from_slice(bytes).map_err(|_| "malformed group plaintext".to_owned())?;
        if Some(&p.message_id) != message_id {
            return Err("message id differs from the one inside".into());
        }
        if p.kind == notices::READ_KIND {
            return self.read_receipt(gid, member, &p.body);
        }
        let mut content = Content::decode(&p.kind, &p.body).map_err(|e| e.to_string())?;
        if let Content::Typing { started } = content {
            return Ok(self.typing_notice(gid, sender, started, p.sent_at));
        }
        if !is_group_content(&content) {
            return Err(format!("{} is not supported in groups", content.kind()));
        }
        // The MLS message is consumed (its key deleted): a check that may pass later cannot be
        // retried, so every refusal here is final.
        let (record, reply) = match self.history.check_group(
            gid,
            sender,
            &p.message_id,
            p.sent_at,
            &content,
        ) {
            Ok(r) => r,
            Err(RejectReason::Replay) => {
                tracing::debug!(peer = %self.client_id, group = %gid, from = %sender, message_id = %p.message_id, "replayed group edit or delete ignored");
                return Ok(None);
            }
            Err(reason) => return Err(reason.to_string()),
        };
        self.history.commit(record);
        if reply == Reply::Unknown {
            // A quote of a message that is not this group's (or one from before we joined):
            // the answer is kept, the quote is not shown.
            if let Content::Reply { text, .. } = content {
                content = Content::Text(text);
            }
        }
        let update = |change| PeerEvent::GroupUpdate {
            group: gid.clone(),
            update: ContentUpdate {
                from: sender.clone(),
                message_id: p.message_id.clone(),
                sent_at: p.sent_at,
                server_timestamp: timestamp,
                change,
            },
        };
        Ok(Some(match content {
            Content::Edit { target, text } => update(Change::Edited { target, text }),
            Content::Delete { target } => update(Change::Deleted { target }),
            Content::Reaction {
                target,
                emoji,
                action,
            } => update(Change::Reaction {
                target,
                emoji,
                action,
            }),
            // Texts, replies, files and file digests (the file component reads a group file's
            // digest as a group message). A member shown typing stopped: its message is here.
            content => {
                self.typing_ended_by_message(gid, sender);
                PeerEvent::GroupMessage(GroupMessage {
                    group: gid.clone(),
                    from: sender.clone(),
                    message_id: p.message_id,
                    content,
                    sent_at: p.sent_at,
                })
            }
        }))
    }

    fn emit_changes(&self, gid: &GroupId, by: Option<&ClientId>, events: Vec<GroupEvent>) {
        if self.direct_peer(gid).is_some() {
            // A 1:1 conversation's epochs and key rotations are not the app's concern.
            return;
        }
        for e in events {
            let change = match e {
                // One entry per id: the devices of an id are one member to the user.
                GroupEvent::Joined { name, members } => GroupChange::Joined {
                    name,
                    members: ids_of(members),
                },
                GroupEvent::MembersAdded { members } => {
                    // A new device of a member already in the group is its own line ("alice's
                    // laptop joined"); an id joining with several devices is one member.
                    let (devices, primaries): (Vec<_>, Vec<_>) =
                        members.into_iter().partition(|m| m.device_id.is_some());
                    let ids = ids_of(primaries);
                    let mut joined_ids = ids.clone();
                    for d in devices {
                        if ids.contains(&d.client_id) {
                            continue;
                        }
                        if self.has_other_leaf(gid, &d) {
                            self.emit_device(gid, by, d, true);
                        } else if !joined_ids.contains(&d.client_id) {
                            joined_ids.push(d.client_id);
                        }
                    }
                    if joined_ids.is_empty() {
                        continue;
                    }
                    GroupChange::MembersAdded(joined_ids)
                }
                GroupEvent::MemberRemoved { member } if member.device_id.is_some() => {
                    self.emit_device(gid, by, member, false);
                    continue;
                }
                GroupEvent::MemberRemoved { member } => {
                    GroupChange::MemberRemoved(member.client_id)
                }
                GroupEvent::LeaveRequested { member } => {
                    GroupChange::LeaveRequested(member.client_id)
                }
                GroupEvent::MemberUpdated { member } => {
                    GroupChange::MemberUpdated(member.client_id)
                }
                GroupEvent::Renamed { name } => GroupChange::Renamed(name),
                GroupEvent::EpochChanged { epoch } => GroupChange::EpochChanged(epoch),
                GroupEvent::Removed => {
                    lock(&self.heal).forget(gid);
                    lock(&self.notices).forget(gid);
                    if let Err(e) = self.set_leaving(gid, false) {
                        tracing::warn!(peer = %self.client_id, group = %gid, error = %Sanitized(&e), "leaving mark not cleared");
                    }
                    GroupChange::Removed
                }
                _ => continue,
            };
            self.dispatcher.emit(PeerEvent::GroupChanged {
                group: gid.clone(),
                by: by.cloned(),
                change,
            });
        }
    }

    /// A device of a member joined or left a group (a 1:1 conversation's devices included).
    /// Whether `who`'s id has another leaf in `gid` (so `who` is a further device of a member).
    fn has_other_leaf(&self, gid: &GroupId, who: &MemberIdentity) -> bool {
        lock(&self.mls).members(gid).is_ok_and(|ms| {
            ms.iter().any(|m| {
                m.identity.client_id == who.client_id && m.identity.device_id != who.device_id
            })
        })
    }

    fn emit_device(&self, gid: &GroupId, by: Option<&ClientId>, who: MemberIdentity, joined: bool) {
        let Some(device) = who.device_id.and_then(|d| DeviceId::new(d).ok()) else {
            return;
        };
        tracing::info!(peer = %self.client_id, group = %gid, member = %who.client_id, device = %device, joined, "a member's device joined or left");
        let member = who.client_id;
        let change = if joined {
            GroupChange::DeviceAdded { member, device }
        } else {
            GroupChange::DeviceRemoved { member, device }
        };
        self.dispatcher.emit(PeerEvent::GroupChanged {
            group: gid.clone(),
            by: by.cloned(),
            change,
        });
    }

    /// A member asked to leave: the remaining member with the lowest leaf index commits it
    /// (one committer, so members do not race for it).
    fn commit_leave_later(&self, gid: GroupId, leavers: Vec<ClientId>) {
        let committer = {
            let mls = lock(&self.mls);
            mls.members(&gid).ok().and_then(|ms| {
                ms.into_iter()
                    .filter(|m| !leavers.contains(&m.identity.client_id))
                    .min_by_key(|m| m.leaf_index)
                    .map(|m| m.identity.client_id)
            })
        };
        if committer.as_ref() != Some(&self.client_id) {
            return;
        }
        let Some(me) = self.self_arc() else { return };
        tokio::spawn(async move {
            let r = me
                .commit(&gid, |mls| mls.commit_pending_proposals(&gid))
                .await;
            if let Err(e) = r {
                tracing::warn!(peer = %me.client_id, group = %gid, error = %Sanitized(&e), "committing a leave failed");
                me.dispatcher.emit(PeerEvent::Error(e));
            }
        });
    }

    fn self_arc(&self) -> Option<Arc<Self>> {
        lock(&self.this).as_ref().and_then(std::sync::Weak::upgrade)
    }
}

/// The groups marked as being left ([`LEAVING_TABLE`], created here): those of `live`; the
/// marks of groups that are gone are deleted.
fn load_leaving(
    conn: &rusqlite::Connection,
    live: &[GroupId],
) -> Result<std::collections::HashSet<GroupId>, rusqlite::Error> {
    conn.execute(LEAVING_TABLE, [])?;
    let marked: Vec<GroupId> = conn
        .prepare("SELECT group_id FROM lattice_peer_leaving")?
        .query_map([], |r| r.get::<_, Vec<u8>>(0))?
        .map(|g| g.map(|g| GroupId::from_bytes(&g)))
        .collect::<Result<_, _>>()?;
    let mut out = std::collections::HashSet::new();
    for g in marked {
        if live.contains(&g) {
            out.insert(g);
        } else {
            conn.execute(
                "DELETE FROM lattice_peer_leaving WHERE group_id = ?1",
                [g.as_bytes()],
            )?;
        }
    }
    Ok(out)
}

/// The distinct ids of `members`, in their first order.
fn ids_of(members: Vec<lattice_mls::MemberIdentity>) -> Vec<ClientId> {
    let mut out: Vec<ClientId> = Vec::with_capacity(members.len());
    for m in members {
        if !out.contains(&m.client_id) {
            out.push(m.client_id);
        }
    }
    out
}

/// [`lattice_mls::IdentityPins`] over [`Trust`]: pinned identity keys, and device lists checked
/// under them (a linked device's leaf is refused unless its id's signed list names it).
/// Our own id is answered with our own identity key (from our credential), never a key the
/// server presents.
struct TrustPins<'a> {
    trust: &'a Trust,
    me: &'a MemberIdentity,
}

impl lattice_mls::IdentityPins for TrustPins<'_> {
    fn pinned_identity(&self, client_id: &ClientId) -> Option<lattice_crypto::IdentityPublicKey> {
        if client_id == &self.me.client_id {
            return Some(self.me.identity_key);
        }
        self.trust.key_store().pinned(client_id).ok().flatten()
    }

    fn device_listed(
        &self,
        client_id: &ClientId,
        device_id: &str,
        device_key: &lattice_crypto::IdentityPublicKey,
    ) -> bool {
        self.trust.device_listed(client_id, device_id, device_key)
    }
}

/// Whether groups carry `content` as messages of their history: texts, replies, files and their
/// digests, and edits, deletes and reactions of a group's messages. Read receipts and typing
/// notices have their own path ([`notices`]).
fn is_group_content(content: &Content) -> bool {
    matches!(
        content,
        Content::Text(_)
            | Content::Reply { .. }
            | Content::Edit { .. }
            | Content::Delete { .. }
            | Content::Reaction { .. }
            | Content::File(_)
            | Content::FileDigest { .. }
    )
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::keys::KeyStore as _;
    use crate::testkit::{id, identity, Kit};

    #[test]
    fn leaves_are_named_only_once_a_linked_device_is_among_them() {
        let key = identity().identity_public_key();
        let leaf = |c: &str, d: Option<&str>| lattice_mls::MemberIdentity {
            client_id: id(c),
            identity_key: key,
            device_id: d.map(str::to_owned),
        };
        let (members, leaves) = wire_leaves(vec![leaf("alice", None), leaf("bob", None)]).unwrap();
        assert_eq!(members, [id("alice"), id("bob")]);
        assert!(
            leaves.is_none(),
            "primaries only: as before devices existed"
        );
        let (members, leaves) = wire_leaves(vec![
            leaf("alice", None),
            leaf("alice", Some("laptop")),
            leaf("bob", None),
        ])
        .unwrap();
        assert_eq!(members, [id("alice"), id("bob")], "one entry per id");
        let named: Vec<(String, String)> = leaves
            .unwrap()
            .into_iter()
            .map(|l| (l.client_id.to_string(), l.device_id.to_string()))
            .collect();
        assert_eq!(
            named,
            [
                ("alice".into(), "primary".into()),
                ("alice".into(), "laptop".into()),
                ("bob".into(), "primary".into())
            ]
        );
    }

    /// A delivered `mls` envelope from alice.
    fn delivered(kind: MlsKind, g: &GroupId, data: &[u8], mid: &str) -> Delivered {
        let env = MlsEnvelope {
            algorithm: lattice_protocol::MLS_ALGORITHM.into(),
            kind,
            group_id: wire_group(g).unwrap(),
            epoch: None,
            data: B64.encode(data),
        };
        Delivered {
            message: serde_json::value::to_raw_value(&env).unwrap(),
            from_id: id("alice"),
            timestamp: 1,
            message_id: Some(MessageId::new(mid).unwrap()),
        }
    }

    fn acked(kit: &mut Kit) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(f) = kit.try_sent() {
            if let ClientFrame::Ack(a) = f.body {
                out.push(a.message_id.to_string());
            }
        }
        out
    }

    fn changes(kit: &Kit) -> Vec<String> {
        std::mem::take(&mut *lock(&kit.events))
            .into_iter()
            .map(|e| match e {
                PeerEvent::GroupChanged { change, .. } => format!("{change:?}"),
                PeerEvent::Error(e) => format!("error: {e}"),
                other => format!("{other:?}"),
            })
            .collect()
    }

    /// bob's `Groups` fed by hand with what alice's engine (in the test) makes: a Commit
    /// delivered again under another message id (what a replaying server can do) changes
    /// nothing and is acknowledged; a Commit whose predecessor was dropped is reported.
    /// bob's `Groups` (self-updates every `interval`) in a group "g" that alice's engine (in
    /// the test) made and added him to: his Welcome delivered and acknowledged.
    async fn bob_in_alices_group(
        kit: &mut Kit,
        dir: &std::path::Path,
        interval: Duration,
    ) -> (Arc<Groups>, MlsClient, lattice_mls::GroupId) {
        let alice_identity = identity();
        kit.store
            .pin(&id("alice"), &alice_identity.identity_public_key())
            .unwrap();
        kit.store
            .pin(&id("bob"), &kit.identity.identity_public_key())
            .unwrap();
        let bob = Groups::open(
            &dir.join("bob.mls"),
            &crate::config::Credentials::Primary(Arc::clone(&kit.identity)),
            id("bob"),
            interval,
            (
                Arc::clone(&kit.trust),
                Arc::clone(&kit.requests),
                Arc::clone(&kit.link),
                Arc::clone(&kit.dispatcher),
                Arc::new(crate::history::History::new(
                    id("bob"),
                    Arc::new(crate::history::NoHistory),
                )),
            ),
        )
        .unwrap()
        .into_arc();
        let mut alice = MlsClient::create(
            MlsStore::open(dir.join("alice.mls")).unwrap(),
            alice_identity.identity_key(),
            id("alice"),
        )
        .unwrap();
        let (a_pin, b_pin) = (
            alice_identity.identity_public_key(),
            kit.identity.identity_public_key(),
        );
        let pins = move |c: &ClientId| match c.as_str() {
            "alice" => Some(a_pin),
            "bob" => Some(b_pin),
            _ => None,
        };
        let kp = lock(&bob.mls).key_packages(1).unwrap().remove(0);
        let kp = alice.validate_key_package(&kp, &pins).unwrap();
        let g = alice.create_group("g").unwrap();
        let add = alice.add_members(&g, &[kp]).unwrap();
        alice.confirm_commit(&g).unwrap();
        bob.process(delivered(MlsKind::Welcome, &g, &add.welcome.unwrap(), "w"))
            .await;
        assert_eq!(acked(kit), ["w"]);
        (bob, alice, g)
    }

    #[tokio::test]
    async fn a_replayed_commit_is_ignored_and_a_missing_one_is_reported() {
        let mut kit = Kit::new("bob");
        let dir = tempfile::tempdir().unwrap();
        let (bob, mut alice, g) =
            bob_in_alices_group(&mut kit, dir.path(), defaults::SELF_UPDATE_INTERVAL).await;
        let c1 = alice.rename(&g, "one").unwrap();
        alice.confirm_commit(&g).unwrap();
        bob.process(delivered(MlsKind::Commit, &g, &c1.commit, "c1"))
            .await;
        assert_eq!(acked(&mut kit), ["c1"]);
        let seen = changes(&kit);
        assert!(
            seen.iter().any(|c| c.contains("Renamed(\"one\")")),
            "{seen:?}"
        );
        assert_eq!(lock(&bob.mls).epoch(&g).unwrap(), 2);

        // The same Commit again, under a new message id: ignored, acknowledged, nothing moves.
        bob.process(delivered(MlsKind::Commit, &g, &c1.commit, "c1-again"))
            .await;
        assert_eq!(acked(&mut kit), ["c1-again"]);
        assert!(changes(&kit).is_empty());
        assert_eq!(lock(&bob.mls).epoch(&g).unwrap(), 2);

        // A Commit whose predecessor never came: refused loudly, the group stays where it was.
        alice.rename(&g, "two").unwrap();
        alice.confirm_commit(&g).unwrap();
        let c3 = alice.rename(&g, "three").unwrap();
        alice.confirm_commit(&g).unwrap();
        bob.process(delivered(MlsKind::Commit, &g, &c3.commit, "c3"))
            .await;
        assert_eq!(acked(&mut kit), ["c3"]);
        let seen = changes(&kit);
        assert!(
            matches!(seen.as_slice(), [e] if e.contains("error") && e.contains("Commit is missing")),
            "{seen:?}"
        );
        assert_eq!(lock(&bob.mls).group_name(&g).unwrap(), "one");
    }

    /// The worker runs the heal schedule on tokio time: bob's group (joined from alice's
    /// Welcome) gets no self-update before its interval has passed, and gets one (a
    /// `group_commit` for it) once it has. Paused time: a week passes in no time.
    #[tokio::test(start_paused = true)]
    async fn the_worker_sends_a_self_update_when_the_interval_has_passed_and_not_before() {
        let day = Duration::from_secs(24 * 3600);
        let mut kit = Kit::new("bob");
        let dir = tempfile::tempdir().unwrap();
        let (bob, _alice, g) = bob_in_alices_group(&mut kit, dir.path(), 7 * day).await;

        let cancel = CancellationToken::new();
        let worker = tokio::spawn(Arc::clone(&bob).worker(cancel.clone()));
        let commits = |kit: &mut Kit| {
            let mut out = Vec::new();
            while let Some(f) = kit.try_sent() {
                if let ClientFrame::GroupCommit(c) = f.body {
                    out.push(c.group_id.to_string());
                }
            }
            out
        };
        tokio::time::sleep(7 * day - Duration::from_secs(60)).await;
        assert!(commits(&mut kit).is_empty(), "rotated too early");
        tokio::time::sleep(Duration::from_secs(120)).await;
        let sent = commits(&mut kit);
        assert!(sent.contains(&g.to_string()), "{sent:?}");
        cancel.cancel();
        worker.await.unwrap();
    }

    fn g(b: u8) -> GroupId {
        GroupId::from_bytes(&[b; 16])
    }

    #[tokio::test(start_paused = true)]
    async fn a_group_is_due_for_healing_once_its_interval_has_passed() {
        let day = Duration::from_secs(24 * 3600);
        let mut s = HealSchedule::new(7 * day);
        assert_eq!(s.next_due(), None);
        s.updated_ago(g(1), Duration::ZERO);
        // Rotated 6 days before a restart: due one day after it.
        s.updated_ago(g(2), 6 * day);
        tokio::time::advance(day - Duration::from_secs(1)).await;
        assert!(s.due(Instant::now()).is_empty());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(s.due(Instant::now()), vec![g(2)]);
        s.updated_ago(g(2), Duration::ZERO);
        tokio::time::advance(6 * day).await;
        assert_eq!(s.due(Instant::now()), vec![g(1)]);
        s.retry_at(g(1), Instant::now() + Duration::from_secs(600));
        assert!(s.due(Instant::now()).is_empty());
        tokio::time::advance(Duration::from_secs(600)).await;
        assert_eq!(s.due(Instant::now()), vec![g(1)]);
        s.forget(&g(1));
        // Long overdue (a device off for a month) is due at once, not in the past forever.
        s.updated_ago(g(3), 30 * day);
        assert_eq!(s.due(Instant::now()), vec![g(3)]);
    }
}
