//! The session's part of groups: on the event path, a group message or a membership change is
//! stored (before the library acknowledges it to the server, like a 1:1 message) and goes up as
//! [`SessionEvent::GroupLine`] / [`SessionEvent::GroupsChanged`]; the group outbox
//! ([`group_outbox_task`]) sends our group messages in order, and [`Groups`] is the cheap
//! handle the messenger calls the library through (create, invite, remove, rename, leave,
//! member list).
//!
//! The group outbox is the rows of `group_messages` that are ours and still `pending`: a
//! message written offline, or while the app was killed, goes out on the next connection.
//! The library answers a group send once the server took it for every member (the delivery
//! service fans it out into their mailboxes), so `sent` is the last state it reports; there is
//! no per-member delivery or read state in groups. Our edits, deletes and reactions wait in a
//! queue of their own (`group_changes`) and go after the messages of the same round, with the
//! same rules: kept across reconnects and restarts until the server takes them, a permanent
//! refusal told and dropped.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use lattice_peer::content::MessageRef;
use lattice_peer::{
    Change, Content, ContentUpdate, GroupChange, GroupId, GroupMessage, MessagingPeer, PeerError,
    ReactionAction,
};
use lattice_protocol::ClientId;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{Ctx, SessionError};
use crate::clock::now_ms;
use crate::contract::{DeliveryStatus, ErrorKind};
use crate::describe::{self, describe};
use crate::events::SessionEvent;
use crate::storage::content::ReplyRef;
use crate::storage::groups::{GroupLine, GroupLineKind, NewGroupLine};
use crate::views::Notice;

/// Group messages read from the outbox per round (the next round reads the rest).
const GROUP_OUTBOX_BATCH: u32 = 64;
/// After a transient failure (timeout, rate limit), the outbox tries again this much later
/// while connected; a reconnect or a new message wakes it sooner.
const GROUP_RETRY: Duration = Duration::from_secs(5);
/// Leave requests remembered (to say "left" rather than "removed"), at most; past this the
/// memory starts over and a leave reads as a removal by the member who committed it.
const LEAVING_REMEMBERED: usize = 256;

/// The group id as the page and the history name it: lowercase hex.
pub fn group_key(group: &GroupId) -> String {
    group.to_string()
}

/// A cheap handle on the peer's group calls, taken without the session's lock (see
/// [`super::Session::groups`]).
#[derive(Clone)]
pub struct Groups(Arc<Ctx>);

impl std::fmt::Debug for Groups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Groups").finish_non_exhaustive()
    }
}

impl Groups {
    pub(super) fn new(ctx: Arc<Ctx>) -> Self {
        Self(ctx)
    }

    fn peer(&self) -> &MessagingPeer {
        &self.0.peer
    }

    /// Tells the group's other members (and our other devices) that we read up to `up_to`
    /// (nothing goes while read receipts are off: the peer drops it). The peer keeps it
    /// waiting behind queued group messages; a failure is logged, the next read sends a newer
    /// mark.
    pub async fn mark_read(&self, group: &GroupId, up_to: &lattice_peer::MessageRef) {
        if let Err(e) = self.peer().mark_group_read(group, up_to).await {
            tracing::warn!(group = %hex::encode(group.as_bytes()), error = %e, "cannot send a group read receipt");
        }
    }

    /// Tells the group's members that the user started (`true`) or stopped typing; the library
    /// paces it ([`lattice_peer::defaults::GROUP_TYPING_RESEND`]) and sends nothing in a large
    /// group. A failure is logged: typing is best effort.
    pub async fn typing(&self, group: &GroupId, started: bool) {
        if let Err(e) = self.peer().group_typing(group, started).await {
            tracing::debug!(group = %hex::encode(group.as_bytes()), error = %e, "cannot send a group typing notice");
        }
    }

    /// Whether group read receipts are sent (and others' shown): the app's read-receipt setting.
    pub fn set_read_receipts(&self, on: bool) {
        self.peer().set_read_receipts(on);
    }

    /// Creates a group named `name` with `members` (KeyPackages fetched, each checked against
    /// the member's pinned identity key).
    ///
    /// # Errors
    /// [`SessionError::Peer`], e.g. `NO_KEY_PACKAGE` for a member whose app cannot join groups.
    pub async fn create(&self, name: &str, members: &[ClientId]) -> Result<GroupId, SessionError> {
        Ok(self.peer().create_group(name, members).await?)
    }

    /// Adds `members` to `group`.
    ///
    /// # Errors
    /// [`SessionError::Peer`].
    pub async fn invite(&self, group: &GroupId, members: &[ClientId]) -> Result<(), SessionError> {
        Ok(self.peer().invite_to_group(group, members).await?)
    }

