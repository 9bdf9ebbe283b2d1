//! `lattice-chat`: a terminal client for Lattice.
//!
//! Connects with an id, lists peers, chats with one peer at a time, answers server questions
//! interactively, and shows who is verified and each peer's fingerprint. The identity is kept in
//! a file readable only by the user (0600), by default `<data dir>/lattice/<id>.identity`, the
//! pinned identity keys of peers next to it (`<id>.pins`, also 0600), and the message history in
//! SQLite (`<id>.history`, also 0600): every message is numbered (`#n`) so that `/reply n`,
//! `/react n` and `/delete n` can name it, `/edit` and `/delete` change your last message, and
//! `/search` finds messages of every conversation (FTS5). Group chats (MLS, state in `<id>.mls`):
//! `/group new <name> <id,id…>`, `/groups`, `/g <n>`, `/members`, `/group add|remove|rename|leave`.
//! Files: `/send <path>` and `/get <n> [path]` with a progress bar, end-to-end encrypted through
//! the server's blob store; unfinished transfers (journals in `<id>.transfers/`) resume by
//! themselves after a restart.
//!
//! ```text
//! lattice-chat --server ws://127.0.0.1:3005 --id alice
//! ```

mod command;
mod devices;
mod display;
mod files;
mod groups;
mod history;
mod questions;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use command::{Command, HELP};
use display::escape;
use futures_util::StreamExt as _;
use history::History;
use lattice_crypto::Fingerprint;
use lattice_peer::content::excerpt;
use lattice_peer::{
    Change, ConnectionState, Content, FileKeyStore, MessageRef, MessagingPeer, PeerConfig,
    PeerError, PeerEvent, ReactionAction, TlsOptions,
};
use lattice_protocol::{ClientId, MessageId};
use questions::Questions;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::task::JoinHandle;

/// Command-line flags.
#[derive(Debug, Parser)]
#[command(
    name = "lattice-chat",
    version,
    about = "Chat over Lattice from a terminal"
)]
struct Args {
    /// Signaling server URL (ws:// or wss://).
    #[arg(long, env = "LATTICE_SERVER", default_value = format!("ws://127.0.0.1:{}", lattice_protocol::limits::DEFAULT_PORT))]
    server: String,
    /// Your client id (1-64 of A-Z a-z 0-9 . _ - @).
    #[arg(long, env = "LATTICE_ID")]
    id: String,
    /// Identity file; created (0600) if missing. Default: {data dir}/lattice/{id}.identity.
    #[arg(long, env = "LATTICE_IDENTITY_FILE")]
    identity_file: Option<PathBuf>,
    /// Linked-device file. If it exists, run as that linked device of --id (MLS only; its
    /// pins, history and MLS state sit next to it) instead of with the identity file. If it does
    /// not, a successful `/link <id> <device>` saves the new device there (default:
    /// {data dir}/lattice/{id}.{device}.device); start again with --id <id> --device-file <it>.
    #[arg(long, env = "LATTICE_DEVICE_FILE")]
    device_file: Option<PathBuf>,
    /// Extra CA certificate (PEM) to trust for wss://.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Send no read receipts for the messages printed, and show none of others' (like the
    /// desktop's setting).
    #[arg(long)]
    no_read_receipts: bool,
}

/// What the input loop and the event printer share.
#[derive(Debug, Default)]
struct Ui {
    /// Who plain lines go to. `None` (nothing is sent) until a `/to` succeeds, and again as soon
    /// as a `/to` starts: a failed `/to` never leaves lines going to the previous peer.
    current: Option<ClientId>,
    /// Server questions waiting for an explicit `/answer` (never answered by a plain line).
    questions: Questions,
    /// Counts `/to`s: a key fetch finishing after a newer `/to` started picks nobody.
    to_generation: u64,
    /// The running `/to` key fetch, `/peers` listing and `/reconnect`, if any.
    to_task: Option<JoinHandle<()>>,
    peers_task: Option<JoinHandle<()>>,
    reconnect_task: Option<JoinHandle<()>>,
    /// Per peer, the new fingerprint last shown for a key change (what `/accept` pins), and
    /// whether another new key replaced an earlier one shown since the last `/accept` attempt.
    key_changes: HashMap<ClientId, (Fingerprint, bool)>,
    /// The peer said it will not reconnect on its own (replaced, or reconnecting gave up): set
    /// when the banner is printed, before the peer publishes `Disconnected`, so a line typed
    /// right after the banner is refused, never queued. Cleared once connected again.
    stopped: bool,
    /// The group plain lines go to, when one is picked (`/g`, `/group new`); a `/to` clears it.
    group: Option<lattice_peer::GroupId>,
    /// Group files shown this run, for `/get g<n>`: the last [`GROUP_FILES_KEPT`], numbered.
    group_files: std::collections::VecDeque<(
        u64,
        ClientId,
        lattice_protocol::MessageId,
        lattice_peer::FileOffer,
    )>,
    /// The number of the next group file shown.
    group_files_shown: u64,
    /// The new device whose fingerprint was shown last (what `/approve` answers).
    link_awaiting: Option<ClientId>,
    /// Where a device linked by `/link <id> <device>` is saved (`--device-file`), if given.
    device_file: Option<PathBuf>,
    /// Who read each group, for "read by alice, bob".
    read_by: groups::ReadBy,
    /// Runs `/link <id> <device>` over a link relay peer of its own.
    linker: Option<Arc<devices::Linker>>,
}

