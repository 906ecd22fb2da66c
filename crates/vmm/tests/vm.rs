//! The VM driver against real QEMU (TCG) booting a tiny Linux guest (test_infra::guest):
//! started paused, resumed, asked for its status over QMP, its cloud-init seed read by the
//! guest, stopped by the power button, or killed when the guest ignores it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use vmm::seed::Network;
use vmm::{Accel, Boot, Nic, Qemu, Seed, Spec, Stopped, Vm, VmError};

mod common;
use common::{spec, Console, KEY};

/// The QEMU binary, and the guest, unless the requirements are missing (then the gate decides).
fn setup() -> Option<(Qemu, test_infra::guest::Guest)> {
    let tools = test_infra::require_tools(&[
        "qemu-system-x86_64",
        "cpio",
        "depmod",
        "dpkg-deb",
        "apt-get",
    ])
    .ok()?;
    let guest = test_infra::guest::guest().expect("building the test guest");
    Some((Qemu::host(&tools[0]), guest))
}

#[test]
fn a_guest_starts_paused_reads_its_seed_and_powers_off_on_the_button() {
    let Some((qemu, guest)) = setup() else { return };
    let dir = tempfile::tempdir().unwrap();
    let seed_img = dir.path().join("seed.img");
    Seed {
        instance_id: "c7-web-1".into(),
        hostname: "web".into(),
        ssh_keys: vec![KEY.into()],
        network: None,
    }
    .write(&seed_img)
    .unwrap();
    let mut s = spec(&guest, "seeded", "");
    s.seed = Some(seed_img);
    let (mut vm, out) = Vm::launch(&qemu, &s, &dir.path().join("vm")).unwrap();
    let console = Console::follow(out, "seeded");

    let paused = vm.status().unwrap();
    assert!(!paused.running, "{paused:?}");
    assert_eq!(paused.state, "prelaunch");
    // A process group of its own: a SIGTERM to its parent's group (a supervisor stopping the
    // parent) does not end the guest before its power button is pressed.
    let pid = nix::unistd::Pid::from_raw(i32::try_from(vm.pid()).unwrap());
    assert_eq!(nix::unistd::getpgid(Some(pid)).unwrap(), pid);
    std::thread::sleep(Duration::from_millis(300));
    assert!(console.text().is_empty(), "the guest ran before resume");

    vm.resume().unwrap();
    let running = vm.status().unwrap();
    assert!(running.running && running.state == "running", "{running:?}");

    let ran = console.wait_for("cloud-init: ran", &mut vm);
    assert!(ran.contains("instance-id=c7-web-1"), "{ran}");
    assert!(ran.contains("hostname=web"), "{ran}");
    assert!(ran.contains("ssh_keys=1"), "{ran}");
    let key = console.wait_for("cloud-init: key", &mut vm);
    assert!(key.ends_with(KEY), "{key}");
    console.wait_for("guest: ready", &mut vm);

    let stopped = vm.shutdown(Duration::from_secs(120));
    assert!(
        matches!(stopped, Stopped::Graceful(status) if status.success()),
        "{stopped:?}; console:\n{}",
        console.text()
    );
    assert!(console.text().contains("guest: power button"));
    assert!(!dir.path().join("vm/qmp.sock").exists() || vm.status().is_err());
}

#[test]
fn a_guest_that_ignores_the_power_button_is_killed_after_the_grace_period() {
    let Some((qemu, guest)) = setup() else { return };
    let dir = tempfile::tempdir().unwrap();
    let s = spec(&guest, "deaf", "gridos.ignore_powerdown");
    let (mut vm, out) = Vm::launch(&qemu, &s, &dir.path().join("vm")).unwrap();
    let console = Console::follow(out, "deaf");
    vm.resume().unwrap();
    console.wait_for("cloud-init: no seed", &mut vm);
    console.wait_for("guest: ready", &mut vm);
    let pid = vm.pid();
    let t0 = Instant::now();
    assert_eq!(vm.shutdown(Duration::from_secs(3)), Stopped::Killed);
    assert!(t0.elapsed() >= Duration::from_secs(3));
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "QEMU {pid} is still there"
    );
    assert!(!console.text().contains("guest: power button"));
}

