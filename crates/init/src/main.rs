//! `/init`: PID 1 of a gridos node, or (`--supervisor-only`) the supervisor as an ordinary process.

// PID 1 never panics on purpose.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use init::args::{self, Args};
use init::config::{self, Loaded};
use init::control::{self, PowerAction};
use init::reaper::Reaper;
use init::supervisor::{Options, Supervisor};
use init::{boot, logging, power, uevent};
use tokio::sync::mpsc;

mod nss_stubs;

/// Where `log: file` services write in the booted system.
const LOG_DIR: &str = "/var/log/gridos";

fn main() -> anyhow::Result<()> {
    if std::process::id() == 1 {
        pid1();
    }
    let Some(args) = Args::parse(std::env::args().skip(1))? else {
        println!("{}", args::USAGE);
        return Ok(());
    };
    if !args.supervisor_only {
        anyhow::bail!("not PID 1: use --supervisor-only to run the supervisor as a process");
    }
    supervisor_only(args)
}

fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        tracing::error!(panic = %info, "panic caught; init keeps running");
    }));
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// Stops, reaps and powers off or reboots; never returns.
///
/// Everything PID 1 does, from the first mount to the power-off, runs inside one
/// `catch_unwind`: a panic anywhere (mounts, command line, logging, hostname, the supervisor)
/// is logged and PID 1 goes on reaping instead of exiting, which would panic the kernel.
fn pid1() -> ! {
    match std::panic::catch_unwind(pid1_main) {
        Ok(Ok(())) => tracing::error!("reboot(2) returned; init idles"),
        Ok(Err(e)) => tracing::error!(error = %format!("{e:#}"), "init failed; idling"),
        Err(_) => tracing::error!("PID 1 panicked; idling"),
    }
    // PID 1 must never exit: keep reaping until the machine is switched off.
    loop {
        match nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(-1), None) {
            Ok(_) => {}
            Err(_) => std::thread::sleep(Duration::from_secs(1)),
        }
    }
}

fn pid1_main() -> anyhow::Result<()> {
    let t0 = logging::boot_seconds();
    // The kernel starts init with almost no environment; services need a PATH.
    // Still single-threaded here, so changing the environment is sound.
    if std::env::var_os("PATH").is_none() {
        std::env::set_var("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    }
    boot::ensure_console();
    // Before anything is mounted in the tree: the copy then holds the whole system.
    let t_move = logging::boot_seconds();
    let moved = match init::rootfs::on_rootfs() {
        Ok(true) => Some(init::rootfs::leave_rootfs()),
        Ok(false) => None,
        Err(e) => Some(Err(e)),
    };
    let t_move = logging::boot_seconds() - t_move;
    let mounts = boot::mount_all();
    logging::start_kmsg();
    let line = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let (settings, warnings) = cmdline::parse(&line);
    logging::init(settings.log.as_tracing());
    install_panic_hook();
    tracing::info!(
        started_at = t0,
        version = env!("CARGO_PKG_VERSION"),
        "gridos init started as PID 1"
    );
    match moved {
        Some(Ok(m)) => tracing::info!(
            entries = m.entries,
            bytes = m.bytes,
            left_behind = m.left_behind,
            ms = (t_move * 1000.0).round(),
            "root moved from the initramfs' rootfs to a tmpfs"
        ),
        Some(Err(e)) => tracing::error!(
            error = &e as &dyn std::error::Error,
            "root left on the initramfs' rootfs: containers cannot start (pivot_root refuses it)"
        ),
        None => {}
    }
    for m in mounts {
        match m {
            Ok(target) => tracing::info!(target, "mounted"),
            Err(e) => tracing::error!(error = &e as &dyn std::error::Error, "mount failed"),
        }
    }
    for w in warnings {
        tracing::warn!("kernel command line: {w}");
    }
    if boot::image_damaged(&line, Path::new(boot::IMAGE_SEAL)) {
        // Nothing can run from a half-unpacked image; loading it again is the only cure (a
        // network boot downloads it again, a stick may have been pulled too early).
        tracing::error!(
            "THE BOOT IMAGE IS DAMAGED: the initramfs ended before its last file ({}); the kernel \
             said why above (\"Initramfs unpacking failed\"). Rebooting in 10 s to load it again; \
             if this repeats, rebuild or re-download the image and write the stick again",
            boot::IMAGE_SEAL
        );
        std::thread::sleep(Duration::from_secs(10));
        nix::unistd::sync();
        let e = power::finish(PowerAction::Reboot);
        tracing::error!(error = %e, "reboot refused; going on with the damaged image");
    }
    tracing::info!(farm = ?settings.farm, registry = ?settings.registry, net = ?settings.net, wipe = ?settings.wipe, "settings");
    match boot::enable_cgroup_controllers(Path::new("/sys/fs/cgroup")) {
        Ok(c) => tracing::info!(controllers = %c, "cgroup2 controllers enabled for children"),
        Err(e) => tracing::warn!(error = &e as &dyn std::error::Error, "cgroup2 controllers"),
    }
    match boot::set_hostname(&settings.hostname) {
        Ok(()) => tracing::info!(hostname = %settings.hostname, "hostname set"),
        Err(e) => tracing::warn!(error = &e as &dyn std::error::Error, "hostname"),
    }
    match boot::loopback_up() {
        Ok(()) => tracing::info!("loopback up"),
        Err(e) => tracing::warn!(error = &e as &dyn std::error::Error, "loopback"),
    }
    // Ctrl-Alt-Del sends SIGINT to PID 1 instead of rebooting at once.
    if let Err(e) = nix::sys::reboot::set_cad_enabled(false) {
        tracing::warn!(
            error = &e as &dyn std::error::Error,
            "cannot route Ctrl-Alt-Del to init"
        );
    }
    let rt = runtime().context("cannot build the runtime")?;
    rt.block_on(pid1_async())
}

fn load_services(dir: &Path) -> Loaded {
    match config::load_dir(dir) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = &e as &dyn std::error::Error, "no services");
            Loaded::default()
        }
    }
}

