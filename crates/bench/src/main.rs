//! `lattice-loadgen`: drives a running server with N sender→receiver pairs and reports delivered
//! messages per second and latency percentiles; measures server memory per idle connection; and
//! (`compare`) runs lattice-server and the minimal relay side by side, each pinned to core 0, so
//! the throughput ratio is always at hand.
//!
//! Messages are real 1 KiB `ml-kem-aes` envelopes (about 2.9 KB frames). The load is closed-loop:
//! each sender keeps `--inflight` messages outstanding and sends the next when one arrives.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use futures_util::{SinkExt as _, StreamExt as _};
use hdrhistogram::Histogram;
use tokio::sync::{Mutex, Semaphore};
use tokio_tungstenite::tungstenite::Message;

mod failover;
mod files;
mod scale;
mod soak;

#[derive(Debug, Parser)]
#[command(name = "lattice-loadgen", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Closed-loop throughput and latency against a running server, or several nodes of one
    /// (`--url A,B,C`: pair i's receiver on node i mod N, its sender on the same node, or with
    /// `--cross` on the next one).
    Throughput {
        /// Server URL(s), comma-separated for the nodes of a server on Redis.
        #[arg(long, value_delimiter = ',', default_value = format!("ws://127.0.0.1:{}", lattice_protocol::limits::DEFAULT_PORT))]
        url: Vec<String>,
        /// Sender→receiver pairs.
        #[arg(long, default_value_t = 10)]
        pairs: usize,
        /// With several URLs: each sender on another node than its receiver.
        #[arg(long)]
        cross: bool,
        #[command(flatten)]
        load: Load,
    },
    /// Server RSS per idle registered connection (the server must run on this machine).
    Idle {
        /// Server URL.
        #[arg(long, default_value = format!("ws://127.0.0.1:{}", lattice_protocol::limits::DEFAULT_PORT))]
        url: String,
        /// The server's process id (for /proc/PID/status).
        #[arg(long)]
        pid: u32,
        /// Connections to open and register.
        #[arg(long, default_value_t = 10_000)]
        conns: usize,
        /// Send `publicKey` as base64 (accepted on input) instead of the original byte array.
        #[arg(long)]
        base64_keys: bool,
        /// Seconds to hold the connections before reading the RSS (past the server's 20 s ping
        /// interval to include what a heartbeat leaves behind).
        #[arg(long, default_value_t = IDLE_SETTLE_SECS)]
        settle: u64,
    },
    /// Soak and crash test: a spawned lattice-server on a data dir, churning, dropping and
    /// stalling verified recipients, optional kill -9 and restart; accounts for every message and
    /// fails if an acknowledged one is lost.
    Soak(soak::SoakArgs),
    /// One server, many connections: opens and holds N registered connections (over several
    /// loopback source addresses), reports the server's RSS per connection, the latency of
    /// messages through a sample of them, and the registration rate of a full reconnect storm.
    Scale(scale::ScaleArgs),
    /// Several nodes on Redis: connections spread over them, the first node SIGKILLed, its
    /// peers moved to the survivors; the time until all are registered again and receiving.
    Failover(failover::FailoverArgs),
    /// The delivery paths for verified recipients side by side, each on a fresh lattice-server
    /// (pinned to core 0) on a fresh data dir: committed before the answer (`--ack-wait 0`),
    /// end-to-end `delivered` (the default), and the memory-only path of unverified recipients;
    /// rounds alternate. Reports throughput, receive and sender-answer latency, the answers'
    /// statuses and the server's CPU per message.
    Delivery {
        /// Pair counts to run.
        #[arg(long, value_delimiter = ',', default_value = "10,100")]
        pairs: Vec<usize>,
        /// Rounds of the three paths.
        #[arg(long, default_value_t = 2)]
        rounds: usize,
        #[command(flatten)]
        load: Load,
        /// Directory holding the lattice-server binary (default: next to this one).
        #[arg(long)]
        bin_dir: Option<PathBuf>,
    },
    /// Files end to end (sender disk -> lattice-server's blob store -> receiver disk) side by side
    /// with a memory-only raw WebSocket and a disk-bound reference (no crypto); with
    /// `--two-nodes`, also through two `--redis` nodes sharing one `--blob-dir`. Seal/open CPU per
    /// MiB; CPU and peak RSS of sender, server(s) and receiver; time to resume after a SIGKILL.
    Files(files::FilesArgs),
    /// One side of `files` (started by it).
    #[command(hide = true)]
    FilesPeer(files::PeerArgs),
    /// Start lattice-server and minimal-relay (pinned to core 0 with taskset) and measure both.
    Compare {
        /// Pair counts to run.
        #[arg(long, value_delimiter = ',', default_value = "1,10,100,1000")]
        pairs: Vec<usize>,
        /// Idle connections for the memory measurement (0 skips it).
        #[arg(long, default_value_t = 10_000)]
        idle: usize,
        /// Also run lattice-server with native TLS (a throwaway CA) beside the same server
        /// without, at these pair counts: the cost of TLS.
        #[arg(long, value_delimiter = ',')]
        tls_pairs: Vec<usize>,
        #[command(flatten)]
        load: Load,
        /// Directory holding the lattice-server and minimal-relay binaries (default: next to this one).
        #[arg(long)]
        bin_dir: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, clap::Args)]
