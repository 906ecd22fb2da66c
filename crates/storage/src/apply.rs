//! The I/O half: reads disk headers, measures, partitions, formats and mounts.

use crate::plan::{self, Candidate, Plan};
use crate::signature::{self, PROBE_BYTES};
use crate::state::{self, Backing, State};
use crate::{Error, Result, CACHE_LABEL, POOL_LABEL};
use cmdline::WipePolicy;
use disks::settle::{self, UeventSocket};
use disks::{Disk, Kind, Measured, Pool};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Where storage looks and what it may do.
#[derive(Debug, Clone)]
pub struct Config {
    /// `/sys/block`.
    pub sys_block: PathBuf,
    /// `/dev`.
    pub dev: PathBuf,
    /// Where the cache is mounted.
    pub mountpoint: PathBuf,
    /// Where the state file and tmpfs marker go.
    pub run_dir: PathBuf,
    /// The `gridos.wipe` policy.
    pub policy: WipePolicy,
    /// Test-only: use exactly these disks (loop devices allowed), ignore all others.
    pub only: Option<Vec<String>>,
    /// Disks known to be the boot medium: never used, never counted.
    pub boot: Vec<String>,
    /// `gridos.cache_on_stick=yes`: the gridos boot stick may take the cache in its free
    /// space when no other disk can (it is still never sold).
    pub stick_cache: bool,
    /// Where the measurements are published for the agent.
    pub measured: PathBuf,
    /// Where the pools are published for the agent and provision.
    pub pools_file: PathBuf,
    /// Where pools other than the cache are mounted, each in a folder named by its UUID.
    pub pools_dir: PathBuf,
    /// `/proc/modules`, to see drivers still initialising.
    pub proc_modules: PathBuf,
    /// Quiet period and longest wait for the devices to settle; `None` decides at once.
    pub settle: Option<(Duration, Duration)>,
}

fn read_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Read {
        path: path.display().to_string(),
        source,
    }
}

/// Reads the first and last [`PROBE_BYTES`] of a block device (or less if it is smaller).
fn head_tail(dev: &Path, size: u64) -> Result<(Vec<u8>, Vec<u8>)> {
    let mut f = std::fs::File::open(dev).map_err(read_err(dev))?;
    let n = (PROBE_BYTES as u64).min(size);
    let mut head = vec![0u8; n as usize];
    f.read_exact(&mut head).map_err(read_err(dev))?;
    let mut tail = vec![0u8; n as usize];
    f.seek(SeekFrom::Start(size - n)).map_err(read_err(dev))?;
    f.read_exact(&mut tail).map_err(read_err(dev))?;
    Ok((head, tail))
}

/// The first partition's name: `sda` → `sda1`, `nvme0n1` → `nvme0n1p1`, `loop3` → `loop3p1`.
pub fn first_partition(disk: &str) -> String {
    nth_partition(disk, 1)
}

/// Partition `n`'s name, as [`first_partition`] spells the first.
pub fn nth_partition(disk: &str, n: usize) -> String {
    if disk.ends_with(|c: char| c.is_ascii_digit()) {
        format!("{disk}p{n}")
    } else {
        format!("{disk}{n}")
    }
}

/// The first 68 KiB of a partition: enough for a btrfs superblock.
fn superblock(dev: &Path) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 0x10000 + 4096];
    std::fs::File::open(dev)
        .and_then(|mut f| f.read_exact(&mut buf))
        .ok()?;
    Some(buf)
}

/// The btrfs label of partition `dev`, if it holds a btrfs.
fn btrfs_label_of(dev: &Path) -> Option<String> {
    superblock(dev).and_then(|b| signature::btrfs_label(&b))
}

