//! Raw resources and the grid's v3 unit formulas (CU, SU, NU, IPv4U).
//!
//! Raw counts travel as bytes; MRU, SRU and HRU enter the formulas in GiB (2^30 bytes),
//! as the grid's minting does. This is the only place the conversion happens.

use serde::{Deserialize, Serialize};

/// One GiB: the unit MRU, SRU and HRU are expressed in inside the formulas.
pub const GIB: u64 = 1 << 30;

/// Memory (GiB) a node keeps for its own OS and never sells (the `- 1` in farming CU).
pub const OS_RESERVED_MRU_GIB: f64 = 1.0;

/// Most logical cores one node may claim: 65,536 (today's largest servers have 2,048
/// threads; the headroom is for the future, not for a lying node).
pub const MAX_CRU: u64 = 1 << 16;
/// Most memory one node may claim: 256 TiB (today's largest servers hold 32 TiB).
pub const MAX_MRU: u64 = 1 << 48;
/// Most SSD or HDD storage one node may claim: 16 PiB each (several hundred of today's
/// largest drives behind one machine).
pub const MAX_DISK: u64 = 1 << 54;
/// Most public IPv4 addresses one node may claim: a /16.
pub const MAX_IPV4: u64 = 1 << 16;

// Every bound is far below 2^63, so a value fits a signed 64-bit column, and the sum of
// 2^9 of them still does; sums over many nodes are taken in 128 bits (see `ResourceTotals`).
const _: () = assert!(MAX_DISK < (1 << 62) && MAX_MRU < MAX_DISK && MAX_CRU < MAX_MRU);

/// Raw resources of a node or of a reservation, as measured (bytes for memory and disks).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// Logical CPU cores.
    pub cru: u64,
    /// Memory in bytes.
    pub mru: u64,
    /// SSD storage in bytes.
    pub sru: u64,
    /// HDD storage in bytes.
    pub hru: u64,
    /// Public IPv4 addresses.
    #[serde(default)]
    pub ipv4: u64,
}

impl Resources {
    /// Builds resources from whole GiB figures, the way farmers and auditors talk about them.
    pub fn from_gib(cru: u64, mru_gib: f64, sru_gib: f64, hru_gib: f64) -> Self {
        let bytes = |gib: f64| (gib.max(0.0) * GIB as f64).round() as u64;
        Resources {
            cru,
            mru: bytes(mru_gib),
            sru: bytes(sru_gib),
            hru: bytes(hru_gib),
            ipv4: 0,
        }
    }

    /// Rejects counts beyond the physical maxima ([`MAX_CRU`], [`MAX_MRU`], [`MAX_DISK`],
    /// [`MAX_IPV4`]), naming the field: a signer cannot make the registry store, sum or
    /// display an absurd number.
    pub fn validate(&self) -> Result<(), String> {
        for (name, v, max) in [
            ("cru", self.cru, MAX_CRU),
            ("mru", self.mru, MAX_MRU),
            ("sru", self.sru, MAX_DISK),
            ("hru", self.hru, MAX_DISK),
            ("ipv4", self.ipv4, MAX_IPV4),
        ] {
            if v > max {
                return Err(format!("{name} = {v} is larger than the maximum {max}"));
            }
        }
        Ok(())
    }

    /// What is left of `self` once `used` is taken away (never below zero).
    pub fn saturating_sub(&self, used: &Resources) -> Resources {
        Resources {
            cru: self.cru.saturating_sub(used.cru),
            mru: self.mru.saturating_sub(used.mru),
            sru: self.sru.saturating_sub(used.sru),
            hru: self.hru.saturating_sub(used.hru),
            ipv4: self.ipv4.saturating_sub(used.ipv4),
        }
    }

    /// Both together (never wrapping).
    pub fn saturating_add(&self, other: &Resources) -> Resources {
        Resources {
            cru: self.cru.saturating_add(other.cru),
            mru: self.mru.saturating_add(other.mru),
            sru: self.sru.saturating_add(other.sru),
            hru: self.hru.saturating_add(other.hru),
            ipv4: self.ipv4.saturating_add(other.ipv4),
        }
    }

