# Lattice: the two commands the README opens with are `make run` and `make test`.
CARGO ?= cargo

.PHONY: run run-chat run-server run-cluster test lint unit e2e-desktop smoke-run deps bench bench-crypto bench-mls bench-peer bench-delivery bench-files bench-scale soak bundle

## Run the messenger on its embedded defaults: the desktop app hosting its own server on :3005,
## with the echo bot connected to it.
run:
	bash scripts/run-dev.sh

## The terminal client against the local server (make run-chat ID=you).
run-chat:
	$(CARGO) run -p lattice-chat -- --id $(or $(ID),$(USER))

## Only the signaling server, on its defaults (0.0.0.0:3005, data under ~/.local/share/lattice).
run-server:
	$(CARGO) run --release -p lattice-server

## Three server nodes sharing their state in Redis, behind haproxy on :3005 (docs/scaling.md):
## point two desktop apps or `make run-chat` at ws://127.0.0.1:3005.
run-cluster:
	CARGO=$(CARGO) bash scripts/run-cluster.sh

## Every test: formatting, lints, unit/integration/doc tests, Node interop, desktop end-to-end,
## and the smoke test of `make run` from a fresh clone. Installs what it needs first (deps).
test: deps lint unit e2e-desktop smoke-run

## System packages (WebKitGTK, Xvfb, WebDriver, xdotool, ...), tauri-driver and the npm packages
## of the interop tests: everything the build and the tests need, before anything compiles.
## Idempotent: a few seconds when all is there.
deps:
	bash scripts/install-deps.sh

e2e-desktop: deps
	bash scripts/e2e-desktop.sh

## `make run` as a newcomer meets it: fresh clone, empty home, Xvfb; first run, bot, Ctrl-C.
smoke-run: deps
	bash scripts/smoke-run.sh

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit: deps
	$(CARGO) test --workspace

## Benchmarks (numbers, never asserted): criterion for the crypto, the load generator for the server.
bench: bench-crypto bench-peer
	$(CARGO) build --release -p lattice-server -p lattice-bench
	taskset -c 1 target/release/lattice-loadgen compare --pairs 1,10,100,1000 --idle 10000 --tls-pairs 100

bench-crypto:
	$(CARGO) bench -p lattice-crypto

## MLS (docs/security.md): 1 KiB encrypt/decrypt with SQLite state beside lattice-v1 sign+seal /
## open+verify in one run; add/remove time and Commit/Welcome bytes at 2, 10 and 100 members.
bench-mls:
	$(CARGO) bench -p lattice-mls --bench mls -- --warm-up-time 1 --measurement-time 3

## The delivery paths for verified recipients side by side (docs/performance.md): committed
## before the answer (--ack-wait 0), end-to-end delivered, and the memory-only path.
bench-delivery:
	$(CARGO) build --release -p lattice-server -p lattice-bench
	taskset -c 1 target/release/lattice-loadgen delivery --pairs 10,100 --rounds 2 --duration 6

## Files (issue 11): a 1 GiB file sender disk -> server -> receiver disk against one raw WebSocket
## carrying the same bytes, seal/open CPU per MiB, peak RSS of each process, resume after kill -9.
bench-files:
	$(CARGO) build --release -p lattice-server -p lattice-bench
	target/release/lattice-loadgen files --mib 1024 --resume-mib 256

## One node, many connections (docs/scaling.md): server RSS and kernel memory per idle connection,
## message latency while all are connected, and a full reconnect storm, at 10,000 and 19,000
## connections (19,000 needs `ulimit -n` of at least 19,064).
bench-scale:
	$(CARGO) build --release -p lattice-server -p lattice-bench
	taskset -c 1 target/release/lattice-loadgen scale --conns 10000
	taskset -c 1 target/release/lattice-loadgen scale --conns 19000

## The client: seal+open of 1 KiB through the outbox and inbox, and 1,000 messages round trip
## through a real in-process server (crates/peer/benches/peer.rs).
bench-peer:
	$(CARGO) bench -p lattice-peer --features bench

## The soak with kill -9s (docs/scaling.md): 10 minutes, 200 verified recipients, 3,000 messages/s;
## prints the account and fails if anything acknowledged was lost.
soak:
	$(CARGO) build --release -p lattice-server -p lattice-bench
	target/release/lattice-loadgen soak --duration 600 --recipients 200 --senders 20 --rate 3000 --kill-every 120

## Installers (.deb and .rpm) for the desktop app.
bundle:
	bash scripts/bundle.sh
