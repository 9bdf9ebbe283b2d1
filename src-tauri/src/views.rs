//! What crosses the IPC boundary: the shapes the page receives from commands and events
//! (named in [`crate::contract::Event`]). All fields are `camelCase` on the wire; every status
//! and kind is a [`crate::contract`] enum. Nothing here holds a secret.

use lattice_protocol::ClientId;
use serde::Serialize;

use crate::contract::{
    ConnectionState, DeliveryStatus, ErrorKind, PeerErrorCode, QuestionKind, TransferState,
};
use crate::storage::content::{MessageExtra, StoredReply, Version};
use crate::storage::files::Attachment;
use crate::storage::groups::{GroupLine, GroupLineKind, GroupRecord};
use crate::storage::search::{GroupSearchHit, SearchHit, SnippetPart};
use crate::storage::settings::Settings;
use crate::storage::{MessageRecord, PeerRecord};

/// The first thing the page asks for: enough to draw the whole window.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Bootstrap {
    /// First run not done yet: show the welcome view.
    pub needs_setup: bool,
    /// Current settings.
    pub settings: Settings,
    /// Our own identity, once set up.
    pub me: Option<Me>,
    /// Connection state.
    pub connection: ConnectionView,
    /// The peer list.
    pub peers: Vec<PeerView>,
    /// The group conversations, most recent first.
    pub groups: Vec<GroupView>,
    /// Questions the server asked that are still open.
    pub questions: Vec<QuestionView>,
    /// Where the data lives (shown in settings, useful for troubleshooting).
    pub data_dir: String,
}

/// Our identity as the page shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Me {
    /// Our client id.
    pub client_id: ClientId,
    /// Full 60-digit fingerprint of our identity key, in groups of five.
    pub fingerprint: String,
    /// On a linked device, its device id (`None` on the primary device, which holds the
    /// identity).
    pub device_id: Option<String>,
    /// On a linked device that was removed from its id: when (unix ms). It no longer sends or
    /// receives; its history stays readable.
    pub removed_at: Option<i64>,
}

/// What a new device shows while it waits to be linked (`start_linking`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NewDeviceCode {
    /// The one-time code, as `ABCD-EFGH`, to type on the first device.
    pub code: String,
    /// The safety number of this device's new key: the first device shows it to compare.
    pub fingerprint: String,
    /// How long the code stays valid, in seconds.
    pub valid_secs: u64,
}

/// One row of the peer list.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerView {
    /// The peer's client id.
    pub id: ClientId,
    /// Currently registered on the server.
    pub online: bool,
    /// Speaks `lattice-v1` with a signed identity; false for original (`ml-kem-aes`) clients.
    pub authenticated: bool,
    /// The person compared fingerprints and marked this contact verified.
    pub verified: bool,
    /// An original client: it sent unsigned (`ml-kem-aes`) messages and has no pinned identity.
    pub original: bool,
    /// The peer's identity key changed and the change was not accepted yet.
    pub key_changed: bool,
    /// Messages to and from this peer go over MLS (forward secret, post-compromise secure,
    /// post-quantum key agreement): it is pinned as speaking MLS (docs/mls.md).
    pub mls: bool,
    /// Fingerprint of the pinned identity key.
    pub fingerprint: Option<String>,
    /// Fingerprint of the new, not yet accepted key.
    pub pending_fingerprint: Option<String>,
    /// Unread messages.
    pub unread: i64,
    /// Latest message text (either direction).
    pub last_message: Option<String>,
    /// Latest message time, unix ms.
    pub last_at: Option<i64>,
    /// Whether the latest message is ours.
    pub last_outgoing: bool,
    /// The first line of the unsent draft, if any (shown instead of the latest message).
    pub draft: Option<String>,
}

impl PeerView {
    /// Joins what the disk knows with presence.
    pub fn from_record(r: PeerRecord, online: bool, mls: bool) -> Self {
        Self {
            mls,
            fingerprint: r.identity_key.as_deref().and_then(fingerprint_of),
            key_changed: r.pending_fingerprint.is_some(),
            original: r.sent_unsigned && r.identity_key.is_none(),
            pending_fingerprint: r.pending_fingerprint,
            id: r.peer_id,
            online,
            authenticated: r.authenticated,
            verified: r.user_verified,
            unread: r.unread,
            last_message: r.last_body.map(|b| preview(&b)),
            last_at: r.last_at,
            last_outgoing: r.last_outgoing,
            draft: r.draft.as_deref().map(preview),
        }
    }
}

