#!/usr/bin/env bash
# Benchmark: one month's full report set (monthly_par, monthly_investment) over N generated
# dossiers, on the local engine and on a Ballista cluster started from the same binary with
# one and then two executors, in the same run and on the same warehouse. The warehouse is a
# local folder, which every executor on this machine reads (S3 would time the S3 server).
# Each configuration runs BENCH_ROUNDS rounds (3 by default) of both reports as whole
# processes (`report R --period P --preview DIR`); the best round counts.
# Usage: bench/cluster.sh [N] [PERIOD]
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-10000000}"
period="${2:-2026-09}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/parstat-target}"
if [ -z "${BENCH_BIN:-}" ]; then cargo build --release --features cluster --quiet; fi
bin="${BENCH_BIN:-$CARGO_TARGET_DIR/release/parstat}"
work="${BENCH_DIR:-$(mktemp -d)}"
mkdir -p "$work"
cp -r parstat.toml pipelines schemas sql reports "$work/" 2>/dev/null || true
export PARSTAT_PII_KEY=bench-key-0123456789abcdef
if [ ! -f "$work/.extracted-$n" ]; then
    echo "generating $n dossiers and extracting them into $work/warehouse ..." >&2
    "$bin" -q --project "$work" demo --data-only --dossiers "$n" --until 2026-10 >/dev/null
    "$bin" -q --project "$work" extract --all >/dev/null
    touch "$work/.extracted-$n"
fi
prev=$(python3 -c "y,m=map(int,'$period'.split('-')); m-=1; y,m=(y-1,12) if m==0 else (y,m); print(f'{y:04d}-{m:02d}')")
"$bin" -q --project "$work" report monthly_par --period "$prev" >/dev/null
"$bin" -q --project "$work" report monthly_investment --period "$prev" >/dev/null

base="$(sed '/^\[engine\]/,$d' "$work/parstat.toml")"
port=50550
pids=()
stop_cluster() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    pids=()
}
trap stop_cluster EXIT
wait_port() { for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }
start_cluster() {
    stop_cluster
    "$bin" -q cluster scheduler --port "$port" 2>"$work/scheduler.log" & pids+=($!)
    wait_port "$port"
    for i in $(seq "$1"); do
        mkdir -p "$work/exec$i"
        "$bin" -q cluster executor --scheduler "df://127.0.0.1:$port" --flight-port $((port + 10 * i)) \
            --grpc-port $((port + 10 * i + 1)) --work-dir "$work/exec$i" 2>"$work/executor$i.log" & pids+=($!)
        wait_port $((port + 10 * i))
    done
    sleep 2
}
# The whole report set in one round: seconds of both processes together, and the larger peak.
round() {
    local total=0 peak=0
    for r in monthly_par monthly_investment; do
        /usr/bin/time -f '%e %M' -o "$work/t" "$bin" -q --project "$work" report "$r" --period "$period" --preview "$work/preview-$1-$r" >/dev/null
        read -r s k <"$work/t"
        total=$(awk -v a="$total" -v b="$s" 'BEGIN { print a + b }')
        peak=$(( k > peak ? k : peak ))
    done
    echo "$total $peak"
}
rounds="${BENCH_ROUNDS:-3}"
printf '%-22s %10s %12s %8s\n' engine "seconds" "client MiB" "ratio"
local_best=""
for cfg in local 1 2; do
    if [ "$cfg" = local ]; then
        stop_cluster
        printf '%s\n' "$base" >"$work/parstat.toml"
        name="local"
    else
        start_cluster "$cfg"
        printf '%s\n\n[engine]\nkind = "ballista"\nscheduler = "df://127.0.0.1:%s"\n' "$base" "$port" >"$work/parstat.toml"
        name="ballista, $cfg executor(s)"
    fi
    : >"$work/r"
    for _ in $(seq "$rounds"); do round "$cfg" >>"$work/r"; done
    read -r s k < <(sort -n "$work/r" | head -n1)
    [ -z "$local_best" ] && local_best="$s"
    awk -v n="$name" -v s="$s" -v k="$k" -v l="$local_best" 'BEGIN { printf "%-22s %10.2f %12.0f %8.2f\n", n, s, k / 1024, s / l }'
    if [ "$cfg" != local ]; then
        for t in "$work/preview-local-"*/*.csv; do
            r=$(basename "$(dirname "$t")" | sed 's/^preview-local-//')
            cmp -s "$t" "$work/preview-$cfg-$r/$(basename "$t")" || { echo "DIFFERS from the local engine: $r/$(basename "$t")" >&2; exit 1; }
        done
    fi
done
printf '%s\n' "$base" >"$work/parstat.toml"
echo "ratio = seconds / the local engine's; the cluster's tables were compared with the local engine's, file by file. Data: $work" >&2
