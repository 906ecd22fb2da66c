//! `gridos-startbench`: runs in the benchmark image only (`bench/start/profile.yaml`, the real
//! image plus this program and crun), never in the shipped one.
//!
//! 1. Container create → first instruction of the container's process, gridos' runtime
//!    (`provision::container::start`) against crun, interleaved run by run so that whatever
//!    else the node does falls on both alike. The container's program is this executable
//!    (static) as `/stamp`: the first thing it does is read `CLOCK_MONOTONIC` (one clock for
//!    every namespace) and leave the value in a bind-mounted directory. crun runs twice:
//!    on the image's directory as it is (its best case: no overlay at all) and on an overlay
//!    mounted just before it (what an engine in front of crun does, and what gridos does).
//!    Both get the same namespaces, cgroup limits, mounts, masked `/proc` and capabilities.
//! 2. Then, every 2 s, the RSS of the node's agent and provision service and how many
//!    containers run, for `gridos-lab node-bench` to read off the console.
//!
//! Everything is printed on stdout as `result {json}` and `rss …` lines.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use clap::Parser;
use provision::container::{self, Bind, Limits, Spec};
use serde_json::json;

/// Measures container starts on a booted node (benchmark image only).
#[derive(Debug, Parser)]
#[command(name = "gridos-startbench")]
struct Cli {
    /// Measured starts of each kind (after one unmeasured round).
    #[arg(long, default_value_t = 30)]
    runs: usize,
    /// Seconds to wait first, so that the node's own start is over.
    #[arg(long, default_value_t = 20)]
    delay: u64,
    /// The crun executable.
    #[arg(long, default_value = "/usr/bin/crun")]
    crun: PathBuf,
    /// youki's libcontainer in a program of its own (bench/libcontainer); measured too when
    /// the image has it.
    #[arg(long, default_value = "/usr/bin/gridos-youki-start")]
    youki: PathBuf,
    /// Working directory (a tmpfs).
    #[arg(long, default_value = "/run/startbench")]
    work: PathBuf,
    /// Where the benchmark's cgroups go.
    #[arg(long, default_value = "/sys/fs/cgroup/startbench")]
    cgroup: PathBuf,
    /// The provision service's containers' cgroups, counted for the RSS lines.
    #[arg(long, default_value = "/sys/fs/cgroup/workloads")]
    workloads: PathBuf,
}

/// The limits each benchmark container gets: one core, 64 MiB, 64 processes.
const LIMITS: Limits = Limits {
    cores: 1,
    memory: 64 << 20,
    pids: 64,
};

/// `KEPT_CAPABILITIES` by name, for crun.
const CAPABILITIES: [&str; 13] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_RAW",
    "CAP_SYS_CHROOT",
    "CAP_AUDIT_WRITE",
    "CAP_SETFCAP",
];

fn monotonic_ns() -> u128 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(t) => t.tv_sec() as u128 * 1_000_000_000 + t.tv_nsec() as u128,
        Err(_) => 0,
    }
}

fn main() {
    // Read before anything else: in a container this is the "first instruction".
    let now = monotonic_ns();
    let mut args = std::env::args();
    if args.nth(1).as_deref() == Some("stamp") {
        let code = match args.next().map(|p| stamp(now, Path::new(&p))) {
            Some(Ok(())) => 0,
            _ => 1,
        };
        std::process::exit(code);
    }
    if let Err(e) = run(&Cli::parse()) {
        println!("startbench: FAIL: {e:#}");
        std::process::exit(1);
    }
}

/// Leaves `now` in `path`, whole or not at all (renamed into place).
fn stamp(now: u128, path: &Path) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, now.to_string())?;
    fs::rename(&tmp, path)
}

/// Waits for the stamp at `path` and returns it.
fn wait_stamp(path: &Path) -> anyhow::Result<u128> {
    let t0 = Instant::now();
    loop {
        if let Ok(text) = fs::read_to_string(path) {
            return text
                .parse()
                .with_context(|| format!("stamp {text:?} in {}", path.display()));
        }
        ensure!(
            t0.elapsed() < Duration::from_secs(30),
            "no stamp at {} after 30 s",
            path.display()
        );
        std::thread::sleep(Duration::from_micros(500));
    }
}

