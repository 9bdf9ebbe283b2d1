//! Devices, the messenger's part (first device): Settings' *Devices* section (this id's linked
//! devices, *Remove*), *Link a new device* (the code typed, the fingerprint compared, *Approve*
//! / *Refuse*), and a link request arriving while the person looks elsewhere (a notification
//! when the window has no focus; the page raises its own toast from the `link` event).
//!
//! On a **new device** (docs/desktop.md, *Linking this computer to an existing account*):
//! [`Messenger::start_linking`] dials the server from a throwaway relay id
//! (`PeerConfig::for_linking`: an unlisted relay) and returns the code and this device's fingerprint;
//! [`Messenger::wait_linking`] waits for the first device's approval; [`Messenger::adopt_linked`]
//! saves the device file (owner-only), imports the contacts' pins, and from then on the session
//! runs as that device. On a **linked device**, [`open_device`] finds the device file at every
//! start, and a removal ([`State::device_removed`]) is kept so the device never dials again.
//!
//! The library words nothing for people and says `InvalidArgument` for every refusal of a step
//! that is not open; each call here knows which step it is, so it says what happened and what to
//! do in a sentence ([`explain`]).

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use lattice_peer::{
    device_file, HandlerHandle, LinkEvent, LinkFailure, LinkedDevice, MessagingPeer, PeerConfig,
    PeerError, PeerEvent,
};
use lattice_protocol::{limits::MAX_DEVICES_PER_ID, ClientId, DeviceId, ErrorType};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{lock, validate_server_url, Messenger, MessengerError, State, Update};
use crate::clock::now_ms;
use crate::contract::{ConnectionState, LinkStage};
use crate::session::{Devices, Role, SessionError};
use crate::storage::keystore::DbKeyStore;
use crate::storage::settings::{ServerMode, Settings};
use crate::storage::{self, Db, StorageError};
use crate::views::{ConnectionView, DeviceView, LinkView, Me, NewDeviceCode};

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

/// How long a new device waits for the first device past the code's own validity (the first
/// device's expiry reaches it as a message; this bounds the wait when that message never comes).
const LINK_WAIT_SLACK: std::time::Duration = std::time::Duration::from_secs(15);
/// Linking events queued between the relay peer's handler and its run: a run has a handful
/// (the first device's steps), so a full queue means a peer flooding the relay id; the excess
/// is dropped with a warning (the run then ends by its deadline).
const LINK_EVENTS: usize = 16;

/// How long a just-linked device waits to be reachable before the app opens its window.
const LINKED_READY_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
/// The indicator's words on a removed device.
const REMOVED: &str = "This device was removed from its account.";
/// `wait_linking` with no linking under way.
const NOT_LINKING: &str = "No linking is under way. Choose *Link to an existing account* first.";
/// The run was cancelled on this device.
const LINK_CANCELLED: &str = "Linking was cancelled; nothing was linked.";

/// This app as a linked device of its id, as found at start or just linked.
#[derive(Debug, Clone)]
pub(super) struct ThisDevice {
    device_id: String,
    /// The id's identity key's safety number (the same on every device of the id).
    fingerprint: String,
    removed_at: Option<i64>,
}

impl ThisDevice {
    fn new(linked: &LinkedDevice, removed_at: Option<i64>) -> Self {
        Self {
            device_id: linked.device_id.as_str().to_owned(),
            fingerprint: linked.identity_key.fingerprint().to_string(),
            removed_at,
        }
    }

    pub(super) fn me(&self, client_id: ClientId) -> Me {
        Me {
            client_id,
            fingerprint: self.fingerprint.clone(),
            device_id: Some(self.device_id.clone()),
            removed_at: self.removed_at,
        }
    }
}

