//! A whole build on a fake kernel tree: the archive holds what the profile asks
//! for, and two builds from the same inputs give the same bytes.

// A failed unwrap, expect or assertion is a failed test: the workspace's deny of them is
// for product code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Read;
use std::path::Path;

use imager::cpio::{self, Kind};
use imager::Options;

fn fake_ko(modinfo: &str) -> Vec<u8> {
    use object::write::Object;
    let mut obj = Object::new(
        object::BinaryFormat::Elf,
        object::Architecture::X86_64,
        object::Endianness::Little,
    );
    let id = obj.add_section(
        vec![],
        b".modinfo".to_vec(),
        object::SectionKind::ReadOnlyData,
    );
    obj.append_section_data(id, modinfo.replace(';', "\0").as_bytes(), 1);
    obj.write().unwrap()
}

fn write(path: &Path, data: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
}

/// Kernel tree, binary folder, files folder and profile under `dir`.
fn fixture(dir: &Path) -> Options {
    let k = dir.join("kernel");
    write(
        &k.join("boot/vmlinuz-6.1.0-99-amd64"),
        b"not really a kernel",
    );
    let m = k.join("lib/modules/6.1.0-99-amd64");
    write(
        &m.join("kernel/drivers/net/virtio_net.ko"),
        &fake_ko("alias=virtio:d00000001v*;depends=net_failover;"),
    );
    write(
        &m.join("kernel/drivers/net/net_failover.ko"),
        &fake_ko("depends=failover;"),
    );
    write(
        &m.join("kernel/net/core/failover.ko"),
        &fake_ko("depends=;"),
    );
    write(
        &m.join("kernel/drivers/gpu/big.ko"),
        &fake_ko("alias=pci:v*;"),
    );
    write(
        &m.join("modules.builtin"),
        b"kernel/drivers/block/loop.ko\n",
    );
    write(
        &m.join("modules.order"),
        b"kernel/drivers/gpu/big.ko\nkernel/net/core/failover.ko\nkernel/drivers/net/net_failover.ko\nkernel/drivers/net/virtio_net.ko\nkernel/drivers/net/virtio_net_extra.ko\n",
    );
    let bins = dir.join("bins");
    write(&bins.join("init"), b"static init");
    write(&bins.join("gridctl"), b"static gridctl");
    let files = dir.join("files");
    write(
        &files.join("etc/gridos/services/hello.yaml"),
        b"exec: /bin/true\n",
    );
    let host_true = ["/usr/bin/true", "/bin/true"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap();
    let profile = dir.join("profile.yaml");
    std::fs::write(
        &profile,
        format!(
            "kernel: {{path: kernel}}\ncmdline: console=ttyS0 quiet\nmodules: [virtio_net, loop]\n\
             binaries:\n  - {{name: init, dest: /init, required: true, links: [/usr/bin/gridos-agent]}}\n  - {{name: gridctl, dest: /usr/bin/gridctl}}\n  - {{name: not-built-yet, dest: /usr/bin/later}}\n\
             helpers:\n  - {{path: {host_true}, dest: /usr/bin/true}}\n  - {{path: /nonexistent/mkfs.none}}\n\
             files: [files]\ndirs: [proc, sys]\n"
        ),
    )
    .unwrap();
    Options {
        profile,
        out: dir.join("out"),
        bin_dir: bins,
        cache: dir.join("cache"),
        kernel_root: None,
        source_date_epoch: 1_700_000_000,
        overlays: vec![],
        cmdline_append: vec![],
        strict: false,
        quiet: true,
        release_pub: None,
    }
}

fn unpack(path: &Path) -> Vec<cpio::ParsedEntry> {
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_end(&mut raw)
        .unwrap();
    cpio::parse(&raw).unwrap()
}

#[test]
fn build_contains_what_the_profile_asks_for() {
    let dir = tempfile::tempdir().unwrap();
    let opts = fixture(dir.path());
    let report = imager::build(&opts).unwrap();
    assert_eq!(report.kernel.release, "6.1.0-99-amd64");
    assert_eq!(report.skipped, ["not-built-yet", "/nonexistent/mkfs.none"]);
    assert_eq!(
        std::fs::read_to_string(opts.out.join("cmdline")).unwrap(),
        "console=ttyS0 quiet gridos.image=sealed\n"
    );
    assert_eq!(
        std::fs::read(opts.out.join("vmlinuz")).unwrap(),
        b"not really a kernel"
    );

    let entries = unpack(&opts.out.join("initramfs.img"));
    let get = |p: &str| {
        entries
            .iter()
            .find(|e| e.entry.path == p)
            .unwrap_or_else(|| panic!("{p} missing"))
    };
    assert_eq!(get("init").entry.kind, Kind::File(b"static init".to_vec()));
    assert_eq!(get("init").entry.perm, 0o755);
    assert_eq!(
        get("usr/bin/gridos-agent").entry.kind,
        Kind::Symlink("/init".into())
    );
    assert_eq!(get("dev/console").entry.kind, Kind::CharDev(5, 1));
    assert_eq!(
        get("usr/bin/gridctl").entry.kind,
        Kind::File(b"static gridctl".to_vec())
    );
    assert!(matches!(
        get("etc/gridos/services/hello.yaml").entry.kind,
        Kind::File(_)
    ));
    assert!(matches!(get("proc").entry.kind, Kind::Dir));
    // The seal is the archive's last file: init reboots an image that lacks it.
    let last = entries.last().unwrap();
    assert_eq!(last.entry.path, imager::build::SEAL_PATH);
    assert_eq!(
        last.entry.kind,
        Kind::File(format!("entries={}\n", entries.len() - 1).into_bytes())
    );
    // The helper came with its interpreter and libc.
    assert!(entries.iter().any(|e| e.entry.path.ends_with("/libc.so.6")));
    assert!(entries
        .iter()
        .any(|e| e.entry.path.starts_with("lib64/ld-linux")));
    // Module closure and its index; the unrelated module stays out.
    let m = "lib/modules/6.1.0-99-amd64";
    assert!(!entries.iter().any(|e| e.entry.path.ends_with("big.ko")));
    let Kind::File(dep) = &get(&format!("{m}/modules.dep")).entry.kind else {
        panic!()
    };
    assert!(String::from_utf8_lossy(dep).contains(
        "kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko\n"
    ));
    let Kind::File(order) = &get(&format!("{m}/modules.order")).entry.kind else {
        panic!()
    };
    assert_eq!(String::from_utf8_lossy(order).lines().count(), 3);
    // Fixed ownership and time; inodes 1..n in order; parents before children.
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(
            (e.uid, e.gid, e.mtime, e.ino),
            (0, 0, 1_700_000_000, i as u32 + 1)
        );
        if let Some((parent, _)) = e.entry.path.rsplit_once('/') {
            assert!(
                entries[..i].iter().any(|p| p.entry.path == parent),
                "{} before its parent",
                e.entry.path
            );
        }
    }
}

