//! Files, the messenger's part: sending a file from a path (Attach, a drop on the window) or
//! from bytes (a paste), downloading, pausing, resuming and cancelling, saving a copy, and
//! applying the library's progress reports to the history and the page.
//!
//! The page never names a path to read: Attach's paths come from the system dialog (opened by
//! the command), dropped paths from the window ([`Messenger::set_dropped`]), and bytes are
//! bounded by [`MAX_INLINE_FILE_BYTES`]. Paths to write are the data directory's, the
//! downloads folder of the settings, or what the system's save dialog returned.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lattice_peer::{FileMeta, FileOffer, TransferId, TransferProgress};
use lattice_protocol::{ClientId, MessageId};
use serde::{Deserialize, Serialize};

use super::{lock, Messenger, MessengerError, State, Update, NO_SESSION};
use crate::clock::now_ms;
use crate::contract::DeliveryStatus;
use crate::session::{download_path, thumbnail_for_offer};
use crate::storage::files::{Attachment, FileHome, NewAttachment, TransferState, MAX_NAME_BYTES};
use crate::storage::groups::{GroupLineKind, NewGroupLine};
use crate::storage::{MessageRecord, StorageError};
use crate::thumbnail;
use crate::views::{GroupMessageView, MessageView, TransferView};

/// Largest file the page may hand over as bytes (a pasted picture, a file dropped into the
/// page): bigger ones are sent by path (Attach, or a drop on the window).
pub const MAX_INLINE_FILE_BYTES: usize = 64 * 1024 * 1024;
/// Largest picture the viewer loads into the page, in bytes.
pub const MAX_VIEWER_BYTES: u64 = 64 * 1024 * 1024;
/// Most files one drop (or one Attach) sends.
pub const MAX_DROPPED_FILES: usize = 32;
/// How long the paths of a drop wait for the page to ask to send them.
const DROPPED_TTL: Duration = Duration::from_secs(60);
/// Folder of the data directory where pasted files are kept (the sent copy).
const OUTGOING_DIR: &str = "outgoing";
/// Most copies tried when a saved file's name is taken (`name (1).ext` …).
const MAX_SAVE_NAME_TRIES: u32 = 1000;
/// Types of files *Open* refuses: opening them would run them, not show them.
const RUN_ON_OPEN: &[&str] = &[
    "desktop", "sh", "bash", "run", "bin", "appimage", "exe", "msi", "bat", "cmd", "com", "ps1",
    "jar", "py", "pl", "rb", "command", "app", "deb", "rpm", "scr", "vbs", "js",
];

/// The conversation a file belongs to: a 1:1 chat, or a group (its hex id, checked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conversation {
    /// The chat with this peer.
    Peer(ClientId),
    /// The group with this id.
    Group(String),
}

/// A message as the page shows it (one with a file, or one an edit or a reaction changed): a
/// 1:1 message or a group line (the page tells them apart by `groupId`).
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum FileMessageView {
    /// A 1:1 message.
    Chat(MessageView),
    /// A line of a group.
    Group(GroupMessageView),
}

/// A stored message with a file, wherever it is.
struct FileRow {
    home: FileHome,
    outgoing: bool,
    /// Who sent it (the peer of a 1:1 chat, the member in a group).
    from: ClientId,
    /// The sender's message id (for a download).
    message_id: String,
    file: Attachment,
}

/// What to do with a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum TransferAction {
    /// Stop for now (kept across restarts).
    Pause,
    /// Go on where it stopped (also after a failure).
    Resume,
    /// Stop for good.
    Cancel,
}

/// The paths of the last drop on the window, until the page asks to send them.
#[derive(Debug, Default)]
pub(super) struct Dropped {
    paths: Vec<PathBuf>,
    at: Option<tokio::time::Instant>,
}

/// The library's state as the storage keeps it, and its reason when failed.
fn state_of(state: &lattice_peer::TransferState) -> (TransferState, Option<&str>) {
    use lattice_peer::TransferState as Lib;
    match state {
        Lib::Queued => (TransferState::Queued, None),
        Lib::Running => (TransferState::Running, None),
        Lib::Paused => (TransferState::Paused, None),
        Lib::Completed => (TransferState::Completed, None),
        Lib::Failed(reason) => (TransferState::Failed, Some(reason.as_str())),
        Lib::Cancelled => (TransferState::Cancelled, None),
    }
}

