//! One gridos node in QEMU: user networking (the host's loopback is 10.0.2.2 to the guest),
//! an SSD and an HDD as sparse files on virtio-scsi, the serial console in a file and the
//! monitor on a unix socket for Ctrl-Alt-Del.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// The lab node: what QEMU gives it, as the issue and the end-to-end test state it.
pub const CPUS: u32 = 2;
pub const MEMORY_MIB: u64 = 2048;
pub const SSD_BYTES: u64 = 20_000_000_000;
pub const HDD_BYTES: u64 = 50_000_000_000;
/// The DMI product serial QEMU gives every lab node. The kernel makes it readable by root
/// only; the agent, which runs as its own user, reads it because init grants it (`readable:`).
pub const DMI_SERIAL: &str = "GRIDOS-LAB-0001";
/// The node's two disks in `work`.
pub fn disks(work: &std::path::Path) -> Vec<Disk> {
    vec![
        Disk {
            path: work.join("ssd.img"),
            size: SSD_BYTES,
            rotation_rate: 1,
        },
        Disk {
            path: work.join("hdd.img"),
            size: HDD_BYTES,
            rotation_rate: 7200,
        },
    ]
}

/// A disk given to the guest.
#[derive(Debug, Clone)]
pub struct Disk {
    /// Sparse image file.
    pub path: PathBuf,
    /// Size in bytes (the file is created or grown to it).
    pub size: u64,
    /// SCSI `rotation_rate`: 1 = SSD, 7200 = HDD.
    pub rotation_rate: u32,
}

impl Disk {
    /// Creates the sparse file if missing; an existing one keeps its data (a reboot).
    pub fn ensure(&self) -> anyhow::Result<()> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.path)
            .with_context(|| format!("creating {}", self.path.display()))?;
        if f.metadata()?.len() != self.size {
            f.set_len(self.size)?;
        }
        Ok(())
    }
}

/// How to boot.
#[derive(Debug, Clone)]
pub struct Machine {
    /// Folder with `vmlinuz`, `initramfs.img` and `cmdline` (from `make image`).
    pub image: PathBuf,
    /// `kvm` or `tcg`.
    pub accel: String,
    /// QEMU `-cpu` model: `max` (RDRAND and every feature TCG has) or `qemu64` (QEMU's
    /// default: no RDRAND, like older servers).
    pub cpu_model: String,
    pub cpus: u32,
    pub memory_mib: u64,
    pub disks: Vec<Disk>,
    /// Appended to the image's default command line.
    pub append: String,
    /// Serial console file.
    pub serial: PathBuf,
    /// Monitor socket.
    pub monitor: PathBuf,
    /// The network card's QEMU device (`virtio-net-pci`, `e1000`).
    pub nic: &'static str,
    /// The firmware.
    pub firmware: Firmware,
    /// The controller the disks hang on.
    pub bus: Bus,
    /// What the firmware boots.
    pub medium: Medium,
}

/// The guest's firmware.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// Legacy BIOS (Debian's `seabios`, QEMU's default).
    SeaBios,
    /// UEFI (Debian's `ovmf`), with a fresh copy of its variable store per boot.
    Ovmf,
}

/// The controller the node's disks are on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bus {
    /// virtio-scsi (`scsi-hd`, which can say SSD or HDD by `rotation_rate`).
    VirtioScsi,
    /// virtio-blk: the guest sees every such disk as rotational.
    VirtioBlk,
    /// NVMe: the guest sees every such disk as non-rotational.
    Nvme,
    /// AHCI (q35's own SATA controller, `ide-hd` with `rotation_rate`).
    Ahci,
}

/// What the firmware boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Medium {
    /// QEMU's `-kernel`/`-initrd`/`-append` from the image folder.
    Kernel,
    /// The firmware's iPXE (Debian's `ipxe-qemu`) fetches `boot.ipxe` from this folder over
    /// QEMU's TFTP (`bootmedia::pxe`), and the script the kernel and initramfs.
    Netboot(PathBuf),
    /// The firmware's iPXE fetches this script URL over HTTP (the registry's
    /// `/boot/{farm}/ipxe`), and the script the kernel and initramfs from beside it.
    NetbootHttp(String),
    /// This disk image (`bootmedia::usb`, or an ISO written raw) as a USB stick on xHCI.
    Usb(PathBuf),
    /// This ISO (`bootmedia::iso`) in a SATA CD-ROM drive.
    Cdrom(PathBuf),
}

