//! Moving the system off the initramfs' rootfs onto a tmpfs, first thing at boot.
//!
//! The kernel unpacks the initramfs into `rootfs`, the mount at the very bottom of the mount
//! tree. Two things follow. `pivot_root(2)` refuses to run while the caller's root is that
//! mount (it has no parent to hang the new root on), and every container runtime needs it.
//! And whatever lies in rootfs stays reachable from any mount namespace for a process that
//! escapes a chroot: with the OS itself in rootfs that would be the node's binaries, writable.
//! So PID 1 does what `switch_root` does on other systems, and LinuxKit's init for the same
//! reason: copy the tree into a fresh tmpfs, empty rootfs, move the tmpfs onto `/` and
//! `chroot` into it. Afterwards rootfs holds nothing but the tmpfs' mount point.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount, MsFlags};

/// Where the tmpfs is prepared (in rootfs' root, so the move lands it on `/`).
const NEW_ROOT: &str = "/.gridos-root";

/// Why the root stayed where it was.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// Reading or writing the tree.
    #[error("{what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// A mount, the move or the chroot.
    #[error("{what}")]
    Sys {
        /// What was being done.
        what: &'static str,
        /// Cause.
        source: nix::Error,
    },
}

/// What the move did, for the boot log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Moved {
    /// Files, directories, links and nodes copied.
    pub entries: u64,
    /// Bytes of file contents copied.
    pub bytes: u64,
    /// Entries of rootfs that could not be removed (memory not given back; harmless).
    pub left_behind: u64,
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> RootfsError {
    let path = path.to_path_buf();
    move |source| RootfsError::Io { what, path, source }
}

fn sys_err(what: &'static str) -> impl FnOnce(nix::Error) -> RootfsError {
    move |source| RootfsError::Sys { what, source }
}

/// True when `/` is the kernel's rootfs: `/proc/self/mountinfo` says so (proc is mounted for
/// the look and unmounted again, so the move finds nothing mounted in the tree).
pub fn on_rootfs() -> Result<bool, RootfsError> {
    let _ = fs::create_dir_all("/proc");
    let mounted_here = match mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        MsFlags::empty(),
        None::<&str>,
    ) {
        Ok(()) => true,
        Err(nix::Error::EBUSY) => false,
        Err(e) => return Err(sys_err("mounting /proc to look at the root")(e)),
    };
    let info = fs::read_to_string("/proc/self/mountinfo");
    if mounted_here {
        umount("/proc").map_err(sys_err("unmounting /proc after the look"))?;
    }
    let info = info.map_err(io_err("reading", Path::new("/proc/self/mountinfo")))?;
    Ok(root_is_rootfs(&info))
}

/// Whether the root in a mountinfo text is `rootfs`: the last mount on `/` (mounts are
/// listed in the order they were made) is the one seen.
pub fn root_is_rootfs(mountinfo: &str) -> bool {
    let on_root = mountinfo.lines().rev().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        (left.split_whitespace().nth(4) == Some("/")).then(|| right.split_whitespace().next())
    });
    on_root.flatten() == Some("rootfs")
}

/// Moves the system from rootfs onto a tmpfs (see the module's documentation). On an error
/// before the move, the tmpfs goes and the system stays on rootfs: it boots as before, only
/// containers cannot start.
pub fn leave_rootfs() -> Result<Moved, RootfsError> {
    let new_root = Path::new(NEW_ROOT);
    fs::create_dir_all(new_root).map_err(io_err("creating", new_root))?;
    mount(
        Some("tmpfs"),
        new_root,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=0755"),
    )
    .map_err(sys_err("mounting the new root's tmpfs"))?;
    let root_dev = fs::symlink_metadata("/")
        .map_err(io_err("reading", Path::new("/")))?
        .dev();
    let mut moved = Moved::default();
    let mut links = HashMap::new();
    if let Err(e) = copy_tree(Path::new("/"), new_root, root_dev, &mut links, &mut moved) {
        let _ = umount(new_root);
        let _ = fs::remove_dir(new_root);
        return Err(e);
    }
    // Past this point the copy is whole: a failure to empty rootfs only costs memory.
    moved.left_behind = empty(Path::new("/"), root_dev);
    std::env::set_current_dir(new_root).map_err(io_err("entering", new_root))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(sys_err("moving the new root onto /"))?;
    nix::unistd::chroot(".").map_err(sys_err("chroot into the new root"))?;
    std::env::set_current_dir("/").map_err(io_err("entering", Path::new("/")))?;
    Ok(moved)
}

/// Copies `from` into `to` (an existing directory) with owners, modes, symlinks, device
/// nodes and hard links; entries on other file systems than `dev` are left out.
fn copy_tree(
    from: &Path,
    to: &Path,
    dev: u64,
    links: &mut HashMap<u64, PathBuf>,
    moved: &mut Moved,
) -> Result<(), RootfsError> {
    let entries = fs::read_dir(from).map_err(io_err("reading", from))?;
    for e in entries {
        let e = e.map_err(io_err("reading", from))?;
        let src = e.path();
        if src == Path::new(NEW_ROOT) {
            continue;
        }
        let meta = fs::symlink_metadata(&src).map_err(io_err("reading", &src))?;
        if meta.dev() != dev {
            continue;
        }
        let dst = to.join(e.file_name());
        copy_entry(&src, &dst, &meta, dev, links, moved)?;
        moved.entries += 1;
    }
    Ok(())
}

