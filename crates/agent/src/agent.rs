//! The agent's life: probe, register, then report uptime and capacity changes through the
//! durable queue until told to stop, with a last uptime report on the way out.

use gridapi::ErrorCode;
use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gridtypes::{mailbox, now, NodeRegistration, Report, Resources, MAX_TEXT};
use tokio::sync::watch;
use tokio::time::Instant;

use backoff::Backoff;

use crate::client::{signing, Client, Outcome, Signing};
use crate::deployments::{NoRuntime, Remote};
use crate::identity::{self, IdentityError, KEY_FILE};
use crate::probe::{Hardware, Probe, ProbeError};
use crate::queue::{boot_time, Entry, Queue, QueueError};

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The node key could not be loaded or created.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The report queue could not be used.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The hardware could not be probed.
    #[error(transparent)]
    Probe(#[from] ProbeError),
    /// A blocking probe task died.
    #[error("probe task failed: {0}")]
    Task(String),
}

/// Everything the agent needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Registry base URL.
    pub registry: String,
    /// The farm this node belongs to.
    pub farm: u64,
    /// Where the key (`identity/node.key`) and the queue (`queue/`) live.
    pub state_dir: PathBuf,
    /// Time between uptime reports.
    pub uptime_interval: Duration,
    /// Time between capacity probes (a change is reported at once).
    pub probe_interval: Duration,
    /// First retry delay after the registry was unreachable; doubles up to `retry_max`, each
    /// delay jittered (see `backoff`) so nodes do not retry in lockstep.
    pub retry_min: Duration,
    /// Longest retry delay while the registry is unreachable.
    pub retry_max: Duration,
    /// Retry delay while the registry refuses the registration (e.g. unknown farm).
    pub refused_retry: Duration,
    /// HTTP timeout per request.
    pub http_timeout: Duration,
    /// How long to try to deliver the last reports on shutdown.
    pub shutdown_grace: Duration,
    /// Where and how to probe.
    pub probe: Probe,
    /// File the storage service writes when the cache is on tmpfs (nothing survives a reboot).
    pub tmpfs_marker: PathBuf,
    /// The provision service's socket (crates/provision); `None`: no workload runtime, every
    /// deployment is answered as failed with that reason.
    pub provision_socket: Option<PathBuf>,
}

/// The first retry of a refused registration; later ones double up to `refused_retry`.
const REFUSED_FIRST_RETRY: Duration = Duration::from_secs(10);

impl Config {
    /// Defaults for a real node: 40 min uptime reports, a probe every 5 min.
    pub fn new(registry: String, farm: u64, state_dir: PathBuf) -> Config {
        Config {
            registry,
            farm,
            state_dir,
            uptime_interval: Duration::from_secs(40 * 60),
            probe_interval: Duration::from_secs(5 * 60),
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            refused_retry: Duration::from_secs(300),
            http_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(5),
            probe: Probe::default(),
            tmpfs_marker: PathBuf::from("/run/gridos/storage-tmpfs"),
            provision_socket: None,
        }
    }

    /// The node key's path.
    pub fn key_path(&self) -> PathBuf {
        self.state_dir.join("identity").join(KEY_FILE)
    }

    /// The report queue's directory.
    pub fn queue_dir(&self) -> PathBuf {
        self.state_dir.join("queue")
    }

    /// Where the twins' deployments are kept (crates/reconcile).
    pub fn deployments_dir(&self) -> PathBuf {
        self.state_dir.join("deployments")
    }
}

/// What the agent is doing, for tests and `--json` status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// The registry's id for this node once registered.
    pub node_id: Option<i64>,
    /// The node's public key (hex).
    pub public_key: String,
    /// Reports waiting in the queue.
    pub queued: usize,
    /// Reports the registry took (or already had) since start.
    pub delivered: u64,
    /// Last problem talking to the registry, cleared on success.
    pub last_error: Option<String>,
    /// Last capacity probed.
    pub capacity: Resources,
}

/// Seconds since boot from `/proc/uptime`.
pub fn read_uptime(proc: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(proc.join("uptime")).ok()?;
    let first = text.split_whitespace().next()?;
    let secs: f64 = first.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then_some(secs as u64)
}

