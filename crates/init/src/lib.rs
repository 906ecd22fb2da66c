//! gridos PID 1: early boot, drivers, service supervisor, control socket and shutdown.
//!
//! Pure logic (`config`, `graph`, `ring`; the kernel command line and the module index are
//! the `cmdline` and `kmod` crates) is kept apart from the I/O so most of it is tested
//! without root. PID 1 never panics on purpose: the workspace denies unwrap, expect and
//! panic outside tests.

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
pub mod rootfs;
pub mod supervisor;
pub mod uevent;
