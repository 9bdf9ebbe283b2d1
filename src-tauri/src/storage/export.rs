//! Exports one conversation (a 1:1 chat, or a group's history: [`export_group`]) as a
//! readable, self-contained HTML page or as JSON, written page by page from the history (never
//! the whole conversation in memory) to a new file that appears complete or not at all.
//!
//! The HTML has no scripts, no external resources and every text escaped; each message is
//! `dir="auto"` so right-to-left text reads correctly. The JSON is
//! `{"format": "lattice-conversation", "version": 1, "peerId", "exportedAt", "messages": [...]}`
//! with each message's `messageId`, `outgoing`, `body`, `at` (unix ms), `status` and
//! `authenticated`, and for a file message its `file`: `{name, size, mime}`. The file's bytes
//! are never part of an export (nor of a backup): the HTML says so next to each file.
//!
//! A group's JSON is `{"format": "lattice-group", "version": 1, "groupId", "name",
//! "exportedAt", "lines": [...]}` with each line's `messageId`, `sender` (empty for a system
//! line nobody made), `outgoing`, `system`, `body`, `at`, `status` and a file's `file`; the
//! HTML names each message's sender and shows system lines (joins, leaves, renames) apart.

use std::io::Write;
use std::path::Path;

use lattice_protocol::ClientId;
use serde::{Deserialize, Serialize};

use super::backup::BackupError;
use super::db::MAX_PAGE;
use super::files::Attachment;
use super::groups::{GroupLine, GroupLineKind};
use super::{Db, MessageRecord};

/// The two formats of a conversation export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ExportFormat {
    /// A readable page.
    Html,
    /// Machine-readable.
    Json,
}

/// Writes the conversation with `peer` to a new file at `path` in `format`; returns the number
/// of messages written.
///
/// # Errors
/// [`BackupError::Io`] when `path` exists or cannot be written; [`BackupError::Storage`].
pub fn export_conversation(
    db: &Db,
    me: &str,
    peer: &ClientId,
    format: ExportFormat,
    path: &Path,
    now_ms: i64,
) -> Result<u64, BackupError> {
    super::backup::write_new_file(path, |out| {
        let mut count = 0u64;
        match format {
            ExportFormat::Html => html_head(out, me, peer, now_ms)?,
            ExportFormat::Json => write!(
                out,
                "{{\"format\":\"lattice-conversation\",\"version\":1,\"peerId\":{},\"exportedAt\":{now_ms},\"messages\":[",
                json(peer.as_str())
            )?,
        }
        let mut after = 0i64;
        loop {
            let page = db.page_after(peer, after, MAX_PAGE)?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            for m in &page {
                match format {
                    ExportFormat::Html => html_message(out, me, peer, m)?,
                    ExportFormat::Json => json_record(
                        out,
                        count,
                        serde_json::json!({
                            "messageId": m.message_id,
                            "outgoing": m.outgoing,
                            "body": m.body,
                            "at": m.at,
                            "status": m.status,
                            "authenticated": m.authenticated,
                        }),
                        m.extra.attachment.as_ref(),
                    )?,
                }
                count += 1;
            }
        }
        export_end(out, format)?;
        Ok(count)
    })
}

/// Writes the history of group `group_id`, named `name`, to a new file at `path` in `format`;
/// returns the number of lines written (messages and system lines).
///
/// # Errors
/// [`BackupError::Io`] when `path` exists or cannot be written; [`BackupError::Storage`].
pub fn export_group(
    db: &Db,
    me: &str,
    group_id: &str,
    name: &str,
    format: ExportFormat,
    path: &Path,
    now_ms: i64,
) -> Result<u64, BackupError> {
    super::backup::write_new_file(path, |out| {
        let mut count = 0u64;
        match format {
            ExportFormat::Html => html_top(out, &format!("Lattice: the group {name}"), now_ms)?,
            ExportFormat::Json => write!(
                out,
                "{{\"format\":\"lattice-group\",\"version\":1,\"groupId\":{},\"name\":{},\"exportedAt\":{now_ms},\"lines\":[",
                json(group_id),
                json(name)
            )?,
        }
        let mut after = 0i64;
        loop {
            let page = db.group_page_after(group_id, after, MAX_PAGE)?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            for l in &page {
                match format {
                    ExportFormat::Html => html_group_line(out, me, l)?,
                    ExportFormat::Json => json_record(
                        out,
                        count,
                        serde_json::json!({
                            "messageId": l.message_id,
                            "sender": l.sender,
                            "outgoing": l.outgoing,
                            "system": l.kind == GroupLineKind::System,
                            "body": l.body,
                            "at": l.at,
                            "status": l.status,
                        }),
                        l.attachment.as_ref(),
                    )?,
                }
                count += 1;
            }
        }
        export_end(out, format)?;
        Ok(count)
    })
}

