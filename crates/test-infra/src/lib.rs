//! What gridos's tests share, so each test reads like the scenario it checks:
//!
//! - [`gate`]: what a test cannot run without (root, a host program, a kernel device). A
//!   missing requirement fails the test, naming what to install or how to run it, unless
//!   `GRIDOS_TEST_SKIP` explicitly allows the skip; every skip is printed and logged for the
//!   run's summary (docs/testing.md).
//! - [`Registry`]: a registry on 127.0.0.1 inside the test process, over a fresh SQLite file
//!   or a fresh PostgreSQL database, that can go away and come back on the same address.
//! - [`RegistryProcess`]: the real `grid-registry` binary as a child process (under a wrapper
//!   such as `prlimit` if asked), for tests and for the lab and benchmark tools.
//! - [`Postgres`]: a throwaway PostgreSQL server; [`postgres::fresh_database`] uses the one
//!   `GRIDOS_TEST_POSTGRES_URL` names, or starts one per test process.
//! - [`Client`]: requests as a node, a twin or an auditor sends them, sealed with
//!   `gridtypes`' own envelope code.
//!
//! - [`oci`]: an OCI distribution registry (`docker-registry`) on 127.0.0.1, and images
//!   built from files (busybox) and pushed to it.
//!
//! - [`btrfs`]: a btrfs on a loop device, as on a node's cache partition.
//!
//! The gates need nothing else; the servers and the client are behind the `servers` feature.

// Test support: a panic here is how the calling test fails, with the message saying why.
// (`RegistryProcess`, which the lab and perf tools also use, returns errors instead.)
#![allow(clippy::panic)]

pub mod gate;

pub use gate::{require_device, require_root, require_tool, require_tools, Skipped};

#[cfg(feature = "btrfs")]
pub mod btrfs;
#[cfg(feature = "servers")]
pub mod client;
#[cfg(feature = "guest")]
pub mod guest;
#[cfg(feature = "servers")]
pub mod history;
#[cfg(feature = "oci")]
pub mod oci;
#[cfg(feature = "servers")]
pub mod postgres;
#[cfg(feature = "servers")]
pub mod process;
#[cfg(feature = "servers")]
pub mod registry;

#[cfg(feature = "servers")]
pub use client::{nonce, seal, Client};
#[cfg(feature = "servers")]
pub use gridtypes::now;
#[cfg(feature = "servers")]
pub use postgres::Postgres;
#[cfg(feature = "servers")]
pub use process::{RegistryCommand, RegistryProcess};
#[cfg(feature = "servers")]
pub use registry::{Engine, Registry};
