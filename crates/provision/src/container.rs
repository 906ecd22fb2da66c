//! Starting one container: an overlayfs root over the image's layers, its own mount, PID,
//! UTS, IPC, network and cgroup namespaces, cgroup v2 limits, and its output in a pipe.
//!
//! The process is made with `clone(2)` from a multi-threaded program, so between the clone
//! and the `execve` the child may not allocate (another thread may have held the allocator's
//! lock at the clone): every string, path and pointer array it needs is built before, and the
//! child only makes system calls through `libc` on them. A failing step writes its number and
//! `errno` to a close-on-exec pipe and exits; a successful `execve` closes the pipe, so the
//! parent reads either the failure or end-of-file.
//!
//! The child waits on a second pipe until the parent has moved it into its cgroup and plugged
//! its network namespace in ([`start_with`]), so nothing the workload runs ever starts
//! outside its limits or before its network is there.

use std::ffi::{CStr, CString};
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;
use nix::unistd::Pid;

/// Why a container did not start.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// Preparing its directories, cgroup or pipes failed.
    #[error("container {id}: {what}")]
    Prepare {
        /// The container.
        id: String,
        /// What was being prepared.
        what: String,
        /// Cause.
        source: io::Error,
    },
    /// A step inside the new namespaces failed before the workload ran.
    #[error("container {id}: {step} failed: {errno}")]
    Start {
        /// The container.
        id: String,
        /// The step.
        step: &'static str,
        /// Its error.
        errno: nix::errno::Errno,
    },
    /// A value cannot be passed to the kernel (a NUL byte in an argument, say).
    #[error("container {id}: {what} contains a NUL byte")]
    Nul {
        /// The container.
        id: String,
        /// Which value.
        what: &'static str,
    },
}

/// Limits from the reservation, written to the container's cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Logical cores of CPU time (`cpu.max` = cores × period).
    pub cores: u64,
    /// Memory in bytes (`memory.max`; swap is not given: `memory.swap.max` = 0).
    pub memory: u64,
    /// Most processes and threads (`pids.max`).
    pub pids: u64,
}

/// What to start.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Unique on the node; names its directory and cgroup.
    pub id: String,
    /// The container's host name.
    pub hostname: String,
    /// The image's unpacked layers, lowest first.
    pub layers: Vec<PathBuf>,
    /// Program and arguments (the image's entrypoint and command, or the twin's).
    pub args: Vec<String>,
    /// `NAME=value` pairs.
    pub env: Vec<String>,
    /// Working directory inside the container.
    pub workdir: String,
    /// User and group ids the workload runs as.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Where the container's cgroup is made (a cgroup v2 directory), and its limits; `None`
    /// runs it in the caller's cgroup (hosts without cgroup v2, in tests).
    pub cgroup: Option<(PathBuf, Limits)>,
    /// Host directories (volumes) bind-mounted into the container.
    pub binds: Vec<Bind>,
}

/// A host directory mounted into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    /// The directory on the host.
    pub source: PathBuf,
    /// An absolute path in the container (made when missing, inside the container's root).
    pub target: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// The descriptor numbers the child keeps the volumes' detached mounts at (at most
/// [`gridtypes::deployment::MAX_MOUNTS`] of them).
const BIND_FD_BASE: i32 = 900;
/// Entries of the container's `/proc` that reach the whole host, not just its PID namespace:
/// made read-only (kernel settings: `sys/kernel/core_pattern` alone would run a program of
/// the container's choosing as root on the host; `sysrq-trigger` reboots it) ...
pub const PROC_READ_ONLY: &[&str] = &["bus", "fs", "irq", "sys", "sysrq-trigger"];
/// ... or hidden: files under `/dev/null`, directories under an empty read-only tmpfs (the
/// host's memory, keys and timers). Docker's defaults, as runc applies them.
pub const PROC_MASKED_FILES: &[&str] = &[
    "kcore",
    "keys",
    "latency_stats",
    "timer_list",
    "timer_stats",
    "sched_debug",
];
/// ... (directories).
pub const PROC_MASKED_DIRS: &[&str] = &["acpi", "asound", "scsi"];

