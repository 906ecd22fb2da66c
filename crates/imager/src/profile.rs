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
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Where the kernel comes from.
    pub kernel: KernelSpec,
    /// Default kernel command line, written to `out/cmdline`.
    pub cmdline: String,
    /// How the cpio archive is compressed.
    #[serde(default)]
    pub compression: Compression,
    /// Kernel modules to include (their dependencies are added automatically).
    pub modules: Vec<String>,
    /// gridos binaries (static), looked up by name in the binary directory.
    #[serde(default)]
    pub binaries: Vec<Binary>,
    /// Host programs copied with their shared-library closure (e.g. `mkfs.btrfs`).
    #[serde(default)]
    pub helpers: Vec<Helper>,
    /// Directories copied verbatim into the image root, relative to the profile file.
    #[serde(default)]
    pub files: Vec<PathBuf>,
    /// Empty directories every image has (mount points and the like).
    #[serde(default)]
    pub dirs: Vec<String>,
}

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
    /// Loads and checks a profile; relative `files` and `kernel.path` are resolved against its folder.
    pub fn load(path: &Path) -> Result<Self, ProfileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Read {
            path: path.into(),
            source,
        })?;
        let mut p: Profile =
            serde_norway::from_str(&text).map_err(|source| ProfileError::Parse {
                path: path.into(),
                source,
            })?;
        let base = path.parent().unwrap_or(Path::new("."));
        p.files = p.files.iter().map(|f| base.join(f)).collect();
        p.kernel.path = p.kernel.path.as_ref().map(|k| base.join(k));
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
    }
}
