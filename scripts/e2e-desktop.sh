#!/usr/bin/env bash
# End-to-end test of the desktop app in its real webview:
#   Xvfb (a private display) + tauri-driver (WebDriver proxy) + WebKitWebDriver + the app binary,
#   driven from Rust with fantoccini (tests/tests/desktop_webdriver/: one file per area, helpers in support/).
# Screenshots of every step land in target/e2e-screenshots/.
#
# Usage: scripts/e2e-desktop.sh [TEST_NAME_FILTER]   (installs missing system deps first)
# Env:   CARGO_TARGET_DIR (default: target);
#        LATTICE_DESKTOP_BIN=path runs that app binary (e.g. a release build) instead of building
#        the debug one.
# Logs of the app, tauri-driver and Xvfb land in target/e2e-logs/ and target/e2e-screenshots/.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
SHOTS=$ROOT/target/e2e-screenshots
LOGS=$ROOT/target/e2e-logs
mkdir -p "$SHOTS" "$LOGS"
# This run's artifacts only.
rm -f "$SHOTS"/*.png "$SHOTS"/app.log

if ! command -v Xvfb >/dev/null || ! command -v WebKitWebDriver >/dev/null \
   || ! command -v dbus-daemon >/dev/null \
   || ! { command -v tauri-driver >/dev/null || [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/tauri-driver" ]; } \
   || [ ! -f node_modules/axe-core/axe.min.js ]; then
  bash scripts/install-desktop-deps.sh
fi
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

if [ -n "${LATTICE_DESKTOP_BIN:-}" ]; then
  APP_BIN=$LATTICE_DESKTOP_BIN
else
  echo "e2e-desktop: building the app"
  cargo build -p lattice-desktop
  APP_BIN="$TARGET_DIR/debug/lattice-desktop"
fi
[ -x "$APP_BIN" ] || { echo "e2e-desktop: no binary at $APP_BIN" >&2; exit 1; }

echo "e2e-desktop: building the test"
cargo test -p lattice-e2e --test desktop_webdriver --no-run

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

XVFB_PID=""
DRIVER_PID=""
DRIVER2_PID=""
BUS_PID=""
cleanup() {
  # SIGTERM, not SIGKILL: tauri-driver then stops WebKitWebDriver, which would otherwise keep
  # its port.
  for pid in "$DRIVER_PID" "$DRIVER2_PID"; do
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
  done
  if [ -n "$BUS_PID" ] && kill -0 "$BUS_PID" 2>/dev/null; then
    kill -TERM "$BUS_PID" 2>/dev/null || true
  fi
  if [ -n "${BUS_DIR:-}" ]; then rm -rf "$BUS_DIR"; fi
  if [ -n "$XVFB_PID" ] && kill -0 "$XVFB_PID" 2>/dev/null; then
    kill -TERM "$XVFB_PID" 2>/dev/null || true
    wait "$XVFB_PID" 2>/dev/null || true
  fi
}
trap cleanup EXIT INT TERM

# Xvfb picks a free display itself and writes its number to fd 3.
DISPLAY_FILE=$(mktemp)
Xvfb -displayfd 3 -screen 0 1280x800x24 -nolisten tcp 3>"$DISPLAY_FILE" >"$LOGS/xvfb.log" 2>&1 &
XVFB_PID=$!
for _ in $(seq 1 100); do [ -s "$DISPLAY_FILE" ] && break; sleep 0.1; done
[ -s "$DISPLAY_FILE" ] || { echo "e2e-desktop: Xvfb did not start" >&2; exit 1; }
export DISPLAY=":$(head -n1 "$DISPLAY_FILE")"
rm -f "$DISPLAY_FILE"
echo "e2e-desktop: Xvfb on $DISPLAY"

# A private session bus (no service activation) for the app and the test: the tray registers on
# it with the StatusNotifierWatcher the test serves, notifications go to it.
BUS_DIR=$(mktemp -d)
ADDRESS_FILE="$BUS_DIR/address"
dbus-daemon --config-file="$ROOT/scripts/dbus-test-session.conf" --nofork \
  --address="unix:path=$BUS_DIR/bus" --print-address=3 3>"$ADDRESS_FILE" \
  >"$LOGS/dbus.log" 2>&1 &
BUS_PID=$!
for _ in $(seq 1 100); do [ -s "$ADDRESS_FILE" ] && break; sleep 0.1; done
[ -s "$ADDRESS_FILE" ] || { echo "e2e-desktop: dbus-daemon did not start" >&2; exit 1; }
export DBUS_SESSION_BUS_ADDRESS=$(head -n1 "$ADDRESS_FILE")
echo "e2e-desktop: session bus at $DBUS_SESSION_BUS_ADDRESS"

DRIVER_PORT=$(free_port)
NATIVE_PORT=$(free_port)
export NO_AT_BRIDGE=1
tauri-driver --port "$DRIVER_PORT" --native-port "$NATIVE_PORT" >"$LOGS/tauri-driver.log" 2>&1 &
DRIVER_PID=$!
# A second driver for a second instance of the app (tauri-driver serves one session at a time):
# the two-app test runs alice's and bob's apps side by side.
DRIVER2_PORT=$(free_port)
NATIVE2_PORT=$(free_port)
tauri-driver --port "$DRIVER2_PORT" --native-port "$NATIVE2_PORT" >"$LOGS/tauri-driver-2.log" 2>&1 &
DRIVER2_PID=$!
for port in "$DRIVER_PORT" "$DRIVER2_PORT"; do
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
    sleep 0.1
  done
done
echo "e2e-desktop: tauri-driver on ports $DRIVER_PORT and $DRIVER2_PORT"

export LATTICE_DESKTOP_BIN="$APP_BIN"
export TAURI_DRIVER_URL="http://127.0.0.1:$DRIVER_PORT"
export TAURI_DRIVER_URL_2="http://127.0.0.1:$DRIVER2_PORT"
export E2E_SCREENSHOT_DIR="$SHOTS"
cargo test -p lattice-e2e --test desktop_webdriver -- --ignored --nocapture --test-threads=1 "$@"
echo "e2e-desktop: screenshots in $SHOTS"
