//! Twin networks on the node: one bridge per twin, a veth pair per container, addresses from
//! the twin's own /24, egress through NAT, and no path between two twins.
//!
//! Each twin that runs something here gets a slot `i` in the node's range (10.240.0.0/12 by
//! default: 4096 twins): bridge `gt<i>` with the /24's first address as its gateway.
//! A container's `eth0` is one end of a veth pair whose other end (`gv<n>`) is a port of its
//! twin's bridge, so the twin's containers reach each other through the bridge without the
//! node's IP stack. Everything else is routed by the node and passes one nf_tables table
//! (`gridos-twins`, see [`rules`]):
//! - a packet routed from one twin bridge to another is dropped: twins never meet;
//! - a connection from outside to a container is dropped; replies to the container's own
//!   connections pass;
//! - packets to the node itself from a twin bridge are dropped: a tenant cannot talk to the
//!   node's own services;
//! - what leaves for the outside is masqueraded behind the node's address.
//!
//! Each container's veth counts what the container sent and received, its twin's internal
//! traffic included; the twin bridges' own interfaces count only what passes the node's IP
//! stack (see [`TwinNet::traffic_bytes`]). A container's namespace is held open from
//! [`TwinNet::attach`] to [`TwinNet::detach`]: otherwise it, and with it the veth and its
//! counters, would vanish with the container's last process, before the counters are read for
//! the last time.
//!
//! Netlink sockets belong to the network namespace of the thread that opens them, so each
//! operation runs on a thread of its own: in the node's namespace for bridges and veths, and
//! after `setns(2)` into the container's namespace to set up `eth0` there.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::sync::Mutex;

use futures_util::TryStreamExt;
use nix::unistd::Pid;
use rtnetlink::packet_route::link::{InfoBridge, LinkAttribute, LinkMessage};
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder};

/// The nf_tables table that keeps twins apart.
pub const TABLE: &str = "gridos-twins";
/// Twin bridges are named this and the twin's slot.
const BRIDGE_PREFIX: &str = "gt";
/// The node's end of a container's veth pair.
const VETH_PREFIX: &str = "gv";
/// The container's end, until it is renamed `eth0` inside the container.
const PEER_PREFIX: &str = "gp";

/// Why a twin network could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A netlink request failed.
    #[error("{what}: {source}")]
    Netlink {
        /// What was being done.
        what: String,
        /// The kernel's answer.
        source: rtnetlink::Error,
    },
    /// The firewall table could not be installed.
    #[error("installing the twin firewall")]
    Firewall(#[from] nft::NftError),
    /// Entering the container's namespace, a thread or a sysctl.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Every slot or address is taken.
    #[error("{0}")]
    Full(String),
}

fn netlink(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetError {
    let what = what.into();
    move |source| NetError::Netlink { what, source }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NetError {
    let what = what.into();
    move |source| NetError::Io { what, source }
}

/// The range twin networks are cut from: a /12 or smaller, each twin a /24 of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    base: u32,
    slots: u32,
}

impl Range {
    /// 10.240.0.0/12: private, away from the 10.0.x.x and 192.168.x.x of farm LANs, room for
    /// 4096 twins per node.
    pub const DEFAULT: Range = Range {
        base: u32::from_be_bytes([10, 240, 0, 0]),
        slots: 1 << 12,
    };

    /// Parses `a.b.c.d/len` with `len` from 8 to 24.
    pub fn parse(s: &str) -> Result<Range, String> {
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a.b.c.d/len"))?;
        let addr: Ipv4Addr = addr.parse().map_err(|e| format!("{s:?}: {e}"))?;
        let len: u32 = len.parse().map_err(|e| format!("{s:?}: {e}"))?;
        if !(8..=24).contains(&len) {
            return Err(format!(
                "{s:?}: the prefix must be /8 to /24 (each twin takes a /24)"
            ));
        }
        let base = u32::from(addr);
        let mask = u32::MAX << (32 - len);
        if base & !mask != 0 {
            return Err(format!("{s:?} has host bits set"));
        }
        Ok(Range {
            base,
            slots: 1 << (24 - len),
        })
    }

    /// The range's network address and prefix length.
    pub fn network(self) -> (Ipv4Addr, u8) {
        (
            Ipv4Addr::from(self.base),
            24 - self.slots.trailing_zeros() as u8,
        )
    }

    fn subnet(self, slot: u32) -> u32 {
        self.base + (slot << 8)
    }
}

/// A container plugged into its twin's network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// The twin (its key, hex).
    pub twin: String,
    /// The container's address.
    pub address: Ipv4Addr,
    /// The node's end of the veth pair.
    pub veth: String,
}

