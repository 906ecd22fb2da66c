//! Contracts: a twin reserves capacity on a node, the registry refuses over-commitment and
//! acts on cancellation only for the owner, on SQLite and on PostgreSQL.

// A failed unwrap, expect or assertion is a failed test: the workspace's deny of them is
// for product code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ed25519_dalek::SigningKey;
use gridapi::{paths, ContractState, ContractView, NodeView, Page};
use gridtypes::{Consumption, ContractRequest, Payload, Report, Resources, GIB};
use serde_json::Value;
use test_infra::client::{error_code, nonce, seal};
use test_infra::{now, Engine, Registry};

test_infra::on_both_engines!(
    contracts_reserve_and_free_capacity,
    over_commitment_is_refused_and_changes_nothing,
    only_the_owner_cancels_and_only_once,
    contracts_need_a_twin_and_a_node,
    bad_contract_payloads_are_refused,
    consumption_reports_do_not_override_contracts,
    replayed_and_concurrent_contracts_never_over_commit,
);

const MIB: u64 = 1 << 20;

fn node_capacity() -> Resources {
    Resources {
        cru: 4,
        mru: 8 * GIB,
        sru: 100 * GIB,
        hru: 1000 * GIB,
        ipv4: 0,
    }
}

fn ask(cru: u64, mru: u64, sru: u64) -> Resources {
    Resources {
        cru,
        mru,
        sru,
        hru: 0,
        ipv4: 0,
    }
}

async fn create(h: &Registry, twin: &SigningKey, node: i64, r: Resources) -> (u16, Value) {
    let p = Payload::CreateContract(ContractRequest {
        node_id: node as u64,
        resources: r,
    });
    h.post(paths::CONTRACTS, &seal(twin, &p)).await
}

async fn cancel(h: &Registry, twin: &SigningKey, id: i64) -> (u16, Value) {
    let p = Payload::CancelContract {
        contract_id: id as u64,
    };
    h.post(paths::CONTRACTS_CANCEL, &seal(twin, &p)).await
}

async fn node_view(h: &Registry, id: i64) -> NodeView {
    let (s, v) = h.get(&paths::node(id as u64)).await;
    assert_eq!(s, 200, "{v}");
    serde_json::from_value(v).unwrap()
}

async fn contract(h: &Registry, id: i64) -> ContractView {
    let (s, v) = h.get(&paths::contract(id as u64)).await;
    assert_eq!(s, 200, "{v}");
    serde_json::from_value(v).unwrap()
}

/// A farm with one node, and a tenant twin.
async fn setup(h: &Registry) -> (i64, SigningKey, i64) {
    let farm = h.farm("contract-farm").await;
    let (_, node) = h.node(farm, node_capacity()).await;
    let (twin, twin_id) = h.twin().await;
    (node, twin, twin_id)
}

async fn contracts_reserve_and_free_capacity(engine: Engine) {
    let Ok(h) = Registry::start(engine).await else {
        return;
    };
    let (node, twin, twin_id) = setup(&h).await;
    let (s, v) = create(&h, &twin, node, ask(1, 256 * MIB, 2 * GIB)).await;
    assert_eq!(s, 201, "{v}");
    let first = v["id"].as_i64().unwrap();
    let (s, v) = create(&h, &twin, node, ask(2, GIB, 10 * GIB)).await;
    assert_eq!(s, 201, "{v}");
    let second = v["id"].as_i64().unwrap();

    let n = node_view(&h, node).await;
    assert_eq!(n.used, ask(3, GIB + 256 * MIB, 12 * GIB));
    assert_eq!(n.free, node_capacity().saturating_sub(&n.used));

    let c = contract(&h, first).await;
    assert_eq!(
        (c.twin_id, c.node_id, c.state, c.resources),
        (
            twin_id,
            node,
            ContractState::Active,
            ask(1, 256 * MIB, 2 * GIB)
        )
    );
    assert_eq!(c.cancelled_at, None);

    let (s, v) = h
        .get(&format!("{}?twin={twin_id}&state=active", paths::CONTRACTS))
        .await;
    assert_eq!(s, 200, "{v}");
    let page: Page<ContractView> = serde_json::from_value(v).unwrap();
    let ids: Vec<i64> = page.items.iter().map(|c| c.id).collect();
    assert_eq!(ids, [first, second]);

    let (s, v) = cancel(&h, &twin, first).await;
    assert_eq!(s, 200, "{v}");
    let c = contract(&h, first).await;
    assert_eq!(c.state, ContractState::Cancelled);
    assert!(c.cancelled_at.is_some());
    assert_eq!(node_view(&h, node).await.used, ask(2, GIB, 10 * GIB));

    let (s, v) = h
        .get(&format!("{}?node={node}&state=cancelled", paths::CONTRACTS))
        .await;
    assert_eq!(s, 200, "{v}");
    let page: Page<ContractView> = serde_json::from_value(v).unwrap();
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.items[0].id, first);

    // Freed capacity can be reserved again, up to exactly what is free.
    let free = node_view(&h, node).await.free;
    let (s, v) = create(&h, &twin, node, free).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(node_view(&h, node).await.free, Resources::default());

    // The node list's free-capacity filter sees contracts.
    let (s, v) = h.get(&format!("{}?min_cru=1", paths::NODES)).await;
    assert_eq!(s, 200, "{v}");
    let page: Page<NodeView> = serde_json::from_value(v).unwrap();
    assert!(
        page.items.iter().all(|n| n.id != node),
        "a full node is listed as free"
    );
}

