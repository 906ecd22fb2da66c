//! The image profile (`image/profile.yaml`): which kernel, which modules,
//! which binaries and files, and the default kernel command line.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Why a profile could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// The file could not be read.
    #[error("reading profile {path}")]
    Read {
        /// The profile path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The YAML is malformed or has unknown fields.
    #[error("profile {path}")]
    Parse {
        /// The profile path.
        path: PathBuf,
        /// The parser's message.
        source: serde_norway::Error,
    },
    /// A value is out of range.
    #[error("profile {path}: {reason}")]
    Invalid {
        /// The profile path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Everything that decides what goes into the image.
#[derive(Debug, Clone)]
pub struct Profile {
    /// Where the kernel comes from.
    pub kernel: KernelSpec,
    /// Default kernel command line, written to `out/cmdline`.
    pub cmdline: String,
    /// How the cpio archive is compressed.
    pub compression: Compression,
    /// Kernel modules to include (their dependencies are added automatically).
    pub modules: Vec<String>,
    /// gridos binaries (static), looked up by name in the binary directory.
    pub binaries: Vec<Binary>,
    /// Host programs copied with their shared-library closure (e.g. `mkfs.btrfs`).
    pub helpers: Vec<Helper>,
    /// Directories copied verbatim into the image root (resolved against the profile file
    /// that names them).
    pub files: Vec<PathBuf>,
    /// Empty directories every image has (mount points and the like).
    pub dirs: Vec<String>,
}

/// A profile file as written. `extends: OTHER.yaml` starts from another profile: its kernel,
/// command line and compression unless this file sets them, and its lists followed by this
/// file's (a benchmark image is the real image plus a few programs, without a second copy
/// of the real profile to keep in step).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    extends: Option<PathBuf>,
    #[serde(default)]
    kernel: Option<KernelSpec>,
    #[serde(default)]
    cmdline: Option<String>,
    #[serde(default)]
    compression: Option<Compression>,
    #[serde(default)]
    modules: Vec<String>,
    #[serde(default)]
    binaries: Vec<Binary>,
    #[serde(default)]
    helpers: Vec<Helper>,
    #[serde(default)]
    files: Vec<PathBuf>,
    #[serde(default)]
    dirs: Vec<String>,
}

/// How many `extends` may be chained: a cycle stops here with an error.
const MAX_EXTENDS: usize = 8;

/// The kernel: a Debian package (resolved through apt) or an extracted tree on disk.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelSpec {
    /// A Debian package; a metapackage such as `linux-image-amd64` is resolved to the concrete one.
    #[serde(default)]
    pub package: Option<String>,
    /// A directory holding `boot/vmlinuz-VERSION` and `lib/modules/VERSION` (wins over `package`).
    #[serde(default)]
    pub path: Option<PathBuf>,
}

/// Compression of the initramfs; the kernel unpacks both.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// gzip, level 9, no timestamp in the header.
    #[default]
    Gzip,
    /// Plain cpio (debugging).
    None,
}

/// One gridos binary.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Binary {
    /// File name in the binary directory (the cargo output folder).
    pub name: String,
    /// Absolute destination in the image, e.g. `/init`.
    pub dest: String,
    /// Missing and required: the build fails. Missing and not required: an error line, and the build goes on.
    #[serde(default)]
    pub required: bool,
    /// More absolute paths made symlinks to `dest`: a multi-call binary answers to each name.
    #[serde(default)]
    pub links: Vec<String>,
}

/// One host helper program.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Helper {
    /// Absolute path on the build host; also the destination unless `dest` is set.
    pub path: String,
    /// Destination in the image.
    #[serde(default)]
    pub dest: Option<String>,
    /// As for [`Binary::required`].
    #[serde(default)]
    pub required: bool,
}

impl Profile {
    /// Reads and checks a profile file (and the profiles it extends).
    pub fn load(path: &Path) -> Result<Self, ProfileError> {
        let p = Self::load_raw(path, 0)?;
        let invalid = |reason: String| ProfileError::Invalid {
            path: path.into(),
            reason,
        };
        if p.kernel.package.is_none() && p.kernel.path.is_none() {
            return Err(invalid("kernel: set `package` or `path`".into()));
        }
        for d in p
            .binaries
            .iter()
            .map(|b| &b.dest)
            .chain(p.helpers.iter().filter_map(|h| h.dest.as_ref()))
        {
            if !d.starts_with('/') || d.split('/').any(|c| c == "..") {
                return Err(invalid(format!(
                    "destination {d:?} must be absolute, without `..`"
                )));
            }
        }
        if p.cmdline.contains('\n') {
            return Err(invalid("cmdline must be one line".into()));
        }
        Ok(p)
    }

