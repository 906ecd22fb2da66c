//! OCI images: pulled from a distribution registry with `oci-client`, every blob checked
//! against its digest and its announced size, kept content-addressed on the cache partition
//! and unpacked once per layer, whiteouts in overlayfs' own form, so every container using
//! a layer shares one copy.
//!
//! ```text
//! <root>/blobs/sha256/<hex>     verified blobs: configs and compressed layers
//! <root>/layers/sha256/<hex>/   a layer's files, by the digest of its blob
//! <root>/tmp/                   downloads and unpacks in progress (emptied at open)
//! ```
//!
//! A blob or layer appears under its digest only complete: it is written in `tmp/`, synced
//! and renamed into place, so a crash leaves nothing half-made under a digest.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWrite;

/// Why an image could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The reference does not parse.
    #[error("image reference {reference:?}: {why}")]
    Reference {
        /// As the twin wrote it.
        reference: String,
        /// What is wrong with it.
        why: String,
    },
    /// The registry refused, is unreachable, or answered something that is not an image.
    #[error("pulling {reference}: {why}")]
    Registry {
        /// The image.
        reference: String,
        /// What went wrong.
        why: String,
    },
    /// A blob's bytes do not hash to the digest the manifest names (or run past its size).
    #[error("{reference}: blob {digest} {why}: refused")]
    Digest {
        /// The image.
        reference: String,
        /// The digest the manifest names.
        digest: String,
        /// What the bytes did.
        why: String,
    },
    /// The image needs more disk than the container reserved.
    #[error("{reference} needs {needs} bytes ({what}), more than the {limit} bytes of disk the container reserves")]
    TooLarge {
        /// The image.
        reference: String,
        /// Bytes it takes.
        needs: u64,
        /// Compressed layers, or unpacked files.
        what: &'static str,
        /// The container's SRU.
        limit: u64,
    },
    /// A layer of a kind this node does not unpack, or a broken archive.
    #[error("{reference}: layer {digest}: {why}")]
    Layer {
        /// The image.
        reference: String,
        /// The layer's blob digest.
        digest: String,
        /// What is wrong.
        why: String,
    },
    /// The image cache on disk failed.
    #[error("image cache {path}")]
    Io {
        /// File or directory involved.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What a container needs of its image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// The manifest's digest (`sha256:…`).
    pub digest: String,
    /// The unpacked layers, lowest first (overlayfs wants them highest first).
    pub layers: Vec<PathBuf>,
    /// The image's entrypoint.
    pub entrypoint: Vec<String>,
    /// The image's command (arguments to the entrypoint).
    pub cmd: Vec<String>,
    /// `NAME=value` pairs.
    pub env: Vec<String>,
    /// Working directory, `/` when the image names none.
    pub workdir: String,
    /// `user[:group]` as the image names it, empty for root.
    pub user: String,
    /// Bytes of the unpacked layers.
    pub unpacked_bytes: u64,
}

/// The part of an image config a container uses.
#[derive(Debug, Default, Deserialize)]
struct ConfigFile {
    #[serde(default)]
    config: Option<RunConfig>,
}

#[derive(Debug, Default, Deserialize)]
struct RunConfig {
    #[serde(rename = "Entrypoint", default)]
    entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default)]
    cmd: Option<Vec<String>>,
    #[serde(rename = "Env", default)]
    env: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    workdir: Option<String>,
    #[serde(rename = "User", default)]
    user: Option<String>,
}

