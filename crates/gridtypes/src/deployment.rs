//! What a twin asks a node to run: a deployment of named workloads under one contract.
//!
//! The registry never reads a deployment (it relays it sealed to the node); the node checks
//! it with [`Deployment::validate`] before provisioning anything, and the twin's `grid`
//! checks it before sealing, so a mistake is reported where it was made. Every workload
//! states what it reserves, and the sum must fit the contract.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::units::Resources;

/// Most workloads in one deployment.
pub const MAX_WORKLOADS: usize = 32;
/// Longest workload or volume name (a DNS label).
pub const MAX_NAME: usize = 63;
/// Longest image reference (registry, repository, tag and digest).
pub const MAX_IMAGE_REF: usize = 512;
/// Most arguments in an entrypoint or command.
pub const MAX_ARGS: usize = 64;
/// Most environment variables of one container.
pub const MAX_ENV: usize = 64;
/// Longest argument, environment value or mount path.
pub const MAX_VALUE: usize = 4096;
/// Most ports one container declares.
pub const MAX_PORTS: usize = 32;
/// Most mounts of one container.
pub const MAX_MOUNTS: usize = 16;
/// The smallest memory a container may reserve: less cannot start a process.
pub const MIN_CONTAINER_MRU: u64 = 16 << 20;
/// The smallest volume: 1 MiB.
pub const MIN_VOLUME: u64 = 1 << 20;
/// The smallest memory a VM may reserve: less boots no Linux kernel.
pub const MIN_VM_MRU: u64 = 64 << 20;
/// The most vCPUs one VM may have (what QEMU's q35 machine takes).
pub const MAX_VM_CRU: u64 = 255;
/// The longest extra kernel command line of a VM.
pub const MAX_VM_CMDLINE: usize = 1024;
/// Most SSH keys given to one VM.
pub const MAX_SSH_KEYS: usize = 16;
/// Most volumes one VM has attached as disks.
pub const MAX_VM_VOLUMES: usize = 8;
/// Longest SSH public key line (an RSA 16384 key is about 2.8 KB).
pub const MAX_SSH_KEY: usize = 4096;

/// Why a deployment was refused, naming the workload and the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeploymentError {
    /// A field is out of range or badly formed.
    #[error("{at}: {why}")]
    Invalid {
        /// Which workload and field, e.g. `workloads[web].image`.
        at: String,
        /// What is wrong and what is allowed.
        why: String,
    },
    /// The workloads together reserve more than the contract holds.
    #[error("the workloads reserve {wanted:?} but contract {contract} holds {holds:?}")]
    OverContract {
        /// The contract.
        contract: u64,
        /// What the workloads add up to.
        wanted: Resources,
        /// What the contract reserved on the node.
        holds: Resources,
    },
}

/// A twin's desired state for one contract. A newer `version` replaces an older one whole;
/// the node refuses a version it has already seen or passed. A version without workloads
/// tears down everything the contract ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deployment {
    /// The contract this runs under: it names the node, the twin and the capacity.
    pub contract_id: u64,
    /// Grows with every change the twin makes.
    pub version: u64,
    /// What runs, by unique name.
    pub workloads: Vec<Workload>,
}

/// One thing a deployment runs or keeps. Private networks come later as a new kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Workload {
    /// An OCI container.
    Container(Container),
    /// Persistent storage that containers mount.
    Volume(Volume),
    /// A virtual machine with its own kernel.
    Vm(Vm),
}

/// The kinds of workload, as a status names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkloadKind {
    /// An OCI container.
    Container,
    /// A volume.
    Volume,
    /// A virtual machine.
    Vm,
}

/// A virtual machine: its own kernel, booted from the files of an OCI image, on its twin's
/// network, with a root disk of the size it reserved (see docs/vms.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vm {
    /// Unique within the deployment; also the guest's host name.
    pub name: String,
    /// OCI image holding `boot/vmlinuz` and, optionally, `boot/initrd.img`.
    pub image: String,
    /// Added to the guest kernel's command line (after the console setting).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cmdline: String,
    /// vCPUs (`cru`), memory in bytes (`mru`, used in whole MiB) and the root disk in bytes
    /// (`sru`, an empty disk the guest sees as `/dev/vda`).
    pub resources: ContainerResources,
    /// OpenSSH public keys the guest gets through cloud-init.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_keys: Vec<String>,
    /// Names of [`Volume`]s of the same deployment attached as disks, in this order after
    /// the root disk (`/dev/vdb`, `/dev/vdc`, …). A volume attached to a VM is that VM's
    /// alone: no container mounts it and no other VM has it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<String>,
    /// What happens when the guest powers off or QEMU ends.
    #[serde(default)]
    pub restart: Restart,
}

