//! Read receipts and typing notices in groups (docs/client.md, *Groups: receipts and typing*).
//!
//! - **Read receipts.** One group application message of kind [`READ_KIND`] names the newest
//!   message the reader has read ([`ReadBody::up_to`], a [`MessageRef`]): it covers every
//!   earlier one, so a burst of reading is one receipt per group. A receipt is raised only for a
//!   message of that group's history, and only when it moves the reader's mark forward (by the
//!   named message's signed `sentAt`); one from another device of our own id is "read
//!   elsewhere", never a member's receipt.
//! - **Delivery.** What a sender honestly knows per group message is that the server stored it
//!   for the members (the send's `Ok`); per member it knows only "read". No per-member
//!   "delivered" is made up.
//! - **Typing.** [`crate::content::Content::Typing`] in a group, "started" sent at most every
//!   [`defaults::GROUP_TYPING_RESEND`], none in a group above
//!   [`defaults::GROUP_TYPING_MAX_MEMBERS`]; a member's typing ends by itself
//!   [`defaults::GROUP_TYPING_SHOWN`] after its last notice. Never stored.
//! - **Bounds.** Every map here is keyed by (group, member) as MLS authenticated it and holds at
//!   most [`defaults::GROUP_NOTICE_ENTRIES`]; each member's notices are rate-bounded on receipt
//!   ([`defaults::GROUP_NOTICES_PER_WINDOW`] per [`defaults::GROUP_NOTICE_WINDOW`]).
//!
//! [`Notices`] is pure bookkeeping over [`Instant`]s, tested on paused time.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use lattice_mls::{GroupId, MemberIdentity};
use lattice_protocol::ClientId;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::{mls_error, Groups};
use crate::content::{Content, MessageRef};
use crate::events::PeerEvent;
use crate::sync::lock;
use crate::wire::{new_message_id, now_ms};
use crate::{defaults, PeerError};

/// The plaintext `kind` of a group read receipt. Not a [`crate::Content`]: only the group layer
/// knows it, and apps see it as [`crate::PeerEvent::GroupRead`].
pub(crate) const READ_KIND: &str = "group-read";

/// The body of a [`READ_KIND`] plaintext.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct ReadBody {
    /// The newest message of the group the reader has read (any member's, ours included).
    pub(crate) up_to: MessageRef,
}

/// The newest read mark of one reader in one group.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ReadMark {
    /// The signed `sentAt` of the message it names.
    sent_at: u64,
    message: MessageRef,
}

type Key = (GroupId, ClientId);

/// What a typing notice does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TypingChange {
    /// Raise "started" (the member was not shown typing).
    Started,
    /// Raise "stopped" (the member was shown typing).
    Stopped,
    /// Nothing to raise (still typing: its expiry moved; or stopped while not shown).
    Nothing,
}

/// Receipts and typing bookkeeping of one device: rate windows, read marks, who is shown typing
/// until when, and what this device last sent.
#[derive(Debug, Default)]
pub(crate) struct Notices {
    /// Per (group, member): when its current rate window started and how many notices it had.
    rate: HashMap<Key, (Instant, u32)>,
    /// Per (group, reader): the newest read mark raised (our own id: the newest we sent or
    /// learnt from another device of ours).
    read: HashMap<Key, ReadMark>,
    /// Per (group, member) shown typing: until when.
    typing: HashMap<Key, Instant>,
    /// Per group: when this device last sent "started typing".
    typing_sent: HashMap<GroupId, Instant>,
    /// Per group: the read receipt waiting until this device has processed the group messages
    /// queued for it (sealed now, it might be in an epoch the others no longer open).
    pending_read: HashMap<GroupId, ReadMark>,
}

