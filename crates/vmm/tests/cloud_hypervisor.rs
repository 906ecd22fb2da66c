//! The driver against a real cloud-hypervisor binary. Not run in CI: no package of Debian 12
//! carries cloud-hypervisor, and it runs guests only with KVM, which does not run Linux
//! guests on this project's machines. Run them where both exist (docs/vms.md):
//!
//! ```text
//! GRIDOS_CLOUD_HYPERVISOR=/path/to/cloud-hypervisor \
//!     cargo test -p vmm --test cloud_hypervisor -- --ignored
//! ```
//!
//! The first two need only the binary and `/dev/kvm`: the VM is created from the spec over
//! the API, booted (its disks, seed and tap made by cloud-hypervisor), paused, resumed and
//! killed after the grace period. The last needs KVM that runs Linux guests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use vmm::{Accel, CloudHypervisor, Nic, Seed, Spec, Stopped, Vm, VmError};

mod common;
use common::{Console, KEY};

fn binary() -> CloudHypervisor {
    let path = std::env::var_os("GRIDOS_CLOUD_HYPERVISOR")
        .expect("GRIDOS_CLOUD_HYPERVISOR names the cloud-hypervisor binary to test");
    CloudHypervisor::new(path, Path::new("/"))
}

/// The test guest under KVM with a seed, an 8 MiB data disk and a NIC.
fn spec(dir: &Path, name: &str, extra: &str) -> Spec {
    let guest = test_infra::guest::guest().expect("building the test guest");
    let seed = dir.join("seed.img");
    Seed {
        instance_id: format!("{name}-1"),
        hostname: name.into(),
        ssh_keys: vec![KEY.into()],
        network: None,
    }
    .write(&seed)
    .unwrap();
    let disk = dir.join("data.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    Spec {
        disks: vec![vmm::Disk {
            path: disk,
            format: vmm::Format::Raw,
            read_only: false,
        }],
        seed: Some(seed),
        nic: Some(Nic {
            tap: "chtap0".into(),
            mac: "52:54:00:0c:48:01".into(),
        }),
        accel: Accel::Kvm,
        ..common::spec(&guest, name, extra)
    }
}

/// Runs `f` in a thread of its own network namespace: the tap cloud-hypervisor makes never
/// touches the host.
fn in_netns(f: impl FnOnce() + Send + 'static) {
    test_infra::require_root("cloud-hypervisor makes a tap").unwrap();
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap();
}

#[test]
#[ignore = "needs cloud-hypervisor: GRIDOS_CLOUD_HYPERVISOR=PATH cargo test -p vmm --test cloud_hypervisor -- --ignored"]
fn the_spec_goes_over_the_api_and_the_vm_is_driven_there() {
    in_netns(|| {
        let ch = binary();
        let version = ch.version(Duration::from_secs(10)).unwrap();
        assert!(version.contains("cloud-hypervisor"), "{version}");
        let dir = tempfile::tempdir().unwrap();
        let s = spec(dir.path(), "chv", "gridos.ignore_powerdown");
        let (mut vm, out) = Vm::launch_cloud_hypervisor(&ch, &s, &dir.path().join("vm")).unwrap();
        let _console = Console::follow(out, "chv");
        assert_eq!(vm.hypervisor(), "cloud-hypervisor");
        let paused = vm.status().unwrap();
        assert_eq!((paused.running, paused.state.as_str()), (false, "paused"));
        // Booted, so its devices are made: the tap is there, for the caller to plug.
        let tap = Command::new("ip")
            .args(["-o", "link", "show", "chtap0"])
            .output()
            .unwrap();
        assert!(tap.status.success(), "no tap: {tap:?}");
        // A process group of its own, as QEMU's.
        let pid = nix::unistd::Pid::from_raw(i32::try_from(vm.pid()).unwrap());
        assert_eq!(nix::unistd::getpgid(Some(pid)).unwrap(), pid);

        vm.resume().unwrap();
        let running = vm.status().unwrap();
        assert_eq!((running.running, running.state.as_str()), (true, "running"));
        let t0 = Instant::now();
        assert_eq!(vm.shutdown(Duration::from_secs(3)), Stopped::Killed);
        assert!(t0.elapsed() >= Duration::from_secs(3));
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
        assert!(!dir.path().join("vm/api.sock").exists());
    });
}

#[test]
#[ignore = "needs cloud-hypervisor: GRIDOS_CLOUD_HYPERVISOR=PATH cargo test -p vmm --test cloud_hypervisor -- --ignored"]
fn a_disk_it_refuses_is_an_error_in_its_words_and_nothing_runs() {
    in_netns(|| {
        let dir = tempfile::tempdir().unwrap();
        let mut s = spec(dir.path(), "chvbad", "");
        let bad = dir.path().join("not-a.qcow2");
        std::fs::write(&bad, vec![0x5au8; 4096]).unwrap();
        s.disks[0] = vmm::Disk {
            path: bad,
            format: vmm::Format::Qcow2,
            read_only: false,
        };
        let err = Vm::launch_cloud_hypervisor(&binary(), &s, &dir.path().join("vm"))
            .err()
            .expect("a garbage qcow2 must not boot");
        let text = err.to_string();
        eprintln!("refused: {text}");
        assert!(
            matches!(err, VmError::Api(_) | VmError::Exited { .. }),
            "{text}"
        );
        assert!(text.contains("cloud-hypervisor"), "{text}");
    });
}

#[test]
#[ignore = "needs cloud-hypervisor and KVM that runs Linux guests (docs/vms.md)"]
fn the_guest_reads_its_seed_and_powers_off_on_the_button() {
    in_netns(|| {
        let dir = tempfile::tempdir().unwrap();
        let s = spec(dir.path(), "chvseed", "");
        let (mut vm, out) =
            Vm::launch_cloud_hypervisor(&binary(), &s, &dir.path().join("vm")).unwrap();
        let console = Console::follow(out, "chvseed");
        vm.resume().unwrap();
        console.wait_for("guest: ready", &mut vm);
        let text = console.text();
        assert!(text.contains("instance-id=chvseed-1"), "{text}");
        assert!(text.contains("guest: disks vda:16384"), "{text}");
        let stopped = vm.shutdown(Duration::from_secs(60));
        assert!(
            matches!(stopped, Stopped::Graceful(status) if status.success()),
            "{stopped:?}"
        );
    });
}
