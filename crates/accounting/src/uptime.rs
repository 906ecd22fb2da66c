//! Minting periods and the uptime a node proved in one, from its signed uptime reports
//! (DESIGN.md, "Minting").
//!
//! The time axis is each report's signed timestamp, which the registry accepted only within
//! 300 s of its own clock; the uptime counter is the node's. Between two reports the node
//! cannot claim more uptime than time passed (beyond the tolerance): it would be asserting
//! a boot that happened before its previous report said it did.

use serde::{Deserialize, Serialize};

/// One minting period: 2,630,880 s (12 per year on average).
pub const PERIOD_SECS: i64 = 2_630_880;
/// How far uptime may run ahead of time between two reports (clock and measuring slack).
pub const TOLERANCE_SECS: i64 = 60;

/// A node's minting period `index`, counted from the node's first registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Period {
    /// 0 for the period starting at the first registration.
    pub index: u64,
    /// First second of the period (Unix time).
    pub start: i64,
    /// First second after it.
    pub end: i64,
}

impl Period {
    /// Period `index` of a node that first registered at `connected_at`.
    pub fn nth(connected_at: i64, index: u64) -> Period {
        let start = connected_at.saturating_add((index as i64).saturating_mul(PERIOD_SECS));
        Period {
            index,
            start,
            end: start.saturating_add(PERIOD_SECS),
        }
    }

    /// The index of the period holding time `t`, or `None` before the first registration.
    pub fn index_at(connected_at: i64, t: i64) -> Option<u64> {
        (t >= connected_at).then(|| t.abs_diff(connected_at) / PERIOD_SECS as u64)
    }

    /// Whether `t` falls in the period.
    pub fn contains(&self, t: i64) -> bool {
        (self.start..self.end).contains(&t)
    }
}

/// One signed uptime report: when it was signed, and the seconds since boot it claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sample {
    /// The envelope's signed timestamp.
    pub at: i64,
    /// The uptime the node reported.
    pub uptime_secs: u64,
}

/// A pair of reports in which uptime grew more than time did: the period earns nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Violation {
    /// Signed time of the second report of the pair.
    pub at: i64,
    /// Seconds of uptime it claims since the first.
    pub uptime_delta: i64,
    /// Seconds that passed between the two.
    pub time_delta: i64,
}

/// What a period's reports prove.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Uptime {
    /// Seconds of the period the node proved it was up.
    pub up_secs: i64,
    /// Length of the period.
    pub period_secs: i64,
    /// Uptime reports signed inside the period.
    pub reports: u64,
    /// The first violation in the period, if any.
    pub violation: Option<Violation>,
}

impl Uptime {
    /// Uptime as thousandths of the period (what an SLA in permill is compared with).
    pub fn permill(&self) -> u64 {
        if self.period_secs <= 0 {
            return 0;
        }
        (self.up_secs.max(0) as u128 * 1000 / self.period_secs as u128) as u64
    }
}

