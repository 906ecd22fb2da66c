//! System extensions on the node: programs too big for the base image (the VM runtime:
//! QEMU and its libraries) arrive as a squashfs image from the registry the first time a
//! workload needs them, are checked against the release key baked into the node's image,
//! kept on the cache partition and mounted read-only.
//!
//! Trust comes from the release key only: the registry relays a signed manifest
//! (`gridtypes::extension`) naming the image's SHA-256 and size, and the node refuses any
//! manifest the key did not sign and any image that does not match it, leaving nothing
//! behind. A verified manifest is kept beside the image, so a node whose registry is down
//! still mounts what it verified before; the image is hashed again before every mount.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ed25519_dalek::VerifyingKey;
use gridtypes::extension::{name_ok, ExtensionError, Manifest, SignedManifest, MAX_SIGNED_BYTES};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

/// Why an extension is not available.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Refused: bad signature, wrong signer, malformed, or an image that does not match.
    #[error("extension {name}: {source}")]
    Refused {
        /// The extension.
        name: String,
        /// Why.
        source: ExtensionError,
    },
    /// Not a name an extension can have.
    #[error("extension name {0:?}: 1 to 32 of a-z, 0-9 and '-'")]
    BadName(String),
    /// The registry could not be reached or answered an error, and nothing verified is cached.
    #[error("extension {name}: fetching {url}: {reason}")]
    Fetch {
        /// The extension.
        name: String,
        /// What was fetched.
        url: String,
        /// Why it failed.
        reason: String,
    },
    /// A file on the cache partition.
    #[error("extension {name}: {what} {path}: {source}")]
    Io {
        /// The extension.
        name: String,
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Attaching or mounting failed.
    #[error("extension {name}: mounting {image}: {reason}")]
    Mount {
        /// The extension.
        name: String,
        /// The image.
        image: PathBuf,
        /// Why.
        reason: String,
    },
}

/// A mounted, verified extension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mounted {
    /// Where its files are.
    pub root: PathBuf,
    /// What the release key vouched for.
    pub manifest: Manifest,
    /// It was downloaded now (not found in the cache).
    pub downloaded: bool,
}

/// The node's extensions: where they are cached and mounted, and whom to trust.
#[derive(Debug, Clone)]
pub struct Extensions {
    /// Images and their manifests (on the cache partition).
    pub cache: PathBuf,
    /// Mount points, one folder per extension.
    pub mounts: PathBuf,
    /// The release key: the only key an extension may be signed with.
    pub release: VerifyingKey,
    /// The registry's base URL.
    pub registry: String,
    /// The `losetup` program (util-linux).
    pub losetup: PathBuf,
}

fn hash_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let r = f.read(&mut buf)?;
        if r == 0 {
            break;
        }
        h.update(&buf[..r]);
        n += r as u64;
    }
    Ok((hex::encode(h.finalize()), n))
}

/// Whether `dir` is a mount point: its device differs from its parent's.
fn is_mount_point(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(d), Some(Ok(p))) = (std::fs::metadata(dir), dir.parent().map(std::fs::metadata)) else {
        return false;
    };
    d.dev() != p.dev()
}

impl Extensions {
    fn io(
        &self,
        name: &str,
        what: &'static str,
        path: &Path,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let (name, path) = (name.to_string(), path.to_path_buf());
        move |source| Error::Io {
            name,
            what,
            path,
            source,
        }
    }

    fn refused(name: &str) -> impl FnOnce(ExtensionError) -> Error {
        let name = name.to_string();
        move |source| Error::Refused { name, source }
    }

    fn manifest_path(&self, name: &str) -> PathBuf {
        self.cache.join(format!("{name}.json"))
    }

    fn image_path(&self, m: &Manifest) -> PathBuf {
        self.cache.join(format!("{}-{}.sqfs", m.name, m.sha256))
    }

