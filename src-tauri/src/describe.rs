//! Peer errors for people: a sentence to show and a [`PeerErrorCode`] to branch on. The one
//! place that words what `lattice-peer` reports.

use lattice_peer::{PeerError, RejectReason};
use lattice_protocol::ErrorType;

use crate::contract::PeerErrorCode;

/// A sentence for people about a peer error.
pub fn describe(e: &PeerError) -> String {
    match e {
        PeerError::Connect { url, .. } => format!("Cannot reach the server at {url}."),
        PeerError::InvalidUrl { url, .. } => format!("{url} is not a valid server address."),
        PeerError::NotConnected | PeerError::ConnectionLost { .. } => NOT_CONNECTED.into(),
        PeerError::Timeout { .. } => "The server did not answer in time.".into(),
        PeerError::QueueFull { .. } => {
            "Too many messages are waiting to be sent; try again once reconnected.".into()
        }
        PeerError::MessageTooLarge { .. } => "That message is too large to send.".into(),
        PeerError::KeyChanged { peer, .. } => format!(
            "{peer}'s safety number changed; accept the new key before writing to them."
        ),
        PeerError::KeyMismatch { peer, .. } => format!(
            "The server now presents another key for {peer} than the one you compared; nothing was \
             accepted. Compare the new safety number first."
        ),
        PeerError::KeyDowngrade { peer } => format!(
            "{peer} now appears without a signed identity; messages are refused to keep them authenticated."
        ),
        PeerError::Server {
            error_type,
            details,
            ..
        } => match error_type {
            ErrorType::ClientIdTaken => {
                "That name is already taken on this server. Choose another in Settings.".into()
            }
            ErrorType::PeerNotFound => "That person is not known to the server.".into(),
            ErrorType::UnknownQuestion => QUESTION_EXPIRED.into(),
            ErrorType::RateLimited => "Too many requests like this one are open on the server; try again in a moment.".into(),
            ErrorType::MailboxFull => {
                "Their mailbox on the server is full; try again later.".into()
            }
            ErrorType::NoKeyPackage => format!(
                "{details}: they cannot join a group until their app publishes group keys (an \
                 original or older client cannot; a current one does when it connects)."
            ),
            ErrorType::NotAMember => "You are not a member of that group any more.".into(),
            _ => details.clone(),
        },
        PeerError::GroupsDisabled => "Groups are off in this app.".into(),
        PeerError::UnknownGroup(_) => "You are not in that group any more.".into(),
        PeerError::GroupIdentity { peer, .. } => format!(
            "{peer}'s group key is not signed by the safety number pinned for them; refused. \
             Compare safety numbers with {peer}."
        ),
        PeerError::CommitConflict { .. } => {
            "Other members changed the group at the same moment; try again.".into()
        }
        PeerError::Group { reason, .. } => format!("The group change failed: {reason}."),
        PeerError::MlsOnlyDevice { peer } => format!(
            "{peer} uses an app without end-to-end groups (MLS), which only your primary device              can write to: send from your primary device."
        ),
        PeerError::PrimaryOnly { .. } => {
            "Only your primary device (the one holding your identity) can do that.".into()
        }
        PeerError::DeviceRemoved => "This device was removed from its account.".into(),
        other => other.to_string(),
    }
}

/// The sentence for a request that needs a connection while there is none.
pub const NOT_CONNECTED: &str = "Not connected to the server right now.";

const QUESTION_EXPIRED: &str = "That question has expired.";

/// What to tell the person about an error *event* (not the answer to a request), if anything.
pub fn describe_event(e: &PeerError) -> Option<String> {
    match e {
        // The key-change event already told the person, louder.
        PeerError::Rejected {
            reason: RejectReason::KeyChanged,
            ..
        } => None,
        PeerError::Rejected { from, reason, .. } => Some(format!(
            "A message from {from} was refused because it could not be verified ({reason})."
        )),
        PeerError::Server {
            error_type: ErrorType::UnknownQuestion,
            ..
        } => Some(QUESTION_EXPIRED.into()),
        PeerError::ReceiveQueueFull { .. } => None,
        other => Some(describe(other)),
    }
}

/// The machine-readable code of a peer error.
pub fn code(e: &PeerError) -> PeerErrorCode {
    match e {
        PeerError::NotConnected | PeerError::ConnectionLost { .. } => PeerErrorCode::NotConnected,
        PeerError::Connect { .. } | PeerError::ReconnectFailed { .. } => PeerErrorCode::Unreachable,
        PeerError::InvalidUrl { .. } => PeerErrorCode::InvalidUrl,
        PeerError::Timeout { .. } => PeerErrorCode::Timeout,
        PeerError::QueueFull { .. } => PeerErrorCode::QueueFull,
        PeerError::MessageTooLarge { .. } => PeerErrorCode::MessageTooLarge,
        PeerError::KeyChanged { .. } => PeerErrorCode::KeyChanged,
        PeerError::KeyMismatch { .. } => PeerErrorCode::KeyMismatch,
        PeerError::KeyDowngrade { .. } => PeerErrorCode::KeyDowngrade,
        PeerError::Rejected { .. } => PeerErrorCode::Rejected,
        PeerError::Server { error_type, .. } => match error_type {
            ErrorType::ClientIdTaken => PeerErrorCode::NameTaken,
            ErrorType::PeerNotFound => PeerErrorCode::PeerNotFound,
            ErrorType::UnknownQuestion => PeerErrorCode::UnknownQuestion,
            ErrorType::RateLimited => PeerErrorCode::RateLimited,
            ErrorType::MailboxFull => PeerErrorCode::MailboxFull,
            ErrorType::NoKeyPackage => PeerErrorCode::NoKeyPackage,
            _ => PeerErrorCode::Other,
        },
        _ => PeerErrorCode::Other,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn server(error_type: ErrorType) -> PeerError {
        PeerError::Server {
            error_type,
            details: "details from the server".into(),
            request_id: None,
        }
    }

    #[test]
    fn each_error_gets_a_sentence_and_a_code() {
        let cases = [
            (
                PeerError::Connect {
                    url: "ws://10.0.0.2:3005".into(),
                    reason: "refused".into(),
                },
                "Cannot reach the server at ws://10.0.0.2:3005.",
                PeerErrorCode::Unreachable,
            ),
            (
                PeerError::NotConnected,
                NOT_CONNECTED,
                PeerErrorCode::NotConnected,
            ),
            (
                server(ErrorType::ClientIdTaken),
                "That name is already taken on this server. Choose another in Settings.",
                PeerErrorCode::NameTaken,
            ),
            (
                server(ErrorType::PeerNotFound),
                "That person is not known to the server.",
                PeerErrorCode::PeerNotFound,
            ),
            (
                server(ErrorType::InternalError),
                "details from the server",
                PeerErrorCode::Other,
            ),
        ];
        for (error, sentence, expected) in cases {
            assert_eq!(describe(&error), sentence);
            assert_eq!(code(&error), expected);
        }
    }

    #[test]
    fn an_expired_question_is_told_and_a_full_receive_queue_is_not() {
        assert_eq!(
            describe_event(&server(ErrorType::UnknownQuestion)).as_deref(),
            Some(QUESTION_EXPIRED)
        );
        assert_eq!(
            describe_event(&PeerError::ReceiveQueueFull {
                from: lattice_protocol::ClientId::new("bob").unwrap(),
            }),
            None
        );
    }
}
