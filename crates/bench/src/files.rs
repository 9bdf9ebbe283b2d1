//! `lattice-loadgen files`: a file end to end (the sender's disk → lattice-server's blob store →
//! the receiver's disk) side by side, in each round, with two references: one raw loopback
//! WebSocket carrying the same bytes from memory with no crypto (the memory-only reference of
//! issue 11), and the same file moved sender disk → a store syncing every chunk before its ack →
//! receiver disk over raw WebSockets with no crypto (the disk-bound reference: what the disk and
//! the copies alone allow). Also: the CPU and peak RSS of the sender, the server and the receiver
//! (each its own process); chunk sizes and windows side by side (`--chunk-kib`, `--in-flight`);
//! the chunk crypto's CPU per MiB; the time to resume after a SIGKILL of the sender. With
//! `--two-nodes`, each lattice run again through two `lattice-server --redis` nodes sharing one
//! `--blob-dir` (uploaded through A, downloaded through B, on a `redis-server` the run starts),
//! side by side with the one-node run.
//!
//! The sender and the receiver are this binary again (`files-peer`), each a `lattice-peer`
//! `MessagingPeer` with its own transfers directory, so each one's peak RSS and CPU are its own.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use futures_util::{SinkExt as _, StreamExt as _};
use lattice_peer::{
    Content, FileMeta, MessagingPeer, PeerConfig, PeerEvent, TransferId, TransferState,
};
use lattice_protocol::ClientId;
use tokio_tungstenite::tungstenite::Message;

use crate::{binary_dir, free_port, spawn_pinned, wait_port, Spawned};

const MIB: u64 = 1024 * 1024;

/// `files` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct FilesArgs {
    /// Size of the file sent end to end, in MiB.
    #[arg(long, default_value_t = 1024)]
    mib: u64,
    /// Size of the file of the resume measurement, in MiB (0 skips it).
    #[arg(long, default_value_t = 256)]
    resume_mib: u64,
    /// Rounds of the three measurements (memory-only reference, disk-bound reference, lattice),
    /// one after the other in each round.
    #[arg(long, default_value_t = 1)]
    rounds: u32,
    /// Chunk sizes to run lattice with, in KiB, side by side in each round (the disk-bound
    /// reference uses the first).
    #[arg(long, value_delimiter = ',', default_values_t = [lattice_peer::defaults::FILE_CHUNK_BYTES / 1024])]
    chunk_kib: Vec<u64>,
    /// Chunks in flight per transfer to run lattice with, side by side in each round (the
    /// disk-bound reference uses the first).
    #[arg(long, value_delimiter = ',', default_values_t = [lattice_peer::defaults::FILE_CHUNKS_IN_FLIGHT])]
    in_flight: Vec<usize>,
    /// Directory holding the lattice-server binary (default: next to this one).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Also run lattice through two `lattice-server --redis` nodes sharing one `--blob-dir`
    /// (the sender on node A, the receiver on node B), on a `redis-server` each such run
    /// starts, right after the one-node run of the same chunk size and window.
    #[arg(long)]
    two_nodes: bool,
}

/// `files-peer` arguments (one side of the transfer, started by `files`).
#[derive(Debug, Clone, clap::Args)]
pub struct PeerArgs {
    /// `send` or `recv`.
    #[arg(long)]
    role: String,
    #[arg(long)]
    url: String,
    /// Working directory (identity, transfers journal).
    #[arg(long)]
    dir: PathBuf,
    /// The file to send, or where to save the received one.
    #[arg(long)]
    path: PathBuf,
    /// Plaintext bytes per chunk (`PeerConfig::file_chunk_bytes`).
    #[arg(long)]
    chunk_bytes: u64,
    /// Chunks in flight (`PeerConfig::file_chunks_in_flight`).
    #[arg(long)]
    in_flight: usize,
}

fn peak_rss_kib(pid: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM")
}

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

