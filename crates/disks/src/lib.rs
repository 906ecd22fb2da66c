//! What a disk is, for every gridos program that looks at disks: which block devices count,
//! how a claimed SSD is checked (the seek test), what the answer is (SSD or HDD), when the set
//! of disks has settled after boot, and the file through which storage tells the agent what it
//! measured and the pools it mounted.
//!
//! Storage measures each disk once; the agent counts capacity from that measurement instead
//! of its own, so a disk can never be sold as HRU while storage uses it as the SSD cache.

pub mod class;
pub mod measured;
pub mod pools;
pub mod scan;
pub mod seek;
pub mod settle;

pub use class::{classify, Kind, HDD_LATENCY};
pub use measured::Measured;
pub use pools::Pool;
pub use scan::{scan, skip_reason, Disk};

/// Everything that can go wrong while looking at disks.
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
    /// A file could not be written.
    #[error("writing {path}")]
    Write {
        /// The path that failed.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file was read but does not hold what it should.
    #[error("parsing {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// What the parser said.
        message: String,
    },
    /// The device is smaller than one read of the seek test.
    #[error("seek test on {0}: device too small")]
    TooSmall(String),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Writes `value` as JSON atomically (mode 0644: the agent reads it without privilege),
/// making the folder if needed.
pub(crate) fn write_json<T: serde::Serialize + ?Sized>(
    path: &std::path::Path,
    value: &T,
) -> Result<()> {
    let err = |source| Error::Write {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let json = serde_json::to_vec_pretty(value).map_err(|e| err(std::io::Error::other(e)))?;
    atomicfile::write(path, &json, 0o644).map_err(err)
}

/// Reads JSON written by [`write_json`]; a missing file is `T::default()` (storage has not
/// written it yet).
pub(crate) fn read_json<T: serde::de::DeserializeOwned + Default>(
    path: &std::path::Path,
) -> Result<T> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::Parse {
            path: path.display().to_string(),
            message: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(source) => Err(Error::Read {
            path: path.display().to_string(),
            source,
        }),
    }
}
