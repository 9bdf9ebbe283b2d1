#!/usr/bin/env bash
# Installs everything the build and the tests need on Debian/Ubuntu (idempotent; run as root or with
# sudo available): system packages, the desktop app's WebKitGTK stack and WebDriver tools, and the
# npm packages of the Node interop tests. iproute2 (`ip netns`) lets the silent-network test make its
# own network namespaces; without it that one test says why it skipped. redis-server (Debian's 7.x)
# is for the tests of the Redis-backed server parts: they start their own on a free port, so the
# system service the package installs is stopped and disabled again when this script installed it.
# haproxy (Debian's) is the load balancer of `make run-cluster` (scripts/run-cluster.sh runs its own;
# the system service is stopped and disabled the same way).
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

need=()
for p in build-essential pkg-config util-linux git python3 iproute2 redis-server haproxy; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
  for svc in redis-server haproxy; do
    if [[ " ${need[*]} " == *" $svc "* ]]; then
      if command -v systemctl >/dev/null 2>&1; then
        $SUDO systemctl disable --now "$svc" >/dev/null 2>&1 || true
      fi
      if command -v service >/dev/null 2>&1; then
        $SUDO service "$svc" stop >/dev/null 2>&1 || true
      fi
    fi
  done
fi

if [ -x scripts/install-desktop-deps.sh ] && [ -d src-tauri ]; then
  bash scripts/install-desktop-deps.sh
fi

if [ ! -d tests/node/node_modules ] || [ tests/node/package-lock.json -nt tests/node/node_modules ]; then
  npm ci --prefix tests/node --no-audit --no-fund
fi
# The React and Vue examples of docs/ui-integration.md (src-tauri/tests/ui_integration.rs).
if [ ! -d tests/ui-integration/node_modules ] \
   || [ tests/ui-integration/package-lock.json -nt tests/ui-integration/node_modules ]; then
  npm ci --prefix tests/ui-integration --no-audit --no-fund
fi