/// `open_tree(2)`: a detached copy of the mount at the path.
const OPEN_TREE_CLONE: libc::c_uint = 1;
/// `move_mount(2)`: the source is the descriptor itself.
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;

/// A started container.
#[derive(Debug)]
pub struct Started {
    /// Its first process, as the caller's PID namespace sees it.
    pub pid: Pid,
    /// The read end of its stdout and stderr.
    pub output: OwnedFd,
    /// Its cgroup directory, when it has one.
    pub cgroup: Option<PathBuf>,
    /// Its directory (`upper/`, `work/`).
    pub dir: PathBuf,
}

/// The steps of the child, by number in the error pipe.
const STEPS: &[&str] = &[
    "waiting for the parent",
    "unsharing the cgroup namespace",
    "making mounts private",
    "mounting the overlay root",
    "mounting /proc",
    "mounting /dev",
    "creating a device node",
    "mounting /sys",
    "entering the root (pivot_root)",
    "detaching the old root",
    "setting the host name",
    "redirecting output",
    "dropping capabilities",
    "dropping supplementary groups",
    "setting the group",
    "setting the user",
    "entering the working directory",
    "executing the program",
    "mounting /sys/fs/cgroup",
    "opening a volume",
    "mounting a volume",
    "protecting /proc",
];

/// Capabilities a workload keeps (Docker's default set without `CAP_MKNOD`: cgroup v2 has no
/// device controller short of BPF, so a device node it made would open the host's disks).
/// Everything else leaves the bounding set before `execve`, so not even a root process or
/// a set-uid program in the image can gain it back.
pub const KEPT_CAPABILITIES: u64 = {
    // Numbers from linux/capability.h: chown, dac_override, fowner, fsetid, kill, setgid,
    // setuid, setpcap, net_bind_service, net_raw, sys_chroot, audit_write, setfcap.
    const KEPT: [u32; 13] = [0, 1, 3, 4, 5, 6, 7, 8, 10, 13, 18, 29, 31];
    let mut mask = 0u64;
    let mut i = 0;
    while i < KEPT.len() {
        mask |= 1 << KEPT[i];
        i += 1;
    }
    mask
};

/// Everything the child uses, made before the clone.
struct Prepared {
    merged: CString,
    overlay_opts: CString,
    proc_dir: CString,
    /// `/proc` entries to make read-only, to mask with `/dev/null`, to mask with a tmpfs.
    proc_read_only: Vec<CString>,
    proc_masked_files: Vec<CString>,
    proc_masked_dirs: Vec<CString>,
    dev_null: CString,
    dev_dir: CString,
    sys_dir: CString,
    /// `/sys/fs/cgroup` under the root, when the container has a cgroup: its own cgroup
    /// (the namespace's root), read-only, so a workload can read its limits.
    cgroup_dir: Option<CString>,
    binds: Vec<PreparedBind>,
    devices: Vec<(CString, libc::dev_t)>,
    hostname: Vec<u8>,
    workdir: CString,
    /// Each place the program may be (one per `PATH` entry for a bare name).
    programs: Vec<CString>,
    argv: Vec<CString>,
    envp: Vec<CString>,
    /// NULL-terminated arrays of pointers into `argv` and `envp` (whose heap buffers do not
    /// move): the child cannot build them.
    argv_ptrs: Vec<*const libc::c_char>,
    envp_ptrs: Vec<*const libc::c_char>,
    uid: libc::uid_t,
    gid: libc::gid_t,
}

/// A [`Bind`] as the child uses it.
struct PreparedBind {
    /// The host directory, copied as a detached mount before `pivot_root` hides it.
    source: CString,
    /// The descriptor holding that copy until it is attached.
    fd: i32,
    /// Each directory from the top down to the target, made after `pivot_root` so that a
    /// symlink in the image resolves inside the container, never on the host.
    dirs: Vec<CString>,
    target: CString,
    read_only: bool,
}

/// Starts `spec` under `root` (where container directories live).
pub fn start(root: &Path, spec: &Spec) -> Result<Started, ContainerError> {
    start_with(root, spec, |_| Ok(())).map(|(s, ())| s)
}

