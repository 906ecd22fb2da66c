//! Service definitions: one zinit-like YAML file per service in a directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Why a service file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The services directory itself could not be read.
    #[error("cannot read services directory {dir}")]
    ReadDir {
        /// The directory.
        dir: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// One file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The YAML is invalid or has unknown fields.
    #[error("invalid service file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// The YAML parsed but a value makes no sense.
    #[error("invalid service {name}: {message}")]
    Invalid {
        /// The service name.
        name: String,
        /// What is wrong.
        message: String,
    },
}

/// Where a service's output goes (it always also lands in the service's ring).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogTarget {
    /// Only the in-memory ring (the default).
    #[default]
    Ring,
    /// The ring and the console, prefixed with the service name.
    Console,
    /// The ring and `<log dir>/<name>.log`.
    File,
}

/// The service file exactly as written, before validation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    exec: String,
    #[serde(default)]
    after: Vec<String>,
    #[serde(default)]
    oneshot: bool,
    #[serde(default)]
    test: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    log: LogTarget,
    #[serde(default)]
    signal: Option<String>,
    #[serde(default)]
    shutdown_timeout: Option<u64>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    capabilities: Option<Vec<String>>,
    #[serde(default = "yes")]
    no_new_privs: bool,
    #[serde(default)]
    memory_max: Option<String>,
    #[serde(default)]
    pids_max: Option<u64>,
    // Strings, not paths: the YAML parser's code for Vec<String> is already in PID 1.
    #[serde(default)]
    state_dirs: Vec<String>,
    #[serde(default)]
    readable: Vec<String>,
}

fn yes() -> bool {
    true
}

/// A validated service definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Name, from the file name without `.yaml`.
    pub name: String,
    /// Program and arguments (shell-like quoting, no shell).
    pub exec: Vec<String>,
    /// Services that must be ready before this one starts.
    pub after: Vec<String>,
    /// Runs once to completion; dependents wait for a successful exit.
    pub oneshot: bool,
    /// Readiness check run until it exits 0; dependents wait for it.
    pub test: Option<Vec<String>>,
    /// Extra environment variables.
    pub env: BTreeMap<String, String>,
    /// Where output goes besides the ring.
    pub log: LogTarget,
    /// Signal sent to stop the service (default SIGTERM).
    pub signal: nix::sys::signal::Signal,
    /// How long to wait after the stop signal before SIGKILL.
    pub shutdown_timeout: Duration,
    /// User to run as (name in `/etc/passwd` or a number); `None` is root.
    pub user: Option<String>,
    /// Group to run as; `None` is the user's primary group.
    pub group: Option<String>,
    /// Capabilities kept (bounding set; ambient too for a non-root user); `None` keeps all.
    pub capabilities: Option<u64>,
    /// `PR_SET_NO_NEW_PRIVS` before exec (default on).
    pub no_new_privs: bool,
    /// The service cgroup's `memory.max` in bytes; `None` is unlimited.
    pub memory_max: Option<u64>,
    /// The service cgroup's `pids.max`; `None` is unlimited.
    pub pids_max: Option<u64>,
    /// Directories created if missing and given to the service's user before each start.
    pub state_dirs: Vec<PathBuf>,
    /// Root-only files the service must read (the agent's DMI serial): their group becomes
    /// the service's and gains read permission, instead of the service getting a capability
    /// that would let it read every file.
    pub readable: Vec<PathBuf>,
}

/// Parses a size such as `64M`, `1G`, `512K` or `4096` (bytes).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last()? {
        (i, 'K' | 'k') => (&s[..i], 1u64 << 10),
        (i, 'M' | 'm') => (&s[..i], 1 << 20),
        (i, 'G' | 'g') => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    num.trim().parse::<u64>().ok()?.checked_mul(mult)
}

/// Default grace period between the stop signal and SIGKILL.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest accepted service file; bigger ones are rejected unread.
const MAX_FILE: u64 = 64 * 1024;

/// Checks a service name: it becomes a file name, a log prefix and a D-Bus string.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
        && !name.starts_with('.')
}

fn split_command(name: &str, what: &str, cmd: &str) -> Result<Vec<String>, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        name: name.to_string(),
        message,
    };
    let words = shlex::split(cmd).ok_or_else(|| invalid(format!("{what}: unbalanced quotes")))?;
    if words.is_empty() {
        return Err(invalid(format!("{what} is empty")));
    }
    if words.iter().any(|w| w.contains('\0')) {
        return Err(invalid(format!("{what} contains a NUL byte")));
    }
    Ok(words)
}

/// Parses a signal name such as `TERM`, `SIGTERM` or `15`.
pub fn parse_signal(s: &str) -> Option<nix::sys::signal::Signal> {
    use std::str::FromStr;
    if let Ok(n) = s.parse::<i32>() {
        return nix::sys::signal::Signal::try_from(n).ok();
    }
    let upper = s.to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    nix::sys::signal::Signal::from_str(&full).ok()
}

