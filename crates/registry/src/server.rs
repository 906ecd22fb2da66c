//! The HTTP/1.1 accept loop: a bounded number of connections, each with a deadline for its
//! request head, so idle, slow and abandoned clients cannot hold the server's file descriptors.
//!
//! `axum::serve` has no header timeout and no connection cap, hence this loop over hyper's
//! own connection builder.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::http::Request;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

/// File descriptors kept for everything but client connections (database pool, SQLite's
/// files, logs, the listener).
pub const RESERVED_FDS: u64 = 128;

/// How long a graceful stop waits for requests in flight before closing their connections.
const DRAIN: Duration = Duration::from_secs(10);

/// Connection limits of the accept loop.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Time a connection has to deliver a complete request head, counted from when it opened
    /// or its previous response went out: it also closes idle keep-alive connections.
    pub header_timeout: Duration,
    /// Connections served at once; more wait in the kernel's backlog.
    pub max_connections: usize,
}

/// Raises the soft file-descriptor limit to the hard one and returns how many connections
/// fit under it next to [`RESERVED_FDS`].
pub fn connection_capacity() -> usize {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return usize::MAX;
    };
    let limit = if hard > soft && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        hard
    } else {
        soft
    };
    usize::try_from(limit.saturating_sub(RESERVED_FDS).max(1)).unwrap_or(usize::MAX)
}

/// Serves `app` on `listener` until `shutdown` resolves, then drains.
pub async fn run(
    listener: TcpListener,
    app: Router,
    limits: ConnLimits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let capacity = connection_capacity();
    let max = if limits.max_connections > capacity {
        tracing::warn!(
            asked = limits.max_connections,
            capacity,
            "the file-descriptor limit allows fewer connections than --max-connections: using {capacity}"
        );
        capacity
    } else {
        limits.max_connections
    };
    tracing::info!(max_connections = max, header_timeout = ?limits.header_timeout, "accepting connections");
    let permits = Arc::new(Semaphore::new(max));
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        // Heads larger than this are refused with 431: nothing the registry takes needs more.
        .max_buf_size(64 * 1024);
    let mut last_error_log: Option<Instant> = None;
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = &mut shutdown => break,
        };
        let (stream, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: log once a second at most and let descriptors free up
                    // instead of spinning.
                    if last_error_log.is_none_or(|t| t.elapsed() > Duration::from_secs(1)) {
                        tracing::warn!(error = %e, "accept failed");
                        last_error_log = Some(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = app.clone().map_request(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(remote));
            req
        });
        let conn =
            builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%remote, error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after {DRAIN:?}: closing them");
    }
    Ok(())
}
