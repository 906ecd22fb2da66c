//! cloud-hypervisor, used instead of QEMU when its binary is on the node and KVM runs guests
//! (it has no software emulation). The process starts with nothing but its API socket; the
//! VM is described to it over the API ([`config`], pure, unit-tested) and driven there
//! ([`crate::chv_api`]). It boots a kernel directly; a disk only through a firmware file
//! (rust-hypervisor-firmware or edk2's `CLOUDHV.fd`), so without one disk images stay with
//! QEMU ([`CloudHypervisor::can_boot`]). See docs/vms.md.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::qemu::{Boot, Spec, SpecError};

/// The binary's name, in `PATH` and in the VM-runtime extension.
pub const PROGRAM: &str = "cloud-hypervisor";
/// Where an extension carries it (a static binary: no loader needed).
const EXT_BINARY: &str = "usr/bin/cloud-hypervisor";
/// Where a firmware that boots disks may be, in an extension or on the host.
const FIRMWARE: [&str; 2] = [
    "usr/share/cloud-hypervisor/hypervisor-fw",
    "usr/share/cloud-hypervisor/CLOUDHV.fd",
];

/// One cloud-hypervisor binary, and the firmware beside it if there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudHypervisor {
    program: PathBuf,
    firmware: Option<PathBuf>,
}

impl CloudHypervisor {
    /// The binary at `program`; a firmware is looked for under `root` (`/` on the host).
    pub fn new(program: impl Into<PathBuf>, root: &Path) -> CloudHypervisor {
        CloudHypervisor {
            program: program.into(),
            firmware: FIRMWARE.iter().map(|f| root.join(f)).find(|p| p.is_file()),
        }
    }

    /// The one an extension mounted at `root` carries, if it carries one.
    pub fn from_extension(root: &Path) -> Option<CloudHypervisor> {
        let p = root.join(EXT_BINARY);
        p.is_file().then(|| CloudHypervisor::new(p, root))
    }

    /// The one in `PATH`, if there is one.
    pub fn from_path() -> Option<CloudHypervisor> {
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .map(|d| d.join(PROGRAM))
            .find(|p| p.is_file())
            .map(|p| CloudHypervisor::new(p, Path::new("/")))
    }

    /// The binary.
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// The firmware that boots disks, if one was found.
    pub fn firmware(&self) -> Option<&Path> {
        self.firmware.as_deref()
    }

    /// Whether it can boot `boot`: a kernel always, a disk only through a firmware.
    pub fn can_boot(&self, boot: &Boot) -> bool {
        match boot {
            Boot::Kernel { .. } => true,
            Boot::Disk => self.firmware.is_some(),
        }
    }

    /// What `--version` prints, when the binary runs at all within `limit`: the check that
    /// a file named cloud-hypervisor is one before a VM depends on it.
    pub fn version(&self, limit: Duration) -> Result<String, std::io::Error> {
        let mut child = Command::new(&self.program)
            .arg("--version")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| hosttools::spawn_error(&self.program.to_string_lossy(), e))?;
        match hosttools::wait_within(&mut child, limit)? {
            Some(status) if status.success() => {}
            Some(status) => {
                return Err(std::io::Error::other(format!(
                    "{} --version: {status}",
                    self.program.display()
                )))
            }
            None => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("{} --version did not answer", self.program.display()),
                ))
            }
        }
        let mut out = String::new();
        if let Some(o) = child.stdout.take() {
            use std::io::Read;
            o.take(4096).read_to_string(&mut out)?;
        }
        Ok(out.trim().to_string())
    }

    /// The command that starts it with its API on `socket` and nothing else: the VM comes
    /// through the API.
    pub fn command(&self, socket: &Path) -> Command {
        let mut c = Command::new(&self.program);
        let mut api = OsString::from("path=");
        api.push(socket);
        c.arg("--api-socket").arg(api);
        c
    }
}

fn text(p: &Path) -> Result<String, SpecError> {
    p.to_str().map(str::to_string).ok_or_else(|| {
        SpecError::Invalid(format!(
            "{} is not UTF-8: cloud-hypervisor's API takes paths as JSON strings",
            p.display()
        ))
    })
}

