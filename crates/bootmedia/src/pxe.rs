//! The network-boot folder: the release's kernel and initramfs, `boot.ipxe` (the iPXE script
//! that loads them with the release's command line) and `dnsmasq.conf.example` (a proxy-DHCP
//! and TFTP server for a rack, beside the DHCP server the network already has).

use std::path::{Path, PathBuf};

use crate::{cmdline_with, MediaError};

/// What [`write`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pxe {
    /// The folder.
    pub dir: PathBuf,
    /// Bytes of `vmlinuz` and `initramfs.img`.
    pub kernel_bytes: u64,
    /// Bytes of the initramfs.
    pub initramfs_bytes: u64,
    /// The kernel command line the script boots with.
    pub cmdline: String,
}

/// The iPXE script, served as `name`. The kernel and initramfs are named relative to the
/// script, so the folder may be served by TFTP or HTTP from anywhere; after a failure the
/// script waits and loads itself again.
pub fn script(cmdline: &str, name: &str) -> String {
    format!(
        "#!ipxe\n\
         # gridos node: served with vmlinuz and initramfs.img from the same folder.\n\
         echo gridos: loading the kernel and initramfs\n\
         kernel vmlinuz initrd=initramfs.img {cmdline} || goto failed\n\
         initrd initramfs.img || goto failed\n\
         boot || goto failed\n\
         :failed\n\
         echo gridos: network boot failed; retrying in 10 s\n\
         sleep 10\n\
         chain {name}\n"
    )
}

/// A dnsmasq configuration for a rack whose network already has a DHCP server.
pub fn dnsmasq_example(folder: &Path) -> String {
    format!(
        "# gridos network boot: dnsmasq as a proxy-DHCP and TFTP server (docs/boot-media.md).\n\
         # The network's own DHCP server keeps handing out addresses; dnsmasq only adds the\n\
         # boot file. Machines whose firmware is not iPXE get iPXE first (Debian's `ipxe`\n\
         # package: undionly.kpxe for BIOS, ipxe.efi for UEFI, copied into this folder), then\n\
         # iPXE, which says so in DHCP option 175, gets boot.ipxe.\n\
         port=0\n\
         # The network the rack is on (no addresses are given out: proxy only).\n\
         dhcp-range=192.168.1.0,proxy\n\
         enable-tftp\n\
         tftp-root={}\n\
         dhcp-match=set:ipxe,175\n\
         dhcp-match=set:efi64,option:client-arch,7\n\
         dhcp-match=set:efi64,option:client-arch,9\n\
         pxe-service=tag:!ipxe,tag:!efi64,x86PC,\"gridos (BIOS)\",undionly.kpxe\n\
         pxe-service=tag:!ipxe,tag:efi64,x86-64_EFI,\"gridos (UEFI)\",ipxe.efi\n\
         pxe-service=tag:ipxe,x86PC,\"gridos\",boot.ipxe\n\
         pxe-service=tag:ipxe,x86-64_EFI,\"gridos\",boot.ipxe\n\
         dhcp-boot=tag:ipxe,boot.ipxe\n",
        folder.display()
    )
}

