#!/usr/bin/env bash
# Checks that a change left the demo's output byte for byte as it was: builds parstat at REV
# (default: the last commit before the working tree's changes, HEAD~1) beside the working
# tree; compares the demo data each generates (files, and the tables each loads into
# PostgreSQL and MariaDB), then runs both on the same data and compares each report's tables
# (CSV) and email (HTML and text) for several months, the run ids masked.
#
#   scripts/same_output.sh [REV] [PERIOD ...]      e.g. scripts/same_output.sh 7a95131
#   SAME_OUTPUT_BINARIES="OLD NEW" scripts/same_output.sh [PERIOD ...]
#
# With SAME_OUTPUT_BINARIES="OLD NEW" it compares two binaries already built of the working
# tree instead (two profiles, say), both over the working tree's project.
#
# Exit code 0 when everything is identical, 1 with the differences, 2 when
# SAME_OUTPUT_BINARIES does not name two executable files.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/parstat-target}"
export PARSTAT_PII_KEY="same-output-check-key"
# With two binaries given there is no revision to build: every argument is a period.
if [ -z "${SAME_OUTPUT_BINARIES:-}" ]; then
    rev="${1:-HEAD~1}"
    shift || true
fi
periods=("$@")
[ ${#periods[@]} -gt 0 ] || periods=(2025-12 2026-06 2026-10)

work="$(mktemp -d)"
trap 'git worktree remove --force "$work/old" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
log() { printf '==> %s\n' "$*" >&2; }

# Each side is built as the tests build it (`cargo test --all-features --no-run`), so the
# dependencies built for the tests serve both; its binary is found in cargo's own report of
# what it built.
build() { # dir out
    log "building $1"
    local exe
    exe="$(cd "$1" && cargo test --all-targets --all-features --no-run --message-format=json 2>/dev/null \
        | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["kind"] == ["bin"] and m["target"]["name"] == "parstat" and not m["profile"]["test"]:
        print(m["executable"])')"
    [ -x "$exe" ] || { (cd "$1" && cargo test --all-targets --all-features --no-run); exit 1; }
    cp "$exe" "$2"
}
if [ -n "${SAME_OUTPUT_BINARIES:-}" ]; then
    read -r -a given <<<"$SAME_OUTPUT_BINARIES"
    if [ ${#given[@]} -ne 2 ] || [ ! -x "${given[0]}" ] || [ ! -x "${given[1]}" ]; then
        echo "SAME_OUTPUT_BINARIES=\"$SAME_OUTPUT_BINARIES\": give two executable binaries, \"OLD NEW\"" >&2
        exit 2
    fi
    old_bin="${given[0]}"
    new_bin="${given[1]}"
    cp "$old_bin" "$work/parstat-old"
    cp "$new_bin" "$work/parstat-new"
    old_src=.
    sides="$old_bin and $new_bin"
else
    git worktree add -q --detach "$work/old" "$rev"
    build "$work/old" "$work/parstat-old"
    build . "$work/parstat-new"
    old_src="$work/old"
    sides="$rev and the working tree"
fi

# Each side's project is its own revision's (parstat.toml, pipelines, schemas, SQL, templates)
# over the same generated data.
project() { # source-dir dest
    mkdir -p "$2"
    for f in parstat.toml pipelines schemas sql reports; do
        [ -e "$1/$f" ] && cp -a "$1/$f" "$2/"
    done
}
# The generator: each side generates the same history, bad rows included, into files and
# into a PostgreSQL schema and a MariaDB database of its own.
pg="${PARSTAT_TEST_PG:-postgres://postgres@127.0.0.1:5432/test}"
export PGOPTIONS="--client-min-messages=warning"
my_base="${PARSTAT_TEST_MYSQL:-mysql://root@127.0.0.1:3306/test}"
status=0
for side in old new; do
    log "generating the demo data with the $side side"
    db="parstat_same_output_$side"
    mariadb -h 127.0.0.1 -u root -e "CREATE DATABASE IF NOT EXISTS $db"
    project . "$work/gen-$side"
    "$work/parstat-$side" --project "$work/gen-$side" -q demo --data-only --dossiers 20000 \
        --seed 11 --until 2026-10 --bad-rows 0.02 --postgres "$pg" --pg-schema "$db" \
        --mysql "${my_base%/*}/$db" >/dev/null
    mkdir -p "$work/gen-$side/db"
    for t in don_vi linh_vuc thu_tuc ho_so danh_gia_hai_long; do
        psql -q "$pg" -c "COPY (SELECT * FROM $db.$t ORDER BY 1, 2) TO STDOUT" \
            > "$work/gen-$side/db/pg-$t.tsv"
        mariadb -h 127.0.0.1 -u root -N -B -e "SELECT * FROM $db.$t ORDER BY 1, 2" \
            > "$work/gen-$side/db/mysql-$t.tsv"
    done
    psql -q "$pg" -c "DROP SCHEMA $db CASCADE"
    mariadb -h 127.0.0.1 -u root -e "DROP DATABASE $db"
done
if diff -r "$work/gen-old/data" "$work/gen-new/data" && diff -r "$work/gen-old/db" "$work/gen-new/db"; then
    echo "generator identical: $(find "$work/gen-new/data" "$work/gen-new/db" -type f | wc -l) files and table dumps"
else
    status=1
fi

log "generating the demo data once"
project . "$work/new"
"$work/parstat-new" --project "$work/new" -q demo --data-only --dossiers 40000 --seed 7 \
    --until 2026-10 >/dev/null
project "$old_src" "$work/old-project"
cp -a "$work/new/data" "$work/old-project/"

for side in old new; do
    dir="$work/new"
    [ "$side" = old ] && dir="$work/old-project"
    "$work/parstat-$side" --project "$dir" -q extract --all >/dev/null
    for report in monthly_par monthly_investment; do
        for p in "${periods[@]}"; do
            out="$work/$side-out/$report-$p"
            "$work/parstat-$side" --project "$dir" -q report "$report" --period "$p" \
                --preview "$out" >/dev/null
            run_id="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["run_id"])' "$out/report.json")"
            mkdir -p "$work/$side-cmp/$report-$p"
            for f in "$out"/*.csv "$out/email.html" "$out/email.txt"; do
                sed "s/$run_id/[run]/g" "$f" > "$work/$side-cmp/$report-$p/$(basename "$f")"
            done
        done
    done
done
if diff -r "$work/old-cmp" "$work/new-cmp"; then
    files=$(find "$work/new-cmp" -type f | wc -l)
    echo "identical: $files files (tables and emails of ${#periods[@]} months of both reports) by $sides"
else
    status=1
fi
exit $status