/// The `vm.create` body for `spec`: its vCPUs, memory, payload, disks (the seed last,
/// read-only), the NIC on its tap, the serial console on the process's standard output and
/// the virtio console off. `firmware` boots a [`Boot::Disk`] spec; without it such a spec
/// is refused.
pub fn config(spec: &Spec, firmware: Option<&Path>) -> Result<serde_json::Value, SpecError> {
    use serde_json::json;
    spec.check()?;
    let payload = match &spec.boot {
        Boot::Kernel {
            kernel,
            initrd,
            cmdline,
        } => {
            let mut p = json!({ "kernel": text(kernel)?, "cmdline": cmdline });
            if let Some(i) = initrd {
                p["initramfs"] = text(i)?.into();
            }
            p
        }
        Boot::Disk => match firmware {
            Some(f) => json!({ "firmware": text(f)? }),
            None => {
                return Err(SpecError::Invalid(
                    "cloud-hypervisor boots a disk only through a firmware, and none is here"
                        .into(),
                ))
            }
        },
    };
    let mut disks = Vec::new();
    for d in &spec.disks {
        disks.push(json!({
            "path": text(&d.path)?,
            "readonly": d.read_only,
            "image_type": match d.format {
                crate::qemu::Format::Raw => "Raw",
                crate::qemu::Format::Qcow2 => "Qcow2",
            },
        }));
    }
    if let Some(s) = &spec.seed {
        disks.push(json!({ "path": text(s)?, "readonly": true, "image_type": "Raw" }));
    }
    let mut c = json!({
        "cpus": { "boot_vcpus": spec.vcpus, "max_vcpus": spec.vcpus },
        "memory": { "size": spec.memory_mib << 20 },
        "payload": payload,
        "disks": disks,
        "serial": { "mode": "Tty" },
        "console": { "mode": "Off" },
        "rng": { "src": "/dev/urandom" },
    });
    if let Some(nic) = &spec.nic {
        // No address: the tap is plugged into the twin's bridge, which has the gateway's.
        c["net"] = json!([{ "tap": nic.tap, "mac": nic.mac }]);
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::qemu::{Accel, Disk, Format, Nic};

    fn spec(dir: &Path) -> Spec {
        let kernel = dir.join("vmlinuz");
        let initrd = dir.join("initrd");
        let seed = dir.join("seed.img");
        let root = dir.join("root.img");
        for f in [&kernel, &initrd, &seed, &root] {
            std::fs::write(f, b"x").unwrap();
        }
        Spec {
            name: "c7-web".into(),
            vcpus: 3,
            memory_mib: 256,
            boot: Boot::Kernel {
                kernel,
                initrd: Some(initrd),
                cmdline: "console=ttyS0".into(),
            },
            disks: vec![Disk {
                path: root,
                format: Format::Raw,
                read_only: false,
            }],
            seed: Some(seed),
            nic: Some(Nic {
                tap: "vm-c7-web".into(),
                mac: "52:54:00:12:34:56".into(),
            }),
            accel: Accel::Kvm,
            cgroup: None,
        }
    }

    #[test]
    fn the_config_holds_the_reservation_the_disks_and_the_nic() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(&spec(dir.path()), None).unwrap();
        assert_eq!(c["cpus"]["boot_vcpus"], 3);
        assert_eq!(c["cpus"]["max_vcpus"], 3);
        assert_eq!(c["memory"]["size"], 256u64 << 20);
        assert!(c["payload"]["kernel"]
            .as_str()
            .unwrap()
            .ends_with("vmlinuz"));
        assert!(c["payload"]["initramfs"]
            .as_str()
            .unwrap()
            .ends_with("initrd"));
        assert_eq!(c["payload"]["cmdline"], "console=ttyS0");
        let disks = c["disks"].as_array().unwrap();
        assert_eq!(disks.len(), 2);
        assert_eq!(disks[0]["readonly"], false);
        assert!(disks[1]["path"].as_str().unwrap().ends_with("seed.img"));
        assert_eq!(disks[1]["readonly"], true);
        assert_eq!(c["net"][0]["tap"], "vm-c7-web");
        assert_eq!(c["net"][0]["mac"], "52:54:00:12:34:56");
        assert!(c["net"][0].get("ip").is_none());
        assert_eq!(c["serial"]["mode"], "Tty");
        assert_eq!(c["console"]["mode"], "Off");
    }

    #[test]
    fn a_disk_boots_only_through_a_firmware() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = spec(dir.path());
        s.boot = Boot::Disk;
        let e = config(&s, None).unwrap_err().to_string();
        assert!(e.contains("firmware"), "{e}");
        let fw = dir.path().join("hypervisor-fw");
        std::fs::write(&fw, b"fw").unwrap();
        let c = config(&s, Some(&fw)).unwrap();
        assert!(c["payload"]["firmware"]
            .as_str()
            .unwrap()
            .ends_with("hypervisor-fw"));
        assert!(c["payload"].get("kernel").is_none());

        let ch = CloudHypervisor::new("/nonexistent/cloud-hypervisor", dir.path());
        assert!(ch.can_boot(&spec(dir.path()).boot) && !ch.can_boot(&Boot::Disk));
        let fw_dir = dir.path().join("usr/share/cloud-hypervisor");
        std::fs::create_dir_all(&fw_dir).unwrap();
        std::fs::write(fw_dir.join("CLOUDHV.fd"), b"fw").unwrap();
        let ch = CloudHypervisor::new("/nonexistent/cloud-hypervisor", dir.path());
        assert!(ch.can_boot(&Boot::Disk));
    }

    #[test]
    fn a_comma_in_the_socket_path_is_refused_before_anything_starts() {
        let dir = tempfile::tempdir().unwrap();
        let ch = CloudHypervisor::new("/nonexistent/cloud-hypervisor", dir.path());
        let at = dir.path().join("a,b");
        let e = crate::Vm::launch_cloud_hypervisor(&ch, &spec(dir.path()), &at)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("comma"), "{e}");
        assert!(!at.exists());
    }

    #[test]
    fn a_bad_spec_is_refused_before_any_config() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = spec(dir.path());
        s.vcpus = 0;
        assert!(config(&s, None).unwrap_err().to_string().contains("vCPUs"));
    }

    #[test]
    fn a_binary_that_is_not_there_is_named_with_its_package_hint() {
        let dir = tempfile::tempdir().unwrap();
        let ch = CloudHypervisor::new(dir.path().join("cloud-hypervisor"), dir.path());
        let e = ch.version(Duration::from_secs(5)).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
        assert!(CloudHypervisor::from_extension(dir.path()).is_none());
    }
}
