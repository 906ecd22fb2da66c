//! Crash-safe file writes: temp file, fsync, rename, fsync of the directory.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Prefix of temp files; readers ignore (and clean up) names that start with it.
pub const TEMP_PREFIX: &str = ".tmp-";

/// Writes `bytes` to `path` so that after a crash the file is either absent or complete.
///
/// The data goes to `.tmp-<name>` in the same directory (mode `mode`), is fsynced, renamed
/// over `path`, and the directory is fsynced so the rename itself survives power loss.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("path has no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(TEMP_PREFIX);
    tmp_name.push(name);
    let tmp = dir.join(tmp_name);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    // `mode` at creation is filtered by the umask; make it exact.
    f.set_permissions(fs::Permissions::from_mode(mode))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, path)?;
    sync_dir(dir)
}

/// fsyncs a directory so entries created, renamed or removed in it are durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}
