//! The image cache against a real OCI distribution registry (Debian's `docker-registry`)
//! started by the test on 127.0.0.1: images the test builds and pushes, honest and hostile.

// A failed unwrap, expect or assertion is a failed test: the workspace's deny of them is
// for product code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use provision::{ImageError, ImageStore};
use test_infra::oci::OciRegistry;

fn registry() -> Option<OciRegistry> {
    let bin = test_infra::require_tool("docker-registry").ok()?;
    test_infra::require_root("unpacks layers with owners, whiteout devices and overlay xattrs")
        .ok()?;
    Some(OciRegistry::start(&bin).unwrap())
}

fn layer(files: &[(&str, &[u8])]) -> Vec<u8> {
    test_infra::oci::layer(files).unwrap()
}

fn config() -> Vec<u8> {
    br#"{"architecture":"amd64","os":"linux","config":{"Entrypoint":["/bin/hello"],"Cmd":["--port","80"],"Env":["PATH=/bin"],"WorkingDir":"/srv"},"rootfs":{"type":"layers","diff_ids":[]}}"#.to_vec()
}

async fn push(reg: &OciRegistry, name: &str, layers: Vec<Vec<u8>>) -> String {
    reg.push(name, layers, config()).await.unwrap()
}

fn store(reg: &OciRegistry, dir: &Path) -> ImageStore {
    ImageStore::open(dir, vec![reg.addr.clone()]).unwrap()
}

fn is_whiteout(p: &Path) -> bool {
    let m = std::fs::symlink_metadata(p).unwrap();
    m.file_type().is_char_device() && std::os::unix::fs::MetadataExt::rdev(&m) == 0
}