/// The fingerprint of an identity key given as bytes, `None` if the bytes are not a key.
pub fn fingerprint_of(key: &[u8]) -> Option<String> {
    lattice_crypto::IdentityPublicKey::from_bytes(key)
        .ok()
        .map(|k| k.fingerprint().to_string())
}

/// Longest preview of a message in the peer list, in characters.
const PREVIEW_CHARS: usize = 80;

/// The first line of `body`, at most [`PREVIEW_CHARS`] characters, `…` when cut.
pub(crate) fn preview(body: &str) -> String {
    let line = body.lines().next().unwrap_or("");
    let mut out: String = line.chars().take(PREVIEW_CHARS).collect();
    if line.chars().count() > PREVIEW_CHARS || body.lines().nth(1).is_some() {
        out.push('…');
    }
    out
}

/// One message in a conversation.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageView {
    /// The message id (stable; the page upserts by it).
    pub id: String,
    /// Position in history; the cursor for loading older messages.
    pub seq: i64,
    /// The other side of the conversation.
    pub peer_id: ClientId,
    /// Ours or theirs.
    pub outgoing: bool,
    /// The text.
    pub body: String,
    /// Unix ms.
    pub at: i64,
    /// Where it is on its way: already merged (never older than a status sent before).
    pub status: DeliveryStatus,
    /// For incoming messages: false when the sender is not authenticated (`ml-kem-aes`).
    pub authenticated: bool,
    /// Its reply, edit, tombstone and reactions (fields of this view on the page).
    #[serde(flatten)]
    pub content: ContentView,
    /// The file it carries, for a file message.
    pub file: Option<Box<FileView>>,
    /// For our own message sent from another device of this id: that device (`primary` for
    /// the primary device).
    pub from_device: Option<String>,
}

/// What replies, edits, deletes and reactions add to a message or a group line, as the page
/// shows it (flattened into [`MessageView`] and [`GroupMessageView`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContentView {
    /// The `messageId` it travels with: what a reply quotes. `None` for ours sent by an older
    /// version, and (groups) for ours not sent yet or a file of ours: it cannot be replied to,
    /// edited, deleted for everyone or reacted to then.
    pub wire_id: Option<String>,
    /// Edited: earlier versions can be shown (`message_versions`).
    pub edited: bool,
    /// Deleted for everyone: shown as a tombstone, `body` is empty.
    pub deleted: bool,
    /// The message this one answers.
    pub reply_to: Option<ReplyView>,
    /// Reactions, one entry per emoji, in the order first given, with who gave it.
    pub reactions: Vec<ReactionView>,
    /// Grows with every edit, delete or reaction: the page replaces what it shows when it does.
    pub rev: i64,
}

impl From<MessageExtra> for ContentView {
    /// Everything but the file, which each view carries itself.
    fn from(extra: MessageExtra) -> Self {
        let mut reactions: Vec<ReactionView> = Vec::new();
        for reaction in extra.reactions {
            match reactions.iter_mut().find(|v| v.emoji == reaction.emoji) {
                Some(v) => v.reactors.push(reaction.reactor),
                None => reactions.push(ReactionView {
                    emoji: reaction.emoji,
                    reactors: vec![reaction.reactor],
                }),
            }
        }
        Self {
            wire_id: extra.wire_id,
            edited: extra.edited_at.is_some(),
            deleted: extra.deleted,
            reply_to: extra.reply.map(ReplyView::from),
            reactions,
            rev: extra.rev,
        }
    }
}

/// A file attached to a message, as the conversation shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FileView {
    /// File name (text: the page never puts it in HTML).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// MIME type.
    pub mime: String,
    /// An image the app previews (and opens in its viewer once downloaded).
    pub image: bool,
    /// The sender's preview as a `data:` URL, when there is one.
    pub thumbnail: Option<String>,
    /// The preview's size in pixels (the page reserves the space before it loads).
    pub thumbnail_width: Option<u32>,
    /// See `thumbnail_width`.
    pub thumbnail_height: Option<u32>,
    /// The bytes are on this device (sent from it, or downloaded completely).
    pub local: bool,
    /// Where it stands.
    pub state: TransferState,
    /// Bytes moved so far.
    pub done: u64,
    /// Why it failed, when it did.
    pub error: Option<String>,
}