/// Group files kept for `/get g<n>` (they are not in the history; a download started survives a
/// restart through the library's journal).
const GROUP_FILES_KEPT: usize = 256;

// std Mutex: held for a field read or write, never across an await.
type Shared = Arc<Mutex<Ui>>;

/// Prints `lines` together (no other output between them).
fn print_lines(lines: &[String]) {
    use std::io::Write as _;
    files::suspend(|| {
        let mut out = std::io::stdout().lock();
        for line in lines {
            // Nothing sensible to do if the terminal is gone.
            let _ = writeln!(out, "{line}");
        }
    });
}

/// A typing notice signed longer ago than this (unix ms) is not shown: it waited in the server's
/// mailbox while we were offline.
const TYPING_NOTICE_MAX_AGE_MS: u64 = 30_000;

/// Now, unix ms.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The id a message is stored under: its own, or (an original client's message without one) a
/// local one.
fn stored_id(id: Option<&MessageId>, at: u64) -> Option<MessageId> {
    static LOCAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    id.cloned().or_else(|| {
        let n = LOCAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        MessageId::new(format!("local-{at}-{n}")).ok()
    })
}

/// Saves what arrives in the history, on the peer's task before the message is acknowledged (so
/// nothing acknowledged is lost): messages, edits, deletes and reactions. The printer shows them.
fn store_event(history: &History, event: &PeerEvent) {
    let result = match event {
        PeerEvent::Message(m) => match stored_id(m.message_id.as_ref(), m.server_timestamp) {
            Some(id) => history
                .add(
                    &m.from,
                    &m.from,
                    &id,
                    &m.text,
                    m.sent_at.unwrap_or(m.server_timestamp),
                )
                .and_then(|n| match (n, &m.content) {
                    // The offer (with its key) is kept for `/get`, also after a restart.
                    (Some(n), Content::File(offer)) => match serde_json::to_string(offer) {
                        Ok(json) => history.set_file(n, &json),
                        Err(_) => Ok(()),
                    },
                    _ => Ok(()),
                }),
            None => Ok(()),
        },
        PeerEvent::Update(u) => match &u.change {
            Change::Edited { target, text } => history
                .edit(&u.from, &u.from, target, text, u.sent_at)
                .map(drop),
            Change::Deleted { target } => history.delete(&u.from, &u.from, target).map(drop),
            Change::Reaction {
                target,
                emoji,
                action,
            } => history
                .number(&u.from, &target.sender, &target.message_id)
                .and_then(|n| match n {
                    Some(n) => history.react(n, &u.from, emoji, *action == ReactionAction::Add),
                    None => Ok(()),
                }),
            _ => Ok(()),
        },
        _ => Ok(()),
    };
    if let Err(e) = result {
        println!(
            "!! could not save to the history: {}",
            escape(&e.to_string())
        );
    }
}

/// The lines for a message or a change that arrived, numbered as the history has them.
fn content_lines(history: &History, me: &ClientId, event: &PeerEvent) -> Vec<String> {
    match event {
        PeerEvent::Message(m) => {
            let n = m
                .message_id
                .as_ref()
                .and_then(|id| history.number(&m.from, &m.from, id).ok().flatten());
            let text = match &m.content {
                Content::File(offer) => files::incoming_text(n, offer),
                Content::Reply { to, excerpt, text } => {
                    let quoted = history
                        .number(&m.from, &to.sender, &to.message_id)
                        .ok()
                        .flatten();
                    format!("{}\n{text}", display::quote_text(quoted, excerpt))
                }
                _ => m.text.clone(),
            };
            display::message_lines(n, m.from.as_str(), m.verified, &text)
        }
        // A typing notice the server kept while we were away is old news.
        PeerEvent::Update(u)
            if matches!(u.change, Change::Typing { .. })
                && now_ms().saturating_sub(u.sent_at) > TYPING_NOTICE_MAX_AGE_MS =>
        {
            Vec::new()
        }
        PeerEvent::Update(u) => {
            let target = match &u.change {
                Change::Edited { target, .. } | Change::Deleted { target } => {
                    history.number(&u.from, &u.from, target).ok().flatten()
                }
                Change::Reaction { target, .. } => history
                    .number(&u.from, &target.sender, &target.message_id)
                    .ok()
                    .flatten(),
                Change::Read { message_ids } if message_ids.len() == 1 => message_ids
                    .first()
                    .and_then(|id| history.number(&u.from, me, id).ok().flatten()),
                _ => None,
            };
            let counts = match (&u.change, target) {
                (Change::Reaction { .. }, Some(n)) => reaction_counts(history, n),
                _ => String::new(),
            };
            display::change_line(u.from.as_str(), &u.change, target)
                .map(|line| format!("{line}{counts}"))
                .into_iter()
                .collect()
        }
        _ => Vec::new(),
    }
}

/// ` (👍 2, 🔥 1)`: the reactions on message `#n` now, or nothing.
fn reaction_counts(history: &History, n: i64) -> String {
    let counts = history.reactions(n).unwrap_or_default();
    if counts.is_empty() {
        return String::new();
    }
    let list: Vec<String> = counts
        .iter()
        .map(|(emoji, count)| format!("{} {count}", escape(emoji)))
        .collect();
    format!(" ({})", list.join(", "))
}

