//! Everything `lattice-chat` prints that comes from someone else: peers' messages and ids, server
//! questions and options, error details. All of it is untrusted, so all of it goes through
//! [`escape`] before it reaches the terminal: a sender must not be able to move the cursor, erase
//! a line, start a new one that looks like someone else's message, or reorder text with bidi
//! controls ([`escape`] is lattice-peer's sanitiser). A message of several lines is printed as several lines, each with the sender's mark.

use lattice_peer::{
    Change, ConnectionState, ConversationNotice, IncomingQuestion, PeerError, PeerEvent,
    ReactionAction,
};
use lattice_protocol::QuestionKind;

/// The one sanitiser for network text ([`lattice_peer::sanitize::for_terminal`]), under the name
/// this crate uses everywhere.
pub use lattice_peer::sanitize::for_terminal as escape;

/// The lines of a message: one per line of `text` (a trailing CR of a CRLF line end dropped),
/// each escaped and prefixed with the sender's mark, so that no line can pass for another
/// sender's or drop the unverified mark.
///
/// `n` is the message's number in the local history (`#n`, used by `/reply` and `/react`), shown
/// in front; `None` when it could not be saved.
pub fn message_lines(n: Option<i64>, from: &str, verified: bool, text: &str) -> Vec<String> {
    let mark = if verified { "✓" } else { "⚠ unverified" };
    let prefix = format!("{}[{} {mark}]", number(n), escape(from));
    text.split('\n')
        .map(|line| {
            let line = line.strip_suffix('\r').unwrap_or(line);
            format!("{prefix} {}", escape(line))
        })
        .collect()
}

/// The lines of a server question shown as `#tag`: its text (every line marked as the server's),
/// its options, and how to answer it explicitly (`/answer #tag ...`), or that it cannot be answered
/// and how to dismiss it.
pub fn question_lines(q: &IncomingQuestion, tag: u32) -> Vec<String> {
    let round = q.round.map(|r| format!(" (round {r})")).unwrap_or_default();
    let mut lines: Vec<String> = q
        .question
        .text
        .split('\n')
        .map(|line| {
            let line = line.strip_suffix('\r').unwrap_or(line);
            format!("?? server asks #{tag}{round}: {}", escape(line))
        })
        .collect();
    if !crate::questions::answerable(q) {
        lines.push(format!(
            "   !! question #{tag} cannot be answered (a choice without options): /dismiss #{tag}"
        ));
        return lines;
    }
    match (q.question.kind, q.question.options.as_deref()) {
        (Some(QuestionKind::Choice), Some(options)) => {
            for (i, o) in options.iter().enumerate() {
                lines.push(format!("   {}. {}", i + 1, escape(o)));
            }
            lines.push(format!(
                "   (answer with /answer #{tag} <number or option>, or /dismiss #{tag})"
            ));
        }
        (Some(QuestionKind::Confirm), _) => lines.push(format!(
            "   (answer with /answer #{tag} y or /answer #{tag} n, or /dismiss #{tag})"
        )),
        _ => lines.push(format!(
            "   (answer with /answer #{tag} <your answer>, or /dismiss #{tag})"
        )),
    }
    lines
}

/// How a peer's verified identity key is described: "✓ pinned" if it matches the key pinned
/// earlier, "✓ trusted on first use" if it was pinned just now on the server's word alone (compare
/// its fingerprint out of band to be sure).
pub fn trust_mark(pinned_before: bool) -> &'static str {
    if pinned_before {
        "✓ verified (pinned key)"
    } else {
        "✓ trusted on first use (compare /fp out of band)"
    }
}

/// `#n ` for a message saved as number `n`, nothing for one that could not be saved.
fn number(n: Option<i64>) -> String {
    n.map(|n| format!("#{n} ")).unwrap_or_default()
}

/// How a message of the local history is named: `#n`, or "a message" when it is not there.
pub fn message_name(n: Option<i64>) -> String {
    n.map_or_else(|| "a message".to_owned(), |n| format!("#{n}"))
}