/// Forwards SIGTERM/SIGINT (reboot, or stop in supervisor-only mode), SIGPWR/SIGUSR2 (poweroff), SIGUSR1 (halt).
fn watch_signals(tx: mpsc::Sender<PowerAction>, pid1: bool) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let on_term = if pid1 {
        PowerAction::Reboot
    } else {
        PowerAction::Halt
    };
    let table = [
        (SignalKind::terminate(), on_term),
        (SignalKind::interrupt(), on_term),
        (SignalKind::from_raw(libc::SIGPWR), PowerAction::Poweroff),
        (SignalKind::user_defined2(), PowerAction::Poweroff),
        (SignalKind::user_defined1(), PowerAction::Halt),
    ];
    for (kind, action) in table {
        let mut s = signal(kind).context("install signal handler")?;
        let tx = tx.clone();
        tokio::spawn(async move {
            while s.recv().await.is_some() {
                tracing::info!(?action, "signal received");
                let _ = tx.send(action).await;
            }
        });
    }
    Ok(())
}

/// Modules no device asks for but a service will need (btrfs for the cache partition).
const MODULES_LOAD: &str = "/etc/gridos/modules-load";
/// Threads loading drivers at once; they mostly wait for device probes in the kernel.
const COLDPLUG_WORKERS: usize = 4;

