//! VM start overhead: the time from "start" to the guest's `guest: ready` line on its serial
//! console, through the driver (`vmm::Vm`: spec check, QEMU paused, QMP handshake, `cont`)
//! against the same QEMU command line run bare (no `-S`, no QMP), alternated run by run so
//! both see the same machine load.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

const READY: &str = "guest: ready";
const LIMIT: Duration = Duration::from_secs(300);

fn until_ready(out: impl Read) -> anyhow::Result<()> {
    let mut lines = BufReader::new(out);
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line)? == 0 {
            bail!("the console closed before {READY:?}");
        }
        if line.contains(READY) {
            return Ok(());
        }
    }
}

fn spec(guest: &test_infra::guest::Guest, accel: vmm::Accel, seed: &Path) -> vmm::Spec {
    vmm::Spec {
        name: "bench".into(),
        vcpus: 1,
        memory_mib: 256,
        boot: vmm::Boot::Kernel {
            kernel: guest.kernel.clone(),
            initrd: Some(guest.initrd.clone()),
            cmdline: format!("{} gridos.ignore_powerdown", test_infra::guest::CMDLINE),
        },
        disks: vec![],
        seed: Some(seed.to_path_buf()),
        nic: None,
        accel,
        cgroup: None,
    }
}

fn bare(qemu: &vmm::Qemu, spec: &vmm::Spec, dir: &Path) -> anyhow::Result<f64> {
    let args = vmm::qemu::args(spec, &dir.join("unused.sock"));
    // The same line without what only the driver needs: the pause and the QMP socket.
    let mut keep = Vec::new();
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        if a == "-S" {
            continue;
        }
        if a == "-qmp" {
            it.next();
            continue;
        }
        keep.push(a);
    }
    let t0 = Instant::now();
    let mut child = qemu
        .command()
        .args(&keep)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting QEMU")?;
    let out = child.stdout.take().context("no console pipe")?;
    let r = until_ready(out);
    let secs = t0.elapsed().as_secs_f64();
    let _ = child.kill();
    let _ = child.wait();
    r.map(|()| secs)
}

fn driven(qemu: &vmm::Qemu, spec: &vmm::Spec, dir: &Path) -> anyhow::Result<f64> {
    let t0 = Instant::now();
    let (mut vm, out) = vmm::Vm::launch(qemu, spec, dir)?;
    vm.resume()?;
    until_ready(out)?;
    let secs = t0.elapsed().as_secs_f64();
    vm.kill();
    Ok(secs)
}

fn stats(v: &mut [f64]) -> Value {
    v.sort_by(f64::total_cmp);
    let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
    let p50 = v.get(v.len() / 2).copied().unwrap_or(0.0);
    json!({
        "p50_s": (p50 * 1000.0).round() / 1000.0,
        "mean_s": (mean * 1000.0).round() / 1000.0,
        "min_s": (v.first().copied().unwrap_or(0.0) * 1000.0).round() / 1000.0,
        "max_s": (v.last().copied().unwrap_or(0.0) * 1000.0).round() / 1000.0,
    })
}

/// `runs` starts each way, alternated.
pub fn vm_start(runs: usize) -> anyhow::Result<Value> {
    let guest = test_infra::guest::guest().map_err(anyhow::Error::msg)?;
    let qemu = vmm::Qemu::host(
        test_infra::gate::find_program("qemu-system-x86_64")
            .context("qemu-system-x86_64 is not installed (Debian package qemu-system-x86)")?,
    );
    let dir = tempfile::tempdir()?;
    let accel = vmm::accel::probe(&qemu, dir.path(), Duration::from_secs(5));
    // A seed as every VM gets one: the guest reads it before it is ready.
    let seed = dir.path().join("seed.img");
    vmm::Seed {
        instance_id: "bench-1".into(),
        hostname: "bench".into(),
        ssh_keys: vec![],
        network: None,
    }
    .write(&seed)?;
    let spec = spec(&guest, accel, &seed);
    let (mut b, mut d) = (Vec::new(), Vec::new());
    for i in 0..runs {
        let t0 = Instant::now();
        b.push(bare(&qemu, &spec, dir.path())?);
        d.push(driven(&qemu, &spec, &dir.path().join(format!("vm{i}")))?);
        if t0.elapsed() > LIMIT {
            bail!("one round took over {LIMIT:?}");
        }
    }
    let ratio = {
        let (mb, md) = (b.iter().sum::<f64>(), d.iter().sum::<f64>());
        (md / mb * 1000.0).round() / 1000.0
    };
    Ok(json!({
        "test": "vm-start",
        "accel": accel.name(),
        "runs": runs,
        "bare_qemu": stats(&mut b),
        "driver": stats(&mut d),
        "ratio_mean": ratio,
    }))
}
