//! The network service: DHCPv4 on every wired link with carrier (renewed at T1),
//! IPv6 by router advertisement, or a static address from `gridos.net=`.
//!
//! Pure parts (`links` filtering, `dhcp` packets and leases, `config`, `resolv`)
//! are tested without root; `netlink` and `service` do the I/O.

pub mod cli;
pub mod config;
pub mod dhcp;
pub mod links;
pub mod netlink;
pub mod resolv;
pub mod service;
pub mod state;

/// Everything that can go wrong while configuring the network.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A sysfs/procfs file could not be read or written.
    #[error("{path}")]
    Io {
        /// The path concerned.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A DHCP packet could not be encoded or decoded.
    #[error("DHCP packet: {0}")]
    Packet(String),
    /// A DHCP reply lacked something a lease needs.
    #[error("DHCP reply from {server}: {reason}")]
    BadLease {
        /// Who sent it.
        server: String,
        /// What was missing or wrong.
        reason: &'static str,
    },
    /// A netlink request failed.
    #[error("netlink {what} on {iface}")]
    Netlink {
        /// What was being done.
        what: &'static str,
        /// Interface name.
        iface: String,
        /// The error.
        source: rtnetlink::Error,
    },
    /// A socket operation failed.
    #[error("socket on {iface}")]
    Socket {
        /// Interface name.
        iface: String,
        /// The error.
        source: std::io::Error,
    },
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;
