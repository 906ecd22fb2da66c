//! What a test cannot run without (root, a host program, a kernel device) and the one switch
//! that lets a run do without it on purpose.
//!
//! A test whose requirement is missing fails, naming what to install or how to run it, so a
//! machine that lacks something never turns a test green without running it. Only when
//! `GRIDOS_TEST_SKIP` names the requirement does the test return early instead: it prints
//! `SKIPPED <test>: <reason>` on stderr (past the test harness's capture, so it shows in the
//! run's output) and appends that line to the file named by `GRIDOS_SKIP_LOG`, which
//! `make test` prints as a summary at the end.
//!
//! `GRIDOS_TEST_SKIP` is a comma-separated list of:
//! - `root`: tests that need root, or kernel devices only a privileged machine has
//!   (`/dev/loop-control` in a container);
//! - `tools`: tests that need a host program that is not installed (PostgreSQL's server
//!   programs included);
//! - a program or Debian package name (`dnsmasq`, `btrfs-progs`, `postgresql`): only that one;
//! - `all`: every requirement.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The variable that lets a run skip tests whose requirements are missing (see the module docs).
pub const SKIP_VAR: &str = "GRIDOS_TEST_SKIP";

/// The variable naming a file every skip is appended to, one `SKIPPED` line each.
pub const SKIP_LOG_VAR: &str = "GRIDOS_SKIP_LOG";

/// A requirement was missing and `GRIDOS_TEST_SKIP` allowed the test to be skipped. It has
/// been printed and logged already; the test must return without checking anything.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "a skipped test must return at once"]
pub struct Skipped {
    /// What was missing, as printed.
    pub reason: String,
}

/// The kinds of requirement `GRIDOS_TEST_SKIP` can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Root, or a kernel device that only a privileged machine has.
    Root,
    /// A host program.
    Tool,
}

impl Need {
    /// The word `GRIDOS_TEST_SKIP` uses for it.
    pub fn word(self) -> &'static str {
        match self {
            Need::Root => "root",
            Need::Tool => "tools",
        }
    }
}

/// Ok when the test runs as root; `why` says what the test does with it.
///
/// ```no_run
/// # fn f() {
/// let Ok(()) = test_infra::require_root("creates network namespaces") else {
///     return;
/// };
/// # }
/// ```
pub fn require_root(why: &str) -> Result<(), Skipped> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid == 0 {
        return Ok(());
    }
    Err(unmet(
        Need::Root,
        &[],
        format!("root is needed ({why}) and this runs as uid {euid}"),
        "run the tests as root (`sudo -E make test`)",
    ))
}

/// Ok when the kernel device (or other path a privileged machine has) at `path` exists;
/// `why` says what the test does with it.
pub fn require_device(path: &str, why: &str) -> Result<(), Skipped> {
    if Path::new(path).exists() {
        return Ok(());
    }
    Err(unmet(
        Need::Root,
        &[],
        format!("{path} is needed ({why}) and this machine does not have it"),
        "run the tests as root on a machine or VM that has it (not an unprivileged container)",
    ))
}

/// The path of host program `program` when it is installed (found on `PATH` or in the sbin
/// folders a user's `PATH` often lacks).
pub fn require_tool(program: &str) -> Result<PathBuf, Skipped> {
    match find_program(program) {
        Some(p) => Ok(p),
        None => Err(missing_tool(program, hosttools::missing(program))),
    }
}

/// [`require_tool`] for each program, all reported at once when several are missing.
pub fn require_tools(programs: &[&str]) -> Result<Vec<PathBuf>, Skipped> {
    let found: Vec<Option<PathBuf>> = programs.iter().map(|p| find_program(p)).collect();
    let missing: Vec<&str> = programs
        .iter()
        .zip(&found)
        .filter(|(_, f)| f.is_none())
        .map(|(p, _)| *p)
        .collect();
    if missing.is_empty() {
        return Ok(found.into_iter().flatten().collect());
    }
    let why: Vec<String> = missing.iter().map(|p| hosttools::missing(p)).collect();
    Err(unmet(
        Need::Tool,
        &missing,
        why.join("; "),
        "install what is missing",
    ))
}

/// A missing host program, however the caller found out (a `Command` that could not spawn,
/// server programs outside `PATH`): fails the test or skips it as for [`require_tool`].
pub fn missing_tool(program: &str, why: String) -> Skipped {
    unmet(Need::Tool, &[program], why, "install what is missing")
}

