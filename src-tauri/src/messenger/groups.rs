//! Groups, the messenger's part: the *New group* action, a group's history and composer, its
//! member panel (invite, remove, rename, leave) and applying what the session stored (messages,
//! system lines, our sends moving on) to the page, the tray and the notification centre.
//!
//! The page names a group by its hex id ([`parse_group_id`], checked once here); members by
//! their client ids (checked by the command). The MLS work is the library's; this layer checks
//! what the person asked for first, so a member who cannot join gets a sentence naming them
//! before anything is sent.

use std::sync::atomic::Ordering;

use lattice_peer::content::{MessageRef, ReactionAction};
use lattice_peer::Content;
use lattice_protocol::{ClientId, MessageId};

use super::{lock, notification_text, Messenger, MessengerError, State, Update};
use crate::clock::now_ms;
use crate::contract::DeliveryStatus;
use crate::session::{group_key, parse_key, Groups};
use crate::storage::content::ReplyRef;
use crate::storage::groups::{is_group_key, GroupLine, GroupLineKind, NewGroupLine};
use crate::storage::{self, StorageError};
use crate::views::{
    GroupDetailsView, GroupMemberView, GroupMessageView, GroupPage, GroupView, VersionView,
};

/// Most members one *New group* or *Invite* names: the group's cap, less ourselves.
pub const MAX_GROUP_INVITE: usize = lattice_protocol::limits::MAX_GROUP_MEMBERS - 1;
/// Said when a group change needs the session and there is none.
const GROUP_OFFLINE: &str = "Connect to the server to change a group.";

/// A group id from the page: lowercase hex, as stored ([`is_group_key`]).
///
/// # Errors
/// [`MessengerError::InvalidInput`].
pub fn parse_group_id(id: &str) -> Result<String, MessengerError> {
    if is_group_key(id) {
        Ok(id.to_owned())
    } else {
        Err(MessengerError::InvalidInput("That is not a group.".into()))
    }
}

