//! What storage did, written for the supervisor's readiness test and for the agent.

use crate::plan::Candidate;
use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// State file name inside the run directory.
pub const STATE_FILE: &str = "storage.json";
/// Marker file the agent reads to put a "cache is on tmpfs" warning in every report.
pub const TMPFS_MARKER: &str = "storage-tmpfs";

/// How the cache is backed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backing {
    /// An existing gridos cache partition was mounted.
    Reused,
    /// A new cache partition was created and mounted.
    Created,
    /// No usable disk: tmpfs, lost at reboot.
    Tmpfs,
}

/// The outcome of one storage run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct State {
    /// How the cache is backed.
    pub backing: Backing,
    /// Where it is mounted.
    pub mountpoint: PathBuf,
    /// The cache partition's device, if on disk.
    pub device: Option<PathBuf>,
    /// Why the cache is on tmpfs, if it is.
    pub warning: Option<String>,
    /// Every disk considered, with its measured kind.
    pub disks: Vec<Candidate>,
    /// The disk holding the cache partition, if on disk.
    pub cache_disk: Option<String>,
    /// Every mounted pool, the cache's first.
    pub pools: Vec<disks::Pool>,
}

/// Writes `bytes` to `path` (mode 0644) atomically, creating the directory if needed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let err = |source| Error::Write {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    atomicfile::write(path, bytes, 0o644).map_err(err)
}

/// Records the state, and the tmpfs marker when the cache is not on a disk.
pub fn save(run_dir: &Path, state: &State) -> Result<()> {
    let marker = run_dir.join(TMPFS_MARKER);
    match &state.warning {
        Some(w) => write_atomic(&marker, format!("{w}\n").as_bytes())?,
        None => match std::fs::remove_file(&marker) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(Error::Write {
                    path: marker.display().to_string(),
                    source,
                })
            }
        },
    }
    let json = serde_json::to_vec_pretty(state).map_err(|e| Error::Write {
        path: run_dir.join(STATE_FILE).display().to_string(),
        source: std::io::Error::other(e),
    })?;
    write_atomic(&run_dir.join(STATE_FILE), &json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tmpfs_marker_follows_the_warning() {
        let t = tempfile::tempdir().unwrap();
        let mut s = State {
            backing: Backing::Tmpfs,
            mountpoint: "/var/cache/gridos".into(),
            device: None,
            warning: Some("no disk found".into()),
            disks: vec![],
            cache_disk: None,
            pools: vec![],
        };
        save(t.path(), &s).unwrap();
        let m = std::fs::read_to_string(t.path().join(TMPFS_MARKER)).unwrap();
        assert_eq!(m, "no disk found\n");
        let j: serde_json::Value =
            serde_json::from_slice(&std::fs::read(t.path().join(STATE_FILE)).unwrap()).unwrap();
        assert_eq!(j["backing"], "tmpfs");
        s.backing = Backing::Created;
        s.warning = None;
        save(t.path(), &s).unwrap();
        assert!(!t.path().join(TMPFS_MARKER).exists());
    }
}
