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

/// A twin deploys an app file under its contract; the test plays the node: it polls its
/// mailbox, opens the deployment and answers with a sealed status that `grid` opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twin_deploys_and_reads_the_node_answer() {
    use gridapi::{paths, MailboxPage};
    use gridtypes::mailbox::{self, DeploymentState, DeploymentStatus, WorkloadStatus};
    use gridtypes::{Envelope, Payload, Sealed};

    let reg = Registry::sqlite().await;
    let home = tempfile::tempdir().unwrap();
    let key = home.path().join("key");
    let other = home.path().join("other");
    let url = reg.url().to_string();
    let run = |key: &Path, args: &[&str]| {
        let (url, key) = (url.clone(), key.to_path_buf());
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            grid(&url, &key, &args)
        })
    };
    let farm = reg.farm("deploy-farm").await;
    let (node, node_id) = reg
        .node(farm, Resources::from_gib(4, 8.0, 100.0, 0.0))
        .await;
    let node_arg = node_id.to_string();
    for k in [&key, &other] {
        ok_json(run(k, &["--json", "key", "new"]).await.unwrap());
        ok_json(run(k, &["--json", "twin", "register"]).await.unwrap());
    }
    let c = ok_json(
        run(
            &key,
            &[
                "--json",
                "contracts",
                "create",
                "--node",
                &node_arg,
                "--cru",
                "1",
                "--mru",
                "512MiB",
                "--sru",
                "2GiB",
            ],
        )
        .await
        .unwrap(),
    );
    let contract = c["id"].as_i64().unwrap();
    let cid = contract.to_string();
    let app = home.path().join("app.yaml");
    std::fs::write(
        &app,
        "workloads:\n\
         - kind: container\n  name: web\n  image: 127.0.0.1:5000/gridos/hello:1\n  \
           resources: {cru: 1, mru: 256MiB, sru: 1GiB}\n",
    )
    .unwrap();
    let app_arg = app.to_str().unwrap();

    let shown = ok_json(
        run(&key, &["--json", "deployments", "show", &cid])
            .await
            .unwrap(),
    );
    assert!(shown["deployment_version"].is_null(), "{shown}");
    let posted = ok_json(
        run(&key, &["--json", "deploy", app_arg, "--contract", &cid])
            .await
            .unwrap(),
    );
    assert_eq!(
        (posted["version"].as_u64(), posted["workloads"].as_u64()),
        (Some(1), Some(1))
    );
    let shown = ok_json(
        run(&key, &["--json", "deployments", "show", &cid])
            .await
            .unwrap(),
    );
    assert_eq!(shown["state"], "requested", "{shown}");

    // Another twin's key cannot deploy here; more than the contract holds is refused locally.
    let out = run(&other, &["deploy", app_arg, "--contract", &cid])
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("another twin"));
    let big = home.path().join("big.yaml");
    std::fs::write(
        &big,
        "workloads:\n- kind: volume\n  name: data\n  size: 3GiB\n",
    )
    .unwrap();
    let out = run(&key, &["deploy", big.to_str().unwrap(), "--contract", &cid])
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("reserve"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The node's side.
    let poll = Payload::PollMailbox {
        after: 0,
        wait_secs: 0,
    };
    let (s, v) = reg.signed(paths::MAILBOX_POLL, &node, &poll).await;
    assert_eq!(s, 200, "{v}");
    let page: MailboxPage = serde_json::from_value(v).unwrap();
    let env = Envelope::from_json(page.items[0].deployment.as_ref().unwrap()).unwrap();
    let Payload::Deploy(sealed) = env.open_relayed().unwrap().payload else {
        panic!("not a deployment")
    };
    let d = mailbox::open_deployment(&mailbox::box_secret(&node), &sealed.sealed).unwrap();
    assert_eq!(d.workloads[0].name(), "web");
    let twin_key = gridtypes::parse_public_key(&page.items[0].twin_key).unwrap();
    let st = DeploymentStatus {
        contract_id: contract as u64,
        version: 1,
        state: DeploymentState::Running,
        reason: None,
        workloads: vec![WorkloadStatus {
            name: "web".into(),
            state: DeploymentState::Running,
            reason: None,
            address: Some("10.64.0.2".into()),
            kind: None,
        }],
    };
    let p = Payload::DeploymentStatus(Sealed {
        contract_id: contract as u64,
        version: 1,
        sealed: mailbox::seal_status(&twin_key, &st).unwrap(),
    });
    let (s, v) = reg.signed(paths::MAILBOX_STATUS, &node, &p).await;
    assert_eq!(s, 201, "{v}");

    let shown = ok_json(
        run(&key, &["--json", "deployments", "show", &cid])
            .await
            .unwrap(),
    );
    assert_eq!(shown["state"], "running", "{shown}");
    assert_eq!(shown["status"]["workloads"][0]["address"], "10.64.0.2");
    let human = run(&key, &["deployments", "show", &cid]).await.unwrap();
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(text.contains("web") && text.contains("10.64.0.2"), "{text}");
    // Another twin's key cannot open the node's answer.
    let out = run(&other, &["deployments", "show", &cid]).await.unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot open"));

    // Delete: a new version with no workloads; the node has not answered it yet.
    let gone = ok_json(
        run(&key, &["--json", "deployments", "delete", &cid])
            .await
            .unwrap(),
    );
    assert_eq!(
        (gone["version"].as_u64(), gone["workloads"].as_u64()),
        (Some(2), Some(0))
    );
    let shown = ok_json(
        run(&key, &["--json", "deployments", "show", &cid])
            .await
            .unwrap(),
    );
    assert_eq!(shown["state"], "requested", "{shown}");
    assert_eq!(shown["status"]["version"], 1);
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

/// `grid image build` refuses what it cannot make before building anything: the output
/// stays absent (the profile does not even exist, so a build that started would fail
/// differently).
#[test]
fn image_build_refuses_bad_media_options_before_building() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("node.img");
    let key = d.path().join("farm.key");
    std::fs::write(&key, "not a key").unwrap();
    let key = key.to_str().unwrap();
    let base = [
        "image",
        "build",
        "--profile",
        "/nonexistent/profile.yaml",
        "-o",
        out.to_str().unwrap(),
    ];
    for (extra, want) in [
        (&["--format", "usb", "--sign-key", key][..], "--sign-cert"),
        (
            &[
                "--format",
                "pxe",
                "--farm",
                "3",
                "--sign-key",
                key,
                "--sign-cert",
                key,
            ][..],
            "only a usb or iso image",
        ),
        (
            &[
                "--format",
                "iso",
                "--sign-key",
                "/nonexistent/k",
                "--sign-cert",
                key,
            ][..],
            "/nonexistent/k",
        ),
        (
            &["--format", "usb", "--farm", "3", "--append", "x=\"y\""][..],
            "--append",
        ),
        (&["--format", "pxe"][..], "needs --farm"),
        (&["--format", "floppy"][..], "floppy"),
        (
            &["--format", "usb", "--farm", "3"][..],
            "/nonexistent/profile.yaml",
        ),
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_grid"))
            .args(["--registry", "http://10.0.2.2:8480"])
            .args(base)
            .args(extra)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{extra:?}");
        assert!(err.contains(want), "{extra:?}: {err}");
        assert!(!out.exists(), "{extra:?}");
        let left: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n != "farm.key")
            .collect();
        assert!(left.is_empty(), "{extra:?}: {left:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_farmer_reads_the_reward_of_a_closed_period() {
    use accounting::PERIOD_SECS;
    let reg = Registry::sqlite().await;
    let db = registry::Db::connect(reg.db_url()).await.unwrap();
    let farm = reg.farm("ledger-farm").await;
    let (_, farm_view) = reg.get(&format!("/api/v1/farms/{farm}")).await;
    let owner = farm_view["twin_id"].as_i64().unwrap();
    test_infra::history::standard_settings(&db).await;
    // One bare-metal node up for the whole of its first period: CU = min(2·4/2, (5-1)/4,
    // 50/50) = 1, SU = 50·0.8/200 = 0.2.
    let t0 = test_infra::now() - PERIOD_SECS - 86_400;
    let capacity = Resources {
        cru: 2,
        mru: 5 * GIB,
        sru: 50 * GIB,
        hru: 0,
        ipv4: 0,
    };
    let node = test_infra::history::seed_node(&db, farm, capacity, t0).await;
    let reports: Vec<(i64, Report)> = (t0 + 60..test_infra::now() - 600)
        .step_by(2400)
        .map(|at| (at, Report::uptime((at - t0 + 60) as u64)))
        .collect();
    test_infra::history::seed_reports(&db, &node, &reports).await;
    registry::minting::close_due(&db, test_infra::now(), 3600)
        .await
        .unwrap();

    let home = tempfile::tempdir().unwrap();
    let key = home.path().join("key");
    let url = reg.url();
    let run = |args: &'static [&'static str]| {
        let (url, key) = (url.clone(), key.clone());
        tokio::task::spawn_blocking(move || grid(&url, &key, args))
    };
    // 1·2.40 + 0.2·1.00 = 2.60 USD at 0.08 USD = 32.5 TFT.
    let owner_arg: &'static str = Box::leak(format!("twin:{owner}").into_boxed_str());
    let args: &'static [&'static str] =
        Box::leak(Box::new(["--json", "ledger", "balance", owner_arg]));
    let b = ok_json(run(args).await.unwrap());
    assert_eq!(b["balance"], 325_000_000, "{b}");
    let out = run(&["ledger", "periods"]).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("paid") && text.contains("32.5"),
        "{text}"
    );
    let out = run(&["ledger", "history", "mint"]).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("-32.5") && text.contains(&format!("reward:node:{}:period:0", node.id)),
        "{text}"
    );
    // An account written two ways would be two accounts: the CLI refuses the odd spelling.
    let out = run(&["ledger", "balance", "twin:07"]).await.unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a ledger account"));
}
