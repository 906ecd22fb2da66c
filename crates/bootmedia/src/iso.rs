//! The hybrid ISO: boots from a CD on BIOS (isolinux) and UEFI (an El Torito FAT image
//! holding the unified kernel image), and from a stick it is written to raw (isohybrid MBR for
//! BIOS, a GPT entry for the FAT image for UEFI). Made with xorriso, as Debian's own ISOs are.

use std::path::Path;

use crate::{tools, uki, usb, Built, MediaError, Options, Release};

/// The ISO's volume id: how the node recognises the medium it booted from when the ISO was
/// written to a stick (and never puts its cache there).
pub const VOLUME_ID: &str = "GRIDOS";

const MIB: u64 = 1 << 20;

/// Writes the hybrid ISO `out` (a file) from `release`.
pub fn write(release: &Path, out: &Path, opts: &Options) -> Result<Built, MediaError> {
    let rel = Release::open(release, &opts.append, &[])?;
    let parent = crate::parent_of(out);
    let scratch = crate::scratch_dir(parent)?;
    let dir = scratch.path();
    let tree = dir.join("tree");
    let mkdir = |p: &Path| {
        std::fs::create_dir_all(p).map_err(|source| MediaError::Write {
            path: p.into(),
            source,
        })
    };
    mkdir(&tree.join("isolinux"))?;

    let uki = uki::make(&rel, dir, opts, "iso")?;
    let (efi, efi_len) = (&uki.path, uki.bytes);
    let fat = tree.join("efi.img");
    let fat_bytes = (efi_len + efi_len / 16 + 2 * MIB).div_ceil(MIB) * MIB;
    (opts.progress)(&format!(
        "iso: El Torito FAT image of {} MiB",
        fat_bytes / MIB
    ));
    tools::mkfs_fat(
        &fat,
        fat_bytes,
        VOLUME_ID,
        tools::fnv32(rel.cmdline.as_bytes()),
        false,
    )?;
    tools::mmd(&fat, &["::/EFI", "::/EFI/BOOT"])?;
    tools::mcopy(&fat, efi, "::/EFI/BOOT/BOOTX64.EFI")?;

    (opts.progress)("iso: isolinux (BIOS)");
    let copy = |from: &Path, to: &Path| {
        std::fs::copy(from, to)
            .map(|_| ())
            .map_err(|source| MediaError::Write {
                path: to.into(),
                source,
            })
    };
    copy(&rel.vmlinuz, &tree.join("vmlinuz"))?;
    copy(&rel.initramfs, &tree.join("initramfs.img"))?;
    for (data, name) in [
        (tools::ISOLINUX_BIN, "isolinux.bin"),
        (tools::LDLINUX_C32, "ldlinux.c32"),
    ] {
        let bytes = tools::read_data(data)?;
        tools::scratch(&tree.join("isolinux"), name, &bytes)?;
    }
    tools::scratch(
        &tree.join("isolinux"),
        "isolinux.cfg",
        usb::syslinux_cfg(&rel.cmdline).as_bytes(),
    )?;
    tools::read_data(tools::ISOHYBRID_MBR)?;

    (opts.progress)("iso: xorriso");
    let iso = dir.join("node.iso");
    let args: Vec<&std::ffi::OsStr> = vec![
        "-as".as_ref(),
        "mkisofs".as_ref(),
        "-quiet".as_ref(),
        "-o".as_ref(),
        iso.as_os_str(),
        "-V".as_ref(),
        VOLUME_ID.as_ref(),
        "-R".as_ref(),
        "-isohybrid-mbr".as_ref(),
        tools::ISOHYBRID_MBR.as_ref(),
        "-c".as_ref(),
        "isolinux/boot.cat".as_ref(),
        "-b".as_ref(),
        "isolinux/isolinux.bin".as_ref(),
        "-no-emul-boot".as_ref(),
        "-boot-load-size".as_ref(),
        "4".as_ref(),
        "-boot-info-table".as_ref(),
        "-eltorito-alt-boot".as_ref(),
        "-e".as_ref(),
        "efi.img".as_ref(),
        "-no-emul-boot".as_ref(),
        "-isohybrid-gpt-basdat".as_ref(),
        "-partition_offset".as_ref(),
        "16".as_ref(),
        tree.as_os_str(),
    ];
    tools::run("xorriso", &args)?;
    let bytes = std::fs::metadata(&iso)
        .map_err(|source| MediaError::Write {
            path: iso.clone(),
            source,
        })?
        .len();
    let f = std::fs::File::open(&iso).map_err(|source| MediaError::Write {
        path: iso.clone(),
        source,
    })?;
    f.sync_all().map_err(|source| MediaError::Write {
        path: iso.clone(),
        source,
    })?;
    crate::publish(&iso, out)?;
    Ok(Built {
        path: out.into(),
        bytes,
        uki_bytes: uki.unsigned_bytes,
        cmdline: rel.cmdline,
        signed: uki.signed,
    })
}
