//! `gridos`: four node programs in one static executable, picked by the name it runs as.
//!
//! Each static program carries its own copy of std, tokio, glibc's static parts and the
//! libraries they share (gridinit, zbus, tracing, clap, serde); five separate binaries came to
//! 15.5 MB against a 10 MB budget. The image installs this file as `/usr/bin/gridos` with
//! `gridctl`, `gridos-agent`, `gridos-entropy`, `gridos-network` and `gridos-storage` linked
//! to it; `argv[0]`
//! picks the program.
//!
//! PID 1 stays its own executable (`crates/init`, under 3 MB): the one process that must never
//! die carries no HTTP, TLS or netlink code, and its name-service stubs (which make host-name
//! lookups fail) stay out of the agent.
//!
//! The programs' own `main.rs` files are compiled in as modules, unchanged, so each crate still
//! builds its standalone binary for development and tests and each entry point has one source.

#[path = "../../agent/src/main.rs"]
mod agent;
#[path = "../../entropy/src/main.rs"]
mod entropy;
#[path = "../../gridctl/src/main.rs"]
mod gridctl;
#[path = "../../network/src/main.rs"]
mod network;
#[path = "../../storage/src/main.rs"]
mod storage;

/// The names this executable answers to.
const PROGRAMS: [&str; 5] = [
    "gridctl",
    "gridos-agent",
    "gridos-entropy",
    "gridos-network",
    "gridos-storage",
];

/// The program `argv[0]` names: its last path component.
fn program(argv0: &str) -> &str {
    argv0.rsplit('/').next().unwrap_or(argv0)
}

fn main() -> anyhow::Result<()> {
    let argv0 = std::env::args_os()
        .next()
        .map(|a| a.to_string_lossy().into_owned())
        .unwrap_or_default();
    match program(&argv0) {
        "gridctl" => gridctl::main(),
        "gridos-agent" => agent::main(),
        "gridos-entropy" => entropy::main(),
        "gridos-network" => network::main(),
        "gridos-storage" => storage::main(),
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
