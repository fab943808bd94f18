#!/usr/bin/env bash
# Benchmark: the demo generator's time and peak memory at growing sizes, to show that memory
# stays bounded whatever the number of dossiers. Usage: bench/demo_scale.sh [N ...]
# (default: 1000000 10000000). Needs /usr/bin/time (Debian package `time`).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/parstat-target}"
command -v /usr/bin/time >/dev/null || { apt-get update -qq && apt-get install -y -qq time; }
cargo build --release --quiet
bin="$CARGO_TARGET_DIR/release/parstat"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp -r parstat.toml pipelines schemas "$work/"
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(1000000 10000000)
printf '%12s %10s %12s %14s %10s\n' dossiers seconds "rows/s" "peak RSS MiB" "data MiB"
for n in "${sizes[@]}"; do
    /usr/bin/time -f '%e %M' -o "$work/time" "$bin" -q --project "$work" demo --data-only --dossiers "$n" --until 2026-10 >/dev/null
    read -r secs kib < "$work/time"
    mib=$(du -sm "$work/data" | cut -f1)
    awk -v n="$n" -v s="$secs" -v k="$kib" -v m="$mib" 'BEGIN { printf "%12d %10.1f %12.0f %14.1f %10d\n", n, s, n / s, k / 1024, m }'
    rm -rf "$work/data"
done
