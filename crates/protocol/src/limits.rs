//! Protocol limits. Each is the default the server enforces and a client must respect; the server's
//! `Config` takes its defaults from here.

/// Largest text frame accepted, in bytes. A 1 KiB message sealed with ML-KEM-768 is about 3 KiB on the
/// wire; 256 KiB leaves room for long texts while keeping a hostile frame cheap to refuse.
pub const MAX_FRAME_BYTES: usize = 256 * 1024;

/// Largest `group_commit` frame, in bytes: the one client frame allowed past [`MAX_FRAME_BYTES`].
/// It carries an MLS Commit and the Welcome of the members it adds, both base64. Grown one add at
/// a time to [`MAX_GROUP_MEMBERS`], the add that makes 128 members is a 160,500-byte Commit and a
/// 196,898-byte Welcome (`lattice-mls`, measured: docs/mls.md), so a ~480 KB frame; a tree whose
/// parent nodes are all filled makes the Welcome up to ~350 KB (~680 KB frame). 1 MiB holds both
/// with room, and stays a bound: the server reads such a frame only within its in-flight budget
/// for large frames (`lattice-server`'s `limits::LARGE_FRAME_BUDGET`). Original clients never
/// send it.
pub const MAX_GROUP_COMMIT_FRAME_BYTES: usize = 1024 * 1024;

/// Largest frame the server ever sends, in bytes, and so the least a client must be willing to read.
/// A delivered `message` is the sender's frame (at most [`MAX_FRAME_BYTES`]) re-wrapped with the
/// server-set `fromId`, `timestamp` and `messageId`; a delivered Commit or Welcome is one field of
/// a `group_commit` (at most [`MAX_GROUP_COMMIT_FRAME_BYTES`]) in an `mls` envelope. 16 KiB of
/// headroom covers the fields around either with room to spare. Every other server frame is far
/// smaller (see [`MAX_DISCOVER_ANSWER_BYTES`]). Only `mls` deliveries go past
/// [`MAX_SERVER_FRAME_BYTES_NON_MLS`], so an original client, which takes part in no group, never
/// gets one.
pub const MAX_SERVER_FRAME_BYTES: usize = MAX_GROUP_COMMIT_FRAME_BYTES + 16 * 1024;

/// Largest frame the server sends to a client outside MLS groups: a relayed message of
/// [`MAX_FRAME_BYTES`] with the server's fields around it.
pub const MAX_SERVER_FRAME_BYTES_NON_MLS: usize = MAX_FRAME_BYTES + 16 * 1024;

/// The largest client frame of type `frame_type` (its wire name): [`MAX_GROUP_COMMIT_FRAME_BYTES`]
/// for `group_commit`, [`MAX_FRAME_BYTES`] for every other. The server refuses a larger frame with
/// `MESSAGE_TOO_LARGE`; a client checks before sending.
///
/// ```
/// use lattice_protocol::limits::{max_client_frame_bytes, MAX_FRAME_BYTES, MAX_GROUP_COMMIT_FRAME_BYTES};
/// assert_eq!(max_client_frame_bytes("group_commit"), MAX_GROUP_COMMIT_FRAME_BYTES);
/// assert_eq!(max_client_frame_bytes("message"), MAX_FRAME_BYTES);
/// ```
#[must_use]
pub fn max_client_frame_bytes(frame_type: &str) -> usize {
    if frame_type == GROUP_COMMIT_TYPE {
        MAX_GROUP_COMMIT_FRAME_BYTES
    } else {
        MAX_FRAME_BYTES
    }
}

/// The wire name of the frame allowed up to [`MAX_GROUP_COMMIT_FRAME_BYTES`].
const GROUP_COMMIT_TYPE: &str = "group_commit";

/// Most ids in one `discover` answer. More online peers are paged (`more` / `cursor`). 1000 ids of
/// the longest length make a 68 KiB frame: a fraction of the frame limit however many peers
/// register, and more than a person scrolls through.
pub const MAX_DISCOVER_PEERS: usize = 1000;

/// Bytes a `discover` answer can take at most: every id at [`MAX_ID_LEN`] plus its quotes and
/// comma (client ids never need escaping), and 1 KiB for the frame around the list (`type`,
/// `more`, `cursor`, a `requestId` even if fully escaped). Checked at compile time to be below
/// [`MAX_FRAME_BYTES`], so the answer fits every client's read limit by construction.
pub const MAX_DISCOVER_ANSWER_BYTES: usize = MAX_DISCOVER_PEERS * (MAX_ID_LEN + 3) + 1024;

const _: () = assert!(MAX_DISCOVER_ANSWER_BYTES <= MAX_FRAME_BYTES);
const _: () = assert!(MAX_FRAME_BYTES < MAX_SERVER_FRAME_BYTES_NON_MLS);
const _: () = assert!(MAX_SERVER_FRAME_BYTES_NON_MLS <= MAX_SERVER_FRAME_BYTES);
const _: () = assert!(MAX_FRAME_BYTES < MAX_GROUP_COMMIT_FRAME_BYTES);
const _: () = assert!(MAX_GROUP_COMMIT_FRAME_BYTES < MAX_SERVER_FRAME_BYTES);

