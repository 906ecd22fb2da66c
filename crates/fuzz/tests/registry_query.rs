//! The registry's reading of request paths and query strings (`registry::api::parse_id`,
//! `parse_query` for the node, report, contract and plain list filters and their pagination
//! cursors, `page_limit`): open to anyone.

// A failed unwrap, expect or assertion is a failed test: the workspace's deny of them is
// for product code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use axum::http::Uri;
use fuzz::{config, text, text_of, watch};
use proptest::prelude::*;
use registry::api::{
    page_limit, parse_id, parse_query, ContractFilter, ContractState, NodeFilter, NodeStatus,
    Paging, ReportFilter, StoredKind, DEFAULT_LIMIT, MAX_LIMIT,
};

fn check_id(raw: &str) -> Result<(), TestCaseError> {
    let _w = watch("registry::api::parse_id", raw.as_bytes());
    match parse_id(raw, "node") {
        // One resource, one URL: an accepted id is the canonical spelling of a positive i64.
        Ok(n) => {
            prop_assert!(n > 0);
            prop_assert_eq!(n.to_string(), raw);
        }
        Err(e) => prop_assert!(!e.to_string().is_empty()),
    }
    Ok(())
}

fn check_limit(limit: Option<i64>) -> Result<(), TestCaseError> {
    match page_limit(limit) {
        Ok(l) => {
            prop_assert!((1..=MAX_LIMIT).contains(&l));
            prop_assert_eq!(l, limit.unwrap_or(DEFAULT_LIMIT));
        }
        Err(_) => prop_assert!(limit.is_some_and(|l| !(1..=MAX_LIMIT).contains(&l))),
    }
    Ok(())
}

/// Parses `query` as each list endpoint would; whatever is accepted has sane limits.
fn check_query(query: &str) -> Result<(), TestCaseError> {
    let Ok(uri) = Uri::try_from(format!("/api/v1/nodes?{query}")) else {
        // hyper refuses such a request line before the registry sees it.
        return Ok(());
    };
    let _w = watch("registry::api::parse_query", query.as_bytes());
    if let Ok(f) = parse_query::<NodeFilter>(&uri) {
        check_limit(f.limit)?;
    }
    if let Ok(f) = parse_query::<ReportFilter>(&uri) {
        check_limit(f.limit)?;
    }
    if let Ok(p) = parse_query::<Paging>(&uri) {
        check_limit(p.limit)?;
    }
    if let Ok(f) = parse_query::<ContractFilter>(&uri) {
        check_limit(f.limit)?;
    }
    Ok(())
}

/// `s` with each character percent-encoded at random, as a client may send it.
fn encode(s: &str, mask: u64, upper: bool) -> String {
    let mut out = String::new();
    for (i, b) in s.bytes().enumerate() {
        if mask >> (i % 64) & 1 == 1 {
            if upper {
                out.push_str(&format!("%{b:02X}"));
            } else {
                out.push_str(&format!("%{b:02x}"));
            }
        } else {
            out.push(b as char);
        }
    }
    out
}

const KEYS: &[&str] = &[
    "farm", "status", "min_cru", "min_mru", "min_sru", "min_hru", "after", "limit", "kind", "twin",
    "node", "state",
];

fn query_piece() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        8 => proptest::sample::select(KEYS).prop_map(str::to_string),
        1 => text_of("abc_=&%", 8),
    ];
    let value = prop_oneof![
        any::<i64>().prop_map(|v| v.to_string()),
        proptest::sample::select(vec![
            "up",
            "down",
            "stopped",
            "UP",
            "uptime",
            "registration",
            "capacity",
            "consumption",
            "",
            "0",
            "-0",
            "+1",
            "1e3",
            "0x10",
            "9223372036854775808",
            "%",
            "%zz",
            "%00",
            "a+b",
            "&&",
            "==",
        ])
        .prop_map(str::to_string),
        text(8),
    ];
    (key, value, any::<bool>()).prop_map(|(k, v, eq)| if eq { format!("{k}={v}") } else { k })
}

fn status_name(s: NodeStatus) -> &'static str {
    match s {
        NodeStatus::Up => "up",
        NodeStatus::Down => "down",
        NodeStatus::Stopped => "stopped",
    }
}

