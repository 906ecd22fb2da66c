//! Signed envelopes and every payload kind (`gridtypes`): the registry parses them from any
//! client on the internet before it knows who sent them.

// A failed unwrap, expect or assertion is a failed test: the workspace's deny of them is
// for product code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::OnceLock;

use ed25519_dalek::SigningKey;
use fuzz::{config, config_div, mutate, mutations, text, text_of, watch};
use gridtypes::envelope::decode_fixed;
use gridtypes::mailbox;
use gridtypes::payload::{MAX_FARM_NAME, MAX_INTERFACES};
use gridtypes::{
    check_clock, parse_public_key, Consumption, ContractRequest, Envelope, EnvelopeError,
    Interface, NodeRegistration, Payload, PayloadError, Report, Resources, Sealed, MAX_CRU,
    MAX_DISK, MAX_IPV4, MAX_MRU, MAX_PAYLOAD_BYTES, MAX_POLL_WAIT_SECS, MAX_TEXT,
    MAX_TRAFFIC_BYTES, MAX_UPTIME_SECS, NONCE_LEN,
};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

/// The receiver's clock in every test: envelopes are dated around it.
const NOW: i64 = 1_700_000_000;

fn fail(e: impl std::fmt::Display) -> TestCaseError {
    TestCaseError::fail(e.to_string())
}

// ---- payloads ----

/// What `Payload::from_bytes` promises about a payload it accepts.
fn check_payload(bytes: &[u8]) -> Result<Option<Payload>, TestCaseError> {
    let _w = watch("gridtypes::Payload::from_bytes", bytes);
    let p = match Payload::from_bytes(bytes) {
        Ok(p) => p,
        Err(e) => {
            prop_assert!(!e.to_string().is_empty());
            if let PayloadError::TooLarge { len, max, .. } = e {
                prop_assert!(len > max && len == bytes.len());
            }
            return Ok(None);
        }
    };
    prop_assert!(p.validate().is_ok());
    prop_assert!(bytes.len() <= p.max_len() && p.max_len() <= MAX_PAYLOAD_BYTES);
    prop_assert!(!p.kind_name().is_empty());
    // What the agent would sign for the same content is accepted as the same content.
    let again = p.to_bytes();
    prop_assert!(
        again.len() <= p.max_len(),
        "{} > {}",
        again.len(),
        p.max_len()
    );
    prop_assert_eq!(Payload::from_bytes(&again), Ok(p.clone()));
    Ok(Some(p))
}

/// u64s at and around every bound a payload checks.
fn edge_u64() -> impl Strategy<Value = u64> {
    let edges: Vec<u64> = [
        0,
        1,
        MAX_CRU,
        MAX_MRU,
        MAX_DISK,
        MAX_IPV4,
        MAX_UPTIME_SECS,
        MAX_TRAFFIC_BYTES,
        i64::MAX as u64,
        u64::MAX,
    ]
    .iter()
    .flat_map(|&v| [v.saturating_sub(1), v, v.saturating_add(1)])
    .collect();
    prop_oneof![
        2 => proptest::sample::select(edges),
        1 => any::<u64>(),
        1 => 0u64..1 << 40,
    ]
}

fn resources() -> impl Strategy<Value = Resources> {
    (edge_u64(), edge_u64(), edge_u64(), edge_u64(), edge_u64()).prop_map(
        |(cru, mru, sru, hru, ipv4)| Resources {
            cru,
            mru,
            sru,
            hru,
            ipv4,
        },
    )
}

fn short_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => text_of("abcXYZ09-_. :/", 20),
        1 => text(MAX_TEXT + 4),
        1 => Just("\u{1}".repeat(MAX_TEXT)),
        1 => Just("x".repeat(MAX_TEXT + 1)),
    ]
}

fn warnings() -> impl Strategy<Value = Vec<String>> {
    prop_oneof![
        4 => Just(Vec::new()),
        2 => proptest::collection::vec(short_text(), 0..4),
        1 => proptest::collection::vec(short_text(), 7..10),
    ]
}

fn interfaces() -> impl Strategy<Value = Vec<Interface>> {
    let iface = (
        short_text(),
        proptest::option::of(short_text()),
        proptest::collection::vec(short_text(), 0..3),
    )
        .prop_map(|(name, mac, ips)| Interface { name, mac, ips });
    prop_oneof![
        4 => proptest::collection::vec(iface, 0..4),
        1 => Just(vec![Interface { name: "eth0".into(), mac: None, ips: vec!["10.0.0.1/8".into(); MAX_INTERFACES + 1] }]),
        1 => Just(vec![Interface { name: "e".into(), mac: None, ips: Vec::new() }; MAX_INTERFACES + 1]),
    ]
}

