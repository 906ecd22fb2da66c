//! The VMs of twins' deployments: each one a QEMU process (crates/vmm) started from the
//! kernel and initrd of an OCI image, or from the disk image it carries, with a root disk on
//! an SSD pool, a cloud-init seed with its name, keys and address, a tap on its twin's
//! bridge, and a cgroup that holds it to what it reserved. Watched like a container: restarted by its policy, its console in
//! the bounded log `grid logs` reads, stopped by the power button, killed after the grace.
//!
//! The root disk outlives the QEMU process and the service (it is the VM's data, like a
//! volume), and goes only when the deployment drops the VM. Everything else of a VM (seed,
//! QMP socket, QEMU's messages) is made again at each start.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gridtypes::deployment::{Restart, Vm};
use gridtypes::mailbox::{DeploymentState, WorkloadStatus};
use tokio::sync::{oneshot, watch, OnceCell};

use crate::container::Limits;
use crate::meter::Meter;
use crate::twinnet::{Attachment, TwinNet};
use svclog::error_chain;

/// Memory QEMU itself takes beside the guest's (TCG's translation cache, device models): the
/// cgroup limit is the guest's memory plus this.
pub const QEMU_OVERHEAD: u64 = 256 << 20;
/// The most a VM image (its kernel and initrd) may unpack to on the node's cache.
pub const MAX_BOOT_IMAGE: u64 = 1 << 30;
/// Most processes and threads in one VM's cgroup (QEMU's vCPU and I/O threads).
const PIDS_PER_VM: u64 = 512;
/// The guest kernel's console, always first on its command line.
const CONSOLE: &str = "console=ttyS0";

/// Where QEMU comes from on this node.
#[derive(Debug, Clone)]
pub enum QemuSource {
    /// A QEMU installed on the host (development machines, tests).
    Host(PathBuf),
    /// The signed VM-runtime extension, fetched from the registry on first need.
    Extension(Box<extension::Extensions>),
}

/// Whether cloud-hypervisor runs VMs in QEMU's place (only ever under KVM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChChoice {
    /// When its binary is in the VM-runtime extension or in `PATH`.
    Auto,
    /// Never: QEMU runs every VM.
    Off,
    /// This binary.
    At(PathBuf),
}

impl std::str::FromStr for ChChoice {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<ChChoice, Self::Err> {
        Ok(match s {
            "auto" => ChChoice::Auto,
            "off" => ChChoice::Off,
            path => ChChoice::At(path.into()),
        })
    }
}

/// How the node runs VMs; `None` in the runtime's config: this node runs none.
#[derive(Debug, Clone)]
pub struct VmSetup {
    /// Where QEMU comes from.
    pub qemu: QemuSource,
    /// How guests run; probed with the first VM when not given.
    pub accel: Option<vmm::Accel>,
    /// Whether cloud-hypervisor is looked for.
    pub cloud_hypervisor: ChChoice,
    /// How long a guest has between the power button and the kill.
    pub stop_timeout: Duration,
}

/// What runs this node's VMs, found once per service run.
#[derive(Debug, Clone)]
pub struct Engines {
    /// QEMU: every VM when there is no cloud-hypervisor, and those it cannot boot.
    pub qemu: vmm::Qemu,
    /// How QEMU runs guests.
    pub accel: vmm::Accel,
    /// cloud-hypervisor, when its binary answers and KVM runs guests here.
    pub ch: Option<vmm::CloudHypervisor>,
}

/// What runs VMs on this node ([`Engines`]), found on the first VM of a service run.
#[derive(Debug)]
pub struct Hypervisor {
    setup: VmSetup,
    ready: OnceCell<Engines>,
    http: reqwest::Client,
}

impl Hypervisor {
    /// Nothing is fetched or probed until the first VM.
    pub fn new(setup: VmSetup) -> Hypervisor {
        Hypervisor {
            setup,
            ready: OnceCell::new(),
            http: reqwest::Client::new(),
        }
    }