/// The client's reference for `image`, taken apart by gridtypes' own parser (the one the
/// deployment was validated with). Not oci-spec's `FromStr`: its regular expression pulls a
/// whole regex engine, 0.4 MB, into the node's executable.
fn oci_reference(image: &str) -> Result<Reference, ImageError> {
    let r = gridtypes::deployment::parse_image(image).map_err(|why| ImageError::Reference {
        reference: image.to_string(),
        why: why.to_string(),
    })?;
    // Docker Hub's conventions, as every client has them.
    let registry = r.registry.unwrap_or_else(|| "docker.io".to_string());
    let repository = if registry == "docker.io" && !r.repository.contains('/') {
        format!("library/{}", r.repository)
    } else {
        r.repository
    };
    Ok(match (r.tag, r.digest) {
        (Some(tag), Some(digest)) => {
            Reference::with_tag_and_digest(registry, repository, tag, digest)
        }
        (None, Some(digest)) => Reference::with_digest(registry, repository, digest),
        (tag, None) => {
            Reference::with_tag(registry, repository, tag.unwrap_or_else(|| "latest".into()))
        }
    })
}

/// Largest image config read (they are a few kB).
const MAX_CONFIG_BYTES: i64 = 1 << 20;

/// The content-addressed image cache.
pub struct ImageStore {
    root: PathBuf,
    client: Client,
}

impl std::fmt::Debug for ImageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageStore")
            .field("root", &self.root)
            .finish()
    }
}

