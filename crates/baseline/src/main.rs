//! `gridos-baseline-init`: the floor the real image's boot time is measured against.
//!
//! A static PID 1 that does only what registration strictly needs — mount (init's early
//! mounts), load the NIC driver, DHCP (network), one signed `POST /api/v1/nodes` (the agent's
//! client), the same code the real image runs — then powers off. No supervisor, no services,
//! no storage, no persistent key.

use std::path::Path;
use std::time::{Duration, Instant};

use agent::client::{Client, Outcome};
use agent::probe::Probe;
use ed25519_dalek::SigningKey;
use gridtypes::{NodeRegistration, Resources};

/// Where network writes `network.json`; only read back through `network::state::is_ready`.
const RUN_DIR: &str = "/run/gridos";
/// How long each wait (interface, DHCP, registry) may take before we give up and power off.
const WAIT: Duration = Duration::from_secs(60);
/// Polling interval for readiness: short, so the baseline does not add its own latency.
const POLL: Duration = Duration::from_millis(10);
/// Pause between attempts while the registry cannot be reached.
const RETRY: Duration = Duration::from_millis(200);

fn main() {
    tracing_subscriber::fmt()
        .with_timer(svclog::BootClock)
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
    tracing::info!("baseline init started as PID 1");
    if let Err(e) = run() {
        tracing::error!("baseline failed: {e}");
    }
    power_off()
}

/// Everything between the first log line and power-off; any error ends the run early.
fn run() -> Result<(), String> {
    // The same early mounts as gridos's PID 1.
    for m in init::boot::mount_all() {
        if let Err(e) = m {
            tracing::error!(error = &e as &dyn std::error::Error, "early mount failed");
        }
    }
    let cmdline = std::fs::read_to_string("/proc/cmdline")
        .map_err(|e| format!("reading /proc/cmdline: {e}"))?;
    let (settings, warnings) = cmdline::parse(&cmdline);
    for w in warnings {
        tracing::warn!("kernel command line: {w}");
    }
    let registry = settings
        .registry
        .ok_or("no gridos.registry= on the command line")?;
    let farm = settings.farm.ok_or("no gridos.farm= on the command line")?;

    // virtio_pci first so the device exists when virtio_net binds; built-in means nothing to do.
    for module in ["virtio_pci", "virtio_net"] {
        match kmod::load_module(module) {
            Ok(loaded) => tracing::info!(module, ?loaded, "module ready"),
            Err(e) => tracing::warn!(
                module,
                error = &e as &dyn std::error::Error,
                "module not loaded"
            ),
        }
    }
    let iface = wait_for(WAIT, || {
        init::boot::net_interfaces().into_iter().find(|n| n != "lo")
    })
    .ok_or("no network interface appeared")?;
    tracing::info!(%iface, "network interface present");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the tokio runtime: {e}"))?;
    rt.block_on(online_and_register(&registry, farm))
}

/// Polls `f` every [`POLL`] until it yields a value or `limit` passes (blocking: before tokio).
fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(POLL);
    }
}

/// Runs network's service in the background until a lease is bound, then registers once.
async fn online_and_register(registry: &str, farm: u32) -> Result<(), String> {
    let cfg = network::service::Config {
        sys_net: "/sys/class/net".into(),
        proc_net: "/proc/sys/net".into(),
        // Nothing here resolves names (the registry URL is an address): keep /etc untouched.
        resolv_conf: Path::new(RUN_DIR).join("resolv.conf"),
        run_dir: RUN_DIR.into(),
        mode: network::config::Mode::Dhcp,
        only: None,
    };
    let net = tokio::spawn(network::service::run(cfg));
    let start = Instant::now();
    while !network::state::is_ready(Path::new(RUN_DIR)) {
        if net.is_finished() {
            return Err("the network service stopped before a lease was bound".into());
        }
        if start.elapsed() > WAIT {
            return Err("no DHCP lease within 60 s".into());
        }
        tokio::time::sleep(POLL).await;
    }
    tracing::info!("network ready");

    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let reg = NodeRegistration {
        farm_id: farm.into(),
        capacity: capacity(),
        serial: None,
        virtualized: Probe::default().virtualized(),
        interfaces: Vec::new(),
        agent_version: Some(concat!("gridos-baseline-init ", env!("CARGO_PKG_VERSION")).into()),
        box_key: None,
        warnings: Vec::new(),
    };
    let id = register(registry, key, &reg).await?;
    tracing::info!(node_id = id, farm, "baseline registered");
    Ok(())
}

/// CRU and MRU as the agent measures them; disks and IPv4 are not probed here.
fn capacity() -> Resources {
    let probe = Probe::default();
    Resources {
        cru: probe.cru().unwrap_or(1),
        mru: probe.mru().unwrap_or(0),
        ..Resources::default()
    }
}

/// One registration through the agent's own client, retried only while the registry cannot be
/// reached (each attempt is sealed anew: fresh nonce and time); returns the registry's node id.
async fn register(registry: &str, key: SigningKey, reg: &NodeRegistration) -> Result<i64, String> {
    let client = Client::new(registry, key, Duration::from_secs(10));
    let start = Instant::now();
    loop {
        match client.register(reg).await {
            Outcome::Accepted(id) => return Ok(id),
            Outcome::Unavailable(e) if start.elapsed() < WAIT => {
                tracing::debug!("{e}; retrying");
                tokio::time::sleep(RETRY).await;
            }
            Outcome::Unavailable(e) => return Err(e),
            Outcome::Throttled { retry_after } if start.elapsed() < WAIT => {
                tokio::time::sleep(retry_after.unwrap_or(RETRY)).await;
            }
            Outcome::Throttled { .. } => return Err("registry kept answering 429".into()),
            Outcome::Replay => return Err("registry answered replay to a fresh nonce".into()),
            Outcome::Refused {
                status,
                code,
                message,
            } => {
                return Err(format!(
                    "registry refused (HTTP {status} {code}): {message}"
                ))
            }
        }
    }
}

/// PID 1 must not exit (the kernel would panic): sync, power off, or sleep forever if refused.
fn power_off() -> ! {
    nix::unistd::sync();
    tracing::info!("powering off");
    let Err(e) = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    tracing::error!("poweroff refused: {e}; sleeping forever");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
