//! The node's ed25519 identity: created on first boot, kept on the cache partition, never sent.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use rand::rngs::OsRng;

/// Why the node key could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The key file exists but is not 64 hex digits: refuse to replace it (that would be a new node).
    #[error("{0} is not a gridos node key (expected 64 hex digits); move it away to start as a new node")]
    Corrupt(PathBuf),
    /// Filesystem error.
    #[error("node key {path}")]
    Io {
        /// File or directory involved.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

/// The key file name inside the identity directory.
pub const KEY_FILE: &str = "node.key";

/// Loads the node key at `path`, creating it (mode 0600, atomically) if there is none.
///
/// Returns the key and whether it was just created.
pub fn load_or_create(path: &Path) -> Result<(SigningKey, bool), IdentityError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| IdentityError::Io { path, source }
    };
    match fs::read_to_string(path) {
        Ok(text) => {
            let key = gridtypes::keyfile::from_text(&text)
                .ok_or_else(|| IdentityError::Corrupt(path.to_path_buf()))?;
            // Tighten permissions if someone loosened them.
            let meta = fs::metadata(path).map_err(io(path))?;
            if meta.permissions().mode() & 0o077 != 0 {
                fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(io(path))?;
            }
            Ok((key, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                fs::create_dir_all(dir).map_err(io(dir))?;
                fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
            }
            let key = SigningKey::generate(&mut OsRng);
            let text = gridtypes::keyfile::to_text(&key);
            atomicfile::write(path, text.as_bytes(), 0o600).map_err(io(path))?;
            Ok((key, true))
        }
        Err(e) => Err(io(path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity").join(KEY_FILE);
        let (a, created) = load_or_create(&path).unwrap();
        assert!(created);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (b, created) = load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(a.to_bytes(), b.to_bytes());
        // No temp file is left behind.
        let names: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(KEY_FILE)]);
    }

    #[test]
    fn corrupt_key_is_refused_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE);
        fs::write(&path, "garbage").unwrap();
        assert!(matches!(
            load_or_create(&path),
            Err(IdentityError::Corrupt(_))
        ));
        assert_eq!(fs::read_to_string(&path).unwrap(), "garbage");
    }

    #[test]
    fn loose_permissions_are_tightened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE);
        load_or_create(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        load_or_create(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
