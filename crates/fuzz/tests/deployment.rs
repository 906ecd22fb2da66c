//! Deployments (`gridtypes::deployment`): what a twin asks a node to run. The registry relays
//! them sealed; the node reads the JSON and checks it with `Deployment::validate` (and image
//! references with `check_image`) before provisioning anything.

// A failed unwrap, expect or assertion is a failed test: the workspace's deny of them is
// for product code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;

use fuzz::{config, mutate, mutations, text, text_of, watch};
use gridtypes::deployment::{
    check_image, parse_image, Container, ContainerResources, Deployment, DiskKind, Mount, Port,
    Protocol, Restart, Volume, Workload, MAX_IMAGE_REF, MAX_NAME, MAX_WORKLOADS,
};
use gridtypes::mailbox;
use gridtypes::Resources;
use proptest::prelude::*;
use serde_json::{json, Value};

fn fail(e: impl std::fmt::Display) -> TestCaseError {
    TestCaseError::fail(e.to_string())
}

/// What `validate` promises about a deployment it accepts, and what the node then relies on.
fn check_valid(d: &Deployment) -> Result<(), TestCaseError> {
    prop_assert!(d.contract_id > 0 && d.version > 0);
    prop_assert!(d.workloads.len() <= MAX_WORKLOADS);
    let names: BTreeSet<&str> = d.workloads.iter().map(Workload::name).collect();
    prop_assert_eq!(names.len(), d.workloads.len(), "names are unique");
    for w in &d.workloads {
        let n = w.name();
        prop_assert!(
            !n.is_empty() && n.len() <= MAX_NAME && !n.starts_with('-') && !n.ends_with('-')
        );
        prop_assert!(n
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
        if let Workload::Container(c) = w {
            prop_assert!(check_image("image", &c.image).is_ok());
            prop_assert!(c.image.len() <= MAX_IMAGE_REF);
            for m in &c.mounts {
                prop_assert!(names.contains(m.volume.as_str()));
                prop_assert!(m.path.starts_with('/') && !m.path.split('/').any(|p| p == ".."));
            }
            prop_assert!(c.resources.cru > 0 && c.resources.sru > 0);
        }
    }
    // The sum the node checks against the contract, taken wide: it never wraps.
    let wide = |f: fn(&Resources) -> u64| -> u128 {
        d.workloads
            .iter()
            .map(|w| u128::from(f(&w.reserved())))
            .sum()
    };
    let total = d.reserved();
    for (got, want) in [
        (total.cru, wide(|r| r.cru)),
        (total.mru, wide(|r| r.mru)),
        (total.sru, wide(|r| r.sru)),
        (total.hru, wide(|r| r.hru)),
    ] {
        prop_assert_eq!(u128::from(got), want.min(u128::from(u64::MAX)));
    }
    prop_assert!(d.fits(&total).is_ok());
    // Every workload reserves something, so only the empty deployment (the twin's removal
    // of everything) fits a contract of nothing.
    prop_assert_eq!(
        d.fits(&Resources::default()).is_ok(),
        d.workloads.is_empty()
    );
    // As written again, it reads back as the same deployment.
    let again = serde_json::to_vec(d).map_err(fail)?;
    let back: Deployment = serde_json::from_slice(&again).map_err(fail)?;
    prop_assert_eq!(&back, d);
    Ok(())
}

fn check(bytes: &[u8]) -> Result<(), TestCaseError> {
    let _w = watch("gridtypes::deployment (serde + validate)", bytes);
    let Ok(d) = serde_json::from_slice::<Deployment>(bytes) else {
        return Ok(());
    };
    let _ = d.reserved();
    let _ = d.fits(&Resources::default());
    match d.validate() {
        Ok(()) => check_valid(&d)?,
        Err(e) => prop_assert!(!e.to_string().is_empty()),
    }
    Ok(())
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => "[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?",
        1 => text_of("aZ0-_. /", 70),
        1 => Just("-bad".to_string()),
    ]
}

