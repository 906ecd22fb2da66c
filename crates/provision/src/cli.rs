//! `gridos-provision`: the node's workload runtime as a service, driven by the agent over a
//! local socket (docs/deployments.md).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;

use crate::runtime::{Config, Runtime};
use crate::service::{self, Peers};

/// Runs twins' containers for the agent.
#[derive(Debug, Parser)]
#[command(name = "gridos-provision", version)]
struct Args {
    /// Images, container directories and logs (on the cache partition).
    #[arg(long, default_value = "/var/cache/gridos/workloads")]
    state_dir: PathBuf,
    /// The socket the agent connects to.
    #[arg(long, default_value = "/run/gridos/provision.sock")]
    socket: PathBuf,
    /// The group (name or number) allowed to connect besides root: the agent's.
    #[arg(long, default_value = "gridos-agent")]
    agent_group: String,
    /// The cgroup v2 directory containers' cgroups go under; `none` runs them without
    /// limits (only for hosts without cgroup v2).
    #[arg(long, default_value = "/sys/fs/cgroup/workloads")]
    cgroup: String,
    /// An OCI registry (`host:port`) spoken to without TLS; also taken from the kernel
    /// command line's `gridos.plain_http=`.
    #[arg(long)]
    plain_http: Vec<String>,
    /// The range twin networks are cut from (a /24 per twin); `none` leaves containers with
    /// loopback only and the node's network untouched.
    #[arg(long, default_value = "10.240.0.0/12")]
    twin_range: String,
    /// The release key's public half (64 hex digits): the only key a system extension (the
    /// VM runtime) may be signed with. Baked into the node's image; without it, or without a
    /// registry on the kernel command line, VMs come from `--qemu` or not at all.
    #[arg(long, default_value = "/etc/gridos/release.pub")]
    release_key: PathBuf,
    /// Where system extensions are cached (on the cache partition).
    #[arg(long, default_value = "/var/cache/gridos/extensions")]
    extension_cache: PathBuf,
    /// Where system extensions are mounted.
    #[arg(long, default_value = "/run/gridos/extensions")]
    extension_mounts: PathBuf,
    /// A QEMU binary to run VMs with instead of the VM-runtime extension (development hosts).
    #[arg(long)]
    qemu: Option<PathBuf>,
    /// Whether cloud-hypervisor runs VMs in QEMU's place when KVM runs guests: `auto` (when
    /// the VM-runtime extension or `PATH` has it), `off`, or the path of its binary.
    #[arg(long, default_value = "auto")]
    cloud_hypervisor: crate::vm::ChChoice,
    /// Seconds a VM has between the power button and the kill.
    #[arg(long, default_value_t = 60)]
    vm_stop_timeout: u64,
    /// Storage's pools (`/run/gridos/pools.json` on a node): volumes and VM disks go there.
    /// Without it they stay in the state folder.
    #[arg(long)]
    pools: Option<PathBuf>,
}

/// How this node runs VMs: a given QEMU, else the signed extension from the registry, else
/// none (each VM then fails with the reason).
fn vm_setup(args: &Args, registry: Option<String>) -> Option<crate::vm::VmSetup> {
    let stop_timeout = std::time::Duration::from_secs(args.vm_stop_timeout);
    if let Some(q) = &args.qemu {
        return Some(crate::vm::VmSetup {
            qemu: crate::vm::QemuSource::Host(q.clone()),
            accel: None,
            cloud_hypervisor: args.cloud_hypervisor.clone(),
            stop_timeout,
        });
    }
    let text = match std::fs::read_to_string(&args.release_key) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(path = %args.release_key.display(), error = %e, "no release key: this node runs no VMs");
            return None;
        }
    };
    let release = match gridtypes::parse_public_key(text.trim()) {
        Ok(k) => k,
        Err(e) => {
            tracing::error!(path = %args.release_key.display(), error = %e, "the release key is not a key: this node runs no VMs");
            return None;
        }
    };
    let Some(registry) = registry else {
        tracing::warn!("no registry on the kernel command line: this node runs no VMs");
        return None;
    };
    Some(crate::vm::VmSetup {
        qemu: crate::vm::QemuSource::Extension(Box::new(extension::Extensions {
            cache: args.extension_cache.clone(),
            mounts: args.extension_mounts.clone(),
            release,
            registry,
            losetup: "losetup".into(),
        })),
        accel: None,
        cloud_hypervisor: args.cloud_hypervisor.clone(),
        stop_timeout,
    })
}