/// A file name the page gave: not empty, at most [`MAX_NAME_BYTES`], one path component
/// without control characters.
fn check_name(name: &str) -> Result<String, MessengerError> {
    let name = name.trim();
    let bad = name.is_empty()
        || name.len() > MAX_NAME_BYTES
        || name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == '\\' || c.is_control());
    if bad {
        return Err(MessengerError::InvalidInput(
            "That file name cannot be used: give one of at most 255 bytes without slashes.".into(),
        ));
    }
    Ok(name.to_owned())
}

/// `dir/name`, or `dir/name (1).ext` … when taken, created empty and new (never over an
/// existing file) and returned open.
fn create_unique(dir: &Path, name: &str) -> std::io::Result<(PathBuf, std::fs::File)> {
    let path = Path::new(name);
    let stem = path
        .file_stem()
        .map_or_else(|| name.to_owned(), |s| s.to_string_lossy().into_owned());
    let ext = path
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    for n in 0..MAX_SAVE_NAME_TRIES {
        let candidate = if n == 0 {
            dir.join(name)
        } else {
            dir.join(format!("{stem} ({n}){ext}"))
        };
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&candidate)
        {
            Ok(file) => return Ok((candidate, file)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AlreadyExists,
        "too many files of that name",
    ))
}

/// Copies `src` to a new file at `dest` (created new: never over another file), removing the
/// copy when it fails half-way.
fn copy_new(src: &Path, dest: &Path, mut out: std::fs::File) -> std::io::Result<()> {
    let copied = std::fs::File::open(src)
        .and_then(|mut input| std::io::copy(&mut input, &mut out))
        .and_then(|_| out.sync_all());
    if copied.is_err() {
        let _ = std::fs::remove_file(dest);
    }
    copied
}

fn io_error(what: &str) -> impl FnOnce(std::io::Error) -> MessengerError + '_ {
    move |e| MessengerError::InvalidInput(format!("{what}: {e}"))
}

impl State {
    /// Applies a progress report of the library: to the history, then to the page. An upload
    /// that completed means its message went out.
    pub(super) fn transfer(&self, progress: &TransferProgress) {
        let (state, error) = state_of(&progress.state);
        let row = match self
            .db
            .update_transfer(progress.id.as_str(), state, progress.done, error)
        {
            Ok(Some(row)) => row,
            // Not (yet) in the history: the command that started it records it and then
            // catches up with the library's state.
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(transfer = %progress.id, error = %e, "cannot record a transfer's progress");
                return;
            }
        };
        if let Some(group) = &row.group_id {
            // A group's line is drawn again with its file as it is now; an upload that completed
            // means its message went out.
            let line = if row.outgoing && state == TransferState::Completed {
                self.db.advance_group_status(row.seq, DeliveryStatus::Sent)
            } else {
                Ok(None)
            }
            .and_then(|advanced| match advanced {
                Some(line) => Ok(Some(line)),
                None => self.db.group_line(group, row.seq),
            });
            match line {
                Ok(Some(line)) => self
                    .ui
                    .send(Update::GroupMessage(self.group_message_view(line))),
                Ok(None) => {}
                Err(e) => tracing::warn!(seq = row.seq, error = %e, "cannot read a group line"),
            }
            return;
        }
        self.ui.send(Update::Transfer(TransferView {
            peer_id: row.peer_id.clone(),
            message_id: row.message_id.clone(),
            state,
            done: progress.done,
            total: progress.total,
            error: error.map(str::to_owned),
        }));
        if row.outgoing && state == TransferState::Completed {
            self.advance(&row.message_id, DeliveryStatus::Sent);
        }
        if !row.outgoing && state == TransferState::Completed {
            // The page redraws the message: now it can be viewed, saved and opened.
            let record = ClientId::try_from(row.peer_id.as_str())
                .ok()
                .and_then(|peer| self.db.message(&peer, row.seq).transpose());
            match record {
                Some(Ok(record)) => self.ui.send(Update::Message(self.view(record))),
                Some(Err(e)) => tracing::warn!(seq = row.seq, error = %e, "cannot read a message"),
                None => {}
            }
        }
    }
}

