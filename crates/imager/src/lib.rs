//! gridos imager: builds the initramfs of a 3Node (kernel modules and their
//! closure, static gridos binaries, helper programs with their shared
//! libraries, files from `initramfs/`) as a reproducible compressed cpio, next
//! to the kernel and its default command line.

pub mod build;
pub mod cli;
pub mod cpio;
pub mod elf;
pub mod extension;
pub mod kernel;
pub mod modules;
pub mod profile;
pub mod progress;
mod tool;
pub mod tree;

pub use build::{build, BuildError, Options, Report};
pub use profile::Profile;