/// Tells the sender of `m`, once it is printed, that it was read: only a signed message of a
/// Lattice peer (an original client gets no receipts). A receipt is a courtesy: one that cannot
/// be sent is logged, not retried.
async fn send_receipt(peer: &MessagingPeer, m: &lattice_peer::IncomingMessage) {
    let Some(id) = m.message_id.clone().filter(|_| m.verified) else {
        return;
    };
    let receipt = Content::Receipt { read: vec![id] };
    match peer.send_content(&m.from, &receipt).await {
        Ok(_) | Err(PeerError::PlainTextOnly { .. }) => {}
        Err(e) => tracing::debug!(peer = %m.from, error = %e, "read receipt not sent"),
    }
}

/// Tells the members of a group that its message `m`, just printed, was read (the newest
/// printed: it covers the earlier ones). A courtesy like [`send_receipt`]: logged, not retried.
async fn send_group_receipt(peer: &MessagingPeer, m: &lattice_peer::GroupMessage) {
    let up_to = lattice_peer::MessageRef {
        sender: m.from.clone(),
        message_id: m.message_id.clone(),
    };
    if let Err(e) = peer.mark_group_read(&m.group, &up_to).await {
        tracing::debug!(group = %m.group, error = %e, "group read receipt not sent");
    }
}

/// Prints events until the stream ends; remembers what `/accept` and plain lines refer to. With
/// `read_receipts` a receipt goes out for each message printed (in a group, one naming the
/// newest printed) and others' are shown; without, neither.
async fn print_events(peer: MessagingPeer, ui: Shared, history: Arc<History>, read_receipts: bool) {
    let mut events = peer.events();
    let me = peer.client_id().clone();
    while let Some(event) = events.next().await {
        match &event {
            PeerEvent::Update(u) if !read_receipts && matches!(u.change, Change::Read { .. }) => {}
            PeerEvent::Message(m) => {
                print_lines(&content_lines(&history, &me, &event));
                if read_receipts {
                    send_receipt(&peer, m).await;
                }
            }
            PeerEvent::Update(_) => {
                print_lines(&content_lines(&history, &me, &event));
            }
            PeerEvent::ServerQuestion(q) => {
                let added = ui.lock().ok().map(|mut ui| ui.questions.add(q.clone()));
                if let Some(added) = added {
                    let mut lines = Vec::new();
                    if let Some(old) = added.evicted {
                        lines.push(format!(
                            "-- server question #{old} dropped unanswered: at most {} wait at once",
                            questions::MAX_PENDING_QUESTIONS
                        ));
                    }
                    if added.replaced {
                        lines.push("-- the server asked an earlier question again:".into());
                    }
                    lines.extend(display::question_lines(q, added.tag));
                    print_lines(&lines);
                }
            }
            PeerEvent::KeyChanged { peer, new, .. } => {
                if let Ok(mut ui) = ui.lock() {
                    let replaced = ui
                        .key_changes
                        .get(peer)
                        .is_some_and(|(shown, _)| shown != new);
                    if replaced {
                        println!(
                            "!! {} changed keys AGAIN: compare the fingerprint below, not the earlier one",
                            escape(peer.as_str())
                        );
                    }
                    ui.key_changes.insert(peer.clone(), (new.clone(), replaced));
                }
            }
            PeerEvent::Transfer(p) => {
                print_lines(&files::on_transfer(p, &me, &history, now_ms()));
            }
            PeerEvent::MessageAck(a) => {
                tracing::debug!(message_id = %a.message_id, status = ?a.status, "ack");
            }
            PeerEvent::Error(
                PeerError::Replaced | PeerError::ReconnectFailed { .. } | PeerError::DeviceRemoved,
            ) => {
                if let Ok(mut ui) = ui.lock() {
                    ui.stopped = true;
                }
            }
            PeerEvent::GroupMessage(lattice_peer::GroupMessage {
                group,
                from,
                message_id,
                content: Content::File(offer),
                ..
            }) => {
                let n = ui.lock().ok().map(|mut u| {
                    u.group_files_shown += 1;
                    let n = u.group_files_shown;
                    if u.group_files.len() >= GROUP_FILES_KEPT {
                        u.group_files.pop_front();
                    }
                    u.group_files
                        .push_back((n, from.clone(), message_id.clone(), offer.clone()));
                    n
                });
                if let Some(n) = n {
                    let name = groups::name_of(&peer, group);
                    print_lines(&[files::group_file_line(&name, from, offer, n)]);
                }
                if let (true, PeerEvent::GroupMessage(m)) = (read_receipts, &event) {
                    send_group_receipt(&peer, m).await;
                }
            }
            PeerEvent::GroupMessage(m) => {
                print_lines(&groups::event_lines(&peer, &event));
                if read_receipts && !matches!(m.content, Content::FileDigest { .. }) {
                    send_group_receipt(&peer, m).await;
                }
            }
            PeerEvent::GroupRead {
                group,
                member,
                up_to,
                ..
            } => {
                let name = groups::name_of(&peer, group);
                let line = ui
                    .lock()
                    .ok()
                    .map(|mut u| u.read_by.read(group, &name, member, up_to));
                print_lines(&line.into_iter().collect::<Vec<_>>());
            }
            PeerEvent::GroupChanged { .. }
            | PeerEvent::GroupTyping { .. }
            | PeerEvent::GroupReadElsewhere { .. } => {
                print_lines(&groups::event_lines(&peer, &event));
            }
            PeerEvent::Link(link) => {
                if let lattice_peer::LinkEvent::AwaitingApproval { relay_id, .. } = link {
                    if let Ok(mut ui) = ui.lock() {
                        ui.link_awaiting = Some(relay_id.clone());
                    }
                }
                print_lines(&devices::event_lines(&event));
                if let lattice_peer::LinkEvent::Linked { .. } = link {
                    let target = ui.lock().ok().and_then(|u| u.device_file.clone());
                    print_lines(&devices::save_linked(&peer, target));
                }
            }
            PeerEvent::DevicesChanged { .. } => print_lines(&devices::event_lines(&event)),
            PeerEvent::ConnectionState(ConnectionState::Connected) => {
                if let Ok(mut ui) = ui.lock() {
                    ui.stopped = false;
                }
            }
            _ => {}
        }
        print_lines(&display::event_lines(&event));
    }
}

