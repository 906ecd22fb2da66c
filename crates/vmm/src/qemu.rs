//! What one VM is ([`Spec`]) and the QEMU command line that runs it ([`args`]). Pure: no
//! process is started here, so every rule is a unit test.
//!
//! The machine is `q35` with no default devices: a serial console on the process's standard
//! output, QMP on a unix socket, virtio disks and a virtio NIC on a tap. QEMU starts paused
//! (`-S`), so the caller can attach the tap to the twin's bridge before the guest runs, and
//! under QEMU's seccomp sandbox (no new processes, no privilege changes).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The fewest MiB a guest gets: below this no Linux kernel boots.
pub const MIN_MEMORY_MIB: u64 = 64;
/// The most vCPUs q35 takes without extra options.
pub const MAX_VCPUS: u32 = 255;
/// A unix socket path is at most 107 bytes on Linux.
pub const MAX_SOCKET_PATH: usize = 107;

/// Why a spec cannot be run.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// A field is out of range or malformed.
    #[error("invalid VM spec: {0}")]
    Invalid(String),
    /// A file the VM boots from or uses is not there.
    #[error("the VM's {what} {path} does not exist")]
    Missing {
        /// Kernel, initrd, disk or seed.
        what: &'static str,
        /// The path looked for.
        path: PathBuf,
    },
}

/// How QEMU is run: the host's binary, or the one in a mounted VM-runtime extension, started
/// through the extension's own dynamic loader with its own libraries, plugins and firmware,
/// so nothing depends on the base image's libraries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qemu {
    program: PathBuf,
    pre: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    firmware: Vec<PathBuf>,
    /// `qemu-img`, run the same way (program, then its first arguments).
    img: (PathBuf, Vec<OsString>),
}

/// Where things are inside the VM-runtime extension (image/extensions/vm.yaml).
const EXT_LOADER: &str = "lib64/ld-linux-x86-64.so.2";
const EXT_BINARY: &str = "usr/bin/qemu-system-x86_64";
const EXT_IMG: &str = "usr/bin/qemu-img";
const EXT_LIBS: [&str; 2] = ["lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu"];
const EXT_PLUGINS: &str = "usr/lib/x86_64-linux-gnu/qemu";
const EXT_FIRMWARE: [&str; 2] = ["usr/share/seabios", "usr/share/qemu"];

impl Qemu {
    /// A QEMU binary of the host, found by the caller; `qemu-img` is the one beside it, else
    /// the one in `PATH`.
    pub fn host(binary: impl Into<PathBuf>) -> Qemu {
        let program: PathBuf = binary.into();
        let beside = program.with_file_name("qemu-img");
        let img = if beside.is_file() {
            beside
        } else {
            PathBuf::from("qemu-img")
        };
        Qemu {
            program,
            pre: Vec::new(),
            env: Vec::new(),
            firmware: Vec::new(),
            img: (img, Vec::new()),
        }
    }

    /// The QEMU of the extension mounted at `root`.
    pub fn from_extension(root: &Path) -> Result<Qemu, SpecError> {
        for (what, rel) in [("loader", EXT_LOADER), ("QEMU binary", EXT_BINARY)] {
            let p = root.join(rel);
            if !p.is_file() {
                return Err(SpecError::Missing {
                    what: if what == "loader" {
                        "extension's dynamic loader"
                    } else {
                        "extension's QEMU binary"
                    },
                    path: p,
                });
            }
        }
        let libs = EXT_LIBS
            .iter()
            .map(|d| root.join(d).to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(":");
        Ok(Qemu {
            program: root.join(EXT_LOADER),
            img: (
                root.join(EXT_LOADER),
                vec![
                    "--library-path".into(),
                    libs.clone().into(),
                    root.join(EXT_IMG).into(),
                ],
            ),
            pre: vec![
                "--library-path".into(),
                libs.into(),
                root.join(EXT_BINARY).into(),
            ],
            env: vec![("QEMU_MODULE_DIR".into(), root.join(EXT_PLUGINS).into())],
            firmware: EXT_FIRMWARE.iter().map(|d| root.join(d)).collect(),
        })
    }

    /// A command that runs this QEMU; the caller adds the machine's arguments.
    pub fn command(&self) -> Command {
        let mut c = Command::new(&self.program);
        c.args(&self.pre);
        for dir in &self.firmware {
            c.arg("-L").arg(dir);
        }
        c.envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }

    /// A command that runs this QEMU's `qemu-img`; the caller adds its arguments.
    pub fn img_command(&self) -> Command {
        let mut c = Command::new(&self.img.0);
        c.args(&self.img.1);
        c
    }

    /// The program started (the loader for an extension's QEMU), for error messages.
    pub fn program(&self) -> &Path {
        &self.program
    }
}

/// How QEMU executes guest code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualisation (only when [`crate::accel::probe`] saw a guest run with it).
    Kvm,
    /// QEMU's own translator: slow, always there.
    Tcg,
}

