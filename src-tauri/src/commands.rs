//! The commands the page may invoke. Each is a thin adapter: it takes camelCase arguments, parses
//! ids once (a name from the page becomes a `ClientId` here, and only here), calls the
//! [`Messenger`], and returns a view or a [`CommandError`] (`{kind, code?, message}`) converted
//! from the service's own error. The list is
//! also the app manifest in `build.rs`, from which the capability file grants exactly these.

pub mod devices;
pub mod files;
pub mod groups;

use std::sync::Arc;

use tauri::{AppHandle, Runtime, State};

use crate::clock;
use crate::error::CommandError;
use crate::messenger::{
    validate_client_id, validate_fingerprint, validate_server_url, Conversation, FileMessageView,
    Messenger,
};
use crate::storage::backup::{self, BackupCounts, KdfParams, Passphrase};
use crate::storage::export::{self, ExportFormat};
use crate::storage::search::SearchQuery;
use crate::storage::settings::{self, ServerMode, SettingsPatch};
use crate::views::{
    Bootstrap, MessagePage, MessageView, SearchHitView, SearchResults, VersionView,
};

/// Messages per page when the page does not say.
const DEFAULT_PAGE: u32 = 50;
/// Search results per call when the page does not say.
const DEFAULT_SEARCH_RESULTS: u32 = 50;
/// Longest file path the page may give for a backup or an export, in bytes.
pub const MAX_PATH_BYTES: usize = 4096;
/// Longest link the page may ask to open, in bytes.
pub const MAX_LINK_BYTES: usize = 2048;

type Shared<'a> = State<'a, Arc<Messenger>>;

/// Everything needed to draw the window.
#[tauri::command]
pub async fn bootstrap(messenger: Shared<'_>) -> Result<Bootstrap, CommandError> {
    if let Some(t) = clock::since_start() {
        // The page's first call: its scripts are running. Logged for start-up measurements.
        tracing::info!(ms = t.as_millis() as u64, "page bootstrapping");
    }
    Ok(messenger.bootstrap()?)
}

/// First run: name, server choice; creates the identity, saves the settings, connects.
/// A server that cannot be reached is not an error here: the indicator shows it.
#[tauri::command]
pub async fn complete_setup<R: Runtime>(
    app: AppHandle<R>,
    messenger: Shared<'_>,
    client_id: String,
    server_mode: ServerMode,
    server_url: Option<String>,
) -> Result<Bootstrap, CommandError> {
    let client_id = validate_client_id(&client_id)?;
    let settings = messenger.complete_setup(client_id, server_mode, server_url.as_deref())?;
    settings::save(&app, messenger.data_dir(), &settings)?;
    if let Err(e) = messenger.restart_session().await {
        messenger.notice(CommandError::from(e).notice());
    }
    Ok(messenger.bootstrap()?)
}

/// A page of history with `peerId`, oldest first: the latest `limit` messages, those before
/// `before`, or those after `after` (both a `seq`). Opening a conversation (neither given) also
/// fetches the peer's key if none is pinned.
#[tauri::command]
pub async fn load_messages(
    messenger: Shared<'_>,
    peer_id: String,
    before: Option<i64>,
    after: Option<i64>,
    limit: Option<u32>,
) -> Result<MessagePage, CommandError> {
    let peer = validate_client_id(&peer_id)?;
    Ok(messenger
        .load_messages(&peer, before, after, limit.unwrap_or(DEFAULT_PAGE))
        .await?)
}

/// Stores a message durably and sends it (now, or once connected); with `replyTo` (a `seq`) it
/// answers that message of the conversation.
#[tauri::command]
pub async fn send_message(
    messenger: Shared<'_>,
    peer_id: String,
    text: String,
    reply_to: Option<i64>,
) -> Result<MessageView, CommandError> {
    let peer = validate_client_id(&peer_id)?;
    Ok(messenger.send_message(&peer, &text, reply_to).await?)
}