impl From<Attachment> for FileView {
    fn from(a: Attachment) -> Self {
        use base64::Engine as _;
        let local = a.local_path.is_some()
            && (a.state == TransferState::Completed || a.transfer_id.is_none());
        let image = a.is_image();
        let (thumbnail, thumbnail_width, thumbnail_height) = match a.thumbnail {
            Some(t) if crate::storage::files::is_previewable(&t.mime) => (
                Some(format!(
                    "data:{};base64,{}",
                    t.mime,
                    base64::engine::general_purpose::STANDARD.encode(&t.bytes)
                )),
                Some(t.width),
                Some(t.height),
            ),
            _ => (None, None, None),
        };
        Self {
            name: a.name,
            size: a.size,
            mime: a.mime,
            image,
            thumbnail,
            thumbnail_width,
            thumbnail_height,
            local,
            state: a.state,
            done: a.done,
            error: a.error,
        }
    }
}

/// Progress of one file transfer, for [`crate::contract::Event::Transfer`]: the page moves the
/// bar of the message `messageId` in the conversation with `peerId`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TransferView {
    /// The conversation.
    pub peer_id: String,
    /// The message carrying the file (its local id).
    pub message_id: String,
    /// Where it stands.
    pub state: TransferState,
    /// Bytes moved so far.
    pub done: u64,
    /// All the bytes.
    pub total: u64,
    /// Why it failed, when it did.
    pub error: Option<String>,
}

/// The message a reply answers, as quoted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplyView {
    /// Its sender.
    pub sender: ClientId,
    /// Its wire id (the page finds it by this to jump to it).
    pub message_id: String,
    /// The quote.
    pub excerpt: String,
    /// Its `seq` here, when this device has it (the page jumps to it).
    pub seq: Option<i64>,
}

/// One emoji given to a message, and by whom.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ReactionView {
    /// The emoji.
    pub emoji: String,
    /// Who gave it (client ids, ours included).
    pub reactors: Vec<String>,
}

impl From<StoredReply> for ReplyView {
    fn from(reply: StoredReply) -> Self {
        Self {
            sender: reply.to.sender,
            message_id: reply.to.message_id.as_str().to_owned(),
            excerpt: reply.to.excerpt,
            seq: reply.seq,
        }
    }
}

impl From<MessageRecord> for MessageView {
    fn from(mut r: MessageRecord) -> Self {
        let file = r
            .extra
            .attachment
            .take()
            .map(|a| Box::new(FileView::from(a)));
        Self {
            id: r.message_id,
            seq: r.seq,
            peer_id: r.peer_id,
            outgoing: r.outgoing,
            body: r.body,
            at: r.at,
            status: r.status,
            authenticated: r.authenticated,
            content: r.extra.into(),
            file,
            from_device: None,
        }
    }
}

/// An earlier version of an edited message.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionView {
    /// Its text.
    pub body: String,
    /// When it was replaced, unix ms.
    pub replaced_at: i64,
}

impl From<Version> for VersionView {
    fn from(v: Version) -> Self {
        Self {
            body: v.body,
            replaced_at: v.replaced_at,
        }
    }
}

/// A peer started or stopped typing (event `typing`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TypingView {
    /// Who.
    pub peer_id: ClientId,
    /// Typing now.
    pub typing: bool,
}

/// A group member started or stopped typing (event `group-typing`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupTypingView {
    /// The group (hex id).
    pub group_id: String,
    /// Who.
    pub member_id: ClientId,
    /// Typing now (`false` also when the library's own expiry ended it).
    pub typing: bool,
}

/// A message was deleted on this device only (event `message-removed`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RemovedView {
    /// The conversation.
    pub peer_id: ClientId,
    /// The message's id (as in [`MessageView::id`]).
    pub id: String,
}

/// A page of history, oldest first.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MessagePage {
    /// The messages.
    pub messages: Vec<MessageView>,
    /// Whether older messages exist.
    pub has_more: bool,
}

