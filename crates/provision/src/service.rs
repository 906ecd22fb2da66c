//! The provision service's local socket: the unprivileged agent, which holds the node key and
//! talks to the network, asks the privileged runtime to apply, remove and report workloads.
//!
//! One JSON object per line each way. Only root and the agent's group may connect (the
//! socket's mode, and the peer's credentials checked again on accept). Every connection
//! starts with the service's `hello`: a new instance name tells the agent the service was
//! restarted and its containers are gone, so the agent applies its deployments again.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use gridtypes::deployment::Deployment;
use gridtypes::mailbox::WorkloadStatus;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::runtime::Runtime;

/// Longest line either side sends (a deployment is at most 16 KiB; logs at most 1 MiB,
/// base64).
pub const MAX_LINE: usize = 2 << 20;
/// Most connections served at once (the agent needs one).
pub const MAX_CONNECTIONS: usize = 8;
/// How long a connection may stay silent, waiting for a request or inside one, or leave an
/// answer unread, before it is closed: a stuck or idle client cannot keep one of the
/// [`MAX_CONNECTIONS`] slots (the agent's client connects again by itself).
pub const IDLE: Duration = Duration::from_secs(300);
/// Largest log tail one request returns.
pub const MAX_LOG_BYTES: u64 = 1 << 20;

/// What the agent asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Run exactly this deployment under this contract.
    Apply {
        /// The contract.
        contract: i64,
        /// The contract's twin (its ed25519 key, hex): its containers share a network.
        twin: String,
        /// What must run (checked by the agent; validated here again).
        deployment: Deployment,
    },
    /// Remove everything of a contract.
    Remove {
        /// The contract.
        contract: i64,
    },
    /// How the containers of a contract stand now.
    Statuses {
        /// The contract.
        contract: i64,
    },
    /// What the node's workloads used: for the consumption reports.
    Usage,
    /// The newest output of one container.
    Logs {
        /// The contract.
        contract: i64,
        /// The container's name.
        workload: String,
        /// At most this many bytes (capped at [`MAX_LOG_BYTES`]).
        max_bytes: u64,
    },
}

/// What the service answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case", deny_unknown_fields)]
pub enum Response {
    /// First line of every connection.
    Hello {
        /// Random per start of the service.
        instance: String,
    },
    /// Each workload's state.
    Workloads {
        /// In the deployment's order.
        workloads: Vec<WorkloadStatus>,
    },
    /// The contract's workloads are gone.
    Removed,
    /// The answer to [`Request::Usage`].
    Usage {
        /// Bytes the twins' containers moved through the node since the service started
        /// (a restart starts again from 0): their public traffic.
        traffic_bytes: u64,
        /// Bytes each contract's containers moved through their veths since the service
        /// started, by contract ([`Runtime::contract_traffic`]): how `traffic_bytes` is
        /// shared, not how much it is (a twin's internal traffic is in these counts).
        /// Defaults to none, so that an agent reads the answer of a service from before
        /// these counts; left out when empty, so that an older agent reads it too.
        #[serde(
            default,
            skip_serializing_if = "BTreeMap::is_empty",
            with = "by_contract"
        )]
        contracts: BTreeMap<i64, u64>,
    },
    /// Log bytes, base64.
    Logs {
        /// The bytes.
        data: String,
    },
    /// The request was refused or failed.
    Error {
        /// Why.
        message: String,
    },
}

/// [`Response::Usage`]'s counts as a JSON object keyed by contract id. An internally tagged
/// enum is buffered before its variant is read, and from that buffer serde cannot turn the
/// object's keys (JSON keys are strings) into integers: they are read as strings and parsed.
mod by_contract {
    use std::collections::BTreeMap;

    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(counts: &BTreeMap<i64, u64>, s: S) -> Result<S::Ok, S::Error> {
        counts.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<i64, u64>, D::Error> {
        let raw = BTreeMap::<String, u64>::deserialize(d)?;
        let mut counts = BTreeMap::new();
        for (key, bytes) in raw {
            let contract: i64 = key
                .parse()
                .map_err(|_| D::Error::custom(format!("contract {key:?} is not a number")))?;
            // "7" and "07" are one contract: its count must not be taken from either at
            // random.
            if counts.insert(contract, bytes).is_some() {
                return Err(D::Error::custom(format!(
                    "contract {contract} is counted twice"
                )));
            }
        }
        Ok(counts)
    }
}

/// Who may connect besides root (the agent's group), and how long they may idle.
#[derive(Debug, Clone, Copy)]
pub struct Peers {
    /// The agent's group id.
    pub gid: u32,
    /// [`IDLE`], shorter in tests.
    pub idle: Duration,
}

/// Serves `listener` until `shutdown` completes.
pub async fn serve(
    listener: UnixListener,
    runtime: Arc<Runtime>,
    peers: Peers,
    instance: String,
    shutdown: impl Future<Output = ()>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    // Dropped on shutdown: every open connection ends with the service.
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        while connections.try_join_next().is_some() {}
        let (stream, _) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = &e as &dyn std::error::Error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let allowed = match stream.peer_cred() {
            Ok(c) => c.uid() == 0 || c.gid() == peers.gid,
            Err(_) => false,
        };
        if !allowed {
            tracing::warn!(peer = ?stream.peer_cred().ok(), "connection from a process that is neither root nor the agent refused");
            continue;
        }
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!("too many connections; one refused");
            continue;
        };
        let (runtime, instance) = (runtime.clone(), instance.clone());
        connections.spawn(async move {
            if let Err(e) = connection(stream, &runtime, &instance, peers.idle).await {
                tracing::debug!(error = %e, "connection ended");
            }
            drop(slot);
        });
    }
}

