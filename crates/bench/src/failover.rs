//! `lattice-loadgen failover`: how long the peers of a SIGKILLed node take to be served again by
//! the surviving nodes of a server on Redis.
//!
//! Opens `--conns` registered connections spread over the nodes at `--url` (connection i on node
//! i mod N), holds them, then kills the first node (`--pid`, SIGKILL). Every connection that node
//! held sees its socket end; each reconnects to a surviving node (round robin), registering the
//! same id again (a verified peer reclaims its id at once; an unverified one gets
//! `CLIENT_ID_TAKEN` until the dead node's presence key expires, `--presence-ttl`, and retries),
//! and then waits for a message a sender on a surviving node sends it once it is back. Reported,
//! from the kill: when every connection of the dead node had seen its socket end, when all were
//! registered again, when all had received their message (p50/p99/max per peer too), and the
//! retries.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use futures_util::{SinkExt as _, StreamExt as _};
use hdrhistogram::Histogram;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use crate::{connect_and_register, envelope_prefix, public_key_json, soak, Ws};

/// How long a moved peer may take to register again and receive its message before the run
/// fails (an unverified peer waits for the dead node's presence TTL, 30 s by default).
const MOVE_DEADLINE: Duration = Duration::from_secs(120);

/// Pause between registration attempts of a moved peer.
const RETRY_PAUSE: Duration = Duration::from_millis(250);

#[derive(Debug, clap::Args)]
pub struct FailoverArgs {
    /// The nodes' URLs, comma-separated; the first is killed.
    #[arg(long, value_delimiter = ',', required = true)]
    pub url: Vec<String>,
    /// The first node's process id (killed with SIGKILL).
    #[arg(long)]
    pub pid: u32,
    /// Registered connections over all nodes.
    #[arg(long, default_value_t = 10_000)]
    pub conns: usize,
    /// Register verified (an identity each): they reclaim their ids at once.
    #[arg(long)]
    pub verified: bool,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Seconds to hold every connection before the kill.
    #[arg(long, default_value_t = 3)]
    pub settle: u64,
}

/// Registers `id` on `url`, verified with `identity` if given.
async fn join(
    url: &str,
    id: &str,
    identity: Option<&lattice_crypto::Identity>,
    key: &str,
) -> anyhow::Result<Ws> {
    match identity {
        Some(identity) => soak::register_verified(url, id, identity).await,
        None => connect_and_register(url, id, key).await,
    }
}

fn percentiles(h: &Histogram<u64>) -> String {
    format!(
        "p50={:.2} s p99={:.2} s max={:.2} s",
        h.value_at_quantile(0.5) as f64 / 1e3,
        h.value_at_quantile(0.99) as f64 / 1e3,
        h.max() as f64 / 1e3
    )
}

