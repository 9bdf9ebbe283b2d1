//! Who is online where. The [`Hub`] maps each registered (id, device) to the session that holds it
//! and routes frames to that session's bounded outbound queue; it also fans presence out. An id is
//! online while any of its devices is (docs/protocol.md, "Devices").
//!
//! [`LocalHub`] keeps everything in this process. A Redis hub for several nodes implements the same
//! trait: it keeps a local map for its own sessions and forwards misses over Redis pub/sub (see
//! `docs/scaling.md`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use axum::extract::ws::Utf8Bytes;
use lattice_protocol::{ClientId, DeviceId};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::inflight::{AnswerLane, InFlight};

/// The close reason (with `close_code::DEVICE_REMOVED`) of a device a new device list left out,
/// on whichever node holds it.
pub const DEVICE_REMOVED_REASON: &str = "device removed from the id's device list";

/// An item on a session's outbound queue.
///
/// The frames are boxed so that an item is two words: tokio's channel allocates its first block
/// of 32 slots when the queue is created, so every idle connection pays 32 items up front
/// (1.3 KiB with the 40-byte unboxed item, 0.5 KiB boxed; see docs/scaling.md).
#[derive(Debug)]
pub enum Out {
    /// A frame to write as is.
    Frame(Box<Utf8Bytes>),
    /// A `message` frame for this peer (for a verified peer, held in this connection's in-flight
    /// table, or its mailbox row owned by this connection, until the peer acknowledges it).
    Deliver(Box<Utf8Bytes>),
    /// Mail waits in this peer's mailbox: drain it.
    CheckMail,
    /// Send a WebSocket ping (the heartbeat).
    Ping,
}

// An unboxed frame would make every queue's first block 2.5 times larger.
const _: () = assert!(std::mem::size_of::<Out>() <= 2 * std::mem::size_of::<usize>());

/// The part of a session other tasks may touch.
#[derive(Debug)]
pub struct SessionShared {
    /// Unique per connection.
    pub conn_id: u64,
    /// The bounded outbound queue.
    pub tx: mpsc::Sender<Out>,
    /// Milliseconds since server start when the peer last sent anything (frames or pongs).
    pub last_seen: AtomicU64,
    /// Cancelled to close the connection; `close_reason` says why.
    pub kill: CancellationToken,
    /// Close code and reason set by whoever cancelled `kill` first.
    pub close_reason: OnceLock<(u16, &'static str)>,
    /// Set when mail for this peer was left in the mailbox while it was online.
    pub mail_waiting: AtomicBool,
    /// Set once the connection registered an id.
    pub registered: AtomicBool,
    /// Milliseconds since server start when the connection opened.
    pub opened_ms: u64,
    /// The presence lane: notices waiting to be written, coalesced to the latest per peer. Presence
    /// never goes through the outbound queue, so no number of notices can take the place of a
    /// message there; a storm of registrations costs each subscriber at most one entry per peer.
    pub presence_backlog: Mutex<HashMap<ClientId, Utf8Bytes>>,
    /// Wakes the session when the presence lane has something.
    pub presence_ready: Notify,
    /// Messages sent live to this (verified) peer and not acknowledged yet: their senders wait
    /// for its `ack` ([`crate::inflight`]).
    pub in_flight: InFlight,
    /// The answer lane: `message_ack`s and errors for messages this connection sent that another
    /// session answers (after the recipient's `ack`, or after a spill to the mailbox).
    pub answers: Arc<AnswerLane>,
}

impl SessionShared {
    /// A new connection's shared part: `tx` is its outbound queue, `kill` its cancellation token
    /// (a child of the server's shutdown), `now_ms` the server uptime when it opened.
    pub fn new(conn_id: u64, tx: mpsc::Sender<Out>, kill: CancellationToken, now_ms: u64) -> Self {
        Self {
            conn_id,
            tx,
            last_seen: AtomicU64::new(now_ms),
            kill,
            close_reason: OnceLock::new(),
            mail_waiting: AtomicBool::new(false),
            registered: AtomicBool::new(false),
            opened_ms: now_ms,
            presence_backlog: Mutex::default(),
            presence_ready: Notify::new(),
            in_flight: InFlight::default(),
            answers: Arc::default(),
        }
    }

    /// Asks the session to close with `code` and `reason`.
    pub fn close(&self, code: u16, reason: &'static str) {
        let _ = self.close_reason.set((code, reason));
        self.kill.cancel();
    }

