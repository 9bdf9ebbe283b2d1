//! The event model: [`PeerEvent`], the handler registry behind `on_*` and [`HandlerHandle`], and
//! [`EventStream`].
//!
//! Every event goes to the registered handlers first (called synchronously, in registration order,
//! on the task that produced the event) and then to every [`EventStream`] subscriber through a
//! bounded broadcast channel. A subscriber that falls [`crate::defaults::EVENT_CAPACITY`] events
//! behind loses the oldest ones and receives [`PeerEvent::Lagged`] with the count; handlers never
//! lose events.

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};

use futures_util::{Stream, StreamExt as _};
use lattice_crypto::Fingerprint;
use lattice_protocol::{
    ClientId, ConversationId, DeviceId, MessageAck, MessageId, Question, QuestionId,
};
use tokio::sync::broadcast;

use crate::content::{
    Content, MessageRef, ReactionAction, KIND_DELETE, KIND_EDIT, KIND_FILE_DIGEST, KIND_REACTION,
    KIND_RECEIPT, KIND_TYPING,
};
use crate::sync::lock;

use crate::PeerError;

/// The state of the connection to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnectionState {
    /// Not connected, and not trying (before `connect`, after `disconnect`, after the reconnect
    /// policy gave up, or after another connection of this identity replaced ours).
    Disconnected,
    /// Dialling and registering for the first time.
    Connecting,
    /// Connected and registered: requests and messages flow.
    Connected,
    /// The connection was lost; the peer is trying again.
    Reconnecting {
        /// 1 for the first attempt after a loss.
        attempt: u32,
    },
}

/// Which envelope an incoming message came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// `lattice-v1`: signed by the sender's pinned identity key.
    LatticeV1,
    /// `ml-kem-aes`: the original clients' envelope; authenticates nobody.
    MlKemAes,
    /// `mls`: a 1:1 conversation as a two-member MLS group (forward secrecy, post-compromise
    /// security); the sender is authenticated by its MLS credential, bound to its identity key.
    Mls,
}

impl Algorithm {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LatticeV1 => lattice_crypto::lattice_v1::ALGORITHM,
            Self::MlKemAes => lattice_crypto::ml_kem_aes::ALGORITHM,
            Self::Mls => lattice_protocol::MLS_ALGORITHM,
        }
    }
}

/// A file transfer's id: stable across restarts (it names the transfer's journal).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TransferId(pub(crate) String);

impl TransferId {
    /// The id as text (32 lowercase hex digits).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Parses an id given as text (e.g. kept by the app).
    ///
    /// # Errors
    /// [`PeerError::InvalidArgument`] unless it is 32 lowercase hex digits.
    pub fn parse(s: &str) -> Result<Self, PeerError> {
        if s.len() == 32
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(Self(s.to_owned()))
        } else {
            Err(PeerError::InvalidArgument(format!(
                "a transfer id is 32 lowercase hex digits, got {} characters",
                s.len()
            )))
        }
    }
}

impl fmt::Display for TransferId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which way a file goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransferDirection {
    /// We send it (upload to the blob store, then the file message).
    Upload,
    /// We fetch it (download from the blob store into the path the app chose).
    Download,
}

/// Where a transfer is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TransferState {
    /// Waiting for its turn (a bounded number of transfers run at once) or for the connection.
    Queued,
    /// Moving bytes.
    Running,
    /// Paused by the app; [`crate::MessagingPeer::resume_transfer`] continues it (also after a
    /// restart).
    Paused,
    /// Done: an upload's message is sent; a download is verified and in place.
    Completed,
    /// Stopped for the readable reason given. A failure that may pass (the network stayed down
    /// through every retry) keeps the transfer's journal: `resume_transfer` tries again.
    Failed(String),
    /// Cancelled by the app; nothing of it is left (the blob is deleted, the partial file removed).
    Cancelled,
}

impl TransferState {
    /// Whether the transfer is over for good (completed or cancelled).
    pub fn is_final(&self) -> bool {
        matches!(self, Self::Completed | Self::Cancelled)
    }
}

