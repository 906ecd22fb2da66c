//! Which Debian package provides each host program gridos runs (QEMU, btrfs-progs, …), so a
//! program that is not installed is reported by name with the package to install, never as a
//! bare "No such file or directory". The table is `tools/commands.txt`, read at build time.
//! And [`wait_within`]: a host program that hangs is killed after a limit, not waited on for
//! ever.

use std::path::Path;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

const TABLE: &str = include_str!("../../../tools/commands.txt");

/// The Debian package that provides `program` (a name or a path; the file name counts).
pub fn package_of(program: &str) -> Option<&'static str> {
    let name = Path::new(program).file_name()?.to_str()?;
    TABLE
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .find_map(|l| {
            let mut cols = l.split_whitespace();
            (cols.next()? == name).then(|| cols.next()).flatten()
        })
}

/// What to tell the user when `program` is not installed.
pub fn missing(program: &str) -> String {
    match package_of(program) {
        Some(pkg) => format!(
            "{program} is not installed: it comes with the Debian package {pkg} \
             (`sudo apt-get install --no-install-recommends {pkg}`, or `tools/need-packages.sh` as root)"
        ),
        None => format!("{program} is not installed"),
    }
}

/// Turns a failed spawn of `program` into an error that names its package when the program
/// is missing, and keeps the error as it is otherwise.
pub fn spawn_error(program: &str, e: std::io::Error) -> std::io::Error {
    if e.kind() == std::io::ErrorKind::NotFound {
        std::io::Error::new(std::io::ErrorKind::NotFound, missing(program))
    } else {
        e
    }
}

/// Waits at most `limit` for `child` to exit. One still running then is killed and reaped, so
/// no zombie is left, and `Ok(None)` says it was stopped. When waiting itself fails the child
/// is killed too and the error returned.
pub fn wait_within(child: &mut Child, limit: Duration) -> std::io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + limit;
    // Short first pauses: most programs asked for a version or a probe end within milliseconds.
    let mut pause = Duration::from_millis(2);
    let stopped = loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(Some(status)),
            Ok(None) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break Ok(None);
                }
                std::thread::sleep(pause.min(left));
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            Err(e) => break Err(e),
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    stopped
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn a_child_that_ends_in_time_gives_its_status() {
        let mut child = Command::new("sh").args(["-c", "exit 3"]).spawn().unwrap();
        let status = wait_within(&mut child, Duration::from_secs(30)).unwrap();
        assert_eq!(status.and_then(|s| s.code()), Some(3));
    }

    #[test]
    fn a_child_that_hangs_is_killed_and_reaped() {
        let mut child = Command::new("sleep").arg("60").spawn().unwrap();
        let t0 = Instant::now();
        assert!(wait_within(&mut child, Duration::from_millis(200))
            .unwrap()
            .is_none());
        assert!(t0.elapsed() < Duration::from_secs(30));
        // Reaped: the process is gone, not a zombie waiting for a wait().
        let pid = child.id();
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
    }

    #[test]
    fn programs_map_to_their_packages() {
        assert_eq!(package_of("qemu-system-x86_64"), Some("qemu-system-x86"));
        assert_eq!(package_of("/usr/sbin/mkfs.btrfs"), Some("btrfs-progs"));
        assert_eq!(package_of("sfdisk"), Some("fdisk"));
        assert_eq!(package_of("no-such-program"), None);
        // Comment lines are not programs.
        assert_eq!(package_of("#"), None);
    }

    #[test]
    fn a_missing_program_is_named_with_its_package() {
        let e = spawn_error(
            "qemu-system-x86_64",
            std::io::Error::from(std::io::ErrorKind::NotFound),
        );
        let msg = e.to_string();
        assert!(msg.contains("qemu-system-x86_64 is not installed"), "{msg}");
        assert!(
            msg.contains("apt-get install --no-install-recommends qemu-system-x86"),
            "{msg}"
        );
        // Other errors pass through unchanged.
        let e = spawn_error("qemu-system-x86_64", std::io::Error::other("boom"));
        assert_eq!(e.to_string(), "boom");
    }

    #[test]
    fn every_package_named_is_in_the_package_list() {
        let list = include_str!("../../../tools/packages.txt");
        let listed: Vec<&str> = list
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .flat_map(|l| l.split_whitespace().skip(1))
            .collect();
        for line in TABLE.lines().filter(|l| !l.trim_start().starts_with('#')) {
            let mut cols = line.split_whitespace();
            let (Some(program), Some(pkg)) = (cols.next(), cols.next()) else {
                continue;
            };
            // These come with every Debian system.
            if matches!(pkg, "apt" | "dpkg" | "mount") {
                continue;
            }
            assert!(
                listed.contains(&pkg),
                "{program}: package {pkg} is not in tools/packages.txt"
            );
        }
    }
}
