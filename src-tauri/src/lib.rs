//! # lattice-desktop
//!
//! The Lattice desktop app's backend (Tauri 2). The page (`ui/`, plain ES modules) renders and
//! asks; this crate holds the identity, runs a [`lattice_peer::MessagingPeer`] — and, by
//! default, the signaling server itself — keeps history on disk, and tells the page what
//! changed. It is a thin adapter: crypto, protocol and networking live in the Tauri-free crates.
//!
//! ## Module map
//! - [`commands`]: the `#[tauri::command]`s the page may call (and nothing else is allowed:
//!   see `capabilities/default.json`; `open_link` hands web links to tauri-plugin-opener, whose
//!   own commands the page is not granted).
//! - [`error`]: [`CommandError`], serialized as `{kind, code?, message}`, converted from the
//!   services' own errors at the IPC boundary.
//! - `messenger`: [`Messenger`], the app's services without Tauri; applies what the session
//!   reports and pushes [`Update`]s to a [`Ui`].
//! - `session`: one connection's lifetime: the peer, its connect and presence tasks; translates
//!   peer events into `events::SessionEvent`s, which go up on a bounded channel.
//! - `events`: `SessionEvent` and its bounded channel (calls go down, events come up).
//! - `outbox`: sends the durable outbox through the peer; owns its retry timing.
//! - `describe`: peer errors as sentences and codes for people and the page.
//! - [`contract`]: every event name, status and kind the page sees, as serde enums; also
//!   rendered as `ui/js/contract.js`.
//! - [`clock`]: wall time and time since start-up (below storage).
//! - `hosting`: the embedded `lattice-server`.
//! - `bridge`: the [`Ui`] of the real app: Tauri events, tray, notifications.
//! - [`storage`]: settings (tauri-plugin-store), SQLite history/contacts/pins/outbox, the
//!   full-text search index and drafts, the identity file; passphrase-sealed backups and
//!   their restore, and the export of one conversation.
//! - [`thumbnail`]: a file's type and an image's bounded preview, made before sending.
//! - `tray`, `notify`: the tray menu (unread count) and desktop notifications.
//! - [`views`]: the camelCase shapes that cross to the page.
//! - `options`: `--data-dir`, `--minimized`.

#![forbid(unsafe_code)]

mod bridge;
pub mod clock;
pub mod commands;
pub mod contract;
mod describe;
pub mod error;
mod events;
mod hosting;
mod messenger;
mod notify;
mod options;
mod outbox;
mod session;
pub mod storage;
pub mod thumbnail;
mod tray;
pub mod views;

use std::sync::Arc;
use std::time::Duration;

use tauri::{Builder, Manager, RunEvent, Runtime, WindowEvent};

pub use error::CommandError;
pub use messenger::{Messenger, MessengerError, Ui, Update};
pub use options::{Options, DATA_DIR_ENV};

pub use tray::MAIN_WINDOW;

/// How long quitting waits for the session (and the hosted server) to close cleanly.
const EXIT_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs the app: parses the options, builds it with [`build`] and enters the event loop.
pub fn run() {
    clock::mark_start();
    let options = Options::from_env_and_args();
    init_tracing(options.log_file.as_deref());
    match build(Builder::default(), options).build(tauri::generate_context!()) {
        Ok(app) => app.run(on_run_event),
        Err(e) => {
            eprintln!("lattice-desktop: cannot start: {e}");
            std::process::exit(1);
        }
    }
}

/// Adds Lattice's plugins, commands, set-up and window handling to `builder`. Generic over the
/// runtime so tests can pass `tauri::test::mock_builder()` (with [`Options::headless`]).
pub fn build<R: Runtime>(builder: Builder<R>, options: Options) -> Builder<R> {
    let mut builder = builder;
    if options.single_instance() {
        // Must be the first plugin. Without a session bus it logs and lets this instance run.
        builder = builder.plugin(tauri_plugin_single_instance::init(|app, _argv, _cwd| {
            tray::show_window(app);
        }));
    }
    builder
        .plugin(tauri_plugin_store::Builder::new().build())
        .plugin(tauri_plugin_notification::init())
        // Links are opened by `open_link` only, after the page asked: no click handler of its own.
        .plugin(
            tauri_plugin_opener::Builder::new()
                .open_js_links_on_click(false)
                .build(),
        )
        // File dialogs are opened by Attach and Save as… in the backend; the page is granted
        // none of this plugin's commands.
        .plugin(tauri_plugin_dialog::init())
        .invoke_handler(tauri::generate_handler![
            commands::bootstrap,
            commands::complete_setup,
            commands::load_messages,
            commands::send_message,
            commands::mark_read,
            commands::answer_question,
            commands::dismiss_question,
            commands::update_settings,
            commands::accept_key_change,
            commands::set_verified,
            commands::reconnect,
            commands::demo_question,
            commands::search_messages,
            commands::load_draft,
            commands::save_draft,
            commands::open_link,
            commands::backup_folder,
            commands::export_backup,
            commands::restore_backup,
            commands::export_conversation,
            commands::edit_message,
            commands::delete_message,
            commands::react,
            commands::message_versions,
            commands::typing,
            commands::files::attach_file,
            commands::files::send_dropped,
            commands::files::send_file_bytes,
            commands::files::download_file,
            commands::files::control_transfer,
            commands::files::save_file,
            commands::files::save_file_as,
            commands::files::open_file,
            commands::files::file_bytes,
            commands::groups::create_group,
            commands::groups::load_group_messages,
            commands::groups::send_group_message,
            commands::groups::mark_group_read,
            commands::groups::group_typing,
            commands::groups::group_details,
            commands::groups::invite_to_group,
            commands::groups::remove_from_group,
            commands::groups::rename_group,
            commands::groups::leave_group,
            commands::devices::list_devices,
            commands::devices::remove_device,
            commands::devices::enter_link_code,
            commands::devices::answer_link,
            commands::devices::start_linking,
            commands::devices::wait_linking,
            commands::devices::cancel_linking,
        ])
        .setup(move |app| {
            setup(app.handle(), &options)?;
            Ok(())
        })
        .on_window_event(|window, event| on_window_event(window, event))
}

