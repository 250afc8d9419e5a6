#!/usr/bin/env bash
# Architecture invariant guards: the sans-IO core crates must not depend (normal edges) on an
# async runtime, a network stack, a database or an HTTP client (fails naming the crate, the
# dependency and the path that pulls it in); the node and the agent never build the
# simulator's modelled signatures.
set -euo pipefail
cd "$(dirname "$0")/.."

banned=(tokio quinn quinn-proto rusqlite reqwest mio socket2 hyper)
status=0
for crate in weft-fabric weft-routing weft-policy; do
  tree=$(cargo tree -e normal -p "$crate" --prefix none --format '{p}' --offline 2>/dev/null \
    || cargo tree -e normal -p "$crate" --prefix none --format '{p}')
  # Guard against a vacuous pass: the tree must at least list the crate itself.
  if ! grep -q "^$crate v" <<<"$tree"; then
    echo "check-core-deps: cargo tree for $crate printed nothing useful" >&2
    exit 1
  fi
  for dep in "${banned[@]}"; do
    if grep -qE "^$dep v" <<<"$tree"; then
      echo "check-core-deps: $crate depends on $dep (forbidden in the sans-IO core):" >&2
      cargo tree -e normal -p "$crate" -i "$dep" >&2 || true
      status=1
    fi
  done
done
if [ "$status" -eq 0 ]; then
  echo "check-core-deps: weft-fabric, weft-routing, weft-policy are free of ${banned[*]}"
fi

# Events with a modelled (uncomputed) signature exist for the simulator only: the node's and
# the agent's builds must not enable weft-fabric's `model-signatures` feature.
for crate in weft-node weft-agent; do
  features=$(cargo tree -p "$crate" -e features --prefix none --offline 2>/dev/null \
    || cargo tree -p "$crate" -e features --prefix none)
  if ! grep -q '^weft-fabric feature' <<<"$features"; then
    echo "check-core-deps: cargo tree for $crate's features printed nothing useful" >&2
    exit 1
  fi
  if grep -q '^weft-fabric feature "model-signatures"' <<<"$features"; then
    echo "check-core-deps: $crate enables weft-fabric's model-signatures (simulator only):" >&2
    cargo tree -p "$crate" -e features -i weft-fabric >&2 || true
    status=1
  fi
done
if [ "$status" -eq 0 ]; then
  echo "check-core-deps: weft-node and weft-agent build weft-fabric without model-signatures"
fi
exit "$status"
