//! Interop with an original-style client: `tests/node/peer-interop.mjs` (the original envelope on
//! `@noble/post-quantum@0.4.1`) sends an `ml-kem-aes` message through a real server to a Rust peer
//! running the echo bot, and opens the Rust peer's `ml-kem-aes` reply; once through one server,
//! once through two `lattice-server` nodes on Redis (`--redis`), the client on one and the Rust
//! peer on the other.
#![allow(clippy::unwrap_used, clippy::expect_used)]

// Shared with the server's Redis tests (it allows its own dead code); this one only starts it.
#[path = "../../server/tests/support/redis_process.rs"]
mod redis_process;
#[path = "../../server/tests/support/server_process.rs"]
#[allow(dead_code)] // shared by several crates' tests; each uses a part
mod server_process;
mod support;

#[allow(dead_code)]
#[path = "../examples/echo_bot.rs"]
mod echo_bot;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use lattice_peer::PeerEvent;
use support::server::spawn_server;
use support::*;

fn node_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/node")
}

/// Fails (never skips) when node or the npm packages are missing.
fn require_node() {
    let dir = node_dir();
    let node = std::process::Command::new("node").arg("--version").output();
    assert!(
        node.is_ok_and(|o| o.status.success()),
        "node is not installed; install Node.js >= 18, then run `npm ci --prefix tests/node`"
    );
    assert!(
        dir.join("node_modules/@noble/post-quantum").is_dir()
            && dir.join("node_modules/ws").is_dir(),
        "tests/node/node_modules is missing; run `npm ci --prefix tests/node`"
    );
}

/// Runs the original-style client against `url`: it messages `rusty` and prints the reply.
async fn js_client(url: &str) -> String {
    let child = tokio::process::Command::new("node")
        .arg(node_dir().join("peer-interop.mjs"))
        .arg(url)
        .arg("rusty")
        .arg("js-client")
        .arg("hello from node")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("the node client did not finish")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "node failed: {stderr}\n{stdout}");
    stdout.trim_end().to_owned()
}

#[tokio::test]
async fn an_original_client_and_a_rust_peer_exchange_ml_kem_aes_messages() {
    require_node();
    let server = spawn_server().await;
    let bot = peer(&server.url(), "rusty");
    bot.connect().await.unwrap();
    let mut events = bot.events();
    let bot_task = tokio::spawn(echo_bot::run(bot.clone()));

    assert_eq!(js_client(&server.url()).await, "> hello from node");

    // The Rust side saw it as an unverified ml-kem-aes message.
    let m = wait_for(&mut events, |e| match e {
        PeerEvent::Message(m) => Some(m),
        _ => None,
    })
    .await;
    assert_eq!(
        (m.from.as_str(), m.text.as_str()),
        ("js-client", "hello from node")
    );
    assert!(!m.verified);
    assert_eq!(m.algorithm, lattice_peer::Algorithm::MlKemAes);
    bot.disconnect().await;
    bot_task.abort();
}

#[tokio::test]
async fn the_original_client_works_through_any_node_of_several() {
    require_node();
    let redis = redis_process::RedisProcess::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = Vec::new();
    for name in ["a", "b"] {
        let data = dir.path().join(name);
        std::fs::create_dir_all(&data).unwrap();
        nodes.push(server_process::ServerProcess::start(&data, &["--redis", &redis.url()]).await);
    }
    // the Rust peer on node b, the original client on node a
    let bot = peer(&nodes[1].url, "rusty");
    bot.connect().await.unwrap();
    let mut events = bot.events();
    let bot_task = tokio::spawn(echo_bot::run(bot.clone()));
    assert_eq!(js_client(&nodes[0].url).await, "> hello from node");
    let m = wait_for(&mut events, |e| match e {
        PeerEvent::Message(m) => Some(m),
        _ => None,
    })
    .await;
    assert_eq!(
        (m.from.as_str(), m.text.as_str()),
        ("js-client", "hello from node")
    );
    bot.disconnect().await;
    bot_task.abort();
}
