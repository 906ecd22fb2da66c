//! The USB image and the ISO made from a stand-in release, checked with the same tools a
//! firmware's view can be read with (sfdisk, mtools, objcopy, xorriso, sbverify). That they
//! really boot is the lab's boot matrix (docs/boot-media.md); here: their layout.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;

use bootmedia::{iso, usb, MediaError, Options, Signing};

const CMDLINE: &str =
    "console=ttyS0 quiet panic=10 gridos.farm=3 gridos.registry=http://10.0.2.2:8480";

fn release(dir: &Path) {
    // Stand-ins with sizes of the right order, so the partition sizing is exercised.
    std::fs::write(dir.join("vmlinuz"), vec![0x4b; 3 << 20]).unwrap();
    std::fs::write(dir.join("initramfs.img"), vec![0x1f; 2 << 20]).unwrap();
    std::fs::write(dir.join("cmdline"), format!("{CMDLINE}\n")).unwrap();
}

fn tools(extra: &[&str]) -> bool {
    let mut want = vec![
        "objcopy", "mkfs.fat", "mcopy", "mtype", "mdir", "syslinux", "sfdisk",
    ];
    want.extend(extra);
    test_infra::require_tools(&want).is_ok()
}

fn out(cmd: &mut Command) -> String {
    let o = cmd.env("MTOOLS_SKIP_CHECK", "1").output().unwrap();
    assert!(
        o.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The partition as mtools addresses it inside the disk image.
fn part(img: &Path) -> String {
    format!("{}@@1048576", img.display())
}

fn section(efi: &Path, name: &str, dir: &Path) -> Vec<u8> {
    let dump = dir.join(format!("section{name}"));
    out(Command::new("objcopy")
        .args(["-O", "binary", "--only-section", name])
        .arg(efi)
        .arg(&dump));
    std::fs::read(dump).unwrap()
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".gridos-media"))
        .collect()
}

