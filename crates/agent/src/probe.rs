//! What the node has: CPUs, memory, disks, interfaces, DMI serial, virtualisation.
//!
//! Every path is read under an injectable root (`sys`, `proc`, `dev`), so unit tests run
//! the same code against a fake tree and never touch the host's disks.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use disks::{Kind, Measured};
use gridtypes::payload::{MAX_INTERFACES, MAX_TEXT};
use gridtypes::{Interface, Resources};

/// Why the probe could not measure something it must know.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// A file the probe needs could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file was read but its content makes no sense.
    #[error("cannot parse {path}: {what}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What was expected.
        what: String,
    },
}

/// Everything the agent tells the registry about the hardware.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Hardware {
    /// Raw capacity (memory and disks in bytes).
    pub capacity: Resources,
    /// Disks counted in `capacity`, as storage measured them.
    pub disks: Vec<Measured>,
    /// Network interfaces with a device behind them.
    pub interfaces: Vec<Interface>,
    /// DMI product serial, if the firmware has a meaningful one.
    pub serial: Option<String>,
    /// True inside a hypervisor.
    pub virtualized: bool,
}

/// Where and how to probe.
#[derive(Debug, Clone)]
pub struct Probe {
    /// sysfs root (`/sys`).
    pub sys: PathBuf,
    /// procfs root (`/proc`).
    pub proc: PathBuf,
    /// The storage service's disk measurements ([`disks::measured`]).
    pub measured: PathBuf,
    /// The storage service's pools ([`disks::pools`]): only a disk holding one is sold.
    pub pools: PathBuf,
    /// Disks never counted: the boot medium named by configuration.
    pub skip_disks: Vec<String>,
    /// Whether to ask the kernel for interface addresses (`getifaddrs`); off in unit tests.
    pub addresses: bool,
}

impl Default for Probe {
    fn default() -> Self {
        Probe {
            sys: PathBuf::from("/sys"),
            proc: PathBuf::from("/proc"),
            measured: PathBuf::from(disks::measured::MEASURED_FILE),
            pools: PathBuf::from(disks::pools::POOLS_FILE),
            skip_disks: Vec::new(),
            addresses: true,
        }
    }
}

/// Firmware strings that mean "this is a virtual machine".
const HYPERVISOR_VENDORS: &[&str] = &[
    "qemu",
    "kvm",
    "vmware",
    "virtualbox",
    "innotek",
    "xen",
    "bochs",
    "parallels",
    "virtual machine",
    "cloud hypervisor",
    "amazon ec2",
    "google compute engine",
];

/// Placeholders firmware vendors put where a serial should be.
const NO_SERIAL: &[&str] = &[
    "",
    "not specified",
    "to be filled by o.e.m.",
    "default string",
    "system serial number",
    "0",
    "none",
];

fn read(path: &Path) -> Result<String, ProbeError> {
    fs::read_to_string(path).map_err(|source| ProbeError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn read_opt(path: &Path) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

fn clip(s: &str) -> String {
    let mut out: String = s.chars().filter(|c| !c.is_control()).collect();
    while out.len() > MAX_TEXT {
        out.pop();
    }
    out
}

/// Counts the CPUs in a kernel CPU list such as `0-3,6,8-9`.
pub fn count_cpu_list(list: &str) -> Option<u64> {
    let list = list.trim();
    if list.is_empty() {
        return Some(0);
    }
    let mut n = 0u64;
    for part in list.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let a: u64 = a.trim().parse().ok()?;
                let b: u64 = b.trim().parse().ok()?;
                if b < a {
                    return None;
                }
                n += b - a + 1;
            }
            None => {
                part.trim().parse::<u64>().ok()?;
                n += 1;
            }
        }
    }
    Some(n)
}

/// Reads `MemTotal` (bytes) from `/proc/meminfo` text.
pub fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut words = line.split_whitespace().skip(1);
    let value: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => value.checked_mul(1024),
        None => Some(value),
        Some(_) => None,
    }
}

impl Probe {
    /// Logical CPUs online.
    pub fn cru(&self) -> Result<u64, ProbeError> {
        let path = self.sys.join("devices/system/cpu/online");
        let text = read(&path)?;
        match count_cpu_list(&text) {
            Some(n) if n > 0 => Ok(n),
            _ => Err(ProbeError::Parse {
                path,
                what: format!("a CPU list, got {:?}", text.trim()),
            }),
        }
    }

    /// Total memory in bytes (the OS reserve is applied by the farming formula, not here).
    pub fn mru(&self) -> Result<u64, ProbeError> {
        let path = self.proc.join("meminfo");
        let text = read(&path)?;
        mem_total(&text).ok_or_else(|| ProbeError::Parse {
            path,
            what: "a MemTotal line in kB".into(),
        })
    }

