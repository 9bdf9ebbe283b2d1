//! The shapes of what the content layer adds to a stored message (schema version 6): the reply
//! it answers, its edit time, tombstone, revision and reactions, and (version 7) its file. A
//! leaf of the storage apart from [`super::files`]' row reader: `db` reads and writes them,
//! [`super::content`] changes them; neither is imported here.

use lattice_peer::content::{excerpt, Content, ContentError, MessageRef};
use lattice_protocol::{ClientId, MessageId};

/// The message a reply answers, as the reply names and quotes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyRef {
    /// Who sent it.
    pub sender: ClientId,
    /// Its wire id.
    pub message_id: MessageId,
    /// The quote shown above the reply.
    pub excerpt: String,
}

/// The message a stored reply answers: what it quotes, and where it is here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredReply {
    /// As the reply names it.
    pub to: ReplyRef,
    /// Its `seq`, when this device has it (not deleted for me, not from before a restore).
    pub seq: Option<i64>,
}

impl ReplyRef {
    /// The reply content answering this with `text`.
    ///
    /// # Errors
    /// A bound of the content layer broken.
    pub fn content(&self, text: String) -> Result<Content, ContentError> {
        let content = Content::Reply {
            to: MessageRef {
                sender: self.sender.clone(),
                message_id: self.message_id.clone(),
            },
            excerpt: excerpt(&self.excerpt),
            text,
        };
        content.validate()?;
        Ok(content)
    }
}

/// An incoming message to store ([`Db::insert_received`]).
#[derive(Debug)]
pub struct Received<'a> {
    /// The sender's `messageId`.
    pub message_id: &'a str,
    /// The sender.
    pub peer_id: &'a ClientId,
    /// The text.
    pub body: &'a str,
    /// The server's timestamp, unix ms.
    pub at_ms: i64,
    /// The sender's signed `sentAt`, unix ms (`None` for an unsigned message: `at_ms` is kept).
    pub sent_at: Option<i64>,
    /// Signed by a pinned identity.
    pub authenticated: bool,
    /// Shown already (not counted unread).
    pub read: bool,
    /// The message it answers, for a reply.
    pub reply: Option<&'a ReplyRef>,
}

/// One reaction to a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reaction {
    /// Who reacted (our own client id for ours).
    pub reactor: String,
    /// The emoji.
    pub emoji: String,
}

/// What version 6 adds to a stored message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageExtra {
    /// The `messageId` it went (or came) with; `None` for ours sent by an older version.
    pub wire_id: Option<String>,
    /// When it was last edited (the edit's signed `sentAt`), if ever.
    pub edited_at: Option<i64>,
    /// Deleted for everyone: the body is gone, a tombstone stays.
    pub deleted: bool,
    /// The message it answers.
    pub reply: Option<StoredReply>,
    /// Bumped on every change of text, tombstone or reactions (the page replaces what it shows
    /// when this grows).
    pub rev: i64,
    /// Its reactions, one per reactor.
    pub reactions: Vec<Reaction>,
    /// The file it carries, for a file message (version 7).
    pub attachment: Option<super::files::Attachment>,
}

impl MessageExtra {
    /// Reads the columns of the storage's message query from `start` on (wire id, edit time,
    /// tombstone, reply sender, id and excerpt, revision, folded reactions, reply's `seq`).
    pub(super) fn from_row(r: &rusqlite::Row<'_>, start: usize) -> rusqlite::Result<Self> {
        let reply_sender: Option<String> = r.get(start + 3)?;
        let reply_id: Option<String> = r.get(start + 4)?;
        let reply_excerpt: Option<String> = r.get(start + 5)?;
        // A reference that no longer parses (never written by this code) is dropped, not fatal.
        let reply = match (reply_sender, reply_id) {
            (Some(s), Some(id)) => match (ClientId::try_from(s), MessageId::try_from(id)) {
                (Ok(sender), Ok(message_id)) => Some(StoredReply {
                    to: ReplyRef {
                        sender,
                        message_id,
                        excerpt: reply_excerpt.unwrap_or_default(),
                    },
                    seq: r.get(start + 8)?,
                }),
                _ => None,
            },
            _ => None,
        };
        let folded: Option<String> = r.get(start + 7)?;
        let reactions = folded
            .as_deref()
            .unwrap_or("")
            .split('\u{1e}')
            .filter_map(|pair| pair.split_once('\u{1f}'))
            .map(|(reactor, emoji)| Reaction {
                reactor: reactor.to_owned(),
                emoji: emoji.to_owned(),
            })
            .collect();
        Ok(Self {
            wire_id: r.get(start)?,
            edited_at: r.get(start + 1)?,
            deleted: r.get(start + 2)?,
            reply,
            rev: r.get(start + 6)?,
            reactions,
            attachment: super::files::Attachment::from_row(r, start + 9)?,
        })
    }
}
