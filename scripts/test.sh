#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs and starts what the tests need, then runs
# formatting, lint and every test. CI (.ci/run) calls exactly this script.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/parstat-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

log() { printf '==> %s\n' "$*" >&2; }

# The Rust toolchain's formatter and linter.
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    log "installing rustfmt and clippy"
    rustup component add rustfmt clippy
fi

# PostgreSQL and MariaDB run on every developer and CI machine; start them if they stopped.
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    log "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
fi
if ! mariadb-admin -h 127.0.0.1 -u root status >/dev/null 2>&1; then
    log "starting MariaDB"
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd || true
fi
for _ in $(seq 1 30); do
    if pg_isready -q -h 127.0.0.1 -p 5432 && mariadb-admin -h 127.0.0.1 -u root status >/dev/null 2>&1; then
        break
    fi
    sleep 1
done
pg_isready -h 127.0.0.1 -p 5432 >/dev/null || { echo "PostgreSQL is not reachable at 127.0.0.1:5432" >&2; exit 1; }
mariadb-admin -h 127.0.0.1 -u root status >/dev/null || { echo "MariaDB is not reachable at 127.0.0.1:3306" >&2; exit 1; }

# TLS in both databases with a certificate of a test CA (the TLS tests; plain connections
# keep working), and the certificates the TLS SMTP tests serve.
scripts/tls_setup.sh

# The packages the tests need install while the build runs (downloads mostly, about two
# minutes on a fresh machine); the tests wait for them.
install_packages() {
    # An S3-compatible server for the warehouse-on-S3 test, an SMTP server for the delivery tests.
    if ! command -v moto_server >/dev/null 2>&1 || ! python3 -c "import aiosmtpd" 2>/dev/null; then
        log "installing moto (S3-compatible server) and aiosmtpd (SMTP server) from PyPI"
        python3 -m pip install -q "moto[server]" aiosmtpd
    fi
    # Headless Chromium, to take a screenshot of the rendered email (kept in artifacts/), and
    # GNU time, with which the hostile-file tests measure a run's peak memory.
    local debs=()
    command -v chromium >/dev/null 2>&1 || debs+=(chromium)
    [ -x /usr/bin/time ] || debs+=(time)
    if [ ${#debs[@]} -gt 0 ]; then
        log "installing ${debs[*]} from Debian's packages"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${debs[@]}" >/dev/null
    fi
}
install_log="$(mktemp)"
install_packages > "$install_log" 2>&1 &
installing=$!

log "cargo fmt --all --check"
cargo fmt --all --check
# One build serves the lint and the tests: clippy's driver (what `cargo clippy` runs) compiles
# parstat's own crates, warnings denied, in the build the tests run, so the dependencies are
# compiled once instead of once more for clippy's check build (5.5 minutes on a cold machine).
export RUSTC_WORKSPACE_WRAPPER="$(rustc --print sysroot)/bin/clippy-driver"
export CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"
log "clippy (warnings denied) and the build of every target, --all-features"
cargo test --workspace --all-targets --all-features --no-run
if ! wait "$installing"; then
    cat "$install_log" >&2
    echo "installing the packages the tests need failed (log above)" >&2
    exit 1
fi
cat "$install_log" >&2
log "cargo test --workspace --all-targets --all-features (the Ballista cluster included)"
cargo test --workspace --all-targets --all-features