#[test]
fn qemu_refusing_a_disk_is_an_error_with_its_words_and_leaves_nothing_running() {
    let Some((qemu, guest)) = setup() else { return };
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("not-a.qcow2");
    std::fs::write(&bad, vec![0x5au8; 4096]).unwrap();
    let mut s = spec(&guest, "baddisk", "");
    s.disks.push(vmm::Disk {
        path: bad,
        format: vmm::Format::Qcow2,
        read_only: false,
    });
    let err = Vm::launch(&qemu, &s, &dir.path().join("vm"))
        .err()
        .expect("a garbage qcow2 must not start");
    let text = err.to_string();
    assert!(matches!(err, VmError::Exited { .. }), "{text}");
    assert!(text.contains("qcow2") || text.contains("Image"), "{text}");
}

#[test]
fn a_missing_kernel_is_refused_before_qemu_starts() {
    let dir = tempfile::tempdir().unwrap();
    let s = Spec {
        name: "nokernel".into(),
        vcpus: 1,
        memory_mib: 128,
        boot: Boot::Kernel {
            kernel: dir.path().join("vmlinuz"),
            initrd: None,
            cmdline: String::new(),
        },
        disks: vec![],
        seed: None,
        nic: None,
        accel: Accel::Tcg,
        cgroup: None,
    };
    // Not even a QEMU binary is needed: the spec is checked first.
    let err = Vm::launch(&Qemu::host("/nonexistent/qemu"), &s, &dir.path().join("vm"))
        .err()
        .unwrap();
    assert!(err.to_string().contains("kernel"), "{err}");
    assert!(
        !dir.path().join("vm").exists(),
        "nothing is made for a bad spec"
    );
}

#[test]
fn the_kvm_probe_sector_runs_under_tcg() {
    let Ok(qemu) = test_infra::require_tool("qemu-system-x86_64") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let code = vmm::accel::run_probe(
        &Qemu::host(qemu),
        dir.path(),
        Accel::Tcg,
        Duration::from_secs(60),
    );
    assert_eq!(code, Some(vmm::accel::PROBE_EXIT_CODE));
}

#[test]
fn the_guest_takes_its_address_from_the_seed_on_a_tap() {
    let Some((qemu, guest)) = setup() else { return };
    let Ok(()) = test_infra::require_root("creates a network namespace and a tap in it") else {
        return;
    };
    // Everything in a thread of its own network namespace: the tap never touches the host.
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let ip = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().unwrap();
            assert!(out.status.success(), "ip {args:?}: {:?}", out);
        };
        ip(&["link", "set", "lo", "up"]);
        let dir = tempfile::tempdir().unwrap();
        let mac = "52:54:00:0a:14:05";
        let seed_img = dir.path().join("seed.img");
        Seed {
            instance_id: "c8-net-1".into(),
            hostname: "net".into(),
            ssh_keys: vec![KEY.into()],
            network: Some(Network {
                mac: mac.into(),
                address: "10.20.0.5/24".into(),
                gateway: "10.20.0.1".parse().unwrap(),
                dns: vec![],
            }),
        }
        .write(&seed_img)
        .unwrap();
        let mut s = spec(&guest, "net", "");
        s.seed = Some(seed_img);
        s.nic = Some(Nic {
            tap: "vmtap0".into(),
            mac: mac.into(),
        });
        let (mut vm, out) = Vm::launch(&qemu, &s, &dir.path().join("vm")).unwrap();
        let console = Console::follow(out, "net");
        // Paused: the tap is there to be wired before the guest runs.
        ip(&["addr", "add", "10.20.0.1/24", "dev", "vmtap0"]);
        ip(&["link", "set", "vmtap0", "up"]);
        vm.resume().unwrap();
        let ran = console.wait_for("cloud-init: ran", &mut vm);
        assert!(
            ran.contains("network=eth0=10.20.0.5/24,gw=10.20.0.1"),
            "{ran}"
        );
        // The guest pings its gateway, the tap's address here: the link works both ways.
        console.wait_for("guest: gateway 10.20.0.1 answers", &mut vm);
        console.wait_for("guest: ready", &mut vm);
        assert!(matches!(
            vm.shutdown(Duration::from_secs(120)),
            Stopped::Graceful(_)
        ));
    })
    .join()
    .unwrap();
}
