//! `errorType` codes carried by `error` frames.

use serde::{Deserialize, Serialize};

/// The `errorType` of an `error` frame. The first seven are the original protocol's; the rest are
/// Lattice extensions. Unknown codes from a newer server decode as [`ErrorType::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorType {
    /// Bad JSON, bad shape, unknown type or missing fields.
    InvalidMessage,
    /// The id is held by another connection or bound to another identity.
    ClientIdTaken,
    /// The target is neither online nor a known verified identity.
    PeerNotFound,
    /// `publicKey` is not a valid ML-KEM-768 encapsulation key.
    InvalidPublicKey,
    /// The request needs a registered connection.
    RegistrationRequired,
    /// The server failed; the request may be retried.
    InternalError,
    /// The registration proof (`verification`/`keySignature`) does not verify.
    InvalidProof,
    /// *ext*: the frame is larger than the server accepts.
    MessageTooLarge,
    /// *ext*: the connection sends faster than its rate limit.
    RateLimited,
    /// *ext*: the `questionId` is unknown, already answered or expired.
    UnknownQuestion,
    /// *ext*: the recipient's mailbox (or this sender's share of it) is full; the message was
    /// not accepted.
    MailboxFull,
    /// *ext*: the source address already holds as many registrations as the server allows.
    TooManyRegistrations,
    /// *ext*: an MLS Commit for an epoch the group has left behind (another member's Commit won);
    /// the `error` carries the group's `currentEpoch`. Process the winner, then retry.
    StaleEpoch,
    /// *ext*: an MLS Commit for an epoch the group has not reached (a Commit was missed); the
    /// `error` carries the group's `currentEpoch`.
    FutureEpoch,
    /// *ext*: the sender is not a member of the MLS group (or the group does not exist).
    NotAMember,
    /// *ext*: the id has no KeyPackage in the directory (no stock and no last resort).
    NoKeyPackage,
    /// *ext*: a per-id quota (KeyPackage stock, groups per id, group size) would be exceeded.
    QuotaExceeded,
    /// *ext*: the request needs a verified (identity-bound) registration.
    VerificationRequired,
    /// *ext*: a `register` names a device that is not on the id's current signed device list
    /// (or the id has none), or a group Commit names such a device as a leaf.
    UnknownDevice,
    /// *ext*: a device certificate or a device list signature does not verify under the id's
    /// identity key.
    InvalidDeviceCertificate,
    /// *ext*: a device list names more than `MAX_DEVICES_PER_ID - 1` linked devices.
    TooManyDevices,
    /// *ext*: a device list whose counter is not higher than the stored list's (a replay, or an
    /// older list).
    StaleDeviceList,
    /// *ext*, **retired**: what servers before device leaves on Redis answered to MLS group
    /// frames of linked devices on a node of several. No server of this version sends it; kept
    /// so a client still reads it from an older server (docs/protocol.md, "Error types").
    DevicesNotSupported,
    /// *ext*: a link relay (`register` with `linkRelay`) sent something other than a
    /// `lattice-link` envelope to its one target id (another frame type, another algorithm, a
    /// second target).
    LinkRelayOnly,
    /// A code this version does not know.
    #[serde(other)]
    Other,
}

impl ErrorType {
    /// The wire spelling, e.g. `"CLIENT_ID_TAKEN"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidMessage => "INVALID_MESSAGE",
            Self::ClientIdTaken => "CLIENT_ID_TAKEN",
            Self::PeerNotFound => "PEER_NOT_FOUND",
            Self::InvalidPublicKey => "INVALID_PUBLIC_KEY",
            Self::RegistrationRequired => "REGISTRATION_REQUIRED",
            Self::InternalError => "INTERNAL_ERROR",
            Self::InvalidProof => "INVALID_PROOF",
            Self::MessageTooLarge => "MESSAGE_TOO_LARGE",
            Self::RateLimited => "RATE_LIMITED",
            Self::UnknownQuestion => "UNKNOWN_QUESTION",
            Self::MailboxFull => "MAILBOX_FULL",
            Self::TooManyRegistrations => "TOO_MANY_REGISTRATIONS",
            Self::StaleEpoch => "STALE_EPOCH",
            Self::FutureEpoch => "FUTURE_EPOCH",
            Self::NotAMember => "NOT_A_MEMBER",
            Self::NoKeyPackage => "NO_KEY_PACKAGE",
            Self::QuotaExceeded => "QUOTA_EXCEEDED",
            Self::VerificationRequired => "VERIFICATION_REQUIRED",
            Self::UnknownDevice => "UNKNOWN_DEVICE",
            Self::InvalidDeviceCertificate => "INVALID_DEVICE_CERTIFICATE",
            Self::TooManyDevices => "TOO_MANY_DEVICES",
            Self::StaleDeviceList => "STALE_DEVICE_LIST",
            Self::DevicesNotSupported => "DEVICES_NOT_SUPPORTED",
            Self::LinkRelayOnly => "LINK_RELAY_ONLY",
            Self::Other => "OTHER",
        }
    }
}

impl std::fmt::Display for ErrorType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
