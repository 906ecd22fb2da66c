//! The storage pools storage has mounted, one btrfs per disk, written to a file that the
//! agent (what is sold) and provision (where volumes and VM disks go) read.
//!
//! A disk is sold only when it carries a pool: a disk storage may not format (it holds data
//! and `gridos.wipe=empty`) cannot hold a twin's bytes, so it is not capacity.

use crate::{Kind, Result};
use std::path::{Path, PathBuf};

/// Where storage publishes the pools on a node.
pub const POOLS_FILE: &str = "/run/gridos/pools.json";

/// Where storage mounts the pools other than the cache, one folder per pool id.
pub const POOLS_DIR: &str = "/var/lib/gridos/pools";

/// One mounted pool.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Pool {
    /// The btrfs file system's UUID: stable across boots, whatever the disk is called.
    pub id: String,
    /// The disk it fills, by kernel name at this boot.
    pub disk: String,
    /// SSD or HDD, as storage measured the disk.
    pub kind: Kind,
    /// Where it is mounted.
    pub mountpoint: PathBuf,
    /// The file system's size in bytes.
    pub size_bytes: u64,
    /// The cache partition: it also holds the node's own state, images and logs.
    #[serde(default)]
    pub cache: bool,
}

/// Writes the pools atomically (mode 0644: the agent reads them without privilege).
pub fn write(path: &Path, pools: &[Pool]) -> Result<()> {
    crate::write_json(path, pools)
}

/// Reads the pools; a missing file is no pool (storage has not mounted any yet).
pub fn read(path: &Path) -> Result<Vec<Pool>> {
    crate::read_json(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_missing_file() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("run/pools.json");
        assert!(read(&path).unwrap().is_empty());
        let pools = vec![
            Pool {
                id: "6f1c".into(),
                disk: "sda".into(),
                kind: Kind::Ssd,
                mountpoint: "/var/cache/gridos".into(),
                size_bytes: 1 << 30,
                cache: true,
            },
            Pool {
                id: "99ab".into(),
                disk: "sdb".into(),
                kind: Kind::Hdd,
                mountpoint: "/var/lib/gridos/pools/99ab".into(),
                size_bytes: 4 << 30,
                cache: false,
            },
        ];
        write(&path, &pools).unwrap();
        assert_eq!(read(&path).unwrap(), pools);
        std::fs::write(&path, b"{").unwrap();
        assert!(matches!(read(&path), Err(crate::Error::Parse { .. })));
    }
}