struct Load {
    /// Seconds measured (after one second of warm-up).
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Messages in flight per sender.
    #[arg(long, default_value_t = 32)]
    inflight: usize,
    /// Plaintext bytes per message.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Receivers register verified and acknowledge every message (as soon as nothing more is
    /// buffered, or every 16): the delivery contract's path, where the sender's `message_ack`
    /// follows the receiver's `ack` (or, with the server's `--ack-wait 0`, the message's commit
    /// to the SQLite mailbox; run the server with `--data-dir` to measure it on disk).
    #[arg(long)]
    verified: bool,
}

/// Seconds `idle` holds the connections before reading the server's RSS.
const IDLE_SETTLE_SECS: u64 = 3;

/// Acks a verified receiver writes before one flush.
const ACK_BATCH: u64 = 16;

/// The string value of `"field":"…"` in a frame the server encoded (ids need no unescaping).
fn field<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    let key = format!(r#""{name}":""#);
    let i = text.rfind(&key)? + key.len();
    text[i..].split('"').next()
}

/// Most frames a sender writes with one flush.
const SEND_BATCH: usize = 16;

#[derive(Debug)]
struct Report {
    /// Messages received in the measured window.
    delivered: u64,
    /// Messages received in the whole run (warm-up and drain included), for CPU per message.
    received_all: u64,
    /// Senders' `message_ack`s by status, and `error` frames, in the whole run.
    acks_delivered: u64,
    acks_queued: u64,
    errors: u64,
    /// The `error` frames by `errorType`, and when each type was first and last seen (seconds
    /// from the start; the measured window is 1 s to 1 s + `--duration`).
    error_types: std::collections::BTreeMap<String, (u64, f64, f64)>,
    /// Send → `message_ack` latency of messages sent in the measured window.
    ack_p50_us: u64,
    ack_p99_us: u64,
    secs: f64,
    p50_us: u64,
    p99_us: u64,
    p999_us: u64,
    min_pair: u64,
    max_pair: u64,
}

