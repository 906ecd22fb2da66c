//! The service lifecycle: start in dependency order, gate on health tests,
//! restart with backoff, capture output, stop in reverse order.
//!
//! Each runnable service has one runner task. Its wanted state (up or down)
//! and its observed state are `watch` channels, so control requests and
//! dependents never touch the runner directly.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::sync::{oneshot, watch};

use crate::config::{Loaded, Service};
use crate::graph::{self, Plan};
use crate::logsink::LogSink;
use crate::privs;
use crate::reaper::{Exit, Reaper};
use crate::ring::LogRing;
use backoff::Backoff;

/// What a service is doing now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Will never start: bad file, cycle, unknown or held-back dependency.
    Blocked(String),
    /// Waiting for its dependencies to become ready.
    Waiting,
    /// Process started, health test not passed yet.
    Starting,
    /// Process running (and its test, if any, passed).
    Running,
    /// Oneshot that exited 0.
    Success,
    /// Exited or failed to start; the text says how.
    Failed(String),
    /// Waiting before the next restart.
    Backoff,
    /// Stop signal sent, waiting for the process to end.
    Stopping,
    /// Stopped on request (or never started because not wanted).
    Stopped,
}

impl State {
    /// True when dependents may start.
    pub fn is_ready(&self) -> bool {
        matches!(self, State::Running | State::Success)
    }

    /// Short name for `gridctl list`.
    pub fn name(&self) -> &'static str {
        match self {
            State::Blocked(_) => "blocked",
            State::Waiting => "waiting",
            State::Starting => "starting",
            State::Running => "running",
            State::Success => "success",
            State::Failed(_) => "failed",
            State::Backoff => "backoff",
            State::Stopping => "stopping",
            State::Stopped => "stopped",
        }
    }

    /// The reason attached to blocked and failed states, else empty.
    pub fn reason(&self) -> &str {
        match self {
            State::Blocked(r) | State::Failed(r) => r,
            _ => "",
        }
    }
}

/// Lines and bytes kept per service ring.
const RING_LINES: usize = 1000;
const RING_BYTES: usize = 128 * 1024;
/// How often a failing health test is retried.
const TEST_INTERVAL: Duration = Duration::from_millis(250);
/// Longest a single health test run may take.
const TEST_TIMEOUT: Duration = Duration::from_secs(10);

/// One service and its live state.
#[derive(Debug)]
pub struct Unit {
    /// The definition (absent for a bad file).
    pub cfg: Option<Service>,
    state: watch::Sender<State>,
    want: watch::Sender<bool>,
    ring: Mutex<LogRing>,
    pid: AtomicI32,
    restarts: AtomicU32,
}

impl Unit {
    fn new(cfg: Option<Service>, state: State) -> Self {
        Unit {
            cfg,
            state: watch::Sender::new(state),
            want: watch::Sender::new(true),
            ring: Mutex::new(LogRing::new(RING_LINES, RING_BYTES)),
            pid: AtomicI32::new(0),
            restarts: AtomicU32::new(0),
        }
    }

    fn set(&self, name: &str, s: State) {
        let changed = *self.state.borrow() != s;
        if changed {
            match &s {
                State::Failed(r) => tracing::warn!(service = name, reason = %r, "service failed"),
                State::Blocked(r) => {
                    tracing::error!(service = name, reason = %r, "service held back")
                }
                _ => tracing::info!(service = name, state = s.name(), "service state"),
            }
        }
        self.state.send_replace(s);
    }

    /// Current state.
    pub fn state(&self) -> State {
        self.state.borrow().clone()
    }

    /// Current main pid, 0 when not running.
    pub fn pid(&self) -> i32 {
        self.pid.load(Ordering::SeqCst)
    }

    /// Restarts after an unexpected exit so far.
    pub fn restarts(&self) -> u32 {
        self.restarts.load(Ordering::SeqCst)
    }

