//! What runs twins' workloads on a node: the image cache ([`image`]: OCI images pulled and
//! verified into content-addressed, shared layers), the start of one container
//! ([`container`]: overlayfs root, own namespaces, cgroup v2 limits, output in a pipe), the
//! supervision of every contract's containers ([`runtime`]: restart policy, bounded logs,
//! stop and delete), their volumes ([`volume`]: btrfs subvolumes with a quota, placed on the
//! storage pools by [`pool`]), the twins'
//! networks ([`twinnet`]: a bridge per twin, NAT out, nothing between twins, traffic counted
//! per node and per contract), the twins' VMs ([`vm`]: QEMU on the twin's bridge, a cloud-init
//! seed, a root disk) and the local socket the agent drives it through ([`service`]). See
//! docs/deployments.md and docs/vms.md.

pub mod cli;
pub mod container;
pub mod image;
mod meter;
pub mod pool;
pub mod runtime;
pub mod service;
pub mod twinnet;
pub mod vm;
pub mod volume;

pub use image::{Image, ImageError, ImageStore};
pub use runtime::{Config, Runtime, RuntimeError};
