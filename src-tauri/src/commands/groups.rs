//! The group commands: *New group*, a group's history, composer and read mark, and its member
//! panel (members with safety numbers, invite, remove, rename, leave). Group ids arrive as hex
//! and member names as client ids; both are checked here or in the messenger, once.

use super::Shared;
use crate::error::CommandError;
use crate::messenger::{validate_client_id, MAX_GROUP_INVITE};
use crate::views::{GroupDetailsView, GroupMessageView, GroupPage, GroupView};

/// Messages per page when the page does not say.
const DEFAULT_GROUP_PAGE: u32 = 50;

/// Member names from the page, each checked; more than a group can hold is refused before
/// any is parsed.
fn member_ids(members: &[String]) -> Result<Vec<lattice_protocol::ClientId>, CommandError> {
    if members.len() > MAX_GROUP_INVITE {
        return Err(CommandError::InvalidInput(format!(
            "A group has at most {} members.",
            MAX_GROUP_INVITE + 1
        )));
    }
    Ok(members
        .iter()
        .map(|m| validate_client_id(m))
        .collect::<Result<_, _>>()?)
}

/// Creates a group named `name` with `members` (client ids); its conversation is listed when
/// this returns.
#[tauri::command]
pub async fn create_group(
    messenger: Shared<'_>,
    name: String,
    members: Vec<String>,
) -> Result<GroupView, CommandError> {
    let members = member_ids(&members)?;
    Ok(messenger.create_group(&name, &members).await?)
}

/// A page of a group's history, oldest first: the latest `limit` lines or those before
/// `before` (a `seq`).
#[tauri::command]
pub async fn load_group_messages(
    messenger: Shared<'_>,
    group_id: String,
    before: Option<i64>,
    limit: Option<u32>,
) -> Result<GroupPage, CommandError> {
    Ok(messenger.load_group_messages(&group_id, before, limit.unwrap_or(DEFAULT_GROUP_PAGE))?)
}

/// Stores a message to the group durably and sends it (now, or once connected); with
/// `reply_to` (a line's `seq`) it answers that message, quoting it.
#[tauri::command]
pub async fn send_group_message(
    messenger: Shared<'_>,
    group_id: String,
    text: String,
    reply_to: Option<i64>,
) -> Result<GroupMessageView, CommandError> {
    Ok(messenger.send_group_message(&group_id, &text, reply_to)?)
}

/// The group's conversation is shown: clears its unread count.
#[tauri::command]
pub async fn mark_group_read(messenger: Shared<'_>, group_id: String) -> Result<(), CommandError> {
    Ok(messenger.mark_group_read(&group_id).await?)
}

/// The person started (`typing`) or stopped typing in the group.
#[tauri::command]
pub async fn group_typing(
    messenger: Shared<'_>,
    group_id: String,
    typing: bool,
) -> Result<(), CommandError> {
    Ok(messenger.group_typing(&group_id, typing).await?)
}

/// The member panel: members with their safety numbers, and the group's epoch.
#[tauri::command]
pub async fn group_details(
    messenger: Shared<'_>,
    group_id: String,
) -> Result<GroupDetailsView, CommandError> {
    Ok(messenger.group_details(&group_id)?)
}

/// Adds `members` to the group.
#[tauri::command]
pub async fn invite_to_group(
    messenger: Shared<'_>,
    group_id: String,
    members: Vec<String>,
) -> Result<GroupDetailsView, CommandError> {
    let members = member_ids(&members)?;
    Ok(messenger.invite_to_group(&group_id, &members).await?)
}

/// Removes `member` from the group (the group's keys rotate).
#[tauri::command]
pub async fn remove_from_group(
    messenger: Shared<'_>,
    group_id: String,
    member: String,
) -> Result<GroupDetailsView, CommandError> {
    let member = validate_client_id(&member)?;
    Ok(messenger.remove_from_group(&group_id, &member).await?)
}

/// Renames the group for everyone in it.
#[tauri::command]
pub async fn rename_group(
    messenger: Shared<'_>,
    group_id: String,
    name: String,
) -> Result<GroupDetailsView, CommandError> {
    Ok(messenger.rename_group(&group_id, &name).await?)
}

/// Asks to leave the group.
#[tauri::command]
pub async fn leave_group(messenger: Shared<'_>, group_id: String) -> Result<(), CommandError> {
    Ok(messenger.leave_group(&group_id).await?)
}