impl Report {
    fn rate(&self) -> f64 {
        self.delivered as f64 / self.secs
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Files move through several tasks at once (chunks in flight, disk, crypto): a runtime with
    // worker threads, like an app's.
    match cli.command {
        Cmd::Files(args) => {
            return tokio::runtime::Runtime::new()?.block_on(files::files(args));
        }
        Cmd::FilesPeer(args) => {
            return tokio::runtime::Runtime::new()?.block_on(files::run_peer(args));
        }
        _ => {}
    }
    // Single-threaded on purpose: the generator is pinned to one core, and one thread avoids
    // measuring our own cross-thread wake-ups.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cli.command {
            Cmd::Throughput {
                url,
                pairs,
                cross,
                load,
            } => {
                let r = throughput_on(&url, cross, pairs, &load).await?;
                let name = match (url.len(), cross) {
                    (1, _) => "server",
                    (_, false) => "same-node",
                    (_, true) => "cross-node",
                };
                print_report(name, pairs, &r);
                print_answers(&r);
            }
            Cmd::Idle {
                url,
                pid,
                conns,
                base64_keys,
                settle,
            } => {
                let per = idle(&url, pid, conns, base64_keys, settle).await?;
                println!("idle: {conns} registered connections, {per:.1} KiB of server RSS each");
            }
            Cmd::Soak(args) => soak::soak(args).await?,
            Cmd::Scale(args) => scale::scale(args).await?,
            Cmd::Failover(args) => failover::failover(args).await?,
            Cmd::Delivery {
                pairs,
                rounds,
                load,
                bin_dir,
            } => delivery(&pairs, rounds, load, bin_dir).await?,
            Cmd::Compare {
                pairs,
                idle: idle_n,
                tls_pairs,
                load,
                bin_dir,
            } => {
                compare(&pairs, idle_n, &tls_pairs, load, bin_dir).await?;
            }
            Cmd::Files(_) | Cmd::FilesPeer(_) => {}
        }
        Ok(())
    })
}

fn print_report(name: &str, pairs: usize, r: &Report) {
    println!(
        "{name:<15} pairs={pairs:<5} {:>9.0} msgs/s  p50={:>7} us  p99={:>7} us  p999={:>7} us  per-pair min/max={}/{}",
        r.rate(),
        r.p50_us,
        r.p99_us,
        r.p999_us,
        r.min_pair,
        r.max_pair
    );
}

/// The senders' answers: statuses, errors, and send → `message_ack` latency.
fn print_answers(r: &Report) {
    println!(
        "{:<15} answers delivered/queued/errors={}/{}/{}  answer p50={:>7} us  p99={:>7} us  received={}",
        "",
        r.acks_delivered,
        r.acks_queued,
        r.errors,
        r.ack_p50_us,
        r.ack_p99_us,
        r.received_all
    );
    for (kind, (n, first, last)) in &r.error_types {
        println!(
            "{:<15} errors {kind}: {n} (first at {first:.2} s, last at {last:.2} s)",
            ""
        );
    }
}

/// A sealed 1 KiB message, as JSON text without its closing brace (the generator appends a send
/// timestamp field the servers forward untouched).
fn envelope_prefix(size: usize) -> anyhow::Result<String> {
    let mut rng = rand::rngs::OsRng;
    let kp = lattice_crypto::KemKeyPair::generate(&mut rng);
    let body: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
    let sealed = lattice_crypto::ml_kem_aes::seal(&mut rng, kp.public_key(), &body)?;
    let env = lattice_protocol::Envelope::from_bytes(
        lattice_crypto::ml_kem_aes::ALGORITHM,
        &sealed.cipher_text,
        &sealed.encrypted_data,
    );
    let mut s = serde_json::to_string(&env)?;
    s.pop();
    Ok(s)
}

/// A real ML-KEM-768 public key as the `publicKey` JSON value: a byte array (the original
/// shape) or a base64 string.
fn public_key_json(base64: bool) -> String {
    use base64::Engine as _;
    let kp = lattice_crypto::KemKeyPair::generate(&mut rand::rngs::OsRng);
    let bytes = kp.public_key().as_bytes();
    if base64 {
        format!(
            "\"{}\"",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        )
    } else {
        serde_json::to_string(bytes).unwrap_or_default()
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The settings of the `scale` generator's connections: a small read buffer, since it holds tens
/// of thousands of them (tungstenite's default is 128 KiB each).
fn client_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(16 * 1024)
}

/// The client TLS settings for `wss://` URLs: set once by `compare --tls-pairs` to trust its
/// throwaway CA.
static TLS_CLIENT: std::sync::OnceLock<Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();

async fn connect_and_register(url: &str, id: &str, key_json: &str) -> anyhow::Result<Ws> {
    let connector = TLS_CLIENT
        .get()
        .map(|c| tokio_tungstenite::Connector::Rustls(Arc::clone(c)));
    // Nagle off: the generator must not add 40 ms stalls of its own to the closed loop.
    let (ws, _) = tokio_tungstenite::connect_async_tls_with_config(url, None, true, connector)
        .await
        .with_context(|| format!("connect {url}"))?;
    register(ws, id, key_json).await
}

/// Registers `id` with the key `key_json` on a connected socket.
async fn register(mut ws: Ws, id: &str, key_json: &str) -> anyhow::Result<Ws> {
    let reg =
        format!(r#"{{"type":"register","payload":{{"clientId":"{id}","publicKey":{key_json}}}}}"#);
    ws.send(Message::Text(reg.into())).await?;
    loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                if t.contains(r#""type":"register""#) {
                    return Ok(ws);
                }
                if t.contains(r#""type":"error""#) {
                    bail!("register {id}: {t}");
                }
            }
            Ok(Some(Ok(_))) => {}
            _ => bail!("register {id}: no answer"),
        }
    }
}

