//! `gridos-network`: brings the node online (DHCP, IPv6 RA, or static) and keeps leases renewed.

use crate::config::{self, Mode};
use crate::service::{self, Config};
use anyhow::Context;
use clap::Parser;
use std::path::PathBuf;

/// Configures the node's network from the kernel command line and keeps it up.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Exit 0 if at least one link is configured, 1 otherwise; for the service `test:`.
    #[arg(long)]
    check: bool,
    /// Kernel command line to read `gridos.net` from.
    #[arg(long, default_value = cmdline::NODE_CMDLINE)]
    cmdline: PathBuf,
    /// Override `gridos.net` (`dhcp` or `<iface>:<addr>/<prefix>:<gateway>`).
    #[arg(long)]
    net: Option<String>,
    /// Only these links (comma-separated); virtual links such as veth are allowed then.
    #[arg(long, value_delimiter = ',')]
    iface: Option<Vec<String>>,
    /// Where DNS servers are written.
    #[arg(long, default_value = "/etc/resolv.conf")]
    resolv_conf: PathBuf,
    /// Where the state file `network.json` is written.
    #[arg(long, default_value = "/run/gridos")]
    run_dir: PathBuf,
    /// The sysfs network class directory.
    #[arg(long, default_value = "/sys/class/net")]
    sys_net: PathBuf,
    /// The procfs network sysctl directory.
    #[arg(long, default_value = "/proc/sys/net")]
    proc_net: PathBuf,
}

fn mode(args: &Args) -> Mode {
    let (mode, warning) = match &args.net {
        Some(v) if v == "dhcp" => (Mode::Dhcp, None),
        Some(v) => match config::parse_static(v) {
            Ok(s) => (Mode::Static(s), None),
            Err(e) => (
                Mode::Dhcp,
                Some(format!("bad static config --net: {e}; using DHCP")),
            ),
        },
        None => config::from_cmdline(&cmdline::read_line(&args.cmdline)),
    };
    if let Some(w) = warning {
        tracing::error!("{w}");
    }
    mode
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
        std::process::exit(if crate::state::is_ready(&args.run_dir) {
            0
        } else {
            1
        });
    }
    let cfg = Config {
        sys_net: args.sys_net.clone(),
        proc_net: args.proc_net.clone(),
        resolv_conf: args.resolv_conf.clone(),
        run_dir: args.run_dir.clone(),
        mode: mode(&args),
        only: args.iface.clone(),
    };
    tracing::info!(mode = ?cfg.mode, "network starting");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(service::run(cfg)).context("network service")
}
