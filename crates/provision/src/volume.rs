//! Volumes: directories on the cache partition that outlive the containers mounting them;
//! and, the same way, each container's writable layer, held to the disk it reserved.
//! On btrfs (a node's cache partition) each is a subvolume with a qgroup limit of its size,
//! set with the image's `btrfs` program; elsewhere (a cache on tmpfs, a test host) a plain
//! directory whose size is not enforced, and the status says so.
//!
//! Every volume lives on the cache partition for now, whatever disk kind it asked for: the
//! node has no HDD pool yet.

use std::path::Path;
use std::process::Command;

fn on_btrfs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type() == nix::sys::statfs::BTRFS_SUPER_MAGIC)
        .unwrap_or(false)
}

fn btrfs(args: &[&str], path: &Path) -> Result<(), String> {
    let out = Command::new("btrfs")
        .args(args)
        .arg(path)
        .output()
        .map_err(|e| {
            format!(
                "btrfs {}: {}",
                args.join(" "),
                hosttools::spawn_error("btrfs", e)
            )
        })?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "btrfs {} {}: {}",
        args.join(" "),
        path.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    ))
}

/// Makes the volume at `path` if it is not there and limits it to `size` bytes. Returns a
/// note for the twin when the size cannot be enforced.
pub fn ensure(path: &Path, size: u64) -> Result<Option<String>, String> {
    let parent = path.parent().unwrap_or(Path::new("/"));
    if !on_btrfs(parent) {
        std::fs::create_dir_all(path).map_err(|e| format!("creating the volume: {e}"))?;
        return Ok(Some(
            "size not enforced: the node's cache is not on btrfs".to_string(),
        ));
    }
    if !path.exists() {
        btrfs(&["subvolume", "create"], path)?;
    } else if !is_subvolume(path) {
        // Made while the cache was on tmpfs and copied here when it moved: a qgroup limit on
        // it would land on the subvolume holding it, the whole cache partition.
        return Ok(Some(
            "size not enforced: the volume was made before the cache moved to btrfs".to_string(),
        ));
    }
    quota_enabled(parent)?;
    btrfs(&["qgroup", "limit", &size.to_string()], path)?;
    Ok(None)
}

/// Enables quotas on the file system holding `dir`, once per directory in this process:
/// every container start makes a writable layer here, and enabling them again would only
/// cost a `btrfs` run each time.
fn quota_enabled(dir: &Path) -> Result<(), String> {
    static DONE: std::sync::Mutex<Vec<std::path::PathBuf>> = std::sync::Mutex::new(Vec::new());
    let mut done = DONE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !done.iter().any(|d| d == dir) {
        btrfs(&["quota", "enable"], dir)?;
        done.push(dir.to_path_buf());
    }
    Ok(())
}

/// Deletes the volume at `path` and everything in it.
pub fn delete(path: &Path) -> Result<(), String> {
    if on_btrfs(path) && is_subvolume(path) {
        return btrfs(&["subvolume", "delete"], path);
    }
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(format!("deleting: {e}")),
        _ => Ok(()),
    }
}

/// A subvolume's root has inode 256 on btrfs.
fn is_subvolume(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).is_ok_and(|m| m.ino() == 256)
}
