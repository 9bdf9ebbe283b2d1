//! The delivery contract under crashes and stalls, against real `lattice-server` processes on a
//! real data dir: every message whose sender heard `message_ack` arrives after `kill -9` and a
//! restart, including those to a recipient frozen with SIGSTOP, one offline with mail and one
//! that read but did not acknowledge; and a frozen recipient is noticed, its messages kept.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/server_process.rs"]
mod server_process;
mod support;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt as _, StreamExt as _};
use lattice_crypto::Identity;
use serde_json::{json, Value};
use server_process::{log_tail, ServerProcess};
use support::*;
use tokio_tungstenite::tungstenite::Message;

/// Environment variables that turn this test binary into the frozen recipient's process.
const CHILD_URL: &str = "LATTICE_CRASH_CHILD_URL";
const CHILD_ID: &str = "LATTICE_CRASH_CHILD_ID";
const CHILD_IDENTITY: &str = "LATTICE_CRASH_CHILD_IDENTITY";

/// Envelope padding in the crash test: a few hundred messages are over a megabyte in flight.
const PAD: usize = 4000;
/// Envelope padding in the stall test: 600 of these (~10 MB) are more than loopback socket
/// buffers take (a few MB), so the server's writes to the frozen peer block.
const STALL_PAD: usize = 16_000;

/// The frozen recipient: this test binary run again as a plain verified client that reads its
/// messages (never acking) until it is stopped.
struct RecipientProcess(Child);

impl RecipientProcess {
    fn start(url: &str, id: &str, identity: &Identity) -> RecipientProcess {
        Self::start_in(None, url, id, identity)
    }

    /// Started in network namespace `netns` when given.
    fn start_in(netns: Option<&str>, url: &str, id: &str, identity: &Identity) -> RecipientProcess {
        let mut child = in_netns(netns, &std::env::current_exe().unwrap())
            .args(["--exact", "recipient_child_process", "--nocapture"])
            .env(CHILD_URL, url)
            .env(CHILD_ID, id)
            .env(CHILD_IDENTITY, B64.encode(identity.to_bytes().as_slice()))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let ready = lines
            .by_ref()
            .take(100)
            .any(|l| l.map(|l| l.contains("CHILD-REGISTERED")).unwrap_or(false));
        assert!(ready, "the recipient process registered");
        RecipientProcess(child)
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.0.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    }
}

impl Drop for RecipientProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `program`, run inside network namespace `netns` (`ip netns exec`) when given.
fn in_netns(netns: Option<&str>, program: &Path) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// Not a test on its own: the body of [`RecipientProcess`] (does nothing without its variables).
#[tokio::test]
async fn recipient_child_process() {
    let (Ok(url), Ok(id), Ok(key)) = (
        std::env::var(CHILD_URL),
        std::env::var(CHILD_ID),
        std::env::var(CHILD_IDENTITY),
    ) else {
        return;
    };
    let identity = Identity::from_bytes(&B64.decode(key).unwrap()).unwrap();
    let mut c = register_verified(&url, &id, &identity).await;
    println!("CHILD-REGISTERED");
    // read (and drop) everything, ack nothing, until frozen or killed; bounded by the parent
    for _ in 0..1_000_000 {
        if c.ws.next().await.is_none() {
            break;
        }
    }
}

fn padded(tag: &str, pad: usize) -> Value {
    envelope(&format!("{tag}-{}", "x".repeat(pad)))
}

/// Message ids acknowledged to a sender, by recipient.
type Acked = Arc<Mutex<HashMap<String, HashSet<String>>>>;

/// Reads frames until the connection ends, recording every `message_ack`.
fn record_acks<S>(mut rx: S, acked: Acked) -> tokio::task::JoinHandle<()>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
        + Unpin
        + Send
        + 'static,
{
    tokio::spawn(async move {
        while let Some(Ok(Message::Text(t))) = rx.next().await {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["type"] == "message_ack" {
                let p = &v["payload"];
                acked
                    .lock()
                    .unwrap()
                    .entry(p["targetId"].as_str().unwrap().to_owned())
                    .or_default()
                    .insert(p["messageId"].as_str().unwrap().to_owned());
            }
        }
    })
}

fn acked_count(acked: &Acked) -> usize {
    acked.lock().unwrap().values().map(HashSet::len).sum()
}

