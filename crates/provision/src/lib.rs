//! What runs twins' workloads on a node: the image cache ([`image`]: OCI images pulled and
//! verified into content-addressed, shared layers) and the start of one container
//! ([`container`]: overlayfs root, own namespaces, cgroup v2 limits, output in a pipe). The
//! supervision around them (restart policy, bounded logs, stop and delete, the twin's network)
//! comes next (docs/deployments.md).

pub mod container;
pub mod image;

pub use image::{Image, ImageError, ImageStore};
