//! Service files (`init::config::parse_service`) and the directory loader
//! (`init::config::load_dir`): YAML read by PID 1, where a panic is a kernel panic.

// A failed unwrap, expect or assertion is a failed test: the workspace's deny of them is
// for product code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fuzz::{config, config_div, lossy, mutate, mutations, text, text_of, watch};
use init::config::{load_dir, parse_service, parse_signal, parse_size, valid_name, Service};
use proptest::prelude::*;

/// What `parse_service` promises about a service it accepts.
fn check_service(name: &str, s: &Service) -> Result<(), TestCaseError> {
    prop_assert_eq!(&s.name, name);
    prop_assert!(valid_name(name));
    for cmd in std::iter::once(&s.exec).chain(s.test.iter()) {
        prop_assert!(!cmd.is_empty());
        prop_assert!(cmd.iter().all(|w| !w.contains('\0')), "{:?}", cmd);
    }
    let mut sorted = s.after.clone();
    sorted.sort();
    sorted.dedup();
    prop_assert_eq!(&sorted, &s.after);
    for d in &s.after {
        prop_assert!(valid_name(d) && d != name, "{:?}", d);
    }
    for (k, v) in &s.env {
        prop_assert!(!k.is_empty() && !k.contains('=') && !k.contains('\0') && !v.contains('\0'));
    }
    prop_assert!(s.shutdown_timeout <= Duration::from_secs(3600));
    for v in s.user.iter().chain(s.group.iter()) {
        prop_assert!(!v.is_empty() && v.len() <= 32 && !v.contains(':') && !v.contains('\0'));
    }
    prop_assert_ne!(s.pids_max, Some(0));
    for d in s.state_dirs.iter().chain(&s.readable) {
        let t = d.to_string_lossy();
        prop_assert!(t.starts_with('/') && !t.contains('\0'), "{:?}", d);
    }
    Ok(())
}

fn check(name: &str, text: &str) -> Result<(), TestCaseError> {
    let _w = watch("init::config::parse_service", text.as_bytes());
    let path = Path::new("/etc/gridos/services/x.yaml");
    let first = parse_service(name, path, text);
    match &first {
        Ok(s) => check_service(name, s)?,
        Err(e) => prop_assert!(!e.to_string().is_empty()),
    }
    // Same bytes, same verdict: nothing in the parser depends on state or order.
    let again = parse_service(name, path, text);
    prop_assert_eq!(first.ok(), again.ok());
    Ok(())
}

/// The service files the image ships, read from the tree so the seeds follow them.
fn shipped() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../initramfs/etc/gridos/services");
    let mut out: Vec<String> = std::fs::read_dir(&dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    assert!(!out.is_empty(), "no service files under {}", dir.display());
    out.push(
        "exec: /bin/server --port 80 \"--name=a b\"\nafter: [net, storage, net]\n\
         test: curl -f http://127.0.0.1/\nenv: {RUST_LOG: debug}\nlog: console\nsignal: INT\n\
         shutdown_timeout: 3\noneshot: false\nno_new_privs: true\n"
            .into(),
    );
    out
}

/// YAML values in the shapes the fields take, right and wrong.
const VALUES: &[&str] = &[
    "/usr/bin/gridos-agent --state-dir /var/cache/gridos",
    "'sh -c \"unterminated'",
    "\"\"",
    "''",
    "\"a\\0b\"",
    "\"\\xff\"",
    "[network, storage]",
    "[a, a, b]",
    "[../etc]",
    "[x]",
    "[]",
    "{}",
    "{RUST_LOG: debug}",
    "{'A=B': c}",
    "{A: \"\\0\"}",
    "true",
    "false",
    "maybe",
    "null",
    "~",
    "0",
    "1",
    "-1",
    "3600",
    "3601",
    "18446744073709551615",
    "18446744073709551616",
    "1e3",
    "0x10",
    "64M",
    "1G",
    "18446744073709551615K",
    "k",
    "TERM",
    "SIGKILL",
    "9",
    "999",
    "console",
    "file",
    "syslog",
    "[sys_admin, net_raw]",
    "[cap_chown, bogus]",
    "[/var/cache/gridos/identity]",
    "[relative/path]",
    "gridos-agent",
    "a:b",
    "&a [x, y]",
    "*a",
    "!!binary aGVsbG8=",
    "|\n  multi\n  line",
    ">-\n  folded",
    "[[[[[[[[[[]]]]]]]]]]",
];

const KEYS: &[&str] = &[
    "exec",
    "after",
    "oneshot",
    "test",
    "env",
    "log",
    "signal",
    "shutdown_timeout",
    "user",
    "group",
    "capabilities",
    "no_new_privs",
    "memory_max",
    "pids_max",
    "state_dirs",
    "readable",
    "restart",
    "<<",
];

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => proptest::sample::select(VALUES).prop_map(str::to_string),
        2 => text_of("abc/ -'\"[]{},:&*!#|>\\0123456789\n", 24),
        1 => text(16).prop_map(|t| format!("{t:?}")),
    ]
}

