//! Settings, kept with tauri-plugin-store in `settings.json` under the data directory.
//!
//! The whole [`Settings`] value is one entry (`"settings"`) so that a change is written
//! atomically and an older or partly hand-edited file still loads: missing fields take their
//! defaults, unknown ones are ignored.

use lattice_protocol::ClientId;
use serde::{Deserialize, Serialize};
use tauri::{Manager, Runtime};
use tauri_plugin_store::StoreExt;

use super::{StorageError, SETTINGS_FILE};

/// The port a hosted server listens on by default (the protocol's default port).
pub const DEFAULT_HOST_PORT: u16 = lattice_protocol::limits::DEFAULT_PORT;

/// Incoming files up to this size download by themselves by default (bigger ones on a click).
pub const DEFAULT_AUTO_DOWNLOAD_BYTES: u64 = 100 * 1000 * 1000;
/// The largest auto-download limit that can be set (the server's default per-file limit).
pub const MAX_AUTO_DOWNLOAD_BYTES: u64 = 2 * 1024 * 1024 * 1024;
/// Longest downloads folder accepted, in bytes.
pub const MAX_FOLDER_BYTES: usize = 4096;

/// The key of the one entry in the store.
const KEY: &str = "settings";

/// Where the app finds its signaling server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum ServerMode {
    /// Run `lattice-server` inside the app, reachable from the LAN.
    #[default]
    Host,
    /// Connect to a server somewhere else (`serverUrl`).
    Connect,
}

/// Everything the person can set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Settings {
    /// The client id to register with; `None` until first run is done.
    pub client_id: Option<ClientId>,
    /// Host a server or connect to one.
    pub server_mode: ServerMode,
    /// The `ws://` / `wss://` URL to connect to in [`ServerMode::Connect`].
    pub server_url: String,
    /// The port the hosted server listens on in [`ServerMode::Host`].
    pub host_port: u16,
    /// Show a desktop notification for messages that arrive while the window is not focused.
    pub notifications: bool,
    /// Closing the window hides it to the tray instead of quitting.
    pub close_to_tray: bool,
    /// Start with the window hidden in the tray.
    pub start_minimized: bool,
    /// Send read receipts; off also stops showing others' (like Signal).
    pub read_receipts: bool,
    /// Send and show typing indicators.
    pub typing_indicators: bool,
    /// Incoming files up to this many bytes download by themselves (0: none do).
    pub auto_download_bytes: u64,
    /// Where *Save* puts a file; `None`: the user's Downloads folder.
    pub downloads_folder: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            client_id: None,
            server_mode: ServerMode::Host,
            server_url: format!("ws://127.0.0.1:{DEFAULT_HOST_PORT}"),
            host_port: DEFAULT_HOST_PORT,
            notifications: true,
            close_to_tray: true,
            start_minimized: false,
            read_receipts: true,
            typing_indicators: true,
            auto_download_bytes: DEFAULT_AUTO_DOWNLOAD_BYTES,
            downloads_folder: None,
        }
    }
}

impl Settings {
    /// Whether first run has been completed.
    pub fn is_set_up(&self) -> bool {
        self.client_id.is_some()
    }
}

/// A partial update from the settings view: only the fields present change.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SettingsPatch {
    /// New client id, as typed: checked by the caller, who passes the [`ClientId`] to
    /// [`SettingsPatch::apply`].
    pub client_id: Option<String>,
    /// New server mode.
    pub server_mode: Option<ServerMode>,
    /// New server URL.
    pub server_url: Option<String>,
    /// New hosting port.
    pub host_port: Option<u16>,
    /// Notifications on/off.
    pub notifications: Option<bool>,
    /// Close-to-tray on/off.
    pub close_to_tray: Option<bool>,
    /// Start minimized on/off.
    pub start_minimized: Option<bool>,
    /// Read receipts on/off.
    pub read_receipts: Option<bool>,
    /// Typing indicators on/off.
    pub typing_indicators: Option<bool>,
    /// New auto-download limit in bytes (at most [`MAX_AUTO_DOWNLOAD_BYTES`]; checked by the
    /// caller through [`SettingsPatch::check`]).
    pub auto_download_bytes: Option<u64>,
    /// New downloads folder: an absolute path; empty goes back to the user's Downloads.
    pub downloads_folder: Option<String>,
}

