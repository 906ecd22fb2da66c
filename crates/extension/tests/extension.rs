//! The VM runtime as a signed extension, end to end on the host: the imager builds and signs
//! the real `image/extensions/vm.yaml`, the real registry serves it, the node side verifies,
//! caches and mounts it, and the test guest boots under the QEMU inside it. Then the attacks:
//! a tampered image, a manifest signed by another key or edited after signing, a registry
//! that sends more than it promised, and a registry that is down.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use extension::{Error, Extensions};
use gridtypes::extension::{ExtensionError, SignedManifest};
use test_infra::registry::{Engine, Registry};

/// The real VM-runtime extension, built once per test process and signed by `key`.
fn built(dir: &Path, key: &SigningKey) -> PathBuf {
    let profile = imager::extension::load_profile(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../image/extensions/vm.yaml"),
    )
    .unwrap();
    let out = dir.join("release");
    imager::extension::build_extension(&profile, &out, key, 1_700_000_000).unwrap();
    out
}

fn requirements() -> Option<()> {
    test_infra::require_root("mounts squashfs images on loop devices").ok()?;
    test_infra::require_tools(&["mksquashfs", "losetup", "qemu-system-x86_64", "dpkg-query"])
        .ok()?;
    Some(())
}

async fn serving(release: &Path) -> Registry {
    let config = registry::Config {
        extensions: Some(release.to_path_buf()),
        ..Default::default()
    };
    match Registry::start_with(Engine::Sqlite, config).await {
        Ok(r) => r,
        Err(s) => panic!("{}", s.reason),
    }
}

fn node(dir: &Path, key: &SigningKey, registry: String) -> Extensions {
    Extensions {
        cache: dir.join("cache"),
        mounts: dir.join("mnt"),
        release: key.verifying_key(),
        registry,
        losetup: "losetup".into(),
    }
}

fn unmount(root: &Path) {
    let _ = nix::mount::umount2(root, nix::mount::MntFlags::MNT_DETACH);
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_fetches_verifies_mounts_and_boots_a_guest_from_the_vm_extension() {
    let Some(()) = requirements() else { return };
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::from_bytes(&[42; 32]);
    let release = built(dir.path(), &key);
    let reg = serving(&release).await;
    let ext = node(dir.path(), &key, reg.url());
    let http = reqwest::Client::new();

    let m = ext.ensure(&http, "vm").await.unwrap();
    assert!(m.downloaded);
    assert_eq!(m.root, dir.path().join("mnt/vm"));
    assert!(m.manifest.version.starts_with("qemu-system-x86 "));
    assert!(m.root.join("usr/bin/qemu-system-x86_64").is_file());
    // Read-only: nothing on the node can change the runtime.
    assert!(std::fs::write(m.root.join("x"), b"x").is_err());
    // The second call finds it mounted.
    assert!(!ext.ensure(&http, "vm").await.unwrap().downloaded);

    // The QEMU inside boots the test guest (its own loader, libraries, plugins, firmware).
    let guest = test_infra::guest::guest().unwrap();
    let qemu = vmm::Qemu::from_extension(&m.root).unwrap();
    let spec = vmm::Spec {
        name: "fromext".into(),
        vcpus: 1,
        memory_mib: 256,
        boot: vmm::Boot::Kernel {
            kernel: guest.kernel.clone(),
            initrd: Some(guest.initrd.clone()),
            cmdline: test_infra::guest::CMDLINE.into(),
        },
        disks: vec![],
        seed: None,
        nic: None,
        accel: vmm::Accel::Tcg,
        cgroup: None,
    };
    let work = dir.path().join("vm");
    let ready = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        let (mut vm, out) = vmm::Vm::launch(&qemu, &spec, &work).unwrap();
        vm.resume().unwrap();
        let mut seen = String::new();
        let mut lines = std::io::BufReader::new(out).lines();
        for line in lines.by_ref() {
            let line = line.unwrap();
            seen.push_str(&line);
            seen.push('\n');
            if line.contains("guest: ready") {
                break;
            }
        }
        // The console is drained to the end, as the runtime does: a serial port nobody
        // reads stalls the guest's writes, its power-button script among them.
        let rest = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());
        let stopped = vm.shutdown(Duration::from_secs(120));
        seen.push_str(&rest.join().unwrap().join("\n"));
        (seen, stopped)
    })
    .await
    .unwrap();
    assert!(ready.0.contains("guest: ready"), "{}", ready.0);
    assert!(
        matches!(ready.1, vmm::Stopped::Graceful(_)),
        "{:?}; console:\n{}",
        ready.1,
        ready.0
    );

    // After a reboot (unmounted) with the registry down, the verified cache still serves.
    unmount(&m.root);
    drop(reg);
    let again = ext.ensure(&http, "vm").await.unwrap();
    assert!(!again.downloaded);
    unmount(&again.root);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tampered_image_is_refused_and_leaves_nothing_behind() {
    let Some(()) = requirements() else { return };
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::from_bytes(&[42; 32]);
    let release = built(dir.path(), &key);
    let img = release.join("vm.sqfs");
    let mut bytes = std::fs::read(&img).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&img, &bytes).unwrap();
    let reg = serving(&release).await;
    let ext = node(dir.path(), &key, reg.url());
    let err = ext.ensure(&reqwest::Client::new(), "vm").await.unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Refused {
                source: ExtensionError::ImageMismatch { .. },
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("SHA-256"), "{err}");
    // Only the verified manifest is kept; no image, no partial download, no mount.
    assert_eq!(files_in(&dir.path().join("cache")), vec!["vm.json"]);
    assert!(files_in(&dir.path().join("mnt/vm")).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_manifest_not_signed_by_the_release_key_is_refused() {
    let Some(()) = requirements() else { return };
    let dir = tempfile::tempdir().unwrap();
    let release_key = SigningKey::from_bytes(&[42; 32]);
    let other = SigningKey::from_bytes(&[7; 32]);
    let release = built(dir.path(), &other);
    let reg = serving(&release).await;
    let ext = node(dir.path(), &release_key, reg.url());
    let http = reqwest::Client::new();
    let err = ext.ensure(&http, "vm").await.unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Refused {
                source: ExtensionError::WrongSigner { .. },
                ..
            }
        ),
        "{err}"
    );
    // Edited after signing, under the right signer's name: the signature fails.
    let path = release.join("vm.json");
    let mut signed = SignedManifest::from_json(&std::fs::read(&path).unwrap()).unwrap();
    signed.signer = hex::encode(release_key.verifying_key().as_bytes());
    std::fs::write(&path, signed.to_json()).unwrap();
    let err = ext.ensure(&http, "vm").await.unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Refused {
                source: ExtensionError::BadSignature,
                ..
            }
        ),
        "{err}"
    );
    assert!(files_in(&dir.path().join("cache")).is_empty());
    // A name that could leave the cache folder never reaches the network.
    assert!(matches!(
        ext.ensure(&http, "../vm").await,
        Err(Error::BadName(_))
    ));
}