    fn load_raw(path: &Path, depth: usize) -> Result<Self, ProfileError> {
        let invalid = |reason: String| ProfileError::Invalid {
            path: path.into(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Read {
            path: path.into(),
            source,
        })?;
        let raw: Raw = serde_norway::from_str(&text).map_err(|source| ProfileError::Parse {
            path: path.into(),
            source,
        })?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let kernel = raw.kernel.map(|mut k| {
            k.path = k.path.map(|p| dir.join(p));
            k
        });
        let files = raw.files.iter().map(|f| dir.join(f));
        let Some(base) = raw.extends else {
            let (Some(kernel), Some(cmdline)) = (kernel, raw.cmdline) else {
                return Err(invalid(
                    "`kernel` and `cmdline` are required (or `extends` a profile that has them)"
                        .into(),
                ));
            };
            return Ok(Profile {
                kernel,
                cmdline,
                compression: raw.compression.unwrap_or_default(),
                modules: raw.modules,
                binaries: raw.binaries,
                helpers: raw.helpers,
                files: files.collect(),
                dirs: raw.dirs,
            });
        };
        if depth >= MAX_EXTENDS {
            return Err(invalid(format!(
                "`extends` goes more than {MAX_EXTENDS} profiles deep (a cycle?)"
            )));
        }
        let mut p = Self::load_raw(&dir.join(base), depth + 1)?;
        p.kernel = kernel.unwrap_or(p.kernel);
        p.cmdline = raw.cmdline.unwrap_or(p.cmdline);
        p.compression = raw.compression.unwrap_or(p.compression);
        p.modules.extend(raw.modules);
        p.binaries.extend(raw.binaries);
        p.helpers.extend(raw.helpers);
        p.files.extend(files);
        p.dirs.extend(raw.dirs);
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_repository_profile_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../image/profile.yaml");
        let p = Profile::load(&path).unwrap();
        assert!(p.modules.iter().any(|m| m == "virtio_net"));
        assert!(p.binaries.iter().any(|b| b.dest == "/init" && b.required));
        assert_eq!(p.compression, Compression::Gzip);
    }

    #[test]
    fn unknown_fields_and_relative_dests_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.yaml");
        std::fs::write(
            &f,
            "kernel: {package: x}\ncmdline: q\nmodules: []\nbogus: 1\n",
        )
        .unwrap();
        assert!(matches!(Profile::load(&f), Err(ProfileError::Parse { .. })));
        std::fs::write(
            &f,
            "kernel: {package: x}\ncmdline: q\nmodules: []\nbinaries: [{name: a, dest: bin/a}]\n",
        )
        .unwrap();
        assert!(matches!(
            Profile::load(&f),
            Err(ProfileError::Invalid { .. })
        ));
        std::fs::write(&f, "kernel: {}\ncmdline: q\nmodules: []\n").unwrap();
        assert!(matches!(
            Profile::load(&f),
            Err(ProfileError::Invalid { .. })
        ));
        std::fs::write(&f, "cmdline: q\nmodules: []\n").unwrap();
        assert!(matches!(
            Profile::load(&f),
            Err(ProfileError::Invalid { .. })
        ));
    }

    #[test]
    fn extends_adds_to_the_base_and_overrides_what_it_sets() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let base = dir.path().join("base.yaml");
        std::fs::write(
            &base,
            "kernel: {path: k}\ncmdline: q\nmodules: [a]\nfiles: [f]\n\
             binaries: [{name: init, dest: /init}]\n",
        )
        .unwrap();
        let top = dir.path().join("sub/top.yaml");
        std::fs::write(
            &top,
            "extends: ../base.yaml\ncmdline: r\nmodules: [b]\nfiles: [g]\n\
             helpers: [{path: /usr/bin/crun}]\n",
        )
        .unwrap();
        let p = Profile::load(&top).unwrap();
        assert_eq!(p.cmdline, "r");
        assert_eq!(p.modules, ["a", "b"]);
        assert_eq!(p.kernel.path, Some(dir.path().join("sub/../k")));
        assert_eq!(
            p.files,
            [dir.path().join("sub/../f"), dir.path().join("sub/g")]
        );
        assert_eq!(p.binaries.len(), 1);
        assert_eq!(p.helpers[0].path, "/usr/bin/crun");
        // A profile extending itself stops with an error.
        std::fs::write(&base, "extends: base.yaml\n").unwrap();
        let e = Profile::load(&base).unwrap_err();
        assert!(e.to_string().contains("deep"), "{e}");
    }
}
