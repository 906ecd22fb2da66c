//! The machine shapes the end-to-end test boots: CPU models, vCPU counts and disk sets a
//! farmer's machines come in. Each shape registers with its own registry and is checked for
//! the capacity QEMU gave it and for where the cache went.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use gridapi::{paths, NodeView};

use crate::e2e::{
    close, deploy, expected_units, new_twin, registered, rent, rent_hdd, small_container,
    until_shown, workload, E2eArgs, GIB, OS_RESERVE,
};
use crate::qemu::{self, Bus, Disk, Firmware, Guest, Machine, Medium, HDD_BYTES, SSD_BYTES};
use crate::registry::{self, Registry};

/// A disk of a shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskKind {
    /// `rotation_rate=1`: non-rotational, [`SSD_BYTES`].
    Ssd,
    /// `rotation_rate=7200`: rotational, [`HDD_BYTES`].
    Hdd,
}

impl DiskKind {
    fn disk(self, work: &Path, name: &str) -> Disk {
        let (size, rotation_rate) = match self {
            DiskKind::Ssd => (SSD_BYTES, 1),
            DiskKind::Hdd => (HDD_BYTES, 7200),
        };
        Disk {
            path: work.join(format!("{name}.img")),
            size,
            rotation_rate,
        }
    }
}

/// One machine shape.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Name, also the work sub-folder.
    pub name: &'static str,
    /// QEMU `-cpu`: `qemu64` (QEMU's default, no RDRAND) or `max`.
    pub cpu: &'static str,
    /// vCPUs.
    pub cpus: u32,
    /// Guest memory.
    pub memory_mib: u64,
    /// Disks present at boot.
    pub disks: &'static [DiskKind],
    /// A disk plugged in once the node has registered.
    pub hot_add: Option<DiskKind>,
    /// The full scenario (reboot on the same disks, registry outage) instead of boot + checks.
    pub full: bool,
    /// A twin also runs a container here ([`probe_container`]; the full scenario runs many).
    pub containers: bool,
    /// A twin also runs a VM here, kept across a reboot of the node ([`probe_vm`]).
    pub vm: bool,
    /// Firmware, boot medium, disk controller and network card.
    pub boot: Boot,
    /// What else a boot-matrix cell proves about its medium.
    pub trial: Trial,
}

/// A boot-matrix cell's extra trial (docs/boot-media.md, "Boot matrix").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trial {
    /// Boot and register.
    None,
    /// The USB image is built for one farm, then its `gridos.cfg` is edited with mtools (no
    /// mount, as on a farmer's laptop) to name another, which the node must register into.
    CfgFarm,
    /// As `CfgFarm`, but the farm named does not exist yet: the node must say so on the
    /// console, and register once the farmer creates it.
    CfgFarmCreatedLater,
    /// A stick and no disk, `gridos.cache_on_stick=yes` in its `gridos.cfg`: the cache goes
    /// in the stick's free space, and the stick is still not sold.
    CacheOnStick,
    /// The first boot gets a damaged initramfs (bytes flipped near its end, as a broken
    /// download leaves it): the console must say so and the node must reboot, not hang; the
    /// second boot gets the good one and registers.
    DamagedInitramfs,
}

/// What a shape boots from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootMedium {
    /// QEMU's `-kernel` (no firmware boot path).
    Kernel,
    /// The firmware's iPXE, the network-boot folder (`grid image build --format pxe`) over
    /// TFTP.
    Pxe,
    /// The firmware's iPXE, the registry's `/boot/{farm}/ipxe` over HTTP.
    PxeHttp,
    /// The USB image (`--format usb`) as a USB stick.
    Usb,
    /// The ISO (`--format iso`) in a CD-ROM drive.
    Iso,
    /// The ISO written raw to a USB stick.
    IsoOnUsb,
}

/// How a shape boots (docs/boot-media.md, "Boot matrix").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Boot {
    /// The firmware.
    pub firmware: Firmware,
    /// The boot medium.
    pub medium: BootMedium,
    /// Where the disks are.
    pub bus: Bus,
    /// The network card's QEMU device.
    pub nic: &'static str,
}

impl Boot {
    /// QEMU's `-kernel`, disks on virtio-scsi, virtio-net: the machine shapes' boot.
    pub const KERNEL: Boot = Boot {
        firmware: Firmware::SeaBios,
        medium: BootMedium::Kernel,
        bus: Bus::VirtioScsi,
        nic: VIRTIO_NET,
    };

    const fn cell(firmware: Firmware, medium: BootMedium, bus: Bus, nic: &'static str) -> Boot {
        Boot {
            firmware,
            medium,
            bus,
            nic,
        }
    }
}

const VIRTIO_NET: &str = "virtio-net-pci";
const E1000: &str = "e1000";

/// A boot-matrix cell: 1 vCPU (`qemu64`), 1 GiB and one disk.
const fn cell(name: &'static str, disk: &'static [DiskKind], boot: Boot, trial: Trial) -> Shape {
    Shape {
        name,
        cpu: "qemu64",
        cpus: 1,
        memory_mib: 1024,
        disks: disk,
        hot_add: None,
        full: false,
        containers: false,
        vm: false,
        boot,
        trial,
    }
}