#[test]
fn same_inputs_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = fixture(dir.path());
    imager::build(&opts).unwrap();
    let first = std::fs::read(opts.out.join("initramfs.img")).unwrap();
    let first_report = std::fs::read(opts.out.join("build.json")).unwrap();
    // Touch every input file: new mtimes must not change the output.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let bins = dir.path().join("bins/init");
    std::fs::write(&bins, b"static init").unwrap();
    opts.out = dir.path().join("out2");
    imager::build(&opts).unwrap();
    assert_eq!(
        first,
        std::fs::read(opts.out.join("initramfs.img")).unwrap()
    );
    assert_eq!(
        first_report,
        std::fs::read(opts.out.join("build.json")).unwrap()
    );
    // A different SOURCE_DATE_EPOCH gives a different archive.
    opts.source_date_epoch = 1;
    opts.out = dir.path().join("out3");
    imager::build(&opts).unwrap();
    assert_ne!(
        first,
        std::fs::read(opts.out.join("initramfs.img")).unwrap()
    );
}

#[test]
fn strict_and_required_fail_on_missing_binaries() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = fixture(dir.path());
    opts.strict = true;
    let err = imager::build(&opts).unwrap_err();
    assert!(err.to_string().contains("not-built-yet not found"), "{err}");
    opts.strict = false;
    std::fs::remove_file(dir.path().join("bins/init")).unwrap();
    let err = imager::build(&opts).unwrap_err();
    assert!(
        err.to_string().contains("gridos binary init not found"),
        "{err}"
    );
}

#[test]
fn interpreter_is_stored_once_and_cmdline_is_appended() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = fixture(dir.path());
    opts.cmdline_append = vec!["gridos.farm=7".into()];
    let r = imager::build(&opts).unwrap();
    assert_eq!(
        r.cmdline,
        "console=ttyS0 quiet gridos.image=sealed gridos.farm=7"
    );
    assert_eq!(
        std::fs::read_to_string(opts.out.join("cmdline")).unwrap(),
        "console=ttyS0 quiet gridos.image=sealed gridos.farm=7\n"
    );
    let entries = unpack(&opts.out.join("initramfs.img"));
    let interp: Vec<&cpio::ParsedEntry> = entries
        .iter()
        .filter(|e| e.entry.path.ends_with("/ld-linux-x86-64.so.2"))
        .collect();
    let files = interp
        .iter()
        .filter(|e| matches!(e.entry.kind, Kind::File(_)))
        .count();
    assert_eq!(files, 1, "{interp:?}");
}

#[test]
fn the_release_key_goes_into_the_image_and_a_bad_one_fails_the_build() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = fixture(dir.path());
    let key = hex::encode(
        ed25519_dalek::SigningKey::from_bytes(&[5; 32])
            .verifying_key()
            .as_bytes(),
    );
    opts.release_pub = Some(key.clone());
    imager::build(&opts).unwrap();
    let entries = unpack(&opts.out.join("initramfs.img"));
    let pubkey = entries
        .iter()
        .find(|e| e.entry.path == imager::build::RELEASE_PUB_PATH)
        .expect("the release key is in the image");
    assert_eq!(
        pubkey.entry.kind,
        Kind::File(format!("{key}\n").into_bytes())
    );
    opts.release_pub = Some("not a key".into());
    let err = imager::build(&opts).unwrap_err().to_string();
    assert!(err.contains("release key"), "{err}");
}
