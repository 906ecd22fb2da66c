//! Logging: `tracing` to the console with boot-clock timestamps, and to `/dev/kmsg` during early boot.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

pub use svclog::boot_seconds;
use svclog::BootClock;

static KMSG_ON: AtomicBool = AtomicBool::new(false);
static KMSG: Mutex<Option<std::fs::File>> = Mutex::new(None);

/// Copies log lines to `/dev/kmsg` from now on, until [`stop_kmsg`].
pub fn start_kmsg() {
    if let Ok(f) = std::fs::OpenOptions::new().write(true).open("/dev/kmsg") {
        *KMSG.lock().unwrap_or_else(|p| p.into_inner()) = Some(f);
        KMSG_ON.store(true, Ordering::SeqCst);
    }
}

/// Stops copying to `/dev/kmsg` (once the console is known to work).
pub fn stop_kmsg() {
    KMSG_ON.store(false, Ordering::SeqCst);
    *KMSG.lock().unwrap_or_else(|p| p.into_inner()) = None;
}

/// A writer for one log event: console always, kmsg during early boot.
struct Tee;

impl Write for Tee {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().lock().write_all(buf);
        if KMSG_ON.load(Ordering::Relaxed) {
            if let Some(f) = KMSG.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
                let mut line = Vec::with_capacity(buf.len() + 12);
                line.extend_from_slice(b"<6>gridos-init: ");
                line.extend_from_slice(buf);
                let _ = f.write_all(&line);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Installs the global subscriber at `level`; later calls are ignored.
pub fn init(level: tracing::Level) {
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_timer(BootClock)
        .with_ansi(false)
        .with_target(false)
        .with_writer(|| Tee)
        .try_init();
}
