//! Every limit and timeout of the client, with its reason. [`crate::PeerConfig`] takes its defaults
//! from here.

use std::time::Duration;

/// How long a request waits for its answer. The server answers in milliseconds; ten seconds
/// covers a slow mobile link without leaving a caller hanging.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How long dialling (TCP + TLS + WebSocket handshake) may take before the attempt counts as failed.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the connection pings the server. Below the 30-60 s idle timeouts of common proxies and
/// NATs, so an idle connection stays open.
pub const PING_INTERVAL: Duration = Duration::from_secs(20);

/// How long after a ping the connection waits for any frame (pong or other) before declaring the
/// connection dead and reconnecting.
pub const PONG_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest a single socket write may take; a peer that cannot write for this long is treated as
/// disconnected rather than blocking every caller behind it.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// `now + after`, or a deadline too far away to matter when that would overflow (a caller's
/// `Duration::MAX` means "no timeout", not a panic).
pub(crate) fn deadline_after(after: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(after)
        .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 86_400)))
        .unwrap_or(now)
}

/// First reconnect delay.
pub const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Growth factor of the reconnect delay.
pub const BACKOFF_FACTOR: f64 = 2.0;
/// Largest reconnect delay: a restarted server is found within half a minute.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Consecutive failed attempts after which the peer gives up and reports `Disconnected`.
pub const BACKOFF_MAX_ATTEMPTS: u32 = 10;
/// How long a registered connection must stay up before the reconnect backoff starts over (attempt
/// 1, the base delay). Registration alone proves little: a server (or anyone on a `ws://` path)
/// that closes every connection right after it registered would otherwise get a reconnect about
/// once a second forever, and the attempt limit would never apply. A minute is two keepalive
/// rounds ([`PING_INTERVAL`]), and longer than the longest backoff delay.
pub const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(60);
const _: () = assert!(BACKOFF_RESET_AFTER.as_secs() > BACKOFF_MAX.as_secs());

/// Fraction of each delay that is randomised, so peers that lost the same server do not all
/// reconnect in the same millisecond.
pub const BACKOFF_JITTER: f64 = 0.2;

/// Frames held while disconnected (and in flight to the writer). Bounded so that a long outage
/// costs memory proportional to this, not to how long the user kept typing; beyond it, sending
/// fails with [`crate::PeerError::QueueFull`].
pub const OUTBOUND_QUEUE: usize = 256;

/// Frames of the registration handshake (challenge, register) waiting for the writer. Tiny: one
/// handshake is in flight at a time.
pub const CONTROL_QUEUE: usize = 8;

/// Incoming `message` frames waiting to be decrypted and verified. When full, further messages are
/// dropped unacknowledged (the server keeps them and delivers them again later) and an error event
/// is raised: reading the socket never blocks on a slow consumer.
pub const RECEIVE_QUEUE: usize = 256;

/// Senders whose messages are opened at once. Opening a message may wait for the sender's key (a
/// request to the server, up to [`REQUEST_TIMEOUT`]), so messages of different senders are opened
/// concurrently: a sender whose key is slow or never comes holds up only its own messages. Bounded,
/// so a flood of senders costs at most this many key requests in flight; a sender waits for a free
/// slot in turn (round-robin), and this many stalled senders at once still leave others a turn
/// every [`REQUEST_TIMEOUT`].
pub const RECEIVE_CONCURRENCY: usize = 16;

/// Incoming messages of one sender waiting to be opened (besides the [`RECEIVE_QUEUE`] shared by
/// all, which they have left). Beyond it that sender's messages are dropped unacknowledged and
/// `Error(ReceiveQueueFull)` is raised. The whole queue: a dropped message comes back only after
/// the next reconnect, so an honest sender's burst (a reconnecting peer's mailbox, a resent
/// outbox, on a slow machine) must never be cut; fairness between senders comes from opening
/// them round-robin ([`RECEIVE_CONCURRENCY`]), not from a smaller share.
pub const RECEIVE_QUEUE_PER_SENDER: usize = RECEIVE_QUEUE;

/// Incoming messages kept after a refusal that may pass (a key change waiting for the user, a
/// sender key that could not be fetched), to be opened again as soon as it passes. They are not
/// acknowledged, so beyond this bound the server's copy is delivered again after a reconnect.
pub const HELD_MESSAGES: usize = 256;

