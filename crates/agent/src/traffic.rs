//! Each contract's share of the node's public traffic, for the consumption reports.
//!
//! The provision service gives two kinds of counter (docs/deployments.md, "Consumption"):
//! - the twin bridges' own interfaces: what passed between containers and the node's IP
//!   stack, that is to and from the outside. This is the node's public traffic, the figure
//!   the registry bills NU from;
//! - each contract's veths: everything its containers sent and received, including what went
//!   from one of a twin's containers to another over their bridge, which never left the
//!   node and is not public.
//!
//! So a veth count cannot be billed as such: it would charge a twin for traffic among its
//! own containers, and the shares could add up to more than the node's public traffic, which
//! the registry refuses. The bridge counter says how much there is to bill; the veths only
//! say how it is shared.

use std::collections::BTreeMap;

use gridtypes::{ContractTraffic, MAX_REPORTED_CONTRACTS};

/// Shares `traffic_bytes` (the node's public traffic since the last report) among contracts
/// in proportion to what each one's veths counted since then: `now` and `seen` are the
/// provision service's cumulative per-contract counters at this reading and at the last one.
///
/// - A contract's part is `now - seen`; all of `now` when it was not seen before or its
///   counter went backwards (the service started again and counts from 0). A caller that
///   knows the service started again passes an empty `seen`.
/// - Each share is rounded down (in 128-bit arithmetic, so no product overflows): the shares
///   never add up to more than `traffic_bytes`.
/// - Contracts whose share is 0 are left out, and ids that are no registry contract (0 or
///   negative) too.
/// - Of more than [`MAX_REPORTED_CONTRACTS`] contracts, the largest shares are kept (the
///   registry refuses a longer list); the traffic of the others is not billed.
///
/// The list is ordered by contract id.
pub fn contract_shares(
    traffic_bytes: u64,
    now: &BTreeMap<i64, u64>,
    seen: &BTreeMap<i64, u64>,
) -> Vec<ContractTraffic> {
    let parts: Vec<(u64, u64)> = now
        .iter()
        .filter_map(|(&contract, &count)| {
            let id = u64::try_from(contract).ok().filter(|id| *id > 0)?;
            let part = match seen.get(&contract) {
                Some(&before) if count >= before => count - before,
                _ => count,
            };
            Some((id, part))
        })
        .collect();
    // At most 2^63 contracts of at most 2^64 - 1 each: a u128 holds the sum.
    let whole: u128 = parts.iter().map(|(_, p)| u128::from(*p)).sum();
    if traffic_bytes == 0 || whole == 0 {
        return Vec::new();
    }
    let mut shares: Vec<ContractTraffic> = parts
        .into_iter()
        .filter_map(|(contract_id, part)| {
            // part <= whole, so the quotient is at most traffic_bytes and fits.
            let share = u128::from(traffic_bytes) * u128::from(part) / whole;
            let share = u64::try_from(share).ok().filter(|s| *s > 0)?;
            Some(ContractTraffic {
                contract_id,
                traffic_bytes: share,
            })
        })
        .collect();
    if shares.len() > MAX_REPORTED_CONTRACTS {
        shares.sort_by(|a, b| {
            b.traffic_bytes
                .cmp(&a.traffic_bytes)
                .then(a.contract_id.cmp(&b.contract_id))
        });
        shares.truncate(MAX_REPORTED_CONTRACTS);
        shares.sort_by_key(|s| s.contract_id);
    }
    shares
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(v: &[(i64, u64)]) -> BTreeMap<i64, u64> {
        v.iter().copied().collect()
    }

    fn pairs(s: &[ContractTraffic]) -> Vec<(u64, u64)> {
        s.iter().map(|c| (c.contract_id, c.traffic_bytes)).collect()
    }

    fn sum(s: &[ContractTraffic]) -> u64 {
        s.iter().map(|c| c.traffic_bytes).sum()
    }

    #[test]
    fn the_public_total_is_shared_in_proportion_to_the_veths() {
        // Contract 7's veths moved 300 bytes since the last reading, 8's 100: 3 to 1.
        let seen = map(&[(7, 1000), (8, 500)]);
        let now = map(&[(7, 1300), (8, 600)]);
        assert_eq!(
            pairs(&contract_shares(4000, &now, &seen)),
            vec![(7, 3000), (8, 1000)]
        );
        // The veths counted more than the public total (a twin's own traffic): the total is
        // what is shared.
        assert_eq!(
            pairs(&contract_shares(40, &now, &seen)),
            vec![(7, 30), (8, 10)]
        );
        // A contract new since the last reading counts all it has.
        let now = map(&[(7, 1300), (8, 600), (9, 400)]);
        assert_eq!(
            pairs(&contract_shares(800, &now, &seen)),
            vec![(7, 300), (8, 100), (9, 400)]
        );
    }

    #[test]
    fn rounding_down_never_exceeds_the_total() {
        let now = map(&[(1, 1), (2, 1), (3, 1)]);
        let s = contract_shares(100, &now, &BTreeMap::new());
        assert_eq!(pairs(&s), vec![(1, 33), (2, 33), (3, 33)]);
        for total in [1u64, 2, 7, 99, 1000, 12345, 1 << 40] {
            let now: BTreeMap<i64, u64> = (1..=50).map(|c| (c, (c as u64) * 7919 % 1013)).collect();
            let s = contract_shares(total, &now, &BTreeMap::new());
            assert!(sum(&s) <= total, "{total}: {}", sum(&s));
            assert!(s.iter().all(|c| c.traffic_bytes > 0));
        }
        // Too little to give each a byte: those that round to 0 are left out.
        let now = map(&[(1, 1000), (2, 1)]);
        assert_eq!(
            pairs(&contract_shares(10, &now, &BTreeMap::new())),
            vec![(1, 9)]
        );
    }

    #[test]
    fn nothing_to_share_is_no_share() {
        let now = map(&[(7, 100)]);
        // No public traffic: the veths' bytes stayed inside the twin.
        assert!(contract_shares(0, &now, &BTreeMap::new()).is_empty());
        // Public traffic but no veth moved anything since the last reading.
        assert!(contract_shares(500, &now, &now).is_empty());
        assert!(contract_shares(500, &BTreeMap::new(), &BTreeMap::new()).is_empty());
        // Only contract ids the registry can have.
        let odd = map(&[(0, 100), (-3, 100)]);
        assert!(contract_shares(500, &odd, &BTreeMap::new()).is_empty());
    }

    #[test]
    fn a_counter_that_went_back_counts_from_zero() {
        // The service started again: 8 counts 50 since its start, not 50 - 600.
        let seen = map(&[(7, 1000), (8, 600)]);
        let now = map(&[(7, 1150), (8, 50)]);
        assert_eq!(
            pairs(&contract_shares(200, &now, &seen)),
            vec![(7, 150), (8, 50)]
        );
        // Gone from the reading: nothing to share for it.
        let now = map(&[(7, 1150)]);
        assert_eq!(pairs(&contract_shares(200, &now, &seen)), vec![(7, 200)]);
    }

    #[test]
    fn of_many_contracts_the_largest_are_kept() {
        let n = MAX_REPORTED_CONTRACTS as i64 + 72;
        // Contract c moved c bytes: the largest are the last 128.
        let now: BTreeMap<i64, u64> = (1..=n).map(|c| (c, c as u64)).collect();
        let total = 1u64 << 40;
        let s = contract_shares(total, &now, &BTreeMap::new());
        assert_eq!(s.len(), MAX_REPORTED_CONTRACTS);
        let ids: Vec<u64> = s.iter().map(|c| c.contract_id).collect();
        let want: Vec<u64> = (73..=n as u64).collect();
        assert_eq!(ids, want);
        assert!(sum(&s) <= total);
        // Ties at the cut go to the lower ids.
        let now: BTreeMap<i64, u64> = (1..=n).map(|c| (c, 1)).collect();
        let s = contract_shares(total, &now, &BTreeMap::new());
        assert_eq!(s.len(), MAX_REPORTED_CONTRACTS);
        assert_eq!(s.last().map(|c| c.contract_id), Some(128));
    }

    #[test]
    fn huge_numbers_neither_overflow_nor_exceed_the_total() {
        let now = map(&[(1, u64::MAX), (2, u64::MAX), (3, u64::MAX - 1)]);
        let s = contract_shares(u64::MAX, &now, &BTreeMap::new());
        assert_eq!(s.len(), 3);
        assert!(sum_u128(&s) <= u128::from(u64::MAX));
        assert_eq!(s[0].traffic_bytes, u64::MAX / 3);
        // One contract takes all, to the byte.
        let s = contract_shares(u64::MAX, &map(&[(5, u64::MAX)]), &BTreeMap::new());
        assert_eq!(pairs(&s), vec![(5, u64::MAX)]);
        let s = contract_shares(
            gridtypes::MAX_TRAFFIC_BYTES,
            &map(&[(5, 1), (6, u64::MAX)]),
            &BTreeMap::new(),
        );
        assert_eq!(pairs(&s), vec![(6, gridtypes::MAX_TRAFFIC_BYTES - 1)]);
    }

    fn sum_u128(s: &[ContractTraffic]) -> u128 {
        s.iter().map(|c| u128::from(c.traffic_bytes)).sum()
    }
}