    /// Removes `member` from `group` (the group's keys rotate with it).
    ///
    /// # Errors
    /// [`SessionError::Peer`].
    pub async fn remove(&self, group: &GroupId, member: &ClientId) -> Result<(), SessionError> {
        Ok(self
            .peer()
            .remove_from_group(group, std::slice::from_ref(member))
            .await?)
    }

    /// Renames `group`.
    ///
    /// # Errors
    /// [`SessionError::Peer`].
    pub async fn rename(&self, group: &GroupId, name: &str) -> Result<(), SessionError> {
        Ok(self.peer().rename_group(group, name).await?)
    }

    /// Asks to leave `group` (another member commits it).
    ///
    /// # Errors
    /// [`SessionError::Peer`].
    pub async fn leave(&self, group: &GroupId) -> Result<(), SessionError> {
        self.0.note_leaving(group);
        Ok(self.peer().leave_group(group).await?)
    }

    /// The group's name, epoch and members with their safety numbers.
    ///
    /// # Errors
    /// [`SessionError::Peer`] (`UnknownGroup` once this device is out of it).
    pub fn info(&self, group: &GroupId) -> Result<lattice_peer::GroupInfo, SessionError> {
        Ok(self.peer().group_info(group)?)
    }

    /// Wakes the group outbox (a message was queued).
    pub fn wake(&self) {
        self.0.group_wake.notify_one();
    }
}

/// Who asked to leave which group, so that the removal that follows reads "left".
#[derive(Debug, Default)]
pub(super) struct Leaving(HashSet<(String, ClientId)>);

impl Leaving {
    fn note(&mut self, group: &str, member: &ClientId) {
        if self.0.len() >= LEAVING_REMEMBERED {
            self.0.clear();
        }
        self.0.insert((group.to_owned(), member.clone()));
    }

    fn take(&mut self, group: &str, member: &ClientId) -> bool {
        self.0.remove(&(group.to_owned(), member.clone()))
    }
}