impl ImageStore {
    /// Opens the cache at `root`, dropping whatever a crash left in `tmp/`. Registries in
    /// `plain_http` (`host:port`) are spoken to without TLS: a registry on the farm's own
    /// network or the lab's 127.0.0.1, never the default.
    pub fn open(root: &Path, plain_http: Vec<String>) -> Result<ImageStore, ImageError> {
        let tmp = root.join("tmp");
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
        }
        for d in ["blobs/sha256", "layers/sha256", "tmp"] {
            let p = root.join(d);
            fs::create_dir_all(&p).map_err(io_err(&p))?;
        }
        let protocol = if plain_http.is_empty() {
            ClientProtocol::Https
        } else {
            ClientProtocol::HttpsExcept(plain_http)
        };
        let client = Client::new(ClientConfig {
            protocol,
            ..ClientConfig::default()
        });
        Ok(ImageStore {
            root: root.to_path_buf(),
            client,
        })
    }

    /// Pulls `reference` (what is cached is not fetched again) and unpacks its layers,
    /// refusing an image whose layers, compressed or unpacked, need more than `max_bytes`.
    pub async fn pull(&self, reference: &str, max_bytes: u64) -> Result<Image, ImageError> {
        let r = oci_reference(reference)?;
        let registry_err = |e: oci_client::errors::OciDistributionError| ImageError::Registry {
            reference: reference.to_string(),
            why: e.to_string(),
        };
        let (manifest, digest) = self
            .client
            .pull_image_manifest(&r, &RegistryAuth::Anonymous)
            .await
            .map_err(registry_err)?;
        let compressed: u64 = manifest
            .layers
            .iter()
            .map(|l| u64::try_from(l.size).unwrap_or(u64::MAX))
            .fold(0, u64::saturating_add);
        if compressed > max_bytes {
            return Err(ImageError::TooLarge {
                reference: reference.to_string(),
                needs: compressed,
                what: "compressed layers",
                limit: max_bytes,
            });
        }
        if manifest.config.size > MAX_CONFIG_BYTES {
            return Err(ImageError::Registry {
                reference: reference.to_string(),
                why: format!("image config of {} bytes", manifest.config.size),
            });
        }
        let config_path = self.blob(&r, reference, &manifest.config).await?;
        let config: ConfigFile =
            serde_json::from_slice(&fs::read(&config_path).map_err(io_err(&config_path))?)
                .map_err(|e| ImageError::Registry {
                    reference: reference.to_string(),
                    why: format!("image config is not JSON of an image: {e}"),
                })?;
        let mut layers = Vec::new();
        let mut unpacked = 0u64;
        for l in &manifest.layers {
            let blob = self.blob(&r, reference, l).await?;
            let left = max_bytes.saturating_sub(unpacked);
            let (dir, bytes) = self.unpacked(reference, l, &blob, left).await?;
            unpacked = unpacked.saturating_add(bytes);
            if unpacked > max_bytes {
                return Err(ImageError::TooLarge {
                    reference: reference.to_string(),
                    needs: unpacked,
                    what: "unpacked files",
                    limit: max_bytes,
                });
            }
            layers.push(dir);
        }
        let run = config.config.unwrap_or_default();
        Ok(Image {
            digest,
            layers,
            entrypoint: run.entrypoint.unwrap_or_default(),
            cmd: run.cmd.unwrap_or_default(),
            env: run.env.unwrap_or_default(),
            workdir: run.workdir.filter(|w| !w.is_empty()).unwrap_or("/".into()),
            user: run.user.unwrap_or_default(),
            unpacked_bytes: unpacked,
        })
    }

    /// The path of a verified blob, downloading it when it is not cached.
    async fn blob(
        &self,
        r: &Reference,
        reference: &str,
        d: &OciDescriptor,
    ) -> Result<PathBuf, ImageError> {
        let hex = sha256_hex(reference, &d.digest)?;
        let path = self.root.join("blobs/sha256").join(hex);
        if path.exists() {
            return Ok(path);
        }
        let size = u64::try_from(d.size).map_err(|_| ImageError::Digest {
            reference: reference.to_string(),
            digest: d.digest.clone(),
            why: format!("has a negative size {}", d.size),
        })?;
        let tmp = self
            .root
            .join("tmp")
            .join(format!("blob-{hex}-{}", unique()));
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .await
            .map_err(io_err(&tmp))?;
        let mut out = Bounded {
            inner: file,
            left: size,
        };
        // oci-client hashes while it streams and refuses a mismatch at the end; the bound
        // stops a registry that sends more than the manifest announced from filling the disk.
        let pulled = self.client.pull_blob(r, d, &mut out).await;
        if let Err(e) = pulled {
            let _ = fs::remove_file(&tmp);
            let why = e.to_string();
            let digest_fault = why.contains("digest") || why.contains("more bytes than");
            return Err(if digest_fault {
                ImageError::Digest {
                    reference: reference.to_string(),
                    digest: d.digest.clone(),
                    why,
                }
            } else {
                ImageError::Registry {
                    reference: reference.to_string(),
                    why,
                }
            });
        }
        out.inner.sync_all().await.map_err(io_err(&tmp))?;
        drop(out);
        // Checked again here: the cache must never hold a blob under a digest it does not
        // have, whatever the client library does.
        let got = file_sha256(&tmp).map_err(io_err(&tmp))?;
        if got != hex {
            let _ = fs::remove_file(&tmp);
            return Err(ImageError::Digest {
                reference: reference.to_string(),
                digest: d.digest.clone(),
                why: format!("hashes to sha256:{got}"),
            });
        }
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        Ok(path)
    }

    /// The directory of an unpacked layer and its size, unpacking it when it is not cached.
    async fn unpacked(
        &self,
        reference: &str,
        d: &OciDescriptor,
        blob: &Path,
        max_bytes: u64,
    ) -> Result<(PathBuf, u64), ImageError> {
        let hex = sha256_hex(reference, &d.digest)?;
        let dir = self.root.join("layers/sha256").join(hex);
        let size_file = self.root.join("layers/sha256").join(format!("{hex}.size"));
        if dir.is_dir() {
            let size = fs::read_to_string(&size_file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
            return Ok((dir, size));
        }
        let gzip = match d.media_type.as_str() {
            oci_client::manifest::IMAGE_LAYER_GZIP_MEDIA_TYPE
            | oci_client::manifest::IMAGE_DOCKER_LAYER_GZIP_MEDIA_TYPE => true,
            oci_client::manifest::IMAGE_LAYER_MEDIA_TYPE
            | oci_client::manifest::IMAGE_DOCKER_LAYER_TAR_MEDIA_TYPE => false,
            other => {
                return Err(ImageError::Layer {
                    reference: reference.to_string(),
                    digest: d.digest.clone(),
                    why: format!("media type {other:?} is not a tar or tar+gzip layer"),
                })
            }
        };
        let tmp = self
            .root
            .join("tmp")
            .join(format!("layer-{hex}-{}", unique()));
        let (blob, tmp2) = (blob.to_path_buf(), tmp.clone());
        let done = tokio::task::spawn_blocking(move || unpack(&blob, gzip, &tmp2, max_bytes))
            .await
            .map_err(|e| ImageError::Layer {
                reference: reference.to_string(),
                digest: d.digest.clone(),
                why: format!("unpacking task failed: {e}"),
            })?;
        let bytes = match done {
            Ok(b) => b,
            Err(why) => {
                let _ = fs::remove_dir_all(&tmp);
                return Err(match why {
                    Unpack::TooLarge(needs) => ImageError::TooLarge {
                        reference: reference.to_string(),
                        needs,
                        what: "unpacked files",
                        limit: max_bytes,
                    },
                    Unpack::Bad(why) => ImageError::Layer {
                        reference: reference.to_string(),
                        digest: d.digest.clone(),
                        why,
                    },
                });
            }
        };
        atomicfile::write(&size_file, bytes.to_string().as_bytes(), 0o644)
            .map_err(io_err(&size_file))?;
        if let Err(e) = fs::rename(&tmp, &dir) {
            // Another pull of the same layer finished first: its copy is as good as ours.
            let _ = fs::remove_dir_all(&tmp);
            if !dir.is_dir() {
                return Err(io_err(&dir)(e));
            }
        }
        Ok((dir, bytes))
    }
}

