//! The runtime and its socket for real on this host (as root): a busybox image built by the
//! test and served by `docker-registry` on 127.0.0.1, containers applied, watched, restarted,
//! changed and removed. cgroup v2 limits need a cgroup v2 host: the end-to-end test on a
//! booted node checks them.

// A failed unwrap, expect or assertion is a failed test: the workspace's deny of them is
// for product code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use gridtypes::deployment::Deployment;
use gridtypes::mailbox::{DeploymentState, WorkloadStatus};
use provision::service::{self, Client, Peers, Request, Response};
use provision::{Config, Runtime};
use serde_json::json;
use test_infra::oci::OciRegistry;

/// The twin the test's contracts belong to: a key's hex (ed25519's base point), passed on
/// with networks off.
const TWIN: &str = "5866666666666666666666666666666666666666666666666666666666666666";

struct Rig {
    _reg: OciRegistry,
    dir: tempfile::TempDir,
    image: String,
}

async fn rig() -> Option<Rig> {
    test_infra::require_root("mounts overlayfs and makes namespaces").ok()?;
    let bin = test_infra::require_tool("docker-registry").ok()?;
    let busybox = test_infra::require_tool("busybox").ok()?;
    let reg = OciRegistry::start(&bin).unwrap();
    let image = reg.push_busybox(&busybox).await.unwrap();
    Some(Rig {
        _reg: reg,
        dir: tempfile::tempdir().unwrap(),
        image,
    })
}

impl Rig {
    fn config(&self) -> Config {
        let mut cfg = Config::new(&self.dir.path().join("workloads"));
        cfg.plain_http = vec![self.image.split('/').next().unwrap().to_string()];
        cfg.stop_timeout = Duration::from_secs(2);
        cfg.log_bytes = 4096;
        cfg
    }

    fn deployment(&self, version: u64, containers: &[(&str, &str, &str)]) -> Deployment {
        let workloads: Vec<_> = containers
            .iter()
            .map(|(name, script, restart)| {
                json!({"kind": "container", "name": name, "image": self.image,
                       "cmd": ["-c", script], "restart": restart,
                       "resources": {"cru": 1, "mru": 64 << 20, "sru": 64 << 20}})
            })
            .collect();
        let d: Deployment = serde_json::from_value(
            json!({"contract_id": 7, "version": version, "workloads": workloads}),
        )
        .unwrap();
        d.validate().unwrap();
        d
    }
}

fn state(s: &[WorkloadStatus], name: &str) -> (DeploymentState, String) {
    let w = s.iter().find(|w| w.name == name).unwrap();
    (w.state, w.reason.clone().unwrap_or_default())
}

