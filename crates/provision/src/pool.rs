//! Where volumes and VM root disks go: on the storage pools storage mounted (one btrfs per
//! disk, listed in `/run/gridos/pools.json`), an HDD volume on an HDD pool, an SSD volume
//! and every VM disk on an SSD pool, each on the pool of its kind with the most room left.
//!
//! What each pool holds is booked in a ledger (`placements.json` in the runtime's folder,
//! replaced atomically), written before the volume or disk is made and cleared after it is
//! deleted: after a crash the ledger may name something not made yet (it is made at the next
//! apply, or forgotten when its deployment is gone), never the other way round. Room is the
//! pool's size less what its ledger entries reserve, so a pool is never promised twice.
//!
//! Without a pools file (a test host) everything goes in the runtime's own folder, as one
//! pool of any kind and no bound.

use gridtypes::deployment::DiskKind;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The ledger's file in the runtime's folder.
pub const LEDGER: &str = "placements.json";

/// The id of the runtime's own folder as a pool, when there is no pools file.
const HOME: &str = "home";

/// What is placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item {
    /// A volume: a folder (a btrfs subvolume with a quota).
    Volume,
    /// A VM's root disk: a file.
    VmDisk,
}

impl Item {
    fn dir(self) -> &'static str {
        match self {
            Item::Volume => "volumes",
            Item::VmDisk => "vmdisks",
        }
    }

    fn file(self, id: &str) -> String {
        match self {
            Item::Volume => id.to_string(),
            Item::VmDisk => format!("{id}.img"),
        }
    }

    /// The id in a file name [`Item::file`] made; `None` for any other file.
    fn id_of(self, file: &str) -> Option<&str> {
        match self {
            Item::Volume => Some(file),
            Item::VmDisk => file.strip_suffix(".img"),
        }
    }

    fn what(self) -> &'static str {
        match self {
            Item::Volume => "volume",
            Item::VmDisk => "VM disk",
        }
    }
}

/// One booking.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Placement {
    pool: String,
    kind: DiskKind,
    size: u64,
}

/// A pool as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pool {
    id: String,
    /// `None`: any kind (the runtime's own folder on a test host).
    kind: Option<DiskKind>,
    /// Where its volumes and disks go.
    root: PathBuf,
    /// `None`: no bound.
    size: Option<u64>,
}

/// The pools and their ledger.
#[derive(Debug)]
pub struct Pools {
    file: Option<PathBuf>,
    home: PathBuf,
    ledger: Mutex<BTreeMap<String, Placement>>,
}

fn kind_of(k: disks::Kind) -> DiskKind {
    match k {
        disks::Kind::Ssd => DiskKind::Ssd,
        disks::Kind::Hdd => DiskKind::Hdd,
    }
}

fn kind_name(k: DiskKind) -> &'static str {
    match k {
        DiskKind::Ssd => "SSD",
        DiskKind::Hdd => "HDD",
    }
}

fn key(item: Item, id: &str) -> String {
    format!("{}/{}", item.dir(), item.file(id))
}

/// Sizes as people read them: `1.5 GiB`.
fn human(bytes: u64) -> String {
    const GIB: f64 = (1u64 << 30) as f64;
    const MIB: f64 = (1u64 << 20) as f64;
    if bytes >= 1 << 30 {
        format!("{:.1} GiB", bytes as f64 / GIB)
    } else {
        format!("{:.1} MiB", bytes as f64 / MIB)
    }
}

