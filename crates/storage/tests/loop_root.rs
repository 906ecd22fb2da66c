//! Root test: sparse files as loop devices, made and removed by the test itself.
//! Checks partitioning, mkfs, mount, re-use after a "reboot", and that the `empty`
//! policy refuses a disk with a filesystem signature. Needs root, loop devices and the
//! partitioning tools: without them it fails, unless `GRIDOS_TEST_SKIP` allows the skip
//! (crates/test-infra).

// A failed unwrap, expect or assertion is a failed test: the workspace's deny of them is
// for product code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

struct Loops {
    devs: Vec<String>,
    mounts: Vec<PathBuf>,
}

impl Drop for Loops {
    fn drop(&mut self) {
        for m in &self.mounts {
            let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
        }
        for d in &self.devs {
            let _ = Command::new("losetup").args(["-d", d]).status();
        }
    }
}

fn attach(img: &Path) -> String {
    let out = Command::new("losetup")
        .args(["-P", "-f", "--show"])
        .arg(img)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn mounted(target: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let t = target.to_string_lossy();
    info.lines().any(|l| l.split(' ').nth(4) == Some(&*t))
}

fn storage(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_gridos-storage"))
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "gridos-storage {args:?} failed");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn ext_magic(path: &Path) -> [u8; 2] {
    let mut f = std::fs::File::open(path).unwrap();
    f.seek(SeekFrom::Start(0x438)).unwrap();
    let mut m = [0u8; 2];
    f.read_exact(&mut m).unwrap();
    m
}

#[test]
fn cache_on_loop_devices() {
    let Ok(()) = test_infra::require_root("attaches loop devices, partitions and mounts them")
    else {
        return;
    };
    let Ok(()) = test_infra::require_device("/dev/loop-control", "loop devices") else {
        return;
    };
    let Ok(_) = test_infra::require_tools(&["losetup", "sfdisk", "partx", "mkfs.btrfs", "wipefs"])
    else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let blank = t.path().join("blank.img");
    let data = t.path().join("data.img");
    for img in [&blank, &data] {
        let f = std::fs::File::create(img).unwrap();
        f.set_len(256 << 20).unwrap();
    }
    {
        // An ext4-looking superblock: the `empty` policy must refuse this disk.
        let mut f = std::fs::OpenOptions::new().write(true).open(&data).unwrap();
        f.seek(SeekFrom::Start(0x438)).unwrap();
        f.write_all(&[0x53, 0xEF]).unwrap();
    }
    let mut loops = Loops {
        devs: vec![],
        mounts: vec![],
    };
    let a = attach(&blank);
    loops.devs.push(a.clone());
    let b = attach(&data);
    loops.devs.push(b.clone());
    let an = a.trim_start_matches("/dev/").to_string();
    let bn = b.trim_start_matches("/dev/").to_string();
    let mnt = t.path().join("cache");
    loops.mounts.push(mnt.clone());
    let run = t.path().join("run");
    let mnt_s = mnt.to_string_lossy().into_owned();
    let run_s = run.to_string_lossy().into_owned();
    let measured_s = run.join("disks.json").to_string_lossy().into_owned();
    let pools_s = run.join("pools.json").to_string_lossy().into_owned();
    let pools_dir_s = t.path().join("pools").to_string_lossy().into_owned();
    let both = format!("{an},{bn}");
    let base = [
        "--mountpoint",
        &mnt_s,
        "--run-dir",
        &run_s,
        "--cmdline",
        "/dev/null",
        "--measured",
        &measured_s,
        "--pools",
        &pools_s,
        "--pools-dir",
        &pools_dir_s,
        "--settle-quiet-ms",
        "300",
    ];

    // First boot: the blank disk gets the cache; the data disk is left alone.
    let mut args = base.to_vec();
    args.extend(["--wipe", "empty", "--only-devices", &both]);
    let s = storage(&args);
    assert_eq!(s["backing"], "created");
    assert_eq!(s["device"], format!("/dev/{an}p1"));
    assert!(mounted(&mnt));
    assert_eq!(ext_magic(&data), [0x53, 0xEF], "data disk was touched");
    // The cache is the only pool: the data disk is neither formatted nor sold.
    let pools = disks::pools::read(&run.join("pools.json")).unwrap();
    assert_eq!(pools.len(), 1, "{pools:?}");
    assert!(pools[0].cache && pools[0].disk == an && pools[0].mountpoint == mnt);
    std::fs::write(mnt.join("identity"), "node-key").unwrap();
    let ok = Command::new(env!("CARGO_BIN_EXE_gridos-storage"))
        .args(["--check", "--run-dir", &run_s])
        .status()
        .unwrap();
    assert!(ok.success());
    nix::mount::umount(&mnt).unwrap();

    // "Reboot": detach and re-attach the disk; the cache partition is found and mounted,
    // not formatted, even under none.
    let st = Command::new("losetup").args(["-d", &a]).status().unwrap();
    assert!(st.success());
    loops.devs.retain(|d| *d != a);
    let a = attach(&blank);
    loops.devs.push(a.clone());
    let an = a.trim_start_matches("/dev/").to_string();
    let both = format!("{an},{bn}");
    // The seek test works on a real block device (O_DIRECT, aligned buffer).
    let lat = disks::seek::measure(Path::new(&a), 256 << 20).unwrap();
    assert!(lat < std::time::Duration::from_secs(1), "{lat:?}");
    let mut args = base.to_vec();
    args.extend(["--wipe", "none", "--only-devices", &both]);
    let s = storage(&args);
    assert_eq!(s["backing"], "reused");
    assert_eq!(
        std::fs::read_to_string(mnt.join("identity")).unwrap(),
        "node-key"
    );
    nix::mount::umount(&mnt).unwrap();

    // Only the data disk: `empty` refuses it, the cache goes to tmpfs with a marker.
    let mut args = base.to_vec();
    args.extend(["--wipe", "empty", "--only-devices", &bn]);
    let s = storage(&args);
    assert_eq!(s["backing"], "tmpfs");
    assert!(run.join("storage-tmpfs").exists());
    assert_eq!(ext_magic(&data), [0x53, 0xEF], "data disk was touched");
    nix::mount::umount(&mnt).unwrap();

    // `all` may wipe it.
    let mut args = base.to_vec();
    args.extend(["--wipe", "all", "--only-devices", &bn]);
    let s = storage(&args);
    assert_eq!(s["backing"], "created");
    assert!(!run.join("storage-tmpfs").exists());
    assert_ne!(ext_magic(&data), [0x53, 0xEF]);
}

/// A gridos USB stick as `dd` leaves it: a GPT made for a small image (its backup header in
/// the middle of the stick) with the `gridos-boot` partition, then free space. The cache goes
/// there only with `gridos.cache_on_stick=yes`, beside the boot partition, which keeps its
/// bytes; it is found again at the next boot; the stick is never counted as capacity.
#[test]
fn cache_on_the_boot_stick_only_when_asked() {
    let Ok(()) = test_infra::require_root("attaches a loop device, partitions and mounts it")
    else {
        return;
    };
    let Ok(()) = test_infra::require_device("/dev/loop-control", "loop devices") else {
        return;
    };
    let Ok(_) = test_infra::require_tools(&["losetup", "sfdisk", "partx", "mkfs.btrfs"]) else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let stick = t.path().join("stick.img");
    std::fs::File::create(&stick)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let script = "label: gpt\nstart=2048, size=16384, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=\"gridos-boot\"\n";
    let mut sf = Command::new("sfdisk")
        .args(["--quiet", "--no-reread", "--no-tell-kernel"])
        .arg(&stick)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    sf.stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(sf.wait().unwrap().success());
    let boot_bytes = b"the boot partition's bytes".repeat(1000);
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&stick)
            .unwrap();
        f.seek(SeekFrom::Start(1 << 20)).unwrap();
        f.write_all(&boot_bytes).unwrap();
        // Written to a 256 MiB stick.
        f.set_len(256 << 20).unwrap();
    }
    let read_boot = || {
        let mut f = std::fs::File::open(&stick).unwrap();
        f.seek(SeekFrom::Start(1 << 20)).unwrap();
        let mut b = vec![0u8; boot_bytes.len()];
        f.read_exact(&mut b).unwrap();
        b
    };
    let mut loops = Loops {
        devs: vec![],
        mounts: vec![],
    };
    let dev = attach(&stick);
    loops.devs.push(dev.clone());
    let name = dev.trim_start_matches("/dev/").to_string();
    let mnt = t.path().join("cache");
    loops.mounts.push(mnt.clone());
    let run = t.path().join("run");
    let (mnt_s, run_s) = (
        mnt.to_string_lossy().into_owned(),
        run.to_string_lossy().into_owned(),
    );
    let measured = run.join("disks.json");
    let measured_s = measured.to_string_lossy().into_owned();
    let pools_s = run.join("pools.json").to_string_lossy().into_owned();
    let pools_dir_s = t.path().join("pools").to_string_lossy().into_owned();
    let cmdline = t.path().join("cmdline");
    let cmdline_s = cmdline.to_string_lossy().into_owned();
    let args = [
        "--mountpoint",
        &mnt_s,
        "--run-dir",
        &run_s,
        "--cmdline",
        &cmdline_s,
        "--measured",
        &measured_s,
        "--pools",
        &pools_s,
        "--pools-dir",
        &pools_dir_s,
        "--settle-quiet-ms",
        "300",
        "--only-devices",
        &name,
    ];

    // Not asked (also under wipe=all): the stick is left alone, the cache is on tmpfs.
    std::fs::write(&cmdline, "quiet gridos.wipe=all\n").unwrap();
    let s = storage(&args);
    assert_eq!(s["backing"], "tmpfs");
    nix::mount::umount(&mnt).unwrap();
    assert!(!Path::new(&format!("/dev/{name}p2")).exists());

    // Asked: the cache goes in the free space, the boot partition keeps its bytes.
    std::fs::write(&cmdline, "quiet gridos.cache_on_stick=yes\n").unwrap();
    let s = storage(&args);
    assert_eq!(s["backing"], "created", "{s}");
    assert_eq!(s["device"], format!("/dev/{name}p2"));
    assert_eq!(read_boot(), boot_bytes, "the boot partition was touched");
    let measured_disks: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&measured).unwrap()).unwrap();
    assert!(
        !measured_disks.to_string().contains(&name),
        "the stick is counted as capacity: {measured_disks}"
    );
    std::fs::write(mnt.join("identity"), "node-key").unwrap();
    nix::mount::umount(&mnt).unwrap();

    // The next boot finds it again.
    let s = storage(&args);
    assert_eq!(s["backing"], "reused", "{s}");
    assert_eq!(
        std::fs::read_to_string(mnt.join("identity")).unwrap(),
        "node-key"
    );
    nix::mount::umount(&mnt).unwrap();
    assert_eq!(read_boot(), boot_bytes);
}

