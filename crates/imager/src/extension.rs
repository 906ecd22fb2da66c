//! System extensions: programs too big for the initramfs (the VM runtime: QEMU, its plugins,
//! firmware and every shared library they load), packed as a reproducible squashfs and
//! signed with the release key. The node downloads one on first need, verifies it against
//! the release key baked into its image and mounts it read-only (crates/extension).
//!
//! A profile (`image/extensions/*.yaml`) names the programs, the plugins QEMU loads with
//! `dlopen` (not in any `DT_NEEDED`), and data folders. Files keep their host paths inside
//! the image; the node runs the programs through the image's own dynamic loader, so nothing
//! in the image depends on the libraries of the base image.

use std::path::{Path, PathBuf};
use std::process::Command;

use ed25519_dalek::SigningKey;
use gridtypes::extension::{Manifest, SignedManifest};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::elf;

/// Why an extension could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ExtensionBuildError {
    /// The profile could not be read or is wrong.
    #[error("extension profile {path}: {reason}")]
    Profile {
        /// The profile.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A file could not be read or written.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A library closure could not be resolved.
    #[error(transparent)]
    Elf(#[from] elf::ElfError),
    /// `mksquashfs` or `dpkg-query` failed.
    #[error("{cmd}: {reason}")]
    Tool {
        /// The command.
        cmd: String,
        /// Its error.
        reason: String,
    },
    /// The release key file is not a key.
    #[error("release key {0}: not 64 hex digits")]
    Key(PathBuf),
    /// The manifest could not be signed.
    #[error(transparent)]
    Sign(#[from] gridtypes::extension::ExtensionError),
}

/// An extension profile as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtensionProfile {
    /// The extension's name (also its mount point on the node).
    pub name: String,
    /// The Debian package whose version names the extension's version.
    #[serde(default)]
    pub version_package: Option<String>,
    /// Programs, with their shared-library closure.
    pub programs: Vec<String>,
    /// Plugins loaded with `dlopen`, with their closure.
    #[serde(default)]
    pub plugins: Vec<String>,
    /// Files and folders copied as they are (symlinks followed).
    #[serde(default)]
    pub data: Vec<String>,
}

/// What was built.
#[derive(Debug, Clone, Serialize)]
pub struct ExtensionReport {
    /// The squashfs image.
    pub image: PathBuf,
    /// The signed manifest beside it.
    pub manifest_path: PathBuf,
    /// The manifest.
    pub manifest: Manifest,
    /// Files in the image.
    pub files: usize,
    /// Their total size before compression.
    pub unpacked_bytes: u64,
    /// The release key's public half, hex.
    pub signer: String,
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ExtensionBuildError {
    let path = path.to_path_buf();
    move |source| ExtensionBuildError::Io { what, path, source }
}

fn run(cmd: &mut Command) -> Result<String, ExtensionBuildError> {
    crate::tool::output(cmd).map_err(|f| ExtensionBuildError::Tool {
        cmd: f.cmd,
        reason: f.reason,
    })
}

/// Reads a profile.
pub fn load_profile(path: &Path) -> Result<ExtensionProfile, ExtensionBuildError> {
    let bad = |reason: String| ExtensionBuildError::Profile {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let p: ExtensionProfile = serde_norway::from_str(&text).map_err(|e| bad(e.to_string()))?;
    if !gridtypes::extension::name_ok(&p.name) {
        return Err(bad(format!("name {:?}: [a-z0-9-], 1 to 32", p.name)));
    }
    if p.programs.is_empty() {
        return Err(bad("no programs".into()));
    }
    for f in p.programs.iter().chain(&p.plugins).chain(&p.data) {
        if !f.starts_with('/') || f.contains("/../") || f.ends_with("/..") {
            return Err(bad(format!("{f:?}: an absolute path without `..`")));
        }
    }
    Ok(p)
}

/// Reads the release key (the `grid key` file form: 64 hex digits).
pub fn read_key(path: &Path) -> Result<SigningKey, ExtensionBuildError> {
    let text = std::fs::read_to_string(path).map_err(io("reading", path))?;
    gridtypes::keyfile::from_text(&text).ok_or_else(|| ExtensionBuildError::Key(path.into()))
}

/// Creates a release key at `path` unless one is there; returns it.
pub fn ensure_key(path: &Path) -> Result<SigningKey, ExtensionBuildError> {
    if path.exists() {
        return read_key(path);
    }
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    }
    atomicfile::write(path, gridtypes::keyfile::to_text(&key).as_bytes(), 0o600)
        .map_err(io("writing", path))?;
    Ok(key)
}

struct Stage {
    root: PathBuf,
    files: usize,
    bytes: u64,
}

impl Stage {
    /// Copies `src` to `dest` (an absolute image path), following symlinks.
    fn copy(&mut self, src: &Path, dest: &str) -> Result<(), ExtensionBuildError> {
        let to = self.root.join(dest.trim_start_matches('/'));
        if to.exists() {
            return Ok(());
        }
        if let Some(dir) = to.parent() {
            std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
        }
        self.bytes += std::fs::copy(src, &to).map_err(io("copying", src))?;
        self.files += 1;
        Ok(())
    }

    fn with_closure(&mut self, path: &str) -> Result<(), ExtensionBuildError> {
        let src = PathBuf::from(path);
        self.copy(&src, path)?;
        for lib in elf::closure(&src, Path::new("/"), elf::DEFAULT_LIB_DIRS)? {
            self.copy(&lib.source, &lib.dest)?;
        }
        Ok(())
    }

    fn tree(&mut self, path: &str) -> Result<(), ExtensionBuildError> {
        let src = PathBuf::from(path);
        let meta = std::fs::metadata(&src).map_err(io("reading", &src))?;
        if !meta.is_dir() {
            return self.copy(&src, path);
        }
        let mut entries: Vec<_> = std::fs::read_dir(&src)
            .map_err(io("reading", &src))?
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .collect();
        entries.sort();
        for name in entries {
            let child = format!("{}/{}", path.trim_end_matches('/'), name.to_string_lossy());
            // A dangling link (a firmware another package would bring) is left out.
            if std::fs::metadata(&child).is_ok() {
                self.tree(&child)?;
            }
        }
        Ok(())
    }
}

/// Builds the extension `profile` describes into `out/NAME.sqfs` and `out/NAME.json`,
/// signed with `key`. Every file gets `epoch` as its time, so a build is reproducible. A
/// failed build leaves neither its staging folder nor a partial image behind.
pub fn build_extension(
    profile: &ExtensionProfile,
    out: &Path,
    key: &SigningKey,
    epoch: u32,
) -> Result<ExtensionReport, ExtensionBuildError> {
    let built = build_in(profile, out, key, epoch);
    if built.is_err() {
        let _ = std::fs::remove_dir_all(out.join(format!(".{}.stage", profile.name)));
        let _ = std::fs::remove_file(out.join(format!(".{}.sqfs.tmp", profile.name)));
    }
    built
}

fn build_in(
    profile: &ExtensionProfile,
    out: &Path,
    key: &SigningKey,
    epoch: u32,
) -> Result<ExtensionReport, ExtensionBuildError> {
    std::fs::create_dir_all(out).map_err(io("creating", out))?;
    let root = out.join(format!(".{}.stage", profile.name));
    if root.exists() {
        std::fs::remove_dir_all(&root).map_err(io("removing", &root))?;
    }
    let mut stage = Stage {
        root: root.clone(),
        files: 0,
        bytes: 0,
    };
    for p in &profile.programs {
        stage.with_closure(p)?;
    }
    for p in &profile.plugins {
        stage.with_closure(p)?;
    }
    for d in &profile.data {
        stage.tree(d)?;
    }
    let tmp = out.join(format!(".{}.sqfs.tmp", profile.name));
    let _ = std::fs::remove_file(&tmp);
    let epoch_s = epoch.to_string();
    run(Command::new("mksquashfs")
        // mksquashfs refuses its own time options when this is set; they say the same.
        .env_remove("SOURCE_DATE_EPOCH")
        .arg(&root)
        .arg(&tmp)
        .args(["-noappend", "-comp", "zstd", "-all-root", "-no-xattrs"])
        .args(["-mkfs-time", &epoch_s, "-all-time", &epoch_s])
        .args(["-quiet", "-no-progress"]))?;
    let bytes = std::fs::read(&tmp).map_err(io("reading", &tmp))?;
    let version = match &profile.version_package {
        Some(pkg) => {
            let v = run(Command::new("dpkg-query").args(["-W", "-f", "${Version}", pkg]))?;
            format!("{pkg} {}", v.trim())
        }
        None => String::new(),
    };
    let manifest = Manifest {
        name: profile.name.clone(),
        version,
        sha256: hex::encode(Sha256::digest(&bytes)),
        size: bytes.len() as u64,
        created: i64::from(epoch),
    };
    let signed = SignedManifest::sign(key, &manifest)?;
    let image = out.join(format!("{}.sqfs", profile.name));
    let manifest_path = out.join(format!("{}.json", profile.name));
    // The image first: a manifest never names an image that is not there yet.
    std::fs::rename(&tmp, &image).map_err(io("renaming", &tmp))?;
    atomicfile::write(&manifest_path, &signed.to_json(), 0o644)
        .map_err(io("writing", &manifest_path))?;
    std::fs::remove_dir_all(&root).map_err(io("removing", &root))?;
    Ok(ExtensionReport {
        image,
        manifest_path,
        manifest,
        files: stage.files,
        unpacked_bytes: stage.bytes,
        signer: signed.signer,
    })
}