/// The conversation is shown: clears its unread count and sends the read receipts owed (when
/// they are on).
#[tauri::command]
pub async fn mark_read(messenger: Shared<'_>, peer_id: String) -> Result<(), CommandError> {
    Ok(messenger
        .conversation_seen(&validate_client_id(&peer_id)?)
        .await?)
}

/// Replaces the text of one of our messages (`seq`) in the chat with `peerId` or the group
/// `groupId`, here and for the others.
#[tauri::command]
pub async fn edit_message(
    messenger: Shared<'_>,
    peer_id: Option<String>,
    group_id: Option<String>,
    seq: i64,
    text: String,
) -> Result<FileMessageView, CommandError> {
    Ok(
        match files::conversation(peer_id.as_deref(), group_id.as_deref())? {
            Conversation::Peer(peer) => {
                FileMessageView::Chat(messenger.edit_message(&peer, seq, &text).await?)
            }
            Conversation::Group(group) => {
                FileMessageView::Group(messenger.edit_group_message(&group, seq, &text)?)
            }
        },
    )
}

/// Deletes a message (`seq`) for everyone (ours only) or on this device (1:1 chats only).
#[tauri::command]
pub async fn delete_message(
    messenger: Shared<'_>,
    peer_id: Option<String>,
    group_id: Option<String>,
    seq: i64,
    for_everyone: bool,
) -> Result<(), CommandError> {
    match files::conversation(peer_id.as_deref(), group_id.as_deref())? {
        Conversation::Peer(peer) => messenger.delete_message(&peer, seq, for_everyone).await?,
        Conversation::Group(group) => messenger.delete_group_message(&group, seq, for_everyone)?,
    }
    Ok(())
}

/// Reacts to a message (`seq`) with `emoji`, or takes that reaction back.
#[tauri::command]
pub async fn react(
    messenger: Shared<'_>,
    peer_id: Option<String>,
    group_id: Option<String>,
    seq: i64,
    emoji: String,
) -> Result<FileMessageView, CommandError> {
    Ok(
        match files::conversation(peer_id.as_deref(), group_id.as_deref())? {
            Conversation::Peer(peer) => {
                FileMessageView::Chat(messenger.react(&peer, seq, &emoji).await?)
            }
            Conversation::Group(group) => {
                FileMessageView::Group(messenger.react_in_group(&group, seq, &emoji)?)
            }
        },
    )
}

/// The earlier versions of an edited message, oldest first.
#[tauri::command]
pub async fn message_versions(
    messenger: Shared<'_>,
    peer_id: Option<String>,
    group_id: Option<String>,
    seq: i64,
) -> Result<Vec<VersionView>, CommandError> {
    Ok(
        match files::conversation(peer_id.as_deref(), group_id.as_deref())? {
            Conversation::Peer(peer) => messenger.message_versions(&peer, seq)?,
            Conversation::Group(group) => messenger.group_message_versions(&group, seq)?,
        },
    )
}

/// The person started (`typing`) or stopped typing in the conversation.
#[tauri::command]
pub async fn typing(
    messenger: Shared<'_>,
    peer_id: String,
    typing: bool,
) -> Result<(), CommandError> {
    let peer = validate_client_id(&peer_id)?;
    messenger.typing(&peer, typing).await;
    Ok(())
}

/// Answers a server question (text, a choice, or `true`/`false` for a confirm).
#[tauri::command]
pub async fn answer_question(
    messenger: Shared<'_>,
    question_id: String,
    response: serde_json::Value,
) -> Result<(), CommandError> {
    Ok(messenger.answer_question(&question_id, response).await?)
}

/// Dismisses a question without answering; the server lets it expire.
#[tauri::command]
pub async fn dismiss_question(
    messenger: Shared<'_>,
    question_id: String,
) -> Result<(), CommandError> {
    messenger.close_question(&question_id);
    Ok(())
}