/// A service file built from the real keys with values of every shape, in block or flow style.
fn document() -> impl Strategy<Value = String> {
    let field = (
        prop_oneof![
            9 => proptest::sample::select(KEYS).prop_map(str::to_string),
            1 => "[a-z_]{1,8}",
        ],
        value(),
    );
    (
        proptest::collection::vec(field, 0..10),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(fields, flow, with_exec)| {
            let mut fields = fields;
            if with_exec {
                fields.insert(0, ("exec".into(), "/usr/bin/x".into()));
            }
            if flow {
                let inner: Vec<String> = fields
                    .iter()
                    .map(|(k, v)| format!("{k}: {}", v.replace('\n', " ")))
                    .collect();
                format!("{{{}}}", inner.join(", "))
            } else {
                fields.iter().map(|(k, v)| format!("{k}: {v}\n")).collect()
            }
        })
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z][a-z0-9_.@-]{0,12}",
        1 => text_of("ab.-_@/ \0", 70),
        1 => text(8),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_text(t in text(1024)) {
        check("svc", &t)?;
    }

    #[test]
    fn arbitrary_bytes(b in fuzz::bytes(1024)) {
        check("svc", &lossy(&b))?;
    }

    #[test]
    fn arbitrary_names(n in name(), doc in prop_oneof![Just("exec: /bin/true".to_string()), document()]) {
        check(&n, &doc)?;
    }

    #[test]
    fn real_keys_with_random_values(doc in document()) {
        check("svc", &doc)?;
    }

    #[test]
    fn mutated_shipped_files(
        seed in proptest::sample::select(shipped()),
        muts in mutations(),
    ) {
        check("agent", &lossy(&mutate(seed.as_bytes(), &muts)))?;
    }

    #[test]
    fn sizes_and_signals(s in prop_oneof![text_of("0123456789kKmMgG -+", 24), text(12)]) {
        let _w = watch("init::config::parse_size", s.as_bytes());
        if let Some(n) = parse_size(&s) {
            let digits: String = s.chars().filter(char::is_ascii_digit).collect();
            prop_assert!(!digits.is_empty(), "{:?} -> {}", s, n);
        }
        let _ = parse_signal(&s);
    }
}

/// One file of a services directory: its name and its text.
fn dir_file() -> impl Strategy<Value = (String, String)> {
    let stem = prop_oneof![
        4 => "[a-c]{1,2}",
        1 => text_of("ab.-_@ ", 70),
    ];
    let ext = proptest::sample::select(vec![".yaml", ".yml", ".txt", ""]);
    let content = prop_oneof![
        3 => Just("exec: /bin/true".to_string()),
        1 => Just("exec: [".to_string()),
        2 => document(),
        1 => Just("#".repeat(70_000)),
    ];
    (stem, ext, content).prop_map(|(s, e, c)| (format!("{s}{e}"), c))
}

proptest! {
    #![proptest_config(config_div(64))]

    /// Every service file is accounted for: a service whose file parses, or a bad entry; and a
    /// name given by two files (`a.yaml` and `a.yml`) is never a service picked by directory
    /// order.
    #[test]
    fn services_directory(files in proptest::collection::vec(dir_file(), 0..8)) {
        let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut written: BTreeMap<String, String> = BTreeMap::new();
        for (file, content) in &files {
            if file.contains('/') || file.contains('\0') || file.is_empty() || file == "." || file == ".." {
                continue;
            }
            if std::fs::write(dir.path().join(file), content).is_ok() {
                written.insert(file.clone(), content.clone());
            }
        }
        let listing: String = written.keys().cloned().collect::<Vec<_>>().join("\n");
        let _w = watch("init::config::load_dir", listing.as_bytes());
        let loaded = load_dir(dir.path()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut by_name: BTreeMap<String, Vec<&String>> = BTreeMap::new();
        for (file, content) in &written {
            if let Some(n) = file.strip_suffix(".yaml").or_else(|| file.strip_suffix(".yml")) {
                by_name.entry(n.to_string()).or_default().push(content);
            }
        }
        for (n, svc) in &loaded.services {
            check_service(n, svc)?;
            prop_assert!(!loaded.bad.contains_key(n), "{:?} is both a service and bad", n);
            let contents = by_name.get(n).ok_or_else(|| TestCaseError::fail(format!("{n:?}: no file")))?;
            prop_assert_eq!(contents.len(), 1, "{:?} is defined by {} files", n, contents.len());
            let path = PathBuf::from("/x.yaml");
            let alone = parse_service(n, &path, contents[0]).ok();
            prop_assert_eq!(alone.as_ref(), Some(svc));
        }
        for (n, contents) in &by_name {
            let key: String = n.chars().take(64).collect();
            prop_assert!(
                loaded.services.contains_key(n) || loaded.bad.contains_key(&key),
                "{:?} is neither a service nor bad ({} files)", n, contents.len()
            );
        }
        for n in loaded.bad.keys() {
            prop_assert!(by_name.keys().any(|k| k.chars().take(64).collect::<String>() == *n));
        }
    }
}
