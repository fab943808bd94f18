#!/usr/bin/env bash
# Benchmark tool: in which crates' machine code `parstat demo` spends its CPU time, to choose
# which crates a cargo profile may build at a lower opt-level. Compiles parstat again in the
# profile and links it with lld's link map (and without identical code folding, so that each
# function keeps its own address), samples the demo with `perf record`, and prints each
# crate's share of the samples (bench/crate_profile.py). The next ordinary build compiles
# parstat once more (its build script sees PARSTAT_NO_ICF change) and links it with folding.
# Usage: bench/crate_profile.sh [PROFILE] (default release; a profile that keeps symbols)
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${1:-release}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/parstat-target}"
command -v perf >/dev/null || { apt-get update -qq && apt-get install -y -qq linux-perf; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
PARSTAT_NO_ICF=1 cargo rustc --quiet --profile "$profile" --bin parstat -- -C link-arg=-Wl,-Map="$work/parstat.map"
bin="$CARGO_TARGET_DIR/$profile/parstat"
if [ "$profile" = dev ]; then bin="$CARGO_TARGET_DIR/debug/parstat"; fi
mkdir -p "$work/project"
cp -r parstat.toml pipelines schemas sql reports "$work/project/"
export PARSTAT_PII_KEY=bench-key-0123456789abcdef
perf record -q -F 1999 -o "$work/perf.data" "$bin" -q --project "$work/project" demo >/dev/null
python3 bench/crate_profile.py "$bin" "$work/parstat.map" "$work/perf.data" "${CRATE_PROFILE_TOP:-50}"