/// One JSON record of an export, after a comma unless it is the first, with its file if any.
fn json_record(
    out: &mut impl Write,
    count: u64,
    mut record: serde_json::Value,
    file: Option<&Attachment>,
) -> std::io::Result<()> {
    if count > 0 {
        out.write_all(b",")?;
    }
    if let (Some(file), Some(fields)) = (file, record.as_object_mut()) {
        fields.insert("file".into(), file_json(file));
    }
    serde_json::to_writer(&mut *out, &record).map_err(std::io::Error::from)
}

/// Closes what the export's head opened.
fn export_end(out: &mut impl Write, format: ExportFormat) -> std::io::Result<()> {
    match format {
        ExportFormat::Html => out.write_all(b"</ol>\n</main>\n</body>\n</html>\n"),
        ExportFormat::Json => out.write_all(b"]}\n"),
    }
}

/// What an export says of a file: never its bytes.
fn file_json(file: &Attachment) -> serde_json::Value {
    serde_json::json!({
        "name": file.name,
        "size": file.size,
        "mime": file.mime,
    })
}

/// A file in the HTML: its name, size and type, and that its bytes are not in the export.
fn file_html(file: &Attachment) -> String {
    format!(
        "File: {} ({} bytes, {}); the file itself is not part of the export",
        escape_html(&file.name),
        file.size,
        escape_html(&file.mime)
    )
}

fn html_group_line(out: &mut impl Write, me: &str, l: &GroupLine) -> std::io::Result<()> {
    if l.kind == GroupLineKind::System {
        return writeln!(
            out,
            "<li class=\"system\"><div class=\"body\" dir=\"auto\">{}</div>\
<div class=\"meta\">{}</div></li>",
            escape_html(&l.body),
            escape_html(&utc(l.at)),
        );
    }
    let (class, who) = if l.outgoing {
        ("out", me)
    } else {
        ("in", l.sender.as_str())
    };
    let body = l
        .attachment
        .as_ref()
        .map_or_else(|| escape_html(&l.body), file_html);
    writeln!(
        out,
        "<li class=\"{class}\"><div class=\"meta\"><b dir=\"auto\">{}</b> · {}</div>\
<div class=\"body\" dir=\"auto\">{body}</div></li>",
        escape_html(who),
        escape_html(&utc(l.at)),
    )
}

