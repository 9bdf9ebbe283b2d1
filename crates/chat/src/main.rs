//! `lattice-chat`: a terminal client for Lattice.
//!
//! Connects with an id, lists peers, chats with one peer at a time, answers server questions
//! interactively, and shows who is verified and each peer's fingerprint. The identity is kept in
//! a file readable only by the user (0600), by default `<data dir>/lattice/<id>.identity`.
//!
//! ```text
//! lattice-chat --server ws://127.0.0.1:3005 --id alice
//! ```

mod command;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use clap::Parser;
use command::{Command, HELP};
use lattice_crypto::Fingerprint;
use lattice_peer::{
    ConnectionState, IncomingQuestion, MessagingPeer, PeerConfig, PeerError, PeerEvent, TlsOptions,
};
use lattice_protocol::{ClientId, QuestionKind};
use tokio::io::{AsyncBufReadExt as _, BufReader};

/// Command-line flags.
#[derive(Debug, Parser)]
#[command(
    name = "lattice-chat",
    version,
    about = "Chat over Lattice from a terminal"
)]
struct Args {
    /// Signaling server URL (ws:// or wss://).
    #[arg(long, env = "LATTICE_SERVER", default_value = "ws://127.0.0.1:3005")]
    server: String,
    /// Your client id (1-64 of A-Z a-z 0-9 . _ - @).
    #[arg(long, env = "LATTICE_ID")]
    id: String,
    /// Identity file; created (0600) if missing. Default: <data dir>/lattice/<id>.identity.
    #[arg(long, env = "LATTICE_IDENTITY_FILE")]
    identity_file: Option<PathBuf>,
    /// Extra CA certificate (PEM) to trust for wss://.
    #[arg(long)]
    ca_file: Option<PathBuf>,
}

/// What the input loop and the event printer share.
#[derive(Debug, Default)]
struct Ui {
    /// Who plain lines go to.
    current: Option<ClientId>,
    /// The question the next plain line answers.
    question: Option<IncomingQuestion>,
    /// Per peer, the new fingerprint last shown for a key change (what `/accept` pins), and
    /// whether another new key replaced an earlier one shown since the last `/accept` attempt.
    key_changes: HashMap<ClientId, (Fingerprint, bool)>,
}

// std Mutex: held for a field read or write, never across an await.
type Shared = Arc<Mutex<Ui>>;

fn print_question(q: &IncomingQuestion) {
    let round = q.round.map(|r| format!(" (round {r})")).unwrap_or_default();
    println!("?? server asks{round}: {}", q.question.text);
    match (q.question.kind, q.question.options.as_deref()) {
        (Some(QuestionKind::Choice), Some(options)) => {
            for (i, o) in options.iter().enumerate() {
                println!("   {}. {o}", i + 1);
            }
            println!("   (answer with a number or the option)");
        }
        (Some(QuestionKind::Confirm), _) => println!("   (answer y or n)"),
        _ => println!("   (type your answer)"),
    }
}

fn describe_error(e: &PeerError) -> String {
    match e {
        PeerError::Rejected { from, reason, .. } => {
            format!("!! refused a message from {from}: {reason}")
        }
        other => format!("!! {other}"),
    }
}

/// Prints events until the stream ends.
async fn print_events(peer: MessagingPeer, ui: Shared) {
    let mut events = peer.events();
    while let Some(event) = events.next().await {
        match event {
            PeerEvent::Message(m) => {
                let mark = if m.verified { "✓" } else { "⚠ unverified" };
                println!("[{} {mark}] {}", m.from, m.text);
            }
            PeerEvent::ServerQuestion(q) => {
                print_question(&q);
                if let Ok(mut ui) = ui.lock() {
                    ui.question = Some(q);
                }
            }
            PeerEvent::PeerConnected(p) => println!("-- {p} is online"),
            PeerEvent::PeerDisconnected(p) => println!("-- {p} left"),
            PeerEvent::ConnectionState(s) => match s {
                ConnectionState::Connected => println!("-- connected"),
                ConnectionState::Reconnecting { attempt } => {
                    println!("-- connection lost, reconnecting (attempt {attempt})");
                }
                ConnectionState::Disconnected => println!("-- disconnected"),
                ConnectionState::Connecting => {}
            },
            PeerEvent::KeyChanged { peer, old, new } => {
                if let Ok(mut ui) = ui.lock() {
                    let replaced = ui
                        .key_changes
                        .get(&peer)
                        .is_some_and(|(shown, _)| shown != &new);
                    if replaced {
                        println!("!! {peer} changed keys AGAIN: compare the fingerprint below, not the earlier one");
                    }
                    ui.key_changes.insert(peer.clone(), (new.clone(), replaced));
                }
                println!("!! the identity key of {peer} CHANGED");
                println!("   was: {old}");
                println!("   now: {new}");
                println!("   nothing is sent to or accepted from {peer} until you compare the new fingerprint with them and type /accept {peer}");
            }
            PeerEvent::MessageFailed { target, error, .. } => {
                println!("!! message to {target} not delivered: {error}");
            }
            PeerEvent::MessageAck(a) => {
                tracing::debug!(message_id = %a.message_id, status = ?a.status, "ack");
            }
            PeerEvent::Error(e) => println!("{}", describe_error(&e)),
            PeerEvent::Lagged { missed } => println!("!! {missed} events were not shown"),
            _ => {}
        }
    }
}