impl Notices {
    /// Whether one more notice of `member` in `gid` may be raised at `now` (and counts it).
    pub(crate) fn admit(&mut self, gid: &GroupId, member: &ClientId, now: Instant) -> bool {
        let key = (gid.clone(), member.clone());
        let expired = |start: &Instant| {
            now.saturating_duration_since(*start) >= defaults::GROUP_NOTICE_WINDOW
        };
        if let Some((start, n)) = self.rate.get_mut(&key) {
            if expired(start) {
                *start = now;
                *n = 0;
            }
            if *n >= defaults::GROUP_NOTICES_PER_WINDOW {
                return false;
            }
            *n += 1;
            return true;
        }
        if self.rate.len() >= defaults::GROUP_NOTICE_ENTRIES {
            self.rate.retain(|_, (start, _)| !expired(start));
            if self.rate.len() >= defaults::GROUP_NOTICE_ENTRIES {
                return false;
            }
        }
        self.rate.insert(key, (now, 1));
        true
    }

    /// Whether a read mark of `reader` in `gid` at the message `up_to` (signed at `sent_at`)
    /// moves its mark forward.
    pub(crate) fn read_is_forward(
        &self,
        gid: &GroupId,
        reader: &ClientId,
        sent_at: u64,
        up_to: &MessageRef,
    ) -> bool {
        match self.read.get(&(gid.clone(), reader.clone())) {
            None => true,
            Some(m) => sent_at > m.sent_at || (sent_at == m.sent_at && m.message != *up_to),
        }
    }

    /// Records `reader`'s read mark in `gid` if it moves forward; returns whether it did.
    pub(crate) fn read(
        &mut self,
        gid: &GroupId,
        reader: &ClientId,
        sent_at: u64,
        up_to: &MessageRef,
    ) -> bool {
        if !self.read_is_forward(gid, reader, sent_at, up_to) {
            return false;
        }
        let key = (gid.clone(), reader.clone());
        if !self.read.contains_key(&key) && self.read.len() >= defaults::GROUP_NOTICE_ENTRIES {
            // Forgetting the oldest mark only lets an older receipt of that reader through once.
            if let Some(oldest) = self
                .read
                .iter()
                .min_by_key(|(_, m)| m.sent_at)
                .map(|(k, _)| k.clone())
            {
                self.read.remove(&oldest);
            }
        }
        self.read.insert(
            key,
            ReadMark {
                sent_at,
                message: up_to.clone(),
            },
        );
        true
    }

    /// A typing notice of `member` in `gid` at `now`.
    pub(crate) fn typing(
        &mut self,
        gid: &GroupId,
        member: &ClientId,
        started: bool,
        now: Instant,
    ) -> TypingChange {
        let key = (gid.clone(), member.clone());
        if !started {
            return match self.typing.remove(&key) {
                Some(_) => TypingChange::Stopped,
                None => TypingChange::Nothing,
            };
        }
        let until = now + defaults::GROUP_TYPING_SHOWN;
        if let Some(at) = self.typing.get_mut(&key) {
            *at = until;
            return TypingChange::Nothing;
        }
        if self.typing.len() >= defaults::GROUP_NOTICE_ENTRIES {
            self.typing.retain(|_, at| *at > now);
            if self.typing.len() >= defaults::GROUP_NOTICE_ENTRIES {
                return TypingChange::Nothing;
            }
        }
        self.typing.insert(key, until);
        TypingChange::Started
    }

    /// When the next member shown typing stops being shown.
    pub(crate) fn next_typing_expiry(&self) -> Option<Instant> {
        self.typing.values().min().copied()
    }

    /// The members whose typing expired at `now` (forgotten), sorted.
    pub(crate) fn expired_typing(&mut self, now: Instant) -> Vec<Key> {
        let mut out: Vec<Key> = self
            .typing
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &out {
            self.typing.remove(k);
        }
        out.sort();
        out
    }