impl Accel {
    /// The name QEMU knows it by.
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// A disk image's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Bytes as they are on the disk.
    Raw,
    /// QEMU's copy-on-write format.
    Qcow2,
}

impl Format {
    fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
        }
    }
}

/// A disk attached as virtio-blk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// The image file.
    pub path: PathBuf,
    /// Its format.
    pub format: Format,
    /// The guest cannot write it (the cloud-init seed, a shared image).
    pub read_only: bool,
}

/// What the guest boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Boot {
    /// A kernel and initrd given to the firmware directly: fastest, no bootloader needed.
    Kernel {
        /// The kernel image (bzImage).
        kernel: PathBuf,
        /// The initrd, if any.
        initrd: Option<PathBuf>,
        /// The kernel command line.
        cmdline: String,
    },
    /// The first disk of [`Spec::disks`], through its own bootloader.
    Disk,
}

/// The guest's network card: a tap the caller attaches to the twin's bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    /// The tap's name; QEMU creates it and it goes away with QEMU.
    pub tap: String,
    /// The card's MAC address, `52:54:00:xx:xx:xx`.
    pub mac: String,
}

/// One virtual machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// Shown in QEMU's process list and logs.
    pub name: String,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// What it boots.
    pub boot: Boot,
    /// Disks in order: the boot disk first when booting from a disk.
    pub disks: Vec<Disk>,
    /// The cloud-init NoCloud seed image ([`crate::seed`]), attached read-only after the disks.
    pub seed: Option<PathBuf>,
    /// The network card, if any.
    pub nic: Option<Nic>,
    /// How guest code runs.
    pub accel: Accel,
    /// The cgroup (v2 directory) the hypervisor process joins as soon as it exists, before
    /// the guest runs or its memory is touched: what the VM reserved holds from the start.
    pub cgroup: Option<PathBuf>,
}

fn name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

impl Spec {
    /// Checks the fields and that every file exists, before anything is started.
    pub fn check(&self) -> Result<(), SpecError> {
        let bad = |m: String| Err(SpecError::Invalid(m));
        if !name_ok(&self.name) {
            return bad(format!(
                "name {:?}: 1 to 64 letters, digits, '-', '_' or '.'",
                self.name
            ));
        }
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return bad(format!("{} vCPUs: from 1 to {MAX_VCPUS}", self.vcpus));
        }
        if self.memory_mib < MIN_MEMORY_MIB || self.memory_mib > (1 << 22) {
            return bad(format!(
                "{} MiB of memory: from {MIN_MEMORY_MIB} MiB to 4 TiB",
                self.memory_mib
            ));
        }
        if let Some(nic) = &self.nic {
            if nic.tap.is_empty() || nic.tap.len() > 15 || !name_ok(&nic.tap) {
                return bad(format!("tap name {:?}: 1 to 15 characters", nic.tap));
            }
            if !mac_ok(&nic.mac) {
                return bad(format!("MAC address {:?}", nic.mac));
            }
        }
        let exists = |what, p: &Path| {
            if p.is_file() {
                Ok(())
            } else {
                Err(SpecError::Missing {
                    what,
                    path: p.to_path_buf(),
                })
            }
        };
        match &self.boot {
            Boot::Kernel {
                kernel,
                initrd,
                cmdline,
            } => {
                exists("kernel", kernel)?;
                if let Some(i) = initrd {
                    exists("initrd", i)?;
                }
                // The firmware copies the command line into a 2 KiB page on x86.
                if cmdline.len() > 2047 || cmdline.contains('\0') {
                    return bad("kernel command line longer than 2047 bytes".into());
                }
            }
            Boot::Disk if self.disks.is_empty() => {
                return bad("boots from a disk but has none".into());
            }
            Boot::Disk => {}
        }
        for d in &self.disks {
            exists("disk", &d.path)?;
        }
        if let Some(s) = &self.seed {
            exists("cloud-init seed", s)?;
        }
        Ok(())
    }
}

