//! Command line of `init --supervisor-only` (PID 1 ignores its arguments).
//!
//! Parsed by hand rather than with clap: five flags do not justify 200 KB in
//! a static PID 1 whose size budget is 3 MB.

use std::path::PathBuf;

use crate::control;

/// Where service files live in the booted system.
pub const SERVICES_DIR: &str = "/etc/gridos/services";

/// Help text for `--help` and argument errors.
pub const USAGE: &str = "usage: init --supervisor-only [--services DIR] [--socket PATH] [--log-dir DIR] [--log-level LEVEL]

gridos PID 1 and service supervisor. As PID 1 it ignores its arguments.
  --supervisor-only   run only the supervisor, as an ordinary process
  --services DIR      service files (default /etc/gridos/services)
  --socket PATH       control socket (default /run/gridos/init.sock)
  --log-dir DIR       where `log: file` services write
  --log-level LEVEL   error|warn|info|debug|trace (default info)";

/// A bad command line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArgsError {
    /// A flag nobody knows.
    #[error("unknown argument {0:?}\n{USAGE}")]
    Unknown(String),
    /// A flag given without its value.
    #[error("{0} needs a value")]
    MissingValue(String),
    /// A log level that is not one of the five.
    #[error("invalid --log-level {0:?}")]
    BadLevel(String),
}

/// The parsed options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    /// Run only the supervisor, as an ordinary process (for tests and development).
    pub supervisor_only: bool,
    /// Directory of service files.
    pub services: PathBuf,
    /// Control socket path.
    pub socket: PathBuf,
    /// Directory for `log: file` services.
    pub log_dir: Option<PathBuf>,
    /// Log level.
    pub log_level: tracing::Level,
}

impl Default for Args {
    fn default() -> Self {
        Args {
            supervisor_only: false,
            services: PathBuf::from(SERVICES_DIR),
            socket: PathBuf::from(control::DEFAULT_SOCKET),
            log_dir: None,
            log_level: tracing::Level::INFO,
        }
    }
}

impl Args {
    /// Parses the arguments after the program name (`--flag VALUE` or `--flag=VALUE`);
    /// `Ok(None)` means help was asked for.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Option<Args>, ArgsError> {
        let mut out = Args::default();
        let mut it = args.into_iter();
        while let Some(arg) = it.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
                _ => (arg.clone(), None),
            };
            let mut value = || {
                inline
                    .clone()
                    .or_else(|| it.next())
                    .ok_or_else(|| ArgsError::MissingValue(flag.clone()))
            };
            match flag.as_str() {
                "-h" | "--help" => return Ok(None),
                "--supervisor-only" => out.supervisor_only = true,
                "--services" => out.services = PathBuf::from(value()?),
                "--socket" => out.socket = PathBuf::from(value()?),
                "--log-dir" => out.log_dir = Some(PathBuf::from(value()?)),
                "--log-level" => {
                    let v = value()?;
                    out.log_level = v.parse().map_err(|_| ArgsError::BadLevel(v))?;
                }
                other => return Err(ArgsError::Unknown(other.to_string())),
            }
        }
        Ok(Some(out))
    }
}
