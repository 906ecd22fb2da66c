//! `gridos-storage`: finds disks and prepares the cache partition, then exits (a oneshot service).

use crate::apply::{self, Config};
use anyhow::Context;
use clap::Parser;
use cmdline::WipePolicy;
use disks::settle::UeventSocket;
use std::path::PathBuf;
use std::time::Duration;

/// Finds the node's disks, classifies them, and mounts the gridos cache partition.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Exit 0 if storage has finished (state file present), 1 otherwise; for the service `test:`.
    #[arg(long)]
    check: bool,
    /// Print the resulting state as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Kernel command line to read `gridos.wipe` from.
    #[arg(long, default_value = cmdline::NODE_CMDLINE)]
    cmdline: PathBuf,
    /// Override `gridos.wipe` (none|empty|all).
    #[arg(long)]
    wipe: Option<String>,
    /// Where the cache is mounted.
    #[arg(long, default_value = "/var/cache/gridos")]
    mountpoint: PathBuf,
    /// Where the state file and the tmpfs marker are written.
    #[arg(long, default_value = "/run/gridos")]
    run_dir: PathBuf,
    /// The sysfs block directory.
    #[arg(long, default_value = "/sys/block")]
    sys_block: PathBuf,
    /// The device directory.
    #[arg(long, default_value = "/dev")]
    dev: PathBuf,
    /// Tests only: use exactly these disks (comma-separated, loop devices allowed).
    #[arg(long, value_delimiter = ',')]
    only_devices: Option<Vec<String>>,
    /// A disk never used nor counted (the boot medium); repeatable.
    #[arg(long = "skip-disk", env = "GRIDOS_BOOT_DISK", value_delimiter = ',')]
    skip_disks: Vec<String>,
    /// Where the disk measurements are published for the agent.
    #[arg(long, default_value = disks::measured::MEASURED_FILE)]
    measured: PathBuf,
    /// Where the pools are published for the agent and provision.
    #[arg(long, default_value = disks::pools::POOLS_FILE)]
    pools: PathBuf,
    /// Where pools other than the cache are mounted.
    #[arg(long, default_value = disks::pools::POOLS_DIR)]
    pools_dir: PathBuf,
    /// `/proc/modules`, to see drivers still initialising.
    #[arg(long, default_value = "/proc/modules")]
    proc_modules: PathBuf,
    /// Quiet period (ms) without device activity before deciding; 0 decides at once.
    #[arg(long, default_value_t = 2000)]
    settle_quiet_ms: u64,
    /// Longest wait (ms) for the devices to settle.
    #[arg(long, default_value_t = 30000)]
    settle_max_ms: u64,
    /// Keep running after the cache is ready: pick up disks added later (the service mode).
    #[arg(long)]
    watch: bool,
}

/// The wipe policy (`--wipe` over `gridos.wipe`) and `gridos.cache_on_stick`.
fn policy(args: &Args) -> anyhow::Result<(WipePolicy, bool)> {
    let line = cmdline::read_line(&args.cmdline);
    let (settings, warnings) = cmdline::parse(&line);
    for w in warnings
        .iter()
        .filter(|w| w.key == "gridos.wipe" || w.key == "gridos.cache_on_stick")
    {
        tracing::warn!("{w}");
    }
    let wipe = match args.wipe.as_deref() {
        None => settings.wipe,
        Some("none") => WipePolicy::None,
        Some("empty") => WipePolicy::Empty,
        Some("all") => WipePolicy::All,
        Some(other) => anyhow::bail!("--wipe {other:?}: expected none|empty|all"),
    };
    Ok((wipe, settings.cache_on_stick))
}

/// The program's entry: `args` is its whole command line, program name first.
pub fn run<I, T>(args: I) -> anyhow::Result<()>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    svclog::init("info");
    let args = Args::parse_from(args);
    if args.check {
        let ready = args.run_dir.join(crate::state::STATE_FILE).exists();
        std::process::exit(if ready { 0 } else { 1 });
    }
    let (wipe, stick_cache) = policy(&args)?;
    let cfg = Config {
        sys_block: args.sys_block.clone(),
        dev: args.dev.clone(),
        mountpoint: args.mountpoint.clone(),
        run_dir: args.run_dir.clone(),
        policy: wipe,
        stick_cache,
        only: args.only_devices.clone(),
        boot: args.skip_disks.clone(),
        measured: args.measured.clone(),
        pools_file: args.pools.clone(),
        pools_dir: args.pools_dir.clone(),
        proc_modules: args.proc_modules.clone(),
        settle: (args.settle_quiet_ms > 0).then(|| {
            (
                Duration::from_millis(args.settle_quiet_ms),
                Duration::from_millis(args.settle_max_ms.max(args.settle_quiet_ms)),
            )
        }),
    };
    tracing::info!(policy = ?cfg.policy, "storage starting");
    // Opened before the first look at the disks, so no device event falls in between.
    let events = match UeventSocket::open() {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(
                error = &e as &dyn std::error::Error,
                "no uevent socket: settling watches /sys/block only"
            );
            None
        }
    };
    let state = apply::run(&cfg, events.as_ref()).context("preparing the cache")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&state)?);
    }
    if args.watch {
        let Some(events) = events else {
            anyhow::bail!("--watch needs the uevent socket");
        };
        apply::watch(&cfg, state, &events).context("watching for new disks")?;
    }
    Ok(())
}