/// `kvm` when a probe guest really boots with it, else `tcg`: `/dev/kvm` exists on hosts
/// where KVM guests still fail, and a test must not depend on that.
pub fn pick_accel(image: &Path, work: &Path) -> String {
    if std::env::var_os("GRIDOS_NO_KVM").is_some()
        || std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/kvm")
            .is_err()
    {
        return "tcg".into();
    }
    let log = work.join("kvm-probe.log");
    let _ = std::fs::remove_file(&log);
    let child = Command::new("qemu-system-x86_64")
        .args([
            "-accel", "kvm", "-machine", "q35", "-m", "256", "-display", "none",
        ])
        .args(["-nodefaults", "-no-reboot", "-serial"])
        .arg(format!("file:{}", log.display()))
        .arg("-kernel")
        .arg(image.join("vmlinuz"))
        .args(["-append", "console=ttyS0 panic=-1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    if let Ok(mut c) = child {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(8) {
            if let Ok(Some(_)) = c.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
    // No initramfs: a kernel that got as far as looking for a root filesystem booted fine.
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    if text.contains("Kernel panic") || text.contains("VFS:") {
        "kvm".into()
    } else {
        "tcg".into()
    }
}

/// A running guest.
pub struct Guest {
    child: Option<Child>,
    monitor: PathBuf,
    pub serial: PathBuf,
}

impl Machine {
    /// The lab node booting `image` with `append` on the kernel command line: [`CPUS`],
    /// [`MEMORY_MIB`], the [`disks`] of `work`, console in `work/console`, monitor in `work`.
    pub fn node(image: &Path, accel: &str, work: &Path, append: String, console: &str) -> Machine {
        Machine {
            image: image.to_path_buf(),
            accel: accel.to_string(),
            cpu_model: "max".into(),
            cpus: CPUS,
            memory_mib: MEMORY_MIB,
            disks: disks(work),
            append,
            serial: work.join(console),
            monitor: work.join("monitor.sock"),
            nic: "virtio-net-pci",
            firmware: Firmware::SeaBios,
            bus: Bus::VirtioScsi,
            medium: Medium::Kernel,
        }
    }

    /// What the lab adds to the image's command line: `append`, then `console=ttyS0` last so
    /// the serial port is `/dev/console` (the default also names tty0, absent without a
    /// display), and no reboot on a panic (`-no-reboot` would end QEMU silently).
    pub fn lab_args(&self) -> Vec<String> {
        self.append
            .split_whitespace()
            .chain(["console=ttyS0", "panic=-1"])
            .map(str::to_string)
            .collect()
    }

    /// The kernel command line: the image's default, then [`Machine::lab_args`].
    pub fn cmdline(&self) -> anyhow::Result<String> {
        let base = std::fs::read_to_string(self.image.join("cmdline"))
            .with_context(|| format!("reading {}/cmdline", self.image.display()))?;
        Ok(format!("{} {}", base.trim(), self.lab_args().join(" ")))
    }

    /// Starts QEMU. `-no-reboot`: a guest reboot ends the process, so a "reboot" is two boots
    /// on the same disks, each with its own console file.
    pub fn boot(&self) -> anyhow::Result<Guest> {
        for d in &self.disks {
            d.ensure()?;
        }
        let _ = std::fs::remove_file(&self.serial);
        let _ = std::fs::remove_file(&self.monitor);
        let host_cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let accel = match self.accel.as_str() {
            // More vCPUs than host cores under multi-threaded TCG starve each other until the
            // guest's stop_machine (every module load) stalls for minutes (soft lockups on
            // the console): one TCG thread takes them in turn instead.
            "tcg" if self.cpus as usize > host_cores => "tcg,thread=single",
            a => a,
        };
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(["-accel", accel, "-machine", "q35", "-cpu", &self.cpu_model])
            .args(["-smp", &self.cpus.to_string()])
            .args(["-m", &self.memory_mib.to_string()])
            .args(["-display", "none", "-nodefaults", "-no-reboot"])
            .args(["-smbios", &format!("type=1,serial={DMI_SERIAL}")])
            .arg("-serial")
            .arg(format!("file:{}", self.serial.display()))
            .arg("-monitor")
            .arg(format!(
                "unix:{},server=on,wait=off",
                self.monitor.display()
            ))
            .arg("-netdev")
            .arg(match &self.medium {
                Medium::Netboot(dir) => {
                    format!("user,id=n0,tftp={},bootfile=boot.ipxe", dir.display())
                }
                Medium::NetbootHttp(url) => format!("user,id=n0,bootfile={url}"),
                _ => "user,id=n0".to_string(),
            })
            .arg("-device")
            .arg(match &self.medium {
                // Only the chosen medium may boot: no network boot from the card's ROM first.
                Medium::Usb(_) | Medium::Cdrom(_) => format!("{},netdev=n0,romfile=", self.nic),
                Medium::Kernel | Medium::Netboot(_) | Medium::NetbootHttp(_) => {
                    format!("{},netdev=n0", self.nic)
                }
            });
        if self.firmware == Firmware::Ovmf {
            // A fresh variable store each boot: the boot order is the firmware's own choice
            // from the devices, as on a new machine.
            let vars = self.monitor.with_file_name("ovmf-vars.fd");
            std::fs::copy(OVMF_VARS, &vars)
                .map_err(|e| hosttools::spawn_error("ovmf", e))
                .with_context(|| format!("copying {OVMF_VARS} (Debian's ovmf)"))?;
            cmd.arg("-drive")
                .arg(format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"))
                .arg("-drive")
                .arg(format!("if=pflash,format=raw,file={}", vars.display()));
        }
        self.attach_disks(&mut cmd);
        match &self.medium {
            Medium::Kernel => {
                cmd.arg("-kernel")
                    .arg(self.image.join("vmlinuz"))
                    .arg("-initrd")
                    .arg(self.image.join("initramfs.img"))
                    .arg("-append")
                    .arg(self.cmdline()?);
            }
            Medium::Netboot(_) | Medium::NetbootHttp(_) => {
                cmd.args(["-boot", "n"]);
            }
            Medium::Usb(img) => {
                // snapshot: the guest's writes go to a temporary file, the image stays as built.
                cmd.args(["-device", "qemu-xhci,id=xhci"])
                    .arg("-drive")
                    .arg(format!(
                        "if=none,id=stick,format=raw,snapshot=on,file={}",
                        img.display()
                    ))
                    .args(["-device", "usb-storage,bus=xhci.0,drive=stick,bootindex=0"]);
            }
            Medium::Cdrom(iso) => {
                cmd.arg("-drive")
                    .arg(format!(
                        "if=none,id=cd,format=raw,media=cdrom,readonly=on,file={}",
                        iso.display()
                    ))
                    .args(["-device", "ide-cd,drive=cd,bus=ide.5,bootindex=0"]);
            }
        }
        cmd.stdin(Stdio::null());
        // Own process group: Ctrl-C on the terminal reaches us, and we shut the guest down in order.
        cmd.process_group(0);
        let child = cmd
            .spawn()
            .map_err(|e| hosttools::spawn_error("qemu-system-x86_64", e))
            .context("starting qemu-system-x86_64")?;
        Ok(Guest {
            child: Some(child),
            monitor: self.monitor.clone(),
            serial: self.serial.clone(),
        })
    }
}

/// Debian's `ovmf`: the UEFI firmware and the variable store each boot starts from.
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

impl Machine {
    /// The disks on [`Machine::bus`], each with the serial `gridos-disk<i>`.
    fn attach_disks(&self, cmd: &mut Command) {
        if self.bus == Bus::VirtioScsi {
            // Even with no disk: a disk may be hot-added to it later.
            cmd.args(["-device", "virtio-scsi-pci,id=scsi0"]);
        }
        for (i, d) in self.disks.iter().enumerate() {
            cmd.arg("-drive").arg(format!(
                "if=none,id=d{i},file={},format=raw,cache=unsafe",
                d.path.display()
            ));
            let serial = format!("gridos-disk{i}");
            let rate = d.rotation_rate;
            let device = match self.bus {
                Bus::VirtioScsi => {
                    format!("scsi-hd,drive=d{i},bus=scsi0.0,rotation_rate={rate},serial={serial}")
                }
                Bus::VirtioBlk => format!("virtio-blk-pci,drive=d{i},serial={serial}"),
                Bus::Nvme => format!("nvme,drive=d{i},serial={serial}"),
                Bus::Ahci => {
                    format!("ide-hd,drive=d{i},bus=ide.{i},rotation_rate={rate},serial={serial}")
                }
            };
            cmd.args(["-device", &device]);
        }
    }
}

impl Guest {
    /// Presses Ctrl-Alt-Del on the guest's keyboard: PID 1 stops every service in order and
    /// reboots, which ends QEMU (`-no-reboot`).
    pub fn ctrl_alt_del(&self) -> anyhow::Result<()> {
        self.monitor_command("sendkey ctrl-alt-delete")
    }

    /// Plugs `disk` into the running guest's SCSI bus (QEMU monitor `drive_add` +
    /// `device_add`), as a farmer adding a disk to a running machine would.
    pub fn hot_add_disk(&self, disk: &Disk, id: &str) -> anyhow::Result<()> {
        disk.ensure()?;
        self.monitor_command(&format!(
            "drive_add 0 if=none,id={id},file={},format=raw,cache=unsafe",
            disk.path.display()
        ))?;
        self.monitor_command(&format!(
            "device_add scsi-hd,drive={id},bus=scsi0.0,rotation_rate={},serial=gridos-{id}",
            disk.rotation_rate
        ))
    }

    fn monitor_command(&self, cmd: &str) -> anyhow::Result<()> {
        let mut s = UnixStream::connect(&self.monitor).with_context(|| {
            format!("connecting to the QEMU monitor {}", self.monitor.display())
        })?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(format!("{cmd}\n").as_bytes())?;
        // Wait for the monitor to echo the command back before closing.
        let mut buf = [0u8; 4096];
        let mut seen = String::new();
        let t0 = Instant::now();
        while !seen.contains(cmd) && t0.elapsed() < Duration::from_secs(2) {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
        Ok(())
    }

    /// Waits for QEMU to exit (without blocking other guests' tasks).
    pub async fn wait(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let t0 = Instant::now();
        let Some(c) = self.child.as_mut() else {
            bail!("qemu already reaped");
        };
        loop {
            if let Some(st) = c.try_wait()? {
                self.child = None;
                return Ok(st);
            }
            if t0.elapsed() > timeout {
                bail!("qemu still running after {} s", timeout.as_secs());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Still running?
    pub fn running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Waits until the console shows a line containing every one of `needles`, and returns it.
    /// Fails early if QEMU exits first.
    pub async fn wait_line(
        &mut self,
        needles: &[&str],
        timeout: Duration,
    ) -> anyhow::Result<String> {
        let t0 = Instant::now();
        loop {
            let text = std::fs::read_to_string(&self.serial).unwrap_or_default();
            if let Some(l) = text.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
                return Ok(l.to_string());
            }
            if !self.running() {
                bail!("qemu exited before the console showed {needles:?}");
            }
            if t0.elapsed() > timeout {
                bail!(
                    "the console did not show {needles:?} within {} s",
                    timeout.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Kills QEMU (the end of `make run`, or a failed test).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The guest-clock seconds of a console line: the first `[   12.345678]` in it (init's own
/// lines start with it; a service's lines carry it after the `[agent]` prefix).
pub fn boot_clock(line: &str) -> Option<f64> {
    line.split('[')
        .skip(1)
        .filter_map(|part| part.split_once(']'))
        .find_map(|(inside, _)| inside.trim().parse().ok())
}

/// The last `n` lines of the console, for a failure message.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
