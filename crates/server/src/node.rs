//! This server as one node of several sharing their state in Redis (`--redis`; the design is in
//! `docs/scaling.md`). [`Node`] holds the node's Redis components ([`crate::cluster`]): presence
//! (one live holder per id across every node), the node channels, the directory, the mailbox
//! streams, and the MLS KeyPackage directory and groups. The session handlers call them where a
//! single node calls the in-process hub and the SQLite store; this module adds what ties them to
//! the node's own sessions:
//!
//! - [`NodeMsg`], what one node publishes on another's channel: a frame for an (unverified) peer
//!   it holds, "check mail" for a verified one (each of its devices here looks), a server notice
//!   (`key_packages_low`), "close this connection" when a verified owner reclaimed its device
//!   elsewhere (4000), "close this device" when a list stored elsewhere removed it (4001);
//! - [`PresenceMsg`], the join/leave notice every node turns into `peer_connected` /
//!   `peer_disconnected` for its own subscribed sessions;
//! - admin questions ([`Node::questions`], the question registry on Redis): the asking node
//!   registers the question (the conversation's owner and round, the per-peer cap), sends it to
//!   the peer's connection on whichever node holds it and waits ([`Node::await_answer`]); the
//!   node where the peer answers, whichever it is by then, takes the record and sends the answer
//!   to the asking node ([`Node::answered`], [`NodeMsg::Answered`]), so a conversation, and a
//!   question waiting for its answer, survive the peer reconnecting to another node;
//! - [`run_inbound`], the loop that hands what arrives to the local sessions, and
//!   [`run_refresh`], which keeps this node's presence keys alive and closes sessions whose id
//!   another connection took.
//!
//! The node never keeps anything that matters across its death: every accepted message for a
//! verified peer is in its mailbox stream before its sender is answered, presence expires within
//! [`PRESENCE_TTL`](crate::cluster::presence::PRESENCE_TTL) when refreshes stop.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use axum::extract::ws::Utf8Bytes;
use lattice_protocol::{
    close_code, encode, AckStatus, ClientId, DeviceId, Frame, MessageId, PeerPresence, QuestionId,
    ServerFrame,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::cluster::channel::{Channels, Inbound};
use crate::cluster::devices::RedisDevices;
use crate::cluster::directory::RedisDirectory;
use crate::cluster::groups::RedisGroups;
use crate::cluster::key_packages::RedisKeyPackages;
use crate::cluster::mailbox::{consumer, RedisMailbox};
use crate::cluster::presence::{Claim, Holder, PeerKeys, Presence};
use crate::cluster::questions::RedisQuestions;
use crate::cluster::stats::{RedisStats, Timed as _};
use crate::cluster::{ClusterError, NodeId, RedisConn, RedisUrl};
use crate::hub::{Hub, Out, PeerEntry, DEVICE_REMOVED_REASON};
use crate::inflight::Awaiting;
use crate::limits::{AWAITING_PER_NODE, IN_FLIGHT_REAP_DIVISOR};

/// What one node publishes on another node's channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum NodeMsg {
    /// A `message` frame for an unverified peer held by connection `conn` (unverified peers have
    /// no mailbox: at most once, as on one node).
    Route {
        /// The recipient.
        to: ClientId,
        /// Its connection on the receiving node.
        conn: u64,
        /// The frame, written as is.
        frame: String,
    },
    /// Mail waits in `to`'s mailbox streams: its sessions here (each device drains its own)
    /// look.
    Mail {
        /// The recipient.
        to: ClientId,
    },
    /// A server notice (not a message: nothing to acknowledge, dropped with a full queue) for
    /// connection `conn` holding `to`, such as `key_packages_low`.
    Notice {
        /// The recipient.
        to: ClientId,
        /// Its connection on the receiving node.
        conn: u64,
        /// The frame, written as is.
        frame: String,
    },
    /// Close connection `conn` holding `to` (one of its devices) with 4000: the same verified
    /// identity registered that device on another node.
    Close {
        /// The id.
        to: ClientId,
        /// The replaced connection.
        conn: u64,
    },
    /// Close the connection holding `to`'s `device` with 4001: a new device list (stored on
    /// another node) removed the device.
    DeviceRemoved {
        /// The id.
        to: ClientId,
        /// The removed device.
        device: DeviceId,
    },
    /// `to` acknowledged `from`'s message `mid` (removed from its mailbox stream): `from`'s node
    /// answers the sender `delivered` if it still owes that answer ([`crate::inflight::Awaiting`]).
    Acked {
        /// The sender, held by the receiving node.
        from: ClientId,
        /// The recipient that acknowledged.
        to: ClientId,
        /// The sender's `messageId`.
        mid: MessageId,
    },
    /// The answer to admin question `question`, asked on the receiving node (a
    /// [`crate::questions::Answer`], the body its admin caller gets).
    Answered {
        /// The question.
        question: QuestionId,
        /// The answer.
        body: serde_json::Value,
    },
}

