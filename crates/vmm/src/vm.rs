//! One running hypervisor, QEMU or cloud-hypervisor: started paused from a [`Spec`],
//! resumed, asked for its status, and stopped the way a machine is: the power button first,
//! the plug after a grace period.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::chv::{self, CloudHypervisor};
use crate::chv_api::{Api, ApiError};
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
    /// The hypervisor ended before it was ready, with what it said.
    #[error("{what} exited before it was ready ({status}): {stderr}")]
    Exited {
        /// QEMU or cloud-hypervisor.
        what: &'static str,
        /// Its exit status.
        status: String,
        /// The end of its error output.
        stderr: String,
    },
    /// The hypervisor did not open its socket in time.
    #[error("{what} did not open its socket {path} within {secs} s")]
    NotReady {
        /// QEMU or cloud-hypervisor.
        what: &'static str,
        /// The socket.
        path: PathBuf,
        /// The limit.
        secs: u64,
    },
    /// A QMP exchange failed.
    #[error(transparent)]
    Qmp(#[from] QmpError),
    /// A cloud-hypervisor API call failed.
    #[error(transparent)]
    Api(#[from] ApiError),
}

/// How a VM ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// It shut itself down (after the power button, or on its own).
    Graceful(ExitStatus),
    /// It ignored the power button for the whole grace period and was killed.
    Killed,
}

/// How this driver talks to its hypervisor.
enum Control {
    /// QEMU's QMP socket.
    Qmp(PathBuf),
    /// cloud-hypervisor's API socket.
    Api(Api),
}

/// One step of waiting for a hypervisor's socket.
enum Attempt {
    /// Not open yet: try again.
    NotYet,
    /// Open, and the exchange on it failed.
    Failed(VmError),
}

/// A hypervisor process this driver started: QEMU, or cloud-hypervisor.
pub struct Vm {
    child: Child,
    control: Control,
    errors: PathBuf,
    /// "QEMU" or "cloud-hypervisor", for messages.
    what: &'static str,
}

/// Makes `dir`, and clears an old socket at `dir/name` that a killed run left.
fn prepare(dir: &Path, name: &str) -> Result<PathBuf, VmError> {
    std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    let socket = dir.join(name);
    if socket.as_os_str().len() > qemu::MAX_SOCKET_PATH {
        return Err(SpecError::Invalid(format!(
            "the socket path {} is longer than {} bytes",
            socket.display(),
            qemu::MAX_SOCKET_PATH
        ))
        .into());
    }
    match std::fs::remove_file(&socket) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(io("removing the old socket", &socket)(e))
        }
        _ => Ok(socket),
    }
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> VmError {
    let path = path.to_path_buf();
    move |source| VmError::Io { what, path, source }
}

impl Vm {
    /// Starts `qemu` for `spec`, paused. `dir` holds the QMP
    /// socket (`qmp.sock`) and QEMU's own messages (`qemu.log`). The guest's serial console is
    /// the returned pipe: the caller decides how much of it to keep. Call [`Vm::resume`] to
    /// let the guest run.
    pub fn launch(qemu: &Qemu, spec: &Spec, dir: &Path) -> Result<(Vm, ChildStdout), VmError> {
        spec.check()?;
        let qmp = prepare(dir, "qmp.sock")?;
        let mut command = qemu.command();
        command.args(qemu::args(spec, &qmp));
        let (mut vm, console) = Vm::spawn(
            command,
            qemu.program(),
            spec,
            &dir.join("qemu.log"),
            Control::Qmp(qmp.clone()),
            "QEMU",
        )?;
        vm.ready(&qmp, || match Qmp::connect(&qmp, QMP_TIMEOUT) {
            Ok(_) => Ok(()),
            Err(QmpError::Connect { .. }) => Err(Attempt::NotYet),
            Err(e) => Err(Attempt::Failed(e.into())),
        })?;
        tracing::info!(vm = %spec.name, pid = vm.pid(), accel = spec.accel.name(), "QEMU started");
        Ok((vm, console))
    }

    /// Starts `ch` for `spec`, paused, as [`Vm::launch`] does QEMU. The VM is created over
    /// the API, booted (which makes its tap) and paused at once, so the caller plugs the tap
    /// before the guest gets on with its boot. `dir` holds the API socket (`api.sock`) and
    /// cloud-hypervisor's own messages (`cloud-hypervisor.log`). `spec.accel` is not read:
    /// cloud-hypervisor runs guests only with KVM.
    pub fn launch_cloud_hypervisor(
        ch: &CloudHypervisor,
        spec: &Spec,
        dir: &Path,
    ) -> Result<(Vm, ChildStdout), VmError> {
        let config = chv::config(spec, ch.firmware())?;
        // Its option syntax splits at commas and has no escape for them.
        if dir.as_os_str().as_encoded_bytes().contains(&b',') {
            return Err(SpecError::Invalid(format!(
                "cloud-hypervisor cannot take an API socket path with a comma: {}",
                dir.display()
            ))
            .into());
        }
        let socket = prepare(dir, "api.sock")?;
        let api = Api::new(&socket, QMP_TIMEOUT);
        let (mut vm, console) = Vm::spawn(
            ch.command(&socket),
            ch.program(),
            spec,
            &dir.join("cloud-hypervisor.log"),
            Control::Api(api.clone()),
            "cloud-hypervisor",
        )?;
        vm.ready(&socket, || match api.ping() {
            Ok(_) => Ok(()),
            Err(ApiError::Connect { .. }) => Err(Attempt::NotYet),
            Err(e) => Err(Attempt::Failed(e.into())),
        })?;
        let steps = api
            .create(&config)
            .and_then(|()| api.boot())
            .and_then(|()| api.pause());
        if let Err(e) = steps {
            return Err(vm.exited_or(e.into()));
        }
        tracing::info!(vm = %spec.name, pid = vm.pid(), "cloud-hypervisor started");
        Ok((vm, console))
    }