    /// The resources of which `self` asks more than `available` has, by name (`cru`, `mru`,
    /// `sru`, `hru`, `ipv4`); empty when it fits.
    pub fn exceeding(&self, available: &Resources) -> Vec<&'static str> {
        [
            ("cru", self.cru, available.cru),
            ("mru", self.mru, available.mru),
            ("sru", self.sru, available.sru),
            ("hru", self.hru, available.hru),
            ("ipv4", self.ipv4, available.ipv4),
        ]
        .into_iter()
        .filter(|(_, want, have)| want > have)
        .map(|(name, _, _)| name)
        .collect()
    }

    /// Memory in GiB.
    pub fn mru_gib(&self) -> f64 {
        gib(self.mru)
    }

    /// SSD storage in GiB.
    pub fn sru_gib(&self) -> f64 {
        gib(self.sru)
    }

    /// HDD storage in GiB.
    pub fn hru_gib(&self) -> f64 {
        gib(self.hru)
    }

    /// Farming capacity: what a node offers and is rewarded for.
    ///
    /// `CU = min(CRU*4/2, (MRU-1)/4, SRU/50)`, `SU = HRU/1200 + SRU*0.8/200`.
    pub fn farming_units(&self) -> Units {
        let cru = self.cru as f64;
        let cu = (cru * 4.0 / 2.0)
            .min((self.mru_gib() - OS_RESERVED_MRU_GIB) / 4.0)
            .min(self.sru_gib() / 50.0)
            .max(0.0);
        let su = self.hru_gib() / 1200.0 + self.sru_gib() * 0.8 / 200.0;
        Units { cu, su }
    }

    /// Billing units: what a workload reserving these resources pays for.
    ///
    /// `CU = min(max(MRU/4, CRU/2), max(MRU/8, CRU), max(MRU/2, CRU/4))`, `SU = HRU/1200 + SRU/200`.
    pub fn billing_units(&self) -> Units {
        let cru = self.cru as f64;
        let mru = self.mru_gib();
        let cu = (mru / 4.0)
            .max(cru / 2.0)
            .min((mru / 8.0).max(cru))
            .min((mru / 2.0).max(cru / 4.0));
        let su = self.hru_gib() / 1200.0 + self.sru_gib() / 200.0;
        Units { cu, su }
    }
}

/// Converts bytes to GiB.
pub fn gib(bytes: u64) -> f64 {
    bytes as f64 / GIB as f64
}

/// Raw resources added up over many nodes: 128-bit, so no number of nodes can overflow it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceTotals {
    /// Logical CPU cores.
    pub cru: u128,
    /// Memory in bytes.
    pub mru: u128,
    /// SSD storage in bytes.
    pub sru: u128,
    /// HDD storage in bytes.
    pub hru: u128,
    /// Public IPv4 addresses.
    pub ipv4: u128,
}

/// Compute and storage units derived from raw resources.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Units {
    /// Compute units.
    pub cu: f64,
    /// Storage units.
    pub su: f64,
}

/// Network units: one NU is 1 GiB of public traffic.
pub fn network_units(traffic_bytes: u64) -> f64 {
    gib(traffic_bytes)
}

