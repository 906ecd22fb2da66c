#!/usr/bin/env bash
# Prints the tests a run skipped: crates/test-infra appends one `SKIPPED <test>: <reason>` line
# per skip to the file GRIDOS_SKIP_LOG names, and only when GRIDOS_TEST_SKIP allowed it
# (docs/testing.md). Usage: tests/skip-summary.sh LOG
set -euo pipefail

log=$1
n=0
if [[ -s "$log" ]]; then
    n=$(wc -l <"$log")
fi
if (( n == 0 )); then
    echo "skipped tests: 0"
    exit 0
fi
echo "skipped tests: $n (GRIDOS_TEST_SKIP=${GRIDOS_TEST_SKIP:-}), each one not run:"
sed 's/^/  /' "$log"
