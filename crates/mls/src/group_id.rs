//! The id of an MLS group: a leaf module, so errors and events can both name it.

use core::fmt;

/// An MLS group id (16 random bytes chosen by the creator).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupId(pub(crate) Vec<u8>);

impl GroupId {
    /// The raw bytes (as MLS carries them).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// A group id from its raw bytes (as read from a frame or the caller's database).
    pub fn from_bytes(b: &[u8]) -> Self {
        Self(b.to_vec())
    }
}

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GroupId({self})")
    }
}