impl Messenger {
    /// Remembers the paths of a drop on the window (at most [`MAX_DROPPED_FILES`]) and tells
    /// the page, which asks to send them to the open conversation ([`Messenger::send_dropped`]).
    pub fn set_dropped(&self, paths: Vec<PathBuf>) {
        let count = paths.len().min(MAX_DROPPED_FILES);
        *lock(&self.state.dropped) = Dropped {
            paths: paths.into_iter().take(MAX_DROPPED_FILES).collect(),
            at: Some(tokio::time::Instant::now()),
        };
        self.state.ui.send(Update::FilesDropped(count));
    }

    /// Files are dragged over the window or left it.
    pub fn drop_hover(&self, hovering: bool) {
        self.state.ui.send(Update::DropHover(hovering));
    }

    /// Sends the files of the last drop (if it is recent) to `to`.
    ///
    /// # Errors
    /// [`MessengerError::InvalidInput`] when there is nothing dropped; the errors of
    /// [`Messenger::send_file`] when no file could be sent.
    pub async fn send_dropped(
        &self,
        to: &Conversation,
    ) -> Result<(Vec<FileMessageView>, Vec<MessengerError>), MessengerError> {
        let dropped = std::mem::take(&mut *lock(&self.state.dropped));
        let fresh = dropped.at.is_some_and(|at| at.elapsed() < DROPPED_TTL);
        if !fresh || dropped.paths.is_empty() {
            return Err(MessengerError::InvalidInput(
                "Drop the files on the conversation again.".into(),
            ));
        }
        self.send_files(to, dropped.paths).await
    }

    /// Sends each of `paths` to `to`: the views of those sent, and why the others were not
    /// (the caller tells the person). Fails only when none was sent.
    ///
    /// # Errors
    /// The first error, when no file could be sent.
    pub async fn send_files(
        &self,
        to: &Conversation,
        paths: Vec<PathBuf>,
    ) -> Result<(Vec<FileMessageView>, Vec<MessengerError>), MessengerError> {
        let mut sent = Vec::new();
        let mut failed = Vec::new();
        for path in paths.into_iter().take(MAX_DROPPED_FILES) {
            match self.send_file(to, &path).await {
                Ok(view) => sent.push(view),
                Err(e) => {
                    tracing::warn!(error = %e, "a file was not sent");
                    failed.push(e);
                }
            }
        }
        if sent.is_empty() && !failed.is_empty() {
            return Err(failed.remove(0));
        }
        Ok((sent, failed))
    }

    /// A group to send a file to: known, and this device still in it.
    fn sendable_group(
        &self,
        group: &str,
    ) -> Result<(String, lattice_peer::GroupId), MessengerError> {
        let key = self.known_group(group)?;
        if self.state.db.group(&key)?.is_some_and(|g| g.left) {
            return Err(MessengerError::InvalidInput(
                "You are no longer in this group.".into(),
            ));
        }
        let gid = crate::session::parse_key(&key)
            .ok_or_else(|| MessengerError::InvalidInput("That is not a group.".into()))?;
        Ok((key, gid))
    }

