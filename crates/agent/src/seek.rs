//! The random-read seek test that checks a disk's "I am not rotational" claim.
//!
//! A disk that says it is an SSD earns more (SRU counts towards CU), so the claim is checked:
//! random 4 KiB reads with `O_DIRECT` (no page cache) spread over the whole device. An SSD
//! answers each in well under a millisecond; a spinning disk must seek.

use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::Rng;

/// Why a seek test could not run.
#[derive(Debug, thiserror::Error)]
pub enum SeekError {
    /// The device node could not be opened or read.
    #[error("seek test on {path}: {source}")]
    Io {
        /// The device node.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The device is smaller than one read.
    #[error("seek test on {0}: device too small")]
    TooSmall(PathBuf),
}

/// Measures the mean random-read latency of a block device.
pub trait SeekTest {
    /// Mean latency of random reads over the first `size` bytes of `dev`.
    fn mean_latency(&self, dev: &Path, size: u64) -> Result<Duration, SeekError>;
}

/// The real test: `reads` random 4 KiB `O_DIRECT` reads.
#[derive(Debug, Clone)]
pub struct RandomRead {
    /// How many reads to average (short: the probe runs at boot).
    pub reads: u32,
}

impl Default for RandomRead {
    fn default() -> Self {
        RandomRead { reads: 32 }
    }
}

/// One read; also the alignment `O_DIRECT` needs for the buffer, offset and length.
const BLOCK: usize = 4096;

impl SeekTest for RandomRead {
    fn mean_latency(&self, dev: &Path, size: u64) -> Result<Duration, SeekError> {
        let io = |source| SeekError::Io {
            path: dev.to_path_buf(),
            source,
        };
        let blocks = size / BLOCK as u64;
        if blocks == 0 {
            return Err(SeekError::TooSmall(dev.to_path_buf()));
        }
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_DIRECT)
            .open(dev)
            .map_err(io)?;
        // An aligned window inside a plain Vec: O_DIRECT without unsafe allocation.
        let mut raw = vec![0u8; 2 * BLOCK];
        let start = raw.as_ptr().align_offset(BLOCK).min(BLOCK);
        let buf = &mut raw[start..start + BLOCK];
        let mut rng = rand::thread_rng();
        let reads = self.reads.max(1);
        let mut total = Duration::ZERO;
        for _ in 0..reads {
            let offset = rng.gen_range(0..blocks) * BLOCK as u64;
            let t = Instant::now();
            file.read_exact_at(buf, offset).map_err(io)?;
            total += t.elapsed();
        }
        Ok(total / reads)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_small_and_missing_devices_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let t = RandomRead::default();
        assert!(matches!(
            t.mean_latency(&dir.path().join("none"), 1 << 20),
            Err(SeekError::Io { .. })
        ));
        assert!(matches!(
            t.mean_latency(&dir.path().join("none"), 100),
            Err(SeekError::TooSmall(_))
        ));
    }

    #[test]
    fn reads_a_regular_file_when_the_filesystem_allows_o_direct() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        std::fs::write(&path, vec![1u8; 64 * BLOCK]).unwrap();
        match (RandomRead { reads: 8 }).mean_latency(&path, 64 * BLOCK as u64) {
            Ok(mean) => assert!(mean < Duration::from_secs(1)),
            // tmpfs and some overlay filesystems refuse O_DIRECT: that is an error, not a panic.
            Err(SeekError::Io { source, .. }) => {
                assert_eq!(source.raw_os_error(), Some(nix::libc::EINVAL))
            }
            Err(e) => panic!("{e}"),
        }
    }
}
