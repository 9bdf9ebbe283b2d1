//! The history as the library sees it: checking on receipt that an edit, a delete, a reaction
//! or a receipt refers to a message that exists (and may be changed by its sender, within
//! [`crate::defaults::EDIT_WINDOW`]), and remembering what was applied so that a replayed edit is
//! ignored.
//!
//! The library remembers the messages of this run (sent and received, bounded by
//! [`crate::defaults::RECENT_MESSAGES`]) and asks the app's [`MessageLookup`] for the others.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex};

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

/// (conversation peer, sender, message id).
type Key = (ClientId, ClientId, MessageId);

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
        peer: &ClientId,
        sender: &ClientId,
        id: &MessageId,
    ) -> Option<KnownMessage> {
        self.map
            .get(&(peer.clone(), sender.clone(), id.clone()))
            .copied()
    }

    /// Records or updates a message.
    pub(crate) fn put(
        &mut self,
        peer: &ClientId,
        sender: &ClientId,
        id: &MessageId,
        m: KnownMessage,
    ) {
        let key = (peer.clone(), sender.clone(), id.clone());
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
        peer: &ClientId,
        sender: &ClientId,
        id: &MessageId,
    ) -> Result<Option<KnownMessage>, RejectReason> {
        if let Some(m) = lock(&self.recent).get(peer, sender, id) {
            return Ok(Some(m));
        }
        self.lookup
            .find(peer, sender, id)
            .map_err(|e| RejectReason::HistoryUnavailable(e.to_string()))
    }

    /// A message we sent to `peer` (a text or a reply: something others may refer to).
    pub(crate) fn sent(&self, peer: &ClientId, id: &MessageId, content: &Content, sent_at: u64) {
        if matches!(
            content,
            Content::Text(_) | Content::Reply { .. } | Content::File(_)
        ) {
            lock(&self.recent).put(
                peer,
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

    /// The sender's own message `target` that an edit or a delete signed at `sent_at` changes.
    fn own_target(
        &self,
        from: &ClientId,
        target: &MessageId,
        sent_at: u64,
    ) -> Result<KnownMessage, RejectReason> {
        let Some(m) = self.find(from, from, target)? else {
            // Ours, not the sender's: only the original sender may change a message.
            if self.find(from, &self.me, target)?.is_some() {
                return Err(RejectReason::NotOriginalSender);
            }
            return Err(RejectReason::UnknownTarget);
        };
        if sent_at < m.sent_at || sent_at - m.sent_at > window_ms() {
            return Err(RejectReason::OutsideEditWindow);
        }
        Ok(m)
    }

    /// Checks `content` (signed by `from` at `sent_at`) against the history, and returns what
    /// to record once the message is accepted ([`History::commit`]). Nothing changes here, so a
    /// message held back after this check (a transient refusal) is checked again from scratch.
    /// `Err(RejectReason::Replay)` is an edit or a delete already applied (or superseded): ignored
    /// silently.
    pub(crate) fn check(
        &self,
        from: &ClientId,
        id: &MessageId,
        sent_at: u64,
        content: &Content,
    ) -> Result<Option<Record>, RejectReason> {
        let record = |target: &MessageId, m| {
            Some(Record {
                peer: from.clone(),
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
                let mut m = self.own_target(from, target, sent_at)?;
                if m.deleted || m.last_edit_at.is_some_and(|at| at >= sent_at) {
                    return Err(RejectReason::Replay);
                }
                m.last_edit_at = Some(sent_at);
                record(target, m)
            }
            Content::Delete { target } => {
                let mut m = self.own_target(from, target, sent_at)?;
                if m.deleted {
                    return Err(RejectReason::Replay);
                }
                m.deleted = true;
                record(target, m)
            }
            Content::Reaction {
                target: MessageRef { sender, message_id },
                ..
            } => {
                if sender != from && *sender != self.me {
                    return Err(RejectReason::UnknownTarget);
                }
                match self.find(from, sender, message_id)? {
                    Some(m) if !m.deleted => None,
                    _ => return Err(RejectReason::UnknownTarget),
                }
            }
            Content::Receipt { read } => {
                for id in read {
                    if self.find(from, &self.me, id)?.is_none() {
                        return Err(RejectReason::UnknownTarget);
                    }
                }
                None
            }
            // A file digest changes no message: the file component applies it only to a download
            // of that sender's file message.
            Content::Typing { .. } | Content::Unsupported { .. } | Content::FileDigest { .. } => {
                None
            }
        })
    }

    /// Records what an accepted message changed (from [`History::check`]).
    pub(crate) fn commit(&self, record: Option<Record>) {
        if let Some(r) = record {
            // A message from `peer`, or an edit or delete of `peer`'s own message.
            lock(&self.recent).put(&r.peer, &r.peer, &r.id, r.known);
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

/// What an accepted message changes in the history: the sender's message `id` is now `known`.
#[derive(Debug)]
pub(crate) struct Record {
    peer: ClientId,
    id: MessageId,
    known: KnownMessage,
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
        let (p, s) = (cid("p"), cid("s"));
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
}
