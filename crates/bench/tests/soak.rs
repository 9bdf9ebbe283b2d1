//! The short soak: `lattice-loadgen soak` against a real `lattice-server` process with churn,
//! drops, stalls and two `kill -9`s with restarts, bounded to well under a minute. It must
//! account for every message and lose none that was acknowledged.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

#[path = "../../server/tests/support/server_process.rs"]
#[allow(dead_code)] // shared by several crates' tests; this one needs only the binary
mod server_process;

use server_process::server_bin;

#[test]
fn a_short_soak_with_kills_loses_no_acknowledged_message() {
    let out = Command::new(env!("CARGO_BIN_EXE_lattice-loadgen"))
        .args(["soak", "--duration", "20", "--kill-every", "8"])
        .args(["--recipients", "8", "--senders", "4", "--rate", "200"])
        .args([
            "--churn-every-ms",
            "1500",
            "--stall-every",
            "6",
            "--stall-secs",
            "8",
        ])
        .args(["--drain", "30"])
        .arg("--server-bin")
        .arg(server_bin())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("SOAK "))
        .unwrap_or_else(|| panic!("no report; stderr:\n{stderr}"));
    eprintln!("{line}");
    let r: serde_json::Value = serde_json::from_str(line).unwrap();
    assert!(out.status.success(), "the soak failed: {line}\n{stderr}");
    assert_eq!(r["lost"], 0, "acknowledged then lost");
    assert_eq!(r["misrouted"], 0);
    assert!(
        r["acked"].as_u64().unwrap() > 0,
        "messages were acknowledged"
    );
    assert!(
        r["kills"].as_u64().unwrap() >= 2,
        "the server was killed and restarted"
    );
    let n = |k: &str| r[k].as_u64().unwrap();
    assert_eq!(
        n("sent"),
        n("acked") + n("refused") + n("never_answered"),
        "every message sent is accounted for"
    );
}
