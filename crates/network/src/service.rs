//! The running service: watches links, runs one DHCP client per wired link with carrier
//! (or applies the static config), and publishes state and resolv.conf.

use crate::config::{Mode, Static};
use crate::dhcp::{self, Lease, Reply};
use crate::links::{self, Link};
use crate::netlink::Net;
use crate::state::{self, LinkState, State};
use crate::{resolv, Error, Result};
use backoff::Backoff;
use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::Mutex;
use tokio::time::{sleep, sleep_until, Instant};

/// Where the service looks and writes.
#[derive(Debug, Clone)]
pub struct Config {
    /// `/sys/class/net`.
    pub sys_net: PathBuf,
    /// `/proc/sys/net` (for IPv6 router-advertisement sysctls).
    pub proc_net: PathBuf,
    /// `/etc/resolv.conf`.
    pub resolv_conf: PathBuf,
    /// Where `network.json` goes.
    pub run_dir: PathBuf,
    /// DHCP or static.
    pub mode: Mode,
    /// Use only these links (and allow virtual ones); `None`: every physical wired link.
    pub only: Option<Vec<String>>,
}

struct Shared {
    cfg: Config,
    net: Net,
    state: Mutex<State>,
}

const DHCP_REPLY_TIMEOUT: Duration = Duration::from_secs(4);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_secs(2);

impl Shared {
    async fn publish(&self, iface: &str, link: Option<LinkState>) {
        let mut st = self.state.lock().await;
        match link {
            Some(l) => st.links.insert(iface.to_string(), l),
            None => st.links.remove(iface),
        };
        st.ready = !st.links.is_empty();
        if let Err(e) = state::save(&self.cfg.run_dir, &st) {
            tracing::error!(
                error = &e as &dyn std::error::Error,
                "cannot write the network state file"
            );
        }
        let dns = st.dns();
        if !dns.is_empty() {
            match resolv::write_atomic(&self.cfg.resolv_conf, resolv::render(&dns).as_bytes()) {
                Ok(()) => {
                    tracing::info!(path = %self.cfg.resolv_conf.display(), servers = ?dns, "resolv.conf written")
                }
                Err(e) => tracing::error!(
                    error = &e as &dyn std::error::Error,
                    "cannot write resolv.conf"
                ),
            }
        }
    }
}

/// Turns on IPv6 SLAAC for a link: `accept_ra=2` (also when forwarding is on, as it will
/// be once twin networks exist) and `autoconf=1`.
pub fn enable_ra(proc_net: &std::path::Path, iface: &str) -> Result<()> {
    let dir = proc_net.join("ipv6/conf").join(iface);
    for (key, value) in [("accept_ra", "2"), ("autoconf", "1")] {
        let path = dir.join(key);
        std::fs::write(&path, value).map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })?;
    }
    Ok(())
}

fn open_socket(iface: &str) -> Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let err = |source| Error::Socket {
        iface: iface.into(),
        source,
    };
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(err)?;
    s.set_reuse_address(true).map_err(err)?;
    s.set_broadcast(true).map_err(err)?;
    s.bind_device(Some(iface.as_bytes())).map_err(err)?;
    s.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68).into())
        .map_err(err)?;
    s.set_nonblocking(true).map_err(err)?;
    UdpSocket::from_std(s.into()).map_err(err)
}

fn new_xid(mac: &[u8; 6]) -> u32 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
        .unwrap_or(0);
    let m = u32::from_be_bytes([mac[2], mac[3], mac[4], mac[5]]);
    now.rotate_left(7) ^ m
}

async fn exchange(
    sock: &UdpSocket,
    link: &Link,
    pkt: &[u8],
    dest: SocketAddrV4,
    xid: u32,
) -> Result<Option<Reply>> {
    sock.send_to(pkt, dest)
        .await
        .map_err(|source| Error::Socket {
            iface: link.name.clone(),
            source,
        })?;
    let deadline = Instant::now() + DHCP_REPLY_TIMEOUT;
    let mut buf = vec![0u8; 1500];
    loop {
        match tokio::time::timeout_at(deadline, sock.recv_from(&mut buf)).await {
            Err(_) => return Ok(None),
            Ok(Err(source)) => {
                return Err(Error::Socket {
                    iface: link.name.clone(),
                    source,
                })
            }
            Ok(Ok((n, from))) => match dhcp::parse_reply(&buf[..n], xid, &link.mac) {
                Ok(Some(r)) => return Ok(Some(r)),
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(iface = %link.name, %from, error = &e as &dyn std::error::Error, "ignoring packet")
                }
            },
        }
    }
}

const BROADCAST: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);