/// A transfer's progress, as [`PeerEvent::Transfer`] reports it and
/// [`crate::MessagingPeer::transfers`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferProgress {
    /// The transfer.
    pub id: TransferId,
    /// Upload or download.
    pub direction: TransferDirection,
    /// The recipient of an upload, the sender of a download.
    pub peer: ClientId,
    /// The file message: the id it is (or will be) sent with for an upload; the id of the
    /// message that carried the file for a download.
    pub message_id: Option<MessageId>,
    /// The file's name.
    pub name: String,
    /// Plaintext bytes done (acknowledged by the server, or verified and written).
    pub done: u64,
    /// The file's size.
    pub total: u64,
    /// Where it is.
    pub state: TransferState,
}

/// A decrypted message that passed every check.
#[derive(Clone, PartialEq, Eq)]
pub struct IncomingMessage {
    /// The sender (for a verified message: proven by its signature; otherwise: as the server says).
    pub from: ClientId,
    /// The text to show: the text of a text or a reply, and for a kind this version does not
    /// know a short "unsupported message" notice ([`Content::display_text`]).
    pub text: String,
    /// What the message says: [`Content::Text`], [`Content::Reply`] or
    /// [`Content::Unsupported`] (the kinds that change other messages come as their own events).
    pub content: Content,
    /// The sender's message id (always present for `lattice-v1`).
    pub message_id: Option<MessageId>,
    /// `true` when the sender's signature verified with its pinned identity key. UIs must show an
    /// unverified message as coming from an unverified sender.
    pub verified: bool,
    /// The envelope it came in.
    pub algorithm: Algorithm,
    /// The sender's clock when it sent the message (unix ms), for `lattice-v1`.
    pub sent_at: Option<u64>,
    /// When the server accepted the message (unix ms).
    pub server_timestamp: u64,
}

impl fmt::Debug for IncomingMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The text stays out of logs.
        f.debug_struct("IncomingMessage")
            .field("from", &self.from)
            .field("text", &format_args!("<{} bytes>", self.text.len()))
            .field("content", &self.content)
            .field("message_id", &self.message_id)
            .field("verified", &self.verified)
            .field("algorithm", &self.algorithm)
            .field("sent_at", &self.sent_at)
            .field("server_timestamp", &self.server_timestamp)
            .finish()
    }
}

/// A verified change to an earlier message, or a notice about the conversation, from `from`.
/// Each passed the checks of the content layer: an edit or a delete comes from the original
/// sender of a message that exists, within [`crate::defaults::EDIT_WINDOW`]; a reaction refers to
/// a message of the conversation; a receipt names only messages we sent to `from`.
#[derive(Clone, PartialEq, Eq)]
pub struct ContentUpdate {
    /// The sender (proven by its signature).
    pub from: ClientId,
    /// The id of the message that carried the update.
    pub message_id: MessageId,
    /// The sender's clock when it sent the update (signed, unix ms).
    pub sent_at: u64,
    /// When the server accepted it (unix ms).
    pub server_timestamp: u64,
    /// What changed.
    pub change: Change,
}

impl fmt::Debug for ContentUpdate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let change = match &self.change {
            // An edit's text stays out of logs.
            Change::Edited { target, text } => {
                format!(
                    "Edited {{ target: {target:?}, text: <{} bytes> }}",
                    text.len()
                )
            }
            // So is a reaction's emoji (it is something the user wrote).
            Change::Reaction { target, action, .. } => {
                format!("Reaction {{ target: {target:?}, action: {action:?} }}")
            }
            other => format!("{other:?}"),
        };
        f.debug_struct("ContentUpdate")
            .field("from", &self.from)
            .field("message_id", &self.message_id)
            .field("sent_at", &self.sent_at)
            .field("change", &format_args!("{change}"))
            .finish()
    }
}

