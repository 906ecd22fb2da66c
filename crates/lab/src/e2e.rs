//! The end-to-end test of issue 5: a real image boots in QEMU, measures itself, registers with
//! a real registry on 127.0.0.1, comes back as the same node after a reboot on the same disks,
//! and loses no report while the registry is down.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use gridapi::{paths, NodeStatus, NodeView, Page, ReportView, StoredKind};
use gridtypes::{now, Envelope, Payload, Report};

use crate::qemu::{self, Guest, Machine, CPUS, HDD_BYTES, MEMORY_MIB, SSD_BYTES};
use crate::registry::{self, Registry};
use crate::shapes::{self, Shape, Timing, SHAPES};

/// Test settings (flags of `gridos-lab e2e`).
#[derive(Debug, Clone, clap::Args)]
pub struct E2eArgs {
    /// Image folder from `make image`.
    #[arg(long, default_value = "out")]
    pub image: PathBuf,
    /// Work folder (disks, consoles, registry file); emptied first.
    #[arg(long, default_value = "build/e2e")]
    pub work: PathBuf,
    /// Folder with the `grid-registry` and `grid` binaries.
    #[arg(long, default_value = "target/debug")]
    pub bin_dir: PathBuf,
    /// Seconds between the node's uptime reports (`gridos.report_interval=`).
    #[arg(long, default_value_t = 3)]
    pub report_interval: u64,
    /// Seconds the registry stays down.
    #[arg(long, default_value_t = 20)]
    pub outage: u64,
    /// Longest wait for one boot to register (TCG is slow).
    #[arg(long, default_value_t = 600)]
    pub boot_timeout: u64,
    /// Only these shapes (comma-separated names; see docs/lab.md); default all.
    #[arg(long, value_delimiter = ',')]
    pub shapes: Vec<String>,
    /// Guests booted at once (each TCG guest keeps about one host core busy).
    #[arg(long, default_value_t = 2)]
    pub parallel: usize,
    /// Times a failed shape is run again from fresh disks. Nested TCG on a loaded CI machine
    /// may fail where a second run passes; each retry and its first reason are printed in the
    /// summary, so a flaky shape is seen, not hidden. 0 makes the first failure final.
    #[arg(long, default_value_t = 1)]
    pub retries: u32,
    /// The system extensions from `make extensions` (the VM runtime), served by the registry
    /// of each shape that runs a VM.
    #[arg(long, default_value = "out/extensions")]
    pub extensions: PathBuf,
}

pub(crate) const GIB: u64 = 1 << 30;
/// The memory the OS keeps for itself (DESIGN.md: "1 GiB of memory is kept for the OS"); the
/// kernel's own share of what QEMU gives must fit in it.
pub(crate) const OS_RESERVE: u64 = GIB;

fn step(msg: &str) {
    eprintln!("e2e: {msg}");
}

/// Farming units, written out again from DESIGN.md rather than called from `gridtypes`, so a
/// wrong formula there cannot agree with itself here.
pub(crate) fn expected_units(cru: u64, mru: u64, sru: u64, hru: u64) -> (f64, f64) {
    let gib = |b: u64| b as f64 / GIB as f64;
    let cu = (cru as f64 * 4.0 / 2.0)
        .min((gib(mru) - 1.0) / 4.0)
        .min(gib(sru) / 50.0)
        .max(0.0);
    let su = gib(hru) / 1200.0 + gib(sru) * 0.8 / 200.0;
    (cu, su)
}

pub(crate) fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * b.abs().max(1.0)
}

/// One uptime report as the registry stored it, signature checked here.
#[derive(Debug, Clone, Copy)]
struct Uptime {
    id: i64,
    signed_at: i64,
    received_at: i64,
    uptime_secs: u64,
}

/// Every signed message of the node, each signature verified locally (as an auditor would).
async fn reports(
    reg: &Registry,
    node: i64,
    public_key: &str,
) -> anyhow::Result<Vec<(ReportView, Envelope)>> {
    let mut out = Vec::new();
    let mut after = 0i64;
    loop {
        let page: Page<ReportView> = reg
            .get(&format!(
                "{}?after={after}&limit=1000",
                paths::node_reports(node as u64)
            ))
            .await?;
        for r in page.items {
            let env: Envelope = serde_json::from_str(r.envelope.get())
                .context("a stored envelope does not parse")?;
            env.verify_signature()
                .with_context(|| format!("report {} fails its signature check", r.id))?;
            ensure!(
                env.signer == public_key,
                "report {} is signed by {} instead of the node",
                r.id,
                env.signer
            );
            out.push((r, env));
        }
        match page.next {
            Some(n) => after = n,
            None => return Ok(out),
        }
    }
}

async fn uptimes(reg: &Registry, node: i64, public_key: &str) -> anyhow::Result<Vec<Uptime>> {
    let mut out = Vec::new();
    for (r, env) in reports(reg, node, public_key).await? {
        if r.kind != StoredKind::Uptime.as_str() {
            continue;
        }
        if let Payload::Report(Report::Uptime { uptime_secs, .. }) =
            Payload::from_bytes(&env.payload)?
        {
            out.push(Uptime {
                id: r.id,
                signed_at: r.signed_at,
                received_at: r.received_at,
                uptime_secs,
            });
        }
    }
    out.sort_by_key(|u| u.id);
    Ok(out)
}

/// The uptime reports of the current boot: those after the last drop of `uptime_secs`.
fn this_boot(all: &[Uptime]) -> &[Uptime] {
    let start = all
        .windows(2)
        .rposition(|w| w[1].uptime_secs < w[0].uptime_secs)
        .map(|i| i + 1)
        .unwrap_or(0);
    &all[start..]
}

