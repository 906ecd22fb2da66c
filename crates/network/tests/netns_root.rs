//! Root test: two network namespaces made by the test, a veth pair between them, dnsmasq
//! as the DHCP server in one and `gridos-network` in the other. Asserts address, default
//! route, resolv.conf (a temp path), the IPv6 RA sysctl, retry while no server answers,
//! renewal at T1, then a static
//! config. Nothing touches the host's own network. Needs root, `ip` and dnsmasq: without them
//! it fails, unless `GRIDOS_TEST_SKIP` allows the skip (crates/test-infra).

// A failed unwrap, expect or assertion is a failed test: the workspace's deny of them is
// for product code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct Lab {
    server: String,
    client: String,
    children: Vec<Child>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in [&self.server, &self.client] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn service(lab: &mut Lab, dir: &Path, tag: &str, extra: &[&str]) -> PathBuf {
    let log = dir.join(format!("{tag}.log"));
    let child = Command::new("ip")
        .args(["netns", "exec", &lab.client])
        .arg(env!("CARGO_BIN_EXE_gridos-network"))
        .args(["--iface", "vc0", "--cmdline", "/dev/null"])
        .arg("--resolv-conf")
        .arg(dir.join("resolv.conf"))
        .arg("--run-dir")
        .arg(dir.join(tag))
        .args(extra)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    lab.children.push(child);
    log
}

fn ready(dir: &Path) -> bool {
    Command::new(env!("CARGO_BIN_EXE_gridos-network"))
        .arg("--check")
        .arg("--run-dir")
        .arg(dir)
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn dhcp_then_static_in_namespaces() {
    let Ok(()) = test_infra::require_root("creates network namespaces and a veth pair") else {
        return;
    };
    let Ok(tools) = test_infra::require_tools(&["ip", "dnsmasq"]) else {
        return;
    };
    let dnsmasq = &tools[1];
    let pid = std::process::id();
    let mut lab = Lab {
        server: format!("gridos-dhcps-{pid}"),
        client: format!("gridos-dhcpc-{pid}"),
        children: vec![],
    };
    let (s, c) = (lab.server.clone(), lab.client.clone());
    ip(&["netns", "add", &s]);
    ip(&["netns", "add", &c]);
    ip(&[
        "-n", &s, "link", "add", "vs0", "type", "veth", "peer", "name", "vc0", "netns", &c,
    ]);
    ip(&["-n", &s, "addr", "add", "10.77.0.1/24", "dev", "vs0"]);
    ip(&["-n", &s, "link", "set", "vs0", "up"]);
    ip(&["-n", &c, "link", "set", "lo", "up"]);

    let dir = tempfile::tempdir().unwrap();
    // The service starts before any DHCP server exists: it must say so and keep retrying.
    let started = Instant::now();
    let log = service(&mut lab, dir.path(), "dhcp", &[]);
    wait_for("the no-offer warning", Duration::from_secs(20), || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("no DHCP offer; retrying"))
    });
    eprintln!("no-offer warning after {:?}", started.elapsed());

    let dns_log = dir.path().join("dnsmasq.log");
    let server = Command::new("ip")
        .args(["netns", "exec", &s])
        .arg(dnsmasq)
        .args([
            "--no-daemon",
            "--conf-file=/dev/null",
            "--port=0",
            "--interface=vs0",
            "--bind-interfaces",
            "--dhcp-authoritative",
            "--no-ping",
            "--dhcp-range=10.77.0.50,10.77.0.60,255.255.255.0,2m",
            "--dhcp-option=option:router,10.77.0.1",
            "--dhcp-option=option:dns-server,10.77.0.53",
            "--dhcp-option=option:T1,6",
            "--dhcp-option=option:T2,100",
            "--log-dhcp",
        ])
        .arg(format!(
            "--dhcp-leasefile={}",
            dir.path().join("leases").display()
        ))
        .arg(format!(
            "--pid-file={}",
            dir.path().join("dnsmasq.pid").display()
        ))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&dns_log).unwrap())
        .spawn()
        .unwrap();
    lab.children.push(server);

    wait_for("dnsmasq", Duration::from_secs(10), || {
        std::fs::read_to_string(&dns_log).is_ok_and(|l| l.contains("DHCP, IP range"))
    });
    wait_for("DHCP readiness", Duration::from_secs(40), || {
        ready(&dir.path().join("dhcp"))
    });
    eprintln!("DHCP bound after {:?}", started.elapsed());
    let addr = ip(&["-n", &c, "-4", "addr", "show", "dev", "vc0"]);
    assert!(addr.contains("inet 10.77.0."), "{addr}");
    let route = ip(&["-n", &c, "-4", "route", "show", "default"]);
    assert!(route.contains("via 10.77.0.1 dev vc0"), "{route}");
    let resolv = std::fs::read_to_string(dir.path().join("resolv.conf")).unwrap();
    assert!(resolv.contains("nameserver 10.77.0.53"), "{resolv}");
    let ra = Command::new("ip")
        .args([
            "netns",
            "exec",
            &c,
            "cat",
            "/proc/sys/net/ipv6/conf/vc0/accept_ra",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&ra.stdout).trim(), "2");

    // T1 is 6 s: the lease is renewed by a unicast REQUEST.
    wait_for("lease renewal", Duration::from_secs(30), || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("DHCP lease renewed"))
    });
    eprintln!("renewed after {:?}", started.elapsed());
    eprintln!(
        "--- gridos-network log\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    for mut ch in lab.children.drain(..) {
        let _ = ch.kill();
        let _ = ch.wait();
    }

    // Static config replaces DHCP.
    ip(&["-n", &c, "addr", "flush", "dev", "vc0"]);
    service(
        &mut lab,
        dir.path(),
        "static",
        &["--net", "vc0:10.77.0.9/24:10.77.0.1"],
    );
    wait_for("static readiness", Duration::from_secs(20), || {
        ready(&dir.path().join("static"))
    });
    let addr = ip(&["-n", &c, "-4", "addr", "show", "dev", "vc0"]);
    assert!(addr.contains("inet 10.77.0.9/24"), "{addr}");
    let route = ip(&["-n", &c, "-4", "route", "show", "default"]);
    assert!(route.contains("via 10.77.0.1 dev vc0"), "{route}");
}
