//! Module index lookups and glob matching, on index files written by the test.

// A failed unwrap, expect or assertion is a failed test: the workspace's deny of them is
// for product code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kmod::{glob_match, module_name, parse_load_list, ModuleIndex};

#[test]
fn glob_matching_like_fnmatch() {
    assert!(glob_match(
        "pci:v00001AF4d00001000sv*sd*bc*sc*i*",
        "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00"
    ));
    assert!(glob_match(
        "virtio:d00000001v*",
        "virtio:d00000001v00001AF4"
    ));
    assert!(!glob_match(
        "virtio:d00000002v*",
        "virtio:d00000001v00001AF4"
    ));
    assert!(glob_match("acpi*:PNP0C0C:*", "acpi:PNP0C0C:"));
    assert!(glob_match("a?c", "abc"));
    assert!(glob_match("x[0-9]y", "x5y"));
    assert!(!glob_match("x[!0-9]y", "x5y"));
    assert!(glob_match("x[]]y", "x]y"));
    assert!(glob_match("x[ab", "x[ab"));
    assert!(!glob_match("abc", "abcd"));
    assert!(glob_match("*", ""));
    // Pathological pattern stays linear-ish and terminates.
    let text = "a".repeat(2000);
    assert!(!glob_match(&format!("{}b", "*a".repeat(50)), &text));
}

#[test]
fn module_index_resolves_and_orders_dependencies() {
    let alias = "# Aliases\nalias virtio:d00000001v* virtio_net\nalias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci\nalias fs-btrfs btrfs\n";
    let dep = "kernel/drivers/net/virtio_net.ko.zst: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko\n\
               kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko\n\
               kernel/net/core/failover.ko:\n\
               kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio.ko\n";
    let builtin = "kernel/drivers/virtio/virtio.ko\n";
    let idx = ModuleIndex::parse(alias, dep, builtin);
    assert_eq!(
        idx.resolve("virtio:d00000001v00001AF4")
            .into_iter()
            .collect::<Vec<_>>(),
        ["virtio_net"]
    );
    assert_eq!(
        idx.load_order("virtio_net"),
        [
            "kernel/net/core/failover.ko",
            "kernel/drivers/net/net_failover.ko",
            "kernel/drivers/net/virtio_net.ko.zst"
        ]
    );
    assert!(idx.is_builtin("virtio"));
    assert!(idx.load_order("virtio").is_empty());
    assert!(idx.load_order("nonexistent").is_empty());
    assert_eq!(module_name("kernel/x/snd-hda-intel.ko.xz"), "snd_hda_intel");
}
#[test]
fn modules_load_list() {
    let text = "# cache partition\nbtrfs\n\n  wire-guard  # comment\n../../evil\n";
    assert_eq!(parse_load_list(text), ["btrfs", "wire_guard"]);
    assert!(parse_load_list(&"x".repeat(100)).is_empty());
}

/// Found writing the fuzz targets (hostile alias patterns): an unclosed `[` was re-scanned to
/// the end of the pattern at every step, and `*` restarts every step, so `*[[[…[x` against
/// `[[[…[` took time cubic in the lengths (88 s in a debug build for a 4 KiB modalias). Each
/// `[` now knows at once whether it closes.
#[test]
fn glob_fuzz_unclosed_brackets_stay_fast() {
    let started = std::time::Instant::now();
    for (pattern, text) in [
        (format!("*{}x", "[".repeat(2048)), "[".repeat(4096)),
        (format!("*{}x", "[!".repeat(1024)), "[!".repeat(2048)),
        (format!("*{}x", "?[".repeat(1024)), "a[".repeat(2048)),
    ] {
        assert!(!glob_match(&pattern, &text));
    }
    // Unclosed brackets still match themselves literally.
    assert!(glob_match(
        &format!("*{}", "[".repeat(100)),
        &"[".repeat(300)
    ));
    assert!(glob_match("a[!", "a[!"));
    assert!(!glob_match("a[!", "a[x"));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
}
