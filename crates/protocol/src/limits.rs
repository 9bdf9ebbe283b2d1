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

/// Longest `clientId`, `messageId`, `requestId` or `conversationId`, in characters (all are ASCII).
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
