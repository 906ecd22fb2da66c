//! Boot media made from a gridos release: the folder `make image` (or `grid image build`)
//! writes, holding `vmlinuz`, `initramfs.img` and `cmdline` (the kernel command line with the
//! farm's settings baked in): the network-boot folder ([`pxe`]), the USB stick image
//! ([`usb`]) and the hybrid ISO ([`iso`]), both booting UEFI through a unified kernel image
//! ([`uki`], optionally signed for Secure Boot) and BIOS through syslinux. See
//! docs/boot-media.md.

pub mod iso;
pub mod pxe;
pub mod tools;
pub mod uki;
pub mod usb;

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
    /// A program or data file the media are made with is missing or failed.
    #[error("{tool}: {detail}")]
    Tool {
        /// The program or file.
        tool: String,
        /// What happened, with the package to install when it is missing.
        detail: String,
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

/// The release's command line with `append` (the caller's words) and `extra` (the medium's)
/// after it, checked as one line a boot script or loader configuration can carry.
pub fn cmdline_with(dir: &Path, append: &[String], extra: &[&str]) -> Result<String, MediaError> {
    let mut cmdline = release_cmdline(dir)?;
    for a in append
        .iter()
        .map(String::as_str)
        .chain(extra.iter().copied())
    {
        cmdline.push(' ');
        cmdline.push_str(a);
    }
    check_words(&cmdline).map_err(|reason| MediaError::Cmdline {
        dir: dir.into(),
        reason,
    })?;
    Ok(cmdline)
}

/// A registry URL as it is baked into a node's boot media (`gridos.registry=`): http or https,
/// with a host, no trailing `/`, words a boot script can carry, and never a loopback address,
/// which on the node is the node itself. Returns the URL as it goes in, or why not.
pub fn node_url(url: &str) -> Result<String, String> {
    let url = url.trim_end_matches('/');
    let Some(rest) = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
    else {
        return Err("a node needs an http:// or https:// URL".into());
    };
    check_words(url)?;
    let authority = rest.split('/').next().unwrap_or("");
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.split(':').next().unwrap_or(""),
    };
    if host.is_empty() || url.contains(' ') {
        return Err("no host".into());
    }
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.is_loopback());
    if loopback {
        return Err(format!(
            "the URL is baked into the node image, and {host} is a loopback address, which on \
             the node is the node itself; give the address nodes reach the registry at (a QEMU \
             guest on this machine: http://10.0.2.2:PORT)"
        ));
    }
    Ok(url.to_string())
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

/// A Secure Boot signing key and certificate (PEM files, as `sbsign` takes them).
#[derive(Debug, Clone)]
pub struct Signing {
    /// Private key.
    pub key: PathBuf,
    /// Certificate.
    pub cert: PathBuf,
}

/// How to make a USB image or ISO.
pub struct Options<'a> {
    /// Words after the release's command line (the lab's console settings, say).
    pub append: Vec<String>,
    /// Sign the unified kernel image for Secure Boot.
    pub signing: Option<Signing>,
    /// Called with each step, for a progress line on a terminal.
    pub progress: &'a (dyn Fn(&str) + Sync),
}

impl Default for Options<'_> {
    fn default() -> Self {
        Options {
            append: Vec::new(),
            signing: None,
            progress: &|_| {},
        }
    }
}

/// What [`usb::write`] or [`iso::write`] made.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Built {
    /// The image file.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// Size of the unified kernel image inside (UEFI).
    pub uki_bytes: u64,
    /// The kernel command line it boots with.
    pub cmdline: String,
    /// Whether the unified kernel image is signed for Secure Boot.
    pub signed: bool,
}

/// A release folder opened for making media: its files checked and its command line
/// extended.
pub(crate) struct Release {
    pub vmlinuz: PathBuf,
    pub initramfs: PathBuf,
    pub kernel_bytes: u64,
    pub initramfs_bytes: u64,
    pub cmdline: String,
}

impl Release {
    /// `append` from the caller, then `extra` from the medium itself.
    pub fn open(dir: &Path, append: &[String], extra: &[&str]) -> Result<Release, MediaError> {
        let cmdline = cmdline_with(dir, append, extra)?;
        let size = |file: &'static str| {
            std::fs::metadata(dir.join(file))
                .map(|m| m.len())
                .map_err(|source| MediaError::Release {
                    dir: dir.into(),
                    file,
                    source,
                })
        };
        Ok(Release {
            vmlinuz: dir.join("vmlinuz"),
            initramfs: dir.join("initramfs.img"),
            kernel_bytes: size("vmlinuz")?,
            initramfs_bytes: size("initramfs.img")?,
            cmdline,
        })
    }
}

/// The folder a file named by the user lives in.
pub fn parent_of(out: &Path) -> &Path {
    out.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// A scratch folder beside the output, so the finished image is renamed into place (never
/// copied) and a failed build leaves nothing behind: the folder goes when dropped.
pub fn scratch_dir(parent: &Path) -> Result<tempfile::TempDir, MediaError> {
    std::fs::create_dir_all(parent).map_err(|source| MediaError::Write {
        path: parent.into(),
        source,
    })?;
    tempfile::Builder::new()
        .prefix(".gridos-media.")
        .tempdir_in(parent)
        .map_err(|source| MediaError::Write {
            path: parent.into(),
            source,
        })
}

/// Moves a finished image into place in one rename and makes the rename durable.
pub(crate) fn publish(from: &Path, to: &Path) -> Result<(), MediaError> {
    let err = |source| MediaError::Write {
        path: to.into(),
        source,
    };
    std::fs::rename(from, to).map_err(err)?;
    atomicfile::sync_dir(parent_of(to)).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::node_url;

    #[test]
    fn only_a_registry_a_node_can_reach_is_baked() {
        assert_eq!(
            node_url("http://10.0.2.2:8480/").unwrap(),
            "http://10.0.2.2:8480"
        );
        assert!(node_url("https://registry.example").is_ok());
        assert!(node_url("https://[2001:db8::1]:443").is_ok());
        for bad in [
            "http://127.0.0.1:8480",
            "http://127.1.2.3",
            "http://localhost:8480",
            "http://LocalHost",
            "http://[::1]:8480",
            "http://[::1]",
            "http://[0:0:0:0:0:0:0:1]:8480",
            "ftp://registry.example",
            "registry.example",
            "http://",
            "http://a b",
            "http://x/$y",
        ] {
            assert!(node_url(bad).is_err(), "{bad}");
        }
    }
}
