//! Least privilege for services: user and group, the capability bounding set (and ambient
//! capabilities for a non-root user), `no_new_privs`, and a cgroup with memory and pids limits.
//!
//! Everything is resolved in the supervisor (allocating, reading files) into a [`Plan`]; the
//! forked child then applies it with plain system calls only, between `fork` and `exec`,
//! where allocating or locking is not allowed.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// Capability names as `capabilities(7)` spells them (without `CAP_`), by number.
pub const CAPS: &[&str] = &[
    "chown",
    "dac_override",
    "dac_read_search",
    "fowner",
    "fsetid",
    "kill",
    "setgid",
    "setuid",
    "setpcap",
    "linux_immutable",
    "net_bind_service",
    "net_broadcast",
    "net_admin",
    "net_raw",
    "ipc_lock",
    "ipc_owner",
    "sys_module",
    "sys_rawio",
    "sys_chroot",
    "sys_ptrace",
    "sys_pacct",
    "sys_admin",
    "sys_boot",
    "sys_nice",
    "sys_resource",
    "sys_time",
    "sys_tty_config",
    "mknod",
    "lease",
    "audit_write",
    "audit_control",
    "setfcap",
    "mac_override",
    "mac_admin",
    "syslog",
    "wake_alarm",
    "block_suspend",
    "audit_read",
    "perfmon",
    "bpf",
    "checkpoint_restore",
];

/// The capability number of `name` (`net_admin`, `CAP_NET_ADMIN`, any case).
pub fn cap_number(name: &str) -> Option<u32> {
    let n = name.to_ascii_lowercase();
    let n = n.strip_prefix("cap_").unwrap_or(&n);
    CAPS.iter().position(|c| *c == n).map(|i| i as u32)
}

/// Why a service's privileges could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum PrivError {
    /// A user or group name is not in `/etc/passwd` / `/etc/group`.
    #[error("unknown {kind} {name:?} (not in {file})")]
    Unknown {
        /// `user` or `group`.
        kind: &'static str,
        /// The name.
        name: String,
        /// The file searched.
        file: String,
    },
    /// A cgroup or state directory could not be set up.
    #[error("{what}")]
    Io {
        /// What was attempted.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// Looks up a user by name or number in `/etc/passwd` text: `(uid, primary gid)`.
pub fn lookup_user(passwd: &str, user: &str) -> Option<(u32, u32)> {
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 4 {
            continue;
        }
        let (Ok(uid), Ok(gid)) = (f[2].parse::<u32>(), f[3].parse::<u32>()) else {
            continue;
        };
        if f[0] == user || user.parse::<u32>().ok() == Some(uid) {
            return Some((uid, gid));
        }
    }
    user.parse::<u32>().ok().map(|uid| (uid, uid))
}

/// Looks up a group by name or number in `/etc/group` text.
pub fn lookup_group(group_file: &str, group: &str) -> Option<u32> {
    if let Ok(gid) = group.parse::<u32>() {
        return Some(gid);
    }
    group_file.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() >= 3 && f[0] == group)
            .then(|| f[2].parse().ok())
            .flatten()
    })
}

/// What the child applies before `exec`, all resolved in advance.
#[derive(Debug, Default)]
pub struct Plan {
    /// `(uid, gid)` to switch to; `None` stays root.
    pub ids: Option<(u32, u32)>,
    /// Capabilities kept, as a bit mask; `None` keeps the full set (no bounding-set change).
    pub caps: Option<u64>,
    /// The highest capability number the kernel knows (`/proc/sys/kernel/cap_last_cap`).
    pub last_cap: u32,
    /// Sets `PR_SET_NO_NEW_PRIVS`: no setuid binary or file capability can give more.
    pub no_new_privs: bool,
    /// `cgroup.procs` of the service's cgroup, opened for writing: the child moves itself.
    pub cgroup_procs: Option<OwnedFd>,
}

/// A service's cgroup under `root`, created with its limits; returns its `cgroup.procs`.
pub fn cgroup(
    root: &Path,
    service: &str,
    memory_max: Option<u64>,
    pids_max: Option<u64>,
) -> Result<OwnedFd, PrivError> {
    let io = |what: String| move |source| PrivError::Io { what, source };
    let parent = root.join("services");
    if !parent.exists() {
        std::fs::create_dir(&parent).map_err(io(format!("mkdir {}", parent.display())))?;
    }
    // The parent holds no process itself, so it may hand controllers down (cgroup v2 rule).
    let ctl = parent.join("cgroup.subtree_control");
    std::fs::write(&ctl, "+memory +pids").map_err(io(format!("write {}", ctl.display())))?;
    let dir = parent.join(service);
    if !dir.exists() {
        std::fs::create_dir(&dir).map_err(io(format!("mkdir {}", dir.display())))?;
    }
    let limit = |v: Option<u64>| v.map_or("max".to_string(), |n| n.to_string());
    for (file, value) in [
        ("memory.max", limit(memory_max)),
        ("pids.max", limit(pids_max)),
    ] {
        let p = dir.join(file);
        std::fs::write(&p, &value).map_err(io(format!("write {value} to {}", p.display())))?;
    }
    let procs = dir.join("cgroup.procs");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&procs)
        .map(OwnedFd::from)
        .map_err(io(format!("open {}", procs.display())))
}

