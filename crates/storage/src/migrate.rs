//! Moving the cache off tmpfs once a disk shows up after boot.
//!
//! The agent keeps running while this happens and writes its queue under the mount point by
//! path. So: the tmpfs stays reachable through a bind mount, the new partition is filled from
//! it, moved over the mount point, then filled again with whatever the agent wrote in between
//! (a queue entry copied twice is a replay the registry already answers). The tmpfs itself stays
//! mounted underneath, hidden and no longer written to.

use crate::{Error, Result};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Write {
        path: path.display().to_string(),
        source,
    }
}

fn mnt_err(what: &Path, target: &Path) -> impl FnOnce(nix::Error) -> Error {
    let what = what.display().to_string();
    let target = target.display().to_string();
    move |source| Error::Mount {
        what,
        target,
        source,
    }
}

/// Copies `from` into `to` recursively, keeping modes and owners; files already present in
/// `to` are left as they are. Returns how many entries were copied.
///
/// The agent keeps writing and deleting its queue entries meanwhile: an entry that is gone
/// from `from` before it is read, or from `to` right after it was copied (a report delivered
/// and removed), is not an error; it has nothing left to carry over.
pub fn copy_missing(from: &Path, to: &Path) -> Result<usize> {
    let mut copied = 0;
    let entries = match std::fs::read_dir(from) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(source) => {
            return Err(Error::Read {
                path: from.display().to_string(),
                source,
            })
        }
    };
    for entry in entries.flatten() {
        let src = entry.path();
        let dst = to.join(entry.file_name());
        match copy_entry(&src, &dst) {
            Ok(Some(n)) => copied += n,
            Ok(None) => {}
            Err((path, e)) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::debug!(path = %path.display(), "went away while the cache moved; skipped");
            }
            Err((path, source)) => {
                return Err(Error::Write {
                    path: path.display().to_string(),
                    source,
                })
            }
        }
        if std::fs::symlink_metadata(&src).is_ok_and(|m| m.is_dir()) && dst.is_dir() {
            copied += copy_missing(&src, &dst)?;
        }
    }
    Ok(copied)
}

/// Copies one entry (a directory itself, not its contents); `None` when there was nothing to
/// copy. The error names the path it happened on.
fn copy_entry(
    src: &Path,
    dst: &Path,
) -> std::result::Result<Option<usize>, (PathBuf, std::io::Error)> {
    let on = |p: &Path| {
        let p = p.to_path_buf();
        move |e| (p, e)
    };
    let meta = std::fs::symlink_metadata(src).map_err(on(src))?;
    let exists = std::fs::symlink_metadata(dst).is_ok();
    if exists {
        return Ok(None);
    }
    if meta.is_dir() {
        std::fs::create_dir(dst).map_err(on(dst))?;
    } else if meta.file_type().is_symlink() {
        let target = std::fs::read_link(src).map_err(on(src))?;
        std::os::unix::fs::symlink(target, dst).map_err(on(dst))?;
    } else if meta.is_file() {
        let bytes = std::fs::read(src).map_err(on(src))?;
        atomicfile::write(dst, &bytes, meta.mode() & 0o7777).map_err(on(dst))?;
    } else {
        return Ok(None);
    }
    std::os::unix::fs::lchown(dst, Some(meta.uid()), Some(meta.gid())).map_err(on(dst))?;
    if meta.is_dir() {
        std::fs::set_permissions(dst, std::fs::Permissions::from_mode(meta.mode() & 0o7777))
            .map_err(on(dst))?;
    }
    Ok(Some(1))
}

/// Puts the btrfs `partition` over the tmpfs at `mountpoint`, carrying its contents over.
pub fn tmpfs_to_disk(partition: &Path, mountpoint: &Path, run_dir: &Path) -> Result<()> {
    let old = run_dir.join("cache-old");
    let new = run_dir.join("cache-new");
    for d in [&old, &new] {
        std::fs::create_dir_all(d).map_err(io(d))?;
    }
    mount(
        Some(mountpoint),
        &old,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(mnt_err(mountpoint, &old))?;
    let result = (|| {
        mount(
            Some(partition),
            &new,
            Some("btrfs"),
            MsFlags::MS_NOATIME,
            None::<&str>,
        )
        .map_err(mnt_err(partition, &new))?;
        let first = copy_missing(&old, &new)?;
        let root = std::fs::metadata(&old).map_err(io(&old))?;
        std::fs::set_permissions(&new, std::fs::Permissions::from_mode(root.mode() & 0o7777))
            .map_err(io(&new))?;
        mount(
            Some(&new),
            mountpoint,
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        )
        .map_err(mnt_err(&new, mountpoint))?;
        let second = copy_missing(&old, mountpoint)?;
        tracing::info!(first, second, "cache contents copied from tmpfs");
        Ok(())
    })();
    if result.is_err() {
        let _ = umount2(&new, MntFlags::MNT_DETACH);
    }
    let _ = umount2(&old, MntFlags::MNT_DETACH);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_that_go_away_meanwhile_are_skipped() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        std::fs::create_dir_all(a.join("queue")).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        // Delivered and removed by the agent before it was read.
        assert!(matches!(
            copy_entry(&a.join("queue/7.json"), &b.join("7.json")),
            Err((_, e)) if e.kind() == std::io::ErrorKind::NotFound
        ));
        // A destination folder removed under it is the same: not an error for the move.
        std::fs::write(a.join("queue/8.json"), "r").unwrap();
        let gone = b.join("gone");
        assert!(matches!(
            copy_entry(&a.join("queue/8.json"), &gone.join("8.json")),
            Err((_, e)) if e.kind() == std::io::ErrorKind::NotFound
        ));
        assert_eq!(copy_missing(&a, &b).unwrap(), 2);
        assert_eq!(std::fs::read(b.join("queue/8.json")).unwrap(), b"r");
    }

    #[test]
    fn copies_what_is_missing_and_keeps_what_is_there() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        std::fs::create_dir_all(a.join("identity")).unwrap();
        std::fs::create_dir_all(a.join("queue")).unwrap();
        std::fs::write(a.join("identity/node.key"), "k").unwrap();
        std::fs::set_permissions(
            a.join("identity/node.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        std::fs::set_permissions(a.join("identity"), std::fs::Permissions::from_mode(0o700))
            .unwrap();
        std::fs::write(a.join("queue/1.json"), "one").unwrap();
        std::fs::create_dir_all(b.join("queue")).unwrap();
        std::fs::write(b.join("queue/1.json"), "newer").unwrap();
        assert_eq!(copy_missing(&a, &b).unwrap(), 2);
        assert_eq!(
            std::fs::read_to_string(b.join("identity/node.key")).unwrap(),
            "k"
        );
        assert_eq!(
            std::fs::read_to_string(b.join("queue/1.json")).unwrap(),
            "newer"
        );
        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o777;
        assert_eq!(mode(&b.join("identity/node.key")), 0o600);
        assert_eq!(mode(&b.join("identity")), 0o700);
        // A second pass finds nothing new.
        assert_eq!(copy_missing(&a, &b).unwrap(), 0);
    }
}