/// A group name from the person: trimmed, not empty, no control characters, at most the MLS
/// bound in bytes.
fn check_group_name(name: &str) -> Result<String, MessengerError> {
    let name = name.trim();
    let max = lattice_mls::limits::MAX_GROUP_NAME_LEN;
    if name.is_empty() {
        return Err(MessengerError::InvalidInput(
            "Give the group a name.".into(),
        ));
    }
    if name.len() > max {
        return Err(MessengerError::InvalidInput(format!(
            "That name is too long: at most {max} bytes."
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(MessengerError::InvalidInput(
            "A group name cannot contain control characters or line breaks.".into(),
        ));
    }
    Ok(name.to_owned())
}

impl Messenger {
    /// The group calls of the running session.
    fn group_calls(&self) -> Result<Groups, MessengerError> {
        lock(&self.state.live)
            .groups
            .clone()
            .ok_or(MessengerError::Offline(GROUP_OFFLINE))
    }

    /// A known group's key, or a readable refusal.
    pub(super) fn known_group(&self, group: &str) -> Result<String, MessengerError> {
        let key = parse_group_id(group)?;
        if self.state.db.group_known(&key)? {
            Ok(key)
        } else {
            Err(MessengerError::InvalidInput(
                "That group is not known here.".into(),
            ))
        }
    }

    /// Members the person picked: not empty, not too many, not ourselves, and none known as an
    /// original (`ml-kem-aes`) client, which cannot take part in MLS.
    fn check_members(&self, members: &[ClientId]) -> Result<Vec<ClientId>, MessengerError> {
        let me = self.me_id()?;
        let mut out: Vec<ClientId> = members.iter().filter(|m| **m != me).cloned().collect();
        out.sort();
        out.dedup();
        if out.is_empty() {
            return Err(MessengerError::InvalidInput(
                "Pick at least one person other than yourself.".into(),
            ));
        }
        if out.len() > MAX_GROUP_INVITE {
            return Err(MessengerError::InvalidInput(format!(
                "A group has at most {} members.",
                MAX_GROUP_INVITE + 1
            )));
        }
        for m in &out {
            if let Some(p) = self.state.db.peer(m)? {
                if p.sent_unsigned && p.identity_key.is_none() {
                    return Err(MessengerError::InvalidInput(format!(
                        "{m} uses an original Lattice client, which cannot join groups."
                    )));
                }
            }
        }
        Ok(out)
    }

    /// Creates a group named `name` with `members`; its conversation is in the list when this
    /// returns.
    ///
    /// # Errors
    /// [`MessengerError::InvalidInput`] (a name or member list that cannot be, an original
    /// client), [`MessengerError::Offline`], [`MessengerError::Session`] (e.g. a member whose
    /// app has published no group keys).
    pub async fn create_group(
        &self,
        name: &str,
        members: &[ClientId],
    ) -> Result<GroupView, MessengerError> {
        let name = check_group_name(name)?;
        let members = self.check_members(members)?;
        let calls = self.group_calls()?;
        let gid = calls.create(&name, &members).await?;
        let key = group_key(&gid);
        // The session stored it already from the Commit's events; this is for the rare case
        // they were not raised.
        self.state.db.ensure_group(&key, &name, now_ms())?;
        tracing::info!(group = %key, members = members.len(), "group created");
        self.state.publish_groups();
        self.state
            .db
            .group(&key)?
            .map(GroupView::from)
            .ok_or(MessengerError::Storage(StorageError::Missing("group")))
    }

    /// Stores a message to `group` (durable before this returns, `pending`) and wakes the
    /// group outbox to send it.
    ///
    /// # Errors
    /// [`MessengerError::InvalidInput`] (an empty or oversized text, an unknown group, a group
    /// this device left), [`MessengerError::Storage`].
    pub fn send_group_message(
        &self,
        group: &str,
        text: &str,
        reply_to: Option<i64>,
    ) -> Result<GroupMessageView, MessengerError> {
        let me = self.me_id()?;
        super::check_text(text)?;
        let key = self.group_in(group)?;
        let reply = match reply_to {
            Some(seq) => {
                let target = self.referable_line(&key, seq)?;
                Some(ReplyRef {
                    sender: line_author(&target)?,
                    message_id: line_wire_id(&target)?,
                    excerpt: lattice_peer::content::excerpt(&target.body),
                })
            }
            None => None,
        };
        let local_id = uuid::Uuid::new_v4().to_string();
        let line = NewGroupLine {
            group_id: &key,
            kind: GroupLineKind::Message,
            sender: Some(&me),
            message_id: &local_id,
            outgoing: true,
            body: text,
            at: now_ms(),
            status: DeliveryStatus::Pending,
        };
        let stored = match &reply {
            Some(reply) => {
                // The bounds of a reply (the quote's length) are checked before it is stored.
                reply
                    .content(text.to_owned())
                    .map_err(|e| MessengerError::InvalidInput(format!("{e}.")))?;
                self.state.db.insert_group_reply(&line, reply)?
            }
            None => self.state.db.insert_group_line(&line)?,
        }
        .ok_or(MessengerError::Storage(StorageError::Missing(
            "group message",
        )))?;
        self.wake_group_outbox();
        self.state.publish_groups();
        Ok(self.state.group_message_view(stored))
    }

    fn wake_group_outbox(&self) {
        if let Some(calls) = lock(&self.state.live).groups.as_ref() {
            calls.wake();
        }
    }

    /// A known group this device is still in.
    fn group_in(&self, group: &str) -> Result<String, MessengerError> {
        let key = self.known_group(group)?;
        if self.state.db.group(&key)?.is_some_and(|g| g.left) {
            return Err(MessengerError::InvalidInput(
                "You are no longer in this group.".into(),
            ));
        }
        Ok(key)
    }

    /// A message line of group `key` that can be replied or reacted to: not a system line,
    /// not a tombstone, and named on the wire (ours once the server took it).
    fn referable_line(&self, key: &str, seq: i64) -> Result<GroupLine, MessengerError> {
        let line = self
            .state
            .db
            .group_line(key, seq)?
            .filter(|l| l.kind == GroupLineKind::Message)
            .ok_or_else(|| MessengerError::InvalidInput("That message is gone.".into()))?;
        if line.extra.deleted {
            return Err(MessengerError::InvalidInput(
                "That message was deleted.".into(),
            ));
        }
        Ok(line)
    }

    /// One of our lines of group `key` that may still be edited or deleted for everyone.
    fn own_group_line(&self, key: &str, seq: i64) -> Result<GroupLine, MessengerError> {
        let line = self.referable_line(key, seq)?;
        if !line.outgoing {
            return Err(MessengerError::InvalidInput(
                "Only your own messages can be changed for everyone.".into(),
            ));
        }
        super::within_edit_window(line.at)?;
        Ok(line)
    }

    /// Replaces the text of one of our group messages (within the edit window) here and,
    /// through the group outbox, for every member; the earlier text is kept as a version.
    ///
    /// # Errors
    /// [`MessengerError::InvalidInput`] for a line that is not ours, deleted, too old or not
    /// sent yet, or an empty or oversized text; [`MessengerError::Storage`].
    pub fn edit_group_message(
        &self,
        group: &str,
        seq: i64,
        text: &str,
    ) -> Result<GroupMessageView, MessengerError> {
        let me = self.me_id()?;
        super::check_text(text)?;
        let key = self.group_in(group)?;
        let target = self.own_group_line(&key, seq)?;
        if target.body == text {
            return Ok(self.state.group_message_view(target));
        }
        let wire = line_wire_id(&target)?;
        let now = now_ms().max(target.extra.edited_at.map_or(0, |t| t + 1));
        let content = Content::Edit {
            target: wire.clone(),
            text: text.to_owned(),
        };
        self.state.db.enqueue_group_change(&key, &content, now)?;
        let line = self
            .state
            .db
            .apply_group_edit(&key, &me, wire.as_str(), text, now)?
            .ok_or_else(|| MessengerError::InvalidInput("That message cannot be edited.".into()))?;
        self.wake_group_outbox();
        self.state.publish_groups();
        Ok(self.state.group_message_view(line))
    }

    /// Deletes one of our group messages for everyone (within the edit window): a tombstone
    /// stays for every member, and goes to the page as a changed line. A group has no "delete
    /// for me".
    ///
    /// # Errors
    /// [`MessengerError::InvalidInput`] as [`Messenger::edit_group_message`], or not for
    /// everyone; [`MessengerError::Storage`].
    pub fn delete_group_message(
        &self,
        group: &str,
        seq: i64,
        for_everyone: bool,
    ) -> Result<(), MessengerError> {
        if !for_everyone {
            return Err(MessengerError::InvalidInput(
                "In a group, a message can only be deleted for everyone.".into(),
            ));
        }
        let me = self.me_id()?;
        let key = self.group_in(group)?;
        let target = self.own_group_line(&key, seq)?;
        let wire = line_wire_id(&target)?;
        self.state.db.enqueue_group_change(
            &key,
            &Content::Delete {
                target: wire.clone(),
            },
            now_ms(),
        )?;
        if let Some(line) = self.state.db.apply_group_delete(&key, &me, wire.as_str())? {
            self.state.group_line_changed(line);
        }
        self.wake_group_outbox();
        Ok(())
    }

    /// Reacts to a group message with `emoji`, or takes our reaction back when it is already
    /// that one (a toggle). One reaction per member per message.
    ///
    /// # Errors
    /// [`MessengerError::InvalidInput`] for an unknown, deleted or unsent message or an emoji
    /// that is not one; [`MessengerError::Storage`].
    pub fn react_in_group(
        &self,
        group: &str,
        seq: i64,
        emoji: &str,
    ) -> Result<GroupMessageView, MessengerError> {
        let me = self.me_id()?;
        let key = self.group_in(group)?;
        let target = self.referable_line(&key, seq)?;
        let author = line_author(&target)?;
        let wire = line_wire_id(&target)?;
        let mine = target
            .extra
            .reactions
            .iter()
            .any(|r| r.reactor == me.as_str() && r.emoji == emoji);
        let content = Content::Reaction {
            target: MessageRef {
                sender: author.clone(),
                message_id: wire.clone(),
            },
            emoji: emoji.to_owned(),
            action: if mine {
                ReactionAction::Remove
            } else {
                ReactionAction::Add
            },
        };
        content
            .validate()
            .map_err(|e| MessengerError::InvalidInput(format!("That is not a reaction: {e}.")))?;
        let now = now_ms();
        self.state.db.enqueue_group_change(&key, &content, now)?;
        let line = self
            .state
            .db
            .set_group_reaction(&key, &author, wire.as_str(), &me, emoji, !mine, now)?
            .unwrap_or(target);
        self.wake_group_outbox();
        Ok(self.state.group_message_view(line))
    }

    /// The earlier versions of an edited group message, oldest first.
    ///
    /// # Errors
    /// [`MessengerError::InvalidInput`], [`MessengerError::Storage`].
    pub fn group_message_versions(
        &self,
        group: &str,
        seq: i64,
    ) -> Result<Vec<VersionView>, MessengerError> {
        let key = self.known_group(group)?;
        Ok(self
            .state
            .db
            .group_versions(&key, seq)?
            .into_iter()
            .map(VersionView::from)
            .collect())
    }

    /// A page of `group`'s history, oldest first: the latest lines or those before `before`.
    ///
    /// # Errors
    /// [`MessengerError::InvalidInput`], [`MessengerError::Storage`].
    pub fn load_group_messages(
        &self,
        group: &str,
        before: Option<i64>,
        limit: u32,
    ) -> Result<GroupPage, MessengerError> {
        let key = self.known_group(group)?;
        let limit = limit.clamp(1, storage::db::MAX_PAGE);
        let mut lines = self.state.db.group_page(&key, before, limit + 1)?;
        let has_more = lines.len() > limit as usize;
        if has_more {
            lines.remove(0);
        }
        Ok(GroupPage {
            messages: lines
                .into_iter()
                .map(|l| self.state.group_message_view(l))
                .collect(),
            has_more,
        })
    }

    /// The group's conversation is shown: clears its unread count.
    ///
    /// # Errors
    /// [`MessengerError::InvalidInput`], [`MessengerError::Storage`].
    pub async fn mark_group_read(&self, group: &str) -> Result<(), MessengerError> {
        let key = self.known_group(group)?;
        self.state.db.mark_group_read(&key)?;
        self.state.publish_groups();
        self.state.publish_unread();
        // The read receipt names the newest message another member sent; the peer sends it
        // only when read receipts are on, and only forward.
        let newest = self.state.db.newest_incoming_group_line(&key)?;
        let calls = lock(&self.state.live).groups.clone();
        if let (Some(line), Some(calls), Some(id)) = (newest, calls, parse_key(&key)) {
            if let (Ok(sender), Ok(message_id)) = (line_author(&line), line_wire_id(&line)) {
                calls
                    .mark_read(&id, &lattice_peer::MessageRef { sender, message_id })
                    .await;
            }
        }
        Ok(())
    }

    /// The person is typing in `group` (`started`) or stopped: sent when typing indicators are
    /// on; the library paces it and sends nothing in a large group.
    ///
    /// # Errors
    /// [`MessengerError::InvalidInput`] (an unknown group), [`MessengerError::Storage`].
    pub async fn group_typing(&self, group: &str, started: bool) -> Result<(), MessengerError> {
        let key = self.group_in(group)?;
        if !self.settings().typing_indicators {
            return Ok(());
        }
        let calls = lock(&self.state.live).groups.clone();
        if let (Some(calls), Some(id)) = (calls, parse_key(&key)) {
            calls.typing(&id, started).await;
        }
        Ok(())
    }

    /// The member panel: the group, its members with their safety numbers, its epoch. A group
    /// this device is out of (or any group while offline) has no member list.
    ///
    /// # Errors
    /// [`MessengerError::InvalidInput`], [`MessengerError::Storage`].
    pub fn group_details(&self, group: &str) -> Result<GroupDetailsView, MessengerError> {
        let key = self.known_group(group)?;
        let record = self
            .state
            .db
            .group(&key)?
            .ok_or(MessengerError::Storage(StorageError::Missing("group")))?;
        let me = self.me_id()?;
        let info = match (self.group_calls(), parse_key(&key)) {
            (Ok(calls), Some(gid)) if !record.left => calls.info(&gid).ok(),
            _ => None,
        };
        let (members, epoch) = match info {
            Some(info) => (
                info.members
                    .into_iter()
                    .map(|m| GroupMemberView {
                        me: m.client_id == me,
                        fingerprint: m.fingerprint.to_string(),
                        id: m.client_id,
                    })
                    .collect(),
                info.epoch,
            ),
            None => (Vec::new(), 0),
        };
        Ok(GroupDetailsView {
            group: record.into(),
            members,
            epoch,
        })
    }

    fn group_for_change(
        &self,
        group: &str,
    ) -> Result<(Groups, lattice_peer::GroupId), MessengerError> {
        let key = self.known_group(group)?;
        if self.state.db.group(&key)?.is_some_and(|g| g.left) {
            return Err(MessengerError::InvalidInput(
                "You are no longer in this group.".into(),
            ));
        }
        let gid =
            parse_key(&key).ok_or(MessengerError::InvalidInput("That is not a group.".into()))?;
        Ok((self.group_calls()?, gid))
    }

    /// Adds `members` to `group`; returns the member panel as it is now.
    ///
    /// # Errors
    /// As [`Messenger::create_group`].
    pub async fn invite_to_group(
        &self,
        group: &str,
        members: &[ClientId],
    ) -> Result<GroupDetailsView, MessengerError> {
        let members = self.check_members(members)?;
        let (calls, gid) = self.group_for_change(group)?;
        calls.invite(&gid, &members).await?;
        self.group_details(group)
    }

    /// Removes `member` from `group`: the keys rotate, so it cannot read what follows.
    ///
    /// # Errors
    /// [`MessengerError::InvalidInput`] (ourselves: leave instead), as
    /// [`Messenger::create_group`].
    pub async fn remove_from_group(
        &self,
        group: &str,
        member: &ClientId,
    ) -> Result<GroupDetailsView, MessengerError> {
        if *member == self.me_id()? {
            return Err(MessengerError::InvalidInput(
                "To take yourself out of a group, leave it.".into(),
            ));
        }
        let (calls, gid) = self.group_for_change(group)?;
        calls.remove(&gid, member).await?;
        self.group_details(group)
    }

    /// Renames `group` for everyone in it.
    ///
    /// # Errors
    /// As [`Messenger::create_group`].
    pub async fn rename_group(
        &self,
        group: &str,
        name: &str,
    ) -> Result<GroupDetailsView, MessengerError> {
        let name = check_group_name(name)?;
        let (calls, gid) = self.group_for_change(group)?;
        calls.rename(&gid, &name).await?;
        self.group_details(group)
    }

    /// Asks to leave `group`; another member commits it, and the conversation shows "You left
    /// the group" when that arrives.
    ///
    /// # Errors
    /// As [`Messenger::create_group`].
    pub async fn leave_group(&self, group: &str) -> Result<(), MessengerError> {
        let (calls, gid) = self.group_for_change(group)?;
        calls.leave(&gid).await?;
        Ok(())
    }
}

/// Who wrote a group line, as a reply or a reaction names it.
fn line_author(line: &GroupLine) -> Result<ClientId, MessengerError> {
    ClientId::try_from(line.sender.clone())
        .map_err(|_| MessengerError::InvalidInput("That message cannot be referred to.".into()))
}

/// The id a group line went (or came) with: what replies, edits, deletes and reactions name.
fn line_wire_id(line: &GroupLine) -> Result<MessageId, MessengerError> {
    line.extra
        .wire_id
        .as_deref()
        .and_then(|id| MessageId::new(id).ok())
        .ok_or_else(|| {
            MessengerError::InvalidInput(if line.outgoing && line.status == DeliveryStatus::Pending {
                "That message is not sent yet: it can be referred to once it is.".into()
            } else {
                "That message cannot be referred to (sent by an older version, or a file you sent).".into()
            })
        })
}

impl State {
    /// A stored group line as the page shows it: one of ours sent from another device of this
    /// account says which ("from laptop"), as in a 1:1 chat.
    pub(super) fn group_message_view(&self, line: GroupLine) -> GroupMessageView {
        let from_device = if line.outgoing && line.kind == GroupLineKind::Message {
            self.db.group_line_sent_from(line.seq).unwrap_or_else(|e| {
                tracing::warn!(seq = line.seq, error = %e, "cannot read where a group line was sent from");
                None
            })
        } else {
            None
        };
        let mut view = GroupMessageView::from(line);
        view.from_device = from_device;
        view
    }

    /// The group list, most recent first.
    pub(super) fn group_views(&self) -> Result<Vec<GroupView>, StorageError> {
        Ok(self.db.groups()?.into_iter().map(GroupView::from).collect())
    }

    pub(super) fn publish_groups(&self) {
        match self.group_views() {
            Ok(groups) => self.ui.send(Update::Groups(groups)),
            Err(e) => tracing::warn!(error = %e, "cannot list groups"),
        }
    }

    /// A stored line another member changed (an edit, a delete, a reaction): to the page,
    /// and the list (its preview may be the changed line).
    pub(super) fn group_line_changed(&self, line: GroupLine) {
        self.ui
            .send(Update::GroupMessage(self.group_message_view(line)));
        self.publish_groups();
    }

    /// A line the session stored (or one of ours moved on): to the page, the list, and for a
    /// message from someone else the tray and, unfocused, the notification centre (sender and
    /// group as the title, the first line as the body: the 1:1 rule; for a file, "sent a
    /// photo" or "sent a file", its name kept out of the notification centre).
    pub(super) fn group_line(&self, line: GroupLine) {
        let incoming = line.kind == GroupLineKind::Message && !line.outgoing;
        let group = line.group_id.clone();
        let sender = line.sender.clone();
        let first_line: String = match &line.attachment {
            Some(file) if file.is_image() => "sent a photo".into(),
            Some(_) => "sent a file".into(),
            None => line
                .body
                .lines()
                .next()
                .unwrap_or("")
                .chars()
                .take(120)
                .collect(),
        };
        self.ui
            .send(Update::GroupMessage(self.group_message_view(line)));
        self.publish_groups();
        if !incoming {
            return;
        }
        self.publish_unread();
        if self.settings().notifications && !self.focused.load(Ordering::Relaxed) {
            let name = match self.db.group(&group) {
                Ok(Some(g)) => g.name,
                _ => "a group".to_owned(),
            };
            self.ui.send(Update::Notify {
                title: notification_text(&format!("{sender} in {name}")),
                body: notification_text(&first_line),
            });
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn group_ids_and_names_from_the_page_are_checked() {
        assert!(parse_group_id("ab01").is_ok());
        for bad in [
            "",
            "AB01",
            "abc",
            "zz",
            &"a".repeat(2 * crate::storage::groups::MAX_GROUP_ID_BYTES + 2),
        ] {
            assert!(parse_group_id(bad).is_err(), "{bad:?}");
        }
        assert_eq!(check_group_name("  Climbing ").unwrap(), "Climbing");
        assert!(check_group_name("   ").is_err());
        assert!(check_group_name("a\nb").is_err());
        let long = "x".repeat(lattice_mls::limits::MAX_GROUP_NAME_LEN + 1);
        assert!(check_group_name(&long).is_err());
    }
}