/// Key requests `/peers` has in flight at once: a listing of thousands of peers finishes in
/// minutes even if the server answers none of them (each waits the request timeout), without
/// opening thousands of requests at once.
const PEERS_CONCURRENCY: usize = 8;

/// How long leaving waits for the connection to close cleanly before exiting anyway.
const QUIT_GRACE: Duration = Duration::from_secs(2);

/// Lists online peers with their verification state; runs in the background (`/peers` returns at
/// once, a new `/peers` or `/quit` cancels it).
async fn list_peers(peer: MessagingPeer) {
    let peers = match peer.discover_peers().await {
        Ok(p) => p,
        Err(e) => {
            println!("!! cannot list peers: {}", escape(&e.to_string()));
            return;
        }
    };
    if peers.is_empty() {
        println!("-- nobody else is online");
        return;
    }
    println!("-- {} online; fetching their keys …", peers.len());
    let mut lines = futures_util::stream::iter(peers)
        .map(|p| {
            let peer = peer.clone();
            async move {
                let pinned_before = peer.peer_fingerprint(&p).ok().flatten().is_some();
                let name = escape(p.as_str()).into_owned();
                match peer.request_public_key(&p).await {
                    Ok(k) => match k.fingerprint() {
                        Some(fp) => format!(
                            "   {name} {}  {}",
                            display::trust_mark(pinned_before),
                            fp.short()
                        ),
                        None => format!("   {name} ⚠ unverified (original client)"),
                    },
                    Err(e) => format!("   {name} ({})", escape(&e.to_string())),
                }
            }
        })
        .buffered(PEERS_CONCURRENCY);
    while let Some(line) = lines.next().await {
        println!("{line}");
    }
    println!("-- end of list");
}

/// `/to p` in the background: plain lines go to `p` once its key is fetched, and only if no other
/// `/to` started meanwhile (`generation`).
async fn pick_peer(peer: MessagingPeer, ui: Shared, p: ClientId, generation: u64) {
    let pinned_before = peer.peer_fingerprint(&p).ok().flatten().is_some();
    let result = peer.request_public_key(&p).await;
    let Ok(mut u) = ui.lock() else { return };
    if u.to_generation != generation {
        return;
    }
    match result {
        Ok(k) => {
            match k.fingerprint() {
                Some(fp) => println!(
                    "-- talking to {p} {}, fingerprint {fp}",
                    display::trust_mark(pinned_before)
                ),
                None => println!("-- talking to {p} ⚠ unverified: an original client; its messages cannot be authenticated"),
            }
            u.current = Some(p);
        }
        Err(e) => println!(
            "!! cannot talk to {p}: {}; nothing is sent until you pick a peer with /to",
            escape(&e.to_string())
        ),
    }
}

/// `/reconnect` in the background.
async fn reconnect(peer: MessagingPeer) {
    println!("-- reconnecting …");
    match peer.connect().await {
        Ok(()) => println!("-- connected again"),
        Err(e) => print_lines(&display::disconnected_lines(&format!(
            "cannot reconnect: {}",
            escape(&e.to_string())
        ))),
    }
}

/// Whether something sent now would leave: refuses (and says so) while the connection is given
/// up, instead of queueing silently.
fn can_send(peer: &MessagingPeer, ui: &Shared) -> bool {
    if ui.lock().is_ok_and(|u| u.stopped) {
        println!("!! not sent: DISCONNECTED (type /reconnect)");
        return false;
    }
    match peer.connection_state() {
        ConnectionState::Connected => true,
        ConnectionState::Connecting | ConnectionState::Reconnecting { .. } => {
            println!("-- (reconnecting: queued, sent once connected)");
            true
        }
        ConnectionState::Disconnected => {
            println!("!! not sent: DISCONNECTED (type /reconnect)");
            false
        }
    }
}

/// Replaces a background task, cancelling the one it replaces.
fn replace_task(slot: &mut Option<JoinHandle<()>>, task: JoinHandle<()>) {
    if let Some(old) = slot.replace(task) {
        old.abort();
    }
}

