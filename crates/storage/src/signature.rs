//! Recognises partition tables and filesystem signatures in a disk's first and last MiB,
//! so the `empty` wipe policy never formats a disk that holds data.

/// How much of the start and end of a disk is inspected.
pub const PROBE_BYTES: usize = 1 << 20;

/// Something found on a disk that means "this disk is not empty".
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Signature {
    /// GPT header ("EFI PART") at LBA 1 (512 or 4096-byte sectors).
    Gpt,
    /// Backup GPT header in the last sector.
    GptBackup,
    /// MBR boot signature 0x55AA at byte 510.
    Mbr,
    /// btrfs superblock magic.
    Btrfs,
    /// ext2/3/4 superblock magic.
    Ext,
    /// XFS superblock magic.
    Xfs,
    /// Linux swap.
    Swap,
    /// LVM2 physical volume label.
    Lvm,
    /// LUKS header.
    Luks,
    /// ISO 9660 (CD/USB installer image).
    Iso9660,
    /// Linux software RAID superblock (1.1/1.2 at the start).
    MdRaid,
    /// ZFS uberblock magic in a label at the end.
    Zfs,
}

/// The GPT name of a gridos USB stick's boot partition (`bootmedia::usb::PARTITION_NAME`).
pub const BOOT_PARTITION_NAME: &str = "gridos-boot";
/// The volume id of a gridos ISO (`bootmedia::iso::VOLUME_ID`).
pub const BOOT_ISO_VOLUME: &[u8] = b"GRIDOS";

/// Whether a disk's first bytes are a gridos boot medium: a GPT with a partition named
/// [`BOOT_PARTITION_NAME`] (the USB image) or an ISO 9660 volume named [`BOOT_ISO_VOLUME`]
/// (the ISO, on a CD or written to a stick). The node never formats or sells its boot medium,
/// whatever `gridos.wipe` says.
pub fn boot_medium(head: &[u8]) -> bool {
    let iso = at(head, 0x8001, b"CD001")
        && head.get(0x8028..0x8048).is_some_and(|id| {
            id.starts_with(BOOT_ISO_VOLUME)
                && id[BOOT_ISO_VOLUME.len()..].iter().all(|b| *b == b' ')
        });
    iso || gpt_partition_names(head)
        .iter()
        .any(|n| n == BOOT_PARTITION_NAME)
}

/// The partition names of a GPT with 512-byte sectors whose entries lie in `head`.
fn gpt_partition_names(head: &[u8]) -> Vec<String> {
    let u32_at = |off: usize| {
        head.get(off..off + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    if !at(head, 512, b"EFI PART") {
        return Vec::new();
    }
    let lba = head
        .get(512 + 72..512 + 80)
        .map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]));
    let (Some(lba), Some(count), Some(size)) = (lba, u32_at(512 + 80), u32_at(512 + 84)) else {
        return Vec::new();
    };
    if size < 128 || lba > (PROBE_BYTES / 512) as u64 {
        return Vec::new();
    }
    let (start, size) = (lba as usize * 512, size as usize);
    (0..count.min(256) as usize)
        .filter_map(|i| head.get(start + i * size + 56..start + i * size + 128))
        .map(|name| {
            let units: Vec<u16> = name
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .take_while(|u| *u != 0)
                .collect();
            String::from_utf16_lossy(&units)
        })
        .filter(|n| !n.is_empty())
        .collect()
}

fn at(buf: &[u8], off: usize, magic: &[u8]) -> bool {
    buf.get(off..off + magic.len()) == Some(magic)
}