async fn probe(p: &Probe) -> Result<Hardware, AgentError> {
    let p = p.clone();
    tokio::task::spawn_blocking(move || p.hardware())
        .await
        .map_err(|e| AgentError::Task(e.to_string()))?
        .map_err(AgentError::from)
}

/// The running agent's state between events.
struct Agent {
    cfg: Config,
    client: Client,
    queue: Queue,
    hw: Hardware,
    /// The X25519 key twins seal deployments to (gridtypes::mailbox), published with every
    /// registration.
    box_key: String,
    status: watch::Sender<Status>,
    backoff: Backoff,
    /// Retries of a refused registration: soon at first (a farmer who boots the node before
    /// creating its farm sees it register within seconds of creating it), then every
    /// `refused_retry`.
    refused: Backoff,
    next_attempt: Option<Instant>,
    /// What the node's deployments reserve, as the mailbox loop last saw it.
    reserved: watch::Receiver<Resources>,
    /// The provision service, asked for the traffic of the workloads.
    usage: Option<provision::service::Client>,
    /// The provision service's traffic counter at the last consumption report (`None`
    /// before the first reading: what it counted before this agent started was reported by
    /// an earlier one, or belongs to no report).
    traffic_seen: Option<u64>,
    /// The provision service's per-contract veth counters at the same reading as
    /// `traffic_seen`: what each contract's share is taken from (crate::traffic).
    contracts_seen: BTreeMap<i64, u64>,
    /// The last uptime report the registry took from this process, as (signed timestamp,
    /// uptime): the one the registry's minting compares the next with.
    last_uptime: Option<(i64, u64)>,
}

/// What one delivery pass ended with.
enum Pass {
    /// Nothing left to do until something new is queued.
    Idle,
    /// Try again at this time.
    RetryAt(Instant),
}

impl Agent {
    fn registration(&self) -> NodeRegistration {
        NodeRegistration {
            farm_id: self.cfg.farm,
            capacity: self.hw.capacity,
            serial: self.hw.serial.clone(),
            virtualized: self.hw.virtualized,
            interfaces: self.hw.interfaces.clone(),
            agent_version: Some(concat!("gridos-agent ", env!("CARGO_PKG_VERSION")).into()),
            box_key: Some(self.box_key.clone()),
            warnings: self.warnings(),
        }
    }

    /// What the registry must hear in every message while it lasts: with the cache on tmpfs
    /// (no disk, or none the wipe policy allowed), a reboot makes this a new node and loses
    /// every queued report.
    fn warnings(&self) -> Vec<String> {
        match std::fs::read_to_string(&self.cfg.tmpfs_marker) {
            Ok(why) => {
                let mut w = format!(
                    "cache on tmpfs, lost at reboot with the node key and queued reports: {}",
                    why.trim()
                );
                let mut end = w.len().min(MAX_TEXT);
                while !w.is_char_boundary(end) {
                    end -= 1;
                }
                w.truncate(end);
                vec![w]
            }
            Err(_) => Vec::new(),
        }
    }

    fn set_error(&self, e: Option<String>) {
        self.status.send_modify(|s| s.last_error = e);
    }

    fn enqueue(&mut self, report: Report) -> Result<(), AgentError> {
        self.enqueue_measured(report, now())
    }

    fn enqueue_measured(&mut self, report: Report, measured_at: i64) -> Result<(), AgentError> {
        let kind = report.kind().as_str();
        self.queue.push(&Entry::new(report, measured_at))?;
        tracing::debug!(kind, queued = self.queue.len(), "report queued");
        let queued = self.queue.len();
        self.status.send_modify(|s| s.queued = queued);
        if !self.backoff.active() {
            self.next_attempt = Some(Instant::now());
        }
        Ok(())
    }

