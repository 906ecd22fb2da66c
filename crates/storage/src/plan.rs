//! The pure decision: which disk gets the cache partition, and whether it is re-used,
//! created, or replaced by a tmpfs.

use crate::signature::Signature;
use cmdline::WipePolicy;
use disks::{Disk, Kind};

/// A usable disk with what was measured and found on it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Candidate {
    /// The disk.
    pub disk: Disk,
    /// SSD or HDD, measured.
    pub kind: Kind,
    /// Median random-read latency in µs, when the seek test ran.
    pub latency_us: Option<u64>,
    /// Partition table or filesystem found in its first/last MiB.
    pub signature: Option<Signature>,
    /// A partition already holding a btrfs labelled `gridos-cache`.
    pub cache_partition: Option<String>,
    /// A partition already holding a btrfs labelled `gridos-pool`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool_partition: Option<String>,
    /// The gridos USB stick the node booted from, offered because `gridos.cache_on_stick=yes`:
    /// last in every order, never wiped (the cache goes in its free space), never sold.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub boot_medium: bool,
}

/// What storage will do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Mount an existing cache partition: the node keeps its identity.
    Reuse {
        /// Disk name.
        disk: String,
        /// Partition name.
        partition: String,
    },
    /// Partition and format this disk (`wipe`: it holds data and the policy is `all`).
    Create {
        /// Disk name.
        disk: String,
        /// Whether existing signatures must be erased first.
        wipe: bool,
    },
    /// Add the cache partition in the free space of the boot stick, after its boot partition
    /// (`gridos.cache_on_stick=yes`, no other disk usable).
    Append {
        /// Disk name.
        disk: String,
    },
    /// No disk can be used: cache on tmpfs, lost at reboot.
    Tmpfs {
        /// Why, for the log and the marker file.
        reason: String,
    },
}

/// What storage does with a disk that does not hold the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolPlan {
    /// Mount the pool already on it: the twins' volumes there are kept.
    Reuse {
        /// Disk name.
        disk: String,
        /// Partition name.
        partition: String,
    },
    /// Partition and format it as a pool (`wipe`: it holds data and the policy is `all`).
    Create {
        /// Disk name.
        disk: String,
        /// Whether existing signatures must be erased first.
        wipe: bool,
    },
}

impl PoolPlan {
    /// The disk this plan is for.
    pub fn disk(&self) -> &str {
        match self {
            PoolPlan::Reuse { disk, .. } | PoolPlan::Create { disk, .. } => disk,
        }
    }
}

/// Picks, in name order, what becomes of every disk but the cache's (`cache_disk`, `None`
/// when the cache is on tmpfs) and the boot stick: an existing pool is re-used under every
/// policy; otherwise a disk becomes a new pool under the same rules as the cache (`empty`:
/// only a disk with no signature; `all`: any, wiped first; `none`: never). Returns the plans
/// and, per refused disk, why it was refused.
pub fn pools(
    cands: &[Candidate],
    cache_disk: Option<&str>,
    policy: WipePolicy,
) -> (Vec<PoolPlan>, Vec<(String, String)>) {
    let mut plans = Vec::new();
    let mut refused = Vec::new();
    let mut ordered: Vec<&Candidate> = cands.iter().collect();
    ordered.sort_by(|a, b| a.disk.name.cmp(&b.disk.name));
    for c in ordered {
        let disk = c.disk.name.clone();
        if c.boot_medium || cache_disk == Some(disk.as_str()) {
            continue;
        }
        if let Some(partition) = &c.pool_partition {
            plans.push(PoolPlan::Reuse {
                disk,
                partition: partition.clone(),
            });
            continue;
        }
        match (policy, c.signature) {
            (WipePolicy::None, _) => {
                refused.push((disk, "gridos.wipe=none: never format; not sold".into()));
            }
            (WipePolicy::Empty, Some(sig)) => refused.push((
                disk,
                format!("holds data ({sig:?} signature) and gridos.wipe=empty; not sold"),
            )),
            (WipePolicy::Empty, None) => plans.push(PoolPlan::Create { disk, wipe: false }),
            (WipePolicy::All, sig) => plans.push(PoolPlan::Create {
                disk,
                wipe: sig.is_some(),
            }),
        }
    }
    (plans, refused)
}

