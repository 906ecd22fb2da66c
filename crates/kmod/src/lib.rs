//! Kernel modules: resolve a device's modalias through `modules.alias` and
//! `modules.dep`, and load the module with its dependencies first.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Errors reading the module index or loading a module.
#[derive(Debug, thiserror::Error)]
pub enum KmodError {
    /// An index file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The kernel refused a module.
    #[error("cannot load {path}")]
    Load {
        /// The module file.
        path: PathBuf,
        /// The errno.
        source: nix::Error,
    },
    /// A compressed module could not be decompressed.
    #[error("cannot decompress {path}: {message}")]
    Decompress {
        /// The module file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
}

/// Normalises a module name the way the kernel does (`-` → `_`).
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// The module name of a path such as `kernel/drivers/net/virtio_net.ko.zst`.
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    normalize(stem)
}

/// `fnmatch`-style matching of a modalias against a `modules.alias` pattern (`*`, `?`, `[...]`).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p = pattern.as_bytes();
    let t = text.as_bytes();
    let last_close = p.iter().rposition(|&c| c == b']');
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while let Some(&tc) = t.get(ti) {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, ti));
                pi += 1;
                continue;
            }
            Some(b'?') => {
                pi += 1;
                ti += 1;
                continue;
            }
            Some(b'[') => match class_match(p, pi, tc, last_close) {
                Some((true, next)) => {
                    pi = next;
                    ti += 1;
                    continue;
                }
                Some((false, _)) => {}
                None if tc == b'[' => {
                    pi += 1;
                    ti += 1;
                    continue;
                }
                None => {}
            },
            Some(&c) if c == tc => {
                pi += 1;
                ti += 1;
                continue;
            }
            _ => {}
        }
        match star {
            Some((sp, st)) => {
                pi = sp + 1;
                ti = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    p.get(pi..)
        .is_some_and(|rest| rest.iter().all(|&c| c == b'*'))
}

/// Matches `c` against the class starting at `p[start] == '['`; returns (matched, index after `]`),
/// or `None` when the class is not closed. `last_close` is the index of the pattern's last `]`.
fn class_match(p: &[u8], start: usize, c: u8, last_close: Option<usize>) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = matches!(p.get(i), Some(b'!') | Some(b'^'));
    if negate {
        i += 1;
    }
    // Any `]` after the first member closes the class (the scan below never steps over one),
    // so whether it closes is known without scanning: scanning every unclosed `[` again at
    // each step made `*[[[…` patterns cubic.
    if last_close.is_none_or(|j| j <= i) {
        return None;
    }
    let mut matched = false;
    let mut first = true;
    while let Some(&pc) = p.get(i) {
        if pc == b']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        match (p.get(i + 1), p.get(i + 2)) {
            (Some(b'-'), Some(&hi)) if hi != b']' => {
                if pc <= c && c <= hi {
                    matched = true;
                }
                i += 3;
            }
            _ => {
                if pc == c {
                    matched = true;
                }
                i += 1;
            }
        }
    }
    None
}

/// The parsed module index of one kernel.
#[derive(Debug, Default)]
pub struct ModuleIndex {
    root: PathBuf,
    aliases: Vec<(String, String)>,
    deps: HashMap<String, (String, Vec<String>)>,
    builtin: HashSet<String>,
}

impl ModuleIndex {
    /// Reads `modules.alias`, `modules.dep` and `modules.builtin` under `root` (`/lib/modules/VERSION`).
    pub fn load(root: &Path) -> Result<Self, KmodError> {
        let read = |name: &str| {
            let path = root.join(name);
            std::fs::read_to_string(&path).map_err(|source| KmodError::Read { path, source })
        };
        let alias = read("modules.alias")?;
        let dep = read("modules.dep")?;
        let builtin = read("modules.builtin").unwrap_or_default();
        let mut idx = ModuleIndex::parse(&alias, &dep, &builtin);
        idx.root = root.to_path_buf();
        Ok(idx)
    }