    /// Queues a consumption report: what the node's deployments reserve and the traffic of
    /// their containers since the last report, with each contract's share of it (nothing
    /// when both are nothing).
    async fn enqueue_consumption(&mut self) -> Result<(), AgentError> {
        let mut restarted = false;
        let counted = match &self.usage {
            Some(c) => match c
                .call(&provision::service::Request::Usage, Duration::from_secs(10))
                .await
            {
                Ok(provision::service::Response::Usage {
                    traffic_bytes,
                    contracts,
                }) => {
                    // This client is the only one that reads the counters: its connection
                    // tells whether the service (and every counter with it) started again
                    // since the last reading, even when the counts are already back above it.
                    restarted = c.take_restarted();
                    Some((traffic_bytes, contracts))
                }
                other => {
                    tracing::debug!(answer = ?other, "no traffic figure from the provision service");
                    None
                }
            },
            None => None,
        };
        let Some((now, contracts_now)) = counted else {
            // Nothing read: the traffic since the last reading goes with the next report.
            return self.enqueue_traffic(0, Vec::new());
        };
        let traffic_bytes = match self.traffic_seen {
            Some(seen) if now >= seen && !restarted => now - seen,
            // The service started again: it counts from its start.
            Some(_) => now,
            // The first reading is the base: what was counted before was reported by an
            // earlier agent, or belongs to no report.
            None => 0,
        };
        // The registry takes at most this much per report; shares are taken of what is sent.
        let traffic_bytes = traffic_bytes.min(gridtypes::MAX_TRAFFIC_BYTES);
        let seen = if restarted {
            BTreeMap::new()
        } else {
            std::mem::take(&mut self.contracts_seen)
        };
        // The veths count a twin's internal traffic too; the bridges' total is what is
        // public, so the veths only decide how that total is shared (crate::traffic).
        let shares = crate::traffic::contract_shares(traffic_bytes, &contracts_now, &seen);
        self.traffic_seen = Some(now);
        self.contracts_seen = contracts_now;
        self.enqueue_traffic(traffic_bytes, shares)
    }

    /// Queues the consumption report of [`Agent::enqueue_consumption`], unless the node
    /// reserves nothing and moved nothing.
    fn enqueue_traffic(
        &mut self,
        traffic_bytes: u64,
        contracts: Vec<gridtypes::ContractTraffic>,
    ) -> Result<(), AgentError> {
        let used = *self.reserved.borrow();
        if used == Resources::default() && traffic_bytes == 0 {
            return Ok(());
        }
        self.enqueue(Report::Consumption(gridtypes::Consumption {
            used,
            traffic_bytes,
            contracts,
        }))
    }

    /// Queues an uptime report; `stopping` marks the last one before an ordered shutdown.
    fn enqueue_uptime(&mut self, stopping: bool) -> Result<(), AgentError> {
        let warnings = self.warnings();
        for w in &warnings {
            tracing::warn!("{w} (sent with every report)");
        }
        let measured_at = now();
        match read_uptime(&self.cfg.probe.proc) {
            Some(uptime_secs) => {
                let superseded = self
                    .queue
                    .supersede_uptime(boot_time(measured_at, uptime_secs))?;
                if superseded > 0 {
                    tracing::info!(
                        superseded,
                        "older undelivered uptime readings of this boot replaced by the new one"
                    );
                }
                self.enqueue_measured(
                    Report::Uptime {
                        uptime_secs,
                        stopping,
                        warnings,
                    },
                    measured_at,
                )
            }
            None => {
                tracing::error!(
                    "cannot read {}/uptime: no uptime report",
                    self.cfg.probe.proc.display()
                );
                Ok(())
            }
        }
    }

    fn unreachable(&mut self, what: &str, e: &str) -> Pass {
        let delay = self.backoff.next_delay();
        tracing::warn!(
            registry = %self.cfg.registry,
            error = %e,
            retry_in_secs = delay.as_secs_f32(),
            queued = self.queue.len(),
            "registry unreachable while {what}; will retry"
        );
        self.set_error(Some(format!(
            "registry {} unreachable: {e}",
            self.cfg.registry
        )));
        Pass::RetryAt(Instant::now() + delay)
    }

    /// The registry answered 429: nothing is dropped, and the same message is not tried again
    /// before the registry's `Retry-After` (nor before the jittered backoff, whichever is later).
    fn throttled(&mut self, what: &str, retry_after: Option<Duration>) -> Pass {
        let delay = self
            .backoff
            .next_delay()
            .max(retry_after.unwrap_or_default());
        tracing::warn!(
            registry = %self.cfg.registry,
            retry_after_secs = retry_after.map(|d| d.as_secs()),
            retry_in_secs = delay.as_secs_f32(),
            queued = self.queue.len(),
            "registry asks this node to slow down (HTTP 429) while {what}; will retry"
        );
        self.set_error(Some(format!(
            "registry {} throttled the node (HTTP 429)",
            self.cfg.registry
        )));
        Pass::RetryAt(Instant::now() + delay)
    }