/// `a`, `a and b`, `a, b and c`.
fn names(ids: &[&ClientId]) -> String {
    match ids {
        [] => String::new(),
        [one] => one.to_string(),
        [init @ .., last] => format!(
            "{} and {last}",
            init.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

impl Ctx {
    /// Stores a line of `group`'s history and sends it up; a failure to store is told.
    fn group_line(&self, group: &str, kind: GroupLineKind, sender: Option<&ClientId>, body: &str) {
        let message_id = uuid::Uuid::new_v4().to_string();
        let line = NewGroupLine {
            group_id: group,
            kind,
            sender,
            message_id: &message_id,
            outgoing: false,
            body,
            at: now_ms(),
            status: DeliveryStatus::Received,
        };
        self.store_group_line(&line);
    }

    fn store_group_line(&self, line: &NewGroupLine<'_>) {
        self.stored_group_line(line.group_id, self.db.insert_group_line(line));
    }

    /// What storing a line of `group` gave: the line up, or a failure told.
    fn stored_group_line(
        &self,
        group: &str,
        stored: Result<Option<crate::storage::groups::GroupLine>, crate::storage::StorageError>,
    ) {
        match stored {
            Ok(Some(stored)) => self.up(SessionEvent::GroupLine(stored)),
            Ok(None) => tracing::debug!(group, "group message already stored"),
            Err(e) => {
                tracing::error!(group, error = %e, "cannot store a group line");
                self.up(SessionEvent::Notice(Notice::new(
                    ErrorKind::Storage,
                    format!("A group message could not be saved: {e}"),
                )));
            }
        }
    }

    /// Makes sure the group is in the history (named from the library when it is new: our own
    /// group's first events arrive before `create_group` returns). Returns its key, and
    /// whether it was new.
    fn known_group(&self, group: &GroupId, name: Option<&str>) -> (String, bool) {
        let key = group_key(group);
        let name = match name {
            Some(n) => n.to_owned(),
            None => match self.db.group_known(&key) {
                Ok(true) => return (key, false),
                _ => self
                    .peer
                    .group_info(group)
                    .map(|i| i.name)
                    .unwrap_or_else(|_| "Group".to_owned()),
            },
        };
        match self.db.ensure_group(&key, &name, now_ms()) {
            Ok(new) => {
                if new {
                    self.up(SessionEvent::GroupsChanged);
                }
                (key, new)
            }
            Err(e) => {
                tracing::error!(group = %key, error = %e, "cannot store a group");
                (key, false)
            }
        }
    }

    /// A message in a group, stored before the library acknowledges it.
    pub(super) fn on_group_message(&self, m: &GroupMessage) {
        let (key, _) = self.known_group(&m.group, None);
        // The sender's clock, but never in the future of ours (it is not checked).
        let at = i64::try_from(m.sent_at)
            .ok()
            .filter(|t| *t > 0)
            .map_or_else(now_ms, |t| t.min(now_ms()));
        let (text, reply) = match &m.content {
            Content::Text(t) => (t.as_str(), None),
            Content::Reply { to, excerpt, text } => (
                text.as_str(),
                Some(ReplyRef {
                    sender: to.sender.clone(),
                    message_id: to.message_id.clone(),
                    excerpt: excerpt.clone(),
                }),
            ),
            Content::File(offer) => return self.on_group_file(&key, m, offer, at),
            // A group file's digest follows its offer; the library keeps it for the download.
            Content::FileDigest { .. } => return,
            other => {
                tracing::debug!(group = %key, kind = other.kind(), "group content not shown");
                return;
            }
        };
        let line = NewGroupLine {
            group_id: &key,
            kind: GroupLineKind::Message,
            sender: Some(&m.from),
            message_id: m.message_id.as_str(),
            outgoing: false,
            body: text,
            at,
            status: DeliveryStatus::Received,
        };
        match reply {
            Some(reply) => self.store_group_reply(&line, &reply),
            None => self.store_group_line(&line),
        }
    }

    fn store_group_reply(&self, line: &NewGroupLine<'_>, reply: &ReplyRef) {
        self.stored_group_line(line.group_id, self.db.insert_group_reply(line, reply));
    }

    /// An edit, a delete or a reaction in a group, checked by the library against the group's
    /// history (the author of an edit or a delete is the member MLS authenticated): applied
    /// to the stored line before the library acknowledges it, and the line goes up. One that
    /// finds nothing to change here (a line this device never had, a tombstone, a replay) is
    /// ignored quietly.
    /// Another device of ours read the group: nothing is unread here either.
    pub(super) fn on_group_read_elsewhere(&self, group: &GroupId) {
        let key = group_key(group);
        match self.db.mark_group_read(&key) {
            Ok(()) => self.up(SessionEvent::GroupReadElsewhere),
            Err(e) => {
                tracing::warn!(group = %key, error = %e, "cannot clear a group's unread count")
            }
        }
    }

    pub(super) fn on_group_update(&self, group: &GroupId, u: &ContentUpdate) {
        let key = group_key(group);
        let from = &u.from;
        let at = i64::try_from(u.sent_at).unwrap_or(i64::MAX);
        let changed = match &u.change {
            Change::Edited { target, text } => {
                self.db
                    .apply_group_edit(&key, from, target.as_str(), text, at)
            }
            Change::Deleted { target } => self.db.apply_group_delete(&key, from, target.as_str()),
            Change::Reaction {
                target,
                emoji,
                action,
            } => self.db.set_group_reaction(
                &key,
                &target.sender,
                target.message_id.as_str(),
                from,
                emoji,
                *action == ReactionAction::Add,
                at,
            ),
            other => {
                tracing::debug!(group = %key, kind = other.kind(), "group change not shown");
                return;
            }
        };
        match changed {
            Ok(Some(line)) => self.up(SessionEvent::GroupLineChanged(line)),
            Ok(None) => {
                tracing::debug!(group = %key, from = %from, kind = u.change.kind(), "group change found nothing to change");
            }
            Err(e) => {
                tracing::error!(group = %key, from = %from, error = %e, "cannot store a group change");
                self.up(SessionEvent::Notice(Notice::new(
                    ErrorKind::Storage,
                    format!("A change in a group could not be saved: {e}"),
                )));
            }
        }
    }

    /// A membership or name change: a system line, and the list when the group changed.
    pub(super) fn on_group_changed(
        &self,
        group: &GroupId,
        by: Option<&ClientId>,
        change: &GroupChange,
    ) {
        let joined_name = match change {
            GroupChange::Joined { name, .. } => Some(name.as_str()),
            _ => None,
        };
        let (key, new) = self.known_group(group, joined_name);
        let me = &self.me;
        let by_me = by == Some(me);
        let who = |id: Option<&ClientId>| match id {
            Some(id) if id == me => "You".to_owned(),
            Some(id) => id.to_string(),
            None => "Someone".to_owned(),
        };
        let leaving = |member: &ClientId| {
            self.leaving
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take(&key, member)
        };
        let line = match change {
            GroupChange::Joined { .. } => {
                if !new {
                    // Added again after leaving.
                    if let Err(e) = self.db.set_group_left(&key, false) {
                        tracing::warn!(group = %key, error = %e, "cannot mark a group joined");
                    }
                    self.up(SessionEvent::GroupsChanged);
                }
                Some(format!("{} added you to the group", who(by)))
            }
            GroupChange::MembersAdded(added) => {
                let added: Vec<&ClientId> = added.iter().filter(|m| *m != me).collect();
                if added.is_empty() {
                    None
                } else if by_me && new {
                    Some(format!("You created the group with {}", names(&added)))
                } else {
                    Some(format!("{} added {}", who(by), names(&added)))
                }
            }
            // Our own removal: the `Removed` that comes with it says it.
            GroupChange::MemberRemoved(member) if member == me => None,
            GroupChange::MemberRemoved(member) => {
                if leaving(member) || by == Some(member) {
                    Some(format!("{member} left the group"))
                } else {
                    Some(format!("{} removed {member}", who(by)))
                }
            }
            GroupChange::LeaveRequested(member) => {
                self.leaving
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .note(&key, member);
                None
            }
            GroupChange::Renamed(name) => {
                if let Err(e) = self.db.rename_group(&key, name) {
                    tracing::warn!(group = %key, error = %e, "cannot rename a group");
                }
                self.up(SessionEvent::GroupsChanged);
                Some(format!(
                    "{} renamed the group to \u{201c}{name}\u{201d}",
                    who(by)
                ))
            }
            GroupChange::Removed => {
                if let Err(e) = self.db.set_group_left(&key, true) {
                    tracing::warn!(group = %key, error = %e, "cannot mark a group left");
                }
                self.up(SessionEvent::GroupsChanged);
                if leaving(me) {
                    Some("You left the group".to_owned())
                } else {
                    Some(format!("{} removed you from the group", who(by)))
                }
            }
            // A member's linked device joined or was removed (docs/mls.md, Multi-device): said,
            // since a new device reads what follows.
            GroupChange::DeviceAdded { member, device } if member == me => Some(format!(
                "Your device \u{201c}{device}\u{201d} joined the group"
            )),
            GroupChange::DeviceAdded { member, device } => Some(format!(
                "{member}\u{2019}s device \u{201c}{device}\u{201d} joined the group"
            )),
            GroupChange::DeviceRemoved { member, device } if member == me => Some(format!(
                "Your device \u{201c}{device}\u{201d} was removed from the group"
            )),
            GroupChange::DeviceRemoved { member, device } => Some(format!(
                "{member}\u{2019}s device \u{201c}{device}\u{201d} was removed from the group"
            )),
            // Routine key rotation (healing) and epochs are not the person's concern.
            GroupChange::MemberUpdated(member) => {
                tracing::debug!(group = %key, member = %member, "member rotated its keys");
                None
            }
            _ => None,
        };
        if let Some(body) = line {
            self.group_line(&key, GroupLineKind::System, by, &body);
        }
    }

    /// We asked to leave `group`: the removal that follows reads "You left".
    fn note_leaving(&self, group: &GroupId) {
        self.leaving
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .note(&group_key(group), &self.me);
    }

    /// A contact's identity key changed: a system line in every group it is in.
    pub(super) fn group_key_changed(&self, peer: &ClientId) {
        let Ok(groups) = self.peer.groups_list() else {
            return;
        };
        for g in groups {
            let member = self
                .peer
                .group_info(&g)
                .is_ok_and(|i| i.members.iter().any(|m| &m.client_id == peer));
            if member {
                let (key, _) = self.known_group(&g, None);
                self.group_line(
                    &key,
                    GroupLineKind::System,
                    Some(peer),
                    &format!("{peer}'s safety number changed"),
                );
            }
        }
    }
}

/// Sends the group outbox whenever woken (a new message, a (re)connection), oldest first, one
/// at a time: a transient failure stops the round (tried again after [`GROUP_RETRY`] or the
/// next wake), a permanent one fails that message and goes on.
pub(super) async fn group_outbox_task(ctx: Arc<Ctx>, wake: Arc<Notify>, cancel: CancellationToken) {
    let mut retry = false;
    loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            () = wake.notified() => {}
            () = tokio::time::sleep(GROUP_RETRY), if retry => {}
        }
        if ctx.peer.connection_state() != lattice_peer::ConnectionState::Connected {
            retry = false;
            continue;
        }
        retry = tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            r = send_group_outbox(&ctx) => r,
        };
    }
}

