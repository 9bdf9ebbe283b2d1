//! `lattice-server`: serve (the default), or `ask` a connected peer a question through the admin API.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand, ValueEnum};
use lattice_server::Config;
use tracing_subscriber::EnvFilter;

/// The Lattice signaling server.
///
/// Without a subcommand it serves WebSocket clients on --bind:--port (default 0.0.0.0:3005), keeping
/// identities and offline mail in SQLite under --data-dir. Every flag also reads a LATTICE_*
/// environment variable. Logs go to stderr; set LATTICE_LOG (e.g. `debug`) to change the level.
#[derive(Debug, Parser)]
#[command(
    name = "lattice-server",
    version,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
// Parsed once at start: the size of the enum does not matter.
#[allow(clippy::large_enum_variant)]
enum Command {
    /// Serve clients (the default when no subcommand is given).
    Serve(ServeArgs),
    /// Ask a connected peer a question through a running server's admin API and print its answer.
    Ask(AskArgs),
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    #[command(flatten)]
    config: Config,
    /// Keep everything in memory: nothing survives a restart (ignores --data-dir); the blob
    /// store (files) is off.
    #[arg(long, env = "LATTICE_IN_MEMORY")]
    in_memory: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Kind {
    Text,
    Choice,
    Confirm,
}

#[derive(Debug, clap::Args)]
struct AskArgs {
    /// The peer to ask.
    peer: String,
    /// The question.
    text: String,
    /// Answer control shown to the peer.
    #[arg(long, value_enum, default_value = "text")]
    kind: Kind,
    /// An option of a choice question (repeat the flag).
    #[arg(long = "option")]
    options: Vec<String>,
    /// Continue this conversation (the id printed by an earlier ask).
    #[arg(long)]
    conversation: Option<String>,
    /// Seconds to wait for the answer.
    #[arg(long, default_value_t = ASK_TIMEOUT_SECS)]
    timeout: u64,
    /// Base URL of the server's HTTP port.
    #[arg(
        long,
        env = "LATTICE_ADMIN_URL",
        default_value = format!("http://127.0.0.1:{}", lattice_protocol::limits::DEFAULT_PORT)
    )]
    url: String,
    /// Admin bearer token (the server's --admin-token).
    #[arg(long, env = "LATTICE_ADMIN_TOKEN", hide_env_values = true)]
    token: String,
}

/// How long `ask` waits for an answer unless told: two minutes, a person at a keyboard.
const ASK_TIMEOUT_SECS: u64 = 120;

fn default_data_dir() -> anyhow::Result<PathBuf> {
    let base = dirs::data_dir().context("no user data directory; pass --data-dir")?;
    Ok(base.join("lattice").join("server"))
}

fn main() -> anyhow::Result<()> {
    // One core (e.g. pinned with taskset): a current-thread runtime. Its run queue is plain FIFO,
    // which serves thousands of sessions evenly; the multi-thread scheduler's LIFO slot lets a
    // sender and its receiver ping-pong ahead of everyone else.
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let runtime = if cores == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
    };
    runtime.block_on(async_main())
}

async fn async_main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("LATTICE_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Ask(args)) => ask(args).await,
        Some(Command::Serve(args)) => serve(args).await,
        None => serve(cli.serve).await,
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = args.config;
    if args.in_memory {
        config.data_dir = None;
        config.blob_dir = None;
    } else if config.data_dir.is_none() {
        config.data_dir = Some(default_data_dir()?);
    }
    config.load_admin_token()?;
    config.validate()?;
    let addr = config.socket_addr();
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    if let Some(dir) = &config.data_dir {
        tracing::info!(data_dir = %dir.display(), "storage");
    }
    lattice_server::run(listener, config, shutdown_signal()).await?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutdown requested");
}

async fn ask(args: AskArgs) -> anyhow::Result<()> {
    let kind = match args.kind {
        Kind::Text => "text",
        Kind::Choice => "choice",
        Kind::Confirm => "confirm",
    };
    let mut question = serde_json::json!({ "text": args.text, "kind": kind });
    if !args.options.is_empty() {
        question["options"] = serde_json::json!(args.options);
    }
    let mut body = serde_json::json!({ "question": question, "timeoutMs": args.timeout * 1000 });
    if let Some(c) = &args.conversation {
        body["conversationId"] = serde_json::json!(c);
    }
    let url = format!(
        "{}/admin/peers/{}/questions",
        args.url.trim_end_matches('/'),
        args.peer
    );
    let response = reqwest::Client::builder()
        .timeout(Duration::from_secs(args.timeout + 10))
        .build()?
        .post(&url)
        .bearer_auth(&args.token)
        .json(&body)
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    let status = response.status();
    let value: serde_json::Value = response
        .json()
        .await
        .context("the server's answer is not JSON")?;
    if !status.is_success() {
        let msg = value["error"].as_str().unwrap_or("unknown error");
        bail!("{status}: {msg}");
    }
    println!("{}", serde_json::to_string_pretty(&value)?);
    Ok(())
}
