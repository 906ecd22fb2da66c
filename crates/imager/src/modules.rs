//! Kernel modules: pick the modules a node needs from a kernel's
//! `lib/modules/VERSION`, add their dependency closure (read from each
//! module's `.modinfo`, so the kernel tree needs no `modules.dep`), and write
//! `modules.dep`, `modules.alias` and `modules.softdep` for just that subset
//! in the format init's coldplug and `modprobe` read.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use object::read::elf::{ElfFile64, FileHeader as _, SectionHeader as _};
use object::Endianness;

/// Why a module selection failed.
#[derive(Debug, thiserror::Error)]
pub enum ModulesError {
    /// A directory or file of the kernel tree could not be read.
    #[error("reading {path}")]
    Read {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A module's `.modinfo` could not be read.
    #[error("{path}: {reason}")]
    Modinfo {
        /// The module file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// Modules named in the profile exist neither as files nor in `modules.builtin`.
    #[error("modules not found in {root}: {names:?}")]
    Unknown {
        /// `lib/modules/VERSION`.
        root: PathBuf,
        /// The missing names.
        names: Vec<String>,
    },
    /// A dependency named in a `.modinfo` has no module file.
    #[error("{module} depends on {dep}, which is not in {root}")]
    MissingDep {
        /// The module with the dependency.
        module: String,
        /// The missing dependency.
        dep: String,
        /// `lib/modules/VERSION`.
        root: PathBuf,
    },
}

/// Module names use `-` and `_` interchangeably; the kernel uses `_`.
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// A module's name from its path: `kernel/fs/btrfs/btrfs.ko.xz` → `btrfs`.
pub fn name_of(rel: &str) -> Option<String> {
    let file = rel.rsplit('/').next()?;
    let stem = file
        .split_once(".ko")
        .map(|(s, rest)| (s, rest.is_empty() || rest.starts_with('.')))?;
    stem.1.then(|| normalize(stem.0))
}

/// The fields of a module's `.modinfo` the image needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModInfo {
    /// Hard dependencies (`depends=`).
    pub depends: Vec<String>,
    /// Soft dependencies loaded before (`softdep=pre: ...`).
    pub soft_pre: Vec<String>,
    /// Soft dependencies loaded after (`softdep=... post: ...`).
    pub soft_post: Vec<String>,
    /// Device and subsystem aliases (`alias=`), e.g. `pci:v00001AF4d*`.
    pub aliases: Vec<String>,
}

/// Parses the NUL-separated `key=value` records of a `.modinfo` section.
pub fn parse_modinfo(section: &[u8]) -> ModInfo {
    let mut m = ModInfo::default();
    for rec in section.split(|&b| b == 0) {
        let rec = String::from_utf8_lossy(rec);
        let Some((k, v)) = rec.split_once('=') else {
            continue;
        };
        match k {
            "depends" => m
                .depends
                .extend(v.split(',').filter(|s| !s.is_empty()).map(normalize)),
            "alias" => m.aliases.push(v.to_string()),
            "softdep" => {
                let mut pre = true;
                for w in v.split_whitespace() {
                    match w {
                        "pre:" => pre = true,
                        "post:" => pre = false,
                        w if pre => m.soft_pre.push(normalize(w)),
                        w => m.soft_post.push(normalize(w)),
                    }
                }
            }
            _ => {}
        }
    }
    m
}

/// Reads `.modinfo` from an uncompressed `.ko` file.
pub fn read_modinfo(path: &Path) -> Result<ModInfo, ModulesError> {
    let bad = |reason: String| ModulesError::Modinfo {
        path: path.into(),
        reason,
    };
    if !path.to_string_lossy().ends_with(".ko") {
        return Err(bad(
            "compressed module: the imager reads .modinfo from uncompressed .ko files only".into(),
        ));
    }
    let data = std::fs::read(path).map_err(|source| ModulesError::Read {
        path: path.into(),
        source,
    })?;
    let file = ElfFile64::<Endianness>::parse(&*data).map_err(|e| bad(e.to_string()))?;
    let endian = file.endian();
    let _ = file.elf_header().e_machine(endian);
    let sections = file.elf_section_table();
    let Some((_, sh)) = sections.section_by_name(endian, b".modinfo") else {
        return Ok(ModInfo::default());
    };
    let bytes = sh.data(endian, &*data).map_err(|e| bad(e.to_string()))?;
    Ok(parse_modinfo(bytes))
}

/// The module files of one kernel version, by module name.
#[derive(Debug)]
pub struct ModuleTree {
    /// `lib/modules/VERSION`.
    pub root: PathBuf,
    /// Module name → path relative to `root`.
    pub files: BTreeMap<String, String>,
    /// Names listed in `modules.builtin` (built into the kernel, nothing to load).
    pub builtin: BTreeSet<String>,
}

impl ModuleTree {
    /// Scans `root` (`lib/modules/VERSION`) for `*.ko*` files and reads `modules.builtin`.
    pub fn scan(root: &Path) -> Result<Self, ModulesError> {
        let mut files = BTreeMap::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            let rd = std::fs::read_dir(&dir).map_err(|source| ModulesError::Read {
                path: dir.clone(),
                source,
            })?;
            for e in rd {
                let e = e.map_err(|source| ModulesError::Read {
                    path: dir.clone(),
                    source,
                })?;
                let p = e.path();
                let ft = e.file_type().map_err(|source| ModulesError::Read {
                    path: p.clone(),
                    source,
                })?;
                if ft.is_dir() {
                    stack.push(p);
                } else if let Some(rel) = p.strip_prefix(root).ok().and_then(|r| r.to_str()) {
                    if let Some(name) = name_of(rel) {
                        // Keep the first by path order so the choice never depends on readdir order.
                        let rel = rel.to_string();
                        match files.entry(name) {
                            std::collections::btree_map::Entry::Vacant(v) => {
                                v.insert(rel);
                            }
                            std::collections::btree_map::Entry::Occupied(mut o) => {
                                if rel < *o.get() {
                                    o.insert(rel);
                                }
                            }
                        }
                    }
                }
            }
        }
        let builtin = std::fs::read_to_string(root.join("modules.builtin"))
            .unwrap_or_default()
            .lines()
            .filter_map(name_of)
            .collect();
        Ok(ModuleTree {
            root: root.into(),
            files,
            builtin,
        })
    }

