//! A btrfs on a loop device the test makes and mounts, as on a node's cache partition;
//! unmounted and detached when dropped.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The mounted file system.
pub struct LoopBtrfs {
    /// Where it is mounted.
    pub mnt: PathBuf,
    dev: String,
    _dir: tempfile::TempDir,
}

impl Drop for LoopBtrfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.mnt, nix::mount::MntFlags::MNT_DETACH);
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

impl LoopBtrfs {
    /// Makes and mounts a btrfs of `bytes`; `None` when the test is allowed to skip without
    /// root or the tools (the gate has said so).
    pub fn new(bytes: u64) -> Option<LoopBtrfs> {
        crate::require_root("makes a loop device and mounts btrfs").ok()?;
        crate::require_tools(&["losetup", "mkfs.btrfs", "btrfs"]).ok()?;
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("a temporary directory: {e}"));
        let img = dir.path().join("disk.img");
        std::fs::File::create(&img)
            .and_then(|f| f.set_len(bytes))
            .unwrap_or_else(|e| panic!("the disk image: {e}"));
        let ok = Command::new("mkfs.btrfs")
            .args(["-q", "-f"])
            .arg(&img)
            .status()
            .unwrap_or_else(|e| panic!("running mkfs.btrfs: {e}"));
        assert!(ok.success(), "mkfs.btrfs failed");
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&img)
            .output()
            .unwrap_or_else(|e| panic!("running losetup: {e}"));
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap_or_else(|e| panic!("the mount point: {e}"));
        let fs = LoopBtrfs {
            mnt,
            dev,
            _dir: dir,
        };
        nix::mount::mount(
            Some(Path::new(&fs.dev)),
            &fs.mnt,
            Some("btrfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .unwrap_or_else(|e| panic!("mounting the btrfs: {e}"));
        Some(fs)
    }
}
