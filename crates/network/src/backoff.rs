//! Retry delays for DHCP discovery: doubling from 1 s, capped, so a node with no DHCP
//! server keeps trying without flooding the link.

use std::time::Duration;

/// The delay before retry number `attempt` (0-based): 1, 2, 4, … seconds, at most `cap`.
pub fn delay(attempt: u32, cap: Duration) -> Duration {
    let secs = 1u64.checked_shl(attempt.min(20)).unwrap_or(u64::MAX);
    Duration::from_secs(secs).min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_then_caps() {
        let cap = Duration::from_secs(60);
        let d: Vec<u64> = (0..9).map(|a| delay(a, cap).as_secs()).collect();
        assert_eq!(d, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(delay(u32::MAX, cap), cap);
    }
}
