//! `lattice-loadgen files`: a file end to end (the sender's disk → lattice-server's blob store →
//! the receiver's disk) against one raw loopback WebSocket carrying the same bytes with no
//! crypto, side by side in one run; seal and open CPU per MiB; peak RSS of the sender, the server
//! and the receiver (each its own process); time to resume after a SIGKILL of the sender. With
//! `--two-nodes`, the same file again through two `lattice-server --redis` nodes sharing one
//! `--blob-dir` (uploaded through A, downloaded through B), side by side with the one-node run.
//!
//! The sender and the receiver are this binary again (`files-peer`), each a `lattice-peer`
//! `MessagingPeer` with its own transfers directory, so each one's peak RSS is its own.

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
    /// Directory holding the lattice-server binary (default: next to this one).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Also send the file through two `lattice-server --redis` nodes sharing one `--blob-dir`
    /// (the sender on node A, the receiver on node B), on a `redis-server` this run starts,
    /// right after the single-node run.
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
    let p = MessagingPeer::new(config)?;
    Ok(p)
}

/// One side: prints `ready`, then `done START_MS END_MS PEAK_RSS_KIB` once its transfer
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
                    println!("done {start} {end} {}", peak_rss_kib("self")?);
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

fn spawn_side(
    role: &str,
    url: &str,
    dir: &Path,
    path: &Path,
) -> anyhow::Result<(Spawned, std::process::ChildStdout)> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(["files-peer", "--role", role, "--url", url, "--dir"])
        .arg(dir)
        .arg("--path")
        .arg(path)
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

