//! Root test of each contract's traffic count with real containers on twin networks: the
//! runtime, its image registry and its containers all live in a network namespace the test
//! made (the node), with "the outside" in another one behind the node's uplink, so nothing
//! touches the host's own network. Containers fetch a body over HTTP from the outside:
//! - each contract's figure is the sum of its containers' veths, and a container that ended
//!   (its veth gone) still counts;
//! - the figure stays once the contract is removed, and never goes back;
//! - the node's public total counted the same traffic.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use gridtypes::deployment::Deployment;
use gridtypes::mailbox::DeploymentState;
use provision::twinnet::Range;
use provision::{Config, Runtime};
use serde_json::json;
use test_infra::oci::OciRegistry;

/// What the outside serves each request: big enough to stand out from the few bytes of a
/// container's own chatter (neighbour discovery).
const BODY: u64 = 1 << 20;

#[path = "support/netns.rs"]
mod netns;
use netns::Ns;

// What only this test asks of a namespace.
impl Ns {
    /// Answers every HTTP request on `port` with [`BODY`] bytes, for ever.
    fn serve(&self, port: u16) {
        let l = self.run(move || TcpListener::bind(("0.0.0.0", port)).unwrap());
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { return };
                std::thread::spawn(move || {
                    let mut req = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = format!(
                        "HTTP/1.0 200 OK\r\nContent-Length: {BODY}\r\nConnection: close\r\n\r\n"
                    );
                    let _ = s.write_all(head.as_bytes());
                    let _ = s.write_all(&vec![0u8; BODY as usize]);
                });
            }
        });
    }
}

fn deployment(image: &str, contract: u64, containers: &[(&str, &str)]) -> Deployment {
    let workloads: Vec<_> = containers
        .iter()
        .map(|(name, script)| {
            json!({"kind": "container", "name": name, "image": image,
                   "cmd": ["-c", script], "restart": "never",
                   "resources": {"cru": 1, "mru": 64 << 20, "sru": 64 << 20}})
        })
        .collect();
    let d: Deployment = serde_json::from_value(
        json!({"contract_id": contract, "version": 1, "workloads": workloads}),
    )
    .unwrap();
    d.validate().unwrap();
    d
}

/// Waits until container `name` of `contract` is in `state` with `log` in its output.
async fn until(rt: &Runtime, contract: i64, name: &str, state: DeploymentState, log: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = rt.statuses(contract).await;
        let now = s.iter().find(|w| w.name == name).map(|w| w.state);
        let out = rt.logs(contract, name, 4096).await.unwrap_or_default();
        if now == Some(state) && String::from_utf8_lossy(&out).contains(log) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} of {contract}: {s:?}, log {:?}",
            String::from_utf8_lossy(&out)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Everything that runs in the node's namespace.
async fn on_the_node(registry: PathBuf, busybox: PathBuf) {
    let reg = OciRegistry::start(&registry).unwrap();
    let image = reg.push_busybox(&busybox).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::new(&dir.path().join("workloads"));
    cfg.plain_http = vec![reg.addr.clone()];
    cfg.stop_timeout = Duration::from_secs(2);
    cfg.log_bytes = 4096;
    cfg.net = Some(Range::DEFAULT);
    let rt = Runtime::open(cfg).unwrap();
    assert!(rt.contract_traffic().await.unwrap().is_empty());

    let fetch = "wget -q -O /dev/null http://198.51.100.2:7001/ && echo fetched";
    let d7 = deployment(
        &image,
        7,
        &[
            ("stays", &format!("{fetch}; exec sleep 1000")),
            // Ends after its fetch: its veth goes, its bytes must not.
            ("ends", fetch),
        ],
    );
    let d8 = deployment(&image, 8, &[("idle", "exec sleep 1000")]);
    let s = rt.apply(7, "twin-a", &d7).await;
    assert!(
        s.iter().all(|w| w.state == DeploymentState::Running),
        "{s:?}"
    );
    let s = rt.apply(8, "twin-b", &d8).await;
    assert!(
        s.iter().all(|w| w.state == DeploymentState::Running),
        "{s:?}"
    );
    until(&rt, 7, "stays", DeploymentState::Running, "fetched").await;
    // Exited is set after the container was unplugged.
    until(&rt, 7, "ends", DeploymentState::Exited, "fetched").await;

    let counted = rt.contract_traffic().await.unwrap();
    let seven = counted.get(&7).copied().unwrap_or(0);
    let eight = counted.get(&8).copied().unwrap_or(0);
    assert!(seven >= 2 * BODY, "{counted:?}");
    // Its own headers and chatter, not another's body.
    assert!(seven < 3 * BODY, "{counted:?}");
    assert!(eight < BODY / 10, "{counted:?}");
    let public = rt.traffic_bytes().await.unwrap();
    assert!(public >= 2 * BODY, "public {public}, contracts {counted:?}");

    // Removed: its containers and veths are gone, its figure is not.
    rt.remove(7).await;
    let after = rt.contract_traffic().await.unwrap();
    assert!(
        after.get(&7).copied().unwrap_or(0) >= seven,
        "{after:?} after {counted:?}"
    );
    assert!(
        after.get(&8).copied().unwrap_or(0) >= eight,
        "{after:?} after {counted:?}"
    );
    let links = Command::new("ip").args(["-o", "link"]).output().unwrap();
    let links = String::from_utf8_lossy(&links.stdout).into_owned();
    assert_eq!(
        links.matches(" gv").count(),
        1,
        "only 8's veth is left: {links}"
    );
    rt.remove(8).await;
    rt.shutdown().await;
}

#[test]
fn each_contract_counts_its_containers_veths_gone_ones_included() {
    let Ok(()) = test_infra::require_root(
        "creates network namespaces, bridges, nf_tables rules and containers",
    ) else {
        return;
    };
    let Ok(tools) = test_infra::require_tools(&["ip", "docker-registry", "busybox"]) else {
        return;
    };
    let (registry, busybox) = (tools[1].clone(), tools[2].clone());
    let node = Ns::new();
    let outside = Ns::new();
    node.ip(&["link", "set", "lo", "up"]);
    outside.ip(&["link", "set", "lo", "up"]);
    node.ip(&["link", "add", "up0", "type", "veth", "peer", "name", "up1"]);
    node.ip(&["link", "set", "up1", "netns", &outside.tid.to_string()]);
    node.ip(&["addr", "add", "198.51.100.1/24", "dev", "up0"]);
    node.ip(&["link", "set", "up0", "up"]);
    node.ip(&["route", "add", "default", "via", "198.51.100.2"]);
    outside.ip(&["addr", "add", "198.51.100.2/24", "dev", "up1"]);
    outside.ip(&["link", "set", "up1", "up"]);
    outside.serve(7001);

    // The runtime's threads (workers, blocking tasks, netlink threads) are made from the
    // node's thread, so they are all in its namespace; so are the registry and containers.
    node.run(move || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(on_the_node(registry, busybox))
    });
}
