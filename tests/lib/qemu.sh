# Shared by the QEMU tests (sourced). gridos-lab (crates/lab/src/qemu.rs) does the same probe.

# pick_accel VMLINUZ WORKDIR: prints "kvm" when a probe guest really boots with KVM, else
# "tcg". /dev/kvm exists on hosts where KVM guests still fail, so its presence proves nothing:
# the kernel alone, with no initramfs, must get as far as looking for a root filesystem
# (or panicking for want of one) within 8 s. GRIDOS_NO_KVM=1 skips the probe.
pick_accel() {
    local vmlinuz="$1" work="$2"
    if [ ! -w /dev/kvm ] || [ -n "${GRIDOS_NO_KVM:-}" ]; then
        echo tcg
        return
    fi
    rm -f "$work/kvm-probe.log"
    timeout 8 qemu-system-x86_64 -accel kvm -machine q35 -m 256 -display none -nodefaults \
        -no-reboot -serial "file:$work/kvm-probe.log" -kernel "$vmlinuz" \
        -append "console=ttyS0 panic=-1" >/dev/null 2>&1 || true
    if grep -q "Kernel panic\|VFS:" "$work/kvm-probe.log" 2>/dev/null; then echo kvm; else echo tcg; fi
}