/// Starts `spec` under `root`; `plug` runs once the first process exists in its namespaces
/// and cgroup but before it may go on (to plug its network namespace in), and its answer is
/// returned with the container. A `plug` that fails stops the start.
pub fn start_with<T>(
    root: &Path,
    spec: &Spec,
    plug: impl FnOnce(Pid) -> Result<T, String>,
) -> Result<(Started, T), ContainerError> {
    let id = spec.id.clone();
    let prep = |what: &str| {
        let (id, what) = (id.clone(), what.to_string());
        move |source| ContainerError::Prepare { id, what, source }
    };
    let dir = root.join(&spec.id);
    let (upper, work, merged) = (dir.join("upper"), dir.join("work"), dir.join("merged"));
    for d in [&upper, &work, &merged] {
        fs::create_dir_all(d).map_err(prep("creating its directories"))?;
    }
    // Mount points the root needs whatever the image holds.
    for d in ["proc", "dev", "sys", "tmp"] {
        fs::create_dir_all(upper.join(d)).map_err(prep("creating its mount points"))?;
    }
    let p = prepare(spec, &upper, &work, &merged)?;
    let cgroup = match &spec.cgroup {
        Some((parent, limits)) => {
            Some(make_cgroup(parent, &spec.id, limits).map_err(prep("making its cgroup"))?)
        }
        None => None,
    };
    let (out_r, out_w) = pipe().map_err(prep("making its output pipe"))?;
    let (err_r, err_w) = pipe().map_err(prep("making its error pipe"))?;
    let (go_r, go_w) = pipe().map_err(prep("making its start pipe"))?;
    let fds = (out_w.as_raw_fd(), err_w.as_raw_fd(), go_r.as_raw_fd());
    let mut stack = vec![0u8; 256 * 1024];
    let flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWNET;
    // SAFETY: the callback only makes system calls on data prepared above, which stays alive
    // (it is borrowed from this frame, and the child has its own copy of the memory); it
    // allocates nothing. SIGCHLD makes the child an ordinary child for waitpid.
    let pid = unsafe {
        nix::sched::clone(
            Box::new(|| child(&p, fds)),
            &mut stack,
            flags,
            Some(libc::SIGCHLD),
        )
    }
    .map_err(|e| ContainerError::Prepare {
        id: id.clone(),
        what: "cloning its first process".into(),
        source: e.into(),
    })?;
    drop((out_w, err_w, go_r));
    let fail = |e: io::Error| {
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(pid, None);
        if let Some(cg) = &cgroup {
            let _ = fs::remove_dir(cg);
        }
        e
    };
    if let Some(cg) = &cgroup {
        fs::write(cg.join("cgroup.procs"), pid.as_raw().to_string())
            .map_err(fail)
            .map_err(prep("moving it into its cgroup"))?;
    }
    let plugged = plug(pid)
        .map_err(io::Error::other)
        .map_err(fail)
        .map_err(prep("plugging in its network"))?;
    let mut go = fs::File::from(go_w);
    go.write_all(b"g")
        .map_err(fail)
        .map_err(prep("letting it start"))?;
    drop(go);
    let mut report = [0u8; 8];
    let mut err = fs::File::from(err_r);
    let n = read_full(&mut err, &mut report).map_err(prep("reading its start"))?;
    if n == report.len() {
        let _ = nix::sys::wait::waitpid(pid, None);
        if let Some(cg) = &cgroup {
            let _ = fs::remove_dir(cg);
        }
        let step = u32::from_ne_bytes([report[0], report[1], report[2], report[3]]) as usize;
        let errno = i32::from_ne_bytes([report[4], report[5], report[6], report[7]]);
        return Err(ContainerError::Start {
            id,
            step: STEPS.get(step).copied().unwrap_or("an unknown step"),
            errno: nix::errno::Errno::from_raw(errno),
        });
    }
    Ok((
        Started {
            pid,
            output: out_r,
            cgroup,
            dir,
        },
        plugged,
    ))
}

fn read_full(f: &mut fs::File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)
}

fn cstring(id: &str, what: &'static str, bytes: &[u8]) -> Result<CString, ContainerError> {
    CString::new(bytes).map_err(|_| ContainerError::Nul {
        id: id.to_string(),
        what,
    })
}

