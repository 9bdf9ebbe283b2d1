//! The history as the library sees it: checking on receipt that an edit, a delete, a reaction
//! or a receipt refers to a message that exists (and may be changed by its sender, within
//! [`crate::defaults::EDIT_WINDOW`]), and remembering what was applied so that a replayed edit is
//! ignored.
//!
//! The library remembers the messages of this run (sent and received, bounded by
//! [`crate::defaults::RECENT_MESSAGES`]) and asks the app's [`MessageLookup`] for the others.
//!
//! A conversation is a 1:1 peer or an MLS group, and each is its own history: an edit, a delete
//! or a reaction in a group is checked against that group's messages only (never another
//! group's or a 1:1 conversation's), with the same rules as 1:1 — only the original sender (the
//! member MLS authenticated, never a field of the plaintext) edits or deletes, within the edit
//! window, once.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex};

use lattice_mls::GroupId;
use lattice_protocol::{ClientId, MessageId};

use crate::content::{Content, MessageRef};
use crate::sync::lock;
use crate::{defaults, PeerError, RejectReason};

/// What the history knows about one message, for checking edits, deletes, reactions and
/// receipts that refer to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownMessage {
    /// When it was sent, unix ms (its signed `sentAt`; for our own messages, our clock).
    pub sent_at: u64,
    /// It was deleted for everyone.
    pub deleted: bool,
    /// The signed `sentAt` of the last edit applied to it, if any: an edit not newer than this is
    /// a replay and is ignored.
    pub last_edit_at: Option<u64>,
}

/// The app's history, as the library asks it: implemented by an app that keeps its messages
/// (the desktop and `lattice-chat` do, over SQLite) and passed with
/// [`crate::PeerConfig::history`]. The library also remembers the messages of this run
/// (sent and received, bounded by [`crate::defaults::RECENT_MESSAGES`]) and asks this only for
/// the others. Methods are synchronous and expected to be quick, like [`crate::KeyStore`]'s.
pub trait MessageLookup: Send + Sync + fmt::Debug {
    /// The message `id` sent by `sender` in the conversation with `peer` (`sender` is `peer` or
    /// us), if the history has it.
    ///
    /// # Errors
    /// Any error if the storage fails; the referring message is then held back as
    /// [`crate::RejectReason::HistoryUnavailable`] and retried.
    fn find(
        &self,
        peer: &ClientId,
        sender: &ClientId,
        id: &MessageId,
    ) -> Result<Option<KnownMessage>, PeerError>;

    /// The message `id` sent by `sender` (a member, or us) in the group `group`, if the
    /// history has it. The default knows none: only the messages of this run are then known,
    /// so an edit or a reaction to a group message of an earlier run is refused.
    ///
    /// # Errors
    /// Any error if the storage fails; the referring message is then refused (a group message
    /// cannot be opened twice).
    fn find_in_group(
        &self,
        group: &GroupId,
        sender: &ClientId,
        id: &MessageId,
    ) -> Result<Option<KnownMessage>, PeerError> {
        let _ = (group, sender, id);
        Ok(None)
    }
}

/// A [`MessageLookup`] that knows nothing: only the messages of this run are known (the
/// default).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoHistory;

impl MessageLookup for NoHistory {
    fn find(
        &self,
        _peer: &ClientId,
        _sender: &ClientId,
        _id: &MessageId,
    ) -> Result<Option<KnownMessage>, PeerError> {
        Ok(None)
    }
}

/// Whose history a message is in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Conversation {
    /// The 1:1 conversation with this peer.
    Peer(ClientId),
    /// This group.
    Group(GroupId),
}

/// (conversation, sender, message id).
type Key = (Conversation, ClientId, MessageId);

/// The messages of this run, bounded: past the bound the oldest entry is forgotten (the app's
/// [`MessageLookup`] still knows it if it keeps history).
#[derive(Debug)]
pub(crate) struct Recent {
    capacity: usize,
    order: VecDeque<Key>,
    map: HashMap<Key, KnownMessage>,
}

