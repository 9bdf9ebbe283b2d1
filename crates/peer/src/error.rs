//! The crate's one error type, [`PeerError`], and [`RejectReason`], why an incoming message was
//! refused.

use std::time::Duration;

use lattice_crypto::{CryptoError, Fingerprint};
use lattice_protocol::{ClientId, ErrorType, MessageId, RequestId};

use crate::content::ContentError;

/// Everything that can go wrong in `lattice-peer`.
///
/// `Clone` so that one error can travel to every event subscriber.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    /// The server URL is not a `ws://` or `wss://` URL.
    #[error("invalid server URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Dialling the server failed (TCP, TLS or the WebSocket handshake).
    #[error("cannot connect to {url}: {reason}")]
    Connect {
        /// The server URL.
        url: String,
        /// The underlying error, as text.
        reason: String,
    },
    /// The TLS configuration could not be built (bad extra CA, no root certificates at all).
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// `connect` was called on a peer that is already connected or connecting.
    #[error("already connected")]
    AlreadyConnected,
    /// The operation needs a live connection (or was cancelled by `disconnect`).
    #[error("not connected")]
    NotConnected,
    /// The connection closed before the answer arrived.
    #[error("connection lost before the answer to {request} arrived")]
    ConnectionLost {
        /// The request's frame type.
        request: String,
    },
    /// No answer within the timeout (after every retry).
    #[error("no {expected} answer to {request} within {after:?} ({attempts} attempt(s))")]
    Timeout {
        /// The request's frame type.
        request: String,
        /// The awaited answer type.
        expected: String,
        /// The per-attempt timeout.
        after: Duration,
        /// How many times the request was sent.
        attempts: u32,
    },
    /// The server answered with an `error` frame.
    #[error("server error {error_type}: {details}")]
    Server {
        /// The protocol's `errorType`.
        error_type: ErrorType,
        /// The server's sentence.
        details: String,
        /// The request it answered, when known.
        request_id: Option<RequestId>,
    },
    /// The outbound queue is full (the connection is down or too slow); nothing was queued.
    #[error("outbound queue full ({capacity} frames); try again once reconnected")]
    QueueFull {
        /// The queue's capacity.
        capacity: usize,
    },
    /// The server sent something that is not a valid frame, or an answer of an unexpected type.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A peer's published key is unusable (bad length, not a valid ML-KEM or Ed25519 key).
    #[error("invalid public key for {peer}: {reason}")]
    InvalidPeerKey {
        /// The peer.
        peer: ClientId,
        /// What is wrong.
        reason: String,
    },
    /// A peer's `keySignature` does not verify with its identity key: its KEM key is not vouched for.
    #[error("the key signature of {peer} does not verify")]
    InvalidKeySignature {
        /// The peer.
        peer: ClientId,
    },
    /// A known peer now presents a different identity key. Nothing is sent to or accepted from the
    /// new key until [`crate::MessagingPeer::accept_key_change`] is called with its fingerprint.
    #[error("the identity key of {peer} changed (pinned {old}, now {new})")]
    KeyChanged {
        /// The peer.
        peer: ClientId,
        /// Fingerprint of the pinned key.
        old: Fingerprint,
        /// Fingerprint of the key the server now reports.
        new: Fingerprint,
    },
    /// The key the server presents for `peer` is not the one the user compared: its fingerprint
    /// is `actual`, the user compared `expected`. Nothing was pinned. Returned by
    /// [`crate::MessagingPeer::accept_key_change`]; compare the new fingerprint (reported as
    /// [`crate::PeerEvent::KeyChanged`]) before accepting it.
    #[error("the key of {peer} is not the one compared (compared {expected}, the server presents {actual}); nothing was pinned")]
    KeyMismatch {
        /// The peer.
        peer: ClientId,
        /// The fingerprint the user compared. (Boxed, like `actual`, to keep [`PeerError`] small.)
        expected: Box<Fingerprint>,
        /// The fingerprint of the key the server presents now.
        actual: Box<Fingerprint>,
    },
    /// The server presents `peer` without an identity key (an original client, or an id registered
    /// unverified): there is no key to pin or to check its signatures with.
    #[error("{peer} has no identity key")]
    NoIdentityKey {
        /// The peer.
        peer: ClientId,
    },
    /// A peer with a pinned identity key is now presented without one (as an original,
    /// unverifiable client). Refused: that would silently downgrade to unauthenticated messages.
    #[error("{peer} has a pinned identity key but is now presented without one")]
    KeyDowngrade {
        /// The peer.
        peer: ClientId,
    },
    /// The sealed message would exceed the protocol's frame limit.
    #[error("message too large: {size} bytes sealed, the limit is {max}")]
    MessageTooLarge {
        /// Size of the frame that would be sent.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// An incoming message was refused; it never reached a message handler.
    #[error("message from {from} refused: {reason}")]
    Rejected {
        /// The sender the server named.
        from: ClientId,
        /// The outer `messageId`, if any.
        message_id: Option<MessageId>,
        /// Why.
        reason: RejectReason,
    },
    /// An incoming message was dropped unacknowledged because the receive queue was full; the
    /// server keeps it and delivers it again.
    #[error("receive queue full: a message from {from} was dropped unacknowledged")]
    ReceiveQueueFull {
        /// The sender.
        from: ClientId,
    },
    /// A cryptographic operation failed on our side (sealing, signing inputs).
    #[error("crypto: {0}")]
    Crypto(#[from] CryptoError),
    /// A file could not be read or written (identity file).
    #[error("{0}")]
    Io(String),
    /// The [`crate::KeyStore`] failed.
    #[error("key store: {0}")]
    KeyStore(String),
    /// An argument was refused before anything was sent.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A content that breaks a bound of the content layer; nothing was sent.
    #[error("invalid content: {0}")]
    InvalidContent(#[from] ContentError),
    /// `peer` is an original (`ml-kem-aes`) client, which gets plain text only: this kind
    /// (a delete, a reaction, a receipt, typing) is not sent to it. Nothing was sent.
    #[error("{peer} is an original client and gets plain text only: no {kind} sent")]
    PlainTextOnly {
        /// The peer.
        peer: ClientId,
        /// The content kind not sent.
        kind: String,
    },
    /// The reconnect policy gave up.
    #[error("gave up reconnecting after {attempts} attempt(s)")]
    ReconnectFailed {
        /// Attempts made.
        attempts: u32,
    },
    /// Another connection registered with this identity (the same id and identity key, e.g. the
    /// app running on a second device or twice on one) and the server closed ours (close code
    /// 4000). The peer does not reconnect, since two instances would otherwise replace each other
    /// forever: it goes to [`crate::ConnectionState::Disconnected`] until
    /// [`crate::MessagingPeer::connect`] is called again. Tell the user.
    #[error("replaced by another connection of this identity")]
    Replaced,
    /// This linked device was removed from its id's device list and the server closed its
    /// connection (close code 4001, `DEVICE_REMOVED`; its mailbox is gone). Final: the peer
    /// does not reconnect and goes to [`crate::ConnectionState::Disconnected`]; only linking
    /// again makes it a device of the id.
    #[error("this device was removed from its id")]
    DeviceRemoved,
    /// A linked device speaks MLS only (docs/mls.md, *Multi-device*): it holds neither the id's
    /// long-term ML-KEM key nor its identity key, so it cannot send `lattice-v1` or
    /// `ml-kem-aes`, and `peer` has no MLS conversation with this id.
    #[error("this device speaks MLS only and {peer} has no MLS; send from your primary device")]
    MlsOnlyDevice {
        /// The contact.
        peer: ClientId,
    },
    /// What was asked is done only by a device holding the identity key (the id's primary
    /// device, or a throwaway id while linking): `what` names it.
    #[error("{what} needs the identity key: do it on the primary device")]
    PrimaryOnly {
        /// The operation.
        what: &'static str,
    },
    /// A linked device's file ([`crate::device_file`]) is unusable: not a device file, of
    /// another version, tampered with (its chain does not verify), or for another id.
    #[error("device file {path}: {reason}")]
    DeviceFile {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Groups are off: [`crate::PeerConfig::mls_state`] is not set.
    #[error("groups are off: no MLS state is configured (PeerConfig::mls_state)")]
    GroupsDisabled,
    /// A member's MLS credential (in its KeyPackage, a Welcome or a Commit) is not bound to the
    /// identity key pinned for its id: an impostor, or a key change. Refused; tell the user as
    /// loudly as a key change.
    #[error("MLS credential of {peer} refused: {reason}")]
    GroupIdentity {
        /// The id the credential claims.
        peer: String,
        /// What did not match.
        reason: String,
    },
    /// This device is not in that group (never was, or was removed).
    #[error("unknown group {0}")]
    UnknownGroup(String),
    /// An MLS operation on a group failed or was refused.
    #[error("group {}: {reason}", group.as_deref().unwrap_or("-"))]
    Group {
        /// The group (hex id), when one is concerned.
        group: Option<String>,
        /// What failed.
        reason: String,
    },
    /// Our Commit lost its epoch to other members' Commits too many times in a row.
    #[error("group {group}: the change lost its epoch to other members {attempts} times")]
    CommitConflict {
        /// The group.
        group: String,
        /// How often it was made.
        attempts: u32,
    },
    /// An incoming group message was refused (tampered, not decryptable, malformed, a sender
    /// mismatch). Acknowledged: it can never be opened.
    #[error("group message from {from} refused: {reason}")]
    GroupRejected {
        /// The group (hex id), when it could be read.
        group: Option<String>,
        /// The sender as the server names it.
        from: ClientId,
        /// Why.
        reason: String,
    },
    /// File transfers are off: [`crate::PeerConfig::transfers_dir`] is not set.
    #[error("file transfers are off: no transfers directory is configured")]
    FilesDisabled,
    /// The recipient is an original client (`ml-kem-aes`), which cannot receive files. Nothing
    /// was uploaded.
    #[error("{peer} uses an original client that cannot receive files")]
    FilesUnsupported {
        /// The recipient.
        peer: ClientId,
    },
    /// The server's blob store refused a request (docs/protocol.md, *Blob store*).
    #[error("the blob store refused: {error_type} (HTTP {status}): {message}")]
    Blob {
        /// The HTTP status.
        status: u16,
        /// The server's `errorType` (`FILE_TOO_LARGE`, `SENDER_QUOTA_EXCEEDED`,
        /// `TRANSFER_NOT_FOUND`, ...).
        error_type: String,
        /// The server's readable message.
        message: String,
    },
    /// The blob store could not be reached, or the request broke off.
    #[error("blob store unreachable: {0}")]
    Http(String),
    /// A downloaded file failed a check: nothing is written at the destination.
    #[error("file refused: {0}")]
    FileRejected(FileRejection),
    /// No transfer with this id.
    #[error("unknown transfer {0}")]
    UnknownTransfer(String),
    /// Too many unfinished transfers ([`crate::defaults::MAX_TRANSFERS`]).
    #[error("too many unfinished transfers (at most {max})")]
    TooManyTransfers {
        /// The bound.
        max: usize,
    },
    /// `peer` is known to speak MLS (pinned durably, see `docs/security.md`, downgrade rule),
    /// but no MLS conversation with it can be set up now (no KeyPackage at the server, a refused
    /// Welcome, ...). Nothing was sent: Lattice never falls back to an older envelope for it.
    #[error("{peer} speaks MLS but no MLS conversation can be set up now ({reason}); nothing was sent in an older envelope")]
    MlsRequired {
        /// The peer.
        peer: ClientId,
        /// Why the MLS conversation could not be had.
        reason: String,
    },
}

/// Why a downloaded (or uploaded) file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FileRejection {
    /// A chunk does not open with the file's key as this chunk of this file: changed, moved,
    /// duplicated, cut short, or taken from another file.
    #[error("chunk {index} does not authenticate")]
    ChunkRefused {
        /// The chunk's index.
        index: u64,
    },
    /// A chunk has another length than its index requires.
    #[error("chunk {index} is {got} bytes, expected {expected}")]
    ChunkLength {
        /// The chunk's index.
        index: u64,
        /// The length it must have.
        expected: u64,
        /// The length it had.
        got: u64,
    },
    /// The chunks authenticate but are not the ciphertext the sender uploaded.
    #[error("the file's digest does not match the one in the message")]
    DigestMismatch,
    /// The file message is not well formed.
    #[error("malformed file message: {0}")]
    InvalidOffer(String),
    /// The file being sent changed (size or time) since the transfer started.
    #[error("the file changed since the transfer started")]
    SourceChanged,
}

impl PeerError {
    /// The server's `errorType`, if this is a server error.
    pub fn error_type(&self) -> Option<ErrorType> {
        match self {
            Self::Server { error_type, .. } => Some(*error_type),
            _ => None,
        }
    }

    /// Whether dialling again cannot help: the URL or TLS set-up is wrong, the server refused
    /// our registration for good (the id is taken by another identity, our proof or key is
    /// invalid), or another connection of this identity replaced ours. Everything else (the
    /// server is unreachable, slow, full or rate-limiting) may pass, and
    /// [`crate::PeerConfig::retry_first_connect`] retries it.
    ///
    /// ```
    /// use lattice_peer::PeerError;
    /// let down = PeerError::Connect { url: "ws://127.0.0.1:3005".into(), reason: "refused".into() };
    /// assert!(!down.is_permanent());
    /// assert!(PeerError::Replaced.is_permanent());
    /// ```
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::InvalidUrl { .. } | Self::Tls(_) | Self::Replaced | Self::DeviceRemoved => true,
            Self::Server { error_type, .. } => matches!(
                error_type,
                ErrorType::ClientIdTaken
                    | ErrorType::InvalidProof
                    | ErrorType::InvalidPublicKey
                    | ErrorType::InvalidMessage
            ),
            _ => false,
        }
    }

    /// Whether the same request may succeed if it is sent again later, unchanged: the connection
    /// is down or was lost, the request timed out, the local queue or the server is busy, or the
    /// client is between registrations. What concerns the request itself (an unknown or invalid
    /// recipient, a refused key, a full mailbox, an invalid message) and every
    /// [`is_permanent`](Self::is_permanent) error is not transient. An app's outbox retries
    /// exactly the transient errors.
    ///
    /// ```
    /// use lattice_peer::PeerError;
    /// assert!(PeerError::NotConnected.is_transient());
    /// assert!(!PeerError::Replaced.is_transient());
    /// ```
    pub fn is_transient(&self) -> bool {
        if self.is_permanent() {
            return false;
        }
        match self {
            Self::NotConnected
            | Self::ConnectionLost { .. }
            | Self::Timeout { .. }
            | Self::QueueFull { .. }
            | Self::Connect { .. } => true,
            Self::Server { error_type, .. } => matches!(
                error_type,
                ErrorType::InternalError | ErrorType::RateLimited | ErrorType::RegistrationRequired
            ),
            Self::Http(_) => true,
            // The body broke off, a storage hiccup, a gateway in between: may pass. Quotas, a
            // disabled store, a full disk and everything about the request itself do not.
            Self::Blob {
                status, error_type, ..
            } => {
                error_type == "TRUNCATED"
                    || error_type == "INTERNAL_ERROR"
                    // A chunk the sender has not uploaded yet (a download behind the upload).
                    || error_type == "CHUNK_MISSING"
                    || matches!(status, 408 | 502 | 504)
            }
            _ => false,
        }
    }
}

