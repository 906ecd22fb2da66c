//! `gridos-lab node-bench` (`make node-bench`): the benchmark image (bench/start) boots against
//! a local registry; its `gridos-startbench` service compares container starts of gridos'
//! runtime and crun inside the node and then prints the agent's and the provision service's
//! RSS. This side reads the comparison off the console, has a twin deploy `--containers`
//! containers through the grid, and reads the RSS once they all run.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use serde_json::json;

use crate::e2e::{deploy, new_twin, registered, rent, small_container, until_shown, workload};
use crate::qemu::{self, Machine};
use crate::registry;

/// Flags of `gridos-lab node-bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct NodeBenchArgs {
    /// The benchmark image folder (`make node-bench` builds it from bench/start/profile.yaml).
    #[arg(long, default_value = "build/start-bench-image")]
    pub image: PathBuf,
    /// Work folder; emptied first.
    #[arg(long, default_value = "build/node-bench")]
    pub work: PathBuf,
    /// Folder with the `grid-registry` and `grid` binaries.
    #[arg(long, default_value = "target/release")]
    pub bin_dir: PathBuf,
    /// Containers the twin deploys (one core and 32 MiB each).
    #[arg(long, default_value_t = 20)]
    pub containers: usize,
    /// vCPUs: a container reserves at least one core, and the registry refuses a contract
    /// larger than the node.
    #[arg(long, default_value_t = 20)]
    pub cpus: u32,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 3072)]
    pub memory_mib: u64,
    /// JSON results file.
    #[arg(long, default_value = "build/node-bench.json")]
    pub out: PathBuf,
}

/// `key=value` fields of a console line, as numbers.
fn field(line: &str, key: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

/// The last console line holding `needle`.
fn last_line(serial: &Path, needle: &str) -> Option<String> {
    let text = std::fs::read_to_string(serial).ok()?;
    text.lines()
        .rev()
        .find(|l| l.contains(needle))
        .map(str::to_string)
}

fn rss(line: &str) -> serde_json::Value {
    json!({
        "containers": field(line, "containers"),
        "agent_rss_kb": field(line, "agent_rss_kb"),
        "agent_hwm_kb": field(line, "agent_hwm_kb"),
        "provision_rss_kb": field(line, "provision_rss_kb"),
        "provision_hwm_kb": field(line, "provision_hwm_kb"),
    })
}

pub async fn run(args: NodeBenchArgs) -> anyhow::Result<()> {
    let _ = std::fs::remove_dir_all(&args.work);
    std::fs::create_dir_all(&args.work)?;
    let work = args.work.canonicalize()?;
    let accel = qemu::pick_accel(&args.image, &work);
    let (mut reg, farm) = registry::with_farm(&args.bin_dir, &work, 0, "node-bench").await?;
    let images = crate::images::start().await?;
    let append = format!(
        "gridos.farm={farm} gridos.registry={} gridos.hostname=bench-node {}",
        reg.guest_url(),
        images.plain_http()
    );
    let mut machine = Machine::node(&args.image, &accel, &work, append, "console.log");
    machine.cpus = args.cpus;
    machine.memory_mib = args.memory_mib;
    let result = measure(&args, &reg, &machine, &images.busybox, &accel).await;
    if result.is_err() {
        eprintln!(
            "node-bench: last console lines ({}):\n{}",
            machine.serial.display(),
            qemu::tail(&machine.serial, 60)
        );
    }
    reg.stop()?;
    result
}

async fn measure(
    args: &NodeBenchArgs,
    reg: &registry::Registry,
    machine: &Machine,
    image: &str,
    accel: &str,
) -> anyhow::Result<()> {
    let mut guest = machine.boot()?;
    let (node, _) = registered(&mut guest, Duration::from_secs(900)).await?;
    eprintln!("node-bench: registered as node {node}; starts are being measured in the node");
    let line = guest
        .wait_line(&["startbench: result"], Duration::from_secs(1800))
        .await?;
    let starts: serde_json::Value = line
        .split_once("startbench: result ")
        .map(|(_, j)| j)
        .context("no result")
        .and_then(|j| serde_json::from_str(j).context("result JSON"))?;
    eprintln!("node-bench: {starts}");
    let idle = guest
        .wait_line(&["startbench: rss containers=0"], Duration::from_secs(60))
        .await?;

    let grid = new_twin(
        &args.bin_dir,
        reg,
        args.work.canonicalize()?.join("twin.key"),
    )?;
    let n = args.containers;
    let contract = rent(
        &grid,
        node,
        n as u64,
        &format!("{}MiB", 32 * n),
        &format!("{}MiB", 64 * n),
    )?;
    let workloads: String = (0..n)
        .map(|i| {
            small_container(&format!("c{i}"), image, "exec sleep 100000")
                .replace("mru: 64MiB", "mru: 32MiB")
        })
        .collect();
    let t0 = Instant::now();
    deploy(
        &grid,
        &machine.serial.with_file_name("app.yaml"),
        &workloads,
        &contract,
    )?;
    until_shown(
        &grid,
        &contract,
        Duration::from_secs(900),
        "every container running",
        |shown| {
            ensure!(shown["state"] != "failed", "the deployment failed: {shown}");
            Ok((0..n).all(|i| {
                workload(shown, &format!("c{i}")).is_some_and(|w| w["state"] == "running")
            }))
        },
    )
    .await?;
    let all_running_s = t0.elapsed().as_secs_f64();
    eprintln!("node-bench: {n} containers running after {all_running_s:.1} s");
    let needle = format!("startbench: rss containers={n} ");
    guest.wait_line(&[&needle], Duration::from_secs(60)).await?;
    // The line after the next 30 s of quiet: the agent has settled with every status sent.
    tokio::time::sleep(Duration::from_secs(35)).await;
    let busy = last_line(&guest.serial, &needle).context("no RSS line")?;
    let v = json!({
        "accel": accel,
        "cpus": args.cpus,
        "memory_mib": args.memory_mib,
        "starts": starts,
        "rss_idle": rss(&idle),
        "rss_with_containers": rss(&busy),
        "deploy_to_all_running_s": all_running_s,
    });
    std::fs::write(&args.out, serde_json::to_string_pretty(&v)?)?;
    println!("{}", serde_json::to_string_pretty(&v)?);
    guest.ctrl_alt_del()?;
    guest.wait(Duration::from_secs(120)).await?;
    Ok(())
}