/// The `"t":<micros>` send time the generator put at the end of the envelope, in a `message` frame.
fn sent_at(text: &str) -> Option<u64> {
    if !text.starts_with(r#"{"type":"message""#) {
        return None;
    }
    let i = text.rfind(r#","t":"#)? + 5;
    let digits = text[i..].split(|c: char| !c.is_ascii_digit()).next()?;
    digits.parse().ok()
}

async fn throughput(url: &str, pairs: usize, load: &Load) -> anyhow::Result<Report> {
    throughput_on(&[url.to_owned()], false, pairs, load).await
}

/// [`throughput`] over the nodes at `urls`: pair i's receiver on node i mod N, its sender on the
/// same node, or on the next one with `cross`.
async fn throughput_on(
    urls: &[String],
    cross: bool,
    pairs: usize,
    load: &Load,
) -> anyhow::Result<Report> {
    anyhow::ensure!(!urls.is_empty(), "no server URL");
    let node = |i: usize| urls[i % urls.len()].as_str();
    let prefix = Arc::new(envelope_prefix(load.size)?);
    let key = public_key_json(false);
    let run_id: u32 = rand::random();
    let warmup = Duration::from_secs(1);
    let measure_from = warmup.as_micros() as u64;
    let measure_to = (warmup + Duration::from_secs(load.duration)).as_micros() as u64;
    let stop = Arc::new(AtomicBool::new(false));
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let ack_hist = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let received_all = Arc::new(AtomicU64::new(0));
    // delivered, queued, error
    let answers = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
    let error_types = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::<
        String,
        (u64, f64, f64),
    >::new()));
    let mut counts = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();

    // Connect and register every pair before any load starts, so set-up never competes with
    // the measured traffic.
    let mut conns = Vec::with_capacity(pairs);
    for i in 0..pairs {
        let sender_id = format!("s{run_id}-{i}");
        let recv_id = format!("r{run_id}-{i}");
        let (recv_url, send_url) = (node(i), node(i + usize::from(cross)));
        let receiver = if load.verified {
            let identity = lattice_crypto::Identity::generate(&mut rand::rngs::OsRng);
            soak::register_verified(recv_url, &recv_id, &identity).await?
        } else {
            connect_and_register(recv_url, &recv_id, &key).await?
        };
        let sender = connect_and_register(send_url, &sender_id, &key).await?;
        conns.push((recv_id, receiver, sender));
    }
    let start = Instant::now();
    for (i, (recv_id, receiver, sender)) in conns.into_iter().enumerate() {
        let permits = Arc::new(Semaphore::new(load.inflight));
        let count = Arc::new(AtomicU64::new(0));
        counts.push(Arc::clone(&count));

        // receiver: count, time, release a permit per message
        {
            let (permits, hist, stop) =
                (Arc::clone(&permits), Arc::clone(&hist), Arc::clone(&stop));
            let (mut sink, mut stream) = receiver.split();
            let (verified, inflight) = (load.verified, load.inflight);
            let received_all = Arc::clone(&received_all);
            tasks.spawn(async move {
                let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).ok();
                let mut unflushed = 0;
                let mut buffered: Option<Message> = None;
                loop {
                    let msg = match buffered.take() {
                        Some(m) => m,
                        None => {
                            // Nothing more is buffered: the acks go out now (a client acks what
                            // it processed; it does not hold acks back waiting for more).
                            if unflushed > 0 {
                                unflushed = 0;
                                let _ = sink.flush().await;
                            }
                            match tokio::time::timeout(Duration::from_secs(5), stream.next()).await
                            {
                                Ok(Some(Ok(m))) => m,
                                _ => break,
                            }
                        }
                    };
                    if let Some(Some(Ok(m))) = futures_util::FutureExt::now_or_never(stream.next())
                    {
                        buffered = Some(m);
                    }
                    let Message::Text(text) = msg else { continue };
                    // Cheap on purpose (the generator must not be the bottleneck): the send time is
                    // the last field of the envelope, so find it from the end instead of parsing
                    // 3 KB of JSON.
                    let Some(t) = sent_at(&text) else { continue };
                    if verified {
                        if let (Some(mid), Some(from)) =
                            (field(&text, "messageId"), field(&text, "fromId"))
                        {
                            let ack = format!(
                                r#"{{"type":"ack","payload":{{"messageId":"{mid}","fromId":"{from}"}}}}"#
                            );
                            let _ = sink.feed(Message::Text(ack.into())).await;
                            unflushed += 1;
                            if unflushed >= ACK_BATCH {
                                unflushed = 0;
                                let _ = sink.flush().await;
                            }
                        }
                    }
                    permits.add_permits(1);
                    received_all.fetch_add(1, Ordering::Relaxed);
                    let now = start.elapsed().as_micros() as u64;
                    {
                        if t >= measure_from && now <= measure_to {
                            count.fetch_add(1, Ordering::Relaxed);
                            if let Some(h) = local.as_mut() {
                                let _ = h.record(now.saturating_sub(t).max(1));
                            }
                        }
                    }
                    // Leave once everything in flight arrived (a message refused on the way never
                    // gives its permit back: the read timeout ends the wait then). Leaving earlier
                    // made the messages still on their way fail with PEER_NOT_FOUND.
                    if stop.load(Ordering::Relaxed)
                        && permits.available_permits() >= inflight
                        && now > measure_to
                    {
                        break;
                    }
                }
                if let Some(h) = local {
                    let _ = hist.lock().await.add(&h);
                }
            });
        }
        // sender: keep `inflight` outstanding; drain its own socket (acks) in another task
        {
            let (permits, stop, prefix) =
                (Arc::clone(&permits), Arc::clone(&stop), Arc::clone(&prefix));
            let (mut sink, mut stream) = sender.split();
            let stop_reader = Arc::clone(&stop);
            let (ack_hist, answers) = (Arc::clone(&ack_hist), Arc::clone(&answers));
            let error_types = Arc::clone(&error_types);
            tasks.spawn(async move {
                let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).ok();
                // After the stop, the answers still owed (up to the server's ack wait) are read
                // too, so every status is counted.
                let linger = soak::ANSWER_LINGER;
                let mut stopped_at: Option<Instant> = None;
                while let Ok(Some(Ok(msg))) =
                    tokio::time::timeout(Duration::from_secs(5), stream.next()).await
                {
                    if let Message::Text(text) = &msg {
                        let now = start.elapsed().as_micros() as u64;
                        if text.contains(r#""type":"error""#) {
                            answers[2].fetch_add(1, Ordering::Relaxed);
                            let kind = field(text, "errorType").unwrap_or("?").to_owned();
                            let at = now as f64 / 1e6;
                            let mut types = error_types
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner);
                            let e = types.entry(kind).or_insert((0, at, at));
                            e.0 += 1;
                            e.2 = at;
                        } else if let Some(status) = field(text, "status") {
                            let i = usize::from(status != "delivered");
                            answers[i].fetch_add(1, Ordering::Relaxed);
                            // The send time is the message id's last part.
                            let sent = field(text, "messageId")
                                .and_then(|m| m.rsplit('-').next())
                                .and_then(|t| t.parse::<u64>().ok());
                            if let (Some(t), Some(h)) = (sent, local.as_mut()) {
                                if t >= measure_from && t <= measure_to {
                                    let _ = h.record(now.saturating_sub(t).max(1));
                                }
                            }
                        }
                    }
                    if stop_reader.load(Ordering::Relaxed) {
                        let at = *stopped_at.get_or_insert_with(Instant::now);
                        if at.elapsed() > linger {
                            break;
                        }
                    }
                }
                if let Some(h) = local {
                    let _ = ack_hist.lock().await.add(&h);
                }
            });
            tasks.spawn(async move {
                let mut seq: u64 = 0;
                'send: while !stop.load(Ordering::Relaxed) {
                    let Ok(p) = permits.acquire().await else { break };
                    p.forget();
                    // Take every permit already returned too, and write the whole batch with one
                    // flush: one syscall per message would make the generator, not the server
                    // under test, the bottleneck (a browser or a busy peer batches the same way).
                    let want = permits.available_permits().min(SEND_BATCH - 1);
                    let more = match permits.try_acquire_many(want as u32) {
                        Ok(p) => {
                            p.forget();
                            want
                        }
                        Err(_) => 0,
                    };
                    for _ in 0..=more {
                        seq += 1;
                        let t = start.elapsed().as_micros() as u64;
                        let frame = format!(
                            r#"{{"type":"message","payload":{{"targetId":"{recv_id}","messageId":"{i}-{seq}-{t}","message":{prefix},"t":{t}}}}}}}"#
                        );
                        if sink.feed(Message::Text(frame.into())).await.is_err() {
                            break 'send;
                        }
                    }
                    if sink.flush().await.is_err() {
                        break;
                    }
                }
                let _ = sink.close().await;
            });
        }
    }
    tokio::time::sleep_until(tokio::time::Instant::from_std(
        start + warmup + Duration::from_secs(load.duration),
    ))
    .await;
    stop.store(true, Ordering::Relaxed);
    let drain = tokio::time::timeout(Duration::from_secs(20), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drain.is_err() {
        tasks.abort_all();
    }
    let per_pair: Vec<u64> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    let error_types = std::mem::take(
        &mut *error_types
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    let h = hist.lock().await;
    let ah = ack_hist.lock().await;
    Ok(Report {
        delivered: per_pair.iter().sum(),
        received_all: received_all.load(Ordering::Relaxed),
        acks_delivered: answers[0].load(Ordering::Relaxed),
        acks_queued: answers[1].load(Ordering::Relaxed),
        errors: answers[2].load(Ordering::Relaxed),
        error_types,
        ack_p50_us: ah.value_at_quantile(0.50),
        ack_p99_us: ah.value_at_quantile(0.99),
        secs: load.duration as f64,
        p50_us: h.value_at_quantile(0.50),
        p99_us: h.value_at_quantile(0.99),
        p999_us: h.value_at_quantile(0.999),
        min_pair: per_pair.iter().copied().min().unwrap_or(0),
        max_pair: per_pair.iter().copied().max().unwrap_or(0),
    })
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}

async fn idle(
    url: &str,
    pid: u32,
    conns: usize,
    base64_keys: bool,
    settle_secs: u64,
) -> anyhow::Result<f64> {
    let key = public_key_json(base64_keys);
    let before = rss_kib(pid)?;
    let mut sockets = Vec::with_capacity(conns);
    for i in 0..conns {
        sockets.push(connect_and_register(url, &format!("idle-{i}"), &key).await?);
    }
    tokio::time::sleep(Duration::from_secs(settle_secs)).await;
    let after = rss_kib(pid)?;
    drop(sockets);
    Ok((after.saturating_sub(before)) as f64 / conns as f64)
}

struct Spawned(Child);

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_pinned(bin: &Path, args: &[&str]) -> anyhow::Result<Spawned> {
    let child = if which("taskset") {
        Command::new("taskset")
            .arg("-c")
            .arg("0")
            .arg(bin)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
    } else {
        Command::new(bin)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
    }
    .with_context(|| format!("start {}", bin.display()))?;
    Ok(Spawned(child))
}

fn which(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
}

async fn wait_port(port: u16) -> anyhow::Result<()> {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("nothing listens on port {port}")
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn start_lattice(dir: &Path, max: usize) -> anyhow::Result<(Spawned, u16)> {
    start_lattice_with(dir, max, &[]).await
}

async fn start_lattice_with(
    dir: &Path,
    max: usize,
    extra: &[&str],
) -> anyhow::Result<(Spawned, u16)> {
    let port = free_port()?;
    let (p, m) = (port.to_string(), max.to_string());
    let mut args = vec![
        "--bind",
        "127.0.0.1",
        "--port",
        &p,
        "--in-memory",
        "--rate-limit",
        "0",
        "--max-connections",
        &m,
    ];
    args.extend_from_slice(extra);
    let s = spawn_pinned(&dir.join("lattice-server"), &args)?;
    wait_port(port).await?;
    Ok((s, port))
}

/// A throwaway CA and a `localhost` certificate it signed, written to `dir` as `cert.pem` and
/// `key.pem`; the client settings that trust the CA.
fn throwaway_tls(dir: &Path) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate()?;
    let leaf =
        CertificateParams::new(vec!["localhost".to_owned()])?.signed_by(&leaf_key, &issuer)?;
    std::fs::write(dir.join("cert.pem"), leaf.pem())?;
    std::fs::write(dir.join("key.pem"), leaf_key.serialize_pem())?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone())?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

/// User + system CPU time of process `pid` so far, in microseconds (from `/proc/PID/stat`).
fn cpu_us(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').context("stat format")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11).context("utime")?.parse()?;
    let stime: u64 = fields.get(12).context("stime")?.parse()?;
    // Clock ticks; 100 per second on Linux (USER_HZ).
    Ok((utime + stime) * 10_000)
}

/// Where the servers to compare are: `bin_dir`, or next to this binary.
fn binary_dir(bin_dir: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match bin_dir {
        Some(d) => Ok(d),
        None => Ok(std::env::current_exe()?
            .parent()
            .context("binary directory")?
            .to_path_buf()),
    }
}

async fn delivery(
    pairs: &[usize],
    rounds: usize,
    load: Load,
    bin_dir: Option<PathBuf>,
) -> anyhow::Result<()> {
    let dir = binary_dir(bin_dir)?;
    println!(
        "# {} B plaintext ml-kem-aes envelopes, {} in flight per sender, {} s per run; lattice-server on core 0{}, --data-dir on a fresh temp dir",
        load.size,
        load.inflight,
        load.duration,
        if which("taskset") { "" } else { " (taskset missing: not pinned)" }
    );
    println!("# path            pairs  msgs/s   recv p50/p99 us     answer p50/p99 us    delivered/queued/errors  server CPU us/msg");
    let paths: [(&str, bool, &[&str]); 3] = [
        ("durable-first", true, &["--ack-wait", "0"]),
        ("end-to-end", true, &[]),
        ("memory-only", false, &[]),
    ];
    for &n in pairs {
        for _ in 0..rounds {
            for (name, verified, extra) in paths {
                let data = std::env::temp_dir()
                    .join(format!("lattice-delivery-{:08x}", rand::random::<u32>()));
                let port = free_port()?;
                let (p, m) = (port.to_string(), (4 * n + 100).to_string());
                let data_dir = data.to_string_lossy().into_owned();
                let mut args = vec![
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    &p,
                    "--data-dir",
                    &data_dir,
                    "--rate-limit",
                    "0",
                    "--max-connections",
                    &m,
                    "--new-ids-per-ip",
                    "0",
                ];
                args.extend_from_slice(extra);
                let server = spawn_pinned(&dir.join("lattice-server"), &args)?;
                wait_port(port).await?;
                let pid = server.0.id();
                let cpu_before = cpu_us(pid)?;
                let load = Load {
                    verified,
                    ..load.clone()
                };
                let r = throughput(&format!("ws://127.0.0.1:{port}"), n, &load).await?;
                let cpu = cpu_us(pid)?.saturating_sub(cpu_before);
                drop(server);
                let _ = std::fs::remove_dir_all(&data);
                println!(
                    "{name:<17} {n:<5} {:>8.0}  {:>8} / {:<8}  {:>8} / {:<8}  {:>8} / {} / {}  {:>8.1}",
                    r.rate(),
                    r.p50_us,
                    r.p99_us,
                    r.ack_p50_us,
                    r.ack_p99_us,
                    r.acks_delivered,
                    r.acks_queued,
                    r.errors,
                    cpu as f64 / r.received_all.max(1) as f64
                );
            }
        }
    }
    Ok(())
}

async fn compare(
    pairs: &[usize],
    idle_n: usize,
    tls_pairs: &[usize],
    load: Load,
    bin_dir: Option<PathBuf>,
) -> anyhow::Result<()> {
    let dir = binary_dir(bin_dir)?;
    println!(
        "# {} B plaintext ml-kem-aes envelopes, {} in flight per sender, {} s per run; servers on core 0{}",
        load.size,
        load.inflight,
        load.duration,
        if which("taskset") { "" } else { " (taskset missing: not pinned)" }
    );
    for &n in pairs {
        let (relay, rport) = {
            let port = free_port()?;
            let s = spawn_pinned(&dir.join("minimal-relay"), &[&port.to_string()])?;
            wait_port(port).await?;
            (s, port)
        };
        let base = throughput(&format!("ws://127.0.0.1:{rport}"), n, &load).await?;
        drop(relay);
        let (server, port) = start_lattice(&dir, 4 * n + 100).await?;
        let ours = throughput(&format!("ws://127.0.0.1:{port}"), n, &load).await?;
        drop(server);
        print_report("minimal-relay", n, &base);
        print_report("lattice-server", n, &ours);
        println!(
            "ratio pairs={n}: {:.1} % of the minimal relay; lattice p99/p50 = {:.2}",
            100.0 * ours.rate() / base.rate().max(1.0),
            ours.p99_us as f64 / ours.p50_us.max(1) as f64
        );
    }
    if !tls_pairs.is_empty() {
        let certs = std::env::temp_dir().join(format!("lattice-tls-{:08x}", rand::random::<u32>()));
        std::fs::create_dir_all(&certs)?;
        let client = throwaway_tls(&certs)?;
        let _ = TLS_CLIENT.set(client);
        let (cert, key) = (certs.join("cert.pem"), certs.join("key.pem"));
        let tls_args = [
            "--tls-cert",
            cert.to_str().context("temp path")?,
            "--tls-key",
            key.to_str().context("temp path")?,
        ];
        for &n in tls_pairs {
            let (server, port) = start_lattice(&dir, 4 * n + 100).await?;
            let plain = throughput(&format!("ws://127.0.0.1:{port}"), n, &load).await?;
            drop(server);
            let (server, port) = start_lattice_with(&dir, 4 * n + 100, &tls_args).await?;
            let tls = throughput(&format!("wss://localhost:{port}"), n, &load).await?;
            drop(server);
            print_report("lattice (ws)", n, &plain);
            print_report("lattice (wss)", n, &tls);
            println!(
                "tls pairs={n}: wss at {:.1} % of ws",
                100.0 * tls.rate() / plain.rate().max(1.0)
            );
        }
        let _ = std::fs::remove_dir_all(&certs);
    }
    if idle_n > 0 {
        for base64_keys in [false, true] {
            let (server, port) = start_lattice(&dir, idle_n + 100).await?;
            let per = idle(
                &format!("ws://127.0.0.1:{port}"),
                server.0.id(),
                idle_n,
                base64_keys,
                IDLE_SETTLE_SECS,
            )
            .await?;
            let form = if base64_keys { "base64" } else { "byte-array" };
            println!("idle: {idle_n} registered connections ({form} keys), {per:.1} KiB of lattice-server RSS each");
            drop(server);
        }
    }
    Ok(())
}