async fn peer(args: &PeerArgs, id: &str) -> anyhow::Result<MessagingPeer> {
    let (identity, _) =
        lattice_peer::identity_file::load_or_create(&args.dir.join(format!("{id}.identity")))?;
    let mut config = PeerConfig::new(args.url.clone(), ClientId::new(id)?, identity);
    config.transfers_dir = Some(args.dir.join(format!("{id}.transfers")));
    config.retry_first_connect = true;
    config.file_chunk_bytes = args.chunk_bytes;
    config.file_chunks_in_flight = args.in_flight;
    let p = MessagingPeer::new(config)?;
    Ok(p)
}

/// One side: prints `ready`, then `done START_MS END_MS PEAK_RSS_KIB CPU_US` once its transfer
/// completed (the sender: `send_file` called → every chunk stored and the digest message
/// acknowledged; the receiver: the file message arrived, which is as the upload starts → the
/// verified file in place). The receiver starts at once, so its download runs behind the upload.
pub async fn run_peer(args: PeerArgs) -> anyhow::Result<()> {
    let (me, other) = if args.role == "send" {
        ("alice", "bob")
    } else {
        ("bob", "alice")
    };
    let p = peer(&args, me).await?;
    let mut events = p.events();
    p.connect().await?;
    println!("ready");
    let mut start = now_ms();
    let mut id: Option<TransferId> = None;
    if args.role == "send" {
        // A transfer left by a killed run resumes by itself; otherwise send.
        id = p.transfers().first().map(|t| t.id.clone());
        if id.is_none() {
            p.request_public_key(&ClientId::new(other)?).await?;
            start = now_ms();
            id = Some(
                p.send_file(&ClientId::new(other)?, &args.path, FileMeta::default())
                    .await?,
            );
        }
    }
    while let Some(ev) = events.next().await {
        match ev {
            PeerEvent::Message(m) => {
                if let Content::File(offer) = &m.content {
                    start = now_ms();
                    let mid = m.message_id.clone().context("a file message without id")?;
                    id = Some(p.download_file(&m.from, &mid, offer, &args.path)?);
                }
            }
            PeerEvent::Transfer(t) if Some(&t.id) == id.as_ref() => match t.state {
                TransferState::Completed => {
                    let end = now_ms();
                    println!(
                        "done {start} {end} {} {}",
                        peak_rss_kib("self")?,
                        cpu_self_us()?
                    );
                    return Ok(());
                }
                TransferState::Failed(why) => bail!("transfer failed: {why}"),
                _ => {}
            },
            _ => {}
        }
    }
    bail!("event stream ended")
}

/// Chunk size (bytes) and chunks in flight of one lattice run.
type Tuning = (u64, usize);

fn spawn_side(
    role: &str,
    url: &str,
    dir: &Path,
    path: &Path,
    (chunk_bytes, in_flight): Tuning,
) -> anyhow::Result<(Spawned, std::process::ChildStdout)> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(["files-peer", "--role", role, "--url", url, "--dir"])
        .arg(dir)
        .arg("--path")
        .arg(path)
        .arg("--chunk-bytes")
        .arg(chunk_bytes.to_string())
        .arg("--in-flight")
        .arg(in_flight.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let out = child.stdout.take().context("stdout")?;
    Ok((Spawned(child), out))
}

/// Reads lines of a child until one starting with `prefix`; returns the rest of it.
async fn line(
    out: std::process::ChildStdout,
    prefix: &'static str,
) -> anyhow::Result<(String, std::process::ChildStdout)> {
    tokio::task::spawn_blocking(move || {
        use std::io::BufRead as _;
        let mut reader = std::io::BufReader::new(out);
        let mut l = String::new();
        loop {
            l.clear();
            if reader.read_line(&mut l)? == 0 {
                bail!("the peer process ended before {prefix:?}");
            }
            if let Some(rest) = l.trim_end().strip_prefix(prefix) {
                return Ok((rest.trim().to_owned(), reader.into_inner()));
            }
        }
    })
    .await?
}

