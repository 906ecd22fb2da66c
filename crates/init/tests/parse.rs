//! Unit tests of the pure parsers: kernel command line, service files, uevents, mounts.

// A failed unwrap, expect or assertion is a failed test: the workspace's deny of them is
// for product code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::Duration;

use init::config::{self, LogTarget};

fn parse_yaml(name: &str, text: &str) -> Result<config::Service, config::ConfigError> {
    config::parse_service(name, Path::new("/test.yaml"), text)
}

#[test]
fn yaml_full_service() {
    let text = r#"
exec: /bin/server --port 80 "--name=a b"
after: [net, storage, net]
test: curl -f http://127.0.0.1/
env: {RUST_LOG: debug}
log: console
signal: INT
shutdown_timeout: 3
"#;
    let s = parse_yaml("web", text).expect("valid");
    assert_eq!(s.exec, ["/bin/server", "--port", "80", "--name=a b"]);
    assert_eq!(s.after, ["net", "storage"]);
    assert_eq!(
        s.test.as_deref(),
        Some(&["curl".to_string(), "-f".into(), "http://127.0.0.1/".into()][..])
    );
    assert_eq!(s.env.get("RUST_LOG").map(String::as_str), Some("debug"));
    assert_eq!(s.log, LogTarget::Console);
    assert_eq!(s.signal, nix::sys::signal::Signal::SIGINT);
    assert_eq!(s.shutdown_timeout, Duration::from_secs(3));
    assert!(!s.oneshot);
}

#[test]
fn yaml_minimal_service_defaults() {
    let s = parse_yaml("a", "exec: sleep 1").expect("valid");
    assert_eq!(s.log, LogTarget::Ring);
    assert_eq!(s.signal, nix::sys::signal::Signal::SIGTERM);
    assert_eq!(s.shutdown_timeout, config::DEFAULT_SHUTDOWN_TIMEOUT);
    assert!(s.after.is_empty() && s.test.is_none());
}

#[test]
fn yaml_invalid_services_are_rejected_with_reasons() {
    let cases = [
        ("a", "exec: x\nrestart: always", "unknown field"),
        ("a", "after: [b]", "missing field `exec`"),
        ("a", "exec: ''", "exec is empty"),
        ("a", "exec: 'sh -c \"unterminated'", "unbalanced quotes"),
        ("a", "exec: x\nafter: [a]", "itself"),
        ("a", "exec: x\nafter: ['../etc']", "invalid dependency"),
        ("a", "exec: x\nsignal: BOGUS", "unknown signal"),
        ("a", "exec: x\nlog: syslog", "unknown variant"),
        ("a", "exec: x\nshutdown_timeout: -1", "invalid"),
        ("a", "exec: x\nshutdown_timeout: 99999", "3600"),
        ("a", "exec: x\noneshot: maybe", "invalid"),
        ("a", "exec: x\nenv: {'A=B': c}", "environment"),
        ("../evil", "exec: x", "name must be"),
        ("a", "- just\n- a list", "invalid"),
        ("a", "{{{{", "invalid"),
    ];
    for (name, text, want) in cases {
        let err = parse_yaml(name, text).expect_err(text).to_string();
        assert!(err.contains(want), "{text:?}: {err}");
    }
}

#[test]
fn yaml_hostile_documents_do_not_blow_up() {
    let started = std::time::Instant::now();
    // Billion laughs reached through a real field: aliases expanding exponentially
    // must be refused (or fail on type), never expanded into memory.
    let mut bomb = String::from(
        "exec: x\nenv:\n  a: &a [\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\"]\n",
    );
    for i in 1..10u8 {
        bomb.push_str(&format!(
            "  {c}: &{c} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n",
            c = (b'a' + i) as char,
            p = (b'a' + i - 1) as char
        ));
    }
    assert!(parse_yaml("bomb", &bomb).is_err());
    let mut bomb2 = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..9 {
        bomb2.push_str(&format!(
            "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n",
            p = i - 1
        ));
    }
    let bomb2 = format!("exec: x\nafter: *a8\n{bomb2}");
    assert!(parse_yaml("bomb2", &bomb2).is_err());
    // Deep nesting.
    let deep = format!("exec: x\nenv: {}{}", "[".repeat(10_000), "]".repeat(10_000));
    assert!(parse_yaml("deep", &deep).is_err());
    // Binary garbage and invalid UTF-8 escapes.
    assert!(parse_yaml("bin", "exec: \"\\xff\\0\"\n\u{0}\u{1}").is_err());
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "hostile YAML took {:?}",
        started.elapsed()
    );
}

