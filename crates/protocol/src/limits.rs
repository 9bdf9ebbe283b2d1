//! Protocol limits. Each is the default the server enforces and a client must respect; the server's
//! `Config` takes its defaults from here.

/// Largest text frame accepted, in bytes. A 1 KiB message sealed with ML-KEM-768 is about 3 KiB on the
/// wire; 256 KiB leaves room for long texts while keeping a hostile frame cheap to refuse.
pub const MAX_FRAME_BYTES: usize = 256 * 1024;

/// Largest frame the server ever sends, in bytes, and so the least a client must be willing to read.
/// A delivered `message` is the sender's frame (at most [`MAX_FRAME_BYTES`]) re-wrapped with the
/// server-set `fromId`, `timestamp` and `messageId`; 16 KiB of headroom covers that with room to
/// spare. Every other server frame is far smaller (see [`MAX_DISCOVER_ANSWER_BYTES`]).
pub const MAX_SERVER_FRAME_BYTES: usize = MAX_FRAME_BYTES + 16 * 1024;

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
const _: () = assert!(MAX_FRAME_BYTES < MAX_SERVER_FRAME_BYTES);

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

/// Longest question text and longest free-text answer the server relays, in bytes.
pub const MAX_QUESTION_TEXT: usize = 4096;

/// Most options a `choice` question may offer: a dialog, not a menu.
pub const MAX_QUESTION_OPTIONS: usize = 16;

/// Default TCP port, the original signaling server's.
pub const DEFAULT_PORT: u16 = 3005;

/// Most members (leaves) an MLS group may have: the engine (`lattice-mls`) refuses to grow a group
/// past it and the server's delivery service refuses a Commit whose member list is longer. A
/// Welcome carries the ratchet tree (~1.5–2.5 KB per member with the hybrid suite) and a path
/// Commit may encrypt to every leaf, so at 128 members each is near 200–300 KB of MLS bytes.
/// Raise it together with [`MAX_FRAME_BYTES`] (or once the tree travels separately).
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
