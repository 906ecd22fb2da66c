//! The image's file tree in memory, kept sorted so the archive is written in
//! the same order every time.

use std::collections::BTreeMap;
use std::path::Path;

use crate::cpio::{Entry, Kind};

/// Paths (without leading `/`) → entries; parents are created as `0755` directories.
#[derive(Debug, Default)]
pub struct Tree {
    entries: BTreeMap<String, (u32, Kind)>,
}

/// Why a path could not be added.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// A path with `..`, or empty.
    #[error("bad image path {0:?}")]
    BadPath(String),
    /// A file is in the way of a directory or the other way round.
    #[error("{path}: conflicts with an existing {existing}")]
    Conflict {
        /// The path.
        path: String,
        /// What is there already.
        existing: &'static str,
    },
    /// A source file could not be read.
    #[error("reading {path}")]
    Read {
        /// The source path.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

fn clean(path: &str) -> Result<String, TreeError> {
    let p = path.trim_start_matches('/').trim_end_matches('/');
    if p.is_empty() || p.split('/').any(|c| c.is_empty() || c == ".." || c == ".") {
        return Err(TreeError::BadPath(path.into()));
    }
    Ok(p.to_string())
}

fn kind_name(k: &Kind) -> &'static str {
    match k {
        Kind::Dir => "directory",
        Kind::File(_) => "file",
        Kind::Symlink(_) => "symlink",
        Kind::CharDev(..) => "device",
    }
}

impl Tree {
    /// An empty tree.
    pub fn new() -> Self {
        Tree::default()
    }

    /// Adds (or replaces) an entry; creates missing parent directories.
    pub fn insert(&mut self, path: &str, perm: u32, kind: Kind) -> Result<(), TreeError> {
        let p = clean(path)?;
        let mut parent = String::new();
        for comp in p
            .split('/')
            .collect::<Vec<_>>()
            .split_last()
            .map(|(_, init)| init.to_vec())
            .unwrap_or_default()
        {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(comp);
            match self.entries.get(&parent) {
                None => {
                    self.entries.insert(parent.clone(), (0o755, Kind::Dir));
                }
                Some((_, Kind::Dir)) => {}
                Some((_, k)) => {
                    return Err(TreeError::Conflict {
                        path: parent,
                        existing: kind_name(k),
                    })
                }
            }
        }
        match (self.entries.get(&p), &kind) {
            (Some((_, Kind::Dir)), Kind::Dir) => {}
            (Some((_, Kind::Dir)), _) => {
                return Err(TreeError::Conflict {
                    path: p,
                    existing: "directory",
                })
            }
            _ => {
                self.entries.insert(p, (perm, kind));
            }
        }
        Ok(())
    }

    /// Adds a host file's bytes (symlinks followed) with `perm`.
    pub fn add_file(&mut self, dest: &str, src: &Path, perm: u32) -> Result<u64, TreeError> {
        let data = std::fs::read(src).map_err(|source| TreeError::Read {
            path: src.into(),
            source,
        })?;
        let n = data.len() as u64;
        self.insert(dest, perm, Kind::File(data))?;
        Ok(n)
    }

    /// Copies a host directory tree under `dest` (`""` is the root). Regular files get 0755 if
    /// any execute bit is set and 0644 otherwise, so the host's umask does not leak in.
    pub fn add_dir(&mut self, dest: &str, src: &Path) -> Result<usize, TreeError> {
        use std::os::unix::fs::PermissionsExt;
        let read = |path: &Path, source| TreeError::Read {
            path: path.into(),
            source,
        };
        let mut count = 0;
        let mut names: Vec<_> = std::fs::read_dir(src)
            .map_err(|e| read(src, e))?
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .collect();
        names.sort();
        for name in names {
            let s = src.join(&name);
            let d = format!("{}/{}", dest.trim_end_matches('/'), name.to_string_lossy());
            let meta = std::fs::symlink_metadata(&s).map_err(|e| read(&s, e))?;
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&s).map_err(|e| read(&s, e))?;
                self.insert(
                    &d,
                    0o777,
                    Kind::Symlink(target.to_string_lossy().into_owned()),
                )?;
                count += 1;
            } else if meta.is_dir() {
                self.insert(&d, 0o755, Kind::Dir)?;
                count += self.add_dir(&d, &s)?;
            } else if meta.is_file() {
                let perm = if meta.permissions().mode() & 0o111 != 0 {
                    0o755
                } else {
                    0o644
                };
                self.add_file(&d, &s, perm)?;
                count += 1;
            }
        }
        Ok(count)
    }

    /// True if the path exists in the tree.
    pub fn contains(&self, path: &str) -> bool {
        clean(path).is_ok_and(|p| self.entries.contains_key(&p))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if the tree is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries in archive order (sorted by path, so every parent precedes its children).
    pub fn entries(&self) -> impl Iterator<Item = Entry> + '_ {
        self.entries.iter().map(|(p, (perm, kind))| Entry {
            path: p.clone(),
            perm: *perm,
            kind: kind.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_first_and_conflicts() {
        let mut t = Tree::new();
        t.insert("/usr/bin/gridctl", 0o755, Kind::File(vec![1]))
            .unwrap();
        t.insert("usr-x", 0o644, Kind::File(vec![])).unwrap();
        t.insert("usr", 0o755, Kind::Dir).unwrap();
        let paths: Vec<String> = t.entries().map(|e| e.path).collect();
        assert_eq!(paths, ["usr", "usr-x", "usr/bin", "usr/bin/gridctl"]);
        assert!(t.insert("usr/bin/gridctl/x", 0o644, Kind::Dir).is_err());
        assert!(t.insert("usr/bin", 0o644, Kind::File(vec![])).is_err());
        assert!(t.insert("../etc", 0o644, Kind::File(vec![])).is_err());
    }
}
