//! Exports one conversation as a readable, self-contained HTML page or as JSON, written page by
//! page from the history (never the whole conversation in memory) to a new file that appears
//! complete or not at all.
//!
//! The HTML has no scripts, no external resources and every text escaped; each message is
//! `dir="auto"` so right-to-left text reads correctly. The JSON is
//! `{"format": "lattice-conversation", "version": 1, "peerId", "exportedAt", "messages": [...]}`
//! with each message's `messageId`, `outgoing`, `body`, `at` (unix ms), `status` and
//! `authenticated`, and for a file message its `file`: `{name, size, mime}`. The file's bytes
//! are never part of an export (nor of a backup): the HTML says so next to each file.

use std::io::Write;
use std::path::Path;

use lattice_protocol::ClientId;
use serde::{Deserialize, Serialize};

use super::backup::BackupError;
use super::db::MAX_PAGE;
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
                    ExportFormat::Json => {
                        if count > 0 {
                            out.write_all(b",")?;
                        }
                        let mut record = serde_json::json!({
                            "messageId": m.message_id,
                            "outgoing": m.outgoing,
                            "body": m.body,
                            "at": m.at,
                            "status": m.status,
                            "authenticated": m.authenticated,
                        });
                        if let (Some(file), Some(fields)) =
                            (&m.extra.attachment, record.as_object_mut())
                        {
                            fields.insert(
                                "file".into(),
                                serde_json::json!({
                                    "name": file.name,
                                    "size": file.size,
                                    "mime": file.mime,
                                }),
                            );
                        }
                        serde_json::to_writer(&mut *out, &record).map_err(std::io::Error::from)?;
                    }
                }
                count += 1;
            }
        }
        match format {
            ExportFormat::Html => out.write_all(b"</ol>\n</main>\n</body>\n</html>\n")?,
            ExportFormat::Json => out.write_all(b"]}\n")?,
        }
        Ok(count)
    })
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
    let title = escape_html(&format!("Lattice: {me} and {peer}"));
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
    let body = match &m.extra.attachment {
        Some(file) => format!(
            "File: {} ({} bytes, {}); the file itself is not part of the export",
            escape_html(&file.name),
            file.size,
            escape_html(&file.mime)
        ),
        None => escape_html(&m.body),
    };
    writeln!(
        out,
        "<li class=\"{class}\"><div class=\"meta\"><b dir=\"auto\">{}</b> · {}{unsigned}</div>\
<div class=\"body\" dir=\"auto\">{body}</div></li>",
        escape_html(who),
        escape_html(&utc(m.at)),
    )
}
