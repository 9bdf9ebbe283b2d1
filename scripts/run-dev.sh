#!/usr/bin/env bash
# `make run`: the messenger on its embedded defaults. Opens the Lattice desktop app, which hosts
# lattice-server in-process on port 3005 (first run: pick "Host a server on this computer"), and
# starts the echo bot (`echo`) next to it, so a newcomer has someone to talk to within a minute.
# On a fresh Debian/Ubuntu machine it first installs the system packages the app links against.
#
# The bot waits for the server by itself (lattice-peer's retry_first_connect, one log line per
# attempt, at most 2 s apart) and joins as soon as the app's server is up. Closing the app (or
# Ctrl-C, or SIGTERM to this script) stops both.
#
# Env: LATTICE_PORT (default 3005): the port the bot dials, i.e. the app's hosting port.
#      Arguments are passed to the app (e.g. --data-dir DIR for a second profile).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! pkg-config --exists webkit2gtk-4.1 2>/dev/null; then
  bash scripts/install-desktop-deps.sh
fi

# Exactly the two targets started below, whatever was built before. (`--example` alone selects
# only examples: the app's binary needs its own `--bin`.)
cargo build -p lattice-desktop --bin lattice-desktop -p lattice-peer --example echo_bot
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps |
  sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
APP="$TARGET_DIR/debug/lattice-desktop"
BOT="$TARGET_DIR/debug/examples/echo_bot"
PORT=${LATTICE_PORT:-3005}

app=""
bot=""
cleanup() {
  trap - EXIT INT TERM
  for pid in $bot $app; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in $bot $app; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"$APP" "$@" &
app=$!
"$BOT" --server "ws://127.0.0.1:$PORT" --id echo --max-retry-delay 2 &
bot=$!
echo "run-dev: app pid $app, echo bot pid $bot (waiting for ws://127.0.0.1:$PORT)"

# Whichever ends first: the app (the window closed) ends the run; a bot that died is reported
# and the app keeps running.
while kill -0 "$app" 2>/dev/null; do
  if [ -n "$bot" ] && ! kill -0 "$bot" 2>/dev/null; then
    wait "$bot" 2>/dev/null && rc=0 || rc=$?
    echo "run-dev: the echo bot exited ($rc); the app keeps running" >&2
    bot=""
  fi
  wait -n "$app" ${bot:+"$bot"} 2>/dev/null || true
done
