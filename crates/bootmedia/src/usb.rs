//! The USB stick image: a GPT disk with one EFI system partition (FAT32, label `GRIDOS`,
//! partition name `gridos-boot`) that boots on UEFI and on legacy BIOS.
//!
//! - UEFI: `EFI/BOOT/BOOTX64.EFI`, the unified kernel image ([`crate::uki`]).
//! - BIOS: syslinux's `gptmbr.bin` in the protective MBR starts the partition marked
//!   "legacy BIOS bootable", whose FAT boot sector is syslinux's; `syslinux.cfg` loads
//!   `vmlinuz` and `initramfs.img` from the same partition.
//! - `gridos.cfg`: the farm's settings as plain text, read by the node at boot
//!   (`gridos-bootcfg`), so a farmer can change them on any laptop without rebuilding.
//!
//! Everything is made with Debian's tools on plain files (mkfs.fat, mtools, syslinux's
//! mtools installer, sfdisk, objcopy): no root, no loop device, no mount.

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use crate::{tools, uki, Built, MediaError, Options, Release};

/// The boot partition's GPT name: how the node recognises its boot stick (and never puts its
/// cache on it).
pub const PARTITION_NAME: &str = "gridos-boot";
/// The FAT volume label.
pub const LABEL: &str = "GRIDOS";
/// The settings file at the root of the boot partition.
pub const CONFIG_FILE: &str = "gridos.cfg";
/// The word the USB image adds to the command line: the node then waits (bounded) for its
/// boot stick to appear and reads [`CONFIG_FILE`] from it.
pub const MEDIA_WORD: &str = "gridos.media=usb";

const MIB: u64 = 1 << 20;
/// FAT32 needs at least 65,525 clusters: 512-byte clusters make that 32 MiB and some.
const MIN_ESP: u64 = 36 * MIB;
/// The EFI system partition's GPT type.
const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";

/// The BIOS loader's configuration: boot at once, no prompt.
pub fn syslinux_cfg(cmdline: &str) -> String {
    format!(
        "# gridos node (BIOS). UEFI boots EFI/BOOT/BOOTX64.EFI instead; settings: gridos.cfg.\n\
         SERIAL 0 115200\n\
         DEFAULT gridos\n\
         PROMPT 0\n\
         TIMEOUT 0\n\
         SAY gridos: loading the kernel and initramfs\n\
         LABEL gridos\n\
         \x20 LINUX /vmlinuz\n\
         \x20 INITRD /initramfs.img\n\
         \x20 APPEND {cmdline}\n"
    )
}

/// The settings file as written at build time: every setting of the command line that the
/// node reads from it too (`cmdline::KEYS`), one per line, with what the farmer needs to know to edit it.
pub fn config_text(cmdline: &str) -> String {
    let mut text = String::from(
        "# gridos node settings, read at every boot (docs/boot-media.md).\r\n\
         # One setting per line, key=value; a line starting with # is a comment.\r\n\
         # A setting here wins over the same setting built into the image. Only gridos.*\r\n\
         # settings are read; a malformed value is reported on the console and the built-in\r\n\
         # value is kept. Edit this file on any computer: no rebuild is needed.\r\n",
    );
    let mut keys = Vec::new();
    for w in cmdline.split_whitespace() {
        // Only what a farmer may set: not the medium's or the image's own words.
        let key = w.split('=').next().unwrap_or("");
        if cmdline::KEYS.contains(&key) && !cmdline::EARLY_KEYS.contains(&key) {
            keys.push(key);
            text.push_str(w);
            text.push_str("\r\n");
        }
    }
    // An image built without a farm: the lines a farmer fills in.
    for (key, hint) in [
        ("gridos.farm", "your farm's id (grid farm list)"),
        (
            "gridos.registry",
            "the registry's URL, as the node reaches it",
        ),
    ] {
        if !keys.contains(&key) {
            text.push_str(&format!(
                "# {key}: {hint}; remove the # and fill it in:\r\n#{key}=\r\n"
            ));
        }
    }
    text
}

