//! Why a frame was refused: one typed error per cause, each mapped to its wire `errorType` in
//! [`HandlerError::error_type`] (the only place that mapping is written). The `Display` text is the
//! `details` sentence of the `error` frame, so it says what was wrong and names the values.

use lattice_protocol::limits::KEM_PUBLIC_KEY_LEN;
use lattice_protocol::{ClientId, DecodeError, ErrorType, GroupId, MessageId, QuestionId};

use crate::store::Limit;

/// A frame the session refuses; the client gets an `error` frame with the frame's `requestId`.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HandlerError {
    /// The frame did not decode (bad JSON, shape, type or field); the codec chose the code.
    #[error("{}", .0.details)]
    Decode(DecodeError),
    /// A binary WebSocket message.
    #[error("Binary frames are not part of the protocol; send JSON text")]
    Binary,
    /// A frame that needs a registered connection, on one that is not.
    #[error("Register before sending {0}")]
    RegistrationRequired(&'static str),
    /// A second `register` for another id on a registered connection.
    #[error("This connection is already registered as {0}; one connection registers one id")]
    AlreadyRegistered(ClientId),
    /// `publicKey` has the right length but is not an ML-KEM-768 key.
    #[error("publicKey is not a valid ML-KEM-768 public key (a coefficient is out of range)")]
    KemKeyOutOfRange,
    /// `publicKey` has the wrong length.
    #[error(
        "publicKey must be an ML-KEM-768 public key of {KEM_PUBLIC_KEY_LEN} bytes (got {0} bytes)"
    )]
    KemKeyLength(usize),
    /// `publicKey` could not be read at all.
    #[error("Invalid publicKey: {0}")]
    KemKeyUnreadable(&'static str),
    /// The registration proof does not hold.
    #[error(transparent)]
    Proof(#[from] ProofError),
    /// The id is online elsewhere or bound to another identity.
    #[error("Client ID {0} is already taken")]
    IdTaken(ClientId),
    /// The directory could not be read.
    #[error("The server could not read its directory; try again")]
    DirectoryUnavailable,
    /// The directory could not be written.
    #[error("The server could not store the registration; try again")]
    RegistrationNotStored,
    /// The directory holds `--max-bindings` ids.
    #[error("The server's directory is full ({0} ids); it accepts no new ids now, existing ids still register")]
    DirectoryFull(u64),
    /// This address minted its `--new-ids-per-ip` for the hour.
    #[error("This address created {0} new ids in the last hour, the most the server allows; try again later (existing ids are not limited)")]
    NewIdsExhausted(u32),
    /// This address holds `--max-registrations-per-ip` registrations.
    #[error(
        "This address already holds {0} registrations, the most the server allows; close one first"
    )]
    AddressFull(usize),
    /// The target is neither online nor a known verified identity.
    #[error("Target peer {0} not found")]
    PeerNotFound(ClientId),
    /// `message` is not a JSON object.
    #[error("message must be an envelope object")]
    NotAnEnvelope,
    /// An unverified recipient's queue is full (it has no mailbox).
    #[error("Peer {0} is not reading its messages fast enough; the message was not delivered")]
    RecipientBusy(ClientId),
    /// The recipient's mailbox, or this sender's share of it, is full.
    #[error("{}", mailbox_full(.target, *.limit, *.bound))]
    MailboxFull {
        /// The recipient.
        target: ClientId,
        /// Which quota.
        limit: Limit,
        /// That quota's value (messages or bytes).
        bound: u64,
    },
    /// The mailbox could not be written.
    #[error("The server could not store the message; try again")]
    MailboxUnavailable,
    /// The state the nodes share (Redis, `--redis`) could not be reached.
    #[error("The server could not reach the state its nodes share; try again")]
    ClusterUnavailable,
    /// A `peer_response` to a question that is not open.
    #[error("Question {0} is unknown or has expired")]
    UnknownQuestion(QuestionId),
    /// A `peer_response` that does not fit its question.
    #[error("{0}")]
    InvalidAnswer(String),
    /// Too many demo conversations open.
    #[error("{0}")]
    DemoRefused(String),
    /// The delivery service's tables could not be read or written.
    #[error("The server could not read or write its storage; try again")]
    StorageUnavailable,
    /// An MLS delivery-service frame from an unverified registration.
    #[error("{0} needs a verified registration (an identity-bound id)")]
    VerificationRequired(&'static str),
    /// A base64 field of an MLS frame does not decode, or is empty.
    #[error("{0} is not valid non-empty base64")]
    NotBase64(&'static str),
    /// A KeyPackage upload with too many KeyPackages or one too large.
    #[error("{0}")]
    KeyPackageRefused(String),
    /// The upload would take the stock past its quota.
    #[error("Your KeyPackage stock holds {stock}; {adding} more would exceed the {max} allowed")]
    KeyPackageStockFull {
        /// Stored now.
        stock: u32,
        /// In the upload.
        adding: usize,
        /// The quota.
        max: usize,
    },
    /// No KeyPackage for the id.
    #[error("{0} has no KeyPackage on this server")]
    NoKeyPackage(ClientId),
    /// A group frame whose member list is too long.
    #[error("A group has at most {max} members (the Commit lists {got})")]
    GroupTooLarge {
        /// Members listed.
        got: usize,
        /// The limit.
        max: usize,
    },
    /// An added member is in as many groups as allowed.
    #[error("{member} is already in {max} groups, the most one id may")]
    TooManyGroups {
        /// The member.
        member: ClientId,
        /// The limit.
        max: u32,
    },
    /// The sender is not a member of the group (or it does not exist).
    #[error("You are not a member of group {0}")]
    NotAMember(GroupId),
    /// A Commit for an epoch the group left behind.
    #[error("Group {group} is at epoch {current}; the Commit was made in epoch {got}: process the Commit that won, then retry")]
    StaleEpoch {
        /// The group.
        group: GroupId,
        /// The Commit's epoch.
        got: u64,
        /// The group's epoch.
        current: u64,
    },
    /// A Commit for an epoch the group has not reached.
    #[error("Group {group} is at epoch {current}; the Commit was made in epoch {got}, which it has not reached")]
    FutureEpoch {
        /// The group.
        group: GroupId,
        /// The Commit's epoch.
        got: u64,
        /// The group's epoch.
        current: u64,
    },
    /// An MLS field whose clear framing does not fit the frame (another group, a Commit outside
    /// `group_commit`, another epoch, not MLS at all).
    #[error("{0}")]
    MlsFraming(String),
    /// A Commit whose Welcome does not match its member list.
    #[error("{0}")]
    WelcomeMismatch(&'static str),
    /// A Commit's message id names another message still waiting for a member.
    #[error(
        "messageId {0} is already used by another message waiting for a member; use a fresh id"
    )]
    MessageIdReused(MessageId),
    /// A device `register` (or a Commit's leaf) for a device not on the id's current list.
    #[error("{0}")]
    UnknownDevice(String),
    /// A device certificate or device list signature that does not verify.
    #[error("{0}")]
    BadDeviceCertificate(&'static str),
    /// A device list with too many linked devices.
    #[error("A device list names at most {max} linked devices (the primary device makes {total}); this one names {got}")]
    TooManyDevices {
        /// Linked devices listed.
        got: usize,
        /// The most a list may name.
        max: usize,
        /// Devices per id, the primary included.
        total: usize,
    },
    /// A device list whose counter is not above the stored one's.
    #[error("The device list of {id} is at counter {stored}; a list with counter {got} is a replay or older: sign a list with a higher counter")]
    StaleDeviceList {
        /// The id.
        id: ClientId,
        /// The uploaded counter.
        got: u64,
        /// The stored counter.
        stored: u64,
    },
    /// A Commit whose leaves do not fit its member list.
    #[error("{0}")]
    LeavesMismatch(String),
    /// A device list or device part whose shape breaks the rules (reserved id, duplicates, keys).
    #[error("{0}")]
    BadDeviceList(String),
    /// A link relay sent a frame other than a `message` (or `ack`).
    #[error("A link relay may only send lattice-link messages to one id, not {0}")]
    LinkRelayFrame(&'static str),
    /// A link relay sent an envelope whose `algorithm` is not `lattice-link`.
    #[error("A link relay may only send envelopes whose algorithm is \"lattice-link\"")]
    LinkRelayAlgorithm,
    /// A link relay sent to a second id.
    #[error("A link relay sends to one id only: it sent to {first} already, not {got}")]
    LinkRelayTarget {
        /// Its one target.
        first: ClientId,
        /// The refused target.
        got: ClientId,
    },
    /// A link relay sent all the messages it may.
    #[error("A link relay sends at most {0} messages; this one sent them all")]
    LinkRelayExhausted(u32),
    /// A `register` both as a link relay and as a device.
    #[error("A link relay is a throwaway id: it registers without a device part")]
    LinkRelayDevice,
}

fn mailbox_full(target: &ClientId, limit: Limit, bound: u64) -> String {
    match limit {
        Limit::Count => format!(
            "The mailbox of {target} is full ({bound} messages waiting); the message was not accepted"
        ),
        Limit::Bytes => format!(
            "The mailbox of {target} is full ({bound} bytes waiting); the message was not accepted"
        ),
        Limit::SenderCount => format!(
            "You have {bound} messages waiting for {target}, the most one sender may; the message was not accepted"
        ),
        Limit::SenderBytes => format!(
            "Your messages waiting for {target} take {bound} bytes, the most one sender may; the message was not accepted"
        ),
    }
}

impl HandlerError {
    /// The wire `errorType` of this error.
    pub(crate) fn error_type(&self) -> ErrorType {
        match self {
            Self::Decode(e) => e.error_type,
            Self::Binary | Self::AlreadyRegistered(_) | Self::NotAnEnvelope => {
                ErrorType::InvalidMessage
            }
            Self::InvalidAnswer(_) => ErrorType::InvalidMessage,
            Self::RegistrationRequired(_) => ErrorType::RegistrationRequired,
            Self::KemKeyOutOfRange | Self::KemKeyLength(_) | Self::KemKeyUnreadable(_) => {
                ErrorType::InvalidPublicKey
            }
            Self::Proof(_) => ErrorType::InvalidProof,
            Self::IdTaken(_) => ErrorType::ClientIdTaken,
            Self::DirectoryUnavailable
            | Self::RegistrationNotStored
            | Self::MailboxUnavailable
            | Self::ClusterUnavailable => ErrorType::InternalError,
            Self::DirectoryFull(_) | Self::AddressFull(_) => ErrorType::TooManyRegistrations,
            Self::NewIdsExhausted(_) | Self::DemoRefused(_) => ErrorType::RateLimited,
            Self::PeerNotFound(_) => ErrorType::PeerNotFound,
            Self::RecipientBusy(_) | Self::MailboxFull { .. } => ErrorType::MailboxFull,
            Self::UnknownQuestion(_) => ErrorType::UnknownQuestion,
            Self::VerificationRequired(_) => ErrorType::VerificationRequired,
            Self::StorageUnavailable => ErrorType::InternalError,
            Self::NotBase64(_)
            | Self::MlsFraming(_)
            | Self::WelcomeMismatch(_)
            | Self::MessageIdReused(_)
            | Self::KeyPackageRefused(_) => ErrorType::InvalidMessage,
            Self::KeyPackageStockFull { .. }
            | Self::GroupTooLarge { .. }
            | Self::TooManyGroups { .. } => ErrorType::QuotaExceeded,
            Self::NoKeyPackage(_) => ErrorType::NoKeyPackage,
            Self::NotAMember(_) => ErrorType::NotAMember,
            Self::StaleEpoch { .. } => ErrorType::StaleEpoch,
            Self::FutureEpoch { .. } => ErrorType::FutureEpoch,
            Self::UnknownDevice(_) => ErrorType::UnknownDevice,
            Self::BadDeviceCertificate(_) => ErrorType::InvalidDeviceCertificate,
            Self::TooManyDevices { .. } => ErrorType::TooManyDevices,
            Self::StaleDeviceList { .. } => ErrorType::StaleDeviceList,
            Self::BadDeviceList(_) | Self::LeavesMismatch(_) | Self::LinkRelayDevice => {
                ErrorType::InvalidMessage
            }
            Self::LinkRelayFrame(_) | Self::LinkRelayAlgorithm | Self::LinkRelayTarget { .. } => {
                ErrorType::LinkRelayOnly
            }
            Self::LinkRelayExhausted(_) => ErrorType::QuotaExceeded,
        }
    }

    /// The group's epoch, for the `error` frame's `currentEpoch` (epoch refusals only).
    pub(crate) fn current_epoch(&self) -> Option<u64> {
        match self {
            Self::StaleEpoch { current, .. } | Self::FutureEpoch { current, .. } => Some(*current),
            _ => None,
        }
    }

    /// Whether the frame itself was malformed (counts toward `MAX_INVALID_FRAMES`); refusals of
    /// well-formed frames never close a connection.
    pub(crate) fn is_invalid_frame(&self) -> bool {
        matches!(self, Self::Decode(_) | Self::Binary)
    }
}

/// Why a verified registration's proof was refused (all `INVALID_PROOF`).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProofError {
    /// No `challenge` was asked for on this connection (or it was used).
    #[error("Request a challenge before a verified registration")]
    NoChallenge,
    /// The challenge is older than `CHALLENGE_TTL_SECS`.
    #[error("The challenge has expired; request a new one")]
    ChallengeExpired,
    /// A `verification` field is absent.
    #[error("verification.{0} is missing")]
    FieldMissing(&'static str),
    /// A `verification` field is not base64.
    #[error("verification.{0} is not valid base64")]
    FieldNotBase64(&'static str),
    /// `serializedPublicKey` is not an Ed25519 key.
    #[error("verification.serializedPublicKey is not an Ed25519 key")]
    NotEd25519,
    /// The statement could not be built from this registration.
    #[error("{0}")]
    Statement(lattice_crypto::CryptoError),
    /// The signed statement is not this registration's.
    #[error("The signed statement does not match this registration and challenge")]
    StatementMismatch,
    /// The statement's signature is wrong.
    #[error("The registration signature does not verify")]
    BadSignature,
    /// `keySignature` is absent.
    #[error("keySignature is required with an ed25519 verification")]
    KeySignatureMissing,
    /// `keySignature` is not base64.
    #[error("keySignature is not valid base64")]
    KeySignatureNotBase64,
    /// `keySignature` does not sign `publicKey` with the identity key.
    #[error("keySignature does not verify against the identity key")]
    KeySignatureInvalid,
    /// A device part without an `ed25519` verification.
    #[error("A device registers with an ed25519 verification signed by its device key")]
    DeviceUnverified,
    /// A device registering another KEM key than its id's bound one.
    #[error("A device registers with its id's bound publicKey and keySignature")]
    DeviceKemKey,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every refusal's wire code and sentence, as clients have always received them.
    #[test]
    fn each_refusal_maps_to_its_wire_code() {
        let id = |s: &str| ClientId::new(s).unwrap_or_else(|e| panic!("{e}"));
        let gid = GroupId::new("0a1b").unwrap_or_else(|e| panic!("{e}"));
        let cases: Vec<(HandlerError, &str, &str)> = vec![
            (HandlerError::Binary, "INVALID_MESSAGE", "Binary frames"),
            (
                HandlerError::RegistrationRequired("discover"),
                "REGISTRATION_REQUIRED",
                "Register before sending discover",
            ),
            (
                HandlerError::KemKeyLength(3),
                "INVALID_PUBLIC_KEY",
                "(got 3 bytes)",
            ),
            (
                ProofError::ChallengeExpired.into(),
                "INVALID_PROOF",
                "expired",
            ),
            (
                HandlerError::IdTaken(id("bob")),
                "CLIENT_ID_TAKEN",
                "Client ID bob is already taken",
            ),
            (
                HandlerError::DirectoryUnavailable,
                "INTERNAL_ERROR",
                "directory",
            ),
            (
                HandlerError::DirectoryFull(5),
                "TOO_MANY_REGISTRATIONS",
                "(5 ids)",
            ),
            (
                HandlerError::NewIdsExhausted(30),
                "RATE_LIMITED",
                "created 30 new ids",
            ),
            (
                HandlerError::AddressFull(64),
                "TOO_MANY_REGISTRATIONS",
                "holds 64",
            ),
            (
                HandlerError::PeerNotFound(id("bob")),
                "PEER_NOT_FOUND",
                "Target peer bob not found",
            ),
            (
                HandlerError::RecipientBusy(id("bob")),
                "MAILBOX_FULL",
                "Peer bob is not reading",
            ),
            (
                HandlerError::MailboxFull {
                    target: id("bob"),
                    limit: Limit::SenderCount,
                    bound: 250,
                },
                "MAILBOX_FULL",
                "You have 250 messages waiting for bob",
            ),
            (
                HandlerError::MailboxUnavailable,
                "INTERNAL_ERROR",
                "could not store the message",
            ),
            (
                HandlerError::InvalidAnswer("pick one".into()),
                "INVALID_MESSAGE",
                "pick one",
            ),
            (
                HandlerError::VerificationRequired("key_package_upload"),
                "VERIFICATION_REQUIRED",
                "key_package_upload needs a verified registration",
            ),
            (
                HandlerError::NoKeyPackage(id("bob")),
                "NO_KEY_PACKAGE",
                "bob has no KeyPackage",
            ),
            (
                HandlerError::NotAMember(gid.clone()),
                "NOT_A_MEMBER",
                "not a member of group 0a1b",
            ),
            (
                HandlerError::StaleEpoch {
                    group: gid.clone(),
                    got: 3,
                    current: 4,
                },
                "STALE_EPOCH",
                "is at epoch 4; the Commit was made in epoch 3",
            ),
            (
                HandlerError::FutureEpoch {
                    group: gid.clone(),
                    got: 9,
                    current: 4,
                },
                "FUTURE_EPOCH",
                "made in epoch 9",
            ),
            (
                HandlerError::GroupTooLarge { got: 129, max: 128 },
                "QUOTA_EXCEEDED",
                "at most 128 members",
            ),
        ];
        for (e, code, text) in cases {
            assert_eq!(e.error_type().as_str(), code, "{e:?}");
            assert!(e.to_string().contains(text), "{e}: {text}");
            assert_eq!(
                e.is_invalid_frame(),
                matches!(e, HandlerError::Binary),
                "{e:?}"
            );
            assert_eq!(
                e.current_epoch(),
                matches!(
                    e,
                    HandlerError::StaleEpoch { .. } | HandlerError::FutureEpoch { .. }
                )
                .then_some(4),
                "{e:?}"
            );
        }
    }
}
