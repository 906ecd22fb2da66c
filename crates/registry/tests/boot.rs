//! `/boot/{farm}/…`: per-farm boot media built on demand from the release folder, cached,
//! refused for farms that do not exist, and a clear 500 (with nothing cached) when the release
//! cannot be built. The media's own layout is bootmedia's test; here: what the registry serves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;

use registry::boot::BootConfig;
use registry::Config;
use test_infra::{Engine, Registry, Skipped};

test_infra::on_both_engines!(
    a_farm_gets_its_own_media_built_once,
    unknown_farms_and_files_build_nothing,
    a_release_that_cannot_be_built_is_a_clear_500_and_caches_nothing,
    the_cache_keeps_at_most_its_limit_least_recently_served_first,
);

const URL: &str = "http://10.0.2.2:8480";

fn release(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("vmlinuz"), vec![0x4b; 1 << 20]).unwrap();
    std::fs::write(dir.join("initramfs.img"), vec![0x1f; 1 << 20]).unwrap();
    std::fs::write(dir.join("cmdline"), "console=ttyS0 panic=10\n").unwrap();
}

fn media_tools() -> bool {
    test_infra::require_tools(&[
        "objcopy", "mkfs.fat", "mcopy", "mtype", "syslinux", "sfdisk", "xorriso",
    ])
    .is_ok()
}

async fn harness(engine: Engine, dir: &Path) -> Result<Registry, Skipped> {
    harness_keeping(engine, dir, 200).await
}

async fn harness_keeping(
    engine: Engine,
    dir: &Path,
    max_images: usize,
) -> Result<Registry, Skipped> {
    release(&dir.join("release"));
    let config = Config {
        boot: Some(BootConfig {
            release: dir.join("release"),
            cache: dir.join("cache"),
            public_url: URL.into(),
            max_images,
        }),
        ..Config::default()
    };
    Registry::start_with(engine, config).await
}

async fn get(h: &Registry, path: &str) -> (u16, Vec<u8>, axum::http::HeaderMap) {
    let r = h
        .http()
        .get(format!("{}{path}", h.url()))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, r.bytes().await.unwrap().to_vec(), headers)
}

fn code(body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    v["error"]["code"].as_str().unwrap_or("").to_string()
}

/// Files under the cache folder.
fn cached(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for release in std::fs::read_dir(dir.join("cache"))
        .into_iter()
        .flatten()
        .flatten()
    {
        for f in std::fs::read_dir(release.path()).unwrap().flatten() {
            out.push(format!(
                "{}/{}",
                release.file_name().to_string_lossy(),
                f.file_name().to_string_lossy()
            ));
        }
    }
    out.sort();
    out
}

async fn a_farm_gets_its_own_media_built_once(engine: Engine) {
    if !media_tools() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let Ok(h) = harness(engine, d.path()).await else {
        return;
    };
    let farm = h.farm("boot-farm").await;

    // iPXE: the farm's settings, the kernel and initramfs named beside the script.
    let (s, body, headers) = get(&h, &format!("/boot/{farm}/ipxe")).await;
    assert_eq!(s, 200);
    assert!(headers[axum::http::header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let script = String::from_utf8(body).unwrap();
    assert!(script.starts_with("#!ipxe\n"), "{script}");
    assert!(
        script.contains(&format!(
            "kernel vmlinuz initrd=initramfs.img console=ttyS0 panic=10 gridos.farm={farm} gridos.registry={URL} ||"
        )),
        "{script}"
    );
    assert!(script.contains("chain ipxe"), "{script}");
    let (s, kernel, _) = get(&h, &format!("/boot/{farm}/vmlinuz")).await;
    assert_eq!((s, kernel.len()), (200, 1 << 20));
    let (s, initrd, _) = get(&h, &format!("/boot/{farm}/initramfs.img")).await;
    assert_eq!((s, initrd), (200, vec![0x1f; 1 << 20]));

    // USB image: built on the first request, then served from the cache as it is.
    let (s, img, headers) = get(&h, &format!("/boot/{farm}/usb.img")).await;
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&img));
    assert_eq!(
        headers[axum::http::header::CONTENT_LENGTH]
            .to_str()
            .unwrap(),
        img.len().to_string()
    );
    assert!(headers[axum::http::header::CONTENT_DISPOSITION]
        .to_str()
        .unwrap()
        .contains(&format!("gridos-farm{farm}.img")));
    assert_eq!(&img[512..520], b"EFI PART");
    let built = cached(d.path());
    assert_eq!(built.len(), 1, "{built:?}");
    let on_disk = d.path().join("cache").join(&built[0]);
    let settings = Command::new("mtype")
        .env("MTOOLS_SKIP_CHECK", "1")
        .args([
            "-i",
            &format!("{}@@1048576", on_disk.display()),
            "::/gridos.cfg",
        ])
        .output()
        .unwrap();
    let settings = String::from_utf8_lossy(&settings.stdout);
    assert!(
        settings.contains(&format!("gridos.farm={farm}\r\n")),
        "{settings}"
    );
    assert!(
        settings.contains(&format!("gridos.registry={URL}\r\n")),
        "{settings}"
    );
    // A rebuild renames a new file into place: another inode.
    let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&on_disk).unwrap());
    let (s, again, _) = get(&h, &format!("/boot/{farm}/usb.img")).await;
    assert_eq!(s, 200);
    assert_eq!(again, img, "the cached image, byte for byte");
    assert_eq!(
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&on_disk).unwrap()),
        inode,
        "not rebuilt"
    );

    // Two farms asking at once: each gets its own, built once.
    let other = h.farm("boot-farm-2").await;
    let iso = format!("/boot/{other}/iso");
    let (a, b) = tokio::join!(get(&h, &iso), get(&h, &iso));
    assert_eq!((a.0, b.0), (200, 200));
    assert_eq!(a.1, b.1);
    assert_eq!(&a.1[0x8001..0x8006], b"CD001");
    assert_eq!(cached(d.path()).len(), 2, "{:?}", cached(d.path()));

    // A new release (make image again) is picked up without a restart; the old images go.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let rel = d.path().join("release");
    std::fs::write(rel.join("cmdline.new"), "console=ttyS0 panic=10 quiet\n").unwrap();
    std::fs::rename(rel.join("cmdline.new"), rel.join("cmdline")).unwrap();
    let (s, _, _) = get(&h, &format!("/boot/{farm}/usb.img")).await;
    assert_eq!(s, 200);
    let now = cached(d.path());
    assert_eq!(now.len(), 1, "{now:?}");
    assert_ne!(now[0], built[0]);
}

