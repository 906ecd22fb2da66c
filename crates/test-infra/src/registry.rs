//! A registry served from inside the test process (`registry::Background`) on 127.0.0.1, over
//! a fresh SQLite file or a fresh PostgreSQL database; it can be stopped and started again
//! on the same address and database. For the real `grid-registry` binary, see
//! [`crate::process`].

use std::net::SocketAddr;
use std::ops::Deref;

use registry::{Background, Config};
use sqlx::Connection;

use crate::client::Client;
use crate::gate::{self, Skipped};
use crate::postgres::{self, PgError};

/// Which database a registry runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// A SQLite file in a temporary folder.
    Sqlite,
    /// A fresh database on the test process's PostgreSQL server ([`postgres::shared_server`]).
    Postgres,
}

/// A fresh database for `engine`: its URL and, for SQLite, the folder holding the file.
///
/// PostgreSQL always runs: a missing server fails the test unless `GRIDOS_TEST_SKIP` allows
/// skipping it (then `Err(Skipped)`).
pub async fn fresh_database(
    engine: Engine,
) -> Result<(String, Option<tempfile::TempDir>), Skipped> {
    match engine {
        Engine::Sqlite => {
            let dir = tempfile::tempdir()
                .unwrap_or_else(|e| panic!("creating a folder for the SQLite file: {e}"));
            let url = format!("sqlite://{}", dir.path().join("registry.db").display());
            Ok((url, Some(dir)))
        }
        Engine::Postgres => match postgres::fresh_database().await {
            Ok(url) => Ok((url, None)),
            Err(e @ PgError::NotInstalled) => Err(gate::missing_tool("initdb", e.to_string())),
            Err(e) => panic!("PostgreSQL for the test: {e}"),
        },
    }
}

/// A registry on 127.0.0.1 inside this process. It derefs to a [`Client`] of itself;
/// stopped on drop.
pub struct Registry {
    client: Client,
    engine: Engine,
    db_url: String,
    config: Config,
    addr: SocketAddr,
    server: Option<Background>,
    _dir: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("url", &self.client.url())
            .field("engine", &self.engine)
            .field("running", &self.server.is_some())
            .finish()
    }
}

impl Registry {
    /// A registry on a fresh SQLite file, with the default configuration.
    pub async fn sqlite() -> Registry {
        match Self::start(Engine::Sqlite).await {
            Ok(r) => r,
            Err(s) => panic!("a SQLite registry was skipped: {}", s.reason),
        }
    }

    /// A registry on a fresh `engine` database, with the default configuration.
    pub async fn start(engine: Engine) -> Result<Registry, Skipped> {
        Self::start_with(engine, Config::default()).await
    }

    /// A registry on a fresh `engine` database with `config`. `Err` only when PostgreSQL is
    /// missing and `GRIDOS_TEST_SKIP` allows the skip: the test must return.
    pub async fn start_with(engine: Engine, config: Config) -> Result<Registry, Skipped> {
        let (db_url, dir) = fresh_database(engine).await?;
        let server = Background::start(&db_url, ([127, 0, 0, 1], 0).into(), config.clone())
            .await
            .unwrap_or_else(|e| panic!("starting the registry on {db_url}: {e}"));
        Ok(Registry {
            client: Client::new(server.url()),
            engine,
            db_url,
            config,
            addr: server.addr(),
            server: Some(server),
            _dir: dir,
        })
    }

    /// Its base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.client.url().to_string()
    }

    /// The address it listens on (kept across [`Registry::halt`] and [`Registry::resume`]).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The database it runs on.
    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// Its database URL.
    pub fn db_url(&self) -> &str {
        &self.db_url
    }

    /// The configuration it was started with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Stops serving and waits until the port is free: a registry outage.
    pub async fn halt(&mut self) {
        if let Some(mut s) = self.server.take() {
            s.stop()
                .await
                .unwrap_or_else(|e| panic!("stopping the registry: {e}"));
        }
    }

    /// Serves again on the same address and database.
    pub async fn resume(&mut self) {
        if self.server.is_some() {
            return;
        }
        let server = Background::start(&self.db_url, self.addr, self.config.clone())
            .await
            .unwrap_or_else(|e| panic!("restarting the registry on {}: {e}", self.addr));
        self.server = Some(server);
    }

    /// [`Registry::halt`] then [`Registry::resume`]: what survives is what the database kept.
    pub async fn restart(&mut self) {
        self.halt().await;
        self.resume().await;
    }

    /// Runs `sql` on the registry's database directly: how a test plants rows that an older
    /// registry (before a fix) could have stored.
    pub async fn sql(&self, sql: &str) {
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect(&self.db_url)
            .await
            .unwrap_or_else(|e| panic!("opening {}: {e}", self.db_url));
        sqlx::raw_sql(sql)
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

impl Deref for Registry {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

/// Runs each listed `async fn(Engine)` as two tests, `sqlite::NAME` and `postgres::NAME`, in
/// the calling module.
#[macro_export]
macro_rules! on_both_engines {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::Engine::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::Engine::Postgres).await
                }
            )*
        }
    };
}