fn setup<R: Runtime>(
    app: &tauri::AppHandle<R>,
    options: &Options,
) -> Result<(), Box<dyn std::error::Error>> {
    let data_dir = match &options.data_dir {
        Some(dir) => dir.clone(),
        None => app.path().app_data_dir()?,
    };
    storage::create_private_dir(&data_dir)?;
    let settings = storage::settings::load(app, &data_dir)?;
    let start_minimized = options.minimized || settings.start_minimized;
    let ui = Arc::new(bridge::TauriUi::new(app.clone()));
    let messenger = Arc::new(Messenger::open(&data_dir, settings, ui)?);
    app.manage(Arc::clone(&messenger));
    tracing::info!(data_dir = %data_dir.display(), "lattice-desktop starting");

    // Also headless: the notification centre is the session bus, not a window.
    app.manage(notify::Notifier::start(app.clone()));
    if !options.headless {
        let tray_ok = match tray::create(app) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "no tray icon; closing the window will quit");
                false
            }
        };
        let config = app
            .config()
            .app
            .windows
            .iter()
            .find(|w| w.label == MAIN_WINDOW)
            .cloned()
            .ok_or("tauri.conf.json has no main window")?;
        let hidden = start_minimized && tray_ok && messenger.settings().is_set_up();
        tauri::WebviewWindowBuilder::from_config(app, &config)?
            .visible(!hidden)
            .build()?;
        if hidden {
            tray::hide_window(app);
        }
    }

    // Hosting binds its port and the peer starts dialling in the background; both are quick
    // to start, so doing it here keeps the session's ownership simple (the Messenger holds it).
    if let Err(e) = tauri::async_runtime::block_on(messenger.restart_session()) {
        tracing::warn!(error = %e, "session not started");
        messenger.notice(CommandError::from(e).notice());
    }
    let unread = messenger.db().total_unread().unwrap_or(0);
    messenger.ui().send(Update::Unread(unread));
    Ok(())
}

fn on_window_event<R: Runtime>(window: &tauri::Window<R>, event: &WindowEvent) {
    let app = window.app_handle();
    let Some(messenger) = app.try_state::<Arc<Messenger>>() else {
        return;
    };
    match event {
        WindowEvent::Focused(focused) => messenger.set_focused(*focused),
        // Files dragged from the desktop: the window gives their paths to the backend only.
        WindowEvent::DragDrop(tauri::DragDropEvent::Enter { .. }) => messenger.drop_hover(true),
        WindowEvent::DragDrop(tauri::DragDropEvent::Leave) => messenger.drop_hover(false),
        WindowEvent::DragDrop(tauri::DragDropEvent::Drop { paths, .. }) => {
            messenger.drop_hover(false);
            messenger.set_dropped(paths.clone());
        }
        WindowEvent::CloseRequested { api, .. }
            if window.label() == MAIN_WINDOW
                && messenger.settings().close_to_tray
                && tray::present(app) =>
        {
            api.prevent_close();
            tray::hide_window(app);
        }
        _ => {}
    }
}

fn on_run_event<R: Runtime>(app: &tauri::AppHandle<R>, event: RunEvent) {
    if let RunEvent::Exit = event {
        if let Some(messenger) = app.try_state::<Arc<Messenger>>() {
            let messenger = Arc::clone(messenger.inner());
            let stopped = tauri::async_runtime::block_on(tokio::time::timeout(
                EXIT_TIMEOUT,
                messenger.stop_session(),
            ));
            if stopped.is_err() {
                tracing::warn!("session did not stop in time");
            }
        }
    }
}

fn init_tracing(log_file: Option<&std::path::Path>) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("LATTICE_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,tao=warn,wry=warn"));
    let file = log_file.and_then(|path| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| {
                eprintln!(
                    "lattice-desktop: cannot open the log file {}: {e}",
                    path.display()
                )
            })
            .ok()
    });
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = match file {
        Some(file) => builder
            .with_ansi(false)
            .with_writer(std::sync::Mutex::new(file))
            .try_init(),
        None => builder.try_init(),
    };
}
