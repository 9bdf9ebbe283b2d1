#!/usr/bin/env bash
# Smoke test of `make run` as a newcomer meets it: a fresh clone of this repository, an empty
# home directory, a target directory that holds no binary of ours, a private X display (Xvfb) and
# session bus. It runs the clone's `scripts/run-dev.sh` (what `make run` runs) and checks that
#   1. the app's window opens (so the script built the binary it starts),
#   2. first run works from the keyboard (a name, Enter for "Host a server on this computer",
#      Enter for "Start messaging"), after which the embedded server answers on its port,
#   3. the echo bot, started before the server was up, registers with it,
#   4. Ctrl-C stops the script, the app and the bot; and in a second run, the app ending (the
#      window closed) makes the script stop the bot too.
# A screenshot of the app after first run lands in target/e2e-screenshots/smoke-run.png.
#
# To keep it cheap the clone's target directory is seeded with the compiled dependencies of this
# checkout's (deps/build/.fingerprint only: never a binary of ours), so only our own crates
# compile; without a built checkout it compiles from scratch. Everything it creates is removed.
#
# Usage: scripts/smoke-run.sh   (run by `make test`; installs its system packages first)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PORT=3005            # the app's default hosting port: what a newcomer gets
WINDOW_WAIT=1800     # seconds for build + start on a cold machine (bounded; a failure ends sooner)
STEP_WAIT=60         # seconds for each later step

need=()
for tool in Xvfb xdotool dbus-daemon import git python3; do
  command -v "$tool" >/dev/null 2>&1 || need+=("$tool")
done
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    xvfb xauth xdotool dbus imagemagick git python3 >/dev/null
fi