/// Looks for known signatures; `head` is the first bytes of the disk, `tail` the last
/// bytes (may be shorter than [`PROBE_BYTES`] for a small disk). First match wins.
pub fn detect(head: &[u8], tail: &[u8]) -> Option<Signature> {
    if at(head, 512, b"EFI PART") || at(head, 4096, b"EFI PART") {
        return Some(Signature::Gpt);
    }
    if tail.len() >= 512 && at(tail, tail.len() - 512, b"EFI PART") {
        return Some(Signature::GptBackup);
    }
    if tail.len() >= 4096 && at(tail, tail.len() - 4096, b"EFI PART") {
        return Some(Signature::GptBackup);
    }
    let checks: &[(usize, &[u8], Signature)] = &[
        (0x10040, b"_BHRfS_M", Signature::Btrfs),
        (0x438, &[0x53, 0xEF], Signature::Ext),
        (0, b"XFSB", Signature::Xfs),
        (4086, b"SWAPSPACE2", Signature::Swap),
        (4086, b"SWAP-SPACE", Signature::Swap),
        (512, b"LABELONE", Signature::Lvm),
        (0, b"LUKS\xba\xbe", Signature::Luks),
        (0x8001, b"CD001", Signature::Iso9660),
        (0x1000, &[0xfc, 0x4e, 0x2b, 0xa9], Signature::MdRaid),
        (0, &[0xfc, 0x4e, 0x2b, 0xa9], Signature::MdRaid),
    ];
    for (off, magic, sig) in checks {
        if at(head, *off, magic) {
            return Some(*sig);
        }
    }
    // ZFS keeps labels 2 and 3 in the last 512 KiB; uberblocks start 128 KiB into a label.
    const ZFS_MAGIC_LE: [u8; 8] = 0x00ba_b10c_u64.to_le_bytes();
    if tail.len() >= 512 * 1024 {
        let label2 = tail.len() - 512 * 1024;
        for i in 0..128 {
            let off = label2 + 128 * 1024 + i * 1024;
            if at(tail, off, &ZFS_MAGIC_LE) {
                return Some(Signature::Zfs);
            }
        }
    }
    // An MBR: 0x55AA plus at least one non-empty partition entry (a bare FAT boot
    // sector without partitions also counts: it is a filesystem).
    if at(head, 510, &[0x55, 0xAA]) {
        return Some(Signature::Mbr);
    }
    None
}

/// The label of a btrfs filesystem whose superblock (at 64 KiB) is in `buf`, if `buf`
/// holds one; used to find an existing gridos cache partition.
pub fn btrfs_label(buf: &[u8]) -> Option<String> {
    const SB: usize = 0x10000;
    if !at(buf, SB + 0x40, b"_BHRfS_M") {
        return None;
    }
    let raw = buf.get(SB + 0x12b..SB + 0x12b + 256)?;
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    Some(String::from_utf8_lossy(&raw[..end]).into_owned())
}