/// `START_MS END_MS PEAK_RSS_KIB CPU_US` of a `done` line.
fn parse_done(s: &str) -> anyhow::Result<(u128, u128, u64, u64)> {
    let v: Vec<&str> = s.split_whitespace().collect();
    match v.as_slice() {
        [a, b, c, d] => Ok((a.parse()?, b.parse()?, c.parse()?, d.parse()?)),
        _ => bail!("bad done line {s:?}"),
    }
}

/// Writes `mib` MiB of incompressible bytes (a xorshift stream) to `path`.
fn write_file(path: &Path, mib: u64) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut buf = vec![0u8; MIB as usize];
    for _ in 0..mib {
        for chunk in buf.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&buf)?;
    }
    f.flush()?;
    Ok(())
}

/// One WebSocket on loopback carrying `mib` MiB in 1 MiB binary messages, no crypto; MiB/s.
async fn raw_websocket(mib: u64) -> anyhow::Result<f64> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        let mut ws = tokio_tungstenite::accept_async(tcp).await?;
        let mut got = 0u64;
        while let Some(m) = ws.next().await {
            if let Message::Binary(b) = m? {
                got += b.len() as u64;
                if got >= mib * MIB {
                    break;
                }
            }
        }
        anyhow::Ok(got)
    });
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}")).await?;
    let payload = bytes_of(MIB as usize);
    let start = Instant::now();
    for _ in 0..mib {
        ws.send(Message::Binary(payload.clone().into())).await?;
    }
    ws.flush().await?;
    let got = server.await??;
    let secs = start.elapsed().as_secs_f64();
    if got < mib * MIB {
        bail!("raw WebSocket carried {got} bytes");
    }
    Ok(mib as f64 / secs)
}

fn bytes_of(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 % 251) as u8).collect()
}