fn image() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("127.0.0.1:5000/gridos/hello:1.0".to_string()),
        Just("docker.io/library/alpine:3.20".to_string()),
        Just(format!("alpine@sha256:{}", "ab".repeat(32))),
        "([a-z0-9.-]{1,12}(:[0-9]{1,5})?/)?[a-z0-9._/-]{1,24}(:[A-Za-z0-9_.-]{1,10})?(@sha256:[0-9a-f]{64})?",
        text_of("aZ09:/@._-", 40),
        text(20),
    ]
}

fn size() -> impl Strategy<Value = u64> {
    prop_oneof![
        proptest::sample::select(vec![
            0,
            1,
            16 << 20,
            (16 << 20) - 1,
            1 << 20,
            1 << 30,
            1 << 48,
            1 << 54,
            (1 << 54) + 1,
            u64::MAX
        ]),
        any::<u64>(),
    ]
}

fn container() -> impl Strategy<Value = Workload> {
    (
        name(),
        image(),
        proptest::option::of(proptest::collection::vec(text_of("/ab-c", 8), 0..3)),
        proptest::collection::vec(text_of("ab -\0", 8), 0..3),
        proptest::collection::btree_map(text_of("AB_1a=", 6), text_of("x\0", 6), 0..3),
        proptest::collection::vec((any::<u16>(), any::<bool>()), 0..3),
        proptest::collection::vec(
            (
                name(),
                prop_oneof![Just("/data".to_string()), text_of("/a.", 8)],
                any::<bool>(),
            ),
            0..3,
        ),
        (prop_oneof![Just(1u64), any::<u64>()], size(), size()),
    )
        .prop_map(
            |(name, image, entrypoint, cmd, env, ports, mounts, (cru, mru, sru))| {
                Workload::Container(Container {
                    name,
                    image,
                    entrypoint,
                    cmd,
                    env,
                    ports: ports
                        .into_iter()
                        .map(|(port, udp)| Port {
                            port,
                            protocol: if udp { Protocol::Udp } else { Protocol::Tcp },
                        })
                        .collect(),
                    mounts: mounts
                        .into_iter()
                        .map(|(volume, path, read_only)| Mount {
                            volume,
                            path,
                            read_only,
                        })
                        .collect(),
                    resources: ContainerResources { cru, mru, sru },
                    restart: Restart::OnFailure,
                })
            },
        )
}

fn volume() -> impl Strategy<Value = Workload> {
    (name(), size(), any::<bool>()).prop_map(|(name, size, hdd)| {
        Workload::Volume(Volume {
            name,
            size,
            disk: if hdd { DiskKind::Hdd } else { DiskKind::Ssd },
        })
    })
}

/// Deployments of every shape, valid and just invalid; volumes named `data` so that mounts
/// of `/data` sometimes find theirs.
fn deployment() -> impl Strategy<Value = Deployment> {
    (
        prop_oneof![Just(7u64), Just(0), any::<u64>()],
        prop_oneof![Just(1u64), Just(0), any::<u64>()],
        proptest::collection::vec(prop_oneof![container(), volume()], 0..5),
        any::<bool>(),
    )
        .prop_map(|(contract_id, version, mut workloads, with_data)| {
            if with_data {
                workloads.push(Workload::Volume(Volume {
                    name: "data".into(),
                    size: 1 << 30,
                    disk: DiskKind::Ssd,
                }));
            }
            Deployment {
                contract_id,
                version,
                workloads,
            }
        })
}

const FIELDS: &[&str] = &[
    "kind",
    "name",
    "image",
    "entrypoint",
    "cmd",
    "env",
    "ports",
    "mounts",
    "resources",
    "restart",
    "size",
    "disk",
    "port",
    "protocol",
    "volume",
    "path",
    "read_only",
    "cru",
    "mru",
    "sru",
];

