//! The durable report queue: reports wait on disk, in order, until the registry has them.
//!
//! Each entry is one file `<seq>.json` (20 digits, so names sort like numbers) written with
//! [`atomicfile::write`]: after a crash a file is either complete or absent, and a half-written
//! temp file is ignored and removed on the next open. An entry holds the report, the time it
//! describes and the nonce it will be signed with; it is signed only when sent (see
//! `docs/agent.md`), because the registry refuses envelopes more than 300 s old. The nonce is
//! fixed at enqueue time, so re-sending an entry the registry already took is answered
//! `409 replay` and the duplicate is dropped instead of stored twice.
//!
//! Uptime readings of one boot are cumulative, so a new one supersedes the older unsent ones
//! of its boot ([`Queue::supersede_uptime`]): a burst of them after an outage, all signed at
//! nearly the same time, would show the registry more uptime than time between them.

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

    /// When the node booted, by an uptime reading (`measured_at − uptime_secs`); `None` for
    /// other reports.
    pub fn boot_time(&self) -> Option<i64> {
        match self.report {
            Report::Uptime { uptime_secs, .. } => Some(boot_time(self.measured_at, uptime_secs)),
            _ => None,
        }
    }

    /// The nonce as bytes (entries are only written by [`Entry::new`], so it always decodes).
    pub fn nonce_bytes(&self) -> Option<[u8; NONCE_LEN]> {
        let mut out = [0u8; NONCE_LEN];
        hex::decode_to_slice(&self.nonce, &mut out).ok()?;
        Some(out)
    }
}

/// Two boot times this close are the same boot: the clock and `/proc/uptime` are read a
/// moment apart, both truncated to seconds, and NTP may slew the clock between readings.
pub const SAME_BOOT_SECS: i64 = 60;

/// The boot time an uptime reading taken at `measured_at` implies.
pub fn boot_time(measured_at: i64, uptime_secs: u64) -> i64 {
    measured_at.saturating_sub(i64::try_from(uptime_secs).unwrap_or(i64::MAX))
}

