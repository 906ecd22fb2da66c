//! Host tests: the real `init --supervisor-only` process, driven over its control socket.

// A failed unwrap, expect or assertion is a failed test: the workspace's deny of them is
// for product code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use control::{connect, InitProxy};

/// A supervisor process over a temporary services directory; killed on drop.
struct Harness {
    dir: tempfile::TempDir,
    child: Child,
    socket: PathBuf,
}

impl Harness {
    fn start(services: &[(&str, &str)]) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let sdir = dir.path().join("services");
        std::fs::create_dir(&sdir).expect("mkdir");
        for (name, text) in services {
            let text = text.replace("$DIR", &dir.path().display().to_string());
            std::fs::write(sdir.join(format!("{name}.yaml")), text).expect("write");
        }
        let socket = dir.path().join("ctl.sock");
        let child = Command::new(env!("CARGO_BIN_EXE_init"))
            .args(["--supervisor-only", "--services"])
            .arg(&sdir)
            .arg("--socket")
            .arg(&socket)
            .arg("--log-dir")
            .arg(dir.path().join("logs"))
            .arg("--log-level")
            .arg("debug")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn init");
        Harness { dir, child, socket }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    async fn client(&self) -> InitProxy<'static> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match connect(&self.socket).await {
                Ok(p) => return p,
                Err(e) if Instant::now() > deadline => panic!("cannot connect: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the supervisor to exit and returns whether it exited 0.
    fn wait_exit(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for Harness {
    /// Stops the supervisor the polite way, so its services do not outlive the test.
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        if !self.wait_exit(Duration::from_secs(15)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

async fn state(p: &InitProxy<'_>, name: &str) -> (String, u32, u32) {
    let (_, s, pid, restarts, _, _) = p.status(name).await.expect("status");
    (s, pid, restarts)
}

async fn wait_state(p: &InitProxy<'_>, name: &str, want: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let (s, _, _) = state(p, name).await;
        if s == want {
            return;
        }
        assert!(Instant::now() < deadline, "{name} is {s}, wanted {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

const SECS: Duration = Duration::from_secs(10);

#[tokio::test]
async fn starts_in_dependency_order_and_stops_in_reverse() {
    let svc = |name: &str, after: &str| {
        format!(
            "exec: sh -c 'echo start-{name} >> $DIR/order; trap \"echo stop-{name} >> $DIR/order; exit 0\" TERM; while :; do sleep 0.05; done'\nafter: [{after}]\ntest: grep -q start-{name} $DIR/order\n"
        )
    };
    let (a, b, c) = (svc("a", ""), svc("b", "a"), svc("c", "b"));
    let mut h = Harness::start(&[("c", &c), ("a", &a), ("b", &b)]);
    let p = h.client().await;
    for n in ["a", "b", "c"] {
        wait_state(&p, n, "running", SECS).await;
    }
    assert_eq!(read(&h.path("order")), "start-a\nstart-b\nstart-c\n");
    p.power("shutdown").await.expect("shutdown");
    assert!(h.wait_exit(SECS), "supervisor did not exit cleanly");
    assert_eq!(
        read(&h.path("order")),
        "start-a\nstart-b\nstart-c\nstop-c\nstop-b\nstop-a\n"
    );
}

#[tokio::test]
async fn oneshot_completes_before_dependents_start() {
    let h = Harness::start(&[
        (
            "setup",
            "exec: sh -c 'sleep 0.5; touch $DIR/prepared'\noneshot: true\n",
        ),
        (
            "app",
            "exec: sh -c 'test -f $DIR/prepared && echo saw-prepared; exec sleep 100'\nafter: [setup]\n",
        ),
    ]);
    let p = h.client().await;
    wait_state(&p, "setup", "success", SECS).await;
    wait_state(&p, "app", "running", SECS).await;
    let deadline = Instant::now() + SECS;
    loop {
        let (lines, _) = p.log("app", 0).await.expect("log");
        if lines.iter().any(|l| l == "saw-prepared") {
            break;
        }
        assert!(Instant::now() < deadline, "app log: {lines:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn health_test_gates_dependents() {
    let h = Harness::start(&[
        (
            "db",
            "exec: sh -c 'sleep 1; touch $DIR/ready; exec sleep 100'\ntest: test -f $DIR/ready\n",
        ),
        (
            "web",
            "exec: sh -c 'test -f $DIR/ready && echo db-was-ready > $DIR/web; exec sleep 100'\nafter: [db]\n",
        ),
    ]);
    let p = h.client().await;
    wait_state(&p, "db", "starting", SECS).await;
    let web = state(&p, "web").await.0;
    if !h.path("ready").exists() {
        assert_eq!(web, "waiting", "web started before db's test passed");
    }
    wait_state(&p, "web", "running", SECS).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(read(&h.path("web")), "db-was-ready\n");
}

#[tokio::test]
async fn killed_service_is_restarted() {
    let h = Harness::start(&[("victim", "exec: sleep 100\n")]);
    let p = h.client().await;
    wait_state(&p, "victim", "running", SECS).await;
    let (_, pid, _) = state(&p, "victim").await;
    assert!(pid > 0);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9");
    let deadline = Instant::now() + SECS;
    loop {
        let (s, new_pid, restarts) = state(&p, "victim").await;
        if s == "running" && new_pid != pid && new_pid > 0 {
            assert!(restarts >= 1);
            break;
        }
        assert!(Instant::now() < deadline, "not restarted: {s} {new_pid}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Zombie children of `parent`, from /proc.
fn zombies_of(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("proc").flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = read(&e.path().join("stat"));
        // "pid (comm) S ppid ...": split after the last ')'.
        if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
            let f: Vec<&str> = rest.split_whitespace().collect();
            if f.first() == Some(&"Z") && f.get(1) == Some(&parent.to_string().as_str()) {
                out.push(pid);
            }
        }
    }
    out
}

#[tokio::test]
async fn double_forked_orphan_is_reaped() {
    // The inner shell is orphaned at once and reparented to the supervisor (subreaper).
    let h = Harness::start(&[(
        "forker",
        "exec: sh -c '(sh -c \"echo \\$\\$ > $DIR/orphan; sleep 0.3\" &); exec sleep 100'\n",
    )]);
    let p = h.client().await;
    wait_state(&p, "forker", "running", SECS).await;
    let deadline = Instant::now() + SECS;
    while read(&h.path("orphan")).is_empty() {
        assert!(Instant::now() < deadline, "orphan never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let orphan: u32 = read(&h.path("orphan")).trim().parse().expect("orphan pid");
    let deadline = Instant::now() + SECS;
    loop {
        let gone = !Path::new(&format!("/proc/{orphan}")).exists();
        if gone && zombies_of(h.pid()).is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "orphan {orphan} not reaped; zombies: {:?}",
            zombies_of(h.pid())
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn output_is_captured_in_ring_and_file() {
    let h = Harness::start(&[(
        "talker",
        "exec: sh -c 'echo out-line; echo err-line >&2; exec sleep 100'\nlog: file\n",
    )]);
    let p = h.client().await;
    let deadline = Instant::now() + SECS;
    loop {
        let (lines, next) = p.log("talker", 0).await.expect("log");
        if lines.len() >= 2 {
            assert!(lines.contains(&"out-line".to_string()), "{lines:?}");
            assert!(lines.contains(&"err-line".to_string()), "{lines:?}");
            assert_eq!(next, 2);
            assert!(p.log("talker", next).await.expect("log").0.is_empty());
            break;
        }
        assert!(Instant::now() < deadline, "log: {lines:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let file = read(&h.path("logs/talker.log"));
    assert!(
        file.contains("out-line") && file.contains("err-line"),
        "{file}"
    );
}

#[tokio::test]
async fn control_commands_and_blocked_services() {
    let h = Harness::start(&[
        ("svc", "exec: sleep 100\n"),
        (
            "stubborn",
            "exec: sh -c 'trap \"\" TERM; while :; do sleep 0.05; done'\nshutdown_timeout: 1\n",
        ),
        ("loop1", "exec: sleep 100\nafter: [loop2]\n"),
        ("loop2", "exec: sleep 100\nafter: [loop1]\n"),
        ("broken", "exec: sleep 100\nrestart: always\n"),
        ("child", "exec: sleep 100\nafter: [broken]\n"),
    ]);
    let p = h.client().await;
    wait_state(&p, "svc", "running", SECS).await;
    let rows = p.list().await.expect("list");
    assert_eq!(rows.len(), 6);
    for n in ["loop1", "loop2", "broken", "child"] {
        let (_, s, _, _, reason, _) = p.status(n).await.expect("status");
        assert_eq!(s, "blocked", "{n}");
        assert!(!reason.is_empty());
    }
    assert!(p.start("loop1").await.is_err());
    assert!(p.status("nope").await.is_err());

    p.stop("svc").await.expect("stop");
    assert_eq!(state(&p, "svc").await.0, "stopped");
    p.start("svc").await.expect("start");
    wait_state(&p, "svc", "running", SECS).await;
    let before = state(&p, "svc").await.1;
    p.restart("svc").await.expect("restart");
    wait_state(&p, "svc", "running", SECS).await;
    assert_ne!(state(&p, "svc").await.1, before);

    // A service that ignores SIGTERM is killed after its shutdown_timeout.
    wait_state(&p, "stubborn", "running", SECS).await;
    let t = Instant::now();
    p.stop("stubborn").await.expect("stop stubborn");
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
    assert!(t.elapsed() < Duration::from_secs(8));
    assert_eq!(state(&p, "stubborn").await.0, "stopped");
}

#[tokio::test]
async fn long_lines_are_cut_not_buffered() {
    let h = Harness::start(&[(
        "flood",
        "exec: sh -c 'head -c 100000 /dev/zero | tr \"\\0\" x; echo; exec sleep 100'\n",
    )]);
    let p = h.client().await;
    let deadline = Instant::now() + SECS;
    loop {
        let (lines, _) = p.log("flood", 0).await.expect("log");
        let total: usize = lines.iter().map(String::len).sum();
        if total >= 100_000 {
            assert!(lines.iter().all(|l| l.len() <= init::ring::MAX_LINE));
            assert!(lines.len() >= 100_000 / init::ring::MAX_LINE);
            break;
        }
        assert!(Instant::now() < deadline, "only {total} bytes captured");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn sigterm_stops_services_and_exits_cleanly() {
    let mut h = Harness::start(&[
        (
            "base",
            "exec: sh -c 'trap \"echo stop-base >> $DIR/order; exit 0\" TERM; while :; do sleep 0.05; done'\n",
        ),
        (
            "top",
            "exec: sh -c 'trap \"echo stop-top >> $DIR/order; exit 0\" TERM; while :; do sleep 0.05; done'\nafter: [base]\n",
        ),
    ]);
    let p = h.client().await;
    wait_state(&p, "top", "running", SECS).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(h.pid() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    assert!(h.wait_exit(SECS), "supervisor did not exit 0 on SIGTERM");
    assert_eq!(read(&h.path("order")), "stop-top\nstop-base\n");
    assert!(!h.socket.exists(), "socket left behind");
}

#[tokio::test]
async fn hostile_control_clients_do_not_hurt_the_supervisor() {
    use std::io::Write;
    let h = Harness::start(&[("svc", "exec: sleep 100\n")]);
    let p = h.client().await;
    wait_state(&p, "svc", "running", SECS).await;
    // Garbage instead of the D-Bus handshake, a half handshake, and a client that vanishes.
    for junk in [
        &b"\xff\xfe garbage \x00\x01\x02"[..],
        b"\0AUTH EXTERNAL 30\r\nBEGIN\r\n\x6c\x01\x00\x01\xff\xff\xff\xff",
        b"",
    ] {
        let mut s = std::os::unix::net::UnixStream::connect(&h.socket).expect("connect");
        let _ = s.write_all(junk);
        drop(s);
    }
    let many: Vec<_> = (0..20)
        .map(|_| std::os::unix::net::UnixStream::connect(&h.socket).expect("connect"))
        .collect();
    drop(many);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let p2 = h.client().await;
    assert_eq!(p2.list().await.expect("list").len(), 1);
    assert_eq!(state(&p, "svc").await.0, "running");
    assert!(p2.power("explode").await.is_err());
    assert!(p2.log("../../etc/passwd", 0).await.is_err());
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test]
async fn silent_clients_are_dropped_after_the_handshake_timeout() {
    let h = Harness::start(&[("svc", "exec: sleep 100\n")]);
    let p = h.client().await;
    wait_state(&p, "svc", "running", SECS).await;
    let baseline = open_fds(h.pid());
    let silent: Vec<_> = (0..10)
        .map(|_| std::os::unix::net::UnixStream::connect(&h.socket).expect("connect"))
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(open_fds(h.pid()) >= baseline + 10);
    let deadline = Instant::now() + Duration::from_secs(15);
    while open_fds(h.pid()) > baseline + 1 {
        assert!(
            Instant::now() < deadline,
            "silent peers still hold {} fds (baseline {baseline})",
            open_fds(h.pid())
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(silent);
    assert_eq!(p.list().await.expect("list").len(), 1);
}

/// The log lines of `name` once one starts with `last`.
async fn log_until(p: &InitProxy<'_>, name: &str, last: &str) -> Vec<String> {
    let deadline = Instant::now() + SECS;
    loop {
        let (lines, _) = p.log(name, 0).await.expect("log");
        if lines.iter().any(|l| l.starts_with(last)) {
            return lines;
        }
        assert!(Instant::now() < deadline, "{name} log: {lines:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn field<'a>(lines: &'a [String], key: &str) -> &'a str {
    lines
        .iter()
        .find_map(|l| l.strip_prefix(key))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {key} in {lines:?}"))
}

#[tokio::test]
async fn services_run_with_their_user_capabilities_and_no_new_privs() {
    let Ok(()) = test_infra::require_root("switches services to other users") else {
        return;
    };
    let show = "exec: sh -c 'grep -E \"^(Uid|Gid|CapEff|CapBnd|CapAmb|NoNewPrivs)\" /proc/self/status; exec sleep 100'";
    let h = Harness::start(&[
        (
            "confined",
            &format!("{show}\nuser: \"65534\"\ngroup: \"65533\"\ncapabilities: [net_raw]\nstate_dirs: [$DIR/state]\n"),
        ),
        ("rootless-caps", &format!("{show}\ncapabilities: []\nno_new_privs: false\n")),
    ]);
    let p = h.client().await;
    wait_state(&p, "confined", "running", SECS).await;
    let lines = log_until(&p, "confined", "NoNewPrivs").await;
    assert!(
        field(&lines, "Uid:").starts_with("65534\t65534"),
        "{lines:?}"
    );
    assert!(
        field(&lines, "Gid:").starts_with("65533\t65533"),
        "{lines:?}"
    );
    // CAP_NET_RAW is bit 13: the only capability left, kept across exec as an ambient one.
    for key in ["CapBnd:", "CapEff:", "CapAmb:"] {
        assert_eq!(field(&lines, key), "0000000000002000", "{key} {lines:?}");
    }
    assert_eq!(field(&lines, "NoNewPrivs:"), "1");
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(h.path("state")).expect("state dir");
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o777),
        (65534, 65533, 0o700)
    );

    wait_state(&p, "rootless-caps", "running", SECS).await;
    let lines = log_until(&p, "rootless-caps", "NoNewPrivs").await;
    assert!(field(&lines, "Uid:").starts_with("0\t0"), "{lines:?}");
    for key in ["CapBnd:", "CapEff:", "CapAmb:"] {
        assert_eq!(field(&lines, key), "0000000000000000", "{key} {lines:?}");
    }
    assert_eq!(field(&lines, "NoNewPrivs:"), "0");
}

#[tokio::test]
async fn an_unknown_user_keeps_the_service_from_starting() {
    let h = Harness::start(&[("ghost", "exec: sleep 100\nuser: no-such-user-here\n")]);
    let p = h.client().await;
    let deadline = Instant::now() + SECS;
    loop {
        let (st, pid, _) = state(&p, "ghost").await;
        assert_eq!(pid, 0, "started without its user");
        if st == "failed" || st == "backoff" {
            break;
        }
        assert!(Instant::now() < deadline, "state {st}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
