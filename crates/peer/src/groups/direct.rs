//! 1:1 conversations over MLS: a two-member group per pair of Lattice clients that both have MLS
//! state, made on first contact from the peer's KeyPackage (so the first message to an *offline*
//! peer works: KeyPackage fetch, then Commit + Welcome and the message through its mailbox).
//!
//! - **Marking.** A direct conversation is a group whose authenticated name (in the group
//!   context) is [`DIRECT_GROUP_NAME`] and whose members are exactly us and the peer, the peer
//!   being the one who sent the Welcome. Such groups are not listed as groups and raise no
//!   group events; their application messages carry the ordinary content layer (every kind) and
//!   come up as [`PeerEvent::Message`] / [`PeerEvent::Update`] with [`Algorithm::Mls`]. A
//!   direct group that gains a third member (or loses the peer) stops being the conversation.
//! - **Convergence.** Both sides may make a group at the same moment; each then joins the
//!   other's too. Of all direct groups with one peer, the one with the **smallest group id**
//!   (bytewise) is the conversation: both sides see the same set and pick the same one. Messages
//!   that arrive in another one are still read.
//! - **Downgrade pin.** A peer whose KeyPackage we validated, or whose direct Welcome we joined,
//!   is pinned as MLS-capable in the MLS database (durably, like an identity key). From then on
//!   nothing is sent to it in an older envelope ([`PeerError::MlsRequired`] instead) and a
//!   `lattice-v1` or `ml-kem-aes` message from it is refused ([`RejectReason::MlsDowngrade`]).
//!   A peer with no KeyPackage at the server (`NO_KEY_PACKAGE`) and no pin is an older Lattice
//!   client: it gets `lattice-v1`, and that answer is remembered for
//!   [`NO_MLS_RECHECK`] so each message does not ask again.
//! - **Delivery states.** A send raises [`PeerEvent::MessageAck`] `queued` once the server
//!   stored it, and `delivered` when the peer's delivery receipt ([`DELIVERED_KIND`]) says its
//!   client read it; receipts go once per burst of reads.
//! - **Recovery.** A group the server no longer has us in (`NOT_A_MEMBER`) is retired and the
//!   conversation set up again for the message being sent. A device that lost its MLS state
//!   sets a conversation up again with whoever writes to it in a group it does not have
//!   ([`Groups::lost_conversation`]); the other side retires the conversation whose leaf for the
//!   peer is another MLS client ([`Groups::supersede_direct`]). Both tell the user
//!   ([`PeerEvent::ConversationNotice`]).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use lattice_mls::{GroupEvent, GroupId};
use lattice_protocol::{AckStatus, ClientId, Delivered, ErrorType, MessageAck, MessageId};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::{mls_error, Groups, Plaintext};
use crate::content::{Content, MAX_RECEIPT_IDS};
use crate::events::{Algorithm, Conversation, ConversationNotice, OwnMessage, PeerEvent};
use crate::inbox::opened;
use crate::outbox::SentMessage;
use crate::sanitize::Sanitized;
use crate::sync::lock;
use crate::wire::{new_message_id, now_ms};
use crate::{PeerError, RejectReason};

/// The authenticated group name that marks a two-member group as a 1:1 conversation. Reserved:
/// [`crate::MessagingPeer::create_group`] refuses it.
pub(crate) const DIRECT_GROUP_NAME: &str = "lattice/direct/v1";

/// How long a peer's `NO_KEY_PACKAGE` answer is believed before asking again: long enough that a
/// chat with an older client does not pay a request per message, short enough that a peer who
/// turns MLS on is picked up within minutes.
pub(crate) const NO_MLS_RECHECK: Duration = Duration::from_secs(10 * 60);

/// Most peers remembered as having no KeyPackage (the oldest answer is forgotten past it).
pub(crate) const NO_MLS_REMEMBERED: usize = 1024;

/// The plaintext `kind` of a delivery receipt inside a 1:1 MLS conversation: the reader's
/// client confirms that it processed these messages, which the sender raises as
/// [`PeerEvent::MessageAck`] `delivered` (the server cannot: MLS copies go through the mailbox,
/// whose answer is `queued`). Not a [`Content`]: only this layer knows it, and no app sees it.
pub(crate) const DELIVERED_KIND: &str = "delivered";

/// Most peers with delivery receipts waiting for the end of a burst; past it they all go at
/// once (so the wait list stays bounded while messages keep coming).
pub(crate) const PENDING_RECEIPT_PEERS: usize = 64;

/// The body of a [`DELIVERED_KIND`] plaintext.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeliveredBody {
    /// 1 to [`MAX_RECEIPT_IDS`] message ids of the receipt's recipient.
    delivered: Vec<MessageId>,
}

