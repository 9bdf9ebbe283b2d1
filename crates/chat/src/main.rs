//! `lattice-chat`: a terminal client for Lattice.
//!
//! Connects with an id, lists peers, chats with one peer at a time, answers server questions
//! interactively, and shows who is verified and each peer's fingerprint. The identity is kept in
//! a file readable only by the user (0600), by default `<data dir>/lattice/<id>.identity`, and the
//! pinned identity keys of peers next to it (`<id>.pins`, also 0600).
//!
//! ```text
//! lattice-chat --server ws://127.0.0.1:3005 --id alice
//! ```

mod command;
mod display;
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
use lattice_crypto::Fingerprint;
use lattice_peer::{
    ConnectionState, FileKeyStore, MessagingPeer, PeerConfig, PeerError, PeerEvent, TlsOptions,
};
use lattice_protocol::ClientId;
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
    /// Extra CA certificate (PEM) to trust for wss://.
    #[arg(long)]
    ca_file: Option<PathBuf>,
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
}

// std Mutex: held for a field read or write, never across an await.
type Shared = Arc<Mutex<Ui>>;

/// Prints `lines` together (no other output between them).
fn print_lines(lines: &[String]) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    for line in lines {
        // Nothing sensible to do if the terminal is gone.
        let _ = writeln!(out, "{line}");
    }
}

/// Prints events until the stream ends; remembers what `/accept` and plain lines refer to.
async fn print_events(peer: MessagingPeer, ui: Shared) {
    let mut events = peer.events();
    while let Some(event) = events.next().await {
        match &event {
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
            PeerEvent::MessageAck(a) => {
                tracing::debug!(message_id = %a.message_id, status = ?a.status, "ack");
            }
            PeerEvent::Error(PeerError::Replaced | PeerError::ReconnectFailed { .. }) => {
                if let Ok(mut ui) = ui.lock() {
                    ui.stopped = true;
                }
            }
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

async fn handle(peer: &MessagingPeer, ui: &Shared, line: &str) -> anyhow::Result<bool> {
    match command::parse(line) {
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
        Command::Text(text) => {
            let current = ui.lock().ok().and_then(|u| u.current.clone());
            match current {
                Some(_) if !can_send(peer, ui) => {}
                Some(to) => match peer.send_message(&to, &text).await {
                    Ok(_) => println!("{}", display::sent_line(to.as_str(), &text)),
                    Err(e) => println!(
                        "!! not sent to {}: {}",
                        escape(to.as_str()),
                        escape(&e.to_string())
                    ),
                },
                None => println!("!! not sent: no peer picked (/peers, then /to <peer>)"),
            }
        }
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
            println!("{}", display::sent_line("server", text.trim()));
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
    let (identity, created) = lattice_peer::identity_file::load_or_create(&path)?;
    if created {
        println!("-- created a new identity in {}", path.display());
    }
    let mut config = PeerConfig::new(args.server.clone(), id.clone(), identity);
    // Pins survive restarts, next to the identity: a key the server swaps in after a restart is
    // caught like one swapped in while running.
    let pins = lattice_peer::identity_file::key_store_path(&path);
    config.key_store = Arc::new(
        FileKeyStore::open(&pins).with_context(|| format!("cannot open {}", pins.display()))?,
    );
    // Wait for a server that is not up yet (with the reconnect backoff) instead of quitting.
    config.retry_first_connect = true;
    if let Some(ca) = args.ca_file {
        let pem = std::fs::read_to_string(&ca)
            .with_context(|| format!("cannot read {}", ca.display()))?;
        config.tls = TlsOptions {
            extra_ca_pem: Some(pem),
        };
    }
    let peer = MessagingPeer::new(config)?;
    let ui: Shared = Arc::default();
    let printer = tokio::spawn(print_events(peer.clone(), Arc::clone(&ui)));
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
            r = handle(&peer, &ui, &line) => match r {
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