    /// Sends the file at `path` to `to` (a peer, or every member of a group): its type from its
    /// first bytes, a preview for a picture, then the library uploads it and sends the file
    /// message. Refused before anything is uploaded for an original client or a group this
    /// device left.
    ///
    /// # Errors
    /// [`MessengerError::InvalidInput`] for an original client, a group left, a folder or an
    /// unreadable file; [`MessengerError::Offline`] without a session; the library's refusals.
    pub async fn send_file(
        &self,
        to: &Conversation,
        path: &Path,
    ) -> Result<FileMessageView, MessengerError> {
        let me = self.me_id()?;
        let group = match to {
            Conversation::Peer(peer) => {
                self.refuse_original(peer, "files")?;
                None
            }
            Conversation::Group(group) => Some(self.sendable_group(group)?),
        };
        let meta = std::fs::metadata(path).map_err(io_error("That file cannot be read"))?;
        if !meta.is_file() {
            return Err(MessengerError::InvalidInput(
                "Only files can be sent, not folders.".into(),
            ));
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| MessengerError::InvalidInput("That file has no name.".into()))?;
        let name = check_name(&name)?;
        let probe = path.to_owned();
        let (mime, thumb) = tokio::task::spawn_blocking(move || {
            let mime = thumbnail::sniff_mime(&probe)
                .unwrap_or_else(|_| thumbnail::UNKNOWN_MIME.to_owned());
            let thumb = thumbnail::thumbnail_of_file(&probe, &mime);
            (mime, thumb)
        })
        .await
        .map_err(|e| MessengerError::Internal(format!("making a preview stopped: {e}")))?;
        let file_meta = FileMeta {
            name: Some(name.clone()),
            mime: Some(mime.clone()),
            thumbnail: thumb.clone().map(thumbnail_for_offer),
        };
        let guard = self.session.lock().await;
        let session = &guard
            .as_ref()
            .ok_or(MessengerError::Offline(NO_SESSION))?
            .session;
        let id = match (&group, to) {
            (Some((_, gid)), _) => session.send_group_file(gid, path, file_meta).await?,
            (None, Conversation::Peer(peer)) => session.send_file(peer, path, file_meta).await?,
            (None, Conversation::Group(_)) => {
                return Err(MessengerError::Internal("a group without its id".into()))
            }
        };
        let progress = session.transfer(&id);
        drop(guard);
        let file = NewAttachment {
            name: name.clone(),
            size: meta.len(),
            mime,
            thumbnail: thumb,
            offer: None,
            local_path: Some(path.to_string_lossy().into_owned()),
            transfer_id: Some(id.as_str().to_owned()),
            state: TransferState::Queued,
        };
        let local_id = uuid::Uuid::new_v4().to_string();
        let view = match (&group, to) {
            (Some((key, _)), _) => {
                let line = self
                    .state
                    .db
                    .insert_group_file(
                        &NewGroupLine {
                            group_id: key,
                            kind: GroupLineKind::Message,
                            sender: Some(&me),
                            message_id: &local_id,
                            outgoing: true,
                            body: &name,
                            at: now_ms(),
                            status: DeliveryStatus::Pending,
                        },
                        &file,
                    )?
                    .ok_or(MessengerError::Storage(StorageError::Missing(
                        "group file message",
                    )))?;
                tracing::info!(group = %key, transfer = %id, seq = line.seq, "sending a file to a group");
                // Reports that came before the row existed were skipped: catch up.
                if let Some(progress) = progress {
                    self.state.transfer(&progress);
                }
                self.state.publish_groups();
                let line = self.state.db.group_line(key, line.seq)?.unwrap_or(line);
                FileMessageView::Group(line.into())
            }
            (None, Conversation::Peer(peer)) => {
                let wire_id = progress
                    .as_ref()
                    .and_then(|p| p.message_id.as_ref())
                    .map(|id| id.as_str().to_owned());
                let record = self.state.db.insert_outgoing_file(
                    &local_id,
                    wire_id.as_deref(),
                    peer,
                    &file,
                    now_ms(),
                )?;
                tracing::info!(peer = %peer, transfer = %id, seq = record.seq, "sending a file");
                if let Some(progress) = progress {
                    self.state.transfer(&progress);
                }
                self.state.publish_peers();
                FileMessageView::Chat(self.state.view(record))
            }
            (None, Conversation::Group(_)) => {
                return Err(MessengerError::Internal("a group without its id".into()))
            }
        };
        Ok(view)
    }

