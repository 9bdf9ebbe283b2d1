#!/usr/bin/env bash
# Measures the desktop app as a person starts it (numbers for reports; nothing is asserted):
#   - cold start: process start → the page's first call to the backend ("page bootstrapping",
#     logged by the app with its own clock), over RUNS starts;
#   - idle memory: RSS and PSS summed over the app and its WebKit processes (web, network),
#     IDLE_SECS after start, from /proc/PID/smaps_rollup.
# The profile is set up (a name, an identity, a server that is not there), so the main window is
# what opens, not first run.
#
# Usage: tests/desktop/measure.sh [path/to/lattice-desktop]   (default: target/release/lattice-desktop)
# Env:   RUNS (default 5), IDLE_SECS (default 10)
set -euo pipefail

cd "$(dirname "$0")/../.."
BIN=${1:-${CARGO_TARGET_DIR:-target}/release/lattice-desktop}
RUNS=${RUNS:-5}
IDLE_SECS=${IDLE_SECS:-10}
[ -x "$BIN" ] || { echo "measure: no app binary at $BIN (build it with: cargo build --release -p lattice-desktop)" >&2; exit 1; }

WORK=$(mktemp -d)
XVFB_PID=""
APP_PID=""
cleanup() {
  [ -n "$APP_PID" ] && kill -TERM "$APP_PID" 2>/dev/null || true
  [ -n "$XVFB_PID" ] && kill -TERM "$XVFB_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

DISPLAY_FILE="$WORK/display"
Xvfb -displayfd 3 -screen 0 1280x800x24 -nolisten tcp 3>"$DISPLAY_FILE" >/dev/null 2>&1 &
XVFB_PID=$!
for _ in $(seq 1 100); do [ -s "$DISPLAY_FILE" ] && break; sleep 0.1; done
export DISPLAY=":$(head -n1 "$DISPLAY_FILE")"
export NO_AT_BRIDGE=1

# A set-up profile: settings plus an identity file (magic, version, 96 random secret bytes).
PROFILE="$WORK/profile"
mkdir -p "$PROFILE"
cat >"$PROFILE/settings.json" <<JSON
{"settings": {"clientId": "measure", "serverMode": "connect", "serverUrl": "ws://127.0.0.1:9",
 "hostPort": 3005, "notifications": false, "closeToTray": false, "startMinimized": false}}
JSON
python3 - "$PROFILE/identity.key" <<'PY'
import os, sys
with open(sys.argv[1], "wb") as f:
    f.write(b"LTID\x01" + os.urandom(96))
os.chmod(sys.argv[1], 0o600)
PY

descendants() {
  local pid=$1
  echo "$pid"
  for child in $(pgrep -P "$pid" 2>/dev/null); do descendants "$child"; done
}

mem_of() { # RSS and PSS in KiB, summed over the process tree
  local rss=0 pss=0 r p
  for pid in $(descendants "$1"); do
    r=$(awk '/^Rss:/ {print $2}' "/proc/$pid/smaps_rollup" 2>/dev/null || echo 0)
    p=$(awk '/^Pss:/ {print $2}' "/proc/$pid/smaps_rollup" 2>/dev/null || echo 0)
    rss=$((rss + ${r:-0})); pss=$((pss + ${p:-0}))
  done
  echo "$rss $pss $(descendants "$1" | wc -l)"
}

echo "binary: $BIN"
for run in $(seq 1 "$RUNS"); do
  LOG="$WORK/app-$run.log"
  t0=$(date +%s%N)
  "$BIN" --data-dir "$PROFILE" --log-file "$LOG" >/dev/null 2>&1 &
  APP_PID=$!
  for _ in $(seq 1 1500); do grep -q "page bootstrapping" "$LOG" 2>/dev/null && break; sleep 0.01; done
  wall=$((($(date +%s%N) - t0) / 1000000))
  ms="$(grep -m1 "page bootstrapping" "$LOG" | sed -E 's/.*ms=([0-9]+).*/\1/') ms in-app, ${wall}"
  if [ "$run" -eq "$RUNS" ]; then
    sleep "$IDLE_SECS"
    read -r rss pss procs < <(mem_of "$APP_PID")
    echo "run $run: page running after ${ms} ms; idle after ${IDLE_SECS} s: RSS $((rss / 1024)) MiB, PSS $((pss / 1024)) MiB over $procs processes"
  else
    echo "run $run: page running after ${ms} ms"
  fi
  kill -TERM "$APP_PID" 2>/dev/null || true
  wait "$APP_PID" 2>/dev/null || true
  APP_PID=""
done
