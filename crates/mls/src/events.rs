//! The values the engine hands back: outgoing Commits, members and events.

use crate::group_id::GroupId;
use crate::identity::MemberIdentity;

/// A Commit this client made, waiting for the delivery service.
///
/// Send `commit` to the group (and `welcome`, if any, to the new members) through the delivery
/// service; when it accepts the Commit for this epoch call [`crate::MlsClient::confirm_commit`];
/// when another member's Commit won the epoch call [`crate::MlsClient::discard_commit`] and then
/// process the winner. Until then the group stays in its current epoch.
#[derive(Debug, Clone)]
pub struct OutgoingCommit {
    /// The group.
    pub group: GroupId,
    /// The epoch the Commit was made in (the delivery service's epoch check compares this).
    pub epoch: u64,
    /// The Commit (an MLS message) for every current member.
    pub commit: Vec<u8>,
    /// The Welcome for added members, when the Commit adds any.
    pub welcome: Option<Vec<u8>>,
}

/// One member of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Who it is (id and identity key, for the safety number).
    pub identity: MemberIdentity,
    /// Its leaf index in the ratchet tree.
    pub leaf_index: u32,
}

/// What processing a message (or confirming one's own Commit) did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum GroupEvent {
    /// An application message.
    Application {
        /// Who sent it.
        sender: MemberIdentity,
        /// Its plaintext.
        bytes: Vec<u8>,
    },
    /// This client joined the group from a Welcome.
    Joined {
        /// The group's name.
        name: String,
        /// Everyone in the group, this client included.
        members: Vec<MemberIdentity>,
    },
    /// Members were added (by the Commit of the new epoch).
    MembersAdded {
        /// The new members.
        members: Vec<MemberIdentity>,
    },
    /// A member was removed (or left).
    MemberRemoved {
        /// The removed member.
        member: MemberIdentity,
    },
    /// A member asked to leave: a Remove proposal of itself, queued until a member commits it
    /// ([`crate::MlsClient::commit_pending_proposals`]).
    LeaveRequested {
        /// The member leaving.
        member: MemberIdentity,
    },
    /// A member replaced its leaf (a self-update: new keys, the healing step).
    MemberUpdated {
        /// The member.
        member: MemberIdentity,
    },
    /// The group was renamed.
    Renamed {
        /// The new name.
        name: String,
    },
    /// The group moved to a new epoch.
    EpochChanged {
        /// The new epoch.
        epoch: u64,
    },
    /// This client was removed from the group; its state for the group is deleted.
    Removed,
}
