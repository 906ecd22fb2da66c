//! The short random-read seek test that checks a disk's "I am not rotational" claim.
//!
//! 32 reads of 4 KiB with `O_DIRECT` (no page cache) at offsets spread over the whole disk;
//! the median is kept, so one slow first read (a disk waking up) does not decide.

use crate::{Error, Result};
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::path::Path;
use std::time::{Duration, Instant};

/// Number of random reads.
pub const SEEKS: usize = 32;
/// One read; also the alignment `O_DIRECT` needs for buffer, offset and length.
const BLOCK: u64 = 4096;

/// `count` offsets, 4 KiB aligned, inside `size_bytes`, from a xorshift generator.
pub fn offsets(size_bytes: u64, count: usize, seed: u64) -> Vec<u64> {
    let blocks = size_bytes / BLOCK;
    if blocks == 0 {
        return Vec::new();
    }
    let mut x = seed | 1;
    (0..count)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % blocks) * BLOCK
        })
        .collect()
}

/// The median of the samples (the upper one of the two middles), or `None` when empty.
pub fn median(mut samples: Vec<Duration>) -> Option<Duration> {
    samples.sort();
    samples.get(samples.len() / 2).copied()
}

/// A seed that differs per run, so a disk cannot learn where it will be read, and that never
/// waits for the kernel's CRNG (the standard library's hash keys use `GRND_INSECURE`).
fn seed() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(0x9e37_79b9_7f4a_7c15);
    h.finish()
}

/// Reads [`SEEKS`] random 4 KiB blocks of `dev` with `O_DIRECT` and returns the median latency.
pub fn measure(dev: &Path, size_bytes: u64) -> Result<Duration> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let err = |source| Error::Read {
        path: dev.display().to_string(),
        source,
    };
    let offs = offsets(size_bytes, SEEKS, seed());
    if offs.is_empty() {
        return Err(Error::TooSmall(dev.display().to_string()));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(dev)
        .map_err(err)?;
    // O_DIRECT needs an aligned buffer: the 4 KiB-aligned window of a plain Vec twice as large.
    let mut raw = vec![0u8; 2 * BLOCK as usize];
    let shift = raw
        .as_ptr()
        .align_offset(BLOCK as usize)
        .min(BLOCK as usize);
    let buf = raw
        .get_mut(shift..shift + BLOCK as usize)
        .ok_or_else(|| err(std::io::Error::other("cannot align buffer")))?;
    let mut samples = Vec::with_capacity(offs.len());
    for off in offs {
        let t = Instant::now();
        file.read_exact_at(buf, off).map_err(err)?;
        samples.push(t.elapsed());
    }
    median(samples).ok_or_else(|| Error::TooSmall(dev.display().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_aligned_inside_and_vary() {
        let size = 10 * 1024 * 1024 + 123;
        let o = offsets(size, 100, 42);
        assert_eq!(o.len(), 100);
        assert!(o.iter().all(|x| x % BLOCK == 0 && x + BLOCK <= size));
        assert!(offsets(100, 5, 1).is_empty());
        assert_ne!(offsets(size, 8, seed()), offsets(size, 8, seed()));
    }

    #[test]
    fn median_ignores_one_slow_read() {
        let mut s = vec![Duration::from_micros(100); 31];
        s.push(Duration::from_millis(50));
        assert_eq!(median(s), Some(Duration::from_micros(100)));
        assert_eq!(median(vec![]), None);
    }

    #[test]
    fn missing_and_tiny_devices_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            measure(&dir.path().join("none"), 1 << 20),
            Err(Error::Read { .. })
        ));
        assert!(matches!(
            measure(&dir.path().join("none"), 100),
            Err(Error::TooSmall(_))
        ));
    }

    #[test]
    fn reads_a_file_when_the_filesystem_allows_o_direct() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        std::fs::write(&path, vec![1u8; 64 * BLOCK as usize]).unwrap();
        match measure(&path, 64 * BLOCK) {
            Ok(m) => assert!(m < Duration::from_secs(1)),
            // tmpfs and some overlay filesystems refuse O_DIRECT: an error, not a panic.
            Err(Error::Read { source, .. }) => {
                assert_eq!(source.raw_os_error(), Some(libc::EINVAL))
            }
            Err(e) => panic!("{e}"),
        }
    }
}
