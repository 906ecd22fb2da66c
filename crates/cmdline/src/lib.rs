//! Typed settings from the kernel command line (`gridos.*` keys).
//!
//! Unknown keys are ignored; a malformed value is reported as a [`Warning`]
//! and the setting keeps its default, so a typo never stops a node from booting.

use std::fmt;

/// How the node's network is configured, from `gridos.net`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum NetConfig {
    /// DHCP on every wired link with carrier (the default).
    #[default]
    Dhcp,
    /// A static address on one interface: `<iface>:<cidr>:<gw>`.
    Static {
        /// Interface name, e.g. `eth0`.
        iface: String,
        /// Address with prefix length, e.g. `10.0.0.5/24`.
        cidr: String,
        /// Default gateway.
        gateway: String,
    },
}

/// Which disks storage may format, from `gridos.wipe`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WipePolicy {
    /// Never format anything.
    None,
    /// Format only disks with no partition table and no filesystem signature (the default).
    #[default]
    Empty,
    /// Format every disk, even ones that hold data.
    All,
}

/// Log verbosity, from `gridos.log`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Warnings and errors.
    Warn,
    /// Normal operation (the default).
    #[default]
    Info,
    /// Verbose.
    Debug,
    /// Very verbose.
    Trace,
}

impl LogLevel {
    /// The matching `tracing` level, so logging needs no second parser.
    pub fn as_tracing(self) -> tracing::Level {
        match self {
            LogLevel::Error => tracing::Level::ERROR,
            LogLevel::Warn => tracing::Level::WARN,
            LogLevel::Info => tracing::Level::INFO,
            LogLevel::Debug => tracing::Level::DEBUG,
            LogLevel::Trace => tracing::Level::TRACE,
        }
    }
}

/// Everything init and the services need from the kernel command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The farm this node belongs to (`gridos.farm`), required for registration.
    pub farm: Option<u32>,
    /// Registry base URL (`gridos.registry`).
    pub registry: Option<String>,
    /// Network configuration (`gridos.net`).
    pub net: NetConfig,
    /// Log level (`gridos.log`).
    pub log: LogLevel,
    /// Disk wipe policy (`gridos.wipe`).
    pub wipe: WipePolicy,
    /// Hostname (`gridos.hostname`), default `gridos`.
    pub hostname: String,
    /// Seconds between the agent's uptime reports (`gridos.report_interval`); `None` keeps the
    /// agent's default (40 min). Test rigs set a few seconds to watch reports flow.
    pub report_interval: Option<u32>,
    /// OCI registries (`host:port`) the provision service speaks plain HTTP to
    /// (`gridos.plain_http=`, comma-separated): a registry on the farm's own network, or the
    /// test rig's on the host. TLS is the default for every other.
    pub plain_http: Vec<String>,
    /// Whether the cache may go on the USB stick the node booted from, in its free space after
    /// the boot partition (`gridos.cache_on_stick=yes`), when no other disk can take it.
    /// Off by default: a stick wears out and gets pulled, and the cache holds the node's key.
    pub cache_on_stick: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            farm: None,
            registry: None,
            net: NetConfig::default(),
            log: LogLevel::default(),
            wipe: WipePolicy::default(),
            hostname: "gridos".to_string(),
            report_interval: None,
            plain_http: Vec::new(),
            cache_on_stick: false,
        }
    }
}

/// A malformed `gridos.*` value: reported at boot, the default is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// The key, e.g. `gridos.farm`.
    pub key: String,
    /// The rejected value (truncated to 64 bytes so hostile input cannot flood the log).
    pub value: String,
    /// Why it was rejected.
    pub reason: &'static str,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}={:?}: {}; using the default",
            self.key, self.value, self.reason
        )
    }
}

/// Longest uptime-report interval: a day. A node silent for longer than that looks dead to the
/// registry, so a larger value can only be a typo.
const MAX_REPORT_INTERVAL: u32 = 86_400;

/// Longest value accepted for any key; longer ones are rejected as malformed.
const MAX_VALUE: usize = 1024;

/// Longest rejected value quoted in a [`Warning`], in bytes.
const MAX_WARNING_VALUE: usize = 64;

/// Splits a command line into words, honouring double quotes as the kernel does.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_quotes = false;
    let mut has_word = false;
    for c in line.chars() {
        match c {
            '"' => {
                in_quotes = !in_quotes;
                has_word = true;
            }
            c if c.is_whitespace() && !in_quotes => {
                if has_word {
                    out.push(std::mem::take(&mut cur));
                    has_word = false;
                }
            }
            c => {
                cur.push(c);
                has_word = true;
            }
        }
    }
    if has_word {
        out.push(cur);
    }
    out
}

/// At most [`MAX_WARNING_VALUE`] bytes of `v`, cut at a character boundary: counting
/// characters would let four-byte ones make a warning four times longer.
fn truncated(v: &str) -> String {
    let mut end = v.len().min(MAX_WARNING_VALUE);
    while !v.is_char_boundary(end) {
        end -= 1;
    }
    v[..end].to_string()
}

