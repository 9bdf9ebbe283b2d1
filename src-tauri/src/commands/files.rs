//! The file commands: Attach (the system's open dialog, opened here), sending a drop or pasted
//! bytes, download, pause / resume / cancel, Save (to the downloads folder of the settings, or
//! the user's Downloads), Save as… (the system's save dialog), Open (the system's app for the
//! type, through tauri-plugin-opener's Rust side: the page is granted none of its commands) and
//! the viewer's bytes.
//!
//! The page names conversations (`peerId` for a 1:1 chat, or `groupId` for a group) and
//! messages, never a path on disk.

use std::path::PathBuf;

use tauri::ipc::{InvokeBody, Request, Response};
use tauri::{AppHandle, Manager, Runtime};
use tauri_plugin_dialog::DialogExt;
use tauri_plugin_opener::OpenerExt;

use super::Shared;
use crate::error::CommandError;
use crate::messenger::{
    parse_group_id, validate_client_id, Conversation, FileMessageView, Messenger, TransferAction,
    MAX_INLINE_FILE_BYTES,
};

/// Header of `send_file_bytes` naming the 1:1 conversation (percent-encoded).
pub const PEER_HEADER: &str = "x-lattice-peer";
/// Header of `send_file_bytes` naming the group instead (its hex id).
pub const GROUP_HEADER: &str = "x-lattice-group";
/// Header of `send_file_bytes` naming the file (percent-encoded).
pub const NAME_HEADER: &str = "x-lattice-name";
/// Longest header value read, in bytes (a name of 255 bytes percent-encodes to at most 765).
const MAX_HEADER_BYTES: usize = 1024;

/// The conversation the page named: exactly one of a peer and a group.
pub(super) fn conversation(
    peer_id: Option<&str>,
    group_id: Option<&str>,
) -> Result<Conversation, CommandError> {
    match (peer_id, group_id) {
        (Some(peer), None) => Ok(Conversation::Peer(validate_client_id(peer)?)),
        (None, Some(group)) => Ok(Conversation::Group(parse_group_id(group)?)),
        _ => Err(CommandError::InvalidInput(
            "Name either a person or a group.".into(),
        )),
    }
}

/// The files sent; why the others were not goes to the page as notices.
fn told(
    messenger: &Messenger,
    (sent, failed): (Vec<FileMessageView>, Vec<crate::messenger::MessengerError>),
) -> Vec<FileMessageView> {
    for e in failed {
        messenger.notice(CommandError::from(e).notice());
    }
    sent
}

/// Opens the system's dialog to choose files and sends them to `peerId` (or `groupId`); the
/// messages of those sent (none when the dialog was cancelled).
#[tauri::command]
pub async fn attach_file<R: Runtime>(
    app: AppHandle<R>,
    messenger: Shared<'_>,
    peer_id: Option<String>,
    group_id: Option<String>,
) -> Result<Vec<FileMessageView>, CommandError> {
    let to = conversation(peer_id.as_deref(), group_id.as_deref())?;
    let title = match &to {
        Conversation::Peer(peer) => format!("Send files to {peer}"),
        Conversation::Group(_) => "Send files to the group".to_owned(),
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    app.dialog()
        .file()
        .set_title(title)
        .pick_files(move |chosen| {
            let _ = tx.send(chosen);
        });
    let chosen = rx
        .await
        .map_err(|_| CommandError::Internal("The file dialog closed unexpectedly.".into()))?;
    let paths: Vec<PathBuf> = chosen
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| p.into_path().ok())
        .collect();
    if paths.is_empty() {
        return Ok(Vec::new());
    }
    Ok(told(&messenger, messenger.send_files(&to, paths).await?))
}

/// Sends the files just dropped on the window to `peerId` (or `groupId`).
#[tauri::command]
pub async fn send_dropped(
    messenger: Shared<'_>,
    peer_id: Option<String>,
    group_id: Option<String>,
) -> Result<Vec<FileMessageView>, CommandError> {
    let to = conversation(peer_id.as_deref(), group_id.as_deref())?;
    Ok(told(&messenger, messenger.send_dropped(&to).await?))
}

fn header(request: &Request<'_>, name: &str) -> Result<String, CommandError> {
    let value = request
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= MAX_HEADER_BYTES)
        .ok_or_else(|| CommandError::InvalidInput(format!("The {name} header is missing.")))?;
    percent_encoding::percent_decode_str(value)
        .decode_utf8()
        .map(|v| v.into_owned())
        .map_err(|_| CommandError::InvalidInput(format!("The {name} header is not UTF-8.")))
}