async fn wait_uptimes(
    reg: &Registry,
    node: i64,
    key: &str,
    cond: impl Fn(&[Uptime]) -> bool,
    what: &str,
) -> anyhow::Result<Vec<Uptime>> {
    let t0 = Instant::now();
    loop {
        let u = uptimes(reg, node, key).await?;
        if cond(&u) {
            return Ok(u);
        }
        if t0.elapsed() > Duration::from_secs(120) {
            bail!("{what}: not within 120 s (uptime reports: {u:?})");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Waits for "registered node_id=N" on the console and returns N and the guest-clock seconds
/// from PID 1 start to it.
pub(crate) async fn registered(guest: &mut Guest, timeout: Duration) -> anyhow::Result<(i64, f64)> {
    let line = guest
        .wait_line(&["registered", "node_id="], timeout)
        .await?;
    let id = line
        .split("node_id=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no node id in {line:?}"))?;
    let pid1 = guest
        .wait_line(&["gridos init started as PID 1"], Duration::from_secs(1))
        .await?;
    let secs = match (qemu::boot_clock(&pid1), qemu::boot_clock(&line)) {
        (Some(a), Some(b)) => b - a,
        _ => bail!("no guest clock in {pid1:?} or {line:?}"),
    };
    Ok((id, secs))
}

/// Presses Ctrl-Alt-Del and checks the planned shutdown: services stopped in order and the
/// last uptime report delivered before QEMU ends.
pub(crate) async fn reboot(guest: &mut Guest) -> anyhow::Result<()> {
    guest.ctrl_alt_del()?;
    let st = guest.wait(Duration::from_secs(180)).await?;
    ensure!(st.success(), "qemu ended with {st} after Ctrl-Alt-Del");
    let text = std::fs::read_to_string(&guest.serial)?;
    for needle in [
        "last uptime report delivered",
        "all services stopped",
        "calling reboot(2)",
    ] {
        ensure!(
            text.contains(needle),
            "the console lacks {needle:?} after Ctrl-Alt-Del"
        );
    }
    ensure!(!text.contains("Kernel panic"), "kernel panic");
    Ok(())
}

/// Boots every selected shape, `--parallel` at a time, and fails if any shape failed.
pub async fn run(args: E2eArgs) -> anyhow::Result<()> {
    let work = &args.work;
    let _ = std::fs::remove_dir_all(work);
    std::fs::create_dir_all(work).with_context(|| format!("creating {}", work.display()))?;
    let work = work.canonicalize()?;
    let accel = qemu::pick_accel(&args.image, &work);
    step(&format!("accelerator: {accel}"));
    let shapes: Vec<Shape> = SHAPES
        .iter()
        .filter(|s| args.shapes.is_empty() || args.shapes.iter().any(|n| n == s.name))
        .copied()
        .collect();
    if let Some(unknown) = args
        .shapes
        .iter()
        .find(|n| !SHAPES.iter().any(|s| s.name == n.as_str()))
    {
        bail!("no shape named {unknown:?}");
    }
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(args.parallel.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    let t0 = Instant::now();
    for shape in shapes.clone() {
        let (args, accel, gate) = (args.clone(), accel.clone(), gate.clone());
        let dir = work.join(shape.name);
        tasks.spawn(async move {
            let _permit = gate.acquire().await;
            let started = Instant::now();
            let mut earlier = Vec::new();
            let r = loop {
                let r = if shape.full {
                    full(&args, &accel, &shape, &dir).await
                } else {
                    shapes::check(&args, &accel, &shape, &dir).await
                };
                match r {
                    Err(e) if earlier.len() < args.retries as usize => {
                        let attempt = earlier.len() + 1;
                        let kept = keep_attempt(&dir, attempt);
                        step(&format!(
                            "shape {}: attempt {attempt} FAILED ({kept}), running it again \
                             from fresh disks: {e:#}",
                            shape.name
                        ));
                        earlier.push(format!("{e:#}"));
                    }
                    r => break r,
                }
            };
            (shape.name, started.elapsed(), r, earlier)
        });
    }
    let mut results = Vec::new();
    let mut retried = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (name, took, r, earlier) = joined.context("a shape's task died")?;
        match &r {
            Ok(_) => step(&format!(
                "shape {name}: passed ({:.0} s wall{})",
                took.as_secs_f64(),
                if earlier.is_empty() {
                    String::new()
                } else {
                    format!(", attempt {}", earlier.len() + 1)
                }
            )),
            Err(e) => step(&format!("shape {name}: FAILED: {e:#}")),
        }
        retried.extend(
            earlier
                .into_iter()
                .enumerate()
                .map(|(i, e)| (name, i + 1, e)),
        );
        results.push((name, r));
    }
    results.sort_by_key(|(n, _)| shapes.iter().position(|s| s.name == *n));
    let failed = results.iter().filter(|(_, r)| r.is_err()).count();
    println!("e2e: shape                      firmware  kernel->PID1  PID1->registered  settle wait  entropy wait");
    for (name, r) in &results {
        let secs = |v: Option<f64>| v.map_or("-".into(), |s| format!("{s:.2} s"));
        match r {
            Ok(t) => println!(
                "e2e: {name:<26} {:>8}  {:>8}      {:>8.2} s        {:>7}      {}",
                secs(t.firmware_s),
                secs(t.pid1_s),
                t.registered_s,
                secs(t.settle_ms.map(|ms| ms as f64 / 1000.0)),
                secs(t.crng_s)
            ),
            Err(_) => println!("e2e: {name:<26} FAILED"),
        }
    }
    println!(
        "e2e: {} passed, {failed} failed, {} attempt(s) run again ({} shapes, {:.0} s wall)",
        results.len() - failed,
        retried.len(),
        results.len(),
        t0.elapsed().as_secs_f64()
    );
    // Repeated last: a CI log that keeps only its tail still says why each shape failed,
    // and which passed only when run again.
    for (name, attempt, e) in &retried {
        println!(
            "e2e: {name}: attempt {attempt} failed and was run again: {}",
            clip(e, 1500)
        );
    }
    for (name, r) in &results {
        if let Err(e) = r {
            println!("e2e: {name}: FAILED: {}", clip(&format!("{e:#}"), 1500));
        }
    }
    ensure!(failed == 0, "{failed} shape(s) failed");
    Ok(())
}

/// Moves a failed attempt's folder (consoles, registry file, disks) aside to
/// `<shape>.attempt<N>`, so the next attempt starts from nothing and the failure can still be
/// read. Says where it went, or why it could not be kept.
fn keep_attempt(dir: &Path, attempt: usize) -> String {
    let mut aside = dir.as_os_str().to_owned();
    aside.push(format!(".attempt{attempt}"));
    let aside = PathBuf::from(aside);
    let _ = std::fs::remove_dir_all(&aside);
    match std::fs::rename(dir, &aside) {
        Ok(()) => format!("kept in {}", aside.display()),
        Err(e) => {
            let _ = std::fs::remove_dir_all(dir);
            format!("not kept: {e}")
        }
    }
}

/// At most `max` bytes of `s` (cut at a character boundary), marked when cut.
fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{} … ({} bytes more)", &s[..end], s.len() - end)
}

/// The full scenario on one shape: register, capacity, cache placement, reboot → same node,
/// registry outage → nothing lost. On failure the console tail is printed.
async fn full(args: &E2eArgs, accel: &str, shape: &Shape, work: &Path) -> anyhow::Result<Timing> {
    std::fs::create_dir_all(work)?;
    let (mut reg, farm) = registry::with_farm(&args.bin_dir, work, 0, "e2e-farm").await?;
    step(&format!("registry on {} (SQLite), farm {farm}", reg.url()));
    let images = crate::images::start().await?;
    step(&format!("OCI registry serving {}", images.busybox));
    let append = format!(
        "gridos.farm={farm} gridos.registry={} gridos.report_interval={} gridos.hostname=e2e-node {}",
        reg.guest_url(),
        args.report_interval,
        images.plain_http()
    );
    let mut machine = shape.machine(&args.image, accel, work, append);
    let result = scenario(args, &mut reg, &mut machine, farm, work, &images.busybox).await;
    if result.is_err() {
        eprintln!(
            "e2e: last console lines ({}):\n{}",
            machine.serial.display(),
            qemu::tail(&machine.serial, 80)
        );
    }
    result
}

/// The node as the first boot registered it.
struct Node {
    id: i64,
    key: String,
}

async fn scenario(
    args: &E2eArgs,
    reg: &mut Registry,
    machine: &mut Machine,
    farm: u64,
    work: &Path,
    image: &str,
) -> anyhow::Result<Timing> {
    let (mut guest, node, guest_secs, timing) = first_boot(args, reg, machine, farm).await?;
    let contract = deployment(args, reg, &node, work, image).await?;
    let count_boot1 = ordered_shutdown(reg, &mut guest, &node).await?;
    machine.serial = work.join("console-boot2.log");
    let (mut guest, guest_secs2) =
        second_boot(args, reg, machine, farm, &node, count_boot1).await?;
    restored(args, reg, &mut guest, work, &contract).await?;
    outage(args, reg, &mut guest, &node).await?;
    redeploy(args, reg, work, &contract, image).await?;
    teardown(args, reg, &mut guest, work, &contract).await?;
    isolation(args, reg, &node, work, image).await?;
    consumption(reg, &node).await?;
    reboot(&mut guest).await?;
    let total = reports(reg, node.id, &node.key).await?.len();
    step(&format!(
        "shutdown clean; {total} signed messages of node {} all verify",
        node.id
    ));
    println!(
        "e2e: 1 passed (register, capacity, units, reboot → same node, outage → nothing lost), 0 failed"
    );
    println!("boot1_pid1_to_registered_guest_s={guest_secs:.3}");
    println!("boot2_pid1_to_registered_guest_s={guest_secs2:.3}");
    Ok(timing)
}

/// Boot 1 on fresh disks: registered once, capacity and units as QEMU made them, the cache on
/// the SSD, and uptime reports arriving.
async fn first_boot(
    args: &E2eArgs,
    reg: &Registry,
    machine: &mut Machine,
    farm: u64,
) -> anyhow::Result<(Guest, Node, f64, Timing)> {
    let t0 = Instant::now();
    let mut guest = machine.boot()?;
    let (id, guest_secs) = registered(&mut guest, Duration::from_secs(args.boot_timeout)).await?;
    step(&format!(
        "boot 1: registered as node {id} ({guest_secs:.2} s guest clock from PID 1, {:.0} s wall)",
        t0.elapsed().as_secs_f64()
    ));
    let nodes: Page<NodeView> = reg.get(&format!("{}?farm={farm}", paths::NODES)).await?;
    let ids: Vec<i64> = nodes.items.iter().map(|n| n.id).collect();
    ensure!(
        ids == [id],
        "farm {farm} has nodes {ids:?}, want only node {id}"
    );
    let cap = shapes::check_capacity(reg, id, CPUS, MEMORY_MIB, SSD_BYTES, HDD_BYTES).await?;
    ensure!(
        cap.node.virtualized,
        "a QEMU guest must say it is virtualised"
    );
    let node = Node {
        id,
        key: cap.node.public_key.clone(),
    };
    let cache = shapes::check_cache(&mut guest, Some(shapes::DiskKind::Ssd)).await?;
    step(&format!("boot 1: cache on the {cache}"));
    let timing = shapes::timing(&guest.serial, guest_secs);
    step(&format!(
        "capacity: CRU {}, MRU {} B ({} MiB below what QEMU gave), SRU {} B, HRU {} B; CU {:.4} SU {:.4} = formula",
        cap.cru,
        cap.mru,
        ((MEMORY_MIB << 20) - cap.mru) >> 20,
        cap.sru,
        cap.hru,
        cap.cu,
        cap.su
    ));
    let before = wait_uptimes(reg, id, &node.key, |u| u.len() >= 2, "two uptime reports").await?;
    step(&format!("boot 1: {} uptime reports arrived", before.len()));
    Ok((guest, node, guest_secs, timing))
}

/// The deployment's workload `name` as `grid deployments show` prints it.
pub(crate) fn workload<'a>(
    shown: &'a serde_json::Value,
    name: &str,
) -> Option<&'a serde_json::Value> {
    shown["status"]["workloads"]
        .as_array()?
        .iter()
        .find(|w| w["name"] == name)
}

