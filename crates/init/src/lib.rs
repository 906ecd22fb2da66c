//! gridos PID 1: early boot, drivers, service supervisor, control socket and shutdown.
//!
//! Pure logic (`cmdline`, `config`, `graph`, `ring`, module-index parsing)
//! is kept apart from the I/O so most of it is tested without root.

// PID 1 never panics on purpose: no unwrap/expect/panic outside tests.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod args;
pub mod boot;
pub mod config;
pub mod control;
pub mod graph;
pub mod logging;
mod logsink;
pub mod power;
pub mod privs;
pub mod reaper;
pub mod ring;
pub mod supervisor;
pub mod uevent;