/// A registry that answers what a hostile one would.
async fn hostile(manifest: Vec<u8>, image: Vec<u8>) -> String {
    use axum::routing::get;
    let app = axum::Router::new()
        .route(
            "/api/v1/extensions/vm",
            get(move || {
                let m = manifest.clone();
                async move { m }
            }),
        )
        .route(
            "/api/v1/extensions/vm/image",
            get(move || {
                let i = image.clone();
                async move { i }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registry_sending_more_than_promised_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::from_bytes(&[42; 32]);
    let image = vec![0x5a; 4096];
    use sha2::Digest;
    let m = gridtypes::extension::Manifest {
        name: "vm".into(),
        version: "t".into(),
        sha256: hex::encode(sha2::Sha256::digest(&image[..1024])),
        size: 1024,
        created: 0,
    };
    let signed = SignedManifest::sign(&key, &m).unwrap().to_json();
    let url = hostile(signed, image).await;
    let ext = node(dir.path(), &key, url);
    let err = ext.ensure(&reqwest::Client::new(), "vm").await.unwrap_err();
    assert!(
        err.to_string().contains("more than the 1024 bytes"),
        "{err}"
    );
    assert_eq!(files_in(&dir.path().join("cache")), vec!["vm.json"]);

    // A manifest of a megabyte is not read past its limit.
    let url = hostile(vec![b' '; 1 << 20], vec![]).await;
    let ext = node(&dir.path().join("2"), &key, url);
    let err = ext.ensure(&reqwest::Client::new(), "vm").await.unwrap_err();
    assert!(err.to_string().contains("larger than"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn no_registry_and_no_cache_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::from_bytes(&[42; 32]);
    let port = test_infra::process::free_port().unwrap();
    let ext = node(dir.path(), &key, format!("http://127.0.0.1:{port}"));
    let err = ext.ensure(&reqwest::Client::new(), "vm").await.unwrap_err();
    assert!(matches!(err, Error::Fetch { .. }), "{err}");
    assert!(err.to_string().contains("/api/v1/extensions/vm"), "{err}");
}
