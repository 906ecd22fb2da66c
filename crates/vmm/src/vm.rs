//! One running QEMU: started paused from a [`Spec`], resumed, asked for its status, and
//! stopped the way a machine is: the power button first, the plug after a grace period.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::qemu::{self, Qemu, Spec, SpecError};
use crate::qmp::{Qmp, QmpError, Status};

/// How long one QMP exchange may take before QEMU counts as hung.
const QMP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long QEMU may take to open its QMP socket.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the power button is pressed again while a guest has not powered off.
const REPRESS: Duration = Duration::from_secs(5);
/// How much of QEMU's error output an error quotes.
const ERR_TAIL: usize = 2048;

/// Why a VM could not be started or driven.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// The spec is wrong; nothing was started.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// The VM's directory or a file in it.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// QEMU could not be started.
    #[error("starting {program}: {source}")]
    Spawn {
        /// The QEMU binary.
        program: PathBuf,
        /// Why (names the package when QEMU is not installed).
        source: std::io::Error,
    },
    /// QEMU ended before it was ready, with what it said.
    #[error("QEMU exited before it was ready ({status}): {stderr}")]
    Exited {
        /// Its exit status.
        status: String,
        /// The end of its error output.
        stderr: String,
    },
    /// QEMU did not open its QMP socket in time.
    #[error("QEMU did not open its QMP socket {path} within {secs} s")]
    NotReady {
        /// The socket.
        path: PathBuf,
        /// The limit.
        secs: u64,
    },
    /// A QMP exchange failed.
    #[error(transparent)]
    Qmp(#[from] QmpError),
}

/// How a VM ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// It shut itself down (after the power button, or on its own).
    Graceful(ExitStatus),
    /// It ignored the power button for the whole grace period and was killed.
    Killed,
}

/// A QEMU process this driver started.
pub struct Vm {
    child: Child,
    qmp: PathBuf,
    errors: PathBuf,
}

impl Vm {
    /// Starts `qemu` for `spec`, paused. `dir` holds the QMP
    /// socket (`qmp.sock`) and QEMU's own messages (`qemu.log`). The guest's serial console is
    /// the returned pipe: the caller decides how much of it to keep. Call [`Vm::resume`] to
    /// let the guest run.
    pub fn launch(qemu: &Qemu, spec: &Spec, dir: &Path) -> Result<(Vm, ChildStdout), VmError> {
        spec.check()?;
        let io = |what, path: &Path| {
            let path = path.to_path_buf();
            move |source| VmError::Io { what, path, source }
        };
        std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
        let qmp = dir.join("qmp.sock");
        if qmp.as_os_str().len() > qemu::MAX_SOCKET_PATH {
            return Err(SpecError::Invalid(format!(
                "the QMP socket path {} is longer than {} bytes",
                qmp.display(),
                qemu::MAX_SOCKET_PATH
            ))
            .into());
        }
        match std::fs::remove_file(&qmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io("removing the old socket", &qmp)(e))
            }
            _ => {}
        }
        let errors = dir.join("qemu.log");
        let err_file = File::create(&errors).map_err(io("creating", &errors))?;
        use std::os::unix::process::CommandExt;
        let mut child = qemu
            .command()
            .args(qemu::args(spec, &qmp))
            // A group of its own: a supervisor that stops the caller by signalling its process
            // group (gridos init does) must not SIGTERM QEMU too, which ends the guest at once
            // instead of through its power button.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err_file)
            .spawn()
            .map_err(|e| VmError::Spawn {
                program: qemu.program().to_path_buf(),
                source: hosttools::spawn_error(&qemu.program().to_string_lossy(), e),
            })?;
        let Some(console) = child.stdout.take() else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io("taking the console of", qemu.program())(
                std::io::Error::other("no pipe"),
            ));
        };
        let mut vm = Vm { child, qmp, errors };
        let t0 = Instant::now();
        loop {
            if let Some(status) = vm.try_wait() {
                return Err(VmError::Exited {
                    status: status.to_string(),
                    stderr: vm.error_tail(),
                });
            }
            match Qmp::connect(&vm.qmp, QMP_TIMEOUT) {
                Ok(_) => break,
                Err(QmpError::Connect { .. }) if t0.elapsed() < START_TIMEOUT => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(QmpError::Connect { .. }) => {
                    return Err(VmError::NotReady {
                        path: vm.qmp.clone(),
                        secs: START_TIMEOUT.as_secs(),
                    })
                }
                Err(e) => {
                    // QEMU may open its socket before it checks the disks, then quit on a bad
                    // one while we talk: its own words say more than a reset connection.
                    let t1 = Instant::now();
                    while t1.elapsed() < Duration::from_secs(2) {
                        if let Some(status) = vm.try_wait() {
                            return Err(VmError::Exited {
                                status: status.to_string(),
                                stderr: vm.error_tail(),
                            });
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    return Err(e.into());
                }
            }
        }
        tracing::info!(vm = %spec.name, pid = vm.pid(), accel = spec.accel.name(), "QEMU started");
        Ok((vm, console))
    }

    fn error_tail(&self) -> String {
        let text = std::fs::read(&self.errors).unwrap_or_default();
        let start = text.len().saturating_sub(ERR_TAIL);
        String::from_utf8_lossy(&text[start..]).trim().to_string()
    }

    fn qmp(&self) -> Result<Qmp, VmError> {
        Ok(Qmp::connect(&self.qmp, QMP_TIMEOUT)?)
    }

    /// QEMU's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Lets the guest run.
    pub fn resume(&self) -> Result<(), VmError> {
        Ok(self.qmp()?.cont()?)
    }

    /// The guest's run state, from QMP.
    pub fn status(&self) -> Result<Status, VmError> {
        Ok(self.qmp()?.status()?)
    }

    /// Presses the power button without waiting.
    pub fn powerdown(&self) -> Result<(), VmError> {
        Ok(self.qmp()?.powerdown()?)
    }

    /// QEMU's exit status once it has ended.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Presses the power button and waits up to `grace` for the guest to power off; kills
    /// QEMU after that. A guest that has already ended is reported as it ended.
    pub fn shutdown(&mut self, grace: Duration) -> Stopped {
        if let Some(status) = self.try_wait() {
            return Stopped::Graceful(status);
        }
        if let Err(e) = self.powerdown() {
            tracing::warn!(error = %e, "the power button could not be pressed; killing");
            self.kill();
            return Stopped::Killed;
        }
        let t0 = Instant::now();
        let mut pressed = Instant::now();
        while t0.elapsed() < grace {
            if let Some(status) = self.try_wait() {
                return Stopped::Graceful(status);
            }
            // A guest still booting has nothing listening to the button yet: it is pressed
            // again now and then, as a person would (a guest already going down ignores it).
            if pressed.elapsed() >= REPRESS {
                let _ = self.powerdown();
                pressed = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
        Stopped::Killed
    }

    /// Ends QEMU at once (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.qmp);
    }
}

impl Drop for Vm {
    /// A VM nobody drives any more is not left running unseen.
    fn drop(&mut self) {
        if self.try_wait().is_none() {
            self.kill();
        }
    }
}
