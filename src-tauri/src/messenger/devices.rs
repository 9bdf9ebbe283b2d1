//! Devices, the messenger's part (first device): Settings' *Devices* section (this id's linked
//! devices, *Remove*), *Link a new device* (the code typed, the fingerprint compared, *Approve*
//! / *Refuse*), and a link request arriving while the person looks elsewhere (a notification
//! when the window has no focus; the page raises its own toast from the `link` event).
//!
//! The library words nothing for people and says `InvalidArgument` for every refusal of a step
//! that is not open; each call here knows which step it is, so it says what happened and what to
//! do in a sentence ([`explain`]).

use std::sync::atomic::Ordering;

use lattice_peer::PeerError;
use lattice_protocol::{limits::MAX_DEVICES_PER_ID, ClientId, DeviceId};

use super::{lock, Messenger, MessengerError, State, Update};
use crate::contract::LinkStage;
use crate::session::{Devices, SessionError};
use crate::views::{DeviceView, LinkView};

/// Said when a device call needs the session and there is none.
const DEVICES_OFFLINE: &str = "Connect to the server to see or change this account's devices.";
/// `enter_link_code` with no new device waiting.
const NO_REQUEST: &str = "No new device is waiting for a code. On the new device, choose *Link \
     to an existing account* with this account's name first; its request shows up here.";
/// `answer_link` for a run that is no longer open.
const NOT_AWAITING: &str = "This link request is no longer open: it expired (a code is valid for \
     5 minutes) or was already answered. Start linking again on the new device.";
/// `remove_device` for a device not on the list.
const NOT_LISTED: &str = "That device is not linked to this account any more.";

/// What the person is told when a device call was refused: the library's `InvalidArgument`
/// (a step that is not open) becomes `sentence`; anything else keeps its own description.
fn explain(e: SessionError, sentence: &'static str) -> MessengerError {
    match e {
        SessionError::Peer(p) if matches!(*p, PeerError::InvalidArgument(_)) => {
            MessengerError::InvalidInput(sentence.into())
        }
        e => e.into(),
    }
}

/// A device name from the page: the protocol's rule, as a sentence when broken.
///
/// # Errors
/// [`MessengerError::InvalidInput`].
pub fn validate_device_id(id: &str) -> Result<DeviceId, MessengerError> {
    DeviceId::new(id.trim()).map_err(|_| {
        MessengerError::InvalidInput(
            "A device name is 1 to 64 letters, digits, dashes or underscores (\"primary\" is taken).".into(),
        )
    })
}

impl Messenger {
    /// The device calls of the running session.
    fn device_calls(&self) -> Result<Devices, MessengerError> {
        lock(&self.state.live)
            .devices
            .clone()
            .ok_or(MessengerError::Offline(DEVICES_OFFLINE))
    }

    /// This id's linked devices, from its signed list (this device, which holds the identity
    /// key, is not on it).
    ///
    /// # Errors
    /// [`MessengerError::Offline`]; [`MessengerError::Session`] (not connected, a list not
    /// signed by our key).
    pub async fn devices(&self) -> Result<Vec<DeviceView>, MessengerError> {
        Ok(self.device_calls()?.list().await?)
    }

    /// Removes `device`: it is signed out at once and can no longer read new messages. Returns
    /// the list as it is now.
    ///
    /// # Errors
    /// [`MessengerError::InvalidInput`] when it is not on the list; as [`Messenger::devices`].
    pub async fn remove_device(
        &self,
        device: &DeviceId,
    ) -> Result<Vec<DeviceView>, MessengerError> {
        let calls = self.device_calls()?;
        calls
            .remove(device)
            .await
            .map_err(|e| explain(e, NOT_LISTED))?;
        Ok(calls.list().await?)
    }

    /// The code the new device shows, typed by the person; whether it was right comes as a
    /// `link` event (the fingerprint to compare, or why it failed). Returns the new device's
    /// relay id.
    ///
    /// # Errors
    /// [`MessengerError::InvalidInput`] for text that is no code or when no new device waits;
    /// [`MessengerError::Offline`].
    pub fn enter_link_code(&self, code: &str) -> Result<String, MessengerError> {
        let relay = self
            .device_calls()?
            .enter_code(code)
            .map_err(|e| explain(e, NO_REQUEST))?;
        Ok(relay.as_str().to_owned())
    }

    /// Approves (or refuses) the new device `relay` after the person compared its fingerprint.
    ///
    /// # Errors
    /// [`MessengerError::InvalidInput`] when the request is no longer open or the account has
    /// the most devices it may; [`MessengerError::Offline`]; [`MessengerError::Session`].
    pub async fn answer_link(&self, relay: &ClientId, approve: bool) -> Result<(), MessengerError> {
        let calls = self.device_calls()?;
        if approve {
            // Checked first so the refusal says so; the library checks again when it signs.
            let linked = calls.list().await?.len();
            if linked + 1 >= MAX_DEVICES_PER_ID {
                // Refused on the wire too, so the new device stops waiting.
                if let Err(e) = calls.answer(relay, false).await {
                    tracing::debug!(relay = %relay, error = %e, "refusal not sent");
                }
                return Err(MessengerError::InvalidInput(format!(
                    "This account already has {MAX_DEVICES_PER_ID} devices, the most it may \
                     have. Remove one in Settings → Devices first; the new device was refused."
                )));
            }
        }
        calls
            .answer(relay, approve)
            .await
            .map_err(|e| explain(e, NOT_AWAITING))
    }
}

impl State {
    /// Linking moved on: to the page, and a request also to the notification centre unless
    /// the window has focus (the person has 5 minutes to type the code).
    pub(super) fn link(&self, view: LinkView) {
        if view.stage == LinkStage::Request && !self.focused.load(Ordering::Relaxed) {
            let name = view.device_id.as_deref().unwrap_or("A new device");
            self.ui.send(Update::Notify {
                title: "Link a new device?".into(),
                body: super::notification_text(&format!(
                    "{name} asks to be linked to this account. Open Settings → Devices and type \
                     the code it shows."
                )),
            });
        }
        self.ui.send(Update::Link(view));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_step_that_is_not_open_is_explained_and_other_errors_keep_their_words() {
        let refused = explain(
            SessionError::Peer(Box::new(PeerError::InvalidArgument(
                "no new device is waiting for a code".into(),
            ))),
            NO_REQUEST,
        );
        assert!(matches!(refused, MessengerError::InvalidInput(ref m) if m == NO_REQUEST));
        let offline = explain(SessionError::NotConnected, NO_REQUEST);
        assert!(matches!(
            offline,
            MessengerError::Session(SessionError::NotConnected)
        ));
    }

    #[test]
    fn device_names_follow_the_protocol() {
        assert_eq!(validate_device_id(" laptop ").unwrap().as_str(), "laptop");
        assert!(validate_device_id("").is_err());
        assert!(validate_device_id("two words").is_err());
    }
}