    async fn register(&mut self) -> Pass {
        let reg = self.registration();
        match self.client.register(&reg).await {
            Outcome::Accepted(id) => {
                let units = reg.capacity.farming_units();
                tracing::info!(
                    node_id = id,
                    farm = self.cfg.farm,
                    registry = %self.cfg.registry,
                    cru = reg.capacity.cru,
                    mru_gib = format!("{:.2}", reg.capacity.mru_gib()),
                    sru_gib = format!("{:.2}", reg.capacity.sru_gib()),
                    hru_gib = format!("{:.2}", reg.capacity.hru_gib()),
                    cu = format!("{:.3}", units.cu),
                    su = format!("{:.3}", units.su),
                    virtualized = reg.virtualized,
                    "registered"
                );
                self.backoff.reset();
                self.refused.reset();
                self.set_error(None);
                self.status.send_modify(|s| s.node_id = Some(id));
                Pass::RetryAt(Instant::now())
            }
            Outcome::Refused {
                status,
                code,
                message,
            } => {
                let retry = self.refused.next_delay();
                let why = match code {
                    ErrorCode::UnknownFarm => format!(
                        "farm {} does not exist on registry {}: create it (grid farm create) or set \
                         gridos.farm= in gridos.cfg on the boot stick, or on the kernel command line",
                        self.cfg.farm, self.cfg.registry
                    ),
                    ErrorCode::StaleTimestamp => format!(
                        "the node clock is more than 300 s away from the registry's: {message}"
                    ),
                    _ => format!("registry {} refused the registration (HTTP {status} {code}): {message}", self.cfg.registry),
                };
                tracing::error!(retry_in_secs = retry.as_secs(), "{why}");
                self.set_error(Some(why));
                Pass::RetryAt(Instant::now() + retry)
            }
            Outcome::Replay => Pass::RetryAt(Instant::now()),
            Outcome::Unavailable(e) => self.unreachable("registering", &e),
            Outcome::Throttled { retry_after } => self.throttled("registering", retry_after),
        }
    }