/// The uptime of `period`, from the node's uptime reports.
///
/// `samples` should hold every report signed in the period plus the last one before it and
/// the first one after it (they bound the intervals that cross the period's edges). They
/// are taken in signed-time order; reports signed in the same second keep the order given,
/// which callers take from the registry's report ids.
///
/// Between consecutive reports `a` and `b`, `Δt = b.at − a.at`:
/// - `b.uptime < Δt`, or the counter went backwards: the node rebooted; `b.uptime` seconds
///   before `b` count as up, the rest as down;
/// - `Δuptime > Δt + 60 s`: a violation, and nothing of the pair counts;
/// - otherwise `min(Δuptime, Δt)` seconds before `b` count as up.
///
/// The report with no report before it counts back to the period's start at most. Whatever
/// follows the last report is not proved and counts as down.
pub fn account(period: &Period, samples: &[Sample]) -> Uptime {
    let mut sorted: Vec<Sample> = samples.to_vec();
    sorted.sort_by_key(|s| s.at);
    let mut up = 0i64;
    let mut violation = None;
    let mut add = |from: i64, to: i64| {
        let (from, to) = (from.max(period.start), to.min(period.end));
        if to > from {
            up += to - from;
        }
    };
    let mut prev: Option<Sample> = None;
    for b in &sorted {
        let ub = b.uptime_secs.min(i64::MAX as u64) as i64;
        let up_len = match prev {
            None => ub.min(b.at.saturating_sub(period.start)),
            Some(a) => {
                let ua = a.uptime_secs.min(i64::MAX as u64) as i64;
                let dt = b.at.saturating_sub(a.at);
                let du = ub.saturating_sub(ua);
                if ub < ua || ub < dt {
                    ub.min(dt)
                } else if is_violation(a, *b) {
                    if violation.is_none() && period.contains(b.at) {
                        violation = Some(Violation {
                            at: b.at,
                            uptime_delta: du,
                            time_delta: dt,
                        });
                    }
                    0
                } else {
                    du.min(dt)
                }
            }
        };
        add(b.at.saturating_sub(up_len), b.at);
        prev = Some(*b);
    }
    Uptime {
        up_secs: up,
        period_secs: period.end.saturating_sub(period.start),
        reports: sorted.iter().filter(|s| period.contains(s.at)).count() as u64,
        violation,
    }
}