/// The OCI runtimes measured against gridos'.
#[derive(Debug, Clone, Copy)]
enum Oci {
    Crun,
    Youki,
}

struct Bench<'a> {
    cli: &'a Cli,
    layer: PathBuf,
    out: PathBuf,
    root: PathBuf,
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    ensure!(cli.runs > 0, "--runs must be at least 1");
    std::thread::sleep(Duration::from_secs(cli.delay));
    let b = Bench::prepare(cli)?;
    let version = Command::new(&cli.crun)
        .arg("--version")
        .output()
        .with_context(|| format!("running {}", cli.crun.display()))?;
    let version = String::from_utf8_lossy(&version.stdout);
    let version = version.lines().next().unwrap_or("").to_string();
    let mut kinds = vec!["gridos", "crun_dir", "crun_overlay"];
    if cli.youki.exists() {
        // Executed like crun, and timed from its own start too (the library alone).
        kinds.extend(["youki_overlay", "libcontainer_overlay"]);
    }
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); kinds.len()];
    for round in 0..=cli.runs {
        for kind in ["gridos", "crun_dir", "crun_overlay", "youki_overlay"] {
            let Some(k) = kinds.iter().position(|n| *n == kind) else {
                continue;
            };
            let id = format!("{kind}-{round}");
            let (ns, library) = match kind {
                "gridos" => b.gridos(&id).map(|ns| (ns, None)),
                "crun_dir" => b.oci(&id, Oci::Crun, false),
                "crun_overlay" => b.oci(&id, Oci::Crun, true),
                _ => b.oci(&id, Oci::Youki, true),
            }
            .with_context(|| format!("start {id}"))?;
            // Round 0 warms the page cache and the kernel's slabs.
            if round > 0 {
                times[k].push(ns as f64 / 1e6);
                if let Some(ns) = library {
                    times[k + 1].push(ns as f64 / 1e6);
                }
            }
        }
    }
    let mut summary = serde_json::Map::new();
    for (k, kind) in kinds.iter().enumerate() {
        let v = &mut times[k];
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        summary.insert(
            format!("{kind}_ms"),
            json!({"min": v[0], "median": at(0.5), "p90": at(0.9), "max": v[v.len() - 1]}),
        );
    }
    let median = |k: usize| times[k][times[k].len() / 2];
    let mut result = json!({
        "runs": cli.runs,
        "crun": version,
        "starts": summary,
        "ratio_gridos_to_crun_dir": median(0) / median(1),
        "ratio_gridos_to_crun_overlay": median(0) / median(2),
    });
    if kinds.len() > 3 {
        result["ratio_gridos_to_youki_overlay"] = json!(median(0) / median(3));
        result["ratio_gridos_to_libcontainer_overlay"] = json!(median(0) / median(4));
    }
    println!("startbench: result {result}");
    let _ = fs::remove_dir_all(&cli.work);
    rss_lines(cli)
}

impl<'a> Bench<'a> {
    /// The image (one directory holding `/stamp`), the stamps' directory, the cgroup.
    fn prepare(cli: &'a Cli) -> anyhow::Result<Self> {
        let _ = fs::remove_dir_all(&cli.work);
        let layer = cli.work.join("layer");
        for d in ["out", "proc", "dev", "sys", "tmp"] {
            fs::create_dir_all(layer.join(d))?;
        }
        let exe = fs::read("/proc/self/exe").context("reading /proc/self/exe")?;
        fs::write(layer.join("stamp"), exe)?;
        fs::set_permissions(layer.join("stamp"), fs::Permissions::from_mode(0o755))?;
        let (out, root) = (cli.work.join("out"), cli.work.join("containers"));
        fs::create_dir_all(&out)?;
        fs::create_dir_all(&root)?;
        fs::create_dir_all(&cli.cgroup)?;
        if let Some(parent) = cli.cgroup.parent() {
            // Already on where init delegates cgroups; a no-op then.
            let _ = fs::write(parent.join("cgroup.subtree_control"), "+cpu +memory +pids");
        }
        fs::write(
            cli.cgroup.join("cgroup.subtree_control"),
            "+cpu +memory +pids",
        )
        .with_context(|| format!("enabling controllers in {}", cli.cgroup.display()))?;
        Ok(Bench {
            cli,
            layer,
            out,
            root,
        })
    }

