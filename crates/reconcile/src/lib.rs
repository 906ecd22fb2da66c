//! The node's side of deployments (docs/deployments.md): takes what the registry's mailbox
//! brings, checks it ([`decide`]), keeps the desired state on disk ([`store`]), makes the
//! provisioner run it and keeps the twin told, sealed, how it went.
//!
//! Order of effects, so a crash at any point is repaired by the next start: the record is
//! saved before the provisioner acts, the mailbox cursor only after the record, and a status
//! is marked sent only after the registry took it. [`Reconciler::restore`] then brings every
//! saved deployment back and finishes every teardown.

pub mod decide;
pub mod store;

use std::collections::BTreeMap;
use std::future::Future;

use crypto_box::SecretKey;
use gridapi::{MailboxItem, MailboxPage};
use gridtypes::deployment::{Deployment, Workload};
use gridtypes::mailbox::{DeploymentState, DeploymentStatus, LogAnswer, WorkloadStatus};

pub use decide::{decide, Decision, LogDecision};
pub use store::{Record, Store, StoreError};

/// What runs workloads on the node: containers and volumes now.
pub trait Provisioner: Send + Sync {
    /// Makes what runs under `contract` exactly `d` (creating, replacing and removing
    /// workloads) within `limits`, on the network of the contract's twin `twin_key`, and
    /// tells how each workload stands. Called again with the same deployment after a
    /// reboot: it must then bring back what is missing.
    fn apply(
        &self,
        contract: i64,
        twin_key: &str,
        d: &Deployment,
        limits: &gridtypes::Resources,
    ) -> impl Future<Output = Vec<WorkloadStatus>> + Send;

    /// Removes everything of `contract` (nothing there is fine).
    fn remove(&self, contract: i64) -> impl Future<Output = Result<(), String>> + Send;

    /// How the workloads of `contract` stand now, for what changes after `apply` returned
    /// (a crash, a restart, an exit, an OOM kill); only those the runtime knows are listed.
    /// `None`: the runtime cannot say now.
    fn current(&self, _contract: i64) -> impl Future<Output = Option<Vec<WorkloadStatus>>> + Send {
        std::future::ready(None)
    }

    /// The newest output of workload `name` of `contract`: at most `max_bytes`, from the end.
    fn logs(
        &self,
        contract: i64,
        name: &str,
        max_bytes: u32,
    ) -> impl Future<Output = Result<Vec<u8>, String>> + Send;

    /// True when what ran was lost since the last call (the runtime was restarted): the
    /// caller then applies every deployment again ([`Reconciler::restore`]).
    fn lost_workloads(&self) -> impl Future<Output = bool> + Send {
        std::future::ready(false)
    }
}

/// A provisioner the caller keeps: the reconciler may be rebuilt (its state reopened after a
/// disk error) around the same runtime.
impl<P: Provisioner> Provisioner for &P {
    async fn apply(
        &self,
        contract: i64,
        twin_key: &str,
        d: &Deployment,
        limits: &gridtypes::Resources,
    ) -> Vec<WorkloadStatus> {
        (**self).apply(contract, twin_key, d, limits).await
    }

    async fn remove(&self, contract: i64) -> Result<(), String> {
        (**self).remove(contract).await
    }

    async fn current(&self, contract: i64) -> Option<Vec<WorkloadStatus>> {
        (**self).current(contract).await
    }

    async fn logs(&self, contract: i64, name: &str, max_bytes: u32) -> Result<Vec<u8>, String> {
        (**self).logs(contract, name, max_bytes).await
    }

    async fn lost_workloads(&self) -> bool {
        (**self).lost_workloads().await
    }
}

/// Where statuses go: the registry, sealed to the twin.
pub trait Reporter: Send + Sync {
    /// Delivers `status` of `contract` to the twin `twin_key`; false to try again later.
    fn send(&self, twin_key: &str, status: &DeploymentStatus) -> impl Future<Output = bool> + Send;

    /// Delivers the answer to a log request to the twin `twin_key`; false to try again later.
    fn send_logs(&self, twin_key: &str, answer: &LogAnswer) -> impl Future<Output = bool> + Send;
}