    pub(crate) fn ring(&self) -> std::sync::MutexGuard<'_, LogRing> {
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A snapshot of one service for `list` and `status`.
#[derive(Debug, Clone)]
pub struct ServiceStatus {
    /// Service name.
    pub name: String,
    /// State name.
    pub state: String,
    /// Main pid or 0.
    pub pid: u32,
    /// Restart count.
    pub restarts: u32,
    /// Why it is blocked or failed.
    pub reason: String,
    /// Its dependencies.
    pub after: Vec<String>,
}

/// Errors answered to control requests.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// No such service.
    #[error("no service named {0:?}")]
    Unknown(String),
    /// The service is held back and cannot be started.
    #[error("service {0} is held back: {1}")]
    Blocked(String, String),
    /// The system is shutting down.
    #[error("shutting down")]
    ShuttingDown,
}

/// Restart delays: 0.5 s doubling to 30 s (each jittered into its upper half), forgotten after
/// a run of 60 s.
pub fn default_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(500), Duration::from_secs(30))
        .reset_after(Duration::from_secs(60))
}

/// Settings of the supervisor that are not in the service files.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Where `log: file` services write; `None` falls back to the ring only.
    pub log_dir: Option<PathBuf>,
    /// Restart backoff template; `None` is [`default_backoff`].
    pub backoff: Option<Backoff>,
    /// The cgroup2 mount under which each service gets `services/<name>`; `None` (an
    /// ordinary process supervising, e.g. in tests) leaves services in the caller's cgroup.
    pub cgroup_root: Option<PathBuf>,
    /// Where `passwd` and `group` are read to resolve `user:` and `group:`; `None` is `/etc`.
    pub etc: Option<PathBuf>,
}

/// All services, their plan, and the reaper shared with everything that spawns.
#[derive(Debug)]
pub struct Supervisor {
    units: BTreeMap<String, Arc<Unit>>,
    plan: Plan,
    reaper: Arc<Reaper>,
    opts: Options,
    shutting_down: AtomicBool,
    started_at: Instant,
}

impl Supervisor {
    /// Builds units from loaded files; bad files and broken dependencies become blocked units.
    pub fn new(loaded: Loaded, reaper: Arc<Reaper>, opts: Options) -> Arc<Self> {
        let deps: BTreeMap<String, Vec<String>> = loaded
            .services
            .iter()
            .map(|(n, s)| (n.clone(), s.after.clone()))
            .collect();
        let plan = graph::plan(&deps, &loaded.bad);
        let mut units = BTreeMap::new();
        for name in loaded.bad.keys() {
            units.insert(name.clone(), Arc::new(Unit::new(None, State::Waiting)));
        }
        for (name, svc) in loaded.services {
            units.insert(name, Arc::new(Unit::new(Some(svc), State::Waiting)));
        }
        for (name, why) in &plan.blocked {
            if let Some(u) = units.get(name) {
                u.set(name, State::Blocked(why.clone()));
            }
        }
        Arc::new(Supervisor {
            units,
            plan,
            reaper,
            opts,
            shutting_down: AtomicBool::new(false),
            started_at: Instant::now(),
        })
    }

    /// The dependency plan (start order and held-back services).
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Starts one runner task per runnable service, and a task that logs when all are up.
    pub fn start(self: &Arc<Self>) {
        for name in &self.plan.order {
            let this = Arc::clone(self);
            let name = name.clone();
            tokio::spawn(async move { this.runner(name).await });
        }
        let this = Arc::clone(self);
        tokio::spawn(async move {
            for name in &this.plan.order {
                if let Some(u) = this.units.get(name) {
                    let mut rx = u.state.subscribe();
                    let _ = rx.wait_for(State::is_ready).await;
                }
            }
            tracing::info!(
                services = this.plan.order.len(),
                held_back = this.plan.blocked.len(),
                elapsed_ms = this.started_at.elapsed().as_millis() as u64,
                "all services started"
            );
        });
    }

    fn unit(&self, name: &str) -> Result<&Arc<Unit>, SupervisorError> {
        self.units
            .get(name)
            .ok_or_else(|| SupervisorError::Unknown(name.chars().take(64).collect()))
    }

    /// Snapshot of every service, by name.
    pub fn list(&self) -> Vec<ServiceStatus> {
        self.units
            .keys()
            .filter_map(|n| self.status(n).ok())
            .collect()
    }

