#!/usr/bin/env bash
# Builds weft-sim with profile-guided optimisation (docs/sim.md, section 3.3): the `sim`
# profile (release plus fat LTO) instrumented, run on the nine shipped fault scenarios, then
# built again with the merged profile. Same code, same reports (the script compares one
# scenario's JSON report between the instrumented and the optimised build); only the machine
# code's layout and inlining follow the measured hot paths.
#
# Needs rustc's llvm-profdata (`rustup component add llvm-tools`; the script adds it when
# missing). Not part of CI or the README's commands: a build for people who want the
# fastest simulator. Output: target/sim-pgo/weft-sim. Usage: scripts/sim-pgo.sh
set -euo pipefail
cd "$(dirname "$0")/.."

host=$(rustc -vV | sed -n 's/^host: //p')
profdata="$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata"
if [ ! -x "$profdata" ]; then
  echo "== adding rustup's llvm-tools (llvm-profdata)"
  rustup component add llvm-tools
fi

work=target/sim-pgo
data="$PWD/$work/profiles"
rm -rf "$data"
mkdir -p "$data"
scenarios=(region-outage cloud-partition transoceanic-degradation rolling-crash clock-skew
  link-cut degraded-link-relay sovereignty-under-failure split-brain-writes)

echo "== instrumented build"
RUSTFLAGS="-Cprofile-generate=$data" CARGO_TARGET_DIR="$work/instrumented" \
  cargo build --profile sim -p weft-sim --bin weft-sim
echo "== training runs"
for s in "${scenarios[@]}"; do
  "$work/instrumented/sim/weft-sim" run "sim/scenarios/$s.toml" --no-baselines >/dev/null
done
# The reference report for the check below, from the same code unoptimised by the profile
# (a training run too), so the check costs no build of its own.
"$work/instrumented/sim/weft-sim" run sim/scenarios/clock-skew.toml --seed 101 \
  --json "$work/plain.json" >/dev/null
"$profdata" merge -o "$work/merged.profdata" "$data"

echo "== optimised build"
RUSTFLAGS="-Cprofile-use=$PWD/$work/merged.profdata" CARGO_TARGET_DIR="$work/optimised" \
  cargo build --profile sim -p weft-sim --bin weft-sim
cp "$work/optimised/sim/weft-sim" "$work/weft-sim"

echo "== same report as the instrumented build (clock-skew, seed 101)"
"$work/weft-sim" run sim/scenarios/clock-skew.toml --seed 101 --json "$work/pgo.json" >/dev/null
cmp "$work/plain.json" "$work/pgo.json"
echo "sim-pgo: $work/weft-sim (its report identical to the instrumented build's)"