    /// Builds an index from the text of the three files.
    pub fn parse(alias: &str, dep: &str, builtin: &str) -> Self {
        let aliases = alias
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                if w.next()? != "alias" {
                    return None;
                }
                Some((w.next()?.to_string(), normalize(w.next()?)))
            })
            .collect();
        let deps = dep
            .lines()
            .filter_map(|l| {
                let (path, rest) = l.split_once(':')?;
                let path = path.trim();
                let list = rest.split_whitespace().map(str::to_string).collect();
                Some((module_name(path), (path.to_string(), list)))
            })
            .collect();
        let builtin = builtin
            .lines()
            .map(|l| module_name(l.trim()))
            .filter(|n| !n.is_empty())
            .collect();
        ModuleIndex {
            root: PathBuf::new(),
            aliases,
            deps,
            builtin,
        }
    }

    /// Module names whose alias pattern matches `modalias`.
    pub fn resolve(&self, modalias: &str) -> BTreeSet<String> {
        self.aliases
            .iter()
            .filter(|(pat, _)| glob_match(pat, modalias))
            .map(|(_, m)| m.clone())
            .collect()
    }

    /// Files to load for `module`, dependencies first (as `modprobe` does), relative to the root.
    pub fn load_order(&self, module: &str) -> Vec<String> {
        let module = normalize(module);
        if self.builtin.contains(&module) {
            return Vec::new();
        }
        let Some((path, deps)) = self.deps.get(&module) else {
            return Vec::new();
        };
        let mut out: Vec<String> = deps.iter().rev().cloned().collect();
        out.push(path.clone());
        out
    }

    /// True when the module is compiled into the kernel.
    pub fn is_builtin(&self, module: &str) -> bool {
        self.builtin.contains(&normalize(module))
    }
}

/// Loads modules once each, remembering what is already in the kernel.
///
/// The full index of a distribution kernel is megabytes in memory, so it is
/// held only while needed: during coldplug, and briefly for each hot-plug
/// event with a modalias not seen before ([`Loader::release_index`]).
#[derive(Debug)]
pub struct Loader {
    root: PathBuf,
    index: Option<ModuleIndex>,
    loaded: HashSet<String>,
    failed: HashSet<String>,
    seen: HashSet<String>,
}

/// `finit_module` flag asking the kernel to decompress the file itself.
const MODULE_INIT_COMPRESSED_FILE: libc::c_uint = 4;

impl Loader {
    /// A loader over `index`, seeded from `/proc/modules`.
    pub fn new(index: ModuleIndex) -> Self {
        let loaded = std::fs::read_to_string("/proc/modules")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(normalize))
            .collect();
        Loader {
            root: index.root.clone(),
            index: Some(index),
            loaded,
            failed: HashSet::new(),
            seen: HashSet::new(),
        }
    }

    /// Drops the in-memory index; it is re-read on demand for new modaliases.
    pub fn release_index(&mut self) {
        self.index = None;
        // SAFETY: malloc_trim only returns free heap pages to the kernel.
        unsafe {
            libc::malloc_trim(0);
        }
    }

    /// Marks `modalias` seen and returns the module files it needs, dependencies first; empty
    /// when it was seen before or no module matches.
    fn plan(&mut self, modalias: &str) -> Vec<String> {
        if !self.seen.insert(modalias.to_string()) {
            return Vec::new();
        }
        let temporary = self.index.is_none();
        if temporary {
            match ModuleIndex::load(&self.root) {
                Ok(i) => self.index = Some(i),
                Err(e) => {
                    tracing::warn!(
                        error = &e as &dyn std::error::Error,
                        "module index unavailable"
                    );
                    return Vec::new();
                }
            }
        }
        let files: Vec<String> = match &self.index {
            Some(idx) => idx
                .resolve(modalias)
                .iter()
                .flat_map(|m| idx.load_order(m))
                .collect(),
            None => Vec::new(),
        };
        if temporary {
            self.release_index();
        }
        files
    }

    /// True when `name` is neither loaded nor known to fail.
    fn pending(&self, name: &str) -> bool {
        !self.loaded.contains(name) && !self.failed.contains(name)
    }
}

fn lock(loader: &Mutex<Loader>) -> std::sync::MutexGuard<'_, Loader> {
    loader.lock().unwrap_or_else(|p| p.into_inner())
}

/// Loads every module matching `modalias` (once per modalias); returns the names newly loaded.
///
/// The lock is held only to plan and to record, never across `finit_module`: the kernel itself
/// serialises loads of one module (a second load of a module still initialising waits for it,
/// then gets `EEXIST`), so threads may load different devices' drivers at once and a slow
/// probe (AHCI waiting for its ports) does not hold back the network card.
pub fn load_alias(loader: &Mutex<Loader>, modalias: &str) -> Vec<String> {
    let (root, files) = {
        let mut l = lock(loader);
        let files = l.plan(modalias);
        (l.root.clone(), files)
    };
    let mut new = Vec::new();
    for file in files {
        let name = module_name(&file);
        if !lock(loader).pending(&name) {
            continue;
        }
        let result = load_file(&root.join(&file));
        let mut l = lock(loader);
        match result {
            Ok(()) => {
                tracing::info!(module = %name, file = %file, modalias, "loaded module");
                l.loaded.insert(name.clone());
                new.push(name);
            }
            Err(KmodError::Load {
                source: nix::Error::EEXIST,
                ..
            }) => {
                l.loaded.insert(name);
            }
            Err(e) => {
                tracing::warn!(module = %name, error = &e as &dyn std::error::Error, "module not loaded");
                l.failed.insert(name);
            }
        }
    }
    new
}