    /// The extension `name`, mounted: from the mount already there, else from the cache, else
    /// downloaded from the registry. Each path verifies the manifest and the image first.
    pub async fn ensure(&self, http: &reqwest::Client, name: &str) -> Result<Mounted, Error> {
        if !name_ok(name) {
            return Err(Error::BadName(name.into()));
        }
        let root = self.mounts.join(name);
        if is_mount_point(&root) {
            if let Ok(m) = self.cached_manifest(name) {
                return Ok(Mounted {
                    root,
                    manifest: m,
                    downloaded: false,
                });
            }
        }
        let manifest = match self.fetch_manifest(http, name).await {
            Ok((m, signed)) => {
                tokio::fs::create_dir_all(&self.cache)
                    .await
                    .map_err(self.io(name, "creating", &self.cache))?;
                let path = self.manifest_path(name);
                atomicfile::write(&path, &signed, 0o644)
                    .map_err(self.io(name, "writing", &path))?;
                m
            }
            // Only an unreachable registry falls back to the cache: a refused manifest is an
            // error whatever the cache holds.
            Err(e @ Error::Fetch { .. }) => match self.cached_manifest(name) {
                Ok(m) => {
                    tracing::warn!(extension = name, error = %e, "registry unreachable; using the cached extension");
                    m
                }
                Err(_) => return Err(e),
            },
            Err(e) => return Err(e),
        };
        let image = self.image_path(&manifest);
        let mut downloaded = false;
        let cached_ok = match hash_file(&image) {
            Ok((sha, size)) => manifest.check_image(&sha, size).is_ok(),
            Err(_) => false,
        };
        if !cached_ok {
            self.download(http, &manifest, &image).await?;
            downloaded = true;
        }
        self.remove_stale(&manifest);
        self.mount(&manifest, &image, &root).await?;
        // Hashed after the mount too: an image swapped on disk between the check and the
        // attach is caught and unmounted.
        let (sha, size) = hash_file(&image).map_err(self.io(name, "reading", &image))?;
        if let Err(e) = manifest.check_image(&sha, size) {
            let _ = nix::mount::umount2(&root, nix::mount::MntFlags::MNT_DETACH);
            return Err(Self::refused(name)(e));
        }
        tracing::info!(extension = name, version = %manifest.version, downloaded, root = %root.display(), "extension mounted");
        Ok(Mounted {
            root,
            manifest,
            downloaded,
        })
    }

    fn cached_manifest(&self, name: &str) -> Result<Manifest, Error> {
        let path = self.manifest_path(name);
        let bytes = std::fs::read(&path).map_err(self.io(name, "reading", &path))?;
        let signed = SignedManifest::from_json(&bytes).map_err(Self::refused(name))?;
        signed.verify(&self.release).map_err(Self::refused(name))
    }

    /// The registry's URL for extension `name` (`tail`: `""` for the manifest, `"/image"`),
    /// and the error a failed fetch of it becomes.
    fn endpoint(&self, name: &str, tail: &str) -> (String, impl Fn(String) -> Error) {
        let url = format!(
            "{}{}/{name}{tail}",
            self.registry.trim_end_matches('/'),
            gridapi::paths::EXTENSIONS
        );
        let (name, at) = (name.to_string(), url.clone());
        (url, move |reason| Error::Fetch {
            name: name.clone(),
            url: at.clone(),
            reason,
        })
    }

