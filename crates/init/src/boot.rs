//! Early boot as PID 1: console, mounts, cgroup2, hostname, loopback.

use std::path::Path;

use nix::mount::{mount, MsFlags};

/// Errors of one early-boot step; each is logged and boot goes on.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// A mount failed.
    #[error("mount {fstype} on {target}")]
    Mount {
        /// Filesystem type.
        fstype: &'static str,
        /// Mount point.
        target: &'static str,
        /// The errno.
        source: nix::Error,
    },
    /// A file operation failed.
    #[error("{what}")]
    Io {
        /// What was attempted.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A system call failed.
    #[error("{what}")]
    Sys {
        /// What was attempted.
        what: &'static str,
        /// The errno.
        source: nix::Error,
    },
}

/// One early mount.
struct Mount {
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
}

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

fn early_mounts() -> [Mount; 8] {
    [
        Mount {
            source: "proc",
            target: "/proc",
            fstype: "proc",
            flags: NOSUID_NODEV_NOEXEC,
            data: None,
        },
        Mount {
            source: "sysfs",
            target: "/sys",
            fstype: "sysfs",
            flags: NOSUID_NODEV_NOEXEC,
            data: None,
        },
        Mount {
            source: "devtmpfs",
            target: "/dev",
            fstype: "devtmpfs",
            flags: MsFlags::MS_NOSUID,
            data: Some("mode=0755"),
        },
        Mount {
            source: "devpts",
            target: "/dev/pts",
            fstype: "devpts",
            flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
            data: Some("mode=0620,ptmxmode=0666"),
        },
        Mount {
            source: "tmpfs",
            target: "/dev/shm",
            fstype: "tmpfs",
            flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
            data: Some("mode=1777"),
        },
        Mount {
            source: "tmpfs",
            target: "/run",
            fstype: "tmpfs",
            flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
            data: Some("mode=0755"),
        },
        Mount {
            source: "tmpfs",
            target: "/tmp",
            fstype: "tmpfs",
            flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
            data: Some("mode=1777"),
        },
        Mount {
            source: "cgroup2",
            target: "/sys/fs/cgroup",
            fstype: "cgroup2",
            flags: NOSUID_NODEV_NOEXEC,
            data: Some("nsdelegate"),
        },
    ]
}

/// Mounts proc, sys, dev, run, tmp and cgroup2; "already mounted" counts as success.
pub fn mount_all() -> Vec<Result<&'static str, BootError>> {
    early_mounts()
        .into_iter()
        .map(|m| {
            let _ = std::fs::create_dir_all(m.target);
            match mount(Some(m.source), m.target, Some(m.fstype), m.flags, m.data) {
                Ok(()) | Err(nix::Error::EBUSY) => Ok(m.target),
                Err(source) => Err(BootError::Mount {
                    fstype: m.fstype,
                    target: m.target,
                    source,
                }),
            }
        })
        .collect()
}

/// Makes fds 0, 1 and 2 point at `/dev/console` when the kernel could not open it.
pub fn ensure_console() {
    use std::os::fd::AsRawFd;
    if nix::fcntl::fcntl(std::io::stdout(), nix::fcntl::FcntlArg::F_GETFD).is_ok() {
        return;
    }
    let _ = std::fs::create_dir_all("/dev");
    let _ = mount(
        Some("devtmpfs"),
        "/dev",
        Some("devtmpfs"),
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
    );
    if let Ok(f) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    {
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard descriptors; `f` is a valid open fd.
            unsafe {
                libc::dup2(f.as_raw_fd(), fd);
            }
        }
    }
}

/// Enables every available controller for child cgroups (`cgroup.subtree_control`).
pub fn enable_cgroup_controllers(root: &Path) -> Result<String, BootError> {
    let io = |what: String| move |source| BootError::Io { what, source };
    let avail = std::fs::read_to_string(root.join("cgroup.controllers"))
        .map_err(io("read cgroup.controllers".into()))?;
    let request: Vec<String> = avail.split_whitespace().map(|c| format!("+{c}")).collect();
    let request = request.join(" ");
    if !request.is_empty() {
        std::fs::write(root.join("cgroup.subtree_control"), &request)
            .map_err(io(format!("write cgroup.subtree_control {request:?}")))?;
    }
    Ok(avail.trim().to_string())
}

/// Sets the kernel hostname.
pub fn set_hostname(name: &str) -> Result<(), BootError> {
    nix::unistd::sethostname(name).map_err(|source| BootError::Sys {
        what: "sethostname",
        source,
    })
}

/// Brings the loopback interface up (`SIOCSIFFLAGS` with `IFF_UP`).
pub fn loopback_up() -> Result<(), BootError> {
    use std::os::fd::AsRawFd;
    let sys = |what, source| BootError::Sys { what, source };
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| sys("socket", e))?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the name and writes ifr_flags inside `req`, which lives across the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) };
    if rc < 0 {
        return Err(sys("SIOCGIFFLAGS lo", nix::Error::last()));
    }
    // SAFETY: the union field ifru_flags was just written by SIOCGIFFLAGS.
    unsafe {
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    }
    // SAFETY: SIOCSIFFLAGS only reads `req`, which lives across the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) };
    if rc < 0 {
        return Err(sys("SIOCSIFFLAGS lo", nix::Error::last()));
    }
    Ok(())
}

/// Names of the network interfaces the kernel knows (from `/sys/class/net`).
pub fn net_interfaces() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/sys/class/net")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Kernel release (`uname -r`), to find `/lib/modules/<release>`.
pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The file the imager writes last into the initramfs (`imager::build`): if it is missing, the
/// kernel stopped unpacking early (a corrupted download or a stick not written whole) and
/// whatever came after it in the archive (modules, programs) is missing too.
pub const IMAGE_SEAL: &str = "/etc/gridos/image-complete";
/// The command-line word the imager adds when it seals an image: only then is the seal
/// checked (a hand-made initramfs, as the boot tests use, has none).
pub const SEALED_WORD: &str = "gridos.image=sealed";

/// Whether the image says it is sealed but its seal is missing.
pub fn image_damaged(cmdline: &str, seal: &Path) -> bool {
    cmdline.split_whitespace().any(|w| w == SEALED_WORD) && !seal.exists()
}

#[cfg(test)]
mod seal_tests {
    use super::*;

    #[test]
    fn only_a_sealed_image_without_its_seal_is_damaged() {
        let d = tempfile::tempdir().unwrap();
        let seal = d.path().join("image-complete");
        assert!(image_damaged("quiet gridos.image=sealed", &seal));
        assert!(!image_damaged("quiet", &seal));
        assert!(!image_damaged("quiet gridos.image=sealedx", &seal));
        std::fs::write(&seal, "entries=3\n").unwrap();
        assert!(!image_damaged("quiet gridos.image=sealed", &seal));
    }
}
