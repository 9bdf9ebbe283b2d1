//! The socket-free half of a session: the connection's protocol state ([`Core`]) and one handler
//! per client frame, each in its own module. A handler takes the decoded frame and the shared
//! server state and either answers (a frame returned, or an ack pushed for the group commit) or
//! refuses with a [`HandlerError`]; [`Core::on_text`] only routes, and turns every refusal into an
//! `error` frame carrying the frame's `requestId` in one place ([`Core::refuse`]).
//!
//! Nothing here reads or writes a socket: replies collect in [`Core::take_replies`], and the
//! socket loop (`super`) writes them. So unit tests drive a `Core` with text frames and read its
//! replies, on a real in-memory store and hub, without a connection.
//!
//! - [`register`]: `challenge` and `register` (the key, the proof, the directory, the claim).
//! - [`discover`]: `discover`, which also subscribes to presence.
//! - [`keys`]: the `request_public_key` frame.
//! - [`relay`]: `message`, `ack` and the batch's group commit (the delivery contract).
//! - [`questions`]: `peer_response` and `debug_question`.
//! - [`key_packages`]: `key_package_upload` and `key_package_fetch`, the MLS KeyPackage directory.
//! - [`devices`]: `device_list_upload` and the checks of a device `register` (the signed device
//!   list, device certificates).
//! - [`blobs`]: `blob_token`, the token a verified id shows to create blob transfers over HTTP.
//! - [`groups`]: `group_commit` and `group_message`, the MLS delivery service's epoch check and
//!   fan-out.

mod blobs;
mod devices;
mod discover;
mod groups;
mod key_packages;
mod keys;
mod nodes;
mod questions;
mod register;
mod relay;
#[cfg(test)]
mod tests;

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::ws::Message;
use lattice_protocol::close_code;
use lattice_protocol::limits::CHALLENGE_NONCE_LEN;
use lattice_protocol::{
    decode_client, encode, ClientFrame, ClientId, Frame, FrameBody as _, MessageId, PeerPresence,
    RequestId, ServerFrame,
};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::error::HandlerError;
use crate::cluster::presence::Released;
use crate::hub::{PeerEntry, SessionShared};
use crate::limits::{INVALID_WINDOW, MAILBOX_BATCH, MAX_INVALID_FRAMES};
use crate::metrics::Metrics;
use crate::state::ServerState;
pub(crate) use relay::reap_in_flight;
use relay::PendingLive;

/// The connection must close with this code and reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Close {
    pub(crate) code: u16,
    pub(crate) reason: &'static str,
}

/// One connection's protocol state, without its socket.
pub(crate) struct Core {
    state: Arc<ServerState>,
    shared: Arc<SessionShared>,
    peer: Option<Arc<PeerEntry>>,
    /// The last `challenge` nonce and when it was issued (tokio's clock: paused in tests).
    challenge: Option<([u8; CHALLENGE_NONCE_LEN], Instant)>,
    /// The peer's address (for the per-address limits) and whether this connection holds one of
    /// its registration slots.
    remote_ip: IpAddr,
    ip_slot: bool,
    invalid_count: u32,
    invalid_since: Instant,
    /// Whether a mailbox drain is in progress.
    draining: bool,
    /// Messages for online verified peers read in this batch: committed together (one
    /// transaction, a group commit) before the batch's replies are written.
    pending: Vec<PendingLive>,
    /// Acknowledgements read in this batch, deleted together the same way.
    pending_acks: Vec<(Option<ClientId>, MessageId)>,
    replies: Vec<Message>,
    /// On a node of several: the drain first takes over what earlier connections of this peer
    /// were handed and did not acknowledge, from this stream cursor (`Some(None)`: the start).
    take_over: Option<Option<String>>,
    /// Close after this frame's answer is written (a device that removed itself).
    close_after: Option<Close>,
    /// On a node of several: who sent what the drain handed this connection, so an `ack`
    /// without `fromId` can name its entry (allocated at the first drain).
    handed: Option<Box<nodes::Handed>>,
    /// A link relay's one target (set by its first message) and the messages it sent.
    relay_target: Option<ClientId>,
    relay_sent: u32,
    /// When a link relay registered plus `--link-relay-ttl`.
    relay_deadline: Option<Instant>,
}