#[test]
fn the_usb_image_is_a_gpt_disk_that_boots_uefi_and_bios() {
    if !tools(&[]) {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    release(d.path());
    let img = d.path().join("node.img");
    let opts = Options {
        append: vec!["console=ttyS1".into()],
        ..Options::default()
    };
    let b = usb::write(d.path(), &img, &opts).unwrap();
    assert_eq!(b.bytes, std::fs::metadata(&img).unwrap().len());
    assert_eq!(
        b.cmdline,
        format!("{CMDLINE} console=ttyS1 gridos.media=usb")
    );
    assert!(!b.signed);
    assert!(leftovers(d.path()).is_empty());

    // GPT: one EFI system partition named gridos-boot, bootable by gptmbr.bin on BIOS.
    let table: serde_json::Value =
        serde_json::from_str(&out(Command::new("sfdisk").arg("--json").arg(&img))).unwrap();
    let t = &table["partitiontable"];
    assert_eq!(t["label"], "gpt", "{t}");
    let parts = t["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 1, "{t}");
    assert_eq!(parts[0]["start"], 2048);
    assert_eq!(parts[0]["type"], "C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
    assert_eq!(parts[0]["name"], usb::PARTITION_NAME);
    assert_eq!(parts[0]["attrs"], "LegacyBIOSBootable");
    let bytes = std::fs::read(&img).unwrap();
    let gptmbr = std::fs::read(bootmedia::tools::GPT_MBR).unwrap();
    assert_eq!(
        &bytes[..440],
        &gptmbr[..440],
        "the MBR's boot code is syslinux's"
    );
    assert_eq!(&bytes[510..512], &[0x55, 0xaa]);
    // The partition's boot sector is syslinux's, and its loader is on the partition.
    let vbr = &bytes[1 << 20..(1 << 20) + 512];
    assert_eq!(&vbr[3..11], b"SYSLINUX", "OEM name of the FAT boot sector");
    let listing = out(Command::new("mdir").args(["-a", "-i", &part(&img), "::/"]));
    assert!(listing.contains("ldlinux  sys"), "{listing}");

    // BIOS: syslinux loads the release with the command line.
    let cfg = out(Command::new("mtype").args(["-i", &part(&img), "::/syslinux.cfg"]));
    assert!(cfg.contains(&format!("APPEND {}\n", b.cmdline)), "{cfg}");
    assert!(cfg.contains("LINUX /vmlinuz") && cfg.contains("INITRD /initramfs.img"));
    let kernel = d.path().join("kernel.back");
    out(Command::new("mcopy")
        .args(["-i", &part(&img), "::/vmlinuz"])
        .arg(&kernel));
    assert_eq!(std::fs::read(&kernel).unwrap(), vec![0x4b; 3 << 20]);

    // The farmer's settings file: the gridos.* settings, editable; not the medium word.
    let settings = out(Command::new("mtype").args(["-i", &part(&img), "::/gridos.cfg"]));
    assert!(settings.contains("gridos.farm=3\r\n"), "{settings}");
    assert!(settings.contains("gridos.registry=http://10.0.2.2:8480\r\n"));
    assert!(!settings.contains("gridos.media"), "{settings}");
    assert!(!settings.contains("gridos.image"), "{settings}");
    assert!(!settings.contains("console="), "{settings}");
    // The node reads it back as written, and finds the partition by the name given here.
    let parsed = bootcfg::parse(settings.as_bytes());
    assert_eq!(
        parsed.words,
        ["gridos.farm=3", "gridos.registry=http://10.0.2.2:8480"]
    );
    assert!(parsed.problems.is_empty(), "{:?}", parsed.problems);
    assert_eq!(usb::PARTITION_NAME, bootcfg::PARTITION_NAME);
    assert_eq!(usb::MEDIA_WORD, bootcfg::MEDIA_WORD);
    // And its storage service knows the stick for what it is: never formatted, never sold.
    assert!(storage::signature::boot_medium(&bytes[..1 << 20]));

    // UEFI: the unified kernel image with the release and the command line as sections.
    let efi = d.path().join("BOOTX64.EFI");
    out(Command::new("mcopy")
        .args(["-i", &part(&img), "::/EFI/BOOT/BOOTX64.EFI"])
        .arg(&efi));
    assert_eq!(&std::fs::read(&efi).unwrap()[..2], b"MZ");
    assert_eq!(section(&efi, ".cmdline", d.path()), b.cmdline.as_bytes());
    assert_eq!(section(&efi, ".linux", d.path()), vec![0x4b; 3 << 20]);
    assert_eq!(section(&efi, ".initrd", d.path()), vec![0x1f; 2 << 20]);
    assert!(String::from_utf8(section(&efi, ".osrel", d.path()))
        .unwrap()
        .contains("ID=gridos"));

    // A second build replaces the image whole.
    usb::write(d.path(), &img, &Options::default()).unwrap();
    let cfg = out(Command::new("mtype").args(["-i", &part(&img), "::/syslinux.cfg"]));
    assert!(!cfg.contains("console=ttyS1"), "{cfg}");
}

#[test]
fn a_failed_build_leaves_no_image_and_no_scratch() {
    if !tools(&[]) {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    release(d.path());
    let img = d.path().join("node.img");
    // A word no boot loader configuration may carry.
    let opts = Options {
        append: vec!["gridos.farm=\"3\"".into()],
        ..Options::default()
    };
    assert!(matches!(
        usb::write(d.path(), &img, &opts),
        Err(MediaError::Cmdline { .. })
    ));
    std::fs::remove_file(d.path().join("initramfs.img")).unwrap();
    let e = usb::write(d.path(), &img, &Options::default()).unwrap_err();
    assert!(e.to_string().contains("initramfs.img"), "{e}");
    let e = iso::write(d.path(), &d.path().join("node.iso"), &Options::default()).unwrap_err();
    assert!(e.to_string().contains("initramfs.img"), "{e}");
    // A tool failing half-way (a signing key that is not one) leaves nothing either.
    release(d.path());
    std::fs::write(d.path().join("key.pem"), "not a key").unwrap();
    let opts = Options {
        signing: Some(Signing {
            key: d.path().join("key.pem"),
            cert: d.path().join("key.pem"),
        }),
        ..Options::default()
    };
    if test_infra::require_tool("sbsign").is_ok() {
        let e = usb::write(d.path(), &img, &opts).unwrap_err();
        assert!(e.to_string().starts_with("sbsign:"), "{e}");
    }
    assert!(!img.exists());
    assert!(leftovers(d.path()).is_empty(), "{:?}", leftovers(d.path()));
}

#[test]
fn the_iso_boots_bios_and_uefi_from_a_cd_and_from_a_stick() {
    if !tools(&["xorriso"]) {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    release(d.path());
    let path = d.path().join("node.iso");
    let b = iso::write(d.path(), &path, &Options::default()).unwrap();
    assert_eq!(b.cmdline, CMDLINE);
    assert!(leftovers(d.path()).is_empty());
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(b.bytes, bytes.len() as u64);
    assert_eq!(&bytes[0x8001..0x8006], b"CD001");
    assert!(bytes[0x8028..0x8048].starts_with(iso::VOLUME_ID.as_bytes()));
    // isohybrid: an MBR for BIOS and a GPT whose entry for the FAT image serves UEFI.
    assert_eq!(&bytes[510..512], &[0x55, 0xaa]);
    assert_eq!(&bytes[512..520], b"EFI PART");
    assert!(storage::signature::boot_medium(&bytes[..1 << 20]));
    let report = out(Command::new("xorriso")
        .args(["-indev"])
        .arg(&path)
        .args(["-report_el_torito", "plain"]));
    assert!(
        report.contains("BIOS") && report.contains("UEFI"),
        "{report}"
    );
    let cfg = out(Command::new("xorriso")
        .args(["-osirrox", "on", "-indev"])
        .arg(&path)
        .args(["-extract", "/isolinux/isolinux.cfg"])
        .arg(d.path().join("isolinux.cfg")));
    let _ = cfg;
    let cfg = std::fs::read_to_string(d.path().join("isolinux.cfg")).unwrap();
    assert!(cfg.contains(&format!("APPEND {CMDLINE}\n")), "{cfg}");
}

#[test]
fn a_signed_image_verifies_against_its_certificate_only() {
    if !tools(&["sbsign", "sbverify", "openssl"]) {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    release(d.path());
    let cert = |name: &str| {
        out(Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", &format!("/CN={name}")])
            .arg("-keyout")
            .arg(d.path().join(format!("{name}.key")))
            .arg("-out")
            .arg(d.path().join(format!("{name}.crt"))));
        (
            d.path().join(format!("{name}.key")),
            d.path().join(format!("{name}.crt")),
        )
    };
    let (key, crt) = cert("farm-signing");
    let (_, other) = cert("someone-else");
    let img = d.path().join("node.img");
    let b = usb::write(
        d.path(),
        &img,
        &Options {
            signing: Some(Signing {
                key,
                cert: crt.clone(),
            }),
            ..Options::default()
        },
    )
    .unwrap();
    assert!(b.signed);
    let efi = d.path().join("BOOTX64.EFI");
    out(Command::new("mcopy")
        .args(["-i", &part(&img), "::/EFI/BOOT/BOOTX64.EFI"])
        .arg(&efi));
    let verify = |c: &Path| {
        Command::new("sbverify")
            .arg("--cert")
            .arg(c)
            .arg(&efi)
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(
        verify(&crt),
        "the signature verifies with the signing certificate"
    );
    assert!(!verify(&other), "and not with another one");
}
