//! The desktop app end to end, in its real webview (WebKitGTK), through WebDriver, split by
//! area: `chat` (the scenario described next), `content` (replies, edits, deletes, reactions,
//! read receipts and typing, both ways), `history` (a conversation of ten thousand messages),
//! `keys` (a changed identity key), `hostile_input` (network text stays text; pins survive a
//! restart), `search` (search, drafts, shortcuts, links, accessibility checked with axe-core) and
//! `tray`, `files` (paste and drop a picture and a file, previews, the viewer, Save, a 50 MB
//! transfer's progress bar, a restart mid-transfer), `backup` (back up, restore on a fresh profile, export a conversation), `two_apps`
//! (alice's and bob's apps side by side, through two tauri-drivers: read receipts and typing,
//! and the read-receipts setting stopping both directions), `groups` (a group made in the app
//! with two headless MLS peers: three ways, rename, a removal that locks the member out), `devices`
//! (linking a new device from Settings: code, fingerprint, approve, list, remove), `new_device`
//! (a second app linking itself to the first: its code, its messages "from laptop", its removed
//! screen); the helpers they share are in `support`.
//!
//! Scenario: a server (port 0, admin API on) and a headless peer *bob*; the app starts as
//! *alice* on an empty data directory and goes through first run; the peer list shows bob;
//! alice sends, bob receives the decrypted text; bob replies and alice's conversation shows it;
//! the server asks alice a three-round question through the admin API and every round appears in
//! the dialog and every answer reaches the server; the app restarts and the history is there.
//! A screenshot of each step goes to `$E2E_SCREENSHOT_DIR` (default `target/e2e-screenshots`).
//!
//! Needs Xvfb, tauri-driver, WebKitWebDriver and the app binary, so it is `#[ignore]`d in plain
//! `cargo test`; `scripts/e2e-desktop.sh` sets all of that up and runs it with `--ignored`.
//! Every wait is bounded; no timing is asserted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod backup;
mod chat;
mod content;
mod devices;
mod files;
mod groups;
mod history;
mod hostile_input;
mod keys;
mod new_device;
mod search;
mod support;
mod tray;
mod two_apps;
