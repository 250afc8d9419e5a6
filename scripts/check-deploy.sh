#!/usr/bin/env bash
# Checks deploy/ as far as a machine without a container engine or a cluster allows
# (scripts/test.sh runs it):
#  - every node config in deploy/ (compose templates, the systemd example, the ConfigMaps
#    of the Kubernetes manifests, and what the StatefulSets' init containers render from
#    them) is accepted by the real binary's `weft check-config`;
#  - deploy/compose/setup.sh generates keys and configs that are accepted too;
#  - the Kubernetes manifests, docker-compose.yml, the Dockerfile and the systemd unit
#    pass structural checks (scripts/check-deploy.py, PyYAML);
#  - where the tools can: `kubectl apply --dry-run=server` (needs a reachable cluster: a
#    client dry-run still asks the API server for the resource types),
#    `docker compose config` (needs the compose plugin), `systemd-analyze verify`.
# Nothing here builds an image or starts a container.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --quiet -p weft-node --bin weft
weft="$PWD/target/debug/weft"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if ! python3 -c 'import yaml' 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check 'PyYAML>=6,<7'
fi

echo "== deploy: structure (Kubernetes, compose, Dockerfile, systemd)"
python3 scripts/check-deploy.py "$PWD" "$tmp" "$weft"

echo "== deploy: node configs parse (weft check-config)"
shopt -s nullglob
configs=(deploy/compose/*-1.toml deploy/systemd/*.toml "$tmp"/k8s-*.toml "$tmp"/render-*/run/weft.toml)
if [ "${#configs[@]}" -lt 8 ]; then
  echo "check-deploy: expected at least 8 node configs, found ${#configs[@]}" >&2
  exit 1
fi
for f in "${configs[@]}"; do
  case "$f" in
    "$tmp"/k8s-*.toml)
      # A ConfigMap's template advertises 0.0.0.0, which its init container replaces with
      # the pod's IP (checked rendered above, render-*/run/weft.toml); the node refuses an
      # address peers cannot dial, so check the template with one in its place.
      grep -q '^advertise = "0.0.0.0:7400"$' "$f"
      sed -i 's/^advertise = "0.0.0.0:7400"$/advertise = "192.0.2.10:7400"/' "$f"
      ;;
  esac
  "$weft" check-config --config "$f" >/dev/null
  echo "  ok ${f#"$tmp"/}"
done

echo "== deploy: compose/setup.sh generates configs that parse"
STATE="$tmp/compose-state" WEFT="$weft" bash deploy/compose/setup.sh >/dev/null
for n in eu-1 us-1 ap-1; do
  "$weft" check-config --config "$tmp/compose-state/$n.toml" | grep -q "3 trusted nodes"
  [ -s "$tmp/compose-state/keys/$n.key" ]
done
# The edge agent: its device key, admitted on every node, and the three nodes' keys.
[ -s "$tmp/compose-state/keys/agent.key" ]
[ "$(grep -c '^\[\[edge.devices\]\]' "$tmp"/compose-state/*-1.toml | grep -c ':1$')" = 3 ]
[ "$(grep -cE '^key = "[0-9a-f]{64}"' "$tmp/compose-state/agent.toml")" = 3 ]
echo "  ok (3 keys, 3 configs trusting each other, a client token, the agent's key admitted and its nodes' keys)"

echo "== deploy: tools, where available"
if command -v kubectl >/dev/null 2>&1 && timeout 10 kubectl version >/dev/null 2>&1; then
  kubectl apply --dry-run=server -f deploy/k8s/namespace.yaml
  kubectl apply --dry-run=server -f deploy/k8s/
else
  echo "  kubectl: no reachable cluster, skipped (its client dry-run needs one too)"
fi
if docker compose version >/dev/null 2>&1; then
  WEFT_UID=1000 WEFT_GID=1000 docker compose -f deploy/docker-compose.yml config --quiet
  echo "  ok docker compose config"
else
  echo "  docker compose: plugin not installed, skipped (checked structurally above)"
fi
if command -v systemd-analyze >/dev/null 2>&1; then
  # verify needs the ExecStart binary to exist: point the unit at the one just built.
  sed "s#/usr/local/bin/weft#$weft#g" deploy/systemd/weft.service >"$tmp/weft.service"
  systemd-analyze verify "$tmp/weft.service"
  echo "  ok systemd-analyze verify"
else
  echo "  systemd-analyze: not installed, skipped (checked structurally above)"
fi