/// First delay before a message refused for a retried transient reason (its sender's key could
/// not be fetched, the replay store failed) is opened again on the same connection. Long enough
/// that a server under load is not hammered, short enough that a blip goes unnoticed.
pub const TRANSIENT_RETRY_BASE: Duration = Duration::from_secs(5);

/// Longest delay between two retries of such a message (the delay doubles from
/// [`TRANSIENT_RETRY_BASE`] up to this).
pub const TRANSIENT_RETRY_MAX: Duration = Duration::from_secs(60);

/// A message refused for a retried transient reason is given up (acknowledged, reported as
/// [`crate::RejectReason::GaveUp`]) once it was refused at least this many times, counting
/// retries and the server's redeliveries after reconnects...
pub const MAX_TRANSIENT_REFUSALS: u32 = 5;

/// ...and its first refusal is at least this long ago. Both must hold, so that a flapping
/// connection (five quick refusals) does not lose a message, while a failure that persists for
/// ten minutes of retries does not keep it unacknowledged on the server forever.
pub const TRANSIENT_GIVE_UP_AFTER: Duration = Duration::from_secs(10 * 60);

/// Messages whose transient refusals are counted. Bounded because every message may add one; the
/// oldest count is forgotten first (that message then starts counting again).
pub const TRANSIENT_REFUSALS_TRACKED: usize = 1024;

/// Oldest signed `sentAt` accepted on a `lattice-v1` message. The server keeps an undelivered
/// message in the recipient's mailbox for up to 7 days (`lattice-server`'s default
/// `--mailbox-ttl`), and a sender may hold a sealed message in its own queue for a while before
/// the server takes it; one more day covers that and clocks that are somewhat off. Anything older
/// cannot come from an honest mailbox, only from a replay, so the replay window never has to
/// remember further back than this.
pub const MAX_MESSAGE_AGE: Duration = Duration::from_secs(8 * 24 * 3600);

/// How far ahead of our clock a signed `sentAt` may be. Phones and desktops keep their clocks
/// within seconds by NTP; minutes of slack spare a badly set clock, while a message dated further
/// ahead would stay "fresh" (and replayable within the window) for longer than it should.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(10 * 60);

/// Events buffered per [`crate::EventStream`] subscriber. A subscriber that falls this far behind
/// loses the oldest events and is told how many with [`crate::PeerEvent::Lagged`].
pub const EVENT_CAPACITY: usize = 1024;

/// Message ids remembered per sender for replay detection.
pub const REPLAY_WINDOW_PER_PEER: usize = 4096;

/// Senders of signed (`lattice-v1`) messages tracked for replay detection; the least recently
/// seen is forgotten first. A forgotten sender's replays are still refused: its high-water mark
/// (see [`crate::ReplayStore`]) outlives its window. Unsigned senders have their own bound
/// ([`REPLAY_MAX_UNSIGNED_PEERS`]) and can never push a signed sender out.
pub const REPLAY_MAX_PEERS: usize = 1024;

/// Message ids of signed senders remembered in all for replay detection (a few MiB at most). Far
/// more than the server can redeliver at once (its mailbox quota is 1000 per recipient).
pub const REPLAY_MAX_IDS: usize = 65_536;

/// Senders of unsigned (`ml-kem-aes`) messages tracked for replay detection. Such a sender needs
/// no identity, so anyone can be a thousand of them: they are kept apart from the signed senders
/// and only ever push each other out.
pub const REPLAY_MAX_UNSIGNED_PEERS: usize = 1024;

/// Message ids of unsigned senders remembered in all: a quarter of [`REPLAY_MAX_IDS`], since
/// these messages authenticate nobody and only original clients send them.
pub const REPLAY_MAX_UNSIGNED_IDS: usize = 16_384;

/// Senders whose high-water mark the in-memory [`crate::MemoryReplayStore`] keeps (one integer
/// each, about 100 bytes with the id). Large, because a forgotten mark lets an old replay of that
/// sender through; bounded, because every verified registration can add one. The least recently
/// raised mark is forgotten first.
pub const REPLAY_STORE_MAX_SENDERS: usize = 65_536;

/// How long the finding that a sender has no identity key (`PEER_NOT_FOUND`, or presented without
/// one) is remembered. A flood of `lattice-v1` messages in such a sender's name then costs one key
/// request per this interval instead of one per message (which, with the acks, would run into the
/// server's per-connection rate limit). Short, and forgotten when the server reports the id
/// (dis)connecting (presence is reported after `discover_peers`), because the id may be
/// registered with an identity key later: a Lattice client never sends `lattice-v1` without one,
/// so only a message sent in those few seconds by the id's next, verified owner could be refused.
pub const NO_IDENTITY_KEY_TTL: Duration = Duration::from_secs(30);

