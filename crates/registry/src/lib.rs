//! The grid registry: the phonebook (twins, farms, nodes) and every signed node report.
//!
//! Writes arrive as signed envelopes and are verified in the request handlers, then applied
//! by one writer in batched transactions; reads are plain SQL over a pool. The server keeps
//! no state outside its database, so several replicas can share one PostgreSQL.

pub mod api;
pub mod billing;
pub mod boot;
pub mod db;
pub mod error;
pub mod extensions;
pub mod ledger;
pub mod ledger_api;
pub mod limits;
pub mod metrics;
pub mod minting;
pub mod server;
pub mod web;
pub mod writer;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use tokio::net::TcpListener;

pub use db::{Backend, Db, DbError};
pub use error::ApiError;
pub use limits::{Rate, RateLimits};

/// Server settings; each has a `grid-registry serve` flag (see docs/registry.md).
#[derive(Debug, Clone)]
pub struct Config {
    /// Largest request body accepted, in bytes.
    pub body_limit: usize,
    /// A node that has not reported for this long counts as down.
    pub up_window_secs: i64,
    /// Time from the first byte of a request head to its end (slow-header clients).
    pub header_timeout: Duration,
    /// Time a connection may wait for its next request, from connecting or from the previous
    /// response (idle keep-alive connections).
    pub idle_timeout: Duration,
    /// Time from a request's head to its answer, body upload included.
    pub request_timeout: Duration,
    /// Client connections served at once (lowered to what the file-descriptor limit allows).
    pub max_connections: usize,
    /// Bytes of accepted writes that may wait for the writer; beyond it writes get 503 `busy`.
    pub write_queue_bytes: usize,
    /// Write rate limits per client address and per key.
    pub rate: RateLimits,
    /// Boot media per farm (`/boot/{farm}/…`), when a release folder is given.
    pub boot: Option<boot::BootConfig>,
    /// The folder of system extensions served at `/api/v1/extensions/…` (`--extensions`).
    pub extensions: Option<std::path::PathBuf>,
    /// Closing minting periods in the background (`None`: only `grid-registry close`).
    pub minting: Option<minting::MintingConfig>,
    /// How often the grid is sampled for the web page's charts (`None`: never).
    pub sample_every: Option<Duration>,
    /// Billing of contracts.
    pub billing: billing::BillingConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            body_limit: 64 * 1024,
            // Two report intervals (40 min each): one lost report does not mark a node down.
            up_window_secs: 2 * 40 * 60,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(30),
            max_connections: 8192,
            write_queue_bytes: 64 << 20,
            rate: RateLimits::default(),
            boot: None,
            extensions: None,
            minting: Some(minting::MintingConfig::default()),
            sample_every: Some(Duration::from_secs(600)),
            billing: billing::BillingConfig::default(),
        }
    }
}

/// Builds the full application for an open database (needs a tokio runtime: the writer and
/// the rate limiters' clean-up run as tasks).
pub fn app(db: Db, config: Config) -> Router {
    let writer = writer::Writer::spawn(db.clone(), config.write_queue_bytes);
    if let Some(m) = config.minting {
        tokio::spawn(minting::run(db.clone(), m));
    }
    if let Some(every) = config.billing.every {
        tokio::spawn(billing::run(db.clone(), every, config.billing.grace_secs));
    }
    if let Some(every) = config.sample_every {
        tokio::spawn(web::sampler(db.clone(), every, config.up_window_secs));
    }
    let keys = limits::KeyLimiter::new(config.rate.per_key);
    let timeout = config.request_timeout;
    let state = Arc::new(api::AppState {
        db,
        writer,
        keys,
        config,
        boot_builds: boot::Builds::default(),
        metrics: metrics::Metrics::default(),
    });
    api::router(state)
        .layer(axum::middleware::from_fn_with_state(
            timeout,
            request_timeout,
        ))
        .layer(tower_http::trace::TraceLayer::new_for_http())
}

/// Answers 408 `timeout` when a request (body upload included) outlives `limit`.
async fn request_timeout(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError::Timeout(limit.as_secs()).into_response(),
    }
}

/// Serves the registry on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    db: Db,
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = server::ConnLimits {
        header_timeout: config.header_timeout,
        idle_timeout: config.idle_timeout,
        max_connections: config.max_connections,
    };
    server::run(listener, app(db, config), limits, shutdown).await
}

/// Why a [`Background`] registry could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The database could not be opened.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The address could not be bound.
    #[error("cannot listen on {addr}")]
    Listen {
        /// Address asked for.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
}

/// A registry serving in the background of the current tokio runtime: what tests embed
/// instead of running the binary. Dropping it stops the server.
#[derive(Debug)]
pub struct Background {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Background {
    /// Opens (and migrates) `db_url` and serves it on `addr`; port 0 picks a free port.
    pub async fn start(db_url: &str, addr: SocketAddr, config: Config) -> Result<Self, StartError> {
        let db = Db::connect(db_url).await?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Listen { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| StartError::Listen { addr, source })?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, db, config, async {
            let _ = rx.await;
        }));
        Ok(Background {
            addr,
            stop: Some(tx),
            task: Some(task),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its base URL, `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops serving and waits until the server has finished (its port is then free again).
    pub async fn stop(&mut self) -> std::io::Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match self.task.take() {
            Some(task) => task.await.map_err(std::io::Error::other)?,
            None => Ok(()),
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}
