//! What runs twins' workloads on a node. This first part is the image cache
//! ([`image`]): OCI images pulled and verified into content-addressed, shared layers; the
//! container runtime on top of it (namespaces, overlayfs root, cgroup limits, logs) comes
//! next (docs/deployments.md).

pub mod image;

pub use image::{Image, ImageError, ImageStore};