/// A name no other download or unpack in this process (or an earlier one: `tmp/` is emptied
/// at open) uses, so two pulls sharing a layer never write into one file.
fn unique() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// The hex of a `sha256:` digest; other algorithms are refused.
fn sha256_hex<'a>(reference: &str, digest: &'a str) -> Result<&'a str, ImageError> {
    digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .ok_or_else(|| ImageError::Digest {
            reference: reference.to_string(),
            digest: digest.to_string(),
            why: "is not a sha256 digest".into(),
        })
}

fn file_sha256(path: &Path) -> io::Result<String> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// An `AsyncWrite` that fails once more than `left` bytes come.
struct Bounded<W> {
    inner: W,
    left: u64,
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Bounded<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.len() as u64 > self.left {
            return Poll::Ready(Err(io::Error::other(
                "the registry sent more bytes than the manifest announced",
            )));
        }
        let this = &mut *self;
        let n = std::task::ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        this.left -= n as u64;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Why a layer did not unpack.
enum Unpack {
    /// More than the limit; how much it had reached.
    TooLarge(u64),
    /// A broken or hostile archive.
    Bad(String),
}

/// The overlayfs whiteout prefix of the OCI layer format.
const WHITEOUT: &str = ".wh.";
/// Marks a directory whose lower layers' content is hidden.
const OPAQUE: &str = ".wh..wh..opq";

/// Unpacks a layer into `dst`, whiteouts turned into overlayfs' form (a 0/0 character
/// device for a removed file, `trusted.overlay.opaque` on a directory that hides the lower
/// ones), counting file bytes against `max_bytes`. Entries are unpacked by the `tar` crate's
/// `unpack_in`, which refuses paths that leave `dst` (`..`, absolute paths, and links
/// followed out of it).
fn unpack(blob: &Path, gzip: bool, dst: &Path, max_bytes: u64) -> Result<u64, Unpack> {
    // tar's errors keep the reason in their source.
    let bad = |what: &str, e: &dyn std::error::Error| {
        Unpack::Bad(format!("{what}: {}", svclog::error_chain(e)))
    };
    fs::create_dir_all(dst).map_err(|e| bad("creating the layer directory", &e))?;
    let file = File::open(blob).map_err(|e| bad("opening the blob", &e))?;
    let reader: Box<dyn Read> = if gzip {
        Box::new(flate2::read::GzDecoder::new(io::BufReader::new(file)))
    } else {
        Box::new(io::BufReader::new(file))
    };
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_unpack_xattrs(true);
    archive.set_overwrite(true);
    let mut total = 0u64;
    let entries = archive
        .entries()
        .map_err(|e| bad("reading the archive", &e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad("reading an entry", &e))?;
        let path = entry
            .path()
            .map_err(|e| bad("an entry's path", &e))?
            .into_owned();
        total = total.saturating_add(entry.header().size().unwrap_or(0));
        if total > max_bytes {
            return Err(Unpack::TooLarge(total));
        }
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if let Some(hidden) = name.strip_prefix(WHITEOUT) {
            let parent = safe_parent(dst, &path).map_err(|e| bad("a whiteout's path", &e))?;
            fs::create_dir_all(&parent).map_err(|e| bad("a whiteout's directory", &e))?;
            if name == OPAQUE {
                xattr_set(&parent, "trusted.overlay.opaque", b"y")
                    .map_err(|e| bad("marking an opaque directory", &e))?;
            } else {
                whiteout(&parent.join(hidden)).map_err(|e| bad("a whiteout", &e))?;
            }
            continue;
        }
        let inside = entry
            .unpack_in(dst)
            .map_err(|e| bad(&format!("unpacking {}", path.display()), &e))?;
        // `tar` skips such an entry quietly; a layer that carries one is refused.
        if !inside {
            return Err(Unpack::Bad(format!("{} leaves the layer", path.display())));
        }
    }
    // Synced before the rename makes the layer visible under its digest.
    File::open(dst)
        .and_then(|d| d.sync_all())
        .map_err(|e| bad("syncing the layer", &e))?;
    Ok(total)
}

/// `dst` joined with the parent of an archive path, refused when it would leave `dst`.
fn safe_parent(dst: &Path, path: &Path) -> io::Result<PathBuf> {
    let mut out = dst.to_path_buf();
    let parent = path.parent().unwrap_or(Path::new(""));
    for c in parent.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            _ => {
                return Err(io::Error::other(format!(
                    "{} leaves the layer",
                    path.display()
                )))
            }
        }
    }
    // A symlink among the parents could lead out of the layer.
    let real = if out.exists() {
        out.canonicalize()?
    } else {
        out.clone()
    };
    if !real.starts_with(dst.canonicalize()?) {
        return Err(io::Error::other(format!(
            "{} leaves the layer through a link",
            path.display()
        )));
    }
    Ok(out)
}

