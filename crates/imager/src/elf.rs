//! The shared-library closure of a dynamically linked helper binary: its ELF
//! interpreter plus every `DT_NEEDED` library, found the way `ld.so` would
//! (`DT_RUNPATH`/`DT_RPATH`, then the multiarch and default directories).

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};

use object::elf;
use object::read::elf::{Dyn, ElfFile64, FileHeader, ProgramHeader};
use object::Endianness;

/// Default library directories of a Debian amd64 system, in `ld.so`'s order.
pub const DEFAULT_LIB_DIRS: &[&str] = &[
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
];

/// Why a binary's closure could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    /// The file could not be read.
    #[error("reading {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a 64-bit ELF object.
    #[error("{path}: not a 64-bit ELF file: {reason}")]
    NotElf {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// A `DT_NEEDED` library was found in none of the search directories.
    #[error("{needed}, needed by {by}, not found in {searched:?}")]
    NotFound {
        /// The library's soname.
        needed: String,
        /// The object that needs it.
        by: PathBuf,
        /// The directories searched (inside the sysroot).
        searched: Vec<String>,
    },
}

/// What the dynamic loader needs from one ELF file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DynInfo {
    /// `PT_INTERP`, e.g. `/lib64/ld-linux-x86-64.so.2`; `None` for a static binary.
    pub interpreter: Option<String>,
    /// `DT_NEEDED` entries, in file order.
    pub needed: Vec<String>,
    /// `DT_RUNPATH` (or `DT_RPATH`) directories.
    pub runpath: Vec<String>,
    /// `e_machine`, so a library of another architecture is not taken.
    pub machine: u16,
}

/// Reads the interpreter, needed libraries and run path of an ELF file.
pub fn dyn_info(path: &Path) -> Result<DynInfo, ElfError> {
    let data = std::fs::read(path).map_err(|source| ElfError::Read {
        path: path.into(),
        source,
    })?;
    parse_dyn_info(&data).map_err(|e| ElfError::NotElf {
        path: path.into(),
        reason: e.to_string(),
    })
}

/// [`dyn_info`] on bytes already in memory.
pub fn parse_dyn_info(data: &[u8]) -> object::read::Result<DynInfo> {
    let file = ElfFile64::<Endianness>::parse(data)?;
    let endian = file.endian();
    let header = file.elf_header();
    let mut info = DynInfo {
        machine: header.e_machine(endian),
        ..DynInfo::default()
    };
    for ph in file.elf_program_headers() {
        if let Some(interp) = ph.interpreter(endian, data)? {
            info.interpreter = Some(String::from_utf8_lossy(interp).into_owned());
        }
    }
    let sections = file.elf_section_table();
    if let Some((dyns, link)) = sections.dynamic(endian, data)? {
        let strings = sections.strings(endian, data, link)?;
        let mut rpath = Vec::new();
        for d in dyns {
            let tag = d.d_tag(endian) as u32;
            if !matches!(tag, elf::DT_NEEDED | elf::DT_RUNPATH | elf::DT_RPATH) {
                continue;
            }
            let s = String::from_utf8_lossy(d.string(endian, strings)?).into_owned();
            match tag {
                elf::DT_NEEDED => info.needed.push(s),
                elf::DT_RUNPATH => info.runpath.extend(s.split(':').map(str::to_string)),
                _ => rpath.extend(s.split(':').map(str::to_string)),
            }
        }
        if info.runpath.is_empty() {
            info.runpath = rpath;
        }
    }
    Ok(info)
}

/// One file of a closure: where it goes in the image and where its bytes are read from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Placed {
    /// Absolute path inside the image, e.g. `/lib/x86_64-linux-gnu/libc.so.6`.
    pub dest: String,
    /// The file to read (inside the sysroot; symlinks are followed when reading).
    pub source: PathBuf,
}

