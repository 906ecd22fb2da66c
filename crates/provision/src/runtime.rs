//! The workloads of every contract on the node: images pulled into the shared cache,
//! containers started in their own cgroups and watched, started again by their restart
//! policy, their output kept in a bounded log, stopped and deleted on request.
//!
//! Nothing here is kept across a restart of the service: the agent holds the desired state
//! (crates/reconcile) and applies it again, and [`Runtime::open`] first clears what a dead
//! predecessor left (processes, cgroups, container directories).

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gridtypes::deployment::{Container, Deployment, DiskKind, Restart, Vm, Workload};
use gridtypes::mailbox::{DeploymentState, WorkloadStatus};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;
use tokio::sync::{oneshot, watch};

use crate::container::{self, Bind, Limits, Spec};
use crate::image::ImageStore;
use crate::meter::Meter;
use crate::pool::{Item, Pools};
use crate::twinnet::{Attachment, NetError, Range, TwinNet};
use crate::volume;
use svclog::error_chain;

/// How the runtime is set up.
#[derive(Debug, Clone)]
pub struct Config {
    /// Its state: `images/`, `containers/`, `logs/` (on the cache partition).
    pub root: PathBuf,
    /// The cgroup v2 directory containers' cgroups are made in (`/sys/fs/cgroup/workloads`);
    /// `None` runs them without limits (hosts without cgroup v2, in tests).
    pub cgroup: Option<PathBuf>,
    /// Registries (`host:port`) spoken to without TLS.
    pub plain_http: Vec<String>,
    /// Bytes of output kept per container (the newest; two files of half each).
    pub log_bytes: u64,
    /// How long a stopped container has between SIGTERM and SIGKILL.
    pub stop_timeout: Duration,
    /// Longest an image pull may take.
    pub pull_timeout: Duration,
    /// The range twin networks are cut from; `None`: containers get loopback only (hosts
    /// where the runtime may not touch the network, in tests).
    pub net: Option<Range>,
    /// How VMs run; `None`: a VM workload fails with the reason.
    pub vm: Option<crate::vm::VmSetup>,
    /// Storage's pools file (`/run/gridos/pools.json`): volumes and VM disks go on the pools
    /// it lists ([`crate::pool`]); `None`: in `root` (a test host).
    pub pools: Option<PathBuf>,
}

impl Config {
    /// The node's defaults under `root`.
    pub fn new(root: &Path) -> Config {
        Config {
            root: root.to_path_buf(),
            cgroup: None,
            plain_http: Vec::new(),
            log_bytes: 1 << 20,
            stop_timeout: Duration::from_secs(10),
            pull_timeout: Duration::from_secs(600),
            net: None,
            vm: None,
            pools: None,
        }
    }
}

