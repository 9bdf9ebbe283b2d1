//! The page contract: every name and status value that crosses to the page, defined once.
//!
//! Each enum is `serde`-serialized as its wire name, so the views carry typed values and the
//! page receives the same strings as before. [`javascript`] renders the same enums as
//! `ui/js/contract.js`, the module the page imports instead of repeating them; a unit test
//! fails when the committed file is stale (run it with `LATTICE_WRITE_CONTRACT=1` to rewrite
//! it). A leaf module: it imports nothing of the app, so storage may use it too.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How long after sending a message may be edited or deleted for everyone: the library's window
/// (`lattice_peer::defaults::EDIT_WINDOW`), which checks it on receipt.
pub const EDIT_WINDOW: Duration = lattice_peer::defaults::EDIT_WINDOW;

/// Defines a wire enum: its variants with their wire names, `ALL` in declaration order (which
/// is the order the page is given) and `as_str`.
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $wire:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub enum $name {
            $( $(#[$vmeta])* #[serde(rename = $wire)] $variant, )+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// The wire name.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $wire,)+
                }
            }

            /// `(VARIANT_NAME, wire name)` pairs, for the generated module.
            fn entries() -> Vec<(&'static str, &'static str)> {
                vec![$((stringify!($variant), $wire)),+]
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

wire_enum! {
    /// The events the backend emits to the page.
    pub enum Event {
        /// The whole peer list (`PeerView[]`), after any change.
        PeerList = "peer-list",
        /// A new or updated message (`MessageView`); the page upserts by `id`.
        Message = "message",
        /// A question from the server (`QuestionView`).
        ServerQuestion = "server-question",
        /// A question is no longer open (the payload is its `questionId`): more arrived than the
        /// app keeps open and this was the oldest.
        QuestionClosed = "question-closed",
        /// The connection state (`ConnectionView`).
        ConnectionState = "connection-state",
        /// A readable problem to show (`Notice`).
        Error = "error",
        /// A peer started or stopped typing ([`crate::views::TypingView`]).
        Typing = "typing",
        /// A message was deleted on this device ([`crate::views::RemovedView`]).
        MessageRemoved = "message-removed",
        /// A file transfer moved on ([`crate::views::TransferView`]): progress or a new state.
        Transfer = "transfer",
        /// Files are dragged over the window (`true`) or left it (`false`).
        DropHover = "drop-hover",
        /// Files were dropped on the window: the page asks to send them to the open
        /// conversation (`send_dropped`); the payload is how many.
        FilesDropped = "files-dropped",
        /// The whole list of group conversations (`GroupView[]`), after any change.
        GroupList = "group-list",
        /// A new or updated line of a group's history (`GroupMessageView`); the page upserts
        /// by `id`.
        GroupMessage = "group-message",
        /// A group member started or stopped typing ([`crate::views::GroupTypingView`]); the
        /// library ends a member's typing by itself, so the page keeps no timer.
        GroupTyping = "group-typing",
        /// Linking a new device moved on ([`crate::views::LinkView`]), on the first device.
        Link = "link",
        /// This linked device was removed from its id ([`crate::views::Me`] with `removedAt`):
        /// show the removed screen.
        DeviceRemoved = "device-removed",
    }
}

wire_enum! {
    /// Where linking a new device is, on the first device (the one holding the identity).
    pub enum LinkStage {
        /// A new device asks to be linked: ask the person for the code it shows.
        Request = "request",
        /// The code was right: show the new device's fingerprint to compare, then approve or
        /// refuse.
        AwaitingApproval = "awaitingApproval",
        /// The new device is linked and on the device list.
        Approved = "approved",
        /// The run ended without linking (the message says why).
        Failed = "failed",
    }
}

wire_enum! {
    /// Where a file attached to a message is. Stored as its wire name
    /// ([`crate::storage::files`]).
    pub enum TransferState {
        /// An incoming file nobody started to download yet (bigger than the auto-download
        /// limit, or offered while auto-download is off).
        Offered = "offered",
        /// Waiting for its turn.
        Queued = "queued",
        /// Moving bytes.
        Running = "running",
        /// Paused by the person; resumes on request.
        Paused = "paused",
        /// Every byte is there (sent, or received and checked).
        Completed = "completed",
        /// Stopped by an error (the reason is kept beside it).
        Failed = "failed",
        /// Cancelled by the person.
        Cancelled = "cancelled",
    }
}

impl TransferState {
    /// The state stored as `wire`; an unknown name reads as `Failed`.
    pub fn from_wire(wire: &str) -> Self {
        Self::ALL
            .iter()
            .copied()
            .find(|s| s.as_str() == wire)
            .unwrap_or(Self::Failed)
    }

    /// A state a transfer never leaves (a failed one may be resumed; a cancelled file is
    /// downloaded again as a new transfer).
    pub fn is_final(self) -> bool {
        matches!(self, Self::Completed | Self::Cancelled)
    }
}

wire_enum! {
    /// Where a message is on its way. The declaration order is the order of progress: the
    /// backend never moves a stored message backwards (see [`DeliveryStatus::may_replace`]), so
    /// of two statuses the page is sent for one message, the later in this order is the newer.
    pub enum DeliveryStatus {
        /// Written, in the outbox, not yet handed to a connected peer.
        Pending = "pending",
        /// Handed to the server.
        Sent = "sent",
        /// The server stored it for a recipient who is offline.
        Queued = "queued",
        /// The server delivered it to the recipient.
        Delivered = "delivered",
        /// An incoming message.
        Received = "received",
        /// The server refused it for good (unknown peer, too large, ...).
        Failed = "failed",
        /// The recipient read it (its read receipt arrived). Last, so the stored ranks of the
        /// others stay as they were.
        Read = "read",
    }
}

impl DeliveryStatus {
    /// Position in the order of progress (also the stored integer).
    pub fn rank(self) -> i64 {
        // ALL holds every variant, so the position is always found.
        Self::ALL.iter().position(|s| *s == self).unwrap_or(0) as i64
    }

    /// The status stored as `rank`; an unknown number reads as `Failed`.
    pub fn from_rank(rank: i64) -> Self {
        usize::try_from(rank)
            .ok()
            .and_then(|i| Self::ALL.get(i).copied())
            .unwrap_or(Self::Failed)
    }

    /// Whether a message now at `current` moves to `self`: only forwards, and a failure only
    /// replaces a message not yet queued or delivered (an ack can overtake the send's return,
    /// and a late failure must not undo a delivery). The one place of this rule.
    pub fn may_replace(self, current: Self) -> bool {
        match self {
            Self::Failed => matches!(current, Self::Pending | Self::Sent),
            // A receipt may overtake the server's ack, never a failure.
            Self::Read => matches!(
                current,
                Self::Pending | Self::Sent | Self::Queued | Self::Delivered
            ),
            _ => self.rank() > current.rank(),
        }
    }
}

wire_enum! {
    /// The connection indicator.
    pub enum ConnectionState {
        /// Not connected, and not trying.
        Offline = "offline",
        /// Dialling for the first time.
        Connecting = "connecting",
        /// Registered on the server.
        Connected = "connected",
        /// Lost; trying again after a delay.
        Reconnecting = "reconnecting",
    }
}

wire_enum! {
    /// How a server question is answered.
    pub enum QuestionKind {
        /// Free text.
        Text = "text",
        /// One of the given options.
        Choice = "choice",
        /// Yes or no.
        Confirm = "confirm",
    }
}

wire_enum! {
    /// The `kind` of a command error and of a notice: what the page may branch on.
    pub enum ErrorKind {
        /// The input was not acceptable.
        InvalidInput = "invalidInput",
        /// First run has not been completed.
        NotSetUp = "notSetUp",
        /// Something on disk failed.
        Storage = "storage",
        /// The server or the connection refused the request (see [`PeerErrorCode`]).
        Peer = "peer",
        /// The embedded server could not start.
        Hosting = "hosting",
        /// The question was already answered, expired or never existed.
        UnknownQuestion = "unknownQuestion",
        /// The app itself failed.
        Internal = "internal",
        /// A notice: a message could not be delivered.
        MessageFailed = "messageFailed",
        /// A notice: a contact's safety number changed.
        KeyChanged = "keyChanged",
        /// A notice: the first connection failed for good.
        Connect = "connect",
        /// A notice: the encrypted conversation with a contact was set up again (a message
        /// could not be read on this device, or the contact started over with a new install).
        ConversationRestarted = "conversationRestarted",
    }
}

wire_enum! {
    /// The `code` of a peer error, next to its `kind` `peer`: why the server or the connection
    /// refused, for a page that wants to react (offer a retry, open Settings, ...).
    pub enum PeerErrorCode {
        /// Not connected to the server right now.
        NotConnected = "notConnected",
        /// The server cannot be reached.
        Unreachable = "unreachable",
        /// The server address is not usable.
        InvalidUrl = "invalidUrl",
        /// The server did not answer in time.
        Timeout = "timeout",
        /// Too many messages wait to be sent.
        QueueFull = "queueFull",
        /// The message is too large.
        MessageTooLarge = "messageTooLarge",
        /// The contact's key changed and was not accepted yet.
        KeyChanged = "keyChanged",
        /// The key the server presents is not the one compared.
        KeyMismatch = "keyMismatch",
        /// The contact appears without a signed identity.
        KeyDowngrade = "keyDowngrade",
        /// Our name is taken on the server.
        NameTaken = "nameTaken",
        /// The contact is not known to the server.
        PeerNotFound = "peerNotFound",
        /// The question expired on the server.
        UnknownQuestion = "unknownQuestion",
        /// The server limits requests like this one.
        RateLimited = "rateLimited",
        /// The recipient's mailbox is full.
        MailboxFull = "mailboxFull",
        /// A message from someone could not be verified.
        Rejected = "rejected",
        /// A person picked for a group has no group keys at the server (their app cannot join
        /// groups yet).
        NoKeyPackage = "noKeyPackage",
        /// Anything else.
        Other = "other",
    }
}

/// `PeerList` → `PEER_LIST`.
fn screaming(variant: &str) -> String {
    let mut out = String::with_capacity(variant.len() + 4);
    for (i, c) in variant.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

fn js_object(out: &mut String, name: &str, doc: &str, entries: &[(&str, &str)]) {
    out.push_str(&format!(
        "/** {doc} */\nexport const {name} = Object.freeze({{\n"
    ));
    for (variant, wire) in entries {
        out.push_str(&format!("  {}: \"{wire}\",\n", screaming(variant)));
    }
    out.push_str("});\n\n");
}

/// The contract as an ES module: the text of `ui/js/contract.js`.
pub fn javascript() -> String {
    let mut out = String::from(
        "// Generated from src-tauri/src/contract.rs by its unit test; do not edit.\n\
         // Rewrite: LATTICE_WRITE_CONTRACT=1 cargo test -p lattice-desktop --lib contract\n\n",
    );
    js_object(
        &mut out,
        "Event",
        "Names of the events the backend emits.",
        &Event::entries(),
    );
    js_object(
        &mut out,
        "DeliveryStatus",
        "Delivery status of a message.",
        &DeliveryStatus::entries(),
    );
    let order: Vec<String> = DeliveryStatus::ALL
        .iter()
        .map(|s| format!("\"{s}\""))
        .collect();
    out.push_str(&format!(
        "/**\n * Delivery statuses in the order of progress. The backend sends statuses already merged\n \
         * (it never moves a message backwards), so the later of two is the newer.\n */\n\
         export const DELIVERY_STATUS_ORDER = Object.freeze([{}]);\n\n",
        order.join(", ")
    ));
    js_object(
        &mut out,
        "TransferState",
        "Where a file attached to a message is.",
        &TransferState::entries(),
    );
    js_object(
        &mut out,
        "ConnectionState",
        "States of the connection indicator.",
        &ConnectionState::entries(),
    );
    js_object(
        &mut out,
        "QuestionKind",
        "How a server question is answered.",
        &QuestionKind::entries(),
    );
    js_object(
        &mut out,
        "LinkStage",
        "Where linking a new device is, on the first device.",
        &LinkStage::entries(),
    );
    js_object(
        &mut out,
        "ErrorKind",
        "The `kind` of a command error or a notice.",
        &ErrorKind::entries(),
    );
    js_object(
        &mut out,
        "PeerErrorCode",
        "The `code` of an error of kind `peer`.",
        &PeerErrorCode::entries(),
    );
    out.push_str(&format!(
        "/** Messages can be edited or deleted for everyone this long after sending (ms). */\n\
         export const EDIT_WINDOW_MS = {};\n\n\
         /** \"Started typing\" is sent at most this often per conversation, 1:1 or group (ms). */\n\
         export const TYPING_RESEND_MS = {};\n\n\
         /** Someone's \"is typing…\" in a 1:1 chat goes away this long after their last notice (ms). */\n\
         export const TYPING_SHOWN_MS = {};\n",
        EDIT_WINDOW.as_millis(),
        lattice_peer::defaults::GROUP_TYPING_RESEND.as_millis(),
        lattice_peer::defaults::GROUP_TYPING_SHOWN.as_millis()
    ));
    out.truncate(out.trim_end().len());
    out.push('\n');
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// Serializes to the wire name and reads back, for every value of every enum.
    fn round_trips<T>(all: &[T], name: fn(T) -> &'static str)
    where
        T: Copy + PartialEq + std::fmt::Debug + Serialize + serde::de::DeserializeOwned,
    {
        for value in all {
            let json = serde_json::to_value(value).unwrap();
            assert_eq!(json, serde_json::Value::from(name(*value)));
            assert_eq!(serde_json::from_value::<T>(json).unwrap(), *value);
        }
    }

    #[test]
    fn every_value_round_trips_through_its_wire_name() {
        round_trips(Event::ALL, Event::as_str);
        round_trips(DeliveryStatus::ALL, DeliveryStatus::as_str);
        round_trips(ConnectionState::ALL, ConnectionState::as_str);
        round_trips(TransferState::ALL, TransferState::as_str);
        for state in TransferState::ALL {
            assert_eq!(TransferState::from_wire(state.as_str()), *state);
        }
        assert_eq!(TransferState::from_wire("lost"), TransferState::Failed);
        round_trips(QuestionKind::ALL, QuestionKind::as_str);
        round_trips(ErrorKind::ALL, ErrorKind::as_str);
        round_trips(PeerErrorCode::ALL, PeerErrorCode::as_str);
        assert!(serde_json::from_value::<DeliveryStatus>("lost".into()).is_err());
    }

    #[test]
    fn the_wire_names_are_the_ones_the_page_always_used() {
        assert_eq!(Event::PeerList.as_str(), "peer-list");
        assert_eq!(Event::ConnectionState.as_str(), "connection-state");
        assert_eq!(ErrorKind::InvalidInput.as_str(), "invalidInput");
        let order: Vec<&str> = DeliveryStatus::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            order,
            [
                "pending",
                "sent",
                "queued",
                "delivered",
                "received",
                "failed",
                "read"
            ]
        );
    }

    #[test]
    fn statuses_only_move_forward_and_a_failure_never_undoes_a_delivery() {
        use DeliveryStatus::*;
        for (i, a) in DeliveryStatus::ALL.iter().enumerate() {
            assert_eq!(DeliveryStatus::from_rank(a.rank()), *a);
            assert_eq!(a.rank(), i as i64);
            assert!(!a.may_replace(*a));
        }
        assert!(Sent.may_replace(Pending));
        assert!(Delivered.may_replace(Queued));
        assert!(!Sent.may_replace(Delivered));
        assert!(Failed.may_replace(Pending));
        assert!(Failed.may_replace(Sent));
        assert!(!Failed.may_replace(Queued));
        assert!(!Failed.may_replace(Delivered));
        // A read receipt may overtake the ack, but never revives a failure or marks an incoming
        // message; nothing replaces it.
        assert!(Read.may_replace(Sent));
        assert!(Read.may_replace(Delivered));
        assert!(!Read.may_replace(Failed));
        assert!(!Read.may_replace(Received));
        assert!(!Delivered.may_replace(Read));
        // Whatever chain of updates the backend applies, each status it stores is later in the
        // order than the one before: what lets the page keep the later of two.
        for a in DeliveryStatus::ALL {
            for b in DeliveryStatus::ALL {
                if b.may_replace(*a) {
                    assert!(b.rank() > a.rank(), "{a} -> {b}");
                }
            }
        }
        assert_eq!(DeliveryStatus::from_rank(99), Failed);
    }

    #[test]
    fn the_committed_page_module_is_generated_from_this_one() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../ui/js/contract.js");
        let generated = javascript();
        if std::env::var_os("LATTICE_WRITE_CONTRACT").is_some() {
            std::fs::write(&path, &generated).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "ui/js/contract.js is stale: run LATTICE_WRITE_CONTRACT=1 cargo test -p \
             lattice-desktop --lib contract"
        );
        assert!(generated.contains("  PEER_LIST: \"peer-list\",\n"));
    }
}