/// DISCOVER → OFFER → REQUEST → ACK, retried with jittered backoff (1 s doubling to 60 s)
/// until it succeeds: nodes that lost their DHCP server together do not flood it together.
async fn acquire(sock: &UdpSocket, link: &Link) -> Lease {
    let mut backoff = Backoff::new(Duration::from_secs(1), MAX_BACKOFF);
    loop {
        let xid = new_xid(&link.mac);
        let outcome = async {
            let offer = match exchange(sock, link, &dhcp::discover(xid, &link.mac)?, BROADCAST, xid)
                .await?
            {
                Some(Reply::Offer(o)) => o,
                _ => return Ok::<_, Error>(Err("no DHCP offer")),
            };
            let req = dhcp::request_offer(xid, &link.mac, &offer)?;
            Ok(match exchange(sock, link, &req, BROADCAST, xid).await? {
                Some(Reply::Ack(l)) => Ok(l),
                Some(Reply::Nak) => Err("DHCP server refused the offered address (NAK)"),
                _ => Err("no DHCP acknowledgement"),
            })
        }
        .await;
        let why = match outcome {
            Ok(Ok(lease)) => return lease,
            Ok(Err(why)) => why.to_string(),
            Err(e) => e.to_string(),
        };
        let delay = backoff.next_delay();
        tracing::warn!(iface = %link.name, retry_in_s = delay.as_secs_f32(), "{why}; retrying");
        sleep(delay).await;
    }
}

async fn apply_lease(
    shared: &Shared,
    link: &Link,
    lease: &Lease,
    old: Option<&Lease>,
) -> Result<()> {
    let net = &shared.net;
    if let Some(old) = old.filter(|o| o.addr != lease.addr || o.prefix != lease.prefix) {
        net.del_address(&link.name, link.index, old.addr).await?;
    }
    net.add_address(&link.name, link.index, lease.addr, lease.prefix)
        .await?;
    if let Some(gw) = lease.router {
        net.default_route(&link.name, link.index, gw).await?;
    }
    shared
        .publish(&link.name, Some(LinkState::from_lease(lease)))
        .await;
    Ok(())
}

/// Renews at T1 (unicast to the server), rebinds at T2 (broadcast), gives up at expiry.
/// Returns a new lease, or `None` when the lease is lost (NAK or expiry).
async fn renew(sock: &UdpSocket, link: &Link, lease: &Lease, start: Instant) -> Option<Lease> {
    let t1 = start + Duration::from_secs(lease.t1_secs.into());
    let t2 = start + Duration::from_secs(lease.t2_secs.into());
    let end = start + Duration::from_secs(lease.lease_secs.into());
    sleep_until(t1).await;
    loop {
        let now = Instant::now();
        if now >= end {
            tracing::warn!(iface = %link.name, addr = %lease.addr, "DHCP lease expired without renewal");
            return None;
        }
        let dest = if now < t2 {
            SocketAddrV4::new(lease.server, 67)
        } else {
            BROADCAST
        };
        let xid = new_xid(&link.mac);
        let reply = match dhcp::request_renew(xid, &link.mac, lease.addr) {
            Ok(pkt) => exchange(sock, link, &pkt, dest, xid).await,
            Err(e) => Err(e),
        };
        match reply {
            Ok(Some(Reply::Ack(l))) => return Some(l),
            Ok(Some(Reply::Nak)) => {
                tracing::warn!(iface = %link.name, addr = %lease.addr, "DHCP server refused the renewal (NAK)");
                return None;
            }
            Ok(_) => tracing::warn!(iface = %link.name, to = %dest, "no answer to DHCP renewal"),
            Err(e) => {
                tracing::warn!(iface = %link.name, error = &e as &dyn std::error::Error, "DHCP renewal failed")
            }
        }
        let next = if now < t2 { t2 } else { end };
        let wait = ((next - Instant::now()) / 2)
            .max(Duration::from_secs(2))
            .min(MAX_BACKOFF);
        sleep(wait).await;
    }
}

