//! Every server-side limit and timeout, with its reason. `Config` takes its defaults from here; the
//! protocol's own limits (frame size, id length) live in [`lattice_protocol::limits`].

use std::time::Duration;

/// Frames a session may have waiting to be written. 256 frames of ~3 KiB is under 1 MiB per
/// connection at worst; a peer that falls that far behind is handled by the slow-consumer policy
/// (see `session`), not by buffering more.
pub const OUTBOUND_QUEUE: usize = 256;

/// Largest WebSocket message the transport reads at all: the largest frame the protocol allows
/// (a `group_commit`, [`lattice_protocol::limits::MAX_GROUP_COMMIT_FRAME_BYTES`]) plus 256 KiB, so
/// a frame somewhat over its type's limit still gets an `error` frame naming its `requestId`
/// and the connection lives on; beyond it the transport closes the connection (1009) without
/// buffering the rest. Any message over the ordinary cap is read only within
/// [`LARGE_MESSAGES_IN_FLIGHT`].
pub const MAX_TRANSPORT_MESSAGE: usize =
    lattice_protocol::limits::MAX_GROUP_COMMIT_FRAME_BYTES + 256 * 1024;

/// Messages over the ordinary frame cap (256 KiB; in practice `group_commit` frames of big MLS
/// groups) read at once on the whole server, at most one per connection. Each holds up to
/// [`MAX_TRANSPORT_MESSAGE`] (1.25 MiB) while it is read and handled, plus the copies its
/// handler makes (the decoded Commit and Welcome, the frames stored for the members: about three
/// times the frame), so 32 bound that memory near 160 MiB however many connections send them. A
/// connection that finds none free is not read until one is (backpressure on it alone); growing a
/// group is one such frame per add, so 32 is far more than honest clients use at once.
pub const LARGE_MESSAGES_IN_FLIGHT: usize = 32;

/// Bytes a connection reads from its socket at a time (more when one frame needs more). The read
/// buffer exists only while there is something to read: it is let go whenever the socket has
/// nothing more to give, so an idle connection holds none (`ws`). Smaller reads cost throughput:
/// with 2 KiB or 1 KiB every ~3 KB message frame takes two or three reads (docs/scaling.md).
pub const READ_CHUNK: usize = 4 * 1024;

/// Bytes of frames gathered before they are written to the socket (a flush writes the rest).
/// Writing every frame on its own costs a `sendto` each, and a relay then spends most of its time
/// in the kernel; batching replies and queued deliveries into one write is where the throughput
/// comes from. The buffer is let go once flushed, so an idle connection holds none.
/// 8 KiB (about three forwarded messages per write) measured as fast as 16 KiB.
pub const WRITE_BUFFER: usize = 8 * 1024;

/// Most bytes waiting to be written on one connection before a frame is refused: the batch
/// ([`WRITE_BUFFER`]) plus the largest frames (a delivered Commit or Welcome of a big group is up
/// to [`lattice_protocol::limits::MAX_SERVER_FRAME_BYTES`]). A flush empties it; a peer that does
/// not read is closed by [`WRITE_TIMEOUT`] long before this could be reached twice. It is a
/// bound, not an allocation: the buffer grows to what is queued and is let go once flushed.
pub const MAX_WRITE_BUFFER: usize = lattice_protocol::limits::MAX_SERVER_FRAME_BYTES * 2;

/// TLS handshakes in progress at once (`--tls-cert`); more connections wait in the listen backlog.
pub const MAX_TLS_HANDSHAKES: usize = 256;

/// A TLS handshake that takes longer than this is dropped: a socket that sends nothing must not
/// hold a handshake slot.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A socket write that takes longer than this means the peer stopped reading: close it.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the server pings every connection.
pub const PING_INTERVAL: Duration = Duration::from_secs(20);

/// A connection that sent nothing (not even a pong) for this long is dead: close it.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A connection that has not registered within this time is closed: sockets are not free.
pub const REGISTER_TIMEOUT: Duration = Duration::from_secs(30);

/// Default cap on simultaneous connections (each costs a task, a queue and socket buffers).
pub const MAX_CONNECTIONS: usize = 20_000;

/// Default per-connection rate limit, frames per second (burst: twice this). Generous for a person
/// typing, low enough that one socket cannot monopolise a core. A connection over its rate is
/// paced, not refused: the server stops reading that socket until the bucket refills, so the
/// sender's own TCP window pushes back and nothing it sent is dropped.
pub const RATE_LIMIT: u32 = 200;