/// Connection state for the indicator.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionView {
    /// The indicator's state.
    pub state: ConnectionState,
    /// While reconnecting: seconds until the next attempt.
    pub retry_in_secs: Option<u64>,
    /// The server we use.
    pub server_url: Option<String>,
    /// When hosting: the address others on the LAN can connect to.
    pub hosting: Option<String>,
    /// A short reason, when offline.
    pub detail: Option<String>,
}

impl ConnectionView {
    /// Not connected, and not trying.
    pub fn offline(detail: Option<String>) -> Self {
        Self {
            state: ConnectionState::Offline,
            retry_in_secs: None,
            server_url: None,
            hosting: None,
            detail,
        }
    }
}

/// A question from the server, one round of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QuestionView {
    /// The id to answer with.
    pub question_id: String,
    /// Rounds of one conversation share it; the dialog stays open across them.
    pub conversation_id: Option<String>,
    /// 1-based round number, when the server says.
    pub round: Option<u32>,
    /// The question.
    pub text: String,
    /// How it is answered.
    pub kind: QuestionKind,
    /// The choices, for `choice`.
    pub options: Vec<String>,
}

/// A readable problem for the page to show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Notice {
    /// A stable machine-readable kind.
    pub kind: ErrorKind,
    /// For kind `peer`: why the server or the connection refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<PeerErrorCode>,
    /// A sentence for people.
    pub message: String,
}

impl Notice {
    /// A notice without a peer error code.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            code: None,
            message: message.into(),
        }
    }
}

/// One message found by a search.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SearchHitView {
    /// The message id.
    pub id: String,
    /// Position in history: the message to jump to.
    pub seq: i64,
    /// The conversation.
    pub peer_id: ClientId,
    /// Ours or theirs.
    pub outgoing: bool,
    /// Unix ms.
    pub at: i64,
    /// The words around the matches; parts with `hit` are the matches. Text, never markup.
    pub snippet: Vec<SnippetPart>,
    /// For a group's message: the group (hex id; `seq` is then its line), and `peerId` is
    /// the sender.
    pub group_id: Option<String>,
    /// For a group's message: the group's name.
    pub group_name: Option<String>,
}

impl From<SearchHit> for SearchHitView {
    fn from(h: SearchHit) -> Self {
        Self {
            id: h.message_id,
            seq: h.seq,
            peer_id: h.peer_id,
            outgoing: h.outgoing,
            at: h.at,
            snippet: h.snippet,
            group_id: None,
            group_name: None,
        }
    }
}

impl SearchHitView {
    /// A group's message as a hit; `None` when its stored sender is no client id.
    pub fn from_group(h: GroupSearchHit) -> Option<Self> {
        Some(Self {
            id: h.message_id,
            seq: h.seq,
            peer_id: ClientId::try_from(h.sender.as_str()).ok()?,
            outgoing: h.outgoing,
            at: h.at,
            snippet: h.snippet,
            group_id: Some(h.group_id),
            group_name: Some(h.group_name),
        })
    }
}

/// The answer to a search, newest first.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SearchResults {
    /// The matches.
    pub hits: Vec<SearchHitView>,
    /// Whether more messages match than were returned.
    pub has_more: bool,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn previews_are_one_line_and_bounded() {
        assert_eq!(preview("hello"), "hello");
        assert_eq!(preview("first\nsecond"), "first…");
        let long = "x".repeat(PREVIEW_CHARS + 5);
        assert_eq!(preview(&long).chars().count(), PREVIEW_CHARS + 1);
    }

    #[test]
    fn views_carry_the_contract_names_on_the_wire() {
        let json = serde_json::to_value(ConnectionView::offline(Some("down".into()))).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "state": "offline",
                "retryInSecs": null,
                "serverUrl": null,
                "hosting": null,
                "detail": "down"
            })
        );
        let notice = serde_json::to_value(Notice::new(ErrorKind::KeyChanged, "changed")).unwrap();
        assert_eq!(
            notice,
            serde_json::json!({"kind": "keyChanged", "message": "changed"})
        );
    }
}

