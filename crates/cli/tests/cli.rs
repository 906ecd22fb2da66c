//! The `grid` binary against a real registry on 127.0.0.1: what a farmer and an auditor type.

// A failed unwrap, expect or assertion is a failed test: the workspace's deny of them is
// for product code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Output};

use gridtypes::{Report, Resources, GIB};
use serde_json::Value;
use test_infra::Registry;

fn grid(reg: &str, key: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_grid"))
        .arg("--registry")
        .arg(reg)
        .arg("--key")
        .arg(key)
        .args(args)
        .output()
        .unwrap()
}

fn ok_json(out: Output) -> Value {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn farmer_and_auditor_session() {
    let reg = Registry::sqlite().await;
    let home = tempfile::tempdir().unwrap();
    let key = home.path().join("conf/key");
    let url = reg.url();
    let run = move |args: &[&str]| {
        let (url, key) = (url.clone(), key.clone());
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            grid(&url, &key, &args)
        })
    };

    // Nothing works before a key exists, and the error says what to do.
    let out = run(&["twin", "register"]).await.unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("grid key new"));

    let k = ok_json(run(&["--json", "key", "new"]).await.unwrap());
    assert_eq!(k["public_key"].as_str().unwrap().len(), 64);
    let out = run(&["key", "new"]).await.unwrap();
    assert!(
        !out.status.success(),
        "a second key must not silently replace the first"
    );

    // Farm creation before twin registration is refused with a hint.
    let out = run(&["farm", "create", "early"]).await.unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown_signer"));

    let t = ok_json(run(&["--json", "twin", "register"]).await.unwrap());
    assert_eq!(t["created"], true);
    let f = ok_json(run(&["--json", "farm", "create", "sunny"]).await.unwrap());
    let farm = f["id"].as_i64().unwrap();
    let out = run(&["farm", "create", "bad name"]).await.unwrap();
    assert!(!out.status.success());
    let farms = ok_json(run(&["--json", "farm", "list"]).await.unwrap());
    assert_eq!(farms[0]["name"], "sunny");

    // A node registers itself and reports.
    let capacity = Resources::from_gib(2, 2.0, 20.0, 50.0);
    let (node, node_id) = reg.node(farm, capacity).await;
    let up = Report::Uptime {
        uptime_secs: 9,
        stopping: false,
        warnings: vec!["cache on tmpfs: no disk".into()],
    };
    let (status, v) = reg.report(&node, up).await;
    assert_eq!(status, 201, "{v}");

    let list = ok_json(run(&["--json", "nodes", "list", "--all"]).await.unwrap());
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["capacity"]["mru"], 2 * GIB);
    let none = ok_json(
        run(&["--json", "nodes", "list", "--min-sru", "21"])
            .await
            .unwrap(),
    );
    assert_eq!(none.as_array().unwrap().len(), 0);
    let some = ok_json(
        run(&[
            "--json",
            "nodes",
            "list",
            "--min-sru",
            "20",
            "--status",
            "up",
        ])
        .await
        .unwrap(),
    );
    assert_eq!(some.as_array().unwrap().len(), 1);

    let id = node_id.to_string();
    let shown = ok_json(run(&["--json", "nodes", "show", &id]).await.unwrap());
    assert_eq!(shown["reports"][0]["verified"], true);
    // The newest signed message's warnings, shown loudly to the farmer.
    assert_eq!(
        shown["warnings"],
        serde_json::json!(["cache on tmpfs: no disk"])
    );
    let human = run(&["nodes", "show", &id]).await.unwrap();
    assert!(
        String::from_utf8_lossy(&human.stdout).starts_with("WARNING    cache on tmpfs: no disk\n")
    );
    assert_eq!(
        shown["units"]["su"].as_f64().unwrap(),
        capacity.farming_units().su
    );

    let human = run(&["nodes", "list"]).await.unwrap();
    assert!(String::from_utf8_lossy(&human.stdout).contains("CU"));
    let stats = ok_json(run(&["--json", "stats"]).await.unwrap());
    assert_eq!(stats["all"]["nodes"], 1);
    assert_eq!(stats["twins"], 1);

    // The twin rents part of the node, cannot rent more than is free, and cancels.
    let c = ok_json(
        run(&[
            "--json",
            "contracts",
            "create",
            "--node",
            &id,
            "--cru",
            "1",
            "--mru",
            "256MiB",
            "--sru",
            "2GiB",
        ])
        .await
        .unwrap(),
    );
    let contract = c["id"].as_i64().unwrap().to_string();
    let shown = ok_json(run(&["--json", "nodes", "show", &id]).await.unwrap());
    assert_eq!(shown["used"]["mru"], 256u64 << 20);
    assert_eq!(shown["free"]["sru"], 18 * GIB);
    let out = run(&[
        "contracts",
        "create",
        "--node",
        &id,
        "--cru",
        "1",
        "--sru",
        "19GiB",
    ])
    .await
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("insufficient_capacity") && err.contains("sru"),
        "{err}"
    );
    let out = run(&["contracts", "create", "--node", &id, "--mru", "lots"])
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("256MiB"));
    let list = ok_json(
        run(&[
            "--json",
            "contracts",
            "list",
            "--node",
            &id,
            "--state",
            "active",
        ])
        .await
        .unwrap(),
    );
    assert_eq!(list.as_array().unwrap().len(), 1);
    let human = run(&["contracts", "show", &contract]).await.unwrap();
    assert!(String::from_utf8_lossy(&human.stdout).contains("active"));
    ok_json(
        run(&["--json", "contracts", "cancel", &contract])
            .await
            .unwrap(),
    );
    let shown = ok_json(
        run(&["--json", "contracts", "show", &contract])
            .await
            .unwrap(),
    );
    assert_eq!(shown["state"], "cancelled");
    let node_now = ok_json(run(&["--json", "nodes", "show", &id]).await.unwrap());
    assert_eq!(node_now["used"]["mru"], 0);
}

#[test]
fn units_match_the_formulas() {
    let key = Path::new("/nonexistent");
    let v = ok_json(grid(
        "http://127.0.0.1:1",
        key,
        &[
            "units", "--cru", "8", "--mru", "64", "--sru", "1000", "--hru", "0", "--json",
        ],
    ));
    assert_eq!(v["cu"].as_f64().unwrap(), 15.75);
    assert_eq!(v["su"].as_f64().unwrap(), 4.0);
    let v = ok_json(grid(
        "http://127.0.0.1:1",
        key,
        &[
            "units",
            "--cru",
            "4",
            "--mru",
            "16",
            "--sru",
            "100",
            "--hru",
            "1200",
            "--billing",
            "--json",
        ],
    ));
    assert_eq!(v["cu"].as_f64().unwrap(), 4.0);
    assert_eq!(v["su"].as_f64().unwrap(), 1.5);
    let out = grid("http://127.0.0.1:1", key, &["units", "--mru", "-1"]);
    assert!(!out.status.success());
}

#[test]
fn unreachable_registry_is_a_clear_error() {
    let out = grid("http://127.0.0.1:1", Path::new("/nonexistent"), &["stats"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot reach the registry at http://127.0.0.1:1"),
        "{err}"
    );
}
