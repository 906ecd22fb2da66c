//! `grid-registry`: runs the grid registry server.

use std::net::SocketAddr;

use anyhow::Context;
use clap::{Parser, Subcommand};
use grid_registry::{db, Config, Db};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "grid-registry",
    version,
    about = "The grid registry: phonebook and node reports"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the JSON API.
    Serve {
        /// Database: sqlite://PATH (created if missing) or postgres://USER@HOST/DB.
        #[arg(
            long,
            env = "GRID_REGISTRY_DB",
            default_value = "sqlite://grid-registry.db"
        )]
        db: String,
        /// Address to listen on.
        #[arg(long, env = "GRID_REGISTRY_LISTEN", default_value = "127.0.0.1:8480")]
        listen: SocketAddr,
        /// Largest request body in bytes.
        #[arg(long, default_value_t = Config::default().body_limit)]
        body_limit: usize,
        /// Seconds without a report after which a node counts as down.
        #[arg(long, default_value_t = Config::default().up_window_secs)]
        up_window: i64,
    },
    /// Create or migrate the database, then exit.
    Migrate {
        /// Database URL, as for `serve`.
        #[arg(
            long,
            env = "GRID_REGISTRY_DB",
            default_value = "sqlite://grid-registry.db"
        )]
        db: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    match Cli::parse().command {
        Command::Migrate { db } => {
            Db::connect(&db).await?;
            println!("database {} is up to date", db::redact(&db));
        }
        Command::Serve {
            db,
            listen,
            body_limit,
            up_window,
        } => {
            anyhow::ensure!(
                body_limit >= 1024,
                "--body-limit must be at least 1024 bytes"
            );
            anyhow::ensure!(up_window > 0, "--up-window must be positive");
            let database = Db::connect(&db).await?;
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            let addr = listener.local_addr()?;
            tracing::info!(%addr, db = %db::redact(&db), backend = ?database.backend, "grid registry listening");
            println!(
                "grid-registry listening on http://{addr} (database {})",
                db::redact(&db)
            );
            let config = Config {
                body_limit,
                up_window_secs: up_window,
            };
            grid_registry::serve(listener, database, config, shutdown_signal())
                .await
                .context("server failed")?;
            tracing::info!("grid registry stopped");
        }
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
