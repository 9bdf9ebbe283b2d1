//! The session's part of linking devices (docs/mls.md, *Multi-device*), on the **first device**
//! (the app holding the identity key): [`Devices`] is the cheap handle the messenger calls the
//! library through (the signed device list, remove, the code typed, approve or refuse), and
//! [`Ctx::on_link`] turns the library's [`LinkEvent`]s into [`SessionEvent::Link`] views.
//!
//! On a **linked device**, [`Ctx::on_own_message`] stores what another device of this id sent
//! as our own outgoing message, with the device it came from. A **new device** links from the
//! library's unlisted relay peer (`PeerConfig::for_linking`, run by the messenger's `linking`
//! before any session exists).
//!
//! The protocol is the library's: the new device shows a code; a request arrives here; the
//! person types the code; the library checks it (key confirmation) and only then shows the new
//! device's fingerprint; nothing is linked before the person approves.

use std::collections::VecDeque;
use std::sync::Arc;

use base64::Engine as _;
use lattice_crypto::device_link::LinkCode;
use lattice_crypto::IdentityPublicKey;
use lattice_peer::{Content, Conversation, LinkEvent, LinkFailure, MessagingPeer, OwnMessage};
use lattice_protocol::{ClientId, DeviceEntry, DeviceId};

use super::{group_key, Ctx, SessionError};
use crate::clock::now_ms;
use crate::contract::{ErrorKind, LinkStage};
use crate::events::SessionEvent;
use crate::storage::devices::{OwnDirect, PRIMARY_DEVICE};
use crate::storage::groups::{GroupLineKind, NewGroupLine};
use crate::views::{DeviceView, LinkView, Notice};

/// Why a code from the page was refused before it reached the library.
pub const NOT_A_CODE: &str =
    "That is not a linking code: it has 8 letters and digits, as the new device shows it.";

/// New devices we sent a code to and whose answer is still out. The library reports a new
/// device that rejects our code as an abort (`Refused`), the same as a refusal by the person;
/// for a run whose code we sent and that never reached the comparison, that abort means the
/// code was wrong, and the person is told so. At most the library's pending requests are kept
/// (the oldest goes first), which is all that can be answered.
#[derive(Debug, Default)]
pub(super) struct CodesSent(VecDeque<ClientId>);

impl CodesSent {
    fn note(&mut self, relay: &ClientId) {
        self.0.retain(|r| r != relay);
        if self.0.len() >= lattice_peer::defaults::MAX_PENDING_LINK_REQUESTS {
            self.0.pop_front();
        }
        self.0.push_back(relay.clone());
    }

    /// Forgets `relay`; whether it was there.
    fn take(&mut self, relay: &ClientId) -> bool {
        let before = self.0.len();
        self.0.retain(|r| r != relay);
        self.0.len() != before
    }
}

/// A cheap handle on the peer's device calls, taken without the session's lock (see
/// [`super::Session::devices`]).
#[derive(Clone)]
pub struct Devices(Arc<Ctx>);

impl std::fmt::Debug for Devices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Devices").finish_non_exhaustive()
    }
}

impl Devices {
    pub(super) fn new(ctx: Arc<Ctx>) -> Self {
        Self(ctx)
    }

    fn peer(&self) -> &MessagingPeer {
        &self.0.peer
    }

    /// This id's linked devices, as its signed device list names them (the list is checked
    /// against our identity key by the library).
    ///
    /// # Errors
    /// [`SessionError::Peer`].
    pub async fn list(&self) -> Result<Vec<DeviceView>, SessionError> {
        Ok(self
            .peer()
            .devices()
            .await?
            .iter()
            .map(device_view)
            .collect())
    }

    /// Takes `device` off the list: the server closes its connection and drops its mailbox.
    ///
    /// # Errors
    /// [`SessionError::Peer`] (`InvalidArgument` when it is not on the list).
    pub async fn remove(&self, device: &DeviceId) -> Result<(), SessionError> {
        self.peer().remove_device(device).await?;
        tracing::info!(device = %device, "device removed from the list");
        Ok(())
    }

    /// The code the person typed, for the newest new device that asked; returns its relay id.
    /// Whether the code was right comes later as a [`LinkStage::AwaitingApproval`] or a
    /// [`LinkStage::Failed`] event.
    ///
    /// # Errors
    /// [`SessionError::Linking`] ([`NOT_A_CODE`]) for text that is no code; otherwise
    /// [`SessionError::Peer`] (`InvalidArgument` when no new device waits for a code).
    pub fn enter_code(&self, code: &str) -> Result<ClientId, SessionError> {
        // Checked here too, so the refusal is a sentence for people; the library parses it
        // again (case-insensitive, spaces and dashes ignored).
        LinkCode::parse(code).map_err(|_| SessionError::Linking(NOT_A_CODE))?;
        let relay = self.peer().enter_link_code(code)?;
        lock_codes(&self.0).note(&relay);
        Ok(relay)
    }

