//! One retry policy for init (service restarts), network (DHCP) and the agent (registry):
//! exponential growth, a cap, and jitter.
//!
//! Without jitter every node of the grid that lost the registry at the same moment retries at
//! the same moments, and the registry's recovery is met by the whole grid at once. Each delay is
//! drawn uniformly from the upper half of its nominal value ("equal jitter"): spread enough to
//! break the lockstep, never less than half the nominal wait.
//!
//! The jitter comes from the standard library's per-process random hash keys, which never
//! block (`getrandom` with `GRND_INSECURE`): retries start at boot, before the kernel's CRNG
//! is ready, and a retry delay needs no secret.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// Capped exponential backoff with equal jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    stable: Option<Duration>,
    failures: u32,
    rng: Jitter,
}

impl Backoff {
    /// Delays start at `initial` and double up to `max` (nominal values, before jitter).
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max: max.max(initial),
            stable: None,
            failures: 0,
            rng: Jitter::new(),
        }
    }

    /// A run that lasted at least `stable` forgets earlier failures (service restarts).
    pub fn reset_after(mut self, stable: Duration) -> Backoff {
        self.stable = Some(stable);
        self
    }

    /// The nominal (un-jittered) delay of the next failure: `initial * 2^failures`, capped.
    pub fn nominal(&self) -> Duration {
        let factor = 1u32.checked_shl(self.failures.min(31)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The delay before the next attempt; each call counts one more failure.
    pub fn next_delay(&mut self) -> Duration {
        let d = jitter(self.nominal(), self.rng.next());
        self.failures = self.failures.saturating_add(1);
        d
    }

    /// Like [`Backoff::next_delay`], after a run that lasted `ran_for` (see [`Backoff::reset_after`]).
    pub fn next_delay_after(&mut self, ran_for: Duration) -> Duration {
        if self.stable.is_some_and(|s| ran_for >= s) {
            self.failures = 0;
        }
        self.next_delay()
    }

    /// Consecutive failures counted so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// True while failures are being backed off.
    pub fn active(&self) -> bool {
        self.failures > 0
    }

    /// After a success (or a manual restart).
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// A value in `[d/2, d]` picked by `r` (uniform when `r` is).
pub fn jitter(d: Duration, r: u64) -> Duration {
    let nanos = d.as_nanos().min(u128::from(u64::MAX)) as u64;
    let half = nanos / 2;
    let span = nanos - half;
    let extra = if span == 0 { 0 } else { r % (span + 1) };
    Duration::from_nanos(half + extra)
}

/// Non-blocking, non-secret random numbers: a SipHash of a counter under per-process keys.
#[derive(Debug, Clone)]
struct Jitter {
    keys: RandomState,
    counter: u64,
}

impl Jitter {
    fn new() -> Jitter {
        Jitter {
            keys: RandomState::new(),
            counter: 0,
        }
    }

    fn next(&mut self) -> u64 {
        self.counter = self.counter.wrapping_add(1);
        let mut h = self.keys.build_hasher();
        h.write_u64(self.counter);
        h.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nominal_doubles_caps_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let mut nominal = Vec::new();
        for _ in 0..6 {
            nominal.push(b.nominal().as_millis() as u64);
            let d = b.next_delay();
            assert!(d <= Duration::from_secs(1));
        }
        assert_eq!(nominal, [100, 200, 400, 800, 1000, 1000]);
        assert!(b.active());
        b.reset();
        assert!(!b.active());
        assert_eq!(b.nominal(), Duration::from_millis(100));
    }

    #[test]
    fn delays_stay_in_the_upper_half() {
        let mut b = Backoff::new(Duration::from_secs(8), Duration::from_secs(8));
        for _ in 0..1000 {
            let d = b.next_delay();
            assert!(
                d >= Duration::from_secs(4) && d <= Duration::from_secs(8),
                "{d:?}"
            );
        }
        assert_eq!(jitter(Duration::from_secs(10), 0), Duration::from_secs(5));
        assert_eq!(jitter(Duration::ZERO, 12345), Duration::ZERO);
        assert_eq!(
            jitter(Duration::from_nanos(10), 5),
            Duration::from_nanos(10)
        );
    }

    #[test]
    fn nodes_do_not_retry_in_lockstep() {
        // 50 "nodes" lose the registry at the same moment; their third retries must spread
        // over the window instead of landing on one instant.
        let delays: Vec<Duration> = (0..50)
            .map(|_| {
                let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
                b.next_delay();
                b.next_delay();
                b.next_delay()
            })
            .collect();
        let min = delays.iter().min().copied().unwrap_or_default();
        let max = delays.iter().max().copied().unwrap_or_default();
        assert!(max - min > Duration::from_millis(500), "{min:?}..{max:?}");
        let distinct: std::collections::BTreeSet<_> = delays.iter().collect();
        assert!(distinct.len() > 40, "{} distinct delays", distinct.len());
    }

    #[test]
    fn a_stable_run_forgets_failures() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(30))
            .reset_after(Duration::from_secs(60));
        for _ in 0..4 {
            b.next_delay_after(Duration::ZERO);
        }
        assert_eq!(b.nominal(), Duration::from_secs(8));
        let d = b.next_delay_after(Duration::from_secs(61));
        assert!(d <= Duration::from_millis(500));
        assert_eq!(b.failures(), 1);
    }
}