    /// Sends `bytes` as a file named `name` (a pasted picture, a file dropped into the page):
    /// kept under the data directory as the sent copy, then sent like any file.
    ///
    /// # Errors
    /// [`MessengerError::InvalidInput`] for an empty or oversized file or a bad name; the errors
    /// of [`Messenger::send_file`].
    pub async fn send_file_bytes(
        &self,
        to: &Conversation,
        name: &str,
        bytes: Vec<u8>,
    ) -> Result<FileMessageView, MessengerError> {
        let name = check_name(name)?;
        if bytes.len() > MAX_INLINE_FILE_BYTES {
            return Err(MessengerError::InvalidInput(format!(
                "That file is too large to paste ({} MB; at most {} MB). Use Attach instead.",
                bytes.len() / 1_000_000,
                MAX_INLINE_FILE_BYTES / 1_000_000
            )));
        }
        self.me_id()?;
        match to {
            Conversation::Peer(peer) => self.refuse_original(peer, "files")?,
            Conversation::Group(group) => {
                self.sendable_group(group)?;
            }
        }
        let dir = self
            .state
            .data_dir
            .join(OUTGOING_DIR)
            .join(uuid::Uuid::new_v4().to_string());
        let path = dir.join(&name);
        let target = path.clone();
        tokio::task::spawn_blocking(move || -> Result<(), MessengerError> {
            crate::storage::create_private_dir(&dir)?;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&target)
                .map_err(io_error("The file could not be kept"))?;
            file.write_all(&bytes)
                .and_then(|()| file.sync_all())
                .map_err(io_error("The file could not be kept"))
        })
        .await
        .map_err(|e| MessengerError::Internal(format!("keeping the file stopped: {e}")))??;
        self.send_file(to, &path).await
    }

    /// The message `seq` of `conv` and its file, or a readable refusal.
    fn file_row(&self, conv: &Conversation, seq: i64) -> Result<FileRow, MessengerError> {
        match conv {
            Conversation::Peer(peer) => {
                let record = self.target(peer, seq)?;
                let file = attachment_of(&record)?;
                Ok(FileRow {
                    home: FileHome::Chat,
                    outgoing: record.outgoing,
                    from: peer.clone(),
                    message_id: record.message_id,
                    file,
                })
            }
            Conversation::Group(group) => {
                let key = self.known_group(group)?;
                let line =
                    self.state.db.group_line(&key, seq)?.ok_or_else(|| {
                        MessengerError::InvalidInput("That message is gone.".into())
                    })?;
                let file = line.attachment.ok_or_else(|| {
                    MessengerError::InvalidInput("That message has no file.".into())
                })?;
                let from = ClientId::try_from(line.sender.as_str())
                    .map_err(|e| MessengerError::Internal(format!("a stored sender: {e}")))?;
                Ok(FileRow {
                    home: FileHome::Group,
                    outgoing: line.outgoing,
                    from,
                    message_id: line.message_id,
                    file,
                })
            }
        }
    }

    /// Message `seq` of `conv` as the page shows it now.
    fn file_view(&self, conv: &Conversation, seq: i64) -> Result<FileMessageView, MessengerError> {
        Ok(match conv {
            Conversation::Peer(peer) => {
                FileMessageView::Chat(self.state.view(self.target(peer, seq)?))
            }
            Conversation::Group(group) => {
                let key = self.known_group(group)?;
                let line =
                    self.state.db.group_line(&key, seq)?.ok_or_else(|| {
                        MessengerError::InvalidInput("That message is gone.".into())
                    })?;
                FileMessageView::Group(line.into())
            }
        })
    }

    /// Starts (or restarts) downloading the file of message `seq` of `conv`.
    ///
    /// # Errors
    /// [`MessengerError::InvalidInput`] for a message without a file to download;
    /// [`MessengerError::Offline`]; the library's refusals.
    pub async fn download_file(
        &self,
        conv: &Conversation,
        seq: i64,
    ) -> Result<FileMessageView, MessengerError> {
        let row = self.file_row(conv, seq)?;
        if row.outgoing {
            return Err(MessengerError::InvalidInput(
                "That file was sent from here; there is nothing to download.".into(),
            ));
        }
        if row.file.state == TransferState::Completed && row.file.local_path.is_some() {
            return self.file_view(conv, seq);
        }
        let offer: FileOffer = self
            .state
            .db
            .file_offer_in(row.home, seq)?
            .and_then(|json| serde_json::from_str(&json).ok())
            .ok_or_else(|| {
                MessengerError::InvalidInput("This file can no longer be downloaded.".into())
            })?;
        let message_id = MessageId::try_from(row.message_id.as_str())
            .map_err(|e| MessengerError::Internal(format!("a stored message id: {e}")))?;
        let dest = download_path(&self.state.data_dir, row.home, seq, &row.file.name);
        let guard = self.session.lock().await;
        let session = &guard
            .as_ref()
            .ok_or(MessengerError::Offline(NO_SESSION))?
            .session;
        let id = session.download_file(&row.from, &message_id, &offer, &dest)?;
        let progress = session.transfer(&id);
        drop(guard);
        self.state
            .db
            .start_transfer_in(row.home, seq, id.as_str(), &dest.to_string_lossy())?;
        if let Some(progress) = progress {
            self.state.transfer(&progress);
        }
        self.file_view(conv, seq)
    }

    /// Pauses, resumes or cancels the transfer of message `seq`'s file.
    ///
    /// # Errors
    /// [`MessengerError::InvalidInput`] for a message without a transfer;
    /// [`MessengerError::Offline`]; the library's refusals (a finished transfer).
    pub async fn control_transfer(
        &self,
        conv: &Conversation,
        seq: i64,
        action: TransferAction,
    ) -> Result<(), MessengerError> {
        let file = self.file_row(conv, seq)?.file;
        let id = file
            .transfer_id
            .as_deref()
            .and_then(|id| TransferId::parse(id).ok())
            .ok_or_else(|| MessengerError::InvalidInput("This file is not being moved.".into()))?;
        let guard = self.session.lock().await;
        let session = &guard
            .as_ref()
            .ok_or(MessengerError::Offline(NO_SESSION))?
            .session;
        match action {
            TransferAction::Pause => session.pause_transfer(&id)?,
            TransferAction::Resume => session.resume_transfer(&id)?,
            TransferAction::Cancel => session.cancel_transfer(&id).await?,
        }
        let progress = session.transfer(&id);
        drop(guard);
        if let Some(progress) = progress {
            self.state.transfer(&progress);
        }
        Ok(())
    }

    /// Before a file message is deleted on this device: stops its transfer (a download would
    /// otherwise finish into a file nothing shows) and removes the app's own copy — a download
    /// under `files/` or a pasted file under `outgoing/`, never a file the person sent from
    /// elsewhere on the disk. Failures are logged: the message is deleted anyway.
    pub(super) async fn forget_file(&self, record: &MessageRecord) {
        let Some(file) = &record.extra.attachment else {
            return;
        };
        if !file.state.is_final() {
            if let Some(id) = file
                .transfer_id
                .as_deref()
                .and_then(|id| TransferId::parse(id).ok())
            {
                if let Some(running) = self.session.lock().await.as_ref() {
                    if let Err(e) = running.session.cancel_transfer(&id).await {
                        tracing::debug!(transfer = %id, error = %e, "no transfer to stop");
                    }
                }
            }
        }
        let Some(path) = file.local_path.as_deref().map(PathBuf::from) else {
            return;
        };
        let ours = [crate::session::FILES_DIR, OUTGOING_DIR]
            .iter()
            .any(|dir| path.starts_with(self.state.data_dir.join(dir)));
        if ours {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(seq = record.seq, error = %e, "cannot remove a file"),
            }
        }
    }

    /// Where the bytes of message `seq`'s file are here: sent from here, or downloaded
    /// completely.
    ///
    /// # Errors
    /// [`MessengerError::InvalidInput`] when it is not (or no longer) on this device.
    pub fn local_file(
        &self,
        conv: &Conversation,
        seq: i64,
    ) -> Result<(PathBuf, Attachment), MessengerError> {
        let row = self.file_row(conv, seq)?;
        let file = row.file;
        let ready = row.outgoing || file.state == TransferState::Completed;
        match file.local_path.as_deref().map(PathBuf::from) {
            Some(path) if ready && path.is_file() => Ok((path, file)),
            _ => Err(MessengerError::InvalidInput(
                "This file is not on this device (download it first).".into(),
            )),
        }
    }

    /// Copies message `seq`'s file into `dir` (a new file: `name (1).ext` when taken); returns
    /// its path.
    ///
    /// # Errors
    /// [`MessengerError::InvalidInput`] when the file is not here or cannot be copied.
    pub async fn save_file(
        &self,
        conv: &Conversation,
        seq: i64,
        dir: &Path,
    ) -> Result<PathBuf, MessengerError> {
        let (src, file) = self.local_file(conv, seq)?;
        let dir = dir.to_owned();
        let name = check_name(&file.name).unwrap_or_else(|_| "file".into());
        tokio::task::spawn_blocking(move || -> Result<PathBuf, MessengerError> {
            std::fs::create_dir_all(&dir)
                .map_err(io_error("The downloads folder cannot be made"))?;
            let (dest, out) =
                create_unique(&dir, &name).map_err(io_error("The file cannot be saved"))?;
            copy_new(&src, &dest, out).map_err(io_error("The file cannot be saved"))?;
            Ok(dest)
        })
        .await
        .map_err(|e| MessengerError::Internal(format!("saving stopped: {e}")))?
    }

    /// Copies message `seq`'s file to `dest` (what the save dialog returned; the dialog asked
    /// before replacing a file).
    ///
    /// # Errors
    /// [`MessengerError::InvalidInput`] when the file is not here or cannot be copied.
    pub async fn save_file_to(
        &self,
        conv: &Conversation,
        seq: i64,
        dest: &Path,
    ) -> Result<PathBuf, MessengerError> {
        let (src, _) = self.local_file(conv, seq)?;
        let dest = dest.to_owned();
        tokio::task::spawn_blocking(move || -> Result<PathBuf, MessengerError> {
            if src == dest {
                return Ok(dest);
            }
            std::fs::copy(&src, &dest).map_err(io_error("The file cannot be saved"))?;
            Ok(dest)
        })
        .await
        .map_err(|e| MessengerError::Internal(format!("saving stopped: {e}")))?
    }

    /// The path of message `seq`'s file for the system to open, unless opening would run it.
    ///
    /// # Errors
    /// [`MessengerError::InvalidInput`] when it is not here or would be run.
    pub fn file_to_open(&self, conv: &Conversation, seq: i64) -> Result<PathBuf, MessengerError> {
        let (path, _) = self.local_file(conv, seq)?;
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        if RUN_ON_OPEN.contains(&ext.as_str()) {
            return Err(MessengerError::InvalidInput(
                "Lattice does not open programs or scripts; save the file and look at it first."
                    .into(),
            ));
        }
        Ok(path)
    }

    /// The bytes of a picture for the viewer (at most [`MAX_VIEWER_BYTES`]).
    ///
    /// # Errors
    /// [`MessengerError::InvalidInput`] for a file that is no picture, not here or too large.
    pub async fn picture_bytes(
        &self,
        conv: &Conversation,
        seq: i64,
    ) -> Result<Vec<u8>, MessengerError> {
        let (path, file) = self.local_file(conv, seq)?;
        if !file.is_image() {
            return Err(MessengerError::InvalidInput(
                "Only pictures open in the viewer; use Open.".into(),
            ));
        }
        tokio::task::spawn_blocking(move || -> Result<Vec<u8>, MessengerError> {
            let len = std::fs::metadata(&path)
                .map_err(io_error("The picture cannot be read"))?
                .len();
            if len > MAX_VIEWER_BYTES {
                return Err(MessengerError::InvalidInput(
                    "That picture is too large for the viewer; use Open.".into(),
                ));
            }
            std::fs::read(&path).map_err(io_error("The picture cannot be read"))
        })
        .await
        .map_err(|e| MessengerError::Internal(format!("reading stopped: {e}")))?
    }
}