/// Why an incoming message was refused. Each is reported with [`PeerError::Rejected`] (except
/// [`RejectReason::Replay`], see there); none of these messages reaches a message handler.
///
/// [`RejectReason::is_transient`] tells a message held back (not acknowledged: the server delivers
/// it again) from one refused for good (acknowledged: the server forgets it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RejectReason {
    /// The `message` object is not an envelope (bad JSON shape or base64).
    #[error("malformed envelope")]
    MalformedEnvelope,
    /// An envelope algorithm this client does not speak.
    #[error("unsupported algorithm {0:?}")]
    UnsupportedAlgorithm(String),
    /// A `lattice-v1` or `ml-kem-aes` message to a linked device, which speaks MLS only (it
    /// cannot open them: the id's long-term ML-KEM key stays on the primary device, which got
    /// its own copy). Final: acknowledged and dropped.
    #[error("{0} message to a device that speaks MLS only (the primary device reads it)")]
    MlsOnlyDevice(String),
    /// A `lattice-v1` message without the outer `messageId` it is bound to.
    #[error("lattice-v1 message without messageId")]
    MissingMessageId,
    /// The envelope does not open with our key in this context (wrong key, tampered, or sent
    /// to or from someone else). Deliberately carries no detail.
    #[error("cannot decrypt")]
    Decrypt,
    /// The decrypted `lattice-v1` plaintext is not a valid inner message.
    #[error("malformed inner message")]
    MalformedPlaintext,
    /// An `ml-kem-aes` plaintext that is not UTF-8 text.
    #[error("plaintext is not UTF-8")]
    NotUtf8,
    /// An inner message kind this client does not handle yet.
    #[error("unsupported message kind {0:?}")]
    UnsupportedKind(String),
    /// The inner `messageId` differs from the outer one.
    #[error("inner and outer message ids differ")]
    MessageIdMismatch,
    /// The sender's identity key could not be fetched or checked (the request failed or timed
    /// out, the server's answer was unusable, the key store failed). Transient: not acknowledged
    /// and held; opened again as soon as a later message from the same sender opens, after a
    /// growing delay ([`crate::defaults::TRANSIENT_RETRY_BASE`]), or when the server delivers it
    /// again after the next reconnect. Not forever: see [`RejectReason::GaveUp`].
    #[error("sender key unavailable: {0}")]
    SenderKeyUnavailable(String),
    /// The claimed sender of a `lattice-v1` message has no identity key and never will under this
    /// id: the server does not know it (`PEER_NOT_FOUND`), or it registered without an identity
    /// key (unverified). Nothing can ever verify the message. Final: acknowledged, so the server
    /// forgets it (a sender cannot fill our mailbox with messages we can never clear).
    #[error("the sender has no identity key")]
    NoSenderKey,
    /// The message was refused for a transient reason ([`RejectReason::SenderKeyUnavailable`],
    /// [`RejectReason::ReplayStoreUnavailable`]) again and again: at least
    /// [`crate::defaults::MAX_TRANSIENT_REFUSALS`] times over at least
    /// [`crate::defaults::TRANSIENT_GIVE_UP_AFTER`]. Final: acknowledged and given up, so that no
    /// message stays unacknowledged on the server forever.
    #[error("gave up after {attempts} transient refusals (last: {last})")]
    GaveUp {
        /// How many times it was refused.
        attempts: u32,
        /// The last transient reason, as text.
        last: String,
    },
    /// The signed `sentAt` of a `lattice-v1` message is older than
    /// [`crate::defaults::MAX_MESSAGE_AGE`]: older than anything the server may still hold, so it
    /// can only be a replay (or a sender clock far off). Final.
    #[error("sent too long ago (sentAt {sent_at})")]
    TooOld {
        /// The signed `sentAt`, unix ms.
        sent_at: u64,
    },
    /// The signed `sentAt` of a `lattice-v1` message is more than
    /// [`crate::defaults::MAX_CLOCK_SKEW`] ahead of our clock. Final.
    #[error("sent in the future (sentAt {sent_at})")]
    FromTheFuture {
        /// The signed `sentAt`, unix ms.
        sent_at: u64,
    },
    /// The [`crate::ReplayStore`] failed, so whether the message is a replay cannot be decided.
    /// Transient, like [`RejectReason::SenderKeyUnavailable`].
    #[error("replay store unavailable: {0}")]
    ReplayStoreUnavailable(String),
    /// The sender's identity key changed and the change has not been accepted. Transient: not
    /// acknowledged and held; [`crate::MessagingPeer::accept_key_change`] pins the new key and
    /// opens the held messages at once (up to [`crate::defaults::HELD_MESSAGES`]; the rest come
    /// again from the server after the next reconnect).
    #[error("sender's identity key changed and is not accepted yet")]
    KeyChanged,
    /// The signature does not verify with the sender's pinned identity key, and the server
    /// confirms that key (forged or tampered).
    #[error("bad signature")]
    BadSignature,
    /// An unauthenticated `ml-kem-aes` message claiming to come from a peer with a pinned
    /// identity key: a downgrade, refused.
    #[error("unauthenticated message from a peer with a pinned identity key")]
    Downgrade,
    /// A message in an older envelope (`lattice-v1` or `ml-kem-aes`) from a peer known to speak
    /// MLS (pinned durably): a downgrade, refused for good whatever its signature (see
    /// `docs/security.md`, downgrade rule).
    #[error("{algorithm} message from a peer that speaks MLS: downgrade refused")]
    MlsDowngrade {
        /// The envelope algorithm it came in (at most 32 characters of it).
        algorithm: String,
    },
    /// A message id already received from this sender (or, for a signed message whose sender's
    /// window was forgotten, a `sentAt` not newer than its high-water mark, see
    /// [`crate::ReplayStore`]). Not reported any more: a duplicate is what the server sends when
    /// our `ack` of the first copy was lost (delivery is at least once), so it is dropped silently
    /// and acknowledged. Kept so that existing `match`es still compile.
    #[error("replayed message id")]
    Replay,
    /// The content of a version 2 message breaks a bound of the content layer or is malformed.
    /// Final.
    #[error("invalid content: {0}")]
    InvalidContent(ContentError),
    /// An edit or a delete of a message the sender did not send (one of ours). Final.
    #[error("only the original sender may edit or delete a message")]
    NotOriginalSender,
    /// An edit, delete or reaction of a message that is not in this conversation's history, or a
    /// receipt for a message we never sent to this peer. Final.
    #[error("refers to a message that does not exist in this conversation")]
    UnknownTarget,
    /// An edit or a delete signed more than [`crate::defaults::EDIT_WINDOW`] after the message it
    /// changes (or before it). Final.
    #[error("edit or delete outside the edit window")]
    OutsideEditWindow,
    /// The app's [`crate::MessageLookup`] failed, so whether the message referred to exists
    /// cannot be decided. Transient, like [`RejectReason::SenderKeyUnavailable`].
    #[error("history unavailable: {0}")]
    HistoryUnavailable(String),
}

