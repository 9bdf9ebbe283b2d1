//! The session's part of files: the peer's transfer calls, and on the event path the storing of
//! an incoming file message, 1:1 or in a group (with its offer, before the peer acknowledges
//! it), and the start of its download when it is small enough ([`AutoDownload`]).
//!
//! The library keeps each transfer's journal under `transfers/` in the data directory and
//! resumes unfinished ones by itself on start; received files go to `files/`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use lattice_peer::{
    FileMeta, FileOffer, GroupId, GroupMessage, IncomingMessage, TransferId, TransferProgress,
};
use lattice_protocol::{ClientId, MessageId};

use super::{Ctx, Session, SessionError};
use crate::clock::now_ms;
use crate::contract::DeliveryStatus;
use crate::contract::ErrorKind;
use crate::events::SessionEvent;
use crate::storage::files::{self, FileHome, NewAttachment, Thumbnail, TransferState};
use crate::storage::groups::{GroupLineKind, NewGroupLine};
use crate::storage::message::Received;
use crate::views::Notice;

/// The folder of the data directory where the library journals transfers.
pub const TRANSFERS_DIR: &str = "transfers";
/// The folder of the data directory where received files are downloaded.
pub const FILES_DIR: &str = "files";
/// Longest part of a received file's name kept in its file name on disk, in bytes (the
/// message's `seq` goes in front; file systems allow 255).
const MAX_DISK_NAME_BYTES: usize = 200;

/// The auto-download limit, shared with the messenger, which changes it with the settings.
#[derive(Debug, Clone, Default)]
pub struct AutoDownload(Arc<AtomicU64>);

impl AutoDownload {
    /// A limit of `bytes` (0: nothing downloads by itself).
    pub fn new(bytes: u64) -> Self {
        Self(Arc::new(AtomicU64::new(bytes)))
    }

    /// Sets the limit.
    pub fn set(&self, bytes: u64) {
        self.0.store(bytes, Ordering::Relaxed);
    }

    /// Whether a file of `size` bytes downloads by itself.
    pub fn covers(&self, size: u64) -> bool {
        size <= self.0.load(Ordering::Relaxed)
    }
}

/// Where the received file of message `seq` of `home` named `name` is written:
/// `files/<seq>-<name>` (`files/g<seq>-<name>` for a group's: the two histories count their
/// own `seq`), the name made safe for a file system (the library already refused separators
/// and control characters; a leading dot would hide it).
pub fn download_path(data_dir: &Path, home: FileHome, seq: i64, name: &str) -> PathBuf {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c == '/' || c == '\\' || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    let cleaned = files::truncate_bytes(cleaned.trim_start_matches('.'), MAX_DISK_NAME_BYTES);
    let cleaned = if cleaned.is_empty() { "file" } else { cleaned };
    let prefix = match home {
        FileHome::Chat => "",
        FileHome::Group => "g",
    };
    data_dir
        .join(FILES_DIR)
        .join(format!("{prefix}{seq}-{cleaned}"))
}

/// The library's thumbnail as the storage keeps it.
pub fn thumbnail_from_offer(t: &lattice_peer::Thumbnail) -> Thumbnail {
    Thumbnail {
        mime: t.mime.clone(),
        width: t.width,
        height: t.height,
        bytes: t.bytes.clone(),
    }
}

/// The storage's thumbnail as the library sends it.
pub fn thumbnail_for_offer(t: Thumbnail) -> lattice_peer::Thumbnail {
    lattice_peer::Thumbnail {
        mime: t.mime,
        width: t.width,
        height: t.height,
        bytes: t.bytes,
    }
}

impl Session {
    /// Starts sending the file at `path` to `to` (see [`lattice_peer::MessagingPeer::send_file`]).
    ///
    /// # Errors
    /// [`SessionError::Peer`]: an original client, no connection, an unreadable file, too many
    /// transfers.
    pub async fn send_file(
        &self,
        to: &ClientId,
        path: &Path,
        meta: FileMeta,
    ) -> Result<TransferId, SessionError> {
        Ok(self.ctx.peer.send_file(to, path, meta).await?)
    }

    /// Starts sending the file at `path` to group `group` (see
    /// [`lattice_peer::MessagingPeer::send_group_file`]).
    ///
    /// # Errors
    /// [`SessionError::Peer`]: not in the group, no connection, an unreadable file, too many
    /// transfers.
    pub async fn send_group_file(
        &self,
        group: &GroupId,
        path: &Path,
        meta: FileMeta,
    ) -> Result<TransferId, SessionError> {
        Ok(self.ctx.peer.send_group_file(group, path, meta).await?)
    }

    /// Starts (or finds) the download of `offer`, which came in message `message_id` from
    /// `from`, to `dest`.
    ///
    /// # Errors
    /// [`SessionError::Peer`].
    pub fn download_file(
        &self,
        from: &ClientId,
        message_id: &MessageId,
        offer: &FileOffer,
        dest: &Path,
    ) -> Result<TransferId, SessionError> {
        Ok(self.ctx.peer.download_file(from, message_id, offer, dest)?)
    }

    /// Pauses a transfer.
    ///
    /// # Errors
    /// [`SessionError::Peer`] for an unknown or finished transfer.
    pub fn pause_transfer(&self, id: &TransferId) -> Result<(), SessionError> {
        Ok(self.ctx.peer.pause_transfer(id)?)
    }

