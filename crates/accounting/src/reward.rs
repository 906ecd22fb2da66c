//! Farming rewards: what a node earns for one closed period (DESIGN.md, "Minting"), with a
//! receipt holding every input so anyone can compute it again.

use gridtypes::units::gib;
use gridtypes::{Resources, Units};
use serde::{Deserialize, Serialize};

use crate::money::{tft_for_usd, Tft};
use crate::uptime::{Period, Uptime};

/// A named farming policy of the registry: the rates a farm's nodes earn at, set by the
/// registry's operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FarmingPolicy {
    /// The policy's id in the registry.
    pub id: i64,
    /// Its name.
    pub name: String,
    /// What it pays.
    #[serde(flatten)]
    pub rates: Rates,
}

/// What a farming policy pays. Money is in micro-dollars (µUSD); the SLA in thousandths of
/// the period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rates {
    /// µUSD per CU per period.
    pub cu: u64,
    /// µUSD per SU per period.
    pub su: u64,
    /// µUSD per NU (GiB of public traffic).
    pub nu: u64,
    /// µUSD per public IPv4 address per hour up.
    pub ipv4: u64,
    /// Least uptime, in permill of the period, that earns anything.
    pub sla_permill: u64,
}

/// Everything a period's reward depends on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewardInput {
    /// The node.
    pub node_id: i64,
    /// Its farm when the period closed.
    pub farm_id: i64,
    /// The period.
    pub period: Period,
    /// Capacity at the node's first registration: a node never earns for more.
    pub connected: Resources,
    /// The TFT price fixed at the node's first registration, µUSD per TFT (`None`: no price
    /// was set yet).
    pub price: Option<u64>,
    /// The capacity in force when the period started and every capacity the node reported
    /// during it.
    pub capacities: Vec<Resources>,
    /// Public traffic the node reported during the period, bytes.
    pub traffic_bytes: u64,
    /// What the uptime reports prove.
    pub uptime: Uptime,
    /// Whether the node said it runs under a hypervisor.
    pub virtualized: bool,
    /// The farm's policy (`None`: no policy applies).
    pub policy: Option<FarmingPolicy>,
}

/// Why a period earned what it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Earned the reward.
    Paid,
    /// A virtualised node earns nothing.
    Virtualized,
    /// Reported more uptime than time passed.
    Violation,
    /// No farming policy applies to the farm.
    NoPolicy,
    /// Uptime below the policy's SLA.
    BelowSla,
    /// No TFT price was ever set, so USD cannot become TFT.
    NoPrice,
}

impl Outcome {
    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Paid => "paid",
            Outcome::Virtualized => "virtualized",
            Outcome::Violation => "violation",
            Outcome::NoPolicy => "no_policy",
            Outcome::BelowSla => "below_sla",
            Outcome::NoPrice => "no_price",
        }
    }
}

/// A period's reward with every input and intermediate figure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    /// The inputs.
    pub input: RewardInput,
    /// The lowest capacity of the period, resource by resource.
    pub lowest: Resources,
    /// What is rewarded: the lowest capacity, capped by the capacity at connection.
    pub rewarded: Resources,
    /// Farming units of `rewarded`.
    pub units: Units,
    /// Network units (GiB of public traffic).
    pub nu: f64,
    /// Public IPv4 addresses × hours up.
    pub ipv4_hours: f64,
    /// The reward in µUSD before the outcome applies.
    pub usd_due: u64,
    /// What the node earns, µUSD (0 unless paid).
    pub usd: u64,
    /// What the farm's twin is credited.
    pub tft: Tft,
    /// Why.
    pub outcome: Outcome,
}

fn min_each(a: &Resources, b: &Resources) -> Resources {
    Resources {
        cru: a.cru.min(b.cru),
        mru: a.mru.min(b.mru),
        sru: a.sru.min(b.sru),
        hru: a.hru.min(b.hru),
        ipv4: a.ipv4.min(b.ipv4),
    }
}

