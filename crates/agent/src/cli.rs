//! `gridos-agent`: the capacity agent, run by PID 1 as the `agent` service.
//!
//! Settings come from the kernel command line (`gridos.farm=`, `gridos.registry=`,
//! `gridos.log=`), parsed by the same code PID 1 uses; flags and environment override them.

use std::path::PathBuf;
use std::time::Duration;

use crate::probe::Probe;
use crate::{Config, Status};
use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use disks::Kind;

#[derive(Debug, Parser)]
#[command(name = "gridos-agent", version, about = "The gridos capacity agent")]
struct Args {
    /// Kernel command line to read `gridos.*` settings from.
    #[arg(long, default_value = cmdline::NODE_CMDLINE)]
    cmdline: PathBuf,
    /// Registry base URL (overrides `gridos.registry=`).
    #[arg(long, env = "GRIDOS_REGISTRY")]
    registry: Option<String>,
    /// Farm id (overrides `gridos.farm=`).
    #[arg(long, env = "GRIDOS_FARM")]
    farm: Option<u64>,
    /// Where the node key and the report queue live (the cache partition).
    #[arg(long, env = "GRIDOS_STATE_DIR", default_value = "/var/cache/gridos")]
    state_dir: PathBuf,
    /// The provision service's socket; without it the node runs no workloads and tells
    /// twins so.
    #[arg(long)]
    provision_socket: Option<PathBuf>,
    /// Seconds between uptime reports (overrides `gridos.report_interval=`; default 2400).
    #[arg(long)]
    uptime_interval: Option<u64>,
    /// Seconds between capacity probes; a change is reported at once.
    #[arg(long, default_value_t = 300)]
    probe_interval: u64,
    /// Longest wait (seconds) between retries while the registry is unreachable.
    #[arg(long, default_value_t = 60)]
    retry_max: u64,
    /// Wait (seconds) between retries while the registry refuses the registration.
    #[arg(long, default_value_t = 300)]
    refused_retry: u64,
    /// A disk never counted (the boot medium); repeatable.
    #[arg(long = "skip-disk", env = "GRIDOS_BOOT_DISK", value_delimiter = ',')]
    skip_disks: Vec<String>,
    /// sysfs root (tests point it at a fake tree).
    #[arg(long, default_value = "/sys", hide = true)]
    sysfs: PathBuf,
    /// procfs root.
    #[arg(long, default_value = "/proc", hide = true)]
    procfs: PathBuf,
    /// The storage service's disk measurements.
    #[arg(long, default_value = disks::measured::MEASURED_FILE, hide = true)]
    measured: PathBuf,
    /// The storage service's pools.
    #[arg(long, default_value = disks::pools::POOLS_FILE, hide = true)]
    pools: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Register and report until SIGTERM (the default).
    Run,
    /// Probe the hardware once, print it and exit.
    Probe {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn probe_of(args: &Args) -> Probe {
    Probe {
        sys: args.sysfs.clone(),
        proc: args.procfs.clone(),
        measured: args.measured.clone(),
        pools: args.pools.clone(),
        skip_disks: args.skip_disks.clone(),
        ..Probe::default()
    }
}

/// The program's entry: `args` is its whole command line, program name first.
pub fn run<I, T>(args: I) -> anyhow::Result<()>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let args = Args::parse_from(args);
    let line = cmdline::read_line(&args.cmdline);
    let (settings, warnings) = cmdline::parse(&line);
    svclog::init(&settings.log.as_tracing().to_string().to_lowercase());
    for w in &warnings {
        tracing::warn!("kernel command line: {w}");
    }
    let probe = probe_of(&args);
    if let Some(Command::Probe { json }) = args.command {
        let hw = probe.hardware().context("probing the hardware")?;
        if json {
            println!("{}", serde_json::to_string_pretty(&hw)?);
        } else {
            let c = &hw.capacity;
            let u = c.farming_units();
            println!(
                "cru {}  mru {:.2} GiB  sru {:.2} GiB  hru {:.2} GiB  cu {:.3}  su {:.3}  virtualized {}  serial {}",
                c.cru, c.mru_gib(), c.sru_gib(), c.hru_gib(), u.cu, u.su, hw.virtualized,
                hw.serial.as_deref().unwrap_or("-")
            );
            for d in &hw.disks {
                let kind = if d.kind == Kind::Ssd { "SSD" } else { "HDD" };
                println!(
                    "disk {} {} bytes {kind} (rotational {:?}, seek {:?} µs)",
                    d.disk.name, d.disk.size_bytes, d.disk.rotational, d.latency_us
                );
            }
            for i in &hw.interfaces {
                println!(
                    "iface {} {} {}",
                    i.name,
                    i.mac.as_deref().unwrap_or("-"),
                    i.ips.join(" ")
                );
            }
        }
        return Ok(());
    }
    let registry = match args.registry.clone().or(settings.registry) {
        Some(r) => r,
        None => bail!(
            "no registry: set gridos.registry=<url> on the kernel command line or pass --registry"
        ),
    };
    let farm = match args.farm.or(settings.farm.map(u64::from)) {
        Some(f) if f > 0 => f,
        _ => bail!("no farm: set gridos.farm=<id> on the kernel command line or pass --farm"),
    };
    let mut cfg = Config::new(registry, farm, args.state_dir.clone());
    if let Some(secs) = args
        .uptime_interval
        .or(settings.report_interval.map(u64::from))
    {
        cfg.uptime_interval = Duration::from_secs(secs.max(1));
    }
    cfg.probe_interval = Duration::from_secs(args.probe_interval.max(1));
    // Waiting longer than one report interval between retries would let the queue grow
    // behind a registry that is already back.
    cfg.retry_max = Duration::from_secs(args.retry_max.max(1)).min(cfg.uptime_interval);
    cfg.refused_retry = Duration::from_secs(args.refused_retry.max(1));
    cfg.probe = probe;
    cfg.provision_socket = args.provision_socket.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: planned shutdown"),
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
            }
        };
        let (tx, _rx) = tokio::sync::watch::channel(Status::default());
        crate::run(cfg, shutdown, tx).await.context("agent failed")
    })
}
