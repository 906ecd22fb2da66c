//! Boot benchmark: guest-clock seconds from PID 1 start to "registered", gridos against a
//! minimal baseline init (mounts, DHCP, one signed HTTP POST), on the same QEMU machine.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::json;

use crate::qemu::{self, disks, Guest, Machine};
use crate::registry;

/// Flags of `gridos-lab boot-bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// gridos image folder (`make image`).
    #[arg(long, default_value = "out")]
    pub image: PathBuf,
    /// Baseline image folder (`make baseline-image`).
    #[arg(long, default_value = "build/baseline-image")]
    pub baseline: PathBuf,
    /// Work folder; emptied first.
    #[arg(long, default_value = "build/boot-bench")]
    pub work: PathBuf,
    /// Folder with the `grid-registry` and `grid` binaries.
    #[arg(long, default_value = "target/release")]
    pub bin_dir: PathBuf,
    /// Boots of each kind.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// JSON results file.
    #[arg(long, default_value = "build/boot-bench.json")]
    pub out: PathBuf,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

/// Guest seconds from the line with `start` to the first "registered … node_id=" line.
async fn measure(guest: &mut Guest, start: &str) -> anyhow::Result<f64> {
    let reg = guest
        .wait_line(&["registered", "node_id="], Duration::from_secs(600))
        .await?;
    let pid1 = guest.wait_line(&[start], Duration::from_secs(1)).await?;
    match (qemu::boot_clock(&pid1), qemu::boot_clock(&reg)) {
        (Some(a), Some(b)) => Ok(b - a),
        _ => bail!("no guest clock in {pid1:?} or {reg:?}"),
    }
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let _ = std::fs::remove_dir_all(&args.work);
    std::fs::create_dir_all(&args.work)?;
    let work = args.work.canonicalize()?;
    let accel = qemu::pick_accel(&args.image, &work);
    let (mut reg, farm) = registry::with_farm(&args.bin_dir, &work, 0, "bench").await?;
    let append = format!("gridos.farm={farm} gridos.registry={}", reg.guest_url());
    let machine = |image: &PathBuf, name: &str| {
        Machine::node(
            image,
            &accel,
            &work,
            append.clone(),
            &format!("console-{name}.log"),
        )
    };
    let (mut base, mut first, mut again) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..args.runs {
        // Baseline: powers itself off after its POST.
        let m = machine(&args.baseline, &format!("baseline-{run}"));
        let mut g = m.boot()?;
        let t = measure(&mut g, "baseline init started as PID 1")
            .await
            .with_context(|| format!("baseline boot; console {}", m.serial.display()))?;
        g.wait(Duration::from_secs(60)).await?;
        base.push(t);
        // gridos on fresh disks (the cache partition is created), then again on the same disks.
        for d in disks(&work) {
            let _ = std::fs::remove_file(&d.path);
        }
        for (i, out) in [&mut first, &mut again].into_iter().enumerate() {
            let m = machine(&args.image, &format!("gridos-{run}-{i}"));
            let mut g = m.boot()?;
            let t = measure(&mut g, "gridos init started as PID 1")
                .await
                .with_context(|| format!("gridos boot; console {}", m.serial.display()))?;
            g.ctrl_alt_del()?;
            g.wait(Duration::from_secs(120)).await?;
            out.push(t);
        }
        eprintln!(
            "boot-bench: run {run}: baseline {:.3} s, gridos first boot {:.3} s, reboot {:.3} s",
            base[run], first[run], again[run]
        );
    }
    reg.stop()?;
    let (b, f, a) = (median(&mut base), median(&mut first), median(&mut again));
    let v = json!({
        "accel": accel,
        "runs": args.runs,
        "baseline_s": base, "gridos_first_boot_s": first, "gridos_reboot_s": again,
        "median_baseline_s": b, "median_gridos_first_boot_s": f, "median_gridos_reboot_s": a,
        "ratio_first_boot": f / b, "ratio_reboot": a / b,
    });
    std::fs::write(&args.out, serde_json::to_string_pretty(&v)?)?;
    println!(
        "PID 1 → registered (guest clock, median of {}, {accel}): baseline {b:.3} s, gridos {f:.3} s first boot ({:.2}×), {a:.3} s on reboot ({:.2}×)",
        args.runs,
        f / b,
        a / b
    );
    Ok(())
}