    /// Snapshot of one service.
    pub fn status(&self, name: &str) -> Result<ServiceStatus, SupervisorError> {
        let u = self.unit(name)?;
        let st = u.state();
        Ok(ServiceStatus {
            name: name.to_string(),
            state: st.name().to_string(),
            pid: u.pid().max(0) as u32,
            restarts: u.restarts(),
            reason: st.reason().to_string(),
            after: u.cfg.as_ref().map(|c| c.after.clone()).unwrap_or_default(),
        })
    }

    /// Log lines of a service from sequence `since`, and the next sequence number.
    pub fn log(&self, name: &str, since: u64) -> Result<(Vec<String>, u64), SupervisorError> {
        Ok(self.unit(name)?.ring().since(since))
    }

    fn check_startable(&self, name: &str) -> Result<&Arc<Unit>, SupervisorError> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(SupervisorError::ShuttingDown);
        }
        let u = self.unit(name)?;
        if let State::Blocked(why) = u.state() {
            return Err(SupervisorError::Blocked(name.to_string(), why));
        }
        Ok(u)
    }

    /// Asks a service to run (a no-op when it already does).
    pub fn start_service(&self, name: &str) -> Result<(), SupervisorError> {
        let u = self.check_startable(name)?;
        u.want.send_replace(true);
        Ok(())
    }

    /// Stops a service and waits until its process is gone.
    pub async fn stop_service(&self, name: &str) -> Result<(), SupervisorError> {
        let u = self.unit(name)?;
        u.want.send_replace(false);
        Self::wait_down(u).await;
        Ok(())
    }

    /// Stops then starts a service.
    pub async fn restart_service(&self, name: &str) -> Result<(), SupervisorError> {
        self.check_startable(name)?;
        self.stop_service(name).await?;
        self.start_service(name)
    }

    async fn wait_down(u: &Unit) {
        let limit = u
            .cfg
            .as_ref()
            .map(|c| c.shutdown_timeout)
            .unwrap_or_default()
            + Duration::from_secs(10);
        let mut rx = u.state.subscribe();
        let down = rx.wait_for(|s| matches!(s, State::Stopped | State::Blocked(_)));
        let _ = tokio::time::timeout(limit, down).await;
    }

    /// Stops every service in reverse dependency order, each within its timeout.
    pub async fn shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        for name in self.plan.stop_order() {
            if let Some(u) = self.units.get(&name) {
                u.want.send_replace(false);
                Self::wait_down(u).await;
            }
        }
        tracing::info!("all services stopped");
    }

    async fn runner(self: Arc<Self>, name: String) {
        let Some(unit) = self.units.get(&name).cloned() else {
            return;
        };
        let Some(cfg) = unit.cfg.clone() else {
            return;
        };
        let mut want = unit.want.subscribe();
        let mut backoff = self.opts.backoff.clone().unwrap_or_else(default_backoff);
        loop {
            let wanted = *want.borrow_and_update();
            if !wanted {
                unit.set(&name, State::Stopped);
                if want.wait_for(|w| *w).await.is_err() {
                    return;
                }
                backoff.reset();
            }
            unit.set(&name, State::Waiting);
            tokio::select! {
                _ = self.deps_ready(&cfg) => {}
                _ = until(&mut want, false) => continue,
            }
            let outcome = self.run_once(&unit, &cfg, &mut want).await;
            match outcome {
                Outcome::Stopped => continue,
                Outcome::Exited(exit, _) if cfg.oneshot => {
                    if exit.success() {
                        unit.set(&name, State::Success);
                    } else {
                        unit.set(&name, State::Failed(exit.to_string()));
                    }
                    // A oneshot runs again only when asked to (stop + start).
                    let _ = want.wait_for(|w| !*w).await;
                }
                Outcome::Exited(exit, ran_for) => {
                    unit.set(&name, State::Failed(exit.to_string()));
                    self.wait_backoff(&unit, &name, &mut backoff, ran_for, &mut want)
                        .await;
                }
                Outcome::SpawnFailed(e) => {
                    unit.set(&name, State::Failed(e));
                    self.wait_backoff(&unit, &name, &mut backoff, Duration::ZERO, &mut want)
                        .await;
                }
            }
        }
    }

    async fn wait_backoff(
        &self,
        unit: &Unit,
        name: &str,
        backoff: &mut Backoff,
        ran_for: Duration,
        want: &mut watch::Receiver<bool>,
    ) {
        let wanted = *want.borrow();
        if !wanted {
            return;
        }
        let delay = backoff.next_delay_after(ran_for);
        unit.restarts.fetch_add(1, Ordering::SeqCst);
        unit.set(name, State::Backoff);
        tracing::info!(
            service = name,
            delay_ms = delay.as_millis() as u64,
            "restarting after backoff"
        );
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = until(want, false) => {}
        }
    }

    async fn deps_ready(&self, cfg: &Service) {
        for dep in &cfg.after {
            if let Some(u) = self.units.get(dep) {
                let mut rx = u.state.subscribe();
                let _ = rx.wait_for(State::is_ready).await;
            }
        }
    }

    async fn run_once(
        &self,
        unit: &Arc<Unit>,
        cfg: &Service,
        want: &mut watch::Receiver<bool>,
    ) -> Outcome {
        let name = cfg.name.as_str();
        let (pid, mut exit_rx) = match self.spawn_service(unit, cfg) {
            Ok(x) => x,
            Err(e) => return Outcome::SpawnFailed(format!("cannot start {:?}: {e}", cfg.exec)),
        };
        unit.pid.store(pid, Ordering::SeqCst);
        let started = Instant::now();
        // A oneshot is ready only once it has exited 0; a gated service once its test passes.
        let gated = cfg.test.is_some() && !cfg.oneshot;
        let state = if gated || cfg.oneshot {
            State::Starting
        } else {
            State::Running
        };
        unit.set(name, state);
        tracing::debug!(service = name, pid, "spawned");
        let test = self.test_loop(cfg);
        tokio::pin!(test);
        let mut tested = !gated;
        let outcome = loop {
            tokio::select! {
                exit = &mut exit_rx => {
                    let exit = exit.unwrap_or(Exit::Signal(Signal::SIGKILL as i32));
                    tracing::info!(service = name, pid, %exit, "service exited");
                    break Outcome::Exited(exit, started.elapsed());
                }
                _ = &mut test, if !tested => {
                    tested = true;
                    unit.set(name, State::Running);
                }
                _ = until(want, false) => {
                    unit.set(name, State::Stopping);
                    self.stop_pid(name, pid, cfg, &mut exit_rx).await;
                    break Outcome::Stopped;
                }
            }
        };
        unit.pid.store(0, Ordering::SeqCst);
        outcome
    }

    async fn stop_pid(
        &self,
        name: &str,
        pid: i32,
        cfg: &Service,
        exit_rx: &mut oneshot::Receiver<Exit>,
    ) {
        // Signal the process group first (it was made a group leader), then the pid.
        let _ = kill(Pid::from_raw(-pid), cfg.signal);
        let _ = kill(Pid::from_raw(pid), cfg.signal);
        match tokio::time::timeout(cfg.shutdown_timeout, &mut *exit_rx).await {
            Ok(exit) => {
                if let Ok(exit) = exit {
                    tracing::info!(service = name, pid, %exit, "service stopped");
                }
            }
            Err(_) => {
                tracing::warn!(service = name, pid, "shutdown timeout; sending SIGKILL");
                let _ = kill(Pid::from_raw(-pid), Signal::SIGKILL);
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                let _ = tokio::time::timeout(Duration::from_secs(5), &mut *exit_rx).await;
            }
        }
    }

    async fn test_loop(&self, cfg: &Service) {
        let Some(test) = &cfg.test else {
            return std::future::pending().await;
        };
        loop {
            match self.run_test(cfg, test).await {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => {
                    tracing::debug!(service = %cfg.name, error = &e as &dyn std::error::Error, "health test did not run")
                }
            }
            tokio::time::sleep(TEST_INTERVAL).await;
        }
    }

    /// Resolves a service's user, group, capabilities, cgroup and state directories.
    fn privileges(&self, cfg: &Service) -> Result<privs::Plan, privs::PrivError> {
        let etc = self
            .opts
            .etc
            .clone()
            .unwrap_or_else(|| PathBuf::from("/etc"));
        let read = |f: &str| std::fs::read_to_string(etc.join(f)).unwrap_or_default();
        let unknown = |kind, name: &str, file: &str| privs::PrivError::Unknown {
            kind,
            name: name.to_string(),
            file: etc.join(file).display().to_string(),
        };
        let mut ids = None;
        if let Some(user) = &cfg.user {
            let (uid, mut gid) = privs::lookup_user(&read("passwd"), user)
                .ok_or_else(|| unknown("user", user, "passwd"))?;
            if let Some(group) = &cfg.group {
                gid = privs::lookup_group(&read("group"), group)
                    .ok_or_else(|| unknown("group", group, "group"))?;
            }
            ids = Some((uid, gid));
        } else if let Some(group) = &cfg.group {
            let gid = privs::lookup_group(&read("group"), group)
                .ok_or_else(|| unknown("group", group, "group"))?;
            ids = Some((0, gid));
        }
        let (uid, gid) = ids.unwrap_or((0, 0));
        privs::own_dirs(&cfg.state_dirs, uid, gid)?;
        privs::grant_read(&cfg.readable, gid)?;
        let cgroup_procs = match &self.opts.cgroup_root {
            Some(root) => Some(privs::cgroup(
                root,
                &cfg.name,
                cfg.memory_max,
                cfg.pids_max,
            )?),
            None => None,
        };
        Ok(privs::Plan {
            ids,
            caps: cfg.capabilities,
            last_cap: privs::last_cap(),
            no_new_privs: cfg.no_new_privs,
            cgroup_procs,
        })
    }

    /// The command for `argv` of `cfg`, with the service's privileges applied in the child.
    fn command(&self, cfg: &Service, argv: &[String]) -> std::io::Result<Command> {
        let plan = self
            .privileges(cfg)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let mut cmd = base_command(cfg, argv);
        // SAFETY: `Plan::apply` only makes system calls (write, prctl, setgroups, setgid,
        // setuid, capset) on data resolved before the fork; it neither allocates nor locks.
        unsafe {
            cmd.pre_exec(move || plan.apply());
        }
        Ok(cmd)
    }

    async fn run_test(&self, cfg: &Service, test: &[String]) -> std::io::Result<bool> {
        let mut cmd = self.command(cfg, test)?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let (pid, rx) = self.reaper.spawn(cmd)?;
        match tokio::time::timeout(TEST_TIMEOUT, rx).await {
            Ok(Ok(exit)) => Ok(exit.success()),
            Ok(Err(_)) => Ok(false),
            Err(_) => {
                let _ = kill(Pid::from_raw(-pid), Signal::SIGKILL);
                Ok(false)
            }
        }
    }

    fn spawn_service(
        &self,
        unit: &Arc<Unit>,
        cfg: &Service,
    ) -> std::io::Result<(i32, oneshot::Receiver<Exit>)> {
        let mut cmd = self.command(cfg, &cfg.exec)?;
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(write.try_clone()?))
            .stderr(Stdio::from(write));
        let (pid, rx) = self.reaper.spawn(cmd)?;
        let reader = tokio::net::unix::pipe::Receiver::from_owned_fd(read)?;
        let sink = LogSink::new(unit, cfg, self.opts.log_dir.as_deref());
        tokio::spawn(sink.pump(reader));
        Ok((pid, rx))
    }
}

/// How one run of a service ended.
enum Outcome {
    Exited(Exit, Duration),
    SpawnFailed(String),
    Stopped,
}

/// Waits until the wanted state equals `value` (forever if the sender is gone).
async fn until(want: &mut watch::Receiver<bool>, value: bool) {
    if want.wait_for(|w| *w == value).await.is_err() {
        std::future::pending::<()>().await;
    }
}

fn base_command(cfg: &Service, argv: &[String]) -> Command {
    let mut cmd = Command::new(argv.first().map(String::as_str).unwrap_or("/bin/false"));
    cmd.args(argv.iter().skip(1));
    cmd.envs(&cfg.env);
    cmd.env("GRIDOS_SERVICE", &cfg.name);
    cmd.current_dir("/");
    // Own process group, so stopping reaches the whole service.
    cmd.process_group(0);
    cmd
}