#[test]
fn load_dir_keeps_good_files_and_reports_bad_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("good.yaml"), "exec: sleep 1").expect("write");
    std::fs::write(dir.path().join("bad.yaml"), "exec: [").expect("write");
    std::fs::write(dir.path().join("big.yaml"), "#".repeat(100_000)).expect("write");
    std::fs::write(dir.path().join("notes.txt"), "ignored").expect("write");
    let loaded = config::load_dir(dir.path()).expect("load");
    assert_eq!(loaded.services.keys().collect::<Vec<_>>(), ["good"]);
    assert_eq!(loaded.bad.keys().collect::<Vec<_>>(), ["bad", "big"]);
    assert!(config::load_dir(&dir.path().join("missing")).is_err());
}

/// Found by `make fuzz`: `ba.yaml` and `ba.yml` both loaded as service `ba`, and which one
/// ran depended on the order the directory listed them in (one good and one bad file made
/// `ba` both a service and a bad file).
#[test]
fn load_dir_fuzz_name_defined_by_two_files_is_bad() {
    for (yaml, yml) in [
        ("exec: /bin/true", "exec: /bin/true"),
        ("exec: /bin/true", "exec: ["),
        ("exec: [", "exec: /bin/false"),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("ba.yaml"), yaml).expect("write");
        std::fs::write(dir.path().join("ba.yml"), yml).expect("write");
        std::fs::write(dir.path().join("other.yml"), "exec: /bin/true").expect("write");
        let loaded = config::load_dir(dir.path()).expect("load");
        assert_eq!(loaded.services.keys().collect::<Vec<_>>(), ["other"]);
        assert_eq!(loaded.bad.keys().collect::<Vec<_>>(), ["ba"]);
        let why = &loaded.bad["ba"];
        assert!(
            why.contains("defined by 2 files") && why.contains("ba.yaml") && why.contains("ba.yml"),
            "{why}"
        );
    }
}

#[test]
fn signal_names() {
    use nix::sys::signal::Signal;
    assert_eq!(config::parse_signal("TERM"), Some(Signal::SIGTERM));
    assert_eq!(config::parse_signal("sighup"), Some(Signal::SIGHUP));
    assert_eq!(config::parse_signal("9"), Some(Signal::SIGKILL));
    assert_eq!(config::parse_signal("NOPE"), None);
    assert_eq!(config::parse_signal("999"), None);
}

#[test]
fn uevent_parsing() {
    let msg = b"add@/devices/pci0000:00/0000:00:03.0\0ACTION=add\0DEVPATH=/devices/pci0000:00/0000:00:03.0\0SUBSYSTEM=pci\0MODALIAS=pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00\0SEQNUM=1\0";
    let ev = init::uevent::parse(msg).expect("kernel message");
    assert_eq!(ev.action, "add");
    assert_eq!(ev.devpath, "/devices/pci0000:00/0000:00:03.0");
    assert_eq!(
        ev.modalias.as_deref(),
        Some("pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00")
    );
    // udev's own (binary "libudev" header) and garbage messages are ignored.
    assert!(init::uevent::parse(b"libudev\0\xfe\xed").is_none());
    assert!(init::uevent::parse(b"").is_none());
    assert!(init::uevent::parse(b"\xff\xff@x\0ACTION=add").is_none());
}

#[test]
fn proc_mounts_parsing() {
    let text =
        "rootfs / rootfs rw 0 0\nproc /proc proc rw 0 0\n/dev/sda1 /mnt/my\\040disk ext4 rw 0 0\n";
    assert_eq!(
        init::power::mount_points(text),
        ["/", "/proc", "/mnt/my disk"]
    );
}

#[test]
fn supervisor_only_arguments() {
    use init::args::{Args, ArgsError};
    let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let a = Args::parse(v(&[
        "--supervisor-only",
        "--services",
        "/s",
        "--socket=/x.sock",
        "--log-dir",
        "/l",
        "--log-level=debug",
    ]))
    .expect("valid")
    .expect("not help");
    assert!(a.supervisor_only);
    assert_eq!(a.services, std::path::PathBuf::from("/s"));
    assert_eq!(a.socket, std::path::PathBuf::from("/x.sock"));
    assert_eq!(a.log_dir, Some("/l".into()));
    assert_eq!(a.log_level, tracing::Level::DEBUG);
    assert_eq!(Args::parse(v(&[])).expect("ok"), Some(Args::default()));
    assert_eq!(Args::parse(v(&["-h"])).expect("ok"), None);
    assert_eq!(
        Args::parse(v(&["--services"])),
        Err(ArgsError::MissingValue("--services".into()))
    );
    assert_eq!(
        Args::parse(v(&["--log-level", "loud"])),
        Err(ArgsError::BadLevel("loud".into()))
    );
    assert!(matches!(
        Args::parse(v(&["--nope"])),
        Err(ArgsError::Unknown(_))
    ));
}