/// The tables of direct conversations and MLS-capable peers (in the MLS database).
const DIRECT_TABLES: &str = "
    CREATE TABLE IF NOT EXISTS lattice_peer_direct (
        group_id BLOB PRIMARY KEY, peer TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS lattice_peer_mls_peers (
        peer TEXT PRIMARY KEY, since_ms INTEGER NOT NULL);";

/// Peers remembered for [`NO_MLS_RECHECK`] (at most [`NO_MLS_REMEMBERED`]; past it the oldest is
/// forgotten): peers without KeyPackages, peers whose lost conversation was set up again.
#[derive(Debug, Default)]
pub(crate) struct RecentPeers {
    at: HashMap<ClientId, Instant>,
}

impl RecentPeers {
    /// Whether `peer` was remembered less than [`NO_MLS_RECHECK`] before `now`.
    pub(crate) fn contains(&self, peer: &ClientId, now: Instant) -> bool {
        self.at
            .get(peer)
            .is_some_and(|at| now.saturating_duration_since(*at) < NO_MLS_RECHECK)
    }

    /// Remembers `peer` as of `now`.
    pub(crate) fn remember(&mut self, peer: &ClientId, now: Instant) {
        self.at
            .retain(|_, at| now.saturating_duration_since(*at) < NO_MLS_RECHECK);
        if self.at.len() >= NO_MLS_REMEMBERED {
            if let Some(oldest) = self
                .at
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(p, _)| p.clone())
            {
                self.at.remove(&oldest);
            }
        }
        self.at.insert(peer.clone(), now);
    }
}

/// A 1:1 MLS send waiting for the server's answer, in `Groups::sending`; removed when it ends,
/// however it ends (an error, or the send's future dropped), so the map holds only sends in
/// flight.
struct InFlight<'a> {
    sending: &'a Mutex<HashMap<(ClientId, MessageId), bool>>,
    key: Option<(ClientId, MessageId)>,
}

impl<'a> InFlight<'a> {
    fn start(
        sending: &'a Mutex<HashMap<(ClientId, MessageId), bool>>,
        peer: &ClientId,
        message_id: &MessageId,
    ) -> Self {
        let key = (peer.clone(), message_id.clone());
        lock(sending).insert(key.clone(), false);
        Self {
            sending,
            key: Some(key),
        }
    }

    /// Ends it: whether the peer's delivery receipt came meanwhile.
    fn finish(mut self) -> bool {
        self.key
            .take()
            .and_then(|k| lock(self.sending).remove(&k))
            .unwrap_or(false)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(k) = self.key.take() {
            lock(self.sending).remove(&k);
        }
    }
}

/// What this device knows about 1:1 MLS conversations: mirrors the two tables, plus the
/// short-lived memory of peers without KeyPackages.
#[derive(Debug, Default)]
pub(crate) struct DirectBook {
    /// Each direct group and its peer.
    groups: HashMap<GroupId, ClientId>,
    /// Peers pinned as MLS-capable.
    capable: HashSet<ClientId>,
    /// Peers that had no KeyPackage, and when that was learnt.
    without: RecentPeers,
}

impl DirectBook {
    /// Loads the tables (creating them); direct groups the engine no longer has are skipped.
    pub(crate) fn load(
        conn: &rusqlite::Connection,
        live: &[GroupId],
    ) -> Result<Self, rusqlite::Error> {
        conn.execute_batch(DIRECT_TABLES)?;
        let mut book = Self::default();
        let mut q = conn.prepare("SELECT group_id, peer FROM lattice_peer_direct")?;
        let rows = q.query_map([], |r| {
            Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, String>(1)?))
        })?;
        for row in rows {
            let (g, p) = row?;
            let g = GroupId::from_bytes(&g);
            if let (true, Ok(p)) = (live.contains(&g), ClientId::new(p)) {
                book.groups.insert(g, p);
            }
        }
        let mut q = conn.prepare("SELECT peer FROM lattice_peer_mls_peers")?;
        let rows = q.query_map([], |r| r.get::<_, String>(0))?;
        for p in rows {
            if let Ok(p) = ClientId::new(p?) {
                book.capable.insert(p);
            }
        }
        Ok(book)
    }

    /// The conversation with `peer`: its direct group with the smallest id.
    fn chosen(&self, peer: &ClientId) -> Option<GroupId> {
        self.groups
            .iter()
            .filter(|(_, p)| *p == peer)
            .map(|(g, _)| g)
            .min()
            .cloned()
    }

    fn recently_without(&self, peer: &ClientId, now: Instant) -> bool {
        self.without.contains(peer, now)
    }

    fn remember_without(&mut self, peer: &ClientId, now: Instant) {
        self.without.remember(peer, now);
    }
}

/// Only the algorithm of an envelope, to spot a downgrade without parsing the rest.
#[derive(Deserialize)]
struct AlgorithmOnly {
    algorithm: String,
}

impl Groups {
    /// Whether `peer` is pinned as MLS-capable.
    pub(crate) fn speaks_mls(&self, peer: &ClientId) -> bool {
        lock(&self.direct).capable.contains(peer)
    }

    /// The group of the 1:1 conversation with `peer`, if there is one.
    pub(crate) fn direct_group(&self, peer: &ClientId) -> Option<GroupId> {
        lock(&self.direct).chosen(peer)
    }

    /// The peer of direct group `gid`, if it is one.
    pub(crate) fn direct_peer(&self, gid: &GroupId) -> Option<ClientId> {
        lock(&self.direct).groups.get(gid).cloned()
    }

