//! The HTTP/1.1 accept loop: a bounded number of connections, each with deadlines for going
//! idle and for sending a request head, so idle, slow and abandoned clients cannot hold the
//! server's file descriptors.
//!
//! `axum::serve` has no header timeout and no connection cap, hence this loop over hyper's
//! own connection builder. hyper's one timer (`header_read_timeout`) runs from the moment a
//! connection waits for a request until that request's head is complete: it serves as the
//! idle timeout. The shorter head deadline starts at the first byte of a head; it is kept by
//! [`Tracked`], which sees the bytes, and [`Activity`], which the service marks busy.
//! [`Tracked`] also ends a connection whose client stops taking an answer: a download
//! (an extension image, a boot medium) that could not write a byte for the idle timeout.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::http::Request;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tower::ServiceExt;

/// File descriptors kept for everything but client connections (database pool, SQLite's
/// files, logs, the listener).
pub const RESERVED_FDS: u64 = 128;

/// How long a graceful stop waits for requests in flight before closing their connections.
const DRAIN: Duration = Duration::from_secs(10);

/// Connection limits of the accept loop.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Time from the first byte of a request head to its end (slow-header clients).
    pub header_timeout: Duration,
    /// Time a connection may wait for its next request, head included, from when it opened
    /// or its previous response went out (idle keep-alive connections). At least
    /// `header_timeout`.
    pub idle_timeout: Duration,
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
    tracing::info!(
        max_connections = max,
        header_timeout = ?limits.header_timeout,
        idle_timeout = ?limits.idle_timeout,
        "accepting connections"
    );
    let permits = Arc::new(Semaphore::new(max));
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.idle_timeout.max(limits.header_timeout))
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
                        tracing::warn!(error = &e as &dyn std::error::Error, "accept failed");
                        last_error_log = Some(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity::new());
        let (on_request, on_response) = (activity.clone(), activity.clone());
        let service = app
            .clone()
            .map_request(move |mut req: Request<Incoming>| {
                on_request.request_started();
                req.extensions_mut().insert(ConnectInfo(remote));
                req
            })
            .map_response(move |res| {
                on_response.request_done();
                res
            });
        let io = Tracked {
            inner: stream,
            activity: activity.clone(),
            write_stall: limits.idle_timeout,
            stalled: None,
        };
        let conn = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
        let conn = graceful.watch(conn);
        let header_timeout = limits.header_timeout;
        tokio::spawn(async move {
            tokio::select! {
                r = conn => if let Err(e) = r {
                    tracing::debug!(%remote, error = &e as &dyn std::error::Error, "connection ended with an error");
                },
                _ = activity.head_overdue(header_timeout) => {
                    tracing::debug!(%remote, "request head not complete in {header_timeout:?}: closed");
                }
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

/// What a connection is doing, as far as the head deadline cares.
struct Activity {
    opened: Instant,
    /// A request is being handled (its head is complete).
    busy: AtomicBool,
    /// When the first byte of the current head arrived, in ms after `opened` plus one; 0 when
    /// no head is in progress.
    head_started: AtomicU64,
    armed: Notify,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            opened: Instant::now(),
            busy: AtomicBool::new(false),
            head_started: AtomicU64::new(0),
            armed: Notify::new(),
        }
    }

    /// Bytes arrived: between requests, they start a head and its deadline.
    fn bytes_read(&self) {
        if self.busy.load(Ordering::Acquire) {
            return;
        }
        let now = self.opened.elapsed().as_millis() as u64 + 1;
        if self
            .head_started
            .compare_exchange(0, now, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.armed.notify_one();
        }
    }

    fn request_started(&self) {
        self.busy.store(true, Ordering::Release);
        self.head_started.store(0, Ordering::Release);
    }

    fn request_done(&self) {
        self.busy.store(false, Ordering::Release);
    }

    /// Resolves once a head has been in progress for longer than `limit`.
    async fn head_overdue(&self, limit: Duration) {
        loop {
            let started = self.head_started.load(Ordering::Acquire);
            if started == 0 {
                self.armed.notified().await;
                continue;
            }
            let deadline = self.opened + Duration::from_millis(started - 1) + limit;
            tokio::time::sleep_until(deadline.into()).await;
            if self.head_started.load(Ordering::Acquire) == started {
                return;
            }
        }
    }
}

/// A client connection that tells its [`Activity`] when bytes arrive, and fails a write
/// that could not go out for `write_stall`: a client that reads nothing of its answer (its
/// window shut) would otherwise hold the connection, and one of the server's few slots, for
/// as long as it likes.
struct Tracked {
    inner: TcpStream,
    activity: Arc<Activity>,
    write_stall: Duration,
    /// Armed while a write waits for the client to take bytes.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Tracked {
    fn stall_check<T>(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if !r.is_pending() {
            self.stalled = None;
            return r;
        }
        let limit = self.write_stall;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client took no bytes for {limit:?}"),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.bytes_read();
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.stall_check(cx, r)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.stall_check(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.stall_check(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