/// Senders whose lack of an identity key is remembered at once; the oldest finding goes first.
pub const NO_IDENTITY_KEY_CACHE: usize = 1024;

/// Pages of a `discover` answer that [`crate::MessagingPeer::discover_peers`] reads at most:
/// 100 pages of 1000 ids, far more peers than one server holds, and a bound on what a server
/// that always says "more" can make a client do.
pub const DISCOVER_MAX_PAGES: usize = 100;

/// Peers' fetched keys kept for sending and checking (about 1.2 KiB each). Bounded because any
/// registered peer that messages us adds one; a key that fell out is fetched again.
pub const KEY_CACHE: usize = 1024;

/// Pinned identity keys a [`crate::MemoryKeyStore`] or [`crate::FileKeyStore`] holds (about 100
/// bytes each, in memory and on disk). Bounded because every sender with a valid identity adds one;
/// far more than the contacts of one person. When full, the oldest pin of a peer the user never
/// talked to goes first; a contact's pin is never evicted.
pub const KEY_STORE_MAX_PINS: usize = 4096;

/// Sent messages remembered until their `message_ack` (or `error`) arrives, to turn a server error
/// into a [`crate::PeerEvent::MessageFailed`] naming the message.
pub const OUTSTANDING_MESSAGES: usize = 4096;

/// How long after sending a message its sender may still edit it or delete it for everyone (by
/// the signed `sentAt` of the message and of the edit or delete). One window for both, like
/// Signal's; an edit or a delete signed later is refused
/// ([`crate::RejectReason::OutsideEditWindow`]).
pub const EDIT_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// Messages of this run (sent and received) the library remembers to check edits, deletes,
/// reactions and receipts that refer to them (about 200 bytes each); older ones are looked up in
/// the app's [`crate::MessageLookup`].
pub const RECENT_MESSAGES: usize = 16_384;

/// Request ids remembered as sent by this client (about 100 bytes each), so that an `error` frame
/// naming a request id this client never sent is ignored instead of shown as a server error about
/// something the user did. Far more than are in flight at once; an error for a request older than
/// this many others is ignored too.
pub const ISSUED_REQUESTS: usize = 4096;

/// Largest WebSocket message accepted from the server: exactly the largest frame a server ever
/// sends ([`lattice_protocol::limits::MAX_SERVER_FRAME_BYTES`]: a delivered MLS Commit or
/// Welcome of a big group, up to a `group_commit`'s cap plus the fields the server adds around
/// it). Derived from it, so the two cannot drift apart: a larger server frame would make the
/// client fail the read and reconnect in a loop. tungstenite takes it as a bound only: its read
/// buffer grows to the message being read, it is not allocated up front.
pub const MAX_INCOMING_MESSAGE: usize = lattice_protocol::limits::MAX_SERVER_FRAME_BYTES;

// The read limit holds every frame a server may send, and every frame a client may send (a peer's
// message grows on the way through the server, never shrinks).
const _: () = assert!(MAX_INCOMING_MESSAGE >= lattice_protocol::limits::MAX_SERVER_FRAME_BYTES);
const _: () = assert!(
    lattice_protocol::limits::MAX_SERVER_FRAME_BYTES
        > lattice_protocol::limits::MAX_GROUP_COMMIT_FRAME_BYTES
);

// ---- Groups (MLS) -----------------------------------------------------------------------------

/// Incoming group (`mls`) messages waiting for the group worker. One worker processes them in
/// the server's order; a full queue drops the newest unacknowledged (redelivered after a
/// reconnect). Larger than [`RECEIVE_QUEUE`]: a mailbox drain of a busy group comes at once.
pub const GROUP_RECEIVE_QUEUE: usize = 1024;

/// "Started typing" goes to a group at most this often while the user keeps typing (the pace of
/// 1:1 conversations: the desktop's `TYPING_RESEND`); [`crate::MessagingPeer::group_typing`]
/// drops anything faster.
pub const GROUP_TYPING_RESEND: Duration = Duration::from_secs(3);

/// A member's "is typing" in a group ends by itself this long after its last notice (the 1:1
/// expiry the desktop's page uses): the library raises
/// [`crate::PeerEvent::GroupTyping`] with `started: false` then. A "started" notice signed longer
/// ago than this waited in a mailbox and is not raised at all.
pub const GROUP_TYPING_SHOWN: Duration = Duration::from_secs(6);

