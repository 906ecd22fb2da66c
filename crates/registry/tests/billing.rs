//! Billing on a real database: contracts are charged per hour for what they reserve and the
//! traffic their node reported for them, a twin that cannot pay gets a grace period, then
//! its contract is cancelled; a node cannot bill another node's contract. SQLite and
//! PostgreSQL.

// A failed unwrap, expect or assertion is a failed test: the workspace's deny of them is
// for product code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use accounting::{Account, Pricing, Tft, TFT_UNITS};
use ed25519_dalek::SigningKey;
use gridapi::{paths, BalanceView, ContractState, ContractView};
use gridtypes::{Consumption, ContractRequest, ContractTraffic, Payload, Report, Resources, GIB};
use registry::billing::BillingConfig;
use registry::billing::{bill_due, set_pricing, Billed, HOUR};
use registry::{ledger, Config, Db};
use sqlx::Row;
use test_infra::client::error_code;
use test_infra::{now, seal, Engine, Registry};

test_infra::on_both_engines!(
    time_before_the_first_prices_is_not_billed,
    contracts_are_billed_by_the_hour_with_their_traffic,
    a_twin_that_cannot_pay_gets_a_grace_then_its_contract_ends,
    a_node_bills_only_its_own_contracts,
);

const GRACE: i64 = 6 * HOUR;

struct Grid {
    h: Registry,
    db: Db,
    node_key: SigningKey,
    node: i64,
    farmer: i64,
}

async fn grid(engine: Engine) -> Option<Grid> {
    grid_priced(engine, true).await
}

/// 0.01 USD per CU-hour, 0.004 per SU-hour, 0.05 per GiB, 0.005 per IPv4-hour.
const PRICING: Pricing = Pricing {
    cu: 10_000,
    su: 4_000,
    nu: 50_000,
    ipv4: 5_000,
};

async fn grid_priced(engine: Engine, priced: bool) -> Option<Grid> {
    let config = Config {
        minting: None,
        sample_every: None,
        billing: BillingConfig {
            every: None,
            grace_secs: GRACE,
        },
        ..Config::default()
    };
    let h = Registry::start_with(engine, config).await.ok()?;
    let db = Db::connect(h.db_url()).await.unwrap();
    // A TFT is 0.05 USD.
    if priced {
        set_pricing(&db, PRICING, now()).await.unwrap();
        ledger::set_price(&db, 50_000, now()).await.unwrap();
    }
    let farm = h.farm("billed").await;
    let (_, v) = h.get(&format!("{}/{farm}", paths::FARMS)).await;
    let farmer = v["twin_id"].as_i64().unwrap();
    let capacity = Resources {
        cru: 8,
        mru: 32 * GIB,
        sru: 1000 * GIB,
        hru: 0,
        ipv4: 4,
    };
    let (node_key, node) = h.node(farm, capacity).await;
    Some(Grid {
        h,
        db,
        node_key,
        node,
        farmer,
    })
}

/// A twin with `tft` deposited.
async fn twin(g: &Grid, tft: &str) -> (SigningKey, i64) {
    let (key, id) = g.h.twin().await;
    let amount: Tft = tft.parse().unwrap();
    ledger::deposit(&g.db, id, amount, &format!("pay-{id}"), now())
        .await
        .unwrap();
    (key, id)
}

/// 2 cores, 4 GiB, 50 GiB SSD, one IPv4: CU 1, SU 0.25, so an hour is
/// 0.01 + 0.001 + 0.005 = 0.016 USD = 0.32 TFT without traffic.
async fn contract(g: &Grid, key: &SigningKey) -> ContractView {
    let p = Payload::CreateContract(ContractRequest {
        node_id: g.node as u64,
        resources: Resources {
            cru: 2,
            mru: 4 * GIB,
            sru: 50 * GIB,
            hru: 0,
            ipv4: 1,
        },
    });
    let (s, v) = g.h.post(paths::CONTRACTS, &seal(key, &p)).await;
    assert_eq!(s, 201, "{v}");
    view(g, v["id"].as_i64().unwrap()).await
}

async fn view(g: &Grid, id: i64) -> ContractView {
    let (s, v) = g.h.get(&paths::contract(id as u64)).await;
    assert_eq!(s, 200, "{v}");
    serde_json::from_value(v).unwrap()
}

async fn balance(g: &Grid, twin: i64) -> Tft {
    let (s, v) =
        g.h.get(&format!(
            "{}/{}",
            paths::LEDGER_ACCOUNTS,
            Account::Twin(twin)
        ))
        .await;
    assert_eq!(s, 200, "{v}");
    serde_json::from_value::<BalanceView>(v).unwrap().balance
}

fn tft(s: &str) -> Tft {
    s.parse().unwrap()
}

