//! Capped exponential restart backoff, reset after a service stays up long enough.

use std::time::Duration;

/// Restart delays: `initial * 2^n`, capped at `max`; reset once a run lasts `stable`.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    stable: Duration,
    failures: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(
            Duration::from_millis(500),
            Duration::from_secs(30),
            Duration::from_secs(60),
        )
    }
}

impl Backoff {
    /// A backoff starting at `initial`, never above `max`, reset by a run of `stable`.
    pub fn new(initial: Duration, max: Duration, stable: Duration) -> Self {
        Backoff {
            initial,
            max,
            stable,
            failures: 0,
        }
    }

    /// The delay before the next restart, given how long the last run lasted.
    pub fn next_delay(&mut self, ran_for: Duration) -> Duration {
        if ran_for >= self.stable {
            self.failures = 0;
        }
        let factor = 1u32.checked_shl(self.failures.min(31)).unwrap_or(u32::MAX);
        let delay = self.initial.saturating_mul(factor).min(self.max);
        self.failures = self.failures.saturating_add(1);
        delay
    }

    /// Consecutive failures counted so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Forgets past failures (after a manual start).
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}