async fn connection(
    stream: UnixStream,
    runtime: &Runtime,
    instance: &str,
    idle: Duration,
) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let timed_out = || std::io::Error::new(std::io::ErrorKind::TimedOut, "idle connection closed");
    let hello = Response::Hello {
        instance: instance.to_string(),
    };
    tokio::time::timeout(idle, send(&mut w, &hello))
        .await
        .map_err(|_| timed_out())??;
    loop {
        let line = tokio::time::timeout(idle, read_line(&mut r))
            .await
            .map_err(|_| timed_out())??;
        let Some(line) = line else {
            return Ok(());
        };
        let answer = match serde_json::from_slice::<Request>(&line) {
            Ok(req) => handle(runtime, req).await,
            Err(e) => Response::Error {
                message: format!("malformed request: {e}"),
            },
        };
        tokio::time::timeout(idle, send(&mut w, &answer))
            .await
            .map_err(|_| timed_out())??;
    }
}

async fn handle(runtime: &Runtime, req: Request) -> Response {
    match req {
        Request::Apply {
            contract,
            twin,
            deployment,
        } => match deployment
            .validate()
            .map_err(|e| e.to_string())
            .and_then(|()| {
                gridtypes::parse_public_key(&twin)
                    .map(|_| ())
                    .map_err(|e| format!("twin key: {e}"))
            }) {
            Ok(()) => Response::Workloads {
                workloads: runtime.apply(contract, &twin, &deployment).await,
            },
            Err(e) => Response::Error {
                message: e.to_string(),
            },
        },
        Request::Remove { contract } => {
            runtime.remove(contract).await;
            Response::Removed
        }
        Request::Usage => {
            // Both or neither: an agent that got the total without the shares would see
            // every contract's count start again from nothing at the next reading.
            let counted = async {
                let contracts = runtime.contract_traffic().await?;
                let traffic_bytes = runtime.traffic_bytes().await?;
                Ok::<_, crate::RuntimeError>((traffic_bytes, contracts))
            };
            match counted.await {
                Ok((traffic_bytes, contracts)) => Response::Usage {
                    traffic_bytes,
                    contracts,
                },
                Err(e) => Response::Error {
                    message: svclog::error_chain(&e),
                },
            }
        }
        Request::Statuses { contract } => Response::Workloads {
            workloads: runtime.statuses(contract).await,
        },
        Request::Logs {
            contract,
            workload,
            max_bytes,
        } => match runtime
            .logs(contract, &workload, max_bytes.min(MAX_LOG_BYTES))
            .await
        {
            Ok(data) => Response::Logs {
                data: base64::engine::general_purpose::STANDARD.encode(data),
            },
            Err(e) => Response::Error {
                message: svclog::error_chain(&e),
            },
        },
    }
}

/// One line, without its newline; `None` at the end of the stream. A line longer than
/// [`MAX_LINE`] is an error (the connection is dropped: its rest cannot be framed).
async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
) -> std::io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    let n = r
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut line)
        .await?;
    if n == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        let why = if line.len() > MAX_LINE {
            "line longer than the limit"
        } else {
            "stream ended inside a line"
        };
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, why));
    }
    line.pop();
    Ok(Some(line))
}

async fn send<W: tokio::io::AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    v: &T,
) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(v).map_err(std::io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line).await
}

/// Why a call to the service failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No connection (the service is not running, or restarting).
    #[error("provision service at {path}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The connection broke or the answer was not understood.
    #[error("provision service")]
    Protocol(#[source] std::io::Error),
    /// No answer in time.
    #[error("the provision service did not answer within {0} s")]
    Timeout(u64),
}

struct Conn {
    r: BufReader<tokio::net::unix::OwnedReadHalf>,
    w: tokio::net::unix::OwnedWriteHalf,
}

