#!/usr/bin/env bash
# Prepares deploy/docker-compose.yml: generates a key per node and a client token, and
# writes each node's config from its template (eu-1.toml, us-1.toml, ap-1.toml) with the
# trusted keys and the token's hash filled in. Everything goes to state/ (git-ignored):
#
#   state/<node>.toml      the config the container mounts at /etc/weft/weft.toml
#   state/keys/<node>.key  the node's Ed25519 key (mode 0600)
#   state/client.key.token the bearer token for `weft publish` (mode 0600)
#   state/agent.toml       the edge agent's config (from agent.toml), state/keys/agent.key
#   state/agent-input/     the file the agent follows (readings.log), state/data/agent/
#   state/data/<node>/     the node's SQLite store
#   ../.env                WEFT_UID/WEFT_GID: the containers run as the owner of state/
#
# Needs a `weft` binary on the host: set WEFT=path, or it uses `weft` on PATH, or
# target/release/weft (cargo build --release --bin weft). Refuses to overwrite an existing
# state/ (keys are identities: delete state/ yourself to start over). STATE=dir writes
# elsewhere (scripts/check-deploy.sh uses it).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
state="${STATE:-$here/state}"
nodes=(eu-1 us-1 ap-1)

weft="${WEFT:-}"
if [ -z "$weft" ]; then
  if command -v weft >/dev/null 2>&1; then
    weft=weft
  elif [ -x "$here/../../target/release/weft" ]; then
    weft="$here/../../target/release/weft"
  else
    echo "setup.sh: no weft binary: run cargo build --release --bin weft, or set WEFT=path" >&2
    exit 1
  fi
fi
if [ -e "$state" ]; then
  echo "setup.sh: $state exists; delete it to generate new keys" >&2
  exit 1
fi
umask 077
mkdir -p "$state/keys"

keys=()
for n in "${nodes[@]}"; do
  out=$("$weft" keygen --out "$state/keys/$n.key")
  keys+=("$(sed -n 's/^public key: //p' <<<"$out")")
  mkdir -p "$state/data/$n"
done
# The edge agent's device key (the same PEM format as weft-agent keygen's).
out=$("$weft" keygen --out "$state/keys/agent.key")
agent_key=$(sed -n 's/^public key: //p' <<<"$out")
mkdir -p "$state/data/agent" "$state/agent-input"
touch "$state/agent-input/readings.log"
out=$("$weft" keygen --client --out "$state/client.key")
hash=$(sed -n 's/^token_sha256: //p' <<<"$out")
trusted=$(printf '"%s", ' "${keys[@]}")
trusted="[${trusted%, }]"

for n in "${nodes[@]}"; do
  sed -e "s/^trusted_nodes = \[\].*/trusted_nodes = $trusted/" \
      -e "s/^token_sha256 = \"0\{64\}\".*/token_sha256 = \"$hash\"/" \
      "$here/$n.toml" >"$state/$n.toml"
  # Admit the agent's device key on the node's edge port (no policy in this mesh).
  printf '\n[[edge.devices]]\nname = "sensor-1"\ntenant = "dev"\nkey = "%s"\nstreams = ["telemetry.devices.sensor-1.>"]\n' \
    "$agent_key" >>"$state/$n.toml"
  chmod 0644 "$state/$n.toml"
  "$weft" check-config --config "$state/$n.toml" >/dev/null
done

sed -e "s/^key = \"eu-1\".*/key = \"${keys[0]}\"/" \
    -e "s/^key = \"us-1\".*/key = \"${keys[1]}\"/" \
    -e "s/^key = \"ap-1\".*/key = \"${keys[2]}\"/" \
    "$here/agent.toml" >"$state/agent.toml"
chmod 0644 "$state/agent.toml" "$state/agent-input/readings.log"

uid=$(id -u)
gid=$(id -g)
if [ "$uid" = 0 ]; then
  # Run as the image's non-root user rather than root: hand it the state.
  uid=65532
  gid=65532
  chown -R "$uid:$gid" "$state"
fi
if [ -z "${STATE:-}" ]; then
  printf 'WEFT_UID=%s\nWEFT_GID=%s\n' "$uid" "$gid" >"$here/../.env"
fi
echo "wrote $state (keys, configs, token); containers run as $uid:$gid"
echo "next: docker compose -f deploy/docker-compose.yml up --build"
