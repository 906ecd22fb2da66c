//! The capacity agent of a 3Node: measures what the node can give, proves who it is, and
//! tells the registry, without losing a report when the registry is away.
//!
//! `probe` measures (disks as the storage service measured them, through `disks`), `identity` keeps the node key, `queue` holds reports on disk,
//! `client` talks to the registry, `traffic` shares the node's public traffic among contracts,
//! and `agent` ties them together in one event loop.

pub mod agent;
pub mod cli;
pub mod client;
pub mod deployments;
pub mod identity;
pub mod probe;
pub mod queue;
pub mod traffic;

pub use agent::{run, AgentError, Config, Status};