/// One group conversation in the list beside the 1:1 chats.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupView {
    /// The MLS group id, lowercase hex (the page's handle on it).
    pub id: String,
    /// The group's name.
    pub name: String,
    /// Unread messages.
    pub unread: i64,
    /// This device left or was removed: the history stays, nothing can be sent.
    pub left: bool,
    /// Latest line (a message's first line, or a system line).
    pub last_message: Option<String>,
    /// Who wrote the latest message (`None` for a system line or our own).
    pub last_sender: Option<String>,
    /// Whether the latest line is ours.
    pub last_outgoing: bool,
    /// Latest activity, unix ms.
    pub last_at: Option<i64>,
}

impl From<GroupRecord> for GroupView {
    fn from(g: GroupRecord) -> Self {
        Self {
            id: g.group_id,
            name: g.name,
            unread: g.unread,
            left: g.left,
            last_message: g.last_body.map(|b| preview(&b)),
            last_sender: g.last_sender.filter(|s| !s.is_empty() && !g.last_outgoing),
            last_outgoing: g.last_outgoing,
            last_at: g.last_at,
        }
    }
}

/// One line of a group's history: a message with its sender, or a system line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupMessageView {
    /// A stable id for the page (`g<seq>`).
    pub id: String,
    /// Position in the history; the paging cursor.
    pub seq: i64,
    /// The group (hex id).
    pub group_id: String,
    /// A system line (a join, a leave, a removal, a rename, a key change), not a message.
    pub system: bool,
    /// The member who wrote it or made the change; empty when nobody is named.
    pub sender: String,
    /// Whether we wrote it.
    pub outgoing: bool,
    /// The text.
    pub body: String,
    /// Unix ms.
    pub at: i64,
    /// Delivery state: `pending` until the server took it (for a file: until its upload is
    /// done and its message went out), then `sent`; `failed` if refused.
    pub status: DeliveryStatus,
    /// The file of a file message (its `body` is the file's name), as in a 1:1 chat.
    pub file: Option<Box<FileView>>,
    /// Ours, sent from another device of this account: its name ("laptop", "primary"), as
    /// [`MessageView::from_device`].
    pub from_device: Option<String>,
    /// Its reply, edit, tombstone and reactions (fields of this view on the page).
    #[serde(flatten)]
    pub content: ContentView,
}

impl From<GroupLine> for GroupMessageView {
    fn from(l: GroupLine) -> Self {
        Self {
            id: format!("g{}", l.seq),
            seq: l.seq,
            group_id: l.group_id,
            system: l.kind == GroupLineKind::System,
            sender: l.sender,
            outgoing: l.outgoing,
            body: l.body,
            at: l.at,
            status: l.status,
            file: l.attachment.map(|a| Box::new(FileView::from(a))),
            from_device: None,
            content: l.extra.into(),
        }
    }
}

/// A page of a group's history, oldest first.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupPage {
    /// The lines.
    pub messages: Vec<GroupMessageView>,
    /// Older lines exist before these.
    pub has_more: bool,
}

/// One member in a group's member panel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupMemberView {
    /// The member's id.
    pub id: ClientId,
    /// The safety number of the identity key its MLS credential is bound to.
    pub fingerprint: String,
    /// This is us.
    pub me: bool,
}

/// A group's member panel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupDetailsView {
    /// The group as the list shows it.
    pub group: GroupView,
    /// Its members, us included, by id (empty once this device is out of it).
    pub members: Vec<GroupMemberView>,
    /// Its current MLS epoch (moves with every membership or key change).
    pub epoch: u64,
}

/// A linked device of this id, as its signed device list names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceView {
    /// The name the device chose when it was linked.
    pub device_id: String,
    /// The fingerprint of its device key (to compare with what the device shows).
    pub fingerprint: Option<String>,
}

/// Linking a new device moved on (the `link` event, on the first device).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LinkView {
    /// Where it is.
    pub stage: crate::contract::LinkStage,
    /// The new device's throwaway id while linking: what *Approve* / *Refuse* answer.
    pub relay_id: Option<String>,
    /// The name the new device chose.
    pub device_id: Option<String>,
    /// At `awaitingApproval`: the new device's fingerprint, to compare.
    pub fingerprint: Option<String>,
    /// At `failed`: why, as a sentence.
    pub message: Option<String>,
}