/// A JSON value in the shapes the fields take, right and wrong.
fn field_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        size().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        proptest::sample::select(vec![
            "container",
            "volume",
            "web",
            "data",
            "/data",
            "tcp",
            "udp",
            "always",
            "never",
            "on_failure",
            "hdd",
            "ssd",
            "alpine:3",
            "",
        ])
        .prop_map(Value::from),
        text(10).prop_map(Value::from),
    ];
    leaf.prop_recursive(2, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            proptest::collection::btree_map(
                proptest::sample::select(FIELDS).prop_map(str::to_string),
                inner,
                0..4
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn deployment_shaped_json() -> impl Strategy<Value = Vec<u8>> {
    let workload = proptest::collection::btree_map(
        proptest::sample::select(FIELDS).prop_map(str::to_string),
        field_value(),
        0..8,
    );
    (
        field_value(),
        field_value(),
        proptest::collection::vec(workload, 0..4),
    )
        .prop_map(|(c, v, w)| {
            serde_json::to_vec(&json!({"contract_id": c, "version": v, "workloads": w}))
                .unwrap_or_default()
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes(b in fuzz::bytes(1024)) {
        check(&b)?;
    }

    #[test]
    fn real_fields_random_values(b in deployment_shaped_json()) {
        check(&b)?;
    }

    /// Typed deployments: valid ones round trip, and every verdict survives the wire.
    #[test]
    fn every_shape(d in deployment()) {
        let bytes = serde_json::to_vec(&d).map_err(fail)?;
        check(&bytes)?;
        let back: Deployment = serde_json::from_slice(&bytes).map_err(fail)?;
        prop_assert_eq!(back.validate().is_ok(), d.validate().is_ok());
    }

    #[test]
    fn mutated(d in deployment(), muts in mutations()) {
        let bytes = serde_json::to_vec(&d).map_err(fail)?;
        check(&mutate(&bytes, &muts))?;
    }

    #[test]
    fn image_references(i in image()) {
        let _w = watch("gridtypes::deployment::check_image", i.as_bytes());
        if check_image("image", &i).is_ok() {
            prop_assert!(!i.is_empty() && i.len() <= MAX_IMAGE_REF);
            prop_assert!(!i.contains(|c: char| c.is_whitespace() || c.is_control()), "{:?}", i);
        }
        // The parts the node builds its registry request from put the reference back together.
        if let Ok(r) = parse_image(&i) {
            let mut again = r.registry.map(|h| format!("{h}/")).unwrap_or_default();
            again.push_str(&r.repository);
            if let Some(t) = &r.tag {
                again.push(':');
                again.push_str(t);
            }
            if let Some(d) = &r.digest {
                again.push('@');
                again.push_str(d);
            }
            prop_assert_eq!(again, i);
        }
    }
}

/// The node's box key: one per run, as a node has one.
fn node_key() -> &'static ed25519_dalek::SigningKey {
    static KEY: std::sync::OnceLock<ed25519_dalek::SigningKey> = std::sync::OnceLock::new();
    KEY.get_or_init(|| ed25519_dalek::SigningKey::from_bytes(&[7; 32]))
}

proptest! {
    // Each case seals and opens (two X25519 operations each).
    #![proptest_config(fuzz::config_div(8))]

    /// A sealed deployment opens to exactly what was sealed, and any change to the box (a
    /// bit, a byte, a cut, an insertion) is refused, never opened to something else.
    #[test]
    fn sealed_boxes(d in deployment(), muts in mutations()) {
        let secret = mailbox::box_secret(node_key());
        let public = mailbox::box_public(&node_key().verifying_key());
        let Ok(sealed) = mailbox::seal_deployment(&public, &d) else {
            // Only a deployment over the size limit cannot be sealed.
            prop_assert!(serde_json::to_vec(&d).map_err(fail)?.len() > mailbox::MAX_DEPLOYMENT_BYTES);
            return Ok(());
        };
        let opened = mailbox::open_deployment(&secret, &sealed);
        prop_assert_eq!(opened.as_ref().ok(), d.validate().is_ok().then_some(&d));
        let changed = mutate(&sealed, &muts);
        let _w = watch("gridtypes::mailbox::open_deployment", &changed);
        let again = mailbox::open_deployment(&secret, &changed);
        if changed != sealed {
            prop_assert!(again.is_err(), "a changed box opened");
        }
    }

    /// Bytes that were never a sealed box, of every length around the limits.
    #[test]
    fn not_boxes(b in fuzz::bytes(mailbox::SEAL_OVERHEAD * 3)) {
        let _w = watch("gridtypes::mailbox::open", &b);
        prop_assert!(mailbox::open_deployment(&mailbox::box_secret(node_key()), &b).is_err());
        prop_assert!(mailbox::open_status(node_key(), &b).is_err());
    }
}