    /// Whole disks worth counting, each as the storage service measured it.
    ///
    /// The agent never runs its own seek test: one measurement per disk (storage's) decides
    /// both where the cache goes and what is sold. A disk storage has not measured yet (it
    /// appeared a moment ago) is counted once storage has published it, and only if it holds
    /// a storage pool (the cache partition is one): a disk storage may not format cannot hold
    /// a twin's bytes, so selling it would sell nothing.
    pub fn disks(&self) -> Result<Vec<Measured>, ProbeError> {
        let dir = self.sys.join("block");
        let present = disks::scan(&dir).map_err(|e| ProbeError::Parse {
            path: dir.clone(),
            what: svclog::error_chain(&e),
        })?;
        let measured = disks::measured::read(&self.measured).unwrap_or_else(|e| {
            tracing::warn!(
                error = &e as &dyn std::error::Error,
                "disk measurements unreadable; counting no disk"
            );
            Vec::new()
        });
        let pools = disks::pools::read(&self.pools).unwrap_or_else(|e| {
            tracing::warn!(
                error = &e as &dyn std::error::Error,
                "storage pools unreadable; counting no disk"
            );
            Vec::new()
        });
        let mut disks = Vec::new();
        for disk in present {
            if let Some(why) = disks::skip_reason(&disk, &self.skip_disks, None) {
                tracing::debug!(disk = %disk.name, why, "not counted");
                continue;
            }
            match measured
                .iter()
                .find(|m| m.disk.name == disk.name && m.disk.size_bytes == disk.size_bytes)
            {
                Some(m) if pools.iter().any(|p| p.disk == disk.name) => disks.push(m.clone()),
                Some(_) => {
                    tracing::info!(disk = %disk.name, "holds no storage pool; not counted")
                }
                None => {
                    tracing::info!(disk = %disk.name, "not measured by storage yet; not counted")
                }
            }
        }
        Ok(disks)
    }

    /// Network interfaces backed by a device (loopback and virtual links are left out).
    pub fn interfaces(&self) -> Vec<Interface> {
        let dir = self.sys.join("class/net");
        let Ok(entries) = fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n != "lo" && dir.join(n).join("device").exists())
            .collect();
        names.sort();
        names.truncate(MAX_INTERFACES);
        let mut addrs = if self.addresses {
            addresses()
        } else {
            BTreeMap::new()
        };
        names
            .into_iter()
            .map(|name| {
                let mac = read_opt(&dir.join(&name).join("address"))
                    .filter(|m| !m.is_empty())
                    .map(|m| clip(&m));
                let mut ips = addrs.remove(&name).unwrap_or_default();
                ips.truncate(MAX_INTERFACES);
                Interface {
                    name: clip(&name),
                    mac,
                    ips,
                }
            })
            .collect()
    }

    /// DMI product serial, or None for empty and placeholder values.
    pub fn serial(&self) -> Option<String> {
        let s = read_opt(&self.sys.join("class/dmi/id/product_serial"))?;
        if NO_SERIAL.contains(&s.to_ascii_lowercase().as_str()) {
            return None;
        }
        Some(clip(&s))
    }

    /// True when DMI names a hypervisor or the CPU has the hypervisor flag.
    pub fn virtualized(&self) -> bool {
        let dmi = self.sys.join("class/dmi/id");
        let firmware = ["sys_vendor", "product_name", "board_vendor", "bios_vendor"]
            .iter()
            .filter_map(|f| read_opt(&dmi.join(f)))
            .any(|v| {
                let v = v.to_ascii_lowercase();
                HYPERVISOR_VENDORS.iter().any(|h| v.contains(h))
            });
        let cpu_flag = read_opt(&self.proc.join("cpuinfo")).is_some_and(|c| {
            c.lines()
                .filter(|l| l.starts_with("flags"))
                .any(|l| l.split_whitespace().any(|w| w == "hypervisor"))
        });
        firmware || cpu_flag
    }

    /// Probes everything.
    pub fn hardware(&self) -> Result<Hardware, ProbeError> {
        let disks = self.disks()?;
        let sum = |k: Kind| {
            disks
                .iter()
                .filter(|d| d.kind == k)
                .map(|d| d.disk.size_bytes)
                .sum()
        };
        let capacity = Resources {
            cru: self.cru()?,
            mru: self.mru()?,
            sru: sum(Kind::Ssd),
            hru: sum(Kind::Hdd),
            ipv4: 0,
        };
        Ok(Hardware {
            capacity,
            interfaces: self.interfaces(),
            serial: self.serial(),
            virtualized: self.virtualized(),
            disks,
        })
    }
}

/// Addresses per interface in CIDR notation, from `getifaddrs`.
fn addresses() -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let Ok(list) = nix::ifaddrs::getifaddrs() else {
        return out;
    };
    for ifa in list {
        let (Some(addr), Some(mask)) = (ifa.address, ifa.netmask) else {
            continue;
        };
        let cidr = if let (Some(a), Some(m)) = (addr.as_sockaddr_in(), mask.as_sockaddr_in()) {
            format!("{}/{}", a.ip(), m.ip().to_bits().count_ones())
        } else if let (Some(a), Some(m)) = (addr.as_sockaddr_in6(), mask.as_sockaddr_in6()) {
            format!("{}/{}", a.ip(), m.ip().to_bits().count_ones())
        } else {
            continue;
        };
        out.entry(ifa.interface_name).or_default().push(clip(&cidr));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(count_cpu_list("0"), Some(1));
        assert_eq!(count_cpu_list("0-3\n"), Some(4));
        assert_eq!(count_cpu_list("0-3,6,8-9"), Some(7));
        assert_eq!(count_cpu_list("3-1"), None);
        assert_eq!(count_cpu_list("x"), None);
    }

    #[test]
    fn meminfo() {
        let text = "MemTotal:        2030000 kB\nMemFree:  100 kB\n";
        assert_eq!(mem_total(text), Some(2_030_000 * 1024));
        assert_eq!(mem_total("MemFree: 1 kB"), None);
        assert_eq!(mem_total("MemTotal: lots kB"), None);
    }
}