/// What a [`ContentUpdate`] changes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Change {
    /// The sender's message `target` now reads `text` (keep the earlier text if you like).
    Edited {
        /// The sender's message.
        target: MessageId,
        /// Its new text.
        text: String,
    },
    /// The sender deleted its message `target` for everyone.
    Deleted {
        /// The sender's message.
        target: MessageId,
    },
    /// The sender reacted to `target` (or took its reaction back).
    Reaction {
        /// The message reacted to (ours or the sender's).
        target: MessageRef,
        /// The emoji.
        emoji: String,
        /// Added or removed.
        action: ReactionAction,
    },
    /// The sender read these messages of ours.
    Read {
        /// Our message ids.
        message_ids: Vec<MessageId>,
    },
    /// The sender started (`true`) or stopped typing. Like every message it may have waited in
    /// the server's mailbox while we were offline: compare [`ContentUpdate::sent_at`] with the
    /// clock before showing it.
    Typing {
        /// Started or stopped.
        started: bool,
    },
    /// The digest of the sender's file `target`, which follows the file message once the
    /// upload is complete. The library has applied it already (a download of that file waiting
    /// for it completes); an app needs to do nothing with it.
    FileDigest {
        /// The sender's `file` message.
        target: MessageId,
        /// 64 lowercase hex digits.
        digest: String,
    },
}

impl Change {
    /// The wire kind of the content that carried the change (`edit`, `delete`, …).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Edited { .. } => KIND_EDIT,
            Self::Deleted { .. } => KIND_DELETE,
            Self::Reaction { .. } => KIND_REACTION,
            Self::Read { .. } => KIND_RECEIPT,
            Self::Typing { .. } => KIND_TYPING,
            Self::FileDigest { .. } => KIND_FILE_DIGEST,
        }
    }
}

/// A question from the server. Answer it with [`crate::MessagingPeer::respond_to_server`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingQuestion {
    /// Answer with this id.
    pub question_id: QuestionId,
    /// The question: text, and for Lattice servers its kind and options.
    pub question: Question,
    /// Shared by the rounds of one conversation.
    pub conversation_id: Option<ConversationId>,
    /// 1 for the first question of a conversation.
    pub round: Option<u32>,
}

/// What changed in a group (the membership and name events of MLS).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum GroupChange {
    /// This device joined the group from a Welcome.
    Joined {
        /// The group's name.
        name: String,
        /// Everyone in it, this device included.
        members: Vec<ClientId>,
    },
    /// Members were added.
    MembersAdded(Vec<ClientId>),
    /// A member was removed or left.
    MemberRemoved(ClientId),
    /// A new device of a member joined (a device the member linked: "alice's laptop joined").
    DeviceAdded {
        /// The member.
        member: ClientId,
        /// Its device.
        device: lattice_protocol::DeviceId,
    },
    /// A device of a member was removed (its id dropped it from its signed device list).
    DeviceRemoved {
        /// The member.
        member: ClientId,
        /// Its device.
        device: lattice_protocol::DeviceId,
    },
    /// A member asked to leave (another member commits it).
    LeaveRequested(ClientId),
    /// A member rotated its keys (a self-update: healing).
    MemberUpdated(ClientId),
    /// The group was renamed.
    Renamed(String),
    /// The group moved to a new epoch.
    EpochChanged(u64),
    /// This device was removed from the group; its state for the group is gone.
    Removed,
}

/// Something the user should see about a 1:1 conversation over MLS (a system line, not an
/// error of the app).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConversationNotice {
    /// A message from the peer could not be read: it came in an MLS conversation this device
    /// no longer has (its MLS state was lost: a restored backup, a reinstall). A new
    /// conversation is set up with the peer; only the peer can send the message again.
    Unreadable {
        /// The message's id, as the server named it.
        message_id: Option<MessageId>,
    },
    /// The peer started over with a new MLS state (a restored backup, a reinstall, the same
    /// identity on a new install): the conversation moved to a new MLS group, and what was sent
    /// to its old state after the loss may not have been read.
    PeerStartedOver,
}