/// An OpenSSH public key line: a known key type, base64 key material, an optional comment;
/// one line of printable ASCII (it goes into a cloud-init file).
pub fn ssh_key_ok(k: &str) -> bool {
    const TYPES: [&str; 6] = [
        "ssh-ed25519",
        "ssh-rsa",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
    ];
    let mut parts = k.splitn(3, ' ');
    let (Some(kind), Some(body)) = (parts.next(), parts.next()) else {
        return false;
    };
    k.len() <= MAX_SSH_KEY
        && k.bytes().all(|b| (0x20..0x7f).contains(&b))
        && TYPES.contains(&kind)
        && !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=')
}

/// An OCI container: an image, what to run in it, and what it reserves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Container {
    /// Unique within the deployment; also the container's host name.
    pub name: String,
    /// OCI image reference: `[registry[:port]/]repository[:tag][@sha256:<64 hex>]`.
    pub image: String,
    /// Replaces the image's entrypoint when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// Replaces the image's command when not empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cmd: Vec<String>,
    /// Added to the image's environment (same names are replaced).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Ports the container listens on, reachable from the twin's other workloads.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
    /// Volumes of this deployment mounted into the container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
    /// Cores (CPU time), memory and root-filesystem disk this container reserves.
    pub resources: ContainerResources,
    /// What happens when its process ends.
    #[serde(default)]
    pub restart: Restart,
}

/// What a container reserves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerResources {
    /// Logical cores: the cgroup's CPU time limit.
    pub cru: u64,
    /// Memory in bytes: the cgroup's memory limit.
    pub mru: u64,
    /// SSD bytes for the image and the writable layer.
    pub sru: u64,
}

/// A port a container listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Port {
    /// Port number inside the container.
    pub port: u16,
    /// Transport.
    #[serde(default)]
    pub protocol: Protocol,
}

/// Transport of a [`Port`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP (the default).
    #[default]
    Tcp,
    /// UDP.
    Udp,
}

/// A volume mounted into a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mount {
    /// Name of a [`Volume`] of the same deployment.
    pub volume: String,
    /// Absolute path inside the container.
    pub path: String,
    /// Mounted read-only.
    #[serde(default)]
    pub read_only: bool,
}

/// When a container's process is started again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Restart {
    /// Never: the workload ends as `failed` or stays `exited`.
    Never,
    /// When it exits with a non-zero status or a signal (the default).
    #[default]
    OnFailure,
    /// Whenever it exits.
    Always,
}

/// Persistent storage on one of the node's disks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Volume {
    /// Unique within the deployment; what mounts name.
    pub name: String,
    /// Size in bytes (the quota).
    pub size: u64,
    /// SSD (counted as SRU) or HDD (counted as HRU).
    #[serde(default)]
    pub disk: DiskKind,
}

/// Which kind of disk a volume lives on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskKind {
    /// Solid state (the default).
    #[default]
    Ssd,
    /// Spinning disk.
    Hdd,
}

impl Workload {
    /// The workload's name, unique within its deployment.
    pub fn name(&self) -> &str {
        match self {
            Workload::Container(c) => &c.name,
            Workload::Volume(v) => &v.name,
            Workload::Vm(v) => &v.name,
        }
    }

    /// The workload's kind, typed.
    pub fn kind_of(&self) -> WorkloadKind {
        match self {
            Workload::Container(_) => WorkloadKind::Container,
            Workload::Volume(_) => WorkloadKind::Volume,
            Workload::Vm(_) => WorkloadKind::Vm,
        }
    }