/// Reconnects `id` and reads until every id in `expected` arrived (acking each), or until the
/// server has nothing more for a while; returns (distinct ids received, wire duplicates).
async fn receive_all(
    url: &str,
    id: &str,
    identity: &Identity,
    expected: &HashSet<String>,
) -> (HashSet<String>, usize) {
    let mut c = reconnect_verified(url, id, identity).await;
    let mut seen = HashSet::new();
    let mut dups = 0;
    while !expected.is_subset(&seen) {
        let Ok(Some(Ok(msg))) = tokio::time::timeout(WAIT, c.ws.next()).await else {
            break;
        };
        let Message::Text(t) = msg else { continue };
        let v: Value = serde_json::from_str(&t).unwrap();
        if v["type"] != "message" {
            continue;
        }
        let p = &v["payload"];
        let mid = p["messageId"].as_str().unwrap().to_owned();
        c.send(json!({"type":"ack","payload":{"messageId":mid,"fromId":p["fromId"]}}))
            .await;
        if !seen.insert(mid) {
            dups += 1;
        }
    }
    (seen, dups)
}

/// What [`stalled_delivery`] saw.
struct StallOutcome {
    acked: HashSet<String>,
    seen: HashSet<String>,
    statuses: HashMap<String, usize>,
    noticed: bool,
}

/// Sends `n` messages to `target`, whose connection has stalled, and collects every answer (no
/// refusal is allowed); waits (bounded) for the server to close the stalled connection; then
/// reconnects as `target` and receives what was acknowledged.
async fn stalled_delivery(
    url: &str,
    target: &str,
    identity: &Identity,
    n: usize,
    pad: usize,
) -> StallOutcome {
    let (mut alice, _) = register_unverified(url, "alice").await;
    alice
        .request(json!({"type":"discover","payload":{}}), "discover")
        .await;
    let mut acked = HashSet::new();
    let mut statuses: HashMap<String, usize> = HashMap::new();
    for i in 0..n {
        alice.send(json!({"type":"message","payload":{"targetId":target,"message":padded("s", pad),"messageId":format!("s-{i}")}})).await;
    }
    let mut disconnected = false;
    while acked.len() < n {
        let v = alice.recv().await;
        match v["type"].as_str() {
            Some("message_ack") => {
                let p = &v["payload"];
                acked.insert(p["messageId"].as_str().unwrap().to_owned());
                *statuses
                    .entry(p["status"].as_str().unwrap().to_owned())
                    .or_default() += 1;
            }
            Some("peer_disconnected") if v["payload"]["peerId"] == target => {
                disconnected = true;
            }
            Some("error") => panic!("no message may be refused here: {v}"),
            _ => {}
        }
    }
    // the server notices the stalled peer (write timeout, or no pong within the idle timeout);
    // a generous bound, not a timing assertion
    let mut keepalive = tokio::time::interval(Duration::from_millis(500));
    let noticed = tokio::time::timeout(Duration::from_secs(90), async {
        while !disconnected {
            // alice stays alive under the short idle timeout by sending something
            let next = tokio::select! {
                _ = keepalive.tick() => {
                    alice.send(json!({"type":"discover","payload":{}})).await;
                    continue;
                }
                next = alice.ws.next() => next,
            };
            let t = match next {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(_)) => continue,
                other => {
                    eprintln!("alice's connection ended: {other:?}");
                    break;
                }
            };
            let v: Value = serde_json::from_str(&t).unwrap();
            disconnected = v["type"] == "peer_disconnected" && v["payload"]["peerId"] == target;
        }
        disconnected
    })
    .await
    .unwrap_or(false);
    let seen = if noticed {
        receive_all(url, target, identity, &acked).await.0
    } else {
        HashSet::new()
    };
    StallOutcome {
        acked,
        seen,
        statuses,
        noticed,
    }
}