/// Longest `clientId`, `messageId`, `requestId`, `conversationId` or `groupId`, in characters (all
/// are ASCII; a `groupId` of 64 hex characters is 32 bytes, twice what `lattice-mls` makes).
pub const MAX_ID_LEN: usize = 64;

/// Length of an ML-KEM-768 encapsulation key, the only `publicKey` the protocol carries.
pub const KEM_PUBLIC_KEY_LEN: usize = 1184;

/// Length of an Ed25519 identity key (`identityKey`, `verification.serializedPublicKey`).
pub const IDENTITY_KEY_LEN: usize = 32;

/// Length of an Ed25519 signature (`keySignature`, `verification.serializedSignedData`).
pub const SIGNATURE_LEN: usize = 64;

/// Random bytes in a `challenge` nonce: enough that guessing one is hopeless.
pub const CHALLENGE_NONCE_LEN: usize = 32;

/// Seconds a `challenge` nonce stays usable: long enough for a slow link, short enough that a stolen
/// statement is useless soon.
pub const CHALLENGE_TTL_SECS: u64 = 60;

/// *ext*: seconds a link relay (`register` with `linkRelay`) lives: the server closes it this long
/// after it registered, and a linking code (and its run) is valid exactly as long. Long enough to
/// walk to the other device and type 8 characters, short enough that a code seen over a shoulder
/// goes stale.
pub const LINK_RELAY_TTL_SECS: u64 = 5 * 60;

/// *ext*: `message` frames a link relay may send over its life. Linking takes two (`hello`,
/// `confirm`) and at most one `abort`; the rest is slack for retries. With
/// [`LINK_RELAY_TTL_SECS`] this also bounds its rate.
pub const MAX_LINK_RELAY_MESSAGES: u32 = 8;

/// Longest question text and longest free-text answer the server relays, in bytes.
pub const MAX_QUESTION_TEXT: usize = 4096;

/// Most options a `choice` question may offer: a dialog, not a menu.
pub const MAX_QUESTION_OPTIONS: usize = 16;

/// Default TCP port, the original signaling server's.
pub const DEFAULT_PORT: u16 = 3005;

/// Most members (leaves) an MLS group may have: the engine (`lattice-mls`) refuses to grow a group
/// past it and the server's delivery service refuses a Commit whose member list is longer. A
/// Welcome carries the ratchet tree (~1.5–2.7 KB per member with the hybrid suite) and a path
/// Commit may encrypt to every leaf, so at 128 members each is near 160–350 KB of MLS bytes: the
/// reason for [`MAX_GROUP_COMMIT_FRAME_BYTES`]. Raise it together with that cap.
pub const MAX_GROUP_MEMBERS: usize = 128;

/// *ext*: most devices one id may have, its implicit primary device included: a signed device
/// list names at most `MAX_DEVICES_PER_ID - 1` linked devices (`TOO_MANY_DEVICES`). Every
/// message to the id is stored once per device and every group fan-out reaches each device, so
/// this bounds what one id multiplies; eight covers a phone, a few computers and a tablet.
pub const MAX_DEVICES_PER_ID: usize = 8;

/// Largest KeyPackage the directory stores, in bytes (decoded). One with the hybrid suite
/// (X25519 + ML-KEM-768 init key, Ed25519 credential bound to the identity) is ~2.7 KB; 4 KiB
/// leaves room for extensions without letting a client park arbitrary data.
pub const MAX_KEY_PACKAGE_BYTES: usize = 4096;

/// Most one-time KeyPackages in one `key_package_upload`. Chosen so that a full upload (plus the
/// last-resort KeyPackage) at [`MAX_KEY_PACKAGE_BYTES`] each, in base64, fits one frame.
pub const MAX_KEY_PACKAGE_UPLOAD: usize = 32;

/// Most one-time KeyPackages the directory keeps per id (its stock): enough for a device to be
/// added to many groups while offline, small enough that one id cannot fill the disk.
pub const MAX_KEY_PACKAGE_STOCK: usize = 100;

/// When a fetch leaves an id with fewer one-time KeyPackages than this, the owner (if online) gets
/// a `key_packages_low` notice and should upload more; the last-resort KeyPackage covers the gap.
pub const KEY_PACKAGE_LOW_STOCK: usize = 10;

/// Bytes of a base64 string holding `n` bytes (padded).
const fn base64_len(n: usize) -> usize {
    n.div_ceil(3) * 4
}

const _: () = assert!(
    (MAX_KEY_PACKAGE_UPLOAD + 1) * (base64_len(MAX_KEY_PACKAGE_BYTES) + 3) + 1024
        <= MAX_FRAME_BYTES
);

/// Largest chunk of a blob transfer, in bytes (ciphertext). Clients pick their chunk size up to
/// this (1 MiB is a good default); the server holds at most one chunk's read buffer per upload.
pub const MAX_BLOB_CHUNK_BYTES: u64 = 8 * 1024 * 1024;

/// Smallest chunk size of a blob transfer with more than one chunk, in bytes: bounds the chunk
/// count (a 2 GiB file has at most 32 768 chunks).
pub const MIN_BLOB_CHUNK_BYTES: u64 = 64 * 1024;

/// Default largest blob transfer (one file), in bytes: 2 GiB.
pub const DEFAULT_MAX_BLOB_BYTES: u64 = 2 * 1024 * 1024 * 1024;