    /// What runs the next VM: the extension mounted (downloaded and verified the first
    /// time), KVM probed and cloud-hypervisor looked for, once; an error is tried again next
    /// time.
    pub async fn get(&self, work: &Path) -> Result<Engines, String> {
        let found = self
            .ready
            .get_or_try_init(|| async {
                let (qemu, root) = match &self.setup.qemu {
                    QemuSource::Host(p) => (vmm::Qemu::host(p), None),
                    QemuSource::Extension(store) => {
                        let m = store
                            .ensure(&self.http, "vm")
                            .await
                            .map_err(|e| format!("the VM runtime: {}", error_chain(&e)))?;
                        let q = vmm::Qemu::from_extension(&m.root).map_err(|e| e.to_string())?;
                        (q, Some(m.root))
                    }
                };
                let accel = match self.setup.accel {
                    Some(a) => a,
                    None => {
                        let (q, w) = (qemu.clone(), work.to_path_buf());
                        tokio::task::spawn_blocking(move || {
                            vmm::accel::probe(&q, &w, Duration::from_secs(5))
                        })
                        .await
                        .map_err(|e| e.to_string())?
                    }
                };
                let choice = self.setup.cloud_hypervisor.clone();
                let ch = tokio::task::spawn_blocking(move || {
                    cloud_hypervisor(&choice, root.as_deref(), accel)
                })
                .await
                .map_err(|e| e.to_string())?;
                Ok::<_, String>(Engines { qemu, accel, ch })
            })
            .await?;
        Ok(found.clone())
    }

    /// The grace period of a stop.
    pub fn stop_timeout(&self) -> Duration {
        self.setup.stop_timeout
    }
}

/// The cloud-hypervisor to use, if `choice` allows one, one is found (in the extension at
/// `root`, else in `PATH`), it answers `--version`, and KVM runs guests (`accel`): it has
/// no software emulation. Every case is logged, so an operator sees why VMs run in QEMU.
fn cloud_hypervisor(
    choice: &ChChoice,
    root: Option<&Path>,
    accel: vmm::Accel,
) -> Option<vmm::CloudHypervisor> {
    let found = match choice {
        ChChoice::Off => {
            tracing::info!("cloud-hypervisor is turned off: VMs run in QEMU");
            return None;
        }
        ChChoice::At(p) => vmm::CloudHypervisor::new(p, Path::new("/")),
        ChChoice::Auto => {
            let found = root
                .and_then(vmm::CloudHypervisor::from_extension)
                .or_else(vmm::CloudHypervisor::from_path);
            let Some(found) = found else {
                tracing::info!("no cloud-hypervisor in the VM runtime or in PATH: VMs run in QEMU");
                return None;
            };
            found
        }
    };
    let program = found.program().display().to_string();
    if accel != vmm::Accel::Kvm {
        tracing::info!(
            program,
            "cloud-hypervisor is here, but KVM does not run guests: VMs run in QEMU"
        );
        return None;
    }
    match found.version(Duration::from_secs(5)) {
        Ok(version) => {
            let firmware = found.firmware().map(|f| f.display().to_string());
            tracing::info!(program, version, firmware, "VMs run in cloud-hypervisor");
            Some(found)
        }
        Err(e) => {
            tracing::warn!(program, error = %e, "cloud-hypervisor does not run: VMs run in QEMU");
            None
        }
    }
}

/// What a VM boots from, as its image holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootSource {
    /// `boot/vmlinuz` and, when there, `boot/initrd.img`: QEMU loads them itself.
    Kernel {
        /// The kernel.
        kernel: PathBuf,
        /// The initrd.
        initrd: Option<PathBuf>,
    },
    /// A disk image in `disk/` (KubeVirt's containerDisk layout), raw or qcow2: it becomes
    /// the VM's root disk, which the firmware boots.
    Disk(PathBuf),
}

/// Names a disk image in `disk/` may have.
const DISK_IMAGE_SUFFIXES: [&str; 3] = [".img", ".raw", ".qcow2"];

