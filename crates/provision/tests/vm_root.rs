//! Root test of a VM on its twin's network, with the real kernel and real QEMU (TCG): the
//! node is a thread in a network namespace the test made, the twins' containers are threads
//! in namespaces of their own, and the VM is the test guest (test_infra::guest). The address
//! is taken before QEMU starts and reaches the guest through its cloud-init seed; QEMU makes
//! the tap, which joins the twin's bridge while the guest is paused:
//! - a container of the same twin reaches the VM's web server;
//! - a container of another twin does not;
//! - the VM's tap is counted like a container's veth;
//! - when the VM is gone and detached, its address and the twin's bridge are given back.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::unistd::Pid;
use provision::twinnet::{Range, TwinNet};

#[path = "support/netns.rs"]
mod netns;
use netns::Ns;

/// An HTTP GET of `/` from inside `ns`; the body, or `None` when nothing answers.
fn get(ns: &Ns, to: Ipv4Addr) -> Option<String> {
    ns.run(move || {
        let mut s =
            TcpStream::connect_timeout(&SocketAddr::from((to, 80)), Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        Some(text)
    })
}

#[test]
fn a_vm_joins_its_twins_network_and_only_that() {
    let Ok(()) = test_infra::require_root("creates network namespaces, bridges and taps") else {
        return;
    };
    let Ok(tools) = test_infra::require_tools(&["ip", "qemu-system-x86_64", "cpio", "depmod"])
    else {
        return;
    };
    let qemu = vmm::Qemu::host(&tools[1]);
    let guest = test_infra::guest::guest().unwrap();
    let node = Ns::new();
    node.ip(&["link", "set", "lo", "up"]);
    let net = Arc::new(node.run(|| TwinNet::open(Range::DEFAULT)).unwrap());

    let lease = {
        let net = net.clone();
        node.run(move || net.reserve_tap("a")).unwrap()
    };
    assert_eq!(lease.address, Ipv4Addr::new(10, 240, 0, 2));
    assert_eq!(lease.gateway, Ipv4Addr::new(10, 240, 0, 1));
    let dir = tempfile::tempdir().unwrap();
    let seed = dir.path().join("seed.img");
    let mac = "52:54:00:f0:00:02";
    vmm::Seed {
        instance_id: "c1-vm-1".into(),
        hostname: "vm".into(),
        ssh_keys: vec![],
        network: Some(vmm::seed::Network {
            mac: mac.into(),
            address: format!("{}/{}", lease.address, lease.prefix),
            gateway: lease.gateway.into(),
            dns: vec![],
        }),
    }
    .write(&seed)
    .unwrap();
    let spec = vmm::Spec {
        name: "c1-vm".into(),
        vcpus: 1,
        memory_mib: 256,
        boot: vmm::Boot::Kernel {
            kernel: guest.kernel.clone(),
            initrd: Some(guest.initrd.clone()),
            cmdline: test_infra::guest::CMDLINE.into(),
        },
        disks: vec![],
        seed: Some(seed),
        nic: Some(vmm::Nic {
            tap: lease.tap.clone(),
            mac: mac.into(),
        }),
        accel: vmm::Accel::Tcg,
        cgroup: None,
    };
    // QEMU is forked from the node's thread: it and its tap live in the node's namespace.
    let work = dir.path().join("vm");
    let (mut vm, out) = node
        .run(move || vmm::Vm::launch(&qemu, &spec, &work))
        .unwrap();
    let console = Arc::new(Mutex::new(String::new()));
    {
        let console = console.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let mut c = console.lock().unwrap();
                c.push_str(&line);
                c.push('\n');
            }
        });
    }
    let attached = {
        let (net, lease) = (net.clone(), lease.clone());
        node.run(move || net.plug_tap(&lease)).unwrap()
    };
    assert_eq!(attached.veth, lease.tap);
    vm.resume().unwrap();
    let t0 = Instant::now();
    while !console.lock().unwrap().contains("guest: ready") {
        assert!(vm.try_wait().is_none(), "{}", console.lock().unwrap());
        assert!(
            t0.elapsed() < Duration::from_secs(240),
            "{}",
            console.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        console
            .lock()
            .unwrap()
            .contains("network=eth0=10.240.0.2/24,gw=10.240.0.1"),
        "{}",
        console.lock().unwrap()
    );

    let (same, other) = (Ns::new(), Ns::new());
    let attach = |twin: &'static str, c: &Ns| {
        let (net, pid) = (net.clone(), Pid::from_raw(c.tid));
        node.run(move || net.attach(twin, pid)).unwrap()
    };
    let at_same = attach("a", &same);
    let at_other = attach("b", &other);
    assert_eq!(at_same.address, Ipv4Addr::new(10, 240, 0, 3));
    let page = get(&same, lease.address).unwrap_or_else(|| {
        panic!(
            "twin a's container does not reach its VM; console:\n{}",
            console.lock().unwrap()
        )
    });
    assert!(
        page.starts_with("HTTP/1.1 200") || page.starts_with("HTTP/1.0 200"),
        "{page}"
    );
    assert!(page.trim_end().ends_with("vm"), "{page}");
    assert!(
        get(&other, lease.address).is_none(),
        "twin b reached twin a's VM"
    );

    // The tap is counted under its name, as a container's veth is.
    let counted = {
        let net = net.clone();
        node.run(move || net.veth_traffic()).unwrap()
    };
    assert!(
        counted.get(&lease.tap).is_some_and(|t| t.bytes() > 0),
        "{counted:?}"
    );

    assert!(matches!(
        vm.shutdown(Duration::from_secs(120)),
        vmm::Stopped::Graceful(_)
    ));
    for a in [attached, at_same, at_other] {
        let net = net.clone();
        node.run(move || net.detach(&a));
    }
    let links = node.run(|| {
        std::process::Command::new("ip")
            .args(["-o", "link"])
            .output()
            .unwrap()
    });
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(!links.contains("gt0"), "twin a's bridge stayed: {links}");
    assert!(!links.contains(&lease.tap), "the tap stayed: {links}");
    // The address is free again: the next lease of twin a takes it.
    let again = {
        let net = net.clone();
        node.run(move || net.reserve_tap("a")).unwrap()
    };
    assert_eq!(again.address, lease.address);
    node.run(move || net.release_tap(&again));
}