    /// Puts a presence notice about `peer` on the presence lane, replacing an unwritten older one.
    pub fn send_presence(&self, peer: &ClientId, frame: &Utf8Bytes) {
        // std Mutex: a map insert; never held across an await.
        self.presence_backlog
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(peer.clone(), frame.clone());
        self.presence_ready.notify_one();
    }

    /// Takes the coalesced presence notices.
    pub fn take_presence_backlog(&self) -> Vec<Utf8Bytes> {
        let mut backlog = self
            .presence_backlog
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if backlog.is_empty() {
            return Vec::new();
        }
        backlog.drain().map(|(_, f)| f).collect()
    }

    /// Tells the session its mailbox has something.
    pub fn notify_mail(&self) {
        self.mail_waiting.store(true, Ordering::Release);
        // Best effort: if the queue is full the session is busy writing and checks the flag after.
        let _ = self.tx.try_send(Out::CheckMail);
    }
}

/// A registered peer.
#[derive(Debug)]
pub struct PeerEntry {
    /// Its id.
    pub id: ClientId,
    /// Its device ([`DeviceId::primary`] for a `register` without a device part).
    pub device: DeviceId,
    /// Its connection.
    pub session: Arc<SessionShared>,
    /// Whether it proved an identity key.
    pub verified: bool,
    /// ML-KEM public key.
    pub public_key: Arc<[u8]>,
    /// Ed25519 identity key, for verified peers.
    pub identity_key: Option<[u8; 32]>,
    /// Signature of the identity key over `public_key`, for verified peers.
    pub key_signature: Option<Arc<[u8]>>,
    /// Whether it asked for presence (sent `discover`).
    pub subscribed: AtomicBool,
    /// Whether it registered as a link relay (`linkRelay`): never listed in `discover`, presence
    /// or `request_public_key`.
    pub link_relay: bool,
}

impl PeerEntry {
    /// The mailbox this connection drains and acknowledges.
    pub fn mailbox_key(&self) -> crate::store::MailboxKey {
        crate::store::MailboxKey::new(&self.id, &self.device)
    }
}

/// What a successful claim changed.
#[derive(Debug)]
pub struct Claimed {
    /// The entry of the same (id, device) it replaced, for the caller to close.
    pub replaced: Option<Arc<PeerEntry>>,
    /// Whether the id was offline before (no device of it was online): presence changes.
    pub first: bool,
}

/// Why a claim failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimError {
    /// Another connection holds the id and may not be replaced.
    Taken,
}