/// Latency class of a measured disk: `floor(log2(µs))`, so NVMe (~50 µs) beats SATA (~150 µs)
/// while two disks of one model, a few µs apart by noise, land in the same class and the tie
/// is broken by fixed facts instead (size, then name). Unmeasured sorts last.
pub fn latency_class(latency_us: Option<u64>) -> u32 {
    match latency_us {
        Some(us) => 64 - us.max(1).leading_zeros(),
        None => u32::MAX,
    }
}

/// The placement order: SSDs before HDDs; among SSDs the fastest latency class; then the
/// largest disk; then the name. Only facts that do not change between boots break ties, so
/// the same disks always give the same choice.
pub fn preference(cands: &[Candidate]) -> Vec<&Candidate> {
    let mut v: Vec<&Candidate> = cands.iter().collect();
    v.sort_by(|a, b| {
        let key = |c: &Candidate| {
            let class = if c.kind == Kind::Ssd {
                latency_class(c.latency_us)
            } else {
                0
            };
            (
                c.boot_medium,
                c.kind,
                class,
                std::cmp::Reverse(c.disk.size_bytes),
            )
        };
        key(a)
            .cmp(&key(b))
            .then_with(|| a.disk.name.cmp(&b.disk.name))
    });
    v
}

/// Picks the cache disk (docs/storage.md, "Cache placement"): an existing cache partition in
/// [`preference`] order; else a new one on the first disk in that order that the wipe policy
/// allows (the boot stick, when offered, last and in its free space); else tmpfs. Returns the plan and, per refused disk, why it was refused.
pub fn decide(cands: &[Candidate], policy: WipePolicy) -> (Plan, Vec<(String, String)>) {
    let mut refused = Vec::new();
    let ordered = preference(cands);
    if let Some(c) = ordered.iter().find(|c| c.cache_partition.is_some()) {
        if let Some(p) = &c.cache_partition {
            return (
                Plan::Reuse {
                    disk: c.disk.name.clone(),
                    partition: p.clone(),
                },
                refused,
            );
        }
    }
    for c in &ordered {
        if c.boot_medium {
            // Its data (the boot partition) stays whatever the policy: only free space is used.
            if policy == WipePolicy::None {
                refused.push((c.disk.name.clone(), "gridos.wipe=none: never format".into()));
                continue;
            }
            return (
                Plan::Append {
                    disk: c.disk.name.clone(),
                },
                refused,
            );
        }
        match (policy, c.signature) {
            (WipePolicy::None, _) => {
                refused.push((c.disk.name.clone(), "gridos.wipe=none: never format".into()));
            }
            (WipePolicy::Empty, Some(sig)) => {
                refused.push((
                    c.disk.name.clone(),
                    format!("holds data ({sig:?} signature) and gridos.wipe=empty"),
                ));
            }
            (WipePolicy::Empty, None) => {
                return (
                    Plan::Create {
                        disk: c.disk.name.clone(),
                        wipe: false,
                    },
                    refused,
                );
            }
            (WipePolicy::All, sig) => {
                return (
                    Plan::Create {
                        disk: c.disk.name.clone(),
                        wipe: sig.is_some(),
                    },
                    refused,
                );
            }
        }
    }
    let reason = if cands.is_empty() {
        "no disk found".to_string()
    } else {
        format!("no disk may be formatted under gridos.wipe={policy:?}").to_lowercase()
    };
    (Plan::Tmpfs { reason }, refused)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(name: &str, kind: Kind, sig: Option<Signature>, cache: Option<&str>) -> Candidate {
        sized(name, kind, 1 << 30, Some(100), sig, cache)
    }

    fn sized(
        name: &str,
        kind: Kind,
        size_bytes: u64,
        latency_us: Option<u64>,
        sig: Option<Signature>,
        cache: Option<&str>,
    ) -> Candidate {
        Candidate {
            disk: Disk {
                name: name.into(),
                size_bytes,
                rotational: Some(kind == Kind::Hdd),
                removable: false,
                read_only: false,
                partitions: vec![],
            },
            kind,
            latency_us,
            signature: sig,
            cache_partition: cache.map(str::to_string),
            pool_partition: None,
            boot_medium: false,
        }
    }

    #[test]
    fn every_other_disk_the_policy_allows_becomes_a_pool() {
        let mut old_pool = cand("sdd", Kind::Hdd, Some(Signature::Gpt), None);
        old_pool.pool_partition = Some("sdd1".into());
        let stick = Candidate {
            boot_medium: true,
            ..cand("sde", Kind::Ssd, None, None)
        };
        let cands = vec![
            cand("sdc", Kind::Hdd, Some(Signature::Ext), None),
            old_pool,
            cand("sda", Kind::Ssd, None, None),
            cand("sdb", Kind::Hdd, None, None),
            stick,
        ];
        let (plans, refused) = pools(&cands, Some("sda"), WipePolicy::Empty);
        assert_eq!(
            plans,
            [
                PoolPlan::Create {
                    disk: "sdb".into(),
                    wipe: false
                },
                PoolPlan::Reuse {
                    disk: "sdd".into(),
                    partition: "sdd1".into()
                },
            ]
        );
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].0, "sdc");
        assert!(refused[0].1.contains("Ext"), "{refused:?}");

        let (plans, _) = pools(&cands, Some("sda"), WipePolicy::All);
        let disks: Vec<&str> = plans.iter().map(PoolPlan::disk).collect();
        assert_eq!(disks, ["sdb", "sdc", "sdd"]);
        assert!(plans.contains(&PoolPlan::Create {
            disk: "sdc".into(),
            wipe: true
        }));

        // Under `none` only what is already a pool is used; with the cache on tmpfs, the
        // disk it could not use is not a pool either.
        let (plans, refused) = pools(&cands, None, WipePolicy::None);
        assert_eq!(
            plans,
            [PoolPlan::Reuse {
                disk: "sdd".into(),
                partition: "sdd1".into()
            }]
        );
        assert_eq!(refused.len(), 3);
    }

    #[test]
    fn the_boot_stick_is_the_last_resort_and_keeps_its_data() {
        let stick = Candidate {
            boot_medium: true,
            ..cand("sda", Kind::Ssd, Some(Signature::Gpt), None)
        };
        let hdd = cand("sdb", Kind::Hdd, None, None);
        // Any other usable disk first, even an HDD.
        assert_eq!(
            decide(&[stick.clone(), hdd.clone()], WipePolicy::Empty).0,
            Plan::Create {
                disk: "sdb".into(),
                wipe: false
            }
        );
        // Alone, it gets the cache in its free space: never wiped, under every policy but none.
        for p in [WipePolicy::Empty, WipePolicy::All] {
            assert_eq!(
                decide(std::slice::from_ref(&stick), p).0,
                Plan::Append { disk: "sda".into() }
            );
        }
        assert!(matches!(
            decide(std::slice::from_ref(&stick), WipePolicy::None).0,
            Plan::Tmpfs { .. }
        ));
        // A disk that holds data under `empty` is passed over for the stick.
        let used = cand("sdc", Kind::Ssd, Some(Signature::Ext), None);
        assert_eq!(
            decide(&[used, stick.clone()], WipePolicy::Empty).0,
            Plan::Append { disk: "sda".into() }
        );
        // Its cache partition is re-used at the next boot, but another disk's comes first.
        let stick_cache = Candidate {
            cache_partition: Some("sda2".into()),
            ..stick
        };
        assert_eq!(
            decide(std::slice::from_ref(&stick_cache), WipePolicy::None).0,
            Plan::Reuse {
                disk: "sda".into(),
                partition: "sda2".into()
            }
        );
        let other_cache = cand("sdb", Kind::Hdd, Some(Signature::Gpt), Some("sdb1"));
        assert_eq!(
            decide(&[stick_cache, other_cache], WipePolicy::Empty).0,
            Plan::Reuse {
                disk: "sdb".into(),
                partition: "sdb1".into()
            }
        );
    }

    #[test]
    fn first_empty_ssd_gets_the_cache() {
        let c = [
            cand("sda", Kind::Hdd, None, None),
            cand("sdb", Kind::Ssd, Some(Signature::Ext), None),
            cand("sdc", Kind::Ssd, None, None),
        ];
        let (plan, refused) = decide(&c, WipePolicy::Empty);
        assert_eq!(
            plan,
            Plan::Create {
                disk: "sdc".into(),
                wipe: false
            }
        );
        assert_eq!(refused.len(), 1);
        assert!(refused[0].1.contains("Ext"));
    }

    #[test]
    fn existing_cache_is_reused_under_every_policy() {
        let c = [
            cand("sda", Kind::Ssd, None, None),
            cand("sdb", Kind::Ssd, Some(Signature::Gpt), Some("sdb1")),
        ];
        for p in [WipePolicy::None, WipePolicy::Empty, WipePolicy::All] {
            assert_eq!(
                decide(&c, p).0,
                Plan::Reuse {
                    disk: "sdb".into(),
                    partition: "sdb1".into()
                }
            );
        }
    }

    #[test]
    fn none_never_formats() {
        let c = [cand("sda", Kind::Ssd, None, None)];
        let (plan, refused) = decide(&c, WipePolicy::None);
        assert!(matches!(plan, Plan::Tmpfs { .. }));
        assert_eq!(refused.len(), 1);
    }

    #[test]
    fn all_wipes_data() {
        let c = [cand("sda", Kind::Ssd, Some(Signature::Mbr), None)];
        assert_eq!(
            decide(&c, WipePolicy::All).0,
            Plan::Create {
                disk: "sda".into(),
                wipe: true
            }
        );
        assert!(matches!(
            decide(&c, WipePolicy::Empty).0,
            Plan::Tmpfs { .. }
        ));
    }

    #[test]
    fn hdd_only_when_no_ssd_fits() {
        let c = [cand("sda", Kind::Hdd, None, None)];
        assert_eq!(
            decide(&c, WipePolicy::Empty).0,
            Plan::Create {
                disk: "sda".into(),
                wipe: false
            }
        );
    }

    #[test]
    fn no_disk_means_tmpfs() {
        match decide(&[], WipePolicy::Empty).0 {
            Plan::Tmpfs { reason } => assert_eq!(reason, "no disk found"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn fastest_ssd_class_then_largest_then_name() {
        let nvme = sized("nvme0n1", Kind::Ssd, 100 << 30, Some(40), None, None);
        let sata_big = sized("sdb", Kind::Ssd, 900 << 30, Some(150), None, None);
        let sata_twin = sized("sdc", Kind::Ssd, 900 << 30, Some(180), None, None);
        let hdd = sized("sda", Kind::Hdd, 4000 << 30, None, None, None);
        let c = [
            hdd.clone(),
            sata_twin.clone(),
            sata_big.clone(),
            nvme.clone(),
        ];
        let order: Vec<&str> = preference(&c)
            .iter()
            .map(|c| c.disk.name.as_str())
            .collect();
        assert_eq!(order, ["nvme0n1", "sdb", "sdc", "sda"]);
        // The two SATA SSDs are in one latency class: noise that swaps their measurements
        // does not swap the choice.
        let mut a = sata_big.clone();
        a.latency_us = Some(190);
        let mut b = sata_twin.clone();
        b.latency_us = Some(130);
        let c2 = [b, a];
        assert_eq!(preference(&c2)[0].disk.name, "sdb");
        assert_eq!(latency_class(Some(150)), latency_class(Some(180)));
        assert!(latency_class(Some(40)) < latency_class(Some(150)));
        assert_eq!(latency_class(None), u32::MAX);
    }

    #[test]
    fn same_disks_same_choice_whatever_the_order_they_enumerate_in() {
        let disks = [
            sized("sda", Kind::Hdd, 64 << 30, None, None, None),
            sized("sdb", Kind::Ssd, 30 << 30, Some(300), None, None),
            sized("sdc", Kind::Hdd, 128 << 30, None, None, None),
        ];
        let mut rev = disks.to_vec();
        rev.reverse();
        for c in [disks.to_vec(), rev] {
            assert_eq!(
                decide(&c, WipePolicy::Empty).0,
                Plan::Create {
                    disk: "sdb".into(),
                    wipe: false
                }
            );
        }
        // HDD only: the largest.
        let hdds = [disks[0].clone(), disks[2].clone()];
        assert_eq!(
            decide(&hdds, WipePolicy::Empty).0,
            Plan::Create {
                disk: "sdc".into(),
                wipe: false
            }
        );
    }

    #[test]
    fn an_existing_cache_wins_over_a_faster_disk() {
        let c = [
            sized("nvme0n1", Kind::Ssd, 100 << 30, Some(40), None, None),
            sized(
                "sda",
                Kind::Hdd,
                100 << 30,
                None,
                Some(Signature::Gpt),
                Some("sda1"),
            ),
        ];
        assert_eq!(
            decide(&c, WipePolicy::All).0,
            Plan::Reuse {
                disk: "sda".into(),
                partition: "sda1".into()
            }
        );
    }
}
