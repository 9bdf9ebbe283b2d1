//! What a session reports upwards: typed [`SessionEvent`]s on a bounded channel that one task
//! of the messenger (a layer above, not imported here) applies (storage, views, the page). Calls
//! go down (the messenger calls the session), events come up; the session holds no reference
//! to the messenger.
//!
//! Backpressure: the channel holds [`SESSION_EVENTS`]. Tasks `send(..).await` on it. The peer's
//! event handler is synchronous; when the channel is full it waits in place
//! (`block_in_place`), which holds back the peer's reader and, through it, the server — the
//! written decision for a full queue. Only on a single-threaded runtime (unit tests), where
//! waiting in place is impossible, is an event dropped, with an error log.

use lattice_protocol::ClientId;
use tokio::sync::mpsc;

use crate::contract::DeliveryStatus;
use crate::storage::MessageRecord;
use crate::views::{ConnectionView, Notice, QuestionView};

/// Events queued between a session and the messenger's applier, at most.
pub const SESSION_EVENTS: usize = 256;

/// Something that happened in a session.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionEvent {
    /// The connection indicator changed.
    Connection(ConnectionView),
    /// The connection is gone: nobody is known to be online.
    PresenceCleared,
    /// Who is online, as the server reports after a (re)registration.
    Online(Vec<ClientId>),
    /// One peer came online or went offline.
    Presence {
        /// Who.
        peer: ClientId,
        /// Online now.
        online: bool,
    },
    /// A message arrived and is stored already (the session stores it before the peer
    /// acknowledges it; see `session::store_incoming`).
    Received(MessageRecord),
    /// A stored message changed (edited, deleted for everyone, reacted to, read by the peer);
    /// the change is stored already, like a received message.
    Changed(MessageRecord),
    /// A peer started or stopped typing to us.
    Typing {
        /// Who.
        peer: ClientId,
        /// Started (`true`) or stopped.
        started: bool,
        /// The peer's signed clock when it sent the notice (unix ms): a notice that waited in
        /// the server's mailbox is stale.
        sent_at: u64,
    },
    /// A question from the server.
    Question(QuestionView),
    /// One of our messages moved on (by local id).
    Status {
        /// The local id.
        local_id: String,
        /// Where it is now.
        status: DeliveryStatus,
    },
    /// A contact presented another identity key than the pinned one.
    KeyChanged {
        /// Who.
        peer: ClientId,
        /// The new key's fingerprint.
        fingerprint: String,
    },
    /// Keys were fetched: the peer list's fingerprints changed.
    KeysFetched,
    /// Messages with this peer go over MLS from now on (the library set the 1:1 conversation up,
    /// whatever message, receipt or typing notice did it): the peer list's mark changed.
    MovedToMls(ClientId),
    /// A file transfer moved on (progress, or a new state).
    Transfer(lattice_peer::TransferProgress),
    /// A line of a group's history was stored (a message, a system line) or one of ours moved
    /// on (sent, failed).
    GroupLine(crate::storage::groups::GroupLine),
    /// A member's edit, delete or reaction changed a stored group line (no new message: no
    /// unread count, no notification).
    GroupLineChanged(crate::storage::groups::GroupLine),
    /// A group was added, renamed, or left: the group list changed.
    GroupsChanged,
    /// A group was read on another device of ours: its unread count was cleared.
    GroupReadElsewhere,
    /// A group member started or stopped typing (the library ends it by itself).
    GroupTyping {
        /// The group (hex id).
        group: String,
        /// Who.
        member: ClientId,
        /// Started or stopped.
        started: bool,
    },
    /// Something to tell the person.
    Notice(Notice),
    /// Linking a new device moved on (first device: a request, the fingerprint to compare,
    /// approved, failed).
    Link(crate::views::LinkView),
    /// This linked device was removed from its id (the server closed it with 4001 or refused
    /// it as an unknown device): the peer stopped for good and never dials again.
    DeviceRemoved,
}

/// The sending side, shared by a session's handler and tasks.
#[derive(Debug, Clone)]
pub struct EventSink(mpsc::Sender<SessionEvent>);

impl EventSink {
    /// A sink and the receiver its events go to.
    pub fn channel() -> (Self, mpsc::Receiver<SessionEvent>) {
        let (tx, rx) = mpsc::channel(SESSION_EVENTS);
        (Self(tx), rx)
    }

    /// Sends from a task, waiting for room. A closed channel (the messenger stopped applying)
    /// drops the event: nobody is left to tell.
    pub async fn send(&self, event: SessionEvent) {
        if self.0.send(event).await.is_err() {
            tracing::debug!("session event after the applier ended");
        }
    }

    /// Sends from synchronous code (the peer's event handler); see the module docs for what
    /// happens when the channel is full.
    pub fn send_blocking(&self, event: SessionEvent) {
        match self.0.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::debug!("session event after the applier ended");
            }
            Err(mpsc::error::TrySendError::Full(event)) => {
                let handle = tokio::runtime::Handle::try_current();
                match handle {
                    Ok(handle)
                        if handle.runtime_flavor()
                            == tokio::runtime::RuntimeFlavor::MultiThread =>
                    {
                        let tx = self.0.clone();
                        tokio::task::block_in_place(|| {
                            if handle.block_on(tx.send(event)).is_err() {
                                tracing::debug!("session event after the applier ended");
                            }
                        });
                    }
                    _ => tracing::error!(
                        capacity = SESSION_EVENTS,
                        "session events full; one dropped"
                    ),
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_channel_holds_the_synchronous_sender_back_instead_of_dropping() {
        let (sink, mut rx) = EventSink::channel();
        for _ in 0..SESSION_EVENTS {
            sink.send(SessionEvent::KeysFetched).await;
        }
        // Full now: the next synchronous send waits until the applier takes one.
        let sender = {
            let sink = sink.clone();
            tokio::spawn(async move { sink.send_blocking(SessionEvent::PresenceCleared) })
        };
        assert_eq!(rx.recv().await, Some(SessionEvent::KeysFetched));
        sender.await.unwrap();
        let mut rest = Vec::new();
        while let Ok(event) = rx.try_recv() {
            rest.push(event);
        }
        assert_eq!(rest.len(), SESSION_EVENTS);
        assert_eq!(rest.last(), Some(&SessionEvent::PresenceCleared));
    }
}
