#!/usr/bin/env bash
# Issue 14's benchmarks (BENCHMARKS.md, "Minting, audit and the web page"), on SQLite and
# PostgreSQL: closing one month of periods for 1,000 to 10,000 nodes (about 11 M signed
# reports at 10,000), `grid audit farm` against the ed25519 ceiling, and the web page's time
# to first byte with 100,000 nodes. Results go to build/ledger-bench/*.json.
#
#   make ledger-bench                       # everything (about 40 minutes, 20 GB of disk)
#   NODES=1000,3000 make ledger-bench       # smaller grids
set -euo pipefail
cd "$(dirname "$0")/../.."
out=build/ledger-bench
mkdir -p "$out"
nodes=${NODES:-1000,3000,10000}
web_nodes=${WEB_NODES:-100000}
perf=target/release/gridos-perf
for db in sqlite postgres; do
    echo "== close-periods ($db, $nodes nodes)" >&2
    tests/with-postgres.sh "$perf" --out "$out/close-$db.json" close-periods --db "$db" --nodes "$nodes" >/dev/null
    echo "== audit ($db)" >&2
    tests/with-postgres.sh "$perf" --out "$out/audit-$db.json" audit --db "$db" >/dev/null
    echo "== web-ttfb ($db, $web_nodes nodes)" >&2
    tests/with-postgres.sh "$perf" --out "$out/web-$db.json" web-ttfb --db "$db" --nodes "$web_nodes" >/dev/null
done
cat "$out"/*.json