impl Recent {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            order: VecDeque::new(),
            map: HashMap::new(),
        }
    }

    pub(crate) fn get(
        &self,
        conv: &Conversation,
        sender: &ClientId,
        id: &MessageId,
    ) -> Option<KnownMessage> {
        self.map
            .get(&(conv.clone(), sender.clone(), id.clone()))
            .copied()
    }

    /// Records or updates a message.
    pub(crate) fn put(
        &mut self,
        conv: &Conversation,
        sender: &ClientId,
        id: &MessageId,
        m: KnownMessage,
    ) {
        let key = (conv.clone(), sender.clone(), id.clone());
        if self.map.insert(key.clone(), m).is_none() {
            self.order.push_back(key);
            while self.order.len() > self.capacity {
                if let Some(old) = self.order.pop_front() {
                    self.map.remove(&old);
                }
            }
        }
    }
}

/// The history: this run's messages, then the app's [`MessageLookup`].
#[derive(Debug)]
pub(crate) struct History {
    me: ClientId,
    /// std Mutex: a lookup or an insert, never held across an await or a lookup call.
    recent: Mutex<Recent>,
    lookup: Arc<dyn MessageLookup>,
}

fn window_ms() -> u64 {
    u64::try_from(defaults::EDIT_WINDOW.as_millis()).unwrap_or(u64::MAX)
}

impl History {
    pub(crate) fn new(me: ClientId, lookup: Arc<dyn MessageLookup>) -> Self {
        Self {
            me,
            recent: Mutex::new(Recent::new(defaults::RECENT_MESSAGES)),
            lookup,
        }
    }

    fn find(
        &self,
        conv: &Conversation,
        sender: &ClientId,
        id: &MessageId,
    ) -> Result<Option<KnownMessage>, RejectReason> {
        if let Some(m) = lock(&self.recent).get(conv, sender, id) {
            return Ok(Some(m));
        }
        match conv {
            Conversation::Peer(peer) => self.lookup.find(peer, sender, id),
            Conversation::Group(group) => self.lookup.find_in_group(group, sender, id),
        }
        .map_err(|e| RejectReason::HistoryUnavailable(e.to_string()))
    }

    /// The message `id` of `sender` in the group `group`, if this run or the app's history
    /// knows it (what a group read receipt must name).
    ///
    /// # Errors
    /// The app's [`MessageLookup`] failed.
    pub(crate) fn find_in_group(
        &self,
        group: &GroupId,
        sender: &ClientId,
        id: &MessageId,
    ) -> Result<Option<KnownMessage>, PeerError> {
        let conv = Conversation::Group(group.clone());
        if let Some(m) = lock(&self.recent).get(&conv, sender, id) {
            return Ok(Some(m));
        }
        self.lookup.find_in_group(group, sender, id)
    }

    /// A message we sent to `peer` (a text or a reply: something others may refer to).
    pub(crate) fn sent(&self, peer: &ClientId, id: &MessageId, content: &Content, sent_at: u64) {
        self.sent_in(&Conversation::Peer(peer.clone()), id, content, sent_at);
    }

    /// A message we sent to the group `group`.
    pub(crate) fn sent_in_group(
        &self,
        group: &GroupId,
        id: &MessageId,
        content: &Content,
        sent_at: u64,
    ) {
        self.sent_in(&Conversation::Group(group.clone()), id, content, sent_at);
    }

    fn sent_in(&self, conv: &Conversation, id: &MessageId, content: &Content, sent_at: u64) {
        if matches!(
            content,
            Content::Text(_) | Content::Reply { .. } | Content::File(_)
        ) {
            lock(&self.recent).put(
                conv,
                &self.me,
                id,
                KnownMessage {
                    sent_at,
                    deleted: false,
                    last_edit_at: None,
                },
            );
        }
    }

    /// The sender's own message `target` in `conv` that an edit or a delete signed at `sent_at`
    /// changes.
    fn own_target(
        &self,
        conv: &Conversation,
        from: &ClientId,
        target: &MessageId,
        sent_at: u64,
    ) -> Result<KnownMessage, RejectReason> {
        let Some(m) = self.find(conv, from, target)? else {
            // Someone else's, not the sender's: only the original sender may change a message.
            if self.written_by_another(conv, from, target)? {
                return Err(RejectReason::NotOriginalSender);
            }
            return Err(RejectReason::UnknownTarget);
        };
        if sent_at < m.sent_at || sent_at - m.sent_at > window_ms() {
            return Err(RejectReason::OutsideEditWindow);
        }
        Ok(m)
    }