/// What an image's layers boot, as overlayfs would merge them (the highest layer holding a
/// path decides it; anything there but a file, a whiteout among them, hides the lower
/// ones): a kernel in `boot/vmlinuz`, else the one disk image in `disk/`.
pub fn boot_source(layers: &[PathBuf]) -> Result<BootSource, String> {
    let find = |rel: &str| -> Option<PathBuf> {
        for layer in layers.iter().rev() {
            let p = layer.join(rel);
            match std::fs::symlink_metadata(&p) {
                Ok(m) if m.is_file() => return Some(p),
                Ok(_) => return None,
                Err(_) => continue,
            }
        }
        None
    };
    if let Some(kernel) = find("boot/vmlinuz") {
        return Ok(BootSource::Kernel {
            kernel,
            initrd: find("boot/initrd.img"),
        });
    }
    // disk/ as the layers merge it: the highest layer holding a name decides it (a file is
    // an image; anything else, a whiteout among them, hides that name below), and a layer
    // where disk/ is not a folder hides the disk/ of every layer below.
    let mut seen: std::collections::BTreeMap<String, Option<PathBuf>> = Default::default();
    for layer in layers.iter().rev() {
        let dir = layer.join("disk");
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => break,
            Err(_) => continue,
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let file = e.file_type().is_ok_and(|t| t.is_file());
            seen.entry(e.file_name().to_string_lossy().into_owned())
                .or_insert_with(|| file.then(|| e.path()));
        }
    }
    let mut images: Vec<PathBuf> = seen
        .into_iter()
        .filter(|(name, _)| DISK_IMAGE_SUFFIXES.iter().any(|s| name.ends_with(s)))
        .filter_map(|(_, path)| path)
        .collect();
    match images.len() {
        0 => {}
        1 => return Ok(BootSource::Disk(images.remove(0))),
        n => {
            return Err(format!(
                "the image has {n} disk images in disk/: a VM boots from one"
            ))
        }
    }
    Err(
        "the image has neither boot/vmlinuz (a kernel, with boot/initrd.img) nor a disk \
         image in disk/ (*.img, *.raw or *.qcow2)"
            .into(),
    )
}

/// Makes the root disk `path` from the disk image `image` the first time (raw: copied;
/// qcow2: converted to raw with the VM runtime's `qemu-img`), as a file of `size` bytes; a
/// root disk already there is the VM's own data and is only grown ([`root_disk`]). The new
/// disk is written aside and renamed into place, so a failure leaves nothing.
pub fn root_disk_from(
    qemu: &vmm::Qemu,
    image: &Path,
    path: &Path,
    size: u64,
) -> Result<(), String> {
    if path.exists() {
        return root_disk(path, size);
    }
    let found = vmm::disk::inspect(image).map_err(|e| error_chain(&e))?;
    if found.virtual_size > size {
        return Err(format!(
            "the image's disk is {} bytes, more than the {size} bytes reserved: reserve at \
             least {} as sru",
            found.virtual_size, found.virtual_size
        ));
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let part = path.with_extension("part");
    let made = (|| {
        let _ = std::fs::remove_file(&part);
        match found.format {
            vmm::ImageFormat::Raw => std::fs::copy(image, &part)
                .map(|_| ())
                .map_err(|e| format!("copying the disk image: {e}"))?,
            vmm::ImageFormat::Qcow2 => {
                vmm::disk::qcow2_to_raw(qemu, image, &part, vmm::disk::CONVERT_TIMEOUT)
                    .map_err(|e| error_chain(&e))?
            }
        }
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&part)
            .map_err(|e| format!("{}: {e}", part.display()))?;
        f.set_len(size)
            .map_err(|e| format!("growing the root disk to {size} bytes: {e}"))?;
        f.sync_all()
            .map_err(|e| format!("syncing the root disk: {e}"))?;
        std::fs::rename(&part, path).map_err(|e| format!("{}: {e}", path.display()))
    })();
    if made.is_err() {
        let _ = std::fs::remove_file(&part);
    }
    made
}