/// `grid … --json` as the tenant twin of the scenario (its key in `work/twin.key`).
fn twin_grid(
    args: &E2eArgs,
    reg: &Registry,
    work: &Path,
) -> impl Fn(&[&str]) -> anyhow::Result<serde_json::Value> {
    grid_as(&args.bin_dir, reg, work.join("twin.key"))
}

/// `grid … --json` (from `bin_dir`) with the key in `key`.
pub(crate) fn grid_as(
    bin_dir: &Path,
    reg: &Registry,
    key: PathBuf,
) -> impl Fn(&[&str]) -> anyhow::Result<serde_json::Value> {
    let (bin_dir, url) = (bin_dir.to_path_buf(), reg.url());
    move |a: &[&str]| registry::grid::<serde_json::Value>(&bin_dir, &url, &key, a)
}

/// One app-file entry: a container of `image` running `sh -c cmd` on one core with 64 MiB
/// of memory and 64 MiB of disk.
pub(crate) fn small_container(name: &str, image: &str, cmd: &str) -> String {
    format!(
        "- kind: container\n  name: {name}\n  image: {image}\n  cmd: [sh, -c, '{cmd}']\n  \
         resources: {{cru: 1, mru: 64MiB, sru: 64MiB}}\n"
    )
}

/// `grid … --json` as a new twin: a key made in `key` and registered as a twin.
pub(crate) fn new_twin(
    bin_dir: &Path,
    reg: &Registry,
    key: PathBuf,
) -> anyhow::Result<impl Fn(&[&str]) -> anyhow::Result<serde_json::Value>> {
    let grid = grid_as(bin_dir, reg, key);
    grid(&["key", "new"])?;
    grid(&["twin", "register"])?;
    Ok(grid)
}

