//! The user's ed25519 key on disk: created once, written atomically, readable only by its owner.

use std::fs;
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use rand::rngs::OsRng;

/// Why a key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// No key file yet.
    #[error("no key at {0}: create one with `grid key new`")]
    Missing(PathBuf),
    /// A key file exists where a new one would go.
    #[error("a key already exists at {0}: refusing to overwrite it (pass --force to replace it, losing the old identity)")]
    Exists(PathBuf),
    /// The file is not a hex-encoded 32-byte seed.
    #[error("{0} is not a gridos key file (expected 64 hex digits)")]
    Corrupt(PathBuf),
    /// Filesystem error.
    #[error("{path}")]
    Io {
        /// File involved.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where the key lives unless `--key` says otherwise.
pub fn default_path() -> PathBuf {
    dirs::config_dir()
        .unwrap_or_else(|| PathBuf::from("."))
        .join("gridos")
        .join("key")
}

/// Loads the key at `path`.
pub fn load(path: &Path) -> Result<SigningKey, KeyError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(KeyError::Missing(path.to_path_buf()))
        }
        Err(e) => return Err(io(path)(e)),
    };
    gridtypes::keyfile::from_text(&text).ok_or_else(|| KeyError::Corrupt(path.to_path_buf()))
}

/// Creates a new key at `path` (mode 0600, temp file + fsync + rename).
pub fn create(path: &Path, force: bool) -> Result<SigningKey, KeyError> {
    if path.exists() && !force {
        return Err(KeyError::Exists(path.to_path_buf()));
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io(dir))?;
    let key = SigningKey::generate(&mut OsRng);
    let text = gridtypes::keyfile::to_text(&key);
    atomicfile::write(path, text.as_bytes(), 0o600).map_err(io(path))?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn create_load_and_refuse_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/key");
        let key = create(&path, false).unwrap();
        assert_eq!(load(&path).unwrap().to_bytes(), key.to_bytes());
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(create(&path, false), Err(KeyError::Exists(_))));
        let other = create(&path, true).unwrap();
        assert_ne!(other.to_bytes(), key.to_bytes());
    }

    #[test]
    fn missing_and_corrupt_keys_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        assert!(matches!(load(&path), Err(KeyError::Missing(_))));
        fs::write(&path, "not hex").unwrap();
        let err = load(&path).unwrap_err();
        assert!(matches!(err, KeyError::Corrupt(_)));
        assert!(err.to_string().contains("key"));
    }
}
