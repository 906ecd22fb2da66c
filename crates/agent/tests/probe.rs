//! The probe against fake /sys and /proc trees: a node with the disks QEMU gives the e2e test,
//! plus everything the probe must leave out, and the storage service's measurement file. No
//! host disk is opened.

// A failed unwrap, expect or assertion is a failed test: the workspace's deny of them is
// for product code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use agent::probe::Probe;
use disks::{Kind, Measured};
use gridtypes::GIB;

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
    measured: PathBuf,
    pools: PathBuf,
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
    let measured = dir.path().join("run/disks.json");
    let pools = dir.path().join("run/pools.json");
    Tree {
        _dir: dir,
        sys,
        proc,
        measured,
        pools,
    }
}

/// Writes what storage would have measured: `latency_us` per name (`None`: rotational, unmeasured).
fn storage_measured(t: &Tree, disks: &[(&str, Option<u64>)]) {
    let all = disks::scan(&t.sys.join("block")).unwrap();
    let m: Vec<Measured> = disks
        .iter()
        .map(|(name, lat)| {
            let d = all.iter().find(|d| d.name == *name).unwrap().clone();
            Measured::new(d, lat.map(Duration::from_micros))
        })
        .collect();
    disks::measured::write(&t.measured, &m).unwrap();
    storage_pools(t, &m);
}

/// Writes the pools storage would have made: one on each of `disks`.
fn storage_pools(t: &Tree, disks: &[Measured]) {
    let pools: Vec<disks::Pool> = disks
        .iter()
        .map(|m| disks::Pool {
            id: format!("id-{}", m.disk.name),
            disk: m.disk.name.clone(),
            kind: m.kind,
            mountpoint: format!("/pools/{}", m.disk.name).into(),
            size_bytes: m.disk.size_bytes,
            cache: false,
        })
        .collect();
    disks::pools::write(&t.pools, &pools).unwrap();
}

fn probe(t: &Tree) -> Probe {
    Probe {
        sys: t.sys.clone(),
        proc: t.proc.clone(),
        measured: t.measured.clone(),
        pools: t.pools.clone(),
        addresses: false,
        ..Probe::default()
    }
}

#[test]
fn qemu_node_is_measured_like_the_e2e_test_expects() {
    let t = qemu_node();
    storage_measured(&t, &[("sda", Some(80)), ("sdb", None)]);
    let hw = probe(&t).hardware().unwrap();
    assert_eq!(hw.capacity.cru, 2);
    assert_eq!(hw.capacity.mru, 2013512 * 1024);
    assert_eq!(hw.capacity.sru, 20 * GIB);
    assert_eq!(hw.capacity.hru, 50 * GIB);
    assert_eq!(hw.capacity.ipv4, 0);
    let names: Vec<_> = hw.disks.iter().map(|d| d.disk.name.as_str()).collect();
    assert_eq!(names, vec!["sda", "sdb"]);
    assert_eq!(hw.disks[0].latency_us, Some(80));
    assert_eq!(hw.serial.as_deref(), Some("QEMU-SERIAL-1"));
    assert!(hw.virtualized);
    assert_eq!(hw.interfaces.len(), 1, "{:?}", hw.interfaces);
    assert_eq!(hw.interfaces[0].name, "eth0");
    assert_eq!(hw.interfaces[0].mac.as_deref(), Some("52:54:00:12:34:56"));
}

#[test]
fn a_non_rotational_disk_that_seeks_slowly_is_an_hdd() {
    let t = qemu_node();
    storage_measured(&t, &[("sda", Some(9000)), ("sdb", None)]);
    let hw = probe(&t).hardware().unwrap();
    assert_eq!(hw.disks[0].kind, Kind::Hdd);
    assert_eq!(hw.disks[0].disk.rotational, Some(false));
    assert_eq!(hw.capacity.sru, 0);
    assert_eq!(hw.capacity.hru, 70 * GIB);
}

#[test]
fn a_disk_storage_has_not_measured_is_not_counted_yet() {
    let t = qemu_node();
    let hw = probe(&t).hardware().unwrap();
    assert!(hw.disks.is_empty());
    assert_eq!((hw.capacity.sru, hw.capacity.hru), (0, 0));
    // Hot-added: storage publishes it, the next probe counts it.
    storage_measured(&t, &[("sda", Some(80))]);
    let hw = probe(&t).hardware().unwrap();
    assert_eq!((hw.capacity.sru, hw.capacity.hru), (20 * GIB, 0));
    // A measurement of another disk under the same name (size differs) is not used.
    put(&t.sys, "block/sda/size", &format!("{}\n", 40 * GIB / 512));
    let hw = probe(&t).hardware().unwrap();
    assert_eq!(hw.capacity.sru, 0);
}

#[test]
fn a_disk_without_a_pool_is_not_sold() {
    let t = qemu_node();
    storage_measured(&t, &[("sda", Some(80)), ("sdb", None)]);
    // Storage could not make sdb a pool (it holds data and gridos.wipe=empty).
    let m = disks::measured::read(&t.measured).unwrap();
    storage_pools(&t, &m[..1]);
    let hw = probe(&t).hardware().unwrap();
    assert_eq!((hw.capacity.sru, hw.capacity.hru), (20 * GIB, 0));
    // No pool at all (storage has not run, or a cache on tmpfs): nothing is sold.
    fs::remove_file(&t.pools).unwrap();
    let hw = probe(&t).hardware().unwrap();
    assert_eq!((hw.capacity.sru, hw.capacity.hru), (0, 0));
    assert!(hw.disks.is_empty());
}

#[test]
fn configured_boot_disk_is_skipped() {
    let t = qemu_node();
    storage_measured(&t, &[("sda", Some(80)), ("sdb", None)]);
    let mut p = probe(&t);
    p.skip_disks = vec!["sda".into()];
    let hw = p.hardware().unwrap();
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
    let hw = probe(&t).hardware().unwrap();
    assert!(!hw.virtualized);
    assert_eq!(hw.serial, None);
}

#[test]
fn missing_essentials_are_named_errors() {
    let t = qemu_node();
    fs::remove_file(t.proc.join("meminfo")).unwrap();
    let err = probe(&t).hardware().unwrap_err();
    assert!(err.to_string().contains("meminfo"), "{err}");
    let t = qemu_node();
    put(&t.sys, "devices/system/cpu/online", "garbage\n");
    let err = probe(&t).hardware().unwrap_err();
    assert!(err.to_string().contains("online"), "{err}");
}