/// Loads the modules of `list` on a thread of their own, not waited for: btrfs takes most of a
/// second to initialise (RAID6 self-benchmark) and would otherwise sit on the boot's critical
/// path when the storage service asks for it. A service loading the same module meanwhile
/// just waits in the kernel for this load to finish.
fn preload(list: &Path) {
    let Ok(text) = std::fs::read_to_string(list) else {
        return;
    };
    let modules = kmod::parse_load_list(&text);
    if modules.is_empty() {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("modules-load".into())
        .spawn(move || {
            for m in modules {
                match kmod::load_module(&m) {
                    Ok(loaded) => tracing::info!(module = %m, ?loaded, "preloaded module"),
                    Err(e) => tracing::warn!(module = %m, error = &e as &dyn std::error::Error, "preload failed"),
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(
            error = &e as &dyn std::error::Error,
            "no modules-load thread"
        );
    }
}

async fn drivers() {
    let started = std::time::Instant::now();
    let root = PathBuf::from("/lib/modules").join(boot::kernel_release());
    let index = match kmod::ModuleIndex::load(&root) {
        Ok(i) => i,
        Err(e) => {
            tracing::warn!(
                error = &e as &dyn std::error::Error,
                "no module index; drivers are not loaded"
            );
            return;
        }
    };
    preload(Path::new(MODULES_LOAD));
    let loader = Arc::new(Mutex::new(kmod::Loader::new(index)));
    match uevent::open() {
        Ok(fd) => {
            let l = Arc::clone(&loader);
            let spawned = std::thread::Builder::new()
                .name("uevent".into())
                .spawn(move || uevent::listen(fd, l));
            if let Err(e) = spawned {
                tracing::warn!(error = &e as &dyn std::error::Error, "no uevent thread");
            }
        }
        Err(e) => tracing::warn!(
            error = &e as &dyn std::error::Error,
            "no uevent socket; hot-plug disabled"
        ),
    }
    let l = Arc::clone(&loader);
    let loaded = tokio::task::spawn_blocking(move || {
        kmod::coldplug(&l, Path::new("/sys/devices"), COLDPLUG_WORKERS)
    })
    .await
    .unwrap_or_default();
    tracing::info!(
        modules = loaded.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "coldplug done"
    );
    // Give freshly bound drivers a moment to register their devices.
    for _ in 0..20 {
        if boot::net_interfaces().len() > 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tracing::info!(interfaces = ?boot::net_interfaces(), "network interfaces");
}

async fn pid1_async() -> anyhow::Result<()> {
    let reaper = Arc::new(Reaper::new());
    tokio::spawn(Arc::clone(&reaper).run());
    drivers().await;
    let sup = Supervisor::new(
        load_services(Path::new(args::SERVICES_DIR)),
        Arc::clone(&reaper),
        Options {
            log_dir: Some(PathBuf::from(LOG_DIR)),
            backoff: None,
            cgroup_root: Some(PathBuf::from("/sys/fs/cgroup")),
            etc: None,
        },
    );
    let (tx, mut rx) = mpsc::channel(4);
    watch_signals(tx.clone(), true)?;
    if let Err(e) = control::serve(Path::new(control::DEFAULT_SOCKET), Arc::clone(&sup), tx) {
        tracing::error!(
            error = &e as &dyn std::error::Error,
            "control socket unavailable"
        );
    }
    sup.start();
    logging::stop_kmsg();
    let action = rx.recv().await.unwrap_or(PowerAction::Halt);
    tracing::info!(?action, "shutting down");
    sup.shutdown().await;
    power::kill_all(&reaper, Duration::from_secs(3)).await;
    let (unmounted, read_only) = power::unmount_all();
    tracing::info!(unmounted, read_only, "filesystems synced and unmounted");
    let e = power::finish(action);
    tracing::error!(error = &e as &dyn std::error::Error, "reboot(2) failed");
    Ok(())
}

fn supervisor_only(args: Args) -> anyhow::Result<()> {
    logging::init(args.log_level);
    install_panic_hook();
    nix::sys::prctl::set_child_subreaper(true).context("PR_SET_CHILD_SUBREAPER")?;
    let rt = runtime().context("build the runtime")?;
    rt.block_on(async move {
        let reaper = Arc::new(Reaper::new());
        tokio::spawn(Arc::clone(&reaper).run());
        let loaded = config::load_dir(&args.services).context("load services")?;
        let sup = Supervisor::new(
            loaded,
            Arc::clone(&reaper),
            Options {
                log_dir: args.log_dir.clone(),
                backoff: None,
                cgroup_root: None,
                etc: None,
            },
        );
        let (tx, mut rx) = mpsc::channel(4);
        watch_signals(tx.clone(), false)?;
        sup.start();
        control::serve(&args.socket, Arc::clone(&sup), tx)?;
        let action = rx.recv().await.unwrap_or(PowerAction::Halt);
        tracing::info!(?action, "stopping (supervisor-only: no reboot)");
        sup.shutdown().await;
        let _ = std::fs::remove_file(&args.socket);
        Ok(())
    })
}