/// `program` on `PATH`, or in the folders root's `PATH` has and a user's may not.
pub fn find_program(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        return Path::new(program).is_file().then(|| PathBuf::from(program));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// Whether `GRIDOS_TEST_SKIP` lets a test skip a missing `need` (the `missing` programs).
pub fn skip_allowed(need: Need, missing: &[&str]) -> bool {
    std::env::var(SKIP_VAR).is_ok_and(|list| allows(&list, need, missing))
}

/// Whether the skip list `list` (as `GRIDOS_TEST_SKIP` spells it) covers a missing `need`:
/// it names `all`, the kind, or every one of the `missing` programs (by name or package).
pub fn allows(list: &str, need: Need, missing: &[&str]) -> bool {
    let words: Vec<&str> = list.split(',').map(str::trim).collect();
    if words.iter().any(|w| *w == "all" || *w == need.word()) {
        return true;
    }
    !missing.is_empty()
        && missing.iter().all(|p| {
            words
                .iter()
                .any(|w| *w == *p || Some(*w) == hosttools::package_of(p))
        })
}

/// Reports an unmet requirement: panics (the test fails) unless `GRIDOS_TEST_SKIP` allows the
/// skip, in which case the skip is printed and logged and returned for the test to return on.
fn unmet(need: Need, missing: &[&str], why: String, remedy: &str) -> Skipped {
    let test = test_name();
    if !skip_allowed(need, missing) {
        panic!(
            "{test} cannot run: {why}.\n\
             {remedy}, or skip it on purpose with {SKIP_VAR}={} (docs/testing.md).",
            need.word()
        );
    }
    let line = format!("SKIPPED {test}: {why}\n");
    // Straight to the file descriptor: `eprintln!` would be captured by the test harness and
    // shown only for failing tests, and a skip must be seen.
    let _ = std::io::stderr().write_all(line.as_bytes());
    if let Some(log) = std::env::var_os(SKIP_LOG_VAR).filter(|v| !v.is_empty()) {
        // One write of one short line in append mode: lines from tests running in parallel
        // processes do not interleave.
        let _ = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .and_then(|mut f| f.write_all(line.as_bytes()));
    }
    Skipped {
        reason: why.to_string(),
    }
}

/// `crate/binary::test` as far as it can be known: the test harness names each test's thread
/// after the test, and cargo passes the package name to the test binary it runs.
pub fn test_name() -> String {
    let bin = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .map(|s| match s.rsplit_once('-') {
            // Cargo's test binaries end in `-<16 hex digits>`.
            Some((name, hash))
                if hash.len() == 16 && hash.chars().all(|c| c.is_ascii_hexdigit()) =>
            {
                name.to_string()
            }
            _ => s,
        })
        .unwrap_or_default();
    let prefix = match std::env::var("CARGO_PKG_NAME") {
        Ok(pkg) if pkg != bin && !bin.is_empty() => format!("{pkg}/{bin}"),
        Ok(pkg) => pkg,
        Err(_) => bin,
    };
    match std::thread::current().name() {
        Some(t) if t != "main" => format!("{prefix}::{t}"),
        _ => prefix,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_found_outside_path_too() {
        assert!(find_program("sh").is_some_and(|p| p.is_absolute()));
        assert!(find_program("no-such-program-here").is_none());
        assert_eq!(find_program("/bin/sh"), Some(PathBuf::from("/bin/sh")));
    }

    #[test]
    fn the_skip_list_names_kinds_programs_packages_or_all() {
        let btrfs = &["mkfs.btrfs"][..];
        assert!(allows("tools", Need::Tool, btrfs));
        assert!(allows("root, btrfs-progs", Need::Tool, btrfs));
        assert!(allows("mkfs.btrfs", Need::Tool, btrfs));
        assert!(allows("all", Need::Root, &[]));
        assert!(allows("root", Need::Root, &[]));
        assert!(!allows("root", Need::Tool, btrfs));
        assert!(!allows("tool,,", Need::Tool, btrfs));
        assert!(!allows("", Need::Root, &[]));
        assert!(!allows("tools", Need::Root, &[]));
        // Naming one missing program does not skip a test that misses another as well.
        assert!(!allows("dnsmasq", Need::Tool, &["ip", "dnsmasq"]));
        assert!(allows("dnsmasq,iproute2", Need::Tool, &["ip", "dnsmasq"]));
        assert!(allows("initdb", Need::Tool, &["initdb"]));
        assert!(allows("postgresql", Need::Tool, &["initdb"]));
    }

    #[test]
    fn the_test_is_named_after_its_thread() {
        let name = test_name();
        assert!(
            name.ends_with("::gate::tests::the_test_is_named_after_its_thread"),
            "{name}"
        );
    }
}
