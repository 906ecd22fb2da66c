//! Root test of the twin networks with the real kernel: every party is a thread in a network
//! namespace the test made (the node, two containers of twin a, one of twin b, and "the
//! outside" behind the node's uplink), so nothing touches the host's own network. Traffic is
//! plain TCP between them:
//! - twin a's containers reach each other;
//! - twin b's container cannot reach twin a's;
//! - a container reaches the outside, which sees the node's address (masquerade);
//! - the outside cannot open a connection to a container, even with a route to it;
//! - a container cannot reach the node itself;
//! - the veth counted the traffic; detaching the last container removes the twin's bridge.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use nix::unistd::Pid;
use provision::twinnet::{Range, TwinNet};

#[path = "support/netns.rs"]
mod netns;
use netns::Ns;

// What only this test asks of a namespace.
impl Ns {
    /// Accepts connections on `port` for ever; each accepted peer's address goes to the
    /// returned channel.
    fn listen(&self, port: u16) -> mpsc::Receiver<SocketAddr> {
        let (tx, rx) = mpsc::channel();
        let l = self.run(move || TcpListener::bind(("0.0.0.0", port)).unwrap());
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { return };
                if tx.send(s.peer_addr().unwrap()).is_err() {
                    return;
                }
            }
        });
        rx
    }

    /// Whether a TCP connection to `to` opens within a second.
    fn connects(&self, to: (Ipv4Addr, u16)) -> bool {
        self.run(move || {
            TcpStream::connect_timeout(&SocketAddr::from(to), Duration::from_secs(1)).is_ok()
        })
    }
}

#[test]
fn twins_reach_their_own_containers_and_the_outside_and_nothing_else() {
    let Ok(()) =
        test_infra::require_root("creates network namespaces, bridges and nf_tables rules")
    else {
        return;
    };
    let Ok(_) = test_infra::require_tool("ip") else {
        return;
    };
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

    let net = std::sync::Arc::new(node.run(|| TwinNet::open(Range::DEFAULT)).unwrap());
    let (a1, a2, b1) = (Ns::new(), Ns::new(), Ns::new());
    let attach = |twin: &'static str, c: &Ns| {
        let (net, pid) = (net.clone(), Pid::from_raw(c.tid));
        node.run(move || net.attach(twin, pid)).unwrap()
    };
    let at_a1 = attach("a", &a1);
    let at_a2 = attach("a", &a2);
    let at_b1 = attach("b", &b1);
    assert_eq!(at_a1.address, Ipv4Addr::new(10, 240, 0, 2));
    assert_eq!(at_a2.address, Ipv4Addr::new(10, 240, 0, 3));
    assert_eq!(at_b1.address, Ipv4Addr::new(10, 240, 1, 2));

    let _a1_in = a1.listen(7000);
    let _b1_in = b1.listen(7000);
    let _node_in = node.listen(7002);
    let outside_in = outside.listen(7001);

    if !a2.connects((at_a1.address, 7000)) {
        for (n, ns) in [("node", &node), ("a1", &a1), ("a2", &a2)] {
            for args in [["-o", "addr"], ["-o", "link"], ["route", "show"]] {
                let out = ns.run(move || Command::new("ip").args(args).output().unwrap());
                eprintln!("{n} {args:?}: {}", String::from_utf8_lossy(&out.stdout));
            }
        }
        panic!("twin a's containers are apart");
    }
    assert!(!b1.connects((at_a1.address, 7000)), "twin b reached twin a");
    assert!(!a1.connects((at_b1.address, 7000)), "twin a reached twin b");
    assert!(
        a1.connects((Ipv4Addr::new(198, 51, 100, 2), 7001)),
        "a container does not reach the outside"
    );
    let seen = outside_in.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(
        seen.ip(),
        Ipv4Addr::new(198, 51, 100, 1),
        "the outside saw the container's own address: no masquerade"
    );
    outside.ip(&["route", "add", "10.240.0.0/12", "via", "198.51.100.1"]);
    assert!(
        !outside.connects((at_a1.address, 7000)),
        "the outside opened a connection to a container"
    );
    for node_addr in [Ipv4Addr::new(10, 240, 0, 1), Ipv4Addr::new(198, 51, 100, 1)] {
        assert!(
            !a1.connects((node_addr, 7002)),
            "a container reached the node at {node_addr}"
        );
    }

    let t = {
        let (net, at) = (net.clone(), at_a1.clone());
        node.run(move || net.traffic(&at)).unwrap()
    };
    assert!(t.tx_bytes > 0 && t.rx_bytes > 0, "{t:?}");
    let total = |net: &std::sync::Arc<TwinNet>| {
        let net = net.clone();
        node.run(move || net.traffic_bytes()).unwrap()
    };
    // The connection to the outside passed twin a's bridge; a2 to a1 stayed inside it.
    let before = total(&net);
    assert!(before > 0);

    // The last container of twin a gone, its bridge goes too; twin b's stays.
    for at in [at_a2, at_a1] {
        let net = net.clone();
        node.run(move || net.detach(&at));
    }
    let links = node.run(|| Command::new("ip").args(["-o", "link"]).output().unwrap());
    let links = String::from_utf8_lossy(&links.stdout).into_owned();
    assert!(!links.contains(" gt0:"), "{links}");
    assert!(links.contains(" gt1:"), "{links}");
    // What the removed bridge counted is kept.
    assert!(total(&net) >= before, "{} < {before}", total(&net));
    // A new twin takes the freed slot.
    let a3 = Ns::new();
    let at = attach("c", &a3);
    assert_eq!(at.address, Ipv4Addr::new(10, 240, 0, 2));
}