async fn traffic(g: &Grid, shares: &[(i64, u64)], total: u64) -> (u16, serde_json::Value) {
    let r = Report::Consumption(Consumption {
        used: Resources::default(),
        traffic_bytes: total,
        contracts: shares
            .iter()
            .map(|&(id, bytes)| ContractTraffic {
                contract_id: id as u64,
                traffic_bytes: bytes,
            })
            .collect(),
    });
    g.h.report(&g.node_key, r).await
}

async fn unbilled(g: &Grid, id: i64) -> i64 {
    sqlx::query("SELECT traffic_unbilled FROM contracts WHERE id = $1")
        .bind(id)
        .fetch_one(&g.db.pool)
        .await
        .unwrap()
        .try_get(0)
        .unwrap()
}

async fn time_before_the_first_prices_is_not_billed(engine: Engine) {
    let Some(g) = grid_priced(engine, false).await else {
        return;
    };
    let (key, payer) = twin(&g, "10").await;
    let c = contract(&g, &key).await;
    let start = c.created_at;
    // Without prices nothing is billed; the operator sets them two hours later.
    assert_eq!(
        bill_due(&g.db, start + 2 * HOUR, GRACE).await.unwrap(),
        Billed::default()
    );
    set_pricing(&g.db, PRICING, start + 2 * HOUR).await.unwrap();
    ledger::set_price(&g.db, 50_000, start + 2 * HOUR)
        .await
        .unwrap();
    // One hour after the prices: one hour is billed, not three.
    let b = bill_due(&g.db, start + 3 * HOUR + 5, GRACE).await.unwrap();
    assert_eq!((b.bills, b.charged), (1, tft("0.32")));
    assert_eq!(balance(&g, payer).await, tft("9.68"));
    assert_eq!(view(&g, c.id).await.billed_until, Some(start + 3 * HOUR));
}

async fn contracts_are_billed_by_the_hour_with_their_traffic(engine: Engine) {
    let Some(g) = grid(engine).await else { return };
    let (key, payer) = twin(&g, "10").await;
    let c = contract(&g, &key).await;
    let start = c.created_at;
    assert_eq!(c.billed_until, Some(start));
    let (s, v) = traffic(&g, &[(c.id, 2 * GIB)], 3 * GIB).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(unbilled(&g, c.id).await, (2 * GIB) as i64);

    // Nothing is due before a whole hour has passed.
    assert_eq!(
        bill_due(&g.db, start + HOUR - 1, GRACE).await.unwrap(),
        Billed::default()
    );
    // The first hour: 0.016 USD + 2 GiB × 0.05 = 0.116 USD = 2.32 TFT.
    let b = bill_due(&g.db, start + HOUR + 5, GRACE).await.unwrap();
    assert_eq!((b.bills, b.charged), (1, tft("2.32")));
    assert_eq!(balance(&g, payer).await, tft("7.68"));
    assert_eq!(balance(&g, g.farmer).await, tft("2.32"));
    assert_eq!(unbilled(&g, c.id).await, 0);
    assert_eq!(view(&g, c.id).await.billed_until, Some(start + HOUR));
    // Billing again at the same time books nothing.
    assert_eq!(
        bill_due(&g.db, start + HOUR + 5, GRACE).await.unwrap(),
        Billed::default()
    );
    // Two more hours without traffic: 2 × 0.32 TFT.
    let b = bill_due(&g.db, start + 3 * HOUR + 5, GRACE).await.unwrap();
    assert_eq!((b.bills, b.charged), (1, tft("0.64")));
    assert_eq!(balance(&g, payer).await, tft("7.04"));
    assert_eq!(view(&g, c.id).await.billed_until, Some(start + 3 * HOUR));

    // Cancelled half an hour later: the last half hour is billed, 0.16 TFT.
    let p = Payload::CancelContract {
        contract_id: c.id as u64,
    };
    let (s, v) = g.h.post(paths::CONTRACTS_CANCEL, &seal(&key, &p)).await;
    assert_eq!(s, 200, "{v}");
    let cancelled_at = view(&g, c.id).await.cancelled_at.unwrap();
    sqlx::query("UPDATE contracts SET cancelled_at = $1 WHERE id = $2")
        .bind(start + 3 * HOUR + 1800)
        .bind(c.id)
        .execute(&g.db.pool)
        .await
        .unwrap();
    let b = bill_due(&g.db, cancelled_at, GRACE).await.unwrap();
    assert_eq!((b.bills, b.charged), (1, tft("0.16")));
    assert_eq!(balance(&g, payer).await, tft("6.88"));
    assert_eq!(
        bill_due(&g.db, cancelled_at + 10 * HOUR, GRACE)
            .await
            .unwrap(),
        Billed::default()
    );

    // Every bill is a balanced transaction from the twin to the farmer.
    let (s, v) =
        g.h.get(&format!(
            "{}/{}/entries",
            paths::LEDGER_ACCOUNTS,
            Account::Twin(g.farmer)
        ))
        .await;
    assert_eq!(s, 200);
    let kinds: Vec<&str> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["bill", "bill", "bill"]);
    assert_eq!(
        2 * TFT_UNITS + 3_200_000 + 6_400_000 + 1_600_000,
        balance(&g, g.farmer).await.0
    );
}