/// Why the runtime could not be opened or a log read.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A directory or cgroup of the runtime.
    #[error("{what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// The image cache.
    #[error(transparent)]
    Image(#[from] crate::image::ImageError),
    /// The twin networks.
    #[error("twin networks")]
    Net(#[from] NetError),
    /// A blocking task of the runtime died.
    #[error("the {what} task failed")]
    Task {
        /// What it was doing.
        what: &'static str,
        /// Why it ended.
        source: tokio::task::JoinError,
    },
    /// No such workload under that contract.
    #[error("contract {contract} has no container or VM {name:?} on this node")]
    NoSuchWorkload {
        /// The contract.
        contract: i64,
        /// The name asked for.
        name: String,
    },
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> RuntimeError {
    let path = path.to_path_buf();
    move |source| RuntimeError::Io { what, path, source }
}

/// The sizes of the volumes `w` (a VM) has attached, as `sizes` gives them.
fn attached_sizes(w: &Workload, sizes: &BTreeMap<&str, u64>) -> Vec<u64> {
    match w {
        Workload::Vm(v) => v
            .volumes
            .iter()
            .map(|n| sizes.get(n.as_str()).copied().unwrap_or(0))
            .collect(),
        Workload::Container(_) | Workload::Volume(_) => Vec::new(),
    }
}

/// The disk image file a volume attached to a VM holds.
pub const VM_VOLUME_FILE: &str = "disk.img";

/// Most processes and threads in one container.
const PIDS_PER_CONTAINER: u64 = 1024;
/// Longest pause between two starts of a container or VM that keeps failing.
pub(crate) const MAX_RESTART_DELAY: Duration = Duration::from_secs(60);
/// A container or VM that ran this long starts again without delay after an exit.
pub(crate) const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// One container or VM being watched.
struct Watched {
    spec: Workload,
    /// The sizes of a VM's attached volumes when it started.
    attached: Vec<u64>,
    status: Arc<Mutex<WorkloadStatus>>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// All workloads of the node.
pub struct Runtime {
    cfg: Config,
    images: ImageStore,
    net: Option<Arc<TwinNet>>,
    /// Each contract's veth counts (see [`crate::meter`]); locked around every reading of
    /// the counters and every retirement of a veth.
    meter: Arc<Mutex<Meter>>,
    contracts: tokio::sync::Mutex<BTreeMap<i64, BTreeMap<String, Watched>>>,
    /// QEMU and its accelerator, found with the first VM.
    hypervisor: Option<Arc<crate::vm::Hypervisor>>,
    /// Where volumes and VM disks go.
    pools: Pools,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("root", &self.cfg.root)
            .finish()
    }
}

impl Runtime {
    /// Opens the runtime: kills and removes what a previous instance left running, prepares
    /// the workloads' cgroup (controllers handed down to containers).
    pub fn open(cfg: Config) -> Result<Runtime, RuntimeError> {
        if let Some(cg) = &cfg.cgroup {
            clear_cgroups(cg)?;
        }
        let containers = cfg.root.join("containers");
        if containers.exists() {
            // Each writable layer may be a btrfs subvolume with its own quota group.
            let entries = std::fs::read_dir(&containers)
                .map_err(io_err("reading old containers", &containers))?;
            for e in entries.flatten() {
                if let Err(why) = volume::delete(&e.path()) {
                    tracing::warn!(dir = %e.path().display(), why, "old container not removed");
                }
            }
            std::fs::remove_dir_all(&containers)
                .map_err(io_err("removing old containers", &containers))?;
        }
        // A VM's seed and sockets are made again at each start; its root disk (vmdisks/) stays.
        let vms = cfg.root.join("vms");
        if vms.exists() {
            std::fs::remove_dir_all(&vms).map_err(io_err("removing old VM folders", &vms))?;
        }
        for d in ["containers", "logs", "volumes", "vms", "vmdisks"] {
            let p = cfg.root.join(d);
            std::fs::create_dir_all(&p).map_err(io_err("creating", &p))?;
        }
        let images = ImageStore::open(&cfg.root.join("images"), cfg.plain_http.clone())?;
        let net = match cfg.net {
            Some(range) => Some(Arc::new(TwinNet::open(range)?)),
            None => None,
        };
        let hypervisor = cfg
            .vm
            .clone()
            .map(|setup| Arc::new(crate::vm::Hypervisor::new(setup)));
        let pools = Pools::open(cfg.pools.clone(), &cfg.root);
        for (pool, kind, size, booked) in pools.usage() {
            tracing::info!(pool, ?kind, ?size, booked, "storage pool");
        }
        Ok(Runtime {
            pools,
            cfg,
            images,
            net,
            meter: Arc::new(Mutex::new(Meter::default())),
            contracts: tokio::sync::Mutex::new(BTreeMap::new()),
            hypervisor,
        })
    }

    /// Makes the containers of `contract` exactly those of `d`: what changed or went is
    /// stopped and removed, what is new is pulled and started on the network of `twin` (its
    /// key, hex). Answers each workload's state.
    pub async fn apply(&self, contract: i64, twin: &str, d: &Deployment) -> Vec<WorkloadStatus> {
        let mut all = self.contracts.lock().await;
        let current = all.entry(contract).or_default();
        let wanted: BTreeMap<&str, &Workload> = d
            .workloads
            .iter()
            .filter(|w| !matches!(w, Workload::Volume(_)))
            .map(|w| (w.name(), w))
            .collect();
        let sizes: BTreeMap<&str, u64> = d
            .workloads
            .iter()
            .filter_map(|w| match w {
                Workload::Volume(v) => Some((v.name.as_str(), v.size)),
                _ => None,
            })
            .collect();
        // A VM whose attached volume changed size is changed too: its disk grows at a start.
        let gone: Vec<String> = current
            .iter()
            .filter(|(name, w)| {
                wanted.get(name.as_str()) != Some(&&w.spec)
                    || attached_sizes(&w.spec, &sizes) != w.attached
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            if let Some(w) = current.remove(&name) {
                self.stop(contract, &name, w).await;
            }
        }
        // Volumes before the containers that mount them; those the deployment dropped go
        // (every container that mounted one was changed, so it is stopped by now).
        let mut by_name: BTreeMap<String, WorkloadStatus> = BTreeMap::new();
        let mut ready: BTreeMap<String, PathBuf> = BTreeMap::new();
        let on_vm: std::collections::BTreeSet<&str> = d
            .workloads
            .iter()
            .filter_map(|w| match w {
                Workload::Vm(v) => Some(v.volumes.iter().map(String::as_str)),
                _ => None,
            })
            .flatten()
            .collect();

        let keep: Vec<String> = d
            .workloads
            .iter()
            .filter_map(|w| match w {
                Workload::Volume(v) => Some(v.name.clone()),
                Workload::Container(_) | Workload::Vm(_) => None,
            })
            .collect();
        self.drop_volumes(contract, &keep).await;
        let keep_vms: Vec<String> = d
            .workloads
            .iter()
            .filter_map(|w| match w {
                Workload::Vm(v) => Some(v.name.clone()),
                _ => None,
            })
            .collect();
        self.drop_vm_disks(contract, &keep_vms).await;
        for w in &d.workloads {
            if let Workload::Volume(v) = w {
                let path = match self.pools.place(
                    Item::Volume,
                    &Self::id(contract, &v.name),
                    v.disk,
                    v.size,
                ) {
                    Ok(path) => path,
                    Err(why) => {
                        by_name.insert(v.name.clone(), failed(&v.name, why));
                        continue;
                    }
                };
                // A VM's volume is a disk image file in it, whose length bounds what the
                // guest stores; btrfs also counts the subvolume's metadata and, while a block
                // is rewritten, both its copies, so the quota leaves room for those.
                let limit = if on_vm.contains(v.name.as_str()) {
                    v.size.saturating_add(v.size / 8).saturating_add(64 << 20)
                } else {
                    v.size
                };
                let at = path.clone();
                let status = match blocking(move || volume::ensure(&at, limit)).await {
                    Ok(note) => {
                        ready.insert(v.name.clone(), path);
                        WorkloadStatus {
                            name: v.name.clone(),
                            state: DeploymentState::Running,
                            reason: note,
                            address: None,
                            kind: None,
                        }
                    }
                    Err(why) => failed(&v.name, why),
                };
                by_name.insert(v.name.clone(), status);
            }
        }
        for w in &d.workloads {
            if matches!(w, Workload::Volume(_)) {
                continue;
            }
            let status = match current.get(w.name()) {
                Some(running) => lock(&running.status).clone(),
                None => {
                    let (status, watched) = match w {
                        Workload::Container(c) => self.start(contract, twin, c, &ready).await,
                        Workload::Vm(v) => {
                            let attached = v
                                .volumes
                                .iter()
                                .map(|n| {
                                    let found = ready.get(n).zip(sizes.get(n.as_str()));
                                    found
                                        .map(|(p, s)| (p.join(VM_VOLUME_FILE), *s))
                                        .ok_or_else(|| format!("volume {n:?} is not ready"))
                                })
                                .collect::<Result<Vec<_>, String>>();
                            match attached {
                                Ok(a) => self.start_vm(contract, twin, v, a).await,
                                Err(why) => (failed(&v.name, why), None),
                            }
                        }
                        Workload::Volume(_) => continue,
                    };
                    if let Some(watched) = watched {
                        current.insert(w.name().to_string(), watched);
                    }
                    status
                }
            };
            by_name.insert(w.name().to_string(), status);
        }
        let statuses = d
            .workloads
            .iter()
            .filter_map(|w| by_name.remove(w.name()))
            .collect();
        if current.is_empty() {
            all.remove(&contract);
        }
        statuses
    }

    /// Stops and removes every container of `contract`, with its logs, and its volumes.
    pub async fn remove(&self, contract: i64) {
        let mut all = self.contracts.lock().await;
        if let Some(current) = all.remove(&contract) {
            for (name, w) in current {
                self.stop(contract, &name, w).await;
            }
        }
        self.drop_volumes(contract, &[]).await;
        self.drop_vm_disks(contract, &[]).await;
    }

    /// Deletes the root disks of `contract`'s VMs whose names are not in `keep`: the VM was
    /// dropped from the deployment, and its data with it.
    async fn drop_vm_disks(&self, contract: i64, keep: &[String]) {
        self.drop_items(Item::VmDisk, contract, keep).await;
    }

    /// Deletes `contract`'s volumes or VM disks (`item`) whose names are not in `keep`, on
    /// every pool, and clears their bookings.
    async fn drop_items(&self, item: Item, contract: i64, keep: &[String]) {
        let prefix = format!("c{contract}-");
        for (id, path) in self.pools.list(item, &prefix) {
            let name = id[prefix.len()..].to_string();
            if keep.contains(&name) {
                continue;
            }
            let deleted = match item {
                Item::Volume => blocking(move || volume::delete(&path)).await,
                Item::VmDisk => match std::fs::remove_file(&path) {
                    Err(e)
                        if e.kind() != io::ErrorKind::NotFound && !path.as_os_str().is_empty() =>
                    {
                        Err(e.to_string())
                    }
                    _ => Ok(()),
                },
            };
            let deleted = deleted.and_then(|()| self.pools.forget(item, &id));
            match (item, deleted) {
                (Item::Volume, Ok(())) => {
                    tracing::info!(contract, volume = %name, "volume deleted")
                }
                (Item::Volume, Err(why)) => {
                    tracing::error!(contract, volume = %name, why, "volume not deleted")
                }
                (Item::VmDisk, Ok(())) => {
                    tracing::info!(contract, vm = %name, "VM root disk deleted")
                }
                (Item::VmDisk, Err(why)) => {
                    tracing::error!(contract, vm = %name, why, "VM root disk not deleted")
                }
            }
        }
    }

    /// Pulls `v`'s image, makes its root disk and starts it; the watcher when it started (or
    /// failed in a way its restart policy retries).
    async fn start_vm(
        &self,
        contract: i64,
        twin: &str,
        v: &Vm,
        volumes: Vec<(PathBuf, u64)>,
    ) -> (WorkloadStatus, Option<Watched>) {
        let Some(hv) = self.hypervisor.clone() else {
            let why = "this node runs no VMs: its provision service has no VM runtime".to_string();
            return (failed(&v.name, why), None);
        };
        let id = Self::id(contract, &v.name);
        let dir = self.cfg.root.join("vms").join(&id);
        let engines = match hv.get(&self.cfg.root.join("vms")).await {
            Ok(found) => found,
            Err(why) => return (failed(&v.name, why), None),
        };
        // Boot files only: the root disk is the VM's own, so the image is held to a bound of
        // its own instead of the disk it reserved.
        let image = match self
            .pull(&v.name, &v.image, crate::vm::MAX_BOOT_IMAGE)
            .await
        {
            Ok(image) => image,
            Err(failed) => return (failed, None),
        };
        let boot = match crate::vm::boot_source(&image.layers) {
            Ok(found) => found,
            Err(why) => return (failed(&v.name, why), None),
        };
        let size = v.resources.sru;
        let disk = match self.pools.place(Item::VmDisk, &id, DiskKind::Ssd, size) {
            Ok(path) => path,
            Err(why) => return (failed(&v.name, why), None),
        };
        let (at, from, q) = (disk.clone(), boot.clone(), engines.qemu.clone());
        let made = blocking(move || match &from {
            crate::vm::BootSource::Disk(image) => crate::vm::root_disk_from(&q, image, &at, size),
            crate::vm::BootSource::Kernel { .. } => crate::vm::root_disk(&at, size),
        })
        .await;
        if let Err(why) = made {
            return (failed(&v.name, why), None);
        }
        // Each attached volume is a raw disk image file in it, made on first use and grown
        // with the volume, never shrunk.
        let files: Vec<PathBuf> = volumes.iter().map(|(p, _)| p.clone()).collect();
        let attached: Vec<u64> = volumes.iter().map(|(_, s)| *s).collect();
        let made = blocking(move || {
            volumes
                .iter()
                .try_for_each(|(p, size)| crate::vm::root_disk(p, *size))
        })
        .await;
        if let Err(why) = made {
            return (failed(&v.name, format!("an attached volume: {why}")), None);
        }
        let cgroup = match &self.cfg.cgroup {
            Some(parent) => {
                let (parent, id, l) = (parent.clone(), id.clone(), crate::vm::limits(v));
                match blocking(move || {
                    container::make_cgroup(&parent, &id, &l).map_err(|e| e.to_string())
                })
                .await
                {
                    Ok(cg) => Some(cg),
                    Err(why) => {
                        return (failed(&v.name, format!("making its cgroup: {why}")), None)
                    }
                }
            }
            None => None,
        };
        let status = Arc::new(Mutex::new(provisioning(&v.name)));
        let (stop, stopped) = watch::channel(false);
        let (first_tx, first_rx) = oneshot::channel();
        let w = crate::vm::VmWatcher {
            contract,
            twin: twin.to_string(),
            vm: v.clone(),
            dir,
            disk,
            volumes: files,
            boot,
            engines,
            cgroup,
            log: Arc::new(Log::new(
                self.log_path(contract, &v.name),
                self.cfg.log_bytes,
            )),
            status: status.clone(),
            net: self.net.clone(),
            meter: self.meter.clone(),
            stop_timeout: hv.stop_timeout(),
        };
        let task = tokio::spawn(w.run(stopped, first_tx));
        let watched = Watched {
            spec: Workload::Vm(v.clone()),
            attached,
            status,
            stop,
            task,
        };
        self.first_answer(contract, watched, first_rx).await
    }

    /// The first start's outcome is the answer; a workload that failed to start and will
    /// not be retried (restart `never`) is not kept.
    async fn first_answer(
        &self,
        contract: i64,
        watched: Watched,
        first: oneshot::Receiver<bool>,
    ) -> (WorkloadStatus, Option<Watched>) {
        let started = first.await.unwrap_or(false);
        let answer = lock(&watched.status).clone();
        let restart = match &watched.spec {
            Workload::Container(c) => c.restart,
            Workload::Vm(v) => v.restart,
            Workload::Volume(_) => Restart::Never,
        };
        if !started && restart == Restart::Never {
            let _ = watched.task.await;
            self.discard(contract, watched.spec.name()).await;
            return (answer, None);
        }
        (answer, Some(watched))
    }

    /// Deletes the volumes of `contract` whose names are not in `keep`.
    async fn drop_volumes(&self, contract: i64, keep: &[String]) {
        self.drop_items(Item::Volume, contract, keep).await;
    }

    /// Stops everything (the service is shutting down); nothing is removed but processes.
    pub async fn shutdown(&self) {
        let mut all = self.contracts.lock().await;
        let stops = all.values_mut().flat_map(|c| c.values());
        for w in stops {
            let _ = w.stop.send(true);
        }
        for (_, current) in std::mem::take(&mut *all) {
            for (_, w) in current {
                let _ = w.task.await;
            }
        }
    }

    /// Bytes the twins' containers moved through the node since the service started (see
    /// [`TwinNet::traffic_bytes`]); 0 without twin networks.
    pub async fn traffic_bytes(&self) -> Result<u64, RuntimeError> {
        let Some(net) = self.net.clone() else {
            return Ok(0);
        };
        tokio::task::spawn_blocking(move || net.traffic_bytes())
            .await
            .map_err(|source| RuntimeError::Task {
                what: "traffic",
                source,
            })?
            .map_err(RuntimeError::from)
    }

    /// Bytes each contract's containers sent and received through their veths since the
    /// service started, both ways, those of containers gone since included (a restart of the
    /// service starts again from 0); empty without twin networks. These counts include the
    /// traffic between a twin's own containers, which is not public: they say how the node's
    /// public total ([`Runtime::traffic_bytes`]) is shared among contracts, not how much it
    /// is.
    pub async fn contract_traffic(&self) -> Result<BTreeMap<i64, u64>, RuntimeError> {
        let Some(net) = self.net.clone() else {
            return Ok(BTreeMap::new());
        };
        let meter = self.meter.clone();
        tokio::task::spawn_blocking(move || {
            // Held through the reading: a veth retired meanwhile would be counted twice.
            let mut m = lock(&meter);
            let counters: BTreeMap<String, u64> = net
                .veth_traffic()?
                .into_iter()
                .map(|(veth, t)| (veth, t.bytes()))
                .collect();
            Ok(m.totals(&counters))
        })
        .await
        .map_err(|source| RuntimeError::Task {
            what: "contract traffic",
            source,
        })?
    }

    /// Where each container of `contract` stands now.
    pub async fn statuses(&self, contract: i64) -> Vec<WorkloadStatus> {
        let all = self.contracts.lock().await;
        all.get(&contract)
            .map(|c| c.values().map(|w| lock(&w.status).clone()).collect())
            .unwrap_or_default()
    }

    /// The newest `max_bytes` of what container `name` of `contract` printed.
    pub async fn logs(
        &self,
        contract: i64,
        name: &str,
        max_bytes: u64,
    ) -> Result<Vec<u8>, RuntimeError> {
        let known = self
            .contracts
            .lock()
            .await
            .get(&contract)
            .is_some_and(|c| c.contains_key(name));
        if !known {
            return Err(RuntimeError::NoSuchWorkload {
                contract,
                name: name.to_string(),
            });
        }
        let path = self.log_path(contract, name);
        let max = max_bytes.min(self.cfg.log_bytes);
        let at = path.clone();
        tokio::task::spawn_blocking(move || tail(&at, max))
            .await
            .map_err(|e| io::Error::other(e.to_string()))
            .and_then(|r| r)
            .map_err(io_err("reading the log", &path))
    }

    fn id(contract: i64, name: &str) -> String {
        format!("c{contract}-{name}")
    }

    fn log_path(&self, contract: i64, name: &str) -> PathBuf {
        self.cfg
            .root
            .join("logs")
            .join(format!("{}.log", Self::id(contract, name)))
    }

    /// Pulls `c`'s image and starts it; the watcher when it started (or failed in a way
    /// its restart policy retries).
    async fn start(
        &self,
        contract: i64,
        twin: &str,
        c: &Container,
        volumes: &BTreeMap<String, PathBuf>,
    ) -> (WorkloadStatus, Option<Watched>) {
        let mut binds = Vec::with_capacity(c.mounts.len());
        for m in &c.mounts {
            let Some(source) = volumes.get(&m.volume) else {
                let why = format!("volume {:?} is not ready", m.volume);
                return (failed(&c.name, why), None);
            };
            binds.push(Bind {
                source: source.clone(),
                target: m.path.clone(),
                read_only: m.read_only,
            });
        }
        let image = match self.pull(&c.name, &c.image, c.resources.sru).await {
            Ok(image) => image,
            Err(failed) => return (failed, None),
        };
        let spec = match self.spec(contract, c, &image) {
            Ok(s) => Spec { binds, ..s },
            Err(why) => return (failed(&c.name, why), None),
        };
        // The writable layer holds what the container writes: with the image, no more than
        // the disk it reserved, so no twin fills the cache partition the node and the other
        // twins live on (a btrfs subvolume with a quota, as volumes are).
        let dir = self.cfg.root.join("containers").join(&spec.id);
        let room = c
            .resources
            .sru
            .saturating_sub(image.unpacked_bytes)
            .max(MIN_WRITABLE);
        match blocking(move || volume::ensure(&dir, room)).await {
            Ok(None) => {}
            Ok(Some(note)) => {
                tracing::info!(contract, container = %c.name, note, "writable layer")
            }
            Err(why) => {
                // A subvolume made before the quota failed goes too.
                self.discard(contract, &c.name).await;
                let why = format!("making its writable layer: {why}");
                return (failed(&c.name, why), None);
            }
        }
        let status = Arc::new(Mutex::new(provisioning(&c.name)));
        let (stop, stopped) = watch::channel(false);
        let (first_tx, first_rx) = oneshot::channel();
        let w = Watcher {
            root: self.cfg.root.join("containers"),
            log: Log::new(self.log_path(contract, &c.name), self.cfg.log_bytes),
            spec,
            restart: c.restart,
            status: status.clone(),
            stop_timeout: self.cfg.stop_timeout,
            contract,
            net: self.net.clone().map(|n| (n, twin.to_string())),
            meter: self.meter.clone(),
        };
        let task = tokio::spawn(w.run(stopped, first_tx));
        let watched = Watched {
            spec: Workload::Container(c.clone()),
            attached: Vec::new(),
            status,
            stop,
            task,
        };
        self.first_answer(contract, watched, first_rx).await
    }

    /// Pulls `reference` (at most `max_bytes` unpacked) for workload `name` within the pull
    /// timeout; the workload's failed status when it cannot be had.
    async fn pull(
        &self,
        name: &str,
        reference: &str,
        max_bytes: u64,
    ) -> Result<crate::image::Image, WorkloadStatus> {
        match tokio::time::timeout(
            self.cfg.pull_timeout,
            self.images.pull(reference, max_bytes),
        )
        .await
        {
            Ok(Ok(image)) => Ok(image),
            Ok(Err(e)) => Err(failed(name, error_chain(&e))),
            Err(_) => Err(failed(
                name,
                format!(
                    "pulling {reference} took longer than {} s",
                    self.cfg.pull_timeout.as_secs()
                ),
            )),
        }
    }

    fn spec(
        &self,
        contract: i64,
        c: &Container,
        image: &crate::image::Image,
    ) -> Result<Spec, String> {
        let mut args = c.entrypoint.clone().unwrap_or(image.entrypoint.clone());
        // The twin's command replaces the image's; a new entrypoint drops the image's command.
        if !c.cmd.is_empty() {
            args.extend(c.cmd.iter().cloned());
        } else if c.entrypoint.is_none() {
            args.extend(image.cmd.iter().cloned());
        }
        let mut env: BTreeMap<String, String> = image
            .env
            .iter()
            .filter_map(|e| e.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        env.extend(c.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        let (uid, gid) = numeric_user(&image.user)?;
        Ok(Spec {
            id: Self::id(contract, &c.name),
            hostname: c.name.clone(),
            layers: image.layers.clone(),
            args,
            env: env.into_iter().map(|(k, v)| format!("{k}={v}")).collect(),
            workdir: image.workdir.clone(),
            uid,
            gid,
            cgroup: self.cfg.cgroup.clone().map(|cg| {
                let limits = Limits {
                    cores: c.resources.cru,
                    memory: c.resources.mru,
                    pids: PIDS_PER_CONTAINER,
                };
                (cg, limits)
            }),
            binds: Vec::new(),
        })
    }

    /// Stops one container and removes its directory, cgroup and log.
    async fn stop(&self, contract: i64, name: &str, w: Watched) {
        let _ = w.stop.send(true);
        let _ = w.task.await;
        self.discard(contract, name).await;
    }

    /// Removes the directory and log of a container that no longer runs.
    async fn discard(&self, contract: i64, name: &str) {
        let id = Self::id(contract, name);
        let dir = self.cfg.root.join("containers").join(&id);
        let vm_dir = self.cfg.root.join("vms").join(&id);
        let vm_cgroup = self.cfg.cgroup.as_ref().map(|cg| cg.join(&id));
        let log = self.log_path(contract, name);
        let removed = blocking(move || {
            let _ = std::fs::remove_file(rotated(&log));
            let _ = std::fs::remove_file(&log);
            let _ = std::fs::remove_dir_all(&vm_dir);
            // A container's cgroup is removed by its watcher; a VM's (QEMU gone) here.
            if let Some(cg) = vm_cgroup {
                let _ = std::fs::remove_dir(cg);
            }
            volume::delete(&dir)
        })
        .await;
        match removed {
            Ok(()) => tracing::info!(contract, container = %name, "container removed"),
            Err(why) => {
                tracing::error!(contract, container = %name, why, "container directory not removed")
            }
        }
    }
}

/// The least a writable layer gets, even when the image takes the whole reservation:
/// overlayfs needs room for its work directory.
const MIN_WRITABLE: u64 = gridtypes::deployment::MIN_VOLUME;

/// Runs file-system work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("the file-system task failed: {e}"))
        .and_then(|r| r)
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A container or VM being started.
fn provisioning(name: &str) -> WorkloadStatus {
    WorkloadStatus {
        name: name.to_string(),
        state: DeploymentState::Provisioning,
        reason: None,
        address: None,
        kind: None,
    }
}

fn failed(name: &str, reason: String) -> WorkloadStatus {
    WorkloadStatus {
        name: name.to_string(),
        state: DeploymentState::Failed,
        reason: Some(reason),
        address: None,
        kind: None,
    }
}

/// `uid[:gid]` in numbers; names would need the image's /etc/passwd, read through its layers.
fn numeric_user(user: &str) -> Result<(u32, u32), String> {
    if user.is_empty() {
        return Ok((0, 0));
    }
    let (u, g) = user.split_once(':').unwrap_or((user, ""));
    let uid: u32 = u.parse().map_err(|_| {
        format!("the image's user {user:?} is a name; this node runs images whose user is numeric (uid[:gid])")
    })?;
    let gid = if g.is_empty() {
        uid
    } else {
        g.parse()
            .map_err(|_| format!("the image's group in {user:?} is not numeric"))?
    };
    Ok((uid, gid))
}

/// Kills every process left in the workloads' cgroups and removes them, then hands the
/// cpu, memory and pids controllers down to the containers' cgroups.
fn clear_cgroups(cg: &Path) -> Result<(), RuntimeError> {
    std::fs::create_dir_all(cg).map_err(io_err("creating the cgroup", cg))?;
    let entries = std::fs::read_dir(cg).map_err(io_err("reading the cgroup", cg))?;
    for e in entries.flatten() {
        let path = e.path();
        if !path.is_dir() {
            continue;
        }
        let _ = std::fs::write(path.join("cgroup.kill"), "1");
        // The kill is asynchronous: rmdir fails with EBUSY until the processes are gone.
        let mut tries = 0;
        while let Err(err) = std::fs::remove_dir(&path) {
            tries += 1;
            if tries > 100 {
                return Err(io_err("removing a leftover cgroup", &path)(err));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        tracing::warn!(cgroup = %path.display(), "killed and removed a container left by a previous run");
    }
    // Only what the kernel offers here: a missing controller then fails the container that
    // needs it, with its name, instead of the whole service.
    let offered = std::fs::read_to_string(cg.join("cgroup.controllers")).unwrap_or_default();
    let wanted: Vec<String> = ["cpu", "memory", "pids"]
        .into_iter()
        .filter(|c| offered.split_whitespace().any(|o| o == *c))
        .map(|c| format!("+{c}"))
        .collect();
    if wanted.len() < 3 {
        tracing::warn!(
            offered = offered.trim(),
            "the workloads' cgroup lacks some of cpu, memory, pids"
        );
    }
    if wanted.is_empty() {
        return Ok(());
    }
    let ctl = cg.join("cgroup.subtree_control");
    std::fs::write(&ctl, wanted.join(" ")).map_err(io_err("enabling controllers in", &ctl))
}

/// The bounded output of one container or VM console: `NAME.log`, moved to `NAME.log.1`
/// when it holds half the budget (the previous `.1` goes).
#[derive(Clone)]
pub(crate) struct Log {
    path: PathBuf,
    half: u64,
}

fn rotated(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".1");
    PathBuf::from(p)
}

impl Log {
    pub(crate) fn new(path: PathBuf, bytes: u64) -> Log {
        Log {
            path,
            half: (bytes / 2).max(1),
        }
    }

    fn append(&self, data: &[u8]) -> io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        let len = f.metadata()?.len();
        if len > 0 && len + data.len() as u64 > self.half {
            drop(f);
            std::fs::rename(&self.path, rotated(&self.path))?;
            f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
        }
        // A single burst beyond the budget keeps its newest part.
        let skip = (data.len() as u64).saturating_sub(self.half) as usize;
        f.write_all(&data[skip..])
    }
}

/// The last `max` bytes of a log and its rotated predecessor.
fn tail(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    for p in [rotated(path), path.to_path_buf()] {
        match std::fs::File::open(&p) {
            Ok(mut f) => {
                f.read_to_end(&mut out)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    let skip = (out.len() as u64).saturating_sub(max) as usize;
    out.drain(..skip);
    Ok(out)
}

/// Starts one container, watches it, starts it again by its policy, stops it on request.
struct Watcher {
    root: PathBuf,
    log: Log,
    spec: Spec,
    restart: Restart,
    status: Arc<Mutex<WorkloadStatus>>,
    stop_timeout: Duration,
    contract: i64,
    /// The twin networks and the twin whose network the container joins.
    net: Option<(Arc<TwinNet>, String)>,
    /// Where the container's veth is counted under its contract.
    meter: Arc<Mutex<Meter>>,
}

impl Watcher {
    fn set(&self, state: DeploymentState, reason: Option<String>) {
        let mut s = lock(&self.status);
        s.state = state;
        s.reason = reason;
    }

    async fn run(self, mut stop: watch::Receiver<bool>, first: oneshot::Sender<bool>) {
        let mut first = Some(first);
        let mut delay = Duration::from_secs(1);
        let log = Arc::new(self.log.clone());
        loop {
            let (root, spec, net) = (self.root.clone(), self.spec.clone(), self.net.clone());
            let started = tokio::task::spawn_blocking(move || {
                let mut plugged = None;
                let started = container::start_with(&root, &spec, |pid| match &net {
                    Some((n, twin)) => {
                        let a = n.attach(twin, pid).map_err(|e| error_chain(&e))?;
                        plugged = Some(a.clone());
                        Ok(Some(a))
                    }
                    None => Ok(None),
                });
                // A start that failed after the network was plugged in (the program could
                // not be executed, say) gives its address and namespace back: a container
                // that keeps failing must not use up its twin's addresses.
                if let (Err(_), Some((n, _)), Some(a)) = (&started, &net, &plugged) {
                    n.detach(a);
                }
                started
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| error_chain(&e)));
            let began = tokio::time::Instant::now();
            let ended = match started {
                Ok((s, attachment)) => {
                    if let Some(a) = &attachment {
                        lock(&self.meter).plugged(self.contract, &a.veth);
                    }
                    let address = attachment.as_ref().map(|a| a.address.to_string());
                    tracing::info!(contract = self.contract, container = %self.spec.hostname, pid = s.pid.as_raw(), address, "container started");
                    self.set(DeploymentState::Running, None);
                    lock(&self.status).address = address;
                    if let Some(f) = first.take() {
                        let _ = f.send(true);
                    }
                    let pump = tokio::spawn(pump(s.output, log.clone()));
                    let ended = self.watch(s.pid, s.cgroup.as_deref(), &mut stop).await;
                    // The pipe ends when the last process holding it is gone.
                    let _ = tokio::time::timeout(Duration::from_secs(2), pump).await;
                    if let Some(cg) = &s.cgroup {
                        remove_cgroup(cg).await;
                    }
                    self.unplug(attachment).await;
                    let Some(code) = ended else { return };
                    Some(code)
                }
                Err(why) => {
                    tracing::warn!(contract = self.contract, container = %self.spec.hostname, why, "container did not start");
                    self.set(DeploymentState::Failed, Some(why));
                    if let Some(f) = first.take() {
                        let _ = f.send(false);
                    }
                    if self.restart == Restart::Never {
                        return;
                    }
                    None
                }
            };
            let again = match (ended, self.restart) {
                (None, _) => true,
                (Some(_), Restart::Always) => true,
                (Some(code), Restart::OnFailure) => code != 0,
                (Some(_), Restart::Never) => false,
            };
            if let Some(code) = ended {
                let state = if code == 0 {
                    DeploymentState::Exited
                } else {
                    DeploymentState::Failed
                };
                let reason = describe_exit(code, again.then_some(delay));
                tracing::info!(contract = self.contract, container = %self.spec.hostname, reason, "container ended");
                self.set(state, Some(reason));
            }
            if !again {
                // Nothing more to run; it stays listed until it is removed.
                let _ = stop.wait_for(|s| *s).await;
                return;
            }
            if began.elapsed() >= HEALTHY_RUN {
                delay = Duration::from_secs(1);
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            delay = (delay * 2).min(MAX_RESTART_DELAY);
        }
    }

    async fn unplug(&self, attachment: Option<Attachment>) {
        let net = self.net.as_ref().map(|(n, _)| n.clone());
        unplug(&net, &self.meter, self.contract, attachment).await;
        lock(&self.status).address = None;
    }

    /// Waits for the container's first process to end (its exit code, 128 + signal for a
    /// signal), or for a stop: then SIGTERM, SIGKILL after the timeout, and `None`.
    async fn watch(
        &self,
        pid: Pid,
        cgroup: Option<&Path>,
        stop: &mut watch::Receiver<bool>,
    ) -> Option<i32> {
        let exited = exit_of(pid);
        tokio::pin!(exited);
        tokio::select! {
            code = &mut exited => return Some(code),
            _ = stop.wait_for(|s| *s) => {}
        }
        // The first process of a PID namespace gets only the signals it handles.
        let _ = kill(pid, Signal::SIGTERM);
        if tokio::time::timeout(self.stop_timeout, &mut exited)
            .await
            .is_err()
        {
            match cgroup {
                Some(cg) => {
                    let _ = std::fs::write(cg.join("cgroup.kill"), "1");
                }
                None => {
                    let _ = kill(pid, Signal::SIGKILL);
                }
            }
            exited.await;
        }
        tracing::info!(contract = self.contract, container = %self.spec.hostname, "container stopped");
        None
    }
}

/// Reads the last count of a container's veth or a VM's tap into its contract's total, then
/// gives its address back (the veth goes, with its counters: the namespace, held by the twin
/// network, kept it until now).
pub(crate) async fn unplug(
    net: &Option<Arc<TwinNet>>,
    meter: &Arc<Mutex<Meter>>,
    contract: i64,
    attachment: Option<Attachment>,
) {
    if let (Some(net), Some(a)) = (net, attachment) {
        let (net, meter) = (net.clone(), meter.clone());
        let _ = tokio::task::spawn_blocking(move || {
            {
                // Read and retired under one lock: a reading of all contracts in between
                // would count this veth twice.
                let mut m = lock(&meter);
                let counted = match net.traffic(&a) {
                    Ok(t) => Some(t.bytes()),
                    Err(e) => {
                        tracing::warn!(
                            contract,
                            veth = a.veth,
                            error = &e as &dyn std::error::Error,
                            "last traffic count of a workload not read; its earlier one stands"
                        );
                        None
                    }
                };
                m.unplugged(&a.veth, counted);
            }
            net.detach(&a)
        })
        .await;
    }
}

fn describe_exit(code: i32, again: Option<Duration>) -> String {
    let how = if code > 128 {
        format!("killed by signal {}", code - 128)
    } else {
        format!("exited with status {code}")
    };
    match again {
        Some(d) => format!("{how}; starting again in {} s", d.as_secs()),
        None => how,
    }
}

/// Waits for `pid` (a child of this process) to end and reaps it, without a thread: its
/// pidfd becomes readable when it exits.
async fn exit_of(pid: Pid) -> i32 {
    loop {
        match wait_pidfd(pid).await {
            Ok(()) => {}
            Err(e) => {
                // No pidfd (a kernel before 5.3): poll instead.
                tracing::debug!(error = %e, "pidfd unavailable");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, sig, _)) => return 128 + sig as i32,
            Ok(_) => continue,
            // Reaped elsewhere, or not ours: nothing left to wait for.
            Err(_) => return 128 + libc::SIGKILL,
        }
    }
}

async fn wait_pidfd(pid: Pid) -> io::Result<()> {
    // SAFETY: a plain system call with an integer pid and no flags.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pidfd_open returned a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // SAFETY: the OwnedFd moves into the AsyncFd, which keeps it open (and the same
    // descriptor) until it is dropped.
    let afd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .map_err(io::Error::from)?;
    let _ready = afd.readable().await?;
    Ok(())
}

/// Copies a container's output or a VM's console into its log until the pipe closes.
pub(crate) async fn pump(output: OwnedFd, log: Arc<Log>) {
    let rx = match tokio::net::unix::pipe::Receiver::from_owned_fd(output) {
        Ok(rx) => rx,
        Err(e) => {
            tracing::error!(
                error = &e as &dyn std::error::Error,
                "container output not read"
            );
            return;
        }
    };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if rx.readable().await.is_err() {
            return;
        }
        match rx.try_read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                let (log, data) = (log.clone(), buf[..n].to_vec());
                let written = tokio::task::spawn_blocking(move || log.append(&data)).await;
                if let Ok(Err(e)) = written {
                    tracing::warn!(
                        error = &e as &dyn std::error::Error,
                        "container output lost"
                    );
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

/// Removes an emptied container cgroup (its processes may take a moment to be gone).
async fn remove_cgroup(cg: &Path) {
    for _ in 0..100 {
        match std::fs::remove_dir(cg) {
            Ok(()) => return,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    tracing::error!(cgroup = %cg.display(), "container cgroup not removed");
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_log_keeps_the_newest_output_within_its_budget() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c1-web.log");
        let log = Log::new(path.clone(), 100);
        for i in 0..40 {
            log.append(format!("line {i:02}\n").as_bytes()).unwrap();
        }
        let all = tail(&path, 1000).unwrap();
        assert!(all.len() <= 100, "{}", all.len());
        assert!(String::from_utf8_lossy(&all).ends_with("line 39\n"));
        let last = tail(&path, 8).unwrap();
        assert_eq!(last, b"line 39\n");
        // One write beyond the budget keeps its end.
        log.append(&[b'x'; 500]).unwrap();
        let all = tail(&path, 1000).unwrap();
        assert!(all.len() <= 100 && all.ends_with(b"xxxx"));
    }

    #[test]
    fn users_must_be_numeric() {
        assert_eq!(numeric_user(""), Ok((0, 0)));
        assert_eq!(numeric_user("1000"), Ok((1000, 1000)));
        assert_eq!(numeric_user("1000:50"), Ok((1000, 50)));
        assert!(numeric_user("nginx").unwrap_err().contains("numeric"));
        assert!(numeric_user("1:wheel").is_err());
    }

    #[test]
    fn exits_are_told_plainly() {
        assert_eq!(describe_exit(0, None), "exited with status 0");
        assert_eq!(
            describe_exit(137, Some(Duration::from_secs(4))),
            "killed by signal 9; starting again in 4 s"
        );
    }
}
