//! A `grid-registry` child process on 127.0.0.1 with a SQLite file, and the farmer's set-up
//! through the real `grid` CLI, exactly as a farmer would do it.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};
use gridapi::{FarmView, Written};
use serde::de::DeserializeOwned;
use test_infra::{RegistryCommand, RegistryProcess};

/// A registry server we started and can stop and start again on the same port and file.
pub struct Registry {
    process: RegistryProcess,
    http: reqwest::Client,
}

impl Registry {
    /// Starts `grid-registry serve` from `bin_dir` on 127.0.0.1:`port` (0: a free one) with the
    /// SQLite file `db_file`, its output appended to `log`, serving the system extensions in
    /// `extensions` (the VM runtime, docs/vms.md) when given.
    pub async fn start(
        bin_dir: &Path,
        db_file: &Path,
        port: u16,
        log: &Path,
        extensions: Option<&Path>,
    ) -> anyhow::Result<Registry> {
        let mut cmd = RegistryCommand::new(bin_dir.join("grid-registry"))
            .database(format!("sqlite://{}", db_file.display()))
            .log(log);
        if port != 0 {
            cmd = cmd.listen(([127, 0, 0, 1], port).into());
        }
        if let Some(dir) = extensions {
            cmd = cmd.arg("--extensions").arg(dir);
        }
        Ok(Registry {
            process: cmd.start().await?,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .pool_idle_timeout(gridapi::CLIENT_POOL_IDLE)
                .build()?,
        })
    }

    /// Like [`Registry::start`] on a free port, also serving boot media per farm
    /// (`/boot/{farm}/…`) made from the release folder `release`, with the guest's address of
    /// the registry baked in.
    pub async fn start_serving_boot(
        bin_dir: &Path,
        work: &Path,
        release: &Path,
    ) -> anyhow::Result<Registry> {
        let port = test_infra::process::free_port()?;
        let cmd = RegistryCommand::new(bin_dir.join("grid-registry"))
            .database(format!("sqlite://{}", work.join("registry.db").display()))
            .log(work.join("registry.log"))
            .listen(([127, 0, 0, 1], port).into())
            .arg("--release")
            .arg(release)
            .arg("--public-url")
            .arg(format!("http://10.0.2.2:{port}"))
            .arg("--boot-cache")
            .arg(work.join("boot-cache"));
        Ok(Registry {
            process: cmd.start().await?,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .pool_idle_timeout(gridapi::CLIENT_POOL_IDLE)
                .build()?,
        })
    }

    /// The base URL on the host.
    pub fn url(&self) -> String {
        self.process.url()
    }

    /// The same registry as the QEMU guest sees it through user networking.
    pub fn guest_url(&self) -> String {
        format!("http://10.0.2.2:{}", self.process.addr().port())
    }

    /// Starts the server again (after [`Registry::stop`]) and waits until it answers.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        Ok(self.process.restart().await?)
    }

    /// Stops the server with SIGTERM (as an operator would) and waits for it.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        self.process.stop()?;
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
        // In order even when a lab job fails: the registry is the farmer's, kept in `work`.
        let _ = self.stop();
    }
}

/// The farmer's side, through the `grid` CLI: a key, a twin, a farm. Idempotent: an existing
/// key is kept and an existing farm of that name is found again.
pub fn setup_farm(bin_dir: &Path, registry: &str, key: &Path, name: &str) -> anyhow::Result<u64> {
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

/// Runs `grid --json ARGS` as the holder of `key` and reads what it prints.
pub fn grid<T: DeserializeOwned>(
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

/// What every lab job starts with: a registry on 127.0.0.1:`port` (0: a free one) with its
/// SQLite file and log in `work`, and the farm `farm_name` of the key `work/farmer.key`.
pub async fn with_farm(
    bin_dir: &Path,
    work: &Path,
    port: u16,
    farm_name: &str,
) -> anyhow::Result<(Registry, u64)> {
    with_farm_serving(bin_dir, work, port, farm_name, None).await
}

/// [`with_farm`], the registry also serving the system extensions in `extensions`.
pub async fn with_farm_serving(
    bin_dir: &Path,
    work: &Path,
    port: u16,
    farm_name: &str,
    extensions: Option<&Path>,
) -> anyhow::Result<(Registry, u64)> {
    let reg = Registry::start(
        bin_dir,
        &work.join("registry.db"),
        port,
        &work.join("registry.log"),
        extensions,
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