/// Makes the disk file `path` (a root disk, or an attached volume's image) hold `size`
/// bytes: a sparse file made on first start, grown when the twin reserves more, never shrunk
/// (that would cut the guest's file system).
pub fn root_disk(path: &Path, size: u64) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| format!("the disk {}: {e}", path.display()))?;
    let now = f.metadata().map_err(|e| e.to_string())?.len();
    if now > size {
        return Err(format!(
            "the disk holds {now} bytes and cannot shrink to {size}: reserve at least {now}"
        ));
    }
    if now < size {
        f.set_len(size)
            .map_err(|e| format!("growing the disk to {size} bytes: {e}"))?;
    }
    Ok(())
}

/// A stable MAC address for a VM: locally administered, from its contract and name.
pub fn mac_of(contract: i64, name: &str) -> String {
    use sha2::Digest;
    let h = sha2::Sha256::digest(format!("{contract}/{name}").as_bytes());
    format!("52:54:00:{:02x}:{:02x}:{:02x}", h[0], h[1], h[2])
}

/// One VM being watched.
pub(crate) struct VmWatcher {
    pub contract: i64,
    pub twin: String,
    pub vm: Vm,
    /// `vms/ID`: seed, QMP socket, QEMU's messages.
    pub dir: PathBuf,
    pub disk: PathBuf,
    /// The attached volumes' disk image files, in order after the root disk.
    pub volumes: Vec<PathBuf>,
    pub boot: BootSource,
    pub engines: Engines,
    pub cgroup: Option<PathBuf>,
    pub log: Arc<crate::runtime::Log>,
    pub status: Arc<Mutex<WorkloadStatus>>,
    pub net: Option<Arc<TwinNet>>,
    pub meter: Arc<Mutex<Meter>>,
    pub stop_timeout: Duration,
}

/// What one run of QEMU ended with: its exit code, or `None` when it was stopped.
type Ended = Option<i32>;

impl VmWatcher {
    fn set(&self, state: DeploymentState, reason: Option<String>) {
        let mut s = crate::runtime::lock(&self.status);
        s.state = state;
        s.reason = reason;
    }

    fn id(&self) -> String {
        format!("c{}-{}", self.contract, self.vm.name)
    }

