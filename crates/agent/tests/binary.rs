//! The `gridos-agent` binary as PID 1 runs it: settings from a kernel command line,
//! registration, uptime reports, and a last uptime report on SIGTERM.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use gridtypes::{Envelope, Payload, GIB, NONCE_LEN};
use rand::rngs::OsRng;
use rand::RngCore;
use serde_json::Value;

fn put(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

async fn get_json(url: impl reqwest::IntoUrl) -> Value {
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

async fn post(url: &str, path: &str, key: &SigningKey, payload: &Payload) -> Value {
    let mut nonce = [0u8; NONCE_LEN];
    OsRng.fill_bytes(&mut nonce);
    let env = Envelope::seal(key, payload, gridtypes::now(), nonce);
    let r = reqwest::Client::new()
        .post(format!("{url}{path}"))
        .header("content-type", "application/json")
        .body(env.to_json())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_binary_registers_from_the_kernel_command_line_and_reports_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("r.db").display());
    let server = registry::Background::start(&db, ([127, 0, 0, 1], 0).into(), Default::default())
        .await
        .unwrap();
    let url = server.url();
    let twin = SigningKey::generate(&mut OsRng);
    post(&url, "/api/v1/twins", &twin, &Payload::RegisterTwin {}).await;
    let farm = post(
        &url,
        "/api/v1/farms",
        &twin,
        &Payload::CreateFarm { name: "f".into() },
    )
    .await["id"]
        .as_u64()
        .unwrap();

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

    let node: Value = get_json(format!("{url}/api/v1/nodes/1")).await;
    assert_eq!(node["capacity"]["cru"], 2);
    assert_eq!(node["capacity"]["hru"].as_u64(), Some(20 * GIB));
    let count = |v: &Value| v["items"].as_array().unwrap().len();
    let reports_url = format!("{url}/api/v1/nodes/1/reports?kind=uptime");
    let before: Value = get_json(&reports_url).await;

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    wait_for("last uptime report delivered");
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    let after: Value = get_json(&reports_url).await;
    assert!(count(&after) > count(&before));
    // The last report said the node is stopping: the registry shows it stopped at once.
    let node: Value = get_json(format!("{url}/api/v1/nodes/1")).await;
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