/// An overlayfs whiteout: a character device 0/0.
fn whiteout(path: &Path) -> io::Result<()> {
    if path.symlink_metadata().is_ok() {
        fs::remove_file(path).or_else(|_| fs::remove_dir_all(path))?;
    }
    nix::sys::stat::mknod(
        path,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::empty(),
        nix::sys::stat::makedev(0, 0),
    )
    .map_err(io::Error::from)
}

fn xattr_set(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    nix_xattr::set(path, name, value)
}

/// `setxattr(2)` through libc (nix has no xattr calls).
mod nix_xattr {
    use std::ffi::CString;
    use std::io;
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;

    pub fn set(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
        let p = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
        let n = CString::new(name).map_err(io::Error::other)?;
        // SAFETY: both strings are NUL-terminated and live across the call; value points to
        // value.len() readable bytes; setxattr does not keep any pointer.
        let rc = unsafe {
            libc::setxattr(
                p.as_ptr(),
                n.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

#[cfg(test)]
#[allow(clippy::panic)]
mod reference_tests {
    use super::*;

    #[test]
    fn references_resolve_like_every_client() {
        let r = oci_reference("busybox").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.whole(), "docker.io/library/busybox:latest");
        let r = oci_reference("10.0.2.2:5000/gridos/busybox:1").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (r.registry(), r.repository(), r.tag()),
            ("10.0.2.2:5000", "gridos/busybox", Some("1"))
        );
        let d = format!("sha256:{}", "a".repeat(64));
        let r = oci_reference(&format!("ghcr.io/x/y@{d}")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((r.tag(), r.digest()), (None, Some(d.as_str())));
        assert!(matches!(
            oci_reference("UPPER/case"),
            Err(ImageError::Reference { .. })
        ));
    }
}
