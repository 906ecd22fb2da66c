//! What the network service has configured: the readiness signal for the supervisor
//! (`gridos-network --check`) and what the agent reports as the node's interfaces.

use crate::dhcp::Lease;
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

/// State file name inside the run directory.
pub const STATE_FILE: &str = "network.json";

/// How one link is configured.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkState {
    /// `dhcp` or `static`.
    pub method: String,
    /// Address with prefix, e.g. `10.0.2.15/24`.
    pub address: String,
    /// Default gateway.
    pub gateway: Option<Ipv4Addr>,
    /// DNS servers from the lease.
    pub dns: Vec<IpAddr>,
}

impl LinkState {
    /// The state of a link configured from a lease.
    pub fn from_lease(l: &Lease) -> Self {
        LinkState {
            method: "dhcp".into(),
            address: format!("{}/{}", l.addr, l.prefix),
            gateway: l.router,
            dns: l.dns.iter().map(|d| IpAddr::V4(*d)).collect(),
        }
    }
}

/// The whole service state.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// At least one link has an address.
    pub ready: bool,
    /// Configured links by name.
    pub links: BTreeMap<String, LinkState>,
}

impl State {
    /// DNS servers of every link, in link-name order.
    pub fn dns(&self) -> Vec<IpAddr> {
        self.links.values().flat_map(|l| l.dns.clone()).collect()
    }
}

/// Writes the state file atomically.
pub fn save(run_dir: &Path, state: &State) -> Result<()> {
    let path = run_dir.join(STATE_FILE);
    let json = serde_json::to_vec_pretty(state).map_err(|e| Error::Io {
        path: path.display().to_string(),
        source: std::io::Error::other(e),
    })?;
    crate::resolv::write_atomic(&path, &json)
}

/// Whether the state file says the network is ready (the service's `test:`).
pub fn is_ready(run_dir: &Path) -> bool {
    std::fs::read(run_dir.join(STATE_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice::<State>(&b).ok())
        .is_some_and(|s| s.ready)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_round_trip() {
        let t = tempfile::tempdir().unwrap();
        assert!(!is_ready(t.path()));
        let mut s = State::default();
        save(t.path(), &s).unwrap();
        assert!(!is_ready(t.path()));
        s.ready = true;
        s.links.insert(
            "eth0".into(),
            LinkState {
                method: "static".into(),
                address: "10.0.0.2/24".into(),
                gateway: None,
                dns: vec!["10.0.0.53".parse().unwrap()],
            },
        );
        save(t.path(), &s).unwrap();
        assert!(is_ready(t.path()));
        assert_eq!(s.dns().len(), 1);
    }
}
