//! # lattice-peer
//!
//! The Lattice client: [`MessagingPeer`], the async Rust form of the original MessagingPeer. It
//! speaks the Lattice wire protocol (`docs/protocol.md`) to a signaling server over `ws://` or
//! `wss://`, registers with a proven identity, discovers peers and exchanges end-to-end encrypted
//! messages: `lattice-v1` (signed, bound to sender, recipient and message id) with Lattice peers,
//! `ml-kem-aes` with original clients (delivered flagged unverified).
//!
//! ```no_run
//! use lattice_crypto::Identity;
//! use lattice_peer::{MessagingPeer, PeerConfig, PeerEvent};
//! use lattice_protocol::ClientId;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let identity = Identity::generate(&mut rand_core::OsRng);
//! let config = PeerConfig::new("ws://127.0.0.1:3005", ClientId::new("alice")?, identity);
//! let peer = MessagingPeer::new(config)?;
//! peer.connect().await?;
//! let mut events = peer.events();
//! while let Some(event) = events.next().await {
//!     if let PeerEvent::Message(m) = event {
//!         peer.send_message(&m.from, &format!("you said: {}", m.text)).await?;
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! ## How it works
//! Components that own their state, with calls going down and events coming up (the flow is
//! drawn in `docs/architecture.md`; no module imports one that imports it back). The handle
//! (`peer`) composes them and is a cheap clone. A supervisor (`connection`) dials, registers, runs
//! one connection and backs off exponentially, then flushes what was queued while disconnected; it
//! stops instead when another connection of the same identity replaced ours
//! ([`PeerError::Replaced`]). Every incoming frame goes through the `router`: answers to
//! `requests` (matched by `requestId` first, then by type and filter), messages to the `inbox`,
//! verdicts on sent messages to the `outbox`. Incoming messages are opened and checked on a
//! separate task, so a key lookup never stalls the socket; only messages that pass every check
//! reach [`PeerEvent::Message`].
//!
//! ## Modules
//! - `peer`: [`MessagingPeer`], the public handle.
//! - `connection`: one connection (reader, writer lanes) and the reconnect supervisor; never
//!   imports the handle.
//! - `router`: incoming frames to requests, inbox, outbox, trust and events.
//! - `requests`: request ids, retries and timeouts over `pending`, the table of waiters
//!   ([`WaitOptions`], [`ErrorAction`]).
//! - `link`: the current socket's epoch, the control and normal lanes, the connection state,
//!   acks, keepalive.
//! - `linking`: linking a new device to an id by a short code ([`MessagingPeer::start_linking`],
//!   [`MessagingPeer::enter_link_code`], [`MessagingPeer::approve_link`], [`LinkEvent`]).
//! - `outbox`: sealing outgoing messages; messages awaiting the server's verdict.
//! - `inbox`: opening and checking incoming messages; held messages; the replay guard.
//! - `groups`: MLS groups (RFC 9420 through `lattice-mls`) over the server's delivery service:
//!   KeyPackages, create/invite/remove/leave/rename, group messages, ordered processing acked
//!   after the state is stored, retries of Commits that lost their epoch, scheduled healing.
//! - `files`: file transfers ([`MessagingPeer::send_file`], [`MessagingPeer::download_file`],
//!   pause/resume/cancel, [`PeerEvent::Transfer`]): chunks sealed with
//!   `lattice_crypto::file_chunk`, the server's blob store over HTTP, journals in
//!   [`PeerConfig::transfers_dir`] from which transfers resume after a restart.
//! - `trust`: fetching peer keys, `keySignature` checks, TOFU and held-back key changes.
//! - `sync`: the one lock policy (a poisoned lock is recovered, never skipped). `wire`: base64,
//!   fresh ids, answer errors.
//! - [`config`]: [`PeerConfig`], [`Backoff`], [`Timeouts`], [`TlsOptions`].
//! - [`defaults`]: every limit and timeout, with its reason.
//! - [`content`]: [`Content`], the content layer (text, reply, edit, delete, reaction, receipt,
//!   typing, file, unsupported), its codec and bounds.
//! - [`history`]: checking edits, deletes, reactions and receipts against the messages they
//!   refer to; the [`MessageLookup`] trait the app implements over its history.
//! - [`events`]: [`PeerEvent`], [`ContentUpdate`], [`ConnectionState`], [`IncomingMessage`], [`IncomingQuestion`],
//!   [`HandlerHandle`], [`EventStream`] and the lag policy.
//! - [`keys`]: the [`KeyStore`] trait (TOFU pinning), [`MemoryKeyStore`], [`FileKeyStore`],
//!   [`PeerKey`].
//! - `held`: messages held back for a reason that may pass, and the refusal tally.
//! - [`replay`]: replay detection, the freshness window on `sentAt`, the [`ReplayStore`] trait
//!   (per-sender high-water marks) and [`MemoryReplayStore`].
//! - `transport`: URL checks, rustls (platform roots plus an optional extra CA), dialling.
//! - [`identity_file`]: an identity kept in an owner-only file (0600).
//! - [`device_file`]: a linked device kept in an owner-only file (0600), checked on loading.
//! - [`sanitize`]: the one sanitiser for network text shown in a terminal or a log.
//! - [`error`]: [`PeerError`], [`RejectReason`].

#![forbid(unsafe_code)]
#![deny(missing_docs)]

#[cfg(feature = "bench")]
#[doc(hidden)]
pub mod bench_internals;
pub mod config;
mod connection;
pub mod content;
pub mod defaults;
pub mod device_file;
pub mod error;
pub mod events;
mod files;
mod groups;
mod held;
pub mod history;
pub mod identity_file;
mod inbox;
pub mod keys;
mod link;
mod linking;
mod outbox;
mod peer;
mod pending;
pub mod replay;
mod requests;
mod router;
pub mod sanitize;
mod sync;
#[cfg(test)]
mod testkit;
mod transport;
mod trust;
mod wire;

pub use config::{Backoff, Credentials, PeerConfig, Timeouts, TlsOptions};
pub use content::{Content, ContentError, FileOffer, MessageRef, ReactionAction, Thumbnail};
pub use error::{FileRejection, PeerError, RejectReason};
pub use events::{
    Algorithm, Change, ConnectionState, ContentUpdate, Conversation, ConversationNotice,
    EventStream, GroupChange, GroupMessage, HandlerHandle, IncomingMessage, IncomingQuestion,
    LinkEvent, LinkFailure, OwnMessage, PeerEvent, TransferDirection, TransferId, TransferProgress,
    TransferState,
};
pub use files::FileMeta;
pub use groups::{GroupInfo, GroupMember};
pub use history::{KnownMessage, MessageLookup, NoHistory};
pub use keys::{FileKeyStore, KeyStore, MemoryKeyStore, PeerKey};
pub use lattice_mls::GroupId;
pub use linking::{LinkedDevice, LINK_ALGORITHM};
pub use outbox::SentMessage;
pub use peer::MessagingPeer;
pub use pending::{ErrorAction, ErrorHandler, Filter, WaitOptions};
pub use replay::{MemoryReplayStore, ReplayStore};