    /// One start with gridos' runtime; nanoseconds to the stamp.
    fn gridos(&self, id: &str) -> anyhow::Result<u128> {
        let spec = Spec {
            id: id.into(),
            hostname: id.into(),
            layers: vec![self.layer.clone()],
            args: vec!["/stamp".into(), "stamp".into(), format!("/out/{id}")],
            env: vec!["PATH=/".into()],
            workdir: "/".into(),
            uid: 0,
            gid: 0,
            cgroup: Some((self.cli.cgroup.clone(), LIMITS)),
            binds: vec![Bind {
                source: self.out.clone(),
                target: "/out".into(),
                read_only: false,
            }],
        };
        let t0 = monotonic_ns();
        let started = container::start(&self.root, &spec)?;
        let at = wait_stamp(&self.out.join(id))?;
        nix::sys::wait::waitpid(started.pid, None)?;
        if let Some(cg) = &started.cgroup {
            remove_cgroup(cg)?;
        }
        fs::remove_dir_all(&started.dir)?;
        Ok(at.saturating_sub(t0))
    }

    /// One start with crun (`run --detach`) or youki's libcontainer, on an overlay mounted
    /// first or on the image's directory: nanoseconds to the stamp, and for libcontainer also
    /// from its program's own start.
    fn oci(&self, id: &str, runtime: Oci, overlay: bool) -> anyhow::Result<(u128, Option<u128>)> {
        let bundle = self.root.join(id);
        let rootfs = if overlay {
            for d in ["upper", "work", "rootfs"] {
                fs::create_dir_all(bundle.join(d))?;
            }
            bundle.join("rootfs")
        } else {
            fs::create_dir_all(&bundle)?;
            self.layer.clone()
        };
        fs::write(
            bundle.join("config.json"),
            self.oci_config(id, &rootfs).to_string(),
        )?;
        let state = self.cli.work.join("crun-state");
        let t0 = monotonic_ns();
        if overlay {
            let opts = format!(
                "lowerdir={},upperdir={},workdir={}",
                self.layer.display(),
                bundle.join("upper").display(),
                bundle.join("work").display()
            );
            nix::mount::mount(
                Some("overlay"),
                &rootfs,
                Some("overlay"),
                nix::mount::MsFlags::empty(),
                Some(opts.as_str()),
            )
            .context("mounting the overlay")?;
        }
        let mut run = match runtime {
            Oci::Crun => {
                let mut c = Command::new(&self.cli.crun);
                c.arg("--root")
                    .arg(&state)
                    .args(["run", "--detach", "--bundle"]);
                c.arg(&bundle).arg(id);
                c
            }
            Oci::Youki => {
                let mut c = Command::new(&self.cli.youki);
                c.arg("run").arg(&bundle).arg(id).arg(&state);
                c
            }
        };
        let run = run
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .context("running crun")?;
        if !run.status.success() {
            bail!(
                "{runtime:?} run: {}: {}",
                run.status,
                String::from_utf8_lossy(&run.stderr).trim()
            );
        }
        let at = wait_stamp(&self.out.join(id))?;
        let library = match runtime {
            Oci::Crun => None,
            Oci::Youki => {
                let t = fs::read_to_string(bundle.join("t0")).context("youki's t0")?;
                Some(at.saturating_sub(t.trim().parse()?))
            }
        };
        // The stamp has exited (or is about to): delete takes its state and cgroup.
        let mut delete = match runtime {
            Oci::Crun => {
                let mut c = Command::new(&self.cli.crun);
                c.arg("--root").arg(&state).args(["delete", "--force", id]);
                c
            }
            Oci::Youki => {
                let mut c = Command::new(&self.cli.youki);
                c.arg("delete").arg(id).arg(&state);
                c
            }
        };
        let deleted = delete
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()?;
        if !deleted.status.success() {
            bail!(
                "{runtime:?} delete: {}",
                String::from_utf8_lossy(&deleted.stderr).trim()
            );
        }
        if overlay {
            nix::mount::umount(&rootfs).context("unmounting the overlay")?;
        }
        fs::remove_dir_all(&bundle)?;
        Ok((at.saturating_sub(t0), library))
    }