/// One round of the group outbox: our messages, then our edits, deletes and reactions (which
/// may name a message sent just before). Returns whether to try again later (a transient
/// failure).
async fn send_group_outbox(ctx: &Ctx) -> bool {
    send_group_messages(ctx).await || send_group_changes(ctx).await
}

/// What a queued line of ours says on the wire: its text, or a reply quoting the message it
/// answers.
fn line_content(line: &GroupLine) -> Content {
    match &line.extra.reply {
        Some(reply) => Content::Reply {
            to: MessageRef {
                sender: reply.to.sender.clone(),
                message_id: reply.to.message_id.clone(),
            },
            excerpt: reply.to.excerpt.clone(),
            text: line.body.clone(),
        },
        None => Content::Text(line.body.clone()),
    }
}

/// A permanent refusal of something we sent to a group, told.
async fn group_refused(ctx: &Ctx, what: &str, e: &PeerError) {
    ctx.up_async(SessionEvent::Notice(Notice {
        kind: ErrorKind::MessageFailed,
        code: Some(describe::code(e)),
        message: format!("{what} to the group was not sent: {}", describe(e)),
    }))
    .await;
}

/// Our queued group changes, oldest first. Returns whether to try again later.
async fn send_group_changes(ctx: &Ctx) -> bool {
    loop {
        let waiting = match ctx.db.group_changes(GROUP_OUTBOX_BATCH) {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the group changes");
                return true;
            }
        };
        if waiting.is_empty() {
            return false;
        }
        for change in waiting {
            let result = match parse_key(&change.group_id) {
                Some(gid) => ctx.peer.send_group_content(&gid, &change.content).await,
                None => Err(PeerError::UnknownGroup(change.group_id.clone())),
            };
            match result {
                Ok(_) => {}
                Err(e) if e.is_transient() => {
                    tracing::debug!(group = %change.group_id, id = change.id, error = %e, "group change waits");
                    return true;
                }
                Err(e) => {
                    tracing::warn!(group = %change.group_id, id = change.id, kind = change.content.kind(), error = %e, "group change refused");
                    group_refused(ctx, "A change", &e).await;
                }
            }
            if let Err(e) = ctx.db.group_change_done(change.id) {
                // Still queued: it would be sent again; stop rather than repeat it.
                tracing::error!(id = change.id, error = %e, "cannot record a group change sent");
                return true;
            }
        }
    }
}