/// A VM's place on its twin's network, taken before QEMU starts: the guest learns its
/// address from its cloud-init seed, so the address is fixed first; QEMU then creates the tap
/// by this name and [`TwinNet::plug_tap`] makes it a port of the twin's bridge. The tap has
/// the veths' prefix, so it is counted, cleaned up and firewalled as a container's veth is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapLease {
    /// The twin (its key, hex).
    pub twin: String,
    /// The tap's name, for QEMU's `-netdev tap,ifname=`.
    pub tap: String,
    /// The guest's address.
    pub address: Ipv4Addr,
    /// The twin bridge's address: the guest's default route.
    pub gateway: Ipv4Addr,
    /// The twin network's prefix length.
    pub prefix: u8,
    slot: u32,
}

/// Traffic of one container, as its veth counted it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Bytes the container received.
    pub rx_bytes: u64,
    /// Bytes the container sent.
    pub tx_bytes: u64,
}

impl Traffic {
    /// Both ways together (saturating).
    pub fn bytes(self) -> u64 {
        self.rx_bytes.saturating_add(self.tx_bytes)
    }
}

#[derive(Debug, Default)]
struct Twin {
    slot: u32,
    /// Host numbers in use (2..=254; 1 is the gateway).
    hosts: BTreeSet<u8>,
}

#[derive(Debug, Default)]
struct State {
    twins: BTreeMap<String, Twin>,
    next_veth: u32,
    /// Bytes counted by twin bridges already removed.
    retired_bytes: u64,
    /// The network namespace of each attached container, by the node's end of its veth:
    /// held open until it is detached, so that the veth outlives the container's last
    /// process and its final count can still be read.
    held: BTreeMap<String, File>,
}

/// The twin networks of the node.
#[derive(Debug)]
pub struct TwinNet {
    range: Range,
    state: Mutex<State>,
    /// Held through every attach and detach: a twin's bridge is made by its first container
    /// and removed with its last, and a restart of one container may race the start of
    /// another of the same twin.
    ops: Mutex<()>,
}

