//! `make run`: a registry on 127.0.0.1:8480, the farmer's key and farm, and one node booted in
//! QEMU against it; the console streams to the terminal and the node list is shown once the
//! node registers. The disks and the registry file stay in the work folder, so the next run is
//! the same node rebooting.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use gridapi::{paths, NodeView, Page};

use crate::qemu::{self, Machine, CPUS, MEMORY_MIB};
use crate::registry;

/// Flags of `gridos-lab run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Image folder from `make image`.
    #[arg(long, default_value = "out")]
    pub image: PathBuf,
    /// Work folder: registry file, farmer key, node disks (kept between runs).
    #[arg(long, default_value = "build/run")]
    pub work: PathBuf,
    /// Folder with the `grid-registry` and `grid` binaries.
    #[arg(long, default_value = "target/release")]
    pub bin_dir: PathBuf,
    /// Registry port on 127.0.0.1.
    #[arg(long, default_value_t = 8480)]
    pub port: u16,
    /// Seconds between the node's uptime reports.
    #[arg(long, default_value_t = 60)]
    pub report_interval: u64,
}

/// Copies what the guest writes to its console file onto stdout until told to stop.
fn follow(path: PathBuf, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) {
    let mut pos = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        if let Ok(mut f) = std::fs::File::open(&path) {
            if f.seek(SeekFrom::Start(pos)).is_ok() {
                while let Ok(n) = f.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    pos += n as u64;
                    let mut out = std::io::stdout().lock();
                    let _ = out.write_all(&buf[..n]);
                    let _ = out.flush();
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.work)
        .with_context(|| format!("creating {}", args.work.display()))?;
    let work = args.work.canonicalize()?;
    let accel = qemu::pick_accel(&args.image, &work);
    // The VM runtime (`make extensions`), when it was built beside the image.
    let extensions = Some(args.image.join("extensions")).filter(|d| d.is_dir());
    let (mut reg, farm) = registry::with_farm_serving(
        &args.bin_dir,
        &work,
        args.port,
        "my-farm",
        extensions.as_deref(),
    )
    .await
    .with_context(|| format!("is another registry on port {}? try --port", args.port))?;
    eprintln!(
        "== registry {} (SQLite {}), farm {farm}; log in {}",
        reg.url(),
        work.join("registry.db").display(),
        work.join("registry.log").display()
    );
    let images = crate::images::start()
        .await
        .context("starting the OCI registry for the node's containers")?;
    let app = work.join("app.yaml");
    std::fs::write(&app, app_yaml(&images.busybox))
        .with_context(|| format!("writing {}", app.display()))?;
    eprintln!(
        "== OCI registry serving {} to the node; a deployment of it: {}",
        images.busybox,
        app.display()
    );
    let append = format!(
        "gridos.farm={farm} gridos.registry={} gridos.report_interval={} {}",
        reg.guest_url(),
        args.report_interval,
        images.plain_http()
    );
    let machine = Machine::node(&args.image, &accel, &work, append, "console.log");
    eprintln!(
        "== booting the node in QEMU ({accel}, {CPUS} CPUs, {MEMORY_MIB} MiB, 20 GB SSD + 50 GB HDD); Ctrl-C shuts it down"
    );
    let mut guest = machine.boot()?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tail = {
        let (path, stop) = (machine.serial.clone(), stop.clone());
        std::thread::spawn(move || follow(path, stop))
    };
    let mut shown = false;
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    loop {
        tokio::select! {
            _ = &mut ctrl_c => {
                eprintln!("\n== Ctrl-C: ordered shutdown of the node (Ctrl-Alt-Del)");
                if guest.ctrl_alt_del().is_err() || guest.wait(Duration::from_secs(60)).await.is_err() {
                    guest.kill();
                }
                break;
            }
            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                if !guest.running() {
                    eprintln!("== the node stopped");
                    break;
                }
                if !shown {
                    let n: anyhow::Result<Page<NodeView>> =
                        reg.get(&format!("{}?farm={farm}", paths::NODES)).await;
                    let node = n.ok().and_then(|p| p.items.first().map(|n| n.id));
                    if let Some(node) = node {
                        shown = true;
                        eprintln!(
                            "\n== grid nodes list (target/release/grid --registry {} nodes list):\n{}",
                            reg.url(),
                            registry::nodes_table(&args.bin_dir, &reg.url())
                        );
                        eprintln!("{}", next_steps(&args.bin_dir, &reg.url(), farm, node, &app));
                    }
                }
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = tail.join();
    eprintln!("{}", registry::nodes_table(&args.bin_dir, &reg.url()));
    reg.stop()?;
    Ok(())
}

/// A deployment of one container from `image`, for the first session.
fn app_yaml(image: &str) -> String {
    format!(
        "# grid deploy this --contract ID: one container, its output kept on the node.\n\
         workloads:\n\
         \x20 - kind: container\n\
         \x20   name: web\n\
         \x20   image: {image}\n\
         \x20   cmd: [sh, -c, 'echo hello from $(hostname); exec sleep 1000000']\n\
         \x20   resources: {{cru: 1, mru: 64MiB, sru: 64MiB}}\n"
    )
}

/// What to try next, with this run's registry, farm, node and deployment file filled in.
fn next_steps(
    bin_dir: &std::path::Path,
    url: &str,
    farm: u64,
    node: i64,
    app: &std::path::Path,
) -> String {
    let grid = bin_dir.join("grid");
    format!(
        "\n== the node is registered. In another terminal, try:\n\
         \x20   export GRID_REGISTRY={url}\n\
         \x20   grid={grid}\n\
         \x20   $grid nodes list --farm {farm}      # this farm's nodes, units and status\n\
         \x20   $grid nodes show {node}             # capacity and its latest signed reports, re-verified here\n\
         \x20   $grid stats                    # grid-wide totals\n\
         \x20   export GRID_KEY=/tmp/me.key\n\
         \x20   $grid key new && $grid twin register   # a twin of your own\n\
         \x20   $grid contracts create --node {node} --cru 1 --mru 256MiB --sru 1GiB   # prints the contract id, C\n\
         \x20   $grid deploy {app} --contract C     # sealed to the node; it pulls and runs the container\n\
         \x20   $grid deployments show C          # requested → provisioning → running\n\
         \x20   $grid deployments delete C && $grid contracts cancel C\n\
         Ctrl-C here shuts the node down in order; `$grid nodes show {node}` then says stopped.",
        grid = grid.display(),
        app = app.display()
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_first_session_app_file_is_one_grid_deploys() {
        let workloads =
            cli::deploy::parse_app(&app_yaml("10.0.2.2:41467/gridos/busybox:1")).unwrap();
        assert_eq!(workloads.len(), 1);
        let d = gridtypes::deployment::Deployment {
            contract_id: 1,
            version: 1,
            workloads,
        };
        d.validate().unwrap();
        // It fits the contract the next steps create.
        d.fits(&gridtypes::Resources {
            cru: 1,
            mru: 256 << 20,
            sru: 1 << 30,
            hru: 0,
            ipv4: 0,
        })
        .unwrap();
    }
}
