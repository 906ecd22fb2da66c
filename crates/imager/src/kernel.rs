//! The kernel: Debian's packaged kernel taken with `apt-get download` and
//! `dpkg-deb -x` (never installed on the host), or an extracted tree on disk.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Why the kernel could not be found or fetched.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// A tool (apt-cache, apt-get, dpkg-deb) failed or is missing.
    #[error("{cmd}: {reason}")]
    Tool {
        /// The command line.
        cmd: String,
        /// Its error output or the spawn error.
        reason: String,
    },
    /// The metapackage did not resolve to a concrete kernel package.
    #[error("cannot resolve {0} to a linux-image-VERSION package (run apt-get update?)")]
    Unresolved(String),
    /// The tree lacks `boot/vmlinuz-V` or `lib/modules/V`.
    #[error("{root}: {reason}")]
    Layout {
        /// The kernel tree.
        root: PathBuf,
        /// What is missing.
        reason: String,
    },
    /// Creating or moving a cache folder failed.
    #[error("creating {path}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// A kernel ready to use.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Kernel {
    /// The tree holding `boot/` and `lib/modules/`.
    pub root: PathBuf,
    /// `uname -r`, e.g. `6.1.0-56-amd64`.
    pub release: String,
    /// The kernel image.
    pub vmlinuz: PathBuf,
    /// The Debian package used (`None` for a local tree).
    pub package: Option<String>,
    /// That package's version.
    pub package_version: Option<String>,
}

impl Kernel {
    /// `lib/modules/RELEASE`.
    pub fn modules_dir(&self) -> PathBuf {
        self.root.join("lib/modules").join(&self.release)
    }
}

fn run(cmd: &mut Command) -> Result<String, KernelError> {
    crate::tool::output(cmd).map_err(|f| KernelError::Tool {
        cmd: f.cmd,
        reason: f.reason,
    })
}

/// The concrete package a kernel metapackage depends on, from `apt-cache depends` output.
pub fn parse_depends(apt_cache_depends: &str) -> Option<String> {
    apt_cache_depends.lines().find_map(|l| {
        let dep = l.trim().strip_prefix("Depends:")?.trim();
        let rest = dep.strip_prefix("linux-image-")?;
        rest.starts_with(|c: char| c.is_ascii_digit())
            .then(|| dep.to_string())
    })
}

/// Resolves `package` (a metapackage or a concrete `linux-image-*` package) to the concrete name.
pub fn resolve_package(package: &str) -> Result<String, KernelError> {
    if package
        .strip_prefix("linux-image-")
        .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
    {
        return Ok(package.to_string());
    }
    let query = || {
        run(Command::new("apt-cache").args(["depends", package]))
            .ok()
            .and_then(|o| parse_depends(&o))
    };
    if let Some(p) = query() {
        return Ok(p);
    }
    // A fresh machine may have no package lists yet.
    let _ = run(Command::new("apt-get").args(["update", "-q"]));
    query().ok_or_else(|| KernelError::Unresolved(package.into()))
}

/// Downloads and extracts `package` into `cache/PACKAGE_VERSION` unless it is already there.
pub fn fetch_debian(package: &str, cache: &Path) -> Result<Kernel, KernelError> {
    let concrete = resolve_package(package)?;
    let show = run(Command::new("apt-cache").args(["show", "--no-all-versions", &concrete]))?;
    let version = show
        .lines()
        .find_map(|l| l.strip_prefix("Version:").map(|v| v.trim().to_string()))
        .ok_or_else(|| KernelError::Unresolved(concrete.clone()))?;
    let dir = cache.join(format!("{concrete}_{version}"));
    if !dir.join("boot").is_dir() {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| KernelError::Io { path, source }
        };
        let debs = cache.join("debs");
        std::fs::create_dir_all(&debs).map_err(io(&debs))?;
        run(Command::new("apt-get")
            .arg("download")
            .arg(format!("{concrete}={version}"))
            .current_dir(&debs))?;
        let deb = std::fs::read_dir(&debs)
            .map_err(io(&debs))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{concrete}_")) && n.ends_with(".deb"))
            })
            .ok_or_else(|| KernelError::Unresolved(concrete.clone()))?;
        let tmp = cache.join(format!(".{concrete}.tmp"));
        let _ = std::fs::remove_dir_all(&tmp);
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tmp))?;
        std::fs::rename(&tmp, &dir).map_err(io(&dir))?;
    }
    let mut k = local(&dir)?;
    k.package = Some(concrete);
    k.package_version = Some(version);
    Ok(k)
}

/// A kernel tree on disk: exactly one `lib/modules/RELEASE` with a matching `boot/vmlinuz-RELEASE`.
pub fn local(root: &Path) -> Result<Kernel, KernelError> {
    let layout = |reason: String| KernelError::Layout {
        root: root.into(),
        reason,
    };
    let mods = root.join("lib/modules");
    let mut releases: Vec<String> = std::fs::read_dir(&mods)
        .map_err(|e| layout(format!("no lib/modules: {e}")))?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|r| root.join("boot").join(format!("vmlinuz-{r}")).is_file())
        .collect();
    releases.sort();
    match releases.as_slice() {
        [one] => Ok(Kernel {
            root: root.into(),
            release: one.clone(),
            vmlinuz: root.join("boot").join(format!("vmlinuz-{one}")),
            package: None,
            package_version: None,
        }),
        [] => Err(layout(
            "no lib/modules/RELEASE with a boot/vmlinuz-RELEASE".into(),
        )),
        many => Err(layout(format!(
            "several kernels {many:?}; point at a tree with one"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metapackage_dependency_is_parsed() {
        let out =
            "linux-image-amd64\n  Depends: linux-image-6.1.0-56-amd64\n  Recommends: firmware\n";
        assert_eq!(
            parse_depends(out).as_deref(),
            Some("linux-image-6.1.0-56-amd64")
        );
        assert_eq!(parse_depends("x\n  Depends: linux-image-cloud\n"), None);
    }

    #[test]
    fn local_tree_layout() {
        let d = tempfile::tempdir().unwrap();
        assert!(local(d.path()).is_err());
        std::fs::create_dir_all(d.path().join("lib/modules/6.1.0-9-amd64")).unwrap();
        std::fs::create_dir_all(d.path().join("boot")).unwrap();
        assert!(local(d.path()).is_err());
        std::fs::write(d.path().join("boot/vmlinuz-6.1.0-9-amd64"), b"k").unwrap();
        let k = local(d.path()).unwrap();
        assert_eq!(k.release, "6.1.0-9-amd64");
        assert!(k.modules_dir().ends_with("lib/modules/6.1.0-9-amd64"));
    }
}
