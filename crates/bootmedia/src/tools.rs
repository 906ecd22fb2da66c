//! The Debian programs and files the boot media are made with. Each is run as a plain user
//! on plain files: no loop device, no mount, no root.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::MediaError;

/// systemd's EFI stub (Debian's `systemd-boot-efi`): the UEFI half of the USB image and ISO.
pub const EFI_STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";
/// syslinux's MBR that boots the GPT partition marked "legacy BIOS bootable".
pub const GPT_MBR: &str = "/usr/lib/syslinux/mbr/gptmbr.bin";
/// The BIOS loader's core module, beside isolinux.bin on the ISO.
pub const LDLINUX_C32: &str = "/usr/lib/syslinux/modules/bios/ldlinux.c32";
/// The BIOS CD loader (Debian's `isolinux`).
pub const ISOLINUX_BIN: &str = "/usr/lib/ISOLINUX/isolinux.bin";
/// The MBR that makes the ISO boot when written raw to a stick.
pub const ISOHYBRID_MBR: &str = "/usr/lib/ISOLINUX/isohdpfx.bin";

/// The Debian package holding a data file this crate reads.
fn package_of_file(path: &str) -> &'static str {
    match path {
        EFI_STUB => "systemd-boot-efi",
        GPT_MBR | LDLINUX_C32 => "syslinux-common",
        ISOLINUX_BIN | ISOHYBRID_MBR => "isolinux",
        _ => "(unknown)",
    }
}

/// Reads one of the data files above, naming its package when it is missing.
pub fn read_data(path: &'static str) -> Result<Vec<u8>, MediaError> {
    std::fs::read(path).map_err(|e| MediaError::Tool {
        tool: path.into(),
        detail: if e.kind() == std::io::ErrorKind::NotFound {
            let pkg = package_of_file(path);
            format!(
                "missing: it comes with the Debian package {pkg} \
                 (`sudo apt-get install --no-install-recommends {pkg}`, or `tools/need-packages.sh media` as root)"
            )
        } else {
            e.to_string()
        },
    })
}

/// Runs `program args…`; a missing program names its package, a failure shows its stderr.
pub fn run(program: &str, args: &[&std::ffi::OsStr]) -> Result<(), MediaError> {
    run_stdin(program, args, &[])
}

/// [`run`] with `input` on the program's standard input.
pub fn run_stdin(program: &str, args: &[&std::ffi::OsStr], input: &[u8]) -> Result<(), MediaError> {
    let spawn_err = |e| MediaError::Tool {
        tool: program.into(),
        detail: hosttools::spawn_error(program, e).to_string(),
    };
    let mut child = Command::new(program)
        .args(args)
        // mtools otherwise refuses FAT images whose geometry is not a floppy's.
        .env("MTOOLS_SKIP_CHECK", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        // A program that exits without reading says why on stderr; that is the error shown.
        let _ = stdin.write_all(input);
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let said = if stderr.trim().is_empty() {
        stdout
    } else {
        stderr
    };
    Err(MediaError::Tool {
        tool: program.into(),
        detail: format!("{}: {}", out.status, said.trim()),
    })
}

/// Copies `src` into the FAT image `fat` as `dest` (`::/path`).
pub fn mcopy(fat: &Path, src: &Path, dest: &str) -> Result<(), MediaError> {
    run(
        "mcopy",
        &[
            "-i".as_ref(),
            fat.as_os_str(),
            "-o".as_ref(),
            "-m".as_ref(),
            src.as_os_str(),
            dest.as_ref(),
        ],
    )
}

/// Makes directories in the FAT image `fat`.
pub fn mmd(fat: &Path, dirs: &[&str]) -> Result<(), MediaError> {
    let mut args: Vec<&std::ffi::OsStr> = vec!["-i".as_ref(), fat.as_os_str()];
    args.extend(dirs.iter().map(|d| std::ffi::OsStr::new(*d)));
    run("mmd", &args)
}

/// Formats a new FAT image file of `bytes` (a whole number of KiB) with label `label`.
/// `fat32` forces FAT32, which the UEFI specification names for system partitions on disks;
/// otherwise mkfs.fat picks FAT12/16 by size (the ISO's El Torito image).
pub fn mkfs_fat(
    fat: &Path,
    bytes: u64,
    label: &str,
    volume_id: u32,
    fat32: bool,
) -> Result<(), MediaError> {
    let _ = std::fs::remove_file(fat);
    let id = format!("{volume_id:08x}");
    let kib = (bytes / 1024).to_string();
    let mut args: Vec<std::ffi::OsString> = Vec::new();
    if fat32 {
        args.extend(["-F".into(), "32".into()]);
    }
    args.extend([
        "-n".into(),
        label.into(),
        "-i".into(),
        id.into(),
        "-C".into(),
        fat.as_os_str().to_owned(),
        kib.into(),
    ]);
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    run("mkfs.fat", &args)
}

/// A file in `dir` holding `bytes`, for a tool that takes its input from a file.
pub fn scratch(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf, MediaError> {
    let path = dir.join(name);
    std::fs::write(&path, bytes).map_err(|source| MediaError::Write {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

/// A stable 32-bit number from `bytes` (FNV-1a), for volume ids and GUIDs that must be the
/// same for the same inputs, so two builds of one release and farm give one image.
pub fn fnv32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}
