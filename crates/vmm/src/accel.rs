//! Whether KVM really runs guests here. `/dev/kvm` existing proves nothing: on some hosts
//! (nested clouds, this project's CI machines) QEMU opens it and the guest never executes an
//! instruction. So a probe boots a 512-byte boot sector that writes to QEMU's debug-exit port,
//! and KVM counts only when QEMU exits with the code it wrote.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use crate::qemu::{Accel, Qemu};

/// The value the probe writes; QEMU exits with `(value << 1) | 1`.
const PROBE_VALUE: u8 = 0x21;
/// QEMU's exit code when the probe sector ran.
pub const PROBE_EXIT_CODE: i32 = (PROBE_VALUE as i32) << 1 | 1;

/// A real-mode boot sector: `mov al, 0x21; out 0xf4, al; cli; hlt; jmp $-2`, signed 0x55AA.
fn boot_sector() -> [u8; 512] {
    let mut s = [0u8; 512];
    s[..8].copy_from_slice(&[0xB0, PROBE_VALUE, 0xE6, 0xF4, 0xFA, 0xF4, 0xEB, 0xFD]);
    s[510] = 0x55;
    s[511] = 0xAA;
    s
}

/// [`Accel::Kvm`] when a probe guest runs under KVM within `limit`, else [`Accel::Tcg`].
/// `work` holds the probe's boot sector. `GRIDOS_NO_KVM` set skips the probe.
pub fn probe(qemu: &Qemu, work: &Path, limit: Duration) -> Accel {
    if std::env::var_os("GRIDOS_NO_KVM").is_some()
        || std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_err()
    {
        return Accel::Tcg;
    }
    let code = run_probe(qemu, work, Accel::Kvm, limit);
    let accel = if code == Some(PROBE_EXIT_CODE) {
        Accel::Kvm
    } else {
        Accel::Tcg
    };
    tracing::info!(accel = accel.name(), ?code, "KVM probe");
    accel
}

/// Boots the probe sector under `accel` and returns QEMU's exit code, `None` when it did not
/// exit within `limit` or could not start.
pub fn run_probe(qemu: &Qemu, work: &Path, accel: Accel, limit: Duration) -> Option<i32> {
    let sector = work.join("kvm-probe.img");
    // SeaBIOS will not read a disk smaller than one cylinder: the sector is padded (sparse).
    let written = std::fs::write(&sector, boot_sector()).and_then(|()| {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&sector)?
            .set_len(1 << 20)
    });
    if written.is_err() {
        return None;
    }
    let child = qemu
        .command()
        .arg("-machine")
        .arg(format!("q35,accel={}", accel.name()))
        .args(["-cpu", "max", "-m", "16M"])
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .arg("-drive")
        .arg(format!(
            "file={},format=raw,if=ide",
            sector.display().to_string().replace(',', ",,")
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut child) = child else {
        return None;
    };
    let code = hosttools::wait_within(&mut child, limit)
        .ok()
        .flatten()
        .and_then(|status| status.code());
    let _ = std::fs::remove_file(&sector);
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_sector_is_bootable_and_writes_the_debug_exit_port() {
        let s = boot_sector();
        assert_eq!(&s[510..], &[0x55, 0xAA]);
        assert_eq!(s[1], PROBE_VALUE);
        assert_eq!(s[3], 0xF4);
    }
}