/// The fixed list (docs/lab.md). Every CPU model, vCPU count and disk set of issue 10 appears
/// at least once; memory is 1 GiB except where the full scenario runs.
pub const SHAPES: &[Shape] = &[
    Shape {
        name: "max-2cpu-ssd-hdd",
        cpu: "max",
        cpus: 2,
        memory_mib: 2048,
        disks: &[DiskKind::Ssd, DiskKind::Hdd],
        hot_add: None,
        full: true,
        containers: true,
        vm: false,
        boot: Boot::KERNEL,
        trial: Trial::None,
    },
    Shape {
        name: "qemu64-1cpu-ssd",
        cpu: "qemu64",
        cpus: 1,
        memory_mib: 1024,
        disks: &[DiskKind::Ssd],
        hot_add: None,
        full: false,
        containers: true,
        vm: false,
        boot: Boot::KERNEL,
        trial: Trial::None,
    },
    Shape {
        name: "qemu64-4cpu-hdd",
        cpu: "qemu64",
        cpus: 4,
        memory_mib: 1024,
        disks: &[DiskKind::Hdd],
        hot_add: None,
        full: false,
        // No SSD, no SRU: a container's root disk is SRU, so the registry refuses the contract.
        containers: false,
        vm: false,
        boot: Boot::KERNEL,
        trial: Trial::None,
    },
    Shape {
        name: "qemu64-2cpu-hdd-ssd",
        cpu: "qemu64",
        cpus: 2,
        memory_mib: 1024,
        // The HDD enumerates first: the cache must still go to the SSD.
        disks: &[DiskKind::Hdd, DiskKind::Ssd],
        hot_add: None,
        full: false,
        containers: true,
        vm: true,
        boot: Boot::KERNEL,
        trial: Trial::None,
    },
    Shape {
        name: "max-1cpu-nodisk",
        cpu: "max",
        cpus: 1,
        memory_mib: 1024,
        disks: &[],
        hot_add: None,
        full: false,
        containers: false,
        vm: false,
        boot: Boot::KERNEL,
        trial: Trial::None,
    },
    Shape {
        name: "qemu64-2cpu-hotadd-ssd",
        cpu: "qemu64",
        cpus: 2,
        memory_mib: 1024,
        disks: &[],
        hot_add: Some(DiskKind::Ssd),
        full: false,
        containers: false,
        vm: false,
        boot: Boot::KERNEL,
        trial: Trial::None,
    },
    // The boot matrix (docs/boot-media.md): every firmware, medium, disk controller and
    // network card at least once. virtio-blk disks are rotational to the guest (HDD), NVMe
    // disks are not (SSD).
    cell(
        "pxe-seabios-scsi-e1000-damaged",
        &[DiskKind::Ssd],
        Boot::cell(Firmware::SeaBios, BootMedium::Pxe, Bus::VirtioScsi, E1000),
        Trial::DamagedInitramfs,
    ),
    cell(
        "pxehttp-ovmf-blk-virtio",
        &[DiskKind::Hdd],
        Boot::cell(
            Firmware::Ovmf,
            BootMedium::PxeHttp,
            Bus::VirtioBlk,
            VIRTIO_NET,
        ),
        Trial::None,
    ),
    cell(
        "usb-seabios-ahci-virtio-newfarm",
        &[DiskKind::Ssd],
        Boot::cell(Firmware::SeaBios, BootMedium::Usb, Bus::Ahci, VIRTIO_NET),
        Trial::CfgFarmCreatedLater,
    ),
    cell(
        "usb-ovmf-nvme-e1000-cfg",
        &[DiskKind::Ssd],
        Boot::cell(Firmware::Ovmf, BootMedium::Usb, Bus::Nvme, E1000),
        Trial::CfgFarm,
    ),
    cell(
        "usb-ovmf-nodisk-e1000-stickcache",
        &[],
        Boot::cell(Firmware::Ovmf, BootMedium::Usb, Bus::VirtioScsi, E1000),
        Trial::CacheOnStick,
    ),
    cell(
        "iso-ovmf-blk-virtio",
        &[DiskKind::Hdd],
        Boot::cell(Firmware::Ovmf, BootMedium::Iso, Bus::VirtioBlk, VIRTIO_NET),
        Trial::None,
    ),
    cell(
        "iso-seabios-nvme-e1000",
        &[DiskKind::Ssd],
        Boot::cell(Firmware::SeaBios, BootMedium::Iso, Bus::Nvme, E1000),
        Trial::None,
    ),
    cell(
        "isousb-seabios-scsi-virtio",
        &[DiskKind::Ssd],
        Boot::cell(
            Firmware::SeaBios,
            BootMedium::IsoOnUsb,
            Bus::VirtioScsi,
            VIRTIO_NET,
        ),
        Trial::None,
    ),
];

/// What one shape measured, for the summary and BENCHMARKS.md.
#[derive(Debug, Clone)]
pub struct Timing {
    /// Guest clock, PID 1 start → "registered".
    pub registered_s: f64,
    /// Storage's wait for the devices to settle.
    pub settle_ms: Option<u64>,
    /// How long the entropy service waited for the kernel's CRNG (0 with RDRAND).
    pub crng_s: Option<f64>,
    /// Wall clock from QEMU's start to the kernel's (firmware and boot loader), for shapes
    /// that boot through their firmware.
    pub firmware_s: Option<f64>,
    /// Guest clock from the kernel's start to PID 1's.
    pub pid1_s: Option<f64>,
}