/// Changes settings; reconnects when the name or the server changed.
#[tauri::command]
pub async fn update_settings<R: Runtime>(
    app: AppHandle<R>,
    messenger: Shared<'_>,
    patch: SettingsPatch,
) -> Result<Bootstrap, CommandError> {
    let mut patch = patch;
    let client_id = patch
        .client_id
        .as_deref()
        .map(validate_client_id)
        .transpose()?;
    if let Some(url) = &patch.server_url {
        patch.server_url = Some(validate_server_url(url)?);
    }
    if patch.host_port == Some(0) {
        return Err(CommandError::InvalidInput(
            "Choose a port between 1 and 65535.".into(),
        ));
    }
    patch.check().map_err(CommandError::InvalidInput)?;
    let reconnect = patch.touches_connection();
    let mut settings = messenger.settings();
    patch.apply(&mut settings, client_id);
    settings::save(&app, messenger.data_dir(), &settings)?;
    messenger.set_settings(settings);
    if reconnect {
        if let Err(e) = messenger.restart_session().await {
            messenger.notice(CommandError::from(e).notice());
        }
    }
    Ok(messenger.bootstrap()?)
}

/// Accepts a contact's new identity key: the one whose safety number (`fingerprint`) the person
/// compared; any other key is refused.
#[tauri::command]
pub async fn accept_key_change(
    messenger: Shared<'_>,
    peer_id: String,
    fingerprint: String,
) -> Result<(), CommandError> {
    let peer = validate_client_id(&peer_id)?;
    let fingerprint = validate_fingerprint(&fingerprint)?;
    Ok(messenger.accept_key_change(&peer, &fingerprint).await?)
}

/// Marks a contact verified or not, after comparing safety numbers.
#[tauri::command]
pub async fn set_verified(
    messenger: Shared<'_>,
    peer_id: String,
    verified: bool,
) -> Result<(), CommandError> {
    Ok(messenger.set_verified(&validate_client_id(&peer_id)?, verified)?)
}

/// Reconnects now (the Retry button of the offline indicator).
#[tauri::command]
pub async fn reconnect(messenger: Shared<'_>) -> Result<(), CommandError> {
    Ok(messenger.restart_session().await?)
}

/// Asks the server for its multi-round demo question.
#[tauri::command]
pub async fn demo_question(messenger: Shared<'_>) -> Result<(), CommandError> {
    Ok(messenger.demo_question().await?)
}

/// Searches the local history: the conversation with `peerId`, the group `groupId`, or all of
/// them, groups included. Newest first; what the person typed is searched as words, never as
/// query syntax.
#[tauri::command]
pub async fn search_messages(
    messenger: Shared<'_>,
    query: String,
    peer_id: Option<String>,
    group_id: Option<String>,
    limit: Option<u32>,
) -> Result<SearchResults, CommandError> {
    let peer = peer_id.as_deref().map(validate_client_id).transpose()?;
    let group = group_id
        .as_deref()
        .map(crate::messenger::parse_group_id)
        .transpose()?;
    let query = SearchQuery::parse(&query)?;
    let limit = limit.unwrap_or(DEFAULT_SEARCH_RESULTS);
    let db = messenger.db();
    let (mut hits, mut has_more) = match (&peer, &group) {
        (Some(_), Some(_)) => {
            return Err(CommandError::InvalidInput(
                "Search one conversation or all of them, not a person and a group.".into(),
            ))
        }
        (_, Some(_)) => (Vec::new(), false),
        _ => {
            let (hits, more) = db.search(&query, peer.as_ref(), limit)?;
            (hits.into_iter().map(SearchHitView::from).collect(), more)
        }
    };
    if peer.is_none() {
        let (found, more) = db.search_groups(&query, group.as_deref(), limit)?;
        hits.extend(found.into_iter().filter_map(SearchHitView::from_group));
        has_more |= more;
        // Both lists are newest first and as long as the limit at most: the newest of both.
        hits.sort_by_key(|h| std::cmp::Reverse(h.at));
        let limit =
            usize::try_from(limit.clamp(1, crate::storage::search::MAX_RESULTS)).unwrap_or(1);
        if hits.len() > limit {
            hits.truncate(limit);
            has_more = true;
        }
    }
    Ok(SearchResults { hits, has_more })
}

