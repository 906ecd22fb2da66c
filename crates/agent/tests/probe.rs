//! The probe against fake /sys and /proc trees: a node with the disks QEMU gives the e2e test,
//! plus everything the probe must leave out. No host disk is opened.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gridagent::probe::{DiskKind, Probe};
use gridagent::seek::{SeekError, SeekTest};
use gridtypes::GIB;

/// Seek test that answers from a table instead of reading a device.
struct FakeSeek(HashMap<String, Result<Duration, ()>>);

impl SeekTest for FakeSeek {
    fn mean_latency(&self, dev: &Path, _size: u64) -> Result<Duration, SeekError> {
        let name = dev.file_name().unwrap().to_string_lossy().to_string();
        match self.0.get(&name) {
            Some(Ok(d)) => Ok(*d),
            _ => Err(SeekError::TooSmall(dev.to_path_buf())),
        }
    }
}

fn put(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, text).unwrap();
}

fn disk(sys: &Path, name: &str, bytes: u64, rotational: bool) {
    put(
        sys,
        &format!("block/{name}/size"),
        &format!("{}\n", bytes / 512),
    );
    put(
        sys,
        &format!("block/{name}/queue/rotational"),
        if rotational { "1\n" } else { "0\n" },
    );
    put(sys, &format!("block/{name}/removable"), "0\n");
    put(sys, &format!("block/{name}/ro"), "0\n");
}

struct Tree {
    _dir: tempfile::TempDir,
    sys: PathBuf,
    proc: PathBuf,
}

fn qemu_node() -> Tree {
    let dir = tempfile::tempdir().unwrap();
    let sys = dir.path().join("sys");
    let proc = dir.path().join("proc");
    put(&sys, "devices/system/cpu/online", "0-1\n");
    put(
        &proc,
        "meminfo",
        "MemTotal:        2013512 kB\nMemFree:         1800000 kB\n",
    );
    put(
        &proc,
        "cpuinfo",
        "processor\t: 0\nflags\t\t: fpu vme hypervisor lm\n",
    );
    disk(&sys, "sda", 20 * GIB, false);
    disk(&sys, "sdb", 50 * GIB, true);
    // A partition directory inside a disk is not a disk.
    put(&sys, "block/sda/sda1/partition", "1\n");
    // Never storage: loop, ram, zram, CD-ROM, and the boot stick (removable).
    disk(&sys, "loop0", GIB, false);
    disk(&sys, "ram0", GIB, false);
    disk(&sys, "zram0", GIB, false);
    disk(&sys, "sr0", GIB, true);
    disk(&sys, "sdc", 8 * GIB, false);
    put(&sys, "block/sdc/removable", "1\n");
    // An empty slot reports size 0.
    disk(&sys, "sdd", 0, true);
    put(&sys, "class/net/eth0/address", "52:54:00:12:34:56\n");
    fs::create_dir_all(sys.join("class/net/eth0/device")).unwrap();
    put(&sys, "class/net/lo/address", "00:00:00:00:00:00\n");
    put(&sys, "class/net/br0/address", "02:00:00:00:00:01\n");
    put(&sys, "class/dmi/id/product_serial", "QEMU-SERIAL-1\n");
    put(&sys, "class/dmi/id/sys_vendor", "QEMU\n");
    put(
        &sys,
        "class/dmi/id/product_name",
        "Standard PC (Q35 + ICH9, 2009)\n",
    );
    Tree {
        _dir: dir,
        sys,
        proc,
    }
}

fn probe(t: &Tree) -> Probe {
    Probe {
        sys: t.sys.clone(),
        proc: t.proc.clone(),
        dev: t.sys.join("no-dev"),
        addresses: false,
        ..Probe::default()
    }
}

fn fast(names: &[&str]) -> FakeSeek {
    FakeSeek(
        names
            .iter()
            .map(|n| (n.to_string(), Ok(Duration::from_micros(80))))
            .collect(),
    )
}

#[test]
fn qemu_node_is_measured_like_the_e2e_test_expects() {
    let t = qemu_node();
    let hw = probe(&t).hardware_with(&fast(&["sda"])).unwrap();
    assert_eq!(hw.capacity.cru, 2);
    assert_eq!(hw.capacity.mru, 2013512 * 1024);
    assert_eq!(hw.capacity.sru, 20 * GIB);
    assert_eq!(hw.capacity.hru, 50 * GIB);
    assert_eq!(hw.capacity.ipv4, 0);
    let names: Vec<_> = hw.disks.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, vec!["sda", "sdb"]);
    assert_eq!(hw.disks[0].seek_micros, Some(80));
    assert_eq!(hw.serial.as_deref(), Some("QEMU-SERIAL-1"));
    assert!(hw.virtualized);
    assert_eq!(hw.interfaces.len(), 1, "{:?}", hw.interfaces);
    assert_eq!(hw.interfaces[0].name, "eth0");
    assert_eq!(hw.interfaces[0].mac.as_deref(), Some("52:54:00:12:34:56"));
}

#[test]
fn a_non_rotational_disk_that_seeks_slowly_is_an_hdd() {
    let t = qemu_node();
    let seek = FakeSeek(
        [("sda".to_string(), Ok(Duration::from_millis(9)))]
            .into_iter()
            .collect(),
    );
    let hw = probe(&t).hardware_with(&seek).unwrap();
    assert_eq!(hw.disks[0].kind, DiskKind::Hdd);
    assert!(!hw.disks[0].rotational);
    assert_eq!(hw.capacity.sru, 0);
    assert_eq!(hw.capacity.hru, 70 * GIB);
}

#[test]
fn a_failed_seek_test_trusts_the_kernel_flag() {
    let t = qemu_node();
    let hw = probe(&t).hardware_with(&fast(&[])).unwrap();
    assert_eq!(hw.disks[0].kind, DiskKind::Ssd);
    assert_eq!(hw.disks[0].seek_micros, None);
}

#[test]
fn configured_boot_disk_is_skipped() {
    let t = qemu_node();
    let mut p = probe(&t);
    p.skip_disks = vec!["sda".into()];
    let hw = p.hardware_with(&fast(&["sda"])).unwrap();
    assert_eq!(hw.capacity.sru, 0);
    assert_eq!(hw.disks.len(), 1);
}

#[test]
fn bare_metal_without_serial_or_hypervisor() {
    let t = qemu_node();
    put(&t.sys, "class/dmi/id/sys_vendor", "Supermicro\n");
    put(&t.sys, "class/dmi/id/product_name", "X11SSL\n");
    put(
        &t.sys,
        "class/dmi/id/product_serial",
        "To Be Filled By O.E.M.\n",
    );
    put(&t.proc, "cpuinfo", "flags\t\t: fpu vme lm\n");
    let hw = probe(&t).hardware_with(&fast(&["sda"])).unwrap();
    assert!(!hw.virtualized);
    assert_eq!(hw.serial, None);
}

#[test]
fn missing_essentials_are_named_errors() {
    let t = qemu_node();
    fs::remove_file(t.proc.join("meminfo")).unwrap();
    let err = probe(&t).hardware_with(&fast(&[])).unwrap_err();
    assert!(err.to_string().contains("meminfo"), "{err}");
    let t = qemu_node();
    put(&t.sys, "devices/system/cpu/online", "garbage\n");
    let err = probe(&t).hardware_with(&fast(&[])).unwrap_err();
    assert!(err.to_string().contains("online"), "{err}");
}
