#!/usr/bin/env bash
# Agent RSS idle: the release gridos-agent against a local registry (SQLite in a temp dir),
# read from /proc after it registered and sent its first uptime reports.
# Reads the host's /sys and /proc; no disk is opened (--devfs points at an empty folder,
# so the seek test cannot run and queue/rotational is trusted). Only 127.0.0.1 is contacted.
#   BIN_DIR=target/release bash crates/agent/bench-rss.sh
set -euo pipefail
bin=${BIN_DIR:-${CARGO_TARGET_DIR:-target}/release}
port=${PORT:-18480}
idle=${IDLE:-15}
url=http://127.0.0.1:$port
work=$(mktemp -d)
reg=""; agent=""
cleanup() { [ -n "$agent" ] && kill "$agent" 2>/dev/null; [ -n "$reg" ] && kill "$reg" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
"$bin/grid-registry" serve --db "sqlite://$work/r.db" --listen "127.0.0.1:$port" >"$work/registry.log" 2>&1 &
reg=$!
grid() { "$bin/grid" --registry "$url" --key "$work/key" "$@"; }
for _ in $(seq 50); do grid stats >/dev/null 2>&1 && break; sleep 0.1; done
grid key new >/dev/null
grid twin register >/dev/null
grid farm create bench >/dev/null
mkdir -p "$work/nodev"
"$bin/gridos-agent" --cmdline /dev/null --registry "$url" --farm 1 --state-dir "$work/state" \
  --devfs "$work/nodev" --uptime-interval 5 2>"$work/agent.log" &
agent=$!
for _ in $(seq 100); do grep -q registered "$work/agent.log" && break; sleep 0.1; done
grep registered "$work/agent.log" >&2
sleep "$idle"
echo "binary_bytes=$(stat -c %s "$bin/gridos-agent")"
grep -E '^(VmRSS|VmHWM|Threads)' "/proc/$agent/status"