/// Whether report `b`, following `a`, claims more uptime than time passed beyond
/// [`TOLERANCE_SECS`] without being a reboot (less uptime than before, or than time passed):
/// the rule [`account`] applies, and what an honest agent must never send.
pub fn is_violation(a: Sample, b: Sample) -> bool {
    let ua = a.uptime_secs.min(i64::MAX as u64) as i64;
    let ub = b.uptime_secs.min(i64::MAX as u64) as i64;
    let dt = b.at.saturating_sub(a.at);
    if ub < ua || ub < dt {
        return false;
    }
    ub.saturating_sub(ua) > dt.saturating_add(TOLERANCE_SECS)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_700_000_000;
    const HOUR: i64 = 3600;
    const EVERY: i64 = 40 * 60;

    fn p() -> Period {
        Period::nth(T0, 0)
    }

    /// A node booted at `boot` reporting every 40 min from `from` to `to`.
    fn steady(boot: i64, from: i64, to: i64) -> Vec<Sample> {
        (from..to)
            .step_by(EVERY as usize)
            .map(|at| Sample {
                at,
                uptime_secs: (at - boot) as u64,
            })
            .collect()
    }

    #[test]
    fn periods_follow_each_other_from_the_first_registration() {
        let p1 = Period::nth(T0, 1);
        assert_eq!(p1.start, T0 + 2_630_880);
        assert_eq!(p1.end, T0 + 2 * 2_630_880);
        assert_eq!(Period::index_at(T0, T0 - 1), None);
        assert_eq!(Period::index_at(T0, T0), Some(0));
        assert_eq!(Period::index_at(T0, p1.start - 1), Some(0));
        assert_eq!(Period::index_at(T0, p1.start), Some(1));
    }

    #[test]
    fn a_node_up_the_whole_period_proves_all_of_it() {
        // Booted an hour before registering; reports until a report after the period's end.
        let s = steady(T0 - HOUR, T0 + 60, T0 + PERIOD_SECS + EVERY);
        let u = account(&p(), &s);
        assert_eq!(u.violation, None);
        assert_eq!(u.up_secs, PERIOD_SECS);
        assert_eq!(u.permill(), 1000);
        assert_eq!(u.reports, 1097);
    }

    #[test]
    fn worked_example_of_a_reboot() {
        // Reports at 0, 2400 and 4800 s into the period; the node rebooted 1000 s before the
        // third: 2400 s up, then 1400 s down, then 1000 s up.
        let s = [
            Sample {
                at: T0,
                uptime_secs: 500,
            },
            Sample {
                at: T0 + 2400,
                uptime_secs: 2900,
            },
            Sample {
                at: T0 + 4800,
                uptime_secs: 1000,
            },
        ];
        let u = account(&p(), &s);
        assert_eq!(u.up_secs, 2400 + 1000);
        assert_eq!(u.violation, None);
        assert_eq!(u.reports, 3);
    }

    #[test]
    fn uptime_within_the_tolerance_counts_as_elapsed_time() {
        let s = [
            Sample {
                at: T0,
                uptime_secs: 100,
            },
            // 59 s more uptime than time: slack, not a violation; at most Δt counts.
            Sample {
                at: T0 + 1000,
                uptime_secs: 1159,
            },
            // 30 s less: the node was up 970 s of the 1000.
            Sample {
                at: T0 + 2000,
                uptime_secs: 2129,
            },
        ];
        let u = account(&p(), &s);
        assert_eq!(u.violation, None);
        assert_eq!(u.up_secs, 1000 + 970);
    }

    #[test]
    fn more_uptime_than_time_is_a_violation() {
        let s = [
            Sample {
                at: T0 + 100,
                uptime_secs: 1000,
            },
            Sample {
                at: T0 + 200,
                uptime_secs: 1161,
            },
        ];
        let u = account(&p(), &s);
        assert_eq!(
            u.violation,
            Some(Violation {
                at: T0 + 200,
                uptime_delta: 161,
                time_delta: 100
            })
        );
        // 61 s over is the first second that is not slack.
        let s = [
            Sample {
                at: T0 + 100,
                uptime_secs: 1000,
            },
            Sample {
                at: T0 + 200,
                uptime_secs: 1160,
            },
        ];
        assert_eq!(account(&p(), &s).violation, None);
    }

    #[test]
    fn a_violation_belongs_to_the_period_of_its_second_report() {
        let end = T0 + PERIOD_SECS;
        let s = [
            Sample {
                at: end - 100,
                uptime_secs: 1000,
            },
            Sample {
                at: end + 100,
                uptime_secs: 9000,
            },
        ];
        assert_eq!(account(&p(), &s).violation, None);
        assert!(account(&Period::nth(T0, 1), &s).violation.is_some());
    }

    #[test]
    fn intervals_are_cut_at_the_period_edges() {
        let start = T0 + PERIOD_SECS;
        let p1 = Period::nth(T0, 1);
        let s = steady(T0, start - 1000, start + 3000);
        // Up from the edge to the last report (start - 1000 + 2·2400 = start + 3800 is out).
        let u = account(&p1, &s);
        assert_eq!(u.up_secs, 1400);
        assert_eq!(u.reports, 1);
        // The first report with nothing before it counts back to the start only.
        let lone = [Sample {
            at: start + 500,
            uptime_secs: 1_000_000,
        }];
        assert_eq!(account(&p1, &lone).up_secs, 500);
    }

    #[test]
    fn no_reports_prove_nothing() {
        let u = account(&p(), &[]);
        assert_eq!((u.up_secs, u.reports, u.permill()), (0, 0, 0));
    }

    #[test]
    fn extreme_numbers_neither_panic_nor_overflow() {
        let s = [
            Sample {
                at: i64::MIN,
                uptime_secs: u64::MAX,
            },
            Sample {
                at: T0,
                uptime_secs: u64::MAX,
            },
            Sample {
                at: i64::MAX,
                uptime_secs: 0,
            },
            Sample {
                at: i64::MAX,
                uptime_secs: u64::MAX,
            },
        ];
        let u = account(&p(), &s);
        assert!(u.up_secs <= PERIOD_SECS && u.up_secs >= 0);
        let far = Period::nth(i64::MAX - 10, u64::MAX);
        let _ = account(&far, &s);
    }

    proptest::proptest! {
        #[test]
        fn proved_uptime_never_exceeds_the_period(
            raw in proptest::collection::vec((0i64..3_000_000, 0u64..5_000_000), 0..60)
        ) {
            let s: Vec<Sample> = raw.iter().map(|&(dt, u)| Sample { at: T0 + dt, uptime_secs: u }).collect();
            let u = account(&p(), &s);
            proptest::prop_assert!(u.up_secs >= 0 && u.up_secs <= PERIOD_SECS);
            proptest::prop_assert!(u.permill() <= 1000);
        }
    }
}