/// Computes a period's reward: `CU·rate_CU + SU·rate_SU + NU·rate_NU + IPv4 hours·rate_IP`
/// in USD for the lowest capacity of the period (never more than at connection), converted
/// at the connection's TFT price; nothing for a virtualised node, a violation, or uptime
/// below the SLA.
pub fn reward(input: RewardInput) -> Receipt {
    let lowest = input
        .capacities
        .iter()
        .copied()
        .reduce(|a, b| min_each(&a, &b))
        .unwrap_or_default();
    let rewarded = min_each(&lowest, &input.connected);
    let units = rewarded.farming_units();
    let nu = gib(input.traffic_bytes);
    let ipv4_hours = rewarded.ipv4 as f64 * input.uptime.up_secs.max(0) as f64 / 3600.0;
    let usd_due = input.policy.as_ref().map_or(0, |p| {
        let r = &p.rates;
        let usd = units.cu * r.cu as f64
            + units.su * r.su as f64
            + nu * r.nu as f64
            + ipv4_hours * r.ipv4 as f64;
        // A float-to-int cast saturates; the rates and units are bounded far below it.
        usd.round() as u64
    });
    let outcome = if input.virtualized {
        Outcome::Virtualized
    } else if input.uptime.violation.is_some() {
        Outcome::Violation
    } else if let Some(policy) = &input.policy {
        if input.uptime.permill() < policy.rates.sla_permill {
            Outcome::BelowSla
        } else if input.price.is_none_or(|p| p == 0) {
            Outcome::NoPrice
        } else {
            Outcome::Paid
        }
    } else {
        Outcome::NoPolicy
    };
    let (usd, tft) = match (outcome, input.price) {
        (Outcome::Paid, Some(price)) => (usd_due, tft_for_usd(usd_due, price).unwrap_or_default()),
        _ => (0, Tft(0)),
    };
    Receipt {
        input,
        lowest,
        rewarded,
        units,
        nu,
        ipv4_hours,
        usd_due,
        usd,
        tft,
        outcome,
    }
}

impl Receipt {
    /// The receipt computed again from its own inputs: equal to `self` unless someone
    /// changed a figure after the fact.
    pub fn recomputed(&self) -> Receipt {
        reward(self.input.clone())
    }
}

/// From a node's capacity history (signed time order): the capacity in force at the
/// period's start and every one reported during it, and whether its latest registration
/// before the period's end said it is virtualised.
pub fn capacities_in(
    history: &[(i64, (Resources, Option<bool>))],
    period: &Period,
) -> (Vec<Resources>, bool) {
    let at_start = history
        .iter()
        .rev()
        .find(|(at, _)| *at <= period.start)
        .map(|(_, (c, _))| *c);
    let during = history
        .iter()
        .filter(|(at, _)| *at > period.start && *at < period.end)
        .map(|(_, (c, _))| *c);
    let virtualized = history
        .iter()
        .rev()
        .filter(|(at, _)| *at < period.end)
        .find_map(|(_, (_, v))| *v)
        .unwrap_or(false);
    (at_start.into_iter().chain(during).collect(), virtualized)
}