async fn unknown_farms_and_files_build_nothing(engine: Engine) {
    let d = tempfile::tempdir().unwrap();
    let Ok(h) = harness(engine, d.path()).await else {
        return;
    };
    let farm = h.farm("f").await;
    for (path, status, want) in [
        ("/boot/999/usb.img", 404, "farm 999 does not exist"),
        ("/boot/999/ipxe", 404, "farm 999 does not exist"),
        (
            &format!("/boot/{farm}/root.img") as &str,
            404,
            "no boot file",
        ),
        (&format!("/boot/{farm}/..%2Fcmdline"), 404, "no boot file"),
        ("/boot/01/usb.img", 400, "not a positive integer"),
        ("/boot/-1/iso", 400, "not a positive integer"),
        (
            "/boot/99999999999999999999999/iso",
            400,
            "not a positive integer",
        ),
        ("/boot/%E2%82%AC/iso", 400, "not a positive integer"),
    ] {
        let (s, body, _) = get(&h, path).await;
        let text = String::from_utf8_lossy(&body);
        assert_eq!(s, status, "{path}: {text}");
        assert!(text.contains(want), "{path}: {text}");
    }
    assert!(cached(d.path()).is_empty());

    // A registry without a release serves no media, and says why.
    let Ok(plain) = Registry::start(engine).await else {
        return;
    };
    let farm = plain.farm("f").await;
    let (s, body, _) = get(&plain, &format!("/boot/{farm}/usb.img")).await;
    assert_eq!(s, 404);
    assert!(String::from_utf8_lossy(&body).contains("--release"));
}

async fn a_release_that_cannot_be_built_is_a_clear_500_and_caches_nothing(engine: Engine) {
    if !media_tools() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let Ok(h) = harness(engine, d.path()).await else {
        return;
    };
    let farm = h.farm("f").await;
    // A command line no boot loader configuration can carry.
    std::fs::write(d.path().join("release/cmdline"), "console=ttyS0 x=\"y\"\n").unwrap();
    for item in ["usb.img", "iso", "ipxe"] {
        let (s, body, _) = get(&h, &format!("/boot/{farm}/{item}")).await;
        assert_eq!(s, 500, "{item}");
        assert_eq!(
            code(&body),
            "build_failed",
            "{}",
            String::from_utf8_lossy(&body)
        );
        assert!(
            String::from_utf8_lossy(&body).contains("holds"),
            "{}",
            String::from_utf8_lossy(&body)
        );
    }
    // A missing kernel.
    std::fs::write(d.path().join("release/cmdline"), "console=ttyS0\n").unwrap();
    std::fs::remove_file(d.path().join("release/vmlinuz")).unwrap();
    let (s, body, _) = get(&h, &format!("/boot/{farm}/usb.img")).await;
    assert_eq!(s, 500);
    assert!(
        String::from_utf8_lossy(&body).contains("vmlinuz"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    let (s, _, _) = get(&h, &format!("/boot/{farm}/vmlinuz")).await;
    assert_eq!(s, 500);
    assert!(cached(d.path()).is_empty(), "{:?}", cached(d.path()));
    // No scratch left behind either.
    let left: Vec<_> = std::fs::read_dir(d.path().join("cache"))
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|e| std::fs::read_dir(e.path()).into_iter().flatten().flatten())
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

async fn the_cache_keeps_at_most_its_limit_least_recently_served_first(engine: Engine) {
    if !media_tools() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let Ok(h) = harness_keeping(engine, d.path(), 2).await else {
        return;
    };
    let farms = [h.farm("a").await, h.farm("b").await, h.farm("c").await];
    let names =
        |ids: &[i64]| -> Vec<String> { ids.iter().map(|i| format!("farm-{i}.img")).collect() };
    let held = || -> Vec<String> {
        let mut v: Vec<String> = cached(d.path())
            .iter()
            .map(|p| p.rsplit('/').next().unwrap().to_string())
            .collect();
        v.sort();
        v
    };
    for f in &farms[..2] {
        assert_eq!(get(&h, &format!("/boot/{f}/usb.img")).await.0, 200);
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Farm a served again: b is now the least recently served, and goes for c.
    assert_eq!(get(&h, &format!("/boot/{}/usb.img", farms[0])).await.0, 200);
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert_eq!(get(&h, &format!("/boot/{}/usb.img", farms[2])).await.0, 200);
    assert_eq!(held(), names(&[farms[0], farms[2]]));
    // b is built again when asked.
    assert_eq!(get(&h, &format!("/boot/{}/usb.img", farms[1])).await.0, 200);
    assert_eq!(held().len(), 2);
}
