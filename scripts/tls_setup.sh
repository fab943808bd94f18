#!/usr/bin/env bash
# TLS for the tests: a test CA and a server certificate for 127.0.0.1/localhost (plus a second,
# untrusted CA with its own server certificate), then TLS switched on in the local PostgreSQL
# and MariaDB with that certificate. Idempotent: certificates are made once and kept, and a
# server is reconfigured (MariaDB restarted) only when it does not already serve them.
# Plain connections keep working: nothing here requires TLS of a client.
#
# Usage: scripts/tls_setup.sh   (as root; scripts/test.sh calls it)
set -euo pipefail

DIR="${PARSTAT_TLS_DIR:-/var/lib/parstat-tls}"
log() { printf '==> %s\n' "$*" >&2; }

# --- certificates -----------------------------------------------------------------------------
# ca.pem signs server.pem (the servers' certificate); other-ca.pem signs other-server.pem,
# which the tests use as a certificate that must not verify.
make_ca() { # name subject
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -sha256 \
        -keyout "$DIR/$1.key" -out "$DIR/$1.pem" -subj "/CN=$2" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
}
make_server() { # name ca
    local ext
    ext=$(mktemp)
    printf '%s\n' "basicConstraints=critical,CA:FALSE" \
        "keyUsage=critical,digitalSignature,keyEncipherment" \
        "extendedKeyUsage=serverAuth" \
        "subjectAltName=IP:127.0.0.1,DNS:localhost" >"$ext"
    openssl req -newkey rsa:2048 -nodes -keyout "$DIR/$1.key" -out "$DIR/$1.csr" \
        -subj "/CN=localhost" 2>/dev/null
    openssl x509 -req -in "$DIR/$1.csr" -CA "$DIR/$2.pem" -CAkey "$DIR/$2.key" \
        -CAcreateserial -days 3650 -sha256 -extfile "$ext" -out "$DIR/$1.pem" 2>/dev/null
    rm -f "$ext" "$DIR/$1.csr"
}
valid() { [ -s "$DIR/$1.pem" ] && openssl x509 -in "$DIR/$1.pem" -noout -checkend 2592000 >/dev/null 2>&1; }

mkdir -p "$DIR"
chmod 755 "$DIR"
if ! valid ca || ! valid server || ! valid other-ca || ! valid other-server; then
    log "generating the test CA and server certificates in $DIR"
    make_ca ca "parstat test CA"
    make_server server ca
    make_ca other-ca "parstat untrusted test CA"
    make_server other-server other-ca
fi
chmod 644 "$DIR"/*.pem
chmod 600 "$DIR"/*.key
# Each server reads its own copy of the key: PostgreSQL refuses a key others can read.
install -m 600 -o postgres -g postgres "$DIR/server.key" "$DIR/postgres.key"
install -m 600 -o mysql -g mysql "$DIR/server.key" "$DIR/mysql.key"

# --- PostgreSQL: reloaded, not restarted ------------------------------------------------------
psql_c() { psql -h 127.0.0.1 -U postgres -d postgres -Atqc "$1"; }
if [ "$(psql_c "SHOW ssl_cert_file")" != "$DIR/server.pem" ] || [ "$(psql_c "SHOW ssl")" != on ]; then
    log "switching on TLS in PostgreSQL"
    psql_c "ALTER SYSTEM SET ssl_cert_file = '$DIR/server.pem'"
    psql_c "ALTER SYSTEM SET ssl_key_file = '$DIR/postgres.key'"
    psql_c "ALTER SYSTEM SET ssl = on"
    psql_c "SELECT pg_reload_conf()" >/dev/null
    sleep 1
fi
# The served certificate must be ours (a bad key would leave the old one in place).
if ! openssl s_client -starttls postgres -connect 127.0.0.1:5432 -CAfile "$DIR/ca.pem" \
    -verify_return_error -verify_hostname localhost </dev/null >/dev/null 2>&1; then
    echo "PostgreSQL does not serve $DIR/server.pem over TLS; see its log" >&2
    exit 1
fi

# --- MariaDB: its TLS settings are read at start only, so a restart when they change ----------
CNF=/etc/mysql/conf.d/parstat-tls.cnf
want=$(printf '%s\n' "# TLS for parstat's tests (scripts/tls_setup.sh)" "[mysqld]" \
    "ssl_cert = $DIR/server.pem" "ssl_key = $DIR/mysql.key")
mkdir -p /etc/mysql/conf.d
if [ "$(cat "$CNF" 2>/dev/null)" != "$want" ]; then
    printf '%s\n' "$want" >"$CNF"
fi
if ! grep -q '^!includedir /etc/mysql/conf.d/' /etc/mysql/my.cnf; then
    printf '\n!includedir /etc/mysql/conf.d/\n' >>/etc/mysql/my.cnf
fi
my_c() { mariadb -h 127.0.0.1 -u root -N -B -e "$1"; }
if [ "$(my_c "SELECT @@have_ssl, @@ssl_cert" | tr '\t' ' ')" != "YES $DIR/server.pem" ]; then
    # Other tests may be using the server: wait (a while) until only we are connected.
    for _ in $(seq 1 30); do
        [ "$(my_c "SELECT COUNT(*) FROM information_schema.processlist WHERE id <> CONNECTION_ID() AND user <> 'system user' AND command <> 'Daemon'")" = 0 ] && break
        sleep 1
    done
    log "restarting MariaDB with TLS on"
    mariadb-admin -h 127.0.0.1 -u root shutdown
    for _ in $(seq 1 30); do [ -e /run/mysqld/mysqld.pid ] || break; sleep 1; done
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
    for _ in $(seq 1 30); do
        mariadb-admin -h 127.0.0.1 -u root status >/dev/null 2>&1 && break
        sleep 1
    done
    if [ "$(my_c "SELECT @@have_ssl")" != YES ]; then
        echo "MariaDB did not start with TLS; see /var/log/mysql/error.log" >&2
        exit 1
    fi
fi
log "TLS is on in PostgreSQL and MariaDB (CA: $DIR/ca.pem)"
