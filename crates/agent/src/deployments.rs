//! The node's mailbox loop: long-polls the registry for what twins deploy, hands it to the
//! reconciler (crates/reconcile) and delivers the sealed statuses it produces.

use std::path::Path;
use std::time::Duration;

use backoff::Backoff;
use base64::Engine as _;
use gridapi::ErrorCode;
use gridtypes::deployment::Deployment;
use gridtypes::mailbox::{DeploymentState, DeploymentStatus, LogAnswer, WorkloadStatus};
use gridtypes::Resources;
use reconcile::{Provisioner, Reconciler, Reporter, Store, StoreError};

use provision::service::{self, ClientError, Request, Response};

use crate::client::{Client, Outcome};

/// How long the registry may hold a poll (the protocol's maximum).
pub const POLL_WAIT_SECS: u32 = gridtypes::MAX_POLL_WAIT_SECS;

/// Delivers statuses through the registry client.
pub struct StatusSender(pub Client);

impl Reporter for StatusSender {
    async fn send(&self, twin_key: &str, status: &DeploymentStatus) -> bool {
        let outcome = self.0.post_status(twin_key, status).await;
        delivered(
            outcome,
            "deployment status",
            status.contract_id,
            status.version,
        )
    }

    async fn send_logs(&self, twin_key: &str, answer: &LogAnswer) -> bool {
        let outcome = self.0.post_logs(twin_key, answer).await;
        delivered(outcome, "log answer", answer.contract_id, answer.request)
    }
}

/// Whether a sealed message is done with: taken, or refused for good (sending it again can
/// never succeed; keeping it would block nothing but would be retried forever).
fn delivered(outcome: Outcome, what: &str, contract: u64, version: u64) -> bool {
    match outcome {
        Outcome::Accepted(_) | Outcome::Replay => true,
        // Something newer is already there: this one has nothing left to say.
        Outcome::Refused {
            code: ErrorCode::StaleVersion,
            ..
        } => true,
        Outcome::Refused {
            status: code,
            code: error,
            message,
        } => {
            tracing::error!(contract, version, http = code, %error, message, "registry refused a {what}: dropped");
            true
        }
        Outcome::Unavailable(why) => {
            tracing::debug!(why, "{what} not delivered; kept for the next try");
            false
        }
        Outcome::Throttled { .. } => false,
    }
}

/// The provisioner of an agent without a container runtime: every workload is answered as
/// failed, with the reason, so the twin learns it at once instead of waiting.
#[derive(Debug, Default)]
pub struct NoRuntime;

impl Provisioner for NoRuntime {
    async fn apply(&self, _: i64, _: &str, d: &Deployment, _: &Resources) -> Vec<WorkloadStatus> {
        d.workloads
            .iter()
            .map(|w| WorkloadStatus {
                name: w.name().to_string(),
                state: DeploymentState::Failed,
                reason: Some(format!(
                    "gridos-agent {} has no {} runtime on this node yet",
                    env!("CARGO_PKG_VERSION"),
                    w.kind()
                )),
                address: None,
                kind: None,
            })
            .collect()
    }

    async fn remove(&self, _: i64) -> Result<(), String> {
        Ok(())
    }

    async fn logs(&self, _: i64, name: &str, _: u32) -> Result<Vec<u8>, String> {
        Err(format!(
            "gridos-agent {} runs no workloads on this node, so {name:?} has no output",
            env!("CARGO_PKG_VERSION")
        ))
    }
}

/// The provisioner of a node: the provision service, over its local socket.
#[derive(Debug)]
pub struct Remote(service::Client);

/// How long an apply may take (image pulls included) before the agent gives up on it.
const APPLY_TIMEOUT: Duration = Duration::from_secs(900);
/// How long the agent waits for the provision service to come (back) up before it tells the
/// twin that it is not there.
const SERVICE_WAIT: Duration = Duration::from_secs(60);

impl Remote {
    /// A provisioner talking to the socket at `path`.
    pub fn new(path: &Path) -> Remote {
        Remote(service::Client::new(path))
    }

    /// Sends `req`, waiting up to [`SERVICE_WAIT`] for a service that is not listening.
    async fn call(&self, req: &Request, timeout: Duration) -> Result<Response, String> {
        let deadline = tokio::time::Instant::now() + SERVICE_WAIT;
        loop {
            match self.0.call(req, timeout).await {
                Ok(Response::Error { message }) => return Err(message),
                Ok(answer) => return Ok(answer),
                Err(e @ ClientError::Connect { .. }) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(
                        error = &e as &dyn std::error::Error,
                        "provision service not there yet"
                    );
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => return Err(format!("the node's {}", svclog::error_chain(&e))),
            }
        }
    }
}

