//! The kernel command line as a booting node sees it: valid, malformed and hostile.

// A failed unwrap, expect or assertion is a failed test: the workspace's deny of them is
// for product code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use cmdline::{LogLevel, NetConfig, WipePolicy};

#[test]
fn cmdline_defaults_when_empty() {
    let (s, w) = cmdline::parse("");
    assert_eq!(s, cmdline::Settings::default());
    assert!(w.is_empty());
    assert_eq!(s.hostname, "gridos");
    assert_eq!(s.wipe, WipePolicy::Empty);
}

#[test]
fn cmdline_valid_keys() {
    let line = "BOOT_IMAGE=/vmlinuz console=ttyS0 quiet gridos.farm=42 \
        gridos.registry=https://registry.example/api gridos.net=eth0:10.0.0.5/24:10.0.0.1 \
        gridos.log=debug gridos.wipe=all gridos.hostname=node-1 gridos.report_interval=5 \
        gridos.plain_http=10.0.2.2:5000,oci.farm.lan:80\n";
    let (s, w) = cmdline::parse(line);
    assert!(w.is_empty(), "{w:?}");
    assert_eq!(s.farm, Some(42));
    assert_eq!(s.registry.as_deref(), Some("https://registry.example/api"));
    assert_eq!(
        s.net,
        NetConfig::Static {
            iface: "eth0".into(),
            cidr: "10.0.0.5/24".into(),
            gateway: "10.0.0.1".into()
        }
    );
    assert_eq!(s.log, LogLevel::Debug);
    assert_eq!(s.wipe, WipePolicy::All);
    assert_eq!(s.hostname, "node-1");
    assert_eq!(s.report_interval, Some(5));
    assert_eq!(s.plain_http, ["10.0.2.2:5000", "oci.farm.lan:80"]);
}

#[test]
fn cmdline_unknown_keys_ignored_and_quotes_honoured() {
    let (s, w) =
        cmdline::parse(r#"gridos.unknown=1 foo="a b" gridos.hostname="quoted" gridos.net=dhcp"#);
    assert!(w.is_empty(), "{w:?}");
    assert_eq!(s.hostname, "quoted");
    assert_eq!(s.net, NetConfig::Dhcp);
}

#[test]
fn cmdline_malformed_values_are_reported_and_defaulted() {
    let line = "gridos.farm=abc gridos.farm=0 gridos.registry=ftp://x gridos.net=eth0:10.0.0.5/40:10.0.0.1 \
        gridos.net=eth0:10.0.0.5/24:fe80::1 gridos.log=loud gridos.wipe=everything gridos.hostname=-bad \
        gridos.report_interval=0 gridos.report_interval=86401 gridos.report_interval=1m \
        gridos.plain_http=10.0.2.2 gridos.plain_http=a:0 gridos.plain_http=a:1,b/c:2 gridos.plain_http=";
    let (s, w) = cmdline::parse(line);
    assert_eq!(s, cmdline::Settings::default());
    let keys: Vec<&str> = w.iter().map(|w| w.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "gridos.farm",
            "gridos.farm",
            "gridos.registry",
            "gridos.net",
            "gridos.net",
            "gridos.log",
            "gridos.wipe",
            "gridos.hostname",
            "gridos.report_interval",
            "gridos.report_interval",
            "gridos.report_interval",
            "gridos.plain_http",
            "gridos.plain_http",
            "gridos.plain_http",
            "gridos.plain_http"
        ]
    );
    assert!(w[0].to_string().contains("using the default"));
}

#[test]
fn cmdline_hostile_input_is_bounded() {
    let huge = format!("gridos.hostname={} gridos.farm=1", "a".repeat(100_000));
    let (s, w) = cmdline::parse(&huge);
    assert_eq!(s.hostname, "gridos");
    assert_eq!(s.farm, Some(1));
    assert_eq!(w.len(), 1);
    assert!(w[0].value.len() <= 64);
    // Control characters, unbalanced quotes, NULs, non-ASCII: never a panic.
    for line in [
        "gridos.hostname=\u{0}\u{7}\"",
        "\"gridos.farm=1",
        "gridos.registry=http://a\u{1b}[31m",
        "gridos.hostname=ñode",
        "=== gridos.= gridos.farm= gridos.net=:::",
        "gridos.net=eth0:1.2.3.4/24",
    ] {
        let (s, _) = cmdline::parse(line);
        assert_eq!(s.registry, None);
        assert_eq!(s.hostname, "gridos");
    }
}

/// Found by `make fuzz`: the value in a warning was cut at 64 characters, not the 64 bytes
/// its documentation promises, so multi-byte characters made it up to four times longer.
#[test]
fn cmdline_fuzz_warning_value_is_64_bytes_even_for_wide_characters() {
    for wide in ["ࠀ", "é", "😀"] {
        let line = format!("gridos.hostname={}", wide.repeat(100));
        let (_, w) = cmdline::parse(&line);
        assert_eq!(w.len(), 1);
        assert!(w[0].value.len() <= 64, "{} bytes", w[0].value.len());
        assert!(
            w[0].value.len() > 60,
            "cut at a character boundary, not shorter"
        );
        assert!(wide.repeat(100).starts_with(&w[0].value));
    }
}

#[test]
fn every_listed_key_is_one_parse_checks() {
    // A value no key accepts: each listed key must say so (it is parsed, not ignored).
    for key in cmdline::KEYS {
        let (_, w) = cmdline::parse(&format!("{key}=!!"));
        assert_eq!(w.len(), 1, "{key}");
        assert_eq!(w[0].key, key);
    }
    assert!(cmdline::parse("gridos.fram=!!").1.is_empty());
}
