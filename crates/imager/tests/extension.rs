//! `gridos-imager extension`: a program and its libraries packed into a squashfs whose signed
//! manifest names its digest and size; the same inputs give the same bytes; a failed build
//! leaves nothing behind; a bad profile is refused with the reason.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use ed25519_dalek::SigningKey;
use gridtypes::extension::SignedManifest;
use sha2::Digest;

fn profile(dir: &Path, text: &str) -> imager::extension::ExtensionProfile {
    let p = dir.join("ext.yaml");
    std::fs::write(&p, text).unwrap();
    imager::extension::load_profile(&p).unwrap()
}

#[test]
fn a_program_is_packed_signed_and_reproducible() {
    let Ok(_) = test_infra::require_tool("mksquashfs") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::from_bytes(&[4; 32]);
    let p = profile(dir.path(), "name: tools\nprograms: [/usr/bin/true]\n");
    let a =
        imager::extension::build_extension(&p, &dir.path().join("a"), &key, 1_700_000_000).unwrap();
    let b =
        imager::extension::build_extension(&p, &dir.path().join("b"), &key, 1_700_000_000).unwrap();
    let bytes = std::fs::read(&a.image).unwrap();
    assert_eq!(
        bytes,
        std::fs::read(&b.image).unwrap(),
        "same inputs, same bytes"
    );
    assert!(a.files >= 2, "the program and at least libc: {}", a.files);
    let signed = SignedManifest::from_json(&std::fs::read(&a.manifest_path).unwrap()).unwrap();
    let m = signed.verify(&key.verifying_key()).unwrap();
    assert_eq!(m.sha256, hex::encode(sha2::Sha256::digest(&bytes)));
    assert_eq!(m.size, bytes.len() as u64);
    let names: Vec<String> = std::fs::read_dir(dir.path().join("a"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "only the image and its manifest: {names:?}");
}

#[test]
fn a_failed_build_leaves_nothing_and_bad_profiles_say_why() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::from_bytes(&[4; 32]);
    let p = profile(dir.path(), "name: gone\nprograms: [/nonexistent/program]\n");
    let out = dir.path().join("out");
    let err = imager::extension::build_extension(&p, &out, &key, 0).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/program"), "{err}");
    assert_eq!(
        std::fs::read_dir(&out).unwrap().count(),
        0,
        "nothing left in {out:?}"
    );

    for (text, why) in [
        ("name: VM\nprograms: [/usr/bin/true]\n", "name"),
        ("name: vm\nprograms: []\n", "no programs"),
        ("name: vm\nprograms: [usr/bin/true]\n", "absolute"),
        ("name: vm\nprograms: [/usr/../etc/shadow]\n", "absolute"),
        ("name: vm\nprograms: [/usr/bin/true]\nextra: 1\n", "extra"),
    ] {
        let path = dir.path().join("bad.yaml");
        std::fs::write(&path, text).unwrap();
        let err = imager::extension::load_profile(&path)
            .unwrap_err()
            .to_string();
        assert!(err.contains(why), "{text:?}: {err}");
    }
}