    /// Whether this device may send a typing notice to `gid` at `now`: "started" at most every
    /// [`defaults::GROUP_TYPING_RESEND`], "stopped" only after a "started". Records it.
    pub(crate) fn may_send_typing(&mut self, gid: &GroupId, started: bool, now: Instant) -> bool {
        if !started {
            return self.typing_sent.remove(gid).is_some();
        }
        if self
            .typing_sent
            .get(gid)
            .is_some_and(|at| now.saturating_duration_since(*at) < defaults::GROUP_TYPING_RESEND)
        {
            return false;
        }
        if !self.typing_sent.contains_key(gid)
            && self.typing_sent.len() >= defaults::GROUP_NOTICE_ENTRIES
        {
            self.typing_sent
                .retain(|_, at| now.saturating_duration_since(*at) < defaults::GROUP_TYPING_RESEND);
            if self.typing_sent.len() >= defaults::GROUP_NOTICE_ENTRIES {
                return false;
            }
        }
        self.typing_sent.insert(gid.clone(), now);
        true
    }

    /// Keeps a read receipt for `gid` to send once the receive queue is drained (the newest
    /// per group; at most [`defaults::GROUP_NOTICE_ENTRIES`] groups, past it the new one is
    /// not kept: the next read sends it).
    pub(crate) fn defer_read(&mut self, gid: &GroupId, sent_at: u64, up_to: &MessageRef) {
        if let Some(m) = self.pending_read.get(gid) {
            if m.sent_at > sent_at {
                return;
            }
        } else if self.pending_read.len() >= defaults::GROUP_NOTICE_ENTRIES {
            return;
        }
        self.pending_read.insert(
            gid.clone(),
            ReadMark {
                sent_at,
                message: up_to.clone(),
            },
        );
    }

    /// The deferred read receipts, taken.
    pub(crate) fn take_pending_reads(&mut self) -> Vec<(GroupId, u64, MessageRef)> {
        self.pending_read
            .drain()
            .map(|(g, m)| (g, m.sent_at, m.message))
            .collect()
    }

    /// Forgets a "started" this device could not send, so the next one goes.
    pub(crate) fn typing_not_sent(&mut self, gid: &GroupId) {
        self.typing_sent.remove(gid);
    }

    /// Forgets everything about `gid` (it is gone).
    pub(crate) fn forget(&mut self, gid: &GroupId) {
        self.rate.retain(|(g, _), _| g != gid);
        self.read.retain(|(g, _), _| g != gid);
        self.typing.retain(|(g, _), _| g != gid);
        self.typing_sent.remove(gid);
        self.pending_read.remove(gid);
    }
}

impl Groups {
    /// Turns group read receipts on or off (the app's read-receipt setting, the one its 1:1
    /// receipts follow). Off: [`Groups::mark_read`] sends none and others' are not raised.
    pub(crate) fn set_read_receipts(&self, on: bool) {
        self.read_receipts.store(on, Ordering::Relaxed);
    }

    /// Tells the members of `gid` that this user read it up to `up_to` (a message of the
    /// group's history). Returns whether a receipt went: none while receipts are off, nor when
    /// `up_to` is not newer than what this id already said it read (here or on another device).
    pub(crate) async fn mark_read(
        &self,
        gid: &GroupId,
        up_to: &MessageRef,
    ) -> Result<bool, PeerError> {
        self.not_direct(gid)?;
        lock(&self.mls)
            .epoch(gid)
            .map_err(|e| mls_error(e, Some(gid)))?;
        if !self.read_receipts.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let Some(known) = self
            .history
            .find_in_group(gid, &up_to.sender, &up_to.message_id)?
        else {
            return Err(PeerError::InvalidArgument(format!(
                "message {} of {} is not one of this group's",
                up_to.message_id, up_to.sender
            )));
        };
        if !lock(&self.notices).read_is_forward(gid, &self.client_id, known.sent_at, up_to) {
            return Ok(false);
        }
        if self.receive_backlog() {
            // Group messages are still waiting to be processed (a mailbox drain, a burst):
            // this device may be epochs behind the others, and a receipt sealed now might not
            // open for them. It goes once the queue is drained ([`Groups::flush_reads`]).
            lock(&self.notices).defer_read(gid, known.sent_at, up_to);
            return Ok(true);
        }
        self.send_read(gid, known.sent_at, up_to).await?;
        Ok(true)
    }

