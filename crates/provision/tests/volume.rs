//! Volumes on a real btrfs (a loop device the test makes, as on a node's cache partition):
//! the quota holds, a plain directory found there is never given a limit that would land on
//! the whole file system, and deletion removes the subvolume.

// A failed unwrap, expect or assertion is a failed test: the workspace's deny of them is
// for product code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use provision::volume;
use test_infra::btrfs::LoopBtrfs;

fn btrfs() -> Option<LoopBtrfs> {
    LoopBtrfs::new(256 << 20)
}

/// Writes `mib` MiB to `path`, synced: where a quota holds, this fails.
fn fill(path: &Path, mib: usize) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    let chunk = vec![0x5au8; 1 << 20];
    for _ in 0..mib {
        f.write_all(&chunk)?;
    }
    f.sync_all()
}

#[test]
fn a_volume_on_btrfs_is_a_subvolume_held_to_its_size() {
    let Some(fs) = btrfs() else { return };
    let volumes = fs.mnt.join("volumes");
    std::fs::create_dir(&volumes).unwrap();
    let v = volumes.join("c7-data");
    assert_eq!(volume::ensure(&v, 8 << 20), Ok(None));
    assert!(fill(&v.join("small"), 4).is_ok());
    let err = fill(&v.join("big"), 32).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EDQUOT), "{err}");
    // Applied again (a reboot, a new version): kept, with what it holds.
    assert_eq!(volume::ensure(&v, 8 << 20), Ok(None));
    assert!(v.join("small").exists());

    // A plain directory (made while the cache was on tmpfs) gets no limit: one on it would
    // hold the whole file system to 8 MiB.
    let plain = volumes.join("c7-old");
    std::fs::create_dir(&plain).unwrap();
    let note = volume::ensure(&plain, 8 << 20).unwrap().unwrap();
    assert!(note.contains("not enforced"), "{note}");
    assert!(fill(&fs.mnt.join("elsewhere"), 48).is_ok());

    volume::delete(&v).unwrap();
    volume::delete(&plain).unwrap();
    assert!(!v.exists() && !plain.exists());
    // Deleting what is not there is done already.
    volume::delete(&v).unwrap();
}