    /// Waits (at most `wait`) until connected, then makes sure this device's KeyPackages are at
    /// the server (the library uploads them after each registration in the background; this
    /// waits for that upload). Logs and returns on any failure.
    pub async fn reachable(&self, wait: std::time::Duration) {
        let peer = self.peer();
        let mut state = peer.watch_connection_state();
        let connected = tokio::time::timeout(
            wait,
            state.wait_for(|s| *s == lattice_peer::ConnectionState::Connected),
        )
        .await
        .is_ok_and(|r| r.is_ok());
        if !connected {
            tracing::debug!("not connected yet; KeyPackages go up once it is");
            return;
        }
        match tokio::time::timeout(wait, peer.publish_key_packages()).await {
            Ok(Ok(stock)) => tracing::debug!(stock, "KeyPackages at the server"),
            Ok(Err(e)) => tracing::warn!(error = %e, "KeyPackages not uploaded"),
            Err(_) => tracing::warn!("KeyPackage upload timed out"),
        }
    }

    /// Approves (or refuses) the new device behind `relay`, whose fingerprint the person
    /// compared.
    ///
    /// # Errors
    /// [`SessionError::Peer`] (`InvalidArgument` when it awaits no approval, the run expired
    /// or the id has the most devices already).
    pub async fn answer(&self, relay: &ClientId, approve: bool) -> Result<(), SessionError> {
        self.peer().approve_link(relay, approve).await?;
        Ok(())
    }
}

/// A list entry as the page shows it: the device's name and the fingerprint of its key (an
/// entry whose key does not decode, which a list signed by our own key never has, shows none).
fn device_view(entry: &DeviceEntry) -> DeviceView {
    let fingerprint = base64::engine::general_purpose::STANDARD
        .decode(&entry.device_key)
        .ok()
        .and_then(|b| IdentityPublicKey::from_bytes(&b).ok())
        .map(|k| k.fingerprint().to_string());
    DeviceView {
        device_id: entry.device_id.as_str().to_owned(),
        fingerprint,
    }
}

/// The sentence for a linking run that ended without a device.
pub fn failure_text(reason: LinkFailure) -> &'static str {
    match reason {
        LinkFailure::WrongCode => {
            "The code did not match the one the new device shows. That code is used up: start \
             linking again on the new device for a new one."
        }
        LinkFailure::Refused => "The new device was refused; nothing was linked.",
        LinkFailure::Expired => {
            "The linking code expired (it is valid for 5 minutes). Start linking again on the \
             new device."
        }
        _ => "The new device sent something unexpected; nothing was linked. Start again.",
    }
}

/// A [`LinkEvent`] as the page shows it, if it is one the first device shows.
pub fn link_view(event: &LinkEvent) -> Option<LinkView> {
    let view = |stage, relay: Option<&ClientId>, device: Option<&DeviceId>| LinkView {
        stage,
        relay_id: relay.map(|r| r.as_str().to_owned()),
        device_id: device.map(|d| d.as_str().to_owned()),
        fingerprint: None,
        message: None,
    };
    Some(match event {
        LinkEvent::Request {
            relay_id,
            device_id,
        } => view(LinkStage::Request, Some(relay_id), Some(device_id)),
        LinkEvent::AwaitingApproval {
            relay_id,
            device_id,
            fingerprint,
        } => LinkView {
            fingerprint: Some(fingerprint.to_string()),
            ..view(LinkStage::AwaitingApproval, Some(relay_id), Some(device_id))
        },
        LinkEvent::Approved { device_id } => view(LinkStage::Approved, None, Some(device_id)),
        LinkEvent::Failed { with, reason } => LinkView {
            message: Some(failure_text(*reason).to_owned()),
            ..view(LinkStage::Failed, Some(with), None)
        },
        // The new device's side (`Linked`) is not the first device's to show.
        _ => return None,
    })
}

