#!/usr/bin/env bash
# Benchmark: extracting N dossiers from PostgreSQL. Loads N generated dossiers into the test
# PostgreSQL (schema `bench`), then times in the same run, each from a cold process:
#   parstat extract (binary COPY -> validation -> HMAC -> Delta table),
#   DuckDB (postgres extension) copying the same query to zstd Parquet,
#   ConnectorX reading the same query into Arrow,
# and prints seconds, peak memory and the ratios to parstat. Usage: bench/extract_pg.sh [N]
# BENCH_KEEP=1 keeps the loaded schema for the next run, which reuses it when it holds N rows;
# BENCH_BIN times another parstat binary; BENCH_EXTRACT_ARGS adds arguments to its extract.
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-1000000}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/parstat-target}"
command -v /usr/bin/time >/dev/null || { apt-get update -qq && apt-get install -y -qq time; }
pip install -q duckdb==1.4.4 duckdb-ext-postgres==1.4.4.20260205 connectorx==0.4.6 pyarrow 2>/dev/null
if [ -z "${BENCH_BIN:-}" ]; then cargo build --release --quiet; fi
bin="${BENCH_BIN:-$CARGO_TARGET_DIR/release/parstat}"
work="$(mktemp -d)"
if [ "${BENCH_KEEP:-0}" = 1 ]; then
    trap 'rm -rf "$work"' EXIT
else
    trap 'rm -rf "$work"; psql -q -h 127.0.0.1 -U postgres test -c "DROP SCHEMA IF EXISTS bench CASCADE" >/dev/null 2>&1 || true' EXIT
fi
cp -r parstat.toml pipelines schemas sql reports "$work/"
rm "$work/pipelines/dossier.toml"
sed -i 's/^\[connections.exports\]/[connections.motcua]\nkind = "postgres"\nurl = "${MOTCUA_DATABASE_URL}"\n\n[connections.exports]/' "$work/parstat.toml"
{ printf 'kind = "extract"\ndataset = "dossier"\nconnection = "motcua"\nmode = "merge"\nquery = """\n'; grep -v '^--' bench/dossier_postgres.sql; printf '"""\n'; } > "$work/pipelines/dossier.toml"
have="$(psql -qtA -h 127.0.0.1 -U postgres test -c "SELECT count(*) FROM bench.ho_so" 2>/dev/null || echo 0)"
if [ "$have" = "$n" ]; then
    echo "reusing the $n dossiers of schema bench" >&2
else
    echo "loading $n dossiers into PostgreSQL (schema bench)..." >&2
    "$bin" -q --project "$work" demo --data-only --dossiers "$n" --until 2026-10 --postgres postgres://postgres@127.0.0.1:5432/test --pg-schema bench --force >/dev/null
    # The first scan after a load writes every page's hint bits: not the first tool's bill.
    psql -q -h 127.0.0.1 -U postgres test -c "VACUUM (FREEZE, ANALYZE) bench.ho_so" >/dev/null
fi
export MOTCUA_DATABASE_URL=postgres://postgres@127.0.0.1:5432/test PARSTAT_PII_KEY=bench-key-0123456789abcdef
measure() { /usr/bin/time -f '%e %M' -o "$work/t" "$@" >/dev/null; cat "$work/t"; }
read -r p_s p_k < <(measure "$bin" -q --project "$work" extract dossier ${BENCH_EXTRACT_ARGS:-})
read -r d_s d_k < <(measure python3 bench/peers.py duckdb bench/dossier_postgres.sql "$work")
read -r c_s c_k < <(measure python3 bench/peers.py connectorx bench/dossier_postgres.sql "$work")
printf '%-12s %10s %14s %18s\n' tool seconds "peak RSS MiB" "time / parstat"
for row in "parstat $p_s $p_k" "duckdb $d_s $d_k" "connectorx $c_s $c_k"; do
    set -- $row
    awk -v t="$1" -v s="$2" -v k="$3" -v p="$p_s" 'BEGIN { printf "%-12s %10.1f %14.0f %18.2f\n", t, s, k / 1024, s / p }'
done