/// The file of a message, or a readable refusal.
fn attachment_of(record: &MessageRecord) -> Result<Attachment, MessengerError> {
    record
        .extra
        .attachment
        .clone()
        .ok_or_else(|| MessengerError::InvalidInput("That message has no file.".into()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn names_from_the_page_are_one_bounded_path_component() {
        assert_eq!(check_name(" photo.png ").unwrap(), "photo.png");
        for bad in ["", "..", ".", "a/b", "a\\b", "a\u{0}b", &"x".repeat(256)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_name("a\u{7}b").is_err());
    }

    #[test]
    fn a_saved_copy_never_replaces_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.txt");
        std::fs::write(&src, b"new bytes").unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        std::fs::write(out.join("report.txt"), b"old").unwrap();
        let (first, file) = create_unique(&out, "report.txt").unwrap();
        copy_new(&src, &first, file).unwrap();
        let (second, file) = create_unique(&out, "report.txt").unwrap();
        copy_new(&src, &second, file).unwrap();
        assert_eq!(first, out.join("report (1).txt"));
        assert_eq!(second, out.join("report (2).txt"));
        assert_eq!(std::fs::read(out.join("report.txt")).unwrap(), b"old");
        assert_eq!(std::fs::read(&second).unwrap(), b"new bytes");
    }
}