/// Rents `cru` cores, `mru` of memory and `sru` of disk (as `grid` reads sizes) on `node`;
/// returns the contract id.
pub(crate) fn rent(
    grid: &dyn Fn(&[&str]) -> anyhow::Result<serde_json::Value>,
    node: i64,
    cru: u64,
    mru: &str,
    sru: &str,
) -> anyhow::Result<String> {
    rent_hdd(grid, node, cru, mru, sru, "0")
}

/// As [`rent`], with `hru` of HDD too.
pub(crate) fn rent_hdd(
    grid: &dyn Fn(&[&str]) -> anyhow::Result<serde_json::Value>,
    node: i64,
    cru: u64,
    mru: &str,
    sru: &str,
    hru: &str,
) -> anyhow::Result<String> {
    let (node, cru) = (node.to_string(), cru.to_string());
    let c = grid(&[
        "contracts",
        "create",
        "--node",
        &node,
        "--cru",
        &cru,
        "--mru",
        mru,
        "--sru",
        sru,
        "--hru",
        hru,
    ])?;
    Ok(c["id"].to_string())
}

/// Writes an app file of `workloads` (app-file entries) to `file` and deploys it to
/// `contract`.
pub(crate) fn deploy(
    grid: &dyn Fn(&[&str]) -> anyhow::Result<serde_json::Value>,
    file: &Path,
    workloads: &str,
    contract: &str,
) -> anyhow::Result<()> {
    std::fs::write(file, format!("workloads:\n{workloads}"))
        .with_context(|| format!("writing {}", file.display()))?;
    grid(&["deploy", &file.to_string_lossy(), "--contract", contract])?;
    Ok(())
}