    /// The wanted modules and everything they depend on (hard and soft dependencies).
    /// Built-in names are accepted and skipped; a soft dependency that does not exist is ignored
    /// (modprobe does the same).
    pub fn select(&self, wanted: &[String]) -> Result<Selection, ModulesError> {
        let unknown: Vec<String> = wanted
            .iter()
            .map(|w| normalize(w))
            .filter(|w| !self.files.contains_key(w) && !self.builtin.contains(w))
            .collect();
        if !unknown.is_empty() {
            return Err(ModulesError::Unknown {
                root: self.root.clone(),
                names: unknown,
            });
        }
        let mut modules = BTreeMap::new();
        let mut todo: Vec<String> = wanted.iter().map(|w| normalize(w)).collect();
        todo.sort();
        todo.dedup();
        while let Some(name) = todo.pop() {
            if modules.contains_key(&name) || self.builtin.contains(&name) {
                continue;
            }
            let Some(rel) = self.files.get(&name) else {
                continue;
            };
            let info = read_modinfo(&self.root.join(rel))?;
            for d in &info.depends {
                if !self.files.contains_key(d) && !self.builtin.contains(d) {
                    return Err(ModulesError::MissingDep {
                        module: name,
                        dep: d.clone(),
                        root: self.root.clone(),
                    });
                }
                todo.push(d.clone());
            }
            todo.extend(info.soft_pre.iter().chain(&info.soft_post).cloned());
            modules.insert(name, (rel.clone(), info));
        }
        Ok(Selection { modules })
    }
}

/// A closed set of modules, ready to be copied and indexed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// Module name → (path relative to `lib/modules/VERSION`, its `.modinfo`).
    pub modules: BTreeMap<String, (String, ModInfo)>,
}

/// The index files of a selection, as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Index {
    /// `modules.dep`: `path: dep paths`, the last dependency loaded first (depmod's order).
    pub dep: String,
    /// `modules.alias`: `alias PATTERN module`.
    pub alias: String,
    /// `modules.softdep`: `softdep module pre: ... post: ...`.
    pub softdep: String,
}

impl Selection {
    /// Paths (relative to `lib/modules/VERSION`) of every selected module, sorted.
    pub fn paths(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.modules.values().map(|(p, _)| p.as_str()).collect();
        v.sort();
        v
    }

    /// Writes the index files for exactly this selection.
    pub fn index(&self) -> Index {
        let mut by_path: Vec<(&String, &(String, ModInfo))> = self.modules.iter().collect();
        by_path.sort_by(|a, b| a.1 .0.cmp(&b.1 .0));
        let (mut dep, mut alias, mut softdep) = (String::new(), String::new(), String::new());
        for (name, (path, info)) in by_path {
            // Dependencies first (post-order), then reversed: modprobe and init load from the end.
            let mut order = Vec::new();
            let mut seen = BTreeSet::new();
            self.post_order(name, &mut seen, &mut order);
            order.pop(); // the module itself
            let deps: Vec<&str> = order
                .iter()
                .rev()
                .filter_map(|n| self.modules.get(n))
                .map(|(p, _)| p.as_str())
                .collect();
            dep.push_str(&format!("{path}:"));
            for d in deps {
                dep.push(' ');
                dep.push_str(d);
            }
            dep.push('\n');
            for a in &info.aliases {
                alias.push_str(&format!("alias {a} {name}\n"));
            }
            if !info.soft_pre.is_empty() || !info.soft_post.is_empty() {
                softdep.push_str(&format!("softdep {name}"));
                if !info.soft_pre.is_empty() {
                    softdep.push_str(&format!(" pre: {}", info.soft_pre.join(" ")));
                }
                if !info.soft_post.is_empty() {
                    softdep.push_str(&format!(" post: {}", info.soft_post.join(" ")));
                }
                softdep.push('\n');
            }
        }
        Index {
            dep,
            alias,
            softdep,
        }
    }