/// Admin questions this node's callers may wait on at once; more get 429.
pub const MAX_ADMIN_WAITS: usize = 256;

/// A presence notice on the presence channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceMsg {
    /// Who.
    pub id: ClientId,
    /// Joined (true) or left.
    pub online: bool,
}

/// This node's Redis components, shared by its sessions.
#[derive(Debug)]
pub struct Node {
    /// This node's name in Redis.
    pub id: NodeId,
    /// Who holds which id, on every node.
    pub presence: Presence,
    /// The node channels.
    pub channels: Channels,
    /// Bindings of verified ids.
    pub directory: RedisDirectory,
    /// Mailbox streams of verified ids.
    pub mailbox: RedisMailbox,
    /// The MLS KeyPackage directory.
    pub key_packages: RedisKeyPackages,
    /// The signed device lists.
    pub devices: RedisDevices,
    /// The MLS delivery service's groups (epoch check and fan-out into the mailbox streams).
    pub groups: RedisGroups,
    /// The cross-node counters (`/metrics`).
    pub stats: Arc<RedisStats>,
    /// Answers owed to this node's senders until their recipients acknowledge (end-to-end
    /// `delivered` across nodes).
    pub awaiting: Awaiting,
    conn: RedisConn,
    /// The question registry's shared records (admin questions).
    pub questions: RedisQuestions,
    /// Admin questions this node's callers wait on, by question.
    // std Mutex: map inserts and removals; never held across an await.
    waits: Mutex<HashMap<QuestionId, oneshot::Sender<serde_json::Value>>>,
}

/// An admin caller's wait for an answer ([`Node::await_answer`]): removed from the node's table
/// on every exit path.
#[derive(Debug)]
pub struct AnswerWait<'a> {
    node: &'a Node,
    question: QuestionId,
    rx: oneshot::Receiver<serde_json::Value>,
}

impl AnswerWait<'_> {
    /// The answer, if it comes within `wait`.
    pub async fn answer(&mut self, wait: std::time::Duration) -> Option<serde_json::Value> {
        tokio::time::timeout(wait, &mut self.rx).await.ok()?.ok()
    }
}

impl Drop for AnswerWait<'_> {
    fn drop(&mut self) {
        self.node.lock_waits().remove(&self.question);
    }
}

impl Node {
    /// Connects to `url` (one Redis, or a Redis Cluster through its seeds: [`RedisConn::open`])
    /// as a new node (a fresh random id) and subscribes to its channels; the
    /// subscription watcher stops with `stop`. Returns the node and what arrives for it (for
    /// [`run_inbound`]).
    ///
    /// # Errors
    /// Redis unreachable or refusing.
    pub async fn connect(
        url: &RedisUrl,
        presence_ttl: std::time::Duration,
        stop: CancellationToken,
    ) -> Result<(Self, mpsc::Receiver<Inbound>), ClusterError> {
        let stats = Arc::new(RedisStats::default());
        let id = NodeId::random();
        let conn = RedisConn::open(url).await?;
        let (channels, inbound) =
            Channels::open_with_stats(url, id.clone(), stop, Arc::clone(&stats)).await?;
        let directory = RedisDirectory::new(conn.clone()).with_stats(Arc::clone(&stats));
        let mailbox = RedisMailbox::new(conn.clone()).with_stats(Arc::clone(&stats));
        let devices = RedisDevices::new(conn.clone()).with_stats(Arc::clone(&stats));
        let node = Self {
            presence: Presence::with_ttl(conn.clone(), id.clone(), presence_ttl)
                .with_stats(Arc::clone(&stats)),
            key_packages: RedisKeyPackages::new(conn.clone()).with_stats(Arc::clone(&stats)),
            questions: RedisQuestions::new(conn.clone(), id.clone()).with_stats(Arc::clone(&stats)),
            groups: RedisGroups::new(
                conn.clone(),
                mailbox.clone(),
                directory.clone(),
                devices.clone(),
            )
            .with_stats(Arc::clone(&stats)),
            devices,
            directory,
            mailbox,
            channels,
            stats,
            awaiting: Awaiting::new(AWAITING_PER_NODE),
            conn,
            id,
            waits: Mutex::default(),
        };
        info!(node = %node.id, "joined the cluster");
        Ok((node, inbound))
    }

