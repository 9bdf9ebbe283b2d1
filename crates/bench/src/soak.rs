//! `lattice-loadgen soak`: a spawned `lattice-server` on a data dir, verified recipients that ack,
//! drop, reconnect and stall, senders at a steady rate, optional `kill -9` and restart of the
//! server; every message is accounted for (sent, acknowledged, delivered, lost, duplicated,
//! misrouted, errors by type) and the server's RSS, file descriptors and data-dir size are sampled.
//!
//! "Lost" is the number that must be zero: messages whose sender heard `message_ack` and that never
//! reached their recipient by the end of the drain. Messages a sender never heard about (its
//! connection, or the server, died first) are not resent and are reported separately.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use base64::Engine as _;
use futures_util::{SinkExt as _, StreamExt as _};
use rand::Rng as _;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::{
    connect_and_register, envelope_prefix, free_port, public_key_json, rss_kib, wait_port, Ws,
};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// How long a client waits before reconnecting after a failure (the server may be restarting).
const RECONNECT_DELAY: Duration = Duration::from_millis(200);
/// Bound on any single wait for a registration answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stopping sender keeps reading answers: longer than the server's default ack wait
/// (3 s) plus the reaper's period (0.75 s) and a commit.
pub(crate) const ANSWER_LINGER: Duration = Duration::from_secs(5);
/// Sender pacing tick.
const TICK: Duration = Duration::from_millis(10);
/// Server heartbeat used by the soak (seconds): short, so stalled recipients are noticed within
/// the run instead of after the default minute.
const SOAK_PING_SECS: &str = "2";
const SOAK_IDLE_SECS: &str = "6";

/// What the soak does.
#[derive(Debug, Clone, clap::Args)]
pub struct SoakArgs {
    /// Seconds of load (then the drain).
    #[arg(long, default_value_t = 60)]
    pub duration: u64,
    /// Verified recipients (each acks what it receives).
    #[arg(long, default_value_t = 20)]
    pub recipients: usize,
    /// Senders (original-style, unverified).
    #[arg(long, default_value_t = 10)]
    pub senders: usize,
    /// Messages per second, all senders together.
    #[arg(long, default_value_t = 500)]
    pub rate: u64,
    /// Plaintext bytes per message.
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Milliseconds between abrupt drops of a random recipient (0: none).
    #[arg(long, default_value_t = 2000)]
    pub churn_every_ms: u64,
    /// Seconds between stalls of a random recipient (it stops reading; 0: none).
    #[arg(long, default_value_t = 10)]
    pub stall_every: u64,
    /// Seconds a stalled recipient does not read.
    #[arg(long, default_value_t = 8)]
    pub stall_secs: u64,
    /// Seconds between `kill -9` and restart of the server (0: never).
    #[arg(long, default_value_t = 0)]
    pub kill_every: u64,
    /// Most seconds to wait after the load for acknowledged messages to arrive.
    #[arg(long, default_value_t = 60)]
    pub drain: u64,
    /// The lattice-server binary (default: next to this one).
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
    /// Data directory for the server (default: a fresh one under the temp dir, removed after).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// Every message, accounted for.
#[derive(Debug, Default)]
struct Ledger {
    sent: AtomicU64,
    delivered_acks: AtomicU64,
    queued_acks: AtomicU64,
    misrouted: AtomicU64,
    wire_deliveries: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
    acked: Mutex<HashSet<String>>,
    received: Mutex<HashMap<String, u32>>,
    drops: AtomicU64,
    stalls: AtomicU64,
    kills: AtomicU64,
    reconnects: AtomicU64,
    /// Senders that stopped (after reading the answers still owed to them).
    senders_done: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The spawned server, restarted on the same data dir and port after each kill.
struct Server {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Server {
    async fn start(&mut self) -> anyhow::Result<()> {
        let child = Command::new(&self.bin)
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .arg("--data-dir")
            .arg(&self.dir)
            .args(["--rate-limit", "0", "--max-connections", "10000"])
            .args([
                "--ping-interval",
                SOAK_PING_SECS,
                "--idle-timeout",
                SOAK_IDLE_SECS,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("start {}", self.bin.display()))?;
        self.child = Some(child);
        wait_port(self.port).await
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// What the driver tells a recipient to do.
#[derive(Debug)]
enum Control {
    Drop,
    Stall(Duration),
}

/// Resource samples of the server process.
#[derive(Debug, Default, Clone, Copy)]
struct Samples {
    rss_kib_first: u64,
    rss_kib_max: u64,
    rss_kib_last: u64,
    fds_first: u64,
    fds_max: u64,
    fds_last: u64,
    data_bytes_max: u64,
    data_bytes_last: u64,
}

fn fd_count(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64)
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |d| {
        d.filter_map(Result::ok)
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum()
    })
}

/// Runs the soak; returns an error (non-zero exit) if any acknowledged message was lost.
pub async fn soak(args: SoakArgs) -> anyhow::Result<()> {
    let bin = match &args.server_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("binary directory")?
            .join("lattice-server"),
    };
    let (dir, remove_dir) = match &args.data_dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("lattice-soak-{:08x}", rand::random::<u32>())),
            true,
        ),
    };
    if args.recipients == 0 || args.senders == 0 {
        bail!("a soak needs at least one recipient and one sender");
    }
    let port = free_port()?;
    let mut server = Server {
        bin,
        dir: dir.clone(),
        port,
        child: None,
    };
    server.start().await?;
    let server = Arc::new(tokio::sync::Mutex::new(server));
    let url = format!("ws://127.0.0.1:{port}");
    let ledger = Arc::new(Ledger::default());
    let stop_send = Arc::new(AtomicBool::new(false));
    let stop_all = Arc::new(AtomicBool::new(false));
    let prefix = Arc::new(envelope_prefix(args.size)?);
    let run: u32 = rand::random();