/// Writes the USB image `out` (a file) from `release`.
pub fn write(release: &Path, out: &Path, opts: &Options) -> Result<Built, MediaError> {
    let rel = Release::open(release, &opts.append, &[MEDIA_WORD])?;
    let parent = crate::parent_of(out);
    let scratch = crate::scratch_dir(parent)?;
    let dir = scratch.path();

    let uki = uki::make(&rel, dir, opts, "usb")?;
    let efi = &uki.path;
    let content = uki.bytes + rel.kernel_bytes + rel.initramfs_bytes;
    // Room for the FAT tables, syslinux and a farmer's edits.
    let esp = (content + content / 16 + 4 * MIB)
        .div_ceil(MIB)
        .max(MIN_ESP / MIB)
        * MIB;
    (opts.progress)(&format!("usb: FAT32 boot partition of {} MiB", esp / MIB));
    let fat = dir.join("esp.img");
    let id = tools::fnv32(rel.cmdline.as_bytes());
    tools::mkfs_fat(&fat, esp, LABEL, id, true)?;
    tools::mmd(&fat, &["::/EFI", "::/EFI/BOOT"])?;
    tools::mcopy(&fat, efi, "::/EFI/BOOT/BOOTX64.EFI")?;
    tools::mcopy(&fat, &rel.vmlinuz, "::/vmlinuz")?;
    tools::mcopy(&fat, &rel.initramfs, "::/initramfs.img")?;
    let cfg = tools::scratch(dir, "syslinux.cfg", syslinux_cfg(&rel.cmdline).as_bytes())?;
    tools::mcopy(&fat, &cfg, "::/syslinux.cfg")?;
    let settings = tools::scratch(dir, CONFIG_FILE, config_text(&rel.cmdline).as_bytes())?;
    tools::mcopy(&fat, &settings, &format!("::/{CONFIG_FILE}"))?;
    (opts.progress)("usb: syslinux (BIOS)");
    tools::run("syslinux", &["--install".as_ref(), fat.as_os_str()])?;

    (opts.progress)("usb: GPT disk image");
    let disk = dir.join("disk.img");
    let total = MIB + esp + MIB;
    let f = std::fs::File::create(&disk).map_err(|source| MediaError::Write {
        path: disk.clone(),
        source,
    })?;
    f.set_len(total).map_err(|source| MediaError::Write {
        path: disk.clone(),
        source,
    })?;
    drop(f);
    let guid = |salt: &str| {
        let a = tools::fnv32(format!("{salt}a{}", rel.cmdline).as_bytes());
        let b = tools::fnv32(format!("{salt}b{}", rel.cmdline).as_bytes());
        let c = tools::fnv32(format!("{salt}c{}", rel.cmdline).as_bytes());
        let d = tools::fnv32(format!("{salt}d{}", rel.cmdline).as_bytes());
        // A version-4-shaped GUID, fixed for the same command line: reproducible images.
        format!(
            "{a:08X}-{:04X}-4{:03X}-8{:03X}-{:04X}{d:08X}",
            b >> 16,
            b & 0xfff,
            c >> 20,
            c & 0xffff
        )
    };
    let script = format!(
        "label: gpt\n\
         label-id: {}\n\
         unit: sectors\n\
         first-lba: 2048\n\
         start=2048, size={}, type={ESP_TYPE}, uuid={}, name=\"{PARTITION_NAME}\", attrs=\"LegacyBIOSBootable\"\n",
        guid("disk"),
        esp / 512,
        guid("part"),
    );
    tools::run_stdin(
        "sfdisk",
        &[
            "--quiet".as_ref(),
            "--no-reread".as_ref(),
            "--no-tell-kernel".as_ref(),
            disk.as_os_str(),
        ],
        script.as_bytes(),
    )?;
    let mbr = tools::read_data(tools::GPT_MBR)?;
    let write_err = |source| MediaError::Write {
        path: disk.clone(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&disk)
        .map_err(write_err)?;
    // The boot code only: the partition table from byte 446 on stays sfdisk's.
    f.write_all(&mbr[..mbr.len().min(440)]).map_err(write_err)?;
    f.seek(SeekFrom::Start(MIB)).map_err(write_err)?;
    let mut src = std::fs::File::open(&fat).map_err(write_err)?;
    std::io::copy(&mut src, &mut f).map_err(write_err)?;
    f.sync_all().map_err(write_err)?;
    drop(f);
    crate::publish(&disk, out)?;
    Ok(Built {
        path: out.into(),
        bytes: total,
        uki_bytes: uki.unsigned_bytes,
        cmdline: rel.cmdline,
        signed: uki.signed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_settings_file_reads_back_as_written() {
        let text = config_text(
            "console=ttyS0 gridos.image=sealed gridos.farm=3 gridos.registry=http://r:1 gridos.media=usb",
        );
        let p = bootcfg::parse(text.as_bytes());
        assert_eq!(p.words, ["gridos.farm=3", "gridos.registry=http://r:1"]);
        assert!(p.problems.is_empty(), "{:?}", p.problems);
        // Built without a farm: the lines to fill in are there, and read as comments.
        // PID 1's own settings are not in it: it reads them before the stick is readable.
        let text = config_text("console=ttyS0 gridos.log=info gridos.wipe=all");
        assert!(text.contains("\r\n#gridos.farm=\r\n"), "{text}");
        assert!(text.contains("\r\n#gridos.registry=\r\n"), "{text}");
        assert!(!text.contains("gridos.log"), "{text}");
        let p = bootcfg::parse(text.as_bytes());
        assert_eq!(p.words, ["gridos.wipe=all"]);
        assert!(p.problems.is_empty(), "{:?}", p.problems);
        // Filled in as told.
        let filled = text.replace("#gridos.farm=", "gridos.farm=12");
        assert_eq!(bootcfg::parse(filled.as_bytes()).words[1], "gridos.farm=12");
    }
}