/// Loads `module` and its dependencies by name, as `modprobe NAME` would, from the running
/// kernel's tree under `/lib/modules`. For modules no device asks for (btrfs before a mount,
/// overlay, wireguard): the kernel's own `request_module` has no `modprobe` to call on a node.
/// Returns the modules newly loaded; one already in the kernel (or built in) is not an error.
pub fn load_module(module: &str) -> Result<Vec<String>, KmodError> {
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let root = Path::new("/lib/modules").join(release);
    load_module_from(&ModuleIndex::load(&root)?, &root, module)
}

/// [`load_module`] over a given index and module tree.
pub fn load_module_from(
    index: &ModuleIndex,
    root: &Path,
    module: &str,
) -> Result<Vec<String>, KmodError> {
    let mut loaded = Vec::new();
    for file in index.load_order(module) {
        match load_file(&root.join(&file)) {
            Ok(()) => loaded.push(module_name(&file)),
            Err(KmodError::Load {
                source: nix::Error::EEXIST,
                ..
            }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(loaded)
}

/// Loads one module file: plain with `finit_module`; `.xz`/`.zst` by the kernel if it can,
/// else `.xz` is decompressed here (`.zst` then fails with a clear error).
pub fn load_file(path: &Path) -> Result<(), KmodError> {
    let load_err = |source| KmodError::Load {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(|source| KmodError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let params = CString::default();
    let name = path.to_string_lossy();
    let compressed = name.ends_with(".xz") || name.ends_with(".zst");
    if !compressed {
        return nix::kmod::finit_module(&file, &params, nix::kmod::ModuleInitFlags::empty())
            .map_err(load_err);
    }
    {
        use std::os::fd::AsRawFd;
        // SAFETY: finit_module takes a valid open fd, a NUL-terminated string that
        // outlives the call, and flags; no memory is handed over to the kernel.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_finit_module,
                file.as_raw_fd(),
                params.as_ptr(),
                MODULE_INIT_COMPRESSED_FILE,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let errno = nix::Error::last();
        if !matches!(errno, nix::Error::EINVAL | nix::Error::EOPNOTSUPP) {
            return Err(load_err(errno));
        }
    }
    let image = decompress(path, file)?;
    nix::kmod::init_module(&image, &params).map_err(load_err)
}

fn decompress(path: &Path, mut file: std::fs::File) -> Result<Vec<u8>, KmodError> {
    let err = |message: String| KmodError::Decompress {
        path: path.to_path_buf(),
        message,
    };
    // Only xz, the compression Debian's kernels use: a zstd decoder cost PID 1 about 30 KB of
    // its 3 MB budget for modules no supported kernel ships. A kernel built with
    // CONFIG_MODULE_DECOMPRESS loads .zst itself (above).
    if path.to_string_lossy().ends_with(".zst") {
        return Err(err(
            "zstd-compressed, and this kernel cannot decompress modules itself: \
             ship the module uncompressed or as .xz"
                .into(),
        ));
    }
    let mut out = Vec::new();
    let mut input = std::io::BufReader::new(&mut file);
    lzma_rs::xz_decompress(&mut input, &mut out).map_err(|e| err(e.to_string()))?;
    Ok(out)
}

/// Every modalias under `sys` (normally `/sys/devices`), without following symlinks.
pub fn modaliases(sys: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![sys.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() && e.file_name() == "modalias" {
                if let Ok(text) = std::fs::read_to_string(e.path()) {
                    let alias = text.trim();
                    if !alias.is_empty() {
                        out.insert(alias.to_string());
                    }
                }
            }
        }
    }
    out
}

/// Loads modules for every device present on `workers` threads, repeating while new devices
/// appear (at most 5 passes).
pub fn coldplug(loader: &Mutex<Loader>, sys: &Path, workers: usize) -> Vec<String> {
    let mut all = Vec::new();
    for _ in 0..5 {
        let aliases: Vec<String> = {
            let l = lock(loader);
            modaliases(sys)
                .into_iter()
                .filter(|a| !l.seen.contains(a))
                .collect()
        };
        if aliases.is_empty() {
            break;
        }
        let next = AtomicUsize::new(0);
        let found = Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for _ in 0..workers.clamp(1, aliases.len()) {
                scope.spawn(|| {
                    while let Some(a) = aliases.get(next.fetch_add(1, Ordering::Relaxed)) {
                        let new = load_alias(loader, a);
                        found.lock().unwrap_or_else(|p| p.into_inner()).extend(new);
                    }
                });
            }
        });
        all.extend(found.into_inner().unwrap_or_else(|p| p.into_inner()));
    }
    lock(loader).release_index();
    all
}

/// Module names from a `modules-load` file: one per line, `#` comments and blanks skipped.
pub fn parse_load_list(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty() && l.len() <= 64 && !l.contains('/'))
        .map(normalize)
        .collect()
}
