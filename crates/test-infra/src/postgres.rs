//! A throwaway PostgreSQL server on 127.0.0.1, and fresh databases on it or on the server
//! `GRIDOS_TEST_POSTGRES_URL` names.
//!
//! `tests/with-postgres.sh` (what `make test` runs the workspace under) starts one server for
//! the whole run and names it in `GRIDOS_TEST_POSTGRES_URL`; without it, each test process
//! starts its own on first use, so `cargo test -p registry` runs the PostgreSQL scenarios too.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use rand::RngCore;
use sqlx::Connection;

/// The variable naming a PostgreSQL server to use instead of starting one: an admin URL whose
/// user may create databases, e.g. `postgres://postgres@127.0.0.1:5432/postgres`.
pub const URL_VAR: &str = "GRIDOS_TEST_POSTGRES_URL";

/// Why no PostgreSQL database could be had.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The server programs (`initdb`, `pg_ctl`) are not installed.
    #[error(
        "PostgreSQL's server programs (initdb, pg_ctl) are not installed: they come with the \
         Debian package postgresql (`sudo apt-get install --no-install-recommends postgresql`, \
         or `tools/need-packages.sh test` as root)"
    )]
    NotInstalled,
    /// A step of starting the server failed; its output is kept.
    #[error("{step} failed ({status}):\n{output}")]
    Step {
        /// The command that failed.
        step: String,
        /// Its exit status.
        status: String,
        /// What it (or the server log) said.
        output: String,
    },
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The server did not take the `CREATE DATABASE`.
    #[error("creating a database on {url}: {source}")]
    Sql {
        /// The admin URL.
        url: String,
        /// Cause.
        source: sqlx::Error,
    },
    /// The admin URL has no `/database` part to replace.
    #[error("{0} is not a postgres://…/DATABASE URL")]
    BadUrl(String),
    /// The process-wide server could not be started (the first error, for every later caller).
    #[error("the test process's PostgreSQL server did not start: {0}")]
    Shared(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> PgError {
    let what = what.into();
    move |source| PgError::Io { what, source }
}

/// A PostgreSQL server of our own: a cluster in a temporary folder, listening on a free port
/// of 127.0.0.1 only (and a Unix socket in that folder), trusting local connections. Stopped
/// and removed on drop; a watchdog process does the same if this process dies first.
pub struct Postgres {
    dir: PathBuf,
    bindir: PathBuf,
    /// `runuser -u postgres --` when running as root: PostgreSQL refuses to run as root.
    as_user: Vec<String>,
    url: String,
    watchdog: Option<Child>,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postgres")
            .field("dir", &self.dir)
            .field("url", &self.url)
            .finish()
    }
}

/// The newest `/usr/lib/postgresql/<version>/bin` that has `initdb` (Debian keeps the server
/// programs off `PATH`), else `initdb` on `PATH`.
fn server_bindir() -> Option<PathBuf> {
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version: u32 = e.file_name().to_str()?.split('.').next()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .max_by_key(|(v, _)| *v)
        .map(|(_, bin)| bin);
    newest.or_else(|| Some(crate::gate::find_program("initdb")?.parent()?.to_path_buf()))
}

fn free_port() -> Result<u16, PgError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(io("finding a free port"))?;
    Ok(l.local_addr().map_err(io("finding a free port"))?.port())
}

/// Runs `cmd`; its output is the error when it fails.
fn run(step: &str, cmd: &mut Command) -> Result<(), PgError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(io(format!("running {step}")))?;
    if out.status.success() {
        return Ok(());
    }
    Err(PgError::Step {
        step: step.to_string(),
        status: out.status.to_string(),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    })
}

// Stops the cluster and removes its folder once the process that started it is gone, however
// it ended (a test binary killed by a timeout or Ctrl-C runs no destructor, and a server
// shared through a static is never dropped); it also ends, doing nothing, once the owner has
// removed the folder itself.
const WATCHDOG: &str = r#"parent=$1 dir=$2; shift 2
while kill -0 "$parent" 2>/dev/null && [ -d "$dir" ]; do sleep 1; done
if [ -d "$dir/data" ]; then "$@" -D "$dir/data" -m immediate stop >/dev/null 2>&1; fi
rm -rf "$dir""#;