impl Shape {
    /// The QEMU machine of this shape in `work`.
    pub fn machine(&self, image: &Path, accel: &str, work: &Path, append: String) -> Machine {
        let mut m = Machine::node(image, accel, work, append, "console-boot1.log");
        m.cpu_model = self.cpu.into();
        m.nic = self.boot.nic;
        m.firmware = self.boot.firmware;
        m.bus = self.boot.bus;
        m.medium = match self.boot.medium {
            BootMedium::Kernel => Medium::Kernel,
            BootMedium::Pxe => Medium::Netboot(work.join("pxe")),
            // The farm is known once the registry runs: check() sets the URL.
            BootMedium::PxeHttp => Medium::NetbootHttp(String::new()),
            BootMedium::Usb => Medium::Usb(work.join("node.img")),
            BootMedium::Iso => Medium::Cdrom(work.join("node.iso")),
            BootMedium::IsoOnUsb => Medium::Usb(work.join("node.iso")),
        };
        m.cpus = self.cpus;
        m.memory_mib = self.memory_mib;
        m.disks = self
            .disks
            .iter()
            .enumerate()
            .map(|(i, k)| k.disk(work, &format!("disk{i}")))
            .collect();
        m
    }

    /// Bytes of SSD and HDD the node must sell once every disk (hot-added too) is in.
    fn expected_disks(&self) -> (u64, u64) {
        let all = self.disks.iter().chain(self.hot_add.as_ref());
        let sum = |k| all.clone().filter(|d| **d == k).count() as u64;
        (
            sum(DiskKind::Ssd) * SSD_BYTES,
            sum(DiskKind::Hdd) * HDD_BYTES,
        )
    }

    /// Where the cache must be: the SSD if there is one, else the HDD, else tmpfs.
    fn expected_cache(&self, disks: &[DiskKind]) -> Option<DiskKind> {
        if disks.contains(&DiskKind::Ssd) {
            Some(DiskKind::Ssd)
        } else if disks.contains(&DiskKind::Hdd) {
            Some(DiskKind::Hdd)
        } else {
            None
        }
    }
}

/// The `key=value` after `key=` in a log line (quotes removed).
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let rest = line.split(&format!(" {key}=")).nth(1)?;
    let v = rest.split_whitespace().next()?;
    Some(v.trim_matches('"'))
}

/// Checks the console's "cache placed" line (or the tmpfs error) against `want`.
pub async fn check_cache(guest: &mut Guest, want: Option<DiskKind>) -> anyhow::Result<String> {
    match want {
        None => {
            let l = guest
                .wait_line(&["NO CACHE DISK"], Duration::from_secs(5))
                .await
                .context("no disk, yet storage did not say the cache is on tmpfs")?;
            ensure!(!l.is_empty());
            Ok("tmpfs".into())
        }
        Some(kind) => {
            let l = guest
                .wait_line(&["cache placed", "disk="], Duration::from_secs(120))
                .await?;
            let (want_kind, want_size) = match kind {
                DiskKind::Ssd => ("Ssd", SSD_BYTES),
                DiskKind::Hdd => ("Hdd", HDD_BYTES),
            };
            let got_kind = field(&l, "kind").unwrap_or("");
            let got_size: u64 = field(&l, "size").and_then(|s| s.parse().ok()).unwrap_or(0);
            ensure!(
                got_kind == want_kind && got_size == want_size,
                "cache on a {got_kind} of {got_size} bytes, want the {want_kind} of {want_size} bytes: {l}"
            );
            Ok(format!(
                "{} {}",
                want_kind.to_uppercase(),
                field(&l, "disk").unwrap_or("?")
            ))
        }
    }
}

/// A node's registered capacity, once [`check_capacity`] found it as QEMU made it.
#[derive(Debug)]
pub struct Capacity {
    /// The node as the registry shows it.
    pub node: NodeView,
    /// Cores.
    pub cru: u64,
    /// Memory, bytes.
    pub mru: u64,
    /// SSD, bytes.
    pub sru: u64,
    /// HDD, bytes.
    pub hru: u64,
    /// Farming CU the registry computed (equal to the formula).
    pub cu: f64,
    /// Farming SU the registry computed (equal to the formula).
    pub su: f64,
}

impl std::fmt::Display for Capacity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CRU {}, MRU {:.2} GiB, SRU {} B, HRU {} B",
            self.cru,
            self.mru as f64 / GIB as f64,
            self.sru,
            self.hru
        )
    }
}

/// Asserts the registered capacity of node `id`: CRU, MRU, SRU, HRU, the serial and the units.
pub async fn check_capacity(
    reg: &Registry,
    id: i64,
    cpus: u32,
    memory_mib: u64,
    sru_want: u64,
    hru_want: u64,
) -> anyhow::Result<Capacity> {
    let node: NodeView = reg.get(&paths::node(id as u64)).await?;
    let cap = node.capacity;
    let (cru, mru, sru, hru) = (cap.cru, cap.mru, cap.sru, cap.hru);
    let given_mem = memory_mib << 20;
    ensure!(cru == u64::from(cpus), "CRU {cru}, QEMU gave {cpus}");
    ensure!(
        mru <= given_mem && given_mem - mru < OS_RESERVE,
        "MRU {mru} bytes: QEMU gave {given_mem}, the OS reserve is {OS_RESERVE}"
    );
    ensure!(sru == sru_want, "SRU {sru} bytes, want {sru_want}");
    ensure!(hru == hru_want, "HRU {hru} bytes, want {hru_want}");
    // Root-only in sysfs: the unprivileged agent reads it only through init's `readable:` grant.
    ensure!(
        node.serial.as_deref() == Some(qemu::DMI_SERIAL),
        "serial {:?} in the registry, QEMU's DMI table says {}",
        node.serial,
        qemu::DMI_SERIAL
    );
    let (cu, su) = expected_units(cru, mru, sru, hru);
    let (got_cu, got_su) = (node.units.cu, node.units.su);
    ensure!(close(got_cu, cu), "CU {got_cu}, the formula gives {cu}");
    ensure!(close(got_su, su), "SU {got_su}, the formula gives {su}");
    Ok(Capacity {
        node,
        cru,
        mru,
        sru,
        hru,
        cu: got_cu,
        su: got_su,
    })
}