impl SettingsPatch {
    /// Applies the patch to `settings`, with `client_id` the checked form of the patch's own.
    pub fn apply(self, settings: &mut Settings, client_id: Option<ClientId>) {
        if let Some(v) = client_id {
            settings.client_id = Some(v);
        }
        if let Some(v) = self.server_mode {
            settings.server_mode = v;
        }
        if let Some(v) = self.server_url {
            settings.server_url = v;
        }
        if let Some(v) = self.host_port {
            settings.host_port = v;
        }
        if let Some(v) = self.notifications {
            settings.notifications = v;
        }
        if let Some(v) = self.close_to_tray {
            settings.close_to_tray = v;
        }
        if let Some(v) = self.start_minimized {
            settings.start_minimized = v;
        }
        if let Some(v) = self.read_receipts {
            settings.read_receipts = v;
        }
        if let Some(v) = self.typing_indicators {
            settings.typing_indicators = v;
        }
        if let Some(v) = self.auto_download_bytes {
            settings.auto_download_bytes = v.min(MAX_AUTO_DOWNLOAD_BYTES);
        }
        if let Some(v) = self.downloads_folder {
            let v = v.trim();
            settings.downloads_folder = (!v.is_empty()).then(|| v.to_owned());
        }
    }

    /// Checks the file settings of the patch: a readable sentence for what is wrong.
    ///
    /// # Errors
    /// The reason, fit to show.
    pub fn check(&self) -> Result<(), String> {
        if self
            .auto_download_bytes
            .is_some_and(|v| v > MAX_AUTO_DOWNLOAD_BYTES)
        {
            return Err(format!(
                "Files download by themselves up to {} MB at most.",
                MAX_AUTO_DOWNLOAD_BYTES / 1_000_000
            ));
        }
        if let Some(folder) = self.downloads_folder.as_deref().map(str::trim) {
            if folder.len() > MAX_FOLDER_BYTES {
                return Err("That downloads folder path is too long.".into());
            }
            if !folder.is_empty() && !std::path::Path::new(folder).is_absolute() {
                return Err("The downloads folder must be a full path (starting with /).".into());
            }
        }
        Ok(())
    }

    /// Whether the patch changes how the app connects (so the session must restart).
    pub fn touches_connection(&self) -> bool {
        self.client_id.is_some()
            || self.server_mode.is_some()
            || self.server_url.is_some()
            || self.host_port.is_some()
    }
}

/// Loads the settings from the store in `data_dir`; defaults if there are none or they are
/// unreadable (a damaged file is logged and replaced on the next save).
///
/// # Errors
/// [`StorageError::Settings`] if the store cannot be opened at all.
pub fn load<R: Runtime, M: Manager<R>>(
    manager: &M,
    data_dir: &std::path::Path,
) -> Result<Settings, StorageError> {
    let store = manager
        .store(data_dir.join(SETTINGS_FILE))
        .map_err(|e| StorageError::Settings(e.to_string()))?;
    Ok(match store.get(KEY) {
        None => Settings::default(),
        Some(value) => serde_json::from_value(value).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "settings unreadable; using defaults");
            Settings::default()
        }),
    })
}

/// Saves `settings` to the store in `data_dir` and flushes it to disk.
///
/// # Errors
/// [`StorageError::Settings`] if the store cannot be opened or written.
pub fn save<R: Runtime, M: Manager<R>>(
    manager: &M,
    data_dir: &std::path::Path,
    settings: &Settings,
) -> Result<(), StorageError> {
    let store = manager
        .store(data_dir.join(SETTINGS_FILE))
        .map_err(|e| StorageError::Settings(e.to_string()))?;
    let value =
        serde_json::to_value(settings).map_err(|e| StorageError::Settings(e.to_string()))?;
    store.set(KEY, value);
    store
        .save()
        .map_err(|e| StorageError::Settings(e.to_string()))?;
    // The store writes with the process's umask; the name and server are nobody else's business.
    super::restrict_files(&[data_dir.join(SETTINGS_FILE)])
}
