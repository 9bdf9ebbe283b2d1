#!/usr/bin/env bash
# `make run-cluster`: lattice-server as three nodes sharing their state in one Redis, behind
# haproxy on :3005, so a person can point two desktop apps (or `make run-chat`) at
# ws://127.0.0.1:3005 and be served by any node (docs/scaling.md, docs/deployment.md).
#
#   redis-server   127.0.0.1:${REDIS_PORT:-6390}  AOF everysec, in a temp dir
#   lattice-server 127.0.0.1:3011, :3012, :3013   --redis redis://127.0.0.1:6390
#                                                 --blob-dir $work/blobs (files: one directory
#                                                 every node uses, as a shared mount would be)
#   haproxy        0.0.0.0:${PORT:-3005}          TCP, round robin, health-checked on /healthz
#
# Ctrl-C stops everything and removes the temp dir. Kill one node (its pid is printed) to watch
# its peers move to the others.
set -euo pipefail

PORT=${PORT:-3005}
REDIS_PORT=${REDIS_PORT:-6390}
NODE_PORTS=(3011 3012 3013)
CARGO=${CARGO:-cargo}

for tool in redis-server haproxy; do
  command -v "$tool" >/dev/null || { echo "$tool is missing: run scripts/install-deps.sh" >&2; exit 1; }
done

# LATTICE_SERVER=/path/to/lattice-server uses that binary instead of building one.
server=${LATTICE_SERVER:-}
if [ -z "$server" ]; then
  $CARGO build --release -p lattice-server
  target_dir=$($CARGO metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
  server="$target_dir/release/lattice-server"
fi

work=$(mktemp -d /tmp/lattice-cluster.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$work" --save "" \
  --appendonly yes --appendfsync everysec --daemonize no --loglevel warning \
  >"$work/redis.log" 2>&1 &
redis_pid=$!
pids+=("$redis_pid")
for _ in $(seq 50); do
  redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
  sleep 0.1
done

for p in "${NODE_PORTS[@]}"; do
  mkdir -p "$work/node-$p"
  LATTICE_LOG=${LATTICE_LOG:-info} "$server" --bind 127.0.0.1 --port "$p" \
    --data-dir "$work/node-$p" --redis "redis://127.0.0.1:$REDIS_PORT" \
    --blob-dir "$work/blobs" \
    >"$work/node-$p.log" 2>&1 &
  pids+=($!)
  echo "node on :$p (pid $!), log $work/node-$p.log"
done

cat >"$work/haproxy.cfg" <<EOF
global
  # two file descriptors per proxied connection: fits the common 20,000 descriptor limit
  maxconn 8000
defaults
  mode tcp
  timeout connect 5s
  # WebSockets are long-lived: the server pings every 20 s, so an hour of silence is a dead peer
  timeout client 1h
  timeout server 1h
frontend lattice
  bind 0.0.0.0:$PORT
  default_backend nodes
backend nodes
  balance roundrobin
  option httpchk GET /healthz
  http-check expect status 200
$(for p in "${NODE_PORTS[@]}"; do echo "  server node$p 127.0.0.1:$p check inter 2s fall 2 rise 1"; done)
EOF
haproxy -f "$work/haproxy.cfg" -db >"$work/haproxy.log" 2>&1 &
haproxy_pid=$!
pids+=("$haproxy_pid")

echo "lattice cluster: ws://127.0.0.1:$PORT (3 nodes, Redis on :$REDIS_PORT); Ctrl-C stops it"
# A node may be killed to try failover; Redis or haproxy ending ends the cluster.
wait -n "$redis_pid" "$haproxy_pid" || true
echo "redis-server or haproxy exited (logs in $work); stopping" >&2
