#!/usr/bin/env bash
# End-to-end test (issue 5): the real image (make image) boots in QEMU with 2 CPUs, 2 GiB,
# a 20 GB SSD and a 50 GB HDD (sparse files), registers with a grid-registry on 127.0.0.1
# (SQLite), reports the capacity QEMU gave it, comes back as the same node after Ctrl-Alt-Del
# on the same disks, and delivers every report queued while the registry was stopped.
# The scenario is `gridos-lab e2e` (crates/lab/src/e2e.rs); this script builds what it needs.
#
# Env: SKIP_BUILD=1  use out/ and target/debug as they are
#      E2E_ARGS="…"  extra flags for gridos-lab e2e (e.g. --outage 30)
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$repo"
target_dir="${CARGO_TARGET_DIR:-$repo/target}"
for tool in qemu-system-x86_64 cpio; do
    command -v "$tool" >/dev/null || { echo "e2e: FAIL: missing $tool" >&2; exit 1; }
done
if [ -z "${SKIP_BUILD:-}" ]; then
    make --no-print-directory image >&2
    nice -n 10 cargo build -q -p grid-registry -p grid-cli -p gridos-lab >&2
fi
# shellcheck disable=SC2086
exec "$target_dir/debug/gridos-lab" e2e --image out --work build/e2e --bin-dir "$target_dir/debug" ${E2E_ARGS:-}