    /// The mailbox consumer of connection `conn` of this node.
    pub fn consumer(&self, conn: u64) -> String {
        consumer(&self.id, conn)
    }

    /// Publishes `msg` on `node`'s channel; false when no node is listening there (it died).
    ///
    /// # Errors
    /// Redis unreachable.
    pub async fn publish(&self, node: &NodeId, msg: &NodeMsg) -> Result<bool, ClusterError> {
        let payload = serde_json::to_vec(msg).map_err(|_| ClusterError::Reply("unencodable"))?;
        Ok(self.channels.publish_to(node, &payload).await? > 0)
    }

    /// Tells every node (this one included) that `id` joined or left.
    pub async fn announce(&self, id: &ClientId, online: bool) {
        let msg = PresenceMsg {
            id: id.clone(),
            online,
        };
        let Ok(payload) = serde_json::to_vec(&msg) else {
            return;
        };
        if let Err(e) = self.channels.publish_presence(&payload).await {
            warn!(error = %e, peer = %id, "presence notice not published");
        }
    }

    /// Tells `id`'s `devices` that mail waits in their streams (each got a copy): the local
    /// sessions directly, the nodes holding the others over their channels (one presence read,
    /// only when a device is not held here). Nothing to do for an offline device (it drains at
    /// its next registration).
    pub async fn notify_mail(&self, hub: &dyn Hub, id: &ClientId, devices: &[DeviceId]) {
        let mut elsewhere = false;
        for device in devices {
            match hub.device(id, device) {
                Some(local) => local.session.notify_mail(),
                None => elsewhere = true,
            }
        }
        if !elsewhere {
            return;
        }
        match self.presence.live(id).await {
            Ok(Some((holders, _))) => {
                let theirs: Vec<_> = holders
                    .into_iter()
                    .filter(|(d, _)| devices.contains(d))
                    .collect();
                self.mail_to_nodes(id, &theirs).await;
            }
            Ok(None) => {}
            Err(e) => warn!(error = %e, peer = %id, "presence lookup failed"),
        }
    }

    /// Publishes [`NodeMsg::Mail`] for `id` once to every node but this one among `holders`;
    /// true if every one of them was listening.
    pub async fn mail_to_nodes(&self, id: &ClientId, holders: &[(DeviceId, Holder)]) -> bool {
        let mut all = true;
        let mut told: Vec<&NodeId> = Vec::new();
        for (_, holder) in holders {
            if holder.node == self.id || told.contains(&&holder.node) {
                continue;
            }
            told.push(&holder.node);
            let msg = NodeMsg::Mail { to: id.clone() };
            match self.publish(&holder.node, &msg).await {
                Ok(listening) => all &= listening,
                Err(e) => {
                    warn!(error = %e, peer = %id, "mail notice not published");
                    all = false;
                }
            }
        }
        all
    }

    /// Closes (4001) the connection holding `id`'s removed `device`: here directly, on another
    /// node through [`NodeMsg::DeviceRemoved`]. Nothing when the device is offline.
    pub async fn close_removed(&self, hub: &dyn Hub, id: &ClientId, device: &DeviceId) {
        if let Some(local) = hub.device(id, device) {
            local
                .session
                .close(close_code::DEVICE_REMOVED, DEVICE_REMOVED_REASON);
            return;
        }
        let holders = match self.presence.live(id).await {
            Ok(found) => found.map(|(h, _)| h).unwrap_or_default(),
            Err(e) => {
                // Its node sees the device gone from the list when it registers again; until
                // then the session stays (its mailbox and KeyPackages are gone already).
                warn!(error = %e, peer = %id, %device, "presence lookup for a removed device failed");
                return;
            }
        };
        for (d, holder) in holders {
            if &d != device || holder.node == self.id {
                continue;
            }
            let msg = NodeMsg::DeviceRemoved {
                to: id.clone(),
                device: device.clone(),
            };
            if let Err(e) = self.publish(&holder.node, &msg).await {
                warn!(error = %e, peer = %id, %device, "device removal notice not published");
            }
        }
    }