    /// Resumes a paused or failed transfer.
    ///
    /// # Errors
    /// [`SessionError::Peer`] for an unknown or finished transfer.
    pub fn resume_transfer(&self, id: &TransferId) -> Result<(), SessionError> {
        Ok(self.ctx.peer.resume_transfer(id)?)
    }

    /// Cancels a transfer.
    ///
    /// # Errors
    /// [`SessionError::Peer`] for an unknown or finished transfer.
    pub async fn cancel_transfer(&self, id: &TransferId) -> Result<(), SessionError> {
        Ok(self.ctx.peer.cancel_transfer(id).await?)
    }

    /// Where transfer `id` is now, if the library still lists it.
    pub fn transfer(&self, id: &TransferId) -> Option<TransferProgress> {
        self.ctx.peer.transfers().into_iter().find(|p| &p.id == id)
    }
}

/// What the history keeps of an incoming offer: the preview in its own columns, the offer
/// without it (what a download needs).
fn received_attachment(offer: &FileOffer) -> NewAttachment {
    NewAttachment {
        name: offer.name.clone(),
        size: offer.size,
        mime: offer.mime.clone(),
        thumbnail: offer.thumbnail.as_ref().map(thumbnail_from_offer),
        offer: serde_json::to_string(&FileOffer {
            thumbnail: None,
            ..offer.clone()
        })
        .ok(),
        local_path: None,
        transfer_id: None,
        state: TransferState::Offered,
    }
}

impl Ctx {
    /// A file sent to group `key`: stored with its offer as a line of the group (before the
    /// handler returns and the library acknowledges it), then downloaded at once when it is
    /// within the auto-download limit (MLS authenticated its sender as a member).
    pub(super) fn on_group_file(&self, key: &str, m: &GroupMessage, offer: &FileOffer, at: i64) {
        let line = NewGroupLine {
            group_id: key,
            kind: GroupLineKind::Message,
            sender: Some(&m.from),
            message_id: m.message_id.as_str(),
            outgoing: false,
            body: &offer.name,
            at,
            status: DeliveryStatus::Received,
        };
        let mut stored = match self
            .db
            .insert_group_file(&line, &received_attachment(offer))
        {
            Ok(Some(stored)) => stored,
            Ok(None) => return,
            Err(e) => {
                tracing::error!(group = key, from = %m.from, error = %e, "cannot store a group file");
                self.up(SessionEvent::Notice(Notice::new(
                    ErrorKind::Storage,
                    format!("A file from {} in a group could not be saved: {e}", m.from),
                )));
                return;
            }
        };
        if self.auto_download.covers(offer.size) {
            let dest = download_path(&self.data_dir, FileHome::Group, stored.seq, &offer.name);
            match self
                .peer
                .download_file(&m.from, &m.message_id, offer, &dest)
            {
                Ok(transfer) => {
                    let dest = dest.to_string_lossy();
                    match self.db.start_transfer_in(
                        FileHome::Group,
                        stored.seq,
                        transfer.as_str(),
                        &dest,
                    ) {
                        Ok(()) => {
                            if let Ok(Some(updated)) = self.db.group_line(key, stored.seq) {
                                stored = updated;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(seq = stored.seq, error = %e, "cannot record a group download")
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(group = key, from = %m.from, error = %e, "the automatic download did not start");
                }
            }
        }
        self.up(SessionEvent::GroupLine(stored));
    }

    /// An incoming file message: stored with its offer (before the handler returns and the
    /// peer acknowledges it), then downloaded at once when it is within the auto-download limit
    /// and its sender is authenticated.
    pub(super) fn on_file_message(&self, msg: &IncomingMessage, offer: &FileOffer) {
        let message_id = msg
            .message_id
            .as_ref()
            .map(|id| id.as_str().to_owned())
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let at_ms = i64::try_from(msg.server_timestamp).unwrap_or_else(|_| now_ms());
        let file = received_attachment(offer);
        let stored = self.db.insert_received_file(
            &Received {
                message_id: &message_id,
                peer_id: &msg.from,
                body: &offer.name,
                at_ms,
                sent_at: msg.sent_at.and_then(|t| i64::try_from(t).ok()),
                authenticated: msg.verified,
                read: false,
                reply: None,
            },
            &file,
        );
        let mut record = match stored {
            Ok(Some(record)) => record,
            Ok(None) => return,
            Err(e) => {
                tracing::error!(from = %msg.from, error = %e, "cannot store an incoming file");
                self.up(SessionEvent::Notice(Notice::new(
                    ErrorKind::Storage,
                    format!("A file from {} could not be saved: {e}", msg.from),
                )));
                return;
            }
        };
        if msg.verified && self.auto_download.covers(offer.size) {
            if let Some(id) = msg.message_id.as_ref() {
                let dest = download_path(&self.data_dir, FileHome::Chat, record.seq, &offer.name);
                match self.peer.download_file(&msg.from, id, offer, &dest) {
                    Ok(transfer) => {
                        let dest = dest.to_string_lossy();
                        match self.db.start_transfer(record.seq, transfer.as_str(), &dest) {
                            Ok(()) => {
                                if let Ok(Some(updated)) = self.db.message(&msg.from, record.seq) {
                                    record = updated;
                                }
                            }
                            Err(e) => {
                                tracing::warn!(seq = record.seq, error = %e, "cannot record a download")
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(from = %msg.from, error = %e, "the automatic download did not start");
                    }
                }
            }
        }
        self.up(SessionEvent::Received(record));
    }
}
