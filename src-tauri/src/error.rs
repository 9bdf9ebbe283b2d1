//! The one error type commands return. It serializes as `{"kind": "...", "message": "..."}` so
//! the page can branch on `kind` and show `message` as is: a sentence, never raw JSON.

use serde::ser::SerializeStruct;
use serde::{Serialize, Serializer};

use crate::storage::StorageError;

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
    #[error("{0}")]
    Peer(String),
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
    /// The stable, machine-readable name of the variant.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::InvalidInput(_) => "invalidInput",
            Self::NotSetUp => "notSetUp",
            Self::Storage(_) => "storage",
            Self::Peer(_) => "peer",
            Self::Hosting(_) => "hosting",
            Self::UnknownQuestion => "unknownQuestion",
            Self::Internal(_) => "internal",
        }
    }
}

impl Serialize for CommandError {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("CommandError", 2)?;
        s.serialize_field("kind", self.kind())?;
        s.serialize_field("message", &self.to_string())?;
        s.end()
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
}
