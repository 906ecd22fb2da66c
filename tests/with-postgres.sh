#!/usr/bin/env bash
# Runs a command with GRIDOS_TEST_POSTGRES_URL pointing at a real PostgreSQL server.
# If the variable is already set, that server is used; otherwise a throwaway cluster is
# created in a temporary directory, listening on 127.0.0.1 only, and removed afterwards.
# Without this script each test process starts its own server (crates/test-infra), so
# PostgreSQL tests always run; one server for the whole run is just cheaper.
set -euo pipefail

if [[ -n "${GRIDOS_TEST_POSTGRES_URL:-}" ]]; then
    exec "$@"
fi

bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
if [[ -z "$bindir" || ! -x "$bindir/initdb" ]]; then
    # Each PostgreSQL test then fails naming the package, or is skipped and listed when
    # GRIDOS_TEST_SKIP allows it: one missing package does not hide every other test.
    echo "with-postgres: PostgreSQL server binaries not found under /usr/lib/postgresql (apt-get install postgresql)" >&2
    exec "$@"
fi

dir=$(mktemp -d /tmp/gridos-pg.XXXXXX)
# A free port on 127.0.0.1: ask the kernel through python3 when it is there, else probe.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null ||
    for p in $(shuf -i 20000-60000 -n 50); do
        (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; break; }
    done)
as_pg=()
if [[ $(id -u) -eq 0 ]]; then
    # PostgreSQL refuses to run as root.
    chown postgres: "$dir"
    as_pg=(runuser -u postgres --)
fi

cleanup() {
    "${as_pg[@]}" "$bindir/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$dir"
}
trap cleanup EXIT

"${as_pg[@]}" "$bindir/initdb" -D "$dir/data" -A trust -U postgres -E UTF8 >"$dir/initdb.log" 2>&1 ||
    { cat "$dir/initdb.log" >&2; exit 1; }
"${as_pg[@]}" "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c max_connections=300 -c fsync=on" start >/dev/null ||
    { cat "$dir/server.log" >&2; exit 1; }

export GRIDOS_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$port/postgres"
echo "with-postgres: throwaway PostgreSQL at $GRIDOS_TEST_POSTGRES_URL" >&2
"$@"