/// The peer plain lines and content commands go to, if one is picked and something sent now
/// would leave (says why not otherwise).
fn current_peer(peer: &MessagingPeer, ui: &Shared) -> Option<ClientId> {
    let current = ui.lock().ok().and_then(|u| u.current.clone());
    match current {
        Some(_) if !can_send(peer, ui) => None,
        Some(to) => Some(to),
        None => {
            println!("!! not sent: no peer picked (/peers, then /to <peer>)");
            None
        }
    }
}

/// `/info`: the current conversation and the envelope its messages travel in.
fn info(peer: &MessagingPeer, ui: &Shared, group: Option<&lattice_peer::GroupId>) {
    if let Some(g) = group {
        match peer.group_info(g) {
            Ok(i) => println!(
                "-- group [{}], epoch {}, {} members; envelope mls (MLS group: forward secrecy, post-compromise security)",
                escape(&i.name),
                i.epoch,
                i.members.len()
            ),
            Err(e) => println!("!! {}", escape(&e.to_string())),
        }
        return;
    }
    let Some(p) = ui.lock().ok().and_then(|u| u.current.clone()) else {
        println!("-- no conversation picked (/to <peer> or /g <group>)");
        return;
    };
    let name = escape(p.as_str());
    let line = match (
        peer.conversation_envelope(&p),
        peer.peer_fingerprint(&p).ok().flatten(),
    ) {
        (Some(lattice_peer::Algorithm::Mls), _) => format!(
            "envelope mls: a 1:1 MLS conversation (forward secrecy, post-compromise security); older envelopes from {name} are refused"
        ),
        (_, Some(_)) if peer.groups_enabled() => format!(
            "envelope lattice-v1 (signed, sealed to {name}'s long-term key); the next message moves to MLS if {name} supports it"
        ),
        (_, Some(_)) => "envelope lattice-v1 (signed, sealed to the long-term key)".to_owned(),
        (_, None) => "envelope ml-kem-aes: an original client, unauthenticated".to_owned(),
    };
    println!("-- talking to {name}: {line}");
}

/// Message `#n` of the conversation with `to`, if it is one (says why not otherwise).
fn message_in(history: &History, to: &ClientId, n: i64) -> anyhow::Result<Option<history::Row>> {
    match history.get(n)? {
        Some(row) if row.peer == *to && !row.deleted => Ok(Some(row)),
        Some(row) if row.deleted => {
            println!("!! #{n} was deleted");
            Ok(None)
        }
        _ => {
            println!(
                "!! no message #{n} in the conversation with {}",
                escape(to.as_str())
            );
            Ok(None)
        }
    }
}

/// Sends `content` to `to`; the message id, or `None` (and why) if it was not sent.
async fn send(peer: &MessagingPeer, to: &ClientId, content: &Content) -> Option<MessageId> {
    let before = peer.conversation_envelope(to);
    match peer.send_content(to, content).await {
        Ok(sent) => {
            if before.is_none() && sent.algorithm == lattice_peer::Algorithm::Mls {
                println!(
                    "-- {}: end-to-end encrypted with MLS from now on (forward secrecy; older envelopes from it are refused)",
                    escape(to.as_str())
                );
            }
            Some(sent.message_id)
        }
        Err(e) => {
            println!(
                "!! not sent to {}: {}",
                escape(to.as_str()),
                escape(&e.to_string())
            );
            None
        }
    }
}

/// Sends a text or a reply and saves it; prints it with its number.
async fn send_text(
    peer: &MessagingPeer,
    history: &History,
    to: &ClientId,
    content: &Content,
    shown: &str,
) -> anyhow::Result<()> {
    let Some(text) = content.display_text() else {
        return Ok(());
    };
    if let Some(id) = send(peer, to, content).await {
        let n = history.add(to, peer.client_id(), &id, &text, now_ms())?;
        println!("{}", display::sent_line(n, to.as_str(), shown));
    }
    Ok(())
}