/// The deployments of one node.
pub struct Reconciler<P, R> {
    store: Store,
    records: BTreeMap<i64, Record>,
    cursor: i64,
    secret: SecretKey,
    provisioner: P,
    reporter: R,
    /// The last log request answered, by contract. Kept in memory only: after a restart the
    /// node may answer a request again, which shows the twin fresher output and nothing else.
    logs_answered: BTreeMap<i64, u64>,
    /// Log answers the registry has not taken yet, with the twin each is sealed to.
    logs_unsent: Vec<(String, LogAnswer)>,
}

impl<P: Provisioner, R: Reporter> Reconciler<P, R> {
    /// Loads the state in `store`; `secret` opens the boxes sealed to this node.
    pub fn open(
        store: Store,
        secret: SecretKey,
        provisioner: P,
        reporter: R,
    ) -> Result<Self, StoreError> {
        Ok(Reconciler {
            records: store.load()?,
            cursor: store.cursor()?,
            store,
            secret,
            provisioner,
            reporter,
            logs_answered: BTreeMap::new(),
            logs_unsent: Vec::new(),
        })
    }

    /// The mailbox revision to poll after.
    pub fn cursor(&self) -> i64 {
        self.cursor
    }

    /// What the node holds, by contract.
    pub fn records(&self) -> &BTreeMap<i64, Record> {
        &self.records
    }

    /// After a start: runs every saved deployment again and finishes every teardown.
    pub async fn restore(&mut self) -> Result<(), StoreError> {
        let ids: Vec<i64> = self.records.keys().copied().collect();
        for id in ids {
            let Some(r) = self.records.get(&id).cloned() else {
                continue;
            };
            if r.cancelled {
                // A teardown cut short by the crash is finished; a finished one costs nothing.
                if let Err(e) = self.provisioner.remove(id).await {
                    tracing::error!(contract = id, error = %e, "teardown after restart failed");
                }
            } else if let Some(d) = r.deployment {
                tracing::info!(contract = id, version = d.version, "restoring deployment");
                self.run(id, d).await?;
            }
        }
        self.flush().await
    }

    /// Takes up one page of the mailbox, item by item, and moves the cursor past it.
    pub async fn take(&mut self, page: &MailboxPage) -> Result<(), StoreError> {
        for item in &page.items {
            self.take_item(item).await?;
            self.take_log_request(item).await;
            self.cursor = self.cursor.max(item.rev);
            self.store.set_cursor(self.cursor)?;
        }
        if page.rev > self.cursor {
            self.cursor = page.rev;
            self.store.set_cursor(self.cursor)?;
        }
        if !self.logs_unsent.is_empty() {
            // The twin is waiting on the other end.
            self.flush().await?;
        }
        Ok(())
    }

    async fn take_item(&mut self, item: &MailboxItem) -> Result<(), StoreError> {
        let id = item.contract_id;
        let decision = decide(item, self.records.get(&id), &self.secret);
        let mut r = self.records.get(&id).cloned().unwrap_or_else(|| Record {
            contract_id: id,
            twin_key: item.twin_key.clone(),
            resources: item.resources,
            cancelled: false,
            version: 0,
            deployment: None,
            status: None,
            status_sent: true,
        });
        match decision {
            Decision::Unchanged => {
                if !self.records.contains_key(&id) {
                    self.put(r)?;
                }
            }
            Decision::Ignore(why) => {
                tracing::warn!(contract = id, why, "mailbox item ignored");
            }
            Decision::Refuse { version, reason } => {
                tracing::warn!(contract = id, version, reason, "deployment refused");
                r.version = version;
                r.status = Some(DeploymentStatus {
                    contract_id: id as u64,
                    version,
                    state: DeploymentState::Failed,
                    reason: Some(bounded(&reason)),
                    workloads: Vec::new(),
                });
                r.status_sent = false;
                self.put(r)?;
                self.flush().await?;
            }
            Decision::Apply(d) => {
                tracing::info!(
                    contract = id,
                    version = d.version,
                    workloads = d.workloads.len(),
                    "new deployment"
                );
                r.version = d.version;
                r.deployment = Some(d.clone());
                self.put(r)?;
                self.run(id, d).await?;
                self.flush().await?;
            }
            Decision::TearDown => {
                tracing::info!(contract = id, "contract cancelled: tearing down");
                r.cancelled = true;
                r.deployment = None;
                // Saved first: a crash during removal is finished by `restore`.
                self.put(r.clone())?;
                let reason = match self.provisioner.remove(id).await {
                    Ok(()) => "contract cancelled".to_string(),
                    Err(e) => format!("contract cancelled; removal incomplete: {e}"),
                };
                r.status = Some(DeploymentStatus {
                    contract_id: id as u64,
                    version: r.version,
                    state: DeploymentState::Deleted,
                    reason: Some(bounded(&reason)),
                    workloads: Vec::new(),
                });
                // A contract that never had a deployment has no version to answer about.
                r.status_sent = r.version == 0;
                self.put(r)?;
                self.flush().await?;
            }
        }
        Ok(())
    }