/// The disk-bound reference: the same file sender disk → a store that writes every chunk to its
/// own file and syncs it before acknowledging it (as `lattice-server`'s blob store does) → the
/// receiver's disk (synced at the end, as `lattice-peer` does before the rename), over raw
/// loopback WebSockets, no crypto, no HTTP, the same chunk size and window as `lattice-peer`, the
/// receiver fed behind the upload (pipelined, like ours). Returns the seconds until every chunk
/// was acknowledged to the sender, and until the receiver's copy was synced.
async fn disk_reference(
    src: &Path,
    work: &Path,
    bytes: u64,
    (chunk, window): Tuning,
) -> anyhow::Result<(f64, f64)> {
    let chunks = bytes.div_ceil(chunk).max(1);
    let len_of = move |i: u64| chunk.min(bytes - i * chunk);
    let store = work.join("reference-store");
    std::fs::create_dir_all(&store)?;
    let dest = work.join("reference-received.bin");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("ws://{}", listener.local_addr()?);

    // The store: the receiver connects first, then the sender.
    let store_dir = store.clone();
    let server = tokio::spawn(async move {
        let store = store_dir;
        let (tcp, _) = listener.accept().await?;
        let mut down = tokio_tungstenite::accept_async(tcp).await?;
        let (tcp, _) = listener.accept().await?;
        let mut up = tokio_tungstenite::accept_async(tcp).await?;
        // The receiver is fed by its own task, so that the store keeps taking chunks meanwhile
        // (as the blob store serves downloads beside uploads).
        let (to_down, mut stored_rx) = tokio::sync::mpsc::channel::<PathBuf>(window);
        let forward = tokio::spawn(async move {
            while let Some(path) = stored_rx.recv().await {
                let index = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default()
                    .to_owned();
                // Served from the stored file, as the blob store serves a download.
                let chunk = tokio::task::spawn_blocking(move || std::fs::read(path)).await??;
                down.send(Message::Text(index.into())).await?;
                down.send(Message::Binary(chunk.into())).await?;
            }
            anyhow::Ok(())
        });
        let mut writes = tokio::task::JoinSet::new();
        let (mut received, mut stored) = (0u64, 0u64);
        while stored < chunks {
            tokio::select! {
                m = up.next(), if writes.len() < window && received < chunks => {
                    let Message::Binary(b) = m.context("the sender left")?? else { continue };
                    let (index, dir) = (received, store.clone());
                    received += 1;
                    writes.spawn_blocking(move || -> anyhow::Result<(u64, PathBuf)> {
                        use std::io::Write as _;
                        let temp = dir.join(format!("{index}.part"));
                        let mut f = std::fs::File::create(&temp)?;
                        f.write_all(&b)?;
                        f.sync_all()?;
                        let path = dir.join(index.to_string());
                        std::fs::rename(&temp, &path)?;
                        Ok((index, path))
                    });
                }
                Some(done) = writes.join_next() => {
                    let (index, path) = done??;
                    up.send(Message::Text(index.to_string().into())).await?;
                    to_down.send(path).await?;
                    stored += 1;
                }
            }
        }
        drop(to_down);
        forward.await??;
        anyhow::Ok(())
    });

    let receiver = {
        let (url, dest) = (url.clone(), dest.clone());
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
        tokio::spawn(async move {
            let file = std::sync::Arc::new(std::fs::File::create(&dest)?);
            file.set_len(bytes)?;
            let (mut got, mut index) = (0u64, None);
            let mut writes = tokio::task::JoinSet::new();
            while got < chunks {
                while writes.len() >= window {
                    writes.join_next().await.context("writes")???;
                }
                match ws.next().await.context("the store left")?? {
                    Message::Text(t) => index = Some(t.parse::<u64>()?),
                    Message::Binary(b) => {
                        let i = index.take().context("a chunk without its index")?;
                        let f = std::sync::Arc::clone(&file);
                        writes.spawn_blocking(move || {
                            std::os::unix::fs::FileExt::write_all_at(&*f, &b, i * chunk)
                        });
                        got += 1;
                    }
                    _ => {}
                }
            }
            while let Some(w) = writes.join_next().await {
                w??;
            }
            tokio::task::spawn_blocking(move || file.sync_all()).await??;
            anyhow::Ok(Instant::now())
        })
    };
    // Let the store take the receiver's connection first.
    tokio::time::sleep(Duration::from_millis(50)).await;

    let start = Instant::now();
    let (mut up, _) = tokio_tungstenite::connect_async(url).await?;
    let source = std::sync::Arc::new(std::fs::File::open(src)?);
    let (mut sent, mut acked) = (0u64, 0u64);
    while acked < chunks {
        while sent < chunks && sent - acked < window as u64 {
            let (f, i) = (std::sync::Arc::clone(&source), sent);
            let chunk = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; usize::try_from(len_of(i))?];
                std::os::unix::fs::FileExt::read_exact_at(&*f, &mut buf, i * chunk)?;
                anyhow::Ok(buf)
            })
            .await??;
            up.send(Message::Binary(chunk.into())).await?;
            sent += 1;
        }
        if let Message::Text(_) = up.next().await.context("the store left")?? {
            acked += 1;
        }
    }
    let uploaded = start.elapsed().as_secs_f64();
    server.await??;
    let end = receiver.await??;
    let total = end.duration_since(start).as_secs_f64();
    if std::fs::metadata(&dest)?.len() != bytes {
        bail!("the reference's received file has the wrong size");
    }
    std::fs::remove_dir_all(&store)?;
    std::fs::remove_file(&dest)?;
    Ok((uploaded, total))
}

/// CPU nanoseconds this thread has run (`/proc/thread-self/schedstat`, nanosecond resolution,
/// unlike the 10 ms ticks of `/proc/PID/stat`): CPU time, so a busy machine's waits do not count.
fn thread_cpu_ns() -> anyhow::Result<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat")?;
    Ok(s.split_whitespace().next().context("schedstat")?.parse()?)
}

