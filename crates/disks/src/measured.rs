//! The measurement storage makes of each disk, written to a file the agent reads: one seek
//! test per disk, one answer for both the cache placement and the capacity sold.

use crate::{Disk, Kind, Result};
use std::path::Path;
use std::time::Duration;

/// Where storage publishes its measurements on a node.
pub const MEASURED_FILE: &str = "/run/gridos/disks.json";

/// One disk as storage measured it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Measured {
    /// The disk as sysfs described it when measured.
    pub disk: Disk,
    /// SSD or HDD.
    pub kind: Kind,
    /// Median random-read latency in µs, when the seek test ran.
    pub latency_us: Option<u64>,
}

impl Measured {
    /// Classifies `disk` from its kernel flag and a seek test result.
    pub fn new(disk: Disk, latency: Option<Duration>) -> Measured {
        Measured {
            kind: crate::classify(disk.rotational, latency),
            latency_us: latency.map(|l| u64::try_from(l.as_micros()).unwrap_or(u64::MAX)),
            disk,
        }
    }
}

/// Writes the measurements atomically (mode 0644: the agent reads them without privilege).
pub fn write(path: &Path, disks: &[Measured]) -> Result<()> {
    crate::write_json(path, disks)
}

/// Reads the measurements; a missing file is an empty list (storage has not measured yet).
pub fn read(path: &Path) -> Result<Vec<Measured>> {
    crate::read_json(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(name: &str, rotational: Option<bool>) -> Disk {
        Disk {
            name: name.into(),
            size_bytes: 1 << 30,
            rotational,
            removable: false,
            read_only: false,
            partitions: vec![],
        }
    }

    #[test]
    fn round_trip_and_missing_file() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("run/disks.json");
        assert!(read(&path).unwrap().is_empty());
        let m = vec![
            Measured::new(disk("sda", Some(false)), Some(Duration::from_micros(120))),
            Measured::new(disk("sdb", Some(true)), None),
        ];
        write(&path, &m).unwrap();
        let back = read(&path).unwrap();
        assert_eq!(back, m);
        assert_eq!(back[0].kind, Kind::Ssd);
        assert_eq!(back[0].latency_us, Some(120));
        assert_eq!(back[1].kind, Kind::Hdd);
        std::fs::write(&path, "{").unwrap();
        assert!(matches!(read(&path), Err(crate::Error::Parse { .. })));
    }
}