impl Core {
    pub(crate) fn new(
        state: Arc<ServerState>,
        shared: Arc<SessionShared>,
        remote_ip: IpAddr,
    ) -> Self {
        Self {
            state,
            shared,
            peer: None,
            challenge: None,
            remote_ip,
            ip_slot: false,
            invalid_count: 0,
            invalid_since: Instant::now(),
            draining: false,
            pending: Vec::new(),
            pending_acks: Vec::new(),
            replies: Vec::new(),
            take_over: None,
            close_after: None,
            handed: None,
            relay_target: None,
            relay_sent: 0,
            relay_deadline: None,
        }
    }

    /// When a link relay's connection ends (`--link-relay-ttl` after it registered); `None` for
    /// every other connection.
    pub(crate) fn relay_deadline(&self) -> Option<Instant> {
        self.peer
            .as_ref()
            .filter(|p| p.link_relay)
            .and(self.relay_deadline)
    }

    pub(crate) fn state(&self) -> &Arc<ServerState> {
        &self.state
    }

    #[cfg(test)]
    pub(crate) fn shared(&self) -> &Arc<SessionShared> {
        &self.shared
    }

    /// Whether the connection registered a verified identity (only those have a mailbox).
    pub(crate) fn verified(&self) -> bool {
        self.peer.as_ref().is_some_and(|p| p.verified)
    }

    pub(crate) fn draining(&self) -> bool {
        self.draining
    }

    pub(crate) fn set_draining(&mut self) {
        if self.verified() {
            self.draining = true;
        }
    }

    /// Adds a frame to write with this batch's replies (queued deliveries, presence, pings).
    pub(crate) fn push(&mut self, m: Message) {
        self.replies.push(m);
    }

    /// The replies to write, after the batch's group commit: never call it without
    /// [`Self::finish_commit`] (or [`Self::commit_pending`]) first, or a `message_ack` could go
    /// out before its message is stored.
    pub(crate) fn take_replies(&mut self) -> Vec<Message> {
        std::mem::take(&mut self.replies)
    }

    /// One WebSocket message read from the peer. `Some` when the connection must close.
    pub(crate) async fn on_ws_message(&mut self, msg: Message) -> Option<Close> {
        self.shared
            .last_seen
            .store(self.state.uptime_ms(), Ordering::Relaxed);
        match msg {
            Message::Text(text) => {
                Metrics::inc(&self.state.metrics.frames_in);
                self.on_text(&text).await
            }
            Message::Binary(_) => {
                Metrics::inc(&self.state.metrics.frames_in);
                self.refuse(HandlerError::Binary, None)
            }
            // tungstenite answers pings itself; a pong only proves liveness (recorded above).
            Message::Ping(_) | Message::Pong(_) => None,
            Message::Close(_) => Some(Close {
                code: close_code::NORMAL,
                reason: "",
            }),
        }
    }