/// Waits until `f` holds for the contract's statuses.
async fn until(rt: &Runtime, what: &str, f: impl Fn(&[WorkloadStatus]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = rt.statuses(7).await;
        if f(&s) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn log(rt: &Runtime, name: &str) -> String {
    String::from_utf8(rt.logs(7, name, 1 << 20).await.unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_run_restart_by_policy_change_and_go() {
    let Some(rig) = rig().await else { return };
    let rt = Runtime::open(rig.config()).unwrap();
    let d = rig.deployment(
        1,
        &[
            (
                "web",
                "echo hello from $(hostname); exec sleep 1000",
                "on_failure",
            ),
            ("job", "echo done", "on_failure"),
            ("crash", "echo crashing; exit 3", "on_failure"),
            ("once", "exit 4", "never"),
        ],
    );
    let s = rt.apply(7, TWIN, &d).await;
    assert_eq!(s.len(), 4);
    assert_eq!(state(&s, "web").0, DeploymentState::Running, "{s:?}");
    until(&rt, "a finished job is exited", |s| {
        state(s, "job") == (DeploymentState::Exited, "exited with status 0".into())
    })
    .await;
    until(&rt, "a crash is restarted", |s| {
        let (st, why) = state(s, "crash");
        st == DeploymentState::Failed && why.contains("exited with status 3; starting again")
    })
    .await;
    until(&rt, "never restarted", |s| {
        state(s, "once") == (DeploymentState::Failed, "exited with status 4".into())
    })
    .await;
    assert_eq!(log(&rt, "web").await, "hello from web\n");
    // Restarted (after 1 s, then 2 s): its log grows with each run.
    let deadline = Instant::now() + Duration::from_secs(10);
    while log(&rt, "crash").await.lines().count() < 2 {
        assert!(Instant::now() < deadline, "crash was not started again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let containers = rig.dir.path().join("workloads/containers");
    assert!(containers.join("c7-web/upper").is_dir());

    // Version 2 keeps web as it is, changes job, drops the rest.
    let d2 = rig.deployment(
        2,
        &[
            (
                "web",
                "echo hello from $(hostname); exec sleep 1000",
                "on_failure",
            ),
            ("job", "echo second; exec sleep 1000", "always"),
        ],
    );
    let s = rt.apply(7, TWIN, &d2).await;
    assert_eq!(s.len(), 2);
    assert!(
        s.iter().all(|w| w.state == DeploymentState::Running),
        "{s:?}"
    );
    assert_eq!(
        log(&rt, "web").await,
        "hello from web\n",
        "web kept running"
    );
    assert!(!containers.join("c7-crash").exists());
    assert!(!containers.join("c7-once").exists());
    let deadline = Instant::now() + Duration::from_secs(10);
    while log(&rt, "job").await.is_empty() {
        assert!(Instant::now() < deadline, "job printed nothing");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        log(&rt, "job").await,
        "second\n",
        "a changed container starts afresh"
    );
    assert!(rt.logs(7, "crash", 100).await.is_err());

    // Removal stops what runs (sleep ignores nothing: SIGTERM to a PID 1 without a handler
    // is dropped, so this takes the SIGKILL path) and leaves nothing.
    let started = Instant::now();
    rt.remove(7).await;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(rt.statuses(7).await.is_empty());
    assert_eq!(std::fs::read_dir(&containers).unwrap().count(), 0);
    let logs = rig.dir.path().join("workloads/logs");
    assert_eq!(std::fs::read_dir(&logs).unwrap().count(), 0);
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_cannot_run_is_failed_with_the_reason_and_leaves_nothing() {
    let Some(rig) = rig().await else { return };
    let rt = Runtime::open(rig.config()).unwrap();
    let mut d = rig.deployment(1, &[("web", "exec sleep 1000", "never")]);
    let good = d.workloads[0].clone();
    // An image that is not there, one bigger than the reservation, a missing program.
    let mut missing: serde_json::Value = serde_json::to_value(&good).unwrap();
    missing["name"] = json!("missing");
    missing["image"] = json!(format!("{}-nope", rig.image));
    let mut big = serde_json::to_value(&good).unwrap();
    big["name"] = json!("big");
    big["resources"]["sru"] = json!(4096);
    let mut noprog = serde_json::to_value(&good).unwrap();
    noprog["name"] = json!("noprog");
    noprog["entrypoint"] = json!(["/bin/nothing"]);
    for w in [missing, big, noprog] {
        d.workloads.push(serde_json::from_value(w).unwrap());
    }
    let s = rt.apply(7, TWIN, &d).await;
    assert_eq!(state(&s, "web").0, DeploymentState::Running);
    let (st, why) = state(&s, "missing");
    assert_eq!(st, DeploymentState::Failed);
    assert!(why.contains("nope"), "{why}");
    let (st, why) = state(&s, "big");
    assert_eq!(st, DeploymentState::Failed);
    assert!(why.contains("4096"), "{why}");
    let (st, why) = state(&s, "noprog");
    assert_eq!(st, DeploymentState::Failed);
    assert!(why.contains("executing the program"), "{why}");
    let containers = rig.dir.path().join("workloads/containers");
    let mut left: Vec<_> = std::fs::read_dir(&containers)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    // The failed start made its directory; it goes with the contract.
    assert!(left.contains(&"c7-web".to_string()), "{left:?}");
    assert!(!left.contains(&"c7-missing".to_string()));
    rt.remove(7).await;
    assert_eq!(std::fs::read_dir(&containers).unwrap().count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_keeps_only_the_capabilities_it_is_given() {
    let Some(rig) = rig().await else { return };
    let rt = Runtime::open(rig.config()).unwrap();
    let d = rig.deployment(
        1,
        &[(
            "caps",
            "grep -E 'Cap(Inh|Bnd|Amb)' /proc/self/status; exec sleep 1000",
            "never",
        )],
    );
    rt.apply(7, TWIN, &d).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let out = loop {
        let out = log(&rt, "caps").await;
        if out.lines().count() >= 3 {
            break out;
        }
        assert!(Instant::now() < deadline, "{out}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let last: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let all = if last >= 63 {
        u64::MAX
    } else {
        (1u64 << (last + 1)) - 1
    };
    let field = |name: &str| {
        let line = out.lines().find(|l| l.starts_with(name)).unwrap();
        u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
    };
    assert_eq!(
        field("CapBnd:"),
        provision::container::KEPT_CAPABILITIES & all
    );
    assert_eq!(field("CapInh:"), 0);
    assert_eq!(field("CapAmb:"), 0);
    // No CAP_MKNOD (27) nor CAP_SYS_ADMIN (21) nor CAP_SYS_MODULE (16).
    for cap in [16, 21, 27] {
        assert_eq!(field("CapBnd:") & (1 << cap), 0, "cap {cap}");
    }
    rt.remove(7).await;
}

/// The socket: hello with the instance, requests answered, hostile lines refused, and a
/// new instance seen by the client as a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_serves_the_agent_and_refuses_garbage() {
    const IDLE: Duration = Duration::from_secs(3);
    let Some(rig) = rig().await else { return };
    let rt = Arc::new(Runtime::open(rig.config()).unwrap());
    let sock = rig.dir.path().join("provision.sock");
    let serve = |instance: &str| {
        let listener = tokio::net::UnixListener::bind(&sock).unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(service::serve(
            listener,
            rt.clone(),
            Peers {
                gid: 4242,
                idle: IDLE,
            },
            instance.to_string(),
            async {
                let _ = stop_rx.await;
            },
        ));
        (stop_tx, task)
    };
    let (stop, task) = serve("first");
    let client = Client::new(&sock);
    let d = rig.deployment(1, &[("web", "exec sleep 1000", "never")]);
    let answer = client
        .call(
            &Request::Apply {
                contract: 7,
                twin: TWIN.into(),
                deployment: d.clone(),
            },
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    let Response::Workloads { workloads } = answer else {
        panic!("{answer:?}")
    };
    assert_eq!(workloads[0].state, DeploymentState::Running);
    // An invalid deployment is refused before anything runs.
    let mut bad = d.clone();
    bad.workloads.push(bad.workloads[0].clone());
    let answer = client
        .call(
            &Request::Apply {
                contract: 8,
                twin: TWIN.into(),
                deployment: bad,
            },
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert!(matches!(answer, Response::Error { .. }), "{answer:?}");
    assert!(rt.statuses(8).await.is_empty());
    // So is one for a twin that is not a key.
    let answer = client
        .call(
            &Request::Apply {
                contract: 8,
                twin: "not-a-key".into(),
                deployment: d.clone(),
            },
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert!(
        matches!(&answer, Response::Error { message } if message.contains("twin key")),
        "{answer:?}"
    );
    assert!(rt.statuses(8).await.is_empty());
    let answer = client
        .call(
            &Request::Logs {
                contract: 7,
                workload: "nope".into(),
                max_bytes: 10,
            },
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert!(matches!(answer, Response::Error { .. }), "{answer:?}");

    // Raw garbage: a malformed line is answered; an endless line ends the connection.
    {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let s = tokio::net::UnixStream::connect(&sock).await.unwrap();
        let (r, mut w) = s.into_split();
        let mut r = BufReader::new(r).lines();
        assert!(r.next_line().await.unwrap().unwrap().contains("hello"));
        for garbage in [
            "not json",
            r#"{"op":"apply","contract":7}"#,
            r#"{"op":"remove","contract":7,"extra":1}"#,
            r#"{"op":"format_disks"}"#,
        ] {
            w.write_all(format!("{garbage}\n").as_bytes())
                .await
                .unwrap();
            let line = r.next_line().await.unwrap().unwrap();
            assert!(line.contains("malformed request"), "{garbage}: {line}");
        }
        let huge = vec![b'x'; service::MAX_LINE + 10];
        let _ = w.write_all(&huge).await;
        assert!(r.next_line().await.map(|l| l.is_none()).unwrap_or(true));
    }
    assert_eq!(rt.statuses(7).await.len(), 1, "garbage changed nothing");

    // A flood of connections that say nothing: past MAX_CONNECTIONS (the client above holds
    // one) the next is hung up on; the idle ones are closed after IDLE, half a request
    // (a slow client) included, and the agent's client goes on over a new connection.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let hello = |mut s: tokio::net::UnixStream| async move {
            let mut b = [0u8; 64];
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b))
                .await
                .map(|r| r.unwrap_or(0))
                .unwrap_or(0);
            (s, String::from_utf8_lossy(&b[..n]).into_owned())
        };
        // The client's connection is fresh (not about to be closed as idle) for the count.
        client
            .call(&Request::Statuses { contract: 7 }, Duration::from_secs(10))
            .await
            .unwrap();
        let mut idle = Vec::new();
        for i in 0..service::MAX_CONNECTIONS - 1 {
            let s = tokio::net::UnixStream::connect(&sock).await.unwrap();
            let (mut s, said) = hello(s).await;
            assert!(said.contains("hello"), "connection {i}: {said:?}");
            if i == 0 {
                s.write_all(br#"{"op":"#).await.unwrap();
            }
            idle.push(s);
        }
        let s = tokio::net::UnixStream::connect(&sock).await.unwrap();
        let (_, said) = hello(s).await;
        assert_eq!(said, "", "a connection past the limit was served");
        tokio::time::sleep(IDLE + Duration::from_secs(1)).await;
        for (i, mut s) in idle.into_iter().enumerate() {
            let mut rest = Vec::new();
            let n = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
                .await
                .expect("an idle connection stayed open")
                .unwrap_or(0);
            assert_eq!(n, 0, "connection {i} got {rest:?}");
        }
        let s = tokio::net::UnixStream::connect(&sock).await.unwrap();
        let (_, said) = hello(s).await;
        assert!(said.contains("hello"), "no slot came free: {said:?}");
        let answer = client
            .call(&Request::Statuses { contract: 7 }, Duration::from_secs(10))
            .await
            .unwrap();
        assert!(matches!(answer, Response::Workloads { .. }), "{answer:?}");
    }

    // A process that is neither root nor in the agent's group is hung up on before the
    // hello, even when the socket's mode would let it connect.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(rig.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let stranger = {
        let sock = sock.clone();
        std::thread::spawn(move || {
            // SAFETY: raw system calls change the credentials of this thread only (glibc's
            // wrappers would change every thread of the test process).
            unsafe {
                assert_eq!(libc::syscall(libc::SYS_setresgid, 65534, 65534, 65534), 0);
                assert_eq!(libc::syscall(libc::SYS_setresuid, 65534, 65534, 65534), 0);
            }
            let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut got = Vec::new();
            std::io::Read::read_to_end(&mut s, &mut got).map(|_| got)
        })
    };
    // Hung up on: an empty read or a reset, never a hello nor a connection left open
    // (which would end in the read's timeout).
    match stranger.join().unwrap() {
        Ok(got) => assert!(got.is_empty(), "a stranger was answered: {got:?}"),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }

    // The service goes and comes back as a new instance: the client is told once.
    stop.send(()).unwrap();
    task.await.unwrap();
    std::fs::remove_file(&sock).unwrap();
    assert!(!client.take_restarted());
    let (_stop, _task) = serve("second");
    let answer = client
        .call(&Request::Statuses { contract: 7 }, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(matches!(answer, Response::Workloads { .. }), "{answer:?}");
    assert!(client.take_restarted());
    assert!(!client.take_restarted());
    rt.remove(7).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_outlive_their_containers_and_go_with_the_deployment() {
    let Some(rig) = rig().await else { return };
    let rt = Runtime::open(rig.config()).unwrap();
    let with_volume = |version: u64, script: &str| -> Deployment {
        let v = json!({"kind": "volume", "name": "data", "size": 8 << 20});
        let c = json!({"kind": "container", "name": "app", "image": rig.image,
                       "cmd": ["-c", script], "restart": "never",
                       "mounts": [{"volume": "data", "path": "/var/data"}],
                       "resources": {"cru": 1, "mru": 64 << 20, "sru": 64 << 20}});
        let d: Deployment = serde_json::from_value(
            json!({"contract_id": 7, "version": version, "workloads": [v, c]}),
        )
        .unwrap();
        d.validate().unwrap();
        d
    };
    let s = rt
        .apply(
            7,
            TWIN,
            &with_volume(1, "echo kept > /var/data/file; exec sleep 1000"),
        )
        .await;
    let (st, note) = state(&s, "data");
    assert_eq!(st, DeploymentState::Running);
    // This host's /tmp is no btrfs: the size is not enforced, and the status says so.
    assert!(note.contains("not enforced") || note.is_empty(), "{note}");
    assert_eq!(state(&s, "app").0, DeploymentState::Running);
    let file = rig.dir.path().join("workloads/volumes/c7-data/file");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !file.exists() {
        assert!(
            Instant::now() < deadline,
            "the container did not write to its volume"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A new version of the container finds what the old one wrote.
    let s = rt
        .apply(
            7,
            TWIN,
            &with_volume(2, "cat /var/data/file; exec sleep 1000"),
        )
        .await;
    assert_eq!(state(&s, "app").0, DeploymentState::Running);
    let deadline = Instant::now() + Duration::from_secs(10);
    while log(&rt, "app").await != "kept\n" {
        assert!(Instant::now() < deadline, "{:?}", log(&rt, "app").await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A version without it deletes it; so does removing the contract.
    let empty: Deployment =
        serde_json::from_value(json!({"contract_id": 7, "version": 3, "workloads": []})).unwrap();
    assert!(rt.apply(7, TWIN, &empty).await.is_empty());
    assert!(!file.parent().unwrap().exists());
    rt.apply(7, TWIN, &with_volume(4, "exec sleep 1000")).await;
    assert!(file.parent().unwrap().exists());
    rt.remove(7).await;
    assert!(!file.parent().unwrap().exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_writes_no_more_than_the_disk_it_reserved() {
    let Some(rig) = rig().await else { return };
    // The runtime's state on btrfs, as on a node's cache partition.
    let Some(fs) = test_infra::btrfs::LoopBtrfs::new(512 << 20) else {
        return;
    };
    let mut cfg = rig.config();
    cfg.root = fs.mnt.join("workloads");
    let rt = Runtime::open(cfg.clone()).unwrap();
    // 16 MiB of disk: the image (about 1 MiB) and the rest for what it writes.
    let script = "dd if=/dev/zero of=/small bs=1M count=4 conv=fsync 2>/dev/null && echo small-ok; \
                  dd if=/dev/zero of=/big bs=1M count=64 conv=fsync; echo dd-ended; exec sleep 1000";
    let d: Deployment =
        serde_json::from_value(json!({"contract_id": 7, "version": 1, "workloads": [
        {"kind": "container", "name": "filler", "image": rig.image, "cmd": ["-c", script],
         "restart": "never", "resources": {"cru": 1, "mru": 64 << 20, "sru": 16 << 20}}]}))
        .unwrap();
    d.validate().unwrap();
    let s = rt.apply(7, TWIN, &d).await;
    assert_eq!(state(&s, "filler").0, DeploymentState::Running, "{s:?}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let said = loop {
        let said = log(&rt, "filler").await;
        if said.contains("dd-ended") {
            break said;
        }
        assert!(Instant::now() < deadline, "filler printed {said:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(said.contains("small-ok"), "{said}");
    assert!(
        said.contains("Disk quota exceeded"),
        "64 MiB fit in 16: {said}"
    );
    // Its writable layer is a subvolume of its own, and goes with the container.
    let dir = cfg.root.join("containers").join("c7-filler");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&dir).unwrap().ino(), 256);
    rt.remove(7).await;
    assert!(!dir.exists());
    // A writable layer a previous run left is removed at the next open.
    let made = std::process::Command::new("btrfs")
        .args(["subvolume", "create"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    std::fs::write(dir.join("left"), "x").unwrap();
    drop(rt);
    Runtime::open(cfg.clone()).unwrap();
    assert!(!dir.exists());
}
