//! Files in the terminal: `/send`, `/get`, `/transfers`, a progress bar per transfer
//! (`indicatif`, on stderr, hidden when it is not a terminal) and a line for each transfer that
//! ends. The library does the work (encryption, chunks, resume after a restart); this shows it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressStyle};
use lattice_peer::GroupId;
use lattice_peer::{
    FileMeta, FileOffer, MessagingPeer, TransferDirection, TransferId, TransferProgress,
    TransferState,
};
use lattice_protocol::{ClientId, MessageId};

use crate::display::escape;
use crate::history::History;

/// The bars and where this run's downloads go.
#[derive(Default)]
struct Bars {
    multi: MultiProgress,
    // std Mutex: held for a map lookup or insert, never across an await.
    bars: Mutex<HashMap<TransferId, ProgressBar>>,
    dests: Mutex<HashMap<TransferId, PathBuf>>,
}

fn bars() -> &'static Bars {
    static BARS: OnceLock<Bars> = OnceLock::new();
    BARS.get_or_init(Bars::default)
}

/// Runs `f` (which prints) with the progress bars hidden meanwhile, so lines and bars do not
/// mix.
pub fn suspend<R>(f: impl FnOnce() -> R) -> R {
    bars().multi.suspend(f)
}

/// `📎 name (size, type)`.
pub fn describe(offer: &FileOffer) -> String {
    format!(
        "📎 {} ({}, {})",
        offer.name,
        HumanBytes(offer.size),
        offer.mime
    )
}

/// The text shown for an incoming file message `#n`.
pub fn incoming_text(n: Option<i64>, offer: &FileOffer) -> String {
    match n {
        Some(n) => format!("{} — /get {n} [path] to save it", describe(offer)),
        None => describe(offer),
    }
}

/// `/send PATH` to `to`.
pub async fn send(peer: &MessagingPeer, to: &ClientId, path: &str) {
    let path = Path::new(path);
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    match peer.send_file(to, path, FileMeta::default()).await {
        Ok(id) => println!(
            "-- sending {} ({}) to {} (transfer {})",
            escape(&path.display().to_string()),
            HumanBytes(size),
            escape(to.as_str()),
            short(&id)
        ),
        Err(e) => println!(
            "!! not sent to {}: {}",
            escape(to.as_str()),
            escape(&e.to_string())
        ),
    }
}

/// `/send PATH` into group `g`: every member can save it.
pub async fn send_group(peer: &MessagingPeer, g: &GroupId, name: &str, path: &str) {
    let path = Path::new(path);
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    match peer.send_group_file(g, path, FileMeta::default()).await {
        Ok(id) => println!(
            "-- sending {} ({}) to [{}] (transfer {})",
            escape(&path.display().to_string()),
            HumanBytes(size),
            escape(name),
            short(&id)
        ),
        Err(e) => println!(
            "!! not sent to [{}]: {}",
            escape(name),
            escape(&e.to_string())
        ),
    }
}

/// The line for group file `g<n>` offered by `from` in group `group`.
pub fn group_file_line(group: &str, from: &ClientId, offer: &FileOffer, n: u64) -> String {
    format!(
        "[{}] {}: {} — /get g{n} [path] to save it",
        escape(group),
        escape(from.as_str()),
        escape(&describe(offer))
    )
}

/// `/get N [PATH]`.
pub fn get(
    peer: &MessagingPeer,
    history: &History,
    n: i64,
    path: Option<&str>,
) -> anyhow::Result<()> {
    let (Some(row), Some(offer)) = (history.get(n)?, history.file(n)?) else {
        println!("!! #{n} is not a file message");
        return Ok(());
    };
    let offer: FileOffer = match serde_json::from_str(&offer) {
        Ok(o) => o,
        Err(e) => {
            println!("!! the file of #{n} cannot be read from the history: {e}");
            return Ok(());
        }
    };
    save(
        peer,
        (&row.sender, &row.message_id, &offer),
        &format!("#{n}"),
        &format!("/get {n} <path>"),
        path,
    )
}

/// `/get g<N> [PATH]`: group file `label` (`g<N>`), from `from`'s group message `message_id`.
pub fn get_group(
    peer: &MessagingPeer,
    (from, message_id, offer): (&ClientId, &MessageId, &FileOffer),
    label: &str,
    path: Option<&str>,
) -> anyhow::Result<()> {
    save(
        peer,
        (from, message_id, offer),
        label,
        &format!("/get {label} <path>"),
        path,
    )
}

