//! Lists the node's disks from `/sys/block` and decides which ones storage may use.

use crate::{Error, Result};
use std::path::Path;

/// One whole-disk block device as sysfs describes it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Disk {
    /// Kernel name, e.g. `sda`, `nvme0n1`.
    pub name: String,
    /// Size in bytes (`size` is in 512-byte sectors whatever the logical block size).
    pub size_bytes: u64,
    /// `queue/rotational` as the kernel claims it.
    pub rotational: bool,
    /// `removable`: USB sticks and card readers, where the boot medium usually is.
    pub removable: bool,
    /// Partition names, e.g. `sda1`, sorted.
    pub partitions: Vec<String>,
}

fn read_trim(path: &Path) -> Result<String> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|source| Error::Read {
            path: path.display().to_string(),
            source,
        })
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
        let sectors: u64 = read_trim(&dir.join("size"))?.parse().unwrap_or(0);
        let rotational = read_trim(&dir.join("queue/rotational")).is_ok_and(|v| v == "1");
        let removable = read_trim(&dir.join("removable")).is_ok_and(|v| v == "1");
        let partitions = partitions_of(&dir);
        disks.push(Disk {
            name,
            size_bytes: sectors.saturating_mul(512),
            rotational,
            removable,
            partitions,
        });
    }
    disks.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(disks)
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

/// Why a disk is left alone, or `None` if storage may consider it.
///
/// `only`, when given (tests), replaces the name rules: just those disks are used.
pub fn skip_reason(disk: &Disk, only: Option<&[String]>) -> Option<&'static str> {
    if let Some(only) = only {
        return if only.contains(&disk.name) {
            None
        } else {
            Some("not in the --only-devices list")
        };
    }
    const VIRTUAL: &[(&str, &str)] = &[
        ("loop", "loop device"),
        ("ram", "ram disk"),
        ("zram", "compressed ram disk"),
        ("sr", "optical drive"),
        ("fd", "floppy"),
        ("dm-", "device-mapper volume"),
        ("md", "software RAID volume"),
        ("nbd", "network block device"),
    ];
    for (prefix, why) in VIRTUAL {
        if disk.name.starts_with(prefix) {
            return Some(why);
        }
    }
    if disk.removable {
        return Some("removable (the boot medium lives on one)");
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

    fn fake(root: &Path, name: &str, sectors: u64, rot: &str, removable: &str, parts: &[&str]) {
        let d = root.join(name);
        fs::create_dir_all(d.join("queue")).unwrap();
        fs::write(d.join("size"), format!("{sectors}\n")).unwrap();
        fs::write(d.join("queue/rotational"), rot).unwrap();
        fs::write(d.join("removable"), removable).unwrap();
        for p in parts {
            fs::create_dir_all(d.join(p)).unwrap();
            fs::write(d.join(p).join("partition"), "1").unwrap();
        }
    }

    #[test]
    fn scans_and_skips() {
        let t = tempfile::tempdir().unwrap();
        fake(t.path(), "sdb", 2048, "1\n", "0\n", &[]);
        fake(t.path(), "sda", 4096, "0\n", "0\n", &["sda1", "sda2"]);
        fake(t.path(), "loop0", 100, "0", "0", &[]);
        fake(t.path(), "zram0", 100, "0", "0", &[]);
        fake(t.path(), "sdc", 100, "0", "1", &["sdc1"]);
        fake(t.path(), "sdd", 0, "0", "0", &[]);
        let disks = scan(t.path()).unwrap();
        let names: Vec<_> = disks.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["loop0", "sda", "sdb", "sdc", "sdd", "zram0"]);
        let sda = &disks[1];
        assert_eq!(sda.size_bytes, 4096 * 512);
        assert!(!sda.rotational);
        assert_eq!(sda.partitions, ["sda1", "sda2"]);
        assert!(disks[2].rotational);
        let usable: Vec<_> = disks
            .iter()
            .filter(|d| skip_reason(d, None).is_none())
            .map(|d| d.name.as_str())
            .collect();
        assert_eq!(usable, ["sda", "sdb"]);
        assert_eq!(
            skip_reason(&disks[3], None),
            Some("removable (the boot medium lives on one)")
        );
        let only = vec!["loop0".to_string()];
        let usable: Vec<_> = disks
            .iter()
            .filter(|d| skip_reason(d, Some(&only)).is_none())
            .map(|d| d.name.as_str())
            .collect();
        assert_eq!(usable, ["loop0"]);
    }
}