    /// The workload's kind as written on the wire.
    pub fn kind(&self) -> &'static str {
        match self {
            Workload::Container(_) => "container",
            Workload::Volume(_) => "volume",
            Workload::Vm(_) => "vm",
        }
    }

    /// What this workload takes from the node.
    pub fn reserved(&self) -> Resources {
        match self {
            Workload::Container(c) => Resources {
                cru: c.resources.cru,
                mru: c.resources.mru,
                sru: c.resources.sru,
                hru: 0,
                ipv4: 0,
            },
            Workload::Volume(v) => Resources {
                cru: 0,
                mru: 0,
                sru: if v.disk == DiskKind::Ssd { v.size } else { 0 },
                hru: if v.disk == DiskKind::Hdd { v.size } else { 0 },
                ipv4: 0,
            },
            Workload::Vm(v) => Resources {
                cru: v.resources.cru,
                mru: v.resources.mru,
                sru: v.resources.sru,
                hru: 0,
                ipv4: 0,
            },
        }
    }
}

impl Deployment {
    /// What all workloads take together (saturating: an absurd sum is refused, not wrapped).
    pub fn reserved(&self) -> Resources {
        self.workloads
            .iter()
            .map(Workload::reserved)
            .fold(Resources::default(), |a, r| a.saturating_add(&r))
    }

