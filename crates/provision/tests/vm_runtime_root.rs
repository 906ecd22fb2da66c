//! Root test of VMs in the provision runtime, with the real kernel, real QEMU (TCG) and a
//! real OCI registry on 127.0.0.1: a twin's deployment holds a VM whose image carries the
//! test guest's kernel and initrd (test_infra::guest). Everything runs in a network
//! namespace the test made, so the twin's bridge and the VM's tap never touch the host.
//! - the VM runs on its twin's network with its address, its console is in its log;
//! - the guest got its host name and key from the seed;
//! - a change restarts it with its root disk kept; dropping it deletes the disk;
//! - an image without a kernel, and a VM the node has no runtime for, fail with the reason;
//! - the guest as a qcow2 disk image in `disk/` boots from its converted raw root disk, and a
//!   root disk smaller than the image is refused;
//! - stop by the power button.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use gridtypes::deployment::Deployment;
use gridtypes::mailbox::{DeploymentState, WorkloadStatus};
use provision::runtime::{Config, Runtime};
use provision::twinnet::Range;
use provision::vm::{ChChoice, QemuSource, VmSetup};
use serde_json::json;
use test_infra::oci::{layer, OciRegistry};

// Only the namespace thread itself is used here, not its id.
#[allow(dead_code)]
#[path = "support/netns.rs"]
mod netns;
use netns::Ns;

const TWIN: &str = "5866666666666666666666666666666666666666666666666666666666666666";
const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBx0dN0wJ8m4vD8pd0t3cLZfmhvbZlmB0wV2fQmBdpzC twin@laptop";

fn deployment(version: u64, workloads: serde_json::Value) -> Deployment {
    let d: Deployment = serde_json::from_value(
        json!({"contract_id": 9, "version": version, "workloads": workloads}),
    )
    .unwrap();
    d.validate().unwrap();
    d
}

fn vm(image: &str, mru: u64, sru: u64) -> serde_json::Value {
    json!({"kind": "vm", "name": "vm1", "image": image, "ssh_keys": [KEY],
           "resources": {"cru": 1, "mru": mru, "sru": sru}})
}

fn find(s: &[WorkloadStatus], name: &str) -> WorkloadStatus {
    s.iter().find(|w| w.name == name).cloned().unwrap()
}

