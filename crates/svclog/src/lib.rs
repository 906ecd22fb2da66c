//! Logging set-up shared by the node services that PID 1 supervises (agent, network, storage),
//! so they all log the same way into init's per-service log, on the clock init and the kernel
//! use: one console where every line can be ordered against every other.

use std::io::IsTerminal;

use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Seconds since boot (`CLOCK_MONOTONIC`), the clock the kernel log uses too.
pub fn boot_seconds() -> f64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(t) => t.tv_sec() as f64 + t.tv_nsec() as f64 / 1e9,
        Err(_) => 0.0,
    }
}

/// Formats timestamps like the kernel log: `[    1.234567]`.
#[derive(Debug, Clone, Copy, Default)]
pub struct BootClock;

impl FormatTime for BootClock {
    fn format_time(&self, w: &mut Writer<'_>) -> std::fmt::Result {
        write!(w, "[{:12.6}]", boot_seconds())
    }
}

/// An error with its causes, for a log line: "error sending request" alone hides the
/// "connection refused" under it.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Logs to stderr at `RUST_LOG` if set (`info`, `agent=debug,warn`: levels by target; span
/// and field filters are not taken), else at `default_level`.
///
/// Under PID 1 (stderr not a terminal) lines carry the boot clock and no colour codes; run by
/// hand on a terminal they carry wall-clock time and colour.
pub fn init(default_level: &str) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse::<Targets>().ok())
        .or_else(|| default_level.parse().ok())
        .unwrap_or_else(|| {
            Targets::new().with_default(tracing_subscriber::filter::LevelFilter::INFO)
        });
    let builder = tracing_subscriber::fmt().with_writer(std::io::stderr);
    if std::io::stderr().is_terminal() {
        builder.finish().with(filter).init();
    } else {
        builder
            .with_ansi(false)
            .with_timer(BootClock)
            .finish()
            .with(filter)
            .init();
    }
}
