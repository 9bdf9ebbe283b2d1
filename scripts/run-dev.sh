#!/usr/bin/env bash
# `make run`: the messenger on its embedded defaults. Opens the Lattice desktop app, which hosts
# lattice-server in-process on port 3005 (first run: pick "Host a server on this computer"), and
# starts the echo bot (`echo`) next to it, so a newcomer has someone to talk to within a minute.
# On a fresh Debian/Ubuntu machine it first installs the system packages the app links against.
# Close the window (or Ctrl-C) to stop everything.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! pkg-config --exists webkit2gtk-4.1 2>/dev/null; then
  bash scripts/install-desktop-deps.sh
fi

cargo build -p lattice-desktop -p lattice-peer --example echo_bot
BIN=${CARGO_TARGET_DIR:-target}/debug
PORT=${LATTICE_PORT:-3005}

"$BIN/lattice-desktop" "$@" &
app=$!
# The app starts its server after first run; the bot retries until it is there.
(
  until "$BIN/examples/echo_bot" --server "ws://127.0.0.1:$PORT" --id echo; do
    kill -0 "$app" 2>/dev/null || exit 0
    sleep 2
  done
) &
bot=$!
cleanup() {
  kill "$bot" 2>/dev/null || true
  pkill -TERM -P "$bot" 2>/dev/null || true
  kill "$app" 2>/dev/null || true
}
trap cleanup EXIT INT TERM
wait "$app" || true