    /// Sends `content` to `target` over MLS when `target` speaks it, setting the conversation
    /// up first if needed. `Ok(None)`: `target` does not speak MLS (and is not pinned as doing
    /// so); the caller sends it in an older envelope.
    pub(crate) async fn send_direct(
        &self,
        target: &ClientId,
        content: &Content,
        message_id: MessageId,
    ) -> Result<Option<SentMessage>, PeerError> {
        if *target == self.client_id {
            return Ok(None);
        }
        content.validate()?;
        if let Some(new) = self.trust.pending_key_change(target) {
            let old = self.trust.key_store().pinned(target)?;
            return Err(PeerError::KeyChanged {
                peer: target.clone(),
                old: old.map_or_else(|| new.fingerprint(), |o| o.fingerprint()),
                new: new.fingerprint(),
            });
        }
        let gid = match self.direct_group(target) {
            Some(g) => g,
            None => match self.open_direct(target).await? {
                Some(g) => g,
                None => return Ok(None),
            },
        };
        let in_flight = InFlight::start(&self.sending, target, &message_id);
        match self.send_in(&gid, target, content, &message_id).await {
            // The server no longer has us in that group (the peer left it, the server lost it):
            // it is no conversation any more; set a new one up, once.
            Err(PeerError::Server {
                error_type: ErrorType::NotAMember,
                ..
            }) => {
                tracing::info!(peer = %self.client_id, with = %target, group = %gid, "1:1 MLS group gone at the server; setting up a new one");
                self.retire_direct(&gid);
                let Some(gid) = self.open_direct(target).await? else {
                    return Err(PeerError::MlsRequired {
                        peer: target.clone(),
                        reason: "its 1:1 group is gone and no new one could be set up".into(),
                    });
                };
                self.send_in(&gid, target, content, &message_id).await?;
            }
            other => other?,
        }
        let read_already = in_flight.finish();
        // Stored at the server for the peer: `queued`, as the relay says of a `lattice-v1`
        // message in a mailbox; its client's delivery receipt makes it `delivered`. A receipt
        // that came while we waited for the server's answer is told now, after `queued`.
        for status in [AckStatus::Queued, AckStatus::Delivered]
            .into_iter()
            .take(if read_already { 2 } else { 1 })
        {
            self.dispatcher.emit(PeerEvent::MessageAck(MessageAck {
                message_id: message_id.clone(),
                target_id: target.clone(),
                status,
            }));
        }
        Ok(Some(SentMessage {
            message_id,
            algorithm: Algorithm::Mls,
        }))
    }

    /// Seals `content` in direct group `gid` and sends it, waiting for the server's answer.
    async fn send_in(
        &self,
        gid: &GroupId,
        target: &ClientId,
        content: &Content,
        message_id: &MessageId,
    ) -> Result<(), PeerError> {
        let (kind, body) = content.encode()?;
        let sent_at = now_ms();
        let plaintext = zeroize::Zeroizing::new(
            serde_json::to_vec(&Plaintext {
                message_id: message_id.clone(),
                kind: kind.to_owned(),
                body,
                sent_at,
            })
            .map_err(|e| PeerError::Protocol(e.to_string()))?,
        );
        let sealed = {
            let _g = self.op.lock().await;
            lock(&self.mls)
                .encrypt(gid, &plaintext)
                .map_err(|e| mls_error(e, Some(gid)))?
        };
        self.send_group_frame(gid, sealed, message_id.clone())
            .await?;
        tracing::debug!(peer = %self.client_id, to = %target, message_id = %message_id, kind = content.kind(), "1:1 MLS message sent");
        self.history.sent(target, message_id, content, sent_at);
        Ok(())
    }

