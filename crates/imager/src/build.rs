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
    /// Where the gridos binaries are (`target/image-bin`, gathered by `make init`).
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
    /// The release key's public half (64 hex digits), written to `etc/gridos/release.pub`:
    /// the only key the node accepts system extensions (the VM runtime) signed with.
    pub release_pub: Option<String>,
}

/// Where the image keeps the release key's public half (crates/provision reads it).
pub const RELEASE_PUB_PATH: &str = "etc/gridos/release.pub";

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The release key given is not an ed25519 public key.
    #[error("release key {0:?}: not 64 hex digits of an ed25519 public key")]
    ReleaseKey(String),
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

/// The state of one build as its steps fill it in.
struct Build<'a> {
    opts: &'a Options,
    profile: &'a Profile,
    progress: &'a Progress,
    kernel: Option<Kernel>,
    tree: Tree,
    modules: Vec<String>,
    binaries: Vec<(String, u64)>,
    skipped: Vec<String>,
    helper_files: Vec<String>,
    /// Libraries already in the tree, by canonical source path.
    placed: BTreeMap<PathBuf, String>,
    cmdline: String,
    kernel_bytes: u64,
    initramfs_bytes: u64,
}

/// One step of a build; it announces itself on the progress bar.
type Step = fn(&mut Build<'_>) -> Result<(), BuildError>;

/// The steps in order. The progress bar counts this list, so it cannot drift from it.
const STEPS: [Step; 8] = [
    kernel_step,
    modules_step,
    binaries_step,
    helpers_step,
    files_step,
    archive_step,
    boot_files_step,
    report_step,
];

/// Builds the image described by `opts`.
pub fn build(opts: &Options) -> Result<Report, BuildError> {
    let profile = Profile::load(&opts.profile)?;
    let progress = Progress::new(STEPS.len() as u64, opts.quiet);
    let mut b = Build {
        opts,
        profile: &profile,
        progress: &progress,
        kernel: None,
        tree: Tree::new(),
        modules: Vec::new(),
        binaries: Vec::new(),
        skipped: Vec::new(),
        helper_files: Vec::new(),
        placed: BTreeMap::new(),
        cmdline: String::new(),
        kernel_bytes: 0,
        initramfs_bytes: 0,
    };
    let result = STEPS.iter().try_for_each(|step| step(&mut b));
    progress.finish();
    result?;
    b.report()
}

impl Build<'_> {
    fn kernel(&self) -> Result<&Kernel, BuildError> {
        // Only reachable if the step order were changed so that a step ran before the kernel.
        self.kernel.as_ref().ok_or_else(|| BuildError::Write {
            path: self.opts.out.clone(),
            source: std::io::Error::other("internal: no kernel chosen before this step"),
        })
    }

    /// A listed binary or helper is missing: an error when required (or `--strict`),
    /// otherwise a visible line and an entry in the report.
    fn skip(
        &mut self,
        what: &'static str,
        name: &str,
        path: &Path,
        required: bool,
    ) -> Result<(), BuildError> {
        if required || self.opts.strict {
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
        self.progress.line(&format!(
            "error: {what} {name} not found at {}; skipped ({advice})",
            path.display()
        ));
        self.skipped.push(name.to_string());
        Ok(())
    }

    /// What the build produced so far.
    fn report(&self) -> Result<Report, BuildError> {
        Ok(Report {
            modules: self.modules.clone(),
            gridos_binaries_bytes: self.binaries.iter().map(|(_, n)| n).sum(),
            binaries: self.binaries.clone(),
            skipped: self.skipped.clone(),
            helper_files: self.helper_files.clone(),
            cmdline: self.cmdline.clone(),
            compression: self.profile.compression,
            source_date_epoch: self.opts.source_date_epoch,
            entries: self.tree.len(),
            kernel_bytes: self.kernel_bytes,
            initramfs_bytes: self.initramfs_bytes,
            kernel: self.kernel()?.clone(),
        })
    }
}

/// The kernel: a local tree, or Debian's package fetched into the cache.
fn kernel_step(b: &mut Build<'_>) -> Result<(), BuildError> {
    let (opts, profile, progress) = (b.opts, b.profile, b.progress);
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
    for d in &profile.dirs {
        b.tree.insert(d, 0o755, Kind::Dir)?;
    }
    b.tree.insert("dev/console", 0o600, Kind::CharDev(5, 1))?;
    b.kernel = Some(kernel);
    Ok(())
}

/// The wanted modules with their dependencies, and an index that lists only them.
fn modules_step(b: &mut Build<'_>) -> Result<(), BuildError> {
    b.progress
        .step(&format!("modules: {} wanted", b.profile.modules.len()));
    let kernel = b.kernel()?;
    let mdir = kernel.modules_dir();
    let kbase = format!("lib/modules/{}", kernel.release);
    let selection = ModuleTree::scan(&mdir)?.select(&b.profile.modules)?;
    for p in selection.paths() {
        b.tree
            .add_file(&format!("{kbase}/{p}"), &mdir.join(p), 0o644)?;
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
        b.tree
            .insert(&format!("{kbase}/{name}"), 0o644, Kind::File(data))?;
    }
    b.progress.line(&format!(
        "{} modules with dependencies",
        selection.modules.len()
    ));
    b.modules = selection.paths().iter().map(|s| s.to_string()).collect();
    Ok(())
}

/// The gridos binaries and their links; a binary that is not static brings its libraries.
fn binaries_step(b: &mut Build<'_>) -> Result<(), BuildError> {
    b.progress.step("gridos binaries");
    for bin in &b.profile.binaries {
        let src = b.opts.bin_dir.join(&bin.name);
        if !src.is_file() {
            b.skip("gridos binary", &bin.name, &src, bin.required)?;
            continue;
        }
        let n = b.tree.add_file(&bin.dest, &src, 0o755)?;
        b.binaries.push((bin.dest.clone(), n));
        for link in &bin.links {
            b.tree
                .insert(link, 0o777, Kind::Symlink(bin.dest.clone()))?;
        }
        if elf::dyn_info(&src).is_ok_and(|i| i.interpreter.is_some()) {
            b.progress.line(&format!(
                "warning: {} is dynamically linked; adding its libraries",
                bin.name
            ));
            let libs = elf::closure(&src, Path::new("/"), elf::DEFAULT_LIB_DIRS)?;
            add_libs(&mut b.tree, &libs, &mut b.placed, &mut b.helper_files)?;
        }
    }
    Ok(())
}

/// Host helper programs with their shared-library closure.
fn helpers_step(b: &mut Build<'_>) -> Result<(), BuildError> {
    b.progress.step("helper programs and their libraries");
    for h in &b.profile.helpers {
        let src = PathBuf::from(&h.path);
        if !src.is_file() {
            b.skip("helper", &h.path, &src, h.required)?;
            continue;
        }
        let dest = h.dest.clone().unwrap_or_else(|| h.path.clone());
        b.tree.add_file(&dest, &src, 0o755)?;
        b.helper_files.push(dest);
        let libs = elf::closure(&src, Path::new("/"), elf::DEFAULT_LIB_DIRS)?;
        add_libs(&mut b.tree, &libs, &mut b.placed, &mut b.helper_files)?;
    }
    b.helper_files.sort();
    b.helper_files.dedup();
    Ok(())
}

/// The profile's files and the overlays, copied verbatim.
fn files_step(b: &mut Build<'_>) -> Result<(), BuildError> {
    b.progress.step("initramfs files");
    for dir in b.profile.files.iter().chain(&b.opts.overlays) {
        let n = b.tree.add_dir("", dir)?;
        b.progress
            .line(&format!("{n} files from {}", dir.display()));
    }
    if let Some(key) = &b.opts.release_pub {
        let key = key.trim();
        gridtypes::parse_public_key(key).map_err(|_| BuildError::ReleaseKey(key.into()))?;
        b.tree.insert(
            RELEASE_PUB_PATH,
            0o644,
            Kind::File(format!("{key}\n").into_bytes()),
        )?;
    }
    Ok(())
}

/// The last file of every archive (init's `boot::IMAGE_SEAL`, without the leading `/`).
pub const SEAL_PATH: &str = "etc/gridos/image-complete";
/// What tells init to look for the seal (init's `boot::SEALED_WORD`).
pub const SEALED_WORD: &str = "gridos.image=sealed";

/// The tree as a (compressed) cpio archive in `out/initramfs.img`.
fn archive_step(b: &mut Build<'_>) -> Result<(), BuildError> {
    let (opts, profile) = (b.opts, b.profile);
    b.progress.step(&format!(
        "writing cpio ({} entries, {:?})",
        b.tree.len(),
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
    for e in b.tree.entries() {
        raw.append(&e).map_err(wr)?;
    }
    // The seal, last in the archive: the kernel unpacks in order and stops at the first
    // damaged byte, so a node that finds it knows the whole image arrived (init checks it,
    // with SEALED_WORD on the command line). The kernel does not make missing parents.
    for dir in ["etc", "etc/gridos"] {
        if !b.tree.contains(dir) {
            raw.append(&cpio::Entry {
                path: dir.into(),
                perm: 0o755,
                kind: Kind::Dir,
            })
            .map_err(wr)?;
        }
    }
    raw.append(&cpio::Entry {
        path: SEAL_PATH.into(),
        perm: 0o644,
        kind: Kind::File(format!("entries={}\n", b.tree.len()).into_bytes()),
    })
    .map_err(wr)?;
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
    b.initramfs_bytes = packed.len() as u64;
    Ok(())
}

/// The kernel image and the command line next to the archive.
fn boot_files_step(b: &mut Build<'_>) -> Result<(), BuildError> {
    b.progress.step("kernel and command line");
    let cmdline = std::iter::once(b.profile.cmdline.trim())
        .chain(std::iter::once(SEALED_WORD))
        .chain(b.opts.cmdline_append.iter().map(|s| s.trim()))
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let vmlinuz_path = b.kernel()?.vmlinuz.clone();
    let vmlinuz = std::fs::read(&vmlinuz_path).map_err(|source| BuildError::Write {
        path: vmlinuz_path,
        source,
    })?;
    write_atomic(&b.opts.out.join("vmlinuz"), &vmlinuz)?;
    write_atomic(
        &b.opts.out.join("cmdline"),
        format!("{cmdline}\n").as_bytes(),
    )?;
    b.kernel_bytes = vmlinuz.len() as u64;
    b.cmdline = cmdline;
    Ok(())
}

/// `out/build.json`: what the build produced, without timestamps (it is reproducible too).
fn report_step(b: &mut Build<'_>) -> Result<(), BuildError> {
    b.progress.step("build report");
    let json = serde_json::to_vec_pretty(&b.report()?).unwrap_or_default();
    write_atomic(&b.opts.out.join("build.json"), &json)
}