/// `/reply`, `/edit`, `/delete`, `/react`, `/search`.
async fn content_command(
    peer: &MessagingPeer,
    ui: &Shared,
    history: &History,
    command: Command,
) -> anyhow::Result<()> {
    let me = peer.client_id();
    if let Command::Search(words) = command {
        let rows = match history.search(&words) {
            Ok(rows) => rows,
            Err(history::HistoryError::Search(why)) => {
                println!("!! {why}");
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        if rows.is_empty() {
            println!("-- no message contains that");
        }
        for row in rows {
            let (from, to) = if row.sender == *me {
                ("you", row.peer.as_str())
            } else {
                (row.sender.as_str(), "you")
            };
            let lines = display::history_lines(row.n, from, to, &row.text);
            print_lines(&lines);
        }
        return Ok(());
    }
    let Some(to) = current_peer(peer, ui) else {
        return Ok(());
    };
    match command {
        Command::Reply { n, text } => {
            let Some(row) = message_in(history, &to, n)? else {
                return Ok(());
            };
            let content = Content::Reply {
                to: MessageRef {
                    sender: row.sender,
                    message_id: row.message_id,
                },
                excerpt: excerpt(&row.text),
                text: text.clone(),
            };
            send_text(peer, history, &to, &content, &format!("↪ #{n}: {text}")).await?;
        }
        Command::Edit(text) => {
            let Some(row) = history.last_own(me, &to)? else {
                println!(
                    "!! you have sent nothing to {} to edit",
                    escape(to.as_str())
                );
                return Ok(());
            };
            let content = Content::Edit {
                target: row.message_id.clone(),
                text: text.clone(),
            };
            if send(peer, &to, &content).await.is_some() {
                history.edit(&to, me, &row.message_id, &text, now_ms())?;
                println!("-- you edited #{}: {}", row.n, escape(&text));
            }
        }
        Command::Delete(n) => {
            let row = match n {
                Some(n) => message_in(history, &to, n)?,
                None => history.last_own(me, &to)?,
            };
            let Some(row) = row else {
                if n.is_none() {
                    println!(
                        "!! you have sent nothing to {} to delete",
                        escape(to.as_str())
                    );
                }
                return Ok(());
            };
            if row.sender != *me {
                println!("!! #{} is not yours: only its sender can delete it", row.n);
                return Ok(());
            }
            let content = Content::Delete {
                target: row.message_id.clone(),
            };
            if send(peer, &to, &content).await.is_some() {
                history.delete(&to, me, &row.message_id)?;
                println!("-- you deleted #{} for everyone", row.n);
            }
        }
        Command::React { n, emoji, remove } => {
            let Some(row) = message_in(history, &to, n)? else {
                return Ok(());
            };
            let content = Content::Reaction {
                target: MessageRef {
                    sender: row.sender,
                    message_id: row.message_id,
                },
                emoji: emoji.clone(),
                action: if remove {
                    ReactionAction::Remove
                } else {
                    ReactionAction::Add
                },
            };
            if send(peer, &to, &content).await.is_some() {
                history.react(n, me, &emoji, !remove)?;
                let done = if remove { "took back" } else { "reacted" };
                println!(
                    "-- you {done} {} on #{n}{}",
                    escape(&emoji),
                    reaction_counts(history, n)
                );
            }
        }
        _ => {}
    }
    Ok(())
}

async fn handle(
    peer: &MessagingPeer,
    ui: &Shared,
    history: &History,
    line: &str,
) -> anyhow::Result<bool> {
    let command = command::parse(line);
    let mut group = ui.lock().ok().and_then(|u| u.group.clone());
    let before = group.clone();
    let handled = groups::handle(peer, &mut group, &command).await;
    if group != before {
        if let Ok(mut u) = ui.lock() {
            u.group = group.clone();
            if group.is_some() {
                u.current = None;
            }
        }
    }
    if handled? {
        return Ok(true);
    }
    let awaiting = match &command {
        Command::LinkApprove(_) => ui.lock().ok().and_then(|mut u| u.link_awaiting.take()),
        _ => None,
    };
    let linker = ui.lock().ok().and_then(|u| u.linker.clone());
    if devices::handle(peer, &command, awaiting, linker.as_deref()).await? {
        return Ok(true);
    }
    match command {
        Command::Empty => {}
        Command::Help => println!("{HELP}"),
        Command::Quit => return Ok(false),
        Command::Invalid(why) => println!("!! {why} (try /help)"),
        Command::Peers => {
            let task = tokio::spawn(list_peers(peer.clone()));
            if let Ok(mut u) = ui.lock() {
                replace_task(&mut u.peers_task, task);
            }
        }
        Command::Info => info(peer, ui, group.as_ref()),
        Command::Reconnect => {
            if peer.connection_state() == ConnectionState::Connected {
                println!("-- already connected");
            } else {
                let task = tokio::spawn(reconnect(peer.clone()));
                if let Ok(mut u) = ui.lock() {
                    replace_task(&mut u.reconnect_task, task);
                }
            }
        }
        Command::Ask => peer.debug_question()?,
        Command::Answer { tag, text } => answer(peer, ui, tag, &text)?,
        Command::Dismiss(tag) => {
            let taken = ui.lock().ok().map(|mut u| u.questions.take(tag));
            match taken {
                Some(Ok((tag, _))) => println!("-- server question #{tag} dismissed, not answered"),
                Some(Err(e)) => println!("!! {e}"),
                None => {}
            }
        }
        Command::To(p) => {
            let p = ClientId::new(p)?;
            // Fail closed: from here until this `/to` succeeds, plain lines go nowhere.
            let shared = Arc::clone(ui);
            if let Ok(mut u) = ui.lock() {
                u.current = None;
                u.group = None;
                u.to_generation += 1;
                let task =
                    tokio::spawn(pick_peer(peer.clone(), shared, p.clone(), u.to_generation));
                replace_task(&mut u.to_task, task);
            }
            println!("-- fetching {p}'s key …");
        }
        Command::Fingerprint(None) => {
            println!("-- your fingerprint: {}", peer.fingerprint());
        }
        Command::Fingerprint(Some(p)) => {
            let p = ClientId::new(p)?;
            match peer.peer_fingerprint(&p)? {
                Some(fp) => println!("-- {p}: {fp}"),
                None => println!("-- no identity key pinned for {p} (try /to {p})"),
            }
        }
        Command::Accept(p) => {
            let p = ClientId::new(p)?;
            // Only the fingerprint this terminal showed (and the user compared) is accepted, and
            // only if the server still presents that key.
            let shown = ui.lock().ok().and_then(|mut u| {
                let entry = u.key_changes.get_mut(&p)?;
                let superseded = std::mem::replace(&mut entry.1, false);
                Some((entry.0.clone(), superseded))
            });
            match shown {
                None => println!("!! no key change of {p} was shown; nothing to accept"),
                Some((_, true)) => println!(
                    "!! {p} changed keys again since: compare the last fingerprint shown, then /accept {p} again"
                ),
                Some((fp, false)) => match peer.accept_key_change(&p, &fp).await {
                    Ok(()) => {
                        if let Ok(mut u) = ui.lock() {
                            u.key_changes.remove(&p);
                        }
                        println!("-- now trusting {p} with fingerprint {fp}");
                    }
                    Err(e) => println!("!! {}", escape(&e.to_string())),
                },
            }
        }
        Command::Text(text) if group.is_some() => {
            if let Some(g) = group.filter(|_| can_send(peer, ui)) {
                groups::send_text(peer, &g, &text).await;
            }
        }
        Command::Text(text) => {
            if let Some(to) = current_peer(peer, ui) {
                send_text(peer, history, &to, &Content::Text(text.clone()), &text).await?;
            }
        }
        Command::SendFile(path) => {
            if let Some(g) = &group {
                if can_send(peer, ui) {
                    files::send_group(peer, g, &groups::name_of(peer, g), &path).await;
                }
            } else if let Some(to) = current_peer(peer, ui) {
                files::send(peer, &to, &path).await;
            }
        }
        Command::GetFile { n, path } => files::get(peer, history, n, path.as_deref())?,
        Command::GetGroupFile { n, path } => {
            let found = ui.lock().ok().and_then(|u| {
                u.group_files
                    .iter()
                    .find(|(k, ..)| *k == n)
                    .map(|(_, from, id, offer)| (from.clone(), id.clone(), offer.clone()))
            });
            match found {
                Some((from, id, offer)) => {
                    files::get_group(
                        peer,
                        (&from, &id, &offer),
                        &format!("g{n}"),
                        path.as_deref(),
                    )?;
                }
                None => println!("!! g{n} is not a group file shown in this run"),
            }
        }
        Command::Transfers => files::list(peer),
        command @ (Command::Reply { .. }
        | Command::Edit(_)
        | Command::Delete(_)
        | Command::React { .. }
        | Command::Search(_)) => content_command(peer, ui, history, command).await?,
        // Handled by `groups::handle` above.
        Command::GroupNew { .. }
        | Command::GroupAdd(_)
        | Command::GroupRemove(_)
        | Command::GroupLeave
        | Command::GroupRename(_)
        | Command::GroupHeal
        | Command::HealAll
        | Command::Groups
        | Command::GroupPick(_)
        | Command::Members => {}
        // Handled by `devices::handle` above.
        Command::LinkStart { .. }
        | Command::LinkCode(_)
        | Command::LinkApprove(_)
        | Command::Devices
        | Command::DeviceRemove(_) => {}
    }
    Ok(true)
}

/// Answers pending question `tag` (or the only one) with `text`, if it fits the question.
fn answer(
    peer: &MessagingPeer,
    ui: &Shared,
    tag: Option<u32>,
    text: &str,
) -> Result<(), PeerError> {
    let Some(taken) = ui.lock().ok().map(|mut u| u.questions.take(tag)) else {
        return Ok(());
    };
    let (tag, q) = match taken {
        Ok(t) => t,
        Err(e) => {
            println!("!! {e}");
            return Ok(());
        }
    };
    let fits = questions::answerable(&q)
        .then(|| command::answer(q.question.kind, q.question.options.as_deref(), text))
        .flatten();
    match fits {
        Some(_) if !can_send(peer, ui) => {
            if let Ok(mut u) = ui.lock() {
                u.questions.put_back(tag, q);
            }
        }
        Some(value) => {
            peer.respond_to_server(&q.question_id, value)?;
            println!("{}", display::sent_line(None, "server", text.trim()));
        }
        None => {
            println!("!! that does not answer question #{tag}");
            print_lines(&display::question_lines(&q, tag));
            if let Ok(mut u) = ui.lock() {
                u.questions.put_back(tag, q);
            }
        }
    }
    Ok(())
}

fn default_identity_path(id: &ClientId) -> anyhow::Result<PathBuf> {
    Ok(dirs::data_dir()
        .context("no data directory on this system; pass --identity-file")?
        .join("lattice")
        .join(format!("{id}.identity")))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let id = ClientId::new(args.id.clone()).context("invalid --id")?;
    let path = match args.identity_file {
        Some(p) => p,
        None => default_identity_path(&id)?,
    };
    let linked = match &args.device_file {
        Some(file) if file.exists() => Some(
            lattice_peer::device_file::load(file, &id)
                .with_context(|| format!("cannot use {}", file.display()))?,
        ),
        _ => None,
    };
    // A linked device keeps its files next to its device file; the id's own device next to
    // its identity file.
    let (mut config, path) = match (linked, &args.device_file) {
        (Some(linked), Some(file)) => {
            println!(
                "-- running as device {:?} of {id} (MLS only)",
                escape(linked.device_id.as_str())
            );
            (
                PeerConfig::for_device(args.server.clone(), linked),
                file.clone(),
            )
        }
        _ => {
            let (identity, created) = lattice_peer::identity_file::load_or_create(&path)?;
            if created {
                println!("-- created a new identity in {}", path.display());
            }
            (
                PeerConfig::new(args.server.clone(), id.clone(), identity),
                path,
            )
        }
    };
    // Pins survive restarts, next to the identity: a key the server swaps in after a restart is
    // caught like one swapped in while running.
    let pins = lattice_peer::identity_file::key_store_path(&path);
    config.key_store = Arc::new(
        FileKeyStore::open(&pins).with_context(|| format!("cannot open {}", pins.display()))?,
    );
    // The history, next to the identity; the peer checks edits, deletes, reactions and receipts
    // that refer to older messages against it.
    let history_path = path.with_extension("history");
    let history = Arc::new(
        History::open(&history_path)
            .with_context(|| format!("cannot open {}", history_path.display()))?,
    );
    config.history = Arc::clone(&history) as _;
    // File transfers: their journals next to the identity (unfinished ones resume by themselves).
    config.transfers_dir = Some(path.with_extension("transfers"));
    // Groups (MLS): their state next to the identity.
    config.mls_state = Some(path.with_extension("mls"));
    // Wait for a server that is not up yet (with the reconnect backoff) instead of quitting.
    config.retry_first_connect = true;
    if let Some(ca) = args.ca_file {
        let pem = std::fs::read_to_string(&ca)
            .with_context(|| format!("cannot read {}", ca.display()))?;
        config.tls = TlsOptions {
            extra_ca_pem: Some(pem),
        };
    }
    let linker = devices::Linker::new(
        args.server.clone(),
        config.tls.clone(),
        args.device_file.clone(),
        print_lines,
    );
    let peer = MessagingPeer::new(config)?;
    peer.set_read_receipts(!args.no_read_receipts);
    let ui: Shared = Arc::default();
    if let Ok(mut u) = ui.lock() {
        u.device_file = args.device_file.clone();
        u.linker = Some(Arc::new(linker));
    }
    {
        let history = Arc::clone(&history);
        peer.on_event(move |event| store_event(&history, event));
    }
    let printer = tokio::spawn(print_events(
        peer.clone(),
        Arc::clone(&ui),
        Arc::clone(&history),
        !args.no_read_receipts,
    ));
    println!("-- connecting to {} …", args.server);
    tokio::select! {
        // The error may carry the server's words: escaped like everything else it says.
        r = peer.connect() => r.map_err(|e| {
            anyhow::anyhow!("cannot connect to {}: {}", escape(&args.server), escape(&e.to_string()))
        })?,
        r = tokio::signal::ctrl_c() => {
            r?;
            peer.disconnect().await;
            return Ok(());
        }
    }
    println!("-- connected to {} as {id}", args.server);
    println!("-- your fingerprint: {}", peer.fingerprint());
    println!("-- type /help for commands");

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    // Every command returns at once or races Ctrl-C: network work runs in background tasks.
    loop {
        let line = tokio::select! {
            line = lines.next_line() => match line? {
                Some(line) => line,
                None => break,
            },
            r = tokio::signal::ctrl_c() => { r?; break; }
        };
        tokio::select! {
            r = handle(&peer, &ui, &history, &line) => match r {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => println!("!! {}", escape(&e.to_string())),
            },
            r = tokio::signal::ctrl_c() => { r?; break; }
        }
    }
    if let Ok(mut u) = ui.lock() {
        for task in [
            u.to_task.take(),
            u.peers_task.take(),
            u.reconnect_task.take(),
        ]
        .into_iter()
        .flatten()
        {
            task.abort();
        }
    }
    let _ = tokio::time::timeout(QUIT_GRACE, peer.disconnect()).await;
    printer.abort();
    let _ = printer.await;
    // Exit now: returning would wait for the blocking read of stdin to end (the next Enter).
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    std::process::exit(0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use lattice_peer::ContentUpdate;

    #[test]
    fn changes_are_shown_by_number_and_stale_typing_not_at_all() {
        let history = History::in_memory().unwrap();
        let (me, bob) = (
            ClientId::new("alice").unwrap(),
            ClientId::new("bob").unwrap(),
        );
        let id: MessageId = "b1".parse().unwrap();
        history.add(&bob, &bob, &id, "hi", 1).unwrap();
        let update = |change, sent_at| {
            PeerEvent::Update(ContentUpdate {
                from: bob.clone(),
                message_id: "u".parse().unwrap(),
                sent_at,
                server_timestamp: sent_at,
                change,
            })
        };
        let deleted = update(Change::Deleted { target: id.clone() }, now_ms());
        assert_eq!(
            content_lines(&history, &me, &deleted),
            ["-- bob deleted #1 for everyone"]
        );
        let typing = |at| update(Change::Typing { started: true }, at);
        assert_eq!(
            content_lines(&history, &me, &typing(now_ms())),
            ["-- bob is typing …"]
        );
        let stale = now_ms() - TYPING_NOTICE_MAX_AGE_MS - 1_000;
        assert!(content_lines(&history, &me, &typing(stale)).is_empty());
    }
}