/// A message in a group that decrypted and passed every check.
#[derive(Clone, PartialEq, Eq)]
pub struct GroupMessage {
    /// The group.
    pub group: lattice_mls::GroupId,
    /// The sender, as MLS authenticated it (its credential is bound to its pinned identity key).
    pub from: ClientId,
    /// The sender's message id.
    pub message_id: MessageId,
    /// What it says ([`Content::Text`] or [`Content::Reply`]).
    pub content: Content,
    /// The sender's clock when it sent the message (unix ms; not checked).
    pub sent_at: u64,
}

impl std::fmt::Debug for GroupMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupMessage")
            .field("group", &self.group)
            .field("from", &self.from)
            .field("message_id", &self.message_id)
            .field("content", &self.content)
            .finish_non_exhaustive()
    }
}

/// A conversation: a 1:1 with a peer, or a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conversation {
    /// The 1:1 conversation with this peer.
    Direct(ClientId),
    /// This group.
    Group(lattice_mls::GroupId),
}

/// A message **this id** sent from another of its devices (docs/mls.md, *Multi-device*): every
/// device of an id is a member of its 1:1 conversations and groups, so each reads what the others
/// send. Show it as outgoing, with where it was sent from ("sent from laptop").
#[derive(Clone, PartialEq, Eq)]
pub struct OwnMessage {
    /// Where it was sent.
    pub conversation: Conversation,
    /// The device that sent it: `None` for the id's primary device, else a linked device's id
    /// (as its MLS credential, checked against the id's signed device list, names it).
    pub device: Option<String>,
    /// The sending device's message id.
    pub message_id: MessageId,
    /// What it says ([`Content::Text`], [`Content::Reply`], [`Content::File`], …).
    pub content: Content,
    /// The sending device's clock when it sent it (unix ms; not checked).
    pub sent_at: u64,
}

impl std::fmt::Debug for OwnMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The content stays out of logs.
        f.debug_struct("OwnMessage")
            .field("conversation", &self.conversation)
            .field("device", &self.device)
            .field("message_id", &self.message_id)
            .field("kind", &self.content.kind())
            .finish_non_exhaustive()
    }
}