/// Invalid frames tolerated from one connection within [`INVALID_WINDOW`]; past it the connection is
/// closed with 1008 (policy violation). Each invalid frame before that gets an `error`. Sending
/// fast is not invalid: the rate limit paces instead.
pub const MAX_INVALID_FRAMES: u32 = 50;

/// Window for [`MAX_INVALID_FRAMES`].
pub const INVALID_WINDOW: Duration = Duration::from_secs(10);

/// Messages kept for one peer: its mailbox plus the live messages it has not acknowledged yet
/// (those may come back to the mailbox when its connection drops, so they count from the moment
/// they are accepted). Past it senders get `MAILBOX_FULL`.
pub const MAILBOX_QUOTA: u32 = 1000;

/// Bytes kept for one peer, counted like [`MAILBOX_QUOTA`] (frame sizes). 1000 ordinary messages
/// (~3 KiB sealed) take 3 MiB; 16 MiB leaves room for long texts while one recipient can never
/// cost the server's disk more than this, whatever the frames' size.
pub const MAILBOX_BYTES: u64 = 16 * 1024 * 1024;

/// Messages one sender may have waiting for one recipient (and the same share of
/// [`MAILBOX_BYTES`]): a quarter, so one sender (or one sender per id an attacker registers) can
/// never take a recipient's whole mailbox; at least four must fill it.
pub const MAILBOX_SENDER_QUOTA: u32 = 250;

/// How long an undelivered message is kept for an offline peer.
pub const MAILBOX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Mailbox entries sent per batch when a peer comes online (the rest follow as the queue drains).
pub const MAILBOX_BATCH: usize = 64;

/// Default time after which the binding of a verified id that has not registered since is deleted
/// (`--binding-ttl`): 180 days. Long enough that a person who is away for a season keeps their id;
/// short enough that churned and abandoned ids do not grow the directory forever. Its row is
/// ~1.4 KB (the ML-KEM key dominates).
pub const BINDING_TTL: Duration = Duration::from_secs(180 * 24 * 3600);

/// Default number of new verified ids one source address (IPv6: one /64) may mint per
/// [`NEW_ID_WINDOW`] (`--new-ids-per-ip`). A person creates a handful of identities; a household
/// or an office behind NAT some dozens in a day. Re-registering an existing id never counts.
pub const NEW_IDS_PER_IP: u32 = 30;

/// The window of [`NEW_IDS_PER_IP`]: the allowance refills evenly over an hour.
pub const NEW_ID_WINDOW: Duration = Duration::from_secs(3600);

/// Source addresses whose new-id allowance is remembered at once (memory bound: ~64 bytes each).
/// When full, entries whose allowance has refilled are forgotten; if none has, the limiter lets
/// the registration through (the total cap below still bounds the disk).
pub const NEW_ID_TRACKED_SOURCES: usize = 65_536;

/// Default cap on bindings in the directory (`--max-bindings`): one million rows is ~1.4 GB of
/// disk, the most a default server lets strangers take. Past it new ids are refused with
/// `TOO_MANY_REGISTRATIONS`; existing ids keep working.
pub const MAX_BINDINGS: u64 = 1_000_000;

/// How often the sweeper checkpoints the WAL with TRUNCATE and expires unused bindings: every
/// minute keeps the WAL file small under constant load without costing anything measurable.
pub const STORE_MAINTENANCE_EVERY: Duration = Duration::from_secs(60);

/// SQLite's `journal_size_limit`: after a checkpoint the WAL file is truncated to at most this, so
/// a burst does not leave a large file behind.
pub const WAL_SIZE_LIMIT: u64 = 8 * 1024 * 1024;

/// SQLite's `wal_autocheckpoint`, in pages (4 KiB): a checkpoint runs whenever the WAL grows past
/// ~4 MiB, SQLite's default, written out here so the bound is explicit.
pub const WAL_AUTOCHECKPOINT_PAGES: u32 = 1000;

/// Default time a message sent live to an online verified recipient is held in memory waiting for
/// the recipient's `ack` before it is committed to the mailbox and its sender hears `queued`
/// (`--ack-wait`; 0 commits every such message before answering, the path before end-to-end
/// `delivered`). A client that is reading acks within milliseconds; a recipient that must first
/// fetch a new sender's key takes a round trip more. 3 s plus the reaper's period
/// ([`IN_FLIGHT_REAP_DIVISOR`]) and one group commit stays well below `lattice-peer`'s request
/// timeout for a send (10 s), so a sender hears `queued` before it gives up and resends.
pub const ACK_WAIT: Duration = Duration::from_secs(3);

/// Longest `--ack-wait` accepted: below `lattice-peer`'s 10 s request timeout with room for the
/// reaper's period and a commit.
pub const MAX_ACK_WAIT: Duration = Duration::from_secs(6);

