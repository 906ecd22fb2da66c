//! The kernel command line (`cmdline::parse`) and the network service's reading of
//! `gridos.net` (`network::config`): whatever the bootloader or a farmer typed.

// A failed unwrap, expect or assertion is a failed test: the workspace's deny of them is
// for product code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use cmdline::{LogLevel, NetConfig, Settings, WipePolicy};
use fuzz::{config, lossy, mutated, text, text_of, watch};
use network::config::{from_cmdline, parse_static, Mode};
use proptest::prelude::*;

/// Every setting `parse` hands on is one it would accept again, and every warning is bounded.
fn check(line: &str) -> Result<(), TestCaseError> {
    let _w = watch("cmdline::parse", line.as_bytes());
    let (s, warnings) = cmdline::parse(line);
    if let Some(farm) = s.farm {
        prop_assert!(farm > 0);
    }
    if let Some(r) = &s.registry {
        prop_assert!(
            r.starts_with("http://") || r.starts_with("https://"),
            "{r:?}"
        );
        prop_assert!(r.len() > "https://".len() && r.len() <= 1024);
        prop_assert!(!r.chars().any(|c| c.is_control() || c.is_whitespace()));
    }
    let h = &s.hostname;
    prop_assert!(
        !h.is_empty() && h.len() <= 63 && !h.starts_with('-'),
        "{h:?}"
    );
    prop_assert!(h.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    if let Some(i) = s.report_interval {
        prop_assert!((1..=86_400).contains(&i));
    }
    if let NetConfig::Static {
        iface,
        cidr,
        gateway,
    } = &s.net
    {
        prop_assert!(!iface.is_empty() && iface.len() <= 15);
        let (addr, prefix) = cidr.split_once('/').ok_or_else(|| fail(cidr))?;
        let addr: std::net::IpAddr = addr.parse().map_err(|_| fail(cidr))?;
        let prefix: u8 = prefix.parse().map_err(|_| fail(cidr))?;
        let gw: std::net::IpAddr = gateway.parse().map_err(|_| fail(gateway))?;
        let max_prefix = if addr.is_ipv4() { 32 } else { 128 };
        prop_assert!(prefix <= max_prefix, "{}", cidr);
        prop_assert_eq!(addr.is_ipv4(), gw.is_ipv4());
    }
    let words = line.split_whitespace().count().max(1);
    prop_assert!(warnings.len() <= words, "{} warnings", warnings.len());
    for w in &warnings {
        prop_assert!(w.key.starts_with("gridos."), "{:?}", w.key);
        // The documented bound: hostile values cannot flood the boot log.
        prop_assert!(
            w.value.len() <= 64,
            "{} bytes: {:?}",
            w.value.len(),
            w.value
        );
        prop_assert!(!w.to_string().is_empty());
    }
    check_network(line, &s)
}

fn fail(what: &str) -> TestCaseError {
    TestCaseError::fail(format!("accepted but unparsable: {what:?}"))
}

/// The network service reads the same line: it agrees with `cmdline` on DHCP versus static,
/// and a static configuration it accepts is a usable IPv4 one.
fn check_network(line: &str, s: &Settings) -> Result<(), TestCaseError> {
    let _w = watch("network::config::from_cmdline", line.as_bytes());
    let (mode, err) = from_cmdline(line);
    match &mode {
        Mode::Dhcp => {}
        Mode::Static(st) => {
            prop_assert!(err.is_none());
            prop_assert!(matches!(s.net, NetConfig::Static { .. }), "{:?}", s.net);
            check_static(st)?;
        }
    }
    if s.net == NetConfig::Dhcp && err.is_none() {
        prop_assert_eq!(mode, Mode::Dhcp);
    }
    Ok(())
}

fn check_static(st: &network::config::Static) -> Result<(), TestCaseError> {
    prop_assert!(!st.iface.is_empty() && st.iface.len() <= 15);
    prop_assert!((1..=32).contains(&st.prefix));
    if st.prefix < 31 {
        let mask = u32::MAX << (32 - u32::from(st.prefix));
        prop_assert_eq!(
            u32::from(st.addr) & mask,
            u32::from(st.gateway) & mask,
            "gateway outside the subnet"
        );
    }
    Ok(())
}

/// Words a real command line has, valid and almost valid.
const WORDS: &[&str] = &[
    "BOOT_IMAGE=/vmlinuz",
    "console=ttyS0,115200",
    "quiet",
    "ro",
    "root=/dev/sda1",
    "gridos.farm=42",
    "gridos.farm=0",
    "gridos.farm=4294967296",
    "gridos.registry=https://registry.example/api",
    "gridos.registry=http://10.0.2.2:8480",
    "gridos.registry=ftp://x",
    "gridos.net=dhcp",
    "gridos.net=eth0:10.0.0.5/24:10.0.0.1",
    "gridos.net=eth0:10.0.0.5/31:10.0.0.4",
    "gridos.net=ens3:2001:db8::5/64:2001:db8::1",
    "gridos.net=eth0:10.0.0.5/24:fe80::1",
    "gridos.net=:::",
    "gridos.log=debug",
    "gridos.log=loud",
    "gridos.plain_http=10.0.2.2:5000",
    "gridos.plain_http=a:1,,b:2",
    "gridos.plain_http=host:99999",
    "gridos.wipe=none",
    "gridos.wipe=all",
    "gridos.cache_on_stick=yes",
    "gridos.cache_on_stick=YES",
    "gridos.hostname=node-1",
    "gridos.hostname=-bad",
    "gridos.report_interval=5",
    "gridos.report_interval=86401",
    "gridos.=",
    "gridos.farm=",
    "\"gridos.hostname=quoted\"",
    "gridos.hostname=\"a b\"",
    "\"",
    "=",
];

fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => proptest::sample::select(WORDS).prop_map(str::to_string),
        2 => text_of("gridos.farmnethostwiplgry=:/\"0123456789 -_", 40),
        1 => text(24),
    ]
}

