//! Bills: what a contract costs its twin for a stretch of time (DESIGN.md, "Capacity",
//! billing formulas).

use gridtypes::units::gib;
use gridtypes::{Resources, Units};
use serde::{Deserialize, Serialize};

use crate::money::{tft_for_usd, Tft};

/// What twins pay, set by the registry's operator, in µUSD.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pricing {
    /// µUSD per CU per hour.
    pub cu: u64,
    /// µUSD per SU per hour.
    pub su: u64,
    /// µUSD per NU (GiB of public traffic).
    pub nu: u64,
    /// µUSD per public IPv4 address per hour.
    pub ipv4: u64,
}

/// Everything one bill depends on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BillInput {
    /// The contract.
    pub contract_id: i64,
    /// Start of the billed stretch (Unix time).
    pub from: i64,
    /// Its end.
    pub to: i64,
    /// What the contract reserves.
    pub reserved: Resources,
    /// Public traffic its workloads moved in the stretch, bytes.
    pub traffic_bytes: u64,
    /// The prices.
    pub pricing: Pricing,
    /// The TFT price when billed, µUSD per TFT.
    pub price: u64,
}

/// A bill with its inputs and figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BillLine {
    /// The inputs.
    pub input: BillInput,
    /// Billing units of the reservation.
    pub units: Units,
    /// Hours billed.
    pub hours: f64,
    /// Network units.
    pub nu: f64,
    /// IPv4 addresses × hours.
    pub ipv4_hours: f64,
    /// The cost in µUSD.
    pub usd: u64,
    /// The cost in TFT (rounded down: a twin never pays for a fraction of a unit).
    pub tft: Tft,
}

/// Bills a contract: `(CU·price_CU + SU·price_SU + IPv4·price_IP) · hours + NU·price_NU`.
pub fn bill(input: BillInput) -> BillLine {
    let units = input.reserved.billing_units();
    let hours = (input.to - input.from).max(0) as f64 / 3600.0;
    let nu = gib(input.traffic_bytes);
    let ipv4_hours = input.reserved.ipv4 as f64 * hours;
    let p = &input.pricing;
    let usd = (units.cu * p.cu as f64 * hours
        + units.su * p.su as f64 * hours
        + ipv4_hours * p.ipv4 as f64
        + nu * p.nu as f64)
        .round() as u64;
    let tft = tft_for_usd(usd, input.price).unwrap_or_default();
    BillLine {
        input,
        units,
        hours,
        nu,
        ipv4_hours,
        usd,
        tft,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::money::TFT_UNITS;
    use gridtypes::GIB;

    #[test]
    fn worked_example_of_an_hour() {
        // 2 cores and 4 GiB: CU = min(max(1, 1), max(0.5, 2), max(2, 0.5)) = 1;
        // 50 GiB SSD: SU = 0.25; one IPv4 address; 2 GiB of traffic.
        let line = bill(BillInput {
            contract_id: 1,
            from: 1_700_000_000,
            to: 1_700_003_600,
            reserved: Resources {
                cru: 2,
                mru: 4 * GIB,
                sru: 50 * GIB,
                hru: 0,
                ipv4: 1,
            },
            traffic_bytes: 2 * GIB,
            // 0.01 USD per CU-hour, 0.004 per SU-hour, 0.05 per GiB, 0.005 per IPv4-hour.
            pricing: Pricing {
                cu: 10_000,
                su: 4_000,
                nu: 50_000,
                ipv4: 5_000,
            },
            price: 50_000,
        });
        assert_eq!(line.units, Units { cu: 1.0, su: 0.25 });
        // 0.01 + 0.001 + 0.005 + 0.1 = 0.116 USD = 2.32 TFT at 0.05 USD.
        assert_eq!(line.usd, 116_000);
        assert_eq!(line.tft, Tft(2 * TFT_UNITS + 3_200_000));
    }
}
