#!/usr/bin/env bash
# End-to-end test: the real image (make image) boots in QEMU in a fixed list of machine shapes
# (default CPU model and -cpu max; 1, 2 and 4 vCPUs; SSD only, HDD only, SSD+HDD, no disk, a disk
# hot-added after boot), two at a time, each registering with its own grid-registry on
# 127.0.0.1 (SQLite); each checks the registered CRU/MRU/SRU/HRU and where the cache went. The
# SSD+HDD shape also comes back as the same node after Ctrl-Alt-Del on the same disks and
# delivers every report queued while the registry was stopped. docs/lab.md has the list.
# The scenario is `gridos-lab e2e` (crates/lab/src/e2e.rs); this script builds what it needs.
#
# Env: SKIP_BUILD=1  use out/ and target/debug as they are
#      E2E_ARGS="…"  extra flags for gridos-lab e2e (e.g. --outage 30, --shapes max-1cpu-nodisk)
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$repo"
target_dir="${CARGO_TARGET_DIR:-$repo/target}"
for tool in qemu-system-x86_64 cpio; do
    command -v "$tool" >/dev/null || {
        pkg=$(awk -v t="$tool" '$1 == t {print $2}' tools/commands.txt)
        echo "e2e: FAIL: $tool is not installed: it comes with the Debian package $pkg (tools/need-packages.sh)" >&2
        exit 1
    }
done
if [ -z "${SKIP_BUILD:-}" ]; then
    # The VM runtime extension is signed with the key whose public half the image holds.
    make --no-print-directory image extensions >&2
    nice -n 10 cargo build -q -p registry -p cli -p lab >&2
fi
# shellcheck disable=SC2086
exec "$target_dir/debug/gridos-lab" e2e --image out --work build/e2e --bin-dir "$target_dir/debug" ${E2E_ARGS:-}
