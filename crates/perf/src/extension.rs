//! The VM-runtime extension: its size, and the time a node takes to make it usable, from a
//! registry on 127.0.0.1: cold (download, hash, verify, loop-mount) and from its cache after
//! a reboot (hash, verify, loop-mount). Needs root (loop devices) and mksquashfs.

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use serde_json::{json, Value};

fn unmount(root: &Path) {
    let _ = nix::mount::umount2(root, nix::mount::MntFlags::MNT_DETACH);
}

/// `runs` cold and warm mounts of the extension built from `profile`.
pub async fn extension_fetch(profile: &Path, runs: usize) -> anyhow::Result<Value> {
    let dir = tempfile::tempdir()?;
    let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let p = imager::extension::load_profile(profile)?;
    let t0 = Instant::now();
    let built = imager::extension::build_extension(&p, &dir.path().join("release"), &key, 0)?;
    let build_s = t0.elapsed().as_secs_f64();
    let config = registry::Config {
        extensions: Some(dir.path().join("release")),
        ..Default::default()
    };
    let reg =
        test_infra::registry::Registry::start_with(test_infra::registry::Engine::Sqlite, config)
            .await
            .map_err(|s| anyhow::anyhow!(s.reason))?;
    let http = reqwest::Client::new();
    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    for i in 0..runs {
        let node = extension::Extensions {
            cache: dir.path().join(format!("node{i}/cache")),
            mounts: dir.path().join(format!("node{i}/mnt")),
            release: key.verifying_key(),
            registry: reg.url(),
            losetup: "losetup".into(),
        };
        let t = Instant::now();
        let m = node.ensure(&http, &p.name).await.context("cold mount")?;
        cold.push(t.elapsed().as_secs_f64());
        unmount(&m.root);
        let t = Instant::now();
        let m = node
            .ensure(&http, &p.name)
            .await
            .context("mount from the cache")?;
        warm.push(t.elapsed().as_secs_f64());
        unmount(&m.root);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v.get(v.len() / 2).copied().unwrap_or(0.0) * 1000.0).round() / 1000.0
    };
    Ok(json!({
        "test": "extension-fetch",
        "extension": p.name,
        "version": built.manifest.version,
        "files": built.files,
        "unpacked_bytes": built.unpacked_bytes,
        "image_bytes": built.manifest.size,
        "build_s": (build_s * 100.0).round() / 100.0,
        "runs": runs,
        "cold_download_verify_mount_p50_s": median(&mut cold),
        "cached_verify_mount_p50_s": median(&mut warm),
    }))
}