fn prepare(
    spec: &Spec,
    upper: &Path,
    work: &Path,
    merged: &Path,
) -> Result<Prepared, ContainerError> {
    let id = spec.id.as_str();
    let path = |what, p: &Path| cstring(id, what, p.as_os_str().as_bytes());
    // overlayfs takes the highest layer first.
    let lower: Vec<String> = spec
        .layers
        .iter()
        .rev()
        .map(|l| l.display().to_string())
        .collect();
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        upper.display(),
        work.display()
    );
    let devices = [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ]
    .iter()
    .map(|(n, ma, mi)| {
        Ok((
            path("a device path", &merged.join("dev").join(n))?,
            libc::makedev(*ma, *mi),
        ))
    })
    .collect::<Result<Vec<_>, ContainerError>>()?;
    let Some(program) = spec.args.first() else {
        return Err(ContainerError::Prepare {
            id: id.to_string(),
            what: "finding its program".into(),
            source: io::Error::other("neither the image nor the deployment names a program"),
        });
    };
    let programs = if program.contains('/') {
        vec![cstring(id, "the program", program.as_bytes())?]
    } else {
        let path_var = spec
            .env
            .iter()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
        path_var
            .split(':')
            .filter(|d| d.starts_with('/'))
            .map(|d| cstring(id, "the program", format!("{d}/{program}").as_bytes()))
            .collect::<Result<Vec<_>, _>>()?
    };
    let mut p = Prepared {
        merged: path("the root", merged)?,
        overlay_opts: cstring(id, "the layer paths", opts.as_bytes())?,
        proc_dir: path("/proc", &merged.join("proc"))?,
        proc_read_only: proc_paths(id, merged, PROC_READ_ONLY)?,
        proc_masked_files: proc_paths(id, merged, PROC_MASKED_FILES)?,
        proc_masked_dirs: proc_paths(id, merged, PROC_MASKED_DIRS)?,
        dev_null: path("/dev/null", &merged.join("dev/null"))?,
        dev_dir: path("/dev", &merged.join("dev"))?,
        sys_dir: path("/sys", &merged.join("sys"))?,
        cgroup_dir: match &spec.cgroup {
            Some(_) => Some(path("/sys/fs/cgroup", &merged.join("sys/fs/cgroup"))?),
            None => None,
        },
        binds: spec
            .binds
            .iter()
            .enumerate()
            .map(|(i, b)| prepare_bind(id, i, b))
            .collect::<Result<_, _>>()?,
        devices,
        hostname: spec.hostname.as_bytes().to_vec(),
        workdir: cstring(id, "the working directory", spec.workdir.as_bytes())?,
        programs,
        argv: spec
            .args
            .iter()
            .map(|a| cstring(id, "an argument", a.as_bytes()))
            .collect::<Result<_, _>>()?,
        envp: spec
            .env
            .iter()
            .map(|e| cstring(id, "an environment variable", e.as_bytes()))
            .collect::<Result<_, _>>()?,
        argv_ptrs: Vec::new(),
        envp_ptrs: Vec::new(),
        uid: spec.uid,
        gid: spec.gid,
    };
    p.argv_ptrs = p
        .argv
        .iter()
        .map(|a| a.as_ptr())
        .chain([std::ptr::null()])
        .collect();
    p.envp_ptrs = p
        .envp
        .iter()
        .map(|e| e.as_ptr())
        .chain([std::ptr::null()])
        .collect();
    Ok(p)
}

fn proc_paths(id: &str, merged: &Path, names: &[&str]) -> Result<Vec<CString>, ContainerError> {
    names
        .iter()
        .map(|n| {
            cstring(
                id,
                "a /proc path",
                merged.join("proc").join(n).as_os_str().as_bytes(),
            )
        })
        .collect()
}

fn prepare_bind(id: &str, i: usize, b: &Bind) -> Result<PreparedBind, ContainerError> {
    let fd = BIND_FD_BASE + i as i32;
    let mut dirs = Vec::new();
    let mut at = String::new();
    for part in b.target.split('/').filter(|p| !p.is_empty()) {
        at.push('/');
        at.push_str(part);
        dirs.push(cstring(id, "a volume's path", at.as_bytes())?);
    }
    Ok(PreparedBind {
        source: cstring(id, "a volume's directory", b.source.as_os_str().as_bytes())?,
        fd,
        target: cstring(id, "a volume's path", b.target.as_bytes())?,
        dirs,
        read_only: b.read_only,
    })
}