    /// Sends `frame`, a server notice, to the connection holding `id`'s `device`: the local
    /// session's queue directly (dropped if full), another node over its channel; nothing when
    /// the device is offline. Best effort, as on one node.
    pub async fn notify_device(
        &self,
        hub: &dyn Hub,
        id: &ClientId,
        device: &DeviceId,
        frame: Utf8Bytes,
    ) {
        if let Some(local) = hub.device(id, device) {
            if local
                .session
                .tx
                .try_send(Out::Frame(Box::new(frame)))
                .is_err()
            {
                debug!(peer = %id, %device, "notice dropped: the recipient's queue is full");
            }
            return;
        }
        let holders = match self.presence.live(id).await {
            Ok(found) => found.map(|(h, _)| h).unwrap_or_default(),
            Err(e) => {
                warn!(error = %e, peer = %id, "presence lookup failed");
                return;
            }
        };
        let Some((_, holder)) = holders
            .into_iter()
            .find(|(d, h)| d == device && h.node != self.id)
        else {
            return;
        };
        let msg = NodeMsg::Notice {
            to: id.clone(),
            conn: holder.conn,
            frame: frame.as_str().to_owned(),
        };
        if let Err(e) = self.publish(&holder.node, &msg).await {
            warn!(error = %e, peer = %id, "notice not published");
        }
    }

    /// `to` acknowledged `from`'s message `mid` (removed from its mailbox stream): answers the
    /// sender `delivered` here if this node owes the answer, else tells the sender's node (looked
    /// up in presence: every node holding a device of the sender). Nothing when the sender is offline, its node died (nobody listens) or it
    /// moved since it sent (its new node owes nothing): it heard, or hears at the end of the wait,
    /// `queued`, which a sender treats as durable already.
    pub async fn acked(&self, from: &ClientId, to: &ClientId, mid: &MessageId) {
        let key = (from.clone(), to.clone(), mid.clone());
        if let Some(answer) = self.awaiting.take(&key) {
            answer.ack(AckStatus::Delivered);
            return;
        }
        // The sending device's node owes the answer: any node holding a device of the sender.
        let holders = match self.presence.live(from).await {
            Ok(found) => found.map(|(h, _)| h).unwrap_or_default(),
            Err(e) => {
                debug!(error = %e, peer = %from, "presence lookup for an ack failed");
                return;
            }
        };
        let mut told: Vec<&NodeId> = Vec::new();
        for (_, holder) in &holders {
            if holder.node == self.id || told.contains(&&holder.node) {
                continue;
            }
            told.push(&holder.node);
            let msg = NodeMsg::Acked {
                from: from.clone(),
                to: to.clone(),
                mid: mid.clone(),
            };
            if let Err(e) = self.publish(&holder.node, &msg).await {
                debug!(error = %e, peer = %from, "ack notice not published");
            }
        }
    }