/// The in-flight reaper looks for held messages whose ack wait ran out this many times per ack
/// wait (every 750 ms with the default), so a message waits at most 1.25 × `--ack-wait`.
pub const IN_FLIGHT_REAP_DIVISOR: u32 = 4;

/// Messages held for an `ack` per recipient connection, and answers one sender connection may be
/// owed at once. Past either, a message takes the durable path (committed before its answer), so
/// the bound costs speed, never a message. As many as the outbound queue: a recipient that keeps
/// up never has more unacknowledged.
pub const IN_FLIGHT_PER_CONNECTION: usize = OUTBOUND_QUEUE;

/// Bytes of held frames in the whole process (the frames are shared with the recipients' queues,
/// so this is memory those would hold anyway). 64 MiB is ~20,000 ordinary messages waiting for
/// acks; past it messages take the durable path.
pub const IN_FLIGHT_BYTES: usize = 64 * 1024 * 1024;

/// Answers a node of several may owe its senders at once for messages stored for an online
/// verified recipient and not acknowledged yet ([`crate::inflight::Awaiting`]; the frames are in
/// Redis, an entry is ~200 bytes, so ~13 MiB at most). Past it a sender hears `queued` at once,
/// as it did before end-to-end `delivered` across nodes: the bound costs the early answer, never a
/// message.
pub const AWAITING_PER_NODE: usize = 65_536;

/// Commit requests waiting for the mailbox writer ([`crate::writer`]) at most; a session whose
/// request finds the queue full waits (backpressure). Each session has at most one request in
/// flight, so the queue fills only with more sessions committing at once than this.
pub const WRITER_QUEUE: usize = 1024;

/// Commit requests (one per session read batch) the mailbox writer puts in one transaction at
/// most.
pub const WRITER_GROUP: usize = 256;

/// Bindings expired per sweep at most (one short transaction each time; the rest next minute).
pub const BINDING_EXPIRY_BATCH: usize = 1000;

/// Default cap on registrations held at once by one source address (an IPv6 address counts by its
/// /64, what one subscriber usually gets). Enough for a household or an office behind NAT; with
/// it, filling `discover` or the presence fan-out takes thousands of addresses, not one script.
pub const MAX_REGISTRATIONS_PER_IP: usize = 64;

/// IPv6 addresses are grouped by this prefix length for [`MAX_REGISTRATIONS_PER_IP`]: a single
/// host typically controls a whole /64.
pub const IPV6_GROUP_PREFIX: u32 = 64;

/// Shortest admin token accepted: 32 characters of a random token (e.g. base64 of 24+ random
/// bytes) cannot be guessed online, even at the rate an attacker could try before the backoff.
pub const MIN_ADMIN_TOKEN_LEN: usize = 32;

/// Random bytes in a token generated by `--admin-token-file` (43 characters of base64url).
pub const GENERATED_ADMIN_TOKEN_BYTES: usize = 32;

/// Failed admin authentications one source address may make before the backoff starts: enough
/// for a typo or two.
pub const ADMIN_FREE_FAILURES: u32 = 5;

/// First backoff after [`ADMIN_FREE_FAILURES`]; it doubles with every further failure.
pub const ADMIN_BACKOFF_BASE: Duration = Duration::from_secs(1);

/// Longest admin backoff: guessing stays hopeless, and the operator is locked out at most this long.
pub const ADMIN_BACKOFF_MAX: Duration = Duration::from_secs(15 * 60);

/// Source addresses whose admin failures are remembered at once (memory bound; when full, the
/// entries no longer blocked are forgotten first).
pub const ADMIN_TRACKED_SOURCES: usize = 4096;

/// Demo conversations (`debug_question`) one peer may have open at once. The demo is a tour, not a
/// workload: two is enough for a person, and it stops one connection from creating thousands.
pub const MAX_OPEN_DEMOS_PER_PEER: usize = 2;

/// How long a demo question waits for its answer (the demo is interactive).
pub const DEMO_QUESTION_TIMEOUT: Duration = Duration::from_secs(120);

/// Longest life of one demo conversation, whatever its answers: "start over" cannot keep it alive.
pub const DEMO_LIFETIME: Duration = Duration::from_secs(300);

/// How long a server question waits for its answer by default.
pub const QUESTION_TIMEOUT: Duration = Duration::from_secs(300);

/// How long a link relay stays connected (`--link-relay-ttl`): as long as a linking code is
/// valid, [`lattice_protocol::limits::LINK_RELAY_TTL_SECS`].
pub const LINK_RELAY_TTL: Duration =
    Duration::from_secs(lattice_protocol::limits::LINK_RELAY_TTL_SECS);