/// The cgroup `id` under `parent` with the limits `l` (containers' and VMs').
pub(crate) fn make_cgroup(parent: &Path, id: &str, l: &Limits) -> io::Result<PathBuf> {
    let cg = parent.join(id);
    fs::create_dir_all(&cg)?;
    const PERIOD: u64 = 100_000;
    // No cores reserved: the container shares what the node has left, without a quota.
    let quota = match l.cores {
        0 => "max".to_string(),
        n => n.saturating_mul(PERIOD).to_string(),
    };
    fs::write(cg.join("cpu.max"), format!("{quota} {PERIOD}"))?;
    fs::write(cg.join("memory.max"), l.memory.to_string())?;
    // Swap would let a container use more memory than it reserved.
    if cg.join("memory.swap.max").exists() {
        fs::write(cg.join("memory.swap.max"), "0")?;
    }
    fs::write(cg.join("pids.max"), l.pids.to_string())?;
    Ok(cg)
}

/// The first process of the container, between `clone` and `execve`. System calls only:
/// each phase returns the number of the step that failed (its `errno` is still set).
fn child(p: &Prepared, (out, err, go): (i32, i32, i32)) -> isize {
    let step = release_and_wait(out, err, go)
        .and_then(|()| enter_root(p))
        .and_then(|()| become_workload(p, out));
    let step = match step {
        // SAFETY: the pointers are prepared, NUL-terminated and NULL-terminated arrays; execve
        // returns only when it failed.
        Ok(()) => unsafe {
            for prog in &p.programs {
                libc::execve(prog.as_ptr(), p.argv_ptrs.as_ptr(), p.envp_ptrs.as_ptr());
            }
            17
        },
        Err(step) => step,
    };
    let errno = nix::errno::Errno::last_raw();
    let mut report = [0u8; 8];
    report[..4].copy_from_slice(&step.to_ne_bytes());
    report[4..].copy_from_slice(&errno.to_ne_bytes());
    // SAFETY: writes 8 bytes from a stack buffer to our own pipe end, then ends the process
    // without running anything of the parent's (no atexit handlers, no flushing).
    unsafe {
        libc::write(err, report.as_ptr().cast(), report.len());
        libc::_exit(127)
    }
}

/// Lets go of every descriptor but the three pipes, then waits for the parent's go (it has
/// moved this process into its cgroup by then) and makes that cgroup its namespace's root.
fn release_and_wait(out: i32, err: i32, go: i32) -> Result<(), u32> {
    // The clone copied every descriptor, the pipes of containers other threads are starting
    // included, and a copy held here would keep their parents waiting for an end-of-file.
    let mut keep = [out, err, go];
    keep.sort_unstable();
    let mut from = 3u32;
    for fd in keep {
        let fd = fd as u32;
        if fd > from {
            close_range(from, fd - 1);
        }
        from = from.max(fd + 1);
    }
    close_range(from, u32::MAX);
    let mut b = [0u8; 1];
    // SAFETY: reads one byte into a stack buffer from our own pipe end.
    if unsafe { libc::read(go, b.as_mut_ptr().cast(), 1) } != 1 {
        return Err(0);
    }
    // SAFETY: a plain system call.
    if unsafe { libc::unshare(libc::CLONE_NEWCGROUP) } != 0 {
        return Err(1);
    }
    Ok(())
}

/// `mount(2)` on prepared strings; true when it worked.
fn mount(src: &CStr, target: &CStr, fstype: &CStr, flags: libc::c_ulong, data: &CStr) -> bool {
    let data = if data.is_empty() {
        std::ptr::null()
    } else {
        data.as_ptr().cast()
    };
    // SAFETY: NUL-terminated strings alive for the call; data is one or null.
    unsafe { libc::mount(src.as_ptr(), target.as_ptr(), fstype.as_ptr(), flags, data) == 0 }
}