async fn over_commitment_is_refused_and_changes_nothing(engine: Engine) {
    let Ok(h) = Registry::start(engine).await else {
        return;
    };
    let (node, twin, _) = setup(&h).await;
    let (s, v) = create(&h, &twin, node, ask(3, GIB, GIB)).await;
    assert_eq!(s, 201, "{v}");
    let before = h.snapshot().await;
    for r in [
        ask(2, GIB, GIB),
        ask(1, 8 * GIB, GIB),
        ask(1, GIB, 100 * GIB),
        Resources {
            hru: 1001 * GIB,
            ..ask(0, 0, 0)
        },
        Resources {
            ipv4: 1,
            ..ask(0, 0, 0)
        },
    ] {
        let (s, v) = create(&h, &twin, node, r).await;
        assert_eq!((s, error_code(&v)), (409, "insufficient_capacity"), "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("than is free"),
            "{v}"
        );
    }
    assert_eq!(h.snapshot().await, before);
    assert_eq!(node_view(&h, node).await.used, ask(3, GIB, GIB));
    let (s, v) = h.get(paths::CONTRACTS).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["items"].as_array().map(Vec::len), Some(1), "{v}");
}

async fn only_the_owner_cancels_and_only_once(engine: Engine) {
    let Ok(h) = Registry::start(engine).await else {
        return;
    };
    let (node, twin, _) = setup(&h).await;
    let (other, _) = h.twin().await;
    let (s, v) = create(&h, &twin, node, ask(1, GIB, GIB)).await;
    assert_eq!(s, 201, "{v}");
    let id = v["id"].as_i64().unwrap();

    let (s, v) = cancel(&h, &other, id).await;
    assert_eq!((s, error_code(&v)), (403, "forbidden"), "{v}");
    assert_eq!(contract(&h, id).await.state, ContractState::Active);

    let (s, v) = cancel(&h, &twin, id + 1000).await;
    assert_eq!((s, error_code(&v)), (404, "not_found"), "{v}");

    let (s, v) = cancel(&h, &twin, id).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = cancel(&h, &twin, id).await;
    assert_eq!((s, error_code(&v)), (409, "conflict"), "{v}");
    // Cancelling twice frees the capacity once.
    assert_eq!(node_view(&h, node).await.used, Resources::default());
}

async fn contracts_need_a_twin_and_a_node(engine: Engine) {
    let Ok(h) = Registry::start(engine).await else {
        return;
    };
    let (node, twin, _) = setup(&h).await;
    let (s, v) = create(&h, &twin, node + 1000, ask(1, GIB, GIB)).await;
    assert_eq!((s, error_code(&v)), (422, "unknown_node"), "{v}");

    let stranger = SigningKey::from_bytes(&[9u8; 32]);
    let (s, v) = create(&h, &stranger, node, ask(1, GIB, GIB)).await;
    assert_eq!((s, error_code(&v)), (401, "unknown_signer"), "{v}");

    // A node's key is not a twin's: it cannot rent capacity, not even on itself.
    let farm = h.farm("other-farm").await;
    let (node_key, other_node) = h.node(farm, node_capacity()).await;
    let (s, v) = create(&h, &node_key, other_node, ask(1, GIB, GIB)).await;
    assert_eq!((s, error_code(&v)), (401, "unknown_signer"), "{v}");

    // A contract payload sent to another endpoint is refused by kind.
    let p = Payload::CreateContract(ContractRequest {
        node_id: node as u64,
        resources: ask(1, GIB, GIB),
    });
    let (s, v) = h.post(paths::REPORTS, &seal(&twin, &p)).await;
    assert_eq!((s, error_code(&v)), (400, "wrong_kind"), "{v}");
    let (s, v) = h.post(paths::CONTRACTS_CANCEL, &seal(&twin, &p)).await;
    assert_eq!((s, error_code(&v)), (400, "wrong_kind"), "{v}");
}