/// Everything a [`crate::MessagingPeer`] reports.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum PeerEvent {
    /// A message that decrypted and passed every check.
    Message(IncomingMessage),
    /// An edit, a delete, a reaction, a read receipt or a typing notice that decrypted and passed
    /// every check.
    Update(ContentUpdate),
    /// Something went wrong outside any call: a refused incoming message
    /// ([`PeerError::Rejected`]), a server error for a request nobody waits for, a bad frame.
    Error(PeerError),
    /// A peer registered (*ext*; sent to peers that have discovered).
    PeerConnected(ClientId),
    /// A peer's connection closed.
    PeerDisconnected(ClientId),
    /// The connection state changed.
    ConnectionState(ConnectionState),
    /// The server asks something.
    ServerQuestion(IncomingQuestion),
    /// The server delivered or queued a message we sent.
    MessageAck(MessageAck),
    /// The server refused a message we sent (e.g. `PEER_NOT_FOUND`).
    MessageFailed {
        /// Our message id.
        message_id: MessageId,
        /// The recipient.
        target: ClientId,
        /// The server's error.
        error: PeerError,
    },
    /// A known peer presents a new identity key (raised once per new key; a second change in one
    /// run raises its own event). Nothing is sent to or accepted from it until
    /// [`crate::MessagingPeer::accept_key_change`] is called with the fingerprint the user
    /// compared, `new`.
    KeyChanged {
        /// The peer.
        peer: ClientId,
        /// Fingerprint of the pinned key.
        old: Fingerprint,
        /// Fingerprint of the new key.
        new: Fingerprint,
    },
    /// The peer (re-)registered with the server.
    Registered {
        /// Our id.
        client_id: ClientId,
        /// Whether the server verified our identity.
        verified: bool,
    },
    /// A message in a group that decrypted and passed every check.
    GroupMessage(GroupMessage),
    /// An edit, a delete or a reaction in a group that decrypted and passed every check of the
    /// group's history: an edit or a delete comes from the member who wrote the message (as MLS
    /// authenticated it), within [`crate::defaults::EDIT_WINDOW`], once; a reaction refers to a
    /// message of this group. `update.from` is the member MLS authenticated.
    GroupUpdate {
        /// The group.
        group: lattice_mls::GroupId,
        /// What changed, as for [`PeerEvent::Update`] in a 1:1 conversation.
        update: ContentUpdate,
    },
    /// A member of a group read its messages up to `up_to` (that message and every earlier one
    /// of the group): "read by alice" under it and above. Raised once the library checked that
    /// `up_to` is a message of this group's history and that it moves the member's mark forward
    /// (an older or repeated receipt is ignored); never for our own id (see
    /// [`PeerEvent::GroupReadElsewhere`]), and not while read receipts are off
    /// ([`crate::MessagingPeer::set_read_receipts`]). There is no per-member "delivered" in
    /// groups: the sender knows that the server stored its message for the members (the send
    /// returned), and per member only this.
    GroupRead {
        /// The group.
        group: lattice_mls::GroupId,
        /// The reader, as MLS authenticated it.
        member: ClientId,
        /// The reader's device: `None` for its primary, else a linked device's id.
        device: Option<String>,
        /// The newest message it read (any member's, ours included).
        up_to: MessageRef,
    },
    /// This id read the group up to `up_to` on another of its devices: clear the group's
    /// unread count up to there (a multi-device user who read on the phone expects the laptop
    /// to show nothing unread). Forward only, like [`PeerEvent::GroupRead`].
    GroupReadElsewhere {
        /// The group.
        group: lattice_mls::GroupId,
        /// The device that read: `None` for the primary, else a linked device's id.
        device: Option<String>,
        /// The newest message read there.
        up_to: MessageRef,
    },
    /// A member of a group started or stopped typing. The library ends a member's typing by
    /// itself [`crate::defaults::GROUP_TYPING_SHOWN`] after its last notice, and when its
    /// message arrives (raising `started: false` just before it), so an app shows "bob is
    /// typing…" from `true` to `false` and keeps no timer. Never raised for our own id's devices; not stored.
    GroupTyping {
        /// The group.
        group: lattice_mls::GroupId,
        /// The member, as MLS authenticated it.
        member: ClientId,
        /// Started (`true`) or stopped.
        started: bool,
    },
    /// A group's membership, name or epoch changed (or this device joined or was removed).
    GroupChanged {
        /// The group.
        group: lattice_mls::GroupId,
        /// Who made the change (the sender of the Commit, Welcome or proposal; us for our own).
        by: Option<ClientId>,
        /// What changed.
        change: GroupChange,
    },
    /// Messages with `peer` go over MLS from now on: it was just pinned as speaking MLS (we set
    /// the 1:1 conversation up from its KeyPackage, or joined the one it set up from its
    /// Welcome), so [`crate::MessagingPeer::conversation_envelope`] now says
    /// [`Algorithm::Mls`]. Raised once per peer, whatever set the conversation up (a message, a
    /// receipt, a typing notice): an app showing the envelope refreshes it on this.
    MovedToMls {
        /// The peer.
        peer: ClientId,
    },
    /// A notice about the 1:1 conversation with `peer` (see [`ConversationNotice`]).
    ConversationNotice {
        /// The peer.
        peer: ClientId,
        /// What happened.
        notice: ConversationNotice,
    },
    /// A file transfer moved on: at most [`crate::defaults::TRANSFER_EVENT_INTERVAL`] apart per
    /// transfer while bytes move, and on every change of state.
    Transfer(TransferProgress),
    /// A contact's signed device list changed: devices of `peer` were added (it linked a new
    /// device: "bob added a device") or removed. Shown to the user like a key change is; the
    /// new devices' MLS leaves are accepted because the list is signed by `peer`'s pinned key.
    DevicesChanged {
        /// The contact.
        peer: ClientId,
        /// Devices now on its list that were not.
        added: Vec<lattice_protocol::DeviceId>,
        /// Devices no longer on it.
        removed: Vec<lattice_protocol::DeviceId>,
    },
    /// Device linking moved on (see [`crate::LinkEvent`]).
    Link(LinkEvent),
    /// A message this id sent from another of its devices, in a 1:1 conversation or a group
    /// (see [`OwnMessage`]): an outgoing message, never one from a peer.
    OwnMessage(OwnMessage),
    /// This [`EventStream`] fell behind and missed `missed` events (handlers are not affected).
    Lagged {
        /// How many events were lost.
        missed: u64,
    },
}