    /// Spawns the hypervisor in a process group of its own, in the spec's cgroup, with its
    /// messages in `log` and the guest's console on the returned pipe.
    fn spawn(
        mut command: std::process::Command,
        program: &Path,
        spec: &Spec,
        log: &Path,
        control: Control,
        what: &'static str,
    ) -> Result<(Vm, ChildStdout), VmError> {
        let err_file = File::create(log).map_err(io("creating", log))?;
        use std::os::unix::process::CommandExt;
        let child = command
            // A group of its own: a supervisor that stops the caller by signalling its process
            // group (gridos init does) must not SIGTERM the hypervisor too, which ends the
            // guest at once instead of through its power button.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err_file)
            .spawn()
            .map_err(|e| VmError::Spawn {
                program: program.to_path_buf(),
                source: hosttools::spawn_error(&program.to_string_lossy(), e),
            })?;
        let mut vm = Vm {
            child,
            control,
            errors: log.to_path_buf(),
            what,
        };
        if let Some(cg) = &spec.cgroup {
            let procs = cg.join("cgroup.procs");
            if let Err(e) = std::fs::write(&procs, vm.pid().to_string()) {
                vm.kill();
                return Err(io("moving the hypervisor into", &procs)(e));
            }
        }
        let Some(console) = vm.child.stdout.take() else {
            vm.kill();
            return Err(io("taking the console of", program)(std::io::Error::other(
                "no pipe",
            )));
        };
        Ok((vm, console))
    }

    /// Waits until `attempt` reaches the hypervisor on `socket`, or it ends, or the limit.
    fn ready(
        &mut self,
        socket: &Path,
        attempt: impl Fn() -> Result<(), Attempt>,
    ) -> Result<(), VmError> {
        let t0 = Instant::now();
        loop {
            if let Some(status) = self.try_wait() {
                return Err(VmError::Exited {
                    what: self.what,
                    status: status.to_string(),
                    stderr: self.error_tail(),
                });
            }
            match attempt() {
                Ok(()) => return Ok(()),
                Err(Attempt::NotYet) if t0.elapsed() < START_TIMEOUT => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(Attempt::NotYet) => {
                    return Err(VmError::NotReady {
                        what: self.what,
                        path: socket.to_path_buf(),
                        secs: START_TIMEOUT.as_secs(),
                    })
                }
                Err(Attempt::Failed(e)) => return Err(self.exited_or(e)),
            }
        }
    }

    /// `e`, unless the hypervisor is ending: it may open its socket before it checks the
    /// disks, then quit on a bad one while we talk, and its own words say more than a reset
    /// connection.
    fn exited_or(&mut self, e: VmError) -> VmError {
        let t1 = Instant::now();
        while t1.elapsed() < Duration::from_secs(2) {
            if let Some(status) = self.try_wait() {
                return VmError::Exited {
                    what: self.what,
                    status: status.to_string(),
                    stderr: self.error_tail(),
                };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        e
    }

    fn error_tail(&self) -> String {
        let text = std::fs::read(&self.errors).unwrap_or_default();
        let start = text.len().saturating_sub(ERR_TAIL);
        String::from_utf8_lossy(&text[start..]).trim().to_string()
    }

    /// The hypervisor's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Which hypervisor runs this VM: "QEMU" or "cloud-hypervisor".
    pub fn hypervisor(&self) -> &'static str {
        self.what
    }

    /// Lets the guest run.
    pub fn resume(&self) -> Result<(), VmError> {
        match &self.control {
            Control::Qmp(p) => Ok(Qmp::connect(p, QMP_TIMEOUT)?.cont()?),
            Control::Api(api) => Ok(api.resume()?),
        }
    }

    /// The guest's run state, in QMP's words.
    pub fn status(&self) -> Result<Status, VmError> {
        match &self.control {
            Control::Qmp(p) => Ok(Qmp::connect(p, QMP_TIMEOUT)?.status()?),
            Control::Api(api) => Ok(api.status()?),
        }
    }

    /// Presses the power button without waiting.
    pub fn powerdown(&self) -> Result<(), VmError> {
        match &self.control {
            Control::Qmp(p) => Ok(Qmp::connect(p, QMP_TIMEOUT)?.powerdown()?),
            Control::Api(api) => Ok(api.power_button()?),
        }
    }

    /// The hypervisor's exit status once it has ended.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Presses the power button and waits up to `grace` for the guest to power off; kills
    /// the hypervisor after that. A guest that has already ended is reported as it ended.
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

    /// Ends the hypervisor at once (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let socket = match &self.control {
            Control::Qmp(p) => p.as_path(),
            Control::Api(api) => api.socket(),
        };
        let _ = std::fs::remove_file(socket);
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
