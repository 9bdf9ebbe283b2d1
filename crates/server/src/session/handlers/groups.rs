//! `group_commit` and `group_message`: the MLS delivery service's ordered fan-out.
//!
//! Per group the server keeps its members, their leaves (the member devices, docs/protocol.md
//! "Devices": copies go to every leaf but the sending device) and current epoch ([`crate::store::SqliteStore::group_commit`]).
//! A Commit from a member for the current epoch wins it: every copy (the Commit for the members
//! before it, the Welcome for those it adds) is committed to the members' mailboxes and the epoch
//! advances in one transaction, before the sender hears `group_commit`. A Commit for another
//! epoch gets `STALE_EPOCH` / `FUTURE_EPOCH` with the current epoch, so of two concurrent Commits
//! exactly one wins and the loser processes the winner and retries: the group cannot fork.
//!
//! The server reads no MLS content, only each message's clear framing (`header`): it must be a
//! `PrivateMessage` of the frame's group, a Commit in `group_commit` (for the epoch the frame
//! names) and never in `group_message`, so no Commit can bypass the epoch check.
//!
//! Each copy is an ordinary `message` frame whose envelope is an [`MlsEnvelope`], delivered by the
//! mailbox drain (in the order stored, the order the epochs were won) and acknowledged with `ack`
//! like any message. Group copies always go through the mailbox, never the live queue directly:
//! that keeps one order per member across Commits and messages.
//!
//! On a node of several (`--redis`) the same checks and answers come from
//! [`crate::cluster::groups::RedisGroups`] (one Commit per epoch across every node, copies in the
//! leaves' device mailbox streams, the same leaves as on one node), and the node holding each
//! recipient device is told to drain.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use lattice_protocol::limits::MAX_GROUP_MEMBERS;
use lattice_protocol::{
    ClientId, DeviceId, GroupCommit, GroupCommitAccepted, GroupId, GroupMessage,
    GroupMessageAccepted, Leaf, MessageId, MlsEnvelope, MlsKind, ServerFrame, MLS_ALGORITHM,
};
use tracing::{debug, warn};

use super::Core;
use crate::cluster::groups::RedisGroupError;
use crate::hub::PeerEntry;
use crate::limits::MAX_GROUPS_PER_ID;
use crate::metrics::Metrics;
use crate::node::Node;
use crate::session::error::HandlerError;
use crate::state::unix_ms;
use crate::store::{CommitOp, GroupError, MailboxKey};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

mod header;

