//! The one error type commands return, converted from the services' own errors at the IPC
//! boundary. It serializes as `{"kind": "...", "message": "..."}` — plus `"code"` for kind
//! `peer` — so the page can branch on `kind` (and `code`) and show `message` as is: a
//! sentence, never raw JSON.

use lattice_peer::PeerError;
use serde::ser::SerializeStruct;
use serde::{Serialize, Serializer};

use crate::contract::{ErrorKind, PeerErrorCode};
use crate::describe::{self, describe, NOT_CONNECTED};
use crate::messenger::MessengerError;
use crate::session::SessionError;
use crate::storage::backup::BackupError;
use crate::storage::search::SearchError;
use crate::storage::StorageError;
use crate::views::Notice;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The input was not acceptable; the message says why.
    #[error("{0}")]
    InvalidInput(String),
    /// First run has not been completed.
    #[error("Choose a name and a server first.")]
    NotSetUp,
    /// Something on disk failed.
    #[error("Could not read or write the app's data: {0}")]
    Storage(#[from] StorageError),
    /// The server or the connection refused the request.
    #[error("{message}")]
    Peer {
        /// Why, for the page to branch on.
        code: PeerErrorCode,
        /// A sentence for people.
        message: String,
    },
    /// The embedded server could not start.
    #[error("Could not host a server: {0}")]
    Hosting(String),
    /// The question was already answered, expired or never existed.
    #[error("That question is no longer open.")]
    UnknownQuestion,
    /// The app itself failed (a window or plugin error).
    #[error("{0}")]
    Internal(String),
}

impl CommandError {
    /// The stable, machine-readable kind.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::InvalidInput(_) => ErrorKind::InvalidInput,
            Self::NotSetUp => ErrorKind::NotSetUp,
            Self::Storage(_) => ErrorKind::Storage,
            Self::Peer { .. } => ErrorKind::Peer,
            Self::Hosting(_) => ErrorKind::Hosting,
            Self::UnknownQuestion => ErrorKind::UnknownQuestion,
            Self::Internal(_) => ErrorKind::Internal,
        }
    }

    /// For kind `peer`: why.
    pub fn code(&self) -> Option<PeerErrorCode> {
        match self {
            Self::Peer { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// The same error as a notice for the page.
    pub fn notice(&self) -> Notice {
        Notice {
            kind: self.kind(),
            code: self.code(),
            message: self.to_string(),
        }
    }
}

impl Serialize for CommandError {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let code = self.code();
        let mut s = serializer.serialize_struct("CommandError", 2 + usize::from(code.is_some()))?;
        s.serialize_field("kind", &self.kind())?;
        if let Some(code) = code {
            s.serialize_field("code", &code)?;
        }
        s.serialize_field("message", &self.to_string())?;
        s.end()
    }
}

impl From<PeerError> for CommandError {
    fn from(e: PeerError) -> Self {
        Self::Peer {
            code: describe::code(&e),
            message: describe(&e),
        }
    }
}

impl From<SessionError> for CommandError {
    fn from(e: SessionError) -> Self {
        match e {
            SessionError::Hosting(e) => Self::Hosting(e.0),
            SessionError::InvalidServer(e) => Self::InvalidInput(describe(&e)),
            SessionError::Peer(e) => (*e).into(),
            SessionError::NotConnected => Self::Peer {
                code: PeerErrorCode::NotConnected,
                message: NOT_CONNECTED.into(),
            },
            e @ SessionError::Identity(_) => Self::Internal(e.to_string()),
            SessionError::Storage(e) => Self::Storage(e),
            SessionError::Linking(message) => Self::InvalidInput(message.into()),
        }
    }
}

impl From<MessengerError> for CommandError {
    fn from(e: MessengerError) -> Self {
        match e {
            MessengerError::InvalidInput(message) => Self::InvalidInput(message),
            MessengerError::NotSetUp => Self::NotSetUp,
            MessengerError::Storage(e) => Self::Storage(e),
            MessengerError::Offline(hint) => Self::Peer {
                code: PeerErrorCode::NotConnected,
                message: hint.into(),
            },
            MessengerError::Session(e) => e.into(),
            MessengerError::UnknownQuestion => Self::UnknownQuestion,
            MessengerError::Internal(message) => Self::Internal(message),
        }
    }
}

impl From<SearchError> for CommandError {
    fn from(e: SearchError) -> Self {
        match e {
            SearchError::InvalidQuery(message) => Self::InvalidInput(message),
            SearchError::Storage(e) => Self::Storage(e),
        }
    }
}

impl From<BackupError> for CommandError {
    fn from(e: BackupError) -> Self {
        match e {
            BackupError::Storage(e) => Self::Storage(e),
            // Everything else is about the file or the passphrase the person chose: said as is.
            e => Self::InvalidInput(e.to_string()),
        }
    }
}

impl From<tauri::Error> for CommandError {
    fn from(e: tauri::Error) -> Self {
        Self::Internal(e.to_string())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn serializes_kind_and_readable_message() {
        let json = serde_json::to_value(CommandError::InvalidInput("Type a message first.".into()))
            .unwrap();
        assert_eq!(
            json,
            serde_json::json!({"kind": "invalidInput", "message": "Type a message first."})
        );
    }

    #[test]
    fn a_peer_error_keeps_its_code_next_to_the_kind() {
        let json = serde_json::to_value(CommandError::from(PeerError::NotConnected)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "kind": "peer",
                "code": "notConnected",
                "message": "Not connected to the server right now."
            })
        );
        let offline = CommandError::from(MessengerError::Offline("Connect first."));
        assert_eq!(offline.code(), Some(PeerErrorCode::NotConnected));
        assert_eq!(offline.notice().message, "Connect first.");
    }
}
