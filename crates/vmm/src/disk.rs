//! Disk images a twin boots from (raw or qcow2, as KubeVirt's containerDisk carries them):
//! what an image is, checked before QEMU or `qemu-img` ever opens it, and its conversion
//! into the VM's own raw root disk.
//!
//! A qcow2 header can name other files: a backing file or an external data file. QEMU would
//! open them on the host, so a twin's image could read the node's own files (its key, a
//! whole disk) into its VM. Such images are refused. The root disk is always raw, so its
//! format never depends on bytes the guest can write.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::Qemu;

/// Why an image cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// Reading the image.
    #[error("reading the disk image {path}")]
    Read {
        /// The image.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A qcow2 image this node will not open.
    #[error("the disk image {path}: {why}")]
    Refused {
        /// The image.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// `qemu-img convert` failed.
    #[error("converting {path} to raw: {why}")]
    Convert {
        /// The image.
        path: PathBuf,
        /// qemu-img's words or the spawn error.
        why: String,
    },
}

/// The formats a disk image may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    /// Bytes as the guest sees them.
    Raw,
    /// QEMU's copy-on-write format.
    Qcow2,
}

/// A disk image, inspected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskImage {
    /// Its format.
    pub format: ImageFormat,
    /// The size of the disk the guest sees, in bytes.
    pub virtual_size: u64,
}

const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";
/// qcow2 v3 incompatible feature bit: the data lives in an external file.
const EXTERNAL_DATA_FILE: u64 = 1 << 2;
/// Largest disk an image may describe (16 PiB, as a reservation may hold).
const MAX_VIRTUAL_SIZE: u64 = 1 << 54;

fn be64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(x)
}

/// What the image at `path` is: qcow2 by its magic, raw otherwise. A qcow2 image that names
/// a backing file or an external data file, has an unknown version or an absurd size, is
/// refused.
pub fn inspect(path: &Path) -> Result<DiskImage, DiskError> {
    let read = |source| DiskError::Read {
        path: path.to_path_buf(),
        source,
    };
    let refuse = |why: String| DiskError::Refused {
        path: path.to_path_buf(),
        why,
    };
    let mut f = std::fs::File::open(path).map_err(read)?;
    let len = f.metadata().map_err(read)?.len();
    let mut head = [0u8; 104];
    let mut got = 0;
    while got < head.len() {
        match f.read(&mut head[got..]).map_err(read)? {
            0 => break,
            n => got += n,
        }
    }
    if got < 4 || head[..4] != QCOW2_MAGIC {
        return Ok(DiskImage {
            format: ImageFormat::Raw,
            virtual_size: len,
        });
    }
    if got < 72 {
        return Err(refuse("a qcow2 header cut short".into()));
    }
    let version = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
    if version != 2 && version != 3 {
        return Err(refuse(format!(
            "qcow2 version {version}: only 2 and 3 are read"
        )));
    }
    if be64(&head, 8) != 0 {
        return Err(refuse(
            "it names a backing file, which would be opened on the node: flatten it first \
             (qemu-img convert)"
                .into(),
        ));
    }
    if version == 3 {
        if got < 104 {
            return Err(refuse("a qcow2 v3 header cut short".into()));
        }
        if be64(&head, 72) & EXTERNAL_DATA_FILE != 0 {
            return Err(refuse(
                "its data is in an external file, which would be opened on the node".into(),
            ));
        }
    }
    let virtual_size = be64(&head, 24);
    if virtual_size == 0 || virtual_size > MAX_VIRTUAL_SIZE {
        return Err(refuse(format!(
            "a disk of {virtual_size} bytes: more than 0 and at most 16 PiB"
        )));
    }
    Ok(DiskImage {
        format: ImageFormat::Qcow2,
        virtual_size,
    })
}

/// Longest a conversion may take: a 1 GiB image (the most a VM image may unpack to) converts
/// in well under a minute; a hostile one must not hold the runtime for ever.
pub const CONVERT_TIMEOUT: Duration = Duration::from_secs(600);

