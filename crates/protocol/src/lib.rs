//! # lattice-protocol
//!
//! The Lattice wire protocol, version 1, as serde types: what the signaling server and every client
//! exchange over a WebSocket. The contract is `docs/protocol.md` in the repository; it is a strict
//! superset of the original MessagingPeer protocol, so every frame keeps the original JSON shape.
//! This crate does no I/O: callers hand it text and take frames back.
//!
//! ## Protocol flow
//! ```text
//! client                                   server
//!   | -- challenge {} ----------------------> |   (ext, for a verified registration)
//!   | <------------------- challenge {nonce} -- |
//!   | -- register {clientId, publicKey, ..} -> |
//!   | <---- register {success, clientId, ..} -- |
//!   | -- discover {} -----------------------> |
//!   | <----------- discover {peers: [...]} --- |   and from now on peer_connected/peer_disconnected
//!   | -- message {targetId, message} -------> | -- message {message, fromId, timestamp} --> target
//!   | <------------ server_question {...} --- |
//!   | -- peer_response {questionId, ..} ----> |
//!   | -- key_package_upload {keyPackages} --> |   (ext: the MLS delivery service)
//!   | -- key_package_fetch {clientId} ------> |   -> one KeyPackage of clientId
//!   | -- group_commit {groupId, epoch, ..} -> | -- message {mls commit/welcome} --> members
//!   | -- group_message {groupId, message} --> | -- message {mls message} ---------> members
//! ```
//!
//! ## Modules
//! - [`ids`]: validated id newtypes ([`ClientId`], [`MessageId`], [`RequestId`], ...).
//! - [`limits`]: every size limit of the protocol, with its reason (key lengths included: the
//!   crypto crate takes them from here).
//! - [`close_code`]: the WebSocket close codes the server sends and clients act on.
//! - [`frames`]: [`ClientFrame`] (client → server) and [`ServerFrame`] (server → client) and their payloads.
//! - [`codec`]: [`decode_client`], [`decode_server`] and [`encode`]; one [`DecodeError`] that maps to
//!   the protocol's `errorType`.
//! - [`envelope`]: the sealed [`Envelope`] object, the `lattice-v1` inner plaintext, and the
//!   [`MlsEnvelope`] the delivery service wraps group messages in.
//! - [`error_type`]: the [`ErrorType`] codes of `error` frames.
//! - [`fast`]: the relay's hot path: `message` frames decoded without copying the envelope, and
//!   `message`/`message_ack` encoded at their exact size.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod close_code;
pub mod codec;
pub mod envelope;
pub mod error_type;
pub mod fast;
pub mod frames;
pub mod ids;
pub mod limits;
mod public_key;
mod time_fmt;

pub use codec::{decode_client, decode_server, encode, DecodeError, Frame};
pub use envelope::{Envelope, InnerMessage, MlsEnvelope, MlsKind, LINK_ALGORITHM, MLS_ALGORITHM};
pub use error_type::ErrorType;
pub use frames::*;
pub use ids::{
    ClientId, ConversationId, DeviceId, GroupId, IdError, MessageId, QuestionId, RequestId,
    PRIMARY_DEVICE,
};
pub use public_key::PublicKeyField;
pub use time_fmt::iso8601;