/// Typing notices are not sent in groups with more members than this (ids, not devices): each
/// notice is an MLS message fanned out to every device of every member, and "someone is typing"
/// means little in a crowd.
pub const GROUP_TYPING_MAX_MEMBERS: usize = 32;

/// Read receipts and typing notices raised per member of a group per
/// [`GROUP_NOTICE_WINDOW`]; past it a member's further notices are dropped (acknowledged, not
/// raised) until the window ends. An honest client sends a typing notice every
/// [`GROUP_TYPING_RESEND`] and a receipt per burst of reading: far under it.
pub const GROUP_NOTICES_PER_WINDOW: u32 = 10;

/// The window of [`GROUP_NOTICES_PER_WINDOW`].
pub const GROUP_NOTICE_WINDOW: Duration = Duration::from_secs(10);

/// (group, member) pairs remembered for receipts and typing (each of the rate windows, newest
/// read marks and typing members keeps at most this many): bounded whatever members send. Past
/// it, rate windows and typing marks of new members are refused until old ones expire, and the
/// oldest read mark is forgotten.
pub const GROUP_NOTICE_ENTRIES: usize = 4096;

/// The KeyPackage stock this device keeps at the server: topped up to this when it falls under
/// [`lattice_protocol::limits::KEY_PACKAGE_LOW_STOCK`] (one upload, at most
/// [`lattice_protocol::limits::MAX_KEY_PACKAGE_UPLOAD`]).
pub const KEY_PACKAGE_STOCK_TARGET: usize = lattice_protocol::limits::MAX_KEY_PACKAGE_UPLOAD;

/// How often one engine call may stop at a member whose key is not pinned yet (each time the key
/// is fetched and pinned first): a Welcome of a full group names every member once.
pub const GROUP_PIN_FETCHES: usize = lattice_protocol::limits::MAX_GROUP_MEMBERS + 1;

/// How often a change (add, remove, rename, self-update) is made again after losing its epoch
/// to another member's Commit (`STALE_EPOCH`) before giving up with
/// [`crate::PeerError::CommitConflict`].
pub const COMMIT_ATTEMPTS: u32 = 5;

/// Resends of one `group_commit` frame (same `messageId`) when its answer does not come; a
/// resend of a Commit that won is answered as accepted again.
pub const COMMIT_SEND_RETRIES: u32 = 2;

/// How often a `group_commit` is sent again (each time with its own
/// [`COMMIT_SEND_RETRIES`]) while the errors may pass (the connection is down, no answer): a
/// Commit the server may have accepted is not given up quickly, since discarding an accepted
/// Commit leaves this device an epoch behind for good.
pub const COMMIT_SENDS: u32 = 5;

/// Pause between those sends (the reconnect usually needs about this long).
pub const COMMIT_RESEND_DELAY: Duration = Duration::from_secs(1);

/// How long a Commit that lost its epoch waits for the winning Commit to arrive and be processed
/// before it gives up.
pub const COMMIT_CATCH_UP: Duration = Duration::from_secs(30);

/// Default of [`crate::PeerConfig::group_self_update`]: each group gets a self-update Commit
/// (fresh leaf keys: post-compromise healing) this long after this device's last one. A stolen
/// state reads a group for at most this long (plus the time the device is offline).
pub const SELF_UPDATE_INTERVAL: Duration = Duration::from_secs(7 * 24 * 3600);

/// When a scheduled self-update failed (offline, lost races), it is tried again after this.
pub const SELF_UPDATE_RETRY: Duration = Duration::from_secs(600);

/// A device of our id with no KeyPackage at the server yet (linked, not registered since) is
/// tried again after this, doubling each time up to [`DEVICE_KEY_PACKAGE_RETRY_MAX`]: a new
/// device usually registers within seconds of its approval.
pub const DEVICE_KEY_PACKAGE_RETRY: Duration = Duration::from_secs(2);

/// The longest wait between two tries of a device with no KeyPackage.
pub const DEVICE_KEY_PACKAGE_RETRY_MAX: Duration = Duration::from_secs(300);

/// Tries of a device with no KeyPackage before waiting for the next trigger (a registration, a
/// list change, the audit): 10 tries span about 13 minutes with the delays above.
pub const DEVICE_KEY_PACKAGE_ATTEMPTS: u32 = 10;

/// Every this long the groups check every id's device list again, so a contact's removed
/// device loses its leaves even when nothing else brings the new list (docs/mls.md).
pub const DEVICE_AUDIT_INTERVAL: Duration = Duration::from_secs(3600);

