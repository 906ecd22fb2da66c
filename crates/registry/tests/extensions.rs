//! `/api/v1/extensions/{name}[/image]`: what the registry relays of a release's system
//! extensions, and its answers to names and folders it cannot serve. Verification is the
//! node's (crates/extension's tests); the registry only refuses to relay what no node could
//! parse.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ed25519_dalek::SigningKey;
use gridtypes::extension::{Manifest, SignedManifest};
use registry::Config;
use test_infra::{Engine, Registry};

async fn with_folder(dir: &std::path::Path) -> Registry {
    Registry::start_with(
        Engine::Sqlite,
        Config {
            extensions: Some(dir.to_path_buf()),
            ..Config::default()
        },
    )
    .await
    .unwrap()
}

async fn get(r: &Registry, path: &str) -> (u16, Vec<u8>) {
    let resp = r
        .http()
        .get(format!("{}{path}", r.url()))
        .send()
        .await
        .unwrap();
    let code = resp.status().as_u16();
    (code, resp.bytes().await.unwrap().to_vec())
}

#[tokio::test]
async fn a_release_folder_is_relayed_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::from_bytes(&[3; 32]);
    let image = vec![0x73u8; 300_000];
    use sha2::Digest;
    let m = Manifest {
        name: "vm".into(),
        version: "test".into(),
        sha256: hex::encode(sha2::Sha256::digest(&image)),
        size: image.len() as u64,
        created: 0,
    };
    let signed = SignedManifest::sign(&key, &m).unwrap().to_json();
    std::fs::write(dir.path().join("vm.json"), &signed).unwrap();
    std::fs::write(dir.path().join("vm.sqfs"), &image).unwrap();
    let r = with_folder(dir.path()).await;
    assert_eq!(get(&r, "/api/v1/extensions/vm").await, (200, signed));
    assert_eq!(get(&r, "/api/v1/extensions/vm/image").await, (200, image));
}

#[tokio::test]
async fn names_folders_and_broken_manifests_get_clear_answers() {
    let plain = Registry::sqlite().await;
    let (code, body) = get(&plain, "/api/v1/extensions/vm").await;
    assert_eq!(code, 404);
    assert!(String::from_utf8_lossy(&body).contains("--extensions"));

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret.key"), b"k").unwrap();
    std::fs::write(dir.path().join("bad.json"), b"{\"not\": \"signed\"}").unwrap();
    let r = with_folder(dir.path()).await;
    for (path, want) in [
        ("/api/v1/extensions/nope", 404),
        ("/api/v1/extensions/nope/image", 404),
        ("/api/v1/extensions/secret.key", 400),
        ("/api/v1/extensions/..%2Fetc", 400),
        ("/api/v1/extensions/VM", 400),
        ("/api/v1/extensions/bad", 500),
    ] {
        let (code, body) = get(&r, path).await;
        assert_eq!(code, want, "{path}: {}", String::from_utf8_lossy(&body));
    }
}
