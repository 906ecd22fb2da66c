//! The storage service: finds the node's disks, tells SSD from HDD by measurement,
//! creates or re-uses the btrfs cache partition under the `gridos.wipe` policy, and makes
//! every other disk it may use a storage pool (one btrfs per disk) for twins' volumes and
//! VM disks.
//!
//! Decisions (`signature`, `plan`, and `disks` for what a disk is) are pure functions over
//! a sysfs tree and disk headers, so they are tested without root; `apply` and `migrate` do
//! the I/O.

pub mod apply;
pub mod cli;
pub mod migrate;
pub mod plan;
pub mod signature;
pub mod state;

/// Disk discovery, settling, the seek test and classification: the policy shared with the agent.
pub use disks;

/// Everything that can go wrong while looking at or preparing disks.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file in sysfs or /dev could not be read.
    #[error("reading {path}")]
    Read {
        /// The path that failed.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A helper program (sfdisk, mkfs.btrfs, wipefs) failed or could not be run.
    #[error("{program} {args}: {reason}")]
    Command {
        /// Program name.
        program: String,
        /// Its arguments, joined.
        args: String,
        /// Exit status or spawn error, with stderr.
        reason: String,
    },
    /// A mount or unmount failed.
    #[error("mounting {what} on {target}")]
    Mount {
        /// Device or fs type.
        what: String,
        /// Mount point.
        target: String,
        /// errno.
        source: nix::Error,
    },
    /// Looking at the disks failed.
    #[error(transparent)]
    Disks(#[from] disks::Error),
    /// The new partition's device node never appeared.
    #[error("partition {0} did not appear after partitioning")]
    NoPartition(String),
    /// Writing the state file failed.
    #[error("writing {path}")]
    Write {
        /// The path that failed.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// GPT partition name and btrfs label that mark a disk as holding the gridos cache.
pub const CACHE_LABEL: &str = "gridos-cache";

/// GPT partition name and btrfs label of a storage pool: every other disk storage may use.
pub const POOL_LABEL: &str = "gridos-pool";