impl TwinNet {
    /// Takes over the node's twin networking in the calling thread's network namespace:
    /// removes what an earlier instance left (bridges, veths), turns on IPv4 forwarding and
    /// installs the firewall table. Blocking.
    pub fn open(range: Range) -> Result<TwinNet, NetError> {
        on_thread(None, |h| async move {
            let mut links = h.link().get().execute();
            let mut stale = Vec::new();
            while let Some(l) = links.try_next().await.map_err(netlink("listing links"))? {
                let name = link_name(&l);
                if name.starts_with(BRIDGE_PREFIX) || name.starts_with(VETH_PREFIX) {
                    stale.push((l.header.index, name));
                }
            }
            for (index, name) in stale {
                // A veth may already be gone with its peer or bridge: nothing to do then.
                if let Err(e) = h.link().del(index).execute().await {
                    tracing::debug!(link = name, error = %e, "stale link not removed");
                } else {
                    tracing::info!(link = name, "removed a stale twin link");
                }
            }
            Ok(())
        })?;
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
            .map_err(io("turning on IPv4 forwarding"))?;
        // With br_netfilter loaded, frames inside one bridge would pass the IP hooks and look
        // routed from a twin bridge to a twin bridge (dropped). Its namespace-wide switch
        // wins over the bridge's own, so it is turned off here; without the module the file
        // does not exist and nothing needs turning off.
        match std::fs::write("/proc/sys/net/bridge/bridge-nf-call-iptables", "0") {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io("turning off bridge-nf-call-iptables")(e))
            }
            _ => {}
        }
        nft::replace(&rules(range))?;
        Ok(TwinNet {
            range,
            state: Mutex::new(State::default()),
            ops: Mutex::new(()),
        })
    }

    /// Plugs the network namespace of `pid` into `twin`'s network: creates the twin's
    /// bridge if it is the twin's first container, a veth pair, and inside the namespace
    /// `eth0` with the next free address, `lo`, and the default route. Blocking.
    pub fn attach(&self, twin: &str, pid: Pid) -> Result<Attachment, NetError> {
        let _ops = self.ops.lock().unwrap_or_else(|e| e.into_inner());
        let (slot, host, n, fresh) = self.reserve(twin)?;
        let done = self.plug(slot, host, n, pid);
        if done.is_err() {
            // The node's end of a veth whose other end never reached the container stays
            // on the node: it goes (with its peer) here.
            let _ = remove_link(format!("{VETH_PREFIX}{n}"));
            self.release(twin, host);
            if fresh {
                let _ = self.remove_bridge_if_empty(twin, slot);
            }
        }
        let (address, ns) = done?;
        let veth = format!("{VETH_PREFIX}{n}");
        {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            st.held.insert(veth.clone(), ns);
        }
        Ok(Attachment {
            twin: twin.to_string(),
            address,
            veth,
        })
    }

    /// Unplugs a container: its veth pair goes (already gone is fine), then the hold on its
    /// namespace, and its twin's bridge when it was the last. Blocking.
    pub fn detach(&self, a: &Attachment) {
        let _ops = self.ops.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = remove_link(a.veth.clone()) {
            tracing::warn!(
                veth = a.veth,
                error = &e as &dyn std::error::Error,
                "veth not removed"
            );
        }
        // Let go even when the veth could not be removed: the namespace then takes it along.
        let held = {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            st.held.remove(&a.veth)
        };
        drop(held);
        let host = a.address.octets()[3];
        let slot = self.release(&a.twin, host);
        if let Some(slot) = slot {
            if let Err(e) = self.remove_bridge_if_empty(&a.twin, slot) {
                tracing::warn!(
                    error = &e as &dyn std::error::Error,
                    "twin bridge not removed"
                );
            }
        }
    }

    /// Takes an address on `twin`'s network and a tap name for a VM about to start (see
    /// [`TapLease`]). Give it back with [`TwinNet::release_tap`] if the VM never starts.
    pub fn reserve_tap(&self, twin: &str) -> Result<TapLease, NetError> {
        let _ops = self.ops.lock().unwrap_or_else(|e| e.into_inner());
        let (slot, host, n, _) = self.reserve(twin)?;
        let subnet = self.range.subnet(slot);
        Ok(TapLease {
            twin: twin.to_string(),
            tap: format!("{VETH_PREFIX}{n}"),
            address: Ipv4Addr::from(subnet + u32::from(host)),
            gateway: Ipv4Addr::from(subnet + 1),
            prefix: 24,
            slot,
        })
    }

    /// Makes the tap QEMU created for `lease` a port of its twin's bridge (made if it is the
    /// twin's first workload here), up. On failure the lease is given back. Blocking.
    pub fn plug_tap(&self, lease: &TapLease) -> Result<Attachment, NetError> {
        let _ops = self.ops.lock().unwrap_or_else(|e| e.into_inner());
        let (bridge, gateway, tap) = (
            format!("{BRIDGE_PREFIX}{}", lease.slot),
            lease.gateway,
            lease.tap.clone(),
        );
        let done = on_thread(None, |h| async move {
            let br = ensure_bridge(&h, &bridge, gateway).await?;
            let t = index_of(&h, &tap).await?.ok_or_else(|| {
                NetError::Full(format!("tap {tap} is not there: QEMU did not create it"))
            })?;
            h.link()
                .set(LinkUnspec::new_with_index(t).controller(br).up().build())
                .execute()
                .await
                .map_err(netlink(format!("plugging {tap} into {bridge}")))
        });
        if let Err(e) = done {
            self.give_back(lease);
            return Err(e);
        }
        Ok(Attachment {
            twin: lease.twin.clone(),
            address: lease.address,
            veth: lease.tap.clone(),
        })
    }

    /// Gives back the address of a VM that never started.
    pub fn release_tap(&self, lease: &TapLease) {
        let _ops = self.ops.lock().unwrap_or_else(|e| e.into_inner());
        self.give_back(lease);
    }

    fn give_back(&self, lease: &TapLease) {
        let _ = remove_link(lease.tap.clone());
        if let Some(slot) = self.release(&lease.twin, lease.address.octets()[3]) {
            let _ = self.remove_bridge_if_empty(&lease.twin, slot);
        }
    }

    /// What the container of `a` sent and received so far.
    pub fn traffic(&self, a: &Attachment) -> Result<Traffic, NetError> {
        let veth = a.veth.clone();
        on_thread(None, |h| async move {
            let mut links = h.link().get().match_name(veth.clone()).execute();
            let Some(l) = links
                .try_next()
                .await
                .map_err(netlink(format!("reading {veth}")))?
            else {
                return Ok(Traffic::default());
            };
            Ok(container_traffic(&l))
        })
    }

    /// What every attached container sent and received so far, by the node's end of its veth
    /// (one netlink dump, however many containers run). Blocking.
    pub fn veth_traffic(&self) -> Result<BTreeMap<String, Traffic>, NetError> {
        on_thread(None, |h| async move {
            let mut links = h.link().get().execute();
            let mut all = BTreeMap::new();
            while let Some(l) = links.try_next().await.map_err(netlink("listing links"))? {
                let name = link_name(&l);
                if !name.starts_with(VETH_PREFIX) {
                    continue;
                }
                all.insert(name, container_traffic(&l));
            }
            Ok(all)
        })
    }

    /// The twin's slot and a free host number, taking a slot for a new twin.
    fn reserve(&self, twin: &str) -> Result<(u32, u8, u32, bool), NetError> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = !st.twins.contains_key(twin);
        if fresh {
            let used: BTreeSet<u32> = st.twins.values().map(|t| t.slot).collect();
            let slot = (0..self.range.slots)
                .find(|s| !used.contains(s))
                .ok_or_else(|| {
                    NetError::Full(format!(
                        "all {} twin networks of this node are in use",
                        self.range.slots
                    ))
                })?;
            st.twins.insert(
                twin.to_string(),
                Twin {
                    slot,
                    hosts: BTreeSet::new(),
                },
            );
        }
        let n = st.next_veth;
        st.next_veth = st.next_veth.wrapping_add(1);
        let Some(t) = st.twins.get_mut(twin) else {
            return Err(NetError::Full("twin network vanished".into()));
        };
        let host = (2..=254u8).find(|h| !t.hosts.contains(h)).ok_or_else(|| {
            NetError::Full("the twin's 253 addresses on this node are in use".into())
        })?;
        t.hosts.insert(host);
        Ok((t.slot, host, n, fresh))
    }

    /// Frees a host number; the twin's slot when it was the last (returned then).
    fn release(&self, twin: &str, host: u8) -> Option<u32> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let t = st.twins.get_mut(twin)?;
        t.hosts.remove(&host);
        if t.hosts.is_empty() {
            return st.twins.remove(twin).map(|t| t.slot);
        }
        None
    }

    fn remove_bridge_if_empty(&self, twin: &str, slot: u32) -> Result<(), NetError> {
        {
            let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            // Taken again meanwhile by a new container of the twin, or the slot given to
            // another twin: the bridge stays.
            if st.twins.values().any(|t| t.slot == slot) || st.twins.contains_key(twin) {
                return Ok(());
            }
        }
        let bridge = format!("{BRIDGE_PREFIX}{slot}");
        // Its counters go with it: they are kept first.
        let counted = bridge_bytes(Some(bridge.clone()))?;
        {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            st.retired_bytes = st.retired_bytes.saturating_add(counted);
        }
        remove_link(bridge)
    }

    /// Bytes that passed between twins' containers and the node's IP stack since the
    /// service started, both ways: what containers sent out or received from outside (the
    /// twins' public traffic), and what the firewall dropped. Traffic between one twin's
    /// containers stays inside its bridge and is not counted.
    pub fn traffic_bytes(&self) -> Result<u64, NetError> {
        let _ops = self.ops.lock().unwrap_or_else(|e| e.into_inner());
        let live = bridge_bytes(None)?;
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        Ok(st.retired_bytes.saturating_add(live))
    }

    /// Plugs the container in; its address and its namespace (for [`State::held`]).
    fn plug(&self, slot: u32, host: u8, n: u32, pid: Pid) -> Result<(Ipv4Addr, File), NetError> {
        let subnet = self.range.subnet(slot);
        let gateway = Ipv4Addr::from(subnet + 1);
        let address = Ipv4Addr::from(subnet + u32::from(host));
        let bridge = format!("{BRIDGE_PREFIX}{slot}");
        let (veth, peer) = (format!("{VETH_PREFIX}{n}"), format!("{PEER_PREFIX}{n}"));
        let ns = File::open(format!("/proc/{pid}/ns/net"))
            .map_err(io(format!("opening the network namespace of {pid}")))?;
        let (p, nsfd) = (
            peer.clone(),
            ns.try_clone().map_err(io("duplicating a descriptor"))?,
        );
        on_thread(None, |h| async move {
            let br = ensure_bridge(&h, &bridge, gateway).await?;
            h.link()
                .add(LinkVeth::new(&veth, &p).build())
                .execute()
                .await
                .map_err(netlink(format!("creating veth {veth}")))?;
            let v = index_of(&h, &veth)
                .await?
                .ok_or_else(|| NetError::Full(format!("veth {veth} vanished")))?;
            h.link()
                .set(LinkUnspec::new_with_index(v).controller(br).up().build())
                .execute()
                .await
                .map_err(netlink(format!("plugging {veth} into {bridge}")))?;
            let pi = index_of(&h, &p)
                .await?
                .ok_or_else(|| NetError::Full(format!("veth {p} vanished")))?;
            use std::os::fd::AsRawFd;
            h.link()
                .set(
                    LinkUnspec::new_with_index(pi)
                        .setns_by_fd(nsfd.as_raw_fd())
                        .build(),
                )
                .execute()
                .await
                .map_err(netlink(format!("moving {p} into the container")))?;
            Ok(())
        })?;
        let inside = ns.try_clone().map_err(io("duplicating a descriptor"))?;
        on_thread(Some(inside), |h| async move {
            let pi = index_of(&h, &peer)
                .await?
                .ok_or_else(|| NetError::Full(format!("{peer} is not in the container")))?;
            h.link()
                .set(
                    LinkUnspec::new_with_index(pi)
                        .name("eth0".to_string())
                        .build(),
                )
                .execute()
                .await
                .map_err(netlink("naming eth0"))?;
            h.address()
                .add(pi, address.into(), 24)
                .execute()
                .await
                .map_err(netlink("addressing eth0"))?;
            h.link()
                .set(LinkUnspec::new_with_index(pi).up().build())
                .execute()
                .await
                .map_err(netlink("eth0 up"))?;
            if let Some(lo) = index_of(&h, "lo").await? {
                h.link()
                    .set(LinkUnspec::new_with_index(lo).up().build())
                    .execute()
                    .await
                    .map_err(netlink("lo up"))?;
            }
            let route = RouteMessageBuilder::<Ipv4Addr>::new()
                .gateway(gateway)
                .output_interface(pi)
                .build();
            h.route()
                .add(route)
                .execute()
                .await
                .map_err(netlink("default route"))?;
            Ok(())
        })?;
        Ok((address, ns))
    }
}

