//! Boot media made from a gridos release: the folder `make image` (or `grid image build`)
//! writes, holding `vmlinuz`, `initramfs.img` and `cmdline` (the kernel command line with the
//! farm's settings baked in). Today: the network-boot folder ([`pxe`]). See docs/boot-media.md.

pub mod pxe;

use std::path::{Path, PathBuf};

/// What a release folder holds.
pub const RELEASE_FILES: [&str; 3] = ["vmlinuz", "initramfs.img", "cmdline"];

/// Why boot media could not be made.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// A file of the release is missing or unreadable.
    #[error("release {dir}: cannot read {file} (build the image first: make image)")]
    Release {
        /// The release folder.
        dir: PathBuf,
        /// The file.
        file: &'static str,
        /// Cause.
        source: std::io::Error,
    },
    /// The release's command line cannot go into a boot script.
    #[error("release {dir}: the kernel command line {reason}")]
    Cmdline {
        /// The release folder.
        dir: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Writing an output failed.
    #[error("writing {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

/// Reads the release's kernel command line: one line, printable ASCII.
pub fn release_cmdline(dir: &Path) -> Result<String, MediaError> {
    let text =
        std::fs::read_to_string(dir.join("cmdline")).map_err(|source| MediaError::Release {
            dir: dir.into(),
            file: "cmdline",
            source,
        })?;
    let line = text.trim_end_matches('\n');
    check_words(line).map_err(|reason| MediaError::Cmdline {
        dir: dir.into(),
        reason,
    })?;
    Ok(line.to_string())
}

/// A command line a boot script can carry as it is: one line of printable ASCII, no quotes
/// or characters a boot loader's script language would take as its own.
pub fn check_words(line: &str) -> Result<(), String> {
    if line.trim().is_empty() {
        return Err("is empty".into());
    }
    if let Some(c) = line
        .chars()
        .find(|c| !c.is_ascii_graphic() && *c != ' ' || matches!(c, '"' | '\'' | '$' | '\\'))
    {
        return Err(format!("holds {c:?}, which a boot script cannot carry"));
    }
    Ok(())
}