impl Pools {
    /// The pools of `file` (storage's `pools.json`; `None`: the runtime's folder `home` only),
    /// with the ledger kept in `home`.
    pub fn open(file: Option<PathBuf>, home: &Path) -> Pools {
        let path = home.join(LEDGER);
        let ledger = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                // Replaced atomically, so only a hand edit breaks it: the bookings are
                // rebuilt from what is found on the pools at the next apply.
                tracing::error!(path = %path.display(), error = %e, "placement ledger unreadable; starting a new one");
                BTreeMap::new()
            }),
            Err(_) => BTreeMap::new(),
        };
        Pools {
            file,
            home: home.to_path_buf(),
            ledger: Mutex::new(ledger),
        }
    }

    fn pools(&self) -> Vec<Pool> {
        let Some(file) = &self.file else {
            return vec![Pool {
                id: HOME.into(),
                kind: None,
                root: self.home.clone(),
                size: None,
            }];
        };
        let listed = disks::pools::read(file).unwrap_or_else(|e| {
            tracing::error!(error = %svclog::error_chain(&e), "storage pools unreadable");
            Vec::new()
        });
        listed
            .into_iter()
            .map(|p| Pool {
                root: if p.cache {
                    self.home.clone()
                } else {
                    p.mountpoint.join("workloads")
                },
                id: p.id,
                kind: Some(kind_of(p.kind)),
                size: Some(p.size_bytes),
            })
            .collect()
    }

    fn save(&self, ledger: &BTreeMap<String, Placement>) -> Result<(), String> {
        let json = serde_json::to_vec_pretty(ledger).map_err(|e| e.to_string())?;
        std::fs::create_dir_all(&self.home)
            .map_err(|e| format!("creating {}: {e}", self.home.display()))?;
        atomicfile::write(&self.home.join(LEDGER), &json, 0o600)
            .map_err(|e| format!("writing the placement ledger: {e}"))
    }

    /// Where `item` `id` (`c<contract>-<name>`) of `size` bytes on a `kind` disk lives:
    /// where it already is, or, new, on the pool of that kind with the most room. The
    /// folder holding it exists on return; the item itself is the caller's to make.
    pub fn place(
        &self,
        item: Item,
        id: &str,
        kind: DiskKind,
        size: u64,
    ) -> Result<PathBuf, String> {
        let pools = self.pools();
        let k = key(item, id);
        let mut ledger = crate::runtime::lock(&self.ledger);
        let booked = ledger.get(&k).cloned().or_else(|| {
            // Made before the ledger knew it (a ledger lost with a cache on tmpfs).
            pools
                .iter()
                .find(|p| p.root.join(item.dir()).join(item.file(id)).exists())
                .map(|p| Placement {
                    pool: p.id.clone(),
                    kind,
                    size,
                })
        });
        let pool = match booked {
            Some(b) => {
                if b.kind != kind {
                    return Err(format!(
                        "the {} is on an {} pool and cannot move to an {} one; give it another name",
                        item.what(),
                        kind_name(b.kind),
                        kind_name(kind)
                    ));
                }
                let Some(pool) = pools.iter().find(|p| p.id == b.pool) else {
                    return Err(format!(
                        "the {} is on pool {}, which is not mounted: its disk is missing",
                        item.what(),
                        b.pool
                    ));
                };
                if size > b.size {
                    let room = room(pool, &ledger, Some(&k));
                    if size > room {
                        return Err(format!(
                            "the {} cannot grow to {}: its {} pool has {} left",
                            item.what(),
                            human(size),
                            kind_name(kind),
                            human(room)
                        ));
                    }
                }
                pool.clone()
            }
            None => choose(&pools, &ledger, kind, size, item)?,
        };
        let booking = Placement {
            pool: pool.id.clone(),
            kind,
            size,
        };
        if ledger.get(&k) != Some(&booking) {
            let mut next = ledger.clone();
            next.insert(k, booking);
            self.save(&next)?;
            *ledger = next;
        }
        let dir = pool.root.join(item.dir());
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        Ok(dir.join(item.file(id)))
    }

    /// Every `item` on every pool whose id starts with `prefix`: (id, path).
    pub fn list(&self, item: Item, prefix: &str) -> Vec<(String, PathBuf)> {
        let mut found = Vec::new();
        for pool in self.pools() {
            let Ok(entries) = std::fs::read_dir(pool.root.join(item.dir())) else {
                continue;
            };
            for e in entries.flatten() {
                let file = e.file_name().to_string_lossy().into_owned();
                if let Some(id) = item.id_of(&file).filter(|id| id.starts_with(prefix)) {
                    found.push((id.to_string(), e.path()));
                }
            }
        }
        // Booked but never made (a crash in between): listed too, so that it is forgotten.
        let ledger = crate::runtime::lock(&self.ledger);
        let head = format!("{}/", item.dir());
        for k in ledger.keys() {
            let Some(file) = k.strip_prefix(&head) else {
                continue;
            };
            if let Some(id) = item.id_of(file).filter(|id| id.starts_with(prefix)) {
                if !found.iter().any(|(f, _)| f == id) {
                    found.push((id.to_string(), PathBuf::new()));
                }
            }
        }
        found
    }

    /// Clears the booking of `item` `id`, once it is deleted.
    pub fn forget(&self, item: Item, id: &str) -> Result<(), String> {
        let mut ledger = crate::runtime::lock(&self.ledger);
        let k = key(item, id);
        if ledger.contains_key(&k) {
            let mut next = ledger.clone();
            next.remove(&k);
            self.save(&next)?;
            *ledger = next;
        }
        Ok(())
    }

    /// What is booked on each pool, and its size: (id, kind, size, booked), for the log.
    pub fn usage(&self) -> Vec<(String, Option<DiskKind>, Option<u64>, u64)> {
        let ledger = crate::runtime::lock(&self.ledger);
        self.pools()
            .into_iter()
            .map(|p| {
                let booked = booked(&p, &ledger, None);
                (p.id, p.kind, p.size, booked)
            })
            .collect()
    }
}

