#!/usr/bin/env bash
# QEMU boot test of the gridos init (issue 4).
#
# Boots Debian's packaged kernel (taken with `apt-get download`, never installed)
# with an initramfs holding the static init as /init, gridctl, busybox, the test
# services of ./services and the virtio modules, then checks the serial console.
#
# Env: GRIDOS_KERNEL_ROOT=DIR  use an extracted kernel package (boot/vmlinuz-*, lib/modules/*)
#      BOOT_TEST_OUT=DIR       work folder (default: build/boot-init under the repo)
#      BOOT_TEST_TIMEOUT=SEC   wall-clock limit for the guest (default 240)
#      BOOT_TEST_FULL_INDEX=1  ship the kernel's full modules.alias/dep (memory measurement)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
out="${BOOT_TEST_OUT:-$repo/build/boot-init}"
timeout_s="${BOOT_TEST_TIMEOUT:-240}"
target_dir="${CARGO_TARGET_DIR:-$repo/target}"
mkdir -p "$out"
log() { echo "boot-init: $*" >&2; }
fail() { echo "boot-init: FAIL: $*" >&2; exit 1; }

for tool in qemu-system-x86_64 depmod cpio dpkg-deb apt-get gzip xz; do
    command -v "$tool" >/dev/null || fail "missing $tool (apt-get install qemu-system-x86 kmod cpio xz-utils)"
done

# 1. Kernel: an extracted Debian linux-image package.
fetch_deb() { # name -> extracted dir
    local name="$1" dir="$out/pkgs/$1"
    if [ ! -d "$dir" ]; then
        mkdir -p "$out/pkgs"
        (cd "$out/pkgs" && apt-get download "$name" >/dev/null 2>&1) || fail "apt-get download $name"
        dpkg-deb -x "$out/pkgs/${name}"_*.deb "$dir.tmp"
        mv "$dir.tmp" "$dir"
    fi
    echo "$dir"
}
if [ -n "${GRIDOS_KERNEL_ROOT:-}" ]; then
    kroot="$GRIDOS_KERNEL_ROOT"; kpkg=""
else
    resolve() { apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}'; }
    kpkg="$(resolve)"
    if [ -z "$kpkg" ]; then apt-get update -q >&2 || true; kpkg="$(resolve)"; fi
    [ -n "$kpkg" ] || fail "cannot resolve linux-image-amd64 (run apt-get update)"
    kroot="$(fetch_deb "$kpkg")"
fi
kver="$(ls "$kroot/lib/modules" | head -n1)"
vmlinuz="$kroot/boot/vmlinuz-$kver"
[ -f "$vmlinuz" ] || fail "no kernel at $vmlinuz"
log "kernel $kver from $kroot (package ${kpkg:-local override})"

# 2. busybox for the test services (the real image will not need it).
bbroot="$(fetch_deb busybox-static)"

# 3. Static init and gridctl.
if [ -z "${SKIP_BUILD:-}" ]; then
    RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static" nice -n 10 cargo build --profile initramfs \
        --target x86_64-unknown-linux-gnu -p init -p gridctl --manifest-path "$repo/Cargo.toml" >&2
fi
bin="$target_dir/x86_64-unknown-linux-gnu/initramfs"

