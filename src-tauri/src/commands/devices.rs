//! The device commands. On a **new device** (first run, *Link to an existing account*):
//! `start_linking` (the code and this device's fingerprint), `wait_linking` (until the first
//! device approved; then this app runs as that device), `cancel_linking`.
//!
//! The device commands of the first device (the app holding the identity): Settings' *Devices*
//! section (the linked devices, *Remove*) and *Link a new device* (the code typed, then
//! *Approve* / *Refuse* once the fingerprint was compared). Progress comes as the `link` event.

use tauri::{AppHandle, Runtime};

use super::Shared;
use crate::error::CommandError;
use crate::messenger::{validate_client_id, validate_device_id};
use crate::storage::settings;
use crate::views::{Bootstrap, DeviceView, NewDeviceCode};

/// Longest code text the page may send, in bytes: 8 characters, grouped with spaces or dashes
/// as the person copied them, with room to spare; anything longer is no code.
const MAX_CODE_TEXT: usize = 64;

/// This account's linked devices, from its signed device list.
#[tauri::command]
pub async fn list_devices(messenger: Shared<'_>) -> Result<Vec<DeviceView>, CommandError> {
    Ok(messenger.devices().await?)
}

/// Removes `deviceId` from the list (it is signed out and reads no new messages); returns the
/// list as it is now.
#[tauri::command]
pub async fn remove_device(
    messenger: Shared<'_>,
    device_id: String,
) -> Result<Vec<DeviceView>, CommandError> {
    let device = validate_device_id(&device_id)?;
    Ok(messenger.remove_device(&device).await?)
}

/// The code the new device shows (case-insensitive; spaces and dashes ignored). Returns the
/// new device's relay id; whether the code was right comes as a `link` event.
#[tauri::command]
pub async fn enter_link_code(messenger: Shared<'_>, code: String) -> Result<String, CommandError> {
    if code.len() > MAX_CODE_TEXT {
        return Err(CommandError::InvalidInput(
            crate::session::NOT_A_CODE.into(),
        ));
    }
    Ok(messenger.enter_link_code(&code)?)
}

/// Approves (`approve` true) or refuses the new device `relayId` whose fingerprint the person
/// compared.
#[tauri::command]
pub async fn answer_link(
    messenger: Shared<'_>,
    relay_id: String,
    approve: bool,
) -> Result<(), CommandError> {
    let relay = validate_client_id(&relay_id)?;
    Ok(messenger.answer_link(&relay, approve).await?)
}

/// **New device**: links this computer to the account `clientId` on `serverUrl` as device
/// `deviceName`. Returns the code to type on the first device and this device's fingerprint.
#[tauri::command]
pub async fn start_linking(
    messenger: Shared<'_>,
    server_url: String,
    client_id: String,
    device_name: String,
) -> Result<NewDeviceCode, CommandError> {
    let account = validate_client_id(&client_id)?;
    let device = validate_device_id(&device_name)?;
    Ok(messenger
        .start_linking(&server_url, account, device)
        .await?)
}

/// **New device**: waits until the first device approved this one; then saves the device,
/// connects as it and returns what the page needs to draw. Fails with the reason when the run
/// ended without a device (wrong code, refused, expired, cancelled, no such account).
#[tauri::command]
pub async fn wait_linking<R: Runtime>(
    app: AppHandle<R>,
    messenger: Shared<'_>,
) -> Result<Bootstrap, CommandError> {
    let linked = messenger.wait_linking().await?;
    // The settings first: a device file is only used with the account its settings name.
    let settings = linked.settings(&messenger.settings());
    settings::save(&app, messenger.data_dir(), &settings)?;
    messenger.adopt_linked(linked, settings)?;
    if let Err(e) = messenger.restart_session().await {
        messenger.notice(CommandError::from(e).notice());
    }
    messenger.linked_device_reachable().await;
    Ok(messenger.bootstrap()?)
}

/// **New device**: stops the linking under way (the waiting `wait_linking` then fails with
/// "cancelled").
#[tauri::command]
pub async fn cancel_linking(messenger: Shared<'_>) -> Result<(), CommandError> {
    messenger.cancel_linking();
    Ok(())
}