/// Guest-clock timings of the boot in `console`.
pub fn timing(console: &Path, registered_s: f64) -> Timing {
    let text = std::fs::read_to_string(console).unwrap_or_default();
    let line = |needle: &str| text.lines().find(|l| l.contains(needle));
    let settle_ms = line("devices settled").and_then(|l| field(l, "waited_ms")?.parse().ok());
    let crng_s = line("kernel CRNG ready").and_then(|l| field(l, "waited_s")?.parse().ok());
    let pid1_s = line("gridos init started as PID 1").and_then(qemu::boot_clock);
    Timing {
        registered_s,
        settle_ms,
        crng_s,
        firmware_s: None,
        pid1_s,
    }
}

/// Makes the shape's boot medium from the image with `bootmedia`, as `grid image build
/// --format …` does, with the lab's settings baked in. For a cell that edits `gridos.cfg`,
/// rewrites the file on the stick's FAT partition with mtools to name a second farm, and
/// returns that farm: the node must register there, not in `farm`.
fn prepare_medium(
    args: &E2eArgs,
    shape: &Shape,
    machine: &Machine,
    reg: &Registry,
    farm: u64,
    work: &Path,
) -> anyhow::Result<Option<u64>> {
    let say = |m: String| eprintln!("e2e[{}]: {m}", shape.name);
    let opts = bootmedia::Options {
        append: machine.lab_args(),
        ..bootmedia::Options::default()
    };
    let t0 = Instant::now();
    let built = match &machine.medium {
        Medium::Kernel => return Ok(None),
        Medium::NetbootHttp(url) => {
            say(format!("iPXE script, kernel and initramfs from {url}"));
            return Ok(None);
        }
        Medium::Netboot(dir) => {
            let p = bootmedia::pxe::write(&args.image, dir, &machine.lab_args())?;
            say(format!(
                "network-boot folder {} ({} + {} bytes)",
                dir.display(),
                p.kernel_bytes,
                p.initramfs_bytes
            ));
            return Ok(None);
        }
        Medium::Usb(path) | Medium::Cdrom(path) => match shape.boot.medium {
            BootMedium::Iso | BootMedium::IsoOnUsb => {
                bootmedia::iso::write(&args.image, path, &opts)?
            }
            _ => bootmedia::usb::write(&args.image, path, &opts)?,
        },
    };
    say(format!(
        "{} made in {:.1} s: {} bytes",
        built.path.display(),
        t0.elapsed().as_secs_f64(),
        built.bytes
    ));
    let other = match shape.trial {
        Trial::CfgFarm => {
            let other = registry::setup_farm(
                &args.bin_dir,
                &reg.url(),
                &work.join("farmer.key"),
                &format!("{}-from-cfg", shape.name),
            )?;
            ensure!(other != farm, "the second farm is the first");
            other
        }
        // Farm ids are given in order: the next farm created gets this one.
        Trial::CfgFarmCreatedLater => farm + 1,
        Trial::CacheOnStick => {
            // A 1 GiB stick: the image, then free space.
            std::fs::OpenOptions::new()
                .write(true)
                .open(&built.path)?
                .set_len(1 << 30)?;
            let text =
                bootmedia::usb::config_text(&built.cmdline) + "gridos.cache_on_stick=yes\r\n";
            write_cfg(&built.path, work, &text)?;
            say("gridos.cfg on the stick edited with mcopy: gridos.cache_on_stick=yes".into());
            return Ok(None);
        }
        Trial::None | Trial::DamagedInitramfs => return Ok(None),
    };
    let text = bootmedia::usb::config_text(&built.cmdline)
        .replace(&format!("gridos.farm={farm}\r\n"), "")
        + &format!("# moved to farm {other} on a laptop\r\ngridos.farm={other}\r\n");
    write_cfg(&built.path, work, &text)?;
    say(format!(
        "gridos.cfg on the stick edited with mcopy: farm {farm} (built in) → {other}"
    ));
    Ok(Some(other))
}

/// Replaces `gridos.cfg` on the stick image's FAT partition with mtools, as a farmer's laptop
/// would (no mount).
fn write_cfg(image: &Path, work: &Path, text: &str) -> anyhow::Result<()> {
    let file = work.join("gridos.cfg");
    std::fs::write(&file, text)?;
    // The boot partition starts 1 MiB into the image (bootmedia::usb); mtools' `@@` offset.
    let partition = format!("{}@@1048576", image.display());
    bootmedia::tools::mcopy(Path::new(&partition), &file, "::/gridos.cfg")?;
    Ok(())
}

/// The node says on its console that farm `later` does not exist; the farmer creates it, and
/// the node registers there (checked by the caller) without a reboot.
async fn create_farm_later(
    args: &E2eArgs,
    shape: &Shape,
    reg: &Registry,
    guest: &mut Guest,
    work: &Path,
    later: u64,
) -> anyhow::Result<()> {
    let l = guest
        .wait_line(
            &[&format!("farm {later} does not exist on registry")],
            Duration::from_secs(args.boot_timeout),
        )
        .await
        .context("the node did not say that the farm in its gridos.cfg does not exist")?;
    eprintln!("e2e[{}]: console: {}", shape.name, l.trim());
    let made = registry::setup_farm(
        &args.bin_dir,
        &reg.url(),
        &work.join("farmer.key"),
        &format!("{}-later", shape.name),
    )?;
    ensure!(made == later, "the farm created got id {made}, not {later}");
    eprintln!(
        "e2e[{}]: farm {later} created after the node asked for it",
        shape.name
    );
    Ok(())
}

