//! Unit tests of the pure logic: dependency planning, backoff, log ring, module index.

// A failed unwrap, expect or assertion is a failed test: the workspace's deny of them is
// for product code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::time::Duration;

use init::graph::plan;
use init::ring::LogRing;
use init::supervisor::default_backoff;

fn deps(list: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
    list.iter()
        .map(|(n, a)| (n.to_string(), a.iter().map(|s| s.to_string()).collect()))
        .collect()
}

#[test]
fn dependencies_come_first() {
    let d = deps(&[
        ("agent", &["network", "storage"]),
        ("network", &[]),
        ("storage", &["network"]),
        ("log", &[]),
    ]);
    let p = plan(&d, &BTreeMap::new());
    assert!(p.blocked.is_empty());
    let pos = |n: &str| p.order.iter().position(|x| x == n).expect(n);
    assert!(pos("network") < pos("storage"));
    assert!(pos("storage") < pos("agent"));
    assert_eq!(p.order.len(), 4);
    let stop = p.stop_order();
    assert_eq!(stop.first().map(String::as_str), Some("agent"));
}

#[test]
fn cycles_hold_back_only_the_affected_services() {
    let d = deps(&[
        ("a", &["b"]),
        ("b", &["c"]),
        ("c", &["a"]),
        ("d", &["a"]),
        ("e", &[]),
        ("f", &["e"]),
    ]);
    let p = plan(&d, &BTreeMap::new());
    assert_eq!(p.order, ["e", "f"]);
    for n in ["a", "b", "c"] {
        assert_eq!(p.blocked[n], "dependency cycle among a, b, c");
    }
    assert_eq!(p.blocked["d"], "dependency a is held back");
}

#[test]
fn unknown_and_bad_dependencies_are_reported() {
    let d = deps(&[
        ("a", &["ghost"]),
        ("b", &["broken"]),
        ("c", &["b"]),
        ("ok", &[]),
    ]);
    let bad = BTreeMap::from([("broken".to_string(), "invalid yaml".to_string())]);
    let p = plan(&d, &bad);
    assert_eq!(p.order, ["ok"]);
    assert_eq!(p.blocked["a"], "unknown dependency ghost");
    assert_eq!(p.blocked["b"], "dependency broken has a bad service file");
    assert_eq!(p.blocked["c"], "dependency b is held back");
    assert!(p.blocked["broken"].starts_with("bad service file"));
}

#[test]
fn a_500_service_chain_is_planned_in_chain_order() {
    let names: Vec<String> = (0..500).map(|i| format!("s{i:03}")).collect();
    let d: BTreeMap<String, Vec<String>> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let after = if i == 0 {
                vec![]
            } else {
                vec![names[i - 1].clone()]
            };
            (n.clone(), after)
        })
        .collect();
    let p = plan(&d, &BTreeMap::new());
    assert_eq!(p.order, names);
}

#[test]
fn restart_backoff_doubles_caps_jitters_and_resets() {
    let mut b = default_backoff();
    let nominal: Vec<u64> = (0..8)
        .map(|_| {
            let n = b.nominal();
            let d = b.next_delay_after(Duration::ZERO);
            assert!(d >= n / 2 && d <= n, "{d:?} outside [{:?}, {n:?}]", n / 2);
            n.as_millis() as u64
        })
        .collect();
    assert_eq!(nominal, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]);
    // A run of a minute forgets the failures.
    assert!(b.next_delay_after(Duration::from_secs(60)) <= Duration::from_millis(500));
    b.reset();
    assert_eq!(b.failures(), 0);
}

#[test]
fn ring_is_bounded_and_followable() {
    let mut r = LogRing::new(3, 1 << 20);
    for i in 0..5 {
        r.push(&format!("line {i}"));
    }
    assert_eq!(r.len(), 3);
    let (lines, next) = r.since(0);
    assert_eq!(lines, ["line 2", "line 3", "line 4"]);
    assert_eq!(next, 5);
    r.push("line 5");
    assert_eq!(r.since(next).0, ["line 5"]);
    assert!(r.since(100).0.is_empty());
    let mut small = LogRing::new(1000, 8192);
    for _ in 0..100 {
        small.push(&"x".repeat(10_000));
    }
    assert!(small.bytes() <= 8192);
    small.push("é".repeat(5000).as_str());
    assert!(small
        .since(0)
        .0
        .iter()
        .all(|l| l.len() <= init::ring::MAX_LINE));
}