    /// Sends queued reports oldest first until the queue is empty or the registry fails.
    async fn flush(&mut self) -> Result<Pass, AgentError> {
        let recovering = self.backoff.active();
        let mut sent = 0u64;
        while let Some((seq, entry)) = self.queue.front() {
            let entry = match entry {
                Ok(e) => e,
                Err(e @ QueueError::Corrupt { .. }) => {
                    tracing::error!(
                        seq,
                        error = &e as &dyn std::error::Error,
                        "dropping a corrupt queue entry"
                    );
                    self.queue.pop()?;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let kind = entry.report.kind().as_str();
            let t = now();
            let boot = read_uptime(&self.cfg.probe.proc).map(|u| boot_time(t, u));
            let (at, report) = match signing(&entry, t, boot, self.last_uptime) {
                Signing::Sign { at, report } => (at, report),
                Signing::Outdated => {
                    tracing::warn!(
                        seq,
                        measured_at = entry.measured_at,
                        "dropping an uptime reading of an earlier boot: signed this late, the \
                         registry's minting would see more uptime than time between reports"
                    );
                    self.drop_front()?;
                    continue;
                }
            };
            let uptime = match &report {
                Report::Uptime { uptime_secs, .. } => Some((at, *uptime_secs)),
                _ => None,
            };
            let taken = match self.client.send(&entry, at, &report).await {
                Outcome::Accepted(id) => {
                    tracing::debug!(seq, kind, report_id = id, "report delivered");
                    true
                }
                Outcome::Replay => {
                    tracing::info!(seq, kind, "registry already had this report; dropping it");
                    true
                }
                Outcome::Refused {
                    code: ErrorCode::UnknownSigner,
                    ..
                } => {
                    tracing::warn!(
                        "registry {} does not know this node: registering again",
                        self.cfg.registry
                    );
                    self.status.send_modify(|s| s.node_id = None);
                    return Ok(Pass::RetryAt(Instant::now()));
                }
                Outcome::Refused {
                    code: ErrorCode::StaleTimestamp,
                    message,
                    ..
                } => {
                    // The clock can be fixed (NTP); the report is still worth keeping.
                    let retry = self.cfg.refused_retry;
                    tracing::error!(retry_in_secs = retry.as_secs(),
                        "registry refused a report: the node clock is more than 300 s off: {message}");
                    self.set_error(Some(format!("clock: {message}")));
                    return Ok(Pass::RetryAt(Instant::now() + retry));
                }
                Outcome::Refused {
                    status,
                    code,
                    message,
                } => {
                    tracing::error!(
                        seq,
                        kind,
                        status,
                        code = %code,
                        message,
                        "registry refused a report for good; dropping it"
                    );
                    false
                }
                Outcome::Unavailable(e) => return Ok(self.unreachable("sending reports", &e)),
                Outcome::Throttled { retry_after } => {
                    return Ok(self.throttled("sending reports", retry_after))
                }
            };
            self.queue.pop()?;
            // After a replay the registry holds an earlier signing of this reading (same
            // uptime, or restated for that earlier time): checking the next report against
            // this signing instead is never the looser test.
            if taken && uptime.is_some() {
                self.last_uptime = uptime;
            }
            sent += 1;
            self.backoff.reset();
            let queued = self.queue.len();
            self.status.send_modify(|s| {
                s.queued = queued;
                s.delivered += 1;
                s.last_error = None;
            });
        }
        if recovering {
            tracing::info!(
                delivered = sent,
                "registry reachable again: every queued report delivered"
            );
        }
        Ok(Pass::Idle)
    }

    /// Removes the front entry unsent.
    fn drop_front(&mut self) -> Result<(), AgentError> {
        self.queue.pop()?;
        let queued = self.queue.len();
        self.status.send_modify(|s| s.queued = queued);
        Ok(())
    }

    /// One delivery attempt: register first if needed, then drain the queue.
    async fn attempt(&mut self) -> Result<(), AgentError> {
        let pass = if self.status.borrow().node_id.is_none() {
            self.register().await
        } else {
            self.flush().await?
        };
        self.next_attempt = match pass {
            Pass::Idle => None,
            Pass::RetryAt(t) => Some(t),
        };
        Ok(())
    }

    async fn reprobe(&mut self) -> Result<(), AgentError> {
        let hw = match probe(&self.cfg.probe).await {
            Ok(hw) => hw,
            Err(e) => {
                tracing::warn!(
                    error = &e as &dyn std::error::Error,
                    "capacity probe failed; keeping the last result"
                );
                return Ok(());
            }
        };
        if hw.capacity != self.hw.capacity {
            tracing::info!(old = ?self.hw.capacity, new = ?hw.capacity, "capacity changed: reporting it");
            let capacity = hw.capacity;
            self.status.send_modify(|s| s.capacity = capacity);
            self.hw = hw;
            let warnings = self.warnings();
            self.enqueue(Report::Capacity { capacity, warnings })?;
        } else {
            self.hw = hw;
        }
        Ok(())
    }
}

/// Runs the agent until `shutdown` resolves; `status` follows what it does.
pub async fn run(
    cfg: Config,
    shutdown: impl Future<Output = ()>,
    status: watch::Sender<Status>,
) -> Result<(), AgentError> {
    let key_path = cfg.key_path();
    let (key, created) = identity::load_or_create(&key_path)?;
    let box_key = mailbox::box_key_hex(&mailbox::box_public(&key.verifying_key()));
    let box_secret = mailbox::box_secret(&key);
    let client = Client::new(&cfg.registry, key, cfg.http_timeout);
    tracing::info!(
        key = %key_path.display(),
        public_key = %client.public_key(),
        created,
        "node identity"
    );
    let queue = Queue::open(&cfg.queue_dir())?;
    if !queue.is_empty() {
        tracing::info!(
            queued = queue.len(),
            "reports from before the restart are waiting"
        );
    }
    let hw = probe(&cfg.probe).await?;
    for d in &hw.disks {
        tracing::info!(disk = %d.disk.name, size = d.disk.size_bytes, kind = ?d.kind, rotational = ?d.disk.rotational, latency_us = ?d.latency_us, "disk");
    }
    let public_key = client.public_key();
    let capacity = hw.capacity;
    let queued = queue.len();
    status.send_modify(|s| {
        s.public_key = public_key;
        s.capacity = capacity;
        s.queued = queued;
    });
    // Deployments run beside the reports, in their own task: a slow provisioning must not
    // hold back an uptime report, nor a registry outage the workloads' restoration.
    let (reserved_tx, reserved) = watch::channel(Resources::default());
    let mailbox_task = {
        let (client, dir) = (client.clone(), cfg.deployments_dir());
        let retry = (cfg.retry_min, cfg.retry_max);
        let socket = cfg.provision_socket.clone();
        AbortOnDrop(tokio::spawn(async move {
            match socket {
                Some(path) => {
                    let remote = Remote::new(&path);
                    crate::deployments::run(client, &dir, box_secret, remote, retry, reserved_tx)
                        .await
                }
                None => {
                    crate::deployments::run(client, &dir, box_secret, NoRuntime, retry, reserved_tx)
                        .await
                }
            }
        }))
    };
    let mut agent = Agent {
        backoff: Backoff::new(cfg.retry_min, cfg.retry_max),
        refused: Backoff::new(
            cfg.refused_retry.min(REFUSED_FIRST_RETRY),
            cfg.refused_retry,
        ),
        cfg,
        client,
        queue,
        hw,
        box_key,
        status,
        next_attempt: Some(Instant::now()),
        reserved,
        usage: None,
        traffic_seen: None,
        contracts_seen: BTreeMap::new(),
        last_uptime: None,
    };
    agent.usage = agent
        .cfg
        .provision_socket
        .as_deref()
        .map(provision::service::Client::new);
    let mut uptime = tokio::time::interval(agent.cfg.uptime_interval);
    uptime.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reprobe = tokio::time::interval_at(
        Instant::now() + agent.cfg.probe_interval,
        agent.cfg.probe_interval,
    );
    reprobe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Storage rewrites its measurements when a disk comes or goes after boot: a cheap look at
    // the file every few seconds gets the new capacity reported without waiting for the probe.
    let mut disks_changed = tokio::time::interval(MEASURED_POLL);
    disks_changed.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stamps = |p: &Probe| (file_stamp(&p.measured), file_stamp(&p.pools));
    let mut measured_seen = stamps(&agent.cfg.probe);
    tokio::pin!(shutdown);
    loop {
        let wake = agent.next_attempt;
        tokio::select! {
            _ = &mut shutdown => break,
            _ = uptime.tick() => {
                agent.enqueue_uptime(false)?;
                agent.enqueue_consumption().await?;
            }
            _ = reprobe.tick() => agent.reprobe().await?,
            _ = disks_changed.tick() => {
                let stamp = stamps(&agent.cfg.probe);
                if stamp != measured_seen {
                    measured_seen = stamp;
                    tracing::info!("storage published new disk measurements or pools");
                    agent.reprobe().await?;
                }
            }
            _ = sleep_until(wake) => agent.attempt().await?,
        }
    }
    // Workloads keep running through an agent restart; only the mailbox loop stops. Its
    // state files are replaced atomically, so stopping it at an await point loses nothing.
    drop(mailbox_task);
    // Planned shutdown: a last uptime report, so the registry sees the node was up until now
    // and shows it stopped at once.
    agent.enqueue_uptime(true)?;
    if agent.status.borrow().node_id.is_some() {
        let grace = agent.cfg.shutdown_grace;
        match tokio::time::timeout(grace, agent.flush()).await {
            Ok(Ok(Pass::Idle)) => tracing::info!("last uptime report delivered; stopping"),
            Ok(Ok(Pass::RetryAt(_))) | Err(_) => tracing::warn!(
                queued = agent.queue.len(),
                "registry did not take the last reports before shutdown; they stay queued"
            ),
            Ok(Err(e)) => return Err(e),
        }
    } else {
        tracing::warn!(
            queued = agent.queue.len(),
            "stopping before registration; reports stay queued"
        );
    }
    Ok(())
}

/// Stops a task when the agent stops, whichever way it returns.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How often the disk measurement file is looked at.
const MEASURED_POLL: Duration = Duration::from_secs(2);

/// Modification time and length of a file, to notice it was rewritten.
fn file_stamp(path: &Path) -> Option<(std::time::SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime_is_parsed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("uptime"), "350735.47 234388.90\n").unwrap();
        assert_eq!(read_uptime(dir.path()), Some(350735));
        std::fs::write(dir.path().join("uptime"), "nan 1\n").unwrap();
        assert_eq!(read_uptime(dir.path()), None);
    }
}
