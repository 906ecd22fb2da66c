//! `gridos-bootcfg`: the `bootcfg` oneshot service. It always exits 0 with the node's
//! command line written: a missing stick, an unreadable file or a bad line is said on the
//! console, and the built-in settings stand.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Parser;
use nix::mount::{MntFlags, MsFlags};

use crate::{find_partition, merge, parse, CONFIG_FILE, MAX_CONFIG_BYTES, MEDIA_WORD};

/// Applies the boot stick's gridos.cfg to the kernel command line for the node's services.
#[derive(Debug, Parser)]
#[command(name = "gridos-bootcfg", version)]
struct Args {
    /// The kernel's command line.
    #[arg(long, default_value = "/proc/cmdline")]
    cmdline: PathBuf,
    /// Where the node's command line goes.
    #[arg(long, default_value = cmdline::NODE_CMDLINE)]
    out: PathBuf,
    /// Block devices with their uevent files.
    #[arg(long, default_value = "/sys/class/block")]
    sys_class_block: PathBuf,
    /// Device nodes.
    #[arg(long, default_value = "/dev")]
    dev: PathBuf,
    /// Where the boot partition is mounted (read-only) while the file is read.
    #[arg(long, default_value = "/run/gridos/bootmedia")]
    mountpoint: PathBuf,
    /// How long to wait for the stick's partition to appear (USB enumerates late).
    #[arg(long, default_value_t = 20)]
    wait_secs: u64,
    /// Read this settings file instead of the stick's (tests).
    #[arg(long)]
    config: Option<PathBuf>,
}

/// The program's entry: `args` is its whole command line, program name first.
pub fn run<I, T>(args: I) -> anyhow::Result<()>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let args = Args::parse_from(args);
    svclog::init("info");
    let line = std::fs::read_to_string(&args.cmdline).unwrap_or_default();
    let from_media = line.split_whitespace().any(|w| w == MEDIA_WORD);
    let settings = match (&args.config, from_media) {
        (Some(file), _) => read_bounded(file).map(|b| (b, file.display().to_string())),
        (None, true) => from_stick(&args),
        (None, false) => {
            tracing::info!("not booted from a gridos USB stick: the command line's settings stand");
            None
        }
    };
    let mut words = Vec::new();
    if let Some((bytes, source)) = settings {
        let parsed = parse(&bytes);
        for p in &parsed.problems {
            tracing::error!(file = %source, "{CONFIG_FILE}: {p}; the built-in setting stands");
        }
        if parsed.words.is_empty() {
            tracing::info!(file = %source, "{CONFIG_FILE}: no settings to apply");
        } else {
            tracing::info!(file = %source, settings = %parsed.words.join(" "), "{CONFIG_FILE} applied over the built-in settings");
        }
        words = parsed.words;
    }
    // PID 1 set the hostname from the kernel's command line before the stick was readable.
    if let Some(name) = words
        .iter()
        .rev()
        .find_map(|w| w.strip_prefix("gridos.hostname="))
    {
        match nix::unistd::sethostname(name) {
            Ok(()) => tracing::info!(hostname = name, "hostname set from gridos.cfg"),
            Err(e) => {
                tracing::error!(hostname = name, error = %e, "cannot set the hostname from gridos.cfg")
            }
        }
    }
    let node_line = merge(&line, &words);
    if let Some(dir) = args.out.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    // The services fall back to /proc/cmdline if this fails (cmdline::read_line): the file's
    // settings are lost, and said so, but the node still boots.
    if let Err(e) = atomicfile::write(&args.out, node_line.as_bytes(), 0o644) {
        tracing::error!(path = %args.out.display(), error = %e, "cannot write the node's command line; services use the kernel's");
    }
    Ok(())
}

/// A file's bytes, at most one more than [`MAX_CONFIG_BYTES`] (so an oversized file is
/// recognised without reading all of it).
fn read_bounded(path: &Path) -> Option<Vec<u8>> {
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "cannot read {CONFIG_FILE}; the built-in settings stand");
            return None;
        }
    };
    let mut bytes = Vec::new();
    match f.take(MAX_CONFIG_BYTES + 1).read_to_end(&mut bytes) {
        Ok(_) => Some(bytes),
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "cannot read {CONFIG_FILE}; the built-in settings stand");
            None
        }
    }
}

/// Waits for the stick's partition, mounts it read-only, reads the file, unmounts.
fn from_stick(args: &Args) -> Option<(Vec<u8>, String)> {
    let t0 = Instant::now();
    let mut said = Instant::now();
    let part = loop {
        if let Some(p) = find_partition(&args.sys_class_block) {
            break p;
        }
        if t0.elapsed() >= Duration::from_secs(args.wait_secs) {
            tracing::error!(
                waited_s = args.wait_secs,
                "no partition named gridos-boot appeared: booted from a stick that is gone, or \
                 whose USB controller has no driver in the image; the built-in settings stand"
            );
            return None;
        }
        if said.elapsed() >= Duration::from_secs(5) {
            tracing::info!(
                waited_s = t0.elapsed().as_secs(),
                "waiting for the boot stick"
            );
            said = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    for module in ["nls_cp437", "nls_ascii", "vfat"] {
        if let Err(e) = kmod::load_module(module) {
            tracing::warn!(
                module,
                error = &e as &dyn std::error::Error,
                "cannot load module; mounting anyway"
            );
        }
    }
    let dev = args.dev.join(&part);
    if let Err(e) = std::fs::create_dir_all(&args.mountpoint) {
        tracing::error!(path = %args.mountpoint.display(), error = %e, "cannot make the mount point; the built-in settings stand");
        return None;
    }
    let flags = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    if let Err(e) = nix::mount::mount(
        Some(&dev),
        &args.mountpoint,
        Some("vfat"),
        flags,
        Some("iocharset=ascii"),
    ) {
        tracing::error!(device = %dev.display(), error = %e, "cannot mount the boot stick's partition; the built-in settings stand");
        return None;
    }
    let file = args.mountpoint.join(CONFIG_FILE);
    let bytes = if file.exists() {
        read_bounded(&file)
    } else {
        tracing::info!(device = %dev.display(), "no {CONFIG_FILE} on the boot stick");
        None
    };
    if let Err(e) = nix::mount::umount2(&args.mountpoint, MntFlags::MNT_DETACH) {
        tracing::warn!(error = %e, "cannot unmount the boot stick's partition");
    }
    bytes.map(|b| (b, format!("{}:/{CONFIG_FILE}", dev.display())))
}
