//! A `grid-registry` child process on 127.0.0.1 with a SQLite file, and the farmer's set-up
//! through the real `grid` CLI, exactly as a farmer would do it.

use std::fs::OpenOptions;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use gridapi::{FarmView, Written};
use serde::de::DeserializeOwned;

/// A registry server we started and can stop and start again on the same port and file.
pub struct Registry {
    bin: PathBuf,
    db: String,
    pub addr: SocketAddr,
    log: PathBuf,
    child: Option<Child>,
    http: reqwest::Client,
}

/// A free port on 127.0.0.1, so parallel runs never collide.
pub fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free port on 127.0.0.1")?;
    Ok(l.local_addr()?.port())
}

impl Registry {
    /// Starts `grid-registry serve` on `addr` with the SQLite file `db_file`.
    pub async fn start(
        bin_dir: &Path,
        db_file: &Path,
        addr: SocketAddr,
        log: &Path,
    ) -> anyhow::Result<Registry> {
        let mut r = Registry {
            bin: bin_dir.join("grid-registry"),
            db: format!("sqlite://{}", db_file.display()),
            addr,
            log: log.to_path_buf(),
            child: None,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
        };
        r.restart().await?;
        Ok(r)
    }

    /// The base URL on the host.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The same registry as the QEMU guest sees it through user networking.
    pub fn guest_url(&self) -> String {
        format!("http://10.0.2.2:{}", self.addr.port())
    }

    /// Starts the server (again) and waits until it answers.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            bail!("registry already running");
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let child = Command::new(&self.bin)
            .args([
                "serve",
                "--db",
                &self.db,
                "--listen",
                &self.addr.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        self.child = Some(child);
        let t0 = Instant::now();
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Some(st) = c.try_wait()? {
                    self.child = None;
                    bail!("grid-registry exited with {st}; see {}", self.log.display());
                }
            }
            if self
                .get::<gridapi::Stats>(gridapi::paths::STATS)
                .await
                .is_ok()
            {
                return Ok(());
            }
            if t0.elapsed() > Duration::from_secs(30) {
                bail!("grid-registry did not answer on {} within 30 s", self.url());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the server with SIGTERM (as an operator would) and waits for it.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let t0 = Instant::now();
            while c.try_wait()?.is_none() {
                if t0.elapsed() > Duration::from_secs(10) {
                    let _ = c.kill();
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    /// GET an answer of the API, read as its `gridapi` type.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let resp = self
            .http
            .get(format!("{}{path}", self.url()))
            .send()
            .await?;
        let status = resp.status();
        let body = resp.bytes().await?;
        if !status.is_success() {
            bail!(
                "GET {path}: HTTP {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        serde_json::from_slice(&body).with_context(|| {
            format!(
                "GET {path}: the answer is not the expected JSON: {}",
                String::from_utf8_lossy(&body)
            )
        })
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// The farmer's side, through the `grid` CLI: a key, a twin, a farm. Idempotent: an existing
/// key is kept and an existing farm of that name is found again.
pub fn setup_farm(bin_dir: &Path, registry: &str, key: &Path, name: &str) -> anyhow::Result<u64> {
    fn grid<T: DeserializeOwned>(
        bin_dir: &Path,
        registry: &str,
        key: &Path,
        args: &[&str],
    ) -> anyhow::Result<T> {
        let out = Command::new(bin_dir.join("grid"))
            .args(["--registry", registry, "--key"])
            .arg(key)
            .arg("--json")
            .args(args)
            .output()
            .with_context(|| format!("running grid {}", args.join(" ")))?;
        if !out.status.success() {
            bail!(
                "grid {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        serde_json::from_slice(&out.stdout)
            .with_context(|| format!("grid {} printed no JSON", args.join(" ")))
    }
    if !key.exists() {
        grid::<serde_json::Value>(bin_dir, registry, key, &["key", "new"])?;
    }
    grid::<Written>(bin_dir, registry, key, &["twin", "register"])?;
    let farms: Vec<FarmView> = grid(bin_dir, registry, key, &["farm", "list"])?;
    if let Some(f) = farms.iter().find(|f| f.name == name) {
        return Ok(f.id as u64);
    }
    let w: Written = grid(bin_dir, registry, key, &["farm", "create", name])?;
    Ok(w.id as u64)
}

/// What every lab job starts with: a registry on 127.0.0.1:`port` (0: a free one) with its
/// SQLite file and log in `work`, and the farm `farm_name` of the key `work/farmer.key`.
pub async fn with_farm(
    bin_dir: &Path,
    work: &Path,
    port: u16,
    farm_name: &str,
) -> anyhow::Result<(Registry, u64)> {
    let port = if port == 0 { free_port()? } else { port };
    let reg = Registry::start(
        bin_dir,
        &work.join("registry.db"),
        ([127, 0, 0, 1], port).into(),
        &work.join("registry.log"),
    )
    .await?;
    let farm = setup_farm(bin_dir, &reg.url(), &work.join("farmer.key"), farm_name)?;
    Ok((reg, farm))
}

/// `grid nodes list` as a farmer sees it, for the console.
pub fn nodes_table(bin_dir: &Path, registry: &str) -> String {
    match Command::new(bin_dir.join("grid"))
        .args(["--registry", registry, "nodes", "list"])
        .output()
    {
        Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
        Err(e) => format!("grid nodes list: {e}\n"),
    }
}
