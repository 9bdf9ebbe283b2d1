//! The tray icon and its menu: Show/Hide, the unread count, Quit.
//!
//! Menu-driven on purpose: with Linux's appindicator, clicks on the icon itself are not
//! delivered, only menu selections. The icon gets a dot while there are unread messages.

use tauri::image::Image;
use tauri::menu::{Menu, MenuItem, PredefinedMenuItem};
use tauri::tray::{TrayIcon, TrayIconBuilder};
use tauri::{AppHandle, Manager, Runtime};

/// Label of the main window (also in `tauri.conf.json` and the capability file).
pub const MAIN_WINDOW: &str = "main";

const ICON: &[u8] = include_bytes!("../../icons/tray.png");
const ICON_UNREAD: &[u8] = include_bytes!("../../icons/tray-unread.png");

/// The tray's items, kept to update their text.
pub struct Tray<R: Runtime> {
    toggle: MenuItem<R>,
    unread: MenuItem<R>,
    icon: TrayIcon<R>,
}

/// Creates the tray icon and manages it as app state.
///
/// # Errors
/// A [`tauri::Error`] if the icon or menu cannot be created.
pub fn create<R: Runtime>(app: &AppHandle<R>) -> tauri::Result<()> {
    let toggle = MenuItem::with_id(app, "toggle", "Hide Lattice", true, None::<&str>)?;
    let unread = MenuItem::with_id(app, "unread", "No unread messages", false, None::<&str>)?;
    let separator = PredefinedMenuItem::separator(app)?;
    let quit = MenuItem::with_id(app, "quit", "Quit Lattice", true, None::<&str>)?;
    let menu = Menu::with_items(app, &[&toggle, &unread, &separator, &quit])?;
    let icon = TrayIconBuilder::with_id("lattice")
        .icon(Image::from_bytes(ICON)?)
        .tooltip("Lattice")
        .menu(&menu)
        .show_menu_on_left_click(true)
        .on_menu_event(|app, event| match event.id.as_ref() {
            "toggle" => toggle_window(app),
            "quit" => app.exit(0),
            _ => {}
        })
        .build(app)?;
    app.manage(Tray {
        toggle,
        unread,
        icon,
    });
    Ok(())
}

/// Shows the main window if hidden, hides it otherwise.
pub fn toggle_window<R: Runtime>(app: &AppHandle<R>) {
    let Some(window) = app.get_webview_window(MAIN_WINDOW) else {
        return;
    };
    if window.is_visible().unwrap_or(false) {
        hide_window(app);
    } else {
        show_window(app);
    }
}

/// Shows, restores and focuses the main window.
pub fn show_window<R: Runtime>(app: &AppHandle<R>) {
    if let Some(window) = app.get_webview_window(MAIN_WINDOW) {
        let _ = window.show();
        let _ = window.unminimize();
        let _ = window.set_focus();
    }
    set_toggle_text(app, "Hide Lattice");
}

/// Hides the main window (it stays in the tray).
pub fn hide_window<R: Runtime>(app: &AppHandle<R>) {
    if let Some(window) = app.get_webview_window(MAIN_WINDOW) {
        let _ = window.hide();
    }
    set_toggle_text(app, "Show Lattice");
}

fn set_toggle_text<R: Runtime>(app: &AppHandle<R>, text: &str) {
    if let Some(tray) = app.try_state::<Tray<R>>() {
        let _ = tray.toggle.set_text(text);
    }
}

/// Whether a tray icon exists (close-to-tray needs one).
pub fn present<R: Runtime>(app: &AppHandle<R>) -> bool {
    app.try_state::<Tray<R>>().is_some()
}

/// Shows the unread count in the menu, the tooltip and the icon. Posted to the main thread, so
/// it never blocks the caller.
pub fn set_unread<R: Runtime>(app: &AppHandle<R>, unread: i64) {
    let handle = app.clone();
    let posted = app.run_on_main_thread(move || {
        let Some(tray) = handle.try_state::<Tray<R>>() else {
            return;
        };
        let text = match unread {
            0 => "No unread messages".to_owned(),
            1 => "1 unread message".to_owned(),
            n => format!("{n} unread messages"),
        };
        let _ = tray.unread.set_text(&text);
        let tooltip = if unread > 0 {
            format!("Lattice — {text}")
        } else {
            "Lattice".to_owned()
        };
        let _ = tray.icon.set_tooltip(Some(tooltip));
        let bytes = if unread > 0 { ICON_UNREAD } else { ICON };
        if let Ok(image) = Image::from_bytes(bytes) {
            let _ = tray.icon.set_icon(Some(image));
        }
    });
    if let Err(e) = posted {
        tracing::debug!(error = %e, "cannot update the tray");
    }
}