    /// Answers the log request `item` carries, if any, with the workload's newest output.
    async fn take_log_request(&mut self, item: &MailboxItem) {
        let id = item.contract_id;
        let answered = self.logs_answered.get(&id).copied().unwrap_or(0);
        let record = self.records.get(&id);
        let answer = match decide::log_request(item, record, answered, &self.secret) {
            None => return,
            Some(LogDecision::Ignore(why)) => {
                tracing::warn!(contract = id, why, "log request ignored");
                return;
            }
            Some(LogDecision::Refuse { request, reason }) => {
                tracing::warn!(contract = id, request, reason, "log request refused");
                LogAnswer {
                    contract_id: id as u64,
                    request,
                    workload: "?".into(),
                    data: Vec::new(),
                    error: Some(bounded(&reason)),
                }
            }
            Some(LogDecision::Answer(r)) => {
                let max = r.max_bytes.min(gridtypes::mailbox::MAX_LOG_BYTES as u32);
                let (data, error) = match self.provisioner.logs(id, &r.workload, max).await {
                    Ok(mut data) => {
                        // The tail is what was asked for; more would not fit the answer.
                        let extra = data.len().saturating_sub(max as usize);
                        data.drain(..extra);
                        (data, None)
                    }
                    Err(e) => (Vec::new(), Some(bounded(&e))),
                };
                tracing::info!(
                    contract = id,
                    request = r.request,
                    workload = r.workload,
                    bytes = data.len(),
                    "answering a log request"
                );
                LogAnswer {
                    contract_id: id as u64,
                    request: r.request,
                    workload: r.workload,
                    data,
                    error,
                }
            }
        };
        self.logs_answered.insert(id, answer.request);
        // Only the newest answer per contract matters: the registry takes no other.
        self.logs_unsent
            .retain(|(_, a)| a.contract_id != answer.contract_id);
        self.logs_unsent.push((item.twin_key.clone(), answer));
    }

    /// Provisions `d` for contract `id`, saving `provisioning` then the outcome.
    async fn run(&mut self, id: i64, d: Deployment) -> Result<(), StoreError> {
        self.set_status(id, provisioning(id, &d))?;
        self.flush().await?;
        let (limits, twin) = match self.records.get(&id) {
            Some(r) => (r.resources, r.twin_key.clone()),
            None => return Ok(()),
        };
        let workloads = self.provisioner.apply(id, &twin, &d, &limits).await;
        self.set_status(id, outcome(id, &d, workloads))
    }

    fn set_status(&mut self, id: i64, status: DeploymentStatus) -> Result<(), StoreError> {
        if let Some(mut r) = self.records.get(&id).cloned() {
            r.status = Some(status);
            r.status_sent = false;
            self.put(r)?;
        }
        Ok(())
    }

    fn put(&mut self, r: Record) -> Result<(), StoreError> {
        self.store.save(&r)?;
        self.records.insert(r.contract_id, r);
        Ok(())
    }