    async fn fetch_manifest(
        &self,
        http: &reqwest::Client,
        name: &str,
    ) -> Result<(Manifest, Vec<u8>), Error> {
        let (url, fetch) = self.endpoint(name, "");
        let mut resp = http
            .get(&url)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map_err(|e| fetch(e.to_string()))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            return Err(fetch(format!(
                "{status}: {}",
                body.chars().take(300).collect::<String>()
            )));
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| fetch(e.to_string()))? {
            if bytes.len() + chunk.len() > MAX_SIGNED_BYTES {
                return Err(Self::refused(name)(ExtensionError::Malformed(format!(
                    "the manifest is larger than {MAX_SIGNED_BYTES} bytes"
                ))));
            }
            bytes.extend_from_slice(&chunk);
        }
        let signed = SignedManifest::from_json(&bytes).map_err(Self::refused(name))?;
        let m = signed.verify(&self.release).map_err(Self::refused(name))?;
        if m.name != name {
            return Err(Self::refused(name)(ExtensionError::Invalid(format!(
                "the manifest is for {:?}",
                m.name
            ))));
        }
        Ok((m, bytes))
    }

    /// Streams the image into a temporary file, hashing as it goes and stopping at the
    /// manifest's size; renames it into place only when it matches.
    async fn download(
        &self,
        http: &reqwest::Client,
        m: &Manifest,
        image: &Path,
    ) -> Result<(), Error> {
        let name = m.name.as_str();
        let (url, fetch) = self.endpoint(name, "/image");
        let tmp = self
            .cache
            .join(format!("{}{name}.download", atomicfile::TEMP_PREFIX));
        let result = async {
            let mut resp = http
                .get(&url)
                .send()
                .await
                .map_err(|e| fetch(e.to_string()))?;
            if !resp.status().is_success() {
                return Err(fetch(resp.status().to_string()));
            }
            let mut file = tokio::fs::File::create(&tmp)
                .await
                .map_err(self.io(name, "creating", &tmp))?;
            let mut h = Sha256::new();
            let mut got = 0u64;
            let mut next_note = m.size / 4;
            while let Some(chunk) = resp.chunk().await.map_err(|e| fetch(e.to_string()))? {
                got += chunk.len() as u64;
                if got > m.size {
                    return Err(Self::refused(name)(ExtensionError::ImageMismatch {
                        name: name.into(),
                        reason: format!("more than the {} bytes the manifest says", m.size),
                    }));
                }
                h.update(&chunk);
                file.write_all(&chunk)
                    .await
                    .map_err(self.io(name, "writing", &tmp))?;
                if got >= next_note && got < m.size {
                    tracing::info!(extension = name, bytes = got, of = m.size, "downloading");
                    next_note += m.size / 4;
                }
            }
            m.check_image(&hex::encode(h.finalize()), got)
                .map_err(Self::refused(name))?;
            file.sync_all()
                .await
                .map_err(self.io(name, "syncing", &tmp))?;
            tokio::fs::rename(&tmp, image)
                .await
                .map_err(self.io(name, "renaming", &tmp))?;
            atomicfile::sync_dir(&self.cache).map_err(self.io(name, "syncing", &self.cache))
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }

    /// Removes images of `m.name` other than the verified one (an older release).
    fn remove_stale(&self, m: &Manifest) {
        let keep = self.image_path(m);
        let prefix = format!("{}-", m.name);
        let Ok(rd) = std::fs::read_dir(&self.cache) else {
            return;
        };
        for e in rd.filter_map(Result::ok) {
            let p = e.path();
            let stale = p != keep
                && p.extension().is_some_and(|x| x == "sqfs")
                && e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_prefix(&prefix))
                    .is_some_and(|rest| rest.len() == 64 + 5);
            if stale {
                let _ = std::fs::remove_file(&p);
            }
        }
    }

    async fn mount(&self, m: &Manifest, image: &Path, root: &Path) -> Result<(), Error> {
        let name = m.name.as_str();
        let mount_err = |reason: String| Error::Mount {
            name: name.into(),
            image: image.to_path_buf(),
            reason,
        };
        if is_mount_point(root) {
            nix::mount::umount2(root, nix::mount::MntFlags::MNT_DETACH)
                .map_err(|e| mount_err(format!("unmounting the old {}: {e}", root.display())))?;
        }
        tokio::fs::create_dir_all(root)
            .await
            .map_err(self.io(name, "creating", root))?;
        let out = tokio::process::Command::new(&self.losetup)
            .args(["--find", "--show", "--read-only"])
            .arg(image)
            .output()
            .await
            .map_err(|e| {
                mount_err(hosttools::spawn_error(&self.losetup.to_string_lossy(), e).to_string())
            })?;
        if !out.status.success() {
            return Err(mount_err(format!(
                "losetup: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
        use nix::mount::MsFlags;
        let flags = MsFlags::MS_RDONLY | MsFlags::MS_NODEV | MsFlags::MS_NOSUID;
        if let Err(e) = nix::mount::mount(
            Some(dev.as_str()),
            root,
            Some("squashfs"),
            flags,
            None::<&str>,
        ) {
            let _ = std::process::Command::new(&self.losetup)
                .arg("-d")
                .arg(&dev)
                .output();
            return Err(mount_err(format!("mount {dev} on {}: {e}", root.display())));
        }
        // Detached when unmounted: the loop device is not left behind.
        let _ = std::process::Command::new(&self.losetup)
            .arg("-d")
            .arg(&dev)
            .output();
        Ok(())
    }
}