/// Sets what the kernel says of a loop device's rotation, as a disk's firmware would.
fn set_rotational(dev: &str, rotational: bool) {
    let name = dev.trim_start_matches("/dev/");
    std::fs::write(
        format!("/sys/block/{name}/queue/rotational"),
        if rotational { "1" } else { "0" },
    )
    .unwrap();
}

/// Three blank disks, two SSDs and an HDD: the cache goes on an SSD, and each other disk
/// becomes a pool of its own kind, mounted under the pools folder by its UUID. At the next
/// boot, under `none`, every pool is found again with the same UUID and its data, whatever
/// the disks are called then; a pool's disk that goes away is not listed.
#[test]
fn every_other_disk_becomes_a_pool() {
    let Ok(()) = test_infra::require_root("attaches loop devices, partitions and mounts them")
    else {
        return;
    };
    let Ok(()) = test_infra::require_device("/dev/loop-control", "loop devices") else {
        return;
    };
    let Ok(_) = test_infra::require_tools(&["losetup", "sfdisk", "partx", "mkfs.btrfs"]) else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let imgs: Vec<PathBuf> = ["ssd0", "ssd1", "hdd"]
        .iter()
        .map(|n| t.path().join(format!("{n}.img")))
        .collect();
    for img in &imgs {
        std::fs::File::create(img)
            .unwrap()
            .set_len(256 << 20)
            .unwrap();
    }
    let run = t.path().join("run");
    let mnt = t.path().join("cache");
    let pools_dir = t.path().join("pools");
    let mut loops = Loops {
        devs: vec![],
        mounts: vec![],
    };
    // Attached in this order, so that the device names differ from boot to boot.
    let boot = |loops: &mut Loops, order: &[usize], wipe: &str| {
        let mut names = vec![String::new(); imgs.len()];
        for &i in order {
            let dev = attach(&imgs[i]);
            set_rotational(&dev, i == 2);
            loops.devs.push(dev.clone());
            names[i] = dev.trim_start_matches("/dev/").to_string();
        }
        let only = names
            .iter()
            .filter(|n| !n.is_empty())
            .cloned()
            .collect::<Vec<_>>()
            .join(",");
        let (measured, pools_file) = (run.join("disks.json"), run.join("pools.json"));
        let args = [
            "--mountpoint",
            mnt.to_str().unwrap(),
            "--run-dir",
            run.to_str().unwrap(),
            "--cmdline",
            "/dev/null",
            "--measured",
            measured.to_str().unwrap(),
            "--pools",
            pools_file.to_str().unwrap(),
            "--pools-dir",
            pools_dir.to_str().unwrap(),
            "--settle-quiet-ms",
            "300",
            "--wipe",
            wipe,
            "--only-devices",
            &only,
        ];
        let state = storage(&args);
        let pools = disks::pools::read(&run.join("pools.json")).unwrap();
        for p in &pools {
            loops.mounts.push(p.mountpoint.clone());
        }
        (names, state, pools)
    };
    let shutdown = |loops: &mut Loops| {
        for m in loops.mounts.drain(..) {
            let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        }
        for d in loops.devs.drain(..) {
            assert!(Command::new("losetup")
                .args(["-d", &d])
                .status()
                .unwrap()
                .success());
        }
    };

    let (names, state, pools) = boot(&mut loops, &[0, 1, 2], "empty");
    assert_eq!(state["backing"], "created", "{state}");
    assert_eq!(pools.len(), 3, "{pools:?}");
    let cache = &pools[0];
    assert!(cache.cache && cache.mountpoint == mnt && cache.kind == disks::Kind::Ssd);
    let ssd_pool = pools
        .iter()
        .find(|p| !p.cache && p.kind == disks::Kind::Ssd)
        .expect("an SSD pool");
    let hdd_pool = pools
        .iter()
        .find(|p| p.kind == disks::Kind::Hdd)
        .expect("an HDD pool");
    assert_eq!(hdd_pool.disk, names[2]);
    for p in [ssd_pool, hdd_pool] {
        assert_eq!(p.mountpoint, pools_dir.join(&p.id));
        assert!(mounted(&p.mountpoint), "{p:?}");
        // 256 MiB less the GPT and btrfs's own reserve.
        assert!(
            p.size_bytes > 200 << 20 && p.size_bytes <= 256 << 20,
            "{p:?}"
        );
        std::fs::write(p.mountpoint.join("kept"), &p.id).unwrap();
    }
    let (ssd_id, hdd_id) = (ssd_pool.id.clone(), hdd_pool.id.clone());
    shutdown(&mut loops);

    // The next boot: other device names, a policy that formats nothing.
    let (_, state, again) = boot(&mut loops, &[2, 1, 0], "none");
    assert_eq!(state["backing"], "reused", "{state}");
    assert_eq!(again.len(), 3, "{again:?}");
    for id in [&ssd_id, &hdd_id] {
        let p = again.iter().find(|p| &p.id == id).expect("the pool again");
        assert_eq!(
            std::fs::read_to_string(p.mountpoint.join("kept")).unwrap(),
            *id
        );
    }
    shutdown(&mut loops);

    // Without the HDD, its pool is not listed (and so not sold).
    let (_, state, pools) = boot(&mut loops, &[1, 0], "none");
    assert_eq!(pools.len(), 2, "{state}");
    assert!(pools.iter().all(|p| p.id != hdd_id));
}
