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