/// CPU per MiB of the chunk crypto on this thread, `n` chunks of 1 MiB each, in microseconds:
/// seal (copying, as `seal_chunk`), seal in place (what `lattice-peer` does), the chunk's
/// SHA-256, open (copying), open in place (what `lattice-peer` does), and a plain copy of the
/// chunk as the floor. Every seal and open includes filling a fresh buffer with the chunk (as
/// reading it from the file or the network does), and every open the plaintext's wipe.
fn chunk_crypto_cpu(n: u64) -> anyhow::Result<[f64; 6]> {
    use lattice_crypto::file_chunk::{
        chunk_hash, open_chunk, open_chunk_in_place, seal_chunk, seal_chunk_in_place, FileKey,
        CHUNK_HEADROOM, CHUNK_OVERHEAD,
    };
    let key = FileKey::generate(&mut rand::rngs::OsRng);
    let id = [7u8; 16];
    let plain = bytes_of(MIB as usize);
    let sealed = seal_chunk(&mut rand::rngs::OsRng, &key, &id, 0, false, &plain)?;
    let per_mib = |f: &mut dyn FnMut() -> anyhow::Result<()>| -> anyhow::Result<f64> {
        let t = thread_cpu_ns()?;
        for _ in 0..n {
            f()?;
        }
        Ok((thread_cpu_ns()? - t) as f64 / 1000.0 / n as f64)
    };
    let seal = per_mib(&mut || {
        let read = plain.clone();
        let s = seal_chunk(&mut rand::rngs::OsRng, &key, &id, 0, false, &read)?;
        std::hint::black_box(s);
        Ok(())
    })?;
    let seal_in_place = per_mib(&mut || {
        let mut buf = Vec::with_capacity(plain.len() + CHUNK_OVERHEAD);
        buf.resize(CHUNK_HEADROOM, 0);
        buf.extend_from_slice(&plain);
        seal_chunk_in_place(&mut rand::rngs::OsRng, &key, &id, 0, false, &mut buf)?;
        std::hint::black_box(buf);
        Ok(())
    })?;
    let hash = per_mib(&mut || {
        std::hint::black_box(chunk_hash(&sealed));
        Ok(())
    })?;
    let open = per_mib(&mut || {
        let received = sealed.clone();
        std::hint::black_box(open_chunk(&key, &id, 0, false, &received)?);
        Ok(())
    })?;
    let open_in_place = per_mib(&mut || {
        let mut received = sealed.clone();
        std::hint::black_box(open_chunk_in_place(&key, &id, 0, false, &mut received)?);
        // The plaintext wiped, as `open_chunk`'s is on drop.
        received.fill(0);
        std::hint::black_box(received);
        Ok(())
    })?;
    let copy = per_mib(&mut || {
        std::hint::black_box(plain.clone());
        Ok(())
    })?;
    Ok([seal, seal_in_place, hash, open, open_in_place, copy])
}

fn cpu_self_us() -> anyhow::Result<u64> {
    crate::cpu_us(std::process::id())
}

/// The `files` measurement.
pub async fn files(args: FilesArgs) -> anyhow::Result<()> {
    let bins = binary_dir(args.bin_dir.clone())?;
    let work = std::env::temp_dir().join(format!("lattice-files-{:08x}", rand::random::<u32>()));
    std::fs::create_dir_all(&work)?;
    let result = measure(&args, &bins, &work).await;
    let _ = std::fs::remove_dir_all(&work);
    result
}

async fn start_server(bins: &Path, work: &Path) -> anyhow::Result<(Spawned, String)> {
    start_node(bins, &work.join("server"), &[]).await
}

/// A `lattice-server` on `data` (pinned to core 0) with `extra` flags, and its URL.
async fn start_node(bins: &Path, data: &Path, extra: &[&str]) -> anyhow::Result<(Spawned, String)> {
    let port = free_port()?;
    let p = port.to_string();
    let data = data.to_string_lossy().into_owned();
    let mut args = vec![
        "--bind",
        "127.0.0.1",
        "--port",
        &p,
        "--data-dir",
        &data,
        "--rate-limit",
        "0",
        "--new-ids-per-ip",
        "0",
    ];
    args.extend_from_slice(extra);
    let server = spawn_pinned(&bins.join("lattice-server"), &args)?;
    wait_port(port).await?;
    Ok((server, format!("ws://127.0.0.1:{port}")))
}