fn kind_name(k: StoredKind) -> &'static str {
    match k {
        StoredKind::Registration => "registration",
        StoredKind::Uptime => "uptime",
        StoredKind::Capacity => "capacity",
        StoredKind::Consumption => "consumption",
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn ids_arbitrary(raw in prop_oneof![text(24), text_of("0123456789+- ", 24)]) {
        check_id(&raw)?;
    }

    #[test]
    fn ids_every_positive_i64_round_trips(n in 1..=i64::MAX) {
        check_id(&n.to_string())?;
        prop_assert_eq!(parse_id(&n.to_string(), "node").ok(), Some(n));
        for other in [format!("0{n}"), format!("+{n}"), format!("-{n}"), format!(" {n}"), format!("{n} ")] {
            prop_assert!(parse_id(&other, "node").is_err(), "{:?}", other);
        }
    }

    #[test]
    fn limits(l in proptest::option::of(prop_oneof![any::<i64>(), -2i64..1003])) {
        check_limit(l)?;
    }

    #[test]
    fn queries_arbitrary(q in text(128)) {
        check_query(&q)?;
    }

    #[test]
    fn queries_real_keys_random_values(pieces in proptest::collection::vec(query_piece(), 0..8)) {
        check_query(&pieces.join("&"))?;
    }

    /// Well-formed filters, however percent-encoded, parse to exactly the values written.
    #[test]
    fn node_filter_round_trips(
        farm in proptest::option::of(any::<i64>()),
        status in proptest::option::of(proptest::sample::select(vec![NodeStatus::Up, NodeStatus::Down, NodeStatus::Stopped])),
        min_cru in proptest::option::of(any::<i64>()),
        min_hru in proptest::option::of(any::<i64>()),
        after in proptest::option::of(any::<i64>()),
        limit in proptest::option::of(any::<i64>()),
        mask in any::<u64>(),
        upper in any::<bool>(),
    ) {
        let mut pairs: Vec<(&str, String)> = Vec::new();
        let nums = [("farm", farm), ("min_cru", min_cru), ("min_hru", min_hru), ("after", after), ("limit", limit)];
        for (k, v) in nums {
            if let Some(v) = v {
                pairs.push((k, v.to_string()));
            }
        }
        if let Some(s) = status {
            pairs.push(("status", status_name(s).to_string()));
        }
        let q: Vec<String> = pairs
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k, mask, upper), encode(v, mask.rotate_left(17), upper)))
            .collect();
        let q = q.join("&");
        check_query(&q)?;
        let uri = Uri::try_from(format!("/api/v1/nodes?{q}")).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let f: NodeFilter = parse_query(&uri).map_err(|e| TestCaseError::fail(format!("{q}: {e}")))?;
        prop_assert_eq!((f.farm, f.status, f.min_cru, f.min_hru, f.after, f.limit), (farm, status, min_cru, min_hru, after, limit));
        prop_assert_eq!((f.min_mru, f.min_sru), (None, None));
    }

    #[test]
    fn contract_filter_round_trips(
        twin in proptest::option::of(any::<i64>()),
        node in proptest::option::of(any::<i64>()),
        state in proptest::option::of(proptest::sample::select(vec![ContractState::Active, ContractState::Cancelled])),
        after in proptest::option::of(any::<i64>()),
        limit in proptest::option::of(any::<i64>()),
        mask in any::<u64>(),
    ) {
        let mut pairs: Vec<(&str, String)> = Vec::new();
        for (k, v) in [("twin", twin), ("node", node), ("after", after), ("limit", limit)] {
            if let Some(v) = v {
                pairs.push((k, v.to_string()));
            }
        }
        if let Some(s) = state {
            let name = match s {
                ContractState::Active => "active",
                ContractState::Cancelled => "cancelled",
            };
            pairs.push(("state", name.to_string()));
        }
        let q: Vec<String> = pairs
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k, mask, false), encode(v, mask.rotate_left(23), true)))
            .collect();
        let q = q.join("&");
        check_query(&q)?;
        let uri = Uri::try_from(format!("/api/v1/contracts?{q}")).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let f: ContractFilter = parse_query(&uri).map_err(|e| TestCaseError::fail(format!("{q}: {e}")))?;
        prop_assert_eq!((f.twin, f.node, f.state, f.after, f.limit), (twin, node, state, after, limit));
    }

    #[test]
    fn report_filter_round_trips(
        kind in proptest::option::of(proptest::sample::select(vec![
            StoredKind::Registration, StoredKind::Uptime, StoredKind::Capacity, StoredKind::Consumption,
        ])),
        after in proptest::option::of(any::<i64>()),
        limit in proptest::option::of(any::<i64>()),
        extra in proptest::option::of(proptest::sample::select(vec!["status=up", "farm=1", "x=1", "kind=reboot"])),
    ) {
        let mut q: Vec<String> = Vec::new();
        if let Some(k) = kind {
            q.push(format!("kind={}", kind_name(k)));
        }
        if let Some(a) = after {
            q.push(format!("after={a}"));
        }
        if let Some(l) = limit {
            q.push(format!("limit={l}"));
        }
        if let Some(e) = extra {
            q.push(e.to_string());
        }
        let q = q.join("&");
        check_query(&q)?;
        let uri = Uri::try_from(format!("/api/v1/nodes/1/reports?{q}")).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let got = parse_query::<ReportFilter>(&uri);
        match extra {
            // Unknown parameters, a second `kind` or an unknown kind are refused.
            Some(_) => prop_assert!(got.is_err(), "{}", q),
            None => {
                let f = got.map_err(|e| TestCaseError::fail(format!("{q}: {e}")))?;
                prop_assert_eq!((f.kind, f.after, f.limit), (kind, after, limit));
            }
        }
    }
}