/// Reads `grid deployments show CONTRACT` every 0.5 s until `done` holds for it; `done`'s
/// error, or `within` running out (`what` says what was awaited), fails the test.
pub(crate) async fn until_shown(
    grid: &impl Fn(&[&str]) -> anyhow::Result<serde_json::Value>,
    contract: &str,
    within: Duration,
    what: &str,
    mut done: impl FnMut(&serde_json::Value) -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let shown = grid(&["deployments", "show", contract])?;
        if done(&shown)? {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "{what}: {shown}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A twin rents part of the node and deploys two containers to it with `grid`, through the
/// node's sealed mailbox: the node takes it up (long poll through QEMU's NAT), keeps it on
/// its cache partition, pulls the image from the OCI registry on the host and runs it.
/// `web` runs; `hog` fills more memory than it reserved and is killed by its cgroup's limit.
/// Returns the contract id.
async fn deployment(
    args: &E2eArgs,
    reg: &Registry,
    node: &Node,
    work: &Path,
    image: &str,
) -> anyhow::Result<String> {
    let grid = new_twin(&args.bin_dir, reg, work.join("twin.key"))?;
    // The volume is on the HDD: the node sells HRU only for a disk that holds a pool.
    let contract = rent_hdd(&grid, node.id, 2, "128MiB", "256MiB", "32MiB")?;
    // hog first reads its limits from inside (its own cgroup, mounted read-only at
    // /sys/fs/cgroup): a wrong one ends it with status 3 or 4 instead of the OOM kill. Then
    // its volume, on the HDD pool: after a reboot the mark it left is there and it ends with
    // status 0; on the first boot it leaves the mark and 64 MB must not fit in the 32 MiB
    // volume (else 9).
    let registry = image.split('/').next().unwrap_or(image);
    let check = format!("test \"$(cat /sys/fs/cgroup/memory.max)\" = 25165824 || exit 3; \
                 test \"$(cat /sys/fs/cgroup/cpu.max)\" = \"100000 100000\" || exit 4; \
                 wget -q -O /dev/null http://{registry}/v2/ || exit 5; \
                 test -f /data/mark && exit 0; touch /data/mark || exit 8; \
                 dd if=/dev/zero of=/data/big bs=1M count=64 2>/dev/null && exit 9; rm -f /data/big");
    let workloads = format!(
        "{}\
             - kind: volume\n  name: data\n  size: 32MiB\n  disk: hdd\n\
             - kind: container\n  name: hog\n  image: {image}\n  restart: never\n  \
               cmd: [sh, -c, '{check}; x=$(yes | head -c 64000000); echo survived']\n  \
               mounts: [{{volume: data, path: /data}}]\n  \
               resources: {{cru: 1, mru: 24MiB, sru: 64MiB}}\n",
        small_container("web", image, WEB)
    );
    let t0 = Instant::now();
    deploy(&grid, &work.join("app.yaml"), &workloads, &contract)?;
    let mut web_running = None;
    let what = format!("the node did not run contract {contract} in time");
    until_shown(&grid, &contract, Duration::from_secs(300), &what, |shown| {
        let state = |n: &str| workload(shown, n).map(|w| w["state"].clone());
        let web = state("web") == Some("running".into());
        if web && web_running.is_none() {
            web_running = Some(t0.elapsed());
        }
        ensure!(
            shown["state"] != "failed" || web,
            "the node failed the deployment: {shown}"
        );
        if !web || state("hog").is_none_or(|s| s == "running") {
            return Ok(false);
        }
        let web = workload(shown, "web").cloned().unwrap_or_default();
        ensure!(
            web["address"]
                .as_str()
                .is_some_and(|a| a.starts_with("10.240.")),
            "web has no address on its twin's network: {shown}"
        );
        let data = workload(shown, "data").cloned().unwrap_or_default();
        ensure!(
            data["state"] == "running" && data["reason"].is_null(),
            "the volume is not a btrfs subvolume with its quota on the HDD pool: {shown}"
        );
        let hog = workload(shown, "hog").cloned().unwrap_or_default();
        let said = || {
            grid(&["logs", &contract, "hog", "--tail", "2000"])
                .map_or_else(|e| format!("({e:#})"), |l| l["text"].to_string())
        };
        ensure!(
            hog["state"] == "failed" && hog["reason"].to_string().contains("killed by signal 9"),
            "hog printed {}; {}",
            said(),
            format_args!(
                "hog was not killed at its memory limit (status 3: memory.max is not the \
             reserved 24 MiB; 4: cpu.max is not one core; 5: the host's OCI registry is not \
             reachable through the node's NAT; 8: its volume is not writable; \
             9: its 32 MiB volume took 64 MB): {shown}"
            )
        );
        Ok(true)
    })
    .await?;
    step(&format!(
        "deployment: contract {contract} sealed to node {}, image pulled from the host's OCI \
         registry, web running, hog saw its limits in its cgroup (memory.max 24 MiB, cpu.max one \
         core), reached the host's OCI registry through the node's NAT, could not put 64 MB in \
         its 32 MiB volume on the HDD pool, and was killed at the memory limit \
         ({:.0} s wall)",
        node.id,
        t0.elapsed().as_secs_f64()
    ));
    if let Some(t) = web_running {
        println!("deploy_to_running_uncached_s={:.1}", t.as_secs_f64());
    }
    logs(&grid, &contract).await?;
    Ok(contract)
}

/// `grid logs`: what `web` and `hog` printed comes back from the node, sealed to the twin;
/// a workload the deployment does not have is refused with its name.
async fn logs(
    grid: &impl Fn(&[&str]) -> anyhow::Result<serde_json::Value>,
    contract: &str,
) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let web = grid(&["logs", contract, "web", "--wait", "120"])?;
    let took = t0.elapsed().as_secs_f64();
    ensure!(web["text"] == "up\n", "grid logs web: {web}");
    // hog printed nothing before the OOM kill: "survived" would mean it was not killed.
    let hog = grid(&["logs", contract, "hog", "--tail", "100"])?;
    ensure!(
        !hog["text"].to_string().contains("survived"),
        "grid logs hog: {hog}"
    );
    match grid(&["logs", contract, "nosuch"]) {
        Ok(v) => bail!("grid logs of a workload that does not exist answered {v}"),
        Err(e) => ensure!(
            format!("{e:#}").contains("nosuch"),
            "grid logs nosuch failed without naming it: {e:#}"
        ),
    }
    step(&format!(
        "logs: grid logs shows what web printed, through the mailbox ({took:.1} s); an unknown \
         workload is refused by name"
    ));
    println!("grid_logs_s={took:.1}");
    Ok(())
}

/// Version 2 keeps `web` as it runs, drops `hog` and adds `web2` of the same image: the node
/// leaves `web` alone and starts `web2` from the image it already has. Prints the wall time
/// from `grid deploy` to `web2` running (the image cached).
async fn redeploy(
    args: &E2eArgs,
    reg: &Registry,
    work: &Path,
    contract: &str,
    image: &str,
) -> anyhow::Result<()> {
    let grid = twin_grid(args, reg, work);
    let web = address_of(&grid(&["deployments", "show", contract])?, "web")?;
    let workloads = format!(
        "{}{}",
        small_container("web", image, WEB),
        small_container("web2", image, &fetch(&web))
    );
    let t0 = Instant::now();
    deploy(&grid, &work.join("app-v2.yaml"), &workloads, contract)?;
    let what = format!("version 2 of contract {contract} did not run in time");
    until_shown(&grid, contract, Duration::from_secs(120), &what, |shown| {
        let running =
            |n: &str| workload(shown, n).map(|w| w["state"].clone()) == Some("running".into());
        if shown["status"]["version"] != 2 || !running("web2") {
            return Ok(false);
        }
        ensure!(running("web"), "web did not keep running: {shown}");
        ensure!(
            workload(shown, "hog").is_none(),
            "version 2 still lists hog: {shown}"
        );
        Ok(true)
    })
    .await?;
    let took = t0.elapsed().as_secs_f64();
    let said = until_logged(&grid, contract, "web2").await?;
    ensure!(
        said.contains("hello"),
        "web2 did not reach web ({web}) on their twin's network: {said:?}"
    );
    step(&format!(
        "redeploy: version 2 keeps web, drops hog, starts web2 from the cached image ({took:.1} s \
         wall); web2 fetched web's page at {web} over their twin's bridge"
    ));
    println!("deploy_to_running_cached_s={took:.1}");
    Ok(())
}

/// What `web` runs: a page served on port 8080.
const WEB: &str =
    "echo up; mkdir -p /www; echo hello > /www/index.html; exec httpd -f -p 8080 -h /www";

/// A command that fetches `web`'s page at `address` and prints it, or `blocked` when no
/// connection opens within 5 s (busybox `nc`: Debian's static busybox `wget -T` crashes).
fn fetch(address: &str) -> String {
    format!(
        "printf \"GET / HTTP/1.0\\r\\n\\r\\n\" | nc -w 5 {address} 8080 || echo blocked; \
         exec sleep 1000000"
    )
}

/// The address of workload `name` in `grid deployments show`.
fn address_of(shown: &serde_json::Value, name: &str) -> anyhow::Result<String> {
    workload(shown, name)
        .and_then(|w| w["address"].as_str())
        .map(str::to_string)
        .with_context(|| format!("{name} has no address: {shown}"))
}

/// `grid logs CONTRACT NAME` until the workload printed `hello` or `blocked` (within 60 s).
async fn until_logged(
    grid: &impl Fn(&[&str]) -> anyhow::Result<serde_json::Value>,
    contract: &str,
    name: &str,
) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = grid(&["logs", contract, name])?["text"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if text.contains("hello") || text.contains("blocked") {
            return Ok(text);
        }
        ensure!(
            Instant::now() < deadline,
            "{name} printed neither hello nor blocked in 60 s: {text:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Two twins, one core each after the scenario's contract is gone: twin a serves a page,
/// twin b's container on the same node cannot fetch it (no path between twins' networks).
async fn isolation(
    args: &E2eArgs,
    reg: &Registry,
    node: &Node,
    work: &Path,
    image: &str,
) -> anyhow::Result<()> {
    let a = twin_grid(args, reg, work);
    let b = new_twin(&args.bin_dir, reg, work.join("twin-b.key"))?;
    let run = |grid: &dyn Fn(&[&str]) -> anyhow::Result<serde_json::Value>,
               name: &str,
               cmd: &str|
     -> anyhow::Result<String> {
        let contract = rent(grid, node.id, 1, "64MiB", "64MiB")?;
        let app = work.join(format!("app-{name}.yaml"));
        deploy(grid, &app, &small_container(name, image, cmd), &contract)?;
        Ok(contract)
    };
    let ca = run(&a, "page", WEB)?;
    let what = "twin a's page did not run";
    until_shown(&a, &ca, Duration::from_secs(120), what, |shown| {
        Ok(workload(shown, "page").is_some_and(|w| w["state"] == "running"))
    })
    .await?;
    let page = address_of(&a(&["deployments", "show", &ca])?, "page")?;
    let cb = run(&b, "intruder", &fetch(&page))?;
    let said = until_logged(&b, &cb, "intruder").await?;
    ensure!(
        said.contains("blocked") && !said.contains("hello"),
        "twin b's container fetched twin a's page at {page}: {said:?}"
    );
    let intruder = address_of(&b(&["deployments", "show", &cb])?, "intruder")?;
    ensure!(
        intruder.rsplit_once('.').map(|p| p.0) != page.rsplit_once('.').map(|p| p.0),
        "both twins' containers are on one network: {page} and {intruder}"
    );
    a(&["contracts", "cancel", &ca])?;
    b(&["contracts", "cancel", &cb])?;
    step(&format!(
        "isolation: twin b's container ({intruder}) cannot fetch twin a's page at {page}"
    ));
    Ok(())
}

/// After the reboot the node runs the deployment again from its cache partition: `web` is
/// started again, and `hog` finds the mark it left in its volume and ends with status 0.
async fn restored(
    args: &E2eArgs,
    reg: &Registry,
    guest: &mut Guest,
    work: &Path,
    contract: &str,
) -> anyhow::Result<()> {
    let needle = format!("contract={contract}");
    guest
        .wait_line(
            &["container started", &needle, "container=web"],
            Duration::from_secs(300),
        )
        .await
        .context("boot 2 did not start the deployment's web container again")?;
    let grid = twin_grid(args, reg, work);
    let what = "hog did not find its volume's mark after the reboot";
    until_shown(&grid, contract, Duration::from_secs(120), what, |shown| {
        let hog = workload(shown, "hog").cloned().unwrap_or_default();
        // Until the node's new status arrives, the one of boot 1 (killed) is shown.
        ensure!(
            hog["state"] != "failed" || hog["reason"].to_string().contains("killed by signal 9"),
            "hog failed after the reboot (status 8: its volume is not writable): {shown}"
        );
        Ok(hog["state"] == "exited")
    })
    .await?;
    step(&format!(
        "boot 2: contract {contract}'s web container runs again; hog found what it wrote to its volume before the reboot"
    ));
    Ok(())
}

/// The twin deletes the deployment: the node stops and removes the container, says
/// `deleted`; the twin cancels the contract and the node's capacity is free again.
async fn teardown(
    args: &E2eArgs,
    reg: &Registry,
    guest: &mut Guest,
    work: &Path,
    contract: &str,
) -> anyhow::Result<()> {
    let grid = twin_grid(args, reg, work);
    let needle = format!("contract={contract}");
    let needles = ["container removed", needle.as_str(), "container=web"];
    // Only a line the deletion adds counts (an earlier version may have removed a web).
    let removed = |guest: &Guest| {
        std::fs::read_to_string(&guest.serial)
            .unwrap_or_default()
            .lines()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .count()
    };
    let before = removed(guest);
    grid(&["deployments", "delete", contract])?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while removed(guest) == before {
        ensure!(
            guest.running() && Instant::now() < deadline,
            "the node did not remove the deleted deployment's container"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let what = "the node did not report the deletion";
    until_shown(&grid, contract, Duration::from_secs(60), what, |shown| {
        Ok(shown["state"] == "deleted")
    })
    .await?;
    grid(&["contracts", "cancel", contract])?;
    step(&format!(
        "teardown: contract {contract}'s containers stopped and removed, reported deleted, contract cancelled"
    ));
    Ok(())
}

/// The node's consumption reports carried its containers' traffic (hog's fetch from the
/// host through the NAT, the pages fetched across the node): the registry sums it.
async fn consumption(reg: &Registry, node: &Node) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n: NodeView = reg.get(&paths::node(node.id as u64)).await?;
        // Each contract's share of that traffic, as the node signed it: what the registry
        // bills the twin NU for.
        let mut shared = 0u64;
        let mut contracts = std::collections::BTreeSet::new();
        for (r, env) in reports(reg, node.id, &node.key).await? {
            if r.kind != StoredKind::Consumption.as_str() {
                continue;
            }
            if let Payload::Report(Report::Consumption(c)) = Payload::from_bytes(&env.payload)? {
                let sum: u64 = c.contracts.iter().map(|t| t.traffic_bytes).sum();
                ensure!(
                    sum <= c.traffic_bytes,
                    "a consumption report shares {sum} bytes among contracts of {} in all",
                    c.traffic_bytes
                );
                shared += sum;
                contracts.extend(c.contracts.iter().map(|t| t.contract_id));
            }
        }
        if n.traffic_bytes > 0 && shared > 0 {
            step(&format!(
                "consumption: the node's signed consumption reports add up to {} bytes of \
                 container traffic, {shared} of them shared among contracts {contracts:?}",
                n.traffic_bytes
            ));
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "no consumption report carried the containers' traffic with each contract's share \
             ({} bytes in all, {shared} shared)",
            n.traffic_bytes
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Ctrl-Alt-Del: the shutdown is ordered, the last report arrives, and the registry shows
/// the node stopped at once (not `up` until the window runs out). Returns the uptime reports
/// of boot 1.
async fn ordered_shutdown(reg: &Registry, guest: &mut Guest, node: &Node) -> anyhow::Result<usize> {
    reboot(guest).await?;
    let count_boot1 = uptimes(reg, node.id, &node.key).await?.len();
    step(&format!(
        "boot 1: ordered shutdown after Ctrl-Alt-Del, last report delivered ({count_boot1} uptime reports)"
    ));
    let stopped: NodeView = reg.get(&paths::node(node.id as u64)).await?;
    ensure!(
        stopped.status == NodeStatus::Stopped,
        "after an ordered shutdown the node shows {} instead of stopped",
        stopped.status
    );
    step("boot 1: the registry shows the node stopped at once");
    Ok(count_boot1)
}

/// Boot 2 on the same disks: the same key, the same node, reports continuing.
async fn second_boot(
    args: &E2eArgs,
    reg: &Registry,
    machine: &mut Machine,
    farm: u64,
    node: &Node,
    count_boot1: usize,
) -> anyhow::Result<(Guest, f64)> {
    let id = node.id;
    let mut guest = machine.boot()?;
    let (id2, guest_secs2) = registered(&mut guest, Duration::from_secs(args.boot_timeout)).await?;
    ensure!(
        id2 == id,
        "after the reboot the node registered as {id2}, was {id}"
    );
    guest
        .wait_line(&["node identity", "created=false"], Duration::from_secs(5))
        .await
        .context("boot 2 made a new key instead of keeping the one on the cache partition")?;
    let n: Page<NodeView> = reg.get(&format!("{}?farm={farm}", paths::NODES)).await?;
    let ids: Vec<i64> = n.items.iter().map(|n| n.id).collect();
    ensure!(ids == [id], "the reboot made a second node: {ids:?}");
    guest
        .wait_line(
            &["deployment state loaded", "contracts=1"],
            Duration::from_secs(10),
        )
        .await
        .context("boot 2 lost the deployment kept on the cache partition")?;
    let u = wait_uptimes(
        reg,
        id,
        &node.key,
        |u| u.len() >= count_boot1 + 2 && this_boot(u).len() >= 2,
        "uptime reports after the reboot",
    )
    .await?;
    step(&format!(
        "boot 2: same node {id2} and key ({guest_secs2:.2} s guest clock from PID 1 to registered), reports continue ({} so far)",
        u.len()
    ));
    Ok((guest, guest_secs2))
}

/// The registry goes away for `--outage` seconds: the agent notices, keeps its reports, and
/// once the registry is back its uptime proves the node was up all along.
async fn outage(
    args: &E2eArgs,
    reg: &mut Registry,
    guest: &mut Guest,
    node: &Node,
) -> anyhow::Result<()> {
    let interval = args.report_interval as i64;
    let unreachable_before = console_count(guest, "registry unreachable");
    reg.stop()?;
    let stopped_at = now();
    step(&format!("registry stopped for {} s", args.outage));
    tokio::time::sleep(Duration::from_secs(args.outage)).await;
    ensure!(
        console_count(guest, "registry unreachable") > unreachable_before,
        "the agent never noticed the registry was down"
    );
    // Taken before the restart: the agent may deliver in the moment the server comes up.
    let restarted_at = now();
    reg.restart().await?;
    guest
        .wait_line(&["registry reachable again"], Duration::from_secs(120))
        .await?;
    let all = uptimes(reg, node.id, &node.key).await?;
    let boot2 = this_boot(&all);
    let late = boot2
        .iter()
        .filter(|u| u.received_at >= restarted_at)
        .count();
    ensure!(
        late >= 1,
        "no uptime report arrived after the restart of a {} s outage",
        args.outage
    );
    // While the registry is away the agent keeps only the newest reading of the boot (it
    // proves all the older ones did) and restates it for the time it is signed. So across
    // the outage the node's uptime grew as much as time did: the registry's minting counts
    // the node up throughout, and no pair of reports is a violation.
    for w in boot2.windows(2) {
        ensure!(
            w[1].uptime_secs > w[0].uptime_secs,
            "uptime reports out of order: {w:?}"
        );
        let du = (w[1].uptime_secs - w[0].uptime_secs) as i64;
        let dt = w[1].signed_at - w[0].signed_at;
        let sample = |u: &Uptime| accounting::Sample {
            at: u.signed_at,
            uptime_secs: u.uptime_secs,
        };
        ensure!(
            !accounting::is_violation(sample(&w[0]), sample(&w[1])),
            "uptime grew {du} s in {dt} s of signed time: the registry's minting would see a violation"
        );
        ensure!(
            du + 2 * interval + 3 >= dt,
            "uptime grew only {du} s in {dt} s of signed time (interval {interval} s): the node would count as down"
        );
    }
    step(&format!(
        "outage {stopped_at}..{restarted_at}: {late} uptime report(s) after the restart carry the node's uptime across it, no violation ({} this boot)",
        boot2.len()
    ));
    Ok(())
}

fn console_count(guest: &Guest, needle: &str) -> usize {
    std::fs::read_to_string(&guest.serial)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_worked_example() {
        // 2 cores, 2 GiB, 20 GB SSD, 50 GB HDD.
        let (cu, su) = expected_units(2, 2 * GIB, SSD_BYTES, HDD_BYTES);
        assert!(close(cu, 0.25), "{cu}");
        let sru = SSD_BYTES as f64 / GIB as f64;
        let hru = HDD_BYTES as f64 / GIB as f64;
        assert!(close(su, hru / 1200.0 + sru * 0.004), "{su}");
    }

    #[test]
    fn long_reasons_are_clipped_at_a_character_boundary() {
        assert_eq!(clip("short", 10), "short");
        let s = "é".repeat(10);
        let c = clip(&s, 5);
        assert!(c.starts_with("éé …"), "{c}");
        assert!(c.ends_with("(16 bytes more)"), "{c}");
    }

    #[test]
    fn current_boot_is_after_the_last_uptime_drop() {
        let u = |id, s| Uptime {
            id,
            signed_at: 0,
            received_at: 0,
            uptime_secs: s,
        };
        let all = [u(1, 5), u(2, 8), u(3, 2), u(4, 5)];
        assert_eq!(this_boot(&all).len(), 2);
        assert_eq!(this_boot(&all[..2]).len(), 2);
    }

    #[test]
    fn guest_clock_of_console_lines() {
        assert_eq!(
            qemu::boot_clock("[    3.032005]  INFO settings farm=None"),
            Some(3.032005)
        );
        assert_eq!(
            qemu::boot_clock("[agent] [    5.500000]  INFO agent::agent: registered node_id=1"),
            Some(5.5)
        );
        assert_eq!(qemu::boot_clock("[agent] no clock"), None);
    }
}
