#!/usr/bin/env bash
# Benchmark: the README's first command after its build, `parstat demo` on the embedded
# defaults (300,000 dossiers generated, checked, extracted, twelve months backfilled, two
# reports delivered to the outbox), with each binary given, each run in a fresh copy of the
# project. BENCH_ROUNDS rounds (3 by default) alternate the binaries; prints every run's
# seconds and peak RSS, then each binary's best. Builds of two profiles compare how much
# speed a profile's shorter build costs.
# Usage: bench/demo_time.sh [BINARY ...] (default: the `quick` and `release` builds in
# CARGO_TARGET_DIR, built if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/parstat-target}"
command -v /usr/bin/time >/dev/null || { apt-get update -qq && apt-get install -y -qq time; }
bins=("$@")
if [ ${#bins[@]} -eq 0 ]; then
    cargo build --profile quick --quiet
    cargo build --release --quiet
    bins=("$CARGO_TARGET_DIR/quick/parstat" "$CARGO_TARGET_DIR/release/parstat")
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export PARSTAT_PII_KEY=bench-key-0123456789abcdef
declare -A best
printf '%-6s %-60s %8s %9s\n' round binary seconds peak_MiB
for r in $(seq "${BENCH_ROUNDS:-3}"); do
    for b in "${bins[@]}"; do
        p="$work/project"
        rm -rf "$p"
        mkdir -p "$p"
        cp -r parstat.toml pipelines schemas sql reports "$p/"
        /usr/bin/time -f '%e %M' -o "$work/t" "$b" -q --project "$p" demo >/dev/null
        read -r s k <"$work/t"
        [ "$(find "$p/outbox" -name '*.eml' | wc -l)" -gt 0 ] || { echo "$b delivered no email" >&2; exit 1; }
        printf '%-6s %-60s %8.2f %9.0f\n' "$r" "$b" "$s" "$((k / 1024))"
        if [ -z "${best[$b]:-}" ] || awk "BEGIN{exit !($s < ${best[$b]})}"; then best[$b]=$s; fi
    done
done
echo "best:"
for b in "${bins[@]}"; do printf '  %-60s %8.2f s (%.2f x the first)\n' "$b" "${best[$b]}" "$(awk "BEGIN{print ${best[$b]} / ${best[${bins[0]}]}}")"; done