    /// Seals and sends a read receipt for `up_to` (signed at `sent_at`) in `gid`, if it still
    /// moves our mark forward, and records it.
    async fn send_read(
        &self,
        gid: &GroupId,
        sent_at: u64,
        up_to: &MessageRef,
    ) -> Result<(), PeerError> {
        if !lock(&self.notices).read_is_forward(gid, &self.client_id, sent_at, up_to) {
            return Ok(());
        }
        let body = serde_json::to_string(&ReadBody {
            up_to: up_to.clone(),
        })
        .map_err(|e| PeerError::Protocol(e.to_string()))?;
        self.seal_and_send(gid, READ_KIND, body, new_message_id())
            .await?;
        lock(&self.notices).read(gid, &self.client_id, sent_at, up_to);
        tracing::debug!(peer = %self.client_id, group = %gid, up_to = %up_to.message_id, "group read receipt sent");
        Ok(())
    }

    /// Whether incoming group messages are waiting for the worker.
    fn receive_backlog(&self) -> bool {
        self.queue_tx.capacity() < self.queue_tx.max_capacity()
    }

    /// Sends the read receipts deferred while group messages were waiting (the worker calls it
    /// once its queue is empty), on a task of their own.
    pub(super) fn flush_reads(&self) {
        let due = lock(&self.notices).take_pending_reads();
        if due.is_empty() {
            return;
        }
        let Some(me) = self.self_arc() else { return };
        tokio::spawn(async move {
            for (gid, sent_at, up_to) in due {
                if let Err(e) = me.send_read(&gid, sent_at, &up_to).await {
                    tracing::info!(peer = %me.client_id, group = %gid, error = %crate::sanitize::Sanitized(&e), "deferred group read receipt not sent");
                }
            }
        });
    }

    /// Tells the members of `gid` that this user started or stopped typing. Returns whether a
    /// notice went: "started" at most every [`defaults::GROUP_TYPING_RESEND`], "stopped" only
    /// after a "started", none in a group of more than [`defaults::GROUP_TYPING_MAX_MEMBERS`].
    pub(crate) async fn typing(&self, gid: &GroupId, started: bool) -> Result<bool, PeerError> {
        self.not_direct(gid)?;
        if self.info(gid)?.members.len() > defaults::GROUP_TYPING_MAX_MEMBERS {
            return Ok(false);
        }
        if !lock(&self.notices).may_send_typing(gid, started, Instant::now()) {
            return Ok(false);
        }
        let typing = Content::Typing { started };
        let (kind, body) = typing.encode()?;
        if let Err(e) = self.seal_and_send(gid, kind, body, new_message_id()).await {
            if started {
                lock(&self.notices).typing_not_sent(gid);
            }
            return Err(e);
        }
        Ok(true)
    }

    /// A read receipt of `member` in `gid` (MLS authenticated it): the event to raise, `None`
    /// when it is ignored (rate-bounded, receipts off, not forward), or why it is refused.
    pub(super) fn read_receipt(
        &self,
        gid: &GroupId,
        member: &MemberIdentity,
        body: &str,
    ) -> Result<Option<PeerEvent>, String> {
        let reader = &member.client_id;
        let b: ReadBody =
            serde_json::from_str(body).map_err(|_| "malformed group read receipt".to_owned())?;
        if !lock(&self.notices).admit(gid, reader, Instant::now()) {
            tracing::debug!(peer = %self.client_id, group = %gid, from = %reader, "group read receipt over the rate bound, dropped");
            return Ok(None);
        }
        let known = match self
            .history
            .find_in_group(gid, &b.up_to.sender, &b.up_to.message_id)
        {
            Ok(Some(m)) => m,
            Ok(None) => return Err("the read receipt names no message of this group".into()),
            Err(e) => {
                return Err(format!(
                    "the history could not be read for a read receipt: {e}"
                ))
            }
        };
        let own = *reader == self.client_id;
        if !own && !self.read_receipts.load(Ordering::Relaxed) {
            return Ok(None);
        }
        if !lock(&self.notices).read(gid, reader, known.sent_at, &b.up_to) {
            return Ok(None);
        }
        let (group, device, up_to) = (gid.clone(), member.device_id.clone(), b.up_to);
        Ok(Some(if own {
            PeerEvent::GroupReadElsewhere {
                group,
                device,
                up_to,
            }
        } else {
            PeerEvent::GroupRead {
                group,
                member: reader.clone(),
                device,
                up_to,
            }
        }))
    }