/// Why a linking run ended without a linked device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LinkFailure {
    /// Key confirmation failed: the code typed was not the one shown, or a message was replayed
    /// or tampered with. The code is spent.
    WrongCode,
    /// The user of the first device refused the new device.
    Refused,
    /// The run outlived [`crate::defaults::LINK_CODE_TTL`].
    Expired,
    /// The other side sent something that is not a well-formed step of this run.
    Malformed,
}

/// Linking progress, reported as [`PeerEvent::Link`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum LinkEvent {
    /// First device: a new device asks to join this id; ask the user for the code it shows.
    Request {
        /// The new device's throwaway relay id.
        relay_id: ClientId,
        /// The device id it chose.
        device_id: DeviceId,
    },
    /// First device: the code was right; show `fingerprint` (the new device's key) and ask the
    /// user to compare it with the one the new device shows, then [`crate::MessagingPeer::approve_link`].
    AwaitingApproval {
        /// The new device's relay id.
        relay_id: ClientId,
        /// Its device id.
        device_id: DeviceId,
        /// Safety number of its device key.
        fingerprint: Fingerprint,
    },
    /// First device: the bundle was sent and the new device list published.
    Approved {
        /// The device now on the list.
        device_id: DeviceId,
    },
    /// New device: the bundle arrived and opened; take it with [`crate::MessagingPeer::take_linked_device`].
    Linked {
        /// The id this device now belongs to.
        client_id: ClientId,
        /// This device's id.
        device_id: DeviceId,
    },
    /// Either side: the run ended without linking.
    Failed {
        /// The other side (the id joined, or the relay id).
        with: ClientId,
        /// Why.
        reason: LinkFailure,
    },
}

type Callback = Arc<dyn Fn(&PeerEvent) + Send + Sync>;

/// Registered handlers and the broadcast channel behind [`EventStream`].
pub(crate) struct Dispatcher {
    next_id: AtomicU64,
    // std Mutex: held to push, remove or clone the list, never while a handler runs.
    handlers: Mutex<Vec<(u64, Callback)>>,
    events: broadcast::Sender<PeerEvent>,
}

impl fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = lock(&self.handlers).len();
        f.debug_struct("Dispatcher")
            .field("handlers", &n)
            .field("subscribers", &self.events.receiver_count())
            .finish()
    }
}

impl Dispatcher {
    pub(crate) fn new(capacity: usize) -> Arc<Self> {
        let (events, _) = broadcast::channel(capacity.max(1));
        Arc::new(Self {
            next_id: AtomicU64::new(1),
            handlers: Mutex::new(Vec::new()),
            events,
        })
    }

    pub(crate) fn add(self: &Arc<Self>, f: Callback) -> HandlerHandle {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        lock(&self.handlers).push((id, f));
        HandlerHandle {
            id,
            dispatcher: Arc::downgrade(self),
        }
    }

    fn remove(&self, id: u64) -> bool {
        let mut h = lock(&self.handlers);
        let before = h.len();
        h.retain(|(i, _)| *i != id);
        h.len() != before
    }

    /// Calls every handler, then broadcasts. A panicking handler is logged and skipped: it must
    /// not take the connection down with it.
    pub(crate) fn emit(&self, event: PeerEvent) {
        let handlers: Vec<Callback> = lock(&self.handlers)
            .iter()
            .map(|(_, f)| Arc::clone(f))
            .collect();
        for f in handlers {
            if catch_unwind(AssertUnwindSafe(|| f(&event))).is_err() {
                tracing::error!(
                    "an event handler panicked; the event was still delivered to the others"
                );
            }
        }
        // Err only means nobody subscribed.
        let _ = self.events.send(event);
    }

    pub(crate) fn subscribe(&self) -> EventStream {
        EventStream::new(self.events.subscribe())
    }
}