/// Private mounts, the overlay root with /proc, /dev and /sys, then `pivot_root` into it.
fn enter_root(p: &Prepared) -> Result<(), u32> {
    let nosuid = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    // SAFETY: a null source and type are allowed for a propagation change.
    let private = unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    };
    if private != 0 {
        return Err(2);
    }
    if !mount(
        c"overlay",
        &p.merged,
        c"overlay",
        libc::MS_NODEV,
        &p.overlay_opts,
    ) {
        return Err(3);
    }
    if !mount(c"proc", &p.proc_dir, c"proc", nosuid, c"") {
        return Err(4);
    }
    let dev_flags = libc::MS_NOSUID | libc::MS_NOEXEC;
    if !mount(
        c"tmpfs",
        &p.dev_dir,
        c"tmpfs",
        dev_flags,
        c"mode=755,size=65536k",
    ) {
        return Err(5);
    }
    for (path, dev) in &p.devices {
        // SAFETY: a prepared NUL-terminated path.
        if unsafe { libc::mknod(path.as_ptr(), libc::S_IFCHR | 0o666, *dev) } != 0 {
            return Err(6);
        }
    }
    if !mount(
        c"sysfs",
        &p.sys_dir,
        c"sysfs",
        nosuid | libc::MS_RDONLY,
        c"",
    ) {
        return Err(7);
    }
    if let Some(cg) = &p.cgroup_dir {
        if !mount(c"cgroup2", cg, c"cgroup2", nosuid | libc::MS_RDONLY, c"") {
            return Err(18);
        }
    }
    protect_proc(p)?;
    for b in &p.binds {
        // A detached copy of the volume's directory (open_tree(2), Linux 5.2), attached in
        // the container only after pivot_root: a mount from the host's tree would be refused
        // once that tree is gone.
        // SAFETY: a prepared NUL-terminated path; the descriptors are ours (close-on-exec).
        unsafe {
            let fd = libc::syscall(
                libc::SYS_open_tree,
                libc::AT_FDCWD,
                b.source.as_ptr(),
                OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
            ) as i32;
            if fd < 0 || libc::dup3(fd, b.fd, libc::O_CLOEXEC) < 0 {
                return Err(19);
            }
            libc::close(fd);
        }
    }
    // pivot_root(".", "."): the old root ends up on top of the new one, then goes.
    // SAFETY: prepared NUL-terminated paths and string literals.
    unsafe {
        if libc::chdir(p.merged.as_ptr()) != 0
            || libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) != 0
        {
            return Err(8);
        }
        if libc::umount2(c".".as_ptr(), libc::MNT_DETACH) != 0 || libc::chdir(c"/".as_ptr()) != 0 {
            return Err(9);
        }
    }
    mount_binds(&p.binds)
}

/// Makes the host-wide parts of the container's fresh `/proc` read-only or hidden. An entry
/// this kernel does not have is skipped.
fn protect_proc(p: &Prepared) -> Result<(), u32> {
    let missing = || nix::errno::Errno::last() == nix::errno::Errno::ENOENT;
    let ro = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY;
    let hardened = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    for path in &p.proc_read_only {
        if !mount(path, path, c"", libc::MS_BIND | libc::MS_REC, c"") {
            if missing() {
                continue;
            }
            return Err(21);
        }
        if !mount(c"", path, c"", ro | hardened, c"") {
            return Err(21);
        }
    }
    for path in &p.proc_masked_files {
        if !mount(&p.dev_null, path, c"", libc::MS_BIND, c"") && !missing() {
            return Err(21);
        }
    }
    for path in &p.proc_masked_dirs {
        if !mount(
            c"tmpfs",
            path,
            c"tmpfs",
            libc::MS_RDONLY | hardened,
            c"size=4k,mode=0555",
        ) && !missing()
        {
            return Err(21);
        }
    }
    Ok(())
}