fn parse_done(s: &str) -> anyhow::Result<(u128, u128, u64)> {
    let v: Vec<&str> = s.split_whitespace().collect();
    match v.as_slice() {
        [a, b, c] => Ok((a.parse()?, b.parse()?, c.parse()?)),
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

/// CPU microseconds per MiB to seal and to open 1 MiB chunks (this thread, `n` MiB).
fn seal_open_cpu(n: u64) -> anyhow::Result<(f64, f64)> {
    use lattice_crypto::file_chunk::{open_chunk, seal_chunk, FileKey};
    let key = FileKey::generate(&mut rand::rngs::OsRng);
    let id = [7u8; 16];
    let plain = bytes_of(MIB as usize);
    let t = cpu_self_us()?;
    let mut sealed = Vec::new();
    for i in 0..n {
        sealed = seal_chunk(&mut rand::rngs::OsRng, &key, &id, i, false, &plain)?;
    }
    let seal = cpu_self_us()? - t;
    let t = cpu_self_us()?;
    for _ in 0..n {
        let opened = open_chunk(&key, &id, n - 1, false, &sealed)?;
        std::hint::black_box(opened);
    }
    let open = cpu_self_us()? - t;
    Ok((seal as f64 / n as f64, open as f64 / n as f64))
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

/// What one end-to-end run measured.
struct Run {
    up: f64,
    down: f64,
    total: f64,
    rss: (u64, Vec<u64>, u64),
}

/// Sends `src` from a sender on `send_url` to a receiver on `recv_url` (each its own process
/// in `work`), checks the size received, and reads the peak RSS of the `servers`.
async fn run_once(
    src: &Path,
    work: &Path,
    send_url: &str,
    recv_url: &str,
    servers: &[&Spawned],
    bytes: u64,
) -> anyhow::Result<Run> {
    let dest = work.join("received.bin");
    std::fs::create_dir_all(work.join("alice"))?;
    std::fs::create_dir_all(work.join("bob"))?;
    let (_recv, rout) = spawn_side("recv", recv_url, &work.join("bob"), &dest)?;
    let (_, rout) = line(rout, "ready").await?;
    let (_send, sout) = spawn_side("send", send_url, &work.join("alice"), src)?;
    let (s_done, _) = line(sout, "done").await?;
    let (r_done, _) = line(rout, "done").await?;
    let (s_start, s_end, s_rss) = parse_done(&s_done)?;
    let (r_start, r_end, r_rss) = parse_done(&r_done)?;
    let server_rss = servers
        .iter()
        .map(|s| peak_rss_kib(&s.0.id().to_string()))
        .collect::<anyhow::Result<Vec<u64>>>()?;
    if std::fs::metadata(&dest)?.len() != bytes {
        bail!("the received file has the wrong size");
    }
    std::fs::remove_file(&dest)?;
    Ok(Run {
        up: (s_end - s_start) as f64 / 1000.0,
        down: (r_end - r_start) as f64 / 1000.0,
        total: (r_end - s_start) as f64 / 1000.0,
        rss: (s_rss, server_rss, r_rss),
    })
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

/// The same file through two nodes on Redis sharing one blob directory: uploaded through A,
/// downloaded through B.
async fn two_nodes(
    args: &FilesArgs,
    bins: &Path,
    work: &Path,
    src: &Path,
    raw: f64,
) -> anyhow::Result<()> {
    let work = work.join("two-nodes");
    let (_redis, url) = start_redis(&work.join("redis")).await?;
    let shared = work.join("shared-blobs").to_string_lossy().into_owned();
    let flags = ["--redis", &url, "--blob-dir", &shared];
    let (a, url_a) = start_node(bins, &work.join("a"), &flags).await?;
    let (b, url_b) = start_node(bins, &work.join("b"), &flags).await?;
    let run = run_once(src, &work, &url_a, &url_b, &[&a, &b], args.mib * MIB).await?;
    report(
        "two nodes on Redis (both on core 0), sender on A, receiver on B, one shared --blob-dir",
        args.mib,
        &run,
        raw,
    );
    Ok(())
}

fn report(label: &str, mib: u64, run: &Run, raw: f64) {
    let mib = mib as f64;
    let Run {
        up,
        down,
        total,
        rss,
    } = run;
    println!("## {label}");
    println!(
        "upload   (offer, seal + PUT, digest message acknowledged): {:>8.1} MiB/s  ({up:.2} s)",
        mib / up
    );
    println!(
        "download (from the offer: GET behind the upload, open, write, digest, rename): {:>8.1} MiB/s  ({down:.2} s)",
        mib / down
    );
    println!(
        "end to end (send_file called -> the receiver's file complete and verified): {:>8.1} MiB/s  ({total:.2} s) = {:.0} % of the raw WebSocket; upload {:.0} %, download {:.0} %",
        mib / total,
        100.0 * (mib / total) / raw,
        100.0 * (mib / up) / raw,
        100.0 * (mib / down) / raw,
    );
    let servers: Vec<String> = rss
        .1
        .iter()
        .map(|k| format!("{:.1} MiB", *k as f64 / 1024.0))
        .collect();
    println!(
        "peak RSS: sender {:.1} MiB, server(s) {}, receiver {:.1} MiB",
        rss.0 as f64 / 1024.0,
        servers.join(" + "),
        rss.2 as f64 / 1024.0
    );
}

async fn measure(args: &FilesArgs, bins: &Path, work: &Path) -> anyhow::Result<()> {
    let src = work.join("source.bin");
    write_file(&src, args.mib)?;
    println!(
        "# {} MiB file end to end on loopback: sender disk -> lattice-server (--data-dir, blob store) -> receiver disk; release build; lattice-server on core 0{}",
        args.mib,
        if crate::which("taskset") { "" } else { " (taskset missing: not pinned)" }
    );

    // The reference first: one WebSocket, the same bytes, no crypto.
    let raw = raw_websocket(args.mib).await?;
    println!("raw WebSocket (no crypto, 1 MiB messages): {raw:>8.1} MiB/s");

    let (server, url) = start_server(bins, work).await?;
    let run = run_once(&src, work, &url, &url, &[&server], args.mib * MIB).await?;
    report("one node (--data-dir)", args.mib, &run, raw);
    drop(server);
    if args.two_nodes {
        two_nodes(args, bins, work, &src, raw).await?;
    }
    let (seal, open) = seal_open_cpu(256)?;
    println!("CPU per MiB (1 MiB chunks, one thread): seal {seal:.0} us, open {open:.0} us");

    if args.resume_mib > 0 {
        resume(args, bins, work).await?;
    }
    Ok(())
}

/// Kills the sender (SIGKILL) a quarter into an upload, starts it again, and reports how long
/// the new process takes to acknowledge its first new chunk.
async fn resume(args: &FilesArgs, bins: &Path, work: &Path) -> anyhow::Result<()> {
    let work = work.join("resume");
    std::fs::create_dir_all(work.join("alice"))?;
    std::fs::create_dir_all(work.join("bob"))?;
    let (_server, url) = start_server(bins, &work).await?;
    let src = work.join("source.bin");
    write_file(&src, args.resume_mib)?;
    let (_recv, rout) = spawn_side("recv", &url, &work.join("bob"), &work.join("received.bin"))?;
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
    let (mut send, _sout) = spawn_side("send", &url, &work.join("alice"), &src)?;
    let quarter = (args.resume_mib / 4).max(1) as usize;
    while acked() < quarter {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    send.0.kill()?;
    send.0.wait()?;
    let before = acked();
    let restart = Instant::now();
    let (_send, sout) = spawn_side("send", &url, &work.join("alice"), &src)?;
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
        args.resume_mib,
        first.as_secs_f64() * 1000.0
    );
    Ok(())
}