async fn log_until(rt: &Runtime, needle: &str) -> String {
    let t0 = Instant::now();
    loop {
        let text = rt
            .logs(9, "vm1", 1 << 20)
            .await
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(240),
            "no {needle:?} in the VM's log:\n{text}\nstatuses: {:?}",
            rt.statuses(9).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn on_the_node(registry: PathBuf, qemu: PathBuf) {
    let guest = test_infra::guest::guest().unwrap();
    let reg = OciRegistry::start(&registry).unwrap();
    let kernel = std::fs::read(&guest.kernel).unwrap();
    let initrd = std::fs::read(&guest.initrd).unwrap();
    let boot = layer(&[
        ("boot/", b""),
        ("boot/vmlinuz", &kernel),
        ("boot/initrd.img", &initrd),
    ])
    .unwrap();
    let config = test_infra::oci::config(&[], &[]);
    let image = reg
        .push("gridos/testvm:1", vec![boot], config.clone())
        .await
        .unwrap();
    let empty = reg
        .push(
            "gridos/nokernel:1",
            vec![layer(&[("etc/", b"")]).unwrap()],
            config,
        )
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("workloads");
    let mut cfg = Config::new(&root);
    cfg.plain_http = vec![reg.addr.clone()];
    cfg.stop_timeout = Duration::from_secs(2);
    cfg.log_bytes = 64 * 1024;
    cfg.net = Some(Range::DEFAULT);
    cfg.cgroup = None;

    // A node without a VM runtime says so.
    {
        let rt = Runtime::open(cfg.clone()).unwrap();
        let s = rt
            .apply(
                9,
                TWIN,
                &deployment(1, json!([vm(&image, 256 << 20, 8 << 20)])),
            )
            .await;
        let w = find(&s, "vm1");
        assert_eq!(w.state, DeploymentState::Failed);
        assert!(w.reason.unwrap().contains("no VM runtime"));
        rt.shutdown().await;
    }

    cfg.vm = Some(VmSetup {
        qemu: QemuSource::Host(qemu),
        accel: Some(vmm::Accel::Tcg),
        cloud_hypervisor: ChChoice::Off,
        stop_timeout: Duration::from_secs(60),
    });
    let rt = Runtime::open(cfg).unwrap();

    let s = rt
        .apply(
            9,
            TWIN,
            &deployment(2, json!([vm(&empty, 256 << 20, 8 << 20)])),
        )
        .await;
    let w = find(&s, "vm1");
    assert_eq!(w.state, DeploymentState::Failed, "{w:?}");
    assert!(w.reason.unwrap().contains("boot/vmlinuz"));

    let s = rt
        .apply(
            9,
            TWIN,
            &deployment(3, json!([vm(&image, 256 << 20, 8 << 20)])),
        )
        .await;
    let w = find(&s, "vm1");
    assert_eq!(w.state, DeploymentState::Running, "{w:?}");
    assert_eq!(w.address.as_deref(), Some("10.240.0.2"));
    let text = log_until(&rt, "guest: ready").await;
    assert!(
        text.contains("hostname=vm1 ssh_keys=1 network=eth0=10.240.0.2/24,gw=10.240.0.1"),
        "{text}"
    );
    let disk = root.join("vmdisks/c9-vm1.img");
    assert_eq!(std::fs::metadata(&disk).unwrap().len(), 8 << 20);
    // The guest's data on its root disk: written from here, it must survive the restart.
    {
        use std::io::{Seek, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
        f.seek(std::io::SeekFrom::Start(4 << 20)).unwrap();
        f.write_all(b"twin data").unwrap();
    }

    // More memory and disk: the VM is stopped (power button) and started again, same disk.
    let s = rt
        .apply(
            9,
            TWIN,
            &deployment(4, json!([vm(&image, 320 << 20, 16 << 20)])),
        )
        .await;
    assert_eq!(find(&s, "vm1").state, DeploymentState::Running);
    assert_eq!(std::fs::metadata(&disk).unwrap().len(), 16 << 20);
    let bytes = std::fs::read(&disk).unwrap();
    assert_eq!(&bytes[4 << 20..(4 << 20) + 9], b"twin data");
    // The second boot (a changed workload starts with a new log).
    log_until(&rt, "guest: ready").await;

    // A smaller disk than the guest has is refused, not cut.
    let s = rt
        .apply(
            9,
            TWIN,
            &deployment(5, json!([vm(&image, 320 << 20, 8 << 20)])),
        )
        .await;
    let w = find(&s, "vm1");
    assert_eq!(w.state, DeploymentState::Failed, "{w:?}");
    assert!(w.reason.unwrap().contains("cannot shrink"));

    // Dropped from the deployment: stopped, its disk and folder gone.
    rt.apply(9, TWIN, &deployment(6, json!([]))).await;
    assert!(!disk.exists());
    assert!(!root.join("vms/c9-vm1").exists());
    assert!(rt.statuses(9).await.is_empty());

    // The same guest shipped as a qcow2 disk image in disk/ (KubeVirt's containerDisk):
    // converted to the VM's raw root disk, booted by the firmware from it.
    let work = tempfile::tempdir().unwrap();
    let raw = work.path().join("tiny.img");
    test_infra::guest::disk_image(&guest, &raw).unwrap();
    let qcow2 = work.path().join("tiny.qcow2");
    let converted = std::process::Command::new("qemu-img")
        .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&qcow2)
        .status()
        .unwrap();
    assert!(converted.success());
    let raw_len = std::fs::metadata(&raw).unwrap().len();
    let image_layer = layer(&[
        ("disk/", b""),
        ("disk/tiny.qcow2", &std::fs::read(&qcow2).unwrap()),
    ])
    .unwrap();
    let disk_image = reg
        .push(
            "gridos/diskvm:1",
            vec![image_layer],
            test_infra::oci::config(&[], &[]),
        )
        .await
        .unwrap();
    // A root disk smaller than the image's disk: refused with the size, nothing made.
    let s = rt
        .apply(
            9,
            TWIN,
            &deployment(7, json!([vm(&disk_image, 256 << 20, 1 << 20)])),
        )
        .await;
    let w = find(&s, "vm1");
    assert_eq!(w.state, DeploymentState::Failed, "{w:?}");
    let why = w.reason.unwrap();
    assert!(
        why.contains(&format!("reserve at least {raw_len}")),
        "{why}"
    );
    assert!(!disk.exists());
    let s = rt
        .apply(
            9,
            TWIN,
            &deployment(8, json!([vm(&disk_image, 256 << 20, 64 << 20)])),
        )
        .await;
    assert_eq!(find(&s, "vm1").state, DeploymentState::Running, "{s:?}");
    let text = log_until(&rt, "guest: ready").await;
    assert!(
        text.contains("cloud-init: ran instance-id=c9-vm1 hostname=vm1 ssh_keys=1"),
        "{text}"
    );
    let bytes = std::fs::read(&disk).unwrap();
    assert_eq!(
        bytes.len(),
        64 << 20,
        "a raw root disk of the size reserved"
    );
    assert_eq!(&bytes[510..512], &[0x55, 0xaa], "the image's boot sector");
    rt.apply(9, TWIN, &deployment(9, json!([]))).await;
    assert!(!disk.exists());

    // A volume attached to the VM: a disk image file of its size in the volume, the guest's
    // second disk; kept across a change of the VM, deleted with the volume.
    let with_volume = |version: u64, size: u64| {
        let mut v = vm(&image, 256 << 20, 8 << 20);
        v["volumes"] = json!(["data"]);
        deployment(
            version,
            json!([{"kind": "volume", "name": "data", "size": size}, v]),
        )
    };
    let s = rt.apply(9, TWIN, &with_volume(10, 32 << 20)).await;
    assert_eq!(find(&s, "vm1").state, DeploymentState::Running, "{s:?}");
    assert_eq!(find(&s, "data").state, DeploymentState::Running, "{s:?}");
    let text = log_until(&rt, "guest: ready").await;
    assert!(
        text.contains("guest: disks vda:16384 vdb:65536 vdc:"),
        "root disk, volume, seed: {text}"
    );
    let file = root
        .join("volumes/c9-data")
        .join(provision::runtime::VM_VOLUME_FILE);
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 32 << 20);
    // Grown with the volume (the VM restarts), never shrunk.
    let s = rt.apply(9, TWIN, &with_volume(11, 48 << 20)).await;
    assert_eq!(find(&s, "vm1").state, DeploymentState::Running, "{s:?}");
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 48 << 20);
    let s = rt.apply(9, TWIN, &with_volume(12, 16 << 20)).await;
    let w = find(&s, "vm1");
    assert_eq!(w.state, DeploymentState::Failed, "{w:?}");
    assert!(w.reason.unwrap().contains("cannot shrink"));
    rt.apply(9, TWIN, &deployment(13, json!([]))).await;
    assert!(!file.exists() && !disk.exists());
    rt.shutdown().await;
}

#[test]
fn a_twin_runs_a_vm_on_its_network_and_it_keeps_its_disk() {
    let Ok(()) = test_infra::require_root("creates network namespaces, bridges, taps and VMs")
    else {
        return;
    };
    let Ok(tools) = test_infra::require_tools(&[
        "ip",
        "docker-registry",
        "qemu-system-x86_64",
        "cpio",
        "depmod",
        "qemu-img",
        "mkfs.fat",
        "syslinux",
        "mcopy",
    ]) else {
        return;
    };
    let (registry, qemu) = (tools[1].clone(), tools[2].clone());
    let node = Ns::new();
    node.ip(&["link", "set", "lo", "up"]);
    node.run(move || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(on_the_node(registry, qemu))
    });
}
