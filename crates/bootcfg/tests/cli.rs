//! The `gridos-bootcfg` program as the `bootcfg` service runs it, on files of the test's own:
//! it always writes the node's command line and exits 0, whatever the settings file holds or
//! whether the stick is there at all. (Mounting a real stick is the boot matrix's part,
//! docs/boot-media.md.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;

fn bootcfg(dir: &Path, cmdline: &str, extra: &[&str]) -> (bool, String, String) {
    std::fs::write(dir.join("cmdline"), cmdline).unwrap();
    let out = dir.join("run/cmdline");
    let _ = std::fs::remove_file(&out);
    let o = Command::new(env!("CARGO_BIN_EXE_gridos-bootcfg"))
        .arg("--cmdline")
        .arg(dir.join("cmdline"))
        .arg("--out")
        .arg(&out)
        .arg("--sys-class-block")
        .arg(dir.join("no-such-sys"))
        .args(["--wait-secs", "0"])
        .args(extra)
        .output()
        .unwrap();
    (
        o.status.success(),
        std::fs::read_to_string(&out).unwrap_or_default(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn the_node_command_line_is_always_written() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("gridos.cfg");

    // The settings file's settings go after the kernel's, so they win.
    std::fs::write(&cfg, "gridos.farm=9\r\ngridos.wipe=maybe\r\n").unwrap();
    let (ok, line, log) = bootcfg(
        d.path(),
        "quiet gridos.farm=3 gridos.media=usb\n",
        &["--config", cfg.to_str().unwrap()],
    );
    assert!(ok);
    assert_eq!(line, "quiet gridos.farm=3 gridos.media=usb gridos.farm=9\n");
    assert!(log.contains("line 2: gridos.wipe=maybe"), "{log}");
    assert_eq!(cmdline::parse(&line).0.farm, Some(9));

    // A stick that never shows up: said, and the kernel's settings stand.
    let (ok, line, log) = bootcfg(d.path(), "quiet gridos.farm=3 gridos.media=usb\n", &[]);
    assert!(ok);
    assert_eq!(line, "quiet gridos.farm=3 gridos.media=usb\n");
    assert!(
        log.contains("no partition named gridos-boot appeared"),
        "{log}"
    );

    // Not a USB boot: nothing is looked for.
    let (ok, line, log) = bootcfg(d.path(), "quiet gridos.farm=3\n", &[]);
    assert!(ok);
    assert_eq!(line, "quiet gridos.farm=3\n");
    assert!(log.contains("not booted from a gridos USB stick"), "{log}");

    // An unreadable or huge file changes nothing either.
    let (ok, line, _) = bootcfg(
        d.path(),
        "quiet gridos.farm=3\n",
        &["--config", "/nonexistent/gridos.cfg"],
    );
    assert!(ok);
    assert_eq!(line, "quiet gridos.farm=3\n");
    std::fs::write(&cfg, "gridos.farm=9\n".repeat(10_000)).unwrap();
    let (ok, line, log) = bootcfg(
        d.path(),
        "quiet gridos.farm=3\n",
        &["--config", cfg.to_str().unwrap()],
    );
    assert!(ok);
    assert_eq!(line, "quiet gridos.farm=3\n");
    assert!(log.contains("more than 65536"), "{log}");
}
