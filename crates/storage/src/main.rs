//! `gridos-storage`: finds disks and prepares the cache partition, then exits (a oneshot service).

use anyhow::Context;
use clap::Parser;
use gridinit::cmdline::WipePolicy;
use gridstorage::apply::{self, Config};
use std::path::PathBuf;

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
    #[arg(long, default_value = "/proc/cmdline")]
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
}

fn policy(args: &Args) -> anyhow::Result<WipePolicy> {
    if let Some(w) = &args.wipe {
        return match w.as_str() {
            "none" => Ok(WipePolicy::None),
            "empty" => Ok(WipePolicy::Empty),
            "all" => Ok(WipePolicy::All),
            other => anyhow::bail!("--wipe {other:?}: expected none|empty|all"),
        };
    }
    let line = std::fs::read_to_string(&args.cmdline).unwrap_or_default();
    let (settings, warnings) = gridinit::cmdline::parse(&line);
    for w in warnings.iter().filter(|w| w.key == "gridos.wipe") {
        tracing::warn!("{w}");
    }
    Ok(settings.wipe)
}

pub fn main() -> anyhow::Result<()> {
    svclog::init("info");
    let args = Args::parse();
    if args.check {
        let ready = args.run_dir.join(gridstorage::state::STATE_FILE).exists();
        std::process::exit(if ready { 0 } else { 1 });
    }
    let cfg = Config {
        sys_block: args.sys_block.clone(),
        dev: args.dev.clone(),
        mountpoint: args.mountpoint.clone(),
        run_dir: args.run_dir.clone(),
        policy: policy(&args)?,
        only: args.only_devices.clone(),
    };
    tracing::info!(policy = ?cfg.policy, "storage starting");
    let state = apply::run(&cfg).context("preparing the cache")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&state)?);
    }
    Ok(())
}