    /// Asks the runtime how each deployed workload stands now and tells the twin what
    /// changed since the last status (same version, newer signature: the registry keeps the
    /// newest).
    pub async fn refresh(&mut self) -> Result<(), StoreError> {
        let running: Vec<(i64, Deployment, DeploymentStatus)> = self
            .records
            .values()
            .filter(|r| !r.cancelled)
            .filter_map(|r| Some((r.contract_id, r.deployment.clone()?, r.status.clone()?)))
            .filter(|(_, d, s)| s.version == d.version && s.state != DeploymentState::Provisioning)
            .collect();
        for (id, d, last) in running {
            let Some(now) = self.provisioner.current(id).await else {
                continue;
            };
            let mut workloads = last.workloads.clone();
            for w in &mut workloads {
                if let Some(n) = now.iter().find(|n| n.name == w.name) {
                    w.state = n.state;
                    w.reason.clone_from(&n.reason);
                    w.address.clone_from(&n.address);
                }
            }
            let status = outcome(id, &d, workloads);
            if status != last {
                tracing::info!(
                    contract = id,
                    version = d.version,
                    state = status.state.as_str(),
                    "workload states changed"
                );
                self.set_status(id, status)?;
            }
        }
        self.flush().await
    }

    /// Sends every status and log answer the registry does not have yet; what fails stays
    /// for the next call.
    pub async fn flush(&mut self) -> Result<(), StoreError> {
        let answers = std::mem::take(&mut self.logs_unsent);
        for (twin, answer) in answers {
            if !self.reporter.send_logs(&twin, &answer).await {
                self.logs_unsent.push((twin, answer));
            }
        }
        let unsent: Vec<(i64, String, DeploymentStatus)> = self
            .records
            .values()
            .filter(|r| !r.status_sent)
            .filter_map(|r| Some((r.contract_id, r.twin_key.clone(), r.status.clone()?)))
            .collect();
        for (id, twin, status) in unsent {
            if self.reporter.send(&twin, &status).await {
                if let Some(mut r) = self.records.get(&id).cloned() {
                    // Only if nothing newer replaced it meanwhile.
                    if r.status.as_ref() == Some(&status) {
                        r.status_sent = true;
                        self.put(r)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// What the deployments the node runs reserve together (for the consumption reports).
    pub fn reserved(&self) -> gridtypes::Resources {
        self.records
            .values()
            .filter(|r| !r.cancelled)
            .filter_map(|r| r.deployment.as_ref())
            .fold(gridtypes::Resources::default(), |a, d| {
                a.saturating_add(&d.reserved())
            })
    }

    /// Statuses and log answers waiting for the registry.
    pub fn unsent(&self) -> usize {
        self.records.values().filter(|r| !r.status_sent).count() + self.logs_unsent.len()
    }
}

/// A status's reasons are bounded ([`gridtypes::mailbox::MAX_REASON`]); a longer one is cut
/// at a character boundary.
fn bounded(s: &str) -> String {
    let max = gridtypes::mailbox::MAX_REASON;
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max - 3;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

fn provisioning(id: i64, d: &Deployment) -> DeploymentStatus {
    DeploymentStatus {
        contract_id: id as u64,
        version: d.version,
        state: DeploymentState::Provisioning,
        reason: None,
        workloads: d
            .workloads
            .iter()
            .map(|w| WorkloadStatus {
                name: w.name().to_string(),
                state: DeploymentState::Provisioning,
                reason: None,
                address: None,
                kind: Some(w.kind_of()),
            })
            .collect(),
    }
}

/// The deployment's state from its workloads': running when all run, failed when one failed,
/// deleted when it holds none (the twin removed everything).
fn outcome(id: i64, d: &Deployment, mut workloads: Vec<WorkloadStatus>) -> DeploymentStatus {
    for w in &mut workloads {
        w.reason = w.reason.as_deref().map(bounded);
        // From the deployment, whatever the runtime said: the twin's tools rely on it.
        w.kind = d
            .workloads
            .iter()
            .find(|x| x.name() == w.name)
            .map(Workload::kind_of);
    }
    let failed = workloads
        .iter()
        .filter(|w| w.state == DeploymentState::Failed)
        .count();
    let (state, reason) = if d.workloads.is_empty() {
        (
            DeploymentState::Deleted,
            Some("no workloads: everything removed".into()),
        )
    } else if failed > 0 {
        (
            DeploymentState::Failed,
            Some(format!("{failed} of {} workloads failed", workloads.len())),
        )
    } else {
        (DeploymentState::Running, None)
    };
    DeploymentStatus {
        contract_id: id as u64,
        version: d.version,
        state,
        reason,
        workloads,
    }
}