pub async fn failover(args: FailoverArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.url.len() >= 2,
        "at least two nodes: one killed, one left"
    );
    let run: u32 = rand::random();
    let key = Arc::new(public_key_json(false));
    let ids: Vec<String> = (0..args.conns).map(|i| format!("f{run}-{i}")).collect();
    let identities: Vec<Option<Arc<lattice_crypto::Identity>>> = (0..args.conns)
        .map(|_| {
            args.verified
                .then(|| Arc::new(lattice_crypto::Identity::generate(&mut rand::rngs::OsRng)))
        })
        .collect();
    let survivors: Vec<String> = args.url[1..].to_vec();

    // connect everyone, each held by a task that reports the end of its socket
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let mut set = JoinSet::new();
    for (i, id) in ids.iter().enumerate() {
        let permit = Arc::clone(&gate).acquire_owned().await?;
        let url = args.url[i % args.url.len()].clone();
        let (id, identity, key) = (id.clone(), identities[i].clone(), Arc::clone(&key));
        set.spawn(async move {
            let ws = join(&url, &id, identity.as_deref(), &key).await;
            drop(permit);
            (i, ws)
        });
    }
    let mut conns: Vec<Option<Ws>> = (0..args.conns).map(|_| None).collect();
    while let Some(joined) = set.join_next().await {
        let (i, ws) = joined?;
        conns[i] = Some(ws.with_context(|| format!("first registration of {i}"))?);
    }
    println!(
        "failover: {} connections registered over {} nodes in {:.1} s",
        args.conns,
        args.url.len(),
        started.elapsed().as_secs_f64()
    );
    let (ended_tx, mut ended_rx) = mpsc::unbounded_channel::<usize>();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut held = JoinSet::new();
    for (i, ws) in conns.into_iter().enumerate() {
        let Some(mut ws) = ws else { continue };
        let (ended, mut stop) = (ended_tx.clone(), stop_rx.clone());
        held.spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.changed() => return,
                    m = ws.next() => if !matches!(m, Some(Ok(_))) { break },
                }
            }
            let _ = ended.send(i);
        });
    }
    drop(ended_tx);

    // the sender, on a surviving node: one message to each moved peer once it is back
    let sender_id = format!("f{run}-sender");
    let sender = connect_and_register(&survivors[0], &sender_id, &key).await?;
    let (mut sink, mut answers) = sender.split();
    let (send_tx, mut send_rx) = mpsc::unbounded_channel::<String>();
    let prefix = envelope_prefix(256)?;
    let errors = Arc::new(AtomicU64::new(0));
    {
        let errors = Arc::clone(&errors);
        let mut stop = stop_rx.clone();
        held.spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.changed() => return,
                    m = answers.next() => match m {
                        Some(Ok(Message::Text(t))) if t.contains(r#""type":"error""#) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(Ok(_)) => {}
                        _ => return,
                    },
                }
            }
        });
    }
    held.spawn(async move {
        let mut seq = 0u64;
        while let Some(to) = send_rx.recv().await {
            seq += 1;
            let frame = format!(
                r#"{{"type":"message","payload":{{"targetId":"{to}","messageId":"failover-{seq}","message":{prefix},"t":{seq}}}}}}}"#
            );
            if sink.send(Message::Text(frame.into())).await.is_err() {
                return;
            }
        }
    });

    tokio::time::sleep(Duration::from_secs(args.settle)).await;
    let expected = (0..args.conns).filter(|i| i % args.url.len() == 0).count();
    let status = std::process::Command::new("kill")
        .args(["-9", &args.pid.to_string()])
        .status()
        .context("kill")?;
    let killed = Instant::now();
    if !status.success() {
        bail!("kill -9 {} failed", args.pid);
    }

    // every dropped connection moves: register again on a survivor, then receive one message;
    // each move reports once (its times, or why it failed), then holds its socket to the end
    let retries = Arc::new(AtomicU64::new(0));
    let (report_tx, mut report_rx) =
        mpsc::unbounded_channel::<Result<(Duration, Duration), String>>();
    let mut moves = JoinSet::new();
    let mut last_end = Duration::ZERO;
    let mut ended = 0;
    let mut unexpected = 0;
    while ended < expected {
        let Ok(Some(i)) = tokio::time::timeout(MOVE_DEADLINE, ended_rx.recv()).await else {
            bail!("only {ended} of {expected} connections of the killed node ended");
        };
        if i % args.url.len() != 0 {
            unexpected += 1;
            continue;
        }
        ended += 1;
        last_end = killed.elapsed();
        let url = survivors[ended % survivors.len()].clone();
        let (id, identity, key) = (ids[i].clone(), identities[i].clone(), Arc::clone(&key));
        let (gate, retries, send_tx) = (Arc::clone(&gate), Arc::clone(&retries), send_tx.clone());
        let (report, mut stop) = (report_tx.clone(), stop_rx.clone());
        moves.spawn(async move {
            let moved = async {
                let permit = gate.acquire_owned().await?;
                let mut ws = loop {
                    match join(&url, &id, identity.as_deref(), &key).await {
                        Ok(ws) => break ws,
                        Err(e) if killed.elapsed() > MOVE_DEADLINE => {
                            return Err(e.context(format!("{id} never registered again")))
                        }
                        Err(_) => {
                            retries.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(RETRY_PAUSE).await;
                        }
                    }
                };
                drop(permit);
                let registered = killed.elapsed();
                send_tx
                    .send(id.clone())
                    .map_err(|_| anyhow::anyhow!("the sender stopped"))?;
                let got = tokio::time::timeout(MOVE_DEADLINE, async {
                    while let Some(Ok(m)) = ws.next().await {
                        if let Message::Text(t) = m {
                            if t.contains(r#""type":"message""#) {
                                return true;
                            }
                        }
                    }
                    false
                })
                .await;
                if got != Ok(true) {
                    bail!("{id} registered again but received nothing");
                }
                anyhow::Ok((ws, registered, killed.elapsed()))
            }
            .await;
            match moved {
                Ok((ws, registered, receiving)) => {
                    let _ = report.send(Ok((registered, receiving)));
                    let _ = stop.changed().await;
                    drop(ws);
                }
                Err(e) => {
                    let _ = report.send(Err(e.to_string()));
                }
            }
        });
    }
    drop(report_tx);
    let mut registered_h = Histogram::<u64>::new_with_bounds(1, 3_600_000, 3)?;
    let mut receiving_h = Histogram::<u64>::new_with_bounds(1, 3_600_000, 3)?;
    let (mut all_registered, mut all_receiving) = (Duration::ZERO, Duration::ZERO);
    let (mut moved, mut failed) = (0, Vec::new());
    while moved + failed.len() < ended {
        match tokio::time::timeout(MOVE_DEADLINE, report_rx.recv()).await {
            Ok(Some(Ok((reg, rec)))) => {
                moved += 1;
                all_registered = all_registered.max(reg);
                all_receiving = all_receiving.max(rec);
                registered_h.record((reg.as_millis() as u64).max(1))?;
                receiving_h.record((rec.as_millis() as u64).max(1))?;
            }
            Ok(Some(Err(e))) => failed.push(e),
            Ok(None) | Err(_) => break,
        }
    }
    let _ = stop_tx.send(true);
    while moves.join_next().await.is_some() {}
    println!(
        "FAILOVER peers={} killed-node-peers={expected} moved={moved} verified={} sockets-ended-by={:.2} s all-registered-by={:.2} s all-receiving-by={:.2} s retries={} sender-errors={} unexpected-drops={unexpected} failed={}",
        args.conns,
        args.verified,
        last_end.as_secs_f64(),
        all_registered.as_secs_f64(),
        all_receiving.as_secs_f64(),
        retries.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
        failed.len()
    );
    println!("  registered again: {}", percentiles(&registered_h));
    println!("  receiving:        {}", percentiles(&receiving_h));
    if let Some(e) = failed.first() {
        bail!("{} moves failed, e.g. {e}", failed.len());
    }
    held.abort_all();
    Ok(())
}
