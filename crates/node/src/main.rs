//! `gridos`: the node programs in one static executable, picked by the name it runs as.
//!
//! Each static program carries its own copy of std, tokio, glibc's static parts and the
//! libraries they share (init, zbus, tracing, clap, serde); five separate binaries came to
//! 15.5 MB against a 10 MB budget. The image installs this file as `/usr/bin/gridos` with
//! `gridctl`, `gridos-agent`, `gridos-bootcfg`, `gridos-entropy`, `gridos-network`, `gridos-provision` and
//! `gridos-storage` linked to it; `argv[0]` picks the program.
//!
//! PID 1 stays its own executable (`crates/init`, under 3 MB): the one process that must never
//! die carries no HTTP, TLS or netlink code, and its name-service stubs (which make host-name
//! lookups fail) stay out of the agent.
//!
//! Each program is a library with a `cli::run(args)` entry; its own crate's `main.rs` calls the
//! same function, so each entry point has one source and each crate declares its own
//! dependencies.

/// The names this executable answers to.
const PROGRAMS: [&str; 7] = [
    "gridctl",
    "gridos-agent",
    "gridos-bootcfg",
    "gridos-entropy",
    "gridos-network",
    "gridos-provision",
    "gridos-storage",
];

/// The program `argv[0]` names: its last path component.
fn program(argv0: &str) -> &str {
    argv0.rsplit('/').next().unwrap_or(argv0)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let argv0 = args
        .first()
        .map(|a| a.to_string_lossy().into_owned())
        .unwrap_or_default();
    match program(&argv0) {
        "gridctl" => gridctl::cli::run(args),
        "gridos-agent" => agent::cli::run(args),
        "gridos-bootcfg" => bootcfg::cli::run(args),
        "gridos-entropy" => entropy::cli::run(args),
        "gridos-network" => network::cli::run(args),
        "gridos-provision" => provision::cli::run(args),
        "gridos-storage" => storage::cli::run(args),
        other => anyhow::bail!(
            "gridos: run as one of {} (a link with that name), not as {other:?}",
            PROGRAMS.join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_is_the_last_path_component() {
        assert_eq!(program("/usr/bin/gridos-storage"), "gridos-storage");
        assert_eq!(program("/usr/bin/gridos-agent"), "gridos-agent");
        assert_eq!(program("gridctl"), "gridctl");
        assert_eq!(program(""), "");
    }
}
