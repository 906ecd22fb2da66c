//! What each contract's containers moved through their veths since the service started,
//! including containers that are gone (restarted, changed or removed).
//!
//! A veth's counters go with the veth, and a container gets a new veth at each start, so the
//! count of every veth is kept here under its contract when the veth goes ("retired"): the
//! per-contract figure only ever grows while the service runs, which is what the agent needs
//! to take differences between two readings. Retired totals are a few bytes per contract and
//! are kept until the service stops: a removed contract's last bytes may still be unread.
//!
//! The bookkeeping is plain data; [`crate::runtime`] reads the counters (netlink) and holds
//! the lock around each reading and each retirement, so that no veth is ever counted both
//! live and retired, nor neither.

use std::collections::BTreeMap;

/// A veth of a running container.
#[derive(Debug, Clone, Copy)]
struct Live {
    contract: i64,
    /// The highest count read so far: a veth that cannot be read (or went early) keeps it.
    last: u64,
}

/// Per-contract byte counts of the containers' veths.
#[derive(Debug, Default)]
pub(crate) struct Meter {
    /// By the node's end of the veth.
    live: BTreeMap<String, Live>,
    /// Bytes of veths already gone, by contract.
    retired: BTreeMap<i64, u64>,
}

impl Meter {
    /// A container of `contract` was plugged in through `veth`.
    pub(crate) fn plugged(&mut self, contract: i64, veth: &str) {
        self.live
            .insert(veth.to_string(), Live { contract, last: 0 });
    }

    /// `veth` counted `bytes` just now: kept as its last reading, for when it goes before it
    /// can be read again (a VM's tap vanishes with QEMU).
    pub(crate) fn seen(&mut self, veth: &str, bytes: u64) {
        if let Some(l) = self.live.get_mut(veth) {
            l.last = l.last.max(bytes);
        }
    }

    /// `veth` is about to go; `counted` is its last reading (`None`: it could not be read, and
    /// what was read before stands).
    pub(crate) fn unplugged(&mut self, veth: &str, counted: Option<u64>) {
        let Some(l) = self.live.remove(veth) else {
            return;
        };
        let last = l.last.max(counted.unwrap_or(0));
        let total = self.retired.entry(l.contract).or_insert(0);
        *total = total.saturating_add(last);
    }

    /// Each contract's bytes since the service started, given what every veth counts now
    /// (by name, both ways together). A live veth missing from `counters` counts what it was
    /// last read at.
    pub(crate) fn totals(&mut self, counters: &BTreeMap<String, u64>) -> BTreeMap<i64, u64> {
        let mut out = self.retired.clone();
        for (veth, l) in &mut self.live {
            if let Some(now) = counters.get(veth) {
                l.last = l.last.max(*now);
            }
            let total = out.entry(l.contract).or_insert(0);
            *total = total.saturating_add(l.last);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(v: &[(&str, u64)]) -> BTreeMap<String, u64> {
        v.iter().map(|(n, b)| (n.to_string(), *b)).collect()
    }

    #[test]
    fn a_contract_is_the_sum_of_its_veths_live_and_gone() {
        let mut m = Meter::default();
        m.plugged(7, "gv0");
        m.plugged(7, "gv1");
        m.plugged(8, "gv2");
        let t = m.totals(&counters(&[
            ("gv0", 100),
            ("gv1", 50),
            ("gv2", 5),
            ("gv9", 1),
        ]));
        assert_eq!(t, BTreeMap::from([(7, 150), (8, 5)]));

        // gv1 restarts as gv3: what gv1 counted stays with contract 7.
        m.unplugged("gv1", Some(60));
        m.plugged(7, "gv3");
        let t = m.totals(&counters(&[("gv0", 100), ("gv2", 5), ("gv3", 10)]));
        assert_eq!(t, BTreeMap::from([(7, 170), (8, 5)]));

        // Contract 8 removed: its figure stays.
        m.unplugged("gv2", Some(6));
        let t = m.totals(&counters(&[("gv0", 100), ("gv3", 10)]));
        assert_eq!(t, BTreeMap::from([(7, 170), (8, 6)]));
    }

    #[test]
    fn a_figure_never_goes_back() {
        let mut m = Meter::default();
        m.plugged(7, "gv0");
        assert_eq!(m.totals(&counters(&[("gv0", 100)]))[&7], 100);
        // Missing from a reading (gone early): the last reading stands.
        assert_eq!(m.totals(&counters(&[]))[&7], 100);
        // Its last reading failed, or read nothing: retired at what was read before.
        m.unplugged("gv0", None);
        assert_eq!(m.totals(&counters(&[]))[&7], 100);
        m.plugged(7, "gv1");
        m.totals(&counters(&[("gv1", 40)]));
        m.unplugged("gv1", Some(0));
        assert_eq!(m.totals(&counters(&[]))[&7], 140);
        // Unknown veths are no one's.
        m.unplugged("gv5", Some(1000));
        assert_eq!(m.totals(&counters(&[])), BTreeMap::from([(7, 140)]));
    }

    #[test]
    fn a_reading_just_before_a_tap_vanishes_is_kept() {
        let mut m = Meter::default();
        m.plugged(7, "gv0");
        m.totals(&counters(&[("gv0", 10)]));
        m.seen("gv0", 25);
        m.seen("gv0", 20);
        m.seen("gv9", 1000);
        // Gone with QEMU: unreadable at unplug.
        m.unplugged("gv0", None);
        assert_eq!(m.totals(&counters(&[])), BTreeMap::from([(7, 25)]));
    }

    #[test]
    fn huge_counts_saturate() {
        let mut m = Meter::default();
        m.plugged(7, "gv0");
        m.plugged(7, "gv1");
        let t = m.totals(&counters(&[("gv0", u64::MAX), ("gv1", 1)]));
        assert_eq!(t[&7], u64::MAX);
    }
}