    /// The OCI runtime configuration matching what gridos gives its containers.
    fn oci_config(&self, id: &str, rootfs: &Path) -> serde_json::Value {
        let proc_paths = |names: &[&str]| -> Vec<String> {
            names.iter().map(|n| format!("/proc/{n}")).collect()
        };
        let mut masked = proc_paths(container::PROC_MASKED_FILES);
        masked.extend(proc_paths(container::PROC_MASKED_DIRS));
        json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": false,
                "user": {"uid": 0, "gid": 0},
                "args": ["/stamp", "stamp", format!("/out/{id}")],
                "env": ["PATH=/"],
                "cwd": "/",
                "capabilities": {
                    "bounding": CAPABILITIES, "effective": CAPABILITIES, "permitted": CAPABILITIES,
                },
            },
            "root": {"path": rootfs, "readonly": false},
            "hostname": id,
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                 "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
                {"destination": "/sys", "type": "sysfs", "source": "sysfs",
                 "options": ["nosuid", "noexec", "nodev", "ro"]},
                {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
                 "options": ["nosuid", "noexec", "nodev", "ro"]},
                {"destination": "/out", "type": "bind", "source": self.out,
                 "options": ["rbind", "rw"]},
            ],
            "linux": {
                "cgroupsPath": format!("/{}/{id}", self.cli.cgroup.file_name().and_then(|n| n.to_str()).unwrap_or("startbench")),
                "resources": {
                    "memory": {"limit": LIMITS.memory, "swap": LIMITS.memory},
                    "cpu": {"quota": LIMITS.cores * 100_000, "period": 100_000},
                    "pids": {"limit": LIMITS.pids},
                },
                "namespaces": [
                    {"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                    {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"},
                ],
                "maskedPaths": masked,
                "readonlyPaths": proc_paths(container::PROC_READ_ONLY),
            },
        })
    }
}

/// The kill is not needed (the process has exited), but rmdir waits for the kernel to let go.
fn remove_cgroup(cg: &Path) -> anyhow::Result<()> {
    for _ in 0..200 {
        match fs::remove_dir(cg) {
            Ok(()) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => return Err(e).with_context(|| format!("removing {}", cg.display())),
        }
    }
    bail!("{} stays busy", cg.display())
}

/// `VmRSS` and `VmHWM` in kB of the first process whose `comm` is `name`.
fn rss_of(name: &str) -> Option<(u64, u64)> {
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let dir = entry.path();
        let is = fs::read_to_string(dir.join("comm")).is_ok_and(|c| c.trim_end() == name);
        if !is {
            continue;
        }
        let status = fs::read_to_string(dir.join("status")).ok()?;
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        };
        return Some((field("VmRSS:")?, field("VmHWM:")?));
    }
    None
}

/// The provision service's containers that have a process.
fn running_containers(workloads: &Path) -> usize {
    let Ok(dir) = fs::read_dir(workloads) else {
        return 0;
    };
    dir.flatten()
        .filter(|e| {
            fs::read_to_string(e.path().join("cgroup.procs")).is_ok_and(|p| !p.trim().is_empty())
        })
        .count()
}

/// Every 2 s while the count changes, and every 30 s otherwise, one line; never returns.
fn rss_lines(cli: &Cli) -> anyhow::Result<()> {
    let (mut last, mut said) = (usize::MAX, Instant::now());
    loop {
        let n = running_containers(&cli.workloads);
        if n != last || said.elapsed() >= Duration::from_secs(30) {
            let kb = |who: &str, comm: &str| match rss_of(comm) {
                Some((rss, hwm)) => format!("{who}_rss_kb={rss} {who}_hwm_kb={hwm}"),
                None => format!("{who}_rss_kb=- {who}_hwm_kb=-"),
            };
            println!(
                "startbench: rss containers={n} {} {}",
                kb("agent", "gridos-agent"),
                // `comm` holds 15 bytes of the name.
                kb("provision", "gridos-provisio")
            );
            (last, said) = (n, Instant::now());
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}