/// The price a node that connected at `connected_at` earns at: the price in force then, or
/// the first one ever set when none was set before (a node is not denied its reward for
/// connecting early). `prices` holds (time set, µUSD per TFT), oldest first.
pub fn price_at(prices: &[(i64, u64)], connected_at: i64) -> Option<u64> {
    prices
        .iter()
        .rev()
        .find(|(set_at, _)| *set_at <= connected_at)
        .or_else(|| prices.first())
        .map(|(_, p)| *p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::money::TFT_UNITS;
    use crate::uptime::{Violation, PERIOD_SECS};
    use gridtypes::GIB;

    const T0: i64 = 1_700_000_000;

    fn policy() -> FarmingPolicy {
        // The grid's usual rates: 2.40 USD per CU and 1.00 USD per SU a month, 0.03 USD per
        // GiB of traffic, 0.005 USD per IPv4-hour; 95 % uptime.
        FarmingPolicy {
            id: 1,
            name: "default".into(),
            rates: Rates {
                cu: 2_400_000,
                su: 1_000_000,
                nu: 30_000,
                ipv4: 5_000,
                sla_permill: 950,
            },
        }
    }

    fn node() -> Resources {
        // 8 cores, 33 GiB, 1000 GiB SSD, 2400 GiB HDD, 2 IPv4:
        // CU = min(16, (33-1)/4 = 8, 1000/50 = 20) = 8; SU = 2400/1200 + 1000·0.8/200 = 6.
        Resources {
            cru: 8,
            mru: 33 * GIB,
            sru: 1000 * GIB,
            hru: 2400 * GIB,
            ipv4: 2,
        }
    }

    fn uptime(up_secs: i64) -> Uptime {
        Uptime {
            up_secs,
            period_secs: PERIOD_SECS,
            reports: 1096,
            violation: None,
        }
    }

    fn input() -> RewardInput {
        RewardInput {
            node_id: 7,
            farm_id: 3,
            period: Period::nth(T0, 0),
            connected: node(),
            // 0.08 USD per TFT.
            price: Some(80_000),
            capacities: vec![node()],
            traffic_bytes: 100 * GIB,
            uptime: uptime(PERIOD_SECS),
            virtualized: false,
            policy: Some(policy()),
        }
    }

    #[test]
    fn worked_example_of_a_full_period() {
        let r = reward(input());
        assert_eq!(r.units, Units { cu: 8.0, su: 6.0 });
        assert_eq!(r.nu, 100.0);
        // 2 addresses × 730.8 h.
        assert_eq!(r.ipv4_hours, 1461.6);
        // 8·2.40 + 6·1.00 + 100·0.03 + 1461.6·0.005 = 19.2 + 6 + 3 + 7.308 = 35.508 USD.
        assert_eq!(r.usd, 35_508_000);
        // 35.508 / 0.08 = 443.85 TFT.
        assert_eq!(r.tft, Tft(443 * TFT_UNITS + 8_500_000));
        assert_eq!(r.outcome, Outcome::Paid);
        assert_eq!(r.recomputed(), r);
    }

    #[test]
    fn the_lowest_capacity_of_the_period_is_rewarded_and_never_more_than_at_connection() {
        let mut i = input();
        // A disk died mid-period (HDD 2400 → 1200 GiB), and memory grew past what the node
        // had when it connected (33 → 65 GiB): SU = 1 + 4 = 5; CU stays capped at 8.
        let mut less = node();
        less.hru = 1200 * GIB;
        let mut more = node();
        more.mru = 65 * GIB;
        i.capacities = vec![more, less, more];
        let r = reward(i);
        assert_eq!(r.lowest.hru, 1200 * GIB);
        assert_eq!(r.rewarded.mru, 33 * GIB);
        assert_eq!(r.units, Units { cu: 8.0, su: 5.0 });
        // 19.2 + 5 + 3 + 7.308 = 34.508 USD.
        assert_eq!(r.usd, 34_508_000);
    }

    #[test]
    fn below_the_sla_earns_nothing_and_the_sla_itself_is_enough() {
        let mut i = input();
        // 949.9 ‰ of the period.
        i.uptime = uptime(PERIOD_SECS * 9499 / 10000);
        let r = reward(i.clone());
        assert_eq!((r.outcome, r.usd, r.tft), (Outcome::BelowSla, 0, Tft(0)));
        assert!(r.usd_due > 0);
        i.uptime = uptime(PERIOD_SECS * 950 / 1000);
        let r = reward(i);
        assert_eq!(r.outcome, Outcome::Paid);
        // IPv4 hours follow the uptime: 2 × 694.26 h × 0.005 = 6.9426 USD.
        assert_eq!(r.usd, 19_200_000 + 6_000_000 + 3_000_000 + 6_942_600);
    }

    #[test]
    fn violations_virtual_nodes_and_missing_policy_or_price_earn_nothing() {
        let mut i = input();
        i.uptime.violation = Some(Violation {
            at: T0 + 5,
            uptime_delta: 1000,
            time_delta: 5,
        });
        assert_eq!(reward(i).outcome, Outcome::Violation);
        let mut i = input();
        i.virtualized = true;
        assert_eq!(reward(i).outcome, Outcome::Virtualized);
        let mut i = input();
        i.policy = None;
        assert_eq!(reward(i).outcome, Outcome::NoPolicy);
        let mut i = input();
        i.price = None;
        let r = reward(i);
        assert_eq!((r.outcome, r.tft), (Outcome::NoPrice, Tft(0)));
    }

    #[test]
    fn a_changed_figure_is_caught_by_recomputing() {
        let mut r = reward(input());
        r.tft = Tft(r.tft.0 + 1);
        assert_ne!(r.recomputed(), r);
    }

    #[test]
    fn the_price_is_the_one_in_force_at_connection() {
        let prices = [(100, 50_000), (200, 80_000), (300, 90_000)];
        assert_eq!(price_at(&prices, 250), Some(80_000));
        assert_eq!(price_at(&prices, 200), Some(80_000));
        assert_eq!(price_at(&prices, 999), Some(90_000));
        assert_eq!(price_at(&prices, 50), Some(50_000));
        assert_eq!(price_at(&[], 50), None);
    }

    #[test]
    fn capacities_are_those_in_force_at_the_start_and_reported_during_the_period() {
        let p = Period::nth(T0, 1);
        let (a, b, c, d) = (
            node(),
            Resources { cru: 4, ..node() },
            Resources { cru: 2, ..node() },
            Resources { cru: 1, ..node() },
        );
        let history = [
            (T0, (a, Some(false))),
            (p.start - 10, (b, None)),
            (p.start + 10, (c, Some(true))),
            (p.end, (d, Some(false))),
        ];
        let (caps, virtualized) = capacities_in(&history, &p);
        assert_eq!(caps, vec![b, c]);
        assert!(virtualized);
        let (caps, virtualized) = capacities_in(&history[..1], &Period::nth(T0, 0));
        assert_eq!((caps, virtualized), (vec![a], false));
    }

    #[test]
    fn receipts_survive_json() {
        let r = reward(input());
        let back: Receipt = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }
}