/// Writes the guest's view of the qcow2 image `src` to the raw file `dst` with `qemu-img`
/// (the one beside `qemu`), killed if it is not done within `timeout`. `src` must have
/// passed [`inspect`].
pub fn qcow2_to_raw(
    qemu: &Qemu,
    src: &Path,
    dst: &Path,
    timeout: Duration,
) -> Result<(), DiskError> {
    let fail = |why: String| DiskError::Convert {
        path: src.to_path_buf(),
        why,
    };
    let mut child = qemu
        .img_command()
        // The format is given, never probed: the header was checked as qcow2.
        .args(["convert", "-q", "-f", "qcow2", "-O", "raw"])
        .arg(src)
        .arg(dst)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(hosttools::spawn_error("qemu-img", e).to_string()))?;
    // Read aside, so that a chatty qemu-img never blocks on a full pipe.
    let stderr = child.stderr.take();
    let said = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut e) = stderr {
            let _ = e.read_to_string(&mut text);
        }
        text
    });
    let status = match hosttools::wait_within(&mut child, timeout) {
        Ok(Some(status)) => Ok(status),
        Ok(None) => Err(format!("not done after {timeout:?}: stopped")),
        Err(e) => Err(format!("waiting for qemu-img: {e}")),
    };
    let said = said.join().unwrap_or_default();
    match status {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(fail(format!("{s}: {}", said.trim()))),
        Err(why) => Err(fail(why)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qcow2(version: u32, backing: u64, incompatible: u64, size: u64) -> Vec<u8> {
        let mut h = vec![0u8; 104];
        h[..4].copy_from_slice(&QCOW2_MAGIC);
        h[4..8].copy_from_slice(&version.to_be_bytes());
        h[8..16].copy_from_slice(&backing.to_be_bytes());
        h[24..32].copy_from_slice(&size.to_be_bytes());
        h[72..80].copy_from_slice(&incompatible.to_be_bytes());
        h
    }

    #[test]
    fn images_are_told_apart_and_dangerous_qcow2_refused() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("disk.img");
        let check = |bytes: &[u8]| {
            std::fs::write(&p, bytes).unwrap();
            inspect(&p)
        };
        assert_eq!(
            check(&[0u8; 4096]).unwrap(),
            DiskImage {
                format: ImageFormat::Raw,
                virtual_size: 4096
            }
        );
        assert_eq!(check(b"QF").unwrap().format, ImageFormat::Raw);
        assert_eq!(
            check(&qcow2(3, 0, 0, 1 << 30)).unwrap(),
            DiskImage {
                format: ImageFormat::Qcow2,
                virtual_size: 1 << 30
            }
        );
        assert_eq!(
            check(&qcow2(2, 0, 0, 1 << 20)[..72]).unwrap().virtual_size,
            1 << 20
        );
        let refused = |bytes: Vec<u8>, want: &str| {
            let e = check(&bytes).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        };
        refused(qcow2(3, 4096, 0, 1 << 30), "backing file");
        refused(qcow2(3, 0, EXTERNAL_DATA_FILE, 1 << 30), "external file");
        refused(qcow2(4, 0, 0, 1 << 30), "version 4");
        refused(qcow2(3, 0, 0, 0), "0 bytes");
        refused(qcow2(3, 0, 0, u64::MAX), "16 PiB");
        refused(qcow2(3, 0, 0, 1 << 30)[..80].to_vec(), "cut short");
        assert!(matches!(
            inspect(&t.path().join("none")),
            Err(DiskError::Read { .. })
        ));
    }

    /// A `qemu-img` that fails says why; one that hangs is stopped at the deadline. Scripts
    /// stand in for it beside a QEMU path, where [`Qemu::host`] finds it.
    #[test]
    fn a_failing_or_hanging_conversion_ends_with_the_reason() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let img = t.path().join("qemu-img");
        let (src, dst) = (t.path().join("in.qcow2"), t.path().join("out.raw"));
        let script = |body: &str| {
            std::fs::write(&img, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&img, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        script("echo 'Could not open: boom' >&2; exit 3");
        let qemu = Qemu::host(t.path().join("qemu-system-x86_64"));
        let e = qcow2_to_raw(&qemu, &src, &dst, Duration::from_secs(30))
            .unwrap_err()
            .to_string();
        assert!(e.contains("boom") && e.contains("3"), "{e}");
        script("exec sleep 30");
        let t0 = std::time::Instant::now();
        let e = qcow2_to_raw(&qemu, &src, &dst, Duration::from_millis(300))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not done after"), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
        script("exit 0");
        qcow2_to_raw(&qemu, &src, &dst, Duration::from_secs(30)).unwrap();
    }
}