async fn bad_contract_payloads_are_refused(engine: Engine) {
    let Ok(h) = Registry::start(engine).await else {
        return;
    };
    let (node, twin, _) = setup(&h).await;
    let before = h.snapshot().await;
    for (what, r) in [
        ("nothing", ask(0, 0, 0)),
        ("cores", ask(1 << 20, 0, 0)),
        ("memory", ask(1, u64::MAX, 0)),
    ] {
        let (s, v) = create(&h, &twin, node, r).await;
        assert_eq!((s, error_code(&v)), (400, "malformed"), "{what}: {v}");
    }
    let (s, v) = create(&h, &twin, 0, ask(1, GIB, GIB)).await;
    assert_eq!((s, error_code(&v)), (400, "malformed"), "{v}");
    let (s, v) = cancel(&h, &twin, 0).await;
    assert_eq!((s, error_code(&v)), (400, "malformed"), "{v}");
    for body in [
        r#"{"kind":"create_contract","node_id":1,"resources":{"cru":1,"mru":1,"sru":1,"hru":0},"price":0}"#,
        r#"{"kind":"create_contract","node_id":-1,"resources":{"cru":1,"mru":1,"sru":1,"hru":0}}"#,
        r#"{"kind":"create_contract","node_id":1.5,"resources":{"cru":1,"mru":1,"sru":1,"hru":0}}"#,
        r#"{"kind":"cancel_contract","contract_id":"1"}"#,
    ] {
        let env = gridtypes::Envelope::seal_bytes(&twin, body.as_bytes().to_vec(), now(), nonce());
        let (s, v) = h.post(paths::CONTRACTS, &env).await;
        assert_eq!((s, error_code(&v)), (400, "malformed"), "{body}: {v}");
    }
    let (s, v) = h.get(&format!("{}?state=paused", paths::CONTRACTS)).await;
    assert_eq!((s, error_code(&v)), (400, "malformed"), "{v}");
    let (s, v) = h.get(&format!("{}/01", paths::CONTRACTS)).await;
    assert_eq!((s, error_code(&v)), (400, "malformed"), "{v}");
    assert_eq!(h.snapshot().await, before);
}

async fn consumption_reports_do_not_override_contracts(engine: Engine) {
    let Ok(h) = Registry::start(engine).await else {
        return;
    };
    let farm = h.farm("consumption-farm").await;
    let (node_key, node) = h.node(farm, node_capacity()).await;
    let (twin, _) = h.twin().await;
    let (s, v) = create(&h, &twin, node, ask(2, 2 * GIB, 20 * GIB)).await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = h
        .report(
            &node_key,
            Report::Consumption(Consumption {
                used: ask(4, 8 * GIB, 0),
                traffic_bytes: 1000,
                contracts: Vec::new(),
            }),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let n = node_view(&h, node).await;
    assert_eq!(n.used, ask(2, 2 * GIB, 20 * GIB));
    assert_eq!(n.traffic_bytes, 1000);
}

async fn replayed_and_concurrent_contracts_never_over_commit(engine: Engine) {
    let Ok(h) = Registry::start(engine).await else {
        return;
    };
    let (node, twin, _) = setup(&h).await;
    // The same signed request twice: one contract, the copy is a replay.
    let env = seal(
        &twin,
        &Payload::CreateContract(ContractRequest {
            node_id: node as u64,
            resources: ask(1, GIB, GIB),
        }),
    );
    let (s, v) = h.post(paths::CONTRACTS, &env).await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = h.post(paths::CONTRACTS, &env).await;
    assert_eq!((s, error_code(&v)), (409, "replay"), "{v}");
    assert_eq!(node_view(&h, node).await.used, ask(1, GIB, GIB));

    // 12 requests of one core each race for the 3 cores left: exactly 3 land.
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..12 {
        let (client, twin) = ((*h).clone(), twin.clone());
        tasks.spawn(async move {
            let p = Payload::CreateContract(ContractRequest {
                node_id: node as u64,
                resources: ask(1, 0, 0),
            });
            client.post(paths::CONTRACTS, &seal(&twin, &p)).await
        });
    }
    let mut landed = 0;
    while let Some(r) = tasks.join_next().await {
        let (s, v) = r.unwrap();
        match s {
            201 => landed += 1,
            409 => assert_eq!(error_code(&v), "insufficient_capacity", "{v}"),
            other => panic!("status {other}: {v}"),
        }
    }
    assert_eq!(landed, 3);
    let n = node_view(&h, node).await;
    assert_eq!(n.used.cru, node_capacity().cru);
    assert_eq!(n.free.cru, 0);
}
