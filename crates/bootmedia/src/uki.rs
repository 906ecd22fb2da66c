//! The unified kernel image: systemd's EFI stub with the kernel, initramfs, command line and
//! os-release as PE sections, so UEFI firmware boots the node from one file
//! (`EFI/BOOT/BOOTX64.EFI`) and Secure Boot can sign all of it at once.

use std::path::{Path, PathBuf};

use crate::{tools, MediaError, Options, Release};

/// What the stub shows as the entry's name.
const OS_RELEASE: &str = "NAME=gridos\nID=gridos\nPRETTY_NAME=\"gridos node\"\n";

/// Where the sections go in the image's address space: after the stub's own sections (which
/// end below 0x20000 in Debian 12's stub), the kernel at 32 MiB and the initramfs after it,
/// each 1 MiB-aligned, as systemd's documentation lays them out for `objcopy`.
const OSREL_VMA: u64 = 0x20000;
const CMDLINE_VMA: u64 = 0x30000;
const LINUX_VMA: u64 = 0x200_0000;

fn align_mib(v: u64) -> u64 {
    v.div_ceil(1 << 20) << 20
}

/// Writes the unified kernel image `out` from the release files and `cmdline`; `scratch` is
/// a folder for the section files. Returns its size in bytes.
pub fn write(
    vmlinuz: &Path,
    initramfs: &Path,
    cmdline: &str,
    scratch: &Path,
    out: &Path,
) -> Result<u64, MediaError> {
    let kernel_len = std::fs::metadata(vmlinuz)
        .map_err(|source| MediaError::Write {
            path: vmlinuz.into(),
            source,
        })?
        .len();
    tools::read_data(tools::EFI_STUB)?;
    let osrel = tools::scratch(scratch, "os-release", OS_RELEASE.as_bytes())?;
    // The stub hands the section to the kernel as it is: no newline at the end.
    let cmd = tools::scratch(scratch, "cmdline.txt", cmdline.as_bytes())?;
    let initrd_vma = align_mib(LINUX_VMA + kernel_len);
    let section = |name: &str, file: &Path| format!("{name}={}", file.display());
    let vma = |name: &str, at: u64| format!("{name}=0x{at:x}");
    let args: Vec<String> = vec![
        "--add-section".into(),
        section(".osrel", &osrel),
        "--change-section-vma".into(),
        vma(".osrel", OSREL_VMA),
        "--add-section".into(),
        section(".cmdline", &cmd),
        "--change-section-vma".into(),
        vma(".cmdline", CMDLINE_VMA),
        "--add-section".into(),
        section(".linux", vmlinuz),
        "--change-section-vma".into(),
        vma(".linux", LINUX_VMA),
        "--add-section".into(),
        section(".initrd", initramfs),
        "--change-section-vma".into(),
        vma(".initrd", initrd_vma),
        tools::EFI_STUB.into(),
        out.display().to_string(),
    ];
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
    tools::run("objcopy", &args)?;
    std::fs::metadata(out)
        .map(|m| m.len())
        .map_err(|source| MediaError::Write {
            path: out.into(),
            source,
        })
}

/// Signs the unified kernel image in place with `key` and `cert` (PEM) for Secure Boot.
pub fn sign(uki: &Path, key: &Path, cert: &Path) -> Result<(), MediaError> {
    let signed = uki.with_extension("signed");
    tools::run(
        "sbsign",
        &[
            "--key".as_ref(),
            key.as_os_str(),
            "--cert".as_ref(),
            cert.as_os_str(),
            "--output".as_ref(),
            signed.as_os_str(),
            uki.as_os_str(),
        ],
    )?;
    std::fs::rename(&signed, uki).map_err(|source| MediaError::Write {
        path: uki.into(),
        source,
    })
}

/// A unified kernel image made for a medium.
pub(crate) struct Made {
    /// `BOOTX64.EFI` in the scratch folder.
    pub path: PathBuf,
    /// Its size before signing.
    pub unsigned_bytes: u64,
    /// Its size as it goes on the medium.
    pub bytes: u64,
    /// Signed for Secure Boot.
    pub signed: bool,
}

/// The release's unified kernel image in `dir`, signed when `opts` asks; `medium` names the
/// medium in the progress lines.
pub(crate) fn make(
    rel: &Release,
    dir: &Path,
    opts: &Options,
    medium: &str,
) -> Result<Made, MediaError> {
    (opts.progress)(&format!("{medium}: unified kernel image (UEFI)"));
    let path = dir.join("BOOTX64.EFI");
    let unsigned_bytes = write(&rel.vmlinuz, &rel.initramfs, &rel.cmdline, dir, &path)?;
    let signed = match &opts.signing {
        Some(s) => {
            (opts.progress)(&format!("{medium}: signing it for Secure Boot"));
            sign(&path, &s.key, &s.cert)?;
            true
        }
        None => false,
    };
    let bytes = std::fs::metadata(&path)
        .map(|m| m.len())
        .unwrap_or(unsigned_bytes);
    Ok(Made {
        path,
        unsigned_bytes,
        bytes,
        signed,
    })
}
