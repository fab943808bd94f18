#!/usr/bin/env bash
# Property tests of the file readers and value conversions run long: each for at most
# SECONDS_EACH seconds (default 60) with CASES random inputs (default 100000). The stable
# toolchain has no cargo-fuzz; proptest shrinks a failure to a small input and saves its
# seed under proptest-regressions/, so that `cargo test` replays it from then on.
set -uo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/parstat-target}"
SECONDS_EACH="${SECONDS_EACH:-60}"
export PROPTEST_CASES="${CASES:-100000}"

cargo test --lib --no-run -q || exit 1
failed=0
for t in \
    extract::file::tests::ndjson_of_any_bytes \
    extract::file::tests::csv_of_any_bytes \
    extract::file::tests::xlsx_of_any_bytes \
    extract::file::tests::xlsx_of_any_cells \
    extract::convert::tests::any_cell_types_or_gives_reasons \
    extract::convert::tests::decimal_text_reads_back; do
    start=$(date +%s)
    timeout "$SECONDS_EACH" cargo test --lib -q "$t" -- --exact >"/tmp/fuzz-${t##*::}.log" 2>&1
    rc=$?
    took=$(( $(date +%s) - start ))
    case $rc in
        0) echo "$t: $PROPTEST_CASES cases passed in ${took}s" ;;
        124) echo "$t: no failure in ${took}s (time bound reached)" ;;
        *) echo "$t: FAILED, see /tmp/fuzz-${t##*::}.log"; failed=1 ;;
    esac
done
exit $failed