fn probe(cfg: &Config, mut disk: Disk) -> Result<Option<Candidate>> {
    let dev = cfg.dev.join(&disk.name);
    let (head, tail) = head_tail(&dev, disk.size_bytes)?;
    let sig = signature::detect(&head, &tail);
    let boot_medium = signature::boot_medium(&head);
    if boot_medium && !cfg.stick_cache {
        tracing::info!(disk = %disk.name, "skipping disk: the gridos boot medium (never formatted, not sold)");
        return Ok(None);
    }
    if boot_medium {
        tracing::info!(disk = %disk.name, "the gridos boot stick may hold the cache (gridos.cache_on_stick=yes) if no other disk can; it is not sold");
    }
    if sig == Some(signature::Signature::Iso9660) {
        tracing::info!(disk = %disk.name, "skipping disk: ISO 9660 image (boot medium)");
        return Ok(None);
    }
    if sig == Some(signature::Signature::Gpt) && disk.partitions.is_empty() {
        // A partition table the kernel did not parse (no GPT support built in, or a loop
        // device): add its partitions from user space so a cache partition is not missed.
        let dev_s = dev.to_string_lossy().into_owned();
        match run_cmd("partx", &["--add", &dev_s], None) {
            Ok(()) => {
                std::thread::sleep(Duration::from_millis(200));
                disk.partitions = disks::scan::partitions_of(&cfg.sys_block.join(&disk.name));
                tracing::info!(disk = %disk.name, partitions = ?disk.partitions, "partitions added with partx");
            }
            Err(e) => {
                tracing::warn!(disk = %disk.name, error = &e as &dyn std::error::Error, "partx --add failed")
            }
        }
        for p in &disk.partitions {
            wait_for(&cfg.dev.join(p), Duration::from_secs(5));
        }
    }
    // Each partition's superblock is read once, for both labels.
    let labels: Vec<(&String, Option<String>)> = disk
        .partitions
        .iter()
        .map(|p| (p, btrfs_label_of(&cfg.dev.join(p))))
        .collect();
    let labelled = |want: &str| {
        labels
            .iter()
            .find(|(_, l)| l.as_deref() == Some(want))
            .map(|(p, _)| (*p).clone())
    };
    let cache_partition = labelled(CACHE_LABEL);
    let pool_partition = labelled(POOL_LABEL);
    let latency = if disks::class::needs_seek_test(disk.rotational) {
        match disks::seek::measure(&dev, disk.size_bytes) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!(disk = %disk.name, error = &e as &dyn std::error::Error, "seek test failed; counted as HDD");
                None
            }
        }
    } else {
        None
    };
    let claimed = disk.rotational;
    let m = Measured::new(disk, latency);
    if claimed != Some(true) && m.kind == Kind::Hdd && latency.is_some() {
        tracing::warn!(disk = %m.disk.name, ?latency, "disk claims to be an SSD but seeks like an HDD; counted as HDD");
    }
    tracing::info!(disk = %m.disk.name, size = m.disk.size_bytes, kind = ?m.kind, rotational = ?claimed,
        latency_us = ?m.latency_us, signature = ?sig, cache = ?cache_partition, pool = ?pool_partition, "disk found");
    let Measured {
        disk,
        kind,
        latency_us,
    } = m;
    Ok(Some(Candidate {
        disk,
        kind,
        latency_us,
        signature: sig,
        cache_partition,
        pool_partition,
        boot_medium,
    }))
}

/// Finds a helper in `PATH` or the usual sbin/bin folders: init may start services with no
/// `PATH`, and the default search path has no sbin.
pub fn find_tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

