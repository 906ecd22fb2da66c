//! The pure decision: which disk gets the cache partition, and whether it is re-used,
//! created, or replaced by a tmpfs.

use crate::disks::Disk;
use crate::seek::Kind;
use crate::signature::Signature;
use gridinit::cmdline::WipePolicy;

/// A usable disk with what was measured and found on it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Candidate {
    /// The disk.
    pub disk: Disk,
    /// SSD or HDD, measured.
    pub kind: Kind,
    /// Partition table or filesystem found in its first/last MiB.
    pub signature: Option<Signature>,
    /// A partition already holding a btrfs labelled `gridos-cache`.
    pub cache_partition: Option<String>,
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
    /// No disk can be used: cache on tmpfs, lost at reboot.
    Tmpfs {
        /// Why, for the log and the marker file.
        reason: String,
    },
}

/// Picks the cache disk. Order of preference: an existing cache partition (SSDs first),
/// then a new one on the first SSD the policy allows, then on the first allowed HDD.
/// Returns the plan and, per refused disk, why it was refused.
pub fn decide(cands: &[Candidate], policy: WipePolicy) -> (Plan, Vec<(String, String)>) {
    let mut refused = Vec::new();
    let ordered: Vec<&Candidate> = cands
        .iter()
        .filter(|c| c.kind == Kind::Ssd)
        .chain(cands.iter().filter(|c| c.kind == Kind::Hdd))
        .collect();
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
        Candidate {
            disk: Disk {
                name: name.into(),
                size_bytes: 1 << 30,
                rotational: kind == Kind::Hdd,
                removable: false,
                partitions: vec![],
            },
            kind,
            signature: sig,
            cache_partition: cache.map(str::to_string),
        }
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
}