/// Boots `machine` with its network-boot folder's initramfs damaged near its end: the
/// console must say the image is damaged, and the node must reboot (QEMU ends: `-no-reboot`)
/// instead of hanging.
async fn damaged_boot(
    args: &E2eArgs,
    shape: &Shape,
    machine: &Machine,
    work: &Path,
) -> anyhow::Result<()> {
    let Medium::Netboot(dir) = &machine.medium else {
        bail!("a damaged initramfs is tried on network boots only");
    };
    let path = dir.join("initramfs.img");
    let mut bytes = std::fs::read(&path)?;
    let at = bytes.len() / 10 * 9;
    for b in &mut bytes[at..at + 64] {
        *b ^= 0x5a;
    }
    std::fs::write(&path, &bytes)?;
    let mut m = machine.clone();
    m.serial = work.join("console-damaged.log");
    let mut guest = m.boot()?;
    let t0 = Instant::now();
    let said = guest
        .wait_line(
            &["THE BOOT IMAGE IS DAMAGED"],
            Duration::from_secs(args.boot_timeout),
        )
        .await;
    let rebooted = match &said {
        Ok(_) => guest.wait(Duration::from_secs(60)).await.map(|_| ()),
        Err(_) => Ok(()),
    };
    let console = std::fs::read_to_string(&m.serial).unwrap_or_default();
    guest.kill();
    if let Err(e) = said.and(rebooted) {
        eprintln!(
            "e2e[{}]: console of the damaged boot:\n{}",
            shape.name,
            qemu::tail(&m.serial, 40)
        );
        return Err(
            e.context("a damaged initramfs did not give the damaged-image message and a reboot")
        );
    }
    ensure!(
        console.contains("Initramfs unpacking failed"),
        "the kernel did not say why the image is damaged"
    );
    eprintln!(
        "e2e[{}]: damaged initramfs: the console said so and the node rebooted after {:.0} s",
        shape.name,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The node registered into `farm`.
async fn check_farm(reg: &Registry, farm: u64) -> anyhow::Result<()> {
    let nodes = reg.get::<gridapi::Page<NodeView>>(paths::NODES).await?;
    let node = nodes.items.first().context("no node in the registry")?;
    ensure!(
        node.farm_id == farm as i64,
        "node {} registered into farm {}, gridos.cfg on its stick says {farm}",
        node.id,
        node.farm_id
    );
    Ok(())
}

/// Boots `shape`, waits for the registration, and checks capacity and cache placement; with a
/// hot-added disk, also that the new capacity is reported and the cache leaves tmpfs.
pub async fn check(
    args: &E2eArgs,
    accel: &str,
    shape: &Shape,
    work: &Path,
) -> anyhow::Result<Timing> {
    std::fs::create_dir_all(work)?;
    let (reg, farm) = match shape.boot.medium {
        BootMedium::PxeHttp => {
            // The operator's release folder: the image, with the lab's console settings (the
            // registry adds the farm and its own URL to each farm's script).
            let release = work.join("release");
            std::fs::create_dir_all(&release)?;
            for f in ["vmlinuz", "initramfs.img"] {
                std::fs::copy(args.image.join(f), release.join(f))?;
            }
            let base = std::fs::read_to_string(args.image.join("cmdline"))?;
            std::fs::write(
                release.join("cmdline"),
                format!(
                    "{} gridos.hostname={} console=ttyS0 panic=-1\n",
                    base.trim(),
                    shape.name
                ),
            )?;
            let reg = Registry::start_serving_boot(&args.bin_dir, work, &release).await?;
            let farm = registry::setup_farm(
                &args.bin_dir,
                &reg.url(),
                &work.join("farmer.key"),
                shape.name,
            )?;
            (reg, farm)
        }
        _ => {
            let extensions = shape.vm.then_some(args.extensions.as_path());
            registry::with_farm_serving(&args.bin_dir, work, 0, shape.name, extensions).await?
        }
    };
    let images = match shape.containers || shape.vm {
        true => Some(crate::images::start().await?),
        false => None,
    };
    let append = format!(
        "gridos.farm={farm} gridos.registry={} gridos.hostname={} {}",
        reg.guest_url(),
        shape.name,
        images.as_ref().map(|i| i.plain_http()).unwrap_or_default()
    );
    let mut machine = shape.machine(&args.image, accel, work, append);
    if let Medium::NetbootHttp(url) = &mut machine.medium {
        *url = format!("{}/boot/{farm}/ipxe", reg.guest_url());
    }
    let want_farm = prepare_medium(args, shape, &machine, &reg, farm, work)?;
    if shape.trial == Trial::DamagedInitramfs {
        damaged_boot(args, shape, &machine, work).await?;
        // The reboot, with the image as it should have arrived.
        prepare_medium(args, shape, &machine, &reg, farm, work)?;
        machine.serial = work.join("console-boot2.log");
    }
    let t0 = Instant::now();
    let mut guest = machine.boot()?;
    let mut firmware_s = None;
    if machine.medium != Medium::Kernel {
        let pid1 = guest
            .wait_line(
                &["gridos init started as PID 1"],
                Duration::from_secs(args.boot_timeout),
            )
            .await
            .with_context(|| {
                format!(
                    "the firmware ({:?}) did not boot the {:?} to PID 1",
                    shape.boot.firmware, shape.boot.medium
                )
            })?;
        let wall = t0.elapsed().as_secs_f64();
        // The guest clock starts with the kernel: what came before it on the wall clock is
        // the firmware and the boot loader (loading the kernel and initramfs included).
        firmware_s = qemu::boot_clock(&pid1).map(|k| (wall - k).max(0.0));
        eprintln!(
            "e2e[{}]: QEMU start → PID 1 through {:?} from {:?}: {wall:.1} s wall",
            shape.name, shape.boot.firmware, shape.boot.medium
        );
    }
    if let (Trial::CfgFarmCreatedLater, Some(later)) = (shape.trial, want_farm) {
        if let Err(e) = create_farm_later(args, shape, &reg, &mut guest, work, later).await {
            guest.kill();
            return Err(e);
        }
    }
    let mut result = check_booted(args, shape, &reg, &mut guest)
        .await
        .map(|t| Timing { firmware_s, ..t });
    if let (Ok(_), Some(want)) = (&result, want_farm) {
        if let Err(e) = check_farm(&reg, want).await {
            result = Err(e);
        }
    }
    if let (Ok(_), Some(images), true) = (&result, &images, shape.containers) {
        if let Err(e) = probe_container(args, &reg, work, &images.busybox).await {
            result = Err(e);
        }
    }
    if let (Ok(_), Some(images), true) = (&result, &images, shape.vm) {
        if let Err(e) = probe_vm(args, &reg, work, images, &mut machine, &mut guest).await {
            result = Err(e);
        }
    }
    if result.is_err() {
        eprintln!(
            "e2e[{}]: last console lines ({}):\n{}",
            shape.name,
            machine.serial.display(),
            qemu::tail(&machine.serial, 60)
        );
    }
    guest.kill();
    result
}

async fn check_booted(
    args: &E2eArgs,
    shape: &Shape,
    reg: &Registry,
    guest: &mut Guest,
) -> anyhow::Result<Timing> {
    let say = |m: String| eprintln!("e2e[{}]: {m}", shape.name);
    let t0 = Instant::now();
    let (id, secs) = registered(guest, Duration::from_secs(args.boot_timeout)).await?;
    say(format!(
        "registered as node {id}: {secs:.2} s guest clock from PID 1 ({:.0} s wall)",
        t0.elapsed().as_secs_f64()
    ));
    let at_boot: (u64, u64) = {
        let s = Shape {
            hot_add: None,
            ..*shape
        };
        s.expected_disks()
    };
    let cap = check_capacity(reg, id, shape.cpus, shape.memory_mib, at_boot.0, at_boot.1).await?;
    let cache = if shape.trial == Trial::CacheOnStick {
        // The stick holds the cache (and is not sold: SRU and HRU were 0 above).
        let l = guest
            .wait_line(&["cache placed", "disk="], Duration::from_secs(60))
            .await?;
        ensure!(
            l.contains(&format!("size={}", 1u64 << 30)) && l.contains("backing=Created"),
            "the cache is not on the 1 GiB stick: {l}"
        );
        format!("the boot stick {}", field(&l, "disk").unwrap_or("?"))
    } else {
        check_cache(guest, shape.expected_cache(shape.disks)).await?
    };
    say(format!("{cap}; cache on {cache}"));
    let timing = timing(&guest.serial, secs);
    if let Some(kind) = shape.hot_add {
        let work = guest
            .serial
            .parent()
            .context("console has no folder")?
            .to_path_buf();
        guest.hot_add_disk(&kind.disk(&work, "hotadd"), "hotadd")?;
        say(format!("{kind:?} plugged in (QEMU monitor device_add)"));
        guest
            .wait_line(
                &["cache moved from tmpfs to disk"],
                Duration::from_secs(180),
            )
            .await?;
        let cache = check_cache(guest, Some(kind)).await?;
        let (sru, hru) = shape.expected_disks();
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            match check_capacity(reg, id, shape.cpus, shape.memory_mib, sru, hru).await {
                Ok(cap) => {
                    say(format!("after the hot-add: {cap}; cache moved to {cache}"));
                    break;
                }
                Err(e) if Instant::now() > deadline => {
                    bail!("the registry never saw the added disk: {e:#}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }
    Ok(timing)
}

/// The id of the shape's one node.
async fn only_node(reg: &Registry) -> anyhow::Result<i64> {
    reg.get::<gridapi::Page<NodeView>>(paths::NODES)
        .await?
        .items
        .first()
        .map(|n| n.id)
        .context("no node")
}

/// A twin rents part of the node and runs one container from the host's OCI registry: it
/// must see the one core and 64 MiB it reserved in its cgroup and have an address on its
/// twin's network, and what it prints must come back through `grid logs`.
async fn probe_container(
    args: &E2eArgs,
    reg: &Registry,
    work: &Path,
    image: &str,
) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let grid = new_twin(&args.bin_dir, reg, work.join("twin.key"))?;
    let node = only_node(reg).await?;
    let contract = rent(&grid, node, 1, "64MiB", "64MiB")?;
    let cmd = "test \"$(cat /sys/fs/cgroup/memory.max)\" = 67108864 || exit 3; \
               test \"$(cat /sys/fs/cgroup/cpu.max)\" = \"100000 100000\" || exit 4; \
               echo limits-ok; exec sleep 100000";
    let probe = small_container("probe", image, cmd);
    deploy(&grid, &work.join("app.yaml"), &probe, &contract)?;
    let what = format!("the probe of contract {contract} did not run");
    until_shown(&grid, &contract, Duration::from_secs(300), &what, |shown| {
        ensure!(shown["state"] != "failed", "the node failed it: {shown}");
        let Some(w) = workload(shown, "probe") else {
            return Ok(false);
        };
        Ok(w["state"] == "running"
            && w["address"]
                .as_str()
                .is_some_and(|a| a.starts_with("10.240.")))
    })
    .await?;
    // Running means its shell started; the line comes a moment later.
    let deadline = Instant::now() + Duration::from_secs(60);
    let logs = loop {
        let logs = grid(&["logs", &contract, "probe", "--wait", "120"])?;
        if logs["text"] != "" || Instant::now() > deadline {
            break logs;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    ensure!(
        logs["text"] == "limits-ok\n",
        "the probe printed {} (status 3: memory.max is not the reserved 64 MiB; 4: cpu.max is \
         not one core)",
        logs["text"]
    );
    eprintln!(
        "e2e[{}]: a twin's container ran with its limits and address, and grid logs read it \
         ({:.0} s wall)",
        work.file_name().and_then(|n| n.to_str()).unwrap_or("?"),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A twin runs a VM from the tiny guest image ([`crate::images::Images::push_vm`]) under
/// nested TCG (the node itself runs under TCG). The node fetches the VM runtime from its
/// registry and verifies it against the release key baked into its image; the guest's console,
/// read with `grid logs`, must say that cloud-init read the seed (instance id, host name, the
/// twin's key, its address on the twin's network). Then the node is shut down with
/// Ctrl-Alt-Del (the VM is powered off with it) and booted again on the same disks: the VM
/// must run again and its guest come up once more.
async fn probe_vm(
    args: &E2eArgs,
    reg: &Registry,
    work: &Path,
    images: &crate::images::Images,
    machine: &mut Machine,
    guest: &mut Guest,
) -> anyhow::Result<()> {
    let say = |m: String| {
        eprintln!(
            "e2e[{}]: {m}",
            work.file_name().and_then(|n| n.to_str()).unwrap_or("?")
        )
    };
    let image = images.push_vm().await?;
    let grid = new_twin(&args.bin_dir, reg, work.join("vm-twin.key"))?;
    let node = only_node(reg).await?;
    // A volume on the HDD pool, attached as the VM's second disk.
    let contract = rent_hdd(&grid, node, 1, "128MiB", "16MiB", "32MiB")?;
    let app = format!(
        "- kind: volume\n  name: data\n  size: 32MiB\n  disk: hdd\n\
         - kind: vm\n  name: tiny\n  image: {image}\n  cmdline: 'quiet panic=-1'\n  \
         ssh_keys: ['{VM_KEY}']\n  volumes: [data]\n  \
         resources: {{cru: 1, mru: 128MiB, sru: 16MiB}}\n"
    );
    let t0 = Instant::now();
    deploy(&grid, &work.join("vm.yaml"), &app, &contract)?;
    let mut address = String::new();
    let what = format!("the VM of contract {contract} did not start");
    until_shown(&grid, &contract, Duration::from_secs(600), &what, |shown| {
        ensure!(shown["state"] != "failed", "the node failed it: {shown}");
        let Some(w) = workload(shown, "tiny") else {
            return Ok(false);
        };
        ensure!(w["state"] != "failed", "the node failed the VM: {shown}");
        address = w["address"].as_str().unwrap_or_default().to_string();
        ensure!(
            w["kind"] == "vm",
            "the node's status does not say tiny is a VM: {shown}"
        );
        Ok(w["state"] == "running" && address.starts_with("10.240."))
    })
    .await?;
    let started = t0.elapsed().as_secs_f64();
    let ready = |min: usize| {
        let grid = &grid;
        let contract = contract.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(900);
            loop {
                let logs = grid(&["logs", &contract, "tiny"])?;
                let text = logs["text"].as_str().unwrap_or_default().to_string();
                if text.matches("guest: ready").count() >= min {
                    return Ok::<String, anyhow::Error>(text);
                }
                ensure!(
                    Instant::now() < deadline,
                    "the VM's guest did not come up (boot {min}); its console:\n{text}"
                );
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    };
    let text = ready(1).await?;
    let want = format!(
        "cloud-init: ran instance-id=c{contract}-tiny hostname=tiny ssh_keys=1 network=eth0={address}/24"
    );
    ensure!(
        text.contains(&want) && text.contains(&format!("cloud-init: key {VM_KEY}")),
        "the guest did not see its seed ({want:?}): {text}"
    );
    // In 512-byte sectors: the 16 MiB root disk, then the 32 MiB volume.
    ensure!(
        text.contains("guest: disks vda:32768 vdb:65536 "),
        "the guest does not see its root disk and its volume: {text}"
    );
    say(format!(
        "a twin's VM (nested TCG) runs at {address}: the node fetched and verified the VM \
         runtime, the guest read its cloud-init seed (host name, key, address) and sees its \
         HDD volume as a disk; running after {started:.0} s, guest up after {:.0} s wall",
        t0.elapsed().as_secs_f64()
    ));
    crate::e2e::reboot(guest).await?;
    let said = std::fs::read_to_string(&guest.serial)?;
    ensure!(
        said.contains("VM stopped") && said.contains("how=Some(Graceful"),
        "the node did not power its VM off with the power button at shutdown"
    );
    machine.serial = work.join("console-boot2.log");
    *guest = machine.boot()?;
    let t1 = Instant::now();
    registered(guest, Duration::from_secs(args.boot_timeout)).await?;
    guest
        .wait_line(
            &["VM started", &format!("contract={contract}")],
            Duration::from_secs(600),
        )
        .await
        .context("boot 2 did not start the twin's VM again")?;
    ready(2).await?;
    say(format!(
        "after Ctrl-Alt-Del and a new boot on the same disks the VM runs again and its guest \
         came up ({:.0} s wall from the new boot)",
        t1.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// The twin's SSH key the VM is given (never used to log in: nothing in the lab reaches a twin
/// network from outside).
const VM_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBx0dN0wJ8m4vD8pd0t3cLZfmhvbZlmB0wV2fQmBdpzC twin@lab";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_covers_issue_10() {
        let cpus: std::collections::BTreeSet<u32> = SHAPES.iter().map(|s| s.cpus).collect();
        assert_eq!(cpus.into_iter().collect::<Vec<_>>(), [1, 2, 4]);
        for model in ["qemu64", "max"] {
            assert!(SHAPES.iter().any(|s| s.cpu == model), "{model}");
        }
        let has = |f: &dyn Fn(&Shape) -> bool| SHAPES.iter().any(f);
        assert!(has(&|s| s.disks == [DiskKind::Ssd]));
        assert!(has(&|s| s.disks == [DiskKind::Hdd]));
        assert!(has(
            &|s| s.disks.contains(&DiskKind::Ssd) && s.disks.contains(&DiskKind::Hdd)
        ));
        assert!(has(&|s| s.disks.is_empty() && s.hot_add.is_none()));
        assert!(has(&|s| s.hot_add.is_some()));
        assert_eq!(SHAPES.iter().filter(|s| s.full).count(), 1);
        // Containers run on both CPU models, with one and with two vCPUs, and beside an HDD.
        let runs = |f: &dyn Fn(&Shape) -> bool| SHAPES.iter().any(|s| s.containers && f(s));
        assert!(runs(&|s| s.cpu == "qemu64") && runs(&|s| s.cpu == "max"));
        assert!(runs(&|s| s.cpus == 1) && runs(&|s| s.cpus == 2));
        assert!(runs(&|s| s.disks.contains(&DiskKind::Hdd)));
        // A twin's VM runs, and comes back after a reboot, on at least one shape.
        assert!(has(&|s| s.vm));
        // The boot matrix: every value of every axis at least once.
        for f in [Firmware::SeaBios, Firmware::Ovmf] {
            assert!(has(&|s| s.boot.firmware == f), "{f:?}");
        }
        for m in [
            BootMedium::Pxe,
            BootMedium::PxeHttp,
            BootMedium::Usb,
            BootMedium::Iso,
        ] {
            assert!(has(&|s| s.boot.medium == m), "{m:?}");
        }
        for b in [Bus::VirtioScsi, Bus::VirtioBlk, Bus::Nvme, Bus::Ahci] {
            assert!(
                has(&|s| s.boot.bus == b && s.boot.medium != BootMedium::Kernel),
                "{b:?}"
            );
        }
        for n in [VIRTIO_NET, E1000] {
            assert!(
                has(&|s| s.boot.nic == n && s.boot.medium != BootMedium::Kernel),
                "{n}"
            );
        }
        for t in [
            Trial::CfgFarm,
            Trial::CfgFarmCreatedLater,
            Trial::CacheOnStick,
        ] {
            assert!(
                has(&|s| s.trial == t && s.boot.medium == BootMedium::Usb),
                "{t:?}"
            );
        }
        assert!(has(
            &|s| s.trial == Trial::DamagedInitramfs && s.boot.medium == BootMedium::Pxe
        ));
        // The guest decides SSD or HDD by the controller for these two: the shape must agree.
        for s in SHAPES {
            match s.boot.bus {
                Bus::VirtioBlk => assert!(!s.disks.contains(&DiskKind::Ssd), "{}", s.name),
                Bus::Nvme => assert!(!s.disks.contains(&DiskKind::Hdd), "{}", s.name),
                _ => {}
            }
        }
        // Never where there is no SSD: a container's root disk is SRU.
        assert!(!runs(&|s| !s.disks.contains(&DiskKind::Ssd)));
        let names: std::collections::BTreeSet<_> = SHAPES.iter().map(|s| s.name).collect();
        assert_eq!(names.len(), SHAPES.len());
    }

    #[test]
    fn expectations() {
        let s = SHAPES[3];
        assert_eq!(s.expected_disks(), (SSD_BYTES, HDD_BYTES));
        assert_eq!(s.expected_cache(s.disks), Some(DiskKind::Ssd));
        assert_eq!(s.expected_cache(&[DiskKind::Hdd]), Some(DiskKind::Hdd));
        assert_eq!(s.expected_cache(&[]), None);
    }

    #[test]
    fn fields_of_log_lines() {
        let l = "[entropy] [    4.2]  INFO entropy: kernel CRNG ready waited_s=\"1.71\" jitter_bits_credited=256";
        assert_eq!(field(l, "waited_s"), Some("1.71"));
        let l = "[storage] [    8.8]  INFO storage::apply: cache placed disk=\"sdb\" kind=Ssd size=20000000000 backing=Created";
        assert_eq!(field(l, "disk"), Some("sdb"));
        assert_eq!(field(l, "kind"), Some("Ssd"));
        assert_eq!(field(l, "size"), Some("20000000000"));
        assert_eq!(field(l, "nope"), None);
    }
}
