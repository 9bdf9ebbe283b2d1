//! `lattice-loadgen scale`: one server, many connections.
//!
//! Opens `--conns` registered connections against one server, spread over `--sources` loopback
//! source addresses (127.0.0.1, 127.0.0.2, …: one address has only the ephemeral port range,
//! 28,232 ports here), and holds them (each is read, so the server's heartbeat pings are
//! answered). It then reports:
//! - the server's RSS per connection (`/proc/PID/status` before the first connection and
//!   `--settle` seconds after the last registration, divided by the connections), and the
//!   kernel's slab memory per socket (`/proc/meminfo`, machine-wide: other work moves it);
//! - the latency of messages sent through `--sample` sender→receiver pairs among the held
//!   connections, one message at a time per pair, while all are connected (p50/p99/max);
//! - the registration rate of a full reconnect storm: every connection dropped at once, then all
//!   reconnecting together (`--concurrency` handshakes in flight), in registrations per second;
//!   and the RSS per connection after it.
//!
//! The key is sent as a JSON byte array, as original clients do (a 4.3 KB `register` frame),
//! unless `--base64-keys`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use futures_util::{SinkExt as _, StreamExt as _};
use hdrhistogram::Histogram;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use crate::{envelope_prefix, public_key_json, register, rss_kib, sent_at, Ws};

/// Attempts per connection before the run fails (a reconnect may meet the server still holding
/// the id for the dropped connection, or the connection cap not yet given back).
const CONNECT_ATTEMPTS: u32 = 50;

/// How long one sample message may take before it counts as lost.
const SAMPLE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, clap::Args)]
pub struct ScaleArgs {
    /// Registered connections to open and hold.
    #[arg(long, default_value_t = 10_000)]
    pub conns: usize,
    /// Loopback source addresses to spread the connections over (127.0.0.1 …).
    #[arg(long, default_value_t = 4)]
    pub sources: u8,
    /// Sender→receiver pairs among the held connections that messages go through.
    #[arg(long, default_value_t = 100)]
    pub sample: usize,
    /// Messages each sample pair sends, one at a time.
    #[arg(long, default_value_t = 50)]
    pub messages: usize,
    /// Handshakes in flight at once (the first connect and the reconnect storm).
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Seconds to hold the connections before reading the RSS.
    #[arg(long, default_value_t = crate::IDLE_SETTLE_SECS)]
    pub settle: u64,
    /// Send `publicKey` as base64 instead of the original byte array.
    #[arg(long)]
    pub base64_keys: bool,
    /// A running server to measure (with --pid) instead of starting lattice-server.
    #[arg(long, requires = "pid")]
    pub url: Option<String>,
    /// The running server's process id.
    #[arg(long, requires = "url")]
    pub pid: Option<u32>,
    /// Directory holding the lattice-server binary (default: next to this one).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
}

/// The kernel's slab memory in KiB (`Slab:` in `/proc/meminfo`): socket structures, inodes and
/// epoll items live there. Machine-wide, so other work on the machine moves it too.
fn slab_kib() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("Slab:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The soft limit on open files of this process (`/proc/self/limits`).
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// First local port the generator binds explicitly. Binding port 0 before `connect` makes the
/// kernel search the ephemeral range for a port free on every address (it does not know the
/// destination yet), a search that grows as the range fills; an explicit port is one look-up.
/// A port taken by someone else falls back to the kernel's choice.
const PORT_BASE: u32 = 10_000;

/// Binds a socket to `source`:`port` (or any port if that one is taken) and connects it.
async fn dial(
    source: Ipv4Addr,
    port: Option<u16>,
    server: SocketAddr,
) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    let bound = port.is_some_and(|p| socket.bind(SocketAddr::new(source.into(), p)).is_ok());
    if !bound {
        socket.bind(SocketAddr::new(source.into(), 0))?;
    }
    socket.connect(server).await
}

/// Connects from `source` to the server and registers `id`, retrying.
async fn connect_from(
    source: Ipv4Addr,
    port: Option<u16>,
    server: SocketAddr,
    url: &str,
    id: &str,
    key_json: &str,
    retries: &AtomicU64,
) -> anyhow::Result<Ws> {
    let mut attempt = 0;
    loop {
        let result = async {
            // a retry takes the kernel's port: the explicit one may be what failed
            let stream = dial(source, port.filter(|_| attempt == 0), server).await?;
            stream.set_nodelay(true)?;
            let (ws, _) = tokio_tungstenite::client_async_with_config(
                url,
                tokio_tungstenite::MaybeTlsStream::Plain(stream),
                Some(crate::client_config()),
            )
            .await?;
            register(ws, id, key_json).await
        }
        .await;
        match result {
            Ok(ws) => return Ok(ws),
            Err(e) if attempt + 1 >= CONNECT_ATTEMPTS => {
                return Err(e.context(format!("{id}: {CONNECT_ATTEMPTS} attempts")))
            }
            Err(_) => {
                attempt += 1;
                retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt.min(10)))).await;
            }
        }
    }
}