/// The twin bridge `bridge` with `gateway` on it, made when it is not there; its index.
async fn ensure_bridge(h: &Handle, bridge: &str, gateway: Ipv4Addr) -> Result<u32, NetError> {
    if let Some(i) = index_of(h, bridge).await? {
        return Ok(i);
    }
    // Bridged frames must not pass the IP hooks (br_netfilter, where loaded): there the
    // twin's own traffic would look routed between twin bridges.
    let b = LinkBridge::new(bridge)
        .append_info_data(InfoBridge::NfCallIpTables(false))
        .build();
    h.link()
        .add(b)
        .execute()
        .await
        .map_err(netlink(format!("creating bridge {bridge}")))?;
    let i = index_of(h, bridge)
        .await?
        .ok_or_else(|| NetError::Full(format!("bridge {bridge} vanished")))?;
    h.address()
        .add(i, gateway.into(), 24)
        .replace()
        .execute()
        .await
        .map_err(netlink(format!("addressing bridge {bridge}")))?;
    Ok(i)
}

/// The firewall of [`TwinNet`] for `range` (see the module docs).
pub fn rules(range: Range) -> nft::Table {
    use nft::{Action, Chain, ChainType, Hook, Match, Rule, Verdict};
    let twin = || Match::InputPrefix(BRIDGE_PREFIX.into());
    let to_twin = || Match::OutputPrefix(BRIDGE_PREFIX.into());
    let (net, len) = range.network();
    nft::Table {
        name: TABLE.into(),
        family: nft::Family::Ipv4,
        chains: vec![
            Chain {
                name: "input".into(),
                kind: ChainType::Filter,
                hook: Hook::Input,
                priority: 0,
                policy: Verdict::Accept,
                rules: vec![Rule {
                    matches: vec![twin()],
                    action: Action::Verdict(Verdict::Drop),
                }],
            },
            Chain {
                name: "forward".into(),
                kind: ChainType::Filter,
                hook: Hook::Forward,
                priority: 0,
                policy: Verdict::Accept,
                rules: vec![
                    Rule {
                        matches: vec![twin(), to_twin()],
                        action: Action::Verdict(Verdict::Drop),
                    },
                    Rule {
                        matches: vec![to_twin(), Match::Established],
                        action: Action::Verdict(Verdict::Accept),
                    },
                    Rule {
                        matches: vec![to_twin()],
                        action: Action::Verdict(Verdict::Drop),
                    },
                ],
            },
            Chain {
                name: "postrouting".into(),
                kind: ChainType::Nat,
                hook: Hook::PostRouting,
                priority: 100,
                policy: Verdict::Accept,
                // The input interface is not known after routing: the source range is.
                rules: vec![Rule {
                    matches: vec![
                        Match::SourceIn(net, len),
                        Match::OutputNotPrefix(BRIDGE_PREFIX.into()),
                    ],
                    action: Action::Masquerade,
                }],
            },
        ],
    }
}

