//! The agent against a registry that answers 429 with `Retry-After`: a stub HTTP server on
//! 127.0.0.1 that throttles the first try of each request. It tests the client's reaction
//! (wait at least that long, keep the report, send that same report again), not the registry.

// A failed unwrap, expect or assertion is a failed test: the workspace's deny of them is
// for product code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent::probe::Probe;
use agent::{Config, Status};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use serde_json::Value;
use tokio::sync::{oneshot, watch};

/// Every request the stub saw: path, arrival time, body.
type Seen = Arc<Mutex<Vec<(String, Instant, Value)>>>;

const RETRY_AFTER_SECS: u64 = 2;

fn answer(seen: &Seen, path: &str, body: &str) -> axum::response::Response {
    let v: Value = serde_json::from_str(body).unwrap_or_default();
    let mut seen = seen.lock().unwrap();
    seen.push((path.to_string(), Instant::now(), v));
    let tries = seen.iter().filter(|(p, _, _)| p == path).count();
    if tries == 1 {
        let mut h = HeaderMap::new();
        h.insert("retry-after", RETRY_AFTER_SECS.to_string().parse().unwrap());
        return (StatusCode::TOO_MANY_REQUESTS, h, "slow down").into_response();
    }
    let id = tries as i64;
    (
        StatusCode::CREATED,
        axum::Json(serde_json::json!({"id": id, "created": true})),
    )
        .into_response()
}

fn put(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_node_waits_as_told_and_keeps_its_report() {
    let seen: Seen = Arc::default();
    let app = axum::Router::new()
        .route(
            "/api/v1/nodes",
            post(|State(s): State<Seen>, body: String| async move {
                answer(&s, "/api/v1/nodes", &body)
            }),
        )
        .route(
            "/api/v1/reports",
            post(|State(s): State<Seen>, body: String| async move {
                answer(&s, "/api/v1/reports", &body)
            }),
        )
        .with_state(Arc::clone(&seen));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let dir = tempfile::tempdir().unwrap();
    let sys = dir.path().join("sys");
    put(&sys, "devices/system/cpu/online", "0-1\n");
    std::fs::create_dir_all(sys.join("block")).unwrap();
    let mut cfg = Config::new(url, 1, dir.path().join("state"));
    cfg.uptime_interval = Duration::from_secs(3600);
    cfg.probe_interval = Duration::from_secs(3600);
    // Far shorter than Retry-After: a client that ignored the header would retry at once.
    cfg.retry_min = Duration::from_millis(100);
    cfg.retry_max = Duration::from_millis(200);
    cfg.http_timeout = Duration::from_secs(2);
    cfg.tmpfs_marker = dir.path().join("storage-tmpfs");
    cfg.probe = Probe {
        sys,
        measured: dir.path().join("disks.json"),
        pools: dir.path().join("pools.json"),
        addresses: false,
        ..Probe::default()
    };
    let (tx, mut rx) = watch::channel(Status::default());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(agent::run(
        cfg,
        async {
            let _ = stopped.await;
        },
        tx,
    ));
    // Registered (after one 429), then the first uptime report delivered (after one 429).
    let got = tokio::time::timeout(
        Duration::from_secs(20),
        rx.wait_for(|s| s.node_id.is_some() && s.delivered >= 1),
    )
    .await
    .map(|r| r.map(|s| s.clone()));
    let status = match got {
        Ok(Ok(s)) => s,
        _ => panic!("not delivered: {:?}", *rx.borrow()),
    };
    assert!(status.last_error.is_none(), "{status:?}");
    let _ = stop.send(());
    task.await.unwrap().unwrap();

    let seen = seen.lock().unwrap().clone();
    for path in ["/api/v1/nodes", "/api/v1/reports"] {
        let tries: Vec<&(String, Instant, Value)> =
            seen.iter().filter(|(p, _, _)| p == path).collect();
        assert!(tries.len() >= 2, "{path}: {} tries", tries.len());
        let gap = tries[1].1 - tries[0].1;
        assert!(
            gap >= Duration::from_secs(RETRY_AFTER_SECS),
            "{path}: tried again after {gap:?}, Retry-After was {RETRY_AFTER_SECS} s"
        );
    }
    // The throttled report was kept and sent again: the same nonce, not a new report.
    let reports: Vec<&Value> = seen
        .iter()
        .filter(|(p, _, _)| p == "/api/v1/reports")
        .map(|(_, _, v)| v)
        .collect();
    assert!(reports[0]["nonce"].is_string(), "{}", reports[0]);
    assert_eq!(reports[0]["nonce"], reports[1]["nonce"]);
}