    /// Starts the VM once: lease, seed, hypervisor launched paused in its cgroup, tap,
    /// resume.
    fn launch(&self) -> Result<(vmm::Vm, std::process::ChildStdout, Option<Attachment>), String> {
        let mac = mac_of(self.contract, &self.vm.name);
        let lease = match &self.net {
            Some(n) => Some(n.reserve_tap(&self.twin).map_err(|e| error_chain(&e))?),
            None => None,
        };
        let give_back = |why: String| {
            if let (Some(n), Some(l)) = (&self.net, &lease) {
                n.release_tap(l);
            }
            why
        };
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| give_back(format!("{}: {e}", self.dir.display())))?;
        let seed_path = self.dir.join("seed.img");
        vmm::Seed {
            instance_id: self.id(),
            hostname: self.vm.name.clone(),
            ssh_keys: self.vm.ssh_keys.clone(),
            network: lease.as_ref().map(|l| vmm::seed::Network {
                mac: mac.clone(),
                address: format!("{}/{}", l.address, l.prefix),
                gateway: l.gateway.into(),
                dns: vec![],
            }),
        }
        .write(&seed_path)
        .map_err(|e| give_back(error_chain(&e)))?;
        let cmdline = if self.vm.cmdline.is_empty() {
            CONSOLE.to_string()
        } else {
            format!("{CONSOLE} {}", self.vm.cmdline)
        };
        let spec = vmm::Spec {
            name: self.id(),
            vcpus: u32::try_from(self.vm.resources.cru).unwrap_or(u32::MAX),
            memory_mib: self.vm.resources.mru >> 20,
            boot: match &self.boot {
                BootSource::Kernel { kernel, initrd } => vmm::Boot::Kernel {
                    kernel: kernel.clone(),
                    initrd: initrd.clone(),
                    cmdline,
                },
                // The root disk, first, holds the guest's boot loader and its command line.
                BootSource::Disk(_) => vmm::Boot::Disk,
            },
            disks: std::iter::once(&self.disk)
                .chain(&self.volumes)
                .map(|p| vmm::Disk {
                    path: p.clone(),
                    format: vmm::Format::Raw,
                    read_only: false,
                })
                .collect(),
            seed: Some(seed_path),
            nic: lease.as_ref().map(|l| vmm::Nic {
                tap: l.tap.clone(),
                mac: mac.clone(),
            }),
            accel: self.engines.accel,
            cgroup: self.cgroup.clone(),
        };
        let (mut vm, console) = self
            .hypervise(&spec)
            .map_err(|e| give_back(error_chain(&e)))?;
        let attachment = match (&self.net, &lease) {
            (Some(n), Some(l)) => match n.plug_tap(l) {
                Ok(a) => Some(a),
                Err(e) => {
                    vm.kill();
                    return Err(error_chain(&e));
                }
            },
            _ => None,
        };
        if let Err(e) = vm.resume() {
            vm.kill();
            if let (Some(n), Some(a)) = (&self.net, &attachment) {
                n.detach(a);
            }
            return Err(error_chain(&e));
        }
        Ok((vm, console, attachment))
    }

    /// The hypervisor for `spec`, started paused: cloud-hypervisor when there is one and it
    /// can boot the spec, else QEMU, and QEMU too when cloud-hypervisor fails to start (the
    /// twin's VM runs; the operator reads why in the log).
    fn hypervise(
        &self,
        spec: &vmm::Spec,
    ) -> Result<(vmm::Vm, std::process::ChildStdout), vmm::VmError> {
        if let Some(ch) = &self.engines.ch {
            if ch.can_boot(&spec.boot) {
                match vmm::Vm::launch_cloud_hypervisor(ch, spec, &self.dir) {
                    Ok(found) => return Ok(found),
                    Err(e @ (vmm::VmError::Spec(_) | vmm::VmError::Io { .. })) => return Err(e),
                    Err(e) => {
                        tracing::warn!(contract = self.contract, vm = %self.vm.name, error = %error_chain(&e), "cloud-hypervisor did not start the VM: trying QEMU");
                    }
                }
            }
        }
        vmm::Vm::launch(&self.engines.qemu, spec, &self.dir)
    }

    pub(crate) async fn run(self, mut stop: watch::Receiver<bool>, first: oneshot::Sender<bool>) {
        let me = Arc::new(self);
        let mut first = Some(first);
        let mut delay = Duration::from_secs(1);
        loop {
            let began = tokio::time::Instant::now();
            let launched = {
                let me = me.clone();
                tokio::task::spawn_blocking(move || me.launch())
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r)
            };
            let ended: Ended = match launched {
                Ok((vm, console, attachment)) => {
                    if let Some(a) = &attachment {
                        crate::runtime::lock(&me.meter).plugged(me.contract, &a.veth);
                    }
                    let address = attachment.as_ref().map(|a| a.address.to_string());
                    tracing::info!(contract = me.contract, vm = %me.vm.name, pid = vm.pid(), address, hypervisor = vm.hypervisor(), accel = me.engines.accel.name(), "VM started");
                    me.set(DeploymentState::Running, None);
                    crate::runtime::lock(&me.status).address = address;
                    if let Some(f) = first.take() {
                        let _ = f.send(true);
                    }
                    let pump = tokio::spawn(crate::runtime::pump(
                        std::os::fd::OwnedFd::from(console),
                        me.log.clone(),
                    ));
                    let ended = me.watch(vm, &mut stop, attachment.clone()).await;
                    let _ = tokio::time::timeout(Duration::from_secs(2), pump).await;
                    me.unplug(attachment).await;
                    match ended {
                        Some(code) => Some(code),
                        None => return,
                    }
                }
                Err(why) => {
                    tracing::warn!(contract = me.contract, vm = %me.vm.name, why, "VM did not start");
                    me.set(DeploymentState::Failed, Some(why));
                    if let Some(f) = first.take() {
                        let _ = f.send(false);
                    }
                    if me.vm.restart == Restart::Never {
                        return;
                    }
                    None
                }
            };
            let again = match (ended, me.vm.restart) {
                (None, _) => true,
                (Some(_), Restart::Always) => true,
                (Some(code), Restart::OnFailure) => code != 0,
                (Some(_), Restart::Never) => false,
            };
            if let Some(code) = ended {
                let (state, how) = if code == 0 {
                    (DeploymentState::Exited, "the guest powered off".to_string())
                } else {
                    (
                        DeploymentState::Failed,
                        format!("QEMU ended with status {code}"),
                    )
                };
                let reason = match again {
                    true => format!("{how}; starting again in {} s", delay.as_secs()),
                    false => how,
                };
                tracing::info!(contract = me.contract, vm = %me.vm.name, reason, "VM ended");
                me.set(state, Some(reason));
            }
            if !again {
                let _ = stop.wait_for(|s| *s).await;
                return;
            }
            if began.elapsed() >= crate::runtime::HEALTHY_RUN {
                delay = Duration::from_secs(1);
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            delay = (delay * 2).min(crate::runtime::MAX_RESTART_DELAY);
        }
    }

    /// Waits for QEMU to end (its exit code; 128 + signal), or for a stop: then the power
    /// button, the kill after the grace period, and `None`.
    async fn watch(
        &self,
        mut vm: vmm::Vm,
        stop: &mut watch::Receiver<bool>,
        attachment: Option<Attachment>,
    ) -> Ended {
        let stopping = Arc::new(AtomicBool::new(false));
        let grace = self.stop_timeout;
        let flag = stopping.clone();
        let (net, meter) = (self.net.clone(), self.meter.clone());
        let mut waiter = tokio::task::spawn_blocking(move || loop {
            if flag.load(Ordering::Relaxed) {
                // QEMU's tap goes with QEMU: its count is read while it is still there.
                if let (Some(net), Some(a)) = (&net, &attachment) {
                    if let Ok(t) = net.traffic(a) {
                        crate::runtime::lock(&meter).seen(&a.veth, t.bytes());
                    }
                }
                let how = vm.shutdown(grace);
                return (None, Some(how));
            }
            if let Some(status) = vm.try_wait() {
                use std::os::unix::process::ExitStatusExt;
                let code = status
                    .code()
                    .unwrap_or_else(|| 128 + status.signal().unwrap_or(9));
                return (Some(code), None);
            }
            std::thread::sleep(Duration::from_millis(200));
        });
        let ended_first = tokio::select! {
            r = &mut waiter => Some(r),
            _ = stop.wait_for(|s| *s) => None,
        };
        let done = match ended_first {
            Some(r) => r,
            None => {
                stopping.store(true, Ordering::Relaxed);
                waiter.await
            }
        };
        match done {
            Ok((Some(code), _)) => Some(code),
            Ok((None, how)) => {
                tracing::info!(contract = self.contract, vm = %self.vm.name, how = ?how, "VM stopped");
                None
            }
            Err(e) => {
                tracing::error!(contract = self.contract, vm = %self.vm.name, error = %e, "VM watch failed");
                None
            }
        }
    }

    async fn unplug(&self, attachment: Option<Attachment>) {
        crate::runtime::unplug(&self.net, &self.meter, self.contract, attachment).await;
        crate::runtime::lock(&self.status).address = None;
    }
}

