//! The crate's one error type.

use lattice_protocol::ClientId;

/// Everything the engine can refuse or fail at.
///
/// Decryption failures of application messages collapse into [`MlsError::Decrypt`] (no detail,
/// no oracle); handshake problems are typed, because the caller must react to them (process the
/// winner, fetch a missing Commit, stop and warn).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MlsError {
    /// The SQLite store failed.
    #[error("MLS store: {0}")]
    Store(#[from] rusqlite::Error),
    /// This delivery (sender and message id) was processed already: a redelivery or a replay.
    /// Nothing was done; acknowledge it again.
    #[error("message {message_id} from {sender} was processed already")]
    Duplicate {
        /// The sender the delivery service named.
        sender: String,
        /// Its message id.
        message_id: String,
    },
    /// The store was never initialised with a client, or holds a different client.
    #[error("MLS store has no client: {0}")]
    NoClient(&'static str),
    /// A message, KeyPackage or Welcome could not be decoded.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// What was being decoded.
        what: &'static str,
        /// Why it failed.
        reason: String,
    },
    /// An input exceeds a limit of [`crate::limits`].
    #[error("{what} is {got} bytes, over the limit of {max}")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its size.
        got: usize,
        /// The limit.
        max: usize,
    },
    /// A member's credential is not bound to the identity key pinned for its id.
    #[error("identity binding of {client_id} refused: {reason}")]
    IdentityBinding {
        /// The id the credential claims.
        client_id: String,
        /// What did not match.
        reason: &'static str,
    },
    /// A KeyPackage or group uses a suite other than [`crate::limits::CIPHERSUITE`].
    #[error("unsupported ciphersuite 0x{0:04x}")]
    Ciphersuite(u16),
    /// A KeyPackage failed MLS validation (signature, lifetime, keys).
    #[error("invalid KeyPackage: {0}")]
    KeyPackage(String),
    /// The group is not in this client's store.
    #[error("unknown group {0}")]
    UnknownGroup(crate::group_id::GroupId),
    /// No member of the group has this client id.
    #[error("{0} is not a member of the group")]
    NotAMember(ClientId),
    /// A handshake message for an epoch already passed: a replay, or a Commit that lost its epoch.
    #[error("stale handshake message for epoch {got}, the group is at epoch {current}")]
    StaleEpoch {
        /// The message's epoch.
        got: u64,
        /// The group's epoch.
        current: u64,
    },
    /// A message for a later epoch: a Commit in between was dropped or reordered. Fetch the
    /// missing handshake messages in order, then retry.
    #[error("message for epoch {got} but the group is at epoch {current}: a Commit is missing")]
    FutureEpoch {
        /// The message's epoch.
        got: u64,
        /// The group's epoch.
        current: u64,
    },
    /// This client has a Commit of its own waiting for the delivery service's verdict: confirm
    /// or discard it before processing other handshake messages.
    #[error("group {0} has a pending commit: confirm or discard it first")]
    PendingCommit(crate::group_id::GroupId),
    /// `confirm_commit` / `discard_commit` without a pending Commit.
    #[error("group {0} has no pending commit")]
    NoPendingCommit(crate::group_id::GroupId),
    /// An application message did not open (tampered, wrong group, key already used or deleted).
    #[error("message could not be decrypted")]
    Decrypt,
    /// A handshake message was refused by MLS validation.
    #[error("handshake message refused: {0}")]
    Handshake(String),
    /// The group would exceed [`crate::limits::MAX_GROUP_MEMBERS`].
    #[error("group would have {got} members, over the limit of {max}")]
    GroupFull {
        /// Members it would have.
        got: usize,
        /// The limit.
        max: usize,
    },
    /// The group name is invalid (too long).
    #[error("invalid group name: {0}")]
    GroupName(&'static str),
    /// An MLS operation failed for a reason that is not the peer's input.
    #[error("MLS operation {op} failed: {reason}")]
    Operation {
        /// The operation.
        op: &'static str,
        /// The library's error.
        reason: String,
    },
}

impl MlsError {
    /// Wraps a library error of operation `op`.
    pub(crate) fn op(op: &'static str, e: impl std::fmt::Display) -> Self {
        Self::Operation {
            op,
            reason: e.to_string(),
        }
    }

    /// The id whose identity key is not pinned yet, when this is the refusal of a member for
    /// that reason alone (the caller may fetch and pin its key, then try again).
    pub fn unpinned_id(&self) -> Option<&str> {
        match self {
            Self::IdentityBinding { client_id, reason } if *reason == crate::limits::UNPINNED => {
                Some(client_id)
            }
            _ => None,
        }
    }

    /// The id of a linked device refused only because it is not on its id's device list as
    /// the pins know it: fetching the id's newest list may let it in (see
    /// [`MlsError::unpinned_id`]).
    pub fn unlisted_id(&self) -> Option<&str> {
        match self {
            Self::IdentityBinding { client_id, reason } if *reason == crate::limits::UNLISTED => {
                Some(client_id)
            }
            _ => None,
        }
    }

    pub(crate) fn malformed(what: &'static str, e: impl std::fmt::Display) -> Self {
        Self::Malformed {
            what,
            reason: e.to_string(),
        }
    }
}