    /// A typing notice of `sender` in `gid` signed at `sent_at`: the event to raise, if any.
    pub(super) fn typing_notice(
        &self,
        gid: &GroupId,
        sender: &ClientId,
        started: bool,
        sent_at: u64,
    ) -> Option<PeerEvent> {
        // Our own other devices' typing is not shown to us.
        if *sender == self.client_id {
            return None;
        }
        let shown_ms = u64::try_from(defaults::GROUP_TYPING_SHOWN.as_millis()).unwrap_or(u64::MAX);
        if started && now_ms().saturating_sub(sent_at) > shown_ms {
            // It waited in a mailbox: old news.
            return None;
        }
        let now = Instant::now();
        let mut n = lock(&self.notices);
        if !n.admit(gid, sender, now) {
            tracing::debug!(peer = %self.client_id, group = %gid, from = %sender, "group typing notice over the rate bound, dropped");
            return None;
        }
        let started = match n.typing(gid, sender, started, now) {
            TypingChange::Started => true,
            TypingChange::Stopped => false,
            TypingChange::Nothing => return None,
        };
        Some(PeerEvent::GroupTyping {
            group: gid.clone(),
            member: sender.clone(),
            started,
        })
    }

    /// A message of `sender` arrived in `gid`: if it was shown typing, it stopped (raised before
    /// the message). Not counted against the member's notice rate.
    pub(super) fn typing_ended_by_message(&self, gid: &GroupId, sender: &ClientId) {
        let change = lock(&self.notices).typing(gid, sender, false, Instant::now());
        if change == TypingChange::Stopped {
            self.dispatcher.emit(PeerEvent::GroupTyping {
                group: gid.clone(),
                member: sender.clone(),
                started: false,
            });
        }
    }