fn run_cmd(program: &str, args: &[&str], stdin: Option<&str>) -> Result<()> {
    use std::io::Write;
    let fail = |reason: String| Error::Command {
        program: program.to_string(),
        args: args.join(" "),
        reason,
    };
    let mut child = Command::new(find_tool(program))
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(e.to_string()))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(|e| fail(e.to_string()))?;
    }
    let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        return Err(fail(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

fn is_mountpoint(target: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let t = target.to_string_lossy();
    info.lines()
        .any(|l| l.split(' ').nth(4).is_some_and(|m| m == t))
}

fn mount(what: &Path, fstype: &str, target: &Path, data: Option<&str>) -> Result<()> {
    std::fs::create_dir_all(target).map_err(|source| Error::Write {
        path: target.display().to_string(),
        source,
    })?;
    if is_mountpoint(target) {
        tracing::info!(target = %target.display(), "already mounted; leaving it");
        return Ok(());
    }
    nix::mount::mount(
        Some(what),
        target,
        Some(fstype),
        nix::mount::MsFlags::MS_NOATIME,
        data,
    )
    .map_err(|source| Error::Mount {
        what: what.display().to_string(),
        target: target.display().to_string(),
        source,
    })
}

fn wait_for(path: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while !path.exists() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// GPT partition type "Linux filesystem".
const LINUX_FS_GUID: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";

/// Writes a GPT with one partition named `label` over the whole of `disk` and formats it as
/// a btrfs labelled the same.
fn create(cfg: &Config, disk: &str, wipe: bool, label: &str) -> Result<PathBuf> {
    let dev = cfg.dev.join(disk);
    let dev_s = dev.to_string_lossy().into_owned();
    if wipe {
        tracing::warn!(disk, "gridos.wipe=all: erasing every signature on the disk");
        run_cmd("wipefs", &["--all", "--force", &dev_s], None)?;
    }
    let script = format!("label: gpt\nsize=+, type={LINUX_FS_GUID}, name=\"{label}\"\n");
    run_cmd(
        "sfdisk",
        &[
            "--quiet",
            "--wipe",
            "always",
            "--wipe-partitions",
            "always",
            &dev_s,
        ],
        Some(&script),
    )?;
    let part = cfg.dev.join(first_partition(disk));
    format_new(disk, &dev_s, part, label)
}

/// Formats the partition `part` just written to `disk`'s table, once it appears.
fn format_new(disk: &str, dev_s: &str, part: PathBuf, label: &str) -> Result<PathBuf> {
    await_partition(disk, dev_s, &part)?;
    run_cmd(
        "mkfs.btrfs",
        &["--force", "--label", label, &part.to_string_lossy()],
        None,
    )?;
    Ok(part)
}

/// Waits for a partition just written to appear, adding it with partx if the kernel did not.
fn await_partition(disk: &str, dev_s: &str, part: &Path) -> Result<()> {
    if !wait_for(part, Duration::from_secs(3)) {
        // Some kernels (no GPT parser built in) do not pick the table up on re-read;
        // partx reads it in user space and adds the partition with BLKPG.
        tracing::info!(disk, "partition not visible yet; adding it with partx");
        if let Err(e) = run_cmd("partx", &["--add", dev_s], None) {
            tracing::warn!(
                disk,
                error = &e as &dyn std::error::Error,
                "partx --add failed"
            );
        }
        if !wait_for(part, Duration::from_secs(10)) {
            return Err(Error::NoPartition(part.display().to_string()));
        }
    }
    Ok(())
}

/// Adds the cache partition in the boot stick's free space, after its partitions, and formats
/// it; the boot partition is not touched.
fn append(cfg: &Config, disk: &str) -> Result<PathBuf> {
    let dev = cfg.dev.join(disk);
    let dev_s = dev.to_string_lossy().into_owned();
    let before = disks::scan::partitions_of(&cfg.sys_block.join(disk)).len();
    // The image's backup GPT sits where the image ended, not at the end of the stick it was
    // written to: move it there, or sfdisk sees no free space.
    run_cmd(
        "sfdisk",
        &["--quiet", "--relocate", "gpt-bak-std", &dev_s],
        None,
    )?;
    let script = format!("size=+, type={LINUX_FS_GUID}, name=\"{CACHE_LABEL}\"\n");
    run_cmd(
        "sfdisk",
        &["--quiet", "--append", "--wipe-partitions", "always", &dev_s],
        Some(&script),
    )?;
    let part = cfg.dev.join(nth_partition(disk, before + 1));
    format_new(disk, &dev_s, part, CACHE_LABEL)
}

/// Probes every usable disk whose name is not in `known`, in name order.
fn candidates(cfg: &Config, known: &[String]) -> Result<Vec<Candidate>> {
    let mut cands = Vec::new();
    for disk in disks::scan(&cfg.sys_block)? {
        if known.contains(&disk.name) {
            continue;
        }
        if let Some(why) = disks::skip_reason(&disk, &cfg.boot, cfg.only.as_deref()) {
            tracing::debug!(disk = %disk.name, why, "skipping disk");
            continue;
        }
        let name = disk.name.clone();
        match probe(cfg, disk) {
            Ok(Some(c)) => cands.push(c),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(disk = %name, error = &e as &dyn std::error::Error, "cannot read disk; skipping it")
            }
        }
    }
    Ok(cands)
}

/// Publishes what was measured, for the agent's capacity report.
fn publish(cfg: &Config, cands: &[Candidate]) -> Result<()> {
    let m: Vec<Measured> = cands
        .iter()
        // The boot stick holds the cache only by the farmer's leave: it is not capacity.
        .filter(|c| !c.boot_medium)
        .map(|c| Measured {
            disk: c.disk.clone(),
            kind: c.kind,
            latency_us: c.latency_us,
        })
        .collect();
    disks::measured::write(&cfg.measured, &m)?;
    Ok(())
}

fn settle_devices(cfg: &Config, events: Option<&UeventSocket>) {
    if let Some((quiet, max)) = cfg.settle {
        settle::wait(&cfg.sys_block, &cfg.proc_modules, events, quiet, max);
    }
}

/// Loads btrfs (and its checksum driver) before mounting a cache partition.
fn load_btrfs() {
    // Nothing else loads btrfs: no device asks for it. Its checksum driver is a soft
    // dependency (crypto "crc32c") the kernel would ask modprobe for, so it goes first.
    for module in ["crc32c_generic", "btrfs"] {
        match kmod::load_module(module) {
            Ok(loaded) if !loaded.is_empty() => tracing::info!(?loaded, "loaded modules"),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(
                    module,
                    error = &e as &dyn std::error::Error,
                    "cannot load module; mounting anyway"
                )
            }
        }
    }
}

/// Carries out a plan that puts the cache on a disk; returns the partition.
fn prepare(cfg: &Config, plan: &Plan, state: &mut State) -> Result<Option<PathBuf>> {
    Ok(match plan {
        Plan::Reuse { disk, partition } => {
            tracing::info!(
                disk,
                partition,
                "re-using the existing gridos cache partition"
            );
            state.backing = Backing::Reused;
            Some(cfg.dev.join(partition))
        }
        Plan::Create { disk, wipe } => {
            tracing::info!(disk, "creating the gridos cache partition");
            state.backing = Backing::Created;
            Some(create(cfg, disk, *wipe, CACHE_LABEL)?)
        }
        Plan::Append { disk } => {
            tracing::info!(disk, "adding the gridos cache partition to the boot stick");
            state.backing = Backing::Created;
            Some(append(cfg, disk)?)
        }
        Plan::Tmpfs { .. } => None,
    })
}

fn log_placement(state: &State, plan: &Plan) {
    let disk = match plan {
        Plan::Reuse { disk, .. } | Plan::Create { disk, .. } | Plan::Append { disk } => disk,
        Plan::Tmpfs { .. } => return,
    };
    if let Some(c) = state.disks.iter().find(|c| &c.disk.name == disk) {
        tracing::info!(disk, kind = ?c.kind, size = c.disk.size_bytes, backing = ?state.backing,
            "cache placed");
    }
}

/// Records the cache partition as the first pool: it holds twins' volumes and VM disks too
/// when its disk is the only one of its kind.
fn cache_pool(cfg: &Config, state: &mut State, plan: &Plan) {
    let disk = match plan {
        Plan::Reuse { disk, .. } | Plan::Create { disk, .. } | Plan::Append { disk } => disk,
        Plan::Tmpfs { .. } => return,
    };
    state.cache_disk = Some(disk.clone());
    let (Some(part), Some(c)) = (
        &state.device,
        state.disks.iter().find(|c| &c.disk.name == disk),
    ) else {
        return;
    };
    let pool = fsid(part).and_then(|id| pool_on(id, &c.disk.name, c.kind, &cfg.mountpoint, true));
    match pool {
        Ok(pool) => {
            state.pools.retain(|p| !p.cache);
            state.pools.insert(0, pool);
        }
        Err(e) => tracing::error!(
            error = &e as &dyn std::error::Error,
            "the cache partition is not a pool: no volume can go there"
        ),
    }
}

/// The pool of the btrfs `id` on `disk`, mounted at `mountpoint`.
fn pool_on(id: String, disk: &str, kind: Kind, mountpoint: &Path, cache: bool) -> Result<Pool> {
    Ok(Pool {
        id,
        disk: disk.to_string(),
        kind,
        mountpoint: mountpoint.to_path_buf(),
        size_bytes: fs_size(mountpoint)?,
        cache,
    })
}

fn fsid(part: &Path) -> Result<String> {
    superblock(part)
        .and_then(|b| signature::btrfs_fsid(&b))
        .ok_or_else(|| Error::Read {
            path: part.display().to_string(),
            source: std::io::Error::other("no btrfs superblock"),
        })
}

fn fs_size(mountpoint: &Path) -> Result<u64> {
    let st = nix::sys::statvfs::statvfs(mountpoint).map_err(|e| Error::Read {
        path: mountpoint.display().to_string(),
        source: e.into(),
    })?;
    Ok(st.blocks().saturating_mul(st.fragment_size()))
}

/// Makes every disk that holds neither the cache nor a pool yet a pool, as far as the wipe
/// policy allows (`plan::pools`), and mounts it under `cfg.pools_dir`. A disk that fails is
/// logged and left out: it is not sold, and the others still are.
fn make_pools(cfg: &Config, state: &mut State) {
    let fresh: Vec<Candidate> = state
        .disks
        .iter()
        .filter(|c| !state.pools.iter().any(|p| p.disk == c.disk.name))
        .cloned()
        .collect();
    let (plans, refused) = plan::pools(&fresh, state.cache_disk.as_deref(), cfg.policy);
    for (disk, why) in &refused {
        tracing::warn!(disk, why, "disk not made a pool");
    }
    if !plans.is_empty() {
        load_btrfs();
    }
    for p in plans {
        let Some(kind) = fresh
            .iter()
            .find(|c| c.disk.name == p.disk())
            .map(|c| c.kind)
        else {
            continue;
        };
        let taken: Vec<String> = state.pools.iter().map(|p| p.id.clone()).collect();
        match mount_pool(cfg, &p, kind, &taken) {
            Ok(pool) => {
                tracing::info!(disk = %pool.disk, kind = ?pool.kind, size = pool.size_bytes,
                    id = %pool.id, mountpoint = %pool.mountpoint.display(),
                    reused = matches!(p, plan::PoolPlan::Reuse { .. }), "pool ready");
                state.pools.push(pool);
            }
            Err(e) => tracing::error!(
                disk = p.disk(),
                error = &e as &dyn std::error::Error,
                "disk not made a pool; not sold"
            ),
        }
    }
}

/// Makes or re-uses the pool of plan `p` and mounts it, unless its UUID is one of `taken`
/// (a disk cloned from another pool's: mounting it would stand for the other).
fn mount_pool(cfg: &Config, p: &plan::PoolPlan, kind: Kind, taken: &[String]) -> Result<Pool> {
    let part = match p {
        plan::PoolPlan::Reuse { partition, .. } => cfg.dev.join(partition),
        plan::PoolPlan::Create { disk, wipe } => {
            tracing::info!(disk, "creating a storage pool");
            create(cfg, disk, *wipe, POOL_LABEL)?
        }
    };
    let id = fsid(&part)?;
    if taken.contains(&id) {
        return Err(Error::Read {
            path: part.display().to_string(),
            source: std::io::Error::other(format!(
                "btrfs {id} is already a pool on another disk (a cloned disk?): wipe one of \
                 them to use it"
            )),
        });
    }
    let target = cfg.pools_dir.join(&id);
    mount(&part, "btrfs", &target, None)?;
    pool_on(id, p.disk(), kind, &target, false)
}

/// Waits for the devices to settle, finds the disks, decides, and makes the cache available
/// at `cfg.mountpoint`. Falls back to tmpfs (with a loud warning) when no disk can be used.
pub fn run(cfg: &Config, events: Option<&UeventSocket>) -> Result<State> {
    settle_devices(cfg, events);
    let cands = candidates(cfg, &[])?;
    publish(cfg, &cands)?;
    let (plan, refused) = plan::decide(&cands, cfg.policy);
    for (disk, why) in &refused {
        tracing::warn!(disk, why, "not formatting disk");
    }
    let mut state = State {
        backing: Backing::Tmpfs,
        mountpoint: cfg.mountpoint.clone(),
        device: None,
        warning: None,
        disks: cands,
        cache_disk: None,
        pools: Vec::new(),
    };
    let on_disk = prepare(cfg, &plan, &mut state)?;
    if let Plan::Tmpfs { reason } = &plan {
        tracing::error!(
            reason,
            "NO CACHE DISK: the cache is on tmpfs and is lost at reboot; the node gets a new identity every boot"
        );
        state.warning = Some(format!("cache on tmpfs: {reason}"));
    }
    match &on_disk {
        Some(part) => {
            load_btrfs();
            mount(part, "btrfs", &cfg.mountpoint, None)?
        }
        None => mount(
            Path::new("tmpfs"),
            "tmpfs",
            &cfg.mountpoint,
            Some("mode=0755"),
        )?,
    }
    state.device = on_disk;
    log_placement(&state, &plan);
    cache_pool(cfg, &mut state, &plan);
    make_pools(cfg, &mut state);
    disks::pools::write(&cfg.pools_file, &state.pools)?;
    state::save(&cfg.run_dir, &state)?;
    tracing::info!(mountpoint = %cfg.mountpoint.display(), backing = ?state.backing, "cache ready");
    Ok(state)
}

/// After boot: picks up disks that appear later (hot-plug, a slow controller). Each new disk
/// is measured and published, so the agent reports the new capacity; while the cache is on
/// tmpfs, the first disk the policy allows gets it and the tmpfs contents move there. A cache
/// already on a disk never moves. Returns only if the uevent socket cannot be used.
pub fn watch(cfg: &Config, mut state: State, events: &UeventSocket) -> Result<()> {
    let mut names = disks::scan::names(&cfg.sys_block);
    loop {
        let evs = events.wait(Duration::from_secs(30));
        let now = disks::scan::names(&cfg.sys_block);
        if now == names && !evs.iter().any(|e| e.is_disk_added()) {
            continue;
        }
        settle_devices(cfg, Some(events));
        names = disks::scan::names(&cfg.sys_block);
        // A failure here (a disk that cannot be partitioned) must not end the service: the
        // cache it already provides stays, and the next disk event tries again.
        if let Err(e) = absorb(cfg, &mut state, &names) {
            tracing::error!(
                error = &e as &dyn std::error::Error,
                "handling a disk added after boot failed"
            );
        }
    }
}

fn absorb(cfg: &Config, state: &mut State, names: &[String]) -> Result<()> {
    // Disks that went away are no longer counted, and their pools are gone.
    state.disks.retain(|c| names.contains(&c.disk.name));
    for gone in state.pools.iter().filter(|p| !names.contains(&p.disk)) {
        tracing::error!(disk = %gone.disk, pool = %gone.id, "disk gone: its pool and the volumes on it are lost");
        if let Err(e) = nix::mount::umount2(&gone.mountpoint, nix::mount::MntFlags::MNT_DETACH) {
            tracing::warn!(mountpoint = %gone.mountpoint.display(), error = %e, "cannot detach the pool");
        }
    }
    state.pools.retain(|p| names.contains(&p.disk));
    let known: Vec<String> = state.disks.iter().map(|c| c.disk.name.clone()).collect();
    let new = candidates(cfg, &known)?;
    for c in &new {
        tracing::info!(disk = %c.disk.name, kind = ?c.kind, size = c.disk.size_bytes, "disk added after boot");
    }
    state.disks.extend(new);
    state.disks.sort_by(|a, b| a.disk.name.cmp(&b.disk.name));
    publish(cfg, &state.disks)?;
    if state.backing == Backing::Tmpfs {
        let (plan, refused) = plan::decide(&state.disks, cfg.policy);
        for (disk, why) in &refused {
            tracing::warn!(disk, why, "not formatting disk");
        }
        if let Some(part) = prepare(cfg, &plan, state)? {
            load_btrfs();
            if let Err(e) = crate::migrate::tmpfs_to_disk(&part, &cfg.mountpoint, &cfg.run_dir) {
                state.backing = Backing::Tmpfs;
                return Err(e);
            }
            tracing::info!(partition = %part.display(), "cache moved from tmpfs to disk");
            state.device = Some(part);
            state.warning = None;
            log_placement(state, &plan);
            cache_pool(cfg, state, &plan);
        }
    }
    make_pools(cfg, state);
    disks::pools::write(&cfg.pools_file, &state.pools)?;
    state::save(&cfg.run_dir, state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tools_are_found_without_path() {
        assert!(find_tool("sh").is_absolute());
        assert_eq!(
            find_tool("no-such-tool-here"),
            PathBuf::from("no-such-tool-here")
        );
    }

    #[test]
    fn partition_names() {
        assert_eq!(first_partition("sda"), "sda1");
        assert_eq!(first_partition("nvme0n1"), "nvme0n1p1");
        assert_eq!(first_partition("loop7"), "loop7p1");
        assert_eq!(first_partition("vdb"), "vdb1");
    }
}
