#!/usr/bin/env bash
# Weft against NATS JetStream on this machine, in one run (docs/performance.md): installs
# Debian's nats-server if it is missing, then runs node/benches/nats.rs in release mode.
#   WEFT_BENCH_SECS=3        seconds per throughput cell
#   WEFT_BENCH_LOAD=256:256:8    one load shape (size:batch:publishers) of the one-node part
#   WEFT_BENCH_ONLY=single,agent,latency,overload,three,bounds   a subset of the parts
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v "${NATS_SERVER:-nats-server}" >/dev/null 2>&1; then
  echo "== installing nats-server (Debian package)"
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server
fi
exec cargo bench -p weft-node --bench nats