say() { echo "smoke-run: $*"; }
fail() {
  echo "smoke-run: FAILED: $*" >&2
  # The run's log without backtrace frames.
  [ -f "${LOG:-}" ] && grep -v -E '^ +([0-9]+: |at )' "$LOG" | tail -40 | sed 's/^/  run-dev| /' >&2
  exit 1
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
if port_open "$PORT"; then
  fail "port $PORT is in use (is \`make run\` open?); the smoke test needs it"
fi

WORK=$(mktemp -d)
CLONE="$WORK/lattice"
SHOTS="$ROOT/target/e2e-screenshots"
mkdir -p "$SHOTS"
XVFB_PID=""; BUS_PID=""; RUN_PID=""
cleanup() {
  set +e
  if [ -n "$RUN_PID" ]; then kill -TERM -- "-$RUN_PID" 2>/dev/null; fi
  pkill -TERM -f "$WORK/target/" 2>/dev/null
  sleep 0.5
  pkill -KILL -f "$WORK/target/" 2>/dev/null
  [ -n "$BUS_PID" ] && kill -TERM "$BUS_PID" 2>/dev/null
  [ -n "$XVFB_PID" ] && kill -TERM "$XVFB_PID" 2>/dev/null
  wait 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

say "cloning $ROOT (HEAD $(git rev-parse --short HEAD)) into $WORK"
git clone -q "$ROOT" "$CLONE"

# Cargo and rustup stay where they are; everything else starts empty.
export CARGO_HOME="${CARGO_HOME:-$HOME/.cargo}"
export RUSTUP_HOME="${RUSTUP_HOME:-$HOME/.rustup}"
export PATH="$CARGO_HOME/bin:$PATH"
SEED="${CARGO_TARGET_DIR:-$ROOT/target}/debug"
export CARGO_TARGET_DIR="$WORK/target"
mkdir -p "$CARGO_TARGET_DIR/debug"
if [ -d "$SEED/deps" ]; then
  say "seeding the clone's target with compiled dependencies from $SEED"
  cp -a "$SEED/deps" "$SEED/build" "$SEED/.fingerprint" "$CARGO_TARGET_DIR/debug/"
  # Our own binaries must come from the script's build, never from the seed.
  find "$CARGO_TARGET_DIR/debug/deps" -maxdepth 1 -type f \
    \( -name 'lattice_desktop-*' -o -name 'echo_bot-*' \) -perm -u+x -delete
fi
export HOME="$WORK/home"
mkdir -p "$HOME"
unset XDG_CONFIG_HOME XDG_DATA_HOME XDG_CACHE_HOME XDG_STATE_HOME XDG_RUNTIME_DIR LATTICE_DESKTOP_DATA_DIR
export RUST_BACKTRACE=1   # a bot that waits quietly must not print backtraces either
export NO_AT_BRIDGE=1

DISPLAY_FILE="$WORK/display"
Xvfb -displayfd 3 -screen 0 1280x800x24 -nolisten tcp 3>"$DISPLAY_FILE" >"$WORK/xvfb.log" 2>&1 &
XVFB_PID=$!
for _ in $(seq 1 100); do [ -s "$DISPLAY_FILE" ] && break; sleep 0.1; done
[ -s "$DISPLAY_FILE" ] || fail "Xvfb did not start"
export DISPLAY=":$(head -n1 "$DISPLAY_FILE")"

BUS_DIR="$WORK/bus"
mkdir -p "$BUS_DIR"
dbus-daemon --config-file="$ROOT/scripts/dbus-test-session.conf" --nofork \
  --address="unix:path=$BUS_DIR/bus" --print-address=3 3>"$BUS_DIR/address" \
  >"$WORK/dbus.log" 2>&1 &
BUS_PID=$!
for _ in $(seq 1 100); do [ -s "$BUS_DIR/address" ] && break; sleep 0.1; done
[ -s "$BUS_DIR/address" ] || fail "dbus-daemon did not start"
export DBUS_SESSION_BUS_ADDRESS=$(head -n1 "$BUS_DIR/address")

# Starts run-dev.sh in its own process group, as a terminal would, logging to $LOG. A background
# job of this (non-interactive) shell would start with SIGINT ignored, which no trap can undo, so
# the default disposition is restored first, as in a terminal's foreground job.
start_run() {
  LOG="$WORK/run-$1.log"
  python3 -c 'import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_DFL)
os.setsid()
os.execvp("bash", ["bash", sys.argv[1]])' "$CLONE/scripts/run-dev.sh" >"$LOG" 2>&1 &
  RUN_PID=$!
}
alive() { kill -0 "$RUN_PID" 2>/dev/null; }
# Waits up to $1 seconds for the command in $2... to succeed while run-dev.sh lives.
wait_until() {
  local limit=$1; shift
  local deadline=$((SECONDS + limit))
  until "$@"; do
    alive || fail "run-dev.sh exited while waiting for: $*"
    [ $SECONDS -lt $deadline ] || fail "timed out after ${limit}s waiting for: $*"
    sleep 1
  done
}
window() { xdotool search --onlyvisible --name '^Lattice$' 2>/dev/null | head -n1; }
has_window() { [ -n "$(window)" ]; }
http_get() {
  python3 -c 'import sys, urllib.request
print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' "http://127.0.0.1:$PORT$1" 2>/dev/null
}
server_up() { http_get /healthz >/dev/null; }
# The bot says it is ready, and the server counts two registered peers (the app and the bot).
bot_registered() {
  grep -q "echo bot ready" "$LOG" &&
    http_get /metrics | grep -Eq '^lattice_registered_peers [2-9]'
}
ours_running() { pgrep -f "$CARGO_TARGET_DIR/debug/" >/dev/null; }
# Waits for run-dev.sh and everything it started to be gone.
all_stopped() {
  local deadline=$((SECONDS + STEP_WAIT))
  while alive || ours_running; do
    [ $SECONDS -lt $deadline ] || { pgrep -af "$CARGO_TARGET_DIR/debug/" >&2; fail "$1: still running after ${STEP_WAIT}s"; }
    sleep 0.5
  done
}

say "run 1: run-dev.sh (builds, then opens the app)"
start_run 1
wait_until "$WINDOW_WAIT" has_window
say "run 1: the window is open"
# First run from the keyboard: the name field has the focus, "Host a server" is preselected.
# The page may still be loading when the window maps, so type again if nothing happened.
for attempt in 1 2 3 4; do
  sleep 3
  WIN=$(window)
  xdotool windowfocus --sync "$WIN" 2>/dev/null || xdotool windowfocus "$WIN" || true
  xdotool key ctrl+a
  xdotool type --delay 40 "newcomer"
  xdotool key Return
  for _ in $(seq 1 15); do server_up && break; alive || fail "run-dev.sh exited during first run"; sleep 1; done
  server_up && break
  say "run 1: no server yet after first-run attempt $attempt"
done
wait_until "$STEP_WAIT" server_up
say "run 1: the embedded server answers /healthz on port $PORT"
wait_until "$STEP_WAIT" bot_registered
say "run 1: the echo bot registered (the server counts two peers)"
sleep 1
xdotool key Return   # "Start messaging"
sleep 2
import -display "$DISPLAY" -window root "$SHOTS/smoke-run.png" || say "(no screenshot)"
if grep -q "stack backtrace" "$LOG"; then fail "a backtrace was printed while the bot waited"; fi
waits=$(grep -c "server not reachable yet" "$LOG" || true)
say "run 1: the bot logged $waits wait(s) before the server was up"

say "run 1: Ctrl-C"
kill -INT -- "-$RUN_PID"
all_stopped "after Ctrl-C"
RUN_PID=""
say "run 1: the script, the app and the bot stopped"

say "run 2: the app ends (as when its window is closed)"
start_run 2
wait_until "$STEP_WAIT" has_window
wait_until "$STEP_WAIT" bot_registered
APP_PID=$(pgrep -f "$CARGO_TARGET_DIR/debug/lattice-desktop" | head -n1)
[ -n "$APP_PID" ] || fail "no app process"
kill -TERM "$APP_PID"
all_stopped "after the app ended"
RUN_PID=""
say "run 2: the script and the bot stopped with the app"
say "passed (screenshot: $SHOTS/smoke-run.png)"
