//! A bot that answers every message by quoting it — from Lattice peers (signed `lattice-v1`) and
//! original clients (`ml-kem-aes`, flagged unverified) alike — and answers server questions with
//! canned replies. `make run` starts it next to the server so a newcomer has someone to talk to.
//!
//! ```text
//! cargo run -p lattice-peer --example echo_bot -- --server ws://127.0.0.1:3005 --id echo
//! ```
//!
//! Its identity lives in `<data dir>/lattice/bots/<id>.identity` (0600), so it keeps its id
//! across restarts (a verified id is bound to its identity key on the server); the identity keys
//! it pinned live next to it (`<id>.pins`, 0600), so a key swapped in after a restart is caught.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use lattice_crypto::IdentityPublicKey;
use lattice_peer::sanitize::Sanitized;
use lattice_peer::{
    FileKeyStore, KeyStore, MessagingPeer, PeerConfig, PeerError, PeerEvent, TlsOptions,
};
use lattice_protocol::{ClientId, QuestionKind};

/// Command-line flags.
#[derive(Debug, Parser)]
#[command(about = "A Lattice peer that echoes every message it receives")]
struct Args {
    /// Signaling server URL (ws:// or wss://).
    #[arg(long, env = "LATTICE_SERVER", default_value = "ws://127.0.0.1:3005")]
    server: String,
    /// The bot's client id.
    #[arg(long, default_value = "echo")]
    id: String,
    /// Identity file (created if missing).
    #[arg(long)]
    identity_file: Option<PathBuf>,
    /// Extra CA certificate (PEM) to trust for wss://.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Longest wait between two connection attempts, in seconds (the backoff's cap). `make run`
    /// passes a short one so the bot joins as soon as the app's embedded server is up.
    #[arg(long, value_name = "SECONDS")]
    max_retry_delay: Option<u64>,
}

/// How long the bot waits, once replaced by another connection of its identity (close 4000),
/// before it connects again. A bot should not stay silent because one close frame said so (on
/// `ws://` anyone on the path can send it), but two instances of it must not take the id from each
/// other once a second either: every five minutes is a nuisance at worst.
pub const RETAKE_AFTER: std::time::Duration = std::time::Duration::from_secs(300);

/// The bot's pinned keys: a [`FileKeyStore`] in which nobody is a contact. The bot answers
/// everyone, so counting those it answered as contacts would fill the bounded store with
/// contacts and then refuse every new sender; instead the oldest pin goes first.
#[allow(dead_code)] // Unused when the tests include this file as a module.
#[derive(Debug)]
pub struct BotKeys(pub FileKeyStore);

impl KeyStore for BotKeys {
    fn pinned(&self, peer: &ClientId) -> Result<Option<IdentityPublicKey>, PeerError> {
        self.0.pinned(peer)
    }

    fn pin(&self, peer: &ClientId, key: &IdentityPublicKey) -> Result<(), PeerError> {
        self.0.pin(peer, key)
    }
}

/// The reply to a message: the text quoted line by line.
pub fn quote(text: &str) -> String {
    let quoted: Vec<String> = text.lines().map(|l| format!("> {l}")).collect();
    if quoted.is_empty() {
        "> (empty message)".to_owned()
    } else {
        quoted.join("\n")
    }
}

/// Runs the bot on a connected peer until the event stream ends.
pub async fn run(peer: MessagingPeer) {
    let mut events = peer.events();
    while let Some(event) = events.next().await {
        match event {
            PeerEvent::Message(m) => {
                let sender = if m.verified { "verified" } else { "unverified" };
                tracing::info!(from = %m.from, sender, "echoing a message");
                if let Err(e) = peer.send_message(&m.from, &quote(&m.text)).await {
                    tracing::warn!(to = %m.from, error = %Sanitized(&e), "cannot answer");
                }
            }
            PeerEvent::ServerQuestion(q) => {
                let answer: serde_json::Value = match q.question.kind {
                    Some(QuestionKind::Confirm) => true.into(),
                    Some(QuestionKind::Choice) => q
                        .question
                        .options
                        .as_ref()
                        .and_then(|o| o.first().cloned())
                        .unwrap_or_default()
                        .into(),
                    _ => format!("echo: {}", q.question.text).into(),
                };
                if let Err(e) = peer.respond_to_server(&q.question_id, answer) {
                    tracing::warn!(error = %Sanitized(&e), "cannot answer the server");
                }
            }
            PeerEvent::Error(PeerError::Replaced) => {
                // The library stops after a 4000 close (two instances would take the id from each
                // other forever); a bot is not meant to idle, so it takes the id back, slowly.
                tracing::warn!(retry_in = ?RETAKE_AFTER, "replaced by another connection of this identity (close 4000); taking the id back later");
                let p = peer.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(RETAKE_AFTER).await;
                    if let Err(e) = p.connect().await {
                        tracing::warn!(error = %Sanitized(&e), "cannot connect again");
                    }
                });
            }
            PeerEvent::Error(e) => tracing::warn!(error = %Sanitized(&e), "peer error"),
            PeerEvent::ConnectionState(s) => tracing::info!(state = ?s, "connection"),
            _ => {}
        }
    }
}

#[allow(dead_code)] // Unused when the tests include this file as a module.
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let client_id = ClientId::new(args.id.clone())?;
    let path = match args.identity_file {
        Some(p) => p,
        None => dirs::data_dir()
            .ok_or_else(|| anyhow::anyhow!("no data directory; pass --identity-file"))?
            .join("lattice")
            .join("bots")
            .join(format!("{}.identity", client_id)),
    };
    let (identity, created) = lattice_peer::identity_file::load_or_create(&path)?;
    if created {
        tracing::info!(path = %path.display(), "created a new identity");
    }
    let mut config = PeerConfig::new(args.server, client_id, identity);
    // Pins survive restarts, next to the identity file.
    let pins = lattice_peer::identity_file::key_store_path(&path);
    config.key_store = Arc::new(BotKeys(FileKeyStore::open(&pins)?));
    // A bot keeps trying, from the first connection on: it may be started before its server.
    config.reconnect.max_attempts = 0;
    config.retry_first_connect = true;
    if let Some(secs) = args.max_retry_delay {
        config.reconnect.max = std::time::Duration::from_secs(secs.max(1));
    }
    if let Some(ca) = args.ca_file {
        config.tls = TlsOptions {
            extra_ca_pem: Some(std::fs::read_to_string(ca)?),
        };
    }
    let peer = MessagingPeer::new(config)?;
    tokio::select! {
        r = peer.connect() => r?,
        r = tokio::signal::ctrl_c() => {
            r?;
            peer.disconnect().await;
            return Ok(());
        }
    }
    tracing::info!(id = %peer.client_id(), fingerprint = %peer.fingerprint(), "echo bot ready");
    tokio::select! {
        () = run(peer.clone()) => {}
        r = tokio::signal::ctrl_c() => r?,
    }
    peer.disconnect().await;
    Ok(())
}
