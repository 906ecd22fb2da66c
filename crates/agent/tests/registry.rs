//! "A farmer boots a node and it registers": the agent against a real registry on 127.0.0.1
//! (SQLite in a tempdir), including an outage of the registry and a restart of the agent.

// A failed unwrap, expect or assertion is a failed test: the workspace's deny of them is
// for product code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use agent::probe::Probe;
use agent::{Config, Status};
use ed25519_dalek::SigningKey;
use gridtypes::{Envelope, Payload, GIB};
use rand::rngs::OsRng;
use serde_json::Value;
use test_infra::Registry;
use tokio::sync::{oneshot, watch};

/// The payloads of a node's stored reports of `kind`, oldest first, with their signed time.
async fn payloads(reg: &Registry, node: i64, kind: &str) -> Vec<(Value, i64)> {
    let (s, v) = reg
        .get(&format!(
            "/api/v1/nodes/{node}/reports?kind={kind}&limit=1000"
        ))
        .await;
    assert_eq!(s, 200, "{v}");
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let env: Envelope = serde_json::from_value(r["envelope"].clone()).unwrap();
            let p: Value = serde_json::from_slice(&env.payload).unwrap();
            (p, r["signed_at"].as_i64().unwrap())
        })
        .collect()
}

/// All uptime reports of a node, oldest first, as (uptime_secs, signed_at).
async fn uptimes(reg: &Registry, node: i64) -> Vec<(u64, i64)> {
    payloads(reg, node, "uptime")
        .await
        .into_iter()
        .map(|(p, at)| (p["uptime_secs"].as_u64().unwrap(), at))
        .collect()
}