/// Parses and validates one service file's text.
pub fn parse_service(name: &str, path: &Path, text: &str) -> Result<Service, ConfigError> {
    if !valid_name(name) {
        return Err(ConfigError::Invalid {
            name: name.chars().take(64).collect(),
            message: "name must be 1-64 of [A-Za-z0-9-_.@]".into(),
        });
    }
    let raw: RawService = serde_norway::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let invalid = |message: String| ConfigError::Invalid {
        name: name.to_string(),
        message,
    };
    let exec = split_command(name, "exec", &raw.exec)?;
    let test = match raw.test {
        Some(t) => Some(split_command(name, "test", &t)?),
        None => None,
    };
    for dep in &raw.after {
        if !valid_name(dep) {
            return Err(invalid(format!("invalid dependency name {dep:?}")));
        }
        if dep == name {
            return Err(invalid("a service cannot depend on itself".into()));
        }
    }
    for (k, v) in &raw.env {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return Err(invalid(format!("invalid environment variable {k:?}")));
        }
    }
    let signal = match raw.signal {
        Some(s) => parse_signal(&s).ok_or_else(|| invalid(format!("unknown signal {s:?}")))?,
        None => nix::sys::signal::Signal::SIGTERM,
    };
    let shutdown_timeout = match raw.shutdown_timeout {
        Some(s) if s > 3600 => return Err(invalid("shutdown_timeout above 3600 s".into())),
        Some(s) => Duration::from_secs(s),
        None => DEFAULT_SHUTDOWN_TIMEOUT,
    };
    let mut caps = None;
    if let Some(names) = &raw.capabilities {
        let mut mask = 0u64;
        for n in names {
            let bit = crate::privs::cap_number(n)
                .ok_or_else(|| invalid(format!("unknown capability {n:?}")))?;
            mask |= 1u64 << bit;
        }
        caps = Some(mask);
    }
    for (what, v) in [("user", &raw.user), ("group", &raw.group)] {
        if let Some(v) = v {
            if v.is_empty() || v.contains(':') || v.contains('\0') || v.len() > 32 {
                return Err(invalid(format!("invalid {what} {v:?}")));
            }
        }
    }
    let memory_max = match &raw.memory_max {
        Some(m) => Some(
            parse_size(m).ok_or_else(|| invalid(format!("memory_max {m:?}: expected e.g. 64M")))?,
        ),
        None => None,
    };
    if raw.pids_max == Some(0) {
        return Err(invalid("pids_max 0 would forbid the service itself".into()));
    }
    for d in raw.state_dirs.iter().chain(&raw.readable) {
        if !d.starts_with('/') || d.contains('\0') {
            return Err(invalid(format!("{d:?} is not an absolute path")));
        }
    }
    let mut after = raw.after;
    after.sort();
    after.dedup();
    Ok(Service {
        name: name.to_string(),
        exec,
        after,
        oneshot: raw.oneshot,
        test,
        env: raw.env,
        log: raw.log,
        signal,
        shutdown_timeout,
        user: raw.user,
        group: raw.group,
        capabilities: caps,
        no_new_privs: raw.no_new_privs,
        memory_max,
        pids_max: raw.pids_max,
        state_dirs: raw.state_dirs.into_iter().map(PathBuf::from).collect(),
        readable: raw.readable.into_iter().map(PathBuf::from).collect(),
    })
}

/// All service files of a directory: the good ones and, per bad file, its error.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Valid services by name.
    pub services: BTreeMap<String, Service>,
    /// Service names whose file is bad, with the reason.
    pub bad: BTreeMap<String, String>,
}

/// Reads every `*.yaml` / `*.yml` file of `dir`; a bad file never hides the good ones.
///
/// A name given by two files (`web.yaml` and `web.yml`) is bad: which one wins would depend
/// on the order the directory lists them in.
pub fn load_dir(dir: &Path) -> Result<Loaded, ConfigError> {
    let entries = std::fs::read_dir(dir).map_err(|source| ConfigError::ReadDir {
        dir: dir.to_path_buf(),
        source,
    })?;
    let mut files: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(file) = path.file_name().and_then(|f| f.to_str()) else {
            continue;
        };
        let Some(name) = file
            .strip_suffix(".yaml")
            .or_else(|| file.strip_suffix(".yml"))
        else {
            continue;
        };
        files.entry(name.to_string()).or_default().push(path);
    }
    let mut loaded = Loaded::default();
    for (name, mut paths) in files {
        paths.sort();
        let result = match paths.as_slice() {
            [path] => read_limited(path).and_then(|text| parse_service(&name, path, &text)),
            _ => Err(ConfigError::Invalid {
                name: name.chars().take(64).collect(),
                message: format!(
                    "defined by {} files: {}",
                    paths.len(),
                    paths
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }),
        };
        match result {
            Ok(svc) => {
                loaded.services.insert(name, svc);
            }
            Err(e) => {
                loaded
                    .bad
                    .insert(name.chars().take(64).collect(), svclog::error_chain(&e));
            }
        }
    }
    Ok(loaded)
}

fn read_limited(path: &Path) -> Result<String, ConfigError> {
    let err = |source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(err)?;
    if meta.len() > MAX_FILE {
        return Err(ConfigError::Parse {
            path: path.to_path_buf(),
            message: format!("file is {} bytes, limit is {MAX_FILE}", meta.len()),
        });
    }
    std::fs::read_to_string(path).map_err(err)
}
