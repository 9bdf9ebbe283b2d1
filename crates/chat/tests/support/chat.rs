//! The chat binary on pipes, and waiting for a `lattice-peer` event: shared by the chat tests.
#![allow(dead_code)]

use std::process::Stdio;
use std::time::Duration;

use lattice_peer::{EventStream, PeerEvent};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, ChildStdin};
use tokio::sync::mpsc;

/// Bound on waiting for one line or one event.
pub const WAIT: Duration = Duration::from_secs(20);

pub struct Chat {
    _child: Child,
    stdin: ChildStdin,
    out: mpsc::UnboundedReceiver<String>,
    pub seen: Vec<String>,
}

impl Chat {
    /// Starts `bob` (identity in `dir`) and waits for the prompt.
    pub async fn start(url: &str, dir: &std::path::Path) -> Self {
        Self::start_with(url, dir, &[]).await
    }

    /// [`Chat::start`] with extra flags.
    pub async fn start_with(url: &str, dir: &std::path::Path, flags: &[&str]) -> Self {
        let mut chat = Self::spawn(url, dir, "bob", flags);
        chat.until("type /help for commands").await;
        chat
    }

    /// Starts the chat as `id` (identity file `<id>.identity` in `dir`) with extra `flags`,
    /// without waiting for anything: a scripted server has to answer the registration first.
    pub fn spawn(url: &str, dir: &std::path::Path, id: &str, flags: &[&str]) -> Self {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_lattice-chat"))
            .args(["--server", url, "--id", id, "--identity-file"])
            .arg(dir.join(format!("{id}.identity")))
            .args(flags)
            .env_remove("RUST_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, out) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            _child: child,
            stdin,
            out,
            seen: Vec::new(),
        }
    }

    pub async fn type_line(&mut self, line: &str) {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        self.stdin.flush().await.unwrap();
    }

    /// Reads output until a line containing `needle`; returns it.
    pub async fn until(&mut self, needle: &str) -> String {
        loop {
            let line = tokio::time::timeout(WAIT, self.out.recv())
                .await
                .unwrap_or_else(|_| panic!("no line with {needle:?}; saw {:#?}", self.seen))
                .unwrap_or_else(|| panic!("output ended before {needle:?}; saw {:#?}", self.seen));
            self.seen.push(line.clone());
            if line.contains(needle) {
                return line;
            }
        }
    }

    /// Kills the process (SIGKILL): nothing is flushed or closed.
    pub async fn kill9(mut self) {
        self._child.start_kill().unwrap();
        let _ = tokio::time::timeout(WAIT, self._child.wait()).await;
    }

    /// Types `/quit` and waits for the process to exit; returns its status and everything it
    /// printed.
    pub async fn quit_with_output(mut self) -> (std::process::ExitStatus, Vec<String>) {
        self.type_line("/quit").await;
        let status = tokio::time::timeout(WAIT, self._child.wait())
            .await
            .expect("lattice-chat did not exit")
            .unwrap();
        while let Some(line) = self.out.recv().await {
            self.seen.push(line);
        }
        (status, self.seen)
    }

    pub async fn quit(mut self) {
        self.type_line("/quit").await;
        let _ = tokio::time::timeout(WAIT, self._child.wait()).await;
    }
}

pub async fn next_event<T>(
    events: &mut EventStream,
    mut pick: impl FnMut(PeerEvent) -> Option<T>,
) -> T {
    tokio::time::timeout(WAIT, async {
        loop {
            let e = events.next().await.expect("event stream ended");
            if let PeerEvent::Error(e) = &e {
                panic!("unexpected error {e:?}");
            }
            if let Some(t) = pick(e) {
                return t;
            }
        }
    })
    .await
    .expect("no such event in time")
}