fn put(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

/// A fake /sys with 4 CPUs, a 100 GiB SSD and a 1 TiB HDD; /proc is the host's (read only).
fn fake_sys(root: &Path) -> PathBuf {
    let sys = root.join("sys");
    put(&sys, "devices/system/cpu/online", "0-3\n");
    put(&sys, "block/sda/size", &format!("{}\n", 100 * GIB / 512));
    put(&sys, "block/sda/queue/rotational", "0\n");
    put(&sys, "block/sdb/size", &format!("{}\n", 1024 * GIB / 512));
    put(&sys, "block/sdb/queue/rotational", "1\n");
    // What the storage service would have measured: sda seeks like an SSD.
    let m: Vec<_> = disks::scan(&sys.join("block"))
        .unwrap()
        .into_iter()
        .map(|d| {
            let lat = (d.name == "sda").then(|| Duration::from_micros(100));
            disks::Measured::new(d, lat)
        })
        .collect();
    disks::measured::write(&root.join("disks.json"), &m).unwrap();
    write_pools(&root.join("pools.json"), &m);
    sys
}

/// What storage would have made of every measured disk: a pool.
fn write_pools(path: &Path, m: &[disks::Measured]) {
    let pools: Vec<disks::Pool> = m
        .iter()
        .map(|m| disks::Pool {
            id: m.disk.name.clone(),
            disk: m.disk.name.clone(),
            kind: m.kind,
            mountpoint: path.with_file_name(&m.disk.name),
            size_bytes: m.disk.size_bytes,
            cache: false,
        })
        .collect();
    disks::pools::write(path, &pools).unwrap();
}

fn config(reg: &Registry, farm: i64, state: &Path, sys: &Path) -> Config {
    let mut cfg = Config::new(reg.url(), farm as u64, state.to_path_buf());
    cfg.uptime_interval = Duration::from_secs(1);
    cfg.probe_interval = Duration::from_secs(3600);
    cfg.retry_min = Duration::from_millis(200);
    cfg.retry_max = Duration::from_secs(1);
    cfg.refused_retry = Duration::from_secs(1);
    cfg.http_timeout = Duration::from_secs(2);
    // Never the host's own /run: the marker exists only where a test writes it.
    cfg.tmpfs_marker = state.with_file_name("storage-tmpfs");
    cfg.probe = Probe {
        sys: sys.to_path_buf(),
        measured: sys.with_file_name("disks.json"),
        pools: sys.with_file_name("pools.json"),
        addresses: false,
        ..Probe::default()
    };
    cfg
}

struct Running {
    stop: oneshot::Sender<()>,
    status: watch::Receiver<Status>,
    task: tokio::task::JoinHandle<Result<(), agent::AgentError>>,
}

fn spawn(cfg: Config) -> Running {
    let (tx, rx) = watch::channel(Status::default());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(agent::run(
        cfg,
        async {
            let _ = stopped.await;
        },
        tx,
    ));
    Running {
        stop,
        status: rx,
        task,
    }
}

impl Running {
    async fn until(&mut self, what: &str, f: impl Fn(&Status) -> bool) -> Status {
        let r = tokio::time::timeout(Duration::from_secs(30), self.status.wait_for(|s| f(s)))
            .await
            .map(|r| r.map(|s| s.clone()));
        match r {
            Ok(Ok(s)) => s,
            _ => panic!("timed out waiting for {what}: {:?}", *self.status.borrow()),
        }
    }

    async fn shutdown(self) -> Status {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
        let s = self.status.borrow().clone();
        s
    }
}

fn uptime_files(state: &Path) -> usize {
    std::fs::read_dir(state.join("queue")).unwrap().count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_registers_reports_and_loses_nothing_while_the_registry_is_away() {
    let mut reg = Registry::sqlite().await;
    let farm = reg.farm("farm-one").await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let sys = fake_sys(dir.path());

    let mut agent = spawn(config(&reg, farm, &state, &sys));
    let s = agent.until("registration", |s| s.node_id.is_some()).await;
    let node = s.node_id.unwrap();
    let (_, v) = reg.get(&format!("/api/v1/nodes/{node}")).await;
    assert_eq!(v["farm_id"].as_i64(), Some(farm));
    assert_eq!(v["public_key"].as_str(), Some(s.public_key.as_str()));
    assert_eq!(v["capacity"]["cru"], 4);
    assert_eq!(v["capacity"]["sru"].as_u64(), Some(100 * GIB));
    assert_eq!(v["capacity"]["hru"].as_u64(), Some(1024 * GIB));
    assert!(v["capacity"]["mru"].as_u64().unwrap() > 0);
    agent
        .until("two uptime reports", |s| s.delivered >= 2)
        .await;

    // The registry goes away: the uptime reading waits on disk, each new one of this boot
    // replacing the one before (it proves the same uptime and more).
    reg.halt().await;
    let s = agent
        .until("the outage noticed", |s| {
            s.queued >= 1
                && s.last_error
                    .as_deref()
                    .is_some_and(|e| e.contains("unreachable"))
        })
        .await;
    let delivered_before = s.delivered;
    // Three more readings taken meanwhile.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(agent.status.borrow().queued, 1);
    assert_eq!(uptime_files(&state), 1);

    // It comes back on the same database: the queued reading arrives, reports go on.
    reg.resume().await;
    agent
        .until("the queue to drain and two more reports", |s| {
            s.queued == 0 && s.delivered >= delivered_before + 3
        })
        .await;
    let s = agent.shutdown().await;
    assert_eq!(s.queued, 0);
    assert_eq!(uptime_files(&state), 0);

    // Nothing lost, nothing doubled, in order; the last one is the shutdown report.
    let ups = uptimes(&reg, node).await;
    assert_eq!(ups.len() as u64, s.delivered, "{ups:?}");
    assert!(ups.len() >= 6, "{ups:?}");
    assert!(
        ups.windows(2).all(|w| w[0].0 <= w[1].0),
        "uptime order: {ups:?}"
    );
    assert!(
        ups.windows(2).all(|w| w[0].1 <= w[1].1),
        "timestamp order: {ups:?}"
    );
    assert_no_violation(&ups);

    // The agent restarts (same state dir): same key, same node, reports continue.
    let before = ups.len();
    let mut agent = spawn(config(&reg, farm, &state, &sys));
    let s2 = agent
        .until("re-registration", |s| s.node_id.is_some())
        .await;
    assert_eq!(s2.node_id, Some(node));
    assert_eq!(s2.public_key, s.public_key);
    agent.until("a report", |s| s.delivered >= 1).await;
    agent.shutdown().await;
    assert!(uptimes(&reg, node).await.len() > before);
    reg.halt().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_queued_before_an_agent_restart_are_delivered_after_it() {
    let mut reg = Registry::sqlite().await;
    let farm = reg.farm("farm-two").await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let sys = fake_sys(dir.path());

    let mut agent = spawn(config(&reg, farm, &state, &sys));
    let node = agent
        .until("registration", |s| s.node_id.is_some())
        .await
        .node_id
        .unwrap();
    agent.until("a report", |s| s.delivered >= 1).await;
    reg.halt().await;
    agent
        .until("a report the registry did not take", |s| {
            s.queued >= 1 && s.last_error.is_some()
        })
        .await;
    // Planned shutdown while the registry is away: the last report is queued too, and
    // supersedes the ordinary reading queued during the outage.
    let s = agent.shutdown().await;
    let left = uptime_files(&state);
    assert_eq!(left, s.queued, "{s:?}");
    assert_eq!(left, 1, "{s:?}");
    let queue = agent::queue::Queue::open(&state.join("queue")).unwrap();
    let (_, last) = queue.front().unwrap();
    assert!(
        matches!(
            last.unwrap().report,
            gridtypes::Report::Uptime { stopping: true, .. }
        ),
        "the shutdown report is what is left"
    );
    drop(queue);
    let delivered_first_run = s.delivered;

    reg.resume().await;
    let mut agent = spawn(config(&reg, farm, &state, &sys));
    agent
        .until("the old queue to drain", |s| s.delivered >= left as u64)
        .await;
    let s2 = agent.shutdown().await;
    let ups = uptimes(&reg, node).await;
    assert_eq!(
        ups.len() as u64,
        delivered_first_run + s2.delivered,
        "{ups:?}"
    );
    assert!(ups.windows(2).all(|w| w[0].0 <= w[1].0), "{ups:?}");
    assert_no_violation(&ups);
    reg.halt().await;
}

/// No two consecutive uptime reports (as (uptime, signed_at), in order) are what the
/// registry's minting calls a violation.
fn assert_no_violation(ups: &[(u64, i64)]) {
    for w in ups.windows(2) {
        assert!(
            !agent::client::uptime_violation((w[0].1, w[0].0), (w[1].1, w[1].0)),
            "violation between {:?} and {:?} in {ups:?}",
            w[0],
            w[1]
        );
    }
}

/// A /proc with a fixed uptime (and the memory the probe reads).
fn fake_proc(root: &Path, uptime_secs: i64) -> PathBuf {
    let proc = root.join("proc");
    put(&proc, "uptime", &format!("{uptime_secs}.25 10.00\n"));
    put(&proc, "meminfo", "MemTotal:        4194304 kB\n");
    proc
}

fn uptime_entry(boot: i64, uptime_secs: i64, stopping: bool) -> agent::queue::Entry {
    agent::queue::Entry::new(
        gridtypes::Report::Uptime {
            uptime_secs: uptime_secs as u64,
            stopping,
            warnings: Vec::new(),
        },
        boot + uptime_secs,
    )
}

/// Hours of outage, a reboot and an agent restart in between: what waits in the queue goes
/// out in a burst, and the registry's minting must find no violation in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_after_a_long_outage_is_no_minting_violation() {
    use agent::queue::{Entry, Queue};
    use gridtypes::{Consumption, Report, Resources};

    const UP: i64 = 100_000;
    let mut reg = Registry::sqlite().await;
    let farm = reg.farm("farm-burst").await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let sys = fake_sys(dir.path());
    let mut cfg = config(&reg, farm, &state, &sys);
    cfg.probe.proc = fake_proc(dir.path(), UP);
    // One reading at start only: the fake uptime does not move.
    cfg.uptime_interval = Duration::from_secs(3600);

    let now = gridtypes::now();
    let boot = now - UP;
    // An earlier boot that lasted long (its reading can still be told apart from this boot),
    // and a short one (it cannot: signed now, it would say the node booted after this boot).
    let (long_boot, short_boot) = (boot - 400_000, boot - 20_000);
    let long_stop = uptime_entry(long_boot, 300_000, true);
    let short_last = uptime_entry(short_boot, 1_000, false);
    // This boot: readings every 40 minutes for the last two hours, and the last report of an
    // agent that stopped (not the node) in between.
    let ours = [-7200, -4800, -2400].map(|ago| uptime_entry(boot, UP + ago, false));
    let agent_stop = uptime_entry(boot, UP - 6000, true);
    let traffic = Entry::new(
        Report::Consumption(Consumption {
            used: Resources::default(),
            traffic_bytes: 4096,
            contracts: Vec::new(),
        }),
        now - 5000,
    );
    let mut q = Queue::open(&cfg.queue_dir()).unwrap();
    for e in [
        &long_stop,
        &short_last,
        &ours[0],
        &agent_stop,
        &traffic,
        &ours[1],
        &ours[2],
    ] {
        q.push(e).unwrap();
    }
    drop(q);

    // Still away when the agent starts: its first reading supersedes the three of this boot.
    reg.halt().await;
    let mut agent = spawn(cfg);
    agent
        .until("the older readings superseded", |s| {
            s.queued == 5 && s.last_error.is_some()
        })
        .await;
    reg.resume().await;
    let s = agent
        .until("the burst delivered", |s| {
            s.node_id.is_some() && s.queued == 0
        })
        .await;
    // The long boot's stop, this boot's agent stop, the traffic, the new reading; the short
    // boot's reading was dropped.
    assert_eq!(s.delivered, 4, "{s:?}");
    let node = s.node_id.unwrap();
    agent.shutdown().await;

    let ups = uptimes(&reg, node).await;
    assert_no_violation(&ups);
    let readings: Vec<u64> = ups.iter().map(|u| u.0).collect();
    assert_eq!(readings.len(), 4, "{ups:?}");
    assert_eq!(readings[0], 300_000, "the long boot's reading as it was");
    // This boot's readings say what the uptime was when they were signed: each implies
    // this boot (the fake uptime stands still, so later ones imply a few seconds later).
    for &(uptime, signed_at) in &ups[1..] {
        let implied = signed_at - uptime as i64;
        assert!(
            (0..30).contains(&(implied - boot)),
            "{uptime} at {signed_at}, boot {boot}: {ups:?}"
        );
    }
    for gone in ours.iter().chain([&short_last]) {
        let Report::Uptime { uptime_secs, .. } = gone.report else {
            unreachable!()
        };
        assert!(!readings.contains(&uptime_secs), "{uptime_secs} in {ups:?}");
    }
    reg.halt().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_farm_is_a_clear_error_and_the_agent_keeps_trying() {
    let mut reg = Registry::sqlite().await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let sys = fake_sys(dir.path());
    let mut agent = spawn(config(&reg, 2, &state, &sys));
    let s = agent
        .until("the unknown farm error", |s| s.last_error.is_some())
        .await;
    let err = s.last_error.unwrap();
    assert!(
        err.contains("farm 2 does not exist") && err.contains("gridos.farm"),
        "{err}"
    );
    assert_eq!(s.node_id, None);
    assert_eq!(s.delivered, 0);
    // The farmer creates the farm later; the agent, still retrying slowly, registers.
    assert_eq!(reg.farm("first").await, 1);
    assert_eq!(reg.farm("second").await, 2);
    let s = agent.until("registration", |s| s.node_id.is_some()).await;
    let (_, v) = reg
        .get(&format!("/api/v1/nodes/{}", s.node_id.unwrap()))
        .await;
    assert_eq!(v["farm_id"], 2);
    agent.shutdown().await;
    reg.halt().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_sent_twice_is_a_replay_not_a_duplicate() {
    use agent::client::{Client, Outcome};
    use agent::queue::Entry;
    use gridtypes::{NodeRegistration, Report, Resources};

    let mut reg = Registry::sqlite().await;
    let farm = reg.farm("farm-replay").await;
    let key = SigningKey::generate(&mut OsRng);
    let client = Client::new(&reg.url(), key, Duration::from_secs(2));
    let registration = NodeRegistration {
        farm_id: farm as u64,
        capacity: Resources::from_gib(1, 1.0, 0.0, 0.0),
        serial: None,
        virtualized: false,
        interfaces: vec![],
        agent_version: None,
        box_key: None,
        warnings: Vec::new(),
    };
    let node = match client.register(&registration).await {
        Outcome::Accepted(id) => id,
        other => panic!("{other:?}"),
    };
    // Delivered, then the agent crashed before removing it from the queue: sent again.
    let entry = Entry::new(Report::uptime(77), gridtypes::now() - 30);
    assert!(matches!(client.report(&entry).await, Outcome::Accepted(_)));
    assert_eq!(client.report(&entry).await, Outcome::Replay);
    let ups = uptimes(&reg, node).await;
    assert_eq!(ups.len(), 1);
    // Still inside the registry's window, the report is signed with the time it describes.
    assert_eq!(ups[0].1, entry.measured_at);
    // An unregistered key is refused for good (not retried as if the registry were down).
    let stranger = Client::new(
        &reg.url(),
        SigningKey::generate(&mut OsRng),
        Duration::from_secs(2),
    );
    assert!(matches!(
        stranger.report(&entry).await,
        Outcome::Refused {
            status: 401,
            code: gridapi::ErrorCode::UnknownSigner,
            ..
        }
    ));
    reg.halt().await;
    assert!(matches!(
        client.report(&entry).await,
        Outcome::Unavailable(_)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_on_tmpfs_is_a_warning_in_every_message() {
    let reg = Registry::sqlite().await;
    let farm = reg.farm("farm-tmpfs").await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let sys = fake_sys(dir.path());
    let cfg = config(&reg, farm, &state, &sys);
    // What the storage service writes when it found no disk it may use.
    std::fs::write(&cfg.tmpfs_marker, "no disk found\n").unwrap();

    let mut agent = spawn(cfg);
    let s = agent
        .until("two uptime reports", |s| s.delivered >= 2)
        .await;
    let node = s.node_id.unwrap();
    let (_, all) = reg
        .get(&format!("/api/v1/nodes/{node}/reports?limit=1000"))
        .await;
    let items = all["items"].as_array().unwrap();
    assert!(items.len() >= 3, "{all}");
    for r in items {
        let env: Envelope = serde_json::from_value(r["envelope"].clone()).unwrap();
        let warnings = match Payload::from_bytes(&env.payload).unwrap() {
            Payload::RegisterNode(reg) => reg.warnings,
            Payload::Report(gridtypes::Report::Uptime { warnings, .. }) => warnings,
            other => panic!("unexpected message {other:?}"),
        };
        assert_eq!(warnings.len(), 1, "{} without the warning", r["kind"]);
        assert!(
            warnings[0].starts_with("cache on tmpfs") && warnings[0].ends_with("no disk found"),
            "{warnings:?}"
        );
    }
    agent.shutdown().await;
}

/// The node's latest status of `contract`, opened with the twin's key, once `ok` holds.
async fn status_when(
    reg: &Registry,
    twin: &SigningKey,
    contract: i64,
    what: &str,
    ok: impl Fn(&gridtypes::mailbox::DeploymentStatus) -> bool,
) -> gridtypes::mailbox::DeploymentStatus {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (s, v) = reg
            .get(&gridapi::paths::contract_status(contract as u64))
            .await;
        if s == 200 {
            let view: gridapi::StatusView = serde_json::from_value(v).unwrap();
            let env = Envelope::from_json(&view.envelope).unwrap();
            let verified = env.open_relayed().unwrap();
            assert_eq!(verified.signer_hex, view.node_key);
            let Payload::DeploymentStatus(sealed) = verified.payload else {
                panic!("not a status")
            };
            let st = gridtypes::mailbox::open_status(twin, &sealed.sealed).unwrap();
            if ok(&st) {
                return st;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_twin_deployment_is_taken_up_answered_and_kept_across_restarts() {
    use gridtypes::deployment::{Deployment, Volume, Workload};
    use gridtypes::mailbox::{self, DeploymentState};
    use gridtypes::{ContractRequest, Resources, Sealed};

    let reg = Registry::sqlite().await;
    let farm = reg.farm("farm-deploy").await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let sys = fake_sys(dir.path());
    let mut agent = spawn(config(&reg, farm, &state, &sys));
    let node = agent
        .until("registration", |s| s.node_id.is_some())
        .await
        .node_id
        .unwrap();

    let (twin, _) = reg.twin().await;
    let ask = Payload::CreateContract(ContractRequest {
        node_id: node as u64,
        resources: Resources {
            cru: 1,
            mru: GIB,
            sru: 10 * GIB,
            hru: 0,
            ipv4: 0,
        },
    });
    let (s, v) = reg.signed(gridapi::paths::CONTRACTS, &twin, &ask).await;
    assert_eq!(s, 201, "{v}");
    let contract = v["id"].as_i64().unwrap();
    let (s, v) = reg.get(&gridapi::paths::node(node as u64)).await;
    assert_eq!(s, 200, "{v}");
    let to = mailbox::parse_box_key(v["box_key"].as_str().unwrap()).unwrap();
    let d = Deployment {
        contract_id: contract as u64,
        version: 1,
        workloads: vec![Workload::Volume(Volume {
            name: "data".into(),
            size: GIB,
            disk: Default::default(),
        })],
    };
    let p = Payload::Deploy(Sealed {
        contract_id: contract as u64,
        version: 1,
        sealed: mailbox::seal_deployment(&to, &d).unwrap(),
    });
    let (s, v) = reg.signed(gridapi::paths::MAILBOX, &twin, &p).await;
    assert_eq!(s, 201, "{v}");

    // This agent has no volume runtime: the twin hears so, from the node, sealed.
    let st = status_when(&reg, &twin, contract, "the node's answer", |s| {
        s.version == 1 && s.state == DeploymentState::Failed
    })
    .await;
    let reason = st.workloads[0].reason.clone().unwrap();
    assert!(reason.contains("no volume runtime"), "{reason}");
    let record = state.join(format!("deployments/contract-{contract}.json"));
    assert!(record.exists());

    // Cancelled while the agent is stopped: torn down and said so after the restart.
    agent.shutdown().await;
    let cancel = Payload::CancelContract {
        contract_id: contract as u64,
    };
    let (s, v) = reg
        .signed(gridapi::paths::CONTRACTS_CANCEL, &twin, &cancel)
        .await;
    assert_eq!(s, 200, "{v}");
    let agent = spawn(config(&reg, farm, &state, &sys));
    status_when(&reg, &twin, contract, "the teardown", |s| {
        s.state == DeploymentState::Deleted
    })
    .await;
    let kept: serde_json::Value = serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    assert_eq!(kept["cancelled"], true);
    agent.shutdown().await;
}

/// One answer of the fake provision service to `usage`: the instance that gives it (another
/// one than before is a restart of the service) and its counters.
#[derive(Clone)]
struct Reading {
    instance: &'static str,
    traffic_bytes: u64,
    contracts: std::collections::BTreeMap<i64, u64>,
}

/// A provision service that answers `usage` with `script`, one reading per request, the
/// last one for ever. To change instances it hangs up on the request, as a restarted service
/// would have, and greets the next connection with the new name. Everything else is answered
/// with an error.
fn fake_provision(sock: &Path, script: Vec<Reading>) -> tokio::task::JoinHandle<()> {
    use provision::service::{Request, Response};
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    assert!(!script.is_empty());
    let listener = tokio::net::UnixListener::bind(sock).unwrap();
    let script = Arc::new(Mutex::new(VecDeque::from(script)));
    // The reading the next `usage` gets, used up when `take`.
    let next = |script: &Mutex<VecDeque<Reading>>, take: bool| {
        let mut q = script.lock().unwrap();
        let r = q.front().cloned().unwrap();
        if take && q.len() > 1 {
            q.pop_front();
        }
        r
    };
    let line = |v: &Response| {
        let mut line = serde_json::to_vec(v).unwrap();
        line.push(b'\n');
        line
    };
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let script = script.clone();
            tokio::spawn(async move {
                let instance = next(&script, false).instance;
                let (r, mut w) = stream.into_split();
                let mut lines = BufReader::new(r).lines();
                let hello = Response::Hello {
                    instance: instance.into(),
                };
                if w.write_all(&line(&hello)).await.is_err() {
                    return;
                }
                while let Ok(Some(req)) = lines.next_line().await {
                    let answer = match serde_json::from_str::<Request>(&req) {
                        Ok(Request::Usage) => {
                            if next(&script, false).instance != instance {
                                return;
                            }
                            let r = next(&script, true);
                            Response::Usage {
                                traffic_bytes: r.traffic_bytes,
                                contracts: r.contracts,
                            }
                        }
                        _ => Response::Error {
                            message: "not in this fake".into(),
                        },
                    };
                    if w.write_all(&line(&answer)).await.is_err() {
                        return;
                    }
                }
            });
        }
    })
}

/// Every consumption report of a node with traffic, oldest first, as (traffic_bytes,
/// [(contract, share)]).
async fn traffic_reports(reg: &Registry, node: i64) -> Vec<(u64, Vec<(i64, u64)>)> {
    payloads(reg, node, "consumption")
        .await
        .into_iter()
        .map(|(p, _)| {
            let shares = p["contracts"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|c| {
                            (
                                c["contract_id"].as_i64().unwrap(),
                                c["traffic_bytes"].as_u64().unwrap(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            (p["traffic_bytes"].as_u64().unwrap(), shares)
        })
        .filter(|(t, _)| *t > 0)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_contract_gets_its_share_of_the_public_traffic_and_the_registry_takes_it() {
    use gridtypes::{ContractRequest, Resources};

    let reg = Registry::sqlite().await;
    let farm = reg.farm("farm-traffic").await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let sys = fake_sys(dir.path());
    let sock = dir.path().join("provision.sock");
    let mut cfg = config(&reg, farm, &state, &sys);
    cfg.provision_socket = Some(sock.clone());
    let mut agent = spawn(cfg);
    let node = agent
        .until("registration", |s| s.node_id.is_some())
        .await
        .node_id
        .unwrap();

    // Two contracts of one twin on the node: the registry takes shares of the node's own
    // contracts only (and refuses the whole report otherwise).
    let (twin, _) = reg.twin().await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let ask = Payload::CreateContract(ContractRequest {
            node_id: node as u64,
            resources: Resources {
                cru: 1,
                mru: GIB,
                sru: 10 * GIB,
                hru: 0,
                ipv4: 0,
            },
        });
        let (s, v) = reg.signed(gridapi::paths::CONTRACTS, &twin, &ask).await;
        assert_eq!(s, 201, "{v}");
        ids.push(v["id"].as_i64().unwrap());
    }
    let (c1, c2) = (ids[0], ids[1]);
    let reading = |instance, traffic_bytes, a: u64, b: u64| Reading {
        instance,
        traffic_bytes,
        contracts: [(c1, a), (c2, b)].into_iter().collect(),
    };
    // The service comes up only now; its first reading is the agent's base.
    let provision = fake_provision(
        &sock,
        vec![
            reading("fake-1", 200, 50, 0),
            // 50 and 100 more bytes on the veths, 800 more public: 1 to 2.
            reading("fake-1", 1000, 100, 100),
            // 300 and 100 more on the veths, 3000 more public: 3 to 1.
            reading("fake-1", 4000, 400, 200),
            // The service started again: all it counts is new, though the node's total and
            // contract 1's count are already above the last reading.
            reading("fake-2", 5000, 400, 1000),
        ],
    );
    let want = vec![
        // 800 · 50/150 and 800 · 100/150, rounded down.
        (800, vec![(c1, 266), (c2, 533)]),
        (3000, vec![(c1, 2250), (c2, 750)]),
        // 5000 · 400/1400 and 5000 · 1000/1400, rounded down.
        (5000, vec![(c1, 1428), (c2, 3571)]),
    ];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let got = traffic_reports(&reg, node).await;
        if got.len() >= want.len() {
            assert_eq!(got, want);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for the traffic reports: {got:?}, {:?}",
            *agent.status.borrow()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Nothing new counted: no more traffic reports.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(traffic_reports(&reg, node).await, want);
    let s = agent.shutdown().await;
    assert_eq!(s.last_error, None, "{s:?}");
    provision.abort();
}
