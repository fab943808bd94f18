#!/usr/bin/env bash
# Benchmark: one month's full report set over N generated dossiers. Generates the demo
# province with N dossiers, extracts everything (release build), publishes the month before
# (so the comparison reads what was published, as in production), then times, in the same
# run and on the same Parquet files:
#   parstat report monthly_par and monthly_investment --preview (whole process: start-up,
#   planning, reading the Delta log, the SQL, the checks, writing the CSV and Parquet files);
#   DuckDB 1.4.4 running the same SQL files with the same parameters (SQL time only).
# BENCH_ROUNDS rounds (5 by default) alternate the two; the best time of each counts.
# BENCH_BIN runs another parstat binary (a build of another commit, to compare two in one run).
# Usage: bench/report.sh [N] [PERIOD]
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-10000000}"
period="${2:-2026-09}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/parstat-target}"
pip install -q duckdb==1.4.4 deltalake pyarrow 2>/dev/null
if [ -z "${BENCH_BIN:-}" ]; then cargo build --release --quiet; fi
bin="${BENCH_BIN:-$CARGO_TARGET_DIR/release/parstat}"
work="${BENCH_DIR:-$(mktemp -d)}"
cp -r parstat.toml pipelines schemas sql reports "$work/"
export PARSTAT_PII_KEY=bench-key-0123456789abcdef
if [ ! -f "$work/.extracted-$n" ]; then
    echo "generating $n dossiers and extracting them into $work/warehouse ..." >&2
    /usr/bin/time -f 'demo: %e s, %M KiB' "$bin" -q --project "$work" demo --data-only --dossiers "$n" --until 2026-10 >/dev/null
    /usr/bin/time -f 'extract: %e s, %M KiB' "$bin" -q --project "$work" extract --all >/dev/null
    touch "$work/.extracted-$n"
fi
prev=$(python3 -c "import sys; y,m=map(int,'$period'.split('-')); m-=1; y,m=(y-1,12) if m==0 else (y,m); print(f'{y:04d}-{m:02d}')")
"$bin" -q --project "$work" report monthly_par --period "$prev" >/dev/null
"$bin" -q --project "$work" report monthly_investment --period "$prev" >/dev/null
rounds="${BENCH_ROUNDS:-5}"
# One round runs parstat once, then DuckDB once: the machine's drift (these 2-core VMs vary
# by 20% from one minute to the next) weighs on both alike. The best of the rounds counts.
# parstat: whole process (seconds, KiB) and, from the debug log, the compute alone (the SQL
# files, the comparison and the checks: what DuckDB's time covers).
run_parstat() {
    PARSTAT_LOG=parstat=debug /usr/bin/time -f '%e %M' -o "$work/t" "$bin" --project "$work" report "$1" --period "$period" --preview "$work/preview-$1" 2>"$work/log" >/dev/null
    c=$(grep -o 'computed report=.* seconds=[0-9.]*' "$work/log" | sed 's/.*seconds=//')
    echo "$(cat "$work/t") $c"
}
run_duckdb() { python3 bench/report_duckdb.py "$work" "$1" "$period" | cut -d' ' -f1; }
printf '%-20s %10s %10s %10s %8s %8s %12s\n' report "parstat s" "compute s" "duckdb s" ratio "c.ratio" "parstat MiB"
for r in monthly_par monthly_investment; do
    : >"$work/p" && : >"$work/d"
    for _ in $(seq "$rounds"); do
        run_parstat "$r" >>"$work/p"
        run_duckdb "$r" >>"$work/d"
    done
    read -r p_s p_k _ < <(sort -n "$work/p" | head -n1)
    p_c=$(awk '{ print $3 }' "$work/p" | sort -n | head -n1)
    d_s=$(sort -n "$work/d" | head -n1)
    awk -v r="$r" -v p="$p_s" -v c="$p_c" -v d="$d_s" -v k="$p_k" 'BEGIN { printf "%-20s %10.2f %10.2f %10.2f %8.2f %8.2f %12.0f\n", r, p, c, d, p / d, c / d, k / 1024 }'
done
echo "ratio = parstat whole process / duckdb SQL; c.ratio = parstat compute (SQL, comparison, checks) / duckdb SQL (<= 1.0: no slower). Data: $work" >&2
