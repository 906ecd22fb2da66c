//! The `gridos-agent` binary as PID 1 runs it: settings from a kernel command line,
//! registration, uptime reports, and a last uptime report on SIGTERM.

// A failed unwrap, expect or assertion is a failed test: the workspace's deny of them is
// for product code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use gridtypes::GIB;
use serde_json::Value;
use test_infra::Registry;

fn put(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

async fn get_json(reg: &Registry, path: &str) -> Value {
    let (status, v) = reg.get(path).await;
    assert_eq!(status, 200, "{path}: {v}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_binary_registers_from_the_kernel_command_line_and_reports_on_sigterm() {
    let reg = Registry::sqlite().await;
    let url = reg.url();
    let farm = reg.farm("f").await;
    let dir = tempfile::tempdir().unwrap();

    let sys = dir.path().join("sys");
    put(&sys, "devices/system/cpu/online", "0-1\n");
    put(&sys, "block/vda/size", &format!("{}\n", 20 * GIB / 512));
    put(&sys, "block/vda/queue/rotational", "1\n");
    // What the storage service would have published after measuring it.
    let measured = dir.path().join("disks.json");
    let disks = disks::scan(&sys.join("block")).unwrap();
    let m: Vec<_> = disks
        .into_iter()
        .map(|d| disks::Measured::new(d, None))
        .collect();
    disks::measured::write(&measured, &m).unwrap();
    let pools = dir.path().join("pools.json");
    let pool: Vec<disks::Pool> = m
        .iter()
        .map(|m| disks::Pool {
            id: m.disk.name.clone(),
            disk: m.disk.name.clone(),
            kind: m.kind,
            mountpoint: dir.path().join(&m.disk.name),
            size_bytes: m.disk.size_bytes,
            cache: true,
        })
        .collect();
    disks::pools::write(&pools, &pool).unwrap();
    let cmdline = dir.path().join("cmdline");
    put(
        dir.path(),
        "cmdline",
        &format!("console=ttyS0 gridos.farm={farm} gridos.registry={url} gridos.log=info quiet\n"),
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_gridos-agent"))
        .arg("--cmdline")
        .arg(&cmdline)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--sysfs")
        .arg(&sys)
        .arg("--measured")
        .arg(&measured)
        .arg("--pools")
        .arg(&pools)
        .args(["--uptime-interval", "1"])
        .env_remove("RUST_LOG")
        .env_remove("GRIDOS_FARM")
        .env_remove("GRIDOS_REGISTRY")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let wait_for = |needle: &str| -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            match rx.recv_timeout(Duration::from_secs(20)) {
                Ok(l) => {
                    let hit = l.contains(needle);
                    seen.push(l);
                    if hit {
                        return seen;
                    }
                }
                Err(_) => panic!("no {needle:?} in agent log: {seen:#?}"),
            }
        }
    };
    let lines = wait_for("registered");
    let line = lines.last().unwrap();
    assert!(
        line.contains("node_id=1") && line.contains(&format!("farm={farm}")),
        "{line}"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let node: Value = get_json(&reg, "/api/v1/nodes/1").await;
    assert_eq!(node["capacity"]["cru"], 2);
    assert_eq!(node["capacity"]["hru"].as_u64(), Some(20 * GIB));
    let count = |v: &Value| v["items"].as_array().unwrap().len();
    let reports_path = "/api/v1/nodes/1/reports?kind=uptime";
    let before: Value = get_json(&reg, reports_path).await;

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    wait_for("last uptime report delivered");
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    let after: Value = get_json(&reg, reports_path).await;
    assert!(count(&after) > count(&before));
    // The last report said the node is stopping: the registry shows it stopped at once.
    let node: Value = get_json(&reg, "/api/v1/nodes/1").await;
    assert_eq!(node["status"], "stopped", "{node}");
}

#[test]
fn agent_binary_without_a_farm_says_what_to_set() {
    let dir = tempfile::tempdir().unwrap();
    put(
        dir.path(),
        "cmdline",
        "console=ttyS0 gridos.registry=http://127.0.0.1:9\n",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_gridos-agent"))
        .arg("--cmdline")
        .arg(dir.path().join("cmdline"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .env_remove("GRIDOS_FARM")
        .env_remove("GRIDOS_REGISTRY")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("gridos.farm="), "{err}");
}