async fn list_peers(peer: &MessagingPeer) -> Result<(), PeerError> {
    let peers = peer.discover_peers().await?;
    if peers.is_empty() {
        println!("-- nobody else is online");
    }
    for p in peers {
        match peer.request_public_key(&p).await {
            Ok(k) => match k.fingerprint() {
                Some(fp) => println!("   {p} ✓ verified  {}", fp.short()),
                None => println!("   {p} ⚠ unverified (original client)"),
            },
            Err(e) => println!("   {p} ({e})"),
        }
    }
    Ok(())
}

async fn handle(peer: &MessagingPeer, ui: &Shared, line: &str) -> anyhow::Result<bool> {
    let pending = ui.lock().ok().and_then(|mut u| {
        let is_text = matches!(command::parse(line), Command::Text(_));
        if is_text {
            u.question.take()
        } else {
            None
        }
    });
    if let Some(q) = pending {
        match command::answer(q.question.kind, q.question.options.as_deref(), line) {
            Some(answer) => peer.respond_to_server(&q.question_id, answer)?,
            None => {
                println!("!! that does not answer the question");
                print_question(&q);
                if let Ok(mut u) = ui.lock() {
                    u.question = Some(q);
                }
            }
        }
        return Ok(true);
    }
    match command::parse(line) {
        Command::Empty => {}
        Command::Help => println!("{HELP}"),
        Command::Quit => return Ok(false),
        Command::Invalid(why) => println!("!! {why} (try /help)"),
        Command::Peers => list_peers(peer).await?,
        Command::Ask => peer.debug_question()?,
        Command::To(p) => {
            let p = ClientId::new(p)?;
            match peer.request_public_key(&p).await {
                Ok(k) => {
                    match k.fingerprint() {
                        Some(fp) => println!("-- talking to {p} ✓ verified, fingerprint {fp}"),
                        None => println!("-- talking to {p} ⚠ unverified: an original client; its messages cannot be authenticated"),
                    }
                    if let Ok(mut u) = ui.lock() {
                        u.current = Some(p);
                    }
                }
                Err(e) => println!("!! cannot talk to {p}: {e}"),
            }
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
                    Err(e) => println!("!! {e}"),
                },
            }
        }
        Command::Text(text) => {
            let current = ui.lock().ok().and_then(|u| u.current.clone());
            match current {
                Some(to) => {
                    if let Err(e) = peer.send_message(&to, &text).await {
                        println!("!! not sent: {e}");
                    }
                }
                None => println!("!! pick a peer first: /peers, then /to <peer>"),
            }
        }
    }
    Ok(true)
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
    peer.connect()
        .await
        .with_context(|| format!("cannot connect to {}", args.server))?;
    println!("-- connected to {} as {id}", args.server);
    println!("-- your fingerprint: {}", peer.fingerprint());
    println!("-- type /help for commands");

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            line = lines.next_line() => match line? {
                Some(line) => match handle(&peer, &ui, &line).await {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => println!("!! {e}"),
                },
                None => break,
            },
            r = tokio::signal::ctrl_c() => { r?; break; }
        }
    }
    peer.disconnect().await;
    printer.abort();
    let _ = printer.await;
    Ok(())
}
