#!/usr/bin/env bash
# Benchmark: the cold build of parstat's binary in each cargo profile given (by default `quick`,
# the README's first command, and `release`), each from an empty target folder, one after the
# other so that they do not share the two cores. Prints per profile: wall time, CPU time, the
# number of units built, the binary's size, its size without debug sections and stripped.
# The crates are downloaded first (`cargo fetch`) so that only compiling is timed.
# BUILD_DIR keeps the target folders (and cargo's --timings reports) in a folder of your choice.
# Usage: bench/build.sh [PROFILE ...]
set -euo pipefail
cd "$(dirname "$0")/.."
profiles=("$@")
if [ ${#profiles[@]} -eq 0 ]; then profiles=(quick release); fi
command -v /usr/bin/time >/dev/null || { apt-get update -qq && apt-get install -y -qq time; }
root="${BUILD_DIR:-$(mktemp -d)}"
cargo fetch --quiet
printf '%-8s %10s %10s %6s %12s %12s %12s\n' profile wall_s cpu_s units binary_B no_debug_B stripped_B
for p in "${profiles[@]}"; do
    dir="$root/$p"
    rm -rf "$dir"
    mkdir -p "$dir"
    /usr/bin/time -f '%e %U %S' -o "$dir/time" \
        env CARGO_TARGET_DIR="$dir" cargo build --profile "$p" --timings --message-format json-render-diagnostics \
        >"$dir/messages.json" 2>"$dir/build.log" || { tail -20 "$dir/build.log"; exit 1; }
    read -r wall user sys <"$dir/time"
    units=$(grep -c '"reason":"compiler-artifact"' "$dir/messages.json" || true)
    # Cargo names a profile's folder after the profile, except `dev` (debug).
    out="$dir/$p"
    if [ "$p" = dev ]; then out="$dir/debug"; fi
    bin="$out/parstat"
    objcopy --strip-debug "$bin" "$dir/nodebug"
    objcopy --strip-all "$bin" "$dir/stripped"
    printf '%-8s %10.0f %10.0f %6d %12d %12d %12d\n' "$p" "$wall" "$(awk "BEGIN{print $user + $sys}")" "$units" \
        "$(stat -c %s "$bin")" "$(stat -c %s "$dir/nodebug")" "$(stat -c %s "$dir/stripped")"
    rm -f "$dir/nodebug" "$dir/stripped"
done
echo "binaries and cargo's --timings reports: $root/<profile>/" >&2