    /// Sets up the 1:1 conversation with `target` from one of its KeyPackages. `Ok(None)` when
    /// it has none and is not pinned as MLS-capable (an older Lattice client, or an original one).
    async fn open_direct(&self, target: &ClientId) -> Result<Option<GroupId>, PeerError> {
        // One set-up at a time, so two sends to a new peer make one group, not two.
        let _one = self.direct_setup.lock().await;
        if let Some(g) = self.direct_group(target) {
            return Ok(Some(g));
        }
        let capable = self.speaks_mls(target);
        if !capable && lock(&self.direct).recently_without(target, Instant::now()) {
            return Ok(None);
        }
        let required = |e: PeerError| PeerError::MlsRequired {
            peer: target.clone(),
            reason: e.to_string(),
        };
        if !capable {
            let key = match self.trust.cached_key(target) {
                Some(k) => k,
                None => self.trust.fetch_key(target).await?,
            };
            if key.identity.is_none() {
                // An original client: no identity key, no MLS.
                return Ok(None);
            }
        }
        let kps = match self.fetch_key_packages(target).await {
            Ok(kps) => kps,
            Err(e) if capable => return Err(required(e)),
            Err(PeerError::Server {
                error_type: ErrorType::NoKeyPackage,
                ..
            }) => {
                lock(&self.direct).remember_without(target, Instant::now());
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        // The peer proved it speaks MLS with a KeyPackage bound to its pinned identity key.
        self.pin_mls(target);
        let gid = {
            let _g = self.op.lock().await;
            lock(&self.mls)
                .create_group(DIRECT_GROUP_NAME)
                .map_err(|e| mls_error(e, None))?
        };
        // Registered before the Commit, so its events stay out of the group events.
        self.register_direct(&gid, target);
        if let Err(e) = self.commit(&gid, |mls| mls.add_members(&gid, &kps)).await {
            self.unregister_direct(&gid);
            return Err(required(e));
        }
        self.schedule_heal(&gid, Duration::ZERO);
        tracing::info!(peer = %self.client_id, with = %target, group = %gid, "1:1 MLS conversation set up");
        Ok(Some(gid))
    }

    /// Pins `peer` as MLS-capable, durably.
    fn pin_mls(&self, peer: &ClientId) {
        if !lock(&self.direct).capable.insert(peer.clone()) {
            return;
        }
        let r = lock(&self.mls).connection().execute(
            "INSERT OR IGNORE INTO lattice_peer_mls_peers (peer, since_ms) VALUES (?1, ?2)",
            rusqlite::params![peer.as_str(), i64::try_from(now_ms()).unwrap_or(i64::MAX)],
        );
        if let Err(e) = r {
            tracing::warn!(peer = %self.client_id, with = %peer, error = %e, "MLS pin not stored");
        }
        self.dispatcher
            .emit(PeerEvent::MovedToMls { peer: peer.clone() });
    }

    fn register_direct(&self, gid: &GroupId, peer: &ClientId) {
        lock(&self.direct).groups.insert(gid.clone(), peer.clone());
        let r = lock(&self.mls).connection().execute(
            "INSERT OR REPLACE INTO lattice_peer_direct (group_id, peer) VALUES (?1, ?2)",
            rusqlite::params![gid.as_bytes(), peer.as_str()],
        );
        if let Err(e) = r {
            tracing::warn!(peer = %self.client_id, group = %gid, error = %e, "direct conversation not stored");
        }
        self.pin_mls(peer);
    }

    fn unregister_direct(&self, gid: &GroupId) {
        lock(&self.direct).groups.remove(gid);
        let r = lock(&self.mls).connection().execute(
            "DELETE FROM lattice_peer_direct WHERE group_id = ?1",
            [gid.as_bytes()],
        );
        if let Err(e) = r {
            tracing::warn!(peer = %self.client_id, group = %gid, error = %e, "direct conversation not forgotten");
        }
    }

    /// Stops using direct group `gid` for good: out of the book, and its state deleted
    /// locally (so it is not listed as a group, nor healed); the server may still list us.
    pub(super) fn retire_direct(&self, gid: &GroupId) {
        self.unregister_direct(gid);
        lock(&self.heal).forget(gid);
        if let Err(e) = lock(&self.mls).forget_group(gid) {
            tracing::warn!(peer = %self.client_id, group = %gid, error = %e, "retired 1:1 group not deleted");
        }
    }

    /// Direct group `joined` with `peer` was just joined: any other direct group with `peer`
    /// where a device of `peer` has a leaf of another MLS client (the same (id, device), another
    /// signature key) belongs to an MLS state that device no longer has (it restored a backup,
    /// reinstalled, reset): retired, and the user told. Another *device* of `peer` (a leaf for a
    /// device the other group does not have) is not that; nor is a second group of the same
    /// clients (the two-sides-at-once race, kept).
    fn supersede_direct(&self, joined: &GroupId, peer: &ClientId) {
        let old: Vec<GroupId> = {
            let mls = lock(&self.mls);
            let leaves_of = |g: &GroupId| {
                mls.member_leaf_keys(g).ok().map(|ls| {
                    ls.into_iter()
                        .filter(|(m, _)| &m.client_id == peer)
                        .map(|(m, key)| (m.device_id, key))
                        .collect::<Vec<_>>()
                })
            };
            let Some(current) = leaves_of(joined) else {
                return;
            };
            let started_over = |old: &[(Option<String>, Vec<u8>)]| {
                old.iter()
                    .any(|(device, key)| current.iter().any(|(d, k)| d == device && k != key))
            };
            let book = lock(&self.direct);
            book.groups
                .iter()
                .filter(|(g, p)| *p == peer && *g != joined)
                .filter(|(g, _)| leaves_of(g).is_some_and(|old| started_over(&old)))
                .map(|(g, _)| g.clone())
                .collect()
        };
        if old.is_empty() {
            return;
        }
        for g in &old {
            tracing::info!(peer = %self.client_id, with = %peer, group = %g, "1:1 peer started over with a new MLS client; old conversation retired");
            self.retire_direct(g);
        }
        self.dispatcher.emit(PeerEvent::ConversationNotice {
            peer: peer.clone(),
            notice: ConversationNotice::PeerStartedOver,
        });
    }

    /// A message from `from` in a group this device does not have. When it is not (any more)
    /// in a 1:1 conversation with `from`, its MLS state was probably lost (a restored backup, a
    /// reinstall): the user is told, and a new conversation is set up with `from` in the
    /// background so that `from`'s next messages are readable (its client moves to the new
    /// group on the Welcome, [`Groups::supersede_direct`]). At most once per peer per
    /// [`NO_MLS_RECHECK`], for at most [`NO_MLS_REMEMBERED`] peers.
    pub(super) fn lost_conversation(&self, from: &ClientId, message_id: &MessageId) {
        if *from == self.client_id || self.direct_group(from).is_some() {
            return;
        }
        let now = Instant::now();
        {
            let mut restarted = lock(&self.restarted);
            if restarted.contains(from, now) {
                return;
            }
            restarted.remember(from, now);
        }
        tracing::warn!(peer = %self.client_id, from = %from, message_id = %message_id, "unreadable message in a conversation this device no longer has; setting a new one up");
        self.dispatcher.emit(PeerEvent::ConversationNotice {
            peer: from.clone(),
            notice: ConversationNotice::Unreadable {
                message_id: Some(message_id.clone()),
            },
        });
        let Some(me) = self.self_arc() else { return };
        let peer = from.clone();
        tokio::spawn(async move {
            match me.open_direct(&peer).await {
                Ok(Some(g)) => {
                    tracing::info!(peer = %me.client_id, with = %peer, group = %g, "lost 1:1 conversation set up again");
                }
                Ok(None) => {
                    tracing::info!(peer = %me.client_id, with = %peer, "lost 1:1 conversation: the peer has no KeyPackage");
                }
                Err(e) => {
                    tracing::warn!(peer = %me.client_id, with = %peer, error = %Sanitized(&e), "lost 1:1 conversation not set up again");
                    me.dispatcher.emit(PeerEvent::Error(e));
                }
            }
        });
    }

    /// Notes that the 1:1 message `message_id` from `peer` was read, for the next delivery
    /// receipt to it.
    fn note_delivered(&self, peer: &ClientId, message_id: MessageId) {
        lock(&self.delivered)
            .entry(peer.clone())
            .or_default()
            .push(message_id);
    }

    /// Sends the pending delivery receipts (only the full ones with `only_full`), each in the
    /// background: a receipt that fails is logged and not sent again (delivery states are a
    /// courtesy; the message itself was read).
    pub(super) fn flush_delivered(&self, only_full: bool) {
        let due: Vec<(ClientId, Vec<MessageId>)> = {
            let mut pending = lock(&self.delivered);
            let only_full = only_full && pending.len() <= PENDING_RECEIPT_PEERS;
            let peers: Vec<ClientId> = pending
                .iter()
                .filter(|(_, ids)| !only_full || ids.len() >= MAX_RECEIPT_IDS)
                .map(|(p, _)| p.clone())
                .collect();
            peers
                .into_iter()
                .filter_map(|p| pending.remove(&p).map(|ids| (p, ids)))
                .collect()
        };
        if due.is_empty() {
            return;
        }
        let Some(me) = self.self_arc() else { return };
        tokio::spawn(async move {
            for (peer, ids) in due {
                for chunk in ids.chunks(MAX_RECEIPT_IDS) {
                    if let Err(e) = me.send_delivered(&peer, chunk).await {
                        tracing::info!(peer = %me.client_id, to = %peer, error = %Sanitized(&e), "delivery receipt not sent");
                    }
                }
            }
        });
    }

    /// Sends one delivery receipt for `ids` to `peer` in the conversation with it.
    async fn send_delivered(&self, peer: &ClientId, ids: &[MessageId]) -> Result<(), PeerError> {
        let Some(gid) = self.direct_group(peer) else {
            return Ok(());
        };
        let body = serde_json::to_string(&DeliveredBody {
            delivered: ids.to_vec(),
        })
        .map_err(|e| PeerError::Protocol(e.to_string()))?;
        let message_id = new_message_id();
        let plaintext = zeroize::Zeroizing::new(
            serde_json::to_vec(&Plaintext {
                message_id: message_id.clone(),
                kind: DELIVERED_KIND.to_owned(),
                body,
                sent_at: now_ms(),
            })
            .map_err(|e| PeerError::Protocol(e.to_string()))?,
        );
        let sealed = {
            let _g = self.op.lock().await;
            lock(&self.mls)
                .encrypt(&gid, &plaintext)
                .map_err(|e| mls_error(e, Some(&gid)))?
        };
        self.send_group_frame(&gid, sealed, message_id).await?;
        Ok(())
    }

    /// Keeps the direct-conversation book in step with a group's events: a Welcome into a
    /// direct group from its peer adopts it; a direct group whose membership changed (a member
    /// added, the peer removed or leaving, us removed) is one no more. Returns the group's peer
    /// if it is (still) a direct conversation.
    pub(super) fn track_direct(
        &self,
        gid: &GroupId,
        from: &ClientId,
        events: &[GroupEvent],
    ) -> Option<ClientId> {
        for e in events {
            if let GroupEvent::Joined { name, members } = e {
                if name != DIRECT_GROUP_NAME {
                    continue;
                }
                // Exactly two ids, any number of devices each; the Welcome's sender is the
                // peer, or another device of ours that set the conversation up.
                let ids = distinct_ids(members.iter().map(|m| &m.client_id));
                let others: Vec<&ClientId> = ids
                    .iter()
                    .filter(|c| **c != &self.client_id)
                    .copied()
                    .collect();
                match others.as_slice() {
                    [peer] if ids.len() == 2 && (*peer == from || *from == self.client_id) => {
                        let peer = (*peer).clone();
                        self.register_direct(gid, &peer);
                        tracing::info!(peer = %self.client_id, with = %peer, group = %gid, "joined a 1:1 MLS conversation");
                        self.supersede_direct(gid, &peer);
                    }
                    _ => self.refuse(
                        Some(gid),
                        from,
                        "a 1:1 conversation must hold exactly its two members (ids, with any number of devices each), one of them its sender; kept as a group",
                    ),
                }
            }
        }
        let peer = self.direct_peer(gid)?;
        // Still exactly us and the peer (a device of either added or removed changes nothing)?
        let same_ids = lock(&self.mls).members(gid).is_ok_and(|ms| {
            let ids = distinct_ids(ms.iter().map(|m| &m.identity.client_id));
            ids.len() == 2 && ids.contains(&&peer) && ids.contains(&&self.client_id)
        });
        let broken = !same_ids || events.iter().any(|e| matches!(e, GroupEvent::Removed));
        if broken {
            tracing::info!(peer = %self.client_id, with = %peer, group = %gid, "1:1 MLS conversation's membership changed; no longer used");
            self.unregister_direct(gid);
            return None;
        }
        Some(peer)
    }

    /// Reads an application message of direct group `gid` with `peer` as a 1:1 message: the
    /// content layer's checks (history, edit window) as for `lattice-v1`, then the same events.
    /// A message from another device of ours comes up as [`PeerEvent::OwnMessage`] (our own
    /// outgoing message in this conversation); delivery receipts, read receipts and typing
    /// notices of ours are not shown.
    pub(super) fn read_direct(
        &self,
        peer: &ClientId,
        sender: &lattice_mls::MemberIdentity,
        message_id: Option<&MessageId>,
        timestamp: u64,
        bytes: &[u8],
    ) {
        let from = &sender.client_id;
        let refused = |reason: RejectReason| {
            tracing::warn!(peer = %self.client_id, from = %from, message_id = ?message_id, reason = %reason, "1:1 MLS message refused");
            self.dispatcher.emit(PeerEvent::Error(PeerError::Rejected {
                from: from.clone(),
                message_id: message_id.cloned(),
                reason,
            }));
        };
        let own = *from == self.client_id;
        if from != peer && !own {
            refused(RejectReason::Decrypt);
            return;
        }
        let Ok(p) = serde_json::from_slice::<Plaintext>(bytes) else {
            refused(RejectReason::MalformedPlaintext);
            return;
        };
        if Some(&p.message_id) != message_id {
            refused(RejectReason::MessageIdMismatch);
            return;
        }
        if own {
            if p.kind == DELIVERED_KIND {
                return;
            }
            match Content::decode(&p.kind, &p.body) {
                Ok(Content::Receipt { .. } | Content::Typing { .. }) => {}
                Ok(content) => self.dispatcher.emit(PeerEvent::OwnMessage(OwnMessage {
                    conversation: Conversation::Direct(peer.clone()),
                    device: sender.device_id.clone(),
                    message_id: p.message_id,
                    content,
                    sent_at: p.sent_at,
                })),
                Err(e) => refused(RejectReason::InvalidContent(e)),
            }
            return;
        }
        if p.kind == DELIVERED_KIND {
            match serde_json::from_str::<DeliveredBody>(&p.body) {
                Ok(b) if !b.delivered.is_empty() && b.delivered.len() <= MAX_RECEIPT_IDS => {
                    for id in b.delivered {
                        // Still waiting for the server's answer to that send: its `queued`
                        // comes first, then this (see `send_direct`).
                        if let Some(read) = lock(&self.sending).get_mut(&(from.clone(), id.clone()))
                        {
                            *read = true;
                            continue;
                        }
                        self.dispatcher.emit(PeerEvent::MessageAck(MessageAck {
                            message_id: id,
                            target_id: from.clone(),
                            status: AckStatus::Delivered,
                        }));
                    }
                }
                _ => refused(RejectReason::MalformedPlaintext),
            }
            return;
        }
        let content = match Content::decode(&p.kind, &p.body) {
            Ok(c) => c,
            Err(e) => return refused(RejectReason::InvalidContent(e)),
        };
        // The MLS message is consumed (its key deleted): a check that may pass later cannot
        // be retried, so every refusal here is final.
        match self.history.check(from, &p.message_id, p.sent_at, &content) {
            Ok(record) => self.history.commit(record),
            Err(RejectReason::Replay) => return,
            Err(reason) => return refused(reason),
        }
        if !matches!(content, Content::Receipt { .. } | Content::Typing { .. }) {
            self.note_delivered(from, p.message_id.clone());
        }
        let event = opened(
            from,
            timestamp,
            p.message_id,
            p.sent_at,
            content,
            Algorithm::Mls,
        )
        .into_event();
        self.dispatcher.emit(event);
    }

    /// A message in an older envelope from a peer pinned as MLS-capable: refused for good
    /// (acknowledged, reported as [`RejectReason::MlsDowngrade`]). Returns whether it was.
    pub(crate) fn refuses_downgrade(&self, d: &Delivered) -> bool {
        if !self.speaks_mls(&d.from_id) {
            return false;
        }
        let Ok(env) = serde_json::from_str::<AlgorithmOnly>(d.message.get()) else {
            return false;
        };
        if env.algorithm == lattice_protocol::MLS_ALGORITHM {
            return false;
        }
        let algorithm: String = env.algorithm.chars().take(32).collect();
        tracing::warn!(peer = %self.client_id, from = %d.from_id, message_id = ?d.message_id, algorithm, "downgrade from an MLS peer refused");
        if let Some(id) = &d.message_id {
            self.link.ack(&d.from_id, id);
        }
        self.dispatcher.emit(PeerEvent::Error(PeerError::Rejected {
            from: d.from_id.clone(),
            message_id: d.message_id.clone(),
            reason: RejectReason::MlsDowngrade { algorithm },
        }));
        true
    }
}

/// The distinct ids among `ids`.
fn distinct_ids<'a>(ids: impl Iterator<Item = &'a ClientId>) -> Vec<&'a ClientId> {
    let mut out: Vec<&ClientId> = ids.collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Arc;