/// Longest an admin caller may ask the server to wait for an answer.
pub const MAX_ASK_TIMEOUT: Duration = Duration::from_secs(3600);

/// Questions pending at once for one peer; more gets the admin caller a 429.
pub const MAX_PENDING_QUESTIONS_PER_PEER: usize = 16;

/// How often the housekeeping task runs (pings, idle checks, expiry of questions and mail).
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

/// How long a graceful shutdown waits for sessions to close before it stops waiting.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Largest admin API request body.
pub const MAX_ADMIN_BODY: usize = 64 * 1024;

/// MLS groups one id may be a member of (the delivery service refuses a Commit that adds a member
/// past it, or creates a group for a creator past it: `QUOTA_EXCEEDED`). With it the groups table
/// is bounded by the directory: at most this many memberships per bound id. A person is in dozens of groups; 500 keeps one id's rows bounded
/// and stops a stranger from adding it to groups without end. The group size itself is
/// [`lattice_protocol::limits::MAX_GROUP_MEMBERS`].
pub const MAX_GROUPS_PER_ID: u32 = 500;

/// Default total bytes the blob store reserves for all transfers (declared sizes): 50 GiB.
pub const BLOB_QUOTA: u64 = 50 * 1024 * 1024 * 1024;

/// Default bytes one sender's live transfers may reserve: 5 GiB.
pub const BLOB_SENDER_QUOTA: u64 = 5 * 1024 * 1024 * 1024;

/// Default lifetime of a blob transfer; its bytes are deleted after it: 7 days.
pub const BLOB_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Live transfers one sender may hold (bounds their count even when they are empty).
pub const BLOB_TRANSFERS_PER_SENDER: usize = 256;

/// Chunk uploads one sender may run at once; more wait their turn (only that sender slows down).
pub const BLOB_UPLOADS_PER_SENDER: usize = 4;

/// How long a `blob_token` stays valid.
pub const BLOB_TOKEN_TTL: Duration = Duration::from_secs(300);

/// Random bytes in a blob token, a transfer id and a capability.
pub const BLOB_SECRET_BYTES: usize = 32;

/// Random bytes in a transfer id (hex in URLs).
pub const BLOB_ID_BYTES: usize = 16;

/// Largest JSON body of `POST /blobs`.
pub const MAX_BLOB_CREATE_BODY: usize = 4 * 1024;

/// Chunk uploads running at once on the whole server (each holds up to a 1 MiB write batch);
/// more wait their turn.
pub const BLOB_UPLOADS_TOTAL: usize = 64;

/// Chunk downloads running at once on the whole server (each holds one chunk, at most 8 MiB, in
/// memory); more wait their turn.
pub const BLOB_DOWNLOADS_TOTAL: usize = 32;

/// A chunk upload whose body sends nothing for this long is cut off (`TRUNCATED`), so a stalled
/// client cannot hold an upload slot.
pub const BLOB_BODY_IDLE: Duration = Duration::from_secs(30);

/// How long a download of a chunk that is not uploaded yet waits for it (the recipient of a
/// pipelined file fetches chunks while the sender is still uploading them); then it is answered
/// `CHUNK_MISSING` and the client asks again. Well under the clients' request timeout.
pub const BLOB_CHUNK_WAIT: Duration = Duration::from_secs(15);

/// Downloads waiting for a chunk at once on the whole server; past it a download of a missing
/// chunk is answered `CHUNK_MISSING` at once (the client backs off and asks again).
pub const BLOB_CHUNK_WAITERS: usize = 256;

/// Longest `clientRef` of `POST /blobs` (the sender's idempotency key; `A-Z a-z 0-9 - _`).
pub const MAX_BLOB_CLIENT_REF: usize = 64;

/// On a node of several, how often a download waiting for a chunk looks in Redis whether it
/// landed through another node (one that lands through this node wakes it at once). With at most
/// [`BLOB_CHUNK_WAITERS`] waiting, a node makes at most 1,024 such small reads a second.
pub const BLOB_REMOTE_POLL: Duration = Duration::from_millis(250);

/// On a node of several, how long the node that claimed a transfer's deletion has to remove its
/// bytes; a node killed before it finished leaves the claim, which another node's sweeper takes
/// over once this has passed.
pub const BLOB_DELETE_LEASE: Duration = Duration::from_secs(300);

/// Expired transfers (and unfinished deletions) one sweep of a node of several claims at most.
pub const BLOB_EXPIRY_BATCH: usize = 256;