/// Every payload kind, with values inside and just outside their ranges. Boxed arm by arm:
/// the unboxed union of eight tuple strategies overflowed a test thread's stack in debug.
fn payload() -> BoxedStrategy<Payload> {
    let registration = (
        edge_u64(),
        resources(),
        proptest::option::of(short_text()),
        any::<bool>(),
        interfaces(),
        proptest::option::of(short_text()),
        warnings(),
    )
        .prop_map(
            |(farm_id, capacity, serial, virtualized, interfaces, agent_version, warnings)| {
                Payload::RegisterNode(NodeRegistration {
                    farm_id,
                    capacity,
                    serial,
                    virtualized,
                    interfaces,
                    agent_version,
                    box_key: None,
                    warnings,
                })
            },
        )
        .boxed();
    let farm = prop_oneof![
        "[a-zA-Z0-9_.-]{1,64}",
        text_of("ab-_. /é", MAX_FARM_NAME + 2)
    ]
    .prop_map(|name| Payload::CreateFarm { name })
    .boxed();
    let uptime = (edge_u64(), any::<bool>(), warnings())
        .prop_map(|(uptime_secs, stopping, warnings)| {
            Payload::Report(Report::Uptime {
                uptime_secs,
                stopping,
                warnings,
            })
        })
        .boxed();
    let capacity = (resources(), warnings())
        .prop_map(|(capacity, warnings)| Payload::Report(Report::Capacity { capacity, warnings }))
        .boxed();
    let consumption = (
        resources(),
        edge_u64(),
        prop::collection::vec((edge_u64(), edge_u64()), 0..4),
    )
        .prop_map(|(used, traffic_bytes, shares)| {
            Payload::Report(Report::Consumption(Consumption {
                used,
                traffic_bytes,
                contracts: shares
                    .into_iter()
                    .map(|(contract_id, traffic_bytes)| gridtypes::ContractTraffic {
                        contract_id,
                        traffic_bytes,
                    })
                    .collect(),
            }))
        })
        .boxed();
    let contract = (
        edge_u64(),
        prop_oneof![Just(Resources::default()), resources()],
    )
        .prop_map(|(node_id, resources)| {
            Payload::CreateContract(ContractRequest { node_id, resources })
        })
        .boxed();
    let cancel = edge_u64()
        .prop_map(|contract_id| Payload::CancelContract { contract_id })
        .boxed();
    let limit = mailbox::MAX_DEPLOYMENT_BYTES + mailbox::SEAL_OVERHEAD;
    let sealed_len = prop_oneof![
        0..=mailbox::SEAL_OVERHEAD + 1,
        limit - 1..=limit + 1,
        0..=limit + 8
    ];
    let sealed = (edge_u64(), edge_u64(), sealed_len, 0..4u8)
        .prop_map(|(contract_id, version, len, kind)| {
            let s = Sealed {
                contract_id,
                version,
                sealed: vec![0xa5; len],
            };
            match kind {
                0 => Payload::Deploy(s),
                1 => Payload::DeploymentStatus(s),
                2 => Payload::RequestLogs(s),
                _ => Payload::Logs(s),
            }
        })
        .boxed();
    let poll = (edge_u64(), any::<u32>())
        .prop_map(|(after, wait_secs)| Payload::PollMailbox {
            after,
            wait_secs: wait_secs % (2 * MAX_POLL_WAIT_SECS + 1),
        })
        .boxed();
    prop_oneof![
        Just(Payload::RegisterTwin {}).boxed(),
        farm,
        registration,
        uptime,
        capacity,
        consumption,
        contract,
        cancel,
        sealed,
        poll,
    ]
    .boxed()
}

/// Any JSON value, nested a little.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        edge_u64().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        text(12).prop_map(Value::from),
        proptest::sample::select(vec![
            "uptime",
            "capacity",
            "consumption",
            "report",
            "eth0",
            ""
        ])
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            proptest::collection::btree_map(field_name(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

const FIELDS: &[&str] = &[
    "kind",
    "report",
    "name",
    "farm_id",
    "capacity",
    "serial",
    "virtualized",
    "interfaces",
    "agent_version",
    "box_key",
    "warnings",
    "uptime_secs",
    "stopping",
    "used",
    "traffic_bytes",
    "cru",
    "mru",
    "sru",
    "hru",
    "ipv4",
    "mac",
    "ips",
    "node_id",
    "resources",
    "contract_id",
    "version",
    "sealed",
    "after",
    "wait_secs",
];

fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => proptest::sample::select(FIELDS).prop_map(str::to_string),
        1 => "[a-z_]{0,8}",
    ]
}