/// Makes the network-boot folder `out` from the release in `release` (the same folder is
/// fine: the release files stay and the script is added). `append` goes after the release's
/// command line (the lab's console settings, say). Every file is written whole or not at all.
pub fn write(release: &Path, out: &Path, append: &[String]) -> Result<Pxe, MediaError> {
    let cmdline = cmdline_with(release, append, &[])?;
    let write = |path: PathBuf, bytes: &[u8]| {
        atomicfile::write(&path, bytes, 0o644).map_err(|source| MediaError::Write { path, source })
    };
    std::fs::create_dir_all(out).map_err(|source| MediaError::Write {
        path: out.into(),
        source,
    })?;
    let mut sizes = [0u64; 2];
    for (i, file) in ["vmlinuz", "initramfs.img"].into_iter().enumerate() {
        let bytes = std::fs::read(release.join(file)).map_err(|source| MediaError::Release {
            dir: release.into(),
            file,
            source,
        })?;
        sizes[i] = bytes.len() as u64;
        let same = std::fs::canonicalize(release.join(file)).ok()
            == std::fs::canonicalize(out.join(file)).ok();
        if !same {
            write(out.join(file), &bytes)?;
        }
    }
    write(out.join("cmdline"), format!("{cmdline}\n").as_bytes())?;
    write(
        out.join("boot.ipxe"),
        script(&cmdline, "boot.ipxe").as_bytes(),
    )?;
    let folder = std::fs::canonicalize(out).unwrap_or_else(|_| out.to_path_buf());
    write(
        out.join("dnsmasq.conf.example"),
        dnsmasq_example(&folder).as_bytes(),
    )?;
    Ok(Pxe {
        dir: out.into(),
        kernel_bytes: sizes[0],
        initramfs_bytes: sizes[1],
        cmdline,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(dir: &Path, cmdline: &str) {
        std::fs::write(dir.join("vmlinuz"), b"kernel").unwrap();
        std::fs::write(dir.join("initramfs.img"), b"initramfs!").unwrap();
        std::fs::write(dir.join("cmdline"), cmdline).unwrap();
    }

    #[test]
    fn the_folder_boots_the_release_with_its_command_line() {
        let d = tempfile::tempdir().unwrap();
        release(
            d.path(),
            "console=ttyS0 gridos.farm=3 gridos.registry=http://10.0.2.2:8480\n",
        );
        let out = d.path().join("pxe");
        let p = write(d.path(), &out, &["panic=-1".into()]).unwrap();
        assert_eq!((p.kernel_bytes, p.initramfs_bytes), (6, 10));
        assert_eq!(
            std::fs::read(out.join("initramfs.img")).unwrap(),
            b"initramfs!"
        );
        let s = std::fs::read_to_string(out.join("boot.ipxe")).unwrap();
        assert!(s.starts_with("#!ipxe\n"), "{s}");
        assert!(
            s.contains("kernel vmlinuz initrd=initramfs.img console=ttyS0 gridos.farm=3 gridos.registry=http://10.0.2.2:8480 panic=-1 ||"),
            "{s}"
        );
        assert!(s.contains("initrd initramfs.img"), "{s}");
        assert_eq!(
            std::fs::read_to_string(out.join("cmdline")).unwrap(),
            format!("{}\n", p.cmdline)
        );
        let dnsmasq = std::fs::read_to_string(out.join("dnsmasq.conf.example")).unwrap();
        assert!(
            dnsmasq.contains("dhcp-boot=tag:ipxe,boot.ipxe"),
            "{dnsmasq}"
        );
        // In place: the release folder becomes the boot folder.
        write(d.path(), d.path(), &[]).unwrap();
        assert_eq!(std::fs::read(d.path().join("vmlinuz")).unwrap(), b"kernel");
        assert!(d.path().join("boot.ipxe").exists());
    }

    #[test]
    fn what_a_script_cannot_carry_is_refused_and_nothing_is_written() {
        let d = tempfile::tempdir().unwrap();
        release(d.path(), "console=ttyS0\n");
        let out = d.path().join("pxe");
        for bad in ["a\"b", "x=$y", "a\\b", "tab\there", "é"] {
            let e = write(d.path(), &out, &[bad.into()]).unwrap_err();
            assert!(matches!(e, MediaError::Cmdline { .. }), "{bad}: {e}");
        }
        assert!(!out.exists());
        std::fs::remove_file(d.path().join("vmlinuz")).unwrap();
        let e = write(d.path(), &out, &[]).unwrap_err();
        assert!(e.to_string().contains("vmlinuz"), "{e}");
        std::fs::write(d.path().join("cmdline"), "\n").unwrap();
        assert!(matches!(
            crate::release_cmdline(d.path()),
            Err(MediaError::Cmdline { .. })
        ));
    }
}
