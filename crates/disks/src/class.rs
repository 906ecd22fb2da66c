//! SSD or HDD: the one answer every program gives for a disk.

use std::time::Duration;

/// SSD or HDD, as the grid counts capacity (SRU / HRU).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Solid state: counted as SRU.
    Ssd,
    /// Spinning disk (or anything that seeks like one, or could not be measured): counted as HRU.
    Hdd,
}

/// Median random-read latency above which a disk seeks like a spinning one. The fastest
/// spinning disks (15k rpm) need ~2 ms of rotation plus ~3 ms of seek per random read; SSDs
/// answer in well under 0.5 ms, and an emulated SSD under TCG in about 1 ms.
pub const HDD_LATENCY: Duration = Duration::from_millis(3);

/// Decides SSD/HDD from what the kernel claims and what was measured.
///
/// - `rotational = Some(true)`: an HDD, unmeasured (nobody gains by claiming a slower disk).
/// - Otherwise (`Some(false)`, or `None` when the kernel has no `queue/rotational`): the
///   seek test decides. An SSD is sold at a higher price, so the claim must be measured:
///   a failed or missing measurement counts as an HDD.
pub fn classify(rotational: Option<bool>, median_latency: Option<Duration>) -> Kind {
    if rotational == Some(true) {
        return Kind::Hdd;
    }
    match median_latency {
        Some(l) if l <= HDD_LATENCY => Kind::Ssd,
        _ => Kind::Hdd,
    }
}

/// Whether the seek test is worth running: only a disk that may be an SSD is measured.
pub fn needs_seek_test(rotational: Option<bool>) -> bool {
    rotational != Some(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotational_stays_hdd() {
        assert_eq!(
            classify(Some(true), Some(Duration::from_micros(50))),
            Kind::Hdd
        );
        assert!(!needs_seek_test(Some(true)));
    }

    #[test]
    fn slow_seeks_demote_a_claimed_ssd() {
        assert_eq!(
            classify(Some(false), Some(Duration::from_millis(8))),
            Kind::Hdd
        );
        assert_eq!(
            classify(Some(false), Some(Duration::from_micros(100))),
            Kind::Ssd
        );
        assert_eq!(classify(Some(false), Some(HDD_LATENCY)), Kind::Ssd);
        assert_eq!(
            classify(Some(false), Some(HDD_LATENCY + Duration::from_micros(1))),
            Kind::Hdd
        );
    }

    #[test]
    fn unmeasured_claims_are_not_believed() {
        assert_eq!(classify(Some(false), None), Kind::Hdd);
        assert_eq!(classify(None, None), Kind::Hdd);
        assert!(needs_seek_test(None));
        assert_eq!(classify(None, Some(Duration::from_micros(90))), Kind::Ssd);
    }
}