/// A JSON object with a real `kind` (and `report`) and the real field names, any values.
fn payload_shaped_json() -> impl Strategy<Value = Vec<u8>> {
    let kind = proptest::sample::select(vec![
        "register_twin",
        "create_farm",
        "register_node",
        "report",
        "create_contract",
        "cancel_contract",
        "deploy",
        "deployment_status",
        "request_logs",
        "logs",
        "poll_mailbox",
        "steal_tft",
    ]);
    let report = proptest::option::of(proptest::sample::select(vec![
        "uptime",
        "capacity",
        "consumption",
        "reboot",
    ]));
    (
        kind,
        report,
        proptest::collection::btree_map(field_name(), json_value(), 0..6),
    )
        .prop_map(|(kind, report, fields)| {
            let mut m: Map<String, Value> = fields.into_iter().collect();
            m.insert("kind".into(), json!(kind));
            if let Some(r) = report {
                m.insert("report".into(), json!(r));
            }
            serde_json::to_vec(&Value::Object(m)).unwrap_or_default()
        })
}

// ---- envelopes ----

fn keys() -> &'static [SigningKey] {
    static KEYS: OnceLock<Vec<SigningKey>> = OnceLock::new();
    KEYS.get_or_init(|| {
        (1..=4u8)
            .map(|i| SigningKey::from_bytes(&[i; 32]))
            .collect()
    })
}

fn key() -> impl Strategy<Value = &'static SigningKey> {
    (0..keys().len()).prop_map(|i| &keys()[i])
}

/// What `Envelope::from_json` and `open` promise about an envelope they accept.
fn check_envelope(bytes: &[u8]) -> Result<Option<Envelope>, TestCaseError> {
    let _w = watch("gridtypes::Envelope::from_json+open", bytes);
    let env = match Envelope::from_json(bytes) {
        Ok(e) => e,
        Err(e) => {
            prop_assert!(matches!(e, EnvelopeError::Malformed(_)));
            return Ok(None);
        }
    };
    // Serialised again, it parses to the same envelope and gets the same verdict.
    let back = Envelope::from_json(&env.to_json()).map_err(fail)?;
    prop_assert_eq!(&back, &env);
    let opened = env.open(NOW);
    match &opened {
        Ok(v) => {
            prop_assert_eq!(&v.signer_hex, &env.signer);
            prop_assert_eq!(&v.nonce, &env.nonce);
            prop_assert_eq!(v.timestamp, env.timestamp);
            prop_assert!(check_clock(env.timestamp, NOW).is_ok());
            prop_assert_eq!(Ok(v.payload.clone()), Payload::from_bytes(&env.payload));
            prop_assert_eq!(env.verify_signature().ok(), Some(v.signer));
            prop_assert_eq!(parse_public_key(&env.signer).ok(), Some(v.signer));
        }
        Err(e) => prop_assert!(!e.to_string().is_empty()),
    }
    let reopened = back.open(NOW);
    prop_assert_eq!(opened.as_ref().err(), reopened.as_ref().err());
    Ok(Some(env))
}

fn timestamp() -> impl Strategy<Value = i64> {
    prop_oneof![
        4 => (NOW - 400)..(NOW + 400),
        1 => proptest::sample::select(vec![i64::MIN, i64::MAX, 0, -1, NOW - 300, NOW + 300, NOW - 301, NOW + 301]),
        1 => any::<i64>(),
    ]
}

/// A correctly signed envelope around a valid, invalid or arbitrary payload.
fn sealed() -> impl Strategy<Value = Envelope> {
    let body = prop_oneof![
        3 => payload().prop_map(|p| p.to_bytes()),
        1 => payload_shaped_json(),
        1 => fuzz::bytes(64),
    ];
    (key(), body, timestamp(), any::<[u8; NONCE_LEN]>())
        .prop_map(|(k, body, ts, nonce)| Envelope::seal_bytes(k, body, ts, nonce))
}

/// Values the envelope's fields take, right and wrong: hex of every length and case, base64
/// with and without padding, numbers of every type.
fn field_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        "[0-9a-f]{0,130}".prop_map(Value::from),
        "[0-9a-fA-F]{64}".prop_map(Value::from),
        "[0-9a-f]{32}".prop_map(Value::from),
        "[0-9a-f]{128}".prop_map(Value::from),
        "[A-Za-z0-9+/]{0,40}={0,3}".prop_map(Value::from),
        json_value(),
    ]
}