/// Whether two boot times name the same boot (see [`SAME_BOOT_SECS`]).
pub fn same_boot(a: i64, b: i64) -> bool {
    a.abs_diff(b) <= SAME_BOOT_SECS as u64
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

    fn read(&self, seq: u64) -> Result<Entry, QueueError> {
        let path = self.path(seq);
        let bytes = fs::read(&path).map_err(|source| QueueError::Io {
            path: path.clone(),
            source,
        })?;
        serde_json::from_slice(&bytes).map_err(|e| QueueError::Corrupt {
            path,
            message: e.to_string(),
        })
    }

    /// The oldest entry, if any; `Err(Corrupt)` means it can never be sent (drop it).
    pub fn front(&self) -> Option<(u64, Result<Entry, QueueError>)> {
        let seq = *self.seqs.front()?;
        Some((seq, self.read(seq)))
    }

    /// Removes the waiting uptime readings of the boot that started at `boot_time` (within
    /// [`SAME_BOOT_SECS`]), except `stopping` ones, before a newer reading of that boot is
    /// pushed; returns how many went.
    ///
    /// Uptime of one boot only grows, so the newer reading proves all the older ones did:
    /// nothing is lost. Sent after an outage, the older ones would all be signed at nearly the
    /// same time (see `client::sign_time`) while their uptimes differ by the report interval,
    /// which the registry's minting reads as a node claiming more uptime than time passed.
    /// Entries that cannot be read are left for [`Queue::front`] to report.
    ///
    /// Callers hold `&mut Queue`, so no entry taken with [`Queue::front`] can be in flight: the
    /// front may go too, and the next [`Queue::pop`] removes the new front, as it should.
    pub fn supersede_uptime(&mut self, boot_time: i64) -> Result<usize, QueueError> {
        let stale: Vec<u64> = self
            .seqs
            .iter()
            .copied()
            .filter(|&seq| {
                self.read(seq).is_ok_and(|e| match e.report {
                    Report::Uptime {
                        stopping: false, ..
                    } => e.boot_time().is_some_and(|b| same_boot(b, boot_time)),
                    _ => false,
                })
            })
            .collect();
        self.remove(&stale)?;
        Ok(stale.len())
    }

    /// Removes the entries `seqs` durably, forgetting each whose file is gone even when a
    /// later one fails, so the in-memory order never names a removed file.
    fn remove(&mut self, seqs: &[u64]) -> Result<(), QueueError> {
        if seqs.is_empty() {
            return Ok(());
        }
        let mut failed = None;
        let mut gone = Vec::with_capacity(seqs.len());
        for &seq in seqs {
            let path = self.path(seq);
            match fs::remove_file(&path) {
                Ok(()) => gone.push(seq),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => gone.push(seq),
                Err(source) => {
                    failed = Some(QueueError::Io { path, source });
                    break;
                }
            }
        }
        self.seqs.retain(|s| !gone.contains(s));
        // A removal not yet on disk may come back after a crash: harmless, the entry is then
        // superseded again by the next reading, or sent restated (`client::signing`).
        sync_dir(&self.dir).map_err(|source| QueueError::Io {
            path: self.dir.clone(),
            source,
        })?;
        failed.map_or(Ok(()), Err)
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

    /// Every entry, oldest first, without removing any.
    fn entries(q: &Queue) -> Vec<Entry> {
        q.seqs.iter().map(|&s| q.read(s).unwrap()).collect()
    }

    /// Every entry, oldest first, `None` for one that cannot be read.
    fn listing(q: &Queue) -> Vec<Option<Entry>> {
        q.seqs.iter().map(|&s| q.read(s).ok()).collect()
    }

    fn reading(boot: i64, uptime_secs: u64, stopping: bool) -> Entry {
        Entry::new(
            Report::Uptime {
                uptime_secs,
                stopping,
                warnings: Vec::new(),
            },
            boot + uptime_secs as i64,
        )
    }

    fn consumption(at: i64) -> Entry {
        Entry::new(
            Report::Consumption(gridtypes::Consumption {
                used: gridtypes::Resources::default(),
                traffic_bytes: 7,
                contracts: Vec::new(),
            }),
            at,
        )
    }

    #[test]
    fn a_new_reading_supersedes_only_the_older_ordinary_readings_of_its_boot() {
        const A: i64 = 1_700_000_000;
        const B: i64 = A + 100_000;
        let dir = tempfile::tempdir().unwrap();
        let mut q = Queue::open(dir.path()).unwrap();
        let a1 = reading(A, 100, false);
        let a2 = reading(A, 2_500, false);
        let traffic = consumption(A + 3_000);
        let a_stop = reading(A, 3_600, true);
        // Clock and /proc/uptime read a moment apart: still boot A.
        let a3 = reading(A + 30, 4_900, false);
        // More than a minute off: another boot, however close.
        let near = reading(A - 61, 5_000, false);
        let b1 = reading(B, 60, false);
        let b_stop = reading(B, 90, true);
        for e in [&a1, &a2, &traffic, &a_stop, &a3, &near, &b1, &b_stop] {
            q.push(e).unwrap();
        }
        // An entry nobody can read is left for the sender to report and drop.
        fs::write(dir.path().join(format!("{:020}.json", q.next)), b"junk").unwrap();
        drop(q);
        let mut q = Queue::open(dir.path()).unwrap();

        // The new reading of boot A, its boot time read a few seconds off.
        assert_eq!(q.supersede_uptime(A + 5).unwrap(), 3);
        let new = reading(A + 5, 7_300, false);
        q.push(&new).unwrap();
        let expected = vec![
            Some(traffic),
            Some(a_stop),
            Some(near),
            Some(b1),
            Some(b_stop),
            None,
            Some(new),
        ];
        assert_eq!(listing(&q), expected);

        // On disk as in memory: a reopened queue has the same entries, in the same order.
        drop(q);
        let mut q = Queue::open(dir.path()).unwrap();
        assert_eq!(listing(&q), expected);
        let mut sent = Vec::new();
        while let Some((_, e)) = q.front() {
            sent.push(e.ok());
            q.pop().unwrap();
        }
        assert_eq!(sent, expected);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn superseding_can_take_the_front_and_the_queue_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = Queue::open(dir.path()).unwrap();
        q.push(&up(1)).unwrap();
        q.push(&up(2)).unwrap();
        // `up(n)` readings all say boot 1000.
        assert_eq!(q.supersede_uptime(1000).unwrap(), 2);
        assert!(q.is_empty());
        q.push(&up(3)).unwrap();
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        drop(q);
        let mut q = Queue::open(dir.path()).unwrap();
        assert_eq!(drain(&mut q), vec![3]);
    }

    #[test]
    fn entries_written_before_superseding_existed_still_load_and_are_superseded() {
        let dir = tempfile::tempdir().unwrap();
        let nonce = "ab".repeat(NONCE_LEN);
        // Byte for byte what earlier agents wrote (no field was added for superseding).
        let old = [
            format!(
                r#"{{"measured_at":1000100,"nonce":"{nonce}","report":{{"report":"uptime","uptime_secs":100}}}}"#
            ),
            format!(
                r#"{{"measured_at":1000200,"nonce":"{nonce}","report":{{"report":"uptime","uptime_secs":200,"stopping":true}}}}"#
            ),
            format!(
                r#"{{"measured_at":1000300,"nonce":"{nonce}","report":{{"report":"consumption","used":{{"cru":0,"mru":0,"sru":0,"hru":0,"ipv4":0}},"traffic_bytes":5}}}}"#
            ),
        ];
        for (i, text) in old.iter().enumerate() {
            fs::write(dir.path().join(format!("{i:020}.json")), text).unwrap();
        }
        let mut q = Queue::open(dir.path()).unwrap();
        assert_eq!(entries(&q).len(), 3);
        assert_eq!(q.supersede_uptime(1_000_000).unwrap(), 1);
        let left = entries(&q);
        assert!(matches!(
            left[0].report,
            Report::Uptime {
                uptime_secs: 200,
                stopping: true,
                ..
            }
        ));
        assert!(matches!(left[1].report, Report::Consumption(_)));
        assert_eq!(left.len(), 2);
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
