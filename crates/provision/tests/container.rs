//! Containers started for real on this host (as root): busybox from Debian's busybox-static in
//! a layer, an overlayfs root, its own namespaces. cgroup v2 limits need a cgroup v2 host and
//! are checked on a booted node (the end-to-end test).

// A failed unwrap, expect or assertion is a failed test: the workspace's deny of them is
// for product code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Read;
use std::path::{Path, PathBuf};

use nix::sys::wait::{waitpid, WaitStatus};
use provision::container::{self, Bind, ContainerError, Spec};

struct Host {
    dir: tempfile::TempDir,
    layer: PathBuf,
}

fn host() -> Option<Host> {
    test_infra::require_root("mounts overlayfs and makes namespaces").ok()?;
    let busybox = test_infra::require_tool("busybox").ok()?;
    let dir = tempfile::tempdir().unwrap();
    let layer = dir.path().join("layer");
    std::fs::create_dir_all(layer.join("bin")).unwrap();
    std::fs::create_dir_all(layer.join("etc")).unwrap();
    std::fs::copy(busybox, layer.join("bin/busybox")).unwrap();
    for tool in ["sh", "echo", "cat", "hostname", "id", "ls", "touch", "grep"] {
        std::os::unix::fs::symlink("busybox", layer.join("bin").join(tool)).unwrap();
    }
    std::fs::write(layer.join("etc/motd"), "from the image\n").unwrap();
    Some(Host { dir, layer })
}

fn spec(h: &Host, id: &str, script: &str) -> Spec {
    Spec {
        id: id.to_string(),
        hostname: id.to_string(),
        layers: vec![h.layer.clone()],
        args: vec!["sh".into(), "-c".into(), script.into()],
        env: vec!["PATH=/bin".into(), "GREETING=hi".into()],
        workdir: "/".into(),
        uid: 0,
        gid: 0,
        cgroup: None,
        binds: Vec::new(),
    }
}

/// Runs a container to its end: its exit code and everything it printed.
fn run(root: &Path, s: &Spec) -> (i32, String) {
    let started = container::start(root, s).unwrap();
    let mut out = String::new();
    std::fs::File::from(started.output)
        .read_to_string(&mut out)
        .unwrap();
    match waitpid(started.pid, None).unwrap() {
        WaitStatus::Exited(_, code) => (code, out),
        other => panic!("{other:?}: {out}"),
    }
}

#[test]
fn a_container_runs_in_its_own_namespaces_on_its_own_root() {
    let Some(h) = host() else { return };
    let root = h.dir.path().join("containers");
    let (code, out) = run(
        &root,
        &spec(
            &h,
            "web-1",
            "echo pid $$; hostname; cat /etc/motd; echo $GREETING; echo to-stderr >&2; \
             cat /proc/net/dev | tail -n +3 | cut -d: -f1; touch /written; ls /",
        ),
    );
    assert_eq!(code, 0, "{out}");
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert_eq!(lines[0], "pid 1", "its own PID namespace: {out}");
    assert_eq!(lines[1], "web-1", "its own host name: {out}");
    assert_eq!(lines[2], "from the image");
    assert_eq!(lines[3], "hi");
    assert!(lines.contains(&"to-stderr"), "{out}");
    // Its own network namespace: loopback only.
    assert!(lines.contains(&"lo"), "{out}");
    assert!(
        !lines
            .iter()
            .any(|l| l.starts_with("eth") || l.starts_with("en")),
        "{out}"
    );
    // What it writes lands in its upper directory, never in the shared layer.
    assert!(!h.layer.join("written").exists());
    assert!(root.join("web-1/upper/written").exists());
    assert!(!Path::new("/written").exists());
}

#[test]
fn it_runs_as_the_user_and_in_the_directory_asked() {
    let Some(h) = host() else { return };
    let root = h.dir.path().join("containers");
    let mut s = spec(&h, "user-1", "id -u; id -g; echo $PWD");
    s.uid = 1000;
    s.gid = 1001;
    s.workdir = "/etc".into();
    let (code, out) = run(&root, &s);
    assert_eq!(code, 0, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines, ["1000", "1001", "/etc"]);
}