    /// Whether `target` is a message of `conv` written by someone other than `from`: us in a
    /// 1:1 conversation; us or any member this run heard from in a group.
    fn written_by_another(
        &self,
        conv: &Conversation,
        from: &ClientId,
        target: &MessageId,
    ) -> Result<bool, RejectReason> {
        if self.find(conv, &self.me, target)?.is_some() {
            return Ok(true);
        }
        let recent = lock(&self.recent);
        Ok(recent
            .order
            .iter()
            .any(|(c, s, id)| c == conv && s != from && id == target))
    }

    /// Checks `content` (signed by `from` at `sent_at`) in the 1:1 conversation with `from`
    /// against the history, and returns what to record once the message is accepted
    /// ([`History::commit`]). Nothing changes here, so a message held back after this check (a
    /// transient refusal) is checked again from scratch. `Err(RejectReason::Replay)` is an edit
    /// or a delete already applied (or superseded): ignored silently.
    pub(crate) fn check(
        &self,
        from: &ClientId,
        id: &MessageId,
        sent_at: u64,
        content: &Content,
    ) -> Result<Option<Record>, RejectReason> {
        let conv = Conversation::Peer(from.clone());
        if let Content::Reaction {
            target: MessageRef { sender, .. },
            ..
        } = content
        {
            // In a 1:1 conversation a reaction is to the sender's message or to ours.
            if sender != from && *sender != self.me {
                return Err(RejectReason::UnknownTarget);
            }
        }
        if let Content::Receipt { read } = content {
            for id in read {
                if self.find(&conv, &self.me, id)?.is_none() {
                    return Err(RejectReason::UnknownTarget);
                }
            }
            return Ok(None);
        }
        self.check_in(conv, from, id, sent_at, content)
    }

    /// [`History::check`] for a message of the group `group` from its member `from` (as MLS
    /// authenticated it). Edits, deletes and reactions must name a message of this group; a
    /// reply whose quoted message is not one of this group's is [`Reply::Unknown`]: the caller
    /// delivers its text without the quote. Group read receipts and typing notices are not
    /// checked here ([`History::find_in_group`] and the group layer do).
    pub(crate) fn check_group(
        &self,
        group: &GroupId,
        from: &ClientId,
        id: &MessageId,
        sent_at: u64,
        content: &Content,
    ) -> Result<(Option<Record>, Reply), RejectReason> {
        let conv = Conversation::Group(group.clone());
        let reply = match content {
            Content::Reply { to, .. } => match self.find(&conv, &to.sender, &to.message_id)? {
                Some(m) if !m.deleted => Reply::Known,
                _ => Reply::Unknown,
            },
            _ => Reply::Known,
        };
        Ok((self.check_in(conv, from, id, sent_at, content)?, reply))
    }

    fn check_in(
        &self,
        conv: Conversation,
        from: &ClientId,
        id: &MessageId,
        sent_at: u64,
        content: &Content,
    ) -> Result<Option<Record>, RejectReason> {
        let record = |target: &MessageId, m| {
            Some(Record {
                conv: conv.clone(),
                sender: from.clone(),
                id: target.clone(),
                known: m,
            })
        };
        Ok(match content {
            Content::Text(_) | Content::Reply { .. } | Content::File(_) => record(
                id,
                KnownMessage {
                    sent_at,
                    deleted: false,
                    last_edit_at: None,
                },
            ),
            Content::Edit { target, .. } => {
                let mut m = self.own_target(&conv, from, target, sent_at)?;
                if m.deleted || m.last_edit_at.is_some_and(|at| at >= sent_at) {
                    return Err(RejectReason::Replay);
                }
                m.last_edit_at = Some(sent_at);
                record(target, m)
            }
            Content::Delete { target } => {
                let mut m = self.own_target(&conv, from, target, sent_at)?;
                if m.deleted {
                    return Err(RejectReason::Replay);
                }
                m.deleted = true;
                record(target, m)
            }
            Content::Reaction {
                target: MessageRef { sender, message_id },
                ..
            } => match self.find(&conv, sender, message_id)? {
                Some(m) if !m.deleted => None,
                _ => return Err(RejectReason::UnknownTarget),
            },
            // A receipt is checked by `check` (1:1 only; groups refuse it before this).
            Content::Receipt { .. } => return Err(RejectReason::UnknownTarget),
            // A file digest changes no message: the file component applies it only to a download
            // of that sender's file message.
            Content::Typing { .. } | Content::Unsupported { .. } | Content::FileDigest { .. } => {
                None
            }
        })
    }

