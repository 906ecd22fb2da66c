//! The server side of the control socket; its contract (names, rows, client proxy) is the
//! `control` crate.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::StreamExt;
use tokio::net::UnixListener;
use tokio::sync::mpsc;

use crate::supervisor::{Supervisor, SupervisorError};

use ::control::{ListRow, StatusRow};
pub use ::control::{PowerAction, DEFAULT_SOCKET, INTERFACE, OBJECT_PATH};

/// How long a peer may take to complete the D-Bus handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Errors starting the control socket.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The socket could not be created.
    #[error("cannot listen on {path}")]
    Listen {
        /// Socket path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// The D-Bus object served on every peer connection.
struct Control {
    sup: Arc<Supervisor>,
    power: mpsc::Sender<PowerAction>,
}

fn to_fdo(e: SupervisorError) -> zbus::fdo::Error {
    match e {
        SupervisorError::Unknown(_) => zbus::fdo::Error::UnknownObject(e.to_string()),
        _ => zbus::fdo::Error::Failed(e.to_string()),
    }
}

#[zbus::interface(name = "org.gridos.Init1")]
impl Control {
    async fn list(&self) -> Vec<ListRow> {
        self.sup
            .list()
            .into_iter()
            .map(|s| (s.name, s.state, s.pid, s.restarts))
            .collect()
    }

    async fn status(&self, name: String) -> zbus::fdo::Result<StatusRow> {
        let s = self.sup.status(&name).map_err(to_fdo)?;
        Ok((s.name, s.state, s.pid, s.restarts, s.reason, s.after))
    }

    async fn start(&self, name: String) -> zbus::fdo::Result<()> {
        self.sup.start_service(&name).map_err(to_fdo)
    }

    async fn stop(&self, name: String) -> zbus::fdo::Result<()> {
        self.sup.stop_service(&name).await.map_err(to_fdo)
    }

    async fn restart(&self, name: String) -> zbus::fdo::Result<()> {
        self.sup.restart_service(&name).await.map_err(to_fdo)
    }

    async fn log(&self, name: String, since: u64) -> zbus::fdo::Result<(Vec<String>, u64)> {
        self.sup.log(&name, since).map_err(to_fdo)
    }

    async fn power(&self, action: String) -> zbus::fdo::Result<()> {
        let Some(action) = PowerAction::parse(&action) else {
            return Err(zbus::fdo::Error::InvalidArgs(
                "expected poweroff, reboot or shutdown".into(),
            ));
        };
        self.power
            .send(action)
            .await
            .map_err(|_| zbus::fdo::Error::Failed("already shutting down".into()))
    }
}

/// Binds the control socket (mode 0600) and serves it until the process ends.
pub fn serve(
    path: &Path,
    sup: Arc<Supervisor>,
    power: mpsc::Sender<PowerAction>,
) -> Result<tokio::task::JoinHandle<()>, ControlError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |source| ControlError::Listen {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(
                        error = &e as &dyn std::error::Error,
                        "control socket accept failed"
                    );
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let ctl = Control {
                sup: Arc::clone(&sup),
                power: power.clone(),
            };
            tokio::spawn(async move {
                if let Err(e) = peer(stream, ctl).await {
                    tracing::debug!(error = &e as &dyn std::error::Error, "control peer ended");
                }
            });
        }
    }))
}

async fn peer(stream: tokio::net::UnixStream, ctl: Control) -> zbus::Result<()> {
    let guid = zbus::Guid::generate();
    let build = zbus::connection::Builder::unix_stream(stream)
        .server(guid)?
        .p2p()
        .serve_at(OBJECT_PATH, ctl)?
        .build();
    // A peer that never finishes the handshake must not hold a task forever.
    let conn = tokio::time::timeout(HANDSHAKE_TIMEOUT, build)
        .await
        .map_err(|_| zbus::Error::Handshake("timed out".into()))??;
    // Keep the connection until the peer goes away.
    let mut messages = zbus::MessageStream::from(&conn);
    while let Some(msg) = messages.next().await {
        if msg.is_err() {
            break;
        }
    }
    Ok(())
}
