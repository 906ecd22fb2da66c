//! The durable report queue: reports wait on disk, in order, until the registry has them.
//!
//! Each entry is one file `<seq>.json` (20 digits, so names sort like numbers) written with
//! [`atomicfile::write`]: after a crash a file is either complete or absent, and a half-written
//! temp file is ignored and removed on the next open. An entry holds the report, the time it
//! describes and the nonce it will be signed with; it is signed only when sent (see
//! `docs/agent.md`), because the registry refuses envelopes more than 300 s old. The nonce is
//! fixed at enqueue time, so re-sending an entry the registry already took is answered
//! `409 replay` and the duplicate is dropped instead of stored twice.

use std::collections::VecDeque;
use std::fs;
use std::path::{Path, PathBuf};

use gridtypes::{Report, NONCE_LEN};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use atomicfile::{sync_dir, TEMP_PREFIX};

/// Why the queue could not be used.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// Filesystem error on the queue directory or an entry.
    #[error("report queue {path}")]
    Io {
        /// File or directory involved.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// An entry file exists but is not a queue entry (it can never be sent).
    #[error("report queue entry {path} is corrupt: {message}")]
    Corrupt {
        /// The entry file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
}

/// One queued report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Unix time the report describes (when it was measured).
    pub measured_at: i64,
    /// Hex nonce the envelope is signed with, fixed so a re-send is recognised as a replay.
    pub nonce: String,
    /// The report itself.
    pub report: Report,
}

impl Entry {
    /// A new entry with a fresh random nonce.
    pub fn new(report: Report, measured_at: i64) -> Entry {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        Entry {
            measured_at,
            nonce: hex::encode(nonce),
            report,
        }
    }

    /// The nonce as bytes (entries are only written by [`Entry::new`], so it always decodes).
    pub fn nonce_bytes(&self) -> Option<[u8; NONCE_LEN]> {
        let mut out = [0u8; NONCE_LEN];
        hex::decode_to_slice(&self.nonce, &mut out).ok()?;
        Some(out)
    }
}

/// An on-disk FIFO of reports.
#[derive(Debug)]
pub struct Queue {
    dir: PathBuf,
    seqs: VecDeque<u64>,
    next: u64,
}

fn entry_seq(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".json")?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

impl Queue {
    /// Opens (creating if needed) the queue in `dir`, dropping half-written temp files.
    pub fn open(dir: &Path) -> Result<Queue, QueueError> {
        let io = |source| QueueError::Io {
            path: dir.to_path_buf(),
            source,
        };
        fs::create_dir_all(dir).map_err(io)?;
        let mut seqs = Vec::new();
        for e in fs::read_dir(dir).map_err(io)? {
            let e = e.map_err(io)?;
            let name = e.file_name();
            let name = name.to_string_lossy();
            if let Some(seq) = entry_seq(&name) {
                seqs.push(seq);
            } else if name.starts_with(TEMP_PREFIX) {
                tracing::info!(file = %name, "removing a half-written queue entry left by a crash");
                fs::remove_file(e.path()).map_err(|source| QueueError::Io {
                    path: e.path(),
                    source,
                })?;
            }
        }
        seqs.sort_unstable();
        let next = seqs.last().map_or(0, |s| s + 1);
        Ok(Queue {
            dir: dir.to_path_buf(),
            seqs: seqs.into(),
            next,
        })
    }

    fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:020}.json"))
    }

    /// Number of reports waiting.
    pub fn len(&self) -> usize {
        self.seqs.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }

    /// Appends an entry durably; returns its sequence number.
    pub fn push(&mut self, entry: &Entry) -> Result<u64, QueueError> {
        let seq = self.next;
        let path = self.path(seq);
        let bytes = serde_json::to_vec(entry).map_err(|e| QueueError::Corrupt {
            path: path.clone(),
            message: e.to_string(),
        })?;
        atomicfile::write(&path, &bytes, 0o600)
            .map_err(|source| QueueError::Io { path, source })?;
        self.next += 1;
        self.seqs.push_back(seq);
        Ok(seq)
    }

    /// The oldest entry, if any; `Err(Corrupt)` means it can never be sent (drop it).
    pub fn front(&self) -> Option<(u64, Result<Entry, QueueError>)> {
        let seq = *self.seqs.front()?;
        let path = self.path(seq);
        let entry = fs::read(&path)
            .map_err(|source| QueueError::Io {
                path: path.clone(),
                source,
            })
            .and_then(|bytes| {
                serde_json::from_slice(&bytes).map_err(|e| QueueError::Corrupt {
                    path,
                    message: e.to_string(),
                })
            });
        Some((seq, entry))
    }

    /// Removes the oldest entry (after the registry took it, or refused it for good).
    pub fn pop(&mut self) -> Result<(), QueueError> {
        let Some(seq) = self.seqs.front().copied() else {
            return Ok(());
        };
        let path = self.path(seq);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(QueueError::Io { path, source }),
        }
        sync_dir(&self.dir).map_err(|source| QueueError::Io {
            path: self.dir.clone(),
            source,
        })?;
        self.seqs.pop_front();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(n: u64) -> Entry {
        Entry::new(Report::uptime(n), 1000 + n as i64)
    }

    fn drain(q: &mut Queue) -> Vec<u64> {
        let mut out = Vec::new();
        while let Some((_, e)) = q.front() {
            match e.unwrap().report {
                Report::Uptime { uptime_secs, .. } => out.push(uptime_secs),
                other => panic!("{other:?}"),
            }
            q.pop().unwrap();
        }
        out
    }

    #[test]
    fn fifo_order_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = Queue::open(dir.path()).unwrap();
        for n in 1..=12 {
            q.push(&up(n)).unwrap();
        }
        q.pop().unwrap();
        drop(q);
        let mut q = Queue::open(dir.path()).unwrap();
        assert_eq!(q.len(), 11);
        q.push(&up(13)).unwrap();
        assert_eq!(drain(&mut q), (2..=13).collect::<Vec<_>>());
        assert!(q.is_empty());
        // Sequence numbers keep growing after a restart, even when the queue was empty.
        drop(q);
        let mut q = Queue::open(dir.path()).unwrap();
        q.push(&up(14)).unwrap();
        assert_eq!(drain(&mut q), vec![14]);
    }

    #[test]
    fn partial_temp_files_are_ignored_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = Queue::open(dir.path()).unwrap();
        q.push(&up(1)).unwrap();
        drop(q);
        // A crash in the middle of atomicfile::write leaves only a temp file behind.
        let tmp = dir.path().join(format!("{TEMP_PREFIX}{:020}.json", 1));
        fs::write(&tmp, b"{\"measured_at\":").unwrap();
        fs::write(dir.path().join("README"), b"not an entry").unwrap();
        let mut q = Queue::open(dir.path()).unwrap();
        assert!(!tmp.exists());
        assert_eq!(q.len(), 1);
        q.push(&up(2)).unwrap();
        assert_eq!(drain(&mut q), vec![1, 2]);
    }

    #[test]
    fn corrupt_entry_is_reported_and_can_be_dropped() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(format!("{:020}.json", 5)), b"junk").unwrap();
        let mut q = Queue::open(dir.path()).unwrap();
        q.push(&up(6)).unwrap();
        let (seq, e) = q.front().unwrap();
        assert_eq!(seq, 5);
        assert!(matches!(e, Err(QueueError::Corrupt { .. })));
        q.pop().unwrap();
        assert_eq!(drain(&mut q), vec![6]);
    }

    #[test]
    fn entries_keep_their_nonce() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = Queue::open(dir.path()).unwrap();
        let e = up(1);
        q.push(&e).unwrap();
        drop(q);
        let q = Queue::open(dir.path()).unwrap();
        let (_, back) = q.front().unwrap();
        let back = back.unwrap();
        assert_eq!(back, e);
        assert!(back.nonce_bytes().is_some());
    }
}