    // recipients
    let mut controls = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..args.recipients {
        let (tx, rx) = mpsc::channel(4);
        controls.push(tx);
        let id = format!("r{run:08x}-{i}");
        let identity = lattice_crypto::Identity::generate(&mut rand::rngs::OsRng);
        let (url, ledger, stop) = (url.clone(), Arc::clone(&ledger), Arc::clone(&stop_all));
        tasks.spawn(recipient(url, id, identity, rx, ledger, stop));
    }
    // let every recipient bind its id before anyone sends to it
    tokio::time::sleep(Duration::from_secs(1)).await;
    let targets: Arc<Vec<String>> = Arc::new(
        (0..args.recipients)
            .map(|i| format!("r{run:08x}-{i}"))
            .collect(),
    );
    let per_sender = args.rate as f64 / args.senders.max(1) as f64;
    for j in 0..args.senders {
        let id = format!("s{run:08x}-{j}");
        let (url, ledger, stop) = (url.clone(), Arc::clone(&ledger), Arc::clone(&stop_send));
        let (targets, prefix) = (Arc::clone(&targets), Arc::clone(&prefix));
        tasks.spawn(sender(url, id, targets, prefix, per_sender, ledger, stop));
    }

    // sampler
    let samples = Arc::new(Mutex::new(Samples::default()));
    let sampler = {
        let (server, samples, dir, stop) = (
            Arc::clone(&server),
            Arc::clone(&samples),
            dir.clone(),
            Arc::clone(&stop_all),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let pid = server.lock().await.pid();
                if let Some(pid) = pid {
                    let rss = rss_kib(pid).unwrap_or(0);
                    let fds = fd_count(pid);
                    let bytes = dir_bytes(&dir);
                    let mut s = lock(&samples);
                    if s.rss_kib_first == 0 {
                        s.rss_kib_first = rss;
                        s.fds_first = fds;
                    }
                    s.rss_kib_max = s.rss_kib_max.max(rss);
                    s.rss_kib_last = rss;
                    s.fds_max = s.fds_max.max(fds);
                    s.fds_last = fds;
                    s.data_bytes_max = s.data_bytes_max.max(bytes);
                    s.data_bytes_last = bytes;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };

    // the load, with churn, stalls and kills
    let start = Instant::now();
    let end = start + Duration::from_secs(args.duration);
    let every = |ms: u64| (ms > 0).then(|| Duration::from_millis(ms));
    let churn = every(args.churn_every_ms);
    let stall = every(args.stall_every * 1000);
    let kill = every(args.kill_every * 1000);
    let (mut next_churn, mut next_stall, mut next_kill) = (
        churn.map(|d| start + d),
        stall.map(|d| start + d),
        kill.map(|d| start + d),
    );
    let mut last_report = start;
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = Instant::now();
        let pick = || rand::thread_rng().gen_range(0..controls.len().max(1));
        if let (Some(t), Some(d)) = (next_churn, churn) {
            if now >= t && !controls.is_empty() {
                let _ = controls[pick()].try_send(Control::Drop);
                ledger.drops.fetch_add(1, Ordering::Relaxed);
                next_churn = Some(t + d);
            }
        }
        if let (Some(t), Some(d)) = (next_stall, stall) {
            if now >= t && !controls.is_empty() {
                let _ =
                    controls[pick()].try_send(Control::Stall(Duration::from_secs(args.stall_secs)));
                ledger.stalls.fetch_add(1, Ordering::Relaxed);
                next_stall = Some(t + d);
            }
        }
        if let (Some(t), Some(d)) = (next_kill, kill) {
            if now >= t {
                let mut s = server.lock().await;
                s.kill9();
                ledger.kills.fetch_add(1, Ordering::Relaxed);
                s.start().await?;
                next_kill = Some(t + d);
            }
        }
        if now.duration_since(last_report) >= Duration::from_secs(10) {
            last_report = now;
            let s = *lock(&samples);
            eprintln!(
                "soak t={:>4}s sent={} acked={} received={} rss={} KiB fds={} data={} KiB",
                now.duration_since(start).as_secs(),
                ledger.sent.load(Ordering::Relaxed),
                lock(&ledger.acked).len(),
                lock(&ledger.received).len(),
                s.rss_kib_last,
                s.fds_last,
                s.data_bytes_last / 1024
            );
        }
    }
    stop_send.store(true, Ordering::Relaxed);

    // drain: every acknowledged message should arrive. First the senders finish reading their
    // answers: a message held for a stalled recipient's ack is answered `queued` only after the
    // server's ack wait, so it counts as acknowledged only then.
    let drain_start = Instant::now();
    let drain_end = drain_start + Duration::from_secs(args.drain);
    while Instant::now() < drain_end
        && ledger.senders_done.load(Ordering::Relaxed) < args.senders as u64
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    while Instant::now() < drain_end {
        let missing = {
            let acked = lock(&ledger.acked);
            let received = lock(&ledger.received);
            acked.iter().filter(|m| !received.contains_key(*m)).count()
        };
        if missing == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let drain_secs = drain_start.elapsed().as_secs_f64();
    stop_all.store(true, Ordering::Relaxed);
    drop(controls);
    let _ = tokio::time::timeout(Duration::from_secs(15), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();
    let _ = sampler.await;
    server.lock().await.kill9();
    if remove_dir {
        let _ = std::fs::remove_dir_all(&dir);
    }

    // the account
    let acked = lock(&ledger.acked).clone();
    let received = lock(&ledger.received).clone();
    let lost: Vec<&String> = acked
        .iter()
        .filter(|m| !received.contains_key(*m))
        .collect();
    let duplicates: u64 = received
        .values()
        .map(|n| u64::from(n.saturating_sub(1)))
        .sum();
    let unacked_arrived = received.keys().filter(|m| !acked.contains(*m)).count();
    let errors = lock(&ledger.errors).clone();
    let error_count: u64 = errors.values().sum();
    let sent = ledger.sent.load(Ordering::Relaxed);
    let s = *lock(&samples);
    let report = json!({
        "duration_s": args.duration,
        "drain_s": (drain_secs * 10.0).round() / 10.0,
        "sent": sent,
        "acked": acked.len(),
        "acked_delivered": ledger.delivered_acks.load(Ordering::Relaxed),
        "acked_queued": ledger.queued_acks.load(Ordering::Relaxed),
        "refused": error_count,
        "errors": errors,
        "never_answered": sent.saturating_sub(acked.len() as u64 + error_count),
        "received": received.len(),
        "wire_deliveries": ledger.wire_deliveries.load(Ordering::Relaxed),
        "duplicates_on_the_wire": duplicates,
        "unacked_but_arrived": unacked_arrived,
        "lost": lost.len(),
        "misrouted": ledger.misrouted.load(Ordering::Relaxed),
        "drops": ledger.drops.load(Ordering::Relaxed),
        "stalls": ledger.stalls.load(Ordering::Relaxed),
        "kills": ledger.kills.load(Ordering::Relaxed),
        "reconnects": ledger.reconnects.load(Ordering::Relaxed),
        "rss_kib": {"first": s.rss_kib_first, "max": s.rss_kib_max, "last": s.rss_kib_last},
        "fds": {"first": s.fds_first, "max": s.fds_max, "last": s.fds_last},
        "data_dir_bytes": {"max": s.data_bytes_max, "last": s.data_bytes_last},
    });
    println!("SOAK {report}");
    if !lost.is_empty() {
        let shown: Vec<_> = lost.iter().take(20).collect();
        bail!(
            "{} acknowledged messages were lost, e.g. {shown:?}",
            lost.len()
        );
    }
    Ok(())
}

/// Connects and registers `id` verified with `identity`.
pub(crate) async fn register_verified(
    url: &str,
    id: &str,
    identity: &lattice_crypto::Identity,
) -> anyhow::Result<Ws> {
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true).await?;
    ws.send(Message::Text(r#"{"type":"challenge","payload":{}}"#.into()))
        .await?;
    let nonce = loop {
        let v = next_json(&mut ws).await?;
        if v["type"] == "challenge" {
            let n = v["payload"]["nonce"].as_str().context("nonce")?;
            break B64.decode(n)?;
        }
    };
    let kem = identity.kem_public_key().as_bytes().to_vec();
    let statement = lattice_crypto::registration_statement(&nonce, id, &kem)?;
    let sig = identity.identity_key().sign(&statement);
    let reg = json!({"type":"register","payload":{
        "clientId": id,
        "publicKey": kem,
        "keySignature": B64.encode(identity.key_signature()),
        "verification": {
            "algorithm": "ed25519",
            "serializedPublicKey": B64.encode(identity.identity_public_key().as_bytes()),
            "serializedMessage": B64.encode(&statement),
            "serializedSignedData": B64.encode(sig),
        }
    }});
    ws.send(Message::Text(reg.to_string().into())).await?;
    loop {
        let v = next_json(&mut ws).await?;
        match v["type"].as_str() {
            Some("register") => return Ok(ws),
            Some("error") => bail!("register {id}: {v}"),
            _ => {}
        }
    }
}

async fn next_json(ws: &mut Ws) -> anyhow::Result<Value> {
    loop {
        match tokio::time::timeout(ANSWER_TIMEOUT, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return Ok(serde_json::from_str(&t)?),
            Ok(Some(Ok(_))) => {}
            _ => bail!("no answer"),
        }
    }
}

/// A verified recipient: reads, records and acks its messages; drops or stalls when told; and
/// reconnects whenever its connection ends, until `stop`.
async fn recipient(
    url: String,
    id: String,
    identity: lattice_crypto::Identity,
    mut control: mpsc::Receiver<Control>,
    ledger: Arc<Ledger>,
    stop: Arc<AtomicBool>,
) {
    let mut first = true;
    while !stop.load(Ordering::Relaxed) {
        let mut ws = match register_verified(&url, &id, &identity).await {
            Ok(ws) => ws,
            Err(_) => {
                tokio::time::sleep(RECONNECT_DELAY).await;
                continue;
            }
        };
        if !first {
            ledger.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        first = false;
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let msg = tokio::select! {
                c = control.recv() => match c {
                    Some(Control::Drop) | None => break, // abrupt: the socket is just dropped
                    Some(Control::Stall(d)) => {
                        // not reading: the server's writes back up, pings go unanswered
                        tokio::time::sleep(d).await;
                        continue;
                    }
                },
                m = tokio::time::timeout(Duration::from_secs(1), ws.next()) => m,
            };
            let text = match msg {
                Err(_) => continue, // quiet second: look at `stop` again
                Ok(Some(Ok(Message::Text(t)))) => t,
                Ok(Some(Ok(_))) => continue,
                Ok(_) => break,
            };
            let Ok(v) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            if v["type"] != "message" {
                continue;
            }
            let p = &v["payload"];
            let (Some(mid), Some(from)) = (p["messageId"].as_str(), p["fromId"].as_str()) else {
                continue;
            };
            ledger.wire_deliveries.fetch_add(1, Ordering::Relaxed);
            if !mid.ends_with(&format!("@{id}")) {
                ledger.misrouted.fetch_add(1, Ordering::Relaxed);
            }
            *lock(&ledger.received).entry(mid.to_owned()).or_default() += 1;
            let ack = json!({"type":"ack","payload":{"messageId": mid, "fromId": from}});
            if ws
                .send(Message::Text(ack.to_string().into()))
                .await
                .is_err()
            {
                break;
            }
        }
        tokio::time::sleep(RECONNECT_DELAY).await;
    }
}

/// A sender: `rate` messages a second to random recipients, recording every answer; reconnects
/// (never resending) when its connection ends, until `stop`.
async fn sender(
    url: String,
    id: String,
    targets: Arc<Vec<String>>,
    prefix: Arc<String>,
    rate: f64,
    ledger: Arc<Ledger>,
    stop: Arc<AtomicBool>,
) {
    let key = public_key_json(false);
    let mut seq: u64 = 0;
    let mut credit = 0.0;
    while !stop.load(Ordering::Relaxed) {
        let ws = match connect_and_register(&url, &id, &key).await {
            Ok(ws) => ws,
            Err(_) => {
                tokio::time::sleep(RECONNECT_DELAY).await;
                continue;
            }
        };
        let (mut sink, mut stream) = ws.split();
        let reader = {
            let ledger = Arc::clone(&ledger);
            tokio::spawn(async move {
                while let Some(Ok(m)) = stream.next().await {
                    let Message::Text(t) = m else { continue };
                    let Ok(v) = serde_json::from_str::<Value>(&t) else {
                        continue;
                    };
                    match v["type"].as_str() {
                        Some("message_ack") => {
                            let p = &v["payload"];
                            if let Some(mid) = p["messageId"].as_str() {
                                lock(&ledger.acked).insert(mid.to_owned());
                            }
                            let c = if p["status"] == "queued" {
                                &ledger.queued_acks
                            } else {
                                &ledger.delivered_acks
                            };
                            c.fetch_add(1, Ordering::Relaxed);
                        }
                        Some("error") => {
                            let t = v["payload"]["errorType"].as_str().unwrap_or("?").to_owned();
                            *lock(&ledger.errors).entry(t).or_default() += 1;
                        }
                        _ => {}
                    }
                }
            })
        };
        let mut tick = tokio::time::interval(TICK);
        'conn: while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            credit += rate * TICK.as_secs_f64();
            while credit >= 1.0 {
                credit -= 1.0;
                seq += 1;
                let target = &targets[rand::thread_rng().gen_range(0..targets.len().max(1))];
                // the id names the recipient, so a misrouted delivery is visible
                let mid = format!("{id}-{seq}@{target}");
                let frame = format!(
                    r#"{{"type":"message","requestId":"{mid}","payload":{{"targetId":"{target}","messageId":"{mid}","message":{prefix}}}}}}}"#
                );
                if sink.feed(Message::Text(frame.into())).await.is_err() {
                    break 'conn;
                }
                ledger.sent.fetch_add(1, Ordering::Relaxed);
            }
            if sink.flush().await.is_err() {
                break;
            }
        }
        // let the last answers arrive before leaving (bounded): a message held for an ack is
        // answered within the server's ack wait (3 s) and a quarter of it, plus a commit
        if stop.load(Ordering::Relaxed) {
            tokio::time::sleep(ANSWER_LINGER).await;
            let _ = sink.close().await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
    }
    ledger.senders_done.fetch_add(1, Ordering::Relaxed);
}
