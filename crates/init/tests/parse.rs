//! Unit tests of the pure parsers: kernel command line, service files, uevents, mounts.

use std::path::Path;
use std::time::Duration;

use gridinit::cmdline::{self, LogLevel, NetConfig, WipePolicy};
use gridinit::config::{self, LogTarget};

#[test]
fn cmdline_defaults_when_empty() {
    let (s, w) = cmdline::parse("");
    assert_eq!(s, cmdline::Settings::default());
    assert!(w.is_empty());
    assert_eq!(s.hostname, "gridos");
    assert_eq!(s.wipe, WipePolicy::Empty);
}

#[test]
fn cmdline_valid_keys() {
    let line = "BOOT_IMAGE=/vmlinuz console=ttyS0 quiet gridos.farm=42 \
        gridos.registry=https://registry.example/api gridos.net=eth0:10.0.0.5/24:10.0.0.1 \
        gridos.log=debug gridos.wipe=all gridos.hostname=node-1 gridos.report_interval=5\n";
    let (s, w) = cmdline::parse(line);
    assert!(w.is_empty(), "{w:?}");
    assert_eq!(s.farm, Some(42));
    assert_eq!(s.registry.as_deref(), Some("https://registry.example/api"));
    assert_eq!(
        s.net,
        NetConfig::Static {
            iface: "eth0".into(),
            cidr: "10.0.0.5/24".into(),
            gateway: "10.0.0.1".into()
        }
    );
    assert_eq!(s.log, LogLevel::Debug);
    assert_eq!(s.wipe, WipePolicy::All);
    assert_eq!(s.hostname, "node-1");
    assert_eq!(s.report_interval, Some(5));
}

#[test]
fn cmdline_unknown_keys_ignored_and_quotes_honoured() {
    let (s, w) =
        cmdline::parse(r#"gridos.unknown=1 foo="a b" gridos.hostname="quoted" gridos.net=dhcp"#);
    assert!(w.is_empty(), "{w:?}");
    assert_eq!(s.hostname, "quoted");
    assert_eq!(s.net, NetConfig::Dhcp);
}

#[test]
fn cmdline_malformed_values_are_reported_and_defaulted() {
    let line = "gridos.farm=abc gridos.farm=0 gridos.registry=ftp://x gridos.net=eth0:10.0.0.5/40:10.0.0.1 \
        gridos.net=eth0:10.0.0.5/24:fe80::1 gridos.log=loud gridos.wipe=everything gridos.hostname=-bad \
        gridos.report_interval=0 gridos.report_interval=86401 gridos.report_interval=1m";
    let (s, w) = cmdline::parse(line);
    assert_eq!(s, cmdline::Settings::default());
    let keys: Vec<&str> = w.iter().map(|w| w.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "gridos.farm",
            "gridos.farm",
            "gridos.registry",
            "gridos.net",
            "gridos.net",
            "gridos.log",
            "gridos.wipe",
            "gridos.hostname",
            "gridos.report_interval",
            "gridos.report_interval",
            "gridos.report_interval"
        ]
    );
    assert!(w[0].to_string().contains("using the default"));
}

#[test]
fn cmdline_hostile_input_is_bounded() {
    let huge = format!("gridos.hostname={} gridos.farm=1", "a".repeat(100_000));
    let (s, w) = cmdline::parse(&huge);
    assert_eq!(s.hostname, "gridos");
    assert_eq!(s.farm, Some(1));
    assert_eq!(w.len(), 1);
    assert!(w[0].value.len() <= 64);
    // Control characters, unbalanced quotes, NULs, non-ASCII: never a panic.
    for line in [
        "gridos.hostname=\u{0}\u{7}\"",
        "\"gridos.farm=1",
        "gridos.registry=http://a\u{1b}[31m",
        "gridos.hostname=ñode",
        "=== gridos.= gridos.farm= gridos.net=:::",
        "gridos.net=eth0:1.2.3.4/24",
    ] {
        let (s, _) = cmdline::parse(line);
        assert_eq!(s.registry, None);
        assert_eq!(s.hostname, "gridos");
    }
}

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
    let ev = gridinit::uevent::parse(msg).expect("kernel message");
    assert_eq!(ev.action, "add");
    assert_eq!(ev.devpath, "/devices/pci0000:00/0000:00:03.0");
    assert_eq!(
        ev.modalias.as_deref(),
        Some("pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00")
    );
    // udev's own (binary "libudev" header) and garbage messages are ignored.
    assert!(gridinit::uevent::parse(b"libudev\0\xfe\xed").is_none());
    assert!(gridinit::uevent::parse(b"").is_none());
    assert!(gridinit::uevent::parse(b"\xff\xff@x\0ACTION=add").is_none());
}

#[test]
fn proc_mounts_parsing() {
    let text =
        "rootfs / rootfs rw 0 0\nproc /proc proc rw 0 0\n/dev/sda1 /mnt/my\\040disk ext4 rw 0 0\n";
    assert_eq!(
        gridinit::power::mount_points(text),
        ["/", "/proc", "/mnt/my disk"]
    );
}

#[test]
fn supervisor_only_arguments() {
    use gridinit::args::{Args, ArgsError};
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

#[test]
fn modules_load_list() {
    use gridinit::kmod::parse_load_list;
    let text = "# cache partition\nbtrfs\n\n  wire-guard  # comment\n../../evil\n";
    assert_eq!(parse_load_list(text), ["btrfs", "wire_guard"]);
    assert!(parse_load_list(&"x".repeat(100)).is_empty());
}