/// Mounts the volumes, inside the container's root now: their directories come from the
/// descriptors opened before `pivot_root`.
fn mount_binds(binds: &[PreparedBind]) -> Result<(), u32> {
    for b in binds {
        for d in &b.dirs {
            // SAFETY: a prepared NUL-terminated path; an existing directory is fine.
            if unsafe { libc::mkdir(d.as_ptr(), 0o755) } != 0
                && nix::errno::Errno::last() != nix::errno::Errno::EEXIST
            {
                return Err(20);
            }
        }
        // SAFETY: our own descriptor and a prepared NUL-terminated path.
        let moved = unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                b.fd,
                c"".as_ptr(),
                libc::AT_FDCWD,
                b.target.as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH,
            )
        };
        if moved != 0 {
            return Err(20);
        }
        let flags = libc::MS_BIND | libc::MS_NOSUID | libc::MS_NODEV;
        // A bind mount takes its flags only from a remount.
        let ro = if b.read_only { libc::MS_RDONLY } else { 0 };
        if !mount(c"", &b.target, c"", flags | libc::MS_REMOUNT | ro, c"") {
            return Err(20);
        }
        // SAFETY: our own descriptor.
        unsafe { libc::close(b.fd) };
    }
    Ok(())
}

/// Host name, output, groups, user and working directory of the workload.
fn become_workload(p: &Prepared, out: i32) -> Result<(), u32> {
    // SAFETY: plain system calls on prepared buffers and our own descriptors.
    unsafe {
        if libc::sethostname(p.hostname.as_ptr().cast(), p.hostname.len()) != 0 {
            return Err(10);
        }
        if libc::dup2(out, 1) < 0 || libc::dup2(out, 2) < 0 {
            return Err(11);
        }
        let devnull = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY);
        if devnull < 0 || libc::dup2(devnull, 0) < 0 {
            return Err(11);
        }
    }
    // Still root here: a process that changed to another user has no capabilities left
    // to drop its bounding set with.
    drop_capabilities().map_err(|()| 12u32)?;
    // SAFETY: plain system calls on prepared buffers.
    unsafe {
        // Raw system calls: glibc's setuid and friends stop every thread the process had at
        // the clone (threads this copy does not have) and would wait for them for ever.
        if libc::syscall(libc::SYS_setgroups, 0usize, std::ptr::null::<libc::gid_t>()) != 0 {
            return Err(13);
        }
        if libc::syscall(libc::SYS_setresgid, p.gid, p.gid, p.gid) != 0 {
            return Err(14);
        }
        if libc::syscall(libc::SYS_setresuid, p.uid, p.uid, p.uid) != 0 {
            return Err(15);
        }
        if libc::chdir(p.workdir.as_ptr()) != 0 {
            return Err(16);
        }
    }
    Ok(())
}

/// Empties the ambient and inheritable sets and shrinks the bounding set to
/// [`KEPT_CAPABILITIES`]: what `execve` gives the workload comes from these alone.
fn drop_capabilities() -> Result<(), ()> {
    // SAFETY: prctl with integer arguments only.
    unsafe {
        if libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        ) != 0
        {
            return Err(());
        }
        for cap in 0..64u32 {
            if KEPT_CAPABILITIES & (1 << cap) != 0 {
                continue;
            }
            // EINVAL past the kernel's last capability: the loop is done.
            if libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) != 0 {
                if nix::errno::Errno::last() == nix::errno::Errno::EINVAL {
                    break;
                }
                return Err(());
            }
        }
    }
    // capget/capset, version 3 (two 32-bit words per set): the inheritable set goes.
    let mut header = [0x2008_0522u32, 0];
    let mut data = [0u32; 6];
    // SAFETY: a header and room for two cap_user_data_t (3 u32 each) on the stack.
    unsafe {
        if libc::syscall(libc::SYS_capget, header.as_mut_ptr(), data.as_mut_ptr()) != 0 {
            return Err(());
        }
        data[2] = 0;
        data[5] = 0;
        if libc::syscall(libc::SYS_capset, header.as_mut_ptr(), data.as_ptr()) != 0 {
            return Err(());
        }
    }
    Ok(())
}

/// Closes descriptors `first..=last` (`close_range(2)`, Linux 5.9; older kernels get a loop
/// over the first 4096). Only for the child between clone and exec, which owns every
/// descriptor it closes.
fn close_range(first: u32, last: u32) {
    // SAFETY: plain system calls on integers.
    unsafe {
        if libc::syscall(libc::SYS_close_range, first, last, 0) != 0 {
            for fd in first..=last.min(4095) {
                libc::close(fd as i32);
            }
        }
    }
}
