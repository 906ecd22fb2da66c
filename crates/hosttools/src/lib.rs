//! Which Debian package provides each host program gridos runs (QEMU, btrfs-progs, …), so a
//! program that is not installed is reported by name with the package to install, never as a
//! bare "No such file or directory". The table is `tools/commands.txt`, read at build time.

use std::path::Path;

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

#[cfg(test)]
mod tests {
    use super::*;

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