fn line() -> impl Strategy<Value = String> {
    proptest::collection::vec(word(), 0..16).prop_map(|w| w.join(" "))
}

/// A command line that says exactly `s`, with the kernel's own words around it.
fn render(s: &Settings, noise: &[String]) -> String {
    let mut w: Vec<String> = noise.to_vec();
    if let Some(f) = s.farm {
        w.push(format!("gridos.farm={f}"));
    }
    if let Some(r) = &s.registry {
        w.push(format!("gridos.registry={r}"));
    }
    match &s.net {
        NetConfig::Dhcp => w.push("gridos.net=dhcp".into()),
        NetConfig::Static {
            iface,
            cidr,
            gateway,
        } => w.push(format!("gridos.net={iface}:{cidr}:{gateway}")),
    }
    let log = match s.log {
        LogLevel::Error => "error",
        LogLevel::Warn => "warn",
        LogLevel::Info => "info",
        LogLevel::Debug => "debug",
        LogLevel::Trace => "trace",
    };
    w.push(format!("gridos.log={log}"));
    let wipe = match s.wipe {
        WipePolicy::None => "none",
        WipePolicy::Empty => "empty",
        WipePolicy::All => "all",
    };
    w.push(format!("gridos.wipe={wipe}"));
    w.push(format!("gridos.hostname={}", s.hostname));
    if let Some(i) = s.report_interval {
        w.push(format!("gridos.report_interval={i}"));
    }
    if !s.plain_http.is_empty() {
        w.push(format!("gridos.plain_http={}", s.plain_http.join(",")));
    }
    w.push(format!(
        "gridos.cache_on_stick={}",
        if s.cache_on_stick { "yes" } else { "no" }
    ));
    w.join(" ")
}

fn settings() -> impl Strategy<Value = Settings> {
    let net = prop_oneof![
        Just(NetConfig::Dhcp),
        (
            "[a-z][a-z0-9_.-]{0,14}",
            any::<[u8; 4]>(),
            0u8..=32,
            any::<[u8; 4]>()
        )
            .prop_map(|(iface, a, p, g)| NetConfig::Static {
                iface,
                cidr: format!("{}/{p}", std::net::Ipv4Addr::from(a)),
                gateway: std::net::Ipv4Addr::from(g).to_string(),
            }),
    ];
    (
        proptest::option::of(1u32..),
        proptest::option::of("https?://[a-zA-Z0-9.:/?&=%_~-]{2,100}"),
        net,
        proptest::sample::select(vec![
            LogLevel::Error,
            LogLevel::Warn,
            LogLevel::Info,
            LogLevel::Debug,
            LogLevel::Trace,
        ]),
        proptest::sample::select(vec![WipePolicy::None, WipePolicy::Empty, WipePolicy::All]),
        "[a-zA-Z0-9][a-zA-Z0-9-]{0,62}",
        proptest::option::of(1u32..=86_400),
        proptest::collection::vec("[a-z0-9][a-z0-9.-]{0,20}:[1-9][0-9]{0,3}", 0..3),
        any::<bool>(),
    )
        .prop_map(
            |(
                farm,
                registry,
                net,
                log,
                wipe,
                hostname,
                report_interval,
                plain_http,
                cache_on_stick,
            )| {
                Settings {
                    farm,
                    registry,
                    net,
                    log,
                    wipe,
                    hostname,
                    report_interval,
                    plain_http,
                    cache_on_stick,
                }
            },
        )
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_text(line in text(512)) {
        check(&line)?;
    }

    #[test]
    fn arbitrary_bytes(b in fuzz::bytes(512)) {
        check(&lossy(&b))?;
    }

    #[test]
    fn real_words_with_random_words_spliced_in(line in line()) {
        check(&line)?;
    }

    #[test]
    fn mutated_real_lines(b in mutated(line().prop_map(String::into_bytes))) {
        check(&lossy(&b))?;
    }

    #[test]
    fn valid_settings_round_trip(s in settings(), noise in proptest::collection::vec(
        prop_oneof![
            proptest::sample::select(&WORDS[..5]).prop_map(str::to_string),
            "[a-z_]{1,12}(=[a-z0-9,/]{0,12})?",
        ],
        0..6,
    )) {
        let line = render(&s, &noise);
        check(&line)?;
        let (back, warnings) = cmdline::parse(&line);
        prop_assert!(warnings.is_empty(), "{:?}", warnings);
        prop_assert_eq!(back, s);
    }

    #[test]
    fn static_network_config(v in prop_oneof![
        text_of("eth0:10.25/:fe8::1", 48),
        ("[a-z0-9]{1,16}", any::<[u8; 4]>(), 0u32..40, any::<[u8; 4]>()).prop_map(|(i, a, p, g)| {
            format!("{i}:{}/{p}:{}", std::net::Ipv4Addr::from(a), std::net::Ipv4Addr::from(g))
        }),
    ]) {
        let _w = watch("network::config::parse_static", v.as_bytes());
        match parse_static(&v) {
            Ok(st) => {
                check_static(&st)?;
                // What it accepted, written back, is accepted as the same configuration.
                let again = format!("{}:{}/{}:{}", st.iface, st.addr, st.prefix, st.gateway);
                prop_assert_eq!(parse_static(&again), Ok(st));
            }
            Err(e) => prop_assert!(!e.is_empty()),
        }
    }
}
