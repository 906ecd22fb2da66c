//! The skip switch end to end: a test whose program is missing fails, naming the package and
//! the switch; with the switch it passes, says `SKIPPED` past the harness's capture, and
//! appends the same line to the skip log. Each case runs this test binary again with a chosen
//! environment, on the one helper test below.

// A failed unwrap, expect or assertion is a failed test: the workspace's deny of them is
// for product code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Output};

use test_infra::gate::{SKIP_LOG_VAR, SKIP_VAR};

const HELPER: &str = "needs_a_program_no_machine_has";

#[test]
#[ignore = "run by the other tests of this file, each with its own environment"]
fn needs_a_program_no_machine_has() {
    let Ok(_) = test_infra::require_tool("gridos-no-such-program") else {
        return;
    };
    panic!("found a program that does not exist");
}

fn run_helper(skip: Option<&str>, log: &Path) -> (Output, String) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--ignored", "--exact", HELPER, "--test-threads=1"])
        .env_remove(SKIP_VAR)
        .env(SKIP_LOG_VAR, log);
    if let Some(s) = skip {
        cmd.env(SKIP_VAR, s);
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, text)
}

#[test]
fn a_missing_program_fails_the_test_and_says_how_to_skip_it() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("skips.txt");
    let (out, text) = run_helper(None, &log);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("gridos-no-such-program is not installed"),
        "{text}"
    );
    assert!(text.contains("GRIDOS_TEST_SKIP=tools"), "{text}");
    assert!(!log.exists(), "a failure is not a skip");
}

#[test]
fn another_kind_in_the_switch_does_not_skip_it() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("skips.txt");
    let (out, text) = run_helper(Some("root"), &log);
    assert!(!out.status.success(), "{text}");
    assert!(!log.exists());
}

#[test]
fn the_switch_skips_it_visibly_and_logs_it() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("skips.txt");
    for skip in ["tools", "all", "root, gridos-no-such-program"] {
        let (out, text) = run_helper(Some(skip), &log);
        assert!(out.status.success(), "{skip}: {text}");
        let line =
            format!("SKIPPED test-infra/gate::{HELPER}: gridos-no-such-program is not installed");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(&line),
            "{skip}: {text}"
        );
    }
    let logged = std::fs::read_to_string(&log).unwrap();
    assert_eq!(logged.lines().count(), 3, "{logged}");
    assert!(logged
        .lines()
        .all(|l| l.starts_with("SKIPPED test-infra/gate::")));
}
