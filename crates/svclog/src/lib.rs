//! Logging set-up shared by the node services that PID 1 supervises (agent, network, storage),
//! so they all log the same way into init's per-service log.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Logs to stderr at `RUST_LOG` if set, else at `default_level`.
pub fn init(default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Under PID 1 stderr is a pipe into the service log: no colour codes there.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