fn valid_hostname(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 63
        && !v.starts_with('-')
        && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

fn parse_net(v: &str) -> Option<NetConfig> {
    if v == "dhcp" {
        return Some(NetConfig::Dhcp);
    }
    let mut parts = v.splitn(3, ':');
    let iface = parts.next()?;
    let cidr = parts.next()?;
    let gateway = parts.next()?;
    let (addr, prefix) = cidr.split_once('/')?;
    let prefix: u8 = prefix.parse().ok()?;
    let ok_iface = !iface.is_empty()
        && iface.len() <= 15
        && iface
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    let addr: std::net::IpAddr = addr.parse().ok()?;
    let gw: std::net::IpAddr = gateway.parse().ok()?;
    let max_prefix = if addr.is_ipv4() { 32 } else { 128 };
    if !ok_iface || prefix > max_prefix || addr.is_ipv4() != gw.is_ipv4() {
        return None;
    }
    Some(NetConfig::Static {
        iface: iface.to_string(),
        cidr: cidr.to_string(),
        gateway: gateway.to_string(),
    })
}

/// `host:port` pairs, comma-separated: a host name or IPv4 address and a port.
fn parse_hosts(value: &str) -> Option<Vec<String>> {
    value
        .split(',')
        .map(|h| {
            let (host, port) = h.rsplit_once(':')?;
            let host_ok = !host.is_empty()
                && host.len() <= 253
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
            (host_ok && port.parse::<u16>().is_ok_and(|p| p > 0)).then(|| h.to_string())
        })
        .collect()
}

/// Every `gridos.*` key [`parse`] understands, so a settings file can call an unknown one a
/// typo instead of ignoring it.
pub const KEYS: [&str; 9] = [
    "gridos.farm",
    "gridos.registry",
    "gridos.net",
    "gridos.log",
    "gridos.wipe",
    "gridos.hostname",
    "gridos.report_interval",
    "gridos.plain_http",
    "gridos.cache_on_stick",
];

/// Keys PID 1 alone reads, at its very start, before any boot medium is readable: a settings
/// file cannot change them (`gridos-bootcfg` says so).
pub const EARLY_KEYS: [&str; 1] = ["gridos.log"];

/// Where the node's own command line is: `/proc/cmdline` with the boot stick's settings file
/// (`gridos.cfg`) applied, written by `gridos-bootcfg` before the services start.
pub const NODE_CMDLINE: &str = "/run/gridos/cmdline";

/// Reads the command line at `path`; [`NODE_CMDLINE`] falls back to `/proc/cmdline` when it
/// was not written (a host, or a node whose bootcfg could not run), so settings are never
/// lost to a missing file.
pub fn read_line(path: &std::path::Path) -> String {
    match std::fs::read_to_string(path) {
        Ok(line) => line,
        Err(_) if path == std::path::Path::new(NODE_CMDLINE) => {
            std::fs::read_to_string("/proc/cmdline").unwrap_or_default()
        }
        Err(_) => String::new(),
    }
}

/// Parses `/proc/cmdline` text into settings plus the warnings for malformed values.
pub fn parse(line: &str) -> (Settings, Vec<Warning>) {
    let mut s = Settings::default();
    let mut warnings = Vec::new();
    for word in words(line) {
        let Some((key, value)) = word.split_once('=') else {
            continue;
        };
        if !key.starts_with("gridos.") {
            continue;
        }
        let mut bad = |reason: &'static str| {
            warnings.push(Warning {
                key: key.to_string(),
                value: truncated(value),
                reason,
            })
        };
        if value.len() > MAX_VALUE {
            bad("value too long");
            continue;
        }
        match key {
            "gridos.farm" => match value.parse::<u32>() {
                Ok(id) if id > 0 => s.farm = Some(id),
                _ => bad("expected a farm id (a positive integer)"),
            },
            "gridos.registry" => {
                let ok = (value.starts_with("http://") || value.starts_with("https://"))
                    && value.len() > "https://".len()
                    && !value.chars().any(|c| c.is_control() || c.is_whitespace());
                if ok {
                    s.registry = Some(value.to_string());
                } else {
                    bad("expected an http:// or https:// URL");
                }
            }
            "gridos.net" => match parse_net(value) {
                Some(n) => s.net = n,
                None => bad("expected dhcp or <iface>:<addr>/<prefix>:<gateway>"),
            },
            "gridos.log" => match value {
                "error" => s.log = LogLevel::Error,
                "warn" => s.log = LogLevel::Warn,
                "info" => s.log = LogLevel::Info,
                "debug" => s.log = LogLevel::Debug,
                "trace" => s.log = LogLevel::Trace,
                _ => bad("expected error|warn|info|debug|trace"),
            },
            "gridos.wipe" => match value {
                "none" => s.wipe = WipePolicy::None,
                "empty" => s.wipe = WipePolicy::Empty,
                "all" => s.wipe = WipePolicy::All,
                _ => bad("expected none|empty|all"),
            },
            "gridos.hostname" => {
                if valid_hostname(value) {
                    s.hostname = value.to_string();
                } else {
                    bad("expected 1-63 letters, digits or '-'");
                }
            }
            "gridos.report_interval" => match value.parse::<u32>() {
                Ok(secs) if (1..=MAX_REPORT_INTERVAL).contains(&secs) => {
                    s.report_interval = Some(secs)
                }
                _ => bad("expected seconds between 1 and 86400"),
            },
            "gridos.cache_on_stick" => match value {
                "yes" => s.cache_on_stick = true,
                "no" => s.cache_on_stick = false,
                _ => bad("expected yes|no"),
            },
            "gridos.plain_http" => match parse_hosts(value) {
                Some(hosts) => s.plain_http = hosts,
                None => bad("expected host:port[,host:port...]"),
            },
            _ => {}
        }
    }
    (s, warnings)
}
