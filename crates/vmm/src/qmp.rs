//! A QMP connection to one QEMU process (the `qapi` crate's typed commands over its unix
//! socket). One connection per operation: QEMU serves one QMP client at a time, and a driver
//! that restarts finds the socket as it left it.

use std::io::BufReader;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use qapi::qmp;

/// Why a QMP exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket could not be reached.
    #[error("connecting to QMP at {path}: {source}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// QEMU answered an error, or the exchange broke off.
    #[error("QMP {command}: {message}")]
    Command {
        /// The command sent.
        command: &'static str,
        /// QEMU's error or the I/O error.
        message: String,
    },
}

/// What QEMU says the guest is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The vCPUs are executing.
    pub running: bool,
    /// QMP's run state: `running`, `paused`, `prelaunch`, `shutdown`, `internal-error`, …
    pub state: String,
}

type Stream = qapi::Stream<BufReader<UnixStream>, UnixStream>;

/// An open QMP session, past the capabilities handshake.
pub struct Qmp {
    inner: qapi::Qmp<Stream>,
}

impl Qmp {
    /// Connects to `path` and negotiates; every read and write gives up after `timeout`, so a
    /// hung QEMU cannot hang its driver.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Qmp, QmpError> {
        let connect = |source| QmpError::Connect {
            path: path.to_path_buf(),
            source,
        };
        let stream = UnixStream::connect(path).map_err(connect)?;
        stream.set_read_timeout(Some(timeout)).map_err(connect)?;
        stream.set_write_timeout(Some(timeout)).map_err(connect)?;
        let read = stream.try_clone().map_err(connect)?;
        let mut inner = qapi::Qmp::new(qapi::Stream::new(BufReader::new(read), stream));
        inner.handshake().map_err(|e| QmpError::Command {
            command: "qmp_capabilities",
            message: e.to_string(),
        })?;
        Ok(Qmp { inner })
    }

    fn run<C: qapi::qmp::QmpCommand>(
        &mut self,
        name: &'static str,
        c: &C,
    ) -> Result<C::Ok, QmpError> {
        self.inner.execute(c).map_err(|e| QmpError::Command {
            command: name,
            message: e.to_string(),
        })
    }

    /// The guest's run state.
    pub fn status(&mut self) -> Result<Status, QmpError> {
        let s = self.run("query-status", &qmp::query_status {})?;
        let state = serde_json::to_value(s.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| format!("{:?}", s.status));
        Ok(Status {
            running: s.running,
            state,
        })
    }

    /// Lets a guest started paused run.
    pub fn cont(&mut self) -> Result<(), QmpError> {
        self.run("cont", &qmp::cont {}).map(|_| ())
    }

    /// Presses the ACPI power button: a guest that listens shuts itself down.
    pub fn powerdown(&mut self) -> Result<(), QmpError> {
        self.run("system_powerdown", &qmp::system_powerdown {})
            .map(|_| ())
    }

    /// Ends QEMU at once, as pulling the plug would.
    pub fn quit(&mut self) -> Result<(), QmpError> {
        self.run("quit", &qmp::quit {}).map(|_| ())
    }
}