fn lock_codes(ctx: &Ctx) -> std::sync::MutexGuard<'_, CodesSent> {
    ctx.link_codes
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Ctx {
    /// A message this id sent from another of its devices: stored as our own outgoing message
    /// of that conversation (before the handler returns, like an incoming one), with the device
    /// it came from, never unread and never notified. Content other than text (a file offer,
    /// which this device did not send and cannot resume) is not shown here.
    pub(super) fn on_own_message(&self, m: &OwnMessage) {
        let text = match &m.content {
            Content::Text(t) => t.as_str(),
            Content::Reply { text, .. } => text.as_str(),
            other => {
                tracing::debug!(
                    kind = other.kind(),
                    "own content from another device not shown"
                );
                return;
            }
        };
        let device = m.device.as_deref().unwrap_or(PRIMARY_DEVICE);
        // The sending device's clock, but never in the future of ours (it is not checked).
        let at = i64::try_from(m.sent_at)
            .ok()
            .filter(|t| *t > 0)
            .map_or_else(now_ms, |t| t.min(now_ms()));
        let stored = match &m.conversation {
            Conversation::Direct(peer) => self
                .db
                .insert_own_direct(&OwnDirect {
                    peer_id: peer,
                    wire_id: m.message_id.as_str(),
                    body: text,
                    at,
                    device,
                })
                .map(|r| r.map(SessionEvent::Changed)),
            Conversation::Group(group) => {
                let key = group_key(group);
                if !matches!(self.db.group_known(&key), Ok(true)) {
                    let name = self
                        .peer
                        .group_info(group)
                        .map(|i| i.name)
                        .unwrap_or_else(|_| "Group".to_owned());
                    if let Err(e) = self.db.ensure_group(&key, &name, now_ms()) {
                        tracing::warn!(group = %key, error = %e, "cannot store a group");
                    }
                }
                let line = NewGroupLine {
                    group_id: &key,
                    kind: GroupLineKind::Message,
                    sender: Some(&self.me),
                    message_id: m.message_id.as_str(),
                    outgoing: true,
                    body: text,
                    at,
                    status: crate::contract::DeliveryStatus::Sent,
                };
                self.db
                    .insert_own_group_line(&line, device)
                    .map(|l| l.map(SessionEvent::GroupLine))
            }
        };
        match stored {
            Ok(Some(event)) => self.up(event),
            Ok(None) => tracing::debug!(device, "own message already stored"),
            Err(e) => {
                tracing::error!(device, error = %e, "cannot store an own message");
                self.up(SessionEvent::Notice(Notice::new(
                    ErrorKind::Storage,
                    format!("A message you sent from {device} could not be saved: {e}"),
                )));
            }
        }
    }

    /// A linking event from the library: up to the page.
    pub(super) fn on_link(&self, event: &LinkEvent) {
        let event = match event {
            // The new device aborted after our code, before the comparison: it rejected the code.
            LinkEvent::Failed {
                with,
                reason: LinkFailure::Refused,
            } if lock_codes(self).take(with) => LinkEvent::Failed {
                with: with.clone(),
                reason: LinkFailure::WrongCode,
            },
            LinkEvent::AwaitingApproval { relay_id, .. } => {
                lock_codes(self).take(relay_id);
                event.clone()
            }
            LinkEvent::Failed { with, .. } => {
                lock_codes(self).take(with);
                event.clone()
            }
            other => other.clone(),
        };
        if let Some(view) = link_view(&event) {
            tracing::debug!(stage = %view.stage, "linking moved on");
            self.up(SessionEvent::Link(view));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_failure_is_a_sentence_and_names_no_internals() {
        for reason in [
            LinkFailure::WrongCode,
            LinkFailure::Refused,
            LinkFailure::Expired,
            LinkFailure::Malformed,
        ] {
            let view = link_view(&LinkEvent::Failed {
                with: ClientId::new("link-relay").unwrap(),
                reason,
            })
            .unwrap();
            assert_eq!(view.stage, LinkStage::Failed);
            let text = view.message.unwrap();
            assert!(text.ends_with('.'), "{text}");
            assert!(!text.contains("Malformed") && !text.contains("link-relay"));
        }
    }

    #[test]
    fn codes_sent_are_bounded_and_taken_once() {
        let mut sent = CodesSent::default();
        let ids: Vec<ClientId> = (0..=lattice_peer::defaults::MAX_PENDING_LINK_REQUESTS)
            .map(|i| ClientId::new(format!("link-{i}")).unwrap())
            .collect();
        for id in &ids {
            sent.note(id);
        }
        assert!(!sent.take(&ids[0]), "the oldest was dropped");
        assert!(sent.take(&ids[1]));
        assert!(!sent.take(&ids[1]), "taken once");
    }

    #[test]
    fn a_device_entry_shows_its_name_and_the_fingerprint_of_its_key() {
        let key = lattice_crypto::Identity::generate(&mut rand_core::OsRng);
        let public = key.identity_public_key();
        let entry = DeviceEntry {
            device_id: DeviceId::new("laptop").unwrap(),
            device_key: base64::engine::general_purpose::STANDARD.encode(public.as_bytes()),
        };
        let view = device_view(&entry);
        assert_eq!(view.device_id, "laptop");
        assert_eq!(view.fingerprint, Some(public.fingerprint().to_string()));
        let broken = DeviceEntry {
            device_key: "not base64!".into(),
            ..entry
        };
        assert_eq!(device_view(&broken).fingerprint, None);
    }
}
