//! One image build: kernel → modules → binaries → helpers → files → compressed cpio in `out/`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::cpio::{self, Kind};
use crate::elf::{self, ElfError};
use crate::kernel::{self, Kernel, KernelError};
use crate::modules::{ModuleTree, ModulesError};
use crate::profile::{Compression, Profile, ProfileError};
use crate::progress::Progress;
use crate::tree::{Tree, TreeError};

/// Inputs of a build besides the profile.
#[derive(Debug, Clone)]
pub struct Options {
    /// The profile file (`image/profile.yaml`).
    pub profile: PathBuf,
    /// Where `vmlinuz`, `initramfs.img`, `cmdline` and `build.json` are written.
    pub out: PathBuf,
    /// Where the gridos binaries are (`target/x86_64-unknown-linux-gnu/initramfs`).
    pub bin_dir: PathBuf,
    /// Download and extraction cache for kernel packages.
    pub cache: PathBuf,
    /// An extracted kernel tree that overrides the profile (`GRIDOS_KERNEL_ROOT`).
    pub kernel_root: Option<PathBuf>,
    /// mtime of every archive entry (`SOURCE_DATE_EPOCH`).
    pub source_date_epoch: u32,
    /// More directories copied verbatim into the image after the profile's (tests add services).
    pub overlays: Vec<PathBuf>,
    /// Kernel command-line words appended to the profile's (e.g. `gridos.farm=7`).
    pub cmdline_append: Vec<String>,
    /// Fail when any listed binary or helper is missing, required or not.
    pub strict: bool,
    /// No progress bar, even on a terminal.
    pub quiet: bool,
}

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The profile is wrong.
    #[error(transparent)]
    Profile(#[from] ProfileError),
    /// The kernel could not be had.
    #[error(transparent)]
    Kernel(#[from] KernelError),
    /// Module selection failed.
    #[error(transparent)]
    Modules(#[from] ModulesError),
    /// A helper's library closure failed.
    #[error(transparent)]
    Elf(#[from] ElfError),
    /// The in-memory tree refused an entry.
    #[error(transparent)]
    Tree(#[from] TreeError),
    /// A required binary or helper is missing.
    #[error("{what} {name} not found at {path}{}", hosttools::package_of(name).map(|p| format!(" (it comes with the Debian package {p})")).unwrap_or_default())]
    Missing {
        /// "gridos binary" or "helper".
        what: &'static str,
        /// Its name.
        name: String,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// Writing an output failed.
    #[error("writing {path}")]
    Write {
        /// The output.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// What a build produced, written to `out/build.json` (no timestamps: it is reproducible too).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The kernel used.
    pub kernel: Kernel,
    /// Modules in the image (paths under `lib/modules/RELEASE`).
    pub modules: Vec<String>,
    /// gridos binaries included, as (destination, bytes).
    pub binaries: Vec<(String, u64)>,
    /// Listed binaries and helpers that were missing and skipped.
    pub skipped: Vec<String>,
    /// Helper files included (programs and their libraries).
    pub helper_files: Vec<String>,
    /// Default kernel command line.
    pub cmdline: String,
    /// Archive compression.
    pub compression: Compression,
    /// mtime of every entry.
    pub source_date_epoch: u32,
    /// Entries in the archive.
    pub entries: usize,
    /// Bytes of the kernel image.
    pub kernel_bytes: u64,
    /// Bytes of the compressed initramfs.
    pub initramfs_bytes: u64,
    /// Total bytes of the gridos binaries.
    pub gridos_binaries_bytes: u64,
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<(), BuildError> {
    let err = |source| BuildError::Write {
        path: path.into(),
        source,
    };
    atomicfile::write(path, data, 0o644).map_err(err)
}

/// Adds libraries not yet in the tree. A file already placed under another name (the
/// interpreter is both `/lib64/ld-linux-x86-64.so.2` and a `DT_NEEDED` of libc) becomes a
/// symlink to the first copy instead of a second copy.
fn add_libs(
    tree: &mut Tree,
    libs: &[elf::Placed],
    placed: &mut BTreeMap<PathBuf, String>,
    listed: &mut Vec<String>,
) -> Result<(), BuildError> {
    for p in libs {
        if tree.contains(&p.dest) {
            continue;
        }
        let canonical = std::fs::canonicalize(&p.source).unwrap_or_else(|_| p.source.clone());
        match placed.get(&canonical) {
            Some(first) => tree.insert(&p.dest, 0o777, Kind::Symlink(first.clone()))?,
            None => {
                tree.add_file(&p.dest, &p.source, 0o755)?;
                placed.insert(canonical, p.dest.clone());
            }
        }
        listed.push(p.dest.clone());
    }
    Ok(())
}

/// Builds the image described by `opts`.
pub fn build(opts: &Options) -> Result<Report, BuildError> {
    let profile = Profile::load(&opts.profile)?;
    let progress = Progress::new(8, opts.quiet);
    let result = build_with(opts, &profile, &progress);
    progress.finish();
    result
}

fn build_with(
    opts: &Options,
    profile: &Profile,
    progress: &Progress,
) -> Result<Report, BuildError> {
    // 1. Kernel.
    let kernel = match opts.kernel_root.as_ref().or(profile.kernel.path.as_ref()) {
        Some(root) => {
            progress.step(&format!("kernel from {}", root.display()));
            kernel::local(root)?
        }
        None => {
            let package = profile
                .kernel
                .package
                .as_deref()
                .unwrap_or("linux-image-amd64");
            progress.step(&format!("kernel: resolving and fetching {package}"));
            kernel::fetch_debian(package, &opts.cache)?
        }
    };
    progress.line(&format!(
        "kernel {} (package {} {})",
        kernel.release,
        kernel.package.as_deref().unwrap_or("local tree"),
        kernel.package_version.as_deref().unwrap_or("")
    ));

    let mut tree = Tree::new();
    for d in &profile.dirs {
        tree.insert(d, 0o755, Kind::Dir)?;
    }
    tree.insert("dev/console", 0o600, Kind::CharDev(5, 1))?;

    // 2. Modules and their index.
    progress.step(&format!("modules: {} wanted", profile.modules.len()));
    let mdir = kernel.modules_dir();
    let selection = ModuleTree::scan(&mdir)?.select(&profile.modules)?;
    let kbase = format!("lib/modules/{}", kernel.release);
    for p in selection.paths() {
        tree.add_file(&format!("{kbase}/{p}"), &mdir.join(p), 0o644)?;
    }
    let index = selection.index();
    let selected: std::collections::BTreeSet<&str> = selection.paths().into_iter().collect();
    let order: String = std::fs::read_to_string(mdir.join("modules.order"))
        .unwrap_or_default()
        .lines()
        .filter(|l| selected.contains(l))
        .map(|l| format!("{l}\n"))
        .collect();
    let builtin = std::fs::read(mdir.join("modules.builtin")).unwrap_or_default();
    for (name, data) in [
        ("modules.dep", index.dep.into_bytes()),
        ("modules.alias", index.alias.into_bytes()),
        ("modules.softdep", index.softdep.into_bytes()),
        ("modules.order", order.into_bytes()),
        ("modules.builtin", builtin),
    ] {
        tree.insert(&format!("{kbase}/{name}"), 0o644, Kind::File(data))?;
    }
    progress.line(&format!(
        "{} modules with dependencies",
        selection.modules.len()
    ));

    let mut skipped = Vec::new();
    let mut skip =
        |what: &'static str, name: &str, path: &Path, required: bool| -> Result<(), BuildError> {
            if required || opts.strict {
                return Err(BuildError::Missing {
                    what,
                    name: name.into(),
                    path: path.into(),
                });
            }
            let advice = match hosttools::package_of(name) {
                Some(pkg) if what == "helper" => format!("install the Debian package {pkg}"),
                _ => "build it first".to_string(),
            };
            progress.line(&format!(
                "error: {what} {name} not found at {}; skipped ({advice})",
                path.display()
            ));
            skipped.push(name.to_string());
            Ok(())
        };

    // 3. gridos binaries.
    progress.step("gridos binaries");
    let mut binaries = Vec::new();
    let mut helper_files = Vec::new();
    let mut placed = BTreeMap::new();
    for b in &profile.binaries {
        let src = opts.bin_dir.join(&b.name);
        if !src.is_file() {
            skip("gridos binary", &b.name, &src, b.required)?;
            continue;
        }
        let n = tree.add_file(&b.dest, &src, 0o755)?;
        binaries.push((b.dest.clone(), n));
        for link in &b.links {
            tree.insert(link, 0o777, Kind::Symlink(b.dest.clone()))?;
        }
        // gridos binaries are meant to be static; if one is not, carry its libraries along.
        if elf::dyn_info(&src).is_ok_and(|i| i.interpreter.is_some()) {
            progress.line(&format!(
                "warning: {} is dynamically linked; adding its libraries",
                b.name
            ));
            let libs = elf::closure(&src, Path::new("/"), elf::DEFAULT_LIB_DIRS)?;
            add_libs(&mut tree, &libs, &mut placed, &mut helper_files)?;
        }
    }

    // 4. Helpers with their shared-library closure.
    progress.step("helper programs and their libraries");
    for h in &profile.helpers {
        let src = PathBuf::from(&h.path);
        if !src.is_file() {
            skip("helper", &h.path, &src, h.required)?;
            continue;
        }
        let dest = h.dest.clone().unwrap_or_else(|| h.path.clone());
        tree.add_file(&dest, &src, 0o755)?;
        helper_files.push(dest);
        let libs = elf::closure(&src, Path::new("/"), elf::DEFAULT_LIB_DIRS)?;
        add_libs(&mut tree, &libs, &mut placed, &mut helper_files)?;
    }
    helper_files.sort();
    helper_files.dedup();

    // 5. Files copied verbatim.
    progress.step("initramfs files");
    for dir in profile.files.iter().chain(&opts.overlays) {
        let n = tree.add_dir("", dir)?;
        progress.line(&format!("{n} files from {}", dir.display()));
    }

    // 6. Archive.
    progress.step(&format!(
        "writing cpio ({} entries, {:?})",
        tree.len(),
        profile.compression
    ));
    std::fs::create_dir_all(&opts.out).map_err(|source| BuildError::Write {
        path: opts.out.clone(),
        source,
    })?;
    let wr = |source| BuildError::Write {
        path: opts.out.join("initramfs.img"),
        source,
    };
    let mut raw = cpio::Writer::new(Vec::new(), opts.source_date_epoch);
    for e in tree.entries() {
        raw.append(&e).map_err(wr)?;
    }
    let raw = raw.finish().map_err(wr)?;
    let packed = match profile.compression {
        Compression::None => raw,
        Compression::Gzip => {
            // No name and mtime 0 in the gzip header: the bytes depend on the content only.
            let mut gz = flate2::GzBuilder::new()
                .mtime(0)
                .operating_system(3)
                .write(Vec::new(), flate2::Compression::best());
            gz.write_all(&raw).map_err(wr)?;
            gz.finish().map_err(wr)?
        }
    };
    write_atomic(&opts.out.join("initramfs.img"), &packed)?;

    // 7. Kernel and command line.
    let cmdline = std::iter::once(profile.cmdline.trim())
        .chain(opts.cmdline_append.iter().map(|s| s.trim()))
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    progress.step("kernel and command line");
    let vmlinuz = std::fs::read(&kernel.vmlinuz).map_err(|source| BuildError::Write {
        path: kernel.vmlinuz.clone(),
        source,
    })?;
    write_atomic(&opts.out.join("vmlinuz"), &vmlinuz)?;
    write_atomic(&opts.out.join("cmdline"), format!("{cmdline}\n").as_bytes())?;

    let report = Report {
        modules: selection.paths().iter().map(|s| s.to_string()).collect(),
        gridos_binaries_bytes: binaries.iter().map(|(_, n)| n).sum(),
        binaries,
        skipped,
        helper_files,
        cmdline,
        compression: profile.compression,
        source_date_epoch: opts.source_date_epoch,
        entries: tree.len(),
        kernel_bytes: vmlinuz.len() as u64,
        initramfs_bytes: packed.len() as u64,
        kernel,
    };
    progress.step("build report");
    let json = serde_json::to_vec_pretty(&report).unwrap_or_default();
    write_atomic(&opts.out.join("build.json"), &json)?;
    Ok(report)
}