    /// Records what an accepted message changed (from [`History::check`] or
    /// [`History::check_group`]).
    pub(crate) fn commit(&self, record: Option<Record>) {
        if let Some(r) = record {
            // A message from `sender`, or an edit or delete of `sender`'s own message.
            lock(&self.recent).put(&r.conv, &r.sender, &r.id, r.known);
        }
    }

    /// [`History::check`] then [`History::commit`].
    #[cfg(test)]
    fn receive(
        &self,
        from: &ClientId,
        id: &MessageId,
        sent_at: u64,
        content: &Content,
    ) -> Result<(), RejectReason> {
        let r = self.check(from, id, sent_at, content)?;
        self.commit(r);
        Ok(())
    }
}

/// What an accepted message changes in the history: the sender's message `id` of `conv` is now
/// `known`.
#[derive(Debug)]
pub(crate) struct Record {
    conv: Conversation,
    sender: ClientId,
    id: MessageId,
    known: KnownMessage,
}

/// Whether the message a group reply quotes is one of that group's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reply {
    /// It is (or the content is not a reply).
    Known,
    /// It is not one this device knows in the group (another conversation's, or one from
    /// before this device joined): the quote is not to be shown.
    Unknown,
}
#[cfg(test)]
mod tests {
    use super::*;

    fn cid(s: &str) -> ClientId {
        ClientId::new(s).unwrap()
    }

    fn mid(s: &str) -> MessageId {
        MessageId::new(s).unwrap()
    }

    #[test]
    fn recent_messages_are_bounded() {
        let mut r = Recent::new(2);
        let (p, s) = (Conversation::Peer(cid("p")), cid("s"));
        let m = KnownMessage {
            sent_at: 1,
            deleted: false,
            last_edit_at: None,
        };
        for n in 0..3 {
            r.put(&p, &s, &mid(&format!("m{n}")), m);
        }
        assert!(r.get(&p, &s, &mid("m0")).is_none());
        assert!(r.get(&p, &s, &mid("m2")).is_some());
    }

    /// A lookup that knows one old message of bob's.
    #[derive(Debug)]
    struct OneOld;
    impl MessageLookup for OneOld {
        fn find(
            &self,
            peer: &ClientId,
            sender: &ClientId,
            id: &MessageId,
        ) -> Result<Option<KnownMessage>, PeerError> {
            Ok(
                (peer.as_str() == "bob" && sender.as_str() == "bob" && id.as_str() == "old")
                    .then_some(KnownMessage {
                        sent_at: 1_000,
                        deleted: false,
                        last_edit_at: None,
                    }),
            )
        }
    }

    #[test]
    fn edits_and_deletes_are_checked_against_sender_window_and_replay() {
        let h = History::new(cid("alice"), Arc::new(OneOld));
        let (bob, carol) = (cid("bob"), cid("carol"));
        let t0 = 10_000_000;
        let text = Content::Text("hi".into());
        h.receive(&bob, &mid("b1"), t0, &text).unwrap();
        h.sent(&bob, &mid("a1"), &text, t0);
        let edit = |target: &str| Content::Edit {
            target: mid(target),
            text: "new".into(),
        };
        // Bob edits his own message; a second copy (or an older edit) is ignored.
        h.receive(&bob, &mid("e1"), t0 + 5, &edit("b1")).unwrap();
        assert_eq!(
            h.receive(&bob, &mid("e0"), t0 + 4, &edit("b1")),
            Err(RejectReason::Replay)
        );
        assert_eq!(
            h.receive(&bob, &mid("e1"), t0 + 5, &edit("b1")),
            Err(RejectReason::Replay)
        );
        // Not his, unknown, someone else's conversation, outside the window.
        assert_eq!(
            h.receive(&bob, &mid("e2"), t0 + 6, &edit("a1")),
            Err(RejectReason::NotOriginalSender)
        );
        assert_eq!(
            h.receive(&bob, &mid("e3"), t0 + 6, &edit("nope")),
            Err(RejectReason::UnknownTarget)
        );
        assert_eq!(
            h.receive(&carol, &mid("e4"), t0 + 6, &edit("b1")),
            Err(RejectReason::UnknownTarget)
        );
        assert_eq!(
            h.receive(&bob, &mid("e5"), t0 + window_ms() + 1, &edit("b1")),
            Err(RejectReason::OutsideEditWindow)
        );
        assert_eq!(
            h.receive(&bob, &mid("e6"), t0 - 1, &edit("b1")),
            Err(RejectReason::OutsideEditWindow)
        );
        // The app's history is asked for what this run does not know.
        h.receive(&bob, &mid("e7"), 2_000, &edit("old")).unwrap();
        // Deleted once; then neither deleted again nor edited.
        let delete = Content::Delete { target: mid("b1") };
        h.receive(&bob, &mid("d1"), t0 + 7, &delete).unwrap();
        assert_eq!(
            h.receive(&bob, &mid("d2"), t0 + 8, &delete),
            Err(RejectReason::Replay)
        );
        assert_eq!(
            h.receive(&bob, &mid("e8"), t0 + 9, &edit("b1")),
            Err(RejectReason::Replay)
        );
    }