/// Opens and registers `ids` with `concurrency` handshakes in flight; the sockets in `ids` order.
/// Each `round` binds its own block of local ports, so a reconnect never meets the previous
/// round's sockets in TIME_WAIT.
#[allow(clippy::too_many_arguments)]
async fn connect_all(
    round: u32,
    server: SocketAddr,
    url: &str,
    ids: &[String],
    sources: u8,
    concurrency: usize,
    key_json: &Arc<String>,
    retries: &Arc<AtomicU64>,
) -> anyhow::Result<Vec<Ws>> {
    let gate = Arc::new(Semaphore::new(concurrency.max(1)));
    let sources = sources.max(1);
    let per_source = ids.len().div_ceil(usize::from(sources)) as u32;
    let mut set = JoinSet::new();
    for (i, id) in ids.iter().enumerate() {
        let permit = Arc::clone(&gate).acquire_owned().await?;
        let source = Ipv4Addr::new(127, 0, 0, 1 + (i % usize::from(sources)) as u8);
        let slot = (i / usize::from(sources)) as u32;
        let port = u16::try_from(PORT_BASE + round * per_source + slot).ok();
        let (url, id, key, retries) = (
            url.to_owned(),
            id.clone(),
            Arc::clone(key_json),
            Arc::clone(retries),
        );
        set.spawn(async move {
            let ws = connect_from(source, port, server, &url, &id, &key, &retries).await;
            drop(permit);
            (i, ws)
        });
    }
    let mut out: Vec<Option<Ws>> = (0..ids.len()).map(|_| None).collect();
    while let Some(joined) = set.join_next().await {
        let (i, ws) = joined?;
        out[i] = Some(ws?);
    }
    out.into_iter()
        .map(|w| w.context("a connection is missing"))
        .collect()
}

/// Holds `ws` (reading it, so pings are answered) until `stop`, then drops it.
fn keep(set: &mut JoinSet<()>, mut ws: Ws, mut stop: watch::Receiver<bool>) {
    set.spawn(async move {
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                m = ws.next() => if !matches!(m, Some(Ok(_))) { break },
            }
        }
    });
}

/// Messages through `pairs` (sender, receiver id, receiver), one at a time per pair; the
/// latency histogram and the messages lost.
async fn sample(
    pairs: Vec<(Ws, String, Ws)>,
    messages: usize,
    size: usize,
) -> anyhow::Result<(Histogram<u64>, u64)> {
    let prefix = Arc::new(envelope_prefix(size)?);
    let start = Instant::now();
    let mut set = JoinSet::new();
    for (k, (mut sender, target, mut receiver)) in pairs.into_iter().enumerate() {
        let prefix = Arc::clone(&prefix);
        set.spawn(async move {
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let mut lost = 0;
            for seq in 0..messages {
                let t = start.elapsed().as_micros() as u64;
                let frame = format!(
                    r#"{{"type":"message","payload":{{"targetId":"{target}","messageId":"scale-{k}-{seq}","message":{prefix},"t":{t}}}}}}}"#
                );
                sender.send(Message::Text(frame.into())).await?;
                let arrived = tokio::time::timeout(SAMPLE_TIMEOUT, async {
                    while let Some(Ok(m)) = receiver.next().await {
                        if let Message::Text(text) = m {
                            if sent_at(&text) == Some(t) {
                                return true;
                            }
                        }
                    }
                    false
                })
                .await;
                if arrived == Ok(true) {
                    let now = start.elapsed().as_micros() as u64;
                    h.record(now.saturating_sub(t).max(1))?;
                } else {
                    lost += 1;
                }
                // the sender's message_ack, so its socket does not fill up
                while let Some(Some(Ok(_))) = futures_util::FutureExt::now_or_never(sender.next())
                {
                }
            }
            anyhow::Ok((h, lost, sender, receiver))
        });
    }
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut lost = 0;
    while let Some(joined) = set.join_next().await {
        let (h, l, _sender, _receiver) = joined??;
        all.add(&h)?;
        lost += l;
    }
    Ok((all, lost))
}