    /// Starts waiting for the answer to admin question `question` (before it is sent); `None`
    /// when [`MAX_ADMIN_WAITS`] callers wait already.
    pub fn await_answer(&self, question: &QuestionId) -> Option<AnswerWait<'_>> {
        let (tx, rx) = oneshot::channel();
        let mut waits = self.lock_waits();
        if waits.len() >= MAX_ADMIN_WAITS {
            return None;
        }
        waits.insert(question.clone(), tx);
        Some(AnswerWait {
            node: self,
            question: question.clone(),
            rx,
        })
    }

    /// The peer answered admin question `question` (its record taken from Redis), asked on node
    /// `asked_by`: the caller waiting here gets `body`, or the asking node is sent it. Nothing
    /// when the caller gave up or its node died (its admin caller is gone with it).
    pub async fn answered(&self, asked_by: &NodeId, question: QuestionId, body: serde_json::Value) {
        if asked_by == &self.id {
            self.resolve(&question, body);
            return;
        }
        let msg = NodeMsg::Answered { question, body };
        match self.publish(asked_by, &msg).await {
            Ok(true) => {}
            Ok(false) => debug!(node = %asked_by, "the asking node is gone: answer dropped"),
            Err(e) => warn!(error = %e, "admin answer not published"),
        }
    }

    fn resolve(&self, question: &QuestionId, body: serde_json::Value) {
        if let Some(waiting) = self.lock_waits().remove(question) {
            let _ = waiting.send(body);
        }
    }

    fn lock_waits(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<QuestionId, oneshot::Sender<serde_json::Value>>> {
        self.waits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether Redis answers (for `/healthz`).    /// Whether Redis answers (for `/healthz`).
    pub async fn healthy(&self) -> bool {
        let ping: Result<String, redis::RedisError> = redis::cmd("PING")
            .query_async(&mut self.conn.clone())
            .timed(&self.stats)
            .await;
        ping.is_ok()
    }
}

/// The keys `entry` registered with, as presence keeps them.
pub fn peer_keys(entry: &PeerEntry) -> PeerKeys {
    PeerKeys {
        public_key: entry.public_key.to_vec(),
        identity_key: entry.identity_key,
        key_signature: entry.key_signature.as_ref().map(|s| s.to_vec()),
        link_relay: entry.link_relay,
    }
}

fn presence_frame(msg: &PresenceMsg) -> Utf8Bytes {
    let presence = PeerPresence {
        peer_id: msg.id.clone(),
    };
    let body = if msg.online {
        ServerFrame::PeerConnected(presence)
    } else {
        ServerFrame::PeerDisconnected(presence)
    };
    encode(&Frame::new(body)).into()
}

/// Hands what arrives for this node to its sessions until `stop`: routed frames to their
/// connection's queue (a full queue drops an unverified peer's frame, as on one node), mail
/// notices to the recipient's session, closes to the replaced connection, presence notices to
/// the subscribed sessions. After Redis comes back, every local session checks its mail (the
/// notices published meanwhile are lost).
pub async fn run_inbound(
    node: Arc<Node>,
    hub: Arc<dyn Hub>,
    mut inbound: mpsc::Receiver<Inbound>,
    stop: CancellationToken,
) {
    loop {
        let item = tokio::select! {
            biased;
            () = stop.cancelled() => return,
            item = inbound.recv() => item,
        };
        let Some(item) = item else { return };
        match item {
            Inbound::Node(payload) => match serde_json::from_slice::<NodeMsg>(&payload) {
                Ok(NodeMsg::Acked { from, to, mid }) => {
                    if let Some(answer) = node.awaiting.take(&(from, to, mid)) {
                        answer.ack(AckStatus::Delivered);
                    }
                }
                Ok(NodeMsg::Answered { question, body }) => node.resolve(&question, body),
                Ok(msg) => deliver(hub.as_ref(), msg),
                Err(e) => warn!(node = %node.id, error = %e, "unreadable node message"),
            },
            Inbound::Presence(payload) => match serde_json::from_slice::<PresenceMsg>(&payload) {
                Ok(msg) => hub.broadcast_presence(&presence_frame(&msg), &msg.id),
                Err(e) => warn!(node = %node.id, error = %e, "unreadable presence notice"),
            },
            Inbound::Disconnected => warn!(node = %node.id, "lost the Redis subscription"),
            Inbound::Reconnected => {
                info!(node = %node.id, "Redis subscription restored: sessions check their mail");
                for id in hub.online() {
                    for e in hub.devices(&id).into_iter().filter(|e| e.verified) {
                        e.session.notify_mail();
                    }
                }
            }
        }
    }
}

/// The local session of `to` on connection `conn` (any of its devices).
fn local_conn(hub: &dyn Hub, to: &ClientId, conn: u64) -> Option<Arc<PeerEntry>> {
    hub.devices(to)
        .into_iter()
        .find(|e| e.session.conn_id == conn)
}

fn deliver(hub: &dyn Hub, msg: NodeMsg) {
    match msg {
        NodeMsg::Route { to, conn, frame } => {
            let Some(e) = local_conn(hub, &to, conn) else {
                debug!(peer = %to, "routed frame for a connection that is gone");
                return;
            };
            if e.session
                .tx
                .try_send(Out::Deliver(Box::new(frame.into())))
                .is_err()
            {
                debug!(peer = %to, "routed frame dropped: the recipient's queue is full");
            }
        }
        NodeMsg::Notice { to, conn, frame } => {
            let Some(e) = local_conn(hub, &to, conn) else {
                return;
            };
            if e.session
                .tx
                .try_send(Out::Frame(Box::new(frame.into())))
                .is_err()
            {
                debug!(peer = %to, "notice dropped: the recipient's queue is full");
            }
        }
        NodeMsg::Mail { to } => {
            for e in hub.devices(&to) {
                e.session.notify_mail();
            }
        }
        NodeMsg::Close { to, conn } => {
            if let Some(e) = local_conn(hub, &to, conn) {
                e.session.close(
                    close_code::REPLACED,
                    "replaced by a newer connection of the same identity",
                );
            }
        }
        NodeMsg::DeviceRemoved { to, device } => {
            if let Some(e) = hub.device(&to, &device) {
                info!(peer = %to, %device, "device removed from its list: closing");
                e.session
                    .close(close_code::DEVICE_REMOVED, DEVICE_REMOVED_REASON);
            }
        }
        NodeMsg::Answered { .. } | NodeMsg::Acked { .. } => {}
    }
}

/// Every [`Presence::refresh_period`] until `stop`: extends the presence keys of this node's sessions,
/// closes (4000) the sessions whose id another connection holds now, and claims again the ids
/// whose key is gone (Redis restarted without it).
pub async fn run_refresh(node: Arc<Node>, hub: Arc<dyn Hub>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(node.presence.refresh_period());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        // Link relays are held like any id, but never put in the online index.
        let (relays, held): (Vec<_>, Vec<_>) = hub
            .online()
            .into_iter()
            .flat_map(|id| hub.devices(&id))
            .partition(|e| e.link_relay);
        let tuple = |e: &Arc<PeerEntry>| (e.id.clone(), e.device.clone(), e.session.conn_id);
        let held: Vec<(ClientId, DeviceId, u64)> = held.iter().map(tuple).collect();
        let relays: Vec<(ClientId, DeviceId, u64)> = relays.iter().map(tuple).collect();
        if held.is_empty() && relays.is_empty() {
            continue;
        }
        let refreshed = match node.presence.refresh_devices(&held).await {
            Ok(mut r) => match node.presence.refresh_unlisted(&relays).await {
                Ok(u) => {
                    r.taken.extend(u.taken);
                    r.gone.extend(u.gone);
                    r
                }
                Err(e) => {
                    warn!(node = %node.id, error = %e, "presence refresh failed");
                    continue;
                }
            },
            Err(e) => {
                warn!(node = %node.id, error = %e, "presence refresh failed");
                continue;
            }
        };
        for (id, device) in refreshed.taken {
            if let Some(e) = hub.device(&id, &device) {
                info!(peer = %id, %device, "device taken by another connection: closing");
                e.session.close(
                    close_code::REPLACED,
                    "replaced by a newer connection of the same identity",
                );
            }
        }
        for (id, device) in refreshed.gone {
            let Some(e) = hub.device(&id, &device) else {
                continue;
            };
            match node
                .presence
                .claim_device(&id, &device, e.session.conn_id, &peer_keys(&e))
                .await
            {
                Ok((Claim::Won { .. }, _)) => {
                    debug!(peer = %id, %device, "presence claimed again");
                    if e.verified {
                        e.session.notify_mail();
                    }
                }
                Ok((Claim::Taken(_), _)) => e.session.close(
                    close_code::REPLACED,
                    "replaced by a newer connection of the same identity",
                ),
                Err(err) => warn!(peer = %id, %device, error = %err, "presence claim failed"),
            }
        }
        debug!(
            node = %node.id,
            held = held.len() + relays.len(),
            published = node.stats.published.load(Ordering::Relaxed),
            "presence refreshed"
        );
    }
}

/// Every `wait` / [`IN_FLIGHT_REAP_DIVISOR`] until `stop`: the senders whose recipient did not
/// acknowledge within `wait` hear `queued` (their messages are in Redis since before they were
/// listed). With a zero `wait` nothing is ever listed, and this returns at once.
pub async fn run_awaiting(node: Arc<Node>, wait: std::time::Duration, stop: CancellationToken) {
    if wait.is_zero() {
        return;
    }
    let period = (wait / IN_FLIGHT_REAP_DIVISOR).max(std::time::Duration::from_millis(10));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let expired = node.awaiting.take_expired(tokio::time::Instant::now());
        if !expired.is_empty() {
            debug!(node = %node.id, count = expired.len(), "no ack in time: answered queued");
        }
        for answer in expired {
            answer.ack(AckStatus::Queued);
        }
    }
}