/// The agent's side: one connection, made again when it breaks.
#[derive(Debug)]
pub struct Client {
    path: PathBuf,
    conn: tokio::sync::Mutex<Option<Conn>>,
    instance: std::sync::Mutex<Option<String>>,
    restarted: AtomicBool,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Conn")
    }
}

impl Client {
    /// A client of the socket at `path` (connected at the first call).
    pub fn new(path: &Path) -> Client {
        Client {
            path: path.to_path_buf(),
            conn: tokio::sync::Mutex::new(None),
            instance: std::sync::Mutex::new(None),
            restarted: AtomicBool::new(false),
        }
    }

    /// True once after the service was found restarted (its containers gone).
    pub fn take_restarted(&self) -> bool {
        self.restarted.swap(false, Ordering::SeqCst)
    }

    /// Sends `req` and waits up to `timeout` for the answer; a broken connection is made
    /// again once.
    pub async fn call(&self, req: &Request, timeout: Duration) -> Result<Response, ClientError> {
        let mut conn = self.conn.lock().await;
        for attempt in 0..2 {
            if conn.is_none() {
                *conn = Some(self.connect().await?);
            }
            let Some(c) = conn.as_mut() else {
                continue;
            };
            let exchange = async {
                send(&mut c.w, req).await?;
                read_answer(&mut c.r).await
            };
            match tokio::time::timeout(timeout, exchange).await {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(e)) => {
                    *conn = None;
                    if attempt == 1 {
                        return Err(ClientError::Protocol(e));
                    }
                }
                Err(_) => {
                    // The answer may still come: this connection's framing is lost.
                    *conn = None;
                    return Err(ClientError::Timeout(timeout.as_secs()));
                }
            }
        }
        Err(ClientError::Protocol(std::io::Error::other(
            "no connection after a retry",
        )))
    }

    /// Connects (or keeps the connection) and so learns whether the service restarted.
    pub async fn check(&self) -> Result<bool, ClientError> {
        let mut conn = self.conn.lock().await;
        if conn.is_none() {
            *conn = Some(self.connect().await?);
        }
        Ok(self.take_restarted())
    }

    async fn connect(&self) -> Result<Conn, ClientError> {
        let stream =
            UnixStream::connect(&self.path)
                .await
                .map_err(|source| ClientError::Connect {
                    path: self.path.clone(),
                    source,
                })?;
        let (r, w) = stream.into_split();
        let mut r = BufReader::new(r);
        let hello = tokio::time::timeout(Duration::from_secs(10), read_answer(&mut r))
            .await
            .map_err(|_| ClientError::Timeout(10))?
            .map_err(ClientError::Protocol)?;
        let Response::Hello { instance } = hello else {
            return Err(ClientError::Protocol(std::io::Error::other(
                "the service did not say hello",
            )));
        };
        let mut known = self
            .instance
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if known.as_ref().is_some_and(|k| *k != instance) {
            tracing::warn!("the provision service was restarted: deployments are applied again");
            self.restarted.store(true, Ordering::SeqCst);
        }
        *known = Some(instance);
        Ok(Conn { r, w })
    }
}

async fn read_answer<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> std::io::Result<Response> {
    let line = read_line(r).await?.ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the service hung up")
    })?;
    serde_json::from_slice(&line)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn usage_answers_of_older_and_newer_services_are_read() {
        // A service from before per-contract counts.
        let old: Response =
            serde_json::from_str(r#"{"answer":"usage","traffic_bytes":42}"#).unwrap();
        assert_eq!(
            old,
            Response::Usage {
                traffic_bytes: 42,
                contracts: BTreeMap::new()
            }
        );
        // Without counts the answer is what an older agent expects, field for field.
        assert_eq!(
            serde_json::to_string(&old).unwrap(),
            r#"{"answer":"usage","traffic_bytes":42}"#
        );
        let new = Response::Usage {
            traffic_bytes: 42,
            contracts: BTreeMap::from([(7, 1000), (12, 5)]),
        };
        let line = serde_json::to_string(&new).unwrap();
        assert_eq!(
            line,
            r#"{"answer":"usage","traffic_bytes":42,"contracts":{"7":1000,"12":5}}"#
        );
        assert_eq!(serde_json::from_str::<Response>(&line).unwrap(), new);
        for bad in [
            r#"{"answer":"usage","traffic_bytes":1,"contracts":{"x":1}}"#,
            r#"{"answer":"usage","traffic_bytes":1,"contracts":{"7":1,"07":2}}"#,
            r#"{"answer":"usage","traffic_bytes":1,"contracts":{"7":-1}}"#,
        ] {
            assert!(serde_json::from_str::<Response>(bad).is_err(), "{bad}");
        }
    }
}