/// Commits one device reconciliation pass makes at most (adds and removals); the rest is a new
/// pass, so a device in many groups does not hold the op order for long at a time.
pub const DEVICE_SYNC_COMMITS: usize = 32;

/// Device lists one pass fetches at most (one per id with linked-device leaves in our groups).
pub const DEVICE_SYNC_LIST_FETCHES: usize = 64;

/// Plaintext bytes per chunk of a file sent with [`crate::MessagingPeer::send_file`]. 1 MiB: few
/// requests per file, and little memory per chunk in flight.
pub const FILE_CHUNK_BYTES: u64 = 1024 * 1024;

/// Chunks of one transfer in flight at once (uploads and downloads). The server lets one sender
/// run 4 chunk uploads at once; a transfer holds at most this many chunks in memory (twice: the
/// plaintext and the sealed chunk).
pub const FILE_CHUNKS_IN_FLIGHT: usize = 4;

/// Most chunks of one transfer a [`crate::PeerConfig`] may put in flight
/// ([`crate::PeerConfig::file_chunks_in_flight`]): bounds a transfer's memory at about
/// `2 × 16 × 8 MiB` with the largest chunks.
pub const MAX_FILE_CHUNKS_IN_FLIGHT: usize = 16;

/// Transfers running at once; more wait their turn ([`crate::TransferState::Queued`]).
pub const RUNNING_TRANSFERS: usize = 3;

/// Unfinished transfers (those with a journal) a peer keeps; more are refused.
pub const MAX_TRANSFERS: usize = 256;

/// Finished transfers (completed, failed, cancelled) still listed by
/// [`crate::MessagingPeer::transfers`]; the oldest are forgotten first.
pub const FINISHED_TRANSFERS_LISTED: usize = 64;

/// Shortest interval between two [`crate::PeerEvent::Transfer`] events of one transfer while
/// bytes move (state changes are always reported): at most 10 a second.
pub const TRANSFER_EVENT_INTERVAL: Duration = Duration::from_millis(100);

/// Retries of a transfer after errors that may pass (the network, the server busy), each after a
/// backoff from [`TRANSFER_RETRY_BASE`] doubling up to [`TRANSFER_RETRY_MAX`]; the count starts
/// again whenever a chunk gets through. Then the transfer fails (and can be resumed).
pub const TRANSFER_RETRIES: u32 = 8;

/// First delay before retrying a transfer.
pub const TRANSFER_RETRY_BASE: Duration = Duration::from_millis(500);

/// Longest delay before retrying a transfer.
pub const TRANSFER_RETRY_MAX: Duration = Duration::from_secs(30);

/// How long a download whose chunks are all in waits for the sender's `file-digest` message
/// (sent once the sender's upload completes, so it lags the last chunk by one message) before
/// the attempt counts as failed and is retried ([`TRANSFER_RETRIES`]); a digest arriving after
/// the transfer failed finishes it anyway.
pub const FILE_DIGEST_WAIT: Duration = Duration::from_secs(60);

/// Time for one blob HTTP request (one chunk up or down, or a small JSON call), connection
/// included.
pub const BLOB_REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Time to open the HTTP connection to the blob store.
pub const BLOB_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest JSON answer read from the blob store (the listing of a transfer's present chunks
/// included: at most 32 768 indices).
pub const MAX_BLOB_JSON_BYTES: usize = 512 * 1024;

/// How long a device-linking code (and its run) is valid: exactly as long as the server keeps
/// the new device's link relay ([`lattice_protocol::limits::LINK_RELAY_TTL_SECS`]).
pub const LINK_CODE_TTL: Duration =
    Duration::from_secs(lattice_protocol::limits::LINK_RELAY_TTL_SECS);

/// Linking requests ("a new device asks to join") a first device keeps while waiting for the
/// user to type a code; the oldest is dropped past it, so a stranger flooding hellos fills a
/// small table, never memory.
pub const MAX_PENDING_LINK_REQUESTS: usize = 4;

/// Contacts' pinned keys handed to a newly linked device (contacts first, then the most recent
/// pins): the sealed bundle travels in one `message` frame (256 KiB, base64 inside), and a pin
/// takes at most ~140 bytes of JSON, so 1,000 of them (~140 KB, ~190 KB once sealed and encoded)
/// always fit with the certificate and a full device list.
pub const MAX_LINK_CONTACTS: usize = 1000;
