//! The real `grid-registry` binary as a child process on 127.0.0.1: for what only the binary
//! shows (its command line, its limits under `prlimit`, its memory and CPU seen from
//! outside) and for the tools that run nodes against it (`gridos-lab`, `gridos-perf`).

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a registry gets to answer after it was started.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long [`RegistryProcess::stop`] waits after SIGTERM before it kills.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the registry process could not be started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The program (or its wrapper) could not be run.
    #[error("starting {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// Cause; names the Debian package when the program is missing.
        source: std::io::Error,
    },
    /// It exited before answering.
    #[error("grid-registry exited with {status}{hint}")]
    Exited {
        /// Its exit status.
        status: ExitStatus,
        /// Where its log is, when it has one.
        hint: String,
    },
    /// It did not answer in time.
    #[error("grid-registry did not answer on {url} within {} s{hint}", START_TIMEOUT.as_secs())]
    Timeout {
        /// Its URL.
        url: String,
        /// Where its log is, when it has one.
        hint: String,
    },
    /// It is running already.
    #[error("the registry on {0} is already running")]
    Running(SocketAddr),
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Cause.
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ProcessError {
    let what = what.into();
    move |source| ProcessError::Io { what, source }
}

/// A free port on 127.0.0.1, so parallel runs never collide.
pub fn free_port() -> std::io::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// How to run `grid-registry serve`: binary, database, address, log, extra flags.
#[derive(Debug, Clone)]
pub struct RegistryCommand {
    bin: PathBuf,
    wrapper: Vec<OsString>,
    db: Option<String>,
    listen: Option<SocketAddr>,
    log: Option<PathBuf>,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
}

impl RegistryCommand {
    /// `bin serve`, by default on a fresh SQLite file in a temporary folder, on a free port of
    /// 127.0.0.1, with stdout discarded and stderr inherited.
    pub fn new(bin: impl Into<PathBuf>) -> RegistryCommand {
        RegistryCommand {
            bin: bin.into(),
            wrapper: Vec::new(),
            db: None,
            listen: None,
            log: None,
            args: Vec::new(),
            envs: Vec::new(),
        }
    }

    /// Runs it through `argv` (a program and its arguments), e.g.
    /// `["prlimit", "--nofile=256:256", "--"]`.
    pub fn wrapper<I, S>(mut self, argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.wrapper = argv.into_iter().map(Into::into).collect();
        self
    }

    /// The database URL (`sqlite://FILE`, `postgres://…`).
    pub fn database(mut self, url: impl Into<String>) -> Self {
        self.db = Some(url.into());
        self
    }

    /// The address to listen on (kept across restarts).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = Some(addr);
        self
    }

    /// Appends stdout and stderr to `path`.
    pub fn log(mut self, path: impl Into<PathBuf>) -> Self {
        self.log = Some(path.into());
        self
    }

    /// One more argument after `serve --db … --listen …`.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// More arguments after `serve --db … --listen …`.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// An environment variable for it.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// Starts it and waits until it answers HTTP.
    pub async fn start(self) -> Result<RegistryProcess, ProcessError> {
        let (db, dir) = match &self.db {
            Some(db) => (db.clone(), None),
            None => {
                let dir = tempfile::tempdir().map_err(io("creating a folder for SQLite"))?;
                let db = format!("sqlite://{}", dir.path().join("registry.db").display());
                (db, Some(dir))
            }
        };
        let addr = match self.listen {
            Some(a) => a,
            None => SocketAddr::from((
                [127, 0, 0, 1],
                free_port().map_err(io("finding a free port on 127.0.0.1"))?,
            )),
        };
        let mut p = RegistryProcess {
            cmd: self,
            db,
            addr,
            child: None,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .map_err(|e| ProcessError::Io {
                    what: "building an HTTP client".into(),
                    source: std::io::Error::other(e),
                })?,
            _dir: dir,
        };
        p.restart().await?;
        Ok(p)
    }
}

/// A `grid-registry serve` child process. Killed on drop; [`RegistryProcess::stop`] stops it
/// as an operator would.
#[derive(Debug)]
pub struct RegistryProcess {
    cmd: RegistryCommand,
    db: String,
    addr: SocketAddr,
    child: Option<Child>,
    http: reqwest::Client,
    _dir: Option<tempfile::TempDir>,
}

impl RegistryProcess {
    /// Its base URL, `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its database URL.
    pub fn db_url(&self) -> &str {
        &self.db
    }

    /// Its log file, when it has one.
    pub fn log_path(&self) -> Option<&Path> {
        self.cmd.log.as_deref()
    }

    /// Its process id while it runs (a wrapper such as prlimit execs it: the same process).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Its exit status, if it has exited on its own.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(status)
    }

    fn hint(&self) -> String {
        match &self.cmd.log {
            Some(l) => format!("; see {}", l.display()),
            None => String::new(),
        }
    }

    /// Starts it (again, after [`RegistryProcess::stop`]) on the same address and database,
    /// and waits until it answers HTTP.
    pub async fn restart(&mut self) -> Result<(), ProcessError> {
        if self.child.is_some() {
            return Err(ProcessError::Running(self.addr));
        }
        let c = &self.cmd;
        let mut argv: Vec<OsString> = c.wrapper.clone();
        argv.push(c.bin.clone().into_os_string());
        let program = argv.remove(0);
        let mut cmd = Command::new(&program);
        cmd.args(&argv);
        cmd.args([
            "serve",
            "--db",
            &self.db,
            "--listen",
            &self.addr.to_string(),
        ])
        .args(&c.args)
        .envs(c.envs.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        // Its own process group: a Ctrl-C at the terminal reaches the program that
        // started it, which stops it in order, instead of killing it mid-write.
        .process_group(0);
        match &c.log {
            Some(path) => {
                let log = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(io(format!("opening {}", path.display())))?;
                let err = log
                    .try_clone()
                    .map_err(io(format!("opening {}", path.display())))?;
                cmd.stdout(log).stderr(err);
            }
            None => {
                cmd.stdout(Stdio::null());
            }
        }
        let name = program.to_string_lossy().into_owned();
        let child = cmd.spawn().map_err(|e| ProcessError::Spawn {
            source: hosttools::spawn_error(&name, e),
            program: name,
        })?;
        self.child = Some(child);
        let t0 = Instant::now();
        loop {
            if let Some(status) = self.exited() {
                return Err(ProcessError::Exited {
                    status,
                    hint: self.hint(),
                });
            }
            // Any HTTP answer will do: it listens only once its database is open and migrated.
            if self
                .http
                .get(format!("{}/healthz", self.url()))
                .send()
                .await
                .is_ok()
            {
                return Ok(());
            }
            if t0.elapsed() > START_TIMEOUT {
                self.kill();
                return Err(ProcessError::Timeout {
                    url: self.url(),
                    hint: self.hint(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops it with SIGTERM, as an operator would, and waits; kills it after
    /// [`STOP_TIMEOUT`]. Its exit status (`None` when it was not running).
    pub fn stop(&mut self) -> Result<Option<ExitStatus>, ProcessError> {
        let Some(mut c) = self.child.take() else {
            return Ok(None);
        };
        let pid = nix::unistd::Pid::from_raw(c.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let t0 = Instant::now();
        loop {
            if let Some(status) = c.try_wait().map_err(io("waiting for grid-registry"))? {
                return Ok(Some(status));
            }
            if t0.elapsed() > STOP_TIMEOUT {
                let _ = c.kill();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills it (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RegistryProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
