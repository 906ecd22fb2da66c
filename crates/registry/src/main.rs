//! `grid-registry`: runs the grid registry server.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use registry::{db, Config, Db, Rate, RateLimits};
use tracing_subscriber::EnvFilter;

mod operator;

#[derive(Parser)]
#[command(
    name = "grid-registry",
    version,
    about = "The grid registry: phonebook and node reports"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the JSON API.
    Serve {
        /// Database: sqlite://PATH (created if missing) or postgres://USER@HOST/DB.
        #[arg(
            long,
            env = "GRID_REGISTRY_DB",
            default_value = "sqlite://grid-registry.db"
        )]
        db: String,
        /// Address to listen on.
        #[arg(long, env = "GRID_REGISTRY_LISTEN", default_value = "127.0.0.1:8480")]
        listen: SocketAddr,
        /// Largest request body in bytes.
        #[arg(long, default_value_t = Config::default().body_limit)]
        body_limit: usize,
        /// Seconds without a report after which a node counts as down.
        #[arg(long, default_value_t = Config::default().up_window_secs)]
        up_window: i64,
        #[command(flatten)]
        limits: Limits,
        #[command(flatten)]
        boot: BootArgs,
        /// Folder of system extensions (NAME.sqfs and NAME.json, as `gridos-imager extension`
        /// writes them) served to nodes at /api/v1/extensions/NAME.
        #[arg(long, env = "GRID_REGISTRY_EXTENSIONS")]
        extensions: Option<std::path::PathBuf>,
        /// Seconds between looks for minting periods to close (0: never; then run
        /// `grid-registry close`).
        #[arg(long, default_value_t = 600)]
        close_every: u64,
        /// Seconds after a period's end before it is closed (waits for the report that
        /// proves its last stretch).
        #[arg(long, default_value_t = registry::minting::MintingConfig::default().settle_secs)]
        settle: i64,
        /// Seconds between billing rounds (0: never; then run `grid-registry bill`).
        #[arg(long, default_value_t = 300)]
        bill_every: u64,
        /// Seconds a contract whose twin cannot pay keeps running before it is cancelled.
        #[arg(long, default_value_t = registry::billing::BillingConfig::default().grace_secs)]
        grace: i64,
    },
    #[command(flatten)]
    Operator(operator::OperatorCmd),
    /// Create or migrate the database, then exit.
    Migrate {
        /// Database URL, as for `serve`.
        #[arg(
            long,
            env = "GRID_REGISTRY_DB",
            default_value = "sqlite://grid-registry.db"
        )]
        db: String,
    },
}

/// Boot media per farm at `/boot/{farm}/ipxe|usb.img|iso` (docs/boot-media.md).
#[derive(Args)]
struct BootArgs {
    /// The release folder boot media are made from (vmlinuz, initramfs.img, cmdline, as
    /// `make image` writes out/); without it, /boot answers 404.
    #[arg(long, env = "GRID_REGISTRY_RELEASE", requires = "public_url")]
    release: Option<std::path::PathBuf>,
    /// This registry's URL as nodes reach it, baked into every image (never a loopback
    /// address: the node's own loopback is not this machine).
    #[arg(long, env = "GRID_REGISTRY_PUBLIC_URL", requires = "release")]
    public_url: Option<String>,
    /// Where built images are kept.
    #[arg(
        long,
        env = "GRID_REGISTRY_BOOT_CACHE",
        default_value = "grid-registry-boot"
    )]
    boot_cache: std::path::PathBuf,
    /// Images kept in --boot-cache at most (about 50 MB each); the least recently served go
    /// first.
    #[arg(long, default_value_t = 200)]
    boot_cache_images: usize,
}

impl BootArgs {
    fn config(&self) -> anyhow::Result<Option<registry::boot::BootConfig>> {
        let (Some(release), Some(url)) = (&self.release, &self.public_url) else {
            return Ok(None);
        };
        let url =
            bootmedia::node_url(url).map_err(|e| anyhow::anyhow!("--public-url {url:?}: {e}"))?;
        bootmedia::release_cmdline(release).map_err(|e| anyhow::anyhow!("--release: {e}"))?;
        std::fs::create_dir_all(&self.boot_cache)
            .with_context(|| format!("creating --boot-cache {}", self.boot_cache.display()))?;
        Ok(Some(registry::boot::BootConfig {
            release: release.clone(),
            cache: self.boot_cache.clone(),
            public_url: url.to_string(),
            max_images: self.boot_cache_images.max(1),
        }))
    }
}