# 4. Initramfs tree.
root="$out/root"
rm -rf "$root"
mkdir -p "$root"/{bin,dev,proc,sys,run,tmp,etc/gridos/services,var/log,lib/modules/"$kver"}
install -m 0755 "$bin/init" "$root/init"
install -m 0755 "$bin/gridctl" "$root/bin/gridctl"
install -m 0755 "$bbroot/bin/busybox" "$root/bin/busybox"
for a in sh sleep cat ls echo grep sed test tr ip hostname true timeout; do ln -s busybox "$root/bin/$a"; done
cp "$here"/services/*.yaml "$root/etc/gridos/services/"
mknod -m 600 "$root/dev/console" c 5 1 2>/dev/null || true
# Modules: the wanted ones and their dependency closure, indexed by depmod for this subset.
depmod -b "$kroot" "$kver"
mods=(virtio_pci virtio_net virtio_blk virtio_scsi)
declare -A seen=()
closure() {
    local m="$1" line f
    line="$(grep -E "/$m\.ko(\.[a-z]+)?:" "$kroot/lib/modules/$kver/modules.dep" | head -n1)" || return 0
    for f in ${line/:/}; do
        [ -n "${seen[$f]:-}" ] && continue
        seen[$f]=1
        mkdir -p "$root/lib/modules/$kver/$(dirname "$f")"
        cp "$kroot/lib/modules/$kver/$f" "$root/lib/modules/$kver/$f"
    done
}
for m in "${mods[@]}"; do closure "$m"; done
cp "$kroot/lib/modules/$kver"/modules.{builtin,builtin.modinfo,order} "$root/lib/modules/$kver/"
# Compressed modules as other kernels ship them: this kernel cannot decompress
# (no CONFIG_MODULE_DECOMPRESS), so init must do it: .xz (Debian's choice) on the hot-plug
# path and at coldplug. (.zst is left to kernels that decompress it themselves.)
xz --check=crc32 "$root/lib/modules/$kver/kernel/drivers/block/virtio_blk.ko"
xz --check=crc32 "$root/lib/modules/$kver/kernel/drivers/net/net_failover.ko"
depmod -b "$root" "$kver"
if [ -n "${BOOT_TEST_FULL_INDEX:-}" ]; then
    # Measure with the distribution kernel's whole index (as on a real node), modules subset only.
    cp "$kroot/lib/modules/$kver"/modules.{alias,dep} "$root/lib/modules/$kver/"
fi
log "modules in initramfs: $(cd "$root/lib/modules/$kver" && find kernel -name '*.ko*' | sort | tr '\n' ' ')"
(cd "$root" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet -R 0:0) | gzip -1 > "$out/initramfs.img"
log "initramfs $(du -h "$out/initramfs.img" | cut -f1)"

# 5. Accelerator: KVM only if a probe guest really boots with it.
. "$repo/tests/lib/qemu.sh"
accel=$(pick_accel "$vmlinuz" "$out")
log "accelerator: $accel"

# 6. Boot. The NIC is user-mode with restrict=on: the guest can reach nothing.
# The monitor is a FIFO pair so the script can act on the guest later: hot-plug
# a disk (a test file) in the "poweroff" scenario, press Ctrl-Alt-Del in "cad".
boot() { # scenario -> sets rc, wall, serial
    local scenario="$1" mon="$out/mon-$1" watcher reader start
    serial="$out/serial-$scenario.log"
    rm -f "$serial" "$mon.in" "$mon.out"
    mkfifo "$mon.in" "$mon.out"
    truncate -s 8M "$out/hotplug.img"
    cat "$mon.out" > "$out/monitor-$scenario.log" &
    reader=$!
    (
        for _ in $(seq 1 "$((timeout_s * 10))"); do
            if grep -q READY-FOR-HOTPLUG "$serial" 2>/dev/null; then
                echo "device_add virtio-blk-pci,drive=hd1,bus=rp1,id=hp1" > "$mon.in"
                exit 0
            fi
            if grep -q READY-FOR-CAD "$serial" 2>/dev/null; then
                echo "sendkey ctrl-alt-delete" > "$mon.in"
                exit 0
            fi
            sleep 0.1
        done
    ) &
    watcher=$!
    start=$(date +%s.%N)
    set +e
    timeout "$timeout_s" qemu-system-x86_64 -accel "$accel" -machine q35 -cpu max -m 512 -smp 1 \
        -display none -nodefaults -no-reboot -monitor "pipe:$mon" \
        -serial "file:$serial" \
        -netdev user,id=n0,restrict=on -device virtio-net-pci,netdev=n0 \
        -device pcie-root-port,id=rp1,chassis=1,slot=1 \
        -drive if=none,id=hd1,file="$out/hotplug.img",format=raw \
        -kernel "$vmlinuz" -initrd "$out/initramfs.img" \
        -append "console=ttyS0 quiet panic=-1 gridos.hostname=testnode gridos.farm=7 gridos.log=info gridos.wipe=bogus gridos.test=$scenario"
    rc=$?
    set -e
    kill "$watcher" "$reader" 2>/dev/null || true
    wait "$watcher" "$reader" 2>/dev/null || true
    wall=$(awk "BEGIN{printf \"%.1f\", $(date +%s.%N) - $start}")
    log "scenario $scenario: qemu exited with $rc after ${wall}s; serial console in $serial"
    [ "$rc" -eq 0 ] || { tail -n 60 "$serial" >&2; fail "$scenario: qemu exit status $rc"; }
    if grep -q "Kernel panic" "$serial"; then tail -n 60 "$serial" >&2; fail "$scenario: kernel panic"; fi
}
check() { grep -q -- "$1" "$serial" || { tail -n 60 "$serial" >&2; fail "$(basename "$serial"): serial console lacks: $1"; }; }

# 7a. Ctrl-Alt-Del: the kernel sends SIGINT to init, which stops everything and reboots.
boot cad
check "all services started services=13"
check "signal received action=Reboot"
check "all services stopped"
check "calling reboot(2) action=Reboot"
check "reboot: Restarting system"

# 7b. The main scenario: boot, drivers, services, hot-plug, gridctl poweroff.
boot poweroff
check "gridos init started as PID 1"
for m in /proc /sys /dev /dev/pts /dev/shm /run /tmp /sys/fs/cgroup; do check "mounted target=\"$m\""; done
check "cgroup2 controllers enabled"
check "hostname set hostname=testnode"
check "loopback up"
check "gridos.wipe=\"bogus\""
check "loaded module module=virtio_pci"
check "loaded module module=virtio_net"
check "loaded module module=net_failover file=kernel/drivers/net/net_failover.ko.xz"
check "NIC-OK"
check "hello from hello on testnode"
check "CONFINED cgroup=0::/services/confined mem=33554432 pids=8 Uid: 1000 1000 1000 1000 CapBnd: 0000000000002000 CapAmb: 0000000000002000 NoNewPrivs: 1"
check "all services started services=13"
check "INIT-RSS"
check "READY-FOR-HOTPLUG"
check "loaded module module=virtio_blk file=kernel/drivers/block/virtio_blk.ko.xz"
check "HOTPLUG-OK"
check "shutting down action=Poweroff"
check "service stopped service=\"finish\""
check "all services stopped"
check "filesystems synced and unmounted"
check "calling reboot(2) action=Poweroff"
check "reboot: Power down"

t_start=$(grep -m1 "gridos init started as PID 1" "$serial" | sed -E 's/^\[ *([0-9.]+)\].*/\1/')
t_all=$(grep -m1 "all services started" "$serial" | sed -E 's/^\[ *([0-9.]+)\].*/\1/')
rss=$(grep -m1 "INIT-RSS" "$serial" | sed -E 's/.*VmRSS:\s*//')
{
    echo "kernel=$kver package=${kpkg:-local:$kroot} accel=$accel"
    echo "pid1_start_guest_s=$t_start"
    echo "all_services_started_guest_s=$t_all"
    echo "pid1_to_all_started_s=$(awk "BEGIN{printf \"%.3f\", $t_all - $t_start}")"
    echo "init_rss_10_services=$rss"
    echo "init_size_bytes=$(stat -c %s "$bin/init")"
    echo "qemu_wall_s=$wall"
} | tee "$out/result.txt" >&2
echo "boot-init: 2 passed, 0 failed"
