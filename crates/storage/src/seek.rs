//! A short random-read seek test: a disk that claims to be non-rotational but seeks
//! like a spinning one is counted as an HDD (capacity is measured, not trusted).

use crate::{Error, Result};
use std::path::Path;
use std::time::{Duration, Instant};

/// SSD or HDD, as the grid counts capacity (SRU / HRU).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Solid state: counted as SRU.
    Ssd,
    /// Spinning disk (or anything that seeks like one): counted as HRU.
    Hdd,
}

/// Mean random-read latency above which a disk seeks like a spinning one.
pub const HDD_LATENCY: Duration = Duration::from_millis(3);

/// Number of random 4 KiB reads in the seek test.
pub const SEEKS: u32 = 32;

/// Decides SSD/HDD from what the kernel says and the measured mean latency.
/// A seek test can only demote a claimed SSD: a rotational disk stays an HDD.
pub fn classify(rotational: bool, mean_latency: Option<Duration>) -> Kind {
    if rotational {
        return Kind::Hdd;
    }
    match mean_latency {
        Some(l) if l > HDD_LATENCY => Kind::Hdd,
        _ => Kind::Ssd,
    }
}

/// Offsets for the seek test: spread over the whole disk, 4 KiB aligned, from a
/// small deterministic generator (no need for real randomness here).
pub fn offsets(size_bytes: u64, count: u32, seed: u64) -> Vec<u64> {
    let blocks = size_bytes / 4096;
    if blocks == 0 {
        return Vec::new();
    }
    let mut x = seed | 1;
    (0..count)
        .map(|_| {
            // xorshift64
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % blocks) * 4096
        })
        .collect()
}

/// Reads 4 KiB at each offset with `O_DIRECT` (no page cache) and returns the mean latency.
pub fn measure(dev: &Path, size_bytes: u64) -> Result<Duration> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let err = |source| Error::Read {
        path: dev.display().to_string(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(dev)
        .map_err(err)?;
    // O_DIRECT needs an aligned buffer: take the 4 KiB-aligned window of a larger one.
    let mut raw = vec![0u8; 8192];
    let shift = raw.as_ptr().align_offset(4096);
    let buf = raw
        .get_mut(shift..shift + 4096)
        .ok_or_else(|| err(std::io::Error::other("cannot align buffer")))?;
    let offs = offsets(size_bytes, SEEKS, 0x9e37_79b9_7f4a_7c15);
    if offs.is_empty() {
        return Ok(Duration::ZERO);
    }
    let start = Instant::now();
    for off in &offs {
        file.read_exact_at(buf, *off).map_err(err)?;
    }
    Ok(start.elapsed() / offs.len() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotational_stays_hdd() {
        assert_eq!(classify(true, Some(Duration::from_micros(50))), Kind::Hdd);
    }

    #[test]
    fn slow_seeks_demote_ssd() {
        assert_eq!(classify(false, Some(Duration::from_millis(8))), Kind::Hdd);
        assert_eq!(classify(false, Some(Duration::from_micros(100))), Kind::Ssd);
        assert_eq!(classify(false, None), Kind::Ssd);
    }

    #[test]
    fn offsets_are_aligned_and_inside() {
        let size = 10 * 1024 * 1024 + 123;
        let o = offsets(size, 100, 42);
        assert_eq!(o.len(), 100);
        assert!(o.iter().all(|x| x % 4096 == 0 && x + 4096 <= size));
        assert!(offsets(100, 5, 1).is_empty());
    }
}
