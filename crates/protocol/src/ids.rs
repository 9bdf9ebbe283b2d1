//! Validated identifiers. Each newtype can only hold a value that obeys the protocol's rule, so code
//! that receives one never re-checks it.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::limits::MAX_ID_LEN;

/// Why a string is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Empty string.
    #[error("{kind} must not be empty")]
    Empty {
        /// Which id.
        kind: &'static str,
    },
    /// Longer than [`MAX_ID_LEN`].
    #[error("{kind} is {len} characters long; the limit is {max}")]
    TooLong {
        /// Which id.
        kind: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Holds a character outside the allowed set.
    #[error("{kind} contains a character that is not allowed ({allowed})")]
    BadChar {
        /// Which id.
        kind: &'static str,
        /// The allowed set, for the message.
        allowed: &'static str,
    },
}

fn client_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@')
}

fn device_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-')
}

fn hex_char(c: char) -> bool {
    matches!(c, '0'..='9' | 'a'..='f')
}

fn token_char(c: char) -> bool {
    c.is_ascii_graphic()
}

fn check(
    kind: &'static str,
    s: &str,
    ok: fn(char) -> bool,
    allowed: &'static str,
) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty { kind });
    }
    // Every allowed character is ASCII, so byte length = character count for valid ids; count chars
    // for the message so a long non-ASCII string is reported sensibly.
    if s.len() > MAX_ID_LEN {
        return Err(IdError::TooLong {
            kind,
            len: s.chars().count(),
            max: MAX_ID_LEN,
        });
    }
    if !s.chars().all(ok) {
        return Err(IdError::BadChar { kind, allowed });
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $pred:path, $allowed:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// Validates and wraps `s`.
            ///
            /// # Errors
            /// [`IdError`] when `s` is empty, longer than 64 characters or holds a character
            /// outside the allowed set.
            pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                check($kind, &s, $pred, $allowed)?;
                Ok(Self(s))
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = IdError;
            fn try_from(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }
    };
}

id_type!(
    /// A peer's id: 1–64 characters of `A–Z a–z 0–9 . _ - @`.
    ///
    /// ```
    /// use lattice_protocol::ClientId;
    /// assert!(ClientId::new("alice@home").is_ok());
    /// assert!(ClientId::new("bob smith").is_err());
    /// ```
    ClientId,
    "clientId",
    client_id_char,
    "A-Z a-z 0-9 . _ - @"
);
id_type!(
    /// A message id chosen by the sender (UUID v4 or ULID): 1–64 printable ASCII characters.
    MessageId,
    "messageId",
    token_char,
    "printable ASCII without spaces"
);
id_type!(
    /// A request id chosen by the client and echoed in the direct answer: 1–64 printable ASCII characters.
    RequestId,
    "requestId",
    token_char,
    "printable ASCII without spaces"
);
id_type!(
    /// A question id chosen by the server (a UUID).
    QuestionId,
    "questionId",
    token_char,
    "printable ASCII without spaces"
);
id_type!(
    /// A conversation id chosen by the server; rounds of one conversation share it.
    ConversationId,
    "conversationId",
    token_char,
    "printable ASCII without spaces"
);
id_type!(
    /// An MLS group id as the delivery service names it: the group's id bytes in lowercase hex
    /// (1–64 characters), as `lattice-mls` displays a `GroupId`.
    ///
    /// ```
    /// use lattice_protocol::GroupId;
    /// assert!(GroupId::new("00ff3a").is_ok());
    /// assert!(GroupId::new("00FF").is_err());
    /// ```
    GroupId,
    "groupId",
    hex_char,
    "lowercase hex digits"
);

id_type!(
    /// *ext*: a device of an id, chosen by the device: 1–64 characters of `A–Z a–z 0–9 _ -`.
    /// [`PRIMARY_DEVICE`] names the implicit device of a `register` without a device part and may
    /// not be chosen (see docs/protocol.md, "Devices").
    ///
    /// ```
    /// use lattice_protocol::DeviceId;
    /// assert!(DeviceId::new("laptop-2").is_ok());
    /// assert!(DeviceId::new("a/b").is_err());
    /// ```
    DeviceId,
    "deviceId",
    device_id_char,
    "A-Z a-z 0-9 _ -"
);

/// The device id of a connection whose `register` has no device part (original clients and
/// Lattice clients without linked devices): the id's implicit primary device, whose key is the
/// identity key itself. Reserved: a device part or a device list naming it is refused.
pub const PRIMARY_DEVICE: &str = "primary";

impl DeviceId {
    /// The implicit primary device ([`PRIMARY_DEVICE`]).
    pub fn primary() -> Self {
        Self(PRIMARY_DEVICE.to_owned())
    }

    /// Whether this is the implicit primary device.
    pub fn is_primary(&self) -> bool {
        self.0 == PRIMARY_DEVICE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_id_rules() {
        assert!(ClientId::new("a").is_ok());
        assert!(ClientId::new("A.b_c-d@e9").is_ok());
        assert!(ClientId::new("x".repeat(64)).is_ok());
        assert!(matches!(ClientId::new(""), Err(IdError::Empty { .. })));
        assert!(matches!(
            ClientId::new("x".repeat(65)),
            Err(IdError::TooLong { .. })
        ));
        assert!(matches!(ClientId::new("a b"), Err(IdError::BadChar { .. })));
        assert!(matches!(ClientId::new("é"), Err(IdError::BadChar { .. })));
        assert!(matches!(ClientId::new("a/b"), Err(IdError::BadChar { .. })));
    }

    #[test]
    fn device_id_rules() {
        assert!(DeviceId::new("phone_1-B").is_ok());
        assert!(DeviceId::new("x".repeat(65)).is_err());
        assert!(DeviceId::new("a.b").is_err());
        assert!(DeviceId::primary().is_primary());
        assert!(!DeviceId::new("phone").unwrap().is_primary());
    }

    #[test]
    fn token_rules() {
        assert!(MessageId::new("0b8f0c7e-1d2a-4f7e-9a39-1a2b3c4d5e6f").is_ok());
        assert!(MessageId::new("has space").is_err());
        assert!(RequestId::new("r:1/2").is_ok());
        assert!(RequestId::new("\n").is_err());
    }

    #[test]
    fn serde_validates() {
        let ok: Result<ClientId, _> = serde_json::from_str("\"alice\"");
        assert!(ok.is_ok());
        let bad: Result<ClientId, _> = serde_json::from_str("\"al ice\"");
        assert!(bad.is_err());
    }
}