fn copy_entry(
    src: &Path,
    dst: &Path,
    meta: &fs::Metadata,
    dev: u64,
    links: &mut HashMap<u64, PathBuf>,
    moved: &mut Moved,
) -> Result<(), RootfsError> {
    let ft = meta.file_type();
    let owner = (Some(meta.uid()), Some(meta.gid()));
    if ft.is_dir() {
        fs::create_dir(dst).map_err(io_err("creating", dst))?;
        copy_tree(src, dst, dev, links, moved)?;
    } else if ft.is_symlink() {
        let target = fs::read_link(src).map_err(io_err("reading the link", src))?;
        std::os::unix::fs::symlink(&target, dst).map_err(io_err("creating the link", dst))?;
        std::os::unix::fs::lchown(dst, owner.0, owner.1).map_err(io_err("chown", dst))?;
        return Ok(());
    } else if ft.is_file() {
        if meta.nlink() > 1 {
            if let Some(first) = links.get(&meta.ino()) {
                return fs::hard_link(first, dst).map_err(io_err("linking", dst));
            }
            links.insert(meta.ino(), dst.to_path_buf());
        }
        moved.bytes += fs::copy(src, dst).map_err(io_err("copying", src))?;
    } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() || ft.is_socket() {
        let kind = nix::sys::stat::SFlag::from_bits_truncate(meta.mode() & libc::S_IFMT);
        let perm = nix::sys::stat::Mode::from_bits_truncate(meta.mode() & 0o7777);
        nix::sys::stat::mknod(dst, kind, perm, meta.rdev())
            .map_err(sys_err("making a device node in the new root"))?;
    }
    std::os::unix::fs::chown(dst, owner.0, owner.1).map_err(io_err("chown", dst))?;
    // After the owner: chown clears set-uid and set-gid bits.
    fs::set_permissions(dst, fs::Permissions::from_mode(meta.mode() & 0o7777))
        .map_err(io_err("chmod", dst))
}

/// Removes what `dir` holds on file system `dev`, but the new root; returns how many
/// entries stayed.
fn empty(dir: &Path, dev: u64) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 1;
    };
    let mut left = 0;
    for e in entries.flatten() {
        let path = e.path();
        if path == Path::new(NEW_ROOT) {
            continue;
        }
        let Ok(meta) = fs::symlink_metadata(&path) else {
            left += 1;
            continue;
        };
        if meta.dev() != dev {
            // A mount (the console's devtmpfs): its mount point stays.
            left += 1;
            continue;
        }
        if meta.is_dir() {
            left += empty(&path, dev);
            if fs::remove_dir(&path).is_err() {
                left += 1;
            }
        } else if fs::remove_file(&path).is_err() {
            left += 1;
        }
    }
    left
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The copy keeps what the system needs of each entry, and the emptying leaves nothing.
    #[test]
    fn a_tree_is_copied_whole_and_emptied() {
        let d = tempfile::tempdir().unwrap();
        let (src, dst) = (d.path().join("src"), d.path().join("dst"));
        fs::create_dir_all(src.join("usr/bin")).unwrap();
        fs::write(src.join("usr/bin/gridos"), b"binary").unwrap();
        fs::set_permissions(
            src.join("usr/bin/gridos"),
            fs::Permissions::from_mode(0o4755),
        )
        .unwrap();
        std::os::unix::fs::symlink("gridos", src.join("usr/bin/gridctl")).unwrap();
        fs::hard_link(src.join("usr/bin/gridos"), src.join("usr/bin/hard")).unwrap();
        fs::create_dir(src.join("tmp")).unwrap();
        fs::set_permissions(src.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
        nix::unistd::mkfifo(
            &src.join("fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        fs::create_dir(&dst).unwrap();
        let dev = fs::symlink_metadata(&src).unwrap().dev();
        let mut moved = Moved::default();
        copy_tree(&src, &dst, dev, &mut HashMap::new(), &mut moved).unwrap();
        assert_eq!(fs::read(dst.join("usr/bin/gridos")).unwrap(), b"binary");
        let mode = |p: &str| fs::symlink_metadata(dst.join(p)).unwrap().mode() & 0o7777;
        assert_eq!(mode("usr/bin/gridos"), 0o4755);
        assert_eq!(mode("tmp"), 0o1777);
        assert_eq!(
            fs::read_link(dst.join("usr/bin/gridctl")).unwrap(),
            Path::new("gridos")
        );
        let ino = |p: &str| fs::metadata(dst.join(p)).unwrap().ino();
        assert_eq!(ino("usr/bin/hard"), ino("usr/bin/gridos"));
        assert!(fs::symlink_metadata(dst.join("fifo"))
            .unwrap()
            .file_type()
            .is_fifo());
        assert_eq!((moved.entries, moved.bytes), (7, 6));
        assert_eq!(empty(&src, dev), 0);
        assert_eq!(fs::read_dir(&src).unwrap().count(), 0);
    }

    #[test]
    fn the_initramfs_root_is_recognised_in_mountinfo() {
        let initramfs = "1 1 0:2 / / rw - rootfs rootfs rw,size=1004k\n\
                         22 1 0:21 / /proc rw,nosuid - proc proc rw\n";
        assert!(root_is_rootfs(initramfs));
        let moved = "1 1 0:2 / / rw - rootfs rootfs rw\n\
                     24 1 0:23 / / rw - tmpfs tmpfs rw\n";
        // rootfs may still be listed, under the tmpfs that is the root now.
        assert!(!root_is_rootfs(moved));
        let disk = "25 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw\n";
        assert!(!root_is_rootfs(disk));
    }
}