    /// Checks every field and the references between workloads.
    pub fn validate(&self) -> Result<(), DeploymentError> {
        if self.contract_id == 0 {
            return Err(invalid("contract_id", "must be a contract id (1 or more)"));
        }
        if self.version == 0 {
            return Err(invalid("version", "must be 1 or more"));
        }
        // No workloads is a version like any other: the twin removes everything the contract
        // ran (`grid deployments delete`) and keeps the contract.
        if self.workloads.len() > MAX_WORKLOADS {
            return Err(invalid(
                "workloads",
                format!(
                    "{} workloads: at most {MAX_WORKLOADS}",
                    self.workloads.len()
                ),
            ));
        }
        let mut names = BTreeSet::new();
        for (i, w) in self.workloads.iter().enumerate() {
            let at = format!("workloads[{i}].name");
            check_name(&at, w.name())?;
            if !names.insert(w.name()) {
                return Err(invalid(at, format!("{:?} is used twice", w.name())));
            }
        }
        let volumes: BTreeSet<&str> = self
            .workloads
            .iter()
            .filter_map(|w| match w {
                Workload::Volume(v) => Some(v.name.as_str()),
                Workload::Container(_) | Workload::Vm(_) => None,
            })
            .collect();
        for w in &self.workloads {
            match w {
                Workload::Container(c) => c.validate(&volumes)?,
                Workload::Volume(v) => v.validate()?,
                Workload::Vm(v) => v.validate(&volumes)?,
            }
        }
        // A VM's volume is a block device of that VM: a second user would corrupt it.
        let mut users: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for w in &self.workloads {
            let used: Vec<&str> = match w {
                Workload::Container(c) => c.mounts.iter().map(|m| m.volume.as_str()).collect(),
                Workload::Vm(v) => v.volumes.iter().map(String::as_str).collect(),
                Workload::Volume(_) => Vec::new(),
            };
            for v in used {
                users.entry(v).or_default().push(w.name());
            }
        }
        for w in &self.workloads {
            let Workload::Vm(vm) = w else { continue };
            for v in &vm.volumes {
                let others: Vec<&str> = users
                    .get(v.as_str())
                    .map(|u| u.iter().copied().filter(|n| *n != vm.name).collect())
                    .unwrap_or_default();
                if let Some(other) = others.first() {
                    return Err(invalid(
                        format!("workloads[{}].volumes", vm.name),
                        format!(
                            "{v:?} is also used by {other:?}: a volume attached to a VM is that VM's alone"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Checks the workloads fit the capacity the contract reserved.
    pub fn fits(&self, contract: &Resources) -> Result<(), DeploymentError> {
        let wanted = self.reserved();
        if wanted.exceeding(contract).is_empty() {
            Ok(())
        } else {
            Err(DeploymentError::OverContract {
                contract: self.contract_id,
                wanted,
                holds: *contract,
            })
        }
    }
}

impl Container {
    fn validate(&self, volumes: &BTreeSet<&str>) -> Result<(), DeploymentError> {
        let at = |field: &str| format!("workloads[{}].{field}", self.name);
        check_image(&at("image"), &self.image)?;
        if let Some(ep) = &self.entrypoint {
            if ep.is_empty() {
                return Err(invalid(
                    at("entrypoint"),
                    "empty: leave it out to use the image's",
                ));
            }
            check_args(&at("entrypoint"), ep)?;
        }
        check_args(&at("cmd"), &self.cmd)?;
        if self.env.len() > MAX_ENV {
            return Err(invalid(
                at("env"),
                format!("{} variables, at most {MAX_ENV}", self.env.len()),
            ));
        }
        for (k, v) in &self.env {
            let ok_name = !k.is_empty()
                && k.len() <= 256
                && !k.starts_with(|c: char| c.is_ascii_digit())
                && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !ok_name {
                return Err(invalid(
                    at("env"),
                    format!(
                        "{k:?} is not a variable name (A-Z a-z 0-9 _, not starting with a digit)"
                    ),
                ));
            }
            check_value(&at(&format!("env.{k}")), v)?;
        }
        if self.ports.len() > MAX_PORTS {
            return Err(invalid(at("ports"), format!("at most {MAX_PORTS} ports")));
        }
        let mut seen = BTreeSet::new();
        for p in &self.ports {
            if p.port == 0 {
                return Err(invalid(at("ports"), "port 0 is not a port"));
            }
            if !seen.insert(*p) {
                return Err(invalid(
                    at("ports"),
                    format!("{}/{:?} is listed twice", p.port, p.protocol),
                ));
            }
        }
        if self.mounts.len() > MAX_MOUNTS {
            return Err(invalid(
                at("mounts"),
                format!("at most {MAX_MOUNTS} mounts"),
            ));
        }
        let mut paths = BTreeSet::new();
        for m in &self.mounts {
            if !volumes.contains(m.volume.as_str()) {
                return Err(invalid(
                    at("mounts"),
                    format!("{:?} is not a volume of this deployment", m.volume),
                ));
            }
            check_mount_path(&at("mounts"), &m.path)?;
            if !paths.insert(m.path.as_str()) {
                return Err(invalid(
                    at("mounts"),
                    format!("{:?} is mounted twice", m.path),
                ));
            }
        }
        let r = &self.resources;
        if r.cru == 0 || r.cru > crate::units::MAX_CRU {
            return Err(invalid(at("resources.cru"), "between 1 and 65536 cores"));
        }
        if r.mru < MIN_CONTAINER_MRU || r.mru > crate::units::MAX_MRU {
            return Err(invalid(
                at("resources.mru"),
                format!("{} bytes: at least 16 MiB and at most 256 TiB", r.mru),
            ));
        }
        if r.sru == 0 || r.sru > crate::units::MAX_DISK {
            return Err(invalid(
                at("resources.sru"),
                "the image and its writable layer need SSD space (1 byte to 16 PiB)",
            ));
        }
        Ok(())
    }
}

impl Vm {
    fn validate(&self, volumes: &BTreeSet<&str>) -> Result<(), DeploymentError> {
        let at = |field: &str| format!("workloads[{}].{field}", self.name);
        check_image(&at("image"), &self.image)?;
        if self.volumes.len() > MAX_VM_VOLUMES {
            return Err(invalid(
                at("volumes"),
                format!("{} volumes, at most {MAX_VM_VOLUMES}", self.volumes.len()),
            ));
        }
        let mut seen = BTreeSet::new();
        for v in &self.volumes {
            if !volumes.contains(v.as_str()) {
                return Err(invalid(
                    at("volumes"),
                    format!("{v:?} is not a volume of this deployment"),
                ));
            }
            if !seen.insert(v) {
                return Err(invalid(at("volumes"), format!("{v:?} is attached twice")));
            }
        }
        if self.cmdline.len() > MAX_VM_CMDLINE
            || self.cmdline.bytes().any(|b| !(0x20..0x7f).contains(&b))
        {
            return Err(invalid(
                at("cmdline"),
                format!("at most {MAX_VM_CMDLINE} printable ASCII characters on one line"),
            ));
        }
        if self.ssh_keys.len() > MAX_SSH_KEYS {
            return Err(invalid(
                at("ssh_keys"),
                format!("{} keys, at most {MAX_SSH_KEYS}", self.ssh_keys.len()),
            ));
        }
        if let Some(k) = self.ssh_keys.iter().find(|k| !ssh_key_ok(k)) {
            let shown: String = k.chars().take(40).collect();
            return Err(invalid(
                at("ssh_keys"),
                format!("{shown:?}…: one line `TYPE BASE64 [COMMENT]` of an OpenSSH public key"),
            ));
        }
        let r = &self.resources;
        if r.cru == 0 || r.cru > MAX_VM_CRU {
            return Err(invalid(
                at("resources.cru"),
                format!("{} vCPUs: between 1 and {MAX_VM_CRU}", r.cru),
            ));
        }
        if r.mru < MIN_VM_MRU || r.mru > crate::units::MAX_MRU {
            return Err(invalid(
                at("resources.mru"),
                format!("{} bytes: at least 64 MiB and at most 256 TiB", r.mru),
            ));
        }
        if r.sru < MIN_VOLUME || r.sru > crate::units::MAX_DISK {
            return Err(invalid(
                at("resources.sru"),
                format!(
                    "{} bytes of root disk: at least 1 MiB and at most 16 PiB",
                    r.sru
                ),
            ));
        }
        Ok(())
    }
}

impl Volume {
    fn validate(&self) -> Result<(), DeploymentError> {
        if self.size < MIN_VOLUME || self.size > crate::units::MAX_DISK {
            return Err(invalid(
                format!("workloads[{}].size", self.name),
                format!("{} bytes: at least 1 MiB and at most 16 PiB", self.size),
            ));
        }
        Ok(())
    }
}

fn invalid(at: impl Into<String>, why: impl Into<String>) -> DeploymentError {
    DeploymentError::Invalid {
        at: at.into(),
        why: why.into(),
    }
}

/// Workload names are DNS labels: they become host names and directory names on the node.
fn check_name(at: &str, name: &str) -> Result<(), DeploymentError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            at,
            format!("{name:?}: 1 to {MAX_NAME} of a-z 0-9 -, not starting or ending with -"),
        ))
    }
}

fn check_value(at: &str, v: &str) -> Result<(), DeploymentError> {
    if v.len() > MAX_VALUE {
        return Err(invalid(
            at,
            format!("{} bytes, at most {MAX_VALUE}", v.len()),
        ));
    }
    if v.contains('\0') {
        return Err(invalid(at, "contains a NUL byte"));
    }
    Ok(())
}

fn check_args(at: &str, args: &[String]) -> Result<(), DeploymentError> {
    if args.len() > MAX_ARGS {
        return Err(invalid(
            at,
            format!("{} arguments, at most {MAX_ARGS}", args.len()),
        ));
    }
    args.iter().try_for_each(|a| check_value(at, a))
}

/// A mount target: absolute, normalised (no `.`/`..`/empty components), not `/` itself.
fn check_mount_path(at: &str, path: &str) -> Result<(), DeploymentError> {
    check_value(at, path)?;
    let normal = path.starts_with('/')
        && path.len() > 1
        && path[1..]
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..");
    if normal {
        Ok(())
    } else {
        Err(invalid(
            at,
            format!("{path:?}: an absolute path without . or .. components, not /"),
        ))
    }
}

/// An image reference taken apart (`[registry[:port]/]repository[:tag][@sha256:<64 hex>]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// `host[:port]`, when the reference names one.
    pub registry: Option<String>,
    /// Slash-separated components.
    pub repository: String,
    /// The tag, when given.
    pub tag: Option<String>,
    /// `sha256:<hex>`, when given.
    pub digest: Option<String>,
}

/// Checks that `image` is an image reference a registry client takes.
pub fn check_image(at: &str, image: &str) -> Result<(), DeploymentError> {
    parse_image(image)
        .map(|_| ())
        .map_err(|why| invalid(at, format!("{image:?} is not an image reference: {why}")))
}

/// Takes an image reference apart, or says what is wrong with it.
pub fn parse_image(image: &str) -> Result<ImageRef, &'static str> {
    if image.is_empty() || image.len() > MAX_IMAGE_REF {
        return Err("1 to 512 characters");
    }
    let (name_tag, digest) = match image.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (image, None),
    };
    if let Some(d) = digest {
        let hex = d.strip_prefix("sha256:").unwrap_or("");
        if hex.len() != 64
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err("a digest is sha256: and 64 lowercase hex digits");
        }
    }
    // A tag follows the last ':' that comes after the last '/' (a registry port comes before).
    let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name_tag[last_slash..].rfind(':') {
        Some(i) => (
            &name_tag[..last_slash + i],
            Some(&name_tag[last_slash + i + 1..]),
        ),
        None => (name_tag, None),
    };
    if let Some(t) = tag {
        let ok = !t.is_empty()
            && t.len() <= 128
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
            && !t.starts_with(['.', '-']);
        if !ok {
            return Err("a tag is 1 to 128 of A-Z a-z 0-9 _ . -, not starting with . or -");
        }
    }
    let mut parts: Vec<&str> = name.split('/').collect();
    let mut registry = None;
    // The first component is a registry host when it has a '.' or ':' or is localhost.
    if parts.len() > 1 && (parts[0].contains(['.', ':']) || parts[0] == "localhost") {
        let host = parts.remove(0);
        let (h, port) = match host.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host, None),
        };
        let host_ok = !h.is_empty()
            && h.split('.').all(|l| {
                !l.is_empty()
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            });
        let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
        if !host_ok || !port_ok {
            return Err("the registry host or port is malformed");
        }
        registry = Some(host.to_string());
    }
    let component_ok = |c: &str| {
        !c.is_empty()
            && c.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
            && c.as_bytes()[0].is_ascii_alphanumeric()
            && c.as_bytes()[c.len() - 1].is_ascii_alphanumeric()
    };
    if parts.is_empty() || !parts.iter().all(|c| component_ok(c)) {
        return Err(
            "repository components are lowercase a-z 0-9 . _ -, starting and ending alphanumeric",
        );
    }
    Ok(ImageRef {
        registry,
        repository: parts.join("/"),
        tag: tag.map(str::to_string),
        digest: digest.map(str::to_string),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn web() -> Container {
        Container {
            name: "web".into(),
            image: "127.0.0.1:5000/gridos/hello:1.0".into(),
            entrypoint: None,
            cmd: vec!["/hello".into(), "--port".into(), "80".into()],
            env: BTreeMap::from([("GREETING".to_string(), "hi".to_string())]),
            ports: vec![Port {
                port: 80,
                protocol: Protocol::Tcp,
            }],
            mounts: vec![Mount {
                volume: "data".into(),
                path: "/data".into(),
                read_only: false,
            }],
            resources: ContainerResources {
                cru: 1,
                mru: 256 << 20,
                sru: 1 << 30,
            },
            restart: Restart::OnFailure,
        }
    }

    fn deployment() -> Deployment {
        Deployment {
            contract_id: 7,
            version: 1,
            workloads: vec![
                Workload::Container(web()),
                Workload::Volume(Volume {
                    name: "data".into(),
                    size: 1 << 30,
                    disk: DiskKind::Hdd,
                }),
            ],
        }
    }

    fn refused(d: &Deployment) -> String {
        match d.validate() {
            Err(e) => e.to_string(),
            Ok(()) => panic!("accepted: {d:?}"),
        }
    }

    #[test]
    fn a_good_deployment_passes_and_adds_up() {
        let d = deployment();
        assert_eq!(d.validate(), Ok(()));
        let r = d.reserved();
        assert_eq!(
            (r.cru, r.mru, r.sru, r.hru),
            (1, 256 << 20, 1 << 30, 1 << 30)
        );
        let contract = Resources {
            cru: 1,
            mru: 256 << 20,
            sru: 2 << 30,
            hru: 1 << 30,
            ipv4: 0,
        };
        assert_eq!(d.fits(&contract), Ok(()));
        let small = Resources {
            mru: 128 << 20,
            ..contract
        };
        assert!(matches!(
            d.fits(&small),
            Err(DeploymentError::OverContract { contract: 7, .. })
        ));
    }

    #[test]
    fn the_wire_form_is_strict_and_round_trips() {
        let d = deployment();
        let text = serde_json::to_string(&d).unwrap_or_default();
        let back: Deployment = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, d);
        let extra = text.replacen("\"image\"", "\"privileged\":true,\"image\"", 1);
        assert!(serde_json::from_str::<Deployment>(&extra).is_err());
        let vm = text.replacen("\"kind\":\"volume\"", "\"kind\":\"vm\"", 1);
        assert!(serde_json::from_str::<Deployment>(&vm).is_err());
    }

    #[test]
    fn bad_fields_are_named() {
        let mut d = deployment();
        d.workloads.push(Workload::Container(web()));
        assert!(refused(&d).contains("used twice"));

        let with = |f: &dyn Fn(&mut Container)| {
            let mut d = deployment();
            if let Workload::Container(c) = &mut d.workloads[0] {
                f(c);
            }
            refused(&d)
        };
        assert!(with(&|c| c.name = "Web".into()).contains("workloads[0].name"));
        assert!(with(&|c| c.name = "-web".into()).contains("name"));
        assert!(with(&|c| c.image = "Hello".into()).contains("workloads[web].image"));
        assert!(with(&|c| c.image = "hello@sha256:abc".into()).contains("digest"));
        assert!(with(&|c| c.image = "hello:".into()).contains("tag"));
        assert!(with(&|c| c.image = "host:0/hello".into()).contains("port"));
        assert!(
            with(&|c| c.env.insert("1X".into(), "v".into()).map_or((), |_| ())).contains("env")
        );
        assert!(
            with(&|c| c.env.insert("A".into(), "a\0b".into()).map_or((), |_| ())).contains("NUL")
        );
        assert!(with(&|c| c.cmd = vec!["x".into(); MAX_ARGS + 1]).contains("cmd"));
        assert!(with(&|c| c.entrypoint = Some(vec![])).contains("entrypoint"));
        assert!(with(&|c| c.ports.push(Port {
            port: 0,
            protocol: Protocol::Udp
        }))
        .contains("port 0"));
        assert!(with(&|c| c.ports.push(c.ports[0])).contains("twice"));
        assert!(with(&|c| c.mounts[0].volume = "nope".into()).contains("not a volume"));
        assert!(with(&|c| c.mounts[0].path = "/data/../etc".into()).contains("mounts"));
        assert!(with(&|c| c.mounts[0].path = "data".into()).contains("mounts"));
        assert!(with(&|c| c.mounts[0].path = "/".into()).contains("mounts"));
        assert!(with(&|c| c.resources.cru = 0).contains("resources.cru"));
        assert!(with(&|c| c.resources.mru = 1 << 20).contains("resources.mru"));
        assert!(with(&|c| c.resources.sru = 0).contains("resources.sru"));

        // Empty is the twin's removal of everything; too many is refused.
        let mut d = deployment();
        d.workloads.clear();
        assert_eq!(d.validate(), Ok(()));
        let w = deployment().workloads[0].clone();
        d.workloads = (0..=MAX_WORKLOADS)
            .map(|i| {
                let mut w = w.clone();
                if let Workload::Container(c) = &mut w {
                    c.name = format!("c{i}");
                }
                w
            })
            .collect();
        assert!(refused(&d).contains("workloads"));
        let mut d = deployment();
        d.version = 0;
        assert!(refused(&d).contains("version"));
        let mut d = deployment();
        if let Workload::Volume(v) = &mut d.workloads[1] {
            v.size = 4096;
        }
        assert!(refused(&d).contains("workloads[data].size"));
    }

    fn a_vm() -> Vm {
        Vm {
            name: "box".into(),
            image: "127.0.0.1:5000/gridos/vm:1".into(),
            cmdline: "quiet".into(),
            resources: ContainerResources {
                cru: 2,
                mru: 1 << 30,
                sru: 10 << 30,
            },
            ssh_keys: vec![
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBx0dN0wJ8m4vD8pd0t3cLZfmhvbZlmB0wV2fQmBdpzC me"
                    .into(),
            ],
            volumes: vec![],
            restart: Restart::OnFailure,
        }
    }

    #[test]
    fn a_vm_volume_is_the_vms_alone() {
        let vol = |name: &str| {
            Workload::Volume(Volume {
                name: name.into(),
                size: 1 << 30,
                disk: DiskKind::Hdd,
            })
        };
        let vm = |volumes: &[&str]| {
            let mut v = a_vm();
            v.volumes = volumes.iter().map(|s| s.to_string()).collect();
            v
        };
        let d = |workloads: Vec<Workload>| Deployment {
            contract_id: 1,
            version: 1,
            workloads,
        };
        let ok = d(vec![
            vol("data"),
            vol("logs"),
            Workload::Vm(vm(&["data", "logs"])),
        ]);
        ok.validate().unwrap();
        let r = ok.reserved();
        assert_eq!(
            (r.sru, r.hru),
            (10 << 30, 2 << 30),
            "each counted once, as a volume"
        );
        let json = serde_json::to_string(&ok).unwrap();
        assert!(json.contains(r#""volumes":["data","logs"]"#), "{json}");
        // Without volumes the field is left out: a VM without any encodes as before.
        assert!(!serde_json::to_string(&a_vm()).unwrap().contains("volumes"));

        let e = refused(&d(vec![Workload::Vm(vm(&["nope"]))]));
        assert!(
            e.contains("workloads[box].volumes") && e.contains("not a volume"),
            "{e}"
        );
        let e = refused(&d(vec![vol("data"), Workload::Vm(vm(&["data", "data"]))]));
        assert!(e.contains("attached twice"), "{e}");
        let many: Vec<String> = (0..9).map(|i| format!("v{i}")).collect();
        let mut w: Vec<Workload> = many.iter().map(|n| vol(n)).collect();
        w.push(Workload::Vm(vm(&many
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>())));
        assert!(refused(&d(w)).contains("at most 8"));
        let mut other = vm(&["data"]);
        other.name = "other".into();
        let e = refused(&d(vec![
            vol("data"),
            Workload::Vm(vm(&["data"])),
            Workload::Vm(other),
        ]));
        assert!(
            e.contains("also used by") && e.contains("VM's alone"),
            "{e}"
        );
        // web() mounts "data".
        let c = web();
        let e = refused(&d(vec![
            vol("data"),
            Workload::Vm(vm(&["data"])),
            Workload::Container(c),
        ]));
        assert!(e.contains("also used by"), "{e}");
    }

    #[test]
    fn a_vm_reserves_its_vcpus_memory_and_root_disk_and_must_fit() {
        let d = Deployment {
            contract_id: 1,
            version: 1,
            workloads: vec![Workload::Vm(a_vm())],
        };
        d.validate().unwrap();
        let r = d.reserved();
        assert_eq!((r.cru, r.mru, r.sru, r.hru), (2, 1 << 30, 10 << 30, 0));
        let small = Resources {
            cru: 1,
            mru: 2 << 30,
            sru: 20 << 30,
            hru: 0,
            ipv4: 0,
        };
        assert!(matches!(
            d.fits(&small),
            Err(DeploymentError::OverContract { .. })
        ));
        let json = serde_json::to_string(&d).unwrap();
        assert!(json.contains("\"kind\":\"vm\""), "{json}");
        assert_eq!(serde_json::from_str::<Deployment>(&json).unwrap(), d);
    }

    #[test]
    fn hostile_vm_fields_are_refused_with_the_field() {
        type Change = Box<dyn Fn(&mut Vm)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|v| v.resources.cru = 0), "resources.cru"),
            (Box::new(|v| v.resources.cru = 256), "resources.cru"),
            (Box::new(|v| v.resources.mru = 63 << 20), "resources.mru"),
            (Box::new(|v| v.resources.mru = u64::MAX), "resources.mru"),
            (Box::new(|v| v.resources.sru = 0), "resources.sru"),
            (Box::new(|v| v.cmdline = "a\nb".into()), "cmdline"),
            (Box::new(|v| v.cmdline = "x".repeat(1025)), "cmdline"),
            (Box::new(|v| v.image = String::new()), "image"),
            (
                Box::new(|v| v.ssh_keys = vec!["ssh-ed25519 AAAA me\nruncmd: [reboot]".into()]),
                "ssh_keys",
            ),
            (
                Box::new(|v| v.ssh_keys = vec!["ssh-dss AAAA me".into()]),
                "ssh_keys",
            ),
            (
                Box::new(|v| v.ssh_keys = vec![v.ssh_keys[0].clone(); 17]),
                "ssh_keys",
            ),
        ];
        for (change, field) in cases {
            let mut v = a_vm();
            change(&mut v);
            let d = Deployment {
                contract_id: 1,
                version: 1,
                workloads: vec![Workload::Vm(v)],
            };
            let e = refused(&d);
            assert!(e.contains(field), "{e} should name {field}");
        }
    }

    #[test]
    fn image_references() {
        for ok in [
            "hello",
            "hello:1.0",
            "library/hello",
            "127.0.0.1:5000/gridos/hello:v1",
            "localhost/a/b/c",
            "registry.example/x_y.z-w:Tag_1",
            "hello@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "h:1@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            assert_eq!(check_image("i", ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "UPPER",
            "a//b",
            "/a",
            "a/",
            "a:-x",
            "a:.x",
            "-a",
            "a@sha256:ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef0123456789",
            "a@md5:00",
            "host:70000/a",
            "bad_host.x:1/a",
            "a b",
        ] {
            assert!(check_image("i", bad).is_err(), "{bad}");
        }
        assert!(check_image("i", &"a".repeat(MAX_IMAGE_REF + 1)).is_err());
    }
}
