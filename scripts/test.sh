#!/usr/bin/env bash
# The project's test command (README): every Rust test, the independent check of the wire
# vectors, the sans-IO dependency guard and the checks of deploy/. Works on a fresh
# machine: it installs what is missing (iproute2, Chromium, the checkers' Python packages).
set -euo pipefail
cd "$(dirname "$0")/.."

# The mDNS test puts two nodes in network namespaces it creates: it needs iproute2 (and
# root, which CI has).
if ! command -v ip >/dev/null 2>&1; then
  apt-get install -y iproute2
fi

# The dashboard test loads the page in Debian's headless Chromium (node/tests/dashboard.rs
# fails, saying so, without it).
if [ ! -x /usr/bin/chromium ]; then
  apt-get update
  apt-get install -y chromium
fi

echo "== cargo test"
cargo test --workspace

echo "== weft-sim's handler timing (its feature handler-timing, off above)"
cargo test -p weft-sim --features handler-timing --lib timing

echo "== independent wire-vector check (Python cbor2 + libsodium)"
if ! python3 -c 'import cbor2, nacl' 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check 'cbor2>=5.6,<7' 'pynacl>=1.5,<2'
fi
python3 tools/check-wire-vectors.py

echo "== sans-IO dependency guard"
bash scripts/check-core-deps.sh

echo "== deploy checks"
bash scripts/check-deploy.sh