async fn a_twin_that_cannot_pay_gets_a_grace_then_its_contract_ends(engine: Engine) {
    let Some(g) = grid(engine).await else { return };
    let (key, payer) = twin(&g, "0.1").await;
    let c = contract(&g, &key).await;
    let start = c.created_at;
    // 0.32 TFT due, 0.1 held: the contract enters its grace and keeps running.
    let t1 = start + HOUR + 5;
    let b = bill_due(&g.db, t1, GRACE).await.unwrap();
    assert_eq!((b.bills, b.graced), (0, 1));
    let v = view(&g, c.id).await;
    assert_eq!(v.state, ContractState::Active);
    assert_eq!((v.grace_since, v.grace_ends), (Some(t1), Some(t1 + GRACE)));
    assert_eq!(balance(&g, payer).await, tft("0.1"));

    // The twin pays in: the debt is billed and the grace ends.
    ledger::deposit(&g.db, payer, tft("1"), "top-up", now())
        .await
        .unwrap();
    let b = bill_due(&g.db, t1 + 60, GRACE).await.unwrap();
    assert_eq!((b.bills, b.resumed, b.charged), (1, 1, tft("0.32")));
    assert_eq!(view(&g, c.id).await.grace_since, None);
    assert_eq!(balance(&g, payer).await, tft("0.78"));

    // Three more hours are 0.96 TFT: not covered, grace again, and then the end.
    let t2 = start + 4 * HOUR + 5;
    let b = bill_due(&g.db, t2, GRACE).await.unwrap();
    assert_eq!(b.graced, 1);
    let node_before: serde_json::Value = g.h.get(&paths::node(g.node as u64)).await.1;
    assert_eq!(node_before["used"]["cru"], 2);
    assert_eq!(
        bill_due(&g.db, t2 + GRACE - 1, GRACE)
            .await
            .unwrap()
            .cancelled,
        0
    );
    let b = bill_due(&g.db, t2 + GRACE, GRACE).await.unwrap();
    assert_eq!(b.cancelled, 1);
    let v = view(&g, c.id).await;
    assert_eq!(v.state, ContractState::Cancelled);
    // The node's capacity is free again and its mailbox tells it to tear the workloads down.
    let node_after: serde_json::Value = g.h.get(&paths::node(g.node as u64)).await.1;
    assert_eq!(node_after["used"]["cru"], 0);
    let poll = Payload::PollMailbox {
        after: 0,
        wait_secs: 0,
    };
    let (s, page) =
        g.h.post(paths::MAILBOX_POLL, &seal(&g.node_key, &poll))
            .await;
    assert_eq!(s, 200, "{page}");
    let item = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["contract_id"] == c.id)
        .unwrap();
    assert_eq!(item["state"], "cancelled", "{item}");
    // What was never paid is not charged later, and the ledger still balances.
    assert_eq!(balance(&g, payer).await, tft("0.78"));
    test_infra::history::assert_ledger_balanced(&g.db).await;
}

async fn a_node_bills_only_its_own_contracts(engine: Engine) {
    let Some(g) = grid(engine).await else { return };
    let (key, _) = twin(&g, "10").await;
    let c = contract(&g, &key).await;
    // A second node in another farm, with its own contract.
    let farm2 = g.h.farm("other").await;
    let cap = Resources {
        cru: 4,
        mru: 8 * GIB,
        sru: 100 * GIB,
        hru: 0,
        ipv4: 1,
    };
    let (other_key, _) = g.h.node(farm2, cap).await;
    let before = g.h.snapshot().await;
    // The other node names this node's contract: refused, nothing stored or counted.
    let r = Report::Consumption(Consumption {
        used: Resources::default(),
        traffic_bytes: GIB,
        contracts: vec![ContractTraffic {
            contract_id: c.id as u64,
            traffic_bytes: GIB,
        }],
    });
    let (s, v) = g.h.report(&other_key, r).await;
    assert_eq!((s, error_code(&v)), (403, "forbidden"), "{v}");
    // Unknown contracts, shares above the node's traffic and a contract named twice.
    let (s, v) = traffic(&g, &[(999_999, 1)], 10).await;
    assert_eq!(s, 404, "{v}");
    let (s, v) = traffic(&g, &[(c.id, 11)], 10).await;
    assert_eq!((s, error_code(&v)), (400, "malformed"), "{v}");
    let (s, v) = traffic(&g, &[(c.id, 1), (c.id, 1)], 10).await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(g.h.snapshot().await, before);
    assert_eq!(unbilled(&g, c.id).await, 0);
}
