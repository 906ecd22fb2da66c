//! The throwaway PostgreSQL server: it starts (as the postgres user when this runs as root),
//! takes a database and a registry on it, and is gone, folder and all, once dropped.

// A failed unwrap, expect or assertion is a failed test: the workspace's deny of them is
// for product code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use test_infra::{Engine, Postgres, Registry};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throwaway_server_serves_a_registry_and_leaves_nothing() {
    let pg = match tokio::task::spawn_blocking(Postgres::start).await.unwrap() {
        Ok(pg) => pg,
        Err(e @ test_infra::postgres::PgError::NotInstalled) => {
            let _ = test_infra::gate::missing_tool("initdb", e.to_string());
            return;
        }
        Err(e) => panic!("{e}"),
    };
    assert!(
        pg.url().starts_with("postgres://postgres@127.0.0.1:"),
        "{}",
        pg.url()
    );
    let db = pg.fresh_database().await.unwrap();
    let other = pg.fresh_database().await.unwrap();
    assert_ne!(db, other);

    let server = registry::Background::start(&db, ([127, 0, 0, 1], 0).into(), Default::default())
        .await
        .unwrap();
    let client = test_infra::Client::new(server.url());
    let farm = client.farm("on-postgres").await;
    assert_eq!(farm, 1);
    drop(server);

    let dir = pg.dir().to_path_buf();
    assert!(dir.join("data/PG_VERSION").exists());
    drop(pg);
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenarios_on_postgres_always_run() {
    // Without GRIDOS_TEST_POSTGRES_URL a server is started for this process; with it, that
    // server is used. Either way the registry runs on PostgreSQL, or the test fails.
    let Ok(mut reg) = Registry::start(Engine::Postgres).await else {
        return;
    };
    assert!(reg.db_url().starts_with("postgres://"), "{}", reg.db_url());
    let (_, twin) = reg.twin().await;
    reg.restart().await;
    let (s, v) = reg.get("/api/v1/stats").await;
    assert_eq!((s, v["twins"].as_i64()), (200, Some(twin)), "{v}");
}

#[test]
#[ignore = "run by the test below, as a process that ends without dropping its server"]
fn leaves_its_server_running() {
    let pg = Postgres::start().unwrap();
    println!("DIR={}", pg.dir().display());
    println!("URL={}", pg.url());
    // As a server shared through a static, or a test process killed mid-run: no destructor.
    std::mem::forget(pg);
}

#[test]
fn a_server_outliving_its_process_is_stopped_and_removed() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "leaves_its_server_running",
            "--nocapture",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k))
            .map(str::to_string)
    };
    let (Some(dir), Some(url)) = (field("DIR="), field("URL=")) else {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("server programs (initdb, pg_ctl) are not installed") {
            let _ = test_infra::gate::missing_tool("initdb", err.into_owned());
            return;
        }
        panic!("{text}{err}");
    };
    let port = url
        .rsplit_once(':')
        .and_then(|(_, p)| p.split('/').next())
        .unwrap()
        .to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::path::Path::new(&dir).exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "{dir} still there 20 s after its process ended"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(
        std::net::TcpStream::connect(format!("127.0.0.1:{port}")).is_err(),
        "the server still listens on {port}"
    );
}