/// At start: the linked device this profile is, if it is one. A profile holding both an
/// identity and a device file is refused (which one it is cannot be guessed, and picking one
/// silently could send as the wrong device); so is a device file without the id it belongs to
/// in the settings, or one that does not verify.
///
/// # Errors
/// [`StorageError::Identity`] naming both files and what to do; [`StorageError::Invalid`] for
/// an unusable device file.
pub(super) fn open_device(
    data_dir: &Path,
    settings: &Settings,
    has_identity: bool,
    db: &Db,
) -> Result<Option<ThisDevice>, StorageError> {
    let path = data_dir.join(storage::DEVICE_FILE);
    if !path.exists() {
        return Ok(None);
    }
    if has_identity {
        return Err(StorageError::Identity(format!(
            "{} holds both an identity ({}) and a linked device ({}); a profile is one or the              other. Move one of them out of the folder (keep the identity if unsure: it cannot              be recreated) and start again.",
            data_dir.display(),
            storage::IDENTITY_FILE,
            storage::DEVICE_FILE
        )));
    }
    let Some(client_id) = &settings.client_id else {
        return Err(StorageError::Invalid(format!(
            "{} is a linked device, but the settings name no account; the settings file was              lost. Remove {} to link this computer again.",
            data_dir.display(),
            storage::DEVICE_FILE
        )));
    };
    let linked = device_file::load(&path, client_id)
        .map_err(|e| StorageError::Invalid(format!("this computer's device file: {e}")))?;
    Ok(Some(ThisDevice::new(&linked, db.device_removed_at()?)))
}

/// A new device's linking run: its relay peer lives in the task, which ends with the linked
/// device or the sentence saying why not.
pub(super) struct LinkRun {
    cancel: CancellationToken,
    result: Option<tokio::task::JoinHandle<Result<Linked, String>>>,
}

impl Drop for LinkRun {
    fn drop(&mut self) {
        // A run nobody waits for any more stops (its task then ends by itself).
        self.cancel.cancel();
    }
}

/// A new device just linked: what [`Messenger::adopt_linked`] keeps.
pub struct Linked {
    device: LinkedDevice,
    server_url: String,
}

impl std::fmt::Debug for Linked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Linked")
            .field("device", &self.device)
            .field("server_url", &self.server_url)
            .finish()
    }
}

impl Linked {
    /// The settings of the profile this device now is: its id on that server.
    pub fn settings(&self, current: &Settings) -> Settings {
        let mut settings = current.clone();
        settings.client_id = Some(self.device.client_id.clone());
        settings.server_mode = ServerMode::Connect;
        settings.server_url.clone_from(&self.server_url);
        settings
    }
}

/// The sentence for a new device's linking run that ended without a device.
fn new_device_failure(reason: LinkFailure) -> String {
    match reason {
        LinkFailure::WrongCode => "The code typed on the first device did not match this one.              That code is used up: start linking again for a new one."
            .into(),
        LinkFailure::Refused => "The first device refused this device (or the account already              has the most devices it may). Nothing was linked."
            .into(),
        LinkFailure::Expired => "The code expired before the first device approved it (it is              valid for 5 minutes). Start linking again for a new code."
            .into(),
        _ => "The first device sent something unexpected; nothing was linked. Start again.".into(),
    }
}

/// What a relay peer's handler passes to its run.
enum RunEvent {
    Link(LinkEvent),
    /// The server refused to deliver to the account (no such id).
    Unknown,
}

async fn run_link(
    peer: MessagingPeer,
    handler: HandlerHandle,
    mut events: mpsc::Receiver<RunEvent>,
    cancel: CancellationToken,
    account: ClientId,
    server_url: String,
) -> Result<Linked, String> {
    let deadline =
        tokio::time::Instant::now() + lattice_peer::defaults::LINK_CODE_TTL + LINK_WAIT_SLACK;
    let outcome = loop {
        let event = tokio::select! {
            biased;
            () = cancel.cancelled() => break Err(LINK_CANCELLED.to_owned()),
            () = tokio::time::sleep_until(deadline) => {
                break Err(new_device_failure(LinkFailure::Expired));
            }
            e = events.recv() => e,
        };
        match event {
            Some(RunEvent::Link(LinkEvent::Linked { .. })) => match peer.take_linked_device() {
                Some(device) => {
                    break Ok(Linked {
                        device,
                        server_url: server_url.clone(),
                    })
                }
                None => break Err("The link arrived but could not be opened. Start again.".into()),
            },
            Some(RunEvent::Link(LinkEvent::Failed { reason, .. })) => {
                break Err(new_device_failure(reason))
            }
            Some(RunEvent::Link(_)) => {}
            Some(RunEvent::Unknown) => {
                break Err(format!(
                    "This server knows no account named {account}. Check the name (it is shown                      on the first device, in Settings) and the server address."
                ))
            }
            None => break Err(LINK_CANCELLED.to_owned()),
        }
    };
    handler.remove();
    peer.disconnect().await;
    match &outcome {
        Ok(l) => tracing::info!(device = %l.device.device_id, "this device was linked"),
        Err(_) => tracing::info!("linking from this device ended without a device"),
    }
    outcome
}