/// Creates `dirs` (mode 0700) and gives them, and everything in them, to `uid:gid`.
pub fn own_dirs(dirs: &[PathBuf], uid: u32, gid: u32) -> Result<(), PrivError> {
    fn chown_tree(p: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
        std::os::unix::fs::lchown(p, Some(uid), Some(gid))?;
        if std::fs::symlink_metadata(p)?.is_dir() {
            for e in std::fs::read_dir(p)? {
                chown_tree(&e?.path(), uid, gid)?;
            }
        }
        Ok(())
    }
    for d in dirs {
        let io = |source| PrivError::Io {
            what: format!("state directory {}", d.display()),
            source,
        };
        if !d.exists() {
            std::fs::create_dir_all(d).map_err(io)?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
        }
        chown_tree(d, uid, gid).map_err(io)?;
    }
    Ok(())
}

/// Gives `files` to group `gid` with group read permission; a missing file is skipped (not
/// every machine has a DMI table).
pub fn grant_read(files: &[PathBuf], gid: u32) -> Result<(), PrivError> {
    use std::os::unix::fs::PermissionsExt;
    for f in files {
        let Ok(meta) = std::fs::metadata(f) else {
            continue;
        };
        let io = |source| PrivError::Io {
            what: format!("granting read of {}", f.display()),
            source,
        };
        std::os::unix::fs::chown(f, None, Some(gid)).map_err(io)?;
        let mode = meta.permissions().mode() | 0o040;
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(mode)).map_err(io)?;
    }
    Ok(())
}

/// The highest capability number of the running kernel.
pub fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_V3: u32 = 0x2008_0522;

fn check(rc: libc::c_long) -> std::io::Result<()> {
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl Plan {
    /// Applies the plan to the calling process. Only system calls, no allocation: it runs in
    /// the forked child before `exec` (`Command::pre_exec`).
    pub fn apply(&self) -> std::io::Result<()> {
        if let Some(fd) = &self.cgroup_procs {
            // Writing "0" moves the writing process itself; done before exec, so everything
            // the service ever forks starts inside its cgroup.
            // SAFETY: writes one byte from a static buffer to an fd owned by the plan.
            check(unsafe { libc::write(fd.as_raw_fd(), b"0".as_ptr().cast(), 1) } as libc::c_long)?;
        }
        if let Some(mask) = self.caps {
            for cap in 0..=self.last_cap.min(63) {
                if mask & (1u64 << cap) == 0 {
                    // SAFETY: prctl with integer arguments only.
                    let rc = unsafe {
                        libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0)
                    };
                    // EINVAL: a capability this kernel does not know; nothing to drop.
                    if rc < 0
                        && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL)
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                }
            }
        }
        if let Some((uid, gid)) = self.ids {
            let groups = [gid];
            // SAFETY: setgroups reads one gid from a live array; setgid/prctl/setuid take integers.
            unsafe {
                check(libc::setgroups(1, groups.as_ptr()) as libc::c_long)?;
                check(libc::setgid(gid) as libc::c_long)?;
                if self.caps.is_some() {
                    check(libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) as libc::c_long)?;
                }
                check(libc::setuid(uid) as libc::c_long)?;
            }
            if let (Some(mask), true) = (self.caps, uid != 0) {
                // Kept capabilities survive exec for a non-root user only as ambient ones,
                // which must first be permitted and inheritable.
                let lo = mask as u32;
                let hi = (mask >> 32) as u32;
                let mut header = CapHeader {
                    version: CAP_V3,
                    pid: 0,
                };
                let data = [
                    CapData {
                        effective: lo,
                        permitted: lo,
                        inheritable: lo,
                    },
                    CapData {
                        effective: hi,
                        permitted: hi,
                        inheritable: hi,
                    },
                ];
                // SAFETY: capset reads a v3 header and two data structs that live across the call.
                check(unsafe {
                    libc::syscall(
                        libc::SYS_capset,
                        &mut header as *mut CapHeader,
                        data.as_ptr(),
                    )
                })?;
                for cap in 0..=self.last_cap.min(63) {
                    if mask & (1u64 << cap) != 0 {
                        // SAFETY: prctl with integer arguments only.
                        check(unsafe {
                            libc::prctl(
                                libc::PR_CAP_AMBIENT,
                                libc::PR_CAP_AMBIENT_RAISE,
                                libc::c_ulong::from(cap),
                                0,
                                0,
                            )
                        } as libc::c_long)?;
                    }
                }
            }
        }
        if self.no_new_privs {
            // SAFETY: prctl with integer arguments only.
            check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } as libc::c_long)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_names() {
        assert_eq!(cap_number("chown"), Some(0));
        assert_eq!(cap_number("CAP_NET_ADMIN"), Some(12));
        assert_eq!(cap_number("net_raw"), Some(13));
        assert_eq!(cap_number("sys_admin"), Some(21));
        assert_eq!(cap_number("checkpoint_restore"), Some(40));
        assert_eq!(cap_number("fly"), None);
    }

    #[test]
    fn users_and_groups() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\nagent:x:101:101:gridos agent:/:/sbin/nologin\nbad line\n";
        assert_eq!(lookup_user(passwd, "agent"), Some((101, 101)));
        assert_eq!(lookup_user(passwd, "root"), Some((0, 0)));
        assert_eq!(lookup_user(passwd, "101"), Some((101, 101)));
        assert_eq!(lookup_user(passwd, "4242"), Some((4242, 4242)));
        assert_eq!(lookup_user(passwd, "nobody-here"), None);
        let group = "root:x:0:\nagent:x:101:\n";
        assert_eq!(lookup_group(group, "agent"), Some(101));
        assert_eq!(lookup_group(group, "7"), Some(7));
        assert_eq!(lookup_group(group, "wheel"), None);
    }
}
