//! `gridos-baseline-init`: the floor the real image's boot time is measured against.
//!
//! A static PID 1 that does only what registration strictly needs — mount, load the NIC
//! driver, DHCP (with gridnet, the code the real image runs), one signed `POST /api/v1/nodes`
//! — then powers off. No supervisor, no services, no storage, no persistent key.

use std::path::Path;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use gridtypes::{Envelope, NodeRegistration, Payload, Resources, NONCE_LEN};
use nix::mount::{mount, MsFlags};
use rand::RngCore;

/// Where gridnet writes `network.json`; only read back through `gridnet::state::is_ready`.
const RUN_DIR: &str = "/run/gridos";
/// How long each wait (interface, DHCP, registry) may take before we give up and power off.
const WAIT: Duration = Duration::from_secs(60);
/// Polling interval for readiness: short, so the baseline does not add its own latency.
const POLL: Duration = Duration::from_millis(10);
/// Pause between attempts while the registry refuses connections.
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
    mount_early();
    let cmdline = std::fs::read_to_string("/proc/cmdline")
        .map_err(|e| format!("reading /proc/cmdline: {e}"))?;
    let (settings, warnings) = gridinit::cmdline::parse(&cmdline);
    for w in warnings {
        tracing::warn!("kernel command line: {w}");
    }
    let registry = settings
        .registry
        .ok_or("no gridos.registry= on the command line")?;
    let farm = settings.farm.ok_or("no gridos.farm= on the command line")?;

    // virtio_pci first so the device exists when virtio_net binds; built-in means nothing to do.
    for module in ["virtio_pci", "virtio_net"] {
        match gridinit::kmod::load_module(module) {
            Ok(loaded) => tracing::info!(module, ?loaded, "module ready"),
            Err(e) => tracing::warn!(module, "module not loaded: {e}"),
        }
    }
    let iface = wait_for(WAIT, || {
        gridinit::boot::net_interfaces()
            .into_iter()
            .find(|n| n != "lo")
    })
    .ok_or("no network interface appeared")?;
    tracing::info!(%iface, "network interface present");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the tokio runtime: {e}"))?;
    rt.block_on(online_and_register(&registry, farm))
}

/// Mounts what gridnet and the capacity read need; "already mounted" (EBUSY) is fine.
fn mount_early() {
    let nosuid_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    let mounts = [
        ("proc", "/proc", nosuid_nodev | MsFlags::MS_NOEXEC, None),
        ("sysfs", "/sys", nosuid_nodev | MsFlags::MS_NOEXEC, None),
        ("devtmpfs", "/dev", MsFlags::MS_NOSUID, Some("mode=0755")),
        ("tmpfs", "/run", nosuid_nodev, Some("mode=0755")),
    ];
    for (fstype, target, flags, data) in mounts {
        let _ = std::fs::create_dir_all(target);
        match mount(Some(fstype), target, Some(fstype), flags, data) {
            Ok(()) | Err(nix::Error::EBUSY) => {}
            Err(e) => tracing::error!("mount {fstype} on {target}: {e}"),
        }
    }
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

/// Runs gridnet's service in the background until a lease is bound, then registers once.
async fn online_and_register(registry: &str, farm: u32) -> Result<(), String> {
    let cfg = gridnet::service::Config {
        sys_net: "/sys/class/net".into(),
        proc_net: "/proc/sys/net".into(),
        // Nothing here resolves names (the registry URL is an address): keep /etc untouched.
        resolv_conf: Path::new(RUN_DIR).join("resolv.conf"),
        run_dir: RUN_DIR.into(),
        mode: gridnet::config::Mode::Dhcp,
        only: None,
    };
    let net = tokio::spawn(gridnet::service::run(cfg));
    let start = Instant::now();
    while !gridnet::state::is_ready(Path::new(RUN_DIR)) {
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
        virtualized: std::fs::read_to_string("/proc/cpuinfo")
            .is_ok_and(|c| c.contains(" hypervisor")),
        interfaces: Vec::new(),
        agent_version: Some(concat!("gridos-baseline-init ", env!("CARGO_PKG_VERSION")).into()),
        warnings: Vec::new(),
    };
    let id = register(registry, &key, &reg).await?;
    tracing::info!(node_id = id, farm, "baseline registered");
    Ok(())
}

/// CRU from the CPUs we may run on, MRU from MemTotal; disks and IPv4 are not probed here.
fn capacity() -> Resources {
    let cru = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let mru = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let line = m.lines().find(|l| l.starts_with("MemTotal:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(0, |kib| kib * 1024);
    Resources {
        cru,
        mru,
        ..Resources::default()
    }
}

/// One registration as the agent sends it, re-sealed per attempt (fresh nonce and time) and
/// retried only while the registry cannot be reached; returns the registry's node id.
async fn register(registry: &str, key: &SigningKey, reg: &NodeRegistration) -> Result<i64, String> {
    let url = format!("{}/api/v1/nodes", registry.trim_end_matches('/'));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| format!("building the HTTP client: {e}"))?;
    let start = Instant::now();
    loop {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let env = Envelope::seal(key, &Payload::RegisterNode(reg.clone()), now, nonce);
        let sent = http
            .post(&url)
            .header("content-type", "application/json")
            .body(env.to_json())
            .send()
            .await;
        match sent {
            Ok(resp) => {
                let status = resp.status();
                let body = resp.text().await.unwrap_or_default();
                let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                return match v["id"].as_i64() {
                    Some(id) if status.is_success() => Ok(id),
                    _ => Err(format!("{url}: HTTP {status}: {body}")),
                };
            }
            Err(e) if e.is_connect() && start.elapsed() < WAIT => {
                tracing::debug!("{url}: {e}; retrying");
                tokio::time::sleep(RETRY).await;
            }
            Err(e) => return Err(format!("{url}: {}", svclog::error_chain(&e))),
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