fn booked(pool: &Pool, ledger: &BTreeMap<String, Placement>, except: Option<&str>) -> u64 {
    ledger
        .iter()
        .filter(|(k, b)| b.pool == pool.id && Some(k.as_str()) != except)
        .map(|(_, b)| b.size)
        .fold(0u64, u64::saturating_add)
}

fn room(pool: &Pool, ledger: &BTreeMap<String, Placement>, except: Option<&str>) -> u64 {
    match pool.size {
        Some(size) => size.saturating_sub(booked(pool, ledger, except)),
        None => u64::MAX,
    }
}

/// The pool of `kind` with the most room, if it has room for `size`.
fn choose(
    pools: &[Pool],
    ledger: &BTreeMap<String, Placement>,
    kind: DiskKind,
    size: u64,
    item: Item,
) -> Result<Pool, String> {
    let best = pools
        .iter()
        .filter(|p| p.kind.is_none_or(|k| k == kind))
        .map(|p| (room(p, ledger, None), p))
        // Most room; the id breaks ties, so the same state gives the same choice.
        .max_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.id.cmp(&a.1.id)));
    match best {
        None => Err(format!(
            "this node has no {} pool for the {}: no disk of that kind could be used",
            kind_name(kind),
            item.what()
        )),
        Some((room, _)) if room < size => Err(format!(
            "no {} pool has room for the {} of {}: the roomiest has {} left",
            kind_name(kind),
            item.what(),
            human(size),
            human(room)
        )),
        Some((_, p)) => Ok(p.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn pools_file(dir: &Path, pools: &[(&str, disks::Kind, u64, bool)]) -> PathBuf {
        let file = dir.join("pools.json");
        let list: Vec<disks::Pool> = pools
            .iter()
            .map(|(id, kind, size, cache)| disks::Pool {
                id: id.to_string(),
                disk: format!("disk-{id}"),
                kind: *kind,
                mountpoint: dir.join("mnt").join(id),
                size_bytes: *size,
                cache: *cache,
            })
            .collect();
        disks::pools::write(&file, &list).unwrap();
        file
    }

    #[test]
    fn each_kind_goes_to_its_roomiest_pool_and_is_booked_until_forgotten() {
        let t = tempfile::tempdir().unwrap();
        let home = t.path().join("home");
        let file = pools_file(
            t.path(),
            &[
                ("cache", disks::Kind::Ssd, 10 * GIB, true),
                ("ssd2", disks::Kind::Ssd, 8 * GIB, false),
                ("hdd1", disks::Kind::Hdd, 100 * GIB, false),
            ],
        );
        let p = Pools::open(Some(file.clone()), &home);
        let a = p
            .place(Item::Volume, "c1-a", DiskKind::Ssd, 4 * GIB)
            .unwrap();
        assert_eq!(a, home.join("volumes/c1-a"));
        // 6 GiB left on the cache, 8 on ssd2: the next goes to ssd2.
        let b = p
            .place(Item::VmDisk, "c1-vm", DiskKind::Ssd, 5 * GIB)
            .unwrap();
        assert_eq!(b, t.path().join("mnt/ssd2/workloads/vmdisks/c1-vm.img"));
        let h = p
            .place(Item::Volume, "c2-h", DiskKind::Hdd, 50 * GIB)
            .unwrap();
        assert_eq!(h, t.path().join("mnt/hdd1/workloads/volumes/c2-h"));
        // Placed again: the same place, whatever the rooms are now.
        assert_eq!(
            p.place(Item::Volume, "c1-a", DiskKind::Ssd, 4 * GIB)
                .unwrap(),
            a
        );
        // 6 GiB left on the cache, 3 on ssd2: 7 GiB fits nowhere, and says so.
        let err = p
            .place(Item::Volume, "c3-big", DiskKind::Ssd, 7 * GIB)
            .unwrap_err();
        assert!(
            err.contains("no SSD pool has room") && err.contains("6.0 GiB"),
            "{err}"
        );
        // Growing past the pool's room is refused; within it, allowed.
        let err = p
            .place(Item::Volume, "c1-a", DiskKind::Ssd, 11 * GIB)
            .unwrap_err();
        assert!(err.contains("cannot grow"), "{err}");
        p.place(Item::Volume, "c1-a", DiskKind::Ssd, 9 * GIB)
            .unwrap();
        // Changing kind would move the data: refused.
        let err = p
            .place(Item::Volume, "c1-a", DiskKind::Hdd, GIB)
            .unwrap_err();
        assert!(err.contains("cannot move"), "{err}");

        // The ledger survives a restart.
        let again = Pools::open(Some(file.clone()), &home);
        let usage = again.usage();
        assert!(usage.contains(&("cache".into(), Some(DiskKind::Ssd), Some(10 * GIB), 9 * GIB)));
        let listed: Vec<String> = again
            .list(Item::Volume, "c1-")
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(listed, ["c1-a"], "booked, listed even before it is made");
        again.forget(Item::Volume, "c1-a").unwrap();
        let err = again
            .place(Item::Volume, "c3-big", DiskKind::Ssd, 11 * GIB)
            .unwrap_err();
        assert!(err.contains("10.0 GiB"), "freed space counts again: {err}");
        again
            .place(Item::Volume, "c3-big", DiskKind::Ssd, 10 * GIB)
            .unwrap();

        // No HDD pool: an HDD volume says so.
        let file = pools_file(t.path(), &[("cache", disks::Kind::Ssd, 10 * GIB, true)]);
        let ssd_only = Pools::open(Some(file), &t.path().join("other"));
        let err = ssd_only
            .place(Item::Volume, "c9-h", DiskKind::Hdd, GIB)
            .unwrap_err();
        assert!(err.contains("no HDD pool"), "{err}");
        // Its pool gone (the disk pulled): the volume is not made again elsewhere.
        let err = Pools::open(Some(t.path().join("pools.json")), &home)
            .place(Item::Volume, "c2-h", DiskKind::Hdd, 50 * GIB)
            .unwrap_err();
        assert!(err.contains("not mounted"), "{err}");
    }

    #[test]
    fn a_volume_found_on_a_pool_without_a_booking_is_adopted() {
        let t = tempfile::tempdir().unwrap();
        let home = t.path().join("home");
        let file = pools_file(
            t.path(),
            &[
                ("a", disks::Kind::Hdd, 10 * GIB, false),
                ("b", disks::Kind::Hdd, 20 * GIB, false),
            ],
        );
        let on_a = t.path().join("mnt/a/workloads/volumes/c1-data");
        std::fs::create_dir_all(&on_a).unwrap();
        let p = Pools::open(Some(file), &home);
        assert_eq!(
            p.place(Item::Volume, "c1-data", DiskKind::Hdd, GIB)
                .unwrap(),
            on_a
        );
        assert!(home.join(LEDGER).exists());
    }

    #[test]
    fn without_a_pools_file_everything_stays_home() {
        let t = tempfile::tempdir().unwrap();
        let p = Pools::open(None, t.path());
        let v = p
            .place(Item::Volume, "c1-v", DiskKind::Hdd, 1 << 50)
            .unwrap();
        assert_eq!(v, t.path().join("volumes/c1-v"));
        let d = p.place(Item::VmDisk, "c1-m", DiskKind::Ssd, GIB).unwrap();
        assert_eq!(d, t.path().join("vmdisks/c1-m.img"));
    }
}
