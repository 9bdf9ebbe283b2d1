//! Protocol limits. Each is the default the server enforces and a client must respect; the server's
//! `Config` takes its defaults from here.

/// Largest text frame accepted, in bytes. A 1 KiB message sealed with ML-KEM-768 is about 3 KiB on the
/// wire; 256 KiB leaves room for long texts while keeping a hostile frame cheap to refuse.
pub const MAX_FRAME_BYTES: usize = 256 * 1024;

/// The largest frame a server ever sends: a relayed message of [`MAX_FRAME_BYTES`] plus its
/// envelope fields (`fromId`, `messageId`, `timestamp`, the frame's `type` and `requestId`);
/// discover answers are capped to fit. A client's read limit must be at least this.
pub const MAX_SERVER_FRAME_BYTES: usize = MAX_FRAME_BYTES + 16 * 1024;

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