/// What twin bridges counted (received plus sent by the bridge's own interface, that is
/// between its ports and the node's IP stack): bridge `name`, or all of them.
fn bridge_bytes(name: Option<String>) -> Result<u64, NetError> {
    on_thread(None, |h| async move {
        let mut links = h.link().get().execute();
        let mut total = 0u64;
        while let Some(l) = links.try_next().await.map_err(netlink("listing links"))? {
            let n = link_name(&l);
            let wanted = match &name {
                Some(want) => &n == want,
                None => n.starts_with(BRIDGE_PREFIX),
            };
            if !wanted {
                continue;
            }
            for a in &l.attributes {
                if let LinkAttribute::Stats64(s) = a {
                    total = total.saturating_add(s.rx_bytes).saturating_add(s.tx_bytes);
                }
            }
        }
        Ok(total)
    })
}

/// Removes link `name` of the node if it exists.
fn remove_link(name: String) -> Result<(), NetError> {
    on_thread(None, |h| async move {
        if let Some(index) = index_of(&h, &name).await? {
            h.link()
                .del(index)
                .execute()
                .await
                .map_err(netlink(format!("removing {name}")))?;
        }
        Ok(())
    })
}

/// A container's traffic from the node's end of its veth, which counts the other way round:
/// what the node's end sends, the container gets.
fn container_traffic(l: &LinkMessage) -> Traffic {
    l.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Stats64(s) => Some(Traffic {
                rx_bytes: s.tx_bytes,
                tx_bytes: s.rx_bytes,
            }),
            _ => None,
        })
        .unwrap_or_default()
}

