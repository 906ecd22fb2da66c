#!/usr/bin/env bash
# Boot media figures for BENCHMARKS.md (`make media-bench`): the time `grid image build` takes
# for each format (release, pxe, usb, iso; the release build is part of each), each artifact's
# size, and the registry's time to serve /boot/{farm}/usb.img uncached (built on the request)
# and cached, on 127.0.0.1. Needs the static binaries (`make init`) and the media packages.
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$repo"
target_dir="${CARGO_TARGET_DIR:-$repo/target}"
work="${MEDIA_BENCH_WORK:-$repo/build/media-bench}"
runs="${MEDIA_BENCH_RUNS:-3}"
grid="$target_dir/debug/grid"
rm -rf "$work" && mkdir -p "$work"
build() { # format out
    SOURCE_DATE_EPOCH=0 "$grid" --registry http://10.0.2.2:8480 image build --quiet --farm 1 \
        --format "$1" -o "$2" --bin-dir "$target_dir/image-bin" --cache build/image-cache >/dev/null 2>&1
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "media-bench: grid image build, median of $runs runs"
for f in release pxe usb iso; do
    case $f in
        release|pxe) out="$work/$f" ;;
        usb) out="$work/node.img" ;;
        iso) out="$work/node.iso" ;;
    esac
    t=$(for _ in $(seq "$runs"); do
        s=$(date +%s.%N); build "$f" "$out"; e=$(date +%s.%N)
        awk -v s="$s" -v e="$e" 'BEGIN {print e - s}'
    done | median)
    case $f in
        release|pxe) size="vmlinuz $(stat -c %s "$out/vmlinuz") + initramfs.img $(stat -c %s "$out/initramfs.img")" ;;
        *) size="$(stat -c %s "$out")" ;;
    esac
    printf 'media-bench: %-8s %6.2f s  %s bytes\n' "$f" "$t" "$size"
done

# The registry: a farm, then usb.img uncached (a build per request: a new farm each run) and
# cached (the same farm again).
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$target_dir/debug/grid-registry" serve --db "sqlite://$work/registry.db" --listen "127.0.0.1:$port" \
    --release "$work/release" --public-url "http://10.0.2.2:$port" --boot-cache "$work/boot-cache" \
    >"$work/registry.log" 2>&1 &
reg=$!
trap 'kill $reg 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
url="http://127.0.0.1:$port"
key="$work/farmer.key"
"$grid" --registry "$url" --key "$key" key new >/dev/null
"$grid" --registry "$url" --key "$key" twin register >/dev/null
get() { curl -fs -o /dev/null -w '%{time_total} %{size_download}\n' "$url$1"; }
uncached=(); cached=()
for i in $(seq "$runs"); do
    id=$("$grid" --registry "$url" --key "$key" --json farm create "bench-$i" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
    uncached+=("$(get "/boot/$id/usb.img")")
    cached+=("$(get "/boot/$id/usb.img")")
done
u=$(printf '%s\n' "${uncached[@]}" | awk '{print $1}' | median)
c=$(printf '%s\n' "${cached[@]}" | awk '{print $1}' | median)
bytes=$(printf '%s\n' "${cached[@]}" | awk 'NR==1 {print $2}')
printf 'media-bench: registry /boot/{farm}/usb.img (%s bytes): uncached %.3f s, cached %.3f s (median of %s, curl on 127.0.0.1)\n' "$bytes" "$u" "$c" "$runs"