    use base64::Engine as _;
    use lattice_mls::{MlsClient, MlsStore};
    use lattice_protocol::{MlsEnvelope, MlsKind};

    use super::*;
    use crate::defaults;
    use crate::keys::KeyStore as _;
    use crate::testkit::{id, identity, Kit};
    use crate::wire::B64;

    /// A delivered `mls` envelope from `from`.
    fn delivered(from: &str, kind: MlsKind, g: &GroupId, data: &[u8], mid: &str) -> Delivered {
        let env = MlsEnvelope {
            algorithm: lattice_protocol::MLS_ALGORITHM.into(),
            kind,
            group_id: lattice_protocol::GroupId::new(g.to_string()).unwrap(),
            epoch: None,
            data: B64.encode(data),
        };
        Delivered {
            message: serde_json::value::to_raw_value(&env).unwrap(),
            from_id: id(from),
            timestamp: 1,
            message_id: Some(MessageId::new(mid).unwrap()),
        }
    }

    fn events(kit: &Kit) -> Vec<PeerEvent> {
        std::mem::take(&mut *lock(&kit.events))
    }

    /// bob's `Groups`, fed by hand with what alice's engine (in the test) makes: only a Welcome
    /// into a `lattice/direct/v1` group holding exactly bob and the Welcome's sender is a 1:1
    /// conversation; its messages come up as 1:1 messages and its changes stay quiet; a group
    /// of that name with a third member, or relabelled by the server as from someone else, is
    /// an ordinary group (and reported); a 1:1 group that gains a member is one no more.
    #[tokio::test]
    async fn only_a_welcome_from_the_other_member_of_a_two_member_direct_group_is_a_conversation() {
        let kit = Kit::new("bob");
        let dir = tempfile::tempdir().unwrap();
        let (alice_identity, carol_identity) = (identity(), identity());
        for (who, ident) in [
            ("alice", &alice_identity),
            ("carol", &carol_identity),
            ("bob", &kit.identity),
        ] {
            kit.store
                .pin(&id(who), &ident.identity_public_key())
                .unwrap();
        }
        let history = Arc::new(crate::history::History::new(
            id("bob"),
            Arc::new(crate::history::NoHistory),
        ));
        let bob = Groups::open(
            &dir.path().join("bob.mls"),
            &crate::config::Credentials::Primary(std::sync::Arc::clone(&kit.identity)),
            id("bob"),
            defaults::SELF_UPDATE_INTERVAL,
            (
                Arc::clone(&kit.trust),
                Arc::clone(&kit.requests),
                Arc::clone(&kit.link),
                Arc::clone(&kit.dispatcher),
                history,
            ),
        )
        .unwrap()
        .into_arc();
        let engine = |name: &str, ident: &lattice_crypto::Identity| {
            MlsClient::create(
                MlsStore::open(dir.path().join(format!("{name}.mls"))).unwrap(),
                ident.identity_key(),
                id(name),
            )
            .unwrap()
        };
        let mut alice = engine("alice", &alice_identity);
        let mut carol = engine("carol", &carol_identity);
        let keys = [
            ("alice", alice_identity.identity_public_key()),
            ("bob", kit.identity.identity_public_key()),
            ("carol", carol_identity.identity_public_key()),
        ];
        let pins = move |c: &ClientId| keys.iter().find(|(n, _)| *n == c.as_str()).map(|(_, k)| *k);

        // 1. alice's 1:1 group with bob, Welcome from alice: the conversation.
        let bob_kp = |bob: &Groups| lock(&bob.mls).key_packages(1).unwrap().remove(0);
        let g1 = alice.create_group(DIRECT_GROUP_NAME).unwrap();
        let kp = alice.validate_key_package(&bob_kp(&bob), &pins).unwrap();
        let add = alice.add_members(&g1, &[kp]).unwrap();
        alice.confirm_commit(&g1).unwrap();
        bob.process(delivered(
            "alice",
            MlsKind::Welcome,
            &g1,
            &add.welcome.unwrap(),
            "w1",
        ))
        .await;
        assert_eq!(bob.direct_peer(&g1), Some(id("alice")));
        assert_eq!(bob.direct_group(&id("alice")), Some(g1.clone()));
        assert!(bob.speaks_mls(&id("alice")));
        assert!(bob.groups().is_empty(), "not listed as a group");
        let seen = events(&kit);
        assert!(
            matches!(seen.as_slice(), [PeerEvent::MovedToMls { peer }] if peer.as_str() == "alice"),
            "a 1:1 conversation raises no group events, only that it is MLS now: {seen:?}"
        );
        let text = serde_json::to_vec(&serde_json::json!({
            "messageId": "m1", "kind": "text", "body": "hello", "sentAt": 5
        }))
        .unwrap();
        let sealed = alice.encrypt(&g1, &text).unwrap();
        bob.process(delivered("alice", MlsKind::Message, &g1, &sealed, "m1"))
            .await;
        match events(&kit).as_slice() {
            [PeerEvent::Message(m)] => {
                assert_eq!((m.from.as_str(), m.text.as_str()), ("alice", "hello"));
                assert_eq!(m.algorithm, Algorithm::Mls);
                assert_eq!(m.sent_at, Some(5));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            lock(&bob.delivered).get(&id("alice")).cloned(),
            Some(vec![MessageId::new("m1").unwrap()]),
            "a delivery receipt for m1 waits for the end of the burst"
        );

        // 1b. alice's delivery receipt for two of bob's messages: MessageAck delivered for each,
        //     nothing else; an empty or oversized one is refused.
        let receipt = |mid: &str, ids: Vec<String>| {
            serde_json::to_vec(&serde_json::json!({
                "messageId": mid, "kind": DELIVERED_KIND,
                "body": serde_json::json!({ "delivered": ids }).to_string(), "sentAt": 6
            }))
            .unwrap()
        };
        let sealed = alice
            .encrypt(&g1, &receipt("r1", vec!["b1".into(), "b2".into()]))
            .unwrap();
        bob.process(delivered("alice", MlsKind::Message, &g1, &sealed, "r1"))
            .await;
        let acks: Vec<(String, String, AckStatus)> = events(&kit)
            .into_iter()
            .map(|e| match e {
                PeerEvent::MessageAck(a) => {
                    (a.message_id.to_string(), a.target_id.to_string(), a.status)
                }
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            acks,
            [
                ("b1".into(), "alice".into(), AckStatus::Delivered),
                ("b2".into(), "alice".into(), AckStatus::Delivered)
            ]
        );
        for (mid, ids) in [
            ("r2", vec![]),
            (
                "r3",
                (0..=MAX_RECEIPT_IDS).map(|n| format!("b{n}")).collect(),
            ),
        ] {
            let sealed = alice.encrypt(&g1, &receipt(mid, ids)).unwrap();
            bob.process(delivered("alice", MlsKind::Message, &g1, &sealed, mid))
                .await;
            assert!(
                matches!(
                    events(&kit).as_slice(),
                    [PeerEvent::Error(PeerError::Rejected {
                        reason: RejectReason::MalformedPlaintext,
                        ..
                    })]
                ),
                "{mid}"
            );
        }
        assert_eq!(
            lock(&bob.delivered).get(&id("alice")).map(Vec::len),
            Some(1),
            "receipts get no receipt"
        );

        // 2. The same kind of group, but the server says carol sent the Welcome: not a 1:1
        //    conversation with anyone; kept as a group and reported.
        let g2 = alice.create_group(DIRECT_GROUP_NAME).unwrap();
        let kp = alice.validate_key_package(&bob_kp(&bob), &pins).unwrap();
        let add = alice.add_members(&g2, &[kp]).unwrap();
        alice.confirm_commit(&g2).unwrap();
        bob.process(delivered(
            "carol",
            MlsKind::Welcome,
            &g2,
            &add.welcome.unwrap(),
            "w2",
        ))
        .await;
        assert_eq!(bob.direct_peer(&g2), None);
        assert!(bob.groups().contains(&g2));
        assert!(
            events(&kit)
                .iter()
                .any(|e| matches!(e, PeerEvent::Error(PeerError::GroupRejected { reason, .. }) if reason.contains("exactly its two members"))),
        );

        // 3. A group of that name with a third member: an ordinary group.
        let g3 = alice.create_group(DIRECT_GROUP_NAME).unwrap();
        let kps = [
            alice.validate_key_package(&bob_kp(&bob), &pins).unwrap(),
            alice
                .validate_key_package(&carol.key_packages(1).unwrap().remove(0), &pins)
                .unwrap(),
        ];
        let add = alice.add_members(&g3, &kps).unwrap();
        alice.confirm_commit(&g3).unwrap();
        bob.process(delivered(
            "alice",
            MlsKind::Welcome,
            &g3,
            &add.welcome.unwrap(),
            "w3",
        ))
        .await;
        assert_eq!(bob.direct_peer(&g3), None);
        assert_eq!(bob.direct_group(&id("alice")), Some(g1.clone()));
        events(&kit);

        // 4. The real conversation gains carol: it is one no more, and shows as a group.
        let kp = alice
            .validate_key_package(&carol.key_packages(1).unwrap().remove(0), &pins)
            .unwrap();
        let add = alice.add_members(&g1, &[kp]).unwrap();
        alice.confirm_commit(&g1).unwrap();
        bob.process(delivered("alice", MlsKind::Commit, &g1, &add.commit, "c1"))
            .await;
        assert_eq!(bob.direct_peer(&g1), None);
        assert_eq!(bob.direct_group(&id("alice")), None);
        assert!(bob.groups().contains(&g1));
        assert!(bob.speaks_mls(&id("alice")), "the pin stays");
    }

    fn peer(s: &str) -> ClientId {
        ClientId::new(s).unwrap_or_else(|_| unreachable!())
    }

    #[test]
    fn the_conversation_is_the_smallest_group_id_whichever_was_made_first() {
        let mut a = DirectBook::default();
        let mut b = DirectBook::default();
        let (g1, g2) = (GroupId::from_bytes(&[1; 16]), GroupId::from_bytes(&[2; 16]));
        a.groups.insert(g2.clone(), peer("bob"));
        a.groups.insert(g1.clone(), peer("bob"));
        b.groups.insert(g1.clone(), peer("alice"));
        b.groups.insert(g2, peer("alice"));
        assert_eq!(a.chosen(&peer("bob")), Some(g1.clone()));
        assert_eq!(b.chosen(&peer("alice")), Some(g1));
        assert_eq!(a.chosen(&peer("carol")), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_without_key_packages_is_asked_again_after_the_recheck_time_and_bounded() {
        let mut book = DirectBook::default();
        let now = Instant::now();
        book.remember_without(&peer("old"), now);
        assert!(book.recently_without(&peer("old"), now));
        tokio::time::advance(NO_MLS_RECHECK).await;
        assert!(!book.recently_without(&peer("old"), Instant::now()));
        for n in 0..=NO_MLS_REMEMBERED {
            book.remember_without(&peer(&format!("p{n}")), Instant::now());
        }
        assert_eq!(book.without.at.len(), NO_MLS_REMEMBERED);
    }
}