/// A `redis-server` on a free port in `dir` (no persistence: a measurement), and its URL.
async fn start_redis(dir: &Path) -> anyhow::Result<(Spawned, String)> {
    let port = free_port()?;
    std::fs::create_dir_all(dir)?;
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("redis-server runs (scripts/install-deps.sh installs it)")?;
    let redis = Spawned(child);
    wait_port(port).await?;
    Ok((redis, format!("redis://127.0.0.1:{port}")))
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The servers of a lattice run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Nodes {
    /// One `lattice-server` on its `--data-dir`; the sender and the receiver on it.
    One,
    /// Two `lattice-server --redis` nodes on a fresh `redis-server`, sharing one `--blob-dir`;
    /// the sender on node A, the receiver on node B.
    Two,
}

/// What one lattice run measured.
struct LatticeRun {
    /// Seconds: upload, download, end to end.
    secs: [f64; 3],
    /// Peak RSS in KiB of the sender, the receiver.
    rss: [u64; 2],
    /// CPU seconds (user + system) of the sender, the receiver over the run.
    cpu: [f64; 2],
    /// Peak RSS in KiB and CPU seconds over the run of each server: the one, or A then B.
    servers: Vec<(u64, f64)>,
}

/// One run of `lattice-server` (one node, or two on Redis) and two `lattice-peer` processes.
async fn lattice_run(
    bins: &Path,
    work: &Path,
    src: &Path,
    bytes: u64,
    tuning: Tuning,
    nodes: Nodes,
) -> anyhow::Result<LatticeRun> {
    let work = work.join("lattice");
    std::fs::create_dir_all(work.join("alice"))?;
    std::fs::create_dir_all(work.join("bob"))?;
    // A fresh Redis each run: the ids and their keys of an earlier run are not there.
    let (redis, servers, send_url, recv_url) = match nodes {
        Nodes::One => {
            let (server, url) = start_server(bins, &work).await?;
            (None, vec![server], url.clone(), url)
        }
        Nodes::Two => {
            let (redis, url) = start_redis(&work.join("redis")).await?;
            let shared = work.join("shared-blobs").to_string_lossy().into_owned();
            let flags = ["--redis", &url, "--blob-dir", &shared];
            let (a, url_a) = start_node(bins, &work.join("a"), &flags).await?;
            let (b, url_b) = start_node(bins, &work.join("b"), &flags).await?;
            (Some(redis), vec![a, b], url_a, url_b)
        }
    };
    let dest = work.join("received.bin");
    let (_recv, rout) = spawn_side("recv", &recv_url, &work.join("bob"), &dest, tuning)?;
    let (_, rout) = line(rout, "ready").await?;
    let (_send, sout) = spawn_side("send", &send_url, &work.join("alice"), src, tuning)?;
    let (s_done, _) = line(sout, "done").await?;
    let (r_done, _) = line(rout, "done").await?;
    let (s_start, s_end, s_rss, s_cpu) = parse_done(&s_done)?;
    let (r_start, r_end, r_rss, r_cpu) = parse_done(&r_done)?;
    let cpu = |us: u64| us as f64 / 1e6;
    let server_use = servers
        .iter()
        .map(|s| {
            Ok((
                peak_rss_kib(&s.0.id().to_string())?,
                cpu(crate::cpu_us(s.0.id())?),
            ))
        })
        .collect::<anyhow::Result<Vec<(u64, f64)>>>()?;
    if std::fs::metadata(&dest)?.len() != bytes {
        bail!("the received file has the wrong size");
    }
    drop(servers);
    drop(redis);
    std::fs::remove_dir_all(&work)?;
    let secs = |a: u128, b: u128| b.saturating_sub(a) as f64 / 1000.0;
    Ok(LatticeRun {
        secs: [
            secs(s_start, s_end),
            secs(r_start, r_end),
            secs(s_start, r_end),
        ],
        rss: [s_rss, r_rss],
        cpu: [cpu(s_cpu), cpu(r_cpu)],
        servers: server_use,
    })
}

/// Prints one lattice run against the memory-only (`raw`) and the disk-bound (`disk`) references,
/// in MiB/s.
fn print_lattice_run(
    run: &LatticeRun,
    nodes: Nodes,
    tuning: Tuning,
    mib: f64,
    raw: f64,
    disk: f64,
) {
    let LatticeRun {
        secs: [up, down, total],
        rss: [s_rss, r_rss],
        cpu: [s_cpu, r_cpu],
        servers,
    } = run;
    let (label, server) = match nodes {
        Nodes::One => ("lattice", "server"),
        Nodes::Two => (
            "lattice on two nodes (Redis, one shared --blob-dir; sender on A, receiver on B)",
            "servers A + B",
        ),
    };
    println!(
        "  {label}, {} KiB chunks, {} in flight: {:>7.1} MiB/s end to end ({total:.2} s: send_file called -> the receiver's file complete, verified and in place) = {:.0} % of memory-only, {:.0} % of disk-bound",
        tuning.0 / 1024,
        tuning.1,
        mib / total,
        100.0 * (mib / total) / raw,
        100.0 * (mib / total) / disk,
    );
    println!(
        "    legs: upload {:.1} MiB/s ({up:.2} s: offer, seal, PUT, digest message acknowledged); download {:.1} MiB/s ({down:.2} s from the offer: GET behind the upload, open, write, digest, sync, rename)",
        mib / up,
        mib / down,
    );
    let join = |f: &dyn Fn(&(u64, f64)) -> String| -> String {
        servers.iter().map(f).collect::<Vec<_>>().join(" + ")
    };
    let server_cpu: f64 = servers.iter().map(|s| s.1).sum();
    println!(
        "    peak RSS: sender {:.1} MiB, {server} {} MiB, receiver {:.1} MiB; CPU: sender {s_cpu:.2} s, {server} {} s, receiver {r_cpu:.2} s, together {:.2} s",
        *s_rss as f64 / 1024.0,
        join(&|s| format!("{:.1}", s.0 as f64 / 1024.0)),
        *r_rss as f64 / 1024.0,
        join(&|s| format!("{:.2}", s.1)),
        s_cpu + server_cpu + r_cpu,
    );
}

async fn measure(args: &FilesArgs, bins: &Path, work: &Path) -> anyhow::Result<()> {
    let src = work.join("source.bin");
    write_file(&src, args.mib)?;
    let bytes = args.mib * MIB;
    let mib = args.mib as f64;
    println!(
        "# {} MiB file end to end on loopback in {}: sender disk -> lattice-server (--data-dir, blob store) -> receiver disk; lattice-server on core 0{}; {} round(s), each: the two references then lattice{}",
        args.mib,
        work.display(),
        if crate::which("taskset") { "" } else { " (taskset missing: not pinned)" },
        args.rounds,
        if args.two_nodes {
            " on one node, then on two nodes (lattice-server --redis on a fresh redis-server, both on core 0, one shared --blob-dir: uploaded through A, downloaded through B)"
        } else {
            ""
        },
    );
    println!("#  memory-only: one raw WebSocket, the same bytes from memory in 1 MiB messages, no crypto");
    println!("#  disk-bound:  the same file, sender disk -> a store syncing every chunk before its ack -> receiver disk (synced), raw WebSockets, no crypto, pipelined");
    let tunings: Vec<Tuning> = args
        .chunk_kib
        .iter()
        .flat_map(|&k| args.in_flight.iter().map(move |&n| (k * 1024, n)))
        .collect();
    let first = *tunings.first().context("no chunk size or window")?;
    let nodes: &[Nodes] = if args.two_nodes {
        &[Nodes::One, Nodes::Two]
    } else {
        &[Nodes::One]
    };
    for round in 1..=args.rounds {
        let load = load_average();
        let t = cpu_self_us()?;
        let raw = raw_websocket(args.mib).await?;
        let raw_cpu = (cpu_self_us()? - t) as f64 / 1e6;
        let t = cpu_self_us()?;
        let (ref_up, ref_total) = disk_reference(&src, work, bytes, first).await?;
        let ref_cpu = (cpu_self_us()? - t) as f64 / 1e6;
        let disk = mib / ref_total;
        println!("round {round} (load average {load}):");
        println!("  memory-only reference:  {raw:>7.1} MiB/s (CPU of both ends {raw_cpu:.2} s)");
        println!(
            "  disk-bound reference:   {disk:>7.1} MiB/s end to end ({ref_total:.2} s; every chunk stored and acknowledged after {ref_up:.2} s; {} KiB chunks, {} in flight; CPU of the three {ref_cpu:.2} s)",
            first.0 / 1024,
            first.1
        );
        for &tuning in &tunings {
            for &nodes in nodes {
                let run = lattice_run(bins, work, &src, bytes, tuning, nodes).await?;
                print_lattice_run(&run, nodes, tuning, mib, raw, disk);
            }
        }
    }
    let [seal, seal_in_place, hash, open, open_in_place, copy] = chunk_crypto_cpu(512)?;
    println!(
        "CPU per MiB (1 MiB chunks, one thread, thread CPU time): seal {seal:.0} us, in place {seal_in_place:.0} us; SHA-256 {hash:.0} us; open {open:.0} us, in place {open_in_place:.0} us (each with a fresh buffer filled, as from the file or the network); a plain copy of 1 MiB {copy:.0} us"
    );

    if args.resume_mib > 0 {
        resume(args, bins, work, first).await?;
    }
    Ok(())
}

/// Kills the sender (SIGKILL) a quarter into an upload, starts it again, and reports how long
/// the new process takes to acknowledge its first new chunk.
async fn resume(args: &FilesArgs, bins: &Path, work: &Path, tuning: Tuning) -> anyhow::Result<()> {
    let work = work.join("resume");
    std::fs::create_dir_all(work.join("alice"))?;
    std::fs::create_dir_all(work.join("bob"))?;
    let (_server, url) = start_server(bins, &work).await?;
    let src = work.join("source.bin");
    write_file(&src, args.resume_mib)?;
    let (_recv, rout) = spawn_side(
        "recv",
        &url,
        &work.join("bob"),
        &work.join("received.bin"),
        tuning,
    )?;
    let (_, rout) = line(rout, "ready").await?;
    let journal = work.join("alice").join("alice.transfers");
    let acked = || -> usize {
        std::fs::read_dir(&journal)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().extension().is_some_and(|x| x == "acks"))
                    .map(|e| std::fs::read_to_string(e.path()).map_or(0, |s| s.lines().count()))
                    .sum()
            })
            .unwrap_or(0)
    };
    let (mut send, _sout) = spawn_side("send", &url, &work.join("alice"), &src, tuning)?;
    let chunks = (args.resume_mib * MIB).div_ceil(tuning.0);
    let quarter = usize::try_from(chunks / 4).unwrap_or(usize::MAX).max(1);
    while acked() < quarter {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    send.0.kill()?;
    send.0.wait()?;
    let before = acked();
    let restart = Instant::now();
    let (_send, sout) = spawn_side("send", &url, &work.join("alice"), &src, tuning)?;
    while acked() <= before {
        if restart.elapsed() > Duration::from_secs(60) {
            bail!("the restarted sender acknowledged nothing in 60 s");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let first = restart.elapsed();
    let (_, _) = line(sout, "done").await?;
    let (_, _) = line(rout, "done").await?;
    println!(
        "resume after SIGKILL of the sender ({} MiB file, killed after {before} of {} chunks): first new chunk acknowledged {:.0} ms after the restart (process start, connect and register, listing the blob included)",
        args.resume_mib,
        chunks,
        first.as_secs_f64() * 1000.0
    );
    Ok(())
}