/// The unsent text of the conversation with `peerId`, if any.
#[tauri::command]
pub async fn load_draft(
    messenger: Shared<'_>,
    peer_id: String,
) -> Result<Option<String>, CommandError> {
    Ok(messenger.db().draft(&validate_client_id(&peer_id)?)?)
}

/// Keeps `text` as the unsent text of the conversation with `peerId` (empty removes it); the
/// peer list shows it.
#[tauri::command]
pub async fn save_draft(
    messenger: Shared<'_>,
    peer_id: String,
    text: String,
) -> Result<(), CommandError> {
    Ok(messenger.save_draft(&validate_client_id(&peer_id)?, &text)?)
}

/// Opens a web link from a message in the system browser (the page asked the person first).
/// Only `http` and `https` links are opened: never a file, a program or another scheme.
#[tauri::command]
pub async fn open_link<R: Runtime>(app: AppHandle<R>, url: String) -> Result<(), CommandError> {
    let url = validate_link(&url)?;
    use tauri_plugin_opener::OpenerExt as _;
    app.opener()
        .open_url(url, None::<&str>)
        .map_err(|e| CommandError::Internal(format!("Could not open the link: {e}")))
}

/// A link the app may hand to the browser: `http(s)://` with a host, no spaces or control
/// characters, at most [`MAX_LINK_BYTES`].
///
/// # Errors
/// [`CommandError::InvalidInput`] saying why not.
pub fn validate_link(url: &str) -> Result<String, CommandError> {
    let refuse = |why: &str| {
        Err(CommandError::InvalidInput(format!(
            "Lattice does not open that link: {why}."
        )))
    };
    if url.len() > MAX_LINK_BYTES {
        return refuse("it is too long");
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return refuse("it contains spaces or control characters");
    }
    let lower = url.to_ascii_lowercase();
    let rest = match lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"))
    {
        Some(rest) => rest,
        None => return refuse("only web links (http and https) are opened"),
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || host.starts_with('@') || host.starts_with(':') {
        return refuse("it has no host");
    }
    Ok(url.to_owned())
}

/// Where backups and exports are suggested: `LATTICE_BACKUP_DIR` if set (tests point it at a
/// temporary folder), else the person's documents folder, else their home.
#[tauri::command]
pub async fn backup_folder<R: Runtime>(app: AppHandle<R>) -> Result<String, CommandError> {
    use tauri::Manager as _;
    let dir = std::env::var_os(BACKUP_DIR_ENV)
        .map(std::path::PathBuf::from)
        .or_else(|| app.path().document_dir().ok())
        .or_else(|| app.path().home_dir().ok())
        .ok_or_else(|| CommandError::Internal("No documents or home folder.".into()))?;
    Ok(dir.display().to_string())
}

/// The environment variable that overrides [`backup_folder`].
pub const BACKUP_DIR_ENV: &str = "LATTICE_BACKUP_DIR";

/// What a backup or an export wrote.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportSummary {
    /// The file written.
    pub path: String,
    /// What it holds.
    #[serde(flatten)]
    pub counts: BackupCounts,
}

/// Writes a backup of this profile (identity, settings, contacts, pinned keys, history) to a
/// new file at `path`, sealed with `passphrase` (at least 12 characters; the page asks twice).
#[tauri::command]
pub async fn export_backup(
    messenger: Shared<'_>,
    path: String,
    passphrase: String,
) -> Result<ExportSummary, CommandError> {
    let passphrase = Passphrase::for_backup(passphrase)?;
    let path = validate_file_path(&path)?;
    let db = Arc::clone(messenger.db());
    let dir = messenger.data_dir().to_owned();
    let settings = messenger.settings();
    let target = path.clone();
    // Argon2 and the history take a while: off the async workers.
    let counts = tauri::async_runtime::spawn_blocking(move || {
        backup::export(
            &db,
            &dir,
            &settings,
            &target,
            &passphrase,
            KdfParams::RECOMMENDED,
            &mut rand_core::OsRng,
        )
    })
    .await
    .map_err(|e| CommandError::Internal(format!("The backup stopped: {e}")))??;
    tracing::info!(messages = counts.messages, "backup written");
    Ok(ExportSummary {
        path: path.display().to_string(),
        counts,
    })
}

