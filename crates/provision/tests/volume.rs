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

/// Two pools as storage lists them, an SSD (the cache) and an HDD, each a btrfs of its own:
/// each volume goes on the pool of its kind as a subvolume held to its size; one larger than
/// any pool of its kind fails with the reason and leaves nothing; deleting the deployment
/// deletes the volumes and frees their bookings, so the space is offered again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_go_on_the_pool_of_their_kind() {
    use gridtypes::deployment::Deployment;
    use gridtypes::mailbox::DeploymentState;
    use serde_json::json;
    let Some(cache) = btrfs() else { return };
    let Some(hdd) = btrfs() else { return };
    let t = tempfile::tempdir().unwrap();
    let pools_file = t.path().join("pools.json");
    let pool = |id: &str, kind, fs: &LoopBtrfs, cache| disks::Pool {
        id: id.into(),
        disk: format!("disk-{id}"),
        kind,
        mountpoint: fs.mnt.clone(),
        size_bytes: 256 << 20,
        cache,
    };
    disks::pools::write(
        &pools_file,
        &[
            pool("cache", disks::Kind::Ssd, &cache, true),
            pool("hdd", disks::Kind::Hdd, &hdd, false),
        ],
    )
    .unwrap();
    let mut cfg = provision::Config::new(&cache.mnt.join("workloads"));
    cfg.pools = Some(pools_file);
    let rt = provision::Runtime::open(cfg.clone()).unwrap();
    let deployment = |contract: i64, volumes: serde_json::Value| -> Deployment {
        let d: Deployment = serde_json::from_value(
            json!({"contract_id": contract, "version": 1, "workloads": volumes}),
        )
        .unwrap();
        d.validate().unwrap();
        d
    };
    let twin = "5866666666666666666666666666666666666666666666666666666666666666";
    let s = rt
        .apply(
            7,
            twin,
            &deployment(
                7,
                json!([
                    {"kind": "volume", "name": "fast", "size": 8 << 20},
                    {"kind": "volume", "name": "slow", "size": 8 << 20, "disk": "hdd"},
                    {"kind": "volume", "name": "huge", "size": 1u64 << 30, "disk": "hdd"},
                ]),
            ),
        )
        .await;
    let by = |name: &str| s.iter().find(|w| w.name == name).unwrap().clone();
    assert_eq!(by("fast").state, DeploymentState::Running, "{s:?}");
    assert_eq!(by("slow").state, DeploymentState::Running, "{s:?}");
    assert_eq!(by("fast").reason, None, "{s:?}");
    let huge = by("huge");
    assert_eq!(huge.state, DeploymentState::Failed);
    let why = huge.reason.unwrap();
    assert!(why.contains("no HDD pool has room"), "{why}");
    let fast = cfg.root.join("volumes/c7-fast");
    let slow = hdd.mnt.join("workloads/volumes/c7-slow");
    use std::os::unix::fs::MetadataExt;
    for v in [&fast, &slow] {
        assert_eq!(
            std::fs::metadata(v).unwrap().ino(),
            256,
            "{v:?} is a subvolume"
        );
    }
    assert!(!hdd.mnt.join("workloads/volumes/c7-huge").exists());
    assert!(!cfg.root.join("volumes/c7-slow").exists());
    let err = fill(&slow.join("big"), 32).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EDQUOT), "{err}");

    rt.remove(7).await;
    assert!(!fast.exists() && !slow.exists());
    let ledger = std::fs::read_to_string(cfg.root.join(provision::pool::LEDGER)).unwrap();
    assert!(!ledger.contains("c7-"), "{ledger}");
    // The freed HDD pool takes a volume of nearly its whole size again.
    let s = rt
        .apply(
            8,
            twin,
            &deployment(
                8,
                json!([
                    {"kind": "volume", "name": "most", "size": 200 << 20, "disk": "hdd"},
                ]),
            ),
        )
        .await;
    assert_eq!(s[0].state, DeploymentState::Running, "{s:?}");
    rt.remove(8).await;
}