pub async fn scale(args: ScaleArgs) -> anyhow::Result<()> {
    let n = args.conns;
    if 2 * args.sample > n {
        bail!(
            "--sample {} needs at least {} connections",
            args.sample,
            2 * args.sample
        );
    }
    if let Some(limit) = open_files_limit() {
        // this process holds one descriptor per connection; a server started here inherits it
        if limit < n as u64 + 64 {
            bail!(
                "the open-files limit is {limit}: raise it (ulimit -n) to at least {}",
                n + 64
            );
        }
    }
    // a server started here lives as long as this run (it is killed on drop)
    let mut _started: Option<crate::Spawned> = None;
    let (url, pid) = match (&args.url, args.pid) {
        (Some(url), Some(pid)) => (url.clone(), pid),
        _ => {
            let dir = crate::binary_dir(args.bin_dir.clone())?;
            let (server, port) = crate::start_lattice(&dir, n + 100).await?;
            let pid = server.0.id();
            _started = Some(server);
            (format!("ws://127.0.0.1:{port}"), pid)
        }
    };
    let server: SocketAddr = tokio::net::lookup_host(
        url.trim_start_matches("ws://")
            .trim_end_matches('/')
            .to_owned(),
    )
    .await?
    .next()
    .context("server address")?;
    let key = Arc::new(public_key_json(args.base64_keys));
    let run_id: u32 = rand::random();
    let ids: Vec<String> = (0..n).map(|i| format!("scale{run_id}-{i}")).collect();
    let retries = Arc::new(AtomicU64::new(0));

    println!(
        "# {n} connections from {} loopback addresses, {} handshakes in flight; key as {}",
        args.sources,
        args.concurrency,
        if args.base64_keys {
            "base64"
        } else {
            "a byte array"
        }
    );
    let before = rss_kib(pid)?;
    let slab_before = slab_kib();
    let t0 = Instant::now();
    let mut conns = connect_all(
        0,
        server,
        &url,
        &ids,
        args.sources,
        args.concurrency,
        &key,
        &retries,
    )
    .await?;
    let connect_secs = t0.elapsed().as_secs_f64();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut held = JoinSet::new();
    let sample_conns: Vec<Ws> = conns.drain(..2 * args.sample).collect();
    for ws in conns {
        keep(&mut held, ws, stop_rx.clone());
    }
    tokio::time::sleep(Duration::from_secs(args.settle)).await;
    let after = rss_kib(pid)?;
    let slab_after = slab_kib();
    let per = after.saturating_sub(before) as f64 / n as f64;
    println!(
        "connect: {n} registered in {connect_secs:.1} s ({:.0}/s, {} retries); server RSS {:.1} → {:.1} MiB: {per:.2} KiB per connection",
        n as f64 / connect_secs,
        retries.swap(0, Ordering::Relaxed),
        before as f64 / 1024.0,
        after as f64 / 1024.0
    );

    if let (Some(b), Some(a)) = (slab_before, slab_after) {
        println!(
            "kernel: slab {:.1} → {:.1} MiB: {:.2} KiB per socket (both ends are on this machine: two sockets per connection)",
            b as f64 / 1024.0,
            a as f64 / 1024.0,
            a.saturating_sub(b) as f64 / (2 * n) as f64
        );
    }

    // messages through a sample while all are connected
    let mut pairs = Vec::with_capacity(args.sample);
    let mut it = sample_conns.into_iter();
    for k in 0..args.sample {
        let (Some(s), Some(r)) = (it.next(), it.next()) else {
            break;
        };
        pairs.push((s, ids[2 * k + 1].clone(), r));
    }
    let (h, lost) = sample(pairs, args.messages, 1024).await?;
    println!(
        "sample: {} pairs x {} messages while {n} are connected: p50 {} us, p99 {} us, max {} us; {} delivered, {lost} lost",
        args.sample,
        args.messages,
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.max(),
        h.len()
    );

    // the reconnect storm: everything dropped at once, everything back at once
    let _ = stop_tx.send(true);
    while held.join_next().await.is_some() {}
    let t1 = Instant::now();
    let conns = connect_all(
        1,
        server,
        &url,
        &ids,
        args.sources,
        args.concurrency,
        &key,
        &retries,
    )
    .await?;
    let storm_secs = t1.elapsed().as_secs_f64();
    println!(
        "storm: {n} dropped at once and re-registered in {storm_secs:.1} s: {:.0} registrations/s ({} retries)",
        n as f64 / storm_secs,
        retries.load(Ordering::Relaxed)
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut held = JoinSet::new();
    for ws in conns {
        keep(&mut held, ws, stop_rx.clone());
    }
    tokio::time::sleep(Duration::from_secs(args.settle)).await;
    let after_storm = rss_kib(pid)?;
    println!(
        "after the storm: server RSS {:.1} MiB: {:.2} KiB per connection",
        after_storm as f64 / 1024.0,
        after_storm.saturating_sub(before) as f64 / n as f64
    );
    let _ = stop_tx.send(true);
    while held.join_next().await.is_some() {}
    Ok(())
}