impl Messenger {
    /// The linked device this profile is, as its session runs: `None` on the primary, or once
    /// it was removed (a removed device never dials again).
    pub(super) fn device_role(&self, client_id: &ClientId) -> Result<Option<Role>, MessengerError> {
        let removed = match lock(&self.state.device).as_ref() {
            None => return Ok(None),
            Some(d) => d.removed_at.is_some(),
        };
        if removed {
            return Ok(None);
        }
        let path = self.state.data_dir.join(storage::DEVICE_FILE);
        let linked = device_file::load(&path, client_id).map_err(|e| {
            MessengerError::Storage(StorageError::Invalid(format!(
                "this computer's device file: {e}"
            )))
        })?;
        Ok(Some(Role::Device(Box::new(linked))))
    }

    /// Refuses sending on a device that was removed from its id (its history stays readable).
    pub(super) fn refuse_removed(&self) -> Result<(), MessengerError> {
        if lock(&self.state.device)
            .as_ref()
            .is_some_and(|d| d.removed_at.is_some())
        {
            return Err(MessengerError::InvalidInput(
                "This device was removed from its account: it can no longer send. Your primary \
                 device still can."
                    .into(),
            ));
        }
        Ok(())
    }

    /// Refuses what only a profile without a device file may do (create an identity).
    pub(super) fn refuse_on_linked_device(&self) -> Result<(), MessengerError> {
        if lock(&self.state.device).is_some() {
            return Err(MessengerError::InvalidInput(
                "This computer is a linked device of an account; it cannot create an identity                  too. Delete this device's data first (on its removed screen, or by removing                  its device.json)."
                    .into(),
            ));
        }
        Ok(())
    }

