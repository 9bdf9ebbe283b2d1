#!/usr/bin/env bash
# `make bundle`: .deb and .rpm installers of the desktop app, built by the Tauri CLI (npm
# @tauri-apps/cli@2; its bundler downloads nothing for these two formats). Output:
# target/release/bundle/deb/*.deb and target/release/bundle/rpm/*.rpm.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-desktop-deps.sh
npm ci --no-audit --no-fund
# Stripped: the release profile keeps line tables for profiling, which would triple the package.
CARGO_PROFILE_RELEASE_STRIP=true npx tauri build --bundles deb,rpm
ls -l target/release/bundle/deb/*.deb target/release/bundle/rpm/*.rpm