/// The program's entry: `args` is its whole command line, program name first.
pub fn run<I, T>(args: I) -> anyhow::Result<()>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let args = Args::parse_from(args);
    svclog::init("info");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        // Within the service's pids.max: file work (unpacking, logs) waits for a thread.
        .max_blocking_threads(16)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(serve(args))
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let gid = group_id(&args.agent_group)?;
    load_modules();
    let mut cfg = Config::new(&args.state_dir);
    cfg.cgroup = (args.cgroup != "none").then(|| PathBuf::from(&args.cgroup));
    cfg.plain_http = args.plain_http.clone();
    cfg.net = match args.twin_range.as_str() {
        "none" => None,
        r => Some(crate::twinnet::Range::parse(r).map_err(anyhow::Error::msg)?),
    };
    let line = cmdline::read_line(std::path::Path::new(cmdline::NODE_CMDLINE));
    let node = cmdline::parse(&line).0;
    cfg.plain_http.extend(node.plain_http);
    cfg.vm = vm_setup(&args, node.registry.clone());
    cfg.pools = args.pools.clone();
    let runtime = tokio::task::spawn_blocking(move || Runtime::open(cfg))
        .await
        .context("opening the runtime")??;
    let runtime = Arc::new(runtime);
    let listener = bind(&args.socket, gid)?;
    let instance = hex::encode(rand::random::<[u8; 8]>());
    tracing::info!(socket = %args.socket.display(), "provision service ready");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("SIGTERM handler")?;
    service::serve(
        listener,
        runtime.clone(),
        Peers {
            gid,
            idle: service::IDLE,
        },
        instance,
        async {
            term.recv().await;
        },
    )
    .await;
    tracing::info!("stopping every container");
    runtime.shutdown().await;
    let _ = std::fs::remove_file(&args.socket);
    Ok(())
}

/// Loads overlayfs and what twin networks need (bridges, veths, nf_tables with NAT and
/// connection tracking): no device asks for them, so init's coldplug does not, and the kernel
/// has no `modprobe` to call on a node. A kernel with them built in, or a host, needs nothing.
fn load_modules() {
    let modules = [
        "overlay",
        "bridge",
        "veth",
        "nf_tables",
        "nft_chain_nat",
        "nft_masq",
        "nft_ct",
        // VMs: QEMU's taps, the runtime extension on a loop device
        "tun",
        "loop",
        "squashfs",
    ];
    for module in modules {
        match kmod::load_module(module) {
            Ok(loaded) if !loaded.is_empty() => tracing::info!(?loaded, "loaded modules"),
            Ok(_) => {}
            Err(e) => tracing::warn!(
                module,
                error = &e as &dyn std::error::Error,
                "cannot load module; containers may not start"
            ),
        }
    }
}

/// Binds the socket, readable and writable by root and `gid` only.
fn bind(path: &Path, gid: u32) -> anyhow::Result<tokio::net::UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // A socket left by a previous run refuses the bind.
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing the old {}", path.display()))
        }
        _ => {}
    }
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("binding {}", path.display()))?;
    std::os::unix::fs::chown(path, Some(0), Some(gid))
        .with_context(|| format!("giving {} to group {gid}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    Ok(listener)
}

/// A group's id from its number or its name in /etc/group.
fn group_id(group: &str) -> anyhow::Result<u32> {
    if let Ok(gid) = group.parse() {
        return Ok(gid);
    }
    let groups = std::fs::read_to_string("/etc/group").context("reading /etc/group")?;
    groups
        .lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            Some((f.next()?, f.nth(1)?))
        })
        .find(|(name, _)| *name == group)
        .and_then(|(_, gid)| gid.parse().ok())
        .with_context(|| format!("no group {group:?} in /etc/group"))
}