    /// **New device**: links this computer to `account` on `server_url` as `device`: dials the
    /// server from a throwaway relay id and starts linking. Returns the code to type on the
    /// first device and this device's fingerprint; [`Messenger::wait_linking`] then waits for
    /// the approval. A run already under way is cancelled.
    ///
    /// # Errors
    /// [`MessengerError::InvalidInput`] for a bad address, name or device name, or on a profile
    /// that is set up already; [`MessengerError::Session`] when the server cannot be reached.
    pub async fn start_linking(
        &self,
        server_url: &str,
        account: ClientId,
        device: DeviceId,
    ) -> Result<NewDeviceCode, MessengerError> {
        let server_url = validate_server_url(server_url)?;
        if device.is_primary() {
            return Err(MessengerError::InvalidInput(
                "\"primary\" names the device holding the identity; choose another name for \
                 this one, e.g. laptop."
                    .into(),
            ));
        }
        self.refuse_on_linked_device()?;
        if self.state.identity().is_some() {
            return Err(MessengerError::InvalidInput(
                "This computer already has an identity; link other devices to it from Settings → Devices instead."
                    .into(),
            ));
        }
        // One run at a time: a new start replaces (and so cancels) the old one.
        drop(lock(&self.linking).take());
        let peer = MessagingPeer::new(PeerConfig::for_linking(server_url.as_str()))
            .map_err(|e| SessionError::InvalidServer(Box::new(e)))?;
        let (tx, rx) = mpsc::channel(LINK_EVENTS);
        let handler = peer.on_event(move |event| {
            let forwarded = match event {
                PeerEvent::Link(l) => RunEvent::Link(l.clone()),
                PeerEvent::MessageFailed { error, .. }
                | PeerEvent::Error(error @ PeerError::Server { .. })
                    if matches!(
                        error,
                        PeerError::Server {
                            error_type: ErrorType::PeerNotFound,
                            ..
                        }
                    ) =>
                {
                    RunEvent::Unknown
                }
                _ => return,
            };
            if tx.try_send(forwarded).is_err() {
                tracing::warn!("linking events queue full; one dropped");
            }
        });
        if let Err(e) = peer.connect().await {
            handler.remove();
            return Err(SessionError::from(e).into());
        }
        let code = match peer.start_linking(&account, device) {
            Ok(code) => code,
            Err(e) => {
                handler.remove();
                peer.disconnect().await;
                return Err(SessionError::from(e).into());
            }
        };
        let fingerprint = peer
            .linking_fingerprint()
            .map(|f| f.to_string())
            .unwrap_or_default();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run_link(
            peer,
            handler,
            rx,
            cancel.clone(),
            account,
            server_url,
        ));
        *lock(&self.linking) = Some(LinkRun {
            cancel,
            result: Some(task),
        });
        Ok(NewDeviceCode {
            code,
            fingerprint,
            valid_secs: lattice_peer::defaults::LINK_CODE_TTL.as_secs(),
        })
    }

    /// **New device**: waits until the first device approved this one (or the run ended).
    ///
    /// # Errors
    /// [`MessengerError::InvalidInput`] with why nothing was linked (wrong code, refused,
    /// expired, cancelled, no such account, no run under way).
    pub async fn wait_linking(&self) -> Result<Linked, MessengerError> {
        let task = lock(&self.linking)
            .as_mut()
            .and_then(|run| run.result.take())
            .ok_or_else(|| MessengerError::InvalidInput(NOT_LINKING.into()))?;
        let outcome = task
            .await
            .map_err(|e| MessengerError::Internal(format!("the linking task failed: {e}")))?;
        lock(&self.linking).take();
        outcome.map_err(MessengerError::InvalidInput)
    }

    /// **New device**: stops the linking under way, if any (`wait_linking` then says so).
    pub fn cancel_linking(&self) {
        if let Some(run) = lock(&self.linking).as_ref() {
            run.cancel.cancel();
        }
    }

    /// **New device**, just linked (the caller saved `linked.settings()` first): saves the
    /// device file (owner-only) and the contacts' pins, and from now on this profile is that
    /// device. The caller starts the session.
    ///
    /// # Errors
    /// [`MessengerError::Storage`] if the file or the pins cannot be written.
    pub fn adopt_linked(&self, linked: Linked, settings: Settings) -> Result<(), MessengerError> {
        let path = self.state.data_dir.join(storage::DEVICE_FILE);
        device_file::save(&path, &linked.device).map_err(|e| {
            MessengerError::Storage(StorageError::Invalid(format!(
                "this device is linked but could not be saved: {e}"
            )))
        })?;
        let pins = DbKeyStore::new(Arc::clone(&self.state.db));
        match linked.device.import_pins(&pins) {
            Ok(n) => tracing::info!(pinned = n, "contacts' keys imported from the first device"),
            Err(e) => tracing::warn!(error = %e, "contacts' keys not imported"),
        }
        *lock(&self.state.device) = Some(ThisDevice::new(&linked.device, None));
        self.set_settings(settings);
        Ok(())
    }

    /// **New device**, just linked and its session started: waits (at most
    /// [`LINKED_READY_WAIT`]) until it is connected and its KeyPackages are at the server, so a
    /// contact starting a conversation from now on includes it. Nothing fails here: a device
    /// still offline publishes them when it connects.
    pub async fn linked_device_reachable(&self) {
        if let Ok(calls) = self.device_calls() {
            calls.reachable(LINKED_READY_WAIT).await;
        }
    }

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
    /// This linked device was removed from its id: kept (so it never dials again, also after
    /// a restart), the indicator says so, and the page shows the removed screen.
    pub(super) fn device_removed(&self) {
        let removed_at = match self.db.mark_device_removed(now_ms()) {
            Ok(at) => at,
            Err(e) => {
                tracing::error!(error = %e, "cannot record this device's removal");
                now_ms()
            }
        };
        let me = {
            let mut device = lock(&self.device);
            let Some(d) = device.as_mut() else {
                tracing::warn!("a removal reported for a profile that is no linked device");
                return;
            };
            d.removed_at = Some(removed_at);
            self.settings().client_id.map(|id| d.me(id))
        };
        tracing::warn!("this device was removed from its id");
        if let Some(view) = self.removed_connection() {
            self.set_connection(view);
        }
        if let Some(me) = me {
            self.ui.send(Update::DeviceRemoved(me));
        }
    }

    /// The indicator of a removed device (`None` for any other profile).
    pub(super) fn removed_connection(&self) -> Option<ConnectionView> {
        lock(&self.device).as_ref()?.removed_at?;
        Some(ConnectionView {
            state: ConnectionState::Offline,
            retry_in_secs: None,
            server_url: None,
            hosting: None,
            detail: Some(REMOVED.into()),
        })
    }

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