/// Our queued group messages, oldest first. Returns whether to try again later.
async fn send_group_messages(ctx: &Ctx) -> bool {
    loop {
        let waiting = match ctx.db.group_outbox(GROUP_OUTBOX_BATCH) {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the group outbox");
                return true;
            }
        };
        if waiting.is_empty() {
            return false;
        }
        for line in waiting {
            let result = match parse_key(&line.group_id) {
                Some(gid) => {
                    ctx.peer
                        .send_group_content(&gid, &line_content(&line))
                        .await
                }
                None => Err(PeerError::UnknownGroup(line.group_id.clone())),
            };
            let recorded = match result {
                // Its wire id is kept with it: others' replies, reactions and our edits name it.
                Ok(wire_id) => ctx.db.mark_group_sent(line.seq, &wire_id),
                Err(e) if e.is_transient() => {
                    tracing::debug!(group = %line.group_id, seq = line.seq, error = %e, "group message waits");
                    return true;
                }
                Err(e) => {
                    tracing::warn!(group = %line.group_id, seq = line.seq, error = %e, "group message refused");
                    group_refused(ctx, "A message", &e).await;
                    ctx.db
                        .advance_group_status(line.seq, DeliveryStatus::Failed)
                }
            };
            match recorded {
                Ok(Some(line)) => ctx.up_async(SessionEvent::GroupLine(line)).await,
                Ok(None) => {}
                Err(e) => {
                    // Not moved on: it would be sent again; stop rather than repeat it.
                    tracing::error!(seq = line.seq, error = %e, "cannot record a group send");
                    return true;
                }
            }
        }
    }
}

/// A group id from its hex key (as stored); `None` if it is not hex.
pub fn parse_key(key: &str) -> Option<GroupId> {
    hex::decode(key).ok().map(|b| GroupId::from_bytes(&b))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_read_as_a_sentence() {
        let a = ClientId::new("a").unwrap();
        let b = ClientId::new("b").unwrap();
        let c = ClientId::new("c").unwrap();
        assert_eq!(names(&[&a]), "a");
        assert_eq!(names(&[&a, &b]), "a and b");
        assert_eq!(names(&[&a, &b, &c]), "a, b and c");
    }

    #[test]
    fn group_keys_round_trip_and_junk_is_refused() {
        let g = GroupId::from_bytes(&[0xab, 0x01]);
        assert_eq!(group_key(&g), "ab01");
        assert_eq!(parse_key("ab01"), Some(g));
        assert_eq!(parse_key("zz"), None);
    }
}