/// The UUID of a btrfs in `buf` (a partition's first 68 KiB), as `blkid` spells it.
pub fn btrfs_fsid(buf: &[u8]) -> Option<String> {
    const SB: usize = 0x10000;
    if !at(buf, SB + 0x40, b"_BHRfS_M") {
        return None;
    }
    let id = buf.get(SB + 0x20..SB + 0x30)?;
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    Some(format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A GPT with one partition named `name`, as sfdisk writes it.
    fn gpt_with(name: &str) -> Vec<u8> {
        let mut head = vec![0u8; PROBE_BYTES];
        head[512..520].copy_from_slice(b"EFI PART");
        head[512 + 72..512 + 80].copy_from_slice(&2u64.to_le_bytes());
        head[512 + 80..512 + 84].copy_from_slice(&128u32.to_le_bytes());
        head[512 + 84..512 + 88].copy_from_slice(&128u32.to_le_bytes());
        for (i, u) in name.encode_utf16().enumerate() {
            head[1024 + 56 + 2 * i..1024 + 58 + 2 * i].copy_from_slice(&u.to_le_bytes());
        }
        head
    }

    #[test]
    fn the_boot_medium_is_recognised_by_name_and_nothing_else() {
        assert!(boot_medium(&gpt_with("gridos-boot")));
        assert!(!boot_medium(&gpt_with("gridos-boot2")));
        assert!(!boot_medium(&gpt_with("EFI System")));
        assert!(!boot_medium(&vec![0u8; PROBE_BYTES]));
        let mut iso = vec![0u8; PROBE_BYTES];
        iso[0x8001..0x8006].copy_from_slice(b"CD001");
        iso[0x8028..0x8048].copy_from_slice(b"GRIDOS                          ");
        assert!(boot_medium(&iso));
        iso[0x8028..0x8048].copy_from_slice(b"DEBIAN 12                       ");
        assert!(!boot_medium(&iso));
        // A hostile table: entries said to lie far away, or absurd counts, read nothing.
        let mut far = gpt_with("gridos-boot");
        far[512 + 72..512 + 80].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(!boot_medium(&far));
        // Absurd counts and sizes are bounded (no overflow, no long loop)...
        let mut many = gpt_with("gridos-boot");
        many[512 + 80..512 + 84].copy_from_slice(&u32::MAX.to_le_bytes());
        many[512 + 84..512 + 88].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(boot_medium(&many), "entry 0 is still where the header says");
        // ...and entries smaller than the specification's 128 bytes are not read at all.
        many[512 + 84..512 + 88].copy_from_slice(&100u32.to_le_bytes());
        assert!(!boot_medium(&many));
        assert!(!boot_medium(&gpt_with("gridos-boot")[..600]));
    }

    fn zero() -> Vec<u8> {
        vec![0; PROBE_BYTES]
    }

    #[test]
    fn blank_disk_has_no_signature() {
        assert_eq!(detect(&zero(), &zero()), None);
    }

    #[test]
    fn partition_tables_are_found() {
        let mut h = zero();
        h[512..520].copy_from_slice(b"EFI PART");
        assert_eq!(detect(&h, &zero()), Some(Signature::Gpt));
        let mut t = zero();
        let n = t.len();
        t[n - 512..n - 504].copy_from_slice(b"EFI PART");
        assert_eq!(detect(&zero(), &t), Some(Signature::GptBackup));
        let mut m = zero();
        m[510] = 0x55;
        m[511] = 0xAA;
        assert_eq!(detect(&m, &zero()), Some(Signature::Mbr));
    }

    #[test]
    fn filesystems_are_found() {
        let mut e = zero();
        e[0x438] = 0x53;
        e[0x439] = 0xEF;
        assert_eq!(detect(&e, &zero()), Some(Signature::Ext));
        let mut b = zero();
        b[0x10040..0x10048].copy_from_slice(b"_BHRfS_M");
        assert_eq!(detect(&b, &zero()), Some(Signature::Btrfs));
        let mut i = zero();
        i[0x8001..0x8006].copy_from_slice(b"CD001");
        assert_eq!(detect(&i, &zero()), Some(Signature::Iso9660));
        let mut z = zero();
        let off = z.len() - 512 * 1024 + 128 * 1024 + 5 * 1024;
        z[off..off + 8].copy_from_slice(&0x00ba_b10c_u64.to_le_bytes());
        assert_eq!(detect(&zero(), &z), Some(Signature::Zfs));
    }

    #[test]
    fn short_buffers_do_not_panic() {
        assert_eq!(detect(&[0; 10], &[0; 3]), None);
        assert_eq!(btrfs_label(&[0; 100]), None);
    }

    #[test]
    fn btrfs_label_is_read() {
        let mut b = vec![0u8; 0x20000];
        b[0x10040..0x10048].copy_from_slice(b"_BHRfS_M");
        b[0x1012b..0x1012b + 12].copy_from_slice(b"gridos-cache");
        assert_eq!(btrfs_label(&b).as_deref(), Some("gridos-cache"));
        assert_eq!(
            btrfs_fsid(&b).as_deref(),
            Some("00000000-0000-0000-0000-000000000000")
        );
        b[0x10020..0x10030].copy_from_slice(&[
            0x6f, 0x1c, 0x2b, 0x3a, 0x49, 0x58, 0x67, 0x76, 0x85, 0x94, 0xa3, 0xb2, 0xc1, 0xd0,
            0xef, 0xfe,
        ]);
        assert_eq!(
            btrfs_fsid(&b).as_deref(),
            Some("6f1c2b3a-4958-6776-8594-a3b2c1d0effe")
        );
        assert_eq!(btrfs_fsid(&b[..0x10000]), None);
    }
}
