//! Where a service's output goes: its ring always, plus the console or a file.

use std::io::Write;
use std::sync::Arc;

use tokio::io::AsyncReadExt;

use crate::config::{LogTarget, Service};
use crate::ring::MAX_LINE;
use crate::supervisor::Unit;

/// Copies a service's output into its ring (and console or file).
pub(crate) struct LogSink {
    unit: Arc<Unit>,
    name: String,
    target: LogTarget,
    file: Option<std::fs::File>,
}

impl LogSink {
    pub(crate) fn new(unit: &Arc<Unit>, cfg: &Service, log_dir: Option<&std::path::Path>) -> Self {
        let file = match (cfg.log, log_dir) {
            (LogTarget::File, Some(dir)) => {
                let _ = std::fs::create_dir_all(dir);
                let path = dir.join(format!("{}.log", cfg.name));
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(|e| {
                        tracing::warn!(service = %cfg.name, path = %path.display(), error = &e as &dyn std::error::Error, "cannot open log file")
                    })
                    .ok()
            }
            _ => None,
        };
        LogSink {
            unit: Arc::clone(unit),
            name: cfg.name.clone(),
            target: cfg.log,
            file,
        }
    }

    pub(crate) async fn pump(mut self, mut reader: tokio::net::unix::pipe::Receiver) {
        // Lines are cut at MAX_LINE so a service cannot grow init's memory without bound.
        let mut pending: Vec<u8> = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            for &b in buf.iter().take(n) {
                if b == b'\n' {
                    self.emit(&pending);
                    pending.clear();
                } else {
                    pending.push(b);
                    if pending.len() >= MAX_LINE {
                        self.emit(&pending);
                        pending.clear();
                    }
                }
            }
        }
        if !pending.is_empty() {
            self.emit(&pending);
        }
    }

    fn emit(&mut self, raw: &[u8]) {
        let line = String::from_utf8_lossy(raw);
        let line = line.trim_end_matches('\r');
        self.unit.ring().push(line);
        match self.target {
            LogTarget::Console => {
                let mut err = std::io::stderr().lock();
                let _ = writeln!(err, "[{}] {}", self.name, line);
            }
            LogTarget::File => {
                if let Some(f) = self.file.as_mut() {
                    let _ = writeln!(f, "{line}");
                }
            }
            LogTarget::Ring => {}
        }
    }
}
