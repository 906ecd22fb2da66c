//! The grid registry: the phonebook (twins, farms, nodes) and every signed node report.
//!
//! Writes arrive as signed envelopes and are verified in the request handlers, then applied
//! by one writer in batched transactions; reads are plain SQL over a pool. The server keeps
//! no state outside its database, so several replicas can share one PostgreSQL.

pub mod api;
pub mod db;
pub mod error;
pub mod writer;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use tokio::net::TcpListener;

pub use db::{Backend, Db, DbError};
pub use error::ApiError;

/// Server settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Largest request body accepted, in bytes.
    pub body_limit: usize,
    /// A node that has not reported for this long counts as down.
    pub up_window_secs: i64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            body_limit: 64 * 1024,
            // Two report intervals (40 min each): one lost report does not mark a node down.
            up_window_secs: 2 * 40 * 60,
        }
    }
}

/// Seconds since the Unix epoch by the registry's clock.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Builds the full application for an open database.
pub fn app(db: Db, config: Config) -> Router {
    let writer = writer::Writer::spawn(db.clone());
    let state = Arc::new(api::AppState { db, writer, config });
    api::router(state).layer(tower_http::trace::TraceLayer::new_for_http())
}

/// Serves the registry on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    db: Db,
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = app(db, config);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// Why a [`Background`] registry could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The database could not be opened.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
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