/// The interpreter and all libraries `binary` needs, transitively, looked up in `sysroot`
/// (`/` for the build host). The binary itself is not included. Sorted by destination.
pub fn closure(binary: &Path, sysroot: &Path, lib_dirs: &[&str]) -> Result<Vec<Placed>, ElfError> {
    let root_info = dyn_info(binary)?;
    let mut out: BTreeMap<String, PathBuf> = BTreeMap::new();
    if let Some(interp) = &root_info.interpreter {
        out.insert(interp.clone(), in_root(sysroot, interp));
    }
    let mut queue = VecDeque::from([(binary.to_path_buf(), root_info)]);
    let mut seen_names = std::collections::BTreeSet::new();
    while let Some((obj, info)) = queue.pop_front() {
        let origin = obj
            .parent()
            .and_then(|p| p.strip_prefix(sysroot).ok())
            .map(|p| format!("/{}", p.display()))
            .unwrap_or_else(|| "/".into());
        for needed in &info.needed {
            if !seen_names.insert(needed.clone()) {
                continue;
            }
            let mut dirs: Vec<String> = info
                .runpath
                .iter()
                .map(|d| d.replace("$ORIGIN", &origin))
                .collect();
            dirs.extend(lib_dirs.iter().map(|d| d.to_string()));
            let found = if needed.contains('/') {
                let p = in_root(sysroot, needed);
                p.is_file().then(|| (needed.clone(), p))
            } else {
                dirs.iter().find_map(|d| {
                    let dest = format!("{}/{}", d.trim_end_matches('/'), needed);
                    let src = in_root(sysroot, &dest);
                    let lib = dyn_info(&src).ok()?;
                    (lib.machine == info.machine).then_some((dest, src))
                })
            };
            let Some((dest, src)) = found else {
                return Err(ElfError::NotFound {
                    needed: needed.clone(),
                    by: obj.clone(),
                    searched: dirs,
                });
            };
            let lib = dyn_info(&src)?;
            out.insert(dest, src.clone());
            queue.push_back((src, lib));
        }
    }
    Ok(out
        .into_iter()
        .map(|(dest, source)| Placed { dest, source })
        .collect())
}

fn in_root(sysroot: &Path, abs: &str) -> PathBuf {
    sysroot.join(abs.trim_start_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_dynamic_binary_has_libc_and_interpreter() {
        let bin = ["/usr/bin/ls", "/bin/ls"]
            .iter()
            .map(Path::new)
            .find(|p| p.exists())
            .unwrap();
        let info = dyn_info(bin).unwrap();
        let interp = info.interpreter.clone().expect("ls is dynamic");
        assert!(
            info.needed.iter().any(|n| n.starts_with("libc.so")),
            "{info:?}"
        );
        let libs = closure(bin, Path::new("/"), DEFAULT_LIB_DIRS).unwrap();
        let dests: Vec<&str> = libs.iter().map(|p| p.dest.as_str()).collect();
        assert!(dests.contains(&interp.as_str()), "{dests:?}");
        assert!(dests.iter().any(|d| d.ends_with("/libc.so.6")), "{dests:?}");
        // libselinux needs libpcre2: the closure is transitive.
        if info.needed.iter().any(|n| n.starts_with("libselinux")) {
            assert!(dests.iter().any(|d| d.contains("libpcre2")), "{dests:?}");
        }
        for p in &libs {
            assert!(p.source.exists(), "{p:?}");
        }
    }

    #[test]
    fn fake_sysroot_with_runpath_and_missing_library() {
        // Use the host's real ELF files, laid out in a fake sysroot: ls in /bin and
        // its libraries under /lib/x86_64-linux-gnu only.
        let host_ls = ["/usr/bin/ls", "/bin/ls"]
            .iter()
            .map(Path::new)
            .find(|p| p.exists())
            .unwrap();
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("bin")).unwrap();
        std::fs::copy(host_ls, r.join("bin/ls")).unwrap();
        let host_libs = closure(host_ls, Path::new("/"), DEFAULT_LIB_DIRS).unwrap();
        let libdir = r.join("opt/lib");
        std::fs::create_dir_all(&libdir).unwrap();
        // Everything but the interpreter goes to /opt/lib, which no default searches.
        for p in &host_libs {
            let name = Path::new(&p.dest).file_name().unwrap();
            std::fs::copy(&p.source, libdir.join(name)).unwrap();
        }
        let err = closure(&r.join("bin/ls"), r, DEFAULT_LIB_DIRS).unwrap_err();
        assert!(matches!(err, ElfError::NotFound { .. }), "{err}");
        assert!(err.to_string().contains("needed by"), "{err}");
        let found = closure(&r.join("bin/ls"), r, &["/opt/lib"]).unwrap();
        assert!(
            found.iter().any(|p| p.dest == "/opt/lib/libc.so.6"),
            "{found:?}"
        );
    }

    #[test]
    fn non_elf_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let txt = dir.path().join("script");
        std::fs::write(&txt, "#!/bin/sh\n").unwrap();
        assert!(matches!(dyn_info(&txt), Err(ElfError::NotElf { .. })));
    }
}
