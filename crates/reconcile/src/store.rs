//! The desired state on the cache partition: one file per contract and the mailbox cursor,
//! each replaced atomically (temp file, fsync, rename), so a crash leaves the old or the new
//! state, never half of one, and a reboot brings every deployment back.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use gridtypes::deployment::Deployment;
use gridtypes::mailbox::DeploymentStatus;
use gridtypes::Resources;
use serde::{Deserialize, Serialize};

/// Why the state directory could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading or writing a state file failed.
    #[error("deployment state {path}")]
    Io {
        /// File or directory involved.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

/// What the node holds for one contract.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// The contract.
    pub contract_id: i64,
    /// Its twin's ed25519 key, hex: statuses are sealed to it.
    pub twin_key: String,
    /// What the contract reserved on this node: the provisioner's limits.
    pub resources: Resources,
    /// The contract ended and everything under it was removed.
    pub cancelled: bool,
    /// The newest deployment version taken up, run or refused (0: none yet). An older or
    /// equal version is never taken up again.
    pub version: u64,
    /// What should run: the newest version that passed every check.
    pub deployment: Option<Deployment>,
    /// The node's latest word on the contract.
    pub status: Option<DeploymentStatus>,
    /// The registry has `status`.
    pub status_sent: bool,
}

/// The state directory.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
}

const CURSOR: &str = "cursor";

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Store {
    /// Opens (creating) the state directory.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        fs::create_dir_all(dir).map_err(io(dir))?;
        Ok(Store {
            dir: dir.to_path_buf(),
        })
    }

    fn record_path(&self, contract: i64) -> PathBuf {
        self.dir.join(format!("contract-{contract}.json"))
    }

    /// Every record on disk. A file that does not parse (a disk error: writes are atomic) is
    /// moved aside as `*.corrupt` and named in the log, so it is neither lost nor retried.
    pub fn load(&self) -> Result<BTreeMap<i64, Record>, StoreError> {
        let mut out = BTreeMap::new();
        for entry in fs::read_dir(&self.dir).map_err(io(&self.dir))? {
            let path = entry.map_err(io(&self.dir))?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if !(name.starts_with("contract-") && name.ends_with(".json")) {
                continue;
            }
            let bytes = fs::read(&path).map_err(io(&path))?;
            match serde_json::from_slice::<Record>(&bytes) {
                Ok(r) if path == self.record_path(r.contract_id) => {
                    out.insert(r.contract_id, r);
                }
                parsed => {
                    let why = match parsed {
                        Err(e) => e.to_string(),
                        Ok(r) => format!("holds contract {}", r.contract_id),
                    };
                    let aside = path.with_extension("corrupt");
                    tracing::error!(path = %path.display(), why, aside = %aside.display(), "deployment record unreadable: moved aside");
                    fs::rename(&path, &aside).map_err(io(&path))?;
                }
            }
        }
        Ok(out)
    }

    /// Replaces a record atomically.
    pub fn save(&self, r: &Record) -> Result<(), StoreError> {
        let path = self.record_path(r.contract_id);
        // Plain data: it always serialises.
        let bytes = serde_json::to_vec_pretty(r).unwrap_or_default();
        atomicfile::write(&path, &bytes, 0o600).map_err(io(&path))
    }

    /// The mailbox revision handled last (0 when none).
    pub fn cursor(&self) -> Result<i64, StoreError> {
        let path = self.dir.join(CURSOR);
        match fs::read_to_string(&path) {
            Ok(t) => Ok(t.trim().parse().unwrap_or_else(|_| {
                tracing::error!(path = %path.display(), "mailbox cursor unreadable: reading the mailbox from the start");
                0
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Records that every mailbox change up to `rev` was taken up.
    pub fn set_cursor(&self, rev: i64) -> Result<(), StoreError> {
        let path = self.dir.join(CURSOR);
        atomicfile::write(&path, rev.to_string().as_bytes(), 0o600).map_err(io(&path))
    }
}