/// Restores the backup at `path` onto this profile, which must be fresh (first run not done,
/// no history); on any error nothing changes. Then connects as the restored identity.
#[tauri::command]
pub async fn restore_backup<R: Runtime>(
    app: AppHandle<R>,
    messenger: Shared<'_>,
    path: String,
    passphrase: String,
) -> Result<Bootstrap, CommandError> {
    let passphrase = Passphrase::for_restore(passphrase)?;
    let path = validate_file_path(&path)?;
    let db = Arc::clone(messenger.db());
    let dir = messenger.data_dir().to_owned();
    let restored = tauri::async_runtime::spawn_blocking(move || {
        backup::restore(&db, &dir, &path, &passphrase)
    })
    .await
    .map_err(|e| CommandError::Internal(format!("The restore stopped: {e}")))??;
    settings::save(&app, messenger.data_dir(), &restored.settings)?;
    messenger.adopt_restored(restored.identity, restored.settings);
    if let Err(e) = messenger.restart_session().await {
        messenger.notice(CommandError::from(e).notice());
    }
    Ok(messenger.bootstrap()?)
}

/// Writes the conversation with `peerId` (or the history of the group `groupId`: exactly one
/// of the two) to a new file at `path` as `html` or `json`.
#[tauri::command]
pub async fn export_conversation(
    messenger: Shared<'_>,
    peer_id: Option<String>,
    group_id: Option<String>,
    path: String,
    format: ExportFormat,
) -> Result<ExportSummary, CommandError> {
    enum Exported {
        Chat(lattice_protocol::ClientId),
        Group { key: String, name: String },
    }
    let conversation = match (peer_id, group_id) {
        (Some(peer), None) => Exported::Chat(validate_client_id(&peer)?),
        (None, Some(group)) => {
            let key = crate::messenger::parse_group_id(&group)?;
            let name = messenger
                .db()
                .group(&key)?
                .ok_or_else(|| CommandError::InvalidInput("That group is not known here.".into()))?
                .name;
            Exported::Group { key, name }
        }
        _ => {
            return Err(CommandError::InvalidInput(
                "Name either a person or a group.".into(),
            ))
        }
    };
    let path = validate_file_path(&path)?;
    let me = messenger
        .settings()
        .client_id
        .map_or_else(|| "me".to_owned(), |id| id.as_str().to_owned());
    let db = Arc::clone(messenger.db());
    let target = path.clone();
    let messages = tauri::async_runtime::spawn_blocking(move || match conversation {
        Exported::Chat(peer) => {
            export::export_conversation(&db, &me, &peer, format, &target, clock::now_ms())
        }
        Exported::Group { key, name } => {
            export::export_group(&db, &me, &key, &name, format, &target, clock::now_ms())
        }
    })
    .await
    .map_err(|e| CommandError::Internal(format!("The export stopped: {e}")))??;
    Ok(ExportSummary {
        path: path.display().to_string(),
        counts: BackupCounts {
            messages,
            ..BackupCounts::default()
        },
    })
}

/// A path the page gave for a backup or an export: absolute, at most [`MAX_PATH_BYTES`], no
/// control characters.
///
/// # Errors
/// [`CommandError::InvalidInput`] saying why not.
pub fn validate_file_path(path: &str) -> Result<std::path::PathBuf, CommandError> {
    let path = path.trim();
    if path.is_empty() {
        return Err(CommandError::InvalidInput("Choose a file first.".into()));
    }
    if path.len() > MAX_PATH_BYTES || path.chars().any(char::is_control) {
        return Err(CommandError::InvalidInput(
            "That file name is too long or has control characters.".into(),
        ));
    }
    let path = std::path::PathBuf::from(path);
    if !path.is_absolute() {
        return Err(CommandError::InvalidInput(
            "Give the full path of the file, starting from the top folder.".into(),
        ));
    }
    Ok(path)
}