    #[test]
    fn reactions_and_receipts_need_a_message_of_the_conversation() {
        let h = History::new(cid("alice"), Arc::new(NoHistory));
        let (alice, bob, carol) = (cid("alice"), cid("bob"), cid("carol"));
        let text = Content::Text("hi".into());
        h.sent(&bob, &mid("a1"), &text, 1);
        h.receive(&bob, &mid("b1"), 1, &text).unwrap();
        let react = |sender: &ClientId, id: &str| Content::Reaction {
            target: MessageRef {
                sender: sender.clone(),
                message_id: mid(id),
            },
            emoji: "👍".into(),
            action: crate::content::ReactionAction::Add,
        };
        h.receive(&bob, &mid("r1"), 2, &react(&alice, "a1"))
            .unwrap();
        h.receive(&bob, &mid("r2"), 2, &react(&bob, "b1")).unwrap();
        assert_eq!(
            h.receive(&bob, &mid("r3"), 2, &react(&alice, "nope")),
            Err(RejectReason::UnknownTarget)
        );
        assert_eq!(
            h.receive(&bob, &mid("r4"), 2, &react(&carol, "a1")),
            Err(RejectReason::UnknownTarget)
        );
        assert_eq!(
            h.receive(&carol, &mid("r5"), 2, &react(&alice, "a1")),
            Err(RejectReason::UnknownTarget)
        );
        let receipt = |ids: &[&str]| Content::Receipt {
            read: ids.iter().map(|i| mid(i)).collect(),
        };
        h.receive(&bob, &mid("x1"), 3, &receipt(&["a1"])).unwrap();
        // Bob's own message, or one never sent: refused.
        assert_eq!(
            h.receive(&bob, &mid("x2"), 3, &receipt(&["a1", "b1"])),
            Err(RejectReason::UnknownTarget)
        );
        assert_eq!(
            h.receive(&carol, &mid("x3"), 3, &receipt(&["a1"])),
            Err(RejectReason::UnknownTarget)
        );
    }

    fn gid(b: u8) -> GroupId {
        GroupId::from_bytes(&[b; 16])
    }

    /// A lookup that knows one old message of bob's in group 1, and refuses everything else
    /// in group 1 from it; 1:1 it knows nothing.
    #[derive(Debug)]
    struct OldGroupMessage;
    impl MessageLookup for OldGroupMessage {
        fn find(
            &self,
            _peer: &ClientId,
            _sender: &ClientId,
            _id: &MessageId,
        ) -> Result<Option<KnownMessage>, PeerError> {
            Ok(None)
        }

        fn find_in_group(
            &self,
            group: &GroupId,
            sender: &ClientId,
            id: &MessageId,
        ) -> Result<Option<KnownMessage>, PeerError> {
            Ok(
                (*group == gid(1) && sender.as_str() == "bob" && id.as_str() == "old").then_some(
                    KnownMessage {
                        sent_at: 1_000,
                        deleted: false,
                        last_edit_at: None,
                    },
                ),
            )
        }
    }