fn xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let name = std::ffi::CString::new(name).unwrap();
    let mut buf = [0u8; 64];
    // SAFETY: NUL-terminated strings and a buffer of the length given, all alive for the call.
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    (n >= 0).then(|| buf[..n as usize].to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layers_are_verified_unpacked_once_and_whiteouts_kept_for_overlayfs() {
    let Some(reg) = registry() else { return };
    let lower = layer(&[
        ("bin/", b""),
        ("bin/hello", b"#!hello"),
        ("etc/", b""),
        ("etc/config", b"one"),
        ("data/", b""),
        ("data/old", b"old"),
    ]);
    let upper = layer(&[
        ("etc/.wh.config", b""),
        ("data/", b""),
        ("data/.wh..wh..opq", b""),
        ("data/new", b"new"),
    ]);
    let reference = push(&reg, "gridos/hello:1", vec![lower, upper]).await;
    let dir = tempfile::tempdir().unwrap();
    let images = store(&reg, dir.path());
    let image = images.pull(&reference, 1 << 20).await.unwrap();
    assert_eq!(image.layers.len(), 2);
    assert_eq!(image.entrypoint, ["/bin/hello"]);
    assert_eq!(image.cmd, ["--port", "80"]);
    assert_eq!(image.env, ["PATH=/bin"]);
    assert_eq!(image.workdir, "/srv");
    assert_eq!(
        std::fs::read(image.layers[0].join("bin/hello")).unwrap(),
        b"#!hello"
    );
    assert!(is_whiteout(&image.layers[1].join("etc/config")));
    assert_eq!(
        xattr(&image.layers[1].join("data"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(
        std::fs::read(image.layers[1].join("data/new")).unwrap(),
        b"new"
    );

    // Pulled again: the same layers, not downloaded or unpacked a second time.
    let stamp = |p: &Path| std::fs::metadata(p).unwrap().modified().unwrap();
    let before: Vec<_> = image.layers.iter().map(|l| stamp(l)).collect();
    let again = images.pull(&reference, 1 << 20).await.unwrap();
    assert_eq!(again, image);
    let after: Vec<_> = again.layers.iter().map(|l| stamp(l)).collect();
    assert_eq!(before, after);
    assert_eq!(
        std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_larger_than_the_reservation_is_refused() {
    let Some(reg) = registry() else { return };
    // 4 MiB of zeros compress to a few kB: only the unpacked size shows it.
    let zeros = vec![0u8; 4 << 20];
    let reference = push(&reg, "gridos/big:1", vec![layer(&[("zeros", &zeros)])]).await;
    let dir = tempfile::tempdir().unwrap();
    let images = store(&reg, dir.path());
    match images.pull(&reference, 1 << 20).await {
        Err(ImageError::TooLarge { what, .. }) => assert_eq!(what, "unpacked files"),
        other => panic!("{other:?}"),
    }
    match images.pull(&reference, 100).await {
        Err(ImageError::TooLarge { what, .. }) => assert_eq!(what, "compressed layers"),
        other => panic!("{other:?}"),
    }
    // Nothing half-unpacked is left, and the next pull with room succeeds.
    assert_eq!(
        std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
        0
    );
    assert_eq!(
        std::fs::read_dir(dir.path().join("layers/sha256"))
            .unwrap()
            .count(),
        0
    );
    images.pull(&reference, 8 << 20).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_changed_in_the_registry_is_refused_and_not_cached() {
    let Some(reg) = registry() else { return };
    let l = layer(&[("file", b"the real content")]);
    let reference = push(&reg, "gridos/tampered:1", vec![l.clone()]).await;
    // The registry's own copy of the layer, changed behind its back: it serves it under
    // the old digest.
    let hex = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&l))
    };
    let data = reg
        .storage
        .join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(&hex)
        .join("data");
    let mut bytes = std::fs::read(&data).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&data, &bytes).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let images = store(&reg, dir.path());
    match images.pull(&reference, 1 << 20).await {
        Err(ImageError::Digest { digest, .. }) => assert_eq!(digest, format!("sha256:{hex}")),
        other => panic!("{other:?}"),
    }
    assert!(!dir.path().join("blobs/sha256").join(&hex).exists());
    assert_eq!(
        std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_images_and_hostile_layers_are_refused() {
    let Some(reg) = registry() else { return };
    let dir = tempfile::tempdir().unwrap();
    let images = store(&reg, dir.path());
    let missing = format!("{}/gridos/nope:1", reg.addr);
    assert!(matches!(
        images.pull(&missing, 1 << 20).await,
        Err(ImageError::Registry { .. })
    ));
    assert!(matches!(
        images.pull("no spaces allowed:1", 1 << 20).await,
        Err(ImageError::Reference { .. })
    ));

    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().to_str().unwrap().to_string();
    let link = format!("link:{target}");
    for (name, files) in [
        ("dotdot", vec![("../escape", &b"x"[..])]),
        (
            "through-link",
            vec![("out", link.as_bytes()), ("out/escape", b"x")],
        ),
        (
            "whiteout-through-link",
            vec![("out", link.as_bytes()), ("out/.wh.victim", b"")],
        ),
    ] {
        std::fs::write(outside.path().join("victim"), b"keep").unwrap();
        let reference = push(&reg, &format!("gridos/{name}:1"), vec![layer(&files)]).await;
        let got = images.pull(&reference, 1 << 20).await;
        assert!(
            matches!(got, Err(ImageError::Layer { .. })),
            "{name}: {got:?}"
        );
        assert!(
            !outside.path().join("escape").exists(),
            "{name} wrote outside"
        );
        assert_eq!(
            std::fs::read(outside.path().join("victim")).unwrap(),
            b"keep"
        );
        assert!(!dir.path().join("escape").exists(), "{name} wrote outside");
    }
    assert_eq!(
        std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_of_one_image_share_its_layers() {
    let Some(reg) = registry() else { return };
    let big = vec![7u8; 2 << 20];
    let reference = push(&reg, "gridos/shared:1", vec![layer(&[("blob", &big)])]).await;
    let dir = tempfile::tempdir().unwrap();
    let images = std::sync::Arc::new(store(&reg, dir.path()));
    let pulls: Vec<_> = (0..4)
        .map(|_| {
            let (images, reference) = (images.clone(), reference.clone());
            tokio::spawn(async move { images.pull(&reference, 8 << 20).await })
        })
        .collect();
    let mut got = Vec::new();
    for p in pulls {
        got.push(p.await.unwrap().unwrap());
    }
    assert!(got.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(
        std::fs::read_dir(dir.path().join("layers/sha256"))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().is_dir())
            .count(),
        1
    );
    assert_eq!(
        std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
        0
    );
}