/// The cgroup limits of a VM: its vCPUs, its memory and QEMU's own.
pub fn limits(vm: &Vm) -> Limits {
    Limits {
        cores: vm.resources.cru,
        memory: vm.resources.mru.saturating_add(QEMU_OVERHEAD),
        pids: PIDS_PER_VM,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// An executable that answers `--version` as cloud-hypervisor does, at `root/rel`.
    fn fake_binary(root: &Path, rel: &str, answers: bool) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let body = if answers {
            "echo cloud-hypervisor v49.0"
        } else {
            "exit 3"
        };
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        // Another test thread forking while the file was open for writing keeps it busy
        // (ETXTBSY) until that child execs: wait for that here, not in the code under test.
        for _ in 0..100 {
            match std::process::Command::new(&p).output() {
                Err(e) if e.raw_os_error() == Some(26) => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                _ => break,
            }
        }
        p
    }

    #[test]
    fn cloud_hypervisor_is_chosen_only_under_kvm_when_allowed_and_it_runs() {
        let dir = tempfile::tempdir().unwrap();
        let ext = dir.path().join("ext");
        let bin = fake_binary(&ext, "usr/bin/cloud-hypervisor", true);
        let kvm = vmm::Accel::Kvm;
        let found = cloud_hypervisor(&ChChoice::Auto, Some(&ext), kvm).unwrap();
        assert_eq!(found.program(), bin);
        // No software emulation: under TCG, QEMU runs everything.
        assert!(cloud_hypervisor(&ChChoice::Auto, Some(&ext), vmm::Accel::Tcg).is_none());
        assert!(cloud_hypervisor(&ChChoice::Off, Some(&ext), kvm).is_none());
        let named = cloud_hypervisor(&ChChoice::At(bin.clone()), None, kvm).unwrap();
        assert_eq!(named.program(), bin);
        // A file that does not answer --version is not used.
        let broken = fake_binary(dir.path(), "broken/cloud-hypervisor", false);
        assert!(cloud_hypervisor(&ChChoice::At(broken), None, kvm).is_none());
        assert!(cloud_hypervisor(&ChChoice::At(dir.path().join("none")), None, kvm).is_none());
        assert_eq!("off".parse::<ChChoice>().unwrap(), ChChoice::Off);
        assert_eq!(
            "/opt/ch".parse::<ChChoice>().unwrap(),
            ChChoice::At("/opt/ch".into())
        );
    }

    fn boot_files(layers: &[PathBuf]) -> Result<(PathBuf, Option<PathBuf>), String> {
        match boot_source(layers)? {
            BootSource::Kernel { kernel, initrd } => Ok((kernel, initrd)),
            BootSource::Disk(d) => Err(format!("a disk: {}", d.display())),
        }
    }

    #[test]
    fn a_disk_image_boots_when_there_is_no_kernel() {
        let dir = tempfile::tempdir().unwrap();
        let (low, high) = (dir.path().join("l0"), dir.path().join("l1"));
        std::fs::create_dir_all(low.join("disk")).unwrap();
        std::fs::create_dir_all(high.join("disk")).unwrap();
        std::fs::write(low.join("disk/old.qcow2"), b"x").unwrap();
        std::fs::write(high.join("disk/notes.txt"), b"x").unwrap();
        let layers = [low.clone(), high.clone()];
        assert_eq!(
            boot_source(&layers).unwrap(),
            BootSource::Disk(low.join("disk/old.qcow2"))
        );
        // The lower image removed (anything but a file hides it, as a whiteout does) and a
        // new one added: the new one boots.
        std::fs::create_dir(high.join("disk/old.qcow2")).unwrap();
        std::fs::write(high.join("disk/new.img"), b"x").unwrap();
        assert_eq!(
            boot_source(&layers).unwrap(),
            BootSource::Disk(high.join("disk/new.img"))
        );
        // Images of two layers both show: two images.
        std::fs::remove_dir(high.join("disk/old.qcow2")).unwrap();
        let err = boot_source(&layers).unwrap_err();
        assert!(err.contains("2 disk images"), "{err}");
        std::fs::remove_file(high.join("disk/new.img")).unwrap();
        std::fs::write(high.join("disk/other.raw"), b"x").unwrap();
        std::fs::write(high.join("disk/third.img"), b"x").unwrap();
        std::fs::create_dir(high.join("disk/old.qcow2")).unwrap();
        let err = boot_source(&layers).unwrap_err();
        assert!(err.contains("2 disk images"), "{err}");
        // disk/ replaced by a file above hides every image below.
        let top = dir.path().join("l2");
        std::fs::create_dir_all(&top).unwrap();
        std::fs::write(top.join("disk"), b"").unwrap();
        let err = boot_source(&[low.clone(), top]).unwrap_err();
        assert!(err.contains("neither"), "{err}");
        // A kernel wins over disks.
        std::fs::create_dir_all(high.join("boot")).unwrap();
        std::fs::write(high.join("boot/vmlinuz"), b"k").unwrap();
        assert!(matches!(
            boot_source(&layers).unwrap(),
            BootSource::Kernel { .. }
        ));
        let err = boot_source(&[dir.path().join("none")]).unwrap_err();
        assert!(
            err.contains("boot/vmlinuz") && err.contains("disk/"),
            "{err}"
        );
    }

    #[test]
    fn a_root_disk_is_made_from_a_raw_image_once_and_never_half_made() {
        let dir = tempfile::tempdir().unwrap();
        let qemu = vmm::Qemu::host("/nonexistent/qemu-system-x86_64");
        let image = dir.path().join("disk.img");
        std::fs::write(&image, b"bootsector").unwrap();
        let root = dir.path().join("vmdisks/c1-a.img");
        let err = root_disk_from(&qemu, &image, &root, 4).unwrap_err();
        assert!(err.contains("reserve at least 10"), "{err}");
        assert!(!root.exists());
        root_disk_from(&qemu, &image, &root, 1 << 20).unwrap();
        let bytes = std::fs::read(&root).unwrap();
        assert_eq!(bytes.len(), 1 << 20);
        assert_eq!(&bytes[..10], b"bootsector");
        // Made once: the guest's writes stay, a new image does not overwrite them.
        std::fs::write(&root, b"guest data").unwrap();
        std::fs::write(&image, b"new image!").unwrap();
        root_disk_from(&qemu, &image, &root, 1 << 20).unwrap();
        assert_eq!(&std::fs::read(&root).unwrap()[..10], b"guest data");
        // A qcow2 naming a backing file on the node is refused before anything is made.
        let mut evil = vec![0u8; 104];
        evil[..4].copy_from_slice(b"QFI\xfb");
        evil[7] = 3;
        evil[15] = 200;
        evil[31] = 1;
        std::fs::write(&image, &evil).unwrap();
        let other = dir.path().join("vmdisks/c1-b.img");
        let err = root_disk_from(&qemu, &image, &other, 1 << 20).unwrap_err();
        assert!(err.contains("backing file"), "{err}");
        assert!(!other.exists() && !other.with_extension("part").exists());
    }

    #[test]
    fn boot_files_come_from_the_highest_layer_and_a_whiteout_hides_them() {
        let dir = tempfile::tempdir().unwrap();
        let (low, high) = (dir.path().join("l0"), dir.path().join("l1"));
        for l in [&low, &high] {
            std::fs::create_dir_all(l.join("boot")).unwrap();
        }
        std::fs::write(low.join("boot/vmlinuz"), b"old").unwrap();
        std::fs::write(low.join("boot/initrd.img"), b"i").unwrap();
        std::fs::write(high.join("boot/vmlinuz"), b"new").unwrap();
        let (k, i) = boot_files(&[low.clone(), high.clone()]).unwrap();
        assert_eq!(k, high.join("boot/vmlinuz"));
        assert_eq!(i, Some(low.join("boot/initrd.img")));
        // A directory where the initrd was hides the lower one.
        std::fs::create_dir_all(high.join("boot/initrd.img")).unwrap();
        assert_eq!(boot_files(&[low.clone(), high]).unwrap().1, None);
        let err = boot_files(&[dir.path().join("none")]).unwrap_err();
        assert!(err.contains("boot/vmlinuz"), "{err}");
    }

    #[test]
    fn a_root_disk_grows_and_never_shrinks() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("d/root.img");
        root_disk(&d, 1 << 20).unwrap();
        assert_eq!(std::fs::metadata(&d).unwrap().len(), 1 << 20);
        root_disk(&d, 2 << 20).unwrap();
        assert_eq!(std::fs::metadata(&d).unwrap().len(), 2 << 20);
        let err = root_disk(&d, 1 << 20).unwrap_err();
        assert!(err.contains("cannot shrink"), "{err}");
    }

    #[test]
    fn a_vm_keeps_its_mac_address_and_two_vms_differ() {
        assert_eq!(mac_of(7, "web"), mac_of(7, "web"));
        assert_ne!(mac_of(7, "web"), mac_of(7, "db"));
        assert_ne!(mac_of(7, "web"), mac_of(8, "web"));
        assert!(mac_of(7, "web").starts_with("52:54:00:"));
    }
}
