#!/usr/bin/env bash
# Installs what the Lattice desktop app needs to build, bundle and be tested end to end on Debian/Ubuntu:
#   - the WebKitGTK / GTK / tray / SVG / xdo development packages Tauri 2 links against,
#   - Xvfb, WebKitWebDriver (webkit2gtk-driver) and tauri-driver for the WebDriver tests,
#   - the npm package @tauri-apps/cli@2 (root package.json) that `make bundle` uses,
#   - xdotool, which types into the app in the smoke test of `make run` (scripts/smoke-run.sh),
#   - dbus-x11 for a session bus under Xvfb (single-instance and notifications use it), and
#     dbus (dbus-daemon) for the private bus of the notification test,
#   - file and rpm tooling that the bundler's .rpm step needs.
# Idempotent: every step checks first and does nothing when its tool is already there.
# Runs as root (CI does) or with sudo.
set -euo pipefail

cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi

APT_PACKAGES=(
  # Reactions are emoji: without a colour emoji font the WebDriver screenshots show boxes.
  fonts-noto-color-emoji
  libwebkit2gtk-4.1-dev
  libgtk-3-dev
  libayatana-appindicator3-dev
  librsvg2-dev
  libxdo-dev
  libssl-dev
  pkg-config
  build-essential
  file
  xvfb
  xauth
  dbus-x11
  dbus
  webkit2gtk-driver
  x11-utils
  xdotool
  imagemagick
)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "install-desktop-deps: apt-get install ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "install-desktop-deps: system packages present"
fi

# tauri-driver: the WebDriver proxy between fantoccini and WebKitWebDriver.
if ! command -v tauri-driver >/dev/null 2>&1 && [ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/tauri-driver" ]; then
  echo "install-desktop-deps: cargo install tauri-driver"
  cargo install tauri-driver --locked --version '^2'
else
  echo "install-desktop-deps: tauri-driver present"
fi

# @tauri-apps/cli@2 for `make bundle` (.deb/.rpm) and axe-core for the WebDriver suite's
# accessibility checks, pinned in the root package-lock.json.
if [ -f package.json ]; then
  if [ ! -x node_modules/.bin/tauri ] || [ ! -f node_modules/axe-core/axe.min.js ] \
     || [ package-lock.json -nt node_modules ]; then
    echo "install-desktop-deps: npm ci (@tauri-apps/cli, axe-core)"
    if [ -f package-lock.json ]; then npm ci --no-audit --no-fund; else npm install --no-audit --no-fund; fi
  else
    echo "install-desktop-deps: @tauri-apps/cli and axe-core present"
  fi
fi