    #[test]
    fn group_edits_deletes_and_reactions_are_checked_against_that_groups_history() {
        let h = History::new(cid("alice"), Arc::new(OldGroupMessage));
        let (alice, bob, carol) = (cid("alice"), cid("bob"), cid("carol"));
        let (g1, g2) = (gid(1), gid(2));
        let t0 = 10_000_000;
        let text = Content::Text("hi".into());
        let receive = |g: &GroupId, from: &ClientId, id: &str, at: u64, c: &Content| {
            h.check_group(g, from, &mid(id), at, c).map(|(r, reply)| {
                h.commit(r);
                reply
            })
        };
        h.sent_in_group(&g1, &mid("a1"), &text, t0);
        receive(&g1, &bob, "b1", t0, &text).unwrap();
        receive(&g2, &carol, "c2", t0, &text).unwrap();
        // bob's 1:1 message with alice, of the same id as nothing in g1.
        h.receive(&bob, &mid("d1"), t0, &text).unwrap();
        let edit = |target: &str| Content::Edit {
            target: mid(target),
            text: "new".into(),
        };
        // His own: applied once; a second copy is a replay.
        receive(&g1, &bob, "e1", t0 + 5, &edit("b1")).unwrap();
        assert_eq!(
            receive(&g1, &bob, "e1", t0 + 5, &edit("b1")),
            Err(RejectReason::Replay)
        );
        // Alice's (ours) and carol's: not his.
        assert_eq!(
            receive(&g1, &bob, "e2", t0 + 6, &edit("a1")),
            Err(RejectReason::NotOriginalSender)
        );
        receive(&g1, &carol, "c1", t0, &text).unwrap();
        assert_eq!(
            receive(&g1, &bob, "e3", t0 + 6, &edit("c1")),
            Err(RejectReason::NotOriginalSender)
        );
        // His message of another group, or of his 1:1 conversation: not this group's.
        assert_eq!(
            receive(&g2, &bob, "e4", t0 + 6, &edit("b1")),
            Err(RejectReason::UnknownTarget)
        );
        assert_eq!(
            receive(&g1, &bob, "e5", t0 + 6, &edit("d1")),
            Err(RejectReason::UnknownTarget)
        );
        // The app's history is asked for the group's older messages.
        receive(&g1, &bob, "e6", 2_000, &edit("old")).unwrap();
        assert_eq!(
            receive(&g2, &bob, "e7", 2_000, &edit("old")),
            Err(RejectReason::UnknownTarget)
        );
        // Reactions: to any member's message of this group, not another conversation's.
        let react = |sender: &ClientId, id: &str| Content::Reaction {
            target: MessageRef {
                sender: sender.clone(),
                message_id: mid(id),
            },
            emoji: "👍".into(),
            action: crate::content::ReactionAction::Add,
        };
        receive(&g1, &bob, "r1", t0, &react(&alice, "a1")).unwrap();
        receive(&g1, &bob, "r2", t0, &react(&carol, "c1")).unwrap();
        assert_eq!(
            receive(&g1, &bob, "r3", t0, &react(&carol, "c2")),
            Err(RejectReason::UnknownTarget)
        );
        assert_eq!(
            receive(&g1, &bob, "r4", t0, &react(&bob, "d1")),
            Err(RejectReason::UnknownTarget)
        );
        // Replies: a quote of this group's message is kept, any other is not.
        let reply = |sender: &ClientId, id: &str| Content::Reply {
            to: MessageRef {
                sender: sender.clone(),
                message_id: mid(id),
            },
            excerpt: "hi".into(),
            text: "answer".into(),
        };
        assert_eq!(
            receive(&g1, &carol, "p1", t0, &reply(&bob, "b1")),
            Ok(Reply::Known)
        );
        assert_eq!(
            receive(&g1, &carol, "p2", t0, &reply(&carol, "c2")),
            Ok(Reply::Unknown)
        );
        assert_eq!(
            receive(&g1, &carol, "p3", t0, &reply(&bob, "d1")),
            Ok(Reply::Unknown)
        );
        // Deleted once; then neither deleted again, edited nor reacted to.
        let delete = Content::Delete { target: mid("b1") };
        receive(&g1, &bob, "x1", t0 + 7, &delete).unwrap();
        assert_eq!(
            receive(&g1, &bob, "x2", t0 + 8, &delete),
            Err(RejectReason::Replay)
        );
        assert_eq!(
            receive(&g1, &carol, "r5", t0 + 8, &react(&bob, "b1")),
            Err(RejectReason::UnknownTarget)
        );
        // The 1:1 conversation with bob never saw any of it.
        assert_eq!(
            h.receive(&bob, &mid("e8"), t0 + 6, &edit("b1")),
            Err(RejectReason::UnknownTarget)
        );
    }
}