fn envelope_shaped_json() -> impl Strategy<Value = Vec<u8>> {
    let name = prop_oneof![
        9 => proptest::sample::select(vec!["signer", "timestamp", "nonce", "payload", "signature"]).prop_map(str::to_string),
        1 => "[a-z]{0,6}",
    ];
    proptest::collection::vec((name, field_value()), 0..7).prop_map(|fields| {
        let mut out = b"{".to_vec();
        for (i, (k, v)) in fields.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            // Written by hand so duplicate keys reach the parser.
            out.extend(serde_json::to_vec(k).unwrap_or_default());
            out.push(b':');
            out.extend(serde_json::to_vec(v).unwrap_or_default());
        }
        out.push(b'}');
        out
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn payload_arbitrary_bytes(b in fuzz::bytes(2048)) {
        check_payload(&b)?;
    }

    #[test]
    fn payload_real_fields_random_values(b in payload_shaped_json()) {
        check_payload(&b)?;
    }

    /// Every kind: accepted exactly when its values are in range, and then as itself.
    #[test]
    fn payload_every_kind_round_trips(p in payload()) {
        let bytes = p.to_bytes();
        let valid = p.validate().is_ok();
        match check_payload(&bytes)? {
            Some(back) => {
                prop_assert!(valid);
                prop_assert_eq!(back, p);
            }
            None => prop_assert!(!valid || bytes.len() > p.max_len(), "{:?}", Payload::from_bytes(&bytes)),
        }
    }

    #[test]
    fn payload_mutated(p in payload(), muts in mutations()) {
        check_payload(&mutate(&p.to_bytes(), &muts))?;
    }

    #[test]
    fn envelope_arbitrary_bytes(b in fuzz::bytes(1024)) {
        check_envelope(&b)?;
    }

    #[test]
    fn envelope_real_fields_random_values(b in envelope_shaped_json()) {
        check_envelope(&b)?;
    }

    #[test]
    fn hex_fields(s in prop_oneof!["[0-9a-fA-F]{0,70}", text(70)]) {
        let _w = watch("gridtypes::decode_fixed", s.as_bytes());
        if let Some(b) = decode_fixed::<32>(&s) {
            // One spelling per key: what decodes is exactly the lowercase encoding.
            prop_assert_eq!(hex::encode(b), s.clone());
        }
        if let Ok(k) = parse_public_key(&s) {
            prop_assert_eq!(hex::encode(k.as_bytes()), s);
        }
    }
}

proptest! {
    // Each case signs once and verifies a few times.
    #![proptest_config(config_div(4))]

    /// A signed envelope with bytes flipped, cut or inserted is refused, or it is the very
    /// envelope that was signed (a change only to JSON whitespace or escapes).
    #[test]
    fn envelope_mutated_after_signing(env in sealed(), muts in mutations()) {
        let bytes = mutate(&env.to_json(), &muts);
        if let Some(got) = check_envelope(&bytes)? {
            if got.open(NOW).is_ok() {
                prop_assert_eq!(got, env);
            }
        }
    }

    /// The envelope as signed opens exactly when its clock and payload are acceptable.
    #[test]
    fn envelope_sealed_opens(env in sealed()) {
        let bytes = env.to_json();
        let got = check_envelope(&bytes)?.ok_or_else(|| fail("a sealed envelope did not parse"))?;
        let payload_ok = Payload::from_bytes(&env.payload).is_ok();
        let clock_ok = check_clock(env.timestamp, NOW).is_ok();
        prop_assert_eq!(got.open(NOW).is_ok(), payload_ok && clock_ok);
        prop_assert!(got.verify_signature().is_ok());
    }

    /// Any one field replaced by another value breaks the signature or the parse.
    #[test]
    fn envelope_field_swapped(
        env in sealed(),
        field in proptest::sample::select(vec!["signer", "timestamp", "nonce", "payload", "signature"]),
        v in field_value(),
    ) {
        let mut obj: Value = serde_json::from_slice(&env.to_json()).map_err(fail)?;
        obj[field] = v;
        let bytes = serde_json::to_vec(&obj).map_err(fail)?;
        if let Some(got) = check_envelope(&bytes)? {
            if got.verify_signature().is_ok() {
                prop_assert_eq!(got, env);
            }
        }
    }
}