/// Server limits (docs/registry.md, "Limits"). Defaults: `Config::default()`.
#[derive(Args)]
struct Limits {
    /// Seconds from the first byte of a request head to its end (slow-header clients).
    #[arg(long, default_value_t = Config::default().header_timeout.as_secs())]
    header_timeout: u64,
    /// Seconds a connection may wait for its next request, from connecting or from the
    /// previous response (idle keep-alive connections); at least --header-timeout.
    #[arg(long, default_value_t = Config::default().idle_timeout.as_secs())]
    idle_timeout: u64,
    /// Seconds from a request's head to its answer, body upload included (408 after).
    #[arg(long, default_value_t = Config::default().request_timeout.as_secs())]
    request_timeout: u64,
    /// Client connections served at once (lowered to what the file-descriptor limit allows).
    #[arg(long, default_value_t = Config::default().max_connections)]
    max_connections: usize,
    /// Bytes of writes that may wait for the database writer (503 `busy` beyond).
    #[arg(long, default_value_t = Config::default().write_queue_bytes)]
    write_queue_bytes: usize,
    /// Writes per minute from one client address (429 with Retry-After beyond).
    #[arg(long, default_value_t = RateLimits::default().per_ip.per_minute)]
    ip_writes_per_min: u32,
    /// Writes one client address may send at once.
    #[arg(long, default_value_t = RateLimits::default().per_ip.burst)]
    ip_write_burst: u32,
    /// New twins and farms per minute from one client address.
    #[arg(long, default_value_t = RateLimits::default().new_identities_per_ip.per_minute)]
    ip_new_identities_per_min: u32,
    /// New twins and farms one client address may create at once.
    #[arg(long, default_value_t = RateLimits::default().new_identities_per_ip.burst)]
    ip_new_identity_burst: u32,
    /// Writes per minute signed by one key.
    #[arg(long, default_value_t = RateLimits::default().per_key.per_minute)]
    key_writes_per_min: u32,
    /// Writes one key may send at once.
    #[arg(long, default_value_t = RateLimits::default().per_key.burst)]
    key_write_burst: u32,
}

impl Limits {
    fn apply(&self, config: &mut Config) -> anyhow::Result<()> {
        for (name, v) in [
            ("--header-timeout", self.header_timeout),
            ("--idle-timeout", self.idle_timeout),
            ("--request-timeout", self.request_timeout),
            ("--max-connections", self.max_connections as u64),
            ("--ip-writes-per-min", self.ip_writes_per_min.into()),
            ("--ip-write-burst", self.ip_write_burst.into()),
            (
                "--ip-new-identities-per-min",
                self.ip_new_identities_per_min.into(),
            ),
            ("--ip-new-identity-burst", self.ip_new_identity_burst.into()),
            ("--key-writes-per-min", self.key_writes_per_min.into()),
            ("--key-write-burst", self.key_write_burst.into()),
        ] {
            anyhow::ensure!(v > 0, "{name} must be at least 1");
        }
        anyhow::ensure!(
            self.idle_timeout >= self.header_timeout,
            "--idle-timeout ({} s) must be at least --header-timeout ({} s): it covers the head too",
            self.idle_timeout,
            self.header_timeout
        );
        anyhow::ensure!(
            self.write_queue_bytes >= config.body_limit,
            "--write-queue-bytes ({}) must hold at least one body (--body-limit {})",
            self.write_queue_bytes,
            config.body_limit
        );
        config.header_timeout = Duration::from_secs(self.header_timeout);
        config.idle_timeout = Duration::from_secs(self.idle_timeout);
        config.request_timeout = Duration::from_secs(self.request_timeout);
        config.max_connections = self.max_connections;
        config.write_queue_bytes = self.write_queue_bytes;
        config.rate = RateLimits {
            per_ip: Rate {
                burst: self.ip_write_burst,
                per_minute: self.ip_writes_per_min,
            },
            new_identities_per_ip: Rate {
                burst: self.ip_new_identity_burst,
                per_minute: self.ip_new_identities_per_min,
            },
            per_key: Rate {
                burst: self.key_write_burst,
                per_minute: self.key_writes_per_min,
            },
        };
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        // Colour codes only on a terminal: logs also go to files and journals.
        .with_ansi(std::io::stdout().is_terminal())
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    match Cli::parse().command {
        Command::Operator(cmd) => operator::run(cmd).await?,
        Command::Migrate { db } => {
            Db::connect(&db).await?;
            println!("database {} is up to date", db::redact(&db));
        }
        Command::Serve {
            db,
            listen,
            body_limit,
            up_window,
            limits,
            boot,
            extensions,
            close_every,
            settle,
            bill_every,
            grace,
        } => {
            anyhow::ensure!(
                body_limit >= 1024,
                "--body-limit must be at least 1024 bytes"
            );
            anyhow::ensure!(up_window > 0, "--up-window must be positive");
            let mut config = Config {
                body_limit,
                up_window_secs: up_window,
                ..Config::default()
            };
            limits.apply(&mut config)?;
            config.boot = boot.config()?;
            if let Some(dir) = &extensions {
                anyhow::ensure!(dir.is_dir(), "--extensions {}: not a folder", dir.display());
            }
            config.extensions = extensions;
            config.minting = (close_every > 0).then_some(registry::minting::MintingConfig {
                every: Duration::from_secs(close_every),
                settle_secs: settle,
            });
            anyhow::ensure!(grace >= 0, "--grace must not be negative");
            config.billing = registry::billing::BillingConfig {
                every: (bill_every > 0).then(|| Duration::from_secs(bill_every)),
                grace_secs: grace,
            };
            let database = Db::connect(&db).await?;
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            let addr = listener.local_addr()?;
            tracing::info!(%addr, db = %db::redact(&db), backend = ?database.backend, "grid registry listening");
            println!(
                "grid-registry listening on http://{addr} (database {})",
                db::redact(&db)
            );
            registry::serve(listener, database, config, shutdown_signal())
                .await
                .context("server failed")?;
            tracing::info!("grid registry stopped");
        }
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