/// Records every event `dispatcher` emits, for unit tests.
#[cfg(test)]
pub(crate) fn record(dispatcher: &Arc<Dispatcher>) -> Arc<Mutex<Vec<PeerEvent>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    let _ = dispatcher.add(Arc::new(move |ev: &PeerEvent| lock(&sink).push(ev.clone())));
    seen
}

/// Removes a handler registered with one of the `on_*` methods.
///
/// Dropping the handle keeps the handler registered (so `peer.on_message(..);` works as in the
/// original); call [`HandlerHandle::remove`] to unregister it.
#[derive(Debug, Clone)]
pub struct HandlerHandle {
    id: u64,
    dispatcher: Weak<Dispatcher>,
}

impl HandlerHandle {
    /// Unregisters the handler. Returns `false` if it was already removed (or the peer is gone).
    pub fn remove(&self) -> bool {
        self.dispatcher.upgrade().is_some_and(|d| d.remove(self.id))
    }
}

/// A stream of [`PeerEvent`]s, from [`crate::MessagingPeer::events`].
///
/// ```no_run
/// # async fn f(peer: lattice_peer::MessagingPeer) {
/// use lattice_peer::PeerEvent;
/// let mut events = peer.events();
/// while let Some(ev) = events.next().await {
///     if let PeerEvent::Message(m) = ev {
///         println!("{}: {}", m.from, m.text);
///     }
/// }
/// # }
/// ```
pub struct EventStream {
    inner: Pin<Box<dyn Stream<Item = PeerEvent> + Send>>,
}

impl fmt::Debug for EventStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventStream").finish_non_exhaustive()
    }
}

impl EventStream {
    fn new(rx: broadcast::Receiver<PeerEvent>) -> Self {
        let inner = futures_util::stream::unfold(rx, |mut rx| async move {
            match rx.recv().await {
                Ok(ev) => Some((ev, rx)),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    Some((PeerEvent::Lagged { missed }, rx))
                }
                Err(broadcast::error::RecvError::Closed) => None,
            }
        });
        Self {
            inner: Box::pin(inner),
        }
    }

    /// The next event; `None` once the peer is dropped.
    pub async fn next(&mut self) -> Option<PeerEvent> {
        self.inner.next().await
    }
}

impl Stream for EventStream {
    type Item = PeerEvent;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<PeerEvent>> {
        self.inner.as_mut().poll_next(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[tokio::test]
    async fn handlers_are_called_until_removed_and_panics_are_contained() {
        let d = Dispatcher::new(4);
        let count = Arc::new(AtomicUsize::new(0));
        let c = Arc::clone(&count);
        let h = d.add(Arc::new(move |_ev: &PeerEvent| {
            c.fetch_add(1, Ordering::SeqCst);
        }));
        d.add(Arc::new(|_ev: &PeerEvent| panic!("handler bug")));
        let mut stream = d.subscribe();
        d.emit(PeerEvent::Lagged { missed: 0 });
        assert_eq!(count.load(Ordering::SeqCst), 1);
        assert!(h.remove());
        assert!(!h.remove());
        d.emit(PeerEvent::Lagged { missed: 0 });
        assert_eq!(count.load(Ordering::SeqCst), 1);
        assert!(matches!(
            stream.next().await,
            Some(PeerEvent::Lagged { missed: 0 })
        ));
    }

    #[tokio::test]
    async fn a_lagging_subscriber_is_told_how_much_it_missed() {
        let d = Dispatcher::new(2);
        let mut stream = d.subscribe();
        for _ in 0..5 {
            d.emit(PeerEvent::PeerConnected(ClientId::new("x").unwrap()));
        }
        assert!(matches!(
            stream.next().await,
            Some(PeerEvent::Lagged { missed: 3 })
        ));
        assert!(matches!(
            stream.next().await,
            Some(PeerEvent::PeerConnected(_))
        ));
        assert!(matches!(
            stream.next().await,
            Some(PeerEvent::PeerConnected(_))
        ));
    }
}