    /// Ends the typing of members whose last notice is [`defaults::GROUP_TYPING_SHOWN`] old.
    pub(super) fn typing_expired(&self) {
        let gone = lock(&self.notices).expired_typing(Instant::now());
        for (group, member) in gone {
            self.dispatcher.emit(PeerEvent::GroupTyping {
                group,
                member,
                started: false,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use lattice_protocol::MessageId;

    use super::*;

    fn g(b: u8) -> GroupId {
        GroupId::from_bytes(&[b; 16])
    }

    fn id(s: &str) -> ClientId {
        ClientId::new(s).unwrap()
    }

    fn r(sender: &str, m: &str) -> MessageRef {
        MessageRef {
            sender: id(sender),
            message_id: MessageId::new(m).unwrap(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_members_typing_expires_by_itself_and_a_renewal_extends_it() {
        let mut n = Notices::default();
        let t0 = Instant::now();
        assert_eq!(n.typing(&g(1), &id("bob"), true, t0), TypingChange::Started);
        assert_eq!(
            n.next_typing_expiry(),
            Some(t0 + defaults::GROUP_TYPING_SHOWN)
        );
        tokio::time::advance(defaults::GROUP_TYPING_SHOWN - Duration::from_secs(1)).await;
        assert!(n.expired_typing(Instant::now()).is_empty());
        // Still typing: no new event, a later expiry.
        assert_eq!(
            n.typing(&g(1), &id("bob"), true, Instant::now()),
            TypingChange::Nothing
        );
        tokio::time::advance(defaults::GROUP_TYPING_SHOWN - Duration::from_secs(1)).await;
        assert!(n.expired_typing(Instant::now()).is_empty());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(n.expired_typing(Instant::now()), vec![(g(1), id("bob"))]);
        assert_eq!(n.next_typing_expiry(), None);
        // A "stopped" after it expired raises nothing; one while shown raises "stopped".
        assert_eq!(
            n.typing(&g(1), &id("bob"), false, Instant::now()),
            TypingChange::Nothing
        );
        n.typing(&g(1), &id("bob"), true, Instant::now());
        assert_eq!(
            n.typing(&g(1), &id("bob"), false, Instant::now()),
            TypingChange::Stopped
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_flood_from_one_member_is_cut_per_window_and_others_are_unaffected() {
        let mut n = Notices::default();
        let now = Instant::now();
        let admitted = (0..100)
            .filter(|_| n.admit(&g(1), &id("mallory"), now))
            .count();
        assert_eq!(admitted, defaults::GROUP_NOTICES_PER_WINDOW as usize);
        assert!(
            n.admit(&g(1), &id("bob"), now),
            "another member still gets through"
        );
        tokio::time::advance(defaults::GROUP_NOTICE_WINDOW).await;
        assert!(
            n.admit(&g(1), &id("mallory"), Instant::now()),
            "a new window"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_maps_stay_bounded_however_many_members_write() {
        let mut n = Notices::default();
        let now = Instant::now();
        for i in 0..defaults::GROUP_NOTICE_ENTRIES + 10 {
            let m = id(&format!("m{i}"));
            n.admit(&g(1), &m, now);
            n.typing(&g(1), &m, true, now);
            n.read(&g(1), &m, u64::try_from(i).unwrap(), &r("a", "x"));
        }
        assert_eq!(n.rate.len(), defaults::GROUP_NOTICE_ENTRIES);
        assert_eq!(n.typing.len(), defaults::GROUP_NOTICE_ENTRIES);
        assert_eq!(n.read.len(), defaults::GROUP_NOTICE_ENTRIES);
        // Once the windows and typing marks expire, new members get in again.
        tokio::time::advance(defaults::GROUP_NOTICE_WINDOW).await;
        assert!(n.admit(&g(1), &id("late"), Instant::now()));
        assert_eq!(
            n.typing(&g(1), &id("late"), true, Instant::now()),
            TypingChange::Started
        );
    }

    #[test]
    fn a_read_mark_only_moves_forward() {
        let mut n = Notices::default();
        assert!(n.read(&g(1), &id("bob"), 10, &r("alice", "m2")));
        assert!(
            !n.read(&g(1), &id("bob"), 5, &r("alice", "m1")),
            "backwards"
        );
        assert!(
            !n.read(&g(1), &id("bob"), 10, &r("alice", "m2")),
            "the same"
        );
        assert!(
            n.read(&g(1), &id("bob"), 10, &r("carol", "m3")),
            "same time, other message"
        );
        assert!(n.read(&g(1), &id("bob"), 11, &r("carol", "m4")));
        assert!(n.read(&g(2), &id("bob"), 1, &r("alice", "m9")), "per group");
        n.forget(&g(1));
        assert!(n.read(&g(1), &id("bob"), 1, &r("alice", "m1")));
    }

    #[test]
    fn a_deferred_read_keeps_the_newest_per_group_until_taken() {
        let mut n = Notices::default();
        n.defer_read(&g(1), 10, &r("alice", "m2"));
        n.defer_read(&g(1), 5, &r("alice", "m1"));
        n.defer_read(&g(2), 1, &r("bob", "x"));
        let mut due = n.take_pending_reads();
        due.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            due,
            vec![(g(1), 10, r("alice", "m2")), (g(2), 1, r("bob", "x"))]
        );
        assert!(n.take_pending_reads().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn started_typing_is_sent_at_most_every_resend_and_stopped_only_after_started() {
        let mut n = Notices::default();
        assert!(!n.may_send_typing(&g(1), false, Instant::now()));
        assert!(n.may_send_typing(&g(1), true, Instant::now()));
        assert!(!n.may_send_typing(&g(1), true, Instant::now()));
        tokio::time::advance(defaults::GROUP_TYPING_RESEND).await;
        assert!(n.may_send_typing(&g(1), true, Instant::now()));
        assert!(n.may_send_typing(&g(1), false, Instant::now()));
        assert!(!n.may_send_typing(&g(1), false, Instant::now()));
    }
}
