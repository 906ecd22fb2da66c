//! The `grid-registry` binary as an operator runs it: SIGTERM stops it in order, and started
//! again on the same port and SQLite file it serves what it had stored.

// A failed unwrap, expect or assertion is a failed test: the workspace's deny of them is
// for product code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use test_infra::{Client, RegistryCommand};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_it_in_order_and_a_restart_serves_the_same_data() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("registry.log");
    let mut reg = RegistryCommand::new(env!("CARGO_BIN_EXE_grid-registry"))
        .log(&log)
        .env("RUST_LOG", "info")
        .start()
        .await
        .unwrap();
    let client = Client::new(reg.url());
    let farm = client.farm("kept-across-restarts").await;

    let status = reg.stop().unwrap().expect("it was running");
    assert!(status.success(), "{status}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("grid registry stopped"), "{text}");
    assert!(std::net::TcpStream::connect(reg.addr()).is_err());

    reg.restart().await.unwrap();
    let (s, farms) = client.get("/api/v1/farms").await;
    assert_eq!(s, 200, "{farms}");
    let names: Vec<(i64, &str)> = farms["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["id"].as_i64().unwrap(), f["name"].as_str().unwrap()))
        .collect();
    assert_eq!(names, [(farm, "kept-across-restarts")]);
}
