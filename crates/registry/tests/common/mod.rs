//! Test harness: a real registry on 127.0.0.1 over a fresh SQLite file or a fresh PostgreSQL
//! database, and a client that signs like a node or twin does.
#![allow(dead_code)]

use std::time::{SystemTime, UNIX_EPOCH};

use ed25519_dalek::SigningKey;
use gridtypes::{Envelope, NodeRegistration, Payload, Report, Resources, NONCE_LEN};
use rand::rngs::OsRng;
use rand::RngCore;
use registry::{Background, Config};
use serde_json::Value;
use sqlx::Connection;

/// Which database a test runs against.
#[derive(Debug, Clone, Copy)]
pub enum Engine {
    Sqlite,
    Postgres,
}

pub struct Harness {
    pub base: String,
    pub client: reqwest::Client,
    pub db_url: String,
    pub config: Config,
    server: Option<Background>,
    _dir: Option<tempfile::TempDir>,
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A fresh PostgreSQL database URL, or None when no server is configured and none is required.
async fn postgres_db() -> Option<String> {
    let admin = match std::env::var("GRIDOS_TEST_POSTGRES_URL") {
        Ok(u) => u,
        Err(_) => {
            if std::env::var("GRIDOS_REQUIRE_POSTGRES").is_ok() {
                panic!("GRIDOS_REQUIRE_POSTGRES is set but GRIDOS_TEST_POSTGRES_URL is not");
            }
            eprintln!(
                "skipping PostgreSQL test: GRIDOS_TEST_POSTGRES_URL is not set (make test sets it)"
            );
            return None;
        }
    };
    let name = format!("gridos_test_{:016x}", OsRng.next_u64());
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .expect("connect to GRIDOS_TEST_POSTGRES_URL");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create test database");
    let base = admin.rsplit_once('/').expect("URL has a database").0;
    Some(format!("{base}/{name}"))
}

impl Harness {
    pub async fn start(engine: Engine) -> Option<Harness> {
        Self::start_with(engine, Config::default()).await
    }

    pub async fn start_with(engine: Engine, config: Config) -> Option<Harness> {
        let (db_url, dir) = match engine {
            Engine::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let url = format!("sqlite://{}", dir.path().join("registry.db").display());
                (url, Some(dir))
            }
            Engine::Postgres => (postgres_db().await?, None),
        };
        let mut h = Harness {
            base: String::new(),
            client: reqwest::Client::new(),
            db_url,
            config,
            server: None,
            _dir: dir,
        };
        h.boot().await;
        Some(h)
    }

    async fn boot(&mut self) {
        let server = Background::start(
            &self.db_url,
            ([127, 0, 0, 1], 0).into(),
            self.config.clone(),
        )
        .await
        .expect("start registry");
        self.base = server.url();
        self.server = Some(server);
    }

    /// Stops the server and starts a new one on the same database.
    pub async fn restart(&mut self) {
        if let Some(mut s) = self.server.take() {
            s.stop().await.unwrap();
        }
        self.boot().await;
    }

    /// The address the registry listens on.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.base
            .trim_start_matches("http://")
            .parse()
            .expect("base URL is http://ADDR")
    }

    /// Runs `sql` on the registry's database directly: how a test plants rows that an older
    /// registry (before a fix) could have stored.
    pub async fn sql(&self, sql: &str) {
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect(&self.db_url)
            .await
            .expect("open the test database");
        sqlx::raw_sql(sql)
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// Sends a request; returns the status and the body as JSON (or as a string if it is not).
    pub async fn send(req: reqwest::RequestBuilder) -> (u16, Value) {
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, v)
    }

    pub async fn post_raw(&self, path: &str, body: Vec<u8>) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        Self::send(
            self.client
                .post(url)
                .header("content-type", "application/json")
                .body(body),
        )
        .await
    }

    pub async fn post(&self, path: &str, env: &Envelope) -> (u16, Value) {
        self.post_raw(path, env.to_json()).await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        Self::send(self.client.get(format!("{}{path}", self.base))).await
    }

    /// Counts of everything the registry stores, to prove a refused request changed nothing.
    pub async fn snapshot(&self) -> Value {
        let (s, stats) = self.get("/api/v1/stats").await;
        assert_eq!(s, 200, "{stats}");
        serde_json::json!({
            "twins": stats["twins"], "farms": stats["farms"], "reports": stats["reports"],
            "nodes": stats["all"]["nodes"], "capacity": stats["all"]["capacity"],
        })
    }

    /// Registers a fresh twin and returns its key and id.
    pub async fn twin(&self) -> (SigningKey, i64) {
        let key = SigningKey::generate(&mut OsRng);
        let (s, v) = self
            .post("/api/v1/twins", &seal(&key, &Payload::RegisterTwin {}))
            .await;
        assert_eq!(s, 201, "{v}");
        (key, v["id"].as_i64().unwrap())
    }

    /// Registers a twin and a farm it owns; returns the farm id.
    pub async fn farm(&self, name: &str) -> i64 {
        let (key, _) = self.twin().await;
        let (s, v) = self
            .post(
                "/api/v1/farms",
                &seal(&key, &Payload::CreateFarm { name: name.into() }),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        v["id"].as_i64().unwrap()
    }

    /// Registers a fresh node in `farm`; returns its key and id.
    pub async fn node(&self, farm: i64, capacity: Resources) -> (SigningKey, i64) {
        let key = SigningKey::generate(&mut OsRng);
        let (s, v) = self
            .post("/api/v1/nodes", &seal(&key, &registration(farm, capacity)))
            .await;
        assert_eq!(s, 201, "{v}");
        (key, v["id"].as_i64().unwrap())
    }

    pub async fn report(&self, key: &SigningKey, report: Report) -> (u16, Value) {
        self.post("/api/v1/reports", &seal(key, &Payload::Report(report)))
            .await
    }
}

pub fn nonce() -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    OsRng.fill_bytes(&mut n);
    n
}

pub fn seal(key: &SigningKey, payload: &Payload) -> Envelope {
    Envelope::seal(key, payload, now(), nonce())
}

pub fn registration(farm: i64, capacity: Resources) -> Payload {
    Payload::RegisterNode(NodeRegistration {
        farm_id: farm as u64,
        capacity,
        serial: Some("QEMU-0001".into()),
        virtualized: true,
        interfaces: vec![gridtypes::Interface {
            name: "eth0".into(),
            mac: Some("52:54:00:12:34:56".into()),
            ips: vec!["10.0.2.15/24".into()],
        }],
        agent_version: Some("test".into()),
        warnings: Vec::new(),
    })
}

/// Runs each listed async test fn against SQLite and against PostgreSQL.
#[macro_export]
macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::common::Engine::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::common::Engine::Postgres).await
                }
            )*
        }
    };
}