    fn post_order(&self, name: &str, seen: &mut BTreeSet<String>, out: &mut Vec<String>) {
        if !seen.insert(name.to_string()) {
            return;
        }
        if let Some((_, info)) = self.modules.get(name) {
            let mut deps = info.depends.clone();
            deps.sort();
            for d in deps {
                self.post_order(&d, seen, out);
            }
            out.push(name.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object::write::Object;
    use object::{Architecture, BinaryFormat, SectionKind};

    fn fake_ko(modinfo: &str) -> Vec<u8> {
        let mut obj = Object::new(
            BinaryFormat::Elf,
            Architecture::X86_64,
            object::Endianness::Little,
        );
        let id = obj.add_section(vec![], b".modinfo".to_vec(), SectionKind::ReadOnlyData);
        obj.append_section_data(id, modinfo.replace(';', "\0").as_bytes(), 1);
        obj.write().unwrap()
    }

    /// A fake kernel tree: virtio_net → net_failover → failover; btrfs → libcrc32c, softdep crc32c;
    /// a module with a dash in its file name; an unrelated module.
    fn fake_tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        let mods = [
            ("kernel/drivers/net/virtio_net.ko", "alias=virtio:d00000001v*;depends=net_failover;name=virtio_net;"),
            ("kernel/drivers/net/net_failover.ko", "depends=failover;"),
            ("kernel/net/core/failover.ko", "depends=;"),
            ("kernel/fs/btrfs/btrfs.ko", "alias=fs-btrfs;alias=devname:btrfs-control;softdep=pre: crc32c_generic not_here;depends=libcrc32c,raid6_pq;"),
            ("kernel/lib/libcrc32c.ko", "depends=;"),
            ("kernel/lib/raid6/raid6_pq.ko", "depends=;"),
            ("kernel/crypto/crc32c_generic.ko", "alias=crypto-crc32c;alias=crc32c;"),
            ("kernel/drivers/scsi/virtio-scsi.ko", "alias=virtio:d00000008v*;"),
            ("kernel/drivers/gpu/unrelated.ko", "alias=pci:v*;"),
        ];
        for (p, info) in mods {
            let f = r.join(p);
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(f, fake_ko(info)).unwrap();
        }
        std::fs::write(r.join("modules.builtin"), "kernel/drivers/block/loop.ko\n").unwrap();
        dir
    }

    #[test]
    fn closure_follows_depends_and_skips_builtin() {
        let t = fake_tree();
        let tree = ModuleTree::scan(t.path()).unwrap();
        assert_eq!(
            tree.files["virtio_scsi"],
            "kernel/drivers/scsi/virtio-scsi.ko"
        );
        let sel = tree
            .select(&["virtio_net".into(), "loop".into(), "virtio-scsi".into()])
            .unwrap();
        let names: Vec<&String> = sel.modules.keys().collect();
        assert_eq!(
            names,
            ["failover", "net_failover", "virtio_net", "virtio_scsi"]
        );
        let idx = sel.index();
        assert!(
            idx.dep.contains("kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko\n"),
            "{}",
            idx.dep
        );
        assert!(
            idx.dep.contains("kernel/net/core/failover.ko:\n"),
            "{}",
            idx.dep
        );
        assert_eq!(
            idx.alias,
            "alias virtio:d00000001v* virtio_net\nalias virtio:d00000008v* virtio_scsi\n"
        );
    }

    #[test]
    fn soft_dependencies_are_included() {
        let t = fake_tree();
        let sel = ModuleTree::scan(t.path())
            .unwrap()
            .select(&["btrfs".into()])
            .unwrap();
        let names: Vec<&String> = sel.modules.keys().collect();
        assert_eq!(names, ["btrfs", "crc32c_generic", "libcrc32c", "raid6_pq"]);
        let idx = sel.index();
        assert!(
            idx.softdep
                .contains("softdep btrfs pre: crc32c_generic not_here\n"),
            "{}",
            idx.softdep
        );
        assert!(idx.alias.contains("alias fs-btrfs btrfs\n"));
    }

    #[test]
    fn unknown_module_is_a_clear_error() {
        let t = fake_tree();
        let err = ModuleTree::scan(t.path())
            .unwrap()
            .select(&["nvme".into(), "virtio_net".into()])
            .unwrap_err();
        assert!(err.to_string().contains("[\"nvme\"]"), "{err}");
    }

    #[test]
    fn modinfo_parsing() {
        let m =
            parse_modinfo(b"license=GPL\0depends=a-b,c\0softdep=pre: x post: y z\0alias=pci:v1*\0");
        assert_eq!(m.depends, ["a_b", "c"]);
        assert_eq!(
            (m.soft_pre, m.soft_post),
            (
                vec!["x".to_string()],
                vec!["y".to_string(), "z".to_string()]
            )
        );
        assert_eq!(m.aliases, ["pci:v1*"]);
        assert_eq!(
            name_of("kernel/a/virtio-net.ko.zst").as_deref(),
            Some("virtio_net")
        );
        assert_eq!(name_of("modules.order"), None);
        assert_eq!(name_of("kernel/x.kobj"), None);
    }
}