/// Starts saving `offer` (of `from`'s message `message_id`) to `path` or its name.
fn save(
    peer: &MessagingPeer,
    (from, message_id, offer): (&ClientId, &MessageId, &FileOffer),
    label: &str,
    again: &str,
    path: Option<&str>,
) -> anyhow::Result<()> {
    // The name was checked on receipt: no path in it.
    let dest = match path {
        Some(p) => PathBuf::from(p),
        None => std::env::current_dir()?.join(&offer.name),
    };
    if dest.exists() {
        println!(
            "!! {} exists: give another path ({again})",
            escape(&dest.display().to_string())
        );
        return Ok(());
    }
    match peer.download_file(from, message_id, offer, &dest) {
        Ok(id) => {
            println!(
                "-- saving {} to {} (transfer {})",
                escape(&describe(offer)),
                escape(&dest.display().to_string()),
                short(&id)
            );
            if let Ok(mut d) = bars().dests.lock() {
                d.insert(id, dest);
            }
        }
        Err(e) => println!("!! cannot save {label}: {}", escape(&e.to_string())),
    }
    Ok(())
}

/// `/transfers`.
pub fn list(peer: &MessagingPeer) {
    let all = peer.transfers();
    if all.is_empty() {
        println!("-- no file transfers");
    }
    for t in all {
        let (arrow, who) = match t.direction {
            TransferDirection::Upload => ("↑ to", t.peer.as_str()),
            TransferDirection::Download => ("↓ from", t.peer.as_str()),
        };
        println!(
            "   {} {} {arrow} {}: {} / {} {}",
            short(&t.id),
            escape(&t.name),
            escape(who),
            HumanBytes(t.done),
            HumanBytes(t.total),
            state_text(&t.state)
        );
    }
}

fn short(id: &TransferId) -> &str {
    id.as_str().get(..8).unwrap_or(id.as_str())
}

fn state_text(state: &TransferState) -> String {
    match state {
        TransferState::Queued => "queued".into(),
        TransferState::Running => "running".into(),
        TransferState::Paused => "paused".into(),
        TransferState::Completed => "done".into(),
        TransferState::Failed(why) => format!("failed: {}", escape(why)),
        TransferState::Cancelled => "cancelled".into(),
    }
}

/// Shows a transfer's progress: moves its bar; prints a line when it ends. An upload that
/// completed is saved in the history as a sent message (it is one, from now on).
pub fn on_transfer(
    p: &TransferProgress,
    me: &ClientId,
    history: &History,
    now_ms: u64,
) -> Vec<String> {
    let b = bars();
    let Ok(mut map) = b.bars.lock() else {
        return Vec::new();
    };
    let over = matches!(
        p.state,
        TransferState::Completed | TransferState::Cancelled | TransferState::Failed(_)
    );
    if !over {
        let bar = map.entry(p.id.clone()).or_insert_with(|| {
            let bar = b.multi.add(ProgressBar::new(p.total));
            if let Ok(style) = ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            let arrow = match p.direction {
                TransferDirection::Upload => "↑",
                TransferDirection::Download => "↓",
            };
            bar.set_message(format!("{arrow} {}", escape(&p.name)));
            bar
        });
        bar.set_length(p.total);
        bar.set_position(p.done);
        return if p.state == TransferState::Paused {
            vec![format!("-- {} paused", escape(&p.name))]
        } else {
            Vec::new()
        };
    }
    if let Some(bar) = map.remove(&p.id) {
        bar.finish_and_clear();
        b.multi.remove(&bar);
    }
    drop(map);
    let dest = b.dests.lock().ok().and_then(|mut d| d.remove(&p.id));
    let (name, who) = (escape(&p.name), escape(p.peer.as_str()));
    match (&p.state, p.direction) {
        // A group's file (the library names us as its peer): not a 1:1 message to keep.
        (TransferState::Completed, TransferDirection::Upload) if p.peer == *me => {
            vec![format!(
                "-- 📎 {name} ({}) sent to the group",
                HumanBytes(p.total)
            )]
        }
        (TransferState::Completed, TransferDirection::Upload) => {
            let n = p.message_id.as_ref().and_then(|id| {
                history
                    .add(&p.peer, me, id, &format!("[file] {}", p.name), now_ms)
                    .ok()
                    .flatten()
            });
            vec![crate::display::sent_line(
                n,
                p.peer.as_str(),
                &format!("📎 {} ({}) sent", p.name, HumanBytes(p.total)),
            )]
        }
        (TransferState::Completed, TransferDirection::Download) => vec![match dest {
            Some(d) => format!(
                "-- saved {name} from {who} to {} (verified)",
                escape(&d.display().to_string())
            ),
            None => format!("-- saved {name} from {who} (verified)"),
        }],
        (TransferState::Cancelled, _) => vec![format!("-- transfer of {name} cancelled")],
        (TransferState::Failed(why), _) => {
            vec![format!("!! transfer of {name} failed: {}", escape(why))]
        }
        _ => Vec::new(),
    }
}