/// IPv4 units: one IPv4U is one public IPv4 address held for one hour.
pub fn ipv4_units(addresses: u64, seconds: u64) -> f64 {
    addresses as f64 * seconds as f64 / 3600.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn farming_worked_example_memory_bound() {
        // 8 cores, 64 GiB, 1000 GiB SSD: min(16, 15.75, 20) = 15.75 CU; SU = 0 + 1000*0.8/200 = 4.
        let u = Resources::from_gib(8, 64.0, 1000.0, 0.0).farming_units();
        assert!(close(u.cu, 15.75), "{u:?}");
        assert!(close(u.su, 4.0), "{u:?}");
    }

    #[test]
    fn farming_worked_example_cpu_bound() {
        // 2 cores, 32 GiB, 500 GiB SSD, 4 TB HDD: min(4, 7.75, 10) = 4; SU = 4000/1200 + 2 = 5.333…
        let u = Resources::from_gib(2, 32.0, 500.0, 4000.0).farming_units();
        assert!(close(u.cu, 4.0), "{u:?}");
        assert!(close(u.su, 4000.0 / 1200.0 + 2.0), "{u:?}");
    }

    #[test]
    fn farming_worked_example_ssd_bound() {
        // 16 cores, 128 GiB, 100 GiB SSD: min(32, 31.75, 2) = 2; SU = 100*0.8/200 = 0.4.
        let u = Resources::from_gib(16, 128.0, 100.0, 0.0).farming_units();
        assert!(close(u.cu, 2.0), "{u:?}");
        assert!(close(u.su, 0.4), "{u:?}");
    }

    #[test]
    fn farming_memory_below_reserve_gives_no_cu() {
        let u = Resources::from_gib(4, 0.5, 1000.0, 0.0).farming_units();
        assert_eq!(u.cu, 0.0);
        // Exactly the reserve: still nothing to sell.
        let u = Resources::from_gib(4, 1.0, 1000.0, 0.0).farming_units();
        assert_eq!(u.cu, 0.0);
    }

    #[test]
    fn farming_without_disks_gives_nothing() {
        let u = Resources::from_gib(8, 64.0, 0.0, 0.0).farming_units();
        assert_eq!(u, Units { cu: 0.0, su: 0.0 });
    }

    #[test]
    fn farming_hdd_only_gives_su_but_no_cu() {
        let u = Resources::from_gib(8, 64.0, 0.0, 12000.0).farming_units();
        assert_eq!(u.cu, 0.0);
        assert!(close(u.su, 10.0));
    }

    #[test]
    fn farming_uses_gib_not_gb() {
        // 50 GB (decimal) of SSD is less than 50 GiB: under one CU.
        let r = Resources {
            cru: 8,
            mru: 64 * GIB,
            sru: 50_000_000_000,
            hru: 0,
            ipv4: 0,
        };
        let u = r.farming_units();
        assert!(u.cu < 1.0 && u.cu > 0.93, "{u:?}");
    }

    #[test]
    fn billing_worked_examples() {
        // 1 core, 2 GiB: min(max(.5,.5), max(.25,1), max(1,.25)) = 0.5
        let u = Resources::from_gib(1, 2.0, 0.0, 0.0).billing_units();
        assert!(close(u.cu, 0.5), "{u:?}");
        // 4 cores, 16 GiB: min(max(4,2), max(2,4), max(8,1)) = 4
        let u = Resources::from_gib(4, 16.0, 0.0, 0.0).billing_units();
        assert!(close(u.cu, 4.0), "{u:?}");
        // 8 cores, 4 GiB: min(max(1,4), max(.5,8), max(2,2)) = 2
        let u = Resources::from_gib(8, 4.0, 0.0, 0.0).billing_units();
        assert!(close(u.cu, 2.0), "{u:?}");
        // SU: 100 GiB SSD + 1200 GiB HDD = 0.5 + 1
        let u = Resources::from_gib(1, 1.0, 100.0, 1200.0).billing_units();
        assert!(close(u.su, 1.5), "{u:?}");
    }

    #[test]
    fn billing_nothing_reserved_costs_nothing() {
        assert_eq!(
            Resources::default().billing_units(),
            Units { cu: 0.0, su: 0.0 }
        );
    }

    #[test]
    fn network_and_ipv4_units() {
        assert!(close(network_units(3 * GIB), 3.0));
        assert!(close(network_units(GIB / 2), 0.5));
        assert!(close(ipv4_units(2, 5400), 3.0));
    }

    #[test]
    fn saturating_sub_never_underflows() {
        let cap = Resources::from_gib(2, 4.0, 10.0, 0.0);
        let used = Resources::from_gib(4, 1.0, 20.0, 1.0);
        let free = cap.saturating_sub(&used);
        assert_eq!(free.cru, 0);
        assert_eq!(free.mru, 3 * GIB);
        assert_eq!(free.sru, 0);
        assert_eq!(free.hru, 0);
    }

    #[test]
    fn validate_rejects_values_beyond_physical_maxima() {
        for (field, r) in [
            (
                "cru",
                Resources {
                    cru: MAX_CRU + 1,
                    ..Default::default()
                },
            ),
            (
                "mru",
                Resources {
                    mru: MAX_MRU + 1,
                    ..Default::default()
                },
            ),
            (
                "sru",
                Resources {
                    sru: MAX_DISK + 1,
                    ..Default::default()
                },
            ),
            (
                "hru",
                Resources {
                    hru: u64::MAX,
                    ..Default::default()
                },
            ),
            (
                "ipv4",
                Resources {
                    ipv4: i64::MAX as u64,
                    ..Default::default()
                },
            ),
        ] {
            let err = r.validate().unwrap_err();
            assert!(err.contains(field), "{err}");
        }
        let max = Resources {
            cru: MAX_CRU,
            mru: MAX_MRU,
            sru: MAX_DISK,
            hru: MAX_DISK,
            ipv4: MAX_IPV4,
        };
        assert!(max.validate().is_ok());
        assert!(Resources::from_gib(1, 1.0, 1.0, 1.0).validate().is_ok());
    }

    #[test]
    fn resources_reject_unknown_fields() {
        let err = serde_json::from_str::<Resources>(r#"{"cru":1,"mru":1,"sru":1,"hru":1,"gpu":1}"#)
            .unwrap_err();
        assert!(err.to_string().contains("gpu"), "{err}");
    }
}