#[tokio::test]
async fn kill_9_loses_no_acknowledged_message() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let server = ServerProcess::start(&dir, &[]).await;
    let url = server.url.clone();
    let ids: HashMap<&str, Identity> = ["frozen", "offline", "reader"]
        .into_iter()
        .map(|n| (n, new_identity()))
        .collect();
    // offline: registered once (binding), then gone; frozen: a process stopped with SIGSTOP;
    // reader: online, reads everything, acks nothing (its messages are in flight at the kill)
    drop(register_verified(&url, "offline", &ids["offline"]).await);
    let frozen = RecipientProcess::start(&url, "frozen", &ids["frozen"]);
    frozen.signal("-STOP");
    let reader = register_verified(&url, "reader", &ids["reader"]).await;
    let reader_task = tokio::spawn(async move {
        let (_, mut rx) = reader.ws.split();
        while let Some(Ok(_)) = rx.next().await {}
    });

    let (alice, _) = register_unverified(&url, "alice").await;
    let (mut tx, rx) = alice.ws.split();
    let acked: Acked = Arc::default();
    let acks = record_acks(rx, Arc::clone(&acked));
    let per_recipient = 300;
    let targets = ["frozen", "offline", "reader"];
    let total = per_recipient * targets.len();
    let mut sent = 0;
    'send: for i in 0..per_recipient {
        for t in targets {
            let frame = json!({"type":"message","payload":{"targetId":t,"message":padded(t, PAD),"messageId":format!("{t}-{i}")}});
            if tx
                .send(Message::Text(frame.to_string().into()))
                .await
                .is_err()
            {
                break 'send;
            }
            sent += 1;
        }
        // kill -9 in the middle of the stream: messages acknowledged, in flight and unsent
        if acked_count(&acked) >= total / 2 {
            break;
        }
        if i % 20 == 19 {
            tokio::task::yield_now().await;
        }
    }
    // wait (bounded) until at least half were acknowledged, then kill at once
    for _ in 0..400 {
        if acked_count(&acked) >= total / 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    server.kill9();
    let _ = acks.await;
    let _ = reader_task.await;
    drop(frozen); // SIGKILL of the stopped recipient process
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    let n_acked: usize = acked.values().map(HashSet::len).sum();
    assert!(
        n_acked > 0,
        "some messages were acknowledged before the kill"
    );
    eprintln!("sent {sent}, acknowledged {n_acked} before kill -9");

    let server = ServerProcess::start(&dir, &[]).await;
    let mut lost = Vec::new();
    for t in targets {
        let expected = acked.get(t).cloned().unwrap_or_default();
        let (seen, dups) = receive_all(&server.url, t, &ids[t], &expected).await;
        eprintln!(
            "{t}: {} acknowledged, {} received, {dups} wire duplicates",
            expected.len(),
            seen.len()
        );
        lost.extend(expected.difference(&seen).cloned());
    }
    assert!(
        lost.is_empty(),
        "acknowledged but never delivered: {lost:?}"
    );
}

#[tokio::test]
async fn a_frozen_recipient_is_noticed_and_its_messages_are_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    // a short heartbeat so the test does not wait a minute: the default bounds are documented
    let server = ServerProcess::start(
        &dir,
        &[
            "--ping-interval",
            "1",
            "--idle-timeout",
            "3",
            "--mailbox-bytes",
            "67108864",
        ],
    )
    .await;
    let url = server.url.clone();
    let bob_id = new_identity();
    let bob = RecipientProcess::start(&url, "bob", &bob_id);
    bob.signal("-STOP");
    let out = stalled_delivery(&url, "bob", &bob_id, 600, STALL_PAD).await;
    eprintln!("statuses while bob was frozen: {:?}", out.statuses);
    assert!(
        out.noticed,
        "the server closed the frozen connection; server log:\n{}",
        log_tail(&dir)
    );
    let missing: Vec<_> = out.acked.difference(&out.seen).collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not delivered: {missing:?}"
    );
    drop(bob);
    drop(server);
}

/// Two network namespaces joined by a veth pair, deleted (with everything in them) on drop. The
/// addresses exist only inside the namespaces.
struct Netns {
    server: String,
    client: String,
}