fn mac_ok(mac: &str) -> bool {
    let parts: Vec<&str> = mac.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
        // A multicast address cannot be a card's own.
        && u8::from_str_radix(parts[0], 16).is_ok_and(|b| b & 1 == 0)
}

/// A path as a value inside a QEMU option list, where a comma separates options: doubled, a
/// comma in a file name stays part of it instead of adding an option.
fn opt_path(p: &Path) -> OsString {
    let s = p.as_os_str().to_string_lossy().replace(',', ",,");
    OsString::from(s)
}

fn joined(parts: &[&str], tail: OsString) -> OsString {
    let mut s = OsString::from(parts.concat());
    s.push(tail);
    s
}

/// The arguments after the program name that run `spec` with QMP on `qmp_socket`.
pub fn args(spec: &Spec, qmp_socket: &Path) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::new();
    let mut push = |s: &str| a.push(s.into());
    push("-name");
    push(&format!("guest={},debug-threads=on", spec.name));
    push("-machine");
    push(&format!("q35,accel={}", spec.accel.name()));
    push("-cpu");
    // `host` passes the real CPU through; TCG's `max` has every feature it can emulate.
    push(match spec.accel {
        Accel::Kvm => "host",
        Accel::Tcg => "max",
    });
    push("-smp");
    push(&spec.vcpus.to_string());
    push("-m");
    push(&format!("{}M", spec.memory_mib));
    for s in [
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-S",
        "-sandbox",
        "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
        "-chardev",
        "stdio,id=console,signal=off",
        "-serial",
        "chardev:console",
        "-qmp",
    ] {
        push(s);
    }
    let mut qmp = joined(&["unix:"], opt_path(qmp_socket));
    qmp.push(",server=on,wait=off");
    a.push(qmp);
    if let Boot::Kernel {
        kernel,
        initrd,
        cmdline,
    } = &spec.boot
    {
        a.push("-kernel".into());
        a.push(kernel.into());
        if let Some(i) = initrd {
            a.push("-initrd".into());
            a.push(i.into());
        }
        a.push("-append".into());
        a.push(cmdline.into());
    }
    let seed = spec.seed.iter().map(|p| Disk {
        path: p.clone(),
        format: Format::Raw,
        read_only: true,
    });
    for (i, d) in spec.disks.iter().cloned().chain(seed).enumerate() {
        a.push("-drive".into());
        let ro = if d.read_only { ",read-only=on" } else { "" };
        let mut opt = joined(&["file="], opt_path(&d.path));
        opt.push(format!(
            ",if=none,id=disk{i},format={}{ro},cache=none,aio=threads",
            d.format.name()
        ));
        a.push(opt);
        a.push("-device".into());
        let boot = if i == 0 && spec.boot == Boot::Disk {
            ",bootindex=0"
        } else {
            ""
        };
        a.push(format!("virtio-blk-pci,drive=disk{i}{boot}").into());
    }
    if let Some(nic) = &spec.nic {
        a.push("-netdev".into());
        a.push(format!("tap,id=net0,ifname={},script=no,downscript=no", nic.tap).into());
        a.push("-device".into());
        // No option ROM: VMs boot a kernel or a disk, never over the network, and the ROM
        // file would be one more thing the runtime extension must carry.
        a.push(format!("virtio-net-pci,netdev=net0,mac={},romfile=", nic.mac).into());
    }
    a
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn spec(dir: &Path) -> Spec {
        let kernel = dir.join("vmlinuz");
        std::fs::write(&kernel, b"k").unwrap();
        Spec {
            name: "c7-web".into(),
            vcpus: 2,
            memory_mib: 512,
            boot: Boot::Kernel {
                kernel,
                initrd: None,
                cmdline: "console=ttyS0".into(),
            },
            disks: vec![],
            seed: None,
            nic: None,
            accel: Accel::Tcg,
            cgroup: None,
        }
    }

    fn text(a: &[OsString]) -> Vec<String> {
        a.iter().map(|s| s.to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn the_command_line_holds_the_reservation_and_starts_paused_and_sandboxed() {
        let dir = tempfile::tempdir().unwrap();
        let s = spec(dir.path());
        s.check().unwrap();
        let a = text(&args(&s, Path::new("/run/vm/qmp.sock")));
        let after = |flag: &str| a[a.iter().position(|x| x == flag).unwrap() + 1].clone();
        assert_eq!(after("-smp"), "2");
        assert_eq!(after("-m"), "512M");
        assert_eq!(after("-machine"), "q35,accel=tcg");
        assert_eq!(after("-qmp"), "unix:/run/vm/qmp.sock,server=on,wait=off");
        assert!(a.contains(&"-S".to_string()));
        assert!(after("-sandbox").starts_with("on,"));
        assert!(a.contains(&"-nodefaults".to_string()));
    }

    #[test]
    fn a_comma_in_a_path_cannot_add_an_option() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = spec(dir.path());
        let evil = dir.path().join("a,format=qcow2,file=shadow");
        std::fs::write(&evil, b"").unwrap();
        s.disks.push(Disk {
            path: evil,
            format: Format::Raw,
            read_only: false,
        });
        s.check().unwrap();
        let a = text(&args(&s, Path::new("/q,s")));
        let drive = a.iter().find(|x| x.starts_with("file=")).unwrap();
        assert!(
            drive.contains("a,,format=qcow2,,file=shadow,if=none"),
            "{drive}"
        );
        assert!(a.contains(&"unix:/q,,s,server=on,wait=off".to_string()));
    }

    #[test]
    fn the_seed_follows_the_disks_read_only_and_a_boot_disk_comes_first() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = spec(dir.path());
        let (root, seed) = (dir.path().join("root.qcow2"), dir.path().join("seed.img"));
        std::fs::write(&root, b"").unwrap();
        std::fs::write(&seed, b"").unwrap();
        s.boot = Boot::Disk;
        s.disks.push(Disk {
            path: root,
            format: Format::Qcow2,
            read_only: false,
        });
        s.seed = Some(seed);
        s.nic = Some(Nic {
            tap: "vm-c7-web".into(),
            mac: "52:54:00:12:34:56".into(),
        });
        s.check().unwrap();
        let a = text(&args(&s, Path::new("/q")));
        let drives: Vec<&String> = a.iter().filter(|x| x.starts_with("file=")).collect();
        assert!(drives[0].contains("root.qcow2") && drives[0].contains("format=qcow2"));
        assert!(drives[1].contains("seed.img") && drives[1].contains("read-only=on"));
        assert!(a.contains(&"virtio-blk-pci,drive=disk0,bootindex=0".to_string()));
        assert!(
            a.contains(&"virtio-net-pci,netdev=net0,mac=52:54:00:12:34:56,romfile=".to_string())
        );
        assert!(!a.contains(&"-kernel".to_string()));
    }

    #[test]
    fn bad_specs_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        type Change = Box<dyn Fn(&mut Spec)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|s| s.vcpus = 0), "vCPUs"),
            (Box::new(|s| s.vcpus = 1000), "vCPUs"),
            (Box::new(|s| s.memory_mib = 16), "memory"),
            (Box::new(|s| s.memory_mib = u64::MAX), "memory"),
            (Box::new(|s| s.name = "a b".into()), "name"),
            (Box::new(|s| s.name = String::new()), "name"),
            (Box::new(|s| s.boot = Boot::Disk), "has none"),
            (
                Box::new(|s| {
                    s.nic = Some(Nic {
                        tap: "t0".into(),
                        mac: "01:00:00:00:00:01".into(),
                    })
                }),
                "MAC",
            ),
            (
                Box::new(|s| {
                    s.nic = Some(Nic {
                        tap: "a-tap-name-too-long".into(),
                        mac: "52:54:00:00:00:01".into(),
                    })
                }),
                "tap",
            ),
            (
                Box::new(|s| {
                    s.boot = Boot::Kernel {
                        kernel: "/nonexistent/vmlinuz".into(),
                        initrd: None,
                        cmdline: String::new(),
                    }
                }),
                "kernel /nonexistent/vmlinuz does not exist",
            ),
            (
                Box::new(|s| s.seed = Some("/nonexistent/seed".into())),
                "seed",
            ),
        ];
        for (change, want) in cases {
            let mut s = spec(dir.path());
            change(&mut s);
            let err = s.check().unwrap_err().to_string();
            assert!(err.contains(want), "{err} should name {want}");
        }
    }
}