    /// Routes one text frame to its handler. `Some` when the connection must close.
    pub(crate) async fn on_text(&mut self, text: &str) -> Option<Close> {
        // Hot path: a `message` frame from a registered peer, envelope borrowed from `text`.
        if let Some(peer) = &self.peer {
            if let Some(m) = lattice_protocol::fast::decode_message_ref(text) {
                let peer = Arc::clone(peer);
                let mut rid = m.request_id;
                let done = self
                    .on_message(&peer, m.target_id, m.message.get(), m.message_id, &mut rid)
                    .await;
                return done.err().and_then(|e| self.refuse(e, rid));
            }
        }
        let frame = match decode_client(text) {
            Ok(f) => f,
            Err(e) => {
                debug!(error_type = %e.error_type, frame_type = ?e.frame_type, "invalid frame");
                let rid = e.request_id.clone();
                return self.refuse(HandlerError::Decode(e), rid);
            }
        };
        let mut rid = frame.request_id;
        let answer = match frame.body {
            ClientFrame::Challenge(_) => Ok(Some(self.on_challenge())),
            // The rarer handlers are boxed: their futures (the registration's is the largest) would
            // otherwise make every read batch's future, boxed per batch, as large as theirs.
            ClientFrame::Register(r) => Box::pin(self.on_register(r)).await,
            other => match self.peer.clone() {
                None => Err(HandlerError::RegistrationRequired(other.type_name())),
                // A link relay sends linking messages (and acks what it is sent), nothing else.
                Some(peer)
                    if peer.link_relay
                        && !matches!(other, ClientFrame::Message(_) | ClientFrame::Ack(_)) =>
                {
                    Err(HandlerError::LinkRelayFrame(other.type_name()))
                }
                Some(peer) => match other {
                    ClientFrame::Discover(d) => {
                        Box::pin(self.on_discover(&peer, &d)).await.map(Some)
                    }
                    ClientFrame::RequestPublicKey(r) => {
                        Box::pin(self.on_request_public_key(r)).await.map(Some)
                    }
                    ClientFrame::Message(m) => self
                        .on_message(&peer, m.target_id, m.message.get(), m.message_id, &mut rid)
                        .await
                        .map(|()| None),
                    ClientFrame::PeerResponse(r) => {
                        Box::pin(self.on_peer_response(&peer, &r)).await
                    }
                    ClientFrame::DebugQuestion(_) => self.on_debug_question(&peer).map(Some),
                    ClientFrame::Ack(a) => {
                        match self.state.node.clone() {
                            Some(node) if peer.verified => {
                                Box::pin(self.on_ack_cluster(
                                    &node,
                                    &peer,
                                    a.from_id,
                                    a.message_id,
                                ))
                                .await;
                            }
                            Some(_) => {}
                            None => self.on_ack(&peer, a),
                        }
                        Ok(None)
                    }
                    ClientFrame::KeyPackageUpload(u) => {
                        Box::pin(self.on_key_package_upload(&peer, u))
                            .await
                            .map(Some)
                    }
                    ClientFrame::KeyPackageFetch(f) => {
                        Box::pin(self.on_key_package_fetch(&peer, f))
                            .await
                            .map(Some)
                    }
                    ClientFrame::GroupCommit(c) => {
                        Box::pin(self.on_group_commit(&peer, c)).await.map(Some)
                    }
                    ClientFrame::GroupMessage(m) => {
                        Box::pin(self.on_group_message(&peer, m)).await.map(Some)
                    }
                    ClientFrame::BlobToken(_) => self.on_blob_token(&peer).await.map(Some),
                    ClientFrame::DeviceListUpload(u) => {
                        Box::pin(self.on_device_list_upload(&peer, u))
                            .await
                            .map(Some)
                    }
                    ClientFrame::Challenge(_) | ClientFrame::Register(_) => Ok(None),
                },
            },
        };
        match answer {
            Ok(Some(body)) => {
                self.reply(body, rid);
                self.close_after.take()
            }
            Ok(None) => None,
            Err(e) => self.refuse(e, rid),
        }
    }

    /// The binding of `id`, from the directory this server uses.
    async fn binding_of(
        &self,
        id: &ClientId,
    ) -> Result<Option<crate::store::Binding>, HandlerError> {
        let found = match &self.state.node {
            Some(node) => node.directory.get(id).await.map_err(|e| e.to_string()),
            None => self.state.directory.get(id).map_err(|e| e.to_string()),
        };
        found.map_err(|e| {
            warn!(error = %e, "directory lookup failed");
            HandlerError::DirectoryUnavailable
        })
    }

    fn reply(&mut self, body: ServerFrame, rid: Option<RequestId>) {
        self.replies.push(Message::Text(
            encode(&Frame::with_request_id(body, rid)).into(),
        ));
    }

    /// The one place a refusal becomes an `error` frame (with the frame's `requestId`), and a
    /// malformed frame counts toward the invalid-frame limit.
    fn refuse(&mut self, e: HandlerError, rid: Option<RequestId>) -> Option<Close> {
        Metrics::inc(&self.state.metrics.errors_sent);
        let invalid = e.is_invalid_frame();
        self.replies
            .push(Message::Text(relay::error_frame(&e, rid).into()));
        if invalid {
            self.count_invalid()
        } else {
            None
        }
    }

