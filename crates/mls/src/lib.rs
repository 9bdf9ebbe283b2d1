//! Lattice's MLS engine: RFC 9420 groups through `openmls`, with the hybrid post-quantum suite
//! `MLS_128_MLKEM768X25519_AES128GCM_SHA256_Ed25519` (0x004F, provisional), credentials bound to
//! Lattice identity keys, and all state in SQLite.
//!
//! It is the self-contained half of issue 9: no network, no frames. A caller (later
//! `lattice-peer`) moves the bytes it produces (KeyPackages, Commits, Welcomes, application
//! messages) through the delivery service and feeds what arrives back into
//! [`MlsClient::process`] / [`MlsClient::join`]. See `docs/mls.md` for the design.
//!
//! # Module map
//! - [`limits`]: the suite and every constant, each with its reason.
//! - [`MlsError`] (`error`): the one error type.
//! - [`IdentityPins`], [`MemberIdentity`] (`identity`): the binding of MLS credentials to
//!   Lattice identity keys, and its verification against the caller's pinned keys.
//! - [`MlsStore`] (`store`): the SQLite store (openmls' tables plus ours), one transaction per
//!   operation.
//! - [`GroupId`] (`group_id`): a group's id.
//! - [`OutgoingCommit`], [`Member`], [`GroupEvent`] (`events`): values handed back.
//! - [`MlsClient`], [`ValidatedKeyPackage`] (`client`): one device, its KeyPackages and groups.
//!
//! # Pending commits
//! A Commit this client makes is not applied until the delivery service rules on it:
//! [`MlsClient::confirm_commit`] when it was accepted for the epoch, or
//! [`MlsClient::discard_commit`] when another member's Commit won (then process the winner).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod client;
mod error;
mod events;
mod group_id;
mod identity;
pub mod limits;
mod store;

pub use client::{MlsClient, ValidatedKeyPackage};
pub use error::MlsError;
pub use events::{GroupEvent, Member, OutgoingCommit};
pub use group_id::GroupId;
pub use identity::{make_device_credential, DeviceCredential, IdentityPins, MemberIdentity};
pub use store::MlsStore;