fn json(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// `s` with the five HTML special characters escaped: safe in text and in quoted attributes.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Unix milliseconds as an RFC 3339 UTC time (`2026-12-06T00:20:25Z`).
fn utc(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

fn html_head(out: &mut impl Write, me: &str, peer: &ClientId, now_ms: i64) -> std::io::Result<()> {
    html_top(out, &format!("Lattice: {me} and {peer}"), now_ms)
}

/// The page's head and the start of its list, titled `title` (escaped here).
fn html_top(out: &mut impl Write, title: &str, now_ms: i64) -> std::io::Result<()> {
    let title = escape_html(title);
    write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\n\
<title>{title}</title>\n<style>\n\
body {{ font: 15px/1.45 system-ui, sans-serif; max-width: 48rem; margin: 2rem auto; padding: 0 1rem; color: #1d1d1f; }}\n\
ol {{ list-style: none; padding: 0; }}\n\
li {{ margin: .6rem 0; padding: .5rem .75rem; border-radius: .6rem; background: #f0f0f3; }}\n\
li.out {{ background: #dbe8ff; margin-inline-start: 3rem; }}\n\
li.in {{ margin-inline-end: 3rem; }}\n\
li.system {{ background: none; text-align: center; color: #55555a; font-size: 13px; }}\n\
.meta {{ font-size: 12px; color: #55555a; }}\n\
.body {{ white-space: pre-wrap; overflow-wrap: anywhere; }}\n\
</style>\n</head>\n<body>\n<main>\n<h1>{title}</h1>\n<p class=\"meta\">Exported {}</p>\n<ol>\n",
        escape_html(&utc(now_ms))
    )
}

fn html_message(
    out: &mut impl Write,
    me: &str,
    peer: &ClientId,
    m: &MessageRecord,
) -> std::io::Result<()> {
    let (class, who) = if m.outgoing {
        ("out", me)
    } else {
        ("in", peer.as_str())
    };
    let unsigned = if !m.outgoing && !m.authenticated {
        " · not signed"
    } else {
        ""
    };
    let body = m
        .extra
        .attachment
        .as_ref()
        .map_or_else(|| escape_html(&m.body), file_html);
    writeln!(
        out,
        "<li class=\"{class}\"><div class=\"meta\"><b dir=\"auto\">{}</b> · {}{unsigned}</div>\
<div class=\"body\" dir=\"auto\">{body}</div></li>",
        escape_html(who),
        escape_html(&utc(m.at)),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::contract::DeliveryStatus;
    use crate::storage::files::{NewAttachment, TransferState};
    use crate::storage::groups::NewGroupLine;

    fn line<'a>(
        kind: GroupLineKind,
        sender: Option<&'a ClientId>,
        id: &'a str,
        outgoing: bool,
        body: &'a str,
    ) -> NewGroupLine<'a> {
        NewGroupLine {
            group_id: "ab01",
            kind,
            sender,
            message_id: id,
            outgoing,
            body,
            at: 1_000,
            status: if outgoing {
                DeliveryStatus::Sent
            } else {
                DeliveryStatus::Received
            },
        }
    }

    /// A group's history with a system line, a hostile text from bob and a file; more lines
    /// than one page, so the export reads page by page.
    fn group_db() -> (Db, u64) {
        let db = Db::open_in_memory().unwrap();
        let bob = ClientId::new("bob").unwrap();
        let me = ClientId::new("alice").unwrap();
        db.ensure_group("ab01", "Climbing <club>", 1).unwrap();
        db.insert_group_line(&line(
            GroupLineKind::System,
            Some(&me),
            "s1",
            false,
            "You created the group with bob",
        ))
        .unwrap();
        for n in 0..MAX_PAGE + 3 {
            db.insert_group_line(&line(
                GroupLineKind::Message,
                Some(&me),
                &format!("o{n}"),
                true,
                &format!("ours {n}"),
            ))
            .unwrap();
        }
        db.insert_group_line(&line(
            GroupLineKind::Message,
            Some(&bob),
            "x1",
            false,
            "<script>alert('x')</script> & مرحبا",
        ))
        .unwrap();
        db.insert_group_file(
            &line(
                GroupLineKind::Message,
                Some(&bob),
                "f1",
                false,
                "topo <1>.pdf",
            ),
            &NewAttachment {
                name: "topo <1>.pdf".into(),
                size: 90_000,
                mime: "application/pdf".into(),
                thumbnail: None,
                offer: Some("{\"key\":\"secret\"}".into()),
                local_path: None,
                transfer_id: None,
                state: TransferState::Offered,
            },
        )
        .unwrap();
        (db, u64::from(MAX_PAGE) + 6)
    }

    #[test]
    fn a_group_exports_as_escaped_html_and_as_json_with_senders_system_lines_and_files() {
        let (db, lines) = group_db();
        let dir = tempfile::tempdir().unwrap();

        let html_path = dir.path().join("group.html");
        let n = export_group(
            &db,
            "alice",
            "ab01",
            "Climbing <club>",
            ExportFormat::Html,
            &html_path,
            0,
        )
        .unwrap();
        assert_eq!(n, lines);
        let html = std::fs::read_to_string(&html_path).unwrap();
        assert!(!html.contains("<script>") && !html.contains("<club>"));
        assert!(html.contains("<title>Lattice: the group Climbing &lt;club&gt;</title>"));
        assert!(html.contains("<b dir=\"auto\">bob</b>"));
        assert!(html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; مرحبا"));
        assert!(html.contains("<li class=\"system\"><div class=\"body\" dir=\"auto\">You created the group with bob</div>"));
        assert!(html.contains(
            "File: topo &lt;1&gt;.pdf (90000 bytes, application/pdf); the file itself is not part of the export"
        ));
        assert!(!html.contains("secret"), "the file's key is never exported");
        assert!(html.trim_end().ends_with("</html>"));

        let json_path = dir.path().join("group.json");
        let m = export_group(
            &db,
            "alice",
            "ab01",
            "Climbing <club>",
            ExportFormat::Json,
            &json_path,
            0,
        )
        .unwrap();
        assert_eq!(m, lines);
        let raw = std::fs::read(&json_path).unwrap();
        assert!(!String::from_utf8_lossy(&raw).contains("secret"));
        let json: serde_json::Value = serde_json::from_slice(&raw).unwrap();
        assert_eq!(json["format"], "lattice-group");
        assert_eq!(json["groupId"], "ab01");
        assert_eq!(json["name"], "Climbing <club>");
        let all = json["lines"].as_array().unwrap();
        assert_eq!(all.len() as u64, lines);
        assert_eq!(all[0]["system"], true);
        assert_eq!(all[1]["body"], "ours 0");
        assert_eq!(all[1]["outgoing"], true);
        assert_eq!(all[1]["status"], "sent");
        let file = all.last().unwrap();
        assert_eq!(file["sender"], "bob");
        assert_eq!(file["file"]["name"], "topo <1>.pdf");
        assert_eq!(file["file"]["size"], 90_000);

        // Never over an existing file.
        assert!(
            export_group(&db, "alice", "ab01", "x", ExportFormat::Json, &json_path, 0).is_err()
        );
    }
}