    fn count_invalid(&mut self) -> Option<Close> {
        let now = Instant::now();
        if now.duration_since(self.invalid_since) > INVALID_WINDOW {
            self.invalid_since = now;
            self.invalid_count = 0;
        }
        self.invalid_count += 1;
        if self.invalid_count > MAX_INVALID_FRAMES {
            Metrics::inc(&self.state.metrics.policy_closes);
            warn!("closing: too many invalid frames");
            return Some(Close {
                code: close_code::POLICY,
                reason: "too many invalid frames",
            });
        }
        None
    }

    /// Adds the next batch of mailbox entries to the replies, once the live queue is quiet; the
    /// drain ends with a short batch.
    pub(crate) async fn drain_batch(&mut self) {
        let Some(peer) = self.peer.clone() else {
            self.draining = false;
            return;
        };
        if let Some(node) = self.state.node.clone() {
            Box::pin(self.drain_cluster(&node, &peer)).await;
            return;
        }
        match self
            .state
            .mailbox
            .claim(&peer.mailbox_key(), self.shared.conn_id, MAILBOX_BATCH)
        {
            Ok(items) => {
                debug!(count = items.len(), "mailbox batch");
                if items.len() < MAILBOX_BATCH {
                    self.draining = false;
                }
                for item in items {
                    self.replies.push(Message::Text(item.frame.into()));
                }
            }
            Err(e) => {
                warn!(error = %e, "mailbox read failed");
                self.draining = false;
            }
        }
    }

    /// After the socket is done: leave the hub, hand back undelivered mail, tell subscribers.
    pub(crate) async fn finish(&mut self) {
        let Some(peer) = self.peer.clone() else {
            // Nothing is held for a connection that never registered; closing the table makes
            // sure nothing ever will be.
            self.spill_all_held();
            return;
        };
        self.release_ip_slot();
        // `Some(true)`: this was the id's last online device (presence changes).
        let release = self.state.hub.release(&peer.id, self.shared.conn_id);
        let released = release == Some(true);
        if let Some(node) = self.state.node.clone() {
            // Nothing is held or pending on this path: what this connection was handed and did
            // not acknowledge stays in the stream for the peer's next connection, on any node.
            if released {
                self.state.questions.forget_demos(&peer.id);
            }
            match node
                .presence
                .release_device(&peer.id, &peer.device, self.shared.conn_id)
                .await
            {
                // Presence is per id: only its last online device anywhere makes it leave. A
                // link relay was never announced.
                Ok(Released::Released { last: true }) if !peer.link_relay => {
                    node.announce(&peer.id, false).await;
                    info!("disconnected");
                }
                Ok(_) => {}
                Err(e) => warn!(error = %e, "presence release failed: it expires"),
            }
            return;
        }
        if released {
            // Nobody holds the id any more: its demo conversations can never be answered. (A
            // connection replaced by the same identity keeps them for the new one.)
            self.state.questions.forget_demos(&peer.id);
        }
        // What this connection read last: its acks are applied, its messages committed and routed
        // (their senders' answers can no longer be written, which a sender treats as no answer).
        self.commit_pending();
        // What was sent on this connection and held for its ack is committed now (owned by this
        // connection, like the rows above), so the `disown_all` below gives it all back.
        self.spill_all_held();
        if peer.verified {
            // Everything sent on this connection and not acknowledged, and everything still in
            // its queue, waits in the mailbox for the next connection.
            match self
                .state
                .mailbox
                .disown_all(&peer.mailbox_key(), self.shared.conn_id)
            {
                Ok(0) => {}
                Ok(returned) => {
                    debug!(returned, "unacknowledged messages returned to the mailbox");
                    if let Some(current) = self.state.hub.device(&peer.id, &peer.device) {
                        current.session.notify_mail();
                    }
                }
                Err(e) => warn!(error = %e, "could not return unacknowledged messages"),
            }
        }
        if released && !peer.link_relay {
            let frame = encode(&Frame::new(ServerFrame::PeerDisconnected(PeerPresence {
                peer_id: peer.id.clone(),
            })));
            self.state.hub.broadcast_presence(&frame.into(), &peer.id);
            info!("disconnected");
        }
    }
}