async fn dhcp_link(shared: Arc<Shared>, link: Link) {
    let sock = loop {
        match open_socket(&link.name) {
            Ok(s) => break s,
            Err(e) => {
                tracing::error!(
                    error = &e as &dyn std::error::Error,
                    "cannot open the DHCP socket; retrying"
                );
                sleep(Duration::from_secs(5)).await;
            }
        }
    };
    loop {
        tracing::info!(iface = %link.name, "starting DHCP");
        let mut lease = acquire(&sock, &link).await;
        let mut start = Instant::now();
        let mut old: Option<Lease> = None;
        loop {
            match apply_lease(&shared, &link, &lease, old.as_ref()).await {
                Ok(()) => {
                    tracing::info!(iface = %link.name, addr = %lease.addr, prefix = lease.prefix,
                    gateway = ?lease.router, dns = ?lease.dns, lease_s = lease.lease_secs, renew_in_s = lease.t1_secs,
                    "{}", if old.is_some() { "DHCP lease renewed" } else { "DHCP lease bound" })
                }
                Err(e) => {
                    tracing::error!(iface = %link.name, error = &e as &dyn std::error::Error, "cannot apply DHCP lease")
                }
            }
            match renew(&sock, &link, &lease, start).await {
                Some(l) => {
                    old = Some(std::mem::replace(&mut lease, l));
                    start = Instant::now();
                }
                None => break,
            }
        }
        if let Err(e) = shared
            .net
            .del_address(&link.name, link.index, lease.addr)
            .await
        {
            tracing::warn!(iface = %link.name, error = &e as &dyn std::error::Error, "cannot remove the lost address");
        }
        shared.publish(&link.name, None).await;
    }
}

async fn run_static(shared: Arc<Shared>, s: Static) {
    let link = loop {
        match links::scan(&shared.cfg.sys_net)
            .into_iter()
            .find(|l| l.name == s.iface)
        {
            Some(l) => break l,
            None => {
                tracing::error!(iface = %s.iface, "bad static config: gridos.net names an interface that does not exist; waiting for it");
                sleep(Duration::from_secs(5)).await;
            }
        }
    };
    loop {
        let result = async {
            shared.net.link_up(&link.name, link.index).await?;
            shared
                .net
                .add_address(&link.name, link.index, s.addr, s.prefix)
                .await?;
            shared
                .net
                .default_route(&link.name, link.index, s.gateway)
                .await
        }
        .await;
        match result {
            Ok(()) => break,
            Err(e) => {
                tracing::error!(iface = %link.name, error = &e as &dyn std::error::Error, "cannot apply the static config; retrying");
                sleep(Duration::from_secs(5)).await;
            }
        }
    }
    if let Err(e) = enable_ra(&shared.cfg.proc_net, &link.name) {
        tracing::warn!(iface = %link.name, error = &e as &dyn std::error::Error, "cannot enable IPv6 router advertisements");
    }
    if !links::has_carrier(&shared.cfg.sys_net, &link.name) {
        tracing::warn!(iface = %link.name, "static address set on a link without carrier");
    }
    tracing::info!(iface = %link.name, addr = %s.addr, prefix = s.prefix, gateway = %s.gateway, "static address configured");
    shared
        .publish(
            &link.name,
            Some(LinkState {
                method: "static".into(),
                address: format!("{}/{}", s.addr, s.prefix),
                gateway: Some(s.gateway),
                dns: Vec::new(),
            }),
        )
        .await;
}

/// Runs the service until the process is stopped.
pub async fn run(cfg: Config) -> Result<()> {
    let net = Net::connect()?;
    let mode = cfg.mode.clone();
    let shared = Arc::new(Shared {
        cfg,
        net,
        state: Mutex::new(State::default()),
    });
    if let Mode::Static(s) = mode {
        run_static(shared, s).await;
        std::future::pending::<()>().await;
        return Ok(());
    }
    let mut prepared: BTreeSet<String> = BTreeSet::new();
    let mut running: BTreeSet<String> = BTreeSet::new();
    let mut warned_no_carrier = false;
    let started = Instant::now();
    loop {
        let wired: Vec<Link> = links::scan(&shared.cfg.sys_net)
            .into_iter()
            .filter(|l| links::is_wired(l, shared.cfg.only.as_deref()))
            .collect();
        for link in &wired {
            if prepared.insert(link.name.clone()) {
                if let Err(e) = enable_ra(&shared.cfg.proc_net, &link.name) {
                    tracing::warn!(iface = %link.name, error = &e as &dyn std::error::Error, "cannot enable IPv6 router advertisements");
                }
                if let Err(e) = shared.net.link_up(&link.name, link.index).await {
                    tracing::error!(error = &e as &dyn std::error::Error, "cannot bring link up");
                    prepared.remove(&link.name);
                }
            }
            if !running.contains(&link.name) && links::has_carrier(&shared.cfg.sys_net, &link.name)
            {
                running.insert(link.name.clone());
                tokio::spawn(dhcp_link(shared.clone(), link.clone()));
            }
        }
        if running.is_empty() && !warned_no_carrier && started.elapsed() > Duration::from_secs(5) {
            let names: Vec<&str> = wired.iter().map(|l| l.name.as_str()).collect();
            tracing::error!(links = ?names, "no wired link with carrier: check the cable; still watching");
            warned_no_carrier = true;
        }
        sleep(POLL).await;
    }
}