impl Postgres {
    /// Creates and starts a cluster (initdb, then pg_ctl start; a few seconds). Blocks.
    pub fn start() -> Result<Postgres, PgError> {
        let bindir = server_bindir().ok_or(PgError::NotInstalled)?;
        let dir = tempfile::Builder::new()
            .prefix("gridos-pg.")
            .tempdir()
            .map_err(io("creating the cluster folder"))?
            .keep();
        // SAFETY: geteuid has no preconditions and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        let mut pg = Postgres {
            dir,
            bindir,
            as_user: Vec::new(),
            url: String::new(),
            watchdog: None,
        };
        if root {
            // PostgreSQL refuses to run as root; its own user must own the cluster.
            run(
                "chown postgres:",
                Command::new("chown").arg("postgres:").arg(&pg.dir),
            )?;
            pg.as_user = ["runuser", "-u", "postgres", "--"]
                .map(String::from)
                .to_vec();
        }
        pg.watchdog = Some(pg.spawn_watchdog()?);
        let data = pg.dir.join("data");
        run(
            "initdb",
            pg.command("initdb").arg("-D").arg(&data).args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
            ]),
        )?;
        // A port found free may be taken before the server binds it: try a few.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = free_port()?;
            let options = format!(
                "-c listen_addresses=127.0.0.1 -p {port} -k {} -c max_connections=300 -c fsync=on",
                pg.dir.display()
            );
            let started = run(
                "pg_ctl start",
                pg.command("pg_ctl")
                    .arg("-D")
                    .arg(&data)
                    .arg("-l")
                    .arg(pg.dir.join("server.log"))
                    .args(["-w", "-o", &options, "start"]),
            );
            match started {
                Ok(()) => {
                    pg.url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
                    return Ok(pg);
                }
                Err(PgError::Step { step, status, .. }) if attempt == 3 => {
                    let log =
                        std::fs::read_to_string(pg.dir.join("server.log")).unwrap_or_default();
                    return Err(PgError::Step {
                        step,
                        status,
                        output: log,
                    });
                }
                Err(PgError::Step { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// The admin URL: user `postgres` (trusted, no password) on database `postgres`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The cluster's folder (data, server log, Unix socket).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A new, empty database on this server; its URL.
    pub async fn fresh_database(&self) -> Result<String, PgError> {
        create_database(&self.url).await
    }

    fn command(&self, program: &str) -> Command {
        let exe = self.bindir.join(program);
        match self.as_user.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(exe);
                c
            }
            None => Command::new(exe),
        }
    }

    fn spawn_watchdog(&self) -> Result<Child, PgError> {
        use std::os::unix::process::CommandExt;
        Command::new("sh")
            .args(["-c", WATCHDOG, "gridos-pg-watchdog"])
            .arg(std::process::id().to_string())
            .arg(&self.dir)
            .args(&self.as_user)
            .arg(self.bindir.join("pg_ctl"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: a Ctrl-C meant for the tests must leave it to clean up.
            .process_group(0)
            .spawn()
            .map_err(io("starting the PostgreSQL watchdog"))
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if !self.url.is_empty() {
            let _ = self
                .command("pg_ctl")
                .arg("-D")
                .arg(self.dir.join("data"))
                .args(["-m", "immediate", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

/// The server the tests of this process share: the one `GRIDOS_TEST_POSTGRES_URL` names, or
/// one started on first use (blocking) and stopped by its watchdog when the process ends.
/// Its admin URL.
pub fn shared_server() -> Result<String, PgError> {
    if let Some(url) = std::env::var(URL_VAR).ok().filter(|u| !u.is_empty()) {
        return Ok(url);
    }
    // The error as text (`None`: not installed), since every later caller gets it too.
    static SHARED: OnceLock<Result<Postgres, Option<String>>> = OnceLock::new();
    let started = SHARED.get_or_init(|| {
        Postgres::start().map_err(|e| match e {
            PgError::NotInstalled => None,
            e => Some(e.to_string()),
        })
    });
    match started {
        Ok(pg) => Ok(pg.url.clone()),
        Err(None) => Err(PgError::NotInstalled),
        Err(Some(e)) => Err(PgError::Shared(e.clone())),
    }
}

/// A new, empty database on the [`shared_server`]; its URL.
pub async fn fresh_database() -> Result<String, PgError> {
    let admin = match tokio::task::spawn_blocking(shared_server).await {
        Ok(r) => r?,
        Err(e) => return Err(PgError::Shared(e.to_string())),
    };
    create_database(&admin).await
}

async fn create_database(admin: &str) -> Result<String, PgError> {
    let sql = |source| PgError::Sql {
        url: admin.to_string(),
        source,
    };
    let base = admin
        .rsplit_once('/')
        .filter(|(b, _)| b.contains("://"))
        .map(|(b, _)| b)
        .ok_or_else(|| PgError::BadUrl(admin.to_string()))?;
    let name = format!("gridos_test_{:016x}", rand::rngs::OsRng.next_u64());
    let mut conn = sqlx::PgConnection::connect(admin).await.map_err(sql)?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .map_err(sql)?;
    let _ = conn.close().await;
    Ok(format!("{base}/{name}"))
}