/// Decodes an MLS field: non-empty standard base64.
fn decode_b64(field: &'static str, s: &str) -> Result<Vec<u8>, HandlerError> {
    match B64.decode(s) {
        Ok(b) if !b.is_empty() => Ok(b),
        _ => Err(HandlerError::NotBase64(field)),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks the clear header of `bytes` (the `field` of a frame for `group`): a `PrivateMessage`
/// of that group, a Commit exactly when `commit` is true, made in `epoch` if given.
fn check_private(
    field: &'static str,
    bytes: &[u8],
    group: &GroupId,
    commit: bool,
    epoch: Option<u64>,
) -> Result<(), HandlerError> {
    let refuse = |why: String| Err(HandlerError::MlsFraming(format!("{field}: {why}")));
    match header::parse(bytes) {
        Some(header::Header::Private {
            group_id,
            epoch: got,
            content_type,
        }) => {
            if hex(&group_id) != group.as_str() {
                return refuse(format!(
                    "the message is for group {}, not {group}",
                    hex(&group_id)
                ));
            }
            if commit != (content_type == header::COMMIT) {
                return refuse(if commit {
                    "not a Commit (other group messages go in group_message)".into()
                } else {
                    "a Commit must be sent with group_commit (it is ordered by epoch)".into()
                });
            }
            match epoch {
                Some(e) if e != got => refuse(format!(
                    "the Commit was made in epoch {got}, the frame says {e}"
                )),
                _ => Ok(()),
            }
        }
        Some(header::Header::Other(wire_format)) => refuse(format!(
            "wire format {wire_format}; group messages are MLS PrivateMessages (2)"
        )),
        None => refuse("not an MLS 1.0 message".into()),
    }
}

/// The `message` frame a member gets: the MLS bytes in an [`MlsEnvelope`].
fn member_frame(
    kind: MlsKind,
    group: &GroupId,
    epoch: Option<u64>,
    data: String,
    sender: &ClientId,
    mid: &MessageId,
) -> Result<String, HandlerError> {
    let envelope = MlsEnvelope {
        algorithm: MLS_ALGORITHM.to_owned(),
        kind,
        group_id: group.clone(),
        epoch,
        data,
    };
    let json = serde_json::to_string(&envelope).map_err(|e| {
        warn!(error = %e, "could not encode an mls envelope");
        HandlerError::StorageUnavailable
    })?;
    Ok(lattice_protocol::fast::encode_delivered(
        &json,
        sender,
        unix_ms(),
        Some(mid),
    ))
}

/// An id for a group message sent without one (the members' `ack` needs one).
fn server_message_id() -> MessageId {
    let id = format!("srv-{}", uuid::Uuid::new_v4());
    MessageId::new(id).unwrap_or_else(|e| unreachable!("a UUID is a valid message id: {e}"))
}

impl Core {
    pub(super) async fn on_group_commit(
        &mut self,
        peer: &PeerEntry,
        c: GroupCommit,
    ) -> Result<ServerFrame, HandlerError> {
        if !peer.verified {
            return Err(HandlerError::VerificationRequired("group_commit"));
        }
        let commit = decode_b64("commit", &c.commit)?;
        check_private("commit", &commit, &c.group_id, true, Some(c.epoch))?;
        if let Some(w) = &c.welcome {
            let welcome = decode_b64("welcome", w)?;
            if header::parse(&welcome) != Some(header::Header::Other(header::WELCOME)) {
                return Err(HandlerError::MlsFraming(
                    "welcome: not an MLS 1.0 Welcome".into(),
                ));
            }
        }
        let members: BTreeSet<ClientId> = c.members.iter().cloned().collect();
        if members.len() > MAX_GROUP_MEMBERS {
            return Err(HandlerError::GroupTooLarge {
                got: members.len(),
                max: MAX_GROUP_MEMBERS,
            });
        }
        // Each leaf is an MLS member: the same bound holds for them.
        let leaves: Option<BTreeSet<Leaf>> = c.leaves.map(|l| l.into_iter().collect());
        if let Some(leaves) = &leaves {
            if leaves.len() > MAX_GROUP_MEMBERS {
                return Err(HandlerError::GroupTooLarge {
                    got: leaves.len(),
                    max: MAX_GROUP_MEMBERS,
                });
            }
        }
        let commit_frame = member_frame(
            MlsKind::Commit,
            &c.group_id,
            Some(c.epoch),
            c.commit,
            &peer.id,
            &c.message_id,
        )?;
        let welcome_frame = c
            .welcome
            .map(|w| {
                member_frame(
                    MlsKind::Welcome,
                    &c.group_id,
                    Some(c.epoch.saturating_add(1)),
                    w,
                    &peer.id,
                    &c.message_id,
                )
            })
            .transpose()?;
        let op = CommitOp {
            group: &c.group_id,
            sender: &peer.id,
            sender_device: &peer.device,
            epoch: c.epoch,
            message_id: &c.message_id,
            members: &members,
            leaves: leaves.as_ref(),
            commit_frame: &commit_frame,
            welcome_frame: welcome_frame.as_deref(),
            max_groups_per_id: MAX_GROUPS_PER_ID,
        };
        let cfg = &self.state.config;
        let outcome = match self.state.node.clone() {
            Some(node) => {
                let outcome = node
                    .groups
                    .commit(&op, &cfg.mailbox_quota())
                    .await
                    .map_err(|e| self.redis_refusal(&c.group_id, c.epoch, &c.message_id, e))?;
                self.wake_cluster(&node, &outcome.copies).await;
                outcome
            }
            None => {
                let outcome = self
                    .state
                    .store
                    .group_commit(&op, &cfg.mailbox_quota(), cfg.mailbox_ttl)
                    .map_err(|e| self.group_refusal(&c.group_id, c.epoch, &c.message_id, e))?;
                self.wake(&outcome.copies);
                outcome
            }
        };
        debug!(group = %c.group_id, epoch = outcome.epoch, copies = outcome.recipients.len(), "commit accepted");
        Ok(ServerFrame::GroupCommitAccepted(GroupCommitAccepted {
            group_id: c.group_id,
            epoch: outcome.epoch,
            message_id: c.message_id,
        }))
    }

    pub(super) async fn on_group_message(
        &mut self,
        peer: &PeerEntry,
        m: GroupMessage,
    ) -> Result<ServerFrame, HandlerError> {
        if !peer.verified {
            return Err(HandlerError::VerificationRequired("group_message"));
        }
        let message = decode_b64("message", &m.message)?;
        check_private("message", &message, &m.group_id, false, None)?;
        let mid = m.message_id.unwrap_or_else(server_message_id);
        let frame = member_frame(
            MlsKind::Message,
            &m.group_id,
            None,
            m.message,
            &peer.id,
            &mid,
        )?;
        let cfg = &self.state.config;
        let sending = Leaf {
            client_id: peer.id.clone(),
            device_id: peer.device.clone(),
        };
        let recipients = match self.state.node.clone() {
            Some(node) => {
                let recipients = node
                    .groups
                    .send(&m.group_id, &sending, &mid, &frame, &cfg.mailbox_quota())
                    .await
                    .map_err(|e| self.redis_refusal(&m.group_id, 0, &mid, e))?;
                self.wake_cluster(&node, &recipients).await;
                recipients.len()
            }
            None => {
                let recipients = self
                    .state
                    .store
                    .group_send(
                        &m.group_id,
                        &sending,
                        &mid,
                        &frame,
                        &cfg.mailbox_quota(),
                        cfg.mailbox_ttl,
                    )
                    .map_err(|e| self.group_refusal(&m.group_id, 0, &mid, e))?;
                self.wake(&recipients);
                recipients.len()
            }
        };
        Ok(ServerFrame::GroupMessageAccepted(GroupMessageAccepted {
            group_id: m.group_id,
            message_id: mid,
            recipients: u32::try_from(recipients).unwrap_or(u32::MAX),
        }))
    }

    /// Wakes every online recipient device's mailbox drain (its copy is committed).
    fn wake(&self, recipients: &[MailboxKey]) {
        for r in recipients {
            Metrics::inc(&self.state.metrics.messages_queued);
            if let Some(entry) = self.state.hub.device(r.id(), r.device()) {
                entry.session.notify_mail();
            }
        }
    }

    /// On several nodes: wakes every device mailbox that got a copy, on whichever node holds
    /// the device (its copy is in its mailbox stream).
    async fn wake_cluster(&self, node: &Node, copies: &[MailboxKey]) {
        let mut by_id: BTreeMap<&ClientId, Vec<DeviceId>> = BTreeMap::new();
        for k in copies {
            Metrics::inc(&self.state.metrics.messages_queued);
            by_id.entry(k.id()).or_default().push(k.device().clone());
        }
        for (id, devices) in by_id {
            node.notify_mail(self.state.hub.as_ref(), id, &devices)
                .await;
        }
    }

    /// The answer to a group operation Redis refused or failed: the same refusals as on SQLite,
    /// `INTERNAL_ERROR` when Redis fails.
    fn redis_refusal(
        &self,
        group: &GroupId,
        got: u64,
        mid: &MessageId,
        e: RedisGroupError,
    ) -> HandlerError {
        match e {
            RedisGroupError::Refused(e) => self.group_refusal(group, got, mid, e),
            RedisGroupError::Redis(e) => {
                warn!(error = %e, %group, "group delivery failed");
                HandlerError::ClusterUnavailable
            }
        }
    }

    fn group_refusal(
        &self,
        group: &GroupId,
        got: u64,
        mid: &MessageId,
        e: GroupError,
    ) -> HandlerError {
        match e {
            GroupError::NotAMember => HandlerError::NotAMember(group.clone()),
            GroupError::StaleEpoch { current } => HandlerError::StaleEpoch {
                group: group.clone(),
                got,
                current,
            },
            GroupError::FutureEpoch { current } => HandlerError::FutureEpoch {
                group: group.clone(),
                got,
                current,
            },
            GroupError::UnknownMember(id) => HandlerError::PeerNotFound(id),
            GroupError::TooManyGroups { member, max } => {
                HandlerError::TooManyGroups { member, max }
            }
            GroupError::WelcomeMissing => {
                HandlerError::WelcomeMismatch("The Commit adds members but carries no welcome")
            }
            GroupError::WelcomeUnexpected => HandlerError::WelcomeMismatch(
                "The Commit carries a welcome but its member list adds nobody",
            ),
            GroupError::MessageIdReused => HandlerError::MessageIdReused(mid.clone()),
            GroupError::UnknownDevice(leaf) => HandlerError::UnknownDevice(format!(
                "{} has no device {} (not on its device list)",
                leaf.client_id, leaf.device_id
            )),
            GroupError::LeavesMismatch(why) => {
                HandlerError::LeavesMismatch(format!("leaves: {why}"))
            }
            GroupError::MailboxFull { recipient, limit } => HandlerError::MailboxFull {
                target: recipient,
                limit,
                bound: self.state.config.mailbox_quota().bound(limit),
            },
            GroupError::Store(e) => {
                warn!(error = %e, %group, "group delivery failed");
                HandlerError::StorageUnavailable
            }
        }
    }
}
