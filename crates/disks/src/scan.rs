//! The node's whole disks from `/sys/block`, and which of them may be used or sold.

use crate::{Error, Result};
use std::path::Path;

/// One whole-disk block device as sysfs describes it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Disk {
    /// Kernel name, e.g. `sda`, `nvme0n1`.
    pub name: String,
    /// Size in bytes (`size` is in 512-byte sectors whatever the logical block size).
    pub size_bytes: u64,
    /// `queue/rotational` as the kernel claims it; `None` when the file is missing.
    pub rotational: Option<bool>,
    /// `removable`: USB sticks and card readers, where the boot medium usually is.
    pub removable: bool,
    /// `ro`: a write-protected disk can neither hold the cache nor be rented out.
    pub read_only: bool,
    /// Partition names, e.g. `sda1`, sorted.
    pub partitions: Vec<String>,
}

/// Name prefixes of block devices that are never real storage, with why.
pub const VIRTUAL: &[(&str, &str)] = &[
    ("loop", "loop device"),
    ("ram", "ram disk"),
    ("zram", "compressed ram disk"),
    ("sr", "optical drive"),
    ("fd", "floppy"),
    ("dm-", "device-mapper volume"),
    ("md", "software RAID volume"),
    ("nbd", "network block device"),
];

fn read_trim(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// Reads every entry of a `/sys/block`-shaped tree, sorted by name.
pub fn scan(sys_block: &Path) -> Result<Vec<Disk>> {
    let entries = std::fs::read_dir(sys_block).map_err(|source| Error::Read {
        path: sys_block.display().to_string(),
        source,
    })?;
    let mut disks = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let dir = sys_block.join(&name);
        if dir.join("partition").exists() {
            continue;
        }
        let sectors: u64 = read_trim(&dir.join("size"))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let flag = |f: &str| read_trim(&dir.join(f)).map(|v| v == "1");
        disks.push(Disk {
            rotational: flag("queue/rotational"),
            removable: flag("removable").unwrap_or(false),
            read_only: flag("ro").unwrap_or(false),
            partitions: partitions_of(&dir),
            size_bytes: sectors.saturating_mul(512),
            name,
        });
    }
    disks.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(disks)
}

/// The names under `/sys/block` only: cheap enough to poll for disks that come and go.
pub fn names(sys_block: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(sys_block)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The partitions sysfs shows under one disk's directory, sorted.
pub fn partitions_of(disk_dir: &Path) -> Vec<String> {
    let mut partitions: Vec<String> = std::fs::read_dir(disk_dir)
        .map(|it| {
            it.flatten()
                .filter(|e| e.path().join("partition").exists())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    partitions.sort();
    partitions
}

/// Why a disk is left alone, or `None` if it may be used and counted.
///
/// `boot` names disks known to be the boot medium (configuration); `only`, when given
/// (tests with loop devices), replaces the name rules: just those disks are used.
pub fn skip_reason(disk: &Disk, boot: &[String], only: Option<&[String]>) -> Option<&'static str> {
    if let Some(only) = only {
        return if only.contains(&disk.name) {
            None
        } else {
            Some("not in the --only-devices list")
        };
    }
    if let Some((_, why)) = VIRTUAL.iter().find(|(p, _)| disk.name.starts_with(p)) {
        return Some(why);
    }
    if boot.contains(&disk.name) {
        return Some("the boot medium (configured)");
    }
    if disk.removable {
        return Some("removable (the boot medium lives on one)");
    }
    if disk.read_only {
        return Some("read-only");
    }
    if disk.size_bytes == 0 {
        return Some("no medium");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn fake(
        root: &Path,
        name: &str,
        sectors: u64,
        rot: Option<&str>,
        removable: &str,
        parts: &[&str],
    ) {
        let d = root.join(name);
        fs::create_dir_all(d.join("queue")).unwrap();
        fs::write(d.join("size"), format!("{sectors}\n")).unwrap();
        if let Some(rot) = rot {
            fs::write(d.join("queue/rotational"), rot).unwrap();
        }
        fs::write(d.join("removable"), removable).unwrap();
        for p in parts {
            fs::create_dir_all(d.join(p)).unwrap();
            fs::write(d.join(p).join("partition"), "1").unwrap();
        }
    }

    #[test]
    fn scans_and_skips() {
        let t = tempfile::tempdir().unwrap();
        fake(t.path(), "sdb", 2048, Some("1\n"), "0\n", &[]);
        fake(t.path(), "sda", 4096, Some("0\n"), "0\n", &["sda1", "sda2"]);
        fake(t.path(), "loop0", 100, Some("0"), "0", &[]);
        fake(t.path(), "zram0", 100, Some("0"), "0", &[]);
        fake(t.path(), "sdc", 100, Some("0"), "1", &["sdc1"]);
        fake(t.path(), "sdd", 0, Some("0"), "0", &[]);
        fake(t.path(), "sde", 100, None, "0", &[]);
        fake(t.path(), "sdf", 100, Some("0"), "0", &[]);
        fs::write(t.path().join("sdf/ro"), "1\n").unwrap();
        let disks = scan(t.path()).unwrap();
        let names: Vec<_> = disks.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(
            names,
            ["loop0", "sda", "sdb", "sdc", "sdd", "sde", "sdf", "zram0"]
        );
        let sda = &disks[1];
        assert_eq!(sda.size_bytes, 4096 * 512);
        assert_eq!(sda.rotational, Some(false));
        assert_eq!(sda.partitions, ["sda1", "sda2"]);
        assert_eq!(disks[2].rotational, Some(true));
        assert_eq!(
            disks[5].rotational, None,
            "missing queue/rotational is unknown"
        );
        let usable = |boot: &[String], only: Option<&[String]>| -> Vec<String> {
            disks
                .iter()
                .filter(|d| skip_reason(d, boot, only).is_none())
                .map(|d| d.name.clone())
                .collect()
        };
        assert_eq!(usable(&[], None), ["sda", "sdb", "sde"]);
        assert_eq!(usable(&["sda".into()], None), ["sdb", "sde"]);
        assert_eq!(usable(&[], Some(&["loop0".into()])), ["loop0"]);
        assert_eq!(
            skip_reason(&disks[3], &[], None),
            Some("removable (the boot medium lives on one)")
        );
        assert_eq!(skip_reason(&disks[6], &[], None), Some("read-only"));
        assert_eq!(skip_reason(&disks[4], &[], None), Some("no medium"));
    }
}