impl RejectReason {
    /// Whether the message was refused for a reason that may pass: the sender's key could not be
    /// fetched ([`RejectReason::SenderKeyUnavailable`]), the replay store failed
    /// ([`RejectReason::ReplayStoreUnavailable`]), or a key change is waiting for the user
    /// ([`RejectReason::KeyChanged`]). Such a message is not acknowledged, so the server keeps it,
    /// and it is held locally and opened again as soon as the reason passes. Every other refusal
    /// is final: the message can never be opened, and it is acknowledged so that the server
    /// forgets it.
    ///
    /// The first two are retried a bounded number of times and then given up
    /// ([`RejectReason::GaveUp`], final). A key change waits for the user (who can always clear it
    /// with [`crate::MessagingPeer::accept_key_change`]); the server's mailbox expiry bounds it.
    ///
    /// A retried refusal is reported when it first happens and when it is given up; a key change
    /// once per delivery. When the message opens later it arrives as an ordinary
    /// [`crate::PeerEvent::Message`].
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::SenderKeyUnavailable(_)
                | Self::ReplayStoreUnavailable(_)
                | Self::HistoryUnavailable(_)
                | Self::KeyChanged
        )
    }

    /// Whether a transient refusal is retried and, after enough failures, given up (every
    /// transient reason except a key change, which waits for the user).
    pub(crate) fn is_retried(&self) -> bool {
        self.is_transient() && !matches!(self, Self::KeyChanged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_stay_small() {
        // Every `Result<_, PeerError>` carries one; clippy's `result_large_err` starts at 128.
        assert!(std::mem::size_of::<PeerError>() < 128);
    }

    fn server(error_type: ErrorType) -> PeerError {
        PeerError::Server {
            error_type,
            details: String::new(),
            request_id: None,
        }
    }

    #[test]
    fn transient_errors_are_those_a_later_retry_can_cure() {
        let lost = PeerError::ConnectionLost {
            request: "send".into(),
        };
        for e in [
            PeerError::NotConnected,
            lost,
            server(ErrorType::RateLimited),
        ] {
            assert!(e.is_transient(), "{e:?}");
        }
        for e in [
            server(ErrorType::PeerNotFound),
            server(ErrorType::MailboxFull),
            server(ErrorType::InvalidMessage),
            PeerError::Replaced,
        ] {
            assert!(!e.is_transient(), "{e:?}");
        }
    }
}
