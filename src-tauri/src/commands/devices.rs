//! The device commands of the first device (the app holding the identity): Settings' *Devices*
//! section (the linked devices, *Remove*) and *Link a new device* (the code typed, then
//! *Approve* / *Refuse* once the fingerprint was compared). Progress comes as the `link` event.

use super::Shared;
use crate::error::CommandError;
use crate::messenger::{validate_client_id, validate_device_id};
use crate::views::DeviceView;

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