/// The server's address on the veth pair, and the client's.
const NETNS_SERVER_ADDR: &str = "10.216.0.1";
const NETNS_CLIENT_ADDR: &str = "10.216.0.2";
/// The veth ends (names are per namespace).
const VETH_SERVER: &str = "vs";
const VETH_CLIENT: &str = "vc";

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Netns {
    /// None (with the reason) when namespaces cannot be made here (no iproute2, not root).
    fn create() -> Result<Netns, String> {
        let tag = format!("{:08x}", rand::random::<u32>());
        let ns = Netns {
            server: format!("lt16s-{tag}"),
            client: format!("lt16c-{tag}"),
        };
        ip(&["netns", "add", &ns.server])?;
        ip(&["netns", "add", &ns.client])?;
        ip(&[
            "link",
            "add",
            VETH_SERVER,
            "netns",
            &ns.server,
            "type",
            "veth",
            "peer",
            "name",
            VETH_CLIENT,
            "netns",
            &ns.client,
        ])?;
        for (n, dev, addr) in [
            (&ns.server, VETH_SERVER, NETNS_SERVER_ADDR),
            (&ns.client, VETH_CLIENT, NETNS_CLIENT_ADDR),
        ] {
            ip(&["-n", n, "addr", "add", &format!("{addr}/30"), "dev", dev])?;
            ip(&["-n", n, "link", "set", dev, "up"])?;
            ip(&["-n", n, "link", "set", "lo", "up"])?;
        }
        Ok(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.server]);
        let _ = ip(&["netns", "del", &self.client]);
    }
}

/// Environment of [`netns_driver_child_process`].
const DRIVER_URL: &str = "LATTICE_NETNS_DRIVER_URL";
const DRIVER_IDENTITY: &str = "LATTICE_NETNS_DRIVER_IDENTITY";

/// Not a test on its own: run inside the server's namespace by
/// `a_recipient_whose_network_goes_silent_is_noticed_and_keeps_its_messages`.
#[tokio::test]
async fn netns_driver_child_process() {
    let (Ok(url), Ok(key)) = (std::env::var(DRIVER_URL), std::env::var(DRIVER_IDENTITY)) else {
        return;
    };
    let identity = Identity::from_bytes(&B64.decode(key).unwrap()).unwrap();
    let out = stalled_delivery(&url, "bob", &identity, 200, PAD).await;
    assert!(out.noticed, "the server closed the silent connection");
    let missing: Vec<_> = out.acked.difference(&out.seen).collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not delivered: {missing:?}"
    );
    println!(
        "DRIVER-OK acked={} received={} statuses={:?}",
        out.acked.len(),
        out.seen.len(),
        out.statuses
    );
}

#[tokio::test]
async fn a_recipient_whose_network_goes_silent_is_noticed_and_keeps_its_messages() {
    let ns = match Netns::create() {
        Ok(ns) => ns,
        Err(why) => {
            eprintln!("skipped: cannot create network namespaces here ({why})");
            return;
        }
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let log = std::fs::File::create(dir.with_extension("log")).unwrap();
    // a fresh namespace: any port is free
    let port = "3016";
    let mut server = in_netns(
        Some(&ns.server),
        Path::new(env!("CARGO_BIN_EXE_lattice-server")),
    )
    .args(["--bind", "0.0.0.0", "--port", port, "--rate-limit", "0"])
    .arg("--data-dir")
    .arg(&dir)
    .args(["--ping-interval", "1", "--idle-timeout", "3"])
    .env("LATTICE_LOG", "info")
    .stdout(Stdio::null())
    .stderr(log)
    .spawn()
    .unwrap();
    let mut listening = false;
    for _ in 0..200 {
        if log_tail(&dir).contains("lattice-server listening") {
            listening = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if !listening {
        let _ = server.kill();
        let _ = server.wait();
        panic!("the server did not start:\n{}", log_tail(&dir));
    }
    let bob_id = new_identity();
    let bob = RecipientProcess::start_in(
        Some(&ns.client),
        &format!("ws://{NETNS_SERVER_ADDR}:{port}"),
        "bob",
        &bob_id,
    );
    // the network goes silent: no FIN, no RST, nothing
    ip(&["-n", &ns.client, "link", "set", VETH_CLIENT, "down"]).unwrap();
    let driver = in_netns(Some(&ns.server), &std::env::current_exe().unwrap())
        .args(["--exact", "netns_driver_child_process", "--nocapture"])
        .env(DRIVER_URL, format!("ws://127.0.0.1:{port}"))
        .env(DRIVER_IDENTITY, B64.encode(bob_id.to_bytes().as_slice()))
        .output()
        .unwrap();
    drop(bob);
    let _ = server.kill();
    let _ = server.wait();
    let stdout = String::from_utf8_lossy(&driver.stdout);
    let report = stdout.lines().find(|l| l.starts_with("DRIVER-OK"));
    assert!(
        driver.status.success() && report.is_some(),
        "driver failed:\n{stdout}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&driver.stderr),
        log_tail(&dir)
    );
    eprintln!("{}", report.unwrap_or_default());
}