impl Provisioner for Remote {
    async fn apply(
        &self,
        contract: i64,
        twin: &str,
        d: &Deployment,
        _: &Resources,
    ) -> Vec<WorkloadStatus> {
        let req = Request::Apply {
            contract,
            twin: twin.to_string(),
            deployment: d.clone(),
        };
        let why = match self.call(&req, APPLY_TIMEOUT).await {
            Ok(Response::Workloads { workloads }) => return workloads,
            Ok(other) => format!("the node's provision service answered {other:?}"),
            Err(why) => why,
        };
        d.workloads
            .iter()
            .map(|w| WorkloadStatus {
                name: w.name().to_string(),
                state: DeploymentState::Failed,
                reason: Some(why.clone()),
                address: None,
                kind: None,
            })
            .collect()
    }

    async fn remove(&self, contract: i64) -> Result<(), String> {
        match self
            .call(&Request::Remove { contract }, Duration::from_secs(120))
            .await?
        {
            Response::Removed => Ok(()),
            other => Err(format!("the node's provision service answered {other:?}")),
        }
    }

    async fn current(&self, contract: i64) -> Option<Vec<WorkloadStatus>> {
        // One try, no waiting: the next round asks again.
        match self
            .0
            .call(&Request::Statuses { contract }, Duration::from_secs(10))
            .await
        {
            Ok(Response::Workloads { workloads }) => Some(workloads),
            _ => None,
        }
    }

    async fn logs(&self, contract: i64, name: &str, max_bytes: u32) -> Result<Vec<u8>, String> {
        let req = Request::Logs {
            contract,
            workload: name.to_string(),
            max_bytes: max_bytes.into(),
        };
        match self.call(&req, Duration::from_secs(30)).await? {
            Response::Logs { data } => base64::engine::general_purpose::STANDARD
                .decode(data)
                .map_err(|e| {
                    format!("the node's provision service sent logs that are not base64: {e}")
                }),
            other => Err(format!("the node's provision service answered {other:?}")),
        }
    }

    async fn lost_workloads(&self) -> bool {
        // Not reachable now: the next call finds out (and waits for it).
        self.0.check().await.unwrap_or(false)
    }
}

/// Runs the mailbox loop for ever (the agent aborts it on shutdown): restores what the
/// state in `dir` says must run, then polls, takes up and reports. Failures are logged and
/// retried with backoff; nothing here ends the agent.
pub async fn run(
    client: Client,
    dir: &Path,
    secret: crypto_box::SecretKey,
    provisioner: impl Provisioner,
    retry: (Duration, Duration),
    reserved: tokio::sync::watch::Sender<Resources>,
) {
    let mut backoff = Backoff::new(retry.0, retry.1);
    let mut reconciler = loop {
        match open(dir, &client, secret.clone(), &provisioner).await {
            Ok(r) => break r,
            Err(e) => {
                let wait = backoff.next_delay();
                tracing::error!(error = &e as &dyn std::error::Error, retry_in = ?wait, "deployment state unusable");
                tokio::time::sleep(wait).await;
            }
        }
    };
    backoff.reset();
    loop {
        reserved.send_replace(reconciler.reserved());
        // A provision service that was restarted lost its containers: they come back first.
        if provisioner.lost_workloads().await {
            if let Err(e) = reconciler.restore().await {
                tracing::error!(
                    error = &e as &dyn std::error::Error,
                    "deployments not restored"
                );
            }
        }
        match client.poll(reconciler.cursor(), POLL_WAIT_SECS).await {
            Ok(page) => {
                if let Err(e) = reconciler.take(&page).await {
                    tracing::error!(
                        error = &e as &dyn std::error::Error,
                        "deployment state not saved"
                    );
                    tokio::time::sleep(backoff.next_delay()).await;
                    continue;
                }
                // Crashes, restarts and exits since the last round reach the twin.
                if let Err(e) = reconciler.refresh().await {
                    tracing::error!(
                        error = &e as &dyn std::error::Error,
                        "deployment state not saved"
                    );
                }
                // Statuses a registry outage held back go out with the next answer.
                if reconciler.unsent() > 0 {
                    let _ = reconciler.flush().await;
                }
                backoff.reset();
            }
            Err(Outcome::Throttled { retry_after }) => {
                tokio::time::sleep(retry_after.unwrap_or_else(|| backoff.next_delay())).await;
            }
            Err(o) => {
                let wait = backoff.next_delay();
                // Before the node's registration went through, the mailbox does not know it.
                tracing::debug!(outcome = ?o, retry_in = ?wait, "mailbox poll failed");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

async fn open<'p, P: Provisioner>(
    dir: &Path,
    client: &Client,
    secret: crypto_box::SecretKey,
    provisioner: &'p P,
) -> Result<Reconciler<&'p P, StatusSender>, StoreError> {
    let mut r = Reconciler::open(
        Store::open(dir)?,
        secret,
        provisioner,
        StatusSender(client.clone()),
    )?;
    tracing::info!(
        contracts = r.records().len(),
        cursor = r.cursor(),
        "deployment state loaded"
    );
    r.restore().await?;
    Ok(r)
}
