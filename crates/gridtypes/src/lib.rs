//! Wire types and pure logic shared by the node agent, the registry and the `grid` CLI.
//!
//! Nothing here does I/O (reading the clock in [`now`] aside): resources are counted in raw
//! bytes on the wire and converted to grid units only by [`units`], and every message that
//! crosses the network is a [`envelope::Envelope`] signed with ed25519 over the exact payload
//! bytes.

pub mod deployment;
pub mod envelope;
pub mod extension;
pub mod keyfile;
pub mod mailbox;
pub mod payload;
pub mod units;

pub use envelope::{
    check_clock, now, parse_public_key, Envelope, EnvelopeError, Verified, MAX_CLOCK_SKEW_SECS,
    NONCE_LEN,
};
pub use payload::{
    Consumption, ContractRequest, ContractTraffic, Interface, NodeRegistration, Payload,
    PayloadError, Report, ReportKind, Sealed, MAX_PAYLOAD_BYTES, MAX_POLL_WAIT_SECS,
    MAX_REPORTED_CONTRACTS, MAX_TEXT, MAX_TRAFFIC_BYTES, MAX_UPTIME_SECS, MAX_WARNINGS,
};
pub use units::{ResourceTotals, Resources, Units, GIB, MAX_CRU, MAX_DISK, MAX_IPV4, MAX_MRU};