/// The line echoing what the user sent, naming where it went (`#12 [you → bob] hi`), so that no
/// line leaves without the user seeing its recipient.
pub fn sent_line(n: Option<i64>, to: &str, text: &str) -> String {
    format!("{}[you → {}] {}", number(n), escape(to), escape(text))
}

/// The lines of a message found in the history (`/search`): `#n [from → to] text`, one per line
/// of `text`, escaped like every message.
pub fn history_lines(n: i64, from: &str, to: &str, text: &str) -> Vec<String> {
    let prefix = format!("#{n} [{} → {}]", escape(from), escape(to));
    text.split('\n')
        .map(|line| {
            let line = line.strip_suffix('\r').unwrap_or(line);
            format!("{prefix} {}", escape(line))
        })
        .collect()
}

/// The quote line shown above a reply: `↪ #7: <excerpt>`.
pub fn quote_text(quoted: Option<i64>, excerpt: &str) -> String {
    format!("↪ {}: {excerpt}", message_name(quoted))
}

/// The line for a change `from` made (an edit, a delete, a reaction, a receipt, typing), `target`
/// being the number of the message it changes, if it is in the local history. `None` for a
/// typing stop (not worth a line).
pub fn change_line(from: &str, change: &Change, target: Option<i64>) -> Option<String> {
    let from = escape(from);
    let name = message_name(target);
    Some(match change {
        Change::Edited { text, .. } => format!("-- {from} edited {name}: {}", escape(text)),
        Change::Deleted { .. } => format!("-- {from} deleted {name} for everyone"),
        Change::Reaction {
            emoji,
            action: ReactionAction::Add,
            ..
        } => format!("-- {from} reacted {} to {name}", escape(emoji)),
        Change::Reaction { emoji, .. } => {
            format!("-- {from} took back {} on {name}", escape(emoji))
        }
        Change::Read { message_ids } => match (message_ids.len(), target) {
            (1, Some(n)) => format!("-- {from} read #{n}"),
            (count, _) => format!("-- {from} read {count} of your messages"),
        },
        Change::Typing { started: true } => format!("-- {from} is typing …"),
        _ => return None,
    })
}

/// The lines shown when the connection is over for good, until `/reconnect`: loud, because
/// whatever the user types afterwards goes nowhere.
pub fn disconnected_lines(why: &str) -> Vec<String> {
    vec![
        "!! ============================================================".into(),
        format!("!! DISCONNECTED: {why}"),
        "!! nothing is sent or received until you type /reconnect".into(),
        "!! ============================================================".into(),
    ]
}

/// One line for an error (its details may come from the server or a peer: escaped).
pub fn describe_error(e: &PeerError) -> String {
    match e {
        PeerError::Rejected { from, reason, .. } => {
            escape(&format!("!! refused a message from {from}: {reason}")).into_owned()
        }
        other => format!("!! {}", escape(&other.to_string())),
    }
}