fn link_name(l: &LinkMessage) -> String {
    l.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

async fn index_of(h: &Handle, name: &str) -> Result<Option<u32>, NetError> {
    let mut links = h.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(l) => Ok(l.map(|l| l.header.index)),
        // ENODEV: no such link.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(netlink(format!("looking up {name}"))(e)),
    }
}

/// Runs `f` with a netlink handle on a thread of its own, in the namespace `ns` when given
/// (else the caller's), and waits for it.
fn on_thread<T, F, Fut>(ns: Option<File>, f: F) -> Result<T, NetError>
where
    T: Send,
    F: FnOnce(Handle) -> Fut + Send,
    Fut: std::future::Future<Output = Result<T, NetError>>,
{
    std::thread::scope(|s| {
        s.spawn(move || {
            if let Some(ns) = &ns {
                nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| io("entering the container's network namespace")(e.into()))?;
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .enable_time()
                .build()
                .map_err(io("starting a netlink runtime"))?;
            rt.block_on(async move {
                let (conn, handle, _) =
                    rtnetlink::new_connection().map_err(io("opening a netlink socket"))?;
                tokio::spawn(conn);
                f(handle).await
            })
        })
        .join()
        .unwrap_or_else(|_| Err(NetError::Full("the netlink thread panicked".into())))
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ranges_give_each_twin_a_slash_24() {
        let r = Range::parse("10.240.0.0/12").unwrap();
        assert_eq!(r, Range::DEFAULT);
        assert_eq!(r.network(), (Ipv4Addr::new(10, 240, 0, 0), 12));
        assert_eq!(Ipv4Addr::from(r.subnet(3)), Ipv4Addr::new(10, 240, 3, 0));
        assert_eq!(
            Ipv4Addr::from(r.subnet(4095)),
            Ipv4Addr::new(10, 255, 255, 0)
        );
        assert_eq!(Range::parse("192.168.7.0/24").unwrap().slots, 1);
        for bad in [
            "10.240.0.0",
            "10.240.0.0/25",
            "10.240.0.0/7",
            "10.240.1.0/12",
            "x/12",
        ] {
            assert!(Range::parse(bad).is_err(), "{bad}");
        }
    }
}
