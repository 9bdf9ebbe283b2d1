//! Every constant of the engine, each once, with its reason.

use openmls::prelude::Ciphersuite;

/// The one ciphersuite Lattice speaks: X-Wing style hybrid KEM (X25519 + ML-KEM-768), AES-128-GCM,
/// SHA-256, Ed25519 signatures. Its code point (0x004F) is provisional
/// (draft-ietf-mls-pq-ciphersuites); it is recorded per group by MLS itself (the group context
/// carries it), so a later suite arrives through a ReInit, never by reinterpreting old state.
pub const CIPHERSUITE: Ciphersuite = Ciphersuite::MLS_128_MLKEM768X25519_AES128GCM_SHA256_Ed25519;

/// Domain label of the identity binding: the Lattice identity key signs
/// `label ‖ lp(client id) ‖ lp(MLS signature public key)`.
pub const BINDING_LABEL: &[u8] = b"lattice/v1/mls-credential";

/// Domain label of a linked device's binding: its device key signs
/// `label ‖ lp(client id) ‖ lp(device id) ‖ lp(MLS signature public key)`.
pub const DEVICE_BINDING_LABEL: &[u8] = b"lattice/v1/mls-device-credential";

/// The refusal reason of a member whose id has no pinned identity key
/// ([`crate::MlsError::unpinned_id`]): the caller may fetch and pin the key, then try again.
pub(crate) const UNPINNED: &str = "no identity key is pinned for this id";

/// The refusal reason of a linked device that is not on its id's device list as the caller knows
/// it ([`crate::MlsError::unlisted_id`]): the caller may fetch the id's newest list (a device
/// linked since), then try again once.
pub(crate) const UNLISTED: &str = "device is not on the id's signed device list";

/// Private-use extension type carrying the group's display name in the group context, so a
/// Welcome brings the name along and a rename is an ordinary, authenticated Commit.
pub const GROUP_NAME_EXTENSION: u16 = 0xF1A7;

/// Longest group name, in bytes of UTF-8 (a display string, not a document).
pub const MAX_GROUP_NAME_LEN: usize = 256;

/// Most KeyPackages made in one batch (the directory stocks a handful per device, not thousands).
pub const MAX_KEY_PACKAGE_BATCH: usize = 100;

/// Largest MLS message accepted by [`crate::MlsClient::process`] and [`crate::MlsClient::join`].
/// A Welcome carrying the ratchet tree grows ~2.5 KB per member with this suite; 2 MiB covers a
/// several-hundred-member group and still bounds what a peer can make us parse.
pub const MAX_MESSAGE_LEN: usize = 2 * 1024 * 1024;

/// Largest application plaintext [`crate::MlsClient::encrypt`] seals (a chat message, with room).
pub const MAX_PLAINTEXT_LEN: usize = 256 * 1024;

/// Epochs whose message secrets are kept after a Commit, so application messages sent just before
/// a Commit (delivered after it) still open. This is the forward-secrecy window of a past epoch:
/// a state stolen now opens at most the unread messages of the last `MAX_PAST_EPOCHS` epochs.
pub const MAX_PAST_EPOCHS: usize = 2;

/// Out-of-order tolerance of a sender's ratchet: how many skipped generations keep their keys.
/// Every kept key is a message an attacker with the state could still open, so it stays small.
pub const OUT_OF_ORDER_TOLERANCE: u32 = 5;

/// How far ahead of the last seen generation a message may be (bounds ratchet work per message).
pub const MAXIMUM_FORWARD_DISTANCE: u32 = 1000;

/// Deliveries remembered by [`crate::MlsClient::process_once`] / [`crate::MlsClient::join_once`]
/// (the oldest are forgotten past it). The delivery service redelivers a message only until it
/// is acknowledged, and a client acknowledges right after processing, so a redelivery (a crash
/// between the two) comes within the last few dozen; 10,000 rows (~1 MB) leave a wide margin.
pub const MAX_REMEMBERED_DELIVERIES: usize = 10_000;

/// Lifetime of a KeyPackage, in seconds (28 days): the directory refuses expired ones, and the
/// owner uploads fresh stock well before.
pub const KEY_PACKAGE_LIFETIME_SECS: u64 = 28 * 24 * 60 * 60;

/// Most members (leaves) a group may have; defined once in [`lattice_protocol::limits`] because
/// the delivery service enforces it too. Enforced here on adds this client makes, Commits it
/// processes and Welcomes it joins.
pub use lattice_protocol::limits::MAX_GROUP_MEMBERS;
