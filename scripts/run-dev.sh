#!/usr/bin/env bash
# `make run`: the messenger on its embedded defaults. Starts lattice-server on 127.0.0.1:3005 with
# its data under the user's data dir, and the echo bot (`echo`) next to it so a newcomer has someone
# to talk to. Stop with Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${LATTICE_PORT:-3005}
cargo build --release -p lattice-server -p lattice-peer --example echo_bot
BIN=${CARGO_TARGET_DIR:-target}/release
pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM
"$BIN/lattice-server" --bind 127.0.0.1 --port "$PORT" &
pids+=($!)
for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
"$BIN/examples/echo_bot" --server "ws://127.0.0.1:$PORT" --id echo &
pids+=($!)
echo
echo "Lattice is running: server ws://127.0.0.1:$PORT, echo bot 'echo'."
echo "Chat from another terminal:  cargo run -p lattice-chat -- --server ws://127.0.0.1:$PORT --id $USER"
echo "Ctrl-C stops everything."
wait
