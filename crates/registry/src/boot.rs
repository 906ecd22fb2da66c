//! Boot media per farm, as Zero-OS's 0-bootstrap serves them: a farmer downloads a USB image
//! or ISO that boots straight into their farm, and a rack netboots from an iPXE script, all
//! made from the release folder the operator points the registry at (`--release`), with the
//! farm and this registry's public URL (`--public-url`) baked in.
//!
//! - `GET /boot/{farm}/ipxe`: the iPXE script; it loads `vmlinuz` and `initramfs.img` from
//!   beside itself (`/boot/{farm}/vmlinuz`, `/boot/{farm}/initramfs.img`).
//! - `GET /boot/{farm}/usb.img`, `GET /boot/{farm}/iso`: built on first request, one build at
//!   a time, into `--boot-cache`; later requests get the cached file. The cache is keyed by
//!   the release's files and the public URL, so a new release is picked up without a restart
//!   (and the old release's images are removed once a new one is built).
//!
//! An unknown farm is a 404 before anything is built; a failed build is a 500 `build_failed`
//! with the cause, and leaves nothing in the cache (`bootmedia` renames a finished image into
//! place, never writes one in place).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

use crate::api::{parse_id, AppState};
use crate::error::ApiError;

/// Where boot media come from; `grid-registry serve --release DIR --public-url URL`.
#[derive(Debug, Clone)]
pub struct BootConfig {
    /// The release folder (`vmlinuz`, `initramfs.img`, `cmdline`), as `make image` writes it.
    pub release: PathBuf,
    /// Built images, one folder per release.
    pub cache: PathBuf,
    /// This registry's URL as nodes reach it, baked into every image as `gridos.registry`.
    pub public_url: String,
    /// Images kept at most; past it the least recently served go first. Anyone may create
    /// farms (at the new-identity rate), and each image is some 50 MB: this bounds the disk.
    pub max_images: usize,
}

/// One build at a time: each takes a core and some 50 MB of disk, and two requests for the
/// same image must not build it twice.
#[derive(Debug, Default)]
pub struct Builds(tokio::sync::Mutex<()>);

/// The files a farm's boot URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Item {
    Ipxe,
    Kernel,
    Initramfs,
    Usb,
    Iso,
}

impl Item {
    fn parse(name: &str) -> Option<Item> {
        Some(match name {
            "ipxe" => Item::Ipxe,
            "vmlinuz" => Item::Kernel,
            "initramfs.img" => Item::Initramfs,
            "usb.img" => Item::Usb,
            "iso" => Item::Iso,
            _ => return None,
        })
    }
}

type S = State<Arc<AppState>>;

/// `GET /boot/{farm}/{item}`.
pub async fn get_boot(
    State(s): S,
    UrlPath((farm, item)): UrlPath<(String, String)>,
) -> Result<Response, ApiError> {
    let Some(cfg) = &s.config.boot else {
        return Err(ApiError::NotFound(
            "this registry serves no boot media: its operator starts it with --release DIR --public-url URL"
                .into(),
        ));
    };
    let farm = parse_id(&farm, "farm")?;
    let item = Item::parse(&item).ok_or_else(|| {
        ApiError::NotFound(format!(
            "no boot file {item:?}: ipxe, vmlinuz, initramfs.img, usb.img or iso"
        ))
    })?;
    let exists = sqlx::query("SELECT id FROM farms WHERE id = $1")
        .bind(farm)
        .fetch_optional(&s.db.pool)
        .await?
        .is_some();
    if !exists {
        return Err(ApiError::NotFound(format!(
            "farm {farm} does not exist: no boot media for it (grid farm list shows the farms)"
        )));
    }
    let words = farm_words(cfg, farm);
    match item {
        Item::Ipxe => {
            let line = bootmedia::cmdline_with(&cfg.release, &words, &[])
                .map_err(|e| build_failed(farm, "iPXE script", &e))?;
            let script = bootmedia::pxe::script(&line, "ipxe");
            Ok((
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                script,
            )
                .into_response())
        }
        Item::Kernel => file(&cfg.release.join("vmlinuz"), "vmlinuz").await,
        Item::Initramfs => file(&cfg.release.join("initramfs.img"), "initramfs.img").await,
        Item::Usb | Item::Iso => {
            let path = cached(&s.boot_builds, cfg, farm, item, words).await?;
            let name = match item {
                Item::Usb => format!("gridos-farm{farm}.img"),
                _ => format!("gridos-farm{farm}.iso"),
            };
            file(&path, &name).await
        }
    }
}

/// What a farm's media add to the release's command line.
fn farm_words(cfg: &BootConfig, farm: i64) -> Vec<String> {
    vec![
        format!("gridos.farm={farm}"),
        format!("gridos.registry={}", cfg.public_url),
    ]
}

