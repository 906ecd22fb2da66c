//! Opening the database (SQLite file or PostgreSQL) and running its migrations.
//!
//! Both engines are reached through `sqlx::Any` with one set of SQL statements; only the
//! schema differs (types and identity columns), so each engine has its own migrations.

use std::str::FromStr;
use std::time::Duration;

use gridtypes::Resources;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Executor, Row};

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

/// Why the database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The URL names an engine the registry does not speak.
    #[error("unsupported database URL {0:?}: use sqlite://PATH or postgres://USER@HOST/DB")]
    UnsupportedUrl(String),
    /// Connecting failed.
    #[error("cannot open database {url}")]
    Connect {
        /// URL with any password removed.
        url: String,
        /// Cause.
        source: sqlx::Error,
    },
    /// A migration failed.
    #[error("cannot migrate database {url}")]
    Migrate {
        /// URL with any password removed.
        url: String,
        /// Cause.
        source: sqlx::migrate::MigrateError,
    },
}

/// Which engine is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// An embedded SQLite file.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

impl Backend {
    /// What a `SELECT` ends with to lock the rows it read until the transaction ends:
    /// `FOR UPDATE` on PostgreSQL, where replicas write side by side; nothing on SQLite,
    /// whose one writer already is the lock.
    pub fn row_lock(self) -> &'static str {
        match self {
            Backend::Postgres => " FOR UPDATE",
            Backend::Sqlite => "",
        }
    }
}

/// An open, migrated database.
#[derive(Debug, Clone)]
pub struct Db {
    /// Connection pool shared by readers and the writer.
    pub pool: AnyPool,
    /// The engine.
    pub backend: Backend,
}

/// Removes the password from a URL before it is logged or shown.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

impl Db {
    /// Opens (creating a SQLite file if needed) and migrates the database at `url`.
    pub async fn connect(url: &str) -> Result<Db, DbError> {
        sqlx::any::install_default_drivers();
        let (backend, url) = if let Some(rest) = url.strip_prefix("sqlite://") {
            // Create the file on first start: zero setup for a farmer or a test.
            let url = if rest.contains("mode=") {
                url.to_string()
            } else if rest.contains('?') {
                format!("{url}&mode=rwc")
            } else {
                format!("{url}?mode=rwc")
            };
            (Backend::Sqlite, url)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Backend::Postgres, url.to_string())
        } else {
            return Err(DbError::UnsupportedUrl(redact(url)));
        };
        let connect_err = |source| DbError::Connect {
            url: redact(&url),
            source,
        };
        let options = AnyConnectOptions::from_str(&url).map_err(connect_err)?;
        let pool = AnyPoolOptions::new()
            .max_connections(match backend {
                Backend::Sqlite => 8,
                Backend::Postgres => 16,
            })
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL lets auditors read while the writer commits; FULL makes every
                        // acknowledged report survive a power cut; the writer batches commits.
                        conn.execute(
                            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                             PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000;",
                        )
                        .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .map_err(connect_err)?;
        let migrator = match backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        migrator
            .run(&pool)
            .await
            .map_err(|source| DbError::Migrate {
                url: redact(&url),
                source,
            })?;
        Ok(Db { pool, backend })
    }
}

impl Db {
    /// Begins a transaction that will write. On SQLite it takes the write lock at once
    /// (`BEGIN IMMEDIATE`), waiting up to the busy timeout for another writer: a deferred
    /// transaction that reads and then writes fails at once with "database is locked" when
    /// another connection (the writer, closing, billing, sampling) committed in between.
    pub async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.pool.begin().await,
        }
    }
}

/// Reads the five resource columns `{prefix}cru` … `{prefix}ipv4` of a row.
pub fn resources(row: &AnyRow, prefix: &str) -> Result<Resources, sqlx::Error> {
    let get = |c: &str| -> Result<u64, sqlx::Error> {
        Ok(row
            .try_get::<i64, _>(format!("{prefix}{c}").as_str())?
            .max(0) as u64)
    };
    Ok(Resources {
        cru: get("cru")?,
        mru: get("mru")?,
        sru: get("sru")?,
        hru: get("hru")?,
        ipv4: get("ipv4")?,
    })
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://grid:secret@db:5432/grid"),
            "postgres://grid:***@db:5432/grid"
        );
        assert_eq!(redact("postgres://grid@db/grid"), "postgres://grid@db/grid");
        assert_eq!(redact("sqlite:///var/lib/x.db"), "sqlite:///var/lib/x.db");
    }
}