#[test]
fn a_start_that_fails_names_its_step() {
    let Some(h) = host() else { return };
    let root = h.dir.path().join("containers");
    let mut s = spec(&h, "bad-1", "");
    s.args = vec!["/no/such/program".into()];
    match container::start(&root, &s) {
        Err(ContainerError::Start { step, errno, .. }) => {
            assert_eq!(step, "executing the program");
            assert_eq!(errno, nix::errno::Errno::ENOENT);
        }
        other => panic!("{other:?}"),
    }
    let mut s = spec(&h, "bad-2", "true");
    s.workdir = "/no/such/dir".into();
    match container::start(&root, &s) {
        Err(ContainerError::Start { step, .. }) => {
            assert_eq!(step, "entering the working directory")
        }
        other => panic!("{other:?}"),
    }
    let mut s = spec(&h, "bad-3", "true");
    s.args = vec!["a\0b".into()];
    assert!(matches!(
        container::start(&root, &s),
        Err(ContainerError::Nul { .. })
    ));
}

#[test]
fn many_containers_start_at_once_from_one_process() {
    let Some(h) = host() else { return };
    let root = h.dir.path().join("containers");
    // Threads cloning at the same time: the child must never need the allocator.
    let outs: Vec<(i32, String)> = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let s = spec(&h, &format!("many-{i}"), "hostname");
                let root = root.clone();
                sc.spawn(move || run(&root, &s))
            })
            .collect();
        handles.into_iter().map(|t| t.join().unwrap()).collect()
    });
    for (i, (code, out)) in outs.iter().enumerate() {
        assert_eq!((*code, out.trim()), (0, format!("many-{i}").as_str()));
    }
}

#[test]
fn volumes_are_mounted_read_write_or_read_only() {
    let Some(h) = host() else { return };
    let root = h.dir.path().join("containers");
    let (data, shared) = (
        h.dir.path().join("vol-data"),
        h.dir.path().join("vol-shared"),
    );
    std::fs::create_dir_all(&data).unwrap();
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::write(shared.join("motd"), "shared\n").unwrap();
    let mut s = spec(
        &h,
        "vol-1",
        "echo written > /srv/data/out; cat /mnt/a/b/motd; touch /mnt/a/b/x 2>/dev/null && echo writable; true",
    );
    s.binds = vec![
        Bind {
            source: data.clone(),
            target: "/srv/data".into(),
            read_only: false,
        },
        Bind {
            source: shared.clone(),
            target: "/mnt/a/b".into(),
            read_only: true,
        },
    ];
    let (code, out) = run(&root, &s);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out, "shared\n", "the read-only volume refused the write");
    assert_eq!(
        std::fs::read_to_string(data.join("out")).unwrap(),
        "written\n"
    );
    assert!(!shared.join("x").exists());
}

/// A symlink in the image pointing at a host path does not lead a volume's mount point out
/// of the container: its directories are made inside the container's root.
#[test]
fn a_volume_path_through_an_image_symlink_stays_inside() {
    let Some(h) = host() else { return };
    let root = h.dir.path().join("containers");
    let hostside = h.dir.path().join("hostside");
    std::fs::create_dir_all(&hostside).unwrap();
    std::os::unix::fs::symlink(&hostside, h.layer.join("evil")).unwrap();
    let vol = h.dir.path().join("vol-evil");
    std::fs::create_dir_all(&vol).unwrap();
    let mut s = spec(&h, "evil-1", "true");
    s.binds = vec![Bind {
        source: vol,
        target: "/evil/sub".into(),
        read_only: false,
    }];
    match container::start(&root, &s) {
        Err(ContainerError::Start { step, .. }) => assert_eq!(step, "mounting a volume"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        std::fs::read_dir(&hostside).unwrap().count(),
        0,
        "nothing made on the host"
    );
}

/// What the container's /proc shows of the whole host is read-only or hidden. The write
/// tried puts back the value it read: were it allowed, the host's setting would not change.
#[test]
fn the_hosts_proc_entries_are_read_only_or_hidden() {
    let Some(h) = host() else { return };
    let root = h.dir.path().join("containers");
    let (code, out) = run(
        &root,
        &spec(
            &h,
            "proc-1",
            "cat /proc/sys/kernel/core_pattern > /tmp/cp; \
             (cat /tmp/cp > /proc/sys/kernel/core_pattern) 2>&1 | grep -q 'Read-only file system' \
               || echo core_pattern-writable; \
             grep -q ' /proc/sys ro,' /proc/self/mountinfo || echo sys-not-ro; \
             test -s /proc/kcore && echo kcore-visible; \
             ls /proc/acpi 2>/dev/null; \
             test -r /proc/self/status && echo own-proc-readable",
        ),
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(out, "own-proc-readable\n");
}