/// Sends the request's body (raw bytes: a pasted picture, a file dropped into the page) as a
/// file named by the `x-lattice-name` header to the conversation of `x-lattice-peer` (or the
/// group of `x-lattice-group`).
#[tauri::command]
pub async fn send_file_bytes(
    messenger: Shared<'_>,
    request: Request<'_>,
) -> Result<FileMessageView, CommandError> {
    let peer = header(&request, PEER_HEADER).ok();
    let group = header(&request, GROUP_HEADER).ok();
    let to = conversation(peer.as_deref(), group.as_deref())?;
    let name = header(&request, NAME_HEADER)?;
    let InvokeBody::Raw(bytes) = request.body() else {
        return Err(CommandError::InvalidInput(
            "The file must be sent as bytes.".into(),
        ));
    };
    if bytes.len() > MAX_INLINE_FILE_BYTES {
        return Err(CommandError::InvalidInput(format!(
            "That file is too large to paste (at most {} MB). Use Attach instead.",
            MAX_INLINE_FILE_BYTES / 1_000_000
        )));
    }
    Ok(messenger.send_file_bytes(&to, &name, bytes.clone()).await?)
}

/// Starts downloading the file of message `seq` of the conversation with `peerId` (or of the
/// group `groupId`).
#[tauri::command]
pub async fn download_file(
    messenger: Shared<'_>,
    peer_id: Option<String>,
    group_id: Option<String>,
    seq: i64,
) -> Result<FileMessageView, CommandError> {
    let conv = conversation(peer_id.as_deref(), group_id.as_deref())?;
    Ok(messenger.download_file(&conv, seq).await?)
}

/// Pauses, resumes or cancels the transfer of message `seq`'s file.
#[tauri::command]
pub async fn control_transfer(
    messenger: Shared<'_>,
    peer_id: Option<String>,
    group_id: Option<String>,
    seq: i64,
    action: TransferAction,
) -> Result<(), CommandError> {
    let conv = conversation(peer_id.as_deref(), group_id.as_deref())?;
    Ok(messenger.control_transfer(&conv, seq, action).await?)
}

/// Copies message `seq`'s file into the downloads folder (Settings, else the user's
/// Downloads); returns where it went.
#[tauri::command]
pub async fn save_file<R: Runtime>(
    app: AppHandle<R>,
    messenger: Shared<'_>,
    peer_id: Option<String>,
    group_id: Option<String>,
    seq: i64,
) -> Result<String, CommandError> {
    let conv = conversation(peer_id.as_deref(), group_id.as_deref())?;
    let dir = match messenger.settings().downloads_folder {
        Some(folder) => PathBuf::from(folder),
        None => app.path().download_dir().map_err(|e| {
            CommandError::Internal(format!(
                "There is no Downloads folder ({e}); choose one in Settings → Files."
            ))
        })?,
    };
    let saved = messenger.save_file(&conv, seq, &dir).await?;
    Ok(saved.display().to_string())
}

/// Asks where to save message `seq`'s file (the system's save dialog) and copies it there;
/// `null` when the dialog was cancelled.
#[tauri::command]
pub async fn save_file_as<R: Runtime>(
    app: AppHandle<R>,
    messenger: Shared<'_>,
    peer_id: Option<String>,
    group_id: Option<String>,
    seq: i64,
) -> Result<Option<String>, CommandError> {
    let conv = conversation(peer_id.as_deref(), group_id.as_deref())?;
    let (_, file) = messenger.local_file(&conv, seq)?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let mut dialog = app.dialog().file().set_file_name(file.name);
    if let Ok(dir) = app.path().download_dir() {
        dialog = dialog.set_directory(dir);
    }
    dialog.save_file(move |chosen| {
        let _ = tx.send(chosen);
    });
    let chosen = rx
        .await
        .map_err(|_| CommandError::Internal("The save dialog closed unexpectedly.".into()))?;
    let Some(dest) = chosen.and_then(|p| p.into_path().ok()) else {
        return Ok(None);
    };
    let saved = messenger.save_file_to(&conv, seq, &dest).await?;
    Ok(Some(saved.display().to_string()))
}

/// Opens message `seq`'s file with the system's app for its type (never a program or script).
#[tauri::command]
pub async fn open_file<R: Runtime>(
    app: AppHandle<R>,
    messenger: Shared<'_>,
    peer_id: Option<String>,
    group_id: Option<String>,
    seq: i64,
) -> Result<(), CommandError> {
    let conv = conversation(peer_id.as_deref(), group_id.as_deref())?;
    let path = messenger.file_to_open(&conv, seq)?;
    app.opener()
        .open_path(path.to_string_lossy(), None::<&str>)
        .map_err(|e| CommandError::Internal(format!("The file could not be opened: {e}")))
}

/// The bytes of message `seq`'s picture, for the viewer (raw, not JSON).
#[tauri::command]
pub async fn file_bytes(
    messenger: Shared<'_>,
    peer_id: Option<String>,
    group_id: Option<String>,
    seq: i64,
) -> Result<Response, CommandError> {
    let conv = conversation(peer_id.as_deref(), group_id.as_deref())?;
    Ok(Response::new(messenger.picture_bytes(&conv, seq).await?))
}