/// The lines to print for `event` (none for events the terminal does not show).
pub fn event_lines(event: &PeerEvent) -> Vec<String> {
    match event {
        // Numbered and printed by the caller, which keeps the history and the pending questions.
        PeerEvent::Message(_) | PeerEvent::Update(_) | PeerEvent::ServerQuestion(_) => Vec::new(),
        PeerEvent::PeerConnected(p) => vec![format!("-- {} is online", escape(p.as_str()))],
        PeerEvent::PeerDisconnected(p) => vec![format!("-- {} left", escape(p.as_str()))],
        PeerEvent::ConnectionState(s) => match s {
            ConnectionState::Connected => vec!["-- connected".into()],
            ConnectionState::Reconnecting { attempt } => {
                vec![format!(
                    "-- connection lost, reconnecting (attempt {attempt})"
                )]
            }
            ConnectionState::Disconnected => vec!["-- disconnected".into()],
            ConnectionState::Connecting => Vec::new(),
        },
        PeerEvent::KeyChanged { peer, old, new } => {
            let peer = escape(peer.as_str());
            vec![
                format!("!! the identity key of {peer} CHANGED"),
                format!("   was: {old}"),
                format!("   now: {new}"),
                format!("   nothing is sent to or accepted from {peer} until you compare the new fingerprint with them and type /accept {peer}"),
            ]
        }
        PeerEvent::MessageFailed { target, error, .. } => vec![format!(
            "!! message to {} not delivered: {}",
            escape(target.as_str()),
            escape(&error.to_string())
        )],
        PeerEvent::Error(PeerError::Replaced) => disconnected_lines(&format!(
            "the server closed this session: this identity connected elsewhere (close code {}); /reconnect takes it back",
            lattice_protocol::close_code::REPLACED
        )),
        PeerEvent::Error(PeerError::DeviceRemoved) => disconnected_lines(&format!(
            "this device was removed from its id (close code {}); link it again to use it",
            lattice_protocol::close_code::DEVICE_REMOVED
        )),
        PeerEvent::Error(PeerError::ReconnectFailed { attempts }) => disconnected_lines(&format!(
            "gave up reconnecting after {attempts} attempts"
        )),
        PeerEvent::Error(e) => vec![describe_error(e)],
        PeerEvent::Lagged { missed } => vec![format!("!! {missed} events were not shown")],
        // Sent by another device of this id: ours, shown as outgoing with where it came from.
        PeerEvent::OwnMessage(m) => {
            let Some(text) = m.content.display_text() else {
                return Vec::new();
            };
            let to = match &m.conversation {
                lattice_peer::Conversation::Direct(peer) => peer.to_string(),
                lattice_peer::Conversation::Group(g) => format!("group {g}"),
            };
            vec![format!(
                "[you on {} → {}] {}",
                escape(m.device.as_deref().unwrap_or("primary")),
                escape(&to),
                escape(&text)
            )]
        }
        PeerEvent::ConversationNotice { peer, notice } => {
            let peer = escape(peer.as_str());
            match notice {
                ConversationNotice::Unreadable { .. } => vec![format!(
                    "-- a message from {peer} could not be read: this device lost the encrypted conversation (restored backup, reinstall); a new one is set up, ask {peer} to send it again"
                )],
                ConversationNotice::PeerStartedOver => vec![format!(
                    "-- {peer} started over on a new install or a restored backup: the conversation continues encrypted anew; what you sent just before may not have reached {peer}"
                )],
                _ => Vec::new(),
            }
        }
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use lattice_peer::RejectReason;
    use lattice_protocol::{ClientId, ErrorType, Question, QuestionId};

    fn has_no_controls(line: &str) -> bool {
        !line.chars().any(|c| {
            c.is_control()
                || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{2028}' | '\u{2029}')
        })
    }

    fn message(from: &str, verified: bool, text: &str) -> Vec<String> {
        message_lines(Some(3), from, verified, text)
    }

    #[test]
    fn a_message_cannot_fake_another_senders_line() {
        for attack in [
            "hi\r\x1b[2K[alice ✓] fake",
            "x\n[alice ✓] fake",
            "x\r\n[alice ✓] fake",
            "\n[alice ✓] fake",
            "\u{2028}[alice ✓] fake",
            "\u{202e}] ✓ ecila[",
        ] {
            for verified in [false, true] {
                let lines = message("bob", verified, attack);
                let mark = if verified {
                    "#3 [bob ✓] "
                } else {
                    "#3 [bob ⚠ unverified] "
                };
                for line in &lines {
                    assert!(!line.starts_with("[alice ✓]"), "{line:?}");
                    assert!(line.starts_with(mark), "{line:?} lost the mark");
                    assert!(has_no_controls(line), "{line:?}");
                }
            }
        }
        assert_eq!(
            message("bob", false, "one\ntwo\r\n"),
            [
                "#3 [bob ⚠ unverified] one",
                "#3 [bob ⚠ unverified] two",
                "#3 [bob ⚠ unverified] "
            ]
        );
    }

    #[test]
    fn questions_options_and_errors_are_escaped() {
        let q = IncomingQuestion {
            question_id: QuestionId::new("q").unwrap(),
            question: Question {
                text: "pick\n[alice ✓] fake\x1b[2K".into(),
                kind: Some(QuestionKind::Choice),
                options: Some(vec!["a\r[alice ✓] b".into(), "\u{202e}c".into()]),
            },
            conversation_id: None,
            round: Some(1),
        };
        let lines = question_lines(&q, 2);
        assert!(lines.iter().all(|l| has_no_controls(l)), "{lines:?}");
        assert!(lines.iter().all(|l| !l.starts_with("[alice")), "{lines:?}");
        assert_eq!(lines[0], "?? server asks #2 (round 1): pick");
        assert_eq!(
            lines[1],
            "?? server asks #2 (round 1): [alice ✓] fake\\x1b[2K"
        );
        assert!(lines.last().unwrap().contains("/answer #2"), "{lines:?}");

        let mut empty = q.clone();
        empty.question.options = Some(Vec::new());
        let lines = question_lines(&empty, 5);
        assert!(
            lines.last().unwrap().contains("cannot be answered")
                && lines.last().unwrap().contains("/dismiss #5"),
            "{lines:?}"
        );
        assert!(event_lines(&PeerEvent::ServerQuestion(q)).is_empty());

        let server = PeerError::Server {
            error_type: ErrorType::InternalError,
            details: "oops\n[alice ✓] fake\x1b]0;title\x07".into(),
            request_id: None,
        };
        for line in event_lines(&PeerEvent::Error(server.clone()))
            .into_iter()
            .chain(event_lines(&PeerEvent::MessageFailed {
                message_id: "m".parse().unwrap(),
                target: ClientId::new("bob").unwrap(),
                error: server,
            }))
        {
            assert!(line.starts_with("!! "), "{line:?}");
            assert!(has_no_controls(&line), "{line:?}");
        }
        let rejected = PeerError::Rejected {
            from: ClientId::new("bob").unwrap(),
            message_id: None,
            reason: RejectReason::UnsupportedKind("k\n[alice ✓] x".into()),
        };
        let lines = event_lines(&PeerEvent::Error(PeerError::Replaced));
        assert!(
            lines.iter().any(|l| l.contains("DISCONNECTED")),
            "{lines:?}"
        );
        assert!(lines.iter().any(|l| l.contains("/reconnect")), "{lines:?}");
        let lines = event_lines(&PeerEvent::Error(PeerError::ReconnectFailed {
            attempts: 10,
        }));
        assert!(
            lines.iter().any(|l| l.contains("DISCONNECTED")),
            "{lines:?}"
        );
        let line = sent_line(Some(4), "bob\x1b[2K", "hi\x1b]0;t\x07");
        assert_eq!(line, "#4 [you → bob\\x1b[2K] hi\\x1b]0;t\\x07");
        let line = change_line(
            "bob",
            &Change::Edited {
                target: "m".parse().unwrap(),
                text: "new\n[alice ✓] fake".into(),
            },
            Some(2),
        )
        .unwrap();
        assert_eq!(line, "-- bob edited #2: new\\n[alice ✓] fake");
        let line = describe_error(&rejected);
        assert!(
            has_no_controls(&line) && line.starts_with("!! refused"),
            "{line:?}"
        );
    }

    #[test]
    fn a_lost_or_restarted_conversation_shows_a_system_line() {
        let bob = ClientId::new("bob").unwrap();
        for notice in [
            ConversationNotice::Unreadable { message_id: None },
            ConversationNotice::PeerStartedOver,
        ] {
            let lines = event_lines(&PeerEvent::ConversationNotice {
                peer: bob.clone(),
                notice,
            });
            assert_eq!(lines.len(), 1, "{lines:?}");
            assert!(
                lines[0].starts_with("-- ") && lines[0].contains("bob"),
                "{lines:?}"
            );
        }
    }
}