/// Routing and presence. All methods are synchronous and short: they run on the hot path.
pub trait Hub: Send + Sync + std::fmt::Debug {
    /// Makes `entry` the holder of its (id, device). An existing holder of the id on another
    /// connection is replaced only when `replace(existing)` says so (it is asked about the holder
    /// of the same device, or, for a device the id does not have online yet, about any holder of
    /// the id: an unverified holder is never joined by a device); the replaced entry is returned
    /// so the caller can close it. Check and insert are one atomic step: two racing claims never
    /// both win.
    ///
    /// # Errors
    /// [`ClaimError::Taken`] when another connection holds the id and may not be replaced.
    fn claim(
        &self,
        entry: Arc<PeerEntry>,
        replace: &dyn Fn(&PeerEntry) -> bool,
    ) -> Result<Claimed, ClaimError>;
    /// Removes `id`'s device held by `conn_id`, if that connection still holds it. `Some(last)`
    /// if it did, `last` true when no device of the id is online any more.
    fn release(&self, id: &ClientId, conn_id: u64) -> Option<bool>;
    /// A holder of `id`: its primary device if online, else any of its devices.
    fn get(&self, id: &ClientId) -> Option<Arc<PeerEntry>>;
    /// The holder of `id`'s `device`.
    fn device(&self, id: &ClientId, device: &DeviceId) -> Option<Arc<PeerEntry>>;
    /// Every online device of `id`.
    fn devices(&self, id: &ClientId) -> Vec<Arc<PeerEntry>>;
    /// Every online id, sorted.
    fn online(&self) -> Vec<ClientId>;
    /// Up to `limit` online ids after `after` (all if `None`), sorted; true if more follow.
    fn online_page(&self, after: Option<&ClientId>, limit: usize) -> (Vec<ClientId>, bool);
    /// Sends `frame`, a presence notice about `about`, to every subscribed peer but `about`
    /// itself. Never blocks: a full queue coalesces it (see [`SessionShared::send_presence`]).
    fn broadcast_presence(&self, frame: &Utf8Bytes, about: &ClientId);
    /// Number of registered (online) ids.
    fn len(&self) -> usize;
    /// True when nobody is registered.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The in-process hub.
#[derive(Debug, Default)]
pub struct LocalHub {
    // std RwLock: lookups (every routed message) vastly outnumber claims and releases, and no
    // section awaits. Each id's devices: at most `MAX_DEVICES_PER_ID` entries (one per device,
    // and only devices on the id's signed list register), so a scan is cheap.
    peers: RwLock<HashMap<ClientId, Vec<Arc<PeerEntry>>>>,
}

type PeerMap = HashMap<ClientId, Vec<Arc<PeerEntry>>>;

impl LocalHub {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, PeerMap> {
        self.peers
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, PeerMap> {
        self.peers
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Hub for LocalHub {
    fn claim(
        &self,
        entry: Arc<PeerEntry>,
        replace: &dyn Fn(&PeerEntry) -> bool,
    ) -> Result<Claimed, ClaimError> {
        let mut peers = self.write();
        let devices = peers.entry(entry.id.clone()).or_default();
        let first = devices.is_empty();
        let same = devices.iter().position(|e| e.device == entry.device);
        let replaced = match same {
            Some(i) => {
                let existing = &devices[i];
                if existing.session.conn_id != entry.session.conn_id && !replace(existing) {
                    return Err(ClaimError::Taken);
                }
                Some(std::mem::replace(&mut devices[i], entry))
            }
            None => {
                // Another device joins only an identity the same check would let replace: an
                // unverified holder (or another identity) keeps the id to itself.
                if let Some(other) = devices.first() {
                    if !replace(other) {
                        return Err(ClaimError::Taken);
                    }
                }
                devices.push(entry);
                None
            }
        };
        Ok(Claimed { replaced, first })
    }

    fn release(&self, id: &ClientId, conn_id: u64) -> Option<bool> {
        let mut peers = self.write();
        let devices = peers.get_mut(id)?;
        let i = devices.iter().position(|e| e.session.conn_id == conn_id)?;
        devices.swap_remove(i);
        let last = devices.is_empty();
        if last {
            peers.remove(id);
        }
        Some(last)
    }

    fn get(&self, id: &ClientId) -> Option<Arc<PeerEntry>> {
        let peers = self.read();
        let devices = peers.get(id)?;
        devices
            .iter()
            .find(|e| e.device.is_primary())
            .or_else(|| devices.first())
            .cloned()
    }

    fn device(&self, id: &ClientId, device: &DeviceId) -> Option<Arc<PeerEntry>> {
        self.read()
            .get(id)?
            .iter()
            .find(|e| &e.device == device)
            .cloned()
    }

    fn devices(&self, id: &ClientId) -> Vec<Arc<PeerEntry>> {
        self.read().get(id).cloned().unwrap_or_default()
    }

    fn online(&self) -> Vec<ClientId> {
        let mut ids: Vec<ClientId> = self.read().keys().cloned().collect();
        ids.sort();
        ids
    }

    fn online_page(&self, after: Option<&ClientId>, limit: usize) -> (Vec<ClientId>, bool) {
        let mut ids: Vec<ClientId> = self
            .read()
            .iter()
            // A link relay is never listed (it is its id's only holder: nothing joins it).
            .filter(|(id, devices)| {
                after.is_none_or(|a| *id > a) && !devices.iter().all(|e| e.link_relay)
            })
            .map(|(id, _)| id.clone())
            .collect();
        let more = ids.len() > limit;
        if more {
            // Only the first `limit` need sorting among themselves.
            ids.select_nth_unstable(limit);
            ids.truncate(limit);
        }
        ids.sort();
        (ids, more)
    }

    fn broadcast_presence(&self, frame: &Utf8Bytes, about: &ClientId) {
        // Collect first so no queue operation happens under the lock.
        let targets: Vec<Arc<PeerEntry>> = self
            .read()
            .values()
            .flatten()
            .filter(|e| e.subscribed.load(Ordering::Acquire) && &e.id != about)
            .cloned()
            .collect();
        for t in targets {
            t.session.send_presence(about, frame);
        }
    }

    fn len(&self) -> usize {
        self.read().len()
    }
}

/// Every open connection, registered or not: for pings, idle checks and shutdown.
#[derive(Debug, Default)]
pub struct Sessions {
    // std Mutex: insert/remove once per connection, iteration by the sweeper; no awaits.
    map: Mutex<HashMap<u64, Arc<SessionShared>>>,
}

impl Sessions {
    /// Adds a session.
    pub fn insert(&self, s: Arc<SessionShared>) {
        self.lock().insert(s.conn_id, s);
    }
    /// Removes a session.
    pub fn remove(&self, conn_id: u64) {
        self.lock().remove(&conn_id);
    }
    /// A snapshot of all sessions.
    pub fn all(&self) -> Vec<Arc<SessionShared>> {
        self.lock().values().cloned().collect()
    }
    /// Open connections.
    pub fn len(&self) -> usize {
        self.lock().len()
    }
    /// True when no connection is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<SessionShared>>> {
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(queue: usize) -> (Arc<SessionShared>, mpsc::Receiver<Out>) {
        let (tx, rx) = mpsc::channel(queue);
        let s = SessionShared {
            conn_id: 1,
            tx,
            last_seen: AtomicU64::new(0),
            kill: CancellationToken::new(),
            close_reason: OnceLock::new(),
            mail_waiting: AtomicBool::new(false),
            registered: AtomicBool::new(true),
            opened_ms: 0,
            presence_backlog: Mutex::default(),
            presence_ready: Notify::new(),
            in_flight: InFlight::default(),
            answers: Arc::default(),
        };
        (Arc::new(s), rx)
    }

    fn entry(conn: u64, id: &str, device: &str, identity: Option<[u8; 32]>) -> Arc<PeerEntry> {
        let (tx, _rx) = mpsc::channel(1);
        Arc::new(PeerEntry {
            id: ClientId::new(id).unwrap(),
            device: DeviceId::new(device).unwrap(),
            session: Arc::new(SessionShared::new(conn, tx, CancellationToken::new(), 0)),
            verified: identity.is_some(),
            public_key: Arc::from(Vec::new()),
            identity_key: identity,
            key_signature: None,
            subscribed: AtomicBool::new(false),
            link_relay: false,
        })
    }

    #[test]
    fn devices_of_one_id_are_held_side_by_side_and_replaced_one_by_one() {
        let hub = LocalHub::default();
        let same = |id: Option<[u8; 32]>| move |e: &PeerEntry| e.identity_key == id;
        let ik = Some([7; 32]);
        let alice = ClientId::new("alice").unwrap();
        let c = hub
            .claim(entry(1, "alice", "primary", ik), &same(ik))
            .unwrap();
        assert!(c.first && c.replaced.is_none());
        let c = hub
            .claim(entry(2, "alice", "phone", ik), &same(ik))
            .unwrap();
        assert!(!c.first && c.replaced.is_none(), "a second device joins");
        // the same device again replaces only itself
        let c = hub
            .claim(entry(3, "alice", "phone", ik), &same(ik))
            .unwrap();
        assert_eq!(c.replaced.map(|e| e.session.conn_id), Some(2));
        assert_eq!(hub.devices(&alice).len(), 2);
        assert_eq!(hub.len(), 1, "one online id");
        // another identity joins as no device
        let other = Some([8; 32]);
        assert!(hub
            .claim(entry(4, "alice", "tablet", other), &same(other))
            .is_err());
        // the primary is preferred; the id stays online until its last device leaves
        assert_eq!(hub.get(&alice).unwrap().session.conn_id, 1);
        assert_eq!(hub.release(&alice, 2), None, "replaced: no longer held");
        assert_eq!(hub.release(&alice, 1), Some(false));
        assert_eq!(hub.get(&alice).unwrap().session.conn_id, 3);
        assert_eq!(hub.release(&alice, 3), Some(true));
        assert!(hub.get(&alice).is_none() && hub.is_empty());
    }

    #[test]
    fn presence_never_takes_a_queue_slot_and_keeps_the_latest_per_peer() {
        let (s, mut rx) = session(1);
        let bob = ClientId::new("bob").unwrap();
        let carol = ClientId::new("carol").unwrap();
        for i in 0..1000 {
            s.send_presence(&bob, &Utf8Bytes::from(format!("bob-{i}")));
        }
        s.send_presence(&carol, &Utf8Bytes::from_static("carol-up"));
        // the queue's only slot is still free for a message
        assert!(
            rx.try_recv().is_err(),
            "presence is not on the message queue"
        );
        s.tx.try_send(Out::CheckMail).unwrap();
        let mut lane: Vec<String> = s
            .take_presence_backlog()
            .iter()
            .map(ToString::to_string)
            .collect();
        lane.sort();
        assert_eq!(lane, ["bob-999", "carol-up"]);
        assert!(s.take_presence_backlog().is_empty());
    }
}