fn build_failed(farm: i64, what: &str, e: &dyn std::error::Error) -> ApiError {
    let msg = format!(
        "building the {what} for farm {farm} failed: {}",
        svclog::error_chain(e)
    );
    tracing::error!(farm, "{msg}");
    ApiError::BuildFailed(msg)
}

/// A short stable name for the release as it is now and the URL baked in: a new kernel,
/// initramfs or command line (or URL) gives a new cache folder.
fn fingerprint(cfg: &BootConfig) -> Result<String, std::io::Error> {
    let mut text = cfg.public_url.clone();
    for f in bootmedia::RELEASE_FILES {
        let m = std::fs::metadata(cfg.release.join(f))?;
        text += &format!(
            " {f}:{}:{}.{}:{}",
            m.len(),
            m.mtime(),
            m.mtime_nsec(),
            m.ino()
        );
    }
    Ok(format!("{:08x}", bootmedia::tools::fnv32(text.as_bytes())))
}

/// The farm's image in the cache, built first if it is not there.
async fn cached(
    builds: &Builds,
    cfg: &BootConfig,
    farm: i64,
    item: Item,
    words: Vec<String>,
) -> Result<PathBuf, ApiError> {
    let what = if item == Item::Usb {
        "USB image"
    } else {
        "ISO"
    };
    let release_err = |e: std::io::Error| {
        let e = bootmedia::MediaError::Release {
            dir: cfg.release.clone(),
            file: "vmlinuz, initramfs.img or cmdline",
            source: e,
        };
        build_failed(farm, what, &e)
    };
    let tag = fingerprint(cfg).map_err(release_err)?;
    let dir = cfg.cache.join(&tag);
    let ext = if item == Item::Usb { "img" } else { "iso" };
    let path = dir.join(format!("farm-{farm}.{ext}"));
    if touch(&path) {
        return Ok(path);
    }
    let _one = builds.0.lock().await;
    if path.exists() {
        // Built while this request waited for its turn.
        return Ok(path);
    }
    let t0 = std::time::Instant::now();
    let (release, out, cache, keep) = (cfg.release.clone(), path.clone(), cfg.cache.clone(), tag);
    let max_images = cfg.max_images;
    let built = tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(out.parent().unwrap_or(&cache)).map_err(|source| {
            bootmedia::MediaError::Write {
                path: out.clone(),
                source,
            }
        })?;
        let opts = bootmedia::Options {
            append: words,
            ..bootmedia::Options::default()
        };
        let built = match item {
            Item::Usb => bootmedia::usb::write(&release, &out, &opts),
            _ => bootmedia::iso::write(&release, &out, &opts),
        }?;
        evict(out.parent().unwrap_or(&cache), &out, max_images);
        // Images of releases no longer served.
        if let Ok(entries) = std::fs::read_dir(&cache) {
            for e in entries.flatten() {
                if e.file_name() != keep.as_str() && e.path().is_dir() {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        Ok::<_, bootmedia::MediaError>(built)
    })
    .await
    .map_err(|e| ApiError::BuildFailed(format!("the {what} build for farm {farm} died: {e}")))?
    .map_err(|e| build_failed(farm, what, &e))?;
    tracing::info!(
        farm,
        path = %path.display(),
        bytes = built.bytes,
        ms = t0.elapsed().as_millis() as u64,
        "boot media built"
    );
    Ok(path)
}

/// Whether `path` is there; if so its time is set to now, so eviction keeps what is served.
fn touch(path: &Path) -> bool {
    match std::fs::OpenOptions::new().write(true).open(path) {
        Ok(f) => {
            let _ = f.set_modified(std::time::SystemTime::now());
            true
        }
        Err(_) => false,
    }
}

/// Removes the least recently served images of `dir` until at most `max` are left, never
/// `keep` (the one just built). A download in progress keeps its open file.
fn evict(dir: &Path, keep: &Path, max: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut images: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .filter(|e| e.path() != keep && e.path().is_file())
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    images.sort();
    let over = (images.len() + 1).saturating_sub(max.max(1));
    for (_, p) in images.into_iter().take(over) {
        match std::fs::remove_file(&p) {
            Ok(()) => tracing::info!(path = %p.display(), "boot image evicted (cache full)"),
            Err(e) => tracing::warn!(path = %p.display(), error = %e, "cannot evict a boot image"),
        }
    }
}

/// Streams a file with its length, as a download named `name` (boot media, extension
/// images).
pub(crate) async fn file(path: &Path, name: &str) -> Result<Response, ApiError> {
    let f = tokio::fs::File::open(path).await.map_err(|e| {
        tracing::error!(path = %path.display(), error = %e, "boot file unreadable");
        ApiError::BuildFailed(format!("{name} cannot be read on the registry: {e}"))
    })?;
    let len = f
        .metadata()
        .await
        .map_err(|e| ApiError::BuildFailed(format!("{name}: {e}")))?
        .len();
    let body = Body::from_stream(tokio_util::io::ReaderStream::with_capacity(f, 256 * 1024));
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(r)
}
